// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Counters: which path served each request and why the fast path gave up.
//! Updated once per request (not per page) so they cost nothing on the fast
//! path; readable as a plain struct ([`GupCounters`]) and as JSON.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Why the fast path handed (the rest of) a request to the slow path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// A paging-structure entry was not present (or pointed outside RAM).
    NotPresent,
    /// The guest's page tables forbid the access (R/W, U/S, NX, SMEP, SMAP,
    /// protection keys), or have reserved bits set, or the address is not
    /// canonical.
    Protection,
    /// The leaf's Accessed bit (or Dirty bit, for WRITE) is clear.
    AccessedDirty,
    /// The guest-physical address is in no RAM region (MMIO or a hole), or
    /// a large page straddles a region boundary.
    NotRam,
    /// WRITE into a read-only RAM region.
    ReadOnly,
    /// The frame (or a frame of the 2M block) is frozen.
    Frozen,
    /// The host page is not known to be populated.
    NotPopulated,
    /// The leaf entry changed between the walk and the pin.
    LeafChanged,
    /// LONGTERM pins always take the slow path (they lock host pages).
    Longterm,
    /// A reference count would overflow.
    Overflow,
}

impl Fallback {
    /// Every reason, in counter order.
    pub const ALL: [Fallback; 10] = [
        Fallback::NotPresent,
        Fallback::Protection,
        Fallback::AccessedDirty,
        Fallback::NotRam,
        Fallback::ReadOnly,
        Fallback::Frozen,
        Fallback::NotPopulated,
        Fallback::LeafChanged,
        Fallback::Longterm,
        Fallback::Overflow,
    ];

    /// The reason's name in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Fallback::NotPresent => "not_present",
            Fallback::Protection => "protection",
            Fallback::AccessedDirty => "accessed_dirty",
            Fallback::NotRam => "not_ram",
            Fallback::ReadOnly => "read_only",
            Fallback::Frozen => "frozen",
            Fallback::NotPopulated => "not_populated",
            Fallback::LeafChanged => "leaf_changed",
            Fallback::Longterm => "longterm",
            Fallback::Overflow => "overflow",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The live counters of one engine.
#[derive(Debug, Default)]
pub struct GupStats {
    requests: AtomicU64,
    fast_hits: AtomicU64,
    fast_pages: AtomicU64,
    slow_calls: AtomicU64,
    slow_pages: AtomicU64,
    fallbacks: [AtomicU64; Fallback::ALL.len()],
    faults_handled: AtomicU64,
    faults_injected: AtomicU64,
    faults_failed: AtomicU64,
    retries: AtomicU64,
    touched: AtomicU64,
    populated: AtomicU64,
    frozen_waits: AtomicU64,
    holes: AtomicU64,
    pins_outstanding: AtomicI64,
    gets_outstanding: AtomicI64,
    longterm_pages: AtomicI64,
}

/// A copy of the counters at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GupCounters {
    /// Requests made (valid flags).
    pub requests: u64,
    /// Requests the fast path served completely.
    pub fast_hits: u64,
    /// Pages taken by the fast path.
    pub fast_pages: u64,
    /// Requests that entered the slow path.
    pub slow_calls: u64,
    /// Pages taken by the slow path.
    pub slow_pages: u64,
    /// Slow-path entries by reason, in [`Fallback::ALL`] order.
    pub fallbacks: [u64; Fallback::ALL.len()],
    /// Guest faults the fault handler resolved (then retried).
    pub faults_handled: u64,
    /// Guest faults handed back for injection into the vCPU.
    pub faults_injected: u64,
    /// Guest faults that failed the request (no handler, NOFAULT, or the
    /// handler said fail).
    pub faults_failed: u64,
    /// Slow-path retries (lost races, resolved faults, A/D set, populate).
    pub retries: u64,
    /// Pages whose A/D bits the slow path set (TOUCH).
    pub touched: u64,
    /// Host populate calls that succeeded.
    pub populated: u64,
    /// Times the slow path waited for a frozen frame.
    pub frozen_waits: u64,
    /// Hole pages returned (DUMP).
    pub holes: u64,
    /// Pages currently pinned (PIN) by live handles.
    pub pins_outstanding: i64,
    /// Pages currently referenced (GET) by live handles.
    pub gets_outstanding: i64,
    /// Pages currently held by long-term pins.
    pub longterm_pages: i64,
}

