// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Request flags (DESIGN 4.4), after Linux's FOLL_* flags, and their
//! validation: an invalid combination is refused before any work is done.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use super::error::GupError;

/// What a request asks for. Combine with `|`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GupFlags(u32);

impl GupFlags {
    /// No flags (not a valid request on its own: one of GET or PIN is needed).
    pub const NONE: GupFlags = GupFlags(0);
    /// The device will write the pages (DMA into the guest): the guest
    /// mapping must allow writes, the region must be writable, and the
    /// frames are marked dirty when the pin is released.
    pub const WRITE: GupFlags = GupFlags(1 << 0);
    /// Ignore the guest's R/W and U/S bits (and SMEP, SMAP, protection keys),
    /// as a debugger does. Never overrides a read-only host region.
    pub const FORCE: GupFlags = GupFlags(1 << 1);
    /// Take plain references (count 1 each): the frames may not be frozen
    /// while held, but they are not "DMA-pinned".
    pub const GET: GupFlags = GupFlags(1 << 2);
    /// Take DMA pins (count 1024 each).
    pub const PIN: GupFlags = GupFlags(1 << 3);
    /// A long-term pin (PIN only): host pages are populated and locked,
    /// counted against the VM's limit, and removable regions are refused.
    pub const LONGTERM: GupFlags = GupFlags(1 << 4);
    /// Lockless fast path only: never fall back to the slow path.
    pub const FAST_ONLY: GupFlags = GupFlags(1 << 5);
    /// Never call the fault handler: a missing or forbidden page is a Fault.
    pub const NOFAULT: GupFlags = GupFlags(1 << 6);
    /// Set the guest's Accessed (and, for WRITE, Dirty) bits, as the CPU
    /// would for the access.
    pub const TOUCH: GupFlags = GupFlags(1 << 7);
    /// Guest-physical holes (no RAM region) are not errors: they come back
    /// as hole extents, with nothing pinned.
    pub const DUMP: GupFlags = GupFlags(1 << 8);
    /// Access as CPL3 (user mode); without it the access is supervisor.
    pub const USER: GupFlags = GupFlags(1 << 9);

    const ALL: u32 = (1 << 10) - 1;
    const NAMES: [&'static str; 10] = [
        "WRITE",
        "FORCE",
        "GET",
        "PIN",
        "LONGTERM",
        "FAST_ONLY",
        "NOFAULT",
        "TOUCH",
        "DUMP",
        "USER",
    ];

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Flags from raw bits; `None` if an unknown bit is set.
    pub const fn from_bits(bits: u32) -> Option<GupFlags> {
        if bits & !Self::ALL != 0 {
            None
        } else {
            Some(GupFlags(bits))
        }
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: GupFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Check the combination (before any work): exactly one of GET and PIN;
    /// LONGTERM only with PIN and never with FAST_ONLY (long-term pins lock
    /// host pages, which only the slow path does).
    pub fn validate(self) -> Result<(), GupError> {
        let get = self.contains(Self::GET);
        let pin = self.contains(Self::PIN);
        if get == pin {
            return Err(GupError::Invalid("exactly one of GET and PIN is required"));
        }
        if self.contains(Self::LONGTERM) && !pin {
            return Err(GupError::Invalid("LONGTERM needs PIN"));
        }
        if self.contains(Self::LONGTERM) && self.contains(Self::FAST_ONLY) {
            return Err(GupError::Invalid(
                "LONGTERM cannot be FAST_ONLY (it locks host pages)",
            ));
        }
        Ok(())
    }
}

impl BitOr for GupFlags {
    type Output = GupFlags;
    fn bitor(self, rhs: GupFlags) -> GupFlags {
        GupFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for GupFlags {
    fn bitor_assign(&mut self, rhs: GupFlags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for GupFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (i, name) in Self::NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("NONE")?;
        }
        Ok(())
    }
}
