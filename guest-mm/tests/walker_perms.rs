// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Access rights (SDM 4.6) and page-fault error codes (SDM 4.7): R/W with
//! CR0.WP, U/S, XD with EFER.NXE, SMEP, SMAP with RFLAGS.AC and implicit
//! accesses, protection keys (PKRU and PKRS), and the I/D bit rules.

mod common;

use common::*;
use guest_mm::paging::context::{
    CR0_PG, CR0_WP, CR4_PAE, CR4_PKE, CR4_PKS, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_LME, EFER_NXE,
    RFLAGS_AC,
};
use guest_mm::paging::{
    translate, Access, AccessKind, Fault, FaultReason, PagingContext, PagingMode, Privilege,
    Translation,
};
use vm_memory::GuestMemoryMmap;

const V: u64 = 0x0000_1234_5670_1000;
const PA: u64 = 0x0000_0000_0abc_d000;

const SR: Access = Access::supervisor_read();
const SW: Access = Access::supervisor_write();
const UR: Access = Access::user_read();
const UW: Access = Access::user_write();
const SF: Access = Access::new(AccessKind::Fetch, Privilege::Supervisor);
const UF: Access = Access::new(AccessKind::Fetch, Privilege::User);
const IR: Access = Access::new(AccessKind::Read, Privilege::ImplicitSupervisor);
const IW: Access = Access::new(AccessKind::Write, Privilege::ImplicitSupervisor);

/// 4-level tables mapping `V` -> `PA` with a 4K leaf of `leaf` flags; upper
/// levels P|RW|US.
fn setup(leaf: u64) -> (GuestMemoryMmap, u64, Path) {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Level4);
    let path = b.map(V, PA, 1, leaf);
    let root = b.root;
    (mem, root, path)
}

fn long(cr0: u64, root: u64, cr4: u64, efer: u64) -> PagingContext {
    PagingContext::new(
        CR0_PG | cr0,
        root,
        CR4_PAE | cr4,
        EFER_LME | EFER_LMA | efer,
    )
}

fn t(mem: &GuestMemoryMmap, ctx: &PagingContext, a: Access) -> Result<Translation, Fault> {
    translate(mem, ctx, V | 0x10, a)
}

fn pf1(code: u32, reason: FaultReason) -> Fault {
    pf(V | 0x10, code, 1, reason)
}

#[test]
fn read_write_and_cr0_wp() {
    let (mem, root, path) = setup(US); // read-only user page
    let wp = long(CR0_WP, root, 0, EFER_NXE);
    let nowp = long(0, root, 0, EFER_NXE);
    // User writes never pass R/W = 0.
    for ctx in [wp, nowp] {
        assert_eq!(
            t(&mem, &ctx, UW).unwrap_err(),
            pf1(EC_P | EC_W | EC_U, FaultReason::ReadOnly)
        );
        assert_eq!(t(&mem, &ctx, UR).unwrap().gpa, PA | 0x10);
    }
    // Supervisor writes pass R/W = 0 only with CR0.WP = 0.
    assert_eq!(
        t(&mem, &wp, SW).unwrap_err(),
        pf1(EC_P | EC_W, FaultReason::ReadOnly)
    );
    let ok = t(&mem, &nowp, SW).unwrap();
    assert_eq!(ok.gpa, PA | 0x10);
    assert!(!ok.perms.writable);

    // R/W = 0 in an upper level only: the translation is read-only too, the
    // fault is reported at the leaf.
    w64(&mem, path.at(1), PA | P | RW | US);
    assert!(t(&mem, &wp, UW).unwrap().perms.writable);
    let pdpte = r64(&mem, path.at(3));
    w64(&mem, path.at(3), pdpte & !RW);
    let tr = t(&mem, &nowp, SW).unwrap();
    assert!(!tr.perms.writable);
    assert_eq!(
        t(&mem, &wp, UW).unwrap_err(),
        pf1(EC_P | EC_W | EC_U, FaultReason::ReadOnly)
    );
    assert_eq!(
        t(&mem, &wp, SW).unwrap_err(),
        pf1(EC_P | EC_W, FaultReason::ReadOnly)
    );
}

