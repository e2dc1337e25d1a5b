// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Random, adversarial page-table images for the KVM differential tests.
//!
//! [`generate`] writes a deterministic (seeded) image of x86 paging
//! structures into guest RAM for one paging mode, and returns the control
//! register values that select it plus a list of interesting linear
//! addresses to translate. The images mix what a real guest builds (4K, 2M,
//! 4M and 1G leaves with assorted flag bits) with what a broken or hostile
//! guest might: reserved bits (above MAXPHYADDR, XD without EFER.NXE, the
//! must-be-zero bits of large pages, PS where it is not allowed), garbage in
//! not-present entries, tables shared by several entries, loops (an entry
//! pointing back at a higher-level table or at its own table), and table
//! pointers outside guest RAM or beyond MAXPHYADDR.
//!
//! The addresses mostly follow existing paths through the image, so that
//! most land on mapped or nearly mapped pages, plus page-boundary, random and
//! (in 4- and 5-level paging) non-canonical ones.
//!
//! Nothing here decides what a translation should be: that is the walker's
//! job, and the KVM test compares it against KVM_TRANSLATE.

use std::collections::HashMap;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// SplitMix64: a tiny, fast, deterministic PRNG (good enough for test data,
/// not for anything else).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One random bit.
    pub fn bit(&mut self) -> bool {
        self.next_u64() & 1 != 0
    }

    /// A random element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// An index chosen with the given relative weights (not all zero).
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut r = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if r < w {
                return i;
            }
            r -= w;
        }
        weights.len() - 1
    }
}

/// The paging mode an image is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GenMode {
    /// 32-bit paging, CR4.PSE = 0 (PS in PDEs is ignored).
    Bits32,
    /// 32-bit paging with CR4.PSE (4-MByte pages, PSE-36 when supported).
    Bits32Pse,
    /// PAE paging.
    Pae,
    /// 4-level paging.
    Level4,
    /// 5-level paging.
    Level5,
}

impl GenMode {
    /// Every mode, in order.
    pub const ALL: [GenMode; 5] = [
        GenMode::Bits32,
        GenMode::Bits32Pse,
        GenMode::Pae,
        GenMode::Level4,
        GenMode::Level5,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            GenMode::Bits32 => "32-bit",
            GenMode::Bits32Pse => "32-bit+PSE",
            GenMode::Pae => "PAE",
            GenMode::Level4 => "4-level",
            GenMode::Level5 => "5-level",
        }
    }

    /// Number of levels of paging structures (PAE counts the PDPT).
    pub fn levels(self) -> u8 {
        match self {
            GenMode::Bits32 | GenMode::Bits32Pse => 2,
            GenMode::Pae => 3,
            GenMode::Level4 => 4,
            GenMode::Level5 => 5,
        }
    }

    /// Whether entries are 8 bytes wide.
    pub fn wide(self) -> bool {
        !matches!(self, GenMode::Bits32 | GenMode::Bits32Pse)
    }

    /// Whether this is 4- or 5-level paging (long mode).
    pub fn long(self) -> bool {
        matches!(self, GenMode::Level4 | GenMode::Level5)
    }

    /// Width of a linear address, in bits.
    pub fn linear_bits(self) -> u32 {
        match self {
            GenMode::Level4 => 48,
            GenMode::Level5 => 57,
            _ => 32,
        }
    }

    /// Bit position of the lowest linear-address bit indexing `level`.
    pub fn shift(self, level: u8) -> u32 {
        if self.wide() {
            12 + 9 * (u32::from(level) - 1)
        } else {
            12 + 10 * (u32::from(level) - 1)
        }
    }

    /// Number of linear-address bits indexing `level`.
    pub fn index_bits(self, level: u8) -> u32 {
        match self {
            GenMode::Bits32 | GenMode::Bits32Pse => 10,
            GenMode::Pae if level == 3 => 2,
            _ => 9,
        }
    }
}

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct GenConfig {
    /// The paging mode.
    pub mode: GenMode,
    /// The guest's MAXPHYADDR.
    pub maxphyaddr: u8,
    /// Set EFER.NXE.
    pub nxe: bool,
    /// The guest CPU has PSE-36 (decides where 4-MByte leaves may point).
    pub pse36: bool,
    /// Bytes of guest RAM at guest-physical 0 (everything above is outside).
    pub ram_bytes: u64,
    /// Page-aligned start of the area of guest RAM the tables are put in.
    pub area_start: u64,
    /// Length of that area, in bytes (a multiple of 4096).
    pub area_len: u64,
    /// At most this many paging structures per image.
    pub max_tables: usize,
    /// How many addresses to return.
    pub addresses: usize,
}

