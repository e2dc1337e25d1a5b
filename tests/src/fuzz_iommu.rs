// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The body of the `virtio_iommu` fuzz target
//! (fuzz/fuzz_targets/virtio_iommu.rs), also replayed over the committed
//! corpus by `tests/tests/fuzz_corpus.rs`.
//!
//! [`run`] decodes the input into a configuration (the negotiated IOMMU
//! features, the VM's MAXPHYADDR, whether a virtio-blk queue sits behind
//! endpoint 2 and how long its page requests may wait) and a sequence of
//! operations on a virtio-iommu with endpoints 0, 1 and 2 over a small guest
//! memory (two RAM regions with a hole between them):
//!
//! * requests: random bytes, or ATTACH / DETACH / MAP / UNMAP / PROBE /
//!   ATTACH_TABLE / PAGE_RESP with fuzzed fields, run through
//!   `IommuHandle::execute` or through the request queue (readable and
//!   writable parts split across descriptors);
//! * page-table entries (or raw bytes) written into the table area, which
//!   ATTACH_TABLE may attach;
//! * `Endpoint::translate` and `Endpoint::pin` (read or write) on fuzzed
//!   ranges, pins held across operations and dropped later;
//! * page requests and fault reports queued by an endpoint, the answers
//!   taken or abandoned, event buffers posted and the event queue flushed;
//! * with the disk: virtio-blk chains (I/O virtual addresses) processed by
//!   a `BlockQueue` behind endpoint 2, whose page requests fuzzed
//!   PAGE_RESPs answer.
//!
//! Checked after every operation (a panic is a finding, in the device or
//! here), against a model kept from docs/guest-va-dma.md, not from the
//! device's code:
//!
//! * every request's status: OK exactly when the model says every
//!   documented condition holds, otherwise one of the statuses documented
//!   for that type (an unknown type UNSUPP, a short one INVAL); the reply
//!   as long as the writable part (0 outside `[4, MAX_WRITABLE]`), zero but
//!   for PROBE's properties and the tail; the model applies what was OK;
//! * `translate` and `pin` through a MAP domain agree with the model's
//!   mappings (BTreeMap), through a table domain with guest-mm's walker
//!   (`guest_mm::paging::translate`) for the context the document
//!   describes: the same guest-physical ranges, or the same fault (address,
//!   #PF error code, reason, whether it may be a page request);
//! * GUP: once every pin of the harness is dropped, nothing is pinned but
//!   the disk's rings, nothing referenced; after the end, nothing at all;
//! * the event queue: records are well formed, the harness's page requests
//!   arrive in order, each once, and its fault reports in order or counted
//!   as dropped; answers taken match the PAGE_RESPs given;
//! * the disk: used entries only for chains in flight, no longer than
//!   their writable part; chains not completed are exactly those parked;
//! * the counters: requests, failures, page requests, fault reports and
//!   event records written match what the harness did.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use devices::virtio::blk::{Block, BlockConfig, BlockQueue, DiskOptions};
use devices::virtio::iommu::{
    DmaError, DmaFault, Endpoint, FaultReason, Iommu, IommuHandle, IommuQueues, Response,
};
use devices::virtio::{Activation, Interrupt, VirtioDevice, F_ACCESS_PLATFORM, F_VERSION_1};
use guest_mm::gup::{GuestMemory, Gup, GupFlags, Pinned, RegionOptions};
use guest_mm::paging::context::{
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_SMAP, EFER_LMA, EFER_LME, EFER_NXE,
};
use guest_mm::paging::{
    translate as walk, Access, AccessKind, CpuFeatures, PagingContext, Privilege,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::fuzz_blk::{backing_file, disk_image, Desc};
use crate::fuzz_input::Input;

/// RAM region 0.
const R0: (u64, u64) = (0, 0x8_0000);
/// RAM region 1, after a hole.
const R1: (u64, u64) = (0x10_0000, 0x2_0000);
/// The hole between them.
const HOLE: u64 = R0.1;
/// RAM region 2, at 1 GiB: the rings and the requests' buffers, out of
/// reach of the fuzzed translations (but for random 64-bit values), so
/// the disk's DMA does not rewrite the queues the harness drives.
const R2: (u64, u64) = (0x4000_0000, 0x1_0000);
/// Request queue rings.
const RQ: (u64, u64, u64) = (R2.0 + 0x1000, R2.0 + 0x1100, R2.0 + 0x1200);
/// Event queue rings.
const EQ: (u64, u64, u64) = (R2.0 + 0x2000, R2.0 + 0x2100, R2.0 + 0x2200);
/// The disk's rings (identity-mapped in its domain at the start).
const BQ: (u64, u64, u64) = (R2.0 + 0x7000, R2.0 + 0x7100, R2.0 + 0x7200);
/// Readable parts of requests.
const REQ_R: u64 = R2.0 + 0x3000;
/// Writable parts of requests (up to 0x2e00 bytes with the gaps).
const REQ_W: u64 = R2.0 + 0x8000;
const REQ_W_LEN: u64 = 0x2e00;
/// Event buffers, one per event queue descriptor.
const EVBUF: u64 = R2.0 + 0x6000;
const EV_STRIDE: u64 = 64;
/// Page-table pages.
const TABLES: u64 = 0x1_0000;
const TABLE_PAGES: u64 = 32;
/// Data frames.
const DATA: u64 = 0x3_0000;
/// Queue sizes.
const QSIZE: u16 = 16;
/// The endpoints.
const EPS: [u32; 3] = [0, 1, 2];
/// The disk's endpoint and the domain set up for its rings.
const BLK_EP: u32 = 2;
const BLK_DOMAIN: u32 = 3;
/// Most operations decoded.
const MAX_OPS: usize = 96;

/// Protocol numbers, from docs/guest-va-dma.md (not the device's constants:
/// the harness checks the device against the document).
mod doc {
    pub const ATTACH: u8 = 1;
    pub const DETACH: u8 = 2;
    pub const MAP: u8 = 3;
    pub const UNMAP: u8 = 4;
    pub const PROBE: u8 = 5;
    pub const ATTACH_TABLE: u8 = 6;
    pub const PAGE_RESP: u8 = 8;

    pub const OK: u8 = 0;
    pub const UNSUPP: u8 = 2;
    pub const INVAL: u8 = 4;
    pub const RANGE: u8 = 5;
    pub const NOENT: u8 = 6;

    pub const F_MAP_UNMAP: u32 = 2;
    pub const F_PROBE: u32 = 4;
    pub const F_ATTACH_TABLE: u32 = 8;
    pub const F_PAGE_REQUEST: u32 = 9;

    pub const DOMAIN_END: u32 = 1023;
    pub const PROBE_SIZE: usize = 512;
    pub const MAX_WRITABLE: usize = PROBE_SIZE + 4 + 4096;
    pub const MSI: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

    pub const TF_WP: u64 = 1;
    pub const TF_NXE: u64 = 2;
    pub const TF_SMAP: u64 = 4;
    pub const TF_PRIV: u64 = 8;
    pub const TF_PRI: u64 = 16;

    pub const EV_READ: u32 = 1;
    pub const EV_WRITE: u32 = 2;
    pub const EV_ADDRESS: u32 = 0x100;
    pub const EV_PAGE_REQUEST: u32 = 0x200;
    pub const EV_LAST: u32 = 0x400;
    pub const EV_PRIV: u32 = 0x800;
}

/// What a case exercised, for the corpus replay's histogram.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Named events ("ok MAP", "translate table", "blk parked", ...).
    pub tags: BTreeSet<String>,
    /// The case as decoded and what the device did.
    pub log: String,
}

/// Counts each tag over `outcomes`.
pub fn histogram(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        for t in &o.tags {
            *m.entry(t.clone()).or_default() += 1;
        }
    }
    m
}

fn in_ram(gpa: u64, len: u64) -> bool {
    let Some(end) = gpa.checked_add(len) else {
        return false;
    };
    [R0, R1, R2]
        .iter()
        .any(|&(a, l)| gpa >= a && end <= a + l && len <= l)
}

fn le(b: &[u8], at: usize, n: usize) -> u64 {
    (0..n).fold(0u64, |v, i| v | u64::from(b[at + i]) << (8 * i))
}

