// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest-virtual DMA (docs/guest-va-dma.md) end to end: the built-in
//! guest's virtio-iommu driver and its scenarios (resources/guest/src/
//! iommu.rs and sva.rs) against our virtio-iommu and the virtio-blk disk
//! behind it, checked from both sides: every scenario's check line, and
//! the guest's counts (blk requests, IOMMU requests, page requests and the
//! answers to them, fault reports, bytes verified) equal to the counters
//! the devices print at exit; the GUP engine's counters show the fast
//! path, the slow-path fallbacks the scenarios provoke (not-present and
//! protection faults, Accessed/Dirty bits to set, the rings' long-term
//! pins) and the faults the guest resolved.
//!
//! - `sva_default_run`: no arguments (the third scratch disk is behind
//!   the IOMMU: endpoint 2, the IOMMU in slot 3).
//! - `sva_only_disk_is_endpoint_0`: one `--disk PATH,iommu`: endpoint 0,
//!   the IOMMU in slot 1, and the guest's writes reached the file.
//! - `sva_page_request_timeout`: `guest.sva.timeout` leaves one page
//!   request unanswered; with `--iommu-prq-timeout-ms 100` the device gives
//!   up on it (IOERR, a fault report, counted as a timeout).
//!
//! They need /dev/kvm and skip (loudly) only where it is absent.

mod common;

#[path = "../../tests/src/guest_report.rs"]
#[allow(dead_code)]
mod guest_report;

use common::*;
use guest_report::SvaSummary;

/// The first stderr line starting with `prefix`.
fn line<'a>(out: &'a Out, prefix: &str) -> &'a str {
    out.stderr
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line; {}", out.dump()))
}

/// The index of the disk behind the IOMMU and the IOMMU's base address,
/// from the `vmm: disks:` line.
fn iommu_layout(out: &Out) -> (usize, String) {
    let disks = line(out, "vmm: disks: ");
    let disk = (0..16)
        .find(|n| {
            let key = format!("virtio-blk{n} ");
            disks.find(&key).is_some_and(|at| {
                let rest = &disks[at..];
                rest[..rest.find(')').unwrap_or(rest.len())].contains("behind the IOMMU")
            })
        })
        .unwrap_or_else(|| panic!("no disk behind the IOMMU in `{disks}`"));
    let base = disks
        .split("virtio-iommu at ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no virtio-iommu in `{disks}`"));
    (disk, base.to_string())
}

