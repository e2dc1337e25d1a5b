// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every reason the fast path hands a request to the slow path
//! ([`Fallback::ALL`]), each provoked on purpose, with the counter that
//! proves it and whether the slow path then succeeded.

mod common;
#[path = "common/gup.rs"]
mod gupc;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use guest_mm::gup::{AddressSpace, Fallback, FaultOutcome, GupConfig, GupError, RegionOptions};
use guest_mm::paging::PagingMode;
use gupc::*;
use vm_memory::{Bytes, GuestAddress};

#[test]
fn not_present_then_the_handler_maps_it() {
    let gup = engine0();
    let map = gup.memory_map();
    let mem = map.memory();
    let mut b = tables(&map);
    let pte = b.map(VA, DATA, 1, RW | US | A | D).at(1);
    w64(mem, pte, 0);
    let handler = Recorder::new(|_, _| {
        w64(mem, pte, DATA | P | RW | US | A | D);
        FaultOutcome::Retry
    });
    let space = AddressSpace::with_handler(ctx4(b.root), &handler);
    let mut m = Meter::new(&gup);
    let p = gup.pin(&space, VA, PAGE, PIN | USER).unwrap();
    assert_eq!((p.pages(), p.extents()[0].gpa), (1, DATA));
    let d = m.step();
    assert_slow(&d, Fallback::NotPresent, 1);
    assert_eq!((d.faults_handled, d.retries), (1, 1));
    drop(p);
    assert_released(&gup);
}

#[test]
fn protection_then_the_handler_allows_it() {
    let gup = engine0();
    let map = gup.memory_map();
    let mem = map.memory();
    let mut b = tables(&map);
    let pte = b.map(VA, DATA, 1, US | A | D).at(1);
    // Copy-on-write as a guest kernel does it: make the page writable.
    let handler = Recorder::new(|_, _| {
        w64(mem, pte, r64(mem, pte) | RW);
        FaultOutcome::Retry
    });
    let space = AddressSpace::with_handler(ctx4(b.root), &handler);
    let mut m = Meter::new(&gup);
    let p = gup.pin(&space, VA, PAGE, PIN | WRITE | USER).unwrap();
    assert_eq!(p.pages(), 1);
    let d = m.step();
    assert_slow(&d, Fallback::Protection, 1);
    assert_eq!(d.faults_handled, 1);
    assert_eq!(
        handler.seen()[0].0.error_code().unwrap().0,
        EC_P | EC_W | EC_U
    );
    drop(p);
    assert_released(&gup);
}

#[test]
fn accessed_dirty_clear_then_taken_by_the_slow_path() {
    let gup = engine0();
    let map = gup.memory_map();
    let r0 = map.regions()[0].clone();
    let mut b = tables(&map);
    b.map(VA, DATA, 1, RW | US | A); // D clear
    b.map(VA + 2 * MIB, DATA + 2 * MIB, 2, RW | US); // A clear, 2M leaf
    let space = AddressSpace::page_tables(ctx4(b.root));
    let mut m = Meter::new(&gup);

    // A read needs only A: fast. A write needs D: slow.
    drop(gup.pin(&space, VA, PAGE, PIN).unwrap());
    assert_fast(&m.step(), 1);
    let p = gup.pin(&space, VA, PAGE, PIN | WRITE).unwrap();
    assert_eq!(p.pages(), 1);
    assert_slow(&m.step(), Fallback::AccessedDirty, 1);
    drop(p);

    // The large leaf: taken by the slow path as one block reference.
    let p = gup.pin(&space, VA + 2 * MIB, 2 * MIB, GET).unwrap();
    assert_eq!((p.pages(), p.extents().len()), (512, 1));
    assert!(p.extents()[0].is_block_pinned());
    assert_eq!(r0.frames().total_refs(), 1);
    assert_slow(&m.step(), Fallback::AccessedDirty, 512);
    drop(p);
    assert_released(&gup);
}

