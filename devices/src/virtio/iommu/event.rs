// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The event queue's records (fault reports and page requests, 24 bytes
//! each) on their way to the driver, and the page requests waiting for a
//! PAGE_RESP (docs/guest-va-dma.md, "Event queue" and "The page-request
//! flow").
//!
//! Endpoints queue records here from their devices' worker threads; the
//! IOMMU's worker writes them into the buffers the driver posts on the
//! event queue. Page requests wait for a buffer as long as it takes; fault
//! reports beyond [`MAX_PENDING_REPORTS`] waiting are dropped (counted).
//! A PAGE_RESP sets the answer of its group and wakes the endpoint's device
//! through its eventfd.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::domain::{DmaFault, FaultReason};

/// Size of an event record.
pub const RECORD_LEN: usize = 24;
/// Fault reports kept while the driver posts no event buffer.
pub const MAX_PENDING_REPORTS: usize = 64;

/// Record `reason` values.
pub mod reason {
    /// Unknown.
    pub const UNKNOWN: u8 = 0;
    /// The endpoint is not attached.
    pub const DOMAIN: u8 = 1;
    /// No mapping allows the access.
    pub const MAPPING: u8 = 2;
}

/// Record `flags`.
pub mod flags {
    /// The access was a read.
    pub const READ: u32 = 1;
    /// The access was a write.
    pub const WRITE: u32 = 2;
    /// The access was an instruction fetch.
    pub const EXEC: u32 = 4;
    /// `address` is valid.
    pub const ADDRESS: u32 = 0x100;
    /// A page request (draft), not a fault report.
    pub const PAGE_REQUEST: u32 = 0x200;
    /// The last request of its group (draft).
    pub const LAST: u32 = 0x400;
    /// A supervisor access (draft).
    pub const PRIV: u32 = 0x800;
}

/// PAGE_RESP codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// The page is there now: retry.
    Success,
    /// It will not be: fail this access.
    Invalid,
    /// Stop: fail it, and no more page requests from this endpoint.
    Failure,
}

impl Response {
    /// The response for a PAGE_RESP `code`.
    pub fn from_code(code: u16) -> Option<Response> {
        match code {
            0 => Some(Response::Success),
            1 => Some(Response::Invalid),
            2 => Some(Response::Failure),
            _ => None,
        }
    }
}

/// Encodes an event record.
pub fn record(endpoint: u32, fault: &DmaFault, page_request: Option<u16>) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[0] = match fault.reason {
        FaultReason::Domain => reason::DOMAIN,
        FaultReason::Mapping => reason::MAPPING,
    };
    let mut f = flags::ADDRESS
        | if fault.write {
            flags::WRITE
        } else {
            flags::READ
        };
    let mut address = fault.address;
    if let Some(group) = page_request {
        r[2..4].copy_from_slice(&group.to_le_bytes());
        f |= flags::PAGE_REQUEST | flags::LAST;
        if fault.privileged {
            f |= flags::PRIV;
        }
        address &= !0xfff;
    }
    r[4..8].copy_from_slice(&f.to_le_bytes());
    r[8..12].copy_from_slice(&endpoint.to_le_bytes());
    r[16..24].copy_from_slice(&address.to_le_bytes());
    r
}

#[derive(Debug, Default)]
struct Inner {
    /// Records not yet written to the event queue, oldest first, and
    /// whether each is a page request.
    pending: VecDeque<([u8; RECORD_LEN], bool)>,
    /// Fault reports among `pending`.
    reports: usize,
    /// The last record [`Events::next_record`] handed out was a fault
    /// report the worker may still put back ([`Events::unget`]): it counts
    /// against the bound until the worker asks for the next record.
    report_in_flight: bool,
    /// Next group id per endpoint.
    next_group: HashMap<u32, u16>,
    /// Outstanding page requests (endpoint, group) and their answer once
    /// it came.
    outstanding: HashMap<(u32, u16), Option<Response>>,
    /// Fault reports dropped for lack of event buffers.
    dropped: u64,
}

