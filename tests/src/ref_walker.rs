// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A deliberately simple reference walker, written straight from the Intel
//! SDM (volume 3A, chapter 4, "Paging"), to check `guest_mm::paging` against.
//!
//! It shares no code with `guest_mm::paging`: it only returns its public
//! types ([`PageSize`], [`Permissions`], [`FaultKind`], [`ErrorCode`],
//! [`FaultReason`]) and reads [`PagingContext`]'s raw register fields. It
//! translates one address at a time, has one function per paging mode, uses
//! plain `u64` arithmetic and reads every entry with an ordinary
//! `read_obj` from guest memory. Speed is not a goal; obviousness is.
//!
//! Conventions that the SDM leaves open, and that this walker shares with
//! `guest_mm` because they are the project's documented choices (DESIGN 4.2
//! and the `FaultReason` docs), not hardware behaviour:
//!
//! * A paging-structure entry outside guest RAM gives a not-present #PF at
//!   that level ([`FaultReason::TableOutsideRam`]), as KVM reports it.
//! * A linear address wider than 32 bits outside long mode, and a
//!   non-canonical address in long mode, give a #GP at level 0.
//! * PAE PDPTEs with reserved bits: MOV to CR3 would have raised #GP and
//!   loaded none of them (SDM 4.4.1), so any access is a #GP at level 3.
//! * CR3 bits that MOV to CR3 would refuse (above MAXPHYADDR) are ignored,
//!   and MAXPHYADDR is clamped to 32..=52.
//! * Without paging, every address below 4 GiB maps to itself as a "4K page"
//!   with every permission, and there is no leaf entry.
//! * Protection keys set the PK bit only on a fault raised after a complete
//!   walk (never on not-present or reserved-bit faults).

use guest_mm::paging::{
    Access, AccessKind, ErrorCode, FaultKind, FaultReason, PageSize, PagingContext, Permissions,
    Privilege,
};
use vm_memory::{Bytes, GuestAddress};

// Register bits (SDM vol. 3A 2.2.1 and 2.5).
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
const CR4_PKE: u64 = 1 << 22;
const CR4_PKS: u64 = 1 << 24;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
const RFLAGS_AC: u64 = 1 << 18;

// Page-fault error code bits (SDM 4.7, figure 4-12).
const PF_P: u32 = 1;
const PF_W: u32 = 2;
const PF_U: u32 = 4;
const PF_RSVD: u32 = 8;
const PF_ID: u32 = 16;
const PF_PK: u32 = 32;

/// The paging mode the reference decided on (SDM 4.1.1, table 4-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefMode {
    /// CR0.PG = 0.
    NoPaging,
    /// CR0.PG = 1, CR4.PAE = 0.
    Bits32,
    /// CR0.PG = 1, CR4.PAE = 1, IA32_EFER.LMA = 0.
    Pae,
    /// Long mode, CR4.LA57 = 0.
    Level4,
    /// Long mode, CR4.LA57 = 1.
    Level5,
}

/// The mode `ctx` selects, from its raw registers.
pub fn mode_of(ctx: &PagingContext) -> RefMode {
    if ctx.cr0 & CR0_PG == 0 {
        RefMode::NoPaging
    } else if ctx.cr4 & CR4_PAE == 0 {
        RefMode::Bits32
    } else if ctx.efer & EFER_LMA == 0 {
        RefMode::Pae
    } else if ctx.cr4 & CR4_LA57 != 0 {
        RefMode::Level5
    } else {
        RefMode::Level4
    }
}

/// One paging-structure entry the walk read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefEntry {
    /// Level (1 = PTE, 2 = PDE, 3 = PDPTE, 4 = PML4E, 5 = PML5E).
    pub level: u8,
    /// Guest-physical address of the entry; `None` for a PAE PDPTE register.
    pub gpa: Option<u64>,
    /// Width in bytes (4 or 8).
    pub width: u8,
    /// The value read.
    pub value: u64,
    /// Whether the entry has an Accessed bit (every entry but a PAE PDPTE).
    pub has_accessed: bool,
}

