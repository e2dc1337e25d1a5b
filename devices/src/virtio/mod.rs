// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio (DESIGN section 5): the virtio-mmio transport ([`mmio`]) and the
//! devices behind it ([`blk`]).
//!
//! Data flow: the driver programs the transport's registers from a vCPU
//! (MMIO exits); at DRIVER_OK the transport hands the device its queues and
//! an [`Interrupt`] ([`VirtioDevice::activate`]); from then on the device's
//! worker thread wakes on each queue's notification eventfd (registered as
//! an ioeventfd with KVM, so a guest notify never leaves the kernel), moves
//! the data through guest-mm pins, and raises the interrupt through an irqfd.

pub mod blk;
pub mod iommu;
pub mod mmio;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use guest_mm::gup::{GuestMemory, Gup};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit: the device complies with virtio 1.x (VIRTIO_F_VERSION_1).
pub const F_VERSION_1: u32 = 32;
/// Feature bit: indirect descriptors (VIRTIO_F_RING_INDIRECT_DESC).
pub const F_RING_INDIRECT_DESC: u32 = 28;
/// Feature bit: used_event / avail_event (VIRTIO_F_RING_EVENT_IDX).
pub const F_RING_EVENT_IDX: u32 = 29;
/// Feature bit: the device's addresses go through the platform's IOMMU
/// (VIRTIO_F_ACCESS_PLATFORM).
pub const F_ACCESS_PLATFORM: u32 = 33;

/// Device status bits (virtio 1.2 section 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bit: a used buffer was added.
pub const INT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration changed (or the device needs a reset).
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt: the status the driver reads and acknowledges
/// through the transport, and the eventfd that raises the line (an irqfd).
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
    /// Set by a device that needs a reset (DEVICE_NEEDS_RESET); the
    /// transport ORs it into the status register.
    needs_reset: AtomicU32,
}

impl Interrupt {
    /// An interrupt raised by writing `evt`.
    pub fn new(evt: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            evt,
            needs_reset: AtomicU32::new(0),
        }
    }

    /// The eventfd that raises the line.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Sets `bits` in the interrupt status and raises the line.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        // An eventfd write fails only when its counter would overflow, and
        // then the line is pending anyway.
        let _ = self.evt.write(1);
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The device hit an error it cannot recover from without a reset: sets
    /// DEVICE_NEEDS_RESET and signals a configuration change (virtio 1.2
    /// section 2.1.2).
    pub fn set_needs_reset(&self) {
        self.needs_reset
            .store(status::DEVICE_NEEDS_RESET, Ordering::SeqCst);
        self.trigger(INT_CONFIG);
    }

    /// DEVICE_NEEDS_RESET if the device set it, else 0.
    pub fn needs_reset(&self) -> u32 {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Clears everything (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(0, Ordering::SeqCst);
    }
}

/// What a device gets at DRIVER_OK.
pub struct Activation {
    /// The negotiated features.
    pub features: u64,
    /// Its queues, configured and validated by the transport.
    pub queues: Vec<Queue>,
    /// One notification eventfd per queue (a clone of the transport's).
    pub notifiers: Vec<EventFd>,
    /// Its interrupt.
    pub interrupt: Arc<Interrupt>,
    /// Guest memory (for the rings).
    pub mem: GuestMemory,
    /// The pinning engine (for the data).
    pub gup: Arc<Gup>,
}

/// Reads `data.len()` bytes of a configuration space `config` at `offset`
/// (bytes past its end read as 0): [`VirtioDevice::read_config`] for a
/// device whose configuration is a byte array.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// Why a device refused to start.
#[derive(Debug)]
pub struct ActivateError(pub String);

impl std::fmt::Display for ActivateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 = block).
    fn device_type(&self) -> u32;
    /// The largest size of each queue (their number is the slice's length).
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers.
    fn features(&self) -> u64;
    /// The features a driver must accept for FEATURES_OK (e.g.
    /// ACCESS_PLATFORM for a device behind the IOMMU).
    fn required_features(&self) -> u64 {
        0
    }
    /// Reads `data.len()` bytes of the configuration space at `offset`
    /// (bytes past its end read as 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space (ignored where read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device (its worker is stopped and joined; pins released).
    fn reset(&mut self);
    /// A one-line summary of its counters, for the VMM's report.
    fn summary(&self) -> String;
}
