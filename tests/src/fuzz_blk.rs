// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The body of the `virtio_blk` fuzz target (fuzz/fuzz_targets/virtio_blk.rs),
//! also replayed over the committed corpus by `tests/tests/fuzz_corpus.rs`.
//!
//! [`run`] decodes the fuzz input into the guest memory a virtio-blk driver
//! would have prepared: the negotiated features (EVENT_IDX, FLUSH, DISCARD,
//! WRITE_ZEROES), a read-only or writable disk, lazily populated RAM or
//! not, a queue size and a starting ring index (so the 16-bit indices
//! wrap), the descriptor table (any address: RAM, across the boundary of
//! two adjacent regions, across a 2M block, the MMIO hole, past the end of
//! RAM, anywhere in the 64-bit space; any length; any flags including
//! INDIRECT and unknown bits; any next index), the available ring (head
//! indices in and out of range; an index up to a whole ring ahead or more),
//! used_event and the NO_INTERRUPT flag, and blobs of guest memory: raw
//! bytes, request headers, discard ranges, indirect tables. It then runs
//! `BlockQueue::process()` on this thread, as the worker does.
//!
//! Checked after every case (a panic is a finding, in the device or here):
//!
//! * nothing stays pinned or referenced (`pins_outstanding`,
//!   `gets_outstanding` are 0);
//! * counters: `requests` equals the chains taken; every request is
//!   counted exactly once as a success or a failure; the ring class is
//!   counted (once) exactly when the device set DEVICE_NEEDS_RESET, and
//!   then no chain was taken if the available index was already too far
//!   ahead;
//! * the used ring: one entry per chain taken whose head is inside the
//!   queue, in the order of the available ring, each with a length at most
//!   the chain's device-writable bytes (walked here independently, as the
//!   spec describes a chain), and 0 for a chain that is not well formed
//!   (loops, leaves its table, bad indirect table, a readable descriptor
//!   after a writable one, no writable byte);
//! * guest memory: the device wrote nothing outside the chains'
//!   device-writable descriptors and the used ring; a status byte it wrote
//!   is OK, IOERR or UNSUPP;
//! * the backing file: unchanged on a read-only disk, and whenever no
//!   write, discard or write-zeroes succeeded;
//! * interrupts: without EVENT_IDX and NO_INTERRUPT, one per used entry.
//!
//! When a chain's writable descriptors overlap the rings, the descriptor
//! table or an indirect table, the device may rewrite its own queue while
//! it works; then only the checks that hold regardless apply (pins,
//! counters, no panic, a read-only file unchanged).
//!
//! Input format (missing bytes read as zero): a header (features, queue
//! size, start index, number of heads, used_event), the descriptor table,
//! the available ring entries, then blobs until the input ends.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use devices::virtio::blk::{features as blk_features, Block, BlockConfig, DiskOptions, ErrorClass};
use devices::virtio::{
    Activation, Interrupt, VirtioDevice, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1,
};
use guest_mm::gup::{GuestMemory, Gup, RegionOptions};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::fuzz_input::Input;

/// Region 0: rings and buffers.
const R0: (u64, u64) = (0, 0x40000);
/// Region 1, adjacent to region 0 (a buffer may run from one into the other).
const R1: (u64, u64) = (0x40000, 0x8000);
/// Region 2, across a 2M block boundary, after the MMIO hole.
const R2: (u64, u64) = (0x1f_8000, 0x1_0000);
/// The hole between regions 1 and 2.
const HOLE: u64 = R1.0 + R1.1;
/// The end of RAM.
const RAM_END: u64 = R2.0 + R2.1;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// Where blobs and most buffers go.
const BUF: u64 = 0x4000;
const BUF_LEN: u64 = R0.1 - BUF;
/// Disk size in sectors.
const SECTORS: u64 = 256;
/// Most blobs decoded.
const MAX_BLOBS: usize = 48;
/// Most available ring entries decoded.
const MAX_HEADS: usize = 64;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// What a case exercised, for the corpus replay's histogram.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Named events (request kinds that succeeded, error classes hit,
    /// "ring broken", "self-modifying", ...).
    pub tags: BTreeSet<String>,
    /// The case as decoded and what the device did.
    pub log: String,
}

/// Counts each tag over `outcomes`.
pub fn histogram(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        for t in &o.tags {
            *m.entry(t.clone()).or_default() += 1;
        }
    }
    m
}

static FILES: AtomicU64 = AtomicU64::new(0);

/// A backing file removed when its thread ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

thread_local! {
    /// This thread's backing file (rewritten for every case).
    static FILE: RefCell<Option<TempFile>> = const { RefCell::new(None) };
}

/// The disk contents every case starts from (no zero bytes, so a zeroed
/// sector is visible); built once.
pub fn disk_image() -> &'static [u8] {
    static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        (0..SECTORS * 512)
            .map(|i| ((i * 7 + i / 512) % 251) as u8 + 1)
            .collect()
    })
}

/// This thread's backing file (removed when the thread ends).
pub fn backing_file() -> PathBuf {
    FILE.with(|f| {
        f.borrow_mut()
            .get_or_insert_with(|| {
                let dir = if std::path::Path::new("/dev/shm").is_dir() {
                    PathBuf::from("/dev/shm")
                } else {
                    std::env::temp_dir()
                };
                TempFile(dir.join(format!(
                    "guest-mm-fuzz-blk-{}-{}.img",
                    std::process::id(),
                    FILES.fetch_add(1, Ordering::Relaxed)
                )))
            })
            .0
            .clone()
    })
}

