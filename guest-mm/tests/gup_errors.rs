// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every error of DESIGN 4.4 (Fault with and without injection, NoMemory,
//! HwPoison, Again, Interrupted, Invalid, Overflow), its errno, the fault
//! handler's three outcomes, and Linux's return convention: a short result
//! carries the reason, an error comes back only when nothing was taken.

mod common;
#[path = "common/gup.rs"]
mod gupc;

use std::time::{Duration, Instant};

use common::*;
use guest_mm::gup::slow::MAX_RETRIES;
use guest_mm::gup::{
    AddressSpace, CancelToken, Fallback, FaultOutcome, GupConfig, GupError, InjectIntoVcpu,
    Injection, Pinned, RegionOptions,
};
use guest_mm::paging::{ErrorCode, FaultKind, FaultReason};
use gupc::*;

/// A 4-level address space with pages 0..n mapped (4K, A and D set) at
/// `VA` onto `DATA`, and page `n` given a page table but no entry. Returns
/// the root and the PTE address of each page 0..=n.
fn setup(gup: &guest_mm::gup::Gup, n: u64) -> (u64, Vec<u64>) {
    let map = gup.memory_map();
    let mut b = tables(&map);
    let mut ptes = Vec::new();
    for i in 0..=n {
        let path = b.map(VA + i * PAGE, DATA + i * PAGE, 1, RW | US | A | D);
        ptes.push(path.at(1));
    }
    w64(map.memory(), ptes[n as usize], 0);
    (b.root, ptes)
}

fn err(r: Result<Pinned, GupError>) -> GupError {
    r.expect_err("expected an error")
}

