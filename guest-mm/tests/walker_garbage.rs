// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Garbage in, faults out: random page-table memory and random register
//! contexts must never make `translate`, `walk_range` or `touch` panic or
//! hang, and what they return must stay self-consistent.

mod common;

use std::ops::ControlFlow;
use std::time::Instant;

use common::*;
use guest_mm::paging::context::{
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PKE, CR4_PKS, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA,
    EFER_LME, EFER_NXE, RFLAGS_AC,
};
use guest_mm::paging::{
    touch, translate, walk_range, Access, AccessKind, CpuFeatures, PagingContext, PagingMode,
    Privilege, RangeOutcome, TouchError,
};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// RAM: [0, 1 MiB) and [2 MiB, 2 MiB + 64 KiB); the rest is a hole.
const LOW: u64 = 1 << 20;
const HIGH: u64 = 2 << 20;
const HIGH_LEN: u64 = 64 << 10;

fn memory() -> GuestMemoryMmap<AtomicBitmap> {
    GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[
        (GuestAddress(0), LOW as usize),
        (GuestAddress(HIGH), HIGH_LEN as usize),
    ])
    .unwrap()
}

/// A page address that is usually in RAM, sometimes in the hole or far away.
fn page(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 => rng.next() & 0x000f_ffff_ffff_f000,
        1 => (LOW + rng.below(HIGH - LOW)) & !0xfff,
        2 | 3 => HIGH + (rng.below(HIGH_LEN) & !0xfff),
        _ => rng.below(LOW) & !0xfff,
    }
}

/// A plausible-looking or plainly random 64-bit entry.
fn entry(rng: &mut Rng) -> u64 {
    let r = rng.next();
    match rng.below(16) {
        0 => r,
        1 => r & !P,
        _ => {
            let mut e = page(rng) | (r & 0xfff) | P;
            if rng.chance(2) {
                e |= RW | US;
            }
            if rng.chance(8) {
                // High bits: XD, protection keys, ignored and reserved bits.
                e |= rng.next() & 0xfff0_0000_0000_0000;
            }
            if rng.chance(10) {
                // A bit between 32 and 51 (MAXPHYADDR-dependent).
                e |= 1 << (32 + rng.below(20));
            }
            if rng.chance(3) {
                e &= !PS;
            }
            e
        }
    }
}

fn fill(mem: &GuestMemoryMmap<AtomicBitmap>, rng: &mut Rng) {
    let mut buf = vec![0u8; LOW as usize];
    for chunk in buf.chunks_exact_mut(8) {
        chunk.copy_from_slice(&entry(rng).to_le_bytes());
    }
    mem.write_slice(&buf, GuestAddress(0)).unwrap();
    mem.write_slice(&buf[..HIGH_LEN as usize], GuestAddress(HIGH))
        .unwrap();
}

fn context(rng: &mut Rng) -> PagingContext {
    let bit = |rng: &mut Rng, b: u64| if rng.chance(2) { b } else { 0 };
    let cr0 = if rng.chance(10) { 0 } else { CR0_PG } | bit(rng, CR0_WP);
    let cr3 = if rng.chance(8) {
        rng.next()
    } else {
        page(rng) | (rng.next() & 0xfff)
    };
    let mut cr4 = 0;
    for b in [CR4_PSE, CR4_SMEP, CR4_SMAP, CR4_PKE, CR4_PKS, CR4_LA57] {
        cr4 |= bit(rng, b);
    }
    if !rng.chance(4) {
        cr4 |= CR4_PAE;
    }
    let mut efer = bit(rng, EFER_NXE);
    if !rng.chance(3) {
        efer |= EFER_LME | EFER_LMA;
    }
    let mut ctx = PagingContext::new(cr0, cr3, cr4, efer)
        .with_rflags(bit(rng, RFLAGS_AC))
        .with_pkru(rng.next() as u32)
        .with_pkrs(rng.next() as u32)
        .with_features(CpuFeatures {
            gbpages: rng.chance(2),
            pse36: rng.chance(2),
        });
    // Any byte at all, not only the architectural range.
    ctx.maxphyaddr = match rng.below(4) {
        0 => rng.next() as u8,
        _ => 32 + rng.below(21) as u8,
    };
    if rng.chance(4) {
        ctx = ctx.with_pdptes([entry(rng), entry(rng), entry(rng), entry(rng)]);
    }
    ctx
}

