// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Differential test: guest-mm's page-table walker against KVM_TRANSLATE.
//!
//! For random and adversarial page-table images (see
//! `integration_tests::ptgen`) in every paging mode this machine's KVM
//! accepts, and for guests with several MAXPHYADDR values, every generated
//! address is translated by KVM (KVM_TRANSLATE: a supervisor-mode read at
//! CPL 0) and by the walker (`Access::supervisor_read()`, with the context
//! built by `vmm::paging::context_from_sregs` from the registers read back
//! from KVM). They must agree: KVM valid exactly when the walker succeeds,
//! with the same guest-physical address.
//!
//! The Intel SDM is the truth, not KVM_TRANSLATE: where KVM_TRANSLATE does
//! not model an SDM rule, the difference is a named [`KnownDifference`]
//! (each citing the rule, each checked as narrowly as possible), counted and
//! printed separately. Anything else is a mismatch and fails the test.
//!
//! Run: `cargo test --release -p integration-tests --test
//! walker_vs_kvm_translate -- --nocapture`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use guest_mm::paging::{
    translate, Access, Fault, FaultKind, FaultReason, PageSize, PagingContext, PagingMode,
    Translation,
};
use integration_tests::kvm::{amd_vendor, open_kvm, vm_or_skip, TestVm};
use integration_tests::ptgen::{generate, GenConfig, GenMode, Image, Rng};
use vm_memory::{Bytes, GuestAddress};
use vmm::paging::{context_from_sregs, ExtraPagingRegs};

/// Guest MAXPHYADDR values, one VM each (clamped to the host's).
const MAXPHYADDRS: [u8; 6] = [36, 39, 40, 44, 46, 48];
/// Images per (VM, mode), half of them with EFER.NXE.
const IMAGES_PER_MODE: usize = 64;
/// Addresses per image.
const ADDRESSES_PER_IMAGE: usize = 512;
/// Guest RAM; everything above it is outside RAM.
const RAM_BYTES: usize = 1 << 20;
/// At most this many paging structures per image.
const MAX_TABLES: usize = 48;
/// How many mismatches to print in full.
const SHOW: usize = 8;

/// A difference between the walker and KVM_TRANSLATE where the walker
/// follows the SDM and KVM_TRANSLATE does not model the rule. Each variant
/// is recognised only in its exact circumstances (see [`classify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KnownDifference {
    /// SDM vol. 3A 3.3.7.1 ("Canonical Addressing") and 4.5: in 4-level
    /// (5-level) paging a linear address whose bits 63:47 (63:56) are not
    /// all equal is not canonical; a memory access with it raises #GP
    /// (#SS for stack accesses) before any paging-structure entry is read.
    /// KVM_TRANSLATE does no canonical check: it indexes the tables with
    /// bits 47:12 (56:12) and returns a translation. Recognised only when
    /// the walker reports #GP for a non-canonical address and the walker's
    /// translation of the sign-extended (canonical) address is exactly
    /// KVM's answer.
    NonCanonicalTranslatedByKvm,
    /// SDM vol. 3A table 4-15 (PML4E referencing a PDPT) and table 4-14
    /// (PML5E): bit 8 is ignored. KVM applies the AMD64 rule instead when the
    /// guest's CPUID vendor is AMD or Hygon (AMD64 APM vol. 2, 5.3.3: bits
    /// 8:7 of a PML4E are must-be-zero), so a walk through a present PML4E
    /// (or PML5E) with bit 8 set is a reserved-bit fault for KVM. Recognised
    /// only for an AMD-vendor guest CPUID, when the walker's translation is
    /// valid (so every entry on the walk is present and has no reserved bit
    /// per the SDM) and the walk's PML4E or PML5E has bit 8 set.
    AmdPml4eBit8Reserved,
}

impl KnownDifference {
    fn describe(self) -> &'static str {
        match self {
            KnownDifference::NonCanonicalTranslatedByKvm => {
                "non-canonical address: #GP per SDM 3.3.7.1, KVM_TRANSLATE translates bits 47:0"
            }
            KnownDifference::AmdPml4eBit8Reserved => {
                "PML4E bit 8: ignored per SDM table 4-15, reserved for KVM with an AMD guest vendor"
            }
        }
    }
}

/// How one address compared.
enum Verdict {
    BothValid,
    BothInvalid,
    Known(KnownDifference),
    Mismatch,
}

