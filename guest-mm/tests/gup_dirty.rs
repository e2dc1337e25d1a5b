// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guarantee 4 (every frame of every write pin is in the dirty bitmap after
//! release, even if the bitmap was cleared while it was held; read pins
//! mark nothing) and guarantee 5 (after every pin is dropped, every
//! counter is back to zero; before that, each handle's release undoes
//! exactly what its request added).

mod common;
#[path = "common/gup.rs"]
mod gupc;

use std::collections::BTreeSet;

use common::*;
use guest_mm::gup::{
    AddressSpace, CancelToken, GupConfig, GupCounters, GupFlags, MemoryMap, Pinned, RegionOptions,
};
use gupc::*;

/// [0, 64M) with the tables and 4K data; [1G, 2G) for a 1G leaf; a lazy
/// [64M, 72M).
fn setup() -> guest_mm::gup::Gup {
    engine(
        &[
            (0, RAM0, RegionOptions::default()),
            (
                RAM0,
                8 * MIB,
                RegionOptions {
                    lazy: true,
                    ..RegionOptions::default()
                },
            ),
            (GIB, GIB, RegionOptions::default()),
        ],
        GupConfig::default(),
    )
}

/// The mappings every test here uses; returns the root.
///   VA + i*4K, i < 32: shuffled 4K frames at DATA (A/D set for even i,
///                      clear for odd i);
///   VA + 2M: a 2M leaf onto DATA + 2M;  VA + 4M: a 2M leaf in the lazy
///   region;  VA + 1G: a 1G leaf onto 1G.
fn map_all(map: &MemoryMap) -> u64 {
    let mut b = tables(map);
    let mut rng = Rng(0x5eed);
    let mut frames: Vec<u64> = (0..64).collect();
    for i in (1..frames.len()).rev() {
        frames.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for i in 0..32u64 {
        let ad = if i % 2 == 0 { A | D } else { 0 };
        b.map(
            VA + i * PAGE,
            DATA + frames[i as usize] * PAGE,
            1,
            RW | US | ad,
        );
    }
    b.map(VA + 2 * MIB, DATA + 2 * MIB, 2, RW | US | A | D);
    b.map(VA + 4 * MIB, RAM0 + 2 * MIB, 2, RW | US | A | D);
    b.map(VA + GIB, GIB, 3, RW | US | A | D);
    b.root
}

fn reset_bitmaps(map: &MemoryMap) {
    for r in map.regions() {
        r.region().bitmap().reset();
    }
}

/// Every 4K page (gpa) any non-hole extent of `p` covers.
fn pages_of(p: &Pinned) -> BTreeSet<u64> {
    let mut v = BTreeSet::new();
    for e in p.extents().iter().filter(|e| !e.is_hole()) {
        let mut a = e.gpa & !(PAGE - 1);
        while a < e.gpa + e.len {
            v.insert(a);
            a += PAGE;
        }
    }
    v
}

/// Every dirty page of every region.
fn dirty_pages(map: &MemoryMap) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    for r in map.regions() {
        let mut a = r.start();
        while a < r.start() + r.len() {
            if r.is_dirty(a) {
                set.insert(a);
            }
            a += PAGE;
        }
    }
    set
}

/// The requests of these tests: (space is page tables?, addr, len, flags).
fn requests() -> Vec<(bool, u64, u64, GupFlags)> {
    vec![
        // 4K leaves, fast path (even pages), with an unaligned start.
        (true, VA + 100, PAGE, PIN),
        // 4K leaves, A/D clear on odd pages: slow path without TOUCH.
        (true, VA, 32 * PAGE, PIN | USER),
        (true, VA + 5 * PAGE, 6 * PAGE - 1, GET | TOUCH),
        // Part of a 2M leaf, a whole one, a lazily populated one.
        (true, VA + 2 * MIB + 3 * PAGE, 2 * PAGE, PIN),
        (true, VA + 2 * MIB, 2 * MIB, GET),
        (true, VA + 4 * MIB, 2 * MIB, PIN),
        // The 1G leaf.
        (true, VA + GIB, GIB, PIN),
        // Guest-physical, a long-term one, one across a hole (DUMP).
        (false, DATA + 40 * PAGE, 3 * PAGE, GET),
        (false, DATA + 48 * PAGE, 2 * PAGE, PIN | LONGTERM),
        (false, RAM0 + 8 * MIB - PAGE, 3 * PAGE, GET | DUMP),
        // Short: stops at the end of RAM.
        (false, RAM0 + 8 * MIB - 2 * PAGE, 4 * PAGE, PIN),
    ]
}

