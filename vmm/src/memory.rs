// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest memory: vm-memory regions with a dirty bitmap, registered as KVM
//! memory slots, and the memory map the guest is told about. The very same
//! regions make up the memory map of the VM's GUP engine
//! ([`guest_mm::gup::Gup`]), through which device DMA pins guest pages.
//!
//! Layout: RAM from 0 up to [`MMIO_HOLE_START`] (3 GiB), then a hole for
//! device MMIO up to 4 GiB, then the rest of the RAM from [`HIGH_RAM_START`].
//! In the map given to the guest, `0x9fc00..0x100000` (EBDA, VGA, ROMs on a
//! PC) is reserved even though RAM backs it.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use std::sync::Arc;

use guest_mm::gup::{Gup, GupConfig, RegionOptions};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::error::{Error, Result};

/// Guest memory with a dirty bitmap per region (guest-mm's, which write
/// pins mark when a device releases them).
pub type GuestMemoryMmap = guest_mm::gup::GuestMemory;

/// Start of the MMIO hole below 4 GiB (end of low RAM).
pub const MMIO_HOLE_START: u64 = 3 << 30;
/// Where RAM resumes above the hole.
pub const HIGH_RAM_START: u64 = 4 << 30;
/// End of the conventional low memory a PC guest may use.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of "high memory" (1 MiB) in the PC sense.
pub const HIGHMEM_START: u64 = 0x10_0000;

/// The guest-physical RAM ranges for `bytes` of RAM.
pub fn ram_ranges(bytes: u64) -> Vec<(GuestAddress, u64)> {
    if bytes <= MMIO_HOLE_START {
        vec![(GuestAddress(0), bytes)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(HIGH_RAM_START), bytes - MMIO_HOLE_START),
        ]
    }
}

/// Allocates `bytes` of guest RAM (anonymous, populated on first touch).
pub fn create(bytes: u64) -> Result<GuestMemoryMmap> {
    Ok(create_with_gup(bytes)?.1)
}

/// Allocates `bytes` of guest RAM and the GUP engine over the same regions;
/// returns both (the memory is the engine's first snapshot).
pub fn create_with_gup(bytes: u64) -> Result<(Arc<Gup>, GuestMemoryMmap)> {
    let ranges = ram_ranges(bytes)
        .into_iter()
        .map(|(a, len)| {
            usize::try_from(len)
                .map(|len| (a.0, len))
                .map_err(|_| Error::Memory(format!("{len} bytes do not fit the host")))
        })
        .collect::<Result<Vec<_>>>()?;
    let regions = guest_mm::gup::memmap::anonymous_regions(&ranges)
        .map_err(|e| Error::Memory(e.to_string()))?
        .into_iter()
        .map(|r| (r, RegionOptions::default()))
        .collect();
    let gup = Gup::new(regions, GupConfig::default()).map_err(|e| Error::Memory(e.to_string()))?;
    let mem = gup.memory_map().memory().clone();
    Ok((Arc::new(gup), mem))
}

/// Registers every region of `mem` as a KVM memory slot (slot = index).
/// The caller must keep `mem` alive for as long as `vm` exists (declare the
/// `VmFd` before the memory, so that the fd is closed first).
pub fn register_slots<M: GuestMemoryBackend>(vm: &VmFd, mem: &M) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| Error::Memory(format!("host address of a region: {e}")))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the
        // caller keeps alive (and unmodified in size) for as long as the VM
        // fd exists (see the doc comment; `Vm` declares its `VmFd` before
        // its memory, so the fd is closed first).
        unsafe { vm.set_user_memory_region(r) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// Kind of a memory-map entry (E820 / PVH numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    /// Usable RAM (type 1).
    Ram = 1,
    /// Reserved (type 2).
    Reserved = 2,
}

/// One entry of the memory map given to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Kind.
    pub kind: MapKind,
}

/// The memory map for `bytes` of RAM: low RAM up to the EBDA, the PC hole
/// reserved, RAM from 1 MiB (split around the MMIO hole).
pub fn memory_map(bytes: u64) -> Vec<MapEntry> {
    let mut map = Vec::new();
    for (start, len) in ram_ranges(bytes) {
        let (start, end) = (start.0, start.0 + len);
        if start == 0 && end > HIGHMEM_START {
            map.push(MapEntry {
                addr: 0,
                size: EBDA_START,
                kind: MapKind::Ram,
            });
            map.push(MapEntry {
                addr: EBDA_START,
                size: HIGHMEM_START - EBDA_START,
                kind: MapKind::Reserved,
            });
            map.push(MapEntry {
                addr: HIGHMEM_START,
                size: end - HIGHMEM_START,
                kind: MapKind::Ram,
            });
        } else {
            map.push(MapEntry {
                addr: start,
                size: len,
                kind: MapKind::Ram,
            });
        }
    }
    map
}

/// End of the RAM below the MMIO hole.
pub fn low_ram_end(bytes: u64) -> u64 {
    bytes.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_region_and_large_ram_skips_the_hole() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(
            ram_ranges(5 << 30),
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 2 << 30)]
        );
    }

    #[test]
    fn the_map_reserves_the_pc_hole_and_covers_all_ram() {
        for bytes in [16u64 << 20, 3 << 30, (3 << 30) + 4096, 6 << 30] {
            let map = memory_map(bytes);
            let ram: u64 = map
                .iter()
                .filter(|e| e.kind == MapKind::Ram)
                .map(|e| e.size)
                .sum();
            assert_eq!(ram, bytes - (HIGHMEM_START - EBDA_START), "{bytes:#x}");
            assert!(map.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
            assert!(map
                .iter()
                .all(|e| e.addr + e.size <= MMIO_HOLE_START || e.addr >= HIGH_RAM_START));
        }
    }

    #[test]
    fn regions_carry_a_dirty_bitmap() {
        use vm_memory::bitmap::Bitmap;
        use vm_memory::Bytes;
        let mem = create(4 << 20).unwrap();
        mem.write_obj(1u64, GuestAddress(0x3000)).unwrap();
        let region = mem.find_region(GuestAddress(0x3000)).unwrap();
        assert!(region.bitmap().dirty_at(0x3000));
        assert!(!region.bitmap().dirty_at(0x5000));
    }
}
