// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-blk: every request layout the spec allows (virtio 1.2 sections
//! 2.6.4 and 5.2.6), driven through a split virtqueue in guest memory and
//! `BlockQueue::process`. Every byte is checked against the backing file,
//! plus the status byte, the used length, the counters, the dirty bitmap
//! (the device's writes into guest memory are marked, its reads are not),
//! and that nothing stays pinned after each request.

mod common;

use common::*;
use devices::virtio::blk::{features, ErrorClass, SEG_MAX};
use devices::virtio::VirtioDevice;
use guest_mm::gup::RegionOptions;

#[test]
fn header_split_across_descriptors() {
    let mut rig = Rig::default();
    // 5 + 11 header bytes on two pages, two data descriptors, a lone status.
    let hdr = [r(HDR, 5), r(HDR + 0x1003, 11)];
    let rd = Layout::direct(vec![
        hdr[0],
        hdr[1],
        w(DATA, 1024),
        w(DATA + 0x5000, 512),
        w(HDR + 0x2000, 1),
    ]);
    rig.read_ok(3, &rd);
    let wr = Layout::direct(vec![
        hdr[0],
        hdr[1],
        r(DATA + 0x9000, 1024),
        r(DATA + 0xd000, 512),
        w(HDR + 0x2000, 1),
    ]);
    let written = rig.write_ok(3, &wr, 1);
    assert_eq!(rig.read_ok(3, &rd), written);
    // The header one byte per descriptor, the status byte after it.
    let mut descs: Vec<D> = (0..16).map(|i| r(HDR + 0x3000 + 7 * i, 1)).collect();
    descs.push(w(DATA + 0x20000, 2048));
    descs.push(w(HDR + 0x3800, 1));
    rig.read_ok(100, &Layout::direct(descs));
    // Zero-length descriptors anywhere are skipped.
    let z = |d: D| D { len: 0, ..d };
    rig.read_ok(
        9,
        &Layout::direct(vec![
            z(r(HOLE, 0)),
            r(HDR, 16),
            z(r(RAM_END + 0x1000, 0)),
            w(DATA, 512),
            z(w(HOLE, 0)),
            w(HDR + 0x800, 1),
        ]),
    );
}

#[test]
fn header_and_data_in_one_descriptor() {
    let mut rig = Rig::default();
    let wr = Layout::direct(vec![r(HDR, 16 + 2048), w(HDR + 0x4000, 1)]);
    let written = rig.write_ok(40, &wr, 2);
    let rd = Layout::direct(vec![r(HDR, 16), w(DATA, 2048), w(HDR + 0x4000, 1)]);
    assert_eq!(rig.read_ok(40, &rd), written);
    // The header's tail and the data share the second descriptor.
    let wr = Layout::direct(vec![
        r(HDR, 10),
        r(HDR + 0x100, 6 + 1536),
        w(HDR + 0x4000, 1),
    ]);
    let written = rig.write_ok(50, &wr, 3);
    let rd = Layout::direct(vec![r(HDR, 16), w(DATA + 0x1000, 1536), w(HDR + 0x4000, 1)]);
    assert_eq!(rig.read_ok(50, &rd), written);
}

#[test]
fn status_shares_the_last_data_descriptor() {
    let mut rig = Rig::default();
    rig.read_ok(0, &Layout::direct(vec![r(HDR, 16), w(DATA, 4096 + 1)]));
    rig.read_ok(
        7,
        &Layout::direct(vec![r(HDR, 16), w(DATA, 512), w(DATA + 0x3000, 513)]),
    );
    // GET_ID with the status in the ID's descriptor.
    rig.put(DATA + 0x8000, &[0xee; 21]);
    rig.put(HDR, &header(T_GET_ID, 0));
    let used = rig.one(&[r(HDR, 16), w(DATA + 0x8000, 21)]);
    assert_eq!(used, 21);
    assert_eq!(rig.guest(DATA + 0x8000, 20), ID.as_bytes()[..20].to_vec());
    assert_eq!(rig.status(DATA + 0x8000 + 20), S_OK);
}

