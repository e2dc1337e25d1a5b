// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The built-in guest (resources/guest, DESIGN section 7) is a real PVH
//! kernel: QEMU's microvm machine boots the very image our VMM will boot,
//! and the guest prints its report and exits through QEMU's isa-debug-exit.
//!
//! The guest is built here with a nested `cargo build --release` in
//! resources/guest (its own workspace) into `target/guest`.
//!
//! - `guest_boots_under_qemu_microvm_kvm`: `-accel kvm`, the check CI runs.
//!   Skips (loudly) only where /dev/kvm is absent.
//! - `guest_boots_under_qemu_microvm_tcg`: QEMU's own CPU emulation with
//!   `-cpu max`: the semantics of a real CPU where this machine's software
//!   KVM differs (the `int N` gate, IOPL in RFLAGS, 1-GByte pages). Needs no
//!   /dev/kvm.
//!
//! Both need `qemu-system-x86_64` (Debian: qemu-system-x86, installed by
//! .ci/run). Where it is missing they fail when `CI` is set and skip loudly
//! otherwise.
//!
//! Run: `cargo test --release -p integration-tests --test guest_qemu -- --nocapture`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::guest_report::check_passing_report;

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

fn run_qemu(qemu: &Path, image: &Path, accel_and_cpu: &[&str]) -> Run {
    let mut args: Vec<&str> = vec!["-M", "microvm"];
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
    let run = run_qemu(&qemu, guest_image(), &["-accel", "kvm"]);
    print_run("QEMU microvm, KVM", &run);
    let lines = check_report(&run);
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
    let run = run_qemu(&qemu, guest_image(), &["-accel", "tcg", "-cpu", "max"]);
    print_run("QEMU microvm, TCG", &run);
    let lines = check_report(&run);
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
