// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! First checks of the GUP engine: fast path, slow path, release.

mod common;

use common::*;
use guest_mm::gup::{AddressSpace, Fallback, Gup, GupFlags, RegionOptions};
use guest_mm::paging::PagingMode;

const VA: u64 = 0x7000_0000_0000;

#[test]
fn fast_path_pins_and_releases() {
    let gup = Gup::anonymous(&[(0, (64 * MIB) as usize)], RegionOptions::default()).unwrap();
    let map = gup.memory_map();
    let mut b = Builder::new(map.memory(), PagingMode::Level4);
    b.map_4k_run(VA, 32 * MIB, 16, RW | US | A | D);
    b.map(VA + 2 * MIB, 40 * MIB, 2, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let p = gup
        .pin(
            &space,
            VA + 100,
            16 * 4096 - 100,
            GupFlags::PIN | GupFlags::WRITE | GupFlags::USER,
        )
        .unwrap();
    assert_eq!(p.pages(), 16);
    assert_eq!(p.extents().len(), 1);
    assert_eq!(p.extents()[0].gpa, 32 * MIB + 100);
    assert!(gup.maybe_dma_pinned(32 * MIB + 5 * 4096));
    let s = gup.stats();
    assert_eq!(s.fast_hits, 1);
    assert_eq!(s.pins_outstanding, 16);
    drop(p);
    assert!(!gup.maybe_dma_pinned(32 * MIB + 5 * 4096));
    assert_eq!(gup.stats().pins_outstanding, 0);
    let r = &map.regions()[0];
    assert!(r.is_dirty(32 * MIB + 15 * 4096));
    assert_eq!(r.frames().total_refs(), 0);

    // A 2M leaf: one block reference.
    let p = gup
        .pin(
            &space,
            VA + 2 * MIB,
            2 * MIB,
            GupFlags::PIN | GupFlags::USER,
        )
        .unwrap();
    assert_eq!(p.pages(), 512);
    assert!(p.extents()[0].is_block_pinned());
    assert_eq!(r.frames().total_refs(), 1024);
    drop(p);
    assert_eq!(r.frames().total_refs(), 0);
}

#[test]
fn slow_path_touches_accessed_bits() {
    let gup = Gup::anonymous(&[(0, (64 * MIB) as usize)], RegionOptions::default()).unwrap();
    let map = gup.memory_map();
    let mut b = Builder::new(map.memory(), PagingMode::Level4);
    b.map_4k_run(VA, 32 * MIB, 4, RW | US);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let p = gup
        .pin(
            &space,
            VA,
            4 * 4096,
            GupFlags::PIN | GupFlags::WRITE | GupFlags::USER | GupFlags::TOUCH,
        )
        .unwrap();
    assert_eq!(p.pages(), 4);
    let s = gup.stats();
    assert_eq!(s.fallback(Fallback::AccessedDirty), 1);
    assert_eq!(s.touched, 4);
    assert_eq!(s.slow_pages, 4);
    drop(p);
    // Now everything is perfect: the fast path takes it all.
    let p = gup
        .pin(
            &space,
            VA,
            4 * 4096,
            GupFlags::PIN | GupFlags::WRITE | GupFlags::USER | GupFlags::TOUCH,
        )
        .unwrap();
    assert_eq!(p.pages(), 4);
    assert_eq!(gup.stats().fast_hits, 1);
}