/// The paging context docs/guest-va-dma.md describes for a table attach.
fn doc_context(pgd: u64, width: u32, flags: u64, maxphyaddr: u8) -> PagingContext {
    let mut cr0 = CR0_PG | 1;
    if flags & doc::TF_WP != 0 {
        cr0 |= CR0_WP;
    }
    let mut cr4 = CR4_PAE;
    if width == 57 {
        cr4 |= CR4_LA57;
    }
    if flags & doc::TF_SMAP != 0 {
        cr4 |= CR4_SMAP;
    }
    let mut efer = EFER_LME | EFER_LMA;
    if flags & doc::TF_NXE != 0 {
        efer |= EFER_NXE;
    }
    PagingContext::new(cr0, pgd, cr4, efer)
        .with_maxphyaddr(maxphyaddr)
        .with_features(CpuFeatures {
            gbpages: true,
            pse36: true,
        })
}

#[derive(Clone, Copy, Debug)]
struct MapM {
    end: u64,
    phys: u64,
    flags: u32,
}

#[derive(Clone, Debug)]
enum Kind {
    Empty,
    Map(BTreeMap<u64, MapM>),
    Table { pgd: u64, width: u32, flags: u64 },
}

#[derive(Clone, Debug)]
struct Dom {
    kind: Kind,
    endpoints: u32,
}

/// The harness's model of the IOMMU, from the document.
struct Model {
    features: u64,
    maxphy: u8,
    domains: BTreeMap<u32, Dom>,
    attached: BTreeMap<u32, u32>,
    pri_stopped: BTreeSet<u32>,
    /// Page requests the harness sent: (endpoint, group) -> answer code.
    outstanding: BTreeMap<(u32, u16), Option<u16>>,
    /// The disk's endpoint, whose page requests the harness does not send.
    blk_ep: Option<u32>,
}

/// What the model expects of a request.
#[derive(Debug, PartialEq, Eq)]
enum Pred {
    /// No reply (used length 0).
    NoReply,
    /// Exactly this status.
    Exact(u8),
    /// OK, or (false) one of the type's documented failures.
    Ok(bool),
    /// OK or NOENT (a PAGE_RESP for the disk's endpoint, whose groups the
    /// harness does not track), or (false) a documented failure.
    OkOrNoent(bool),
}

/// What the model expects of one translation or pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Fault {
        address: u64,
        reason: FaultReason,
        requestable: bool,
        privileged: bool,
        code: Option<u32>,
    },
    /// Translated, but no RAM behind it (a pin error), or the range wraps.
    PinError,
}

impl Model {
    fn has(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    fn known(ep: u64) -> bool {
        EPS.iter().any(|&e| u64::from(e) == ep)
    }

    fn predict(&self, req: &[u8], writable: usize) -> Pred {
        if !(4..=doc::MAX_WRITABLE).contains(&writable) {
            return Pred::NoReply;
        }
        let kind = req.first().copied().unwrap_or(0);
        let need = match kind {
            doc::ATTACH | doc::DETACH => 20,
            doc::MAP => 36,
            doc::UNMAP | doc::PAGE_RESP => 28,
            doc::PROBE => 72,
            doc::ATTACH_TABLE => 44,
            _ => return Pred::Exact(doc::UNSUPP),
        };
        if req.len() < need {
            return Pred::Exact(doc::INVAL);
        }
        let r = |at, n| le(req, at, n);
        let zero = |a: usize, b: usize| req[a..b].iter().all(|&x| x == 0);
        let ok = match kind {
            doc::ATTACH => {
                Self::known(r(8, 4))
                    && r(4, 4) <= u64::from(doc::DOMAIN_END)
                    && r(12, 4) == 0
                    && zero(16, 20)
            }
            doc::DETACH => {
                Self::known(r(8, 4))
                    && self.attached.get(&(r(8, 4) as u32)).map(|&d| u64::from(d)) == Some(r(4, 4))
            }
            doc::MAP => {
                let (d, start, end, phys, flags) =
                    (r(4, 4) as u32, r(8, 8), r(16, 8), r(24, 8), r(32, 4));
                self.has(doc::F_MAP_UNMAP)
                    && flags & !3 == 0
                    && end >= start
                    && start & 0xfff == 0
                    && end & 0xfff == 0xfff
                    && phys & 0xfff == 0
                    && phys.checked_add(end - start).is_some()
                    && !(start <= doc::MSI.1 && end >= doc::MSI.0)
                    && match self.domains.get(&d).map(|x| &x.kind) {
                        Some(Kind::Empty) => true,
                        // No mapping overlaps [start, end].
                        Some(Kind::Map(m)) => m
                            .range(..=end)
                            .next_back()
                            .is_none_or(|(_, x)| x.end < start),
                        _ => false,
                    }
            }
            doc::UNMAP => {
                let (d, start, end) = (r(4, 4) as u32, r(8, 8), r(16, 8));
                self.has(doc::F_MAP_UNMAP)
                    && zero(24, 28)
                    && end >= start
                    && match self.domains.get(&d).map(|x| &x.kind) {
                        Some(Kind::Empty) => true,
                        // No mapping crosses either end.
                        Some(Kind::Map(m)) => !m.iter().any(|(&v, x)| {
                            (v < start && x.end >= start) || (v >= start && v <= end && x.end > end)
                        }),
                        _ => false,
                    }
            }
            doc::PROBE => {
                self.has(doc::F_PROBE) && Self::known(r(4, 4)) && writable >= doc::PROBE_SIZE + 4
            }
            doc::ATTACH_TABLE => {
                let (d, ep, flags, format, pasid, pgd, tf, width) = (
                    r(4, 4) as u32,
                    r(8, 4),
                    r(12, 4),
                    r(16, 2),
                    r(20, 4),
                    r(24, 8),
                    r(32, 8),
                    r(40, 4),
                );
                let root = pgd & !0xfff;
                self.has(doc::F_ATTACH_TABLE)
                    && Self::known(ep)
                    && d <= doc::DOMAIN_END
                    && flags == 0
                    && zero(18, 20)
                    && format == 4
                    && pasid == 0
                    && (width == 48 || width == 57)
                    && tf & !0x1f == 0
                    && (tf & doc::TF_PRI == 0 || self.has(doc::F_PAGE_REQUEST))
                    && (self.maxphy >= 64 || root >> self.maxphy == 0)
                    && in_ram(root, 1)
                    && !matches!(self.domains.get(&d).map(|x| &x.kind), Some(Kind::Map(m)) if !m.is_empty())
            }
            _ => {
                // PAGE_RESP.
                let (d, ep, flags, pasid, group, code) =
                    (r(4, 4), r(8, 4), r(12, 4), r(16, 4), r(20, 4), r(24, 2));
                let base = self.has(doc::F_PAGE_REQUEST)
                    && Self::known(ep)
                    && flags == 0
                    && pasid == 0
                    && zero(26, 28)
                    && code <= 2
                    && group <= 0xffff
                    && self.attached.get(&(ep as u32)).map(|&x| u64::from(x)) == Some(d);
                if self.blk_ep.is_some_and(|b| u64::from(b) == ep) {
                    return Pred::OkOrNoent(base);
                }
                base && self.outstanding.get(&(ep as u32, group as u16)) == Some(&None)
            }
        };
        Pred::Ok(ok)
    }

    /// Statuses the document allows for a failed request of `kind`.
    fn failures(kind: u8) -> &'static [u8] {
        use doc::*;
        match kind {
            ATTACH => &[NOENT, RANGE, INVAL],
            DETACH => &[NOENT, INVAL],
            MAP | UNMAP => &[UNSUPP, NOENT, INVAL, RANGE],
            PROBE => &[UNSUPP, NOENT, INVAL],
            ATTACH_TABLE => &[UNSUPP, NOENT, RANGE, INVAL],
            _ => &[UNSUPP, NOENT, INVAL],
        }
    }

    fn leave(&mut self, ep: u32) {
        if let Some(old) = self.attached.remove(&ep) {
            if let Some(d) = self.domains.get_mut(&old) {
                d.endpoints -= 1;
                if d.endpoints == 0 {
                    self.domains.remove(&old);
                }
            }
        }
    }

    fn join(&mut self, ep: u32, d: u32) {
        if self.attached.get(&ep) == Some(&d) {
            return;
        }
        self.leave(ep);
        self.domains
            .entry(d)
            .or_insert(Dom {
                kind: Kind::Empty,
                endpoints: 0,
            })
            .endpoints += 1;
        self.attached.insert(ep, d);
    }