#[test]
fn user_supervisor() {
    let (mem, root, path) = setup(RW);
    let ctx = long(CR0_WP, root, 0, EFER_NXE);
    for (a, code) in [
        (UR, EC_P | EC_U),
        (UW, EC_P | EC_W | EC_U),
        (UF, EC_P | EC_U | EC_ID),
    ] {
        assert_eq!(
            t(&mem, &ctx, a).unwrap_err(),
            pf1(code, FaultReason::UserAccessToSupervisorPage)
        );
    }
    for a in [SR, SW, SF] {
        let tr = t(&mem, &ctx, a).unwrap();
        assert!(!tr.perms.user);
    }
    // U/S = 0 only in the PML4E.
    w64(&mem, path.at(1), PA | P | RW | US);
    assert!(t(&mem, &ctx, UR).unwrap().perms.user);
    let pml4e = r64(&mem, path.at(4));
    w64(&mem, path.at(4), pml4e & !US);
    assert_eq!(
        t(&mem, &ctx, UR).unwrap_err(),
        pf1(EC_P | EC_U, FaultReason::UserAccessToSupervisorPage)
    );
    // Supervisor accesses to user pages are fine without SMAP/SMEP.
    w64(&mem, path.at(4), pml4e);
    for a in [SR, SW, SF] {
        assert!(t(&mem, &ctx, a).unwrap().perms.user);
    }
}

#[test]
fn execute_disable_with_nxe() {
    let (mem, root, path) = setup(RW | US);
    let ctx = long(CR0_WP, root, 0, EFER_NXE);
    for level in 1..=4u8 {
        let at = path.at(level);
        let e = r64(&mem, at);
        w64(&mem, at, e | XD);
        let tr = t(&mem, &ctx, UR).unwrap();
        assert!(!tr.perms.executable, "XD at level {level}");
        assert!(t(&mem, &ctx, SW).is_ok());
        assert_eq!(
            t(&mem, &ctx, UF).unwrap_err(),
            pf1(EC_P | EC_U | EC_ID, FaultReason::NoExecute),
            "XD at level {level}"
        );
        assert_eq!(
            t(&mem, &ctx, SF).unwrap_err(),
            pf1(EC_P | EC_ID, FaultReason::NoExecute),
            "XD at level {level}"
        );
        w64(&mem, at, e);
    }
    assert!(t(&mem, &ctx, UF).unwrap().perms.executable);
    assert!(t(&mem, &ctx, SF).is_ok());
}

