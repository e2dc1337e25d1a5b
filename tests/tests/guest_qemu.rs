// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The built-in guest (resources/guest, DESIGN section 7) is a real PVH
//! kernel: QEMU's microvm machine boots the very image our VMM will boot,
//! and the guest prints its report and exits through QEMU's isa-debug-exit.
//!
//! The guest is built here with a nested `cargo build --release` in
//! resources/guest (its own workspace) into `target/guest`.
//!
//! Every run attaches two virtio-blk disks (virtio-mmio version 2, announced
//! on the kernel command line by microvm's `auto-kernel-cmdline`, which
//! needs `acpi=off`): a read-write scratch file (serial `guest-mm-blk0`)
//! and a read-only one (`readonly=on`, serial `guest-mm-blk1`) holding the
//! pattern the guest checks (the little-endian word at offset `o` is
//! `0x524f_0000_0000_0000 | o`), so the guest's blk DMA scenarios run
//! against QEMU's device; the bad requests QEMU's device mishandles are
//! `[skip]` lines there (the guest recognises the device by its vendor id).
//!
//! - `guest_boots_under_qemu_microvm_kvm`: `-accel kvm`, the check CI runs.
//!   Skips (loudly) only where /dev/kvm is absent.
//! - `guest_boots_under_qemu_microvm_tcg`: QEMU's own CPU emulation with
//!   `-cpu max`: the semantics of a real CPU where this machine's software
//!   KVM differs (the `int N` gate, IOPL in RFLAGS, 1-GByte pages). Needs no
//!   /dev/kvm.
//! - `guest_without_disks_under_qemu_microvm_tcg`: no disk: one line says
//!   so, the other checks pass, exit status 0.
//! - `guest_bench_mode_under_qemu_microvm_kvm`: `guest.bench=blk` with small
//!   workloads: the begin/end lines the host times by, in order, with the
//!   request and byte counts asked for, and exit status 0 (no timing here).
//!
//! Both need `qemu-system-x86_64` (Debian: qemu-system-x86, installed by
//! .ci/run). Where it is missing they fail when `CI` is set and skip loudly
//! otherwise.
//!
//! Run: `cargo test --release -p integration-tests --test guest_qemu -- --nocapture`.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::guest_report::{check_blk_report, check_passing_report, BLK_OK_VMM_ONLY};

/// QEMU exits on its own in well under a second; this only bounds a hang.
const QEMU_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Builds the guest once per test binary; returns the ELF's path.
fn guest_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let root = repo_root();
        let target_dir = root.join("target").join("guest");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let t = Instant::now();
        // Its own workspace, run from its directory so that its
        // .cargo/config.toml applies; flags meant for the main workspace
        // must not leak into it.
        let out = Command::new(&cargo)
            .args(["build", "--release"])
            .current_dir(root.join("resources").join("guest"))
            .env("CARGO_TARGET_DIR", &target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .output()
            .unwrap_or_else(|e| panic!("running {cargo:?} to build resources/guest: {e}"));
        assert!(
            out.status.success(),
            "building resources/guest failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let image = target_dir.join("release").join("guest");
        assert!(image.is_file(), "{} was not built", image.display());
        println!("guest image {} built in {:?}", image.display(), t.elapsed());
        image
    })
}

/// Says why a test skips on the real stderr (the test harness captures
/// `eprintln!`, not direct writes), so that it shows without --nocapture.
fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "{why}");
}

/// Finds `qemu-system-x86_64`, or says what to do when it is missing: fail
/// in CI (env `CI` set and not "false"/"0"), skip loudly elsewhere.
fn qemu(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("qemu-system-x86_64"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(
            !ci,
            "{test}: qemu-system-x86_64 is not in PATH, and CI is set: CI must run this check \
             (.ci/run installs it: apt-get install qemu-system-x86)"
        );
        skip(&format!(
            "SKIPPED {test}: qemu-system-x86_64 is not in PATH (apt-get install qemu-system-x86); \
             CI fails here instead of skipping"
        ));
    }
    found
}

