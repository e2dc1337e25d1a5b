// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The IOMMU's counters, for the VMM's exit report and the tests.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters (relaxed atomics).
#[derive(Debug, Default)]
pub struct IommuStats {
    requests: AtomicU64,
    by_type: [AtomicU64; 9],
    failed: AtomicU64,
    page_requests: AtomicU64,
    responses: [AtomicU64; 3],
    stray_responses: AtomicU64,
    timeouts: AtomicU64,
    fault_reports: AtomicU64,
    events_written: AtomicU64,
}

/// A copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IommuCounters {
    /// Requests taken from the request queue.
    pub requests: u64,
    /// Per request type 1..=8 (index 0: unknown types).
    pub by_type: [u64; 9],
    /// Requests completed with a status other than OK.
    pub failed: u64,
    /// Page requests sent.
    pub page_requests: u64,
    /// PAGE_RESP answers: SUCCESS, INVALID, FAILURE.
    pub responses: [u64; 3],
    /// PAGE_RESP for no outstanding request.
    pub stray_responses: u64,
    /// Page requests that timed out.
    pub timeouts: u64,
    /// Fault reports sent (queued).
    pub fault_reports: u64,
    /// Records written to the event queue.
    pub events_written: u64,
    /// Fault reports dropped for lack of event buffers.
    pub events_dropped: u64,
}

impl IommuStats {
    /// A request of `kind` (1..=8, else counted as unknown).
    pub fn request(&self, kind: u8) {
        self.requests.fetch_add(1, Relaxed);
        let i = if (1..=8).contains(&kind) {
            kind as usize
        } else {
            0
        };
        self.by_type[i].fetch_add(1, Relaxed);
    }

    /// A request that did not complete with OK.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Relaxed);
    }

    /// A page request sent.
    pub fn page_request(&self) {
        self.page_requests.fetch_add(1, Relaxed);
    }

    /// A PAGE_RESP with `code` (0..=2) for an outstanding request.
    pub fn response(&self, code: u16) {
        if let Some(c) = self.responses.get(code as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// A PAGE_RESP for no outstanding request.
    pub fn stray_response(&self) {
        self.stray_responses.fetch_add(1, Relaxed);
    }

    /// A page request timed out.
    pub fn timeout(&self) {
        self.timeouts.fetch_add(1, Relaxed);
    }

    /// A fault report queued.
    pub fn fault_reported(&self) {
        self.fault_reports.fetch_add(1, Relaxed);
    }

    /// A record written to the event queue.
    pub fn event_written(&self) {
        self.events_written.fetch_add(1, Relaxed);
    }

    /// A copy of the counters (`dropped` from the event list).
    pub fn snapshot(&self, dropped: u64) -> IommuCounters {
        let l = |a: &AtomicU64| a.load(Relaxed);
        IommuCounters {
            requests: l(&self.requests),
            by_type: std::array::from_fn(|i| l(&self.by_type[i])),
            failed: l(&self.failed),
            page_requests: l(&self.page_requests),
            responses: std::array::from_fn(|i| l(&self.responses[i])),
            stray_responses: l(&self.stray_responses),
            timeouts: l(&self.timeouts),
            fault_reports: l(&self.fault_reports),
            events_written: l(&self.events_written),
            events_dropped: dropped,
        }
    }
}

impl IommuCounters {
    /// One line for the exit report.
    pub fn summary(&self) -> String {
        let t = &self.by_type;
        format!(
            "requests={} (attach={} detach={} map={} unmap={} probe={} attach_table={} page_resp={} unknown={}) failed={} page_requests={} responses: success={} invalid={} failure={} stray={} timeouts={} fault_reports={} events_written={} events_dropped={}",
            self.requests, t[1], t[2], t[3], t[4], t[5], t[6], t[8], t[0] + t[7], self.failed,
            self.page_requests, self.responses[0], self.responses[1], self.responses[2],
            self.stray_responses, self.timeouts, self.fault_reports, self.events_written,
            self.events_dropped
        )
    }
}