#[test]
fn fault_carries_the_guest_fault_and_its_error_code() {
    let gup = engine0();
    let (root, _) = setup(&gup, 1);
    let never = Recorder::new(|_, _| FaultOutcome::Retry);
    let space = AddressSpace::page_tables(ctx4(root));
    let mut m = Meter::new(&gup);

    let e = err(gup.pin(&space, VA + PAGE + 8, 16, PIN | WRITE | USER));
    assert_eq!(
        e,
        GupError::Fault {
            address: VA + PAGE + 8,
            fault: Some(pf(VA + PAGE + 8, EC_W | EC_U, 1, FaultReason::NotPresent)),
            inject: None,
        }
    );
    assert_eq!(e.errno(), libc::EFAULT);
    assert!(e.to_string().contains(&format!("{:#x}", VA + PAGE + 8)));
    let d = m.step();
    assert_slow(&d, Fallback::NotPresent, 0);
    assert_eq!(d.faults_failed, 1);

    // A non-canonical address is a #GP: no handler is asked about it.
    let with = AddressSpace::with_handler(ctx4(root), &never);
    let e = err(gup.pin(&with, 0x8000_0000_0000, PAGE, GET));
    let GupError::Fault {
        fault: Some(f),
        inject: None,
        ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(
        (f.kind, f.reason),
        (FaultKind::GeneralProtection, FaultReason::NonCanonical)
    );
    assert_eq!(never.calls(), 0);
    let d = m.step();
    assert_slow(&d, Fallback::Protection, 0);
    assert_eq!((d.faults_failed, d.faults_handled), (1, 0));

    // A table outside guest RAM.
    let map = gup.memory_map();
    let mut b = tables(&map);
    b.map(VA, DATA, 1, RW | US | A | D);
    let pml4e = b.root + b.index(VA, 4) * 8;
    w64(map.memory(), pml4e, (1 << 40) | P | RW | US);
    let e = err(gup.pin(&AddressSpace::page_tables(ctx4(b.root)), VA, PAGE, GET));
    let GupError::Fault { fault: Some(f), .. } = e else {
        panic!("{e:?}")
    };
    // The walk stops at the PDPTE it cannot read (level 3).
    assert_eq!((f.reason, f.level), (FaultReason::TableOutsideRam, 3));
    assert_slow(&m.step(), Fallback::NotPresent, 0);

    // A guest-physical address in no region: no guest fault to report.
    let e = err(gup.pin(&AddressSpace::Physical, RAM0, PAGE, GET));
    assert_eq!(
        e,
        GupError::Fault {
            address: RAM0,
            fault: None,
            inject: None
        }
    );
    assert!(e.to_string().contains("no guest RAM there"));
    assert_slow(&m.step(), Fallback::NotRam, 0);
    assert_released(&gup);
}

#[test]
fn inject_hands_the_page_fault_to_the_vcpu() {
    let gup = engine0();
    let (root, ptes) = setup(&gup, 2);
    let map = gup.memory_map();
    let space = AddressSpace::with_handler(ctx4(root), &InjectIntoVcpu);
    let mut m = Meter::new(&gup);
    let cr2 = VA + 2 * PAGE;
    let injection = Injection {
        cr2,
        error_code: ErrorCode(EC_W | EC_U),
    };

    // Alone: an error carrying the #PF to inject.
    let e = err(gup.pin(&space, cr2, PAGE, PIN | WRITE | USER));
    assert_eq!(
        e,
        GupError::Fault {
            address: cr2,
            fault: Some(pf(cr2, EC_W | EC_U, 1, FaultReason::NotPresent)),
            inject: Some(injection),
        }
    );
    assert_eq!(e.errno(), libc::EFAULT);
    assert!(e.to_string().contains("inject"));
    let d = m.step();
    assert_slow(&d, Fallback::NotPresent, 0);
    assert_eq!(
        (d.faults_injected, d.faults_failed, d.faults_handled),
        (1, 0, 0)
    );

    // After two good pages: they are taken, the rest is short with it.
    let p = gup.pin(&space, VA, 3 * PAGE, PIN | WRITE | USER).unwrap();
    assert_eq!(p.pages(), 2);
    assert!(matches!(
        p.short_reason(),
        Some(GupError::Fault { inject: Some(i), .. }) if *i == injection
    ));
    assert_eq!(m.step().faults_injected, 1);
    drop(p);

    // The guest's #PF handler maps the page; the restarted request works.
    w64(
        map.memory(),
        ptes[2],
        (DATA + 2 * PAGE) | P | RW | US | A | D,
    );
    drop(gup.pin(&space, VA, 3 * PAGE, PIN | WRITE | USER).unwrap());
    assert_fast(&m.step(), 3);

    // A protection fault is injected with its P bit.
    w64(map.memory(), ptes[2], (DATA + 2 * PAGE) | P | US | A | D);
    let e = err(gup.pin(&space, cr2, PAGE, PIN | WRITE | USER));
    let GupError::Fault {
        inject: Some(i), ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(i.error_code, ErrorCode(EC_P | EC_W | EC_U));
    assert_slow(&m.step(), Fallback::Protection, 0);
    assert_released(&gup);
}

#[test]
fn retry_after_the_handler_maps_the_page() {
    let gup = engine0();
    let (root, ptes) = setup(&gup, 4);
    let map = gup.memory_map();
    let mem = map.memory();
    // Unmap pages 1 and 3 as well; the handler maps whatever faults, from
    // its address, without A/D (as a lazy guest kernel might).
    w64(mem, ptes[1], 0);
    w64(mem, ptes[3], 0);
    let handler = Recorder::new(|f, _| {
        let i = (f.address - VA) / PAGE;
        w64(mem, ptes[i as usize], (DATA + i * PAGE) | P | RW | US);
        FaultOutcome::Retry
    });
    let space = AddressSpace::with_handler(ctx4(root), &handler);
    let mut m = Meter::new(&gup);

    let p = gup.pin(&space, VA, 5 * PAGE, PIN | WRITE | USER).unwrap();
    assert_eq!((p.pages(), p.short_reason()), (5, None));
    let gpas: Vec<_> = p.extents().iter().map(|e| (e.gpa, e.len)).collect();
    assert_eq!(gpas, vec![(DATA, 5 * PAGE)]);
    assert_eq!(handler.calls(), 3);
    let addrs: Vec<_> = handler.seen().iter().map(|(f, _)| f.address).collect();
    assert_eq!(addrs, vec![VA + PAGE, VA + 3 * PAGE, VA + 4 * PAGE]);
    let d = m.step();
    // The fast path took page 0 and stopped at page 1.
    assert_eq!(d.fast_pages, 1);
    assert_slow(&d, Fallback::NotPresent, 4);
    assert_eq!((d.faults_handled, d.retries, d.faults_failed), (3, 3, 0));
    drop(p);
    assert_released(&gup);
}

#[test]
fn a_handler_that_always_retries_ends_with_again() {
    let gup = engine0();
    let (root, _) = setup(&gup, 1);
    let handler = Recorder::new(|_, _| FaultOutcome::Retry);
    let space = AddressSpace::with_handler(ctx4(root), &handler);
    let mut m = Meter::new(&gup);

    let e = err(gup.pin(&space, VA + PAGE, PAGE, GET));
    assert_eq!(e, GupError::Again);
    assert_eq!(e.errno(), libc::EAGAIN);
    let calls = (MAX_RETRIES + 1) as usize;
    assert_eq!(handler.calls(), calls);
    let d = m.step();
    assert_slow(&d, Fallback::NotPresent, 0);
    assert_eq!((d.faults_handled, d.retries), (calls as u64, calls as u64));

    // With a good page first: that page, then short with Again.
    let p = gup.pin(&space, VA, 2 * PAGE, GET).unwrap();
    assert_eq!((p.pages(), p.short_reason()), (1, Some(&GupError::Again)));
    assert_eq!(handler.calls(), 2 * calls);
    drop(p);
    assert_released(&gup);
}

/// userfaultfd's ioctls (linux/userfaultfd.h): `_IOWR(0xAA, nr, size)`.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
const UFFDIO_POISON: libc::c_ulong = 0xc020_aa08;
const UFFD_API: u64 = 0xaa;
const UFFD_FEATURE_POISON: u64 = 1 << 14;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// Handle user-mode faults only: allowed without privilege (the poison
/// marker does not depend on who would handle faults).
const UFFD_USER_MODE_ONLY: libc::c_int = 1;

/// Make the (never touched) page at `host` read as hardware-poisoned:
/// userfaultfd's UFFDIO_POISON installs a poison marker in the page table
/// entry, so any fault on it reports VM_FAULT_HWPOISON, as a real memory
/// error would, without taking a physical page offline (MADV_HWPOISON
/// would, and needs CONFIG_MEMORY_FAILURE). Err: why it is unavailable.
fn poison(host: usize) -> Result<(), String> {
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain syscall, no pointers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
        )
    };
    if fd < 0 {
        return Err(os("userfaultfd"));
    }
    let fd = fd as libc::c_int;
    let result = (|| {
        // struct uffdio_api { api, features, ioctls }
        let mut api = [UFFD_API, UFFD_FEATURE_POISON, 0u64];
        // SAFETY: `api` is the 24-byte struct the ioctl reads and writes.
        if unsafe { libc::ioctl(fd, UFFDIO_API, api.as_mut_ptr()) } != 0 {
            return Err(os("UFFDIO_API with UFFD_FEATURE_POISON"));
        }
        // struct uffdio_register { range { start, len }, mode, ioctls }
        let mut reg = [host as u64, PAGE, UFFDIO_REGISTER_MODE_MISSING, 0];
        // SAFETY: as above, 32 bytes; the range is one page of our own
        // anonymous mapping.
        if unsafe { libc::ioctl(fd, UFFDIO_REGISTER, reg.as_mut_ptr()) } != 0 {
            return Err(os("UFFDIO_REGISTER"));
        }
        // struct uffdio_poison { range { start, len }, mode, updated }
        let mut poison = [host as u64, PAGE, 0, 0];
        // SAFETY: as above, 32 bytes.
        let rc = unsafe { libc::ioctl(fd, UFFDIO_POISON, poison.as_mut_ptr()) };
        let err = (rc != 0).then(|| os("UFFDIO_POISON"));
        // Unregister, so that no other fault in the region ever waits for
        // a userfaultfd reader; the poison marker stays in the entry.
        let mut range = [host as u64, PAGE];
        // SAFETY: as above, 16 bytes.
        if unsafe { libc::ioctl(fd, UFFDIO_UNREGISTER, range.as_mut_ptr()) } != 0 {
            panic!("{}", os("UFFDIO_UNREGISTER"));
        }
        err.map_or(Ok(()), Err)
    })();
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    result
}

