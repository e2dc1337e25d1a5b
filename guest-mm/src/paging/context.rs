// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The paging context: which page tables, in which mode, with which checks.
//!
//! A [`PagingContext`] is built from raw register values so that this crate
//! never depends on KVM; the conversion from a vCPU's `kvm_sregs` lives in the
//! `vmm` crate.

/// CR0.WP: supervisor writes honour read-only pages (SDM 4.1.3).
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG: paging enabled.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4-MByte pages with 32-bit paging.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: PAE, 4-level or 5-level paging.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging (57-bit linear addresses) when in long mode.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.SMEP: supervisor-mode execution prevention.
pub const CR4_SMEP: u64 = 1 << 20;
/// CR4.SMAP: supervisor-mode access prevention.
pub const CR4_SMAP: u64 = 1 << 21;
/// CR4.PKE: protection keys for user-mode pages (PKRU).
pub const CR4_PKE: u64 = 1 << 22;
/// CR4.PKS: protection keys for supervisor-mode pages (IA32_PKRS).
pub const CR4_PKS: u64 = 1 << 24;
/// IA32_EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// IA32_EFER.LMA: long mode active (set by the CPU when LME and CR0.PG).
pub const EFER_LMA: u64 = 1 << 10;
/// IA32_EFER.NXE: execute-disable bit enable.
pub const EFER_NXE: u64 = 1 << 11;
/// RFLAGS.AC: alignment check / access control (SMAP override).
pub const RFLAGS_AC: u64 = 1 << 18;

/// Paging mode, derived from CR0.PG, CR4.PAE, EFER.LMA and CR4.LA57
/// (SDM 4.1.1, table 4-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// CR0.PG = 0: linear addresses are physical addresses (32 bits).
    None,
    /// 32-bit paging: two levels of 4-byte entries; 4-MByte pages with CR4.PSE.
    Bits32,
    /// PAE paging: four PDPTEs, then two levels of 8-byte entries.
    Pae,
    /// 4-level paging (48-bit linear addresses).
    Level4,
    /// 5-level paging (57-bit linear addresses).
    Level5,
}

impl PagingMode {
    /// Number of paging-structure levels walked (0 without paging).
    pub fn levels(self) -> u8 {
        match self {
            PagingMode::None => 0,
            PagingMode::Bits32 => 2,
            PagingMode::Pae => 3,
            PagingMode::Level4 => 4,
            PagingMode::Level5 => 5,
        }
    }

    /// Width of a linear address in this mode, in bits.
    pub fn linear_bits(self) -> u32 {
        match self {
            PagingMode::None | PagingMode::Bits32 | PagingMode::Pae => 32,
            PagingMode::Level4 => 48,
            PagingMode::Level5 => 57,
        }
    }

    /// Whether paging-structure entries are 8 bytes (PAE, 4-level, 5-level).
    pub fn wide_entries(self) -> bool {
        matches!(
            self,
            PagingMode::Pae | PagingMode::Level4 | PagingMode::Level5
        )
    }
}

/// CPU features that change how entries are decoded (CPUID-reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CpuFeatures {
    /// 1-GByte pages (CPUID.80000001H:EDX.Page1GB). Without it, PS in a
    /// 4-level PDPTE is a reserved bit.
    pub gbpages: bool,
    /// PSE-36 (CPUID.01H:EDX.PSE-36): 4-MByte pages of 32-bit paging may map
    /// physical addresses above 4 GiB (up to 40 bits).
    pub pse36: bool,
}

impl Default for CpuFeatures {
    fn default() -> Self {
        CpuFeatures {
            gbpages: true,
            pse36: true,
        }
    }
}

/// Everything the walker needs to know about an address space, from raw
/// register values.
///
/// Build it with [`PagingContext::new`] and the `with_*` setters; the mode is
/// derived from the registers (see [`PagingContext::mode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PagingContext {
    /// CR0 (PG and WP matter).
    pub cr0: u64,
    /// CR3 (the root table address; PCID and flag bits are ignored).
    pub cr3: u64,
    /// CR4 (PSE, PAE, LA57, SMEP, SMAP, PKE, PKS matter).
    pub cr4: u64,
    /// IA32_EFER (LMA and NXE matter).
    pub efer: u64,
    /// RFLAGS (AC matters, for SMAP).
    pub rflags: u64,
    /// PKRU: access-disable / write-disable bits per key for user pages.
    pub pkru: u32,
    /// IA32_PKRS: the same for supervisor pages (with CR4.PKS).
    pub pkrs: u32,
    /// MAXPHYADDR (CPUID.80000008H:EAX[7:0]), 32 to 52.
    pub maxphyaddr: u8,
    /// The PAE PDPTE registers, when known (KVM_GET_SREGS2 reports them). The
    /// CPU loads them when CR3 is written; `None` reads them from memory at
    /// CR3, which is what the CPU would have loaded if the guest has not
    /// changed them since.
    pub pdptes: Option<[u64; 4]>,
    /// CPUID features that change entry decoding.
    pub features: CpuFeatures,
}

