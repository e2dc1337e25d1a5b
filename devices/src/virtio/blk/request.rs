// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A virtio-blk request, taken apart (virtio 1.2 section 5.2.6).
//!
//! The spec lets a driver frame a request any way it likes (section 2.6.4:
//! "the device MUST NOT make assumptions about the particular arrangement of
//! descriptors"), so a chain is first flattened into its device-readable
//! bytes followed by its device-writable bytes ([`Chain`]), and the request
//! is cut out of those byte streams: the first 16 readable bytes are the
//! header, the last writable byte is the status, and what lies between is
//! the data. Nothing here touches guest memory: [`Chain::header_segments`]
//! says where the header is, the worker reads it through a pin.

use virtio_queue::desc::split::Descriptor;

use super::stats::ErrorClass;

/// Bytes of the request header (type, reserved, sector).
pub const HEADER_LEN: u64 = 16;
/// The logical sector size of the protocol.
pub const SECTOR_SIZE: u64 = 512;

/// Request types.
pub mod req_type {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device ID string.
    pub const GET_ID: u32 = 8;
    /// Discard.
    pub const DISCARD: u32 = 11;
    /// Write zeroes.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status values written to the status byte.
pub mod req_status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
}

/// Bytes of the device ID string (GET_ID).
pub const ID_LEN: u64 = 20;
/// Bytes of one discard / write-zeroes range.
pub const RANGE_LEN: u64 = 16;

/// A guest-physical byte range of a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes (never 0).
    pub len: u64,
}

/// Why a chain cannot be used at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// The chain loops, names a descriptor outside the table, has an
    /// unreadable or invalid (indirect) table, is longer than 4 GiB, or has
    /// a buffer that runs past the end of the 64-bit address space.
    Truncated,
    /// A device-readable descriptor follows a device-writable one.
    ReadableAfterWritable,
}

/// A chain flattened: readable segments, then writable ones, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// Device-readable segments.
    pub readable: Vec<Segment>,
    /// Device-writable segments.
    pub writable: Vec<Segment>,
}

impl Chain {
    /// Flattens the descriptors of one chain (as virtio-queue yields them:
    /// it follows indirect tables and stops on loops and bad indices).
    pub fn from_descriptors<I: Iterator<Item = Descriptor>>(descs: I) -> Result<Self, ChainError> {
        let mut chain = Chain::default();
        let mut last_has_next = true;
        let mut any = false;
        for d in descs {
            any = true;
            last_has_next = d.has_next();
            if d.len() == 0 {
                continue;
            }
            // Every `addr + len` computed later (the status byte, splits)
            // must not wrap around to low guest memory.
            if d.addr().0.checked_add(u64::from(d.len())).is_none() {
                return Err(ChainError::Truncated);
            }
            let seg = Segment {
                addr: d.addr().0,
                len: u64::from(d.len()),
            };
            if d.is_write_only() {
                chain.writable.push(seg);
            } else if chain.writable.is_empty() {
                chain.readable.push(seg);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
        }
        // virtio-queue ends the iteration early (on a loop, a bad next
        // index, an unreadable or invalid table) without saying so; a chain
        // that ended normally ends with a descriptor without NEXT.
        if !any || last_has_next {
            return Err(ChainError::Truncated);
        }
        Ok(chain)
    }

    /// Total readable bytes.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| s.len).sum()
    }

    /// Total writable bytes.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| s.len).sum()
    }

    /// Where the header is (the first [`HEADER_LEN`] readable bytes), or
    /// `None` if the chain has fewer readable bytes.
    pub fn header_segments(&self) -> Option<Vec<Segment>> {
        let (head, _) = split_at(&self.readable, HEADER_LEN)?;
        Some(head)
    }

    /// The status byte (the last writable byte), if there is one.
    pub fn status_addr(&self) -> Option<u64> {
        self.writable.last().map(|s| s.addr + s.len - 1)
    }
}

/// Splits `segs` after `n` bytes; `None` if they hold fewer.
pub fn split_at(segs: &[Segment], n: u64) -> Option<(Vec<Segment>, Vec<Segment>)> {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut left = n;
    for s in segs {
        if left == 0 {
            tail.push(*s);
        } else if s.len <= left {
            head.push(*s);
            left -= s.len;
        } else {
            head.push(Segment {
                addr: s.addr,
                len: left,
            });
            tail.push(Segment {
                addr: s.addr + left,
                len: s.len - left,
            });
            left = 0;
        }
    }
    (left == 0).then_some((head, tail))
}

/// The header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Request type ([`req_type`]).
    pub kind: u32,
    /// First sector (512-byte units).
    pub sector: u64,
}

impl Header {
    /// Decodes the 16 header bytes.
    pub fn decode(bytes: &[u8; HEADER_LEN as usize]) -> Self {
        let mut kind = [0u8; 4];
        kind.copy_from_slice(&bytes[0..4]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&bytes[8..16]);
        Header {
            kind: u32::from_le_bytes(kind),
            sector: u64::from_le_bytes(sector),
        }
    }
}

