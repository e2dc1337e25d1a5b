// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-blk under a balloon: a driver thread keeps the queue full of
//! verified reads and writes (through the transport, the worker thread and
//! its I/O threads) while a balloon thread freezes and discards guest
//! pages, both the buffers of requests in flight and pages no request
//! uses.
//!
//! What must hold (DESIGN 4.7 guarantee 1, seen from the device):
//!
//! * a discard of a pinned frame is skipped, so it lands before the
//!   device pins a buffer or after it releases it, never during the
//!   transfer. Per 4K page of every buffer, a read therefore delivers
//!   either exactly the disk's bytes (the discard, if any, came before the
//!   DMA) or only zeroes (it came after); a write stores either exactly the
//!   driver's bytes or only zeroes. A page with some right bytes and some
//!   zeroes, or with any other byte, means the device touched a page the
//!   balloon had taken (all test data is non-zero, so zeroes are only ever
//!   the balloon's);
//! * pages no request uses are always discarded (nothing pins them) and
//!   read back as zeroes;
//! * every request succeeds (a frozen frame is waited for, not failed),
//!   nothing stays pinned at the end.
//!
//! The order of the discards says more: one request's pins are all taken
//! before its transfer and all released after it. For a write, a page
//! stored as zeroes was discarded before the pins and a page stored right
//! was discarded only after the release, so every first discard of a
//! zeroed page precedes every first discard of a right one. For a read, a
//! page that arrived right was last discarded before the pins and a zeroed
//! one after the release: every last discard of a right page precedes
//! every last discard of a zeroed one. A discard during the transfer
//! breaks this order when another page of the same buffer is discarded on
//! the other side of the transfer.
//!
//! Each request slot owns its buffer pages and its range of the disk; the
//! balloon discards a slot's pages only while its request is in flight
//! (under the slot's lock, which the driver holds while it fills or checks
//! the buffer), so the driver's own accesses never race with a discard, and
//! records each discard in the slot, in order.
//!
//! `BLK_BALLOON_SECS` sets the duration (default 10 s).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use devices::virtio::F_VERSION_1;
use guest_mm::gup::{Fallback, Gup};

/// Requests in flight.
const SLOTS: u64 = 32;
/// Buffer bytes each slot owns (40 pages).
const SLOT_BYTES: u64 = 160 * KIB;
/// The slots' buffers, across the boundary of regions 0 and 1 and many 2M
/// blocks.
const BUFS: u64 = R1.0 - SLOTS / 2 * SLOT_BYTES;
/// Pages no request uses (region 2).
const FREE: u64 = R2.0 + MIB;
const FREE_PAGES: u64 = 256;
/// Sectors of the disk each slot owns.
const SLOT_SECTORS: u64 = SLOT_BYTES / 512;

/// One request in flight.
#[derive(Clone, Debug)]
struct Req {
    write: bool,
    buf: u64,
    len: u64,
    sector: u64,
    /// For writes: what the driver wrote.
    data: Vec<u8>,
}

/// A slot as the balloon sees it.
#[derive(Default)]
struct Slot {
    /// Its request is in flight (the balloon may discard its pages).
    in_flight: bool,
    /// The request's buffer (address, bytes).
    buf: (u64, u64),
    /// Pages the balloon discarded while it was, in order.
    discards: Vec<u64>,
}

#[derive(Default)]
struct Balloon {
    buffer_tries: AtomicU64,
    bursts: AtomicU64,
    buffer_discarded: AtomicU64,
    buffer_skipped: AtomicU64,
    free_discarded: AtomicU64,
    freezes: AtomicU64,
    freeze_refused: AtomicU64,
}

/// The pieces of `[buf, buf + len)` in each 4K page: (offset in the
/// buffer, length).
fn pieces(buf: u64, len: u64) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    let mut a = buf;
    while a < buf + len {
        let end = ((a / PAGE + 1) * PAGE).min(buf + len);
        v.push((a - buf, end - a));
        a = end;
    }
    v
}