/// Bytes of the read-write scratch disk (sparse).
const RW_DISK_BYTES: u64 = 32 << 20;
/// Bytes of the read-only pattern disk.
const RO_DISK_BYTES: u64 = 4 << 20;

/// The two disk files of one run, removed when dropped.
struct Disks {
    rw: PathBuf,
    ro: PathBuf,
}

impl Disks {
    /// Creates them in the temp directory, named after `test` and the pid.
    fn new(test: &str) -> Disks {
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let rw = dir.join(format!("guest-qemu-{test}-{pid}-rw.img"));
        let ro = dir.join(format!("guest-qemu-{test}-{pid}-ro.img"));
        let disks = Disks { rw, ro };
        File::create(&disks.rw)
            .and_then(|f| f.set_len(RW_DISK_BYTES))
            .unwrap_or_else(|e| panic!("creating {}: {e}", disks.rw.display()));
        let mut w = BufWriter::new(
            File::create(&disks.ro)
                .unwrap_or_else(|e| panic!("creating {}: {e}", disks.ro.display())),
        );
        for o in (0..RO_DISK_BYTES).step_by(8) {
            w.write_all(&(0x524f_0000_0000_0000u64 | o).to_le_bytes())
                .expect("writing the read-only disk");
        }
        w.flush().expect("writing the read-only disk");
        disks
    }

    /// The QEMU arguments that attach them (virtio-mmio version 2).
    fn qemu_args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_str().expect("UTF-8 temp path").to_string();
        vec![
            "-global".into(),
            "virtio-mmio.force-legacy=false".into(),
            "-drive".into(),
            format!("id=d0,file={},format=raw,if=none", path(&self.rw)),
            "-device".into(),
            "virtio-blk-device,drive=d0,serial=guest-mm-blk0".into(),
            "-drive".into(),
            format!(
                "id=d1,file={},format=raw,if=none,readonly=on",
                path(&self.ro)
            ),
            "-device".into(),
            "virtio-blk-device,drive=d1,serial=guest-mm-blk1".into(),
        ]
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.rw);
        let _ = std::fs::remove_file(&self.ro);
    }
}

/// What one QEMU run gave.
struct Run {
    /// The serial output, `\r\n` turned into `\n`.
    serial: String,
    /// QEMU's exit code.
    code: Option<i32>,
    /// From spawning QEMU to its first serial byte.
    first_output: Option<Duration>,
    /// From spawning QEMU to its exit.
    exit: Duration,
}

/// Boots `image` under QEMU microvm with `accel_and_cpu` and `extra`
/// arguments. `acpi=off`: microvm then announces its virtio-mmio devices on
/// the kernel command line (`virtio_mmio.device=`) as the guest expects.
fn run_qemu(qemu: &Path, image: &Path, accel_and_cpu: &[&str], extra: &[String]) -> Run {
    let mut args: Vec<&str> = vec!["-M", "microvm,acpi=off"];
    args.extend_from_slice(accel_and_cpu);
    let kernel = image.to_str().expect("UTF-8 path");
    args.extend_from_slice(&[
        "-kernel",
        kernel,
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
    ]);
    args.extend(extra.iter().map(String::as_str));
    println!("running: {} {}", qemu.display(), args.join(" "));
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", qemu.display()));

    let first = Arc::new(Mutex::new(None));
    let mut stdout = child.stdout.take().expect("piped");
    let first_w = Arc::clone(&first);
    let out_reader = thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    first_w
                        .lock()
                        .unwrap()
                        .get_or_insert_with(|| start.elapsed());
                    all.extend_from_slice(&buf[..n]);
                }
            }
        }
        all
    });
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for QEMU") {
            break status;
        }
        if start.elapsed() > QEMU_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let out = out_reader.join().unwrap_or_default();
            panic!(
                "QEMU did not exit within {QEMU_TIMEOUT:?}; serial output so far:\n{}",
                String::from_utf8_lossy(&out)
            );
        }
        thread::sleep(Duration::from_millis(2));
    };
    let exit = start.elapsed();
    let serial =
        String::from_utf8_lossy(&out_reader.join().expect("stdout reader")).replace("\r\n", "\n");
    let stderr = err_reader.join().expect("stderr reader");
    if !stderr.trim().is_empty() {
        println!("QEMU stderr: {}", stderr.trim());
    }
    let first_output = *first.lock().unwrap();
    Run {
        serial,
        code: status.code(),
        first_output,
        exit,
    }
}

