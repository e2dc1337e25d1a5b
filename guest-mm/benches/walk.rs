// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Walker throughput: `cargo bench -p guest-mm --bench walk`.
//!
//! Walks 1 GiB of guest-virtual space mapped by shuffled 4K leaves (the hard
//! case), by contiguous 4K leaves, and by 2M leaves, and compares the range
//! walker (one descent, then one entry load per page) with translating every
//! 4K page from the root. Prints medians in ns per 4K page and their ratio;
//! absolute times drift on shared machines, the ratio is the figure.

use std::hint::black_box;
use std::ops::ControlFlow;
use std::time::Instant;

use guest_mm::paging::{translate, walk_range, Access, PagingContext};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const GIB: u64 = 1 << 30;
const PAGES: u64 = GIB >> 12;
/// Tables live at 0..4 MiB; the mapped frames are 1 GiB..2 GiB.
const FRAMES_BASE: u64 = GIB;
const VA: u64 = 0x40_0000_0000; // PML4 index 0, PDPT index 256

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn w(mem: &GuestMemoryMmap, gpa: u64, v: u64) {
    mem.write_obj(v, GuestAddress(gpa))
        .expect("bench tables are in RAM");
}

/// Build a 4-level image mapping [VA, VA + 1 GiB); returns CR3.
fn build(mem: &GuestMemoryMmap, leaves: &str) -> u64 {
    let (pml4, pdpt, pd) = (0x1000u64, 0x2000u64, 0x3000u64);
    let flags = 0x67; // P, RW, US, A, D
    w(mem, pml4, pdpt | flags);
    w(mem, pdpt + 8 * ((VA >> 30) & 511), pd | flags);
    match leaves {
        "2m" => {
            for i in 0..512 {
                w(mem, pd + 8 * i, (FRAMES_BASE + (i << 21)) | flags | 0x80);
            }
        }
        _ => {
            let mut frames: Vec<u64> = (0..PAGES).collect();
            if leaves == "4k-shuffled" {
                let mut rng = Rng(42);
                for i in (1..frames.len()).rev() {
                    let j = (rng.next() % (i as u64 + 1)) as usize;
                    frames.swap(i, j);
                }
            }
            for i in 0..512u64 {
                let pt = 0x10_0000 + i * 0x1000;
                w(mem, pd + 8 * i, pt | flags);
                for j in 0..512u64 {
                    let frame = FRAMES_BASE + (frames[(i * 512 + j) as usize] << 12);
                    w(mem, pt + 8 * j, frame | flags);
                }
            }
        }
    }
    pml4
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ns_per_page(runs: usize, mut f: impl FnMut() -> u64) -> f64 {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        black_box(f());
        samples.push(t.elapsed().as_nanos() as f64 / PAGES as f64);
    }
    median(samples)
}

fn main() {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("guest memory");
    let access = Access::user_write();
    let mut results = Vec::new();
    for leaves in ["4k-shuffled", "4k-contiguous", "2m"] {
        let cr3 = build(&mem, leaves);
        let ctx = PagingContext::new(0x8001_0001, cr3, 0x20, 0xd00).with_maxphyaddr(46);
        let range = ns_per_page(11, || {
            let mut sum = 0u64;
            let out = walk_range(&mem, &ctx, VA, GIB, access, |m| {
                sum = sum.wrapping_add(m.gpa ^ m.len);
                ControlFlow::Continue(())
            });
            assert!(matches!(out, guest_mm::paging::RangeOutcome::Complete));
            sum
        });
        let per_page = ns_per_page(5, || {
            let mut sum = 0u64;
            for p in 0..PAGES {
                let t = translate(&mem, &ctx, VA + (p << 12), access).expect("mapped");
                sum = sum.wrapping_add(t.gpa);
            }
            sum
        });
        println!("walk {leaves:<14} range walk {range:>7.3} ns/page   translate per page {per_page:>7.3} ns/page");
        results.push((leaves, range, per_page));
    }
    for (leaves, range, per_page) in results {
        println!(
            "ratio translate_per_page/range_walk {leaves} {:.1}",
            per_page / range
        );
    }
}
