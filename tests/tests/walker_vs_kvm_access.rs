// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Permissions and faults: the walker against guest execution under KVM.
//!
//! A tiny 4-level long-mode guest ([`integration_tests::guest_exec`]) makes
//! one access (read, write or instruction fetch, at CPL 3 or CPL 0) to a
//! target address whose four paging-structure entries each case chooses, and
//! reports either completion or the exception it took (vector, error code,
//! CR2, faulting RIP). The walker's verdict for the same registers and tables
//! must be identical: no fault, or the same #PF error code (P, W/R, U/S,
//! RSVD, I/D, PK) at the same CR2, or the same #GP. After each access that
//! completed, the Accessed/Dirty bits the CPU (KVM) wrote into the target's
//! entries must equal what `guest_mm::paging::touch` writes into a copy of the
//! same tables.
//!
//! The matrix: P, R/W, U/S, A, D, XD at every level, 4K and 2M leaves, PS
//! where it is reserved (PML4E, PDPTE without 1-GByte pages), reserved bits
//! (MAXPHYADDR..51, XD without EFER.NXE, 2M-leaf bits 20:13) and ignored bits,
//! x read/write/fetch x CPL 3/CPL 0 x CR0.WP x EFER.NXE x CR4.SMEP x CR4.SMAP
//! x RFLAGS.AC, x CR4.PKE with random PKRU where the CPU has PKU; swept
//! exhaustively per level, then random combinations, plus non-canonical
//! addresses (#GP).
//!
//! Run: `cargo test --release -p integration-tests --test walker_vs_kvm_access -- --nocapture`.
//! It prints `walker-vs-kvm access: C cases, M mismatches`.

use std::time::Instant;

use guest_mm::paging::{
    touch, translate, Access, AccessKind, CpuFeatures, ErrorCode, Fault, FaultKind, Privilege,
    TouchError,
};
use integration_tests::guest_exec::{
    AccessSetup, GuestExec, Outcome, CR2_SENTINEL, DATA_BASE, MEM_BYTES, PML4, TARGET_PD,
    TARGET_PDPT, TARGET_PT,
};
use integration_tests::kvm::vm_or_skip;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::paging::{context_from_sregs, ExtraPagingRegs};

/// The guest's MAXPHYADDR: below the host's, so that bits 51:40 of every
/// entry are reserved and can be tested.
const MAXPHYADDR: u8 = 40;

use guest_mm::paging::entry::{
    PTE_A as A, PTE_D as D, PTE_P as P, PTE_PS as PS, PTE_RW as RW, PTE_US as US, PTE_XD as XD,
};
/// Permissive upper-level flags.
const OPEN: u64 = P | RW | US;

/// xorshift64*: small, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bit(&mut self) -> bool {
        self.next() & 1 != 0
    }
}

/// Leaf size of the target translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaf {
    /// PML4E -> PDPTE -> PDE -> PTE.
    Pte4K,
    /// PML4E -> PDPTE -> PDE with PS.
    Pde2M,
}

/// One case: the control state, the access and the target's entries.
#[derive(Clone, Copy, Debug)]
struct Case {
    /// Which part of the matrix made it.
    sweep: &'static str,
    setup: AccessSetup,
    pkru: u32,
    leaf: Leaf,
    /// Table indices of the target address, PML4 first.
    idx: [u64; 4],
    /// PML4E, PDPTE, PDE, PTE (the PTE is written but unused for 2M leaves).
    entries: [u64; 4],
}

impl Case {
    /// Gpas of the four entries.
    fn entry_gpas(&self) -> [u64; 4] {
        [
            GuestExec::entry_gpa(PML4, self.idx[0]),
            GuestExec::entry_gpa(TARGET_PDPT, self.idx[1]),
            GuestExec::entry_gpa(TARGET_PD, self.idx[2]),
            GuestExec::entry_gpa(TARGET_PT, self.idx[3]),
        ]
    }
}

/// Sign-extend a 48-bit linear address.
fn canonical(va: u64) -> u64 {
    (((va << 16) as i64) >> 16) as u64
}

