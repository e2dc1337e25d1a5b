// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The GUP engine: get_user_pages / pin_user_pages for guest memory
//! (DESIGN 4.3 to 4.7).
//!
//! Data flow, one file per step:
//!
//! * [`flags`]: the request flags and their validation.
//! * [`space`]: what addresses mean ([`AddressSpace`]: guest-physical, or
//!   guest-virtual through a [`PagingContext`](crate::paging::PagingContext)),
//!   the fault handler of the slow path, cancellation.
//! * [`memmap`]: the RAM regions and their published snapshot.
//! * [`dirty`]: the dirty bitmap write pins mark on release.
//! * [`frames`]: one counter per 4K frame and per 2M block, and the
//!   pin / get / freeze protocol.
//! * [`fast`]: the lockless fast path.
//! * [`slow`]: the slow path that faults pages in.
//! * [`pin`]: the result, extents held by an RAII [`Pinned`] handle.
//! * [`longterm`]: long-term pin accounting and host page locking.
//! * [`stats`]: the counters.
//! * [`error`]: the errors, mapped to errno.
//!
//! [`Gup`] ties them together: [`Gup::pin`] validates the flags, runs the
//! fast path on a lock-free snapshot, and hands whatever is left to the slow
//! path under the read side of the memory-map lock. Like Linux it returns
//! the pages it took, possibly fewer than asked, and an error only when it
//! took none.

pub mod dirty;
pub mod error;
pub mod fast;
pub mod flags;
pub mod frames;
pub mod longterm;
pub mod memmap;
pub mod pin;
pub mod slow;
pub mod space;
pub mod stats;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub use dirty::DirtyBitmap;
pub use error::{GupError, Injection};
pub use flags::GupFlags;
pub use frames::{FrameTable, Refused};
pub use longterm::Longterm;
pub use memmap::{GuestMemory, GuestRegion, MemoryMap, RamRegion, RegionError, RegionOptions};
pub use pin::{Extent, Pinned};
pub use space::{AddressSpace, CancelToken, FaultHandler, FaultOutcome, InjectIntoVcpu};
pub use stats::{Fallback, GupCounters, GupStats};

use memmap::PAGE_SIZE;
use pin::Builder;

/// Tunables of an engine.
#[derive(Clone, Copy, Debug)]
pub struct GupConfig {
    /// How long the slow path waits for a frozen frame before Again.
    pub freeze_wait: Duration,
    /// Long-term pin limit, in 4K pages (the VM's RLIMIT_MEMLOCK).
    pub longterm_limit_pages: u64,
}

impl Default for GupConfig {
    fn default() -> Self {
        GupConfig {
            freeze_wait: Duration::from_millis(10),
            longterm_limit_pages: u64::MAX,
        }
    }
}

/// The engine of one VM: its memory map, the memory-map lock, the counters.
pub struct Gup {
    map: ArcSwap<MemoryMap>,
    /// The memory-map lock: the slow path holds the read side, region
    /// changes the write side.
    lock: RwLock<()>,
    stats: Arc<GupStats>,
    longterm: Arc<Longterm>,
    config: GupConfig,
}

impl std::fmt::Debug for Gup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gup")
            .field("map", &self.map.load())
            .field("config", &self.config)
            .finish()
    }
}

impl Gup {
    /// An engine over `regions`.
    pub fn new(
        regions: Vec<(Arc<GuestRegion>, RegionOptions)>,
        config: GupConfig,
    ) -> Result<Self, RegionError> {
        let ram = regions
            .into_iter()
            .map(|(r, o)| RamRegion::new(r, o).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Gup {
            map: ArcSwap::from_pointee(MemoryMap::new(ram)?),
            lock: RwLock::new(()),
            stats: Arc::new(GupStats::default()),
            longterm: Arc::new(Longterm::new(config.longterm_limit_pages)),
            config,
        })
    }