    /// Applies a request that completed OK.
    fn apply(&mut self, req: &[u8]) {
        let r = |at, n| le(req, at, n);
        match req[0] {
            doc::ATTACH => self.join(r(8, 4) as u32, r(4, 4) as u32),
            doc::DETACH => self.leave(r(8, 4) as u32),
            doc::MAP => {
                let (d, start, end, phys, flags) =
                    (r(4, 4) as u32, r(8, 8), r(16, 8), r(24, 8), r(32, 4));
                if let Some(dom) = self.domains.get_mut(&d) {
                    if matches!(dom.kind, Kind::Empty) {
                        dom.kind = Kind::Map(BTreeMap::new());
                    }
                    if let Kind::Map(m) = &mut dom.kind {
                        m.insert(
                            start,
                            MapM {
                                end,
                                phys,
                                flags: flags as u32,
                            },
                        );
                    }
                }
            }
            doc::UNMAP => {
                let (d, start, end) = (r(4, 4) as u32, r(8, 8), r(16, 8));
                if let Some(Dom {
                    kind: Kind::Map(m), ..
                }) = self.domains.get_mut(&d)
                {
                    m.retain(|&v, _| !(v >= start && v <= end));
                }
            }
            doc::ATTACH_TABLE => {
                let (d, ep) = (r(4, 4) as u32, r(8, 4) as u32);
                self.join(ep, d);
                if let Some(dom) = self.domains.get_mut(&d) {
                    dom.kind = Kind::Table {
                        pgd: r(24, 8),
                        width: r(40, 4) as u32,
                        flags: r(32, 8),
                    };
                }
                let members: Vec<u32> = self
                    .attached
                    .iter()
                    .filter(|(_, &x)| x == d)
                    .map(|(&e, _)| e)
                    .collect();
                for e in members {
                    self.pri_stopped.remove(&e);
                }
            }
            doc::PAGE_RESP => {
                let (ep, group, code) = (r(8, 4) as u32, r(20, 4) as u16, r(24, 2) as u16);
                if let Some(slot) = self.outstanding.get_mut(&(ep, group)) {
                    *slot = Some(code);
                }
                if code == 2 {
                    self.pri_stopped.insert(ep);
                }
            }
            _ => {}
        }
    }

    /// How `ep` translates `at`: `Ok((gpa, bytes the same translation
    /// covers from at))`, or what must go wrong. `mem` is read for tables.
    fn route(
        &self,
        mem: &GuestMemory,
        ep: u32,
        at: u64,
        write: bool,
    ) -> Result<(u64, u64), Expect> {
        let fault = |reason| Expect::Fault {
            address: at,
            reason,
            requestable: false,
            privileged: false,
            code: None,
        };
        let Some(dom) = self.attached.get(&ep).and_then(|d| self.domains.get(d)) else {
            return Err(fault(FaultReason::Domain));
        };
        match &dom.kind {
            Kind::Empty => Err(fault(FaultReason::Mapping)),
            Kind::Map(m) => {
                let Some((&v, x)) = m.range(..=at).next_back().filter(|(_, x)| at <= x.end) else {
                    return Err(fault(FaultReason::Mapping));
                };
                if x.flags & if write { 2 } else { 1 } == 0 {
                    return Err(fault(FaultReason::Mapping));
                }
                Ok((x.phys.wrapping_add(at - v), (x.end - at).saturating_add(1)))
            }
            &Kind::Table { pgd, width, flags } => {
                let ctx = doc_context(pgd, width, flags, self.maxphy);
                let privileged = flags & doc::TF_PRIV != 0;
                let access = Access::new(
                    if write {
                        AccessKind::Write
                    } else {
                        AccessKind::Read
                    },
                    if privileged {
                        Privilege::Supervisor
                    } else {
                        Privilege::User
                    },
                );
                match walk(mem, &ctx, at, access) {
                    Ok(t) => Ok((t.gpa, 0x1000 - (at & 0xfff))),
                    Err(f) => Err(Expect::Fault {
                        address: f.address,
                        reason: FaultReason::Mapping,
                        requestable: flags & doc::TF_PRI != 0
                            && !self.pri_stopped.contains(&ep)
                            && f.is_page_fault(),
                        privileged,
                        code: f.error_code().map(|c| c.0),
                    }),
                }
            }
        }
    }

    /// The guest-physical pieces `ep` pins for `[iova, iova + len)`, or
    /// what stops it.
    fn pin(
        &self,
        mem: &GuestMemory,
        ep: u32,
        iova: u64,
        len: u64,
        write: bool,
    ) -> Result<Vec<(u64, u64)>, Expect> {
        let end = iova.checked_add(len).ok_or(Expect::PinError)?;
        let mut at = iova;
        let mut out = Vec::new();
        while at < end {
            let (gpa, n) = self.route(mem, ep, at, write)?;
            let n = n.min(end - at);
            if !in_ram(gpa, n) {
                return Err(Expect::PinError);
            }
            out.push((gpa, n));
            at += n;
        }
        Ok(merge(out))
    }
}

/// Joins guest-physically contiguous pieces.
fn merge(v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (g, n) in v {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == g => last.1 += n,
            _ => out.push((g, n)),
        }
    }
    out
}

fn check_error(got: &DmaError, want: &Expect, write: bool) -> Result<(), String> {
    match (got, want) {
        (DmaError::Pin(_), Expect::PinError) => Ok(()),
        (
            DmaError::Fault(f),
            &Expect::Fault {
                address,
                reason,
                requestable,
                privileged,
                code,
            },
        ) if f.address == address
            && f.reason == reason
            && f.requestable == requestable
            && f.privileged == privileged
            && f.error_code == code
            && f.write == write =>
        {
            Ok(())
        }
        _ => Err(format!("device {got:?}, model {want:?}")),
    }
}

/// A split virtqueue as the driver sees it.
struct Ring {
    at: (u64, u64, u64),
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    fn new(at: (u64, u64, u64)) -> Self {
        Ring {
            at,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn queue(&self, mem: &GuestMemory) -> Queue {
        let mut q = Queue::new(QSIZE).expect("queue");
        q.set_desc_table_address(Some(self.at.0 as u32), Some(0));
        q.set_avail_ring_address(Some(self.at.1 as u32), Some(0));
        q.set_used_ring_address(Some(self.at.2 as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(mem), "the rings are valid");
        q
    }

    fn put(&self, mem: &GuestMemory, i: u16, d: Desc) {
        mem.write_slice(&d.encode(), GuestAddress(self.at.0 + 16 * u64::from(i)))
            .expect("descriptor");
    }

    fn publish(&mut self, mem: &GuestMemory, head: u16) {
        let slot = self.avail_idx % QSIZE;
        mem.write_obj(
            head.to_le(),
            GuestAddress(self.at.1 + 4 + 2 * u64::from(slot)),
        )
        .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.at.1 + 2))
            .expect("avail idx");
    }

    fn pop_used(&mut self, mem: &GuestMemory) -> Option<(u32, u32)> {
        let idx: u16 = u16::from_le(mem.read_obj(GuestAddress(self.at.2 + 2)).expect("used idx"));
        if idx == self.used_seen {
            return None;
        }
        let at = self.at.2 + 4 + 8 * u64::from(self.used_seen % QSIZE);
        self.used_seen = self.used_seen.wrapping_add(1);
        let id: u32 = u32::from_le(mem.read_obj(GuestAddress(at)).expect("used id"));
        let len: u32 = u32::from_le(mem.read_obj(GuestAddress(at + 4)).expect("used len"));
        Some((id, len))
    }
}

/// An event record the harness expects on the event queue.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    bytes: [u8; 24],
    page_request: bool,
}

/// The encoding docs/guest-va-dma.md gives a record.
fn doc_record(ep: u32, f: &DmaFault, group: Option<u16>) -> [u8; 24] {
    let mut r = [0u8; 24];
    r[0] = match f.reason {
        FaultReason::Domain => 1,
        FaultReason::Mapping => 2,
    };
    let mut flags = doc::EV_ADDRESS | if f.write { doc::EV_WRITE } else { doc::EV_READ };
    let mut address = f.address;
    if let Some(g) = group {
        r[2..4].copy_from_slice(&g.to_le_bytes());
        flags |= doc::EV_PAGE_REQUEST | doc::EV_LAST;
        if f.privileged {
            flags |= doc::EV_PRIV;
        }
        address &= !0xfff;
    }
    r[4..8].copy_from_slice(&flags.to_le_bytes());
    r[8..12].copy_from_slice(&ep.to_le_bytes());
    r[16..24].copy_from_slice(&address.to_le_bytes());
    r
}

/// A disk chain in flight.
struct Chain {
    writable: u64,
    /// The harness's generation when it was submitted.
    gen: u64,
    /// Where the status byte lands (at submission), if it translates to RAM.
    status: Option<u64>,
    /// Used length of an OK completion; `None` for a chain the device
    /// cannot take apart (used length 0).
    ok_len: Option<u32>,
}

