// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-blk behind the virtio-mmio transport (virtio 1.2 section 4.2.2),
//! driven as a guest driver would: registers (identity, features, status
//! sequence, queue setup, DRIVER_OK), requests in a virtqueue in guest
//! memory, QueueNotify (without KVM the transport signals the notifier
//! itself), and the worker thread's used entries and interrupts. Also
//! feature negotiation rules, EVENT_IDX, DEVICE_NEEDS_RESET, and reset
//! (the worker and its I/O threads stop, a re-initialised device works).

mod common;

use std::time::Duration;

use common::*;
use devices::virtio::blk::{config, features, ErrorClass, DEVICE_TYPE, MAX_DISCARD_SEG, SEG_MAX};
use devices::virtio::mmio::*;
use devices::virtio::status::*;
use devices::virtio::{
    F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, INT_CONFIG, INT_USED_RING,
};

const V1: u64 = 1 << F_VERSION_1;
const EVENT_IDX: u64 = 1 << F_RING_EVENT_IDX;

fn config_bytes(m: &mut Mmio, at: usize, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    m.regs.t.read(CONFIG + at as u64, &mut b);
    b
}

fn config_u32(m: &mut Mmio, at: usize) -> u32 {
    u32::from_le_bytes(config_bytes(m, at, 4).try_into().unwrap())
}

#[test]
fn identity_features_and_config_space() {
    let mut m = Mmio::new(11, 3000, false);
    assert_eq!(m.regs.r(MAGIC_VALUE), 0x7472_6976);
    assert_eq!(m.regs.r(VERSION_REG), 2);
    assert_eq!(m.regs.r(DEVICE_ID), DEVICE_TYPE);
    assert_eq!(m.regs.r(DEVICE_ID), 2);
    assert_eq!(m.regs.r(VENDOR_ID_REG), VENDOR_ID);
    let f = m.regs.device_features();
    for bit in [
        F_VERSION_1,
        F_RING_EVENT_IDX,
        F_RING_INDIRECT_DESC,
        features::SEG_MAX,
        features::BLK_SIZE,
        features::FLUSH,
        features::DISCARD,
        features::WRITE_ZEROES,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature bit {bit} offered");
    }
    assert_eq!(f & (1 << features::RO), 0, "a writable disk is not RO");
    assert_eq!(f & (1 << features::SIZE_MAX), 0);
    // Selector 2 and up: no features.
    m.regs.w(DEVICE_FEATURES_SEL, 2);
    assert_eq!(m.regs.r(DEVICE_FEATURES), 0);

    // Configuration space: capacity as one u64, two u32, single bytes.
    assert_eq!(
        u64::from_le_bytes(
            config_bytes(&mut m, config::CAPACITY, 8)
                .try_into()
                .unwrap()
        ),
        3000
    );
    assert_eq!(config_u32(&mut m, 0), 3000);
    assert_eq!(config_u32(&mut m, 4), 0);
    assert_eq!(config_bytes(&mut m, 1, 1), vec![(3000u32 >> 8) as u8]);
    assert_eq!(config_u32(&mut m, config::SEG_MAX), SEG_MAX);
    assert_eq!(SEG_MAX, 254);
    assert_eq!(config_u32(&mut m, config::BLK_SIZE), 512);
    assert_eq!(config_u32(&mut m, config::MAX_DISCARD_SECTORS), 3000);
    assert_eq!(config_u32(&mut m, config::MAX_DISCARD_SEG), MAX_DISCARD_SEG);
    assert_eq!(config_u32(&mut m, config::DISCARD_SECTOR_ALIGNMENT), 1);
    assert_eq!(config_u32(&mut m, config::MAX_WRITE_ZEROES_SECTORS), 3000);
    assert_eq!(
        config_u32(&mut m, config::MAX_WRITE_ZEROES_SEG),
        MAX_DISCARD_SEG
    );
    assert_eq!(
        config_bytes(&mut m, config::WRITE_ZEROES_MAY_UNMAP, 1),
        vec![1]
    );
    // Past the end: zeroes, also for a read straddling it.
    assert_eq!(config_bytes(&mut m, config::LEN - 2, 4), vec![0, 0, 0, 0]);
    assert_eq!(config_bytes(&mut m, 0xe00, 4), vec![0; 4]);
    // Writes to the configuration space are ignored.
    m.regs.t.write(CONFIG, &[0xff; 8]);
    assert_eq!(config_u32(&mut m, 0), 3000);

    // Queue 0 offers 256 entries; there is no queue 1.
    m.regs.w(QUEUE_SEL, 0);
    assert_eq!(m.regs.r(QUEUE_NUM_MAX), 256);
    assert_eq!(m.regs.r(QUEUE_READY), 0);
    m.regs.w(QUEUE_SEL, 1);
    assert_eq!(m.regs.r(QUEUE_NUM_MAX), 0);
    // No shared memory regions.
    assert_eq!(m.regs.r(SHM_LEN_LOW), u32::MAX);
    assert_eq!(m.regs.r(SHM_LEN_HIGH), u32::MAX);

    // Bad accesses: a 2-byte register read, a misaligned one, an unknown
    // register, a write to a read-only register; counted, never fatal.
    let bad0 = m.regs.t.bad_accesses();
    let mut b2 = [0xaau8; 2];
    m.regs.t.read(MAGIC_VALUE, &mut b2);
    assert_eq!(b2, [0, 0]);
    let mut b4 = [0xaau8; 4];
    m.regs.t.read(MAGIC_VALUE + 1, &mut b4);
    assert_eq!(b4, [0; 4]);
    assert_eq!(m.regs.r(0x0f0), 0);
    m.regs.w(MAGIC_VALUE, 0);
    m.regs.t.write(STATUS, &[1]);
    assert_eq!(m.regs.r(STATUS), 0);
    assert_eq!(m.regs.t.bad_accesses() - bad0, 5);

    // A read-only disk offers RO and neither DISCARD nor WRITE_ZEROES.
    let mut ro = Mmio::new(12, 64, true);
    let f = ro.regs.device_features();
    assert_ne!(f & (1 << features::RO), 0);
    assert_eq!(
        f & (1 << features::DISCARD | 1 << features::WRITE_ZEROES),
        0
    );
    assert_eq!(config_u32(&mut ro, 0), 64);
}

