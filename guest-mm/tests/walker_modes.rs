// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every paging mode and leaf size (SDM 4.3, 4.4, 4.5): exact gpa, page size,
//! permissions and leaf entry; the mode-specific address-width checks.

mod common;

use common::*;
use guest_mm::paging::context::{CR0_PG, CR0_WP, CR4_LA57, CR4_PAE};
use guest_mm::paging::{
    translate, Access, AccessKind, CpuFeatures, FaultReason, LeafEntry, PageSize, PagingContext,
    PagingMode, Permissions, Privilege, Translation,
};

const SR: Access = Access::supervisor_read();
const SW: Access = Access::supervisor_write();
const UR: Access = Access::user_read();
const UW: Access = Access::user_write();

fn perms(writable: bool, user: bool, executable: bool) -> Permissions {
    Permissions {
        writable,
        user,
        executable,
        pkey: None,
    }
}

fn leaf(gpa: u64, level: u8, width: u8, value: u64) -> LeafEntry {
    LeafEntry {
        gpa: Some(gpa),
        level,
        width,
        value,
    }
}

#[test]
fn no_paging_is_identity_below_4g() {
    let mem = ram();
    let ctx = PagingContext::new(0, 0x1000, 0, 0);
    assert_eq!(ctx.mode(), PagingMode::None);
    for (va, access) in [
        (0u64, SR),
        (0x1234_5678, UW),
        (0xffff_ffff, Access::new(AccessKind::Fetch, Privilege::User)),
    ] {
        let t = translate(&mem, &ctx, va, access).unwrap();
        assert_eq!(
            t,
            Translation {
                gpa: va,
                page_size: PageSize::Size4K,
                perms: Permissions::ALL,
                leaf: LeafEntry {
                    gpa: None,
                    level: 0,
                    width: 0,
                    value: 0
                },
            }
        );
    }
    assert_eq!(
        translate(&mem, &ctx, 1 << 32, SR).unwrap_err(),
        gp(1 << 32, 0, FaultReason::AddressTooWide)
    );
}

#[test]
fn bits32_4k() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Bits32);
    let va = 0x0040_3123u64;
    let path = b.map(va, 0x0077_7000, 1, RW | US);
    let ctx = ctx32(b.root, false);
    assert_eq!(ctx.mode(), PagingMode::Bits32);
    // PDE index 1 (bits 31:22), PTE index 3 (bits 21:12), 4-byte entries.
    assert_eq!(path.at(2), b.root + 4);
    let pt = u64::from(r32(&mem, b.root + 4)) & 0xffff_f000;
    assert_eq!(path.at(1), pt + 3 * 4);
    let t = translate(&mem, &ctx, va, UW).unwrap();
    assert_eq!(
        t,
        Translation {
            gpa: 0x0077_7123,
            page_size: PageSize::Size4K,
            perms: perms(true, true, true),
            leaf: leaf(pt + 12, 1, 4, 0x0077_7000 | P | RW | US),
        }
    );
    // Beyond 32 bits there are no linear addresses.
    assert_eq!(
        translate(&mem, &ctx, 0x1_0040_3123, SR).unwrap_err(),
        gp(0x1_0040_3123, 0, FaultReason::AddressTooWide)
    );
}

#[test]
fn bits32_4m_with_pse() {
    let mem = ram();
    let b = Builder::new(&mem, PagingMode::Bits32);
    // PDE 2 (va 0x0080_0000) maps a 4 MiB page at 0x0c00_0000.
    w32(&mem, b.root + 2 * 4, 0x0c00_0000 | (P | RW | PS) as u32);
    let ctx = ctx32(b.root, true);
    let t = translate(&mem, &ctx, 0x0081_2345, SW).unwrap();
    assert_eq!(
        t,
        Translation {
            gpa: 0x0c01_2345,
            page_size: PageSize::Size4M,
            perms: perms(true, false, true),
            leaf: leaf(b.root + 8, 2, 4, 0x0c00_0000 | P | RW | PS),
        }
    );
    // The last byte of the 4 MiB page.
    assert_eq!(
        translate(&mem, &ctx, 0x00bf_ffff, SR).unwrap().gpa,
        0x0c3f_ffff
    );
}

