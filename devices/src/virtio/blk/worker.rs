// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-blk request path: take a chain from the available ring, pin
//! its buffers, move the data between the backing file and the pinned host
//! addresses, release the pins (write pins mark the dirty bitmap), write
//! the status through a pin, and only then publish the used entry and
//! maybe interrupt.
//!
//! [`BlockQueue::process`] is synchronous (tests and the fuzz target call
//! it directly); [`spawn`] runs it on a worker thread woken by the queue's
//! notification eventfd. With a [`Pool`] attached, transfers of
//! [`POOL_MIN_BYTES`] and more run on I/O threads: the worker pins, the I/O
//! thread transfers and releases, and the worker completes the request
//! when the pool's eventfd wakes it ([`BlockQueue::complete_transfers`]).
//!
//! Every byte the device reads or writes in guest memory for a request
//! (header, data, ID, status) goes through a guest-mm pin of the
//! guest-physical range; only the rings are accessed through vm-memory.
//!
//! Behind the IOMMU (an [`Endpoint`]) every address is an I/O virtual
//! address, pinned through the endpoint's domain (docs/guest-va-dma.md).
//! Before a request runs, its buffers are pinned once to find a
//! translation fault; a fault the domain resolves by page requests parks
//! the request ([`Parked`]) and sends the page request, and the request
//! runs again from the start when the guest answers SUCCESS (or completes
//! with IOERR on INVALID, FAILURE or a timeout). Other requests go on
//! meanwhile.

use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use guest_mm::gup::{AddressSpace, CancelToken, GuestMemory, Gup, GupError, GupFlags, Pinned};

use crate::virtio::iommu::{DmaError, DmaFault, Endpoint, Response};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::disk::Disk;
use super::pool::{Finished, Job, Pool, POOL_MIN_BYTES};
use super::request::{
    classify, req_status, Chain, ChainError, Header, Op, Segment, Supported, HEADER_LEN, ID_LEN,
    RANGE_LEN, SECTOR_SIZE,
};
use super::stats::{BlockStats, Done, ErrorClass};
use crate::virtio::{Interrupt, INT_USED_RING};

/// How often a pin that found frozen frames (a balloon at work) is retried
/// before the request fails with IOERR.
const PIN_RETRIES: u32 = 50;
/// VRING_AVAIL_F_NO_INTERRUPT.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Page requests one request may send before it completes with IOERR (a
/// guest answering SUCCESS without mapping anything cannot loop the
/// device forever).
pub const MAX_PAGE_REQUESTS: u32 = 64;
/// How long a parked request waits for its page response by default.
pub const PAGE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How a parked request's wait ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// The guest answered.
    Answered(Response),
    /// The IOMMU was reset: the page request will never be answered.
    Forgotten,
    /// No answer before the deadline.
    TimedOut,
}

/// A request waiting for the answer to its page request.
struct Parked {
    head: u16,
    chain: Chain,
    group: u16,
    fault: DmaFault,
    deadline: Instant,
    /// Page requests this request sent so far.
    rounds: u32,
}

/// One request queue of a virtio-blk device and everything it needs.
pub struct BlockQueue {
    /// Name in log lines (`virtio-blk0`).
    pub name: String,
    queue: Queue,
    mem: GuestMemory,
    gup: Arc<Gup>,
    disk: Arc<Disk>,
    interrupt: Arc<Interrupt>,
    stats: Arc<BlockStats>,
    id: [u8; ID_LEN as usize],
    supported: Supported,
    cancel: Arc<CancelToken>,
    broken: bool,
    iovs: Vec<libc::iovec>,
    pins: Vec<Pinned>,
    /// The status byte's pin while its request runs.
    status_pin: Option<Pinned>,
    pool: Option<Pool>,
    /// The IOMMU endpoint, for a device behind the IOMMU.
    endpoint: Option<Endpoint>,
    /// Requests waiting for a page response.
    parked: Vec<Parked>,
    /// How long a page request may wait.
    prq_timeout: Duration,
    /// Long-term pins of the rings (behind the IOMMU: translated once at
    /// activation).
    ring_pins: Vec<Pinned>,
}

// SAFETY: the raw pointers in `iovs` are scratch space, only meaningful
// while `pins` holds the pins during one request on the owning thread; the
// vector is cleared before every use.
unsafe impl Send for BlockQueue {}

