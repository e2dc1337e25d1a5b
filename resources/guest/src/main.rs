// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The built-in guest (DESIGN section 7): a freestanding PVH kernel. The
//! CPL0 part ([`boot`]) enters long mode and drops to CPL3, where this file
//! runs a few checks of the machine it was given, prints one line per check
//! on COM1 and exits through the exit port with a [`status`] value.
//!
//! Build: `cd resources/guest && cargo build --release` (see resources/README.md).

#![no_std]
#![no_main]

mod boot;
mod mem;
mod serial;

use core::arch::asm;
use core::fmt::{self, Write};
use core::panic::PanicInfo;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use boot::{
    TrapRecord, ALIAS_2M, ALIAS_2M_TARGET, ALIAS_4K, GATE_INFO_VECTOR, GATE_STOP_VECTOR,
    HIGH_ALIAS, KERNEL_CS, USER_CS, USER_DS, USER_RFLAGS,
};
use serial::{outb, Serial};

/// Exit status values written to the exit port (QEMU's isa-debug-exit then
/// exits with `(status << 1) | 1`).
pub mod status {
    /// Every check passed.
    pub const PASS: u8 = 0;
    /// At least one check failed (the report says which).
    pub const CHECK_FAILED: u8 = 1;
    /// An exception nobody expected (the report gives vector, error code, RIP, CR2).
    pub const UNEXPECTED_EXCEPTION: u8 = 2;
    /// A Rust panic (the report gives the message).
    pub const PANIC: u8 = 3;
}

/// The exit port (QEMU isa-debug-exit compatible).
const EXIT_PORT: u16 = 0xf4;
/// The i8042 command port; 0xfe pulses the CPU reset line.
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;
/// `hvm_start_info.magic`.
const PVH_MAGIC: u32 = 0x336e_c578;
/// Memory below this is identity-mapped (and readable at CPL3).
const IDENTITY_LIMIT: u64 = 0x4000_0000;

/// Counts of the checks made so far.
struct Report {
    checks: u32,
    failed: u32,
}

impl Report {
    /// Prints one check line: `guest: [ok] ...` or `guest: [FAIL] ...`.
    fn check(&mut self, ok: bool, args: fmt::Arguments) {
        self.checks += 1;
        if !ok {
            self.failed += 1;
        }
        let _ = writeln!(
            Serial,
            "guest: [{}] {}",
            if ok { "ok" } else { "FAIL" },
            args
        );
    }
}

/// Stops the VM with `status`: the exit port, else an i8042 reset, else a
/// triple fault.
fn exit(status: u8) -> ! {
    outb(EXIT_PORT, status);
    let _ = writeln!(
        Serial,
        "guest: the exit port did not stop the VM; i8042 reset"
    );
    outb(I8042_COMMAND, I8042_RESET);
    let _ = writeln!(
        Serial,
        "guest: the i8042 reset did not stop the VM; triple fault"
    );
    // SAFETY: a DPL3 gate whose handler never returns.
    unsafe { asm!("int {v}", v = const GATE_STOP_VECTOR, options(nomem, nostack)) };
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let _ = writeln!(Serial, "guest: panic: {info}");
    exit(status::PANIC)
}

/// Entered from `boot` at CPL3 after an exception with no fixup set.
#[no_mangle]
extern "C" fn guest_unexpected_trap() -> ! {
    let t = last_trap();
    let _ = writeln!(
        Serial,
        "guest: unexpected exception: vector {} error {:#x} rip {:#x} cs {:#x} cr2 {:#x}",
        t.vector, t.error, t.rip, t.cs, t.cr2
    );
    exit(status::UNEXPECTED_EXCEPTION)
}

/// A copy of the exception record.
#[derive(Clone, Copy)]
struct Trap {
    vector: u64,
    error: u64,
    cr2: u64,
    rip: u64,
    cs: u64,
    count: u64,
    handler_rsp: u64,
}

fn record() -> *mut TrapRecord {
    addr_of_mut!(boot::trap_record)
}

