// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest execution as an oracle: a tiny 4-level long-mode guest, set up
//! entirely by the host through KVM_SET_SREGS / KVM_SET_REGS (no boot code),
//! that makes one memory access (read, write or instruction fetch) at CPL 3 or
//! CPL 0 and reports either "done" (an `out` to a port) or the exception it
//! took (an IDT handler that just executes HLT; the host reads CR2 from the
//! special registers and the error code and faulting RIP from the exception
//! frame on the CPL 0 stack).
//!
//! Everything the guest needs (stubs, handlers, GDT, IDT, TSS, stacks, the
//! page tables themselves) is identity-mapped by fixed page tables in the
//! first 2 MiB. Only the entries that translate the *target* address vary:
//! one PML4E (any index but 0), then a PDPTE, a PDE and a PTE in tables of
//! their own ([`TARGET_PDPT`], [`TARGET_PD`], [`TARGET_PT`]). The target
//! pages live at [`DATA_BASE`] (2 MiB aligned, so a 2 MiB leaf can map it).
//!
//! Changing the target entries is done by the guest itself (see
//! [`GuestExec::write_entries`]): a CPL 0 stub stores the four values and
//! reloads CR3. This is how an OS does it, and it is what makes the new
//! entries visible under every KVM MMU: with shadow paging KVM write-protects
//! the guest's page tables and learns about changes through the guest's own
//! (trapped) stores and TLB flushes, so stores made by the host straight into
//! guest memory could leave stale shadow entries behind.
//!
//! CPL 0 code is kept to a handful of plain instructions, because on the
//! software KVM of the CI machines it is emulated (DESIGN section 2).

use guest_mm::paging::context::{
    CR0_PG, CR0_WP, CR4_PAE, CR4_PKE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_LME, EFER_NXE, RFLAGS_AC,
};
use guest_mm::paging::AccessKind;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::VcpuExit;
use vm_memory::{Bytes, GuestAddress};

use crate::kvm::{TestVm, VmError};

/// The PML4 (CR3).
pub const PML4: u64 = 0x1000;
const LOW_PDPT: u64 = 0x2000;
const LOW_PD: u64 = 0x3000;
const LOW_PT: u64 = 0x4000;
/// The PDPT the target's PML4E points to.
pub const TARGET_PDPT: u64 = 0x5000;
/// The page directory the target's PDPTE points to.
pub const TARGET_PD: u64 = 0x6000;
/// The page table the target's PDE points to (when it is not a 2 MiB leaf).
pub const TARGET_PT: u64 = 0x7000;
const GDT: u64 = 0x8000;
const IDT: u64 = 0x9000;
const TSS: u64 = 0xa000;
/// Offset of the I/O permission bitmap in the TSS.
const TSS_IOPB: u64 = 0x68;
/// TSS limit: the 64-bit TSS, 32 bytes of bitmap and the terminator byte.
const TSS_LIMIT: u64 = TSS_IOPB + 32;
const HANDLERS: u64 = 0xb000;
const SUPER_STUB: u64 = 0xc000;
const USER_STUB: u64 = 0xd000;
const SUPER_STACK: u64 = 0xe000;
const USER_STACK: u64 = 0xf000;
/// A supervisor page the entry-writing stub stores to when fewer than four
/// entries are written.
const SCRATCH: u64 = 0x10000;
/// Highest page (exclusive) of the identity-mapped, fixed region.
const FIXED_END: u64 = 0x11000;
/// The 2 MiB-aligned guest-physical region target leaves map.
pub const DATA_BASE: u64 = 0x40_0000;
/// Guest RAM needed.
pub const MEM_BYTES: usize = 0x80_0000;

/// Port the data-access stubs write to after the access completed.
pub const PORT_DATA_DONE: u16 = 0xe0;
/// Port the fetched target instruction writes to.
pub const PORT_FETCH_DONE: u16 = 0xe1;

// Offsets of the stubs in their (user or supervisor) code page.
const STUB_READ: u64 = 0x00;
const STUB_WRITE: u64 = 0x10;
const STUB_FETCH: u64 = 0x20;
const STUB_PREPARE: u64 = 0x40;