fn address(rng: &mut Rng, mode: PagingMode) -> u64 {
    let r = rng.next();
    if !rng.chance(5) {
        // Valid for the mode, mostly low where the tables are denser.
        let bits = match mode {
            PagingMode::Level4 => 48,
            PagingMode::Level5 => 57,
            // 32-bit linear addresses are zero-extended.
            _ => return r & 0xffff_ffff,
        };
        let sh = 64 - bits;
        return (((r << sh) as i64) >> sh) as u64;
    }
    match rng.below(6) {
        0 => r,
        1 => r & 0xffff_ffff,
        2 => (((r << 16) as i64) >> 16) as u64,
        3 => (((r << 7) as i64) >> 7) as u64,
        // Near the ends of the address space of this mode.
        4 => match mode {
            PagingMode::Level4 => 0x0000_7fff_ffff_0000 + (r & 0x1_ffff),
            PagingMode::Level5 => 0x00ff_ffff_ffff_0000 + (r & 0x1_ffff),
            _ => 0xffff_0000 + (r & 0x1_ffff),
        },
        _ => r & 0x3fff_ffff,
    }
}

fn access(rng: &mut Rng) -> Access {
    let kind = [AccessKind::Read, AccessKind::Write, AccessKind::Fetch][rng.below(3) as usize];
    let privilege = [
        Privilege::User,
        Privilege::Supervisor,
        Privilege::ImplicitSupervisor,
    ][rng.below(3) as usize];
    Access::new(kind, privilege)
}