/// Checks `got` against `want` page piece by page piece: each piece is
/// exactly `want` or all zero. Returns the pages whose piece is zero and
/// is not the expected data, and those whose expected data is zero
/// (which tell nothing).
fn all_or_nothing(what: &str, buf: u64, got: &[u8], want: &[u8]) -> (Vec<u64>, Vec<u64>) {
    let mut zero = Vec::new();
    let mut unknown = Vec::new();
    for (off, len) in pieces(buf, got.len() as u64) {
        let g = &got[off as usize..(off + len) as usize];
        let w = &want[off as usize..(off + len) as usize];
        if w.iter().all(|&b| b == 0) {
            assert!(
                g.iter().all(|&b| b == 0),
                "{what}: {:#x}: zeroes expected",
                buf + off
            );
            unknown.push((buf + off) / PAGE * PAGE);
        } else if g == w {
        } else if g.iter().all(|&b| b == 0) {
            zero.push((buf + off) / PAGE * PAGE);
        } else {
            let bad = g.iter().zip(w).filter(|(a, b)| a != b).count();
            let zeroes = g.iter().filter(|&&b| b == 0).count();
            panic!(
                "{what}: the page piece at guest {:#x} (+{len}) is neither the expected data nor zeroes: {bad} bytes differ, {zeroes} are zero",
                buf + off
            );
        }
    }
    (zero, unknown)
}

/// The order check (see the module comment). `discards`: the slot's, in
/// time order; `zero`: the buffer's pages that came out zeroed; `unknown`:
/// pages whose expected data is zeroes (left out).
fn discard_order(what: &str, req: &Req, discards: &[u64], (zero, unknown): &(Vec<u64>, Vec<u64>)) {
    let write = req.write;
    let is_zero = |p: &u64| zero.contains(p);
    let first = req.buf / PAGE * PAGE;
    let end = req.buf + req.len;
    // Position of the first (write) or last (read) discard of each page of
    // the buffer (the slot's other pages do not take part).
    let mut at = std::collections::BTreeMap::new();
    for (i, p) in discards.iter().enumerate() {
        if *p < first || *p >= end || unknown.contains(p) {
            continue;
        }
        if write {
            at.entry(*p).or_insert(i);
        } else {
            at.insert(*p, i);
        }
    }
    let (before, after): (Vec<_>, Vec<_>) = at.iter().partition(|(p, _)| is_zero(p) == write);
    let last_before = before.iter().map(|(_, &i)| i).max();
    let first_after = after.iter().map(|(_, &i)| i).min();
    if let (Some(b), Some(a)) = (last_before, first_after) {
        assert!(
            b < a,
            "{what}: a discard landed during the transfer: discards {discards:x?}, zeroed pages {zero:x?}"
        );
    }
    // A zeroed page was discarded at all.
    for p in zero {
        assert!(
            at.contains_key(p),
            "{what}: page {p:#x} zeroed without a discard"
        );
    }
}