/// `mov rax,[rbx]; out 0xe0,al; hlt`.
const CODE_READ: &[u8] = &[0x48, 0x8b, 0x03, 0xe6, PORT_DATA_DONE as u8, 0xf4];
/// `mov [rbx],rax; out 0xe0,al; hlt`.
const CODE_WRITE: &[u8] = &[0x48, 0x89, 0x03, 0xe6, PORT_DATA_DONE as u8, 0xf4];
/// `jmp rbx`.
const CODE_FETCH: &[u8] = &[0xff, 0xe3];
/// What the fetch target holds: `out 0xe1,al; hlt`.
pub const CODE_AT_TARGET: &[u8] = &[0xe6, PORT_FETCH_DONE as u8, 0xf4];
/// `mov [r8],r12; mov [r9],r13; mov [r10],r14; mov [r11],r15;
/// mov rax,cr3; mov cr3,rax; hlt`.
const CODE_PREPARE: &[u8] = &[
    0x4d, 0x89, 0x20, 0x4d, 0x89, 0x29, 0x4d, 0x89, 0x32, 0x4d, 0x89, 0x3b, 0x0f, 0x20, 0xd8, 0x0f,
    0x22, 0xd8, 0xf4,
];

const PTE_P: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_US: u64 = 4;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;

const SEL_CODE0: u16 = 0x08;
const SEL_DATA0: u16 = 0x10;
const SEL_CODE3: u16 = 0x18 | 3;
const SEL_DATA3: u16 = 0x20 | 3;
const SEL_TSS: u16 = 0x28;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const RFLAGS_FIXED: u64 = 1 << 1;
const RFLAGS_IOPL3: u64 = 3 << 12;

/// Sentinel CR2 value set before every run, to catch a #PF report that did
/// not come with a CR2 write.
pub const CR2_SENTINEL: u64 = 0xdead_b000;

/// Vectors that push an error code in 64-bit mode.
fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21)
}

/// The control state and the access of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessSetup {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// CPL 3 (user) or CPL 0 (supervisor).
    pub user: bool,
    /// The linear address accessed.
    pub va: u64,
    /// CR0.WP.
    pub wp: bool,
    /// EFER.NXE.
    pub nxe: bool,
    /// CR4.SMEP.
    pub smep: bool,
    /// CR4.SMAP.
    pub smap: bool,
    /// CR4.PKE.
    pub pke: bool,
    /// RFLAGS.AC.
    pub ac: bool,
}

/// What the guest reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The access completed.
    Done,
    /// An exception was delivered to its IDT handler.
    Exception {
        /// The vector.
        vector: u8,
        /// The error code pushed, for vectors that push one.
        error_code: Option<u64>,
        /// The faulting instruction's RIP, from the exception frame.
        rip: u64,
        /// CR2 after the exception ([`CR2_SENTINEL`] if it was not written).
        cr2: u64,
    },
}

/// A guest that makes single memory accesses on request.
pub struct GuestExec {
    /// The VM (its memory is where the page tables live).
    pub vm: TestVm,
    /// Whether CPUID leaf 7 was changed to advertise SMEP and SMAP.
    pub forced_smep_smap: bool,
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> VmError {
    VmError::Setup(format!("{what}: {e}"))
}

impl GuestExec {
    /// Build the fixed part of the guest in `vm`'s memory (which must be at
    /// least [`MEM_BYTES`]). With `force_smep_smap`, the guest CPUID is
    /// changed to advertise SMEP and SMAP even where KVM_GET_SUPPORTED_CPUID
    /// does not list them, so that KVM_SET_SREGS accepts CR4.SMEP/SMAP (the
    /// caller must find out whether they are then enforced).
    pub fn new(vm: TestVm, force_smep_smap: bool) -> Result<Self, VmError> {
        if force_smep_smap {
            let mut cpuid = vm
                .vcpu
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .map_err(|e| setup_err("KVM_GET_CPUID2", e))?;
            for e in cpuid.as_mut_slice() {
                if e.function == 7 && e.index == 0 {
                    e.ebx |= (1 << 7) | (1 << 20);
                }
            }
            vm.vcpu
                .set_cpuid2(&cpuid)
                .map_err(|e| setup_err("KVM_SET_CPUID2 (SMEP/SMAP)", e))?;
        }
        let g = GuestExec {
            vm,
            forced_smep_smap: force_smep_smap,
        };
        g.build()?;
        Ok(g)
    }

