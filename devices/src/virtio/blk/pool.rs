// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! I/O threads for large transfers.
//!
//! One `preadv` of 1 MiB from the host page cache is a 1 MiB memory copy,
//! and one thread copies at most one memory channel's worth. The queue's
//! worker therefore pins a large request's buffers itself and hands the
//! transfer to these threads ([`Pool::submit`]); a thread moves the data,
//! releases the pins (write pins mark the dirty bitmap), and returns the
//! outcome ([`Pool::completed`]), waking the worker through an eventfd.
//! The worker then writes the status and publishes the used entry, so the
//! order "pins released, then used ring" holds as on the inline path.
//! Small requests stay inline: a hand-off costs more than a 4 KiB copy.
//!
//! Reads go to [`POOL_THREADS`] threads; writes to a single one, because a
//! buffered write holds the file's lock exclusively (parallel writers only
//! spin on it, taking the core the guest's vCPU needs). While transfers are
//! in flight the worker leaves the driver's notifications off: the next
//! completion wakes it anyway (see `BlockQueue::process`).

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use guest_mm::gup::Pinned;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::disk::Disk;

/// Requests with at least this many data bytes go to the pool.
pub const POOL_MIN_BYTES: u64 = 64 << 10;
/// Reader threads per queue (plus one writer).
pub const POOL_THREADS: usize = 4;

/// One transfer, its buffers already pinned.
pub struct Job {
    /// The chain's head index (for the used entry).
    pub head: u16,
    /// Where the status byte goes.
    pub status_addr: u64,
    /// Byte offset in the disk.
    pub offset: u64,
    /// Data bytes.
    pub len: u64,
    /// Disk to guest (a read request).
    pub to_guest: bool,
    /// The pins that keep `iovs` valid.
    pub pins: Vec<Pinned>,
    /// Host ranges of the pinned buffers.
    pub iovs: Vec<libc::iovec>,
    /// The status byte's pin, held until the status is written.
    pub status_pin: Option<Pinned>,
}

// SAFETY: the iovecs point into guest memory kept mapped and pinned by
// `pins`, which travel with them; nothing else refers to those ranges.
unsafe impl Send for Job {}

/// A finished transfer: its job, whose data pins are released (only the
/// status byte's pin is still held), and the outcome.
pub struct Finished {
    /// The transfer.
    pub job: Box<Job>,
    /// Ok(whether O_DIRECT was bypassed), or the host error.
    pub result: io::Result<bool>,
}

/// The threads of one queue.
pub struct Pool {
    /// Reads go to several threads (they share the file's lock).
    reads: Option<Sender<Box<Job>>>,
    /// Writes go to one: a buffered write holds the file's lock
    /// exclusively, so more writers only spin on it.
    writes: Option<Sender<Box<Job>>>,
    done: Receiver<Finished>,
    done_evt: EventFd,
    in_flight: usize,
    threads: Vec<thread::JoinHandle<()>>,
}

/// Starts one I/O thread taking jobs from `rx`.
fn spawn_thread(
    name: String,
    rx: Arc<Mutex<Receiver<Box<Job>>>>,
    tx: Sender<Finished>,
    evt: EventFd,
    disk: Arc<Disk>,
) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(move || loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(mut job) = job else { return };
        let result = if job.to_guest {
            disk.read_vectored_at(&mut job.iovs, job.offset)
        } else {
            disk.write_vectored_at(&mut job.iovs, job.offset)
        };
        job.iovs.clear();
        // Released (and dirty-marked) before the worker hears of it, so
        // before the used entry exists.
        job.pins.clear();
        let finished = Finished { job, result };
        if tx.send(finished).is_err() {
            return;
        }
        let _ = evt.write(1);
    })
}

impl Pool {
    /// Starts `threads` reader threads and one writer thread transferring
    /// on `disk`; `name` names them.
    pub fn new(name: &str, disk: Arc<Disk>, threads: usize) -> io::Result<Self> {
        let (reads_tx, reads_rx) = channel::<Box<Job>>();
        let (writes_tx, writes_rx) = channel::<Box<Job>>();
        let (done_tx, done) = channel::<Finished>();
        let reads_rx = Arc::new(Mutex::new(reads_rx));
        let writes_rx = Arc::new(Mutex::new(writes_rx));
        let done_evt = EventFd::new(EFD_NONBLOCK)?;
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            handles.push(spawn_thread(
                format!("{name}-rd{i}"),
                Arc::clone(&reads_rx),
                done_tx.clone(),
                done_evt.try_clone()?,
                Arc::clone(&disk),
            )?);
        }
        handles.push(spawn_thread(
            format!("{name}-wr"),
            writes_rx,
            done_tx,
            done_evt.try_clone()?,
            disk,
        )?);
        Ok(Pool {
            reads: Some(reads_tx),
            writes: Some(writes_tx),
            done,
            done_evt,
            in_flight: 0,
            threads: handles,
        })
    }

    /// Queues a transfer; gives it back if the threads are gone.
    pub fn submit(&mut self, job: Box<Job>) -> Result<(), Box<Job>> {
        let queue = if job.to_guest {
            &self.reads
        } else {
            &self.writes
        };
        let Some(tx) = queue else {
            return Err(job);
        };
        tx.send(job).map_err(|e| e.0)?;
        self.in_flight += 1;
        Ok(())
    }

    /// Transfers submitted and not yet collected.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The eventfd written after each finished transfer.
    pub fn done_evt(&self) -> &EventFd {
        &self.done_evt
    }

    /// Takes the next finished transfer, if any, without blocking.
    pub fn completed(&mut self) -> Option<Finished> {
        let f = self.done.try_recv().ok()?;
        self.in_flight -= 1;
        Some(f)
    }

    /// Waits for the next finished transfer; `None` when nothing is in flight.
    pub fn wait(&mut self) -> Option<Finished> {
        if self.in_flight == 0 {
            return None;
        }
        let f = self.done.recv().ok()?;
        self.in_flight -= 1;
        Some(f)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the job channel ends the threads once the queued jobs are
        // done (their pins are released as they finish).
        self.reads = None;
        self.writes = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