#[test]
fn xd_bit_is_reserved_without_nxe_at_every_level() {
    // 4-level and 5-level: every level; PAE: PDE and PTE (a PAE PDPTE with
    // bit 63 is a #GP, tested with the PAE modes).
    for mode in [PagingMode::Level4, PagingMode::Level5, PagingMode::Pae] {
        let mem = ram();
        let mut b = Builder::new(&mem, mode);
        let va = 0x4000_3000u64;
        let path = b.map(va, PA, 1, RW | US);
        let ctx = match mode {
            PagingMode::Level4 => long(CR0_WP, b.root, 0, 0),
            PagingMode::Level5 => long(CR0_WP, b.root, guest_mm::paging::context::CR4_LA57, 0),
            _ => PagingContext::new(CR0_PG | CR0_WP, b.root, CR4_PAE, 0),
        };
        assert_eq!(ctx.mode(), mode);
        let levels: &[u8] = if mode == PagingMode::Pae {
            &[1, 2]
        } else if mode == PagingMode::Level5 {
            &[1, 2, 3, 4, 5]
        } else {
            &[1, 2, 3, 4]
        };
        for &level in levels {
            let at = path.at(level);
            let e = r64(&mem, at);
            w64(&mem, at, e | XD);
            // No I/D without NXE (and without SMEP).
            for (a, code) in [
                (UR, EC_P | EC_RSVD | EC_U),
                (SW, EC_P | EC_RSVD | EC_W),
                (UF, EC_P | EC_RSVD | EC_U),
            ] {
                assert_eq!(
                    translate(&mem, &ctx, va, a).unwrap_err(),
                    pf(va, code, level, FaultReason::ReservedBit),
                    "{mode:?} level {level}"
                );
            }
            // With SMEP, fetches report I/D even without NXE.
            let smep = PagingContext {
                cr4: ctx.cr4 | CR4_SMEP,
                ..ctx
            };
            assert_eq!(
                translate(&mem, &smep, va, SF).unwrap_err(),
                pf(va, EC_P | EC_RSVD | EC_ID, level, FaultReason::ReservedBit),
            );
            // With NXE it is the XD bit.
            let nxe = PagingContext {
                efer: ctx.efer | EFER_NXE,
                ..ctx
            };
            assert!(!translate(&mem, &nxe, va, UR).unwrap().perms.executable);
            w64(&mem, at, e);
        }
        assert!(translate(&mem, &ctx, va, UF).unwrap().perms.executable);
    }
}

#[test]
fn instruction_fetch_bit_rules() {
    // A fetch from a non-present page: the error code has I/D only with SMEP,
    // or with NXE in PAE/4-level/5-level paging.
    let mem = ram();
    let b32 = Builder::new(&mem, PagingMode::Bits32);
    let c32 = ctx32(b32.root, true);
    let np = 0x0080_0000u64;
    let cases: Vec<(PagingContext, bool)> = vec![
        (c32, false),
        (
            PagingContext::new(CR0_PG, b32.root, 0, EFER_NXE), // 32-bit: no XD
            false,
        ),
        (PagingContext::new(CR0_PG, b32.root, CR4_SMEP, 0), true),
    ];
    for (ctx, id) in cases {
        let code = if id { EC_ID } else { 0 };
        assert_eq!(
            translate(&mem, &ctx, np, SF).unwrap_err(),
            pf(np, code, 2, FaultReason::NotPresent),
            "{ctx:?}"
        );
        assert_eq!(
            translate(&mem, &ctx, np, UF).unwrap_err(),
            pf(np, code | EC_U, 2, FaultReason::NotPresent)
        );
        // Reads never have I/D.
        assert_eq!(
            translate(&mem, &ctx, np, SR).unwrap_err(),
            pf(np, 0, 2, FaultReason::NotPresent)
        );
    }

    let mem = ram();
    let pae = Builder::new(&mem, PagingMode::Pae);
    let l4 = Builder::new(&mem, PagingMode::Level4);
    let cases = [
        (PagingContext::new(CR0_PG, pae.root, CR4_PAE, 0), 0),
        (
            PagingContext::new(CR0_PG, pae.root, CR4_PAE, EFER_NXE),
            EC_ID,
        ),
        (
            PagingContext::new(CR0_PG, pae.root, CR4_PAE | CR4_SMEP, 0),
            EC_ID,
        ),
        (long(0, l4.root, 0, 0), 0),
        (long(0, l4.root, 0, EFER_NXE), EC_ID),
        (long(0, l4.root, CR4_SMEP, 0), EC_ID),
    ];
    for (ctx, id) in cases {
        let level = if ctx.mode() == PagingMode::Pae { 3 } else { 4 };
        assert_eq!(
            translate(&mem, &ctx, np, UF).unwrap_err(),
            pf(np, id | EC_U, level, FaultReason::NotPresent),
            "{ctx:?}"
        );
        assert_eq!(
            translate(&mem, &ctx, np, UW).unwrap_err(),
            pf(np, EC_W | EC_U, level, FaultReason::NotPresent)
        );
    }
}