/// The assertions both accelerators share; returns the report lines.
fn check_report(run: &Run) -> Vec<&str> {
    let dump = || {
        format!(
            "QEMU exit code {:?}, serial output:\n{}",
            run.code, run.serial
        )
    };
    // isa-debug-exit: QEMU exits with (status << 1) | 1; the guest's PASS is 0.
    assert_eq!(
        run.code,
        Some(1),
        "the guest did not exit with status 0 (QEMU code 1); {}",
        dump()
    );
    // The report itself: the same checks as our vmm's test (tests/src/guest_report.rs).
    check_passing_report(&run.serial).unwrap_or_else(|e| panic!("{e}; {}", dump()))
}

/// The blk part of a report with both disks attached: the checks shared
/// with our vmm's test ([`check_blk_report`]), and exactly the `[skip]`
/// lines of the bad requests QEMU's device mishandles (it accepts DMA to
/// unassigned addresses, or marks itself broken), which are the ones only
/// our vmm must pass ([`BLK_OK_VMM_ONLY`]).
fn check_blk(run: &Run, lines: &[&str]) {
    let (requests, bytes, _) =
        check_blk_report(&run.serial, &[]).unwrap_or_else(|e| panic!("{e}:\n{}", run.serial));
    let skips: Vec<&&str> = lines.iter().filter(|l| l.contains("[skip]")).collect();
    for want in BLK_OK_VMM_ONLY {
        let prefix = format!("guest: [skip] blk: {want}");
        assert!(
            skips.iter().any(|l| l.starts_with(&prefix)),
            "no `{prefix}...` line:\n{}",
            run.serial
        );
    }
    assert_eq!(
        skips.len(),
        BLK_OK_VMM_ONLY.len(),
        "unexpected [skip] lines: {skips:#?}"
    );
    // At least the queue-depth check's 2048 requests and 4 MiB, and the
    // read-only disk's 1 MiB read.
    assert!(
        requests >= 2048 && bytes >= 5 << 20,
        "blk summary: {requests} requests, {bytes} bytes verified"
    );
}

fn print_run(what: &str, run: &Run) {
    println!("{}", run.serial.trim_end());
    println!(
        "{what}: first guest output after {} ms, exit after {} ms (wall time from spawning QEMU)",
        run.first_output.map_or(-1, |d| d.as_millis() as i64),
        run.exit.as_millis()
    );
}

#[test]
fn guest_boots_under_qemu_microvm_kvm() {
    const TEST: &str = "guest_boots_under_qemu_microvm_kvm";
    if !Path::new("/dev/kvm").exists() {
        skip(&format!("SKIPPED {TEST}: /dev/kvm is absent"));
        return;
    }
    let Some(qemu) = qemu(TEST) else { return };
    let disks = Disks::new(TEST);
    let run = run_qemu(&qemu, guest_image(), &["-accel", "kvm"], &disks.qemu_args());
    print_run("QEMU microvm, KVM", &run);
    let lines = check_report(&run);
    check_blk(&run, &lines);
    // The `int N` gate either ran, or the CPU raised #UD (kvm_pvm); never
    // anything else (check_report already refused [FAIL] lines).
    assert!(
        lines.iter().any(
            |l| l.starts_with("guest: [ok] int 0x40 gate from cs=0x23 ran at cs=0x8")
                || l.starts_with("guest: [note] int 0x40 at CPL3 raised #UD")
        ),
        "no line about the int 0x40 gate:\n{}",
        run.serial
    );
}

