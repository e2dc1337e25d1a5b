// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared helpers for the walker tests: guest memory, raw entry writes, a
//! small page-table builder, register presets and a deterministic PRNG.
//!
//! The builder only places entries where the tests say; every expected value
//! in the tests is written out from the SDM layout, never read back from the
//! builder's own arithmetic (except the entry addresses it chose).

#![allow(dead_code)]

use guest_mm::paging::context::{
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, EFER_LMA, EFER_LME, EFER_NXE,
};
use guest_mm::paging::{Fault, FaultKind, FaultReason, PagingContext, PagingMode};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// P, R/W, U/S, PWT, PCD, A, D, PS, G.
pub const P: u64 = 1 << 0;
pub const RW: u64 = 1 << 1;
pub const US: u64 = 1 << 2;
pub const A: u64 = 1 << 5;
pub const D: u64 = 1 << 6;
pub const PS: u64 = 1 << 7;
pub const G: u64 = 1 << 8;
pub const XD: u64 = 1 << 63;

/// Error-code bits, written out from SDM figure 4-12.
pub const EC_P: u32 = 1;
pub const EC_W: u32 = 2;
pub const EC_U: u32 = 4;
pub const EC_RSVD: u32 = 8;
pub const EC_ID: u32 = 16;
pub const EC_PK: u32 = 32;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Size of the default test RAM (one region at 0).
pub const RAM: u64 = 16 * MIB;
/// Where the builder starts handing out table pages.
pub const TABLES: u64 = 0x10_0000;

/// Guest RAM: one region of [`RAM`] bytes at 0.
pub fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

/// The same with a dirty bitmap.
pub fn ram_dirty() -> GuestMemoryMmap<AtomicBitmap> {
    GuestMemoryMmap::<AtomicBitmap>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

/// Write a 64-bit entry.
pub fn w64<M: GuestMemoryBackend>(mem: &M, gpa: u64, v: u64) {
    mem.write_obj(v, GuestAddress(gpa)).unwrap();
}
/// Write a 32-bit entry.
pub fn w32<M: GuestMemoryBackend>(mem: &M, gpa: u64, v: u32) {
    mem.write_obj(v, GuestAddress(gpa)).unwrap();
}
/// Read a 64-bit entry.
pub fn r64<M: GuestMemoryBackend>(mem: &M, gpa: u64) -> u64 {
    mem.read_obj(GuestAddress(gpa)).unwrap()
}
/// Read a 32-bit entry.
pub fn r32<M: GuestMemoryBackend>(mem: &M, gpa: u64) -> u32 {
    mem.read_obj(GuestAddress(gpa)).unwrap()
}

/// Long mode EFER (LME | LMA | NXE).
pub const EFER_LONG: u64 = EFER_LME | EFER_LMA | EFER_NXE;

/// 32-bit paging, CR0.WP set, optional CR4.PSE.
pub fn ctx32(root: u64, pse: bool) -> PagingContext {
    PagingContext::new(CR0_PG | CR0_WP, root, if pse { CR4_PSE } else { 0 }, 0)
}
/// PAE paging with NXE.
pub fn ctx_pae(root: u64) -> PagingContext {
    PagingContext::new(CR0_PG | CR0_WP, root, CR4_PAE, EFER_NXE)
}
/// 4-level paging with NXE, MAXPHYADDR 52.
pub fn ctx4(root: u64) -> PagingContext {
    PagingContext::new(CR0_PG | CR0_WP, root, CR4_PAE, EFER_LONG)
}
/// 5-level paging with NXE.
pub fn ctx5(root: u64) -> PagingContext {
    PagingContext::new(CR0_PG | CR0_WP, root, CR4_PAE | CR4_LA57, EFER_LONG)
}

/// Entry addresses of one mapping, by level (index 1 = PTE ... 5 = PML5E).
#[derive(Clone, Copy, Debug, Default)]
pub struct Path {
    pub entry: [Option<u64>; 6],
}

impl Path {
    /// Guest-physical address of the entry at `level`.
    pub fn at(&self, level: u8) -> u64 {
        self.entry[usize::from(level)].expect("level not on this path")
    }
}

/// A page-table builder for one address space.
pub struct Builder<'a, M: GuestMemoryBackend> {
    pub mem: &'a M,
    pub mode: PagingMode,
    pub root: u64,
    next: u64,
    /// Flags of the non-leaf entries the builder creates (PAE PDPTEs get P only).
    pub table_flags: u64,
}