fn balloon_thread(
    gup: Arc<Gup>,
    slots: Arc<Vec<Mutex<Slot>>>,
    stop: Arc<AtomicBool>,
    b: Arc<Balloon>,
    mem: guest_mm::gup::GuestMemory,
) {
    use vm_memory::{Bytes, GuestAddress};
    let mut rng = Rng(0x5eed_ba11);
    while !stop.load(Ordering::Relaxed) {
        match rng.below(8) {
            // Every page of a buffer in flight, in ascending order, quickly:
            // if the device's transfer runs meanwhile without holding its
            // pins, pages behind it and pages ahead of it come out
            // differently, in an order the check catches.
            0 | 1 => {
                let slot = rng.below(SLOTS);
                let mut state = slots[slot as usize].lock().unwrap();
                if !state.in_flight {
                    continue;
                }
                b.bursts.fetch_add(1, Ordering::Relaxed);
                let (buf, len) = state.buf;
                let mut page = buf / PAGE * PAGE;
                while page < buf + len {
                    b.buffer_tries.fetch_add(1, Ordering::Relaxed);
                    if gup.discard(page, PAGE).expect("buffer page in RAM") == 1 {
                        state.discards.push(page);
                        b.buffer_discarded.fetch_add(1, Ordering::Relaxed);
                    } else {
                        b.buffer_skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    page += PAGE;
                }
                drop(state);
            }
            // A buffer page of a request in flight.
            2..=4 => {
                let slot = rng.below(SLOTS);
                let page = BUFS + slot * SLOT_BYTES + rng.below(SLOT_BYTES / PAGE) * PAGE;
                let mut state = slots[slot as usize].lock().unwrap();
                if !state.in_flight {
                    continue;
                }
                b.buffer_tries.fetch_add(1, Ordering::Relaxed);
                if gup.discard(page, PAGE).expect("buffer page in RAM") == 1 {
                    state.discards.push(page);
                    b.buffer_discarded.fetch_add(1, Ordering::Relaxed);
                } else {
                    b.buffer_skipped.fetch_add(1, Ordering::Relaxed);
                }
                drop(state);
            }
            // A page nobody uses: always discarded, reads back as zeroes.
            5 | 6 => {
                let page = FREE + rng.below(FREE_PAGES) * PAGE;
                mem.write_slice(&[0x5a; 64], GuestAddress(page)).unwrap();
                assert_eq!(gup.discard(page, PAGE).unwrap(), 1, "free page {page:#x}");
                let mut back = [0xffu8; 64];
                mem.read_slice(&mut back, GuestAddress(page)).unwrap();
                assert_eq!(back, [0; 64], "a discarded page reads back as zeroes");
                b.free_discarded.fetch_add(1, Ordering::Relaxed);
            }
            // Freeze a buffer page for a while (pins wait for it).
            _ => {
                let slot = rng.below(SLOTS);
                let page = BUFS + slot * SLOT_BYTES + rng.below(SLOT_BYTES / PAGE) * PAGE;
                let map = gup.memory_map();
                let region = map.find(page).expect("RAM");
                let f = region.frame_index(page);
                if region.frames().freeze(f).is_ok() {
                    b.freezes.fetch_add(1, Ordering::Relaxed);
                    let until = Instant::now() + Duration::from_micros(50 + rng.below(200));
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    region.frames().unfreeze(f);
                } else {
                    b.freeze_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if rng.below(4) == 0 {
            std::thread::yield_now();
        }
    }
}

#[test]
fn a_balloon_discards_pages_while_requests_are_in_flight() {
    let secs: u64 = std::env::var("BLK_BALLOON_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut m = Mmio::with(21, SLOTS * SLOT_SECTORS, false, true);
    let mem = memory(&m.gup);
    let mut drv = Driver::standard(mem.clone());
    m.regs.init(&drv, 1 << F_VERSION_1);
    let mut shadow = m.file.contents();
    let slots: Arc<Vec<Mutex<Slot>>> =
        Arc::new((0..SLOTS).map(|_| Mutex::new(Slot::default())).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Balloon::default());
    let g0 = m.gup.stats();
    let balloon = {
        let (gup, slots, stop, stats, mem) = (
            Arc::clone(&m.gup),
            Arc::clone(&slots),
            Arc::clone(&stop),
            Arc::clone(&stats),
            mem.clone(),
        );
        std::thread::Builder::new()
            .name("balloon".into())
            .spawn(move || balloon_thread(gup, slots, stop, stats, mem))
            .unwrap()
    };

    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut reqs: Vec<Option<Req>> = vec![None; SLOTS as usize];
    let (mut done, mut bytes, mut reads, mut writes) = (0u64, 0u64, 0u64, 0u64);
    let (mut right, mut zeroed) = (0u64, 0u64);
    let mut seq = 0u64;

    // Prepares slot `k`'s next request under its lock and submits it.
    let start = |k: u64, drv: &mut Driver, rng: &mut Rng, seq: &mut u64| {
        let mut state = slots[k as usize].lock().unwrap();
        // 512 B to 128 KiB; half of them 4K-aligned (O_DIRECT, which
        // makes the transfers long), the others anywhere (buffered).
        let (n, skew) = if rng.below(2) == 0 {
            (8 * (1 + rng.below(32)), 0)
        } else {
            let skew = match rng.below(2) {
                0 => rng.below(8) * 512,
                _ => rng.below(PAGE),
            };
            (1 + rng.below(256), skew)
        };
        let buf = BUFS + k * SLOT_BYTES + skew;
        let len = n * 512;
        let sector = k * SLOT_SECTORS + rng.below((SLOT_SECTORS - n) / 8 + 1) * 8;
        let write = rng.below(2) == 0;
        *seq += 1;
        let data = if write {
            let d = pattern(*seq, len as usize);
            drv.write(buf, &d);
            d
        } else {
            // Stale bytes the read must replace (non-zero, not the data).
            drv.write(buf, &vec![0xee; len as usize]);
            Vec::new()
        };
        let hdr = HDR + 32 * k;
        let st = HDR + 0x2000 + k;
        drv.write(hdr, &header(if write { T_OUT } else { T_IN }, sector));
        drv.write(st, &[0xff]);
        let data_desc = if write { r(buf, len) } else { w(buf, len) };
        let head = drv.chain_at(3 * k as u16, &[r(hdr, 16), data_desc, w(st, 1)]);
        state.in_flight = true;
        state.buf = (buf, len);
        state.discards.clear();
        drop(state);
        drv.publish(head);
        Req {
            write,
            buf,
            len,
            sector,
            data,
        }
    };

    for k in 0..SLOTS {
        reqs[k as usize] = Some(start(k, &mut drv, &mut rng, &mut seq));
    }
    m.regs.notify();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut stopping = false;
    let mut last_progress = Instant::now();
    loop {
        let mut submitted = false;
        while let Some((id, len)) = drv.pop_used() {
            last_progress = Instant::now();
            let k = u64::from(id) / 3;
            let req = reqs[k as usize]
                .take()
                .expect("a completion for a slot in flight");
            let mut state = slots[k as usize].lock().unwrap();
            state.in_flight = false;
            let discards = std::mem::take(&mut state.discards);
            assert_eq!(
                drv.read(HDR + 0x2000 + k, 1),
                vec![S_OK],
                "status of {req:?}"
            );
            let at = (req.sector * 512) as usize;
            if req.write {
                assert_eq!(len, 1);
                let stored = m.file.read(req.sector * 512, req.len as usize);
                let z = all_or_nothing("write", req.buf, &stored, &req.data);
                discard_order("write", &req, &discards, &z);
                right += pieces(req.buf, req.len).len() as u64 - z.0.len() as u64;
                zeroed += z.0.len() as u64;
                shadow[at..at + req.len as usize].copy_from_slice(&stored);
                writes += 1;
            } else {
                assert_eq!(u64::from(len), req.len + 1);
                let got = drv.read(req.buf, req.len as usize);
                let z = all_or_nothing("read", req.buf, &got, &shadow[at..at + req.len as usize]);
                discard_order("read", &req, &discards, &z);
                right += pieces(req.buf, req.len).len() as u64 - z.0.len() as u64;
                zeroed += z.0.len() as u64;
                reads += 1;
            }
            drop(state);
            done += 1;
            bytes += req.len;
            if !stopping {
                reqs[k as usize] = Some(start(k, &mut drv, &mut rng, &mut seq));
                submitted = true;
            }
        }
        if submitted {
            m.regs.notify();
        }
        if !stopping && Instant::now() >= deadline {
            stopping = true;
        }
        if stopping && reqs.iter().all(|r| r.is_none()) {
            break;
        }
        assert!(
            last_progress.elapsed() < Duration::from_secs(20),
            "no completion for 20 s; in flight: {:?}",
            reqs.iter().flatten().count()
        );
        std::thread::sleep(Duration::from_micros(20));
    }
    stop.store(true, Ordering::Relaxed);
    balloon.join().expect("balloon thread");
    m.regs.w(devices::virtio::mmio::STATUS, 0);

    let c = m.stats.snapshot();
    let g = m.gup.stats();
    let b = &stats;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    // To the real stderr (past the harness's capture), so CI logs show it.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "blk_balloon: {secs} s: {done} requests ({reads} reads, {writes} writes), {} MiB; page pieces checked: {right} with the data, {zeroed} zeroed by the balloon; balloon: bursts {}, buffer pages tried {} (discarded {}, skipped as pinned {}), free pages discarded {}, freezes {} (refused {}); engine: frozen waits {}, frozen fallbacks {}, slow calls {}, populated {}",
        bytes >> 20,
        load(&b.bursts),
        load(&b.buffer_tries),
        load(&b.buffer_discarded),
        load(&b.buffer_skipped),
        load(&b.free_discarded),
        load(&b.freezes),
        load(&b.freeze_refused),
        g.frozen_waits - g0.frozen_waits,
        g.fallback(Fallback::Frozen) - g0.fallback(Fallback::Frozen),
        g.slow_calls - g0.slow_calls,
        g.populated - g0.populated,
    );
    assert_eq!(c.errors_total(), 0, "{}", c.summary());
    assert_eq!((c.requests, c.reads + c.writes), (done, done));
    assert_eq!(g.pins_outstanding, 0);
    assert_eq!(g.gets_outstanding, 0);
    // The run exercised what it is about.
    assert!(done >= 100, "only {done} requests");
    assert!(
        load(&b.buffer_discarded) > 0,
        "no buffer page was discarded"
    );
    assert!(
        load(&b.buffer_skipped) > 0,
        "no discard met a pinned buffer"
    );
    assert!(load(&b.free_discarded) > 0);
    assert!(
        c.direct_fallbacks > 0 && c.direct_fallbacks < done,
        "both O_DIRECT and buffered transfers"
    );
    assert!(zeroed > 0 && right > 0);
    // The disk holds what the driver last saw.
    assert!(m.file.contents() == shadow);
}