#[test]
fn smep() {
    let (mem, root, path) = setup(RW | US);
    let on = long(CR0_WP, root, CR4_SMEP, EFER_NXE);
    let off = long(CR0_WP, root, 0, EFER_NXE);
    assert_eq!(
        t(&mem, &on, SF).unwrap_err(),
        pf1(EC_P | EC_ID, FaultReason::Smep)
    );
    assert!(t(&mem, &off, SF).is_ok());
    // SMEP does not affect user fetches or supervisor data accesses.
    assert!(t(&mem, &on, UF).is_ok());
    assert!(t(&mem, &on, SR).is_ok());
    assert!(t(&mem, &on, SW).is_ok());
    // U/S = 0 anywhere makes it a supervisor address: fetch allowed.
    let pde = r64(&mem, path.at(2));
    w64(&mem, path.at(2), pde & !US);
    assert!(t(&mem, &on, SF).is_ok());
    w64(&mem, path.at(2), pde);
    // SMEP without NXE (I/D still reported), and in 32-bit paging.
    let on_nonx = long(CR0_WP, root, CR4_SMEP, 0);
    assert_eq!(
        t(&mem, &on_nonx, SF).unwrap_err(),
        pf1(EC_P | EC_ID, FaultReason::Smep)
    );
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Bits32);
    b.map(0x0040_1000, 0x9000, 1, US);
    let c = PagingContext::new(CR0_PG, b.root, CR4_SMEP, 0);
    assert_eq!(
        translate(&mem, &c, 0x0040_1000, SF).unwrap_err(),
        pf(0x0040_1000, EC_P | EC_ID, 1, FaultReason::Smep)
    );
}

#[test]
fn smap() {
    let (mem, root, path) = setup(RW | US);
    let on = long(CR0_WP, root, CR4_SMAP, EFER_NXE);
    let ac = on.with_rflags(RFLAGS_AC | 0x2);
    let off = long(CR0_WP, root, 0, EFER_NXE);
    // Explicit supervisor data accesses to user pages: refused unless AC.
    assert_eq!(t(&mem, &on, SR).unwrap_err(), pf1(EC_P, FaultReason::Smap));
    assert_eq!(
        t(&mem, &on, SW).unwrap_err(),
        pf1(EC_P | EC_W, FaultReason::Smap)
    );
    assert!(t(&mem, &ac, SR).is_ok());
    assert!(t(&mem, &ac, SW).is_ok());
    assert!(t(&mem, &off, SR).is_ok());
    // Implicit supervisor accesses: refused whatever AC says; U/S = 0.
    for ctx in [on, ac] {
        assert_eq!(t(&mem, &ctx, IR).unwrap_err(), pf1(EC_P, FaultReason::Smap));
        assert_eq!(
            t(&mem, &ctx, IW).unwrap_err(),
            pf1(EC_P | EC_W, FaultReason::Smap)
        );
    }
    assert!(t(&mem, &off, IR).is_ok());
    // SMAP does not apply to fetches or to user accesses.
    assert!(t(&mem, &on, SF).is_ok());
    assert!(t(&mem, &on, UR).is_ok());
    assert!(t(&mem, &on, UW).is_ok());
    // Supervisor pages are not affected.
    let pml4e = r64(&mem, path.at(4));
    w64(&mem, path.at(4), pml4e & !US);
    assert!(t(&mem, &on, SR).is_ok());
    assert!(t(&mem, &on, IW).is_ok());
    w64(&mem, path.at(4), pml4e);

    // A read-only user page: with AC, WP decides the supervisor write.
    w64(&mem, path.at(1), PA | P | US);
    assert_eq!(
        t(&mem, &ac, SW).unwrap_err(),
        pf1(EC_P | EC_W, FaultReason::ReadOnly)
    );
    let ac_nowp = long(0, root, CR4_SMAP, EFER_NXE).with_rflags(RFLAGS_AC);
    assert!(t(&mem, &ac_nowp, SW).is_ok());
    // Without AC, both rules fail; the error code is the same.
    assert_eq!(
        t(&mem, &long(0, root, CR4_SMAP, EFER_NXE), SW).unwrap_err(),
        pf1(EC_P | EC_W, FaultReason::Smap)
    );
}

