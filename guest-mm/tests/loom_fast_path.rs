// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guarantees 1 and 2 (DESIGN 4.7): the fast path's pin / recheck / freeze
//! protocol, model-checked with loom over every interleaving (and every
//! value the C11 memory model lets a load return, within loom's model).
//!
//! The protocol functions are the engine's own (`guest_mm::gup::frames`:
//! `take_frame`, `release_frame`, `take_block`, `release_block`,
//! `take_frame_unpopulated`, `take_block_unpopulated`, `freeze_frame`,
//! `unfreeze_frame`, `mark_unpopulated`, `mark_populated`),
//! run on loom's atomics through the `AtomicWord` trait. Only the parties
//! around them are modelled here:
//!
//! * the guest's leaf entry is a loom `AtomicU64` (`frame << 12 | P`, plus
//!   PS for a 2M leaf);
//! * the fast path: read the leaf (Acquire, as the walker does), take the
//!   frame or block, re-read the leaf (SeqCst), release and bail if it
//!   changed; then "DMA" into the page while it holds the pin;
//! * a guest that rewrites the leaf and hands the old frame to a balloon;
//!   the balloon freezes, discards (writes the page, records the discard),
//!   marks unpopulated and unfreezes;
//! * the slow path's populate: take the reference even though the frame is
//!   unpopulated (refused only when frozen), populate the host page (a ghost
//!   "present" flag), `mark_populated`, keep the reference.
//!
//! Host page contents are loom `UnsafeCell`s, so a DMA write and a discard
//! that are not ordered by happens-before is reported by loom as a data
//! race, on top of the explicit checks:
//!
//! * a frame is never frozen (nor discarded) while a pin on it, or on its
//!   2M block, is held (ghost counters set after a pin is kept and cleared
//!   before it is released, read by the freezer while it holds the frame
//!   frozen);
//! * the fast path never keeps a pin whose leaf changed between its walk and
//!   its pin: in the models where the balloon only gets frames the guest
//!   unmapped first, a kept pin (or block pin) must not see its frame
//!   discarded (the discard can only have come after the unmap and before
//!   the pin: while the pin is held the frame cannot be frozen);
//! * a page is populated whenever a holder writes it (a discarded page is
//!   never left marked populated);
//! * at the end, every reference and frozen count is back to its initial
//!   value and the block's unpopulated count matches its frames.
//!
//! The checker has teeth: broken variants of the protocol (recheck before
//! the pin; a freeze that ignores the block's references; a freeze done by
//! load-then-store instead of compare-exchange; a block pin that ignores
//! the block's frozen count; a populate that holds no reference) run under
//! the same models and must be caught.
//!
//! Loom treats SeqCst accesses as AcqRel (a weaker model, so it can only add
//! false alarms, never hide a bug that needs SeqCst to be prevented); the
//! correctness argument here only needs the read-modify-writes on one word
//! and their acquire/release edges, and the models pass under it.
//!
//! Interleavings explored are printed per model (`--nocapture`). Every model
//! is exhaustive except the three-thread pin + GET + balloon one, bounded to
//! 3 preemptions; `LOOM_MAX_PREEMPTIONS` overrides the bound of every model
//! (a large value makes that one exhaustive too, in minutes).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize as StdUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use guest_mm::gup::frames::{
    freeze_frame, mark_populated, mark_unpopulated, release_block, release_frame, take_block,
    take_block_unpopulated, take_frame, take_frame_unpopulated, unfreeze_frame, AtomicWord,
    Refused, BLOCK_FROZEN, BLOCK_FROZEN_ONE, BLOCK_REFS, BLOCK_UNPOPULATED, BLOCK_UNPOPULATED_ONE,
    FRAME_FROZEN, FRAME_REFS, FRAME_UNPOPULATED, PIN_BIAS,
};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
use loom::thread;

// ---------------------------------------------------------------------------
// loom atomics as protocol words

/// A frame word on loom's atomics.
struct W32(AtomicU32);
/// A block word on loom's atomics.
struct W64(AtomicU64);

