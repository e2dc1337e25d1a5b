// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The "ideal" baseline of DESIGN section 8: the least work any per-frame
//! pinning design must do for a range, written inline in the bench.
//!
//! * A range walk of the 4-level tables: descend once, then read every entry
//!   of each table that covers the range with an atomic load (the guest may
//!   rewrite its tables at any moment), checking in one mask compare that it
//!   is present, writable, user, accessed (and dirty for a leaf) and has no
//!   reserved bit set. Anything else stops the walk (the engine would fall
//!   back to its slow path there).
//! * Pin: one atomic add per 4K frame on a per-frame counter array indexed by
//!   the frame number (bounds-checked: a frame outside RAM stops the walk),
//!   remembering which frames were pinned. 2M and 1G leaves take one atomic
//!   per 2M block instead (DESIGN 4.3).
//! * Unpin: one atomic sub per remembered frame or block.
//!
//! No shortcut the real engine could not take: every entry is loaded
//! atomically and every page gets its own atomic add and sub. What it leaves
//! out is what the engine adds on top (the memory-map snapshot, the frozen
//! check, the leaf recheck, the extents, RAII, the dirty bitmap).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use guest_mm::paging::entry::{PTE_A, PTE_D, PTE_P, PTE_PS, PTE_RW, PTE_US, PTE_XD};
use guest_mm::paging::{PagingContext, PagingMode};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::images::Mem;

/// What a pin adds to a frame's counter (DESIGN 4.3: a pin is a bias of 1024).
pub const PIN_BIAS: u32 = 1024;

/// Required bits of a non-leaf entry for a user write.
const TABLE_REQ: u64 = PTE_P | PTE_RW | PTE_US | PTE_A;
/// Required bits of a leaf for a user write with nothing left to set.
const LEAF_REQ: u64 = TABLE_REQ | PTE_D;
/// Address bits 51:12 of an entry (masked to MAXPHYADDR by the reserved
/// check: bits 51:M must be zero).
const ADDR: u64 = ((1 << 52) - 1) & !0xfff;

/// One paging structure, resolved to host memory.
type TablePage = [AtomicU64; 512];

/// Resolve the 4K table at `gpa` to host memory, if all of it is in RAM.
#[inline]
fn table(mem: &Mem, gpa: u64) -> Option<&TablePage> {
    let region = mem.find_region(GuestAddress(gpa))?;
    let off = gpa - region.start_addr().0;
    if off.checked_add(4096)? > region.len() {
        return None;
    }
    let host = region.get_host_address(MemoryRegionAddress(off)).ok()?;
    if (host as usize) % 4096 != 0 {
        return None;
    }
    // SAFETY: `host` is the start of 4096 bytes inside one live mmap'd
    // region of `mem` (bounds checked above), 4096-aligned (checked), and the
    // returned reference borrows `mem`, which keeps the mapping alive. The
    // guest may write its tables concurrently, so they are only ever read
    // through atomics, which is what AtomicU64 enforces.
    Some(unsafe { &*host.cast::<TablePage>() })
}

/// Reserved-bit masks for one context (SDM tables 4-15 to 4-20).
#[derive(Clone, Copy)]
struct Masks {
    /// Bits 51:M, and XD without EFER.NXE.
    high: u64,
    /// PS makes a PDPTE a 1G leaf (else PS is reserved there).
    gbpages: bool,
}

impl Masks {
    fn new(ctx: &PagingContext) -> Self {
        let m = ctx.phys_bits();
        let mut high = ((1u64 << 52) - 1) & !((1u64 << m) - 1);
        if ctx.efer & guest_mm::paging::context::EFER_NXE == 0 {
            high |= PTE_XD;
        }
        Masks {
            high,
            gbpages: ctx.features.gbpages,
        }
    }
}

/// Range-walk `[va, va + len)` (4K aligned) of a 4-level context, calling
/// `leaf(gpa, bytes, large)` for every leaf: a 4K leaf gives its frame and
/// 4096; a 2M or 1G leaf (`large`) gives the part of the range it maps.
/// Stops at the first entry that is not perfect or when `leaf` returns
/// false. Returns the bytes walked.
#[inline(always)]
pub fn range_walk<F>(mem: &Mem, ctx: &PagingContext, va: u64, len: u64, mut leaf: F) -> u64
where
    F: FnMut(u64, u64, bool) -> bool,
{
    assert_eq!(ctx.mode(), PagingMode::Level4, "the ideal walk is 4-level");
    assert!(va % 4096 == 0 && len % 4096 == 0 && len > 0);
    let masks = Masks::new(ctx);
    let last = va + len - 1;
    let mut done = 0;
    let _ = upper(mem, 4, ctx.root(), va, last, masks, &mut leaf, &mut done);
    done
}

/// The hot loop over one page table: one atomic load, one mask compare and
/// one callback per 4K page. `Err` stops the walk.
#[inline(always)]
fn page_table<F>(
    t: &TablePage,
    lo: usize,
    hi: usize,
    masks: Masks,
    leaf: &mut F,
    done: &mut u64,
) -> Result<(), ()>
where
    F: FnMut(u64, u64, bool) -> bool,
{
    for e in &t[lo..=hi] {
        let e = e.load(Ordering::Acquire);
        if e & (LEAF_REQ | masks.high) != LEAF_REQ || !leaf(e & ADDR, 4096, false) {
            return Err(());
        }
        *done += 4096;
    }
    Ok(())
}

