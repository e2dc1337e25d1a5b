// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The body of the `gup` fuzz target (fuzz/fuzz_targets/gup.rs), also
//! replayed over the committed corpus by `tests/tests/fuzz_corpus.rs`.
//!
//! [`run`] decodes the fuzz input into a small GUP engine (two or three RAM
//! regions with holes between them, each lazy, read-only or removable as
//! the bytes say), a paging context, and a sequence of operations: pin/get
//! requests with arbitrary flags (invalid combinations included) over
//! guest-physical or guest-virtual ranges (wrapping ones included), with a
//! scripted fault handler that retries, maps the page and retries, injects,
//! fails or cancels the request; drops of held pins in any order;
//! page-table writes; balloon discards; freezes and unfreezes through the
//! frame table; region removal and addition.
//!
//! Everything the engine promises is checked after every step (a panic is a
//! finding, inside the engine or here):
//!
//! * flags: an invalid combination is `Invalid` and counts no request; an
//!   unknown bit is refused by `GupFlags::from_bits`; a wrapping range is
//!   `Overflow` and counts no request;
//! * results: `Ok` has at least one page (unless the length is 0), at most
//!   the length asked, a short reason exactly when it is short, and extents
//!   that tile `[addr, addr + bytes)` in order; an error takes nothing;
//!   each error and short reason is one the request could produce (Fault at
//!   the next address, with the walker's exact fault; Again only with
//!   FAST_ONLY, a frozen frame or a retrying handler; Interrupted only when
//!   cancelled; NoMemory only for LONGTERM);
//! * extents: guest-physical ones have `gpa == addr`; page-table ones have,
//!   page by page, the gpa `paging::translate` gives at that instant (with
//!   the relaxed context FORCE uses; when the handler rewrote the tables
//!   during the request, at one of the instants after its writes, in
//!   request order); holes only with DUMP and only outside RAM; other
//!   extents inside one region, at its host address, never a read-only
//!   region for WRITE nor a removable one for LONGTERM;
//! * references: while a pin is held its frames are referenced, populated,
//!   not frozen, `maybe_dma_pinned` (PIN), cannot be frozen, and survive a
//!   balloon discard (a marker written through the extent's host pointer);
//!   every region's reference total equals what the held extents account
//!   for (one per 4K frame, or per 2M block for large leaves, times 1 or
//!   1024); `pins_outstanding`, `gets_outstanding`, `longterm_pages` and
//!   the long-term page count match the held pins; freezing a frame nobody
//!   holds always succeeds; a region is removed exactly when nothing in it
//!   is held or frozen;
//! * release: dropping a write pin marks exactly its pages dirty, a read
//!   pin none; after everything is dropped every counter and reference is
//!   zero and nothing is left frozen.
//!
//! Input format (hand-rolled; missing bytes read as zero, so every input is
//! valid): a header (memory layout and region options, engine config,
//! paging mode and registers, CR3, the virtual window), then up to
//! [`MAX_OPS`] operations, each an opcode byte and its operands.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guest_mm::gup::frames::FRAMES_PER_BLOCK;
use guest_mm::gup::memmap::{anonymous_regions, PAGE_SIZE};
use guest_mm::gup::{
    AddressSpace, CancelToken, DirtyBitmap, FaultHandler, FaultOutcome, GuestMemory, Gup,
    GupConfig, GupCounters, GupError, GupFlags, Injection, MemoryMap, Pinned, RamRegion,
    RegionError, RegionOptions,
};
use guest_mm::paging::context::{
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PKE, CR4_PKS, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA,
    EFER_LME, EFER_NXE, RFLAGS_AC,
};
use guest_mm::paging::{
    self, Access, AccessKind, CpuFeatures, Fault, FaultReason, PagingContext, PagingMode, Privilege,
};
use vm_memory::{Bytes, GuestAddress, MmapRegion};

use crate::fuzz_input::Input;

const PAGE: u64 = PAGE_SIZE;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Page-table pool: the first pages of region 0.
const POOL_PAGES: u64 = 32;
/// Most operations a case decodes.
pub const MAX_OPS: usize = 48;
/// Most pins held at once (the oldest is dropped to make room).
const MAX_HELD: usize = 12;
/// Most regions in the map at once.
const MAX_REGIONS: usize = 6;
/// Size of the virtual window requests and mappings fall in.
const WINDOW_PAGES: u64 = 2048;
/// Most fault-handler calls per request before it fails them all.
const MAX_HANDLER_CALLS: u32 = 64;
/// Most table rewrites by the handler per request.
const MAX_HANDLER_WRITES: usize = 8;
/// Retries the slow path allows per page (`slow::MAX_RETRIES`) plus one.
const RETRIES_FOR_AGAIN: u32 = 17;

/// What a case exercised, for the corpus replay's histogram.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The paging mode of the case.
    pub mode: Option<PagingMode>,
    /// Named events that happened (e.g. "fast hit", "hole", "block pin",
    /// "err Again", "remove busy").
    pub tags: BTreeSet<&'static str>,
    /// The case as decoded and what each operation returned.
    pub log: String,
}

/// Decode `data` into a case, run it, check every invariant. Panics, with
/// the case's log, on any violation (or if the engine panics).
pub fn run(data: &[u8]) -> Outcome {
    let mut inp = Input::new(data);
    let mut h = Harness::decode(&mut inp);
    let mut ops = 0;
    while !inp.is_empty() && ops < MAX_OPS {
        h.op(&mut inp);
        h.check_refs("after the operation");
        ops += 1;
    }
    h.finish(&mut inp);
    Outcome {
        mode: Some(h.mode),
        tags: std::mem::take(&mut h.tags),
        log: std::mem::take(&mut h.log),
    }
}

fn sign_extend(v: u64, bits: u32) -> u64 {
    let shift = 64 - bits;
    (((v << shift) as i64) >> shift) as u64
}

fn pages_spanned(start: u64, bytes: u64) -> u64 {
    if bytes == 0 {
        return 0;
    }
    (start + (bytes - 1)) / PAGE - start / PAGE + 1
}

/// The initial memory layout.
#[derive(Debug)]
struct Layout {
    /// (start, len, options) of the initial regions; region 0 holds the
    /// page-table pool.
    regions: Vec<(u64, u64, RegionOptions)>,
    /// Pages in no initial region.
    holes: Vec<u64>,
}

impl Layout {
    fn decode(inp: &mut Input) -> Layout {
        let b0 = inp.u8();
        let b1 = inp.u8();
        let b2 = inp.u8();
        let opts = inp.u16();
        let opt = |i: u32| RegionOptions {
            read_only: opts & (1 << (4 * i)) != 0,
            removable: opts & (2 << (4 * i)) != 0,
            lazy: opts & (4 << (4 * i)) != 0,
        };
        // Region 0: 256 KiB to 4 MiB, maybe with a partial 2M block.
        let s0 = 256 * 1024 * (1 + u64::from(b0 % 16)) + PAGE * u64::from((b0 >> 4) % 4);
        // Region 1: after a gap, maybe not 2M-aligned (its blocks then
        // straddle the guest's 2M pages).
        const SKEW: [u64; 8] = [0, 1, 2, 3, 255, 256, 511, 0];
        let start1 = s0.div_ceil(MIB) * MIB
            + MIB * (1 + u64::from(b1 % 3))
            + PAGE * SKEW[usize::from((b1 >> 2) % 4) + 4 * usize::from(opts >> 15)];
        let s1 = 256 * 1024 * (1 + u64::from((b1 >> 4) % 16)) + PAGE * u64::from(b2 % 4);
        let mut regions = vec![(0, s0, opt(0)), (start1, s1, opt(1))];
        let end1 = start1 + s1;
        let mut holes = vec![
            s0,
            start1 - PAGE,
            end1,
            end1 + 2 * MIB,
            2 * GIB,
            5 * GIB,
            1 << 40,
        ];
        if b2 & 0x80 != 0 {
            // Region 2: under a 1G page, or above 4 GiB.
            let start2 = match (b2 >> 2) % 4 {
                0 => GIB,
                1 => GIB + 2 * PAGE,
                2 => 4 * GIB,
                _ => 4 * GIB + 2 * MIB + PAGE,
            };
            let s2 = 64 * 1024 * (1 + u64::from((b2 >> 4) % 8));
            regions.push((start2, s2, opt(2)));
            holes.push(start2 + s2);
        } else {
            holes.push(GIB);
        }
        Layout { regions, holes }
    }

