// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `devices`: the virtio-mmio transport, virtio-blk, the serial console and
//! the exit port, whose every DMA access goes through guest-mm pins.
//!
//! Empty for now: the devices arrive with the virtio-blk issue. Nothing here
//! pretends to work yet.
