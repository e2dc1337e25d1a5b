// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The guest-agent scenarios (docs/guest-agent.md): the VMM copies bytes to
//! or from guest-virtual buffers in this program's address space, and when
//! a page is missing it injects the #PF into this vCPU; the CPL0 handler's
//! demand paging ([`boot`](crate::boot): the lazy region) maps the page and
//! returns to the `out`, which the CPU executes again.
//!
//! The lazy region's pages are given a policy first: pages 0..256 are
//! mapped read/write on demand, 256..384 read-only, 384..512 refused. Then:
//!
//! 1. demand paging on its own: a CPL3 write to an unmapped lazy page (1 #PF);
//! 2. PING: is the agent there (under other VMMs port 0xf8 is nothing: the
//!    agent checks are skipped, said on a plain line, not a check);
//! 3. FILL of 4 unmapped pages (starting mid-page, crossing 3 4K
//!    boundaries): 4 #PFs injected, each mapped, the data verified;
//! 4. SUM of that buffer (mapped now: no #PF) and of 3 unmapped read-only
//!    pages (3 read #PFs), each equal to this program's own FNV-1a;
//! 5. FILL of a read-only page: the handler "maps" it again and again
//!    without resolving the write fault; the VMM gives up after 16
//!    injections with status FAULT, CR2 and error code 0x7;
//! 6. FILL of a refused page: the handler takes the ordinary path and the
//!    call resumes at its fixup with the #PF (vector 14, error 0x6) recorded;
//! 7. bad requests: unknown operation, 2 MiB, non-canonical address, a
//!    buffer in no RAM: each its error status.
//!
//! Then one summary line, `guest: agent: requests=... injected_seen=...`,
//! with the number of #PFs the VMM injected as this program saw them (the
//! integration test compares it with the VMM's own count).

use core::arch::asm;
use core::fmt::Write;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use crate::boot::{self, LAZY_BASE, LAZY_PHYS, LAZY_SIZE};
use crate::pvh;
use crate::serial::Serial;
use crate::{last_trap, record, Report, Trap};

/// The agent's port.
pub const PORT: u16 = 0xf8;
/// What PING returns in RDX.
const MAGIC: u64 = u64::from_le_bytes(*b"gmmagent");

/// Operations (RAX).
mod op {
    pub const PING: u64 = 0;
    pub const FILL: u64 = 1;
    pub const SUM: u64 = 2;
}

/// Statuses (RAX after the `out`).
mod status {
    pub const OK: u64 = 0;
    pub const UNKNOWN_OP: u64 = 1;
    pub const TOO_LONG: u64 = 2;
    pub const BAD_ADDRESS: u64 = 3;
    pub const NO_RAM: u64 = 4;
    pub const FAULT: u64 = 5;
}

/// PTE flags of the policy: present, writable, user; present, user.
const RW: u8 = 0x7;
const RO: u8 = 0x5;
/// Policy boundaries (lazy page indexes).
const RO_FIRST: u64 = 256;
const REFUSED_FIRST: u64 = 384;
const PAGE: u64 = 0x1000;

/// What the agent answered, or the exception that stopped the call.
#[derive(Clone, Copy)]
enum Answer {
    Reply { status: u64, value: u64, code: u64 },
    Trap(Trap),
}

/// Counts for the summary line.
#[derive(Default)]
struct Tally {
    requests: u64,
    injected_seen: u64,
    lazy_mapped: u64,
    refused: u64,
    own_faults: u64,
    bytes_verified: u64,
}

fn lazy_faults() -> u64 {
    // SAFETY: a static written by the CPL0 handler only while this code is
    // stopped at a faulting instruction.
    unsafe { read_volatile(addr_of!(boot::lazy_faults)) }
}

fn lazy_last() -> (u64, u64) {
    // SAFETY: as in `lazy_faults`.
    unsafe {
        (
            read_volatile(addr_of!(boot::lazy_last_cr2)),
            read_volatile(addr_of!(boot::lazy_last_error)),
        )
    }
}

