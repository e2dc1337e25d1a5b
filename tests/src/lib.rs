// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared helpers for the cross-crate integration tests.

pub mod fuzz_blk;
pub mod fuzz_gup;
mod fuzz_input;
pub mod fuzz_iommu;
pub mod fuzz_walker;
pub mod guest_exec;
pub mod guest_report;
pub mod iommu_rig;
pub mod kvm;
pub mod ptgen;
pub mod ref_walker;

/// Write a summary line to the real stderr, past the test harness's output
/// capture (which takes `println!`/`eprintln!`, not direct writes), so that
/// the differential tests' counts show in every CI log.
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