#[test]
fn feature_negotiation_rules() {
    let mut m = Mmio::new(13, 64, false);
    let offered = m.regs.device_features();
    let start = |m: &mut Mmio| {
        m.regs.w(STATUS, 0);
        m.regs.w(STATUS, ACKNOWLEDGE);
        m.regs.w(STATUS, ACKNOWLEDGE | DRIVER);
    };
    // Without VERSION_1: refused (FEATURES_OK reads back clear).
    start(&mut m);
    m.regs.set_driver_features(offered & !V1);
    m.regs.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(m.regs.r(STATUS), ACKNOWLEDGE | DRIVER);
    // And DRIVER_OK cannot follow.
    m.regs
        .w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(m.regs.r(STATUS) & (FEATURES_OK | DRIVER_OK), 0);
    // Bits the device did not offer: RO on a writable disk, bit 0, a bit
    // in the high word.
    for extra in [1u64 << features::RO, 1, 1 << 40] {
        assert_eq!(offered & extra, 0);
        start(&mut m);
        m.regs.set_driver_features(V1 | extra);
        m.regs.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(
            m.regs.r(STATUS) & FEATURES_OK,
            0,
            "features {extra:#x} refused"
        );
    }
    // A subset with VERSION_1: accepted; the features are then frozen.
    start(&mut m);
    m.regs.set_driver_features(V1 | EVENT_IDX);
    m.regs.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(m.regs.r(STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    let bad0 = m.regs.t.bad_accesses();
    // Status bits only accumulate, in order: clearing one, or skipping
    // ahead, is ignored.
    m.regs.w(STATUS, ACKNOWLEDGE | FEATURES_OK);
    assert_eq!(m.regs.r(STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    m.regs.w(STATUS, 0);
    m.regs.w(STATUS, DRIVER);
    assert_eq!(m.regs.r(STATUS), 0);
    m.regs.w(STATUS, ACKNOWLEDGE | DRIVER_OK);
    assert_eq!(m.regs.r(STATUS) & DRIVER_OK, 0);
    assert!(m.regs.t.bad_accesses() >= bad0 + 3);
    // FAILED sticks until a reset.
    m.regs.w(STATUS, 0);
    m.regs.w(STATUS, ACKNOWLEDGE | FAILED);
    assert_ne!(m.regs.r(STATUS) & FAILED, 0);
    m.regs.w(STATUS, 0);
    assert_eq!(m.regs.r(STATUS), 0);
}

/// Submits a read of `sectors` sectors at `sector` into `buf`, header and
/// status in the slot `k` of the header area; returns the head.
fn submit_read(drv: &mut Driver, k: u64, sector: u64, buf: u64, len: u64) -> u16 {
    drv.write(HDR + 32 * k, &header(T_IN, sector));
    drv.write(HDR + 0x2000 + k, &[0xff]);
    drv.submit(&[r(HDR + 32 * k, 16), w(buf, len), w(HDR + 0x2000 + k, 1)])
}

fn submit_write(drv: &mut Driver, k: u64, sector: u64, buf: u64, data: &[u8]) -> u16 {
    drv.write(HDR + 32 * k, &header(T_OUT, sector));
    drv.write(buf, data);
    drv.write(HDR + 0x2000 + k, &[0xff]);
    drv.submit(&[
        r(HDR + 32 * k, 16),
        r(buf, data.len() as u64),
        w(HDR + 0x2000 + k, 1),
    ])
}

#[test]
fn requests_through_the_worker_thread() {
    let mut m = Mmio::new(14, 8192, false);
    let mut drv = Driver::standard(memory(&m.gup));
    let s = m.regs.init(&drv, V1 | (1 << features::FLUSH));
    assert_eq!(s, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(m.regs.r(QUEUE_READY), 1);
    // Queue registers are frozen after DRIVER_OK.
    m.regs.w(QUEUE_NUM, 8);
    m.regs.w(QUEUE_DESC_LOW, 0x9000);
    assert_eq!(m.regs.r(QUEUE_DESC_LOW), DESC as u32);

    // A write, then a read of it, each notified on its own.
    let data = pattern(21, 4096);
    let h = submit_write(&mut drv, 0, 16, DATA, &data);
    m.regs.notify();
    assert_eq!(wait_used(&mut drv, 1), vec![(u32::from(h), 1)]);
    assert_eq!(drv.read(HDR + 0x2000, 1), vec![S_OK]);
    assert!(m.file.read(16 * 512, 4096) == data);
    let h = submit_read(&mut drv, 1, 16, DATA + 0x10000, 4096);
    m.regs.notify();
    assert_eq!(wait_used(&mut drv, 1), vec![(u32::from(h), 4097)]);
    assert!(drv.read(DATA + 0x10000, 4096) == data);
    assert_ne!(m.regs.r(INTERRUPT_STATUS) & INT_USED_RING, 0);
    m.regs.w(INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(m.regs.r(INTERRUPT_STATUS), 0);
    assert!(m.take_irqs() >= 1);

    // A batch, one notify: large transfers (I/O threads) and small ones
    // (inline) may complete in any order; every one completes once.
    let big = pattern(22, 256 << 10);
    let mut want = std::collections::BTreeMap::new();
    want.insert(submit_write(&mut drv, 2, 1024, DATA + 0x100000, &big), 1);
    want.insert(submit_read(&mut drv, 3, 0, DATA + 0x20000, 512), 513);
    want.insert(
        submit_read(&mut drv, 4, 2048, DATA + 0x200000, 512 << 10),
        (512 << 10) + 1,
    );
    drv.write(HDR + 32 * 5, &header(T_FLUSH, 0));
    want.insert(drv.submit(&[r(HDR + 32 * 5, 16), w(HDR + 0x2005, 1)]), 1);
    m.regs.notify();
    let mut got = wait_used(&mut drv, 4);
    got.sort();
    let want: Vec<(u32, u32)> = want.into_iter().map(|(h, l)| (u32::from(h), l)).collect();
    assert_eq!(got, want);
    for k in 2..6 {
        assert_eq!(drv.read(HDR + 0x2000 + k, 1), vec![S_OK], "status {k}");
    }
    assert!(m.file.read(1024 * 512, big.len()) == big);
    assert!(drv.read(DATA + 0x20000, 512) == m.file.read(0, 512));
    assert!(drv.read(DATA + 0x200000, 512 << 10) == m.file.read(2048 * 512, 512 << 10));
    let c = m.stats.snapshot();
    assert_eq!((c.requests, c.reads, c.writes, c.flushes), (6, 3, 2, 1));
    assert_eq!(c.errors_total(), 0);
    assert!(c.notifications >= 1);
    assert_eq!(m.gup.stats().pins_outstanding, 0);
    // Unknown queue index in QueueNotify: ignored, counted.
    let bad0 = m.regs.t.bad_accesses();
    m.regs.w(QUEUE_NOTIFY, 5);
    assert_eq!(m.regs.t.bad_accesses(), bad0 + 1);
}

#[test]
fn event_idx_and_no_interrupt() {
    let mut m = Mmio::new(15, 64, false);
    let mut drv = Driver::standard(memory(&m.gup));
    m.regs.init(&drv, V1 | EVENT_IDX);
    m.take_irqs();
    // used_event = 2: no interrupt for the first two completions (used
    // index 1 and 2), one when the third makes it 3.
    drv.set_used_event(2);
    for k in 0..3u64 {
        submit_read(&mut drv, k, k, DATA + k * 0x1000, 512);
        m.regs.notify();
        wait_used(&mut drv, 1);
        // Give a (wrong) interrupt time to arrive.
        std::thread::sleep(Duration::from_millis(20));
        let irqs = m.take_irqs();
        assert_eq!(irqs, u64::from(k == 2), "completion {k}: interrupts {irqs}");
        // The device asks to be notified at its next available index.
        assert_eq!(drv.avail_event(), drv.avail_idx);
    }
    assert_eq!(m.stats.snapshot().interrupts, 1);

    // Without EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT suppresses them.
    let mut m = Mmio::new(16, 64, false);
    let mut drv = Driver::standard(memory(&m.gup));
    m.regs.init(&drv, V1);
    drv.set_avail_flags(1);
    submit_read(&mut drv, 0, 0, DATA, 512);
    m.regs.notify();
    wait_used(&mut drv, 1);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(m.take_irqs(), 0);
    drv.set_avail_flags(0);
    submit_read(&mut drv, 1, 0, DATA, 512);
    m.regs.notify();
    wait_used(&mut drv, 1);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(m.take_irqs(), 1);
    assert_eq!(m.stats.snapshot().interrupts, 1);
}

fn workers(name: &str) -> usize {
    thread_names()
        .iter()
        .filter(|n| n.as_str() == name || n.starts_with(&format!("{name}-")))
        .count()
}

/// [`workers`] once at least `n` of them show: a new thread names itself
/// after it starts (until then /proc shows its creator's name), so a count
/// taken right after the spawn can miss it.
fn workers_at_least(name: &str, n: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let count = workers(name);
        if count >= n || std::time::Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Re-initialises `m` with the standard rings and checks that a 512-byte
/// read completes (used length 513) and that no DEVICE_NEEDS_RESET is left.
fn works_after_reinit(m: &mut Mmio) {
    let mut drv = Driver::standard(memory(&m.gup));
    assert_eq!(m.regs.init(&drv, V1) & DEVICE_NEEDS_RESET, 0);
    submit_read(&mut drv, 0, 0, DATA, 512);
    m.regs.notify();
    assert_eq!(wait_used(&mut drv, 1)[0].1, 513);
}

#[test]
fn reset_stops_the_worker_and_a_reinit_works() {
    let mut m = Mmio::new(17, 256, false);
    assert_eq!(workers("virtio-blk17"), 0);
    let mut drv = Driver::standard(memory(&m.gup));
    m.regs.init(&drv, V1);
    // The worker, its four readers and its writer.
    assert_eq!(
        workers_at_least("virtio-blk17", 6),
        6,
        "threads: {:?}",
        thread_names()
    );
    submit_read(&mut drv, 0, 3, DATA, 1024);
    m.regs.notify();
    wait_used(&mut drv, 1);
    // Reset: every register back to its initial value, the worker and its
    // I/O threads joined.
    let resets = m.regs.t.resets();
    m.regs.w(STATUS, 0);
    assert_eq!(m.regs.t.resets(), resets + 1);
    assert_eq!(m.regs.r(STATUS), 0);
    assert_eq!(m.regs.r(INTERRUPT_STATUS), 0);
    assert_eq!(m.regs.r(QUEUE_READY), 0);
    assert_eq!(m.regs.r(QUEUE_DESC_LOW), 0);
    assert_eq!(workers("virtio-blk17"), 0, "threads: {:?}", thread_names());
    // A chain made available in the old rings is not processed.
    let before = m.stats.snapshot().requests;
    let used = drv.used_idx();
    submit_read(&mut drv, 1, 3, DATA, 1024);
    m.regs.notify();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(drv.used_idx(), used);
    assert_eq!(m.stats.snapshot().requests, before);
    // Re-initialised with rings elsewhere (a smaller queue, in region 1):
    // requests work again.
    let mut drv = Driver::new(memory(&m.gup), 16, R1.0, R1.0 + 0x1000, R1.0 + 0x2000);
    assert_eq!(m.regs.init(&drv, V1) & DRIVER_OK, DRIVER_OK);
    let data = pattern(31, 2048);
    let h = submit_write(&mut drv, 0, 100, DATA, &data);
    m.regs.notify();
    assert_eq!(wait_used(&mut drv, 1), vec![(u32::from(h), 1)]);
    assert!(m.file.read(100 * 512, 2048) == data);
    // Several resets in a row, with requests in flight.
    for round in 0..5 {
        for k in 0..8 {
            submit_read(&mut drv, k, k, DATA + k * 0x10000, 64 << 10);
        }
        m.regs.notify();
        m.regs.w(STATUS, 0);
        assert_eq!(workers("virtio-blk17"), 0, "round {round}");
        assert_eq!(m.gup.stats().pins_outstanding, 0, "round {round}");
        drv = Driver::new(memory(&m.gup), 16, R1.0, R1.0 + 0x1000, R1.0 + 0x2000);
        m.regs.init(&drv, V1);
    }
    submit_read(&mut drv, 0, 0, DATA, 512);
    m.regs.notify();
    wait_used(&mut drv, 1);
    m.regs.w(STATUS, 0);
    assert_eq!(workers("virtio-blk17"), 0);
}

#[test]
fn a_corrupt_ring_needs_a_reset() {
    let mut m = Mmio::new(18, 64, false);
    let mut drv = Driver::standard(memory(&m.gup));
    m.regs.init(&drv, V1);
    submit_read(&mut drv, 0, 0, DATA, 512);
    m.regs.notify();
    wait_used(&mut drv, 1);
    m.regs.w(INTERRUPT_ACK, INT_USED_RING | INT_CONFIG);
    m.take_irqs();
    // The available index runs more than a queue ahead.
    drv.set_avail_idx(drv.avail_idx.wrapping_add(QSIZE + 1));
    m.regs.notify();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while m.regs.r(STATUS) & DEVICE_NEEDS_RESET == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no DEVICE_NEEDS_RESET"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    assert_ne!(m.regs.r(INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert!(m.take_irqs() >= 1);
    let c = m.stats.snapshot();
    assert_eq!((c.error(ErrorClass::Ring), c.requests), (1, 1));
    // The queue stays stopped.
    drv.set_avail_idx(drv.avail_idx);
    submit_read(&mut drv, 1, 0, DATA, 512);
    m.regs.notify();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(m.stats.snapshot().requests, 1);
    // A reset clears it; a re-initialised device works.
    m.regs.w(STATUS, 0);
    assert_eq!(m.regs.r(STATUS), 0);
    works_after_reinit(&mut m);
}

#[test]
fn rings_outside_ram_fail_activation() {
    let mut m = Mmio::new(19, 64, false);
    // The used ring in the MMIO hole: DRIVER_OK leads to DEVICE_NEEDS_RESET,
    // no worker starts.
    let bad = Driver {
        used: HOLE,
        ..Driver::standard(memory(&m.gup))
    };
    let s = m.regs.init(&bad, V1);
    assert_ne!(s & DEVICE_NEEDS_RESET, 0);
    assert_eq!(workers("virtio-blk19"), 0);
    // A queue never made ready: the same.
    m.regs.w(STATUS, 0);
    m.regs.w(STATUS, ACKNOWLEDGE | DRIVER);
    m.regs.set_driver_features(V1);
    m.regs.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    m.regs
        .w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_ne!(m.regs.r(STATUS) & DEVICE_NEEDS_RESET, 0);
    assert_eq!(workers("virtio-blk19"), 0);
    // After a reset, good rings work.
    works_after_reinit(&mut m);
}

#[test]
fn an_invalid_queue_size_fails_activation() {
    // Not a power of two, larger than QueueNumMax, and a value that would
    // truncate to a valid size: each makes DRIVER_OK set DEVICE_NEEDS_RESET
    // and start nothing (the device would use rings of another size than
    // the driver laid out).
    let mut m = Mmio::new(20, 64, false);
    for bad in [100u32, 512, 0x1_0010, 0] {
        let drv = Driver::standard(memory(&m.gup));
        m.regs.init_sized(&drv, V1, bad);
        assert_ne!(
            m.regs.r(STATUS) & DEVICE_NEEDS_RESET,
            0,
            "QueueNum {bad:#x} accepted"
        );
        assert_eq!(workers("virtio-blk20"), 0, "QueueNum {bad:#x}");
    }
    // After a reset, a valid size works.
    works_after_reinit(&mut m);
    m.regs.w(STATUS, 0);
}

#[test]
fn queue_ready_zero_stops_the_queue() {
    let mut m = Mmio::new(21, 64, false);
    let mut drv = Driver::standard(memory(&m.gup));
    m.regs.init(&drv, V1);
    submit_read(&mut drv, 0, 0, DATA, 512);
    m.regs.notify();
    wait_used(&mut drv, 1);
    // The driver stops the queue and reads QueueReady back as 0; the
    // worker is gone and a chain made available afterwards stays untouched.
    m.regs.w(QUEUE_SEL, 0);
    m.regs.w(QUEUE_READY, 0);
    assert_eq!(m.regs.r(QUEUE_READY), 0);
    assert_eq!(workers("virtio-blk21"), 0, "threads: {:?}", thread_names());
    let used = drv.used_idx();
    submit_read(&mut drv, 1, 0, DATA, 512);
    m.regs.notify();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(drv.used_idx(), used);
    // A reset and a re-init bring it back.
    works_after_reinit(&mut m);
    m.regs.w(STATUS, 0);
}