/// The disk behind endpoint 2.
struct Disk {
    _block: Block,
    bq: BlockQueue,
    ring: Ring,
    inflight: BTreeMap<u16, Chain>,
    /// The device found its ring corrupt (DMA rewrote it): no more chains.
    broken: bool,
}

struct Harness<'a> {
    inp: Input<'a>,
    log: String,
    tags: BTreeSet<String>,
    gup: Arc<Gup>,
    mem: GuestMemory,
    handle: IommuHandle,
    queues: IommuQueues,
    model: Model,
    rq: Ring,
    eq: Ring,
    /// Event queue descriptors the device holds.
    ev_posted: [bool; QSIZE as usize],
    ev_lens: [u32; QSIZE as usize],
    /// Records of the harness's endpoints not yet read, in order.
    expected: VecDeque<Rec>,
    /// Fault reports of the harness's endpoints never delivered.
    skipped_reports: u64,
    delivered: u64,
    /// Page-request groups of the disk's endpoint seen on the event queue.
    blk_groups: Vec<u16>,
    held: Vec<Pinned>,
    /// Bumped by every change to a translation (requests that succeed,
    /// table writes).
    gen: u64,
    /// Pins the disk's rings hold.
    baseline: i64,
    disk: Option<Disk>,
    /// Requests run and those not OK (or unanswered).
    requests: u64,
    failed: u64,
    page_requests: u64,
    fault_reports: u64,
}

macro_rules! fail {
    ($h:expr, $($t:tt)*) => {
        panic!("virtio_iommu fuzz: {}\n{}", format!($($t)*), $h.log)
    };
}

