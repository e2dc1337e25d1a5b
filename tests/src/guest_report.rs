// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The built-in guest's report, as every VMM that boots it must show it:
//! QEMU's microvm (tests/tests/guest_qemu.rs) and our `vmm`
//! (vmm/tests/vmm_boot.rs, which includes this file with `#[path]`, so
//! both assert the very same list). Depends on nothing but std.

/// Check lines every run must report as `[ok]` (prefixes after `guest: [ok] `).
pub const REQUIRED_OK: &[&str] = &[
    "running at CPL3: cs=0x23 ss=0x1b",
    "CPL0 handler at cs=0x8 on the TSS stack",
    "pvh start_info at ",
    "cpuid: ",
    "sse: paddd and sqrtsd at CPL3",
    "4K leaf: 0x40000000 and its read-only alias",
    "2M leaf: 0x40200000 -> 0x600000",
    "1G region: 0x80000000 maps 0..1G",
    "#PF read, not present: vector 14 error 0x4 cr2 0x40003000 from cs 0x23",
    "#PF write, null page: vector 14 error 0x6 cr2 0x10 from cs 0x23",
    "#PF read, supervisor page: vector 14 error 0x5 cr2 0x40001008 from cs 0x23",
    "#PF write, read-only page: vector 14 error 0x7 cr2 0x40002010 from cs 0x23",
    "#PF read, unmapped 512G: vector 14 error 0x4 cr2 0x8000000000 from cs 0x23",
    "#GP hlt at CPL3: vector 13 error 0x0",
];

/// Checks a complete passing report in `serial` (the guest's serial output
/// with `\r\n` already turned into `\n`): the CPL3 greeting, no `[FAIL]`,
/// every [`REQUIRED_OK`] line, the summary counting the `[ok]` lines with
/// exit status 0, and nothing after it. Returns the report's lines, or what
/// is wrong.
pub fn check_passing_report(serial: &str) -> Result<Vec<&str>, String> {
    let lines: Vec<&str> = serial.lines().collect();
    if !lines.contains(&"guest: hello from CPL3") {
        return Err("no `guest: hello from CPL3`".into());
    }
    if serial.contains("[FAIL]") {
        return Err("a check failed ([FAIL] line)".into());
    }
    for want in REQUIRED_OK {
        let prefix = format!("guest: [ok] {want}");
        if !lines.iter().any(|l| l.starts_with(&prefix)) {
            return Err(format!("missing check line `{prefix}...`"));
        }
    }
    let oks = lines
        .iter()
        .filter(|l| l.starts_with("guest: [ok] "))
        .count();
    let summary = format!("guest: {oks} checks, 0 failed; exit status 0");
    if !lines.contains(&summary.as_str()) {
        return Err(format!("no summary line `{summary}`"));
    }
    // Nothing after the summary: the exit port stopped the VM at once.
    if lines.last() != Some(&summary.as_str()) {
        return Err("output after the summary (the exit port did not stop the VM)".into());
    }
    Ok(lines)
}

/// The blk check lines every run with both disks (disk 0 read-write, disk 1
/// read-only with the pattern of `0x524f_0000_0000_0000 | offset` words)
/// must show as `[ok]` (prefixes after `guest: [ok] blk: `), under every VMM.
pub const BLK_OK: &[&str] = &[
    "single segment: 4 KiB written and read back",
    "8 data descriptors: 64 KiB in 8 KiB segments",
    "64 data descriptors of 512..4096 bytes",
    "8 KiB buffers at page offsets 0x800 and 0xe00, crossing 4K boundaries",
    "64 KiB buffers at ",
    "HIGH_ALIAS: the CPU fills and checks 0x8",
    "unaligned segments: ",
    "header split over two descriptors",
    "status byte shares the last data descriptor",
    "indirect descriptors: ",
    "FLUSH",
    "queue depth 32: 1024 writes then 1024 reads of 4 KiB",
    "bad request: data length 100 (not a multiple of 512): status 1",
    "bad request: read straddling the end of the disk: status 1",
    "bad request: read at sector 2^64-8 (byte offset overflows): status 1",
    "bad request: unknown request type 0x7f: status 2",
    "read-only disk: 64 KiB at sector 0 match the pattern",
    "read-only disk: the last 8 sectors",
    "read-only disk: 1048576 bytes at sector ",
    "read-only disk: a 4 KiB write at sector 16 fails: IOERR, the pattern is intact",
];

