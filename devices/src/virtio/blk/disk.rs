// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The backing file of a virtio-blk device: vectored reads and writes
//! straight between the file and pinned guest memory (preadv/pwritev on the
//! host addresses of the pins: no bounce buffer, no copy in the VMM),
//! flush, discard and write-zeroes.
//!
//! With O_DIRECT the transfer bypasses the host page cache when every
//! buffer address, length and the file offset are multiples of
//! [`DIRECT_ALIGN`]; a guest buffer that is not (legal in virtio) goes
//! through a second, buffered descriptor of the same file instead.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Alignment O_DIRECT transfers need here (the logical block size of
/// common host filesystems is 512; 4096 covers 4K-sector disks too).
pub const DIRECT_ALIGN: u64 = 4096;
/// Iovecs per system call (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// How to open a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// The backing file.
    pub path: PathBuf,
    /// Open read-only and offer VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// Also open with O_DIRECT and use it for aligned transfers.
    pub direct: bool,
}

/// An open backing file.
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    file: File,
    direct: Option<File>,
    read_only: bool,
    capacity: u64,
}

/// Whether a transfer may use O_DIRECT.
fn direct_ok(iovs: &[libc::iovec], offset: u64) -> bool {
    offset % DIRECT_ALIGN == 0
        && iovs.iter().all(|v| {
            (v.iov_base as u64) % DIRECT_ALIGN == 0 && (v.iov_len as u64) % DIRECT_ALIGN == 0
        })
}

impl Disk {
    /// Opens the file (read-only or read-write, optionally also O_DIRECT).
    pub fn open(options: &DiskOptions) -> io::Result<Self> {
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(!options.read_only);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&options.path)
        };
        let file = open(false)?;
        // Two VMs writing one image corrupt it, and a reader sees torn
        // data: a writable disk takes an exclusive lock, a read-only one a
        // shared lock, both released when the file closes.
        let lock = if options.read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on our own open descriptor, no memory involved.
        if unsafe { libc::flock(file.as_raw_fd(), lock | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    if options.read_only {
                        "in use read-write by another disk or process (locked)"
                    } else {
                        "in use by another disk or process (locked)"
                    },
                )
            } else {
                e
            });
        }
        let direct = if options.direct {
            Some(open(true).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("O_DIRECT open failed (does the filesystem support direct I/O?): {e}"),
                )
            })?)
        } else {
            None
        };
        // The end offset, not the metadata length: a block device's
        // metadata says 0 bytes.
        let len = (&file).seek(SeekFrom::End(0))?;
        if len % 512 != 0 {
            eprintln!(
                "virtio-blk: {}: {len} bytes is not a whole number of 512-byte sectors; the last {} bytes are not exposed",
                options.path.display(),
                len % 512
            );
        }
        Ok(Disk {
            path: options.path.clone(),
            file,
            direct,
            read_only: options.read_only,
            capacity: len / 512,
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether it is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether it was opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Reads into `iovs` from `offset`, all of it (`UnexpectedEof` if the
    /// file ends first). Returns whether O_DIRECT had to be bypassed.
    pub fn read_vectored_at(&self, iovs: &mut [libc::iovec], offset: u64) -> io::Result<bool> {
        self.transfer(iovs, offset, false)
    }

    /// Writes `iovs` at `offset`, all of it. Returns whether O_DIRECT had to
    /// be bypassed.
    pub fn write_vectored_at(&self, iovs: &mut [libc::iovec], offset: u64) -> io::Result<bool> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.transfer(iovs, offset, true)
    }

    fn transfer(&self, iovs: &mut [libc::iovec], offset: u64, write: bool) -> io::Result<bool> {
        if let Some(direct) = &self.direct {
            if direct_ok(iovs, offset) {
                match transfer_all(direct, iovs, offset, write) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    r => return r.map(|()| false),
                }
            }
            transfer_all(&self.file, iovs, offset, write)?;
            return Ok(true);
        }
        transfer_all(&self.file, iovs, offset, write).map(|()| false)
    }

    /// Makes written data durable (fdatasync).
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// Discards (punches a hole) or zeroes `len` bytes at `offset`; both
    /// read back as zeroes afterwards.
    pub fn discard(&self, offset: u64, len: u64, zeroes: bool) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        // Nothing to do (fallocate refuses a length of 0 with EINVAL).
        if len == 0 {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        let modes = if zeroes {
            [
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            ]
        } else {
            [libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE; 2]
        };
        let mut last = io::Error::from_raw_os_error(libc::EOPNOTSUPP);
        for mode in modes {
            // SAFETY: fallocate on our own descriptor with plain integers.
            let r = unsafe { libc::fallocate(fd, mode, off, l) };
            if r == 0 {
                return Ok(());
            }
            last = io::Error::last_os_error();
        }
        // No hole punching here: write zeroes the plain way.
        if last.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(last);
        }
        let zero = vec![0u8; 64 << 10];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zero.len() as u64) as usize;
            let mut iov = [libc::iovec {
                iov_base: zero.as_ptr() as *mut libc::c_void,
                iov_len: n,
            }];
            transfer_all(&self.file, &mut iov, offset + done, true)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// preadv/pwritev until every byte moved, `IOV_MAX` iovecs at a time.
/// Consumes `iovs` (advanced in place past what moved).
fn transfer_all(
    file: &File,
    iovs: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    let fd = file.as_raw_fd();
    let mut first = 0;
    while first < iovs.len() {
        if iovs[first].iov_len == 0 {
            first += 1;
            continue;
        }
        let chunk = &iovs[first..iovs.len().min(first + IOV_MAX)];
        let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: every iovec points into pinned guest memory (or a local
        // buffer) that stays mapped for the call: the caller holds the
        // pins; the kernel checks the ranges and reports EFAULT otherwise.
        let n = unsafe {
            if write {
                libc::pwritev(fd, chunk.as_ptr(), chunk.len() as i32, off)
            } else {
                libc::preadv(fd, chunk.as_ptr(), chunk.len() as i32, off)
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let mut moved = n as usize;
        offset += moved as u64;
        while moved > 0 {
            let v = &mut iovs[first];
            let step = moved.min(v.iov_len);
            // SAFETY: stays within the iovec's own buffer (step <= len).
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(step) }.cast();
            v.iov_len -= step;
            moved -= step;
            if v.iov_len == 0 {
                first += 1;
            }
        }
    }
    Ok(())
}