/// One generated image.
#[derive(Clone, Debug)]
pub struct Image {
    /// CR0 (PE, PG, and a random WP).
    pub cr0: u64,
    /// CR3: the root table.
    pub cr3: u64,
    /// CR4 (PSE, PAE, LA57 as the mode needs; random PGE, and a random PSE
    /// where it is ignored).
    pub cr4: u64,
    /// EFER (LME and LMA in long mode, NXE as configured).
    pub efer: u64,
    /// Number of paging structures written.
    pub tables: usize,
    /// PAE only: whether the generator put a reserved bit in a present
    /// PDPTE (then MOV to CR3 would raise #GP and load none of them, SDM
    /// 4.4.1: no CPU can be translating with these tables). Always false in
    /// other modes.
    pub pdpte_reserved: bool,
    /// Linear addresses to translate.
    pub addresses: Vec<u64>,
}

const P: u64 = 1 << 0;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
const PAGE: u64 = 4096;

/// A table of the image, as the address generator needs it: which entries
/// were written, and which of them point to another table of the image.
#[derive(Clone, Debug, Default)]
struct Meta {
    entries: Vec<(u64, Option<u64>)>,
}

/// How one entry is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    NotPresent,
    NewTable,
    Shared,
    Loop,
    Cross,
    OutsideRam,
    BeyondMaxPhys,
    Leaf,
    Garbage,
}

struct Builder<'a> {
    mem: &'a GuestMemoryMmap,
    cfg: GenConfig,
    rng: &'a mut Rng,
    free: Vec<u64>,
    pdpte_reserved: bool,
    tables: HashMap<u64, Meta>,
    /// Tables by the level they were made for.
    by_level: [Vec<u64>; 6],
    count: usize,
}

fn mask(lo: u32, hi: u32) -> u64 {
    if hi < lo {
        0
    } else if hi - lo >= 63 {
        u64::MAX
    } else {
        ((1u64 << (hi - lo + 1)) - 1) << lo
    }
}