/// The bad requests our `vmm` must refuse (`[ok]` lines) where QEMU's
/// device mishandles them (the guest skips them there).
pub const BLK_OK_VMM_ONLY: &[&str] = &[
    "bad request: data descriptor in the MMIO hole",
    "bad request: data descriptor beyond RAM",
    "bad request: status descriptor not device-writable",
    "bad request: looping chain",
];

/// Checks the blk part of a report with both disks attached: every
/// [`BLK_OK`] line and every line of `also` as `[ok]`, a setup and a GET_ID
/// line per disk (`guest-mm-blk0` read-write, `guest-mm-blk1` read-only),
/// and the summary ([`blk_summary`]) with bytes verified and no failure.
/// Returns the summary.
pub fn check_blk_report(serial: &str, also: &[&str]) -> Result<(u64, u64, u64), String> {
    let lines: Vec<&str> = serial.lines().collect();
    let ok = |prefix: &str| {
        let want = format!("guest: [ok] blk: {prefix}");
        lines.iter().any(|l| l.starts_with(&want))
    };
    for want in BLK_OK.iter().chain(also) {
        if !ok(want) {
            return Err(format!("no `guest: [ok] blk: {want}...` line"));
        }
    }
    for (id, kind) in [
        ("guest-mm-blk0", "read-write"),
        ("guest-mm-blk1", "read-only"),
    ] {
        if !lines.iter().any(|l| {
            l.starts_with("guest: [ok] blk: disk") && l.contains(&format!(", {kind}, id \"{id}\""))
        }) {
            return Err(format!("no setup line for the {kind} disk {id}"));
        }
        if !lines.iter().any(|l| {
            l.starts_with("guest: [ok] blk: GET_ID disk") && l.contains(&format!(": \"{id}\""))
        }) {
            return Err(format!("no GET_ID line for {id}"));
        }
    }
    let summary = blk_summary(serial).ok_or("no (or a garbled) `guest: blk: ` summary line")?;
    if summary.1 == 0 || summary.2 != 0 {
        return Err(format!(
            "blk summary: {} bytes verified, {} failures",
            summary.1, summary.2
        ));
    }
    Ok(summary)
}

/// The guest's virtio-blk summary, `guest: blk: <N> requests, <B> bytes
/// verified, <F> failures`, as `(N, B, F)`; `None` if the report has no
/// such line (no disk attached) or it does not parse.
pub fn blk_summary(serial: &str) -> Option<(u64, u64, u64)> {
    let line = serial
        .lines()
        .find_map(|l| l.strip_prefix("guest: blk: "))?;
    let mut words = line.split_whitespace();
    let mut number = |unit: &[&str]| -> Option<u64> {
        let n = words.next()?.parse().ok()?;
        for u in unit {
            if words.next()?.trim_end_matches(',') != *u {
                return None;
            }
        }
        Some(n)
    };
    let requests = number(&["requests"])?;
    let bytes = number(&["bytes", "verified"])?;
    let failures = number(&["failures"])?;
    Some((requests, bytes, failures))
}

/// The guest-virtual DMA check lines (prefixes after `guest: [ok] sva: `)
/// a run with a disk behind our virtio-iommu must show, in this order
/// (resources/guest/src/sva.rs; docs/guest-va-dma.md): first a MAP
/// domain, then the guest's own page tables attached to the disk's domain.
pub const SVA_OK: &[&str] = &[
    "virtio-iommu at ",
    "PROBE endpoint ",
    "request errors: ",
    "MAP domain 1: endpoint ",
    "MAP domain: 48 KiB written from 3 segments",
    "MAP domain faults: ",
    "MAP errors: ",
    "UNMAP: ",
    "DETACH with the disk live: ",
    "ATTACH_TABLE errors: ",
    "ATTACH_TABLE domain 2: ",
    "SVA present 4K pages: ",
    "SVA lazy pages, device writes: a 16 KiB read into 5 unmapped pages",
    "SVA lazy pages, device reads: a 12 KiB write from 4 unmapped pages",
    "SVA refused: ",
    "SVA write DMA into a read-only mapping",
    "SVA read-only mapping made writable on its page request",
    "SVA buffer straddling a 4K leaf boundary",
    "SVA buffer straddling a 4K leaf -> 2M leaf boundary",
    "SVA buffer straddling a 2M leaf -> 4K leaf boundary",
    "SVA buffer straddling a 4K leaf -> 1G leaf boundary",
    "SVA large leaves: ",
    "SVA FAILURE: ",
    "SVA reset while a request waits for its page response",
    "SVA teardown: ",
];