#[test]
fn not_ram_large_leaf_across_two_regions() {
    // RAM [0, 65M) and [65M, 69M): a 2M leaf at 64M straddles both.
    let gup = engine(
        &[
            (0, 65 * MIB, RegionOptions::default()),
            (65 * MIB, 4 * MIB, RegionOptions::default()),
        ],
        GupConfig::default(),
    );
    let map = gup.memory_map();
    let (r0, r1) = (map.regions()[0].clone(), map.regions()[1].clone());
    let mut b = tables(&map);
    b.map(VA, 64 * MIB, 2, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let mut m = Meter::new(&gup);

    let p = gup.pin(&space, VA, 2 * MIB, GET | WRITE).unwrap();
    assert_eq!(p.pages(), 512);
    let ext: Vec<_> = p
        .extents()
        .iter()
        .map(|e| (e.addr, e.gpa, e.len, e.is_block_pinned()))
        .collect();
    assert_eq!(
        ext,
        vec![(VA, 64 * MIB, MIB, true), (VA + MIB, 65 * MIB, MIB, true)]
    );
    // One block reference in each region.
    assert_eq!((r0.frames().total_refs(), r1.frames().total_refs()), (1, 1));
    let d = m.step();
    assert_slow(&d, Fallback::NotRam, 512);
    drop(p);
    assert_released(&gup);
}

#[test]
fn read_only_region_then_the_slow_path_refuses() {
    let ro = RegionOptions {
        read_only: true,
        ..RegionOptions::default()
    };
    let gup = engine(
        &[(0, RAM0, RegionOptions::default()), (RAM0, MIB, ro)],
        GupConfig::default(),
    );
    let mut m = Meter::new(&gup);
    let phys = AddressSpace::Physical;
    let p = gup.pin(&phys, RAM0 - PAGE, 2 * PAGE, PIN | WRITE).unwrap();
    assert_eq!(p.pages(), 1);
    assert!(matches!(
        p.short_reason(),
        Some(GupError::Fault { address, fault: None, .. }) if *address == RAM0
    ));
    let d = m.step();
    assert_eq!(fallbacks_moved(&d), vec![(Fallback::ReadOnly, 1)]);
    assert_eq!((d.fast_pages, d.slow_pages), (1, 0));
    drop(p);
    drop(gup.pin(&phys, RAM0 - PAGE, 2 * PAGE, PIN).unwrap());
    assert_fast(&m.step(), 2);
    assert_released(&gup);
}

#[test]
fn frozen_then_unfrozen_while_the_slow_path_waits() {
    let gup = engine(
        &[(0, RAM0, RegionOptions::default())],
        GupConfig {
            freeze_wait: Duration::from_secs(30),
            ..GupConfig::default()
        },
    );
    let map = gup.memory_map();
    let mut b = tables(&map);
    b.map_4k_run(VA, DATA, 3, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let (r, f) = frame_of(&map, DATA + PAGE);
    r.frames().freeze(f).unwrap();
    let mut m = Meter::new(&gup);
    let t = Instant::now();
    let p = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            r.frames().unfreeze(f);
        });
        gup.pin(&space, VA, 3 * PAGE, PIN).unwrap()
    });
    assert!(t.elapsed() >= Duration::from_millis(20));
    assert_eq!((p.pages(), p.short_reason()), (3, None));
    let d = m.step();
    assert_eq!(d.fast_pages, 1);
    assert_slow(&d, Fallback::Frozen, 2);
    assert!(d.frozen_waits > 0);
    drop(p);
    assert_released(&gup);
}