#[test]
fn hw_poison_is_reported() {
    let lazy = RegionOptions {
        lazy: true,
        ..RegionOptions::default()
    };
    let gup = engine(&[(0, 4 * MIB, lazy)], GupConfig::default());
    let map = gup.memory_map();
    let r = map.regions()[0].clone();
    if let Err(why) = poison(r.host_addr(2 * MIB)) {
        eprintln!("SKIPPED hw_poison_is_reported: cannot poison a page here: {why}");
        return;
    }
    let mut m = Meter::new(&gup);
    let e = err(gup.pin(&AddressSpace::Physical, 2 * MIB, PAGE, PIN));
    assert_eq!(e, GupError::HwPoison);
    assert_eq!(e.errno(), libc::EHWPOISON);
    let d = m.step();
    assert_slow(&d, Fallback::NotPopulated, 0);
    assert_eq!(d.populated, 0);
    assert!(r.frames().is_unpopulated(r.frame_index(2 * MIB)));
    // The page before it is fine: a short result.
    let p = gup
        .pin(
            &AddressSpace::Physical,
            2 * MIB - PAGE,
            2 * PAGE,
            PIN | WRITE,
        )
        .unwrap();
    assert_eq!(
        (p.pages(), p.short_reason()),
        (1, Some(&GupError::HwPoison))
    );
    assert_eq!(m.step().populated, 1);
    drop(p);
    assert_released(&gup);
}