    fn w64(&self, gpa: u64, v: u64) -> Result<(), VmError> {
        self.vm
            .mem
            .write_obj(v, GuestAddress(gpa))
            .map_err(|e| setup_err("guest memory write", e))
    }

    /// Read a u64 of guest memory.
    pub fn r64(&self, gpa: u64) -> Result<u64, VmError> {
        self.vm
            .mem
            .read_obj(GuestAddress(gpa))
            .map_err(|e| setup_err("guest memory read", e))
    }

    /// Write bytes to guest memory (data pages only: page-table changes go
    /// through [`GuestExec::write_entries`]).
    pub fn write_bytes(&self, gpa: u64, bytes: &[u8]) -> Result<(), VmError> {
        self.vm
            .mem
            .write_slice(bytes, GuestAddress(gpa))
            .map_err(|e| setup_err("guest memory write", e))
    }

    fn build(&self) -> Result<(), VmError> {
        // Fixed tables. Upper levels allow everything (user, writable,
        // executable) so that each fixed leaf alone decides; A and D are
        // preset so the CPU never has to write them.
        let upper = PTE_P | PTE_RW | PTE_US | PTE_A;
        self.w64(PML4, LOW_PDPT | upper)?;
        self.w64(LOW_PDPT, LOW_PD | upper)?;
        self.w64(LOW_PD, LOW_PT | upper)?;
        let mut page = 0x1000;
        while page < FIXED_END {
            let user = page == USER_STUB || page == USER_STACK;
            let flags = PTE_P | PTE_RW | PTE_A | PTE_D | if user { PTE_US } else { 0 };
            self.w64(LOW_PT + (page >> 12) * 8, page | flags)?;
            page += 0x1000;
        }
        // GDT: null, code64 DPL0, data DPL0, code64 DPL3, data DPL3, TSS.
        let gdt = [
            0u64,
            0x00af_9a00_0000_ffff,
            0x00cf_9200_0000_ffff,
            0x00af_fa00_0000_ffff,
            0x00cf_f200_0000_ffff,
        ];
        for (i, d) in gdt.iter().enumerate() {
            self.w64(GDT + 8 * i as u64, *d)?;
        }
        let tss_limit = TSS_LIMIT;
        let tss_lo = (tss_limit & 0xffff)
            | (TSS & 0xff_ffff) << 16
            | 0x8b << 40
            | ((tss_limit >> 16) & 0xf) << 48
            | ((TSS >> 24) & 0xff) << 56;
        self.w64(GDT + u64::from(SEL_TSS), tss_lo)?;
        self.w64(GDT + u64::from(SEL_TSS) + 8, TSS >> 32)?;
        // TSS: RSP0 at offset 4; an I/O permission bitmap right after the
        // 0x68-byte TSS allowing ports 0-255 (all zero bits) and ending with
        // the required all-ones byte. With RFLAGS.IOPL = 3 the bitmap is not
        // consulted on hardware; it is there for monitors that emulate `out`
        // with their own view of IOPL.
        self.w64(TSS + 4, SUPER_STACK + 0x1000)?;
        self.write_bytes(TSS + 0x66, &(TSS_IOPB as u16).to_le_bytes())?;
        self.write_bytes(TSS + TSS_IOPB, &[0; 32])?;
        self.write_bytes(TSS + TSS_IOPB + 32, &[0xff])?;
        // IDT: vector v goes to a one-byte HLT at HANDLERS + v, through a
        // 64-bit interrupt gate (type 0xe, DPL 0, present).
        for v in 0..256u64 {
            let off = HANDLERS + v;
            let lo = (off & 0xffff)
                | u64::from(SEL_CODE0) << 16
                | 0x8e << 40
                | ((off >> 16) & 0xffff) << 48;
            self.w64(IDT + 16 * v, lo)?;
            self.w64(IDT + 16 * v + 8, off >> 32)?;
        }
        self.write_bytes(HANDLERS, &[0xf4; 256])?;
        for base in [SUPER_STUB, USER_STUB] {
            self.write_bytes(base + STUB_READ, CODE_READ)?;
            self.write_bytes(base + STUB_WRITE, CODE_WRITE)?;
            self.write_bytes(base + STUB_FETCH, CODE_FETCH)?;
        }
        self.write_bytes(SUPER_STUB + STUB_PREPARE, CODE_PREPARE)?;
        Ok(())
    }

