// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The slow path (DESIGN 4.6): under the read side of the memory-map lock,
//! page by page (a large leaf counts as one page), it fixes whatever made the
//! fast path give up, then takes the page the same way the fast path does
//! (pin, then recheck the leaf).
//!
//! For each page:
//! 1. Cancelled? Interrupted.
//! 2. Translate (guest-virtual spaces). A page fault goes to the address
//!    space's fault handler: Retry walks again, Inject ends the request with
//!    the #PF for the vCPU, Fail (or NOFAULT, or no handler) is a Fault.
//!    With TOUCH, missing A/D bits are set by compare-exchange and the walk
//!    is retried.
//! 3. No RAM region: Fault, or a hole with DUMP. WRITE to a read-only
//!    region: Fault (FORCE never overrides the host). LONGTERM in a
//!    removable region: NoMemory.
//! 4. Take the frame or block. Unpopulated: populate the host pages
//!    (MADV_POPULATE_READ/WRITE), mark them populated, retry. Frozen: wait,
//!    bounded, then Again.
//! 5. Recheck the leaf and the entries above it; changed: release and retry.
//! 6. LONGTERM: lock the host pages and count them against the VM's limit.
//!
//! Every retry is bounded ([`MAX_RETRIES`] per page) so a guest that keeps
//! rewriting its tables gets Again, never a livelock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::paging::entry::{reread_leaf, PTE_A, PTE_D};
use crate::paging::walker::{translate_upper, Upper};
use crate::paging::{touch, Access, FaultKind, PageSize, PagingContext, TouchError};

use super::error::GupError;
use super::flags::GupFlags;
use super::frames::Refused;
use super::longterm::Longterm;
use super::memmap::{MemoryMap, RamRegion, BLOCK_SIZE, PAGE_SIZE};
use super::pin::Builder;
use super::space::{CancelToken, FaultHandler, FaultOutcome};
use super::stats::GupStats;

/// Retries per page before the slow path gives up with Again.
pub const MAX_RETRIES: u32 = 16;

/// What the slow path needs from the engine.
pub(crate) struct Slow<'a> {
    pub(crate) map: &'a MemoryMap,
    pub(crate) stats: &'a GupStats,
    pub(crate) flags: GupFlags,
    pub(crate) cancel: Option<&'a CancelToken>,
    pub(crate) freeze_wait: Duration,
    pub(crate) longterm: Option<&'a Longterm>,
}

/// One page's worth of work resolved to guest-physical memory.
struct Target<'m> {
    gpa: u64,
    len: u64,
    large: bool,
    /// The leaf entry to recheck: (its location, the value read).
    leaf: Option<crate::paging::LeafEntry>,
    /// The entries above the leaf, to recheck too.
    upper: Option<Upper<'m>>,
}

