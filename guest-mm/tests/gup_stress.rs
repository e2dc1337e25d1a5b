// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guarantees 1, 3 and 5 (DESIGN 4.7) under stress: guest threads rewriting
//! page tables, device threads pinning and unpinning through them, and a
//! balloon discarding frames, all at once.
//!
//! * **Guest** threads (each owns some 2M slots of the virtual range) remap
//!   4K leaves to other frames, clear them, toggle their R/W bit, and swap a
//!   slot between a page table of 4K leaves and a 2M leaf (remapping and
//!   toggling the 2M leaf too). Before every store they log the mapping it
//!   installs: per virtual page, the set of frames ever mapped there, and
//!   the set ever mapped writable (a bitmap each).
//! * **Device** threads call [`Gup::pin`] with a page-tables address space
//!   over random ranges, mixing PIN / GET / WRITE / TOUCH / USER, keep up to
//!   four requests at once for a while, and release them in random order.
//!   For every extent they check that each page's (virtual page, frame)
//!   pair is in the guest's log (writable for WRITE requests): the mapping
//!   existed at some instant (guarantee 3). They count every frame they
//!   hold in a shadow "held by the test" counter, write a token (unique per
//!   request) into every held page through the extent's host pointer, and
//!   just before releasing check the token is still there: a discard
//!   (MADV_DONTNEED) would have zeroed it (guarantee 1).
//! * A **balloon** thread freezes random runs of frames, and for each frame
//!   it froze checks the shadow counter is zero (a frozen frame must not be
//!   held), discards it with MADV_DONTNEED, marks it unpopulated and
//!   unfreezes it (the engine's own discard, reimplemented here with
//!   `FrameTable::freeze` / `mark_unpopulated` / `unfreeze` so that the
//!   check sits between freeze and discard); one run in eight goes through
//!   [`Gup::discard`] itself.
//!
//! At the end every reference count of the region, its frozen count and
//! the engine's outstanding pin and get counters are zero (guarantee 5).
//!
//! Operations (pin calls + page-table stores + balloon frame operations):
//! `GUP_STRESS_OPS` (default 4,000,000, of which at least a quarter are pin
//! calls and a quarter balloon frame operations; the guest threads store
//! freely and make up the rest, usually far more); seed for the tables and
//! the threads' choices: `GUP_STRESS_SEED` (the interleaving is the OS's).
//! The counts and the engine's counters (JSON) are printed at the end. A
//! longer run:
//!
//! ```text
//! GUP_STRESS_OPS=40000000 cargo test --release -p guest-mm --test gup_stress -- --nocapture
//! ```

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ctx4, Rng, A, D, MIB, P, PS, RW, US};
use guest_mm::gup::{
    AddressSpace, Fallback, GuestMemory, Gup, GupError, GupFlags, Pinned, RegionOptions,
};
use guest_mm::paging::PagingContext;
use vm_memory::{Bytes, GuestAddress};

const PAGE: u64 = 4096;
const BLOCK: u64 = 2 * MIB;

/// Guest RAM: one region at 0.
const RAM: u64 = 64 * MIB;
/// Paging structures: PML4, PDPT, PD, then one page table per slot.
const PML4: u64 = 0x10_0000;
const PDPT: u64 = PML4 + PAGE;
const PD: u64 = PDPT + PAGE;
const PT0: u64 = PD + PAGE;
/// Frames the guest maps: [POOL, RAM).
const POOL: u64 = 16 * MIB;
const POOL_FRAMES: u64 = (RAM - POOL) / PAGE;
const POOL_BLOCKS: u64 = (RAM - POOL) / BLOCK;

/// The virtual range: SLOTS 2M slots (one PD entry each) from VA.
const VA: u64 = 0x7000_0000_0000;
const SLOTS: u64 = 16;
const VPAGES: u64 = SLOTS * 512;

const WRITERS: usize = 2;
const PINNERS: usize = 3;
/// The hot pages: the first HOT of slots 0 and 1.
const HOT: u64 = 32;
/// Requests a device thread keeps at once.
const HOLD: usize = 4;