impl Builder<'_> {
    fn m(&self) -> u32 {
        u32::from(self.cfg.maxphyaddr)
    }

    fn width(&self) -> u64 {
        if self.cfg.mode.wide() {
            8
        } else {
            4
        }
    }

    fn write(&self, gpa: u64, value: u64) {
        let r = if self.cfg.mode.wide() {
            self.mem.write_obj(value, GuestAddress(gpa))
        } else {
            self.mem.write_obj(value as u32, GuestAddress(gpa))
        };
        r.expect("page-table area lies in guest RAM");
    }

    fn alloc(&mut self, level: u8) -> Option<u64> {
        if self.count >= self.cfg.max_tables {
            return None;
        }
        let gpa = self.free.pop()?;
        self.count += 1;
        self.tables.insert(gpa, Meta::default());
        self.by_level[usize::from(level)].push(gpa);
        Some(gpa)
    }

    /// A physical page-aligned address for a leaf of `size` bytes: mostly
    /// low (in or near RAM), sometimes anywhere the mode can address.
    fn leaf_address(&mut self, size: u64, limit_bits: u32) -> u64 {
        let limit = 1u64 << limit_bits;
        let a = if self.rng.chance(50) {
            self.rng.below(self.cfg.ram_bytes * 8)
        } else {
            self.rng.below(limit)
        };
        (a % limit) & !(size - 1)
    }

    /// A random page address in `[ram_bytes, 2^bits)`: outside guest RAM.
    fn outside_ram(&mut self, bits: u32) -> u64 {
        let top = 1u64 << bits;
        let lo = self.cfg.ram_bytes;
        let a = if self.rng.chance(50) {
            lo + self.rng.below(64) * PAGE
        } else {
            self.rng.range(lo, top - 1)
        };
        a & !(PAGE - 1)
    }

    /// Random flag bits that never change whether an 8-byte entry is valid
    /// (R/W, U/S, PWT, PCD, A, D, G, the software bits 11:9 and the ignored
    /// bits 62:52), plus XD: often with EFER.NXE, rarely without (where it is
    /// reserved).
    fn wide_flags(&mut self, high_ignored: bool) -> u64 {
        let mut f = self.rng.next_u64() & (mask(1, 6) | mask(8, 11));
        if high_ignored && self.rng.chance(30) {
            f |= self.rng.next_u64() & mask(52, 62);
        }
        let xd = if self.cfg.nxe { 30 } else { 3 };
        if self.rng.chance(xd) {
            f |= XD;
        }
        f
    }

    /// Flag bits of a 4-byte entry (everything but P, PS and the address).
    fn narrow_flags(&mut self) -> u64 {
        self.rng.next_u64() & (mask(1, 6) | mask(8, 11))
    }

    /// Maybe set one reserved bit chosen from `candidates` (bit numbers).
    fn maybe_reserved(&mut self, e: u64, candidates: &[u32]) -> u64 {
        if !candidates.is_empty() && self.rng.chance(3) {
            e | 1u64 << self.rng.pick(candidates)
        } else {
            e
        }
    }

    /// Bits above MAXPHYADDR that an 8-byte entry may not set (51:M; 62:M
    /// in PAE, where bits 62:52 are not ignored).
    fn high_reserved(&self) -> Vec<u32> {
        let top = if self.cfg.mode == GenMode::Pae {
            62
        } else {
            51
        };
        (self.m()..=top).collect()
    }

    /// An entry pointing at `target` (a table, or any page) at `level`.
    fn pointer(&mut self, level: u8, target: u64) -> u64 {
        if self.cfg.mode.wide() {
            let long = self.cfg.mode.long();
            let mut e = P | self.wide_flags(long) | (target & mask(12, 51));
            if long && level >= 4 && !self.rng.chance(10) {
                // Bit 8 of a PML4E or PML5E is ignored per the SDM but
                // must-be-zero per the AMD64 APM: set it only sometimes, so
                // that most walks through it mean the same to both vendors.
                e &= !(1 << 8);
            }
            let mut rsvd = self.high_reserved();
            if self.cfg.mode.long() && level >= 4 {
                rsvd.push(7);
            }
            self.maybe_reserved(e, &rsvd)
        } else {
            let mut e = P | self.narrow_flags() | (target & 0xffff_f000);
            // Without CR4.PSE, PS in a PDE is ignored: set it at random.
            if self.cfg.mode == GenMode::Bits32 && self.rng.bit() {
                e |= PS;
            }
            e
        }
    }

    /// A leaf at `level` (PS set above level 1, also where PS is reserved).
    fn leaf(&mut self, level: u8) -> u64 {
        let mode = self.cfg.mode;
        let m = self.m();
        if !mode.wide() {
            if level == 1 {
                return P | self.narrow_flags() | (self.rng.next_u64() & 0xffff_f080);
            }
            // A 4-MByte page: address bits 31:22, PAT in bit 12, PSE-36
            // high address bits from bit 13, the rest of 21:13 reserved.
            let pse36_bits = if self.cfg.pse36 { m.min(40) - 32 } else { 0 };
            let high = self.rng.next_u64() & mask(13, 12 + pse36_bits);
            let e = P
                | PS
                | self.narrow_flags()
                | (self.rng.next_u64() & (0xffc0_0000 | 1 << 12))
                | high;
            let rsvd: Vec<u32> = (13 + pse36_bits..=21).collect();
            return self.maybe_reserved(e, &rsvd);
        }
        let mut rsvd = self.high_reserved();
        // Bits 62:52 are ignored only in 4- and 5-level paging.
        let long = mode.long();
        let e = match level {
            1 => {
                let a = self.leaf_address(PAGE, m);
                P | self.wide_flags(long) | (self.rng.next_u64() & PS) | a
            }
            2 => {
                rsvd.extend(13..=20);
                let a = self.leaf_address(1 << 21, m.max(21));
                P | PS | self.wide_flags(long) | (self.rng.next_u64() & (1 << 12)) | a
            }
            3 => {
                // A 1-GByte page; PS is reserved here where the CPU has no
                // 1-GByte pages (and always in a PAE PDPTE, which does not
                // come through here).
                rsvd.extend(13..=29);
                let a = self.leaf_address(1 << 30, m.max(30));
                P | PS | self.wide_flags(long) | (self.rng.next_u64() & (1 << 12)) | a
            }
            _ => {
                // PS in a PML4E or PML5E: always reserved.
                let t = self.rng.below(self.cfg.ram_bytes) & !(PAGE - 1);
                P | PS | self.wide_flags(long) | t
            }
        };
        self.maybe_reserved(e, &rsvd)
    }

    /// A present-looking entry made of random bits.
    fn garbage(&mut self) -> u64 {
        let g = self.rng.next_u64() | P;
        if self.cfg.mode.wide() {
            g
        } else {
            g & 0xffff_ffff
        }
    }

    /// Make the entry at index `index` of the table at `table` (level
    /// `level`); returns its value, the table it points to if any, and
    /// whether that table is new (to be filled).
    fn entry(&mut self, level: u8, table: u64) -> (u64, Option<u64>, bool) {
        let mode = self.cfg.mode;
        let has_lower = !self.by_level[usize::from(level - 1)].is_empty();
        let large_level = level == 2 || (mode.wide() && level >= 3);
        let weights: Vec<(Kind, u64)> = if level == 1 {
            vec![
                (Kind::Leaf, 70),
                (Kind::NotPresent, 14),
                (Kind::Garbage, 4),
                (Kind::BeyondMaxPhys, 4),
                (Kind::Cross, 4),
                (Kind::Loop, 4),
            ]
        } else {
            vec![
                (Kind::NewTable, 40),
                (Kind::Shared, if has_lower { 10 } else { 0 }),
                (Kind::Loop, 5),
                (Kind::Cross, 3),
                (
                    Kind::Leaf,
                    match (large_level, level) {
                        (false, _) => 0,
                        (true, 2) => 25,
                        (true, 3) => 10,
                        _ => 3,
                    },
                ),
                (Kind::NotPresent, 8),
                (Kind::OutsideRam, 4),
                (Kind::BeyondMaxPhys, if mode.wide() { 3 } else { 0 }),
                (Kind::Garbage, 3),
            ]
        };
        let w: Vec<u64> = weights.iter().map(|&(_, w)| w).collect();
        let kind = weights[self.rng.weighted(&w)].0;
        let mut target = None;
        let mut new = false;
        let value = match kind {
            Kind::NotPresent => {
                let g = if self.rng.chance(30) {
                    0
                } else {
                    self.rng.next_u64()
                };
                let g = g & !P;
                if mode.wide() {
                    g
                } else {
                    g & 0xffff_ffff
                }
            }
            Kind::NewTable | Kind::Shared => {
                let existing = if kind == Kind::Shared {
                    let v = &self.by_level[usize::from(level - 1)];
                    Some(v[self.rng.below(v.len() as u64) as usize])
                } else {
                    None
                };
                let t = match existing {
                    Some(t) => Some(t),
                    None => {
                        let t = self.alloc(level - 1);
                        new = t.is_some();
                        t
                    }
                };
                match t {
                    Some(t) => {
                        target = Some(t);
                        self.pointer(level, t)
                    }
                    None => self.leaf_or_absent(level),
                }
            }
            Kind::Loop => {
                // Back at a table of this or a higher level (maybe itself).
                let mut candidates = vec![table];
                for l in level..=mode.levels() {
                    candidates.extend(self.by_level[usize::from(l)].iter().copied());
                }
                let t = self.rng.pick(&candidates);
                target = Some(t);
                self.pointer(level, t)
            }
            Kind::Cross => {
                let all: Vec<u64> = self.by_level.iter().flatten().copied().collect();
                let t = self.rng.pick(&all);
                target = Some(t);
                self.pointer(level, t)
            }
            Kind::OutsideRam => {
                let bits = if mode.wide() { self.m() } else { 32 };
                let t = self.outside_ram(bits);
                self.pointer(level, t)
            }
            Kind::BeyondMaxPhys => {
                let m = self.m();
                let top = if mode == GenMode::Pae { 62 } else { 51 };
                if m > top {
                    self.leaf(level)
                } else {
                    let t = self.rng.below(self.cfg.ram_bytes) & !(PAGE - 1);
                    let e = if level == 1 {
                        self.leaf(1)
                    } else {
                        self.pointer(level, t)
                    };
                    e | 1u64 << self.rng.range(u64::from(m), u64::from(top))
                }
            }
            Kind::Leaf => self.leaf(level),
            Kind::Garbage => self.garbage(),
        };
        (value, target, new)
    }

    /// The fallback when the table budget is spent.
    fn leaf_or_absent(&mut self, level: u8) -> u64 {
        if level == 2 && self.rng.chance(70) {
            self.leaf(2)
        } else {
            let t = self.outside_ram(if self.cfg.mode.wide() { self.m() } else { 32 });
            if self.rng.bit() {
                self.pointer(level, t)
            } else {
                0
            }
        }
    }

    /// Indices to populate in a table of `n` entries.
    fn indices(&mut self, n: u64, wanted: usize) -> Vec<u64> {
        let mut v: Vec<u64> = Vec::with_capacity(wanted);
        while v.len() < wanted.min(n as usize) {
            let i = match self.rng.below(6) {
                0 => self.rng.below(4),
                1 => n - 1 - self.rng.below(4),
                2 | 3 if !v.is_empty() => {
                    let last = v[v.len() - 1];
                    (last + 1) % n
                }
                _ => self.rng.below(n),
            };
            if !v.contains(&i) {
                v.push(i);
            }
        }
        v
    }

    /// Fill the table at `gpa` (level `level`), and the new tables it points
    /// to, depth first.
    fn fill(&mut self, gpa: u64, level: u8) {
        let mode = self.cfg.mode;
        let n = 1u64 << mode.index_bits(level);
        let wanted = if self.rng.chance(15) {
            self.rng.range(8, 40)
        } else {
            self.rng.range(1, 8)
        } as usize;
        let mut children = Vec::new();
        for i in self.indices(n, wanted) {
            let (value, target, new) = self.entry(level, gpa);
            self.write(gpa + i * self.width(), value);
            if let Some(meta) = self.tables.get_mut(&gpa) {
                meta.entries.push((i, target));
            }
            if new {
                if let Some(t) = target {
                    children.push(t);
                }
            }
        }
        for t in children {
            self.fill(t, level - 1);
        }
    }

    /// PAE: the four PDPTEs at `root` (32-byte aligned, in a page of its own
    /// so that no other entry can point at it: KVM_TRANSLATE sets Accessed
    /// bits in the entries it walks, and bit 5 is reserved in a PDPTE).
    fn fill_pdpt(&mut self, root: u64) {
        let m = self.m();
        let mut entries = Vec::new();
        for i in 0..4u64 {
            let (value, target) = match self.rng.weighted(&[80, 10, 3, 7]) {
                0 => {
                    let t = if !self.by_level[2].is_empty() && self.rng.chance(20) {
                        let v = &self.by_level[2];
                        Some(v[self.rng.below(v.len() as u64) as usize])
                    } else {
                        self.alloc(2)
                    };
                    match t {
                        Some(t) => {
                            // PWT, PCD and the software bits 11:9 only.
                            let f = self.rng.next_u64() & (1 << 3 | 1 << 4 | mask(9, 11));
                            (P | f | t, Some(t))
                        }
                        None => (0, None),
                    }
                }
                1 => (self.rng.next_u64() & !P, None),
                2 => {
                    // A reserved bit: 63:M, 8:5 or 2:1.
                    let mut rsvd: Vec<u32> = (m..=63).collect();
                    rsvd.extend([1, 2, 5, 6, 7, 8]);
                    let t = self.rng.below(self.cfg.ram_bytes) & !(PAGE - 1);
                    self.pdpte_reserved = true;
                    (P | t | 1u64 << self.rng.pick(&rsvd), None)
                }
                _ => (P | self.outside_ram(m), None),
            };
            self.write(root + i * 8, value);
            entries.push((i, target));
        }
        let fresh: Vec<u64> = entries
            .iter()
            .filter_map(|&(_, t)| t)
            .filter(|t| self.tables.get(t).is_some_and(|m| m.entries.is_empty()))
            .collect();
        self.tables.insert(root, Meta { entries });
        let mut done = Vec::new();
        for t in fresh {
            if !done.contains(&t) {
                done.push(t);
                self.fill(t, 2);
            }
        }
    }

    /// Sign-extend (long mode) or truncate (32-bit linear addresses) `va`.
    fn canonical(&self, va: u64) -> u64 {
        let bits = self.cfg.mode.linear_bits();
        if self.cfg.mode.long() {
            let s = 64 - bits;
            (((va << s) as i64) >> s) as u64
        } else {
            va & 0xffff_ffff
        }
    }

    /// Low bits below `shift`: page boundaries, ends and random offsets.
    fn offset(&mut self, shift: u32) -> u64 {
        let span = 1u64 << shift;
        match self.rng.below(6) {
            0 => 0,
            1 => span - 1,
            2 => self.rng.below(span) & !(PAGE - 1),
            3 => (self.rng.below(span) & !(PAGE - 1)) | (PAGE - 1),
            _ => self.rng.below(span),
        }
    }

    /// An address that follows entries of the image from the root.
    fn path_address(&mut self, root: u64) -> u64 {
        let mode = self.cfg.mode;
        let mut va = 0u64;
        let mut table = Some(root);
        for level in (1..=mode.levels()).rev() {
            let shift = mode.shift(level);
            let n = 1u64 << mode.index_bits(level);
            let written = table
                .and_then(|t| self.tables.get(&t))
                .map(|m| m.entries.clone())
                .unwrap_or_default();
            let deeper: Vec<(u64, Option<u64>)> =
                written.iter().copied().filter(|e| e.1.is_some()).collect();
            let (index, next) = if !deeper.is_empty() && self.rng.chance(60) {
                // Prefer entries that lead further down.
                self.rng.pick(&deeper)
            } else if !written.is_empty() && self.rng.chance(95) {
                self.rng.pick(&written)
            } else {
                (self.rng.below(n), None)
            };
            va |= index << shift;
            match next {
                Some(t) if level > 1 => table = Some(t),
                _ => {
                    va |= self.offset(shift);
                    break;
                }
            }
        }
        self.canonical(va)
    }

    fn addresses(&mut self, root: u64) -> Vec<u64> {
        let mode = self.cfg.mode;
        let bits = mode.linear_bits();
        (0..self.cfg.addresses)
            .map(|_| match self.rng.below(20) {
                0 | 1 => {
                    let a = self.path_address(root);
                    match self.rng.below(3) {
                        0 => a & !(PAGE - 1),
                        1 => a | (PAGE - 1),
                        _ => self.canonical((a | (PAGE - 1)).wrapping_add(1)),
                    }
                }
                2 | 3 => {
                    let a = self.rng.next_u64();
                    self.canonical(a)
                }
                4 if mode.long() => {
                    // Flip one bit above the sign bit: never canonical.
                    let a = self.path_address(root);
                    a ^ 1u64 << self.rng.range(u64::from(bits), 63)
                }
                _ => self.path_address(root),
            })
            .collect()
    }
}

