// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared helpers for the virtio-blk tests: a guest memory layout with
//! adjacent regions, an MMIO hole and an end of RAM; backing files with
//! known contents; a driver-side split virtqueue written straight into
//! guest memory ([`Driver`]); a synchronous rig around
//! `Block::queue_for` ([`Rig`]); counter deltas.
//!
//! Declared from each test file with `mod common;`.

#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use devices::virtio::blk::{
    Block, BlockConfig, BlockCounters, BlockQueue, BlockStats, DiskOptions, ErrorClass,
};
use devices::virtio::{Activation, Interrupt, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1};
use guest_mm::gup::{GuestMemory, Gup, GupCounters, RegionOptions};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const PAGE: u64 = 4096;

/// Region 0: `[0, 32M)`.
pub const R0: (u64, u64) = (0, 32 * MIB);
/// Region 1, adjacent to region 0: `[32M, 48M)`.
pub const R1: (u64, u64) = (32 * MIB, 16 * MIB);
/// The MMIO hole: `[48M, 64M)` (no RAM).
pub const HOLE: u64 = 48 * MIB;
/// Region 2 after the hole: `[64M, 72M)`.
pub const R2: (u64, u64) = (64 * MIB, 8 * MIB);
/// The end of RAM.
pub const RAM_END: u64 = R2.0 + R2.1;

/// Ring addresses (the available ring must not be at 0: virtio-queue
/// takes 0 for "not configured").
pub const DESC: u64 = 0x1000;
pub const AVAIL: u64 = 0x3000;
pub const USED: u64 = 0x4000;
/// Headers and status bytes live from here (region 0).
pub const HDR: u64 = 0x10000;
/// Indirect tables live from here (region 0).
pub const TABLES: u64 = 0x40000;
/// Data buffers live from here (region 0, 2M-aligned).
pub const DATA: u64 = 2 * MIB;

/// Queue size the tests use.
pub const QSIZE: u16 = 256;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// Request types (virtio 1.2 section 5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// The device ID string tests configure.
pub const ID: &str = "guest-mm-test-disk-0123";

/// An engine over the standard layout (regions 0, 1 and 2) with `options`.
pub fn engine(options: RegionOptions) -> Arc<Gup> {
    Arc::new(
        Gup::anonymous(
            &[
                (R0.0, R0.1 as usize),
                (R1.0, R1.1 as usize),
                (R2.0, R2.1 as usize),
            ],
            options,
        )
        .expect("engine"),
    )
}

/// The guest memory of `gup`'s current snapshot.
pub fn memory(gup: &Gup) -> GuestMemory {
    gup.memory_map().memory().clone()
}

/// Deterministic, never-zero bytes (so a zeroed page is never mistaken for
/// data): byte `i` of stream `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

static FILES: AtomicU64 = AtomicU64::new(0);

/// A backing file in the target's temporary directory (a real filesystem,
/// where O_DIRECT works; /tmp may be tmpfs), removed on drop.
pub struct TestFile {
    pub path: PathBuf,
    pub len: u64,
}

impl TestFile {
    /// `sectors` sectors of [`pattern`] data (seed `seed`).
    pub fn new(tag: &str, sectors: u64, seed: u64) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("virtio-blk");
        fs::create_dir_all(&dir).expect("temp dir");
        let n = FILES.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{tag}-{}-{n}.img", std::process::id()));
        let len = sectors * 512;
        fs::write(&path, pattern(seed, len as usize)).expect("write backing file");
        TestFile { path, len }
    }

    /// The whole file.
    pub fn contents(&self) -> Vec<u8> {
        fs::read(&self.path).expect("read backing file")
    }

    /// `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let f = File::open(&self.path).expect("open backing file");
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)
            .expect("read backing file");
        buf
    }

    /// Writes `data` at `offset` (behind the device's back).
    pub fn write(&self, offset: u64, data: &[u8]) {
        let f = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .expect("open backing file");
        f.write_all_at(data, offset).expect("write backing file");
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// One descriptor as the driver describes it.
#[derive(Clone, Copy, Debug)]
pub struct D {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
}

/// A device-readable descriptor.
pub fn r(addr: u64, len: u64) -> D {
    D {
        addr,
        len: len as u32,
        flags: 0,
    }
}

/// A device-writable descriptor.
pub fn w(addr: u64, len: u64) -> D {
    D {
        addr,
        len: len as u32,
        flags: F_WRITE,
    }
}

/// A request header.
pub fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// One discard / write-zeroes range.
pub fn range(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&sector.to_le_bytes());
    b[8..12].copy_from_slice(&sectors.to_le_bytes());
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    b
}

