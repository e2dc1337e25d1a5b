// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-blk (virtio 1.2 section 5.2) with zero-copy DMA through guest-mm
//! pins (DESIGN section 5).
//!
//! * [`request`]: a chain taken apart into header, data and status, with
//!   every layout the spec allows.
//! * [`disk`]: the backing file (preadv/pwritev, flush, discard).
//! * [`pool`]: I/O threads for large transfers.
//! * [`worker`]: the request path (pin, transfer, release, status, used
//!   ring, interrupt) and its thread.
//! * [`stats`]: counters and error classes.
//!
//! [`Block`] is the [`VirtioDevice`]: features, configuration space, and
//! the worker's life cycle (started at DRIVER_OK, stopped at reset).

pub mod disk;
pub mod pool;
pub mod request;
pub mod stats;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

pub use disk::{Disk, DiskOptions};
pub use stats::{BlockCounters, BlockStats, ErrorClass};
pub use worker::BlockQueue;

use guest_mm::gup::{GuestMemory, Gup, GupFlags, Pinned};
use request::{Supported, ID_LEN};
use virtio_queue::{Queue, QueueT};

use super::iommu::{DmaError, Endpoint};
use super::{
    ActivateError, Activation, VirtioDevice, F_ACCESS_PLATFORM as ACCESS_PLATFORM,
    F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1,
};

/// The virtio device ID of a block device.
pub const DEVICE_TYPE: u32 = 2;
/// Queue size (the largest the transport offers).
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request we announce (SEG_MAX): the queue size minus
/// the header and status descriptors, as a direct chain can hold.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// virtio-blk feature bits.
pub mod features {
    /// size_max is valid.
    pub const SIZE_MAX: u32 = 1;
    /// seg_max is valid.
    pub const SEG_MAX: u32 = 2;
    /// The disk is read-only.
    pub const RO: u32 = 5;
    /// blk_size is valid.
    pub const BLK_SIZE: u32 = 6;
    /// FLUSH requests.
    pub const FLUSH: u32 = 9;
    /// DISCARD requests.
    pub const DISCARD: u32 = 13;
    /// WRITE_ZEROES requests.
    pub const WRITE_ZEROES: u32 = 14;
}

/// Configuration-space offsets (struct virtio_blk_config).
pub mod config {
    /// capacity (u64, sectors).
    pub const CAPACITY: usize = 0;
    /// seg_max (u32).
    pub const SEG_MAX: usize = 12;
    /// blk_size (u32).
    pub const BLK_SIZE: usize = 20;
    /// max_discard_sectors (u32).
    pub const MAX_DISCARD_SECTORS: usize = 36;
    /// max_discard_seg (u32).
    pub const MAX_DISCARD_SEG: usize = 40;
    /// discard_sector_alignment (u32).
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    /// max_write_zeroes_sectors (u32).
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    /// max_write_zeroes_seg (u32).
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    /// write_zeroes_may_unmap (u8).
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
    /// Bytes of the configuration space we expose.
    pub const LEN: usize = 60;
}

/// Ranges per DISCARD / WRITE_ZEROES request we announce.
pub const MAX_DISCARD_SEG: u32 = 32;

/// How a block device is set up.
#[derive(Clone, Debug)]
pub struct BlockConfig {
    /// The backing file.
    pub disk: DiskOptions,
    /// The GET_ID string (at most 20 bytes are used).
    pub id: String,
    /// Index for names in logs (`virtio-blk<N>`).
    pub index: usize,
    /// How long the worker keeps polling the ring after it ran dry.
    pub poll: Duration,
    /// The IOMMU endpoint when the disk is behind the IOMMU: it then
    /// offers and requires ACCESS_PLATFORM, and every address (rings
    /// included) goes through the endpoint's domain.
    pub endpoint: Option<Endpoint>,
    /// How long a request parked on a page request waits for the answer.
    pub page_request_timeout: Duration,
}

