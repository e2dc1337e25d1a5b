// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The memory map: the guest's RAM regions (the very regions a VMM registers
//! as KVM memory slots), each with its frame table, published as an
//! immutable snapshot.
//!
//! The fast path loads the current snapshot without a lock (an `ArcSwap`);
//! the slow path holds the read side of the memory-map lock; adding or
//! removing a region takes the write side and publishes a new snapshot.
//! A region removed from the map stays mapped in the host until the last
//! snapshot or pin that refers to it is gone (everything holds an `Arc`),
//! and removal first freezes every frame, so nothing can pin it afterwards.

use std::sync::Arc;

use vm_memory::bitmap::Bitmap;
use vm_memory::{
    GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
    MmapRegion,
};

use super::dirty::DirtyBitmap;
use super::frames::FrameTable;

/// The guest memory type the engine works on: mmap'd regions with a dirty
/// bitmap ([`DirtyBitmap`]).
pub type GuestMemory = GuestMemoryMmap<DirtyBitmap>;
/// One region of [`GuestMemory`].
pub type GuestRegion = GuestRegionMmap<DirtyBitmap>;

/// Page size of the frame table.
pub const PAGE_SIZE: u64 = 4096;
/// Size of a frame-table block.
pub const BLOCK_SIZE: u64 = 2 << 20;

/// How a RAM region may be used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionOptions {
    /// The guest sees the region read-only (ROM, a read-only memory slot):
    /// WRITE requests on it fail, even with FORCE.
    pub read_only: bool,
    /// The region may be hot-unplugged: LONGTERM pins refuse it.
    pub removable: bool,
    /// Host pages are populated lazily (anonymous memory never touched, a
    /// file, a snapshot restored through userfaultfd): every frame starts
    /// "unpopulated" and the slow path populates host pages before pinning.
    pub lazy: bool,
}

/// One RAM region with its frame table.
pub struct RamRegion {
    start: u64,
    len: u64,
    host: usize,
    frames: FrameTable,
    options: RegionOptions,
    region: Arc<GuestRegion>,
    /// The region's mapping, for direct access to its [`DirtyBitmap`].
    mapping: Arc<MmapRegion<DirtyBitmap>>,
}

impl std::fmt::Debug for RamRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RamRegion")
            .field("start", &format_args!("{:#x}", self.start))
            .field("len", &format_args!("{:#x}", self.len))
            .field("options", &self.options)
            .finish()
    }
}

/// Why a region cannot be used or changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionError {
    /// The region's start or length is not a multiple of 4 KiB.
    Unaligned {
        /// Region start.
        start: u64,
        /// Region length.
        len: u64,
    },
    /// The region overlaps another or the collection is invalid.
    Overlap(String),
    /// No region starts at this address with this length.
    NotFound(u64),
    /// Frames of the region are pinned or referenced (count given): it was
    /// not removed.
    Busy(u64),
}

impl std::fmt::Display for RegionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionError::Unaligned { start, len } => {
                write!(f, "region {start:#x}+{len:#x} is not 4 KiB aligned")
            }
            RegionError::Overlap(e) => write!(f, "invalid memory map: {e}"),
            RegionError::NotFound(a) => write!(f, "no RAM region at {a:#x}"),
            RegionError::Busy(n) => write!(f, "{n} frames are pinned or referenced"),
        }
    }
}

impl std::error::Error for RegionError {}

