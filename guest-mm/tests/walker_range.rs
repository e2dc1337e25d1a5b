// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The range walker: mappings in order, clipped to the range, across leaf
//! sizes; stopping at the first fault or on `Break`; agreement with
//! `translate` on every address; address-space ends; and the "descends once"
//! property, measured by counting guest-memory region lookups.

mod common;

use std::cell::Cell;
use std::ops::ControlFlow;

use common::*;
use guest_mm::paging::{
    translate, walk_range, Access, FaultReason, Mapping, PageSize, PagingContext, PagingMode,
    RangeOutcome,
};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};

const SR: Access = Access::supervisor_read();
const UR: Access = Access::user_read();
const UW: Access = Access::user_write();

fn collect<M: GuestMemoryBackend>(
    mem: &M,
    ctx: &PagingContext,
    start: u64,
    len: u64,
    access: Access,
) -> (Vec<Mapping>, RangeOutcome) {
    let mut v = Vec::new();
    let out = walk_range(mem, ctx, start, len, access, |m| {
        v.push(*m);
        ControlFlow::Continue(())
    });
    (v, out)
}

/// (va, len, gpa, size, leaf entry gpa, leaf level) of each mapping.
fn summary(v: &[Mapping]) -> Vec<(u64, u64, u64, PageSize, u64, u8)> {
    v.iter()
        .map(|m| {
            (
                m.va,
                m.len,
                m.gpa,
                m.page_size,
                m.leaf.gpa.unwrap(),
                m.leaf.level,
            )
        })
        .collect()
}

#[test]
fn mixed_leaves_in_order_and_clipped() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Level4);
    let a = b.map(0x3fff_e000, 0x0000_0000_0011_1000, 1, RW | US);
    let bb = b.map(0x3fff_f000, 0x0000_0000_0022_2000, 1, RW | US);
    let g = b.map(0x4000_0000, 0x0000_0003_0000_0000, 3, RW | US);
    let m2 = b.map(0x8000_0000, 0x0000_0000_0460_0000, 2, RW | US);
    let c = b.map(0x8020_0000, 0x0000_0000_0033_3000, 1, RW | US);
    let d = b.map(0x8020_1000, 0x0000_0000_0044_4000, 1, RW | US);
    let ctx = ctx4(b.root);
    let start = 0x3fff_e800u64;
    let end = 0x8020_1800u64;
    let (v, out) = collect(&mem, &ctx, start, end - start, UW);
    assert_eq!(out, RangeOutcome::Complete);
    assert_eq!(
        summary(&v),
        vec![
            (0x3fff_e800, 0x800, 0x11_1800, PageSize::Size4K, a.at(1), 1),
            (
                0x3fff_f000,
                0x1000,
                0x22_2000,
                PageSize::Size4K,
                bb.at(1),
                1
            ),
            (
                0x4000_0000,
                1 << 30,
                0x3_0000_0000,
                PageSize::Size1G,
                g.at(3),
                3
            ),
            (
                0x8000_0000,
                2 << 20,
                0x460_0000,
                PageSize::Size2M,
                m2.at(2),
                2
            ),
            (0x8020_0000, 0x1000, 0x33_3000, PageSize::Size4K, c.at(1), 1),
            (0x8020_1000, 0x800, 0x44_4000, PageSize::Size4K, d.at(1), 1),
        ]
    );
    let total: u64 = v.iter().map(|m| m.len).sum();
    assert_eq!(total, end - start);

    // A range inside one 1G page: one mapping, clipped at both ends.
    let (v, out) = collect(&mem, &ctx, 0x5234_5678, 0x10_0000, SR);
    assert_eq!(out, RangeOutcome::Complete);
    assert_eq!(
        summary(&v),
        vec![(
            0x5234_5678,
            0x10_0000,
            0x3_1234_5678,
            PageSize::Size1G,
            g.at(3),
            3
        )]
    );
    // One byte at the very end of the 2M page.
    let (v, _) = collect(&mem, &ctx, 0x801f_ffff, 1, SR);
    assert_eq!(
        summary(&v),
        vec![(0x801f_ffff, 1, 0x47f_ffff, PageSize::Size2M, m2.at(2), 2)]
    );
    // An empty range does nothing.
    let (v, out) = collect(&mem, &ctx, 0x1234, 0, SR);
    assert!(v.is_empty());
    assert_eq!(out, RangeOutcome::Complete);
}

