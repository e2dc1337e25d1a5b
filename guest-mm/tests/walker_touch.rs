// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `touch`: Accessed on every entry used, Dirty on the leaf for writes only
//! (SDM 4.8), nothing on a fault, and every written entry marked dirty in
//! the vm-memory bitmap.

mod common;

use common::*;
use guest_mm::paging::{
    touch, Access, FaultReason, PageSize, PagingContext, PagingMode, TouchError,
};
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

type DirtyMem = GuestMemoryMmap<AtomicBitmap>;

const SR: Access = Access::supervisor_read();
const SW: Access = Access::supervisor_write();
const UR: Access = Access::user_read();
const UW: Access = Access::user_write();

fn reset(mem: &DirtyMem) {
    // The region's own AtomicBitmap (through the MmapRegion it derefs to).
    let region = mem.find_region(GuestAddress(0)).unwrap();
    std::ops::Deref::deref(region).bitmap().reset();
}

fn dirty(mem: &DirtyMem, gpa: u64) -> bool {
    let r = mem.find_region(GuestAddress(gpa)).unwrap();
    r.bitmap().dirty_at((gpa - r.start_addr().0) as usize)
}

/// Snapshot of the 8-byte entries at `gpas`.
fn snap(mem: &DirtyMem, gpas: &[u64]) -> Vec<u64> {
    gpas.iter().map(|&g| r64(mem, g)).collect()
}

#[test]
fn level4_accessed_and_dirty() {
    let mem = ram_dirty();
    let mut b = Builder::new(&mem, PagingMode::Level4);
    let va = 0x0000_0012_3456_7000u64;
    let p = b.map(va, 0x55_5000, 1, RW | US);
    // An unrelated mapping: its tables must not be touched.
    let q = b.map(0x0000_0700_0000_0000, 0x66_6000, 1, RW | US);
    let ctx = ctx4(b.root);
    let path: Vec<u64> = (1..=4).map(|l| p.at(l)).collect();
    let before = snap(&mem, &path);
    let other = snap(&mem, &[q.at(1), q.at(2), q.at(3)]);
    reset(&mem);

    // A read: A everywhere, no D anywhere.
    let t = touch(&mem, &ctx, va | 0x42, UR).unwrap();
    assert_eq!(t.gpa, 0x55_5042);
    assert_eq!(t.leaf.value, 0x55_5000 | P | RW | US | A);
    let after = snap(&mem, &path);
    for (i, (x, y)) in before.iter().zip(&after).enumerate() {
        assert_eq!(*y, x | A, "level {}", i + 1);
    }
    for &g in &path {
        assert!(dirty(&mem, g), "entry {g:#x} written but not marked dirty");
    }
    assert_eq!(snap(&mem, &[q.at(1), q.at(2), q.at(3)]), other);
    assert!(!dirty(&mem, q.at(1)));
    assert!(!dirty(&mem, q.at(2)));
    assert!(!dirty(&mem, q.at(3)));
    assert!(!dirty(&mem, 0x55_5000), "the data page is not written");

    // Again: nothing to write, nothing marked.
    reset(&mem);
    touch(&mem, &ctx, va, SR).unwrap();
    assert_eq!(snap(&mem, &path), after);
    for &g in &path {
        assert!(!dirty(&mem, g));
    }

    // A write: D on the leaf only; only the page table is written.
    let t = touch(&mem, &ctx, va, UW).unwrap();
    assert_eq!(t.leaf.value, 0x55_5000 | P | RW | US | A | D);
    let w = snap(&mem, &path);
    assert_eq!(w[0], before[0] | A | D);
    for l in 1..4 {
        assert_eq!(w[l], before[l] | A, "no D above the leaf (level {})", l + 1);
    }
    assert!(dirty(&mem, p.at(1)));
    for l in 2..=4 {
        assert!(!dirty(&mem, p.at(l)), "level {l} not rewritten");
    }
}

#[test]
fn large_leaves_get_dirty() {
    let mem = ram_dirty();
    let mut b = Builder::new(&mem, PagingMode::Level5);
    let p2 = b.map(0x0001_0000_0020_0000, 0x60_0000, 2, RW);
    let p1 = b.map(0x0002_0000_4000_0000, 0x4000_0000, 3, RW);
    let ctx = ctx5(b.root);
    let e2 = snap(&mem, &[p2.at(2), p2.at(3), p2.at(4), p2.at(5)]);
    let t = touch(&mem, &ctx, 0x0001_0000_0031_0000, SW).unwrap();
    assert_eq!((t.gpa, t.page_size), (0x71_0000, PageSize::Size2M));
    let n2 = snap(&mem, &[p2.at(2), p2.at(3), p2.at(4), p2.at(5)]);
    assert_eq!(n2[0], e2[0] | A | D);
    for l in 1..4 {
        assert_eq!(n2[l], e2[l] | A);
    }
    let e1 = snap(&mem, &[p1.at(3), p1.at(4), p1.at(5)]);
    touch(&mem, &ctx, 0x0002_0000_4000_1000, SR).unwrap();
    let n1 = snap(&mem, &[p1.at(3), p1.at(4), p1.at(5)]);
    assert_eq!(n1, e1.iter().map(|e| e | A).collect::<Vec<_>>());
    touch(&mem, &ctx, 0x0002_0000_4000_1000, SW).unwrap();
    assert_eq!(r64(&mem, p1.at(3)), e1[0] | A | D);
}

