// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One VM from start to stop: KVM VM, memory slots, irqchip and PIT, the
//! devices (port I/O, and the virtio-blk disks on the MMIO bus, see
//! [`crate::virtio`]), the kernel, the vCPU threads and the event loop; and
//! why it stopped ([`ExitReason`]), which decides the process exit code
//! ([`ExitReason::exit_code`]).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use devices::mmio::MmioBus;
use devices::pio::PioBus;
use devices::serial::{SerialConsole, COM1_IRQ};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::ReadVolatile;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::boot::{self, BootSpec};
use crate::error::{Error, Result, EXIT_GUEST_CRASH, EXIT_VMM_ERROR};
use crate::event_loop;
use crate::memory::{self, GuestMemoryMmap};
use crate::vcpu::{self, Vcpu};

/// Where KVM puts the TSS it needs on Intel hosts (3 pages just below the
/// BIOS area, inside the MMIO hole, never RAM).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote this status to the exit port.
    GuestStatus(u32),
    /// The guest asked for a reset (i8042 0xFE, or a KVM reset/shutdown event).
    Reset,
    /// Triple fault, KVM internal error, failed entry: the report (with registers).
    Crash(String),
    /// The VMM received this signal (SIGINT, SIGTERM, SIGHUP).
    Signal(i32),
    /// A vCPU thread failed (a KVM call error).
    VcpuError(String),
}

impl ExitReason {
    /// The process exit code: the guest's status itself (0 = success;
    /// values above 255 are reported as 255), 0 for a reset, 124 for a
    /// guest crash, 128 + N for signal N, 125 for a VMM failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestStatus(s) => (*s).min(255) as i32,
            ExitReason::Reset => 0,
            ExitReason::Crash(_) => EXIT_GUEST_CRASH,
            ExitReason::Signal(n) => 128 + n,
            ExitReason::VcpuError(_) => EXIT_VMM_ERROR,
        }
    }

    /// One line for the VMM's stderr.
    pub fn describe(&self) -> String {
        match self {
            ExitReason::GuestStatus(s) => format!("the guest wrote status {s} to the exit port"),
            ExitReason::Reset => "the guest asked for a reset".into(),
            ExitReason::Crash(report) => format!("the guest crashed: {report}"),
            ExitReason::Signal(n) => format!("stopped by signal {n}"),
            ExitReason::VcpuError(e) => e.clone(),
        }
    }
}

/// The serial console's host side: stdout (or any writer), flushed after
/// every byte (a byte costs the guest a VM exit anyway), recording the time
/// of the first byte.
pub struct ConsoleOut {
    out: Box<dyn Write + Send>,
    first_output: Arc<OnceLock<Instant>>,
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() {
            self.first_output.get_or_init(Instant::now);
        }
        let n = self.out.write(buf)?;
        self.out.flush()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// What the vCPU threads and the event loop share.
pub struct VmShared {
    bus: Mutex<PioBus<ConsoleOut>>,
    exit: Mutex<Option<ExitReason>>,
    /// Written when [`Self::exit`] is set: wakes the event loop.
    pub exit_evt: EventFd,
    /// Set by the event loop to stop the vCPU threads.
    pub stop: AtomicBool,
    /// The virtio-mmio devices (each transport behind its own lock).
    pub mmio: MmioBus,
    /// Guest MMIO accesses no device claimed.
    pub mmio_unhandled: AtomicU64,
    /// Queue notifies (writes to a virtio QueueNotify register) that took
    /// an MMIO exit: 0 while KVM takes them as ioeventfds.
    pub notify_exits: AtomicU64,
}

impl VmShared {
    /// The port-I/O bus (a poisoned lock is taken over: the devices hold no
    /// invariant a panicking vCPU thread could have broken halfway).
    pub fn lock_bus(&self) -> MutexGuard<'_, PioBus<ConsoleOut>> {
        self.bus.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records why the VM must stop (the first reason wins) and wakes the
    /// event loop.
    pub fn request_exit(&self, reason: ExitReason) {
        {
            let mut exit = self.exit.lock().unwrap_or_else(|p| p.into_inner());
            if exit.is_none() {
                *exit = Some(reason);
            }
        }
        // An eventfd write fails only when its counter would overflow.
        let _ = self.exit_evt.write(1);
    }

