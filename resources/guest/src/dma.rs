// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-blk DMA scenarios: every disk announced on the command line
//! is set up, the read-write one (disk 0) gets writes read back and checked
//! byte for byte through many legal descriptor layouts and buffer
//! placements, the read-only one (disk 1) is read and checked against its
//! known pattern, and deliberately bad requests check that the device
//! refuses them and keeps working. One check line per scenario, then
//! `guest: blk: <N> requests, <B> bytes verified, <F> failures`.
//!
//! Disks are told apart by the RO feature and GET_ID (`guest-mm-blk0`,
//! `guest-mm-blk1` under our VMM; QEMU answers the drive's `serial=`). The
//! read-only disk's 8-byte little-endian word at every offset `o` (a
//! multiple of 8) is `0x524f_0000_0000_0000 | o`.
//!
//! QEMU's device (7.2) completes DMA to unassigned addresses with status 0
//! and marks itself broken (NEEDS_RESET, no completion) on a device-readable
//! status descriptor or a looping chain: those bad requests are skipped (`[skip]` lines, not checks) when the device is
//! QEMU's, recognised by the transport's vendor id "QEMU" or the command
//! line flag `guest.qemu` (`guest.blk.bad=all` runs them anyway).
//!
//! All buffers are in the identity-mapped first GiB (in [`Arena`]); the
//! CPU reaches some of them through [`HIGH_ALIAS`] instead.

// Scenario results carry their message in a [`Line`] on the stack (there is
// no allocator): larger than clippy likes for an error, on purpose.
#![allow(clippy::result_large_err)]

use core::fmt::{self, Write};
use core::ptr::{read_volatile, write_volatile};

use crate::blk::{
    self, blk_status, feature, peek, poke, probe, req, Blk, Job, SegList, DEVICE_ID_BLOCK,
    ID_BYTES, SECTOR, STATUS_POISON, VENDOR_QEMU,
};
use crate::boot::HIGH_ALIAS;
use crate::pvh::{self, MmioDevice};
use crate::serial::Serial;
use crate::virtio::{
    feature as vfeature, live, Desc, Seg, DESC_F_INDIRECT, DESC_F_NEXT, RING_BYTES, TIMEOUT_TSC,
};
use crate::Report;

/// Start of the DMA arena (physical, identity-mapped): 16 MiB, above the
/// image and the 2M test alias's target.
pub const ARENA_BASE: u64 = 0x100_0000;
/// End of the DMA arena: 48 MiB (the guest needs that much RAM for blk).
pub const ARENA_END: u64 = 0x300_0000;
/// Most disks driven.
pub const MAX_DISKS: usize = 8;
/// The id our VMM gives the read-write scratch disk.
pub const ID_RW: &[u8] = b"guest-mm-blk0";
/// The id our VMM gives the read-only pattern disk.
pub const ID_RO: &[u8] = b"guest-mm-blk1";
/// A bad request that the device never completes is given up after this.
const BAD_TIMEOUT_TSC: u64 = TIMEOUT_TSC / 4;

/// A bump allocator over guest-physical RAM.
pub struct Arena {
    next: u64,
    end: u64,
}

impl Arena {
    /// The DMA arena, if the memory map has RAM there.
    pub fn new() -> Option<Arena> {
        pvh::ram_covers(ARENA_BASE, ARENA_END).then_some(Arena {
            next: ARENA_BASE,
            end: ARENA_END,
        })
    }

    /// A bump allocator over `start..end` (page-aligned), if the memory
    /// map has RAM there.
    pub fn range(start: u64, end: u64) -> Option<Arena> {
        (start % 4096 == 0 && start < end && pvh::ram_covers(start, end))
            .then_some(Arena { next: start, end })
    }

    /// `size` bytes aligned to `align` (a power of two).
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let a = self.next.checked_add(align - 1)? & !(align - 1);
        let end = a.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(a)
    }

    /// `size` zeroed bytes aligned to `align`.
    pub fn zeroed(&mut self, size: u64, align: u64) -> Option<u64> {
        let a = self.alloc(size, align)?;
        // SAFETY: a..a + size is arena RAM just handed out (identity-mapped).
        unsafe { core::ptr::write_bytes(a as *mut u8, 0, size as usize) };
        Some(a)
    }

    /// `size` bytes that straddle a 2 MiB boundary, `before` bytes below it.
    pub fn straddling_2m(&mut self, size: u64, before: u64) -> Option<u64> {
        let boundary = (self.next + before + 0x1f_ffff) & !0x1f_ffff;
        let a = boundary - before;
        let end = a.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(a)
    }

    /// The allocation point, to [`release`](Self::release) to later.
    pub fn mark(&self) -> u64 {
        self.next
    }

    /// Frees everything allocated since `mark`.
    pub fn release(&mut self, mark: u64) {
        self.next = mark;
    }
}

/// A line of text built without allocating (truncated when too long).
pub struct Line {
    buf: [u8; 200],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Line {
        Line {
            buf: [0; 200],
            len: 0,
        }
    }
}

impl Default for Line {
    fn default() -> Self {
        Line::new()
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?"))
    }
}

/// Formats into a [`Line`].
pub fn msg(args: fmt::Arguments) -> Line {
    let mut l = Line::new();
    let _ = l.write_fmt(args);
    l
}

/// What the data bytes of a disk are expected to be.
#[derive(Clone, Copy)]
pub enum Pattern {
    /// Written here: a hash of a seed and the disk offset.
    Seeded(u64),
    /// The read-only disk: `0x524f_0000_0000_0000 | o` at offset `o`.
    Ro,
}

/// The splitmix64 finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Pattern {
    /// The little-endian word at disk offset `o` (a multiple of 8).
    pub fn word(self, o: u64) -> u64 {
        match self {
            Pattern::Seeded(seed) => mix(seed ^ o.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            Pattern::Ro => 0x524f_0000_0000_0000 | o,
        }
    }

    /// The byte at disk offset `o`.
    pub fn byte(self, o: u64) -> u8 {
        (self.word(o & !7) >> ((o & 7) * 8)) as u8
    }
}

