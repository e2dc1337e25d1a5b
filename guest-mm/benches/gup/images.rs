// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Page-table images for the GUP bench.
//!
//! One guest RAM region at guest-physical 0 of 1 GiB + 64 MiB, lazily backed
//! anonymous memory with a dirty bitmap (as a VMM would hand it to KVM):
//!
//! * `[0, 1 GiB)`: the data frames the images map;
//! * `[1 GiB, 1 GiB + 64 MiB)`: the paging structures, 4 MiB per image.
//!
//! Each [`Image`] is a 4-level hierarchy of its own (its own CR3) mapping the
//! same guest-virtual range `[VA, VA + 1 GiB)` onto the data frames with one
//! kind of leaf ([`Leaves`]). Every entry is P|RW|US|A (leaves also D), so a
//! user write walk needs nothing the fast path would bail on;
//! [`Image::clear_accessed_dirty`] and [`Image::set_accessed_dirty`] switch
//! the A/D bits off and back on for the slow-path row.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use guest_mm::gup::DirtyBitmap;
use guest_mm::paging::context::{CR0_PG, CR0_WP, CR4_PAE, EFER_LMA, EFER_LME, EFER_NXE};
use guest_mm::paging::entry::{PTE_A, PTE_D, PTE_P, PTE_PS, PTE_RW, PTE_US};
use guest_mm::paging::{CpuFeatures, PagingContext, PagingMode};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};

/// The guest memory every image lives in.
pub type Mem = GuestMemoryMmap<DirtyBitmap>;

/// 1 GiB.
pub const GIB: u64 = 1 << 30;
/// A 4K page.
pub const PAGE: u64 = 1 << 12;
/// 4K pages in the benched range (1 GiB).
pub const PAGES: u64 = GIB / PAGE;
/// Guest-physical base of the data frames.
pub const DATA_BASE: u64 = 0;
/// Bytes of data frames (everything an image maps).
pub const DATA_BYTES: u64 = GIB;
/// Guest-physical base of the paging structures.
pub const TABLES_BASE: u64 = DATA_BASE + DATA_BYTES;
/// Bytes reserved for paging structures.
pub const TABLES_BYTES: u64 = 64 << 20;
/// Guest RAM: data frames and tables, one region at guest-physical 0.
pub const RAM_BYTES: u64 = DATA_BYTES + TABLES_BYTES;
/// Table bytes per image: PML4, PDPT, PD and 512 PTs fit in 2 MiB + 12 KiB.
const IMAGE_TABLE_BYTES: u64 = 4 << 20;
/// First benched guest-virtual address: PML4 index 0, PDPT index 256, 1 GiB
/// aligned so a single 1G leaf maps the whole range.
pub const VA: u64 = 0x40_0000_0000;
/// MAXPHYADDR of the images' contexts (the host's).
pub const MAXPHYADDR: u8 = 48;
/// Flags of every non-leaf entry.
pub const TABLE_FLAGS: u64 = PTE_P | PTE_RW | PTE_US | PTE_A;
/// Flags of every leaf entry (plus PS above level 1).
pub const LEAF_FLAGS: u64 = PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D;

/// The kind of leaf an image maps the range with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaves {
    /// 4K leaves onto a random permutation of the data frames: the hard case
    /// (every page is its own extent, counters are hit in random order).
    Shuffled4K,
    /// 4K leaves onto consecutive data frames.
    Contiguous4K,
    /// 2M leaves (PDEs with PS).
    Huge2M,
    /// One 1G leaf (a PDPTE with PS; needs 1-GByte page support).
    Huge1G,
}

impl Leaves {
    /// Every kind, in table order.
    pub const ALL: [Leaves; 4] = [
        Leaves::Shuffled4K,
        Leaves::Contiguous4K,
        Leaves::Huge2M,
        Leaves::Huge1G,
    ];

    /// Short name for table rows.
    pub fn name(self) -> &'static str {
        match self {
            Leaves::Shuffled4K => "4K shuffled",
            Leaves::Contiguous4K => "4K contiguous",
            Leaves::Huge2M => "2M",
            Leaves::Huge1G => "1G",
        }
    }
}

/// One page-table image in [`Mem`].
pub struct Image {
    /// The leaf kind.
    pub leaves: Leaves,
    /// The paging context: 4-level paging, CR3 at this image's PML4,
    /// WP, NXE, 1-GByte pages, MAXPHYADDR 48.
    pub ctx: PagingContext,
    /// First guest-virtual address mapped ([`VA`]).
    pub va: u64,
    /// Bytes mapped from `va` (1 GiB).
    pub len: u64,
    /// Every paging structure of the image: (guest-physical address, level).
    tables: Vec<(u64, u8)>,
    /// 4K images: the data frame number (from [`DATA_BASE`]) of page `i`.
    frames: Vec<u32>,
}