impl GupCounters {
    /// Slow-path entries for `reason`.
    pub fn fallback(&self, reason: Fallback) -> u64 {
        self.fallbacks[reason.index()]
    }

    /// All slow-path entries.
    pub fn fallbacks_total(&self) -> u64 {
        self.fallbacks.iter().sum()
    }

    /// The counters as one JSON object.
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        let mut put = |k: &str, v: i128| {
            if s.len() > 1 {
                s.push(',');
            }
            let _ = write!(s, "\"{k}\":{v}");
        };
        put("requests", self.requests.into());
        put("fast_hits", self.fast_hits.into());
        put("fast_pages", self.fast_pages.into());
        put("slow_calls", self.slow_calls.into());
        put("slow_pages", self.slow_pages.into());
        put("faults_handled", self.faults_handled.into());
        put("faults_injected", self.faults_injected.into());
        put("faults_failed", self.faults_failed.into());
        put("retries", self.retries.into());
        put("touched", self.touched.into());
        put("populated", self.populated.into());
        put("frozen_waits", self.frozen_waits.into());
        put("holes", self.holes.into());
        put("pins_outstanding", self.pins_outstanding.into());
        put("gets_outstanding", self.gets_outstanding.into());
        put("longterm_pages", self.longterm_pages.into());
        s.push_str(",\"fallbacks\":{");
        for (i, r) in Fallback::ALL.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{}\":{}", r.name(), self.fallbacks[i]);
        }
        s.push_str("}}");
        s
    }
}

impl GupStats {
    /// A copy of every counter.
    pub fn snapshot(&self) -> GupCounters {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let i = |a: &AtomicI64| a.load(Ordering::Relaxed);
        GupCounters {
            requests: r(&self.requests),
            fast_hits: r(&self.fast_hits),
            fast_pages: r(&self.fast_pages),
            slow_calls: r(&self.slow_calls),
            slow_pages: r(&self.slow_pages),
            fallbacks: std::array::from_fn(|k| r(&self.fallbacks[k])),
            faults_handled: r(&self.faults_handled),
            faults_injected: r(&self.faults_injected),
            faults_failed: r(&self.faults_failed),
            retries: r(&self.retries),
            touched: r(&self.touched),
            populated: r(&self.populated),
            frozen_waits: r(&self.frozen_waits),
            holes: r(&self.holes),
            pins_outstanding: i(&self.pins_outstanding),
            gets_outstanding: i(&self.gets_outstanding),
            longterm_pages: i(&self.longterm_pages),
        }
    }

    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn fast(&self, pages: u64, complete: bool) {
        if complete {
            self.fast_hits.fetch_add(1, Ordering::Relaxed);
        }
        self.fast_pages.fetch_add(pages, Ordering::Relaxed);
    }
    pub(crate) fn fallback(&self, reason: Fallback) {
        self.fallbacks[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn slow(&self, pages: u64) {
        self.slow_calls.fetch_add(1, Ordering::Relaxed);
        self.slow_pages.fetch_add(pages, Ordering::Relaxed);
    }
    pub(crate) fn fault_handled(&self) {
        self.faults_handled.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn fault_injected(&self) {
        self.faults_injected.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn fault_failed(&self) {
        self.faults_failed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn touched(&self) {
        self.touched.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn populated(&self) {
        self.populated.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn frozen_wait(&self) {
        self.frozen_waits.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn holes(&self, pages: u64) {
        self.holes.fetch_add(pages, Ordering::Relaxed);
    }
    pub(crate) fn outstanding(&self, pin: bool, pages: i64, longterm: bool) {
        if pin {
            self.pins_outstanding.fetch_add(pages, Ordering::Relaxed);
        } else {
            self.gets_outstanding.fetch_add(pages, Ordering::Relaxed);
        }
        if longterm {
            self.longterm_pages.fetch_add(pages, Ordering::Relaxed);
        }
    }
}
