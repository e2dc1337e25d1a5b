// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vCPUs: their initial state (CPUID, MSRs, FPU, LAPIC, the boot entry
//! registers) and the run loop each vCPU thread executes.
//!
//! A vCPU thread handles its own port and MMIO exits (the port devices
//! are behind one mutex, each virtio-mmio transport behind its own) and reports why the VM must stop through
//! [`VmShared::request_exit`]. The event loop stops the others by setting
//! [`VmShared::stop`] and kicking each thread with [`kick_signal`] until it
//! has left `KVM_RUN`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use guest_mm::paging::{translate, CpuFeatures};
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use libc::{c_int, c_void, siginfo_t};
use vm_memory::{Bytes, GuestAddress};

use crate::boot::EntryState;
use crate::error::{Error, Result};
use crate::memory::GuestMemoryMmap;
use crate::paging::instruction_fetch;
use crate::vm::{ExitReason, VmShared};

/// MSRs set at boot: (index, value).
const BOOT_MSRS: &[(u32, u64)] = &[
    (0x174, 0),             // IA32_SYSENTER_CS
    (0x175, 0),             // IA32_SYSENTER_ESP
    (0x176, 0),             // IA32_SYSENTER_EIP
    (0xc000_0081, 0),       // STAR
    (0xc000_0082, 0),       // LSTAR
    (0xc000_0083, 0),       // CSTAR
    (0xc000_0084, 0),       // SFMASK
    (0xc000_0102, 0),       // KERNEL_GS_BASE
    (0x10, 0),              // IA32_TSC
    (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
    (0x2ff, (1 << 11) | 6), // IA32_MTRR_DEF_TYPE: MTRRs on, default write-back
];

/// LAPIC register offsets and LVT delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn kick_handler(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    // Nothing: its delivery interrupts KVM_RUN with EINTR.
}

/// Installs the (empty) handler of [`kick_signal`]; once per process.
pub fn install_kick_handler() -> Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
        .map_err(Error::host("installing the vCPU kick signal handler"))
}

/// One vCPU.
pub struct Vcpu {
    /// Its index (also its APIC ID).
    pub id: u8,
    fd: VcpuFd,
    /// Guest memory, to show the code at RIP in crash reports.
    mem: GuestMemoryMmap,
    /// MAXPHYADDR and page sizes of the guest's CPUID (for the walker).
    paging: (u8, CpuFeatures),
    /// The guest-agent port's handler ([`crate::agent`]), when attached.
    agent: Option<crate::agent::VcpuAgent>,
}