#[test]
fn translate_agrees_with_walk_range_on_every_address() {
    // 4-level: 3 x 4K, a 2M page, 3 x 4K, with mixed permissions.
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Level4);
    let base = 0x0000_0007_ffdf_d000u64;
    b.map(base, 0x0000_0000_0070_3000, 1, RW | US);
    b.map(base + 0x1000, 0x0000_0000_0070_1000, 1, US);
    b.map(base + 0x2000, 0x0000_0000_0070_5000, 1, RW | US | XD);
    b.map(base + 0x3000, 0x0000_0000_00a0_0000, 2, RW | US);
    for i in 0..3 {
        b.map(
            base + 0x20_3000 + i * 0x1000,
            0x0000_0000_0090_0000 - i * 0x1000,
            1,
            US,
        );
    }
    let ctx = ctx4(b.root);
    let start = base + 0x123;
    let len = 0x20_6000 - 0x123 - 0x7;
    let (v, out) = collect(&mem, &ctx, start, len, UR);
    assert_eq!(out, RangeOutcome::Complete);
    assert_eq!(v.len(), 7);
    let mut idx = 0;
    for va in start..start + len {
        while va >= v[idx].va + v[idx].len {
            idx += 1;
        }
        let m = &v[idx];
        let t = translate(&mem, &ctx, va, UR).unwrap();
        assert_eq!(t.gpa, m.gpa + (va - m.va), "{va:#x}");
        assert_eq!(t.page_size, m.page_size);
        assert_eq!(t.perms, m.perms);
        assert_eq!(t.leaf, m.leaf);
    }
    // For writes the walk stops at the read-only page; translate agrees on
    // where, and every address after it also faults with the same code.
    let (v, out) = collect(&mem, &ctx, start, len, UW);
    assert_eq!(v.len(), 1);
    let fault_at = base + 0x1000;
    assert_eq!(
        out,
        RangeOutcome::Faulted(pf(fault_at, EC_P | EC_W | EC_U, 1, FaultReason::ReadOnly))
    );
    assert_eq!(
        translate(&mem, &ctx, fault_at, UW).unwrap_err(),
        pf(fault_at, EC_P | EC_W | EC_U, 1, FaultReason::ReadOnly)
    );
    assert!(translate(&mem, &ctx, fault_at - 1, UW).is_ok());
}

#[test]
fn stops_at_the_first_fault() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Level4);
    let va = 0x0000_0001_0000_0000u64;
    b.map_4k_run(va, 0x20_0000, 4, RW | US);
    let ctx = ctx4(b.root);
    // Eight pages asked, four mapped: a hole after them.
    let (v, out) = collect(&mem, &ctx, va + 0x10, 8 * 4096, UW);
    assert_eq!(v.len(), 4);
    assert_eq!(v[0].va, va + 0x10);
    assert_eq!(v[0].len, 0x1000 - 0x10);
    assert_eq!(v[3].va, va + 0x3000);
    assert_eq!(v[3].gpa, 0x20_3000);
    assert_eq!(
        out,
        RangeOutcome::Faulted(pf(va + 0x4000, EC_W | EC_U, 1, FaultReason::NotPresent))
    );
    // Starting inside the hole: the fault is at the start.
    let (v, out) = collect(&mem, &ctx, va + 0x4321, 4096, UR);
    assert!(v.is_empty());
    assert_eq!(
        out,
        RangeOutcome::Faulted(pf(va + 0x4321, EC_U, 1, FaultReason::NotPresent))
    );
    // A hole at a higher level: the fault names the first address of the
    // missing PD region and its level.
    let (v, out) = collect(&mem, &ctx, va + 0x1000, 1 << 30, SR);
    assert_eq!(v.len(), 3);
    assert_eq!(
        out,
        RangeOutcome::Faulted(pf(va + 0x4000, 0, 1, FaultReason::NotPresent))
    );
    let (v, out) = collect(&mem, &ctx, va - 0x2000, 0x4000, SR);
    assert!(v.is_empty());
    assert_eq!(
        out,
        RangeOutcome::Faulted(pf(va - 0x2000, 0, 3, FaultReason::NotPresent))
    );
    // A supervisor page in the middle: a user walk stops there.
    b.map(va + 0x2000, 0x30_0000, 1, RW);
    let (v, out) = collect(&mem, &ctx, va, 4 * 4096, UR);
    assert_eq!(v.len(), 2);
    assert_eq!(
        out,
        RangeOutcome::Faulted(pf(
            va + 0x2000,
            EC_P | EC_U,
            1,
            FaultReason::UserAccessToSupervisorPage
        ))
    );
    // A reserved bit in the third PTE.
    let (_, out) = {
        b.map(va + 0x2000, 0x30_0000 | 1 << 51, 1, RW | US);
        collect(&mem, &ctx.with_maxphyaddr(48), va, 4 * 4096, UR)
    };
    assert_eq!(
        out,
        RangeOutcome::Faulted(pf(
            va + 0x2000,
            EC_P | EC_U | EC_RSVD,
            1,
            FaultReason::ReservedBit
        ))
    );
}