const KEY: u64 = 5;
const AD5: u32 = 1 << (2 * KEY);
const WD5: u32 = 1 << (2 * KEY + 1);

#[test]
fn protection_keys_user_pages() {
    let (mem, root, _) = setup(RW | US | KEY << 59);
    let pke = |cr0: u64, pkru: u32| long(cr0, root, CR4_PKE, EFER_NXE).with_pkru(pkru);
    // Key decoded into the permissions.
    assert_eq!(t(&mem, &pke(CR0_WP, 0), UR).unwrap().perms.pkey, Some(5));
    // Without CR4.PKE there is no key and PKRU is ignored.
    let nopke = long(CR0_WP, root, 0, EFER_NXE).with_pkru(u32::MAX);
    let tr = t(&mem, &nopke, UW).unwrap();
    assert_eq!(tr.perms.pkey, None);
    // Other keys' bits do not matter.
    assert!(t(&mem, &pke(CR0_WP, !(AD5 | WD5)), UW).is_ok());

    // AD: no data access at all, user or supervisor.
    let ad = pke(CR0_WP, AD5);
    for (a, code) in [
        (UR, EC_P | EC_U | EC_PK),
        (UW, EC_P | EC_W | EC_U | EC_PK),
        (SR, EC_P | EC_PK),
        (SW, EC_P | EC_W | EC_PK),
    ] {
        assert_eq!(
            t(&mem, &ad, a).unwrap_err(),
            pf1(code, FaultReason::ProtectionKey),
            "{a:?}"
        );
    }
    // Fetches are not subject to keys.
    assert!(t(&mem, &ad, UF).is_ok());
    assert!(t(&mem, &ad, SF).is_ok());

    // WD: reads allowed; user writes refused; supervisor writes refused only
    // with CR0.WP.
    let wd = pke(CR0_WP, WD5);
    assert!(t(&mem, &wd, UR).is_ok());
    assert!(t(&mem, &wd, SR).is_ok());
    assert_eq!(
        t(&mem, &wd, UW).unwrap_err(),
        pf1(EC_P | EC_W | EC_U | EC_PK, FaultReason::ProtectionKey)
    );
    assert_eq!(
        t(&mem, &wd, SW).unwrap_err(),
        pf1(EC_P | EC_W | EC_PK, FaultReason::ProtectionKey)
    );
    let wd_nowp = pke(0, WD5);
    assert!(t(&mem, &wd_nowp, SW).is_ok());
    assert_eq!(
        t(&mem, &wd_nowp, UW).unwrap_err(),
        pf1(EC_P | EC_W | EC_U | EC_PK, FaultReason::ProtectionKey)
    );

    // PKRU does not apply to supervisor pages.
    let (mem, root, _) = setup(RW | KEY << 59);
    let c = long(CR0_WP, root, CR4_PKE, EFER_NXE).with_pkru(u32::MAX);
    assert!(t(&mem, &c, SW).is_ok());
    assert_eq!(t(&mem, &c, SW).unwrap().perms.pkey, Some(5));
}

