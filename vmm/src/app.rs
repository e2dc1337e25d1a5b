// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What `vmm` does with its command line: check every flag and file, open
//! the disks (or make the default run's scratch disks), boot the VM, say
//! why it stopped, what each device and the GUP engine did and how long it
//! took, and return the process exit code (see
//! [`crate::vm::ExitReason::exit_code`]).

use std::ffi::OsString;
use std::io::{Cursor, Read};
use std::time::Duration;

use clap::Parser;

use crate::cli::{open_file, Cli, DEFAULT_LINUX_CMDLINE};
use crate::error::{Error, Result, EXIT_VMM_ERROR};
use crate::event_loop::block_stop_signals;
use crate::guest_image;
use crate::scratch::ScratchDisks;
use crate::virtio;
use crate::vm::{self, ExitReason, RunReport, VmConfig};

/// Parses `args` (program name first), runs the VM, returns the exit code.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed.
            let code = if e.use_stderr() { EXIT_VMM_ERROR } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm: error: {e}");
            EXIT_VMM_ERROR
        }
    }
}

fn read_all(flag: &'static str, path: &std::path::PathBuf) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_file(flag, path)?
        .read_to_end(&mut bytes)
        .map_err(|source| Error::File {
            flag,
            path: path.clone(),
            source,
        })?;
    Ok(bytes)
}

/// Runs the VM `cli` describes; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    // First, before any thread exists: every thread inherits the mask.
    let signals = block_stop_signals()?;
    // The default run (the built-in guest, no --disk) gets two scratch
    // disks; their directory goes when `scratch` is dropped, on every path
    // out of this function.
    let scratch = if cli.kernel.is_none() && cli.disk.is_empty() {
        Some(ScratchDisks::create()?)
    } else {
        None
    };
    let disk_args = scratch.as_ref().map_or(&cli.disk, |s| &s.disks);
    let disks = virtio::open_disks(
        disk_args,
        Duration::from_micros(cli.blk_poll_us),
        Duration::from_millis(cli.iommu_prq_timeout_ms),
    )?;
    if !disks.is_empty() {
        eprintln!(
            "vmm: disks: {}{}",
            virtio::describe_disks(&disks),
            if scratch.is_some() {
                " (scratch disks, removed at exit)"
            } else {
                ""
            }
        );
    }
    let initrd = match &cli.initrd {
        Some(path) => Some((
            format!("--initrd {}", path.display()),
            read_all("--initrd", path)?,
        )),
        None => None,
    };
    let ram_bytes = cli.mem << 20;
    let console = Box::new(std::io::stdout());
    let report = match &cli.kernel {
        Some(path) => vm::run(
            VmConfig {
                ram_bytes,
                vcpus: cli.vcpus,
                kernel_name: format!("--kernel {}", path.display()),
                kernel: open_file("--kernel", path)?,
                initrd,
                cmdline: cli
                    .cmdline
                    .clone()
                    .unwrap_or_else(|| DEFAULT_LINUX_CMDLINE.to_string()),
                console,
                disks,
            },
            signals,
        )?,
        None => vm::run(
            VmConfig {
                ram_bytes,
                vcpus: cli.vcpus,
                kernel_name: "the built-in guest".into(),
                kernel: Cursor::new(guest_image::IMAGE),
                initrd,
                cmdline: cli.cmdline.clone().unwrap_or_default(),
                console,
                disks,
            },
            signals,
        )?,
    };
    print_report(&report);
    drop(scratch);
    Ok(report.exit.exit_code())
}

fn print_report(r: &RunReport) {
    match &r.exit {
        ExitReason::GuestStatus(0) | ExitReason::Reset => {}
        other => eprintln!("vmm: {}", other.describe()),
    }
    if r.pio_unhandled + r.mmio_unhandled > 0 {
        eprintln!(
            "vmm: ignored {} port and {} MMIO accesses that no device claims",
            r.pio_unhandled, r.mmio_unhandled
        );
    }
    for d in &r.devices {
        eprintln!("vmm: {d}");
    }
    if !r.devices.is_empty() {
        eprintln!("vmm: {}", virtio::gup_summary(&r.gup));
        eprintln!(
            "vmm: virtio: interrupts by irqfd, queue notifies by {}; {} notifies took an MMIO exit",
            if r.ioeventfd {
                "ioeventfd"
            } else {
                "MMIO exit (KVM refused ioeventfd)"
            },
            r.notify_exits
        );
    }
    if r.agent.exits > 0 {
        eprintln!("vmm: {}", r.agent);
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    match r.first_output {
        Some(first) => eprintln!(
            "boot: first guest output after {:.1} ms, exit after {:.1} ms",
            ms(first),
            ms(r.exit_after)
        ),
        None => eprintln!(
            "boot: no guest output, exit after {:.1} ms",
            ms(r.exit_after)
        ),
    }
}