fn pt(slot: u64) -> u64 {
    PT0 + slot * PAGE
}
fn pte_addr(vpage: u64) -> u64 {
    pt(vpage / 512) + (vpage % 512) * 8
}
fn pde_addr(slot: u64) -> u64 {
    PD + slot * 8
}
/// The non-leaf PD entry of a slot in 4K mode.
fn table_entry(slot: u64) -> u64 {
    pt(slot) | P | RW | US
}

/// Store a paging entry the way a vCPU does: one atomic 8-byte store.
fn store(mem: &GuestMemory, gpa: u64, v: u64) {
    mem.store(v, GuestAddress(gpa), Ordering::Release).unwrap();
}

/// Load a paging entry atomically.
fn load(mem: &GuestMemory, gpa: u64) -> u64 {
    mem.load(GuestAddress(gpa), Ordering::Acquire).unwrap()
}

/// A bitmap of atomics.
struct Bits(Vec<AtomicU64>);

impl Bits {
    fn new(bits: u64) -> Self {
        Bits((0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }
    fn set(&self, i: u64) {
        // Release, and before the store that makes the mapping visible.
        self.0[(i / 64) as usize].fetch_or(1 << (i % 64), Ordering::SeqCst);
    }
    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize].load(Ordering::SeqCst) & (1 << (i % 64)) != 0
    }
}

/// Every mapping the guest threads ever installed.
struct Log {
    /// (virtual page, pool frame) for 4K leaves; and the writable ones.
    small: Bits,
    small_w: Bits,
    /// (slot, pool block) for 2M leaves; and the writable ones.
    large: Bits,
    large_w: Bits,
}

impl Log {
    fn new() -> Self {
        Log {
            small: Bits::new(VPAGES * POOL_FRAMES),
            small_w: Bits::new(VPAGES * POOL_FRAMES),
            large: Bits::new(SLOTS * POOL_BLOCKS),
            large_w: Bits::new(SLOTS * POOL_BLOCKS),
        }
    }

    /// Log the PTE `entry` about to be stored for `vpage`.
    fn record_pte(&self, vpage: u64, entry: u64) {
        if entry & P == 0 {
            return;
        }
        let frame = ((entry & 0x000f_ffff_ffff_f000) - POOL) / PAGE;
        let i = vpage * POOL_FRAMES + frame;
        self.small.set(i);
        if entry & RW != 0 {
            self.small_w.set(i);
        }
    }

    /// Log the PD entry `entry` about to be stored for `slot` (only a 2M
    /// leaf maps anything by itself).
    fn record_pde(&self, slot: u64, entry: u64) {
        if entry & (P | PS) != P | PS {
            return;
        }
        let block = ((entry & 0x000f_ffff_ffe0_0000) - POOL) / BLOCK;
        let i = slot * POOL_BLOCKS + block;
        self.large.set(i);
        if entry & RW != 0 {
            self.large_w.set(i);
        }
    }

    /// Whether virtual page `vpage` ever mapped `gpa`'s frame (writable).
    fn mapped(&self, vpage: u64, gpa: u64, write: bool) -> bool {
        if !(POOL..RAM).contains(&gpa) {
            return false;
        }
        let frame = (gpa - POOL) / PAGE;
        let i = vpage * POOL_FRAMES + frame;
        let small = if write {
            self.small_w.get(i)
        } else {
            self.small.get(i)
        };
        if small {
            return true;
        }
        // A 2M leaf maps page k of the slot to frame k of the block.
        let slot = vpage / 512;
        if frame % 512 != vpage % 512 {
            return false;
        }
        let i = slot * POOL_BLOCKS + frame / 512;
        if write {
            self.large_w.get(i)
        } else {
            self.large.get(i)
        }
    }
}

/// What a violation is about.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A token changed under a pin (the page was discarded).
    Token = 0,
    /// The balloon froze a frame the test holds.
    FrozenHeld = 1,
    /// An extent maps a page that was never mapped so (guarantee 3).
    NeverMapped = 2,
    /// Anything else (holes, offsets, maybe_dma_pinned).
    Other = 3,
}

