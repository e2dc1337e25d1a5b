// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The guest agent (vmm/src/agent.rs, docs/guest-agent.md), end to end: the
//! built-in guest asks `vmm` through port 0xf8 to FILL and SUM buffers in
//! its demand-paged lazy region; `vmm` injects the #PFs of the pages that
//! are missing and the guest's handler maps them. The test checks the
//! guest's report (every agent check `[ok]`: data verified, one #PF per
//! page, the read-only page given up after 16 injections, the refused page,
//! the bad requests) against the VMM's own `vmm: agent:` counter line: the
//! #PFs the VMM injected are exactly the ones the guest saw, by class.
//!
//! Needs /dev/kvm; skips (loudly) only where it is absent.

mod common;

#[path = "../../tests/src/guest_report.rs"]
#[allow(dead_code)]
mod guest_report;

use common::*;

/// The agent checks every run under `vmm` must pass (prefixes after
/// `guest: [ok] `).
const AGENT_OK: &[&str] = &[
    "lazy #PF: a CPL3 write to 0x440ff010 took 1 #PF (error 0x6)",
    "agent: FILL of 13312 bytes at 0x44000800 over 4 unmapped lazy pages: 4 #PFs injected (last error 0x6) and mapped, 13312 bytes verified, 0 wrong",
    "agent: SUM of the filled buffer (mapped): FNV-1a ",
    "agent: SUM of 8704 bytes at 0x44100100 over 3 unmapped read-only lazy pages: 3 read #PFs (last error 0x4), FNV-1a matches",
    "agent: FILL of a read-only lazy page 0x44100040: the handler re-mapped it 16 times (error 0x7), the VMM gave up with status FAULT",
    "agent: FILL of a refused lazy page 0x44190123: the injected #PF reached the ordinary handler",
    "agent: bad request, unknown operation 0x77: status 1",
    "agent: bad request, 2 MiB buffer: status 2",
    "agent: bad request, non-canonical address: status 3",
    "agent: bad request, buffer in no RAM (the MMIO window): status 4",
];

#[test]
fn agent_faults_are_injected_resolved_and_counted() {
    if !kvm_or_skip("agent_faults_are_injected_resolved_and_counted") {
        return;
    }
    let out = run(&[]);
    let dump = out.dump();
    assert_eq!(out.code, Some(0), "{dump}");
    let lines =
        guest_report::check_passing_report(&out.stdout).unwrap_or_else(|e| panic!("{e}; {dump}"));
    for want in AGENT_OK {
        let prefix = format!("guest: [ok] {want}");
        assert!(
            lines.iter().any(|l| l.starts_with(&prefix)),
            "missing `{prefix}...`; {dump}"
        );
    }

    // The guest's tally and the VMM's counters.
    let guest = lines
        .iter()
        .find(|l| l.starts_with("guest: agent: requests="))
        .unwrap_or_else(|| panic!("no guest agent summary; {dump}"));
    let vmm = out
        .stderr
        .lines()
        .find(|l| l.starts_with("vmm: agent: port=0xf8 "))
        .unwrap_or_else(|| panic!("no `vmm: agent:` line; {dump}"));
    let g = |k: &str| count(guest, k);
    let v = |k: &str| count(vmm, k);

    // Every #PF the VMM injected reached the guest's handler: the lazy
    // pages it mapped (4 for the FILL, 3 for the read-only SUM, 16 times
    // the read-only page it cannot fix) and the refused page.
    assert_eq!(v("injected_pf"), g("injected_seen"), "{dump}");
    assert_eq!(
        g("injected_seen"),
        g("lazy_mapped") + g("refused"),
        "{dump}"
    );
    assert_eq!(g("refused"), 1, "{dump}");
    assert_eq!(
        v("not_present") + v("protection") + v("reserved") + v("pkey"),
        v("injected_pf"),
        "{dump}"
    );
    // The write to the read-only page: a protection fault, injected
    // MAX_SAME_FAULT times, then given up.
    assert_eq!(v("protection"), 16, "{dump}");
    assert_eq!(v("gave_up"), 1, "{dump}");
    assert_eq!(v("not_present"), 4 + 3 + 1, "{dump}");
    assert_eq!((v("reserved"), v("pkey")), (0, 0), "{dump}");
    // The guest's own CPL3 access to a lazy page was no injection.
    assert_eq!(g("own_faults"), 1, "{dump}");

    // Exits: one per reply and one per restart. The refused request ended
    // at the guest's fixup, never answered.
    assert_eq!(v("exits"), v("replies") + v("injected_pf"), "{dump}");
    assert_eq!(v("replies") + g("refused"), g("requests"), "{dump}");
    assert_eq!(v("replies"), v("ok") + v("failed"), "{dump}");
    // Failures: the four bad requests and the given-up one. Bad input
    // (refused before pinning): the unknown operation and the 2 MiB buffer.
    let bad = lines
        .iter()
        .filter(|l| l.starts_with("guest: [ok] agent: bad request, "))
        .count() as u64;
    assert_eq!(bad, 4, "{dump}");
    assert_eq!(v("failed"), bad + v("gave_up"), "{dump}");
    assert_eq!(v("bad_input"), 2, "{dump}");
    // Bytes: the FILL, then the two SUMs (the filled buffer again, and the
    // read-only pages) — all of which the guest verified.
    assert_eq!(v("bytes_filled"), 13312, "{dump}");
    assert_eq!(v("bytes_summed"), 13312 + 8704, "{dump}");
    assert_eq!(
        g("bytes_verified"),
        v("bytes_filled") + v("bytes_summed"),
        "{dump}"
    );
}
