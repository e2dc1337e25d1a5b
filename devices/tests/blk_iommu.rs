// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-blk behind the virtio-iommu (docs/guest-va-dma.md, "The
//! page-request flow" and "Rings"): a disk whose every DMA address is an
//! I/O virtual address translated through its endpoint's domain.
//!
//! The rig ([`Sva`]) is an IOMMU and a disk, each behind its own
//! virtio-mmio transport with its worker thread, in one guest memory. The
//! test is the guest: it builds x86 4-level page tables (user, RW, A/D
//! clear), attaches them with ATTACH_TABLE, drives the disk on
//! guest-virtual buffers, reads the IOMMU's event queue (fault reports and
//! page requests) and answers page requests with PAGE_RESP, both through
//! the IOMMU's queues. One test drives the disk's `BlockQueue::process`
//! synchronously instead of its thread ([`Sva::new_sync`]).
//!
//! The I/O virtual window is one page table's 2M at `1 << 39` (PML4 index
//! 1), far outside guest RAM, so a request that works proves translation.
//! Frames are handed out downwards, so pages contiguous in the window are
//! not contiguous (nor in order) in guest-physical memory.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::iommu::*;
use common::*;
use devices::virtio::blk::worker::MAX_PAGE_REQUESTS;
use devices::virtio::blk::{Block, BlockCounters, BlockQueue, BlockStats, ErrorClass};
use devices::virtio::iommu::domain::{table_flags as tf, MAP_READ, MAP_WRITE};
use devices::virtio::iommu::event::{flags as ev, reason, RECORD_LEN};
use devices::virtio::iommu::request::status as st;
use devices::virtio::iommu::{Iommu, IommuCounters, IommuHandle};
use devices::virtio::mmio::*;
use devices::virtio::status::*;
use devices::virtio::{Activation, Interrupt, VirtioDevice, F_ACCESS_PLATFORM, F_VERSION_1};
use guest_mm::gup::{Fallback, GuestMemory, Gup, GupCounters, RegionOptions};
use guest_mm::paging::entry::{PTE_A, PTE_D, PTE_P, PTE_RW, PTE_US};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MAXPHYADDR: u8 = 46;
/// The disk's endpoint id.
const EP: u32 = 0;
/// The domain the tests attach the disk to.
const DOM: u32 = 1;

/// The IOMMU's event queue rings (its request queue uses the standard
/// [`DESC`], [`AVAIL`], [`USED`]).
const EDESC: u64 = 0x5000;
const EAVAIL: u64 = 0x7000;
const EUSED: u64 = 0x8000;
/// An IOMMU request's readable bytes and its tail.
const IREQ: u64 = 0x1_0000;
const ITAIL: u64 = 0x1_1000;
/// Event buffers: 64 bytes for each event-queue descriptor index.
const EVBUF: u64 = 0x2_0000;
/// Event buffers the driver keeps posted.
const EV_POSTED: usize = 128;

/// The page tables.
const PML4: u64 = 0x10_0000;
const PDPT: u64 = 0x10_1000;
const PD: u64 = 0x10_2000;
const PT: u64 = 0x10_3000;
/// Entries of the upper levels: present, writable, user.
const UPPER: u64 = PTE_P | PTE_RW | PTE_US;
/// A present, writable user page with Accessed and Dirty clear.
const RW_USER: u64 = PTE_P | PTE_RW | PTE_US;

/// The I/O virtual window (2M).
const VA: u64 = 1 << 39;
/// The disk's rings, one page each.
const RING_DESC: u64 = VA;
const RING_AVAIL: u64 = VA + 0x1000;
const RING_USED: u64 = VA + 0x2000;
/// Request headers (32 bytes per slot; a page the device only reads).
const HDRS: u64 = VA + 0x1_0000;
/// Status bytes (one per slot; a page the device writes).
const STATS: u64 = VA + 0x1_1000;
/// Data buffers from here.
const DATA_VA: u64 = VA + 0x10_0000;
/// Frames for the window are handed out downwards from here.
const FRAMES_TOP: u64 = 0x180_0000;

/// Disk size in sectors.
const SECTORS: u64 = 512;

/// The disk side: its transport (worker thread) or its queue driven here.
enum Disk {
    /// Not placed yet (while the rig is built).
    None,
    Mmio(Regs),
    Sync(Box<BlockQueue>),
}

/// An IOMMU and a disk behind it (see the module comment).
struct Sva {
    gup: Arc<Gup>,
    mem: GuestMemory,
    iommu: Regs,
    handle: IommuHandle,
    /// The IOMMU's request and event queues (driver side).
    rq: Driver,
    eq: Driver,
    disk: Disk,
    /// The disk's queue (driver side; its rings at their guest-physical
    /// addresses, which only the test knows: the device is told the
    /// window's addresses).
    bq: Driver,
    file: TestFile,
    stats: Arc<BlockStats>,
    /// Window page -> its frame (present in the table or not).
    frames: HashMap<u64, u64>,
    next_frame: u64,
    /// Event records read so far.
    records: u64,
}

fn mmio(device: Box<dyn VirtioDevice>, gup: &Arc<Gup>) -> Regs {
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    Regs {
        t: MmioTransport::new(device, memory(gup), Arc::clone(gup), irq).expect("transport"),
    }
}

/// The disk's driver features: VERSION_1, FLUSH, and ACCESS_PLATFORM.
fn disk_features() -> u64 {
    (1u64 << F_VERSION_1) | (1 << F_ACCESS_PLATFORM) | (1 << 9)
}

impl Sva {
    /// The rig with the disk behind its transport (index `index`, so its
    /// worker thread is `virtio-blk<index>`), not started yet; the window's
    /// tables are built, the rings mapped, nothing attached.
    fn new(index: usize, timeout: Duration) -> Self {
        let (mut s, block) = Sva::base(index, timeout);
        s.disk = Disk::Mmio(mmio(Box::new(block), &s.gup));
        s
    }

