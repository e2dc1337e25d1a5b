// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A virtio-blk driver (virtio 1.2 section 5.2) on the virtio-mmio
//! transport, polled at CPL3, one request queue.
//!
//! Requests are chains of the driver's choosing ([`Blk::submit`]): the DMA
//! scenarios build legal layouts the common drivers never use, and bad ones.
//! [`Blk::pipeline`] keeps up to a queue depth of plain requests in flight
//! (header, data split only where `size_max` demands it, status) for the
//! many-request checks and the benchmark.

use core::fmt;
use core::ptr::{read_volatile, write_volatile};

use crate::pvh::MmioDevice;
use crate::virtio::{
    feature as vfeature, reg, status, tsc, Mmio, Queue, QueueError, Seg, Used, MAX_QUEUE,
    MMIO_MAGIC, TIMEOUT_TSC,
};

/// virtio device id of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// The virtio-mmio vendor id QEMU's transport reports ("QEMU").
pub const VENDOR_QEMU: u32 = 0x554d_4551;
/// Bytes of a sector.
pub const SECTOR: u64 = 512;
/// Bytes of a GET_ID answer.
pub const ID_BYTES: usize = 20;

/// virtio-blk feature bits (virtio 1.2, 5.2.3).
pub mod feature {
    /// `size_max`: the largest data descriptor.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// `seg_max`: the most data descriptors in a request.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The device is read-only.
    pub const RO: u64 = 1 << 5;
    /// `blk_size`: the device's block size.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// The FLUSH request.
    pub const FLUSH: u64 = 1 << 9;
}

/// Request types (virtio 1.2, 5.2.6).
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush the write cache.
    pub const FLUSH: u32 = 4;
    /// Read the 20-byte device id.
    pub const GET_ID: u32 = 8;
}

/// Request status values.
pub mod blk_status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Request unsupported.
    pub const UNSUPP: u8 = 2;
}

/// The features the driver accepts when offered (`VERSION_1` is required).
pub const WANTED: u64 = vfeature::VERSION_1
    | vfeature::EVENT_IDX
    | vfeature::INDIRECT_DESC
    | feature::SIZE_MAX
    | feature::SEG_MAX
    | feature::RO
    | feature::BLK_SIZE
    | feature::FLUSH;

/// Offset of the per-slot headers and status bytes in the scratch page.
const SLOTS_OFFSET: u64 = 0x800;
/// Bytes per slot (16-byte header, status byte at 16).
const SLOT_BYTES: u64 = 32;
/// Most requests [`Blk::pipeline`] keeps in flight.
pub const MAX_DEPTH: usize = 64;
/// A poisoned status byte (no status value uses it).
pub const STATUS_POISON: u8 = 0xa5;

/// Why a device was not set up.
#[derive(Clone, Copy, Debug)]
pub enum InitError {
    /// The window is outside the mapped MMIO window.
    NotMapped,
    /// No `virt` magic.
    BadMagic(u32),
    /// Not the modern transport.
    BadVersion(u32),
    /// The device does not offer VERSION_1.
    NoVersion1(u64),
    /// The device refused the features (FEATURES_OK did not stick).
    FeaturesRefused(u32),
    /// Queue 0 is missing or already live.
    NoQueue,
    /// The device did not finish a reset, or reported failure after DRIVER_OK.
    Status(u32),
    /// The configuration generation kept changing.
    ConfigUnstable,
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            InitError::NotMapped => write!(f, "outside the mapped MMIO window 0xc0000000..4G"),
            InitError::BadMagic(m) => write!(f, "magic {m:#x}, not \"virt\""),
            InitError::BadVersion(v) => write!(f, "transport version {v} (only 2 is driven)"),
            InitError::NoVersion1(o) => write!(f, "VERSION_1 not offered (features {o:#x})"),
            InitError::FeaturesRefused(s) => write!(f, "FEATURES_OK refused (status {s:#x})"),
            InitError::NoQueue => write!(f, "queue 0 missing or already live"),
            InitError::Status(s) => write!(f, "status {s:#x} (after a reset or DRIVER_OK)"),
            InitError::ConfigUnstable => write!(f, "the configuration generation keeps changing"),
        }
    }
}

/// What sits at a `virtio_mmio.device=` address.
pub struct Probe {
    /// The registers.
    pub mmio: Mmio,
    /// The virtio device id (0: an empty slot).
    pub device_id: u32,
    /// The transport's vendor id.
    pub vendor: u32,
}