/// Segment `i` of the scattered layouts: 256 bytes at a stride of 320
/// plus a small skew, so no two share a pin and many cross a page.
fn scattered(base: u64, n: u64) -> Vec<(u64, u64)> {
    (0..n).map(|i| (base + i * 320 + i % 7, 256)).collect()
}

#[test]
fn more_than_1024_segments_through_an_indirect_table() {
    let mut rig = Rig::default();
    let mem = rig.drv.mem.clone();
    let segs = scattered(DATA, 1536);
    assert_eq!(total(&segs) % 512, 0);
    let mut descs = vec![r(HDR, 16)];
    descs.extend(segs.iter().map(|&(a, l)| r(a, l)));
    descs.push(w(HDR + 0x800, 1));
    let wr = Layout::indirect(&mem, TABLES, descs);
    let written = rig.write_ok(64, &wr, 4);
    let mut descs = vec![r(HDR, 16)];
    descs.extend(segs.iter().map(|&(a, l)| w(a + 0x10_0000, l)));
    descs.push(w(HDR + 0x800, 1));
    let rd = Layout::indirect(&mem, TABLES, descs);
    assert_eq!(rig.read_ok(64, &rd), written);
}

#[test]
fn a_direct_chain_as_long_as_the_queue() {
    let mut rig = Rig::default();
    assert_eq!(SEG_MAX, u32::from(QSIZE) - 2);
    // Header + SEG_MAX segments + status = 256 descriptors.
    let segs = scattered(DATA, u64::from(SEG_MAX));
    let mut descs = vec![r(HDR, 16)];
    descs.extend(segs.iter().map(|&(a, l)| w(a, l)));
    descs.push(w(HDR + 0x800, 1));
    assert_eq!(descs.len(), usize::from(QSIZE));
    rig.read_ok(10, &Layout::direct(descs.clone()));
    // After it the ring's descriptor allocation has wrapped all the way.
    let mut descs = vec![r(HDR, 16)];
    descs.extend(segs.iter().map(|&(a, l)| r(a, l)));
    descs.push(w(HDR + 0x800, 1));
    rig.write_ok(10, &Layout::direct(descs), 5);
}

#[test]
fn segments_crossing_4k_2m_and_region_boundaries() {
    let mut rig = Rig::new(RigOptions {
        sectors: 16384,
        ..Default::default()
    });
    let segs = vec![
        (DATA + 0xf80, 0x100),                 // a 4K frame boundary
        (4 * MIB - 0x300, 0x500),              // a 2M block boundary
        (R1.0 - MIB - 0x100, 2 * MIB + 0x200), // 2M blocks and the region boundary
        (R2.0 + R2.1 - 0x1000, 0x1000),        // the last page of RAM
    ];
    let bytes = total(&segs);
    assert_eq!(bytes % 512, 0);
    // Overlapping segments in one request would make the expected data
    // ambiguous; these do not overlap.
    let mut wd = vec![r(HDR, 16)];
    wd.extend(segs.iter().map(|&(a, l)| r(a, l)));
    wd.push(w(HDR + 0x800, 1));
    let written = rig.write_ok(100, &Layout::direct(wd), 6);
    let mut rd = vec![r(HDR, 16)];
    rd.extend(segs.iter().map(|&(a, l)| w(a, l)));
    rd.push(w(HDR + 0x800, 1));
    assert_eq!(rig.read_ok(100, &Layout::direct(rd)), written);
}

#[test]
fn unaligned_addresses_and_odd_lengths() {
    let mut rig = Rig::default();
    let segs = vec![
        (DATA + 0x1_0001, 1),
        (DATA + 0x2_0003, 511),
        (DATA + 0x3_0ffe, 3), // crosses a page
        (DATA + 0x4_0005, 509),
        (DATA + 0x5_0007, 7),
        (DATA + 0x6_0c09, 1017), // crosses a page
    ];
    assert_eq!(total(&segs), 2048);
    let mut wd = vec![r(HDR + 3, 16)];
    wd.extend(segs.iter().map(|&(a, l)| r(a, l)));
    wd.push(w(HDR + 0x801, 1));
    let written = rig.write_ok(33, &Layout::direct(wd), 7);
    let mut rd = vec![r(HDR + 0xff9, 16)]; // the header crosses a page
    rd.extend(segs.iter().map(|&(a, l)| w(a + 0x8_0000, l)));
    rd.push(w(HDR + 0x1fff, 1));
    assert_eq!(rig.read_ok(33, &Layout::direct(rd)), written);
}