/// A data buffer: the device is given `pa`, the CPU uses `va`.
#[derive(Clone, Copy)]
pub struct Buf {
    /// Guest-physical address (for the descriptor).
    pub pa: u64,
    /// Virtual address the CPU fills and checks it through.
    pub va: u64,
    /// Bytes.
    pub len: u32,
}

impl Buf {
    /// A buffer the CPU reaches through the identity map.
    pub const fn id(pa: u64, len: u32) -> Buf {
        Buf { pa, va: pa, len }
    }

    /// A buffer the CPU reaches through the high alias.
    pub const fn alias(pa: u64, len: u32) -> Buf {
        Buf {
            pa,
            va: HIGH_ALIAS + pa,
            len,
        }
    }
}

/// Fills the buffers, in order, with `pat` from disk offset `off`.
pub fn fill(bufs: &[Buf], pat: Pattern, mut off: u64) {
    for b in bufs {
        fill_one(b.va, u64::from(b.len), pat, off);
        off += u64::from(b.len);
    }
}

fn fill_one(va: u64, len: u64, pat: Pattern, off: u64) {
    let mut i = 0;
    while i < len {
        if (va + i) % 8 == 0 && (off + i) % 8 == 0 && len - i >= 8 {
            // SAFETY: va + i..+8 is inside the caller's buffer (mapped RAM
            // not in flight) and 8-byte aligned.
            unsafe { write_volatile((va + i) as *mut u64, pat.word(off + i)) };
            i += 8;
        } else {
            // SAFETY: as above, one byte.
            unsafe { write_volatile((va + i) as *mut u8, pat.byte(off + i)) };
            i += 1;
        }
    }
}

/// Poisons the buffers (every byte 0xee).
pub fn poison(bufs: &[Buf]) {
    for b in bufs {
        // SAFETY: the caller's buffer, mapped RAM not in flight.
        unsafe { core::ptr::write_bytes(b.va as *mut u8, 0xee, b.len as usize) };
    }
}

/// A byte that differs from the pattern.
#[derive(Clone, Copy)]
pub struct Mismatch {
    /// Offset from the start of the first buffer.
    pub at: u64,
    /// Virtual address of the byte.
    pub va: u64,
    /// What was read.
    pub got: u8,
    /// What the pattern says.
    pub want: u8,
}

/// Checks every byte of the buffers against `pat` from disk offset `off`.
pub fn verify(bufs: &[Buf], pat: Pattern, off: u64) -> Result<u64, Mismatch> {
    let mut pos = 0u64;
    for b in bufs {
        let len = u64::from(b.len);
        let mut i = 0;
        while i < len {
            let o = off + pos + i;
            if (b.va + i) % 8 == 0 && o % 8 == 0 && len - i >= 8 {
                // SAFETY: inside the caller's buffer, 8-byte aligned.
                let got = unsafe { read_volatile((b.va + i) as *const u64) };
                if got == pat.word(o) {
                    i += 8;
                    continue;
                }
            }
            // SAFETY: inside the caller's buffer.
            let got = unsafe { read_volatile((b.va + i) as *const u8) };
            let want = pat.byte(o);
            if got != want {
                return Err(Mismatch {
                    at: pos + i,
                    va: b.va + i,
                    got,
                    want,
                });
            }
            i += 1;
        }
        pos += len;
    }
    Ok(pos)
}

/// How a request's header, data and status are laid out in descriptors.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Header, one descriptor per buffer, status.
    Plain,
    /// The header split over two descriptors (5 and 11 bytes, apart).
    SplitHeader,
    /// The status byte right after the last buffer, in its descriptor
    /// (reads only: the descriptor must be device-writable).
    StatusInLast,
    /// A plain chain in an indirect table (one ring descriptor).
    Indirect,
}

/// Memory for one request's header, status, split header and indirect table.
struct ReqMem {
    base: u64,
}

impl ReqMem {
    fn hdr(&self) -> u64 {
        self.base
    }
    fn status(&self) -> u64 {
        self.base + 0x40
    }
    fn split_a(&self) -> u64 {
        self.base + 0x101
    }
    fn split_b(&self) -> u64 {
        self.base + 0x207
    }
    fn table(&self) -> u64 {
        self.base + 0x800
    }
}

/// One disk and what was learnt about it.
pub struct Disk {
    /// The driver.
    pub blk: Blk,
    /// GET_ID's answer (NUL-padded), when it succeeded.
    pub id: Option<[u8; ID_BYTES]>,
}

impl Disk {
    /// The id without its NUL padding.
    pub fn id(&self) -> &[u8] {
        match &self.id {
            Some(id) => {
                let n = id.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
                &id[..n]
            }
            None => b"",
        }
    }
}

/// Shows an id: printable ASCII, anything else as `\xNN`.
pub struct ShowId<'a>(pub &'a [u8]);

impl fmt::Display for ShowId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_char('"')?;
        for &b in self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                f.write_char(char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_char('"')
    }
}

/// The disks found, in command-line order.
pub struct Disks {
    /// Slots `0..n` hold disks.
    pub list: [Option<Disk>; MAX_DISKS],
    /// Disks announced (block devices; whether set up or not).
    pub announced: usize,
}

impl Disks {
    /// The first writable disk (preferring the id `guest-mm-blk0`).
    pub fn rw(&mut self) -> Option<&mut Disk> {
        let pick = self
            .list
            .iter()
            .position(|d| {
                d.as_ref()
                    .is_some_and(|d| !d.blk.has(feature::RO) && d.id() == ID_RW)
            })
            .or_else(|| {
                self.list
                    .iter()
                    .position(|d| d.as_ref().is_some_and(|d| !d.blk.has(feature::RO)))
            })?;
        self.list[pick].as_mut()
    }

    /// The first read-only disk (preferring the id `guest-mm-blk1`).
    pub fn ro(&mut self) -> Option<&mut Disk> {
        let pick = self
            .list
            .iter()
            .position(|d| {
                d.as_ref()
                    .is_some_and(|d| d.blk.has(feature::RO) && d.id() == ID_RO)
            })
            .or_else(|| {
                self.list
                    .iter()
                    .position(|d| d.as_ref().is_some_and(|d| d.blk.has(feature::RO)))
            })?;
        self.list[pick].as_mut()
    }
}

