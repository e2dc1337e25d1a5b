// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Accesses, permissions and the faults they raise (SDM 4.6 and 4.7).

use std::fmt;

use super::context::PagingContext;

/// What kind of access is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

/// Who makes the access (SDM 4.6: "supervisor-mode and user-mode accesses").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Privilege {
    /// A user-mode access: CPL 3, explicit.
    User,
    /// An explicit supervisor-mode access: CPL 0, 1 or 2.
    Supervisor,
    /// An implicit supervisor-mode access: a descriptor-table or TSS access
    /// made by the CPU at any CPL. SMAP applies regardless of RFLAGS.AC, and
    /// the fault's U/S bit is 0.
    ImplicitSupervisor,
}

/// An access: kind and privilege.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// User, supervisor, or implicit supervisor.
    pub privilege: Privilege,
}

impl Access {
    /// An access of `kind` by `privilege`.
    pub const fn new(kind: AccessKind, privilege: Privilege) -> Self {
        Access { kind, privilege }
    }
    /// A user-mode read.
    pub const fn user_read() -> Self {
        Self::new(AccessKind::Read, Privilege::User)
    }
    /// A user-mode write.
    pub const fn user_write() -> Self {
        Self::new(AccessKind::Write, Privilege::User)
    }
    /// A supervisor-mode read.
    pub const fn supervisor_read() -> Self {
        Self::new(AccessKind::Read, Privilege::Supervisor)
    }
    /// A supervisor-mode write.
    pub const fn supervisor_write() -> Self {
        Self::new(AccessKind::Write, Privilege::Supervisor)
    }
    /// Whether this is a write.
    pub fn is_write(self) -> bool {
        self.kind == AccessKind::Write
    }
    /// Whether this is an instruction fetch.
    pub fn is_fetch(self) -> bool {
        self.kind == AccessKind::Fetch
    }
    /// Whether this is a user-mode access.
    pub fn is_user(self) -> bool {
        self.privilege == Privilege::User
    }
}

/// Effective permissions of a translation: the combination of every
/// paging-structure entry that controls it (SDM 4.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Permissions {
    /// R/W is 1 in every entry.
    pub writable: bool,
    /// U/S is 1 in every entry: a user-mode address.
    pub user: bool,
    /// XD is 0 in every entry (always true without EFER.NXE or in 32-bit
    /// paging).
    pub executable: bool,
    /// Protection key of the leaf (bits 62:59), in 4- and 5-level paging when
    /// CR4.PKE or CR4.PKS is set.
    pub pkey: Option<u8>,
}

impl Permissions {
    /// Everything allowed (paging disabled).
    pub const ALL: Permissions = Permissions {
        writable: true,
        user: true,
        executable: true,
        pkey: None,
    };
}

/// A page-fault error code (SDM 4.7, figure 4-12).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// P: 0 for a non-present page, 1 for a protection violation.
    pub const P: u32 = 1 << 0;
    /// W/R: the access was a write.
    pub const W: u32 = 1 << 1;
    /// U/S: the access was a user-mode access.
    pub const U: u32 = 1 << 2;
    /// RSVD: a reserved bit was set in some paging-structure entry.
    pub const RSVD: u32 = 1 << 3;
    /// I/D: the access was an instruction fetch (reported only with SMEP, or
    /// with EFER.NXE in PAE, 4-level or 5-level paging).
    pub const ID: u32 = 1 << 4;
    /// PK: a protection-key violation.
    pub const PK: u32 = 1 << 5;

    /// The access bits of the error code (W/R, U/S, I/D) for `access`.
    pub fn for_access(ctx: &PagingContext, access: Access) -> ErrorCode {
        let mut code = 0;
        if access.is_write() {
            code |= Self::W;
        }
        if access.is_user() {
            code |= Self::U;
        }
        if access.is_fetch() && (ctx.smep() || ctx.nxe()) {
            code |= Self::ID;
        }
        ErrorCode(code)
    }

    /// Whether all bits of `mask` are set.
    pub fn has(self, mask: u32) -> bool {
        self.0 & mask == mask
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}[", self.0)?;
        let names = [
            (Self::P, "P"),
            (Self::W, "W"),
            (Self::U, "U"),
            (Self::RSVD, "RSVD"),
            (Self::ID, "I/D"),
            (Self::PK, "PK"),
        ];
        let mut first = true;
        for (bit, name) in names {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str("]")
    }
}

