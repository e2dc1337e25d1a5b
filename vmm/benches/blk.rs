// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `cargo bench -p vmm --bench blk`: the built-in guest's virtio-blk
//! workloads under our VMM and under QEMU's microvm, same image, same disk
//! file, same guest RAM, same run.
//!
//! The guest (booted with `guest.bench=blk`) runs, on disk 0, 4 KiB random
//! reads (queue kept full), then 1 MiB sequential writes, then 1 MiB
//! sequential reads, printing `guest: bench begin <name>` before and
//! `guest: bench end <name> requests=<n> bytes=<b>` after each workload and
//! nothing in between. This harness timestamps those lines as they arrive
//! on the VMM's serial output (the same cost, one line, in both VMMs), so
//! the figures are VMM-agnostic: no guest clock is trusted.
//!
//! Peak RSS is the child's `ru_maxrss` from `wait4`.
//!
//! Prints, for each VMM, each workload's rate per run, then the medians and:
//! `ratio iops_vs_qemu <v>` (4 KiB random-read IOPS, ours / QEMU's),
//! `ratio seq_mbps_vs_qemu <v>` (1 MiB sequential read + write MB/s, ours /
//! QEMU's), `rss_kib ours <v>` and `rss_kib qemu <v>`.
//!
//! Environment: `BLK_BENCH_RUNS` (default 3 runs per VMM, alternating),
//! `BLK_BENCH_REQUESTS` (random reads per run), `BLK_BENCH_MIB` (MiB per
//! sequential workload), `BLK_BENCH_EXTRA_ARGS` (extra `vmm` flags).
//! Needs /dev/kvm and qemu-system-x86_64; says so and exits 0 without them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Guest RAM for both VMMs (MiB).
const MEM_MIB: u64 = 256;
/// The disk file (MiB): every workload stays inside it.
const DISK_MIB: u64 = 256;
/// One VMM run may take this long before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// What one run measured.
#[derive(Default, Debug)]
struct Run {
    /// workload -> (requests, bytes, seconds).
    workloads: BTreeMap<String, (u64, u64, f64)>,
    /// Peak RSS (KiB).
    rss_kib: u64,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmm/ has a parent")
        .to_path_buf()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A disk file with non-zero data everywhere (reads of holes would be
/// cheaper than reads of data), made once and kept in target/.
fn disk_image() -> PathBuf {
    let path = root().join("target").join("blk-bench-disk.img");
    let want = DISK_MIB << 20;
    if std::fs::metadata(&path)
        .map(|m| m.len() == want)
        .unwrap_or(false)
    {
        return path;
    }
    let f = std::fs::File::create(&path).expect("creating the bench disk in target/");
    let mut chunk = vec![0u8; 1 << 20];
    for mib in 0..DISK_MIB {
        for (i, w) in chunk.chunks_exact_mut(8).enumerate() {
            let v = (mib << 20 | (i as u64) << 3) ^ 0x9e37_79b9_7f4a_7c15;
            w.copy_from_slice(&v.to_le_bytes());
        }
        f.write_all_at(&chunk, mib << 20)
            .expect("writing the bench disk");
    }
    f.sync_all().expect("syncing the bench disk");
    path
}

/// Runs `cmd` to completion, timestamping the bench lines; returns the
/// measurements (None, with the reason printed, if the run failed).
/// `ok_status` is the exit status of a guest that passed (QEMU's
/// isa-debug-exit turns the guest's 0 into 1).
fn run(label: &str, mut cmd: Command, ok_status: i32) -> Option<Run> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            println!("{label}: cannot start: {e}");
            return None;
        }
    };
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take()?;
    let stderr = child.stderr.take()?;
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let watchdog = std::thread::spawn(move || {
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: signal 0 only checks that the process exists.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return;
            }
        }
        // SAFETY: kills our own child, which overran its time.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut result = Run::default();
    let mut begun: BTreeMap<String, Instant> = BTreeMap::new();
    let mut transcript = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let now = Instant::now();
        if let Some(name) = line.strip_prefix("guest: bench begin ") {
            begun.insert(name.trim().to_string(), now);
        } else if let Some(rest) = line.strip_prefix("guest: bench end ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap_or("").to_string();
            let field = |key: &str| {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if let (Some(t0), Some(reqs), Some(bytes)) =
                (begun.get(&name), field("requests="), field("bytes="))
            {
                let secs = now.duration_since(*t0).as_secs_f64();
                result.workloads.insert(name, (reqs, bytes, secs));
            }
        }
        transcript.push(line);
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both pointers are valid locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let _ = watchdog.join();
    let stderr_text = err_thread.join().unwrap_or_default();
    result.rss_kib = usage.ru_maxrss as u64;
    let exited_ok = r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == ok_status;
    if !exited_ok || result.workloads.len() < 3 {
        println!(
            "{label}: run failed (wait4 {r}, status {status:#x}, {} workloads measured)",
            result.workloads.len()
        );
        for l in transcript.iter().rev().take(15).rev() {
            println!("  | {l}");
        }
        for l in stderr_text
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("  ! {l}");
        }
        return None;
    }
    Some(result)
}

