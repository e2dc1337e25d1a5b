// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Loading a kernel and describing its entry state.
//!
//! - An ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note boots by PVH ([`pvh`]):
//!   32-bit protected mode, paging off, EBX = `hvm_start_info`. This is how
//!   the built-in guest boots (and a Linux vmlinux built with CONFIG_PVH).
//! - Any other ELF (a Linux vmlinux), or a bzImage, boots by the Linux
//!   64-bit boot protocol ([`linux`]): long mode with identity-mapped page
//!   tables, RSI = `boot_params` (the zero page) with the e820 map, the
//!   command line and the initramfs.
//!
//! Low-memory layout used by both (all below the 640 KiB EBDA):
//!
//! | address | what |
//! |---|---|
//! | [`BOOT_GDT`] | the boot GDT (entry selectors 0x10 code, 0x18 data, 0x20 TSS) |
//! | [`PVH_START_INFO`] | `hvm_start_info`, then the memory map and module list |
//! | [`ZERO_PAGE`] | Linux `boot_params` |
//! | [`BOOT_STACK`] | initial stack pointer for the Linux entry |
//! | [`PML4`] .. | Linux entry page tables: PML4, PDPT, four PDs (identity 0..4 GiB, 2M leaves) |
//! | [`CMDLINE`] | the kernel command line (at most [`CMDLINE_MAX`] bytes with the NUL) |
//! | [`mptable::MPTABLE_START`] | the MP table (in the reserved EBDA: floating pointer, then the configuration table) |

pub mod linux;
pub mod mptable;
pub mod pvh;

use std::io::{Read, Seek, SeekFrom};

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, ReadVolatile};

use crate::error::{Error, Result};
use crate::memory::{GuestMemoryMmap, HIGHMEM_START};

/// Boot GDT.
pub const BOOT_GDT: u64 = 0x500;
/// PVH `hvm_start_info`.
pub const PVH_START_INFO: u64 = 0x6000;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial RSP for the Linux entry.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Linux entry PML4 (then PDPT and PDs in the following pages).
pub const PML4: u64 = 0x9000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x2_0000;
/// Room for the command line, NUL included.
pub const CMDLINE_MAX: usize = 4096;

/// Selector of the boot code segment (Linux's `__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Selector of the boot data segment (Linux's `__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// Selector of the boot TSS.
pub const BOOT_TSS: u16 = 0x20;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// The boot CPU's state at the kernel entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// PVH: 32-bit protected mode without paging at `entry`, EBX = `start_info`.
    Pvh {
        /// Entry point (from the ELF note).
        entry: u64,
        /// Physical address of `hvm_start_info`.
        start_info: u64,
    },
    /// Linux 64-bit boot protocol: long mode at `entry`, RSI = `boot_params`.
    Linux64 {
        /// 64-bit entry point.
        entry: u64,
        /// Physical address of the zero page.
        boot_params: u64,
    },
}

/// A GDT descriptor: flags (bits 52..55 of the descriptor: G, D/B, L, AVL
/// as G<<3|DB<<2|L<<1) and access byte, base 0.
const fn descriptor(flags: u64, access: u64, limit: u64) -> u64 {
    (limit & 0xffff) | (((limit >> 16) & 0xf) << 48) | (access << 40) | (flags << 52)
}

/// The boot GDT for a 32-bit (PVH) or 64-bit (Linux) entry.
pub fn boot_gdt(long_mode: bool) -> [u64; 5] {
    let code = if long_mode {
        descriptor(0xa, 0x9b, 0xfffff) // G, L; present, DPL0, code exec/read accessed
    } else {
        descriptor(0xc, 0x9b, 0xfffff) // G, D (32-bit)
    };
    [
        0,
        0,
        code,
        descriptor(0xc, 0x93, 0xfffff), // data read/write accessed
        descriptor(0x0, 0x8b, 0x67),    // busy 32-bit TSS (a 64-bit TSS in long mode)
    ]
}

