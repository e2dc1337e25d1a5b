// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The walker: translate a range of linear addresses through the guest's page
//! tables, as the CPU would, descending the tables once.
//!
//! [`walk_range`] starts at the root, and for each table it reaches resolves
//! the table page to host memory once, then iterates the entries that cover
//! the range with atomic loads, descending into lower tables and yielding one
//! [`Mapping`] per leaf. It stops at the first fault. [`translate`] is the
//! one-address case of the same code, so the two can never disagree.
//!
//! The walk is pure: it never writes the tables. Accessed and Dirty bits are
//! set by the separate [`touch`](super::touch) step.
//!
//! Garbage is safe by construction: the depth is bounded by the mode's number
//! of levels (so a table that points at itself is just read again, as the CPU
//! would), every entry address is checked against guest RAM before it is
//! read, and nothing here can panic on entry contents.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::GuestMemoryBackend;

use super::access::{Access, AccessCheck, ErrorCode, Fault, FaultKind, FaultReason, Permissions};
use super::context::{PagingContext, PagingMode};
use super::entry::{
    Decoded, Layout, LeafEntry, LeafSlot, PageSize, Table, LEAF_SLOT_NONE, PTE_A, PTE_D, PTE_P,
    PTE_RW, PTE_US, PTE_XD,
};

/// One leaf mapping met by [`walk_range`]: the part of the requested range
/// that a single leaf entry maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// First linear address of the requested range that this leaf maps.
    pub va: u64,
    /// Bytes of the requested range, from `va`, that this leaf maps.
    pub len: u64,
    /// Guest-physical address of `va`.
    pub gpa: u64,
    /// Size of the page the leaf maps.
    pub page_size: PageSize,
    /// Effective permissions.
    pub perms: Permissions,
    /// The leaf entry, for rechecks and A/D updates.
    pub leaf: LeafEntry,
}

/// A successful translation of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The guest-physical address.
    pub gpa: u64,
    /// Size of the page the leaf maps.
    pub page_size: PageSize,
    /// Effective permissions.
    pub perms: Permissions,
    /// The leaf entry.
    pub leaf: LeafEntry,
}

/// How a [`walk_range`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RangeOutcome {
    /// Every byte of the range was mapped and passed to the callback.
    Complete,
    /// The callback asked to stop.
    Stopped,
    /// The walk reached an address the access may not use; everything before
    /// `fault.address` was passed to the callback.
    Faulted(Fault),
}

/// Translate `address` for `access` in the address space `ctx` describes,
/// reading the page tables from `mem`.
///
/// Returns the translation, or the fault the CPU would raise.
pub fn translate<M>(
    mem: &M,
    ctx: &PagingContext,
    address: u64,
    access: Access,
) -> Result<Translation, Fault>
where
    M: GuestMemoryBackend + ?Sized,
{
    let mut found = None;
    let outcome = walk_range(mem, ctx, address, 1, access, |m| {
        found = Some(Translation {
            gpa: m.gpa,
            page_size: m.page_size,
            perms: m.perms,
            leaf: m.leaf,
        });
        ControlFlow::Break(())
    });
    match (outcome, found) {
        (RangeOutcome::Faulted(fault), _) => Err(fault),
        (_, Some(t)) => Ok(t),
        // A one-byte walk either faults or yields exactly one mapping.
        (_, None) => Err(Fault {
            address,
            kind: FaultKind::GeneralProtection,
            level: 0,
            reason: FaultReason::AddressTooWide,
        }),
    }
}

/// Walk the linear range `[start, start + len)` for `access`, calling `f` with
/// each leaf mapping in address order, until the range is done, `f` breaks,
/// or an address faults.
///
/// Each paging structure is read once per walk: a range of N 4K pages under
/// one page table costs one descent and N entry loads.
pub fn walk_range<M, F>(
    mem: &M,
    ctx: &PagingContext,
    start: u64,
    len: u64,
    access: Access,
    mut f: F,
) -> RangeOutcome
where
    M: GuestMemoryBackend + ?Sized,
    F: FnMut(&Mapping) -> ControlFlow<()>,
{
    walk_with_path(mem, ctx, start, len, access, |m, _, _| f(m))
}