    /// The special registers for a run with the control state of `s`.
    pub fn sregs_for(&self, s: &AccessSetup) -> Result<kvm_sregs, VmError> {
        let mut sregs = self
            .vm
            .vcpu
            .get_sregs()
            .map_err(|e| setup_err("KVM_GET_SREGS", e))?;
        let dpl = if s.user { 3 } else { 0 };
        let cs = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: if s.user { SEL_CODE3 } else { SEL_CODE0 },
            type_: 0xb,
            present: 1,
            dpl,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        crate::kvm::set_flat_segments(&mut sregs, cs, if s.user { SEL_DATA3 } else { SEL_DATA0 });
        sregs.tr = kvm_segment {
            base: TSS,
            limit: TSS_LIMIT as u32,
            selector: SEL_TSS,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 0,
            l: 0,
            g: 0,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.ldt = kvm_segment {
            unusable: 1,
            ..Default::default()
        };
        sregs.gdt.base = GDT;
        sregs.gdt.limit = (u64::from(SEL_TSS) + 16 - 1) as u16;
        sregs.idt.base = IDT;
        sregs.idt.limit = 256 * 16 - 1;
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG | if s.wp { CR0_WP } else { 0 };
        sregs.cr2 = CR2_SENTINEL;
        sregs.cr3 = PML4;
        let mut cr4 = CR4_PAE;
        if s.smep {
            cr4 |= CR4_SMEP;
        }
        if s.smap {
            cr4 |= CR4_SMAP;
        }
        if s.pke {
            cr4 |= CR4_PKE;
        }
        sregs.cr4 = cr4;
        sregs.efer = EFER_LME | EFER_LMA | if s.nxe { EFER_NXE } else { 0 };
        Ok(sregs)
    }

    /// The RFLAGS a run with `s` uses: IOPL 3 (so `out` is allowed at CPL 3
    /// on real hardware), interrupts off, AC as asked.
    pub fn rflags_for(s: &AccessSetup) -> u64 {
        RFLAGS_FIXED | RFLAGS_IOPL3 | if s.ac { RFLAGS_AC } else { 0 }
    }

    fn set_state(&self, sregs: &kvm_sregs, regs: &kvm_regs) -> Result<(), VmError> {
        self.vm
            .vcpu
            .set_sregs(sregs)
            .map_err(|e| setup_err("KVM_SET_SREGS", e))?;
        let back = self
            .vm
            .vcpu
            .get_sregs()
            .map_err(|e| setup_err("KVM_GET_SREGS", e))?;
        if (back.cr0, back.cr4, back.efer) != (sregs.cr0, sregs.cr4, sregs.efer) {
            return Err(VmError::Setup(format!(
                "KVM_SET_SREGS did not take: cr0/cr4/efer {:#x}/{:#x}/{:#x} read back as {:#x}/{:#x}/{:#x}",
                sregs.cr0, sregs.cr4, sregs.efer, back.cr0, back.cr4, back.efer
            )));
        }
        self.vm
            .vcpu
            .set_regs(regs)
            .map_err(|e| setup_err("KVM_SET_REGS", e))
    }

    /// Have the guest store `writes` (up to four `(gpa, value)` pairs, each
    /// an 8-byte store into the identity-mapped fixed region) at CPL 0 and
    /// then reload CR3, flushing its non-global translations.
    pub fn write_entries(&mut self, writes: &[(u64, u64)]) -> Result<(), VmError> {
        if writes.len() > 4 {
            return Err(VmError::Setup("at most four entry writes".into()));
        }
        if let Some(&(gpa, _)) = writes.iter().find(|(gpa, _)| *gpa >= FIXED_END) {
            return Err(VmError::Setup(format!("entry {gpa:#x} is not mapped")));
        }
        let s = AccessSetup {
            kind: AccessKind::Write,
            user: false,
            va: 0,
            wp: true,
            nxe: false,
            smep: false,
            smap: false,
            pke: false,
            ac: false,
        };
        let sregs = self.sregs_for(&s)?;
        let slot = |i: usize| writes.get(i).copied().unwrap_or((SCRATCH, 0));
        let regs = kvm_regs {
            rip: SUPER_STUB + STUB_PREPARE,
            rsp: SUPER_STACK + 0x1000,
            rflags: RFLAGS_FIXED,
            r8: slot(0).0,
            r12: slot(0).1,
            r9: slot(1).0,
            r13: slot(1).1,
            r10: slot(2).0,
            r14: slot(2).1,
            r11: slot(3).0,
            r15: slot(3).1,
            ..Default::default()
        };
        self.set_state(&sregs, &regs)?;
        let exit = self
            .vm
            .vcpu
            .run()
            .map_err(|e| setup_err("KVM_RUN (entry writes)", e))?;
        let ok = matches!(exit, VcpuExit::Hlt);
        let what = format!("{exit:?}");
        let rip = self
            .vm
            .vcpu
            .get_regs()
            .map_err(|e| setup_err("KVM_GET_REGS", e))?
            .rip;
        if !ok || rip != SUPER_STUB + STUB_PREPARE + CODE_PREPARE.len() as u64 {
            return Err(VmError::Setup(format!(
                "entry-writing stub ended with {what} at rip {rip:#x}"
            )));
        }
        for &(gpa, value) in writes {
            let now = self.r64(gpa)?;
            if now != value {
                return Err(VmError::Setup(format!(
                    "entry at {gpa:#x} holds {now:#x} after the guest stored {value:#x}"
                )));
            }
        }
        Ok(())
    }

    /// Make the access `s` describes, with `sregs` (from
    /// [`GuestExec::sregs_for`], possibly adjusted) and RFLAGS from
    /// [`GuestExec::rflags_for`], and report what happened.
    pub fn access(&mut self, s: &AccessSetup, sregs: &kvm_sregs) -> Result<Outcome, VmError> {
        let base = if s.user { USER_STUB } else { SUPER_STUB };
        let rip = base
            + match s.kind {
                AccessKind::Read => STUB_READ,
                AccessKind::Write => STUB_WRITE,
                AccessKind::Fetch => STUB_FETCH,
            };
        let stack = if s.user { USER_STACK } else { SUPER_STACK };
        let frame_top = SUPER_STACK + 0x1000;
        // Clear the exception-frame area so nothing stale can be read back.
        self.write_bytes(frame_top - 0x100, &[0; 0x100])?;
        let regs = kvm_regs {
            rip,
            rbx: s.va,
            rax: 0x5a5a_5a5a_5a5a_5a5a,
            rsp: stack + 0x1000,
            rflags: Self::rflags_for(s),
            ..Default::default()
        };
        self.set_state(sregs, &regs)?;
        let exit = self
            .vm
            .vcpu
            .run()
            .map_err(|e| setup_err("KVM_RUN (access)", e))?;
        let expected_port = if s.kind == AccessKind::Fetch {
            PORT_FETCH_DONE
        } else {
            PORT_DATA_DONE
        };
        let outcome = match exit {
            VcpuExit::IoOut(port, _) if port == expected_port => return Ok(Outcome::Done),
            VcpuExit::Hlt => None,
            other => Some(format!("{other:?}")),
        };
        let regs = self
            .vm
            .vcpu
            .get_regs()
            .map_err(|e| setup_err("KVM_GET_REGS", e))?;
        if let Some(what) = outcome {
            return Err(VmError::Setup(format!(
                "unexpected exit {what} at rip {:#x} for {s:x?}",
                regs.rip
            )));
        }
        let Some(vector) = regs
            .rip
            .checked_sub(HANDLERS + 1)
            .filter(|v| *v < 256)
            .map(|v| v as u8)
        else {
            return Err(VmError::Setup(format!(
                "HLT outside the handlers at rip {:#x} for {s:x?}",
                regs.rip
            )));
        };
        let sregs = self
            .vm
            .vcpu
            .get_sregs()
            .map_err(|e| setup_err("KVM_GET_SREGS", e))?;
        let (error_code, rip_at) = if has_error_code(vector) {
            (Some(self.r64(regs.rsp)?), regs.rsp + 8)
        } else {
            (None, regs.rsp)
        };
        Ok(Outcome::Exception {
            vector,
            error_code,
            rip: self.r64(rip_at)?,
            cr2: sregs.cr2,
        })
    }

    /// The vendor string of the guest CPUID (leaf 0: EBX, EDX, ECX).
    pub fn cpuid_vendor(&self) -> Result<String, VmError> {
        let cpuid = self
            .vm
            .vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| setup_err("KVM_GET_CPUID2", e))?;
        let l0 = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0)
            .copied()
            .unwrap_or_default();
        let bytes: Vec<u8> = [l0.ebx, l0.edx, l0.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Offset of PKRU in the standard-format XSAVE area (CPUID leaf 0DH,
    /// sub-leaf 9, EBX), if the guest CPUID has the PKRU state component.
    fn pkru_offset(&self) -> Option<usize> {
        let cpuid = self.vm.vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).ok()?;
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0xd && e.index == 9 && e.eax >= 4 && e.ebx >= 576)
            .map(|e| e.ebx as usize)
    }

