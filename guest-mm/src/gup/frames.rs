// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The frame table (DESIGN 4.3): one atomic counter per 4K guest frame and
//! one per 2M block of every RAM region, and the protocol that pins, gets,
//! freezes and discards them.
//!
//! # Counter layout
//!
//! A **frame word** (`u32`):
//!
//! | bits  | meaning |
//! |-------|---------|
//! | 0..30 | references: `get` adds 1, `pin` adds [`PIN_BIAS`] (1024) |
//! | 30    | [`FRAME_UNPOPULATED`]: the host page may not be populated (lazily backed region, or discarded) |
//! | 31    | [`FRAME_FROZEN`]: someone is taking the frame away; nobody may pin it |
//!
//! A **block word** (`u64`, one per 512 frames, counted from the region start):
//!
//! | bits   | meaning |
//! |--------|---------|
//! | 0..40  | references taken through 2M/1G leaves (one per block, not 512) |
//! | 40..50 | how many of the block's frames are frozen |
//! | 50..60 | how many of the block's frames are unpopulated |
//!
//! # The protocol (why it is correct)
//!
//! Every decision is made by a read-modify-write on **one** word, so the
//! hardware orders the racing parties for us:
//!
//! * A 4K pin does `fetch_add` on the frame word, then looks at the old
//!   value: frozen or unpopulated means undo and refuse. A freezer does a
//!   compare-exchange from "no references" to "frozen" on the same word.
//!   Whichever of the two comes later in that word's modification order
//!   sees the other: the pinner sees FROZEN and backs off, or the freezer
//!   sees a reference and fails. A frame can therefore never be both pinned
//!   and frozen.
//! * A block pin (a 2M or 1G leaf) does `fetch_add` on the block word and
//!   refuses if any frame of the block is frozen or unpopulated. A freezer,
//!   after freezing the frame word, adds one to the block's frozen-frame
//!   count with `fetch_add` and backs out if the block has references. Again
//!   one word decides: the later of the two sees the earlier.
//! * A frame is discarded (MADV_DONTNEED) only while frozen, so never while
//!   pinned; it is marked unpopulated before it is unfrozen, so a later pin
//!   refuses it until the slow path has populated it again. The slow path
//!   populates while holding a reference ([`take_frame_unpopulated`]), so a
//!   discard cannot slip between its populate and its "populated" mark.
//!
//! The "maybe DMA-pinned" query ([`FrameTable::maybe_dma_pinned`]) reads
//! both words; it may say yes for 1024 plain gets (as Linux's does), never
//! no for a pinned frame.
//!
//! The protocol functions are generic over [`AtomicWord`] so that the loom
//! model (`guest-mm/tests/loom_fast_path.rs`) checks exactly this code.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What `pin` adds to a counter (`get` adds 1).
pub const PIN_BIAS: u32 = 1024;
/// Frame word: the frame is frozen.
pub const FRAME_FROZEN: u32 = 1 << 31;
/// Frame word: the host page may not be populated.
pub const FRAME_UNPOPULATED: u32 = 1 << 30;
/// Frame word: the reference count.
pub const FRAME_REFS: u32 = FRAME_UNPOPULATED - 1;

/// Frame word: references are refused from here on (Overflow). Half the
/// field: a refused attempt adds before it looks and subtracts after, so
/// the field must have room for every concurrent attempt on top of the
/// limit without carrying into the flag bits (2^19 attempts of a pin here).
pub const FRAME_REF_LIMIT: u32 = 1 << 29;

/// Block word: the reference count.
pub const BLOCK_REFS: u64 = (1 << 40) - 1;
/// Block word: references are refused from here on (see
/// [`FRAME_REF_LIMIT`]).
pub const BLOCK_REF_LIMIT: u64 = 1 << 39;
/// Block word: one frozen frame.
pub const BLOCK_FROZEN_ONE: u64 = 1 << 40;
/// Block word: the frozen-frame count.
pub const BLOCK_FROZEN: u64 = 0x3ff << 40;
/// Block word: one unpopulated frame.
pub const BLOCK_UNPOPULATED_ONE: u64 = 1 << 50;
/// Block word: the unpopulated-frame count.
pub const BLOCK_UNPOPULATED: u64 = 0x3ff << 50;