#[test]
fn protection_key_bit_with_other_violations() {
    // PK is set whenever the key forbids the access, alongside another
    // violation (SDM 4.7: the PK conditions do not depend on the rest).
    let (mem, root, _) = setup(US | KEY << 59); // read-only user page
    let c = long(CR0_WP, root, CR4_PKE, EFER_NXE).with_pkru(WD5);
    assert_eq!(
        t(&mem, &c, UW).unwrap_err(),
        pf1(EC_P | EC_W | EC_U | EC_PK, FaultReason::ReadOnly)
    );
    // SMAP and AD at once.
    let c = long(CR0_WP, root, CR4_PKE | CR4_SMAP, EFER_NXE).with_pkru(AD5);
    assert_eq!(
        t(&mem, &c, SR).unwrap_err(),
        pf1(EC_P | EC_PK, FaultReason::Smap)
    );
    // An XD fetch never has PK.
    let (mem, root, _) = setup(RW | US | XD | KEY << 59);
    let c = long(CR0_WP, root, CR4_PKE, EFER_NXE).with_pkru(AD5 | WD5);
    assert_eq!(
        t(&mem, &c, UF).unwrap_err(),
        pf1(EC_P | EC_U | EC_ID, FaultReason::NoExecute)
    );
    // Non-present and reserved-bit faults never have PK.
    let pdpt = r64(&mem, root + ((V >> 39) & 511) * 8) & 0x000f_ffff_ffff_f000;
    let pdpte_at = pdpt + ((V >> 30) & 511) * 8;
    let pdpte = r64(&mem, pdpte_at);
    w64(&mem, pdpte_at, pdpte | 1 << 51);
    assert_eq!(
        translate(&mem, &c.with_maxphyaddr(48), V, UR).unwrap_err(),
        pf(V, EC_P | EC_U | EC_RSVD, 3, FaultReason::ReservedBit)
    );
}

#[test]
fn protection_keys_supervisor_pages() {
    const K: u64 = 3;
    const AD: u32 = 1 << (2 * K);
    const WD: u32 = 1 << (2 * K + 1);
    let (mem, root, _) = setup(RW | K << 59);
    let pks = |cr0: u64, pkrs: u32| long(cr0, root, CR4_PKS, EFER_NXE).with_pkrs(pkrs);
    assert_eq!(t(&mem, &pks(CR0_WP, 0), SR).unwrap().perms.pkey, Some(3));
    assert_eq!(
        t(&mem, &pks(CR0_WP, AD), SR).unwrap_err(),
        pf1(EC_P | EC_PK, FaultReason::ProtectionKey)
    );
    assert_eq!(
        t(&mem, &pks(CR0_WP, AD), IW).unwrap_err(),
        pf1(EC_P | EC_W | EC_PK, FaultReason::ProtectionKey)
    );
    assert!(t(&mem, &pks(CR0_WP, AD), SF).is_ok());
    assert!(t(&mem, &pks(CR0_WP, WD), SR).is_ok());
    assert_eq!(
        t(&mem, &pks(CR0_WP, WD), SW).unwrap_err(),
        pf1(EC_P | EC_W | EC_PK, FaultReason::ProtectionKey)
    );
    assert!(t(&mem, &pks(0, WD), SW).is_ok());
    // PKRS without CR4.PKS: ignored (and PKRU does not cover supervisor
    // pages).
    let nopks = long(CR0_WP, root, CR4_PKE, EFER_NXE)
        .with_pkrs(u32::MAX)
        .with_pkru(u32::MAX);
    assert!(t(&mem, &nopks, SW).is_ok());
    // PKRS does not cover user pages.
    let (mem, root, _) = setup(RW | US | K << 59);
    let c = long(CR0_WP, root, CR4_PKS, EFER_NXE).with_pkrs(u32::MAX);
    assert!(t(&mem, &c, UW).is_ok());
    assert!(t(&mem, &c, SW).is_ok());
}

#[test]
fn protection_keys_only_in_long_mode() {
    // PAE paging: CR4.PKE does nothing (bits 62:59 are reserved there).
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Pae);
    b.map(0x1000, 0x2000, 1, RW | US);
    let c = PagingContext::new(CR0_PG | CR0_WP, b.root, CR4_PAE | CR4_PKE | CR4_PKS, 0)
        .with_pkru(u32::MAX)
        .with_pkrs(u32::MAX);
    let tr = translate(&mem, &c, 0x1000, UW).unwrap();
    assert_eq!(tr.perms.pkey, None);
    b.map(0x1000, 0x2000, 1, RW | US | 1 << 59);
    assert_eq!(
        translate(&mem, &c, 0x1000, UW).unwrap_err(),
        pf(
            0x1000,
            EC_P | EC_W | EC_U | EC_RSVD,
            1,
            FaultReason::ReservedBit
        )
    );
}