    /// An interesting guest-physical page: in RAM (often), near a region's
    /// end, in a hole, in the table pool, or anywhere low.
    fn pick_gpa(&self, b: u8, k: u16) -> u64 {
        let k = u64::from(k);
        match b % 8 {
            0..=3 => {
                let (start, len, _) = self.regions[usize::from(b >> 3) % self.regions.len()];
                start + (k % (len / PAGE)) * PAGE
            }
            4 => {
                let (start, len, _) = self.regions[usize::from(b >> 3) % self.regions.len()];
                start + len - (1 + k % 4) * PAGE
            }
            5 => self.holes[(k as usize) % self.holes.len()],
            6 => (k % POOL_PAGES) * PAGE,
            _ => (k << 12) | (u64::from(b >> 3) << 28),
        }
    }
}

/// Per-mode page-table geometry.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    mode: PagingMode,
}

impl Geometry {
    fn levels(self) -> u8 {
        match self.mode {
            PagingMode::None => 0,
            PagingMode::Bits32 => 2,
            PagingMode::Pae => 3,
            PagingMode::Level4 => 4,
            PagingMode::Level5 => 5,
        }
    }

    fn width(self) -> u64 {
        if self.mode == PagingMode::Bits32 {
            4
        } else {
            8
        }
    }

    /// (shift, index bits) of `level`.
    fn split(self, level: u8) -> (u32, u32) {
        let l = u32::from(level - 1);
        match self.mode {
            PagingMode::Bits32 => (12 + 10 * l, 10),
            PagingMode::Pae if level == 3 => (30, 2),
            _ => (12 + 9 * l, 9),
        }
    }

    fn large_ok(self, level: u8) -> bool {
        match self.mode {
            PagingMode::Bits32 | PagingMode::Pae => level == 2,
            _ => level == 2 || level == 3,
        }
    }

    fn addr_mask(self) -> u64 {
        if self.mode == PagingMode::Bits32 {
            0xffff_f000
        } else {
            0x000f_ffff_ffff_f000
        }
    }

    /// Where the entry for `va` at `level` lives in `table`.
    fn entry_gpa(self, table: u64, va: u64, level: u8) -> u64 {
        let (shift, bits) = self.split(level);
        table + ((va >> shift) & ((1 << bits) - 1)) * self.width()
    }

    /// A leaf at `level` mapping `target` (aligned down) with `flags`.
    fn leaf(self, level: u8, target: u64, flags: u64) -> u64 {
        let size = if level == 1 {
            PAGE
        } else {
            1u64 << self.split(level).0
        };
        let mut v = (target & !(size - 1)) | (flags & !0x80);
        if level > 1 {
            v |= 0x80;
        }
        if self.mode == PagingMode::Bits32 {
            v &= 0xffff_ffff;
            if level == 2 {
                // PSE-36: address bits 39:32 in bits 20:13.
                v = (v & !0x001f_e000) | ((target >> 32) & 0xff) << 13;
            }
        }
        v
    }

    /// A non-leaf entry pointing at `table`.
    fn table(self, level: u8, table: u64, flags: u64) -> u64 {
        if self.mode == PagingMode::Pae && level == 3 {
            // A PDPTE keeps only P, PWT and PCD.
            return table | 1 | (flags & 0x18);
        }
        let v = table | (flags & !0x80) | 1;
        if self.mode == PagingMode::Bits32 {
            v & 0xffff_ffff
        } else {
            v
        }
    }
}

/// The page-table writer, shared by the operations and the fault handler.
struct Tables {
    geo: Geometry,
    root: u64,
    /// Next fresh pool page (page 0 is the root).
    next: AtomicUsize,
}

impl Tables {
    fn read(&self, mem: &GuestMemory, gpa: u64) -> Option<u64> {
        if self.geo.width() == 4 {
            mem.read_obj::<u32>(GuestAddress(gpa)).ok().map(u64::from)
        } else {
            mem.read_obj::<u64>(GuestAddress(gpa)).ok()
        }
    }

    fn write(&self, mem: &GuestMemory, gpa: u64, v: u64) {
        // Writes outside RAM are lost.
        if self.geo.width() == 4 {
            let _ = mem.write_obj(v as u32, GuestAddress(gpa));
        } else {
            let _ = mem.write_obj(v, GuestAddress(gpa));
        }
    }

    fn alloc(&self) -> u64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        // Past the pool, reuse its pages (aliasing live tables).
        let page = if n < POOL_PAGES {
            n
        } else {
            1 + n % (POOL_PAGES - 1)
        };
        page * PAGE
    }

    /// The entry for `va` at `level`, following the present non-leaf
    /// entries from the root; `None` if the path stops above it.
    fn entry_at(&self, mem: &GuestMemory, va: u64, level: u8) -> Option<u64> {
        let mut table = self.root;
        for l in (level..=self.geo.levels()).rev() {
            let gpa = self.geo.entry_gpa(table, va, l);
            if l == level {
                return Some(gpa);
            }
            let e = self.read(mem, gpa)?;
            if e & 1 == 0 || (self.geo.large_ok(l) && e & 0x80 != 0) {
                return None;
            }
            table = e & self.geo.addr_mask();
        }
        None
    }

    /// Write the path of `va` down to a leaf at `level`: existing present
    /// tables are followed (unless `fresh`), missing ones come from the
    /// pool.
    fn map(&self, mem: &GuestMemory, va: u64, level: u8, leaf: u64, nonleaf: u64, fresh: bool) {
        let levels = self.geo.levels();
        if levels == 0 {
            return;
        }
        let level = level.clamp(1, levels);
        let mut table = self.root;
        for l in (level..=levels).rev() {
            let gpa = self.geo.entry_gpa(table, va, l);
            if l == level {
                self.write(mem, gpa, leaf);
                return;
            }
            let cur = self.read(mem, gpa).unwrap_or(0);
            let usable = cur & 1 != 0 && !(self.geo.large_ok(l) && cur & 0x80 != 0);
            table = if usable && !fresh {
                cur & self.geo.addr_mask()
            } else {
                let page = self.alloc();
                self.write(mem, gpa, self.geo.table(l, page, nonleaf));
                page
            };
        }
    }
}

/// The fuzz-chosen flag bits of an entry (not its address): P, R/W, U/S,
/// PWT/PCD, A, D, G, XD, a protection key, maybe one arbitrary bit.
fn entry_flags(inp: &mut Input, wide: bool) -> u64 {
    let f = inp.u16();
    let mut v = 0u64;
    if f & 0x7 != 0 {
        v |= 1;
    }
    if f & 0x18 != 0 {
        v |= 2;
    }
    if f & 0x60 != 0 {
        v |= 4;
    }
    if f & 0x80 != 0 {
        v |= 0x18;
    }
    if f & 0x300 != 0 {
        v |= 0x20;
    }
    if f & 0xc00 != 0 {
        v |= 0x40;
    }
    if f & 0x1000 != 0 {
        v |= 0x100;
    }
    if wide && f & 0x2000 != 0 {
        v |= 1 << 63;
    }
    if wide && f & 0x4000 != 0 {
        v |= u64::from(inp.u8() & 0xf) << 59;
    }
    if f & 0x8000 != 0 {
        v |= 1 << (inp.u8() % 64);
    }
    v
}

/// The context and access a request's page-table walk uses: FORCE clears
/// CR0.WP, SMEP, SMAP and the protection keys and makes the access
/// supervisor (docs/gup.md, "Access").
fn access_for(ctx: &PagingContext, flags: GupFlags) -> (PagingContext, Access) {
    let kind = if flags.contains(GupFlags::WRITE) {
        AccessKind::Write
    } else {
        AccessKind::Read
    };
    if flags.contains(GupFlags::FORCE) {
        let mut c = *ctx;
        c.cr0 &= !CR0_WP;
        c.cr4 &= !(CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_PKS);
        return (c, Access::new(kind, Privilege::Supervisor));
    }
    let p = if flags.contains(GupFlags::USER) {
        Privilege::User
    } else {
        Privilege::Supervisor
    };
    (*ctx, Access::new(kind, p))
}