/// Build the entries for `idx` and `leaf` with flags `flags` per level
/// (PML4E, PDPTE, PDE, leaf or PTE). Address bits are filled in.
fn entries_for(idx: [u64; 4], leaf: Leaf, flags: [u64; 4]) -> [u64; 4] {
    let pte_page = DATA_BASE + (idx[3] << 12);
    match leaf {
        Leaf::Pte4K => [
            TARGET_PDPT | flags[0],
            TARGET_PD | flags[1],
            TARGET_PT | flags[2],
            pte_page | flags[3],
        ],
        Leaf::Pde2M => [
            TARGET_PDPT | flags[0],
            TARGET_PD | flags[1],
            DATA_BASE | PS | flags[2],
            // Unused by the walk; kept present so a stray use would show.
            pte_page | OPEN,
        ],
    }
}

/// All combinations of the control state for one access kind and CPL,
/// within what the CPU supports here.
#[derive(Clone, Copy)]
struct Caps {
    smep_smap: bool,
    pke: bool,
}

fn controls(caps: Caps) -> Vec<AccessSetup> {
    let mut out = Vec::new();
    for bits in 0..(1u32 << 8) {
        let b = |i: u32| bits & (1 << i) != 0;
        let kind = match bits & 3 {
            0 => AccessKind::Read,
            1 => AccessKind::Write,
            2 => AccessKind::Fetch,
            _ => continue,
        };
        let s = AccessSetup {
            kind,
            user: b(2),
            va: 0,
            wp: b(3),
            nxe: b(4),
            smep: b(5),
            smap: b(6),
            pke: false,
            ac: b(7),
        };
        if !caps.smep_smap && (s.smep || s.smap) {
            continue;
        }
        out.push(s);
    }
    out
}

fn random_setup(rng: &mut Rng, caps: Caps) -> AccessSetup {
    let kind = match rng.below(3) {
        0 => AccessKind::Read,
        1 => AccessKind::Write,
        _ => AccessKind::Fetch,
    };
    AccessSetup {
        kind,
        user: rng.bit(),
        va: 0,
        wp: rng.bit(),
        nxe: rng.bit(),
        smep: caps.smep_smap && rng.bit(),
        smap: caps.smep_smap && rng.bit(),
        pke: caps.pke && rng.bit(),
        ac: rng.bit(),
    }
}

fn random_idx(rng: &mut Rng) -> [u64; 4] {
    // PML4 index 0 holds the fixed mappings.
    [
        1 + rng.below(511),
        rng.below(512),
        rng.below(512),
        rng.below(512),
    ]
}

fn random_pkru(rng: &mut Rng, caps: Caps) -> u32 {
    if caps.pke {
        rng.next() as u32
    } else {
        0
    }
}

/// Flags for one level drawn at random: mostly present, any R/W, U/S, XD, A
/// (and D for the leaf).
fn random_flags(rng: &mut Rng, leaf_level: bool) -> u64 {
    let mut f = if rng.below(16) == 0 { 0 } else { P };
    if rng.bit() {
        f |= RW;
    }
    if rng.bit() {
        f |= US;
    }
    if rng.below(4) == 0 {
        f |= XD;
    }
    if rng.bit() {
        f |= A;
    }
    if leaf_level && rng.bit() {
        f |= D;
    }
    f
}

/// Bits that are reserved, or ignored, at some level (SDM tables 4-15 to
/// 4-20), for the reserved/ignored-bit sweep. Whether each is reserved at a
/// given level is the walker's business: the sweep just sets it.
const SPECIAL_BITS: &[u32] = &[
    6,  // D: ignored in non-leaf entries
    7,  // PS: reserved in PML4Es, and in PDPTEs without 1-GByte pages
    8,  // G: ignored in non-leaf entries (and without CR4.PGE)
    9,  // ignored
    10, // ignored
    11, // ignored
    12, // PAT of a 2M leaf; an address bit elsewhere
    13, // reserved in a 2M leaf
    20, // reserved in a 2M leaf
    40, // = MAXPHYADDR: reserved
    45, // reserved
    51, // reserved
    52, // ignored
    58, // ignored
    59, // protection key (or ignored)
    62, // protection key (or ignored)
    63, // XD: reserved without EFER.NXE
];