/// Finds and sets up every virtio-blk device on the command line. Each
/// outcome goes to `out(ok, line)`: a failed setup is `false`; devices
/// that are not block devices are notes (`None`).
pub fn discover(
    cmd: &[u8],
    arena: &mut Arena,
    mut out: impl FnMut(Option<bool>, fmt::Arguments),
) -> Disks {
    let mut disks = Disks {
        list: Default::default(),
        announced: 0,
    };
    // Features the command line asks not to negotiate (for testing
    // drivers and devices without them): guest.blk.mask=<hex or decimal>.
    let mask = pvh::num_option(cmd, "guest.blk.mask").unwrap_or(0);
    let mut n = 0;
    for d in pvh::mmio_devices(cmd) {
        let dev: MmioDevice = match d {
            Ok(d) => d,
            Err(text) => {
                let text = core::str::from_utf8(text).unwrap_or("?");
                out(
                    Some(false),
                    format_args!(
                        "virtio_mmio.device={text}: cannot parse (<size>@<base>:<irq>[:<id>])"
                    ),
                );
                continue;
            }
        };
        let p = match probe(&dev) {
            Ok(p) => p,
            Err(e) => {
                out(
                    Some(false),
                    format_args!("virtio-mmio at {:#x} irq {}: {e}", dev.base, dev.irq),
                );
                continue;
            }
        };
        if p.device_id != DEVICE_ID_BLOCK {
            out(
                None,
                format_args!(
                    "virtio-mmio at {:#x} irq {}: device id {} (not a block device), ignored",
                    dev.base, dev.irq, p.device_id
                ),
            );
            continue;
        }
        // A disk behind the IOMMU can only do DMA through it: the sva
        // scenarios drive it.
        if p.mmio.device_features() & vfeature::ACCESS_PLATFORM != 0 {
            out(
                None,
                format_args!(
                    "virtio-mmio at {:#x} irq {}: block device behind the IOMMU (offers ACCESS_PLATFORM), left to the sva scenarios",
                    dev.base, dev.irq
                ),
            );
            continue;
        }
        disks.announced += 1;
        if n == MAX_DISKS {
            out(
                None,
                format_args!(
                    "virtio-mmio at {:#x}: more than {MAX_DISKS} disks, ignored",
                    dev.base
                ),
            );
            continue;
        }
        let (Some(ring), Some(scratch)) =
            (arena.zeroed(RING_BYTES, 4096), arena.zeroed(4096, 4096))
        else {
            out(
                Some(false),
                format_args!("virtio-mmio at {:#x}: DMA arena exhausted", dev.base),
            );
            continue;
        };
        let mut b = match Blk::init(dev, &p, ring, scratch, mask) {
            Ok(b) => b,
            Err(e) => {
                out(
                    Some(false),
                    format_args!(
                        "disk{n}: virtio-mmio at {:#x} irq {}: {e}",
                        dev.base, dev.irq
                    ),
                );
                continue;
            }
        };
        let id = match b.get_id() {
            Ok((id, blk_status::OK, _)) => Some(id),
            _ => None,
        };
        let disk = Disk { blk: b, id };
        let b = &disk.blk;
        let vendor = b.vendor.to_le_bytes();
        let vendor_len = vendor.iter().position(|&c| c == 0).unwrap_or(4);
        out(
            Some(true),
            format_args!(
                "disk{n} at {:#x} irq {}: virtio-mmio v2 block, vendor {:#x} {}, {} sectors, {}, id {}, features {:#x} of {:#x}, queue {}, seg_max {}, size_max {}, blk_size {}",
                b.dev.base,
                b.dev.irq,
                b.vendor,
                ShowId(&vendor[..vendor_len]),
                b.capacity,
                if b.has(feature::RO) { "read-only" } else { "read-write" },
                ShowId(disk.id()),
                b.features,
                b.offered,
                b.q.size(),
                b.seg_max,
                b.size_max,
                b.blk_size
            ),
        );
        disks.list[n] = Some(disk);
        n += 1;
    }
    disks
}

/// State of one run of the scenarios.
struct Ctx<'r> {
    report: &'r mut Report,
    arena: Arena,
    /// Why the device counts as QEMU's (bad requests that QEMU treats as
    /// fatal are skipped), if it does.
    qemu: Option<&'static str>,
    bytes: u64,
    failures: u32,
    /// Next free sector of the read-write disk (each scenario its own).
    next_sector: u64,
    seed: u64,
}

