// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vmm`: the KVM side of the project.
//!
//! For now it holds the one piece of KVM glue the walker needs: turning a
//! vCPU's special registers into a [`guest_mm::paging::PagingContext`]
//! ([`paging`]). Booting guests arrives with the VMM issue.

#![deny(missing_docs)]

pub mod paging;
