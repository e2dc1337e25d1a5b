// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VM's virtio devices: where each sits (MMIO window, GSI), how the
//! guest learns about them (`virtio_mmio.device=` on the kernel command
//! line, as Linux parses it), how they are wired to KVM (an irqfd for the
//! interrupt, an ioeventfd per queue notifier), and what they report when
//! the VM stops.
//!
//! Device `i` (the i-th `--disk`) is a virtio-blk behind a virtio-mmio
//! transport at [`mmio_base`]`(i)` = 0xd000_0000 + i * 0x1000 (inside the
//! MMIO hole [`crate::memory`] leaves at 3..4 GiB), interrupt GSI
//! [`gsi`]`(i)` = 5 + i, GET_ID string `guest-mm-blk<i>`. When a disk is
//! behind the IOMMU (`--disk PATH,iommu`), a virtio-iommu takes the slot
//! after the last disk, and disk `i` is its endpoint `i`
//! (docs/guest-va-dma.md).

use std::os::unix::fs::FileTypeExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::mmio::MmioBus;
use devices::virtio::blk::{Block, BlockConfig, DiskOptions};
use devices::virtio::iommu::Iommu;
use devices::virtio::mmio::{MmioTransport, MMIO_SIZE, QUEUE_NOTIFY, STATUS};
use devices::virtio::VirtioDevice;
use guest_mm::gup::{Fallback, GupCounters};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::cli::DiskArg;
use crate::error::{Error, Result};
use crate::memory::{GuestMemoryMmap, HIGH_RAM_START, MMIO_HOLE_START};

/// Guest-physical address of the first device's registers.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// GSI (IOAPIC pin, and ISA IRQ below 16) of the first device.
pub const FIRST_GSI: u32 = 5;
/// GSIs the in-kernel IOAPIC has (pins 0..23).
const IOAPIC_PINS: u32 = 24;
/// The most devices: one GSI each, from [`FIRST_GSI`] to the last pin.
pub const MAX_DEVICES: usize = (IOAPIC_PINS - FIRST_GSI) as usize;

// Every window lies in the MMIO hole, below the TSS KVM keeps at its top.
const _: () = assert!(MMIO_BASE >= MMIO_HOLE_START);
const _: () = assert!(MMIO_BASE + MAX_DEVICES as u64 * MMIO_SIZE <= HIGH_RAM_START - (1 << 20));

/// Where device `i`'s registers start.
pub fn mmio_base(i: usize) -> u64 {
    MMIO_BASE + i as u64 * MMIO_SIZE
}

/// Device `i`'s interrupt line.
pub fn gsi(i: usize) -> u32 {
    FIRST_GSI + i as u32
}

/// Whether `addr` is the QueueNotify register of a device window.
pub fn is_queue_notify(addr: u64) -> bool {
    addr >= MMIO_BASE
        && addr < mmio_base(MAX_DEVICES)
        && (addr - MMIO_BASE) % MMIO_SIZE == QUEUE_NOTIFY
}

/// The GET_ID string of disk `i`.
pub fn disk_id(i: usize) -> String {
    format!("guest-mm-blk{i}")
}

/// `virtio_mmio.device=4K@0xd0000000:5` for device `i` (size, base, IRQ:
/// the syntax of Linux's virtio_mmio module parameter).
pub fn cmdline_entry(i: usize) -> String {
    format!(
        "virtio_mmio.device={}K@{:#x}:{}",
        MMIO_SIZE >> 10,
        mmio_base(i),
        gsi(i)
    )
}

/// `cmdline` with one [`cmdline_entry`] per device appended: at the end,
/// or just before a `--` word if there is one (Linux passes everything
/// after `--` to init, not to the kernel).
pub fn cmdline_with_devices(cmdline: &str, devices: usize) -> String {
    let (kernel, init) = cmdline.split_at(init_args_start(cmdline).unwrap_or(cmdline.len()));
    let mut s = kernel.trim_end().to_string();
    for i in 0..devices {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&cmdline_entry(i));
    }
    let init = init.trim_end();
    if !init.is_empty() {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(init);
    }
    s
}

