// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest-virtual DMA scenarios (docs/guest-va-dma.md): a virtio-blk disk
//! behind the virtio-iommu ([`crate::iommu`]) does DMA first through a MAP
//! domain (standard virtio-iommu: I/O virtual addresses the driver maps),
//! then through this guest's own page tables attached with ATTACH_TABLE
//! (shared virtual addressing): buffers are guest-virtual addresses in a
//! region whose PTEs are written here, at CPL3.
//!
//! One `guest: [ok] sva: ...` line per scenario, then
//! `guest: sva: <N> requests, <Q> iommu requests, <B> bytes verified, <P>
//! page requests (<S> success, <I> invalid, <X> failure, <U> unanswered),
//! <F> fault reports, <E> failures` (N: virtio-blk requests on the disk
//! behind the IOMMU; Q: requests on the IOMMU's request queue; P and F:
//! event records received; S, I, X: PAGE_RESP the device accepted, by
//! code; U: page requests left unanswered on purpose).
//!
//! `guest.sva.timeout` on the command line adds a scenario that leaves a
//! page request unanswered until the device gives up (its
//! `--iommu-prq-timeout-ms`, 2 s by default).
//! Without a virtio-iommu on the command line one plain line says so
//! (QEMU runs of this image have none).
//!
//! The disk behind the IOMMU is the one that offers ACCESS_PLATFORM; its
//! endpoint id is its slot (the index of its `virtio_mmio.device=` entry).
//!
//! Memory (all chosen here):
//!
//! | what | where |
//! |---|---|
//! | backing frames, page tables, rings | physical [`MEM_BASE`]..[`MEM_END`] (32..48 MiB: the upper half of the blk arena, free once the blk scenarios are done); the first 2 MiB is the 2M leaf's frame |
//! | [`VA_4K`] (PD entry 64 of the 1G..2G alias PD) | 4K leaves, present, scattered frames; entry 256 ([`WINDOW0`]) maps physical page 0 for the CPU |
//! | [`VA_2M`] (entry 65) | one 2M leaf |
//! | [`VA_AFTER_2M`] (entry 66) | 4K leaves right after the 2M leaf |
//! | [`VA_LAZY`] (entry 67) | 4K leaves, not present until a page request asks for them |
//! | [`VA_RO`] (entry 68) | 4K leaves, present, read-only |
//! | [`VA_HIGH`] (PML4 entry 1) | PDPT entry 0: a PD whose last entry is a PT (4K leaves); PDPT entry 1 ([`VA_1G`]): a 1G leaf onto physical `0..1G` |
//!
//! The CPU never touches the DMA buffers' virtual addresses (it cannot
//! INVLPG at CPL3, and this machine's vCPU has no 1G pages): it fills and
//! checks them through the identity map, translating with its own walk of
//! the same tables. The PTEs are created with Accessed and Dirty clear; the
//! device sets them (checked).

// Scenario results carry their message in a [`Line`] on the stack.
#![allow(clippy::result_large_err)]

use core::fmt::{self, Write};
use core::ptr::addr_of;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::blk::{self, blk_status, peek, poke, req, Blk, SegList, DEVICE_ID_BLOCK, SECTOR};
use crate::boot;
use crate::dma::{fill, msg, poison, verify, Arena, Buf, Line, Pattern};
use crate::iommu::{
    self, ev_flags, map_flags, reason, resp, st, status_name, table_flags, Event, Iommu, Table,
    DEVICE_ID_IOMMU, FORMAT_X86, PROP_RESV_MEM, RESV_MSI,
};
use crate::pvh::{self, MmioDevice, IDENTITY_LIMIT};
use crate::serial::Serial;
use crate::virtio::{feature as vfeature, live, tsc, Seg, RING_BYTES, TIMEOUT_TSC};
use crate::Report;

/// Start of the physical memory used here (identity-mapped).
pub const MEM_BASE: u64 = 0x200_0000;
/// End of it.
pub const MEM_END: u64 = 0x300_0000;
/// The region of 4K leaves (PD entry 64 of the 1G..2G PD).
pub const VA_4K: u64 = 0x4800_0000;
/// The 2M leaf.
pub const VA_2M: u64 = 0x4820_0000;
/// 4K leaves after the 2M leaf.
pub const VA_AFTER_2M: u64 = 0x4840_0000;
/// Lazily mapped 4K leaves.
pub const VA_LAZY: u64 = 0x4860_0000;
/// Read-only 4K leaves.
pub const VA_RO: u64 = 0x4880_0000;
/// The CPU's window onto physical page 0 (a 4K leaf in [`VA_4K`]).
pub const WINDOW0: u64 = VA_4K + 256 * 4096;
/// PML4 entry 1.
pub const VA_HIGH: u64 = 0x80_0000_0000;
/// The 1G leaf (PDPT entry 1 under PML4 entry 1): physical `0..1G`.
pub const VA_1G: u64 = VA_HIGH + 0x4000_0000;
/// First PD entry used in the 1G..2G PD.
const PD_FIRST: usize = 64;
/// PD entries used there.
const PD_ENTRIES: usize = 5;
/// Domain of the MAP scenarios.
const DOMAIN_MAP: u32 = 1;
/// Domain of the page-table scenarios.
const DOMAIN_SVA: u32 = 2;

/// PTE bits.
mod pte {
    pub const P: u64 = 1;
    pub const W: u64 = 2;
    pub const U: u64 = 4;
    pub const A: u64 = 0x20;
    pub const D: u64 = 0x40;
    pub const PS: u64 = 0x80;
    /// Present, writable, user.
    pub const PWU: u64 = P | W | U;
    /// Address bits of an entry.
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
}

/// Reads a page-table entry (the device may set A/D concurrently).
fn load(addr: u64) -> u64 {
    // SAFETY: callers pass the address of an 8-byte-aligned entry of a page
    // table in identity-mapped RAM (the boot tables or tables built here);
    // the device updates entries with atomic compare-exchange only.
    unsafe { (*(addr as *const AtomicU64)).load(Ordering::SeqCst) }
}

/// Writes a page-table entry.
fn store(addr: u64, v: u64) {
    // SAFETY: as for `load`; the guest owns the entries it writes here.
    unsafe { (*(addr as *const AtomicU64)).store(v, Ordering::SeqCst) }
}

/// Walks the 4-level tables at `pml4` like the CPU: the physical address
/// of `va` and the address of its leaf entry.
fn walk(pml4: u64, va: u64) -> Option<(u64, u64)> {
    let mut table = pml4;
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        let e_addr = table + ((va >> shift) & 511) * 8;
        let e = load(e_addr);
        if e & pte::P == 0 {
            return None;
        }
        if level == 1 || (level <= 3 && e & pte::PS != 0) {
            let size = 1u64 << shift;
            return Some(((e & pte::ADDR & !(size - 1)) + (va & (size - 1)), e_addr));
        }
        table = e & pte::ADDR;
        if table >= IDENTITY_LIMIT {
            return None;
        }
    }
    None
}

/// The guest's PML4 (what CR3 holds), checked by its entry 0 pointing at
/// `boot_pdpt`.
fn find_pml4() -> Option<u64> {
    let pdpt = addr_of!(boot::boot_pdpt) as u64;
    let pml4 = addr_of!(boot::boot_pml4) as u64;
    (load(pml4) & (pte::ADDR | pte::P) == pdpt | pte::P).then_some(pml4)
}

/// Where the CPU reaches physical `pa..pa + n`: the identity map, or the
/// window for physical page 0 (the identity map's null page).
fn cpu_addr(pa: u64, n: u64) -> Option<u64> {
    if pa >= 0x1000 && pa + n <= IDENTITY_LIMIT {
        Some(pa)
    } else if pa + n <= 0x1000 {
        Some(WINDOW0 + pa)
    } else {
        None
    }
}

/// Most pieces of a buffer list.
const MAX_PIECES: usize = 160;

/// A list of DMA segments cut at 4 KiB boundaries, each with the physical
/// address and the CPU address it reaches.
struct Pieces {
    p: [Buf; MAX_PIECES],
    n: usize,
}

impl Pieces {
    fn all(&self) -> &[Buf] {
        &self.p[..self.n]
    }
}

