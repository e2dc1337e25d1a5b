// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a request returns: extents (contiguous guest-physical and host
//! ranges, ready for preadv/pwritev) held by an RAII [`Pinned`] handle that
//! releases every reference when dropped, after marking the frames of a
//! write pin dirty in the vm-memory bitmap (DESIGN 4.3, guarantee 4).
//!
//! [`Builder`] is the one place where references are taken, for both the
//! fast and the slow path: a 4K leaf (or a guest-physical page) takes its
//! frame's counter, a 2M or 1G leaf takes one counter per 2M block it
//! touches.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use super::error::GupError;
use super::frames::{
    release_block, release_frame, take_block, take_block_unpopulated, take_frame,
    take_frame_unpopulated, Refused, FRAMES_PER_BLOCK, PIN_BIAS,
};
use super::longterm::Longterm;
use super::memmap::{RamRegion, BLOCK_SIZE, PAGE_SIZE};
use super::stats::GupStats;

/// One contiguous piece of a request (see [`Pinned::extents`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// The address, as the request gave it (guest-virtual for page tables,
    /// guest-physical for physical requests), of the first byte.
    pub addr: u64,
    /// Guest-physical address of the first byte (for a hole: the address).
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Host address of the first byte; 0 for a hole.
    host: usize,
    hole: bool,
    /// References are held per 2M block (a 2M/1G leaf), not per frame.
    blocks: bool,
}

impl Extent {
    /// Whether this is a hole (DUMP): nothing is pinned, there is no host
    /// memory behind it.
    pub fn is_hole(&self) -> bool {
        self.hole
    }

    /// Host address of the first byte; `None` for a hole. Valid while the
    /// [`Pinned`] handle lives.
    pub fn host_ptr(&self) -> Option<*mut u8> {
        (!self.hole).then_some(self.host as *mut u8)
    }

    /// Whether the references are held per 2M block.
    pub fn is_block_pinned(&self) -> bool {
        self.blocks
    }
}

/// How an extent is stored: 16 bytes. With shuffled 4K frames every page is
/// its own extent, so this is what the fast path writes per page and what
/// the release reads back; the request address and the host address are
/// recomputed when the extents are read ([`Extents`]).
#[derive(Clone, Copy)]
struct Raw {
    gpa: u64,
    /// Length (bits 0..40), region index (40..62, [`HOLE`] for a hole),
    /// block references (bit 63).
    meta: u64,
}

/// Region index of a hole.
const HOLE: u32 = (1 << 22) - 1;
const LEN_BITS: u32 = 40;
/// Longest extent (merging stops before it).
const MAX_LEN: u64 = (1 << LEN_BITS) - 1;
const BLOCKS_BIT: u64 = 1 << 63;

impl Raw {
    #[inline(always)]
    fn new(gpa: u64, len: u64, region: u32, blocks: bool) -> Raw {
        debug_assert!(len <= MAX_LEN && region <= HOLE);
        Raw {
            gpa,
            meta: len | (u64::from(region) << LEN_BITS) | if blocks { BLOCKS_BIT } else { 0 },
        }
    }

    #[inline(always)]
    fn len(&self) -> u64 {
        self.meta & MAX_LEN
    }

    #[inline(always)]
    fn region(&self) -> u32 {
        ((self.meta >> LEN_BITS) as u32) & HOLE
    }

    #[inline(always)]
    fn blocks(&self) -> bool {
        self.meta & BLOCKS_BIT != 0
    }

    #[inline(always)]
    fn is_hole(&self) -> bool {
        self.region() == HOLE
    }

    /// Grow by `len` if the result still fits.
    #[inline(always)]
    fn grow(&mut self, len: u64) -> bool {
        if self.len() + len > MAX_LEN {
            return false;
        }
        self.meta += len;
        true
    }

    #[inline(always)]
    fn shrink(&mut self, len: u64) {
        self.meta -= len;
    }
}

/// The extents of a [`Pinned`], in request order.
pub struct Extents<'a> {
    pinned: &'a Pinned,
    next: usize,
    addr: u64,
}

