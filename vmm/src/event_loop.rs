// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The event loop (event-manager) on the main thread: the exit eventfd the
//! vCPU threads write when the VM must stop, a signalfd for SIGINT,
//! SIGTERM and SIGHUP (Ctrl-C or a closed terminal stops the VM cleanly:
//! devices stopped, scratch disks removed), and stdin fed to the serial
//! console.

use std::fs::File;
use std::io::{self, Read};
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::error::{Error, Result};
use crate::vm::{ExitReason, VmShared};

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (call it on the main
/// thread before any other thread exists, so that every thread inherits
/// the mask) and returns a signalfd that reads them.
pub fn block_stop_signals() -> Result<File> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset and
    // pthread_sigmask only read it; signalfd returns a new fd we own.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        let mut set = set.assume_init();
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(Error::Host {
                what: "blocking SIGINT/SIGTERM/SIGHUP",
                source: io::Error::from_raw_os_error(rc),
            });
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(Error::Host {
                what: "signalfd",
                source: io::Error::last_os_error(),
            });
        }
        Ok(File::from_raw_fd(fd))
    }
}

/// The exit eventfd: drains it; the loop then sees the exit reason.
struct ExitWatch(Arc<VmShared>);

impl MutEventSubscriber for ExitWatch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.exit_evt.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0.exit_evt, EventSet::IN)) {
            // Without it the loop still polls the exit reason on its timeout.
            eprintln!("vmm: watching the exit eventfd: {e:?}");
        }
    }
}

/// SIGINT / SIGTERM / SIGHUP: stop the VM.
struct Signals {
    fd: File,
    shared: Arc<VmShared>,
}

impl MutEventSubscriber for Signals {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut info = [0u8; size_of::<libc::signalfd_siginfo>()];
        if let Ok(n) = self.fd.read(&mut info) {
            if n == info.len() {
                // ssi_signo is the first field (u32).
                let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                self.shared.request_exit(ExitReason::Signal(signo as i32));
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            eprintln!(
                "vmm: watching SIGINT/SIGTERM/SIGHUP: {e:?}; Ctrl-C will not stop the VM cleanly"
            );
        }
    }
}

/// Host stdin to the guest's serial console.
struct Stdin(Arc<VmShared>);

impl MutEventSubscriber for Stdin {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let stdin = io::stdin();
        // SAFETY: reads into a local buffer from fd 0, which epoll said is
        // readable (so this does not block).
        let n = unsafe { libc::read(stdin.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            // EOF or error: stop watching stdin.
            let _ = ops.remove(events);
            return;
        }
        // A full receive FIFO drops the rest, as a UART with no flow control would.
        self.0.lock_bus().serial.enqueue_input(&buf[..n as usize]);
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Fails (EPERM) when stdin is a regular file or /dev/null: no input then.
        let _ = ops.add(Events::new(&io::stdin(), EventSet::IN));
    }
}

/// Runs the loop until the VM must stop; returns why.
pub fn run(shared: Arc<VmShared>, signals: File) -> Result<ExitReason> {
    let mut em: EventManager<Box<dyn MutEventSubscriber>> =
        EventManager::new().map_err(|e| Error::Host {
            what: "creating the event manager",
            source: io::Error::other(format!("{e:?}")),
        })?;
    em.add_subscriber(Box::new(ExitWatch(Arc::clone(&shared))));
    em.add_subscriber(Box::new(Signals {
        fd: signals,
        shared: Arc::clone(&shared),
    }));
    em.add_subscriber(Box::new(Stdin(Arc::clone(&shared))));
    loop {
        if let Some(reason) = shared.exit_reason() {
            return Ok(reason);
        }
        em.run_with_timeout(100).map_err(|e| Error::Host {
            what: "the event loop",
            source: io::Error::other(format!("{e:?}")),
        })?;
    }
}
