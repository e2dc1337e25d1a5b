// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-iommu protocol (docs/guest-va-dma.md, virtio 1.2 section
//! 5.13) driven through the real virtio-mmio transport as a guest driver
//! drives it: feature negotiation (with the draft bits 8 and 9), both
//! queues, DRIVER_OK, requests in the request queue and buffers in the event
//! queue, served by the device's worker thread. Every documented status of
//! every request type; fault reports and page requests as the driver reads
//! them; translation through MAP domains and through page tables written
//! here into guest memory, by [`Endpoint::pin`] and [`Endpoint::translate`];
//! the device counters; and MAP/UNMAP sequences checked against a page
//! model.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::iommu::*;
use common::*;
use devices::virtio::iommu::domain::table_flags as tf;
use devices::virtio::iommu::event::{flags as ev, reason, MAX_PENDING_REPORTS, RECORD_LEN};
use devices::virtio::iommu::request::{status as st, MAX_WRITABLE};
use devices::virtio::iommu::{
    features as fb, DmaError, DmaFault, Endpoint, FaultReason, Iommu, IommuCounters, IommuHandle,
    Response, DEVICE_TYPE, PROBE_SIZE,
};
use devices::virtio::mmio::*;
use devices::virtio::status::*;
use devices::virtio::{F_VERSION_1, INT_USED_RING};
use guest_mm::gup::{Gup, GupFlags, Pinned, RegionOptions};
use guest_mm::paging::entry::{PTE_A, PTE_D, PTE_P, PTE_PS, PTE_RW, PTE_US};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Event queue rings (the request queue uses common's DESC/AVAIL/USED).
const EDESC: u64 = 0x5000;
const EAVAIL: u64 = 0x7000;
const EUSED: u64 = 0x8000;
/// Request bytes (readable then writable parts) live from here.
const REQ: u64 = 0x10000;
/// Scattered places for split requests.
const SCATTER: u64 = 0x18000;
/// Event buffers, [`EV_STRIDE`] bytes apart.
const EVBUF: u64 = 0x20000;
const EV_STRIDE: u64 = 64;
/// Page tables.
const PML4: u64 = 0x10_0000;
const PDPT: u64 = 0x10_1000;
const PD: u64 = 0x10_2000;
const PT: u64 = 0x10_3000;
/// A second PML4 (for table replacement), sharing PDPT..PT.
const PML4_B: u64 = 0x10_4000;
/// The guest-virtual base of the tables (PML4 index 1).
const VA: u64 = 1 << 39;
/// The frames the 4K leaves map, and the 2M leaf's frame.
const FRAME: u64 = 0x30_0000;
const BIG: u64 = 0x40_0000;
/// The endpoints the IOMMU is built with.
const EPS: [u32; 3] = [0, 1, 2];
const MAXPHYADDR: u8 = 46;

fn all_features() -> u64 {
    IommuHandle::offered_features()
}

const R: u32 = 1;
const W: u32 = 2;

/// A virtio-iommu behind the virtio-mmio transport, its worker thread
/// running once [`Dev::init`] set DRIVER_OK.
struct Dev {
    gup: Arc<Gup>,
    regs: Regs,
    handle: IommuHandle,
    rq: Driver,
    eq: Driver,
    irq: EventFd,
    /// Next free event buffer slot.
    ev_slot: u64,
}

impl Dev {
    /// A device negotiated with `features` (VERSION_1 always added).
    fn new(features: u64) -> Self {
        let gup = engine(RegionOptions::default());
        let (iommu, handle) = Iommu::new(EPS.to_vec(), MAXPHYADDR).expect("iommu");
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let t = MmioTransport::new(
            Box::new(iommu),
            memory(&gup),
            Arc::clone(&gup),
            irq.try_clone().expect("eventfd clone"),
        )
        .expect("transport");
        let mut d = Dev {
            rq: Driver::standard(memory(&gup)),
            eq: Driver::new(memory(&gup), QSIZE, EDESC, EAVAIL, EUSED),
            gup,
            regs: Regs { t },
            handle,
            irq,
            ev_slot: 0,
        };
        d.init(features);
        d
    }

    /// Reset, then the whole driver sequence with both queues (fresh
    /// rings), ending with DRIVER_OK.
    fn init(&mut self, features: u64) {
        let r = &mut self.regs;
        assert!(
            r.negotiate(features | 1 << F_VERSION_1),
            "FEATURES_OK refused"
        );
        self.rq = Driver::standard(memory(&self.gup));
        self.eq = Driver::new(memory(&self.gup), QSIZE, EDESC, EAVAIL, EUSED);
        self.ev_slot = 0;
        for (i, drv) in [&self.rq, &self.eq].into_iter().enumerate() {
            r.w(QUEUE_SEL, i as u32);
            assert_eq!(r.r(QUEUE_READY), 0);
            assert_eq!(r.r(QUEUE_NUM_MAX), 256);
            r.ready_queue(drv);
        }
        assert_eq!(
            r.driver_ok(),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
            "the device started"
        );
    }

    fn ep(&self, id: u32) -> Endpoint {
        self.handle.endpoint(id).expect("endpoint")
    }

    fn counters(&self) -> IommuCounters {
        self.handle.counters()
    }

    /// Submits `descs` on the request queue, notifies, waits for the used
    /// entry; returns its length.
    fn submit(&mut self, descs: &[D]) -> u32 {
        let head = self.rq.submit(descs);
        self.regs.w(QUEUE_NOTIFY, 0);
        let used = wait_used(&mut self.rq, 1);
        assert_eq!(used[0].0, u32::from(head), "used id is the chain head");
        used[0].1
    }

    /// A request with `readable` bytes in one descriptor and a writable
    /// descriptor of `writable` bytes (poisoned first); returns the used
    /// length and the writable bytes afterwards.
    fn raw(&mut self, readable: &[u8], writable: usize) -> (u32, Vec<u8>) {
        let wr = REQ + 0x1000;
        self.rq.write(REQ, readable);
        self.rq.write(wr, &vec![0xa5; writable]);
        let mut descs = Vec::new();
        if !readable.is_empty() {
            descs.push(r(REQ, readable.len() as u64));
        }
        if writable > 0 {
            descs.push(w(wr, writable as u64));
        }
        let used = self.submit(&descs);
        (used, self.rq.read(wr, writable))
    }

    /// The status of a request with a 4-byte tail; checks the used length
    /// and the tail's reserved bytes.
    fn status(&mut self, req: &B) -> u8 {
        let (used, tail) = self.raw(&req.0, 4);
        assert_eq!(used, 4, "used length of a {}-byte tail", 4);
        assert_eq!(&tail[1..], &[0, 0, 0], "tail reserved bytes are zero");
        tail[0]
    }

    /// Posts `n` event buffers of `size` bytes (poisoned); returns their
    /// addresses and heads.
    fn post_events(&mut self, n: usize, size: u64) -> Vec<(u64, u16)> {
        let mut v = Vec::new();
        for _ in 0..n {
            let a = EVBUF + EV_STRIDE * (self.ev_slot % 256);
            self.ev_slot += 1;
            self.eq.write(a, &vec![0xa5; size as usize]);
            v.push((a, self.eq.submit(&[w(a, size)])));
        }
        self.regs.w(QUEUE_NOTIFY, 1);
        v
    }

    /// Waits for `n` event buffers; returns (head, used length).
    fn events(&mut self, n: usize) -> Vec<(u32, u32)> {
        wait_used(&mut self.eq, n)
    }

    /// Writes one guest u64.
    fn put64(&self, addr: u64, v: u64) {
        self.rq.write(addr, &v.to_le_bytes());
    }

    fn get64(&self, addr: u64) -> u64 {
        u64::from_le_bytes(self.rq.read(addr, 8).try_into().unwrap())
    }
}

/// `after - before` of the request counters.
fn requests_delta(a: &IommuCounters, b: &IommuCounters) -> (u64, [u64; 9], u64) {
    (
        b.requests - a.requests,
        std::array::from_fn(|i| b.by_type[i] - a.by_type[i]),
        b.failed - a.failed,
    )
}

/// One request of type `t`, failed or not.
fn one(t: usize, failed: bool) -> (u64, [u64; 9], u64) {
    let mut by = [0; 9];
    by[t] = 1;
    (1, by, u64::from(failed))
}

fn fault_of(r: Result<u64, DmaError>) -> DmaFault {
    match r {
        Err(DmaError::Fault(f)) => f,
        other => panic!("expected a translation fault, got {other:?}"),
    }
}

/// Pins `[iova, iova + len)` and returns the pins (gpa of the first byte,
/// bytes) and the result.
fn pin(
    ep: &Endpoint,
    gup: &Gup,
    iova: u64,
    len: u64,
    write: bool,
) -> (Vec<(u64, u64)>, Result<(), DmaError>) {
    let mut out: Vec<Pinned> = Vec::new();
    let res = ep.pin(gup, iova, len, write, GupFlags::NONE, None, &mut out);
    let v = out
        .iter()
        .map(|p| {
            let gpas: Vec<_> = p.iter_extents().collect();
            // Each pin is guest-physically contiguous here.
            for pair in gpas.windows(2) {
                assert_eq!(pair[0].gpa + pair[0].len, pair[1].gpa);
            }
            (gpas[0].gpa, p.bytes())
        })
        .collect();
    (v, res)
}

#[test]
fn identity_features_config_and_both_queues() {
    let mut d = Dev::new(all_features());
    assert_eq!(d.regs.r(DEVICE_ID), DEVICE_TYPE);
    assert_eq!(DEVICE_TYPE, 23);
    let f = d.regs.device_features();
    let want: u64 = [0, 1, 2, 4, 8, 9, 32].iter().map(|b| 1u64 << b).sum();
    assert_eq!(f, want, "offered features {f:#x}");
    assert_eq!(f, all_features());
    // Config, 40 bytes little endian, byte by byte.
    let mut cfg = vec![0u8; 44];
    for (i, b) in cfg.iter_mut().enumerate() {
        let mut x = [0u8; 1];
        d.regs.t.read(CONFIG + i as u64, &mut x);
        *b = x[0];
    }
    let mut want = Vec::new();
    want.extend_from_slice(&0x4020_1000u64.to_le_bytes());
    want.extend_from_slice(&0u64.to_le_bytes());
    want.extend_from_slice(&u64::MAX.to_le_bytes());
    want.extend_from_slice(&0u32.to_le_bytes());
    want.extend_from_slice(&1023u32.to_le_bytes());
    want.extend_from_slice(&512u32.to_le_bytes());
    want.extend_from_slice(&[0, 0, 0, 0]);
    want.extend_from_slice(&[0, 0, 0, 0]); // past the end reads 0
    assert_eq!(cfg, want);
    // Two queues only.
    d.regs.w(QUEUE_SEL, 2);
    assert_eq!(d.regs.r(QUEUE_NUM_MAX), 0);
    // A feature not offered (legacy BYPASS, MMIO) fails FEATURES_OK.
    for bit in [3u32, 5, 6, 33] {
        let r = &mut d.regs;
        r.w(STATUS, 0);
        r.w(STATUS, ACKNOWLEDGE | DRIVER);
        r.set_driver_features(all_features() | 1 << bit);
        r.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(r.r(STATUS) & FEATURES_OK, 0, "bit {bit} accepted");
    }
    // Both queues work after a full init: a request on queue 0, an event
    // on queue 1, each with an interrupt.
    d.init(all_features());
    let _ = d.irq.read();
    assert_eq!(d.status(&attach(1, 0)), st::OK);
    assert!(d.irq.read().unwrap_or(0) > 0, "interrupt for the request");
    assert_ne!(d.regs.r(INTERRUPT_STATUS) & INT_USED_RING, 0);
    d.regs.w(INTERRUPT_ACK, INT_USED_RING);
    let bufs = d.post_events(1, 24);
    let f = fault_of(d.ep(1).translate(&d.gup, 0x1000, false));
    d.ep(1).report_fault(&f);
    assert_eq!(d.events(1), vec![(u32::from(bufs[0].1), 24)]);
    assert!(d.irq.read().unwrap_or(0) > 0, "interrupt for the event");
    // Reset forgets every domain: endpoint 0 is unattached again.
    d.init(all_features());
    let f = fault_of(d.ep(0).translate(&d.gup, 0x1000, false));
    assert_eq!(f.reason, FaultReason::Domain);
}

#[test]
fn attach_and_detach_statuses() {
    let mut d = Dev::new(all_features());
    let c0 = d.counters();
    assert_eq!(d.status(&attach(1, 7)), st::NOENT, "unknown endpoint");
    assert_eq!(
        requests_delta(&c0, &d.counters()),
        one(1, true),
        "counted as one failed ATTACH"
    );
    assert_eq!(d.status(&attach(1024, 0)), st::RANGE, "domain > 1023");
    assert_eq!(d.status(&attach(u32::MAX, 0)), st::RANGE);
    assert_eq!(d.status(&attach(1, 0).u32(12, 1)), st::INVAL, "BYPASS");
    assert_eq!(d.status(&attach(1, 0).u32(12, 2)), st::INVAL, "flag 1");
    assert_eq!(
        d.status(&attach(1, 0).u32(12, 1 << 31)),
        st::INVAL,
        "flag 31"
    );
    for at in 16..20 {
        assert_eq!(
            d.status(&attach(1, 0).byte(at, 1)),
            st::INVAL,
            "reserved byte {at}"
        );
    }
    // Nothing was attached by the refused requests.
    let f = fault_of(d.ep(0).translate(&d.gup, 0, false));
    assert_eq!(f.reason, FaultReason::Domain);
    // The head's reserved bytes are ignored (virtio 1.2 5.13.6).
    let c1 = d.counters();
    assert_eq!(d.status(&attach(1023, 0).byte(1, 0xff).byte(3, 7)), st::OK);
    assert_eq!(d.status(&attach(1023, 0)), st::OK, "attaching again");
    assert_eq!(
        requests_delta(&c1, &d.counters()),
        (2, [0, 2, 0, 0, 0, 0, 0, 0, 0], 0)
    );
    let f = fault_of(d.ep(0).translate(&d.gup, 0, false));
    assert_eq!(f.reason, FaultReason::Mapping, "attached, nothing mapped");

    // DETACH.
    assert_eq!(d.status(&detach(1023, 9)), st::NOENT, "unknown endpoint");
    assert_eq!(d.status(&detach(5, 0)), st::INVAL, "not attached there");
    assert_eq!(d.status(&detach(5, 1)), st::INVAL, "not attached at all");
    let c2 = d.counters();
    // DETACH's bytes 12..20 are reserved: ignored (virtio 1.2 5.13.6.4).
    assert_eq!(
        d.status(&detach(1023, 0).u32(12, 0xdead).byte(19, 1)),
        st::OK
    );
    assert_eq!(requests_delta(&c2, &d.counters()), one(2, false));
    assert_eq!(d.status(&detach(1023, 0)), st::INVAL, "detached already");
    let f = fault_of(d.ep(0).translate(&d.gup, 0, false));
    assert_eq!(f.reason, FaultReason::Domain);
    // The domain died with its last endpoint: MAP finds no domain.
    assert_eq!(d.status(&map(1023, 0, 0xfff, DATA, R)), st::NOENT);

    // Moving an endpoint destroys the domain it empties, with its
    // mappings.
    assert_eq!(d.status(&attach(1, 0)), st::OK);
    assert_eq!(d.status(&map(1, 0x1000, 0x1fff, DATA, R | W)), st::OK);
    assert_eq!(d.ep(0).translate(&d.gup, 0x1234, true), Ok(DATA + 0x234));
    assert_eq!(d.status(&attach(2, 0)), st::OK, "moved to domain 2");
    assert_eq!(
        fault_of(d.ep(0).translate(&d.gup, 0x1234, false)).reason,
        FaultReason::Mapping
    );
    assert_eq!(d.status(&map(1, 0x1000, 0x1fff, DATA, R)), st::NOENT);
    assert_eq!(d.status(&attach(1, 0)), st::OK, "domain 1 anew");
    assert_eq!(
        fault_of(d.ep(0).translate(&d.gup, 0x1234, false)).reason,
        FaultReason::Mapping,
        "the new domain 1 has none of the old mappings"
    );
    // A domain with another endpoint survives the move.
    assert_eq!(d.status(&attach(3, 1)), st::OK);
    assert_eq!(d.status(&attach(3, 2)), st::OK);
    assert_eq!(d.status(&map(3, 0x5000, 0x5fff, DATA, R)), st::OK);
    assert_eq!(d.status(&attach(4, 1)), st::OK);
    assert_eq!(d.ep(2).translate(&d.gup, 0x5008, false), Ok(DATA + 8));
    assert_eq!(
        fault_of(d.ep(1).translate(&d.gup, 0x5008, false)).reason,
        FaultReason::Mapping
    );
    assert_eq!(d.status(&detach(3, 2)), st::OK, "its last endpoint leaves");
    assert_eq!(d.status(&map(3, 0x9000, 0x9fff, DATA, R)), st::NOENT);
    assert_eq!(d.status(&attach(3, 2)), st::OK);
    assert_eq!(
        fault_of(d.ep(2).translate(&d.gup, 0x5008, false)).reason,
        FaultReason::Mapping
    );
}

#[test]
fn map_statuses() {
    let mut d = Dev::new(all_features());
    assert_eq!(d.status(&map(1, 0, 0xfff, DATA, R)), st::NOENT);
    assert_eq!(d.status(&attach(1, 0)), st::OK);
    let c0 = d.counters();
    assert_eq!(
        d.status(&map(1, 0x1001, 0x1fff, DATA, R)),
        st::RANGE,
        "virt_start misaligned"
    );
    assert_eq!(requests_delta(&c0, &d.counters()), one(3, true));
    assert_eq!(
        d.status(&map(1, 0x1000, 0x1ffe, DATA, R)),
        st::RANGE,
        "virt_end + 1 misaligned"
    );
    assert_eq!(
        d.status(&map(1, 0x1000, 0x2000, DATA, R)),
        st::RANGE,
        "virt_end + 1 misaligned"
    );
    assert_eq!(
        d.status(&map(1, 0x1000, 0x1fff, DATA + 8, R)),
        st::RANGE,
        "phys misaligned"
    );
    assert_eq!(
        d.status(&map(1, 0x3000, 0x1fff, DATA, R)),
        st::RANGE,
        "end < start"
    );
    assert_eq!(
        d.status(&map(1, 0x1000, 0x2fff, u64::MAX - 0xfff, R)),
        st::RANGE,
        "phys_start + size overflows"
    );
    assert_eq!(
        d.status(&map(1, 0, u64::MAX, 0x1000, R)),
        st::RANGE,
        "phys_start + size overflows"
    );
    assert_eq!(
        d.status(&map(1, 0x1000, 0x1fff, DATA, 4)),
        st::INVAL,
        "MMIO"
    );
    assert_eq!(d.status(&map(1, 0x1000, 0x1fff, DATA, 8)), st::INVAL);
    assert_eq!(
        d.status(&map(1, 0x1000, 0x1fff, DATA, R | 1 << 31)),
        st::INVAL
    );
    // The MSI window is reserved (PROBE's RESV_MEM).
    assert_eq!(
        d.status(&map(1, 0xfee0_0000, 0xfee0_0fff, DATA, R)),
        st::INVAL
    );
    assert_eq!(
        d.status(&map(1, 0xfe00_0000, 0xfeef_ffff, DATA, R)),
        st::INVAL
    );
    assert_eq!(
        d.status(&map(1, 0xfeef_f000, 0xfef0_0fff, DATA, R)),
        st::INVAL
    );
    assert_eq!(
        d.status(&map(1, 0xfedf_f000, 0xfedf_ffff, DATA, R)),
        st::OK,
        "just below the window"
    );
    assert_eq!(
        d.status(&map(1, 0xfef0_0000, 0xfef0_0fff, DATA, R)),
        st::OK,
        "just above it"
    );
    // None of the refused ones mapped anything.
    for iova in [0x1000, 0x1fff, 0x3000, 0xfee0_0000] {
        assert_eq!(
            fault_of(d.ep(0).translate(&d.gup, iova, false)).reason,
            FaultReason::Mapping
        );
    }
    // Overlaps.
    assert_eq!(d.status(&map(1, 0x10000, 0x1ffff, DATA, R)), st::OK);
    for (s, e) in [
        (0x10000, 0x10fff),
        (0x1f000, 0x20fff),
        (0xf000, 0x10fff),
        (0x0, 0xfffff),
        (0x15000, 0x15fff),
    ] {
        assert_eq!(
            d.status(&map(1, s, e, DATA, R)),
            st::INVAL,
            "[{s:#x}, {e:#x}] overlaps"
        );
    }
    assert_eq!(d.status(&map(1, 0x20000, 0x20fff, DATA, R)), st::OK);
    assert_eq!(d.status(&map(1, 0xf000, 0xffff, DATA, R)), st::OK);
    // The last page of the 64-bit space.
    assert_eq!(
        d.status(&map(1, u64::MAX - 0xfff, u64::MAX, DATA, R)),
        st::OK
    );
    assert_eq!(d.ep(0).translate(&d.gup, u64::MAX, false), Ok(DATA + 0xfff));
    // (A DMA range is [iova, iova + len): the last byte cannot be in one.)
    let (pins, res) = pin(&d.ep(0), &d.gup, u64::MAX - 0xff, 0xff, false);
    assert_eq!(res, Ok(()));
    assert_eq!(pins, vec![(DATA + 0xf00, 0xff)]);
    // A table domain takes no MAP.
    assert_eq!(d.status(&attach_table(5, 1, PML4, 0)), st::OK);
    assert_eq!(d.status(&map(5, 0x1000, 0x1fff, DATA, R)), st::INVAL);
    // Without MAP_UNMAP negotiated, MAP and UNMAP are unsupported.
    d.init(all_features() & !(1 << fb::MAP_UNMAP));
    assert_eq!(d.status(&attach(1, 0)), st::OK);
    assert_eq!(d.status(&map(1, 0x1000, 0x1fff, DATA, R)), st::UNSUPP);
    assert_eq!(d.status(&unmap(1, 0x1000, 0x1fff)), st::UNSUPP);
}

/// MAP in page units: pages `s..=e`, `phys` from page `p`.
fn mp(d: &mut Dev, dom: u32, s: u64, e: u64) -> u8 {
    d.status(&map(dom, s * PAGE, (e + 1) * PAGE - 1, DATA + s * PAGE, R))
}

fn ump(d: &mut Dev, dom: u32, s: u64, e: u64) -> u8 {
    d.status(&unmap(dom, s * PAGE, (e + 1) * PAGE - 1))
}

/// Which of pages `0..n` translate.
fn mapped(d: &Dev, n: u64) -> Vec<u64> {
    (0..n)
        .filter(|&p| d.ep(0).translate(&d.gup, p * PAGE + 5, false).is_ok())
        .collect()
}

#[test]
fn unmap_statuses_follow_the_spec_examples() {
    let mut d = Dev::new(all_features());
    assert_eq!(d.status(&unmap(9, 0, 0xfff)), st::NOENT, "no domain");
    assert_eq!(d.status(&attach(1, 0)), st::OK);
    let c0 = d.counters();
    // (1) nothing mapped: OK, on a domain that never had a mapping.
    assert_eq!(ump(&mut d, 1, 0, 4), st::OK);
    assert_eq!(requests_delta(&c0, &d.counters()), one(4, false));
    // (2)
    assert_eq!(mp(&mut d, 1, 0, 9), st::OK);
    assert_eq!(ump(&mut d, 1, 0, 9), st::OK);
    assert_eq!(mapped(&d, 20), Vec::<u64>::new());
    // (3)
    assert_eq!(mp(&mut d, 1, 0, 4), st::OK);
    assert_eq!(mp(&mut d, 1, 5, 9), st::OK);
    assert_eq!(ump(&mut d, 1, 0, 9), st::OK);
    assert_eq!(mapped(&d, 20), Vec::<u64>::new());
    // (4) a split: RANGE, nothing removed.
    assert_eq!(mp(&mut d, 1, 0, 9), st::OK);
    let c1 = d.counters();
    assert_eq!(ump(&mut d, 1, 0, 4), st::RANGE);
    assert_eq!(requests_delta(&c1, &d.counters()), one(4, true));
    assert_eq!(ump(&mut d, 1, 5, 12), st::RANGE, "split at the start");
    assert_eq!(ump(&mut d, 1, 3, 4), st::RANGE, "inside");
    assert_eq!(mapped(&d, 20), (0..10).collect::<Vec<_>>());
    assert_eq!(ump(&mut d, 1, 0, 9), st::OK);
    // (5)
    assert_eq!(mp(&mut d, 1, 0, 4), st::OK);
    assert_eq!(mp(&mut d, 1, 5, 9), st::OK);
    assert_eq!(ump(&mut d, 1, 0, 4), st::OK);
    assert_eq!(mapped(&d, 20), (5..10).collect::<Vec<_>>());
    // A range removing one mapping whole and splitting another: RANGE,
    // and the whole one stays too.
    assert_eq!(mp(&mut d, 1, 0, 4), st::OK);
    assert_eq!(ump(&mut d, 1, 0, 7), st::RANGE);
    assert_eq!(mapped(&d, 20), (0..10).collect::<Vec<_>>());
    assert_eq!(ump(&mut d, 1, 0, 9), st::OK);
    // (6)
    assert_eq!(mp(&mut d, 1, 0, 4), st::OK);
    assert_eq!(ump(&mut d, 1, 0, 9), st::OK);
    assert_eq!(mapped(&d, 20), Vec::<u64>::new());
    // (7)
    assert_eq!(mp(&mut d, 1, 0, 4), st::OK);
    assert_eq!(mp(&mut d, 1, 10, 14), st::OK);
    assert_eq!(mp(&mut d, 1, 16, 16), st::OK);
    assert_eq!(ump(&mut d, 1, 0, 14), st::OK);
    assert_eq!(mapped(&d, 20), vec![16]);
    // Byte-granular ranges: only mappings fully inside go.
    assert_eq!(d.status(&unmap(1, 16 * PAGE + 1, 17 * PAGE)), st::RANGE);
    assert_eq!(d.status(&unmap(1, 16 * PAGE - 1, 17 * PAGE - 1)), st::OK);
    assert_eq!(mapped(&d, 20), Vec::<u64>::new());
    // Bad ranges and reserved bytes.
    assert_eq!(
        d.status(&unmap(1, 0x2000, 0x1fff)),
        st::RANGE,
        "end < start"
    );
    assert_eq!(mp(&mut d, 1, 3, 3), st::OK);
    assert_eq!(
        d.status(&unmap(1, 0, 0xffff).byte(24, 1)),
        st::INVAL,
        "reserved"
    );
    assert_eq!(mapped(&d, 20), vec![3], "the refused UNMAP removed nothing");
    assert_eq!(d.status(&unmap(1, 0, u64::MAX)), st::OK, "everything");
    assert_eq!(mapped(&d, 20), Vec::<u64>::new());
    // A table domain has no mappings to remove.
    assert_eq!(d.status(&attach_table(2, 1, PML4, 0)), st::OK);
    assert_eq!(d.status(&unmap(2, 0, 0xfff)), st::INVAL);
    // An emptied MAP domain takes a table.
    assert_eq!(mp(&mut d, 1, 3, 3), st::OK);
    assert_eq!(d.status(&attach_table(1, 0, PML4, 0)), st::INVAL, "mapped");
    assert_eq!(ump(&mut d, 1, 3, 3), st::OK);
    assert_eq!(d.status(&attach_table(1, 0, PML4, 0)), st::OK, "emptied");
}

/// The properties PROBE returns with every feature: RESV_MEM (MSI) and
/// PAGE_TABLE_FMT with `table_flags`.
fn properties(table: Option<u32>) -> Vec<u8> {
    let mut p = vec![1, 0, 20, 0, 1, 0, 0, 0];
    p.extend_from_slice(&0xfee0_0000u64.to_le_bytes());
    p.extend_from_slice(&0xfeef_ffffu64.to_le_bytes());
    if let Some(flags) = table {
        p.extend_from_slice(&[6, 0, 8, 0, 4, 0, 0b11, 0]);
        p.extend_from_slice(&flags.to_le_bytes());
    }
    p.resize(PROBE_SIZE as usize, 0);
    p
}

#[test]
fn probe_properties_and_statuses() {
    let mut d = Dev::new(all_features());
    let n = PROBE_SIZE as usize + 4;
    let c0 = d.counters();
    let (used, out) = d.raw(&probe(2).0, n);
    assert_eq!(used as usize, n);
    assert_eq!(out[..512], properties(Some(0x1f))[..], "properties");
    assert_eq!(out[512..], [st::OK, 0, 0, 0], "tail after probe_size bytes");
    assert_eq!(requests_delta(&c0, &d.counters()), one(5, false));
    // Reserved bytes are ignored (virtio 1.2 5.13.6.7).
    let (_, out) = d.raw(&probe(0).byte(8, 1).byte(71, 0xff).0, n);
    assert_eq!(out[..512], properties(Some(0x1f))[..]);
    assert_eq!(out[512], st::OK);
    // Unknown endpoint: the status in the tail, no property written.
    let (used, out) = d.raw(&probe(3).0, n);
    assert_eq!(used as usize, n);
    assert_eq!(out[512..], [st::NOENT, 0, 0, 0]);
    assert!(out[..512].iter().all(|&b| b == 0), "no property");
    // A properties buffer smaller than probe_size: INVAL in the tail that
    // ends the buffer, no property.
    for wr in [4usize, 100, 515] {
        let (used, out) = d.raw(&probe(0).0, wr);
        assert_eq!(used as usize, wr);
        assert_eq!(out[wr - 4..], [st::INVAL, 0, 0, 0], "{wr} writable bytes");
        assert!(out[..wr - 4].iter().all(|&b| b == 0), "no property");
    }
    // A larger buffer: the properties, zeroes, the tail at its end.
    let (used, out) = d.raw(&probe(0).0, n + 80);
    assert_eq!(used as usize, n + 80);
    assert_eq!(out[..512], properties(Some(0x1f))[..]);
    assert_eq!(out[512..n + 76], [0; 80]);
    assert_eq!(out[n + 76..], [st::OK, 0, 0, 0]);
    // Too short to hold a tail: used length 0, nothing written.
    let (used, out) = d.raw(&probe(0).0, 3);
    assert_eq!(used, 0);
    assert_eq!(out, vec![0xa5; 3]);
    // Readable part too short for a PROBE.
    let (used, out) = d.raw(&probe(0).0[..40], n);
    assert_eq!(used as usize, n);
    assert_eq!(out[512], st::INVAL);
    // Properties split across descriptors, the tail in its own.
    let (a, b, t) = (SCATTER, SCATTER + 0x800, SCATTER + 0xff0);
    d.rq.write(REQ, &probe(1).0);
    d.rq.write(a, &[0xa5; 5]);
    d.rq.write(b, &[0xa5; 507]);
    d.rq.write(t, &[0xa5; 4]);
    let used = d.submit(&[r(REQ, 30), r(REQ + 30, 42), w(a, 5), w(b, 507), w(t, 4)]);
    assert_eq!(used as usize, n);
    let mut got = d.rq.read(a, 5);
    got.extend(d.rq.read(b, 507));
    assert_eq!(got, properties(Some(0x1f)));
    assert_eq!(d.rq.read(t, 4), vec![st::OK, 0, 0, 0]);

    // Without PAGE_REQUEST: no PRI in table_flags.
    d.init(all_features() & !(1 << fb::PAGE_REQUEST));
    let (_, out) = d.raw(&probe(0).0, n);
    assert_eq!(out[..512], properties(Some(0x0f))[..]);
    // Without ATTACH_TABLE: RESV_MEM only.
    d.init(all_features() & !(1 << fb::PAGE_REQUEST | 1 << fb::ATTACH_TABLE));
    let (_, out) = d.raw(&probe(0).0, n);
    assert_eq!(out[..512], properties(None)[..]);
    assert_eq!(out[512], st::OK);
    // Without PROBE: UNSUPP.
    d.init(all_features() & !(1 << fb::PROBE));
    let c1 = d.counters();
    let (used, out) = d.raw(&probe(0).0, n);
    assert_eq!(used as usize, n);
    assert_eq!(out[512..], [st::UNSUPP, 0, 0, 0]);
    assert!(out[..512].iter().all(|&b| b == 0));
    assert_eq!(requests_delta(&c1, &d.counters()), one(5, true));
}

#[test]
fn attach_table_statuses() {
    let mut d = Dev::new(all_features());
    let c0 = d.counters();
    let base = || attach_table(1, 0, PML4, 0);
    assert_eq!(d.status(&base().u16(16, 3)), st::UNSUPP, "format 3");
    assert_eq!(requests_delta(&c0, &d.counters()), one(6, true));
    assert_eq!(d.status(&base().u16(16, 0)), st::UNSUPP, "format 0");
    assert_eq!(d.status(&base().u32(40, 39)), st::UNSUPP, "width 39");
    assert_eq!(d.status(&base().u32(40, 0)), st::UNSUPP, "width 0");
    assert_eq!(d.status(&base().u32(20, 1)), st::UNSUPP, "pasid");
    assert_eq!(d.status(&base().u64(32, 1 << 5)), st::INVAL, "flag 5");
    assert_eq!(d.status(&base().u64(32, 1 << 63)), st::INVAL, "flag 63");
    assert_eq!(d.status(&base().byte(18, 1)), st::INVAL, "reserved");
    assert_eq!(d.status(&base().u32(12, 1)), st::INVAL, "attach flags");
    assert_eq!(
        d.status(&attach_table(1, 0, 1 << 46, 0)),
        st::INVAL,
        "pgd beyond MAXPHYADDR"
    );
    assert_eq!(
        d.status(&attach_table(1, 0, PML4 | 1 << 50, 0)),
        st::INVAL,
        "pgd beyond MAXPHYADDR"
    );
    assert_eq!(d.status(&attach_table(1, 0, HOLE, 0)), st::INVAL, "hole");
    assert_eq!(d.status(&attach_table(1, 0, RAM_END, 0)), st::INVAL, "end");
    assert_eq!(d.status(&attach_table(1, 5, PML4, 0)), st::NOENT);
    assert_eq!(d.status(&attach_table(1024, 0, PML4, 0)), st::RANGE);
    // None of them attached anything.
    assert_eq!(
        fault_of(d.ep(0).translate(&d.gup, VA, false)).reason,
        FaultReason::Domain
    );
    // A domain with mappings.
    assert_eq!(d.status(&attach(2, 1)), st::OK);
    assert_eq!(d.status(&map(2, 0, 0xfff, DATA, R)), st::OK);
    assert_eq!(d.status(&attach_table(2, 0, PML4, 0)), st::INVAL);
    assert_eq!(
        fault_of(d.ep(0).translate(&d.gup, VA, false)).reason,
        FaultReason::Domain,
        "the refused attach left the endpoint alone"
    );
    // Good ones: every flag, PCD/PWT in the pgd, both widths.
    assert_eq!(d.status(&attach_table(1, 0, PML4 | 0x18, tf::ALL)), st::OK);
    assert_eq!(d.status(&base().u32(40, 57)), st::OK);
    // Moving endpoint 1 from its MAP domain into the table domain
    // destroys the MAP domain.
    assert_eq!(d.status(&attach_table(1, 1, PML4, 0)), st::OK);
    assert_eq!(d.status(&map(2, 0x1000, 0x1fff, DATA, R)), st::NOENT);

    // Without PAGE_REQUEST: PRI refused, PAGE_RESP unsupported.
    d.init(all_features() & !(1 << fb::PAGE_REQUEST));
    assert_eq!(d.status(&attach_table(1, 0, PML4, tf::PRI)), st::INVAL);
    assert_eq!(
        d.status(&attach_table(1, 0, PML4, tf::ALL & !tf::PRI)),
        st::OK
    );
    assert_eq!(d.status(&page_resp(1, 0, 0, 0)), st::UNSUPP);
    // Without ATTACH_TABLE: unsupported.
    d.init(all_features() & !(1 << fb::ATTACH_TABLE | 1 << fb::PAGE_REQUEST));
    assert_eq!(d.status(&attach_table(1, 0, PML4, 0)), st::UNSUPP);
}

#[test]
fn unknown_types_short_and_split_requests() {
    let mut d = Dev::new(all_features());
    // Unknown types: UNSUPP (type 7 sits between the draft types).
    for t in [0u8, 7, 9, 0x80, 0xff] {
        let c = d.counters();
        let req = B::new(t, 40);
        assert_eq!(d.status(&req), st::UNSUPP, "type {t}");
        let index = if (1..=8).contains(&t) {
            usize::from(t)
        } else {
            0
        };
        assert_eq!(requests_delta(&c, &d.counters()), one(index, true));
    }
    // No writable tail: used length 0, the request not applied.
    let c = d.counters();
    let (used, _) = d.raw(&attach(1, 0).0, 0);
    assert_eq!(used, 0);
    let (used, out) = d.raw(&attach(1, 0).0, 3);
    assert_eq!((used, out), (0, vec![0xa5; 3]), "a 3-byte tail");
    let (used, out) = d.raw(&map(1, 0, 0xfff, DATA, R).0, 2);
    assert_eq!((used, out), (0, vec![0xa5; 2]));
    let cc = d.counters();
    assert_eq!(requests_delta(&c, &cc), (3, [0, 2, 0, 1, 0, 0, 0, 0, 0], 3));
    assert_eq!(
        fault_of(d.ep(0).translate(&d.gup, 0, false)).reason,
        FaultReason::Domain
    );
    // Readable part shorter than the type's: INVAL.
    assert_eq!(d.status(&B(attach(1, 0).0[..12].to_vec())), st::INVAL);
    assert_eq!(
        d.status(&B(map(1, 0, 0xfff, DATA, R).0[..35].to_vec())),
        st::INVAL
    );
    // Only a writable part: an empty request, unknown type.
    let (used, out) = d.raw(&[], 4);
    assert_eq!((used, out), (4, vec![st::UNSUPP, 0, 0, 0]));
    // A readable descriptor after a writable one: not a request.
    d.rq.write(REQ, &attach(1, 0).0);
    d.rq.write(REQ + 0x100, &[0xa5; 4]);
    let used = d.submit(&[w(REQ + 0x100, 4), r(REQ, 20)]);
    assert_eq!(used, 0);
    assert_eq!(d.rq.read(REQ + 0x100, 4), vec![0xa5; 4]);
    // A larger writable part: the tail ends it (where drivers read it),
    // zeroes before it.
    let (used, out) = d.raw(&attach(1, 0).0, 16);
    assert_eq!(used, 16);
    assert_eq!(out[..12], [0; 12]);
    assert_eq!(out[12..], [st::OK, 0, 0, 0]);
    // One larger than PROBE's properties, tail and a page: not answered.
    let c = d.counters();
    let big = MAX_WRITABLE + 1;
    let (used, out) = d.raw(&attach(3, 2).0, big);
    assert_eq!(used, 0);
    assert!(out.iter().all(|&b| b == 0xa5), "nothing written");
    assert_eq!(requests_delta(&c, &d.counters()), one(1, true));
    assert_eq!(
        fault_of(d.ep(2).translate(&d.gup, 0, false)).reason,
        FaultReason::Domain,
        "the unanswered ATTACH was not applied"
    );
    let (used, out) = d.raw(&attach(3, 2).0, MAX_WRITABLE);
    assert_eq!(used as usize, MAX_WRITABLE);
    assert_eq!(out[MAX_WRITABLE - 4..], [st::OK, 0, 0, 0]);
    assert_eq!(
        fault_of(d.ep(2).translate(&d.gup, 0, false)).reason,
        FaultReason::Mapping
    );
    // A longer readable part (junk after the body) is fine.
    let mut long = attach(2, 1).0;
    long.resize(300, 0xee);
    assert_eq!(d.raw(&long, 4), (4, vec![st::OK, 0, 0, 0]));

    // MAP split every odd way: the head alone, the body in three pieces
    // across pages, the tail in two.
    let m = map(2, 0x4000, 0x5fff, DATA, R | W).0;
    let pieces = [
        (SCATTER, 4usize),
        (SCATTER + 0xffd, 5),
        (SCATTER + 0x2000, 1),
        (SCATTER + 0x3010, 26),
    ];
    let mut at = 0;
    let mut descs = Vec::new();
    for &(a, n) in &pieces {
        d.rq.write(a, &m[at..at + n]);
        descs.push(r(a, n as u64));
        at += n;
    }
    assert_eq!(at, 36);
    d.rq.write(SCATTER + 0x5000, &[0xa5; 8]);
    descs.push(w(SCATTER + 0x5000, 1));
    descs.push(w(SCATTER + 0x5004, 3));
    let used = d.submit(&descs);
    assert_eq!(used, 4);
    assert_eq!(d.rq.read(SCATTER + 0x5000, 1), vec![st::OK]);
    assert_eq!(d.rq.read(SCATTER + 0x5004, 3), vec![0, 0, 0]);
    assert_eq!(d.ep(1).translate(&d.gup, 0x5abc, true), Ok(DATA + 0x1abc));
    // Zero-length descriptors in the middle change nothing.
    let u = unmap(2, 0x4000, 0x5fff).0;
    d.rq.write(SCATTER, &u);
    d.rq.write(SCATTER + 0x100, &[0xa5; 4]);
    let used = d.submit(&[
        r(SCATTER, 1),
        r(SCATTER + 0x800, 0),
        r(SCATTER + 1, 27),
        w(SCATTER + 0x100, 0),
        w(SCATTER + 0x100, 4),
    ]);
    assert_eq!(used, 4);
    assert_eq!(d.rq.read(SCATTER + 0x100, 4), vec![st::OK, 0, 0, 0]);
    assert_eq!(
        fault_of(d.ep(1).translate(&d.gup, 0x5abc, false)).reason,
        FaultReason::Mapping
    );
}

#[test]
fn event_records_buffers_and_drops() {
    let mut d = Dev::new(all_features());
    let ep0 = d.ep(0);
    let ep1 = d.ep(1);
    // A DOMAIN fault (endpoint 1 not attached), read at an exact address.
    let bufs = d.post_events(3, 24);
    let f = fault_of(ep1.translate(&d.gup, 0x12345, false));
    assert_eq!(
        f,
        DmaFault {
            address: 0x12345,
            write: false,
            reason: FaultReason::Domain,
            privileged: false,
            requestable: false,
            error_code: None
        }
    );
    let c0 = d.counters();
    ep1.report_fault(&f);
    assert_eq!(d.events(1), vec![(u32::from(bufs[0].1), RECORD_LEN as u32)]);
    assert_eq!(
        decode(&d.eq.read(bufs[0].0, 24)),
        Record {
            reason: reason::DOMAIN,
            group: 0,
            flags: ev::READ | ev::ADDRESS,
            endpoint: 1,
            pasid: 0,
            address: 0x12345
        }
    );
    // A MAPPING fault of a write in a MAP domain (read-only mapping).
    assert_eq!(d.status(&attach(4, 0)), st::OK);
    assert_eq!(d.status(&map(4, 0x8000, 0x8fff, DATA, R)), st::OK);
    let f = fault_of(ep0.translate(&d.gup, 0x8ff1, true));
    assert_eq!(
        (f.reason, f.write, f.address),
        (FaultReason::Mapping, true, 0x8ff1)
    );
    ep0.report_fault(&f);
    d.events(1);
    assert_eq!(
        decode(&d.eq.read(bufs[1].0, 24)),
        Record {
            reason: reason::MAPPING,
            group: 0,
            flags: ev::WRITE | ev::ADDRESS,
            endpoint: 0,
            pasid: 0,
            address: 0x8ff1
        }
    );
    // A page request: the page, PAGE_REQUEST | LAST, its group.
    let g = ep0.page_request(&f);
    d.events(1);
    assert_eq!(
        decode(&d.eq.read(bufs[2].0, 24)),
        Record {
            reason: reason::MAPPING,
            group: g,
            flags: ev::WRITE | ev::ADDRESS | ev::PAGE_REQUEST | ev::LAST,
            endpoint: 0,
            pasid: 0,
            address: 0x8000
        }
    );
    let c1 = d.counters();
    assert_eq!(c1.fault_reports - c0.fault_reports, 2);
    assert_eq!(c1.page_requests - c0.page_requests, 1);
    assert_eq!(c1.events_written - c0.events_written, 3);
    assert_eq!(c1.events_dropped, 0);
    ep0.abandon(g);

    // A buffer too small: returned with used length 0, the record goes to
    // the next buffer. A buffer split in two descriptors takes a record.
    let small = d.post_events(1, 23);
    ep0.report_fault(&f);
    assert_eq!(d.events(1), vec![(u32::from(small[0].1), 0)]);
    assert_eq!(d.eq.read(small[0].0, 23), vec![0xa5; 23], "not written");
    let a = EVBUF + EV_STRIDE * 200;
    d.eq.write(a, &[0xa5; 64]);
    let head = d.eq.submit(&[w(a, 10), w(a + 32, 14)]);
    d.regs.w(QUEUE_NOTIFY, 1);
    assert_eq!(d.events(1), vec![(u32::from(head), 24)]);
    let mut rec = d.eq.read(a, 10);
    rec.extend(d.eq.read(a + 32, 14));
    assert_eq!(decode(&rec).address, 0x8ff1);
    assert_eq!(d.counters().events_written - c1.events_written, 1);

    // No buffers: fault reports beyond 64 waiting are dropped and counted,
    // page requests wait.
    let c2 = d.counters();
    let extra = 7;
    for i in 0..MAX_PENDING_REPORTS as u64 + extra {
        let mut f = f;
        f.address = i * PAGE;
        ep1.report_fault(&f);
    }
    let groups: Vec<u16> = (0..3)
        .map(|i| {
            let mut f = f;
            f.address = 0x100_0000 + i * PAGE;
            f.write = false;
            ep0.page_request(&f)
        })
        .collect();
    assert_ne!(groups[0], groups[1]);
    assert_ne!(groups[1], groups[2]);
    // A short wait: the worker had its chance to (wrongly) lose anything.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let c3 = d.counters();
    assert_eq!(c3.events_dropped - c2.events_dropped, extra);
    assert_eq!(
        c3.fault_reports - c2.fault_reports,
        MAX_PENDING_REPORTS as u64 + extra
    );
    assert_eq!(c3.events_written, c2.events_written, "no buffer, no record");
    let n = MAX_PENDING_REPORTS + 3;
    let bufs = d.post_events(n + 5, 24);
    let used = d.events(n);
    for (i, ((addr, head), (id, len))) in bufs.iter().zip(&used).enumerate() {
        assert_eq!((u32::from(*head), 24), (*id, *len));
        let rec = decode(&d.eq.read(*addr, 24));
        if i < MAX_PENDING_REPORTS {
            assert_eq!(rec.flags, ev::WRITE | ev::ADDRESS, "report {i}");
            assert_eq!(rec.address, i as u64 * PAGE, "oldest first");
            assert_eq!(rec.endpoint, 1);
        } else {
            let k = i - MAX_PENDING_REPORTS;
            assert_eq!(
                rec.flags,
                ev::READ | ev::ADDRESS | ev::PAGE_REQUEST | ev::LAST
            );
            assert_eq!(rec.group, groups[k]);
            assert_eq!(rec.address, 0x100_0000 + k as u64 * PAGE);
        }
    }
    let c4 = d.counters();
    assert_eq!(c4.events_written - c3.events_written, n as u64);
    assert_eq!(c4.events_dropped, c3.events_dropped);
    // The spare buffers take later records at once.
    ep1.report_fault(&f);
    assert_eq!(d.events(1), vec![(u32::from(bufs[n].1), 24)]);
    for g in groups {
        ep0.abandon(g);
    }
}

#[test]
fn an_event_buffer_outside_ram_does_not_lose_the_record() {
    let mut d = Dev::new(all_features());
    let ep0 = d.ep(0);
    assert_eq!(d.status(&attach(4, 0)), st::OK);
    let f = fault_of(ep0.translate(&d.gup, 0x7123, true));
    // A buffer in the hole between two RAM regions (the device cannot
    // write it), then a good one; then a page request and a fault report.
    let bad = d.eq.submit(&[w(HOLE, 64)]);
    let good = d.post_events(2, 24);
    let c = d.counters();
    let g = ep0.page_request(&f);
    ep0.report_fault(&f);
    let used = d.events(3);
    assert_eq!(
        used,
        vec![
            (u32::from(bad), 0),
            (u32::from(good[0].1), 24),
            (u32::from(good[1].1), 24)
        ],
        "the unwritable buffer is returned empty, both records go on"
    );
    let rec = decode(&d.eq.read(good[0].0, 24));
    assert_eq!(
        (rec.flags & ev::PAGE_REQUEST, rec.group, rec.address),
        (ev::PAGE_REQUEST, g, 0x7000),
        "the page request is not lost"
    );
    let rec = decode(&d.eq.read(good[1].0, 24));
    assert_eq!((rec.flags, rec.address), (ev::WRITE | ev::ADDRESS, 0x7123));
    assert_eq!(d.counters().events_written - c.events_written, 2);
    ep0.abandon(g);
}

#[test]
fn a_head_outside_the_queue_does_not_stall_the_chains_after_it() {
    let mut d = Dev::new(all_features());
    // Request queue: a head index no used entry can name, then a request,
    // one notification for both.
    let wr = REQ + 0x1000;
    d.rq.write(REQ, &attach(2, 1).0);
    d.rq.write(wr, &[0xa5; 4]);
    d.rq.publish(QSIZE + 7);
    let head = d.rq.submit(&[r(REQ, 20), w(wr, 4)]);
    d.regs.w(QUEUE_NOTIFY, 0);
    assert_eq!(wait_used(&mut d.rq, 1), vec![(u32::from(head), 4)]);
    assert_eq!(d.rq.read(wr, 4), vec![st::OK, 0, 0, 0]);
    // Event queue: the same before a good buffer, then a record.
    let ep1 = d.ep(1);
    let f = fault_of(ep1.translate(&d.gup, 0x5000, false));
    d.eq.publish(QSIZE + 9);
    let good = d.post_events(1, 24);
    ep1.report_fault(&f);
    assert_eq!(d.events(1), vec![(u32::from(good[0].1), 24)]);
    assert_eq!(decode(&d.eq.read(good[0].0, 24)).address, 0x5000);
}

/// Writes the page tables: PML4[1] -> PDPT[0] -> PD; PD[0] -> PT with
/// PT[0] RW user, PT[1] RO user, PT[2] not present, PT[3] RW supervisor,
/// PT[4..8] RW user; PD[1] a 2M RW user leaf. A and D clear everywhere.
/// PML4_B maps the same PDPT at index 2 instead.
fn build_tables(d: &Dev) {
    for t in [PML4, PDPT, PD, PT, PML4_B] {
        d.rq.write(t, &[0u8; 4096]);
    }
    let up = PTE_P | PTE_RW | PTE_US;
    d.put64(PML4 + 8, PDPT | up);
    d.put64(PML4_B + 16, PDPT | up);
    d.put64(PDPT, PD | up);
    d.put64(PD, PT | up);
    d.put64(PD + 8, BIG | up | PTE_PS);
    d.put64(PT, FRAME | up);
    d.put64(PT + 8, (FRAME + PAGE) | PTE_P | PTE_US);
    d.put64(PT + 24, (FRAME + 3 * PAGE) | PTE_P | PTE_RW);
    for i in 4..8 {
        d.put64(PT + 8 * i, (FRAME + i * PAGE) | up);
    }
}

#[test]
fn translation_through_map_domains() {
    let mut d = Dev::new(all_features());
    let ep0 = d.ep(0);
    assert_eq!(d.status(&attach(1, 0)), st::OK);
    let (rw, ro, wo) = (0x30_0000, 0x50_0000, 0x60_0000);
    assert_eq!(d.status(&map(1, 0x10_0000, 0x10_1fff, rw, R | W)), st::OK);
    assert_eq!(d.status(&map(1, 0x10_2000, 0x10_2fff, ro, R)), st::OK);
    assert_eq!(d.status(&map(1, 0x10_3000, 0x10_3fff, wo, W)), st::OK);
    assert_eq!(d.status(&map(1, 0x10_4000, 0x10_4fff, HOLE, R | W)), st::OK);
    let gup = Arc::clone(&d.gup);
    let g = &*gup;
    assert_eq!(ep0.translate(g, 0x10_0123, false), Ok(rw + 0x123));
    assert_eq!(ep0.translate(g, 0x10_1fff, true), Ok(rw + 0x1fff));
    assert_eq!(ep0.translate(g, 0x10_2010, false), Ok(ro + 0x10));
    assert_eq!(ep0.translate(g, 0x10_3010, true), Ok(wo + 0x10));
    let f = fault_of(ep0.translate(g, 0x10_2010, true));
    assert_eq!(
        f,
        DmaFault {
            address: 0x10_2010,
            write: true,
            reason: FaultReason::Mapping,
            privileged: false,
            requestable: false,
            error_code: None
        }
    );
    let f = fault_of(ep0.translate(g, 0x10_3010, false));
    assert_eq!(
        (f.reason, f.write),
        (FaultReason::Mapping, false),
        "write-only"
    );
    let f = fault_of(ep0.translate(g, 0x20_0000, false));
    assert_eq!((f.reason, f.address), (FaultReason::Mapping, 0x20_0000));
    assert_eq!(
        fault_of(ep0.translate(g, 0x0f_ffff, false)).reason,
        FaultReason::Mapping
    );
    // Not attached: DOMAIN. Attached to a domain without mappings: MAPPING.
    assert_eq!(
        fault_of(d.ep(1).translate(g, 0x10_0000, false)).reason,
        FaultReason::Domain
    );
    assert_eq!(d.status(&attach(2, 2)), st::OK);
    assert_eq!(
        fault_of(d.ep(2).translate(g, 0x10_0000, false)).reason,
        FaultReason::Mapping
    );
    // A DMA straddling two mappings to non-contiguous frames: two pins.
    let before = g.stats();
    let (pins, res) = pin(&ep0, g, 0x10_1800, 0x1000, false);
    assert_eq!(res, Ok(()));
    assert_eq!(pins, vec![(rw + 0x1800, 0x800), (ro, 0x800)]);
    // The same as a write: the first pin is taken, then the RO mapping
    // faults at its first byte.
    let (pins, res) = pin(&ep0, g, 0x10_1800, 0x1000, true);
    assert_eq!(pins, vec![(rw + 0x1800, 0x800)]);
    match res {
        Err(DmaError::Fault(f)) => {
            assert_eq!(
                (f.address, f.write, f.reason),
                (0x10_2000, true, FaultReason::Mapping)
            )
        }
        other => panic!("{other:?}"),
    }
    // Across three mappings with a write-only one in the middle: a read
    // stops there.
    let (pins, res) = pin(&ep0, g, 0x10_2ff0, 0x20, false);
    assert_eq!(pins, vec![(ro + 0xff0, 0x10)]);
    assert!(matches!(res, Err(DmaError::Fault(f)) if f.address == 0x10_3000));
    // A mapping onto no RAM: the translation works, the pin does not.
    assert_eq!(ep0.translate(g, 0x10_4000, false), Ok(HOLE));
    let (pins, res) = pin(&ep0, g, 0x10_4000, 0x10, false);
    assert!(pins.is_empty());
    assert!(matches!(res, Err(DmaError::Pin(_))), "{res:?}");
    // Pins are released; pages are counted.
    let after = g.stats();
    assert_eq!(after.pins_outstanding, 0, "{after:?}");
    assert!(after.requests > before.requests);
    // DETACH: the endpoint loses the domain.
    assert_eq!(d.status(&detach(1, 0)), st::OK);
    assert_eq!(
        fault_of(ep0.translate(g, 0x10_0000, false)).reason,
        FaultReason::Domain
    );
}

#[test]
fn translation_through_page_tables() {
    let mut d = Dev::new(all_features());
    build_tables(&d);
    let ep0 = d.ep(0);
    assert_eq!(d.status(&attach_table(1, 0, PML4, 0)), st::OK);
    let g = Arc::clone(&d.gup);
    let g = &*g;
    // Present RW user page; translate sets no A/D.
    assert_eq!(ep0.translate(g, VA + 0x10, false), Ok(FRAME + 0x10));
    assert_eq!(ep0.translate(g, VA + 0xfff, true), Ok(FRAME + 0xfff));
    assert_eq!(
        d.get64(PT) & (PTE_A | PTE_D),
        0,
        "translate touched the PTE"
    );
    // A read pin sets A in every level, no D.
    let (pins, res) = pin(&ep0, g, VA + 0x100, 0x100, false);
    assert_eq!(res, Ok(()));
    assert_eq!(pins, vec![(FRAME + 0x100, 0x100)]);
    for e in [PML4 + 8, PDPT, PD, PT] {
        assert_ne!(d.get64(e) & PTE_A, 0, "A at {e:#x}");
    }
    assert_eq!(d.get64(PT) & PTE_D, 0, "a read sets no D");
    // A write pin sets D in the leaf.
    let (_, res) = pin(&ep0, g, VA, 8, true);
    assert_eq!(res, Ok(()));
    assert_eq!(d.get64(PT) & (PTE_A | PTE_D), PTE_A | PTE_D);
    assert_eq!(d.get64(PD) & PTE_D, 0, "D only in the leaf");
    // RO page: reads work (A set), writes fault.
    let (_, res) = pin(&ep0, g, VA + 0x1000, 16, false);
    assert_eq!(res, Ok(()));
    assert_eq!(d.get64(PT + 8) & (PTE_A | PTE_D), PTE_A);
    let f = fault_of(ep0.translate(g, VA + 0x1010, true));
    assert_eq!(
        (f.reason, f.write, f.requestable, f.privileged),
        (FaultReason::Mapping, true, false, false)
    );
    assert_eq!(f.address & !0xfff, VA + 0x1000);
    assert_eq!(f.error_code, Some(0b111), "P | W | U");
    let (_, res) = pin(&ep0, g, VA + 0x1000, 16, true);
    assert!(matches!(res, Err(DmaError::Fault(f)) if !f.requestable && f.write));
    assert_eq!(d.get64(PT + 8) & PTE_D, 0, "a refused write sets no D");
    // Not present.
    let f = fault_of(ep0.translate(g, VA + 0x2000, false));
    assert_eq!((f.reason, f.requestable), (FaultReason::Mapping, false));
    assert_eq!(f.address & !0xfff, VA + 0x2000);
    assert_eq!(f.error_code, Some(0b100), "U, not present");
    // A DMA running into the not-present page: the pages before it are
    // pinned, the fault names the missing page.
    let (pins, res) = pin(&ep0, g, VA + 0x800, 0x2000, false);
    assert_eq!(pins, vec![(FRAME + 0x800, 0x1800)]);
    assert!(
        matches!(res, Err(DmaError::Fault(f)) if f.address == VA + 0x2000),
        "{res:?}"
    );
    // Supervisor page, user access: fault.
    let f = fault_of(ep0.translate(g, VA + 0x3000, false));
    assert_eq!(f.error_code, Some(0b101), "P | U");
    // Contiguous 4K leaves to contiguous frames: one pin; to the 2M leaf.
    let (pins, res) = pin(&ep0, g, VA + 0x4000, 0x4000, true);
    assert_eq!(res, Ok(()));
    assert_eq!(pins.iter().map(|p| p.1).sum::<u64>(), 0x4000);
    assert_eq!(pins[0].0, FRAME + 0x4000);
    assert_eq!(
        ep0.translate(g, VA + 2 * MIB + 0x12345, false),
        Ok(BIG + 0x12345)
    );
    assert_eq!(d.get64(PD + 8) & (PTE_A | PTE_D), 0);
    let (pins, res) = pin(&ep0, g, VA + 2 * MIB + 0x1f_f000, 0x1000, true);
    assert_eq!(res, Ok(()));
    assert_eq!(pins, vec![(BIG + 0x1f_f000, 0x1000)]);
    assert_eq!(d.get64(PD + 8) & (PTE_A | PTE_D), PTE_A | PTE_D, "2M leaf");
    // Past the 2M leaf: PD[2] is not present.
    let f = fault_of(ep0.translate(g, VA + 4 * MIB, false));
    assert_eq!(f.address & !0xfff, VA + 4 * MIB);
    // Outside the table (PML4[0] not present).
    assert!(ep0.translate(g, 0x1000, false).is_err());

    // With PRI, the same faults are requestable.
    assert_eq!(d.status(&attach_table(1, 0, PML4, tf::PRI)), st::OK);
    let f = fault_of(ep0.translate(g, VA + 0x1010, true));
    assert!(f.requestable && f.write);
    let f = fault_of(ep0.translate(g, VA + 0x2000, false));
    assert!(f.requestable && !f.write && !f.privileged);
    // A non-canonical address is a #GP, never requestable.
    let f = fault_of(ep0.translate(g, 1 << 47, false));
    assert!(!f.requestable, "{f:?}");

    // PRIV: supervisor accesses. The supervisor page works, user pages
    // work without SMAP, writes to RO pages work without WP.
    assert_eq!(d.status(&attach_table(1, 0, PML4, tf::PRIV)), st::OK);
    assert_eq!(ep0.translate(g, VA + 0x3008, true), Ok(FRAME + 0x3008));
    assert_eq!(ep0.translate(g, VA + 0x8, false), Ok(FRAME + 0x8));
    assert_eq!(ep0.translate(g, VA + 0x1008, true), Ok(FRAME + 0x1008));
    let f = fault_of(ep0.translate(g, VA + 0x2000, false));
    assert!(f.privileged && !f.requestable);
    assert_eq!(f.error_code, Some(0), "supervisor read, not present");
    assert_eq!(
        d.status(&attach_table(1, 0, PML4, tf::PRIV | tf::WP)),
        st::OK
    );
    let f = fault_of(ep0.translate(g, VA + 0x1008, true));
    assert_eq!(f.error_code, Some(0b011), "P | W, supervisor");
    assert_eq!(
        d.status(&attach_table(1, 0, PML4, tf::PRIV | tf::SMAP)),
        st::OK
    );
    let f = fault_of(ep0.translate(g, VA + 0x8, false));
    assert!(f.privileged);
    assert_eq!(f.error_code, Some(0b001), "SMAP: P, supervisor");
    assert_eq!(ep0.translate(g, VA + 0x3008, false), Ok(FRAME + 0x3008));
    // SMAP without PRIV changes nothing for user accesses.
    assert_eq!(d.status(&attach_table(1, 0, PML4, tf::SMAP)), st::OK);
    assert_eq!(ep0.translate(g, VA + 0x8, false), Ok(FRAME + 0x8));

    // Another endpoint joining the table domain by ATTACH walks the same
    // table; another ATTACH_TABLE replaces it for both.
    assert_eq!(d.status(&attach(1, 1)), st::OK);
    assert_eq!(d.ep(1).translate(g, VA + 0x8, false), Ok(FRAME + 0x8));
    assert_eq!(d.status(&attach_table(1, 0, PML4_B, 0)), st::OK);
    for ep in [&ep0, &d.ep(1)] {
        assert!(ep.translate(g, VA + 0x8, false).is_err(), "old table");
        assert_eq!(ep.translate(g, 2 * VA + 0x8, false), Ok(FRAME + 0x8));
    }
    assert_eq!(g.stats().pins_outstanding, 0);
    assert_eq!(g.stats().gets_outstanding, 0);
}

#[test]
fn page_requests_and_responses() {
    let mut d = Dev::new(all_features());
    build_tables(&d);
    let (ep0, ep1) = (d.ep(0), d.ep(1));
    assert_eq!(d.status(&attach_table(1, 0, PML4, tf::PRI)), st::OK);
    assert_eq!(
        d.status(&attach_table(2, 1, PML4, tf::PRI | tf::PRIV)),
        st::OK
    );
    let bufs = d.post_events(16, 24);
    let mut next = 0usize;
    let c0 = d.counters();
    let mut request = |d: &mut Dev, ep: &Endpoint, iova: u64, write: bool| -> (u16, Record) {
        let f = fault_of(ep.translate(&d.gup, iova, write));
        assert!(f.requestable, "{f:?}");
        let g = ep.page_request(&f);
        d.events(1);
        let rec = decode(&d.eq.read(bufs[next].0, 24));
        next += 1;
        (g, rec)
    };
    let (g, rec) = request(&mut d, &ep0, VA + 0x2abc, false);
    assert_eq!(
        rec,
        Record {
            reason: reason::MAPPING,
            group: g,
            flags: ev::READ | ev::ADDRESS | ev::PAGE_REQUEST | ev::LAST,
            endpoint: 0,
            pasid: 0,
            address: VA + 0x2000
        }
    );
    // Bad responses, none of which answers the group.
    let c1 = d.counters();
    assert_eq!(d.status(&page_resp(1, 0, u32::from(g) + 1, 0)), st::NOENT);
    assert_eq!(d.counters().stray_responses - c1.stray_responses, 1);
    assert_eq!(requests_delta(&c1, &d.counters()), one(8, true));
    assert_eq!(
        d.status(&page_resp(1, 0, u32::from(g), 3)),
        st::INVAL,
        "code"
    );
    assert_eq!(
        d.status(&page_resp(1, 0, u32::from(g), 0).u32(12, 1)),
        st::INVAL,
        "PASID_VALID"
    );
    assert_eq!(
        d.status(&page_resp(1, 0, u32::from(g), 0).u32(16, 3)),
        st::INVAL,
        "pasid"
    );
    assert_eq!(
        d.status(&page_resp(1, 0, u32::from(g), 0).byte(27, 1)),
        st::INVAL,
        "reserved"
    );
    assert_eq!(
        d.status(&page_resp(1, 0, 0x1_0000 | u32::from(g), 0)),
        st::INVAL,
        "group beyond 16 bits"
    );
    assert_eq!(
        d.status(&page_resp(2, 0, u32::from(g), 0)),
        st::INVAL,
        "domain"
    );
    assert_eq!(
        d.status(&page_resp(1, 9, u32::from(g), 0)),
        st::NOENT,
        "endpoint"
    );
    assert_eq!(
        d.status(&page_resp(2, 1, u32::from(g), 0)),
        st::NOENT,
        "another endpoint's group"
    );
    assert_eq!(ep0.response(g), None);
    assert_eq!(ep0.response_evt().read().ok(), None, "no wakeup yet");
    // SUCCESS: the answer and the endpoint's eventfd.
    assert_eq!(d.status(&page_resp(1, 0, u32::from(g), 0)), st::OK);
    assert_eq!(ep0.response_evt().read().ok(), Some(1));
    assert_eq!(ep0.response(g), Some(Response::Success));
    assert_eq!(ep0.response(g), None, "taken once");
    assert_eq!(
        d.status(&page_resp(1, 0, u32::from(g), 0)),
        st::NOENT,
        "again"
    );

    // Supervisor page requests carry PRIV; a write, WRITE.
    // (Endpoint 1's domain is PRIV without WP: its RO page is writable.)
    assert_eq!(ep1.translate(&d.gup, VA + 0x1008, true), Ok(FRAME + 0x1008));
    let (g1, rec) = request(&mut d, &ep1, VA + 0x2000, true);
    assert_eq!(
        rec.flags,
        ev::WRITE | ev::ADDRESS | ev::PAGE_REQUEST | ev::LAST | ev::PRIV
    );
    assert_eq!((rec.endpoint, rec.group, rec.address), (1, g1, VA + 0x2000));
    // INVALID: answered, page requests go on.
    assert_eq!(d.status(&page_resp(2, 1, u32::from(g1), 1)), st::OK);
    assert_eq!(ep1.response_evt().read().ok(), Some(1));
    assert_eq!(ep1.response(g1), Some(Response::Invalid));
    assert!(fault_of(ep1.translate(&d.gup, VA + 0x2000, true)).requestable);

    // A stray FAILURE (no such group) stops nothing.
    let (g2, _) = request(&mut d, &ep0, VA + 0x1000, true);
    assert_eq!(d.status(&page_resp(1, 0, u32::from(g2) + 7, 2)), st::NOENT);
    assert!(fault_of(ep0.translate(&d.gup, VA + 0x2000, false)).requestable);
    // FAILURE: answered, and endpoint 0's faults are no longer requestable
    // (endpoint 1's still are) until its next ATTACH_TABLE.
    let (g3, _) = request(&mut d, &ep0, VA + 0x2000, false);
    assert_ne!(g2, g3, "distinct outstanding groups");
    assert_eq!(d.status(&page_resp(1, 0, u32::from(g3), 2)), st::OK);
    assert_eq!(ep0.response(g3), Some(Response::Failure));
    assert!(!fault_of(ep0.translate(&d.gup, VA + 0x2000, false)).requestable);
    assert!(!fault_of(ep0.translate(&d.gup, VA + 0x1000, true)).requestable);
    assert!(fault_of(ep1.translate(&d.gup, VA + 0x2000, false)).requestable);
    // The group outstanding before the FAILURE can still be answered.
    assert_eq!(d.status(&page_resp(1, 0, u32::from(g2), 0)), st::OK);
    assert_eq!(ep0.response(g2), Some(Response::Success));
    assert_eq!(d.status(&attach_table(1, 0, PML4, tf::PRI)), st::OK);
    assert!(fault_of(ep0.translate(&d.gup, VA + 0x2000, false)).requestable);
    // An ATTACH_TABLE without PRI: not requestable, whatever the past.
    assert_eq!(d.status(&attach_table(1, 0, PML4, 0)), st::OK);
    assert!(!fault_of(ep0.translate(&d.gup, VA + 0x2000, false)).requestable);

    let c2 = d.counters();
    assert_eq!(c2.page_requests - c0.page_requests, 4);
    assert_eq!(
        [0, 1, 2].map(|i| c2.responses[i] - c0.responses[i]),
        [2, 1, 1]
    );
    assert_eq!(c2.stray_responses - c0.stray_responses, 4);
    assert_eq!(c2.events_written - c0.events_written, 4);
    // Group ids: unique among an endpoint's outstanding requests, even
    // after many.
    let f = fault_of(ep0.translate(&d.gup, VA + 0x2000, false));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..300 {
        assert!(seen.insert(ep0.page_request(&f)));
    }
    for g in seen {
        ep0.abandon(g);
    }
}

/// The model of a MAP domain: page -> (mapping id, phys page, flags).
type Model = BTreeMap<u64, (u64, u64, u32)>;

#[test]
fn random_map_unmap_against_a_page_model() {
    let mut d = Dev::new(all_features());
    assert_eq!(d.status(&attach(7, 0)), st::OK);
    let ep = d.ep(0);
    let gup = Arc::clone(&d.gup);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model = Model::new();
    const PAGES: u64 = 96;
    let mut ids = 0u64;
    let mut counts = [0u64; 4]; // map ok, map inval, unmap ok, unmap range
    for op in 0..500 {
        let s = rng.below(PAGES);
        let n = 1 + rng.below(8);
        let e = (s + n - 1).min(PAGES - 1);
        if rng.below(3) < 2 {
            let phys = DATA / PAGE + rng.below(2048);
            let flags = 1 + rng.below(3) as u32;
            let want = if (s..=e).any(|p| model.contains_key(&p)) {
                st::INVAL
            } else {
                st::OK
            };
            let got = d.status(&map(7, s * PAGE, (e + 1) * PAGE - 1, phys * PAGE, flags));
            assert_eq!(got, want, "op {op}: MAP pages {s}..={e}");
            if want == st::OK {
                ids += 1;
                for (k, p) in (s..=e).enumerate() {
                    model.insert(p, (ids, phys + k as u64, flags));
                }
                counts[0] += 1;
            } else {
                counts[1] += 1;
            }
        } else {
            let touched: std::collections::BTreeSet<u64> =
                (s..=e).filter_map(|p| model.get(&p).map(|m| m.0)).collect();
            let split = model
                .iter()
                .any(|(p, m)| touched.contains(&m.0) && !(s..=e).contains(p));
            let want = if split { st::RANGE } else { st::OK };
            let got = d.status(&unmap(7, s * PAGE, (e + 1) * PAGE - 1));
            assert_eq!(got, want, "op {op}: UNMAP pages {s}..={e}");
            if !split {
                model.retain(|_, m| !touched.contains(&m.0));
                counts[2] += 1;
            } else {
                counts[3] += 1;
            }
        }
        // Random translations against the model.
        for _ in 0..6 {
            let iova = rng.below(PAGES * PAGE);
            let write = rng.below(2) == 1;
            let need = if write { W } else { R };
            let got = ep.translate(&gup, iova, write);
            match model.get(&(iova / PAGE)) {
                Some(&(_, phys, fl)) if fl & need != 0 => {
                    assert_eq!(got, Ok(phys * PAGE + iova % PAGE), "op {op}: {iova:#x}")
                }
                _ => assert_eq!(
                    fault_of(got).reason,
                    FaultReason::Mapping,
                    "op {op}: {iova:#x}"
                ),
            }
        }
        // A random multi-page read pin: one pin per run of a mapping, the
        // gpas page by page as the model says, up to the first refusal.
        let iova = rng.below(PAGES * PAGE);
        let len = 1 + rng.below(3 * PAGE);
        let (pins, res) = pin(&ep, &gup, iova, len.min(PAGES * PAGE - iova), false);
        let mut want = Vec::new();
        let mut at = iova;
        let end = iova + len.min(PAGES * PAGE - iova);
        let mut ok = true;
        while at < end {
            let Some(&(id, phys, fl)) = model.get(&(at / PAGE)) else {
                ok = false;
                break;
            };
            if fl & R == 0 {
                ok = false;
                break;
            }
            let chunk = (PAGE - at % PAGE).min(end - at);
            let gpa = phys * PAGE + at % PAGE;
            match want.last_mut() {
                Some((last_id, g0, l)) if *last_id == id && *g0 + *l == gpa => *l += chunk,
                _ => want.push((id, gpa, chunk)),
            }
            at += chunk;
        }
        let want: Vec<(u64, u64)> = want.into_iter().map(|(_, g, l)| (g, l)).collect();
        assert_eq!(pins, want, "op {op}: pin {iova:#x}+{len:#x}");
        match res {
            Ok(()) => assert!(ok, "op {op}"),
            Err(DmaError::Fault(f)) => {
                assert!(!ok, "op {op}");
                assert_eq!(f.address, at, "op {op}: the first refused byte");
            }
            Err(e) => panic!("op {op}: {e}"),
        }
    }
    assert!(
        counts.iter().all(|&c| c > 20),
        "every outcome ran: {counts:?}"
    );
    assert_eq!(gup.stats().pins_outstanding, 0);
    let c = d.counters();
    assert_eq!(c.by_type[3] + c.by_type[4], 500);
    assert_eq!(c.failed, counts[1] + counts[3]);
}