/// Walk the table at `gpa` (level `lv`, 4 to 1) over `[first, last]`.
/// `Err` stops the walk.
#[allow(clippy::too_many_arguments)]
fn upper<F>(
    mem: &Mem,
    lv: u32,
    gpa: u64,
    first: u64,
    last: u64,
    masks: Masks,
    leaf: &mut F,
    done: &mut u64,
) -> Result<(), ()>
where
    F: FnMut(u64, u64, bool) -> bool,
{
    let t = table(mem, gpa).ok_or(())?;
    let shift = 12 + 9 * (lv - 1);
    let (lo, hi) = (
        ((first >> shift) & 511) as usize,
        ((last >> shift) & 511) as usize,
    );
    if lv == 1 {
        return page_table(t, lo, hi, masks, leaf, done);
    }
    let span = 1u64 << shift;
    for (i, e) in t[lo..=hi].iter().enumerate() {
        let e = e.load(Ordering::Acquire);
        let base = (first & !((span << 9) - 1)) | (((lo + i) as u64) << shift);
        let (f, l) = (first.max(base), last.min(base + span - 1));
        if e & PTE_PS != 0 && (lv == 2 || (lv == 3 && masks.gbpages)) {
            // A 2M or 1G leaf: address bits 20:13 (29:13) are reserved.
            let low = (span - 1) & !0x1fff;
            if e & (LEAF_REQ | masks.high | low) != LEAF_REQ {
                return Err(());
            }
            let page = e & ADDR & !(span - 1);
            if !leaf(page + (f - base), l - f + 1, true) {
                return Err(());
            }
            *done += l - f + 1;
        } else {
            // PS is reserved in a PML4E (and in a PDPTE without 1G pages).
            if e & (TABLE_REQ | masks.high | PTE_PS) != TABLE_REQ {
                return Err(());
            }
            upper(mem, lv - 1, e & ADDR, f, l, masks, leaf, done)?;
        }
    }
    Ok(())
}

/// Per-frame and per-2M-block pin counters over guest RAM, and the list of
/// what the current pin holds.
pub struct Ideal {
    frames: Vec<AtomicU32>,
    blocks: Vec<AtomicU32>,
    held_frames: Vec<u32>,
    held_blocks: Vec<u32>,
}

impl Ideal {
    /// Counters for `ram_bytes` of guest RAM starting at guest-physical 0.
    pub fn new(ram_bytes: u64) -> Self {
        let frames = (ram_bytes >> 12) as usize;
        let blocks = ram_bytes.div_ceil(1 << 21) as usize;
        Ideal {
            frames: (0..frames).map(|_| AtomicU32::new(0)).collect(),
            blocks: (0..blocks).map(|_| AtomicU32::new(0)).collect(),
            held_frames: Vec::with_capacity(frames),
            held_blocks: Vec::with_capacity(blocks),
        }
    }

    /// Pin `[va, va + len)` for a user write: walk, one atomic add per 4K
    /// frame (per 2M block for large leaves). Returns the bytes pinned,
    /// which stop short at the first imperfect entry or frame outside RAM.
    pub fn pin(&mut self, mem: &Mem, ctx: &PagingContext, va: u64, len: u64) -> u64 {
        let (frames, blocks) = (&self.frames, &self.blocks);
        let (held_frames, held_blocks) = (&mut self.held_frames, &mut self.held_blocks);
        range_walk(mem, ctx, va, len, |gpa, bytes, large| {
            if !large {
                let frame = (gpa >> 12) as usize;
                let Some(c) = frames.get(frame) else {
                    return false;
                };
                c.fetch_add(PIN_BIAS, Ordering::AcqRel);
                held_frames.push(frame as u32);
            } else {
                let (b0, b1) = (gpa >> 21, (gpa + bytes - 1) >> 21);
                if b1 as usize >= blocks.len() {
                    return false;
                }
                for b in b0..=b1 {
                    blocks[b as usize].fetch_add(PIN_BIAS, Ordering::AcqRel);
                    held_blocks.push(b as u32);
                }
            }
            true
        })
    }

    /// Release everything [`Ideal::pin`] took: one atomic sub per frame or
    /// block.
    pub fn unpin(&mut self) {
        for &f in &self.held_frames {
            self.frames[f as usize].fetch_sub(PIN_BIAS, Ordering::AcqRel);
        }
        for &b in &self.held_blocks {
            self.blocks[b as usize].fetch_sub(PIN_BIAS, Ordering::AcqRel);
        }
        self.held_frames.clear();
        self.held_blocks.clear();
    }

    /// Pin then unpin `[va, va + len)`; returns the 4K pages pinned.
    pub fn pin_unpin(&mut self, mem: &Mem, ctx: &PagingContext, va: u64, len: u64) -> u64 {
        let bytes = self.pin(mem, ctx, va, len);
        self.unpin();
        bytes >> 12
    }

    /// Whether every counter is back to zero.
    pub fn all_zero(&self) -> bool {
        self.frames
            .iter()
            .chain(&self.blocks)
            .all(|c| c.load(Ordering::Acquire) == 0)
    }
}

/// The walk alone, no atomics: returns (4K pages walked, a checksum of the
/// frames so the work cannot be optimized away).
pub fn walk_alone(mem: &Mem, ctx: &PagingContext, va: u64, len: u64) -> (u64, u64) {
    let mut sum = 0u64;
    let bytes = range_walk(mem, ctx, va, len, |gpa, bytes, _| {
        sum = sum.wrapping_add(gpa ^ bytes);
        true
    });
    (bytes >> 12, sum)
}
