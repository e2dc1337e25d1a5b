// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The GUP fast path against the walker: on random page tables (random
//! R/W, U/S, XD, A, D, present, protection-key and reserved bits at every
//! level, leaves in and out of RAM, 4K and 2M leaves) and random contexts
//! and flags, a FAST_ONLY request must take exactly the prefix of the range
//! that `translate` accepts with A (and D for WRITE) set and that lies in
//! RAM, and every extent must say what `translate` says. This pins down the
//! fast path's bulk filter for runs of 4K leaves, which decides with masks
//! what the walker decides entry by entry.

mod common;

use common::*;
use guest_mm::gup::{AddressSpace, Gup, GupError, GupFlags, RegionOptions};
use guest_mm::paging::context::{
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PKE, CR4_PKS, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_LME,
    EFER_NXE, RFLAGS_AC,
};
use guest_mm::paging::{translate, Access, AccessKind, PagingContext, PagingMode, Privilege};

/// RAM is [0, 8 MiB); leaves point at [4 MiB, 8 MiB) and sometimes past it.
const RAM_BYTES: u64 = 8 * MIB;
const DATA: u64 = 4 * MIB;
/// The mapped range: 3 page tables of 4K leaves, then a 2M leaf.
const SPAN: u64 = 8 * MIB;

fn leaf_flags(rng: &mut Rng) -> u64 {
    let mut f = 0;
    if !rng.chance(40) {
        f |= P;
    }
    for (b, one_in) in [(RW, 4), (US, 5), (A, 8), (D, 6), (XD, 8)] {
        if !rng.chance(one_in) {
            f |= b;
        }
    }
    if rng.chance(50) {
        // A reserved bit above MAXPHYADDR (46 here) or a protection key.
        f |= 1 << (46 + rng.below(17));
    }
    f
}

fn upper_flags(rng: &mut Rng) -> u64 {
    let mut f = P | A;
    for (b, one_in) in [(RW, 8), (US, 10)] {
        if !rng.chance(one_in) {
            f |= b;
        }
    }
    if rng.chance(12) {
        f |= XD;
    }
    f
}

/// Page tables of `mode` for [0, SPAN): returns CR3.
fn build(gup: &Gup, rng: &mut Rng, mode: PagingMode) -> u64 {
    let map = gup.memory_map();
    let mem = map.memory();
    let mut b = Builder::new(mem, mode);
    b.table_flags = upper_flags(rng);
    let mut usual = 0;
    for i in 0..(SPAN >> 12) {
        let va = i << 12;
        if va >= 6 * MIB {
            // A 2M leaf at [6 MiB, 8 MiB), mostly in RAM.
            let pa = if rng.chance(4) { 16 * MIB } else { 6 * MIB };
            b.map(va, pa, 2, leaf_flags(rng) & !(1 << 62));
            break;
        }
        if va % (2 * MIB) == 0 {
            // A fresh page table with its own PDE flags and its own usual
            // leaf flags, so that long runs of alike leaves occur.
            b.table_flags = upper_flags(rng);
            usual = leaf_flags(rng) | P;
        }
        let pa = if rng.chance(30) {
            RAM_BYTES + rng.below(64) * 4096
        } else {
            DATA + rng.below(1024) * 4096
        };
        let flags = if rng.chance(64) {
            leaf_flags(rng)
        } else {
            usual
        };
        b.map(va, pa, 1, flags);
    }
    b.root
}

fn context(rng: &mut Rng, cr3: u64, mode: PagingMode) -> PagingContext {
    let bit = |rng: &mut Rng, b: u64| if rng.chance(2) { b } else { 0 };
    let cr0 = CR0_PG | 1 | bit(rng, CR0_WP);
    let mut cr4 = CR4_PAE | bit(rng, CR4_SMEP) | bit(rng, CR4_SMAP);
    if rng.chance(4) {
        cr4 |= CR4_PKE | bit(rng, CR4_PKS);
    }
    let mut efer = bit(rng, EFER_NXE);
    match mode {
        PagingMode::Pae => {}
        PagingMode::Level5 => {
            cr4 |= CR4_LA57;
            efer |= EFER_LME | EFER_LMA;
        }
        _ => efer |= EFER_LME | EFER_LMA,
    }
    PagingContext::new(cr0, cr3, cr4, efer)
        .with_maxphyaddr(46)
        .with_rflags(bit(rng, RFLAGS_AC))
        .with_pkru(rng.next() as u32)
        .with_pkrs(rng.next() as u32)
}