impl Ctx<'_> {
    fn check(&mut self, r: Result<Line, Line>, title: fmt::Arguments) {
        match r {
            Ok(detail) => self
                .report
                .check(true, format_args!("blk: {title}{detail}")),
            Err(why) => {
                self.failures += 1;
                self.report
                    .check(false, format_args!("blk: {title}: {why}"));
            }
        }
    }

    fn skip(&mut self, title: fmt::Arguments, why: fmt::Arguments) {
        let _ = writeln!(Serial, "guest: [skip] blk: {title}: {why}");
    }

    /// Sectors for `bytes` of the read-write disk, 4 KiB aligned, not used
    /// by an earlier scenario unless the disk is too small.
    fn sectors(&mut self, blk: &Blk, bytes: u64) -> u64 {
        let n = bytes.div_ceil(4096) * 8;
        if self.next_sector + n > blk.capacity {
            self.next_sector = 0;
        }
        let s = self.next_sector;
        self.next_sector += n;
        s
    }

    fn pattern(&mut self) -> Pattern {
        self.seed += 1;
        Pattern::Seeded(mix(self.seed ^ 0x5eed))
    }

    fn alloc(&mut self, size: u64, align: u64) -> Result<u64, Line> {
        self.arena
            .alloc(size, align)
            .ok_or_else(|| msg(format_args!("DMA arena exhausted")))
    }

    /// Sends one request of type `ty` for `bufs` laid out as `layout`;
    /// returns the status byte and the used length.
    fn request(
        &mut self,
        blk: &mut Blk,
        ty: u32,
        sector: u64,
        bufs: &[Buf],
        layout: Layout,
    ) -> Result<(u8, u32), Line> {
        let m = ReqMem {
            base: self.alloc(4096, 4096)?,
        };
        let mut segs = SegList::new();
        if layout == Layout::SplitHeader {
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&ty.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            for (i, &b) in h.iter().enumerate() {
                let at = if i < 5 {
                    m.split_a() + i as u64
                } else {
                    m.split_b() + i as u64 - 5
                };
                poke(at, b);
            }
            segs.push(Seg::out(m.split_a(), 5));
            segs.push(Seg::out(m.split_b(), 11));
        } else {
            Blk::header(m.hdr(), ty, sector);
            segs.push(Seg::out(m.hdr(), 16));
        }
        let device_writes = ty == req::IN || ty == req::GET_ID;
        let mut status_at = m.status();
        let header_descs = segs.len();
        // One descriptor per buffer, split where size_max demands it; with
        // StatusInLast the status byte follows the last buffer's data.
        for (k, b) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let len = if layout == Layout::StatusInLast && last {
                status_at = b.pa + u64::from(b.len);
                b.len + 1
            } else {
                b.len
            };
            blk.push_data(&mut segs, b.pa, len, device_writes);
        }
        let data_descs = segs.len() - header_descs;
        if data_descs > blk.max_segments() as usize {
            return Err(msg(format_args!(
                "needs {data_descs} data descriptors, the device allows {} (seg_max)",
                blk.max_segments()
            )));
        }
        poke(status_at, STATUS_POISON);
        if layout != Layout::StatusInLast {
            segs.push(Seg::inn(status_at, 1));
        }
        if layout == Layout::Indirect {
            let chain = segs.chain().map_err(|e| msg(format_args!("{e}")))?;
            let n = chain.len();
            for (i, s) in chain.iter().enumerate() {
                let d = Desc {
                    addr: s.addr,
                    len: s.len,
                    flags: s.flags | if i + 1 < n { DESC_F_NEXT } else { 0 },
                    next: if i + 1 < n { (i + 1) as u16 } else { 0 },
                };
                // SAFETY: the table (up to 128 entries) lies in this
                // request's page, identity-mapped RAM not yet in flight.
                unsafe { write_volatile((m.table() + 16 * i as u64) as *mut Desc, d) };
            }
            let mut one = SegList::new();
            one.push(Seg {
                addr: m.table(),
                len: (16 * n) as u32,
                flags: DESC_F_INDIRECT,
                self_loop: false,
            });
            segs = one;
        }
        let u = blk
            .submit(
                segs.chain().map_err(|e| msg(format_args!("{e}")))?,
                TIMEOUT_TSC,
            )
            .map_err(|e| msg(format_args!("request type {ty} at sector {sector}: {e}")))?;
        Ok((peek(status_at), u.len))
    }

    /// Writes `wbufs` (filled with a fresh pattern) at `sector`, reads the
    /// same bytes back into `rbufs` (poisoned first) and checks every byte.
    #[allow(clippy::too_many_arguments)]
    /// A 4 KiB write and its read-back, one data descriptor each, both
    /// framed as `layout` says.
    fn one_page_each_way(&mut self, blk: &mut Blk, layout: Layout) -> Result<Line, Line> {
        let w = self.alloc(4096, 4096)?;
        let r = self.alloc(4096, 4096)?;
        let s = self.sectors(blk, 4096);
        self.write_read(
            blk,
            s,
            &[Buf::id(w, 4096)],
            &[Buf::id(r, 4096)],
            layout,
            layout,
        )
    }

    fn write_read(
        &mut self,
        blk: &mut Blk,
        sector: u64,
        wbufs: &[Buf],
        rbufs: &[Buf],
        wlayout: Layout,
        rlayout: Layout,
    ) -> Result<Line, Line> {
        let pat = self.pattern();
        let off = sector * SECTOR;
        fill(wbufs, pat, off);
        let (st, _) = self.request(blk, req::OUT, sector, wbufs, wlayout)?;
        if st != blk_status::OK {
            return Err(msg(format_args!("write status {st:#x}")));
        }
        poison(rbufs);
        let (st, len) = self.request(blk, req::IN, sector, rbufs, rlayout)?;
        if st != blk_status::OK {
            return Err(msg(format_args!("read status {st:#x}")));
        }
        match verify(rbufs, pat, off) {
            Ok(n) => {
                self.bytes += n;
                Ok(msg(format_args!(
                    " ({n} bytes verified, read used.len {len})"
                )))
            }
            Err(m) => Err(msg(format_args!(
                "byte {} (at {:#x}) read {:#04x}, written {:#04x}",
                m.at, m.va, m.got, m.want
            ))),
        }
    }

    /// After a bad request: the device status is sane and a 4 KiB write is
    /// read back intact.
    fn alive(&mut self, blk: &mut Blk) -> Result<(), Line> {
        let st = blk.mmio.status();
        if !live(st) {
            return Err(msg(format_args!("device status {st:#x} afterwards")));
        }
        let mark = self.arena.mark();
        let r = (|| {
            let w = self.alloc(4096, 4096)?;
            let r = self.alloc(4096, 4096)?;
            let sector = self.sectors(blk, 4096);
            self.write_read(
                blk,
                sector,
                &[Buf::id(w, 4096)],
                &[Buf::id(r, 4096)],
                Layout::Plain,
                Layout::Plain,
            )
        })();
        self.arena.release(mark);
        r.map(|_| ())
            .map_err(|e| msg(format_args!("afterwards a 4 KiB write + read failed: {e}")))
    }
}

