// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Linux's own pin of host pages, for comparison: io_uring fixed-buffer
//! registration (IORING_REGISTER_BUFFERS pins every page of every iovec with
//! the kernel's long-term pin; IORING_UNREGISTER_BUFFERS unpins them).
//!
//! Raw syscalls through libc with the UAPI structures declared here (only
//! `io_uring_setup` and `io_uring_register` are used; the rings are never
//! mapped). The memory is 1 GiB of private anonymous memory with THP off
//! (MADV_NOHUGEPAGE, so the kernel really pins 262144 4K pages), populated
//! before any timing.

use std::io;
use std::ptr;

use libc::{c_long, c_uint, c_void};

/// struct io_sqring_offsets (include/uapi/linux/io_uring.h).
#[repr(C)]
#[derive(Default)]
struct SqRingOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

/// struct io_cqring_offsets.
#[repr(C)]
#[derive(Default)]
struct CqRingOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

/// struct io_uring_params.
#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqRingOffsets,
    cq_off: CqRingOffsets,
}

const _: () = assert!(std::mem::size_of::<Params>() == 120);

const IORING_REGISTER_BUFFERS: c_uint = 0;
const IORING_UNREGISTER_BUFFERS: c_uint = 1;

/// Why the Linux row cannot run here (the bench prints it and skips).
#[derive(Debug)]
pub struct Unavailable(pub String);

/// An io_uring instance and a populated anonymous region to register.
pub struct LinuxPin {
    ring: libc::c_int,
    region: *mut u8,
    len: usize,
    iovecs: Vec<libc::iovec>,
}

fn vm_pin_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmPin:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl LinuxPin {
    /// `len` bytes of populated anonymous memory (4K pages) and a ring.
    /// `Err` says why io_uring buffer registration is unavailable.
    pub fn new(len: usize) -> Result<Self, Unavailable> {
        // Long-term pins count against RLIMIT_MEMLOCK unless the caller has
        // CAP_IPC_LOCK: raise the limit as far as allowed (best effort; as
        // root the accounting does not apply anyway).
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the local `rl` only.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) == 0 {
                let want = libc::rlimit {
                    rlim_cur: libc::RLIM_INFINITY,
                    rlim_max: libc::RLIM_INFINITY,
                };
                if libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) != 0 {
                    rl.rlim_cur = rl.rlim_max;
                    libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl);
                }
            }
        }

        let mut params = Params::default();
        // SAFETY: io_uring_setup reads and writes `params`, a live
        // io_uring_params of the size the kernel expects.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_io_uring_setup,
                1 as c_uint,
                &mut params as *mut Params,
            )
        };
        if fd < 0 {
            return Err(Unavailable(format!(
                "io_uring_setup: {}",
                io::Error::last_os_error()
            )));
        }
        let ring = fd as libc::c_int;

        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // affected.
        let region = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if region == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: `ring` is our own fd.
            unsafe { libc::close(ring) };
            panic!("mmap {len} bytes: {e}");
        }
        let region = region.cast::<u8>();
        let this = LinuxPin {
            ring,
            region,
            len,
            iovecs: Vec::new(),
        };
        // SAFETY: advice on our own fresh mapping [region, region + len).
        unsafe {
            // Best effort: without THP support the pages are 4K anyway.
            libc::madvise(region.cast(), len, libc::MADV_NOHUGEPAGE);
            if libc::madvise(region.cast(), len, libc::MADV_POPULATE_WRITE) != 0 {
                for off in (0..len).step_by(4096) {
                    region.add(off).write_volatile(1);
                }
            }
        }
        Ok(this)
    }

    /// Split the region into iovecs of `iov_bytes` (at most 1 GiB each, the
    /// kernel's per-buffer limit).
    pub fn set_iovec_bytes(&mut self, iov_bytes: usize) {
        assert!(iov_bytes > 0 && iov_bytes <= 1 << 30 && self.len % iov_bytes == 0);
        self.iovecs = (0..self.len / iov_bytes)
            .map(|i| libc::iovec {
                // SAFETY: i * iov_bytes < len: inside our mapping.
                iov_base: unsafe { self.region.add(i * iov_bytes) }.cast::<c_void>(),
                iov_len: iov_bytes,
            })
            .collect();
    }

    /// Number of iovecs registered per pin.
    pub fn iovecs(&self) -> usize {
        self.iovecs.len()
    }

    /// 4K pages per pin.
    pub fn pages(&self) -> u64 {
        (self.len / 4096) as u64
    }

    fn register(&self, opcode: c_uint, arg: *const c_void, nr: c_uint) -> io::Result<()> {
        // SAFETY: `ring` is our io_uring fd; for REGISTER_BUFFERS `arg`
        // points at `nr` iovecs that describe our own live mapping (which
        // outlives the registration: Drop unregisters by closing the ring
        // before unmapping); UNREGISTER takes no argument.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.ring as c_long,
                opcode as c_long,
                arg,
                nr as c_long,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Pin every page of the region (register) and unpin it (unregister).
    pub fn pin_unpin(&self) -> io::Result<()> {
        self.register(
            IORING_REGISTER_BUFFERS,
            self.iovecs.as_ptr().cast(),
            self.iovecs.len() as c_uint,
        )?;
        self.register(IORING_UNREGISTER_BUFFERS, ptr::null(), 0)
    }

    /// Register once and check, untimed, that the kernel really pinned the
    /// whole region: VmPin in /proc/self/status must grow by the region's
    /// size, then return to where it was. `Ok(None)` when this kernel does
    /// not report VmPin.
    pub fn verify(&self) -> io::Result<Option<(u64, u64)>> {
        let before = vm_pin_kib();
        self.register(
            IORING_REGISTER_BUFFERS,
            self.iovecs.as_ptr().cast(),
            self.iovecs.len() as c_uint,
        )?;
        let during = vm_pin_kib();
        self.register(IORING_UNREGISTER_BUFFERS, ptr::null(), 0)?;
        let after = vm_pin_kib();
        Ok(match (before, during, after) {
            (Some(b), Some(d), Some(a)) => Some((d.saturating_sub(b), a.saturating_sub(b))),
            _ => None,
        })
    }
}

impl Drop for LinuxPin {
    fn drop(&mut self) {
        // SAFETY: closing our ring drops any registration (unpinning), then
        // the mapping is ours to unmap.
        unsafe {
            libc::close(self.ring);
            libc::munmap(self.region.cast(), self.len);
        }
    }
}
