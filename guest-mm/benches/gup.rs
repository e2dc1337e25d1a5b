// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! GUP throughput: `cargo bench -p guest-mm --bench gup`.
//!
//! Pins and unpins 1 GiB of guest-virtual space (262144 4K pages) mapped by
//! 4-level tables in a real `GuestMemoryMmap<DirtyBitmap>` (guest-mm's `gup::GuestMemory`), and prints the
//! median ns per 4K page of each row, then the ratios of issue 3. All rows
//! run in the same process, so the ratios compare like with like; absolute
//! times drift on shared machines.
//!
//! Rows:
//! * fast path (4K shuffled, 4K contiguous, 2M, 1G leaves, everything
//!   already perfect), slow path with A/D clear, slow path with the host
//!   pages not populated (the GUP engine, through the hooks in [`Gup`]);
//! * the ideal baseline of DESIGN 8 (range walk + one atomic add and one
//!   atomic sub per page, inline in `gup/ideal.rs`), and the walk alone;
//! * Linux's own pin+unpin of 262144 present 4K host pages (io_uring buffer
//!   registration, `gup/linux_pin.rs`) and KVM_TRANSLATE per page
//!   (`gup/kvm_translate.rs`), each skipped with a SKIPPED line and an `n/a`
//!   ratio where unavailable;
//! * reference rows: the ideal baseline on the other leaf kinds and
//!   guest-mm's own `walk_range` without pins.
//!
//! The in-memory rows run interleaved, one sample of each per round, so a
//! noisy neighbour hits them all alike.

#[path = "gup/ideal.rs"]
mod ideal;
#[path = "gup/images.rs"]
mod images;
#[path = "gup/kvm_translate.rs"]
mod kvm_translate;
#[path = "gup/linux_pin.rs"]
mod linux_pin;

use std::hint::black_box;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_mm::gup::{AddressSpace, Gup as Engine, GupConfig, GupFlags, RegionOptions};
use guest_mm::paging::{translate, walk_range, Access, RangeOutcome};

use ideal::Ideal;
use images::{Image, Leaves, Mem, Region, PAGE, PAGES, RAM_BYTES};

// ---------------------------------------------------------------------------
// GUP ENGINE HOOKS: the only code to change when guest_mm::gup lands.
//
// Each hook pins the whole range [img.va, img.va + img.len) of `img` for a
// user write (PIN | WRITE, plus what the row needs), holds every pin, then
// releases them all, and returns the number of 4K pages pinned. The bench
// checks that count (a short pin must not look fast) and, for the slow rows,
// that the engine did the slow work (A/D set, host pages resident).
// ---------------------------------------------------------------------------

/// True while the hooks run stand-ins instead of the GUP engine. The engine
/// is wired in.
const STAND_IN: bool = false;

/// The GUP engine under test.
struct Gup {
    engine: Engine,
}

impl Gup {
    /// Set the engine up over the bench's guest RAM: `mem`, whose only
    /// region is `regions[0]` (the same mapping, shared).
    fn new(_mem: &Mem, regions: &[Arc<Region>]) -> Self {
        let regions = regions
            .iter()
            .map(|r| (r.clone(), RegionOptions::default()))
            .collect();
        Gup {
            engine: Engine::new(regions, GupConfig::default()).expect("bench memory map"),
        }
    }

    fn pin_unpin(&self, img: &Image, flags: GupFlags) -> u64 {
        let space = AddressSpace::page_tables(img.ctx);
        match self.engine.pin(&space, img.va, img.len, flags) {
            Ok(p) => p.pages(),
            Err(e) => panic!("GUP engine: {e}"),
        }
    }

    /// Fast path: every entry has A and D, every host page is present.
    fn fast_pin_unpin(&mut self, _mem: &Mem, img: &Image) -> u64 {
        self.pin_unpin(
            img,
            GupFlags::PIN | GupFlags::WRITE | GupFlags::USER | GupFlags::FAST_ONLY,
        )
    }

    /// Fast path, read-only pins (nothing to mark dirty on release).
    fn fast_read_pin_unpin(&mut self, _mem: &Mem, img: &Image) -> u64 {
        self.pin_unpin(img, GupFlags::PIN | GupFlags::USER | GupFlags::FAST_ONLY)
    }