/// Runs the scenarios (unless no disk is announced) and prints the blk
/// summary line.
pub fn run(report: &mut Report, cmd: &[u8]) {
    let has_devices = pvh::mmio_devices(cmd).next().is_some();
    if !has_devices {
        let _ = writeln!(
            Serial,
            "guest: blk: no virtio-blk disk announced on the command line (virtio_mmio.device=); blk checks skipped"
        );
        return;
    }
    let Some(mut arena) = Arena::new() else {
        // Too little RAM for the scenarios' buffers: said plainly, not a
        // failure of the machine or the device (the VMM allows less RAM).
        let _ = writeln!(
            Serial,
            "guest: [skip] blk: every scenario: the DMA arena {ARENA_BASE:#x}..{ARENA_END:#x} is not RAM in the PVH memory map (give the guest at least 64 MiB)"
        );
        return;
    };
    let checks_before = report.failed;
    let mut disks = discover(cmd, &mut arena, |ok, args| match ok {
        Some(ok) => report.check(ok, format_args!("blk: {args}")),
        None => {
            let _ = writeln!(Serial, "guest: [note] blk: {args}");
        }
    });
    let init_failures = report.failed - checks_before;
    // guest.blk.bad=all: every bad request, even on QEMU's device.
    let qemu = if pvh::value(cmd, "guest.blk.bad") == Some(b"all") {
        None
    } else if pvh::flag(cmd, "guest.qemu") {
        Some("guest.qemu on the command line")
    } else if disks
        .list
        .iter()
        .flatten()
        .any(|d| d.blk.vendor == VENDOR_QEMU)
    {
        Some("the transport's vendor id is QEMU's")
    } else {
        None
    };
    let mut ctx = Ctx {
        report,
        arena,
        qemu,
        bytes: 0,
        failures: init_failures,
        next_sector: 0,
        seed: 0,
    };
    for i in 0..MAX_DISKS {
        if let Some(d) = disks.list[i].as_mut() {
            check_get_id(&mut ctx, i, d);
        }
    }
    match disks.rw() {
        Some(d) => {
            rw_scenarios(&mut ctx, &mut d.blk);
            bad_requests(&mut ctx, &mut d.blk);
        }
        None => ctx.skip(
            format_args!("read-write scenarios"),
            format_args!("no read-write disk"),
        ),
    }
    match disks.ro() {
        Some(d) => {
            let known = d.id() == ID_RO;
            ro_scenarios(&mut ctx, &mut d.blk, known);
        }
        None => ctx.skip(
            format_args!("read-only scenarios"),
            format_args!("no read-only disk"),
        ),
    }
    let requests: u64 = disks.list.iter().flatten().map(|d| d.blk.requests).sum();
    let _ = writeln!(
        Serial,
        "guest: blk: {requests} requests, {} bytes verified, {} failures",
        ctx.bytes, ctx.failures
    );
}

fn check_get_id(ctx: &mut Ctx, i: usize, d: &mut Disk) {
    let r = match d.blk.get_id() {
        Err(e) => Err(msg(format_args!("{e}"))),
        Ok((_, st, _)) if st != blk_status::OK => Err(msg(format_args!("status {st:#x}"))),
        Ok((id, _, len)) => {
            d.id = Some(id);
            let text = d.id();
            if text.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                Ok(msg(format_args!(": {} (used.len {len})", ShowId(text))))
            } else {
                Err(msg(format_args!("unprintable id {}", ShowId(text))))
            }
        }
    };
    ctx.check(r, format_args!("GET_ID disk{i}"));
}

