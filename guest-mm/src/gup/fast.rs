// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The fast path (DESIGN 4.5): no lock, no write to guest memory, no
//! syscall. It takes what is already perfect and hands the rest to the slow
//! path with the reason it stopped.
//!
//! 1. The caller loaded the memory-map snapshot without a lock.
//! 2. Range-walk the guest's tables with atomic loads (descending once) and
//!    stop at anything imperfect: a walk fault, A (or D for WRITE) clear,
//!    an address outside RAM, WRITE to a read-only region.
//! 3. Pin first ([`Builder::take`]: one RMW per frame, or per 2M block for a
//!    large leaf, refused when frozen or unpopulated), **then** re-read the
//!    leaf entry, and the entries above it (once per run of 4K leaves, after
//!    its last pin); if any changed, release and stop.
//!
//! # Why pin-then-recheck is enough
//!
//! Whoever takes a frame away (balloon, hot-unplug, snapshot discard)
//! freezes it first with a compare-exchange from "no references" and only
//! then discards it. The pin is a `fetch_add` on the same word: whichever
//! comes second sees the first, so a frame is never pinned and frozen at
//! once (guarantee 1). The recheck is sequentially consistent and comes after
//! the pin: if the guest unmapped or remapped the page before our pin became
//! visible, we see the new entry and back off; if it did so afterwards, the
//! page was mapped at the instant we pinned it, which is all a device can
//! ask of a racing guest (guarantees 2 and 3). The loom model in
//! `guest-mm/tests/loom_fast_path.rs` checks every interleaving of this
//! protocol, with the code of `frames.rs`.

use std::ops::ControlFlow;
use std::sync::Arc;

use crate::paging::entry::{LeafSlot, PTE_A, PTE_D, PTE_P};
use crate::paging::walker::{walk_visit, Path, PteRun, RunEnd, Upper, Visitor};
use crate::paging::{Access, FaultReason, Mapping, PageSize, PagingContext, RangeOutcome};

use super::frames::Refused;
use super::memmap::{MemoryMap, RamRegion, PAGE_SIZE};
use super::pin::{Builder, FrameCursor};
use super::stats::Fallback;

/// Why the fast path stopped (at [`Builder::next`]); `None` if it took the
/// whole range.
pub(crate) type FastEnd = Option<Fallback>;

pub(crate) fn refused(r: Refused) -> Fallback {
    match r {
        Refused::Frozen | Refused::Busy => Fallback::Frozen,
        Refused::NotPopulated => Fallback::NotPopulated,
        Refused::Overflow => Fallback::Overflow,
    }
}

/// Guest-physical addresses: `[b.next(), end)`.
pub(crate) fn physical(map: &MemoryMap, b: &mut Builder, end: u64, write: bool) -> FastEnd {
    while b.next() < end {
        let gpa = b.next();
        let Some(region) = map.find(gpa) else {
            return Some(Fallback::NotRam);
        };
        if write && region.options().read_only {
            return Some(Fallback::ReadOnly);
        }
        // One page at a time: each page is its own unit.
        let len = (PAGE_SIZE - gpa % PAGE_SIZE).min(end - gpa);
        if let Err(r) = b.take(region, gpa, len, false) {
            return Some(refused(r));
        }
    }
    None
}

/// Guest-virtual addresses through the tables of `ctx`: `[b.next(), end)`.
pub(crate) fn page_tables(
    map: &MemoryMap,
    b: &mut Builder,
    end: u64,
    ctx: &PagingContext,
    access: Access,
) -> FastEnd {
    let write = access.is_write();
    let mut v = Fast {
        map,
        b,
        cached: None,
        cursor: None,
        need: if write { PTE_A | PTE_D } else { PTE_A },
        write,
        stop: None,
    };
    let start = v.b.next();
    match walk_visit(map.memory(), ctx, start, end - start, access, &mut v) {
        RangeOutcome::Complete => None,
        RangeOutcome::Stopped => v.stop,
        RangeOutcome::Faulted(f) => Some(match f.reason {
            FaultReason::NotPresent | FaultReason::TableOutsideRam => Fallback::NotPresent,
            _ => Fallback::Protection,
        }),
    }
}

/// The fast path as a walk visitor.
struct Fast<'m, 'b> {
    map: &'m MemoryMap,
    b: &'b mut Builder,
    /// The region of the previous page: most pages fall in the same one.
    cached: Option<&'m Arc<RamRegion>>,
    /// Its frame counters, for runs of 4K leaves.
    cursor: Option<FrameCursor>,
    /// A, and D for WRITE.
    need: u64,
    write: bool,
    stop: FastEnd,
}

