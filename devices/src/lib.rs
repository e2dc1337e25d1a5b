// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `devices`: the legacy devices (serial console, exit port, i8042 reset,
//! the port bus), the MMIO bus, and virtio: the virtio-mmio transport and
//! virtio-blk, whose every DMA access goes through guest-mm pins.
//!
//! Devices never panic on guest input: every port and value a guest may
//! write is either handled or ignored (and counted by [`pio::PioBus`]).

#![deny(missing_docs)]

pub mod exit_port;
pub mod i8042;
pub mod mmio;
pub mod pio;
pub mod serial;
pub mod virtio;
