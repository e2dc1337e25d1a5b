// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `guest-mm`: get_user_pages for guests.
//!
//! This crate walks a guest's own x86 page tables through the guest memory a
//! VMM hands to KVM (a [`vm_memory::GuestMemoryBackend`]), exactly as the CPU
//! would, and (in later modules) pins guest pages for device DMA.
//!
//! It never depends on KVM: everything here is testable with page tables
//! written into a plain `GuestMemoryMmap`.
//!
//! * [`paging`]: the x86 page-table walker (32-bit, PAE, 4-level, 5-level),
//!   with every permission and reserved-bit check of the Intel SDM, a range
//!   walker that descends once, and the separate Accessed/Dirty update.
//! * [`gup`]: the pinning engine: a frame table, RAII pins, a lockless fast
//!   path and a slow path that faults pages in.

#![deny(missing_docs)]

pub mod gup;
pub mod paging;