impl<'m> Fast<'m, '_> {
    /// The RAM region of `[gpa, gpa + len)`, usable for this request.
    #[inline(always)]
    fn region(&mut self, gpa: u64, len: u64) -> Result<&'m Arc<RamRegion>, Fallback> {
        let region = match self.cached {
            Some(r) if r.contains(gpa) => r,
            _ => {
                let r = self.map.find(gpa).ok_or(Fallback::NotRam)?;
                if self.write && r.options().read_only {
                    return Err(Fallback::ReadOnly);
                }
                self.cached = Some(r);
                r
            }
        };
        if region.remaining(gpa) < len {
            return Err(Fallback::NotRam);
        }
        Ok(region)
    }

    #[inline(always)]
    fn stop(&mut self, reason: Fallback) -> ControlFlow<()> {
        self.stop = Some(reason);
        ControlFlow::Break(())
    }
}

impl<'m> Visitor<'m> for Fast<'m, '_> {
    /// Large leaves (and any leaf the walker does not batch).
    fn leaf(
        &mut self,
        m: &Mapping,
        _path: &Path,
        upper: &Upper<'m>,
        slot: LeafSlot<'m>,
    ) -> ControlFlow<()> {
        // (With paging disabled there is no entry, so no A/D to check.)
        if m.leaf.gpa.is_some() && m.leaf.value & self.need != self.need {
            return self.stop(Fallback::AccessedDirty);
        }
        let region = match self.region(m.gpa, m.len) {
            Ok(r) => r,
            Err(reason) => return self.stop(reason),
        };
        let large = m.page_size != PageSize::Size4K;
        if let Err(r) = self.b.take(region, m.gpa, m.len, large) {
            return self.stop(refused(r));
        }
        // Pin first, then recheck the leaf and the entries above it (see
        // the module comment). With paging disabled there is no entry.
        if m.leaf.gpa.is_some()
            && (slot.reread() != Some(m.leaf.value) || !upper.intact(m.leaf.level))
        {
            self.b.untake_last(m.len);
            return self.stop(Fallback::LeafChanged);
        }
        ControlFlow::Continue(())
    }

    /// A run of 4K leaves: the hot loop.
    #[inline(always)]
    fn pte_run(&mut self, run: &PteRun<'m>) -> Option<RunEnd> {
        let mark = self.b.bytes();
        let end = self.take_run(run);
        // Each leaf was rechecked after its pin; the entries above the page
        // table are rechecked once, after the last pin of the run: if they
        // read the same now as at the walk, they held for every pin taken
        // in between. If not, the table may have been swapped out from
        // under the run: give every page of it back.
        if self.b.bytes() != mark && !run.upper_intact() {
            self.b.rollback_to(mark);
            self.stop = Some(Fallback::LeafChanged);
            return Some(RunEnd::Stop);
        }
        Some(end)
    }
}

impl<'m> Fast<'m, '_> {
    /// Take the leaves of `run` until one is not perfect.
    #[inline(always)]
    fn take_run(&mut self, run: &PteRun<'m>) -> RunEnd {
        let mut cur = self.cursor;
        // Counted locally and handed over at the end (see take_4k).
        let (mut bytes, mut pages) = (0u64, 0u64);
        let mut stop = None;
        for i in run.lo..=run.hi {
            let e = run.entry(i);
            // Shuffled frames make the pin's RMW a cache miss: start
            // fetching the counter of the entry 16 ahead now.
            if i + 16 <= run.hi {
                if let Some(c) = &cur {
                    c.prefetch(run.page(run.entry(i + 16)));
                }
            }
            if !run.accepts(e) {
                // Not present, reserved bits or rights: the slow path will
                // walk it again and report exactly what the CPU would.
                stop = Some(if e & PTE_P == 0 {
                    Fallback::NotPresent
                } else {
                    Fallback::Protection
                });
                break;
            }
            if e & self.need != self.need {
                stop = Some(Fallback::AccessedDirty);
                break;
            }
            // Only the run's first and last pages can be partial.
            let (gpa, len, page) = if i != run.lo && i != run.hi {
                let page = run.page(e);
                (page, PAGE_SIZE, page)
            } else {
                let va = run.va(i);
                let page = run.page(e);
                let len = (va | (PAGE_SIZE - 1)).min(run.last) - va + 1;
                (page | (va & (PAGE_SIZE - 1)), len, page)
            };
            let c = match cur {
                Some(c) if c.covers(page) => c,
                _ => match self.region(gpa, len) {
                    Ok(region) => {
                        let c = self.b.cursor(region);
                        cur = Some(c);
                        c
                    }
                    Err(reason) => {
                        stop = Some(reason);
                        break;
                    }
                },
            };
            if let Err(r) = self.b.take_4k(&c, gpa, len) {
                stop = Some(refused(r));
                break;
            }
            bytes += len;
            pages += 1;
            // Pin first, then recheck.
            if run.entry(i) != e {
                self.b.count_4k(bytes, pages);
                (bytes, pages) = (0, 0);
                self.b.untake_last(len);
                stop = Some(Fallback::LeafChanged);
                break;
            }
        }
        self.b.count_4k(bytes, pages);
        self.cursor = cur;
        match stop {
            None => RunEnd::Continue,
            Some(reason) => {
                self.stop = Some(reason);
                RunEnd::Stop
            }
        }
    }
}