macro_rules! loom_word {
    ($w:ty, $v:ty) => {
        impl AtomicWord for $w {
            type V = $v;
            fn load(&self, order: Ordering) -> $v {
                self.0.load(order)
            }
            fn fetch_add(&self, v: $v, order: Ordering) -> $v {
                self.0.fetch_add(v, order)
            }
            fn fetch_sub(&self, v: $v, order: Ordering) -> $v {
                self.0.fetch_sub(v, order)
            }
            fn fetch_and(&self, v: $v, order: Ordering) -> $v {
                self.0.fetch_and(v, order)
            }
            fn fetch_or(&self, v: $v, order: Ordering) -> $v {
                self.0.fetch_or(v, order)
            }
            fn compare_exchange(
                &self,
                current: $v,
                new: $v,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$v, $v> {
                self.0.compare_exchange(current, new, success, failure)
            }
        }
    };
}
loom_word!(W32, u32);
loom_word!(W64, u64);

// ---------------------------------------------------------------------------
// The protocol under test, and the broken variants

/// Which protocol the parties follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// The engine's (frames.rs, fast.rs).
    Correct,
    /// Broken: the fast path rechecks the leaf, then pins.
    RecheckBeforePin,
    /// Broken (the engine's first version): after the pin, recheck only
    /// the leaf entry, not the entry that pointed to the leaf's table (the
    /// engine now rechecks every entry above the leaf, as Linux's gup_fast
    /// rechecks the PMD after pinning a PTE's page).
    LeafRecheckOnly,
    /// Broken: the freezer compare-exchanges the frame word but never looks
    /// at (or counts itself in) the block word.
    FreezeIgnoresBlock,
    /// Broken: the freezer loads the frame word and, if unreferenced, stores
    /// FROZEN (no compare-exchange).
    FreezeByLoadStore,
    /// Broken: a block pin adds to the block word and ignores its frozen
    /// count.
    BlockIgnoresFrozen,
    /// Broken (the engine's first version): the slow path populates the
    /// host page and marks it populated with no reference held, then pins.
    PopulateWithoutReference,
}

/// Devices that may hold a page at once.
const DEVICES: usize = 2;

/// Leaf entry bits (SDM table 4-19: P is bit 0, PS bit 7).
const P: u64 = 1;
const PS: u64 = 1 << 7;
/// "Not present": the guest cleared the entry.
const CLEARED: u64 = 0;

fn leaf_4k(frame: usize) -> u64 {
    ((frame as u64) << 12) | P
}
const LEAF_2M: u64 = P | PS; // block 0, frames 0 and 1
/// A non-leaf entry (the guest replaced the 2M leaf by a page table).
const TABLE_ENTRY: u64 = (0x80 << 12) | P;

/// What the checks found.
#[derive(Clone)]
struct Checker {
    /// Panic at the first violation (the correct protocol); else count them
    /// (the broken variants, which must be caught).
    strict: bool,
    violations: Arc<StdUsize>,
    first: Arc<Mutex<Option<String>>>,
}

impl Checker {
    fn new(strict: bool) -> Self {
        Checker {
            strict,
            violations: Arc::new(StdUsize::new(0)),
            first: Arc::new(Mutex::new(None)),
        }
    }

    fn check(&self, ok: bool, what: &str) {
        if ok {
            return;
        }
        if self.strict {
            panic!("protocol violation: {what}");
        }
        self.violations.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap();
        if first.is_none() {
            *first = Some(what.to_string());
        }
    }
}

/// Two 4K frames (0 and 1) in one 2M block, a guest leaf, host pages, and
/// the ghost state the checks read.
struct Model {
    proto: Protocol,
    c: Checker,
    leaf: AtomicU64,
    /// The PD entry above a 4K leaf (TableSwap only): a table pointer.
    pde: AtomicU64,
    frames: [W32; 2],
    block: W64,
    /// Host page contents, one word per device (holders may DMA into the
    /// same page at once; a discard must be ordered after all of them).
    page: [[UnsafeCell<u64>; DEVICES]; 2],
    /// Ghost: host page populated (MADV_DONTNEED clears, MADV_POPULATE sets).
    present: [AtomicBool; 2],
    /// Ghost: pins kept on each frame (after the recheck, until release).
    held: [AtomicUsize; 2],
    /// Ghost: pins kept on the block.
    block_held: AtomicUsize,
    /// Ghost: the balloon discarded the frame.
    discarded: [AtomicBool; 2],
    /// The balloon only discards frames the guest unmapped first: a pin
    /// kept after such a discard is a pin on a leaf that changed before it.
    discards_unmapped: bool,
}

