// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vmm`: a KVM microVM monitor (DESIGN section 6).
//!
//! - [`cli`], [`app`]: the command line and what the binary does with it.
//! - [`vm`]: one VM from creation to stop, and the exit-code convention.
//! - [`memory`]: guest RAM (vm-memory with a dirty bitmap) as KVM slots.
//! - [`boot`]: PVH and Linux boot (linux-loader).
//! - [`vcpu`], [`cpuid`]: vCPU state and run loop.
//! - [`event_loop`]: event-manager loop for exit, signals and stdin.
//! - [`guest_image`]: the embedded built-in guest.
//! - [`paging`]: a vCPU's `kvm_sregs` as a guest-mm paging context.
//! - [`virtio`]: the virtio-blk disks on the MMIO bus (placement, command
//!   line, irqfd/ioeventfd, reports); [`scratch`]: the default run's disks.
//! - [`agent`]: the guest-agent port (copies to guest-virtual buffers,
//!   #PF injection and restart; docs/guest-agent.md).

#![deny(missing_docs)]

pub mod agent;
pub mod app;
pub mod boot;
pub mod cli;
pub mod cpuid;
pub mod error;
pub mod event_loop;
pub mod guest_image;
pub mod memory;
pub mod paging;
pub mod scratch;
pub mod vcpu;
pub mod virtio;
pub mod vm;