/// Frames per 2M block.
pub const FRAMES_PER_BLOCK: u64 = 512;

/// The atomic operations the protocol needs; implemented for the std
/// atomics here and for loom's atomics in the model-checking test.
pub trait AtomicWord {
    /// The integer type.
    type V: Copy;
    /// Atomic load.
    fn load(&self, order: Ordering) -> Self::V;
    /// Atomic add, returning the previous value.
    fn fetch_add(&self, v: Self::V, order: Ordering) -> Self::V;
    /// Atomic subtract, returning the previous value.
    fn fetch_sub(&self, v: Self::V, order: Ordering) -> Self::V;
    /// Atomic AND, returning the previous value.
    fn fetch_and(&self, v: Self::V, order: Ordering) -> Self::V;
    /// Atomic OR, returning the previous value.
    fn fetch_or(&self, v: Self::V, order: Ordering) -> Self::V;
    /// Atomic compare-exchange.
    fn compare_exchange(
        &self,
        current: Self::V,
        new: Self::V,
        success: Ordering,
        failure: Ordering,
    ) -> Result<Self::V, Self::V>;
}

macro_rules! impl_word {
    ($atomic:ty, $v:ty) => {
        impl AtomicWord for $atomic {
            type V = $v;
            #[inline]
            fn load(&self, order: Ordering) -> $v {
                <$atomic>::load(self, order)
            }
            #[inline]
            fn fetch_add(&self, v: $v, order: Ordering) -> $v {
                <$atomic>::fetch_add(self, v, order)
            }
            #[inline]
            fn fetch_sub(&self, v: $v, order: Ordering) -> $v {
                <$atomic>::fetch_sub(self, v, order)
            }
            #[inline]
            fn fetch_and(&self, v: $v, order: Ordering) -> $v {
                <$atomic>::fetch_and(self, v, order)
            }
            #[inline]
            fn fetch_or(&self, v: $v, order: Ordering) -> $v {
                <$atomic>::fetch_or(self, v, order)
            }
            #[inline]
            fn compare_exchange(
                &self,
                current: $v,
                new: $v,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$v, $v> {
                <$atomic>::compare_exchange(self, current, new, success, failure)
            }
        }
    };
}
impl_word!(AtomicU32, u32);
impl_word!(AtomicU64, u64);

/// Why a frame or block could not be taken or frozen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refused {
    /// The frame (or a frame of the block) is frozen.
    Frozen,
    /// The host page (or a page of the block) is not known to be populated.
    NotPopulated,
    /// The reference count would overflow.
    Overflow,
    /// Freeze only: the frame or its block has references.
    Busy,
}

/// Whether a reference may be kept, given the word's value before the add:
/// not frozen, not unpopulated (where `unpopulated` is a flag to refuse),
/// and below the reference limit. One decision for frame and block words.
#[inline(always)]
fn admit(old: u64, frozen: u64, unpopulated: u64, refs: u64, limit: u64) -> Result<(), Refused> {
    // The common case first, in one test.
    if old & (frozen | unpopulated) == 0 && old & refs < limit {
        Ok(())
    } else if old & frozen != 0 {
        Err(Refused::Frozen)
    } else if old & unpopulated != 0 {
        Err(Refused::NotPopulated)
    } else {
        Err(Refused::Overflow)
    }
}

