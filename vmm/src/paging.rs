// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A vCPU's paging context, from KVM's register structures.
//!
//! guest-mm never depends on KVM (DESIGN 4.1): this is where `kvm_sregs`
//! become a [`PagingContext`].

use guest_mm::paging::context::EFER_LMA;
use guest_mm::paging::{Access, AccessKind, CpuFeatures, PagingContext, Privilege};
use kvm_bindings::{kvm_regs, kvm_sregs, kvm_sregs2, KVM_SREGS2_FLAGS_PDPTRS_VALID};

/// The registers that are not in `kvm_sregs` but matter to paging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraPagingRegs {
    /// RFLAGS (for AC), from `kvm_regs`.
    pub rflags: u64,
    /// PKRU, from the XSAVE area (0 where the CPU has no PKU).
    pub pkru: u32,
    /// IA32_PKRS MSR (0 where the CPU has no PKS).
    pub pkrs: u32,
}

/// The paging context of a vCPU whose special registers are `sregs`, with
/// the guest's MAXPHYADDR and CPU features (from the CPUID given to KVM).
pub fn context_from_sregs(
    sregs: &kvm_sregs,
    extra: ExtraPagingRegs,
    maxphyaddr: u8,
    features: CpuFeatures,
) -> PagingContext {
    PagingContext::new(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer)
        .with_rflags(extra.rflags)
        .with_pkru(extra.pkru)
        .with_pkrs(extra.pkrs)
        .with_maxphyaddr(maxphyaddr)
        .with_features(features)
}

/// As [`context_from_sregs`], from `kvm_sregs2`, which also carries the PAE
/// PDPTE registers when KVM says they are valid.
pub fn context_from_sregs2(
    sregs: &kvm_sregs2,
    extra: ExtraPagingRegs,
    maxphyaddr: u8,
    features: CpuFeatures,
) -> PagingContext {
    let ctx = PagingContext::new(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer)
        .with_rflags(extra.rflags)
        .with_pkru(extra.pkru)
        .with_pkrs(extra.pkrs)
        .with_maxphyaddr(maxphyaddr)
        .with_features(features);
    if sregs.flags & u64::from(KVM_SREGS2_FLAGS_PDPTRS_VALID) != 0 {
        ctx.with_pdptes(sregs.pdptrs)
    } else {
        ctx
    }
}

/// How a vCPU fetches the instruction at its RIP: the linear address (RIP,
/// plus the CS base outside 64-bit code), the paging context, and the
/// fetch access (user when `user`).
pub fn instruction_fetch(
    sregs: &kvm_sregs,
    regs: &kvm_regs,
    maxphyaddr: u8,
    features: CpuFeatures,
    user: bool,
) -> (u64, PagingContext, Access) {
    let long = sregs.efer & EFER_LMA != 0 && sregs.cs.l == 1;
    let linear = if long {
        regs.rip
    } else {
        sregs.cs.base.wrapping_add(regs.rip) & 0xffff_ffff
    };
    let extra = ExtraPagingRegs {
        rflags: regs.rflags,
        ..Default::default()
    };
    let ctx = context_from_sregs(sregs, extra, maxphyaddr, features);
    let privilege = if user {
        Privilege::User
    } else {
        Privilege::Supervisor
    };
    (linear, ctx, Access::new(AccessKind::Fetch, privilege))
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_mm::paging::PagingMode;

    #[test]
    fn long_mode_sregs_give_a_4_level_context() {
        let sregs = kvm_sregs {
            cr0: 0x8000_0011,
            cr3: 0x1000,
            cr4: 0x20,
            efer: 0x500,
            ..Default::default()
        };
        let ctx = context_from_sregs(
            &sregs,
            ExtraPagingRegs::default(),
            40,
            CpuFeatures::default(),
        );
        assert_eq!(ctx.mode(), PagingMode::Level4);
        assert_eq!(ctx.root(), 0x1000);
        assert_eq!(ctx.maxphyaddr, 40);
    }

    #[test]
    fn sregs2_pdptrs_are_used_only_when_valid() {
        let mut sregs = kvm_sregs2 {
            cr0: 0x8000_0011,
            cr3: 0x2000,
            cr4: 0x20,
            pdptrs: [1, 2, 3, 4],
            ..Default::default()
        };
        let ctx = context_from_sregs2(
            &sregs,
            ExtraPagingRegs::default(),
            36,
            CpuFeatures::default(),
        );
        assert_eq!(ctx.mode(), PagingMode::Pae);
        assert_eq!(ctx.pdptes, None);
        sregs.flags = u64::from(KVM_SREGS2_FLAGS_PDPTRS_VALID);
        let ctx = context_from_sregs2(
            &sregs,
            ExtraPagingRegs::default(),
            36,
            CpuFeatures::default(),
        );
        assert_eq!(ctx.pdptes, Some([1, 2, 3, 4]));
    }
}