/// The page-base gpa of every page of `[addr, end)` (the first page from
/// `addr`), or the fault.
type PageMap = Vec<Result<u64, Fault>>;

fn page_map(
    mem: &GuestMemory,
    ctx: &PagingContext,
    access: Access,
    addr: u64,
    end: u64,
) -> PageMap {
    let n = pages_spanned(addr, end - addr);
    (0..n)
        .map(|i| {
            let va = if i == 0 {
                addr
            } else {
                (addr & !(PAGE - 1)) + i * PAGE
            };
            paging::translate(mem, ctx, va, access).map(|t| t.gpa - (va & (PAGE - 1)))
        })
        .collect()
}

/// The handler's mutable state.
#[derive(Default)]
struct HandlerState {
    pos: usize,
    calls: u32,
    retries: u32,
    injected: u32,
    cancelled: bool,
    /// Page maps at the instants the handler's writes made: before its
    /// first write, then after each.
    snapshots: Vec<PageMap>,
}

/// A fault handler following a script of fuzz bytes.
struct ScriptHandler<'a> {
    script: Vec<u8>,
    mem: &'a GuestMemory,
    tables: &'a Tables,
    layout: &'a Layout,
    cancel: &'a CancelToken,
    /// The request's walk context, access and range (for snapshots).
    ctx: PagingContext,
    access: Access,
    range: (u64, u64),
    state: Mutex<HandlerState>,
}

impl ScriptHandler<'_> {
    fn byte(&self, st: &mut HandlerState) -> u8 {
        let b = self.script.get(st.pos).copied().unwrap_or(0);
        st.pos += 1;
        b
    }
}

impl FaultHandler for ScriptHandler<'_> {
    fn handle(&self, fault: &Fault, _access: Access) -> FaultOutcome {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.calls += 1;
        if st.pos >= self.script.len() || st.calls > MAX_HANDLER_CALLS {
            return FaultOutcome::Fail;
        }
        let action = self.byte(&mut st);
        let outcome = match action % 8 {
            0 | 1 => FaultOutcome::Retry,
            2 | 3 | 7 => {
                // Map the faulting page (a 4K leaf, or a 2M/4M one), then
                // retry.
                if st.snapshots.len() <= MAX_HANDLER_WRITES {
                    if st.snapshots.is_empty() {
                        let m =
                            page_map(self.mem, &self.ctx, self.access, self.range.0, self.range.1);
                        st.snapshots.push(m);
                    }
                    let geo = self.tables.geo;
                    let level = if action % 8 == 7 && geo.large_ok(2) {
                        2
                    } else {
                        1
                    };
                    let (b, k) = (self.byte(&mut st), self.byte(&mut st));
                    let target = self.layout.pick_gpa(b, u16::from(k) * 7);
                    let flags = 0x67 | if action & 0x80 != 0 { 1 << 63 } else { 0 };
                    let flags = if geo.width() == 4 {
                        flags & 0xfff
                    } else {
                        flags
                    };
                    let leaf = geo.leaf(level, target, flags);
                    self.tables.map(
                        self.mem,
                        fault.address,
                        level,
                        leaf,
                        0x27,
                        action & 0x40 != 0,
                    );
                    let m = page_map(self.mem, &self.ctx, self.access, self.range.0, self.range.1);
                    st.snapshots.push(m);
                }
                FaultOutcome::Retry
            }
            4 => match fault.error_code() {
                Some(error_code) => FaultOutcome::Inject(Injection {
                    cr2: fault.address,
                    error_code,
                }),
                None => FaultOutcome::Fail,
            },
            5 => FaultOutcome::Fail,
            _ => {
                self.cancel.cancel();
                st.cancelled = true;
                FaultOutcome::Retry
            }
        };
        match outcome {
            FaultOutcome::Retry => st.retries += 1,
            FaultOutcome::Inject(_) => st.injected += 1,
            FaultOutcome::Fail => {}
        }
        outcome
    }
}

/// A non-hole extent of a held pin, with its region.
#[derive(Clone)]
struct Part {
    region: Arc<RamRegion>,
    addr: u64,
    gpa: u64,
    len: u64,
    blocks: bool,
}

impl Part {
    fn frames(&self) -> std::ops::RangeInclusive<u64> {
        self.region.frame_index(self.gpa)..=self.region.frame_index(self.gpa + self.len - 1)
    }

    /// References the part holds: one per frame, or one per 2M block.
    fn units(&self) -> u64 {
        let f = self.frames();
        if self.blocks {
            f.end() / FRAMES_PER_BLOCK - f.start() / FRAMES_PER_BLOCK + 1
        } else {
            f.end() - f.start() + 1
        }
    }

    /// Whether frame `i` of the part's region is held by it.
    fn holds(&self, region: &Arc<RamRegion>, i: u64) -> bool {
        if !Arc::ptr_eq(&self.region, region) {
            return false;
        }
        let f = self.frames();
        if self.blocks {
            (f.start() / FRAMES_PER_BLOCK..=f.end() / FRAMES_PER_BLOCK)
                .contains(&(i / FRAMES_PER_BLOCK))
        } else {
            f.contains(&i)
        }
    }
}

/// A pin the case holds.
struct Held {
    pin: Pinned,
    flags: GupFlags,
    parts: Vec<Part>,
}

impl Held {
    fn delta(&self) -> u64 {
        if self.flags.contains(GupFlags::PIN) {
            1024
        } else {
            1
        }
    }
}

/// Whether a request's flags are valid (docs/gup.md: exactly one of GET and
/// PIN; LONGTERM only with PIN, never with FAST_ONLY).
fn valid(f: GupFlags) -> bool {
    let get = f.contains(GupFlags::GET);
    let pin = f.contains(GupFlags::PIN);
    let lt = f.contains(GupFlags::LONGTERM);
    let longterm_ok = !lt || (pin && !f.contains(GupFlags::FAST_ONLY));
    get != pin && longterm_ok
}

struct Harness {
    gup: Gup,
    layout: Layout,
    mode: PagingMode,
    ctx: PagingContext,
    tables: Tables,
    va_base: u64,
    held: Vec<Held>,
    /// Frames the harness froze: (region, frame index).
    frozen: Vec<(Arc<RamRegion>, u64)>,
    /// Regions removed from the map (their memory lives on while held).
    removed: Vec<Arc<RamRegion>>,
    log: String,
    tags: BTreeSet<&'static str>,
}

