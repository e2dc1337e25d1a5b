// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Differential test: the virtio-iommu's page-table translation
//! (`devices::virtio::iommu`, a domain attached with ATTACH_TABLE) against
//! guest-mm's walker and KVM_TRANSLATE.
//!
//! For random adversarial page-table images (`integration_tests::ptgen`:
//! 4-level with KVM, 5-level walker-only since this KVM has no LA57), the
//! image's root is attached to domain 1 of endpoint 0 by a real
//! ATTACH_TABLE request, encoded byte by byte from docs/guest-va-dma.md and
//! run through `IommuHandle::execute`. Then, for every address of interest
//! (ptgen's addresses: paths through the image, page boundaries, random and
//! non-canonical ones; plus one address in every leaf the image maps, up to
//! a cap), for reads and writes, with and without the `PRIV` table flag,
//! and with the image's WP/NXE with and without SMAP:
//!
//! * `Endpoint::translate` and `Endpoint::pin` (one byte) must equal
//!   `guest_mm::paging::translate` with the context the protocol document
//!   describes (built here from the document, not by the device's code:
//!   CR0.PG|PE (+WP), CR4.PAE (+LA57, +SMAP), EFER.LME|LMA (+NXE), the VM's
//!   MAXPHYADDR, 1-GByte pages) and a user access (supervisor with `PRIV`):
//!   the same guest-physical address, or a fault at the same address with
//!   the same #PF error code (#GP: none). The one classified difference is
//!   a translation to a frame outside RAM ([`DeviceClass::NoRamBehind`]).
//! * KVM_TRANSLATE on a vCPU loaded with the same CR3/CR0/CR4/EFER must
//!   agree with the walker's supervisor read (the only access
//!   KVM_TRANSLATE models), except for the [`KvmClass`] differences, each
//!   recognised only in its exact circumstances and citing its SDM rule;
//!   the other accesses must be consistent with KVM's supervisor-read view
//!   ([`ViewClass`]).
//!
//! A mutation check then attaches each image with one table flag flipped
//! (WP, NXE, SMAP, PRIV) and compares the device against the walker with
//! the unflipped context: every flip must be detected, so a device that
//! ignored a table flag would fail this test.
//!
//! Run: `cargo test --release -p integration-tests --test
//! iommu_vs_walker_vs_kvm -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use devices::virtio::iommu::{DmaError, Endpoint, FaultReason as DmaReason, Iommu, IommuHandle};
use guest_mm::gup::{GuestMemory, GupError, GupFlags};
use guest_mm::paging::context::{
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_SMAP, EFER_LMA, EFER_LME, EFER_NXE,
};
use guest_mm::paging::{
    translate, Access, AccessKind, CpuFeatures, ErrorCode, Fault, FaultKind, FaultReason, PageSize,
    PagingContext, Privilege, Translation,
};
use integration_tests::iommu_rig::{self, GupRam};
use integration_tests::kvm::{amd_vendor, open_kvm, vm_or_skip, TestVm};
use integration_tests::ptgen::{generate, GenConfig, GenMode, Image, Rng};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::paging::{context_from_sregs, ExtraPagingRegs};

/// Guest MAXPHYADDRs of the 4-level runs (one VM each, clamped to the
/// host's).
const MAXPHYADDRS_4: [u8; 4] = [36, 40, 44, 48];
/// MAXPHYADDRs of the 5-level (walker-only) runs.
const MAXPHYADDRS_5: [u8; 3] = [40, 46, 52];
/// Images per MAXPHYADDR; half with EFER.NXE.
const IMAGES: usize = 64;
/// Images per MAXPHYADDR that also get the mutation check.
const MUTATION_IMAGES: usize = 6;
/// ptgen's addresses per image.
const GEN_ADDRESSES: usize = 320;
/// At most this many addresses in mapped leaves per image.
const MAPPED_ADDRESSES: usize = 2048;
/// Tables read at most per image when looking for its leaves (loops and
/// shared tables make paths multiply).
const MAX_TABLE_VISITS: usize = 400;
/// Paging structures per image.
const MAX_TABLES: usize = 48;
/// Guest RAM. The tables live in its first [`TABLE_AREA`] bytes, which is
/// also what ptgen is told RAM is, so about half of its leaves point into
/// the rest of RAM and half outside it.
const RAM_BYTES: usize = 8 << 20;
/// The page-table area.
const TABLE_AREA: u64 = 1 << 20;
/// The endpoint and domain used.
const ENDPOINT: u32 = 0;
const DOMAIN: u32 = 1;
/// Mismatches printed in full.
const SHOW: usize = 8;

