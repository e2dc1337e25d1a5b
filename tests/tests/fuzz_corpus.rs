// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Replay the committed `walker` fuzz corpus (fuzz/corpus/walker/) through
//! the fuzz target's body, so `cargo test` keeps every input the fuzzer found
//! interesting passing. Set `FUZZ_REPLAY=<file or directory>` to replay
//! something else instead (e.g. a crash artifact), with its panic message.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

fn inputs(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files: Vec<PathBuf> = fs::read_dir(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn walker_corpus_replays() {
    let path = match std::env::var_os("FUZZ_REPLAY") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/walker"),
    };
    let files = inputs(&path);
    assert!(
        !files.is_empty(),
        "no fuzz inputs in {}: the corpus must be committed",
        path.display()
    );
    let mut bytes = 0;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let data = fs::read(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        bytes += data.len();
        // Names the input if `run` panics (the panic message has the case).
        eprintln!("replaying {}", file.display());
        let outcome = integration_tests::fuzz_walker::run_with_summary(&data);
        *outcomes.entry(outcome).or_default() += 1;
    }
    println!(
        "replayed {} walker fuzz inputs ({} bytes) from {}",
        files.len(),
        bytes,
        path.display()
    );
    for (outcome, count) in &outcomes {
        println!("  {count:6}  {outcome}");
    }
}