/// One request: `out %al, $0xf8` with RAX = `op`, RDI = `addr`, RSI =
/// `len`, RDX = `seed`, and a fixup after it, so an exception the #PF
/// handler does not resolve ends the call instead of the program.
fn call(op: u64, addr: u64, len: u64, seed: u64, tally: &mut Tally) -> Answer {
    tally.requests += 1;
    let r = record();
    let before = last_trap().count;
    let (status, value, code): (u64, u64, u64);
    // SAFETY: the VMM reads the registers and writes only inside the
    // buffer the request names (which the callers own: lazy-region pages or
    // nothing at all) and RAX, RCX, RDX; the fixup is the label after the
    // `out`, where the exception entry resumes with every register kept.
    unsafe {
        let fixup = addr_of_mut!((*r).fixup);
        asm!("lea {t}, [rip + 2f]", "mov [{f}], {t}", "out {port}, al", "2:",
             port = const PORT, f = in(reg) fixup, t = out(reg) _,
             inout("rax") op => status, in("rdi") addr, in("rsi") len,
             inout("rdx") seed => value, inout("rcx") u64::MAX => code,
             options(nostack));
        write_volatile(fixup, 0);
    }
    let t = last_trap();
    if t.count != before {
        return Answer::Trap(t);
    }
    Answer::Reply {
        status,
        value,
        code,
    }
}

/// Byte `i` of the FILL pattern seeded by `seed` (the VMM's definition:
/// byte `i % 8` of splitmix64 of `seed + i / 8`).
fn pattern_byte(seed: u64, i: u64) -> u8 {
    let mut z = seed.wrapping_add(i / 8).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).to_le_bytes()[(i % 8) as usize]
}

