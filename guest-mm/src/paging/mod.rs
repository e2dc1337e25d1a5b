// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The x86 guest page-table walker.
//!
//! Data flow, one file per step:
//!
//! * [`context`]: a [`PagingContext`] built from raw register values (CR0,
//!   CR3, CR4, EFER, RFLAGS, PKRU, PKRS, MAXPHYADDR) knows its [`PagingMode`].
//! * [`entry`]: the layout of paging-structure entries per mode (reserved
//!   bits, address bits, leaf sizes) and the atomic reads and
//!   compare-exchanges of entries in guest memory.
//! * [`access`]: what is being done ([`Access`]), what a translation allows
//!   ([`Permissions`]), and the page fault that results when it is not
//!   allowed ([`Fault`], with the exact hardware [`ErrorCode`]).
//! * [`walker`]: the walker itself. [`walk_range`] descends the tables once
//!   and iterates the entries of each table page; [`translate`] is the
//!   single-address case of the same code.
//! * [`touch`]: setting Accessed and Dirty bits with compare-exchange, as the
//!   CPU does, as an explicit step separate from the (pure) walk.
//!
//! The Intel SDM (volume 3A, chapter 4, "Paging") is the specification every
//! check here cites.

pub mod access;
pub mod context;
pub mod entry;
pub mod touch;
pub mod walker;

pub use access::{
    Access, AccessKind, ErrorCode, Fault, FaultKind, FaultReason, Permissions, Privilege,
};
pub use context::{CpuFeatures, PagingContext, PagingMode};
pub use entry::{LeafEntry, PageSize};
pub use touch::{touch, TouchError};
pub use walker::{translate, walk_range, Mapping, RangeOutcome, Translation};
