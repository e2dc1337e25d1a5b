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