    /// Why the VM stopped, once it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The VM's configuration.
pub struct VmConfig<K> {
    /// Bytes of RAM.
    pub ram_bytes: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// The kernel and what goes with it.
    pub kernel_name: String,
    /// The kernel image.
    pub kernel: K,
    /// The initramfs (name, bytes).
    pub initrd: Option<(String, Vec<u8>)>,
    /// The command line (a `virtio_mmio.device=` entry per disk is
    /// appended to it).
    pub cmdline: String,
    /// The disks, attached in order as virtio-blk devices (see
    /// [`crate::virtio`]).
    pub disks: crate::virtio::Disks,
    /// Where the serial console writes.
    pub console: Box<dyn Write + Send>,
}

/// How a run went.
#[derive(Debug)]
pub struct RunReport {
    /// Why it stopped.
    pub exit: ExitReason,
    /// From VM creation to the first console byte.
    pub first_output: Option<Duration>,
    /// From VM creation to the stop.
    pub exit_after: Duration,
    /// Port accesses no device claimed.
    pub pio_unhandled: u64,
    /// MMIO accesses no device claimed.
    pub mmio_unhandled: u64,
    /// One summary line per virtio device (taken after its worker stopped).
    pub devices: Vec<String>,
    /// The GUP engine's counters at the stop (after the devices stopped).
    pub gup: guest_mm::gup::GupCounters,
    /// Whether KVM took the queue notifiers as ioeventfds (false when it
    /// refused; true too when there were no devices).
    pub ioeventfd: bool,
    /// Queue notifies that took an MMIO exit.
    pub notify_exits: u64,
    /// The guest agent's counters ([`crate::agent`]).
    pub agent: crate::agent::AgentCounters,
}

/// Owns the VM fd before the memory: the fd closes first (see
/// `memory::register_slots`).
struct Vm {
    fd: VmFd,
    _mem: GuestMemoryMmap,
    /// The GUP engine over the same regions (devices pin through it).
    gup: Arc<guest_mm::gup::Gup>,
}

/// Boots and runs a VM until it stops; `signals` is the signalfd of the
/// blocked SIGINT/SIGTERM/SIGHUP (see [`event_loop::block_stop_signals`]).
pub fn run<K: io::Read + io::Seek + ReadVolatile>(
    mut config: VmConfig<K>,
    signals: std::fs::File,
) -> Result<RunReport> {
    let cmdline = crate::virtio::cmdline_with_devices(&config.cmdline, config.disks.len());
    if cmdline.len() >= boot::CMDLINE_MAX && !config.disks.is_empty() {
        // Said here: boot::load would count the entries as --cmdline's.
        return Err(Error::Flag {
            flag: "--cmdline",
            why: format!(
                "{} bytes, {} with the `virtio_mmio.device=` entries of the {} --disk; at most {} fit",
                config.cmdline.len(),
                cmdline.len(),
                config.disks.len(),
                boot::CMDLINE_MAX - 1
            ),
        });
    }
    let kvm = Kvm::new().map_err(Error::kvm("opening /dev/kvm"))?;
    let start = Instant::now();
    let vm_fd = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
    let (gup, mem) = memory::create_with_gup(config.ram_bytes)?;
    memory::register_slots(&vm_fd, &mem)?;
    vm_fd
        .set_tss_address(KVM_TSS_ADDRESS)
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    vm_fd
        .create_irq_chip()
        .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
    vm_fd
        .create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(Error::kvm("KVM_CREATE_PIT2"))?;

    let entry = boot::load(
        &mem,
        BootSpec {
            kernel_name: config.kernel_name.clone(),
            kernel: &mut config.kernel,
            initrd: config.initrd.take(),
            cmdline: &cmdline,
            ram_bytes: config.ram_bytes,
            vcpus: config.vcpus,
        },
    )?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    let cpuid = |id| crate::cpuid::for_vcpu(&supported, id, config.vcpus);
    let (maxphyaddr, _) = crate::cpuid::paging_features(&cpuid(0));
    let mut mmio = MmioBus::new();
    let attached = crate::virtio::attach(
        &vm_fd,
        &mem,
        &gup,
        &mut mmio,
        std::mem::take(&mut config.disks),
        maxphyaddr,
    )?;

    let serial_irq =
        EventFd::new(EFD_NONBLOCK).map_err(Error::host("creating the serial irq eventfd"))?;
    vm_fd
        .register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(Error::kvm("KVM_IRQFD (serial)"))?;
    let first_output = Arc::new(OnceLock::new());
    let console = ConsoleOut {
        out: config.console,
        first_output: Arc::clone(&first_output),
    };
    let shared = Arc::new(VmShared {
        bus: Mutex::new(PioBus::new(SerialConsole::new(serial_irq, console))),
        exit: Mutex::new(None),
        exit_evt: EventFd::new(EFD_NONBLOCK).map_err(Error::host("creating the exit eventfd"))?,
        stop: AtomicBool::new(false),
        mmio,
        mmio_unhandled: AtomicU64::new(0),
        notify_exits: AtomicU64::new(0),
    });

    let agent = Arc::new(crate::agent::Agent::new(Arc::clone(&gup)));
    let mut vcpus = Vec::new();
    for id in 0..config.vcpus {
        let mut v = Vcpu::new(&vm_fd, id, &mem)?;
        v.configure(&cpuid(id))?;
        v.attach_agent(Arc::clone(&agent));
        if id == 0 {
            v.set_entry_state(&entry)?;
        }
        vcpus.push(v);
    }
    let vm = Vm {
        fd: vm_fd,
        _mem: mem,
        gup,
    };

    vcpu::install_kick_handler()?;
    let mut threads = Vec::new();
    for v in vcpus {
        let for_thread = Arc::clone(&shared);
        let name = format!("vcpu{}", v.id);
        let t = thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let shared = Arc::clone(&for_thread);
                stop_vm_if_panics(&shared, &name, move || v.run(for_thread))
            })
            .map_err(Error::host("spawning a vCPU thread"));
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop_vcpus(&shared, threads);
                return Err(e);
            }
        }
    }

    let looped = event_loop::run(Arc::clone(&shared), signals);
    let exit = match looped {
        Ok(reason) => reason,
        Err(e) => ExitReason::VcpuError(format!("event loop: {e}")),
    };
    let exit_after = start.elapsed();
    stop_vcpus(&shared, threads);
    // The devices stop before the VM fd closes and before the memory goes:
    // each worker is joined and its pins released here.
    let ioeventfd = attached.ioeventfd;
    let devices = attached.stop();
    let gup = vm.gup.stats();
    drop(vm.fd);
    let pio_unhandled = shared.lock_bus().unhandled();
    Ok(RunReport {
        exit,
        first_output: first_output.get().map(|t| t.duration_since(start)),
        exit_after,
        pio_unhandled,
        mmio_unhandled: shared.mmio_unhandled.load(Ordering::Relaxed),
        devices,
        gup,
        ioeventfd,
        notify_exits: shared.notify_exits.load(Ordering::Relaxed),
        agent: agent.counters(),
    })
}