impl Model {
    // A std `Arc` of a non-`Sync` model (loom's `UnsafeCell`): loom's threads
    // are coroutines on one OS thread and `loom::thread::spawn` needs no
    // `Send`. loom's own `Arc` would model every clone and drop as atomic
    // operations, multiplying the interleavings by up to 15 for nothing.
    #[allow(clippy::arc_with_non_send_sync)]
    fn new(proto: Protocol, c: Checker, s: Scenario) -> Arc<Self> {
        let (leaf, lazy, discards_unmapped) = initial(s);
        let fw = if lazy { FRAME_UNPOPULATED } else { 0 };
        let bw = if lazy { 2 * BLOCK_UNPOPULATED_ONE } else { 0 };
        Arc::new(Model {
            proto,
            c,
            leaf: AtomicU64::new(leaf),
            pde: AtomicU64::new(TABLE_ENTRY),
            frames: [W32(AtomicU32::new(fw)), W32(AtomicU32::new(fw))],
            block: W64(AtomicU64::new(bw)),
            page: std::array::from_fn(|_| std::array::from_fn(|_| UnsafeCell::new(0))),
            present: [AtomicBool::new(!lazy), AtomicBool::new(!lazy)],
            held: [AtomicUsize::new(0), AtomicUsize::new(0)],
            block_held: AtomicUsize::new(0),
            discarded: [AtomicBool::new(false), AtomicBool::new(false)],
            discards_unmapped,
        })
    }

    // --- the fast path -------------------------------------------------

    /// Walk, pin, recheck one 4K leaf. `populate`: on NotPopulated, do what
    /// the slow path does (populate the host page, mark it populated) and
    /// try again, a bounded number of times. Returns the frame kept.
    fn pin_4k(&self, populate: bool) -> Option<usize> {
        let walked = self.leaf.load(Ordering::Acquire);
        if walked & P == 0 || walked & PS != 0 {
            return None;
        }
        let f = (walked >> 12) as usize;
        if self.proto == Protocol::RecheckBeforePin && self.leaf.load(Ordering::SeqCst) != walked {
            return None;
        }
        if !self.take_4k(f, PIN_BIAS, populate) {
            return None;
        }
        if self.proto != Protocol::RecheckBeforePin {
            // Pin first, then recheck.
            let now = self.leaf.load(Ordering::SeqCst);
            if now != walked {
                release_frame(&self.frames[f], PIN_BIAS);
                return None;
            }
        }
        self.held[f].fetch_add(1, Ordering::SeqCst);
        self.c.check(
            !(self.discards_unmapped && self.discarded[f].load(Ordering::SeqCst)),
            "fast path kept a pin on a frame the balloon had discarded (leaf changed before the pin)",
        );
        Some(f)
    }

    /// The fast path through a PD entry and a 4K leaf of its table:
    /// walk both, pin, recheck the leaf and the PD entry (only the leaf
    /// with `LeafRecheckOnly`).
    fn pin_4k_via_table(&self) -> Option<usize> {
        let pde = self.pde.load(Ordering::Acquire);
        if pde & (P | PS) != P {
            return None; // a 2M leaf: not this path
        }
        let walked = self.leaf.load(Ordering::Acquire);
        if walked & P == 0 {
            return None;
        }
        let f = (walked >> 12) as usize;
        if !self.take_4k(f, PIN_BIAS, false) {
            return None;
        }
        let leaf_same = self.leaf.load(Ordering::SeqCst) == walked;
        let pde_same =
            self.proto == Protocol::LeafRecheckOnly || self.pde.load(Ordering::SeqCst) == pde;
        if !(leaf_same && pde_same) {
            release_frame(&self.frames[f], PIN_BIAS);
            return None;
        }
        self.held[f].fetch_add(1, Ordering::SeqCst);
        self.c.check(
            !self.discarded[f].load(Ordering::SeqCst),
            "fast path kept a pin on a frame discarded after the guest replaced the leaf's table",
        );
        Some(f)
    }

