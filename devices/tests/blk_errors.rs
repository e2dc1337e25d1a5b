// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-blk: every class of bad input a driver can produce, each checked
//! for its status byte (or its absence), its used length, the exact
//! counters (one request, one failure of the expected class), that nothing
//! stays pinned, that the backing file and the guest buffers the device
//! must not touch are untouched, and that a good request still works
//! afterwards.

mod common;

use common::*;
use devices::virtio::blk::{ErrorClass, MAX_DISCARD_SEG};
use devices::virtio::INT_CONFIG;

/// Status byte, data and header addresses the cases use.
const ST: u64 = HDR + 0x800;

/// A good read and a good write after each bad request.
fn still_works(rig: &mut Rig) {
    rig.read_ok(
        1,
        &Layout::direct(vec![
            r(HDR + 0x400, 16),
            w(DATA + 0x40000, 1024),
            w(HDR + 0x900, 1),
        ]),
    );
    if !rig.block.disk().read_only() {
        rig.write_ok(
            2,
            &Layout::direct(vec![
                r(HDR + 0x400, 16),
                r(DATA + 0x50000, 512),
                w(HDR + 0x900, 1),
            ]),
            99,
        );
    }
}

/// What a bad request must produce.
struct Want {
    /// The status byte (None: not written).
    status: Option<u8>,
    used: u32,
    class: ErrorClass,
}

fn refused(status: u8, class: ErrorClass) -> Want {
    Want {
        status: Some(status),
        used: 1,
        class,
    }
}

fn dropped(class: ErrorClass) -> Want {
    Want {
        status: None,
        used: 0,
        class,
    }
}

/// Submits `chain` (whose header, if any, the caller wrote), with the
/// status byte at [`ST`] preset to 0xff and `watch` (guest ranges the
/// device must leave alone) preset to 0xee; runs it and checks `want`.
fn bad(rig: &mut Rig, chain: &[D], watch: &[(u64, u64)], want: Want) {
    rig.put(ST, &[0xff]);
    for &(a, l) in watch {
        rig.put(a, &vec![0xee; l as usize]);
    }
    let file = rig.file.contents();
    let before = rig.counters();
    let used = rig.one(chain);
    let d = delta(&before, &rig.counters());
    assert_eq!(used, want.used, "used length");
    assert_eq!(rig.status(ST), want.status.unwrap_or(0xff), "status byte");
    let mut expect = one_failure(want.class);
    expect.interrupts = 1;
    assert_eq!(
        d, expect,
        "counters: one request, one {:?} failure",
        want.class
    );
    for &(a, l) in watch {
        assert!(
            rig.guest(a, l as usize).iter().all(|&b| b == 0xee),
            "guest bytes at {a:#x} changed"
        );
    }
    assert!(rig.file.contents() == file, "the backing file changed");
    gup_clean(&rig.gup.stats());
    still_works(rig);
}