/// Which exception the access raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// #PF with this error code (CR2 is the faulting address).
    PageFault(ErrorCode),
    /// #GP: a non-canonical address in 4- or 5-level paging, an address
    /// beyond 32 bits in the 32-bit modes, or PAE PDPTEs the CPU would have
    /// refused to load.
    GeneralProtection,
}

/// Why the access faults. When several permission rules are violated at
/// once, the first in this list's order is named; the error code is exact in
/// every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultReason {
    /// An entry had P = 0.
    NotPresent,
    /// A present entry had a reserved bit set.
    ReservedBit,
    /// A paging-structure entry or the PAE PDPT lies outside guest RAM. KVM
    /// reports this as a non-present fault; real hardware would read
    /// whatever the bus returns.
    TableOutsideRam,
    /// A user-mode access to a supervisor-mode address.
    UserAccessToSupervisorPage,
    /// A write to a read-only translation (user mode, or supervisor mode with
    /// CR0.WP).
    ReadOnly,
    /// A fetch from a translation with XD set.
    NoExecute,
    /// A supervisor-mode fetch from a user-mode address with CR4.SMEP.
    Smep,
    /// A supervisor-mode data access to a user-mode address with CR4.SMAP
    /// (and RFLAGS.AC clear, or an implicit access).
    Smap,
    /// A protection-key violation (PKRU or PKRS).
    ProtectionKey,
    /// A non-canonical address (4- and 5-level paging).
    NonCanonical,
    /// An address beyond the linear-address space: above 32 bits in 32-bit,
    /// PAE or no paging, or a range running past 2^64.
    AddressTooWide,
    /// A PAE PDPTE with reserved bits set: MOV to CR3 would have raised #GP.
    InvalidPdpte,
}

/// The result of an access that is not allowed: the exception, the level of
/// the entry where the walk stopped (1 = PTE, 2 = PDE, 3 = PDPTE, 4 = PML4E,
/// 5 = PML5E; 0 for faults raised before any entry was read), and the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fault {
    /// The faulting linear address (CR2 for a #PF).
    pub address: u64,
    /// #PF with error code, or #GP.
    pub kind: FaultKind,
    /// Level of the entry at which the walk stopped.
    pub level: u8,
    /// Why.
    pub reason: FaultReason,
}

impl Fault {
    /// The page-fault error code, if this is a #PF.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self.kind {
            FaultKind::PageFault(code) => Some(code),
            FaultKind::GeneralProtection => None,
        }
    }

    /// Whether this is a #PF.
    pub fn is_page_fault(&self) -> bool {
        matches!(self.kind, FaultKind::PageFault(_))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FaultKind::PageFault(code) => write!(
                f,
                "#PF at {:#x} error code {:?} level {} ({:?})",
                self.address, code, self.level, self.reason
            ),
            FaultKind::GeneralProtection => write!(
                f,
                "#GP for {:#x} level {} ({:?})",
                self.address, self.level, self.reason
            ),
        }
    }
}

impl std::error::Error for Fault {}

/// The access-rights rules of SDM 4.6, precomputed for one context and one
/// access so that checking a leaf is a table lookup.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AccessCheck {
    /// Bit `w | u << 1 | x << 2` is set when a translation with those
    /// effective writable/user/executable bits allows the access (before
    /// protection keys).
    allowed: u8,
    /// Protection keys apply (a data access with PKE or PKS on).
    keys: bool,
    /// The base error code (W/R, U/S, I/D).
    base: ErrorCode,
}

impl AccessCheck {
    pub(crate) fn new(ctx: &PagingContext, access: Access) -> Self {
        let mut allowed = 0u8;
        for idx in 0..8u8 {
            let perms = Permissions {
                writable: idx & 1 != 0,
                user: idx & 2 != 0,
                executable: idx & 4 != 0,
                pkey: None,
            };
            if rights_violation(ctx, access, &perms).is_none() {
                allowed |= 1 << idx;
            }
        }
        AccessCheck {
            allowed,
            keys: !access.is_fetch() && (ctx.pke() || ctx.pks()),
            base: ErrorCode::for_access(ctx, access),
        }
    }