#[test]
fn every_frame_of_every_write_pin_is_dirty_after_release() {
    let gup = setup();
    let map = gup.memory_map();
    let root = map_all(&map);
    let space = AddressSpace::page_tables(ctx4(root));
    for (pt, addr, len, flags) in requests() {
        let s = if pt { space } else { AddressSpace::Physical };
        reset_bitmaps(&map);
        let p = gup.pin(&s, addr, len, flags | WRITE).unwrap();
        assert!(p.pages() > 0 && p.is_write());
        let pages = pages_of(&p);
        // A migration pass scans and clears the bitmap while the device
        // still holds the pin: the release must record the device's
        // writes again.
        reset_bitmaps(&map);
        drop(p);
        let dirty = dirty_pages(&map);
        for gpa in &pages {
            assert!(
                dirty.contains(gpa),
                "{flags:?} {addr:#x}: {gpa:#x} not dirty"
            );
        }
        // And nothing else (table pages the slow path touches are written
        // by the walker's A/D update, which marks them itself).
        let extra: Vec<_> = dirty
            .iter()
            .filter(|g| !pages.contains(g) && **g >= DATA)
            .collect();
        assert!(
            extra.is_empty(),
            "{flags:?} {addr:#x}: also dirty {extra:x?}"
        );
    }
    assert_released(&gup);
}

#[test]
fn read_pins_mark_nothing() {
    let gup = setup();
    let map = gup.memory_map();
    let root = map_all(&map);
    let space = AddressSpace::page_tables(ctx4(root));
    reset_bitmaps(&map);
    for (pt, addr, len, flags) in requests() {
        // TOUCH writes A bits into page tables (which marks them): leave
        // it out here, this checks the data pages and everything else.
        let flags = GupFlags::from_bits(flags.bits() & !TOUCH.bits()).unwrap();
        let s = if pt { space } else { AddressSpace::Physical };
        let p = gup.pin(&s, addr, len, flags).unwrap();
        assert!(p.pages() > 0 && !p.is_write());
        drop(p);
        let dirty = dirty_pages(&map);
        assert!(dirty.is_empty(), "{flags:?} {addr:#x}: dirty {dirty:x?}");
    }
    assert_released(&gup);
}

/// What one live handle added: its counter deltas and per-region refs.
struct Held {
    p: Pinned,
    d: GupCounters,
    refs: Vec<u64>,
}

fn refs(map: &MemoryMap) -> Vec<u64> {
    map.regions()
        .iter()
        .map(|r| r.frames().total_refs())
        .collect()
}

#[test]
fn every_release_undoes_its_request_and_all_ends_at_zero() {
    let gup = setup();
    let map = gup.memory_map();
    let root = map_all(&map);
    let space = AddressSpace::page_tables(ctx4(root));
    let cancelled = CancelToken::new();
    cancelled.cancel();
    let mut rng = Rng(7);
    let mut held: Vec<Held> = Vec::new();
    // Three rounds of every request, in every flavour (plus failures,
    // which must leave nothing behind), held together.
    for round in 0..3 {
        for (pt, addr, len, flags) in requests() {
            let s = if pt { space } else { AddressSpace::Physical };
            for extra in [GupFlags::NONE, WRITE, FORCE | WRITE] {
                let token = (round == 2).then_some(&cancelled);
                let before = (gup.stats(), refs(&map));
                match gup.pin_cancellable(&s, addr, len, flags | extra, token) {
                    Ok(p) => {
                        let after = (gup.stats(), refs(&map));
                        let d = delta(&before.0, &after.0);
                        let r = after.1.iter().zip(&before.1).map(|(a, b)| a - b).collect();
                        held.push(Held { p, d, refs: r });
                    }
                    Err(e) => {
                        assert_eq!(refs(&map), before.1, "{e:?} left references");
                        let d = delta(&before.0, &gup.stats());
                        assert_eq!(
                            (d.pins_outstanding, d.gets_outstanding, d.longterm_pages),
                            (0, 0, 0)
                        );
                    }
                }
            }
        }
    }
    assert!(held.len() > 60, "{}", held.len());
    let s = gup.stats();
    assert!(s.pins_outstanding > 0 && s.gets_outstanding > 0 && s.longterm_pages > 0);
    // Release in random order: each drop takes back exactly its own.
    while !held.is_empty() {
        let h = held.swap_remove(rng.below(held.len() as u64) as usize);
        let before = (gup.stats(), refs(&map));
        let lt = gup.longterm_pages();
        drop(h.p);
        let after = (gup.stats(), refs(&map));
        let d = delta(&after.0, &before.0);
        assert_eq!(d.pins_outstanding, h.d.pins_outstanding);
        assert_eq!(d.gets_outstanding, h.d.gets_outstanding);
        assert_eq!(d.longterm_pages, h.d.longterm_pages);
        assert_eq!(lt - gup.longterm_pages(), h.d.longterm_pages as u64);
        let r: Vec<u64> = before.1.iter().zip(&after.1).map(|(b, a)| b - a).collect();
        assert_eq!(r, h.refs);
    }
    assert_released(&gup);
}