impl Harness {
    fn decode(inp: &mut Input) -> Harness {
        let layout = Layout::decode(inp);
        let cb = inp.u8();
        let config = GupConfig {
            freeze_wait: Duration::from_micros(if cb & 1 != 0 { 30 } else { 0 }),
            longterm_limit_pages: match (cb >> 1) % 4 {
                0 | 1 => u64::MAX,
                2 => u64::from(cb >> 3) * 4,
                _ => 0,
            },
        };
        let ranges: Vec<(u64, usize)> = layout
            .regions
            .iter()
            .map(|&(s, l, _)| (s, l as usize))
            .collect();
        let vm = anonymous_regions(&ranges).expect("anonymous regions");
        let gup = Gup::new(
            vm.into_iter()
                .zip(layout.regions.iter())
                .map(|(r, &(_, _, o))| (r, o))
                .collect(),
            config,
        )
        .expect("engine");

        let mode = match inp.u8() % 16 {
            0..=10 => PagingMode::Level4,
            11 | 12 => PagingMode::Pae,
            13 => PagingMode::Bits32,
            14 => PagingMode::Level5,
            _ => PagingMode::None,
        };
        let fl = inp.u16();
        let flag = |n: u32| fl & (1 << n) != 0;
        let mut cr0 = 0;
        let mut cr4 = 0;
        let mut efer = 0;
        if !flag(0) {
            cr0 |= CR0_WP;
        }
        if !flag(1) {
            cr4 |= CR4_PSE;
        }
        for (n, bit) in [(2, CR4_SMEP), (3, CR4_SMAP), (4, CR4_PKE), (5, CR4_PKS)] {
            if flag(n) {
                cr4 |= bit;
            }
        }
        if !flag(6) {
            efer |= EFER_NXE;
        }
        let rflags = if flag(7) { RFLAGS_AC } else { 0 };
        let features = CpuFeatures {
            gbpages: !flag(8),
            pse36: !flag(9),
        };
        match mode {
            PagingMode::None => {}
            PagingMode::Bits32 => cr0 |= CR0_PG,
            PagingMode::Pae => {
                cr0 |= CR0_PG;
                cr4 |= CR4_PAE;
            }
            PagingMode::Level4 => {
                cr0 |= CR0_PG;
                cr4 |= CR4_PAE;
                efer |= EFER_LME | EFER_LMA;
            }
            PagingMode::Level5 => {
                cr0 |= CR0_PG;
                cr4 |= CR4_PAE | CR4_LA57;
                efer |= EFER_LME | EFER_LMA;
            }
        }
        let mp = inp.u8();
        let maxphyaddr = if mp & 0x80 == 0 { 48 } else { 32 + mp % 21 };
        let pkru = if flag(10) { inp.u32() } else { 0 };
        let pkrs = if flag(11) { inp.u32() } else { 0 };
        let c3 = inp.u8();
        let root = match c3 % 8 {
            0..=5 => 0,
            6 => u64::from(c3 >> 3) % POOL_PAGES * PAGE,
            _ => layout.holes[usize::from(c3 >> 3) % layout.holes.len()],
        };
        let cr3 = root | if flag(12) { 0x18 } else { 0 };
        let ctx = PagingContext::new(cr0, cr3, cr4, efer)
            .with_maxphyaddr(maxphyaddr)
            .with_rflags(rflags)
            .with_pkru(pkru)
            .with_pkrs(pkrs)
            .with_features(features);

        let vb = inp.u8();
        let raw = inp.u64() & !(4 * MIB - 1);
        let va_base = match mode {
            PagingMode::Level4 | PagingMode::Level5 => {
                let bits = mode.linear_bits();
                let top = 1u64 << (bits - 1);
                match vb % 8 {
                    0 => 0,
                    1 => 0x40_0000_0000 & (top - 1),
                    // The window crosses out of the lower canonical half.
                    2 => top - 4 * MIB,
                    3 => top.wrapping_neg(),
                    // The top of the address space: ranges run into 2^64.
                    4 => (8 * MIB).wrapping_neg(),
                    _ => sign_extend(raw, bits),
                }
            }
            _ => match vb % 4 {
                0 => 0,
                1 => 0xc000_0000,
                // The window crosses the 4 GiB line.
                2 => 0xffc0_0000,
                _ => raw & 0xffc0_0000,
            },
        };
        let tables = Tables {
            geo: Geometry { mode },
            root: ctx.cr3
                & match mode {
                    PagingMode::Bits32 => 0xffff_f000,
                    PagingMode::Pae => 0xffff_ffe0,
                    _ => 0x000f_ffff_ffff_f000,
                },
            next: AtomicUsize::new(1),
        };
        let mut log = String::new();
        let _ = writeln!(
            log,
            "layout {:#x?}\nconfig {config:?}\nmode {mode:?} ctx {ctx:#x?}\nva_base {va_base:#x}",
            layout
        );
        Harness {
            gup,
            layout,
            mode,
            ctx,
            tables,
            va_base,
            held: Vec::new(),
            frozen: Vec::new(),
            removed: Vec::new(),
            log,
            tags: BTreeSet::new(),
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "gup fuzz invariant violated: {what}\n--- case ---\n{}\nstats {:?}",
            self.log,
            self.gup.stats()
        );
    }

    fn map(&self) -> Arc<MemoryMap> {
        self.gup.memory_map()
    }

    /// Every region the case has seen (in the map or removed).
    fn all_regions(&self) -> Vec<Arc<RamRegion>> {
        let mut v: Vec<Arc<RamRegion>> = self.map().regions().to_vec();
        v.extend(self.removed.iter().cloned());
        v
    }

    fn window_va(&self, inp: &mut Input) -> u64 {
        let k = u64::from(inp.u16()) % WINDOW_PAGES;
        self.va_base.wrapping_add(k * PAGE)
    }

    fn op(&mut self, inp: &mut Input) {
        let op = inp.u8();
        match op % 16 {
            0..=5 => self.op_request(inp),
            6 => {
                let i = usize::from(inp.u8());
                if !self.held.is_empty() {
                    let i = i % self.held.len();
                    self.drop_held(i);
                }
            }
            7 => self.op_map(inp),
            8 => self.op_map_range(inp),
            9 => self.op_modify(inp),
            10 => self.op_raw(inp),
            11 => self.op_discard(inp),
            12 => self.op_freeze(inp),
            13 => {
                let i = usize::from(inp.u8());
                if !self.frozen.is_empty() {
                    let (r, f) = self.frozen.swap_remove(i % self.frozen.len());
                    let _ = writeln!(self.log, "unfreeze {:#x} frame {f}", r.start());
                    r.frames().unfreeze(f);
                }
            }
            14 => self.op_remove(inp),
            _ => self.op_add(inp),
        }
    }

    fn op_map(&mut self, inp: &mut Input) {
        let va = self.window_va(inp);
        let lb = inp.u8();
        let geo = self.tables.geo;
        let level = match lb % 8 {
            0..=4 => 1,
            5 | 6 => 2,
            _ => 3,
        };
        let level = if level > 1 && !geo.large_ok(level) {
            1
        } else {
            level
        };
        let (b, k) = (inp.u8(), inp.u16());
        let target = self.layout.pick_gpa(b, k);
        let flags = entry_flags(inp, geo.width() == 8);
        let nonleaf = if lb & 0x10 != 0 {
            entry_flags(inp, geo.width() == 8)
        } else {
            0x27
        };
        let leaf = geo.leaf(level, target, flags);
        let _ = writeln!(
            self.log,
            "map va {va:#x} level {level} leaf {leaf:#x} nonleaf {nonleaf:#x} fresh {}",
            lb & 0x20 != 0
        );
        let map = self.map();
        self.tables
            .map(map.memory(), va, level, leaf, nonleaf, lb & 0x20 != 0);
    }

    /// Map a run of leaves of one size from a window address: to
    /// contiguous, aliased, descending or interleaved guest pages.
    fn op_map_range(&mut self, inp: &mut Input) {
        let va = self.window_va(inp);
        let lb = inp.u8();
        let geo = self.tables.geo;
        let level = match lb % 4 {
            0 | 1 => 1,
            l => l,
        };
        let level = if level > 1 && !geo.large_ok(level) {
            1
        } else {
            level
        };
        let size = if level == 1 {
            PAGE
        } else {
            1u64 << geo.split(level).0
        };
        let count = 1 + u64::from(inp.u8()) % if level == 1 { 64 } else { 8 };
        let (b, k) = (inp.u8(), inp.u16());
        let target = self.layout.pick_gpa(b, k);
        let flags = entry_flags(inp, geo.width() == 8);
        let pattern = (lb >> 2) % 4;
        let _ = writeln!(
            self.log,
            "map range va {va:#x} level {level} x{count} target {target:#x} flags {flags:#x} \
             pattern {pattern}"
        );
        let map = self.map();
        let va = va & !(size - 1);
        for i in 0..count {
            let t = match pattern {
                0 => target.wrapping_add(i * size),
                1 => target,
                2 => target.wrapping_sub(i * size),
                _ => target.wrapping_add((i * 5 % count) * size),
            };
            let leaf = geo.leaf(level, t, flags);
            self.tables.map(
                map.memory(),
                va.wrapping_add(i * size),
                level,
                leaf,
                0x27,
                false,
            );
        }
    }

    fn op_modify(&mut self, inp: &mut Input) {
        let va = self.window_va(inp);
        let levels = self.tables.geo.levels();
        let lb = inp.u8();
        let x = inp.u16();
        if levels == 0 {
            return;
        }
        let level = 1 + lb % levels;
        let map = self.map();
        let mem = map.memory();
        let Some(gpa) = self.tables.entry_at(mem, va, level) else {
            return;
        };
        let Some(cur) = self.tables.read(mem, gpa) else {
            return;
        };
        let v = match lb >> 4 {
            0 => 0,
            // Point it at another pool page (aliasing, loops).
            1 => (cur & !self.tables.geo.addr_mask()) | ((u64::from(x) % POOL_PAGES) * PAGE),
            // Toggle P, R/W, U/S, A, D, PS, XD as the bits say.
            _ => {
                let mut m = u64::from(x) & 0xe7;
                if x & 0x100 != 0 {
                    m |= 1 << 63;
                }
                cur ^ m
            }
        };
        let _ = writeln!(
            self.log,
            "modify va {va:#x} level {level} entry {gpa:#x}: {cur:#x} -> {v:#x}"
        );
        self.tables.write(mem, gpa, v);
    }