fn rw_scenarios(ctx: &mut Ctx, blk: &mut Blk) {
    let top = ctx.arena.mark();

    // One data descriptor each way.
    let r = ctx.one_page_each_way(blk, Layout::Plain);
    ctx.check(
        r,
        format_args!("single segment: 4 KiB written and read back"),
    );
    ctx.arena.release(top);

    // 8 data descriptors of 8 KiB, scattered in reverse order (writes) and
    // in a stride-3 order (reads), with a gap between any two.
    if blk.max_segments() < 8 {
        ctx.skip(
            format_args!("8 data descriptors"),
            format_args!("seg_max is {}", blk.max_segments()),
        );
    } else {
        let r = (|| {
            let base = ctx.alloc(8 * 12 * 1024, 4096)?;
            let rbase = ctx.alloc(8 * 12 * 1024, 4096)?;
            let w: [Buf; 8] =
                core::array::from_fn(|k| Buf::id(base + (7 - k as u64) * 12 * 1024, 8192));
            let r: [Buf; 8] =
                core::array::from_fn(|k| Buf::id(rbase + ((k as u64 * 3) % 8) * 12 * 1024, 8192));
            let s = ctx.sectors(blk, 64 * 1024);
            ctx.write_read(blk, s, &w, &r, Layout::Plain, Layout::Plain)
        })();
        ctx.check(
            r,
            format_args!("8 data descriptors: 64 KiB in 8 KiB segments, scattered"),
        );
        ctx.arena.release(top);
    }

    // 64 data descriptors (or seg_max) of 512..4096 bytes.
    let n = 64.min(blk.max_segments() as usize).min(blk::MAX_CHAIN - 2);
    let r = (|| {
        let base = ctx.alloc(64 * 8192, 4096)?;
        let rbase = ctx.alloc(64 * 8192, 4096)?;
        let mut w = [Buf::id(0, 0); 64];
        let mut r = [Buf::id(0, 0); 64];
        for k in 0..n {
            let len = 512 * (1 + (k as u32 % 8));
            w[k] = Buf::id(base + (n - 1 - k) as u64 * 8192, len);
            r[k] = Buf::id(rbase + ((k * 5) % n) as u64 * 8192 + 512, len);
        }
        let bytes: u64 = w[..n].iter().map(|b| u64::from(b.len)).sum();
        let s = ctx.sectors(blk, bytes);
        ctx.write_read(blk, s, &w[..n], &r[..n], Layout::Plain, Layout::Plain)
    })();
    let limit = if n < 64 { " (limited by seg_max)" } else { "" };
    ctx.check(
        r,
        format_args!("{n} data descriptors of 512..4096 bytes, scattered{limit}"),
    );
    ctx.arena.release(top);

    // Buffers crossing 4 KiB boundaries.
    let r = (|| {
        let w = ctx.alloc(3 * 4096, 4096)? + 0x800;
        let r = ctx.alloc(3 * 4096, 4096)? + 0xe00;
        let s = ctx.sectors(blk, 8192);
        ctx.write_read(
            blk,
            s,
            &[Buf::id(w, 8192)],
            &[Buf::id(r, 8192)],
            Layout::Plain,
            Layout::Plain,
        )
    })();
    ctx.check(
        r,
        format_args!("8 KiB buffers at page offsets 0x800 and 0xe00, crossing 4K boundaries"),
    );
    ctx.arena.release(top);

    // Buffers crossing 2 MiB boundaries.
    let mut at = (0, 0);
    let r = (|| {
        let w = ctx
            .arena
            .straddling_2m(64 * 1024, 32 * 1024)
            .ok_or(msg(format_args!("arena")))?;
        let r = ctx
            .arena
            .straddling_2m(64 * 1024, 12 * 1024 + 512)
            .ok_or(msg(format_args!("arena")))?;
        at = (w, r);
        let s = ctx.sectors(blk, 64 * 1024);
        ctx.write_read(
            blk,
            s,
            &[Buf::id(w, 65536)],
            &[Buf::id(r, 65536)],
            Layout::Plain,
            Layout::Plain,
        )
    })();
    ctx.check(
        r,
        format_args!(
            "64 KiB buffers at {:#x} and {:#x}, crossing 2M boundaries",
            at.0, at.1
        ),
    );
    ctx.arena.release(top);

    // The CPU uses the high alias, the device the physical address.
    let mut at = 0;
    let r = (|| {
        let w = ctx.alloc(16 * 1024, 4096)?;
        let r = ctx.alloc(20 * 1024, 4096)? + 0x600;
        at = w;
        let s = ctx.sectors(blk, 16 * 1024);
        ctx.write_read(
            blk,
            s,
            &[Buf::alias(w, 16384)],
            &[Buf::alias(r, 8192), Buf::alias(r + 8192 + 0x200, 8192)],
            Layout::Plain,
            Layout::Plain,
        )
    })();
    ctx.check(
        r,
        format_args!(
            "HIGH_ALIAS: the CPU fills and checks {:#x}.., the device moves {at:#x}..",
            HIGH_ALIAS + at
        ),
    );
    ctx.arena.release(top);

    // Odd addresses, segment lengths that are not sector multiples.
    let r = (|| {
        let w = ctx.alloc(4 * 4096, 4096)?;
        let r = ctx.alloc(4 * 4096, 4096)?;
        let wb = [
            Buf::id(w + 1, 1),
            Buf::id(w + 0x1003, 511),
            Buf::id(w + 0x2005, 1000),
            Buf::id(w + 0x3ff7, 24),
        ];
        let rb = [
            Buf::id(r + 0x3001, 700),
            Buf::id(r + 0x13, 300),
            Buf::id(r + 0x1ff9, 536),
        ];
        let s = ctx.sectors(blk, 1536);
        ctx.write_read(blk, s, &wb, &rb, Layout::Plain, Layout::Plain)
    })();
    ctx.check(
        r,
        format_args!("unaligned segments: writes of 1+511+1000+24 bytes, reads of 700+300+536, odd addresses"),
    );
    ctx.arena.release(top);

    // The header in two descriptors.
    let r = ctx.one_page_each_way(blk, Layout::SplitHeader);
    ctx.check(
        r,
        format_args!("header split over two descriptors (5 + 11 bytes, apart): 4 KiB write + read"),
    );
    ctx.arena.release(top);

    // The status byte in the last data descriptor of a read.
    let r = (|| {
        let w = ctx.alloc(4096, 4096)?;
        let r = ctx.alloc(8192, 4096)?;
        let s = ctx.sectors(blk, 4096);
        ctx.write_read(
            blk,
            s,
            &[Buf::id(w, 4096)],
            &[Buf::id(r + 0x1000, 2048), Buf::id(r + 0x10, 2048)],
            Layout::Plain,
            Layout::StatusInLast,
        )
    })();
    ctx.check(
        r,
        format_args!("status byte shares the last data descriptor (2049 bytes) of a 4 KiB read"),
    );
    ctx.arena.release(top);

    // Indirect descriptors.
    if blk.has(vfeature::INDIRECT_DESC) {
        let r = (|| {
            let w = ctx.alloc(32 * 1024, 4096)?;
            let r = ctx.alloc(32 * 1024, 4096)?;
            let wb: [Buf; 4] = core::array::from_fn(|k| Buf::id(w + (3 - k as u64) * 8192, 4096));
            let rb: [Buf; 4] = core::array::from_fn(|k| Buf::id(r + k as u64 * 8192 + 0x100, 4096));
            let s = ctx.sectors(blk, 16 * 1024);
            ctx.write_read(blk, s, &wb, &rb, Layout::Indirect, Layout::Indirect)
        })();
        ctx.check(r, format_args!("indirect descriptors: 16 KiB in 4 data descriptors through a 6-entry table, each way"));
        ctx.arena.release(top);
    } else {
        ctx.skip(
            format_args!("indirect descriptors"),
            format_args!("VIRTIO_F_INDIRECT_DESC not negotiated"),
        );
    }

    // FLUSH.
    if blk.has(feature::FLUSH) {
        let r = match blk.simple(req::FLUSH, 0, 0, 0) {
            Ok((blk_status::OK, len)) => Ok(msg(format_args!(" (used.len {len})"))),
            Ok((st, _)) => Err(msg(format_args!("status {st:#x}"))),
            Err(e) => Err(msg(format_args!("{e}"))),
        };
        ctx.check(r, format_args!("FLUSH"));
    } else {
        ctx.skip(
            format_args!("FLUSH"),
            format_args!("VIRTIO_BLK_F_FLUSH not negotiated"),
        );
    }

    // Many requests in flight: the device works on some while more come
    // (1024 blocks of 4 KiB, fewer on a small disk).
    let blocks = (blk.capacity / 8).min(1024);
    if blocks >= 64 {
        queue_depth(ctx, blk, 32, blocks);
    } else {
        ctx.skip(
            format_args!("queue depth 32"),
            format_args!("the disk holds only {blocks} blocks of 4 KiB (64 needed)"),
        );
    }
    ctx.arena.release(top);
}