/// What the engine checks a request against (FORCE: no WP, SMEP, SMAP or
/// keys, supervisor), written out independently of the engine.
fn effective(ctx: &PagingContext, flags: GupFlags) -> (PagingContext, Access) {
    let kind = if flags.contains(GupFlags::WRITE) {
        AccessKind::Write
    } else {
        AccessKind::Read
    };
    if flags.contains(GupFlags::FORCE) {
        let mut c = *ctx;
        c.cr0 &= !CR0_WP;
        c.cr4 &= !(CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_PKS);
        return (c, Access::new(kind, Privilege::Supervisor));
    }
    let p = if flags.contains(GupFlags::USER) {
        Privilege::User
    } else {
        Privilege::Supervisor
    };
    (*ctx, Access::new(kind, p))
}

#[test]
fn fast_only_takes_exactly_what_the_walker_allows() {
    let gup = Gup::anonymous(&[(0, RAM_BYTES as usize)], RegionOptions::default()).unwrap();
    let map = gup.memory_map();
    let mem = map.memory();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let trials = 20_000;
    let (mut pages_taken, mut full, mut empty, mut runs_checked) = (0u64, 0u64, 0u64, 0u64);
    let mut cr3 = 0;
    let mut mode = PagingMode::Level4;
    let mut by_mode = std::collections::BTreeMap::new();
    for trial in 0..trials {
        if trial % 50 == 0 {
            // The bulk filter serves every mode with 8-byte entries.
            mode = [PagingMode::Level4, PagingMode::Level5, PagingMode::Pae][(trial / 50) % 3];
            cr3 = build(&gup, &mut rng, mode);
        }
        let ctx = context(&mut rng, cr3, mode);
        let mut flags = GupFlags::PIN | GupFlags::FAST_ONLY;
        for f in [GupFlags::WRITE, GupFlags::USER, GupFlags::FORCE] {
            if rng.chance(2) {
                flags |= f;
            }
        }
        let start = rng.below(SPAN - 4096) + if rng.chance(2) { 0 } else { rng.below(4096) };
        let len = 1 + rng.below((SPAN - start).min(3 * MIB));
        let (ectx, access) = effective(&ctx, flags);

        // The expected prefix, page by page, from the walker.
        let need = if access.is_write() { A | D } else { A };
        let mut expect = 0u64;
        let mut va = start;
        while va < start + len {
            let ok = match translate(mem, &ectx, va, access) {
                Ok(t) => {
                    let size = t.page_size.bytes();
                    let piece = ((va | (size - 1)) + 1).min(start + len) - va;
                    let in_ram = t.gpa + piece <= RAM_BYTES;
                    (t.leaf.value & need == need && in_ram).then_some(piece)
                }
                Err(_) => None,
            };
            match ok {
                Some(piece) => {
                    expect += piece;
                    va += piece;
                }
                None => break,
            }
        }

        let got = gup.pin(&AddressSpace::page_tables(ctx), start, len, flags);
        let taken = match &got {
            Ok(p) => p.bytes(),
            Err(GupError::Again) => 0,
            Err(e) => panic!("trial {trial}: unexpected error {e}"),
        };
        assert_eq!(
            taken, expect,
            "trial {trial}: start {start:#x} len {len:#x} flags {flags:?} ctx {ctx:?}"
        );
        if let Ok(p) = got {
            pages_taken += p.pages();
            *by_mode.entry(format!("{mode:?}")).or_insert(0u64) += p.pages();
            for e in p.extents() {
                // Every page piece of the extent translates as the extent says.
                let mut off = 0;
                while off < e.len {
                    let va = e.addr + off;
                    let t = translate(mem, &ectx, va, access).unwrap();
                    assert_eq!(t.gpa, e.gpa + off, "trial {trial}: extent {e:?} at {va:#x}");
                    off += ((va | 0xfff) + 1 - va).min(e.len - off);
                    runs_checked += 1;
                }
            }
            if p.bytes() == len {
                full += 1;
            }
        } else {
            empty += 1;
        }
    }
    assert_eq!(map.regions()[0].frames().total_refs(), 0);
    assert!(
        full > 50 && empty > 50,
        "full {full} empty {empty}: the mix is too one-sided"
    );
    eprintln!(
        "fast path vs walker: {trials} requests, {pages_taken} pages taken {by_mode:?}, \
         {runs_checked} pages re-translated, {full} complete, {empty} empty"
    );
    assert_eq!(by_mode.len(), 3, "every mode took pages: {by_mode:?}");
}