#[test]
fn guest_boots_under_qemu_microvm_tcg() {
    const TEST: &str = "guest_boots_under_qemu_microvm_tcg";
    let Some(qemu) = qemu(TEST) else { return };
    // -cpu max has 1-GByte pages: the guest must then use a 1G leaf.
    let disks = Disks::new(TEST);
    let run = run_qemu(
        &qemu,
        guest_image(),
        &["-accel", "tcg", "-cpu", "max"],
        &disks.qemu_args(),
    );
    print_run("QEMU microvm, TCG", &run);
    let lines = check_report(&run);
    check_blk(&run, &lines);
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(
        has("guest: [ok] int 0x40 gate from cs=0x23 ran at cs=0x8"),
        "{}",
        run.serial
    );
    assert!(
        has("guest: [ok] running at CPL3: cs=0x23 ss=0x1b rflags=0x3"),
        "IOPL 3 expected:\n{}",
        run.serial
    );
    assert!(
        has("guest: [ok] cpuid: ") && lines.iter().any(|l| l.contains("1G pages yes")),
        "{}",
        run.serial
    );
    assert!(
        has("guest: [ok] 1G region: 0x80000000 maps 0..1G through a 1G leaf"),
        "{}",
        run.serial
    );
    assert!(
        !run.serial.contains("[note]"),
        "a real CPU model needs no notes:\n{}",
        run.serial
    );
}

#[test]
fn guest_without_disks_under_qemu_microvm_tcg() {
    const TEST: &str = "guest_without_disks_under_qemu_microvm_tcg";
    let Some(qemu) = qemu(TEST) else { return };
    let run = run_qemu(&qemu, guest_image(), &["-accel", "tcg", "-cpu", "max"], &[]);
    print_run("QEMU microvm, TCG, no disks", &run);
    let lines = check_report(&run);
    assert!(
        lines.contains(&"guest: blk: no virtio-blk disk announced on the command line (virtio_mmio.device=); blk checks skipped"),
        "{}",
        run.serial
    );
    assert!(
        !lines.iter().any(|l| l.contains("] blk: ")),
        "blk checks without a disk:\n{}",
        run.serial
    );
}

#[test]
fn guest_bench_mode_under_qemu_microvm_kvm() {
    const TEST: &str = "guest_bench_mode_under_qemu_microvm_kvm";
    if !Path::new("/dev/kvm").exists() {
        skip(&format!("SKIPPED {TEST}: /dev/kvm is absent"));
        return;
    }
    let Some(qemu) = qemu(TEST) else { return };
    let disks = Disks::new(TEST);
    let mut extra = disks.qemu_args();
    extra.extend([
        "-append".to_string(),
        "guest.bench=blk guest.bench.requests=3000 guest.bench.mib=12".to_string(),
    ]);
    let run = run_qemu(&qemu, guest_image(), &["-accel", "kvm"], &extra);
    print_run("QEMU microvm, KVM, guest.bench=blk", &run);
    assert_eq!(
        run.code,
        Some(1),
        "the guest did not exit with status 0 (QEMU code 1):\n{}",
        run.serial
    );
    let bench: Vec<&str> = run
        .serial
        .lines()
        .filter(|l| l.starts_with("guest: bench begin ") || l.starts_with("guest: bench end "))
        .collect();
    assert_eq!(
        bench,
        [
            "guest: bench begin randread4k",
            "guest: bench end randread4k requests=3000 bytes=12288000",
            "guest: bench begin seqwrite1m",
            "guest: bench end seqwrite1m requests=12 bytes=12582912",
            "guest: bench begin seqread1m",
            "guest: bench end seqread1m requests=12 bytes=12582912",
        ],
        "{}",
        run.serial
    );
    // The workloads' requests, all completed with status OK.
    assert!(
        run.serial
            .lines()
            .any(|l| l.starts_with("guest: bench: ") && l.ends_with(" notifications, 0 failed")),
        "{}",
        run.serial
    );
    assert!(
        !run.serial.contains("[ok]") && !run.serial.contains("[FAIL]"),
        "bench mode runs no checks:\n{}",
        run.serial
    );
}
