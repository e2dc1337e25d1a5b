// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Address spaces (DESIGN 4.1), the fault-handler interface of the slow path
//! (DESIGN 4.6), and cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::paging::context::{CR0_WP, CR4_PKE, CR4_PKS, CR4_SMAP, CR4_SMEP};
use crate::paging::{Access, AccessKind, Fault, PagingContext, Privilege};

use super::error::Injection;
use super::flags::GupFlags;

/// What a request's addresses mean.
#[derive(Clone, Copy)]
pub enum AddressSpace<'a> {
    /// Guest-physical addresses (standard virtio).
    Physical,
    /// Guest-virtual addresses in the address space `ctx` describes,
    /// translated by walking the guest's page tables.
    PageTables {
        /// The paging registers.
        ctx: PagingContext,
        /// Who resolves guest page faults; `None` makes them errors.
        handler: Option<&'a dyn FaultHandler>,
    },
}

impl std::fmt::Debug for AddressSpace<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressSpace::Physical => f.write_str("Physical"),
            AddressSpace::PageTables { ctx, handler } => f
                .debug_struct("PageTables")
                .field("ctx", ctx)
                .field("handler", &handler.is_some())
                .finish(),
        }
    }
}

impl<'a> AddressSpace<'a> {
    /// Guest-virtual addresses under `ctx`, with no fault handler.
    pub fn page_tables(ctx: PagingContext) -> Self {
        AddressSpace::PageTables { ctx, handler: None }
    }

    /// Guest-virtual addresses under `ctx`, faults resolved by `handler`.
    pub fn with_handler(ctx: PagingContext, handler: &'a dyn FaultHandler) -> Self {
        AddressSpace::PageTables {
            ctx,
            handler: Some(handler),
        }
    }
}

/// The access a request makes, and the paging context it is checked
/// against: FORCE clears CR0.WP, SMEP, SMAP and protection keys and makes
/// the access supervisor, so R/W and U/S are ignored as a debugger's access
/// ignores them (present and reserved bits still count).
pub(crate) fn access_for(ctx: &PagingContext, flags: GupFlags) -> (PagingContext, Access) {
    let kind = if flags.contains(GupFlags::WRITE) {
        AccessKind::Write
    } else {
        AccessKind::Read
    };
    if flags.contains(GupFlags::FORCE) {
        let mut c = *ctx;
        c.cr0 &= !CR0_WP;
        c.cr4 &= !(CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_PKS);
        return (c, Access::new(kind, Privilege::Supervisor));
    }
    let privilege = if flags.contains(GupFlags::USER) {
        Privilege::User
    } else {
        Privilege::Supervisor
    };
    (*ctx, Access::new(kind, privilege))
}

/// What a fault handler decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// The fault was resolved (the page is mapped now): walk again.
    Retry,
    /// Inject this page fault into the requesting vCPU and restart its
    /// instruction; the request ends here with a Fault carrying it.
    Inject(Injection),
    /// The request fails with Fault.
    Fail,
}

/// Resolves guest page faults met by the slow path.
pub trait FaultHandler: Sync {
    /// The walk of `fault.address` for `access` faulted with `fault`.
    fn handle(&self, fault: &Fault, access: Access) -> FaultOutcome;
}

/// A handler for vCPU-driven requests: every page fault is handed back to be
/// injected into the vCPU, exactly as the CPU would raise it.
#[derive(Clone, Copy, Debug, Default)]
pub struct InjectIntoVcpu;

impl FaultHandler for InjectIntoVcpu {
    fn handle(&self, fault: &Fault, _access: Access) -> FaultOutcome {
        match fault.error_code() {
            Some(error_code) => FaultOutcome::Inject(Injection {
                cr2: fault.address,
                error_code,
            }),
            None => FaultOutcome::Fail,
        }
    }
}

/// Cancels requests between pages (device reset, VM shutdown).
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancel every request that carries this token.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
