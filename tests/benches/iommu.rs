// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `cargo bench -p integration-tests --bench iommu`: guest-virtual DMA
//! translation by the virtio-iommu's page-table domains against
//! KVM_TRANSLATE, per 4K page, in the same run.
//!
//! One page-table image (4-level, [`PAGES`] 4K leaves onto a random
//! permutation of the data frames: the hard case, every page its own
//! extent; every entry P|RW|US|A, leaves also D) in guest RAM that is both
//! a KVM memory slot and the GUP engine's region. Its root is attached to
//! endpoint 0's domain by a real ATTACH_TABLE request (`table_flags` WP|NXE,
//! user accesses), and a vCPU is loaded with the same CR3/CR0/CR4/EFER.
//!
//! Rows (ns per 4K page, median of the runs):
//! * `kvm KVM_TRANSLATE per page`: one vCPU ioctl per page over the range
//!   (how a VMM without a walker translates a guest-virtual address);
//! * `iommu Endpoint::pin`: the device's DMA path: one `Endpoint::pin` of
//!   the whole range (GUP fast path, one pin per page) and its release,
//!   divided by the pages; also for a write (dirty bitmap marked on
//!   release);
//! * `iommu Endpoint::translate per page`: one call per page (no pin);
//! * references: `Gup::pin` of the same range directly (what the IOMMU
//!   layer adds), and guest-mm's `translate` per page.
//!
//! Every row's result is checked against the image (untimed). Prints
//! `ratio translate_kvm/iommu_pt <v>`: KVM_TRANSLATE ns per page over the
//! IOMMU's pin+release ns per page; and `ratio
//! translate_kvm/iommu_translate <v>`. Without /dev/kvm the KVM row is
//! skipped with a SKIPPED line and the ratios print `n/a`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use devices::virtio::iommu::{Endpoint, Iommu, IommuHandle};
use guest_mm::gup::{AddressSpace, GuestMemory, GupFlags, Pinned};
use guest_mm::paging::context::{CR0_PG, CR0_WP, CR4_PAE, EFER_LMA, EFER_LME, EFER_NXE};
use guest_mm::paging::{translate, Access, PagingContext};
use integration_tests::iommu_rig::{attach_table, GupRam};
use integration_tests::kvm::{TestVm, VmError};
use integration_tests::ptgen::Rng;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// 4K pages in the benched range (256 MiB).
const PAGES: u64 = 65_536;
const PAGE: u64 = 4096;
/// Data frames: `[0, PAGES * PAGE)`.
const DATA_BYTES: u64 = PAGES * PAGE;
/// Paging structures after the data: PML4, PDPT, PD, then the PTs.
const TABLES: u64 = DATA_BYTES;
const TABLE_BYTES: u64 = (3 + PAGES / 512) * PAGE;
const RAM_BYTES: u64 = DATA_BYTES + TABLE_BYTES;
/// First benched guest-virtual address (PML4 index 1, 1 GiB aligned).
const VA: u64 = 0x80_4000_0000;
const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
/// ATTACH_TABLE table_flags (docs/guest-va-dma.md): WP | NXE, user accesses.
const TABLE_FLAGS: u64 = 1 | 1 << 1;

/// Samples per in-memory row.
const RUNS: usize = 11;
/// Runs of the KVM row (each translates every page once).
const KVM_RUNS: usize = 5;
/// Shortest sample of an in-memory row.
const MIN_SAMPLE: Duration = Duration::from_millis(20);