/// A successful translation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefTranslation {
    /// The guest-physical address.
    pub gpa: u64,
    /// The size of the page.
    pub page_size: PageSize,
    /// Effective permissions.
    pub perms: Permissions,
    /// The leaf entry (`None` without paging).
    pub leaf: Option<RefEntry>,
    /// Every entry read, top-down, leaf included.
    pub trace: Vec<RefEntry>,
}

/// A fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefFault {
    /// The faulting linear address.
    pub address: u64,
    /// #PF with its error code, or #GP.
    pub kind: FaultKind,
    /// The level of the entry where the walk stopped (0 before any entry).
    pub level: u8,
    /// Every reason that applies (at least one). When several access rules
    /// are broken at once, the SDM does not name one; any of these is right.
    pub reasons: Vec<FaultReason>,
    /// Every entry read, top-down.
    pub trace: Vec<RefEntry>,
}

/// The reference result.
pub type RefResult = Result<RefTranslation, RefFault>;

/// Translate `addr` for `access` in the address space of `ctx`, reading the
/// page tables from `mem`.
pub fn translate<M: Bytes<GuestAddress>>(
    mem: &M,
    ctx: &PagingContext,
    addr: u64,
    access: Access,
) -> RefResult {
    let w = RefWalk {
        mem,
        ctx,
        addr,
        access,
        trace: Vec::new(),
    };
    match mode_of(ctx) {
        RefMode::NoPaging => w.no_paging(),
        RefMode::Bits32 => w.bits32(),
        RefMode::Pae => w.pae(),
        RefMode::Level4 => w.level4(),
        RefMode::Level5 => w.level5(),
    }
}

/// The mask of bits `lo` to `hi` inclusive (empty when `hi < lo`).
fn bit_range(lo: u32, hi: u32) -> u64 {
    let mut m = 0u64;
    let mut b = lo;
    while b <= hi && b < 64 {
        m |= 1u64 << b;
        b += 1;
    }
    m
}

fn bit(v: u64, n: u32) -> bool {
    (v >> n) & 1 == 1
}

struct RefWalk<'a, M> {
    mem: &'a M,
    ctx: &'a PagingContext,
    addr: u64,
    access: Access,
    trace: Vec<RefEntry>,
}