/// Reads magic, version, device and vendor ids.
pub fn probe(dev: &MmioDevice) -> Result<Probe, InitError> {
    let mmio = Mmio::new(dev.base).ok_or(InitError::NotMapped)?;
    let magic = mmio.read(reg::MAGIC);
    if magic != MMIO_MAGIC {
        return Err(InitError::BadMagic(magic));
    }
    let version = mmio.read(reg::VERSION);
    if version != 2 {
        return Err(InitError::BadVersion(version));
    }
    Ok(Probe {
        mmio,
        device_id: mmio.read(reg::DEVICE_ID),
        vendor: mmio.read(reg::VENDOR_ID),
    })
}

/// A request slot of [`Blk::pipeline`]: header and status in the scratch
/// page, the data buffer of the caller's choosing.
#[derive(Clone, Copy)]
pub struct Job {
    /// Request type ([`req`]).
    pub ty: u32,
    /// First sector.
    pub sector: u64,
    /// Guest-physical data buffer (none when `len` is 0).
    pub addr: u64,
    /// Bytes of data.
    pub len: u32,
}

/// One virtio-blk device, set up and ready.
pub struct Blk {
    /// Where the command line said it is.
    pub dev: MmioDevice,
    /// Its registers.
    pub mmio: Mmio,
    /// The transport's vendor id.
    pub vendor: u32,
    /// Features the device offered.
    pub offered: u64,
    /// Features negotiated.
    pub features: u64,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Most data descriptors per request (`seg_max`; 0 when not negotiated).
    pub seg_max: u32,
    /// Largest data descriptor (`size_max`; 0 when not negotiated).
    pub size_max: u32,
    /// Block size (`blk_size`; 0 when not negotiated).
    pub blk_size: u32,
    /// The request queue.
    pub q: Queue,
    /// A 4 KiB identity-mapped page for headers and status bytes.
    pub scratch: u64,
    /// Requests submitted.
    pub requests: u64,
    /// Set when a request got lost (timed out) or the queue broke: the
    /// device is not used again.
    pub broken: bool,
}

impl Blk {
    /// Resets and sets up the block device found by `p`, accepting
    /// [`WANTED`] minus `mask`. `ring` is zeroed, page-aligned
    /// [`RING_BYTES`](crate::virtio::RING_BYTES) of RAM and `scratch` a
    /// 4 KiB page, both identity-mapped.
    pub fn init(
        dev: MmioDevice,
        p: &Probe,
        ring: u64,
        scratch: u64,
        mask: u64,
    ) -> Result<Blk, InitError> {
        Blk::init_with(dev, p, ring, scratch, mask, 0)
    }

    /// [`init`](Self::init), also accepting the feature bits `extra` when
    /// offered (e.g. `VIRTIO_F_ACCESS_PLATFORM` for a disk behind the
    /// IOMMU: `ring` and `scratch` are then I/O virtual addresses too, and
    /// the domain must map them before this is called).
    pub fn init_with(
        dev: MmioDevice,
        p: &Probe,
        ring: u64,
        scratch: u64,
        mask: u64,
        extra: u64,
    ) -> Result<Blk, InitError> {
        let mmio = p.mmio;
        let (offered, features) =
            mmio.negotiate(|offered| offered & (WANTED | extra) & !mask | vfeature::VERSION_1)?;
        let event_idx = features & vfeature::EVENT_IDX != 0;
        let Some(q) = Queue::new(mmio, 0, ring, event_idx) else {
            mmio.write(reg::STATUS, status::FAILED);
            return Err(InitError::NoQueue);
        };
        let Some((capacity, seg_max, size_max, blk_size)) = read_config(&mmio, features) else {
            mmio.write(reg::STATUS, status::FAILED);
            return Err(InitError::ConfigUnstable);
        };
        mmio.driver_ok()?;
        Ok(Blk {
            dev,
            mmio,
            vendor: p.vendor,
            offered,
            features,
            capacity,
            seg_max,
            size_max,
            blk_size,
            q,
            scratch,
            requests: 0,
            broken: false,
        })
    }

    /// Whether `f` was negotiated.
    pub fn has(&self, f: u64) -> bool {
        self.features & f != 0
    }

    /// Most data descriptors a request may have: `seg_max` when negotiated,
    /// else what the queue holds besides header and status.
    pub fn max_segments(&self) -> u32 {
        let ring = u32::from(self.q.size()) - 2;
        if self.seg_max != 0 {
            self.seg_max.min(ring)
        } else {
            ring
        }
    }

    /// Largest data descriptor: `size_max` when negotiated.
    pub fn max_segment_bytes(&self) -> u32 {
        if self.size_max != 0 {
            self.size_max
        } else {
            u32::MAX
        }
    }

