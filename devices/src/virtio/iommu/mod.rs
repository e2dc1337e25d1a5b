// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-iommu (device ID 23) with the draft page-table attach and page
//! requests: guest-virtual DMA for the devices behind it. The protocol is
//! docs/guest-va-dma.md.
//!
//! Data flow, one file per step:
//!
//! * [`request`]: the request queue: ATTACH, DETACH, MAP, UNMAP, PROBE,
//!   ATTACH_TABLE, PAGE_RESP applied to the shared tables.
//! * [`domain`]: the tables (domains, mappings, attached page tables) and
//!   the [`Endpoint`] handle through which a device pins its DMA ranges:
//!   MAP domains pin guest-physical ranges, table domains hand the
//!   guest's page tables to the GUP engine.
//! * [`event`]: fault reports and page requests on their way to the event
//!   queue, and page requests waiting for their PAGE_RESP.
//! * [`stats`]: the counters.
//!
//! The device's worker thread serves both queues: requests as the driver
//! notifies them, event records whenever an endpoint queued one and the
//! driver has posted buffers.

pub mod domain;
pub mod event;
pub mod request;
pub mod stats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

pub use domain::{DmaError, DmaFault, Endpoint, FaultReason};
pub use event::Response;
pub use stats::IommuCounters;

use super::blk::request::Chain;
use super::{ActivateError, Activation, Interrupt, VirtioDevice, F_VERSION_1, INT_USED_RING};
use domain::Shared;
use guest_mm::gup::GuestMemory;

/// virtio device ID of an IOMMU.
pub const DEVICE_TYPE: u32 = 23;
/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest domain id.
pub const DOMAIN_END: u32 = 1023;
/// Bytes of PROBE properties.
pub const PROBE_SIZE: u32 = 512;
/// Page sizes of MAP (4K, 2M, 1G).
pub const PAGE_SIZE_MASK: u64 = 0x4020_1000;
/// Readable bytes of a request the device looks at (the largest request
/// is 72).
const MAX_REQUEST: usize = 128;

/// Feature bits.
pub mod features {
    /// `input_range` is valid.
    pub const INPUT_RANGE: u32 = 0;
    /// `domain_range` is valid.
    pub const DOMAIN_RANGE: u32 = 1;
    /// MAP and UNMAP.
    pub const MAP_UNMAP: u32 = 2;
    /// PROBE.
    pub const PROBE: u32 = 4;
    /// ATTACH_TABLE (draft; Tina Zhang's RFC numbering).
    pub const ATTACH_TABLE: u32 = 8;
    /// Page requests and PAGE_RESP (draft; ours).
    pub const PAGE_REQUEST: u32 = 9;
    /// VIRTIO_F_ACCESS_PLATFORM, offered by devices behind the IOMMU.
    pub const ACCESS_PLATFORM: u32 = 33;
}

/// Config space layout.
mod config {
    pub const LEN: usize = 40;
    pub const PAGE_SIZE_MASK: usize = 0;
    pub const INPUT_START: usize = 8;
    pub const INPUT_END: usize = 16;
    pub const DOMAIN_START: usize = 24;
    pub const DOMAIN_END: usize = 28;
    pub const PROBE_SIZE: usize = 32;
}

/// The handle the VMM keeps to build endpoints and read counters.
#[derive(Clone, Debug)]
pub struct IommuHandle {
    shared: Arc<Shared>,
}

impl IommuHandle {
    /// The endpoint `id` (one of those the IOMMU was built with).
    pub fn endpoint(&self, id: u32) -> Option<Endpoint> {
        self.shared
            .endpoints
            .contains(&id)
            .then(|| Endpoint::new(id, Arc::clone(&self.shared)))
    }

    /// Runs one request without the queues (tests, benches): `readable`
    /// are its device-readable bytes, `writable` the size of its
    /// device-writable part; returns what the device writes there (the
    /// tail last). `features` are the negotiated features.
    pub fn execute(
        &self,
        features: u64,
        mem: &GuestMemory,
        readable: &[u8],
        writable: usize,
    ) -> Vec<u8> {
        let ctx = request::Context {
            shared: &self.shared,
            features,
            mem,
        };
        request::execute(&ctx, readable, writable)
    }

    /// The features an IOMMU offers.
    pub fn offered_features() -> u64 {
        (1u64 << F_VERSION_1)
            | (1 << features::INPUT_RANGE)
            | (1 << features::DOMAIN_RANGE)
            | (1 << features::MAP_UNMAP)
            | (1 << features::PROBE)
            | (1 << features::ATTACH_TABLE)
            | (1 << features::PAGE_REQUEST)
    }