/// A run of 8-byte level-1 entries (4K leaves) of one page table, handed to
/// a [`Visitor`] that takes them in bulk (the GUP fast path) instead of one
/// [`Mapping`] at a time. It carries everything needed to decide, per entry
/// and with a few mask tests, what the full walk would decide: present, no
/// reserved bit, access rights allowed given the upper levels. Protection
/// keys are not modelled here: when they apply the walker never offers a
/// run.
pub(crate) struct PteRun<'m> {
    entries: *const AtomicU64,
    /// First and last index of the run in the table.
    pub(crate) lo: u64,
    pub(crate) hi: u64,
    /// Linear address of the page of entry 0 of the table.
    base: u64,
    /// First and last byte of the requested range inside this run.
    pub(crate) first: u64,
    pub(crate) last: u64,
    addr_mask: u64,
    rsvd: u64,
    /// Bit `rw | us << 1 | xd << 2` (the entry's own bits) is set when the
    /// access is allowed with those bits under the upper levels' rights.
    ok: u8,
    upper: Upper<'m>,
}

impl<'m> PteRun<'m> {
    /// Atomically read entry `i` (in `lo..=hi`), sequentially consistent
    /// (also used for the recheck after a pin).
    #[inline(always)]
    pub(crate) fn entry(&self, i: u64) -> u64 {
        debug_assert!(i >= self.lo && i <= self.hi);
        // SAFETY: `entries` is the host address of a table that `Table::new`
        // resolved inside a live region borrowed for 'm, and the walker only
        // builds a run whose `lo..=hi` entries all lie in the valid part of
        // it (8-byte aligned, checked when the table was resolved).
        unsafe { &*self.entries.add(i as usize) }.load(Ordering::SeqCst)
    }

    /// Whether entry value `e` is a present 4K leaf without reserved bits
    /// that allows the walk's access.
    #[inline(always)]
    pub(crate) fn accepts(&self, e: u64) -> bool {
        let rights = ((e >> 1) & 3) | ((e >> 61) & 4);
        e & PTE_P != 0 && e & self.rsvd == 0 && self.ok & (1 << rights) != 0
    }

    /// Whether the entries above this page table still hold what the walk
    /// read (see [`Upper::intact`]).
    #[inline]
    pub(crate) fn upper_intact(&self) -> bool {
        self.upper.intact(1)
    }

    /// Guest-physical page address of entry value `e`.
    #[inline(always)]
    pub(crate) fn page(&self, e: u64) -> u64 {
        e & self.addr_mask
    }

    /// First linear address of entry `i` inside the requested range.
    #[inline(always)]
    pub(crate) fn va(&self, i: u64) -> u64 {
        if i == self.lo {
            self.first
        } else {
            self.base | (i << 12)
        }
    }
}

/// How a [`Visitor`] finished a [`PteRun`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunEnd {
    /// Every entry was taken; the walk goes on.
    Continue,
    /// The visitor stopped the walk.
    Stop,
}

/// The paging-structure entries above the current leaf, with where they live
/// in host memory, for the GUP fast path's recheck after a pin: not only
/// the leaf entry may change under a pin, a whole table may be swapped out
/// from above it (a page table replaced by a 2M leaf leaves the old table
/// page, and its stale entries, untouched).
#[derive(Clone, Copy)]
pub(crate) struct Upper<'m> {
    entries: [(LeafSlot<'m>, u64); 6],
}

impl<'m> Upper<'m> {
    const NONE: Upper<'static> = Upper {
        entries: [(LEAF_SLOT_NONE, 0); 6],
    };

    /// Whether every entry above `leaf_level` still holds what the walk
    /// read, Accessed and Dirty bits aside (setting them changes no
    /// translation). Entries not in memory (PAE PDPTE registers) count as
    /// intact.
    #[inline]
    pub(crate) fn intact(&self, leaf_level: u8) -> bool {
        let from = usize::from(leaf_level) + 1;
        self.entries
            .get(from..)
            .unwrap_or(&[])
            .iter()
            .all(|(slot, v)| match slot.reread() {
                None => true,
                Some(now) => (now ^ v) & !(PTE_A | PTE_D) == 0,
            })
    }
}

