// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Reserved bits per level and per MAXPHYADDR (SDM 4.4.2, 4.5.4), tables
//! outside guest RAM, and self-referencing tables.

mod common;

use common::*;
use guest_mm::paging::context::CR4_PAE;
use guest_mm::paging::{translate, Access, FaultReason, PageSize, PagingContext, PagingMode};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const SR: Access = Access::supervisor_read();
const UW: Access = Access::user_write();

const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// 4-level (or 5-level) tables with a 4K leaf, a 2M leaf and a 1G leaf.
struct Long {
    mem: GuestMemoryMmap,
    root: u64,
    v4k: u64,
    p4k: Path,
    v2m: u64,
    p2m: Path,
    v1g: u64,
    p1g: Path,
}

fn long(mode: PagingMode) -> Long {
    let mem = ram();
    let mut b = Builder::new(&mem, mode);
    let v4k = 0x0000_0012_3456_7000;
    let v2m = 0x0000_0022_0040_0000;
    let v1g = 0x0000_0031_c000_0000;
    let p4k = b.map(v4k, 0x0000_0000_0055_5000, 1, RW | US);
    let p2m = b.map(v2m, 0x0000_0000_0060_0000, 2, RW | US);
    let p1g = b.map(v1g, 0x0000_0000_4000_0000, 3, RW | US);
    let root = b.root;
    Long {
        mem,
        root,
        v4k,
        p4k,
        v2m,
        p2m,
        v1g,
        p1g,
    }
}

fn ctx_for(mode: PagingMode, root: u64) -> PagingContext {
    match mode {
        PagingMode::Level4 => ctx4(root),
        _ => ctx5(root),
    }
}

/// Set `bit` in the entry at `at`, run `f`, restore.
fn with_bit<T>(mem: &GuestMemoryMmap, at: u64, bit: u32, f: impl FnOnce() -> T) -> T {
    let e = r64(mem, at);
    w64(mem, at, e | 1 << bit);
    let r = f();
    w64(mem, at, e);
    r
}

#[test]
fn maxphyaddr_boundary_every_level() {
    for mode in [PagingMode::Level4, PagingMode::Level5] {
        let l = long(mode);
        for m in [36u8, 39, 40, 46, 48, 51] {
            let ctx = ctx_for(mode, l.root).with_maxphyaddr(m);
            let m = u32::from(m);
            for level in 1..=mode.levels() {
                let at = l.p4k.at(level);
                // A bit at MAXPHYADDR (and up to 51) is reserved.
                for bit in [m, 51] {
                    let got = with_bit(&l.mem, at, bit, || translate(&l.mem, &ctx, l.v4k, UW));
                    assert_eq!(
                        got.unwrap_err(),
                        pf(
                            l.v4k,
                            EC_P | EC_W | EC_U | EC_RSVD,
                            level,
                            FaultReason::ReservedBit
                        ),
                        "{mode:?} M={m} level {level} bit {bit}"
                    );
                }
                // The bit just below is an address bit: a table pointer now
                // leads out of RAM, a leaf maps a high page.
                let got = with_bit(&l.mem, at, m - 1, || translate(&l.mem, &ctx, l.v4k, UW));
                if level == 1 {
                    let t = got.unwrap();
                    assert_eq!(t.gpa, 0x55_5000 | 1 << (m - 1), "{mode:?} M={m}");
                } else {
                    assert_eq!(
                        got.unwrap_err(),
                        pf(l.v4k, EC_W | EC_U, level - 1, FaultReason::TableOutsideRam),
                        "{mode:?} M={m} level {level}"
                    );
                }
                // Bits 62:52 are ignored (or the protection key, off here).
                for bit in [52u32, 58, 62] {
                    let got = with_bit(&l.mem, at, bit, || translate(&l.mem, &ctx, l.v4k, UW));
                    assert_eq!(
                        got.unwrap().gpa,
                        0x55_5000,
                        "{mode:?} level {level} bit {bit}"
                    );
                }
            }
            // The same for the 2M and 1G leaves.
            let two = l.p2m.at(2);
            let got = with_bit(&l.mem, two, m, || translate(&l.mem, &ctx, l.v2m, SR));
            assert_eq!(
                got.unwrap_err(),
                pf(l.v2m, EC_P | EC_RSVD, 2, FaultReason::ReservedBit)
            );
            let got = with_bit(&l.mem, two, m - 1, || translate(&l.mem, &ctx, l.v2m, SR));
            assert_eq!(got.unwrap().gpa, 0x60_0000 | 1 << (m - 1));
            let one = l.p1g.at(3);
            let got = with_bit(&l.mem, one, m, || translate(&l.mem, &ctx, l.v1g, SR));
            assert_eq!(
                got.unwrap_err(),
                pf(l.v1g, EC_P | EC_RSVD, 3, FaultReason::ReservedBit)
            );
            let got = with_bit(&l.mem, one, m - 1, || translate(&l.mem, &ctx, l.v1g, SR));
            assert_eq!(got.unwrap().gpa, 0x4000_0000 | 1 << (m - 1));
        }
        // MAXPHYADDR 52: bit 51 is an address bit.
        let ctx = ctx_for(mode, l.root);
        let got = with_bit(&l.mem, l.p4k.at(1), 51, || {
            translate(&l.mem, &ctx, l.v4k, SR)
        });
        assert_eq!(got.unwrap().gpa, 0x55_5000 | 1 << 51);
    }
}

