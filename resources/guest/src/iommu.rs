// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A virtio-iommu driver (virtio 1.2 section 5.13) on the virtio-mmio
//! transport, polled at CPL3, with the draft extensions our device offers
//! (docs/guest-va-dma.md): ATTACH_TABLE (the domain translates through x86
//! page tables in guest memory) and page requests answered by PAGE_RESP.
//!
//! Queue 0 carries requests: each is one device-readable descriptor (head
//! and body) and one device-writable descriptor (PROBE's properties and the
//! tail), sent and waited for one at a time. Queue 1 is kept full of
//! 24-byte device-writable buffers; [`Iommu::poll_event`] takes one record
//! (a fault report or a page request) and gives its buffer back at once.
//! The IOMMU's own accesses are guest-physical: its rings, requests and
//! event buffers live in identity-mapped RAM.

use core::fmt;
use core::ptr::{read_volatile, write_volatile};

use crate::blk::{InitError, Probe};
use crate::dma::Arena;
use crate::pvh::MmioDevice;
use crate::virtio::{
    feature as vfeature, reg, status, Mmio, Queue, QueueError, Seg, MAX_QUEUE, RING_BYTES,
};

/// virtio device id of an IOMMU.
pub const DEVICE_ID_IOMMU: u32 = 23;

/// virtio-iommu feature bits (virtio 1.2 5.13.3; 8 and 9 from the drafts,
/// numbered as docs/guest-va-dma.md says).
#[allow(dead_code)] // the protocol's whole vocabulary
pub mod feature {
    /// `input_range` is valid.
    pub const INPUT_RANGE: u64 = 1 << 0;
    /// `domain_range` is valid.
    pub const DOMAIN_RANGE: u64 = 1 << 1;
    /// MAP and UNMAP.
    pub const MAP_UNMAP: u64 = 1 << 2;
    /// Unattached endpoints bypass the IOMMU (legacy).
    pub const BYPASS: u64 = 1 << 3;
    /// PROBE, `probe_size` valid.
    pub const PROBE: u64 = 1 << 4;
    /// MAP's MMIO flag.
    pub const MMIO: u64 = 1 << 5;
    /// The `bypass` config field.
    pub const BYPASS_CONFIG: u64 = 1 << 6;
    /// Draft: ATTACH_TABLE (x86 page tables).
    pub const ATTACH_TABLE: u64 = 1 << 8;
    /// Draft: page requests on the event queue, PAGE_RESP.
    pub const PAGE_REQUEST: u64 = 1 << 9;
}

/// The features the driver accepts when offered (`VERSION_1` is required).
pub const WANTED: u64 = vfeature::VERSION_1
    | feature::INPUT_RANGE
    | feature::DOMAIN_RANGE
    | feature::MAP_UNMAP
    | feature::PROBE
    | feature::ATTACH_TABLE
    | feature::PAGE_REQUEST;

/// Request types.
pub mod req {
    /// Attach an endpoint to a domain.
    pub const ATTACH: u8 = 1;
    /// Detach an endpoint from a domain.
    pub const DETACH: u8 = 2;
    /// Map an IOVA range.
    pub const MAP: u8 = 3;
    /// Unmap an IOVA range.
    pub const UNMAP: u8 = 4;
    /// Ask for an endpoint's properties.
    pub const PROBE: u8 = 5;
    /// Draft: attach x86 page tables to a domain.
    pub const ATTACH_TABLE: u8 = 6;
    /// Draft: answer a page request.
    pub const PAGE_RESP: u8 = 8;
}

/// Request status values (the tail's `status`).
pub mod st {
    /// Success.
    pub const OK: u8 = 0;
    /// Virtio communication error.
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
    /// Internal device error.
    pub const DEVERR: u8 = 3;
    /// Invalid parameter.
    pub const INVAL: u8 = 4;
    /// Out of range.
    pub const RANGE: u8 = 5;
    /// No such endpoint, domain or group.
    pub const NOENT: u8 = 6;
    /// Bad address.
    pub const FAULT: u8 = 7;
    /// Out of memory.
    pub const NOMEM: u8 = 8;
}

