// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The part of an i8042 keyboard controller a VM needs: command 0xFE
//! written to port 0x64 pulses the CPU reset line, which the VMM turns into
//! a clean stop (guests without an exit port use it to power off, and
//! Linux's `reboot=k` too). There is no keyboard: the status register reads
//! "output buffer empty, input buffer empty", data reads 0.

/// Data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// Command (write) / status (read) port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The "pulse output line 0" command: CPU reset.
pub const I8042_CMD_RESET: u8 = 0xfe;

/// What a guest write asks of the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum I8042Action {
    /// Nothing: the write is accepted and ignored.
    None,
    /// Reset the CPU (the VMM stops the VM).
    Reset,
}

/// A minimal i8042 with no keyboard behind it.
#[derive(Debug, Default, Clone, Copy)]
pub struct I8042;

impl I8042 {
    /// Whether `port` belongs to the device.
    pub fn contains(port: u16) -> bool {
        port == I8042_DATA_PORT || port == I8042_COMMAND_PORT
    }

    /// A guest read of `port`: status 0 (both buffers empty), data 0.
    pub fn read(_port: u16, data: &mut [u8]) {
        data.fill(0);
    }

    /// A guest write of `data` to `port`.
    pub fn write(port: u16, data: &[u8]) -> I8042Action {
        if port == I8042_COMMAND_PORT && data.first() == Some(&I8042_CMD_RESET) {
            I8042Action::Reset
        } else {
            I8042Action::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_0xfe_on_the_command_port_resets() {
        assert_eq!(I8042::write(0x64, &[0xfe]), I8042Action::Reset);
        assert_eq!(I8042::write(0x64, &[0xfe, 0, 0, 0]), I8042Action::Reset);
        assert_eq!(I8042::write(0x64, &[0xd1]), I8042Action::None);
        assert_eq!(I8042::write(0x60, &[0xfe]), I8042Action::None);
        assert_eq!(I8042::write(0x64, &[]), I8042Action::None);
        let mut b = [0xaa; 1];
        I8042::read(0x64, &mut b);
        assert_eq!(b, [0]);
    }
}