fn make_cases(caps: Caps, seed: u64) -> Vec<Case> {
    let mut rng = Rng(seed);
    let mut cases = Vec::new();
    let ctrl = controls(caps);
    let fixed_idx = [1, 2, 3, 4];

    // 1. The leaf's flags, exhaustively (P, R/W, U/S, XD, A, D), with open
    //    upper levels, for both leaf sizes, under every control state.
    for leaf in [Leaf::Pte4K, Leaf::Pde2M] {
        for lf in 0..64u64 {
            let mut flags = 0;
            for (i, bit) in [P, RW, US, XD, A, D].iter().enumerate() {
                if lf & (1 << i) != 0 {
                    flags |= bit;
                }
            }
            // The flag combinations that matter most get every control
            // state; the A/D variants a random quarter of them.
            for s in &ctrl {
                if lf >= 16 && rng.below(4) != 0 {
                    continue;
                }
                let mut level_flags = [OPEN; 4];
                level_flags[if leaf == Leaf::Pte4K { 3 } else { 2 }] = flags;
                let idx = random_idx(&mut rng);
                cases.push(Case {
                    sweep: "leaf flags",
                    setup: *s,
                    pkru: random_pkru(&mut rng, caps),
                    leaf,
                    idx,
                    entries: entries_for(idx, leaf, level_flags),
                });
            }
        }
    }

    // 2. Each non-leaf level's P, R/W, U/S, XD, exhaustively, with the other
    //    levels open, under every control state.
    for leaf in [Leaf::Pte4K, Leaf::Pde2M] {
        let upper: &[usize] = if leaf == Leaf::Pte4K {
            &[0, 1, 2]
        } else {
            &[0, 1]
        };
        for &level in upper {
            for lf in 0..16u64 {
                let mut flags = A;
                for (i, bit) in [P, RW, US, XD].iter().enumerate() {
                    if lf & (1 << i) != 0 {
                        flags |= bit;
                    }
                }
                for s in &ctrl {
                    // Not-present entries: a sample of control states.
                    if flags & P == 0 && rng.below(8) != 0 {
                        continue;
                    }
                    let mut level_flags = [OPEN | A; 4];
                    level_flags[level] = flags;
                    cases.push(Case {
                        sweep: "upper-level flags",
                        setup: *s,
                        pkru: random_pkru(&mut rng, caps),
                        leaf,
                        idx: fixed_idx,
                        entries: entries_for(fixed_idx, leaf, level_flags),
                    });
                }
            }
        }
    }

    // 3. Reserved and ignored bits, one at a time, at every level, with
    //    random control states.
    for leaf in [Leaf::Pte4K, Leaf::Pde2M] {
        let levels = if leaf == Leaf::Pte4K { 4 } else { 3 };
        for level in 0..levels {
            for &bit in SPECIAL_BITS {
                for _ in 0..6 {
                    let mut s = random_setup(&mut rng, caps);
                    // Keep the access itself allowed often enough that the
                    // reserved bit is what decides.
                    if rng.bit() {
                        s.smep = false;
                        s.smap = false;
                    }
                    let idx = random_idx(&mut rng);
                    let mut e = entries_for(idx, leaf, [OPEN; 4]);
                    e[level] |= 1u64 << bit;
                    cases.push(Case {
                        sweep: "reserved/ignored bits",
                        setup: s,
                        pkru: random_pkru(&mut rng, caps),
                        leaf,
                        idx,
                        entries: e,
                    });
                }
            }
        }
    }

    // 4. Random everything: flags at every level, a reserved or ignored bit
    //    now and then, random control state and address.
    for _ in 0..12000 {
        let leaf = if rng.bit() { Leaf::Pte4K } else { Leaf::Pde2M };
        let mut flags = [0; 4];
        for (i, f) in flags.iter_mut().enumerate() {
            let is_leaf = i == 3 || (i == 2 && leaf == Leaf::Pde2M);
            *f = random_flags(&mut rng, is_leaf);
        }
        // Bias towards walks that reach the leaf.
        for f in flags.iter_mut().take(3) {
            if rng.below(4) != 0 {
                *f |= P;
            }
        }
        let idx = random_idx(&mut rng);
        let mut e = entries_for(idx, leaf, flags);
        if rng.below(4) == 0 {
            let level = rng.below(4) as usize;
            let bit = SPECIAL_BITS[rng.below(SPECIAL_BITS.len() as u64) as usize];
            e[level] |= 1u64 << bit;
        }
        if caps.pke {
            // A random protection key in the leaf.
            let leaf_level = if leaf == Leaf::Pte4K { 3 } else { 2 };
            e[leaf_level] |= rng.below(16) << 59;
        }
        cases.push(Case {
            sweep: "random",
            setup: random_setup(&mut rng, caps),
            pkru: random_pkru(&mut rng, caps),
            leaf,
            idx,
            entries: e,
        });
    }

    // Addresses: the target VA from the indices and a random offset that
    // leaves room for the fetched instruction.
    for c in cases.iter_mut() {
        let off = rng.below(0xff0 / 8) * 8;
        c.setup.va =
            canonical(c.idx[0] << 39 | c.idx[1] << 30 | c.idx[2] << 21 | c.idx[3] << 12 | off);
    }

    // 5. Non-canonical addresses: #GP, whatever the tables say.
    for _ in 0..60 {
        let idx = random_idx(&mut rng);
        let mut s = random_setup(&mut rng, caps);
        s.va = canonical(idx[0] << 39 | idx[1] << 30) ^ (1u64 << (48 + rng.below(15)));
        cases.push(Case {
            sweep: "non-canonical",
            setup: s,
            pkru: 0,
            leaf: Leaf::Pte4K,
            idx,
            entries: entries_for(idx, Leaf::Pte4K, [OPEN; 4]),
        });
    }
    cases
}