/// The optional sva check lines: `guest.sva.timeout` on the command line
/// adds this one (before the last two of [`SVA_OK`]).
pub const SVA_TIMEOUT_OK: &str = "SVA timeout: a page request left unanswered";

/// The guest's guest-virtual DMA summary line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvaSummary {
    /// virtio-blk requests on the disk behind the IOMMU.
    pub requests: u64,
    /// Requests on the IOMMU's request queue.
    pub iommu_requests: u64,
    /// Bytes read back and checked.
    pub bytes: u64,
    /// Page requests received.
    pub page_requests: u64,
    /// PAGE_RESP SUCCESS the device accepted.
    pub success: u64,
    /// PAGE_RESP INVALID the device accepted.
    pub invalid: u64,
    /// PAGE_RESP FAILURE the device accepted.
    pub failure: u64,
    /// Page requests left unanswered on purpose.
    pub unanswered: u64,
    /// Fault reports received.
    pub fault_reports: u64,
    /// Failed sva checks.
    pub failures: u64,
}

/// Parses `guest: sva: <N> requests, <Q> iommu requests, <B> bytes
/// verified, <P> page requests (<S> success, <I> invalid, <X> failure,
/// <U> unanswered), <F> fault reports, <E> failures`; `None` without such a line (no
/// IOMMU) or when it does not parse.
pub fn sva_summary(serial: &str) -> Option<SvaSummary> {
    let line = serial
        .lines()
        .find_map(|l| l.strip_prefix("guest: sva: "))?;
    let mut words = line
        .split_whitespace()
        .map(|w| w.trim_matches(|c| c == ',' || c == '(' || c == ')'));
    let mut number = |unit: &[&str]| -> Option<u64> {
        let n = words.next()?.parse().ok()?;
        for u in unit {
            if words.next()? != *u {
                return None;
            }
        }
        Some(n)
    };
    let s = SvaSummary {
        requests: number(&["requests"])?,
        iommu_requests: number(&["iommu", "requests"])?,
        bytes: number(&["bytes", "verified"])?,
        page_requests: number(&["page", "requests"])?,
        success: number(&["success"])?,
        invalid: number(&["invalid"])?,
        failure: number(&["failure"])?,
        unanswered: number(&["unanswered"])?,
        fault_reports: number(&["fault", "reports"])?,
        failures: number(&["failures"])?,
    };
    words.next().is_none().then_some(s)
}