#[test]
fn break_stops_the_walk() {
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Level4);
    b.map_4k_run(0x40_0000, 0x80_0000, 16, RW);
    let ctx = ctx4(b.root);
    let mut calls = 0;
    let out = walk_range(&mem, &ctx, 0x40_0000, 16 * 4096, SR, |m| {
        calls += 1;
        assert_eq!(m.va, 0x40_0000 + (calls - 1) * 4096);
        if calls == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert_eq!(out, RangeOutcome::Stopped);
    assert_eq!(calls, 3);
    // Break on the last mapping still says Stopped.
    let out = walk_range(&mem, &ctx, 0x40_0000, 4096, SR, |_| ControlFlow::Break(()));
    assert_eq!(out, RangeOutcome::Stopped);
}

#[test]
fn ranges_crossing_the_end_of_the_address_space() {
    // 4-level: the lower canonical half ends at 0x0000_7fff_ffff_ffff.
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Level4);
    b.map_4k_run(0x0000_7fff_ffff_e000, 0x5000, 2, RW);
    let ctx = ctx4(b.root);
    let (v, out) = collect(&mem, &ctx, 0x0000_7fff_ffff_e000, 0x4000, SR);
    assert_eq!(v.len(), 2);
    assert_eq!(v[1].va + v[1].len, 0x0000_8000_0000_0000);
    assert_eq!(
        out,
        RangeOutcome::Faulted(gp(0x0000_8000_0000_0000, 0, FaultReason::NonCanonical))
    );
    // A hole before the boundary is reported first.
    let (v, out) = collect(&mem, &ctx, 0x0000_7fff_ffff_d000, 0x4000, SR);
    assert!(v.is_empty());
    assert_eq!(
        out,
        RangeOutcome::Faulted(pf(0x0000_7fff_ffff_d000, 0, 1, FaultReason::NotPresent))
    );
    // A range so long it wraps around 2^64 ends the same way.
    let (v, out) = collect(&mem, &ctx, 0x0000_7fff_ffff_e000, u64::MAX, SR);
    assert_eq!(v.len(), 2);
    assert_eq!(
        out,
        RangeOutcome::Faulted(gp(0x0000_8000_0000_0000, 0, FaultReason::NonCanonical))
    );
    // Starting non-canonical: #GP at the start, nothing walked.
    let (v, out) = collect(&mem, &ctx, 0x0000_8000_0000_0000, 0x1000, SR);
    assert!(v.is_empty());
    assert_eq!(
        out,
        RangeOutcome::Faulted(gp(0x0000_8000_0000_0000, 0, FaultReason::NonCanonical))
    );

    // 5-level: the boundary is at 2^56.
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Level5);
    b.map_4k_run(0x00ff_ffff_ffff_f000, 0x5000, 1, RW);
    let ctx = ctx5(b.root);
    let (v, out) = collect(&mem, &ctx, 0x00ff_ffff_ffff_f800, 0x1000, SR);
    assert_eq!(v.len(), 1);
    assert_eq!((v[0].len, v[0].gpa), (0x800, 0x5800));
    assert_eq!(
        out,
        RangeOutcome::Faulted(gp(0x0100_0000_0000_0000, 0, FaultReason::NonCanonical))
    );

    // 32-bit paging: linear addresses end at 4 GiB.
    let mem = ram();
    let b = Builder::new(&mem, PagingMode::Bits32);
    w32(&mem, b.root + 1023 * 4, (0x0080_0000 | P | RW | PS) as u32);
    let ctx = ctx32(b.root, true);
    let (v, out) = collect(&mem, &ctx, 0xffff_f000, 0x2000, SR);
    assert_eq!(v.len(), 1);
    assert_eq!((v[0].gpa, v[0].len), (0x00bf_f000, 0x1000));
    assert_eq!(
        out,
        RangeOutcome::Faulted(gp(1 << 32, 0, FaultReason::AddressTooWide))
    );
    // No paging: the same limit.
    let ctx = PagingContext::new(0, 0, 0, 0);
    let (v, out) = collect(&mem, &ctx, 0xffff_0000, 0x2_0000, SR);
    assert_eq!(v.len(), 1);
    assert_eq!(
        (v[0].va, v[0].gpa, v[0].len),
        (0xffff_0000, 0xffff_0000, 0x1_0000)
    );
    assert_eq!(
        out,
        RangeOutcome::Faulted(gp(1 << 32, 0, FaultReason::AddressTooWide))
    );
}