impl PagingContext {
    /// A context from the control registers and EFER. RFLAGS, PKRU and PKRS
    /// start at zero, MAXPHYADDR at 52 and all optional CPU features on.
    /// MAXPHYADDR is clamped to 32..=52.
    pub fn new(cr0: u64, cr3: u64, cr4: u64, efer: u64) -> Self {
        PagingContext {
            cr0,
            cr3,
            cr4,
            efer,
            rflags: 0,
            pkru: 0,
            pkrs: 0,
            maxphyaddr: 52,
            pdptes: None,
            features: CpuFeatures::default(),
        }
    }

    /// Set MAXPHYADDR (clamped to the architectural range 32..=52).
    pub fn with_maxphyaddr(mut self, maxphyaddr: u8) -> Self {
        self.maxphyaddr = maxphyaddr.clamp(32, 52);
        self
    }

    /// Set RFLAGS (only AC is used).
    pub fn with_rflags(mut self, rflags: u64) -> Self {
        self.rflags = rflags;
        self
    }

    /// Set PKRU.
    pub fn with_pkru(mut self, pkru: u32) -> Self {
        self.pkru = pkru;
        self
    }

    /// Set IA32_PKRS.
    pub fn with_pkrs(mut self, pkrs: u32) -> Self {
        self.pkrs = pkrs;
        self
    }

    /// Set the PAE PDPTE registers.
    pub fn with_pdptes(mut self, pdptes: [u64; 4]) -> Self {
        self.pdptes = Some(pdptes);
        self
    }

    /// Set the CPU features.
    pub fn with_features(mut self, features: CpuFeatures) -> Self {
        self.features = features;
        self
    }

    /// The paging mode (SDM table 4-1). Long mode is taken from EFER.LMA,
    /// which the CPU sets when EFER.LME and CR0.PG are both set.
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::None
        } else if self.cr4 & CR4_PAE == 0 {
            PagingMode::Bits32
        } else if self.efer & EFER_LMA == 0 {
            PagingMode::Pae
        } else if self.cr4 & CR4_LA57 != 0 {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        }
    }

    /// MAXPHYADDR as used for decoding, clamped to 32..=52.
    pub fn phys_bits(&self) -> u32 {
        u32::from(self.maxphyaddr.clamp(32, 52))
    }

    /// CR0.WP.
    pub fn wp(&self) -> bool {
        self.cr0 & CR0_WP != 0
    }

    /// EFER.NXE, as it matters for the mode: 32-bit paging has no XD bit.
    pub fn nxe(&self) -> bool {
        self.efer & EFER_NXE != 0 && self.mode().wide_entries()
    }

    /// CR4.SMEP.
    pub fn smep(&self) -> bool {
        self.cr4 & CR4_SMEP != 0
    }

    /// CR4.SMAP.
    pub fn smap(&self) -> bool {
        self.cr4 & CR4_SMAP != 0
    }

    /// RFLAGS.AC.
    pub fn ac(&self) -> bool {
        self.rflags & RFLAGS_AC != 0
    }

    /// Protection keys for user pages: CR4.PKE in 4- or 5-level paging.
    pub fn pke(&self) -> bool {
        self.cr4 & CR4_PKE != 0 && matches!(self.mode(), PagingMode::Level4 | PagingMode::Level5)
    }

    /// Protection keys for supervisor pages: CR4.PKS in 4- or 5-level paging.
    pub fn pks(&self) -> bool {
        self.cr4 & CR4_PKS != 0 && matches!(self.mode(), PagingMode::Level4 | PagingMode::Level5)
    }

    /// Guest-physical address of the root table (PML5, PML4, PDPT or PD).
    pub fn root(&self) -> u64 {
        match self.mode() {
            PagingMode::None => 0,
            PagingMode::Bits32 => self.cr3 & 0xffff_f000,
            PagingMode::Pae => self.cr3 & 0xffff_ffe0,
            PagingMode::Level4 | PagingMode::Level5 => {
                self.cr3 & ((1u64 << self.phys_bits()) - 1) & !0xfff
            }
        }
    }
}
