// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The body of the `walker` fuzz target (fuzz/fuzz_targets/walker.rs), also
//! replayed over the committed corpus by `tests/tests/fuzz_corpus.rs`.
//!
//! [`run`] decodes the fuzz input into a paging context, a small guest
//! memory with holes, page tables and an address, then checks
//! `guest_mm::paging` against the independent [`ref_walker`](crate::ref_walker):
//!
//! * [`translate`](guest_mm::paging::translate) and the reference agree on
//!   success or fault, gpa, page size, effective permissions, leaf entry,
//!   fault kind, exact error code, level and reason;
//! * [`walk_range`](guest_mm::paging::walk_range) over a small range around
//!   the address yields contiguous mappings that agree with `translate` (and
//!   the reference) on every page, and stops exactly where `translate` faults;
//! * [`touch`](guest_mm::paging::touch) succeeds exactly when `translate`
//!   does, and only ever sets Accessed/Dirty bits, only in the entries of the
//!   walk, and sets all of them.
//!
//! Any disagreement panics with the whole case and both results.
//!
//! Input format (hand-rolled; missing bytes read as zero, so every input is
//! valid): a fixed header (mode, control bits, MAXPHYADDR, PKRU/PKRS, memory
//! layout, CR3, address, access, range, PDPTE registers), then a list of
//! operations that write page-table entries: a whole path for the address
//! with chosen flags, single entries pointing at chosen pages, raw 8-byte
//! words, or raw byte runs.

use std::fmt::Write as _;
use std::ops::ControlFlow;