impl Iterator for Extents<'_> {
    type Item = Extent;

    fn next(&mut self) -> Option<Extent> {
        let raws = &self.pinned.extents;
        let raw = *raws.get(self.next)?;
        self.next += 1;
        let mut len = raw.len();
        // The fast path appends one entry per 4K frame; frames that are
        // guest-physically contiguous in one region form one extent (their
        // references are distinct frames, so nothing overlaps).
        if !raw.is_hole() && !raw.blocks() {
            while let Some(more) = raws.get(self.next) {
                if more.region() != raw.region() || more.blocks() || more.gpa != raw.gpa + len {
                    break;
                }
                len += more.len();
                self.next += 1;
            }
        }
        let addr = self.addr;
        self.addr += len;
        let region = self.pinned.regions.get(raw.region() as usize);
        Some(Extent {
            addr,
            gpa: raw.gpa,
            len,
            host: region.map_or(0, |r| r.host_addr(raw.gpa)),
            hole: raw.is_hole(),
            blocks: raw.blocks(),
        })
    }
}

/// Pinned (or referenced) guest pages. Dropping it releases them.
pub struct Pinned {
    regions: Vec<Arc<RamRegion>>,
    extents: Vec<Raw>,
    start: u64,
    bytes: u64,
    pin: bool,
    write: bool,
    longterm: Option<Arc<Longterm>>,
    stats: Arc<GupStats>,
    short: Option<GupError>,
    counted_pages: u64,
}

// SAFETY: the only non-Send/Sync parts are host addresses stored as usize;
// the memory they point into is kept mapped by the `Arc<RamRegion>`s held
// here, and everything else is atomics or owned data.
unsafe impl Send for Pinned {}
// SAFETY: as above; `&Pinned` only gives out copies of addresses.
unsafe impl Sync for Pinned {}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned")
            .field("start", &format_args!("{:#x}", self.start))
            .field("bytes", &self.bytes)
            .field("pages", &self.pages())
            .field("extents", &self.extents.len())
            .field("pin", &self.pin)
            .field("write", &self.write)
            .field("short", &self.short)
            .finish()
    }
}

impl Pinned {
    /// Number of 4K pages taken (holes included), counted from the
    /// request's start: Linux's return value.
    pub fn pages(&self) -> u64 {
        pages_spanned(self.start, self.bytes)
    }

    /// Bytes of the request covered, from its start.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The extents, in request order, tiling `[start, start + bytes())`,
    /// without allocating.
    pub fn iter_extents(&self) -> Extents<'_> {
        Extents {
            pinned: self,
            next: 0,
            addr: self.start,
        }
    }

    /// The extents, in request order, collected.
    pub fn extents(&self) -> Vec<Extent> {
        self.iter_extents().collect()
    }

    /// Number of extents (counting them).
    pub fn extent_count(&self) -> usize {
        self.iter_extents().count()
    }

    /// Why the request stopped short, if it did.
    pub fn short_reason(&self) -> Option<&GupError> {
        self.short.as_ref()
    }

    /// Whether the references are DMA pins (PIN) rather than gets (GET).
    pub fn is_pin(&self) -> bool {
        self.pin
    }

    /// Whether this is a write pin (frames are marked dirty on release).
    pub fn is_write(&self) -> bool {
        self.write
    }

    /// The extents as iovecs for preadv/pwritev; `None` if there is a hole.
    pub fn iovecs(&self) -> Option<Vec<libc::iovec>> {
        self.iter_extents()
            .map(|e| {
                e.host_ptr().map(|p| libc::iovec {
                    iov_base: p.cast(),
                    iov_len: e.len as usize,
                })
            })
            .collect()
    }

    /// Release now (the same as dropping).
    pub fn release(self) {}
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let delta = if self.pin { PIN_BIAS } else { 1 };
        if self.write {
            // One fence for every extent's dirty marking (see
            // DirtyBitmap::mark_after_fence).
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        }
        // The region of the previous extent, resolved once per region.
        let mut cur: Option<(u32, &RamRegion, &[AtomicU32])> = None;
        // `meta` bits (region, blocks) of a 4K-frame extent of `cur`.
        let mut key = u64::MAX;
        for e in &self.extents {
            let (gpa, len) = (e.gpa, e.len());
            // The hot case (a read pin of one 4K frame of the current
            // region): one compare, one RMW.
            if !self.write && e.meta & !MAX_LEN == key && (gpa % PAGE_SIZE) + len <= PAGE_SIZE {
                if let Some((_, region, words)) = cur {
                    if let Some(word) = words.get(((gpa - region.start()) / PAGE_SIZE) as usize) {
                        release_frame(word, delta);
                        continue;
                    }
                }
            }
            let ri = e.region();
            let (region, words) = match cur {
                Some((r, region, words)) if r == ri => (region, words),
                _ => match self.regions.get(ri as usize) {
                    Some(region) => {
                        let words = region.frames().frame_words();
                        cur = Some((ri, region, words));
                        key = u64::from(ri) << LEN_BITS;
                        (&**region, words)
                    }
                    None => continue, // a hole
                },
            };
            // Guarantee 4: the device's writes are recorded in the dirty
            // bitmap before the frame can be frozen, discarded or migrated.
            if self.write {
                region.mark_dirty_after_fence(gpa, len);
            }
            let single = !e.blocks() && (gpa % PAGE_SIZE) + len <= PAGE_SIZE;
            let first = (gpa - region.start()) / PAGE_SIZE;
            match words.get(first as usize) {
                Some(word) if single => release_frame(word, delta),
                _ => release_units(region, gpa, len, e.blocks(), delta),
            }
        }
        if let Some(lt) = &self.longterm {
            for e in &self.extents {
                if let Some(region) = self.regions.get(e.region() as usize) {
                    lt.release(region, e.gpa, e.len());
                }
            }
        }
        self.stats.outstanding(
            self.pin,
            -(self.counted_pages as i64),
            self.longterm.is_some(),
        );
    }
}

