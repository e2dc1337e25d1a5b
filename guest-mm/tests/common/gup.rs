// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared helpers for the GUP engine tests: engines over anonymous regions,
//! counter deltas, the "everything released" check (guarantee 5), fault
//! handlers that record their calls, and a few host-side probes (mincore,
//! /proc/self/smaps).
//!
//! Declared from each gup_*.rs test with
//! `#[path = "common/gup.rs"] mod gupc;` next to `mod common;`.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use guest_mm::gup::memmap::anonymous_regions;
use guest_mm::gup::{
    Fallback, FaultHandler, FaultOutcome, Gup, GupConfig, GupCounters, GupFlags, MemoryMap,
    RegionOptions,
};
use guest_mm::paging::{Access, Fault, PagingMode};

use crate::common::*;

/// The guest-virtual base most tests map their data at.
pub const VA: u64 = 0x7000_0000_0000;
/// 4 KiB.
pub const PAGE: u64 = 4096;
/// Where data frames start in the default RAM region (page tables live at
/// [`TABLES`], below it).
pub const DATA: u64 = 32 * MIB;
/// Size of the default RAM region at 0.
pub const RAM0: u64 = 64 * MIB;

pub const GET: GupFlags = GupFlags::GET;
pub const PIN: GupFlags = GupFlags::PIN;
pub const WRITE: GupFlags = GupFlags::WRITE;
pub const USER: GupFlags = GupFlags::USER;
pub const FORCE: GupFlags = GupFlags::FORCE;
pub const TOUCH: GupFlags = GupFlags::TOUCH;
pub const DUMP: GupFlags = GupFlags::DUMP;
pub const NOFAULT: GupFlags = GupFlags::NOFAULT;
pub const FAST_ONLY: GupFlags = GupFlags::FAST_ONLY;
pub const LONGTERM: GupFlags = GupFlags::LONGTERM;

/// An engine over anonymous regions `(guest address, bytes, options)`.
pub fn engine(regions: &[(u64, u64, RegionOptions)], config: GupConfig) -> Gup {
    let ranges: Vec<(u64, usize)> = regions.iter().map(|r| (r.0, r.1 as usize)).collect();
    let vm = anonymous_regions(&ranges).unwrap();
    Gup::new(
        vm.into_iter().zip(regions).map(|(r, o)| (r, o.2)).collect(),
        config,
    )
    .unwrap()
}

/// The default engine: one 64 MiB region at 0.
pub fn engine0() -> Gup {
    engine(&[(0, RAM0, RegionOptions::default())], GupConfig::default())
}

/// A page-table builder (4-level) over the current snapshot's memory.
pub fn tables(map: &MemoryMap) -> Builder<'_, guest_mm::gup::GuestMemory> {
    Builder::new(map.memory(), PagingMode::Level4)
}

/// `after - before`, field by field.
pub fn delta(before: &GupCounters, after: &GupCounters) -> GupCounters {
    GupCounters {
        requests: after.requests - before.requests,
        fast_hits: after.fast_hits - before.fast_hits,
        fast_pages: after.fast_pages - before.fast_pages,
        slow_calls: after.slow_calls - before.slow_calls,
        slow_pages: after.slow_pages - before.slow_pages,
        fallbacks: std::array::from_fn(|i| after.fallbacks[i] - before.fallbacks[i]),
        faults_handled: after.faults_handled - before.faults_handled,
        faults_injected: after.faults_injected - before.faults_injected,
        faults_failed: after.faults_failed - before.faults_failed,
        retries: after.retries - before.retries,
        touched: after.touched - before.touched,
        populated: after.populated - before.populated,
        frozen_waits: after.frozen_waits - before.frozen_waits,
        holes: after.holes - before.holes,
        pins_outstanding: after.pins_outstanding - before.pins_outstanding,
        gets_outstanding: after.gets_outstanding - before.gets_outstanding,
        longterm_pages: after.longterm_pages - before.longterm_pages,
    }
}

/// The fallback reasons that moved in `d`, with their counts.
pub fn fallbacks_moved(d: &GupCounters) -> Vec<(Fallback, u64)> {
    Fallback::ALL
        .iter()
        .map(|&r| (r, d.fallback(r)))
        .filter(|&(_, n)| n != 0)
        .collect()
}

/// Records the counters and checks the delta of one step.
pub struct Meter<'a> {
    gup: &'a Gup,
    last: GupCounters,
}

impl<'a> Meter<'a> {
    /// Start measuring.
    pub fn new(gup: &'a Gup) -> Self {
        Meter {
            gup,
            last: gup.stats(),
        }
    }