#[test]
fn effective_permissions_combine_all_levels() {
    // Exhaustive over R/W, U/S, XD of the PDE and the PTE (4-level, NXE):
    // effective = AND of R/W and U/S, OR of XD (SDM 4.6.1).
    let (mem, root, path) = setup(0);
    let ctx = long(CR0_WP, root, 0, EFER_NXE);
    let pde0 = r64(&mem, path.at(2)) & !(RW | US | XD);
    for bits in 0..64u32 {
        let f = |b: u32| -> u64 {
            (if b & 1 != 0 { RW } else { 0 })
                | (if b & 2 != 0 { US } else { 0 })
                | (if b & 4 != 0 { XD } else { 0 })
        };
        let (pde_f, pte_f) = (f(bits & 7), f(bits >> 3));
        w64(&mem, path.at(2), pde0 | pde_f);
        w64(&mem, path.at(1), PA | P | pte_f);
        let tr = t(&mem, &ctx, SR).unwrap();
        assert_eq!(tr.perms.writable, pde_f & pte_f & RW != 0, "{bits:#x}");
        assert_eq!(tr.perms.user, pde_f & pte_f & US != 0, "{bits:#x}");
        assert_eq!(tr.perms.executable, (pde_f | pte_f) & XD == 0, "{bits:#x}");
        assert_eq!(tr.leaf.value, PA | P | pte_f);
    }
}

#[test]
fn protection_keys_on_large_leaves_and_five_levels() {
    // The key comes from the leaf, whatever its size, in 5-level paging too;
    // bits 62:59 of non-leaf entries are ignored.
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Level5);
    let p2 = b.map(0x0001_0000_0020_0000, 0x60_0000, 2, RW | US | 9 << 59);
    b.map(0x0002_0000_4000_0000, 0x4000_0000, 3, RW | US | 14 << 59);
    for l in 3..=5 {
        let e = r64(&mem, p2.at(l));
        w64(&mem, p2.at(l), e | 0xf << 59);
    }
    let ctx = PagingContext::new(
        CR0_PG | CR0_WP,
        b.root,
        CR4_PAE | guest_mm::paging::context::CR4_LA57 | CR4_PKE,
        EFER_LME | EFER_LMA | EFER_NXE,
    );
    let t2 = translate(&mem, &ctx, 0x0001_0000_0020_0000, UR).unwrap();
    assert_eq!(t2.perms.pkey, Some(9));
    let t1 = translate(&mem, &ctx, 0x0002_0000_4000_0000, UR).unwrap();
    assert_eq!(t1.perms.pkey, Some(14));
    let ad9 = ctx.with_pkru(1 << 18);
    assert_eq!(
        translate(&mem, &ad9, 0x0001_0000_0020_0000, UW).unwrap_err(),
        pf(
            0x0001_0000_0020_0000,
            EC_P | EC_W | EC_U | EC_PK,
            2,
            FaultReason::ProtectionKey
        )
    );
    // Key 15 (set in the upper levels) means nothing.
    assert!(translate(&mem, &ctx.with_pkru(3 << 30), 0x0001_0000_0020_0000, UW).is_ok());
    let wd14 = ctx.with_pkru(1 << 29);
    assert_eq!(
        translate(&mem, &wd14, 0x0002_0000_4000_0000, UW).unwrap_err(),
        pf(
            0x0002_0000_4000_0000,
            EC_P | EC_W | EC_U | EC_PK,
            3,
            FaultReason::ProtectionKey
        )
    );
}