/// The guest-physical address the leaf's address field gives for the
/// case's address (ignoring every permission and reserved bit), if it is in
/// the data region.
fn leaf_target(c: &Case) -> Option<u64> {
    let addr_bits = ((1u64 << MAXPHYADDR) - 1) & !0xfff;
    let gpa = match c.leaf {
        Leaf::Pte4K => (c.entries[3] & addr_bits) | (c.setup.va & 0xfff),
        Leaf::Pde2M => (c.entries[2] & addr_bits & !0x1f_ffff) | (c.setup.va & 0x1f_ffff),
    };
    (DATA_BASE..MEM_BYTES as u64 - 16)
        .contains(&gpa)
        .then_some(gpa)
}

/// What the walker predicts the guest reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    Done,
    PageFault { code: u32, cr2: u64, rip: u64 },
    GeneralProtection { rip: u64 },
}

fn expected_from(walk: &Result<guest_mm::paging::Translation, Fault>, c: &Case) -> Expected {
    let stub = GuestExec::stub_rip(&c.setup);
    match walk {
        Ok(_) => Expected::Done,
        Err(f) => match f.kind {
            FaultKind::PageFault(ErrorCode(code)) => Expected::PageFault {
                code,
                cr2: f.address,
                // A fetch faults at the target; a data access at the stub.
                rip: if c.setup.kind == AccessKind::Fetch {
                    c.setup.va
                } else {
                    stub
                },
            },
            // A non-canonical jump target faults on the jump itself.
            FaultKind::GeneralProtection => Expected::GeneralProtection { rip: stub },
        },
    }
}

fn observed_matches(e: &Expected, o: &Outcome) -> bool {
    match (e, o) {
        (Expected::Done, Outcome::Done) => true,
        (
            Expected::PageFault { code, cr2, rip },
            Outcome::Exception {
                vector: 14,
                error_code: Some(ec),
                rip: orip,
                cr2: ocr2,
            },
        ) => u64::from(*code) == *ec && cr2 == ocr2 && rip == orip,
        (
            Expected::GeneralProtection { rip },
            Outcome::Exception {
                vector: 13,
                error_code: Some(0),
                rip: orip,
                cr2,
            },
        ) => rip == orip && *cr2 == CR2_SENTINEL,
        _ => false,
    }
}