/// Where the first `--` word of `cmdline` starts, split as Linux splits
/// its command line (words end at white space outside double quotes).
fn init_args_start(cmdline: &str) -> Option<usize> {
    let b = cmdline.as_bytes();
    let space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && space(b[i]) {
            i += 1;
        }
        let start = i;
        let mut quoted = false;
        while i < b.len() && (quoted || !space(b[i])) {
            quoted ^= b[i] == b'"';
            i += 1;
        }
        if &b[start..i] == b"--" {
            return Some(start);
        }
    }
    None
}

/// The virtio devices of a VM: the disks, and the IOMMU when a disk is
/// behind it (in the slot after the last disk).
#[derive(Default)]
pub struct Disks {
    /// The disks, in slot order.
    pub blocks: Vec<Block>,
    /// The IOMMU (its MAXPHYADDR is set by [`attach`], from the vCPUs'
    /// CPUID).
    pub iommu: Option<Iommu>,
}

impl Disks {
    /// Devices in the MMIO window (disks and the IOMMU).
    pub fn len(&self) -> usize {
        self.blocks.len() + usize::from(self.iommu.is_some())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The largest MAXPHYADDR x86 defines.
const MAX_MAXPHYADDR: u8 = 52;

/// Opens every `--disk` as a virtio-blk device (in order: disk `i` gets
/// index `i`), with the IOMMU if any disk is behind it; each error names
/// `--disk` and the file.
pub fn open_disks(disks: &[DiskArg], poll: Duration, prq_timeout: Duration) -> Result<Disks> {
    let iommu = disks.iter().any(|d| d.iommu);
    let devices = disks.len() + usize::from(iommu);
    if devices > MAX_DEVICES {
        return Err(Error::Flag {
            flag: "--disk",
            why: format!(
                "{} disks{}; at most {MAX_DEVICES} devices fit (one interrupt line each, GSI {FIRST_GSI}..{})",
                disks.len(),
                if iommu { " and the IOMMU" } else { "" },
                IOAPIC_PINS - 1
            ),
        });
    }
    let (iommu, handle) = if iommu {
        let endpoints = (0..disks.len() as u32)
            .filter(|&i| disks[i as usize].iommu)
            .collect();
        // The architectural limit until `attach` knows the VM's.
        let (i, h) = Iommu::new(endpoints, MAX_MAXPHYADDR)
            .map_err(Error::host("creating the virtio-iommu"))?;
        (Some(i), Some(h))
    } else {
        (None, None)
    };
    let blocks = disks
        .iter()
        .enumerate()
        .map(|(index, d)| {
            let file_err = |source| Error::File {
                flag: "--disk",
                path: d.path.clone(),
                source,
            };
            // A directory opens read-only and would read as garbage; FIFOs
            // and sockets have no size.
            let kind = std::fs::metadata(&d.path).map_err(file_err)?.file_type();
            if !kind.is_file() && !kind.is_block_device() {
                return Err(file_err(std::io::Error::other(
                    "not a regular file or a block device",
                )));
            }
            let cfg = BlockConfig {
                disk: DiskOptions {
                    path: d.path.clone(),
                    read_only: d.read_only,
                    direct: d.direct,
                },
                id: disk_id(index),
                index,
                poll,
                endpoint: handle
                    .as_ref()
                    .filter(|_| d.iommu)
                    .and_then(|h| h.endpoint(index as u32)),
                page_request_timeout: prq_timeout,
            };
            Block::new(&cfg).map_err(file_err)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Disks { blocks, iommu })
}

/// One line naming each disk: `virtio-blk0 PATH (rw, 32 MiB) at 0xd0000000 irq 5, ...`.
pub fn describe_disks(disks: &Disks) -> String {
    let mut parts: Vec<String> = disks
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let disk = b.disk();
            let bytes = disk.capacity() * 512;
            let size = if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
                format!("{} MiB", bytes >> 20)
            } else {
                format!("{bytes} bytes")
            };
            format!(
                "virtio-blk{i} {} ({}{}, {size}) at {:#x} irq {}",
                disk.path().display(),
                if disk.read_only() { "ro" } else { "rw" },
                if b.behind_iommu() {
                    ", behind the IOMMU"
                } else {
                    ""
                },
                mmio_base(i),
                gsi(i)
            )
        })
        .collect();
    if disks.iommu.is_some() {
        let i = disks.blocks.len();
        parts.push(format!(
            "virtio-iommu at {:#x} irq {}",
            mmio_base(i),
            gsi(i)
        ));
    }
    parts.join(", ")
}

