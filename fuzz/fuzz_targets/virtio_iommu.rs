// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzz the virtio-iommu (`devices::virtio::iommu`): requests (raw and
//! structured, directly and through the request queue), page tables in
//! guest memory, endpoint translations and pins, page requests, fault
//! reports and the event queue, and a virtio-blk queue behind an endpoint,
//! every step checked against a model; see `integration_tests::fuzz_iommu`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    integration_tests::fuzz_iommu::run(data);
});