/// Why a request's buffers could not be used.
struct Refused(ErrorClass, String);

/// What a request completion writes.
struct Completion {
    status: u8,
    /// Bytes written into guest memory (the used length), status included.
    written: u32,
}

impl BlockQueue {
    /// A queue ready to process (the transport validated its rings).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        queue: Queue,
        mem: GuestMemory,
        gup: Arc<Gup>,
        disk: Arc<Disk>,
        interrupt: Arc<Interrupt>,
        stats: Arc<BlockStats>,
        id: [u8; ID_LEN as usize],
        supported: Supported,
    ) -> Self {
        BlockQueue {
            name,
            queue,
            mem,
            gup,
            disk,
            interrupt,
            stats,
            id,
            supported,
            cancel: Arc::new(CancelToken::new()),
            broken: false,
            iovs: Vec::new(),
            pins: Vec::new(),
            status_pin: None,
            pool: None,
            endpoint: None,
            parked: Vec::new(),
            prq_timeout: PAGE_REQUEST_TIMEOUT,
            ring_pins: Vec::new(),
        }
    }

    /// Puts the queue behind the IOMMU: every address goes through
    /// `endpoint`'s domain; the rings were translated to the guest-physical
    /// addresses the queue now holds, and `ring_pins` keep them.
    pub fn attach_endpoint(
        &mut self,
        endpoint: Endpoint,
        ring_pins: Vec<Pinned>,
        prq_timeout: Duration,
    ) {
        self.endpoint = Some(endpoint);
        self.ring_pins = ring_pins;
        self.prq_timeout = prq_timeout;
    }

    /// The eventfd a page response for this queue's endpoint writes.
    pub fn response_evt(&self) -> Option<&EventFd> {
        self.endpoint.as_ref().map(|e| e.response_evt())
    }

    /// Requests parked on a page request.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// When the first parked request times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.parked.iter().map(|p| p.deadline).min()
    }

    /// Starts a chain behind the IOMMU: pins its buffers once to find a
    /// translation fault; parks it on a page request when its domain
    /// resolves faults so, reports the fault otherwise (the request then
    /// fails with IOERR when it runs). `None`: parked or handed to the pool.
    fn start(&mut self, head: u16, chain: Chain, rounds: u32) -> Option<u32> {
        let fault = self
            .endpoint
            .clone()
            .and_then(|ep| Some((self.prefault(&ep, &chain)?, ep)));
        if let Some((fault, ep)) = fault {
            // At most a queue's worth parked: a correct driver cannot
            // have more requests outstanding, and a driver publishing one
            // head over and over must not park without bound (each parked
            // request holds one of the endpoint's 65536 group ids).
            let room = self.parked.len() < usize::from(self.queue.size());
            if fault.requestable && rounds < MAX_PAGE_REQUESTS && room {
                let group = ep.page_request(&fault);
                self.stats.parked();
                self.parked.push(Parked {
                    head,
                    chain,
                    group,
                    fault,
                    deadline: Instant::now() + self.prq_timeout,
                    rounds: rounds + 1,
                });
                return None;
            }
            ep.report_fault(&fault);
        }
        self.execute(head, &chain)
    }

    /// The first translation fault of the chain's buffers through `ep`.
    fn prefault(&self, ep: &Endpoint, chain: &Chain) -> Option<DmaFault> {
        // A chain longer than the disk (plus room for the header, status,
        // ID and discard ranges) cannot be a valid request: `classify`
        // refuses it without touching its buffers, so it is not walked
        // here either (descriptors of up to 4 GiB each, over page tables
        // that may map every page onto one frame, would make it long).
        let limit = self
            .disk
            .capacity()
            .saturating_mul(SECTOR_SIZE)
            .saturating_add(1 << 16);
        if chain.readable_len().saturating_add(chain.writable_len()) > limit {
            return None;
        }
        let mut scratch = Vec::new();
        for (segs, write) in [(&chain.readable, false), (&chain.writable, true)] {
            for s in segs {
                let r = ep.pin(
                    &self.gup,
                    s.addr,
                    s.len,
                    write,
                    GupFlags::NONE,
                    Some(&self.cancel),
                    &mut scratch,
                );
                scratch.clear();
                if let Err(DmaError::Fault(f)) = r {
                    return Some(f);
                }
            }
        }
        None
    }

    /// Runs the parked requests whose page request was answered, and fails
    /// those refused or timed out.
    fn service_parked(&mut self) {
        let Some(ep) = self.endpoint.clone() else {
            return;
        };
        let now = Instant::now();
        let mut i = 0;
        while i < self.parked.len() {
            let (group, deadline) = (self.parked[i].group, self.parked[i].deadline);
            let end = match ep.response(group) {
                Some(r) => End::Answered(r),
                // The IOMMU was reset: no answer will ever come.
                None if !ep.known(group) => End::Forgotten,
                None if now >= deadline => {
                    ep.abandon(group);
                    ep.timed_out();
                    End::TimedOut
                }
                None => {
                    i += 1;
                    continue;
                }
            };
            let p = self.parked.swap_remove(i);
            if end == End::Answered(Response::Success) {
                self.stats.resumed();
                if let Some(written) = self.start(p.head, p.chain, p.rounds) {
                    self.publish(p.head, written);
                }
                continue;
            }
            ep.report_fault(&p.fault);
            self.stats.failed(
                &self.name,
                ErrorClass::Translation,
                format_args!(
                    "chain {}: page request {} for {}: {}",
                    p.head,
                    group,
                    p.fault,
                    match end {
                        End::Answered(Response::Invalid) => "refused (INVALID)",
                        End::Answered(_) => "refused (FAILURE)",
                        End::Forgotten => "the IOMMU was reset",
                        End::TimedOut => "no response in time",
                    }
                ),
            );
            let written = match p.chain.status_addr() {
                Some(status_addr) => self.finish(status_addr, req_status::IOERR, 0),
                None => 0,
            };
            self.publish(p.head, written);
        }
    }

    /// Hands transfers of at least [`POOL_MIN_BYTES`] to `threads` I/O
    /// threads ([`Pool`]); without a pool every request runs inline.
    pub fn attach_pool(&mut self, threads: usize) -> std::io::Result<()> {
        self.pool = Some(Pool::new(&self.name, Arc::clone(&self.disk), threads)?);
        Ok(())
    }

    /// The eventfd the pool writes when a transfer finished.
    pub fn pool_evt(&self) -> Option<&EventFd> {
        self.pool.as_ref().map(|p| p.done_evt())
    }

    /// Transfers handed to the pool and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.pool.as_ref().map_or(0, |p| p.in_flight())
    }

    /// Completes the transfers the pool finished (status, used entry,
    /// interrupt); with `wait`, first waits for every one in flight.
    /// Returns how many it completed.
    pub fn complete_transfers(&mut self, wait: bool) -> usize {
        let mut n = 0;
        loop {
            let Some(pool) = self.pool.as_mut() else {
                return n;
            };
            let next = if wait { pool.wait() } else { pool.completed() };
            let Some(f) = next else {
                return n;
            };
            n += 1;
            self.complete(f);
        }
    }

    fn complete(&mut self, f: Finished) {
        let Finished { job, result } = f;
        let c = self.outcome(result, job.len, job.to_guest, job.offset);
        let written = self.finish(job.status_addr, c.status, c.written);
        // The status pin, held since the request started (the status page
        // could not go away), goes with the job.
        drop(job.status_pin);
        self.publish(job.head, written);
    }

    /// Adds the used entry and interrupts if the driver wants it.
    fn publish(&mut self, head: u16, written: u32) {
        if self.broken {
            return;
        }
        if let Err(e) = self.queue.add_used(&self.mem, head, written) {
            self.stats.failed(
                &self.name,
                ErrorClass::Malformed,
                format_args!("chain head {head}: cannot complete: {e}"),
            );
            return;
        }
        self.notify();
    }

    /// The token that cancels a pin waiting in the slow path (device reset).
    pub fn cancel_token(&self) -> Arc<CancelToken> {
        Arc::clone(&self.cancel)
    }

    /// Whether the ring was found corrupt (DEVICE_NEEDS_RESET is set and
    /// the queue is no longer processed).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Completes finished transfers and processes every available chain,
    /// re-enabling notifications at the end (and going on if more arrived
    /// meanwhile) unless transfers are still in flight. Returns the number
    /// of chains taken.
    pub fn process(&mut self) -> usize {
        let mut taken = 0;
        self.complete_transfers(false);
        self.service_parked();
        // A reset in progress ends the loop: `drain` then takes nothing,
        // and a ring with chains left would otherwise keep it going.
        while !self.broken && !self.cancel.is_cancelled() {
            if let Err(e) = self.queue.disable_notification(&self.mem) {
                self.ring_error(format_args!("disabling notifications: {e}"));
                break;
            }
            taken += self.drain();
            if self.in_flight() > 0 {
                // The pool wakes the worker when a transfer finishes, and
                // the worker drains the ring again then: the driver need
                // not notify meanwhile (its notifications stay off, which
                // spares a guest that keeps its queue full one exit per
                // request).
                break;
            }
            match self.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    self.ring_error(format_args!("enabling notifications: {e}"));
                    break;
                }
            }
        }
        taken
    }

    /// Whether the driver made chains available that are not taken yet.
    pub fn has_pending(&self) -> bool {
        !self.broken
            && self
                .queue
                .avail_idx(&self.mem, Ordering::Acquire)
                .is_ok_and(|idx| idx.0 != self.queue.next_avail())
    }

    fn ring_error(&mut self, what: std::fmt::Arguments) {
        self.stats.failed(&self.name, ErrorClass::Ring, what);
        self.broken = true;
        self.interrupt.set_needs_reset();
    }

    /// Takes the chains available now.
    fn drain(&mut self) -> usize {
        let mut taken = 0;
        loop {
            // A reset in progress: stop taking chains, however many the
            // driver keeps adding.
            if self.cancel.is_cancelled() {
                return taken;
            }
            let mem = self.mem.clone();
            let chain = match self.queue.iter(&mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    self.ring_error(format_args!("available ring: {e}"));
                    return taken;
                }
            };
            let Some(chain) = chain else {
                return taken;
            };
            taken += 1;
            self.stats.request();
            let head = chain.head_index();
            if head >= self.queue.size() {
                // No used entry can name it: counted once, here.
                self.stats.failed(
                    &self.name,
                    ErrorClass::Malformed,
                    format_args!("chain head {head} is outside the queue: it cannot be completed"),
                );
                continue;
            }
            let done = match Chain::from_descriptors(chain) {
                Ok(c) => match self.start(head, c, 0) {
                    Some(written) => written,
                    // Handed to the pool or parked: completed later.
                    None => continue,
                },
                Err(e) => {
                    self.stats.failed(
                        &self.name,
                        ErrorClass::Malformed,
                        format_args!(
                            "chain {head}: {}",
                            match e {
                                ChainError::Truncated =>
                                    "loops, names a descriptor outside its table, or has a bad indirect table",
                                ChainError::ReadableAfterWritable =>
                                    "a device-readable descriptor after a device-writable one",
                            }
                        ),
                    );
                    0
                }
            };
            self.publish(head, done);
        }
    }

    fn notify(&mut self) {
        let needed = self.queue.needs_notification(&self.mem).unwrap_or(true);
        // Without EVENT_IDX the driver may still ask for no interrupts.
        let suppressed = !self.queue.event_idx_enabled()
            && self
                .mem
                .load::<u16>(GuestAddress(self.queue.avail_ring()), Ordering::Acquire)
                .is_ok_and(|f| u16::from_le(f) & AVAIL_F_NO_INTERRUPT != 0);
        if needed && !suppressed {
            self.stats.interrupt();
            self.interrupt.trigger(INT_USED_RING);
        }
    }

    /// Runs one chain; returns the used length, or `None` when the
    /// transfer was handed to the pool.
    fn execute(&mut self, head: u16, chain: &Chain) -> Option<u32> {
        let Some(status_addr) = chain.status_addr() else {
            self.stats.failed(
                &self.name,
                ErrorClass::NoStatus,
                format_args!("no device-writable status byte"),
            );
            return Some(0);
        };
        // A request whose status cannot be reported (the byte is outside
        // RAM) is refused before it runs, and counted once; holding the pin
        // until the end also keeps a balloon off the status page meanwhile
        // (and a transfer handed to the pool takes it along).
        self.status_pin = match self.pin(
            &Segment {
                addr: status_addr,
                len: 1,
            },
            true,
        ) {
            Ok(mut p) => p.pop(),
            Err(Refused(class, why)) => {
                self.stats
                    .failed(&self.name, class, format_args!("status byte: {why}"));
                return Some(0);
            }
        };
        let used = self.execute_pinned(head, chain, status_addr);
        self.status_pin = None;
        used
    }

    /// [`Self::execute`] once the status byte is pinned.
    fn execute_pinned(&mut self, head: u16, chain: &Chain, status_addr: u64) -> Option<u32> {
        let header = match chain.header_segments() {
            Some(segs) => {
                let mut bytes = [0u8; HEADER_LEN as usize];
                match self.copy_guest(&segs, &mut bytes, false) {
                    Ok(()) => Some(Header::decode(&bytes)),
                    Err(Refused(class, why)) => {
                        self.stats
                            .failed(&self.name, class, format_args!("request header: {why}"));
                        return Some(self.finish(status_addr, req_status::IOERR, 0));
                    }
                }
            }
            None => None,
        };
        let Some(header) = header else {
            self.stats.failed(
                &self.name,
                ErrorClass::Malformed,
                format_args!("fewer than {HEADER_LEN} device-readable header bytes"),
            );
            return Some(self.finish(status_addr, req_status::IOERR, 0));
        };
        let req = classify(
            chain,
            status_addr,
            header,
            self.disk.capacity(),
            self.disk.read_only(),
            self.supported,
        );
        let c = match req.op {
            Ok(op) => self.run(head, status_addr, op)?,
            Err((class, status)) => {
                self.stats.failed(
                    &self.name,
                    class,
                    format_args!(
                        "request type {} sector {}: refused with status {status}",
                        header.kind, header.sector
                    ),
                );
                Completion { status, written: 0 }
            }
        };
        Some(self.finish(status_addr, c.status, c.written))
    }

    /// Writes the status byte (through a pin) and returns the used length.
    fn finish(&mut self, status_addr: u64, status: u8, written: u32) -> u32 {
        let seg = Segment {
            addr: status_addr,
            len: 1,
        };
        match self.copy_guest(&[seg], &mut [status], true) {
            Ok(()) => written.saturating_add(1),
            Err(Refused(class, why)) => {
                self.stats
                    .failed(&self.name, class, format_args!("status byte: {why}"));
                written
            }
        }
    }

    /// Runs an operation; `None` when handed to the pool.
    fn run(&mut self, head: u16, status_addr: u64, op: Op) -> Option<Completion> {
        match op {
            Op::Read { offset, data } => self.transfer(head, status_addr, offset, &data, true),
            Op::Write { offset, data } => self.transfer(head, status_addr, offset, &data, false),
            other => Some(self.run_inline(other)),
        }
    }

    /// Moves a read's or a write's data: pins the buffers, then transfers
    /// inline or hands the transfer to the pool (large ones).
    fn transfer(
        &mut self,
        head: u16,
        status_addr: u64,
        offset: u64,
        data: &[Segment],
        to_guest: bool,
    ) -> Option<Completion> {
        let len: u64 = data.iter().map(|s| s.len).sum();
        if let Err(Refused(class, why)) = self.pin_all(data, to_guest) {
            let what = if to_guest { "read" } else { "write" };
            return Some(self.ioerr(class, format_args!("{what} at {offset}: {why}")));
        }
        if len >= POOL_MIN_BYTES {
            if let Some(pool) = self.pool.as_mut() {
                let job = Box::new(Job {
                    head,
                    status_addr,
                    offset,
                    len,
                    to_guest,
                    pins: std::mem::take(&mut self.pins),
                    iovs: std::mem::take(&mut self.iovs),
                    status_pin: self.status_pin.take(),
                });
                match pool.submit(job) {
                    Ok(()) => return None,
                    // The pool is gone: do it here.
                    Err(job) => {
                        self.pins = job.pins;
                        self.iovs = job.iovs;
                        self.status_pin = job.status_pin;
                    }
                }
            }
        }
        let r = if to_guest {
            self.disk.read_vectored_at(&mut self.iovs, offset)
        } else {
            self.disk.write_vectored_at(&mut self.iovs, offset)
        };
        // Release (and dirty-mark) before the used entry is published.
        self.release();
        Some(self.outcome(r, len, to_guest, offset))
    }

    /// The completion of a transfer whose pins are released.
    fn outcome(
        &self,
        r: std::io::Result<bool>,
        len: u64,
        to_guest: bool,
        offset: u64,
    ) -> Completion {
        // FLUSH offered but not negotiated: a write is stable once it is
        // completed (virtio 1.2 section 5.2.6.2), so commit it first.
        let r = match r {
            Ok(fallback) if !to_guest && !self.supported.flush => {
                self.disk.flush().map(|()| fallback)
            }
            r => r,
        };
        match r {
            Ok(fallback) => {
                if fallback {
                    self.stats.direct_fallback();
                }
                if to_guest {
                    self.stats.completed(Done::Read(len));
                } else {
                    self.stats.completed(Done::Write(len));
                }
                Completion {
                    status: req_status::OK,
                    written: if to_guest {
                        u32::try_from(len).unwrap_or(u32::MAX)
                    } else {
                        0
                    },
                }
            }
            Err(e) => {
                let what = if to_guest { "read" } else { "write" };
                self.ioerr(
                    ErrorClass::HostIo,
                    format_args!("{what} of {len} bytes at {offset}: {e}"),
                )
            }
        }
    }

    /// Counts (and logs) a failure of `class` and completes with IOERR.
    fn ioerr(&self, class: ErrorClass, what: std::fmt::Arguments) -> Completion {
        self.stats.failed(&self.name, class, what);
        Completion {
            status: req_status::IOERR,
            written: 0,
        }
    }

    /// Runs the operations that move no request data.
    fn run_inline(&mut self, op: Op) -> Completion {
        let ok = |written: u64| Completion {
            status: req_status::OK,
            written: u32::try_from(written).unwrap_or(u32::MAX),
        };
        match op {
            Op::Read { .. } | Op::Write { .. } => Completion {
                // `run` sends these to `transfer`.
                status: req_status::IOERR,
                written: 0,
            },
            Op::Flush => match self.disk.flush() {
                Ok(()) => {
                    self.stats.completed(Done::Flush);
                    ok(0)
                }
                Err(e) => self.ioerr(ErrorClass::HostIo, format_args!("flush: {e}")),
            },
            Op::GetId { data } => {
                let (head, _) = super::request::split_at(
                    &data,
                    data.iter().map(|s| s.len).sum::<u64>().min(ID_LEN),
                )
                .unwrap_or_default();
                let n: u64 = head.iter().map(|s| s.len).sum();
                let mut id = self.id;
                match self.copy_guest(&head, &mut id[..n as usize], true) {
                    Ok(()) => {
                        self.stats.completed(Done::GetId);
                        ok(n)
                    }
                    Err(Refused(class, why)) => self.ioerr(class, format_args!("GET_ID: {why}")),
                }
            }
            Op::Ranges { zeroes, data } => {
                let total: u64 = data.iter().map(|s| s.len).sum();
                let mut raw = vec![0u8; total as usize];
                if let Err(Refused(class, why)) = self.copy_guest(&data, &mut raw, false) {
                    return self.ioerr(class, format_args!("discard ranges: {why}"));
                }
                let mut ranges = Vec::with_capacity(raw.len() / RANGE_LEN as usize);
                for r in raw.chunks_exact(RANGE_LEN as usize) {
                    let mut b8 = [0u8; 8];
                    b8.copy_from_slice(&r[0..8]);
                    let sector = u64::from_le_bytes(b8);
                    let mut b4 = [0u8; 4];
                    b4.copy_from_slice(&r[8..12]);
                    let sectors = u64::from(u32::from_le_bytes(b4));
                    b4.copy_from_slice(&r[12..16]);
                    let flags = u32::from_le_bytes(b4);
                    // Bit 0 is "unmap" (write zeroes only); the rest are reserved.
                    if flags & !1 != 0 || (!zeroes && flags != 0) {
                        self.stats.failed(
                            &self.name,
                            ErrorClass::Unsupported,
                            format_args!("discard range flags {flags:#x}"),
                        );
                        return Completion {
                            status: req_status::UNSUPP,
                            written: 0,
                        };
                    }
                    ranges.push((sector, sectors));
                }
                // Capacity only once every range's flags passed: an unknown
                // flag in any range makes the request UNSUPP (virtio 1.2
                // section 5.2.6.2), even after a range that is out of range.
                for &(sector, sectors) in &ranges {
                    match sector.checked_add(sectors) {
                        Some(end) if end <= self.disk.capacity() => {}
                        _ => {
                            return self.ioerr(
                                ErrorClass::OutOfRange,
                                format_args!("discard of {sectors} sectors at {sector}"),
                            )
                        }
                    }
                }
                // Only once every range passed: a refused request changes
                // nothing on the disk.
                for (sector, sectors) in ranges {
                    if let Err(e) =
                        self.disk
                            .discard(sector * SECTOR_SIZE, sectors * SECTOR_SIZE, zeroes)
                    {
                        return self.ioerr(ErrorClass::HostIo, format_args!("discard: {e}"));
                    }
                }
                self.stats.completed(Done::Discard);
                ok(0)
            }
        }
    }

    /// Pins one range (one pin, or several behind the IOMMU), retrying
    /// while a balloon holds its frames frozen.
    fn pin(&self, seg: &Segment, write: bool) -> Result<Vec<Pinned>, Refused> {
        let mut flags = GupFlags::PIN;
        if write {
            flags |= GupFlags::WRITE;
        }
        let mut tries = 0;
        loop {
            let short = match &self.endpoint {
                None => {
                    let r = self.gup.pin_cancellable(
                        &AddressSpace::Physical,
                        seg.addr,
                        seg.len,
                        flags,
                        Some(&self.cancel),
                    );
                    match r {
                        Ok(p) if p.bytes() == seg.len => return Ok(vec![p]),
                        Ok(p) => p.short_reason().copied().unwrap_or(GupError::Again),
                        Err(e) => e,
                    }
                }
                Some(ep) => {
                    let mut pins = Vec::new();
                    match ep.pin(
                        &self.gup,
                        seg.addr,
                        seg.len,
                        write,
                        GupFlags::NONE,
                        Some(&self.cancel),
                        &mut pins,
                    ) {
                        Ok(()) => return Ok(pins),
                        Err(DmaError::Fault(f)) => {
                            return Err(Refused(ErrorClass::Translation, f.to_string()))
                        }
                        Err(DmaError::Pin(e)) => e,
                    }
                }
            };
            tries += 1;
            if short != GupError::Again || tries >= PIN_RETRIES {
                let class = match short {
                    GupError::Fault { .. } | GupError::Overflow | GupError::Invalid(_) => {
                        ErrorClass::BadAddress
                    }
                    _ => ErrorClass::HostIo,
                };
                return Err(Refused(
                    class,
                    format!(
                        "buffer [{:#x}, +{:#x}) cannot be pinned: {short}",
                        seg.addr, seg.len
                    ),
                ));
            }
        }
    }

    /// Pins every segment into `self.pins` and lists their host ranges in
    /// `self.iovs`; on failure nothing stays pinned.
    fn pin_all(&mut self, segs: &[Segment], write: bool) -> Result<(), Refused> {
        self.release();
        for s in segs {
            match self.pin(s, write) {
                Ok(pins) => {
                    for p in pins {
                        for e in p.iter_extents() {
                            let Some(host) = e.host_ptr() else {
                                self.release();
                                return Err(Refused(ErrorClass::BadAddress, "a hole".into()));
                            };
                            self.iovs.push(libc::iovec {
                                iov_base: host.cast(),
                                iov_len: e.len as usize,
                            });
                        }
                        self.pins.push(p);
                    }
                }
                Err(r) => {
                    self.release();
                    return Err(r);
                }
            }
        }
        Ok(())
    }

    fn release(&mut self) {
        self.iovs.clear();
        self.pins.clear();
    }

    /// Copies between `buf` and the guest bytes of `segs` through pins
    /// (`to_guest`: buf -> guest). `buf.len()` is the sum of the lengths.
    fn copy_guest(
        &mut self,
        segs: &[Segment],
        buf: &mut [u8],
        to_guest: bool,
    ) -> Result<(), Refused> {
        self.pin_all(segs, to_guest)?;
        let mut at = 0usize;
        for v in &self.iovs {
            let n = v.iov_len.min(buf.len() - at);
            let host = v.iov_base.cast::<u8>();
            for i in 0..n {
                // SAFETY: `host` is the host address of a pinned guest
                // range of at least `iov_len` bytes, mapped while
                // `self.pins` holds it; volatile because the guest may
                // change the bytes concurrently.
                unsafe {
                    if to_guest {
                        ptr::write_volatile(host.add(i), buf[at + i]);
                    } else {
                        buf[at + i] = ptr::read_volatile(host.add(i));
                    }
                }
            }
            at += n;
        }
        self.release();
        Ok(())
    }
}