/// Number of 4K pages that `[start, start + bytes)` touches.
pub(crate) fn pages_spanned(start: u64, bytes: u64) -> u64 {
    if bytes == 0 {
        return 0;
    }
    let first = start / PAGE_SIZE;
    let last = (start + (bytes - 1)) / PAGE_SIZE;
    last - first + 1
}

/// The frame indexes (frames) or block indexes (blocks) of an extent.
fn units(region: &RamRegion, gpa: u64, len: u64, blocks: bool) -> std::ops::RangeInclusive<u64> {
    let first = region.frame_index(gpa);
    let last = region.frame_index(gpa + len - 1);
    if blocks {
        first / FRAMES_PER_BLOCK..=last / FRAMES_PER_BLOCK
    } else {
        first..=last
    }
}

fn release_units(region: &RamRegion, gpa: u64, len: u64, blocks: bool, delta: u32) {
    let ft = region.frames();
    for u in units(region, gpa, len, blocks) {
        if blocks {
            if let Some(b) = ft.block(u) {
                release_block(b, u64::from(delta));
            }
        } else if let Some(f) = ft.frame(u) {
            release_frame(f, delta);
        }
    }
}

/// One region's frame counters and host base, resolved once for the fast
/// path's hot loop over runs of 4K leaves (see [`Builder::cursor`]).
#[derive(Clone, Copy)]
pub(crate) struct FrameCursor {
    start: u64,
    len: u64,
    /// The region's frame words; valid while the builder that made the
    /// cursor lives (it holds the region's `Arc`).
    frames: *const AtomicU32,
    region: u32,
}

impl FrameCursor {
    /// Whether the 4K page at `page` (page aligned) lies in the region.
    #[inline(always)]
    pub(crate) fn covers(&self, page: u64) -> bool {
        page.wrapping_sub(self.start) < self.len
    }

    /// Hint the CPU to fetch the counter of the page at `page`, if covered.
    #[inline(always)]
    pub(crate) fn prefetch(&self, page: u64) {
        if self.covers(page) {
            let i = ((page - self.start) / PAGE_SIZE) as usize;
            super::frames::prefetch_word(self.frames.wrapping_add(i));
        }
    }
}

/// Accumulates the extents of one request, taking references as it goes.
pub(crate) struct Builder {
    regions: Vec<Arc<RamRegion>>,
    extents: Vec<Raw>,
    start: u64,
    /// Bytes taken so far (the next address is `start + bytes`).
    bytes: u64,
    delta: u32,
    write: bool,
    pages_pinned: u64,
    /// Index in `regions` of the last region used.
    last: u32,
}