/// Write a random image for `cfg` into `mem` (clearing the table area
/// first) and return its registers and addresses.
///
/// The same `rng` state always gives the same image.
pub fn generate(mem: &GuestMemoryMmap, cfg: &GenConfig, rng: &mut Rng) -> Image {
    let zero = vec![0u8; cfg.area_len as usize];
    mem.write_slice(&zero, GuestAddress(cfg.area_start))
        .expect("page-table area lies in guest RAM");
    let mut free: Vec<u64> = (0..cfg.area_len / PAGE)
        .map(|i| cfg.area_start + i * PAGE)
        .collect();
    // Shuffle, so tables land anywhere in the area.
    for i in (1..free.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        free.swap(i, j);
    }
    let mode = cfg.mode;
    let mut b = Builder {
        mem,
        cfg: *cfg,
        rng,
        free,
        pdpte_reserved: false,
        tables: HashMap::new(),
        by_level: Default::default(),
        count: 0,
    };

    let (root, cr3) = if mode == GenMode::Pae {
        // The PDPT: 32-byte aligned anywhere in its own page.
        let page = b.free.pop().expect("table area holds at least one page");
        let root = page + b.rng.below(PAGE / 32) * 32;
        (root, root | (b.rng.next_u64() & 0x18))
    } else {
        let root = b
            .alloc(mode.levels())
            .expect("table area holds at least one page");
        // PWT and PCD in CR3 change nothing here.
        (root, root | (b.rng.next_u64() & 0x18))
    };
    if mode == GenMode::Pae {
        b.fill_pdpt(root);
    } else {
        b.fill(root, mode.levels());
    }

    let cr0 = 1 | 1 << 4 | 1 << 31 | if b.rng.bit() { 1 << 16 } else { 0 };
    // PGE (bit 7) never matters to a translation; PSE is ignored with PAE.
    let mut cr4 = if b.rng.bit() { 1 << 7 } else { 0 };
    match mode {
        GenMode::Bits32 => {}
        GenMode::Bits32Pse => cr4 |= 1 << 4,
        GenMode::Pae | GenMode::Level4 | GenMode::Level5 => {
            cr4 |= 1 << 5;
            if b.rng.bit() {
                cr4 |= 1 << 4;
            }
        }
    }
    if mode == GenMode::Level5 {
        cr4 |= 1 << 12;
    }
    let mut efer = if cfg.nxe { 1 << 11 } else { 0 };
    if mode.long() {
        efer |= 1 << 8 | 1 << 10;
    }
    let addresses = b.addresses(root);
    Image {
        cr0,
        cr3,
        cr4,
        efer,
        tables: b.count,
        pdpte_reserved: b.pdpte_reserved,
        addresses,
    }
}
