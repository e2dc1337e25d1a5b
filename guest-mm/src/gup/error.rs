// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Typed errors (DESIGN 4.4), each mapping to the errno Linux's GUP would
//! return.

use std::fmt;

use crate::paging::{ErrorCode, Fault};

/// A page fault the caller must inject into the requesting vCPU (CR2 and
/// error code), after which the instruction restarts and the request is
/// made again (DESIGN 4.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Injection {
    /// The faulting linear address (CR2).
    pub cr2: u64,
    /// The page-fault error code to push.
    pub error_code: ErrorCode,
}

/// Why a request could not take any page (or why it stopped short).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GupError {
    /// EFAULT: the address is not mapped, the access is not allowed, or it
    /// lies in no RAM region (and DUMP was not set).
    Fault {
        /// The address (as the request gave it) that failed.
        address: u64,
        /// The guest page fault, when the guest's page tables refused.
        fault: Option<Fault>,
        /// Set when the fault handler asked for the #PF to be injected into
        /// the requesting vCPU.
        inject: Option<Injection>,
    },
    /// ENOMEM: the host could not populate the page, or a long-term pin
    /// would exceed the VM's limit or lies in a removable region.
    NoMemory,
    /// EHWPOISON: the host page is poisoned.
    HwPoison,
    /// EAGAIN: a frame stayed frozen for longer than the bounded wait, or
    /// the guest kept rewriting its tables; FAST_ONLY requests that took
    /// nothing also return this.
    Again,
    /// EINTR: the request was cancelled (device reset, VM shutdown).
    Interrupted,
    /// EINVAL: invalid flags or range.
    Invalid(&'static str),
    /// EOVERFLOW: the range wraps, or a reference count would overflow.
    Overflow,
}

impl GupError {
    /// The errno value Linux uses for this error (positive).
    pub fn errno(&self) -> i32 {
        match self {
            GupError::Fault { .. } => libc::EFAULT,
            GupError::NoMemory => libc::ENOMEM,
            GupError::HwPoison => libc::EHWPOISON,
            GupError::Again => libc::EAGAIN,
            GupError::Interrupted => libc::EINTR,
            GupError::Invalid(_) => libc::EINVAL,
            GupError::Overflow => libc::EOVERFLOW,
        }
    }

    pub(crate) fn fault_at(address: u64) -> GupError {
        GupError::Fault {
            address,
            fault: None,
            inject: None,
        }
    }
}

impl fmt::Display for GupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GupError::Fault {
                address,
                fault: Some(pf),
                inject,
            } => {
                write!(f, "fault at {address:#x}: {pf}")?;
                if inject.is_some() {
                    write!(f, " (inject into the vCPU)")?;
                }
                Ok(())
            }
            GupError::Fault { address, .. } => write!(
                f,
                "fault at {address:#x}: no guest RAM there, or a write to a read-only region"
            ),
            GupError::NoMemory => f.write_str("out of memory"),
            GupError::HwPoison => f.write_str("hardware-poisoned host page"),
            GupError::Again => f.write_str("try again"),
            GupError::Interrupted => f.write_str("interrupted"),
            GupError::Invalid(why) => write!(f, "invalid request: {why}"),
            GupError::Overflow => f.write_str("overflow"),
        }
    }
}

impl std::error::Error for GupError {}