#[test]
fn not_populated_then_populated_by_the_slow_path() {
    let lazy = RegionOptions {
        lazy: true,
        ..RegionOptions::default()
    };
    let gup = engine(
        &[(0, RAM0, RegionOptions::default()), (RAM0, 8 * MIB, lazy)],
        GupConfig::default(),
    );
    let map = gup.memory_map();
    let lz = map.regions()[1].clone();
    let mut b = tables(&map);
    b.map(VA, RAM0 + 4 * MIB, 2, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let mut m = Meter::new(&gup);
    let host = lz.host_addr(RAM0 + PAGE) as *const u8;
    assert!(lz.frames().is_unpopulated(1));
    assert!(!resident(host), "a lazy region starts empty");

    // 4K, guest-physical: populated, then pinned.
    let p = gup
        .pin(&AddressSpace::Physical, RAM0 + PAGE, PAGE, PIN | WRITE)
        .unwrap();
    assert_eq!(p.pages(), 1);
    let d = m.step();
    assert_slow(&d, Fallback::NotPopulated, 1);
    assert_eq!(d.populated, 1);
    assert!(!lz.frames().is_unpopulated(1));
    assert!(lz.frames().is_unpopulated(0) && lz.frames().is_unpopulated(2));
    assert!(resident(host));
    drop(p);
    drop(
        gup.pin(&AddressSpace::Physical, RAM0 + PAGE, PAGE, PIN)
            .unwrap(),
    );
    assert_fast(&m.step(), 1);

    // A 2M leaf: its whole block is populated in one call.
    let p = gup.pin(&space, VA + 8 * PAGE, PAGE, GET).unwrap();
    assert!(p.extents()[0].is_block_pinned());
    let d = m.step();
    assert_slow(&d, Fallback::NotPopulated, 1);
    assert_eq!(d.populated, 1);
    let first = lz.frame_index(RAM0 + 4 * MIB);
    assert!((first..first + 512).all(|i| !lz.frames().is_unpopulated(i)));
    assert!(lz.frames().is_unpopulated(first + 512));
    drop(p);
    drop(gup.pin(&space, VA, 2 * MIB, GET).unwrap());
    assert_fast(&m.step(), 512);
    assert_released(&gup);
}

#[test]
fn leaf_changed_under_a_racing_guest() {
    // A guest thread keeps flipping an ignored bit (bit 9) of 512 PTEs: the
    // mapping never changes, but the entry does, so a pin that reads an
    // entry, pins, and re-reads sometimes sees it change.
    const N: u64 = 512;
    let gup = engine0();
    let map = gup.memory_map();
    let r0 = map.regions()[0].clone();
    let mut b = tables(&map);
    let pt = b.map(VA, DATA, 1, RW | US | A | D).at(1);
    b.map_4k_run(VA + PAGE, DATA + PAGE, N - 1, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut tries, mut seen) = (0u64, None);
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: the page table lies inside region 0's live host mapping
            // (the snapshot `map` holds it), 8-byte aligned; the engine
            // only ever reads it atomically.
            let ptes = unsafe {
                std::slice::from_raw_parts(r0.host_addr(pt) as *const AtomicU64, N as usize)
            };
            while !stop.load(Ordering::Relaxed) {
                for e in ptes {
                    e.fetch_xor(1 << 9, Ordering::SeqCst);
                }
            }
        });
        while Instant::now() < deadline {
            tries += 1;
            let before = gup.stats();
            let p = gup.pin(&space, VA, N * PAGE, GET);
            let d = delta(&before, &gup.stats());
            let p = p.expect("an ignored bit never faults");
            // Whatever happened, what was taken is the mapping.
            let mut at = DATA;
            for e in p.extents() {
                assert_eq!(e.gpa, at);
                at += e.len;
            }
            if d.fallback(Fallback::LeafChanged) == 1 && p.short_reason().is_none() {
                assert_eq!(p.pages(), N);
                assert_eq!(d.slow_calls, 1);
                seen = Some(d);
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let d = seen.unwrap_or_else(|| panic!("no LeafChanged fallback in {tries} tries"));
    assert_eq!(fallbacks_moved(&d), vec![(Fallback::LeafChanged, 1)]);
    eprintln!("leaf_changed: seen after {tries} requests: {d:?}");
    assert_released(&gup);
}

#[test]
fn longterm_always_takes_the_slow_path() {
    let gup = engine0();
    let map = gup.memory_map();
    let mut b = tables(&map);
    b.map_4k_run(VA, DATA, 4, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let mut m = Meter::new(&gup);
    let p = gup.pin(&space, VA, 4 * PAGE, PIN | LONGTERM).unwrap();
    assert_eq!(p.pages(), 4);
    let d = m.step();
    assert_slow(&d, Fallback::Longterm, 4);
    assert_eq!(d.fast_pages, 0);
    drop(p);
    assert_released(&gup);
}

#[test]
fn overflow_of_a_frame_reference_count() {
    // 1 GiB of guest-virtual space, every 4K page aliasing one frame: one
    // request takes 2^18 pins of it (2^28 references). References stop at
    // 2^29, so the third request runs out.
    const PAGES: u64 = 1 << 18;
    let gup = engine0();
    let map = gup.memory_map();
    let mem = map.memory();
    let r0 = map.regions()[0].clone();
    let mut b = tables(&map);
    let pd = b.map(VA, DATA, 1, RW | US | A | D).at(2) & !(PAGE - 1);
    assert_eq!(b.mode, PagingMode::Level4);
    let pte = (DATA | P | RW | US | A | D).to_le_bytes();
    let page: Vec<u8> = pte.iter().copied().cycle().take(PAGE as usize).collect();
    for i in 0..512 {
        let pt = if i == 0 {
            r64(mem, pd) & 0x000f_ffff_ffff_f000
        } else {
            let t = b.alloc();
            w64(mem, pd + i * 8, t | P | RW | US);
            t
        };
        mem.write_slice(&page, GuestAddress(pt)).unwrap();
    }
    let space = AddressSpace::page_tables(ctx4(b.root));
    let mut m = Meter::new(&gup);

    let mut held = Vec::new();
    for pages in [PAGES, PAGES - 1] {
        let p = gup.pin(&space, VA, pages * PAGE, PIN).unwrap();
        assert_eq!(p.pages(), pages);
        // Aliases are never merged: one extent per page.
        assert_eq!(p.extents().len() as u64, pages);
        assert_fast(&m.step(), pages);
        held.push(p);
    }
    assert_eq!(r0.frames().total_refs(), (1 << 29) - 1024);
    // References are refused from FRAME_REF_LIMIT (2^29) on, half the
    // 30-bit field, so refused attempts can never carry into the flags:
    // one more pin fits, then the request stops short.
    let p = gup.pin(&space, VA, PAGES * PAGE, PIN).unwrap();
    assert_eq!(p.pages(), 1);
    assert_eq!(p.short_reason(), Some(&GupError::Overflow));
    let d = m.step();
    assert_eq!(d.fast_pages, 1);
    assert_slow(&d, Fallback::Overflow, 0);
    held.push(p);
    let e = gup.pin(&space, VA, PAGE, PIN).unwrap_err();
    assert_eq!((e, e.errno()), (GupError::Overflow, libc::EOVERFLOW));
    assert_slow(&m.step(), Fallback::Overflow, 0);
    assert_eq!(r0.frames().total_refs(), 1 << 29);
    assert_eq!(
        u64::from(guest_mm::gup::frames::FRAME_REF_LIMIT),
        1 << 29,
        "the limit this test counts to"
    );
    drop(held);
    assert_released(&gup);
}

#[test]
fn paging_disabled_has_no_entry_to_recheck() {
    // CR0.PG = 0: guest-virtual is guest-physical, there is no leaf entry.
    // The slow path (here: LONGTERM, and a lazily populated frame) must
    // not treat the missing entry as "changed".
    let lazy = RegionOptions {
        lazy: true,
        ..RegionOptions::default()
    };
    let gup = engine(
        &[(0, RAM0, RegionOptions::default()), (RAM0, MIB, lazy)],
        GupConfig::default(),
    );
    let space = AddressSpace::page_tables(guest_mm::paging::PagingContext::new(0, 0, 0, 0));
    let mut m = Meter::new(&gup);
    let p = gup.pin(&space, DATA, 2 * PAGE, PIN | WRITE).unwrap();
    assert_eq!((p.pages(), p.short_reason()), (2, None));
    assert_eq!(p.extents()[0].gpa, DATA);
    // (Which path takes it is not asserted: with no entry there are no
    // A/D bits, which the fast path currently reads as "A/D clear".)
    let d = m.step();
    assert_eq!((d.fast_pages + d.slow_pages, d.retries), (2, 0));
    drop(p);
    let p = gup.pin(&space, DATA, 2 * PAGE, PIN | LONGTERM).unwrap();
    assert_eq!((p.pages(), p.short_reason()), (2, None));
    let d = m.step();
    assert_slow(&d, Fallback::Longterm, 2);
    assert_eq!(d.retries, 0);
    drop(p);
    let p = gup.pin(&space, RAM0 + PAGE, PAGE, GET | WRITE).unwrap();
    assert_eq!((p.pages(), p.short_reason()), (1, None));
    let d = m.step();
    assert_eq!((d.slow_pages, d.populated), (1, 1));
    drop(p);
    assert_released(&gup);
}
