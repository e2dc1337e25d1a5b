// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! KVM_TRANSLATE per page: how Firecracker and Cloud Hypervisor translate a
//! guest-virtual address (one vCPU ioctl per page, no permission check, no
//! pin), for comparison.
//!
//! A VM with the bench's guest memory as its only slot and one vCPU in
//! 4-level long mode (CPL 0, flat segments) whose CR3 is an image's. KVM is
//! a dev-dependency of guest-mm for this bench only; guest-mm itself never
//! depends on KVM.

use guest_mm::paging::context::EFER_LME;
use guest_mm::paging::PagingContext;
use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::images::Mem;

/// Why the KVM row does not run.
#[derive(Debug)]
pub enum KvmError {
    /// /dev/kvm does not exist: the bench prints SKIPPED.
    Absent(String),
    /// /dev/kvm exists but the VM could not be set up: a real failure.
    Failed(String),
}

/// A one-vCPU VM over the bench's guest memory.
pub struct KvmTranslate {
    // Field order is drop order: the vCPU and VM go before the memory
    // they map.
    vcpu: VcpuFd,
    _vm: VmFd,
    _kvm: Kvm,
    _mem: Mem,
}

impl KvmTranslate {
    /// A VM with `mem` as slot 0 (at its guest-physical addresses) and a
    /// vCPU in the 4-level paging mode of `ctx`, with the CPUID KVM supports.
    pub fn new(mem: &Mem, ctx: &PagingContext) -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(|e| {
            if std::path::Path::new("/dev/kvm").exists() {
                KvmError::Failed(format!("opening /dev/kvm: {e}"))
            } else {
                KvmError::Absent(format!("/dev/kvm is absent ({e})"))
            }
        })?;
        let fail = |what: &str, e: kvm_ioctls::Error| KvmError::Failed(format!("{what}: {e}"));
        let vm = kvm.create_vm().map_err(|e| fail("KVM_CREATE_VM", e))?;
        let mem = mem.clone();
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| KvmError::Failed(format!("host address of a region: {e}")))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mmap of `mem`, a clone of which
            // (sharing the mappings) is kept in the returned value and
            // dropped after the VM fd (field order).
            unsafe { vm.set_user_memory_region(r) }
                .map_err(|e| fail("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        let vcpu = vm.create_vcpu(0).map_err(|e| fail("KVM_CREATE_VCPU", e))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| fail("KVM_GET_SUPPORTED_CPUID", e))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(|e| fail("KVM_SET_CPUID2", e))?;

        let mut sregs = vcpu.get_sregs().map_err(|e| fail("KVM_GET_SREGS", e))?;
        // A 64-bit code segment (L=1, D=0) and flat data segments, DPL 0.
        let cs = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x08,
            type_: 0xb, // execute/read, accessed
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let ds = kvm_segment {
            selector: 0x10,
            type_: 0x3, // read/write, accessed
            db: 1,
            l: 0,
            ..cs
        };
        sregs.cs = cs;
        for seg in [
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.fs,
            &mut sregs.gs,
            &mut sregs.ss,
        ] {
            *seg = ds;
        }
        sregs.cr0 = ctx.cr0 | 1; // PE: paging needs protected mode
        sregs.cr3 = ctx.cr3;
        sregs.cr4 = ctx.cr4;
        sregs.efer = ctx.efer | EFER_LME;
        vcpu.set_sregs(&sregs)
            .map_err(|e| fail("KVM_SET_SREGS", e))?;
        Ok(KvmTranslate {
            vcpu,
            _vm: vm,
            _kvm: kvm,
            _mem: mem,
        })
    }

    /// KVM_TRANSLATE of `gva`: the guest-physical address, or `None` when
    /// KVM reports no valid translation.
    pub fn translate(&self, gva: u64) -> Result<Option<u64>, String> {
        let t = self
            .vcpu
            .translate_gva(gva)
            .map_err(|e| format!("KVM_TRANSLATE {gva:#x}: {e}"))?;
        Ok((t.valid != 0).then_some(t.physical_address))
    }
}