use guest_mm::paging::context::{
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PKE, CR4_PKS, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA,
    EFER_LME, EFER_NXE, RFLAGS_AC,
};
use guest_mm::paging::{
    self, Access, AccessKind, CpuFeatures, Fault, FaultKind, FaultReason, Mapping, PagingContext,
    PagingMode, Privilege, RangeOutcome, TouchError, Translation,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::fuzz_input::Input;
use crate::ref_walker::{self, RefResult};

const PAGE: u64 = 4096;
/// Most guest RAM a case gets, in pages (64 KiB).
const MAX_PAGES: u64 = 16;
/// Most entry-writing operations a case decodes.
const MAX_OPS: usize = 48;

/// Guest RAM: regions (sorted, disjoint, 4 KiB aligned) and useful pages.
#[derive(Debug)]
struct Layout {
    /// (base, size) of each region.
    regions: Vec<(u64, u64)>,
    /// Every page of RAM.
    ram_pages: Vec<u64>,
    /// Pages that are not RAM: holes, right after the regions, above 4 GiB.
    other_pages: Vec<u64>,
}

impl Layout {
    fn decode(inp: &mut Input) -> Layout {
        let count = 1 + inp.u8() % 4;
        let high = inp.u8();
        let mut low_cursor = 0u64;
        let mut high_cursor = 1u64 << 32;
        let mut left = MAX_PAGES;
        let mut regions = Vec::new();
        let mut ram_pages = Vec::new();
        let mut other_pages = Vec::new();
        for i in 0..count {
            let b = inp.u8();
            let gap = u64::from(b & 3);
            let size = (1 + u64::from((b >> 2) & 7)).min(left);
            if size == 0 {
                break;
            }
            left -= size;
            // The first region is always low, so there is RAM below 4 GiB
            // for the 32-bit modes' tables.
            let cursor = if i > 0 && high & (1 << i) != 0 {
                &mut high_cursor
            } else {
                &mut low_cursor
            };
            for g in 0..gap {
                other_pages.push(*cursor + g * PAGE);
            }
            *cursor += gap * PAGE;
            regions.push((*cursor, size * PAGE));
            for p in 0..size {
                ram_pages.push(*cursor + p * PAGE);
            }
            *cursor += size * PAGE;
        }
        other_pages.push(low_cursor);
        other_pages.push(high_cursor);
        regions.sort_unstable();
        Layout {
            regions,
            ram_pages,
            other_pages,
        }
    }

    /// A page for a table pointer: usually RAM, sometimes not.
    fn pick_page(&self, inp: &mut Input) -> u64 {
        let b = usize::from(inp.u8());
        if b < 0xe8 {
            self.ram_pages[b % self.ram_pages.len()]
        } else {
            self.other_pages[b % self.other_pages.len()]
        }
    }
}

/// One decoded fuzz case.
struct Case {
    mode: PagingMode,
    ctx: PagingContext,
    layout: Layout,
    mem: GuestMemoryMmap,
    addr: u64,
    access: Access,
    range_start: u64,
    range_len: u64,
}

/// Decode `data` into a case and check the walker against the reference
/// walker. Panics, with the full case, on any disagreement.
pub fn run(data: &[u8]) {
    let case = Case::decode(data);
    let _ = case.check();
}

/// [`run`], also naming what the input exercised: the paging mode and the
/// outcome of `translate` (page size, or fault kind and reason). The corpus
/// replay prints a histogram of these.
pub fn run_with_summary(data: &[u8]) -> String {
    let case = Case::decode(data);
    let result = case.check();
    match result {
        Ok(t) => format!("{:?}: translates ({:?})", case.mode, t.page_size),
        Err(f) => match f.kind {
            FaultKind::PageFault(_) => format!("{:?}: #PF {:?}", case.mode, f.reason),
            FaultKind::GeneralProtection => format!("{:?}: #GP {:?}", case.mode, f.reason),
        },
    }
}

fn sign_extend(v: u64, bits: u32) -> u64 {
    let shift = 64 - bits;
    (((v << shift) as i64) >> shift) as u64
}

impl Case {
    fn decode(data: &[u8]) -> Case {
        let mut inp = Input::new(data);
        let mode = match inp.u8() % 16 {
            0 => PagingMode::None,
            1..=3 => PagingMode::Bits32,
            4..=7 => PagingMode::Pae,
            8..=12 => PagingMode::Level4,
            _ => PagingMode::Level5,
        };
        let flags = inp.u16();
        let flag = |n: u32| flags & (1 << n) != 0;
        let mut cr0 = 0;
        let mut cr4 = 0;
        let mut efer = 0;
        if flag(0) {
            cr0 |= CR0_WP;
        }
        for (n, bit) in [
            (1, CR4_PSE),
            (2, CR4_SMEP),
            (3, CR4_SMAP),
            (4, CR4_PKE),
            (5, CR4_PKS),
            (6, CR4_LA57),
        ] {
            if flag(n) {
                cr4 |= bit;
            }
        }
        if flag(7) {
            efer |= EFER_NXE;
        }
        let rflags = if flag(8) { RFLAGS_AC } else { 0 };
        let features = CpuFeatures {
            gbpages: !flag(9),
            pse36: !flag(10),
        };
        // The registers of a consistent state for the mode (SDM table 4-1);
        // bits the mode ignores (LA57 outside long mode, PAE without
        // paging) stay random.
        match mode {
            PagingMode::None => {}
            PagingMode::Bits32 => {
                cr0 |= CR0_PG;
                cr4 &= !CR4_PAE;
            }
            PagingMode::Pae => {
                cr0 |= CR0_PG;
                cr4 |= CR4_PAE;
            }
            PagingMode::Level4 => {
                cr0 |= CR0_PG;
                cr4 = (cr4 | CR4_PAE) & !CR4_LA57;
                efer |= EFER_LME | EFER_LMA;
            }
            PagingMode::Level5 => {
                cr0 |= CR0_PG;
                cr4 |= CR4_PAE | CR4_LA57;
                efer |= EFER_LME | EFER_LMA;
            }
        }
        if mode == PagingMode::None && flag(11) {
            cr4 |= CR4_PAE;
        }
        let maxphyaddr = 32 + inp.u8() % 21;
        let pk = inp.u8();
        let pkru = if pk & 1 != 0 { inp.u32() } else { 0 };
        let pkrs = if pk & 2 != 0 { inp.u32() } else { 0 };

        let layout = Layout::decode(&mut inp);
        let ranges: Vec<(GuestAddress, usize)> = layout
            .regions
            .iter()
            .map(|&(base, size)| (GuestAddress(base), size as usize))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).expect("guest memory");

        let root_page = layout.pick_page(&mut inp);
        let low = u64::from(inp.u8());
        let cr3 = match mode {
            // PAE: the PDPT is any 32-byte slot of the page (CR3[11:5]),
            // usually the first; PWT and PCD random.
            PagingMode::Pae => {
                let slot = if low & 0x80 != 0 {
                    (low & 0x7f) << 5
                } else {
                    0
                };
                root_page | slot | (low & 0x18)
            }
            _ => root_page | (low & 0x18),
        };

        let linear_bits = mode.linear_bits();
        let canon = |v: u64| {
            if linear_bits > 32 {
                sign_extend(v, linear_bits)
            } else {
                v & 0xffff_ffff
            }
        };
        let ab = inp.u8();
        let raw = inp.u64();
        let near = raw & 0xffff;
        let addr = match ab & 7 {
            0..=3 => canon(raw),
            4 => raw,
            5 => raw & 0x3f_ffff,
            6 => match (ab >> 3) & 3 {
                // The top of the lower half, the bottom of the upper half,
                // the top of the address space, the 4 GiB line.
                0 => (1u64 << (linear_bits - 1)).wrapping_sub(1 + near),
                1 => (u64::MAX << (linear_bits - 1)).wrapping_add(near),
                2 => u64::MAX - near,
                _ => (1u64 << 32).wrapping_sub(0x8000).wrapping_add(near),
            },
            _ => canon(raw & 0xffff_ffff_ffff_c000) | (raw & 0xfff),
        };
        let access = match inp.u8() % 8 {
            0 => Access::new(AccessKind::Read, Privilege::User),
            1 => Access::new(AccessKind::Write, Privilege::User),
            2 => Access::new(AccessKind::Fetch, Privilege::User),
            3 => Access::new(AccessKind::Read, Privilege::Supervisor),
            4 => Access::new(AccessKind::Write, Privilege::Supervisor),
            5 => Access::new(AccessKind::Fetch, Privilege::Supervisor),
            6 => Access::new(AccessKind::Read, Privilege::ImplicitSupervisor),
            _ => Access::new(AccessKind::Write, Privilege::ImplicitSupervisor),
        };
        let rb1 = inp.u8();
        let rb2 = inp.u8();
        let back = u64::from(rb1 & 7) * PAGE
            + if rb1 & 8 != 0 {
                u64::from(rb1 >> 4) * 0x111
            } else {
                0
            };
        let range_start = addr.saturating_sub(back);
        let mut range_len = (u64::from(rb2 & 15) + 1) * PAGE
            - if rb2 & 16 != 0 {
                u64::from(rb2 >> 5) * 0x101
            } else {
                0
            };
        // Keep the range inside the 64-bit address space.
        range_len = range_len.min((u64::MAX - range_start).saturating_add(1));

        let pdpte_mode = inp.u8() % 4;
        let mut pdpte_xor = [0u64; 4];
        if pdpte_mode == 3 {
            for x in pdpte_xor.iter_mut() {
                *x = inp.u64();
            }
        }

        let mut ctx = PagingContext::new(cr0, cr3, cr4, efer)
            .with_maxphyaddr(maxphyaddr)
            .with_rflags(rflags)
            .with_pkru(pkru)
            .with_pkrs(pkrs)
            .with_features(features);

        let mut case = Case {
            mode,
            ctx,
            layout,
            mem,
            addr,
            access,
            range_start,
            range_len,
        };
        let mut ops = 0;
        while !inp.is_empty() && ops < MAX_OPS {
            case.apply_op(&mut inp);
            ops += 1;
        }
        // The PDPTE registers: what MOV to CR3 loaded, possibly changed
        // since in memory (or in the registers).
        if mode == PagingMode::Pae && pdpte_mode >= 2 {
            let pdpt = cr3 & 0xffff_ffe0;
            let mut regs = [0u64; 4];
            for (i, r) in regs.iter_mut().enumerate() {
                let v: u64 = case
                    .mem
                    .read_obj(GuestAddress(pdpt + 8 * i as u64))
                    .unwrap_or(0);
                *r = v ^ pdpte_xor[i];
            }
            ctx = ctx.with_pdptes(regs);
            case.ctx = ctx;
        }
        case
    }

    fn width(&self) -> u64 {
        if self.mode == PagingMode::Bits32 {
            4
        } else {
            8
        }
    }

    fn write_entry(&self, gpa: u64, value: u64) {
        // Writes outside RAM are simply lost.
        if self.width() == 4 {
            let _ = self.mem.write_obj(value as u32, GuestAddress(gpa));
        } else {
            let _ = self.mem.write_obj(value, GuestAddress(gpa));
        }
    }

    /// The fuzz-chosen bits of an entry other than its address: flags in
    /// 11:0, XD, protection key, and maybe one arbitrary (often reserved)
    /// bit.
    fn entry_bits(&self, inp: &mut Input) -> u64 {
        let flags = inp.u16();
        let hb = inp.u8();
        let mut v = u64::from(flags & 0xfff);
        if flags & 0x8000 == 0 {
            v |= 1; // P
        }
        if flags & 0x4000 != 0 {
            v |= 0x6; // R/W and U/S
        }
        if self.width() == 8 {
            if hb & 1 != 0 {
                v |= 1 << 63;
            }
            v |= u64::from((hb >> 1) & 0xf) << 59;
        }
        if hb & 0x20 != 0 {
            v |= 1 << (inp.u8() % 64);
        }
        v
    }

    fn apply_op(&mut self, inp: &mut Input) {
        let op = inp.u8();
        match op % 8 {
            0..=3 => self.op_path(inp, op),
            4 | 5 => {
                // One entry anywhere, pointing at a chosen page.
                let page = self.layout.pick_page(inp);
                let index = u64::from(inp.u16()) % (PAGE / self.width());
                let target = self.layout.pick_page(inp);
                let bits = self.entry_bits(inp);
                self.write_entry(page + index * self.width(), target | bits);
            }
            6 => {
                // One raw 8-byte word.
                let page = self.layout.pick_page(inp);
                let off = u64::from(inp.u16()) & 0xff8;
                let v = inp.u64();
                let _ = self.mem.write_obj(v, GuestAddress(page + off));
            }
            _ => {
                // A run of raw bytes.
                let page = self.layout.pick_page(inp);
                let off = u64::from(inp.u16()) & 0xfff;
                let n = usize::from(inp.u8() % 64);
                let bytes: Vec<u8> = (0..n).map(|_| inp.u8()).collect();
                let n = bytes.len().min((PAGE - off) as usize);
                let _ = self.mem.write_slice(&bytes[..n], GuestAddress(page + off));
            }
        }
    }

    /// Write a whole path of entries for `self.addr`, from the root down,
    /// each with fuzz-chosen flags, stopping at a chosen leaf level.
    fn op_path(&mut self, inp: &mut Input, op: u8) {
        let ctx = self.ctx;
        // Where the walk goes through: 32-bit paging has 1024 4-byte entries
        // per table, the PAE PDPT 4, everything else 512.
        let (levels, mut table) = match self.mode {
            PagingMode::None => return,
            PagingMode::Bits32 => (2u8, ctx.cr3 & 0xffff_f000),
            PagingMode::Pae => (3, ctx.cr3 & 0xffff_ffe0),
            PagingMode::Level4 => (4, ctx.cr3 & 0x000f_ffff_ffff_f000),
            PagingMode::Level5 => (5, ctx.cr3 & 0x000f_ffff_ffff_f000),
        };
        // Alternatively start below the root, at a chosen table and level.
        let mut top = levels;
        if op & 0x80 != 0 && levels > 1 {
            top = 1 + (op >> 3) % levels;
            table = self.layout.pick_page(inp);
        }
        for level in (1..=top).rev() {
            let (shift, index_bits) = match self.mode {
                PagingMode::Bits32 => (12 + 10 * u32::from(level - 1), 10),
                PagingMode::Pae if level == 3 => (30, 2),
                _ => (12 + 9 * u32::from(level - 1), 9),
            };
            let index = (self.addr >> shift) & ((1 << index_bits) - 1);
            let entry_gpa = table + index * self.width();
            let shape = inp.u8();
            let large_ok = match self.mode {
                PagingMode::Bits32 => level == 2,
                PagingMode::Pae => level == 2,
                _ => level == 2 || level == 3,
            };
            let leaf = level == 1 || (large_ok && shape & 1 != 0);
            let target = if leaf {
                let page = u64::from(inp.u32()) << 12;
                let align = if level == 1 { PAGE } else { 1u64 << shift };
                page & !(align - 1)
            } else {
                self.layout.pick_page(inp)
            };
            let mut bits = self.entry_bits(inp);
            if level > 1 {
                bits &= !0x80;
                if leaf {
                    bits |= 0x80; // PS
                }
            }
            if self.mode == PagingMode::Pae && level == 3 {
                // A valid PDPTE keeps only P, PWT, PCD and the ignored
                // bits, unless an arbitrary bit was asked for.
                if shape & 2 == 0 {
                    bits &= 0xe19;
                }
            }
            let mut value = target | bits;
            if self.mode == PagingMode::Bits32 {
                value &= 0xffff_ffff;
                if leaf && level == 2 {
                    // PSE-36 address bits 39:32 in bits 20:13.
                    value = (value & !0x003f_e000) | u64::from(inp.u8()) << 13;
                }
            }
            self.write_entry(entry_gpa, value);
            if leaf {
                break;
            }
            table = target;
        }
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        self.layout
            .regions
            .iter()
            .map(|&(base, size)| {
                let mut buf = vec![0u8; size as usize];
                self.mem
                    .read_slice(&mut buf, GuestAddress(base))
                    .expect("snapshot");
                buf
            })
            .collect()
    }

    /// Panic with everything needed to reproduce and understand `what`.
    fn fail(&self, what: &str) -> ! {
        let mut s = String::new();
        let _ = writeln!(s, "walker disagreement: {what}");
        let _ = writeln!(s, "mode: {:?}", self.mode);
        let _ = writeln!(s, "ctx: {:#x?}", self.ctx);
        let _ = writeln!(s, "address: {:#x}, access: {:?}", self.addr, self.access);
        let _ = writeln!(s, "range: {:#x} + {:#x}", self.range_start, self.range_len);
        let _ = writeln!(s, "regions: {:#x?}", self.layout.regions);
        let _ = writeln!(
            s,
            "guest_mm::translate: {:#x?}",
            paging::translate(&self.mem, &self.ctx, self.addr, self.access)
        );
        let _ = writeln!(
            s,
            "reference: {:#x?}",
            ref_walker::translate(&self.mem, &self.ctx, self.addr, self.access)
        );
        panic!("{s}");
    }

    fn check(&self) -> Result<Translation, Fault> {
        let before = self.snapshot();
        let gm = paging::translate(&self.mem, &self.ctx, self.addr, self.access);
        let rf = ref_walker::translate(&self.mem, &self.ctx, self.addr, self.access);
        if let Err(e) = compare(&gm, &rf) {
            self.fail(&format!("translate({:#x}): {e}", self.addr));
        }
        self.check_range();
        if self.snapshot() != before {
            self.fail("translate or walk_range wrote guest memory");
        }
        self.check_touch(&gm, &rf, &before);
        gm
    }

    /// `walk_range` agrees with `translate` (and the reference) on every page
    /// of a small range, and stops where `translate` faults.
    fn check_range(&self) {
        let (start, len) = (self.range_start, self.range_len);
        let mut maps: Vec<Mapping> = Vec::new();
        let outcome = paging::walk_range(&self.mem, &self.ctx, start, len, self.access, |m| {
            maps.push(*m);
            ControlFlow::Continue(())
        });
        let mut cursor = u128::from(start);
        let end = u128::from(start) + u128::from(len);
        for m in &maps {
            if u128::from(m.va) != cursor
                || m.len == 0
                || u128::from(m.va) + u128::from(m.len) > end
            {
                self.fail(&format!(
                    "walk_range({start:#x}, {len:#x}): mapping {m:#x?} does not continue at {cursor:#x}"
                ));
            }
            // Every 4K page the mapping covers, and its last byte.
            let last = m.va + (m.len - 1);
            let mut probes = vec![m.va];
            let mut p = (m.va | (PAGE - 1)).wrapping_add(1);
            while p != 0 && p <= last {
                probes.push(p);
                p = p.wrapping_add(PAGE);
            }
            probes.push(last);
            for va in probes {
                let t = paging::translate(&self.mem, &self.ctx, va, self.access);
                let want = Translation {
                    gpa: m.gpa.wrapping_add(va - m.va),
                    page_size: m.page_size,
                    perms: m.perms,
                    leaf: m.leaf,
                };
                if t != Ok(want) {
                    self.fail(&format!(
                        "walk_range({start:#x}, {len:#x}) mapping {m:#x?} disagrees with translate({va:#x}) = {t:#x?}"
                    ));
                }
                let r = ref_walker::translate(&self.mem, &self.ctx, va, self.access);
                if let Err(e) = compare(&t, &r) {
                    self.fail(&format!("translate({va:#x}) in the range: {e}"));
                }
            }
            cursor += u128::from(m.len);
        }
        // Breaking out of the walk after the first mapping stops it there.
        if !maps.is_empty() {
            let mut first = Vec::new();
            let stopped = paging::walk_range(&self.mem, &self.ctx, start, len, self.access, |m| {
                first.push(*m);
                ControlFlow::Break(())
            });
            if stopped != RangeOutcome::Stopped || first != maps[..1] {
                self.fail(&format!(
                    "walk_range({start:#x}, {len:#x}) with Break: {stopped:#x?} after {first:#x?}"
                ));
            }
        }
        match outcome {
            RangeOutcome::Complete => {
                if cursor != end {
                    self.fail(&format!(
                        "walk_range({start:#x}, {len:#x}) complete but mapped only up to {cursor:#x}"
                    ));
                }
            }
            RangeOutcome::Stopped => self.fail("walk_range stopped without being asked to"),
            RangeOutcome::Faulted(f) => {
                if u128::from(f.address) != cursor {
                    self.fail(&format!(
                        "walk_range({start:#x}, {len:#x}) faulted at {:#x}, mappings end at {cursor:#x}: {f:#x?}",
                        f.address
                    ));
                }
                let t = paging::translate(&self.mem, &self.ctx, f.address, self.access);
                if t != Err(f) {
                    self.fail(&format!(
                        "walk_range({start:#x}, {len:#x}) fault {f:#x?} but translate({:#x}) = {t:#x?}",
                        f.address
                    ));
                }
                let r = ref_walker::translate(&self.mem, &self.ctx, f.address, self.access);
                if let Err(e) = compare(&t, &r) {
                    self.fail(&format!(
                        "translate({:#x}) at the range fault: {e}",
                        f.address
                    ));
                }
            }
        }
    }

    /// `touch` succeeds exactly when `translate` does, and only sets A/D bits
    /// of the walk's entries.
    fn check_touch(&self, gm: &Result<Translation, Fault>, rf: &RefResult, before: &[Vec<u8>]) {
        let touched = paging::touch(&self.mem, &self.ctx, self.addr, self.access);
        let after = self.snapshot();
        // Entries the walk used that have an Accessed bit.
        let walked: Vec<(u64, u8)> = match rf {
            Ok(t) => t.trace.iter(),
            Err(f) => f.trace.iter(),
        }
        .filter(|e| e.has_accessed)
        .filter_map(|e| e.gpa.map(|g| (g, e.width)))
        .collect();
        let width = self.width();
        let mut changed = false;
        for (ri, &(base, _)) in self.layout.regions.iter().enumerate() {
            for (i, (&b, &a)) in before[ri].iter().zip(after[ri].iter()).enumerate() {
                if a == b {
                    continue;
                }
                changed = true;
                let gpa = base + i as u64;
                if a & b != b || (a ^ b) & !0x60 != 0 || gpa % width != 0 {
                    self.fail(&format!(
                        "touch changed byte {gpa:#x} from {b:#04x} to {a:#04x}: not just setting A/D"
                    ));
                }
                if !walked.iter().any(|&(g, _)| g == gpa) {
                    self.fail(&format!(
                        "touch wrote {gpa:#x}, which is not an entry of the walk {walked:#x?}"
                    ));
                }
            }
        }
        match (touched, gm) {
            (Ok(t), Ok(t0)) => {
                let want = if self.access.is_write() { 0x60 } else { 0x20 };
                let leaf_value = if t0.leaf.gpa.is_some() {
                    t0.leaf.value | want
                } else {
                    t0.leaf.value
                };
                if t.gpa != t0.gpa
                    || t.page_size != t0.page_size
                    || t.perms != t0.perms
                    || t.leaf.gpa != t0.leaf.gpa
                    || t.leaf.level != t0.leaf.level
                    || t.leaf.width != t0.leaf.width
                    || t.leaf.value != leaf_value
                {
                    self.fail(&format!(
                        "touch returned {t:#x?}, translate {t0:#x?} (leaf value should be {leaf_value:#x})"
                    ));
                }
                if let Some(g) = t.leaf.gpa {
                    if self.read_entry(g) != Some(t.leaf.value) {
                        self.fail(&format!(
                            "touch returned leaf {:#x} but memory holds {:#x?}",
                            t.leaf.value,
                            self.read_entry(g)
                        ));
                    }
                }
                for &(g, _) in &walked {
                    let v = self.read_entry(g).unwrap_or(0);
                    if v & 0x20 == 0 {
                        self.fail(&format!(
                            "touch left the Accessed bit clear in the walked entry at {g:#x} ({v:#x})"
                        ));
                    }
                }
            }
            (Err(TouchError::Fault(f)), Err(f0)) => {
                if f != *f0 || changed {
                    self.fail(&format!(
                        "touch faulted with {f:#x?} (memory changed: {changed}), translate with {f0:#x?}"
                    ));
                }
            }
            (Err(TouchError::Fault(f)), Ok(_)) => {
                // Only possible when setting A/D bits in entries that alias
                // the PAE PDPT read from memory made a PDPTE invalid.
                let now = paging::translate(&self.mem, &self.ctx, self.addr, self.access);
                let aliasing = self.mode == PagingMode::Pae
                    && self.ctx.pdptes.is_none()
                    && f.kind == FaultKind::GeneralProtection
                    && f.reason == FaultReason::InvalidPdpte
                    && now == Err(f);
                if !aliasing {
                    self.fail(&format!("touch faulted with {f:#x?}, translate succeeded"));
                }
            }
            (Ok(t), Err(f0)) => self.fail(&format!(
                "touch succeeded with {t:#x?}, translate faulted {f0:#x?}"
            )),
            (Err(TouchError::Contended), _) => {
                self.fail("touch reported contention with no concurrent writer")
            }
        }
    }

    fn read_entry(&self, gpa: u64) -> Option<u64> {
        if self.width() == 4 {
            self.mem
                .read_obj::<u32>(GuestAddress(gpa))
                .ok()
                .map(u64::from)
        } else {
            self.mem.read_obj::<u64>(GuestAddress(gpa)).ok()
        }
    }
}

