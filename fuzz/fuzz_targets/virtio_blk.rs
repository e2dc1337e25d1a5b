// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzz the virtio-blk request path (`devices::virtio::blk`): descriptor
//! tables, available rings, indirect tables, headers and buffers anywhere
//! in (and outside) guest memory, processed synchronously, with every
//! invariant checked; see `integration_tests::fuzz_blk`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    integration_tests::fuzz_blk::run(data);
});