/// One descriptor as decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// NEXT, WRITE, INDIRECT, ...
    pub flags: u16,
    /// Next descriptor index.
    pub next: u16,
}

impl Desc {
    /// The 16 bytes of the descriptor table entry.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    fn decode(b: &[u8; 16]) -> Self {
        Desc {
            addr: u64::from_le_bytes(b[0..8].try_into().unwrap_or_default()),
            len: u32::from_le_bytes(b[8..12].try_into().unwrap_or_default()),
            flags: u16::from_le_bytes(b[12..14].try_into().unwrap_or_default()),
            next: u16::from_le_bytes(b[14..16].try_into().unwrap_or_default()),
        }
    }

    /// The compact encoding the fuzzer mutates.
    fn read(inp: &mut Input) -> Self {
        let sel = inp.u8();
        let addr = match sel % 8 {
            0..=4 => BUF + u64::from(inp.u16()),
            // Around the end of region 0 / start of region 1 / the hole.
            5 => R1.0 - 0x1000 + u64::from(inp.u16() % 0xa000),
            // Region 2 (across 2M) and past the end of RAM.
            6 => R2.0 + u64::from(inp.u16()) + u64::from(sel >> 7) * 0x8000,
            _ => match (sel >> 3) % 5 {
                0 => inp.u64(),
                1 => HOLE + u64::from(inp.u16()),
                2 => u64::MAX - u64::from(inp.u16()),
                3 => RAM_END - 0x1000 + u64::from(inp.u16()),
                _ => u64::from(inp.u32()) << 12,
            },
        };
        const LENS: [u32; 14] = [
            0, 1, 65536, 15, 16, 17, 20, 21, 511, 512, 513, 528, 1024, 4096,
        ];
        let l = inp.u8();
        let len = match l % 16 {
            14 => u32::from(inp.u16()),
            15 => inp.u32(),
            i => LENS[usize::from(i)],
        };
        let f = inp.u8();
        let mut flags = u16::from(f & 7);
        if f & 0x80 != 0 {
            flags |= u16::from(f) << 8;
        }
        let next = u16::from(inp.u8());
        Desc {
            addr,
            len,
            flags,
            next,
        }
    }
}

/// How a chain looks when walked by the rules of virtio 1.2 section 2.7.5
/// (as virtio-queue implements them: at most the table's size of
/// descriptors, one level of indirection, a table of whole descriptors).
#[derive(Debug, Default)]
struct Walk {
    descs: Vec<Desc>,
    /// Ended with a descriptor without NEXT.
    complete: bool,
    /// Indirect tables read (address, bytes).
    tables: Vec<(u64, u64)>,
}

impl Walk {
    fn of(mem: &GuestMemory, size: u16, head: u16) -> Walk {
        let mut w = Walk::default();
        let (mut table, mut tsize, mut next, mut ttl) = (DESC, size, head, size);
        let mut indirect = false;
        let mut bytes = 0u32;
        loop {
            if ttl == 0 || next >= tsize {
                return w;
            }
            let Some(at) = table.checked_add(u64::from(next) * 16) else {
                return w;
            };
            let mut raw = [0u8; 16];
            if mem.read_slice(&mut raw, GuestAddress(at)).is_err() {
                return w;
            }
            let d = Desc::decode(&raw);
            if d.flags & F_INDIRECT != 0 {
                if indirect || d.len % 16 != 0 || d.len / 16 > u32::from(u16::MAX) {
                    return w;
                }
                w.tables.push((d.addr, u64::from(d.len)));
                table = d.addr;
                tsize = (d.len / 16) as u16;
                next = 0;
                ttl = tsize;
                indirect = true;
                continue;
            }
            let Some(b) = bytes.checked_add(d.len) else {
                return w;
            };
            bytes = b;
            w.descs.push(d);
            if d.flags & F_NEXT == 0 {
                w.complete = true;
                return w;
            }
            next = d.next;
            ttl -= 1;
        }
    }

    /// Device-writable ranges (non-empty).
    fn writable(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.descs
            .iter()
            .filter(|d| d.flags & F_WRITE != 0 && d.len != 0)
            .map(|d| (d.addr, u64::from(d.len)))
    }