impl Vcpu {
    /// Creates vCPU `id` in `vm`, whose memory is `mem`.
    pub fn new(vm: &VmFd, id: u8, mem: &GuestMemoryMmap) -> Result<Self> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        Ok(Vcpu {
            id,
            fd,
            mem: mem.clone(),
            paging: (36, CpuFeatures::default()),
            agent: None,
        })
    }

    /// Serves the guest-agent port ([`crate::agent::PORT`]) with `agent`.
    pub fn attach_agent(&mut self, agent: Arc<crate::agent::Agent>) {
        self.agent = Some(crate::agent::VcpuAgent::new(agent));
    }

    /// CPUID, MSRs, FPU and LAPIC (every vCPU).
    pub fn configure(&mut self, cpuid: &CpuId) -> Result<()> {
        self.paging = crate::cpuid::paging_features(cpuid);
        self.fd
            .set_cpuid2(cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;

        let entries: Vec<kvm_msr_entry> = BOOT_MSRS
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|e| Error::Host {
            what: "building the MSR list",
            source: std::io::Error::other(format!("{e:?}")),
        })?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(Error::kvm("KVM_SET_MSRS"))?;
        if set < entries.len() {
            // KVM stops at the first MSR it refuses; the rest are optional.
            eprintln!(
                "vmm: vCPU {}: KVM refused MSR {:#x}; {} of {} boot MSRs set",
                self.id,
                entries[set].index,
                set,
                entries.len()
            );
        }

        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))?;

        // Virtual wire mode: LINT0 takes the PIC's ExtINT, LINT1 is NMI.
        let mut lapic = self.fd.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
        for (reg, mode) in [
            (APIC_LVT_LINT0, APIC_MODE_EXTINT),
            (APIC_LVT_LINT1, APIC_MODE_NMI),
        ] {
            let mut bytes = [0u8; 4];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = lapic.regs[reg + i] as u8;
            }
            let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(Error::kvm("KVM_SET_LAPIC"))?;
        Ok(())
    }

    /// The boot processor's entry registers.
    pub fn set_entry_state(&self, entry: &EntryState) -> Result<()> {
        let mut sregs = self.fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        entry.apply_sregs(&mut sregs);
        self.fd
            .set_sregs(&sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        let mut regs = kvm_regs::default();
        entry.apply_regs(&mut regs);
        self.fd.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))
    }

    /// The run loop of this vCPU's thread: runs until the VM stops. When a
    /// signal stopped the VM, says where this vCPU was (where a guest that
    /// hung was looping).
    pub fn run(mut self, shared: Arc<VmShared>) {
        self.run_until_stopped(&shared);
        if let Some(ExitReason::Signal(_)) = shared.exit_reason() {
            if let (Ok(r), Ok(sr)) = (self.fd.get_regs(), self.fd.get_sregs()) {
                eprintln!(
                    "vmm: vCPU {} stopped at rip={:#x} rsp={:#x} cs={:#x} cr0={:#x} cr3={:#x}",
                    self.id, r.rip, r.rsp, sr.cs.selector, sr.cr0, sr.cr3
                );
            }
        }
    }

    fn run_until_stopped(&mut self, shared: &VmShared) {
        while !shared.stop.load(Ordering::Acquire) {
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Kicked (or a signal): look at `stop` again.
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) => {
                    shared.request_exit(ExitReason::VcpuError(format!(
                        "vCPU {}: KVM_RUN failed: {e}",
                        self.id
                    )));
                    return;
                }
            };
            let mut agent_request = false;
            match exit {
                VcpuExit::IoOut(crate::agent::PORT, _) if self.agent.is_some() => {
                    // Served below, once `exit` no longer borrows the fd.
                    agent_request = true;
                }
                VcpuExit::IoOut(port, data) => {
                    let action = shared.lock_bus().write(port, data);
                    match action {
                        devices::pio::PioAction::Continue => {}
                        devices::pio::PioAction::Exit(status) => {
                            shared.request_exit(ExitReason::GuestStatus(status));
                            return;
                        }
                        devices::pio::PioAction::Reset => {
                            shared.request_exit(ExitReason::Reset);
                            return;
                        }
                    }
                }
                VcpuExit::IoIn(port, data) => shared.lock_bus().read(port, data),
                VcpuExit::MmioRead(addr, data) => {
                    // Unclaimed addresses read as all ones.
                    if !shared.mmio.read(addr, data) {
                        shared.mmio_unhandled.fetch_add(1, Ordering::Relaxed);
                    }
                }
                VcpuExit::MmioWrite(addr, data) => {
                    if !shared.mmio.write(addr, data) {
                        shared.mmio_unhandled.fetch_add(1, Ordering::Relaxed);
                    } else if crate::virtio::is_queue_notify(addr) {
                        // With ioeventfds KVM takes these without an exit.
                        shared.notify_exits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                VcpuExit::Intr | VcpuExit::IrqWindowOpen | VcpuExit::Hlt => {}
                VcpuExit::Shutdown => {
                    let regs = self.dump_registers();
                    shared.request_exit(ExitReason::Crash(format!(
                        "vCPU {}: triple fault (KVM_EXIT_SHUTDOWN)\n{regs}",
                        self.id
                    )));
                    return;
                }
                VcpuExit::InternalError => {
                    let suberror = self.internal_suberror();
                    let regs = self.dump_registers();
                    shared.request_exit(ExitReason::Crash(format!(
                        "vCPU {}: KVM internal error, suberror {suberror} ({})\n{regs}",
                        self.id,
                        match suberror {
                            1 => "emulation failure",
                            2 => "simultaneous exceptions",
                            3 => "delivery event",
                            4 => "unexpected exit reason",
                            _ => "other",
                        }
                    )));
                    return;
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    let regs = self.dump_registers();
                    shared.request_exit(ExitReason::Crash(format!(
                        "vCPU {}: VM entry failed, hardware reason {reason:#x} on host CPU {cpu}\n{regs}",
                        self.id
                    )));
                    return;
                }
                VcpuExit::SystemEvent(kind, _) => {
                    // KVM_SYSTEM_EVENT_SHUTDOWN (1) and _RESET (2) are clean
                    // stops (e.g. PSCI, ACPI); anything else is a crash.
                    let reason = if kind == 1 || kind == 2 {
                        ExitReason::Reset
                    } else {
                        ExitReason::Crash(format!(
                            "vCPU {}: KVM system event {kind}\n{}",
                            self.id,
                            self.dump_registers()
                        ))
                    };
                    shared.request_exit(reason);
                    return;
                }
                other => {
                    let what = format!("{other:?}");
                    shared.request_exit(ExitReason::Crash(format!(
                        "vCPU {}: unexpected KVM exit {what}\n{}",
                        self.id,
                        self.dump_registers()
                    )));
                    return;
                }
            }
            if let (true, Some(agent)) = (agent_request, self.agent.as_mut()) {
                if let Err(e) = agent.handle_exit(&mut self.fd, self.paging) {
                    shared.request_exit(ExitReason::VcpuError(format!(
                        "vCPU {}: guest agent: {e}",
                        self.id
                    )));
                    return;
                }
            }
        }
    }

    /// `kvm_run.internal.suberror` after a KVM_EXIT_INTERNAL_ERROR.
    fn internal_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the union: the exit
        // reason is KVM_EXIT_INTERNAL_ERROR. It is plain integers.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }

    /// The general, control and segment registers, for crash reports.
    pub fn dump_registers(&self) -> String {
        let mut s = String::new();
        match self.fd.get_regs() {
            Ok(r) => {
                let _ = writeln!(
                    s,
                    "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rsp={:#018x} rbp={:#018x}\n  r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}\n  r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\n  rip={:#018x} rflags={:#010x}",
                    r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10,
                    r.r11, r.r12, r.r13, r.r14, r.r15, r.rip, r.rflags
                );
            }
            Err(e) => {
                let _ = writeln!(s, "  (KVM_GET_REGS failed: {e})");
            }
        }
        match self.fd.get_sregs() {
            Ok(sr) => {
                let _ = writeln!(
                    s,
                    "  cr0={:#010x} cr2={:#018x} cr3={:#018x} cr4={:#010x} efer={:#x}",
                    sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer
                );
                let seg = |n: &str, g: &kvm_segment| format!("{n}={:#06x}", g.selector);
                let _ = writeln!(
                    s,
                    "  {} {} {} {} {} {} {} gdt={:#x}/{:#x} idt={:#x}/{:#x}",
                    seg("cs", &sr.cs),
                    seg("ss", &sr.ss),
                    seg("ds", &sr.ds),
                    seg("es", &sr.es),
                    seg("fs", &sr.fs),
                    seg("gs", &sr.gs),
                    seg("tr", &sr.tr),
                    sr.gdt.base,
                    sr.gdt.limit,
                    sr.idt.base,
                    sr.idt.limit
                );
            }
            Err(e) => {
                let _ = writeln!(s, "  (KVM_GET_SREGS failed: {e})");
            }
        }
        if let (Ok(r), Ok(sr)) = (self.fd.get_regs(), self.fd.get_sregs()) {
            let _ = writeln!(s, "  {}", self.code_at_rip(&r, &sr));
        }
        s.trim_end().to_string()
    }

    /// The instruction bytes at CS:RIP, found through the guest's own page
    /// tables by guest-mm's walker (as the CPU's fetch would find them).
    fn code_at_rip(&self, regs: &kvm_regs, sregs: &kvm_sregs) -> String {
        let (maxphyaddr, features) = self.paging;
        let (linear, ctx, access) =
            instruction_fetch(sregs, regs, maxphyaddr, features, sregs.cs.dpl == 3);
        match translate(&self.mem, &ctx, linear, access) {
            Ok(t) => {
                // Up to the longest instruction, within this page.
                let len = 15.min(0x1000 - (t.gpa & 0xfff)) as usize;
                let mut code = vec![0u8; len];
                match self.mem.read_slice(&mut code, GuestAddress(t.gpa)) {
                    Ok(()) => {
                        let hex: Vec<String> = code.iter().map(|b| format!("{b:02x}")).collect();
                        format!("code at rip (gpa {:#x}): {}", t.gpa, hex.join(" "))
                    }
                    Err(e) => format!("code at rip: gpa {:#x} is not RAM ({e})", t.gpa),
                }
            }
            Err(fault) => format!("code at rip: not fetchable ({fault})"),
        }
    }
}