    /// Whether [`GuestExec::set_pkru`] can work: the guest CPUID describes
    /// the PKRU state component.
    pub fn pkru_supported(&self) -> bool {
        self.pkru_offset().is_some()
    }

    /// Set the guest's PKRU through KVM_SET_XSAVE (so no CPL 0 WRPKRU is
    /// needed), and check it reads back.
    pub fn set_pkru(&self, pkru: u32) -> Result<(), VmError> {
        let off = self
            .pkru_offset()
            .ok_or_else(|| VmError::Setup("no PKRU state component in CPUID".into()))?;
        let mut xsave = self
            .vm
            .vcpu
            .get_xsave()
            .map_err(|e| setup_err("KVM_GET_XSAVE", e))?;
        // XSTATE_BV is the first u64 of the XSAVE header at byte 512; PKRU
        // is state component 9.
        const XSTATE_BV: usize = 512 / 4;
        if off / 4 >= xsave.region.len() {
            return Err(VmError::Setup(format!(
                "PKRU offset {off} beyond kvm_xsave"
            )));
        }
        xsave.region[XSTATE_BV] |= 1 << 9;
        xsave.region[off / 4] = pkru;
        // SAFETY: `xsave` is the buffer KVM_GET_XSAVE just filled for this
        // vCPU, with only the PKRU component (and its XSTATE_BV bit) changed.
        unsafe { self.vm.vcpu.set_xsave(&xsave) }.map_err(|e| setup_err("KVM_SET_XSAVE", e))?;
        let back = self
            .vm
            .vcpu
            .get_xsave()
            .map_err(|e| setup_err("KVM_GET_XSAVE", e))?;
        if back.region[off / 4] != pkru {
            return Err(VmError::Setup(format!(
                "PKRU reads back as {:#x}, set {pkru:#x}",
                back.region[off / 4]
            )));
        }
        Ok(())
    }

    /// Guest-physical address of the page-table entry at `index` of the table
    /// at `table`.
    pub fn entry_gpa(table: u64, index: u64) -> u64 {
        table + (index & 0x1ff) * 8
    }

    /// The RIP of the access stub for `s` (the instruction that faults for a
    /// data access; the `jmp` for a fetch, whose fault is at the target).
    pub fn stub_rip(s: &AccessSetup) -> u64 {
        let base = if s.user { USER_STUB } else { SUPER_STUB };
        base + match s.kind {
            AccessKind::Read => STUB_READ,
            AccessKind::Write => STUB_WRITE,
            AccessKind::Fetch => STUB_FETCH,
        }
    }
}