/// Checks the sva part of a report: every [`SVA_OK`] line as `[ok]`, in
/// order, with the lines of `also` before the last two, and no other sva
/// check line; no failed sva check; the summary with bytes verified, every
/// page request answered or left unanswered on purpose, and no failure.
pub fn check_sva_report(serial: &str, also: &[&str]) -> Result<SvaSummary, String> {
    let split = SVA_OK.len().saturating_sub(2);
    let expected: Vec<&str> = SVA_OK[..split]
        .iter()
        .chain(also)
        .chain(&SVA_OK[split..])
        .copied()
        .collect();
    let checks: Vec<&str> = serial.lines().filter(|l| l.contains("] sva: ")).collect();
    if let Some(bad) = checks.iter().find(|l| !l.starts_with("guest: [ok] sva: ")) {
        return Err(format!("sva check not ok: `{bad}`"));
    }
    if checks.len() != expected.len() {
        return Err(format!(
            "{} sva check lines, expected {}: {checks:#?}",
            checks.len(),
            expected.len()
        ));
    }
    for (line, want) in checks.iter().zip(&expected) {
        if !line.starts_with(&format!("guest: [ok] sva: {want}")) {
            return Err(format!(
                "`{line}` where `guest: [ok] sva: {want}...` belongs"
            ));
        }
    }
    let s = sva_summary(serial).ok_or("no (or a garbled) `guest: sva: ` summary line")?;
    if s.failures != 0
        || s.bytes == 0
        || s.page_requests == 0
        || s.page_requests != s.success + s.invalid + s.failure + s.unanswered
    {
        return Err(format!("sva summary: {s:?}"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> String {
        let mut s = String::from("guest: hello from CPL3\n");
        for l in REQUIRED_OK {
            s += &format!("guest: [ok] {l} ...\n");
        }
        s += &format!(
            "guest: {} checks, 0 failed; exit status 0\n",
            REQUIRED_OK.len()
        );
        s
    }

    #[test]
    fn accepts_a_complete_report_and_rejects_damaged_ones() {
        let s = good();
        assert!(check_passing_report(&s).is_ok());
        assert!(check_passing_report(&s.replace("hello from CPL3", "hello")).is_err());
        assert!(check_passing_report(&s.replace("[ok] sse", "[FAIL] sse")).is_err());
        assert!(check_passing_report(&s.replace("[ok] sse", "[note] sse")).is_err());
        assert!(check_passing_report(&format!("{s}guest: more\n")).is_err());
        assert!(check_passing_report(
            &s.replace("0 failed; exit status 0", "0 failed; exit status 1")
        )
        .is_err());
        let one_less = s.replacen("guest: [ok] sse: paddd and sqrtsd at CPL3 ...\n", "", 1);
        assert!(check_passing_report(&one_less).is_err());
    }

    #[test]
    fn blk_summary_parses_the_line_and_only_it() {
        let s =
            "guest: [ok] blk: x\nguest: blk: 2102 requests, 5682688 bytes verified, 0 failures\n";
        assert_eq!(blk_summary(s), Some((2102, 5682688, 0)));
        assert_eq!(
            blk_summary("guest: blk: 1 requests, 2 bytes verified, 3 failures"),
            Some((1, 2, 3))
        );
        assert_eq!(blk_summary(&good()), None);
        assert_eq!(
            blk_summary("guest: blk: 1 requests, 2 bytes, 3 failures"),
            None
        );
        assert_eq!(
            blk_summary("guest: blk: many requests, 2 bytes verified, 3 failures"),
            None
        );
    }

    #[test]
    fn sva_summary_parses_the_line_and_only_it() {
        let line = "guest: sva: 39 requests, 74 iommu requests, 397312 bytes verified, 16 page requests (11 success, 3 invalid, 1 failure, 1 unanswered), 11 fault reports, 0 failures\n";
        assert_eq!(
            sva_summary(line),
            Some(SvaSummary {
                requests: 39,
                iommu_requests: 74,
                bytes: 397312,
                page_requests: 16,
                success: 11,
                invalid: 3,
                failure: 1,
                unanswered: 1,
                fault_reports: 11,
                failures: 0,
            })
        );
        assert_eq!(sva_summary(&good()), None);
        assert_eq!(sva_summary(&line.replace("74 iommu", "74")), None);
        assert_eq!(
            sva_summary(&line.replace("0 failures", "0 failures, more")),
            None
        );
        assert_eq!(sva_summary(&line.replace("11 success", "x success")), None);
    }

    fn check_sva_report_(s: &str) -> Result<SvaSummary, String> {
        check_sva_report(s, &[])
    }

    #[test]
    fn sva_report_needs_every_line_in_order() {
        let mut s = String::new();
        for l in SVA_OK {
            s += &format!("guest: [ok] sva: {l}...\n");
        }
        s += "guest: sva: 9 requests, 9 iommu requests, 4096 bytes verified, 3 page requests (1 success, 1 invalid, 1 failure, 0 unanswered), 2 fault reports, 0 failures\n";
        assert!(check_sva_report(&s, &[]).is_ok());
        assert!(check_sva_report(&s, &[SVA_TIMEOUT_OK]).is_err());
        let with_timeout = s.replace(
            "guest: [ok] sva: SVA reset",
            &format!("guest: [ok] sva: {SVA_TIMEOUT_OK}...\nguest: [ok] sva: SVA reset"),
        );
        assert!(check_sva_report(&with_timeout, &[SVA_TIMEOUT_OK]).is_ok());
        assert!(check_sva_report(&with_timeout, &[]).is_err());
        assert!(check_sva_report_(&s.replace("[ok] sva: UNMAP", "[FAIL] sva: UNMAP")).is_err());
        assert!(check_sva_report_(&s.replacen("guest: [ok] sva: UNMAP: ...\n", "", 1)).is_err());
        let swapped = s
            .replace("SVA FAILURE", "@")
            .replace("SVA teardown", "SVA FAILURE")
            .replace('@', "SVA teardown");
        assert!(check_sva_report_(&swapped).is_err());
        assert!(check_sva_report_(&s.replace("(1 success", "(2 success")).is_err());
        assert!(check_sva_report_(&s.replace("0 failures", "1 failures")).is_err());
    }
}
