// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-mmio transport, version 2 (virtio 1.2 section 4.2.2).
//!
//! A vCPU's MMIO exit lands in [`MmioTransport::read`] or
//! [`MmioTransport::write`]. The transport keeps the register state (feature
//! selection, queue configuration, status), checks each step of the
//! initialisation sequence, and at DRIVER_OK hands the queues to the device
//! ([`VirtioDevice::activate`]). A write of 0 to Status resets the device.
//!
//! Queue notifications: with KVM the VMM registers [`MmioTransport::notifiers`]
//! as ioeventfds on [`QUEUE_NOTIFY`] (one per queue, matching the queue
//! index), so notifies never reach this code; without them (tests, or a KVM
//! without ioeventfd) a QueueNotify write signals the same eventfd here.
//!
//! Guest mistakes never panic: accesses of the wrong width, writes to
//! read-only registers, out-of-order status bits and out-of-range queue
//! selections are ignored (reads give 0) and counted in
//! [`MmioTransport::bad_accesses`].

use std::sync::Arc;

use guest_mm::gup::{GuestMemory, Gup};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    status, Activation, Interrupt, VirtioDevice, F_ACCESS_PLATFORM, F_RING_EVENT_IDX, F_VERSION_1,
};

/// Bytes of register space per device (the `4K` of `virtio_mmio.device=4K@...`).
pub const MMIO_SIZE: u64 = 0x1000;
/// "virt" little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The transport version (modern).
pub const VERSION: u32 = 2;
/// Our vendor ID ("gmm\0" is as good as any; the spec leaves it free).
pub const VENDOR_ID: u32 = 0x006d_6d67;

/// Register offsets.
pub const MAGIC_VALUE: u64 = 0x000;
/// Version.
pub const VERSION_REG: u64 = 0x004;
/// DeviceID.
pub const DEVICE_ID: u64 = 0x008;
/// VendorID.
pub const VENDOR_ID_REG: u64 = 0x00c;
/// DeviceFeatures.
pub const DEVICE_FEATURES: u64 = 0x010;
/// DeviceFeaturesSel.
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
/// DriverFeatures.
pub const DRIVER_FEATURES: u64 = 0x020;
/// DriverFeaturesSel.
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
/// QueueSel.
pub const QUEUE_SEL: u64 = 0x030;
/// QueueNumMax.
pub const QUEUE_NUM_MAX: u64 = 0x034;
/// QueueNum.
pub const QUEUE_NUM: u64 = 0x038;
/// QueueReady.
pub const QUEUE_READY: u64 = 0x044;
/// QueueNotify.
pub const QUEUE_NOTIFY: u64 = 0x050;
/// InterruptStatus.
pub const INTERRUPT_STATUS: u64 = 0x060;
/// InterruptACK.
pub const INTERRUPT_ACK: u64 = 0x064;
/// Status.
pub const STATUS: u64 = 0x070;
/// QueueDescLow.
pub const QUEUE_DESC_LOW: u64 = 0x080;
/// QueueDescHigh.
pub const QUEUE_DESC_HIGH: u64 = 0x084;
/// QueueDriverLow (the available ring).
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
/// QueueDriverHigh.
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
/// QueueDeviceLow (the used ring).
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// QueueDeviceHigh.
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// SHMSel.
pub const SHM_SEL: u64 = 0x0ac;
/// SHMLenLow.
pub const SHM_LEN_LOW: u64 = 0x0b0;
/// SHMLenHigh.
pub const SHM_LEN_HIGH: u64 = 0x0b4;
/// SHMBaseLow.
pub const SHM_BASE_LOW: u64 = 0x0b8;
/// SHMBaseHigh.
pub const SHM_BASE_HIGH: u64 = 0x0bc;
/// QueueReset.
pub const QUEUE_RESET: u64 = 0x0c0;
/// ConfigGeneration.
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// The device-specific configuration space.
pub const CONFIG: u64 = 0x100;

/// One virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    gup: Arc<Gup>,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    notifiers: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    active: bool,
    config_generation: u32,
    bad_accesses: u64,
    bad_queue_size: bool,
    resets: u64,
}

