// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `vmm` binary, run as a user runs it.
//!
//! - `builtin_guest_boots_and_reports`: no arguments: the embedded built-in
//!   guest prints the same report it prints under QEMU's microvm (the list
//!   is shared with tests/tests/guest_qemu.rs) and `vmm` exits 0; it drives
//!   the two scratch disks (virtio-blk): bytes verified, no failure, each
//!   device's counters (every class of bad request the guest sends counted
//!   as such), the GUP engine's fast hits, notifies through ioeventfd, the
//!   scratch directory gone at exit.
//! - `disks_*`: explicit `--disk` images (read-write with O_DIRECT, and a
//!   read-only one written by the test) are driven and really written;
//!   `--disk` errors name the flag and the file (a command line too long
//!   for the disks' entries names `--cmdline` and `--disk`); the scratch
//!   directory goes on error and signal paths too.
//! - `exit_*`, `triple_fault_*`, `sigterm_*`: tiny PVH kernels written by
//!   the test (a few 32-bit instructions) check the exit-status convention:
//!   the exit port's value itself, 0 for an i8042 reset, 124 with the
//!   registers for a triple fault, 128 + N for a signal.
//! - `cli_*`: every error names its flag or file (exit code 125).
//!
//! The tests that boot need /dev/kvm; they skip (loudly) only where it is
//! absent. These tests live in the vmm package because only there cargo
//! hands a test the binary's path (`CARGO_BIN_EXE_vmm`).

mod common;

#[path = "../../tests/src/guest_report.rs"]
#[allow(dead_code)]
mod guest_report;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// The `vmm: virtio-blk<i> (...)` line of device `i`.
fn device_line(stderr: &str, i: usize) -> Option<&str> {
    let prefix = format!("vmm: virtio-blk{i} (");
    stderr.lines().find(|l| l.starts_with(&prefix))
}

/// The scratch directory named on the `vmm: disks:` line.
fn scratch_dir(stderr: &str) -> Option<PathBuf> {
    let line = stderr.lines().find(|l| l.starts_with("vmm: disks: "))?;
    if !line.ends_with("(scratch disks, removed at exit)") {
        return None;
    }
    let path = line.split_whitespace().nth(3)?;
    Some(Path::new(path).parent()?.to_path_buf())
}