    /// Whether the device takes the chain apart at all: complete, no
    /// readable descriptor after a writable one, no buffer running past
    /// 2^64, a writable byte.
    fn well_formed(&self) -> bool {
        let mut seen_writable = false;
        for d in self.descs.iter().filter(|d| d.len != 0) {
            if d.addr.checked_add(u64::from(d.len)).is_none() {
                return false;
            }
            if d.flags & F_WRITE != 0 {
                seen_writable = true;
            } else if seen_writable {
                return false;
            }
        }
        self.complete && seen_writable
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    let a_end = a.0.saturating_add(a.1);
    let b_end = b.0.saturating_add(b.1);
    a.0 < b_end && b.0 < a_end
}

/// Decode `data` into a case, run it, check every invariant. Panics, with
/// the case's log, on any violation (or if the device panics).
pub fn run(data: &[u8]) -> Outcome {
    let mut inp = Input::new(data);
    let mut log = String::new();
    let mut tags = BTreeSet::new();

    // The header.
    let cfg = inp.u8();
    let read_only = cfg & 1 != 0;
    let lazy = cfg & 0x40 != 0;
    let no_interrupt = cfg & 0x80 != 0;
    let pool = cfg & 0x20 != 0;
    let size: u16 = 1 << (inp.u8() % 9);
    let start = inp.u16();
    let n_heads = usize::from(inp.u8()) % (MAX_HEADS + 1);
    let avail_extra = inp.u8();
    let used_event = inp.u16();

    let gup = Arc::new(
        Gup::anonymous(
            &[
                (R0.0, R0.1 as usize),
                (R1.0, R1.1 as usize),
                (R2.0, R2.1 as usize),
            ],
            RegionOptions {
                lazy,
                ..Default::default()
            },
        )
        .expect("engine"),
    );
    let mem = gup.memory_map().memory().clone();
    let path = backing_file();
    let image = disk_image();
    std::fs::write(&path, image).expect("backing file");
    let block = Block::new(&BlockConfig {
        disk: DiskOptions {
            path: path.clone(),
            read_only,
            direct: false,
        },
        id: "fuzz".into(),
        index: 0,
        poll: Duration::ZERO,
        endpoint: None,
        page_request_timeout: devices::virtio::blk::worker::PAGE_REQUEST_TIMEOUT,
    })
    .expect("block device");
    let mut features = (1u64 << F_VERSION_1) | (1 << F_RING_INDIRECT_DESC);
    for (bit, f) in [
        (1, F_RING_EVENT_IDX),
        (2, blk_features::FLUSH),
        (3, blk_features::DISCARD),
        (4, blk_features::WRITE_ZEROES),
    ] {
        if cfg & (1 << bit) != 0 {
            features |= 1 << f;
        }
    }
    // Only what the device offers (the transport refuses the rest).
    features &= block.features();
    let event_idx = features & (1 << F_RING_EVENT_IDX) != 0;

    // The descriptor table.
    let n_desc = usize::from(inp.u8()).min(usize::from(size));
    for i in 0..n_desc {
        let d = Desc::read(&mut inp);
        let _ = mem.write_slice(&d.encode(), GuestAddress(DESC + 16 * i as u64));
    }
    // The available ring.
    let mut heads = Vec::with_capacity(n_heads);
    for _ in 0..n_heads {
        let b = inp.u8();
        let head = if b & 0x80 == 0 {
            u16::from(b) % size
        } else if b & 0x40 == 0 {
            size + u16::from(b & 0x3f)
        } else {
            inp.u16()
        };
        heads.push(head);
    }
    // Normally the heads; or more than a whole queue ahead of them.
    let published = n_heads as u16
        + if avail_extra & 0x80 != 0 {
            size + 1 + u16::from(avail_extra & 0x7f)
        } else {
            0
        };
    for i in 0..usize::from(published) {
        let head = heads.get(i).copied().unwrap_or(0);
        let slot = start.wrapping_add(i as u16) % size;
        let _ = mem.write_obj(head.to_le(), GuestAddress(AVAIL + 4 + 2 * u64::from(slot)));
    }
    let avail_idx = start.wrapping_add(published);
    let _ = mem.write_obj(avail_idx.to_le(), GuestAddress(AVAIL + 2));
    let _ = mem.write_obj(u16::from(no_interrupt).to_le(), GuestAddress(AVAIL));
    let _ = mem.write_obj(
        used_event.to_le(),
        GuestAddress(AVAIL + 4 + 2 * u64::from(size)),
    );
    let _ = mem.write_obj(start.to_le(), GuestAddress(USED + 2));

    // Blobs.
    let mut blobs = 0;
    while !inp.is_empty() && blobs < MAX_BLOBS {
        blobs += 1;
        let kind = inp.u8();
        let at = BUF + u64::from(inp.u16()) % BUF_LEN;
        let bytes = match kind % 5 {
            0 => {
                let n = usize::from(inp.u8());
                inp.bytes(n)
            }
            1 => {
                const TYPES: [u32; 7] = [0, 1, 4, 8, 11, 13, 2];
                let t = inp.u8();
                let kind = if usize::from(t) < TYPES.len() * 32 {
                    TYPES[usize::from(t) % TYPES.len()]
                } else {
                    inp.u32()
                };
                let s = inp.u8();
                let sector = match s {
                    0xff => inp.u64(),
                    0xfe => u64::MAX - u64::from(inp.u8()),
                    s => u64::from(s),
                };
                let mut h = vec![0u8; 16];
                h[0..4].copy_from_slice(&kind.to_le_bytes());
                h[8..16].copy_from_slice(&sector.to_le_bytes());
                h
            }
            2 => {
                let n = inp.u8() % 5;
                let mut v = Vec::new();
                for _ in 0..n {
                    let s = inp.u8();
                    let sector = if s == 0xff { inp.u64() } else { u64::from(s) };
                    let c = inp.u8();
                    let count = if c == 0xff {
                        inp.u32()
                    } else {
                        u32::from(c % 16)
                    };
                    let f = inp.u8();
                    let flags = if f >= 0xf0 {
                        inp.u32()
                    } else {
                        u32::from(f % 2)
                    };
                    v.extend_from_slice(&sector.to_le_bytes());
                    v.extend_from_slice(&count.to_le_bytes());
                    v.extend_from_slice(&flags.to_le_bytes());
                }
                v
            }
            3 => {
                let n = inp.u8() % 24;
                (0..n).flat_map(|_| Desc::read(&mut inp).encode()).collect()
            }
            _ => {
                let n = usize::from(inp.u8()) * 16;
                vec![inp.u8(); n]
            }
        };
        let end = (at + bytes.len() as u64).min(R0.1);
        let _ = mem.write_slice(&bytes[..(end - at) as usize], GuestAddress(at));
    }

    // The reference: what each taken chain is.
    let well_ahead = published > size;
    let walks: Vec<(u16, Walk)> = if well_ahead {
        Vec::new()
    } else {
        heads
            .iter()
            .take(usize::from(published))
            .map(|&h| (h, Walk::of(&mem, size, h)))
            .collect()
    };
    let mut meta = vec![
        (DESC, 16 * u64::from(size)),
        (AVAIL, 6 + 2 * u64::from(size)),
        (USED, 6 + 8 * u64::from(size)),
    ];
    for (_, w) in &walks {
        meta.extend(w.tables.iter().copied());
    }
    let self_modifying = walks
        .iter()
        .flat_map(|(_, w)| w.writable())
        .any(|wr| meta.iter().any(|&m| overlaps(wr, m)));
    let _ = writeln!(
        log,
        "size {size} start {start} published {published} heads {heads:?} features {features:#x} ro {read_only} lazy {lazy} no_interrupt {no_interrupt} used_event {used_event} self-modifying {self_modifying}"
    );
    for (h, w) in &walks {
        let _ = writeln!(
            log,
            "  head {h}: complete {} tables {:x?} descs {:x?}",
            w.complete, w.tables, w.descs
        );
    }
    let before: Vec<(u64, Vec<u8>)> = [R0, R1, R2]
        .iter()
        .map(|&(a, l)| {
            let mut v = vec![0u8; l as usize];
            mem.read_slice(&mut v, GuestAddress(a)).expect("snapshot");
            (a, v)
        })
        .collect();

    // The device.
    let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let interrupt = Arc::new(Interrupt::new(irq));
    let mut q = Queue::new(size).expect("queue");
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_next_avail(start);
    q.set_next_used(start);
    q.set_ready(true);
    assert!(q.is_valid(&mem), "the rings are valid");
    let mut bq = block
        .queue_for(Activation {
            features,
            queues: vec![q],
            notifiers: Vec::new(),
            interrupt: Arc::clone(&interrupt),
            mem: mem.clone(),
            gup: Arc::clone(&gup),
        })
        .expect("queue_for");
    if pool {
        bq.attach_pool(1).expect("I/O thread");
    }
    let taken = bq.process();
    // Transfers handed to the I/O thread complete later, in any order.
    while bq.in_flight() > 0 {
        bq.complete_transfers(true);
    }
    let c = block.stats().snapshot();
    let g = gup.stats();
    let _ = writeln!(log, "taken {taken}: {}", c.summary());
    macro_rules! fail {
        ($($t:tt)*) => {
            panic!("virtio_blk fuzz: {}\n{}", format!($($t)*), log)
        };
    }

    // Pins.
    if g.pins_outstanding != 0 || g.gets_outstanding != 0 {
        fail!("references left: {g:?}");
    }
    // Counters.
    let ring = c.error(ErrorClass::Ring);
    let successes = c.reads + c.writes + c.flushes + c.get_ids + c.discards;
    if c.requests != taken as u64 {
        fail!("requests != chains taken");
    }
    if successes + c.errors_total() - ring != c.requests {
        fail!("requests != successes + failures");
    }
    if ring > 1 || (ring == 1) != (interrupt.needs_reset() != 0) || (ring == 1) != bq.is_broken() {
        fail!("ring error, DEVICE_NEEDS_RESET and the broken queue disagree");
    }
    for class in ErrorClass::ALL {
        if c.error(class) != 0 {
            tags.insert(format!("error {}", class.name()));
        }
    }
    for (n, what) in [
        (c.reads, "read"),
        (c.writes, "write"),
        (c.flushes, "flush"),
        (c.get_ids, "get_id"),
        (c.discards, "discard"),
    ] {
        if n != 0 {
            tags.insert(format!("ok {what}"));
        }
    }
    if self_modifying {
        tags.insert("self-modifying".into());
    }
    if event_idx {
        tags.insert("event_idx".into());
    }
    if pool {
        tags.insert("pool".into());
    }
    if read_only {
        tags.insert("read-only".into());
    }
    if walks.iter().any(|(_, w)| !w.tables.is_empty()) {
        tags.insert("indirect".into());
    }
    if start.wrapping_add(published) < start {
        tags.insert("index wraps".into());
    }

    // The file.
    let after = std::fs::read(&path).expect("backing file");
    if (read_only || c.writes + c.discards == 0) && after != image {
        fail!("the backing file changed without a successful write or discard");
    }
    // The device never grows the file.
    if after.len() != image.len() {
        fail!("the backing file changed size");
    }

    if self_modifying {
        return Outcome { tags, log };
    }
    if well_ahead {
        if ring != 1 || taken != 0 {
            fail!(
                "an available index more than a queue ahead must break the ring before any chain"
            );
        }
        tags.insert("ring broken".into());
    } else if ring != 0 || taken != walks.len() {
        fail!("a sane available index: every chain taken, no ring error");
    }

    // The used ring.
    let mut used = Vec::new();
    let used_idx: u16 = u16::from_le(mem.read_obj(GuestAddress(USED + 2)).expect("used idx"));
    let mut i = start;
    while i != used_idx {
        let at = USED + 4 + 8 * u64::from(i % size);
        let id: u32 = u32::from_le(mem.read_obj(GuestAddress(at)).expect("used id"));
        let len: u32 = u32::from_le(mem.read_obj(GuestAddress(at + 4)).expect("used len"));
        used.push((id, len));
        i = i.wrapping_add(1);
        if used.len() > walks.len() {
            fail!("more used entries than chains");
        }
    }
    let _ = writeln!(log, "used {used:?}");
    let mut expected: Vec<u32> = walks
        .iter()
        .filter(|(h, _)| *h < size)
        .map(|(h, _)| u32::from(*h))
        .collect();
    let mut ids: Vec<u32> = used.iter().map(|u| u.0).collect();
    if !pool && ids != expected {
        fail!("used ids in the order of the available ring");
    }
    expected.sort_unstable();
    ids.sort_unstable();
    if ids != expected {
        fail!("one used entry per chain whose head is inside the queue");
    }
    // Chains with the same head are the same chain (nothing rewrote the
    // table), so a used entry's chain is the walk of its head.
    let walk_of = |id: u32| {
        walks
            .iter()
            .find(|(h, _)| u32::from(*h) == id)
            .map(|(_, w)| w)
            .expect("a walk for every used id")
    };
    let mut writable = vec![(USED, 6 + 8 * u64::from(size))];
    for (id, len) in &used {
        let (h, w) = (id, walk_of(*id));
        let max: u64 = w.writable().map(|s| s.1).sum();
        if u64::from(*len) > max {
            fail!("head {h}: used length {len} > {max} writable bytes");
        }
        if !w.well_formed() && *len != 0 {
            fail!("head {h}: a malformed chain completed with length {len}");
        }
        writable.extend(w.writable());
    }
    // Status bytes written: the last writable byte of each chain that
    // reported one, if no other chain's buffer covers it.
    for (id, len) in &used {
        let w = walk_of(*id);
        if *len == 0 {
            continue;
        }
        let Some(last) = w.writable().last() else {
            continue;
        };
        let status = last.0 + last.1 - 1;
        let shared = walks
            .iter()
            .flat_map(|(_, o)| o.writable())
            .filter(|&s| overlaps(s, (status, 1)))
            .count()
            > 1;
        if !shared {
            if let Ok(b) = mem.read_obj::<u8>(GuestAddress(status)) {
                if b > 2 {
                    fail!("status byte {b} at {status:#x}");
                }
            }
        }
    }
    // Nothing written outside the writable buffers and the used ring.
    for (base, old) in &before {
        let mut now = vec![0u8; old.len()];
        mem.read_slice(&mut now, GuestAddress(*base))
            .expect("snapshot");
        // Page by page with memcmp; bytes only where a page changed.
        for (p, (a, b)) in old.chunks(4096).zip(now.chunks(4096)).enumerate() {
            if a == b {
                continue;
            }
            for (k, (x, y)) in a.iter().zip(b).enumerate() {
                let gpa = base + (p * 4096 + k) as u64;
                if x != y && !writable.iter().any(|&s| overlaps(s, (gpa, 1))) {
                    fail!("the device wrote {gpa:#x} outside every writable buffer");
                }
            }
        }
    }
    // Interrupts.
    if !event_idx && !no_interrupt && c.interrupts != used.len() as u64 {
        fail!("one interrupt per used entry");
    }
    if !used.is_empty() {
        tags.insert("used".into());
    }
    Outcome { tags, log }
}

/// Builds inputs in the format [`run`] decodes: the hand-made seeds of
/// the corpus ([`seeds`]).
#[derive(Clone, Debug, Default)]
pub struct Seed {
    cfg: u8,
    size_log2: u8,
    start: u16,
    avail_extra: u8,
    used_event: u16,
    descs: Vec<Vec<u8>>,
    heads: Vec<Vec<u8>>,
    blobs: Vec<Vec<u8>>,
}

/// Config bits of a seed.
pub mod cfg {
    /// A read-only disk.
    pub const RO: u8 = 1;
    /// EVENT_IDX negotiated.
    pub const EVENT_IDX: u8 = 2;
    /// FLUSH negotiated.
    pub const FLUSH: u8 = 4;
    /// DISCARD negotiated.
    pub const DISCARD: u8 = 8;
    /// WRITE_ZEROES negotiated.
    pub const WRITE_ZEROES: u8 = 16;
    /// An I/O thread for transfers of 64 KiB and more.
    pub const POOL: u8 = 0x20;
    /// Lazily populated RAM.
    pub const LAZY: u8 = 0x40;
    /// VRING_AVAIL_F_NO_INTERRUPT.
    pub const NO_INTERRUPT: u8 = 0x80;
    /// Every optional request type.
    pub const ALL: u8 = FLUSH | DISCARD | WRITE_ZEROES;
}

/// Descriptor flag NEXT (for seeds).
pub const NEXT: u8 = 1;
/// Descriptor flag WRITE (for seeds).
pub const WRITE: u8 = 2;
/// Descriptor flag INDIRECT (for seeds).
pub const INDIRECT: u8 = 4;

/// Where a seed descriptor points.
#[derive(Clone, Copy, Debug)]
pub enum At {
    /// The buffer area plus an offset.
    Buf(u16),
    /// Region 1's start minus 0x1000 plus an offset.
    Boundary(u16),
    /// Region 2 plus an offset.
    R2(u16),
    /// The MMIO hole plus an offset.
    Hole(u16),
    /// The end of RAM minus 0x1000 plus an offset.
    End(u16),
    /// Any address.
    Raw(u64),
}

fn enc_desc(at: At, len: u32, flags: u8, next: u8) -> Vec<u8> {
    let mut v = Vec::new();
    match at {
        At::Buf(o) => {
            v.push(0);
            v.extend_from_slice(&o.to_le_bytes());
        }
        At::Boundary(o) => {
            v.push(5);
            v.extend_from_slice(&o.to_le_bytes());
        }
        At::R2(o) => {
            v.push(6);
            v.extend_from_slice(&o.to_le_bytes());
        }
        At::Hole(o) => {
            v.push(7 | 1 << 3);
            v.extend_from_slice(&o.to_le_bytes());
        }
        At::End(o) => {
            v.push(7 | 3 << 3);
            v.extend_from_slice(&o.to_le_bytes());
        }
        At::Raw(a) => {
            v.push(7);
            v.extend_from_slice(&a.to_le_bytes());
        }
    }
    const LENS: [u32; 14] = [
        0, 1, 65536, 15, 16, 17, 20, 21, 511, 512, 513, 528, 1024, 4096,
    ];
    if let Some(i) = LENS.iter().position(|&l| l == len) {
        v.push(i as u8);
    } else if let Ok(l) = u16::try_from(len) {
        v.push(14);
        v.extend_from_slice(&l.to_le_bytes());
    } else {
        v.push(15);
        v.extend_from_slice(&len.to_le_bytes());
    }
    v.push(flags);
    v.push(next);
    v
}

impl Seed {
    /// A queue of `1 << size_log2` entries with `cfg` bits.
    pub fn new(cfg: u8, size_log2: u8) -> Self {
        Seed {
            cfg,
            size_log2,
            ..Default::default()
        }
    }

