// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What an endpoint's DMA addresses mean: the domains, their MAP tables or
//! attached page tables, and the [`Endpoint`] handle through which a device
//! behind the IOMMU pins its DMA buffers (docs/guest-va-dma.md).
//!
//! A MAP domain translates through its mappings to guest-physical ranges,
//! pinned as [`AddressSpace::Physical`]. A table domain hands the guest's
//! own page tables to guest-mm: the buffers are pinned as
//! [`AddressSpace::PageTables`], so the GUP fast path serves present pages
//! with a lockless range walk and the slow path sets Accessed/Dirty. No
//! translation is cached (no IOTLB): every DMA walks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use guest_mm::gup::{AddressSpace, CancelToken, Gup, GupError, GupFlags, Pinned};
use guest_mm::paging::context::{
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_SMAP, EFER_LMA, EFER_LME, EFER_NXE,
};
use guest_mm::paging::{CpuFeatures, PagingContext};

use super::event::Events;
use super::stats::IommuStats;

/// MAP flag: the device may read.
pub const MAP_READ: u32 = 1;
/// MAP flag: the device may write.
pub const MAP_WRITE: u32 = 2;
/// MAP flag: MMIO (not offered).
pub const MAP_MMIO: u32 = 4;

/// ATTACH_TABLE `table_flags` (ours; the drafts leave the field undefined).
pub mod table_flags {
    /// CR0.WP: supervisor writes honour R/W.
    pub const WP: u64 = 1 << 0;
    /// EFER.NXE: bit 63 is XD instead of reserved.
    pub const NXE: u64 = 1 << 1;
    /// CR4.SMAP: supervisor accesses to user pages fault.
    pub const SMAP: u64 = 1 << 2;
    /// The device's accesses are supervisor accesses (else user).
    pub const PRIV: u64 = 1 << 3;
    /// Translation faults produce page requests.
    pub const PRI: u64 = 1 << 4;
    /// Every flag the device knows.
    pub const ALL: u64 = WP | NXE | SMAP | PRIV | PRI;
}

/// One MAP mapping: `[virt, end]` (inclusive) onto `phys..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Last I/O virtual address, inclusive.
    pub end: u64,
    /// Guest-physical address of `virt`.
    pub phys: u64,
    /// [`MAP_READ`] | [`MAP_WRITE`].
    pub flags: u32,
}

/// A page table attached to a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// The paging context the device walks with.
    pub ctx: PagingContext,
    /// The `table_flags` of the attach.
    pub flags: u64,
}

impl Table {
    /// The context for `pgd`, `addr_width` (48 or 57) and `flags`, with the
    /// VM's MAXPHYADDR; 1G leaves are the IOMMU's capability.
    pub fn new(pgd: u64, addr_width: u32, flags: u64, maxphyaddr: u8) -> Table {
        let mut cr0 = CR0_PG | 1;
        if flags & table_flags::WP != 0 {
            cr0 |= CR0_WP;
        }
        let mut cr4 = CR4_PAE;
        if addr_width == 57 {
            cr4 |= CR4_LA57;
        }
        if flags & table_flags::SMAP != 0 {
            cr4 |= CR4_SMAP;
        }
        let mut efer = EFER_LME | EFER_LMA;
        if flags & table_flags::NXE != 0 {
            efer |= EFER_NXE;
        }
        let ctx = PagingContext::new(cr0, pgd, cr4, efer)
            .with_maxphyaddr(maxphyaddr)
            .with_features(CpuFeatures {
                gbpages: true,
                pse36: true,
            });
        Table { ctx, flags }
    }

    /// Whether the device's accesses are supervisor accesses.
    pub fn privileged(&self) -> bool {
        self.flags & table_flags::PRIV != 0
    }

    /// `flags` for an access of the device through this table: a user
    /// access unless the domain's accesses are supervisor ones.
    pub fn gup_flags(&self, flags: GupFlags) -> GupFlags {
        if self.privileged() {
            flags
        } else {
            flags | GupFlags::USER
        }
    }