/// Writes one raw descriptor at `table[index]`.
pub fn put_desc(
    mem: &GuestMemory,
    table: u64,
    index: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&b, GuestAddress(table + 16 * u64::from(index)))
        .expect("descriptor in RAM");
}

/// Writes `descs` as an indirect table at `addr` (linked in order) and
/// returns the descriptor that refers to it.
pub fn indirect(mem: &GuestMemory, addr: u64, descs: &[D]) -> D {
    for (i, d) in descs.iter().enumerate() {
        let last = i + 1 == descs.len();
        let flags = d.flags | if last { 0 } else { F_NEXT };
        put_desc(mem, addr, i as u16, d.addr, d.len, flags, (i + 1) as u16);
    }
    D {
        addr,
        len: (16 * descs.len()) as u32,
        flags: F_INDIRECT,
    }
}

/// The driver side of a split virtqueue in guest memory.
pub struct Driver {
    pub mem: GuestMemory,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// The next available index the driver publishes.
    pub avail_idx: u16,
    /// The used index the driver has consumed up to.
    pub used_seen: u16,
    /// Descriptor allocator (round robin).
    pub next_desc: u16,
}

impl Driver {
    /// Rings at `desc`, `avail`, `used` (zeroed).
    pub fn new(mem: GuestMemory, size: u16, desc: u64, avail: u64, used: u64) -> Self {
        let n = u64::from(size);
        mem.write_slice(&vec![0u8; (16 * n) as usize], GuestAddress(desc))
            .expect("desc table");
        mem.write_slice(&vec![0u8; (6 + 2 * n) as usize], GuestAddress(avail))
            .expect("avail ring");
        mem.write_slice(&vec![0u8; (6 + 8 * n) as usize], GuestAddress(used))
            .expect("used ring");
        Driver {
            mem,
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
            next_desc: 0,
        }
    }

    /// The standard rings ([`DESC`], [`AVAIL`], [`USED`]) of [`QSIZE`].
    pub fn standard(mem: GuestMemory) -> Self {
        Driver::new(mem, QSIZE, DESC, AVAIL, USED)
    }

    /// Writes `descs` into the table at consecutive free indices, linked in
    /// order, and returns the head (not yet published).
    pub fn chain(&mut self, descs: &[D]) -> u16 {
        assert!(!descs.is_empty() && descs.len() <= usize::from(self.size));
        let head = self.next_desc;
        let mut i = head;
        for (k, d) in descs.iter().enumerate() {
            let next = (i + 1) % self.size;
            let last = k + 1 == descs.len();
            let flags = d.flags | if last { 0 } else { F_NEXT };
            put_desc(&self.mem, self.desc, i, d.addr, d.len, flags, next);
            i = next;
        }
        self.next_desc = i;
        head
    }

    /// Puts `head` in the available ring and bumps its index.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// [`Driver::chain`] then [`Driver::publish`].
    pub fn submit(&mut self, descs: &[D]) -> u16 {
        let head = self.chain(descs);
        self.publish(head);
        head
    }