    /// Writes a request header at `at`.
    pub fn header(at: u64, ty: u32, sector: u64) {
        // SAFETY: `at` is 16 bytes of identity-mapped RAM owned by the
        // caller's request (not in flight).
        unsafe {
            write_volatile(at as *mut u32, ty);
            write_volatile((at + 4) as *mut u32, 0);
            write_volatile((at + 8) as *mut u64, sector);
        }
    }

    /// Adds a chain, notifies as needed and waits for it (with `timeout`
    /// TSC ticks). The device gets nothing else meanwhile.
    pub fn submit(&mut self, segs: &[Seg], timeout: u64) -> Result<Used, QueueError> {
        if self.broken {
            return Err(QueueError::Timeout);
        }
        let head = self.q.add(segs)?;
        self.requests += 1;
        self.q.kick();
        let start = tsc();
        loop {
            match self.q.poll() {
                Ok(Some(u)) if u.id == head => return Ok(u),
                Ok(Some(u)) => {
                    self.broken = true;
                    return Err(QueueError::BadUsedId(u32::from(u.id)));
                }
                Ok(None) => {}
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
            if tsc().wrapping_sub(start) > timeout {
                self.broken = true;
                return Err(QueueError::Timeout);
            }
            core::hint::spin_loop();
        }
    }

    /// A plain request (header, data split as `size_max` requires, status)
    /// with header and status in the scratch page; returns the status byte
    /// and the used length.
    pub fn simple(
        &mut self,
        ty: u32,
        sector: u64,
        addr: u64,
        len: u32,
    ) -> Result<(u8, u32), QueueError> {
        let hdr = self.scratch;
        let st = self.scratch + 16;
        Self::header(hdr, ty, sector);
        poke(st, STATUS_POISON);
        let write = ty != req::OUT && ty != req::FLUSH;
        let mut segs = SegList::new();
        segs.push(Seg::out(hdr, 16));
        self.push_data(&mut segs, addr, len, write);
        segs.push(Seg::inn(st, 1));
        let u = self.submit(segs.chain()?, TIMEOUT_TSC)?;
        Ok((peek(st), u.len))
    }

    /// Appends `addr..addr + len` as data descriptors of at most
    /// [`max_segment_bytes`](Self::max_segment_bytes) each.
    pub fn push_data(&self, segs: &mut SegList, addr: u64, len: u32, device_writes: bool) {
        self.push_data_max(segs, addr, len, device_writes, self.max_segment_bytes());
    }

    /// Appends `addr..addr + len` as data descriptors of at most `max` bytes.
    pub fn push_data_max(
        &self,
        segs: &mut SegList,
        addr: u64,
        len: u32,
        device_writes: bool,
        max: u32,
    ) {
        let max = max.max(1);
        let mut off = 0u32;
        while off < len {
            let n = (len - off).min(max);
            let a = addr + u64::from(off);
            segs.push(if device_writes {
                Seg::inn(a, n)
            } else {
                Seg::out(a, n)
            });
            off += n;
        }
    }

    /// Data descriptors a `len`-byte buffer takes.
    pub fn segments_for(&self, len: u32) -> u32 {
        len.div_ceil(self.max_segment_bytes())
    }

    /// Runs `total` plain requests with up to `depth` of them in flight:
    /// `make(i, slot)` describes request `i` (slots `0..depth` are never
    /// shared by two requests in flight), `done(i, slot, status, used_len)`
    /// sees its completion. New requests are added as soon as others
    /// complete, so the queue stays full; the device is notified only when
    /// it asks for it.
    pub fn pipeline(
        &mut self,
        depth: usize,
        total: u64,
        mut make: impl FnMut(u64, usize) -> Job,
        mut done: impl FnMut(u64, usize, u8, u32),
    ) -> Result<(), QueueError> {
        if self.broken {
            return Err(QueueError::Timeout);
        }
        let depth = depth.clamp(1, MAX_DEPTH);
        // Slot of each head in flight, and the request number.
        let mut tag = [(0u8, 0u64); MAX_QUEUE as usize];
        let mut free = [0u8; MAX_DEPTH];
        for (i, f) in free.iter_mut().enumerate() {
            *f = i as u8;
        }
        let mut nfree = depth;
        let (mut next, mut completed) = (0u64, 0u64);
        while completed < total {
            while next < total && nfree > 0 {
                let slot = free[nfree - 1];
                let job = make(next, usize::from(slot));
                let hdr = self.scratch + SLOTS_OFFSET + SLOT_BYTES * u64::from(slot);
                let mut segs = SegList::new();
                segs.push(Seg::out(hdr, 16));
                if job.len != 0 {
                    self.push_data(
                        &mut segs,
                        job.addr,
                        job.len,
                        job.ty == req::IN || job.ty == req::GET_ID,
                    );
                }
                segs.push(Seg::inn(hdr + 16, 1));
                let chain = segs.chain()?;
                if chain.len() > usize::from(self.q.num_free()) {
                    if nfree == depth {
                        // Nothing in flight: it will never fit.
                        return Err(QueueError::Full);
                    }
                    break;
                }
                Self::header(hdr, job.ty, job.sector);
                poke(hdr + 16, STATUS_POISON);
                let head = self.q.add(chain)?;
                self.requests += 1;
                tag[usize::from(head)] = (slot, next);
                nfree -= 1;
                next += 1;
            }
            self.q.kick();
            let mut first = true;
            loop {
                let u = if first {
                    first = false;
                    match self.q.wait() {
                        Ok(u) => Some(u),
                        Err(e) => {
                            self.broken = true;
                            return Err(e);
                        }
                    }
                } else {
                    self.q.poll().inspect_err(|_| self.broken = true)?
                };
                let Some(u) = u else { break };
                let (slot, i) = tag[usize::from(u.id)];
                let hdr = self.scratch + SLOTS_OFFSET + SLOT_BYTES * u64::from(slot);
                done(i, usize::from(slot), peek(hdr + 16), u.len);
                free[nfree] = slot;
                nfree += 1;
                completed += 1;
            }
        }
        Ok(())
    }

    /// The device id from GET_ID (NUL-padded), the status byte, and the
    /// used length.
    pub fn get_id(&mut self) -> Result<([u8; ID_BYTES], u8, u32), QueueError> {
        let buf = self.scratch + 0x100;
        for i in 0..ID_BYTES as u64 {
            poke(buf + i, 0);
        }
        let (st, len) = self.simple(req::GET_ID, 0, buf, ID_BYTES as u32)?;
        let mut id = [0u8; ID_BYTES];
        for (i, b) in id.iter_mut().enumerate() {
            *b = peek(buf + i as u64);
        }
        Ok((id, st, len))
    }
}

/// The block configuration fields the driver uses, read consistently
/// (the generation counter unchanged around the reads; `None` when it
/// changed every time).
fn read_config(mmio: &Mmio, features: u64) -> Option<(u64, u32, u32, u32)> {
    for _ in 0..100 {
        let gen = mmio.read(reg::CONFIG_GENERATION);
        let capacity =
            u64::from(mmio.read(reg::CONFIG)) | u64::from(mmio.read(reg::CONFIG + 4)) << 32;
        let pick = |f: u64, off: u64| {
            if features & f != 0 {
                mmio.read(reg::CONFIG + off)
            } else {
                0
            }
        };
        let size_max = pick(feature::SIZE_MAX, 8);
        let seg_max = pick(feature::SEG_MAX, 12);
        let blk_size = pick(feature::BLK_SIZE, 20);
        if mmio.read(reg::CONFIG_GENERATION) == gen {
            return Some((capacity, seg_max, size_max, blk_size));
        }
    }
    None
}

/// Writes a byte of identity-mapped RAM.
pub fn poke(addr: u64, v: u8) {
    // SAFETY: callers pass identity-mapped RAM they own (scratch pages and
    // arena buffers not in flight, or in flight but only read by the device).
    unsafe { write_volatile(addr as *mut u8, v) }
}

/// Reads a byte of identity-mapped RAM (possibly written by the device).
pub fn peek(addr: u64) -> u8 {
    // SAFETY: as for `poke`.
    unsafe { read_volatile(addr as *const u8) }
}

/// Most descriptors of a chain built here.
pub const MAX_CHAIN: usize = 80;

/// A chain under construction.
pub struct SegList {
    segs: [Seg; MAX_CHAIN],
    n: usize,
    overflow: bool,
}

impl Default for SegList {
    fn default() -> Self {
        SegList::new()
    }
}

impl SegList {
    /// An empty chain.
    pub fn new() -> SegList {
        SegList {
            segs: [Seg::out(0, 0); MAX_CHAIN],
            n: 0,
            overflow: false,
        }
    }

    /// Appends a descriptor (beyond [`MAX_CHAIN`] the list only records
    /// that it overflowed).
    pub fn push(&mut self, s: Seg) {
        if self.n < MAX_CHAIN {
            self.segs[self.n] = s;
            self.n += 1;
        } else {
            self.overflow = true;
        }
    }

    /// Descriptors so far.
    pub fn len(&self) -> usize {
        self.n
    }

    /// The chain, or `Full` when more than [`MAX_CHAIN`] were pushed.
    pub fn chain(&self) -> Result<&[Seg], QueueError> {
        if self.overflow {
            Err(QueueError::Full)
        } else {
            Ok(&self.segs[..self.n])
        }
    }
}
