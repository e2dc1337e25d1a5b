// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The counters of one virtio-blk device, and the log line each guest error
//! gets (the first [`LOGGED_PER_CLASS`] of each class; then one line saying
//! the rest are only counted, so a misbehaving guest cannot flood the log).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Log lines per error class before the rest are only counted.
pub const LOGGED_PER_CLASS: u64 = 8;

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A malformed chain: a loop, a bad index or table, a readable
    /// descriptor after a writable one, a header shorter than 16 bytes,
    /// data in the wrong direction.
    Malformed,
    /// A buffer outside guest RAM (in the MMIO hole, past the end of RAM)
    /// or a page the engine could not pin.
    BadAddress,
    /// A data length that is not a multiple of 512.
    UnalignedLength,
    /// Sectors beyond the capacity.
    OutOfRange,
    /// A write, discard or write-zeroes on a read-only disk.
    ReadOnly,
    /// A request type the device does not support (status UNSUPP).
    Unsupported,
    /// No device-writable status byte: the request is completed with a
    /// used length of 0 and no status.
    NoStatus,
    /// The backing file failed (or hit its end).
    HostIo,
    /// The available ring is corrupt (its index ran more than a queue
    /// ahead): the device sets DEVICE_NEEDS_RESET and stops the queue.
    Ring,
    /// Behind the IOMMU: a translation fault the guest did not resolve
    /// (the fault is reported on the IOMMU's event queue).
    Translation,
}

impl ErrorClass {
    /// Every class, in counter order.
    pub const ALL: [ErrorClass; 10] = [
        ErrorClass::Malformed,
        ErrorClass::BadAddress,
        ErrorClass::UnalignedLength,
        ErrorClass::OutOfRange,
        ErrorClass::ReadOnly,
        ErrorClass::Unsupported,
        ErrorClass::NoStatus,
        ErrorClass::HostIo,
        ErrorClass::Ring,
        ErrorClass::Translation,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Malformed => "malformed",
            ErrorClass::BadAddress => "bad_address",
            ErrorClass::UnalignedLength => "unaligned_length",
            ErrorClass::OutOfRange => "out_of_range",
            ErrorClass::ReadOnly => "read_only",
            ErrorClass::Unsupported => "unsupported",
            ErrorClass::NoStatus => "no_status",
            ErrorClass::HostIo => "host_io",
            ErrorClass::Ring => "ring",
            ErrorClass::Translation => "translation",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Live counters (shared between the worker and whoever reports).
#[derive(Debug, Default)]
pub struct BlockStats {
    requests: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    get_ids: AtomicU64,
    discards: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    interrupts: AtomicU64,
    notifications: AtomicU64,
    direct_fallbacks: AtomicU64,
    parked: AtomicU64,
    resumed: AtomicU64,
    errors: [AtomicU64; ErrorClass::ALL.len()],
}

/// A copy of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockCounters {
    /// Chains taken from the available ring.
    pub requests: u64,
    /// Successful reads (IN).
    pub reads: u64,
    /// Successful writes (OUT).
    pub writes: u64,
    /// Successful flushes.
    pub flushes: u64,
    /// Successful GET_ID requests.
    pub get_ids: u64,
    /// Successful discard and write-zeroes requests.
    pub discards: u64,
    /// Bytes moved from the disk into guest memory.
    pub bytes_read: u64,
    /// Bytes moved from guest memory to the disk.
    pub bytes_written: u64,
    /// Interrupts raised.
    pub interrupts: u64,
    /// Times the worker woke on a queue notification.
    pub notifications: u64,
    /// O_DIRECT transfers redone through the page cache (unaligned buffers).
    pub direct_fallbacks: u64,
    /// Requests parked on a page request (one per page request sent).
    pub parked: u64,
    /// Parked requests run again after a SUCCESS response.
    pub resumed: u64,
    /// Failed requests by class, in [`ErrorClass::ALL`] order.
    pub errors: [u64; ErrorClass::ALL.len()],
}

impl BlockCounters {
    /// Failures of `class`.
    pub fn error(&self, class: ErrorClass) -> u64 {
        self.errors[class.index()]
    }

    /// Failures of every class.
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// One line: `requests=.. reads=.. ... errors: malformed=..`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "requests={} reads={} writes={} flushes={} get_ids={} discards={} bytes_read={} bytes_written={} interrupts={} notifications={}",
            self.requests,
            self.reads,
            self.writes,
            self.flushes,
            self.get_ids,
            self.discards,
            self.bytes_read,
            self.bytes_written,
            self.interrupts,
            self.notifications
        );
        if self.direct_fallbacks != 0 {
            let _ = write!(s, " direct_fallbacks={}", self.direct_fallbacks);
        }
        if self.parked != 0 {
            let _ = write!(s, " page_requests={} resumed={}", self.parked, self.resumed);
        }
        let _ = write!(s, " errors={}", self.errors_total());
        for c in ErrorClass::ALL {
            if self.error(c) != 0 {
                let _ = write!(s, " {}={}", c.name(), self.error(c));
            }
        }
        s
    }
}

/// What a request did, for [`BlockStats::completed`].
#[derive(Clone, Copy, Debug)]
pub enum Done {
    /// A read of this many bytes.
    Read(u64),
    /// A write of this many bytes.
    Write(u64),
    /// A flush.
    Flush,
    /// A GET_ID.
    GetId,
    /// A discard or write-zeroes.
    Discard,
}

impl BlockStats {
    /// A chain was taken.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A request succeeded.
    pub fn completed(&self, done: Done) {
        let c = match done {
            Done::Read(bytes) => {
                self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
                &self.reads
            }
            Done::Write(bytes) => {
                self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
                &self.writes
            }
            Done::Flush => &self.flushes,
            Done::GetId => &self.get_ids,
            Done::Discard => &self.discards,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A request failed; logs the first few of each class on stderr.
    pub fn failed(&self, device: &str, class: ErrorClass, detail: std::fmt::Arguments) {
        let n = self.errors[class.index()].fetch_add(1, Ordering::Relaxed) + 1;
        if n <= LOGGED_PER_CLASS {
            eprintln!("{device}: guest error ({}): {detail}", class.name());
        }
        if n == LOGGED_PER_CLASS {
            eprintln!(
                "{device}: further {} errors are counted, not logged",
                class.name()
            );
        }
    }

    /// An interrupt was raised.
    pub fn interrupt(&self) {
        self.interrupts.fetch_add(1, Ordering::Relaxed);
    }

    /// The worker woke on a notification.
    pub fn notification(&self) {
        self.notifications.fetch_add(1, Ordering::Relaxed);
    }

    /// An O_DIRECT transfer went through the page cache instead.
    pub fn direct_fallback(&self) {
        self.direct_fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// A request parked on a page request.
    pub fn parked(&self) {
        self.parked.fetch_add(1, Ordering::Relaxed);
    }

    /// A parked request resumed after SUCCESS.
    pub fn resumed(&self) {
        self.resumed.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> BlockCounters {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BlockCounters {
            requests: load(&self.requests),
            reads: load(&self.reads),
            writes: load(&self.writes),
            flushes: load(&self.flushes),
            get_ids: load(&self.get_ids),
            discards: load(&self.discards),
            bytes_read: load(&self.bytes_read),
            bytes_written: load(&self.bytes_written),
            interrupts: load(&self.interrupts),
            notifications: load(&self.notifications),
            direct_fallbacks: load(&self.direct_fallbacks),
            parked: load(&self.parked),
            resumed: load(&self.resumed),
            errors: std::array::from_fn(|i| load(&self.errors[i])),
        }
    }
}