/// `total` writes of 4 KiB with up to `depth` in flight, then `total`
/// reads of the same sectors, each checked as it completes.
fn queue_depth(ctx: &mut Ctx, blk: &mut Blk, depth: usize, total: u64) {
    let notifies = blk.q.notifies;
    let r = (|| {
        let bufs = ctx.alloc(depth as u64 * 4096, 4096)?;
        let base = ctx.sectors(blk, total * 4096);
        let pat = ctx.pattern();
        // Request i goes to 4 KiB block (i * 7) mod total (all of them, out of order).
        let sector = move |i: u64| base + ((i * 7) % total) * 8;
        let buf = move |slot: usize| bufs + slot as u64 * 4096;
        let mut bad = 0u64;
        blk.pipeline(
            depth,
            total,
            |i, slot| {
                fill(&[Buf::id(buf(slot), 4096)], pat, sector(i) * SECTOR);
                Job {
                    ty: req::OUT,
                    sector: sector(i),
                    addr: buf(slot),
                    len: 4096,
                }
            },
            |_, _, st, _| bad += u64::from(st != blk_status::OK),
        )
        .map_err(|e| msg(format_args!("writes: {e}")))?;
        if bad != 0 {
            return Err(msg(format_args!("{bad} writes failed")));
        }
        let mut first: Option<(u64, Mismatch)> = None;
        let mut verified = 0u64;
        blk.pipeline(
            depth,
            total,
            |i, slot| {
                poison(&[Buf::id(buf(slot), 4096)]);
                Job {
                    ty: req::IN,
                    sector: sector(i),
                    addr: buf(slot),
                    len: 4096,
                }
            },
            |i, slot, st, _| {
                if st != blk_status::OK {
                    bad += 1;
                    return;
                }
                match verify(&[Buf::id(buf(slot), 4096)], pat, sector(i) * SECTOR) {
                    Ok(n) => verified += n,
                    Err(m) => {
                        bad += 1;
                        first.get_or_insert((i, m));
                    }
                }
            },
        )
        .map_err(|e| msg(format_args!("reads: {e}")))?;
        ctx.bytes += verified;
        if let Some((i, m)) = first {
            return Err(msg(format_args!(
                "{bad} reads bad; request {i}: byte {} read {:#04x}, written {:#04x}",
                m.at, m.got, m.want
            )));
        }
        if bad != 0 {
            return Err(msg(format_args!("{bad} reads failed")));
        }
        Ok(msg(format_args!(
            " ({verified} bytes verified, ring of {} wrapped {} times, {} notifications)",
            blk.q.size(),
            2 * total / u64::from(blk.q.size()),
            blk.q.notifies - notifies
        )))
    })();
    ctx.check(
        r,
        format_args!(
            "queue depth {depth}: {total} writes then {total} reads of 4 KiB, out of order"
        ),
    );
}

/// Reads of the read-only disk checked against its pattern, and a write.
fn ro_scenarios(ctx: &mut Ctx, blk: &mut Blk, known: bool) {
    let top = ctx.arena.mark();
    let cap = blk.capacity;
    if !known {
        ctx.skip(
            format_args!("read-only disk pattern"),
            format_args!(
                "the read-only disk's id is not {}: its content is unknown",
                ShowId(ID_RO)
            ),
        );
    } else {
        let read =
            |ctx: &mut Ctx, blk: &mut Blk, sector: u64, bufs: &[Buf]| -> Result<Line, Line> {
                let bytes: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
                if sector + bytes / SECTOR > cap {
                    return Err(msg(format_args!("the disk has only {cap} sectors")));
                }
                poison(bufs);
                let (st, len) = ctx.request(blk, req::IN, sector, bufs, Layout::Plain)?;
                if st != blk_status::OK {
                    return Err(msg(format_args!("status {st:#x}")));
                }
                match verify(bufs, Pattern::Ro, sector * SECTOR) {
                    Ok(n) => {
                        ctx.bytes += n;
                        Ok(msg(format_args!(" ({n} bytes verified, used.len {len})")))
                    }
                    Err(m) => Err(msg(format_args!(
                        "byte {} read {:#04x}, pattern {:#04x}",
                        m.at, m.got, m.want
                    ))),
                }
            };
        let r = (|| {
            let b = ctx.alloc(64 * 1024, 4096)?;
            read(ctx, blk, 0, &[Buf::id(b, 65536)])
        })();
        ctx.check(
            r,
            format_args!("read-only disk: 64 KiB at sector 0 match the pattern"),
        );
        ctx.arena.release(top);

        let last = cap.saturating_sub(8);
        let r = (|| {
            let b = ctx.alloc(8 * 4096, 4096)?;
            let bufs: [Buf; 8] =
                core::array::from_fn(|k| Buf::id(b + (7 - k as u64) * 4096 + 0x10 * k as u64, 512));
            read(ctx, blk, last, &bufs)
        })();
        ctx.check(
            r,
            format_args!(
                "read-only disk: the last 8 sectors ({last}..) in 8 scattered descriptors"
            ),
        );
        ctx.arena.release(top);

        let mid = (cap / 2) & !7;
        let len = (1u64 << 20).min(cap * SECTOR / 4) as u32 & !4095;
        let r = (|| {
            let b = ctx
                .arena
                .straddling_2m(u64::from(len), 0x1_0200)
                .ok_or(msg(format_args!("arena")))?;
            read(ctx, blk, mid, &[Buf::alias(b, len)])
        })();
        ctx.check(
            r,
            format_args!("read-only disk: {len} bytes at sector {mid} into a buffer crossing 2M, checked through HIGH_ALIAS"),
        );
        ctx.arena.release(top);
    }

    // A write must fail, and change nothing.
    let sector = 16.min(cap.saturating_sub(8));
    let r = (|| {
        let b = ctx.alloc(4096, 4096)?;
        fill(&[Buf::id(b, 4096)], Pattern::Seeded(7), 0);
        let (st, _) = ctx.request(blk, req::OUT, sector, &[Buf::id(b, 4096)], Layout::Plain)?;
        if st != blk_status::IOERR {
            return Err(msg(format_args!(
                "write status {st:#x}, expected IOERR (1)"
            )));
        }
        if !known {
            return Ok(msg(format_args!(": IOERR")));
        }
        poison(&[Buf::id(b, 4096)]);
        let (st, _) = ctx.request(blk, req::IN, sector, &[Buf::id(b, 4096)], Layout::Plain)?;
        if st != blk_status::OK {
            return Err(msg(format_args!("read-back status {st:#x}")));
        }
        let n = verify(&[Buf::id(b, 4096)], Pattern::Ro, sector * SECTOR).map_err(|m| {
            msg(format_args!(
                "the sectors changed: byte {} is {:#04x}",
                m.at, m.got
            ))
        })?;
        ctx.bytes += n;
        Ok(msg(format_args!(
            ": IOERR, the pattern is intact ({n} bytes verified)"
        )))
    })();
    ctx.check(
        r,
        format_args!("read-only disk: a 4 KiB write at sector {sector} fails"),
    );
    ctx.arena.release(top);
}