/// What a range walk calls: one [`Mapping`] per leaf, or, where the visitor
/// wants them, whole runs of 4K leaves.
pub(crate) trait Visitor<'m> {
    /// One leaf mapping (with the upper entries, where they live, and the
    /// leaf's slot).
    fn leaf(
        &mut self,
        m: &Mapping,
        path: &Path,
        upper: &Upper<'m>,
        slot: LeafSlot<'m>,
    ) -> ControlFlow<()>;

    /// A run of 4K leaves; `None` declines it (the walker then yields each
    /// entry through [`Visitor::leaf`], faults included).
    #[inline(always)]
    fn pte_run(&mut self, _run: &PteRun<'m>) -> Option<RunEnd> {
        None
    }
}

/// A closure as a per-leaf visitor.
struct Leaves<F>(F);

impl<'m, F> Visitor<'m> for Leaves<F>
where
    F: FnMut(&Mapping, &Path, LeafSlot<'m>) -> ControlFlow<()>,
{
    #[inline(always)]
    fn leaf(
        &mut self,
        m: &Mapping,
        path: &Path,
        _upper: &Upper<'m>,
        slot: LeafSlot<'m>,
    ) -> ControlFlow<()> {
        (self.0)(m, path, slot)
    }
}

/// [`translate`], also returning the entries above the leaf and where they
/// live (for the GUP slow path's recheck after a pin).
pub(crate) fn translate_upper<'m, M>(
    mem: &'m M,
    ctx: &PagingContext,
    address: u64,
    access: Access,
) -> Result<(Translation, Upper<'m>), Fault>
where
    M: GuestMemoryBackend + ?Sized,
{
    struct One<'m>(Option<(Translation, Upper<'m>)>);
    impl<'m> Visitor<'m> for One<'m> {
        fn leaf(
            &mut self,
            m: &Mapping,
            _path: &Path,
            upper: &Upper<'m>,
            _slot: LeafSlot<'m>,
        ) -> ControlFlow<()> {
            let t = Translation {
                gpa: m.gpa,
                page_size: m.page_size,
                perms: m.perms,
                leaf: m.leaf,
            };
            self.0 = Some((t, *upper));
            ControlFlow::Break(())
        }
    }
    let mut one = One(None);
    match (walk_visit(mem, ctx, address, 1, access, &mut one), one.0) {
        (RangeOutcome::Faulted(fault), _) => Err(fault),
        (_, Some(found)) => Ok(found),
        (_, None) => Err(Fault {
            address,
            kind: FaultKind::GeneralProtection,
            level: 0,
            reason: FaultReason::AddressTooWide,
        }),
    }
}

/// The non-leaf entries of the current walk, by level: the guest-physical
/// address and the value read. Levels not walked (and the PAE PDPTEs, which
/// have no Accessed bit) hold `None`.
pub(crate) type Path = [Option<(u64, u64)>; 6];

