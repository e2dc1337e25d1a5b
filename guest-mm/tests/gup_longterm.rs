// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! LONGTERM pins (DESIGN 4.6): always the slow path, host pages populated
//! and locked (checked in /proc/self/smaps and with mincore) until the last
//! long-term pin on them goes, counted against the VM's limit (NoMemory
//! beyond it), refused in removable regions.

mod common;
#[path = "common/gup.rs"]
mod gupc;

use common::*;
use guest_mm::gup::{AddressSpace, Fallback, GupConfig, GupError, RegionOptions};
use gupc::*;

const LAZY: RegionOptions = RegionOptions {
    read_only: false,
    removable: false,
    lazy: true,
};

#[test]
fn host_pages_stay_locked_until_the_last_longterm_pin_goes() {
    let gup = engine(
        &[(0, RAM0, RegionOptions::default()), (RAM0, 4 * MIB, LAZY)],
        GupConfig::default(),
    );
    let map = gup.memory_map();
    let lz = map.regions()[1].clone();
    let host = |i: u64| lz.host_addr(RAM0 + MIB + i * PAGE) as *const u8;
    let phys = AddressSpace::Physical;
    let mut m = Meter::new(&gup);
    for i in 0..12 {
        assert!(!resident(host(i)) && !locked(host(i)), "page {i}");
    }

    // Pages 0..8, then 4..12.
    let a = gup
        .pin(&phys, RAM0 + MIB, 8 * PAGE, PIN | LONGTERM)
        .unwrap();
    let d = m.step();
    assert_slow(&d, Fallback::Longterm, 8);
    assert_eq!((d.longterm_pages, d.pins_outstanding), (8, 8));
    assert_eq!(d.populated, 8, "a lazy region: populated page by page");
    assert_eq!(gup.longterm_pages(), 8);
    for i in 0..8 {
        assert!(resident(host(i)) && locked(host(i)), "page {i}");
    }
    let (_, locked_kb) = smaps_entry(host(0));
    assert!(locked_kb >= 8 * 4, "Locked: {locked_kb} kB");
    assert!(!locked(host(8)));

    let b = gup
        .pin(
            &phys,
            RAM0 + MIB + 4 * PAGE,
            8 * PAGE,
            PIN | WRITE | LONGTERM,
        )
        .unwrap();
    assert_eq!(gup.longterm_pages(), 16, "counted per pin, like locked_vm");
    assert_eq!(gup.stats().longterm_pages, 16);
    assert!((0..12).all(|i| locked(host(i))));

    // The first goes: only the pages the second holds stay locked.
    drop(a);
    assert_eq!(gup.longterm_pages(), 8);
    assert!((0..4).all(|i| !locked(host(i))));
    assert!((4..12).all(|i| locked(host(i))));
    drop(b);
    assert!((0..12).all(|i| !locked(host(i))));
    assert_released(&gup);
}

#[test]
fn the_limit_gives_no_memory() {
    let gup = engine(
        &[(0, RAM0, RegionOptions::default())],
        GupConfig {
            longterm_limit_pages: 4,
            ..GupConfig::default()
        },
    );
    let phys = AddressSpace::Physical;
    let mut m = Meter::new(&gup);
    let a = gup.pin(&phys, DATA, 3 * PAGE, PIN | LONGTERM).unwrap();
    assert_eq!(a.pages(), 3);
    m.step();
    // One more fits: a short result.
    let b = gup
        .pin(&phys, DATA + 3 * PAGE, 3 * PAGE, PIN | LONGTERM)
        .unwrap();
    assert_eq!(
        (b.pages(), b.short_reason()),
        (1, Some(&GupError::NoMemory))
    );
    let d = m.step();
    assert_slow(&d, Fallback::Longterm, 1);
    assert_eq!(gup.longterm_pages(), 4);
    // None fits: the error.
    let e = gup.pin(&phys, DATA, PAGE, PIN | LONGTERM).unwrap_err();
    assert_eq!((e, e.errno()), (GupError::NoMemory, libc::ENOMEM));
    assert!(!locked(map_host(&gup, DATA + 4 * PAGE)));
    // Ordinary pins are not counted.
    let c = gup.pin(&phys, DATA, 64 * PAGE, PIN | WRITE).unwrap();
    assert_eq!(c.pages(), 64);
    assert_eq!(gup.longterm_pages(), 4);
    drop((a, b, c));
    assert_eq!(gup.longterm_pages(), 0);
    drop(gup.pin(&phys, DATA, 4 * PAGE, PIN | LONGTERM).unwrap());
    assert_released(&gup);
}