    /// The delta since the last call (or creation).
    pub fn step(&mut self) -> GupCounters {
        let now = self.gup.stats();
        let d = delta(&self.last, &now);
        self.last = now;
        d
    }
}

/// Assert that a request ran on the fast path only and took `pages`.
pub fn assert_fast(d: &GupCounters, pages: u64) {
    assert_eq!(d.requests, 1, "{d:?}");
    assert_eq!(d.fast_hits, 1, "{d:?}");
    assert_eq!(d.fast_pages, pages, "{d:?}");
    assert_eq!(d.slow_calls, 0, "{d:?}");
    assert_eq!(d.fallbacks_total(), 0, "{d:?}");
}

/// Assert that a request fell back exactly once, for `reason`, and that
/// the slow path ran and took `slow_pages`.
pub fn assert_slow(d: &GupCounters, reason: Fallback, slow_pages: u64) {
    assert_eq!(d.requests, 1, "{d:?}");
    assert_eq!(d.fast_hits, 0, "{d:?}");
    assert_eq!(fallbacks_moved(d), vec![(reason, 1)], "{d:?}");
    assert_eq!(d.slow_calls, 1, "{d:?}");
    assert_eq!(d.slow_pages, slow_pages, "{d:?}");
}

/// Guarantee 5: nothing is referenced, nothing frozen, every
/// outstanding counter at zero.
pub fn assert_released(gup: &Gup) {
    let map = gup.memory_map();
    for r in map.regions() {
        assert_eq!(r.frames().total_refs(), 0, "references left in {r:?}");
        assert_eq!(r.frames().frozen_count(), 0, "frozen frames left in {r:?}");
    }
    let s = gup.stats();
    assert_eq!(s.pins_outstanding, 0, "{s:?}");
    assert_eq!(s.gets_outstanding, 0, "{s:?}");
    assert_eq!(s.longterm_pages, 0, "{s:?}");
    assert_eq!(gup.longterm_pages(), 0);
}

/// Frame index of `gpa` in the region holding it, with the region.
pub fn frame_of(map: &MemoryMap, gpa: u64) -> (Arc<guest_mm::gup::RamRegion>, u64) {
    let r = map.find(gpa).expect("gpa in RAM").clone();
    let f = r.frame_index(gpa);
    (r, f)
}

/// A fault handler that records every call and answers with `answer`.
pub struct Recorder<F> {
    pub calls: AtomicUsize,
    pub faults: Mutex<Vec<(Fault, Access)>>,
    answer: F,
}

impl<F: Fn(&Fault, Access) -> FaultOutcome + Sync> Recorder<F> {
    /// A handler answering with `answer`.
    pub fn new(answer: F) -> Self {
        Recorder {
            calls: AtomicUsize::new(0),
            faults: Mutex::new(Vec::new()),
            answer,
        }
    }

    /// How many times it was called.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The faults it saw.
    pub fn seen(&self) -> Vec<(Fault, Access)> {
        self.faults.lock().unwrap().clone()
    }
}

impl<F: Fn(&Fault, Access) -> FaultOutcome + Sync> FaultHandler for Recorder<F> {
    fn handle(&self, fault: &Fault, access: Access) -> FaultOutcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.faults.lock().unwrap().push((*fault, access));
        (self.answer)(fault, access)
    }
}

/// Whether the host page at `host` is resident (mincore).
pub fn resident(host: *const u8) -> bool {
    let mut v = 0u8;
    let page = (host as usize) & !(PAGE as usize - 1);
    // SAFETY: mincore only reports residency of the page of a live mapping
    // into one byte we own.
    let rc = unsafe { libc::mincore(page as *mut libc::c_void, PAGE as usize, &mut v) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    v & 1 != 0
}

/// The /proc/self/smaps entry holding `host`: (VmFlags tokens, Locked kB).
pub fn smaps_entry(host: *const u8) -> (Vec<String>, u64) {
    let addr = host as u64;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    let mut locked = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) {
                inside = lo <= addr && addr < hi;
                continue;
            }
        }
        if !inside {
            continue;
        }
        if let Some(v) = line.strip_prefix("Locked:") {
            locked = Some(
                v.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap(),
            );
        }
        if let Some(v) = line.strip_prefix("VmFlags:") {
            let flags = v.split_whitespace().map(str::to_owned).collect();
            return (flags, locked.expect("Locked: before VmFlags:"));
        }
    }
    panic!("no smaps entry holds {addr:#x}");
}

/// Whether the host page at `host` is mlocked (its VMA has VM_LOCKED).
pub fn locked(host: *const u8) -> bool {
    smaps_entry(host).0.iter().any(|f| f == "lo")
}
