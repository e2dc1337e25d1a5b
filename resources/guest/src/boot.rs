// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The CPL0 part of the guest: the PVH note, the 32-bit entry, the switch to
//! long mode, the descriptor tables, the page tables and the exception entry
//! points. Everything else runs at CPL3.
//!
//! On the development machine every CPL0 instruction is emulated (about 1 us
//! each, and some instructions are not emulated at all), so this part is
//! plain integer code plus the few system instructions it needs, and the
//! page tables are assembled into the image instead of being built at run
//! time. About 390 instructions run at CPL0 from the entry to the IRETQ to
//! CPL3 (320 of them the 32-iteration IDT loop: well under a millisecond even
//! emulated), and about 35 per exception.
//!
//! Memory map (virtual, all user-accessible unless stated; identity map means
//! virtual == physical):
//!
//! | virtual | maps | leaves |
//! |---|---|---|
//! | `0` | not present (null page) | |
//! | `0x1000..0x20_0000` | identity | 4K |
//! | `0x20_0000..0x4000_0000` | identity | 2M |
//! | [`ALIAS_4K`] | [`test_page`], read/write | 4K |
//! | [`ALIAS_4K`] + 0x1000 | [`test_page`], supervisor only | 4K |
//! | [`ALIAS_4K`] + 0x2000 | [`test_page`], read-only | 4K |
//! | [`ALIAS_4K`] + 0x3000.. | not present | |
//! | [`ALIAS_2M`] | physical [`ALIAS_2M_TARGET`] | 2M |
//! | [`LAZY_BASE`] `..+2M` | physical [`LAZY_PHYS`], mapped page by page on demand (see below) | 4K |
//! | [`HIGH_ALIAS`] `..+1G` | physical `0..1G`: one 1G leaf when CPUID reports 1-GByte pages, else the identity PD (4K/2M) | 1G or 4K/2M |
//! | [`MMIO_WINDOW`] `..4G` | identity, uncached (PCD, PWT): MMIO devices | 2M |
//! | everything else | not present | |
//!
//! Segments: [`KERNEL_CS`], kernel data 0x10, [`USER_DS`], [`USER_CS`], and a
//! 64-bit TSS at 0x28 whose RSP0 is the kernel stack and whose I/O permission
//! bitmap allows ports 0x64 (i8042), 0xf4..0xf7 (exit port), 0xf8 (the
//! VMM's guest agent, see [`crate::agent`]) and 0x3f8..0x3ff (COM1) and
//! nothing else. CPL3 runs with RFLAGS.IOPL = 3 as well: on real
//! hardware IOPL alone allows the port I/O, some software KVMs check only the
//! bitmap.
//!
//! IDT: vectors 0..31 are interrupt gates (DPL0) to per-vector stubs that
//! record the exception in [`trap_record`] (with CR0, CR4 and the handler's
//! CS, so that CPL3 learns them by causing an exception) and resume at its
//! `fixup` address when one is set, or else at
//! [`guest_unexpected_trap`](crate::guest_unexpected_trap) on a fresh CPL3
//! stack. A #PF in the lazy region ([`LAZY_BASE`], 2 MiB, every 4K PTE of
//! [`lazy_pt`] not present at first) is demand paging instead: when
//! [`lazy_policy`] has nonzero PTE flags for the page, the handler writes
//! the PTE (physical [`LAZY_PHYS`] + the page's offset, those flags),
//! INVLPGs it, counts it in [`lazy_faults`] and returns to the faulting
//! instruction, which restarts (about 25 emulated instructions); a page
//! whose policy is 0 takes the ordinary path (fixup or report). Vector [`GATE_INFO_VECTOR`] (DPL3) returns CR0, CR4, the handler's
//! CS and the caller's CS, RFLAGS and SS as the CPU pushed them (kvm_pvm
//! raises #UD for `int N` at CPL3 instead, so nothing depends on it).
//!
//! All memory, the descriptor tables and page tables included, is
//! user-accessible except the supervisor test alias: this is a test program
//! with no isolation to keep, and the last-resort stop (clear the IDT from
//! CPL3, then fault: a triple fault) relies on it.

use core::arch::global_asm;