impl MmioTransport {
    /// A transport for `device`, raising its interrupt through `irq` (an
    /// eventfd the VMM registers as an irqfd).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        gup: Arc<Gup>,
        irq: EventFd,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut notifiers = Vec::new();
        for &max in device.queue_max_sizes() {
            let q = Queue::new(max).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("queue size {max}: {e}"),
                )
            })?;
            queues.push(q);
            notifiers.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            gup,
            interrupt: Arc::new(Interrupt::new(irq)),
            queues,
            notifiers,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            active: false,
            config_generation: 0,
            bad_accesses: 0,
            bad_queue_size: false,
            resets: 0,
        })
    }

    /// The notification eventfds, one per queue (index = queue index), to
    /// register as ioeventfds on `base + QUEUE_NOTIFY` with the queue index
    /// as data match.
    pub fn notifiers(&self) -> &[EventFd] {
        &self.notifiers
    }

    /// The interrupt (its eventfd is the irqfd).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Register accesses the transport ignored (wrong width, read-only
    /// register, bad sequence).
    pub fn bad_accesses(&self) -> u64 {
        self.bad_accesses
    }

    /// Device resets the driver asked for.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// The Status register as the driver reads it.
    pub fn status(&self) -> u32 {
        self.status | self.interrupt.needs_reset()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A read of `data.len()` bytes at `offset` in the device's window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            self.bad_accesses += 1;
            data.fill(0);
            return;
        }
        let v: u32 = match offset {
            MAGIC_VALUE => MAGIC,
            VERSION_REG => VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID_REG => VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status(),
            // No shared memory regions: a length of all ones says so.
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            QUEUE_RESET => 0,
            CONFIG_GENERATION => self.config_generation,
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                let Some(q) = self.queues.get(self.queue_sel as usize) else {
                    return data.copy_from_slice(&0u32.to_le_bytes());
                };
                let addr = match offset & !7 {
                    QUEUE_DESC_LOW => q.desc_table(),
                    QUEUE_DRIVER_LOW => q.avail_ring(),
                    _ => q.used_ring(),
                };
                if offset & 4 == 0 {
                    addr as u32
                } else {
                    (addr >> 32) as u32
                }
            }
            _ => {
                self.bad_accesses += 1;
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A write of `data` at `offset` in the device's window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            if self.status & status::DRIVER_OK == 0 || self.active {
                self.device.write_config(offset - CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.bad_accesses += 1;
            return;
        };
        if offset % 4 != 0 {
            self.bad_accesses += 1;
            return;
        }
        let v = u32::from_le_bytes(bytes);
        // Queue and feature registers may change only while the driver is
        // setting the device up (before DRIVER_OK).
        let setting_up = self.status & status::DRIVER_OK == 0 && !self.failed();
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES if setting_up && self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => self.bad_accesses += 1,
                }
            }
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM if setting_up => match self.selected_queue() {
                // A power of two no larger than QueueNumMax (virtio 1.2
                // 2.7: split queue sizes are powers of two).
                Some(q) if v.is_power_of_two() && v <= u32::from(q.max_size()) => {
                    q.set_size(v as u16)
                }
                Some(_) => {
                    // Remembered: the rings the driver laid out are not the
                    // size the device would use; DRIVER_OK then sets
                    // DEVICE_NEEDS_RESET instead of starting the device.
                    self.bad_queue_size = true;
                    self.bad_accesses += 1;
                }
                None => self.bad_accesses += 1,
            },
            QUEUE_READY if setting_up => match self.selected_queue() {
                Some(q) => q.set_ready(v == 1),
                None => self.bad_accesses += 1,
            },
            // QueueReady = 0 after DRIVER_OK stops the queue (virtio 1.2
            // 4.2.2.3: the device must not access it any more): the device
            // stops until the next reset, and QueueReady reads 0.
            QUEUE_READY if v == 0 && self.active => {
                self.device.reset();
                self.active = false;
                if let Some(q) = self.selected_queue() {
                    q.set_ready(false);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH
                if setting_up =>
            {
                let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
                    self.bad_accesses += 1;
                    return;
                };
                let (low, high) = if offset & 4 == 0 {
                    (Some(v), None)
                } else {
                    (None, Some(v))
                };
                match offset & !7 {
                    QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                    QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
                    _ => q.set_used_ring_address(low, high),
                }
            }
            QUEUE_NOTIFY => match self.notifiers.get(v as usize) {
                // Only reached without an ioeventfd; same effect.
                Some(evt) => {
                    let _ = evt.write(1);
                }
                None => self.bad_accesses += 1,
            },
            INTERRUPT_ACK => self.interrupt.ack(v),
            STATUS => self.write_status(v),
            SHM_SEL => {}
            _ => self.bad_accesses += 1,
        }
    }

    fn failed(&self) -> bool {
        self.status & status::FAILED != 0
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let new = v & !self.status;
        // The driver may only add bits (except by a reset), in order.
        if v & self.status != self.status {
            self.bad_accesses += 1;
            return;
        }
        if new & status::FAILED != 0 {
            self.status |= status::FAILED;
            return;
        }
        let order = [
            status::ACKNOWLEDGE,
            status::DRIVER,
            status::FEATURES_OK,
            status::DRIVER_OK,
        ];
        let mut next = self.status;
        for bit in order {
            if new & bit == 0 {
                continue;
            }
            let prerequisites = order
                .iter()
                .take_while(|&&b| b != bit)
                .fold(0, |acc, b| acc | b);
            if next & prerequisites != prerequisites {
                self.bad_accesses += 1;
                return;
            }
            match bit {
                status::FEATURES_OK => {
                    // Accepted only for a subset of the offered features
                    // that includes VERSION_1 (this is a modern transport).
                    let offered = self.device.features();
                    let required = self.device.required_features();
                    if self.driver_features & !offered != 0
                        || self.driver_features & (1 << F_VERSION_1) == 0
                        || self.driver_features & required != required
                    {
                        // FEATURES_OK stays clear: the driver reads it back.
                        self.status = next;
                        return;
                    }
                }
                status::DRIVER_OK => {
                    next |= bit;
                    self.status = next;
                    self.activate();
                    return;
                }
                _ => {}
            }
            next |= bit;
        }
        if new & !(order.iter().fold(0, |acc, b| acc | b)) != 0 {
            self.bad_accesses += 1;
        }
        self.status = next;
    }

    fn activate(&mut self) {
        if self.bad_queue_size {
            eprintln!(
                "virtio-mmio: device type {}: the driver wrote an invalid QueueNum; the device needs a reset",
                self.device.device_type()
            );
            self.interrupt.set_needs_reset();
            return;
        }
        let event_idx = self.driver_features & (1 << F_RING_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            // With ACCESS_PLATFORM the ring addresses are I/O virtual
            // addresses: the device translates and checks them.
            if self.driver_features & (1 << F_ACCESS_PLATFORM) == 0 && !q.is_valid(&self.mem) {
                eprintln!(
                    "virtio-mmio: device type {}: queue {i} is not ready or its rings are outside RAM; the device needs a reset",
                    self.device.device_type()
                );
                self.interrupt.set_needs_reset();
                return;
            }
            // The device's own queue: the same configuration, ready.
            let copy = match Queue::try_from(q.state()) {
                Ok(copy) => copy,
                Err(e) => {
                    eprintln!(
                        "virtio-mmio: device type {}: queue {i}: {e}; the device needs a reset",
                        self.device.device_type()
                    );
                    self.interrupt.set_needs_reset();
                    return;
                }
            };
            queues.push(copy);
        }
        let mut notifiers = Vec::with_capacity(self.notifiers.len());
        for n in &self.notifiers {
            match n.try_clone() {
                Ok(n) => notifiers.push(n),
                Err(e) => {
                    eprintln!(
                        "virtio-mmio: cloning a notifier eventfd: {e}; the device needs a reset"
                    );
                    self.interrupt.set_needs_reset();
                    return;
                }
            }
        }
        let activation = Activation {
            features: self.driver_features,
            queues,
            notifiers,
            interrupt: Arc::clone(&self.interrupt),
            mem: self.mem.clone(),
            gup: Arc::clone(&self.gup),
        };
        match self.device.activate(activation) {
            Ok(()) => self.active = true,
            Err(e) => {
                eprintln!(
                    "virtio-mmio: activating the device failed: {e}; the device needs a reset"
                );
                self.interrupt.set_needs_reset();
            }
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.resets += 1;
        for q in &mut self.queues {
            q.reset();
        }
        // Drain pending notifications of the old queues.
        for n in &self.notifiers {
            let _ = n.read();
        }
        self.interrupt.reset();
        self.status = 0;
        self.bad_queue_size = false;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}