/// Cuts `segs` (device addresses) into pieces translated by `xlate`.
fn pieces(segs: &[(u64, u32)], xlate: &dyn Fn(u64) -> Option<u64>) -> Result<Pieces, Line> {
    let mut out = Pieces {
        p: [Buf::id(0, 0); MAX_PIECES],
        n: 0,
    };
    for &(a, len) in segs {
        let mut off = 0u64;
        while off < u64::from(len) {
            let at = a + off;
            let n = (u64::from(len) - off).min(4096 - at % 4096);
            let pa = xlate(at).ok_or_else(|| msg(format_args!("{at:#x} does not translate")))?;
            let cpu = cpu_addr(pa, n)
                .ok_or_else(|| msg(format_args!("{at:#x} -> {pa:#x}: not reachable by the CPU")))?;
            if out.n == MAX_PIECES {
                return Err(msg(format_args!("too many pieces")));
            }
            out.p[out.n] = Buf {
                pa,
                va: cpu,
                len: n as u32,
            };
            out.n += 1;
            off += n;
        }
    }
    Ok(out)
}

/// What is expected of one event record.
#[derive(Clone, Copy)]
struct Want {
    /// A page request (else a fault report).
    pr: bool,
    /// `READ` or `WRITE`.
    access: u32,
    /// The page (page requests and table faults) or exact address (MAP).
    addr: u64,
    /// Compare only the page of the address.
    page_only: bool,
    /// [`reason`].
    reason: u8,
}

impl Want {
    const fn pr(access: u32, page: u64) -> Want {
        Want {
            pr: true,
            access,
            addr: page,
            page_only: false,
            reason: reason::MAPPING,
        }
    }
    const fn fault(access: u32, addr: u64, page_only: bool) -> Want {
        Want {
            pr: false,
            access,
            addr,
            page_only,
            reason: reason::MAPPING,
        }
    }
}

/// Most event records kept per request.
const MAX_EVENTS: usize = 16;

/// How one blk request went.
struct Outcome {
    /// The request completed.
    done: bool,
    status: u8,
    events: [Event; MAX_EVENTS],
    nev: usize,
}

impl Outcome {
    fn events(&self) -> &[Event] {
        &self.events[..self.nev.min(MAX_EVENTS)]
    }

    /// Checks that the request failed with IOERR.
    fn ioerr(&self) -> Result<(), Line> {
        if self.status != blk_status::IOERR {
            return Err(msg(format_args!(
                "status {:#x}, expected IOERR",
                self.status
            )));
        }
        Ok(())
    }

    /// Checks the events against `want`, in order and exactly.
    fn expect(&self, ep: u32, want: &[Want]) -> Result<(), Line> {
        if self.nev != want.len() {
            let mut l = msg(format_args!(
                "{} event records, expected {}",
                self.nev,
                want.len()
            ));
            if let Some(e) = self.events().first() {
                let _ = write!(l, " (first: {e})");
            }
            return Err(l);
        }
        for (i, (e, w)) in self.events().iter().zip(want).enumerate() {
            let kind = if w.pr {
                ev_flags::PAGE_REQUEST | ev_flags::LAST | ev_flags::ADDRESS
            } else {
                ev_flags::ADDRESS
            };
            let addr_ok = if w.page_only {
                e.address & !0xfff == w.addr & !0xfff
            } else {
                e.address == w.addr
            };
            let flags_ok = e.flags & !(ev_flags::READ | ev_flags::WRITE | ev_flags::EXEC) == kind
                && e.flags & (ev_flags::READ | ev_flags::WRITE | ev_flags::EXEC) == w.access;
            if !addr_ok
                || !flags_ok
                || e.reason != w.reason
                || e.endpoint != ep
                || e.pasid != 0
                || e.used_len != iommu::EVENT_BYTES
            {
                return Err(msg(format_args!(
                    "event {i}: {e} pasid {} len {}; expected {} {} at {:#x}",
                    e.pasid,
                    e.used_len,
                    if w.pr { "page request" } else { "fault report" },
                    if w.access == ev_flags::WRITE {
                        "WRITE"
                    } else {
                        "READ"
                    },
                    w.addr
                )));
            }
        }
        Ok(())
    }
}

/// The IOVA -> physical ranges of the MAP domain, as mapped here.
struct MapTable {
    e: [(u64, u64, u64); 40],
    n: usize,
}

impl MapTable {
    fn add(&mut self, iova: u64, len: u64, pa: u64) {
        if self.n < self.e.len() {
            self.e[self.n] = (iova, len, pa);
            self.n += 1;
        }
    }
    fn xlate(&self, a: u64) -> Option<u64> {
        self.e[..self.n]
            .iter()
            .find(|(v, l, _)| a >= *v && a - v < *l)
            .map(|(v, _, p)| p + (a - v))
    }
}

/// State of one run.
struct Ctx<'r> {
    report: &'r mut Report,
    mem: Arena,
    iommu: Iommu,
    ep: u32,
    pml4: u64,
    bytes: u64,
    failures: u32,
    /// Page requests never answered (or answered too late).
    unanswered: u64,
    blk_requests: u64,
    /// `guest.sva.timeout`: run the page-request timeout scenario.
    timeout_scenario: bool,
    next_sector: u64,
    capacity: u64,
    seed: u64,
}

/// A page-request answer meaning: send no PAGE_RESP.
const NO_ANSWER: u16 = 0xffff;
/// A page-request answer meaning: send no PAGE_RESP, and stop waiting.
const STOP: u16 = 0xfffe;

/// Answers every page request (none expected).
fn refuse(_: &Event) -> u16 {
    resp::INVALID
}