    /// Writes the available index (release).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .store(idx.to_le(), GuestAddress(self.avail + 2), Ordering::Release)
            .expect("avail idx");
    }

    /// The available ring's flags (VRING_AVAIL_F_NO_INTERRUPT = 1).
    pub fn set_avail_flags(&self, flags: u16) {
        self.mem
            .store(flags.to_le(), GuestAddress(self.avail), Ordering::Release)
            .expect("avail flags");
    }

    /// used_event (EVENT_IDX): interrupt once the used index passes it.
    pub fn set_used_event(&self, v: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        self.mem
            .store(v.to_le(), GuestAddress(at), Ordering::Release)
            .expect("used_event");
    }

    /// avail_event (EVENT_IDX), written by the device.
    pub fn avail_event(&self) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        u16::from_le(
            self.mem
                .load(GuestAddress(at), Ordering::Acquire)
                .expect("avail_event"),
        )
    }

    /// The used ring's flags (VRING_USED_F_NO_NOTIFY = 1).
    pub fn used_flags(&self) -> u16 {
        u16::from_le(
            self.mem
                .load(GuestAddress(self.used), Ordering::Acquire)
                .expect("used flags"),
        )
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(
            self.mem
                .load(GuestAddress(self.used + 2), Ordering::Acquire)
                .expect("used idx"),
        )
    }

    /// The next used entry (id, len), if the device published one.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if self.used_idx() == self.used_seen {
            return None;
        }
        let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let mut b = [0u8; 8];
        self.mem
            .read_slice(&mut b, GuestAddress(at))
            .expect("used elem");
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((
            u32::from_le_bytes(b[0..4].try_into().unwrap()),
            u32::from_le_bytes(b[4..8].try_into().unwrap()),
        ))
    }

    /// Guest bytes.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem
            .read_slice(&mut b, GuestAddress(addr))
            .expect("guest read");
        b
    }

    /// Writes guest bytes.
    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .expect("guest write");
    }
}

/// How a [`Rig`] is built.
#[derive(Clone, Debug)]
pub struct RigOptions {
    pub sectors: u64,
    pub read_only: bool,
    pub direct: bool,
    /// Features the driver negotiates (beyond VERSION_1, which is always in).
    pub features: u64,
    pub regions: RegionOptions,
    /// The GET_ID string.
    pub id: String,
}

impl Default for RigOptions {
    fn default() -> Self {
        RigOptions {
            sectors: 4096,
            read_only: false,
            direct: false,
            features: (1 << F_RING_INDIRECT_DESC)
                | (1 << 9) // FLUSH
                | (1 << 13) // DISCARD
                | (1 << 14), // WRITE_ZEROES
            regions: RegionOptions::default(),
            id: ID.to_string(),
        }
    }
}

/// The device's configuration for `file`.
pub fn block_config(file: &TestFile, read_only: bool, direct: bool) -> BlockConfig {
    BlockConfig {
        disk: DiskOptions {
            path: file.path.clone(),
            read_only,
            direct,
        },
        id: ID.to_string(),
        index: 0,
        poll: Duration::ZERO,
        endpoint: None,
        page_request_timeout: devices::virtio::blk::worker::PAGE_REQUEST_TIMEOUT,
    }
}

/// A virtqueue configured like the transport does at DRIVER_OK.
pub fn queue(drv: &Driver, event_idx: bool) -> Queue {
    let mut q = Queue::new(QSIZE).expect("queue");
    q.set_size(drv.size);
    q.set_desc_table_address(Some(drv.desc as u32), Some((drv.desc >> 32) as u32));
    q.set_avail_ring_address(Some(drv.avail as u32), Some((drv.avail >> 32) as u32));
    q.set_used_ring_address(Some(drv.used as u32), Some((drv.used >> 32) as u32));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

/// A block device driven synchronously: the test submits chains and calls
/// [`Rig::run`], which runs `BlockQueue::process` on this thread.
pub struct Rig {
    pub gup: Arc<Gup>,
    pub file: TestFile,
    pub block: Block,
    pub stats: Arc<BlockStats>,
    pub q: BlockQueue,
    pub drv: Driver,
    pub interrupt: Arc<Interrupt>,
    pub irq: EventFd,
}

impl Rig {
    pub fn new(o: RigOptions) -> Self {
        let gup = engine(o.regions);
        let file = TestFile::new("rig", o.sectors, 7);
        let mut cfg = block_config(&file, o.read_only, o.direct);
        cfg.id = o.id.clone();
        let block = Block::new(&cfg).expect("block device");
        let drv = Driver::standard(memory(&gup));
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().expect("eventfd clone")));
        let features = (1u64 << F_VERSION_1) | o.features;
        let q = block
            .queue_for(Activation {
                features,
                queues: vec![queue(&drv, features & (1 << F_RING_EVENT_IDX) != 0)],
                notifiers: Vec::new(),
                interrupt: Arc::clone(&interrupt),
                mem: memory(&gup),
                gup: Arc::clone(&gup),
            })
            .expect("queue_for");
        let stats = block.stats();
        Rig {
            gup,
            file,
            block,
            stats,
            q,
            drv,
            interrupt,
            irq,
        }
    }

    pub fn default() -> Self {
        Rig::new(RigOptions::default())
    }

    /// Processes the queue and returns the used entries it published.
    /// Asserts that nothing stays pinned.
    pub fn run(&mut self) -> Vec<(u32, u32)> {
        self.q.process();
        let g = self.gup.stats();
        assert_eq!(g.pins_outstanding, 0, "pins left outstanding: {g:?}");
        assert_eq!(g.gets_outstanding, 0, "references left outstanding: {g:?}");
        let mut used = Vec::new();
        while let Some(u) = self.drv.pop_used() {
            used.push(u);
        }
        used
    }

    /// Submits one chain, runs it, and returns its used length; asserts it
    /// is the only completion and carries the head.
    pub fn one(&mut self, descs: &[D]) -> u32 {
        let head = self.drv.submit(descs);
        let used = self.run();
        assert_eq!(used.len(), 1, "one chain, one used entry: {used:?}");
        assert_eq!(used[0].0, u32::from(head), "used id is the chain head");
        used[0].1
    }

    /// The counters now.
    pub fn counters(&self) -> BlockCounters {
        self.stats.snapshot()
    }

    /// Guest bytes.
    pub fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        self.drv.read(addr, len)
    }

    /// Writes guest bytes.
    pub fn put(&self, addr: u64, data: &[u8]) {
        self.drv.write(addr, data)
    }

    /// The status byte at `addr`.
    pub fn status(&self, addr: u64) -> u8 {
        self.drv.read(addr, 1)[0]
    }
}