fn last_trap() -> Trap {
    let r = record();
    // SAFETY: `trap_record` is a static written by the CPL0 exception entry
    // only while this code is stopped at a faulting instruction; volatile
    // reads see the values it stored.
    unsafe {
        Trap {
            vector: read_volatile(addr_of!((*r).vector)),
            error: read_volatile(addr_of!((*r).error)),
            cr2: read_volatile(addr_of!((*r).cr2)),
            rip: read_volatile(addr_of!((*r).rip)),
            cs: read_volatile(addr_of!((*r).cs)),
            count: read_volatile(addr_of!((*r).count)),
            handler_rsp: read_volatile(addr_of!((*r).handler_rsp)),
        }
    }
}

/// An access made at CPL3 that may fault.
#[derive(Clone, Copy)]
enum Probe {
    Read(u64),
    Write(u64),
    Hlt,
    Ud2,
}

/// Makes the access with a fixup set, so an exception resumes right after
/// it. Returns the exception, or `None` when the access completed.
fn probe(p: Probe) -> Option<Trap> {
    let r = record();
    let before = last_trap().count;
    // SAFETY: the fixup is the label after the access; the exception entry
    // resumes there with every register preserved. Writes go only to the
    // test aliases of `test_page` (or fault). `hlt` and `ud2` at CPL3 fault.
    unsafe {
        let fixup = addr_of_mut!((*r).fixup);
        match p {
            Probe::Read(addr) => asm!(
                "lea {t}, [rip + 2f]", "mov [{f}], {t}", "mov {t:l}, byte ptr [{a}]", "2:",
                f = in(reg) fixup, a = in(reg) addr, t = out(reg) _, options(nostack)),
            Probe::Write(addr) => asm!(
                "lea {t}, [rip + 2f]", "mov [{f}], {t}", "mov byte ptr [{a}], 0x5a", "2:",
                f = in(reg) fixup, a = in(reg) addr, t = out(reg) _, options(nostack)),
            Probe::Hlt => asm!(
                "lea {t}, [rip + 2f]", "mov [{f}], {t}", "hlt", "2:",
                f = in(reg) fixup, t = out(reg) _, options(nostack)),
            Probe::Ud2 => asm!(
                "lea {t}, [rip + 2f]", "mov [{f}], {t}", "ud2", "2:",
                f = in(reg) fixup, t = out(reg) _, options(nostack)),
        }
        write_volatile(fixup, 0);
    }
    let t = last_trap();
    (t.count != before).then_some(t)
}

fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u64, u32, u32);
    // SAFETY: CPUID has no memory effects; RBX (reserved by LLVM) is saved
    // and restored around it.
    unsafe {
        asm!("mov {b}, rbx", "cpuid", "xchg {b}, rbx",
             b = out(reg) b, inout("eax") leaf => a, inout("ecx") subleaf => c, out("edx") d,
             options(nomem, nostack, preserves_flags));
    }
    [a, b as u32, c, d]
}

fn read_u32(paddr: u64) -> u32 {
    // SAFETY: callers pass identity-mapped addresses below IDENTITY_LIMIT.
    unsafe { read_volatile(paddr as *const u32) }
}

fn read_u64(paddr: u64) -> u64 {
    // SAFETY: as for `read_u32`.
    unsafe { read_volatile(paddr as *const u64) }
}

/// The first CPL3 code, called by `boot` after IRETQ.
#[no_mangle]
extern "C" fn guest_main() -> ! {
    let mut report = Report {
        checks: 0,
        failed: 0,
    };
    // The CPL comes from the CS the CPU pushed when this code called the
    // gate: a paravirtualized CPU may show other values to `mov from cs`
    // and `pushf` at CPL3 (kvm_pvm shows the host's user selectors).
    let g = gate_info();
    let cpl = g.caller_cs & 3;
    let _ = writeln!(Serial, "guest: hello from CPL{cpl}");
    let iopl = (g.caller_rflags >> 12) & 3;
    report.check(
        g.caller_cs == USER_CS && g.caller_ss == USER_DS && g.caller_rflags == USER_RFLAGS,
        format_args!(
            "running at CPL{cpl}: cs={:#x} ss={:#x} rflags={:#x} (IOPL {iopl}) as pushed by int {GATE_INFO_VECTOR:#x}",
            g.caller_cs, g.caller_ss, g.caller_rflags
        ),
    );
    check_control_registers(&mut report, &g);
    check_start_info(&mut report);
    let has_1g = check_cpuid(&mut report);
    check_sse(&mut report);
    check_mappings(&mut report, has_1g);
    check_exceptions(&mut report);

    let status = if report.failed == 0 {
        status::PASS
    } else {
        status::CHECK_FAILED
    };
    let _ = writeln!(
        Serial,
        "guest: {} checks, {} failed; exit status {status}",
        report.checks, report.failed
    );
    exit(status)
}