#[test]
fn bits32_4m_pse36_high_bits() {
    let mem = ram();
    let b = Builder::new(&mem, PagingMode::Bits32);
    let va = 0x0080_0000u64 + 0x2_1234;
    let pde = b.root + 8;
    let ctx = |m: u8| ctx32(b.root, true).with_maxphyaddr(m);
    let set = |v: u32| w32(&mem, pde, v);
    let flags = (P | RW | PS) as u32;

    // MAXPHYADDR 40 (and anything above: M = min(MAXPHYADDR, 40)): PDE bits
    // 20:13 hold physical bits 39:32, bit 21 is reserved.
    set(0x0040_0000 | 0x12 << 13 | flags);
    for m in [40, 46, 52] {
        let t = translate(&mem, &ctx(m), va, SR).unwrap();
        assert_eq!(t.gpa, 0x12_0040_0000 + 0x2_1234, "MAXPHYADDR {m}");
        assert_eq!(t.page_size, PageSize::Size4M);
    }
    set(0x0040_0000 | 0x80 << 13 | flags); // physical bit 39
    assert_eq!(
        translate(&mem, &ctx(48), va, SR).unwrap().gpa,
        0x80_0040_0000 + 0x2_1234
    );
    set(0x0040_0000 | 1 << 21 | flags);
    for m in [40, 48, 52] {
        assert_eq!(
            translate(&mem, &ctx(m), va, SR).unwrap_err(),
            pf(va, EC_P | EC_RSVD, 2, FaultReason::ReservedBit),
            "bit 21 with MAXPHYADDR {m}"
        );
    }

    // MAXPHYADDR 36: bits 16:13 hold physical bits 35:32; 21:17 reserved.
    set(0x0040_0000 | 1 << 16 | flags);
    assert_eq!(
        translate(&mem, &ctx(36), va, SR).unwrap().gpa,
        0x8_0040_0000 + 0x2_1234
    );
    for bit in 17..=21 {
        set(0x0040_0000 | 1 << bit | flags);
        assert_eq!(
            translate(&mem, &ctx(36), va, UR).unwrap_err(),
            pf(va, EC_P | EC_RSVD | EC_U, 2, FaultReason::ReservedBit),
            "bit {bit} with MAXPHYADDR 36"
        );
    }
    // With MAXPHYADDR 37, bit 17 is an address bit (physical bit 36).
    set(0x0040_0000 | 1 << 17 | flags);
    assert_eq!(
        translate(&mem, &ctx(37), va, SR).unwrap().gpa,
        0x10_0040_0000 + 0x2_1234
    );
    assert!(translate(&mem, &ctx(37), va, SR).is_ok());
    set(0x0040_0000 | 1 << 18 | flags);
    assert_eq!(
        translate(&mem, &ctx(37), va, SR).unwrap_err().reason,
        FaultReason::ReservedBit
    );

    // MAXPHYADDR 32: bits 21:13 are all reserved.
    for bit in 13..=21 {
        set(0x0040_0000 | 1 << bit | flags);
        assert_eq!(
            translate(&mem, &ctx(32), va, SW).unwrap_err(),
            pf(va, EC_P | EC_RSVD | EC_W, 2, FaultReason::ReservedBit),
            "bit {bit} with MAXPHYADDR 32"
        );
    }

    // Without PSE-36 the physical address is 32 bits: 21:13 reserved.
    set(0x0040_0000 | 1 << 13 | flags);
    let no36 = ctx(52).with_features(CpuFeatures {
        gbpages: true,
        pse36: false,
    });
    assert_eq!(
        translate(&mem, &no36, va, SR).unwrap_err(),
        pf(va, EC_P | EC_RSVD, 2, FaultReason::ReservedBit)
    );
    // Bit 12 (PAT) is not an address bit.
    set(0x0040_0000 | 1 << 12 | flags);
    assert_eq!(
        translate(&mem, &ctx(40), va, SR).unwrap().gpa,
        0x0040_0000 + 0x2_1234
    );
}