/// `after - before`, field by field.
pub fn delta(before: &BlockCounters, after: &BlockCounters) -> BlockCounters {
    BlockCounters {
        requests: after.requests - before.requests,
        reads: after.reads - before.reads,
        writes: after.writes - before.writes,
        flushes: after.flushes - before.flushes,
        get_ids: after.get_ids - before.get_ids,
        discards: after.discards - before.discards,
        bytes_read: after.bytes_read - before.bytes_read,
        bytes_written: after.bytes_written - before.bytes_written,
        interrupts: after.interrupts - before.interrupts,
        notifications: after.notifications - before.notifications,
        direct_fallbacks: after.direct_fallbacks - before.direct_fallbacks,
        parked: after.parked - before.parked,
        resumed: after.resumed - before.resumed,
        errors: std::array::from_fn(|i| after.errors[i] - before.errors[i]),
    }
}

/// The counters of exactly one failed request of `class`.
pub fn one_failure(class: ErrorClass) -> BlockCounters {
    let mut c = BlockCounters {
        requests: 1,
        ..Default::default()
    };
    c.errors[ErrorClass::ALL.iter().position(|&k| k == class).unwrap()] = 1;
    c
}

/// Successful requests in `c`.
pub fn successes(c: &BlockCounters) -> u64 {
    c.reads + c.writes + c.flushes + c.get_ids + c.discards
}

/// `after - before` of the GUP counters that must not drift.
pub fn gup_clean(g: &GupCounters) {
    assert_eq!(g.pins_outstanding, 0, "{g:?}");
    assert_eq!(g.gets_outstanding, 0, "{g:?}");
    assert_eq!(g.longterm_pages, 0, "{g:?}");
}

/// Whether the page holding `gpa` is dirty in the engine's bitmap.
pub fn dirty(gup: &Gup, gpa: u64) -> bool {
    let map = gup.memory_map();
    map.find(gpa).expect("gpa in RAM").is_dirty(gpa)
}

/// Clears every region's dirty bitmap.
pub fn clear_dirty(gup: &Gup) {
    for r in gup.memory_map().regions() {
        let m: &vm_memory::MmapRegion<guest_mm::gup::DirtyBitmap> = r.region();
        m.bitmap().reset();
    }
}

/// Guest byte ranges (address, length).
pub type Segs = Vec<(u64, u64)>;

/// The guest byte ranges of `descs` that are device-writable (or readable).
pub fn segs(descs: &[D], writable: bool) -> Vec<(u64, u64)> {
    descs
        .iter()
        .filter(|d| d.len != 0 && (d.flags & F_WRITE != 0) == writable)
        .map(|d| (d.addr, u64::from(d.len)))
        .collect()
}

