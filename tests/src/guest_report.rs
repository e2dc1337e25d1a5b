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
}