#[test]
fn bits32_ps_ignored_without_pse() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Bits32);
    let va = 0x0080_5abc;
    let pt = b.alloc();
    // PS set in a PDE whose bits 31:12 name a page table.
    w32(&mem, b.root + 8, (pt | P | RW | US | PS) as u32);
    w32(&mem, pt + 5 * 4, (0x0033_3000 | P | RW | US) as u32);
    let without = translate(&mem, &ctx32(b.root, false), va, UR).unwrap();
    assert_eq!(
        without,
        Translation {
            gpa: 0x0033_3abc,
            page_size: PageSize::Size4K,
            perms: perms(true, true, true),
            leaf: leaf(pt + 20, 1, 4, 0x0033_3000 | P | RW | US),
        }
    );
    // With CR4.PSE the same PDE is a 4 MiB leaf: bits 31:22 of `pt` are 0,
    // bit 20 of `pt` (0x10_1000) is physical bit 39 (PSE-36, M = 40) and
    // bit 12 is PAT.
    assert_eq!(pt, 0x10_1000);
    let with = translate(&mem, &ctx32(b.root, true), va, UR).unwrap();
    assert_eq!(with.page_size, PageSize::Size4M);
    assert_eq!(with.gpa, 0x80_0000_0000 + (va & 0x3f_ffff));
    assert_eq!(with.leaf.level, 2);
}

#[test]
fn bits32_has_no_xd_and_ignores_nxe() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Bits32);
    b.map(0x1000, 0x5000, 1, RW);
    // EFER.NXE set: 32-bit paging still has no XD bit and no I/D in the
    // error code without SMEP.
    let ctx = PagingContext::new(CR0_PG | CR0_WP, b.root, 0, common::EFER_LONG & !(1 << 10));
    let fetch = Access::new(AccessKind::Fetch, Privilege::Supervisor);
    let t = translate(&mem, &ctx, 0x1000, fetch).unwrap();
    assert!(t.perms.executable);
    let ufetch = Access::new(AccessKind::Fetch, Privilege::User);
    assert_eq!(
        translate(&mem, &ctx, 0x1000, ufetch).unwrap_err(),
        pf(
            0x1000,
            EC_P | EC_U,
            1,
            FaultReason::UserAccessToSupervisorPage
        )
    );
}

#[test]
fn pae_4k_and_2m_from_memory() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Pae);
    let p4 = b.map(0xc012_3000, 0x1_2345_6000, 1, RW | US);
    let p2 = b.map(0x4020_0000, 0x2_0060_0000, 2, RW);
    let ctx = ctx_pae(b.root);
    assert_eq!(ctx.mode(), PagingMode::Pae);
    // PDPTE 3, PDE 0 (bits 29:21 of 0xc012_3456 = 0), PTE 0x123.
    assert_eq!(p4.at(3), b.root + 3 * 8);
    let pd = r64(&mem, b.root + 24) & 0xffff_f000;
    assert_eq!(p4.at(2), pd);
    let pt = r64(&mem, pd) & 0xffff_f000;
    assert_eq!(
        translate(&mem, &ctx, 0xc012_3456, UW).unwrap(),
        Translation {
            gpa: 0x1_2345_6456,
            page_size: PageSize::Size4K,
            perms: perms(true, true, true),
            leaf: leaf(pt + 0x123 * 8, 1, 8, 0x1_2345_6000 | P | RW | US),
        }
    );
    // PDPTE 1, PDE 1.
    let pd1 = r64(&mem, b.root + 8) & 0xffff_f000;
    assert_eq!(p2.at(2), pd1 + 8);
    assert_eq!(
        translate(&mem, &ctx, 0x4021_2345, SW).unwrap(),
        Translation {
            gpa: 0x2_0061_2345,
            page_size: PageSize::Size2M,
            perms: perms(true, false, true),
            leaf: leaf(pd1 + 8, 2, 8, 0x2_0060_0000 | P | RW | PS),
        }
    );
    // A non-present PDPTE (index 0): #PF at level 3, P = 0.
    assert_eq!(
        translate(&mem, &ctx, 0x1000, UW).unwrap_err(),
        pf(0x1000, EC_W | EC_U, 3, FaultReason::NotPresent)
    );
    // Linear addresses are 32 bits.
    assert_eq!(
        translate(&mem, &ctx, 0x1_c012_3456, SR).unwrap_err(),
        gp(0x1_c012_3456, 0, FaultReason::AddressTooWide)
    );
}

#[test]
fn pae_pdpt_is_32_byte_aligned_in_cr3() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Pae);
    b.map(0x8000_0000, 0x7000, 1, RW);
    // Move the 4 PDPTEs to offset 0x60 of the root page; CR3 bits 31:5.
    for i in 0..4 {
        let e = r64(&mem, b.root + i * 8);
        w64(&mem, b.root + 0x60 + i * 8, e);
        w64(&mem, b.root + i * 8, 0);
    }
    let ctx = ctx_pae((b.root + 0x60) | 0x18); // PWT/PCD-style low bits ignored
    assert_eq!(translate(&mem, &ctx, 0x8000_0abc, SR).unwrap().gpa, 0x7abc);
}