/// A virtio-blk device.
pub struct Block {
    name: String,
    disk: Arc<Disk>,
    id: [u8; ID_LEN as usize],
    stats: Arc<BlockStats>,
    features: u64,
    config: [u8; config::LEN],
    poll: Duration,
    endpoint: Option<Endpoint>,
    page_request_timeout: Duration,
    worker: Option<worker::Worker>,
}

impl Block {
    /// Opens the backing file and builds the device.
    pub fn new(cfg: &BlockConfig) -> std::io::Result<Self> {
        let disk = Disk::open(&cfg.disk)?;
        let mut features = (1u64 << F_VERSION_1)
            | (1 << F_RING_EVENT_IDX)
            | (1 << F_RING_INDIRECT_DESC)
            | (1 << features::SEG_MAX)
            | (1 << features::BLK_SIZE)
            | (1 << features::FLUSH);
        if cfg.endpoint.is_some() {
            features |= 1 << ACCESS_PLATFORM;
        }
        if disk.read_only() {
            features |= 1 << features::RO;
        } else {
            features |= (1 << features::DISCARD) | (1 << features::WRITE_ZEROES);
        }
        let mut config = [0u8; config::LEN];
        let mut put = |at: usize, bytes: &[u8]| config[at..at + bytes.len()].copy_from_slice(bytes);
        put(config::CAPACITY, &disk.capacity().to_le_bytes());
        put(config::SEG_MAX, &SEG_MAX.to_le_bytes());
        put(config::BLK_SIZE, &512u32.to_le_bytes());
        let max_sectors = u32::try_from(disk.capacity()).unwrap_or(u32::MAX);
        put(config::MAX_DISCARD_SECTORS, &max_sectors.to_le_bytes());
        put(config::MAX_DISCARD_SEG, &MAX_DISCARD_SEG.to_le_bytes());
        put(config::DISCARD_SECTOR_ALIGNMENT, &1u32.to_le_bytes());
        put(config::MAX_WRITE_ZEROES_SECTORS, &max_sectors.to_le_bytes());
        put(config::MAX_WRITE_ZEROES_SEG, &MAX_DISCARD_SEG.to_le_bytes());
        put(config::WRITE_ZEROES_MAY_UNMAP, &[1]);
        let mut id = [0u8; ID_LEN as usize];
        let n = cfg.id.len().min(id.len());
        id[..n].copy_from_slice(&cfg.id.as_bytes()[..n]);
        Ok(Block {
            name: format!("virtio-blk{}", cfg.index),
            disk: Arc::new(disk),
            id,
            stats: Arc::new(BlockStats::default()),
            features,
            config,
            poll: cfg.poll,
            endpoint: cfg.endpoint.clone(),
            page_request_timeout: cfg.page_request_timeout,
            worker: None,
        })
    }

    /// Whether the disk is behind the IOMMU.
    pub fn behind_iommu(&self) -> bool {
        self.endpoint.is_some()
    }

    /// The counters.
    pub fn stats(&self) -> Arc<BlockStats> {
        Arc::clone(&self.stats)
    }

    /// The backing file.
    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }

    /// Builds the synchronous request path for `activation` (what the
    /// worker thread runs; tests and the fuzz target drive it directly).
    pub fn queue_for(&self, mut activation: Activation) -> Result<BlockQueue, ActivateError> {
        let Some(queue) = activation.queues.pop() else {
            return Err(ActivateError("virtio-blk has one queue".into()));
        };
        let f = activation.features;
        let supported = Supported {
            flush: f & (1 << features::FLUSH) != 0,
            discard: f & (1 << features::DISCARD) != 0,
            write_zeroes: f & (1 << features::WRITE_ZEROES) != 0,
        };
        let mut queue = queue;
        let ring_pins = match &self.endpoint {
            Some(ep) => {
                if f & (1 << ACCESS_PLATFORM) == 0 {
                    return Err(ActivateError(
                        "the disk is behind the IOMMU and the driver did not accept ACCESS_PLATFORM".into(),
                    ));
                }
                translate_rings(ep, &activation.gup, &activation.mem, &mut queue)?
            }
            None => Vec::new(),
        };
        let mut q = BlockQueue::new(
            self.name.clone(),
            queue,
            activation.mem,
            activation.gup,
            Arc::clone(&self.disk),
            activation.interrupt,
            Arc::clone(&self.stats),
            self.id,
            supported,
        );
        if let Some(ep) = &self.endpoint {
            q.attach_endpoint(ep.clone(), ring_pins, self.page_request_timeout);
        }
        Ok(q)
    }
}

