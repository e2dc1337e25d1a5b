// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every request flag of DESIGN 4.4, each test asserting the counters that
//! show which path ran (LONGTERM has its own file, gup_longterm.rs).

mod common;
#[path = "common/gup.rs"]
mod gupc;

use common::*;
use guest_mm::gup::{
    AddressSpace, Fallback, FaultOutcome, GupConfig, GupError, GupFlags, InjectIntoVcpu,
    RegionOptions,
};
use guest_mm::paging::context::{CR0_PG, CR4_PAE, CR4_PKE, CR4_SMAP, CR4_SMEP, RFLAGS_AC};
use guest_mm::paging::{FaultReason, PagingContext};
use gupc::*;

/// Unwrap a Fault error into (address, guest fault, injection).
fn fault_of(
    r: Result<guest_mm::gup::Pinned, GupError>,
) -> (
    u64,
    Option<guest_mm::paging::Fault>,
    Option<guest_mm::gup::Injection>,
) {
    match r {
        Err(GupError::Fault {
            address,
            fault,
            inject,
        }) => (address, fault, inject),
        other => panic!("expected a Fault, got {other:?}"),
    }
}

#[test]
fn write_needs_guest_rw() {
    let gup = engine0();
    let map = gup.memory_map();
    let mut b = tables(&map);
    b.map(VA, DATA, 1, RW | US | A | D);
    b.map(VA + PAGE, DATA + PAGE, 1, US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let mut m = Meter::new(&gup);

    // User write to a read-only page: the walk faults on the fast path
    // (Protection), the slow path has no handler: Fault with the exact #PF.
    let r = gup.pin(&space, VA + PAGE, PAGE, PIN | WRITE | USER);
    let (address, fault, inject) = fault_of(r);
    assert_eq!(address, VA + PAGE);
    assert_eq!(
        fault,
        Some(pf(VA + PAGE, EC_P | EC_W | EC_U, 1, FaultReason::ReadOnly))
    );
    assert_eq!(inject, None);
    let d = m.step();
    assert_slow(&d, Fallback::Protection, 0);
    assert_eq!(d.faults_failed, 1);
    assert_eq!(d.fast_pages, 0);

    // Supervisor write with CR0.WP: the same, without U.
    let (_, fault, _) = fault_of(gup.pin(&space, VA + PAGE, PAGE, PIN | WRITE));
    assert_eq!(
        fault,
        Some(pf(VA + PAGE, EC_P | EC_W, 1, FaultReason::ReadOnly))
    );
    assert_slow(&m.step(), Fallback::Protection, 0);

    // Supervisor write with CR0.WP clear is allowed: fast path.
    let no_wp = PagingContext::new(CR0_PG, b.root, CR4_PAE, EFER_LONG);
    let p = gup
        .pin(
            &AddressSpace::page_tables(no_wp),
            VA + PAGE,
            PAGE,
            PIN | WRITE,
        )
        .unwrap();
    assert_eq!(p.pages(), 1);
    assert!(p.is_write());
    assert_fast(&m.step(), 1);
    drop(p);

    // A read of the read-only page is fine.
    let p = gup.pin(&space, VA + PAGE, PAGE, PIN | USER).unwrap();
    assert_fast(&m.step(), 1);
    drop(p);

    // Writable page then read-only page: one page taken, the rest short.
    let p = gup.pin(&space, VA, 2 * PAGE, PIN | WRITE | USER).unwrap();
    assert_eq!(p.pages(), 1);
    assert_eq!(p.extents()[0].gpa, DATA);
    assert!(matches!(
        p.short_reason(),
        Some(GupError::Fault { address, .. }) if *address == VA + PAGE
    ));
    let d = m.step();
    assert_eq!(d.fast_pages, 1);
    assert_eq!(d.slow_pages, 0);
    assert_eq!(fallbacks_moved(&d), vec![(Fallback::Protection, 1)]);
    assert_eq!(gup.stats().pins_outstanding, 1);
    drop(p);
    assert_released(&gup);
}

#[test]
fn write_to_read_only_region_refused_even_with_force() {
    const ROM: u64 = RAM0;
    let ro = RegionOptions {
        read_only: true,
        ..RegionOptions::default()
    };
    let gup = engine(
        &[(0, RAM0, RegionOptions::default()), (ROM, 4 * MIB, ro)],
        GupConfig::default(),
    );
    let map = gup.memory_map();
    let mut b = tables(&map);
    // The guest maps it writable: only the host region says read-only.
    b.map(VA, ROM, 1, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let mut m = Meter::new(&gup);

    for flags in [PIN | WRITE, PIN | WRITE | FORCE, GET | WRITE | FORCE | USER] {
        let (address, fault, inject) = fault_of(gup.pin(&space, VA, PAGE, flags));
        assert_eq!((address, fault, inject), (VA, None, None), "{flags:?}");
        let d = m.step();
        assert_slow(&d, Fallback::ReadOnly, 0);
        assert_eq!(d.faults_failed, 0, "not a guest fault");
    }
    for flags in [PIN | WRITE, PIN | WRITE | FORCE] {
        let (address, fault, _) =
            fault_of(gup.pin(&AddressSpace::Physical, ROM + PAGE, PAGE, flags));
        assert_eq!((address, fault), (ROM + PAGE, None), "{flags:?}");
        assert_slow(&m.step(), Fallback::ReadOnly, 0);
    }
    // Reading it is fine, on both address spaces.
    let p = gup.pin(&space, VA, PAGE, PIN | FORCE).unwrap();
    assert_fast(&m.step(), 1);
    let q = gup.pin(&AddressSpace::Physical, ROM, PAGE, PIN).unwrap();
    assert_fast(&m.step(), 1);
    assert_eq!(p.extents()[0].gpa, q.extents()[0].gpa);
    drop((p, q));
    assert_released(&gup);
}

/// PKRU with access-disable and write-disable set for key 1.
const PKRU_DENY_KEY1: u32 = 0b11 << 2;
const KEY1: u64 = 1 << 59;

#[test]
fn force_ignores_rw_us_smap_smep_and_keys() {
    let gup = engine0();
    let map = gup.memory_map();
    let mut b = tables(&map);
    // 0: user, key 0. 1: supervisor, read-only. 2: not present (its table
    // exists). 3: a reserved bit (51 with MAXPHYADDR 48). 4: user, key 1.
    b.map(VA, DATA, 1, RW | US | A | D);
    b.map(VA + PAGE, DATA + PAGE, 1, A | D);
    let p3 = b.map(VA + 3 * PAGE, DATA + 3 * PAGE, 1, RW | US | A | D);
    w64(
        map.memory(),
        p3.at(1),
        r64(map.memory(), p3.at(1)) | 1 << 51,
    );
    b.map(VA + 4 * PAGE, DATA + 4 * PAGE, 1, RW | US | A | D | KEY1);
    let ctx = PagingContext::new(
        CR0_PG | guest_mm::paging::context::CR0_WP,
        b.root,
        CR4_PAE | CR4_SMEP | CR4_SMAP | CR4_PKE,
        EFER_LONG,
    )
    .with_pkru(PKRU_DENY_KEY1)
    .with_maxphyaddr(48);
    let space = AddressSpace::page_tables(ctx);
    let mut m = Meter::new(&gup);

    // Without FORCE each of these faults, for the rule named.
    let cases = [
        // Supervisor write to a user page: SMAP.
        (VA, PIN | WRITE, EC_P | EC_W, FaultReason::Smap),
        // User read of a key-1 page with PKRU AD: protection key.
        (
            VA + 4 * PAGE,
            PIN | USER,
            EC_P | EC_U | EC_PK,
            FaultReason::ProtectionKey,
        ),
        // User read of a supervisor page: U/S.
        (
            VA + PAGE,
            PIN | USER,
            EC_P | EC_U,
            FaultReason::UserAccessToSupervisorPage,
        ),
        // Supervisor write to a read-only page with WP: R/W.
        (VA + PAGE, PIN | WRITE, EC_P | EC_W, FaultReason::ReadOnly),
    ];
    for (va, flags, code, reason) in cases {
        let (_, fault, _) = fault_of(gup.pin(&space, va, PAGE, flags));
        assert_eq!(fault, Some(pf(va, code, 1, reason)), "{flags:?}");
        assert_slow(&m.step(), Fallback::Protection, 0);
        // With FORCE the same request succeeds, on the fast path.
        let p = gup.pin(&space, va, PAGE, flags | FORCE).unwrap();
        assert_eq!(p.pages(), 1, "{flags:?}");
        assert_eq!(p.extents()[0].gpa, DATA + (va - VA));
        assert_fast(&m.step(), 1);
    }
    // FORCE still faults on a page that is not present, and on reserved
    // bits; the access is then a supervisor one.
    let (_, fault, _) = fault_of(gup.pin(&space, VA + 2 * PAGE, PAGE, PIN | WRITE | FORCE));
    assert_eq!(
        fault,
        Some(pf(VA + 2 * PAGE, EC_W, 1, FaultReason::NotPresent))
    );
    assert_slow(&m.step(), Fallback::NotPresent, 0);
    let (_, fault, _) = fault_of(gup.pin(&space, VA + 3 * PAGE, PAGE, PIN | FORCE | USER));
    assert_eq!(
        fault,
        Some(pf(
            VA + 3 * PAGE,
            EC_P | EC_RSVD,
            1,
            FaultReason::ReservedBit
        ))
    );
    assert_slow(&m.step(), Fallback::Protection, 0);
    assert_released(&gup);
}

#[test]
fn get_counts_one_pin_counts_1024() {
    let gup = engine0();
    let map = gup.memory_map();
    let r0 = map.regions()[0].clone();
    let mut b = tables(&map);
    b.map(VA, DATA, 1, RW | US | A | D);
    b.map(VA + 2 * MIB, DATA + 2 * MIB, 2, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let mut m = Meter::new(&gup);

    let g = gup.pin(&space, VA, PAGE, GET).unwrap();
    assert!(!g.is_pin());
    assert_eq!(r0.frames().total_refs(), 1);
    assert!(!gup.maybe_dma_pinned(DATA));
    let d = m.step();
    assert_fast(&d, 1);
    assert_eq!((d.gets_outstanding, d.pins_outstanding), (1, 0));

    let p = gup.pin(&space, VA, PAGE, PIN).unwrap();
    assert!(p.is_pin());
    assert_eq!(r0.frames().total_refs(), 1 + 1024);
    assert!(gup.maybe_dma_pinned(DATA));
    assert!(!gup.maybe_dma_pinned(DATA + PAGE), "only that frame");
    let d = m.step();
    assert_fast(&d, 1);
    assert_eq!((d.gets_outstanding, d.pins_outstanding), (0, 1));

    drop(p);
    assert_eq!(r0.frames().total_refs(), 1);
    assert!(!gup.maybe_dma_pinned(DATA));
    assert_eq!(gup.stats().pins_outstanding, 0);
    drop(g);
    assert_eq!(r0.frames().total_refs(), 0);

    // A 2M leaf: one reference on its block, whichever part is taken.
    let g = gup
        .pin(&space, VA + 2 * MIB + 8 * PAGE, 3 * PAGE, GET)
        .unwrap();
    assert_eq!(r0.frames().total_refs(), 1);
    assert_eq!(gup.stats().gets_outstanding, 3);
    let p = gup.pin(&space, VA + 2 * MIB, 2 * MIB, PIN).unwrap();
    assert_eq!(r0.frames().total_refs(), 1 + 1024);
    for gpa in [DATA + 2 * MIB, DATA + 3 * MIB, DATA + 4 * MIB - PAGE] {
        assert!(gup.maybe_dma_pinned(gpa), "{gpa:#x}");
    }
    assert!(!gup.maybe_dma_pinned(DATA + 4 * MIB));
    assert_eq!(gup.stats().pins_outstanding, 512);
    drop((g, p));

    // Guest-physical requests take the same counts.
    let g = gup.pin(&AddressSpace::Physical, DATA, PAGE, GET).unwrap();
    let p = gup.pin(&AddressSpace::Physical, DATA, PAGE, PIN).unwrap();
    assert_eq!(r0.frames().total_refs(), 1025);
    assert!(gup.maybe_dma_pinned(DATA));
    drop((g, p));
    assert!(!gup.maybe_dma_pinned(DATA));
    assert_released(&gup);
}

#[test]
fn fast_only_never_enters_the_slow_path() {
    let lazy = RegionOptions {
        lazy: true,
        ..RegionOptions::default()
    };
    let gup = engine(
        &[(0, RAM0, RegionOptions::default()), (RAM0, 4 * MIB, lazy)],
        GupConfig::default(),
    );
    let map = gup.memory_map();
    let mut b = tables(&map);
    b.map(VA, DATA, 1, RW | US | A | D);
    b.map(VA + PAGE, DATA + PAGE, 1, RW | US | A | D);
    let p2 = b.map(VA + 2 * PAGE, DATA + 2 * PAGE, 1, RW | US);
    b.map(VA + 3 * PAGE, DATA + 3 * PAGE, 1, RW | US | A | D);
    let pte2 = r64(map.memory(), p2.at(1));
    let handler = Recorder::new(|_, _| FaultOutcome::Fail);
    let space = AddressSpace::with_handler(ctx4(b.root), &handler);
    let mut m = Meter::new(&gup);

    // Stops at the page whose A bit is clear: short, Again, TOUCH ignored.
    let p = gup
        .pin(&space, VA, 4 * PAGE, PIN | FAST_ONLY | TOUCH | USER)
        .unwrap();
    assert_eq!(p.pages(), 2);
    assert_eq!(p.short_reason(), Some(&GupError::Again));
    assert_eq!(r64(map.memory(), p2.at(1)), pte2, "FAST_ONLY touched A/D");
    let d = m.step();
    assert_eq!((d.requests, d.fast_hits, d.fast_pages), (1, 0, 2));
    assert_eq!((d.slow_calls, d.fallbacks_total(), d.touched), (0, 0, 0));
    assert_eq!(d.pins_outstanding, 2);
    drop(p);

    // Nothing taken: Again, as an error.
    assert_eq!(
        gup.pin(&space, VA + 2 * PAGE, PAGE, PIN | FAST_ONLY | TOUCH)
            .unwrap_err(),
        GupError::Again
    );
    // Not present: the handler is not called.
    assert_eq!(
        gup.pin(&space, VA + 4 * PAGE, PAGE, GET | FAST_ONLY)
            .unwrap_err(),
        GupError::Again
    );
    assert_eq!(handler.calls(), 0);
    // Not RAM, and not populated: Again, and the frame stays unpopulated.
    let phys = AddressSpace::Physical;
    assert_eq!(
        gup.pin(&phys, RAM0 + 4 * MIB, PAGE, GET | FAST_ONLY | DUMP)
            .unwrap_err(),
        GupError::Again
    );
    assert_eq!(
        gup.pin(&phys, RAM0, PAGE, PIN | FAST_ONLY).unwrap_err(),
        GupError::Again
    );
    assert!(map.regions()[1].frames().is_unpopulated(0));
    let d = m.step();
    assert_eq!((d.requests, d.fast_hits, d.fast_pages), (4, 0, 0));
    assert_eq!((d.slow_calls, d.fallbacks_total()), (0, 0));
    assert_eq!((d.populated, d.holes, d.faults_failed), (0, 0, 0));

    // A perfect range: complete, no short reason.
    let p = gup.pin(&space, VA, 2 * PAGE, PIN | FAST_ONLY).unwrap();
    assert_eq!((p.pages(), p.short_reason()), (2, None));
    assert_fast(&m.step(), 2);
    drop(p);
    assert_released(&gup);
}

#[test]
fn nofault_never_calls_the_handler() {
    let gup = engine0();
    let map = gup.memory_map();
    let mut b = tables(&map);
    b.map(VA, DATA, 1, RW | US | A | D);
    let fail = Recorder::new(|_, _| FaultOutcome::Fail);
    let retry = Recorder::new(|_, _| FaultOutcome::Retry);
    let mut m = Meter::new(&gup);
    let missing = VA + PAGE;
    let the_fault = pf(missing, EC_W | EC_U, 1, FaultReason::NotPresent);
    let expect = Some(the_fault);

    // NOFAULT: neither handler is asked, not even one that would retry.
    for h in [
        &fail as &dyn guest_mm::gup::FaultHandler,
        &retry,
        &InjectIntoVcpu,
    ] {
        let space = AddressSpace::with_handler(ctx4(b.root), h);
        let r = gup.pin(&space, missing, PAGE, PIN | WRITE | USER | NOFAULT);
        assert_eq!(fault_of(r), (missing, expect, None));
        let d = m.step();
        assert_slow(&d, Fallback::NotPresent, 0);
        assert_eq!(d.faults_failed, 1);
        assert_eq!((d.faults_handled, d.faults_injected, d.retries), (0, 0, 0));
    }
    assert_eq!((fail.calls(), retry.calls()), (0, 0));

    // Without NOFAULT the handler is asked once, with the fault.
    let space = AddressSpace::with_handler(ctx4(b.root), &fail);
    let r = gup.pin(&space, missing, PAGE, PIN | WRITE | USER);
    assert_eq!(fault_of(r), (missing, expect, None));
    assert_eq!(fail.calls(), 1);
    assert_eq!(fail.seen()[0].0, the_fault);
    assert!(fail.seen()[0].1.is_write() && fail.seen()[0].1.is_user());
    assert_eq!(m.step().faults_failed, 1);
    // And the mapped page before it is still taken, NOFAULT or not.
    let p = gup
        .pin(&space, VA, 2 * PAGE, PIN | WRITE | USER | NOFAULT)
        .unwrap();
    assert_eq!(p.pages(), 1);
    assert_eq!(fail.calls(), 1);
    drop(p);
    assert_released(&gup);
}

#[test]
fn touch_sets_accessed_and_dirty_as_the_cpu_would() {
    let gup = engine0();
    let map = gup.memory_map();
    let mem = map.memory();
    let mut b = tables(&map);
    let p0 = b.map(VA, DATA, 1, RW | US);
    let p1 = b.map(VA + PAGE, DATA + PAGE, 1, RW | US | A);
    let p2 = b.map(VA + 2 * PAGE, DATA + 2 * PAGE, 1, RW | US);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let mut m = Meter::new(&gup);
    for level in 2..=4 {
        assert_eq!(r64(mem, p0.at(level)) & A, 0, "the builder sets no A");
    }

    // Read with TOUCH: A on every entry of the walk, D nowhere.
    let p = gup.pin(&space, VA, PAGE, PIN | USER | TOUCH).unwrap();
    assert_eq!(p.pages(), 1);
    let d = m.step();
    assert_slow(&d, Fallback::AccessedDirty, 1);
    assert_eq!(
        (d.touched, d.retries),
        (1, 0),
        "touch hands back the translation it set: no second walk"
    );
    assert_eq!(r64(mem, p0.at(1)) & (A | D), A);
    for level in 2..=4 {
        assert_eq!(r64(mem, p0.at(level)) & A, A, "level {level}");
    }
    drop(p);
    // Now the fast path takes it.
    drop(gup.pin(&space, VA, PAGE, PIN | USER | TOUCH).unwrap());
    assert_fast(&m.step(), 1);

    // Write with TOUCH where only A is set: D is set too.
    let p = gup
        .pin(&space, VA + PAGE, PAGE, GET | WRITE | TOUCH)
        .unwrap();
    assert_eq!(r64(mem, p1.at(1)) & (A | D), A | D);
    let d = m.step();
    assert_slow(&d, Fallback::AccessedDirty, 1);
    assert_eq!(d.touched, 1);
    drop(p);

    // Without TOUCH the slow path takes the page and leaves the entry as
    // the guest wrote it.
    let before = r64(mem, p2.at(1));
    let p = gup.pin(&space, VA + 2 * PAGE, PAGE, PIN | WRITE).unwrap();
    assert_eq!(p.pages(), 1);
    assert_eq!(p.extents()[0].gpa, DATA + 2 * PAGE);
    assert_eq!(r64(mem, p2.at(1)), before);
    let d = m.step();
    assert_slow(&d, Fallback::AccessedDirty, 1);
    assert_eq!((d.touched, d.retries), (0, 0));
    drop(p);
    // ... so the next request falls back again.
    drop(gup.pin(&space, VA + 2 * PAGE, PAGE, PIN | WRITE).unwrap());
    assert_slow(&m.step(), Fallback::AccessedDirty, 1);
    assert_released(&gup);
}

#[test]
fn dump_turns_holes_into_hole_extents() {
    // RAM at [0, 64M) and [68M, 72M): a 4 MiB hole between them.
    let gup = engine(
        &[
            (0, RAM0, RegionOptions::default()),
            (RAM0 + 4 * MIB, 4 * MIB, RegionOptions::default()),
        ],
        GupConfig::default(),
    );
    let phys = AddressSpace::Physical;
    let mut m = Meter::new(&gup);
    let start = RAM0 - 2 * PAGE;
    let len = 4 * MIB + 4 * PAGE;

    let p = gup.pin(&phys, start, len, GET | DUMP).unwrap();
    assert_eq!(p.pages(), len / PAGE);
    assert_eq!(p.short_reason(), None);
    let holes: Vec<_> = p.extents().into_iter().filter(|e| e.is_hole()).collect();
    assert_eq!(holes.iter().map(|e| e.len).sum::<u64>(), 4 * MIB);
    assert!(holes
        .iter()
        .all(|e| e.host_ptr().is_none() && (RAM0..RAM0 + 4 * MIB).contains(&e.gpa)));
    let ram: Vec<_> = p.extents().into_iter().filter(|e| !e.is_hole()).collect();
    assert_eq!(ram.len(), 2);
    assert_eq!((ram[0].gpa, ram[0].len), (start, 2 * PAGE));
    assert_eq!((ram[1].gpa, ram[1].len), (RAM0 + 4 * MIB, 2 * PAGE));
    assert!(p.iovecs().is_none(), "a hole has no iovec");
    let d = m.step();
    assert_slow(&d, Fallback::NotRam, 1024 + 2);
    assert_eq!(d.fast_pages, 2);
    assert_eq!(d.holes, 1024);
    assert_eq!(d.gets_outstanding, 4, "holes are not referenced");
    drop(p);

    // Without DUMP: short at the hole, or a Fault if it starts there.
    let p = gup.pin(&phys, start, len, GET).unwrap();
    assert_eq!(p.pages(), 2);
    assert_eq!(
        p.short_reason(),
        Some(&GupError::Fault {
            address: RAM0,
            fault: None,
            inject: None
        })
    );
    let d = m.step();
    assert_eq!(d.holes, 0);
    drop(p);
    let (address, fault, _) = fault_of(gup.pin(&phys, RAM0 + MIB, PAGE, GET));
    assert_eq!((address, fault), (RAM0 + MIB, None));

    // A guest-virtual page mapped onto MMIO (the local APIC).
    let map = gup.memory_map();
    let mut b = tables(&map);
    b.map(VA, 0xfee0_0000, 1, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    m.step();
    let p = gup.pin(&space, VA + 0x30, 8, GET | DUMP).unwrap();
    assert_eq!(p.extents().len(), 1);
    assert!(p.extents()[0].is_hole());
    assert_eq!(
        (p.extents()[0].addr, p.extents()[0].gpa, p.extents()[0].len),
        (VA + 0x30, 0xfee0_0030, 8)
    );
    let d = m.step();
    assert_slow(&d, Fallback::NotRam, 1);
    assert_eq!(d.holes, 1);
    drop(p);
    let (address, fault, _) = fault_of(gup.pin(&space, VA, PAGE, GET));
    assert_eq!((address, fault), (VA, None));
    assert_released(&gup);
}

#[test]
fn user_selects_cpl3_checks() {
    let gup = engine0();
    let map = gup.memory_map();
    let mut b = tables(&map);
    b.map(VA, DATA, 1, RW | A | D); // supervisor page
    b.map(VA + PAGE, DATA + PAGE, 1, RW | US | A | D); // user page
    let ctx = ctx4(b.root);
    let smap = PagingContext {
        cr4: ctx.cr4 | CR4_SMAP,
        ..ctx
    };
    let mut m = Meter::new(&gup);

    let space = AddressSpace::page_tables(smap);
    let (_, fault, _) = fault_of(gup.pin(&space, VA, PAGE, PIN | USER));
    assert_eq!(
        fault,
        Some(pf(
            VA,
            EC_P | EC_U,
            1,
            FaultReason::UserAccessToSupervisorPage
        ))
    );
    assert_slow(&m.step(), Fallback::Protection, 0);
    drop(gup.pin(&space, VA, PAGE, PIN).unwrap());
    assert_fast(&m.step(), 1);

    // The user page: supervisor data access refused by SMAP, user allowed,
    // supervisor allowed again with RFLAGS.AC.
    let (_, fault, _) = fault_of(gup.pin(&space, VA + PAGE, PAGE, PIN));
    assert_eq!(fault, Some(pf(VA + PAGE, EC_P, 1, FaultReason::Smap)));
    assert_slow(&m.step(), Fallback::Protection, 0);
    drop(gup.pin(&space, VA + PAGE, PAGE, PIN | USER).unwrap());
    assert_fast(&m.step(), 1);
    let ac = AddressSpace::page_tables(smap.with_rflags(RFLAGS_AC));
    drop(gup.pin(&ac, VA + PAGE, PAGE, PIN | WRITE).unwrap());
    assert_fast(&m.step(), 1);
    assert_released(&gup);
}

#[test]
fn invalid_combinations_are_refused_before_any_work() {
    let gup = engine0();
    let map = gup.memory_map();
    let mut b = tables(&map);
    b.map(VA, DATA, 1, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let r0 = map.regions()[0].clone();

    let mut valid = 0;
    for bits in 0..1u32 << 10 {
        let flags = GupFlags::from_bits(bits).unwrap();
        // DESIGN 4.4: exactly one of GET and PIN; LONGTERM with PIN only,
        // and never FAST_ONLY (long-term pins lock host pages, which only
        // the slow path does).
        let get = flags.contains(GET);
        let pin = flags.contains(PIN);
        let lt = flags.contains(LONGTERM);
        let ok = get != pin && (!lt || (pin && !flags.contains(FAST_ONLY)));
        let before = gup.stats();
        // A mapped page and a wrapping range: validation comes first.
        for (addr, len) in [(VA, PAGE), (u64::MAX - PAGE, 4 * PAGE)] {
            match gup.pin(&space, addr, len, flags) {
                Err(e @ GupError::Invalid(_)) => {
                    assert!(!ok, "{flags:?} refused");
                    assert_eq!(e.errno(), libc::EINVAL);
                    assert_eq!(gup.stats(), before, "{flags:?}: a counter moved");
                    assert_eq!(r0.frames().total_refs(), 0);
                }
                Ok(p) => {
                    assert!(ok, "{flags:?} accepted");
                    assert_eq!(p.pages(), 1);
                }
                Err(GupError::Overflow) => assert!(ok && addr != VA, "{flags:?}"),
                Err(e) => panic!("{flags:?}: {e:?}"),
            }
        }
        valid += u32::from(ok);
    }
    // GET or PIN (2) x WRITE, FORCE, NOFAULT, TOUCH, DUMP, USER, FAST_ONLY
    // (2^7), plus PIN|LONGTERM without FAST_ONLY (2^6).
    assert_eq!(valid, 2 * 128 + 64);
    assert_eq!(GupFlags::from_bits(1 << 10), None);
    assert_eq!(format!("{:?}", PIN | WRITE), "WRITE|PIN");
    assert_eq!(format!("{:?}", GupFlags::NONE), "NONE");
    assert_released(&gup);
}

#[test]
fn zero_length_takes_nothing_anywhere() {
    let gup = engine0();
    let map = gup.memory_map();
    let b = tables(&map);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let mut m = Meter::new(&gup);
    // Unmapped, in a hole, even non-canonical: nothing to take, no error.
    for (s, addr) in [
        (space, VA),
        (AddressSpace::Physical, 1 << 40),
        (space, 0x8000_0000_0000),
    ] {
        let p = gup.pin(&s, addr, 0, PIN | WRITE).unwrap();
        assert_eq!((p.pages(), p.bytes(), p.extents().len()), (0, 0, 0));
        assert_eq!(p.short_reason(), None);
        let d = m.step();
        assert_eq!(
            d,
            guest_mm::gup::GupCounters {
                requests: 1,
                ..Default::default()
            }
        );
    }
    assert_released(&gup);
}

#[test]
fn wrapping_range_is_overflow() {
    let gup = engine0();
    let before = gup.stats();
    for space in [AddressSpace::Physical, AddressSpace::page_tables(ctx4(0))] {
        for (addr, len) in [(u64::MAX - PAGE + 1, 2 * PAGE), (1, u64::MAX)] {
            let e = gup.pin(&space, addr, len, GET).unwrap_err();
            assert_eq!(e, GupError::Overflow);
            assert_eq!(e.errno(), libc::EOVERFLOW);
        }
    }
    assert_eq!(gup.stats(), before);
}