#[test]
fn pae_pdpte_registers() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Pae);
    b.map(0x0000_5000, 0x0011_1000, 1, RW);
    // A second page directory the PDPTE registers point at, mapping va
    // 0x5000 elsewhere.
    let pd_reg = b.alloc();
    let pt_reg = b.alloc();
    w64(&mem, pd_reg, pt_reg | P | RW);
    w64(&mem, pt_reg + 5 * 8, 0x0022_2000 | P | RW);
    let ctx_mem = ctx_pae(b.root);
    assert_eq!(
        translate(&mem, &ctx_mem, 0x5678, SR).unwrap().gpa,
        0x0011_1678
    );
    let ctx_regs = ctx_mem.with_pdptes([pd_reg | P, 0, 0, 0]);
    let t = translate(&mem, &ctx_regs, 0x5678, SR).unwrap();
    assert_eq!(t.gpa, 0x0022_2678);
    assert_eq!(t.leaf, leaf(pt_reg + 40, 1, 8, 0x0022_2000 | P | RW));
    // The registers win even when the PDPT in memory is garbage.
    w64(&mem, b.root, 0xffff_ffff_ffff_ffff);
    assert_eq!(
        translate(&mem, &ctx_regs, 0x5678, SR).unwrap().gpa,
        0x0022_2678
    );
    assert_eq!(
        translate(&mem, &ctx_mem, 0x5678, SR).unwrap_err(),
        gp(0x5678, 3, FaultReason::InvalidPdpte)
    );
    // The registers also work with CR3 outside RAM.
    let far = PagingContext::new(CR0_PG | CR0_WP, 0xffff_f000, CR4_PAE, 0).with_pdptes([
        pd_reg | P,
        0,
        0,
        0,
    ]);
    assert_eq!(translate(&mem, &far, 0x5678, SR).unwrap().gpa, 0x0022_2678);
    // A non-present register PDPTE: #PF at level 3.
    let np = ctx_mem.with_pdptes([pd_reg | P, pd_reg, 0, 0]);
    assert_eq!(
        translate(&mem, &np, 0x4000_0000, UR).unwrap_err(),
        pf(0x4000_0000, EC_U, 3, FaultReason::NotPresent)
    );
}

#[test]
fn pae_pdpte_reserved_bits_are_gp() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Pae);
    b.map(0x4000_1000, 0x9000, 1, RW | US);
    let pd = r64(&mem, b.root + 8) & !0xfff;
    let ctx = ctx_pae(b.root).with_maxphyaddr(36);
    assert_eq!(translate(&mem, &ctx, 0x4000_1000, SR).unwrap().gpa, 0x9000);
    // Table 4-8: 2:1, 8:5 and 63:M are reserved; bits 4:3 (PWT/PCD), 11:9
    // and M-1:12 are not. XD (63) is reserved even with NXE.
    for bit in [1u32, 2, 5, 6, 7, 8, 36, 40, 51, 52, 62, 63] {
        w64(&mem, b.root + 8, pd | P | 1 << bit);
        assert_eq!(
            translate(&mem, &ctx, 0x4000_1000, UW).unwrap_err(),
            gp(0x4000_1000, 3, FaultReason::InvalidPdpte),
            "PDPTE bit {bit}"
        );
        // The same from the registers.
        let regs = ctx.with_pdptes([0, pd | P | 1 << bit, 0, 0]);
        assert_eq!(
            translate(&mem, &regs, 0x4000_1000, UW).unwrap_err(),
            gp(0x4000_1000, 3, FaultReason::InvalidPdpte),
            "register PDPTE bit {bit}"
        );
    }
    for bit in [3u32, 4, 9, 10, 11] {
        w64(&mem, b.root + 8, pd | P | 1 << bit);
        assert_eq!(
            translate(&mem, &ctx, 0x4000_1000, UW).unwrap().gpa,
            0x9000,
            "PDPTE bit {bit}"
        );
    }
    // Bit 35 is an address bit with MAXPHYADDR 36: the PD moves to a hole.
    w64(&mem, b.root + 8, pd | P | 1 << 35);
    assert_eq!(
        translate(&mem, &ctx, 0x4000_1000, UW).unwrap_err(),
        pf(0x4000_1000, EC_W | EC_U, 2, FaultReason::TableOutsideRam)
    );
}