/// The name of a request status (for messages).
pub fn status_name(s: u8) -> &'static str {
    match s {
        st::OK => "OK",
        st::IOERR => "IOERR",
        st::UNSUPP => "UNSUPP",
        st::DEVERR => "DEVERR",
        st::INVAL => "INVAL",
        st::RANGE => "RANGE",
        st::NOENT => "NOENT",
        st::FAULT => "FAULT",
        st::NOMEM => "NOMEM",
        _ => "?",
    }
}

/// MAP flags.
pub mod map_flags {
    /// The device may read.
    pub const READ: u32 = 1;
    /// The device may write.
    pub const WRITE: u32 = 2;
    /// MMIO mapping (MMIO feature; ours refuses it).
    pub const MMIO: u32 = 4;
}

/// ATTACH flags.
pub mod attach_flags {
    /// Bypass the IOMMU (BYPASS_CONFIG; ours refuses it).
    pub const BYPASS: u32 = 1;
}

/// Event record flags.
#[allow(dead_code)] // the protocol's whole vocabulary
pub mod ev_flags {
    /// The access was a read.
    pub const READ: u32 = 1;
    /// The access was a write.
    pub const WRITE: u32 = 2;
    /// The access was an instruction fetch.
    pub const EXEC: u32 = 4;
    /// `address` is valid.
    pub const ADDRESS: u32 = 0x100;
    /// Draft: a page request (else a fault report).
    pub const PAGE_REQUEST: u32 = 0x200;
    /// Draft: the last page request of its group.
    pub const LAST: u32 = 0x400;
    /// Draft: a supervisor access.
    pub const PRIV: u32 = 0x800;
}

/// Fault reasons.
#[allow(dead_code)] // the protocol's whole vocabulary
pub mod reason {
    /// Unknown.
    pub const UNKNOWN: u8 = 0;
    /// The endpoint is not attached to a domain.
    pub const DOMAIN: u8 = 1;
    /// No mapping, or not enough permission.
    pub const MAPPING: u8 = 2;
}

/// PAGE_RESP codes.
pub mod resp {
    /// The page is there now: retry.
    pub const SUCCESS: u16 = 0;
    /// The access is refused.
    pub const INVALID: u16 = 1;
    /// Refused, and no more page requests from this endpoint.
    pub const FAILURE: u16 = 2;
}

/// ATTACH_TABLE `table_flags` (docs/guest-va-dma.md).
#[allow(dead_code)] // the protocol's whole vocabulary
pub mod table_flags {
    /// CR0.WP.
    pub const WP: u64 = 1 << 0;
    /// EFER.NXE.
    pub const NXE: u64 = 1 << 1;
    /// CR4.SMAP.
    pub const SMAP: u64 = 1 << 2;
    /// The device's accesses are supervisor accesses.
    pub const PRIV: u64 = 1 << 3;
    /// Translation faults produce page requests.
    pub const PRI: u64 = 1 << 4;
}

/// ATTACH_TABLE format: x86 4-/5-level (VT-d first stage).
pub const FORMAT_X86: u16 = 4;
/// PROBE property: reserved memory region.
pub const PROP_RESV_MEM: u16 = 1;
/// Draft PROBE property: the page-table format the endpoint supports.
pub const PROP_PAGE_TABLE_FMT: u16 = 6;
/// RESV_MEM subtype: MSI doorbell window.
pub const RESV_MSI: u8 = 1;
/// Bytes of an event record.
pub const EVENT_BYTES: u32 = 24;
/// Spacing of the event buffers.
const EVENT_STRIDE: u64 = 32;
/// Event buffers posted (at most the queue size).
const EVENTS: u16 = 64;
/// Where the writable part of a request goes in the request page.
const WRITABLE_OFFSET: u64 = 0x800;
/// Poison for the writable part of a request.
const POISON: u8 = 0xa5;

/// The configuration space (virtio 1.2 5.13.4).
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Page sizes the device supports.
    pub page_size_mask: u64,
    /// First IOVA.
    pub input_start: u64,
    /// Last IOVA.
    pub input_end: u64,
    /// First domain id.
    pub domain_start: u32,
    /// Last domain id.
    pub domain_end: u32,
    /// Bytes of PROBE properties.
    pub probe_size: u32,
}