fn map_host(gup: &guest_mm::gup::Gup, gpa: u64) -> *const u8 {
    let map = gup.memory_map();
    map.find(gpa).unwrap().host_addr(gpa) as *const u8
}

#[test]
fn removable_regions_are_refused() {
    let removable = RegionOptions {
        removable: true,
        ..RegionOptions::default()
    };
    let gup = engine(
        &[(0, RAM0, RegionOptions::default()), (RAM0, MIB, removable)],
        GupConfig::default(),
    );
    let phys = AddressSpace::Physical;
    let mut m = Meter::new(&gup);
    let e = gup.pin(&phys, RAM0, PAGE, PIN | LONGTERM).unwrap_err();
    assert_eq!(e, GupError::NoMemory);
    assert_slow(&m.step(), Fallback::Longterm, 0);
    // Up to the removable region: short.
    let p = gup
        .pin(&phys, RAM0 - 2 * PAGE, 4 * PAGE, PIN | LONGTERM)
        .unwrap();
    assert_eq!(
        (p.pages(), p.short_reason()),
        (2, Some(&GupError::NoMemory))
    );
    assert_eq!(gup.longterm_pages(), 2);
    m.step();
    // A short-term pin there is fine (fast).
    drop(gup.pin(&phys, RAM0, PAGE, PIN).unwrap());
    assert_fast(&m.step(), 1);
    drop(p);
    assert_released(&gup);
}

#[test]
fn longterm_through_page_tables_and_a_2m_leaf() {
    let gup = engine(
        &[(0, RAM0, RegionOptions::default()), (RAM0, 4 * MIB, LAZY)],
        GupConfig::default(),
    );
    let map = gup.memory_map();
    let lz = map.regions()[1].clone();
    let mut b = tables(&map);
    b.map(VA, RAM0 + 2 * MIB, 2, RW | US); // A/D clear
    b.map(VA + 2 * MIB, DATA, 1, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let mut m = Meter::new(&gup);

    let p = gup
        .pin(
            &space,
            VA,
            2 * MIB + PAGE,
            PIN | WRITE | USER | TOUCH | LONGTERM,
        )
        .unwrap();
    assert_eq!(p.pages(), 513);
    let ext: Vec<_> = p
        .extents()
        .iter()
        .map(|e| (e.gpa, e.len, e.is_block_pinned()))
        .collect();
    assert_eq!(
        ext,
        vec![(RAM0 + 2 * MIB, 2 * MIB, true), (DATA, PAGE, false)]
    );
    let d = m.step();
    assert_slow(&d, Fallback::Longterm, 513);
    assert_eq!((d.touched, d.populated), (1, 1));
    assert_eq!(gup.longterm_pages(), 513);
    assert_eq!(lz.frames().total_refs(), 1024, "one block pin");
    for off in [0, MIB, 2 * MIB - PAGE] {
        let h = lz.host_addr(RAM0 + 2 * MIB + off) as *const u8;
        assert!(resident(h) && locked(h), "{off:#x}");
    }
    assert!(locked(map_host(&gup, DATA)));
    drop(p);
    assert!(!locked(lz.host_addr(RAM0 + 2 * MIB) as *const u8));
    assert!(!locked(map_host(&gup, DATA)));
    assert_released(&gup);
}