#[test]
fn pae_pdpt_outside_ram() {
    let mem = ram();
    let ctx = ctx_pae(0x4000_0000);
    assert_eq!(
        translate(&mem, &ctx, 0x1234, SW).unwrap_err(),
        pf(0x1234, EC_W, 3, FaultReason::TableOutsideRam)
    );
}

#[test]
fn level4_4k_2m_1g() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Level4);
    let va4k = 0x0000_7f12_3456_7000u64;
    let p4k = b.map(va4k, 0x000a_bcde_f000, 1, RW | US);
    let p2m = b.map(0x0000_0040_0060_0000, 0x0000_0123_4560_0000, 2, US);
    let p1g = b.map(0xffff_8000_c000_0000, 0x000f_ffff_c000_0000, 3, RW);
    let ctx = ctx4(b.root);
    assert_eq!(ctx.mode(), PagingMode::Level4);
    // Index checks, independent of the builder: PML4 bits 47:39 etc.
    assert_eq!(p4k.at(4), b.root + ((va4k >> 39) & 511) * 8);
    assert_eq!(p1g.at(4), b.root + 256 * 8);

    assert_eq!(
        translate(&mem, &ctx, va4k | 0xabc, UW).unwrap(),
        Translation {
            gpa: 0x000a_bcde_fabc,
            page_size: PageSize::Size4K,
            perms: perms(true, true, true),
            leaf: leaf(p4k.at(1), 1, 8, 0x000a_bcde_f000 | P | RW | US),
        }
    );
    assert_eq!(
        translate(&mem, &ctx, 0x0000_0040_007f_fff0, UR).unwrap(),
        Translation {
            gpa: 0x0000_0123_457f_fff0,
            page_size: PageSize::Size2M,
            perms: perms(false, true, true),
            leaf: leaf(p2m.at(2), 2, 8, 0x0000_0123_4560_0000 | P | US | PS),
        }
    );
    assert_eq!(
        translate(&mem, &ctx, 0xffff_8000_c123_4567, SW).unwrap(),
        Translation {
            gpa: 0x000f_ffff_c123_4567,
            page_size: PageSize::Size1G,
            perms: perms(true, false, true),
            leaf: leaf(p1g.at(3), 3, 8, 0x000f_ffff_c000_0000 | P | RW | PS),
        }
    );
    // Without 1-GByte page support, PS in a PDPTE is reserved.
    let no1g = ctx.with_features(CpuFeatures {
        gbpages: false,
        pse36: true,
    });
    assert_eq!(
        translate(&mem, &no1g, 0xffff_8000_c123_4567, SR).unwrap_err(),
        pf(
            0xffff_8000_c123_4567,
            EC_P | EC_RSVD,
            3,
            FaultReason::ReservedBit
        )
    );
    // ... and 2M/4K mappings are unaffected.
    assert!(translate(&mem, &no1g, va4k, SR).is_ok());
    assert!(translate(&mem, &no1g, 0x0000_0040_0060_0000, SR).is_ok());
    // Unmapped: not present at the first missing level.
    assert_eq!(
        translate(&mem, &ctx, 0x0000_0040_0080_0000, UR).unwrap_err(),
        pf(0x0000_0040_0080_0000, EC_U, 2, FaultReason::NotPresent)
    );
    assert_eq!(
        translate(&mem, &ctx, 0x0000_0001_0000_0000, SR).unwrap_err(),
        pf(0x0000_0001_0000_0000, 0, 3, FaultReason::NotPresent)
    );
    assert_eq!(
        translate(&mem, &ctx, 0xffff_ff80_0000_0000, SR).unwrap_err(),
        pf(0xffff_ff80_0000_0000, 0, 4, FaultReason::NotPresent)
    );
}