/// Translates the rings' I/O virtual addresses through `ep`'s domain and
/// points `queue` at the guest-physical addresses; returns the long-term
/// pins that keep them there. Each ring must be contiguous in
/// guest-physical memory.
fn translate_rings(
    ep: &Endpoint,
    gup: &Gup,
    mem: &GuestMemory,
    queue: &mut Queue,
) -> Result<Vec<Pinned>, ActivateError> {
    let size = u64::from(queue.size());
    let rings = [
        ("descriptor table", queue.desc_table(), 16 * size, false),
        ("available ring", queue.avail_ring(), 6 + 2 * size, false),
        ("used ring", queue.used_ring(), 6 + 8 * size, true),
    ];
    let mut all = Vec::new();
    let mut gpas = [0u64; 3];
    for (i, (what, iova, len, write)) in rings.into_iter().enumerate() {
        let mut pins = Vec::new();
        if let Err(e) = ep.pin(gup, iova, len, write, GupFlags::LONGTERM, None, &mut pins) {
            if let DmaError::Fault(f) = &e {
                ep.report_fault(f);
            }
            return Err(ActivateError(format!(
                "the {what} at iova {iova:#x} cannot be translated: {e}"
            )));
        }
        let mut next = None;
        for e in pins.iter().flat_map(|p| p.extents()) {
            match next {
                None => gpas[i] = e.gpa,
                Some(n) if n != e.gpa => {
                    return Err(ActivateError(format!(
                        "the {what} at iova {iova:#x} is not contiguous in guest-physical memory"
                    )))
                }
                Some(_) => {}
            }
            next = Some(e.gpa + e.len);
        }
        all.extend(pins);
    }
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(gpas[0]);
    queue.set_desc_table_address(lo, hi);
    let (lo, hi) = split(gpas[1]);
    queue.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(gpas[2]);
    queue.set_used_ring_address(lo, hi);
    if !queue.is_valid(mem) {
        return Err(ActivateError(
            "the translated rings are not valid (outside RAM or misaligned)".into(),
        ));
    }
    Ok(all)
}

impl Block {
    /// The features a driver must accept (ACCESS_PLATFORM behind the IOMMU).
    fn required(&self) -> u64 {
        if self.endpoint.is_some() {
            1 << ACCESS_PLATFORM
        } else {
            0
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn required_features(&self) -> u64 {
        self.required()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Nothing is writable (no CONFIG_WCE).
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        let Some(notifier) = activation.notifiers.pop() else {
            return Err(ActivateError("no notifier for the queue".into()));
        };
        let mut queue = self.queue_for(activation)?;
        queue
            .attach_pool(pool::POOL_THREADS)
            .map_err(|e| ActivateError(format!("starting the I/O threads: {e}")))?;
        let w = worker::spawn(queue, notifier, self.poll)
            .map_err(|e| ActivateError(format!("spawning the worker thread: {e}")))?;
        self.worker = Some(w);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} ({}{}, {} sectors): {}",
            self.name,
            self.disk.path().display(),
            if self.disk.read_only() { ", ro" } else { "" },
            self.disk.capacity(),
            self.stats.snapshot().summary()
        )
    }
}