/// A difference between guest execution under KVM (the oracle) and the
/// Intel SDM, identified exactly: the walker follows the SDM, and a case is
/// put in one of these classes only when the observed exception is exactly
/// the one the class predicts. They are counted apart from mismatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum KvmDeviation {
    /// Bit 8 of a present PML4E is reserved under KVM when the guest CPUID
    /// vendor is AMD: KVM applies the AMD APM rule (vol. 2, 5.3.3, figure
    /// 5-18: PML4E bits 8:7 "MBZ") and raises #PF with P|RSVD. The Intel SDM
    /// (vol. 3A, table 4-15, "Format of a PML4 Entry (PML4E) that References
    /// a Page-Directory-Pointer Table") lists bit 8 as ignored, so the walker
    /// does not fault. The host of the CI machines is AMD.
    AmdPml4eBit8Reserved,
    /// kvm_pvm (the software KVM of the CI machines, DESIGN section 2)
    /// keeps PML4 slot 256 (linear 0xffff8000_00000000 to
    /// 0xffff807f_ffffffff, the start of the x86-64 "hypervisor hole") for
    /// itself in user mode: every CPL 3 access there takes a not-present #PF
    /// whatever the guest's entries say, and a fetch reports I/D even with
    /// EFER.NXE and CR4.SMEP clear. Intel SDM vol. 3A 4.7: the P flag is 0
    /// only if a paging-structure entry is not present, and I/D is set only
    /// if CR4.SMEP = 1 or IA32_EFER.NXE = 1.
    PvmSlot256AtCpl3,
}

/// Put a case whose observed outcome differs from the walker's in a
/// [`KvmDeviation`] class, if it is exactly that class's behaviour.
fn classify(
    c: &Case,
    ctx: &guest_mm::paging::PagingContext,
    access: Access,
    amd: bool,
    observed: &Outcome,
) -> Option<KvmDeviation> {
    let va = c.setup.va;
    if canonical(va) != va {
        return None;
    }
    let fault_rip = if c.setup.kind == AccessKind::Fetch {
        va
    } else {
        GuestExec::stub_rip(&c.setup)
    };
    let is_pf = |code: u32| {
        *observed
            == Outcome::Exception {
                vector: 14,
                error_code: Some(u64::from(code)),
                rip: fault_rip,
                cr2: va,
            }
    };
    let base = ErrorCode::for_access(ctx, access).0;
    if amd
        && c.entries[0] & P != 0
        && c.entries[0] & (1 << 8) != 0
        && is_pf(base | ErrorCode::P | ErrorCode::RSVD)
    {
        return Some(KvmDeviation::AmdPml4eBit8Reserved);
    }
    let mut slot256 = ErrorCode::U;
    if c.setup.kind == AccessKind::Write {
        slot256 |= ErrorCode::W;
    }
    if c.setup.kind == AccessKind::Fetch {
        slot256 |= ErrorCode::ID;
    }
    if c.setup.user && (va >> 39) & 0x1ff == 256 && is_pf(slot256) {
        return Some(KvmDeviation::PvmSlot256AtCpl3);
    }
    None
}

struct Mismatch {
    /// The case before (the guest state it left is the starting point).
    prev: Option<Case>,
    case: Case,
    expected: Expected,
    walker: String,
    observed: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.case;
        writeln!(
            f,
            "  sweep {:?}, {:?} leaf, {:x?}",
            c.sweep, c.leaf, c.setup
        )?;
        writeln!(
            f,
            "  indices {:?}, entries PML4E {:#x} PDPTE {:#x} PDE {:#x} PTE {:#x}, PKRU {:#x}",
            c.idx, c.entries[0], c.entries[1], c.entries[2], c.entries[3], c.pkru
        )?;
        writeln!(
            f,
            "  walker:   {} => expect {:x?}",
            self.walker, self.expected
        )?;
        if let Some(p) = &self.prev {
            writeln!(
                f,
                "  (previous case: {:?} leaf, {:x?}, indices {:?}, entries {:x?})",
                p.leaf, p.setup, p.idx, p.entries
            )?;
        }
        write!(f, "  observed: {}", self.observed)
    }
}