/// ATTACH_TABLE `table_flags`, as docs/guest-va-dma.md numbers them (not
/// the device's constants: the test checks the device against the document).
const TF_WP: u64 = 1 << 0;
const TF_NXE: u64 = 1 << 1;
const TF_SMAP: u64 = 1 << 2;
const TF_PRIV: u64 = 1 << 3;

/// How the device's answer compared with the walker's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DeviceClass {
    /// Same guest-physical address.
    Translated,
    /// Both fault at the address with the same #PF error code (or both #GP).
    Faulted,
    /// The walk succeeds but the guest-physical address lies in no RAM
    /// region: the walker (like the CPU, SDM vol. 3A 4.5, which translates
    /// to any physical address below MAXPHYADDR) returns it; the device
    /// cannot do DMA there and answers a pin error, not a translation
    /// fault (docs/guest-va-dma.md: "the rest (no RAM behind the frame) pin
    /// errors"). Recognised only when the walker's gpa is at or above the
    /// end of RAM.
    NoRamBehind,
    /// A one-byte pin at the last byte of the address space: a GUP range is
    /// `[addr, addr + len)` with a u64 end (DESIGN 4.4: Overflow when the
    /// range wraps), and this one would end at 2^64, so `Endpoint::pin`
    /// refuses it with Overflow. No DMA buffer a virtio driver can describe
    /// ends there (a descriptor's `addr + len` is a u64 too). Recognised
    /// only for `pin` of 0xffff_ffff_ffff_ffff answered with Overflow.
    RangeEndsAt2Pow64,
    Mismatch,
}

/// A difference between KVM_TRANSLATE and the walker's supervisor read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KvmClass {
    BothValid,
    BothInvalid,
    /// SDM vol. 3A 3.3.7.1 and 4.5: a linear address whose bits 63:47 are
    /// not all equal is not canonical; an access raises #GP before any
    /// entry is read. KVM_TRANSLATE does no canonical check. Recognised
    /// only when the walker gives #GP NonCanonical and its translation of
    /// the sign-extended address is exactly KVM's answer.
    NonCanonicalTranslatedByKvm,
    /// SDM vol. 3A table 4-16 (PDPTE that maps a 1-GByte page): the IOMMU
    /// supports 1-GByte pages (docs/guest-va-dma.md), this vCPU does not
    /// (CPUID.80000001H:EDX.Page1GB = 0), and for it PS in a PDPTE is
    /// reserved (SDM 4.5, table 4-17 note). Recognised only when the
    /// walker's translation is a 1G leaf, KVM's is not valid, and the
    /// walker with the vCPU's features reports a reserved-bit #PF at level 3.
    OneGigLeafNotOnVcpu,
    /// SDM vol. 3A table 4-15: PML4E bit 8 is ignored; KVM with an AMD
    /// guest vendor applies AMD64 APM vol. 2 5.3.3 (bits 8:7 of a PML4E
    /// must be zero) and reports a reserved bit. Recognised only for an
    /// AMD-vendor guest CPUID, when the walker translates and the walk's
    /// PML4E (or PML5E) has bit 8 set.
    AmdPml4eBit8Reserved,
    Mismatch,
}

/// How a user access or a write (which KVM_TRANSLATE does not model)
/// relates to KVM's supervisor-read answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ViewClass {
    /// The access translates to the gpa KVM gives.
    SameGpa,
    /// The access faults and KVM gives no translation.
    BothRefuse,
    /// KVM translates (so every entry is present with no reserved bit) but
    /// the access is refused by an access right: SDM vol. 3A 4.6 (R/W with
    /// CR0.WP, U/S, SMAP), a #PF with P = 1 and RSVD = 0 (SDM 4.7).
    AccessRightBeyondSupervisorRead,
    /// The access translates but KVM does not: the supervisor read itself
    /// is refused by an access right (SMAP on a user page, SDM 4.6.1) or
    /// is one of the classified [`KvmClass`] differences.
    SupervisorReadRefused,
    /// Non-canonical: #GP for every access, KVM translates (as
    /// [`KvmClass::NonCanonicalTranslatedByKvm`]).
    NonCanonical,
    Mismatch,
}

/// The device's answer for one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dev {
    Gpa(u64),
    Fault {
        address: u64,
        code: Option<u32>,
        write: bool,
        privileged: bool,
        mapping: bool,
    },
    NoRam,
    Other(DmaError),
}

fn dev(r: Result<u64, DmaError>) -> Dev {
    match r {
        Ok(g) => Dev::Gpa(g),
        Err(DmaError::Fault(f)) => Dev::Fault {
            address: f.address,
            code: f.error_code,
            write: f.write,
            privileged: f.privileged,
            mapping: f.reason == DmaReason::Mapping,
        },
        Err(DmaError::Pin(GupError::Fault { fault: None, .. })) => Dev::NoRam,
        Err(e) => Dev::Other(e),
    }
}