/// Violations found, by kind.
#[derive(Default)]
struct Violations {
    count: AtomicU64,
    kinds: [AtomicU64; 4],
    first: Mutex<Vec<String>>,
}

impl Violations {
    fn report(&self, kind: Kind, what: String) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.kinds[kind as usize].fetch_add(1, Ordering::SeqCst);
        let mut first = self.first.lock().unwrap();
        if first.len() < 10 {
            first.push(what);
        }
    }
}

/// Deliberate breakage, to show the checks catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sabotage {
    /// None: the real test.
    None,
    /// The balloon discards without freezing (so without looking at pins).
    BalloonSkipsFreeze,
    /// The guest threads do not log some of the mappings they install.
    UnloggedMappings,
}

/// What the threads share.
struct World {
    sabotage: Sabotage,
    gup: Gup,
    ctx: PagingContext,
    log: Log,
    /// Frames held by the device threads, per region frame.
    shadow: Vec<AtomicU32>,
    bad: Violations,
    stop: AtomicBool,
    pins: AtomicU64,
    pin_pages: AtomicU64,
    pin_errors: [AtomicU64; 4],
    pte_writes: AtomicU64,
    balloon_ops: AtomicU64,
    balloon_discards: AtomicU64,
    tokens_checked: AtomicU64,
    extents_checked: AtomicU64,
}

impl World {
    /// Keep device requests and balloon operations within a factor of two
    /// of each other (the one ahead yields the CPU): the run lasts until
    /// both reached their share.
    fn pace(&self, balloon: bool) {
        loop {
            let (p, _, b) = self.ops();
            let (mine, other) = if balloon { (b, p) } else { (p, b) };
            if mine <= 2 * other + 4096 || self.stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::yield_now();
        }
    }

    fn ops(&self) -> (u64, u64, u64) {
        (
            self.pins.load(Ordering::Relaxed),
            self.pte_writes.load(Ordering::Relaxed),
            self.balloon_ops.load(Ordering::Relaxed),
        )
    }
}

fn random_leaf_flags(rng: &mut Rng) -> u64 {
    let mut f = P | US;
    if !rng.chance(4) {
        f |= RW;
    }
    if !rng.chance(6) {
        f |= A;
        if !rng.chance(5) {
            f |= D;
        }
    }
    f
}

fn random_4k(rng: &mut Rng) -> u64 {
    (POOL + rng.below(POOL_FRAMES) * PAGE) | random_leaf_flags(rng)
}

fn random_2m(rng: &mut Rng) -> u64 {
    (POOL + rng.below(POOL_BLOCKS) * BLOCK) | random_leaf_flags(rng) | PS
}

/// Build the tables: every slot starts as a page table of random 4K leaves
/// (a few as 2M leaves); every mapping is logged.
fn build(w: &World, rng: &mut Rng) -> Vec<bool> {
    let zero = [0u8; PAGE as usize];
    let map = w.gup.memory_map();
    let mem = map.memory();
    for t in [PML4, PDPT, PD] {
        mem.write_slice(&zero, GuestAddress(t)).unwrap();
    }
    store(mem, PML4 + ((VA >> 39) & 511) * 8, PDPT | P | RW | US);
    store(mem, PDPT + ((VA >> 30) & 511) * 8, PD | P | RW | US);
    let mut large = Vec::new();
    for slot in 0..SLOTS {
        for i in 0..512 {
            let v = slot * 512 + i;
            let e = if rng.chance(10) { 0 } else { random_4k(rng) };
            w.log.record_pte(v, e);
            store(mem, pte_addr(v), e);
        }
        let is_large = rng.chance(4);
        let pde = if is_large {
            random_2m(rng)
        } else {
            table_entry(slot)
        };
        w.log.record_pde(slot, pde);
        store(mem, pde_addr(slot), pde);
        large.push(is_large);
    }
    large
}