#[test]
fn malformed_chains() {
    let mut rig = Rig::default();
    let mem = rig.drv.mem.clone();
    rig.put(HDR, &header(T_IN, 0));
    rig.put(ST, &[0xff]);
    // A loop: 0 -> 1 -> 0.
    put_desc(&mem, DESC, 200, HDR, 16, F_NEXT, 201);
    put_desc(&mem, DESC, 201, DATA, 512, F_WRITE | F_NEXT, 200);
    rig.drv.publish(200);
    let used = rig.run();
    assert_eq!(used, vec![(200, 0)]);
    assert_eq!(rig.counters().error(ErrorClass::Malformed), 1);
    still_works(&mut rig);
    let c0 = rig.counters();
    // A loop through itself, a next index outside the table.
    put_desc(&mem, DESC, 210, HDR, 16, F_NEXT, 210);
    rig.drv.publish(210);
    put_desc(&mem, DESC, 211, HDR, 16, F_NEXT, QSIZE + 5);
    rig.drv.publish(211);
    let used = rig.run();
    assert_eq!(used, vec![(210, 0), (211, 0)]);
    let d = delta(&c0, &rig.counters());
    assert_eq!(
        (d.requests, d.error(ErrorClass::Malformed), d.errors_total()),
        (2, 2, 2)
    );
    assert_eq!(rig.status(ST), 0xff);
    still_works(&mut rig);

    // An indirect table inside an indirect table.
    let inner = indirect(&mem, TABLES + 0x1000, &[w(ST, 1)]);
    let outer = indirect(&mem, TABLES, &[r(HDR, 16), w(DATA, 512), inner]);
    bad(
        &mut rig,
        &[outer],
        &[(DATA, 512)],
        dropped(ErrorClass::Malformed),
    );
    // Indirect tables of a bad length: not whole descriptors, empty.
    indirect(&mem, TABLES, &[r(HDR, 16), w(DATA, 512), w(ST, 1)]);
    for len in [24, 47, 0] {
        let d = D {
            addr: TABLES,
            len,
            flags: F_INDIRECT,
        };
        bad(
            &mut rig,
            &[d],
            &[(DATA, 512)],
            dropped(ErrorClass::Malformed),
        );
    }
    // An indirect table in the MMIO hole, past the end of RAM, its first
    // descriptor straddling either.
    for at in [HOLE, HOLE - 8, RAM_END, RAM_END - 8] {
        let d = D {
            addr: at,
            len: 48,
            flags: F_INDIRECT,
        };
        bad(&mut rig, &[d], &[], dropped(ErrorClass::Malformed));
    }
    // An indirect descriptor after a direct one, whose table is fine, is
    // legal for virtio-queue; one whose table's next index leaves it is not.
    put_desc(&mem, TABLES + 0x2000, 0, DATA, 512, F_WRITE | F_NEXT, 7);
    let d = D {
        addr: TABLES + 0x2000,
        len: 32,
        flags: F_INDIRECT,
    };
    bad(
        &mut rig,
        &[r(HDR, 16), d],
        &[(DATA, 512)],
        dropped(ErrorClass::Malformed),
    );
    // A readable descriptor after a writable one.
    rig.put(HDR, &header(T_OUT, 0));
    bad(
        &mut rig,
        &[r(HDR, 16), w(ST, 1), r(DATA, 512)],
        &[],
        dropped(ErrorClass::Malformed),
    );
    // A buffer that runs past 2^64 (its last byte would wrap to low memory).
    rig.put(HDR, &header(T_IN, 0));
    bad(
        &mut rig,
        &[r(HDR, 16), w(u64::MAX - 0xff, 0x200)],
        &[(0, 0x100)],
        dropped(ErrorClass::Malformed),
    );
}

#[test]
fn short_headers_and_wrong_directions() {
    let mut rig = Rig::default();
    rig.put(HDR, &header(T_IN, 0));
    // Fewer than 16 readable bytes: IOERR.
    bad(
        &mut rig,
        &[r(HDR, 8), w(ST, 1)],
        &[],
        refused(S_IOERR, ErrorClass::Malformed),
    );
    bad(
        &mut rig,
        &[r(HDR, 8), r(HDR + 8, 7), w(DATA, 512), w(ST, 1)],
        &[(DATA, 512)],
        refused(S_IOERR, ErrorClass::Malformed),
    );
    // A read with device-readable data, a write with device-writable data,
    // GET_ID with readable data.
    bad(
        &mut rig,
        &[r(HDR, 16), r(DATA, 512), w(ST, 1)],
        &[],
        refused(S_IOERR, ErrorClass::Malformed),
    );
    rig.put(HDR, &header(T_OUT, 0));
    bad(
        &mut rig,
        &[r(HDR, 16), w(DATA, 512), w(ST, 1)],
        &[(DATA, 512)],
        refused(S_IOERR, ErrorClass::Malformed),
    );
    rig.put(HDR, &header(T_GET_ID, 0));
    bad(
        &mut rig,
        &[r(HDR, 16), r(DATA, 20), w(ST, 1)],
        &[],
        refused(S_IOERR, ErrorClass::Malformed),
    );
}