fn compare_device(
    d: &Dev,
    w: &Result<Translation, Fault>,
    va: u64,
    write: bool,
    privileged: bool,
    pin: bool,
) -> DeviceClass {
    match (d, w) {
        (Dev::Gpa(g), Ok(t)) if *g == t.gpa => DeviceClass::Translated,
        (
            Dev::Fault {
                address,
                code,
                write: fw,
                privileged: fp,
                mapping: true,
            },
            Err(f),
        ) if *address == va
            && *code == f.error_code().map(|c| c.0)
            && *fw == write
            && *fp == privileged =>
        {
            DeviceClass::Faulted
        }
        (Dev::NoRam, Ok(t)) if t.gpa >= RAM_BYTES as u64 => DeviceClass::NoRamBehind,
        (Dev::Other(DmaError::Pin(GupError::Overflow)), _) if pin && va == u64::MAX => {
            DeviceClass::RangeEndsAt2Pow64
        }
        _ => DeviceClass::Mismatch,
    }
}

/// The paging context docs/guest-va-dma.md says an ATTACH_TABLE with
/// `pgd`, `width` and `flags` walks with.
fn doc_context(pgd: u64, width: u32, flags: u64, maxphyaddr: u8) -> PagingContext {
    let cr0 = CR0_PG | 1 | if flags & TF_WP != 0 { CR0_WP } else { 0 };
    let mut cr4 = CR4_PAE;
    if width == 57 {
        cr4 |= CR4_LA57;
    }
    if flags & TF_SMAP != 0 {
        cr4 |= CR4_SMAP;
    }
    let efer = EFER_LME | EFER_LMA | if flags & TF_NXE != 0 { EFER_NXE } else { 0 };
    PagingContext::new(cr0, pgd, cr4, efer)
        .with_maxphyaddr(maxphyaddr)
        .with_features(CpuFeatures {
            gbpages: true,
            pse36: true,
        })
}

fn access(write: bool, privileged: bool) -> Access {
    Access::new(
        if write {
            AccessKind::Write
        } else {
            AccessKind::Read
        },
        if privileged {
            Privilege::Supervisor
        } else {
            Privilege::User
        },
    )
}

/// Runs an ATTACH_TABLE of `pgd` for [`ENDPOINT`] in [`DOMAIN`]; returns
/// the status.
fn attach_table(h: &IommuHandle, mem: &GuestMemory, pgd: u64, flags: u64, width: u32) -> u8 {
    let out = iommu_rig::attach_table(h, mem, DOMAIN, ENDPOINT, pgd, flags, width);
    assert_eq!(out.len(), 4, "ATTACH_TABLE: the device writes the tail");
    out[0]
}

/// The PML5E and PML4E a walk of `va` reads (naively decoded).
fn upper_entries(mem: &GuestMemory, ctx: &PagingContext, va: u64) -> Vec<u64> {
    let levels = ctx.mode().levels();
    let mut table = ctx.root();
    let mut out = Vec::new();
    for level in (4..=levels).rev() {
        let index = (va >> (12 + 9 * (u32::from(level) - 1))) & 511;
        let Ok(e) = mem.read_obj::<u64>(GuestAddress(table + index * 8)) else {
            break;
        };
        out.push(e);
        if e & 1 == 0 {
            break;
        }
        table = e & 0x000f_ffff_ffff_f000;
    }
    out
}

fn sign_extend(va: u64, bits: u32) -> u64 {
    let s = 64 - bits;
    (((va << s) as i64) >> s) as u64
}

