// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory-map changes and the balloon (DESIGN 4.3, 4.6, guarantee 1):
//! removing a region with referenced frames is refused (or waits, bounded)
//! and never unmaps memory under a pin; added regions are pinnable at once;
//! discard skips referenced frames, and a discarded frame is populated
//! again by the slow path.

mod common;
#[path = "common/gup.rs"]
mod gupc;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use guest_mm::gup::memmap::anonymous_regions;
use guest_mm::gup::{AddressSpace, Fallback, GupConfig, GupError, RegionError, RegionOptions};
use gupc::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryRegion};

/// A second region at 128M.
const R1: u64 = 128 * MIB;

fn two_regions() -> guest_mm::gup::Gup {
    engine(
        &[
            (0, RAM0, RegionOptions::default()),
            (R1, 4 * MIB, RegionOptions::default()),
        ],
        GupConfig::default(),
    )
}

fn fill(gup: &guest_mm::gup::Gup, gpa: u64, pages: u64, byte: u8) {
    let map = gup.memory_map();
    let data = vec![byte; (pages * PAGE) as usize];
    map.memory().write_slice(&data, GuestAddress(gpa)).unwrap();
}

/// Read one byte through the Pinned's host pointer of its first extent.
fn host_byte(p: &guest_mm::gup::Pinned) -> u8 {
    let ptr = p.extents()[0].host_ptr().unwrap();
    // SAFETY: the pin keeps the page mapped; a guest-memory byte is read
    // with an atomic load since a guest could write it concurrently.
    unsafe { (*(ptr as *const std::sync::atomic::AtomicU8)).load(Ordering::Relaxed) }
}