#[test]
fn buffers_outside_ram() {
    let mut rig = Rig::default();
    let places = [
        (HOLE + 0x1000, "in the MMIO hole"),
        (HOLE - 256, "from region 1 into the hole"),
        (RAM_END + 0x1000, "past the end of RAM"),
        (RAM_END - 256, "straddling the end of RAM"),
        (1 << 40, "far past RAM"),
    ];
    for (at, what) in places {
        eprintln!("data {what}");
        rig.put(HDR, &header(T_IN, 0));
        bad(
            &mut rig,
            &[r(HDR, 16), w(DATA, 512), w(at, 512), w(ST, 1)],
            &[(DATA, 512)],
            refused(S_IOERR, ErrorClass::BadAddress),
        );
        rig.put(HDR, &header(T_OUT, 0));
        bad(
            &mut rig,
            &[r(HDR, 16), r(at, 512), w(ST, 1)],
            &[],
            refused(S_IOERR, ErrorClass::BadAddress),
        );
        // The header there (for the places next to RAM: half in RAM).
        bad(
            &mut rig,
            &[r(at + 248, 16), w(DATA, 512), w(ST, 1)],
            &[(DATA, 512)],
            refused(S_IOERR, ErrorClass::BadAddress),
        );
        // GET_ID's buffer there.
        rig.put(HDR, &header(T_GET_ID, 0));
        bad(
            &mut rig,
            &[r(HDR, 16), w(at + 248, 20), w(ST, 1)],
            &[],
            refused(S_IOERR, ErrorClass::BadAddress),
        );
        // Discard ranges there.
        rig.put(HDR, &header(T_DISCARD, 0));
        bad(
            &mut rig,
            &[r(HDR, 16), r(at + 248, 16), w(ST, 1)],
            &[],
            refused(S_IOERR, ErrorClass::BadAddress),
        );
        // The status byte there: the request is refused before it runs,
        // nothing is written, the used length is 0.
        rig.put(HDR, &header(T_OUT, 0));
        rig.put(DATA, &pattern(5, 512));
        bad(
            &mut rig,
            &[r(HDR, 16), r(DATA, 512), w(at + 300, 1)],
            &[],
            dropped(ErrorClass::BadAddress),
        );
        rig.put(HDR, &header(T_IN, 0));
        bad(
            &mut rig,
            &[r(HDR, 16), w(DATA, 512), w(at + 300, 1)],
            &[(DATA, 512)],
            dropped(ErrorClass::BadAddress),
        );
    }
}

#[test]
fn lengths_and_sectors() {
    let mut rig = Rig::default();
    let cap = rig.block.disk().capacity();
    assert_eq!(cap, 4096);
    // Not a multiple of 512: reads and writes, one segment or several.
    for (kind, segs) in [
        (T_IN, vec![w(DATA, 500)]),
        (T_IN, vec![w(DATA, 256), w(DATA + 0x1000, 257)]),
        (T_OUT, vec![r(DATA, 1)]),
        (T_OUT, vec![r(DATA, 512), r(DATA + 0x1000, 511)]),
    ] {
        rig.put(HDR, &header(kind, 0));
        let mut chain = vec![r(HDR, 16)];
        chain.extend(&segs);
        chain.push(w(ST, 1));
        let watch: Vec<(u64, u64)> = segs
            .iter()
            .filter(|d| d.flags & F_WRITE != 0)
            .map(|d| (d.addr, u64::from(d.len)))
            .collect();
        bad(
            &mut rig,
            &chain,
            &watch,
            refused(S_IOERR, ErrorClass::UnalignedLength),
        );
    }
    // Beyond the capacity: the last sector plus one, exactly at the end,
    // far away, and sectors whose end overflows.
    for (sector, len) in [
        (cap - 1, 1024),
        (cap, 512),
        (cap + 1, 0),
        (u64::MAX / 512, 512),
        (u64::MAX, 512),
        (u64::MAX - 1, 1024),
        (1 << 55, 512),
    ] {
        for kind in [T_IN, T_OUT] {
            rig.put(HDR, &header(kind, sector));
            let data = if kind == T_IN {
                w(DATA, len)
            } else {
                r(DATA, len)
            };
            let chain = if len == 0 {
                vec![r(HDR, 16), w(ST, 1)]
            } else {
                vec![r(HDR, 16), data, w(ST, 1)]
            };
            let watch = if kind == T_IN {
                vec![(DATA, len.max(1))]
            } else {
                vec![]
            };
            bad(
                &mut rig,
                &chain,
                &watch,
                refused(S_IOERR, ErrorClass::OutOfRange),
            );
        }
    }
    // The last sector itself is fine; so is a read of nothing at the end.
    rig.read_ok(
        cap - 1,
        &Layout::direct(vec![r(HDR, 16), w(DATA, 512), w(ST, 1)]),
    );
    rig.put(HDR, &header(T_IN, cap));
    assert_eq!(rig.one(&[r(HDR, 16), w(ST, 1)]), 1);
    assert_eq!(rig.status(ST), S_OK);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut rig = Rig::new(RigOptions {
        read_only: true,
        ..Default::default()
    });
    rig.put(HDR, &header(T_OUT, 0));
    rig.put(DATA, &pattern(3, 512));
    bad(
        &mut rig,
        &[r(HDR, 16), r(DATA, 512), w(ST, 1)],
        &[],
        refused(S_IOERR, ErrorClass::ReadOnly),
    );
    // Discard and write-zeroes (negotiated here through queue_for; the
    // transport would not let a driver negotiate them on a read-only disk).
    for kind in [T_DISCARD, T_WRITE_ZEROES] {
        rig.put(HDR, &header(kind, 0));
        rig.put(DATA, &range(0, 8, 0));
        bad(
            &mut rig,
            &[r(HDR, 16), r(DATA, 16), w(ST, 1)],
            &[],
            refused(S_IOERR, ErrorClass::ReadOnly),
        );
    }
    // Not negotiated at all: UNSUPP.
    let mut rig = Rig::new(RigOptions {
        read_only: true,
        features: 0,
        ..Default::default()
    });
    for kind in [T_DISCARD, T_WRITE_ZEROES, T_FLUSH] {
        rig.put(HDR, &header(kind, 0));
        rig.put(DATA, &range(0, 8, 0));
        bad(
            &mut rig,
            &[r(HDR, 16), r(DATA, 16), w(ST, 1)],
            &[],
            refused(S_UNSUPP, ErrorClass::Unsupported),
        );
    }
}