/// One address in every leaf of the image reachable from `root` (naively
/// decoded: P, PS and the address bits; reserved bits are the walker's
/// business), at a random 4K page and offset of the leaf; at most `cap`,
/// chosen at random when there are more. Returns the addresses and the
/// number of leaves found.
fn mapped_addresses(
    mem: &GuestMemoryMmap,
    root: u64,
    levels: u8,
    rng: &mut Rng,
    cap: usize,
) -> (Vec<u64>, usize) {
    struct Walk<'a> {
        mem: &'a GuestMemoryMmap,
        visits: usize,
        leaves: Vec<(u64, u64)>,
    }
    fn visit(w: &mut Walk, table: u64, level: u8, prefix: u64) {
        if w.visits >= MAX_TABLE_VISITS {
            return;
        }
        w.visits += 1;
        let mut entries = [0u8; 4096];
        if w.mem.read_slice(&mut entries, GuestAddress(table)).is_err() {
            return;
        }
        let shift = 12 + 9 * (u32::from(level) - 1);
        for (i, e) in entries.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(e);
            let e = u64::from_le_bytes(b);
            if e & 1 == 0 {
                continue;
            }
            let va = prefix | (i as u64) << shift;
            let ps = e & 0x80 != 0;
            if level == 1 || (ps && level <= 3) {
                w.leaves.push((va, 1 << shift));
            } else if !ps {
                let next = e & 0x000f_ffff_ffff_f000;
                if next + 4096 <= RAM_BYTES as u64 {
                    visit(w, next, level - 1, va);
                }
            }
        }
    }
    let mut w = Walk {
        mem,
        visits: 0,
        leaves: Vec::new(),
    };
    visit(&mut w, root & 0x000f_ffff_ffff_f000, levels, 0);
    let mut leaves = w.leaves;
    leaves.sort_unstable();
    leaves.dedup();
    let found = leaves.len();
    // A random subset of at most `cap` leaves (partial Fisher-Yates).
    let take = found.min(cap);
    for i in 0..take {
        let j = i + rng.below((found - i) as u64) as usize;
        leaves.swap(i, j);
    }
    let bits = if levels == 5 { 57 } else { 48 };
    let out = leaves[..take]
        .iter()
        .map(|&(va, size)| {
            let page = rng.below(size / 4096) * 4096;
            let off = match rng.below(4) {
                0 => 0,
                1 => 4095,
                _ => rng.below(4096),
            };
            sign_extend(va + page + off, bits)
        })
        .collect();
    (out, found)
}

/// Counts over the whole run.
#[derive(Default)]
struct Stats {
    images: BTreeMap<&'static str, usize>,
    addresses: BTreeMap<&'static str, usize>,
    leaves_found: usize,
    leaves_compared: usize,
    device: BTreeMap<(&'static str, &'static str, DeviceClass), usize>,
    kvm: BTreeMap<KvmClass, usize>,
    view: BTreeMap<ViewClass, usize>,
    walker_sizes: BTreeMap<&'static str, usize>,
    walker_faults: BTreeMap<String, usize>,
    mutations: BTreeMap<&'static str, (usize, usize)>,
    kvm_skipped: BTreeSet<String>,
    mismatches: usize,
    shown: Vec<String>,
}

impl Stats {
    fn mismatch(&mut self, what: String) {
        self.mismatches += 1;
        if self.shown.len() < SHOW {
            self.shown.push(what);
        }
    }
}

/// The vCPU side of an image: the VM, and the context KVM actually took.
struct Vcpu<'a> {
    vm: &'a TestVm,
    amd: bool,
    /// Whether the vCPU's CPUID has SMAP (see [`with_smap`]).
    smap: bool,
}

/// This KVM leaves SMAP out of its supported CPUID (docs/testing.md) but
/// enforces it when the guest CPUID has it: give the vCPU the supported
/// CPUID plus SMAP (CPUID.07H:EBX[20]), with the VM's MAXPHYADDR as
/// `TestVm::new` set it. Returns whether KVM took it.
fn with_smap(vm: &TestVm) -> bool {
    let Ok(kvm) = open_kvm() else { return false };
    let Ok(mut cpuid) = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES) else {
        return false;
    };
    for e in cpuid.as_mut_slice() {
        if e.function == 7 && e.index == 0 {
            e.ebx |= 1 << 20;
        }
        if e.function == 0x8000_0008 {
            e.eax = (e.eax & !0xff) | u32::from(vm.cpu.maxphyaddr);
        }
    }
    vm.vcpu.set_cpuid2(&cpuid).is_ok()
}

impl Vcpu<'_> {
    /// Loads the registers of `ctx` and returns the context read back, or
    /// why KVM cannot compare with it.
    fn enter(&self, ctx: &PagingContext) -> Result<PagingContext, String> {
        if ctx.cr4 & CR4_SMAP != 0 && !self.smap {
            return Err("CR4.SMAP: the vCPU's CPUID has no SMAP".into());
        }
        self.vm.set_paging(ctx).map_err(|e| e.to_string())?;
        let sregs = self.vm.vcpu.get_sregs().expect("KVM_GET_SREGS");
        let regs = self.vm.vcpu.get_regs().expect("KVM_GET_REGS");
        let extra = ExtraPagingRegs {
            rflags: regs.rflags,
            ..Default::default()
        };
        let got = context_from_sregs(
            &sregs,
            extra,
            self.vm.cpu.maxphyaddr,
            self.vm.cpu.features(),
        );
        let same = got.mode() == ctx.mode()
            && got.root() == ctx.root()
            && got.wp() == ctx.wp()
            && got.nxe() == ctx.nxe()
            && got.smap() == ctx.smap()
            && !got.ac();
        if !same {
            return Err(format!(
                "KVM did not take the registers: asked {ctx:x?}, read back {got:x?}"
            ));
        }
        Ok(got)
    }
}

