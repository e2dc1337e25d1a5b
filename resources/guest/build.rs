// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Link arguments for the freestanding guest image. `rustc-link-arg-bins`
//! applies them to this package's binary only (not to this build script).

fn main() {
    for arg in [
        // No C runtime, no libc: the entry point is `_start` in src/boot.rs.
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        // Loaded (by PVH loaders, at the ELF's physical addresses) at 1 MiB.
        "-Wl,--image-base=0x100000",
        // Only one note: the PVH entry. A build-id note would share the
        // PT_NOTE segment and is of no use here.
        "-Wl,--build-id=none",
        "-Wl,-z,noexecstack",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