#[test]
fn large_page_low_reserved_bits() {
    for mode in [PagingMode::Level4, PagingMode::Level5] {
        let l = long(mode);
        let ctx = ctx_for(mode, l.root);
        // 2M PDE: bits 20:13 reserved, 12 is PAT, 23 is an address bit.
        for bit in 13..=20 {
            let got = with_bit(&l.mem, l.p2m.at(2), bit, || {
                translate(&l.mem, &ctx, l.v2m, UW)
            });
            assert_eq!(
                got.unwrap_err(),
                pf(
                    l.v2m,
                    EC_P | EC_W | EC_U | EC_RSVD,
                    2,
                    FaultReason::ReservedBit
                ),
                "2M bit {bit}"
            );
        }
        let got = with_bit(&l.mem, l.p2m.at(2), 12, || {
            translate(&l.mem, &ctx, l.v2m | 0x1234, SR)
        });
        assert_eq!(got.unwrap().gpa, 0x60_1234);
        let got = with_bit(&l.mem, l.p2m.at(2), 23, || {
            translate(&l.mem, &ctx, l.v2m | 0x1234, SR)
        });
        assert_eq!(got.unwrap().gpa, 0xe0_1234);
        // 1G PDPTE: bits 29:13 reserved, 12 is PAT, 31 is an address bit.
        for bit in 13..=29 {
            let got = with_bit(&l.mem, l.p1g.at(3), bit, || {
                translate(&l.mem, &ctx, l.v1g, SR)
            });
            assert_eq!(
                got.unwrap_err(),
                pf(l.v1g, EC_P | EC_RSVD, 3, FaultReason::ReservedBit),
                "1G bit {bit}"
            );
        }
        let got = with_bit(&l.mem, l.p1g.at(3), 12, || {
            translate(&l.mem, &ctx, l.v1g | 0x1234, SR)
        });
        assert_eq!(got.unwrap().gpa, 0x4000_1234);
        let got = with_bit(&l.mem, l.p1g.at(3), 31, || {
            translate(&l.mem, &ctx, l.v1g | 0x1234, SR)
        });
        assert_eq!(got.unwrap().gpa, 0xc000_1234);
        // In a PDE or PDPTE that points to a table, bits 20:13 are address
        // bits: the table moves (here: to zeroed RAM above the tables).
        let pt = r64(&l.mem, l.p4k.at(2)) & 0xf_ffff_ffff_f000;
        assert_eq!(pt & (1 << 19), 0);
        let got = with_bit(&l.mem, l.p4k.at(2), 19, || {
            translate(&l.mem, &ctx, l.v4k, SR)
        });
        assert_eq!(got.unwrap_err(), pf(l.v4k, 0, 1, FaultReason::NotPresent));
    }
}

#[test]
fn ps_reserved_in_pml4e_and_pml5e() {
    for mode in [PagingMode::Level4, PagingMode::Level5] {
        let l = long(mode);
        let ctx = ctx_for(mode, l.root);
        for level in 4..=mode.levels() {
            let got = with_bit(&l.mem, l.p4k.at(level), 7, || {
                translate(&l.mem, &ctx, l.v4k, UW)
            });
            assert_eq!(
                got.unwrap_err(),
                pf(
                    l.v4k,
                    EC_P | EC_W | EC_U | EC_RSVD,
                    level,
                    FaultReason::ReservedBit
                ),
                "{mode:?} level {level}"
            );
        }
        // PS in a PTE is PAT: not reserved, not a size.
        let got = with_bit(&l.mem, l.p4k.at(1), 7, || {
            translate(&l.mem, &ctx, l.v4k, UW)
        });
        let t = got.unwrap();
        assert_eq!((t.gpa, t.page_size), (0x55_5000, PageSize::Size4K));
    }
}