/// Add `delta` to a frame word and keep it if `admit` says so; else undo.
///
/// SeqCst: the caller re-reads the guest's leaf entry after this returns
/// (pin, then recheck); the add must be globally visible before that read.
#[inline(always)]
fn take_frame_refusing<W: AtomicWord<V = u32>>(
    frame: &W,
    delta: u32,
    unpopulated: u32,
) -> Result<(), Refused> {
    let old = frame.fetch_add(delta, Ordering::SeqCst);
    let ok = admit(
        u64::from(old),
        u64::from(FRAME_FROZEN),
        u64::from(unpopulated),
        u64::from(FRAME_REFS),
        u64::from(FRAME_REF_LIMIT),
    );
    if ok.is_err() {
        frame.fetch_sub(delta, Ordering::SeqCst);
    }
    ok
}

/// Add `delta` to a block word and keep it if `admit` says so; else undo.
#[inline(always)]
fn take_block_refusing<W: AtomicWord<V = u64>>(
    block: &W,
    delta: u64,
    unpopulated: u64,
) -> Result<(), Refused> {
    let old = block.fetch_add(delta, Ordering::SeqCst);
    let ok = admit(old, BLOCK_FROZEN, unpopulated, BLOCK_REFS, BLOCK_REF_LIMIT);
    if ok.is_err() {
        block.fetch_sub(delta, Ordering::SeqCst);
    }
    ok
}

/// Take a reference of `delta` (1 for get, [`PIN_BIAS`] for pin) on a
/// frame word, unless it is frozen or unpopulated.
#[inline]
pub fn take_frame<W: AtomicWord<V = u32>>(frame: &W, delta: u32) -> Result<(), Refused> {
    take_frame_refusing(frame, delta, FRAME_UNPOPULATED)
}

/// [`take_frame`] for the slow path's populate step: refuses a frozen frame
/// but not an unpopulated one. Holding this reference keeps the frame from
/// being frozen (so discarded) while its host page is populated and marked
/// populated: without it, a discard could slip between the populate and the
/// mark, leaving a discarded page marked populated.
#[inline]
pub fn take_frame_unpopulated<W: AtomicWord<V = u32>>(
    frame: &W,
    delta: u32,
) -> Result<(), Refused> {
    take_frame_refusing(frame, delta, 0)
}

/// Drop a reference taken by [`take_frame`].
///
/// Release: everything the holder did with the page (a device's DMA, the
/// dirty marking) happens before a freezer can see the count reach zero.
#[inline]
pub fn release_frame<W: AtomicWord<V = u32>>(frame: &W, delta: u32) {
    frame.fetch_sub(delta, Ordering::Release);
}

/// Take a reference of `delta` on a 2M block word, unless one of its frames
/// is frozen or unpopulated.
#[inline]
pub fn take_block<W: AtomicWord<V = u64>>(block: &W, delta: u64) -> Result<(), Refused> {
    take_block_refusing(block, delta, BLOCK_UNPOPULATED)
}

/// [`take_block`] for the populate step (see [`take_frame_unpopulated`]).
#[inline]
pub fn take_block_unpopulated<W: AtomicWord<V = u64>>(
    block: &W,
    delta: u64,
) -> Result<(), Refused> {
    take_block_refusing(block, delta, 0)
}

/// Drop a reference taken by [`take_block`].
#[inline]
pub fn release_block<W: AtomicWord<V = u64>>(block: &W, delta: u64) {
    block.fetch_sub(delta, Ordering::Release);
}

/// Freeze a frame: compare-exchange its word from "no references, not
/// frozen" to frozen, then count it in its block and back out if the block
/// is referenced (a 2M/1G pin covers this frame).
pub fn freeze_frame<F, B>(frame: &F, block: &B) -> Result<(), Refused>
where
    F: AtomicWord<V = u32>,
    B: AtomicWord<V = u64>,
{
    let cur = frame.load(Ordering::Acquire);
    if cur & FRAME_FROZEN != 0 {
        return Err(Refused::Frozen);
    }
    if cur & FRAME_REFS != 0 {
        return Err(Refused::Busy);
    }
    // Acquire: a pin released just before (Release) happens-before whatever
    // the freezer does to the page next.
    if frame
        .compare_exchange(cur, cur | FRAME_FROZEN, Ordering::SeqCst, Ordering::Acquire)
        .is_err()
    {
        return Err(Refused::Busy);
    }
    let old = block.fetch_add(BLOCK_FROZEN_ONE, Ordering::SeqCst);
    if old & BLOCK_REFS != 0 {
        block.fetch_sub(BLOCK_FROZEN_ONE, Ordering::SeqCst);
        frame.fetch_and(!FRAME_FROZEN, Ordering::Release);
        return Err(Refused::Busy);
    }
    Ok(())
}