/// [`walk_range`], also handing the callback the non-leaf entries that lead to
/// each leaf (for [`touch`](super::touch)) and where the leaf lives in host
/// memory (for the GUP fast path's recheck).
pub(crate) fn walk_with_path<'m, M, F>(
    mem: &'m M,
    ctx: &PagingContext,
    start: u64,
    len: u64,
    access: Access,
    f: F,
) -> RangeOutcome
where
    M: GuestMemoryBackend + ?Sized,
    F: FnMut(&Mapping, &Path, LeafSlot<'m>) -> ControlFlow<()>,
{
    walk_visit(mem, ctx, start, len, access, &mut Leaves(f))
}

/// The range walk with a [`Visitor`].
pub(crate) fn walk_visit<'m, M, V>(
    mem: &'m M,
    ctx: &PagingContext,
    start: u64,
    len: u64,
    access: Access,
    f: &mut V,
) -> RangeOutcome
where
    M: GuestMemoryBackend + ?Sized,
    V: Visitor<'m>,
{
    if len == 0 {
        return RangeOutcome::Complete;
    }
    let mode = ctx.mode();
    // The last address of the range, and where it overflows the address
    // space (a #GP at that address once the valid part is walked).
    let wanted_last = start.checked_add(len - 1);
    let (first, last, overflow_at, overflow_reason) = match mode {
        PagingMode::None | PagingMode::Bits32 | PagingMode::Pae => {
            // Linear addresses are 32 bits wide outside long mode.
            const LIMIT: u64 = 1 << 32;
            if start >= LIMIT {
                return gp(start, FaultReason::AddressTooWide);
            }
            match wanted_last {
                Some(l) if l < LIMIT => (start, l, None, FaultReason::AddressTooWide),
                _ => (start, LIMIT - 1, Some(LIMIT), FaultReason::AddressTooWide),
            }
        }
        PagingMode::Level4 | PagingMode::Level5 => {
            let bits = mode.linear_bits();
            if !is_canonical(start, bits) {
                return gp(start, FaultReason::NonCanonical);
            }
            // The canonical half that `start` lies in ends here.
            let half_last = if start >> 63 == 0 {
                (1u64 << (bits - 1)) - 1
            } else {
                u64::MAX
            };
            match wanted_last {
                Some(l) if l <= half_last => (start, l, None, FaultReason::NonCanonical),
                // The upper half ends at 2^64: a range running past it wraps,
                // which no address space allows.
                _ if half_last == u64::MAX => {
                    (start, half_last, Some(0), FaultReason::AddressTooWide)
                }
                _ => (
                    start,
                    half_last,
                    Some(half_last + 1),
                    FaultReason::NonCanonical,
                ),
            }
        }
    };

    let check = AccessCheck::new(ctx, access);
    let mut walk = Walk {
        mem,
        ctx,
        layout: Layout::new(ctx),
        access,
        check,
        path: [None; 6],
        upper: Upper::NONE,
        fault: None,
        f,
    };
    let flow = match mode {
        PagingMode::None => walk.identity(first, last),
        PagingMode::Pae => walk.pae_root(first, last),
        _ => {
            let top = mode.levels();
            walk.table(top, ctx.root(), first, last, Perms::TOP)
        }
    };
    match flow {
        Flow::Continue => match overflow_at {
            Some(at) => gp(at, overflow_reason),
            None => RangeOutcome::Complete,
        },
        Flow::Stop => RangeOutcome::Stopped,
        Flow::Fault => match walk.fault {
            Some(fault) => RangeOutcome::Faulted(fault),
            // `Flow::Fault` is only ever returned with the fault parked.
            None => gp(start, FaultReason::AddressTooWide),
        },
    }
}

fn gp(address: u64, reason: FaultReason) -> RangeOutcome {
    RangeOutcome::Faulted(Fault {
        address,
        kind: FaultKind::GeneralProtection,
        level: 0,
        reason,
    })
}

/// Whether `va` is canonical for `bits`-bit linear addresses: bits 63 down to
/// `bits - 1` all equal (SDM 3.3.7.1).
pub fn is_canonical(va: u64, bits: u32) -> bool {
    let shift = 64 - bits;
    (((va << shift) as i64) >> shift) as u64 == va
}

/// The permission bits accumulated down the walk (SDM 4.6.1: R/W and U/S
/// must be 1 in every entry, XD must be 0 in every entry).
#[derive(Clone, Copy)]
struct Perms {
    /// AND of the R/W and U/S bits so far.
    and: u64,
    /// OR of the XD bits so far.
    or: u64,
}

impl Perms {
    const TOP: Perms = Perms {
        and: PTE_RW | PTE_US,
        or: 0,
    };

    #[inline]
    fn with(self, e: u64) -> Perms {
        Perms {
            and: self.and & e,
            or: self.or | (e & PTE_XD),
        }
    }
}

/// What a level of the walk tells its caller. A fault is parked in
/// [`Walk::fault`] so that this stays one byte in the hot loop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
    Fault,
}

struct Walk<'m, 'a, M: GuestMemoryBackend + ?Sized, F> {
    mem: &'m M,
    ctx: &'a PagingContext,
    layout: Layout,
    access: Access,
    check: AccessCheck,
    path: Path,
    upper: Upper<'m>,
    fault: Option<Fault>,
    f: &'a mut F,
}