/// Splits `segs` after `n` bytes.
pub fn split(segs: &[(u64, u64)], n: u64) -> (Segs, Segs) {
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    let mut left = n;
    for &(a, l) in segs {
        if left == 0 {
            tail.push((a, l));
        } else if l <= left {
            head.push((a, l));
            left -= l;
        } else {
            head.push((a, left));
            tail.push((a + left, l - left));
            left = 0;
        }
    }
    assert_eq!(left, 0, "segments shorter than {n}");
    (head, tail)
}

/// Total bytes of `segs`.
pub fn total(segs: &[(u64, u64)]) -> u64 {
    segs.iter().map(|s| s.1).sum()
}

/// The guest bytes of `segs`, concatenated.
pub fn gather(drv: &Driver, segs: &[(u64, u64)]) -> Vec<u8> {
    segs.iter()
        .flat_map(|&(a, l)| drv.read(a, l as usize))
        .collect()
}

/// Writes `bytes` across `segs`.
pub fn scatter(drv: &Driver, segs: &[(u64, u64)], bytes: &[u8]) {
    let mut at = 0usize;
    for &(a, l) in segs {
        drv.write(a, &bytes[at..at + l as usize]);
        at += l as usize;
    }
    assert_eq!(at, bytes.len());
}

/// The 4K pages `segs` touch.
pub fn pages(segs: &[(u64, u64)]) -> std::collections::BTreeSet<u64> {
    segs.iter()
        .flat_map(|&(a, l)| (a / PAGE..=(a + l - 1) / PAGE).map(|p| p * PAGE))
        .collect()
}

/// A request's descriptors: what the device sees after following an
/// indirect table (`logical`) and what the queue holds (`chain`).
#[derive(Clone, Debug)]
pub struct Layout {
    pub logical: Vec<D>,
    pub chain: Vec<D>,
}

impl Layout {
    /// A direct chain.
    pub fn direct(descs: Vec<D>) -> Self {
        Layout {
            chain: descs.clone(),
            logical: descs,
        }
    }

    /// One indirect descriptor whose table (at `table`) holds `descs`.
    pub fn indirect(mem: &GuestMemory, table: u64, descs: Vec<D>) -> Self {
        let d = indirect(mem, table, &descs);
        Layout {
            chain: vec![d],
            logical: descs,
        }
    }
}

impl Rig {
    /// A read (IN) of the layout's data from `sector`: the header goes in
    /// the first 16 readable bytes, the data must land in the writable bytes
    /// but the last, the status in the last one. Checks every byte against
    /// the backing file, the status, the used length, the counters, and the
    /// dirty bitmap (every data page marked). Returns the data.
    pub fn read_ok(&mut self, sector: u64, l: &Layout) -> Vec<u8> {
        let rd = segs(&l.logical, false);
        let wr = segs(&l.logical, true);
        assert_eq!(total(&rd), 16, "a read has only the header readable");
        scatter(&self.drv, &rd, &header(T_IN, sector));
        let (data, status) = split(&wr, total(&wr) - 1);
        let len = total(&data);
        scatter(&self.drv, &data, &vec![0xee; len as usize]);
        self.put(status[0].0, &[0xff]);
        clear_dirty(&self.gup);
        let before = self.counters();
        let used = self.one(&l.chain);
        let d = delta(&before, &self.counters());
        assert_eq!(self.status(status[0].0), S_OK, "status of a good read");
        assert_eq!(used, len as u32 + 1, "used length: data + status");
        let got = gather(&self.drv, &data);
        let want = self.file.read(sector * 512, len as usize);
        assert!(
            got == want,
            "read data differs from the backing file ({} bytes at sector {sector})",
            len
        );
        assert_eq!(
            d,
            BlockCounters {
                requests: 1,
                reads: 1,
                bytes_read: len,
                interrupts: 1,
                direct_fallbacks: if self.block.disk().is_direct() {
                    d.direct_fallbacks
                } else {
                    0
                },
                ..Default::default()
            }
        );
        for p in pages(&data) {
            assert!(
                dirty(&self.gup, p),
                "page {p:#x} the device wrote is not dirty"
            );
        }
        assert!(dirty(&self.gup, status[0].0), "status page not dirty");
        got
    }