#[test]
fn reserved_checks_follow_the_walk_order() {
    let l = long(PagingMode::Level4);
    let ctx = ctx4(l.root).with_maxphyaddr(40);
    // Reserved bits in a non-present entry are ignored.
    let pte = l.p4k.at(1);
    w64(&l.mem, pte, 1 << 45 | XD | 0x55_5000);
    assert_eq!(
        translate(&l.mem, &ctx, l.v4k, SR).unwrap_err(),
        pf(l.v4k, 0, 1, FaultReason::NotPresent)
    );
    // A reserved bit higher up wins over a non-present entry lower down.
    let pdpte = r64(&l.mem, l.p4k.at(3));
    w64(&l.mem, l.p4k.at(3), pdpte | 1 << 45);
    assert_eq!(
        translate(&l.mem, &ctx, l.v4k, SR).unwrap_err(),
        pf(l.v4k, EC_P | EC_RSVD, 3, FaultReason::ReservedBit)
    );
    // ... and over a permission problem at the leaf.
    w64(&l.mem, pte, 0x55_5000 | P);
    assert_eq!(
        translate(&l.mem, &ctx, l.v4k, UW).unwrap_err(),
        pf(
            l.v4k,
            EC_P | EC_W | EC_U | EC_RSVD,
            3,
            FaultReason::ReservedBit
        )
    );
}

#[test]
fn pae_reserved_bits() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Pae);
    let v = 0x8060_1000u64;
    let p = b.map(v, 0x7000, 1, RW | US);
    let v2 = 0x40a0_0000u64;
    let p2 = b.map(v2, 0x20_0000, 2, RW | US);
    let ctx = ctx_pae(b.root).with_maxphyaddr(36);
    for level in [1u8, 2] {
        // 62:M reserved (no ignored high bits in PAE paging).
        for bit in [36u32, 51, 52, 58, 59, 62] {
            let got = with_bit(&mem, p.at(level), bit, || translate(&mem, &ctx, v, UW));
            assert_eq!(
                got.unwrap_err(),
                pf(
                    v,
                    EC_P | EC_W | EC_U | EC_RSVD,
                    level,
                    FaultReason::ReservedBit
                ),
                "level {level} bit {bit}"
            );
        }
    }
    let got = with_bit(&mem, p.at(1), 35, || translate(&mem, &ctx, v, SR));
    assert_eq!(got.unwrap().gpa, 0x8_0000_7000);
    for bit in 13..=20 {
        let got = with_bit(&mem, p2.at(2), bit, || translate(&mem, &ctx, v2, SR));
        assert_eq!(
            got.unwrap_err(),
            pf(v2, EC_P | EC_RSVD, 2, FaultReason::ReservedBit),
            "2M bit {bit}"
        );
    }
    let t = translate(&mem, &ctx, v2 | 0x5678, SR).unwrap();
    assert_eq!((t.gpa, t.page_size), (0x20_5678, PageSize::Size2M));
}

#[test]
fn tables_outside_ram() {
    let l = long(PagingMode::Level4);
    // The root itself outside RAM.
    let ctx = ctx4(0x1_0000_0000);
    assert_eq!(
        translate(&l.mem, &ctx, l.v4k, UW).unwrap_err(),
        pf(l.v4k, EC_W | EC_U, 4, FaultReason::TableOutsideRam)
    );
    let ctx = ctx4(l.root);
    // Each table pointer in turn pointing just past the end of RAM.
    for level in 2..=4u8 {
        let at = l.p4k.at(level);
        let e = r64(&l.mem, at);
        w64(&l.mem, at, (e & 0xfff) | RAM);
        assert_eq!(
            translate(&l.mem, &ctx, l.v4k, SR).unwrap_err(),
            pf(l.v4k, 0, level - 1, FaultReason::TableOutsideRam),
            "pointer at level {level}"
        );
        w64(&l.mem, at, e);
    }
    // 32-bit paging: a page table outside RAM.
    let mem = ram();
    let b = Builder::new(&mem, PagingMode::Bits32);
    w32(&mem, b.root, (0xfff0_0000 | P | RW) as u32);
    assert_eq!(
        translate(&mem, &ctx32(b.root, false), 0x2000, SR).unwrap_err(),
        pf(0x2000, 0, 1, FaultReason::TableOutsideRam)
    );
    // A data page outside RAM is not the walker's business: it translates.
    let mut b = Builder::new(&mem, PagingMode::Level4);
    b.map(0x5000, ADDR, 1, RW);
    assert_eq!(
        translate(&mem, &ctx4(b.root), 0x5fff, SR).unwrap().gpa,
        ADDR | 0xfff
    );
}