    /// The next descriptor of the table.
    pub fn desc(mut self, at: At, len: u32, flags: u8, next: u8) -> Self {
        self.descs.push(enc_desc(at, len, flags, next));
        self
    }

    /// An available ring entry (in range, reduced modulo the size).
    pub fn head(mut self, h: u8) -> Self {
        self.heads.push(vec![h & 0x7f]);
        self
    }

    /// An available ring entry of any value.
    pub fn raw_head(mut self, h: u16) -> Self {
        let mut v = vec![0xc0];
        v.extend_from_slice(&h.to_le_bytes());
        self.heads.push(v);
        self
    }

    /// The starting ring index.
    pub fn start(mut self, start: u16) -> Self {
        self.start = start;
        self
    }

    /// Publish `size + 1 + extra` more entries than the heads (a ring
    /// index more than a queue ahead).
    pub fn too_far(mut self, extra: u8) -> Self {
        self.avail_extra = 0x80 | (extra & 0x7f);
        self
    }

    /// used_event.
    pub fn used_event(mut self, v: u16) -> Self {
        self.used_event = v;
        self
    }

    /// A request header at `Buf(off)`: type index into IN, OUT, FLUSH,
    /// GET_ID, DISCARD, WRITE_ZEROES, 2 (unknown), and a sector below 254 (0xfe, 0xff: see `raw_header`).
    pub fn header(mut self, off: u16, kind: u8, sector: u8) -> Self {
        let mut v = vec![1];
        v.extend_from_slice(&off.to_le_bytes());
        v.push(kind);
        v.push(sector);
        self.blobs.push(v);
        self
    }