fn classify_kvm(
    mem: &GuestMemory,
    ctx: &PagingContext,
    vcpu_ctx: &PagingContext,
    amd: bool,
    va: u64,
    kvm: Option<u64>,
    w: &Result<Translation, Fault>,
) -> KvmClass {
    match (kvm, w) {
        (Some(k), Ok(t)) if k == t.gpa => KvmClass::BothValid,
        (None, Err(_)) => KvmClass::BothInvalid,
        (Some(k), Err(f))
            if f.kind == FaultKind::GeneralProtection && f.reason == FaultReason::NonCanonical =>
        {
            let canonical = sign_extend(va, ctx.mode().linear_bits());
            match translate(mem, ctx, canonical, Access::supervisor_read()) {
                Ok(t) if t.gpa == k => KvmClass::NonCanonicalTranslatedByKvm,
                _ => KvmClass::Mismatch,
            }
        }
        (None, Ok(t)) => {
            let on_vcpu = translate(mem, vcpu_ctx, va, Access::supervisor_read());
            let rsvd_l3 = matches!(on_vcpu, Err(f) if f.level == 3
                && f.reason == FaultReason::ReservedBit
                && f.error_code().is_some_and(|c| c.has(ErrorCode::RSVD)));
            if t.page_size == PageSize::Size1G && !vcpu_ctx.features.gbpages && rsvd_l3 {
                KvmClass::OneGigLeafNotOnVcpu
            } else if amd
                && upper_entries(mem, ctx, va)
                    .iter()
                    .any(|e| e & (1 << 8) != 0)
            {
                KvmClass::AmdPml4eBit8Reserved
            } else {
                KvmClass::Mismatch
            }
        }
        _ => KvmClass::Mismatch,
    }
}

fn classify_view(
    kvm: Option<u64>,
    w: &Result<Translation, Fault>,
    sup_read: &Result<Translation, Fault>,
    sup_read_class: KvmClass,
) -> ViewClass {
    match (kvm, w) {
        (Some(k), Ok(t)) if k == t.gpa => ViewClass::SameGpa,
        (None, Err(_)) => ViewClass::BothRefuse,
        (Some(_), Err(f)) if f.kind == FaultKind::GeneralProtection => {
            if sup_read_class == KvmClass::NonCanonicalTranslatedByKvm {
                ViewClass::NonCanonical
            } else {
                ViewClass::Mismatch
            }
        }
        (Some(k), Err(f)) => {
            let rights = f
                .error_code()
                .is_some_and(|c| c.has(ErrorCode::P) && !c.has(ErrorCode::RSVD));
            if rights && matches!(sup_read, Ok(t) if t.gpa == k) {
                ViewClass::AccessRightBeyondSupervisorRead
            } else {
                ViewClass::Mismatch
            }
        }
        (None, Ok(t)) => {
            let refused_by_right = matches!(sup_read, Err(f) if f.error_code()
                .is_some_and(|c| c.has(ErrorCode::P) && !c.has(ErrorCode::RSVD)));
            let classified = matches!(sup_read, Ok(s) if s.gpa == t.gpa)
                && matches!(
                    sup_read_class,
                    KvmClass::OneGigLeafNotOnVcpu | KvmClass::AmdPml4eBit8Reserved
                );
            if refused_by_right || classified {
                ViewClass::SupervisorReadRefused
            } else {
                ViewClass::Mismatch
            }
        }
        _ => ViewClass::Mismatch,
    }
}

fn size_name(s: PageSize) -> &'static str {
    match s {
        PageSize::Size4K => "4K",
        PageSize::Size2M => "2M",
        PageSize::Size4M => "4M",
        PageSize::Size1G => "1G",
    }
}

fn variant_name(write: bool, privileged: bool) -> &'static str {
    match (privileged, write) {
        (false, false) => "user read",
        (false, true) => "user write",
        (true, false) => "priv read",
        (true, true) => "priv write",
    }
}

/// The device's translate and one-byte pin of `va`.
fn device_answers(ram: &GupRam, ep: &Endpoint, va: u64, write: bool) -> (Dev, Dev) {
    let t = dev(ep.translate(&ram.gup, va, write));
    let mut pins = Vec::new();
    let p = ep
        .pin(&ram.gup, va, 1, write, GupFlags::NONE, None, &mut pins)
        .and_then(|()| {
            pins.first()
                .and_then(|p| p.iter_extents().next())
                .map(|e| e.gpa)
                .ok_or(DmaError::Pin(GupError::Again))
        });
    drop(pins);
    (t, dev(p))
}