#[test]
fn bits32_and_pae_ranges() {
    // 32-bit: a 4M page then 4K pages under the next PDE.
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Bits32);
    w32(&mem, b.root + 4, (0x0800_0000 | P | RW | US | PS) as u32);
    b.map_4k_run(0x0080_0000, 0x0030_0000, 2, RW | US);
    let ctx = ctx32(b.root, true);
    let (v, out) = collect(&mem, &ctx, 0x0070_0000, 0x10_2000, UW);
    assert_eq!(out, RangeOutcome::Complete);
    let got: Vec<_> = v
        .iter()
        .map(|m| (m.va, m.len, m.gpa, m.page_size))
        .collect();
    assert_eq!(
        got,
        vec![
            (0x0070_0000, 0x10_0000, 0x0830_0000, PageSize::Size4M),
            (0x0080_0000, 0x1000, 0x0030_0000, PageSize::Size4K),
            (0x0080_1000, 0x1000, 0x0030_1000, PageSize::Size4K),
        ]
    );
    assert_eq!(v[0].leaf.width, 4);

    // PAE: a range across two PDPTEs (from registers), 2M then 4K.
    let mem = ram();
    let mut b = Builder::new(&mem, PagingMode::Pae);
    b.map(0x3fe0_0000, 0x0000_0001_0000_0000, 2, RW);
    b.map(0x4000_0000, 0x0000_0000_0012_3000, 1, RW);
    let regs = [
        r64(&mem, b.root),
        r64(&mem, b.root + 8),
        0,
        r64(&mem, b.root + 24),
    ];
    for ctx in [ctx_pae(b.root), ctx_pae(b.root).with_pdptes(regs)] {
        let (v, out) = collect(&mem, &ctx, 0x3fff_f000, 0x3000, SR);
        let got: Vec<_> = v
            .iter()
            .map(|m| (m.va, m.len, m.gpa, m.page_size))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x3fff_f000, 0x1000, 0x1_001f_f000, PageSize::Size2M),
                (0x4000_0000, 0x1000, 0x12_3000, PageSize::Size4K),
            ]
        );
        assert_eq!(
            out,
            RangeOutcome::Faulted(pf(0x4000_1000, 0, 1, FaultReason::NotPresent))
        );
        // Into the non-present third PDPTE.
        let (v, out) = collect(&mem, &ctx, 0x7fff_f000, 0x2000, SR);
        assert!(v.is_empty());
        assert_eq!(
            out,
            RangeOutcome::Faulted(pf(0x7fff_f000, 0, 2, FaultReason::NotPresent))
        );
        let (_, out) = collect(&mem, &ctx, 0x8000_0000, 0x2000, SR);
        assert_eq!(
            out,
            RangeOutcome::Faulted(pf(0x8000_0000, 0, 3, FaultReason::NotPresent))
        );
    }
}