    /// A request header with any type and sector.
    pub fn raw_header(mut self, off: u16, kind: u32, sector: u64) -> Self {
        let mut v = vec![1];
        v.extend_from_slice(&off.to_le_bytes());
        v.push(0xff);
        v.extend_from_slice(&kind.to_le_bytes());
        v.push(0xff);
        v.extend_from_slice(&sector.to_le_bytes());
        self.blobs.push(v);
        self
    }

    /// Discard ranges (sector < 255, count < 16, flags 0 or 1).
    pub fn ranges(mut self, off: u16, ranges: &[(u8, u8, u8)]) -> Self {
        let mut v = vec![2];
        v.extend_from_slice(&off.to_le_bytes());
        v.push(ranges.len() as u8);
        for &(s, c, f) in ranges {
            v.extend_from_slice(&[s, c, f]);
        }
        self.blobs.push(v);
        self
    }

    /// An indirect table at `Buf(off)`.
    pub fn table(mut self, off: u16, descs: &[(At, u32, u8, u8)]) -> Self {
        let mut v = vec![3];
        v.extend_from_slice(&off.to_le_bytes());
        v.push(descs.len() as u8);
        for &(at, len, flags, next) in descs {
            v.extend(enc_desc(at, len, flags, next));
        }
        self.blobs.push(v);
        self
    }