/// What every run with the guest's blk scenarios on two disks (disk 0
/// read-write, disk 1 read-only with the pattern) shows: every blk check
/// passed and the guest's blk summary (bytes verified, no failure), no
/// skipped check, a counter line per device whose
/// requests add up to the guest's, every bad-request class the guest sends
/// counted, the GUP line with fast hits, the notify path.
fn check_blk_run(out: &Out, dump: &str) {
    // Every scenario passed, including the bad requests QEMU mishandles.
    let (requests, _, _) =
        guest_report::check_blk_report(&out.stdout, guest_report::BLK_OK_VMM_ONLY)
            .unwrap_or_else(|e| panic!("{e}; {dump}"));
    assert!(!out.stdout.contains("[skip]"), "{dump}");
    let dev0 = device_line(&out.stderr, 0).unwrap_or_else(|| panic!("no blk0 line; {dump}"));
    let dev1 = device_line(&out.stderr, 1).unwrap_or_else(|| panic!("no blk1 line; {dump}"));
    assert!(!dev0.contains(", ro,") && dev1.contains(", ro,"), "{dump}");
    assert_eq!(
        count(dev0, "requests") + count(dev1, "requests"),
        requests,
        "the devices did not take the requests the guest made; {dump}"
    );
    assert!(
        count(dev0, "writes") > 0 && count(dev0, "bytes_written") > 0,
        "{dump}"
    );
    assert!(
        count(dev1, "reads") > 0 && count(dev1, "writes") == 0,
        "{dump}"
    );
    // The guest's bad requests, each refused and counted in its class: the
    // MMIO hole and beyond RAM (bad_address), a length of 100 bytes
    // (unaligned_length), past the end and a sector that overflows
    // (out_of_range), type 0x7f (unsupported), a read-only status
    // descriptor and a looping chain (malformed), on disk 0; a write to
    // the read-only disk 1 (read_only).
    for class in [
        "malformed",
        "bad_address",
        "unaligned_length",
        "out_of_range",
        "unsupported",
    ] {
        assert!(
            field(dev0, class).unwrap_or(0) > 0,
            "no {class} on disk 0; {dump}"
        );
    }
    assert!(field(dev1, "read_only").unwrap_or(0) > 0, "{dump}");
    let errors = count(dev0, "errors") + count(dev1, "errors");
    let bad_lines = out
        .stdout
        .lines()
        .filter(|l| {
            l.starts_with("guest: [ok] blk: bad request: ")
                || l.starts_with("guest: [ok] blk: read-only disk: a ")
        })
        .count() as u64;
    assert_eq!(errors, bad_lines, "one error per bad request; {dump}");
    let gup = out
        .stderr
        .lines()
        .find(|l| l.starts_with("vmm: gup: requests="))
        .unwrap_or_else(|| panic!("no gup line; {dump}"));
    assert!(count(gup, "fast_hits") > 0, "{dump}");
    assert!(count(gup, "requests") >= count(gup, "fast_hits"), "{dump}");
    assert!(gup.contains(" fallbacks: "), "{dump}");
    // Notifies reach the worker through KVM's ioeventfd, without an exit
    // (or, where KVM refuses ioeventfds, through MMIO exits, and it says so).
    let virtio = out
        .stderr
        .lines()
        .find(|l| l.starts_with("vmm: virtio: "))
        .unwrap_or_else(|| panic!("no virtio line; {dump}"));
    if virtio.contains("by ioeventfd;") {
        assert!(virtio.ends_with("; 0 notifies took an MMIO exit"), "{dump}");
    } else {
        assert!(virtio.contains("KVM refused ioeventfd"), "{dump}");
    }
}

#[test]
fn builtin_guest_boots_and_reports() {
    if !kvm_or_skip("builtin_guest_boots_and_reports") {
        return;
    }
    let out = run(&[]);
    let dump = format!(
        "exit code {:?}\nstdout:\n{}\nstderr:\n{}",
        out.code, out.stdout, out.stderr
    );
    println!("{}\n{}", out.stdout.trim_end(), out.stderr.trim_end());
    guest_report::check_passing_report(&out.stdout).unwrap_or_else(|e| panic!("{e}; {dump}"));
    assert_eq!(out.code, Some(0), "{dump}");
    // Our VMM gives the guest its memory map: 256 MiB minus the PC hole.
    assert!(
        out.stdout.contains(
            "pvh start_info at 0x6000: magic ok, version 1, 3 memory map entries, 255 MiB RAM"
        ),
        "{dump}"
    );
    // Two scratch disks, announced on the command line the Linux way.
    let disks = out
        .stderr
        .lines()
        .find(|l| l.starts_with("vmm: disks: "))
        .unwrap_or_else(|| panic!("no disks line; {dump}"));
    assert!(
        disks.contains("(rw, 32 MiB) at 0xd0000000 irq 5")
            && disks.contains("(ro, 4 MiB) at 0xd0001000 irq 6"),
        "{dump}"
    );
    assert!(
        out.stdout
            .contains("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"),
        "the guest did not print the device entries of its command line; {dump}"
    );
    check_blk_run(&out, &dump);
    let dir = scratch_dir(&out.stderr).unwrap_or_else(|| panic!("no scratch dir; {dump}"));
    assert!(!dir.exists(), "{} is still there", dir.display());
    let timing = out
        .stderr
        .lines()
        .find(|l| l.starts_with("boot: first guest output after "))
        .unwrap_or_else(|| panic!("no timing line; {dump}"));
    assert!(
        timing.contains(" ms, exit after ") && timing.ends_with(" ms"),
        "{timing}"
    );
}

