// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A minimal KVM test VM for the differential tests: one vCPU, one RAM slot
//! backed by a `GuestMemoryMmap` (so the walker reads exactly the memory KVM
//! sees), the CPUID KVM supports with a chosen MAXPHYADDR, and helpers to put
//! the vCPU in a paging mode and ask KVM_TRANSLATE.

use std::fmt;

use guest_mm::paging::{context, CpuFeatures, PagingContext, PagingMode};
use kvm_bindings::{kvm_segment, kvm_sregs, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Why a test VM could not be made.
#[derive(Debug)]
pub enum VmError {
    /// /dev/kvm is missing or cannot be opened: tests skip.
    NoKvm(String),
    /// Anything else: tests fail.
    Setup(String),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::NoKvm(s) => write!(f, "no usable /dev/kvm: {s}"),
            VmError::Setup(s) => write!(f, "KVM setup failed: {s}"),
        }
    }
}

/// What the CPU (as KVM exposes it) supports, from KVM_GET_SUPPORTED_CPUID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostPaging {
    /// MAXPHYADDR the host reports.
    pub maxphyaddr: u8,
    /// EFER.NXE allowed.
    pub nx: bool,
    /// 1-GByte pages.
    pub gbpages: bool,
    /// PSE-36.
    pub pse36: bool,
    /// CR4.SMEP.
    pub smep: bool,
    /// CR4.SMAP.
    pub smap: bool,
    /// CR4.PKE (PKU).
    pub pku: bool,
    /// CR4.PKS.
    pub pks: bool,
    /// CR4.LA57 (5-level paging).
    pub la57: bool,
}

fn leaf(cpuid: &CpuId, function: u32, index: u32) -> Option<kvm_bindings::kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
        .copied()
}

/// Whether the guest CPUID vendor `kvm` supports (what
/// KVM_GET_SUPPORTED_CPUID reports, which the test VMs use unchanged) is AMD
/// or Hygon.
pub fn amd_vendor(kvm: &Kvm) -> Result<bool, kvm_ioctls::Error> {
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    let Some(l0) = leaf(&cpuid, 0, 0) else {
        return Ok(false);
    };
    let mut vendor = Vec::new();
    for r in [l0.ebx, l0.edx, l0.ecx] {
        vendor.extend_from_slice(&r.to_le_bytes());
    }
    Ok(vendor == b"AuthenticAMD" || vendor == b"HygonGenuine")
}

impl HostPaging {
    fn from_cpuid(cpuid: &CpuId) -> Self {
        let l1 = leaf(cpuid, 1, 0).unwrap_or_default();
        let l7 = leaf(cpuid, 7, 0).unwrap_or_default();
        let ext1 = leaf(cpuid, 0x8000_0001, 0).unwrap_or_default();
        let ext8 = leaf(cpuid, 0x8000_0008, 0).unwrap_or_default();
        HostPaging {
            maxphyaddr: match (ext8.eax & 0xff) as u8 {
                0 => 36,
                m => m,
            },
            nx: ext1.edx & (1 << 20) != 0,
            gbpages: ext1.edx & (1 << 26) != 0,
            pse36: l1.edx & (1 << 17) != 0,
            smep: l7.ebx & (1 << 7) != 0,
            smap: l7.ebx & (1 << 20) != 0,
            pku: l7.ecx & (1 << 3) != 0,
            pks: l7.ecx & (1 << 31) != 0,
            la57: l7.ecx & (1 << 16) != 0,
        }
    }

    /// The walker's CPU features for a guest with this CPUID.
    pub fn features(&self) -> CpuFeatures {
        CpuFeatures {
            gbpages: self.gbpages,
            pse36: self.pse36,
        }
    }
}

/// A VM with one vCPU and `mem` registered as slot 0 at guest-physical 0.
pub struct TestVm {
    /// The VM.
    pub vm: VmFd,
    /// Its vCPU.
    pub vcpu: VcpuFd,
    /// Guest RAM, shared with KVM.
    pub mem: GuestMemoryMmap,
    /// What the guest's CPUID says (MAXPHYADDR as chosen).
    pub cpu: HostPaging,
}

/// Open /dev/kvm, or say why not.
pub fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| VmError::NoKvm(format!("opening /dev/kvm: {e}")))
}