fn snapshot(src: &GuestMemoryMmap, dst: &GuestMemoryMmap) {
    let mut page = [0u8; 4096];
    for table in [PML4, TARGET_PDPT, TARGET_PD, TARGET_PT] {
        src.read_slice(&mut page, GuestAddress(table))
            .expect("read table");
        dst.write_slice(&page, GuestAddress(table))
            .expect("write table copy");
    }
}

/// Probe whether CR4.SMEP and CR4.SMAP, accepted after forcing their CPUID
/// bits, are enforced by guest execution: a CPL 0 fetch from, and a CPL 0
/// read of, a user page must fault.
fn probe_smep_smap(g: &mut GuestExec) -> (bool, bool) {
    let idx = [1, 2, 3, 4];
    let e = entries_for(idx, Leaf::Pte4K, [OPEN | A, OPEN | A, OPEN | A, OPEN | A]);
    let c = Case {
        sweep: "probe",
        setup: AccessSetup {
            kind: AccessKind::Fetch,
            user: false,
            va: canonical(idx[0] << 39 | idx[1] << 30 | idx[2] << 21 | idx[3] << 12),
            wp: false,
            nxe: false,
            smep: true,
            smap: false,
            pke: false,
            ac: false,
        },
        pkru: 0,
        leaf: Leaf::Pte4K,
        idx,
        entries: e,
    };
    let writes: Vec<(u64, u64)> = c.entry_gpas().into_iter().zip(c.entries).collect();
    g.write_entries(&writes).expect("entry writes");
    g.write_bytes(
        DATA_BASE + (c.setup.va & 0x1f_ffff),
        integration_tests::guest_exec::CODE_AT_TARGET,
    )
    .expect("target code");
    let run = |g: &mut GuestExec, s: AccessSetup| {
        let sregs = g.sregs_for(&s).expect("sregs");
        g.access(&s, &sregs).expect("access")
    };
    let smep = run(g, c.setup);
    let smap = run(
        g,
        AccessSetup {
            kind: AccessKind::Read,
            smep: false,
            smap: true,
            ..c.setup
        },
    );
    let faulted = |o: Outcome| matches!(o, Outcome::Exception { vector: 14, .. });
    (faulted(smep), faulted(smap))
}

/// The harness's TLB handling: change only the PTE of one address between
/// runs and check that each run sees the new entry (a stale translation
/// would repeat the previous outcome).
fn check_entry_changes_are_seen(g: &mut GuestExec) {
    let idx = [5, 6, 7, 8];
    let va = canonical(idx[0] << 39 | idx[1] << 30 | idx[2] << 21 | idx[3] << 12 | 0x80);
    let s = AccessSetup {
        kind: AccessKind::Write,
        user: true,
        va,
        wp: true,
        nxe: true,
        smep: false,
        smap: false,
        pke: false,
        ac: false,
    };
    let pf = |code: u32| Outcome::Exception {
        vector: 14,
        error_code: Some(u64::from(code)),
        rip: GuestExec::stub_rip(&s),
        cr2: va,
    };
    let steps = [
        (OPEN | A, Outcome::Done),
        (P | US | A, pf(ErrorCode::P | ErrorCode::W | ErrorCode::U)),
        (OPEN | A, Outcome::Done),
        (RW | US, pf(ErrorCode::W | ErrorCode::U)),
        (OPEN, Outcome::Done),
        (P | RW | A, pf(ErrorCode::P | ErrorCode::W | ErrorCode::U)),
    ];
    for (n, (pte_flags, want)) in steps.into_iter().enumerate() {
        let e = entries_for(idx, Leaf::Pte4K, [OPEN | A, OPEN | A, OPEN | A, pte_flags]);
        let c = Case {
            sweep: "flush check",
            setup: s,
            pkru: 0,
            leaf: Leaf::Pte4K,
            idx,
            entries: e,
        };
        let writes: Vec<(u64, u64)> = c.entry_gpas().into_iter().zip(c.entries).collect();
        g.write_entries(&writes).expect("entry writes");
        let sregs = g.sregs_for(&s).expect("sregs");
        let got = g.access(&s, &sregs).expect("access");
        assert_eq!(
            got, want,
            "step {n}: after changing only the PTE to {:#x} the guest saw {got:x?}: \
             the harness does not flush translations",
            e[3]
        );
    }
}

