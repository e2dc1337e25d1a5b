// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the virtio-iommu's differential test and benchmark share: guest
//! RAM that is both a KVM memory slot (or plain memory) and the GUP
//! engine's region ([`GupRam`]), and an ATTACH_TABLE request encoded byte
//! by byte from docs/guest-va-dma.md, not with the device's constants
//! ([`attach_table`]).

use std::sync::Arc;

use devices::virtio::iommu::IommuHandle;
use guest_mm::gup::{GuestMemory, GuestRegion, Gup, GupConfig, RegionOptions};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MmapRegion};

/// Guest RAM seen three ways: as the `GuestMemoryMmap` tests write and KVM
/// maps, and as the GUP engine (and the IOMMU) see it.
pub struct GupRam {
    // Field order is drop order: the engine and its view go before the
    // memory they alias.
    /// The GUP engine over the RAM (one region at 0).
    pub gup: Gup,
    /// The engine's view of the RAM.
    pub gmem: GuestMemory,
    /// The RAM itself.
    pub mem: GuestMemoryMmap,
}

impl GupRam {
    /// A GUP engine over the host mapping of `mem`, which must be one
    /// region at guest-physical 0.
    pub fn new(mem: GuestMemoryMmap) -> GupRam {
        assert_eq!(mem.num_regions(), 1, "one RAM region");
        let len = mem
            .find_region(GuestAddress(0))
            .expect("RAM at guest-physical 0")
            .len() as usize;
        let host = mem
            .get_host_address(GuestAddress(0))
            .expect("RAM at guest-physical 0");
        // SAFETY: `host..host + len` is the live anonymous mapping of
        // `mem`'s only region (`len` bytes at 0); the raw region does not
        // own it (no munmap on drop), and `GupRam` keeps `mem` (and with it
        // the mapping) alive until after the engine and its view are
        // dropped (field order). Both views access the memory through
        // vm-memory's volatile/atomic accessors only.
        let mapping = unsafe {
            MmapRegion::build_raw(
                host,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
            )
        }
        .expect("raw region over the test RAM");
        let region =
            Arc::new(GuestRegion::new(mapping, GuestAddress(0)).expect("guest region at 0 fits"));
        let gup = Gup::new(
            vec![(region, RegionOptions::default())],
            GupConfig::default(),
        )
        .expect("GUP engine over the test RAM");
        let gmem = gup.memory_map().memory().clone();
        GupRam { gup, gmem, mem }
    }
}

/// Runs an ATTACH_TABLE (docs/guest-va-dma.md: type 6, 44 readable bytes,
/// a 4-byte tail) of `pgd` with `flags` (`table_flags`) and `width` for
/// `endpoint` in `domain`, format 4 (x86); returns the tail the device
/// wrote (status first).
pub fn attach_table(
    h: &IommuHandle,
    mem: &GuestMemory,
    domain: u32,
    endpoint: u32,
    pgd: u64,
    flags: u64,
    width: u32,
) -> Vec<u8> {
    let mut r = [0u8; 44];
    r[0] = 6; // ATTACH_TABLE
    r[4..8].copy_from_slice(&domain.to_le_bytes());
    r[8..12].copy_from_slice(&endpoint.to_le_bytes());
    // 12: flags 0; 16: format 4 (x86); 18: reserved; 20: pasid 0.
    r[16..18].copy_from_slice(&4u16.to_le_bytes());
    r[24..32].copy_from_slice(&pgd.to_le_bytes());
    r[32..40].copy_from_slice(&flags.to_le_bytes());
    r[40..44].copy_from_slice(&width.to_le_bytes());
    h.execute(IommuHandle::offered_features(), mem, &r, 4)
}
