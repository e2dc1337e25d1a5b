// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared helpers for the cross-crate integration tests.

pub mod fuzz_walker;
pub mod guest_exec;
pub mod kvm;
pub mod ptgen;
pub mod ref_walker;
