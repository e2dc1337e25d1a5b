// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Port I/O from CPL3 (allowed by IOPL 3 and the TSS I/O bitmap) and the
//! COM1 16550 transmitter.

use core::arch::asm;
use core::fmt;

/// COM1 base port.
const COM1: u16 = 0x3f8;
/// Line status register offset; bit 5 = transmitter holding register empty.
const LSR: u16 = 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

/// Writes `value` to I/O port `port`.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects on this program; the ports used
    // (COM1, the exit port, the i8042) are allowed at CPL3 by IOPL 3 and the
    // TSS I/O bitmap set up in boot.rs.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads I/O port `port`.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// The serial console (COM1, polled, no set-up needed by the VMMs we boot on).
pub struct Serial;

impl Serial {
    /// Sends one byte once the transmitter holding register is empty. A
    /// missing UART reads as 0xff, which looks empty: no hang.
    pub fn put(&mut self, byte: u8) {
        while inb(COM1 + LSR) & LSR_THR_EMPTY == 0 {
            core::hint::spin_loop();
        }
        outb(COM1, byte);
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}
