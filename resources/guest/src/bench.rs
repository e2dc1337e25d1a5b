// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `guest.bench=blk`: block workloads on disk 0 (the first writable disk),
//! timed by the host from the serial lines around each one:
//!
//! ```text
//! guest: bench begin <name>
//! guest: bench end <name> requests=<n> bytes=<b>
//! ```
//!
//! Nothing is printed during a workload. Workloads, in order:
//!
//! - `randread4k`: 4 KiB reads at random 4 KiB-aligned offsets of the first
//!   `guest.bench.span` MiB (default 64, at most the disk), `guest.bench.requests`
//!   of them (default 20000), `guest.bench.qd` in flight (default 32);
//! - `seqwrite1m`, `seqread1m`: `guest.bench.mib` MiB (default 64) in 1 MiB
//!   requests (smaller only if `seg_max` x `size_max` demands it), in order,
//!   wrapping around the disk, `guest.bench.seqqd` in flight (default 8).
//!
//! Then the guest exits with status 0 (1 when a request failed).

use core::fmt::Write;

use crate::blk::{blk_status, req, Blk, Job, MAX_CHAIN, MAX_DEPTH};
use crate::dma::{discover, fill, Arena, Buf, Pattern};
use crate::pvh;
use crate::serial::Serial;
use crate::status;

/// Bytes of a random read.
const RAND_BYTES: u32 = 4096;
/// Bytes of a sequential request (before device limits).
const SEQ_BYTES: u32 = 1 << 20;

/// Runs the benchmark; returns the exit status.
pub fn run(cmd: &[u8]) -> u8 {
    let Some(mut arena) = Arena::new() else {
        let _ = writeln!(
            Serial,
            "guest: bench: the DMA arena is not RAM (give the guest at least 64 MiB)"
        );
        return status::CHECK_FAILED;
    };
    let mut setup_failed = false;
    let mut disks = discover(cmd, &mut arena, |ok, args| {
        setup_failed |= ok == Some(false);
        let _ = writeln!(Serial, "guest: bench: {args}");
    });
    let Some(disk) = disks.rw() else {
        let _ = writeln!(Serial, "guest: bench: no writable virtio-blk disk");
        return status::CHECK_FAILED;
    };
    let blk = &mut disk.blk;
    let opt = |key: &str, default: u64| pvh::num_option(cmd, key).unwrap_or(default);
    let requests = opt("guest.bench.requests", 20_000);
    let qd = (opt("guest.bench.qd", 32) as usize).clamp(1, MAX_DEPTH);
    let span_mib = opt("guest.bench.span", 64).max(1);
    let mib = opt("guest.bench.mib", 64);
    let seq_qd = (opt("guest.bench.seqqd", 8) as usize).clamp(1, MAX_DEPTH);

    let mut failed = 0u64;

    // randread4k
    let span_blocks =
        span_mib.saturating_mul(1 << 20).min(blk.capacity * 512) / u64::from(RAND_BYTES);
    let Some(bufs) = arena.alloc(qd as u64 * u64::from(RAND_BYTES), 4096) else {
        let _ = writeln!(Serial, "guest: bench: DMA arena exhausted");
        return status::CHECK_FAILED;
    };
    if span_blocks == 0 {
        let _ = writeln!(Serial, "guest: bench: disk 0 is smaller than 4 KiB");
        return status::CHECK_FAILED;
    }
    let _ = writeln!(
        Serial,
        "guest: bench randread4k: {requests} reads of {RAND_BYTES} bytes at queue depth {qd} over {} MiB",
        (span_blocks * u64::from(RAND_BYTES)) >> 20
    );
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let r = workload(
        blk,
        "randread4k",
        qd,
        requests,
        u64::from(RAND_BYTES),
        &mut failed,
        |_, slot| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            Job {
                ty: req::IN,
                sector: (rng % span_blocks) * u64::from(RAND_BYTES / 512),
                addr: bufs + slot as u64 * u64::from(RAND_BYTES),
                len: RAND_BYTES,
            }
        },
    );
    if !r {
        return status::CHECK_FAILED;
    }

    // seqwrite1m, seqread1m: requests as large as the device allows up to 1 MiB.
    let max_segs = blk.max_segments().min(MAX_CHAIN as u32 - 2);
    let seq = (u64::from(SEQ_BYTES))
        .min(u64::from(max_segs) * u64::from(blk.max_segment_bytes()))
        .min(blk.capacity * 512) as u32
        & !4095;
    if seq == 0 {
        let _ = writeln!(Serial, "guest: bench: the device allows no 4 KiB request");
        return status::CHECK_FAILED;
    }
    let seq_qd = seq_qd
        .min(((arena_left(&arena)) / u64::from(seq)) as usize)
        .max(1);
    let Some(seq_bufs) = arena.alloc(seq_qd as u64 * u64::from(seq), 4096) else {
        let _ = writeln!(Serial, "guest: bench: DMA arena exhausted");
        return status::CHECK_FAILED;
    };
    let seq_requests = mib.saturating_mul(1 << 20) / u64::from(seq);
    // Requests wrap around the disk's whole `seq`-sized blocks.
    let disk_blocks = (blk.capacity * 512 / u64::from(seq)).max(1);
    let sectors = u64::from(seq) / 512;
    // Give the written data a pattern (once: not part of the workload).
    for slot in 0..seq_qd as u64 {
        fill(
            &[Buf::id(seq_bufs + slot * u64::from(seq), seq)],
            Pattern::Seeded(slot),
            0,
        );
    }
    let _ = writeln!(
        Serial,
        "guest: bench seqwrite1m, seqread1m: {seq_requests} requests of {seq} bytes ({} data descriptors each) at queue depth {seq_qd}",
        blk.segments_for(seq)
    );
    for (name, ty) in [("seqwrite1m", req::OUT), ("seqread1m", req::IN)] {
        let r = workload(
            blk,
            name,
            seq_qd,
            seq_requests,
            u64::from(seq),
            &mut failed,
            |i, slot| Job {
                ty,
                sector: (i % disk_blocks) * sectors,
                addr: seq_bufs + slot as u64 * u64::from(seq),
                len: seq,
            },
        );
        if !r {
            return status::CHECK_FAILED;
        }
    }
    let _ = writeln!(
        Serial,
        "guest: bench: {} requests, {} notifications, {failed} failed",
        blk.requests, blk.q.notifies
    );
    if failed != 0 || setup_failed {
        status::CHECK_FAILED
    } else {
        status::PASS
    }
}

/// Bytes left in the arena.
fn arena_left(arena: &Arena) -> u64 {
    crate::dma::ARENA_END - arena.mark()
}

/// One timed workload between its begin and end lines; false when the
/// queue broke (the reason is printed).
fn workload(
    blk: &mut Blk,
    name: &str,
    depth: usize,
    total: u64,
    bytes_each: u64,
    failed: &mut u64,
    make: impl FnMut(u64, usize) -> Job,
) -> bool {
    let mut bad = 0u64;
    let _ = writeln!(Serial, "guest: bench begin {name}");
    let r = blk.pipeline(depth, total, make, |_, _, st, _| {
        bad += u64::from(st != blk_status::OK)
    });
    let _ = writeln!(
        Serial,
        "guest: bench end {name} requests={total} bytes={}",
        total * bytes_each
    );
    *failed += bad;
    if bad != 0 {
        let _ = writeln!(Serial, "guest: bench {name}: {bad} requests failed");
    }
    match r {
        Ok(()) => true,
        Err(e) => {
            let _ = writeln!(Serial, "guest: bench {name}: {e}");
            false
        }
    }
}