#[test]
fn faults_write_nothing() {
    let mem = ram_dirty();
    let mut b = Builder::new(&mem, PagingMode::Level4);
    let va = 0x0000_0000_8000_0000u64;
    let p = b.map(va, 0x55_5000, 1, US); // read-only user page
    let ctx = ctx4(b.root);
    let path: Vec<u64> = (1..=4).map(|l| p.at(l)).collect();
    let before = snap(&mem, &path);
    reset(&mem);
    assert_eq!(
        touch(&mem, &ctx, va, UW).unwrap_err(),
        TouchError::Fault(pf(va, EC_P | EC_W | EC_U, 1, FaultReason::ReadOnly))
    );
    // A fault in the leaf's page table: upper levels untouched too.
    assert_eq!(
        touch(&mem, &ctx, va + 0x1000, UR).unwrap_err(),
        TouchError::Fault(pf(va + 0x1000, EC_U, 1, FaultReason::NotPresent))
    );
    assert_eq!(
        touch(&mem, &ctx, 0x0000_8000_0000_0000, UR).unwrap_err(),
        TouchError::Fault(gp(0x0000_8000_0000_0000, 0, FaultReason::NonCanonical))
    );
    assert_eq!(snap(&mem, &path), before);
    for &g in &path {
        assert!(!dirty(&mem, g));
    }
    // A reserved bit in the PDE: nothing written above it either.
    let pde = r64(&mem, p.at(2));
    w64(&mem, p.at(2), pde | 1 << 50);
    reset(&mem);
    let c = ctx.with_maxphyaddr(46);
    assert_eq!(
        touch(&mem, &c, va, UR).unwrap_err(),
        TouchError::Fault(pf(va, EC_P | EC_U | EC_RSVD, 2, FaultReason::ReservedBit))
    );
    assert_eq!(r64(&mem, p.at(3)), before[2]);
    assert_eq!(r64(&mem, p.at(4)), before[3]);
    assert!(!dirty(&mem, p.at(3)));
}

#[test]
fn bits32_entries_are_four_bytes() {
    let mem = ram_dirty();
    let mut b = Builder::new(&mem, PagingMode::Bits32);
    let va = 0x0040_5000u64;
    let p = b.map(va, 0x0077_7000, 1, RW | US);
    // Sentinels in the neighbouring entries (not present: P = 0).
    let pt = p.at(1);
    w32(&mem, pt + 4, 0xffff_fffe);
    w32(&mem, pt - 4, 0xffff_fffe);
    w32(&mem, p.at(2) + 4, 0xffff_fffe);
    // A 4M page in PDE 3.
    w32(&mem, b.root + 12, (0x0c00_0000 | P | RW | PS) as u32);
    let ctx = ctx32(b.root, true);
    let pde = r32(&mem, p.at(2));
    reset(&mem);
    let t = touch(&mem, &ctx, va, UW).unwrap();
    assert_eq!(t.leaf.width, 4);
    assert_eq!(t.leaf.value, 0x0077_7000 | P | RW | US | A | D);
    assert_eq!(u64::from(r32(&mem, pt)), 0x0077_7000 | P | RW | US | A | D);
    assert_eq!(r32(&mem, p.at(2)), pde | A as u32);
    assert_eq!(r32(&mem, pt + 4), 0xffff_fffe);
    assert_eq!(r32(&mem, pt - 4), 0xffff_fffe);
    assert_eq!(r32(&mem, p.at(2) + 4), 0xffff_fffe);
    assert!(dirty(&mem, pt));
    assert!(dirty(&mem, p.at(2)));

    let t = touch(&mem, &ctx, 0x00c1_2345, SW).unwrap();
    assert_eq!((t.gpa, t.page_size), (0x0c01_2345, PageSize::Size4M));
    assert_eq!(
        u64::from(r32(&mem, b.root + 12)),
        0x0c00_0000 | P | RW | PS | A | D
    );
    assert_eq!(r32(&mem, b.root + 16), 0);
}

#[test]
fn pae_pdptes_are_not_touched() {
    let mem = ram_dirty();
    let mut b = Builder::new(&mem, PagingMode::Pae);
    let va = 0x8060_1000u64;
    let p = b.map(va, 0x7000, 1, RW | US);
    let ctx = ctx_pae(b.root);
    let pdpte = r64(&mem, p.at(3));
    let pde = r64(&mem, p.at(2));
    reset(&mem);
    for ctx in [ctx, ctx.with_pdptes([0, 0, pdpte, 0])] {
        let t = touch(&mem, &ctx, va, UW).unwrap();
        assert_eq!(t.gpa, 0x7000);
        // PDPTEs have no A bit (bit 5 is reserved there): untouched.
        assert_eq!(r64(&mem, p.at(3)), pdpte);
        assert_eq!(r64(&mem, p.at(2)), pde | A);
        assert_eq!(r64(&mem, p.at(1)), 0x7000 | P | RW | US | A | D);
        assert!(!dirty(&mem, p.at(3)));
    }
    // Still a valid PDPT afterwards.
    assert!(touch(&mem, &ctx, va, UR).is_ok());
}

#[test]
fn paging_off_touches_nothing() {
    let mem = ram_dirty();
    reset(&mem);
    let ctx = PagingContext::new(0, 0, 0, 0);
    let t = touch(&mem, &ctx, 0x1234, UW).unwrap();
    assert_eq!(t.gpa, 0x1234);
    assert_eq!(t.leaf.gpa, None);
    assert!(!dirty(&mem, 0));
    assert!(!dirty(&mem, 0x1000));
}
