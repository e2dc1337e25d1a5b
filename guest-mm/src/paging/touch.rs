// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Setting Accessed and Dirty bits, as the CPU does (SDM 4.8).
//!
//! The walk itself is pure. This separate step walks one address, checks the
//! access, then sets A in every paging-structure entry used and, for a write,
//! D in the leaf, each with a compare-exchange against the value the walk
//! read. If the guest changed an entry in between, the exchange fails and the
//! whole walk restarts: the bits are only ever set on the entries that
//! actually translate the address at that moment, never on stale ones.
//!
//! Like KVM, bits are set only when the access is allowed (the CPU may also
//! set A on upper levels of a walk that faults lower down; no guest can rely
//! on that). Every entry written is marked dirty in the vm-memory bitmap.

use std::ops::ControlFlow;

use vm_memory::GuestMemoryBackend;

use super::access::{Access, Fault};
use super::context::PagingContext;
use super::entry::{Table, PTE_A, PTE_D};
use super::walker::{walk_with_path, Path, RangeOutcome, Translation};

/// How many times [`touch`] restarts after losing a race with the guest.
pub const TOUCH_RETRIES: u32 = 16;

/// Why [`touch`] did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TouchError {
    /// The access faults: nothing was written.
    Fault(Fault),
    /// The guest kept rewriting the entries: every one of
    /// [`TOUCH_RETRIES`] attempts lost a compare-exchange.
    Contended,
}

/// Walk `address` for `access` and set the Accessed bits of every entry used
/// and, for a write, the Dirty bit of the leaf. Returns the translation with
/// the leaf value as written.
pub fn touch<M>(
    mem: &M,
    ctx: &PagingContext,
    address: u64,
    access: Access,
) -> Result<Translation, TouchError>
where
    M: GuestMemoryBackend + ?Sized,
{
    for _ in 0..TOUCH_RETRIES {
        let mut found: Option<(Translation, Path)> = None;
        let outcome = walk_with_path(mem, ctx, address, 1, access, |m, path, _| {
            found = Some((
                Translation {
                    gpa: m.gpa,
                    page_size: m.page_size,
                    perms: m.perms,
                    leaf: m.leaf,
                },
                *path,
            ));
            ControlFlow::Break(())
        });
        if let RangeOutcome::Faulted(f) = outcome {
            return Err(TouchError::Fault(f));
        }
        let Some((mut t, path)) = found else {
            return Err(TouchError::Contended);
        };
        let width = u64::from(t.leaf.width);
        // Top-down, as the CPU walks. Levels above the leaf only.
        let mut lost = false;
        for level in (usize::from(t.leaf.level) + 1..path.len()).rev() {
            if let Some((gpa, value)) = path[level] {
                if !set_bits(mem, gpa, width, value, PTE_A) {
                    lost = true;
                    break;
                }
            }
        }
        if lost {
            continue;
        }
        let want = if access.is_write() {
            PTE_A | PTE_D
        } else {
            PTE_A
        };
        // With paging off there is no leaf entry and nothing to set.
        if let Some(gpa) = t.leaf.gpa {
            if !set_bits(mem, gpa, width, t.leaf.value, want) {
                continue;
            }
            t.leaf.value |= want;
        }
        return Ok(t);
    }
    Err(TouchError::Contended)
}

/// Set `bits` in the entry at `gpa` that held `value`; false if it changed.
fn set_bits<M>(mem: &M, gpa: u64, width: u64, value: u64, bits: u64) -> bool
where
    M: GuestMemoryBackend + ?Sized,
{
    if value & bits == bits {
        return true;
    }
    // Resolve the whole table page, not the entry: `Table::new` only accepts
    // 8-byte aligned host addresses, which a 4-byte entry of 32-bit paging
    // at an odd index is not.
    let page = gpa & !0xfff;
    let table = Table::new(mem, page, 4096);
    table
        .compare_exchange(gpa - page, width, value, value | bits)
        .unwrap_or(false)
}