/// The PVH `hvm_start_info` the loader passed in EBX.
fn check_start_info(report: &mut Report) {
    // SAFETY: written once at CPL0 before CPL3 started.
    let si = unsafe { read_volatile(addr_of!(boot::start_info_paddr)) };
    if si == 0 || si + 56 > IDENTITY_LIMIT {
        report.check(
            false,
            format_args!("pvh start_info at {si:#x}: not in identity-mapped memory"),
        );
        return;
    }
    let magic = read_u32(si);
    let version = read_u32(si + 4);
    if magic != PVH_MAGIC {
        report.check(
            false,
            format_args!("pvh start_info at {si:#x}: magic {magic:#x}"),
        );
        return;
    }
    // Version 1 adds the memory map (memmap_paddr at 40, memmap_entries at 48).
    let (mut entries, mut ram) = (0u32, 0u64);
    if version >= 1 {
        let map = read_u64(si + 40);
        entries = read_u32(si + 48);
        for i in 0..u64::from(entries) {
            let e = map + i * 24;
            if e + 24 > IDENTITY_LIMIT {
                break;
            }
            // hvm_memmap_table_entry: addr, size, type (1 = RAM).
            if read_u32(e + 16) == 1 {
                ram += read_u64(e + 8);
            }
        }
    }
    report.check(
        version == 0 || (entries > 0 && ram > 0),
        format_args!(
            "pvh start_info at {si:#x}: magic ok, version {version}, {entries} memory map entries, {} MiB RAM",
            ram >> 20
        ),
    );
}

/// CPUID: what the CPU offers; returns whether it has 1-GByte pages.
fn check_cpuid(report: &mut Report) -> bool {
    let v = cpuid(0, 0);
    let mut vendor = [0u8; 12];
    for (i, reg) in [v[1], v[3], v[2]].iter().enumerate() {
        vendor[i * 4..i * 4 + 4].copy_from_slice(&reg.to_le_bytes());
    }
    let vendor = core::str::from_utf8(&vendor).unwrap_or("?");
    let f1 = cpuid(1, 0);
    let sse2 = f1[3] & (1 << 26) != 0;
    let max_ext = cpuid(0x8000_0000, 0)[0];
    let e1 = if max_ext >= 0x8000_0001 {
        cpuid(0x8000_0001, 0)
    } else {
        [0; 4]
    };
    let (nx, pdpe1gb, lm) = (
        e1[3] & (1 << 20) != 0,
        e1[3] & (1 << 26) != 0,
        e1[3] & (1 << 29) != 0,
    );
    let maxphyaddr = if max_ext >= 0x8000_0008 {
        cpuid(0x8000_0008, 0)[0] & 0xff
    } else {
        36
    };
    let yn = |b: bool| if b { "yes" } else { "no" };
    report.check(
        sse2 && lm,
        format_args!(
            "cpuid: {vendor}, long mode {}, sse2 {}, nx {}, 1G pages {}, maxphyaddr {maxphyaddr}",
            yn(lm),
            yn(sse2),
            yn(nx),
            yn(pdpe1gb)
        ),
    );
    pdpe1gb
}

/// What the info gate returns.
struct GateInfo {
    cr0: u64,
    cr4: u64,
    handler_cs: u64,
    caller_cs: u64,
    caller_rflags: u64,
    caller_ss: u64,
}

