// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! PVH boot (Xen's `hvm_start_info` ABI, version 1): the start info at
//! [`PVH_START_INFO`], followed by the memory map; the initramfs, if any,
//! as module 0; the command line at [`CMDLINE`]. The vCPU enters in 32-bit
//! protected mode with paging off and EBX pointing at the start info.

use std::mem::size_of;

use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress};

use super::{initrd_address, BootSpec, EntryState, CMDLINE, PVH_START_INFO};
use crate::memory::{low_ram_end, memory_map, GuestMemoryMmap};

/// `hvm_start_info.magic`.
pub const PVH_MAGIC: u32 = 0x336e_c578;
/// Where the memory map follows the start info.
const MEMMAP: u64 = PVH_START_INFO + 0x40;
/// Where the module list goes.
const MODLIST: u64 = PVH_START_INFO + 0x800;

/// Writes the start info, memory map and module list for a kernel whose
/// PVH entry is `entry` and whose image ends at `kernel_end`.
pub fn configure<K>(
    mem: &GuestMemoryMmap,
    entry: u64,
    kernel_end: u64,
    spec: &BootSpec<'_, K>,
) -> Result<EntryState, String> {
    let map = memory_map(spec.ram_bytes);
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        let at = MEMMAP + (i * size_of::<hvm_memmap_table_entry>()) as u64;
        if at + size_of::<hvm_memmap_table_entry>() as u64 > MODLIST {
            return Err("the PVH memory map does not fit its slot".into());
        }
        mem.write_obj(entry, GuestAddress(at))
            .map_err(|e| format!("writing the PVH memory map: {e}"))?;
    }
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE,
        memmap_paddr: MEMMAP,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((name, bytes)) = &spec.initrd {
        let at = initrd_address(kernel_end, low_ram_end(spec.ram_bytes), bytes.len() as u64)
            .map_err(|e| format!("{name}: {e}"))?;
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|e| format!("writing {name}: {e}"))?;
        let module = hvm_modlist_entry {
            paddr: at,
            size: bytes.len() as u64,
            cmdline_paddr: 0,
            reserved: 0,
        };
        mem.write_obj(module, GuestAddress(MODLIST))
            .map_err(|e| format!("writing the PVH module list: {e}"))?;
        info.nr_modules = 1;
        info.modlist_paddr = MODLIST;
    }
    mem.write_obj(info, GuestAddress(PVH_START_INFO))
        .map_err(|e| format!("writing hvm_start_info: {e}"))?;
    Ok(EntryState::Pvh {
        entry,
        start_info: PVH_START_INFO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;
    use std::io::Cursor;

    #[test]
    fn start_info_describes_memory_and_initrd() {
        let mem = memory::create(64 << 20).unwrap();
        let mut k = Cursor::new(Vec::<u8>::new());
        let spec = BootSpec {
            kernel_name: "test".into(),
            kernel: &mut k,
            initrd: Some(("initrd".into(), vec![7u8; 5000])),
            cmdline: "",
            ram_bytes: 64 << 20,
            vcpus: 1,
        };
        let entry = configure(&mem, 0x10_0000, 0x20_0000, &spec).unwrap();
        assert_eq!(
            entry,
            EntryState::Pvh {
                entry: 0x10_0000,
                start_info: PVH_START_INFO
            }
        );
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_START_INFO)).unwrap();
        assert_eq!(
            (info.magic, info.version, info.nr_modules),
            (PVH_MAGIC, 1, 1)
        );
        let mut ram = 0;
        for i in 0..u64::from(info.memmap_entries) {
            let e: hvm_memmap_table_entry = mem
                .read_obj(GuestAddress(info.memmap_paddr + i * 24))
                .unwrap();
            if e.type_ == 1 {
                ram += e.size;
            }
        }
        assert_eq!(ram, (64 << 20) - (0x10_0000 - 0x9_fc00));
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(m.size, 5000);
        assert_eq!(m.paddr % 4096, 0);
        assert!(m.paddr + m.size <= 64 << 20 && m.paddr >= 0x20_0000);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(m.paddr + 4999)).unwrap(), 7);
    }
}