/// Selector of the 64-bit CPL0 code segment.
pub const KERNEL_CS: u64 = 0x08;
/// Selector of the CPL3 data/stack segment (RPL 3).
pub const USER_DS: u64 = 0x1b;
/// Selector of the 64-bit CPL3 code segment (RPL 3).
pub const USER_CS: u64 = 0x23;
/// RFLAGS at CPL3: IOPL 3, reserved bit 1, interrupts off.
pub const USER_RFLAGS: u64 = 0x3002;
/// Virtual address of the 4K aliases of [`test_page`] (see the module doc).
pub const ALIAS_4K: u64 = 0x4000_0000;
/// Virtual address of the 2M alias.
pub const ALIAS_2M: u64 = 0x4020_0000;
/// Physical address the 2M alias maps.
pub const ALIAS_2M_TARGET: u64 = 0x60_0000;
/// Virtual address of the 1 GiB alias of physical `0..1G`.
pub const HIGH_ALIAS: u64 = 0x8000_0000;
/// Start of the identity-mapped, uncached 1 GiB window (`0xc000_0000..4G`)
/// where the VMMs put MMIO devices (ours at `0xd000_0000`, QEMU's microvm
/// near `0xfeb0_0000`).
pub const MMIO_WINDOW: u64 = 0xc000_0000;
/// Bytes of the MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x4000_0000;
/// DPL3 gate: returns CR0, CR4, the handler's CS and the caller's CS,
/// RFLAGS and SS (see the module doc).
pub const GATE_INFO_VECTOR: u8 = 0x40;
/// Bytes of the CPL0 (kernel) stack.
pub const KERNEL_STACK_SIZE: u64 = 0x4000;
/// Virtual address of the lazy region (demand paging, see the module doc).
pub const LAZY_BASE: u64 = 0x4400_0000;
/// Bytes of the lazy region (one page table).
pub const LAZY_SIZE: u64 = 0x20_0000;
/// Physical address the lazy region's pages map (12..14 MiB: not the
/// image, the 2M alias target or the DMA arena).
pub const LAZY_PHYS: u64 = 0xc0_0000;

/// What the exception entry records, read and written at CPL3 too.
#[repr(C)]
pub struct TrapRecord {
    /// Exception vector.
    pub vector: u64,
    /// Error code (0 for vectors without one).
    pub error: u64,
    /// CR2 at the time of the exception.
    pub cr2: u64,
    /// RIP of the faulting instruction.
    pub rip: u64,
    /// CS of the interrupted code.
    pub cs: u64,
    /// Number of exceptions taken so far.
    pub count: u64,
    /// Where to resume after the next exception (0: report it and stop).
    pub fixup: u64,
    /// RSP in the handler: on the kernel stack when the TSS did its job.
    pub handler_rsp: u64,
    /// RFLAGS of the interrupted code.
    pub rflags: u64,
    /// SS of the interrupted code.
    pub ss: u64,
    /// CR0 in the handler.
    pub cr0: u64,
    /// CR4 in the handler.
    pub cr4: u64,
    /// CS of the handler.
    pub handler_cs: u64,
}

extern "C" {
    /// The last exception taken (written at CPL0, see [`TrapRecord`]).
    pub static mut trap_record: TrapRecord;
    /// Physical address of the PVH `hvm_start_info` (EBX at entry).
    pub static start_info_paddr: u64;
    /// CPUID.80000001H:EDX as CPL0 saw it (0 if the leaf is absent).
    pub static boot_cpuid_ext_edx: u32;
    /// The page-directory-pointer table (entry 2 is the [`HIGH_ALIAS`]).
    pub static boot_pdpt: [u64; 512];
    /// The PML4 (what CR3 holds: the guest's own page tables, which the
    /// guest-virtual DMA scenarios attach to the IOMMU).
    pub static boot_pml4: [u64; 512];
    /// A page aliased by the 4K test mappings.
    pub static mut test_page: [u64; 512];
    /// The IDT (256 gates of 16 bytes).
    pub static mut boot_idt: [u64; 512];
    /// Lowest address of the CPL0 stack.
    pub static kernel_stack: [u8; KERNEL_STACK_SIZE as usize];
    /// The lazy region's page table (all entries not present at boot).
    pub static mut lazy_pt: [u64; 512];
    /// Per lazy page: the PTE flags the #PF handler maps it with (0: it
    /// refuses the page). Written at CPL3.
    pub static mut lazy_policy: [u8; 512];
    /// #PFs the handler resolved by mapping a lazy page.
    pub static mut lazy_faults: u64;
    /// CR2 and error code of the last one.
    pub static mut lazy_last_cr2: u64;
    /// See [`lazy_last_cr2`].
    pub static mut lazy_last_error: u64;
}