/// The attached devices.
#[derive(Default)]
pub struct Attached {
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// False when KVM refused an ioeventfd: queue notifies then reach the
    /// transport as MMIO exits (it signals the same eventfd).
    pub ioeventfd: bool,
}

impl Attached {
    /// Devices attached.
    pub fn len(&self) -> usize {
        self.transports.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.transports.is_empty()
    }

    /// Powers the devices off: resets each (Status = 0, as a driver would),
    /// which stops and joins its worker thread and releases its pins, then
    /// returns each device's summary line ([`devices::virtio::VirtioDevice::summary`]).
    /// The transports themselves go when the last reference (the MMIO bus)
    /// is dropped.
    pub fn stop(self) -> Vec<String> {
        self.transports
            .into_iter()
            .map(|t| {
                let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
                t.write(STATUS, &0u32.to_le_bytes());
                t.device().summary()
            })
            .collect()
    }
}

/// Puts each of `blocks` behind a virtio-mmio transport on `bus` at
/// [`mmio_base`]`(i)`, raises its interrupt through an irqfd on
/// [`gsi`]`(i)`, and registers its queue notifier as an ioeventfd (if KVM
/// refuses, says so once and leaves notifies to the MMIO write path).
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    gup: &Arc<guest_mm::gup::Gup>,
    bus: &mut MmioBus,
    disks: Disks,
    maxphyaddr: u8,
) -> Result<Attached> {
    let mut attached = Attached {
        transports: Vec::with_capacity(disks.len()),
        ioeventfd: true,
    };
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::with_capacity(disks.len());
    for b in disks.blocks {
        devices.push(Box::new(b));
    }
    if let Some(iommu) = disks.iommu {
        // Page tables the guest attaches are checked as its vCPUs check
        // theirs.
        iommu.set_maxphyaddr(maxphyaddr);
        devices.push(Box::new(iommu));
    }
    for (i, device) in devices.into_iter().enumerate() {
        let base = mmio_base(i);
        let irq =
            EventFd::new(EFD_NONBLOCK).map_err(Error::host("creating a virtio irq eventfd"))?;
        vm.register_irqfd(&irq, gsi(i))
            .map_err(Error::kvm("KVM_IRQFD (virtio)"))?;
        let transport = MmioTransport::new(device, mem.clone(), Arc::clone(gup), irq)
            .map_err(Error::host("creating a virtio-mmio transport"))?;
        if attached.ioeventfd {
            for (q, evt) in transport.notifiers().iter().enumerate() {
                let addr = IoEventAddress::Mmio(base + QUEUE_NOTIFY);
                if let Err(e) = vm.register_ioevent(evt, &addr, q as u32) {
                    eprintln!(
                        "vmm: KVM refused an ioeventfd ({e}); virtio queue notifies go through MMIO exits"
                    );
                    attached.ioeventfd = false;
                    break;
                }
            }
        }
        let transport = Arc::new(Mutex::new(transport));
        if !bus.insert(base, Arc::clone(&transport)) {
            return Err(Error::Memory(format!(
                "virtio-mmio window {base:#x} overlaps another device"
            )));
        }
        attached.transports.push(transport);
    }
    Ok(attached)
}