    /// Raw bytes at `Buf(off)`.
    pub fn bytes(mut self, off: u16, bytes: &[u8]) -> Self {
        let mut v = vec![0];
        v.extend_from_slice(&off.to_le_bytes());
        v.push(bytes.len() as u8);
        v.extend_from_slice(bytes);
        self.blobs.push(v);
        self
    }

    /// The input.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.cfg, self.size_log2];
        v.extend_from_slice(&self.start.to_le_bytes());
        v.push(self.heads.len() as u8);
        v.push(self.avail_extra);
        v.extend_from_slice(&self.used_event.to_le_bytes());
        v.push(self.descs.len() as u8);
        for d in &self.descs {
            v.extend_from_slice(d);
        }
        for h in &self.heads {
            v.extend_from_slice(h);
        }
        for b in &self.blobs {
            v.extend_from_slice(b);
        }
        v
    }
}

/// A three-descriptor request: header at `Buf(0)`, data, status at
/// `Buf(0x100)`; `write`: data device-readable.
fn simple(cfg: u8, kind: u8, sector: u8, data: At, len: u32, write: bool) -> Seed {
    Seed::new(cfg, 3)
        .desc(At::Buf(0), 16, NEXT, 1)
        .desc(data, len, NEXT | if write { 0 } else { WRITE }, 2)
        .desc(At::Buf(0x100), 1, WRITE, 0)
        .head(0)
        .header(0, kind, sector)
}