#[test]
fn unsupported_types_and_range_flags() {
    let mut rig = Rig::default();
    for kind in [2, 3, 5, 7, 9, 10, 12, 14, 0xffff_ffff] {
        rig.put(HDR, &header(kind, 0));
        bad(
            &mut rig,
            &[r(HDR, 16), w(DATA, 512), w(ST, 1)],
            &[(DATA, 512)],
            refused(S_UNSUPP, ErrorClass::Unsupported),
        );
    }
    // DISCARD with the unmap flag, either with a reserved flag: UNSUPP.
    for (kind, flags) in [
        (T_DISCARD, 1),
        (T_DISCARD, 2),
        (T_WRITE_ZEROES, 2),
        (T_WRITE_ZEROES, 0x8000_0001),
    ] {
        rig.put(HDR, &header(kind, 0));
        rig.put(DATA, &range(0, 8, flags));
        bad(
            &mut rig,
            &[r(HDR, 16), r(DATA, 16), w(ST, 1)],
            &[],
            refused(S_UNSUPP, ErrorClass::Unsupported),
        );
    }
    // Ranges past the capacity, or whose end overflows.
    for (sector, n) in [
        (4095, 2),
        (4096, 1),
        (4097, 0),
        (u64::MAX, 1),
        (u64::MAX - 3, 8),
    ] {
        rig.put(HDR, &header(T_WRITE_ZEROES, 0));
        rig.put(DATA, &range(sector, n, 0));
        bad(
            &mut rig,
            &[r(HDR, 16), r(DATA, 16), w(ST, 1)],
            &[],
            refused(S_IOERR, ErrorClass::OutOfRange),
        );
    }
    // A good range before a bad one: refused as a whole, the good range
    // not applied (`bad` checks the file is unchanged).
    for (second, status, class) in [
        (range(9, 1, 4), S_UNSUPP, ErrorClass::Unsupported),
        (range(4096, 1, 0), S_IOERR, ErrorClass::OutOfRange),
    ] {
        rig.put(HDR, &header(T_WRITE_ZEROES, 0));
        rig.put(DATA, &[range(0, 8, 0), second].concat());
        bad(
            &mut rig,
            &[r(HDR, 16), r(DATA, 32), w(ST, 1)],
            &[],
            refused(status, class),
        );
    }
    // A range list that is not whole ranges, an empty one, too many ranges.
    for len in [0u64, 15, 17, 16 * (u64::from(MAX_DISCARD_SEG) + 1)] {
        rig.put(HDR, &header(T_DISCARD, 0));
        let list: Vec<u8> = (0..len.div_ceil(16)).flat_map(|i| range(i, 1, 0)).collect();
        rig.put(DATA, &list);
        let mut chain = vec![r(HDR, 16)];
        if len != 0 {
            chain.push(r(DATA, len));
        }
        chain.push(w(ST, 1));
        bad(
            &mut rig,
            &chain,
            &[],
            refused(S_IOERR, ErrorClass::Malformed),
        );
    }
    // A range of no sectors, even at the very end, does nothing.
    for kind in [T_DISCARD, T_WRITE_ZEROES] {
        let file = rig.file.contents();
        rig.put(HDR, &header(kind, 0));
        rig.put(DATA, &[range(4096, 0, 0), range(7, 0, 0)].concat());
        let before = rig.counters();
        assert_eq!(rig.one(&[r(HDR, 16), r(DATA, 32), w(ST, 1)]), 1);
        assert_eq!(rig.status(ST), S_OK);
        let d = delta(&before, &rig.counters());
        assert_eq!((d.discards, d.errors_total()), (1, 0));
        assert!(rig.file.contents() == file);
    }
}