/// The `kvm_segment` a descriptor loads with `selector`.
pub fn segment(desc: u64, selector: u16) -> kvm_segment {
    let limit = (desc & 0xffff) | (((desc >> 48) & 0xf) << 16);
    let g = ((desc >> 55) & 1) as u8;
    let present = ((desc >> 47) & 1) as u8;
    kvm_segment {
        base: ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24),
        limit: if g == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        present,
        dpl: ((desc >> 45) & 3) as u8,
        db: ((desc >> 54) & 1) as u8,
        s: ((desc >> 44) & 1) as u8,
        l: ((desc >> 53) & 1) as u8,
        g,
        avl: ((desc >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

impl EntryState {
    fn long_mode(&self) -> bool {
        matches!(self, EntryState::Linux64 { .. })
    }

    /// Special registers at the entry (segments from [`boot_gdt`]).
    pub fn apply_sregs(&self, sregs: &mut kvm_sregs) {
        let gdt = boot_gdt(self.long_mode());
        sregs.gdt.base = BOOT_GDT;
        sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        sregs.cs = segment(gdt[usize::from(BOOT_CS / 8)], BOOT_CS);
        let data = segment(gdt[usize::from(BOOT_DS / 8)], BOOT_DS);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = segment(gdt[usize::from(BOOT_TSS / 8)], BOOT_TSS);
        match self {
            EntryState::Pvh { .. } => {
                sregs.cr0 = CR0_PE | CR0_ET;
                sregs.cr3 = 0;
                sregs.cr4 = 0;
                sregs.efer = 0;
            }
            EntryState::Linux64 { .. } => {
                sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
                sregs.cr3 = PML4;
                sregs.cr4 = CR4_PAE;
                sregs.efer = EFER_LME | EFER_LMA;
            }
        }
    }

    /// General registers at the entry.
    pub fn apply_regs(&self, regs: &mut kvm_regs) {
        *regs = kvm_regs {
            rflags: 0x2,
            ..Default::default()
        };
        match *self {
            EntryState::Pvh { entry, start_info } => {
                regs.rip = entry;
                regs.rbx = start_info;
            }
            EntryState::Linux64 { entry, boot_params } => {
                regs.rip = entry;
                regs.rsi = boot_params;
                regs.rsp = BOOT_STACK;
                regs.rbp = BOOT_STACK;
            }
        }
    }
}

/// What to boot.
pub struct BootSpec<'a, K> {
    /// How to name the kernel in errors (`--kernel <path>` or `the built-in guest`).
    pub kernel_name: String,
    /// The kernel image.
    pub kernel: &'a mut K,
    /// The initramfs (name for errors, bytes).
    pub initrd: Option<(String, Vec<u8>)>,
    /// The command line (without the NUL).
    pub cmdline: &'a str,
    /// Bytes of guest RAM.
    pub ram_bytes: u64,
    /// Number of vCPUs (for the MP table).
    pub vcpus: u8,
}

/// Kernel image formats we recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF (with or without a PVH note).
    Elf,
    /// bzImage (the x86 boot sector and setup header).
    BzImage,
}

/// Recognises `kernel`'s format from its first bytes.
pub fn detect_format<K: Read + Seek>(kernel: &mut K) -> std::io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x206];
    kernel.seek(SeekFrom::Start(0))?;
    let mut n = 0;
    while n < head.len() {
        match kernel.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    kernel.seek(SeekFrom::Start(0))?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Some(KernelFormat::Elf));
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

/// Loads the kernel (and initramfs, command line, boot structures) into
/// `mem`; returns the boot CPU's entry state.
pub fn load<K: Read + Seek + ReadVolatile>(
    mem: &GuestMemoryMmap,
    spec: BootSpec<'_, K>,
) -> Result<EntryState> {
    let load_err = |why: String| Error::Load {
        image: spec.kernel_name.clone(),
        why,
    };
    if spec.cmdline.len() + 1 > CMDLINE_MAX {
        return Err(Error::Flag {
            flag: "--cmdline",
            why: format!(
                "{} bytes; at most {} fit",
                spec.cmdline.len(),
                CMDLINE_MAX - 1
            ),
        });
    }
    if spec.cmdline.as_bytes().contains(&0) {
        return Err(Error::Flag {
            flag: "--cmdline",
            why: "contains a NUL byte".into(),
        });
    }
    let format = detect_format(spec.kernel)
        .map_err(|e| load_err(format!("reading the image: {e}")))?
        .ok_or_else(|| load_err("neither an ELF nor a bzImage".into()))?;
    let highmem = Some(GuestAddress(HIGHMEM_START));
    let loaded = match format {
        KernelFormat::Elf => linux_loader::loader::elf::Elf::load(mem, None, spec.kernel, highmem),
        KernelFormat::BzImage => {
            linux_loader::loader::bzimage::BzImage::load(mem, None, spec.kernel, highmem)
        }
    }
    .map_err(|e| load_err(e.to_string()))?;
    mem.write_slice(spec.cmdline.as_bytes(), GuestAddress(CMDLINE))
        .and_then(|()| mem.write_obj(0u8, GuestAddress(CMDLINE + spec.cmdline.len() as u64)))
        .map_err(|e| load_err(format!("writing the command line: {e}")))?;
    let long = !matches!(
        loaded.pvh_boot_cap,
        linux_loader::loader::elf::PvhBootCapability::PvhEntryPresent(_)
    );
    for (i, d) in boot_gdt(long).iter().enumerate() {
        mem.write_obj(*d, GuestAddress(BOOT_GDT + 8 * i as u64))
            .map_err(|e| load_err(format!("writing the boot GDT: {e}")))?;
    }
    mptable::write(mem, spec.vcpus).map_err(load_err)?;
    match loaded.pvh_boot_cap {
        linux_loader::loader::elf::PvhBootCapability::PvhEntryPresent(entry) => {
            pvh::configure(mem, entry.0, loaded.kernel_end, &spec).map_err(load_err)
        }
        _ => linux::configure(mem, &loaded, format, &spec).map_err(load_err),
    }
}