    /// A write (OUT) of fresh pattern data (seed `seed`) from the layout's
    /// readable bytes after the header to `sector`. Checks the whole
    /// backing file (the range written, nothing else changed), the status,
    /// the used length (1), the counters, and that the data pages (read
    /// pins) were not marked dirty.
    pub fn write_ok(&mut self, sector: u64, l: &Layout, seed: u64) -> Vec<u8> {
        let rd = segs(&l.logical, false);
        let wr = segs(&l.logical, true);
        let (hdr, data) = split(&rd, 16);
        assert_eq!(total(&wr), 1, "a write has only the status writable");
        scatter(&self.drv, &hdr, &header(T_OUT, sector));
        let len = total(&data);
        let bytes = pattern(seed, len as usize);
        scatter(&self.drv, &data, &bytes);
        self.put(wr[0].0, &[0xff]);
        let mut want = self.file.contents();
        want[(sector * 512) as usize..(sector * 512 + len) as usize].copy_from_slice(&bytes);
        clear_dirty(&self.gup);
        let before = self.counters();
        let used = self.one(&l.chain);
        let d = delta(&before, &self.counters());
        assert_eq!(self.status(wr[0].0), S_OK, "status of a good write");
        assert_eq!(used, 1, "used length of a write: the status byte");
        assert!(
            self.file.contents() == want,
            "backing file differs after a write of {len} bytes at sector {sector}"
        );
        assert_eq!(
            d,
            BlockCounters {
                requests: 1,
                writes: 1,
                bytes_written: len,
                interrupts: 1,
                direct_fallbacks: if self.block.disk().is_direct() {
                    d.direct_fallbacks
                } else {
                    0
                },
                ..Default::default()
            }
        );
        let status_page = wr[0].0 / PAGE * PAGE;
        let ring_pages = [DESC, DESC + PAGE, AVAIL, USED, USED + PAGE];
        for p in pages(&data) {
            if p != status_page && !ring_pages.contains(&p) {
                assert!(
                    !dirty(&self.gup, p),
                    "page {p:#x} only read by the device is dirty"
                );
            }
        }
        bytes
    }
}

/// The virtio-mmio registers as a driver sees them.
pub struct Regs {
    pub t: devices::virtio::mmio::MmioTransport,
}

impl Regs {
    /// A 32-bit register read.
    pub fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// A 32-bit register write.
    pub fn w(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }

    /// The 64-bit device features.
    pub fn device_features(&mut self) -> u64 {
        use devices::virtio::mmio::{DEVICE_FEATURES, DEVICE_FEATURES_SEL};
        self.w(DEVICE_FEATURES_SEL, 0);
        let lo = self.r(DEVICE_FEATURES);
        self.w(DEVICE_FEATURES_SEL, 1);
        let hi = self.r(DEVICE_FEATURES);
        u64::from(lo) | u64::from(hi) << 32
    }