/// Compare KVM's answer with the walker's for `va`.
fn classify(
    vm: &TestVm,
    amd: bool,
    ctx: &PagingContext,
    va: u64,
    kvm: Option<u64>,
    walker: &Result<Translation, Fault>,
) -> Verdict {
    match (kvm, walker) {
        (Some(k), Ok(t)) if k == t.gpa => Verdict::BothValid,
        (None, Err(_)) => Verdict::BothInvalid,
        (Some(k), Err(f))
            if f.kind == FaultKind::GeneralProtection
                && f.reason == FaultReason::NonCanonical
                && ctx.mode().levels() >= 4 =>
        {
            let bits = ctx.mode().linear_bits();
            let s = 64 - bits;
            let canonical = (((va << s) as i64) >> s) as u64;
            match translate(&vm.mem, ctx, canonical, Access::supervisor_read()) {
                Ok(t) if t.gpa == k => Verdict::Known(KnownDifference::NonCanonicalTranslatedByKvm),
                _ => Verdict::Mismatch,
            }
        }
        (None, Ok(_)) if amd && ctx.mode().levels() >= 4 => {
            let bit8 = walk_entries(vm, ctx, va)
                .iter()
                .any(|&(level, _, e)| level >= 4 && e.is_some_and(|e| e & (1 << 8) != 0));
            if bit8 {
                Verdict::Known(KnownDifference::AmdPml4eBit8Reserved)
            } else {
                Verdict::Mismatch
            }
        }
        _ => Verdict::Mismatch,
    }
}

/// The entries a walk of `va` reads, decoded naively (address bits and
/// P/PS only, no reserved-bit checks): `(level, entry gpa, value)`, with
/// `None` for an entry outside RAM. For mismatch reports and for
/// recognising [`KnownDifference`]s on walks the walker found valid.
fn walk_entries(vm: &TestVm, ctx: &PagingContext, va: u64) -> Vec<(u8, u64, Option<u64>)> {
    let mode = ctx.mode();
    let mut out = Vec::new();
    let wide = mode.wide_entries();
    let addr_mask = if wide {
        0x000f_ffff_ffff_f000
    } else {
        0xffff_f000
    };
    let mut table = ctx.root();
    for level in (1..=mode.levels()).rev() {
        let (shift, nbits, width) = if wide {
            (12 + 9 * (u32::from(level) - 1), 9, 8)
        } else {
            (12 + 10 * (u32::from(level) - 1), 10, 4)
        };
        let nbits = if mode == PagingMode::Pae && level == 3 {
            2
        } else {
            nbits
        };
        let index = (va >> shift) & ((1 << nbits) - 1);
        let at = table + index * width;
        let e = if wide {
            vm.mem.read_obj::<u64>(GuestAddress(at)).ok()
        } else {
            vm.mem.read_obj::<u32>(GuestAddress(at)).ok().map(u64::from)
        };
        out.push((level, at, e));
        let Some(e) = e else { break };
        if e & 1 == 0 || level == 1 || (e & 0x80 != 0 && !(mode == PagingMode::Pae && level == 3)) {
            break;
        }
        table = e & addr_mask;
    }
    out
}

/// [`walk_entries`], formatted.
fn trace(vm: &TestVm, ctx: &PagingContext, va: u64) -> String {
    let mut out = String::new();
    for (level, at, e) in walk_entries(vm, ctx, va) {
        match e {
            Some(e) => {
                let _ = write!(out, "\n      L{level} @ {at:#x} = {e:#018x}");
            }
            None => {
                let _ = write!(out, "\n      L{level} @ {at:#x}: outside RAM");
            }
        }
    }
    out
}

/// Counts for one paging mode.
#[derive(Default)]
struct ModeStats {
    images: usize,
    addresses: usize,
    both_valid: usize,
    both_invalid: usize,
    known: BTreeMap<KnownDifference, usize>,
    mismatches: usize,
    /// Walker faults by reason (#PF and #GP), over all addresses.
    faults: BTreeMap<String, usize>,
    /// Agreed translations by page size.
    sizes: BTreeMap<String, usize>,
    /// MAXPHYADDR values this mode ran with.
    maxphyaddrs: Vec<u8>,
    /// PAE images with a reserved bit in a present PDPTE: walker-only check.
    invalid_pdpt_images: usize,
}

