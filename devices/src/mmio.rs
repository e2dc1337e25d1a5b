// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The MMIO bus: routes a vCPU's MMIO exit to the virtio-mmio transport
//! whose window holds the address. Addresses no device claims read as all
//! ones and ignore writes; they are counted, never fatal.

use std::sync::{Arc, Mutex};

use crate::virtio::mmio::{MmioTransport, MMIO_SIZE};

/// One device window.
struct Slot {
    base: u64,
    transport: Arc<Mutex<MmioTransport>>,
}

/// The devices on the MMIO bus.
#[derive(Default)]
pub struct MmioBus {
    slots: Vec<Slot>,
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `transport` at `[base, base + MMIO_SIZE)`. Returns false (and
    /// adds nothing) if that overlaps a device already there.
    pub fn insert(&mut self, base: u64, transport: Arc<Mutex<MmioTransport>>) -> bool {
        let overlaps = self
            .slots
            .iter()
            .any(|s| base < s.base + MMIO_SIZE && s.base < base.saturating_add(MMIO_SIZE));
        if overlaps {
            return false;
        }
        self.slots.push(Slot { base, transport });
        true
    }

    fn find(&self, addr: u64) -> Option<(&Slot, u64)> {
        self.slots
            .iter()
            .find(|s| addr >= s.base && addr - s.base < MMIO_SIZE)
            .map(|s| (s, addr - s.base))
    }

    /// A guest read; false if no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((slot, offset)) = self.find(addr) else {
            data.fill(0xff);
            return false;
        };
        slot.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read(offset, data);
        true
    }

    /// A guest write; false if no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((slot, offset)) = self.find(addr) else {
            return false;
        };
        slot.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(offset, data);
        true
    }
}
