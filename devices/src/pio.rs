// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The port-I/O bus: routes a vCPU's `in`/`out` to the device at that port
//! and tells the VMM when the guest asks to stop. Ports no device claims
//! read as all ones and ignore writes (like an empty ISA bus); they are
//! counted, never fatal.

use std::io::Write;

use crate::exit_port::ExitPort;
use crate::i8042::{I8042Action, I8042};
use crate::serial::SerialConsole;

/// What a port write asks of the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PioAction {
    /// Keep running.
    Continue,
    /// The guest wrote `status` to the exit port.
    Exit(u32),
    /// The guest asked for a CPU reset (i8042 command 0xFE).
    Reset,
}

/// The devices on the port bus.
pub struct PioBus<W: Write> {
    /// COM1.
    pub serial: SerialConsole<W>,
    unhandled: u64,
}

impl<W: Write> PioBus<W> {
    /// A bus with `serial` at COM1, the exit port and the i8042.
    pub fn new(serial: SerialConsole<W>) -> Self {
        PioBus {
            serial,
            unhandled: 0,
        }
    }

    /// A guest `in` of `data.len()` bytes from `port`.
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        if SerialConsole::<W>::contains(port) {
            self.serial.read(port, data);
        } else if ExitPort::contains(port) {
            ExitPort::read(data);
        } else if I8042::contains(port) {
            I8042::read(port, data);
        } else {
            self.unhandled += 1;
            data.fill(0xff);
        }
    }

    /// A guest `out` of `data` to `port`.
    pub fn write(&mut self, port: u16, data: &[u8]) -> PioAction {
        if SerialConsole::<W>::contains(port) {
            self.serial.write(port, data);
        } else if ExitPort::contains(port) {
            return PioAction::Exit(ExitPort::status_from_write(data));
        } else if I8042::contains(port) {
            if I8042::write(port, data) == I8042Action::Reset {
                return PioAction::Reset;
            }
        } else {
            self.unhandled += 1;
        }
        PioAction::Continue
    }

    /// Accesses to ports no device claims, so far.
    pub fn unhandled(&self) -> u64 {
        self.unhandled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn bus() -> PioBus<Vec<u8>> {
        PioBus::new(SerialConsole::new(
            EventFd::new(EFD_NONBLOCK).unwrap(),
            Vec::new(),
        ))
    }

    #[test]
    fn routes_ports_to_devices() {
        let mut b = bus();
        assert_eq!(b.write(0x3f8, b"A"), PioAction::Continue);
        assert_eq!(b.serial.writer().as_slice(), b"A");
        assert_eq!(b.write(0xf4, &[2]), PioAction::Exit(2));
        assert_eq!(b.write(0xf7, &[0, 1]), PioAction::Exit(0x100));
        assert_eq!(b.write(0x64, &[0xfe]), PioAction::Reset);
        assert_eq!(b.unhandled(), 0);
    }

    #[test]
    fn unclaimed_ports_read_all_ones_and_are_counted() {
        let mut b = bus();
        let mut d = [0u8; 4];
        b.read(0x80, &mut d);
        assert_eq!(d, [0xff; 4]);
        assert_eq!(b.write(0xcf8, &[1, 2, 3, 4]), PioAction::Continue);
        assert_eq!(b.unhandled(), 2);
        // Every port, every width: no panic, and only the exit port and
        // the i8042 reset stop the VM.
        for port in 0..=u16::MAX {
            for len in [0usize, 1, 2, 4] {
                let mut d = vec![0u8; len];
                b.read(port, &mut d);
                let action = b.write(port, &d);
                if action != PioAction::Continue {
                    assert!(ExitPort::contains(port) || port == 0x64, "{port:#x}");
                }
            }
        }
    }
}