/// Calls the DPL3 info gate (CPL3 -> CPL0 -> CPL3).
fn gate_info() -> GateInfo {
    let (cr0, cr4, handler_cs, caller_cs, caller_rflags, caller_ss): (
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
    );
    // SAFETY: the gate only reads CR0, CR4, CS and its interrupt frame into
    // RAX, RDX, RSI, RDI, R8 and R9 and returns with IRETQ.
    unsafe {
        asm!("int {v}", v = const GATE_INFO_VECTOR,
             out("rax") cr0, out("rdx") cr4, out("rsi") handler_cs, out("rdi") caller_cs,
             out("r8") caller_rflags, out("r9") caller_ss, options(nomem, nostack));
    }
    GateInfo {
        cr0,
        cr4,
        handler_cs: handler_cs & 0xffff,
        caller_cs,
        caller_rflags,
        caller_ss,
    }
}

/// CR0 and CR4 as CPL0 set them, fetched through the info gate.
fn check_control_registers(report: &mut Report, g: &GateInfo) {
    let (cr0, cr4, cs) = (g.cr0, g.cr4, g.handler_cs);
    // CR0: PE, MP, WP, PG set; EM, TS clear. CR4: PAE, OSFXSR, OSXMMEXCPT.
    let cr0_ok = cr0 & 0x8001_000f == 0x8001_0003;
    let cr4_ok = cr4 & 0x620 == 0x620;
    report.check(
        cs == KERNEL_CS && cr0_ok && cr4_ok,
        format_args!(
            "int {GATE_INFO_VECTOR:#x} gate ran at cs={cs:#x}: cr0={cr0:#x} cr4={cr4:#x} (PG PE WP MP, PAE OSFXSR OSXMMEXCPT)"
        ),
    );
}

/// SSE at CPL3: a packed add and a square root, and MXCSR.
fn check_sse(report: &mut Report) {
    let a: [u32; 4] = core::hint::black_box([1, 2, 3, 0xffff_ffff]);
    let b: [u32; 4] = core::hint::black_box([10, 20, 30, 2]);
    let mut sum = [0u32; 4];
    let two: f64 = core::hint::black_box(2.0);
    let root: f64;
    let mut mxcsr = 0u32;
    // SAFETY: reads `a` and `b`, writes `sum` and `mxcsr`, all live locals.
    unsafe {
        asm!("movdqu xmm0, [{a}]", "movdqu xmm1, [{b}]", "paddd xmm0, xmm1", "movdqu [{s}], xmm0",
             "sqrtsd {r}, {r}", "stmxcsr [{m}]",
             a = in(reg) a.as_ptr(), b = in(reg) b.as_ptr(), s = in(reg) sum.as_mut_ptr(),
             m = in(reg) &mut mxcsr, r = inout(xmm_reg) two => root,
             out("xmm0") _, out("xmm1") _, options(nostack));
    }
    let expect: [u32; 4] = core::array::from_fn(|i| a[i].wrapping_add(b[i]));
    // sqrt(2) correctly rounded (IEEE 754 requires it).
    let ok = sum == expect && root.to_bits() == 0x3ff6_a09e_667f_3bcd;
    report.check(
        ok,
        format_args!("sse: paddd and sqrtsd at CPL3, mxcsr={mxcsr:#x}"),
    );
}

