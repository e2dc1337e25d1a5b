// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-mmio transport, version 2 only (virtio 1.2 section 4.2.2),
//! and a split virtqueue (section 2.7) driven by polling at CPL3.
//!
//! Interrupts stay off: the driver polls the used ring in RAM. With
//! `VIRTIO_F_EVENT_IDX` it leaves `used_event` at 0xffff (so the device
//! needs to interrupt once per 65536 completions) and notifies only when
//! `avail_event` says the device waits for it; without it, it sets
//! `VRING_AVAIL_F_NO_INTERRUPT` and honours `VRING_USED_F_NO_NOTIFY`.
//! Every register access is an MMIO exit (tens of microseconds on the
//! development machine), so the hot path touches only the notify register.
//!
//! Physical and virtual addresses are the same here: the rings and every
//! buffer live in the identity-mapped first GiB.

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use crate::blk::InitError;
use crate::boot::{MMIO_WINDOW, MMIO_WINDOW_SIZE};

/// Register offsets (virtio 1.2, 4.2.2 "MMIO Device Register Layout").
pub mod reg {
    /// "virt" (0x74726976).
    pub const MAGIC: u64 = 0x000;
    /// 2 for the modern transport.
    pub const VERSION: u64 = 0x004;
    /// Device type (2 = block).
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor id.
    pub const VENDOR_ID: u64 = 0x00c;
    /// 32 feature bits selected by `DEVICE_FEATURES_SEL`.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Which 32 device feature bits `DEVICE_FEATURES` shows.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// 32 accepted feature bits selected by `DRIVER_FEATURES_SEL`.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Which 32 driver feature bits `DRIVER_FEATURES` sets.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue the queue registers refer to.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Largest queue size the device allows (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Queue size the driver uses.
    pub const QUEUE_NUM: u64 = 0x038;
    /// 1 once the queue is set up.
    pub const QUEUE_READY: u64 = 0x044;
    /// Write a queue index to notify the device.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Device status (see [`super::status`]).
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Available (driver) ring address, low 32 bits.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Used (device) ring address, low 32 bits.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Changes whenever the configuration space changes.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2, 2.1).
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
    pub const NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Transport feature bits (virtio 1.2, 6).
pub mod feature {
    /// Indirect descriptor tables.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// The modern (virtio 1.x) interface.
    pub const VERSION_1: u64 = 1 << 32;
    /// The device's DMA goes through a platform IOMMU: every address the
    /// driver gives it (rings included) is an I/O virtual address.
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
}

/// `virt` in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Bytes of the register window the driver touches (registers and the
/// block device's configuration space).
pub const MMIO_SPAN: u64 = 0x200;