#[test]
fn removing_a_pinned_region_is_refused_until_the_pin_goes() {
    let gup = two_regions();
    fill(&gup, R1 + 5 * PAGE, 3, 0xab);
    let old = gup.memory_map();
    let phys = AddressSpace::Physical;
    let p = gup
        .pin(&phys, R1 + 5 * PAGE, 3 * PAGE, PIN | WRITE)
        .unwrap();
    assert!(gup.maybe_dma_pinned(R1 + 6 * PAGE));

    assert_eq!(
        gup.remove_region(R1, Duration::ZERO).map(|_| ()),
        Err(RegionError::Busy(3))
    );
    // A bounded wait, then the same answer.
    let t = Instant::now();
    assert_eq!(
        gup.remove_region(R1, Duration::from_millis(20)).map(|_| ()),
        Err(RegionError::Busy(3))
    );
    assert!(t.elapsed() >= Duration::from_millis(20));
    // Nothing changed: still mapped, still readable, nothing left frozen,
    // other frames still pinnable.
    let now = gup.memory_map();
    assert_eq!(now.regions().len(), 2);
    assert_eq!(now.find(R1).unwrap().frames().frozen_count(), 0);
    assert_eq!(host_byte(&p), 0xab);
    let mut m = Meter::new(&gup);
    drop(gup.pin(&phys, R1, PAGE, GET).unwrap());
    assert_fast(&m.step(), 1);

    drop(p);
    let region = gup.remove_region(R1, Duration::ZERO).unwrap();
    assert_eq!((region.start_addr().0, region.len()), (R1, 4 * MIB));
    assert_eq!(gup.memory_map().regions().len(), 1);
    assert!(!gup.maybe_dma_pinned(R1 + 6 * PAGE));

    // Gone: a Fault, through either address space.
    let e = gup.pin(&phys, R1 + 5 * PAGE, PAGE, GET).unwrap_err();
    assert_eq!(
        e,
        GupError::Fault {
            address: R1 + 5 * PAGE,
            fault: None,
            inject: None
        }
    );
    assert_slow(&m.step(), Fallback::NotRam, 0);
    let mut b = tables(&old);
    b.map(VA, R1 + 5 * PAGE, 1, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let e = gup.pin(&space, VA, PAGE, GET).unwrap_err();
    assert!(
        matches!(
            e,
            GupError::Fault {
                address: VA,
                fault: None,
                ..
            }
        ),
        "{e:?}"
    );
    assert_slow(&m.step(), Fallback::NotRam, 0);

    // An old snapshot still maps it (the memory outlives every user).
    let byte: u8 = old.memory().read_obj(GuestAddress(R1 + 5 * PAGE)).unwrap();
    assert_eq!(byte, 0xab);
    drop(old);

    // Put it back: pinnable again, contents kept.
    gup.add_region(region, RegionOptions::default()).unwrap();
    let p = gup.pin(&space, VA, PAGE, PIN).unwrap();
    assert_eq!(host_byte(&p), 0xab);
    assert_fast(&m.step(), 1);
    drop(p);
    assert_released(&gup);
}

#[test]
fn a_block_reference_refuses_removal_of_all_its_frames() {
    let gup = two_regions();
    let map = gup.memory_map();
    let mut b = tables(&map);
    b.map(VA, R1 + 2 * MIB, 2, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let g = gup.pin(&space, VA + 7 * PAGE, PAGE, GET).unwrap();
    assert!(g.extents()[0].is_block_pinned());
    // Frames 0..512 freeze, then the block's 512 are busy.
    assert_eq!(
        gup.remove_region(R1, Duration::ZERO).map(|_| ()),
        Err(RegionError::Busy(512))
    );
    assert_eq!(map.regions()[1].frames().frozen_count(), 0);
    drop(g);
    gup.remove_region(R1, Duration::ZERO).unwrap();
    assert_released(&gup);
}

#[test]
fn removal_waits_for_a_pin_to_go() {
    let gup = two_regions();
    let p = gup
        .pin(&AddressSpace::Physical, R1 + MIB, 2 * PAGE, PIN)
        .unwrap();
    let t = Instant::now();
    let r = std::thread::scope(|s| {
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(p);
        });
        gup.remove_region(R1, Duration::from_secs(30))
    });
    assert!(r.is_ok(), "{r:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(30) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert_released(&gup);
}

#[test]
fn a_region_never_leaves_the_map_under_a_pin() {
    // A device keeps pinning the same frames while the region is removed:
    // whenever it holds a pin, the region is in the map, and the removal
    // still completes (pins are refused once the frames are frozen).
    let gup = engine(
        &[
            (0, RAM0, RegionOptions::default()),
            (R1, 4 * MIB, RegionOptions::default()),
        ],
        GupConfig {
            freeze_wait: Duration::from_millis(1),
            ..GupConfig::default()
        },
    );
    fill(&gup, R1, 1024, 0x5a);
    let done = AtomicBool::new(false);
    let (mut pins, mut refused) = (0u64, 0u64);
    let removed = std::thread::scope(|s| {
        let remover = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(2));
            let r = gup.remove_region(R1, Duration::from_secs(30));
            done.store(true, Ordering::SeqCst);
            r
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            // The last frames: the remover freezes them last, so it has
            // to wait for (and race) this loop.
            let gpa = R1 + (1016 + pins % 8) * PAGE;
            match gup.pin(&AddressSpace::Physical, gpa, PAGE, PIN | WRITE) {
                Ok(p) => {
                    pins += 1;
                    assert!(gup.memory_map().find(gpa).is_some());
                    assert_eq!(host_byte(&p), 0x5a);
                    std::thread::yield_now();
                    assert!(gup.memory_map().find(gpa).is_some());
                }
                Err(GupError::Again) => refused += 1,
                Err(GupError::Fault { .. }) => {
                    assert!(gup.memory_map().find(gpa).is_none());
                    break;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        remover.join().unwrap()
    });
    assert!(removed.is_ok(), "{removed:?}");
    assert!(done.load(Ordering::SeqCst));
    eprintln!("region removal raced {pins} pins ({refused} refused)");
    assert!(pins > 0);
    assert_released(&gup);
}

#[test]
fn added_regions_are_pinnable_and_changes_are_checked() {
    let gup = engine0();
    let map = gup.memory_map();
    let phys = AddressSpace::Physical;
    let mut m = Meter::new(&gup);
    let at = 256 * MIB;
    assert!(gup.pin(&phys, at, PAGE, GET).is_err());
    m.step();

    let new = anonymous_regions(&[(at, (4 * MIB) as usize)]).unwrap();
    gup.add_region(new[0].clone(), RegionOptions::default())
        .unwrap();
    let p = gup.pin(&phys, at + PAGE, 2 * PAGE, PIN | WRITE).unwrap();
    assert_eq!(p.pages(), 2);
    assert_fast(&m.step(), 2);
    // Through page tables too (the walker sees the new snapshot).
    let mut b = tables(&map);
    b.map(VA, at + 3 * PAGE, 1, RW | US | A | D);
    let q = gup
        .pin(&AddressSpace::page_tables(ctx4(b.root)), VA, PAGE, GET)
        .unwrap();
    assert_eq!(q.extents()[0].gpa, at + 3 * PAGE);
    drop((p, q));

    // Overlapping, misaligned, unknown: refused, map unchanged.
    let overlap = anonymous_regions(&[(at + 2 * MIB, (4 * MIB) as usize)]).unwrap();
    assert!(matches!(
        gup.add_region(overlap[0].clone(), RegionOptions::default()),
        Err(RegionError::Overlap(_))
    ));
    let odd = anonymous_regions(&[(512 * MIB + 100, (4 * MIB) as usize)]).unwrap();
    assert!(matches!(
        gup.add_region(odd[0].clone(), RegionOptions::default()),
        Err(RegionError::Unaligned { .. })
    ));
    assert_eq!(
        gup.remove_region(at + PAGE, Duration::ZERO).map(|_| ()),
        Err(RegionError::NotFound(at + PAGE))
    );
    assert_eq!(gup.memory_map().regions().len(), 2);

    // A lazy region added later goes through population.
    let lazy = anonymous_regions(&[(at + 4 * MIB, (4 * MIB) as usize)]).unwrap();
    gup.add_region(
        lazy[0].clone(),
        RegionOptions {
            lazy: true,
            ..RegionOptions::default()
        },
    )
    .unwrap();
    m.step();
    drop(gup.pin(&phys, at + 4 * MIB, PAGE, GET).unwrap());
    let d = m.step();
    assert_slow(&d, Fallback::NotPopulated, 1);
    assert_eq!(d.populated, 1);
    gup.remove_region(at, Duration::ZERO).unwrap();
    gup.remove_region(at + 4 * MIB, Duration::ZERO).unwrap();
    assert_released(&gup);
}

#[test]
fn discard_skips_referenced_frames_and_the_slow_path_repopulates() {
    let gup = engine0();
    let map = gup.memory_map();
    let mem = map.memory();
    let r0 = map.regions()[0].clone();
    let phys = AddressSpace::Physical;
    let byte = |gpa: u64| -> u8 { mem.read_obj(GuestAddress(gpa)).unwrap() };
    fill(&gup, DATA, 8, 0xcd);
    let pinned = gup.pin(&phys, DATA + 2 * PAGE, PAGE, PIN | WRITE).unwrap();
    let got = gup.pin(&phys, DATA + 5 * PAGE, PAGE, GET).unwrap();

    assert_eq!(gup.discard(DATA, 8 * PAGE), Ok(6));
    for i in 0..8 {
        let gpa = DATA + i * PAGE;
        let kept = i == 2 || i == 5;
        assert_eq!(byte(gpa + 17), if kept { 0xcd } else { 0 }, "frame {i}");
        assert_eq!(r0.frames().is_unpopulated(r0.frame_index(gpa)), !kept);
    }
    assert_eq!(r0.frames().frozen_count(), 0);
    assert_eq!(host_byte(&pinned), 0xcd);

    // A discarded frame: the fast path refuses it, the slow path
    // populates it, and it reads as zeroes.
    let mut m = Meter::new(&gup);
    let p = gup.pin(&phys, DATA, 2 * PAGE, PIN).unwrap();
    let d = m.step();
    assert_slow(&d, Fallback::NotPopulated, 2);
    assert_eq!(d.populated, 2);
    assert_eq!(host_byte(&p), 0);
    assert!(!r0.frames().is_unpopulated(r0.frame_index(DATA)));
    drop((p, pinned, got));
    assert_eq!(gup.discard(DATA, 8 * PAGE), Ok(8));

    // A 2M leaf's block reference protects all its frames.
    let mut b = tables(&map);
    b.map(VA, DATA + 2 * MIB, 2, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    fill(&gup, DATA + 2 * MIB, 512, 0xee);
    let g = gup.pin(&space, VA, PAGE, GET).unwrap();
    assert_eq!(gup.discard(DATA + 2 * MIB + 9 * PAGE, 3 * PAGE), Ok(0));
    assert_eq!(byte(DATA + 2 * MIB + 10 * PAGE), 0xee);
    drop(g);
    // Without it, a frame of the block goes, and the next block pin
    // populates the block again (the other frames keep their data).
    assert_eq!(gup.discard(DATA + 2 * MIB + 10 * PAGE, PAGE), Ok(1));
    m.step();
    let g = gup.pin(&space, VA, 2 * MIB, GET).unwrap();
    assert!(g.extents()[0].is_block_pinned());
    let d = m.step();
    assert_slow(&d, Fallback::NotPopulated, 512);
    assert_eq!(d.populated, 1);
    assert_eq!(byte(DATA + 2 * MIB + 10 * PAGE), 0);
    assert_eq!(byte(DATA + 2 * MIB + 11 * PAGE), 0xee);
    drop(g);

    // A hole is a Fault.
    assert!(matches!(
        gup.discard(RAM0, PAGE),
        Err(GupError::Fault { address: RAM0, .. })
    ));
    assert_released(&gup);
}
