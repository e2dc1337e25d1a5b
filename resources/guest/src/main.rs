// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The built-in guest (DESIGN section 7): a freestanding PVH kernel. The
//! CPL0 part ([`boot`]) enters long mode and drops to CPL3, where this file
//! runs a few checks of the machine it was given, then the virtio-blk DMA
//! scenarios ([`dma`]) on the disks the command line announces and the
//! guest-agent scenarios ([`agent`]: #PF injection by the VMM), prints one
//! line per check on COM1 and exits through the exit port with a [`status`]
//! value. With `guest.bench=blk` on the command line it runs the block
//! benchmark ([`bench`]) instead.
//!
//! Command line (the PVH `cmdline_paddr`; printed as the second line):
//!
//! | word | effect |
//! |---|---|
//! | `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` | a virtio-mmio device (Linux's syntax); block devices get the [`dma`] scenarios |
//! | `guest.bench=blk` | run the block benchmark ([`bench`]) instead of the checks |
//! | `guest.bench.requests=`, `.qd=`, `.span=`, `.mib=`, `.seqqd=` | benchmark sizes (see [`bench`]) |
//! | `guest.qemu` | the device is QEMU's: skip the bad requests it mishandles (also recognised by its vendor id) |
//! | `guest.blk.bad=all` | run every bad request, even on QEMU's device |
//! | `guest.blk.mask=<bits>` | do not negotiate these feature bits (e.g. `0x30000000`: no EVENT_IDX, no INDIRECT_DESC) |
//!
//! Build: `cd resources/guest && cargo build --release` (see resources/README.md).

#![no_std]
#![no_main]

mod agent;
mod bench;
mod blk;
mod boot;
mod dma;
mod iommu;
mod mem;
mod pvh;
mod serial;
mod sva;
mod virtio;

use core::arch::asm;
use core::fmt::{self, Write};
use core::panic::PanicInfo;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use boot::{
    TrapRecord, ALIAS_2M, ALIAS_2M_TARGET, ALIAS_4K, GATE_INFO_VECTOR, HIGH_ALIAS, KERNEL_CS,
    USER_CS, USER_DS,
};
use pvh::{read_u32, read_u64, IDENTITY_LIMIT, PVH_MAGIC};
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
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

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
    // An empty IDT turns the next exception into a triple fault (shutdown).
    let idt = addr_of_mut!(boot::boot_idt);
    for i in 0..512 {
        // SAFETY: the IDT is a static in user-writable memory; nothing runs
        // after this but the faulting instruction below.
        unsafe { write_volatile(addr_of_mut!((*idt)[i]), 0) };
    }
    // SAFETY: raises #UD, which can no longer be delivered.
    unsafe { asm!("ud2", options(nomem, nostack)) };
    loop {
        core::hint::spin_loop();
    }
}

/// Never called: the precompiled `core` names the unwinder's personality
/// routine, which unoptimized builds keep referencing, but with panic=abort
/// nothing ever unwinds.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

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
    rflags: u64,
    ss: u64,
    cr0: u64,
    cr4: u64,
    handler_cs: u64,
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
            rflags: read_volatile(addr_of!((*r).rflags)),
            ss: read_volatile(addr_of!((*r).ss)),
            cr0: read_volatile(addr_of!((*r).cr0)),
            cr4: read_volatile(addr_of!((*r).cr4)),
            handler_cs: read_volatile(addr_of!((*r).handler_cs)) & 0xffff,
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