/// Everything every run checks: the guest's sva report (with the optional
/// check lines `also`), its counts against the devices' counters (with
/// `timeouts` page requests the device gave up on), the GUP counters.
/// Returns the guest's summary.
fn check_sva_run(out: &Out, also: &[&str], timeouts: u64) -> SvaSummary {
    let dump = out.dump();
    guest_report::check_passing_report(&out.stdout).unwrap_or_else(|e| panic!("{e}; {dump}"));
    assert_eq!(out.code, Some(0), "{dump}");
    let s =
        guest_report::check_sva_report(&out.stdout, also).unwrap_or_else(|e| panic!("{e}; {dump}"));

    // The endpoint is the disk's slot; the guest found the IOMMU where the
    // VMM put it.
    let (disk, base) = iommu_layout(out);
    assert!(
        out.stdout.contains(&format!(
            "guest: [ok] sva: virtio-iommu at {base} (entry {}",
            disk + 1
        )),
        "{dump}"
    );
    assert!(
        out.stdout
            .contains(&format!("guest: [ok] sva: PROBE endpoint {disk} ")),
        "{dump}"
    );

    // The disk behind the IOMMU: the guest's requests, its parked requests
    // (one per page request) and those resumed (one per SUCCESS), one
    // translation error per fault report (each refused DMA is reported
    // once), and every byte read was checked by the guest.
    let blk = line(out, &format!("vmm: virtio-blk{disk} ("));
    assert_eq!(count(blk, "requests"), s.requests, "{dump}");
    assert_eq!(count(blk, "page_requests"), s.page_requests, "{dump}");
    assert_eq!(count(blk, "resumed"), s.success, "{dump}");
    assert_eq!(count(blk, "translation"), s.fault_reports, "{dump}");
    assert_eq!(count(blk, "errors"), s.fault_reports, "{dump}");
    assert_eq!(count(blk, "bytes_read"), s.bytes, "{dump}");
    assert!(count(blk, "bytes_written") > 0, "{dump}");

    // The IOMMU: requests, page requests, answers by code, fault reports;
    // every record written to the event queue, none dropped, no timeout.
    let iommu = line(out, "vmm: virtio-iommu: ");
    assert_eq!(count(iommu, "requests"), s.iommu_requests, "{dump}");
    assert_eq!(count(iommu, "page_requests"), s.page_requests, "{dump}");
    assert_eq!(count(iommu, "success"), s.success, "{dump}");
    assert_eq!(count(iommu, "invalid"), s.invalid, "{dump}");
    assert_eq!(count(iommu, "failure"), s.failure, "{dump}");
    assert_eq!(count(iommu, "fault_reports"), s.fault_reports, "{dump}");
    assert_eq!(
        count(iommu, "events_written"),
        s.page_requests + s.fault_reports,
        "{dump}"
    );
    assert_eq!(count(iommu, "events_dropped"), 0, "{dump}");
    assert_eq!(count(iommu, "timeouts"), timeouts, "{dump}");
    // The scenarios' own numbers: 5 + 4 lazy pages, 2 refused, 2 for the
    // read-only mapping (one refused, one made writable), 1 FAILURE and 1
    // after the table is attached again, 1 left waiting across a reset
    // (and 1 left to time out).
    assert_eq!(
        (
            s.page_requests,
            s.success,
            s.invalid,
            s.failure,
            s.unanswered
        ),
        (16 + timeouts, 11, 3, 1, 1 + timeouts),
        "{dump}"
    );

    // GUP: the fast path served the requests whose pages were ready; the
    // slow path took every page request's fault (not present, or present
    // without write permission), set the Accessed/Dirty bits the guest left
    // clear, and pinned the rings long-term at each of the two activations
    // behind the IOMMU (3 rings each).
    let gup = line(out, "vmm: gup: requests=");
    let fb = |k: &str| field(gup, k).unwrap_or(0);
    assert!(count(gup, "fast_hits") > 0, "{dump}");
    assert!(count(gup, "slow_calls") > 0, "{dump}");
    assert!(
        fb("not_present") + fb("protection") >= s.page_requests,
        "every page request comes from a fault the fast path could not serve; {dump}"
    );
    assert!(fb("accessed_dirty") > 0, "{dump}");
    assert!(fb("longterm") >= 6, "{dump}");
    s
}

#[test]
fn sva_default_run() {
    if !kvm_or_skip("sva_default_run") {
        return;
    }
    let out = run(&[]);
    println!("{}\n{}", out.stdout.trim_end(), out.stderr.trim_end());
    let s = check_sva_run(&out, &[], 0);
    let (disk, _) = iommu_layout(&out);
    assert_eq!(disk, 2, "{}", out.dump());
    // The physical-DMA disks are not the guest-virtual one.
    assert!(
        out.stdout.contains(
            "guest: [note] blk: virtio-mmio at 0xd0002000 irq 7: block device behind the IOMMU"
        ),
        "{}",
        out.dump()
    );
    assert!(s.requests > 0);
}

#[test]
fn sva_only_disk_is_endpoint_0() {
    if !kvm_or_skip("sva_only_disk_is_endpoint_0") {
        return;
    }
    let img = TempFile::new("sva-endpoint0.img", &vec![0u8; 8 << 20]);
    let arg = img.arg(",iommu");
    let out = run(&["--disk", &arg]);
    check_sva_run(&out, &[], 0);
    let (disk, base) = iommu_layout(&out);
    assert_eq!((disk, base.as_str()), (0, "0xd0001000"), "{}", out.dump());
    // The guest's writes through IOVAs and its own virtual addresses
    // reached the file.
    let data = std::fs::read(&img.0).expect("reading the disk image");
    let nonzero = data.iter().filter(|&&b| b != 0).count();
    assert!(nonzero > 64 * 1024, "{nonzero} non-zero bytes");
}

#[test]
fn sva_page_request_timeout() {
    if !kvm_or_skip("sva_page_request_timeout") {
        return;
    }
    let out = run(&[
        "--iommu-prq-timeout-ms",
        "100",
        "--cmdline",
        "guest.sva.timeout",
    ]);
    check_sva_run(&out, &[guest_report::SVA_TIMEOUT_OK], 1);
}
