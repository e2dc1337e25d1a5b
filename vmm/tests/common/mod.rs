// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared helpers for the tests that run the `vmm` binary: starting it
//! with its output piped and a bound on its run time ([`run`], [`finish`]),
//! the skip when /dev/kvm is absent, `key=value` fields of its counter
//! lines, and temporary files that go when dropped.
//!
//! Declared from each test file with `mod common;`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The built-in guest exits in well under a second here; this bounds a hang.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The `vmm` binary with stdin closed and stdout and stderr piped.
pub fn vmm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmm"));
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Whether /dev/kvm is there; if not, says (on stderr) that `test` is
/// skipped.
pub fn kvm_or_skip(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: /dev/kvm is absent");
    false
}

/// What a `vmm` run left: its exit code and output (stdout with `\r\n`
/// folded to `\n`).
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Exit code, stdout and stderr, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "exit code {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Waits for `child` (killing it after [`TIMEOUT`]) and collects its output.
pub fn finish(mut child: Child) -> Out {
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let ro = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let re = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for vmm") {
            break s;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vmm did not exit within {TIMEOUT:?}; stdout so far:\n{}",
                String::from_utf8_lossy(&ro.join().unwrap_or_default())
            );
        }
        thread::sleep(Duration::from_millis(2));
    };
    Out {
        code: status.code(),
        stdout: String::from_utf8_lossy(&ro.join().expect("stdout reader")).replace("\r\n", "\n"),
        stderr: String::from_utf8_lossy(&re.join().expect("stderr reader")).into_owned(),
    }
}

/// Runs `vmm` with `args` (killed after [`TIMEOUT`]).
pub fn run(args: &[&str]) -> Out {
    finish(vmm().args(args).spawn().expect("starting vmm"))
}

/// `key=<u64>` in `line`.
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// `key=<u64>` in `line`, which must be there.
pub fn count(line: &str, key: &str) -> u64 {
    field(line, key).unwrap_or_else(|| panic!("no {key}= in `{line}`"))
}

/// A file in the temporary directory, removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// `vmm-test-<pid>-<name>` in the temporary directory, holding `bytes`.
    pub fn new(name: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("vmm-test-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).expect("writing a test file");
        TempFile(path)
    }

    /// The path followed by `options`, as a `--disk` argument.
    pub fn arg(&self, options: &str) -> String {
        format!("{}{options}", self.0.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