/// What a request asks, with its data segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes at `offset` into `data` (device-writable).
    Read {
        /// Byte offset in the disk.
        offset: u64,
        /// Where the data goes.
        data: Vec<Segment>,
    },
    /// Write `data` (device-readable) at `offset`.
    Write {
        /// Byte offset in the disk.
        offset: u64,
        /// Where the data comes from.
        data: Vec<Segment>,
    },
    /// Flush the backing file.
    Flush,
    /// Write the ID string into `data` (at most [`ID_LEN`] bytes).
    GetId {
        /// Where the ID goes.
        data: Vec<Segment>,
    },
    /// Discard (`zeroes == false`) or write zeroes over the ranges listed in
    /// `data` (device-readable, [`RANGE_LEN`] bytes each).
    Ranges {
        /// Write zeroes rather than discard.
        zeroes: bool,
        /// The range descriptors.
        data: Vec<Segment>,
    },
}

/// A request whose status can be reported: the operation, or why it fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Where the status byte goes.
    pub status_addr: u64,
    /// What to do, or the error class and status to report.
    pub op: Result<Op, (ErrorClass, u8)>,
}

/// Which optional request types the device negotiated.
#[derive(Clone, Copy, Debug, Default)]
pub struct Supported {
    /// FLUSH was negotiated.
    pub flush: bool,
    /// DISCARD was negotiated.
    pub discard: bool,
    /// WRITE_ZEROES was negotiated.
    pub write_zeroes: bool,
}

