// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Paging-structure entries: their layout per mode (SDM tables 4-4 to 4-20)
//! and their atomic reads and compare-exchanges in guest memory.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::context::{PagingContext, PagingMode};

/// P: present.
pub const PTE_P: u64 = 1 << 0;
/// R/W: writes allowed.
pub const PTE_RW: u64 = 1 << 1;
/// U/S: user-mode accesses allowed.
pub const PTE_US: u64 = 1 << 2;
/// A: accessed.
pub const PTE_A: u64 = 1 << 5;
/// D: dirty (leaves only).
pub const PTE_D: u64 = 1 << 6;
/// PS: page size (a leaf above level 1).
pub const PTE_PS: u64 = 1 << 7;
/// XD: execute-disable (with EFER.NXE; reserved otherwise).
pub const PTE_XD: u64 = 1 << 63;
/// Shift of the protection key in 4- and 5-level leaves (bits 62:59).
pub const PKEY_SHIFT: u32 = 59;

/// Size of the page a leaf entry maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageSize {
    /// 4 KiB (a PTE).
    Size4K,
    /// 2 MiB (a PDE with PS in PAE, 4- and 5-level paging).
    Size2M,
    /// 4 MiB (a PDE with PS in 32-bit paging with CR4.PSE).
    Size4M,
    /// 1 GiB (a PDPTE with PS in 4- and 5-level paging).
    Size1G,
}

impl PageSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size4M => 1 << 22,
            PageSize::Size1G => 1 << 30,
        }
    }
}

/// Where the leaf entry of a translation lives, and what it held when read:
/// what a caller needs to recheck the translation later or to update its
/// Accessed and Dirty bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeafEntry {
    /// Guest-physical address of the entry. `None` for the PAE PDPTE
    /// registers and when paging is off (there is no entry in memory).
    pub gpa: Option<u64>,
    /// Level of the entry (1 = PTE, 2 = PDE, 3 = PDPTE).
    pub level: u8,
    /// Entry width in bytes: 4 (32-bit paging) or 8.
    pub width: u8,
    /// The entry's value as read.
    pub value: u64,
}

/// How one entry decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// P = 0.
    NotPresent,
    /// A reserved bit is set.
    Reserved,
    /// Points to the next table, at this guest-physical address.
    Table(u64),
    /// Maps a page at this guest-physical base.
    Leaf(u64, PageSize),
}

/// Per-walk decoding rules: the reserved-bit masks and address masks for one
/// context, computed once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub(crate) mode: PagingMode,
    /// Address bits of a table pointer or 4K leaf (bits M-1:12).
    addr_mask: u64,
    /// Reserved bits of a non-leaf entry (and a PTE), per level 1..=5.
    rsvd_table: [u64; 6],
    /// Reserved bits of a large-page leaf, per level.
    rsvd_large: [u64; 6],
    /// Whether PS makes a leaf at this level.
    large_ok: [bool; 6],
    /// 32-bit paging: how many PSE-36 high address bits a 4-MByte PDE has.
    pse36_bits: u32,
    /// Protection keys are decoded from leaves.
    pub(crate) keys: bool,
    /// XD is meaningful.
    pub(crate) nxe: bool,
}

fn bits(lo: u32, hi: u32) -> u64 {
    if hi < lo {
        return 0;
    }
    let width = hi - lo + 1;
    if width >= 64 {
        u64::MAX
    } else {
        ((1u64 << width) - 1) << lo
    }
}