/// FNV-1a 64 of `len` bytes at `addr` (read at CPL3).
fn fnv1a(addr: u64, len: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..len {
        // SAFETY: the caller's buffer, mapped (or mapped on demand).
        let b = unsafe { read_volatile((addr + i) as *const u8) };
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn lazy(page: u64) -> u64 {
    LAZY_BASE + page * PAGE
}

/// Runs the scenarios (see the module doc).
pub fn run(report: &mut Report) {
    if !pvh::ram_covers(LAZY_PHYS, LAZY_PHYS + LAZY_SIZE) {
        let _ = writeln!(
            Serial,
            "guest: [skip] agent: the lazy region's memory {LAZY_PHYS:#x}..{:#x} is not RAM (give the guest at least 16 MiB)",
            LAZY_PHYS + LAZY_SIZE
        );
        return;
    }
    let policy = addr_of_mut!(boot::lazy_policy);
    for page in 0..REFUSED_FIRST {
        let flags = if page < RO_FIRST { RW } else { RO };
        // SAFETY: a static read by the CPL0 handler; written before any
        // lazy page is touched.
        unsafe { write_volatile(addr_of_mut!((*policy)[page as usize]), flags) };
    }
    let mut tally = Tally::default();

    // 1. Demand paging on its own: a CPL3 write, one #PF, the page mapped.
    let own = lazy(RO_FIRST - 1) + 0x10;
    let before = lazy_faults();
    // SAFETY: a lazy read/write page, mapped on demand by the #PF handler.
    unsafe { write_volatile(own as *mut u64, 0x1a2b_3c4d) };
    let took = lazy_faults() - before;
    tally.own_faults += took;
    let (cr2, error) = lazy_last();
    let phys = LAZY_PHYS + (own - LAZY_BASE);
    // SAFETY: the page table is a static; the handler wrote this entry.
    let pte = unsafe { read_volatile(addr_of!(boot::lazy_pt[(RO_FIRST - 1) as usize])) };
    // The CPU may have set Accessed and Dirty (0x60) since.
    let pte_ok = pte & !0x60 == (phys & !(PAGE - 1)) | u64::from(RW);
    report.check(
        took == 1 && cr2 == own && error == 0x6 && pte_ok && pvh::read_u64(phys) == 0x1a2b_3c4d,
        format_args!(
            "lazy #PF: a CPL3 write to {own:#x} took {took} #PF (error {error:#x}), PTE {pte:#x} maps {phys:#x}"
        ),
    );

    // 2. Is the agent there?
    match call(op::PING, 0, 0, 0, &mut tally) {
        Answer::Reply {
            status: status::OK,
            value: MAGIC,
            ..
        } => {}
        _ => {
            let _ = writeln!(
                Serial,
                "guest: agent: no guest agent at port {PORT:#x} (not guest-mm's vmm); agent checks skipped"
            );
            return;
        }
    }

    fill_lazy(report, &mut tally);
    sums(report, &mut tally);
    read_only_gives_up(report, &mut tally);
    refused(report, &mut tally);
    bad_requests(report, &mut tally);

    let _ = writeln!(
        Serial,
        "guest: agent: requests={} injected_seen={} lazy_mapped={} refused={} own_faults={} bytes_verified={}",
        tally.requests,
        tally.injected_seen,
        tally.lazy_mapped,
        tally.refused,
        tally.own_faults,
        tally.bytes_verified
    );
}

/// 3. FILL across 4 unmapped pages.
fn fill_lazy(report: &mut Report, tally: &mut Tally) {
    let (addr, len, seed) = (lazy(0) + 0x800, 3 * PAGE + 0x400, 0x5eed_0001);
    let before = lazy_faults();
    let answer = call(op::FILL, addr, len, seed, tally);
    let took = lazy_faults() - before;
    tally.injected_seen += took;
    tally.lazy_mapped += took;
    let (_, error) = lazy_last();
    let pages = (addr + len).div_ceil(PAGE) - addr / PAGE;
    let mut bad = 0u64;
    for i in 0..len {
        // SAFETY: mapped by now (or faulting in through the handler).
        let b = unsafe { read_volatile((addr + i) as *const u8) };
        bad += u64::from(b != pattern_byte(seed, i));
    }
    // The bytes before the buffer on its first page are untouched.
    let below = pvh::read_u64(LAZY_PHYS + 0x7f8);
    let ok = matches!(
        answer,
        Answer::Reply {
            status: status::OK,
            ..
        }
    ) && took == pages
        && pages == 4
        && error == 0x6
        && bad == 0
        && below == 0;
    if ok {
        tally.bytes_verified += len;
    }
    report.check(
        ok,
        format_args!(
            "agent: FILL of {len} bytes at {addr:#x} over {pages} unmapped lazy pages: {took} #PFs injected (last error {error:#x}) and mapped, {} bytes verified, {bad} wrong",
            len - bad
        ),
    );
}

/// 4. SUM of the filled buffer, and of unmapped read-only pages.
fn sums(report: &mut Report, tally: &mut Tally) {
    let (addr, len) = (lazy(0) + 0x800, 3 * PAGE + 0x400);
    let before = lazy_faults();
    let answer = call(op::SUM, addr, len, 0, tally);
    let took = lazy_faults() - before;
    let want = fnv1a(addr, len);
    let ok = matches!(answer, Answer::Reply { status: status::OK, value, .. } if value == want)
        && took == 0;
    if ok {
        tally.bytes_verified += len;
    }
    report.check(
        ok,
        format_args!("agent: SUM of the filled buffer (mapped): FNV-1a {want:#018x}, {took} #PFs"),
    );

    let (addr, len) = (lazy(RO_FIRST) + 0x100, 2 * PAGE + 0x200);
    let before = lazy_faults();
    let answer = call(op::SUM, addr, len, 0, tally);
    let took = lazy_faults() - before;
    tally.injected_seen += took;
    tally.lazy_mapped += took;
    let (_, error) = lazy_last();
    let want = fnv1a(addr, len);
    let got = match answer {
        Answer::Reply { status, value, .. } if status == status::OK => Some(value),
        _ => None,
    };
    let ok = got == Some(want) && took == 3 && error == 0x4;
    if ok {
        tally.bytes_verified += len;
    }
    report.check(
        ok,
        format_args!(
            "agent: SUM of {len} bytes at {addr:#x} over 3 unmapped read-only lazy pages: {took} read #PFs (last error {error:#x}), FNV-1a matches"
        ),
    );
}

/// 5. A write the handler never resolves: the VMM gives up.
fn read_only_gives_up(report: &mut Report, tally: &mut Tally) {
    let addr = lazy(RO_FIRST) + 0x40;
    // SAFETY: mapped read-only by the SUM above.
    let kept = unsafe { read_volatile(addr as *const u64) };
    let before = lazy_faults();
    let answer = call(op::FILL, addr, 64, 1, tally);
    let took = lazy_faults() - before;
    tally.injected_seen += took;
    tally.lazy_mapped += took;
    let (_, error) = lazy_last();
    // SAFETY: as above.
    let now = unsafe { read_volatile(addr as *const u64) };
    let ok = matches!(answer, Answer::Reply { status: status::FAULT, value, code }
            if value == addr && code == 0x7)
        && took == 16
        && error == 0x7
        && now == kept;
    report.check(
        ok,
        format_args!(
            "agent: FILL of a read-only lazy page {addr:#x}: the handler re-mapped it {took} times (error {error:#x}), the VMM gave up with status FAULT, page intact"
        ),
    );
}

/// 6. A page the handler refuses: the call resumes at its fixup.
fn refused(report: &mut Report, tally: &mut Tally) {
    let addr = lazy(REFUSED_FIRST + 16) + 0x123;
    let before = lazy_faults();
    let answer = call(op::FILL, addr, 16, 2, tally);
    let took = lazy_faults() - before;
    let ok = match answer {
        Answer::Trap(t) => {
            tally.injected_seen += 1;
            tally.refused += 1;
            t.vector == 14 && t.cr2 == addr && t.error == 0x6 && took == 0
        }
        Answer::Reply { .. } => false,
    };
    report.check(
        ok,
        format_args!(
            "agent: FILL of a refused lazy page {addr:#x}: the injected #PF reached the ordinary handler, the call resumed at its fixup"
        ),
    );
}

/// 7. Requests the agent refuses with an error status.
fn bad_requests(report: &mut Report, tally: &mut Tally) {
    let cases: [(&str, u64, u64, u64, u64, u64); 4] = [
        // (what, op, addr, len, status, RDX)
        (
            "unknown operation 0x77",
            0x77,
            lazy(0),
            8,
            status::UNKNOWN_OP,
            0,
        ),
        (
            "2 MiB buffer",
            op::SUM,
            lazy(0),
            2 << 20,
            status::TOO_LONG,
            0,
        ),
        (
            "non-canonical address",
            op::SUM,
            0x8000_0000_0000,
            8,
            status::BAD_ADDRESS,
            0x8000_0000_0000,
        ),
        (
            "buffer in no RAM (the MMIO window)",
            op::SUM,
            crate::boot::MMIO_WINDOW,
            8,
            status::NO_RAM,
            crate::boot::MMIO_WINDOW,
        ),
    ];
    for (what, o, addr, len, want, value) in cases {
        let before = lazy_faults();
        let answer = call(o, addr, len, 0, tally);
        let took = lazy_faults() - before;
        let (ok, got) = match answer {
            Answer::Reply {
                status, value: v, ..
            } => (status == want && v == value && took == 0, status),
            Answer::Trap(t) => (false, 100 + t.vector),
        };
        report.check(
            ok,
            format_args!("agent: bad request, {what}: status {got} (want {want})"),
        );
    }
}