/// The registers of one virtio-mmio device.
#[derive(Clone, Copy)]
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// The device at `base`, when `base..base + MMIO_SPAN` lies in the
    /// mapped MMIO window and is 4-byte aligned.
    pub fn new(base: u64) -> Option<Mmio> {
        (base >= MMIO_WINDOW && base + MMIO_SPAN <= MMIO_WINDOW + MMIO_WINDOW_SIZE && base % 4 == 0)
            .then_some(Mmio { base })
    }

    /// Reads the 32-bit register at `off`.
    pub fn read(&self, off: u64) -> u32 {
        debug_assert!(off < MMIO_SPAN && off % 4 == 0);
        // SAFETY: `new` checked that the window lies in the identity-mapped,
        // uncached MMIO window of the boot page tables; a read of a device
        // register has no effect on this program's memory.
        unsafe { read_volatile((self.base + off) as *const u32) }
    }

    /// Writes the 32-bit register at `off`.
    pub fn write(&self, off: u64, value: u32) {
        debug_assert!(off < MMIO_SPAN && off % 4 == 0);
        // SAFETY: as for `read`; the write goes to the device, not to RAM.
        unsafe { write_volatile((self.base + off) as *mut u32, value) }
    }

    /// Reads the device status.
    pub fn status(&self) -> u32 {
        self.read(reg::STATUS)
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.read(reg::DEVICE_FEATURES);
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.read(reg::DEVICE_FEATURES);
        u64::from(hi) << 32 | u64::from(lo)
    }

    /// Accepts `features`.
    pub fn set_driver_features(&self, features: u64) {
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
    }

    /// Writes a 64-bit address to a register pair: the low 32 bits at
    /// `low`, the high ones at `low + 4`.
    pub fn write_addr(&self, low: u64, value: u64) {
        self.write(low, value as u32);
        self.write(low + 4, (value >> 32) as u32);
    }

    /// Resets the device (status 0) and waits until it says the reset is
    /// done (2.4.1); `Err` with the status it still shows after
    /// [`TIMEOUT_TSC`].
    pub fn reset(&self) -> Result<(), u32> {
        self.write(reg::STATUS, 0);
        let start = tsc();
        while self.status() != 0 {
            if tsc().wrapping_sub(start) > TIMEOUT_TSC {
                return Err(self.status());
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// The driver sequence (3.1.1) up to FEATURES_OK: reset, ACKNOWLEDGE,
    /// DRIVER, then the features `choose` picks from those offered (which
    /// must include VERSION_1). Returns the offered and the negotiated
    /// features; when the device does not offer VERSION_1 or refuses the
    /// features, it is marked FAILED.
    pub fn negotiate(&self, choose: impl FnOnce(u64) -> u64) -> Result<(u64, u64), InitError> {
        self.reset().map_err(InitError::Status)?;
        self.write(reg::STATUS, status::ACKNOWLEDGE);
        self.write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let offered = self.device_features();
        if offered & feature::VERSION_1 == 0 {
            self.write(reg::STATUS, status::FAILED);
            return Err(InitError::NoVersion1(offered));
        }
        let features = choose(offered);
        self.set_driver_features(features);
        self.write(reg::STATUS, FEATURES_OK_STATUS);
        let got = self.status();
        if got & status::FEATURES_OK == 0 {
            self.write(reg::STATUS, status::FAILED);
            return Err(InitError::FeaturesRefused(got));
        }
        Ok((offered, features))
    }

    /// Sets DRIVER_OK after [`negotiate`](Self::negotiate) and the queue
    /// set-up; `Err` when the device then says it is not [`live`].
    pub fn driver_ok(&self) -> Result<(), InitError> {
        self.write(reg::STATUS, FEATURES_OK_STATUS | status::DRIVER_OK);
        let got = self.status();
        if !live(got) {
            return Err(InitError::Status(got));
        }
        Ok(())
    }
}

/// The status of a device between FEATURES_OK and DRIVER_OK.
const FEATURES_OK_STATUS: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

/// Whether the device `status` of a set-up device says it runs: DRIVER_OK
/// set, neither DEVICE_NEEDS_RESET nor FAILED.
pub fn live(status: u32) -> bool {
    status & (status::NEEDS_RESET | status::FAILED) == 0 && status & status::DRIVER_OK != 0
}

/// The time stamp counter (readable at CPL3: CR4.TSD is clear).
pub fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the counter.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    u64::from(hi) << 32 | u64::from(lo)
}

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer (else it reads it).
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// `avail.flags`: do not interrupt (without EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `used.flags`: do not notify (without EVENT_IDX).
const USED_F_NO_NOTIFY: u16 = 1;

/// A descriptor as it sits in a descriptor table (also in an indirect one).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Bytes of the buffer.
    pub len: u32,
    /// `DESC_F_*`.
    pub flags: u16,
    /// Next descriptor of the chain when `flags` has `DESC_F_NEXT`.
    pub next: u16,
}

/// One buffer of a chain to add, linked to the following one (the last one
/// ends the chain) unless `self_loop` links it to itself.
#[derive(Clone, Copy)]
pub struct Seg {
    /// Guest-physical address.
    pub addr: u64,
    /// Bytes.
    pub len: u32,
    /// `DESC_F_WRITE` and/or `DESC_F_INDIRECT` (`DESC_F_NEXT` is set here).
    pub flags: u16,
    /// Link this descriptor to itself (a looping chain, for a bad request).
    pub self_loop: bool,
}

impl Seg {
    /// A buffer the device reads.
    pub const fn out(addr: u64, len: u32) -> Seg {
        Seg {
            addr,
            len,
            flags: 0,
            self_loop: false,
        }
    }

    /// A buffer the device writes.
    pub const fn inn(addr: u64, len: u32) -> Seg {
        Seg {
            addr,
            len,
            flags: DESC_F_WRITE,
            self_loop: false,
        }
    }
}

/// One used-ring element.
#[derive(Clone, Copy, Debug)]
pub struct Used {
    /// Head of the chain the device returned.
    pub id: u16,
    /// Bytes the device says it wrote.
    pub len: u32,
}