/// Undo [`freeze_frame`]. Only the freezer calls this.
pub fn unfreeze_frame<F, B>(frame: &F, block: &B)
where
    F: AtomicWord<V = u32>,
    B: AtomicWord<V = u64>,
{
    block.fetch_sub(BLOCK_FROZEN_ONE, Ordering::Release);
    frame.fetch_and(!FRAME_FROZEN, Ordering::Release);
}

/// Mark a frozen frame's host page as discarded (call after MADV_DONTNEED
/// and before [`unfreeze_frame`]). Idempotent.
pub fn mark_unpopulated<F, B>(frame: &F, block: &B)
where
    F: AtomicWord<V = u32>,
    B: AtomicWord<V = u64>,
{
    let old = frame.fetch_or(FRAME_UNPOPULATED, Ordering::AcqRel);
    if old & FRAME_UNPOPULATED == 0 {
        block.fetch_add(BLOCK_UNPOPULATED_ONE, Ordering::AcqRel);
    }
}

/// Mark a frame's host page as populated (after MADV_POPULATE succeeded).
/// Idempotent; only the caller that clears the bit updates the block. The
/// caller must hold a reference on the frame (or its block) from before the
/// populate, so that no discard can come in between.
pub fn mark_populated<F, B>(frame: &F, block: &B)
where
    F: AtomicWord<V = u32>,
    B: AtomicWord<V = u64>,
{
    let old = frame.fetch_and(!FRAME_UNPOPULATED, Ordering::AcqRel);
    if old & FRAME_UNPOPULATED != 0 {
        block.fetch_sub(BLOCK_UNPOPULATED_ONE, Ordering::AcqRel);
    }
}

/// Hint the CPU to fetch the cache line of `word` (a hint only: it never
/// faults, whatever the address).
#[inline(always)]
pub(crate) fn prefetch_word(word: *const AtomicU32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint; it has no architectural effect and
    // never faults, even on an invalid address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(word.cast(), std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = word;
}

/// The counters of one RAM region.
pub struct FrameTable {
    frames: Box<[AtomicU32]>,
    blocks: Box<[AtomicU64]>,
}

impl std::fmt::Debug for FrameTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameTable")
            .field("frames", &self.frames.len())
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

impl FrameTable {
    /// A table for `frames` 4K frames. With `populated` false every frame
    /// starts unpopulated (a lazily backed region: the slow path populates
    /// host pages before they are pinned).
    pub fn new(frames: u64, populated: bool) -> Self {
        let blocks = frames.div_ceil(FRAMES_PER_BLOCK);
        let fw = if populated { 0 } else { FRAME_UNPOPULATED };
        let frame_words = (0..frames).map(|_| AtomicU32::new(fw)).collect();
        let block_words = (0..blocks)
            .map(|b| {
                let n = if populated {
                    0
                } else {
                    (frames - b * FRAMES_PER_BLOCK).min(FRAMES_PER_BLOCK)
                };
                AtomicU64::new(n * BLOCK_UNPOPULATED_ONE)
            })
            .collect();
        FrameTable {
            frames: frame_words,
            blocks: block_words,
        }
    }

    /// Number of 4K frames.
    pub fn frames(&self) -> u64 {
        self.frames.len() as u64
    }

