// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The exit port: a guest stops the VM and reports a status by writing it to
//! port [`EXIT_PORT_BASE`] (QEMU `isa-debug-exit,iobase=0xf4,iosize=4`
//! compatible: a byte, word or dword write anywhere in `0xf4..=0xf7`).
//!
//! QEMU exits with `(value << 1) | 1`; the VMM reports the value itself
//! (0 = success), see [`ExitPort::status_from_write`].

/// First port of the exit device.
pub const EXIT_PORT_BASE: u16 = 0xf4;
/// Number of ports it decodes (`0xf4..=0xf7`).
pub const EXIT_PORT_LEN: u16 = 4;

/// The exit device. Stateless: every write is a request to stop.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExitPort;

impl ExitPort {
    /// Whether `port` belongs to the device.
    pub fn contains(port: u16) -> bool {
        (EXIT_PORT_BASE..EXIT_PORT_BASE + EXIT_PORT_LEN).contains(&port)
    }

    /// The status a guest write of `data` (1, 2 or 4 bytes, little-endian,
    /// as `out` delivers them) reports. Longer data (not produced by `out`)
    /// uses its first four bytes; empty data reports 0.
    pub fn status_from_write(data: &[u8]) -> u32 {
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        u32::from_le_bytes(bytes)
    }

    /// What a read returns: nothing to read, all bits set like an empty bus.
    pub fn read(data: &mut [u8]) {
        data.fill(0xff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_byte_word_and_dword_writes() {
        assert_eq!(ExitPort::status_from_write(&[0]), 0);
        assert_eq!(ExitPort::status_from_write(&[3]), 3);
        assert_eq!(ExitPort::status_from_write(&[0x34, 0x12]), 0x1234);
        assert_eq!(ExitPort::status_from_write(&[1, 0, 0, 0x80]), 0x8000_0001);
        assert_eq!(ExitPort::status_from_write(&[]), 0);
        assert_eq!(
            ExitPort::status_from_write(&[1, 2, 3, 4, 5, 6]),
            0x0403_0201
        );
    }

    #[test]
    fn decodes_its_four_ports_only() {
        assert!(!ExitPort::contains(0xf3));
        for p in 0xf4..=0xf7 {
            assert!(ExitPort::contains(p));
        }
        assert!(!ExitPort::contains(0xf8));
    }
}