#[test]
fn again_when_a_frame_stays_frozen_past_freeze_wait() {
    let wait = Duration::from_millis(30);
    let gup = engine(
        &[(0, RAM0, RegionOptions::default())],
        GupConfig {
            freeze_wait: wait,
            ..GupConfig::default()
        },
    );
    let map = gup.memory_map();
    let mut b = tables(&map);
    b.map(VA, DATA, 1, RW | US | A | D);
    b.map(VA + PAGE, DATA + PAGE, 1, RW | US | A | D);
    b.map(VA + 2 * MIB, DATA + 2 * MIB, 2, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let (r, f) = frame_of(&map, DATA + PAGE);
    r.frames().freeze(f).unwrap();
    let mut m = Meter::new(&gup);

    for (s, addr) in [(space, VA + PAGE), (AddressSpace::Physical, DATA + PAGE)] {
        let t = Instant::now();
        let e = err(gup.pin(&s, addr, PAGE, PIN));
        assert_eq!(e, GupError::Again);
        assert!(t.elapsed() >= wait, "{:?}", t.elapsed());
        let d = m.step();
        assert_slow(&d, Fallback::Frozen, 0);
        assert!(d.frozen_waits > 0);
    }
    // A page before it is taken: short with Again.
    let p = gup.pin(&space, VA, 2 * PAGE, PIN | WRITE).unwrap();
    assert_eq!((p.pages(), p.short_reason()), (1, Some(&GupError::Again)));
    drop(p);
    assert_eq!(r.frames().total_refs(), 0);

    // A frozen frame inside a 2M leaf refuses the block pin.
    let (_, fb) = frame_of(&map, DATA + 3 * MIB);
    r.frames().freeze(fb).unwrap();
    m.step();
    assert_eq!(
        err(gup.pin(&space, VA + 2 * MIB, 2 * MIB, GET)),
        GupError::Again
    );
    assert_slow(&m.step(), Fallback::Frozen, 0);
    r.frames().unfreeze(fb);
    r.frames().unfreeze(f);
    drop(gup.pin(&space, VA, 2 * PAGE, PIN).unwrap());
    drop(gup.pin(&space, VA + 2 * MIB, 2 * MIB, GET).unwrap());
    assert_released(&gup);
}

#[test]
fn interrupted_by_the_cancel_token() {
    let gup = engine(
        &[(0, RAM0, RegionOptions::default())],
        GupConfig {
            freeze_wait: Duration::from_secs(30),
            ..GupConfig::default()
        },
    );
    let (root, ptes) = setup(&gup, 3);
    let map = gup.memory_map();
    let mem = map.memory();
    let token = CancelToken::new();
    let space = AddressSpace::page_tables(ctx4(root));
    let mut m = Meter::new(&gup);

    // Cancelled before the request: the fast path does not look (it takes
    // only what is already perfect, without waiting), the slow path stops.
    token.cancel();
    let p = gup
        .pin_cancellable(&space, VA, 2 * PAGE, PIN, Some(&token))
        .unwrap();
    assert_eq!(p.pages(), 2);
    assert_fast(&m.step(), 2);
    drop(p);
    // Page 0 loses its A bit: the slow path is needed, and stops.
    w64(mem, ptes[0], DATA | P | RW | US);
    let e = err(gup.pin_cancellable(&space, VA, PAGE, PIN | TOUCH, Some(&token)));
    assert_eq!(e, GupError::Interrupted);
    assert_eq!(e.errno(), libc::EINTR);
    let d = m.step();
    assert_slow(&d, Fallback::AccessedDirty, 0);
    assert_eq!(d.touched, 0, "cancelled before the first page");

    // Cancelled between pages: the handler resolves the fault and the
    // device resets at the same moment.
    let token = CancelToken::new();
    let handler = Recorder::new(|f, _| {
        w64(mem, ptes[3], (DATA + 3 * PAGE) | P | RW | US | A | D);
        assert_eq!(f.address, VA + 3 * PAGE);
        token.cancel();
        FaultOutcome::Retry
    });
    let with = AddressSpace::with_handler(ctx4(root), &handler);
    let p = gup
        .pin_cancellable(&with, VA + PAGE, 3 * PAGE, PIN, Some(&token))
        .unwrap();
    assert_eq!(
        (p.pages(), p.short_reason()),
        (2, Some(&GupError::Interrupted))
    );
    assert_eq!(handler.calls(), 1);
    drop(p);

    // Cancelled while waiting for a frozen frame (freeze_wait is 30 s).
    let token = CancelToken::new();
    let (r, f) = frame_of(&map, DATA + PAGE);
    r.frames().freeze(f).unwrap();
    let t = Instant::now();
    let e = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            token.cancel();
        });
        gup.pin_cancellable(&space, VA + PAGE, PAGE, GET, Some(&token))
    });
    assert_eq!(e.unwrap_err(), GupError::Interrupted);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    r.frames().unfreeze(f);
    assert_released(&gup);
}