/// What went wrong with the queue itself.
#[derive(Clone, Copy, Debug)]
pub enum QueueError {
    /// Not enough free descriptors for the chain.
    Full,
    /// The device returned a head that is not in flight.
    BadUsedId(u32),
    /// No completion within the time limit.
    Timeout,
}

impl core::fmt::Display for QueueError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            QueueError::Full => write!(f, "queue full"),
            QueueError::BadUsedId(id) => write!(f, "used ring returned id {id}, not in flight"),
            QueueError::Timeout => write!(f, "no completion (timed out)"),
        }
    }
}

/// Largest queue size used (the ring memory is sized for it).
pub const MAX_QUEUE: u16 = 256;
/// Bytes of ring memory a queue needs: descriptor table, available ring,
/// used ring, each on its own 4 KiB page.
pub const RING_BYTES: u64 = 3 * 4096;
/// TSC ticks a completion may take before the request counts as lost
/// (about 10 s at 2 GHz).
pub const TIMEOUT_TSC: u64 = 20_000_000_000;

/// A split virtqueue, driven by one driver with polling.
pub struct Queue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify: Mmio,
    index: u32,
    event_idx: bool,
    free_head: u16,
    num_free: u16,
    /// Free list and in-flight chains: the driver's own copy of the links
    /// (the device never sees it, so a chain the device was shown with
    /// broken links is still freed exactly).
    next: [u16; MAX_QUEUE as usize],
    /// Descriptors of the chain headed here (0: not in flight).
    count: [u16; MAX_QUEUE as usize],
    avail_idx: u16,
    kicked_idx: u16,
    last_used: u16,
    /// Notifications written to the device.
    pub notifies: u64,
}