    /// Slow path, A/D clear: the bench clears every A and D bit of `img`
    /// before each run; TOUCH sets them.
    fn slow_touch_pin_unpin(&mut self, _mem: &Mem, img: &Image) -> u64 {
        self.pin_unpin(
            img,
            GupFlags::PIN | GupFlags::WRITE | GupFlags::USER | GupFlags::TOUCH,
        )
    }

    /// Before the populate row: the engine's balloon discards every data
    /// frame (freeze, MADV_DONTNEED, mark unpopulated). Untimed.
    fn discard_data(&self) {
        let done = self.engine.discard(0, images::GIB).expect("discard");
        assert_eq!(done, PAGES, "discard: every data frame is free");
    }

    /// Slow path, host pages not populated: the engine must populate them
    /// (MADV_POPULATE_WRITE).
    fn slow_populate_pin_unpin(&mut self, _mem: &Mem, img: &Image) -> u64 {
        self.pin_unpin(img, GupFlags::PIN | GupFlags::WRITE | GupFlags::USER)
    }

    /// Whether every pin the engine ever took has been released.
    fn all_released(&self) -> bool {
        let c = self.engine.stats();
        c.pins_outstanding == 0
            && c.gets_outstanding == 0
            && self
                .engine
                .memory_map()
                .regions()
                .iter()
                .all(|r| r.frames().total_refs() == 0)
    }
}

// ---------------------------------------------------------------------------
// The bench.
// ---------------------------------------------------------------------------

/// Samples per in-memory row (rounds).
const RUNS: usize = 11;
/// Samples of each slow row (each is a full 1 GiB pin with its setup).
const SLOW_RUNS: usize = 9;
/// Shortest sample of a fast row: cheap rows repeat the pin to fill it.
/// (20 ms: a 1 GiB 4K pin takes about 2 ms, so a cold first pass weighs
/// little.)
const MIN_SAMPLE: Duration = Duration::from_millis(20);

const STAND_IN_NOTE: &str = "(stand-in: GUP engine not wired yet)";

struct State {
    mem: Mem,
    images: Vec<Image>,
    ideal: Ideal,
    gup: Gup,
}

impl State {
    fn image(&self, leaves: Leaves) -> &Image {
        images::find(&self.images, leaves)
    }
}

/// One measured row.
struct Row {
    name: String,
    note: &'static str,
    samples: Vec<f64>,
}

