// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Regression tests for findings of a review of the virtio-blk device
//! against the virtio 1.2 specification.

mod common;

use common::*;
use devices::virtio::blk::ErrorClass;

/// The status byte of the requests below.
const ST: u64 = HDR + 0x800;

/// virtio 1.2 section 5.2.6.2 (device requirements, device operation):
/// "the device MUST set the status byte to VIRTIO_BLK_S_UNSUPP for discard,
/// secure erase and write zeroes commands if any unknown flag is set", and
/// for discard commands if the unmap flag is set. A range list whose first
/// range is out of range and whose second carries such a flag is therefore
/// UNSUPP, not IOERR; and nothing is discarded.
#[test]
fn a_reserved_flag_in_any_range_is_unsupp() {
    let mut rig = Rig::default();
    let capacity = rig.block.disk().capacity();
    // (kind, flags of the second range): a reserved bit for both kinds, and
    // unmap for a discard.
    for (kind, flags) in [(T_DISCARD, 2), (T_WRITE_ZEROES, 2), (T_DISCARD, 1)] {
        rig.put(HDR, &header(kind, 0));
        let mut ranges = range(capacity, 8, 0).to_vec();
        ranges.extend_from_slice(&range(0, 8, flags));
        rig.put(DATA, &ranges);
        rig.put(ST, &[0xff]);
        let file = rig.file.contents();
        let before = rig.counters();
        let used = rig.one(&[r(HDR, 16), r(DATA, 32), w(ST, 1)]);
        let d = delta(&before, &rig.counters());
        assert_eq!(
            rig.status(ST),
            S_UNSUPP,
            "kind {kind} flags {flags}: status"
        );
        assert_eq!(used, 1, "kind {kind} flags {flags}: used length");
        let mut want = one_failure(ErrorClass::Unsupported);
        want.interrupts = 1;
        assert_eq!(d, want, "kind {kind} flags {flags}: counters");
        assert!(rig.file.contents() == file, "the backing file changed");
    }
}

/// Pages of `path` in the host page cache that are dirty (cachestat(2),
/// Linux 6.5+), or `None` where the kernel lacks the call.
fn dirty_pages(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::io::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let f = std::fs::File::open(path).expect("open backing file");
    // The whole file (a length of 0 runs to its end).
    let range = Range { off: 0, len: 0 };
    let mut st = Stat::default();
    // SAFETY: cachestat reads `range` and writes `st`, both valid for the
    // call; the descriptor is open.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &range as *const Range,
            &mut st as *mut Stat,
            0u32,
        )
    };
    (r == 0).then_some(st.nr_dirty + st.nr_writeback)
}

/// virtio 1.2 section 5.2.6.2: when the device offers VIRTIO_BLK_F_FLUSH and
/// the driver negotiates neither it nor CONFIG_WCE, a write becomes stable
/// when it completes, and "the device MUST ensure that stable writes are
/// committed to [persistent storage] before reporting completion of the
/// write". So a completed write leaves no dirty page of the backing file in
/// the host page cache. (With FLUSH negotiated it may, and does: the check
/// that the measurement sees dirty pages at all.)
#[test]
fn writes_are_stable_at_completion_without_flush() {
    for flush in [false, true] {
        let mut rig = Rig::new(RigOptions {
            features: if flush { 1 << 9 } else { 0 },
            ..Default::default()
        });
        let path = rig.block.disk().path().to_path_buf();
        // The file was just written by the test: commit that first.
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .expect("sync backing file");
        let Some(before) = dirty_pages(&path) else {
            eprintln!("SKIPPED: cachestat(2) is not available on this kernel (needs Linux 6.5+)");
            return;
        };
        assert_eq!(before, 0, "dirty pages after fsync");
        rig.put(HDR, &header(T_OUT, 8));
        rig.put(DATA, &pattern(5, 8192));
        rig.put(ST, &[0xff]);
        assert_eq!(rig.one(&[r(HDR, 16), r(DATA, 8192), w(ST, 1)]), 1);
        assert_eq!(rig.status(ST), S_OK);
        let dirty = dirty_pages(&path).unwrap_or(0);
        if flush {
            assert!(
                dirty > 0,
                "FLUSH negotiated: the write may stay in the page cache"
            );
        } else {
            assert_eq!(
                dirty, 0,
                "FLUSH not negotiated: the completed write is not stable"
            );
        }
    }
}

/// A reset that begins while chains are still available: the worker's
/// `process` must return (taking nothing) instead of looping between a
/// drain that refuses to take chains and a notification re-enable that
/// keeps finding them (a reset would then wait forever for the worker;
/// the random transport test hit this once in 20,000 sequences).
#[test]
fn processing_stops_once_a_reset_has_begun() {
    let mut rig = Rig::default();
    rig.drv.write(HDR, &header(T_IN, 0));
    rig.drv.submit(&[r(HDR, 16), w(DATA, 512), w(HDR + 16, 1)]);
    rig.q.cancel_token().cancel();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut q = rig.q;
    let t = std::thread::spawn(move || {
        let taken = q.process();
        let _ = tx.send(taken);
        q
    });
    let taken = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("process() did not return after the cancel");
    assert_eq!(taken, 0);
    let q = t.join().expect("the processing thread");
    assert!(q.has_pending(), "the chain is still there, untaken");
}