impl Drop for BlockQueue {
    fn drop(&mut self) {
        // A reset: parked requests are never completed, and their page
        // requests are forgotten (a late answer gets NOENT).
        if let Some(ep) = &self.endpoint {
            for p in &self.parked {
                ep.abandon(p.group);
            }
        }
    }
}

/// A running worker thread.
pub struct Worker {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    cancel: Arc<CancelToken>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Worker {
    /// Stops the thread (cancelling a pin that waits on a frozen frame)
    /// and joins it.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.cancel.cancel();
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Runs `queue` on its own thread: it sleeps on `notifier` (and on its
/// stop eventfd), drains the queue on every wake, and after the queue runs
/// dry keeps polling the available ring for `poll` before it sleeps again
/// (a guest that keeps submitting then needs no notification at all).
pub fn spawn(mut queue: BlockQueue, notifier: EventFd, poll: Duration) -> std::io::Result<Worker> {
    let stop = Arc::new(AtomicBool::new(false));
    let wake = EventFd::new(0)?;
    let wake_thread = wake.try_clone()?;
    let cancel = queue.cancel_token();
    let stop_thread = Arc::clone(&stop);
    let thread = thread::Builder::new()
        .name(queue.name.clone())
        .spawn(move || {
            let fd = std::os::unix::io::AsRawFd::as_raw_fd;
            let pollfd = |fd: i32| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // The pool's eventfd, when there is a pool, and the page
            // responses' eventfd, behind the IOMMU (else the notifier
            // again, harmlessly).
            let pool_fd = queue.pool_evt().map_or(fd(&notifier), fd);
            let response_fd = queue.response_evt().map_or(fd(&notifier), fd);
            let mut fds = [
                pollfd(fd(&notifier)),
                pollfd(fd(&wake_thread)),
                pollfd(pool_fd),
                pollfd(response_fd),
            ];
            while !stop_thread.load(Ordering::Acquire) {
                // Parked requests time out: wake up for the first deadline.
                let timeout = queue.next_deadline().map_or(-1, |d| {
                    let ms = d.saturating_duration_since(Instant::now()).as_millis();
                    i32::try_from(ms).unwrap_or(i32::MAX).saturating_add(1)
                });
                // SAFETY: four valid pollfds owned by this frame.
                let r = unsafe { libc::poll(fds.as_mut_ptr(), 4, timeout) };
                if r < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    eprintln!(
                        "{}: poll failed: {}; the worker stops",
                        queue.name,
                        std::io::Error::last_os_error()
                    );
                    return;
                }
                if fds[1].revents != 0 || stop_thread.load(Ordering::Acquire) {
                    return;
                }
                if fds[2].revents != 0 {
                    if let Some(evt) = queue.pool_evt() {
                        let _ = evt.read();
                    }
                }
                if fds[3].revents != 0 {
                    if let Some(evt) = queue.response_evt() {
                        let _ = evt.read();
                    }
                }
                if fds[0].revents != 0 {
                    let _ = notifier.read();
                    queue.stats.notification();
                }
                queue.process();
                // Keep going while there is work, and poll for `poll`
                // after the last of it before sleeping again.
                let mut until = Instant::now() + poll;
                while !stop_thread.load(Ordering::Acquire) {
                    if queue.has_pending() || queue.complete_transfers(false) > 0 {
                        queue.process();
                        until = Instant::now() + poll;
                    } else if queue.in_flight() > 0 || poll.is_zero() || Instant::now() >= until {
                        // Transfers in flight wake us through the pool's
                        // eventfd: sleep rather than take a core from them.
                        break;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        })?;
    Ok(Worker {
        stop,
        wake,
        cancel,
        thread: Some(thread),
    })
}