/// Compare a `guest_mm` result with the reference's.
fn compare(gm: &Result<Translation, Fault>, rf: &RefResult) -> Result<(), String> {
    match (gm, rf) {
        (Ok(t), Ok(r)) => {
            let leaf_ok = match r.leaf {
                Some(e) => {
                    t.leaf.gpa == e.gpa
                        && t.leaf.level == e.level
                        && t.leaf.width == e.width
                        && t.leaf.value == e.value
                }
                None => t.leaf.gpa.is_none() && t.leaf.level == 0,
            };
            if t.gpa != r.gpa || t.page_size != r.page_size || t.perms != r.perms || !leaf_ok {
                return Err(format!(
                    "translations differ: guest_mm {t:#x?}, reference {r:#x?}"
                ));
            }
            Ok(())
        }
        (Err(f), Err(r)) => {
            if f.address != r.address
                || f.kind != r.kind
                || f.level != r.level
                || !r.reasons.contains(&f.reason)
            {
                return Err(format!(
                    "faults differ: guest_mm {f:#x?}, reference {r:#x?}"
                ));
            }
            Ok(())
        }
        (Ok(t), Err(r)) => Err(format!(
            "guest_mm translates ({t:#x?}), the reference faults ({r:#x?})"
        )),
        (Err(f), Ok(r)) => Err(format!(
            "guest_mm faults ({f:#x?}), the reference translates ({r:#x?})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_small_inputs_run() {
        run(&[]);
        for b in 0..=255u8 {
            run(&[b; 64]);
        }
    }
}