impl Builder {
    /// A builder for a request of `len` bytes: room for one extent per page
    /// up to 2^18 (1 GiB of shuffled 4K frames) is reserved up front, so
    /// the hot loop never reallocates (untouched capacity costs nothing).
    pub(crate) fn with_capacity(start: u64, len: u64, pin: bool, write: bool) -> Self {
        let pages = pages_spanned(start, len).min(1 << 18) as usize;
        Builder {
            regions: Vec::new(),
            extents: Vec::with_capacity(pages),
            start,
            bytes: 0,
            delta: if pin { PIN_BIAS } else { 1 },
            write,
            pages_pinned: 0,
            last: HOLE,
        }
    }

    /// The next address to take.
    #[inline]
    pub(crate) fn next(&self) -> u64 {
        self.start + self.bytes
    }

    #[inline]
    fn region_index(&mut self, region: &Arc<RamRegion>) -> u32 {
        if let Some(r) = self.regions.get(self.last as usize) {
            if Arc::ptr_eq(r, region) {
                return self.last;
            }
        }
        let i = match self.regions.iter().position(|r| Arc::ptr_eq(r, region)) {
            Some(i) => i,
            None => {
                self.regions.push(region.clone());
                // A memory map has far fewer than 2^22 - 1 regions.
                (self.regions.len() - 1).min(HOLE as usize - 1)
            }
        };
        self.last = i as u32;
        self.last
    }

    /// A cursor over `region`'s frames for [`Builder::take_4k`].
    pub(crate) fn cursor(&mut self, region: &Arc<RamRegion>) -> FrameCursor {
        let ri = self.region_index(region);
        let ft = region.frames();
        FrameCursor {
            start: region.start(),
            len: ft.frames() * PAGE_SIZE,
            frames: ft.frame_words().as_ptr(),
            region: ri,
        }
    }

    /// Take the 4K frame of the page piece `[gpa, gpa + len)` (inside one
    /// page, which `c.covers`), mapped at the next request address once the
    /// bytes of earlier `take_4k` calls are counted: the fast path's hot
    /// loop counts bytes and pages itself and hands them over with
    /// [`Builder::count_4k`], so that the loop stores as little as possible
    /// before each pin's locked RMW (which waits for every earlier store).
    #[inline(always)]
    pub(crate) fn take_4k(&mut self, c: &FrameCursor, gpa: u64, len: u64) -> Result<(), Refused> {
        debug_assert!(c.covers(gpa & !(PAGE_SIZE - 1)));
        let i = ((gpa - c.start) / PAGE_SIZE) as usize;
        // SAFETY: `c` was made by `cursor` from a region whose `Arc` this
        // builder holds in `self.regions` until it is dropped (the frame
        // table's boxed slice never moves), and `i` is below the region's
        // frame count because the caller checked `c.covers(page)`.
        let frame = unsafe { &*c.frames.add(i) };
        take_frame(frame, self.delta)?;
        // No merging here: [`Extents`] merges guest-physically contiguous
        // frames when the extents are read, so the hot loop only appends.
        self.extents.push(Raw::new(gpa, len, c.region, false));
        Ok(())
    }

    /// Count `bytes` in `pages` 4K pages taken by [`Builder::take_4k`].
    #[inline(always)]
    pub(crate) fn count_4k(&mut self, bytes: u64, pages: u64) {
        self.bytes += bytes;
        self.pages_pinned += pages;
    }

    /// Take references for `[gpa, gpa + len)` of `region`, mapped at the
    /// request address [`Builder::next`]. `large` takes one reference per
    /// 2M block (a 2M/1G leaf), else one per 4K frame. All or nothing.
    #[inline]
    pub(crate) fn take(
        &mut self,
        region: &Arc<RamRegion>,
        gpa: u64,
        len: u64,
        large: bool,
    ) -> Result<(), Refused> {
        self.take_units(region, gpa, len, large, false)
    }

    /// [`Builder::take`] for the slow path's populate step: unpopulated
    /// frames are taken too (frozen ones are not); the caller populates the
    /// host pages and marks them populated while holding the references.
    pub(crate) fn take_unpopulated(
        &mut self,
        region: &Arc<RamRegion>,
        gpa: u64,
        len: u64,
        large: bool,
    ) -> Result<(), Refused> {
        self.take_units(region, gpa, len, large, true)
    }