fn mode_for(g: GenMode) -> PagingMode {
    match g {
        GenMode::Bits32 | GenMode::Bits32Pse => PagingMode::Bits32,
        GenMode::Pae => PagingMode::Pae,
        GenMode::Level4 => PagingMode::Level4,
        GenMode::Level5 => PagingMode::Level5,
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

/// Put the vCPU in the image's paging mode and read the context back from
/// KVM. `Err` says why KVM did not take the mode.
fn enter(vm: &TestVm, gen: GenMode, image: &Image) -> Result<PagingContext, String> {
    let wanted = PagingContext::new(image.cr0, image.cr3, image.cr4, image.efer)
        .with_maxphyaddr(vm.cpu.maxphyaddr)
        .with_features(vm.cpu.features());
    if let Err(e) = vm.set_paging(&wanted) {
        return Err(format!("KVM_SET_SREGS refused it: {e}"));
    }
    let sregs = vm.vcpu.get_sregs().expect("KVM_GET_SREGS");
    let regs = vm.vcpu.get_regs().expect("KVM_GET_REGS");
    let extra = ExtraPagingRegs {
        rflags: regs.rflags,
        ..Default::default()
    };
    let ctx = context_from_sregs(&sregs, extra, vm.cpu.maxphyaddr, vm.cpu.features());
    let want_mode = mode_for(gen);
    let pse_ok = gen != GenMode::Bits32Pse || sregs.cr4 & (1 << 4) != 0;
    if ctx.mode() != want_mode || !pse_ok || ctx.root() != wanted.root() {
        return Err(format!(
            "KVM did not take the mode: asked CR0={:#x} CR4={:#x} EFER={:#x}, read back \
             CR0={:#x} CR3={:#x} CR4={:#x} EFER={:#x} (walker mode {:?})",
            image.cr0,
            image.cr4,
            image.efer,
            sregs.cr0,
            sregs.cr3,
            sregs.cr4,
            sregs.efer,
            ctx.mode()
        ));
    }
    Ok(ctx)
}

#[test]
fn walker_agrees_with_kvm_translate() {
    let test = "walker_vs_kvm_translate";
    let started = std::time::Instant::now();
    let mut stats: BTreeMap<GenMode, ModeStats> = BTreeMap::new();
    let mut skipped: BTreeMap<(GenMode, u8), String> = BTreeMap::new();
    let mut shown: Vec<String> = Vec::new();
    let mut images_total = 0usize;
    let mut addresses_total = 0usize;
    let mut mismatches_total = 0usize;
    let amd = open_kvm().is_ok_and(|kvm| amd_vendor(&kvm).expect("KVM_GET_SUPPORTED_CPUID"));
    println!("  guest CPUID vendor is AMD/Hygon: {amd}");

    for (vm_index, &want_m) in MAXPHYADDRS.iter().enumerate() {
        let Some(vm) = vm_or_skip(test, RAM_BYTES, Some(want_m)) else {
            return;
        };
        let m = vm.cpu.maxphyaddr;
        for (mode_index, &gen) in GenMode::ALL.iter().enumerate() {
            if gen == GenMode::Level5 && !vm.cpu.la57 {
                skipped.insert(
                    (gen, m),
                    "the guest CPUID KVM supports has no LA57 (CPUID.07H:ECX[16])".into(),
                );
                continue;
            }
            for n in 0..IMAGES_PER_MODE {
                let seed = 0x5eed_0000_0000
                    ^ (vm_index as u64) << 32
                    ^ (mode_index as u64) << 24
                    ^ n as u64;
                let mut rng = Rng::new(seed);
                let cfg = GenConfig {
                    mode: gen,
                    maxphyaddr: m,
                    nxe: n % 2 == 1 && vm.cpu.nx,
                    pse36: vm.cpu.pse36,
                    ram_bytes: RAM_BYTES as u64,
                    area_start: 0,
                    area_len: RAM_BYTES as u64,
                    max_tables: MAX_TABLES,
                    addresses: ADDRESSES_PER_IMAGE,
                };
                let image = generate(&vm.mem, &cfg, &mut rng);
                let ctx = match enter(&vm, gen, &image) {
                    Ok(ctx) => ctx,
                    Err(why) => {
                        skipped.insert((gen, m), why);
                        break;
                    }
                };
                let st = stats.entry(gen).or_default();
                if n == 0 {
                    st.maxphyaddrs.push(m);
                }
                if image.pdpte_reserved {
                    // A state no CPU can be in: MOV to CR3 would have raised
                    // #GP and loaded no PDPTE (SDM 4.4.1), and KVM may keep
                    // stale PDPTE registers. Nothing to compare with KVM; the
                    // walker must refuse every address with #GP.
                    for &va in &image.addresses {
                        let w = translate(&vm.mem, &ctx, va, Access::supervisor_read());
                        assert!(
                            matches!(w, Err(f) if f.kind == FaultKind::GeneralProtection),
                            "PAE image with a reserved PDPTE bit (seed {seed:#x}): {va:#x} \
                             gave {w:x?}"
                        );
                    }
                    st.invalid_pdpt_images += 1;
                    continue;
                }
                st.images += 1;
                images_total += 1;
                for &va in &image.addresses {
                    // The walker first: KVM_TRANSLATE sets Accessed bits in
                    // the entries it walks (never a bit that changes a
                    // translation, and the PAE PDPT is never walked by it).
                    let walker = translate(&vm.mem, &ctx, va, Access::supervisor_read());
                    let kvm = vm.translate(va).unwrap_or_else(|e| panic!("{test}: {e}"));
                    st.addresses += 1;
                    addresses_total += 1;
                    match &walker {
                        Err(f) => {
                            let kind = match f.kind {
                                FaultKind::PageFault(_) => "#PF",
                                FaultKind::GeneralProtection => "#GP",
                            };
                            *st.faults
                                .entry(format!("{kind} {:?} L{}", f.reason, f.level))
                                .or_default() += 1;
                        }
                        Ok(t) if kvm == Some(t.gpa) => {
                            *st.sizes
                                .entry(size_name(t.page_size).to_string())
                                .or_default() += 1;
                        }
                        Ok(_) => {}
                    }
                    match classify(&vm, amd, &ctx, va, kvm, &walker) {
                        Verdict::BothValid => st.both_valid += 1,
                        Verdict::BothInvalid => st.both_invalid += 1,
                        Verdict::Known(k) => *st.known.entry(k).or_default() += 1,
                        Verdict::Mismatch => {
                            st.mismatches += 1;
                            mismatches_total += 1;
                            if shown.len() < SHOW {
                                shown.push(format!(
                                    "  mode {} (MAXPHYADDR {m}, seed {seed:#x})\n    context \
                                     {ctx:x?}\n    address {va:#x}\n    KVM_TRANSLATE: {}\n    \
                                     walker: {walker:x?}\n    entries (read after both walks, \
                                     KVM may have set A bits):{}",
                                    gen.name(),
                                    match kvm {
                                        Some(g) => format!("valid, gpa {g:#x}"),
                                        None => "not valid".into(),
                                    },
                                    trace(&vm, &ctx, va)
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    for (gen, st) in &stats {
        let known: usize = st.known.values().sum();
        println!(
            "  mode {}: {} images, {} addresses (MAXPHYADDR {:?}): {} both valid, {} both \
             invalid, {} known differences, {} mismatches",
            gen.name(),
            st.images,
            st.addresses,
            st.maxphyaddrs,
            st.both_valid,
            st.both_invalid,
            known,
            st.mismatches
        );
        if st.invalid_pdpt_images > 0 {
            println!(
                "    {} PAE images with a reserved PDPTE bit (MOV to CR3 would #GP, SDM \
                 4.4.1): not compared with KVM, walker gave #GP for every address",
                st.invalid_pdpt_images
            );
        }
        println!("    agreed translations by page size: {:?}", st.sizes);
        println!("    walker faults: {:?}", st.faults);
    }
    // One line per skipped mode: the MAXPHYADDRs it was skipped for and
    // the first reason (the others differ only in the random register bits).
    let mut by_mode: BTreeMap<GenMode, (Vec<u8>, &String)> = BTreeMap::new();
    for ((gen, m), why) in &skipped {
        by_mode.entry(*gen).or_insert((Vec::new(), why)).0.push(*m);
    }
    for (gen, (ms, why)) in &by_mode {
        println!("  skipped mode {} (MAXPHYADDR {ms:?}): {why}", gen.name());
    }
    let mut known_total: BTreeMap<KnownDifference, usize> = BTreeMap::new();
    for st in stats.values() {
        for (k, n) in &st.known {
            *known_total.entry(*k).or_default() += n;
        }
    }
    for (k, n) in &known_total {
        println!("  known difference {k:?}: {n} ({})", k.describe());
    }
    integration_tests::report(&format!(
        "walker-vs-kvm translate: {images_total} images, {addresses_total} addresses, \
         {mismatches_total} mismatches"
    ));
    println!("  ({:.1} s)", started.elapsed().as_secs_f64());

    if !shown.is_empty() {
        panic!(
            "{mismatches_total} mismatches between the walker and KVM_TRANSLATE; the first \
             {}:\n{}",
            shown.len(),
            shown.join("\n")
        );
    }

    // The test must have tested something: 4-level paging exists on every
    // x86-64 KVM, and the images must produce both outcomes in quantity.
    let l4 = stats
        .get(&GenMode::Level4)
        .expect("KVM took 4-level paging for no image");
    assert!(images_total >= 200, "only {images_total} images ran");
    assert!(
        addresses_total >= 100_000,
        "only {addresses_total} addresses ran"
    );
    for st in stats.values() {
        assert!(
            st.both_valid * 10 >= st.addresses && st.both_invalid * 10 >= st.addresses,
            "degenerate images: {} valid and {} invalid of {}",
            st.both_valid,
            st.both_invalid,
            st.addresses
        );
    }
    for reason in [
        "#PF NotPresent",
        "#PF ReservedBit",
        "#PF TableOutsideRam",
        "#GP NonCanonical",
    ] {
        assert!(
            l4.faults.keys().any(|k| k.starts_with(reason)),
            "4-level images never produced {reason}"
        );
    }
    for size in ["4K", "2M"] {
        assert!(
            l4.sizes.contains_key(size),
            "4-level images never produced an agreed {size} translation"
        );
    }
}

/// The generator itself, in every mode (including those KVM does not take on
/// this machine, so the images are ready where it does): images must give
/// the walker both translations and faults, at several sizes, and nothing
/// may panic. Needs no KVM.
#[test]
fn generated_images_are_not_degenerate_in_any_mode() {
    let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_BYTES)])
        .expect("guest memory");
    for (mode_index, &gen) in GenMode::ALL.iter().enumerate() {
        let mut ok = 0usize;
        let mut err = 0usize;
        let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
        let mut pae_invalid = 0usize;
        for n in 0..32u64 {
            let m = MAXPHYADDRS[n as usize % MAXPHYADDRS.len()];
            let cfg = GenConfig {
                mode: gen,
                maxphyaddr: m,
                nxe: n % 2 == 1,
                pse36: true,
                ram_bytes: RAM_BYTES as u64,
                area_start: 0,
                area_len: RAM_BYTES as u64,
                max_tables: MAX_TABLES,
                addresses: ADDRESSES_PER_IMAGE,
            };
            let mut rng = Rng::new(0xde9e_0000 ^ (mode_index as u64) << 16 ^ n);
            let image = generate(&mem, &cfg, &mut rng);
            assert_eq!(image.addresses.len(), ADDRESSES_PER_IMAGE);
            let ctx =
                PagingContext::new(image.cr0, image.cr3, image.cr4, image.efer).with_maxphyaddr(m);
            assert_eq!(ctx.mode(), mode_for(gen), "{image:x?}");
            if image.pdpte_reserved {
                // SDM 4.4.1: such PDPTEs cannot be loaded; every access #GP.
                pae_invalid += 1;
                for &va in &image.addresses {
                    let w = translate(&mem, &ctx, va, Access::supervisor_read());
                    assert!(
                        matches!(w, Err(f) if f.kind == FaultKind::GeneralProtection),
                        "{va:#x}: {w:x?}"
                    );
                }
                continue;
            }
            for &va in &image.addresses {
                match translate(&mem, &ctx, va, Access::supervisor_read()) {
                    Ok(t) => {
                        ok += 1;
                        *sizes.entry(size_name(t.page_size)).or_default() += 1;
                    }
                    Err(_) => err += 1,
                }
            }
        }
        println!(
            "  generator {}: {ok} ok, {err} faults, {sizes:?}, {pae_invalid} images with a \
             reserved PDPTE bit",
            gen.name()
        );
        assert_eq!(pae_invalid > 0, gen == GenMode::Pae, "{}", gen.name());
        let total = ok + err;
        assert!(
            ok * 10 >= total && err * 10 >= total,
            "{}: {ok} ok, {err} faults",
            gen.name()
        );
        let large = match gen {
            GenMode::Bits32 => None,
            GenMode::Bits32Pse => Some("4M"),
            _ => Some("2M"),
        };
        assert!(
            sizes.contains_key("4K"),
            "{}: no 4K translation",
            gen.name()
        );
        if let Some(large) = large {
            assert!(
                sizes.contains_key(large),
                "{}: no {large} translation",
                gen.name()
            );
        }
    }
}