impl Row {
    fn new(name: impl Into<String>, note: &'static str) -> Self {
        Row {
            name: name.into(),
            note,
            samples: Vec::new(),
        }
    }

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

/// An in-memory row: one call pins and unpins the whole range and returns
/// the 4K pages done.
struct FastRow {
    row: Row,
    f: fn(&mut State) -> u64,
    reps: u32,
}

fn ideal_row(st: &mut State, leaves: Leaves) -> u64 {
    let State {
        mem, images, ideal, ..
    } = st;
    let img = images::find(images, leaves);
    ideal.pin_unpin(mem, &img.ctx, img.va, img.len)
}

fn fast_row(st: &mut State, leaves: Leaves) -> u64 {
    let State {
        mem, images, gup, ..
    } = st;
    let img = images::find(images, leaves);
    gup.fast_pin_unpin(mem, img)
}

fn walk_alone_row(st: &mut State) -> u64 {
    let img = st.image(Leaves::Shuffled4K);
    let (pages, sum) = ideal::walk_alone(&st.mem, &img.ctx, img.va, img.len);
    black_box(sum);
    pages
}

fn walker_row(st: &mut State) -> u64 {
    let img = st.image(Leaves::Shuffled4K);
    let mut pages = 0;
    let mut sum = 0u64;
    let out = walk_range(
        &st.mem,
        &img.ctx,
        img.va,
        img.len,
        Access::user_write(),
        |m| {
            pages += m.len >> 12;
            sum = sum.wrapping_add(m.gpa);
            ControlFlow::Continue(())
        },
    );
    assert_eq!(out, RangeOutcome::Complete);
    black_box(sum);
    pages
}

/// Time `reps` calls of `f`; ns per 4K page. Panics unless every call did
/// the whole range.
fn sample(st: &mut State, f: fn(&mut State) -> u64, reps: u32, name: &str) -> f64 {
    let t = Instant::now();
    let mut pages = 0;
    for _ in 0..reps {
        pages += f(st);
    }
    let ns = t.elapsed().as_nanos() as f64;
    assert_eq!(
        pages,
        PAGES * u64::from(reps),
        "{name}: pinned fewer pages than the range holds"
    );
    ns / pages as f64
}

/// Repetitions that make one sample last at least [`MIN_SAMPLE`].
fn calibrate(st: &mut State, f: fn(&mut State) -> u64, name: &str) -> u32 {
    sample(st, f, 1, name); // warm-up: caches, branch predictors, lazy state
    let t = Instant::now();
    sample(st, f, 1, name);
    let once = t.elapsed().max(Duration::from_nanos(1));
    (MIN_SAMPLE.as_nanos() / once.as_nanos()).clamp(1, 1 << 20) as u32
}

/// A slow row: `setup` (untimed) before each run, `f` timed, `check`
/// (untimed) after each run.
fn slow_row(
    st: &mut State,
    row: &mut Row,
    setup: fn(&State),
    f: fn(&mut State) -> u64,
    check: fn(&State),
) {
    for _ in 0..SLOW_RUNS {
        setup(st);
        let ns = sample(st, f, 1, &row.name);
        check(st);
        row.samples.push(ns);
    }
}

/// The images map what they were built to map: guest-mm's walker agrees
/// with each image's own record on a spread of pages, and the ideal walk
/// covers the whole range.
fn check_images(mem: &Mem, images: &[Image]) {
    for img in images {
        for p in (0..PAGES).step_by(997).chain([PAGES - 1]) {
            let va = img.va + p * PAGE + 0x123;
            let t = translate(mem, &img.ctx, va, Access::user_write()).expect("mapped");
            assert_eq!(Some(t.gpa), img.expected_gpa(va), "{}", img.leaves.name());
        }
        let (pages, _) = ideal::walk_alone(mem, &img.ctx, img.va, img.len);
        assert_eq!(pages, PAGES, "{}", img.leaves.name());
    }
}

/// Linux pin+unpin through io_uring buffer registration, one row per iovec
/// size; `Err` says why io_uring is unavailable here.
fn linux_rows() -> Result<Vec<Row>, String> {
    let mut lp = linux_pin::LinuxPin::new(images::GIB as usize).map_err(|e| e.0)?;
    let unavailable = |e: std::io::Error| -> String {
        match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES | libc::ENOMEM | libc::EOPNOTSUPP | libc::ENOSYS) => {
                format!("IORING_REGISTER_BUFFERS: {e}")
            }
            _ => panic!("linux_pin: IORING_REGISTER_BUFFERS failed: {e}"),
        }
    };
    // Untimed: the kernel really pins (and unpins) the whole GiB.
    lp.set_iovec_bytes(images::GIB as usize);
    match lp.verify().map_err(unavailable)? {
        Some((during, after)) => {
            assert_eq!(
                during,
                images::GIB >> 10,
                "linux_pin: VmPin while registered (KiB)"
            );
            assert_eq!(after, 0, "linux_pin: VmPin after unregistering (KiB)");
        }
        None => println!(
            "note: linux_pin: this kernel reports no VmPin; registration not cross-checked"
        ),
    }
    let mut rows = Vec::new();
    for iov in [images::GIB as usize, 16 << 20, 2 << 20] {
        lp.set_iovec_bytes(iov);
        lp.pin_unpin().map_err(unavailable)?; // warm-up
        let name = format!(
            "linux io_uring pin+unpin, {} x {} MiB iovecs",
            lp.iovecs(),
            iov >> 20
        );
        let mut row = Row::new(name, "");
        for _ in 0..RUNS {
            let t = Instant::now();
            lp.pin_unpin().map_err(unavailable)?;
            row.samples
                .push(t.elapsed().as_nanos() as f64 / lp.pages() as f64);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Pages KVM_TRANSLATE is timed on per run (evenly spread over the GiB).
const KVM_SAMPLE: u64 = 20_000;
/// Runs of the KVM row.
const KVM_RUNS: usize = 5;

/// KVM_TRANSLATE per page on the 4K shuffled image; `Err` when /dev/kvm is
/// absent. Every translation is checked against the image.
fn kvm_row(mem: &Mem, img: &Image) -> Result<Row, String> {
    let kvm = match kvm_translate::KvmTranslate::new(mem, &img.ctx) {
        Ok(k) => k,
        Err(kvm_translate::KvmError::Absent(why)) => return Err(why),
        Err(kvm_translate::KvmError::Failed(why)) => panic!("kvm_translate: {why}"),
    };
    let vas: Vec<u64> = (0..KVM_SAMPLE)
        .map(|i| img.va + (i * PAGES / KVM_SAMPLE) * PAGE)
        .collect();
    let mut got = vec![None; vas.len()];
    let mut row = Row::new(
        format!("kvm KVM_TRANSLATE per page ({KVM_SAMPLE} pages)"),
        "",
    );
    for _ in 0..KVM_RUNS {
        let t = Instant::now();
        for (va, out) in vas.iter().zip(got.iter_mut()) {
            *out = kvm.translate(*va).unwrap_or_else(|e| panic!("{e}"));
        }
        row.samples
            .push(t.elapsed().as_nanos() as f64 / KVM_SAMPLE as f64);
        for (va, out) in vas.iter().zip(&got) {
            assert_eq!(*out, img.expected_gpa(*va), "KVM_TRANSLATE {va:#x}");
        }
    }
    Ok(row)
}

fn main() {
    let t0 = Instant::now();
    let (mem, regions) = images::guest_memory();
    let images = images::build_all(&mem);
    check_images(&mem, &images);
    images::populate_data(&mem);
    let gup = Gup::new(&mem, &regions);
    let mut st = State {
        mem,
        images,
        ideal: Ideal::new(RAM_BYTES),
        gup,
    };
    println!(
        "gup bench: 1 GiB = {PAGES} 4K pages per run; in-memory rows {RUNS} rounds, slow rows {SLOW_RUNS} runs; medians in ns per 4K page"
    );
    if STAND_IN {
        println!(
            "NOTE: the GUP engine rows run stand-ins (fast: the ideal baseline; slow: naive per-page loops) {STAND_IN_NOTE}"
        );
    }
    let engine_note = if STAND_IN { STAND_IN_NOTE } else { "" };

    // In-memory rows, interleaved round by round.
    let mut fast: Vec<FastRow> = vec![
        FastRow {
            row: Row::new("ideal 4K shuffled (walk + atomic add + sub)", ""),
            f: |st| ideal_row(st, Leaves::Shuffled4K),
            reps: 1,
        },
        FastRow {
            row: Row::new("walk alone 4K shuffled (ideal walk, no atomics)", ""),
            f: walk_alone_row,
            reps: 1,
        },
        // The headline row: read pins (PIN | USER), the same work as the
        // ideal baseline and as Linux's io_uring registration, neither of
        // which marks pages dirty on release.
        FastRow {
            row: Row::new("fast 4K shuffled", engine_note),
            f: |st| {
                let State {
                    mem, images, gup, ..
                } = st;
                gup.fast_read_pin_unpin(mem, images::find(images, Leaves::Shuffled4K))
            },
            reps: 1,
        },
        FastRow {
            row: Row::new("write: fast 4K shuffled, dirty bitmap marked", engine_note),
            f: |st| fast_row(st, Leaves::Shuffled4K),
            reps: 1,
        },
        FastRow {
            row: Row::new("fast 4K contiguous", engine_note),
            f: |st| fast_row(st, Leaves::Contiguous4K),
            reps: 1,
        },
        FastRow {
            row: Row::new("fast 2M", engine_note),
            f: |st| fast_row(st, Leaves::Huge2M),
            reps: 1,
        },
        FastRow {
            row: Row::new("fast 1G", engine_note),
            f: |st| fast_row(st, Leaves::Huge1G),
            reps: 1,
        },
        FastRow {
            row: Row::new("ref: ideal 4K contiguous", ""),
            f: |st| ideal_row(st, Leaves::Contiguous4K),
            reps: 1,
        },
        FastRow {
            row: Row::new("ref: ideal 2M (atomic per 2M block)", ""),
            f: |st| ideal_row(st, Leaves::Huge2M),
            reps: 1,
        },
        FastRow {
            row: Row::new("ref: ideal 1G (atomic per 2M block)", ""),
            f: |st| ideal_row(st, Leaves::Huge1G),
            reps: 1,
        },
        FastRow {
            row: Row::new("ref: guest-mm walk_range 4K shuffled, no pin", ""),
            f: walker_row,
            reps: 1,
        },
    ];
    for r in &mut fast {
        r.reps = calibrate(&mut st, r.f, &r.row.name);
    }
    // A fresh row order every round: no row always runs after the same
    // neighbour (whose cache footprint it would inherit).
    let mut order: Vec<usize> = (0..fast.len()).collect();
    let mut rng = images::Rng(0x0bad_cafe);
    for _ in 0..RUNS {
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        for &i in &order {
            let r = &mut fast[i];
            let ns = sample(&mut st, r.f, r.reps, &r.row.name);
            r.row.samples.push(ns);
        }
    }
    assert!(st.ideal.all_zero(), "ideal: a counter is not back to zero");

    // Slow path, A/D clear.
    let mut slow_ad = Row::new("slow A/D clear, 4K shuffled", engine_note);
    slow_row(
        &mut st,
        &mut slow_ad,
        |st| st.image(Leaves::Shuffled4K).clear_accessed_dirty(&st.mem),
        |st| {
            let State {
                mem, images, gup, ..
            } = st;
            gup.slow_touch_pin_unpin(mem, images::find(images, Leaves::Shuffled4K))
        },
        |st| {
            assert!(
                st.image(Leaves::Shuffled4K).all_accessed_dirty(&st.mem),
                "slow A/D row: the engine left A/D bits clear"
            );
        },
    );
    st.image(Leaves::Shuffled4K).set_accessed_dirty(&st.mem);

    // Slow path, host pages not populated.
    let mut slow_pop = Row::new("slow host-populate, 4K shuffled", engine_note);
    slow_row(
        &mut st,
        &mut slow_pop,
        |st| st.gup.discard_data(),
        |st| {
            let State {
                mem, images, gup, ..
            } = st;
            gup.slow_populate_pin_unpin(mem, images::find(images, Leaves::Shuffled4K))
        },
        |st| {
            assert_eq!(
                images::resident_data_pages(&st.mem),
                PAGES,
                "slow populate row: the engine left host pages unpopulated"
            );
        },
    );
    images::populate_data(&st.mem);
    assert!(st.gup.all_released(), "GUP: a pin is still outstanding");

    let linux = linux_rows();
    let kvm = kvm_row(&st.mem, st.image(Leaves::Shuffled4K));

    // The table.
    let mut rows: Vec<Row> = fast.into_iter().map(|r| r.row).collect();
    rows.push(slow_ad);
    rows.push(slow_pop);
    // Linux's best iovec layout is the one compared (the conservative
    // choice for the ratio).
    let linux_pin = match linux {
        Ok(lr) => {
            let best = lr.iter().map(Row::median).fold(f64::INFINITY, f64::min);
            rows.extend(lr);
            Ok(best)
        }
        Err(why) => {
            println!("SKIPPED linux_pin: io_uring buffer registration unavailable: {why}");
            Err(why)
        }
    };
    let kvm_translate = match kvm {
        Ok(row) => {
            let m = row.median();
            rows.push(row);
            Ok(m)
        }
        Err(why) => {
            println!("SKIPPED kvm_translate: {why}");
            Err(why)
        }
    };
    println!();
    println!("{:<48} {:>11} {:>11} {:>11}", "row", "median", "min", "max");
    for r in &rows {
        println!(
            "{:<48} {:>11.3} {:>11.3} {:>11.3}  {}",
            r.name,
            r.median(),
            r.min(),
            r.max(),
            r.note
        );
    }
    let get = |prefix: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(prefix))
            .map(Row::median)
            .expect("row exists")
    };
    let ideal4k = get("ideal 4K shuffled");
    let fast4k = get("fast 4K shuffled");
    let write4k = get("write: fast 4K shuffled");
    println!();
    println!("bench time {:.1} s", t0.elapsed().as_secs_f64());
    println!(
        "(write pins, which also mark the dirty bitmap on release: {write4k:.3} ns/page, {:.3}x the ideal)",
        write4k / ideal4k
    );
    println!("ratio fast4k/ideal {:.3}", fast4k / ideal4k);
    match linux_pin {
        Ok(ns) => println!("ratio linux_pin/fast4k {:.3}", ns / fast4k),
        Err(why) => println!("ratio linux_pin/fast4k n/a ({why})"),
    }
    match kvm_translate {
        Ok(ns) => println!("ratio kvm_translate/fast4k {:.1}", ns / fast4k),
        Err(why) => println!("ratio kvm_translate/fast4k n/a ({why})"),
    }
    println!("ns_per_page fast2m {:.4}", get("fast 2M"));
    println!("ns_per_page fast1g {:.4}", get("fast 1G"));
}