impl TestVm {
    /// A VM with `mem_bytes` of RAM at guest-physical 0 and a guest CPUID
    /// whose MAXPHYADDR is `maxphyaddr` (or the host's when `None`).
    pub fn new(mem_bytes: usize, maxphyaddr: Option<u8>) -> Result<Self, VmError> {
        let kvm = open_kvm()?;
        let setup = |what: &str, e: kvm_ioctls::Error| VmError::Setup(format!("{what}: {e}"));
        let vm = kvm.create_vm().map_err(|e| setup("KVM_CREATE_VM", e))?;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_bytes)])
            .map_err(|e| VmError::Setup(format!("guest memory: {e}")))?;
        // The returned TestVm keeps `mem` as long as the VM fd (fields drop
        // in declaration order: vm and vcpu before mem).
        vmm::memory::register_slots(&vm, &mem)
            .map_err(|e| VmError::Setup(format!("memory slots: {e}")))?;
        let vcpu = vm.create_vcpu(0).map_err(|e| setup("KVM_CREATE_VCPU", e))?;
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| setup("KVM_GET_SUPPORTED_CPUID", e))?;
        let host = HostPaging::from_cpuid(&cpuid);
        let chosen = maxphyaddr.unwrap_or(host.maxphyaddr).min(host.maxphyaddr);
        for e in cpuid.as_mut_slice() {
            if e.function == 0x8000_0008 {
                e.eax = (e.eax & !0xff) | u32::from(chosen);
            }
        }
        vcpu.set_cpuid2(&cpuid)
            .map_err(|e| setup("KVM_SET_CPUID2", e))?;
        let cpu = HostPaging {
            maxphyaddr: chosen,
            ..host
        };
        Ok(TestVm { vm, vcpu, mem, cpu })
    }

    /// Put the vCPU in the paging mode of `ctx` (CR0, CR3, CR4, EFER), with
    /// flat segments suited to the mode at CPL 0. In PAE mode KVM loads the
    /// PDPTEs from memory here, so write the tables first.
    pub fn set_paging(&self, ctx: &PagingContext) -> Result<(), VmError> {
        let mut sregs: kvm_sregs = self
            .vcpu
            .get_sregs()
            .map_err(|e| VmError::Setup(format!("KVM_GET_SREGS: {e}")))?;
        let long = ctx.mode() == PagingMode::Level4 || ctx.mode() == PagingMode::Level5;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x8,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: u8::from(!long),
            s: 1,
            l: u8::from(long),
            g: 1,
            ..Default::default()
        };
        set_flat_segments(&mut sregs, code, 0x10);
        // Protected mode is required for paging.
        sregs.cr0 = ctx.cr0 | 1;
        sregs.cr3 = ctx.cr3;
        sregs.cr4 = ctx.cr4;
        sregs.efer = ctx.efer;
        if ctx.efer & context::EFER_LMA != 0 {
            sregs.efer |= context::EFER_LME;
        }
        self.vcpu
            .set_sregs(&sregs)
            .map_err(|e| VmError::Setup(format!("KVM_SET_SREGS {ctx:x?}: {e}")))
    }

    /// KVM_TRANSLATE: the guest-physical address, or `None` when KVM says
    /// the translation is not valid.
    pub fn translate(&self, gva: u64) -> Result<Option<u64>, VmError> {
        let tr = self
            .vcpu
            .translate_gva(gva)
            .map_err(|e| VmError::Setup(format!("KVM_TRANSLATE {gva:#x}: {e}")))?;
        Ok(if tr.valid != 0 {
            Some(tr.physical_address)
        } else {
            None
        })
    }
}

/// Make a test VM, or print why the test is skipped and return `None` when
/// /dev/kvm is absent. Any other failure panics: the test must not pass
/// without having run.
pub fn vm_or_skip(test: &str, mem_bytes: usize, maxphyaddr: Option<u8>) -> Option<TestVm> {
    match TestVm::new(mem_bytes, maxphyaddr) {
        Ok(vm) => Some(vm),
        Err(VmError::NoKvm(why)) if !std::path::Path::new("/dev/kvm").exists() => {
            eprintln!("SKIPPED {test}: /dev/kvm is absent ({why})");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Load `code` into CS and a flat read/write data segment with selector
/// `data_selector` (same base, limit, DPL and granularity as `code`) into SS,
/// DS, ES, FS and GS.
pub fn set_flat_segments(sregs: &mut kvm_sregs, code: kvm_segment, data_selector: u16) {
    let data = kvm_segment {
        selector: data_selector,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    sregs.cs = code;
    sregs.ss = data;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
}