/// One record from the event queue.
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    /// [`reason`].
    pub reason: u8,
    /// Group id (page requests).
    pub group: u16,
    /// [`ev_flags`].
    pub flags: u32,
    /// The endpoint.
    pub endpoint: u32,
    /// PASID (0).
    pub pasid: u32,
    /// The address (valid with `ADDRESS`).
    pub address: u64,
    /// The used length the device gave the buffer.
    pub used_len: u32,
}

impl Event {
    /// Whether this is a page request (else a fault report).
    pub fn is_page_request(&self) -> bool {
        self.flags & ev_flags::PAGE_REQUEST != 0
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} reason {} group {} flags {:#x} endpoint {} address {:#x}",
            if self.is_page_request() {
                "page request"
            } else {
                "fault report"
            },
            self.reason,
            self.group,
            self.flags,
            self.endpoint,
            self.address
        )
    }
}

/// Most RESV_MEM properties kept from a PROBE.
pub const MAX_RESV: usize = 4;

/// What PROBE said about an endpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeInfo {
    /// RESV_MEM properties: (subtype, start, end).
    pub resv: [(u8, u64, u64); MAX_RESV],
    /// RESV_MEM properties found (may exceed [`MAX_RESV`]).
    pub nresv: usize,
    /// PAGE_TABLE_FMT: (format, addr_widths, table_flags).
    pub page_table: Option<(u16, u8, u32)>,
    /// Properties of other types.
    pub unknown: u32,
    /// Properties whose length did not fit the buffer or their type.
    pub malformed: u32,
}

/// What went wrong with a request.
#[derive(Clone, Copy, Debug)]
pub enum Error {
    /// The request queue failed.
    Queue(QueueError),
    /// The device returned a used length too short for the tail.
    Short(u32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Queue(e) => write!(f, "request queue: {e}"),
            Error::Short(n) => write!(f, "used length {n}: no tail written"),
        }
    }
}

impl From<QueueError> for Error {
    fn from(e: QueueError) -> Error {
        Error::Queue(e)
    }
}

/// A request body under construction (little endian).
pub struct Body {
    b: [u8; 80],
    n: usize,
}

impl Body {
    /// A body of `len` zero bytes starting with the head (`ty`).
    pub fn new(ty: u8, len: usize) -> Body {
        let mut b = Body {
            b: [0; 80],
            n: len.min(80),
        };
        b.b[0] = ty;
        b
    }

    /// Stores `bytes` at `off`.
    pub fn put(&mut self, off: usize, bytes: &[u8]) -> &mut Body {
        if off + bytes.len() <= self.n {
            self.b[off..off + bytes.len()].copy_from_slice(bytes);
        }
        self
    }

    /// Stores a `u16` at `off`.
    pub fn u16(&mut self, off: usize, v: u16) -> &mut Body {
        self.put(off, &v.to_le_bytes())
    }

    /// Stores a `u32` at `off`.
    pub fn u32(&mut self, off: usize, v: u32) -> &mut Body {
        self.put(off, &v.to_le_bytes())
    }

    /// Stores a `u64` at `off`.
    pub fn u64(&mut self, off: usize, v: u64) -> &mut Body {
        self.put(off, &v.to_le_bytes())
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.b[..self.n]
    }
}

/// The outcome of one request.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    /// The tail's status.
    pub status: u8,
    /// The used length.
    pub used_len: u32,
}

/// An ATTACH_TABLE request's fields.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    /// Domain.
    pub domain: u32,
    /// Endpoint.
    pub endpoint: u32,
    /// ATTACH flags (0).
    pub flags: u32,
    /// [`FORMAT_X86`].
    pub format: u16,
    /// PASID (0).
    pub pasid: u32,
    /// CR3-style root.
    pub pgd: u64,
    /// [`table_flags`].
    pub table_flags: u64,
    /// 48 or 57.
    pub addr_width: u32,
}

