// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vmm`: boots a microVM (the built-in guest when no --kernel is given)
//! and exits with the guest's status. See `vmm --help` and README.md.

fn main() {
    std::process::exit(vmm::app::main_with_args(std::env::args_os()));
}