    fn op_raw(&mut self, inp: &mut Input) {
        let page = u64::from(inp.u8()) % POOL_PAGES;
        let off = u64::from(inp.u16()) & 0xff8;
        let v = inp.u64();
        let _ = writeln!(self.log, "raw {:#x} = {v:#x}", page * PAGE + off);
        let map = self.map();
        let _ = map.memory().write_obj(v, GuestAddress(page * PAGE + off));
    }

    fn decode_flags(&mut self, inp: &mut Input) -> GupFlags {
        let raw = u32::from(inp.u16());
        let fix = inp.u8();
        let mut bits = raw;
        if fix % 4 != 0 {
            // Mostly valid: exactly one of GET and PIN, LONGTERM rarer and
            // legal.
            bits &= 0x3ff & !(GupFlags::GET.bits() | GupFlags::PIN.bits());
            bits |= if fix & 4 != 0 {
                GupFlags::PIN.bits()
            } else {
                GupFlags::GET.bits()
            };
            if fix & 0x30 != 0 || fix & 4 == 0 {
                bits &= !GupFlags::LONGTERM.bits();
            }
            if bits & GupFlags::LONGTERM.bits() != 0 {
                bits &= !GupFlags::FAST_ONLY.bits();
            }
        }
        // Unknown bits are refused by from_bits.
        let unknown = bits & !0x3ff != 0;
        match GupFlags::from_bits(bits) {
            None if unknown => {
                self.tags.insert("unknown flag bits");
            }
            other => {
                if unknown || other.map(|f| f.bits()) != Some(bits) {
                    self.fail(&format!("GupFlags::from_bits({bits:#x}) = {other:?}"));
                }
            }
        }
        GupFlags::from_bits(bits & 0x3ff).unwrap_or_else(|| self.fail("from_bits of known bits"))
    }