/// Runs `body` (a vCPU thread's work); if it panics, asks the VM to stop
/// with a [`ExitReason::VcpuError`] (else the event loop would wait for
/// that vCPU forever and only a signal would end the VMM).
fn stop_vm_if_panics(shared: &VmShared, name: &str, body: impl FnOnce()) {
    // Unwind safety: the VM stops right after; the locks this thread may
    // have held are taken over (see `lock_bus`).
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err() {
        shared.request_exit(ExitReason::VcpuError(format!(
            "{name}: the thread panicked"
        )));
    }
}

/// Stops the vCPU threads: sets `stop`, then kicks each thread out of
/// `KVM_RUN` until it has returned (a kick that lands just before the
/// thread enters `KVM_RUN` is lost, hence the repeat).
fn stop_vcpus(shared: &VmShared, threads: Vec<thread::JoinHandle<()>>) {
    shared.stop.store(true, Ordering::Release);
    for t in threads {
        while !t.is_finished() {
            let _ = t.kill(vcpu::kick_signal());
            thread::sleep(Duration::from_millis(1));
        }
        let _ = t.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> VmShared {
        let evt = || EventFd::new(EFD_NONBLOCK).unwrap();
        let console = ConsoleOut {
            out: Box::new(io::sink()),
            first_output: Arc::new(OnceLock::new()),
        };
        VmShared {
            bus: Mutex::new(PioBus::new(SerialConsole::new(evt(), console))),
            exit: Mutex::new(None),
            exit_evt: evt(),
            stop: AtomicBool::new(false),
            mmio: MmioBus::new(),
            mmio_unhandled: AtomicU64::new(0),
            notify_exits: AtomicU64::new(0),
        }
    }

    #[test]
    fn a_panicking_vcpu_thread_stops_the_vm() {
        let s = Arc::new(shared());
        let for_thread = Arc::clone(&s);
        thread::spawn(move || stop_vm_if_panics(&for_thread, "vcpu0", || panic!("boom")))
            .join()
            .unwrap();
        assert_eq!(
            s.exit_reason(),
            Some(ExitReason::VcpuError("vcpu0: the thread panicked".into()))
        );
        assert_eq!(s.exit_evt.read().unwrap(), 1);
        assert_eq!(
            ExitReason::VcpuError(String::new()).exit_code(),
            EXIT_VMM_ERROR
        );
        // A thread that returns normally leaves the exit reason alone.
        let s = shared();
        stop_vm_if_panics(&s, "vcpu0", || {});
        assert_eq!(s.exit_reason(), None);
    }
}