impl Layout {
    pub(crate) fn new(ctx: &PagingContext) -> Self {
        let mode = ctx.mode();
        let m = ctx.phys_bits();
        let nxe = ctx.nxe();
        let mut l = Layout {
            mode,
            addr_mask: bits(12, m - 1),
            rsvd_table: [0; 6],
            rsvd_large: [0; 6],
            large_ok: [false; 6],
            pse36_bits: 0,
            keys: ctx.pke() || ctx.pks(),
            nxe,
        };
        match mode {
            PagingMode::None => {}
            PagingMode::Bits32 => {
                l.addr_mask = 0xffff_f000;
                // SDM table 4-4: with PSE-36, a 4-MByte PDE holds physical
                // address bits (M-1):32 in bits (M-19):13, M = min(MAXPHYADDR,
                // 40); bits 21:(M-19) are reserved. Without PSE-36 the
                // physical address is 32 bits wide.
                let pm = if ctx.features.pse36 { m.min(40) } else { 32 };
                l.pse36_bits = pm - 32;
                l.rsvd_large[2] = bits(13 + l.pse36_bits, 21);
                l.large_ok[2] = ctx.cr4 & super::context::CR4_PSE != 0;
            }
            PagingMode::Pae => {
                // SDM tables 4-8 to 4-11: bits 62:M reserved, and 63 without
                // NXE. The PDPTE (level 3) is checked separately.
                let xd = if nxe { 0 } else { PTE_XD };
                let hi = bits(m, 62) | xd;
                l.rsvd_table[1] = hi;
                l.rsvd_table[2] = hi;
                l.rsvd_large[2] = hi | bits(13, 20);
                l.large_ok[2] = true;
                l.rsvd_table[3] = pae_pdpte_reserved(m);
            }
            PagingMode::Level4 | PagingMode::Level5 => {
                // SDM tables 4-14 to 4-20: bits 51:M reserved at every
                // level, 63 without NXE; PS is reserved in PML5Es and PML4Es,
                // and in PDPTEs without 1-GByte page support.
                let xd = if nxe { 0 } else { PTE_XD };
                let hi = bits(m, 51) | xd;
                for level in 1..=5 {
                    l.rsvd_table[level] = hi;
                }
                l.rsvd_table[4] |= PTE_PS;
                l.rsvd_table[5] |= PTE_PS;
                l.rsvd_large[2] = hi | bits(13, 20);
                l.large_ok[2] = true;
                l.rsvd_large[3] = hi | bits(13, 29);
                if ctx.features.gbpages {
                    l.large_ok[3] = true;
                } else {
                    l.rsvd_table[3] |= PTE_PS;
                }
            }
        }
        l
    }

    /// Bytes per entry.
    #[inline]
    pub(crate) fn width(&self) -> u64 {
        if self.mode.wide_entries() {
            8
        } else {
            4
        }
    }

    /// Bit position of the lowest linear-address bit indexing level `level`.
    #[inline]
    pub(crate) fn shift(&self, level: u8) -> u32 {
        if self.mode.wide_entries() {
            12 + 9 * (u32::from(level) - 1)
        } else {
            12 + 10 * (u32::from(level) - 1)
        }
    }

    /// Number of linear-address bits indexing level `level`.
    #[inline]
    pub(crate) fn index_bits(&self, level: u8) -> u32 {
        match self.mode {
            PagingMode::Bits32 => 10,
            PagingMode::Pae if level == 3 => 2,
            _ => 9,
        }
    }

    /// Address bits of a 4K leaf or table entry.
    #[inline]
    pub(crate) fn addr_mask(&self) -> u64 {
        self.addr_mask
    }

    /// Reserved bits of a level-1 entry (a 4K leaf).
    #[inline]
    pub(crate) fn rsvd_pte(&self) -> u64 {
        self.rsvd_table[1]
    }

    /// Decode an entry read at `level` (never the PAE PDPTE; see
    /// [`Layout::decode_pdpte`]).
    #[inline]
    pub(crate) fn decode(&self, level: u8, e: u64) -> Decoded {
        if e & PTE_P == 0 {
            return Decoded::NotPresent;
        }
        let lv = usize::from(level);
        let large = level > 1 && e & PTE_PS != 0 && self.large_ok[lv];
        let rsvd = if large {
            self.rsvd_large[lv]
        } else {
            self.rsvd_table[lv]
        };
        if e & rsvd != 0 {
            return Decoded::Reserved;
        }
        if level == 1 {
            return Decoded::Leaf(e & self.addr_mask, PageSize::Size4K);
        }
        if !large {
            return Decoded::Table(e & self.addr_mask);
        }
        match (self.mode, level) {
            (PagingMode::Bits32, _) => {
                let high = if self.pse36_bits == 0 {
                    0
                } else {
                    (e >> 13) & bits(0, self.pse36_bits - 1)
                };
                Decoded::Leaf((e & 0xffc0_0000) | high << 32, PageSize::Size4M)
            }
            (_, 2) => Decoded::Leaf(e & self.addr_mask & !bits(0, 20), PageSize::Size2M),
            _ => Decoded::Leaf(e & self.addr_mask & !bits(0, 29), PageSize::Size1G),
        }
    }