    fn unpin_4k(&self, f: usize) {
        self.held[f].fetch_sub(1, Ordering::SeqCst);
        release_frame(&self.frames[f], PIN_BIAS);
    }

    /// `take_frame`, with the slow path's populate on NotPopulated: take
    /// the reference with `take_frame_unpopulated` (refused only when
    /// frozen), populate the host page, `mark_populated`, keep the
    /// reference (slow.rs).
    fn take_4k(&self, f: usize, delta: u32, populate: bool) -> bool {
        let (fw, bw) = (&self.frames[f], &self.block);
        match take_frame(fw, delta) {
            Ok(()) => true,
            Err(Refused::NotPopulated) if populate => {
                if self.proto == Protocol::PopulateWithoutReference {
                    self.present[f].store(true, Ordering::SeqCst);
                    mark_populated(fw, bw);
                    return take_frame(fw, delta).is_ok();
                }
                if take_frame_unpopulated(fw, delta).is_err() {
                    return false;
                }
                self.present[f].store(true, Ordering::SeqCst);
                mark_populated(fw, bw);
                true
            }
            Err(_) => false,
        }
    }

    /// A guest-physical GET of frame `f` (no leaf, reference count 1).
    fn get_phys(&self, f: usize, populate: bool) -> bool {
        if !self.take_4k(f, 1, populate) {
            return false;
        }
        self.held[f].fetch_add(1, Ordering::SeqCst);
        true
    }

    fn put_phys(&self, f: usize) {
        self.held[f].fetch_sub(1, Ordering::SeqCst);
        release_frame(&self.frames[f], 1);
    }

    /// Walk, pin, recheck one 2M leaf (block 0).
    fn pin_2m(&self) -> bool {
        let walked = self.leaf.load(Ordering::Acquire);
        if walked & (P | PS) != (P | PS) {
            return false;
        }
        let delta = u64::from(PIN_BIAS);
        let taken = match self.proto {
            Protocol::BlockIgnoresFrozen => {
                self.block.fetch_add(delta, Ordering::SeqCst);
                Ok(())
            }
            _ => match take_block(&self.block, delta) {
                // The slow path: hold the block, populate all of it, mark
                // its frames populated, keep the reference.
                Err(Refused::NotPopulated) => {
                    take_block_unpopulated(&self.block, delta).map(|()| {
                        for f in 0..2 {
                            self.present[f].store(true, Ordering::SeqCst);
                            mark_populated(&self.frames[f], &self.block);
                        }
                    })
                }
                r => r,
            },
        };
        if taken.is_err() {
            return false;
        }
        if self.leaf.load(Ordering::SeqCst) != walked {
            release_block(&self.block, u64::from(PIN_BIAS));
            return false;
        }
        self.block_held.fetch_add(1, Ordering::SeqCst);
        for f in 0..2 {
            self.c.check(
                !(self.discards_unmapped && self.discarded[f].load(Ordering::SeqCst)),
                "block pin kept over a frame the balloon had discarded (leaf changed before the pin)",
            );
        }
        true
    }

    fn unpin_2m(&self) {
        self.block_held.fetch_sub(1, Ordering::SeqCst);
        release_block(&self.block, u64::from(PIN_BIAS));
    }

    /// Device `dev` writes the pinned page.
    fn dma(&self, f: usize, dev: usize, token: u64) {
        // Loom reports a data race if a discard is not ordered with this.
        self.page[f][dev].with_mut(|p| {
            // SAFETY: loom's checked cell; the pointer is valid for the
            // closure, and loom detects unsynchronized accesses.
            unsafe { *p = token }
        });
        self.c.check(
            self.present[f].load(Ordering::SeqCst),
            "DMA into a pinned page whose host page is not populated",
        );
    }

    // --- the freezer (balloon) ------------------------------------------