impl Queue {
    /// Sets up queue `index` of `mmio` with ring memory at `ring` (a
    /// zeroed, page-aligned, identity-mapped region of [`RING_BYTES`]).
    /// The device must be between FEATURES_OK and DRIVER_OK. Returns
    /// `None` when the device has no such queue or it is already live.
    pub fn new(mmio: Mmio, index: u32, ring: u64, event_idx: bool) -> Option<Queue> {
        mmio.write(reg::QUEUE_SEL, index);
        if mmio.read(reg::QUEUE_READY) != 0 {
            return None;
        }
        let max = mmio.read(reg::QUEUE_NUM_MAX);
        if max == 0 {
            return None;
        }
        // A power of two (split queues need one; the ring arithmetic
        // below relies on the size dividing 65536).
        let cap = max.min(u32::from(MAX_QUEUE));
        let size = (1u32 << (31 - cap.leading_zeros())) as u16;
        let q = Queue {
            size,
            desc: ring,
            avail: ring + 4096,
            used: ring + 2 * 4096,
            notify: mmio,
            index,
            event_idx,
            free_head: 0,
            num_free: size,
            next: core::array::from_fn(|i| (i + 1) as u16),
            count: [0; MAX_QUEUE as usize],
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            notifies: 0,
        };
        // Without EVENT_IDX: ask for no interrupts. With it: used_event
        // stays 0xffff, so the device interrupts only when its used index
        // passes 0xffff -> 0 (once per 65536 completions). A used_event
        // that follows the driver would be passed again and again by a
        // device that compares it with the index of its last interrupt.
        if event_idx {
            q.set_used_event(0xffff);
        } else {
            q.write16(q.avail, AVAIL_F_NO_INTERRUPT);
        }
        mmio.write(reg::QUEUE_NUM, u32::from(size));
        mmio.write_addr(reg::QUEUE_DESC_LOW, q.desc);
        mmio.write_addr(reg::QUEUE_DRIVER_LOW, q.avail);
        mmio.write_addr(reg::QUEUE_DEVICE_LOW, q.used);
        mmio.write(reg::QUEUE_READY, 1);
        Some(q)
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    fn write16(&self, addr: u64, v: u16) {
        // SAFETY: `addr` is inside this queue's ring memory (identity-mapped
        // RAM owned by the queue); the device reads it concurrently, which
        // volatile accesses of aligned u16s allow.
        unsafe { write_volatile(addr as *mut u16, v) }
    }

    fn read16(&self, addr: u64) -> u16 {
        // SAFETY: as for `write16`.
        unsafe { read_volatile(addr as *const u16) }
    }

    fn set_used_event(&self, v: u16) {
        self.write16(self.avail + 4 + 2 * u64::from(self.size), v);
    }

    /// Writes descriptor `i` of the ring's table.
    fn write_desc(&self, i: u16, d: Desc) {
        let p = (self.desc + 16 * u64::from(i)) as *mut Desc;
        // SAFETY: i < size, so the descriptor lies in the table page owned
        // by this queue; the device does not read it until it is published.
        unsafe { write_volatile(p, d) }
    }

    /// Adds a chain and publishes it in the available ring (the device may
    /// start on it at once; [`kick`](Self::kick) notifies it if needed).
    /// Returns the head descriptor's index.
    pub fn add(&mut self, segs: &[Seg]) -> Result<u16, QueueError> {
        let n = segs.len() as u16;
        if n == 0 || n > self.num_free || segs.len() > usize::from(self.size) {
            return Err(QueueError::Full);
        }
        let head = self.free_head;
        let mut i = head;
        for (k, s) in segs.iter().enumerate() {
            let next = self.next[usize::from(i)];
            let last = k + 1 == segs.len();
            let (flags, link) = if s.self_loop {
                (s.flags | DESC_F_NEXT, i)
            } else if last {
                (s.flags, 0)
            } else {
                (s.flags | DESC_F_NEXT, next)
            };
            self.write_desc(
                i,
                Desc {
                    addr: s.addr,
                    len: s.len,
                    flags,
                    next: link,
                },
            );
            if !last {
                i = next;
            }
        }
        // `i` is the chain's tail; the free list resumes after it.
        self.free_head = self.next[usize::from(i)];
        self.num_free -= n;
        self.count[usize::from(head)] = n;
        let slot = u64::from(self.avail_idx % self.size);
        self.write16(self.avail + 4 + 2 * slot, head);
        // The descriptors and the ring entry before the index that
        // publishes them (x86 keeps stores in order; this stops the
        // compiler from moving them).
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write16(self.avail + 2, self.avail_idx);
        Ok(head)
    }

    /// Notifies the device if it asked to be notified about the chains
    /// added since the last notification.
    pub fn kick(&mut self) {
        if self.avail_idx == self.kicked_idx {
            return;
        }
        // The index store must be visible before the device's event index
        // or flags are read (store-load order: a full fence even on x86),
        // else both sides may wait for each other.
        fence(Ordering::SeqCst);
        let new = self.avail_idx;
        let old = self.kicked_idx;
        let needed = if self.event_idx {
            let event = self.read16(self.used + 4 + 8 * u64::from(self.size));
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.read16(self.used) & USED_F_NO_NOTIFY == 0
        };
        self.kicked_idx = new;
        if needed {
            self.notifies += 1;
            self.notify.write(reg::QUEUE_NOTIFY, self.index);
        }
    }

    /// Takes the next used element, if any, and frees its chain.
    pub fn poll(&mut self) -> Result<Option<Used>, QueueError> {
        if self.read16(self.used + 2) == self.last_used {
            return Ok(None);
        }
        // The element after the index that published it.
        fence(Ordering::Acquire);
        let slot = u64::from(self.last_used % self.size);
        let e = self.used + 4 + 8 * slot;
        // SAFETY: inside the used ring page owned by this queue.
        let (id, len) = unsafe {
            (
                read_volatile(e as *const u32),
                read_volatile((e + 4) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        if id >= u32::from(self.size) || self.count[id as usize] == 0 {
            return Err(QueueError::BadUsedId(id));
        }
        let head = id as u16;
        let n = self.count[usize::from(head)];
        let mut tail = head;
        for _ in 1..n {
            tail = self.next[usize::from(tail)];
        }
        self.next[usize::from(tail)] = self.free_head;
        self.free_head = head;
        self.num_free += n;
        self.count[usize::from(head)] = 0;
        Ok(Some(Used { id: head, len }))
    }

    /// Waits (polling) for the next used element.
    pub fn wait(&mut self) -> Result<Used, QueueError> {
        let start = tsc();
        loop {
            if let Some(u) = self.poll()? {
                return Ok(u);
            }
            if tsc().wrapping_sub(start) > TIMEOUT_TSC {
                return Err(QueueError::Timeout);
            }
            core::hint::spin_loop();
        }
    }
}