impl Harness<'_> {
    fn tag(&mut self, t: impl Into<String>) {
        self.tags.insert(t.into());
    }

    fn domain(&mut self) -> u32 {
        let d = self.inp.u8();
        match d {
            0..=0xef => u32::from(d % 4),
            0xf0..=0xf7 => doc::DOMAIN_END,
            0xf8..=0xfb => doc::DOMAIN_END + 1,
            _ => self.inp.u32(),
        }
    }

    fn endpoint(&mut self) -> u32 {
        let e = self.inp.u8();
        match e % 4 {
            3 if e & 0x80 != 0 => self.inp.u32(),
            3 => 3,
            n => u32::from(n),
        }
    }

    /// An I/O virtual address: built from small page-table indices (so
    /// fuzzed table entries line up), linear, random, or near 2^64.
    fn iova(&mut self) -> u64 {
        let sel = self.inp.u8();
        match sel % 4 {
            0 | 1 => {
                let (x, y, z) = (self.inp.u8(), self.inp.u8(), self.inp.u8());
                let i4 = u64::from(x & 3) | if x & 4 != 0 { 256 } else { 0 };
                let i3 = u64::from((x >> 3) & 3);
                let i2 = u64::from((x >> 5) & 3);
                let i1 = u64::from(y & 7);
                let off = if y & 0x10 != 0 {
                    0xfff - u64::from(z)
                } else {
                    u64::from(z) << 4
                };
                let i5: u64 = [0, 1, 2, 511][usize::from(y >> 6)];
                let v = i5 << 48 | i4 << 39 | i3 << 30 | i2 << 21 | i1 << 12 | off;
                let bit = if y & 0x20 != 0 { 56 } else { 47 };
                if v >> bit & 1 != 0 {
                    v | !((1u64 << bit) - 1)
                } else {
                    v
                }
            }
            2 => u64::from(self.inp.u16()) << 12 | u64::from(sel >> 2) << 4,
            _ => {
                if sel & 4 != 0 {
                    u64::MAX - u64::from(self.inp.u16())
                } else {
                    self.inp.u64()
                }
            }
        }
    }

    fn len(&mut self) -> u64 {
        let l = self.inp.u8();
        match l % 8 {
            0 => 1,
            1 => 16,
            2 => 512,
            3 => 4096,
            4 => 0x2001,
            5 => u64::from(self.inp.u16()),
            6 => 0,
            _ => self.inp.u64(),
        }
    }

    fn writable(&mut self, probe: bool) -> usize {
        let w = self.inp.u8();
        match w % 8 {
            0..=4 if probe => doc::PROBE_SIZE + 4,
            0..=4 => 4,
            5 => doc::PROBE_SIZE + 4 + usize::from(w >> 3),
            6 => usize::from(w >> 3) % 8,
            _ => usize::from(self.inp.u16()),
        }
    }

    /// Flips a byte of `req` now and then (reserved fields, lengths).
    fn noise(&mut self, mut req: Vec<u8>) -> Vec<u8> {
        let n = self.inp.u8();
        if n & 0xe0 == 0xe0 && !req.is_empty() {
            let pos = usize::from(self.inp.u8()) % req.len();
            req[pos] = self.inp.u8();
        }
        if n & 0xe0 == 0xc0 {
            req.truncate(usize::from(n & 0x1f) + 4);
        }
        req
    }

    fn structured(&mut self, kind: u8) -> Vec<u8> {
        let put = |v: &mut Vec<u8>, at: usize, x: u64, n: usize| {
            v[at..at + n].copy_from_slice(&x.to_le_bytes()[..n]);
        };
        let mut v;
        match kind {
            doc::ATTACH | doc::DETACH => {
                v = vec![0u8; 20];
                let (d, e) = (self.domain(), self.endpoint());
                put(&mut v, 4, d.into(), 4);
                put(&mut v, 8, e.into(), 4);
            }
            doc::MAP => {
                v = vec![0u8; 36];
                let d = self.domain();
                let s = self.inp.u8();
                let mut start = self.iova() & !0xfff;
                if s & 0x80 != 0 && s % 8 != 7 {
                    start |= 0x800;
                }
                let size = match s % 8 {
                    0..=4 => (u64::from(s >> 3 & 0xf) + 1) << 12,
                    5 => 2 << 20,
                    6 => 1 << 30,
                    _ => self.inp.u64(),
                };
                let end = start.wrapping_add(size).wrapping_sub(1);
                let p = self.inp.u8();
                let phys = match p % 4 {
                    0 | 1 => DATA + (u64::from(p >> 2) << 12),
                    2 => {
                        if p & 4 != 0 {
                            HOLE + (u64::from(p >> 3) << 12)
                        } else {
                            R1.0 + (u64::from(p >> 3) << 12)
                        }
                    }
                    _ => self.inp.u64(),
                };
                let f = self.inp.u8();
                let flags = if f & 0x80 != 0 {
                    self.inp.u32()
                } else {
                    u32::from(f % 8)
                };
                put(&mut v, 4, d.into(), 4);
                put(&mut v, 8, start, 8);
                put(&mut v, 16, end, 8);
                put(&mut v, 24, phys, 8);
                put(&mut v, 32, flags.into(), 4);
            }
            doc::UNMAP => {
                v = vec![0u8; 28];
                let d = self.domain();
                let start = self.iova() & !0xfff;
                let s = self.inp.u8();
                let end = match s % 4 {
                    0 => u64::MAX,
                    3 => self.inp.u64(),
                    _ => start.wrapping_add(u64::from(s >> 2) << 12 | 0xfff),
                };
                put(&mut v, 4, d.into(), 4);
                put(&mut v, 8, start, 8);
                put(&mut v, 16, end, 8);
            }
            doc::PROBE => {
                v = vec![0u8; 72];
                let e = self.endpoint();
                put(&mut v, 4, e.into(), 4);
            }
            doc::ATTACH_TABLE => {
                v = vec![0u8; 44];
                let (d, e) = (self.domain(), self.endpoint());
                let g = self.inp.u8();
                let pgd = match g {
                    0xff => self.inp.u64(),
                    0xfe => HOLE,
                    _ => (TABLES + (u64::from(g % 32) << 12)) | (u64::from(g >> 5 & 3) << 3),
                };
                let t = self.inp.u8();
                let tf = if t & 0x80 != 0 {
                    self.inp.u64()
                } else {
                    u64::from(t & 0x1f)
                };
                let m = self.inp.u8();
                let width: u32 = match m % 8 {
                    0..=4 => 48,
                    5 | 6 => 57,
                    _ => self.inp.u32(),
                };
                let format: u16 = if m & 0x80 != 0 {
                    u16::from(m >> 3 & 7)
                } else {
                    4
                };
                put(&mut v, 4, d.into(), 4);
                put(&mut v, 8, e.into(), 4);
                put(&mut v, 16, format.into(), 2);
                put(&mut v, 24, pgd, 8);
                put(&mut v, 32, tf, 8);
                put(&mut v, 40, width.into(), 4);
            }
            _ => {
                v = vec![0u8; 28];
                let (d, e) = (self.domain(), self.endpoint());
                let g = self.inp.u8();
                let group = match g >> 6 {
                    0 => u32::from(g & 0x3f),
                    1 => self
                        .blk_groups
                        .iter()
                        .rev()
                        .nth(usize::from(g & 0x3f) % self.blk_groups.len().max(1))
                        .copied()
                        .map_or(0, u32::from),
                    2 => {
                        let mine: Vec<u16> = self
                            .model
                            .outstanding
                            .keys()
                            .filter(|k| k.0 == e)
                            .map(|k| k.1)
                            .collect();
                        mine.get(usize::from(g & 0x3f) % mine.len().max(1))
                            .copied()
                            .map_or(0, u32::from)
                    }
                    _ => self.inp.u32(),
                };
                let c = self.inp.u8();
                let code = if c & 0x80 != 0 {
                    u16::from(c)
                } else {
                    u16::from(c % 3)
                };
                put(&mut v, 4, d.into(), 4);
                put(&mut v, 8, e.into(), 4);
                put(&mut v, 20, group.into(), 4);
                put(&mut v, 24, code.into(), 2);
            }
        }
        v[0] = kind;
        self.noise(v)
    }

    /// Runs a request directly or through the request queue and checks it.
    fn request(&mut self, req: Vec<u8>, writable: usize) {
        let pred = self.model.predict(&req, writable);
        let via_queue = self.inp.u8();
        let reply =
            if via_queue & 1 != 0 && (writable as u64) < REQ_W_LEN - 0x100 && req.len() < 0x800 {
                self.tag("via queue");
                self.through_queue(&req, writable, via_queue)
            } else {
                self.handle
                    .execute(self.model.features, &self.mem, &req, writable)
            };
        self.requests += 1;
        let kind = req.first().copied().unwrap_or(0);
        let _ = writeln!(
            self.log,
            "request {:02x?} writable {writable}: predicted {pred:?}, reply {} bytes, status {:?}",
            req,
            reply.len(),
            reply.len().checked_sub(4).map(|i| reply[i])
        );
        if pred == Pred::NoReply {
            if !reply.is_empty() {
                fail!(self, "a reply of {} bytes where none is due", reply.len());
            }
            self.failed += 1;
            return;
        }
        if reply.len() != writable {
            fail!(
                self,
                "reply of {} bytes for a writable part of {writable}",
                reply.len()
            );
        }
        let tail = &reply[writable - 4..];
        let st = tail[0];
        if tail[1..] != [0, 0, 0] {
            fail!(self, "tail reserved bytes {tail:?}");
        }
        let ok = match pred {
            Pred::NoReply => unreachable!("handled above"),
            Pred::Exact(s) => {
                if st != s {
                    fail!(self, "status {st}, document says {s}");
                }
                false
            }
            Pred::Ok(true) => {
                if st != doc::OK {
                    fail!(self, "status {st} for a request the model accepts");
                }
                true
            }
            Pred::OkOrNoent(true) => {
                if st != doc::OK && st != doc::NOENT {
                    fail!(self, "status {st}: OK or NOENT expected");
                }
                st == doc::OK
            }
            Pred::Ok(false) | Pred::OkOrNoent(false) => {
                if !Model::failures(kind).contains(&st) {
                    fail!(
                        self,
                        "status {st}: the model refuses it, with {:?}",
                        Model::failures(kind)
                    );
                }
                false
            }
        };
        if ok {
            self.tag(format!("ok {kind}"));
            self.gen += 1;
            self.model.apply(&req);
        } else {
            if matches!(kind, 1..=6 | 8) {
                self.tag(format!("status {st} type {kind}"));
            } else {
                self.tag(format!("status {st} unknown type"));
            }
            self.failed += 1;
        }
        // Properties: PROBE's that succeeded; zero otherwise.
        let body = &reply[..writable - 4];
        if ok && kind == doc::PROBE {
            let mut want = vec![1u8, 0, 20, 0, 1, 0, 0, 0];
            want.extend_from_slice(&doc::MSI.0.to_le_bytes());
            want.extend_from_slice(&doc::MSI.1.to_le_bytes());
            if self.model.has(doc::F_ATTACH_TABLE) {
                let tf: u32 = if self.model.has(doc::F_PAGE_REQUEST) {
                    0x1f
                } else {
                    0xf
                };
                want.extend_from_slice(&[6, 0, 8, 0, 4, 0, 3, 0]);
                want.extend_from_slice(&tf.to_le_bytes());
            }
            if body.len() < want.len()
                || body[..want.len()] != want[..]
                || body[want.len()..].iter().any(|&b| b != 0)
            {
                fail!(
                    self,
                    "PROBE properties {:02x?}",
                    &body[..body.len().min(64)]
                );
            }
        } else if body.iter().any(|&b| b != 0) {
            fail!(self, "bytes before the tail of a non-PROBE reply");
        }
    }

    /// Puts the request on the request queue (readable part split into up
    /// to four descriptors, writable part likewise), lets the device take
    /// it, returns what it wrote (used length bytes).
    fn through_queue(&mut self, req: &[u8], writable: usize, sel: u8) -> Vec<u8> {
        let split = |h: &mut Self, total: usize, n: u8| -> Vec<usize> {
            let mut cuts: Vec<usize> = (0..n)
                .map(|_| usize::from(h.inp.u8()) * total / 256)
                .collect();
            cuts.push(0);
            cuts.push(total);
            cuts.sort_unstable();
            cuts.windows(2).map(|w| w[1] - w[0]).collect()
        };
        let rs = split(self, req.len(), sel >> 1 & 3);
        let ws = split(self, writable, sel >> 3 & 3);
        let mut descs = Vec::new();
        let mut at = REQ_R;
        let mut off = 0;
        for n in rs {
            self.mem
                .write_slice(&req[off..off + n], GuestAddress(at))
                .expect("request bytes");
            descs.push((at, n as u32, 0u16));
            off += n;
            at += n as u64 + 8;
        }
        let mut wsegs = Vec::new();
        let mut at = REQ_W;
        for n in ws {
            // Stale bytes, so what the device writes shows.
            self.mem
                .write_slice(&vec![0xa5; n], GuestAddress(at))
                .expect("writable bytes");
            descs.push((at, n as u32, 2));
            wsegs.push((at, n));
            at += n as u64 + 8;
        }
        let count = descs.len() as u16;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = i as u16;
            let next = if i + 1 < count { 1 } else { 0 };
            self.rq.put(
                &self.mem,
                i,
                Desc {
                    addr,
                    len,
                    flags: flags | next,
                    next: i + 1,
                },
            );
        }
        self.rq.publish(&self.mem, 0);
        let n = self.queues.process_requests();
        if n != 1 {
            fail!(self, "process_requests took {n} chains, 1 expected");
        }
        let Some((id, used)) = self.rq.pop_used(&self.mem) else {
            fail!(self, "no used entry for the request");
        };
        if id != 0 || self.rq.pop_used(&self.mem).is_some() {
            fail!(self, "used entry {id}");
        }
        let mut out = Vec::new();
        for (addr, n) in wsegs {
            let take = n.min(used as usize - out.len());
            let mut b = vec![0u8; take];
            self.mem
                .read_slice(&mut b, GuestAddress(addr))
                .expect("reply");
            out.extend(b);
        }
        if out.len() != used as usize {
            fail!(self, "used length {used} beyond the writable part");
        }
        out
    }

    /// Writes page-table entries into a table page.
    fn write_entries(&mut self) {
        let page = TABLES + ((u64::from(self.inp.u8()) % TABLE_PAGES) << 12);
        let n = self.inp.u8() % 8 + 1;
        for _ in 0..n {
            let s = self.inp.u8();
            let slot = if s & 0xf0 == 0xf0 {
                511
            } else {
                u64::from(s & 7) | if s & 8 != 0 { 256 } else { 0 }
            };
            let t = self.inp.u8();
            let low = u64::from(self.inp.u8());
            let hi = self.inp.u8();
            let entry = match t % 4 {
                0 => (TABLES + ((u64::from(t >> 2) % TABLE_PAGES) << 12)) | low,
                1 => (DATA + (u64::from(t >> 2) << 12)) | low,
                2 => (u64::from(t >> 2 & 3) << 21) | low,
                _ => self.inp.u64(),
            };
            let mut e = entry;
            if t % 4 != 3 {
                for (bit, at) in [(1, 63), (2, 51), (4, 52), (8, 12), (16, 8), (32, 13)] {
                    if hi & bit != 0 {
                        e |= 1 << at;
                    }
                }
            }
            self.mem
                .write_obj(e.to_le(), GuestAddress(page + 8 * slot))
                .expect("table entry");
        }
    }

    fn check_translate(&mut self) {
        let ep = EPS[usize::from(self.inp.u8()) % 3];
        let iova = self.iova();
        let write = self.inp.u8() & 1 != 0;
        let want = self.model.route(&self.mem, ep, iova, write);
        let ep_h = self.ep(ep);
        let got = ep_h.translate(&self.gup, iova, write);
        let _ = writeln!(
            self.log,
            "translate ep {ep} {iova:#x} write {write}: device {got:?}, model {want:?}"
        );
        match (&got, &want) {
            (Ok(g), Ok((w, _))) if g == w => {
                let t = if self.is_table(ep) { "table" } else { "map" };
                self.tag(format!("translate ok {t}"));
            }
            (Err(e), Err(x)) => {
                if let Err(why) = check_error(e, x, write) {
                    fail!(self, "translate: {why}");
                }
                self.tag(format!(
                    "translate {}",
                    if matches!(x, Expect::PinError) {
                        "pin error"
                    } else {
                        "fault"
                    }
                ));
            }
            // A table translation to a frame outside RAM: the walker
            // translates (as the CPU does), the device cannot pin it.
            (Err(DmaError::Pin(_)), Ok((w, _))) if self.is_table(ep) && !in_ram(*w, 1) => {
                self.tag("translate no ram")
            }
            _ => fail!(self, "translate: device {got:?}, model {want:?}"),
        }
    }

    fn is_table(&self, ep: u32) -> bool {
        matches!(
            self.model
                .attached
                .get(&ep)
                .and_then(|d| self.model.domains.get(d))
                .map(|d| &d.kind),
            Some(Kind::Table { .. })
        )
    }

    fn ep(&self, id: u32) -> Endpoint {
        match self.handle.endpoint(id) {
            Some(e) => e,
            None => fail!(self, "no endpoint {id}"),
        }
    }

    fn check_pin(&mut self) {
        let ep = EPS[usize::from(self.inp.u8()) % 3];
        let iova = self.iova();
        let len = self.len();
        let f = self.inp.u8();
        let write = f & 1 != 0;
        let want = self.model.pin(&self.mem, ep, iova, len, write);
        let mut pins = Vec::new();
        let got = self
            .ep(ep)
            .pin(&self.gup, iova, len, write, GupFlags::NONE, None, &mut pins);
        let pieces = merge(
            pins.iter()
                .flat_map(|p| p.extents())
                .map(|e| (e.gpa, e.len))
                .collect(),
        );
        let _ = writeln!(
            self.log,
            "pin ep {ep} [{iova:#x}, +{len:#x}) write {write}: device {got:?} {pieces:x?}, model {want:x?}"
        );
        match (&got, &want) {
            (Ok(()), Ok(w)) if *w == pieces => {
                let t = if self.is_table(ep) { "table" } else { "map" };
                self.tag(format!("pin ok {t}"));
            }
            (Err(e), Err(x)) => {
                if let Err(why) = check_error(e, x, write) {
                    fail!(self, "pin: {why}");
                }
                self.tag("pin refused");
            }
            _ => fail!(self, "pin: device {got:?} {pieces:x?}, model {want:x?}"),
        }
        if f & 2 != 0 {
            self.held.extend(pins);
        }
    }

    /// Page requests and fault reports queued by a harness endpoint.
    fn queue_event(&mut self) {
        let mine: Vec<u32> = EPS
            .iter()
            .copied()
            .filter(|&e| Some(e) != self.model.blk_ep)
            .collect();
        let ep = mine[usize::from(self.inp.u8()) % mine.len()];
        let f = self.inp.u8();
        let fault = DmaFault {
            address: self.iova(),
            write: f & 1 != 0,
            reason: if f & 2 != 0 {
                FaultReason::Domain
            } else {
                FaultReason::Mapping
            },
            privileged: f & 4 != 0,
            requestable: true,
            error_code: None,
        };
        let h = self.ep(ep);
        if f & 8 != 0 {
            let group = h.page_request(&fault);
            self.page_requests += 1;
            if self.model.outstanding.contains_key(&(ep, group)) {
                fail!(
                    self,
                    "group {group} of endpoint {ep} is already outstanding"
                );
            }
            self.model.outstanding.insert((ep, group), None);
            self.expected.push_back(Rec {
                bytes: doc_record(ep, &fault, Some(group)),
                page_request: true,
            });
            self.tag("page request");
        } else {
            h.report_fault(&fault);
            self.fault_reports += 1;
            self.expected.push_back(Rec {
                bytes: doc_record(ep, &fault, None),
                page_request: false,
            });
            self.tag("fault report");
        }
    }

    /// Takes or abandons the answer of a harness page request.
    fn take_answer(&mut self) {
        let keys: Vec<(u32, u16)> = self.model.outstanding.keys().copied().collect();
        let s = self.inp.u8();
        let (ep, group) = match keys.get(usize::from(s >> 1) % keys.len().max(1)) {
            Some(&k) if s & 0x80 == 0 => k,
            _ => (EPS[usize::from(s) % 3], self.inp.u16()),
        };
        if Some(ep) == self.model.blk_ep {
            return;
        }
        let h = self.ep(ep);
        if s & 1 != 0 {
            h.abandon(group);
            self.model.outstanding.remove(&(ep, group));
            return;
        }
        let got = h.response(group);
        let want = match self.model.outstanding.get(&(ep, group)) {
            Some(Some(c)) => Response::from_code(*c),
            _ => None,
        };
        if got != want {
            fail!(
                self,
                "answer of group {group} endpoint {ep}: {got:?}, PAGE_RESP gave {want:?}"
            );
        }
        if got.is_some() {
            self.model.outstanding.remove(&(ep, group));
            self.tag("answer taken");
        }
    }

    fn post_event_buffers(&mut self) {
        let n = self.inp.u8();
        for _ in 0..n % 8 {
            let Some(slot) = self.ev_posted.iter().position(|&p| !p) else {
                break;
            };
            let l = self.inp.u8();
            let len: u32 = match l % 8 {
                0..=3 => 24,
                4 => 64,
                5 => 23,
                6 => 0,
                _ => 4,
            };
            let flags = if l & 0x80 != 0 { 0 } else { 2 };
            self.post_one(slot, len, flags);
        }
    }

    fn post_one(&mut self, slot: usize, len: u32, flags: u16) {
        let addr = EVBUF + slot as u64 * EV_STRIDE;
        self.mem
            .write_slice(&[0xa5; EV_STRIDE as usize], GuestAddress(addr))
            .expect("event buffer");
        self.eq.put(
            &self.mem,
            slot as u16,
            Desc {
                addr,
                len,
                flags,
                next: 0,
            },
        );
        self.ev_posted[slot] = true;
        self.ev_lens[slot] = if flags & 2 != 0 { len } else { 0 };
        self.eq.publish(&self.mem, slot as u16);
    }

    /// Flushes the event queue and checks what arrived; returns how many
    /// records the device wrote.
    fn flush(&mut self) -> usize {
        let n = self.queues.flush_events();
        let mut written = 0;
        while let Some((id, len)) = self.eq.pop_used(&self.mem) {
            let slot = id as usize;
            if slot >= QSIZE as usize || !self.ev_posted[slot] {
                fail!(
                    self,
                    "event used entry {id} for a buffer the device does not hold"
                );
            }
            self.ev_posted[slot] = false;
            if len == 0 {
                if self.ev_lens[slot] >= 24 {
                    fail!(
                        self,
                        "a {}-byte event buffer returned empty",
                        self.ev_lens[slot]
                    );
                }
                continue;
            }
            if len != 24 || self.ev_lens[slot] < 24 {
                fail!(
                    self,
                    "event record of {len} bytes in a {}-byte buffer",
                    self.ev_lens[slot]
                );
            }
            written += 1;
            let mut r = [0u8; 24];
            self.mem
                .read_slice(&mut r, GuestAddress(EVBUF + slot as u64 * EV_STRIDE))
                .expect("record");
            self.record(r);
        }
        if written != n {
            fail!(
                self,
                "flush_events said {n}, {written} records in the used ring"
            );
        }
        self.delivered += n as u64;
        n
    }

    fn record(&mut self, r: [u8; 24]) {
        let _ = writeln!(self.log, "record {r:02x?}");
        let flags = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
        let ep = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
        let pr = flags & doc::EV_PAGE_REQUEST != 0;
        let rw = flags & (doc::EV_READ | doc::EV_WRITE);
        let known = doc::EV_READ
            | doc::EV_WRITE
            | doc::EV_ADDRESS
            | doc::EV_PAGE_REQUEST
            | doc::EV_LAST
            | doc::EV_PRIV;
        if !(1..=2).contains(&r[0])
            || r[1] != 0
            || flags & !known != 0
            || !(rw == doc::EV_READ || rw == doc::EV_WRITE)
            || flags & doc::EV_ADDRESS == 0
            || r[12..16] != [0; 4]
            || !EPS.contains(&ep)
            || (pr && (flags & doc::EV_LAST == 0 || r[16] != 0 || r[17] & 0xf != 0))
            || (!pr && (flags & (doc::EV_LAST | doc::EV_PRIV) != 0 || r[2..4] != [0, 0]))
        {
            fail!(self, "malformed event record {r:02x?}");
        }
        if Some(ep) == self.model.blk_ep {
            if pr {
                self.blk_groups.push(u16::from_le_bytes([r[2], r[3]]));
                self.tag("blk page request");
            } else {
                self.tag("blk fault report");
            }
            return;
        }
        // The harness's own: in order; fault reports may have been dropped.
        loop {
            let Some(want) = self.expected.pop_front() else {
                fail!(self, "record {r:02x?} never queued");
            };
            if want.bytes == r {
                break;
            }
            if want.page_request {
                fail!(
                    self,
                    "record {r:02x?} where page request {:02x?} was due",
                    want.bytes
                );
            }
            self.skipped_reports += 1;
        }
    }

    /// Sets up the disk behind endpoint 2: its domain maps the rings'
    /// page onto itself.
    fn setup_disk(&mut self, timeout_zero: bool) {
        let attach = {
            let mut v = vec![0u8; 20];
            v[0] = doc::ATTACH;
            v[4..8].copy_from_slice(&BLK_DOMAIN.to_le_bytes());
            v[8..12].copy_from_slice(&BLK_EP.to_le_bytes());
            v
        };
        let map = {
            let mut v = vec![0u8; 36];
            v[0] = doc::MAP;
            v[4..8].copy_from_slice(&BLK_DOMAIN.to_le_bytes());
            v[8..16].copy_from_slice(&BQ.0.to_le_bytes());
            v[16..24].copy_from_slice(&(BQ.0 | 0xfff).to_le_bytes());
            v[24..32].copy_from_slice(&BQ.0.to_le_bytes());
            v[32..36].copy_from_slice(&3u32.to_le_bytes());
            v
        };
        for req in [attach, map] {
            let r = self.handle.execute(
                self.model.features | 1 << doc::F_MAP_UNMAP,
                &self.mem,
                &req,
                4,
            );
            if r != [0, 0, 0, 0] {
                fail!(self, "disk setup request {req:02x?}: {r:?}");
            }
            self.requests += 1;
            let f = self.model.features;
            self.model.features |= 1 << doc::F_MAP_UNMAP;
            self.model.apply(&req);
            self.model.features = f;
        }
        let path = backing_file();
        std::fs::write(&path, disk_image()).expect("backing file");
        let block = Block::new(&BlockConfig {
            disk: DiskOptions {
                path,
                read_only: false,
                direct: false,
            },
            id: "fuzz-iommu".into(),
            index: 0,
            poll: Duration::ZERO,
            endpoint: Some(self.ep(BLK_EP)),
            page_request_timeout: if timeout_zero {
                Duration::ZERO
            } else {
                Duration::from_secs(3600)
            },
        })
        .expect("block device");
        let ring = Ring::new(BQ);
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let features = block.features()
            & ((1u64 << F_VERSION_1)
                | (1 << F_ACCESS_PLATFORM)
                | (1 << devices::virtio::blk::features::FLUSH));
        let bq = match block.queue_for(Activation {
            features,
            queues: vec![ring.queue(&self.mem)],
            notifiers: Vec::new(),
            interrupt: Arc::new(Interrupt::new(irq)),
            mem: self.mem.clone(),
            gup: Arc::clone(&self.gup),
        }) {
            Ok(q) => q,
            Err(e) => fail!(self, "disk behind the IOMMU: {}", e.0),
        };
        self.baseline = self.gup.stats().pins_outstanding;
        self.model.blk_ep = Some(BLK_EP);
        self.disk = Some(Disk {
            _block: block,
            bq,
            ring,
            inflight: BTreeMap::new(),
            broken: false,
        });
        self.tag("disk");
    }

    fn blk_submit(&mut self) {
        let k = self.inp.u8();
        let (hiova, diova, siova) = (self.iova(), self.iova(), self.iova());
        let len = match k >> 2 & 3 {
            0 => 512,
            1 => 1024,
            2 => 4096,
            _ => 20,
        };
        let sector = u64::from(self.inp.u8());
        let Some(disk) = self.disk.as_ref().filter(|d| !d.broken) else {
            return;
        };
        let Some(head) = [0u16, 3, 6, 9, 12]
            .into_iter()
            .find(|h| !disk.inflight.contains_key(h))
        else {
            return self.blk_process();
        };
        let (kind, data_writable): (u32, Option<bool>) = match k % 4 {
            0 => (0, Some(true)),
            1 => (1, Some(false)),
            2 => (4, None),
            _ => (8, Some(true)),
        };
        // The header where the model says its iova lands now.
        if let Ok((gpa, n)) = self.model.route(&self.mem, BLK_EP, hiova, false) {
            let mut hdr = [0u8; 16];
            hdr[0..4].copy_from_slice(&kind.to_le_bytes());
            hdr[8..16].copy_from_slice(&sector.to_le_bytes());
            let n = n.min(16) as usize;
            if in_ram(gpa, n as u64) {
                self.mem
                    .write_slice(&hdr[..n], GuestAddress(gpa))
                    .expect("header");
            }
        }
        let mut descs = vec![(hiova, 16u32, 0u16)];
        let mut writable = 1u64;
        if let Some(w) = data_writable {
            descs.push((diova, len, if w { 2 } else { 0 }));
            if w {
                writable += u64::from(len);
            }
        }
        descs.push((siova, 1, 2));
        let status = match self.model.route(&self.mem, BLK_EP, siova, true) {
            Ok((g, _)) if in_ram(g, 1) => Some(g),
            _ => None,
        };
        let ok_len = descs
            .iter()
            .all(|d| d.0.checked_add(u64::from(d.1)).is_some())
            .then_some(match kind {
                0 => len + 1,
                8 => len.min(20) + 1,
                _ => 1,
            });
        let Some(disk) = self.disk.as_mut() else {
            return;
        };
        let count = descs.len() as u16;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = i as u16;
            disk.ring.put(
                &self.mem,
                head + i,
                Desc {
                    addr,
                    len,
                    flags: flags | if i + 1 < count { 1 } else { 0 },
                    next: head + i + 1,
                },
            );
        }
        disk.ring.publish(&self.mem, head);
        disk.inflight.insert(
            head,
            Chain {
                writable,
                gen: self.gen,
                status,
                ok_len,
            },
        );
        let _ = writeln!(
            self.log,
            "blk chain {head}: type {kind} header {hiova:#x} data {diova:#x}+{len:#x} status {siova:#x}"
        );
        self.blk_process();
    }

    fn blk_process(&mut self) {
        let Some(disk) = self.disk.as_mut().filter(|d| !d.broken) else {
            return;
        };
        disk.bq.process();
        if disk.bq.is_broken() {
            // Only when a chain's DMA rewrote the available ring.
            let idx = self
                .mem
                .read_obj::<u16>(GuestAddress(BQ.1 + 2))
                .map(u16::from_le);
            if idx.ok() == Some(disk.ring.avail_idx) {
                fail!(
                    self,
                    "the disk found its ring corrupt, as the driver wrote it"
                );
            }
            disk.broken = true;
            disk.inflight.clear();
            self.tag("blk ring rewritten by DMA");
            return;
        }
        let mut done = Vec::new();
        while let Some(u) = disk.ring.pop_used(&self.mem) {
            done.push(u);
        }
        let parked = disk.bq.parked();
        let mut errors = Vec::new();
        let alone = done.len() == 1;
        for &(id, len) in &done {
            match u16::try_from(id)
                .ok()
                .and_then(|h| disk.inflight.remove(&h))
            {
                Some(c) if u64::from(len) <= c.writable => {
                    // The status byte, when nothing else may have written
                    // there and no translation changed since submission.
                    if !alone || c.gen != self.gen {
                        continue;
                    }
                    let b = c
                        .status
                        .map(|g| self.mem.read_obj::<u8>(GuestAddress(g)).unwrap_or(0xff));
                    let _ = writeln!(self.log, "blk chain {id}: status {b:?}");
                    match (c.ok_len, b) {
                        (None, _) if len != 0 => {
                            errors.push(format!("chain {id}: malformed, used length {len}"))
                        }
                        (Some(_), None) if len != 0 => errors.push(format!(
                            "chain {id}: used length {len}, the status byte does not translate"
                        )),
                        (Some(_), Some(_)) if len == 0 => errors.push(format!(
                            "chain {id}: used length 0, the status byte translates"
                        )),
                        (Some(n), Some(0)) if len != n => errors.push(format!(
                            "chain {id}: OK with used length {len}, {n} expected"
                        )),
                        (Some(_), Some(s)) if s > 2 => {
                            errors.push(format!("chain {id}: status {s}"))
                        }
                        _ => {
                            self.tags.insert(format!("blk status {b:?}"));
                        }
                    }
                }
                Some(c) => errors.push(format!(
                    "chain {id}: used length {len} > {} writable",
                    c.writable
                )),
                None => errors.push(format!("used entry {id} for no chain in flight")),
            }
        }
        let inflight = disk.inflight.len();
        let _ = writeln!(self.log, "blk used {done:?}, parked {parked}");
        if let Some(e) = errors.first() {
            fail!(self, "{e}");
        }
        if parked != inflight {
            fail!(self, "{parked} chains parked, {inflight} in flight");
        }
        if parked > 0 {
            self.tag("blk parked");
        }
        if !done.is_empty() {
            self.tag("blk completed");
        }
    }

    fn check_references(&mut self) {
        if !self.held.is_empty() {
            return;
        }
        let g = self.gup.stats();
        if g.pins_outstanding != self.baseline || g.gets_outstanding != 0 {
            fail!(
                self,
                "no pin held but pins {} (rings {}), references {}",
                g.pins_outstanding,
                self.baseline,
                g.gets_outstanding
            );
        }
    }
}