/// Writes the image; returns the data frame of each page.
fn build(mem: &GuestMemoryMmap) -> Vec<u64> {
    let (pml4, pdpt, pd, pts) = (TABLES, TABLES + PAGE, TABLES + 2 * PAGE, TABLES + 3 * PAGE);
    let w = |gpa: u64, v: u64| mem.write_obj(v, GuestAddress(gpa)).expect("table in RAM");
    let index = |va: u64, level: u32| (va >> (12 + 9 * (level - 1))) & 511;
    w(pml4 + 8 * index(VA, 4), pdpt | P | RW | US | A);
    w(pdpt + 8 * index(VA, 3), pd | P | RW | US | A);
    let mut frames: Vec<u64> = (0..PAGES).collect();
    let mut rng = Rng::new(0x5eed_1000);
    for i in (1..frames.len()).rev() {
        frames.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for t in 0..PAGES / 512 {
        w(pd + 8 * t, (pts + t * PAGE) | P | RW | US | A);
    }
    for (i, &f) in frames.iter().enumerate() {
        w(pts + 8 * i as u64, (f * PAGE) | P | RW | US | A | D);
    }
    // Host pages of the data frames present, as in a running guest.
    for f in 0..PAGES {
        mem.write_obj(f, GuestAddress(f * PAGE))
            .expect("data in RAM");
    }
    frames
}

fn context(maxphyaddr: u8) -> PagingContext {
    PagingContext::new(
        CR0_PG | CR0_WP | 1,
        TABLES,
        CR4_PAE,
        EFER_LME | EFER_LMA | EFER_NXE,
    )
    .with_maxphyaddr(maxphyaddr)
}

/// ATTACH_TABLE of `pgd` for endpoint 0, domain 1, 48-bit.
fn attach(h: &IommuHandle, mem: &GuestMemory, pgd: u64) {
    let out = attach_table(h, mem, 1, 0, pgd, TABLE_FLAGS, 48);
    assert_eq!(out, [0, 0, 0, 0], "ATTACH_TABLE status");
}

struct Row {
    name: &'static str,
    samples: Vec<f64>,
}

impl Row {
    fn median(&self) -> f64 {
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.samples.iter().copied().fold(0.0, f64::max)
    }
}

struct Bench {
    ram: GupRam,
    ep: Endpoint,
    ctx: PagingContext,
    frames: Vec<u64>,
    pins: Vec<Pinned>,
}

impl Bench {
    fn expected(&self, page: u64) -> u64 {
        self.frames[page as usize] * PAGE
    }

    /// Endpoint::pin of the whole range into `self.pins`.
    fn pin_range(&mut self, write: bool) {
        self.ep
            .pin(
                &self.ram.gup,
                VA,
                DATA_BYTES,
                write,
                GupFlags::NONE,
                None,
                &mut self.pins,
            )
            .expect("Endpoint::pin of the mapped range");
    }

    /// Endpoint::pin of the whole range and its release; pages pinned.
    fn iommu_pin(&mut self, write: bool) -> u64 {
        self.pin_range(write);
        let pages = self.pins.iter().map(Pinned::pages).sum();
        self.pins.clear();
        pages
    }

    /// Endpoint::translate of every page.
    fn iommu_translate(&mut self) -> u64 {
        let mut sum = 0u64;
        for p in 0..PAGES {
            let g = self
                .ep
                .translate(&self.ram.gup, VA + p * PAGE, false)
                .expect("Endpoint::translate of a mapped page");
            sum = sum.wrapping_add(g);
        }
        black_box(sum);
        PAGES
    }

    /// Gup::pin of the range directly, with the flags Endpoint::pin uses.
    fn gup_pin(&mut self) -> u64 {
        let space = AddressSpace::page_tables(self.ctx);
        let flags = GupFlags::PIN | GupFlags::TOUCH | GupFlags::USER;
        let p = self
            .ram
            .gup
            .pin(&space, VA, DATA_BYTES, flags)
            .expect("Gup::pin");
        p.pages()
    }

    /// guest-mm's translate of every page.
    fn walker(&mut self) -> u64 {
        let mut sum = 0u64;
        for p in 0..PAGES {
            let t = translate(
                &self.ram.gmem,
                &self.ctx,
                VA + p * PAGE,
                Access::user_read(),
            )
            .expect("mapped");
            sum = sum.wrapping_add(t.gpa);
        }
        black_box(sum);
        PAGES
    }

    /// Untimed: every row's answer is the image's.
    fn check(&mut self) {
        for write in [false, true] {
            self.pin_range(write);
            let mut page = 0;
            for p in &self.pins {
                for e in p.iter_extents() {
                    assert_eq!(e.addr, VA + page * PAGE, "extents in order");
                    assert_eq!(e.len, PAGE, "shuffled frames: one page per extent");
                    assert_eq!(e.gpa, self.expected(page), "pin of page {page}");
                    page += 1;
                }
            }
            assert_eq!(page, PAGES, "Endpoint::pin took every page");
            self.pins.clear();
        }
        for p in (0..PAGES).step_by(7) {
            let va = VA + p * PAGE + 0x123;
            let g = self.ep.translate(&self.ram.gup, va, true).expect("mapped");
            assert_eq!(g, self.expected(p) + 0x123, "Endpoint::translate");
        }
        let c = self.ram.gup.stats();
        assert_eq!(c.pins_outstanding, 0, "pins released");
    }
}

type RowFn = fn(&mut Bench) -> u64;

fn sample(b: &mut Bench, f: RowFn, reps: u32) -> f64 {
    let t = Instant::now();
    let mut pages = 0;
    for _ in 0..reps {
        pages += f(b);
    }
    let ns = t.elapsed().as_nanos() as f64;
    assert_eq!(pages, PAGES * u64::from(reps), "a row did fewer pages");
    ns / pages as f64
}

fn calibrate(b: &mut Bench, f: RowFn) -> u32 {
    sample(b, f, 1);
    let t = Instant::now();
    sample(b, f, 1);
    let once = t.elapsed().max(Duration::from_nanos(1));
    (MIN_SAMPLE.as_nanos() / once.as_nanos()).clamp(1, 1 << 16) as u32
}

/// KVM_TRANSLATE of every page, `KVM_RUNS` times, checked; `Err` says why
/// there is no KVM row.
fn kvm_row(vm: Option<&TestVm>, b: &Bench) -> Result<Row, String> {
    let vm = vm.ok_or("/dev/kvm is absent")?;
    let ctx = b.ctx;
    vm.set_paging(&ctx).map_err(|e| e.to_string())?;
    let mut row = Row {
        name: "kvm KVM_TRANSLATE per page",
        samples: Vec::new(),
    };
    let mut got = vec![None; PAGES as usize];
    for _ in 0..KVM_RUNS {
        let t = Instant::now();
        for (p, out) in got.iter_mut().enumerate() {
            *out = vm
                .translate(VA + p as u64 * PAGE)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        row.samples
            .push(t.elapsed().as_nanos() as f64 / PAGES as f64);
        for (p, g) in got.iter().enumerate() {
            assert_eq!(*g, Some(b.expected(p as u64)), "KVM_TRANSLATE page {p}");
        }
    }
    Ok(row)
}

fn main() {
    let t0 = Instant::now();
    // The VM's memory is the bench's RAM; without /dev/kvm, plain memory.
    let (vm, mem) = match TestVm::new(RAM_BYTES as usize, None) {
        Ok(vm) => {
            let mem = vm.mem.clone();
            (Some(vm), mem)
        }
        Err(VmError::NoKvm(why)) if !std::path::Path::new("/dev/kvm").exists() => {
            println!("SKIPPED kvm_translate: {why}");
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_BYTES as usize)])
                .expect("guest RAM");
            (None, mem)
        }
        Err(e) => panic!("KVM test VM: {e}"),
    };
    let maxphyaddr = vm.as_ref().map_or(48, |v| v.cpu.maxphyaddr);
    let frames = build(&mem);
    let ram = GupRam::new(mem);
    let (_iommu, handle) = Iommu::new(vec![0], maxphyaddr).expect("virtio-iommu");
    attach(&handle, &ram.gmem, TABLES);
    let ep = handle.endpoint(0).expect("endpoint 0");
    let mut b = Bench {
        ram,
        ep,
        ctx: context(maxphyaddr),
        frames,
        pins: Vec::new(),
    };
    b.check();
    println!(
        "iommu bench: {PAGES} 4K pages ({} MiB) mapped onto shuffled frames, 4-level, \
         ATTACH_TABLE table_flags WP|NXE (user); in-memory rows {RUNS} rounds, KVM \
         {KVM_RUNS} runs; ns per 4K page",
        DATA_BYTES >> 20
    );

    let mut rows: Vec<(Row, RowFn, u32)> = vec![
        (
            Row {
                name: "iommu Endpoint::pin + release (read)",
                samples: Vec::new(),
            },
            |b| b.iommu_pin(false),
            1,
        ),
        (
            Row {
                name: "iommu Endpoint::pin + release (write)",
                samples: Vec::new(),
            },
            |b| b.iommu_pin(true),
            1,
        ),
        (
            Row {
                name: "iommu Endpoint::translate per page",
                samples: Vec::new(),
            },
            Bench::iommu_translate,
            1,
        ),
        (
            Row {
                name: "ref: Gup::pin + release (read)",
                samples: Vec::new(),
            },
            Bench::gup_pin,
            1,
        ),
        (
            Row {
                name: "ref: guest-mm translate per page",
                samples: Vec::new(),
            },
            Bench::walker,
            1,
        ),
    ];
    for r in &mut rows {
        r.2 = calibrate(&mut b, r.1);
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut rng = Rng::new(0x0bad_cafe);
    for _ in 0..RUNS {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for &i in &order {
            let (row, f, reps) = &mut rows[i];
            row.samples.push(sample(&mut b, *f, *reps));
        }
    }
    let kvm = kvm_row(vm.as_ref(), &b);
    b.check();

    let mut table: Vec<Row> = rows.into_iter().map(|r| r.0).collect();
    let kvm_ns = match kvm {
        Ok(row) => {
            let m = row.median();
            table.insert(0, row);
            Ok(m)
        }
        Err(why) => {
            println!("SKIPPED kvm_translate: {why}");
            Err(why)
        }
    };
    println!();
    println!("{:<42} {:>11} {:>11} {:>11}", "row", "median", "min", "max");
    for r in &table {
        println!(
            "{:<42} {:>11.3} {:>11.3} {:>11.3}",
            r.name,
            r.median(),
            r.min(),
            r.max()
        );
    }
    let get = |name: &str| {
        table
            .iter()
            .find(|r| r.name == name)
            .map(Row::median)
            .expect("row exists")
    };
    let pin = get("iommu Endpoint::pin + release (read)");
    let tr = get("iommu Endpoint::translate per page");
    let gup = get("ref: Gup::pin + release (read)");
    println!();
    println!("bench time {:.1} s", t0.elapsed().as_secs_f64());
    println!(
        "(the IOMMU layer over Gup::pin: {:.3}x; write pins, dirty bitmap marked on release: \
         {:.3} ns/page)",
        pin / gup,
        get("iommu Endpoint::pin + release (write)")
    );
    match kvm_ns {
        Ok(k) => {
            println!("ratio translate_kvm/iommu_pt {:.1}", k / pin);
            println!("ratio translate_kvm/iommu_translate {:.1}", k / tr);
        }
        Err(why) => {
            println!("ratio translate_kvm/iommu_pt n/a ({why})");
            println!("ratio translate_kvm/iommu_translate n/a ({why})");
        }
    }
}