impl<'a, M: GuestMemoryBackend> Builder<'a, M> {
    /// A builder whose root table is the first page at [`TABLES`].
    pub fn new(mem: &'a M, mode: PagingMode) -> Self {
        let mut b = Builder {
            mem,
            mode,
            root: 0,
            next: TABLES,
            table_flags: P | RW | US,
        };
        b.root = b.alloc();
        b
    }

    /// A fresh zeroed table page.
    pub fn alloc(&mut self) -> u64 {
        let page = self.next;
        self.next += 4 * KIB;
        self.mem
            .write_slice(&[0u8; 4096], GuestAddress(page))
            .unwrap();
        page
    }

    fn width(&self) -> u64 {
        if self.mode == PagingMode::Bits32 {
            4
        } else {
            8
        }
    }

    /// Index of `va` in the table at `level`.
    pub fn index(&self, va: u64, level: u8) -> u64 {
        match self.mode {
            PagingMode::Bits32 => (va >> (12 + 10 * (u32::from(level) - 1))) & 0x3ff,
            PagingMode::Pae if level == 3 => (va >> 30) & 3,
            _ => (va >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff,
        }
    }

    fn top(&self) -> u8 {
        self.mode.levels()
    }

    fn read(&self, gpa: u64) -> u64 {
        if self.width() == 4 {
            u64::from(r32(self.mem, gpa))
        } else {
            r64(self.mem, gpa)
        }
    }

    /// Write an entry of the mode's width.
    pub fn write(&self, gpa: u64, v: u64) {
        if self.width() == 4 {
            w32(self.mem, gpa, v as u32)
        } else {
            w64(self.mem, gpa, v)
        }
    }

    /// Map `va` with a leaf at `leaf_level` (1 = 4K PTE; 2 = 2M/4M PDE;
    /// 3 = 1G PDPTE) pointing at `pa`, with `flags` (P and PS are added).
    /// Missing tables above are created with [`Builder::table_flags`].
    pub fn map(&mut self, va: u64, pa: u64, leaf_level: u8, flags: u64) -> Path {
        let mut path = Path::default();
        let mut table = self.root;
        let mut level = self.top();
        while level > leaf_level {
            let at = table + self.index(va, level) * self.width();
            path.entry[usize::from(level)] = Some(at);
            let e = self.read(at);
            table = if e & P != 0 {
                if self.width() == 4 {
                    e & 0xffff_f000
                } else {
                    e & 0x000f_ffff_ffff_f000
                }
            } else {
                let t = self.alloc();
                let fl = if self.mode == PagingMode::Pae && level == 3 {
                    P
                } else {
                    self.table_flags
                };
                self.write(at, t | fl);
                t
            };
            level -= 1;
        }
        let at = table + self.index(va, level) * self.width();
        path.entry[usize::from(level)] = Some(at);
        let mut v = flags | P;
        if level > 1 {
            v |= PS;
        }
        if self.mode == PagingMode::Bits32 && level == 2 {
            // PSE-36: physical bits 39:32 go to PDE bits 20:13.
            v |= (pa & 0xffc0_0000) | ((pa >> 32) & 0xff) << 13;
        } else {
            v |= pa;
        }
        self.write(at, v);
        path
    }

    /// Map `count` consecutive 4K pages from `va` to `pa`.
    pub fn map_4k_run(&mut self, va: u64, pa: u64, count: u64, flags: u64) {
        for i in 0..count {
            self.map(va + i * 4096, pa + i * 4096, 1, flags);
        }
    }
}

/// A #PF fault with an exact error code, level and reason.
pub fn pf(address: u64, code: u32, level: u8, reason: FaultReason) -> Fault {
    Fault {
        address,
        kind: FaultKind::PageFault(guest_mm::paging::ErrorCode(code)),
        level,
        reason,
    }
}

/// A #GP fault.
pub fn gp(address: u64, level: u8, reason: FaultReason) -> Fault {
    Fault {
        address,
        kind: FaultKind::GeneralProtection,
        level,
        reason,
    }
}

/// xorshift64*: a tiny deterministic PRNG.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}