    fn freeze(&self, f: usize) -> bool {
        let (fw, bw) = (&self.frames[f], &self.block);
        let ok = match self.proto {
            Protocol::FreezeIgnoresBlock => {
                let cur = fw.load(Ordering::Acquire);
                cur & (FRAME_FROZEN | FRAME_REFS) == 0
                    && fw
                        .compare_exchange(
                            cur,
                            cur | FRAME_FROZEN,
                            Ordering::SeqCst,
                            Ordering::Acquire,
                        )
                        .is_ok()
            }
            Protocol::FreezeByLoadStore => {
                let cur = fw.load(Ordering::Acquire);
                if cur & (FRAME_FROZEN | FRAME_REFS) != 0 {
                    false
                } else {
                    fw.0.store(cur | FRAME_FROZEN, Ordering::SeqCst);
                    let old = bw.fetch_add(BLOCK_FROZEN_ONE, Ordering::SeqCst);
                    if old & BLOCK_REFS != 0 {
                        bw.fetch_sub(BLOCK_FROZEN_ONE, Ordering::SeqCst);
                        fw.fetch_and(!FRAME_FROZEN, Ordering::Release);
                        false
                    } else {
                        true
                    }
                }
            }
            _ => freeze_frame(fw, bw).is_ok(),
        };
        if ok {
            self.c.check(
                self.held[f].load(Ordering::SeqCst) == 0,
                "froze a frame while a 4K pin on it was held",
            );
            self.c.check(
                self.block_held.load(Ordering::SeqCst) == 0,
                "froze a frame while a pin on its 2M block was held",
            );
        }
        ok
    }

    fn unfreeze(&self, f: usize) {
        if self.proto == Protocol::FreezeIgnoresBlock {
            self.frames[f].fetch_and(!FRAME_FROZEN, Ordering::Release);
        } else {
            unfreeze_frame(&self.frames[f], &self.block);
        }
    }

    /// MADV_DONTNEED of a frozen frame.
    fn discard(&self, f: usize, mark: bool) {
        for word in &self.page[f] {
            word.with_mut(|p| {
                // SAFETY: loom's checked cell, as in `dma`.
                unsafe { *p = 0 }
            });
        }
        self.present[f].store(false, Ordering::SeqCst);
        self.discarded[f].store(true, Ordering::SeqCst);
        if mark {
            mark_unpopulated(&self.frames[f], &self.block);
        }
    }

    /// The balloon: freeze, check, discard, (mark unpopulated), unfreeze.
    fn balloon(&self, f: usize, mark: bool) -> bool {
        if !self.freeze(f) {
            return false;
        }
        self.discard(f, mark);
        self.unfreeze(f);
        true
    }

    // --- the end of an execution ----------------------------------------

    fn check_final(&self) {
        let mut unpopulated = 0;
        for (f, w) in self.frames.iter().enumerate() {
            let v = w.load(Ordering::SeqCst);
            self.c
                .check(v & FRAME_REFS == 0, "a frame reference leaked");
            self.c.check(v & FRAME_FROZEN == 0, "a frame stayed frozen");
            self.c
                .check(self.held[f].load(Ordering::SeqCst) == 0, "ghost pin leaked");
            if v & FRAME_UNPOPULATED != 0 {
                unpopulated += 1;
            }
        }
        let b = self.block.load(Ordering::SeqCst);
        self.c
            .check(b & BLOCK_REFS == 0, "a block reference leaked");
        self.c
            .check(b & BLOCK_FROZEN == 0, "the block's frozen count leaked");
        self.c.check(
            b & BLOCK_UNPOPULATED == unpopulated * BLOCK_UNPOPULATED_ONE,
            "the block's unpopulated count disagrees with its frames",
        );
        self.c.check(
            self.block_held.load(Ordering::SeqCst) == 0,
            "ghost block pin leaked",
        );
    }
}

// ---------------------------------------------------------------------------
// The scenarios

