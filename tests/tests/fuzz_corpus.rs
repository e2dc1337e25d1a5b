// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Replay the committed fuzz corpora (fuzz/corpus/walker/,
//! fuzz/corpus/gup/, fuzz/corpus/virtio_blk/ and fuzz/corpus/virtio_iommu/)
//! through the fuzz targets' bodies, so `cargo test` keeps every input the
//! fuzzer found interesting passing. Set `FUZZ_REPLAY=<file or directory>`
//! (walker), `FUZZ_REPLAY_GUP=<file or directory>` (gup),
//! `FUZZ_REPLAY_BLK=<file or directory>` (virtio_blk) or
//! `FUZZ_REPLAY_IOMMU=<file or directory>` (virtio_iommu) to replay
//! something else instead (e.g. a crash artifact), with its panic message.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The files at `path` (a file, or a directory's files in name order). A
/// relative path that does not exist here (the test runs in tests/) is
/// taken from the repository root, so `FUZZ_REPLAY=fuzz/artifacts/...`
/// works from there.
fn inputs(path: &Path) -> Vec<PathBuf> {
    let rooted;
    let path = if path.is_relative() && !path.exists() {
        rooted = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        &rooted
    } else {
        path
    };
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

/// Replays the corpus of target `name` (`fuzz/corpus/<name>`, or what
/// `env_var` names) through `run`, printing each case's `log` when inputs
/// were chosen, and the `histogram` of what the inputs exercised.
fn replay<O>(
    name: &str,
    env_var: &str,
    run: fn(&[u8]) -> O,
    log: fn(&O) -> &str,
    histogram: fn(&[O]) -> BTreeMap<String, usize>,
) {
    // Replaying chosen inputs also prints each case's log.
    let chosen = std::env::var_os(env_var);
    let path = match &chosen {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(name),
    };
    let files = inputs(&path);
    assert!(
        !files.is_empty(),
        "no fuzz inputs in {}: the corpus must be committed",
        path.display()
    );
    let start = std::time::Instant::now();
    let mut bytes = 0;
    let mut outcomes = Vec::new();
    for file in &files {
        let data = fs::read(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        bytes += data.len();
        // Names the input if `run` panics (the panic message has the case).
        eprintln!("replaying {}", file.display());
        let outcome = run(&data);
        if chosen.is_some() {
            println!("--- {} ---\n{}", file.display(), log(&outcome));
        }
        outcomes.push(outcome);
    }
    println!(
        "replayed {} {name} fuzz inputs ({} bytes) from {} in {:.2?}; inputs exercising:",
        files.len(),
        bytes,
        path.display(),
        start.elapsed()
    );
    for (what, count) in histogram(&outcomes) {
        println!("  {count:6}  {what}");
    }
}

#[test]
fn gup_corpus_replays() {
    use integration_tests::fuzz_gup::{histogram, run};
    replay("gup", "FUZZ_REPLAY_GUP", run, |o| &o.log, histogram);
}

#[test]
fn virtio_blk_corpus_replays() {
    use integration_tests::fuzz_blk::{histogram, run};
    replay("virtio_blk", "FUZZ_REPLAY_BLK", run, |o| &o.log, histogram);
}

#[test]
fn virtio_iommu_corpus_replays() {
    use integration_tests::fuzz_iommu::{histogram, run};
    replay(
        "virtio_iommu",
        "FUZZ_REPLAY_IOMMU",
        run,
        |o| &o.log,
        histogram,
    );
}
