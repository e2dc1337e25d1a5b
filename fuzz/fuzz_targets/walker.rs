// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzz `guest_mm::paging` (translate, walk_range, touch) against the
//! independent reference walker; see `integration_tests::fuzz_walker`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    integration_tests::fuzz_walker::run(data);
});