/// Which model to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// The fast path pins the frame behind a 4K leaf while the guest remaps
    /// the leaf to frame 1 (`remap`) or clears it, and hands frame 0 to a
    /// balloon that freezes, discards and unfreezes (without marking it
    /// unpopulated: only the recheck stands between the pin and a discarded
    /// frame). The fast path pins twice in a row.
    GuestRewrite { remap: bool },
    /// A 2M-leaf pin (block 0) races the guest replacing the leaf by a page
    /// table and handing frame 1 to the balloon, which freezes it, discards
    /// it, marks it unpopulated and unfreezes.
    BlockVsGuestSplit,
    /// A 2M-leaf pin races a freeze of frame 1 in the same block (no guest
    /// ordering at all: the frame and block words alone must decide) and a
    /// guest-physical GET of frame 1.
    BlockVsFreeze,
    /// A 4K pin through the leaf and a guest-physical GET of the same frame
    /// (both with the slow path's populate on NotPopulated) race a balloon
    /// that freezes the frame, discards it, marks it unpopulated and
    /// unfreezes. The frame starts unpopulated (lazily backed).
    /// `get`: with the GET (three threads; explored with a preemption bound
    /// of 3 unless `LOOM_MAX_PREEMPTIONS` says otherwise), else exhaustive.
    PinVsDiscard { get: bool },
    /// The guest replaces a page table by a 2M leaf elsewhere (the PD
    /// entry changes, the table page and its 4K leaf do not), then frees
    /// frame 0, which the old table mapped: the balloon discards it and
    /// marks it unpopulated, and another device's slow path populates it
    /// again (the guest reused it). Meanwhile the fast path walks the PD
    /// entry and the 4K leaf of the old table and pins frame 0.
    TableSwap,
    /// A 2M-leaf pin of a lazily backed block (populated by the slow path
    /// while it holds the block) races a balloon discarding frame 1.
    BlockPopulateVsDiscard,
}

fn run_scenario(m: &Arc<Model>, s: Scenario) {
    match s {
        Scenario::GuestRewrite { remap } => {
            let fast = {
                let m = m.clone();
                thread::spawn(move || {
                    for token in 1..=2 {
                        if let Some(f) = m.pin_4k(false) {
                            m.dma(f, 0, token);
                            m.unpin_4k(f);
                        }
                    }
                })
            };
            let guest = {
                let m = m.clone();
                thread::spawn(move || {
                    let new = if remap { leaf_4k(1) } else { CLEARED };
                    m.leaf.store(new, Ordering::SeqCst);
                    // Frame 0 is free now: the guest gives it to the balloon
                    // (program order stands for the guest's own handoff).
                    m.balloon(0, false);
                })
            };
            fast.join().unwrap();
            guest.join().unwrap();
        }
        Scenario::BlockVsGuestSplit => {
            let fast = {
                let m = m.clone();
                thread::spawn(move || {
                    if m.pin_2m() {
                        m.dma(0, 0, 7);
                        m.dma(1, 0, 7);
                        m.unpin_2m();
                    }
                })
            };
            let guest = {
                let m = m.clone();
                thread::spawn(move || {
                    // The 2M leaf becomes a table of 4K leaves; frame 1 is
                    // no longer mapped and the guest gives it to the balloon.
                    m.leaf.store(TABLE_ENTRY, Ordering::SeqCst);
                    m.balloon(1, true);
                })
            };
            fast.join().unwrap();
            guest.join().unwrap();
        }
        Scenario::BlockVsFreeze => {
            let fast = {
                let m = m.clone();
                thread::spawn(move || {
                    if m.pin_2m() {
                        m.dma(1, 0, 9);
                        m.unpin_2m();
                    }
                })
            };
            let get = {
                let m = m.clone();
                thread::spawn(move || {
                    if m.get_phys(1, false) {
                        m.dma(1, 1, 10);
                        m.put_phys(1);
                    }
                })
            };
            let balloon = {
                let m = m.clone();
                thread::spawn(move || {
                    m.balloon(1, true);
                })
            };
            fast.join().unwrap();
            get.join().unwrap();
            balloon.join().unwrap();
        }
        Scenario::BlockPopulateVsDiscard => {
            let fast = {
                let m = m.clone();
                thread::spawn(move || {
                    if m.pin_2m() {
                        m.dma(0, 0, 3);
                        m.dma(1, 0, 3);
                        m.unpin_2m();
                    }
                })
            };
            let balloon = {
                let m = m.clone();
                thread::spawn(move || {
                    m.balloon(1, true);
                })
            };
            fast.join().unwrap();
            balloon.join().unwrap();
        }
        Scenario::TableSwap => {
            let fast = {
                let m = m.clone();
                thread::spawn(move || {
                    if let Some(f) = m.pin_4k_via_table() {
                        m.dma(f, 0, 4);
                        m.unpin_4k(f);
                    }
                })
            };
            let guest = {
                let m = m.clone();
                thread::spawn(move || {
                    // A 2M leaf at 2M (no frame of this model).
                    m.pde.store((0x200 << 12) | P | PS, Ordering::SeqCst);
                    if m.balloon(0, true) {
                        // Another device pins frame 0 through its new
                        // mapping: the slow path populates it.
                        if m.take_4k(0, 1, true) {
                            release_frame(&m.frames[0], 1);
                        }
                    }
                })
            };
            fast.join().unwrap();
            guest.join().unwrap();
        }
        Scenario::PinVsDiscard { get } => {
            let fast = {
                let m = m.clone();
                thread::spawn(move || {
                    if let Some(f) = m.pin_4k(true) {
                        m.dma(f, 0, 5);
                        m.unpin_4k(f);
                    }
                })
            };
            let get = get.then(|| {
                let m = m.clone();
                thread::spawn(move || {
                    if m.get_phys(0, true) {
                        m.dma(0, 1, 6);
                        m.put_phys(0);
                    }
                })
            });
            let balloon = {
                let m = m.clone();
                thread::spawn(move || {
                    m.balloon(0, true);
                })
            };
            fast.join().unwrap();
            if let Some(get) = get {
                get.join().unwrap();
            }
            balloon.join().unwrap();
        }
    }
}