/// The event records and the outstanding page requests.
#[derive(Debug)]
pub struct Events {
    inner: Mutex<Inner>,
    /// Wakes the IOMMU worker (records to write).
    wake: EventFd,
    /// Per endpoint: written when one of its page requests is answered.
    responses: HashMap<u32, EventFd>,
}

impl Events {
    /// Events for `endpoints`.
    pub fn new(endpoints: &[u32]) -> std::io::Result<Self> {
        let mut responses = HashMap::new();
        for &e in endpoints {
            responses.insert(e, EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(Events {
            inner: Mutex::new(Inner::default()),
            wake: EventFd::new(EFD_NONBLOCK)?,
            responses,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The eventfd that wakes the IOMMU worker.
    pub fn wake_evt(&self) -> &EventFd {
        &self.wake
    }

    /// The eventfd a PAGE_RESP for `endpoint` writes. Endpoints are fixed
    /// when the IOMMU is built, so every endpoint handle has one.
    pub fn response_evt(&self, endpoint: u32) -> &EventFd {
        // Endpoint handles exist only for the ids `responses` was built
        // from; the wake fd is a harmless stand-in otherwise.
        self.responses.get(&endpoint).unwrap_or(&self.wake)
    }

    /// Queues a fault report (dropped, and counted, when too many wait).
    pub fn report(&self, endpoint: u32, fault: &DmaFault) {
        let mut g = self.lock();
        if g.reports + usize::from(g.report_in_flight) >= MAX_PENDING_REPORTS {
            g.dropped += 1;
            return;
        }
        g.reports += 1;
        g.pending.push_back((record(endpoint, fault, None), false));
        drop(g);
        let _ = self.wake.write(1);
    }

    /// Queues a page request for `fault`'s page; returns its group.
    pub fn page_request(&self, endpoint: u32, fault: &DmaFault) -> u16 {
        let mut g = self.lock();
        // A group id not outstanding for this endpoint (at most 65536 can
        // be; a device parks far fewer).
        let mut group = *g.next_group.get(&endpoint).unwrap_or(&0);
        while g.outstanding.contains_key(&(endpoint, group)) {
            group = group.wrapping_add(1);
        }
        g.next_group.insert(endpoint, group.wrapping_add(1));
        g.outstanding.insert((endpoint, group), None);
        g.pending
            .push_back((record(endpoint, fault, Some(group)), true));
        drop(g);
        let _ = self.wake.write(1);
        group
    }

    /// Takes the next record to write, if any.
    pub fn next_record(&self) -> Option<[u8; RECORD_LEN]> {
        let mut g = self.lock();
        // The worker asks for the next record only once it wrote (or put
        // back) the previous one.
        g.report_in_flight = false;
        let (r, is_request) = g.pending.pop_front()?;
        if !is_request {
            g.reports -= 1;
            g.report_in_flight = true;
        }
        Some(r)
    }

    /// Puts back a record that could not be written (no buffer).
    pub fn unget(&self, r: [u8; RECORD_LEN]) {
        let mut g = self.lock();
        let is_request = u32::from_le_bytes([r[4], r[5], r[6], r[7]]) & flags::PAGE_REQUEST != 0;
        if !is_request {
            g.reports += 1;
            g.report_in_flight = false;
        }
        g.pending.push_front((r, is_request));
    }

    /// Whether records wait.
    pub fn has_pending(&self) -> bool {
        !self.lock().pending.is_empty()
    }

    /// Records an answer to page request `group` of `endpoint`; false if no
    /// such request is outstanding (or it was answered already).
    pub fn respond(&self, endpoint: u32, group: u16, response: Response) -> bool {
        let mut g = self.lock();
        match g.outstanding.get_mut(&(endpoint, group)) {
            Some(slot @ None) => {
                *slot = Some(response);
                drop(g);
                if let Some(evt) = self.responses.get(&endpoint) {
                    let _ = evt.write(1);
                }
                true
            }
            _ => false,
        }
    }

    /// The answer to `group`, once there is one (the request is then no
    /// longer outstanding).
    pub fn take_response(&self, endpoint: u32, group: u16) -> Option<Response> {
        let mut g = self.lock();
        let r = (*g.outstanding.get(&(endpoint, group))?)?;
        g.outstanding.remove(&(endpoint, group));
        Some(r)
    }

    /// Whether `group` is still known (outstanding or answered and not
    /// taken); false after the IOMMU's reset forgot it.
    pub fn known(&self, endpoint: u32, group: u16) -> bool {
        self.lock().outstanding.contains_key(&(endpoint, group))
    }

    /// Forgets `group` (timed out, or its device reset).
    pub fn abandon(&self, endpoint: u32, group: u16) {
        self.lock().outstanding.remove(&(endpoint, group));
    }

    /// Drops every waiting record and outstanding request (IOMMU reset),
    /// and wakes every endpoint's device: its parked requests fail now.
    pub fn clear(&self) {
        let mut g = self.lock();
        g.pending.clear();
        g.reports = 0;
        g.report_in_flight = false;
        g.outstanding.clear();
        drop(g);
        for evt in self.responses.values() {
            let _ = evt.write(1);
        }
    }

    /// Page requests not answered yet.
    pub fn outstanding(&self) -> usize {
        self.lock()
            .outstanding
            .values()
            .filter(|r| r.is_none())
            .count()
    }

    /// Fault reports dropped so far.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(address: u64, write: bool) -> DmaFault {
        DmaFault {
            address,
            write,
            reason: FaultReason::Mapping,
            privileged: false,
            requestable: true,
            error_code: Some(4),
        }
    }

    #[test]
    fn records_follow_the_documented_layout() {
        let r = record(7, &fault(0x1234_5678, true), Some(0x1abc));
        assert_eq!(r[0], reason::MAPPING);
        assert_eq!(u16::from_le_bytes([r[2], r[3]]), 0x1abc);
        let f = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
        assert_eq!(
            f,
            flags::WRITE | flags::ADDRESS | flags::PAGE_REQUEST | flags::LAST
        );
        assert_eq!(u32::from_le_bytes([r[8], r[9], r[10], r[11]]), 7);
        let mut a = [0u8; 8];
        a.copy_from_slice(&r[16..24]);
        assert_eq!(
            u64::from_le_bytes(a),
            0x1234_5000,
            "page requests name the page"
        );
        let r = record(3, &fault(0x1234_5678, false), None);
        let f = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
        assert_eq!(f, flags::READ | flags::ADDRESS);
        a.copy_from_slice(&r[16..24]);
        assert_eq!(
            u64::from_le_bytes(a),
            0x1234_5678,
            "fault reports are exact"
        );
    }

    #[test]
    fn groups_are_unique_answered_once_and_reports_are_bounded() {
        let ev = Events::new(&[1, 2]).unwrap();
        let a = ev.page_request(1, &fault(0x1000, false));
        let b = ev.page_request(1, &fault(0x2000, false));
        let c = ev.page_request(2, &fault(0x3000, false));
        assert_ne!(a, b);
        assert_eq!(ev.outstanding(), 3);
        assert!(!ev.respond(2, b.wrapping_add(100), Response::Success));
        assert!(ev.respond(1, b, Response::Invalid));
        assert!(!ev.respond(1, b, Response::Success), "answered twice");
        assert_eq!(ev.response_evt(1).read().unwrap(), 1);
        assert_eq!(ev.take_response(1, a), None);
        assert_eq!(ev.take_response(1, b), Some(Response::Invalid));
        assert_eq!(ev.take_response(1, b), None);
        ev.abandon(2, c);
        assert!(!ev.respond(2, c, Response::Success));
        for i in 0..MAX_PENDING_REPORTS as u64 + 5 {
            ev.report(1, &fault(i << 12, false));
        }
        assert_eq!(ev.dropped(), 5);
        let mut n = 0;
        while let Some(r) = ev.next_record() {
            n += 1;
            if n == 1 {
                ev.unget(r);
                assert!(ev.has_pending());
            }
        }
        assert_eq!(
            n,
            3 + MAX_PENDING_REPORTS + 1,
            "3 page requests, the reports, one unget"
        );
    }
}