    /// An engine over anonymous, eagerly usable memory at `ranges`
    /// (guest address, bytes).
    pub fn anonymous(ranges: &[(u64, usize)], options: RegionOptions) -> Result<Self, RegionError> {
        let regions = memmap::anonymous_regions(ranges)?
            .into_iter()
            .map(|r| (r, options))
            .collect();
        Gup::new(regions, GupConfig::default())
    }

    /// The current memory-map snapshot (no lock).
    pub fn memory_map(&self) -> Arc<MemoryMap> {
        self.map.load_full()
    }

    /// The counters.
    pub fn stats(&self) -> GupCounters {
        self.stats.snapshot()
    }

    /// Pages currently held by long-term pins.
    pub fn longterm_pages(&self) -> u64 {
        self.longterm.used_pages()
    }

    /// Take the pages of `[addr, addr + len)` in `space`, as `flags` say.
    pub fn pin(
        &self,
        space: &AddressSpace<'_>,
        addr: u64,
        len: u64,
        flags: GupFlags,
    ) -> Result<Pinned, GupError> {
        self.pin_cancellable(space, addr, len, flags, None)
    }

    /// [`Gup::pin`], cancelled between pages of the slow path by `cancel`.
    pub fn pin_cancellable(
        &self,
        space: &AddressSpace<'_>,
        addr: u64,
        len: u64,
        flags: GupFlags,
        cancel: Option<&CancelToken>,
    ) -> Result<Pinned, GupError> {
        flags.validate()?;
        let end = addr.checked_add(len).ok_or(GupError::Overflow)?;
        self.stats.request();
        let pin = flags.contains(GupFlags::PIN);
        let write = flags.contains(GupFlags::WRITE);
        let longterm = flags.contains(GupFlags::LONGTERM);
        let mut b = Builder::with_capacity(addr, len, pin, write);
        if len == 0 {
            return Ok(b.finish(self.stats.clone(), None, None));
        }
        let paging = match space {
            AddressSpace::Physical => None,
            AddressSpace::PageTables { ctx, handler } => {
                let (ctx, access) = space::access_for(ctx, flags);
                Some((ctx, access, *handler))
            }
        };

        // Fast path: a lock-free snapshot.
        let fallback = if longterm {
            Some(Fallback::Longterm)
        } else {
            let map = self.map.load();
            let end_reason = match &paging {
                None => fast::physical(&map, &mut b, end, write),
                Some((ctx, access, _)) => fast::page_tables(&map, &mut b, end, ctx, *access),
            };
            self.stats
                .fast(pin::pages_spanned(addr, b.bytes()), end_reason.is_none());
            end_reason
        };
        let Some(reason) = fallback else {
            return Ok(b.finish(self.stats.clone(), None, None));
        };
        if flags.contains(GupFlags::FAST_ONLY) {
            return self.finish(b, None, Some(GupError::Again));
        }

        // Slow path: the read side of the memory-map lock, a fresh snapshot.
        self.stats.fallback(reason);
        let before = b.bytes();
        let _guard = self.lock.read().unwrap_or_else(|e| e.into_inner());
        let map = self.map.load_full();
        let slow = slow::Slow {
            map: &map,
            stats: &self.stats,
            flags,
            cancel,
            freeze_wait: self.config.freeze_wait,
            longterm: longterm.then_some(&*self.longterm),
        };
        let short = slow.run(&mut b, end, paging.as_ref().map(|(c, a, h)| (c, *a, *h)));
        self.stats
            .slow(pin::pages_spanned(addr + before, b.bytes() - before));
        let lt = longterm.then(|| self.longterm.clone());
        self.finish(b, lt, short)
    }

    /// Linux's convention: an error only when nothing was taken.
    fn finish(
        &self,
        b: Builder,
        lt: Option<Arc<Longterm>>,
        short: Option<GupError>,
    ) -> Result<Pinned, GupError> {
        match short {
            Some(e) if b.bytes() == 0 => Err(e),
            short => Ok(b.finish(self.stats.clone(), lt, short)),
        }
    }