/// One virtio-iommu device, set up and ready.
pub struct Iommu {
    /// Where the command line said it is.
    pub dev: MmioDevice,
    /// Its registers.
    pub mmio: Mmio,
    /// Features the device offered.
    pub offered: u64,
    /// Features negotiated.
    pub features: u64,
    /// The configuration space.
    pub config: Config,
    rq: Queue,
    eq: Queue,
    /// The request page (readable part at 0, writable at 0x800).
    req_page: u64,
    /// Event buffer of each head on the event queue.
    ev_buf: [u64; MAX_QUEUE as usize],
    /// Requests sent.
    pub requests: u64,
    /// Page requests received.
    pub page_requests: u64,
    /// Fault reports received.
    pub fault_reports: u64,
    /// PAGE_RESP the device accepted, by code (SUCCESS, INVALID, FAILURE,
    /// other).
    pub responses: [u64; 4],
    /// Set when a request got lost or the queues broke.
    pub broken: bool,
}

impl Iommu {
    /// Resets and sets up the IOMMU found by `p`, taking its rings, request
    /// page and event buffers from `arena` (identity-mapped RAM).
    pub fn init(dev: MmioDevice, p: &Probe, arena: &mut Arena) -> Result<Iommu, InitError> {
        let mmio = p.mmio;
        let (Some(r0), Some(r1), Some(req_page), Some(ev_page)) = (
            arena.zeroed(RING_BYTES, 4096),
            arena.zeroed(RING_BYTES, 4096),
            arena.zeroed(4096, 4096),
            arena.zeroed(4096, 4096),
        ) else {
            return Err(InitError::NoQueue);
        };
        let (offered, features) = mmio.negotiate(|offered| offered & WANTED)?;
        let (Some(rq), Some(eq)) = (
            Queue::new(mmio, 0, r0, false),
            Queue::new(mmio, 1, r1, false),
        ) else {
            mmio.write(reg::STATUS, status::FAILED);
            return Err(InitError::NoQueue);
        };
        let Some(config) = read_config(&mmio) else {
            mmio.write(reg::STATUS, status::FAILED);
            return Err(InitError::ConfigUnstable);
        };
        mmio.driver_ok()?;
        let mut iommu = Iommu {
            dev,
            mmio,
            offered,
            features,
            config,
            rq,
            eq,
            req_page,
            ev_buf: [0; MAX_QUEUE as usize],
            requests: 0,
            page_requests: 0,
            fault_reports: 0,
            responses: [0; 4],
            broken: false,
        };
        let n = EVENTS.min(iommu.eq.size());
        for i in 0..u64::from(n) {
            if iommu.post_event(ev_page + i * EVENT_STRIDE).is_err() {
                return Err(InitError::NoQueue);
            }
        }
        iommu.eq.kick();
        Ok(iommu)
    }

    /// Whether `f` was negotiated.
    pub fn has(&self, f: u64) -> bool {
        self.features & f != 0
    }

    fn post_event(&mut self, buf: u64) -> Result<(), QueueError> {
        for i in 0..u64::from(EVENT_BYTES) {
            // SAFETY: the event buffer is identity-mapped RAM owned by this
            // driver and not on the queue.
            unsafe { write_volatile((buf + i) as *mut u8, 0) };
        }
        let head = self.eq.add(&[Seg::inn(buf, EVENT_BYTES)])?;
        self.ev_buf[usize::from(head)] = buf;
        Ok(())
    }

    /// Sends `body` (device-readable) with `writable` device-writable bytes
    /// after it (the tail last) and waits for the device. Returns the tail
    /// status and the used length; the writable bytes are at
    /// [`writable`](Self::writable).
    pub fn raw(&mut self, body: &[u8], writable: usize) -> Result<Done, Error> {
        if self.broken {
            return Err(Error::Queue(QueueError::Timeout));
        }
        let w = self.req_page + WRITABLE_OFFSET;
        let writable = writable.clamp(1, (4096 - WRITABLE_OFFSET) as usize);
        for (i, &b) in body.iter().take(WRITABLE_OFFSET as usize).enumerate() {
            // SAFETY: the request page is identity-mapped RAM owned by this
            // driver; no request is in flight.
            unsafe { write_volatile((self.req_page + i as u64) as *mut u8, b) };
        }
        for i in 0..writable as u64 {
            // SAFETY: as above, the writable half.
            unsafe { write_volatile((w + i) as *mut u8, POISON) };
        }
        let rlen = body.len().min(WRITABLE_OFFSET as usize) as u32;
        let head = if rlen == 0 {
            self.rq.add(&[Seg::inn(w, writable as u32)])?
        } else {
            self.rq
                .add(&[Seg::out(self.req_page, rlen), Seg::inn(w, writable as u32)])?
        };
        self.requests += 1;
        self.rq.kick();
        let u = match self.rq.wait() {
            Ok(u) if u.id == head => u,
            Ok(u) => {
                self.broken = true;
                return Err(Error::Queue(QueueError::BadUsedId(u32::from(u.id))));
            }
            Err(e) => {
                self.broken = true;
                return Err(Error::Queue(e));
            }
        };
        if (u.len as usize) < 4 && writable >= 4 {
            return Err(Error::Short(u.len));
        }
        // SAFETY: inside the writable half of the request page.
        let status = unsafe { read_volatile((w + writable as u64 - 4) as *const u8) };
        Ok(Done {
            status,
            used_len: u.len,
        })
    }