impl RamRegion {
    /// Wrap a vm-memory region.
    pub fn new(region: Arc<GuestRegion>, options: RegionOptions) -> Result<Self, RegionError> {
        let start = region.start_addr().0;
        let len = region.len();
        if start % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 {
            return Err(RegionError::Unaligned { start, len });
        }
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| RegionError::Overlap(e.to_string()))? as usize;
        Ok(RamRegion {
            start,
            len,
            host,
            frames: FrameTable::new(len / PAGE_SIZE, !options.lazy),
            options,
            mapping: region.get_mmap(),
            region,
        })
    }

    /// First guest-physical address.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true: regions are at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The options the region was added with.
    pub fn options(&self) -> RegionOptions {
        self.options
    }

    /// The frame table.
    pub fn frames(&self) -> &FrameTable {
        &self.frames
    }

    /// The vm-memory region.
    pub fn region(&self) -> &Arc<GuestRegion> {
        &self.region
    }

    /// Whether `gpa` lies in the region.
    #[inline]
    pub fn contains(&self, gpa: u64) -> bool {
        gpa.wrapping_sub(self.start) < self.len
    }

    /// Bytes from `gpa` (in the region) to the region's end.
    #[inline]
    pub fn remaining(&self, gpa: u64) -> u64 {
        self.start + self.len - gpa
    }

    /// Index of the 4K frame holding `gpa` (in the region).
    #[inline]
    pub fn frame_index(&self, gpa: u64) -> u64 {
        (gpa - self.start) / PAGE_SIZE
    }

    /// Host address of `gpa` (in the region).
    #[inline]
    pub fn host_addr(&self, gpa: u64) -> usize {
        self.host + (gpa - self.start) as usize
    }

    /// Mark `[gpa, gpa + len)` dirty in the region's bitmap.
    pub fn mark_dirty(&self, gpa: u64, len: u64) {
        self.region
            .bitmap()
            .mark_dirty((gpa - self.start) as usize, len as usize);
    }

    /// [`RamRegion::mark_dirty`] for a caller that has just issued a
    /// sequentially consistent fence (see [`DirtyBitmap::mark_after_fence`]).
    pub(crate) fn mark_dirty_after_fence(&self, gpa: u64, len: u64) {
        self.mapping
            .bitmap()
            .mark_after_fence((gpa - self.start) as usize, len as usize);
    }

    /// Whether the page holding `gpa` is dirty in the bitmap.
    pub fn is_dirty(&self, gpa: u64) -> bool {
        self.region.bitmap().dirty_at((gpa - self.start) as usize)
    }
}

/// One immutable snapshot of the memory map.
#[derive(Debug)]
pub struct MemoryMap {
    mem: GuestMemory,
    ram: Vec<Arc<RamRegion>>,
}

impl MemoryMap {
    /// A snapshot of `ram` (any order; they must not overlap).
    pub fn new(mut ram: Vec<Arc<RamRegion>>) -> Result<Self, RegionError> {
        ram.sort_by_key(|r| r.start);
        if ram.is_empty() {
            return Ok(MemoryMap {
                mem: GuestMemoryMmap::new(),
                ram,
            });
        }
        let mem = GuestMemoryMmap::from_arc_regions(ram.iter().map(|r| r.region.clone()).collect())
            .map_err(|e| RegionError::Overlap(e.to_string()))?;
        Ok(MemoryMap { mem, ram })
    }

    /// The guest memory (for the walker, and for ordinary device accesses).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// The RAM regions, by address.
    pub fn regions(&self) -> &[Arc<RamRegion>] {
        &self.ram
    }

    /// The region holding `gpa`.
    #[inline]
    pub fn find(&self, gpa: u64) -> Option<&Arc<RamRegion>> {
        let i = self.ram.partition_point(|r| r.start <= gpa);
        let r = self.ram.get(i.checked_sub(1)?)?;
        r.contains(gpa).then_some(r)
    }

    /// The region that starts at `start`.
    pub(crate) fn position(&self, start: u64) -> Option<usize> {
        self.ram.iter().position(|r| r.start == start)
    }

    /// A new snapshot with `region` added.
    pub(crate) fn with(&self, region: Arc<RamRegion>) -> Result<Self, RegionError> {
        let mut ram = self.ram.clone();
        ram.push(region);
        MemoryMap::new(ram)
    }

    /// A new snapshot without region `index`.
    pub(crate) fn without(&self, index: usize) -> Result<Self, RegionError> {
        let mut ram = self.ram.clone();
        ram.remove(index);
        MemoryMap::new(ram)
    }
}

/// Build vm-memory regions for `ranges` (guest address, bytes), anonymous
/// and lazily backed by the host, with dirty bitmaps.
pub fn anonymous_regions(ranges: &[(u64, usize)]) -> Result<Vec<Arc<GuestRegion>>, RegionError> {
    ranges
        .iter()
        .map(|&(start, len)| {
            let region = GuestRegion::from_range(GuestAddress(start), len, None)
                .map_err(|e| RegionError::Overlap(e.to_string()))?;
            advise_huge_pages(&region);
            Ok(Arc::new(region))
        })
        .collect()
}

/// Asks the host for transparent huge pages behind `region` (best effort:
/// with THP set to `madvise`, the common default, anonymous memory gets
/// them only when asked). DMA copies into 2M host pages take fewer TLB
/// misses, and the guest's own 2M mappings are backed by 2M host pages.
/// The engine does not depend on it: its frames stay 4K, and a discard of
/// part of a huge page splits it.
fn advise_huge_pages(region: &GuestRegion) {
    use vm_memory::GuestMemoryRegion;
    let len = region.len() as usize;
    // SAFETY: the range is exactly this region's own anonymous mapping;
    // MADV_HUGEPAGE changes no contents, only how faults are served.
    let _ = unsafe { libc::madvise(region.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
}