fn get_id(rig: &mut Rig, buf: u64, len: u64) -> (u32, Vec<u8>) {
    rig.put(HDR, &header(T_GET_ID, 0));
    rig.put(buf, &vec![0xee; len as usize + 8]);
    rig.put(HDR + 0x800, &[0xff]);
    let before = rig.counters();
    let used = rig.one(&[r(HDR, 16), w(buf, len), w(HDR + 0x800, 1)]);
    let d = delta(&before, &rig.counters());
    assert_eq!(rig.status(HDR + 0x800), S_OK);
    assert_eq!((d.requests, d.get_ids, d.errors_total()), (1, 1, 0));
    (used, rig.guest(buf, len as usize + 8))
}

#[test]
fn get_id_full_short_and_long_buffers() {
    let mut rig = Rig::default();
    let id = ID.as_bytes();
    // Exactly 20 bytes: the first 20 of the string (no NUL).
    let (used, got) = get_id(&mut rig, DATA, 20);
    assert_eq!(used, 21);
    assert_eq!(&got[..20], &id[..20]);
    assert_eq!(&got[20..], &[0xee; 8]);
    // A short buffer: as much as fits.
    let (used, got) = get_id(&mut rig, DATA + 0x1000, 7);
    assert_eq!(used, 8);
    assert_eq!(&got[..7], &id[..7]);
    assert_eq!(&got[7..], &[0xee; 8]);
    // A long buffer: 20 bytes, the rest untouched.
    let (used, got) = get_id(&mut rig, DATA + 0x2ffa, 64); // crosses a page
    assert_eq!(used, 21);
    assert_eq!(&got[..20], &id[..20]);
    assert!(got[20..].iter().all(|&b| b == 0xee));
    // An ID shorter than 20 bytes is padded with NULs.
    let mut rig = Rig::new(RigOptions {
        id: "short".into(),
        ..Default::default()
    });
    let (used, got) = get_id(&mut rig, DATA, 20);
    assert_eq!(used, 21);
    assert_eq!(&got[..20], b"short\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
}

#[test]
fn flush() {
    let mut rig = Rig::default();
    rig.put(HDR, &header(T_FLUSH, 0));
    rig.put(HDR + 0x800, &[0xff]);
    let before = rig.counters();
    assert_eq!(rig.one(&[r(HDR, 16), w(HDR + 0x800, 1)]), 1);
    assert_eq!(rig.status(HDR + 0x800), S_OK);
    let d = delta(&before, &rig.counters());
    assert_eq!((d.requests, d.flushes, d.errors_total()), (1, 1, 0));
    // The sector field of a flush is ignored (the spec says it is zero).
    rig.put(HDR, &header(T_FLUSH, u64::MAX));
    assert_eq!(rig.one(&[r(HDR, 16), w(HDR + 0x800, 1)]), 1);
    assert_eq!(rig.status(HDR + 0x800), S_OK);
}

fn ranges_request(rig: &mut Rig, kind: u32, ranges: &[[u8; 16]]) -> u8 {
    rig.put(HDR, &header(kind, 0));
    let raw: Vec<u8> = ranges.iter().flatten().copied().collect();
    // The range list split across two descriptors, mid-range.
    let cut = raw.len().min(20);
    rig.put(DATA, &raw[..cut]);
    rig.put(DATA + 0x3000, &raw[cut..]);
    rig.put(HDR + 0x800, &[0xff]);
    let mut descs = vec![r(HDR, 16), r(DATA, cut as u64)];
    if raw.len() > cut {
        descs.push(r(DATA + 0x3000, (raw.len() - cut) as u64));
    }
    descs.push(w(HDR + 0x800, 1));
    assert_eq!(rig.one(&descs), 1);
    rig.status(HDR + 0x800)
}

#[test]
fn discard_and_write_zeroes_read_back_zeroes() {
    for kind in [T_DISCARD, T_WRITE_ZEROES] {
        let mut rig = Rig::default();
        let mut want = rig.file.contents();
        let ranges = [(5u64, 3u32, 0u32), (100, 1, 0), (200, 64, 0), (4095, 1, 0)];
        for &(s, n, _) in &ranges {
            want[(s * 512) as usize..((s + u64::from(n)) * 512) as usize].fill(0);
        }
        let enc: Vec<[u8; 16]> = ranges.iter().map(|&(s, n, f)| range(s, n, f)).collect();
        let before = rig.counters();
        assert_eq!(ranges_request(&mut rig, kind, &enc), S_OK);
        let d = delta(&before, &rig.counters());
        assert_eq!((d.requests, d.discards, d.errors_total()), (1, 1, 0));
        assert!(
            rig.file.contents() == want,
            "kind {kind}: file after the ranges"
        );
        // And through the device.
        let got = rig.read_ok(
            198,
            &Layout::direct(vec![
                r(HDR, 16),
                w(DATA + 0x10000, 70 * 512),
                w(HDR + 0x800, 1),
            ]),
        );
        assert!(got[2 * 512..66 * 512].iter().all(|&b| b == 0));
        assert!(got[..2 * 512].iter().all(|&b| b != 0));
    }
    // WRITE_ZEROES may carry the unmap flag.
    let mut rig = Rig::default();
    assert_eq!(
        ranges_request(&mut rig, T_WRITE_ZEROES, &[range(8, 8, 1)]),
        S_OK
    );
    assert!(rig.file.read(8 * 512, 4096).iter().all(|&b| b == 0));
    assert!(rig.file.read(16 * 512, 512).iter().all(|&b| b != 0));
}

#[test]
fn read_only_disk_serves_reads() {
    let mut rig = Rig::new(RigOptions {
        read_only: true,
        features: 1 << 9,
        ..Default::default()
    });
    let f = rig.block.features();
    assert_ne!(f & (1 << features::RO), 0, "RO offered");
    assert_eq!(f & (1 << features::DISCARD), 0);
    assert_eq!(f & (1 << features::WRITE_ZEROES), 0);
    let before = rig.file.contents();
    rig.read_ok(
        1,
        &Layout::direct(vec![r(HDR, 16), w(DATA + 1, 3 * 512), w(HDR + 0x800, 1)]),
    );
    // Flush on a read-only disk succeeds (nothing to make durable).
    rig.put(HDR, &header(T_FLUSH, 0));
    assert_eq!(rig.one(&[r(HDR, 16), w(HDR + 0x800, 1)]), 1);
    assert_eq!(rig.status(HDR + 0x800), S_OK);
    assert!(rig.file.contents() == before);
}

#[test]
fn o_direct_aligned_and_buffered_fallback() {
    let mut rig = Rig::new(RigOptions {
        direct: true,
        ..Default::default()
    });
    assert!(
        rig.block.disk().is_direct(),
        "O_DIRECT in {}",
        env!("CARGO_TARGET_TMPDIR")
    );
    let fallbacks = |rig: &Rig| rig.counters().direct_fallbacks;
    // Page-aligned buffers, 4K-aligned offset, 4K multiples: O_DIRECT.
    let aligned_w = Layout::direct(vec![
        r(HDR, 16),
        r(DATA, 8192),
        r(DATA + 0x10000, 4096),
        w(HDR + 0x800, 1),
    ]);
    let aligned_r = Layout::direct(vec![
        r(HDR, 16),
        w(DATA + 0x20000, 4096),
        w(DATA + 0x30000, 8192),
        w(HDR + 0x800, 1),
    ]);
    let n = fallbacks(&rig);
    let written = rig.write_ok(8, &aligned_w, 8);
    assert_eq!(rig.read_ok(8, &aligned_r), written);
    assert_eq!(
        fallbacks(&rig),
        n,
        "aligned transfers went through O_DIRECT"
    );
    // An unaligned offset, an unaligned buffer, a length not a 4K
    // multiple: each falls back to the page cache once, data still right.
    let n = fallbacks(&rig);
    rig.read_ok(9, &aligned_r);
    assert_eq!(fallbacks(&rig), n + 1);
    let unaligned = Layout::direct(vec![r(HDR, 16), w(DATA + 512, 4096), w(HDR + 0x800, 1)]);
    rig.read_ok(8, &unaligned);
    assert_eq!(fallbacks(&rig), n + 2);
    let short = Layout::direct(vec![r(HDR, 16), r(DATA, 1024), w(HDR + 0x800, 1)]);
    rig.write_ok(16, &short, 9);
    assert_eq!(fallbacks(&rig), n + 3);
    // What went through the page cache reads back through O_DIRECT.
    let again = rig.read_ok(16, &aligned_r);
    assert_eq!(fallbacks(&rig), n + 3);
    assert_eq!(again[..1024], rig.file.read(16 * 512, 1024)[..]);
}

#[test]
fn lazily_populated_regions() {
    // Every frame starts unpopulated: each pin goes through the slow path.
    let mut rig = Rig::new(RigOptions {
        regions: RegionOptions {
            lazy: true,
            ..Default::default()
        },
        ..Default::default()
    });
    let g0 = rig.gup.stats();
    let written = rig.write_ok(
        2,
        &Layout::direct(vec![r(HDR, 16), r(R1.0 + 0x5000, 4096), w(HDR + 0x800, 1)]),
        10,
    );
    assert_eq!(
        rig.read_ok(
            2,
            &Layout::direct(vec![r(HDR, 16), w(R2.0 + 0x123, 4096), w(HDR + 0x800, 1)])
        ),
        written
    );
    let g = rig.gup.stats();
    assert!(
        g.slow_calls > g0.slow_calls && g.populated > g0.populated,
        "{g:?}"
    );
}

#[test]
fn the_ring_wraps_many_times() {
    let mut rig = Rig::default();
    let mut shadow = rig.file.contents();
    // 700 requests (the 16-bit indices wrap the 256-entry ring twice),
    // several per process() call.
    for round in 0..100u64 {
        let mut expect = Vec::new();
        for k in 0..7u64 {
            let i = round * 7 + k;
            let sector = (i * 13) % 4000;
            let hdr = HDR + k * 0x40;
            let st = HDR + 0x1000 + k;
            let buf = DATA + k * 0x1000;
            if i % 2 == 0 {
                let data = pattern(1000 + i, 512);
                rig.put(hdr, &header(T_OUT, sector));
                rig.put(buf, &data);
                shadow[(sector * 512) as usize..(sector * 512 + 512) as usize]
                    .copy_from_slice(&data);
                let h = rig.drv.submit(&[r(hdr, 16), r(buf, 512), w(st, 1)]);
                expect.push((h, 1, st, None));
            } else {
                rig.put(hdr, &header(T_IN, sector));
                let h = rig.drv.submit(&[r(hdr, 16), w(buf, 512), w(st, 1)]);
                expect.push((h, 513, st, Some((buf, sector))));
            }
        }
        let used = rig.run();
        assert_eq!(used.len(), expect.len());
        for ((id, len), (h, want_len, st, check)) in used.into_iter().zip(expect) {
            assert_eq!((id, len), (u32::from(h), want_len));
            assert_eq!(rig.status(st), S_OK);
            if let Some((buf, sector)) = check {
                let at = (sector * 512) as usize;
                assert!(rig.guest(buf, 512) == shadow[at..at + 512]);
            }
        }
    }
    assert!(rig.file.contents() == shadow);
    let c = rig.counters();
    assert_eq!(
        (c.requests, c.reads, c.writes, c.errors_total()),
        (700, 350, 350, 0)
    );
    assert_eq!(c.error(ErrorClass::Ring), 0);
}
