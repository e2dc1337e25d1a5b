// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The Linux x86 64-bit boot protocol (Documentation/arch/x86/boot.rst):
//! the zero page (`boot_params`, with the bzImage's setup header when there
//! is one), the e820 map, the command line, the initramfs, and the state at
//! the 64-bit entry: long mode, an identity map covering the kernel, the
//! zero page and the command line (here: all of 0..4 GiB with 2M leaves),
//! `__BOOT_CS`/`__BOOT_DS` segments, RSI = zero page, interrupts off.

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::KernelLoaderResult;
use vm_memory::{Bytes, GuestAddress};

use super::{initrd_address, BootSpec, EntryState, KernelFormat, CMDLINE, PML4, ZERO_PAGE};
use crate::memory::{low_ram_end, memory_map, GuestMemoryMmap};

/// The longest command line x86 Linux keeps (COMMAND_LINE_SIZE 2048, NUL
/// included), for kernels whose header does not say.
const X86_COMMAND_LINE_MAX: usize = 2047;

/// `setup_header.boot_flag`.
const BOOT_FLAG: u16 = 0xaa55;
/// `setup_header.header`: "HdrS".
const HDRS: u32 = 0x5372_6448;
/// `type_of_loader`: undefined loader.
const LOADER_UNDEFINED: u8 = 0xff;
/// `xloadflags` bit 0: the kernel has the 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry from the protected-mode kernel's start.
const ENTRY_64_OFFSET: u64 = 0x200;
/// `loadflags`: the protected-mode code is loaded at 1 MiB.
const LOADED_HIGH: u8 = 1;
/// Page-table flags: present, writable; and a large (2M) leaf.
const PTE_TABLE: u64 = 0x3;
const PTE_LARGE: u64 = 0x83;

/// Writes the page tables, the zero page and the initramfs; returns the
/// 64-bit entry state.
pub fn configure<K>(
    mem: &GuestMemoryMmap,
    loaded: &KernelLoaderResult,
    format: KernelFormat,
    spec: &BootSpec<'_, K>,
) -> Result<EntryState, String> {
    let mut params = boot_params::default();
    let entry = match (format, loaded.setup_header) {
        (KernelFormat::BzImage, Some(hdr)) => {
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(
                    "the bzImage has no 64-bit entry point (xloadflags bit 0 clear)".into(),
                );
            }
            params.hdr = hdr;
            loaded.kernel_load.0 + ENTRY_64_OFFSET
        }
        _ => {
            // A vmlinux enters at its ELF entry point (startup_64).
            params.hdr.kernel_alignment = 0x100_0000;
            loaded.kernel_load.0
        }
    };
    // The kernel's limit on the command line (boot protocol 2.06+; 255
    // bytes before). An ELF vmlinux has no setup header to say it: x86
    // Linux keeps COMMAND_LINE_SIZE - 1 = 2047 bytes and silently drops the
    // rest (the virtio_mmio.device= entries, which come last, first).
    let max_cmdline = match (format, params.hdr.version) {
        (KernelFormat::BzImage, v) if v >= 0x206 => params.hdr.cmdline_size as usize,
        (KernelFormat::BzImage, _) => 255,
        _ => X86_COMMAND_LINE_MAX,
    };
    if spec.cmdline.len() > max_cmdline {
        return Err(format!(
            "the command line (--cmdline) is {} bytes; this kernel takes at most {max_cmdline}",
            spec.cmdline.len()
        ));
    }
    // A bzImage decompresses itself in place: it needs `init_size` bytes
    // from its load address, which the initramfs must not overlap.
    let kernel_end = match format {
        KernelFormat::BzImage => loaded
            .kernel_end
            .max(loaded.kernel_load.0 + u64::from(params.hdr.init_size)),
        KernelFormat::Elf => loaded.kernel_end,
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = spec.cmdline.len() as u32 + 1;

    if let Some((name, bytes)) = &spec.initrd {
        let mut limit = low_ram_end(spec.ram_bytes);
        if params.hdr.initrd_addr_max != 0 {
            limit = limit.min(u64::from(params.hdr.initrd_addr_max) + 1);
        }
        let at = initrd_address(kernel_end, limit, bytes.len() as u64)
            .map_err(|e| format!("{name}: {e}"))?;
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|e| format!("writing {name}: {e}"))?;
        params.hdr.ramdisk_image = at as u32;
        params.hdr.ramdisk_size = bytes.len() as u32;
        params.ext_ramdisk_image = (at >> 32) as u32;
        params.ext_ramdisk_size = (bytes.len() as u64 >> 32) as u32;
    }

    let map = memory_map(spec.ram_bytes);
    if map.len() > params.e820_table.len() {
        return Err("too many e820 entries".into());
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .map_err(|e| format!("writing the zero page: {e}"))?;

    write_identity_map(mem).map_err(|e| format!("writing the boot page tables: {e}"))?;
    Ok(EntryState::Linux64 {
        entry,
        boot_params: ZERO_PAGE,
    })
}

/// PML4 -> PDPT -> four PDs of 2M leaves: identity map of 0..4 GiB.
fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    let pdpt = PML4 + 0x1000;
    let pd = PML4 + 0x2000;
    mem.write_obj(pdpt | PTE_TABLE, GuestAddress(PML4))?;
    for i in 0..4u64 {
        mem.write_obj((pd + i * 0x1000) | PTE_TABLE, GuestAddress(pdpt + i * 8))?;
    }
    let mut leaves = vec![0u8; 4 * 4096];
    for (i, chunk) in leaves.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(((i as u64) << 21) | PTE_LARGE).to_le_bytes());
    }
    mem.write_slice(&leaves, GuestAddress(pd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;
    use guest_mm::paging::{translate, Access, PagingContext};
    use std::io::Cursor;

    #[test]
    fn zero_page_and_identity_map() {
        let mem = memory::create(64 << 20).unwrap();
        let mut k = Cursor::new(Vec::<u8>::new());
        let spec = BootSpec {
            kernel_name: "test".into(),
            kernel: &mut k,
            initrd: Some(("initrd".into(), vec![1u8; 10000])),
            cmdline: "console=ttyS0",
            ram_bytes: 64 << 20,
            vcpus: 1,
        };
        let loaded = KernelLoaderResult {
            kernel_load: GuestAddress(0x100_0000),
            kernel_end: 0x200_0000,
            ..Default::default()
        };
        let entry = configure(&mem, &loaded, KernelFormat::Elf, &spec).unwrap();
        assert_eq!(
            entry,
            EntryState::Linux64 {
                entry: 0x100_0000,
                boot_params: ZERO_PAGE
            }
        );
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, HDRS);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE as u32);
        assert_eq!({ hdr.ramdisk_size }, 10000);
        assert!(u64::from(hdr.ramdisk_image) >= 0x200_0000);
        assert_eq!(p.e820_entries, 3);
        // The walker agrees the tables identity-map low and high addresses.
        let ctx = PagingContext::new(0x8000_0011, PML4, 0x20, 0x500);
        for va in [0u64, 0x100_0000, 0x3fff_ffff, 0xbfff_f000, 0xffff_fff0] {
            let t = translate(&mem, &ctx, va, Access::supervisor_read()).unwrap();
            assert_eq!(t.gpa, va);
        }
    }
}