    /// Number of 2M blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// The word of frame `i` (index from the region start).
    #[inline]
    pub fn frame(&self, i: u64) -> Option<&AtomicU32> {
        self.frames.get(usize::try_from(i).ok()?)
    }

    /// The word of block `i` (frames `512 * i ..`).
    #[inline]
    pub fn block(&self, i: u64) -> Option<&AtomicU64> {
        self.blocks.get(usize::try_from(i).ok()?)
    }

    /// Hint the CPU to fetch frame `i`'s word (no effect when out of range).
    #[inline(always)]
    pub fn prefetch(&self, i: u64) {
        if let Some(f) = self.frames.get(i as usize) {
            prefetch_word(f);
        }
    }

    /// Every frame word, in frame order.
    pub fn frame_words(&self) -> &[AtomicU32] {
        &self.frames
    }

    /// The words of frame `i` and of its block.
    #[inline]
    pub fn frame_and_block(&self, i: u64) -> Option<(&AtomicU32, &AtomicU64)> {
        Some((self.frame(i)?, self.block(i / FRAMES_PER_BLOCK)?))
    }

    /// Whether frame `i` may be DMA-pinned, directly or through its block.
    /// False positives are possible (1024 gets look like a pin); false
    /// negatives are not.
    pub fn maybe_dma_pinned(&self, i: u64) -> bool {
        let Some((f, b)) = self.frame_and_block(i) else {
            return false;
        };
        f.load(Ordering::Acquire) & FRAME_REFS >= PIN_BIAS
            || b.load(Ordering::Acquire) & BLOCK_REFS >= u64::from(PIN_BIAS)
    }

    /// Whether frame `i` has any reference at all (frame or block).
    pub fn referenced(&self, i: u64) -> bool {
        let Some((f, b)) = self.frame_and_block(i) else {
            return false;
        };
        f.load(Ordering::Acquire) & FRAME_REFS != 0 || b.load(Ordering::Acquire) & BLOCK_REFS != 0
    }

    /// Whether frame `i` is frozen.
    pub fn is_frozen(&self, i: u64) -> bool {
        self.frame(i)
            .is_some_and(|f| f.load(Ordering::Acquire) & FRAME_FROZEN != 0)
    }

    /// Whether frame `i` is marked unpopulated.
    pub fn is_unpopulated(&self, i: u64) -> bool {
        self.frame(i)
            .is_some_and(|f| f.load(Ordering::Acquire) & FRAME_UNPOPULATED != 0)
    }

    /// Freeze frame `i` (see [`freeze_frame`]).
    pub fn freeze(&self, i: u64) -> Result<(), Refused> {
        let (f, b) = self.frame_and_block(i).ok_or(Refused::Busy)?;
        freeze_frame(f, b)
    }

    /// Unfreeze frame `i`, which the caller froze.
    pub fn unfreeze(&self, i: u64) {
        if let Some((f, b)) = self.frame_and_block(i) {
            unfreeze_frame(f, b);
        }
    }

    /// Mark frozen frame `i` discarded.
    pub fn mark_unpopulated(&self, i: u64) {
        if let Some((f, b)) = self.frame_and_block(i) {
            mark_unpopulated(f, b);
        }
    }

    /// Mark frame `i` populated.
    pub fn mark_populated(&self, i: u64) {
        if let Some((f, b)) = self.frame_and_block(i) {
            mark_populated(f, b);
        }
    }

    /// Sum of all references (frames and blocks); zero when nothing is held.
    pub fn total_refs(&self) -> u64 {
        let f: u64 = self
            .frames
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire) & FRAME_REFS))
            .sum();
        let b: u64 = self
            .blocks
            .iter()
            .map(|w| w.load(Ordering::Acquire) & BLOCK_REFS)
            .sum();
        f + b
    }

    /// Number of frozen frames.
    pub fn frozen_count(&self) -> u64 {
        self.frames
            .iter()
            .filter(|w| w.load(Ordering::Acquire) & FRAME_FROZEN != 0)
            .count() as u64
    }
}