/// A guest thread: rewrites the tables of the slots it owns.
fn guest(w: &World, id: usize, seed: u64, mut large: Vec<bool>) {
    let mut rng = Rng(seed);
    let map = w.gup.memory_map();
    let mem = map.memory();
    let slots: Vec<u64> = (0..SLOTS).filter(|s| *s as usize % WRITERS == id).collect();
    let mut n = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        // Half the stores go to the first HOT pages of the first two slots,
        // where half the small requests go too: races on the same entries.
        let hot = rng.chance(2);
        let slot = if hot {
            slots[0]
        } else {
            slots[rng.below(slots.len() as u64) as usize]
        };
        let r = rng.below(100);
        if r < 85 {
            // A 4K leaf of the slot's table (live or not).
            let v = slot * 512 + rng.below(if hot { HOT } else { 512 });
            let at = pte_addr(v);
            let mut log = true;
            let e = if hot && r < 45 {
                // A perfect mapping (the fast path takes it, then rechecks).
                log = w.sabotage != Sabotage::UnloggedMappings;
                (POOL + rng.below(POOL_FRAMES) * PAGE) | P | RW | US | A | D
            } else if r < 45 {
                random_4k(&mut rng)
            } else if r < 60 {
                0
            } else {
                let cur = load(mem, at);
                if cur & P == 0 {
                    random_4k(&mut rng)
                } else {
                    cur ^ RW
                }
            };
            if log {
                w.log.record_pte(v, e);
            }
            store(mem, at, e);
        } else {
            let at = pde_addr(slot);
            let s = slot as usize;
            let e = if !large[s] {
                large[s] = true;
                random_2m(&mut rng)
            } else if r < 92 {
                large[s] = false;
                table_entry(slot)
            } else if r < 96 {
                random_2m(&mut rng)
            } else {
                load(mem, at) ^ RW
            };
            w.log.record_pde(slot, e);
            store(mem, at, e);
        }
        n += 1;
        if n % 256 == 0 {
            w.pte_writes.fetch_add(256, Ordering::Relaxed);
        }
    }
    w.pte_writes.fetch_add(n % 256, Ordering::Relaxed);
}

/// One request a device thread holds.
struct Held {
    pin: Pinned,
    /// (host address, token) written into the held pages.
    tokens: Vec<(usize, u64)>,
    /// Region frames counted in the shadow.
    frames: Vec<usize>,
}

/// The token word at host address `at` (8-byte aligned, inside a page the
/// caller holds through a live [`Pinned`]).
fn token(at: usize) -> &'static AtomicU64 {
    // SAFETY: `at` is 8-byte aligned and lies in a page of guest RAM that
    // the caller holds (pinned or referenced) through a live `Pinned`, whose
    // regions keep the mapping alive; the engine never unmaps a region
    // under a pin, and this test never removes one. Other threads touch the
    // word only atomically (no two requests share a word) or not at all
    // while it is held (a discard needs the frame frozen). Callers use the
    // reference only while they hold the request.
    unsafe { &*(at as *const AtomicU64) }
}