#[test]
fn walker_matches_guest_execution_permissions_and_faults() {
    let Some(vm) = vm_or_skip("walker_vs_kvm_access", MEM_BYTES, Some(MAXPHYADDR)) else {
        return;
    };
    let host = vm.cpu;
    let features: CpuFeatures = host.features();
    // KVM_GET_SUPPORTED_CPUID on some hosts (the software KVM of the CI
    // machines) leaves out SMEP and SMAP although the CPU has them, and
    // KVM_SET_SREGS then refuses CR4.SMEP/SMAP. Advertising them in the
    // guest's CPUID leaf 7 makes KVM accept the CR4 bits; whether guest
    // execution then enforces them is probed below, and the dimensions are
    // only used if it does.
    let force = !(host.smep && host.smap);
    let mut g = GuestExec::new(vm, force).expect("guest setup");
    check_entry_changes_are_seen(&mut g);
    let (smep_enforced, smap_enforced) = probe_smep_smap(&mut g);
    let caps = Caps {
        smep_smap: smep_enforced && smap_enforced,
        pke: host.pku && g.pkru_supported(),
    };
    println!(
        "guest CPU: MAXPHYADDR {}, NX {}, 1G pages {}, SMEP {} SMAP {}{}, PKU {}",
        host.maxphyaddr,
        host.nx,
        features.gbpages,
        host.smep,
        host.smap,
        if force {
            " (not in KVM_GET_SUPPORTED_CPUID: forced in the guest CPUID)"
        } else {
            ""
        },
        host.pku
    );
    if caps.smep_smap {
        println!(
            "CR4.SMEP and CR4.SMAP (with RFLAGS.AC): enforced by guest execution, in the matrix"
        );
    } else {
        println!(
            "SKIPPED dimensions CR4.SMEP/CR4.SMAP: guest execution does not enforce them \
             (SMEP probe faulted: {smep_enforced}, SMAP probe faulted: {smap_enforced}); \
             the guest-mm unit tests cover them"
        );
    }
    if caps.pke {
        println!("CR4.PKE: the CPU has PKU, in the matrix with random PKRU and keys");
    } else {
        println!("SKIPPED dimension CR4.PKE: the CPU (as KVM exposes it) has no PKU; the guest-mm unit tests cover it");
    }
    if !host.nx {
        panic!("the walker_vs_kvm_access matrix needs NX (EFER.NXE)");
    }

    let seed = std::env::var("WALKER_ACCESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x005e_edac_ce55_u64);
    let cases = make_cases(caps, seed);
    let shadow =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("shadow memory");

    let start = Instant::now();
    let mut mismatches: Vec<Mismatch> = Vec::new();
    let mut ad_checked = 0usize;
    let mut ad_changed = 0usize;
    let mut faults = 0usize;
    let mut by_sweep: Vec<(&str, usize)> = Vec::new();
    let mut current_pkru = None;
    let mut deviations: Vec<(KvmDeviation, usize)> = Vec::new();
    let vendor = g.cpuid_vendor().expect("CPUID vendor");
    let amd = vendor == "AuthenticAMD";
    for (n, c) in cases.iter().enumerate() {
        let prev = n.checked_sub(1).map(|p| cases[p]);
        match by_sweep.last_mut() {
            Some((name, n)) if *name == c.sweep => *n += 1,
            _ => by_sweep.push((c.sweep, 1)),
        }
        if caps.pke && current_pkru != Some(c.pkru) {
            g.set_pkru(c.pkru).expect("set PKRU");
            current_pkru = Some(c.pkru);
        }
        let writes: Vec<(u64, u64)> = c.entry_gpas().into_iter().zip(c.entries).collect();
        g.write_entries(&writes).expect("entry writes");
        if c.setup.kind == AccessKind::Fetch {
            // The code goes where the leaf's address bits point (a case may
            // have set an address bit), whatever the walker says.
            if let Some(gpa) = leaf_target(c) {
                g.write_bytes(gpa, integration_tests::guest_exec::CODE_AT_TARGET)
                    .expect("target code");
            }
        }
        let sregs = g.sregs_for(&c.setup).expect("sregs");
        let ctx = context_from_sregs(
            &sregs,
            ExtraPagingRegs {
                rflags: GuestExec::rflags_for(&c.setup),
                pkru: c.pkru,
                pkrs: 0,
            },
            host.maxphyaddr,
            features,
        );
        let access = Access::new(
            c.setup.kind,
            if c.setup.user {
                Privilege::User
            } else {
                Privilege::Supervisor
            },
        );
        let walk = translate(&g.vm.mem, &ctx, c.setup.va, access);
        let expected = expected_from(&walk, c);
        snapshot(&g.vm.mem, &shadow);
        let observed = g.access(&c.setup, &sregs).expect("guest access");
        if !matches!(observed, Outcome::Done) {
            faults += 1;
        }
        let walker = match &walk {
            Ok(t) => format!("ok gpa {:#x} {:?} {:?}", t.gpa, t.page_size, t.perms),
            Err(f) => f.to_string(),
        };
        if !observed_matches(&expected, &observed) {
            if let Some(class) = classify(c, &ctx, access, amd, &observed) {
                match deviations.iter_mut().find(|(k, _)| *k == class) {
                    Some((_, n)) => *n += 1,
                    None => deviations.push((class, 1)),
                }
                continue;
            }
            let observed = match observed {
                Outcome::Exception {
                    cr2: CR2_SENTINEL,
                    vector,
                    error_code,
                    rip,
                } => format!(
                    "vector {vector} error code {error_code:x?} rip {rip:#x}, CR2 not written"
                ),
                o => format!("{o:x?}"),
            };
            mismatches.push(Mismatch {
                prev,
                case: *c,
                expected,
                walker,
                observed,
            });
            continue;
        }
        if observed == Outcome::Done {
            // Accessed/Dirty: what the CPU wrote vs what touch writes into a
            // copy of the tables as they were before the access.
            let t = touch(&shadow, &ctx, c.setup.va, access);
            let used = match c.leaf {
                Leaf::Pte4K => 4,
                Leaf::Pde2M => 3,
            };
            let gpas = c.entry_gpas();
            let cpu: Vec<u64> = gpas[..used].iter().map(|&a| g.r64(a).unwrap()).collect();
            let ours: Vec<u64> = gpas[..used]
                .iter()
                .map(|&a| shadow.read_obj::<u64>(GuestAddress(a)).unwrap())
                .collect();
            ad_checked += 1;
            if cpu
                .iter()
                .zip(&c.entries)
                .any(|(now, before)| now != before)
            {
                ad_changed += 1;
            }
            if t.is_err() || cpu != ours {
                mismatches.push(Mismatch {
                    prev,
                    case: *c,
                    expected,
                    walker: format!(
                        "touch {:x?}: entries after {ours:x?}",
                        t.map_err(|e| match e {
                            TouchError::Fault(f) => f.to_string(),
                            TouchError::Contended => "contended".into(),
                        })
                    ),
                    observed: format!("access done, CPU left entries {cpu:x?}"),
                });
            }
        }
    }
    let elapsed = start.elapsed();

    integration_tests::report(&format!(
        "walker-vs-kvm access: {} cases, {} mismatches",
        cases.len(),
        mismatches.len()
    ));
    for (name, n) in &by_sweep {
        println!("  sweep {name}: {n} cases");
    }
    println!(
        "  {faults} faulted, {} completed ({ad_checked} with A/D compared against touch, \
         {ad_changed} of them with A or D set by the CPU); \
         {:.1} s, {:.0} us per case; seed {seed:#x}",
        cases.len() - faults,
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / cases.len() as f64
    );
    for (class, n) in &deviations {
        println!("  KVM deviates from the SDM ({class:?}): {n} cases, classified, not mismatches");
    }
    for m in mismatches
        .iter()
        .take(std::env::var("SHOW_ALL").map(|_| 1000).unwrap_or(8))
    {
        println!("MISMATCH\n{m}");
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches between the walker and guest execution",
        mismatches.len()
    );
    assert!(cases.len() >= 2000);
}