    /// Writes the 64-bit driver features.
    pub fn set_driver_features(&mut self, f: u64) {
        use devices::virtio::mmio::{DRIVER_FEATURES, DRIVER_FEATURES_SEL};
        self.w(DRIVER_FEATURES_SEL, 0);
        self.w(DRIVER_FEATURES, f as u32);
        self.w(DRIVER_FEATURES_SEL, 1);
        self.w(DRIVER_FEATURES, (f >> 32) as u32);
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK (checked), queue 0 at
    /// `drv`'s rings, DRIVER_OK. Returns the Status register afterwards.
    pub fn init(&mut self, drv: &Driver, features: u64) -> u32 {
        self.init_sized(drv, features, u32::from(drv.size))
    }

    /// [`Regs::init`] writing `queue_num` to QueueNum instead of the
    /// driver's queue size.
    pub fn init_sized(&mut self, drv: &Driver, features: u64, queue_num: u32) -> u32 {
        use devices::virtio::mmio::*;
        assert!(self.negotiate(features), "FEATURES_OK refused");
        self.w(QUEUE_SEL, 0);
        self.w(QUEUE_NUM, queue_num);
        self.set_rings(drv.desc, drv.avail, drv.used);
        self.w(QUEUE_READY, 1);
        self.driver_ok()
    }

    /// Reset, ACKNOWLEDGE, DRIVER, the driver features `features`, then
    /// FEATURES_OK; returns whether the device kept FEATURES_OK set.
    pub fn negotiate(&mut self, features: u64) -> bool {
        use devices::virtio::mmio::STATUS;
        use devices::virtio::status::*;
        self.w(STATUS, 0);
        self.w(STATUS, ACKNOWLEDGE);
        self.w(STATUS, ACKNOWLEDGE | DRIVER);
        self.set_driver_features(features);
        self.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.r(STATUS) & FEATURES_OK != 0
    }

    /// The selected queue's descriptor table, driver (available) and
    /// device (used) ring addresses, low then high word of each.
    pub fn set_rings(&mut self, desc: u64, avail: u64, used: u64) {
        use devices::virtio::mmio::{QUEUE_DESC_LOW, QUEUE_DEVICE_LOW, QUEUE_DRIVER_LOW};
        for (lo, addr) in [
            (QUEUE_DESC_LOW, desc),
            (QUEUE_DRIVER_LOW, avail),
            (QUEUE_DEVICE_LOW, used),
        ] {
            self.w(lo, addr as u32);
            self.w(lo + 4, (addr >> 32) as u32);
        }
    }

    /// For the selected queue: QueueNum of `drv`'s size, its rings,
    /// QueueReady.
    pub fn ready_queue(&mut self, drv: &Driver) {
        use devices::virtio::mmio::{QUEUE_NUM, QUEUE_READY};
        self.w(QUEUE_NUM, u32::from(drv.size));
        self.set_rings(drv.desc, drv.avail, drv.used);
        self.w(QUEUE_READY, 1);
    }

    /// Sets DRIVER_OK (after FEATURES_OK); returns the Status register
    /// afterwards.
    pub fn driver_ok(&mut self) -> u32 {
        use devices::virtio::mmio::STATUS;
        use devices::virtio::status::*;
        self.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        self.r(STATUS)
    }

    /// QueueNotify for queue 0.
    pub fn notify(&mut self) {
        self.w(devices::virtio::mmio::QUEUE_NOTIFY, 0);
    }
}

/// A block device behind a virtio-mmio transport, its worker thread
/// running after [`Regs::init`].
pub struct Mmio {
    pub gup: Arc<Gup>,
    pub file: TestFile,
    pub regs: Regs,
    pub stats: Arc<BlockStats>,
    pub irq: EventFd,
}

impl Mmio {
    /// A device over a fresh backing file of `sectors` sectors, named
    /// `virtio-blk<index>` (its worker thread's name).
    pub fn new(index: usize, sectors: u64, read_only: bool) -> Self {
        Mmio::with(index, sectors, read_only, false)
    }

    /// [`Mmio::new`], the backing file also opened with O_DIRECT if `direct`.
    pub fn with(index: usize, sectors: u64, read_only: bool, direct: bool) -> Self {
        let gup = engine(RegionOptions::default());
        let file = TestFile::new("mmio", sectors, 11);
        let mut cfg = block_config(&file, read_only, direct);
        cfg.index = index;
        let block = Block::new(&cfg).expect("block device");
        let stats = block.stats();
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let t = devices::virtio::mmio::MmioTransport::new(
            Box::new(block),
            memory(&gup),
            Arc::clone(&gup),
            irq.try_clone().expect("eventfd clone"),
        )
        .expect("transport");
        Mmio {
            gup,
            file,
            regs: Regs { t },
            stats,
            irq,
        }
    }

    /// Interrupts raised since the last call (the eventfd's counter).
    pub fn take_irqs(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }
}

/// Waits (up to 10 s) until the device has published `n` used entries
/// beyond what `drv` consumed, then pops them.
pub fn wait_used(drv: &mut Driver, n: usize) -> Vec<(u32, u32)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while usize::from(drv.used_idx().wrapping_sub(drv.used_seen)) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {n} used entries (have {})",
            drv.used_idx().wrapping_sub(drv.used_seen)
        );
        std::thread::sleep(Duration::from_micros(50));
    }
    (0..n)
        .map(|_| drv.pop_used().expect("used entry"))
        .collect()
}

/// The names of this process's threads.
pub fn thread_names() -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let Ok(name) = fs::read_to_string(e.path().join("comm")) {
                v.push(name.trim().to_string());
            }
        }
    }
    v
}