impl<'m, M, F> Walk<'m, '_, M, F>
where
    M: GuestMemoryBackend + ?Sized,
    F: Visitor<'m>,
{
    #[cold]
    fn fault(&mut self, address: u64, level: u8, reason: FaultReason, code: ErrorCode) -> Flow {
        self.raise(Fault {
            address,
            kind: FaultKind::PageFault(code),
            level,
            reason,
        })
    }

    #[cold]
    fn raise(&mut self, fault: Fault) -> Flow {
        self.fault = Some(fault);
        Flow::Fault
    }

    /// Paging disabled: the linear address is the physical address.
    fn identity(&mut self, first: u64, last: u64) -> Flow {
        let m = Mapping {
            va: first,
            len: last - first + 1,
            gpa: first,
            page_size: PageSize::Size4K,
            perms: Permissions::ALL,
            leaf: LeafEntry {
                gpa: None,
                level: 0,
                width: 0,
                value: 0,
            },
        };
        match self.f.leaf(&m, &self.path, &self.upper, LeafSlot::none()) {
            ControlFlow::Continue(()) => Flow::Continue,
            ControlFlow::Break(()) => Flow::Stop,
        }
    }

    /// PAE paging: the four PDPTEs come from the PDPTE registers when the
    /// context has them, else from the 32-byte PDPT at CR3.
    fn pae_root(&mut self, first: u64, last: u64) -> Flow {
        let root = self.ctx.root();
        let pdptes: [Option<u64>; 4] = match self.ctx.pdptes {
            Some(regs) => regs.map(Some),
            None => {
                let table = Table::new(self.mem, root, 32);
                [0, 1, 2, 3].map(|i| table.read(i * 8, 8))
            }
        };
        // MOV to CR3 loads the four PDPTEs together and, if any present one
        // has a reserved bit, raises #GP and loads none of them (SDM 4.4.1):
        // then no address translates, whichever PDPTE it would use.
        let invalid = pdptes
            .iter()
            .flatten()
            .any(|&e| self.layout.decode_pdpte(e) == Decoded::Reserved);
        if invalid {
            return self.raise(Fault {
                address: first,
                kind: FaultKind::GeneralProtection,
                level: 3,
                reason: FaultReason::InvalidPdpte,
            });
        }
        let (lo, hi) = ((first >> 30) & 3, (last >> 30) & 3);
        for i in lo..=hi {
            let entry_first = if i == lo { first } else { i << 30 };
            let entry_last = last.min((i << 30) | ((1 << 30) - 1));
            let Some(e) = pdptes[i as usize] else {
                let code = self.check.not_present_code();
                return self.fault(entry_first, 3, FaultReason::TableOutsideRam, code);
            };
            let flow = match self.layout.decode_pdpte(e) {
                Decoded::NotPresent => {
                    let code = self.check.not_present_code();
                    self.fault(entry_first, 3, FaultReason::NotPresent, code)
                }
                Decoded::Table(next) => self.table(2, next, entry_first, entry_last, Perms::TOP),
                // Reserved bits in a PDPTE: MOV to CR3 would have raised #GP
                // (SDM 4.4.1); there is no page fault for it.
                _ => self.raise(Fault {
                    address: entry_first,
                    kind: FaultKind::GeneralProtection,
                    level: 3,
                    reason: FaultReason::InvalidPdpte,
                }),
            };
            if flow != Flow::Continue {
                return flow;
            }
        }
        Flow::Continue
    }

    /// The run of level-1 entries `lo..=hi` of the table at `host`.
    #[allow(clippy::too_many_arguments)]
    fn pte_run(
        &self,
        host: *const u8,
        lo: u64,
        hi: u64,
        first: u64,
        last: u64,
        above: u64,
        perms: Perms,
    ) -> PteRun<'m> {
        let nxe = self.layout.nxe;
        let mut ok = 0u8;
        for own in 0..8u64 {
            // The entry's own R/W, U/S and XD bits, combined with the upper
            // levels' as the walk would (SDM 4.6.1).
            let e = ((own & 1) << 1) | ((own & 2) << 1) | ((own & 4) << 61);
            let p = perms.with(e);
            let w = p.and & PTE_RW != 0;
            let u = p.and & PTE_US != 0;
            let x = !(nxe && p.or != 0);
            if self.check.allows(w as u8 | (u as u8) << 1 | (x as u8) << 2) {
                ok |= 1 << own;
            }
        }
        PteRun {
            entries: host.cast(),
            lo,
            hi,
            base: first & above,
            first,
            last,
            addr_mask: self.layout.addr_mask(),
            rsvd: self.layout.rsvd_pte(),
            ok,
            upper: self.upper,
        }
    }

    /// Walk the entries of the table at `table_gpa` (level `level`) that
    /// cover `[first, last]`.
    fn table(&mut self, level: u8, table_gpa: u64, first: u64, last: u64, perms: Perms) -> Flow {
        let layout = self.layout;
        let width = layout.width();
        let shift = layout.shift(level);
        let nbits = layout.index_bits(level);
        let index_mask = (1u64 << nbits) - 1;
        let span_mask = (1u64 << shift) - 1;
        // Linear-address bits above this table's reach (sign bits included).
        let above = !((1u64 << (shift + nbits)) - 1);
        let table = Table::new(self.mem, table_gpa, width << nbits);
        let (lo, hi) = ((first >> shift) & index_mask, (last >> shift) & index_mask);
        if level == 1 && width == 8 && !self.check.uses_keys() {
            let (host, valid) = table.host_valid();
            // Only when every entry of the run lies in RAM; otherwise the
            // per-entry loop below reports the fault where it happens.
            if (hi + 1) * 8 <= valid {
                let run = self.pte_run(host, lo, hi, first, last, above, perms);
                match self.f.pte_run(&run) {
                    Some(RunEnd::Continue) => return Flow::Continue,
                    Some(RunEnd::Stop) => return Flow::Stop,
                    None => {}
                }
            }
        }
        for i in lo..=hi {
            let base = (first & above) | (i << shift);
            let entry_first = if i == lo { first } else { base };
            let entry_last = last.min(base | span_mask);
            let Some(e) = table.read(i * width, width) else {
                let code = self.check.not_present_code();
                return self.fault(entry_first, level, FaultReason::TableOutsideRam, code);
            };
            let flow = match layout.decode(level, e) {
                Decoded::NotPresent => {
                    let code = self.check.not_present_code();
                    self.fault(entry_first, level, FaultReason::NotPresent, code)
                }
                Decoded::Reserved => {
                    let code = self.check.reserved_code();
                    self.fault(entry_first, level, FaultReason::ReservedBit, code)
                }
                Decoded::Table(next) => {
                    self.path[usize::from(level)] = Some((table_gpa + i * width, e));
                    self.upper.entries[usize::from(level)] = (table.slot(i * width, width), e);
                    self.table(level - 1, next, entry_first, entry_last, perms.with(e))
                }
                Decoded::Leaf(page, size) => {
                    let p = perms.with(e);
                    let eff = Permissions {
                        writable: p.and & PTE_RW != 0,
                        user: p.and & PTE_US != 0,
                        executable: !(layout.nxe && p.or != 0),
                        pkey: layout.pkey(e),
                    };
                    if let Some((code, reason)) = self.check.check(self.ctx, self.access, &eff) {
                        return self.fault(entry_first, level, reason, code);
                    }
                    let m = Mapping {
                        va: entry_first,
                        len: entry_last - entry_first + 1,
                        gpa: page | (entry_first & (size.bytes() - 1)),
                        page_size: size,
                        perms: eff,
                        leaf: LeafEntry {
                            gpa: Some(table_gpa + i * width),
                            level,
                            width: width as u8,
                            value: e,
                        },
                    };
                    let slot = table.slot(i * width, width);
                    match self.f.leaf(&m, &self.path, &self.upper, slot) {
                        ControlFlow::Continue(()) => Flow::Continue,
                        ControlFlow::Break(()) => Flow::Stop,
                    }
                }
            };
            if flow != Flow::Continue {
                return flow;
            }
        }
        Flow::Continue
    }
}