#[test]
fn no_writable_status_byte() {
    let mut rig = Rig::default();
    for kind in [T_IN, T_OUT, T_FLUSH, T_GET_ID, 77] {
        rig.put(HDR, &header(kind, 0));
        rig.put(DATA, &pattern(8, 512));
        // Everything readable: nothing may be written anywhere.
        bad(
            &mut rig,
            &[r(HDR, 16), r(DATA, 512)],
            &[],
            dropped(ErrorClass::NoStatus),
        );
        bad(&mut rig, &[r(HDR, 16)], &[], dropped(ErrorClass::NoStatus));
    }
    // Writable descriptors of length 0 only.
    bad(
        &mut rig,
        &[r(HDR, 16), w(ST, 0)],
        &[],
        dropped(ErrorClass::NoStatus),
    );
}

#[test]
fn avail_index_more_than_a_queue_ahead_breaks_the_ring() {
    let mut rig = Rig::default();
    still_works(&mut rig);
    let c0 = rig.counters();
    let used0 = rig.drv.used_idx();
    assert_eq!(rig.interrupt.status() & INT_CONFIG, 0);
    // One entry too many: the driver claims QSIZE + 1 new chains.
    rig.drv
        .set_avail_idx(rig.drv.avail_idx.wrapping_add(QSIZE + 1));
    assert_eq!(rig.q.process(), 0, "no chain taken from a corrupt ring");
    let d = delta(&c0, &rig.counters());
    assert_eq!(d.error(ErrorClass::Ring), 1);
    assert_eq!((d.requests, d.errors_total()), (0, 1));
    assert!(rig.q.is_broken());
    assert_ne!(rig.interrupt.needs_reset(), 0, "DEVICE_NEEDS_RESET");
    assert_ne!(
        rig.interrupt.status() & INT_CONFIG,
        0,
        "a configuration interrupt"
    );
    assert_eq!(rig.drv.used_idx(), used0);
    // The queue stays stopped, even once the index is sane again.
    rig.drv.set_avail_idx(rig.drv.avail_idx);
    rig.drv.submit(&[r(HDR, 16), w(DATA, 512), w(ST, 1)]);
    assert_eq!(rig.q.process(), 0);
    assert!(!rig.q.has_pending());
    assert_eq!(rig.drv.used_idx(), used0);
    assert_eq!(delta(&c0, &rig.counters()).errors_total(), 1);
    // Exactly a queue ahead is legal.
    let mut rig = Rig::default();
    for i in 0..QSIZE {
        rig.put(HDR + 16 * u64::from(i), &header(T_FLUSH, 0));
        rig.drv.submit(&[
            r(HDR + 16 * u64::from(i), 16),
            w(HDR + 0x2000 + u64::from(i), 1),
        ]);
    }
    assert_eq!(rig.run().len(), usize::from(QSIZE));
    assert_eq!(rig.counters().flushes, u64::from(QSIZE));
    assert!(!rig.q.is_broken());
}

#[test]
fn head_index_out_of_range() {
    let mut rig = Rig::default();
    rig.drv.publish(QSIZE + 3);
    rig.drv.publish(u16::MAX);
    let c0 = rig.counters();
    rig.put(HDR, &header(T_FLUSH, 0));
    let good = rig.drv.submit(&[r(HDR, 16), w(ST, 1)]);
    // No used entry can name the bad heads; the good chain completes.
    assert_eq!(rig.run(), vec![(u32::from(good), 1)]);
    let d = delta(&c0, &rig.counters());
    assert_eq!((d.requests, d.flushes), (3, 1));
    assert_eq!((d.error(ErrorClass::Malformed), d.errors_total()), (2, 2));
    assert!(!rig.q.is_broken());
    still_works(&mut rig);
}