    /// Add a RAM region (takes the write side of the memory-map lock and
    /// publishes a new snapshot).
    pub fn add_region(
        &self,
        region: Arc<GuestRegion>,
        options: RegionOptions,
    ) -> Result<(), RegionError> {
        let _guard = self.lock.write().unwrap_or_else(|e| e.into_inner());
        let ram = Arc::new(RamRegion::new(region, options)?);
        let next = self.map.load().with(ram)?;
        self.map.store(Arc::new(next));
        Ok(())
    }

    /// Remove the RAM region that starts at `start`: freeze every frame
    /// (waiting up to `wait` for pins to go), then publish a snapshot
    /// without it. Refused with Busy if frames stay pinned; the region is
    /// never unmapped under a pin (it stays mapped until the last snapshot
    /// that refers to it is dropped, and its frames stay frozen).
    pub fn remove_region(
        &self,
        start: u64,
        wait: Duration,
    ) -> Result<Arc<GuestRegion>, RegionError> {
        let _guard = self.lock.write().unwrap_or_else(|e| e.into_inner());
        let map = self.map.load_full();
        let index = map.position(start).ok_or(RegionError::NotFound(start))?;
        let ram = map.regions()[index].clone();
        let ft = ram.frames();
        let deadline = Instant::now() + wait;
        let mut frozen = 0u64;
        while frozen < ft.frames() {
            match ft.freeze(frozen) {
                Ok(()) => frozen += 1,
                Err(_) if Instant::now() < deadline => std::thread::yield_now(),
                Err(_) => {
                    let busy = (frozen..ft.frames()).filter(|&f| ft.referenced(f)).count();
                    for f in 0..frozen {
                        ft.unfreeze(f);
                    }
                    return Err(RegionError::Busy(busy.max(1) as u64));
                }
            }
        }
        self.map.store(Arc::new(map.without(index)?));
        Ok(ram.region().clone())
    }

    /// Balloon: give the host pages of `[gpa, gpa + len)` back (MADV_DONTNEED)
    /// where no one holds a reference. Each frame is frozen first (a pinned
    /// frame cannot be frozen), discarded, marked unpopulated, unfrozen.
    /// Returns how many frames were discarded; referenced ones are skipped.
    pub fn discard(&self, gpa: u64, len: u64) -> Result<u64, GupError> {
        let map = self.map.load_full();
        let end = gpa.checked_add(len).ok_or(GupError::Overflow)?;
        let mut done = 0;
        let mut a = gpa & !(PAGE_SIZE - 1);
        while a < end {
            let region = map.find(a).ok_or(GupError::fault_at(a))?;
            let ft = region.frames();
            let f = region.frame_index(a);
            if ft.freeze(f).is_ok() {
                let host = region.host_addr(a);
                // SAFETY: the page is frozen, so no one holds or can take a
                // reference to it; it lies inside the region's live mapping
                // (the snapshot holds it). DONTNEED on a private anonymous
                // mapping replaces it with zeroes on the next access.
                let rc = unsafe {
                    libc::madvise(
                        host as *mut libc::c_void,
                        PAGE_SIZE as usize,
                        libc::MADV_DONTNEED,
                    )
                };
                if rc == 0 {
                    ft.mark_unpopulated(f);
                    done += 1;
                }
                ft.unfreeze(f);
            }
            a += PAGE_SIZE;
        }
        Ok(done)
    }

    /// Whether the frame holding `gpa` may be DMA-pinned (false positives
    /// possible, false negatives never).
    pub fn maybe_dma_pinned(&self, gpa: u64) -> bool {
        let map = self.map.load();
        map.find(gpa)
            .is_some_and(|r| r.frames().maybe_dma_pinned(r.frame_index(gpa)))
    }
}