/// Writes through one mapping, reads through another.
fn check_mappings(report: &mut Report, cpuid_1g: bool) {
    let page = addr_of_mut!(boot::test_page) as u64;
    // 4K: write through the user alias, read through the identity map, and back.
    let mut ok = true;
    for i in 0..512u64 {
        let v = 0x4b4b_0000_0000_0000 | (i * 0x1_0001);
        // SAFETY: ALIAS_4K maps test_page read/write for CPL3; both views
        // cover the same 4 KiB.
        unsafe { write_volatile((ALIAS_4K + i * 8) as *mut u64, v) };
        ok &= read_u64(page + i * 8) == v;
        // SAFETY: as above.
        unsafe { write_volatile((page + i * 8) as *mut u64, !v) };
        ok &= read_u64(ALIAS_4K + i * 8) == !v;
    }
    // The read-only alias reads the same data.
    ok &= read_u64(ALIAS_4K + 0x2000 + 8) == read_u64(page + 8);
    report.check(
        ok,
        format_args!("4K leaf: {ALIAS_4K:#x} and its read-only alias see page {page:#x} (512 words each way)"),
    );

    // 2M: both ends of the 2M alias.
    let mut ok = true;
    for off in [0u64, 0x1234 * 8, 0x1f_fff8] {
        let v = 0x3232_0000_0000_0000 | off;
        // SAFETY: ALIAS_2M maps ALIAS_2M_TARGET (2 MiB) read/write; the
        // target is guest RAM the image does not use.
        unsafe { write_volatile((ALIAS_2M + off) as *mut u64, v) };
        ok &= read_u64(ALIAS_2M_TARGET + off) == v;
    }
    report.check(
        ok,
        format_args!("2M leaf: {ALIAS_2M:#x} -> {ALIAS_2M_TARGET:#x}, first and last words"),
    );

    // The high alias: a 1G leaf where CPUID allows, else the identity PD.
    // SAFETY: the PDPT is a static in identity-mapped, user-readable memory.
    let pdpte = unsafe { read_volatile(addr_of!(boot::boot_pdpt[2])) };
    let is_1g = pdpte & 0x80 != 0;
    let far = page + 0x1f8;
    let ok = is_1g == cpuid_1g
        && read_u64(HIGH_ALIAS + page) == read_u64(page)
        && read_u64(HIGH_ALIAS + far) == read_u64(far)
        && read_u64(HIGH_ALIAS + ALIAS_2M_TARGET) == read_u64(ALIAS_2M_TARGET);
    let kind = if is_1g {
        "a 1G leaf"
    } else {
        "4K/2M leaves (no 1G pages in CPUID)"
    };
    report.check(
        ok,
        format_args!("1G region: {HIGH_ALIAS:#x} maps 0..1G through {kind}"),
    );
}

/// Exceptions from CPL3 reach the CPL0 handler on the TSS stack.
fn check_exceptions(report: &mut Report) {
    let kstack = addr_of!(boot::kernel_stack) as u64;
    let on_kernel_stack =
        |t: &Trap| t.handler_rsp > kstack && t.handler_rsp <= kstack + boot::KERNEL_STACK_SIZE;
    let cases: [(&str, Probe, u64, Option<u64>, Option<u64>); 7] = [
        // (what, access, vector, error code, CR2)
        (
            "#PF read, not present",
            Probe::Read(ALIAS_4K + 0x3000),
            14,
            Some(0x4),
            Some(ALIAS_4K + 0x3000),
        ),
        (
            "#PF write, null page",
            Probe::Write(0x10),
            14,
            Some(0x6),
            Some(0x10),
        ),
        (
            "#PF read, supervisor page",
            Probe::Read(ALIAS_4K + 0x1008),
            14,
            Some(0x5),
            Some(ALIAS_4K + 0x1008),
        ),
        (
            "#PF write, read-only page",
            Probe::Write(ALIAS_4K + 0x2010),
            14,
            Some(0x7),
            Some(ALIAS_4K + 0x2010),
        ),
        (
            "#PF read, unmapped 512G",
            Probe::Read(0x80_0000_0000),
            14,
            Some(0x4),
            Some(0x80_0000_0000),
        ),
        ("#GP hlt at CPL3", Probe::Hlt, 13, Some(0), None),
        ("#UD ud2", Probe::Ud2, 6, None, None),
    ];
    for (what, access, vector, error, cr2) in cases {
        match probe(access) {
            None => report.check(false, format_args!("{what}: no exception")),
            Some(t) => {
                let ok = t.vector == vector
                    && error.is_none_or(|e| e == t.error)
                    && cr2.is_none_or(|c| c == t.cr2)
                    && t.cs == USER_CS
                    && on_kernel_stack(&t);
                report.check(
                    ok,
                    format_args!(
                        "{what}: vector {} error {:#x} cr2 {:#x} from cs {:#x}, handler rsp {:#x}",
                        t.vector, t.error, t.cr2, t.cs, t.handler_rsp
                    ),
                );
            }
        }
    }
}