    /// Whether effective rights `w | u << 1 | x << 2` allow the access
    /// (protection keys aside).
    #[inline]
    pub(crate) fn allows(&self, rights: u8) -> bool {
        self.allowed & (1 << rights) != 0
    }

    /// Whether protection keys apply to this access.
    #[inline]
    pub(crate) fn uses_keys(&self) -> bool {
        self.keys
    }

    /// The error code for non-present entries and entries outside RAM.
    pub(crate) fn not_present_code(&self) -> ErrorCode {
        self.base
    }

    /// The error code for a reserved-bit violation.
    pub(crate) fn reserved_code(&self) -> ErrorCode {
        ErrorCode(self.base.0 | ErrorCode::P | ErrorCode::RSVD)
    }

    /// `None` when the access is allowed; otherwise the fault's error code and
    /// reason.
    #[inline]
    pub(crate) fn check(
        &self,
        ctx: &PagingContext,
        access: Access,
        perms: &Permissions,
    ) -> Option<(ErrorCode, FaultReason)> {
        let idx = perms.writable as u8 | (perms.user as u8) << 1 | (perms.executable as u8) << 2;
        let rights_ok = self.allowed & (1 << idx) != 0;
        let pk = self.keys && pkey_violation(ctx, access, perms);
        if rights_ok && !pk {
            return None;
        }
        let mut code = self.base.0 | ErrorCode::P;
        if pk {
            code |= ErrorCode::PK;
        }
        let reason = if rights_ok {
            FaultReason::ProtectionKey
        } else {
            // Recompute the reason only on the (rare) failure path.
            rights_violation(ctx, access, perms).unwrap_or(FaultReason::ProtectionKey)
        };
        Some((ErrorCode(code), reason))
    }
}

/// The access-rights rules of SDM 4.6.1, without protection keys.
fn rights_violation(
    ctx: &PagingContext,
    access: Access,
    perms: &Permissions,
) -> Option<FaultReason> {
    match access.privilege {
        Privilege::User => {
            if !perms.user {
                return Some(FaultReason::UserAccessToSupervisorPage);
            }
            match access.kind {
                AccessKind::Read => None,
                AccessKind::Write if !perms.writable => Some(FaultReason::ReadOnly),
                AccessKind::Write => None,
                AccessKind::Fetch if !perms.executable => Some(FaultReason::NoExecute),
                AccessKind::Fetch => None,
            }
        }
        Privilege::Supervisor | Privilege::ImplicitSupervisor => {
            let implicit = access.privilege == Privilege::ImplicitSupervisor;
            match access.kind {
                AccessKind::Fetch => {
                    if perms.user && ctx.smep() {
                        Some(FaultReason::Smep)
                    } else if !perms.executable {
                        Some(FaultReason::NoExecute)
                    } else {
                        None
                    }
                }
                AccessKind::Read | AccessKind::Write => {
                    // SMAP: data accesses to user-mode addresses are refused
                    // unless explicit with RFLAGS.AC = 1.
                    if perms.user && ctx.smap() && (implicit || !ctx.ac()) {
                        return Some(FaultReason::Smap);
                    }
                    if access.kind == AccessKind::Write && !perms.writable && ctx.wp() {
                        return Some(FaultReason::ReadOnly);
                    }
                    None
                }
            }
        }
    }
}

/// The protection-key rule of SDM 4.6.2, for data accesses with PKE or PKS.
/// It is also exactly the condition for the PK bit of the error code (SDM
/// 4.7): the bit is set whenever this holds, whatever else faulted.
fn pkey_violation(ctx: &PagingContext, access: Access, perms: &Permissions) -> bool {
    let Some(key) = perms.pkey else {
        return false;
    };
    let reg = if perms.user {
        if !ctx.pke() {
            return false;
        }
        ctx.pkru
    } else {
        if !ctx.pks() {
            return false;
        }
        ctx.pkrs
    };
    let ad = reg >> (2 * u32::from(key)) & 1 != 0;
    let wd = reg >> (2 * u32::from(key) + 1) & 1 != 0;
    ad || (wd && access.is_write() && (access.is_user() || ctx.wp()))
}