// The image: note, 32-bit entry, 64-bit setup, exception entry, data.
global_asm!(
    r#"
    /* PVH entry note (owner "Xen", type 18 = XEN_ELFNOTE_PHYS32_ENTRY).
       The descriptor is 8 bytes wide like Linux's; loaders that read 4 bytes
       get the same (little-endian) address. */
    .section .note.pvh, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad _start

    .section .text.boot, "ax", @progbits
    .code32
    /* PVH: 32-bit protected mode, paging off, flat segments, EBX = start_info. */
    .globl _start
_start:
    cli
    movl %ebx, start_info_paddr
    lgdt boot_gdt_ptr
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    movl $kernel_stack_top, %esp

    /* The TSS base, split over the descriptor (the assembler cannot split a
       relocated address). */
    movl $boot_tss, %eax
    movw %ax, boot_gdt + 0x28 + 2
    shrl $16, %eax
    movb %al, boot_gdt + 0x28 + 4
    movb %ah, boot_gdt + 0x28 + 7

    /* A 1-GByte leaf for the high alias when CPUID.80000001H:EDX[26] says
       the CPU has 1-GByte pages (it is a reserved bit otherwise). */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb 1f
    movl $0x80000001, %eax
    cpuid
    movl %edx, boot_cpuid_ext_edx
    btl $26, %edx
    jnc 1f
    movl $0x87, boot_pdpt + 2 * 8
1:
    /* CR4: PAE, OSFXSR, OSXMMEXCPT. */
    movl %cr4, %eax
    orl $0x620, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    /* EFER.LME */
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    /* CR0: PG, WP, MP, PE set; EM and TS clear (SSE usable). */
    movl %cr0, %eax
    andl $0xfffffff3, %eax
    orl $0x80010003, %eax
    movl %eax, %cr0
    ljmp $0x08, $long_entry

    .code64
long_entry:
    movl $0x10, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    movq $kernel_stack_top, %rsp

    /* IDT vectors 0..31: DPL0 interrupt gates to the 16-byte stubs. The
       upper half of each gate stays zero (the image is below 4 GiB). */
    movl $boot_idt, %edi
    movl $trap_stubs, %eax
    movl $32, %ecx
2:
    movw %ax, (%rdi)
    movw $0x08, 2(%rdi)
    movw $0x8e00, 4(%rdi)
    movl %eax, %edx
    shrl $16, %edx
    movw %dx, 6(%rdi)
    addl $16, %eax
    addq $16, %rdi
    decl %ecx
    jnz 2b
    /* A DPL3 interrupt gate (int N from CPL3). */
    movl $gate_info, %eax
    movw %ax, boot_idt + {info_vector} * 16
    movw $0x08, boot_idt + {info_vector} * 16 + 2
    movw $0xee00, boot_idt + {info_vector} * 16 + 4
    shrl $16, %eax
    movw %ax, boot_idt + {info_vector} * 16 + 6
    lidt boot_idt_ptr
    movw $0x28, %ax
    ltr %ax

    /* To CPL3 with IOPL 3, on the user stack. */
    pushq ${user_ds}
    pushq $user_stack_top
    pushq ${user_rflags}
    pushq ${user_cs}
    pushq $user_entry
    iretq

    /* CPL3 entry points: a call keeps the ABI's stack alignment. */
user_entry:
    call guest_main
    ud2
user_trap_entry:
    call guest_unexpected_trap
    ud2

    /* Exception stubs, 16 bytes apart: push a zero error code for vectors
       without one (all but 8, 10-14, 17, 21, 29, 30), then the vector. */
    .balign 16
trap_stubs:
    .set .Lvec, 0
    .rept 32
    .balign 16
    .if ((0x60227d00 >> .Lvec) & 1) == 0
    pushq $0
    .endif
    pushq $.Lvec
    jmp trap_common
    .set .Lvec, .Lvec + 1
    .endr

    /* Stack: RAX, vector, error, RIP, CS, RFLAGS, RSP, SS. */
trap_common:
    pushq %rax
    cmpq $14, 8(%rsp)
    je lazy_fault
trap_record_it:
    movq %rsp, trap_record + 56
    movq 8(%rsp), %rax
    movq %rax, trap_record
    movq 16(%rsp), %rax
    movq %rax, trap_record + 8
    movq %cr2, %rax
    movq %rax, trap_record + 16
    movq 24(%rsp), %rax
    movq %rax, trap_record + 24
    movq 32(%rsp), %rax
    movq %rax, trap_record + 32
    movq 40(%rsp), %rax
    movq %rax, trap_record + 64
    movq 56(%rsp), %rax
    movq %rax, trap_record + 72
    movq %cr0, %rax
    movq %rax, trap_record + 80
    movq %cr4, %rax
    movq %rax, trap_record + 88
    movl %cs, %eax
    movq %rax, trap_record + 96
    incq trap_record + 40
    movq trap_record + 48, %rax
    testq %rax, %rax
    jz 3f
    /* Expected: resume at the fixup, same CS, stack and flags. */
    movq $0, trap_record + 48
    movq %rax, 24(%rsp)
    popq %rax
    addq $16, %rsp
    iretq
3:
    /* Unexpected: report it at CPL3 on a fresh user stack. */
    movq $user_trap_entry, 24(%rsp)
    movq ${user_cs}, 32(%rsp)
    movq ${user_rflags}, 40(%rsp)
    movq $user_stack_top, 48(%rsp)
    movq ${user_ds}, 56(%rsp)
    popq %rax
    addq $16, %rsp
    iretq

    /* #PF: demand paging in the lazy region. Stack: RAX, vector, error,
       RIP... With RBX pushed too: error at 24(%rsp). */
lazy_fault:
    movq %cr2, %rax
    subq ${lazy_base}, %rax
    cmpq ${lazy_size}, %rax
    jae trap_record_it
    shrq $12, %rax
    pushq %rbx
    movzbl lazy_policy(%rax), %ebx
    testl %ebx, %ebx
    jz 5f
    orq ${lazy_phys}, %rbx
    pushq %rax
    shlq $12, %rax
    orq %rax, %rbx
    popq %rax
    movq %rbx, lazy_pt(, %rax, 8)
    movq %cr2, %rax
    invlpg (%rax)
    movq %rax, lazy_last_cr2
    movq 24(%rsp), %rbx
    movq %rbx, lazy_last_error
    incq lazy_faults
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
5:
    /* Refused: the ordinary path (fixup, or report). */
    popq %rbx
    jmp trap_record_it

    /* GATE_INFO_VECTOR: RAX = CR0, RDX = CR4, RSI = CS of the handler, and
       the caller's CS, RFLAGS and SS (from the frame) in RDI, R8 and R9. */
gate_info:
    movq %cr0, %rax
    movq %cr4, %rdx
    movl %cs, %esi
    movq 8(%rsp), %rdi
    movq 16(%rsp), %r8
    movq 32(%rsp), %r9
    iretq

    .section .data.boot, "aw", @progbits
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff /* 0x08: code, 64-bit, DPL0 */
    .quad 0x00cf92000000ffff /* 0x10: data, DPL0 */
    .quad 0x00cff2000000ffff /* 0x18: data, DPL3 */
    .quad 0x00affa000000ffff /* 0x20: code, 64-bit, DPL3 */
    .quad 0x00008900000000e8 /* 0x28: 64-bit TSS, limit 0xe8, base set at boot */
    .quad 0
.Lgdt_end:
    .balign 8
    .word 0, 0, 0
boot_gdt_ptr:
    .word .Lgdt_end - boot_gdt - 1
    .quad boot_gdt
    .balign 8
    .word 0, 0, 0
boot_idt_ptr:
    .word 4095
    .quad boot_idt

    /* 64-bit TSS: RSP0 at 4, I/O map base at 102; the bitmap follows at 0x68.
       Bit n clear = port n allowed. Bytes 0..127 cover ports 0..0x3ff; ports
       above are beyond the limit (denied). The final 0xff byte is the
       terminator the CPU may read past the last byte. */
    .balign 16
boot_tss:
    .long 0
    .quad kernel_stack_top
    .fill 11, 8, 0
    .word 0
    .word 0x68
    .fill 12, 1, 0xff
    .byte 0xef               /* ports 0x60..0x67: 0x64 allowed */
    .fill 17, 1, 0xff
    .byte 0x0f               /* ports 0xf0..0xf7: 0xf4..0xf7 allowed */
    .byte 0xfe               /* ports 0xf8..0xff: 0xf8 (guest agent) allowed */
    .fill 95, 1, 0xff
    .byte 0x00               /* ports 0x3f8..0x3ff allowed */
    .byte 0xff

    /* Page tables, assembled into the image (no CPL0 loops). Flags: 0x7 =
       present, writable, user; 0x87 = the same plus PS (a 2M or 1G leaf). */
    .section .data.paging, "aw", @progbits
    .balign 4096
    .globl boot_pml4
boot_pml4:
    .quad boot_pdpt + 0x7
    .fill 511, 8, 0
    .globl boot_pdpt
boot_pdpt:
    .quad pd_low + 0x7       /* 0..1G: identity */
    .quad pd_alias + 0x7     /* 1G..2G: test aliases */
    .quad pd_low + 0x7       /* 2G..3G: high alias (1G leaf if CPUID allows) */
    .quad pd_mmio + 0x7      /* 3G..4G: identity, uncached (MMIO) */
    .fill 508, 8, 0
pd_low:
    .quad pt_low + 0x7
    .set .Laddr, 0x200000
    .rept 511
    .quad .Laddr + 0x87
    .set .Laddr, .Laddr + 0x200000
    .endr
pt_low:
    .quad 0                  /* the null page is not present */
    .set .Laddr, 0x1000
    .rept 511
    .quad .Laddr + 0x7
    .set .Laddr, .Laddr + 0x1000
    .endr
    /* 3G..4G: identity 2M leaves, 0x9f = present, writable, user, PWT,
       PCD, PS (PAT entry 3: uncached), where virtio-mmio devices live. */
pd_mmio:
    .set .Laddr, {mmio_window}
    .rept 512
    .quad .Laddr + 0x9f
    .set .Laddr, .Laddr + 0x200000
    .endr
pd_alias:
    .quad pt_alias + 0x7
    .quad {alias_2m_target} + 0x87 /* ALIAS_2M -> ALIAS_2M_TARGET */
    .fill 30, 8, 0
    .quad lazy_pt + 0x7      /* LAZY_BASE: demand paging */
    .fill 479, 8, 0
pt_alias:
    .quad test_page + 0x7    /* ALIAS_4K: user, writable */
    .quad test_page + 0x3    /* + 0x1000: supervisor only */
    .quad test_page + 0x5    /* + 0x2000: user, read-only */
    .fill 509, 8, 0

    .section .bss.boot, "aw", @nobits
    .balign 4096
    .globl test_page
test_page:
    .skip 4096
    .globl boot_idt
boot_idt:
    .skip 4096
    .globl lazy_pt
lazy_pt:
    .skip 4096
    .globl kernel_stack
kernel_stack:
    .skip {kernel_stack_size}
kernel_stack_top:
user_stack:
    .skip 0x10000
user_stack_top:
    .balign 8
    .globl trap_record
trap_record:
    .skip 104
    .globl start_info_paddr
start_info_paddr:
    .skip 8
    .globl boot_cpuid_ext_edx
boot_cpuid_ext_edx:
    .skip 4
    .balign 8
    .globl lazy_faults
lazy_faults:
    .skip 8
    .globl lazy_last_cr2
lazy_last_cr2:
    .skip 8
    .globl lazy_last_error
lazy_last_error:
    .skip 8
    .globl lazy_policy
lazy_policy:
    .skip 512

    .text
"#,
    user_cs = const USER_CS,
    info_vector = const GATE_INFO_VECTOR,
    user_ds = const USER_DS,
    user_rflags = const USER_RFLAGS,
    alias_2m_target = const ALIAS_2M_TARGET,
    mmio_window = const MMIO_WINDOW,
    kernel_stack_size = const KERNEL_STACK_SIZE,
    lazy_base = const LAZY_BASE,
    lazy_size = const LAZY_SIZE,
    lazy_phys = const LAZY_PHYS,
    options(att_syntax)
);