struct ImageRun<'a> {
    ram: &'a GupRam,
    handle: &'a IommuHandle,
    ep: &'a Endpoint,
    vcpu: Option<&'a Vcpu<'a>>,
    gen: GenMode,
    maxphyaddr: u8,
    seed: u64,
}

impl ImageRun<'_> {
    fn width(&self) -> u32 {
        if self.gen == GenMode::Level5 {
            57
        } else {
            48
        }
    }

    fn attach(&self, pgd: u64, flags: u64) {
        let st = attach_table(self.handle, &self.ram.gmem, pgd, flags, self.width());
        assert_eq!(
            st, 0,
            "ATTACH_TABLE pgd {pgd:#x} flags {flags:#x}: status {st}"
        );
    }

    fn run(&self, image: &Image, addresses: &[u64], st: &mut Stats, mutate: bool) {
        let mode = self.gen.name();
        let mem = &self.ram.gmem;
        let mut base = 0;
        if image.cr0 & CR0_WP != 0 {
            base |= TF_WP;
        }
        if image.efer & EFER_NXE != 0 {
            base |= TF_NXE;
        }
        for fs in [base, base | TF_SMAP] {
            let ctx = doc_context(image.cr3, self.width(), fs, self.maxphyaddr);
            // KVM's answers for this CR0/CR4/EFER (supervisor reads).
            let kvm: Option<(PagingContext, Vec<Option<u64>>)> =
                self.vcpu.and_then(|v| match v.enter(&ctx) {
                    Ok(vctx) => {
                        let answers = addresses
                            .iter()
                            .map(|&va| v.vm.translate(va).expect("KVM_TRANSLATE"))
                            .collect();
                        Some((vctx, answers))
                    }
                    Err(why) => {
                        st.kvm_skipped.insert(format!("{mode}: {why}"));
                        None
                    }
                });
            let sup_reads: Vec<_> = addresses
                .iter()
                .map(|&va| translate(mem, &ctx, va, Access::supervisor_read()))
                .collect();
            let kvm_classes: Vec<KvmClass> = match &kvm {
                Some((vctx, answers)) => addresses
                    .iter()
                    .zip(answers)
                    .zip(&sup_reads)
                    .map(|((&va, &k), w)| {
                        classify_kvm(mem, &ctx, vctx, self.vcpu.is_some_and(|v| v.amd), va, k, w)
                    })
                    .collect(),
                None => Vec::new(),
            };
            for (i, c) in kvm_classes.iter().enumerate() {
                *st.kvm.entry(*c).or_default() += 1;
                if *c == KvmClass::Mismatch {
                    let va = addresses[i];
                    let k = kvm.as_ref().map(|(_, a)| a[i]);
                    st.mismatch(format!(
                        "  KVM vs walker (supervisor read), mode {mode}, MAXPHYADDR {}, seed \
                         {:#x}, flags {fs:#x}\n    address {va:#x}\n    KVM_TRANSLATE: \
                         {k:x?}\n    walker: {:x?}",
                        self.maxphyaddr, self.seed, sup_reads[i]
                    ));
                }
            }
            for privileged in [true, false] {
                let flags = fs | if privileged { TF_PRIV } else { 0 };
                self.attach(image.cr3, flags);
                for (i, &va) in addresses.iter().enumerate() {
                    for write in [false, true] {
                        let w = translate(mem, &ctx, va, access(write, privileged));
                        match &w {
                            Ok(t) => {
                                *st.walker_sizes.entry(size_name(t.page_size)).or_default() += 1
                            }
                            Err(f) => {
                                let kind = if f.is_page_fault() { "#PF" } else { "#GP" };
                                *st.walker_faults
                                    .entry(format!("{kind} {:?}", f.reason))
                                    .or_default() += 1;
                            }
                        }
                        let (t, p) = device_answers(self.ram, self.ep, va, write);
                        let var = variant_name(write, privileged);
                        for (what, d) in [("translate", t), ("pin", p)] {
                            let c = compare_device(&d, &w, va, write, privileged, what == "pin");
                            *st.device.entry((what, var, c)).or_default() += 1;
                            if c == DeviceClass::Mismatch {
                                st.mismatch(format!(
                                    "  device ({what}) vs walker, mode {mode}, MAXPHYADDR {}, \
                                     seed {:#x}, table_flags {flags:#x}, {var}\n    address \
                                     {va:#x}\n    device: {d:x?}\n    walker: {w:x?}",
                                    self.maxphyaddr, self.seed
                                ));
                            }
                        }
                        if let Some((_, answers)) = &kvm {
                            if privileged && !write {
                                continue; // that is the KVM comparison above
                            }
                            let v = classify_view(answers[i], &w, &sup_reads[i], kvm_classes[i]);
                            *st.view.entry(v).or_default() += 1;
                            if v == ViewClass::Mismatch {
                                st.mismatch(format!(
                                    "  KVM view vs walker ({var}), mode {mode}, MAXPHYADDR {}, \
                                     seed {:#x}, flags {flags:#x}\n    address {va:#x}\n    \
                                     KVM_TRANSLATE (supervisor read): {:x?}\n    walker \
                                     ({var}): {w:x?}\n    walker (supervisor read): {:x?}",
                                    self.maxphyaddr, self.seed, answers[i], sup_reads[i]
                                ));
                            }
                        }
                    }
                }
            }
            if mutate {
                self.mutations(image, addresses, fs, st);
            }
        }
        *st.images.entry(mode).or_default() += 1;
        *st.addresses.entry(mode).or_default() += addresses.len();
    }

    /// Attach with one table flag flipped and count the accesses where the
    /// device then disagrees with the walker's unflipped context.
    fn mutations(&self, image: &Image, addresses: &[u64], fs: u64, st: &mut Stats) {
        for (name, bit) in [
            ("WP", TF_WP),
            ("NXE", TF_NXE),
            ("SMAP", TF_SMAP),
            ("PRIV", TF_PRIV),
        ] {
            for privileged in [true, false] {
                let flags = fs | if privileged { TF_PRIV } else { 0 };
                let ctx = doc_context(image.cr3, self.width(), flags, self.maxphyaddr);
                self.attach(image.cr3, flags ^ bit);
                let e = st.mutations.entry(name).or_default();
                for &va in addresses {
                    for write in [false, true] {
                        let w = translate(&self.ram.gmem, &ctx, va, access(write, privileged));
                        let d = dev(self.ep.translate(&self.ram.gup, va, write));
                        e.0 += 1;
                        // The device's fault records its own privilege: a
                        // flipped PRIV shows there too, so compare with the
                        // flags the device really has.
                        let dev_priv = (flags ^ bit) & TF_PRIV != 0;
                        if compare_device(&d, &w, va, write, dev_priv, false)
                            == DeviceClass::Mismatch
                        {
                            e.1 += 1;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn iommu_agrees_with_walker_and_kvm() {
    let test = "iommu_vs_walker_vs_kvm";
    let started = std::time::Instant::now();
    let amd = open_kvm().is_ok_and(|kvm| amd_vendor(&kvm).unwrap_or(false));
    let mut st = Stats::default();
    let mut runs: Vec<(GenMode, u8)> = MAXPHYADDRS_4
        .iter()
        .map(|&m| (GenMode::Level4, m))
        .collect();
    runs.extend(MAXPHYADDRS_5.iter().map(|&m| (GenMode::Level5, m)));
    let mut kvm_modes = BTreeSet::new();
    for (run_index, &(gen, want_m)) in runs.iter().enumerate() {
        let Some(vm) = vm_or_skip(test, RAM_BYTES, Some(want_m)) else {
            return;
        };
        // The vCPU compares only in the modes it has (no LA57 here).
        let with_kvm = gen != GenMode::Level5 || vm.cpu.la57;
        let m = if with_kvm { vm.cpu.maxphyaddr } else { want_m };
        if with_kvm {
            kvm_modes.insert(gen.name());
        } else {
            st.kvm_skipped.insert(format!(
                "{}: the vCPU's CPUID has no LA57 (CPUID.07H:ECX[16]); IOMMU vs walker only",
                gen.name()
            ));
        }
        let smap = vm.cpu.smap || (with_kvm && with_smap(&vm));
        let vcpu = Vcpu { vm: &vm, amd, smap };
        let ram = GupRam::new(vm.mem.clone());
        let (_iommu, handle) = Iommu::new(vec![ENDPOINT], m).expect("virtio-iommu");
        let ep = handle.endpoint(ENDPOINT).expect("endpoint 0 exists");
        for n in 0..IMAGES {
            let seed = 0x10_3370_0000 ^ (run_index as u64) << 24 ^ n as u64;
            let mut rng = Rng::new(seed);
            let cfg = GenConfig {
                mode: gen,
                maxphyaddr: m,
                nxe: n % 2 == 1,
                pse36: true,
                ram_bytes: TABLE_AREA,
                area_start: 0,
                area_len: TABLE_AREA,
                max_tables: MAX_TABLES,
                addresses: GEN_ADDRESSES,
            };
            let image = generate(&ram.mem, &cfg, &mut rng);
            let (mapped, found) = mapped_addresses(
                &ram.mem,
                image.cr3,
                gen.levels(),
                &mut rng,
                MAPPED_ADDRESSES,
            );
            st.leaves_found += found;
            st.leaves_compared += mapped.len();
            let mut addresses = image.addresses.clone();
            addresses.extend(mapped);
            let run = ImageRun {
                ram: &ram,
                handle: &handle,
                ep: &ep,
                vcpu: with_kvm.then_some(&vcpu),
                gen,
                maxphyaddr: m,
                seed,
            };
            run.run(&image, &addresses, &mut st, n < MUTATION_IMAGES);
        }
        drop(ep);
        drop(ram);
    }

    // The report.
    println!("  guest CPUID vendor is AMD/Hygon: {amd}");
    for why in &st.kvm_skipped {
        println!("  KVM not compared: {why}");
    }
    for (mode, n) in &st.images {
        println!(
            "  mode {mode}: {n} images, {} addresses{}",
            st.addresses[mode],
            if kvm_modes.contains(mode) {
                " (device, walker, KVM)"
            } else {
                " (device, walker)"
            }
        );
    }
    println!(
        "  leaves found in the images (first {} tables read per image): {}, one address in \
         each of {} of them",
        MAX_TABLE_VISITS, st.leaves_found, st.leaves_compared
    );
    let mut by_class: BTreeMap<DeviceClass, usize> = BTreeMap::new();
    for ((what, var, c), n) in &st.device {
        println!("    device {what:<9} {var:<10} {c:?}: {n}");
        *by_class.entry(*c).or_default() += n;
    }
    println!("  walker translations by page size: {:?}", st.walker_sizes);
    println!("  walker faults: {:?}", st.walker_faults);
    for (c, n) in &st.kvm {
        println!("  KVM_TRANSLATE vs walker supervisor read: {c:?}: {n}");
    }
    for (c, n) in &st.view {
        println!("  KVM view vs walker user/write accesses: {c:?}: {n}");
    }
    for (name, (n, detected)) in &st.mutations {
        println!("  mutation: {name} flipped in the attach: {detected} of {n} accesses differ");
    }
    let device_total: usize = by_class.values().sum();
    let kvm_total: usize = st.kvm.values().sum::<usize>() + st.view.values().sum::<usize>();
    integration_tests::report(&format!(
        "iommu-vs-walker-vs-kvm: {} images, {} addresses, {device_total} device answers, \
         {kvm_total} KVM comparisons, {} mismatches ({:.1} s)",
        st.images.values().sum::<usize>(),
        st.addresses.values().sum::<usize>(),
        st.mismatches,
        started.elapsed().as_secs_f64()
    ));

    if !st.shown.is_empty() {
        let mut all = String::new();
        for s in &st.shown {
            let _ = writeln!(all, "{s}");
        }
        panic!(
            "{} mismatches; the first {}:\n{all}",
            st.mismatches,
            st.shown.len()
        );
    }

    // It must have tested something: translations and faults of every kind
    // the images produce, KVM in 4-level mode, and every mutation caught.
    let class = |c| by_class.get(&c).copied().unwrap_or(0);
    assert!(class(DeviceClass::Translated) >= 10_000, "{by_class:?}");
    assert!(class(DeviceClass::Faulted) >= 10_000, "{by_class:?}");
    assert!(class(DeviceClass::NoRamBehind) > 0, "{by_class:?}");
    assert!(kvm_modes.contains("4-level"), "KVM compared nothing");
    let kvm_n = |c| st.kvm.get(&c).copied().unwrap_or(0);
    assert!(kvm_n(KvmClass::BothValid) >= 5_000, "{:?}", st.kvm);
    assert!(kvm_n(KvmClass::BothInvalid) >= 5_000, "{:?}", st.kvm);
    for size in ["4K", "2M", "1G"] {
        assert!(st.walker_sizes.contains_key(size), "no {size} translation");
    }
    for reason in [
        "NotPresent",
        "ReservedBit",
        "TableOutsideRam",
        "NonCanonical",
    ] {
        assert!(
            st.walker_faults.keys().any(|k| k.ends_with(reason)),
            "no {reason} fault: {:?}",
            st.walker_faults
        );
    }
    for reason in ["UserAccessToSupervisorPage", "ReadOnly", "Smap"] {
        assert!(
            st.walker_faults.keys().any(|k| k.ends_with(reason)),
            "no {reason} fault: {:?}",
            st.walker_faults
        );
    }
    for (name, (_, detected)) in &st.mutations {
        assert!(
            *detected > 0,
            "flipping {name} in the attach went unnoticed: the test cannot see that flag"
        );
    }
    assert_eq!(st.mutations.len(), 4);
}
