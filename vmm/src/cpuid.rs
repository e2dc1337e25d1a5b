// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The CPUID each vCPU sees: what KVM supports (KVM_GET_SUPPORTED_CPUID),
//! with the vCPU's APIC ID, the vCPU count and the hypervisor bit filled in.

use guest_mm::paging::CpuFeatures;
use kvm_bindings::CpuId;

/// CPUID.1:ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: more than one logical processor per package.
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// `supported` adjusted for vCPU `id` of `count`.
pub fn for_vcpu(supported: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // EBX[31:24] initial APIC ID, EBX[23:16] logical processors.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            // Extended topology: EDX is the x2APIC ID on every subleaf.
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    cpuid
}

/// What the guest's paging may use, per `cpuid` (as given to the vCPU):
/// MAXPHYADDR (CPUID.80000008H:EAX[7:0], 36 when absent) and the optional
/// page sizes, for guest-mm's walker.
pub fn paging_features(cpuid: &CpuId) -> (u8, CpuFeatures) {
    let leaf = |f: u32| {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == f && e.index == 0)
    };
    let maxphyaddr = match leaf(0x8000_0008).map(|e| (e.eax & 0xff) as u8) {
        Some(m) if m != 0 => m,
        _ => 36,
    };
    let features = CpuFeatures {
        gbpages: leaf(0x8000_0001).is_some_and(|e| e.edx & (1 << 26) != 0),
        pse36: leaf(1).is_some_and(|e| e.edx & (1 << 17) != 0),
    };
    (maxphyaddr, features)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn sets_apic_id_count_and_hypervisor_bit() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff00_0800,
                edx: LEAF1_EDX_HTT,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                edx: 7,
                ..Default::default()
            },
        ];
        let supported = CpuId::from_entries(&entries).unwrap();
        let c = for_vcpu(&supported, 3, 4);
        let l1 = c.as_slice()[0];
        assert_eq!(l1.ebx, 0x0304_0800);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(c.as_slice()[1].edx, 3);
        let one = for_vcpu(&supported, 0, 1);
        let (maxphyaddr, features) = paging_features(&one);
        assert_eq!(maxphyaddr, 36);
        assert!(!features.gbpages);
        assert_eq!(one.as_slice()[0].edx & LEAF1_EDX_HTT, 0);
    }
}