/// The first CPL3 code, called by `boot` after IRETQ.
#[no_mangle]
extern "C" fn guest_main() -> ! {
    let mut report = Report {
        checks: 0,
        failed: 0,
    };
    let cmd = pvh::cmdline();
    if let Some(what) = pvh::value(cmd, "guest.bench") {
        let _ = writeln!(Serial, "guest: hello from CPL3 (bench mode)");
        print_cmdline(cmd);
        let status = if what == b"blk" {
            bench::run(cmd)
        } else {
            let _ = writeln!(
                Serial,
                "guest: unknown benchmark guest.bench={} (known: blk)",
                core::str::from_utf8(what).unwrap_or("?")
            );
            status::CHECK_FAILED
        };
        let _ = writeln!(Serial, "guest: bench done; exit status {status}");
        exit(status)
    }
    // The CPL comes from the CS the CPU pushed for an exception: a
    // paravirtualized CPU may show other values to `mov from cs` and `pushf`
    // at CPL3 (kvm_pvm shows the host's user selectors and flags).
    let ud = probe(Probe::Ud2);
    let cpl = ud.map_or(0, |t| t.cs & 3);
    let _ = writeln!(Serial, "guest: hello from CPL{cpl}");
    print_cmdline(cmd);
    match ud {
        None => report.check(false, format_args!("#UD ud2: no exception")),
        Some(t) => {
            report.check(
                t.vector == 6 && t.cs == USER_CS && t.ss == USER_DS && t.rflags & RFLAGS_IF == 0,
                format_args!(
                    "running at CPL{cpl}: cs={:#x} ss={:#x} rflags={:#x} (IOPL {}) as pushed for #UD (vector {})",
                    t.cs,
                    t.ss,
                    t.rflags,
                    (t.rflags >> 12) & 3,
                    t.vector
                ),
            );
            check_control_registers(&mut report, &t);
        }
    }
    check_gate(&mut report);
    if let Some(t) = ud.filter(|t| (t.rflags >> 12) & 3 != 3) {
        let _ = writeln!(
            Serial,
            "guest: [note] the CPU pushed IOPL {} (set: 3); the TSS I/O bitmap lets the port I/O through",
            (t.rflags >> 12) & 3
        );
    }
    check_start_info(&mut report);
    let has_1g = check_cpuid(&mut report);
    check_sse(&mut report);
    check_mappings(&mut report, has_1g);
    check_exceptions(&mut report);
    dma::run(&mut report, cmd);
    sva::run(&mut report, cmd);
    agent::run(&mut report);

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

/// Prints the kernel command line (what the VMM announced).
fn print_cmdline(cmd: &[u8]) {
    let _ = writeln!(
        Serial,
        "guest: command line: {}",
        core::str::from_utf8(cmd).unwrap_or("(not UTF-8)").trim()
    );
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

/// CPUID: what the CPU offers; returns whether it has 1-GByte pages
/// (CPUID.80000001H:EDX[26] as CPL0 saw it when it built the page tables).
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
        cpuid(0x8000_0001, 0)[3]
    } else {
        0
    };
    // SAFETY: written once at CPL0 before CPL3 started.
    let e1_cpl0 = unsafe { read_volatile(addr_of!(boot::boot_cpuid_ext_edx)) };
    let (nx, pdpe1gb, lm) = (
        e1 & (1 << 20) != 0,
        e1_cpl0 & (1 << 26) != 0,
        e1 & (1 << 29) != 0,
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
    if e1 != e1_cpl0 {
        // kvm_pvm runs CPUID at CPL3 natively: the host's features, not the VM's.
        let _ = writeln!(
            Serial,
            "guest: [note] cpuid 0x80000001 edx differs at CPL3 ({e1:#x}) and at CPL0 ({e1_cpl0:#x}); CPL0's (the VM's) is used"
        );
    }
    pdpe1gb
}

/// CR0, CR4 and the handler's CS, as the exception handler recorded them.
fn check_control_registers(report: &mut Report, t: &Trap) {
    let (cr0, cr4, cs, rsp) = (t.cr0, t.cr4, t.handler_cs, t.handler_rsp);
    // CR0: PE, MP, WP, PG set; EM, TS clear. CR4: PAE, OSFXSR, OSXMMEXCPT.
    let cr0_ok = cr0 & 0x8001_000f == 0x8001_0003;
    let cr4_ok = cr4 & 0x620 == 0x620;
    report.check(
        cs == KERNEL_CS && on_kernel_stack(t) && cr0_ok && cr4_ok,
        format_args!(
            "CPL0 handler at cs={cs:#x} on the TSS stack (rsp {rsp:#x}): cr0={cr0:#x} (PG WP MP PE) cr4={cr4:#x} (PAE OSFXSR OSXMMEXCPT)"
        ),
    );
}

/// Whether the handler ran on the CPL0 stack the TSS names.
fn on_kernel_stack(t: &Trap) -> bool {
    let kstack = addr_of!(boot::kernel_stack) as u64;
    t.handler_rsp > kstack && t.handler_rsp <= kstack + boot::KERNEL_STACK_SIZE
}

/// The DPL3 `int N` gate: returns CR0, CR4, its CS and the caller's CS.
/// kvm_pvm (the software KVM of the development machine) raises #UD for
/// `int N` at CPL3; that is reported as a note, not a failure, since real
/// CPUs and TCG deliver it and nothing else here depends on it.
fn check_gate(report: &mut Report) {
    let r = record();
    let before = last_trap().count;
    let (cr0, cr4, handler_cs, caller_cs): (u64, u64, u64, u64);
    // SAFETY: the gate only reads CR0, CR4, CS and its interrupt frame into
    // RAX, RDX, RSI, RDI, R8 and R9 and returns with IRETQ; if the CPU
    // raises an exception instead, the handler resumes at the fixup label
    // with every register preserved.
    unsafe {
        let fixup = addr_of_mut!((*r).fixup);
        asm!("lea {t}, [rip + 2f]", "mov [{f}], {t}", "int {v}", "2:",
             v = const GATE_INFO_VECTOR, f = in(reg) fixup, t = out(reg) _,
             out("rax") cr0, out("rdx") cr4, out("rsi") handler_cs, out("rdi") caller_cs,
             out("r8") _, out("r9") _, options(nostack));
        write_volatile(fixup, 0);
    }
    let t = last_trap();
    if t.count != before {
        if t.vector == 6 && t.cs == USER_CS {
            let _ = writeln!(
                Serial,
                "guest: [note] int {GATE_INFO_VECTOR:#x} at CPL3 raised #UD on this CPU (kvm_pvm does); not a check"
            );
        } else {
            report.check(
                false,
                format_args!(
                    "int {GATE_INFO_VECTOR:#x} gate: vector {} error {:#x}",
                    t.vector, t.error
                ),
            );
        }
        return;
    }
    let handler_cs = handler_cs & 0xffff;
    report.check(
        handler_cs == KERNEL_CS && caller_cs == USER_CS && cr0 & 0x8000_0001 == 0x8000_0001 && cr4 & 0x20 != 0,
        format_args!(
            "int {GATE_INFO_VECTOR:#x} gate from cs={caller_cs:#x} ran at cs={handler_cs:#x}: cr0={cr0:#x} cr4={cr4:#x}"
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
    type Case = (&'static str, Probe, u64, Option<u64>, Option<u64>);
    let cases: [Case; 6] = [
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
