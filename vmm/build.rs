// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Builds the built-in guest (resources/guest, its own cargo workspace) so
//! that `vmm` can embed it (`src/guest_image.rs`).
//!
//! The nested `cargo build --release` runs in resources/guest (so that its
//! `.cargo/config.toml` applies) with its own target directory,
//! `<workspace>/target/guest`: the directory tests/tests/guest_qemu.rs
//! builds into as well, so neither rebuilds what the other built, and
//! neither waits on the main workspace's build lock. The variables cargo
//! sets for build scripts (and the user's flags meant for the main
//! workspace) are cleared so that they cannot leak into the guest's build.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("vmm/ is inside the workspace")
        .to_path_buf();
    let guest = root.join("resources").join("guest");
    let target_dir = root.join("target").join("guest");
    let image = target_dir.join("release").join("guest");

    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest.join(path).display());
    }
    println!("cargo:rerun-if-changed={}", image.display());

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--release", "--quiet"])
        .current_dir(&guest)
        .env("CARGO_TARGET_DIR", &target_dir);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = matches!(key, "CARGO_HOME" | "CARGO_MAKEFLAGS" | "CARGO_TARGET_DIR")
            || key.starts_with("CARGO_NET_")
            || key.starts_with("CARGO_HTTP_");
        let clear = key.starts_with("CARGO_")
            || key.starts_with("__CARGO")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTC_LINKER"
            );
        if clear && !keep {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cargo:?} to build {}: {e}", guest.display()));
    if !out.status.success() {
        panic!(
            "building the built-in guest ({}) failed ({}):\n{}{}",
            guest.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(image.is_file(), "{} was not built", image.display());
    println!("cargo:rustc-env=VMM_GUEST_IMAGE={}", image.display());
}