    /// Decode a PAE PDPTE. Reserved bits here are not a page fault: the CPU
    /// refuses to load such PDPTEs when CR3 is written (#GP, SDM 4.4.1).
    #[inline]
    pub(crate) fn decode_pdpte(&self, e: u64) -> Decoded {
        if e & PTE_P == 0 {
            Decoded::NotPresent
        } else if e & self.rsvd_table[3] != 0 {
            Decoded::Reserved
        } else {
            Decoded::Table(e & self.addr_mask)
        }
    }

    /// Protection key of a leaf.
    #[inline]
    pub(crate) fn pkey(&self, e: u64) -> Option<u8> {
        if self.keys {
            Some(((e >> PKEY_SHIFT) & 0xf) as u8)
        } else {
            None
        }
    }
}

/// Reserved bits of a PAE PDPTE (SDM table 4-8): 63:M, 8:5 and 2:1.
pub(crate) fn pae_pdpte_reserved(m: u32) -> u64 {
    bits(m, 63) | bits(5, 8) | bits(1, 2)
}

/// Where a leaf entry lives in host memory: the fast path re-reads it after
/// taking its pin (pin, then recheck). Borrowed from the guest memory the
/// walk read, so it cannot outlive the mapping.
#[derive(Clone, Copy)]
pub(crate) struct LeafSlot<'a> {
    ptr: *const u8,
    width: u8,
    _mem: std::marker::PhantomData<&'a ()>,
}

/// No entry (paging disabled, or a PDPTE register).
pub(crate) const LEAF_SLOT_NONE: LeafSlot<'static> = LeafSlot {
    ptr: std::ptr::null(),
    width: 0,
    _mem: std::marker::PhantomData,
};

impl LeafSlot<'_> {
    /// No entry (paging disabled).
    pub(crate) fn none() -> Self {
        LEAF_SLOT_NONE
    }

    /// Re-read the entry, sequentially consistent: ordered after the pin
    /// that precedes it (a locked RMW on x86, so this costs a plain load).
    /// `None` for [`LeafSlot::none`].
    #[inline]
    pub(crate) fn reread(&self) -> Option<u64> {
        if self.ptr.is_null() {
            return None;
        }
        if self.width == 8 {
            // SAFETY: `ptr` was produced by `Table::slot`, which checked that
            // the 8 bytes lie in a live guest-memory mapping borrowed for
            // 'a, 8-byte aligned.
            Some(unsafe { &*(self.ptr as *const AtomicU64) }.load(Ordering::SeqCst))
        } else {
            // SAFETY: as above, for a 4-byte aligned, in-bounds AtomicU32.
            Some(u64::from(
                unsafe { &*(self.ptr as *const AtomicU32) }.load(Ordering::SeqCst),
            ))
        }
    }
}

/// Re-read the leaf entry `leaf` from `mem` (the slow path's recheck);
/// `None` if it has no entry or lies outside RAM.
pub(crate) fn reread_leaf<M>(mem: &M, leaf: &LeafEntry) -> Option<u64>
where
    M: GuestMemoryBackend + ?Sized,
{
    let gpa = leaf.gpa?;
    let page = gpa & !0xfff;
    Table::new(mem, page, 4096).read(gpa - page, u64::from(leaf.width))
}

/// A read-only view of one paging structure (or the part of it that lies in
/// guest RAM), resolved to host memory once per table page.
pub(crate) struct Table<'a, R: GuestMemoryRegion> {
    /// Guest-physical address of the table.
    pub(crate) gpa: u64,
    region: Option<&'a R>,
    host: *const u8,
    /// Bytes of the table that lie in `region`.
    valid: u64,
}