impl<M: Bytes<GuestAddress>> RefWalk<'_, M> {
    fn maxphyaddr(&self) -> u32 {
        u32::from(self.ctx.maxphyaddr).clamp(32, 52)
    }

    fn is_write(&self) -> bool {
        self.access.kind == AccessKind::Write
    }

    fn is_fetch(&self) -> bool {
        self.access.kind == AccessKind::Fetch
    }

    fn is_user_access(&self) -> bool {
        self.access.privilege == Privilege::User
    }

    /// EFER.NXE as it matters: there is no XD bit in 32-bit paging.
    fn nxe(&self) -> bool {
        self.ctx.efer & EFER_NXE != 0 && self.ctx.cr4 & CR4_PAE != 0
    }

    /// The W/R, U/S and I/D bits of any page-fault error code (SDM 4.7).
    fn access_code(&self) -> u32 {
        let mut code = 0;
        if self.is_write() {
            code |= PF_W;
        }
        if self.is_user_access() {
            code |= PF_U;
        }
        // I/D: an instruction fetch, with CR4.SMEP = 1, or with CR4.PAE = 1
        // and IA32_EFER.NXE = 1.
        if self.is_fetch()
            && (self.ctx.cr4 & CR4_SMEP != 0
                || (self.ctx.cr4 & CR4_PAE != 0 && self.ctx.efer & EFER_NXE != 0))
        {
            code |= PF_ID;
        }
        code
    }

    fn gp(&self, level: u8, reason: FaultReason) -> RefResult {
        Err(RefFault {
            address: self.addr,
            kind: FaultKind::GeneralProtection,
            level,
            reasons: vec![reason],
            trace: self.trace.clone(),
        })
    }

    fn pf(&self, level: u8, code: u32, reasons: Vec<FaultReason>) -> RefResult {
        Err(RefFault {
            address: self.addr,
            kind: FaultKind::PageFault(ErrorCode(code)),
            level,
            reasons,
            trace: self.trace.clone(),
        })
    }

    fn not_present(&self, level: u8) -> RefResult {
        self.pf(level, self.access_code(), vec![FaultReason::NotPresent])
    }

    fn outside_ram(&self, level: u8) -> RefResult {
        self.pf(
            level,
            self.access_code(),
            vec![FaultReason::TableOutsideRam],
        )
    }

    fn reserved(&self, level: u8) -> RefResult {
        self.pf(
            level,
            self.access_code() | PF_P | PF_RSVD,
            vec![FaultReason::ReservedBit],
        )
    }

    /// Read a 4-byte entry.
    fn read32(&mut self, level: u8, gpa: u64) -> Option<u64> {
        let v: u32 = self.mem.read_obj(GuestAddress(gpa)).ok()?;
        self.trace.push(RefEntry {
            level,
            gpa: Some(gpa),
            width: 4,
            value: u64::from(v),
            has_accessed: true,
        });
        Some(u64::from(v))
    }

    /// Read an 8-byte entry.
    fn read64(&mut self, level: u8, gpa: u64, has_accessed: bool) -> Option<u64> {
        let v: u64 = self.mem.read_obj(GuestAddress(gpa)).ok()?;
        self.trace.push(RefEntry {
            level,
            gpa: Some(gpa),
            width: 8,
            value: v,
            has_accessed,
        });
        Some(v)
    }

    /// CR0.PG = 0: no translation, no checks.
    fn no_paging(self) -> RefResult {
        if self.addr > 0xffff_ffff {
            return self.gp(0, FaultReason::AddressTooWide);
        }
        Ok(RefTranslation {
            gpa: self.addr,
            page_size: PageSize::Size4K,
            perms: Permissions {
                writable: true,
                user: true,
                executable: true,
                pkey: None,
            },
            leaf: None,
            trace: Vec::new(),
        })
    }

    /// 32-bit paging (SDM 4.3, tables 4-3 to 4-6).
    fn bits32(mut self) -> RefResult {
        let addr = self.addr;
        if addr > 0xffff_ffff {
            return self.gp(0, FaultReason::AddressTooWide);
        }
        // The page directory is at CR3[31:12]; the PDE index is
        // linear-address bits 31:22.
        let pd = self.ctx.cr3 & 0xffff_f000;
        let pde_gpa = pd + ((addr >> 22) & 0x3ff) * 4;
        let Some(pde) = self.read32(2, pde_gpa) else {
            return self.outside_ram(2);
        };
        if !bit(pde, 0) {
            return self.not_present(2);
        }
        if self.ctx.cr4 & CR4_PSE != 0 && bit(pde, 7) {
            // A 4-MByte page (table 4-4). With PSE-36, bits (M-20):13 hold
            // physical-address bits (M-1):32 and bits 21:(M-19) are
            // reserved, M = min(40, MAXPHYADDR); without PSE-36, M = 32 and
            // bits 21:13 are all reserved.
            let m = if self.ctx.features.pse36 {
                self.maxphyaddr().min(40)
            } else {
                32
            };
            if pde & bit_range(m - 19, 21) != 0 {
                return self.reserved(2);
            }
            let high = if m > 32 {
                (pde >> 13) & bit_range(0, m - 33)
            } else {
                0
            };
            let gpa = (pde & 0xffc0_0000) | (high << 32) | (addr & 0x3f_ffff);
            let perms = Permissions {
                writable: bit(pde, 1),
                user: bit(pde, 2),
                executable: true,
                pkey: None,
            };
            let leaf = self.trace.last().copied();
            return self.finish(gpa, PageSize::Size4M, perms, 2, leaf);
        }
        // A page table at PDE[31:12]; the PTE index is bits 21:12. A PTE
        // has no reserved bits.
        let pt = pde & 0xffff_f000;
        let pte_gpa = pt + ((addr >> 12) & 0x3ff) * 4;
        let Some(pte) = self.read32(1, pte_gpa) else {
            return self.outside_ram(1);
        };
        if !bit(pte, 0) {
            return self.not_present(1);
        }
        let gpa = (pte & 0xffff_f000) | (addr & 0xfff);
        let perms = Permissions {
            writable: bit(pde, 1) && bit(pte, 1),
            user: bit(pde, 2) && bit(pte, 2),
            executable: true,
            pkey: None,
        };
        let leaf = self.trace.last().copied();
        self.finish(gpa, PageSize::Size4K, perms, 1, leaf)
    }

    /// PAE paging (SDM 4.4, tables 4-7 to 4-11).
    fn pae(mut self) -> RefResult {
        let addr = self.addr;
        if addr > 0xffff_ffff {
            return self.gp(0, FaultReason::AddressTooWide);
        }
        let m = self.maxphyaddr();
        let index = ((addr >> 30) & 3) as usize;
        // The four PDPTEs: from the PDPTE registers when given, else the
        // 32-byte PDPT at CR3[31:5], which is what MOV to CR3 loads.
        let pdptes: [Option<u64>; 4] = match self.ctx.pdptes {
            Some(regs) => {
                self.trace.push(RefEntry {
                    level: 3,
                    gpa: None,
                    width: 8,
                    value: regs[index],
                    has_accessed: false,
                });
                [Some(regs[0]), Some(regs[1]), Some(regs[2]), Some(regs[3])]
            }
            None => {
                let pdpt = self.ctx.cr3 & 0xffff_ffe0;
                let mut all = [None; 4];
                for (i, slot) in all.iter_mut().enumerate() {
                    *slot = self
                        .mem
                        .read_obj::<u64>(GuestAddress(pdpt + 8 * i as u64))
                        .ok();
                }
                if let Some(v) = all[index] {
                    self.trace.push(RefEntry {
                        level: 3,
                        gpa: Some(pdpt + 8 * index as u64),
                        width: 8,
                        value: v,
                        has_accessed: false,
                    });
                }
                all
            }
        };
        // MOV to CR3 refuses the whole set (#GP) if any present PDPTE has a
        // reserved bit: 63:M, 8:5 or 2:1 (SDM 4.4.1, table 4-8).
        let pdpte_rsvd = bit_range(m, 63) | bit_range(5, 8) | bit_range(1, 2);
        for e in pdptes.iter().flatten() {
            if bit(*e, 0) && e & pdpte_rsvd != 0 {
                return self.gp(3, FaultReason::InvalidPdpte);
            }
        }
        let Some(pdpte) = pdptes[index] else {
            return self.outside_ram(3);
        };
        if !bit(pdpte, 0) {
            return self.not_present(3);
        }
        // PDEs and PTEs: bits 62:M reserved, and bit 63 unless NXE.
        let mut rsvd = bit_range(m, 62);
        if !self.nxe() {
            rsvd |= 1 << 63;
        }
        let pd = pdpte & bit_range(12, m - 1);
        let pde_gpa = pd + ((addr >> 21) & 0x1ff) * 8;
        let Some(pde) = self.read64(2, pde_gpa, true) else {
            return self.outside_ram(2);
        };
        if !bit(pde, 0) {
            return self.not_present(2);
        }
        if bit(pde, 7) {
            // A 2-MByte page (table 4-9): bits 20:13 reserved too.
            if pde & (rsvd | bit_range(13, 20)) != 0 {
                return self.reserved(2);
            }
            let gpa = (pde & bit_range(21, m - 1)) | (addr & 0x1f_ffff);
            let perms = self.long_perms(&[pde], false);
            let leaf = self.trace.last().copied();
            return self.finish(gpa, PageSize::Size2M, perms, 2, leaf);
        }
        if pde & rsvd != 0 {
            return self.reserved(2);
        }
        let pt = pde & bit_range(12, m - 1);
        let pte_gpa = pt + ((addr >> 12) & 0x1ff) * 8;
        let Some(pte) = self.read64(1, pte_gpa, true) else {
            return self.outside_ram(1);
        };
        if !bit(pte, 0) {
            return self.not_present(1);
        }
        if pte & rsvd != 0 {
            return self.reserved(1);
        }
        let gpa = (pte & bit_range(12, m - 1)) | (addr & 0xfff);
        let perms = self.long_perms(&[pde, pte], false);
        let leaf = self.trace.last().copied();
        self.finish(gpa, PageSize::Size4K, perms, 1, leaf)
    }

    /// 4-level paging (SDM 4.5, 48-bit linear addresses).
    fn level4(self) -> RefResult {
        self.long_mode(4)
    }

    /// 5-level paging (SDM 4.5, 57-bit linear addresses).
    fn level5(self) -> RefResult {
        self.long_mode(5)
    }

    /// 4- and 5-level paging (SDM 4.5, tables 4-14 to 4-20).
    fn long_mode(mut self, levels: u8) -> RefResult {
        let addr = self.addr;
        // Canonical: bits 63:47 (or 63:56) all equal (SDM 3.3.7.1).
        let top_bit = if levels == 5 { 56 } else { 47 };
        let upper = addr >> top_bit;
        let ones = (1u64 << (64 - top_bit)) - 1;
        if upper != 0 && upper != ones {
            return self.gp(0, FaultReason::NonCanonical);
        }
        let m = self.maxphyaddr();
        // Every entry: bits 51:M reserved, and bit 63 unless NXE.
        let mut rsvd = bit_range(m, 51);
        if !self.nxe() {
            rsvd |= 1 << 63;
        }
        let mut table = self.ctx.cr3 & bit_range(12, m - 1);
        let mut entries: Vec<u64> = Vec::new();
        let mut level = levels;
        loop {
            let shift = 12 + 9 * u32::from(level - 1);
            let e_gpa = table + ((addr >> shift) & 0x1ff) * 8;
            let Some(e) = self.read64(level, e_gpa, true) else {
                return self.outside_ram(level);
            };
            if !bit(e, 0) {
                return self.not_present(level);
            }
            entries.push(e);
            let ps = bit(e, 7);
            // PS is reserved in PML5Es and PML4Es, and in PDPTEs when the
            // CPU has no 1-GByte pages.
            let ps_reserved = level >= 4 || (level == 3 && !self.ctx.features.gbpages);
            if ps && ps_reserved {
                return self.reserved(level);
            }
            let leaf_size = match level {
                1 => Some(PageSize::Size4K),
                2 if ps => Some(PageSize::Size2M),
                3 if ps => Some(PageSize::Size1G),
                _ => None,
            };
            let Some(size) = leaf_size else {
                if e & rsvd != 0 {
                    return self.reserved(level);
                }
                table = e & bit_range(12, m - 1);
                level -= 1;
                continue;
            };
            // Large pages: the bits between PAT (12) and the address are
            // reserved: 20:13 for 2 MiB, 29:13 for 1 GiB.
            let page_shift = match size {
                PageSize::Size4K => 12,
                PageSize::Size2M => 21,
                _ => 30,
            };
            let leaf_rsvd = if page_shift > 12 {
                rsvd | bit_range(13, page_shift - 1)
            } else {
                rsvd
            };
            if e & leaf_rsvd != 0 {
                return self.reserved(level);
            }
            let offset = addr & ((1u64 << page_shift) - 1);
            let gpa = (e & bit_range(page_shift, m - 1)) | offset;
            let perms = self.long_perms(&entries, true);
            let leaf = self.trace.last().copied();
            return self.finish(gpa, size, perms, level, leaf);
        }
    }

    /// Effective permissions from the entries that control a translation in
    /// PAE, 4- and 5-level paging (SDM 4.6.1): R/W and U/S must be 1 in
    /// every entry, XD must be 0 in every entry (with NXE). The protection
    /// key is bits 62:59 of the leaf, in long mode with CR4.PKE or CR4.PKS.
    fn long_perms(&self, entries: &[u64], long_mode: bool) -> Permissions {
        let writable = entries.iter().all(|e| bit(*e, 1));
        let user = entries.iter().all(|e| bit(*e, 2));
        let xd = entries.iter().any(|e| bit(*e, 63));
        let keys = long_mode && self.ctx.cr4 & (CR4_PKE | CR4_PKS) != 0;
        let leaf = entries.last().copied().unwrap_or(0);
        Permissions {
            writable,
            user,
            executable: !(self.nxe() && xd),
            pkey: if keys {
                Some(((leaf >> 59) & 0xf) as u8)
            } else {
                None
            },
        }
    }

    /// Check the access against the translation (SDM 4.6) and build the
    /// result.
    fn finish(
        self,
        gpa: u64,
        page_size: PageSize,
        perms: Permissions,
        level: u8,
        leaf: Option<RefEntry>,
    ) -> RefResult {
        let mut reasons = access_violations(self.ctx, self.access, &perms);
        let pk = pkey_violation(self.ctx, self.access, &perms);
        if pk {
            reasons.push(FaultReason::ProtectionKey);
        }
        if reasons.is_empty() {
            return Ok(RefTranslation {
                gpa,
                page_size,
                perms,
                leaf,
                trace: self.trace,
            });
        }
        let mut code = self.access_code() | PF_P;
        if pk {
            code |= PF_PK;
        }
        self.pf(level, code, reasons)
    }
}