/// Cuts `chain` into a request given its decoded `header`; `capacity` in
/// sectors; `read_only` disks refuse writes.
pub fn classify(
    chain: &Chain,
    status_addr: u64,
    header: Header,
    capacity: u64,
    read_only: bool,
    supported: Supported,
) -> Request {
    let fail = |class, status| Request {
        status_addr,
        op: Err((class, status)),
    };
    // Readable bytes after the header; writable bytes before the status.
    let Some((_, readable)) = split_at(&chain.readable, HEADER_LEN) else {
        return fail(ErrorClass::Malformed, req_status::IOERR);
    };
    let Some((writable, _)) = split_at(&chain.writable, chain.writable_len() - 1) else {
        return fail(ErrorClass::Malformed, req_status::IOERR);
    };
    let in_range = |len: u64| {
        if len % SECTOR_SIZE != 0 {
            return Err(ErrorClass::UnalignedLength);
        }
        match header.sector.checked_add(len / SECTOR_SIZE) {
            Some(end) if end <= capacity => Ok(header.sector * SECTOR_SIZE),
            _ => Err(ErrorClass::OutOfRange),
        }
    };
    let op = match header.kind {
        req_type::IN => {
            if !readable.is_empty() {
                return fail(ErrorClass::Malformed, req_status::IOERR);
            }
            let len: u64 = writable.iter().map(|s| s.len).sum();
            match in_range(len) {
                Ok(offset) => Op::Read {
                    offset,
                    data: writable,
                },
                Err(class) => return fail(class, req_status::IOERR),
            }
        }
        req_type::OUT => {
            if !writable.is_empty() {
                return fail(ErrorClass::Malformed, req_status::IOERR);
            }
            if read_only {
                return fail(ErrorClass::ReadOnly, req_status::IOERR);
            }
            let len: u64 = readable.iter().map(|s| s.len).sum();
            match in_range(len) {
                Ok(offset) => Op::Write {
                    offset,
                    data: readable,
                },
                Err(class) => return fail(class, req_status::IOERR),
            }
        }
        req_type::FLUSH if supported.flush => Op::Flush,
        req_type::GET_ID => {
            if !readable.is_empty() {
                return fail(ErrorClass::Malformed, req_status::IOERR);
            }
            Op::GetId { data: writable }
        }
        req_type::DISCARD | req_type::WRITE_ZEROES
            if (header.kind == req_type::DISCARD && supported.discard)
                || (header.kind == req_type::WRITE_ZEROES && supported.write_zeroes) =>
        {
            if read_only {
                return fail(ErrorClass::ReadOnly, req_status::IOERR);
            }
            let len: u64 = readable.iter().map(|s| s.len).sum();
            // At most the max_discard_seg ranges we announce: the worker
            // copies the list into a buffer of this size, which the guest
            // must not be able to make gigabytes long.
            if !writable.is_empty()
                || len == 0
                || len % RANGE_LEN != 0
                || len / RANGE_LEN > u64::from(super::MAX_DISCARD_SEG)
            {
                return fail(ErrorClass::Malformed, req_status::IOERR);
            }
            Op::Ranges {
                zeroes: header.kind == req_type::WRITE_ZEROES,
                data: readable,
            }
        }
        _ => return fail(ErrorClass::Unsupported, req_status::UNSUPP),
    };
    Request {
        status_addr,
        op: Ok(op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(addr: u64, len: u64) -> Segment {
        Segment { addr, len }
    }

    #[test]
    fn split_cuts_inside_a_segment() {
        let segs = [seg(0x1000, 10), seg(0x2000, 10)];
        let (h, t) = split_at(&segs, 16).unwrap();
        assert_eq!(h, vec![seg(0x1000, 10), seg(0x2000, 6)]);
        assert_eq!(t, vec![seg(0x2006, 4)]);
        assert!(split_at(&segs, 21).is_none());
        let (h, t) = split_at(&segs, 20).unwrap();
        assert_eq!((h.len(), t.len()), (2, 0));
    }

    fn chain(readable: Vec<Segment>, writable: Vec<Segment>) -> Chain {
        Chain { readable, writable }
    }

    fn header(kind: u32, sector: u64) -> Header {
        Header { kind, sector }
    }

    const ALL: Supported = Supported {
        flush: true,
        discard: true,
        write_zeroes: true,
    };

    #[test]
    fn read_with_status_sharing_the_last_data_descriptor() {
        let c = chain(
            vec![seg(0x1000, 16)],
            vec![seg(0x3000, 512), seg(0x5000, 513)],
        );
        let r = classify(
            &c,
            c.status_addr().unwrap(),
            header(req_type::IN, 2),
            8,
            false,
            ALL,
        );
        assert_eq!(r.status_addr, 0x5000 + 512);
        assert_eq!(
            r.op,
            Ok(Op::Read {
                offset: 1024,
                data: vec![seg(0x3000, 512), seg(0x5000, 512)]
            })
        );
        // One sector too many.
        let r = classify(&c, 0x5200, header(req_type::IN, 7), 8, false, ALL);
        assert_eq!(r.op, Err((ErrorClass::OutOfRange, req_status::IOERR)));
        let r = classify(&c, 0x5200, header(req_type::IN, u64::MAX), 8, false, ALL);
        assert_eq!(r.op, Err((ErrorClass::OutOfRange, req_status::IOERR)));
    }

    #[test]
    fn write_with_header_and_data_in_one_descriptor() {
        let c = chain(vec![seg(0x1000, 16 + 1024)], vec![seg(0x9000, 1)]);
        let r = classify(&c, 0x9000, header(req_type::OUT, 0), 8, false, ALL);
        assert_eq!(
            r.op,
            Ok(Op::Write {
                offset: 0,
                data: vec![seg(0x1010, 1024)]
            })
        );
        let r = classify(&c, 0x9000, header(req_type::OUT, 0), 8, true, ALL);
        assert_eq!(r.op, Err((ErrorClass::ReadOnly, req_status::IOERR)));
    }

    #[test]
    fn bad_lengths_types_and_directions() {
        let c = chain(vec![seg(0x1000, 16 + 100)], vec![seg(0x9000, 1)]);
        let r = classify(&c, 0x9000, header(req_type::OUT, 0), 8, false, ALL);
        assert_eq!(r.op, Err((ErrorClass::UnalignedLength, req_status::IOERR)));
        let r = classify(&c, 0x9000, header(77, 0), 8, false, ALL);
        assert_eq!(r.op, Err((ErrorClass::Unsupported, req_status::UNSUPP)));
        // A read with device-readable data.
        let r = classify(&c, 0x9000, header(req_type::IN, 0), 8, false, ALL);
        assert_eq!(r.op, Err((ErrorClass::Malformed, req_status::IOERR)));
        // FLUSH not negotiated.
        let none = Supported::default();
        let r = classify(&c, 0x9000, header(req_type::FLUSH, 0), 8, false, none);
        assert_eq!(r.op, Err((ErrorClass::Unsupported, req_status::UNSUPP)));
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, next)
    }

    #[test]
    fn chains_flatten_and_truncation_is_detected() {
        use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        let n = VRING_DESC_F_NEXT as u16;
        let w = VRING_DESC_F_WRITE as u16;
        let c = Chain::from_descriptors(
            [
                desc(0x1000, 16, n, 1),
                desc(0x2000, 0, n, 2),
                desc(0x3000, 1, w, 0),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(c, chain(vec![seg(0x1000, 16)], vec![seg(0x3000, 1)]));
        // Iteration stopped on a descriptor that still had NEXT.
        let e = Chain::from_descriptors([desc(0x1000, 16, n, 0)].into_iter());
        assert_eq!(e, Err(ChainError::Truncated));
        assert_eq!(
            Chain::from_descriptors([].into_iter()),
            Err(ChainError::Truncated)
        );
        let e = Chain::from_descriptors(
            [desc(0x3000, 1, w | n, 1), desc(0x1000, 16, 0, 0)].into_iter(),
        );
        assert_eq!(e, Err(ChainError::ReadableAfterWritable));
        // A buffer running past 2^64 (its status byte would wrap to 0xff).
        let e = Chain::from_descriptors(
            [desc(0x1000, 16, n, 1), desc(u64::MAX - 0xff, 0x200, w, 0)].into_iter(),
        );
        assert_eq!(e, Err(ChainError::Truncated));
        let e = Chain::from_descriptors(
            [desc(0x1000, 16, n, 1), desc(u64::MAX - 0xff, 0x100, w, 0)].into_iter(),
        );
        assert_eq!(e, Err(ChainError::Truncated));
    }
}