impl Ctx<'_> {
    fn check(&mut self, r: Result<Line, Line>, title: fmt::Arguments) {
        match r {
            Ok(detail) => self
                .report
                .check(true, format_args!("sva: {title}{detail}")),
            Err(why) => {
                self.failures += 1;
                self.report
                    .check(false, format_args!("sva: {title}: {why}"));
            }
        }
    }

    fn alloc(&mut self, size: u64, align: u64) -> Result<u64, Line> {
        self.mem
            .zeroed(size, align)
            .ok_or_else(|| msg(format_args!("memory {MEM_BASE:#x}..{MEM_END:#x} exhausted")))
    }

    fn sectors(&mut self, bytes: u64) -> u64 {
        let n = bytes.div_ceil(4096) * 8;
        if self.next_sector + n > self.capacity {
            self.next_sector = 0;
        }
        let s = self.next_sector;
        self.next_sector += n;
        s
    }

    fn pattern(&mut self) -> Pattern {
        self.seed += 1;
        Pattern::Seeded(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5fa)
    }

    /// The status of an IOMMU request, as a result.
    fn expect_status(
        &self,
        what: &str,
        got: Result<u8, iommu::Error>,
        want: u8,
    ) -> Result<(), Line> {
        match got {
            Ok(s) if s == want => Ok(()),
            Ok(s) => Err(msg(format_args!(
                "{what}: {} ({s}), expected {}",
                status_name(s),
                status_name(want)
            ))),
            Err(e) => Err(msg(format_args!("{what}: {e}"))),
        }
    }

    /// Sends one blk request of type `ty` on `segs` (device addresses) and
    /// waits for it, answering page requests with `on_pr` meanwhile (which
    /// may also say [`NO_ANSWER`], or [`STOP`]: return at once, the request
    /// still in flight, `Outcome::done` false); then
    /// waits for `faults` fault reports (the IOMMU's thread writes a record
    /// asynchronously: it may come after the request's completion).
    #[allow(clippy::too_many_arguments)]
    fn xfer(
        &mut self,
        blk: &mut Blk,
        domain: u32,
        ty: u32,
        sector: u64,
        segs: &[(u64, u32)],
        faults: usize,
        on_pr: &mut dyn FnMut(&Event) -> u16,
    ) -> Result<Outcome, Line> {
        let hdr = blk.scratch;
        let st_at = blk.scratch + 16;
        Blk::header(hdr, ty, sector);
        poke(st_at, blk::STATUS_POISON);
        let mut list = SegList::new();
        list.push(Seg::out(hdr, 16));
        for &(a, len) in segs {
            blk.push_data(&mut list, a, len, ty == req::IN);
        }
        list.push(Seg::inn(st_at, 1));
        let chain = list.chain().map_err(|e| msg(format_args!("{e}")))?;
        if blk.broken {
            return Err(msg(format_args!("the disk stopped answering earlier")));
        }
        let head = blk.q.add(chain).map_err(|e| msg(format_args!("{e}")))?;
        blk.requests += 1;
        blk.q.kick();
        let mut o = Outcome {
            done: false,
            status: blk::STATUS_POISON,
            events: [Event::default(); MAX_EVENTS],
            nev: 0,
        };
        let start = tsc();
        let mut done = false;
        let mut done_at = 0;
        loop {
            if !done {
                match blk.q.poll() {
                    Ok(Some(u)) if u.id == head => {
                        done = true;
                        o.done = true;
                        done_at = tsc();
                        o.status = peek(st_at);
                    }
                    Ok(Some(u)) => {
                        blk.broken = true;
                        return Err(msg(format_args!("used id {} is not in flight", u.id)));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        blk.broken = true;
                        return Err(msg(format_args!("{e}")));
                    }
                }
            }
            match self.iommu.poll_event() {
                Ok(Some(e)) => {
                    if o.nev < MAX_EVENTS {
                        o.events[o.nev] = e;
                    }
                    o.nev += 1;
                    if e.is_page_request() {
                        let code = on_pr(&e);
                        if code == NO_ANSWER || code == STOP {
                            self.unanswered += 1;
                            if code == STOP {
                                return Ok(o);
                            }
                        } else {
                            let r = self.iommu.page_resp(domain, e.endpoint, e.group, code);
                            self.expect_status("PAGE_RESP", r, st::OK)?;
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(msg(format_args!("event queue: {e}"))),
            }
            let got_faults = o.events().iter().filter(|e| !e.is_page_request()).count();
            if done && (got_faults >= faults || tsc().wrapping_sub(done_at) > TIMEOUT_TSC) {
                return Ok(o);
            }
            if !done && tsc().wrapping_sub(start) > TIMEOUT_TSC {
                blk.broken = true;
                return Err(msg(format_args!(
                    "no completion (timed out) after {} event records",
                    o.nev
                )));
            }
            core::hint::spin_loop();
        }
    }

    /// A request that must complete OK without any event record.
    fn plain(
        &mut self,
        blk: &mut Blk,
        domain: u32,
        ty: u32,
        sector: u64,
        segs: &[(u64, u32)],
    ) -> Result<(), Line> {
        let o = self.xfer(blk, domain, ty, sector, segs, 0, &mut refuse)?;
        let what = if ty == req::IN { "read" } else { "write" };
        if o.status != blk_status::OK {
            return Err(msg(format_args!("{what} status {:#x}", o.status)));
        }
        o.expect(self.ep, &[])
            .map_err(|e| msg(format_args!("{what}: {e}")))
    }

    /// A request that must fail with IOERR and the one fault report `w`,
    /// with no page request.
    fn refused(
        &mut self,
        blk: &mut Blk,
        domain: u32,
        ty: u32,
        segs: &[(u64, u32)],
        w: Want,
    ) -> Result<(), Line> {
        let s = self.sectors(4096);
        let o = self.xfer(blk, domain, ty, s, segs, 1, &mut refuse)?;
        o.ioerr()?;
        o.expect(self.ep, &[w])
    }

    /// Writes a fresh pattern from `wsegs`, reads it back into `rsegs`,
    /// checks every byte (the CPU reaches the buffers through `xlate`).
    fn write_read(
        &mut self,
        blk: &mut Blk,
        domain: u32,
        wsegs: &[(u64, u32)],
        rsegs: &[(u64, u32)],
        xlate: &dyn Fn(u64) -> Option<u64>,
    ) -> Result<u64, Line> {
        let total: u64 = wsegs.iter().map(|s| u64::from(s.1)).sum();
        let sector = self.sectors(total);
        let pat = self.pattern();
        let w = pieces(wsegs, xlate)?;
        let r = pieces(rsegs, xlate)?;
        fill(w.all(), pat, sector * SECTOR);
        self.plain(blk, domain, req::OUT, sector, wsegs)?;
        poison(r.all());
        self.plain(blk, domain, req::IN, sector, rsegs)?;
        self.verify(r.all(), pat, sector)
    }

    fn verify(&mut self, bufs: &[Buf], pat: Pattern, sector: u64) -> Result<u64, Line> {
        match verify(bufs, pat, sector * SECTOR) {
            Ok(n) => {
                self.bytes += n;
                Ok(n)
            }
            Err(m) => Err(msg(format_args!(
                "byte {} (physical {:#x}) read {:#04x}, written {:#04x}",
                m.at, m.va, m.got, m.want
            ))),
        }
    }
}

/// A device found on the command line: its entry index (the endpoint id
/// for a disk) and where it is.
#[derive(Clone, Copy)]
struct Found {
    slot: u32,
    dev: MmioDevice,
}

/// Runs the scenarios when the command line announces a virtio-iommu.
pub fn run(report: &mut Report, cmd: &[u8]) {
    let mut iommu_dev: Option<Found> = None;
    let mut disk_dev: Option<Found> = None;
    for (slot, d) in pvh::mmio_devices(cmd).enumerate() {
        let Ok(dev) = d else { continue };
        let Ok(p) = blk::probe(&dev) else { continue };
        let f = Found {
            slot: slot as u32,
            dev,
        };
        if p.device_id == DEVICE_ID_IOMMU && iommu_dev.is_none() {
            iommu_dev = Some(f);
        } else if p.device_id == DEVICE_ID_BLOCK
            && disk_dev.is_none()
            && p.mmio.device_features() & vfeature::ACCESS_PLATFORM != 0
        {
            disk_dev = Some(f);
        }
    }
    let Some(ifound) = iommu_dev else {
        let _ = writeln!(
            Serial,
            "guest: sva: no virtio-iommu (device id 23) announced on the command line; sva checks skipped"
        );
        return;
    };
    let Some(mut mem) = Arena::range(MEM_BASE, MEM_END) else {
        let _ = writeln!(
            Serial,
            "guest: [skip] sva: every scenario: {MEM_BASE:#x}..{MEM_END:#x} is not RAM in the PVH memory map (give the guest at least 64 MiB)"
        );
        return;
    };
    // The 2M leaf's frame first: MEM_BASE is 2M-aligned.
    let Some(frame_2m) = mem.alloc(0x20_0000, 0x20_0000) else {
        return;
    };
    let failed_before = report.failed;
    let iommu = match blk::probe(&ifound.dev).and_then(|p| Iommu::init(ifound.dev, &p, &mut mem)) {
        Ok(i) => i,
        Err(e) => {
            report.check(
                false,
                format_args!(
                    "sva: virtio-iommu at {:#x} (entry {}): {e}",
                    ifound.dev.base, ifound.slot
                ),
            );
            let _ = writeln!(Serial, "guest: sva: 0 requests, 0 iommu requests, 0 bytes verified, 0 page requests (0 success, 0 invalid, 0 failure, 0 unanswered), 0 fault reports, 1 failures");
            return;
        }
    };
    let mut ctx = Ctx {
        report,
        mem,
        iommu,
        ep: 0,
        pml4: 0,
        bytes: 0,
        failures: 0,
        unanswered: 0,
        blk_requests: 0,
        timeout_scenario: pvh::flag(cmd, "guest.sva.timeout"),
        next_sector: 0,
        capacity: 0,
        seed: 0,
    };
    scenarios(&mut ctx, &ifound, disk_dev, frame_2m);
    let i = &ctx.iommu;
    let failures = ctx.report.failed - failed_before;
    let _ = writeln!(
        Serial,
        "guest: sva: {} requests, {} iommu requests, {} bytes verified, {} page requests ({} success, {} invalid, {} failure, {} unanswered), {} fault reports, {} failures",
        ctx.blk_requests,
        i.requests,
        ctx.bytes,
        i.page_requests,
        i.responses[0],
        i.responses[1],
        i.responses[2],
        ctx.unanswered,
        i.fault_reports,
        failures
    );
}

fn scenarios(ctx: &mut Ctx, ifound: &Found, disk: Option<Found>, frame_2m: u64) {
    let c = ctx.iommu.config;
    let f = ctx.iommu.features;
    let offered = ctx.iommu.offered;
    let base = ctx.iommu.dev.base;
    let need = iommu::WANTED;
    let r = if need & !(iommu::feature::ATTACH_TABLE | iommu::feature::PAGE_REQUEST) & !f == 0
        && ctx.iommu.has(iommu::feature::ATTACH_TABLE)
        && ctx.iommu.has(iommu::feature::PAGE_REQUEST)
    {
        Ok(Line::new())
    } else {
        Err(msg(format_args!("features {:#x} missing", need & !f)))
    };
    ctx.check(
        r,
        format_args!(
            "virtio-iommu at {:#x} (entry {}): features {f:#x} of {:#x}, page_size_mask {:#x}, input {:#x}..{:#x}, domains {}..{}, probe_size {}",
            base,
            ifound.slot,
            offered,
            c.page_size_mask,
            c.input_start,
            c.input_end,
            c.domain_start,
            c.domain_end,
            c.probe_size
        ),
    );
    let Some(disk) = disk else {
        ctx.check(
            Err(msg(format_args!("none found"))),
            format_args!("a virtio-blk disk offering ACCESS_PLATFORM (behind the IOMMU)"),
        );
        return;
    };
    ctx.ep = disk.slot;
    let ep = ctx.ep;

    // PROBE: the MSI window and the page-table format.
    let r = match ctx.iommu.probe(ep) {
        Err(e) => Err(msg(format_args!("{e}"))),
        Ok((s, _)) if s != st::OK => Err(msg(format_args!("status {}", status_name(s)))),
        Ok((_, p)) => {
            let msi = p.resv[..p.nresv.min(iommu::MAX_RESV)].contains(&(
                RESV_MSI,
                0xfee0_0000,
                0xfeef_ffff,
            ));
            match p.page_table {
                Some((FORMAT_X86, widths, flags))
                    if msi
                        && widths & 1 != 0
                        && u64::from(flags) & table_flags::PRI != 0
                        && p.malformed == 0 =>
                {
                    Ok(msg(format_args!(
                        ": RESV_MEM MSI 0xfee00000..0xfeefffff, PAGE_TABLE_FMT format 4 (x86), addr_widths {widths:#x}, table_flags {flags:#x}"
                    )))
                }
                pt => Err(msg(format_args!(
                    "{} RESV_MEM (MSI window {}), PAGE_TABLE_FMT {pt:?}, {} malformed",
                    p.nresv,
                    if msi { "found" } else { "missing" },
                    p.malformed
                ))),
            }
        }
    };
    ctx.check(
        r,
        format_args!(
            "PROBE endpoint {ep} (the disk at {:#x}, property type {PROP_RESV_MEM} and 6)",
            disk.dev.base
        ),
    );

    request_errors(ctx);
    let Some(pml4) = find_pml4() else {
        ctx.check(
            Err(msg(format_args!("boot_pml4 does not point at boot_pdpt"))),
            format_args!("the guest's PML4"),
        );
        return;
    };
    ctx.pml4 = pml4;

    // The blk device's ring and header page, shared by both phases.
    let (Ok(ring), Ok(scratch)) = (ctx.alloc(RING_BYTES, 4096), ctx.alloc(4096, 4096)) else {
        return;
    };
    let Ok(p) = blk::probe(&disk.dev) else { return };
    let top = ctx.mem.mark();
    map_phase(ctx, &disk, &p, ring, scratch);
    ctx.mem.release(top);
    sva_phase(ctx, &disk, &p, ring, scratch, frame_2m);
}

/// Requests the device must refuse, before anything is attached.
fn request_errors(ctx: &mut Ctx) {
    let ep = ctx.ep;
    let beyond = ctx.iommu.config.domain_end.wrapping_add(1);
    let r = (|| {
        let mut unknown = iommu::Body::new(0x7f, 20);
        unknown.u32(8, ep);
        let r = ctx.iommu.simple(&unknown);
        ctx.expect_status("request type 0x7f", r, st::UNSUPP)?;
        let mut short = iommu::Body::new(iommu::req::ATTACH, 8);
        short.u32(4, 9);
        let r = ctx.iommu.simple(&short);
        ctx.expect_status("ATTACH of 8 bytes", r, st::INVAL)?;
        let mut resv = iommu::Body::new(iommu::req::ATTACH, 20);
        resv.u32(4, 9).u32(8, ep).put(17, &[1]);
        let r = ctx.iommu.simple(&resv);
        ctx.expect_status("ATTACH with a reserved byte set", r, st::INVAL)?;
        let r = ctx.iommu.attach(9, 77, 0);
        ctx.expect_status("ATTACH of endpoint 77", r, st::NOENT)?;
        let r = ctx.iommu.attach(beyond, ep, 0);
        ctx.expect_status("ATTACH to a domain past domain_range", r, st::RANGE)?;
        let r = ctx.iommu.attach(9, ep, iommu::attach_flags::BYPASS);
        ctx.expect_status("ATTACH with BYPASS", r, st::INVAL)?;
        let r = ctx.iommu.detach(9, ep);
        ctx.expect_status("DETACH of an endpoint not attached", r, st::INVAL)?;
        let r = ctx.iommu.probe(77).map(|(s, _)| s);
        ctx.expect_status("PROBE of endpoint 77", r, st::NOENT)?;
        let r = ctx.iommu.page_resp(9, ep, 0x1234, resp::SUCCESS);
        // Not attached to domain 9: INVAL (a group not outstanding is NOENT).
        ctx.expect_status(
            "PAGE_RESP for a domain the endpoint is not in",
            r,
            st::INVAL,
        )?;
        Ok(Line::new())
    })();
    ctx.check(
        r,
        format_args!("request errors: type 0x7f UNSUPP, truncated ATTACH INVAL, reserved byte INVAL, endpoint 77 NOENT (ATTACH, PROBE), domain {beyond} RANGE, BYPASS INVAL, DETACH not attached INVAL, PAGE_RESP wrong domain INVAL"),
    );
}

/// Sets `disk` up with its rings at `ring` and its header page at
/// `scratch` (device addresses), offering to accept ACCESS_PLATFORM; the
/// disk, or why it did not come up with ACCESS_PLATFORM.
fn blk_up(disk: &Found, p: &blk::Probe, ring: u64, scratch: u64) -> Result<Blk, Line> {
    match Blk::init_with(disk.dev, p, ring, scratch, 0, vfeature::ACCESS_PLATFORM) {
        Err(e) => Err(msg(format_args!("virtio-blk setup: {e}"))),
        Ok(b) if !b.has(vfeature::ACCESS_PLATFORM) => Err(msg(format_args!(
            "ACCESS_PLATFORM not negotiated (features {:#x})",
            b.features
        ))),
        Ok(b) => Ok(b),
    }
}

/// Resets the disk (status 0) and waits for the reset to finish.
fn reset(blk: &Blk) -> Result<(), Line> {
    blk.mmio
        .reset()
        .map_err(|_| msg(format_args!("reset did not finish")))
}

/// The standard virtio-iommu: a MAP domain.
fn map_phase(ctx: &mut Ctx, disk: &Found, p: &blk::Probe, ring: u64, scratch: u64) {
    let ep = ctx.ep;
    let d = DOMAIN_MAP;
    let mut maps = MapTable {
        e: [(0, 0, 0); 40],
        n: 0,
    };
    let rw = map_flags::READ | map_flags::WRITE;
    let setup = (|| {
        let r = ctx.iommu.attach(d, ep, 0);
        ctx.expect_status("ATTACH", r, st::OK)?;
        let r = ctx.iommu.map(d, ring, ring + RING_BYTES - 1, ring, rw);
        ctx.expect_status("MAP of the rings", r, st::OK)?;
        let r = ctx.iommu.map(d, scratch, scratch + 4095, scratch, rw);
        ctx.expect_status("MAP of the header page", r, st::OK)?;
        let mut b = blk_up(disk, p, ring, scratch)?;
        ctx.capacity = b.capacity;
        let id = match b.get_id() {
            Ok((id, blk_status::OK, _)) => id,
            Ok((_, s, _)) => return Err(msg(format_args!("GET_ID status {s:#x}"))),
            Err(e) => return Err(msg(format_args!("GET_ID: {e}"))),
        };
        Ok((b, id))
    })();
    let mut blk = match setup {
        Ok((b, id)) => {
            let n = id.iter().position(|&c| c == 0).unwrap_or(id.len());
            let line = msg(format_args!(
                ": {} sectors, features {:#x}, id {}",
                b.capacity,
                b.features,
                crate::dma::ShowId(&id[..n])
            ));
            ctx.check(
                Ok(line),
                format_args!("MAP domain {d}: endpoint {ep} attached, rings and header page identity-mapped, virtio-blk at {:#x} set up with ACCESS_PLATFORM", disk.dev.base),
            );
            b
        }
        Err(e) => {
            ctx.check(
                Err(e),
                format_args!(
                    "MAP domain {d}: virtio-blk at {:#x} behind the IOMMU",
                    disk.dev.base
                ),
            );
            return;
        }
    };

    // Data through IOVAs: the write buffer one 64 KiB mapping (read-only
    // for the device), the read buffer 16 mappings of 4 KiB onto frames
    // in a scrambled order.
    const IOVA_W: u64 = 0x1_0000_0000;
    const IOVA_R: u64 = 0x1_1000_0000;
    const IOVA_RO: u64 = 0x1_2000_0000;
    const IOVA_U: u64 = 0x1_3000_0000;
    const IOVA_NONE: u64 = 0x2_0000_0000;
    let r = (|| {
        let wphys = ctx.alloc(0x1_0000, 4096)?;
        let rphys = ctx.alloc(0x1_0000, 4096)?;
        let r = ctx
            .iommu
            .map(d, IOVA_W, IOVA_W + 0xffff, wphys, map_flags::READ);
        ctx.expect_status("MAP 64 KiB", r, st::OK)?;
        maps.add(IOVA_W, 0x1_0000, wphys);
        for i in 0..16u64 {
            let frame = rphys + ((i * 7) % 16) * 4096;
            let r = ctx
                .iommu
                .map(d, IOVA_R + i * 4096, IOVA_R + i * 4096 + 4095, frame, rw);
            ctx.expect_status("MAP 4 KiB", r, st::OK)?;
            maps.add(IOVA_R + i * 4096, 4096, frame);
        }
        let w = [
            (IOVA_W + 0x100, 0x2e00),
            (IOVA_W + 0x5000, 0x5200),
            (IOVA_W + 0xb300, 0x4000),
        ];
        let rd = [(IOVA_R + 0x80, 0x5000), (IOVA_R + 0x6000, 0x7000)];
        let n = ctx.write_read(&mut blk, d, &w, &rd, &|a| maps.xlate(a))?;
        Ok(msg(format_args!(" ({n} bytes verified)")))
    })();
    ctx.check(
        r,
        format_args!("MAP domain: 48 KiB written from 3 segments of a 64 KiB read-only mapping at IOVA {IOVA_W:#x}, read back into 2 segments over 16 scrambled 4 KiB mappings at {IOVA_R:#x}"),
    );

    // Unmapped IOVAs, both directions; a read-only mapping written.
    let r = (|| {
        ctx.refused(
            &mut blk,
            d,
            req::IN,
            &[(IOVA_NONE + 0x200, 0x1000)],
            Want::fault(ev_flags::WRITE, IOVA_NONE + 0x200, false),
        )
        .map_err(|e| msg(format_args!("read into it: {e}")))?;
        ctx.refused(
            &mut blk,
            d,
            req::OUT,
            &[(IOVA_NONE + 0x3000, 0x800)],
            Want::fault(ev_flags::READ, IOVA_NONE + 0x3000, false),
        )
        .map_err(|e| msg(format_args!("write from it: {e}")))?;
        let page = ctx.alloc(4096, 4096)?;
        let r = ctx
            .iommu
            .map(d, IOVA_RO, IOVA_RO + 4095, page, map_flags::READ);
        ctx.expect_status("MAP read-only", r, st::OK)?;
        maps.add(IOVA_RO, 4096, page);
        ctx.refused(
            &mut blk,
            d,
            req::IN,
            &[(IOVA_RO, 0x1000)],
            Want::fault(ev_flags::WRITE, IOVA_RO, false),
        )
        .map_err(|e| msg(format_args!("read into the read-only mapping: {e}")))?;
        let s = ctx.sectors(4096);
        ctx.plain(&mut blk, d, req::OUT, s, &[(IOVA_RO, 0x1000)])
            .map_err(|e| msg(format_args!("write from the read-only mapping: {e}")))?;
        Ok(Line::new())
    })();
    ctx.check(
        r,
        format_args!("MAP domain faults: DMA to unmapped IOVA {IOVA_NONE:#x} (both ways) and device writes into a read-only mapping -> IOERR, one fault report each (MAPPING, READ/WRITE, exact address); reads from it OK"),
    );

    // MAP and UNMAP errors.
    let r = (|| {
        let r = ctx
            .iommu
            .map(d, IOVA_W + 0x1000, IOVA_W + 0x1fff, 0x10_0000, rw);
        ctx.expect_status("MAP overlapping", r, st::INVAL)?;
        let r = ctx
            .iommu
            .map(d, 0x1_4000_0100, 0x1_4000_0fff, 0x10_0000, rw);
        ctx.expect_status("MAP unaligned start", r, st::RANGE)?;
        let r = ctx
            .iommu
            .map(d, 0x1_4000_0000, 0x1_4000_0fff, 0x10_0800, rw);
        ctx.expect_status("MAP unaligned phys", r, st::RANGE)?;
        let r = ctx
            .iommu
            .map(d, 0x1_4000_1000, 0x1_4000_0fff, 0x10_0000, rw);
        ctx.expect_status("MAP end before start", r, st::RANGE)?;
        let r = ctx
            .iommu
            .map(999, 0x1_4000_0000, 0x1_4000_0fff, 0x10_0000, rw);
        ctx.expect_status("MAP in domain 999", r, st::NOENT)?;
        let r = ctx
            .iommu
            .map(d, 0x1_4000_0000, 0x1_4000_0fff, 0x10_0000, map_flags::MMIO);
        ctx.expect_status("MAP with MMIO", r, st::INVAL)?;
        let r = ctx
            .iommu
            .map(d, 0x1_4000_0000, 0x1_4000_0fff, 0x10_0000, 0x10);
        ctx.expect_status("MAP with flag 0x10", r, st::INVAL)?;
        let r = ctx.iommu.attach_table(&sva_table(d, ctx.ep, ctx.pml4));
        ctx.expect_status("ATTACH_TABLE on a domain with mappings", r, st::INVAL)?;
        Ok(Line::new())
    })();
    ctx.check(
        r,
        format_args!("MAP errors: overlap INVAL, unaligned start or phys RANGE, end before start RANGE, domain 999 NOENT, MMIO and unknown flags INVAL, ATTACH_TABLE on a MAP domain INVAL"),
    );

    // UNMAP: never splits a mapping; removes whole ones.
    let r = (|| {
        let frames = ctx.alloc(0x1_0000, 4096)?;
        let r = ctx.iommu.map(d, IOVA_U, IOVA_U + 0xffff, frames, rw);
        ctx.expect_status("MAP", r, st::OK)?;
        maps.add(IOVA_U, 0x1_0000, frames);
        let r = ctx.iommu.unmap(d, IOVA_U, IOVA_U + 0xfff);
        ctx.expect_status("UNMAP of the first 4 KiB", r, st::RANGE)?;
        let r = ctx.iommu.unmap(d, IOVA_U + 0x8000, IOVA_U + 0x1_ffff);
        ctx.expect_status("UNMAP of the second half and beyond", r, st::RANGE)?;
        let s = ctx.sectors(4096);
        ctx.plain(&mut blk, d, req::OUT, s, &[(IOVA_U, 0x1000)])
            .map_err(|e| msg(format_args!("after the refused UNMAPs: {e}")))?;
        let r = ctx.iommu.unmap(d, IOVA_U, IOVA_U + 0xffff);
        ctx.expect_status("UNMAP of the whole mapping", r, st::OK)?;
        ctx.refused(
            &mut blk,
            d,
            req::OUT,
            &[(IOVA_U + 0x4000, 0x1000)],
            Want::fault(ev_flags::READ, IOVA_U + 0x4000, false),
        )
        .map_err(|e| msg(format_args!("after UNMAP: {e}")))?;
        let r = ctx.iommu.unmap(d, IOVA_U, IOVA_U + 0xffff);
        ctx.expect_status("UNMAP again", r, st::OK)?;
        // The 16 mappings of 4 KiB at once.
        let r = ctx.iommu.unmap(d, IOVA_R, IOVA_R + 0xffff);
        ctx.expect_status("UNMAP of 16 mappings", r, st::OK)?;
        ctx.refused(
            &mut blk,
            d,
            req::IN,
            &[(IOVA_R + 0xf000, 0x1000)],
            Want::fault(ev_flags::WRITE, IOVA_R + 0xf000, false),
        )
        .map_err(|e| msg(format_args!("after UNMAP of 16: {e}")))?;
        Ok(Line::new())
    })();
    ctx.check(
        r,
        format_args!("UNMAP: splitting a mapping RANGE (nothing removed, DMA still OK); whole mappings removed (16 at once), DMA to them IOERR + fault report; UNMAP of nothing OK"),
    );

    // DETACH with the device live: its DMA has no domain any more.
    let r = (|| {
        let r = ctx.iommu.detach(d, ep);
        ctx.expect_status("DETACH", r, st::OK)?;
        // The header is the first thing the device reads: its fault is
        // reported, and the status byte cannot be written either.
        let s = ctx.sectors(4096);
        let o = ctx.xfer(
            &mut blk,
            d,
            req::OUT,
            s,
            &[(IOVA_W, 0x1000)],
            1,
            &mut refuse,
        )?;
        if o.status != blk::STATUS_POISON {
            return Err(msg(format_args!(
                "status byte {:#x}: it has no translation either",
                o.status
            )));
        }
        let mut w = Want::fault(ev_flags::READ, scratch, false);
        w.reason = reason::DOMAIN;
        o.expect(ep, &[w])
            .map_err(|e| msg(format_args!("DMA after DETACH: {e}")))?;
        reset(&blk)?;
        let r = ctx.iommu.detach(d, ep);
        ctx.expect_status("DETACH again", r, st::INVAL)?;
        Ok(Line::new())
    })();
    ctx.check(
        r,
        format_args!("DETACH with the disk live: its next request gets one fault report (DOMAIN, the header's IOVA) and no status; virtio-blk reset; a second DETACH INVAL"),
    );
    ctx.blk_requests += blk.requests;
}

/// The ATTACH_TABLE request for the guest's own tables.
fn sva_table(domain: u32, endpoint: u32, pml4: u64) -> Table {
    Table {
        domain,
        endpoint,
        flags: 0,
        format: FORMAT_X86,
        pasid: 0,
        pgd: pml4,
        // CR0.WP is set (boot.rs); EFER.NXE is not; user accesses.
        table_flags: table_flags::WP | table_flags::PRI,
        addr_width: 48,
    }
}

/// The page tables built here.
struct Tables {
    pd: u64,
    pt_4k: u64,
    pt_after: u64,
    pt_lazy: u64,
    pt_ro: u64,
    pt_x: u64,
    pdpt_x: u64,
}

/// Address of the PTE for `va` in page table `pt`.
fn pte_at(pt: u64, va: u64) -> u64 {
    pt + ((va >> 12) & 511) * 8
}

fn build_tables(ctx: &mut Ctx, frame_2m: u64) -> Result<Tables, Line> {
    let pdpt = load(ctx.pml4) & pte::ADDR;
    let pd = load(pdpt + 8) & pte::ADDR;
    if pd == 0 || pd >= IDENTITY_LIMIT {
        return Err(msg(format_args!("PDPT entry 1 is {:#x}", load(pdpt + 8))));
    }
    for i in PD_FIRST..PD_FIRST + PD_ENTRIES {
        if load(pd + 8 * i as u64) != 0 {
            return Err(msg(format_args!("PD entry {i} is in use")));
        }
    }
    if load(ctx.pml4 + 8) != 0 {
        return Err(msg(format_args!("PML4 entry 1 is in use")));
    }
    let t = Tables {
        pd,
        pt_4k: ctx.alloc(4096, 4096)?,
        pt_after: ctx.alloc(4096, 4096)?,
        pt_lazy: ctx.alloc(4096, 4096)?,
        pt_ro: ctx.alloc(4096, 4096)?,
        pt_x: ctx.alloc(4096, 4096)?,
        pdpt_x: ctx.alloc(4096, 4096)?,
    };
    let pd_x = ctx.alloc(4096, 4096)?;
    // The 4K region: 16 scrambled frames at entries 0..16, two frames in
    // reverse order at 16 and 17, one at 511 (before the 2M leaf), the
    // window onto physical page 0 at 256.
    let frames = ctx.alloc(16 * 4096, 4096)?;
    for i in 0..16u64 {
        store(
            t.pt_4k + i * 8,
            (frames + ((i * 5 + 3) % 16) * 4096) | pte::PWU,
        );
    }
    let two = ctx.alloc(3 * 4096, 4096)?;
    store(t.pt_4k + 16 * 8, (two + 2 * 4096) | pte::PWU);
    store(t.pt_4k + 17 * 8, two | pte::PWU);
    store(t.pt_4k + 511 * 8, ctx.alloc(4096, 4096)? | pte::PWU);
    store(t.pt_4k + 256 * 8, pte::PWU);
    store(t.pt_after, ctx.alloc(4096, 4096)? | pte::PWU);
    store(t.pt_ro, ctx.alloc(4096, 4096)? | pte::P | pte::U);
    store(t.pt_ro + 8, ctx.alloc(4096, 4096)? | pte::P | pte::U);
    store(t.pt_x + 511 * 8, ctx.alloc(4096, 4096)? | pte::PWU);
    store(pd_x + 511 * 8, t.pt_x | pte::PWU);
    store(t.pdpt_x, pd_x | pte::PWU);
    // The 1G leaf: physical 0..1G (the only 1G-aligned frame in RAM).
    store(t.pdpt_x + 8, pte::PWU | pte::PS);
    // Link it all in last.
    store(pd + 8 * PD_FIRST as u64, t.pt_4k | pte::PWU);
    store(
        pd + 8 * (PD_FIRST + 1) as u64,
        frame_2m | pte::PWU | pte::PS,
    );
    store(pd + 8 * (PD_FIRST + 2) as u64, t.pt_after | pte::PWU);
    store(pd + 8 * (PD_FIRST + 3) as u64, t.pt_lazy | pte::PWU);
    store(pd + 8 * (PD_FIRST + 4) as u64, t.pt_ro | pte::PWU);
    store(ctx.pml4 + 8, t.pdpt_x | pte::PWU);
    Ok(t)
}

fn unlink_tables(ctx: &Ctx, t: &Tables) {
    for i in PD_FIRST..PD_FIRST + PD_ENTRIES {
        store(t.pd + 8 * i as u64, 0);
    }
    store(ctx.pml4 + 8, 0);
}

/// Shared virtual addressing: the guest's own page tables.
fn sva_phase(ctx: &mut Ctx, disk: &Found, p: &blk::Probe, ring: u64, scratch: u64, frame_2m: u64) {
    let ep = ctx.ep;
    let d = DOMAIN_SVA;
    let pml4 = ctx.pml4;
    let t = match build_tables(ctx, frame_2m) {
        Ok(t) => t,
        Err(e) => {
            ctx.check(Err(e), format_args!("SVA page tables"));
            return;
        }
    };

    // ATTACH_TABLE refusals, then the real one.
    let r = (|| {
        let good = sva_table(d, ep, pml4);
        let cases: [(&str, Table, u8); 6] = [
            ("format 3", Table { format: 3, ..good }, st::UNSUPP),
            (
                "addr_width 39",
                Table {
                    addr_width: 39,
                    ..good
                },
                st::UNSUPP,
            ),
            ("pasid 1", Table { pasid: 1, ..good }, st::UNSUPP),
            (
                "table_flags bit 20",
                Table {
                    table_flags: good.table_flags | 1 << 20,
                    ..good
                },
                st::INVAL,
            ),
            (
                "pgd outside RAM",
                Table {
                    pgd: 0x40_0000_0000,
                    ..good
                },
                st::INVAL,
            ),
            (
                "endpoint 77",
                Table {
                    endpoint: 77,
                    ..good
                },
                st::NOENT,
            ),
        ];
        for (what, tab, want) in cases {
            let r = ctx.iommu.attach_table(&tab);
            ctx.expect_status(what, r, want)?;
        }
        Ok(Line::new())
    })();
    ctx.check(
        r,
        format_args!("ATTACH_TABLE errors: format 3, addr_width 39, pasid 1 UNSUPP; unknown table flag, pgd outside RAM INVAL; endpoint 77 NOENT"),
    );

    let setup = (|| {
        let r = ctx.iommu.attach_table(&sva_table(d, ep, pml4));
        ctx.expect_status("ATTACH_TABLE", r, st::OK)?;
        let r = ctx
            .iommu
            .map(d, 0x1_0000_0000, 0x1_0000_0fff, scratch, map_flags::READ);
        ctx.expect_status("MAP on a table domain", r, st::INVAL)?;
        let r = ctx.iommu.page_resp(d, ep, 0x4321, resp::SUCCESS);
        ctx.expect_status("PAGE_RESP for a group not outstanding", r, st::NOENT)?;
        // SAFETY: the ring pages are identity-mapped RAM allocated for this
        // disk, which is reset (not using them).
        unsafe { core::ptr::write_bytes(ring as *mut u8, 0, RING_BYTES as usize) };
        blk_up(disk, p, ring, scratch)
    })();
    let mut blk = match setup {
        Ok(b) => {
            ctx.check(
                Ok(Line::new()),
                format_args!("ATTACH_TABLE domain {d}: endpoint {ep}, pgd {pml4:#x} (the guest's PML4, its CR3), 48-bit, WP|PRI, user accesses; MAP on it INVAL, PAGE_RESP for no outstanding group NOENT; virtio-blk set up again, rings at VA == PA"),
            );
            b
        }
        Err(e) => {
            ctx.check(Err(e), format_args!("ATTACH_TABLE domain {d}"));
            unlink_tables(ctx, &t);
            return;
        }
    };
    let walk_x = move |a: u64| walk(pml4, a).map(|(pa, _)| pa);

    // (a) Present 4K pages, A/D clear: the slow path sets them.
    let r = (|| {
        let w = [
            (VA_4K + 0x123, 0x2000),
            (VA_4K + 0x4321, 0x1a00),
            (VA_4K + 0x6e00, 0x600),
        ];
        let rd = [
            (VA_4K + 0x8007, 0x1000),
            (VA_4K + 0xa0f0, 0x2e00),
            (VA_4K + 0xe011, 0x200),
        ];
        let n = ctx.write_read(&mut blk, d, &w, &rd, &walk_x)?;
        // Accessed on every page the device touched, Dirty only where it
        // wrote; the untouched pages 3, 13 and 15 keep both clear.
        let read_by_device = [0u64, 1, 2, 4, 5, 6, 7];
        let written = [8u64, 9, 10, 11, 12, 14];
        for i in 0..16u64 {
            let e = load(t.pt_4k + i * 8);
            let want_a = read_by_device.contains(&i) || written.contains(&i);
            let want_d = written.contains(&i);
            if (e & pte::A != 0) != want_a || (e & pte::D != 0) != want_d {
                return Err(msg(format_args!(
                    "PTE {i} is {e:#x}: Accessed should be {want_a}, Dirty {want_d}"
                )));
            }
        }
        // Again, now that A/D are set (the GUP fast path).
        let m = ctx.write_read(&mut blk, d, &w, &rd, &walk_x)?;
        Ok(msg(format_args!(" ({} bytes verified)", n + m)))
    })();
    ctx.check(
        r,
        format_args!("SVA present 4K pages: 16 KiB written from 3 segments at odd offsets of VA {VA_4K:#x}.., read back into 3 others (scrambled frames); the device set Accessed on the 13 pages it touched, Dirty on the 6 it wrote; again with A/D set"),
    );

    // (b) Lazily mapped pages: one page request per page.
    let r = lazy(ctx, &mut blk, &t, req::IN, VA_LAZY + 0x200, 0x4000, 5);
    ctx.check(
        r,
        format_args!("SVA lazy pages, device writes: a 16 KiB read into 5 unmapped pages at {:#x}: 5 page requests (WRITE), each mapped and answered SUCCESS; status OK, data verified", VA_LAZY + 0x200),
    );
    let r = lazy(
        ctx,
        &mut blk,
        &t,
        req::OUT,
        VA_LAZY + 8 * 4096 + 0x10,
        0x3000,
        4,
    );
    ctx.check(
        r,
        format_args!("SVA lazy pages, device reads: a 12 KiB write from 4 unmapped pages at {:#x}: 4 page requests (READ), each mapped and answered SUCCESS; read back and verified", VA_LAZY + 8 * 4096 + 0x10),
    );

    // (c) Refused page requests.
    let r = (|| {
        for (ty, page, access) in [
            (req::IN, VA_LAZY + 16 * 4096, ev_flags::WRITE),
            (req::OUT, VA_LAZY + 17 * 4096, ev_flags::READ),
        ] {
            let s = ctx.sectors(4096);
            let o = ctx.xfer(
                &mut blk,
                d,
                ty,
                s,
                &[(page + 0x100, 0x1000)],
                1,
                &mut |_| resp::INVALID,
            )?;
            o.ioerr()?;
            o.expect(
                ep,
                &[
                    Want::pr(access, page),
                    Want::fault(access, page + 0x100, true),
                ],
            )?;
            if load(pte_at(t.pt_lazy, page)) != 0 {
                return Err(msg(format_args!("the PTE changed")));
            }
        }
        Ok(Line::new())
    })();
    ctx.check(
        r,
        format_args!("SVA refused: page requests answered INVALID (a read into and a write from unmapped pages) -> IOERR and a fault report for the page, the PTE untouched"),
    );

    // (d) Device writes into a read-only mapping.
    let r = (|| {
        let s = ctx.sectors(4096);
        let o = ctx.xfer(&mut blk, d, req::IN, s, &[(VA_RO, 0x1000)], 1, &mut |_| {
            resp::INVALID
        })?;
        o.ioerr()?;
        o.expect(
            ep,
            &[
                Want::pr(ev_flags::WRITE, VA_RO),
                Want::fault(ev_flags::WRITE, VA_RO, true),
            ],
        )?;
        let e = load(t.pt_ro);
        if e & (pte::W | pte::D) != 0 {
            return Err(msg(format_args!("PTE {e:#x} after the refusal")));
        }
        // Reads from it need nothing.
        let s = ctx.sectors(4096);
        ctx.plain(&mut blk, d, req::OUT, s, &[(VA_RO, 0x1000)])
            .map_err(|e| msg(format_args!("a write from it: {e}")))?;
        Ok(Line::new())
    })();
    ctx.check(
        r,
        format_args!("SVA write DMA into a read-only mapping at {VA_RO:#x}: a page request (WRITE) for the present page, refused -> IOERR and a fault report (WRITE); a write request from it needs no page request"),
    );
    let r = (|| {
        let page = VA_RO + 4096;
        let pte_addr = pte_at(t.pt_ro, page);
        let s = ctx.sectors(4096);
        let pat = ctx.pattern();
        let src = ctx.alloc(4096, 4096)?;
        fill(&[Buf::id(src, 4096)], pat, s * SECTOR);
        ctx.plain(&mut blk, d, req::OUT, s, &[(src, 0x1000)])?;
        let o = ctx.xfer(&mut blk, d, req::IN, s, &[(page, 0x1000)], 0, &mut |e| {
            if e.address == page && e.flags & ev_flags::WRITE != 0 {
                store(pte_addr, load(pte_addr) | pte::W);
                resp::SUCCESS
            } else {
                resp::INVALID
            }
        })?;
        if o.status != blk_status::OK {
            return Err(msg(format_args!("status {:#x}", o.status)));
        }
        o.expect(ep, &[Want::pr(ev_flags::WRITE, page)])?;
        let e = load(pte_addr);
        if e & (pte::A | pte::D) != pte::A | pte::D {
            return Err(msg(format_args!("PTE {e:#x}: A/D not set")));
        }
        let bufs = pieces(&[(page, 0x1000)], &walk_x)?;
        let n = ctx.verify(bufs.all(), pat, s)?;
        Ok(msg(format_args!(" ({n} bytes verified)")))
    })();
    ctx.check(
        r,
        format_args!("SVA read-only mapping made writable on its page request (WRITE) -> SUCCESS; status OK, Accessed and Dirty set, data verified"),
    );

    // (e) Buffers straddling leaves.
    let straddles: [(&str, u64); 4] = [
        ("a 4K leaf boundary (two frames in reverse order)", VA_4K + 17 * 4096 - 0xa00),
        ("a 4K leaf -> 2M leaf boundary", VA_2M - 0x600),
        ("a 2M leaf -> 4K leaf boundary", VA_AFTER_2M - 0x800),
        ("a 4K leaf -> 1G leaf boundary (PML4 entry 1; the 1G leaf maps physical 0.., seen by the CPU through a window)", VA_1G - 0xc00),
    ];
    for (what, va) in straddles {
        let r = (|| {
            // Physical page 0 (under the 1G leaf) is kept as it was.
            let mut saved = [0u8; 0x400];
            for (i, b) in saved.iter_mut().enumerate() {
                *b = peek(WINDOW0 + i as u64);
            }
            let seg = [(va, 0x1000)];
            let r = ctx.write_read(&mut blk, d, &seg, &seg, &walk_x);
            for (i, &b) in saved.iter().enumerate() {
                poke(WINDOW0 + i as u64, b);
            }
            let n = r?;
            Ok(msg(format_args!(" ({n} bytes verified)")))
        })();
        ctx.check(
            r,
            format_args!("SVA buffer straddling {what}: 4 KiB at {va:#x} written and read back"),
        );
    }
    let r = (|| {
        let leaf = load(t.pdpt_x + 8);
        let leaf_2m = load(t.pd + 8 * (PD_FIRST + 1) as u64);
        if leaf & (pte::A | pte::D) != pte::A | pte::D
            || leaf_2m & (pte::A | pte::D) != pte::A | pte::D
        {
            return Err(msg(format_args!("1G leaf {leaf:#x}, 2M leaf {leaf_2m:#x}")));
        }
        // A larger transfer inside the 2M leaf.
        let seg = [(VA_2M + 0x1_0000 + 0x40, 0x4_0000)];
        let n = ctx.write_read(&mut blk, d, &seg, &seg, &walk_x)?;
        Ok(msg(format_args!(" ({n} bytes verified)")))
    })();
    ctx.check(
        r,
        format_args!("SVA large leaves: the device set Accessed and Dirty on the 1G and 2M leaves; 256 KiB inside the 2M leaf written and read back"),
    );

    // (f) FAILURE: no more page requests until the next ATTACH_TABLE.
    let r = (|| {
        let pages = [VA_LAZY + 24 * 4096, VA_LAZY + 25 * 4096];
        let s = ctx.sectors(4096);
        let o = ctx.xfer(
            &mut blk,
            d,
            req::IN,
            s,
            &[(pages[0], 0x1000)],
            1,
            &mut |_| resp::FAILURE,
        )?;
        o.ioerr()?;
        o.expect(
            ep,
            &[
                Want::pr(ev_flags::WRITE, pages[0]),
                Want::fault(ev_flags::WRITE, pages[0], true),
            ],
        )
        .map_err(|e| msg(format_args!("FAILURE: {e}")))?;
        ctx.refused(
            &mut blk,
            d,
            req::IN,
            &[(pages[1], 0x1000)],
            Want::fault(ev_flags::WRITE, pages[1], true),
        )
        .map_err(|e| msg(format_args!("after FAILURE: {e}")))?;
        let r = ctx.iommu.attach_table(&sva_table(d, ep, pml4));
        ctx.expect_status("ATTACH_TABLE again", r, st::OK)?;
        lazy(ctx, &mut blk, &t, req::IN, pages[1], 0x1000, 1)
            .map_err(|e| msg(format_args!("after ATTACH_TABLE again: {e}")))
    })();
    ctx.check(
        r,
        format_args!("SVA FAILURE: a page request answered FAILURE -> IOERR + fault report; the next fault is a fault report without a page request (IOERR); after ATTACH_TABLE again page requests resume (SUCCESS, data verified)"),
    );

    // (g) Optional: a page request never answered: the device times out.
    if ctx.timeout_scenario {
        let r = (|| {
            let page = VA_LAZY + 40 * 4096;
            let s = ctx.sectors(4096);
            let mut group = None;
            let t0 = tsc();
            let o = ctx.xfer(&mut blk, d, req::IN, s, &[(page, 0x1000)], 1, &mut |e| {
                group = Some(e.group);
                NO_ANSWER
            })?;
            let ticks = tsc().wrapping_sub(t0);
            o.ioerr()?;
            o.expect(
                ep,
                &[
                    Want::pr(ev_flags::WRITE, page),
                    Want::fault(ev_flags::WRITE, page, true),
                ],
            )?;
            let g = group.ok_or_else(|| msg(format_args!("no page request")))?;
            let r = ctx.iommu.page_resp(d, ep, g, resp::SUCCESS);
            ctx.expect_status("PAGE_RESP after the timeout", r, st::NOENT)?;
            Ok(msg(format_args!(" ({} M TSC ticks)", ticks / 1_000_000)))
        })();
        ctx.check(
            r,
            format_args!("SVA timeout: a page request left unanswered -> the device gives up: IOERR and a fault report; the late PAGE_RESP NOENT"),
        );
    }

    // (h) A reset while a request waits for its page response.
    let r = (|| {
        let page = VA_LAZY + 48 * 4096;
        let s = ctx.sectors(4096);
        let mut group = None;
        let o = ctx.xfer(&mut blk, d, req::IN, s, &[(page, 0x1000)], 0, &mut |e| {
            group = Some(e.group);
            STOP
        })?;
        if o.done {
            return Err(msg(format_args!("completed with status {:#x}", o.status)));
        }
        o.expect(ep, &[Want::pr(ev_flags::WRITE, page)])?;
        reset(&blk)?;
        let g = group.ok_or_else(|| msg(format_args!("no page request")))?;
        let r = ctx.iommu.page_resp(d, ep, g, resp::SUCCESS);
        ctx.expect_status("PAGE_RESP after the reset", r, st::NOENT)?;
        match blk.q.poll() {
            Ok(None) => {}
            Ok(Some(u)) => {
                return Err(msg(format_args!(
                    "completed after the reset (used id {})",
                    u.id
                )))
            }
            Err(e) => return Err(msg(format_args!("{e}"))),
        }
        if peek(blk.scratch + 16) != blk::STATUS_POISON || load(pte_at(t.pt_lazy, page)) != 0 {
            return Err(msg(format_args!("status byte or PTE written")));
        }
        Ok(Line::new())
    })();
    ctx.check(
        r,
        format_args!("SVA reset while a request waits for its page response: the request is never completed, the late PAGE_RESP NOENT"),
    );

    // Tear down: reset, DETACH, the tables unlinked.
    let r = (|| {
        reset(&blk)?;
        let r = ctx.iommu.detach(d, ep);
        ctx.expect_status("DETACH", r, st::OK)?;
        let r = ctx.iommu.page_resp(d, ep, 0x4321, resp::SUCCESS);
        ctx.expect_status("PAGE_RESP after DETACH", r, st::INVAL)?;
        let s = ctx.iommu.mmio.status();
        if !live(s) {
            return Err(msg(format_args!("virtio-iommu status {s:#x}")));
        }
        Ok(Line::new())
    })();
    unlink_tables(ctx, &t);
    ctx.check(
        r,
        format_args!("SVA teardown: virtio-blk reset, DETACH OK, PAGE_RESP afterwards INVAL, the virtio-iommu still DRIVER_OK"),
    );
    ctx.blk_requests += blk.requests;
}

/// A request on `va..va + len` in the lazy region whose pages are mapped
/// as their page requests come (`pages` of them, each exactly once);
/// the data is checked (for a write, by reading it back into the
/// identity-mapped scratch area).
#[allow(clippy::too_many_arguments)]
fn lazy(
    ctx: &mut Ctx,
    blk: &mut Blk,
    t: &Tables,
    ty: u32,
    va: u64,
    len: u32,
    pages: usize,
) -> Result<Line, Line> {
    let first = va & !0xfff;
    if (va + u64::from(len)).div_ceil(4096) * 4096 - first != pages as u64 * 4096 {
        return Err(msg(format_args!("{pages} pages do not cover the buffer")));
    }
    let frames = ctx.alloc(pages as u64 * 4096, 4096)?;
    // The frames in reverse order: page i at frame pages - 1 - i.
    let frame = |i: u64| frames + (pages as u64 - 1 - i) * 4096;
    let xlate = |a: u64| {
        let i = (a - first) / 4096;
        (a >= first && i < pages as u64).then(|| frame(i) + a % 4096)
    };
    let s = ctx.sectors(u64::from(len));
    let pat = ctx.pattern();
    let bufs = pieces(&[(va, len)], &xlate)?;
    let pt = t.pt_lazy;
    let access = if ty == req::IN {
        // The disk gets the pattern from an identity-mapped copy.
        let src = ctx.alloc(u64::from(len), 4096)?;
        let b = [Buf::id(src, len)];
        fill(&b, pat, s * SECTOR);
        ctx.plain(blk, DOMAIN_SVA, req::OUT, s, &[(src, len)])?;
        poison(bufs.all());
        ev_flags::WRITE
    } else {
        fill(bufs.all(), pat, s * SECTOR);
        ev_flags::READ
    };
    let mut mapped = 0usize;
    let o = ctx.xfer(blk, DOMAIN_SVA, ty, s, &[(va, len)], 0, &mut |e| {
        let i = e.address.wrapping_sub(first) / 4096;
        let at = pte_at(pt, e.address);
        if e.address % 4096 == 0 && i < pages as u64 && load(at) == 0 {
            store(at, frame(i) | pte::PWU);
            mapped += 1;
            resp::SUCCESS
        } else {
            resp::INVALID
        }
    })?;
    if o.status != blk_status::OK {
        return Err(msg(format_args!("status {:#x}", o.status)));
    }
    let mut want = [Want::pr(access, 0); MAX_EVENTS];
    for (i, w) in want.iter_mut().enumerate().take(pages) {
        w.addr = first + i as u64 * 4096;
    }
    o.expect(ctx.ep, &want[..pages])?;
    let n = if ty == req::IN {
        ctx.verify(bufs.all(), pat, s)?
    } else {
        let dst = ctx.alloc(u64::from(len), 4096)?;
        let b = [Buf::id(dst, len)];
        poison(&b);
        ctx.plain(blk, DOMAIN_SVA, req::IN, s, &[(dst, len)])?;
        ctx.verify(&b, pat, s)?
    };
    Ok(msg(format_args!(
        " ({mapped} pages mapped, {n} bytes verified)"
    )))
}