/// A device thread.
fn device(w: &World, id: usize, seed: u64) {
    let mut rng = Rng(seed);
    let space = AddressSpace::page_tables(w.ctx);
    let mut held: [Option<Held>; HOLD] = Default::default();
    let mut seq = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        let q = rng.below(HOLD as u64) as usize;
        if let Some(h) = held[q].take() {
            release(w, h);
        }
        // A random range: mostly a few pages, sometimes several slots.
        let pages = if rng.chance(8) {
            1 + rng.below(2048)
        } else {
            1 + rng.below(32)
        };
        let first = if pages <= HOT && rng.chance(2) {
            rng.below(2) * 512 + rng.below(HOT)
        } else {
            rng.below(VPAGES - pages.min(VPAGES - 1))
        };
        let mut addr = VA + first * PAGE;
        let mut len = pages * PAGE;
        if rng.chance(4) {
            let off = rng.below(PAGE);
            addr += off;
            len -= off.min(len - 1);
        }
        let mut flags = if rng.chance(2) {
            GupFlags::PIN
        } else {
            GupFlags::GET
        };
        let write = rng.chance(2);
        if write {
            flags |= GupFlags::WRITE;
        }
        if rng.chance(2) {
            flags |= GupFlags::TOUCH;
        }
        if rng.chance(2) {
            flags |= GupFlags::USER;
        }
        if w.pins.fetch_add(1, Ordering::Relaxed) % 64 == 0 {
            w.pace(false);
        }
        let pin = match w.gup.pin(&space, addr, len, flags) {
            Ok(p) => p,
            Err(e) => {
                let k = match e {
                    GupError::Fault { .. } => 0,
                    GupError::Again => 1,
                    GupError::NoMemory | GupError::HwPoison => 2,
                    _ => 3,
                };
                w.pin_errors[k].fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        seq += 1;
        // A token no other request uses, never zero.
        let value = ((id as u64 + 1) << 56) | (q as u64) << 48 | seq;
        // Each (thread, slot) pair writes its own word of every page.
        let word = ((id * HOLD + q) * 8) as u64;
        let mut h = Held {
            pin,
            tokens: Vec::new(),
            frames: Vec::new(),
        };
        check_and_mark(w, &mut h, write, value, word);
        if rng.chance(4) {
            release(w, h);
        } else {
            held[q] = Some(h);
        }
    }
    for h in held.iter_mut().filter_map(Option::take) {
        release(w, h);
    }
}

/// Check every extent against the log; count the frames in the shadow;
/// write the tokens.
fn check_and_mark(w: &World, h: &mut Held, write: bool, value: u64, word: u64) {
    let map = w.gup.memory_map();
    let region = &map.regions()[0];
    let mut pages = 0;
    for e in h.pin.extents() {
        w.extents_checked.fetch_add(1, Ordering::Relaxed);
        let Some(host) = e.host_ptr() else {
            w.bad
                .report(Kind::Other, format!("a hole without DUMP: {e:?}"));
            continue;
        };
        let host = host as usize;
        let mut off = 0;
        while off < e.len {
            let va = e.addr + off;
            let gpa = e.gpa + off;
            let in_page = (PAGE - va % PAGE).min(e.len - off);
            let vpage = (va - VA) / PAGE;
            if va < VA || vpage >= VPAGES || !w.log.mapped(vpage, gpa, write) {
                w.bad.report(
                    Kind::NeverMapped,
                    format!(
                        "extent {e:?}: va {va:#x} -> gpa {gpa:#x} (write {write}) was never mapped"
                    ),
                );
            }
            if va % PAGE != gpa % PAGE {
                w.bad.report(
                    Kind::Other,
                    format!("extent {e:?}: page offsets differ at {va:#x}"),
                );
            }
            let frame = region.frame_index(gpa) as usize;
            w.shadow[frame].fetch_add(1, Ordering::SeqCst);
            h.frames.push(frame);
            if h.pin.is_pin() && !w.gup.maybe_dma_pinned(gpa) {
                w.bad.report(
                    Kind::Other,
                    format!("pinned gpa {gpa:#x} is not maybe_dma_pinned"),
                );
            }
            // The token's word, if this extent covers it in this page.
            let page_gpa = gpa & !(PAGE - 1);
            let t = page_gpa + word;
            if t >= gpa && t + 8 <= gpa + in_page {
                let at = host + (t - e.gpa) as usize;
                token(at).store(value, Ordering::Relaxed);
                h.tokens.push((at, value));
            }
            off += in_page;
            pages += 1;
        }
    }
    w.pin_pages.fetch_add(pages, Ordering::Relaxed);
}

/// Check the tokens, uncount the frames, drop the request.
fn release(w: &World, h: Held) {
    for &(at, wrote) in &h.tokens {
        let now = token(at).load(Ordering::Relaxed);
        if now != wrote {
            w.bad.report(Kind::Token, format!(
                "token at host {at:#x} is {now:#x}, wrote {wrote:#x}: the page changed under a pin (discarded?)"
            ));
        }
    }
    w.tokens_checked
        .fetch_add(h.tokens.len() as u64, Ordering::Relaxed);
    for &f in &h.frames {
        w.shadow[f].fetch_sub(1, Ordering::SeqCst);
    }
    drop(h.pin);
}

/// The balloon: freeze, check, discard, mark unpopulated, unfreeze.
fn balloon(w: &World, seed: u64) {
    let mut rng = Rng(seed);
    let map = w.gup.memory_map();
    let region = map.regions()[0].clone();
    let ft = region.frames();
    while !w.stop.load(Ordering::Relaxed) {
        let n = if rng.chance(16) {
            512
        } else {
            1 + rng.below(32)
        };
        let start = if n == 512 {
            POOL + rng.below(POOL_BLOCKS) * BLOCK
        } else {
            POOL + rng.below(POOL_FRAMES - n) * PAGE
        };
        let sabotage = w.sabotage == Sabotage::BalloonSkipsFreeze;
        if rng.chance(8) && !sabotage {
            let done = w.gup.discard(start, n * PAGE).unwrap();
            w.balloon_discards.fetch_add(done, Ordering::Relaxed);
        } else {
            for gpa in (start..start + n * PAGE).step_by(PAGE as usize) {
                let f = region.frame_index(gpa);
                if !sabotage && ft.freeze(f).is_err() {
                    continue;
                }
                let holders = w.shadow[f as usize].load(Ordering::SeqCst);
                if holders != 0 && !sabotage {
                    w.bad.report(
                        Kind::FrozenHeld,
                        format!("froze frame {gpa:#x} while the test holds it ({holders} holders)"),
                    );
                }
                let host = region.host_addr(gpa);
                // SAFETY: the page lies in the region's live mapping (we
                // hold the region) and stays mapped: DONTNEED on a private
                // anonymous mapping only makes it read as zeroes. The frame
                // is frozen, so nobody holds it, except under the sabotage
                // that skips the freeze, where holders see their words turn
                // to zero (they access them only atomically): what the
                // token check must catch.
                let rc = unsafe {
                    libc::madvise(
                        host as *mut libc::c_void,
                        PAGE as usize,
                        libc::MADV_DONTNEED,
                    )
                };
                assert_eq!(rc, 0, "madvise: {}", std::io::Error::last_os_error());
                if !sabotage {
                    ft.mark_unpopulated(f);
                    ft.unfreeze(f);
                }
                w.balloon_discards.fetch_add(1, Ordering::Relaxed);
            }
        }
        w.balloon_ops.fetch_add(n, Ordering::Relaxed);
        w.pace(true);
    }
}

/// Run the threads until `target` operations; returns the world (all
/// threads joined, every request released) and the elapsed time.
fn run(target: u64, seed: u64, sabotage: Sabotage) -> (Arc<World>, Duration) {
    report(&format!(
        "gup_stress {sabotage:?}: target {target} operations, seed {seed}"
    ));
    let gup = Gup::anonymous(&[(0, RAM as usize)], RegionOptions::default()).unwrap();
    let w = Arc::new(World {
        sabotage,
        gup,
        ctx: ctx4(PML4),
        log: Log::new(),
        shadow: (0..RAM / PAGE).map(|_| AtomicU32::new(0)).collect(),
        bad: Violations::default(),
        stop: AtomicBool::new(false),
        pins: AtomicU64::new(0),
        pin_pages: AtomicU64::new(0),
        pin_errors: Default::default(),
        pte_writes: AtomicU64::new(0),
        balloon_ops: AtomicU64::new(0),
        balloon_discards: AtomicU64::new(0),
        tokens_checked: AtomicU64::new(0),
        extents_checked: AtomicU64::new(0),
    });
    let mut rng = Rng(seed | 1);
    let large = build(&w, &mut rng);

    let started = Instant::now();
    let mut threads = Vec::new();
    for id in 0..WRITERS {
        let (w, s, l) = (w.clone(), rng.next() | 1, large.clone());
        threads.push(std::thread::spawn(move || guest(&w, id, s, l)));
    }
    for id in 0..PINNERS {
        let (w, s) = (w.clone(), rng.next() | 1);
        threads.push(std::thread::spawn(move || device(&w, id, s)));
    }
    {
        let (w, s) = (w.clone(), rng.next() | 1);
        threads.push(std::thread::spawn(move || balloon(&w, s)));
    }
    // Run until the target is reached, device requests and balloon
    // operations making up at least a quarter of it each (the guest threads
    // store freely, never waiting for the others, so that they race them).
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let (p, t, b) = w.ops();
        let min = target / 4;
        if p + t + b >= target && p >= min && b >= min {
            break;
        }
        if w.bad.count.load(Ordering::SeqCst) > 100 {
            break;
        }
    }
    w.stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();

    let (p, t, b) = w.ops();
    let s = w.gup.stats();
    report(&format!(
        "gup_stress {sabotage:?}: {} operations in {elapsed:.2?}: {p} pin calls ({} pages, errors: fault {} again {} nomem {} other {}), \
         {t} page-table stores, {b} balloon frame operations ({} discards); {} extents and {} tokens checked; violations {:?}",
        p + t + b,
        w.pin_pages.load(Ordering::Relaxed),
        w.pin_errors[0].load(Ordering::Relaxed),
        w.pin_errors[1].load(Ordering::Relaxed),
        w.pin_errors[2].load(Ordering::Relaxed),
        w.pin_errors[3].load(Ordering::Relaxed),
        w.balloon_discards.load(Ordering::Relaxed),
        w.extents_checked.load(Ordering::Relaxed),
        w.tokens_checked.load(Ordering::Relaxed),
        w.bad.kinds.each_ref().map(|k| k.load(Ordering::SeqCst)),
    ));
    report(&format!(
        "gup_stress {sabotage:?}: fast hits {}, slow fallbacks {} (leaf changed {}, frozen {}, not populated {}), counters {}",
        s.fast_hits,
        s.fallbacks_total(),
        s.fallback(Fallback::LeafChanged),
        s.fallback(Fallback::Frozen),
        s.fallback(Fallback::NotPopulated),
        s.to_json()
    ));
    (w, elapsed)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const SEED: u64 = 0x5eed_9a9e;

/// Guarantees 1, 3 and 5 under `GUP_STRESS_OPS` operations (default 4 * 10^6).
#[test]
fn gup_stress() {
    let target = env_u64("GUP_STRESS_OPS", 4_000_000);
    let seed = env_u64("GUP_STRESS_SEED", SEED);
    let (w, _) = run(target, seed, Sabotage::None);

    let (p, t, b) = w.ops();
    let s = w.gup.stats();
    let bad = w.bad.count.load(Ordering::SeqCst);
    assert_eq!(bad, 0, "violations: {:#?}", w.bad.first.lock().unwrap());
    // Guarantee 5: everything is back to zero.
    let map = w.gup.memory_map();
    let ft = map.regions()[0].frames();
    assert_eq!(ft.total_refs(), 0, "references leaked");
    assert_eq!(ft.frozen_count(), 0, "frames left frozen");
    assert_eq!(s.pins_outstanding, 0);
    assert_eq!(s.gets_outstanding, 0);
    assert!(w.shadow.iter().all(|c| c.load(Ordering::SeqCst) == 0));
    // The run did what it claims to.
    assert!(p + t + b >= target);
    assert!(w.tokens_checked.load(Ordering::Relaxed) > 0);
    assert!(w.balloon_discards.load(Ordering::Relaxed) > 0);
    assert!(s.fast_hits > 0 && s.slow_calls > 0);
}

/// The token check has teeth: a balloon that discards without freezing is
/// caught by the tokens alone (its own shadow check is off).
#[test]
fn caught_balloon_skipping_the_freeze() {
    let (w, _) = run(200_000, SEED, Sabotage::BalloonSkipsFreeze);
    let tokens = w.bad.kinds[Kind::Token as usize].load(Ordering::SeqCst);
    assert!(tokens > 0, "a discard under a pin went unnoticed");
}

/// The mapping log check has teeth: mappings the guest installed without
/// logging them are reported as never mapped.
#[test]
fn caught_unlogged_mappings() {
    let (w, _) = run(200_000, SEED, Sabotage::UnloggedMappings);
    let never = w.bad.kinds[Kind::NeverMapped as usize].load(Ordering::SeqCst);
    assert!(never > 0, "pins of unlogged mappings went unnoticed");
}

/// Write a summary line to the real stderr, past the test harness's output
/// capture (which takes `println!`, not direct writes), so that the counts
/// show in every CI log.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