/// splitmix64: a small deterministic generator for shuffles.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The 8-byte entry at `gpa`, as an atomic in host memory.
fn entry(mem: &Mem, gpa: u64) -> &AtomicU64 {
    let host = mem
        .get_host_address(GuestAddress(gpa))
        .expect("bench tables are in RAM");
    assert!(gpa % 8 == 0 && (host as usize) % 8 == 0);
    // SAFETY: `host` points at 8 bytes inside a live mmap of `mem` (the
    // region holds every table: `gpa` is below RAM_BYTES and 8-aligned, so
    // the entry does not cross the region's end), it is 8-byte aligned
    // (checked above), and the reference is bounded by the borrow of `mem`,
    // which keeps the mapping alive. Guest memory is shared with whatever
    // else runs (KVM, the engine), so it is only accessed atomically.
    unsafe { AtomicU64::from_ptr(host.cast::<u64>()) }
}

fn write(mem: &Mem, gpa: u64, value: u64) {
    entry(mem, gpa).store(value, Ordering::Release);
}

/// One region of [`Mem`].
pub type Region = GuestRegionMmap<DirtyBitmap>;

/// Guest RAM for the images: one lazily backed anonymous region of
/// [`RAM_BYTES`] at guest-physical 0, with a dirty bitmap. Also returns the
/// region itself (shared, not copied), for an engine that is built from
/// regions.
pub fn guest_memory() -> (Mem, Vec<Arc<Region>>) {
    let region =
        Region::from_range(GuestAddress(0), RAM_BYTES as usize, None).expect("guest RAM region");
    let regions = vec![Arc::new(region)];
    let mem = Mem::from_arc_regions(regions.clone()).expect("guest memory");
    (mem, regions)
}

/// Build the image of `leaves` in `mem`. Each kind has its own table area,
/// so all four coexist and share the data frames.
pub fn build(mem: &Mem, leaves: Leaves) -> Image {
    let slot = Leaves::ALL
        .iter()
        .position(|&l| l == leaves)
        .expect("every kind is in ALL") as u64;
    let base = TABLES_BASE + slot * IMAGE_TABLE_BYTES;
    let (pml4, pdpt, pd) = (base, base + PAGE, base + 2 * PAGE);
    let pts = base + 3 * PAGE;
    let index = |va: u64, level: u32| (va >> (12 + 9 * (level - 1))) & 511;
    let mut tables = vec![(pml4, 4u8), (pdpt, 3)];
    let mut frames = Vec::new();
    write(mem, pml4 + 8 * index(VA, 4), pdpt | TABLE_FLAGS);
    match leaves {
        Leaves::Huge1G => {
            write(
                mem,
                pdpt + 8 * index(VA, 3),
                DATA_BASE | LEAF_FLAGS | PTE_PS,
            );
        }
        Leaves::Huge2M => {
            tables.push((pd, 2));
            write(mem, pdpt + 8 * index(VA, 3), pd | TABLE_FLAGS);
            for i in 0..512 {
                write(
                    mem,
                    pd + 8 * i,
                    (DATA_BASE + (i << 21)) | LEAF_FLAGS | PTE_PS,
                );
            }
        }
        Leaves::Shuffled4K | Leaves::Contiguous4K => {
            tables.push((pd, 2));
            write(mem, pdpt + 8 * index(VA, 3), pd | TABLE_FLAGS);
            frames = (0..PAGES as u32).collect();
            if leaves == Leaves::Shuffled4K {
                // Fisher-Yates with a fixed seed: the same permutation every run.
                let mut rng = Rng(0x5eed_0f9a_9e00);
                for i in (1..frames.len()).rev() {
                    let j = (rng.next() % (i as u64 + 1)) as usize;
                    frames.swap(i, j);
                }
            }
            for i in 0..512u64 {
                let pt = pts + i * PAGE;
                tables.push((pt, 1));
                write(mem, pd + 8 * i, pt | TABLE_FLAGS);
                for j in 0..512u64 {
                    let frame = u64::from(frames[(i * 512 + j) as usize]);
                    write(mem, pt + 8 * j, (DATA_BASE + frame * PAGE) | LEAF_FLAGS);
                }
            }
        }
    }
    assert!(tables.len() as u64 * PAGE <= IMAGE_TABLE_BYTES);
    let ctx = PagingContext::new(
        CR0_PG | CR0_WP | 1,
        pml4,
        CR4_PAE,
        EFER_LME | EFER_LMA | EFER_NXE,
    )
    .with_maxphyaddr(MAXPHYADDR)
    .with_features(CpuFeatures {
        gbpages: true,
        pse36: true,
    });
    assert_eq!(ctx.mode(), PagingMode::Level4);
    Image {
        leaves,
        ctx,
        va: VA,
        len: GIB,
        tables,
        frames,
    }
}