/// A guest memory that counts region lookups.
struct Counting<'a> {
    inner: &'a GuestMemoryMmap,
    finds: Cell<u64>,
    iters: Cell<u64>,
}

impl<'a> Counting<'a> {
    fn new(inner: &'a GuestMemoryMmap) -> Self {
        Counting {
            inner,
            finds: Cell::new(0),
            iters: Cell::new(0),
        }
    }
    fn take(&self) -> (u64, u64) {
        (self.finds.replace(0), self.iters.replace(0))
    }
}

impl GuestMemoryBackend for Counting<'_> {
    type R = GuestRegionMmap;

    fn num_regions(&self) -> usize {
        self.inner.num_regions()
    }

    fn find_region(&self, addr: GuestAddress) -> Option<&GuestRegionMmap> {
        self.finds.set(self.finds.get() + 1);
        self.inner.find_region(addr)
    }

    fn iter(&self) -> impl Iterator<Item = &GuestRegionMmap> {
        self.iters.set(self.iters.get() + 1);
        self.inner.iter()
    }
}

#[test]
fn range_walk_descends_once() {
    let mem = ram();
    let counting = Counting::new(&mem);
    for mode in [PagingMode::Level4, PagingMode::Level5, PagingMode::Bits32] {
        let mut b = Builder::new(&mem, mode);
        let va = 0x0040_0000u64; // first PTE of a page table in every mode
        let n = if mode == PagingMode::Bits32 {
            1024
        } else {
            512
        };
        b.map_4k_run(va, 0x80_0000, n, RW);
        // The next page table, half full.
        b.map_4k_run(va + n * 4096, 0x90_0000, n / 2, RW);
        let ctx = match mode {
            PagingMode::Level4 => ctx4(b.root),
            PagingMode::Level5 => ctx5(b.root),
            _ => ctx32(b.root, false),
        };
        let levels = u64::from(mode.levels());
        counting.take();

        // N pages under one page table: one lookup per table on the path.
        let mut pages = 0;
        let out = walk_range(&counting, &ctx, va, n * 4096, SR, |m| {
            pages += m.len / 4096;
            ControlFlow::Continue(())
        });
        assert_eq!(out, RangeOutcome::Complete);
        assert_eq!(pages, n);
        assert_eq!(counting.take(), (levels, 0), "{mode:?}: {n} pages, one PT");

        // Into the second page table: one more lookup, not one per page.
        let out = walk_range(&counting, &ctx, va, (n + n / 2) * 4096, SR, |_| {
            ControlFlow::Continue(())
        });
        assert_eq!(out, RangeOutcome::Complete);
        assert_eq!(counting.take(), (levels + 1, 0), "{mode:?}: two PTs");

        // The walk really reads the tables through this memory: page by
        // page with translate costs one lookup per level per page.
        for i in 0..16 {
            translate(&counting, &ctx, va + i * 4096, SR).unwrap();
        }
        assert_eq!(counting.take(), (16 * levels, 0), "{mode:?}: translate");
    }

    // PAE with the PDPT in memory: PDPT, PD, PT.
    let mut b = Builder::new(&mem, PagingMode::Pae);
    b.map_4k_run(0x4000_0000, 0x80_0000, 512, RW);
    let ctx = ctx_pae(b.root);
    counting.take();
    let out = walk_range(&counting, &ctx, 0x4000_0000, 512 * 4096, SR, |_| {
        ControlFlow::Continue(())
    });
    assert_eq!(out, RangeOutcome::Complete);
    assert_eq!(counting.take(), (3, 0));
}