fn initial(s: Scenario) -> (u64, bool, bool) {
    match s {
        Scenario::GuestRewrite { .. } => (leaf_4k(0), false, true),
        Scenario::BlockVsGuestSplit => (LEAF_2M, false, true),
        Scenario::BlockVsFreeze => (LEAF_2M, false, false),
        Scenario::PinVsDiscard { .. } => (leaf_4k(0), true, false),
        Scenario::BlockPopulateVsDiscard => (LEAF_2M, true, false),
        Scenario::TableSwap => (leaf_4k(0), false, true),
    }
}

/// How one model run ended.
struct Outcome {
    executions: usize,
    violations: usize,
    first: Option<String>,
    /// The panic message, if loom (a data race) or a strict check panicked.
    panic: Option<String>,
}

fn model(proto: Protocol, s: Scenario, strict: bool) -> Outcome {
    let c = Checker::new(strict);
    let executions = Arc::new(StdUsize::new(0));
    let started = Instant::now();
    let (c2, e2) = (c.clone(), executions.clone());
    let mut builder = loom::model::Builder::new();
    if let (Scenario::PinVsDiscard { get: true, .. }, None) = (s, builder.preemption_bound) {
        builder.preemption_bound = Some(3);
    }
    let bound = builder.preemption_bound;
    let result = catch_unwind(AssertUnwindSafe(move || {
        builder.check(move || {
            e2.fetch_add(1, Ordering::Relaxed);
            let m = Model::new(proto, c2.clone(), s);
            run_scenario(&m, s);
            m.check_final();
        })
    }));
    let panic = result.err().map(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into())
    });
    let out = Outcome {
        executions: executions.load(Ordering::Relaxed),
        violations: c.violations.load(Ordering::Relaxed),
        first: c.first.lock().unwrap().clone(),
        panic,
    };
    report(&format!(
        "loom {proto:?} {s:?}: {} interleavings explored ({}) in {:.2?}, {} violations{}",
        out.executions,
        match bound {
            Some(b) => format!("at most {b} preemptions"),
            None => "exhaustive".to_string(),
        },
        started.elapsed(),
        out.violations,
        match (&out.first, &out.panic) {
            (_, Some(p)) => format!(", stopped by a panic: {}", p.lines().next().unwrap_or("")),
            (Some(f), None) => format!(", first: {f}"),
            (None, None) => String::new(),
        }
    ));
    out
}

/// The engine's protocol: no violation, no data race, in any interleaving.
fn must_hold(s: Scenario) {
    must_hold_with(Protocol::Correct, s);
}

fn must_hold_with(proto: Protocol, s: Scenario) {
    let out = model(proto, s, true);
    if let Some(p) = out.panic {
        panic!("{proto:?} {s:?}: the protocol failed: {p}");
    }
    assert_eq!(out.violations, 0);
    assert!(out.executions > 1, "loom explored only one interleaving");
}