/// `gup: requests=.. fast_hits=.. fast_pages=.. slow_calls=.. slow_pages=..
/// touched=.. faults: handled=.. injected=.. failed=.. fallbacks:
/// <reason>=..` (the reasons the fast path gave up, those that happened;
/// `none` if it never did).
pub fn gup_summary(c: &GupCounters) -> String {
    let mut s = format!(
        "gup: requests={} fast_hits={} fast_pages={} slow_calls={} slow_pages={} touched={} faults: handled={} injected={} failed={} fallbacks:",
        c.requests,
        c.fast_hits,
        c.fast_pages,
        c.slow_calls,
        c.slow_pages,
        c.touched,
        c.faults_handled,
        c.faults_injected,
        c.faults_failed
    );
    let mut any = false;
    for r in Fallback::ALL {
        if c.fallback(r) != 0 {
            s.push_str(&format!(" {}={}", r.name(), c.fallback(r)));
            any = true;
        }
    }
    if !any {
        s.push_str(" none");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_and_command_line() {
        assert_eq!(cmdline_entry(0), "virtio_mmio.device=4K@0xd0000000:5");
        assert_eq!(cmdline_entry(1), "virtio_mmio.device=4K@0xd0001000:6");
        assert_eq!(
            cmdline_with_devices("console=ttyS0 ", 2),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(
            cmdline_with_devices("", 1),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(cmdline_with_devices("x", 0), "x");
        // Before the arguments Linux hands to init, not among them.
        assert_eq!(
            cmdline_with_devices("console=ttyS0 -- single x", 1),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 -- single x"
        );
        assert_eq!(
            cmdline_with_devices("-- x ", 1),
            "virtio_mmio.device=4K@0xd0000000:5 -- x"
        );
        assert_eq!(
            cmdline_with_devices("a --x\t--\ty", 1),
            "a --x virtio_mmio.device=4K@0xd0000000:5 --\ty"
        );
        // A quoted `--` is part of a value.
        assert_eq!(
            cmdline_with_devices("init=\"/bin/sh -- x\"", 1),
            "init=\"/bin/sh -- x\" virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(gsi(MAX_DEVICES - 1), IOAPIC_PINS - 1);
        assert_eq!(disk_id(3), "guest-mm-blk3");
        assert!(is_queue_notify(0xd000_0050) && is_queue_notify(0xd001_2050));
        assert!(!is_queue_notify(0xd000_0054) && !is_queue_notify(0xc000_0050));
        assert!(!is_queue_notify(mmio_base(MAX_DEVICES) + QUEUE_NOTIFY));
    }

    #[test]
    fn too_many_disks_name_the_flag() {
        let disks = vec![
            DiskArg {
                path: "/nonexistent".into(),
                read_only: true,
                direct: false,
                iommu: false,
            };
            MAX_DEVICES + 1
        ];
        let e = open_disks(&disks, Duration::ZERO, Duration::ZERO)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("--disk: 20 disks; at most 19"), "{e}");
        let mut behind = disks[..MAX_DEVICES].to_vec();
        behind[0].iommu = true;
        let e = open_disks(&behind, Duration::ZERO, Duration::ZERO)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("--disk: 19 disks and the IOMMU; at most 19"),
            "{e}"
        );
        let e = open_disks(&disks[..1], Duration::ZERO, Duration::ZERO)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("--disk /nonexistent: "), "{e}");
        let dir = DiskArg {
            path: "/".into(),
            read_only: true,
            direct: false,
            iommu: false,
        };
        let e = open_disks(&[dir], Duration::ZERO, Duration::ZERO)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, "--disk /: not a regular file or a block device");
    }

    #[test]
    fn gup_line() {
        let mut c = GupCounters {
            requests: 5,
            fast_hits: 4,
            fast_pages: 9,
            slow_calls: 1,
            slow_pages: 2,
            ..Default::default()
        };
        assert_eq!(
            gup_summary(&c),
            "gup: requests=5 fast_hits=4 fast_pages=9 slow_calls=1 slow_pages=2 touched=0 faults: handled=0 injected=0 failed=0 fallbacks: none"
        );
        c.fallbacks[Fallback::NotRam as usize] = 1;
        c.fallbacks[Fallback::NotPresent as usize] = 3;
        assert!(
            gup_summary(&c).ends_with("fallbacks: not_present=3 not_ram=1"),
            "{}",
            gup_summary(&c)
        );
    }
}