    /// The counters.
    pub fn counters(&self) -> IommuCounters {
        self.shared.stats.snapshot(self.shared.events.dropped())
    }
}

/// The virtio-iommu device.
pub struct Iommu {
    shared: Arc<Shared>,
    config: [u8; config::LEN],
    worker: Option<Worker>,
}

impl Iommu {
    /// An IOMMU for the devices with endpoint ids `endpoints`, in a VM
    /// whose MAXPHYADDR is `maxphyaddr`.
    pub fn new(endpoints: Vec<u32>, maxphyaddr: u8) -> std::io::Result<(Iommu, IommuHandle)> {
        let shared = Arc::new(Shared::new(endpoints, maxphyaddr)?);
        let mut config = [0u8; config::LEN];
        let mut put = |at: usize, bytes: &[u8]| config[at..at + bytes.len()].copy_from_slice(bytes);
        put(config::PAGE_SIZE_MASK, &PAGE_SIZE_MASK.to_le_bytes());
        put(config::INPUT_START, &0u64.to_le_bytes());
        put(config::INPUT_END, &u64::MAX.to_le_bytes());
        put(config::DOMAIN_START, &0u32.to_le_bytes());
        put(config::DOMAIN_END, &DOMAIN_END.to_le_bytes());
        put(config::PROBE_SIZE, &PROBE_SIZE.to_le_bytes());
        let handle = IommuHandle {
            shared: Arc::clone(&shared),
        };
        Ok((
            Iommu {
                shared,
                config,
                worker: None,
            },
            handle,
        ))
    }

    /// Sets the VM's MAXPHYADDR (from the CPUID its vCPUs get), for the
    /// page tables attached from now on.
    pub fn set_maxphyaddr(&self, maxphyaddr: u8) {
        self.shared.set_maxphyaddr(maxphyaddr);
    }

    /// Builds the synchronous worker state for `activation` (what the
    /// thread runs; tests drive it directly).
    pub fn queues_for(&self, mut activation: Activation) -> Result<IommuQueues, ActivateError> {
        if activation.queues.len() != 2 {
            return Err(ActivateError("virtio-iommu has two queues".into()));
        }
        let events = activation
            .queues
            .pop()
            .ok_or_else(|| ActivateError("no event queue".into()))?;
        let requests = activation
            .queues
            .pop()
            .ok_or_else(|| ActivateError("no request queue".into()))?;
        Ok(IommuQueues {
            requests,
            events,
            mem: activation.mem,
            features: activation.features,
            interrupt: activation.interrupt,
            shared: Arc::clone(&self.shared),
        })
    }
}

/// The two queues and what serving them needs.
pub struct IommuQueues {
    requests: Queue,
    events: Queue,
    mem: GuestMemory,
    features: u64,
    interrupt: Arc<Interrupt>,
    shared: Arc<Shared>,
}

impl IommuQueues {
    /// Runs every available request; returns how many.
    pub fn process_requests(&mut self) -> usize {
        let mut n = 0;
        loop {
            let mem = self.mem.clone();
            let Some(chain) = self.requests.iter(&mem).ok().and_then(|mut it| it.next()) else {
                break;
            };
            n += 1;
            let head = chain.head_index();
            if head >= self.requests.size() {
                // No used entry can name it: skipped, and the chains after
                // it still run (the driver notified once for all of them).
                continue;
            }
            let used = match Chain::from_descriptors(chain) {
                Ok(c) => self.run(&c),
                Err(_) => 0,
            };
            if self.requests.add_used(&self.mem, head, used).is_err() {
                break;
            }
        }
        if n > 0 {
            self.interrupt.trigger(INT_USED_RING);
        }
        n
    }

    fn run(&self, c: &Chain) -> u32 {
        let mut readable = Vec::with_capacity(MAX_REQUEST);
        for s in &c.readable {
            let want = (MAX_REQUEST - readable.len()).min(s.len as usize);
            let at = readable.len();
            readable.resize(at + want, 0);
            if self
                .mem
                .read_slice(&mut readable[at..], GuestAddress(s.addr))
                .is_err()
            {
                return 0;
            }
            if readable.len() == MAX_REQUEST {
                break;
            }
        }
        let writable = usize::try_from(c.writable_len()).unwrap_or(usize::MAX);
        let ctx = request::Context {
            shared: &self.shared,
            features: self.features,
            mem: &self.mem,
        };
        let reply = request::execute(&ctx, &readable, writable);
        write_segments(&self.mem, &c.writable, &reply).unwrap_or(0)
    }