    /// The writable bytes of the last request (`n` of them, at most 2 KiB).
    pub fn writable(&self, off: usize) -> u8 {
        let off = off.min((4096 - WRITABLE_OFFSET - 1) as usize) as u64;
        // SAFETY: inside the writable half of the request page.
        unsafe { read_volatile((self.req_page + WRITABLE_OFFSET + off) as *const u8) }
    }

    fn writable_u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.writable(off), self.writable(off + 1)])
    }

    fn writable_u32(&self, off: usize) -> u32 {
        u32::from(self.writable_u16(off)) | u32::from(self.writable_u16(off + 2)) << 16
    }

    fn writable_u64(&self, off: usize) -> u64 {
        u64::from(self.writable_u32(off)) | u64::from(self.writable_u32(off + 4)) << 32
    }

    /// Sends `body` with a 4-byte tail; returns the status.
    pub fn simple(&mut self, body: &Body) -> Result<u8, Error> {
        Ok(self.raw(body.bytes(), 4)?.status)
    }

    /// ATTACH `endpoint` to `domain`.
    pub fn attach(&mut self, domain: u32, endpoint: u32, flags: u32) -> Result<u8, Error> {
        let mut b = Body::new(req::ATTACH, 20);
        b.u32(4, domain).u32(8, endpoint).u32(12, flags);
        self.simple(&b)
    }

    /// DETACH `endpoint` from `domain`.
    pub fn detach(&mut self, domain: u32, endpoint: u32) -> Result<u8, Error> {
        let mut b = Body::new(req::DETACH, 20);
        b.u32(4, domain).u32(8, endpoint);
        self.simple(&b)
    }

    /// MAP `virt_start..=virt_end` to `phys` in `domain`.
    pub fn map(
        &mut self,
        domain: u32,
        virt_start: u64,
        virt_end: u64,
        phys: u64,
        flags: u32,
    ) -> Result<u8, Error> {
        let mut b = Body::new(req::MAP, 36);
        b.u32(4, domain)
            .u64(8, virt_start)
            .u64(16, virt_end)
            .u64(24, phys)
            .u32(32, flags);
        self.simple(&b)
    }

    /// UNMAP `virt_start..=virt_end` in `domain`.
    pub fn unmap(&mut self, domain: u32, virt_start: u64, virt_end: u64) -> Result<u8, Error> {
        let mut b = Body::new(req::UNMAP, 28);
        b.u32(4, domain).u64(8, virt_start).u64(16, virt_end);
        self.simple(&b)
    }

    /// ATTACH_TABLE.
    pub fn attach_table(&mut self, t: &Table) -> Result<u8, Error> {
        let mut b = Body::new(req::ATTACH_TABLE, 44);
        b.u32(4, t.domain)
            .u32(8, t.endpoint)
            .u32(12, t.flags)
            .u16(16, t.format)
            .u32(20, t.pasid)
            .u64(24, t.pgd)
            .u64(32, t.table_flags)
            .u32(40, t.addr_width);
        self.simple(&b)
    }

    /// PAGE_RESP for `group` of `endpoint` in `domain`; counts the code.
    pub fn page_resp(
        &mut self,
        domain: u32,
        endpoint: u32,
        group: u16,
        code: u16,
    ) -> Result<u8, Error> {
        let mut b = Body::new(req::PAGE_RESP, 28);
        b.u32(4, domain)
            .u32(8, endpoint)
            .u32(20, u32::from(group))
            .u16(24, code);
        let s = self.simple(&b)?;
        if s == st::OK {
            self.responses[usize::from(code.min(3))] += 1;
        }
        Ok(s)
    }

    /// PROBE `endpoint`: the status and the properties found.
    pub fn probe(&mut self, endpoint: u32) -> Result<(u8, ProbeInfo), Error> {
        let mut b = Body::new(req::PROBE, 72);
        b.u32(4, endpoint);
        let size = (self.config.probe_size as usize).min((4096 - WRITABLE_OFFSET) as usize - 4);
        let d = self.raw(b.bytes(), size + 4)?;
        let mut info = ProbeInfo::default();
        if d.status != st::OK {
            return Ok((d.status, info));
        }
        // The device writes the whole property area and the tail.
        if d.used_len as usize != size + 4 {
            info.malformed += 1;
        }
        let mut off = 0usize;
        while off + 4 <= size {
            let ty = self.writable_u16(off) & 0xfff;
            let len = usize::from(self.writable_u16(off + 2));
            if ty == 0 {
                break;
            }
            let v = off + 4;
            if v + len > size {
                info.malformed += 1;
                break;
            }
            match ty {
                PROP_RESV_MEM if len >= 20 => {
                    if info.nresv < MAX_RESV {
                        info.resv[info.nresv] = (
                            self.writable(v),
                            self.writable_u64(v + 4),
                            self.writable_u64(v + 12),
                        );
                    }
                    info.nresv += 1;
                }
                PROP_PAGE_TABLE_FMT if len >= 8 => {
                    info.page_table = Some((
                        self.writable_u16(v),
                        self.writable(v + 2),
                        self.writable_u32(v + 4),
                    ));
                }
                PROP_RESV_MEM | PROP_PAGE_TABLE_FMT => info.malformed += 1,
                _ => info.unknown += 1,
            }
            off = v + len;
        }
        Ok((d.status, info))
    }

    /// Takes one event record, if the device published one, and gives its
    /// buffer back to the device.
    pub fn poll_event(&mut self) -> Result<Option<Event>, QueueError> {
        let Some(u) = self.eq.poll()? else {
            return Ok(None);
        };
        let buf = self.ev_buf[usize::from(u.id)];
        let r8 = |o: u64| {
            // SAFETY: the event buffer (identity-mapped, ours, just used).
            unsafe { read_volatile((buf + o) as *const u8) }
        };
        let r16 = |o: u64| u16::from_le_bytes([r8(o), r8(o + 1)]);
        let r32 = |o: u64| u32::from(r16(o)) | u32::from(r16(o + 2)) << 16;
        let ev = Event {
            reason: r8(0),
            group: r16(2),
            flags: r32(4),
            endpoint: r32(8),
            pasid: r32(12),
            address: u64::from(r32(16)) | u64::from(r32(20)) << 32,
            used_len: u.len,
        };
        if ev.is_page_request() {
            self.page_requests += 1;
        } else {
            self.fault_reports += 1;
        }
        self.post_event(buf)?;
        self.eq.kick();
        Ok(Some(ev))
    }
}

/// The configuration, read consistently (generation unchanged).
fn read_config(mmio: &Mmio) -> Option<Config> {
    let r64 = |off: u64| {
        u64::from(mmio.read(reg::CONFIG + off)) | u64::from(mmio.read(reg::CONFIG + off + 4)) << 32
    };
    for _ in 0..100 {
        let gen = mmio.read(reg::CONFIG_GENERATION);
        let c = Config {
            page_size_mask: r64(0),
            input_start: r64(8),
            input_end: r64(16),
            domain_start: mmio.read(reg::CONFIG + 24),
            domain_end: mmio.read(reg::CONFIG + 28),
            probe_size: mmio.read(reg::CONFIG + 32),
        };
        if mmio.read(reg::CONFIG_GENERATION) == gen {
            return Some(c);
        }
    }
    None
}