#[test]
fn table_in_a_hole_between_regions_and_half_a_table() {
    // RAM [0, 4 MiB) and [8 MiB, 12 MiB); the PDPT is placed in the hole.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 4 << 20),
        (GuestAddress(8 << 20), 4 << 20),
    ])
    .unwrap();
    let mut b = Builder::new(&mem, PagingMode::Level4);
    let p = b.map(0x1000, 0x2000, 1, RW);
    let ctx = ctx4(b.root);
    assert_eq!(translate(&mem, &ctx, 0x1000, SR).unwrap().gpa, 0x2000);
    let pd = r64(&mem, p.at(3)) & 0xf_ffff_ffff_f000;
    w64(&mem, p.at(4), (6 << 20) | P | RW);
    assert_eq!(
        translate(&mem, &ctx, 0x1000, SR).unwrap_err(),
        pf(0x1000, 0, 3, FaultReason::TableOutsideRam)
    );
    // A PDPT in the second region works.
    let pdpt = 9 << 20;
    w64(&mem, pdpt, pd | P | RW);
    w64(&mem, p.at(4), pdpt | P | RW);
    assert_eq!(translate(&mem, &ctx, 0x1000, SR).unwrap().gpa, 0x2000);

    // A region ending in the middle of a page table: entries in the first
    // half are read, the rest are outside RAM.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1800)]);
    let mem = mem.expect("vm-memory accepts a region of 6 KiB");
    // 32-bit paging, page directory at 0x1000: PDE 0..=511 in RAM.
    w32(&mem, 0x1000 + 511 * 4, (0x0040_0000 | P | PS) as u32);
    let c = ctx32(0x1000, true);
    assert_eq!(translate(&mem, &c, 511 << 22, SR).unwrap().gpa, 0x0040_0000);
    assert_eq!(
        translate(&mem, &c, 512 << 22, SR).unwrap_err(),
        pf(512 << 22, 0, 2, FaultReason::TableOutsideRam)
    );
}

#[test]
fn self_referencing_tables_are_walked_like_the_cpu() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Level4);
    let p = b.map(0x0000_0080_8060_3000, 0x7000, 1, RW | US);
    let root = b.root;
    // The recursive slot: PML4E 511 points at the PML4.
    w64(&mem, root + 511 * 8, root | P | RW);
    let ctx = ctx4(root);
    // All indices 511: four times through the PML4, the 4K page is the PML4.
    let t = translate(&mem, &ctx, 0xffff_ffff_ffff_f008, SR).unwrap();
    assert_eq!(t.gpa, root | 8);
    assert_eq!(t.page_size, PageSize::Size4K);
    assert_eq!(t.leaf.gpa, Some(root + 511 * 8));
    assert_eq!(t.leaf.level, 1);
    assert!(!t.perms.user);
    // Indices (511, i4, i3, i2): the page is the page table of
    // (i4, i3, i2), reached in exactly four steps.
    let (i4, i3, i2) = (1u64, 2u64, 3u64);
    assert_eq!(0x0000_0080_8060_3000u64 >> 30 & 511, i3);
    assert_eq!(0x0000_0080_8060_3000u64 >> 21 & 511, i2);
    assert_eq!(0x0000_0080_8060_3000u64 >> 39 & 511, i4);
    let va = 0xffff_0000_0000_0000 | 511 << 39 | i4 << 30 | i3 << 21 | i2 << 12;
    let t = translate(&mem, &ctx, va, SR).unwrap();
    let pt = r64(&mem, p.at(2)) & 0xf_ffff_ffff_f000;
    assert_eq!(t.gpa, pt);
    assert_eq!(t.leaf.gpa, Some(p.at(2)));
    // With PS in the looping entry, it is a reserved-bit fault at level 4.
    w64(&mem, root + 511 * 8, root | P | RW | PS);
    assert_eq!(
        translate(&mem, &ctx, va, SR).unwrap_err(),
        pf(va, EC_P | EC_RSVD, 4, FaultReason::ReservedBit)
    );
    // 32-bit paging: PDE 0 points at the page directory itself.
    let b = Builder::new(&mem, PagingMode::Bits32);
    w32(&mem, b.root, (b.root | P | RW | US) as u32);
    let t = translate(&mem, &ctx32(b.root, true), 0x0000_0123, UW).unwrap();
    assert_eq!(t.gpa, b.root | 0x123);
    assert_eq!(t.leaf.gpa, Some(b.root));
    // PAE: a PDE pointing at its own page directory.
    let mem = ram();
    let b = Builder::new(&mem, PagingMode::Pae);
    let pd = b.root + 0x1000;
    w64(&mem, b.root, pd | P);
    w64(&mem, pd + 8, pd | P | RW);
    let c = PagingContext::new(guest_mm::paging::context::CR0_PG, b.root, CR4_PAE, 0);
    let t = translate(&mem, &c, 0x0020_1010, SR).unwrap();
    assert_eq!(t.gpa, pd | 0x10);
}