    /// Writes waiting event records into the buffers the driver posted;
    /// returns how many.
    pub fn flush_events(&mut self) -> usize {
        let mut n = 0;
        while let Some(rec) = self.shared.events.next_record() {
            let mem = self.mem.clone();
            let Some(chain) = self.events.iter(&mem).ok().and_then(|mut it| it.next()) else {
                self.shared.events.unget(rec);
                break;
            };
            let head = chain.head_index();
            if head >= self.events.size() {
                // No used entry can name it: skipped, and the record goes
                // to the next buffer.
                self.shared.events.unget(rec);
                continue;
            }
            let written = match Chain::from_descriptors(chain) {
                Ok(c) if c.writable_len() >= rec.len() as u64 => {
                    write_segments(&self.mem, &c.writable, &rec)
                }
                _ => None,
            };
            // A buffer too small for a record, or one the device cannot
            // write (outside RAM): returned empty, and the record waits for
            // the next one.
            let used = match written {
                Some(n) => n,
                None => {
                    self.shared.events.unget(rec);
                    0
                }
            };
            if used > 0 {
                self.shared.stats.event_written();
                n += 1;
            }
            if self.events.add_used(&self.mem, head, used).is_err() {
                break;
            }
        }
        if n > 0 {
            self.interrupt.trigger(INT_USED_RING);
        }
        n
    }
}

/// Writes `bytes` across `segs` (guest-physical); returns the bytes written.
fn write_segments(
    mem: &GuestMemory,
    segs: &[super::blk::request::Segment],
    bytes: &[u8],
) -> Option<u32> {
    let mut at = 0usize;
    for s in segs {
        if at == bytes.len() {
            break;
        }
        let n = (bytes.len() - at).min(s.len as usize);
        mem.write_slice(&bytes[at..at + n], GuestAddress(s.addr))
            .ok()?;
        at += n;
    }
    u32::try_from(at).ok()
}

impl VirtioDevice for Iommu {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        IommuHandle::offered_features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        if activation.notifiers.len() != 2 {
            return Err(ActivateError("virtio-iommu needs two notifiers".into()));
        }
        let evq_notifier = activation
            .notifiers
            .pop()
            .ok_or_else(|| ActivateError("no notifier".into()))?;
        let req_notifier = activation
            .notifiers
            .pop()
            .ok_or_else(|| ActivateError("no notifier".into()))?;
        let queues = self.queues_for(activation)?;
        let w = spawn(queues, req_notifier, evq_notifier)
            .map_err(|e| ActivateError(format!("spawning the worker thread: {e}")))?;
        self.worker = Some(w);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        // Reset: no endpoint is attached any more, every domain is gone,
        // and no page request is outstanding.
        let mut t = self.shared.write();
        *t = domain::Tables::default();
        drop(t);
        self.shared.events.clear();
    }

    fn summary(&self) -> String {
        format!(
            "virtio-iommu: {}",
            self.shared
                .stats
                .snapshot(self.shared.events.dropped())
                .summary()
        )
    }
}

/// The running worker thread.
struct Worker {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    thread: Option<thread::JoinHandle<()>>,
}

impl Worker {
    fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn spawn(mut q: IommuQueues, req: EventFd, evq: EventFd) -> std::io::Result<Worker> {
    let stop = Arc::new(AtomicBool::new(false));
    let wake = EventFd::new(0)?;
    let wake_thread = wake.try_clone()?;
    let events_evt = q.shared.events.wake_evt().try_clone()?;
    let stop_thread = Arc::clone(&stop);
    let thread = thread::Builder::new()
        .name("virtio-iommu".into())
        .spawn(move || {
            use std::os::unix::io::AsRawFd;
            let pollfd = |fd: i32| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let mut fds = [
                pollfd(req.as_raw_fd()),
                pollfd(evq.as_raw_fd()),
                pollfd(events_evt.as_raw_fd()),
                pollfd(wake_thread.as_raw_fd()),
            ];
            // Whatever was queued before the driver was ready.
            q.flush_events();
            while !stop_thread.load(Ordering::Acquire) {
                // SAFETY: four valid pollfds owned by this frame.
                let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
                if r < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    eprintln!(
                        "virtio-iommu: poll failed: {}; the worker stops",
                        std::io::Error::last_os_error()
                    );
                    return;
                }
                if fds[3].revents != 0 || stop_thread.load(Ordering::Acquire) {
                    return;
                }
                if fds[0].revents != 0 {
                    let _ = req.read();
                }
                if fds[1].revents != 0 {
                    let _ = evq.read();
                }
                if fds[2].revents != 0 {
                    let _ = events_evt.read();
                }
                // Requests first: a PAGE_RESP may free an event slot's
                // worth of work, and requests are cheap.
                q.process_requests();
                q.flush_events();
            }
        })?;
    Ok(Worker {
        stop,
        wake,
        thread: Some(thread),
    })
}