#[test]
fn random_tables_and_contexts_never_panic() {
    let walks: u64 = if cfg!(debug_assertions) {
        20_000
    } else {
        500_000
    };
    let mem = memory();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t0 = Instant::now();
    let (mut ok, mut faults, mut mappings, mut contended) = (0u64, 0u64, 0u64, 0u64);
    let mut by_level = [0u64; 6];
    let mut early = std::collections::BTreeMap::new();
    for i in 0..walks {
        if i % 2_000 == 0 {
            fill(&mem, &mut rng);
        }
        let ctx = context(&mut rng);
        let mode = ctx.mode();
        let va = address(&mut rng, mode);
        let acc = access(&mut rng);

        let single = translate(&mem, &ctx, va, acc);
        match single {
            Ok(_) => ok += 1,
            Err(f) => {
                faults += 1;
                by_level[usize::from(f.level.min(5))] += 1;
                if f.level == 0 {
                    *early
                        .entry(format!("{:?} in {mode:?}", f.reason))
                        .or_insert(0u64) += 1;
                }
            }
        }

        // A range from the same address: its first step must agree with
        // translate, and mappings must tile the range in order.
        let len = match rng.below(4) {
            0 => rng.next(),
            1 => 1 + rng.below(1 << 30),
            _ => 1 + rng.below(1 << 22),
        };
        let mut next = va;
        let mut first = None;
        let mut count = 0u32;
        let out = walk_range(&mem, &ctx, va, len, acc, |m| {
            assert_eq!(m.va, next, "mappings are contiguous and in order");
            assert!(m.len > 0);
            if mode == PagingMode::None {
                // Paging off: one identity mapping for the whole range.
                assert_eq!(m.gpa, m.va);
            } else {
                assert!(m.len <= m.page_size.bytes());
            }
            assert_eq!(
                m.gpa & (m.page_size.bytes() - 1),
                m.va & (m.page_size.bytes() - 1),
                "page offset preserved"
            );
            if first.is_none() {
                first = Some(*m);
            }
            next = m.va.wrapping_add(m.len);
            count += 1;
            if count >= 512 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        mappings += u64::from(count);
        match (&single, first) {
            (Ok(t), Some(m)) => {
                assert_eq!(m.va, va);
                assert_eq!(
                    (m.gpa, m.page_size, m.perms, m.leaf),
                    (t.gpa, t.page_size, t.perms, t.leaf)
                );
            }
            (Err(f), None) => assert_eq!(out, RangeOutcome::Faulted(*f), "{ctx:?} {va:#x}"),
            (s, m) => panic!("translate {s:?} but walk_range started with {m:?} ({out:?})"),
        }
        if let RangeOutcome::Faulted(f) = out {
            if first.is_some() {
                assert_eq!(f.address, next, "the fault follows the last mapping");
            }
        }

        // Touch every fourth address; it must agree with translate.
        if i % 4 == 0 {
            match touch(&mem, &ctx, va, acc) {
                Ok(t) => {
                    let s = single.expect("touch succeeded where translate faulted");
                    assert_eq!((t.gpa, t.page_size, t.perms), (s.gpa, s.page_size, s.perms));
                    // After touching, the translation still holds.
                    let again = translate(&mem, &ctx, va, acc).unwrap();
                    assert_eq!(again.gpa, t.gpa);
                }
                Err(TouchError::Fault(f)) => assert_eq!(Err(f), single.map(|_| ())),
                Err(TouchError::Contended) => contended += 1,
            }
        }
    }
    let dt = t0.elapsed();
    eprintln!(
        "garbage: {walks} contexts in {dt:?}: {ok} translations, {faults} faults, \
         {mappings} range mappings, {contended} contended touches; faults by level {by_level:?}"
    );
    eprintln!("garbage: faults before any entry was read: {early:?}");
    // Faults must come from every depth of the walk.
    for (level, n) in by_level.iter().enumerate() {
        assert!(*n > 0, "no fault at level {level}");
    }
    // The generator must reach real translations, not only faults.
    assert!(ok > walks / 10, "only {ok} successful translations");
    assert!(faults > walks / 20, "only {faults} faults");
}

#[test]
fn fully_self_referencing_tables_terminate() {
    // Every entry of one page points at that page: every address translates
    // (to the page itself) in every mode, and walking everything is bounded
    // by the callback.
    let mem = ram();
    let root = TABLES;
    for (ctx, width) in [
        (ctx32(root, false), 4),
        (ctx32(root, true), 4),
        (ctx4(root), 8),
        (ctx5(root), 8),
        (ctx_pae(root), 8),
    ] {
        let mode = ctx.mode();
        for i in 0..4096 / width {
            if width == 4 {
                w32(&mem, root + i * 4, (root | P | RW | US) as u32);
            } else if mode == PagingMode::Pae && i < 4 {
                // The PDPTEs (also PDEs 0-3): bits 2:1 are reserved there.
                w64(&mem, root + i * 8, root | P);
            } else {
                w64(&mem, root + i * 8, root | P | RW | US);
            }
        }
        let va = match mode {
            PagingMode::Level4 => 0xffff_ffff_ffff_fff0,
            PagingMode::Level5 => 0x0000_1234_5678_9abc,
            _ => 0xdead_beef,
        };
        let t = translate(&mem, &ctx, va, Access::user_write()).unwrap();
        if ctx.cr4 & CR4_PSE != 0 {
            // With PSE the PDE (PS = 0 here) still points at a table.
            assert_eq!(t.page_size, guest_mm::paging::PageSize::Size4K);
        }
        assert_eq!(t.gpa, root | (va & 0xfff), "{mode:?}");
        let mut n = 0u64;
        // Supervisor reads: the PAE PDEs 0-3 double as PDPTEs (P only).
        let out = walk_range(&mem, &ctx, 0, u64::MAX, Access::supervisor_read(), |m| {
            assert_eq!(m.gpa & !0xfff, root);
            n += 1;
            if n == 100_000 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(out, RangeOutcome::Stopped, "{mode:?}");
        assert_eq!(n, 100_000);
        // Touch through the loop: A and D end up on the one page.
        touch(&mem, &ctx, va, Access::user_write()).unwrap();
        let t = translate(&mem, &ctx, va, Access::user_read()).unwrap();
        assert_eq!(t.leaf.value & (A | D), A | D, "{mode:?}");
    }
}