impl<'a, R: GuestMemoryRegion> Table<'a, R> {
    /// Resolve the table at `gpa` of `size` bytes in `mem`.
    pub(crate) fn new<M>(mem: &'a M, gpa: u64, size: u64) -> Self
    where
        M: GuestMemoryBackend<R = R> + ?Sized,
    {
        let mut t = Table {
            gpa,
            region: None,
            host: std::ptr::null(),
            valid: 0,
        };
        let Some(region) = mem.find_region(GuestAddress(gpa)) else {
            return t;
        };
        let off = gpa - region.start_addr().0;
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(off)) else {
            return t;
        };
        // Entries are read with 4- and 8-byte atomics: the host mapping must
        // keep the table's natural alignment (mmap'd regions always do).
        if (host as usize) % 8 != 0 {
            return t;
        }
        t.region = Some(region);
        t.host = host;
        t.valid = (region.len() - off).min(size);
        t
    }

    /// Host pointer to the entry at byte `offset`, or `None` outside RAM.
    #[inline]
    fn ptr(&self, offset: u64, width: u64) -> Option<*const u8> {
        if offset + width <= self.valid {
            // The offset is within the mapped part of the region (checked
            // just above), so this cannot leave the mapping.
            Some(self.host.wrapping_add(offset as usize))
        } else {
            None
        }
    }

    /// The host address of the table's first byte, and how many bytes of it
    /// lie in RAM.
    #[inline]
    pub(crate) fn host_valid(&self) -> (*const u8, u64) {
        (self.host, self.valid)
    }

    /// The slot of the entry at byte `offset`, for a later re-read.
    #[inline]
    pub(crate) fn slot(&self, offset: u64, width: u64) -> LeafSlot<'a> {
        match self.ptr(offset, width) {
            Some(ptr) => LeafSlot {
                ptr,
                width: width as u8,
                _mem: std::marker::PhantomData,
            },
            None => LeafSlot::none(),
        }
    }

    /// Atomically read the entry at byte `offset` (4 or 8 bytes wide).
    #[inline]
    pub(crate) fn read(&self, offset: u64, width: u64) -> Option<u64> {
        let p = self.ptr(offset, width)?;
        if width == 8 {
            // SAFETY: `p` points into a live guest-memory mapping borrowed
            // for 'a (`Table::new` took it from a region of `mem`), at least
            // 8 bytes remain in the region (checked by `ptr`), and it is
            // 8-byte aligned (host base aligned, table offsets multiples of
            // 8). The guest may write the entry concurrently; an atomic load
            // is the only sound way to read it.
            Some(unsafe { &*(p as *const AtomicU64) }.load(Ordering::Acquire))
        } else {
            // SAFETY: as above, for a 4-byte aligned, in-bounds AtomicU32.
            Some(u64::from(
                unsafe { &*(p as *const AtomicU32) }.load(Ordering::Acquire),
            ))
        }
    }

    /// Atomically replace the entry at byte `offset` if it still holds
    /// `old`; on success mark it dirty in the region's bitmap (the entry was
    /// written, so a snapshot must carry it). Returns whether it was
    /// replaced; `None` if the entry lies outside RAM.
    pub(crate) fn compare_exchange(
        &self,
        offset: u64,
        width: u64,
        old: u64,
        new: u64,
    ) -> Option<bool> {
        let p = self.ptr(offset, width)?;
        let region = self.region?;
        let done = if width == 8 {
            // SAFETY: see `read`; the mapping is writable guest RAM.
            unsafe { &*(p as *const AtomicU64) }
                .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        } else {
            // SAFETY: see `read`, for a 4-byte entry.
            unsafe { &*(p as *const AtomicU32) }
                .compare_exchange(old as u32, new as u32, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        };
        if done {
            let region_off = self.gpa - region.start_addr().0 + offset;
            region
                .bitmap()
                .mark_dirty(region_off as usize, width as usize);
        }
        Some(done)
    }
}