#[test]
fn errno_of_every_error() {
    let fault = GupError::Fault {
        address: 0x1000,
        fault: None,
        inject: None,
    };
    let table = [
        (fault, libc::EFAULT),
        (GupError::NoMemory, libc::ENOMEM),
        (GupError::HwPoison, libc::EHWPOISON),
        (GupError::Again, libc::EAGAIN),
        (GupError::Interrupted, libc::EINTR),
        (GupError::Invalid("x"), libc::EINVAL),
        (GupError::Overflow, libc::EOVERFLOW),
    ];
    let mut texts = std::collections::HashSet::new();
    for (e, errno) in table {
        assert_eq!(e.errno(), errno, "{e:?}");
        assert!(texts.insert(e.to_string()), "{e}: same text as another");
    }
}

#[test]
fn an_error_only_when_nothing_was_taken() {
    // For each way a request can stop, the same stop after one good page
    // gives that page and the reason; with no good page, the error.
    let gup = engine(
        &[(0, RAM0, RegionOptions::default())],
        GupConfig {
            freeze_wait: Duration::from_millis(5),
            ..GupConfig::default()
        },
    );
    let (root, _) = setup(&gup, 4);
    let map = gup.memory_map();
    let space = AddressSpace::page_tables(ctx4(root));
    let (r, f) = frame_of(&map, DATA + 2 * PAGE);
    r.frames().freeze(f).unwrap();
    let cancelled = CancelToken::new();
    cancelled.cancel();
    let fault = GupError::Fault {
        address: VA + 4 * PAGE,
        fault: Some(pf(VA + 4 * PAGE, 0, 1, FaultReason::NotPresent)),
        inject: None,
    };
    // (first bad page, token, the error): page 2 is frozen, page 4 has no
    // entry (with a cancelled token the slow path stops before looking).
    let cases = [
        (2, None, GupError::Again),
        (4, Some(&cancelled), GupError::Interrupted),
        (4, None, fault),
    ];
    for (bad, token, want) in cases {
        let p = gup
            .pin_cancellable(&space, VA + (bad - 1) * PAGE, 2 * PAGE, GET, token)
            .unwrap();
        let short = match (p.short_reason(), want) {
            // The short Fault names the page where it stopped.
            (Some(GupError::Fault { address, .. }), GupError::Fault { .. }) => {
                assert_eq!(*address, VA + bad * PAGE);
                want
            }
            (s, _) => *s.unwrap(),
        };
        assert_eq!((p.pages(), short), (1, want));
        assert_eq!(gup.stats().gets_outstanding, 1);
        drop(p);
        let e = gup
            .pin_cancellable(&space, VA + bad * PAGE, PAGE, GET, token)
            .unwrap_err();
        assert_eq!(e, want);
    }
    r.frames().unfreeze(f);
    assert_released(&gup);
}