    /// Whether faults become page requests.
    pub fn pri(&self) -> bool {
        self.flags & table_flags::PRI != 0
    }
}

/// What a domain translates through.
#[derive(Clone, Debug, Default)]
pub enum Kind {
    /// Nothing yet: every access faults.
    #[default]
    Empty,
    /// MAP/UNMAP mappings, keyed by their first address.
    Map(BTreeMap<u64, Mapping>),
    /// Attached page tables.
    Table(Table),
}

/// A domain: its translation and how many endpoints are attached.
#[derive(Clone, Debug, Default)]
pub struct Domain {
    /// The translation.
    pub kind: Kind,
    /// Endpoints attached.
    pub endpoints: u32,
}

/// The IOMMU's translation state.
#[derive(Debug, Default)]
pub struct Tables {
    /// Domain id -> domain.
    pub domains: HashMap<u32, Domain>,
    /// Endpoint id -> attached domain.
    pub attached: HashMap<u32, u32>,
    /// Endpoints whose page requests were stopped by a FAILURE response
    /// (until their next ATTACH_TABLE).
    pub pri_stopped: HashMap<u32, bool>,
}

/// State shared by the IOMMU device and its endpoints.
#[derive(Debug)]
pub struct Shared {
    tables: RwLock<Tables>,
    /// Endpoint ids that exist (devices behind the IOMMU).
    pub endpoints: Vec<u32>,
    /// MAXPHYADDR of the VM (see [`Shared::maxphyaddr`]).
    maxphyaddr: AtomicU8,
    /// Fault reports and page requests on their way to the event queue.
    pub events: Events,
    /// Counters.
    pub stats: IommuStats,
}

impl Shared {
    /// State for the endpoints `endpoints`.
    pub fn new(endpoints: Vec<u32>, maxphyaddr: u8) -> std::io::Result<Self> {
        Ok(Shared {
            tables: RwLock::new(Tables::default()),
            events: Events::new(&endpoints)?,
            endpoints,
            maxphyaddr: AtomicU8::new(maxphyaddr),
            stats: IommuStats::default(),
        })
    }

    /// MAXPHYADDR of the VM: the reserved-bit limit of the page tables an
    /// ATTACH_TABLE attaches.
    pub fn maxphyaddr(&self) -> u8 {
        self.maxphyaddr.load(Ordering::Relaxed)
    }

    /// Sets [`Shared::maxphyaddr`].
    pub fn set_maxphyaddr(&self, maxphyaddr: u8) {
        self.maxphyaddr.store(maxphyaddr, Ordering::Relaxed);
    }

    /// The tables, for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The tables, for changing.
    pub fn write(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a DMA access cannot be translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// The endpoint is not attached to a domain.
    Domain,
    /// No mapping, or not with the access asked for.
    Mapping,
}

/// A translation fault of one DMA access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFault {
    /// The I/O virtual address that faulted (the first byte not taken).
    pub address: u64,
    /// Whether the access was a write.
    pub write: bool,
    /// Why.
    pub reason: FaultReason,
    /// The domain's accesses are supervisor accesses.
    pub privileged: bool,
    /// The domain sends page requests for this fault (a table domain with
    /// PRI whose endpoint was not stopped by FAILURE).
    pub requestable: bool,
    /// The x86 page-fault error code, for table faults.
    pub error_code: Option<u32>,
}

