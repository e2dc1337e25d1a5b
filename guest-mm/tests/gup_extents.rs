// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The shape of a result: extents merge contiguous frames and never
//! aliases, 2M/1G leaves are held by one reference per 2M block, and the
//! extents work as iovecs for preadv/pwritev.

mod common;
#[path = "common/gup.rs"]
mod gupc;

use common::*;
use guest_mm::gup::{AddressSpace, GupConfig, Pinned, RegionOptions};
use gupc::*;
use vm_memory::{Bytes, GuestAddress};

/// (addr, gpa, len, block-pinned) of every extent.
fn shape(p: &Pinned) -> Vec<(u64, u64, u64, bool)> {
    p.extents()
        .iter()
        .map(|e| (e.addr, e.gpa, e.len, e.is_block_pinned()))
        .collect()
}

#[test]
fn contiguous_frames_merge_scattered_ones_do_not() {
    let gup = engine0();
    let map = gup.memory_map();
    let mut b = tables(&map);
    b.map_4k_run(VA, DATA, 16, RW | US | A | D);
    // VA + 64K..: frames in reverse order.
    for i in 0..4 {
        b.map(
            VA + 64 * KIB + i * PAGE,
            DATA + MIB - i * PAGE,
            1,
            RW | US | A | D,
        );
    }
    let space = AddressSpace::page_tables(ctx4(b.root));

    let p = gup.pin(&space, VA, 16 * PAGE, GET).unwrap();
    assert_eq!(shape(&p), vec![(VA, DATA, 16 * PAGE, false)]);
    drop(p);
    // Unaligned both ends.
    let p = gup.pin(&space, VA + 100, 3 * PAGE, GET).unwrap();
    assert_eq!(shape(&p), vec![(VA + 100, DATA + 100, 3 * PAGE, false)]);
    assert_eq!(p.pages(), 4);
    drop(p);
    let p = gup.pin(&space, VA + 64 * KIB, 4 * PAGE, GET).unwrap();
    let want: Vec<_> = (0..4)
        .map(|i| (VA + 64 * KIB + i * PAGE, DATA + MIB - i * PAGE, PAGE, false))
        .collect();
    assert_eq!(shape(&p), want);
    drop(p);
    // Guest-physical: one extent per region, merged inside it.
    let q = gup
        .pin(&AddressSpace::Physical, DATA, 16 * PAGE, GET)
        .unwrap();
    assert_eq!(shape(&q), vec![(DATA, DATA, 16 * PAGE, false)]);
    drop(q);
    assert_released(&gup);
}

