// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzz the GUP engine (`guest_mm::gup`): requests, drops, page-table
//! rewrites, balloon discards, freezes and region changes, with every
//! invariant checked; see `integration_tests::fuzz_gup`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    integration_tests::fuzz_gup::run(data);
});