impl<'a> Slow<'a> {
    /// Take `[b.next(), end)`; returns why it stopped early, if it did.
    pub(crate) fn run(
        &self,
        b: &mut Builder,
        end: u64,
        paging: Option<(&PagingContext, Access, Option<&dyn FaultHandler>)>,
    ) -> Option<GupError> {
        let mut retries = 0u32;
        let mut frozen_since: Option<Instant> = None;
        while b.next() < end {
            if self.cancel.is_some_and(|c| c.is_cancelled()) {
                return Some(GupError::Interrupted);
            }
            if retries > MAX_RETRIES {
                return Some(GupError::Again);
            }
            let addr = b.next();
            let target = match paging {
                None => Target {
                    gpa: addr,
                    len: (PAGE_SIZE - addr % PAGE_SIZE).min(end - addr),
                    large: false,
                    leaf: None,
                    upper: None,
                },
                Some((ctx, access, handler)) => {
                    match self.resolve(ctx, access, handler, addr, end) {
                        Ok(Some(t)) => t,
                        Ok(None) => {
                            // A fault resolved or A/D bits set: walk again.
                            retries += 1;
                            self.stats.retry();
                            continue;
                        }
                        Err(e) => return Some(e),
                    }
                }
            };
            let Some(region) = self.map.find(target.gpa) else {
                if self.flags.contains(GupFlags::DUMP) {
                    // A hole: one page (or the rest of the leaf's page).
                    let len = (PAGE_SIZE - target.gpa % PAGE_SIZE).min(target.len);
                    b.hole(target.gpa, len);
                    self.stats.holes(1);
                    retries = 0;
                    continue;
                }
                return Some(GupError::fault_at(addr));
            };
            // A large leaf may run past the region: take what is inside it;
            // the next iteration finds the next region (or the hole).
            let len = target.len.min(region.remaining(target.gpa));
            if self.flags.contains(GupFlags::WRITE) && region.options().read_only {
                return Some(GupError::fault_at(addr));
            }
            if self.longterm.is_some() && region.options().removable {
                return Some(GupError::NoMemory);
            }
            match b.take(region, target.gpa, len, target.large) {
                Ok(()) => {}
                Err(Refused::NotPopulated) => {
                    // Hold the references while populating (see
                    // frames::take_frame_unpopulated), then keep them.
                    match b.take_unpopulated(region, target.gpa, len, target.large) {
                        Ok(()) => {
                            if let Err(e) = self.populate(region, target.gpa, len, target.large) {
                                b.untake_last(len);
                                return Some(e);
                            }
                        }
                        Err(Refused::Overflow) => return Some(GupError::Overflow),
                        // Frozen meanwhile: the frozen-wait below, next time.
                        Err(_) => {
                            retries += 1;
                            self.stats.retry();
                            continue;
                        }
                    }
                }
                Err(Refused::Frozen) | Err(Refused::Busy) => {
                    let since = *frozen_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.freeze_wait {
                        return Some(GupError::Again);
                    }
                    self.stats.frozen_wait();
                    std::thread::yield_now();
                    continue;
                }
                Err(Refused::Overflow) => return Some(GupError::Overflow),
            }
            frozen_since = None;
            // With paging disabled there is no entry to recheck (its `gpa`
            // is None, and re-reading it gives None): as on the fast path,
            // only an entry in memory can change under us.
            if let Some(leaf) = target.leaf.as_ref().filter(|l| l.gpa.is_some()) {
                let upper_ok = target.upper.is_none_or(|u| u.intact(leaf.level));
                if reread_leaf(self.map.memory(), leaf) != Some(leaf.value) || !upper_ok {
                    b.untake_last(len);
                    retries += 1;
                    self.stats.retry();
                    continue;
                }
            }
            if let Some(lt) = self.longterm {
                if let Err(e) = self.lock_longterm(lt, region, target.gpa, len) {
                    b.untake_last(len);
                    return Some(e);
                }
            }
            retries = 0;
        }
        None
    }