/// Decode `data` into a case, run it, check every invariant. Panics, with
/// the case's log, on any violation (or if the device panics).
pub fn run(data: &[u8]) -> Outcome {
    let mut inp = Input::new(data);
    let cfg = inp.u8();
    let mut features = IommuHandle::offered_features();
    for (bit, f) in [
        (0, doc::F_MAP_UNMAP),
        (1, doc::F_PROBE),
        (2, doc::F_ATTACH_TABLE),
        (3, doc::F_PAGE_REQUEST),
    ] {
        if cfg & (1 << bit) != 0 {
            features &= !(1u64 << f);
        }
    }
    let blk = cfg & 0x10 != 0;
    let timeout_zero = cfg & 0x20 != 0;
    let maxphy: u8 = [46, 36, 40, 52][usize::from(cfg >> 6)];

    let gup = Arc::new(
        Gup::anonymous(
            &[
                (R0.0, R0.1 as usize),
                (R1.0, R1.1 as usize),
                (R2.0, R2.1 as usize),
            ],
            RegionOptions::default(),
        )
        .expect("engine"),
    );
    let mem = gup.memory_map().memory().clone();
    let (iommu, handle) = Iommu::new(EPS.to_vec(), maxphy).expect("iommu");
    let (rq, eq) = (Ring::new(RQ), Ring::new(EQ));
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let queues = iommu
        .queues_for(Activation {
            features,
            queues: vec![rq.queue(&mem), eq.queue(&mem)],
            notifiers: Vec::new(),
            interrupt: Arc::new(Interrupt::new(irq)),
            mem: mem.clone(),
            gup: Arc::clone(&gup),
        })
        .expect("queues");
    let mut h = Harness {
        inp,
        log: format!(
            "features {features:#x} maxphyaddr {maxphy} disk {blk} timeout 0 {timeout_zero}\n"
        ),
        tags: BTreeSet::new(),
        gup,
        mem,
        handle,
        queues,
        model: Model {
            features,
            maxphy,
            domains: BTreeMap::new(),
            attached: BTreeMap::new(),
            pri_stopped: BTreeSet::new(),
            outstanding: BTreeMap::new(),
            blk_ep: None,
        },
        rq,
        eq,
        ev_posted: [false; QSIZE as usize],
        ev_lens: [0; QSIZE as usize],
        expected: VecDeque::new(),
        skipped_reports: 0,
        delivered: 0,
        blk_groups: Vec::new(),
        held: Vec::new(),
        gen: 0,
        baseline: 0,
        disk: None,
        requests: 0,
        failed: 0,
        page_requests: 0,
        fault_reports: 0,
    };
    if blk {
        h.setup_disk(timeout_zero);
    }

    let mut ops = 0;
    while !h.inp.is_empty() && ops < MAX_OPS {
        ops += 1;
        let op = h.inp.u8();
        match op % 20 {
            0 => {
                let n = usize::from(h.inp.u8()) % 100;
                let mut req = h.inp.bytes(n);
                if let Some(b) = req.first_mut() {
                    // Mostly a known type with random fields.
                    if op & 0x80 == 0 {
                        *b = [1, 2, 3, 4, 5, 6, 8, 7][usize::from(*b) % 8];
                    }
                }
                let w = h.writable(false);
                h.request(req, w);
            }
            1..=7 => {
                let kind = [
                    doc::ATTACH,
                    doc::DETACH,
                    doc::MAP,
                    doc::UNMAP,
                    doc::PROBE,
                    doc::ATTACH_TABLE,
                    doc::PAGE_RESP,
                ][usize::from(op % 20) - 1];
                let req = h.structured(kind);
                let w = h.writable(kind == doc::PROBE);
                h.request(req, w);
            }
            8 | 9 => {
                h.gen += 1;
                h.write_entries();
            }
            10 => {
                h.gen += 1;
                let at = TABLES + (u64::from(h.inp.u16()) % (TABLE_PAGES << 12));
                let n = usize::from(h.inp.u8()) % 64;
                let bytes = h.inp.bytes(n);
                let n = (n as u64).min(TABLES + (TABLE_PAGES << 12) - at) as usize;
                h.mem
                    .write_slice(&bytes[..n], GuestAddress(at))
                    .expect("table bytes");
            }
            11 | 12 => h.check_translate(),
            13 => h.check_pin(),
            14 => {
                h.held.clear();
                h.tag("pins dropped");
            }
            15 => h.queue_event(),
            16 => h.take_answer(),
            17 => {
                h.post_event_buffers();
                h.flush();
            }
            18 => h.blk_submit(),
            _ => h.blk_process(),
        }
        h.check_references();
    }

    // The end: every record out (at most 64 reports and one page request
    // per operation wait, 16 buffers a round), every pin dropped.
    h.held.clear();
    for _ in 0..64 {
        for slot in 0..QSIZE as usize {
            if !h.ev_posted[slot] {
                h.post_one(slot, 24, 2);
            }
        }
        // Nothing written and every buffer still with the device: no
        // record waits.
        if h.flush() == 0 && h.ev_posted.iter().all(|&p| p) {
            break;
        }
    }
    while let Some(r) = h.expected.pop_front() {
        if r.page_request {
            fail!(h, "page request {:02x?} never delivered", r.bytes);
        }
        h.skipped_reports += 1;
    }
    let c = h.handle.counters();
    let _ = writeln!(h.log, "counters {c:?}");
    if h.skipped_reports > c.events_dropped {
        fail!(
            h,
            "{} fault reports lost, {} counted as dropped",
            h.skipped_reports,
            c.events_dropped
        );
    }
    if c.requests != h.requests || c.failed != h.failed || c.events_written != h.delivered {
        fail!(
            h,
            "counters: requests {} failed {} written {}, harness {} {} {}",
            c.requests,
            c.failed,
            c.events_written,
            h.requests,
            h.failed,
            h.delivered
        );
    }
    if h.disk.is_none()
        && (c.page_requests != h.page_requests
            || c.fault_reports != h.fault_reports
            || c.events_dropped != h.skipped_reports)
    {
        fail!(h, "counters: page requests / fault reports / dropped");
    }
    h.disk = None;
    h.baseline = 0;
    h.check_references();
    Outcome {
        tags: h.tags,
        log: h.log,
    }
}
