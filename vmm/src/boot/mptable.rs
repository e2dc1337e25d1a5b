// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The Intel MultiProcessor Specification (version 1.4) table: how a guest
//! without ACPI learns its CPUs, its I/O APIC and how the ISA interrupts
//! reach it. Without one, Linux starts only the boot CPU, turns the I/O APIC
//! off and has only the 16 lines of the legacy PIC (so virtio-mmio devices
//! on GSI 16..23 would get no interrupt).
//!
//! Written at [`MPTABLE_START`] (the start of the EBDA, which the memory map
//! reserves): the 16-byte floating pointer, where Linux scans for it ("the
//! last KiB of base memory"), then the configuration table:
//!
//! - one processor entry per vCPU (local APIC ID = vCPU index; vCPU 0 is
//!   the bootstrap processor);
//! - one ISA bus;
//! - the I/O APIC at `0xfec00000`, ID = the number of vCPUs;
//! - one I/O interrupt entry per I/O APIC pin: pin 0 as ExtINT (the PIC's
//!   output, virtual wire), pins 1..23 as ISA IRQs of the same number
//!   (edge, active high: "conforms to bus"), which is how KVM's in-kernel
//!   irqchip routes GSIs by default;
//! - the local interrupts: LINT0 ExtINT and LINT1 NMI on every CPU (as
//!   `vcpu.rs` programs the local APICs).

use vm_memory::{Bytes, GuestAddress};

use crate::memory::{GuestMemoryMmap, EBDA_START};

/// Where the floating pointer goes (its configuration table follows it).
pub const MPTABLE_START: u64 = EBDA_START;
/// The local APICs' address.
pub const LAPIC_ADDRESS: u32 = 0xfee0_0000;
/// The I/O APIC's address.
pub const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
/// Pins of KVM's in-kernel I/O APIC.
pub const IOAPIC_PINS: u8 = 24;

const SPEC_REV: u8 = 4;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Local APIC version (an integrated APIC) and I/O APIC version.
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_BUS_ID: u8 = 0;

/// The table for `vcpus` CPUs, as bytes, and where each part goes: the
/// floating pointer at `start`, the configuration table right after it.
pub fn build(vcpus: u8, start: u64) -> Vec<u8> {
    let config_at = start + 16;
    let ioapic_id = vcpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        entries.extend_from_slice(&[
            ENTRY_PROCESSOR,
            id,
            LAPIC_VERSION,
            CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 },
        ]);
        // CPU signature (family 6) and feature flags (FPU, APIC).
        entries.extend_from_slice(&0x0000_0600u32.to_le_bytes());
        entries.extend_from_slice(&0x0000_0201u32.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDRESS.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        let kind = if pin == 0 {
            INT_TYPE_EXTINT
        } else {
            INT_TYPE_INT
        };
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            kind,
            0,
            0,
            ISA_BUS_ID,
            pin,
            ioapic_id,
            pin,
        ]);
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1)] {
        // Destination 0xff: every local APIC.
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, ISA_BUS_ID, 0, 0xff, lint]);
        count += 1;
    }

    let mut config = Vec::with_capacity(44 + entries.len());
    config.extend_from_slice(b"PCMP");
    config.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    config.push(SPEC_REV);
    config.push(0); // checksum, below
    config.extend_from_slice(b"GUESTMM ");
    config.extend_from_slice(b"VMM         ");
    config.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    config.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    config.extend_from_slice(&count.to_le_bytes());
    config.extend_from_slice(&LAPIC_ADDRESS.to_le_bytes());
    config.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    config.push(0); // extended table checksum
    config.push(0); // reserved
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(config_at as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(SPEC_REV);
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0u8; 5]); // feature bytes: the table is present
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&config);
    fp
}

/// The byte that makes `bytes` sum to 0 (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Writes the table for `vcpus` CPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), String> {
    let table = build(vcpus, MPTABLE_START);
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(|e| format!("writing the MP table: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn the_table_parses_as_the_spec_says() {
        for vcpus in [1u8, 2, 64] {
            let t = build(vcpus, MPTABLE_START);
            // The floating pointer: signature, pointer, length, revision, checksum.
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(u32_at(&t, 4) as u64, MPTABLE_START + 16);
            assert_eq!((t[8], t[9]), (1, 4));
            assert_eq!(sum(&t[0..16]), 0);
            // The configuration table.
            let c = &t[16..];
            assert_eq!(&c[0..4], b"PCMP");
            let len = u16_at(c, 4) as usize;
            assert_eq!(len, c.len());
            assert_eq!(sum(&c[..len]), 0);
            assert_eq!(u32_at(c, 36), LAPIC_ADDRESS);
            let count = u16_at(c, 34) as usize;
            // Walk the entries by their type's size.
            let mut at = 44;
            let (mut cpus, mut bsp, mut ioapics, mut pins, mut lints) = (0, 0, 0, vec![], 0);
            for _ in 0..count {
                match c[at] {
                    0 => {
                        assert_eq!(c[at + 1], cpus as u8, "APIC IDs in order");
                        assert_ne!(c[at + 3] & 1, 0, "enabled");
                        bsp += usize::from(c[at + 3] & 2 != 0);
                        cpus += 1;
                        at += 20;
                    }
                    1 => {
                        assert_eq!(&c[at + 2..at + 8], b"ISA   ");
                        at += 8;
                    }
                    2 => {
                        assert_eq!(c[at + 1], vcpus, "I/O APIC ID after the CPUs'");
                        assert_eq!(u32_at(c, at + 4), IOAPIC_ADDRESS);
                        ioapics += 1;
                        at += 8;
                    }
                    3 => {
                        // Source IRQ = destination pin, to the I/O APIC.
                        assert_eq!(c[at + 5], c[at + 7]);
                        assert_eq!(c[at + 6], vcpus);
                        pins.push(c[at + 7]);
                        at += 8;
                    }
                    4 => {
                        lints += 1;
                        at += 8;
                    }
                    t => panic!("unknown entry type {t}"),
                }
            }
            assert_eq!(at, len);
            assert_eq!((cpus, bsp, ioapics, lints), (usize::from(vcpus), 1, 1, 2));
            assert_eq!(pins, (0..IOAPIC_PINS).collect::<Vec<_>>());
        }
    }

    #[test]
    fn it_fits_below_the_end_of_the_reserved_low_area() {
        let t = build(64, MPTABLE_START);
        assert!(MPTABLE_START + t.len() as u64 <= 0x10_0000);
    }
}