impl Driver {
    /// Writes `descs` at the fixed indices `first..` (linked in order) and
    /// returns the head, `first` (not yet published). For drivers that
    /// give each request slot its own descriptors.
    pub fn chain_at(&mut self, first: u16, descs: &[D]) -> u16 {
        for (k, d) in descs.iter().enumerate() {
            let i = first + k as u16;
            let last = k + 1 == descs.len();
            let flags = d.flags | if last { 0 } else { F_NEXT };
            put_desc(&self.mem, self.desc, i, d.addr, d.len, flags, i + 1);
        }
        first
    }
}

/// xorshift64*: a small deterministic generator for the randomized tests.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// virtio-iommu helpers shared by the IOMMU tests: request bodies
/// ([`B`](iommu::B) and one constructor per request type) and event
/// records ([`Record`](iommu::Record), [`decode`](iommu::decode)).
pub mod iommu {
    use devices::virtio::iommu::request::kind;

    /// A request body: little-endian fields at offsets.
    pub struct B(pub Vec<u8>);

    impl B {
        /// `len` zero bytes with the request type `kind` in byte 0.
        pub fn new(kind: u8, len: usize) -> Self {
            let mut v = vec![0u8; len];
            v[0] = kind;
            B(v)
        }

        /// `v` at byte `at`.
        pub fn u16(mut self, at: usize, v: u16) -> Self {
            self.0[at..at + 2].copy_from_slice(&v.to_le_bytes());
            self
        }

        /// `v` at byte `at`.
        pub fn u32(mut self, at: usize, v: u32) -> Self {
            self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
            self
        }

        /// `v` at byte `at`.
        pub fn u64(mut self, at: usize, v: u64) -> Self {
            self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
            self
        }

        /// `v` at byte `at`.
        pub fn byte(mut self, at: usize, v: u8) -> Self {
            self.0[at] = v;
            self
        }
    }

    /// ATTACH of endpoint `ep` to `domain`.
    pub fn attach(domain: u32, ep: u32) -> B {
        B::new(kind::ATTACH, 20).u32(4, domain).u32(8, ep)
    }

    /// DETACH of endpoint `ep` from `domain`.
    pub fn detach(domain: u32, ep: u32) -> B {
        B::new(kind::DETACH, 20).u32(4, domain).u32(8, ep)
    }

    /// MAP of `[start, end]` (inclusive) to `phys`.
    pub fn map(domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> B {
        B::new(kind::MAP, 36)
            .u32(4, domain)
            .u64(8, start)
            .u64(16, end)
            .u64(24, phys)
            .u32(32, flags)
    }

    /// UNMAP of `[start, end]` (inclusive).
    pub fn unmap(domain: u32, start: u64, end: u64) -> B {
        B::new(kind::UNMAP, 28)
            .u32(4, domain)
            .u64(8, start)
            .u64(16, end)
    }

    /// PROBE of endpoint `ep`.
    pub fn probe(ep: u32) -> B {
        B::new(kind::PROBE, 72).u32(4, ep)
    }

    /// ATTACH_TABLE with format 4 and a 48-bit width.
    pub fn attach_table(domain: u32, ep: u32, pgd: u64, flags: u64) -> B {
        B::new(kind::ATTACH_TABLE, 44)
            .u32(4, domain)
            .u32(8, ep)
            .u16(16, 4)
            .u64(24, pgd)
            .u64(32, flags)
            .u32(40, 48)
    }

    /// PAGE_RESP for `group` of endpoint `ep` in `domain`.
    pub fn page_resp(domain: u32, ep: u32, group: u32, code: u16) -> B {
        B::new(kind::PAGE_RESP, 28)
            .u32(4, domain)
            .u32(8, ep)
            .u32(20, group)
            .u16(24, code)
    }

    /// A decoded event record.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Record {
        pub reason: u8,
        pub group: u16,
        pub flags: u32,
        pub endpoint: u32,
        pub pasid: u32,
        pub address: u64,
    }

    /// The record in `b` (at least 24 bytes); checks its reserved byte.
    pub fn decode(b: &[u8]) -> Record {
        assert_eq!(b[1], 0, "reserved byte of a record");
        Record {
            reason: b[0],
            group: u16::from_le_bytes([b[2], b[3]]),
            flags: u32::from_le_bytes(b[4..8].try_into().unwrap()),
            endpoint: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            pasid: u32::from_le_bytes(b[12..16].try_into().unwrap()),
            address: u64::from_le_bytes(b[16..24].try_into().unwrap()),
        }
    }
}
