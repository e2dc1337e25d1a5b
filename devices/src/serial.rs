// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The serial console: a 16550 UART (vm-superio) at the COM1 ports, its
//! output written to a host writer (stdout in the VMM), its input fed from
//! the host (stdin), its interrupt line an eventfd the VMM connects to IRQ 4
//! with an irqfd.

use std::io::{self, Write};

use vm_superio::{serial::NoEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of ports of a 16550.
pub const COM1_LEN: u16 = 8;
/// The ISA interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;

/// An eventfd as the UART's interrupt line.
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// COM1: a 16550 whose output goes to `W`.
pub struct SerialConsole<W: Write> {
    uart: Serial<IrqLine, NoEvents, W>,
    /// Host-side errors (output write failures, interrupt failures) seen so
    /// far; the guest never sees them.
    errors: u64,
}

impl<W: Write> SerialConsole<W> {
    /// A UART raising `irq` and writing the guest's output to `out`.
    pub fn new(irq: EventFd, out: W) -> Self {
        SerialConsole {
            uart: Serial::new(IrqLine(irq), out),
            errors: 0,
        }
    }

    /// Whether `port` belongs to COM1.
    pub fn contains(port: u16) -> bool {
        (COM1_BASE..COM1_BASE + COM1_LEN).contains(&port)
    }

    /// A guest read of `data.len()` bytes at `port`: each byte reads the
    /// register at the port (only byte accesses are meaningful on a 16550;
    /// wider ones read the same register repeatedly, as on an ISA bus with
    /// 8-bit devices the upper bytes would float).
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        let offset = port.wrapping_sub(COM1_BASE) as u8;
        for (i, b) in data.iter_mut().enumerate() {
            *b = if i == 0 { self.uart.read(offset) } else { 0xff };
        }
    }

    /// A guest write of `data` at `port` (the first byte; see [`Self::read`]).
    pub fn write(&mut self, port: u16, data: &[u8]) {
        let offset = port.wrapping_sub(COM1_BASE) as u8;
        if let Some(&b) = data.first() {
            if self.uart.write(offset, b).is_err() {
                self.errors += 1;
            }
        }
    }

    /// Feeds host input to the guest; returns how many bytes the receive
    /// FIFO took (0 when it is full: the caller retries later or drops).
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(input).unwrap_or_default()
    }

    /// Host-side errors seen so far (lost output bytes, failed interrupts).
    pub fn host_errors(&self) -> u64 {
        self.errors
    }

    /// The output writer.
    pub fn writer(&self) -> &W {
        self.uart.writer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console() -> SerialConsole<Vec<u8>> {
        SerialConsole::new(
            EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
            Vec::new(),
        )
    }

    #[test]
    fn bytes_written_to_thr_reach_the_writer() {
        let mut c = console();
        for b in b"hi\r\n" {
            c.write(COM1_BASE, &[*b]);
        }
        assert_eq!(c.writer().as_slice(), b"hi\r\n");
        // LSR: transmitter empty (bit 5) so polling drivers do not hang.
        let mut lsr = [0u8];
        c.read(COM1_BASE + 5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn input_is_readable_from_rbr() {
        let mut c = console();
        assert_eq!(c.enqueue_input(b"x"), 1);
        let mut lsr = [0u8];
        c.read(COM1_BASE + 5, &mut lsr);
        assert_ne!(lsr[0] & 1, 0, "data ready");
        let mut rbr = [0u8];
        c.read(COM1_BASE, &mut rbr);
        assert_eq!(rbr, *b"x");
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let mut c = console();
        c.write(COM1_BASE + 7, &[]);
        c.write(COM1_BASE + 3, &[0xff, 0xff, 0xff, 0xff]);
        let mut wide = [0u8; 4];
        c.read(COM1_BASE + 1, &mut wide);
        c.read(COM1_BASE + 6, &mut []);
    }
}