    /// Translate `addr`: `Ok(None)` means "walk again" (a fault was
    /// resolved or A/D bits were set).
    fn resolve(
        &self,
        ctx: &PagingContext,
        access: Access,
        handler: Option<&dyn FaultHandler>,
        addr: u64,
        end: u64,
    ) -> Result<Option<Target<'a>>, GupError> {
        let mem = self.map.memory();
        let (mut t, upper) = match translate_upper(mem, ctx, addr, access) {
            Ok(found) => found,
            Err(fault) => {
                let is_pf = matches!(fault.kind, FaultKind::PageFault(_));
                let handler = handler.filter(|_| is_pf && !self.flags.contains(GupFlags::NOFAULT));
                let outcome = handler.map_or(FaultOutcome::Fail, |h| h.handle(&fault, access));
                return match outcome {
                    FaultOutcome::Retry => {
                        self.stats.fault_handled();
                        Ok(None)
                    }
                    FaultOutcome::Inject(inject) => {
                        self.stats.fault_injected();
                        Err(GupError::Fault {
                            address: addr,
                            fault: Some(fault),
                            inject: Some(inject),
                        })
                    }
                    FaultOutcome::Fail => {
                        self.stats.fault_failed();
                        Err(GupError::Fault {
                            address: addr,
                            fault: Some(fault),
                            inject: None,
                        })
                    }
                };
            }
        };
        let need = if access.is_write() {
            PTE_A | PTE_D
        } else {
            PTE_A
        };
        if self.flags.contains(GupFlags::TOUCH)
            && t.leaf.gpa.is_some()
            && t.leaf.value & need != need
        {
            // `touch` walks again and returns the translation whose
            // entries it set: take that one (the recheck after the pin
            // compares against the leaf value it wrote).
            t = match touch(mem, ctx, addr, access) {
                Ok(touched) => {
                    self.stats.touched();
                    touched
                }
                // The guest changed the tables under us: walk again.
                Err(TouchError::Fault(_)) => return Ok(None),
                Err(TouchError::Contended) => return Err(GupError::Again),
            };
        }
        let size = t.page_size.bytes();
        let leaf_end = (addr | (size - 1)).saturating_add(1);
        Ok(Some(Target {
            gpa: t.gpa,
            len: leaf_end.min(end) - addr,
            large: t.page_size != PageSize::Size4K,
            leaf: Some(t.leaf),
            upper: Some(upper),
        }))
    }

    /// Populate the host pages of `[gpa, gpa + len)` (a whole 2M block for
    /// a large leaf), then mark their frames populated.
    fn populate(
        &self,
        region: &RamRegion,
        gpa: u64,
        len: u64,
        large: bool,
    ) -> Result<(), GupError> {
        let (first, last) = if large {
            let rel_first = (gpa - region.start()) / BLOCK_SIZE * BLOCK_SIZE;
            let rel_last = ((gpa + len - 1 - region.start()) / BLOCK_SIZE + 1) * BLOCK_SIZE;
            (
                region.start() + rel_first,
                region.start() + rel_last.min(region.len()),
            )
        } else {
            (
                gpa & !(PAGE_SIZE - 1),
                ((gpa + len - 1) & !(PAGE_SIZE - 1)) + PAGE_SIZE,
            )
        };
        let write = self.flags.contains(GupFlags::WRITE) && !region.options().read_only;
        populate_host(region.host_addr(first), (last - first) as usize, write)?;
        self.stats.populated();
        let ft = region.frames();
        for f in region.frame_index(first)..=region.frame_index(last - 1) {
            ft.mark_populated(f);
        }
        Ok(())
    }

    fn lock_longterm(
        &self,
        lt: &Longterm,
        region: &Arc<RamRegion>,
        gpa: u64,
        len: u64,
    ) -> Result<(), GupError> {
        // Long-term pins must be resident now, not at the first DMA.
        let write = !region.options().read_only;
        populate_host(
            region.host_addr(gpa & !(PAGE_SIZE - 1)),
            (((gpa + len - 1) | (PAGE_SIZE - 1)) + 1 - (gpa & !(PAGE_SIZE - 1))) as usize,
            write,
        )?;
        lt.acquire(region, gpa, len)
    }
}

/// MADV_POPULATE_READ and MADV_POPULATE_WRITE (Linux 5.14).
const MADV_POPULATE_READ: libc::c_int = 22;
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Fault in `[host, host + len)` (page aligned) for reading or writing, and
/// map the host's errors to ours.
pub(crate) fn populate_host(host: usize, len: usize, write: bool) -> Result<(), GupError> {
    let advice = if write {
        MADV_POPULATE_WRITE
    } else {
        MADV_POPULATE_READ
    };
    loop {
        // SAFETY: the range is part of a live guest-memory mapping (the
        // caller holds its region); populating only faults pages in and
        // never changes their contents.
        let rc = unsafe { libc::madvise(host as *mut libc::c_void, len, advice) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            Some(libc::ENOMEM) => GupError::NoMemory,
            Some(libc::EHWPOISON) => GupError::HwPoison,
            Some(libc::EINVAL) => return touch_host(host, len, write),
            _ => GupError::fault_at(host as u64),
        });
    }
}

/// Kernels before 5.14 have no MADV_POPULATE: fault the pages in by
/// touching one byte per page (an atomic add of zero for writes, which
/// cannot change what a racing guest writes).
fn touch_host(host: usize, len: usize, write: bool) -> Result<(), GupError> {
    use std::sync::atomic::{AtomicU8, Ordering};
    for off in (0..len).step_by(PAGE_SIZE as usize) {
        // SAFETY: as in `populate_host`: inside a live mapping; the guest may
        // access the byte concurrently, so only atomic accesses are used.
        let byte = unsafe { &*((host + off) as *const AtomicU8) };
        if write {
            byte.fetch_add(0, Ordering::Relaxed);
        } else {
            byte.load(Ordering::Relaxed);
        }
    }
    Ok(())
}