/// The hand-made seeds: a name, the input, and a tag its outcome must
/// carry (see [`Outcome::tags`]).
pub fn seeds() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    const IN: u8 = 0;
    const OUT: u8 = 1;
    const FLUSH: u8 = 2;
    const GET_ID: u8 = 3;
    const DISCARD: u8 = 4;
    const WZ: u8 = 5;
    const UNKNOWN: u8 = 6;
    let all = cfg::ALL;
    let v = |s: Seed| s.encode();
    vec![
        (
            "read",
            v(simple(all, IN, 3, At::Buf(0x1000), 1024, false)),
            "ok read",
        ),
        (
            "write",
            v(simple(all, OUT, 5, At::Buf(0x1000), 512, true)),
            "ok write",
        ),
        (
            "pool_read_write",
            v(Seed::new(all | cfg::POOL, 3)
                .desc(At::Buf(0), 16, NEXT, 1)
                .desc(At::Buf(0x1000), 65536, WRITE | NEXT, 2)
                .desc(At::Buf(0x100), 1, WRITE, 0)
                .desc(At::Buf(0x40), 16, NEXT, 4)
                .desc(At::Raw(0x30000), 65536, NEXT, 5)
                .desc(At::Buf(0x101), 1, WRITE, 0)
                .desc(At::Buf(0x80), 16, NEXT, 7)
                .desc(At::Buf(0x102), 1, WRITE, 0)
                .head(0)
                .head(3)
                .head(6)
                .header(0, IN, 100)
                .header(0x40, OUT, 0)
                .header(0x80, FLUSH, 0)),
            "pool",
        ),
        (
            "read_split_header",
            v(Seed::new(all, 2)
                .desc(At::Buf(0), 5, NEXT, 1)
                .desc(At::Buf(0x205), 11, NEXT, 2)
                .desc(At::Buf(0x1000), 513, WRITE, 0)
                .head(0)
                .header(0, IN, 1)
                .bytes(0x205, &[0; 11])),
            "ok read",
        ),
        (
            "write_header_in_data",
            v(Seed::new(all, 1)
                .desc(At::Buf(0), 528, NEXT, 1)
                .desc(At::Buf(0x800), 1, WRITE, 0)
                .head(0)
                .header(0, OUT, 9)),
            "ok write",
        ),
        (
            "indirect_read",
            v(Seed::new(all, 0)
                .desc(At::Buf(0x2000), 48, INDIRECT, 0)
                .head(0)
                .table(
                    0x2000,
                    &[
                        (At::Buf(0), 16, NEXT, 1),
                        (At::Boundary(0xf00), 512, WRITE | NEXT, 2),
                        (At::Buf(0x100), 1, WRITE, 0),
                    ],
                )
                .header(0, IN, 0)),
            "ok read",
        ),
        (
            "read_across_2m",
            v(simple(all, IN, 2, At::R2(0x7f00), 4096, false)),
            "ok read",
        ),
        (
            "get_id",
            v(simple(all, GET_ID, 0, At::Buf(0x1000), 20, false)),
            "ok get_id",
        ),
        (
            "get_id_short",
            v(simple(all, GET_ID, 0, At::Buf(0x1000), 7, false)),
            "ok get_id",
        ),
        (
            "flush",
            v(Seed::new(all, 1)
                .desc(At::Buf(0), 16, NEXT, 1)
                .desc(At::Buf(0x100), 1, WRITE, 0)
                .head(0)
                .header(0, FLUSH, 0)),
            "ok flush",
        ),
        (
            "discard",
            v(simple(all, DISCARD, 0, At::Buf(0x1000), 32, true)
                .ranges(0x1000, &[(1, 2, 0), (8, 1, 0)])),
            "ok discard",
        ),
        (
            "write_zeroes",
            v(simple(all, WZ, 0, At::Buf(0x1000), 16, true).ranges(0x1000, &[(60, 4, 1)])),
            "ok discard",
        ),
        (
            "unknown_type",
            v(simple(all, UNKNOWN, 0, At::Buf(0x1000), 512, false)),
            "error unsupported",
        ),
        (
            "flush_not_negotiated",
            v(simple(0, FLUSH, 0, At::Buf(0x1000), 512, false)),
            "error unsupported",
        ),
        (
            "loop",
            v(Seed::new(all, 2)
                .desc(At::Buf(0), 16, NEXT, 1)
                .desc(At::Buf(0x100), 1, WRITE | NEXT, 0)
                .head(0)
                .header(0, IN, 0)),
            "error malformed",
        ),
        (
            "next_out_of_range",
            v(Seed::new(all, 2)
                .desc(At::Buf(0), 16, NEXT, 9)
                .head(0)
                .header(0, IN, 0)),
            "error malformed",
        ),
        (
            "indirect_in_indirect",
            v(Seed::new(all, 0)
                .desc(At::Buf(0x2000), 32, INDIRECT, 0)
                .head(0)
                .table(
                    0x2000,
                    &[
                        (At::Buf(0), 16, NEXT, 1),
                        (At::Buf(0x3000), 16, INDIRECT, 0),
                    ],
                )
                .table(0x3000, &[(At::Buf(0x100), 1, WRITE, 0)])
                .header(0, FLUSH, 0)),
            "error malformed",
        ),
        (
            "indirect_bad_length",
            v(Seed::new(all, 0)
                .desc(At::Buf(0x2000), 17, INDIRECT, 0)
                .head(0)),
            "error malformed",
        ),
        (
            "readable_after_writable",
            v(Seed::new(all, 2)
                .desc(At::Buf(0), 16, NEXT, 1)
                .desc(At::Buf(0x100), 1, WRITE | NEXT, 2)
                .desc(At::Buf(0x1000), 512, 0, 0)
                .head(0)
                .header(0, OUT, 0)),
            "error malformed",
        ),
        (
            "short_header",
            v(Seed::new(all, 1)
                .desc(At::Buf(0), 8, NEXT, 1)
                .desc(At::Buf(0x100), 1, WRITE, 0)
                .head(0)
                .header(0, FLUSH, 0)),
            "error malformed",
        ),
        (
            "data_in_hole",
            v(simple(all, IN, 0, At::Hole(0x10), 512, false)),
            "error bad_address",
        ),
        (
            "data_past_ram",
            v(simple(all, OUT, 0, At::End(0x1000), 512, true)),
            "error bad_address",
        ),
        (
            "data_straddles_ram_end",
            v(simple(all, IN, 0, At::End(0xf00), 512, false)),
            "error bad_address",
        ),
        (
            "data_near_u64_max",
            v(simple(all, IN, 0, At::Raw(u64::MAX - 0x3ff), 512, false)),
            "error bad_address",
        ),
        (
            "data_wraps_past_2_64",
            v(simple(all, IN, 0, At::Raw(u64::MAX - 0xff), 512, false)),
            "error malformed",
        ),
        (
            "unaligned_length",
            v(simple(all, OUT, 0, At::Buf(0x1000), 100, true)),
            "error unaligned_length",
        ),
        (
            "beyond_capacity",
            v(simple(all, IN, 253, At::Buf(0x1000), 4096, false)),
            "error out_of_range",
        ),
        (
            "sector_overflow",
            v(Seed::new(all, 3)
                .desc(At::Buf(0), 16, NEXT, 1)
                .desc(At::Buf(0x1000), 512, WRITE | NEXT, 2)
                .desc(At::Buf(0x100), 1, WRITE, 0)
                .head(0)
                .raw_header(0, 0, u64::MAX)),
            "error out_of_range",
        ),
        (
            "write_read_only",
            v(simple(cfg::RO | all, OUT, 0, At::Buf(0x1000), 512, true)),
            "error read_only",
        ),
        (
            "discard_read_only",
            v(simple(cfg::RO | all, DISCARD, 0, At::Buf(0x1000), 16, true)
                .ranges(0x1000, &[(1, 1, 0)])),
            "read-only",
        ),
        (
            "no_status",
            v(Seed::new(all, 1)
                .desc(At::Buf(0), 16, NEXT, 1)
                .desc(At::Buf(0x1000), 512, 0, 0)
                .head(0)
                .header(0, OUT, 0)),
            "error no_status",
        ),
        (
            "status_in_hole",
            v(Seed::new(all, 1)
                .desc(At::Buf(0), 16, NEXT, 1)
                .desc(At::Hole(0), 1, WRITE, 0)
                .head(0)
                .header(0, FLUSH, 0)),
            "error bad_address",
        ),
        (
            "avail_too_far_ahead",
            v(simple(all, IN, 0, At::Buf(0x1000), 512, false).too_far(3)),
            "ring broken",
        ),
        (
            "head_out_of_range",
            v(simple(all, IN, 0, At::Buf(0x1000), 512, false).raw_head(300)),
            "error malformed",
        ),
        (
            "wrap_and_event_idx",
            v(Seed::new(all | cfg::EVENT_IDX, 2)
                .start(0xfffe)
                .used_event(0xffff)
                .desc(At::Buf(0), 16, NEXT, 1)
                .desc(At::Buf(0x1000), 512, WRITE | NEXT, 2)
                .desc(At::Buf(0x100), 1, WRITE, 0)
                .desc(At::Buf(0x40), 16, NEXT, 0)
                .head(0)
                .head(3)
                .head(0)
                .header(0, IN, 4)
                .header(0x40, FLUSH, 0)),
            "index wraps",
        ),
        (
            "lazy_no_interrupt",
            v(simple(
                all | cfg::LAZY | cfg::NO_INTERRUPT,
                OUT,
                7,
                At::Boundary(0xe00),
                1024,
                true,
            )),
            "ok write",
        ),
        (
            "many_chains",
            v(Seed::new(all, 4)
                .desc(At::Buf(0), 16, NEXT, 1)
                .desc(At::Buf(0x1000), 512, WRITE | NEXT, 2)
                .desc(At::Buf(0x100), 1, WRITE, 0)
                .desc(At::Buf(0x20), 16, NEXT, 4)
                .desc(At::Buf(0x2000), 1024, NEXT, 5)
                .desc(At::Buf(0x101), 1, WRITE, 0)
                .desc(At::Buf(0x40), 16, NEXT, 7)
                .desc(At::Buf(0x3000), 21, WRITE, 0)
                .head(0)
                .head(3)
                .head(6)
                .header(0, IN, 0)
                .header(0x20, OUT, 10)
                .header(0x40, GET_ID, 0)),
            "ok get_id",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_exercise_what_they_name() {
        for (name, input, tag) in seeds() {
            let o = run(&input);
            assert!(
                o.tags.contains(tag),
                "seed {name}: no {tag:?} in {:?}\n{}",
                o.tags,
                o.log
            );
            // `FUZZ_BLK_WRITE_SEEDS=<dir>` also writes them there (the
            // corpus's named files).
            if let Some(dir) = std::env::var_os("FUZZ_BLK_WRITE_SEEDS") {
                std::fs::write(std::path::Path::new(&dir).join(name), &input).unwrap();
            }
        }
    }

    #[test]
    fn empty_and_small_inputs_run() {
        run(&[]);
        for b in 0..=255u8 {
            run(&[b; 64]);
        }
    }
}