impl std::fmt::Display for DmaFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.write { "write" } else { "read" };
        match self.reason {
            FaultReason::Domain => write!(
                f,
                "{what} at iova {:#x}: the endpoint is not attached to a domain",
                self.address
            ),
            FaultReason::Mapping => {
                write!(
                    f,
                    "{what} at iova {:#x}: no mapping allows it",
                    self.address
                )?;
                if let Some(code) = self.error_code {
                    write!(f, " (page-table walk: #PF error code {code:#x})")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a DMA range could not be pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// A translation fault (reportable, maybe a page request).
    Fault(DmaFault),
    /// The translation worked but the pin failed (guest-physical address
    /// outside RAM, host memory, frozen frames, cancellation).
    Pin(GupError),
}

impl std::fmt::Display for DmaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DmaError::Fault(fault) => write!(f, "translation fault: {fault}"),
            DmaError::Pin(e) => write!(f, "{e}"),
        }
    }
}

/// A device's handle on its endpoint: pins its DMA ranges through the
/// endpoint's domain, sends fault reports and page requests.
#[derive(Clone, Debug)]
pub struct Endpoint {
    id: u32,
    shared: Arc<Shared>,
}

/// How an access will be translated (decided under the tables' read lock,
/// used after it is dropped).
enum Route {
    Table(Table, bool),
    Map(u64, u64),
}

impl Endpoint {
    pub(super) fn new(id: u32, shared: Arc<Shared>) -> Self {
        Endpoint { id, shared }
    }