#[test]
fn level4_canonical() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Level4);
    b.map(0x0000_7fff_ffff_f000, 0x3000, 1, RW);
    b.map(0xffff_8000_0000_0000, 0x4000, 1, RW);
    let ctx = ctx4(b.root);
    assert_eq!(
        translate(&mem, &ctx, 0x0000_7fff_ffff_ffff, SR)
            .unwrap()
            .gpa,
        0x3fff
    );
    assert_eq!(
        translate(&mem, &ctx, 0xffff_8000_0000_0000, SR)
            .unwrap()
            .gpa,
        0x4000
    );
    for va in [
        0x0000_8000_0000_0000u64,
        0xffff_7fff_ffff_ffff,
        0x0001_0000_0000_0000,
        0x8000_0000_0000_0000,
        0x7fff_ffff_ffff_ffff,
        0x00ff_ffff_ffff_f000,
    ] {
        assert_eq!(
            translate(&mem, &ctx, va, UW).unwrap_err(),
            gp(va, 0, FaultReason::NonCanonical),
            "{va:#x}"
        );
    }
}

#[test]
fn level5_4k_2m_1g_and_canonical() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Level5);
    let va4k = 0x00ff_1234_5678_9000u64;
    let p4k = b.map(va4k, 0x0007_7777_7000, 1, RW | US);
    let p2m = b.map(0x0001_0000_0020_0000, 0x0000_0044_0020_0000, 2, RW | US);
    let p1g = b.map(0xff00_0000_4000_0000, 0x0000_0080_4000_0000, 3, RW);
    // Canonical in 5-level paging, not in 4-level.
    let p47 = b.map(0x0000_8000_0000_0000, 0x5000, 1, RW);
    let ctx = ctx5(b.root);
    assert_eq!(ctx.mode(), PagingMode::Level5);
    // PML5 index = bits 56:48.
    assert_eq!(p4k.at(5), b.root + 0xff * 8);
    assert_eq!(p1g.at(5), b.root + 0x100 * 8);
    assert_eq!(
        translate(&mem, &ctx, va4k | 0x123, UW).unwrap(),
        Translation {
            gpa: 0x0007_7777_7123,
            page_size: PageSize::Size4K,
            perms: perms(true, true, true),
            leaf: leaf(p4k.at(1), 1, 8, 0x0007_7777_7000 | P | RW | US),
        }
    );
    assert_eq!(
        translate(&mem, &ctx, 0x0001_0000_0031_0000, UR).unwrap(),
        Translation {
            gpa: 0x0000_0044_0031_0000,
            page_size: PageSize::Size2M,
            perms: perms(true, true, true),
            leaf: leaf(p2m.at(2), 2, 8, 0x0000_0044_0020_0000 | P | RW | US | PS),
        }
    );
    assert_eq!(
        translate(&mem, &ctx, 0xff00_0000_7fff_ffff, SR).unwrap(),
        Translation {
            gpa: 0x0000_0080_7fff_ffff,
            page_size: PageSize::Size1G,
            perms: perms(true, false, true),
            leaf: leaf(p1g.at(3), 3, 8, 0x0000_0080_4000_0000 | P | RW | PS),
        }
    );
    assert_eq!(
        translate(&mem, &ctx, 0x0000_8000_0000_0042, SR).unwrap(),
        Translation {
            gpa: 0x5042,
            page_size: PageSize::Size4K,
            perms: perms(true, false, true),
            leaf: leaf(p47.at(1), 1, 8, 0x5000 | P | RW),
        }
    );
    // The same tables read as 4-level (root = the PML5): that address is
    // non-canonical there.
    let as4 = PagingContext::new(CR0_PG | CR0_WP, b.root, CR4_PAE, common::EFER_LONG);
    assert_eq!(
        translate(&mem, &as4, 0x0000_8000_0000_0042, SR).unwrap_err(),
        gp(0x0000_8000_0000_0042, 0, FaultReason::NonCanonical)
    );
    // 57-bit canonical form: bits 63:56 equal bit 56.
    for va in [
        0x0100_0000_0000_0000u64,
        0xfeff_ffff_ffff_ffff,
        0x8000_0000_0000_0000,
        0x7f00_0000_0000_0000,
    ] {
        assert_eq!(
            translate(&mem, &ctx, va, SR).unwrap_err(),
            gp(va, 0, FaultReason::NonCanonical),
            "{va:#x}"
        );
    }
    assert_eq!(
        translate(&mem, &ctx, 0xff80_0000_0000_0000, SR).unwrap_err(),
        pf(0xff80_0000_0000_0000, 0, 5, FaultReason::NotPresent)
    );
    // LA57 without long mode is PAE paging.
    let pae = PagingContext::new(CR0_PG, b.root, CR4_PAE | CR4_LA57, 0);
    assert_eq!(pae.mode(), PagingMode::Pae);
}