/// What a bad request came back with.
struct Outcome {
    status: u8,
    used_len: u32,
}

/// Deliberately bad requests: each must complete with an error (or, where
/// the device cannot report one, with nothing written), and the device
/// must keep working.
fn bad_requests(ctx: &mut Ctx, blk: &mut Blk) {
    let top = ctx.arena.mark();
    let cap = blk.capacity;
    let Ok(page) = ctx.alloc(4 * 4096, 4096) else {
        ctx.check(
            Err(msg(format_args!("DMA arena exhausted"))),
            format_args!("bad requests"),
        );
        return;
    };
    let (hdr, st, data) = (page, page + 0x40, page + 0x1000);

    // Plain chains with one data descriptor: (title, type, sector, data
    // address, data length, what QEMU's device does wrong with it if it
    // does, accepted statuses).
    type Case = (
        &'static str,
        u32,
        u64,
        u64,
        u32,
        Option<&'static str>,
        &'static [u8],
    );
    const QEMU_NOWHERE: Option<&str> =
        Some("QEMU's device completes it with status 0 (the data goes nowhere)");
    let ioerr_or_unsupp: &[u8] = &[blk_status::IOERR, blk_status::UNSUPP];
    let cases: [Case; 6] = [
        (
            "data descriptor in the MMIO hole (0xd8000000)",
            req::IN,
            0,
            0xd800_0000,
            4096,
            QEMU_NOWHERE,
            ioerr_or_unsupp,
        ),
        (
            "data descriptor beyond RAM (0x4000000000)",
            req::IN,
            0,
            0x40_0000_0000,
            4096,
            QEMU_NOWHERE,
            ioerr_or_unsupp,
        ),
        (
            "data length 100 (not a multiple of 512)",
            req::IN,
            0,
            data,
            100,
            None,
            ioerr_or_unsupp,
        ),
        (
            "read straddling the end of the disk",
            req::IN,
            cap.saturating_sub(4),
            data,
            4096,
            None,
            ioerr_or_unsupp,
        ),
        (
            "read at sector 2^64-8 (byte offset overflows)",
            req::IN,
            u64::MAX - 7,
            data,
            4096,
            None,
            ioerr_or_unsupp,
        ),
        (
            "unknown request type 0x7f",
            0x7f,
            0,
            data,
            512,
            None,
            &[blk_status::UNSUPP],
        ),
    ];
    for (what, ty, sector, addr, len, on_qemu, accept) in cases {
        if let (Some(fails), Some(why)) = (on_qemu, ctx.qemu) {
            ctx.skip(
                format_args!("bad request: {what}"),
                format_args!("{fails} ({why})"),
            );
            continue;
        }
        let segs = [Seg::out(hdr, 16), Seg::inn(addr, len), Seg::inn(st, 1)];
        let r = bad(blk, ty, sector, &segs, hdr, st).and_then(|o| {
            if accept.contains(&o.status) {
                Ok(msg(format_args!(
                    ": status {} (used.len {})",
                    o.status, o.used_len
                )))
            } else {
                Err(msg(format_args!(
                    "status {:#x} (used.len {}), expected one of {accept:?}",
                    o.status, o.used_len
                )))
            }
        });
        let r = r.and_then(|l| ctx.alive(blk).map(|()| l));
        ctx.check(r, format_args!("bad request: {what}"));
    }

    // The status descriptor is device-readable: no way to report.
    let what = "status descriptor not device-writable";
    if let Some(why) = ctx.qemu {
        ctx.skip(
            format_args!("bad request: {what}"),
            format_args!("QEMU's device treats it as fatal: \"Incorrect order for descriptors\", NEEDS_RESET ({why})"),
        );
    } else {
        let segs = [Seg::out(hdr, 16), Seg::inn(data, 512), Seg::out(st, 1)];
        let r = bad(blk, req::IN, 0, &segs, hdr, st).and_then(|o| {
            if o.used_len == 0 && o.status == STATUS_POISON {
                Ok(msg(format_args!(": used.len 0, status byte untouched")))
            } else {
                Err(msg(format_args!(
                    "used.len {}, status byte {:#x} (expected used.len 0 and {STATUS_POISON:#x})",
                    o.used_len, o.status
                )))
            }
        });
        let r = r.and_then(|l| ctx.alive(blk).map(|()| l));
        ctx.check(r, format_args!("bad request: {what}"));
    }

    // A chain whose status descriptor links to itself.
    let what = "looping chain (the status descriptor's next is itself)";
    if let Some(why) = ctx.qemu {
        ctx.skip(
            format_args!("bad request: {what}"),
            format_args!(
                "QEMU's device treats it as fatal: \"Looped descriptor\", NEEDS_RESET ({why})"
            ),
        );
    } else {
        let mut status_desc = Seg::inn(st, 1);
        status_desc.self_loop = true;
        let segs = [Seg::out(hdr, 16), Seg::inn(data, 512), status_desc];
        let r = bad(blk, req::IN, 0, &segs, hdr, st).and_then(|o| {
            if o.status == blk_status::IOERR {
                Ok(msg(format_args!(": IOERR (used.len {})", o.used_len)))
            } else if o.used_len == 0 && o.status == STATUS_POISON {
                Ok(msg(format_args!(": used.len 0, no status written")))
            } else {
                Err(msg(format_args!(
                    "status {:#x}, used.len {}",
                    o.status, o.used_len
                )))
            }
        });
        let r = r.and_then(|l| ctx.alive(blk).map(|()| l));
        ctx.check(r, format_args!("bad request: {what}"));
    }
    ctx.arena.release(top);
}

/// Sends one bad request (header at `hdr`, status byte at `st`).
fn bad(
    blk: &mut Blk,
    ty: u32,
    sector: u64,
    segs: &[Seg],
    hdr: u64,
    st: u64,
) -> Result<Outcome, Line> {
    Blk::header(hdr, ty, sector);
    poke(st, STATUS_POISON);
    let u = blk
        .submit(segs, BAD_TIMEOUT_TSC)
        .map_err(|e| msg(format_args!("{e}")))?;
    Ok(Outcome {
        status: peek(st),
        used_len: u.len,
    })
}
