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
//!    leaf entry; if it changed, release and stop.
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

use crate::paging::entry::{LeafSlot, PTE_A, PTE_D};
use crate::paging::walker::walk_with_path;
use crate::paging::{Access, FaultReason, PageSize, PagingContext, RangeOutcome};

use super::frames::Refused;
use super::memmap::{MemoryMap, PAGE_SIZE};
use super::pin::Builder;
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
    let need = if write { PTE_A | PTE_D } else { PTE_A };
    let mut stop = None;
    // The region of the previous leaf: most leaves fall in the same one.
    let mut cached = None;
    let start = b.next();
    let outcome = walk_with_path(
        map.memory(),
        ctx,
        start,
        end - start,
        access,
        |m, _, slot| match take_leaf(map, b, &mut cached, m, slot, need, write) {
            Ok(()) => ControlFlow::Continue(()),
            Err(reason) => {
                stop = Some(reason);
                ControlFlow::Break(())
            }
        },
    );
    match outcome {
        RangeOutcome::Complete => None,
        RangeOutcome::Stopped => stop,
        RangeOutcome::Faulted(f) => Some(match f.reason {
            FaultReason::NotPresent | FaultReason::TableOutsideRam => Fallback::NotPresent,
            _ => Fallback::Protection,
        }),
    }
}

#[inline]
fn take_leaf<'m>(
    map: &'m MemoryMap,
    b: &mut Builder,
    cached: &mut Option<&'m std::sync::Arc<super::memmap::RamRegion>>,
    m: &crate::paging::Mapping,
    slot: LeafSlot<'_>,
    need: u64,
    write: bool,
) -> Result<(), Fallback> {
    if m.leaf.value & need != need {
        return Err(Fallback::AccessedDirty);
    }
    let region = match *cached {
        Some(r) if r.contains(m.gpa) => r,
        _ => {
            let r = map.find(m.gpa).ok_or(Fallback::NotRam)?;
            *cached = Some(r);
            r
        }
    };
    if region.remaining(m.gpa) < m.len {
        return Err(Fallback::NotRam);
    }
    if write && region.options().read_only {
        return Err(Fallback::ReadOnly);
    }
    let large = m.page_size != PageSize::Size4K;
    b.take(region, m.gpa, m.len, large).map_err(refused)?;
    // Pin first, then recheck (see the module comment).
    // (With paging disabled there is no entry to recheck.)
    if m.leaf.gpa.is_some() && slot.reread() != Some(m.leaf.value) {
        b.untake_last(m.len);
        return Err(Fallback::LeafChanged);
    }
    Ok(())
}