#[test]
fn aliases_are_never_merged() {
    let gup = engine0();
    let map = gup.memory_map();
    let r0 = map.regions()[0].clone();
    let mut b = tables(&map);
    b.map(VA, DATA, 1, RW | US | A | D);
    b.map(VA + PAGE, DATA + PAGE, 1, RW | US | A | D);
    b.map(VA + 2 * PAGE, DATA, 1, RW | US | A | D);
    b.map(VA + 3 * PAGE, DATA, 1, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let p = gup.pin(&space, VA, 4 * PAGE, GET).unwrap();
    assert_eq!(
        shape(&p),
        vec![
            (VA, DATA, 2 * PAGE, false),
            (VA + 2 * PAGE, DATA, PAGE, false),
            (VA + 3 * PAGE, DATA, PAGE, false),
        ]
    );
    // Three references on the aliased frame, one on its neighbour.
    assert_eq!(r0.frames().total_refs(), 4);
    let f = r0.frame_index(DATA);
    assert_eq!(
        r0.frames()
            .frame(f)
            .unwrap()
            .load(std::sync::atomic::Ordering::SeqCst)
            & guest_mm::gup::frames::FRAME_REFS,
        3
    );
    drop(p);
    assert_released(&gup);
}

#[test]
fn large_leaves_take_one_reference_per_2m_block() {
    // [0, 64M); [65M, 73M) starts 1M off a 2M boundary; [1G, 2G).
    let gup = engine(
        &[
            (0, RAM0, RegionOptions::default()),
            (65 * MIB, 8 * MIB, RegionOptions::default()),
            (GIB, GIB, RegionOptions::default()),
        ],
        GupConfig::default(),
    );
    let map = gup.memory_map();
    let [r0, r1, r2] = [0, 1, 2].map(|i| map.regions()[i].clone());
    let mut b = tables(&map);
    // Two gpa-contiguous 2M leaves, a 4K leaf right after them.
    b.map(VA, DATA, 2, RW | US | A | D);
    b.map(VA + 2 * MIB, DATA + 2 * MIB, 2, RW | US | A | D);
    b.map(VA + 4 * MIB, DATA + 4 * MIB, 1, RW | US | A | D);
    // Two contiguous 2M leaves in the misaligned region.
    b.map(VA + 8 * MIB, 66 * MIB, 2, RW | US | A | D);
    b.map(VA + 10 * MIB, 68 * MIB, 2, RW | US | A | D);
    // A 1G leaf.
    b.map(VA + GIB, GIB, 3, RW | US | A | D);
    let space = AddressSpace::page_tables(ctx4(b.root));
    let mut m = Meter::new(&gup);

    let p = gup.pin(&space, VA, 4 * MIB + PAGE, GET).unwrap();
    assert_eq!(
        shape(&p),
        vec![
            (VA, DATA, 4 * MIB, true),
            (VA + 4 * MIB, DATA + 4 * MIB, PAGE, false)
        ]
    );
    assert_eq!(r0.frames().total_refs(), 2 + 1);
    assert_eq!(p.pages(), 1025);
    assert_fast(&m.step(), 1025);
    drop(p);

    // Part of a 2M leaf: still its block.
    let p = gup.pin(&space, VA + MIB, 2 * PAGE, PIN).unwrap();
    assert_eq!(shape(&p), vec![(VA + MIB, DATA + MIB, 2 * PAGE, true)]);
    assert_eq!(r0.frames().total_refs(), 1024);
    drop(p);

    // Region blocks count from the region start: a leaf at 66M covers
    // blocks 0 and 1 of [65M, ..), the next one blocks 1 and 2, so the two
    // are not merged (their references would overlap on block 1).
    let p = gup.pin(&space, VA + 8 * MIB, 4 * MIB, GET).unwrap();
    assert_eq!(
        shape(&p),
        vec![
            (VA + 8 * MIB, 66 * MIB, 2 * MIB, true),
            (VA + 10 * MIB, 68 * MIB, 2 * MIB, true)
        ]
    );
    assert_eq!(r1.frames().total_refs(), 4);
    let b1 = r1.frames().block(1).unwrap();
    assert_eq!(b1.load(std::sync::atomic::Ordering::SeqCst), 2);
    drop(p);

    // The 1G leaf: 512 block references, one extent.
    m.step();
    let p = gup.pin(&space, VA + GIB, GIB, PIN | WRITE).unwrap();
    assert_eq!(shape(&p), vec![(VA + GIB, GIB, GIB, true)]);
    assert_eq!(p.pages(), 1 << 18);
    assert_eq!(r2.frames().total_refs(), 512 * 1024);
    assert!(gup.maybe_dma_pinned(GIB + 777 * MIB));
    assert_fast(&m.step(), 1 << 18);
    assert_eq!(gup.stats().pins_outstanding, 1 << 18);
    drop(p);
    assert_released(&gup);
}

#[test]
fn adjacent_regions_are_separate_extents() {
    let gup = engine(
        &[
            (0, RAM0, RegionOptions::default()),
            (RAM0, MIB, RegionOptions::default()),
        ],
        GupConfig::default(),
    );
    let p = gup
        .pin(&AddressSpace::Physical, RAM0 - PAGE, 2 * PAGE, PIN)
        .unwrap();
    assert_eq!(
        shape(&p),
        vec![
            (RAM0 - PAGE, RAM0 - PAGE, PAGE, false),
            (RAM0, RAM0, PAGE, false)
        ]
    );
    let hosts: Vec<_> = p.extents().iter().map(|e| e.host_ptr().unwrap()).collect();
    let map = gup.memory_map();
    assert_eq!(hosts[0] as usize, map.regions()[0].host_addr(RAM0 - PAGE));
    assert_eq!(hosts[1] as usize, map.regions()[1].host_addr(RAM0));
    drop(p);
    assert_released(&gup);
}

#[test]
fn iovecs_feed_preadv_and_pwritev() {
    const N: u64 = 8;
    let gup = engine0();
    let map = gup.memory_map();
    let mem = map.memory();
    let mut b = tables(&map);
    // Shuffled frames, two of them adjacent (one merged extent).
    let frames = [5u64, 2, 3, 9, 0, 7, 12, 1];
    for (i, f) in frames.iter().enumerate() {
        b.map(VA + i as u64 * PAGE, DATA + f * PAGE, 1, RW | US | A | D);
    }
    let space = AddressSpace::page_tables(ctx4(b.root));
    for (i, f) in frames.iter().enumerate() {
        let page = vec![0x10 + i as u8; PAGE as usize];
        mem.write_slice(&page, GuestAddress(DATA + f * PAGE))
            .unwrap();
    }
    // SAFETY: a plain syscall with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"gup_iovecs".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);

    // The device reads guest memory (a disk write): pwritev from a read
    // pin, starting 100 bytes into the first page.
    let start = VA + 100;
    let len = N * PAGE - 200;
    let p = gup.pin(&space, start, len, PIN | USER).unwrap();
    assert_eq!(p.extents().len(), 7, "frames 2 and 3 merge");
    let iov = p.iovecs().unwrap();
    assert_eq!(iov.iter().map(|v| v.iov_len as u64).sum::<u64>(), len);
    // SAFETY: the iovecs point into guest memory kept pinned by `p`.
    let n = unsafe { libc::pwritev(fd, iov.as_ptr(), iov.len() as i32, 0) };
    assert_eq!(n as u64, len);
    drop(p);
    let mut file = vec![0u8; len as usize];
    // SAFETY: reads into our own buffer.
    let n = unsafe { libc::pread(fd, file.as_mut_ptr().cast(), file.len(), 0) };
    assert_eq!(n as u64, len);
    for (k, byte) in file.iter().enumerate() {
        let i = (100 + k as u64) / PAGE;
        assert_eq!(*byte, 0x10 + i as u8, "byte {k}");
    }

    // The device writes guest memory (a disk read): preadv into a write
    // pin, then the guest sees it at each frame.
    let data: Vec<u8> = (0..len).map(|k| (k * 7 % 251) as u8).collect();
    // SAFETY: writes from our own buffer.
    let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), 0) };
    assert_eq!(n as u64, len);
    let p = gup.pin(&space, start, len, PIN | WRITE | USER).unwrap();
    let iov = p.iovecs().unwrap();
    // SAFETY: as above; the pin is a write pin.
    let n = unsafe { libc::preadv(fd, iov.as_ptr(), iov.len() as i32, 0) };
    assert_eq!(n as u64, len);
    drop(p);
    for k in (0..len).step_by(997) {
        let va = start + k;
        let f = frames[((va - VA) / PAGE) as usize];
        let gpa = DATA + f * PAGE + va % PAGE;
        let got: u8 = mem.read_obj(GuestAddress(gpa)).unwrap();
        assert_eq!(got, data[k as usize], "byte {k}");
    }
    // The byte before the start is untouched.
    let before: u8 = mem
        .read_obj(GuestAddress(DATA + frames[0] * PAGE + 99))
        .unwrap();
    assert_eq!(before, 0x10);
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    assert_released(&gup);
}
