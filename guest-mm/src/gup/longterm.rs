// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Long-term pins (DESIGN 4.6): their host pages are populated and locked
//! (mlock) so they stay resident for as long as a device may DMA into them,
//! and they count against a per-VM limit, as RLIMIT_MEMLOCK does for Linux's
//! FOLL_LONGTERM.
//!
//! The kernel does not count mlock calls, so a page is unlocked only when
//! the last long-term pin on it goes: this table counts them per frame.
//! Long-term pins are rare and always on the slow path, so a mutex is fine.

use std::collections::HashMap;
use std::sync::Mutex;

use super::error::GupError;
use super::memmap::{RamRegion, PAGE_SIZE};

/// Per-VM long-term pin accounting.
#[derive(Debug)]
pub struct Longterm {
    limit_pages: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Pages currently counted against the limit.
    used: u64,
    /// Long-term pins per (region host base, frame index).
    locked: HashMap<(usize, u64), u32>,
}

impl Longterm {
    /// Accounting with a limit of `limit_pages` 4K pages.
    pub fn new(limit_pages: u64) -> Self {
        Longterm {
            limit_pages,
            state: Mutex::new(State::default()),
        }
    }

    /// Pages currently held by long-term pins.
    pub fn used_pages(&self) -> u64 {
        self.state.lock().map(|s| s.used).unwrap_or(0)
    }

    /// Count `[gpa, gpa + len)` against the limit and lock its host pages.
    pub(crate) fn acquire(&self, region: &RamRegion, gpa: u64, len: u64) -> Result<(), GupError> {
        let first = region.frame_index(gpa);
        let last = region.frame_index(gpa + len - 1);
        let pages = last - first + 1;
        let mut st = self.state.lock().map_err(|_| GupError::Again)?;
        if st.used + pages > self.limit_pages {
            return Err(GupError::NoMemory);
        }
        let host = region.host_addr(region.start());
        for f in first..=last {
            let n = st.locked.entry((host, f)).or_insert(0);
            if *n == 0 {
                let addr = region.host_addr(region.start() + f * PAGE_SIZE);
                // SAFETY: `addr` is a page of the region's live host mapping
                // (the caller holds the region); mlock only changes residency.
                let rc = unsafe { libc::mlock(addr as *const libc::c_void, PAGE_SIZE as usize) };
                if rc != 0 {
                    let err = std::io::Error::last_os_error();
                    // Undo this call's locks before failing.
                    st.locked.remove(&(host, f));
                    for g in first..f {
                        unlock_one(&mut st, region, host, g);
                    }
                    return Err(match err.raw_os_error() {
                        Some(libc::ENOMEM) | Some(libc::EAGAIN) | Some(libc::EPERM) => {
                            GupError::NoMemory
                        }
                        _ => GupError::fault_at(gpa),
                    });
                }
            }
            *n += 1;
        }
        st.used += pages;
        Ok(())
    }

    /// Undo [`Longterm::acquire`] for `[gpa, gpa + len)`.
    pub(crate) fn release(&self, region: &RamRegion, gpa: u64, len: u64) {
        let first = region.frame_index(gpa);
        let last = region.frame_index(gpa + len - 1);
        let host = region.host_addr(region.start());
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        for f in first..=last {
            unlock_one(&mut st, region, host, f);
        }
        st.used = st.used.saturating_sub(last - first + 1);
    }
}

fn unlock_one(st: &mut State, region: &RamRegion, host: usize, f: u64) {
    let Some(n) = st.locked.get_mut(&(host, f)) else {
        return;
    };
    *n -= 1;
    if *n == 0 {
        st.locked.remove(&(host, f));
        let addr = region.host_addr(region.start() + f * PAGE_SIZE);
        // SAFETY: as in `acquire`; munlock only changes residency.
        unsafe { libc::munlock(addr as *const libc::c_void, PAGE_SIZE as usize) };
    }
}