    /// The rig with the disk's queue built from the window's ring
    /// addresses (translated now: `setup` sets the domain up first) and
    /// processed by the test ([`Sva::process`]), not a thread.
    fn new_sync(setup: impl FnOnce(&mut Sva)) -> Self {
        let (mut s, block) = Sva::base(0, Duration::from_secs(10));
        setup(&mut s);
        let mut q = Queue::new(QSIZE).expect("queue");
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(RING_DESC as u32), Some((RING_DESC >> 32) as u32));
        q.set_avail_ring_address(Some(RING_AVAIL as u32), Some((RING_AVAIL >> 32) as u32));
        q.set_used_ring_address(Some(RING_USED as u32), Some((RING_USED >> 32) as u32));
        q.set_ready(true);
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let bq = block
            .queue_for(Activation {
                features: disk_features(),
                queues: vec![q],
                notifiers: Vec::new(),
                interrupt: Arc::new(Interrupt::new(irq)),
                mem: s.mem.clone(),
                gup: Arc::clone(&s.gup),
            })
            .expect("queue_for: the rings translate");
        s.disk = Disk::Sync(Box::new(bq));
        s
    }

    /// [`Sva::new`] with the window's tables attached (with PRI) and the
    /// disk started.
    fn started(index: usize, timeout: Duration) -> Self {
        let mut s = Sva::new(index, timeout);
        assert_eq!(s.attach_table(tf::PRI), st::OK);
        s.start_disk_ok();
        s
    }

    /// The IOMMU started, the tables and rings set up, and the disk device
    /// (not placed yet).
    fn base(index: usize, timeout: Duration) -> (Sva, Block) {
        let gup = engine(RegionOptions::default());
        let mem = memory(&gup);
        let (iommu, handle) = Iommu::new(vec![EP], MAXPHYADDR).expect("iommu");
        let file = TestFile::new("sva", SECTORS, 23 + index as u64);
        let mut cfg = block_config(&file, false, false);
        cfg.index = index;
        cfg.endpoint = Some(handle.endpoint(EP).expect("endpoint 0"));
        cfg.page_request_timeout = timeout;
        let block = Block::new(&cfg).expect("block device");
        let stats = block.stats();
        let iommu = mmio(Box::new(iommu), &gup);
        let mut s = Sva {
            rq: Driver::standard(mem.clone()),
            eq: Driver::new(mem.clone(), QSIZE, EDESC, EAVAIL, EUSED),
            bq: Driver::standard(mem.clone()),
            mem,
            gup,
            iommu,
            handle,
            disk: Disk::None,
            file,
            stats,
            frames: HashMap::new(),
            next_frame: FRAMES_TOP,
            records: 0,
        };
        s.start_iommu();
        s.build_tables();
        let desc = s.map_page(RING_DESC, RW_USER);
        let avail = s.map_page(RING_AVAIL, RW_USER);
        let used = s.map_page(RING_USED, RW_USER);
        s.bq = Driver::new(s.mem.clone(), QSIZE, desc, avail, used);
        s.map_page(HDRS, RW_USER);
        s.map_page(STATS, RW_USER);
        (s, block)
    }

    /// The IOMMU through its whole driver sequence, with every feature it
    /// offers, and [`EV_POSTED`] event buffers posted.
    fn start_iommu(&mut self) {
        self.rq = Driver::standard(self.mem.clone());
        self.eq = Driver::new(self.mem.clone(), QSIZE, EDESC, EAVAIL, EUSED);
        let r = &mut self.iommu;
        assert!(
            r.negotiate(IommuHandle::offered_features()),
            "IOMMU FEATURES_OK refused"
        );
        for (i, drv) in [&self.rq, &self.eq].into_iter().enumerate() {
            r.w(QUEUE_SEL, i as u32);
            r.ready_queue(drv);
        }
        assert_eq!(
            r.driver_ok(),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
            "the IOMMU started"
        );
        for _ in 0..EV_POSTED {
            self.post_event();
        }
        self.iommu.w(QUEUE_NOTIFY, 1);
    }

    fn post_event(&mut self) {
        let head = self.eq.next_desc;
        let at = EVBUF + 64 * u64::from(head);
        self.eq.write(at, &[0xa5; 64]);
        self.eq.submit(&[w(at, 64)]);
    }

    // ---- page tables -------------------------------------------------

    fn put64(&self, gpa: u64, v: u64) {
        self.mem
            .write_obj(v, GuestAddress(gpa))
            .expect("page-table entry in RAM");
    }

    fn get64(&self, gpa: u64) -> u64 {
        self.mem
            .read_obj(GuestAddress(gpa))
            .expect("page-table entry in RAM")
    }

    /// PML4[1] -> PDPT[0] -> PD[0] -> PT: the window; every PT entry not
    /// present.
    fn build_tables(&self) {
        for t in [PML4, PDPT, PD, PT] {
            self.mem
                .write_slice(&[0u8; 4096], GuestAddress(t))
                .expect("table page");
        }
        self.put64(PML4 + 8, PDPT | UPPER);
        self.put64(PDPT, PD | UPPER);
        self.put64(PD, PT | UPPER);
    }

    fn pte_addr(va: u64) -> u64 {
        assert!(
            (VA..VA + 2 * MIB).contains(&va),
            "{va:#x} outside the window"
        );
        PT + 8 * ((va - VA) / PAGE)
    }

    /// The page's frame, allocated on first use.
    fn frame(&mut self, va: u64) -> u64 {
        let page = va & !(PAGE - 1);
        if let Some(&f) = self.frames.get(&page) {
            return f;
        }
        self.next_frame -= PAGE;
        let f = self.next_frame;
        self.mem
            .write_slice(&[0u8; 4096], GuestAddress(f))
            .expect("frame");
        self.frames.insert(page, f);
        f
    }

    /// Maps the page of `va` to a fresh frame with `flags`; returns the frame.
    fn map_page(&mut self, va: u64, flags: u64) -> u64 {
        let f = self.frame(va);
        self.put64(Sva::pte_addr(va), f | flags);
        f
    }

    /// A page the guest maps lazily: its frame exists (the test fills it),
    /// its entry is not present.
    fn lazy_page(&mut self, va: u64) -> u64 {
        let f = self.frame(va);
        self.put64(Sva::pte_addr(va), 0);
        f
    }

    /// The guest maps a lazy page of [`Sva::lazy_page`]: its entry
    /// present, writable, user, pointing at its frame.
    fn make_present(&mut self, va: u64) {
        self.put64(Sva::pte_addr(va), self.frames[&va] | RW_USER);
    }

    fn pte(&self, va: u64) -> u64 {
        self.get64(Sva::pte_addr(va))
    }

    /// Guest bytes at a window address (through the test's own mapping).
    fn read_va(&mut self, va: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut at = va;
        while out.len() < len {
            let n = ((PAGE - at % PAGE) as usize).min(len - out.len());
            let gpa = self.frame(at) + at % PAGE;
            out.extend_from_slice(&self.bq.read(gpa, n));
            at += n as u64;
        }
        out
    }

    fn write_va(&mut self, va: u64, data: &[u8]) {
        let mut at = va;
        let mut done = 0;
        while done < data.len() {
            let n = ((PAGE - at % PAGE) as usize).min(data.len() - done);
            let gpa = self.frame(at) + at % PAGE;
            self.bq.write(gpa, &data[done..done + n]);
            at += n as u64;
            done += n;
        }
    }

    // ---- the IOMMU's queues ----------------------------------------------

    /// Runs one IOMMU request; returns its status.
    fn iommu_req(&mut self, req: &B) -> u8 {
        self.rq.write(IREQ, &req.0);
        self.rq.write(ITAIL, &[0xa5; 4]);
        let head = self.rq.submit(&[r(IREQ, req.0.len() as u64), w(ITAIL, 4)]);
        self.iommu.w(QUEUE_NOTIFY, 0);
        let used = wait_used(&mut self.rq, 1);
        assert_eq!(used[0], (u32::from(head), 4), "IOMMU request used entry");
        self.rq.read(ITAIL, 1)[0]
    }

    /// ATTACH_TABLE of the window's tables to [`DOM`] with `flags`.
    fn attach_table(&mut self, flags: u64) -> u8 {
        self.iommu_req(&attach_table(DOM, EP, PML4, flags))
    }

    fn attach(&mut self, domain: u32) -> u8 {
        self.iommu_req(&attach(domain, EP))
    }

    fn detach(&mut self, domain: u32) -> u8 {
        self.iommu_req(&detach(domain, EP))
    }

    /// MAP of `[start, end]` (inclusive) to `phys`.
    fn map(&mut self, domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> u8 {
        self.iommu_req(&map(domain, start, end, phys, flags))
    }

    /// PAGE_RESP for `group` of [`EP`] in [`DOM`].
    fn page_resp(&mut self, group: u16, code: u16) -> u8 {
        self.iommu_req(&page_resp(DOM, EP, u32::from(group), code))
    }

    /// The next event record (waits for it), its buffer posted again.
    fn record(&mut self) -> Record {
        let (head, len) = wait_used(&mut self.eq, 1)[0];
        let b = self.eq.read(EVBUF + 64 * u64::from(head), RECORD_LEN);
        let rec = decode(&b);
        assert_eq!(len as usize, RECORD_LEN, "used length of {rec:?}");
        assert_eq!(rec.endpoint, EP, "{rec:?}");
        assert_eq!(rec.pasid, 0, "{rec:?}");
        self.records += 1;
        self.post_event();
        self.iommu.w(QUEUE_NOTIFY, 1);
        rec
    }

    /// A page request for the page of `va` with `access` (ev::READ or
    /// ev::WRITE); returns its group.
    fn expect_page_request(&mut self, va: u64, access: u32) -> u16 {
        let rec = self.record();
        assert_eq!(
            rec.flags,
            ev::PAGE_REQUEST | ev::LAST | ev::ADDRESS | access,
            "{rec:?}"
        );
        assert_eq!(rec.reason, reason::MAPPING, "{rec:?}");
        assert_eq!(rec.address, va & !(PAGE - 1), "page request for {va:#x}");
        rec.group
    }

    /// A fault report for `address` with `access` and `why`.
    fn expect_fault_report(&mut self, address: u64, access: u32, why: u8) {
        let rec = self.record();
        assert_eq!(rec.flags, ev::ADDRESS | access, "a fault report: {rec:?}");
        assert_eq!(rec.reason, why, "{rec:?}");
        assert_eq!(rec.group, 0, "{rec:?}");
        assert_eq!(rec.address, address, "{rec:?}");
    }

    /// Every record the IOMMU's counters say was sent has been read, and
    /// no other shows up.
    fn no_more_records(&mut self) {
        let c = self.handle.counters();
        assert_eq!(
            self.records,
            c.page_requests + c.fault_reports,
            "records read vs sent: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            self.eq.used_idx(),
            self.eq.used_seen,
            "an unexpected event record"
        );
    }

    fn iommu_counters(&self) -> IommuCounters {
        self.handle.counters()
    }

    // ---- the disk ------------------------------------------------------

    fn disk_regs(&mut self) -> &mut Regs {
        match &mut self.disk {
            Disk::Mmio(r) => r,
            _ => panic!("the disk of this rig has no transport"),
        }
    }

    /// The disk's driver sequence with `features`, the rings at the
    /// window's addresses. Returns the Status register, or `None` when
    /// FEATURES_OK was refused.
    fn start_disk(&mut self, features: u64) -> Option<u32> {
        self.start_disk_at(features, RING_DESC, RING_AVAIL, RING_USED)
    }

    /// [`Sva::start_disk`] telling the device the rings are at the I/O
    /// virtual addresses `desc`, `avail`, `used` (`self.bq` keeps its
    /// guest-physical ones, its rings zeroed again).
    fn start_disk_at(&mut self, features: u64, desc: u64, avail: u64, used: u64) -> Option<u32> {
        self.bq = Driver::new(
            self.mem.clone(),
            QSIZE,
            self.bq.desc,
            self.bq.avail,
            self.bq.used,
        );
        let r = self.disk_regs();
        if !r.negotiate(features) {
            return None;
        }
        r.w(QUEUE_SEL, 0);
        r.w(QUEUE_NUM, u32::from(QSIZE));
        r.set_rings(desc, avail, used);
        r.w(QUEUE_READY, 1);
        Some(r.driver_ok())
    }

    /// [`Sva::start_disk`] with [`disk_features`], asserting it started.
    fn start_disk_ok(&mut self) {
        let s = self.start_disk(disk_features());
        assert_eq!(
            s,
            Some(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
            "the disk started (no DEVICE_NEEDS_RESET)"
        );
    }

    /// Publishes a chain and tells the device (a notify, or nothing for
    /// the synchronous queue, which runs on [`Sva::process`]).
    fn submit(&mut self, descs: &[D]) -> u16 {
        let head = self.bq.submit(descs);
        if let Disk::Mmio(r) = &mut self.disk {
            r.notify();
        }
        head
    }

    /// Runs the synchronous queue once.
    fn process(&mut self) {
        match &mut self.disk {
            Disk::Sync(q) => {
                q.process();
            }
            _ => panic!("the disk of this rig has its thread"),
        }
    }

    /// A read (IN) of `len` bytes at `sector` into `data` (window address);
    /// request slot `slot` holds the header and the status. Returns the head.
    fn read_req(&mut self, slot: u64, sector: u64, data: u64, len: u64) -> u16 {
        self.write_va(HDRS + 32 * slot, &header(T_IN, sector));
        self.write_va(STATS + slot, &[0xff]);
        self.submit(&[r(HDRS + 32 * slot, 16), w(data, len), w(STATS + slot, 1)])
    }

    /// A write (OUT) of `len` bytes from `data` to `sector`.
    fn write_req(&mut self, slot: u64, sector: u64, data: u64, len: u64) -> u16 {
        self.write_va(HDRS + 32 * slot, &header(T_OUT, sector));
        self.write_va(STATS + slot, &[0xff]);
        self.submit(&[r(HDRS + 32 * slot, 16), r(data, len), w(STATS + slot, 1)])
    }

    fn status(&mut self, slot: u64) -> u8 {
        self.read_va(STATS + slot, 1)[0]
    }

    /// Waits for one used entry; checks its head and length.
    fn used(&mut self, head: u16, len: u32) {
        let u = wait_used(&mut self.bq, 1);
        assert_eq!(u[0], (u32::from(head), len), "used entry (head, length)");
    }

    /// No used entry beyond those consumed.
    fn nothing_used(&self) {
        assert_eq!(self.bq.used_idx(), self.bq.used_seen, "a request completed");
    }

    fn counters(&self) -> BlockCounters {
        self.stats.snapshot()
    }
}

/// `after - before` of the GUP path counters.
fn gup_delta(a: &GupCounters, b: &GupCounters) -> (u64, u64, u64, u64) {
    (
        b.fast_hits - a.fast_hits,
        b.slow_calls - a.slow_calls,
        b.fallback(Fallback::AccessedDirty) - a.fallback(Fallback::AccessedDirty),
        b.touched - a.touched,
    )
}

/// Accessed and Dirty of an entry.
fn ad(e: u64) -> (bool, bool) {
    (e & PTE_A != 0, e & PTE_D != 0)
}

#[test]
fn features_ok_needs_access_platform() {
    let mut s = Sva::new(10, Duration::from_secs(10));
    assert_eq!(s.attach_table(tf::PRI), st::OK);
    let offered = s.disk_regs().device_features();
    assert_ne!(
        offered & (1 << F_ACCESS_PLATFORM),
        0,
        "offers ACCESS_PLATFORM"
    );
    // A disk that is not behind the IOMMU does not offer it.
    let file = TestFile::new("plain", 8, 1);
    let plain = Block::new(&block_config(&file, false, false)).expect("block");
    assert_eq!(plain.features() & (1 << F_ACCESS_PLATFORM), 0);
    assert_eq!(plain.required_features(), 0);

    let without = disk_features() & !(1 << F_ACCESS_PLATFORM);
    assert_eq!(
        s.start_disk(without),
        None,
        "FEATURES_OK without ACCESS_PLATFORM"
    );
    assert_eq!(
        s.disk_regs().r(STATUS),
        ACKNOWLEDGE | DRIVER,
        "FEATURES_OK reads back clear"
    );
    s.start_disk_ok();
    // And it works: one read through the window.
    s.map_page(DATA_VA, RW_USER);
    let head = s.read_req(0, 3, DATA_VA, 512);
    s.used(head, 513);
    assert_eq!(s.status(0), S_OK);
    assert_eq!(s.read_va(DATA_VA, 512), s.file.read(3 * 512, 512));
}

#[test]
fn rings_and_present_buffers_through_the_page_tables() {
    let mut s = Sva::new(11, Duration::from_secs(10));
    assert_eq!(s.attach_table(tf::PRI | tf::NXE), st::OK);
    // The rings' frames are neither at their window addresses (outside
    // RAM) nor in window order.
    assert!(s.bq.desc > s.bq.avail && s.bq.avail > s.bq.used);
    let g0 = s.gup.stats();
    s.start_disk_ok();
    let g = s.gup.stats();
    assert_eq!(
        g.longterm_pages - g0.longterm_pages,
        3,
        "three ring pages held long-term"
    );
    // The device walked (and touched) the tables for the rings: Accessed on
    // every level, Dirty only on the used ring it writes.
    for (what, e) in [
        ("PML4[1]", s.get64(PML4 + 8)),
        ("PDPT[0]", s.get64(PDPT)),
        ("PD[0]", s.get64(PD)),
    ] {
        assert!(ad(e).0, "{what} Accessed after the ring walk: {e:#x}");
    }
    assert_eq!(ad(s.pte(RING_DESC)), (true, false), "descriptor table PTE");
    assert_eq!(ad(s.pte(RING_AVAIL)), (true, false), "available ring PTE");
    assert_eq!(ad(s.pte(RING_USED)), (true, true), "used ring PTE");

    // A write (the device reads two pages) of fresh data.
    let wdata = DATA_VA;
    s.map_page(wdata, RW_USER);
    s.map_page(wdata + PAGE, RW_USER);
    let bytes = pattern(100, 2 * PAGE as usize);
    s.write_va(wdata, &bytes);
    let g0 = s.gup.stats();
    let head = s.write_req(0, 8, wdata, 2 * PAGE);
    s.used(head, 1);
    let (_, slow, ad_fallbacks, touched) = gup_delta(&g0, &s.gup.stats());
    assert_eq!(s.status(0), S_OK);
    assert_eq!(
        s.file.read(8 * 512, bytes.len()),
        bytes,
        "written to the disk"
    );
    assert!(
        slow >= 1 && ad_fallbacks >= 1,
        "A/D-clear pages take the slow path"
    );
    // Header page, two data pages, status page.
    assert!(
        touched >= 4,
        "the slow path set A/D on 4 pages, touched {touched}"
    );
    assert_eq!(ad(s.pte(HDRS)), (true, false), "header page: read only");
    assert_eq!(ad(s.pte(wdata)), (true, false), "data read by the device");
    assert_eq!(
        ad(s.pte(wdata + PAGE)),
        (true, false),
        "data read by the device"
    );
    assert_eq!(ad(s.pte(STATS)), (true, true), "status page written");
    // The same pages again: the fast path serves everything.
    let bytes = pattern(101, 2 * PAGE as usize);
    s.write_va(wdata, &bytes);
    let g0 = s.gup.stats();
    let head = s.write_req(0, 8, wdata, 2 * PAGE);
    s.used(head, 1);
    let (fast, slow, _, touched) = gup_delta(&g0, &s.gup.stats());
    assert_eq!(s.status(0), S_OK);
    assert_eq!(s.file.read(8 * 512, bytes.len()), bytes);
    assert_eq!((slow, touched), (0, 0), "A/D set: no slow path");
    assert!(fast >= 3, "fast hits: header, data, status ({fast})");

    // A read (the device writes three pages, not contiguous in RAM).
    let rdata = DATA_VA + 0x1_0000;
    let frames: Vec<u64> = (0..3)
        .map(|i| s.map_page(rdata + i * PAGE, RW_USER))
        .collect();
    assert!(frames[0] > frames[1] && frames[1] > frames[2]);
    s.write_va(rdata, &[0xee; 3 * 4096]);
    clear_dirty(&s.gup);
    let g0 = s.gup.stats();
    let head = s.read_req(1, 40, rdata, 3 * PAGE);
    s.used(head, 3 * 4096 + 1);
    let (_, slow, ad_fallbacks, _) = gup_delta(&g0, &s.gup.stats());
    assert_eq!(s.status(1), S_OK);
    assert_eq!(s.read_va(rdata, 3 * 4096), s.file.read(40 * 512, 3 * 4096));
    assert!(slow >= 1 && ad_fallbacks >= 1);
    for (i, &f) in frames.iter().enumerate() {
        let va = rdata + i as u64 * PAGE;
        assert_eq!(
            ad(s.pte(va)),
            (true, true),
            "data page {i} written by the device"
        );
        assert!(dirty(&s.gup, f), "frame {f:#x} marked in the dirty bitmap");
    }
    let g0 = s.gup.stats();
    let head = s.read_req(1, 48, rdata, 3 * PAGE);
    s.used(head, 3 * 4096 + 1);
    let (_, slow, _, _) = gup_delta(&g0, &s.gup.stats());
    assert_eq!(slow, 0, "second read: fast path only");
    assert_eq!(s.read_va(rdata, 3 * 4096), s.file.read(48 * 512, 3 * 4096));

    let c = s.counters();
    assert_eq!(
        (c.reads, c.writes, c.errors_total(), c.parked),
        (2, 2, 0, 0),
        "{c:?}"
    );
    let ic = s.iommu_counters();
    assert_eq!((ic.page_requests, ic.fault_reports), (0, 0), "{ic:?}");
    s.no_more_records();
    // Reset: the ring pins go, nothing stays pinned.
    s.disk_regs().w(STATUS, 0);
    let g = s.gup.stats();
    assert_eq!((g.pins_outstanding, g.longterm_pages), (0, 0), "{g:?}");
}

#[test]
fn rings_that_do_not_translate_need_a_reset() {
    let mut s = Sva::new(12, Duration::from_secs(10));
    // Not attached at DRIVER_OK: DOMAIN fault on the first ring.
    let st0 = s.start_disk(disk_features()).expect("FEATURES_OK");
    assert_ne!(st0 & DEVICE_NEEDS_RESET, 0, "status {st0:#x}");
    s.expect_fault_report(RING_DESC, ev::READ, reason::DOMAIN);

    // Attached, but the used ring's page is not mapped: a fault report
    // (never a page request, even with PRI), and DEVICE_NEEDS_RESET.
    assert_eq!(s.attach_table(tf::PRI), st::OK);
    s.put64(Sva::pte_addr(RING_USED), 0);
    let st1 = s.start_disk(disk_features()).expect("FEATURES_OK");
    assert_ne!(st1 & DEVICE_NEEDS_RESET, 0, "status {st1:#x}");
    s.expect_fault_report(RING_USED, ev::WRITE, reason::MAPPING);
    assert_eq!(s.iommu_counters().page_requests, 0);
    let g = s.gup.stats();
    assert_eq!(
        (g.pins_outstanding, g.longterm_pages),
        (0, 0),
        "no ring pins left: {g:?}"
    );

    // A read-only used ring cannot be written either.
    let used = s.frames[&RING_USED];
    s.put64(Sva::pte_addr(RING_USED), used | PTE_P | PTE_US);
    let st2 = s.start_disk(disk_features()).expect("FEATURES_OK");
    assert_ne!(st2 & DEVICE_NEEDS_RESET, 0, "status {st2:#x}");
    s.expect_fault_report(RING_USED, ev::WRITE, reason::MAPPING);

    // Mapped: the next start works.
    s.put64(Sva::pte_addr(RING_USED), used | RW_USER);
    s.start_disk_ok();
    s.map_page(DATA_VA, RW_USER);
    let head = s.read_req(0, 1, DATA_VA, 1024);
    s.used(head, 1025);
    assert_eq!(s.status(0), S_OK);
    assert_eq!(s.read_va(DATA_VA, 1024), s.file.read(512, 1024));
    s.no_more_records();
}

#[test]
fn lazily_mapped_buffers_are_requested_and_resumed() {
    let mut s = Sva::started(13, Duration::from_secs(10));

    // A read into a page that is not mapped yet.
    let lazy = DATA_VA;
    s.lazy_page(lazy);
    s.write_va(lazy, &[0xee; 4096]);
    let parked = s.read_req(0, 4, lazy, PAGE);
    let g_lazy = s.expect_page_request(lazy, ev::WRITE);
    s.nothing_used();
    // Meanwhile another request completes.
    let present = DATA_VA + 0x1_0000;
    s.map_page(present, RW_USER);
    let bytes = pattern(7, 1024);
    s.write_va(present, &bytes);
    let other = s.write_req(1, 100, present, 1024);
    s.used(other, 1);
    assert_eq!(s.status(1), S_OK);
    assert_eq!(s.file.read(100 * 512, 1024), bytes);
    assert_eq!(s.status(0), 0xff, "the parked request has no status yet");
    // (Counted before the worker took the second request.)
    assert_eq!(s.counters().parked, 1);
    // The guest maps the page and answers.
    s.make_present(lazy);
    assert_eq!(s.page_resp(g_lazy, 0), st::OK);
    s.used(parked, 4097);
    assert_eq!(s.status(0), S_OK);
    assert_eq!(s.read_va(lazy, 4096), s.file.read(4 * 512, 4096));
    assert_eq!(ad(s.pte(lazy)), (true, true));

    // A write from three unmapped pages: one page request per page, in
    // order, each after the previous answer.
    let three = DATA_VA + 0x2_0000;
    for i in 0..3 {
        s.lazy_page(three + i * PAGE);
    }
    let bytes = pattern(8, 3 * 4096);
    s.write_va(three, &bytes);
    let head = s.write_req(2, 200, three, 3 * PAGE);
    let mut groups = vec![g_lazy];
    for i in 0..3 {
        let va = three + i * PAGE;
        let g = s.expect_page_request(va, ev::READ);
        assert!(!groups.contains(&g), "group {g} reused while outstanding");
        groups.push(g);
        s.nothing_used();
        s.make_present(va);
        assert_eq!(s.page_resp(g, 0), st::OK);
    }
    s.used(head, 1);
    assert_eq!(s.status(2), S_OK);
    assert_eq!(s.file.read(200 * 512, bytes.len()), bytes);
    for i in 0..3 {
        assert_eq!(
            ad(s.pte(three + i * PAGE)),
            (true, false),
            "page {i} only read"
        );
    }

    let c = s.counters();
    assert_eq!(
        (c.parked, c.resumed, c.reads, c.writes, c.errors_total()),
        (4, 4, 1, 2, 0),
        "{c:?}"
    );
    let ic = s.iommu_counters();
    assert_eq!(ic.page_requests, 4, "{ic:?}");
    assert_eq!(ic.responses, [4, 0, 0], "{ic:?}");
    assert_eq!(
        (ic.fault_reports, ic.timeouts, ic.stray_responses),
        (0, 0, 0)
    );
    s.no_more_records();
    // An answer for a group already answered: NOENT.
    assert_eq!(s.page_resp(g_lazy, 0), st::NOENT);
    let g = s.gup.stats();
    assert_eq!(g.pins_outstanding, 3, "only the ring pins: {g:?}");
}

#[test]
fn refused_page_requests_fail_the_request() {
    let mut s = Sva::started(14, Duration::from_secs(10));
    let translation = |s: &Sva| s.counters().error(ErrorClass::Translation);

    // INVALID: IOERR, and a fault report for the page.
    let a = DATA_VA;
    s.lazy_page(a);
    let head = s.read_req(0, 0, a + 0x200, 512);
    let g = s.expect_page_request(a, ev::WRITE);
    assert_eq!(s.page_resp(g, 1), st::OK);
    s.used(head, 1);
    assert_eq!(s.status(0), S_IOERR);
    // The report names the exact address (virtio 1.2 5.13.6.9), the page
    // request only its page.
    s.expect_fault_report(a + 0x200, ev::WRITE, reason::MAPPING);
    assert_eq!(translation(&s), 1);

    // Page requests go on after INVALID. FAILURE: IOERR and a report...
    let b = DATA_VA + 0x1_0000;
    s.lazy_page(b);
    let head = s.write_req(1, 0, b, 1024);
    let g = s.expect_page_request(b, ev::READ);
    assert_eq!(s.page_resp(g, 2), st::OK);
    s.used(head, 1);
    assert_eq!(s.status(1), S_IOERR);
    s.expect_fault_report(b, ev::READ, reason::MAPPING);
    assert_eq!(translation(&s), 2);

    // ...and no more page requests for this endpoint: the next fault is a
    // fault report at once.
    let c = DATA_VA + 0x2_0000;
    s.lazy_page(c);
    let parked = s.counters().parked;
    let head = s.read_req(2, 0, c, 512);
    s.used(head, 1);
    assert_eq!(s.status(2), S_IOERR);
    s.expect_fault_report(c, ev::WRITE, reason::MAPPING);
    assert_eq!(translation(&s), 3);
    assert_eq!(s.counters().parked, parked, "not parked");
    assert_eq!(s.iommu_counters().page_requests, 2);

    // A new ATTACH_TABLE turns page requests back on.
    assert_eq!(s.attach_table(tf::PRI), st::OK);
    let head = s.read_req(2, 9, c, 512);
    let g = s.expect_page_request(c, ev::WRITE);
    s.make_present(c);
    assert_eq!(s.page_resp(g, 0), st::OK);
    s.used(head, 513);
    assert_eq!(s.status(2), S_OK);
    assert_eq!(s.read_va(c, 512), s.file.read(9 * 512, 512));

    let bc = s.counters();
    assert_eq!(
        (bc.parked, bc.resumed, bc.reads, bc.writes),
        (3, 1, 1, 0),
        "{bc:?}"
    );
    assert_eq!(bc.errors_total(), 3, "{bc:?}");
    let ic = s.iommu_counters();
    assert_eq!(ic.page_requests, 3, "{ic:?}");
    assert_eq!(ic.responses, [1, 1, 1], "{ic:?}");
    assert_eq!(ic.fault_reports, 3, "{ic:?}");
    s.no_more_records();
}

#[test]
fn an_unanswered_page_request_times_out() {
    let timeout = Duration::from_millis(300);
    let mut s = Sva::started(15, timeout);
    let a = DATA_VA;
    s.lazy_page(a);
    let t0 = Instant::now();
    let head = s.read_req(0, 0, a, 1024);
    let g = s.expect_page_request(a, ev::WRITE);
    s.used(head, 1);
    assert!(t0.elapsed() >= timeout, "completed before the timeout");
    assert_eq!(s.status(0), S_IOERR);
    s.expect_fault_report(a, ev::WRITE, reason::MAPPING);
    let ic = s.iommu_counters();
    assert_eq!(
        (ic.page_requests, ic.timeouts, ic.fault_reports),
        (1, 1, 1),
        "{ic:?}"
    );
    assert_eq!(s.counters().error(ErrorClass::Translation), 1);
    // The late answer is for nothing.
    assert_eq!(s.page_resp(g, 0), st::NOENT);
    assert_eq!(s.iommu_counters().stray_responses, 1);
    s.no_more_records();
}

#[test]
fn write_dma_into_a_read_only_page_asks_for_write_access() {
    let mut s = Sva::started(16, Duration::from_secs(10));
    let ro = DATA_VA;
    let frame = s.map_page(ro, PTE_P | PTE_US);
    let bytes = pattern(9, 4096);
    s.write_va(ro, &bytes);
    // The device only reads it: no page request.
    let head = s.write_req(0, 16, ro, PAGE);
    s.used(head, 1);
    assert_eq!(s.status(0), S_OK);
    assert_eq!(s.file.read(16 * 512, 4096), bytes);
    assert_eq!(s.iommu_counters().page_requests, 0);
    // The device writes it: a page request for write access to a present
    // page.
    let head = s.read_req(1, 24, ro, PAGE);
    let g = s.expect_page_request(ro, ev::WRITE);
    s.nothing_used();
    assert_ne!(s.pte(ro) & PTE_P, 0, "the page is present");
    assert_eq!(s.read_va(ro, 4096), bytes, "nothing written yet");
    s.put64(Sva::pte_addr(ro), frame | RW_USER);
    assert_eq!(s.page_resp(g, 0), st::OK);
    s.used(head, 4097);
    assert_eq!(s.status(1), S_OK);
    assert_eq!(s.read_va(ro, 4096), s.file.read(24 * 512, 4096));
    assert_eq!(ad(s.pte(ro)), (true, true));
    let c = s.counters();
    assert_eq!((c.parked, c.resumed, c.errors_total()), (1, 1, 0), "{c:?}");
    s.no_more_records();
}

#[test]
fn success_without_mapping_gives_up_after_max_page_requests() {
    // The disk's queue processed synchronously: each round is one
    // `process` (the request parks on a page request), one record, one
    // PAGE_RESP SUCCESS that maps nothing.
    let mut s = Sva::new_sync(|s| assert_eq!(s.attach_table(tf::PRI), st::OK));
    let a = DATA_VA;
    s.lazy_page(a);
    let head = s.read_req(0, 0, a, 512);
    let mut rounds = 0;
    loop {
        s.process();
        if s.bq.used_idx() != s.bq.used_seen {
            break;
        }
        let g = s.expect_page_request(a, ev::WRITE);
        rounds += 1;
        assert!(
            rounds <= MAX_PAGE_REQUESTS,
            "more than {MAX_PAGE_REQUESTS} rounds"
        );
        assert_eq!(s.page_resp(g, 0), st::OK);
    }
    assert_eq!(rounds, MAX_PAGE_REQUESTS);
    s.used(head, 1);
    assert_eq!(s.status(0), S_IOERR);
    s.expect_fault_report(a, ev::WRITE, reason::MAPPING);
    let c = s.counters();
    let n = u64::from(MAX_PAGE_REQUESTS);
    assert_eq!((c.parked, c.resumed), (n, n), "{c:?}");
    assert_eq!(c.error(ErrorClass::Translation), 1, "{c:?}");
    let ic = s.iommu_counters();
    assert_eq!(
        (ic.page_requests, ic.responses[0], ic.fault_reports),
        (n, n, 1),
        "{ic:?}"
    );
    s.no_more_records();
    // The same queue still works once the page is there.
    s.make_present(a);
    let head = s.read_req(0, 5, a, 512);
    s.process();
    s.used(head, 513);
    assert_eq!(s.status(0), S_OK);
    assert_eq!(s.read_va(a, 512), s.file.read(5 * 512, 512));
}

#[test]
fn a_chain_longer_than_the_disk_is_refused_without_walking_it() {
    // A 1 GiB read into unmapped pages: no valid request is that long for
    // this disk, so the device does not walk (or page-request) its
    // buffers; it refuses it as out of range.
    let mut s = Sva::new_sync(|s| assert_eq!(s.attach_table(tf::PRI), st::OK));
    let a = DATA_VA;
    s.lazy_page(a);
    let head = s.read_req(0, 0, a, 1 << 30);
    s.process();
    s.used(head, 1);
    assert_eq!(s.status(0), S_IOERR);
    let c = s.counters();
    assert_eq!(c.parked, 0, "{c:?}");
    assert_eq!(c.error(ErrorClass::OutOfRange), 1, "{c:?}");
    assert_eq!(s.iommu_counters().page_requests, 0);
}

#[test]
fn a_driver_repeating_one_head_parks_at_most_a_queue_of_requests() {
    // A broken or hostile driver publishes the same chain again and again:
    // each copy is a request of its own. Without a bound, every copy
    // parked on a page request of its own, and once 65536 were outstanding
    // no group id was left (the IOMMU's group search never ended). A
    // correct driver cannot have more requests outstanding than the queue
    // has entries; the copies beyond that fail at once.
    let mut s = Sva::new_sync(|s| assert_eq!(s.attach_table(tf::PRI), st::OK));
    let a = DATA_VA;
    s.lazy_page(a);
    let head = s.read_req(0, 0, a, 512);
    let q = u64::from(QSIZE);
    let mut published = 1;
    for round in 1..=2 {
        while published < round * q {
            s.bq.publish(head);
            published += 1;
        }
        s.process();
    }
    s.bq.publish(head);
    s.process();
    let parked = match &s.disk {
        Disk::Sync(bq) => bq.parked(),
        _ => unreachable!(),
    };
    assert_eq!(parked, usize::from(QSIZE), "parked requests");
    let used = wait_used(&mut s.bq, usize::from(QSIZE) + 1);
    assert!(used.iter().all(|&u| u == (u32::from(head), 1)), "{used:?}");
    assert_eq!(s.status(0), S_IOERR);
    let c = s.counters();
    assert_eq!(c.parked, q, "{c:?}");
    assert_eq!(c.error(ErrorClass::Translation), q + 1, "{c:?}");
    assert_eq!(s.iommu_counters().page_requests, q);
}

#[test]
fn map_domains_translate_without_page_requests() {
    /// I/O virtual addresses of the MAP domain (outside RAM) and the
    /// guest-physical frames behind them.
    const IOVA: u64 = 0x1_0000_0000;
    const GPA: u64 = 0x60_0000;
    const RO_IOVA: u64 = IOVA + 0x10_0000;
    const RO_GPA: u64 = 0x70_0000;
    const MD: u32 = 2;
    let mut s = Sva::new(17, Duration::from_secs(10));
    assert_eq!(s.attach(MD), st::OK);
    assert_eq!(
        s.map(MD, IOVA, IOVA + 0xf_ffff, GPA, MAP_READ | MAP_WRITE),
        st::OK
    );
    assert_eq!(
        s.map(MD, RO_IOVA, RO_IOVA + 0xfff, RO_GPA, MAP_READ),
        st::OK
    );
    // The rings at IOVA, +4K, +8K; headers at +12K, status at +16K.
    let (hdr, status) = (IOVA + 0x3000, IOVA + 0x4000);
    s.bq = Driver::new(s.mem.clone(), QSIZE, GPA, GPA + 0x1000, GPA + 0x2000);
    let rings = |s: &mut Sva| s.start_disk_at(disk_features(), IOVA, IOVA + 0x1000, IOVA + 0x2000);
    assert_eq!(
        rings(&mut s),
        Some(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
    );
    let g = |iova: u64| GPA + (iova - IOVA);
    let run = |s: &mut Sva, kind: u32, sector: u64, data: u64, len: u64| -> (u32, u8) {
        s.bq.write(g(hdr), &header(kind, sector));
        s.bq.write(g(status), &[0xff]);
        let dd = if kind == T_IN {
            w(data, len)
        } else {
            r(data, len)
        };
        let head = s.submit(&[r(hdr, 16), dd, w(status, 1)]);
        let u = wait_used(&mut s.bq, 1)[0];
        assert_eq!(u.0, u32::from(head));
        (u.1, s.bq.read(g(status), 1)[0])
    };

    // A read lands at the mapped guest-physical address, dirty-marked.
    clear_dirty(&s.gup);
    let data = IOVA + 0x8000;
    assert_eq!(run(&mut s, T_IN, 2, data, 8192), (8193, S_OK));
    assert_eq!(s.bq.read(g(data), 8192), s.file.read(2 * 512, 8192));
    assert!(dirty(&s.gup, g(data)) && dirty(&s.gup, g(data) + PAGE));
    // A write from it.
    let bytes = pattern(12, 4096);
    s.bq.write(g(data), &bytes);
    assert_eq!(run(&mut s, T_OUT, 30, data, 4096), (1, S_OK));
    assert_eq!(s.file.read(30 * 512, 4096), bytes);
    // A read-only mapping: the device may read it, not write it.
    s.bq.write(RO_GPA, &bytes);
    assert_eq!(run(&mut s, T_OUT, 40, RO_IOVA, 512), (1, S_OK));
    assert_eq!(s.file.read(40 * 512, 512), &bytes[..512]);
    assert_eq!(run(&mut s, T_IN, 40, RO_IOVA + 0x200, 512), (1, S_IOERR));
    s.expect_fault_report(RO_IOVA + 0x200, ev::WRITE, reason::MAPPING);
    // Nothing mapped there: IOERR and a fault report for the exact address.
    let hole = IOVA + 0x20_0123;
    assert_eq!(run(&mut s, T_IN, 0, hole, 512), (1, S_IOERR));
    s.expect_fault_report(hole, ev::WRITE, reason::MAPPING);
    let ic = s.iommu_counters();
    assert_eq!((ic.page_requests, ic.fault_reports), (0, 2), "{ic:?}");
    let c = s.counters();
    assert_eq!(
        (c.error(ErrorClass::Translation), c.parked),
        (2, 0),
        "{c:?}"
    );
    s.no_more_records();

    // Detached before DRIVER_OK: DEVICE_NEEDS_RESET, a DOMAIN fault.
    assert_eq!(s.detach(MD), st::OK);
    let st1 = rings(&mut s).expect("FEATURES_OK");
    assert_ne!(st1 & DEVICE_NEEDS_RESET, 0, "status {st1:#x}");
    s.expect_fault_report(IOVA, ev::READ, reason::DOMAIN);
    let g = s.gup.stats();
    assert_eq!((g.pins_outstanding, g.longterm_pages), (0, 0), "{g:?}");
}

#[test]
fn a_reset_while_a_request_is_parked() {
    let mut s = Sva::started(18, Duration::from_secs(10));
    // The thread names itself once it runs.
    let t0 = Instant::now();
    while !thread_names().iter().any(|n| n == "virtio-blk18") {
        assert!(t0.elapsed() < Duration::from_secs(5), "no worker thread");
        std::thread::sleep(Duration::from_millis(1));
    }
    let a = DATA_VA;
    s.lazy_page(a);
    s.read_req(0, 0, a, 512);
    let g = s.expect_page_request(a, ev::WRITE);
    assert_eq!(s.gup.stats().longterm_pages, 3);
    let t0 = Instant::now();
    s.disk_regs().w(STATUS, 0);
    assert!(t0.elapsed() < Duration::from_secs(5), "the reset returned");
    // Joined; its /proc entry may linger a moment after the join.
    while thread_names().iter().any(|n| n == "virtio-blk18") {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the worker thread stopped"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // The late answer finds nothing outstanding.
    s.make_present(a);
    assert_eq!(s.page_resp(g, 0), st::NOENT);
    let ic = s.iommu_counters();
    assert_eq!((ic.stray_responses, ic.responses), (1, [0, 0, 0]), "{ic:?}");
    std::thread::sleep(Duration::from_millis(20));
    s.nothing_used();
    assert_eq!(s.status(0), 0xff, "never completed");
    let g = s.gup.stats();
    assert_eq!(
        (g.pins_outstanding, g.gets_outstanding, g.longterm_pages),
        (0, 0, 0),
        "{g:?}"
    );
    let c = s.counters();
    assert_eq!((c.parked, c.resumed, c.errors_total()), (1, 0, 0), "{c:?}");
    // The device starts again and the same request now works.
    s.start_disk_ok();
    let head = s.read_req(0, 6, a, 512);
    s.used(head, 513);
    assert_eq!(s.status(0), S_OK);
    assert_eq!(s.read_va(a, 512), s.file.read(6 * 512, 512));
    s.no_more_records();
}

#[test]
fn an_iommu_reset_fails_parked_requests() {
    let timeout = Duration::from_millis(300);
    let mut s = Sva::started(19, timeout);
    let a = DATA_VA;
    s.lazy_page(a);
    let t0 = Instant::now();
    let head = s.read_req(0, 0, a, 512);
    let g = s.expect_page_request(a, ev::WRITE);
    // The IOMMU resets (no domain, nothing outstanding): the parked
    // request fails at once (its group will never be answered), not at
    // its deadline; with no domain left its status byte cannot be
    // translated either, so it completes with used length 0 and the
    // status untouched.
    s.iommu.w(STATUS, 0);
    s.used(head, 0);
    assert!(
        t0.elapsed() < timeout,
        "failed at the reset, not the timeout"
    );
    assert_eq!(s.status(0), 0xff);
    // The driver sets the IOMMU up again: the old group is gone with the
    // domain (not even attached), then unknown.
    s.start_iommu();
    assert_eq!(s.page_resp(g, 0), st::INVAL);
    assert_eq!(s.attach_table(tf::PRI), st::OK);
    assert_eq!(
        s.page_resp(g, 0),
        st::NOENT,
        "the group died with the reset"
    );
    // The fault report waited for the new event buffers.
    s.expect_fault_report(a, ev::WRITE, reason::MAPPING);
    let c = s.counters();
    assert_eq!((c.parked, c.resumed), (1, 0), "{c:?}");
    // The page request's failure, and the status byte's.
    assert_eq!(c.error(ErrorClass::Translation), 2, "{c:?}");
    assert_eq!(s.iommu_counters().timeouts, 0);
    s.make_present(a);
    // The disk goes on through the new domain.
    let head = s.read_req(1, 7, a, 512);
    s.used(head, 513);
    assert_eq!(s.status(1), S_OK);
    assert_eq!(s.read_va(a, 512), s.file.read(7 * 512, 512));
    s.no_more_records();
}

#[test]
fn several_parked_requests_answered_out_of_order_and_a_pool_transfer() {
    let mut s = Sva::started(20, Duration::from_secs(10));
    // Three reads into three lazy pages: three page requests, answered in
    // reverse order.
    let pages: Vec<u64> = (0..3).map(|i| DATA_VA + i * 0x1_0000).collect();
    let mut heads = Vec::new();
    let mut groups = Vec::new();
    for (i, &va) in pages.iter().enumerate() {
        s.lazy_page(va);
        heads.push(s.read_req(i as u64, 10 + i as u64, va, 512));
        groups.push(s.expect_page_request(va, ev::WRITE));
    }
    let distinct: std::collections::BTreeSet<u16> = groups.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "distinct groups while outstanding");
    s.nothing_used();
    for i in (0..3).rev() {
        let va = pages[i];
        s.make_present(va);
        let g = groups[i];
        assert_eq!(s.page_resp(g, 0), st::OK);
        s.used(heads[i], 513);
        assert_eq!(s.status(i as u64), S_OK);
        assert_eq!(s.read_va(va, 512), s.file.read((10 + i as u64) * 512, 512));
    }

    // A transfer large enough for the I/O threads (128K), one of its 32
    // pages lazily mapped.
    let big = DATA_VA + 0x4_0000;
    let lazy = big + 17 * PAGE;
    for i in 0..32 {
        s.map_page(big + i * PAGE, RW_USER);
    }
    s.lazy_page(lazy);
    let head = s.read_req(5, 128, big, 32 * PAGE);
    let g = s.expect_page_request(lazy, ev::WRITE);
    s.nothing_used();
    s.make_present(lazy);
    assert_eq!(s.page_resp(g, 0), st::OK);
    s.used(head, 32 * 4096 + 1);
    assert_eq!(s.status(5), S_OK);
    assert_eq!(s.read_va(big, 32 * 4096), s.file.read(128 * 512, 32 * 4096));
    for i in 0..32 {
        assert_eq!(ad(s.pte(big + i * PAGE)), (true, true), "page {i}");
    }
    let c = s.counters();
    assert_eq!(
        (c.parked, c.resumed, c.reads, c.errors_total()),
        (4, 4, 4, 0),
        "{c:?}"
    );
    assert_eq!(s.iommu_counters().responses, [4, 0, 0]);
    s.no_more_records();
    let g = s.gup.stats();
    assert_eq!(g.pins_outstanding, 3, "only the ring pins: {g:?}");
}

#[test]
fn buffers_straddling_4k_2m_and_1g_leaves() {
    use guest_mm::paging::entry::PTE_PS;
    /// The 2M leaf after the window's page table, and the one before the
    /// 1G leaf (both at 2M-aligned frames), and the 1G leaf at GPA 0.
    const LEAF_2M_A: u64 = 0x1a0_0000;
    const LEAF_2M_B: u64 = 0x1c0_0000;
    let mut s = Sva::new(21, Duration::from_secs(10));
    // PD[1]: VA + 2M -> LEAF_2M_A; PD[511]: VA + 1G - 2M -> LEAF_2M_B;
    // PDPT[1]: VA + 1G -> 0 (1G).
    s.put64(PD + 8, LEAF_2M_A | PTE_PS | RW_USER);
    s.put64(PD + 8 * 511, LEAF_2M_B | PTE_PS | RW_USER);
    s.put64(PDPT + 8, PTE_PS | RW_USER);
    assert_eq!(s.attach_table(tf::PRI), st::OK);
    s.start_disk_ok();

    // 4K -> 2M: the last page of the window's table, then the 2M leaf.
    let at = VA + 2 * MIB - PAGE;
    let small = s.map_page(at, RW_USER);
    let head = s.read_req(0, 60, at, 2 * PAGE);
    s.used(head, 2 * 4096 + 1);
    assert_eq!(s.status(0), S_OK);
    let want = s.file.read(60 * 512, 2 * 4096);
    assert_eq!(s.bq.read(small, 4096), &want[..4096]);
    assert_eq!(s.bq.read(LEAF_2M_A, 4096), &want[4096..]);
    assert_eq!(ad(s.pte(at)), (true, true));
    assert_eq!(ad(s.get64(PD + 8)), (true, true), "2M leaf written");

    // 2M -> 1G: the last page of a 2M leaf, then the 1G leaf (GPA 0).
    let at = VA + (1 << 30) - PAGE;
    let bytes = pattern(33, 2 * 4096);
    s.bq.write(LEAF_2M_B + 2 * MIB - PAGE, &bytes[..4096]);
    s.bq.write(0, &bytes[4096..]);
    let head = s.write_req(1, 70, at, 2 * PAGE);
    s.used(head, 1);
    assert_eq!(s.status(1), S_OK);
    assert_eq!(s.file.read(70 * 512, 2 * 4096), bytes);
    assert_eq!(
        ad(s.get64(PD + 8 * 511)),
        (true, false),
        "2M leaf only read"
    );
    assert_eq!(ad(s.get64(PDPT + 8)), (true, false), "1G leaf only read");
    // And the device writes through the 1G leaf (a page inside RAM).
    let at = VA + (1 << 30) + 0x1d0_0000;
    let head = s.read_req(2, 80, at, 4096);
    s.used(head, 4097);
    assert_eq!(s.status(2), S_OK);
    assert_eq!(s.bq.read(0x1d0_0000, 4096), s.file.read(80 * 512, 4096));
    assert_eq!(ad(s.get64(PDPT + 8)), (true, true), "1G leaf written");
    let c = s.counters();
    assert_eq!(
        (c.reads, c.writes, c.errors_total(), c.parked),
        (2, 1, 0, 0),
        "{c:?}"
    );
    s.no_more_records();
}