    fn take_units(
        &mut self,
        region: &Arc<RamRegion>,
        gpa: u64,
        len: u64,
        large: bool,
        unpopulated: bool,
    ) -> Result<(), Refused> {
        let ft = region.frames();
        let range = units(region, gpa, len, large);
        let first = *range.start();
        let mut taken = first;
        let mut result = Ok(());
        for u in range {
            let r = match (large, unpopulated) {
                (true, false) => ft.block(u).map(|b| take_block(b, u64::from(self.delta))),
                (true, true) => ft
                    .block(u)
                    .map(|b| take_block_unpopulated(b, u64::from(self.delta))),
                (false, false) => ft.frame(u).map(|f| take_frame(f, self.delta)),
                (false, true) => ft.frame(u).map(|f| take_frame_unpopulated(f, self.delta)),
            }
            .unwrap_or(Err(Refused::Busy));
            if let Err(e) = r {
                result = Err(e);
                break;
            }
            taken = u + 1;
        }
        if let Err(e) = result {
            for u in first..taken {
                if large {
                    if let Some(b) = ft.block(u) {
                        release_block(b, u64::from(self.delta));
                    }
                } else if let Some(f) = ft.frame(u) {
                    release_frame(f, self.delta);
                }
            }
            return Err(e);
        }
        self.push(region, gpa, len, large);
        Ok(())
    }

    #[inline]
    fn push(&mut self, region: &Arc<RamRegion>, gpa: u64, len: u64, blocks: bool) {
        let ri = self.region_index(region);
        let addr = self.next();
        self.bytes += len;
        self.pages_pinned += pages_spanned(addr, len);
        if let Some(prev) = self.extents.last_mut() {
            // Merge only where the references cannot overlap: frames are
            // distinct when guest-physically contiguous; blocks only when
            // the boundary is a block boundary of the region.
            let contiguous = prev.region() == ri
                && prev.blocks() == blocks
                && prev.gpa + prev.len() == gpa
                && (!blocks || (gpa - region.start()) % BLOCK_SIZE == 0);
            if contiguous && prev.grow(len) {
                return;
            }
        }
        self.extents.push(Raw::new(gpa, len, ri, blocks));
    }

    /// Undo the last [`Builder::take`] of `len` bytes (the leaf changed
    /// under it).
    pub(crate) fn untake_last(&mut self, len: u64) {
        let Some(e) = self.extents.last_mut() else {
            return;
        };
        let Some(region) = self.regions.get(e.region() as usize).cloned() else {
            return;
        };
        let gpa = e.gpa + e.len() - len;
        release_units(&region, gpa, len, e.blocks(), self.delta);
        e.shrink(len);
        if e.len() == 0 {
            self.extents.pop();
        }
        let addr = self.next() - len;
        self.bytes -= len;
        self.pages_pinned -= pages_spanned(addr, len);
    }

    /// Give back everything taken after the first `bytes` bytes.
    pub(crate) fn rollback_to(&mut self, bytes: u64) {
        while self.bytes > bytes {
            let Some(last) = self.extents.last() else {
                return;
            };
            if last.is_hole() {
                let len = last.len();
                self.extents.pop();
                self.bytes -= len;
                continue;
            }
            let len = last.len().min(self.bytes - bytes);
            self.untake_last(len);
        }
    }

    /// Record a hole (DUMP) of `len` bytes.
    pub(crate) fn hole(&mut self, gpa: u64, len: u64) {
        self.extents.push(Raw::new(gpa, len, HOLE, false));
        self.bytes += len;
    }

    /// Bytes taken so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Turn into the handle.
    pub(crate) fn finish(
        mut self,
        stats: Arc<GupStats>,
        longterm: Option<Arc<Longterm>>,
        short: Option<GupError>,
    ) -> Pinned {
        stats.outstanding(
            self.delta == PIN_BIAS,
            self.pages_pinned as i64,
            longterm.is_some(),
        );
        Pinned {
            regions: std::mem::take(&mut self.regions),
            extents: std::mem::take(&mut self.extents),
            start: self.start,
            bytes: self.bytes,
            pin: self.delta == PIN_BIAS,
            write: self.write,
            longterm,
            stats,
            short,
            counted_pages: self.pages_pinned,
        }
    }
}

impl Drop for Builder {
    /// A builder dropped without `finish` (a panic unwinding through the
    /// request) still releases what it took.
    fn drop(&mut self) {
        for e in &self.extents {
            if let Some(region) = self.regions.get(e.region() as usize) {
                release_units(region, e.gpa, e.len(), e.blocks(), self.delta);
            }
        }
    }
}