/// The access-rights rules of SDM 4.6.1, rule by rule; returns every rule the
/// access breaks (empty: allowed, before protection keys).
pub fn access_violations(
    ctx: &PagingContext,
    access: Access,
    perms: &Permissions,
) -> Vec<FaultReason> {
    let wp = ctx.cr0 & CR0_WP != 0;
    let smep = ctx.cr4 & CR4_SMEP != 0;
    let smap = ctx.cr4 & CR4_SMAP != 0;
    let ac = ctx.rflags & RFLAGS_AC != 0;
    let user_address = perms.user;
    let mut broken = Vec::new();
    match access.privilege {
        // User-mode accesses (CPL 3): only user-mode addresses; writes need
        // R/W = 1 (whatever CR0.WP); fetches need XD = 0 (with NXE).
        Privilege::User => {
            if !user_address {
                broken.push(FaultReason::UserAccessToSupervisorPage);
            }
            match access.kind {
                AccessKind::Read => {}
                AccessKind::Write => {
                    if !perms.writable {
                        broken.push(FaultReason::ReadOnly);
                    }
                }
                AccessKind::Fetch => {
                    if !perms.executable {
                        broken.push(FaultReason::NoExecute);
                    }
                }
            }
        }
        // Supervisor-mode accesses (CPL < 3, or implicit).
        Privilege::Supervisor | Privilege::ImplicitSupervisor => {
            let implicit = access.privilege == Privilege::ImplicitSupervisor;
            match access.kind {
                AccessKind::Read | AccessKind::Write => {
                    // SMAP: data accesses to user-mode addresses are allowed
                    // only if explicit with RFLAGS.AC = 1.
                    if user_address && smap && (implicit || !ac) {
                        broken.push(FaultReason::Smap);
                    }
                    // Writes: with CR0.WP = 1 only to R/W = 1 addresses
                    // (supervisor- or user-mode); with WP = 0 anywhere.
                    if access.kind == AccessKind::Write && wp && !perms.writable {
                        broken.push(FaultReason::ReadOnly);
                    }
                }
                AccessKind::Fetch => {
                    // SMEP: no supervisor fetch from a user-mode address.
                    if user_address && smep {
                        broken.push(FaultReason::Smep);
                    }
                    if !perms.executable {
                        broken.push(FaultReason::NoExecute);
                    }
                }
            }
        }
    }
    broken
}