#[test]
fn builtin_guest_boots_with_more_memory_and_vcpus() {
    if !kvm_or_skip("builtin_guest_boots_with_more_memory_and_vcpus") {
        return;
    }
    // 4 GiB + 1 MiB: RAM on both sides of the MMIO hole; two vCPUs (the
    // second waits for an INIT/SIPI the guest never sends).
    let out = run(&["--mem", "4097", "--vcpus", "2"]);
    let dump = format!("{:?}\n{}\n{}", out.code, out.stdout, out.stderr);
    guest_report::check_passing_report(&out.stdout).unwrap_or_else(|e| panic!("{e}; {dump}"));
    assert!(
        out.stdout.contains("4 memory map entries, 4096 MiB RAM"),
        "{dump}"
    );
    assert_eq!(out.code, Some(0), "{dump}");
}

/// A minimal PVH kernel: an ELF64 with one PT_LOAD of `code` at 1 MiB (the
/// 32-bit entry point) and a PT_NOTE with XEN_ELFNOTE_PHYS32_ENTRY.
fn pvh_kernel(name: &str, code: &[u8]) -> PathBuf {
    const ENTRY: u64 = 0x10_0000;
    let mut f = vec![0u8; 0x1000];
    // ELF header.
    f[..16].copy_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    let put16 =
        |f: &mut Vec<u8>, at: usize, v: u16| f[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |f: &mut Vec<u8>, at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |f: &mut Vec<u8>, at: usize, v: u64| f[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put16(&mut f, 16, 2); // ET_EXEC
    put16(&mut f, 18, 0x3e); // x86-64
    put32(&mut f, 20, 1);
    put64(&mut f, 24, ENTRY);
    put64(&mut f, 32, 64); // e_phoff
    put16(&mut f, 52, 64); // e_ehsize
    put16(&mut f, 54, 56); // e_phentsize
    put16(&mut f, 56, 2); // e_phnum
                          // PT_LOAD.
    let ph = 64;
    put32(&mut f, ph, 1);
    put32(&mut f, ph + 4, 5);
    put64(&mut f, ph + 8, 0x1000);
    put64(&mut f, ph + 16, ENTRY);
    put64(&mut f, ph + 24, ENTRY);
    put64(&mut f, ph + 32, code.len() as u64);
    put64(&mut f, ph + 40, code.len() as u64);
    put64(&mut f, ph + 48, 0x1000);
    // PT_NOTE at 0x200: namesz 4, descsz 8, type 18, "Xen", entry.
    let ph = 64 + 56;
    put32(&mut f, ph, 4);
    put32(&mut f, ph + 4, 4);
    put64(&mut f, ph + 8, 0x200);
    put64(&mut f, ph + 32, 24);
    put64(&mut f, ph + 40, 24);
    put64(&mut f, ph + 48, 4);
    put32(&mut f, 0x200, 4);
    put32(&mut f, 0x204, 8);
    put32(&mut f, 0x208, 18);
    f[0x20c..0x210].copy_from_slice(b"Xen\0");
    put64(&mut f, 0x210, ENTRY);
    f.extend_from_slice(code);
    let path = std::env::temp_dir().join(format!("vmm-test-{}-{name}.elf", std::process::id()));
    std::fs::write(&path, f).expect("writing the test kernel");
    path
}

fn run_kernel(name: &str, code: &[u8], extra: &[&str]) -> Out {
    let k = pvh_kernel(name, code);
    let mut args = vec![
        "--kernel",
        k.to_str().expect("UTF-8 temp path"),
        "--mem",
        "16",
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    let _ = std::fs::remove_file(&k);
    out
}

#[test]
fn exit_port_status_is_the_exit_code() {
    if !kvm_or_skip("exit_port_status_is_the_exit_code") {
        return;
    }
    // mov al, 42; out 0xf4, al
    let out = run_kernel("exit42", &[0xb0, 42, 0xe6, 0xf4, 0xf4], &[]);
    assert_eq!(out.code, Some(42), "{}", out.stderr);
    assert!(out.stderr.contains("status 42"), "{}", out.stderr);
    // mov eax, 0x1234; out 0xf4, eax: too big for an exit code: 255.
    let out = run_kernel("exit1234", &[0xb8, 0x34, 0x12, 0, 0, 0xe7, 0xf4, 0xf4], &[]);
    assert_eq!(out.code, Some(255), "{}", out.stderr);
    assert!(out.stderr.contains("status 4660"), "{}", out.stderr);
    // mov al, 0; out 0xf7, al (the last port of the device)
    let out = run_kernel("exit0", &[0xb0, 0, 0xe6, 0xf7, 0xf4], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn exit_i8042_reset_is_clean() {
    if !kvm_or_skip("exit_i8042_reset_is_clean") {
        return;
    }
    // mov al, 'R'; mov dx, 0x3f8; out dx, al; mov al, 0xfe; out 0x64, al
    let code = [
        0xb0, b'R', 0x66, 0xba, 0xf8, 0x03, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
    ];
    let out = run_kernel("reset", &code, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "R");
    assert!(
        out.stderr.contains("boot: first guest output after "),
        "{}",
        out.stderr
    );
}

#[test]
fn triple_fault_exits_124_with_registers() {
    if !kvm_or_skip("triple_fault_exits_124_with_registers") {
        return;
    }
    // mov ebx, 0x5a5a5a5a; ud2 (no IDT: #UD, #DF, then shutdown)
    let out = run_kernel("ud2", &[0xbb, 0x5a, 0x5a, 0x5a, 0x5a, 0x0f, 0x0b], &[]);
    assert_eq!(out.code, Some(124), "{}", out.stderr);
    let e = &out.stderr;
    println!("{e}");
    assert!(e.contains("triple fault (KVM_EXIT_SHUTDOWN)"), "{e}");
    for reg in [
        "rbx=0x000000005a5a5a5a",
        "rip=",
        "cr0=",
        "cr3=",
        "cr4=",
        "efer=",
        "cs=0x0010",
    ] {
        assert!(e.contains(reg), "no {reg} in:\n{e}");
    }
    // The faulting instruction, found through the guest's (absent) paging
    // by guest-mm's walker: ud2 at 1 MiB + 5, then the zeroed page.
    assert!(e.contains("code at rip (gpa 0x100005): 0f 0b 00 00"), "{e}");
}

#[test]
fn sigterm_stops_a_running_guest() {
    if !kvm_or_skip("sigterm_stops_a_running_guest") {
        return;
    }
    // mov al, 'S'; mov dx, 0x3f8; out dx, al; jmp $
    let k = pvh_kernel(
        "spin",
        &[0xb0, b'S', 0x66, 0xba, 0xf8, 0x03, 0xee, 0xeb, 0xfe],
    );
    let mut child = vmm()
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--mem",
            "16",
            "--vcpus",
            "2",
        ])
        .spawn()
        .expect("starting vmm");
    // Wait for the guest's byte, then ask the VMM to stop.
    let mut so = child.stdout.take().expect("piped");
    let mut b = [0u8; 1];
    so.read_exact(&mut b).expect("the guest's first byte");
    assert_eq!(&b, b"S");
    let t = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    child.stdout = Some(so);
    let out = finish(child);
    let _ = std::fs::remove_file(&k);
    assert_eq!(out.code, Some(128 + libc::SIGTERM), "{}", out.stderr);
    assert!(
        out.stderr.contains("stopped by signal 15"),
        "{}",
        out.stderr
    );
    // Where the guest was: its `jmp $` at 1 MiB + 7.
    assert!(
        out.stderr.contains("vCPU 0 stopped at rip=0x100007 "),
        "{}",
        out.stderr
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "slow stop: {:?}",
        t.elapsed()
    );
}

fn assert_error(out: &Out, needles: &[&str]) {
    assert_eq!(out.code, Some(125), "stderr:\n{}", out.stderr);
    for n in needles {
        assert!(out.stderr.contains(n), "no `{n}` in:\n{}", out.stderr);
    }
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout);
}

#[test]
fn cli_missing_kernel_names_the_file() {
    let out = run(&["--kernel", "/nonexistent/vmlinux"]);
    assert_error(&out, &["--kernel /nonexistent/vmlinux", "No such file"]);
}

#[test]
fn cli_missing_initrd_names_the_file() {
    let out = run(&["--initrd", "/nonexistent/initrd.cpio"]);
    assert_error(&out, &["--initrd /nonexistent/initrd.cpio", "No such file"]);
}

#[test]
fn cli_kernel_that_is_a_directory_is_refused() {
    let out = run(&["--kernel", "/"]);
    assert_error(&out, &["--kernel /", "not a regular file"]);
}

#[test]
fn cli_bad_numbers_name_the_flag() {
    for (args, flag) in [
        (&["--mem", "0"][..], "--mem"),
        (&["--mem", "lots"][..], "--mem"),
        (&["--mem", "4"][..], "--mem"),
        (&["--vcpus", "0"][..], "--vcpus"),
        (&["--vcpus", "many"][..], "--vcpus"),
    ] {
        let out = run(args);
        assert_error(&out, &[flag]);
    }
    assert_error(&run(&["--frobnicate"]), &["--frobnicate"]);
}

#[test]
fn disks_errors_name_the_flag_and_the_file() {
    let out = run(&["--disk", "/nonexistent/disk.img,ro"]);
    assert_error(&out, &["--disk /nonexistent/disk.img", "No such file"]);
    let out = run(&["--disk", "x.img,rw"]);
    assert_error(&out, &["--disk", "x.img,rw", "`rw`"]);
    let out = run(&["--disk", "x.img,ro,direct,fast"]);
    assert_error(&out, &["--disk", "`fast`"]);
    let out = run(&["--disk", "/,ro"]);
    assert_error(&out, &["--disk /: not a regular file or a block device"]);
    // A read-write disk must open read-write.
    let ro = TempFile::new("readonly.img", &[0u8; 4096]);
    let mut perms = std::fs::metadata(&ro.0).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&ro.0, perms).unwrap();
    if std::fs::OpenOptions::new().write(true).open(&ro.0).is_err() {
        // (root opens it anyway)
        let out = run(&["--disk", &ro.arg("")]);
        assert_error(&out, &[&format!("--disk {}", ro.0.display())]);
    }
    let out = run(&["--blk-poll-us", "forever"]);
    assert_error(&out, &["--blk-poll-us"]);
}

#[test]
fn disks_are_locked_against_a_second_writer() {
    // One image twice read-write, or read-only and read-write: refused
    // before the VM starts (an exclusive lock per writable disk, a shared
    // one per read-only disk). Read-only twice shares the lock.
    let disk = TempFile::new("locked.img", &[0u8; 4096]);
    let out = run(&["--disk", &disk.arg(""), "--disk", &disk.arg("")]);
    assert_error(
        &out,
        &[
            &format!("--disk {}", disk.0.display()),
            "in use by another disk or process (locked)",
        ],
    );
    let out = run(&["--disk", &disk.arg(",ro"), "--disk", &disk.arg("")]);
    assert_error(&out, &["(locked)"]);
    let out = run(&["--disk", &disk.arg(""), "--disk", &disk.arg(",ro")]);
    assert_error(
        &out,
        &["in use read-write by another disk or process (locked)"],
    );
}

#[test]
fn disks_command_line_too_long_says_why() {
    // 4080 bytes fit the command line alone; the entry for --disk does not.
    let disk = TempFile::new("cmdline.img", &[0u8; 4096]);
    let long = "a".repeat(4080);
    let out = run(&["--cmdline", &long, "--disk", &disk.arg(",ro")]);
    assert_error(
        &out,
        &["--cmdline: 4080 bytes, 4115 with the `virtio_mmio.device=` entries of the 1 --disk; at most 4095 fit"],
    );
}

#[test]
fn disks_explicit_images_are_driven_and_written() {
    if !kvm_or_skip("disks_explicit_images_are_driven_and_written") {
        return;
    }
    // Disk 0: 16 MiB of zeroes, read-write with O_DIRECT; disk 1: the
    // read-only pattern the guest checks (word at offset o = 0x524f.. | o).
    let rw = TempFile::new("rw.img", &vec![0u8; 16 << 20]);
    let pattern: Vec<u8> = (0..(4u64 << 20))
        .step_by(8)
        .flat_map(|o| (0x524f_0000_0000_0000u64 | o).to_le_bytes())
        .collect();
    let ro = TempFile::new("ro.img", &pattern);
    let out = run(&[
        "--disk",
        &rw.arg(",direct"),
        "--disk",
        &ro.arg(",ro"),
        // The worker's polling path (the default does not poll).
        "--blk-poll-us",
        "20",
    ]);
    let dump = format!("{:?}\n{}\n{}", out.code, out.stdout, out.stderr);
    guest_report::check_passing_report(&out.stdout).unwrap_or_else(|e| panic!("{e}; {dump}"));
    assert_eq!(out.code, Some(0), "{dump}");
    assert!(
        out.stderr.contains(&format!(
            "vmm: disks: virtio-blk0 {} (rw, 16 MiB) at 0xd0000000 irq 5, virtio-blk1 {} (ro, 4 MiB) at 0xd0001000 irq 6\n",
            rw.0.display(),
            ro.0.display()
        )),
        "{dump}"
    );
    check_blk_run(&out, &dump);
    // The guest's writes reached the file; the read-only one is untouched.
    let written = std::fs::read(&rw.0).unwrap();
    let nonzero = written.iter().filter(|&&b| b != 0).count();
    assert!(nonzero > 4096, "{nonzero} non-zero bytes in disk 0");
    assert!(std::fs::read(&ro.0).unwrap() == pattern, "disk 1 changed");
}

#[test]
fn disks_scratch_directory_goes_on_errors_and_signals() {
    // An error after the scratch disks were made (the initrd is missing).
    let out = run(&["--initrd", "/nonexistent/initrd.cpio"]);
    assert_error(&out, &["--initrd /nonexistent/initrd.cpio"]);
    let dir = scratch_dir(&out.stderr).unwrap_or_else(|| panic!("{}", out.stderr));
    assert!(!dir.exists(), "{} is still there", dir.display());
    if !kvm_or_skip("disks_scratch_directory_goes_on_errors_and_signals (signal part)") {
        return;
    }
    // SIGTERM while the guest runs (a benchmark of 100 million random
    // reads keeps it busy for minutes, so only the signal stops it; the
    // signal comes as soon as it printed its first byte).
    let mut child = vmm()
        .args([
            "--cmdline",
            "guest.bench=blk guest.bench.requests=100000000",
        ])
        .spawn()
        .expect("starting vmm");
    let mut so = child.stdout.take().expect("piped");
    let mut b = [0u8; 1];
    so.read_exact(&mut b).expect("the guest's first byte");
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    child.stdout = Some(so);
    let out = finish(child);
    assert_eq!(out.code, Some(128 + libc::SIGTERM), "{}", out.stderr);
    let dir = scratch_dir(&out.stderr).unwrap_or_else(|| panic!("{}", out.stderr));
    assert!(!dir.exists(), "{} is still there", dir.display());
    // The devices stopped cleanly and still reported.
    assert!(device_line(&out.stderr, 0).is_some(), "{}", out.stderr);
}

#[test]
fn cli_kernel_that_is_not_a_kernel_names_the_file() {
    if !kvm_or_skip("cli_kernel_that_is_not_a_kernel_names_the_file") {
        return;
    }
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = run(&["--kernel", manifest]);
    assert_error(
        &out,
        &[
            &format!("--kernel {manifest}"),
            "neither an ELF nor a bzImage",
        ],
    );
}

#[test]
fn cli_help_succeeds() {
    let out = run(&["--help"]);
    assert_eq!(out.code, Some(0));
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--mem",
        "--vcpus",
        "--disk",
        "--blk-poll-us",
    ] {
        assert!(out.stdout.contains(flag), "{}", out.stdout);
    }
}