/// A broken protocol: loom must find the violation (a recorded check or a
/// data race), never pass.
fn must_be_caught(proto: Protocol, s: Scenario) {
    let out = model(proto, s, false);
    let race = out
        .panic
        .as_deref()
        .is_some_and(|p| p.contains("Causality violation") || p.contains("data race"));
    if let Some(p) = &out.panic {
        assert!(race, "{proto:?} {s:?}: unexpected panic: {p}");
    }
    assert!(
        out.violations > 0 || race,
        "{proto:?} {s:?}: the model did not catch the broken protocol"
    );
}

// ---------------------------------------------------------------------------
// The engine's protocol holds

#[test]
fn guest_remap_and_balloon() {
    must_hold(Scenario::GuestRewrite { remap: true });
}

#[test]
fn guest_clear_and_balloon() {
    must_hold(Scenario::GuestRewrite { remap: false });
}

#[test]
fn block_pin_vs_guest_split_and_balloon() {
    must_hold(Scenario::BlockVsGuestSplit);
}

#[test]
fn block_pin_vs_frame_freeze() {
    must_hold(Scenario::BlockVsFreeze);
}

#[test]
fn pin_vs_discard_then_populate() {
    must_hold(Scenario::PinVsDiscard { get: false });
}

#[test]
fn block_populate_vs_discard() {
    must_hold(Scenario::BlockPopulateVsDiscard);
}

#[test]
fn pin_and_get_vs_discard_then_populate() {
    must_hold(Scenario::PinVsDiscard { get: true });
}

// ---------------------------------------------------------------------------
// The checker has teeth

#[test]
fn caught_recheck_before_pin() {
    must_be_caught(
        Protocol::RecheckBeforePin,
        Scenario::GuestRewrite { remap: true },
    );
    must_be_caught(
        Protocol::RecheckBeforePin,
        Scenario::GuestRewrite { remap: false },
    );
}

#[test]
fn caught_freeze_ignoring_the_block() {
    must_be_caught(Protocol::FreezeIgnoresBlock, Scenario::BlockVsFreeze);
}

#[test]
fn caught_block_pin_ignoring_frozen_frames() {
    must_be_caught(Protocol::BlockIgnoresFrozen, Scenario::BlockVsFreeze);
}

#[test]
fn caught_freeze_by_load_then_store() {
    must_be_caught(
        Protocol::FreezeByLoadStore,
        Scenario::PinVsDiscard { get: false },
    );
}

/// The engine's first populate (populate, mark populated, then pin, with no
/// reference held) let a balloon freeze, MADV_DONTNEED and "mark
/// unpopulated" (a no-op: the bit was still set) in between, so the
/// `mark_populated` that followed cleared the bit of a discarded page and a
/// pin took a page with no host backing. The engine now populates while
/// holding the reference (`take_frame_unpopulated`); this checks that the
/// model still catches the old way.
#[test]
fn caught_populate_without_a_reference() {
    must_be_caught(
        Protocol::PopulateWithoutReference,
        Scenario::PinVsDiscard { get: false },
    );
}

/// When the guest replaces a whole page table (the PD entry changes, for
/// instance a collapse into a 2M page) and then frees a frame that table
/// mapped, the old table page and its leaf are unchanged, so a fast path
/// that read the old PD entry before the swap could pin the freed frame
/// after it was discarded and reused, with its leaf recheck passing. The
/// engine rechecks the entries above the leaf after the pin too (fast.rs:
/// `Upper::intact`, once per run of 4K leaves; slow.rs per page), which
/// closes it, as Linux's gup_fast closes it by rechecking the PMD.
#[test]
fn table_swap_with_parent_recheck() {
    must_hold(Scenario::TableSwap);
}

/// The engine's first version rechecked only the leaf: the model catches
/// the table-swap race there (found by this model, fixed in the engine).
#[test]
fn caught_table_swap_with_leaf_recheck_only() {
    must_be_caught(Protocol::LeafRecheckOnly, Scenario::TableSwap);
}

/// Write a summary line to the real stderr, past the test harness's output
/// capture (which takes `println!`, not direct writes), so that the counts
/// show in every CI log.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