/// The protection-key rule (SDM 4.6.2), which is also exactly the condition
/// for the PK bit of the error code (SDM 4.7): a data access, in long mode,
/// to a user-mode address with CR4.PKE (key rights from PKRU) or to a
/// supervisor-mode address with CR4.PKS (from IA32_PKRS), where the key's AD
/// bit is set, or its WD bit is set and the access is a write made in user
/// mode or with CR0.WP = 1.
pub fn pkey_violation(ctx: &PagingContext, access: Access, perms: &Permissions) -> bool {
    if access.kind == AccessKind::Fetch || ctx.efer & EFER_LMA == 0 {
        return false;
    }
    let Some(key) = perms.pkey else {
        return false;
    };
    let rights = if perms.user {
        if ctx.cr4 & CR4_PKE == 0 {
            return false;
        }
        ctx.pkru
    } else {
        if ctx.cr4 & CR4_PKS == 0 {
            return false;
        }
        ctx.pkrs
    };
    let ad = (rights >> (2 * u32::from(key))) & 1 == 1;
    let wd = (rights >> (2 * u32::from(key) + 1)) & 1 == 1;
    let write = access.kind == AccessKind::Write;
    let user_access = access.privilege == Privilege::User;
    ad || (wd && write && (user_access || ctx.cr0 & CR0_WP != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_mm::paging::context::{CR0_PG, CR4_PAE, EFER_LMA, EFER_LME};
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn level4_4k_and_2m() {
        let m = mem();
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000.
        m.write_obj(0x2000u64 | 7, GuestAddress(0x1000)).unwrap();
        m.write_obj(0x3000u64 | 7, GuestAddress(0x2000)).unwrap();
        m.write_obj(0x4000u64 | 3, GuestAddress(0x3000)).unwrap();
        m.write_obj(0x0020_0000u64 | 0x85, GuestAddress(0x3008))
            .unwrap();
        m.write_obj(0xabc000u64 | 5, GuestAddress(0x4000 + 5 * 8))
            .unwrap();
        let ctx = PagingContext::new(CR0_PG, 0x1000, CR4_PAE, EFER_LME | EFER_LMA);
        let t = translate(&m, &ctx, 0x5123, Access::supervisor_read()).unwrap();
        assert_eq!(t.gpa, 0xabc123);
        assert_eq!(t.page_size, PageSize::Size4K);
        assert!(!t.perms.writable);
        assert!(!t.perms.user, "the PDE has U/S = 0");
        let t = translate(&m, &ctx, 0x2f_0001, Access::supervisor_read()).unwrap();
        assert_eq!(t.gpa, 0x2f_0001);
        assert_eq!(t.page_size, PageSize::Size2M);
        // A user access to the supervisor-only 4K page.
        let f = translate(&m, &ctx, 0x5000, Access::user_read()).unwrap_err();
        assert_eq!(f.kind, FaultKind::PageFault(ErrorCode(PF_P | PF_U)));
        // Not present at the PTE level.
        let f = translate(&m, &ctx, 0x6000, Access::supervisor_write()).unwrap_err();
        assert_eq!(f.kind, FaultKind::PageFault(ErrorCode(PF_W)));
        assert_eq!(f.level, 1);
        // Non-canonical.
        let f = translate(&m, &ctx, 1 << 47, Access::supervisor_read()).unwrap_err();
        assert_eq!(f.kind, FaultKind::GeneralProtection);
    }

    #[test]
    fn bits32_pse36() {
        let m = mem();
        // PDE 1 maps a 4-MByte page at 0x3_0040_0000 (bits 33:32 in 14:13).
        m.write_obj(0x0040_0000u32 | (3 << 13) | 0x87, GuestAddress(0x1004))
            .unwrap();
        let ctx = PagingContext::new(CR0_PG, 0x1000, CR4_PSE, 0).with_maxphyaddr(36);
        let t = translate(&m, &ctx, 0x0041_2345, Access::user_write()).unwrap();
        assert_eq!(t.gpa, 0x3_0041_2345);
        assert_eq!(t.page_size, PageSize::Size4M);
        // Bit 17 = bit (M-19) is reserved with MAXPHYADDR 36.
        m.write_obj(0x0040_0000u32 | (1 << 17) | 0x87, GuestAddress(0x1004))
            .unwrap();
        let f = translate(&m, &ctx, 0x0041_2345, Access::user_read()).unwrap_err();
        assert_eq!(
            f.kind,
            FaultKind::PageFault(ErrorCode(PF_P | PF_U | PF_RSVD))
        );
    }

    #[test]
    fn access_rules_and_keys() {
        use guest_mm::paging::context::{CR0_WP, CR4_PKE, CR4_SMAP, RFLAGS_AC};
        let m = mem();
        // A read-only user 4K page with protection key 5 at 0x5000.
        m.write_obj(0x2000u64 | 7, GuestAddress(0x1000)).unwrap();
        m.write_obj(0x3000u64 | 7, GuestAddress(0x2000)).unwrap();
        m.write_obj(0x4000u64 | 7, GuestAddress(0x3000)).unwrap();
        m.write_obj(0x9000u64 | 5 | (5 << 59), GuestAddress(0x4000 + 5 * 8))
            .unwrap();
        let base = PagingContext::new(CR0_PG, 0x1000, CR4_PAE, EFER_LME | EFER_LMA);
        let sup_write = Access::supervisor_write();
        let implicit_read = Access::new(AccessKind::Read, Privilege::ImplicitSupervisor);
        // WP = 0: supervisor writes ignore R/W; WP = 1: they do not.
        assert!(translate(&m, &base, 0x5000, sup_write).is_ok());
        let wp = PagingContext {
            cr0: CR0_PG | CR0_WP,
            ..base
        };
        let f = translate(&m, &wp, 0x5000, sup_write).unwrap_err();
        assert_eq!(f.kind, FaultKind::PageFault(ErrorCode(PF_P | PF_W)));
        assert_eq!(f.reasons, vec![FaultReason::ReadOnly]);
        // SMAP: explicit reads allowed with AC, implicit ones never.
        let smap = PagingContext {
            cr4: CR4_PAE | CR4_SMAP,
            ..base
        };
        assert!(translate(&m, &smap, 0x5000, Access::supervisor_read()).is_err());
        let smap_ac = smap.with_rflags(RFLAGS_AC);
        assert!(translate(&m, &smap_ac, 0x5000, Access::supervisor_read()).is_ok());
        let f = translate(&m, &smap_ac, 0x5000, implicit_read).unwrap_err();
        assert_eq!(f.kind, FaultKind::PageFault(ErrorCode(PF_P)));
        // PKRU: WD for key 5 stops user writes (with the R/W fault too, PK
        // set), AD stops reads.
        let pke = PagingContext {
            cr4: CR4_PAE | CR4_PKE,
            ..base
        };
        let wd = pke.with_pkru(2 << 10);
        assert!(translate(&m, &wd, 0x5000, Access::user_read()).is_ok());
        let f = translate(&m, &wd, 0x5000, Access::user_write()).unwrap_err();
        assert_eq!(
            f.kind,
            FaultKind::PageFault(ErrorCode(PF_P | PF_W | PF_U | PF_PK))
        );
        let ad = pke.with_pkru(1 << 10);
        let f = translate(&m, &ad, 0x5000, Access::user_read()).unwrap_err();
        assert_eq!(f.kind, FaultKind::PageFault(ErrorCode(PF_P | PF_U | PF_PK)));
        assert_eq!(f.reasons, vec![FaultReason::ProtectionKey]);
        // Fetches ignore keys.
        let fetch = Access::new(AccessKind::Fetch, Privilege::User);
        assert!(translate(&m, &ad, 0x5000, fetch).is_ok());
    }

    #[test]
    fn pae_invalid_pdpte_is_gp() {
        let m = mem();
        m.write_obj(0x2000u64 | 1, GuestAddress(0x1000)).unwrap();
        // PDPTE 3 is present with reserved bit 1 set.
        m.write_obj(0x3000u64 | 3, GuestAddress(0x1018)).unwrap();
        let ctx = PagingContext::new(CR0_PG, 0x1000, CR4_PAE, 0);
        let f = translate(&m, &ctx, 0x1000, Access::supervisor_read()).unwrap_err();
        assert_eq!(f.kind, FaultKind::GeneralProtection);
        assert_eq!(f.reasons, vec![FaultReason::InvalidPdpte]);
    }
}