/// Build every kind of image, in [`Leaves::ALL`] order.
pub fn build_all(mem: &Mem) -> Vec<Image> {
    Leaves::ALL.iter().map(|&l| build(mem, l)).collect()
}

/// The image of `leaves` among `images`.
pub fn find(images: &[Image], leaves: Leaves) -> &Image {
    images
        .iter()
        .find(|i| i.leaves == leaves)
        .expect("every kind of image is built")
}

impl Image {
    /// The guest-physical address `va` maps to, from the image's own
    /// construction (not from a walk), or `None` outside the range.
    pub fn expected_gpa(&self, va: u64) -> Option<u64> {
        let off = va.checked_sub(self.va).filter(|&o| o < self.len)?;
        Some(match self.leaves {
            Leaves::Shuffled4K | Leaves::Contiguous4K => {
                DATA_BASE + u64::from(self.frames[(off / PAGE) as usize]) * PAGE + off % PAGE
            }
            Leaves::Huge2M | Leaves::Huge1G => DATA_BASE + off,
        })
    }

    /// Call `f` with the guest-physical address, level and value of every
    /// present entry of the image.
    fn for_each_entry(&self, mem: &Mem, mut f: impl FnMut(&AtomicU64, u8, u64)) {
        for &(table, level) in &self.tables {
            for i in 0..512 {
                let e = entry(mem, table + 8 * i);
                let v = e.load(Ordering::Acquire);
                if v & PTE_P != 0 {
                    f(e, level, v);
                }
            }
        }
    }

    /// The A/D bits an entry carries when "perfect": A everywhere, D on leaves.
    fn ad_bits(level: u8, value: u64) -> u64 {
        if level == 1 || value & PTE_PS != 0 {
            PTE_A | PTE_D
        } else {
            PTE_A
        }
    }

    /// Clear A in every entry of the image and D in every leaf, as a guest
    /// kernel's reclaim scan would: the fast path must bail on every page.
    pub fn clear_accessed_dirty(&self, mem: &Mem) {
        self.for_each_entry(mem, |e, level, v| {
            e.store(v & !Self::ad_bits(level, v), Ordering::Release)
        });
    }

    /// Set A in every entry and D in every leaf again.
    pub fn set_accessed_dirty(&self, mem: &Mem) {
        self.for_each_entry(mem, |e, level, v| {
            e.store(v | Self::ad_bits(level, v), Ordering::Release)
        });
    }

    /// Whether every entry has its A bit and every leaf its D bit (what a
    /// TOUCH write pin of the whole range must leave behind).
    pub fn all_accessed_dirty(&self, mem: &Mem) -> bool {
        let mut all = true;
        self.for_each_entry(mem, |_, level, v| {
            let want = Self::ad_bits(level, v);
            all &= v & want == want;
        });
        all
    }
}

/// Host address and length of the data frames.
fn data_host(mem: &Mem) -> (*mut u8, usize) {
    let host = mem
        .get_host_address(GuestAddress(DATA_BASE))
        .expect("data frames are in RAM");
    (host, DATA_BYTES as usize)
}

/// Make every data frame present in host memory (write-faulted in), so page
/// faults do not pollute the timed rows. MADV_POPULATE_WRITE (Linux 5.14),
/// else one write per page.
pub fn populate_data(mem: &Mem) {
    let (host, len) = data_host(mem);
    // SAFETY: [host, host + len) is the data part of a mapping owned by
    // `mem`; populating it only faults pages in, contents are unchanged.
    let rc = unsafe { libc::madvise(host.cast(), len, libc::MADV_POPULATE_WRITE) };
    if rc != 0 {
        for off in (0..len).step_by(PAGE as usize) {
            // SAFETY: `off` is inside the data part of `mem`'s mapping;
            // writing a byte of a data frame (whose contents nobody reads)
            // is the whole point. Volatile so it is not optimized out.
            unsafe { host.add(off).write_volatile(0) };
        }
    }
    assert_eq!(resident_data_pages(mem), PAGES, "data frames populated");
}

/// How many data frames are resident in host memory (mincore).
pub fn resident_data_pages(mem: &Mem) -> u64 {
    let (host, len) = data_host(mem);
    let mut vec = vec![0u8; len / PAGE as usize];
    // SAFETY: [host, host + len) is mapped (owned by `mem`), page aligned
    // (mmap), and `vec` has one byte per page of it.
    let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 != 0).count() as u64
}