    fn op_request(&mut self, inp: &mut Input) {
        let flags = self.decode_flags(inp);
        let sp = inp.u8();
        let physical = sp % 4 == 0;
        let use_handler = sp & 0x4 != 0;
        let precancel = sp & 0x18 == 0x18;
        let pass_token = sp & 0x20 == 0;
        let ab = inp.u8();
        let sub = if ab & 0x80 != 0 {
            u64::from(inp.u16()) & (PAGE - 1)
        } else {
            0
        };
        let addr = if ab & 0x70 == 0x70 {
            inp.u64()
        } else if physical {
            let k = inp.u16();
            self.layout.pick_gpa(ab, k) | sub
        } else {
            self.window_va(inp) | sub
        };
        let lb = inp.u8();
        let lw = u64::from(inp.u16());
        let small_sub = if lb & 0x80 != 0 { lw >> 4 & 0xfff } else { 0 };
        let len = match lb % 16 {
            0 => 0,
            1 => {
                // Wraps past 2^64 (or, from 0, the largest length that
                // does not: one byte then).
                if addr == 0 {
                    1
                } else {
                    (u64::MAX - addr) + 1 + (lw % addr.min(1 << 16))
                }
            }
            2 => {
                if addr == 0 {
                    1
                } else {
                    u64::MAX
                }
            }
            3..=9 => ((1 + lw % 16) * PAGE).saturating_sub(small_sub).max(1),
            10..=13 => ((1 + lw % 600) * PAGE).saturating_sub(small_sub).max(1),
            14 => 2 * MIB + (lw % 3) * PAGE - PAGE,
            _ => 4 * MIB + 2 * PAGE,
        };
        let script = if use_handler {
            let n = usize::from(inp.u8() % 24);
            inp.bytes(n)
        } else {
            Vec::new()
        };
        self.request(
            flags,
            physical,
            addr,
            len,
            use_handler,
            script,
            precancel,
            pass_token,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        flags: GupFlags,
        physical: bool,
        addr: u64,
        len: u64,
        use_handler: bool,
        script: Vec<u8>,
        precancel: bool,
        pass_token: bool,
    ) {
        let _ = writeln!(
            self.log,
            "request {} {addr:#x}+{len:#x} {flags:?} handler {use_handler} script {script:x?} \
             precancel {precancel} token {pass_token}",
            if physical { "phys" } else { "virt" }
        );
        let map = self.map();
        let mem = map.memory();
        let (ctx, access) = access_for(&self.ctx, flags);
        let wraps = addr.checked_add(len).is_none();
        let end = addr.wrapping_add(len);
        let token = CancelToken::new();
        if precancel {
            token.cancel();
        }
        let handler = ScriptHandler {
            script,
            mem,
            tables: &self.tables,
            layout: &self.layout,
            cancel: &token,
            ctx,
            access,
            range: (addr, if wraps { addr } else { end }),
            state: Mutex::new(HandlerState::default()),
        };
        let space = if physical {
            AddressSpace::Physical
        } else if use_handler {
            AddressSpace::with_handler(self.ctx, &handler)
        } else {
            AddressSpace::page_tables(self.ctx)
        };
        let refs_before = self.refs();
        let before = self.gup.stats();
        let lt_before = self.gup.longterm_pages();
        let result =
            self.gup
                .pin_cancellable(&space, addr, len, flags, pass_token.then_some(&token));
        let after = self.gup.stats();
        let hs = std::mem::take(&mut *handler.state.lock().unwrap_or_else(|e| e.into_inner()));
        let cancelled = pass_token && (precancel || hs.cancelled);
        let _ = writeln!(
            self.log,
            "  -> {:?} (handler calls {} retries {} snapshots {})",
            result
                .as_ref()
                .map(|p| (p.bytes(), p.extents().len(), p.short_reason())),
            hs.calls,
            hs.retries,
            hs.snapshots.len()
        );

        let nothing_taken = |h: &Harness, what: &str| {
            if h.refs() != refs_before
                || after.pins_outstanding != before.pins_outstanding
                || after.gets_outstanding != before.gets_outstanding
                || after.longterm_pages != before.longterm_pages
                || h.gup.longterm_pages() != lt_before
            {
                h.fail(&format!("{what}, yet references or counters changed"));
            }
        };
        if !valid(flags) {
            if !matches!(result, Err(GupError::Invalid(_))) || after.requests != before.requests {
                self.fail(&format!(
                    "invalid flags {flags:?} gave {result:?}, requests {} -> {}",
                    before.requests, after.requests
                ));
            }
            nothing_taken(self, "Invalid");
            self.tags.insert("err Invalid");
            return;
        }
        if wraps {
            if !matches!(result, Err(GupError::Overflow)) || after.requests != before.requests {
                self.fail(&format!(
                    "wrapping range gave {result:?}, requests {} -> {}",
                    before.requests, after.requests
                ));
            }
            nothing_taken(self, "Overflow");
            self.tags.insert("err Overflow");
            return;
        }
        if after.requests != before.requests + 1 {
            self.fail("a valid request was not counted once");
        }
        if flags.contains(GupFlags::FAST_ONLY) && after.slow_calls != before.slow_calls {
            self.fail("FAST_ONLY entered the slow path");
        }
        if after.fast_hits > before.fast_hits {
            self.tags.insert("fast hit");
        }
        if after.slow_calls > before.slow_calls {
            self.tags.insert("slow path");
        }
        if after.touched > before.touched {
            self.tags.insert("touched");
        }
        if after.populated > before.populated {
            self.tags.insert("populated");
        }
        if after.faults_handled > before.faults_handled {
            self.tags.insert("fault handled");
        }
        let ctxs = ReqCtx {
            flags,
            physical,
            addr,
            len,
            ctx,
            access,
            handler_used: use_handler && !physical,
            hs: &hs,
            cancelled,
        };
        let pinned = match result {
            Err(e) => {
                nothing_taken(self, &format!("error {e:?}"));
                self.check_error(&ctxs, &e, addr);
                self.tags.insert(match e {
                    GupError::Fault {
                        inject: Some(_), ..
                    } => "err Fault (inject)",
                    GupError::Fault { fault: Some(_), .. } => "err Fault (walk)",
                    GupError::Fault { .. } => "err Fault (not RAM)",
                    GupError::NoMemory => "err NoMemory",
                    GupError::HwPoison => "err HwPoison",
                    GupError::Again => "err Again",
                    GupError::Interrupted => "err Interrupted",
                    GupError::Invalid(_) => "err Invalid",
                    GupError::Overflow => "err Overflow",
                });
                return;
            }
            Ok(p) => p,
        };
        let held = self.check_pinned(&ctxs, pinned, &map);
        // The accounting of the new pin.
        let mut want = refs_before.clone();
        for p in &held.parts {
            *want.entry(Arc::as_ptr(&p.region) as usize).or_default() += p.units() * held.delta();
        }
        if self.refs() != want {
            self.fail(&format!(
                "references after the request {:?}, expected {want:?}",
                self.refs()
            ));
        }
        let pages: i64 = held
            .parts
            .iter()
            .map(|p| pages_spanned(p.addr, p.len) as i64)
            .sum();
        let (dp, dg) = if flags.contains(GupFlags::PIN) {
            (pages, 0)
        } else {
            (0, pages)
        };
        let lt = flags.contains(GupFlags::LONGTERM);
        let lt_frames: u64 = held
            .parts
            .iter()
            .map(|p| p.frames().end() - p.frames().start() + 1)
            .sum();
        if after.pins_outstanding - before.pins_outstanding != dp
            || after.gets_outstanding - before.gets_outstanding != dg
            || after.longterm_pages - before.longterm_pages != if lt { pages } else { 0 }
            || self.gup.longterm_pages() - lt_before != if lt { lt_frames } else { 0 }
        {
            self.fail(&format!(
                "outstanding counters moved by pins {} gets {} longterm {} (limit pages {}), \
                 expected {dp} {dg} {} ({})",
                after.pins_outstanding - before.pins_outstanding,
                after.gets_outstanding - before.gets_outstanding,
                after.longterm_pages - before.longterm_pages,
                self.gup.longterm_pages() - lt_before,
                if lt { pages } else { 0 },
                if lt { lt_frames } else { 0 },
            ));
        }
        self.held.push(held);
        if self.held.len() > MAX_HELD {
            self.drop_held(0);
        }
    }

    /// References per region (by address of its `RamRegion`).
    fn refs(&self) -> HashMap<usize, u64> {
        self.all_regions()
            .iter()
            .map(|r| (Arc::as_ptr(r) as usize, r.frames().total_refs()))
            .filter(|&(_, n)| n != 0)
            .collect()
    }

    /// What the held pins account for, per region.
    fn expected_refs(&self) -> HashMap<usize, u64> {
        let mut m: HashMap<usize, u64> = HashMap::new();
        for h in &self.held {
            for p in &h.parts {
                *m.entry(Arc::as_ptr(&p.region) as usize).or_default() += p.units() * h.delta();
            }
        }
        m
    }

    fn check_refs(&self, when: &str) {
        let got = self.refs();
        let want = self.expected_refs();
        if got != want {
            self.fail(&format!(
                "{when}: references {got:?}, held pins account for {want:?}"
            ));
        }
        let s = self.gup.stats();
        let (mut pins, mut gets, mut lt, mut lt_frames) = (0i64, 0i64, 0i64, 0u64);
        for h in &self.held {
            let pages: i64 = h
                .parts
                .iter()
                .map(|p| pages_spanned(p.addr, p.len) as i64)
                .sum();
            if h.flags.contains(GupFlags::PIN) {
                pins += pages;
            } else {
                gets += pages;
            }
            if h.flags.contains(GupFlags::LONGTERM) {
                lt += pages;
                lt_frames += h
                    .parts
                    .iter()
                    .map(|p| p.frames().end() - p.frames().start() + 1)
                    .sum::<u64>();
            }
        }
        if (s.pins_outstanding, s.gets_outstanding, s.longterm_pages) != (pins, gets, lt)
            || self.gup.longterm_pages() != lt_frames
        {
            self.fail(&format!(
                "{when}: outstanding pins {} gets {} longterm {} ({} pages), held pins say \
                 {pins} {gets} {lt} ({lt_frames})",
                s.pins_outstanding,
                s.gets_outstanding,
                s.longterm_pages,
                self.gup.longterm_pages()
            ));
        }
    }

    /// An error or short reason `e` at request address `at` is one the
    /// request could produce.
    fn check_error(&self, r: &ReqCtx, e: &GupError, at: u64) {
        let map = self.map();
        let ok = match *e {
            GupError::Fault {
                address,
                fault,
                inject,
            } => {
                if address != at {
                    self.fail(&format!("{e:?} is not at the next address {at:#x}"));
                }
                if let Some(i) = inject {
                    let f = fault.unwrap_or_else(|| self.fail("an injection without a fault"));
                    if !r.handler_used
                        || r.flags.contains(GupFlags::NOFAULT)
                        || i.cr2 != f.address
                        || Some(i.error_code) != f.error_code()
                        || r.hs.injected == 0
                    {
                        self.fail(&format!("unexpected injection {e:?}"));
                    }
                }
                match fault {
                    Some(f) => {
                        // The walk fault, exactly as translate reports it
                        // now (the handler wrote nothing after it).
                        let now = paging::translate(map.memory(), &r.ctx, address, r.access);
                        !r.physical
                            && f.address == address
                            && (now == Err(f) || self.pae_touch_alias(r, now.as_ref().err()))
                    }
                    None if r.physical => {
                        let region = map.find(address);
                        (region.is_none() && !r.flags.contains(GupFlags::DUMP))
                            || region.is_some_and(|g| {
                                r.flags.contains(GupFlags::WRITE) && g.options().read_only
                            })
                    }
                    None => match paging::translate(map.memory(), &r.ctx, address, r.access) {
                        Ok(t) => {
                            let region = map.find(t.gpa);
                            (region.is_none() && !r.flags.contains(GupFlags::DUMP))
                                || region.is_some_and(|g| {
                                    r.flags.contains(GupFlags::WRITE) && g.options().read_only
                                })
                        }
                        Err(f) => self.pae_touch_alias(r, Some(&f)),
                    },
                }
            }
            GupError::Again => {
                r.flags.contains(GupFlags::FAST_ONLY)
                    || !self.frozen.is_empty()
                    || r.hs.retries >= RETRIES_FOR_AGAIN
            }
            GupError::Interrupted => r.cancelled,
            GupError::NoMemory => r.flags.contains(GupFlags::LONGTERM),
            GupError::HwPoison | GupError::Invalid(_) | GupError::Overflow => false,
        };
        if !ok {
            self.fail(&format!("request cannot end with {e:?} at {at:#x}"));
        }
    }

    /// With TOUCH in PAE paging, setting A/D in an entry that is also a
    /// PDPTE in memory makes the PDPT invalid (#GP from then on): a
    /// translation that worked during the request may not work after it.
    fn pae_touch_alias(&self, r: &ReqCtx, now: Option<&Fault>) -> bool {
        self.mode == PagingMode::Pae
            && r.flags.contains(GupFlags::TOUCH)
            && now.is_some_and(|f| f.reason == FaultReason::InvalidPdpte)
    }

    fn check_pinned(&mut self, r: &ReqCtx, p: Pinned, map: &Arc<MemoryMap>) -> Held {
        let (addr, len, flags) = (r.addr, r.len, r.flags);
        let bytes = p.bytes();
        if len == 0 {
            if bytes != 0 || !p.extents().is_empty() || p.short_reason().is_some() || p.pages() != 0
            {
                self.fail(&format!("zero-length request gave {p:?}"));
            }
            self.tags.insert("zero length");
            return Held {
                pin: p,
                flags,
                parts: Vec::new(),
            };
        }
        if bytes == 0 || bytes > len || p.pages() != pages_spanned(addr, bytes) || p.pages() == 0 {
            self.fail(&format!("request of {len:#x} bytes gave {p:?}"));
        }
        if p.is_pin() != flags.contains(GupFlags::PIN)
            || p.is_write() != flags.contains(GupFlags::WRITE)
        {
            self.fail(&format!("{p:?} does not match flags {flags:?}"));
        }
        match p.short_reason() {
            Some(e) if bytes < len => {
                self.check_error(r, e, addr + bytes);
                self.tags.insert("short");
            }
            None if bytes == len => {}
            s => self.fail(&format!(
                "{bytes:#x} of {len:#x} bytes with short reason {s:?}"
            )),
        }
        // The extents tile [addr, addr + bytes).
        let mut cursor = addr;
        for e in p.extents() {
            if e.addr != cursor || e.len == 0 {
                self.fail(&format!("extent {e:x?} does not continue at {cursor:#x}"));
            }
            cursor += e.len;
        }
        if cursor != addr + bytes {
            self.fail(&format!(
                "extents end at {cursor:#x}, not {:#x}",
                addr + bytes
            ));
        }
        let iov = p.iovecs();
        let has_hole = p.extents().iter().any(|e| e.is_hole());
        if iov.is_some() == has_hole
            || iov.is_some_and(|v| {
                v.len() != p.extents().len()
                    || v.iter().zip(p.extents()).any(|(io, e)| {
                        io.iov_len as u64 != e.len || Some(io.iov_base.cast()) != e.host_ptr()
                    })
            })
        {
            self.fail("iovecs do not match the extents");
        }

        let mut parts = Vec::new();
        for e in p.extents() {
            if r.physical && e.gpa != e.addr {
                self.fail(&format!("guest-physical extent {e:x?} has gpa != addr"));
            }
            if e.is_hole() {
                if !flags.contains(GupFlags::DUMP) || e.host_ptr().is_some() {
                    self.fail(&format!("hole extent {e:x?} without DUMP"));
                }
                if (e.gpa..e.gpa + e.len)
                    .step_by(PAGE as usize)
                    .any(|g| map.find(g).is_some())
                    || map.find(e.gpa + e.len - 1).is_some()
                {
                    self.fail(&format!("hole extent {e:x?} covers RAM"));
                }
                self.tags.insert("hole");
                continue;
            }
            let Some(region) = map.find(e.gpa) else {
                self.fail(&format!("extent {e:x?} is in no RAM region"));
            };
            if region.remaining(e.gpa) < e.len
                || e.host_ptr() != Some(region.host_addr(e.gpa) as *mut u8)
            {
                self.fail(&format!(
                    "extent {e:x?} leaves its region or has the wrong host address"
                ));
            }
            if flags.contains(GupFlags::WRITE) && region.options().read_only {
                self.fail(&format!("write extent {e:x?} in a read-only region"));
            }
            if flags.contains(GupFlags::LONGTERM) && region.options().removable {
                self.fail(&format!("long-term extent {e:x?} in a removable region"));
            }
            if e.is_block_pinned() {
                if r.physical {
                    self.fail(&format!("guest-physical extent {e:x?} held per block"));
                }
                self.tags.insert("block pin");
            }
            parts.push(Part {
                region: region.clone(),
                addr: e.addr,
                gpa: e.gpa,
                len: e.len,
                blocks: e.is_block_pinned(),
            });
        }
        if flags.contains(GupFlags::LONGTERM) {
            self.tags.insert("longterm pin");
        }
        if !r.physical {
            self.check_translations(r, &p);
        }
        // Every frame held: referenced, populated, not frozen, pinned for
        // PIN, and freezing it fails.
        for part in &parts {
            let ft = part.region.frames();
            for f in part.frames() {
                let gpa = part.region.start() + f * PAGE;
                if !ft.referenced(f) || ft.is_frozen(f) || ft.is_unpopulated(f) {
                    self.fail(&format!(
                        "held frame {gpa:#x}: referenced {} frozen {} unpopulated {}",
                        ft.referenced(f),
                        ft.is_frozen(f),
                        ft.is_unpopulated(f)
                    ));
                }
                if flags.contains(GupFlags::PIN)
                    && (!ft.maybe_dma_pinned(f) || !self.gup.maybe_dma_pinned(gpa))
                {
                    self.fail(&format!("pinned frame {gpa:#x} is not maybe_dma_pinned"));
                }
                if ft.freeze(f).is_ok() {
                    ft.unfreeze(f);
                    self.fail(&format!("held frame {gpa:#x} could be frozen"));
                }
            }
        }
        Held {
            pin: p,
            flags,
            parts,
        }
    }

    /// Page-table extents map, page by page, what `translate` says (at the
    /// request's instant, or at one of the handler's instants, in order).
    fn check_translations(&self, r: &ReqCtx, p: &Pinned) {
        let map = self.map();
        let end = r.addr + p.bytes();
        let now;
        let snaps: &[PageMap] = if r.hs.snapshots.is_empty() {
            now = [page_map(map.memory(), &r.ctx, r.access, r.addr, end)];
            &now
        } else {
            &r.hs.snapshots
        };
        let mut k = 0;
        let base = r.addr & !(PAGE - 1);
        for e in p.extents() {
            let mut va = e.addr;
            while va < e.addr + e.len {
                let want = e.gpa + (va - e.addr) - (va & (PAGE - 1));
                let i = ((va & !(PAGE - 1)) - base) / PAGE;
                while k < snaps.len() {
                    let got = snaps[k].get(i as usize);
                    match got {
                        Some(Ok(g)) if *g == want => break,
                        Some(Err(f)) if self.pae_touch_alias(r, Some(f)) => break,
                        _ => k += 1,
                    }
                }
                if k == snaps.len() {
                    let got: Vec<_> = snaps.iter().map(|s| s.get(i as usize).cloned()).collect();
                    self.fail(&format!(
                        "extent {e:x?}: va {va:#x} pinned at page {want:#x}, but translate \
                         said {got:#x?}"
                    ));
                }
                va = match (va | (PAGE - 1)).checked_add(1) {
                    Some(v) => v,
                    None => break,
                };
            }
        }
    }

    fn drop_held(&mut self, i: usize) {
        let h = self.held.remove(i);
        let _ = writeln!(self.log, "drop pin {i} ({:?})", h.pin);
        let map = self.map();
        for r in map.regions() {
            dirty_bitmap(r).reset();
        }
        let write = h.flags.contains(GupFlags::WRITE);
        let mut pages = BTreeSet::new();
        for p in &h.parts {
            for f in p.frames() {
                pages.insert((Arc::as_ptr(&p.region) as usize, f));
            }
        }
        let parts = h.parts.clone();
        drop(h);
        // Guarantee 4: a write pin's pages, and only those, are dirty now.
        let dirty: u64 = map.regions().iter().map(|r| dirty_bitmap(r).count()).sum();
        let want = if write { pages.len() as u64 } else { 0 };
        if dirty != want {
            self.fail(&format!(
                "after dropping a {} pin, {dirty} pages are dirty, expected {want}",
                if write { "write" } else { "read" }
            ));
        }
        if write {
            for p in &parts {
                for f in p.frames() {
                    if !p.region.is_dirty(p.region.start() + f * PAGE) {
                        self.fail(&format!(
                            "page {:#x} of a released write pin is not dirty",
                            p.region.start() + f * PAGE
                        ));
                    }
                }
            }
        }
        self.check_refs("after a drop");
    }

    fn op_discard(&mut self, inp: &mut Input) {
        let (b, k) = (inp.u8(), inp.u16());
        let gpa = self.layout.pick_gpa(b, k);
        let lb = inp.u8();
        let len = if lb & 0x80 != 0 {
            4 * MIB
        } else {
            u64::from(1 + lb % 64) * PAGE
        };
        // A marker in the first and last page of every held extent, written
        // through its host pointer.
        let mut marks = Vec::new();
        for h in &self.held {
            for p in &h.parts {
                for g in [p.gpa, p.gpa + p.len - 1] {
                    let ptr = p.region.host_addr(g) as *const AtomicU8;
                    // SAFETY: the pin keeps the page mapped; guest memory is
                    // accessed atomically as the guest could race with us.
                    let byte = unsafe { &*ptr };
                    let old = byte.swap(0xa5, Ordering::Relaxed);
                    marks.push((ptr, old, g));
                }
            }
        }
        let result = self.gup.discard(gpa, len);
        let _ = writeln!(self.log, "discard {gpa:#x}+{len:#x} -> {result:?}");
        match result {
            Ok(n) if n <= len / PAGE + 1 => {
                if n > 0 {
                    self.tags.insert("discarded");
                }
            }
            Err(GupError::Fault { address, .. })
                if address >= gpa && address < gpa + len && self.map().find(address).is_none() => {}
            other => self.fail(&format!("discard {gpa:#x}+{len:#x} gave {other:?}")),
        }
        for &(ptr, old, g) in marks.iter().rev() {
            // SAFETY: as above.
            let byte = unsafe { &*ptr };
            let v = byte.swap(old, Ordering::Relaxed);
            if v != 0xa5 {
                self.fail(&format!(
                    "held page {g:#x} was discarded (marker 0xa5 reads {v:#x})"
                ));
            }
        }
        for h in &self.held {
            for p in &h.parts {
                for f in p.frames() {
                    let ft = p.region.frames();
                    if ft.is_unpopulated(f) || ft.is_frozen(f) {
                        self.fail("a held frame was marked unpopulated or left frozen by discard");
                    }
                }
            }
        }
    }

    fn holds(&self, region: &Arc<RamRegion>, f: u64) -> bool {
        self.held
            .iter()
            .any(|h| h.parts.iter().any(|p| p.holds(region, f)))
    }

    fn op_freeze(&mut self, inp: &mut Input) {
        let (ri, k) = (usize::from(inp.u8()), inp.u16());
        let map = self.map();
        if map.regions().is_empty() {
            return;
        }
        let region = map.regions()[ri % map.regions().len()].clone();
        // Mostly a frame some pin holds, else any.
        let held: Vec<u64> = self
            .held
            .iter()
            .flat_map(|h| h.parts.iter())
            .filter(|p| Arc::ptr_eq(&p.region, &region))
            .flat_map(|p| p.frames())
            .collect();
        let f = if k & 1 == 0 && !held.is_empty() {
            held[usize::from(k >> 1) % held.len()]
        } else {
            u64::from(k >> 1) % region.frames().frames()
        };
        let holds = self.holds(&region, f);
        let mine = self
            .frozen
            .iter()
            .any(|(r, g)| Arc::ptr_eq(r, &region) && *g == f);
        let result = region.frames().freeze(f);
        let _ = writeln!(
            self.log,
            "freeze {:#x} frame {f} (held {holds}, frozen {mine}) -> {result:?}",
            region.start()
        );
        match result {
            Ok(()) if holds || mine => {
                self.fail("froze a frame that is held or already frozen");
            }
            Ok(()) => {
                self.tags.insert("froze");
                self.frozen.push((region, f));
            }
            Err(_) if holds || mine => {
                self.tags.insert("freeze refused");
            }
            Err(e) => self.fail(&format!("freezing a free frame failed: {e:?}")),
        }
    }

    fn op_remove(&mut self, inp: &mut Input) {
        let ri = usize::from(inp.u8());
        let map = self.map();
        if map.regions().is_empty() {
            return;
        }
        let region = map.regions()[ri % map.regions().len()].clone();
        let busy = self
            .held
            .iter()
            .any(|h| h.parts.iter().any(|p| Arc::ptr_eq(&p.region, &region)))
            || self.frozen.iter().any(|(r, _)| Arc::ptr_eq(r, &region));
        let mine = self
            .frozen
            .iter()
            .filter(|(r, _)| Arc::ptr_eq(r, &region))
            .count() as u64;
        let result = self.gup.remove_region(region.start(), Duration::ZERO);
        let _ = writeln!(
            self.log,
            "remove {:#x} (busy {busy}) -> {:?}",
            region.start(),
            result.as_ref().map(|_| ())
        );
        let now = self.map();
        match result {
            Ok(r) => {
                if busy
                    || !Arc::ptr_eq(&r, region.region())
                    || now.regions().iter().any(|g| Arc::ptr_eq(g, &region))
                    || region.frames().frozen_count() != region.frames().frames()
                {
                    self.fail("region removal succeeded while busy, or left it mapped or unfrozen");
                }
                self.tags.insert("remove");
                self.removed.push(region);
            }
            Err(RegionError::Busy(n)) if busy && n >= 1 => {
                if now.regions().len() != map.regions().len()
                    || region.frames().frozen_count() != mine
                {
                    self.fail("a refused removal changed the map or left frames frozen");
                }
                self.tags.insert("remove busy");
            }
            Err(e) => self.fail(&format!("removal gave {e:?} (busy {busy})")),
        }
    }

    fn op_add(&mut self, inp: &mut Input) {
        let (b, k, ob) = (inp.u8(), inp.u16(), inp.u8());
        let (start, len) = if b & 1 == 0 {
            // An initial region again (after its removal), or overlapping.
            let (s, l, _) = self.layout.regions[usize::from(b >> 1) % self.layout.regions.len()];
            (s, l)
        } else {
            let s = self.layout.pick_gpa(b >> 1, k);
            (s, 64 * 1024 * (1 + u64::from(k >> 12)))
        };
        let options = RegionOptions {
            read_only: ob & 1 != 0,
            removable: ob & 2 != 0,
            lazy: ob & 4 != 0,
        };
        let map = self.map();
        if map.regions().len() >= MAX_REGIONS {
            return;
        }
        let overlap = map
            .regions()
            .iter()
            .any(|r| start < r.start() + r.len() && r.start() < start + len);
        let Ok(mut vm) = anonymous_regions(&[(start, len as usize)]) else {
            return;
        };
        let region = vm.pop().expect("one region");
        let result = self.gup.add_region(region.clone(), options);
        let _ = writeln!(
            self.log,
            "add {start:#x}+{len:#x} {options:?} (overlap {overlap}) -> {result:?}"
        );
        match result {
            Ok(()) if !overlap => {
                let now = self.map();
                let added = now.find(start).filter(|r| Arc::ptr_eq(r.region(), &region));
                if added.is_none_or(|r| r.options() != options || r.len() != len) {
                    self.fail("an added region is not in the map as given");
                }
                self.tags.insert("add");
            }
            Err(RegionError::Overlap(_)) if overlap => {
                self.tags.insert("add overlap");
            }
            other => self.fail(&format!("add_region gave {other:?} (overlap {overlap})")),
        }
    }

    /// Drop everything in an input-chosen order, unfreeze, and check that
    /// every counter and reference is back to zero (guarantee 5).
    fn finish(&mut self, inp: &mut Input) {
        let step = usize::from(inp.u8());
        while !self.held.is_empty() {
            let i = step % self.held.len();
            self.drop_held(i);
        }
        for (r, f) in std::mem::take(&mut self.frozen) {
            r.frames().unfreeze(f);
        }
        for r in self.all_regions() {
            if r.frames().total_refs() != 0 {
                self.fail(&format!("region {:#x} keeps references", r.start()));
            }
        }
        for r in self.map().regions() {
            if r.frames().frozen_count() != 0 {
                self.fail(&format!("region {:#x} keeps frozen frames", r.start()));
            }
        }
        let s: GupCounters = self.gup.stats();
        if s.pins_outstanding != 0
            || s.gets_outstanding != 0
            || s.longterm_pages != 0
            || self.gup.longterm_pages() != 0
        {
            self.fail("counters not back to zero after every pin was dropped");
        }
    }
}

/// The dirty bitmap of a region.
fn dirty_bitmap(r: &RamRegion) -> &DirtyBitmap {
    let mmap: &MmapRegion<DirtyBitmap> = r.region();
    mmap.bitmap()
}

/// What the checks of one request need.
struct ReqCtx<'a> {
    flags: GupFlags,
    physical: bool,
    addr: u64,
    len: u64,
    ctx: PagingContext,
    access: Access,
    handler_used: bool,
    hs: &'a HandlerState,
    cancelled: bool,
}

/// Counts of tags over many outcomes, for the corpus replay's report.
pub fn histogram(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        if let Some(mode) = o.mode {
            *m.entry(format!("mode {mode:?}")).or_default() += 1;
        }
        for t in &o.tags {
            *m.entry((*t).to_string()).or_default() += 1;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_small_inputs_run() {
        run(&[]);
        for b in 0..=255u8 {
            run(&[b; 48]);
        }
    }
}