/// Random reads per run (default), enough for a few hundred milliseconds.
const DEFAULT_REQUESTS: u64 = 200_000;
/// MiB per sequential workload (default): the disk four times over (the
/// guest wraps around it), long enough (~150 ms) for the serial
/// timestamps to be precise.
const DEFAULT_SEQ_MIB: u64 = 4 * DISK_MIB;

fn guest_cmdline() -> String {
    let requests = env_u64("BLK_BENCH_REQUESTS").unwrap_or(DEFAULT_REQUESTS);
    let mib = env_u64("BLK_BENCH_MIB").unwrap_or(DEFAULT_SEQ_MIB);
    format!(
        "guest.bench=blk guest.bench.requests={requests} guest.bench.span={DISK_MIB} guest.bench.mib={mib}"
    )
}

fn ours(disk: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmm"));
    c.arg("--mem")
        .arg(MEM_MIB.to_string())
        .arg("--disk")
        .arg(disk)
        .arg("--cmdline")
        .arg(guest_cmdline());
    if let Ok(extra) = std::env::var("BLK_BENCH_EXTRA_ARGS") {
        c.args(extra.split_whitespace());
    }
    c
}

fn qemu(disk: &Path, image: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    // microvm puts `virtio_mmio.device=` on the command line only
    // without ACPI; `-cpu host` aborts QEMU 7.2 on this machine (MSR 0x10a).
    c.args(["-M", "microvm,acpi=off", "-accel", "kvm", "-m"])
        .arg(MEM_MIB.to_string())
        .args(["-smp", "1", "-nodefaults", "-no-user-config", "-nographic"])
        .args(["-serial", "stdio", "-display", "none"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .arg("-drive")
        .arg(format!("id=d0,file={},format=raw,if=none", disk.display()))
        .args(["-device", "virtio-blk-device,drive=d0,serial=guest-mm-blk0"])
        .arg("-kernel")
        .arg(image)
        .arg("-append")
        .arg(guest_cmdline());
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// IOPS of the random-read workload, MB/s of the sequential ones (read and
/// write bytes over their summed time).
fn rates(r: &Run) -> Option<(f64, f64)> {
    let (reqs, _, secs) = r.workloads.get("randread4k")?;
    let (_, wb, ws) = r.workloads.get("seqwrite1m")?;
    let (_, rb, rs) = r.workloads.get("seqread1m")?;
    Some((*reqs as f64 / secs, (wb + rb) as f64 / 1e6 / (ws + rs)))
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would too.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !Path::new("/dev/kvm").exists() {
        println!("blk bench: SKIPPED: /dev/kvm is absent");
        return;
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        println!(
            "blk bench: SKIPPED: qemu-system-x86_64 is not installed (Debian: qemu-system-x86)"
        );
        return;
    }
    let image = root()
        .join("target")
        .join("guest")
        .join("release")
        .join("guest");
    if !image.is_file() {
        println!(
            "blk bench: the guest image {} is missing (vmm's build script makes it)",
            image.display()
        );
        std::process::exit(1);
    }
    let disk = disk_image();
    let runs = env_u64("BLK_BENCH_RUNS").unwrap_or(3).max(1);
    println!("blk bench: guest {} cmdline `{}`, disk {} ({DISK_MIB} MiB), {MEM_MIB} MiB RAM, {runs} runs each", image.display(), guest_cmdline(), disk.display());
    let mut results: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for i in 0..runs {
        for (label, cmd, ok) in [("ours", ours(&disk), 0), ("qemu", qemu(&disk, &image), 1)] {
            let _ = std::io::stdout().flush();
            if let Some(r) = run(label, cmd, ok) {
                if let Some((iops, mbps)) = rates(&r) {
                    println!(
                        "run {i} {label:4}: randread4k {iops:10.0} IOPS  seq r+w {mbps:8.1} MB/s  peak RSS {} KiB  ({})",
                        r.rss_kib,
                        r.workloads
                            .iter()
                            .map(|(k, (n, b, s))| format!("{k}: {n} req {b} B {s:.3} s"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                results.entry(label).or_default().push(r);
            }
        }
    }
    let summary = |label: &str| {
        let rs = results.get(label)?;
        let iops = median(rs.iter().filter_map(rates).map(|r| r.0).collect());
        let mbps = median(rs.iter().filter_map(rates).map(|r| r.1).collect());
        let rss = median(rs.iter().map(|r| r.rss_kib as f64).collect());
        (!iops.is_nan()).then_some((iops, mbps, rss))
    };
    match (summary("ours"), summary("qemu")) {
        (Some(o), Some(q)) => {
            println!(
                "median ours: {:.0} IOPS, {:.1} MB/s, peak RSS {:.0} KiB",
                o.0, o.1, o.2
            );
            println!(
                "median qemu: {:.0} IOPS, {:.1} MB/s, peak RSS {:.0} KiB",
                q.0, q.1, q.2
            );
            println!("ratio iops_vs_qemu {:.3}", o.0 / q.0);
            println!("ratio seq_mbps_vs_qemu {:.3}", o.1 / q.1);
            println!("rss_kib ours {:.0}", o.2);
            println!("rss_kib qemu {:.0}", q.2);
            println!("ratio rss_vs_qemu {:.3}", o.2 / q.2);
        }
        _ => {
            println!("blk bench: FAILED: a VMM produced no complete run (see above)");
            std::process::exit(1);
        }
    }
}