/// Where an initramfs of `size` bytes goes: page-aligned, as high as
/// possible below `limit`, above `kernel_end`.
pub fn initrd_address(kernel_end: u64, limit: u64, size: u64) -> std::result::Result<u64, String> {
    let top = limit.checked_sub(size).ok_or_else(|| {
        format!("the initramfs ({size} bytes) is larger than the RAM below {limit:#x}")
    })? & !0xfff;
    if top < kernel_end {
        return Err(format!(
            "the initramfs ({size} bytes) does not fit between the kernel's end ({kernel_end:#x}) and {limit:#x}: use more --mem"
        ));
    }
    Ok(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_segments_match_the_protocols() {
        let g32 = boot_gdt(false);
        let cs = segment(g32[2], BOOT_CS);
        assert_eq!(
            (cs.base, cs.limit, cs.type_, cs.db, cs.l, cs.g, cs.s, cs.present),
            (0, 0xffff_ffff, 0xb, 1, 0, 1, 1, 1)
        );
        let g64 = boot_gdt(true);
        let cs = segment(g64[2], BOOT_CS);
        assert_eq!((cs.db, cs.l), (0, 1));
        let ds = segment(g64[3], BOOT_DS);
        assert_eq!((ds.type_, ds.db, ds.limit), (0x3, 1, 0xffff_ffff));
        let tr = segment(g64[4], BOOT_TSS);
        assert_eq!((tr.type_, tr.s, tr.limit, tr.present), (0xb, 0, 0x67, 1));
        let null = segment(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn formats_are_recognised() {
        use std::io::Cursor;
        let mut elf = Cursor::new(b"\x7fELF\x02\x01".to_vec());
        assert_eq!(detect_format(&mut elf).unwrap(), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(
            detect_format(&mut Cursor::new(bz)).unwrap(),
            Some(KernelFormat::BzImage)
        );
        assert_eq!(
            detect_format(&mut Cursor::new(vec![1u8; 10])).unwrap(),
            None
        );
        assert_eq!(detect_format(&mut Cursor::new(Vec::new())).unwrap(), None);
    }

    #[test]
    fn initrd_goes_high_and_never_over_the_kernel() {
        assert_eq!(
            initrd_address(0x200_0000, 0x800_0000, 0x1800),
            Ok(0x7ff_e000)
        );
        assert!(initrd_address(0x7ff_f000, 0x800_0000, 0x1800).is_err());
        assert!(initrd_address(0, 0x1000, 0x2000).is_err());
    }

    /// A synthetic bzImage: boot sector + 4 setup sectors with the header,
    /// then 64 KiB of "protected-mode kernel".
    fn bzimage(cmdline_size: u32, xloadflags: u16) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512 + 0x1_0000];
        img[0x1f1] = 4; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes());
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&cmdline_size.to_le_bytes());
        img[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes()); // init_size
        img
    }

    fn load_bz(
        img: Vec<u8>,
        cmdline: &str,
        initrd: Option<Vec<u8>>,
    ) -> Result<(GuestMemoryMmap, EntryState)> {
        let mem = crate::memory::create(64 << 20).unwrap();
        let mut k = std::io::Cursor::new(img);
        let entry = load(
            &mem,
            BootSpec {
                kernel_name: "bz".into(),
                kernel: &mut k,
                initrd: initrd.map(|b| ("initrd".to_string(), b)),
                cmdline,
                ram_bytes: 64 << 20,
                vcpus: 1,
            },
        )?;
        Ok((mem, entry))
    }

    #[test]
    fn bzimage_boots_at_its_64_bit_entry_with_the_zero_page() {
        use linux_loader::bootparam::boot_params;
        let (mem, entry) = load_bz(bzimage(2048, 1), "console=ttyS0", Some(vec![9; 100])).unwrap();
        assert_eq!(
            entry,
            EntryState::Linux64 {
                entry: 0x10_0200,
                boot_params: ZERO_PAGE
            }
        );
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!(hdr.type_of_loader, 0xff);
        let ramdisk = u64::from(hdr.ramdisk_image);
        // Above the decompression area (load + init_size), below RAM's end.
        assert!(
            ramdisk >= 0x50_0000 && ramdisk + 100 <= 64 << 20,
            "{ramdisk:#x}"
        );
        let mut cmd = [0u8; 14];
        mem.read_slice(&mut cmd, GuestAddress(CMDLINE)).unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
    }

    #[test]
    fn bzimage_errors_name_the_problem() {
        let e = load_bz(bzimage(8, 1), "console=ttyS0", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cmdline") && e.contains("at most 8"), "{e}");
        let e = load_bz(bzimage(2048, 0), "", None).unwrap_err().to_string();
        assert!(e.contains("64-bit entry"), "{e}");
        let e = load_bz(bzimage(2048, 1), &"x".repeat(CMDLINE_MAX), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--cmdline:"), "{e}");
    }
}