    /// The endpoint id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Pins `[iova, iova + len)` for a device read (or a write with
    /// `write`) into `out`, one or more pins. `extra` adds GUP flags (e.g.
    /// LONGTERM). On an error the pins taken so far stay in `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn pin(
        &self,
        gup: &Gup,
        iova: u64,
        len: u64,
        write: bool,
        extra: GupFlags,
        cancel: Option<&CancelToken>,
        out: &mut Vec<Pinned>,
    ) -> Result<(), DmaError> {
        let end = iova
            .checked_add(len)
            .ok_or(DmaError::Pin(GupError::Overflow))?;
        let mut flags = GupFlags::PIN | GupFlags::TOUCH | extra;
        if write {
            flags |= GupFlags::WRITE;
        }
        let mut at = iova;
        while at < end {
            // Where the chunk at `at` is pinned, and how a GUP error of it
            // reads (a walk's page fault is a translation fault).
            let (space, start, chunk, f, table) = match self.route(at, write)? {
                Route::Table(t, requestable) => (
                    AddressSpace::page_tables(t.ctx),
                    at,
                    end - at,
                    t.gup_flags(flags),
                    Some((t, requestable)),
                ),
                Route::Map(phys, chunk) => (
                    AddressSpace::Physical,
                    phys,
                    chunk.min(end - at),
                    flags,
                    None,
                ),
            };
            let error = |e| match &table {
                Some((t, requestable)) => self.walk_error(e, write, t, *requestable),
                None => DmaError::Pin(e),
            };
            let p = gup
                .pin_cancellable(&space, start, chunk, f, cancel)
                .map_err(error)?;
            let (got, short) = (p.bytes(), p.short_reason().copied());
            out.push(p);
            if got < chunk {
                return Err(error(short.unwrap_or(GupError::Again)));
            }
            at += chunk;
        }
        Ok(())
    }

    /// The guest-physical address `iova` translates to for a read (or
    /// `write`), through the same GUP path as DMA but without pinning or
    /// setting Accessed/Dirty (a `GET` reference, dropped at once).
    pub fn translate(&self, gup: &Gup, iova: u64, write: bool) -> Result<u64, DmaError> {
        let mut flags = GupFlags::GET;
        if write {
            flags |= GupFlags::WRITE;
        }
        match self.route(iova, write)? {
            Route::Table(table, requestable) => {
                let flags = table.gup_flags(flags);
                let space = AddressSpace::page_tables(table.ctx);
                // The first byte of iova's 4K page: every byte of a page
                // translates alike, and a one-byte GUP range at the last
                // byte of the address space would end at 2^64, which a
                // u64 cannot hold (Overflow).
                let page = iova & !0xfff;
                let p = gup.pin(&space, page, 1, flags).map_err(|e| {
                    match self.walk_error(e, write, &table, requestable) {
                        DmaError::Fault(f) => DmaError::Fault(DmaFault { address: iova, ..f }),
                        e => e,
                    }
                })?;
                p.iter_extents()
                    .next()
                    .map(|e| e.gpa + (iova - page))
                    .ok_or(DmaError::Pin(GupError::Again))
            }
            Route::Map(phys, _) => Ok(phys),
        }
    }

    /// Decides how the access at `at` is translated.
    fn route(&self, at: u64, write: bool) -> Result<Route, DmaError> {
        let tables = self.shared.read();
        let fault = |reason, requestable, privileged| {
            DmaError::Fault(DmaFault {
                address: at,
                write,
                reason,
                privileged,
                requestable,
                error_code: None,
            })
        };
        let Some(domain) = tables
            .attached
            .get(&self.id)
            .and_then(|d| tables.domains.get(d))
        else {
            return Err(fault(FaultReason::Domain, false, false));
        };
        match &domain.kind {
            Kind::Empty => Err(fault(FaultReason::Mapping, false, false)),
            Kind::Table(t) => {
                let stopped = tables.pri_stopped.get(&self.id).copied().unwrap_or(false);
                Ok(Route::Table(*t, t.pri() && !stopped))
            }
            Kind::Map(maps) => {
                let found = maps.range(..=at).next_back().filter(|(_, m)| at <= m.end);
                let Some((&virt, m)) = found else {
                    return Err(fault(FaultReason::Mapping, false, false));
                };
                let need = if write { MAP_WRITE } else { MAP_READ };
                if m.flags & need == 0 {
                    return Err(fault(FaultReason::Mapping, false, false));
                }
                let off = at - virt;
                // Up to the mapping's end (inclusive), without overflow.
                let chunk = (m.end - at).saturating_add(1);
                Ok(Route::Map(m.phys.wrapping_add(off), chunk))
            }
        }
    }

    /// A GUP error of a table walk: page faults are translation faults, the
    /// rest (no RAM behind the frame, host errors) pin errors.
    fn walk_error(&self, e: GupError, write: bool, table: &Table, requestable: bool) -> DmaError {
        match e {
            GupError::Fault {
                address,
                fault: Some(f),
                ..
            } => DmaError::Fault(DmaFault {
                address,
                write,
                reason: FaultReason::Mapping,
                privileged: table.privileged(),
                // A #GP (non-canonical address) cannot be paged in.
                requestable: requestable && f.is_page_fault(),
                error_code: f.error_code().map(|c| c.0),
            }),
            e => DmaError::Pin(e),
        }
    }

    /// Sends a fault report for `fault` on the event queue.
    pub fn report_fault(&self, fault: &DmaFault) {
        self.shared.stats.fault_reported();
        self.shared.events.report(self.id, fault);
    }

    /// Sends a page request for the page of `fault`; returns its group id.
    pub fn page_request(&self, fault: &DmaFault) -> u16 {
        self.shared.stats.page_request();
        self.shared.events.page_request(self.id, fault)
    }

    /// The answer to page request `group`, once there is one.
    pub fn response(&self, group: u16) -> Option<super::event::Response> {
        self.shared.events.take_response(self.id, group)
    }

    /// Whether page request `group` is still known to the IOMMU (false once
    /// an IOMMU reset forgot it: it will never be answered).
    pub fn known(&self, group: u16) -> bool {
        self.shared.events.known(self.id, group)
    }

    /// Gives up on page request `group` (timed out, or the device reset).
    pub fn abandon(&self, group: u16) {
        self.shared.events.abandon(self.id, group);
    }

    /// The eventfd written when a page response for this endpoint arrives.
    pub fn response_evt(&self) -> &vmm_sys_util::eventfd::EventFd {
        self.shared.events.response_evt(self.id)
    }

    /// Counts a page request that timed out.
    pub fn timed_out(&self) {
        self.shared.stats.timeout();
    }
}
