// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The guest agent: the vCPU-driven request of DESIGN 4.6 (see
//! docs/guest-agent.md).
//!
//! A guest writes anything to port [`PORT`] (`out %al, $0xf8`) with a
//! request in its registers; the vCPU exits to us, we read its registers,
//! build the paging context of its *current* address space (CR0, CR3, CR4,
//! EFER, RFLAGS), and pin the buffer with the GUP engine as a guest-virtual
//! range (`AddressSpace::with_handler(ctx, &InjectIntoVcpu)`), as the CPU
//! would access it (USER when the vCPU is at CPL3). Then:
//!
//! - all of it pinned: the operation runs on the pinned host memory, the
//!   pins are released (write pins mark the frames dirty), and the status
//!   and result go back in RAX, RCX and RDX; the `out` completes.
//! - a guest page fault on the way: every pin taken is dropped, CR2 and a
//!   #PF with the walker's error code are injected into the vCPU, and the
//!   vCPU restarts the `out` instruction itself: the guest's #PF handler
//!   maps the page, returns to the `out`, which exits to us again, and the
//!   request is made again from the start.
//!
//! # Register ABI
//!
//! | register | in | out |
//! |---|---|---|
//! | RAX | operation ([`op`]) | status ([`status`]) |
//! | RDI | buffer address (guest-virtual, current CR3) | unchanged |
//! | RSI | length in bytes, at most [`MAX_LEN`] | unchanged |
//! | RDX | seed (FILL) | result: [`MAGIC`] (PING), FNV-1a 64 (SUM), the failing address (errors) |
//! | RCX | ignored | the page-fault error code for [`status::FAULT`], else unchanged |
//!
//! Every other register is preserved, RIP is after the `out` once the
//! request completes.
//!
//! # Where RIP is, and who skips the `out`
//!
//! Two behaviours exist, and both are handled:
//!
//! - Upstream KVM since Linux 5.x (`kvm_fast_pio` / `complete_fast_pio_out`):
//!   at the userspace exit RIP still points *at* the `out`; KVM skips it on
//!   the next `KVM_RUN`, and only if the linear RIP is still the one it
//!   saved.
//! - kvm_pvm, the development machine's KVM (measured: RIP at the exit was
//!   0x10ded4 for an `out` at 0x10ded2), and KVM before the fast-PIO
//!   rework: RIP is already *past* the `out` at the exit, and nothing is
//!   skipped later.
//!
//! So:
//!
//! - reply: KVM_SET_REGS with RIP untouched; upstream KVM's completion then
//!   skips the `out`, kvm_pvm already has.
//! - restart: first complete the pending `out` *without running the guest*
//!   (`KVM_RUN` with `immediate_exit` set finishes the pending I/O and
//!   returns EINTR, as the KVM API documents for exactly this purpose).
//!   If RIP moved, RIP at the exit was the `out` (upstream); if it did not,
//!   RIP is past the `out`, which is found 2 bytes back when those bytes
//!   are [`OUT_INSN`] (`out %al, $0xf8`, the encoding the ABI asks for).
//!   Then RIP goes back on the `out` (KVM_SET_REGS), CR2 is set
//!   (KVM_SET_SREGS) and the #PF is queued as an injected exception with its
//!   error code (KVM_SET_VCPU_EVENTS). The exception frame holds the `out`'s
//!   address, and the guest's IRET re-executes it. Without the completion
//!   step, upstream KVM would skip the `out` at the next entry after the
//!   exception was queued, and the guest would return past its request. If
//!   the `out` cannot be found, the request fails with
//!   [`status::NO_RESTART`] instead.

//! # Bounded restarts
//!
//! A guest that cannot resolve a fault would restart forever: the same
//! request (same RIP, RAX, RDI, RSI, RDX) faulting at the same CR2 more than
//! [`MAX_SAME_FAULT`] times in a row, or more than [`MAX_INJECTIONS`] times
//! in all, fails with [`status::FAULT`] (RDX = CR2, RCX = error code).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use guest_mm::gup::{AddressSpace, Gup, GupError, GupFlags, InjectIntoVcpu, Injection, Pinned};
use guest_mm::paging::{translate, CpuFeatures, ErrorCode, PagingContext};
use kvm_bindings::{kvm_regs, kvm_sregs, KVM_VCPUEVENT_VALID_PAYLOAD};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, VolatileSlice};

use crate::error::{Error, Result};
use crate::paging::{context_from_sregs, instruction_fetch, ExtraPagingRegs};

/// The agent's I/O port (a write of any size; the value is ignored).
pub const PORT: u16 = 0xf8;
/// The longest buffer a request may name: 1 MiB.
pub const MAX_LEN: u64 = 1 << 20;
/// Injections of the same fault for one request before it fails.
pub const MAX_SAME_FAULT: u32 = 16;
/// Injections for one request, all faults together, before it fails.
pub const MAX_INJECTIONS: u32 = 1024;
/// What PING returns in RDX: "gmmagent", little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"gmmagent");
/// The #PF vector.
const PF_VECTOR: u8 = 14;

/// Operations (RAX in).
pub mod op {
    /// Is the agent there? RDX = [`MAGIC`](super::MAGIC).
    pub const PING: u64 = 0;
    /// Write the pattern of [`pattern`](super::pattern) seeded by RDX into
    /// `[RDI, RDI + RSI)` (a write access).
    pub const FILL: u64 = 1;
    /// Read `[RDI, RDI + RSI)`; RDX = its FNV-1a 64 hash (a read access).
    pub const SUM: u64 = 2;
}

/// Statuses (RAX out).
pub mod status {
    /// Done.
    pub const OK: u64 = 0;
    /// RAX named no operation.
    pub const UNKNOWN_OP: u64 = 1;
    /// RSI is above [`MAX_LEN`](super::MAX_LEN).
    pub const TOO_LONG: u64 = 2;
    /// The range wraps, is not canonical, or is beyond the linear-address
    /// space (the CPU would raise #GP); RDX = the address.
    pub const BAD_ADDRESS: u64 = 3;
    /// The range reaches guest-physical memory that is not RAM (or a
    /// read-only region for FILL); RDX = the address.
    pub const NO_RAM: u64 = 4;
    /// The guest did not resolve a page fault the agent injected (see the
    /// module doc); RDX = CR2, RCX = the error code.
    pub const FAULT: u64 = 5;
    /// The host failed (no memory, poisoned page, frozen frame...); RDX =
    /// the errno.
    pub const HOST_ERROR: u64 = 6;
    /// A fault that needs a restart, on a KVM that cannot restart the `out`.
    pub const NO_RESTART: u64 = 7;
}

/// A decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// [`op::PING`].
    Ping,
    /// [`op::FILL`].
    Fill {
        /// Buffer address.
        addr: u64,
        /// Bytes.
        len: u64,
        /// Pattern seed.
        seed: u64,
    },
    /// [`op::SUM`].
    Sum {
        /// Buffer address.
        addr: u64,
        /// Bytes.
        len: u64,
    },
}

/// Decodes RAX, RDI, RSI, RDX; a bad request is its status.
pub fn decode(rax: u64, rdi: u64, rsi: u64, rdx: u64) -> std::result::Result<Op, u64> {
    let (addr, len) = (rdi, rsi);
    let check = || {
        if len > MAX_LEN {
            Err(status::TOO_LONG)
        } else if addr.checked_add(len).is_none() {
            Err(status::BAD_ADDRESS)
        } else {
            Ok(())
        }
    };
    match rax {
        op::PING => Ok(Op::Ping),
        op::FILL => check().map(|()| Op::Fill {
            addr,
            len,
            seed: rdx,
        }),
        op::SUM => check().map(|()| Op::Sum { addr, len }),
        _ => Err(status::UNKNOWN_OP),
    }
}

/// The 64-bit word `index` of the FILL pattern seeded by `seed`
/// (splitmix64 of `seed + index`). Byte `i` of a filled buffer is byte
/// `i % 8` (little-endian) of word `i / 8`.
pub fn pattern(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes the pattern bytes `[offset, offset + out.len())` into `out`.
pub fn pattern_bytes(seed: u64, offset: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        let at = offset + i as u64;
        *b = pattern(seed, at / 8).to_le_bytes()[(at % 8) as usize];
    }
}

/// FNV-1a 64: the hash before any byte.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;

/// FNV-1a 64 of `bytes`, continuing from `hash`.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The counters of every vCPU's requests.
#[derive(Debug, Default)]
struct Counters {
    exits: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    bad_input: AtomicU64,
    bytes_filled: AtomicU64,
    bytes_summed: AtomicU64,
    injected: [AtomicU64; 4],
    gave_up: AtomicU64,
}

/// The error-code classes injections are counted by.
const CLASSES: [&str; 4] = ["not_present", "protection", "reserved", "pkey"];

fn class(code: ErrorCode) -> usize {
    if code.has(ErrorCode::RSVD) {
        2
    } else if code.has(ErrorCode::PK) {
        3
    } else if code.has(ErrorCode::P) {
        1
    } else {
        0
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The counters at some instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentCounters {
    /// Exits through the port (every restart is one more).
    pub exits: u64,
    /// Requests answered with [`status::OK`].
    pub ok: u64,
    /// Requests answered with an error status.
    pub failed: u64,
    /// Of those, requests refused before any pin (unknown operation, too
    /// long, wrapping range).
    pub bad_input: u64,
    /// Bytes written by FILL.
    pub bytes_filled: u64,
    /// Bytes read by SUM.
    pub bytes_summed: u64,
    /// #PF injected, by class: not present, protection, reserved bit,
    /// protection key.
    pub injected: [u64; 4],
    /// Requests failed because the guest did not resolve a fault.
    pub gave_up: u64,
}

impl AgentCounters {
    /// Every #PF injected.
    pub fn injected_total(&self) -> u64 {
        self.injected.iter().sum()
    }
}

impl fmt::Display for AgentCounters {
    /// The `vmm: agent: ...` line (without the `vmm: `).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "agent: port={PORT:#x} exits={} replies={} ok={} failed={} bad_input={} bytes_filled={} bytes_summed={} injected_pf={}",
            self.exits,
            self.ok + self.failed,
            self.ok,
            self.failed,
            self.bad_input,
            self.bytes_filled,
            self.bytes_summed,
            self.injected_total()
        )?;
        for (name, n) in CLASSES.iter().zip(self.injected) {
            write!(f, " {name}={n}")?;
        }
        write!(f, " gave_up={}", self.gave_up)
    }
}

/// The agent of one VM: the GUP engine its requests pin through, and the
/// counters.
#[derive(Debug)]
pub struct Agent {
    gup: Arc<Gup>,
    counters: Counters,
}

impl Agent {
    /// An agent pinning through `gup` (the VM's engine).
    pub fn new(gup: Arc<Gup>) -> Self {
        Agent {
            gup,
            counters: Counters::default(),
        }
    }

    /// The counters now.
    pub fn counters(&self) -> AgentCounters {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AgentCounters {
            exits: l(&c.exits),
            ok: l(&c.ok),
            failed: l(&c.failed),
            bad_input: l(&c.bad_input),
            bytes_filled: l(&c.bytes_filled),
            bytes_summed: l(&c.bytes_summed),
            injected: [
                l(&c.injected[0]),
                l(&c.injected[1]),
                l(&c.injected[2]),
                l(&c.injected[3]),
            ],
            gave_up: l(&c.gave_up),
        }
    }

    /// Serves `op` in the address space `ctx` (`user`: the vCPU is at
    /// CPL3): pins the buffer, and either runs the operation or says which
    /// fault to inject. No KVM here.
    pub fn serve(&self, ctx: &PagingContext, user: bool, op: Op) -> Outcome {
        let space = AddressSpace::with_handler(*ctx, &InjectIntoVcpu);
        self.serve_in(&space, user, op)
    }

    fn serve_in(&self, space: &AddressSpace<'_>, user: bool, op: Op) -> Outcome {
        let (addr, len, write) = match op {
            Op::Ping => return Outcome::ok(MAGIC),
            Op::Fill { addr, len, .. } => (addr, len, true),
            Op::Sum { addr, len } => (addr, len, false),
        };
        let mut flags = GupFlags::PIN | GupFlags::TOUCH;
        if user {
            flags |= GupFlags::USER;
        }
        if write {
            flags |= GupFlags::WRITE;
        }
        let pinned = match self.gup.pin(space, addr, len, flags) {
            Ok(p) if p.bytes() == len => p,
            Ok(p) => {
                // Stopped short: drop what was taken before anything else
                // (the guest may remap those pages while it handles the
                // fault), then answer as for an error.
                let why = p.short_reason().copied();
                drop(p);
                return Outcome::from_error(why.unwrap_or(GupError::Again), addr);
            }
            Err(e) => return Outcome::from_error(e, addr),
        };
        match op {
            Op::Fill { seed, .. } => {
                fill(&pinned, seed);
                bump(&self.counters.bytes_filled, len);
                Outcome::ok(0)
            }
            Op::Sum { .. } => {
                let hash = sum(&pinned);
                bump(&self.counters.bytes_summed, len);
                Outcome::ok(hash)
            }
            Op::Ping => Outcome::ok(MAGIC),
        }
    }
}

/// Host memory of one pinned extent as a volatile slice (the guest may
/// access it concurrently from another vCPU, as with DMA).
fn extent_slices(pinned: &Pinned) -> impl Iterator<Item = VolatileSlice<'_>> {
    pinned.iter_extents().filter_map(|e| {
        let ptr = e.host_ptr()?;
        // SAFETY: the extent's `len` bytes at `ptr` are guest RAM pinned by
        // `pinned`, which keeps the region mapped for the slice's lifetime
        // (it borrows `pinned`); all access to guest memory is volatile.
        Some(unsafe { VolatileSlice::new(ptr, e.len as usize) })
    })
}

/// Writes the FILL pattern into every extent of `pinned`.
fn fill(pinned: &Pinned, seed: u64) {
    let mut buf = [0u8; 4096];
    let mut offset = 0u64;
    for slice in extent_slices(pinned) {
        let mut done = 0;
        while done < slice.len() {
            let n = (slice.len() - done).min(buf.len());
            pattern_bytes(seed, offset, &mut buf[..n]);
            if let Ok(dst) = slice.subslice(done, n) {
                dst.copy_from(&buf[..n]);
            }
            done += n;
            offset += n as u64;
        }
    }
}

/// FNV-1a 64 of every extent of `pinned`, in order.
fn sum(pinned: &Pinned) -> u64 {
    let mut buf = [0u8; 4096];
    let mut hash = FNV_OFFSET;
    for slice in extent_slices(pinned) {
        let mut done = 0;
        while done < slice.len() {
            let n = (slice.len() - done).min(buf.len());
            if let Ok(src) = slice.subslice(done, n) {
                src.copy_to(&mut buf[..n]);
            }
            hash = fnv1a(hash, &buf[..n]);
            done += n;
        }
    }
    hash
}

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answer: RAX = `status`, RDX = `value`, RCX = `code` when set.
    Reply {
        /// RAX.
        status: u64,
        /// RDX.
        value: u64,
        /// RCX (only for [`status::FAULT`]).
        code: Option<u64>,
    },
    /// Inject this #PF and restart the `out`.
    Inject(Injection),
}

impl Outcome {
    fn ok(value: u64) -> Self {
        Outcome::Reply {
            status: status::OK,
            value,
            code: None,
        }
    }

    fn error(status: u64, value: u64) -> Self {
        Outcome::Reply {
            status,
            value,
            code: None,
        }
    }

    fn from_error(e: GupError, addr: u64) -> Self {
        match e {
            GupError::Fault {
                inject: Some(inj), ..
            } => Outcome::Inject(inj),
            // A guest fault the handler would not inject: #GP (non-canonical,
            // beyond the linear-address space).
            GupError::Fault {
                address,
                fault: Some(_),
                ..
            } => Outcome::error(status::BAD_ADDRESS, address),
            GupError::Fault { address, .. } => Outcome::error(status::NO_RAM, address),
            GupError::Overflow => Outcome::error(status::BAD_ADDRESS, addr),
            other => Outcome::error(status::HOST_ERROR, other.errno() as u64),
        }
    }
}

/// What identifies one request across its restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestKey {
    /// RIP of the `out`.
    pub rip: u64,
    /// RAX, RDI, RSI, RDX.
    pub regs: [u64; 4],
}

/// The request a vCPU is restarting.
#[derive(Clone, Copy, Debug)]
struct Restarting {
    key: RequestKey,
    cr2: u64,
    same: u32,
    total: u32,
}

/// Bounds the restarts of one vCPU's request (see the module doc).
#[derive(Debug, Default)]
pub struct RestartGuard {
    current: Option<Restarting>,
}

impl RestartGuard {
    /// Passes `outcome` of request `key` through: an injection beyond the
    /// bounds becomes a [`status::FAULT`] reply (the second value: it gave
    /// up); a reply ends the request.
    pub fn check(&mut self, key: RequestKey, outcome: Outcome) -> (Outcome, bool) {
        let Outcome::Inject(inj) = outcome else {
            self.current = None;
            return (outcome, false);
        };
        let r = match &mut self.current {
            Some(r) if r.key == key => {
                if r.cr2 == inj.cr2 {
                    r.same += 1;
                } else {
                    r.cr2 = inj.cr2;
                    r.same = 1;
                }
                r.total += 1;
                *r
            }
            slot => *slot.insert(Restarting {
                key,
                cr2: inj.cr2,
                same: 1,
                total: 1,
            }),
        };
        if r.same > MAX_SAME_FAULT || r.total > MAX_INJECTIONS {
            self.current = None;
            let reply = Outcome::Reply {
                status: status::FAULT,
                value: inj.cr2,
                code: Some(u64::from(inj.error_code.0)),
            };
            return (reply, true);
        }
        (outcome, false)
    }
}

/// One vCPU's side of the agent.
#[derive(Debug)]
pub struct VcpuAgent {
    agent: Arc<Agent>,
    guard: RestartGuard,
}

impl VcpuAgent {
    /// The vCPU side of `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        VcpuAgent {
            agent,
            guard: RestartGuard::default(),
        }
    }

    /// Handles an exit for a write to [`PORT`] by the vCPU `fd`, whose
    /// CPUID gives `paging` (MAXPHYADDR, features). Errors are KVM call
    /// failures (the VM must stop); guest mistakes are statuses.
    pub fn handle_exit(&mut self, fd: &mut VcpuFd, paging: (u8, CpuFeatures)) -> Result<()> {
        let c = &self.agent.counters;
        bump(&c.exits, 1);
        let mut regs = fd.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
        let mut sregs = fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        let key = RequestKey {
            rip: regs.rip,
            regs: [regs.rax, regs.rdi, regs.rsi, regs.rdx],
        };
        let outcome = match decode(regs.rax, regs.rdi, regs.rsi, regs.rdx) {
            Err(s) => {
                bump(&c.bad_input, 1);
                Outcome::error(s, 0)
            }
            Ok(op) => {
                let extra = ExtraPagingRegs {
                    rflags: regs.rflags,
                    ..Default::default()
                };
                let ctx = context_from_sregs(&sregs, extra, paging.0, paging.1);
                self.agent.serve(&ctx, user_mode(&sregs), op)
            }
        };
        let (mut outcome, gave_up) = self.guard.check(key, outcome);
        if gave_up {
            bump(&c.gave_up, 1);
        }
        if let Outcome::Inject(inj) = outcome {
            // Finish the pending `out` without running the guest, then find
            // the `out` (see the module doc).
            let at_exit = regs.rip;
            fd.set_kvm_immediate_exit(1);
            let completed = match fd.run() {
                Err(e) if e.errno() == libc::EINTR => Ok(()),
                Err(e) => Err(e),
                // Nothing to run: KVM returns before entering the guest.
                Ok(_) => Ok(()),
            };
            fd.set_kvm_immediate_exit(0);
            completed.map_err(Error::kvm("KVM_RUN (immediate exit)"))?;
            let after = fd.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?.rip;
            let before = if after == at_exit {
                self.code_before(&sregs, &regs, paging, user_mode(&sregs))
            } else {
                None
            };
            match out_rip(at_exit, after, before) {
                Some(rip) => {
                    regs.rip = rip;
                    fd.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
                    sregs.cr2 = inj.cr2;
                    fd.set_sregs(&sregs).map_err(Error::kvm("KVM_SET_SREGS"))?;
                    let mut events = fd
                        .get_vcpu_events()
                        .map_err(Error::kvm("KVM_GET_VCPU_EVENTS"))?;
                    // Without KVM_CAP_EXCEPTION_PAYLOAD, an *injected* #PF
                    // is delivered as is on the next entry, with the CR2
                    // set above.
                    events.exception.injected = 1;
                    events.exception.pending = 0;
                    events.exception.nr = PF_VECTOR;
                    events.exception.has_error_code = 1;
                    events.exception.error_code = inj.error_code.0;
                    events.exception_has_payload = 0;
                    events.exception_payload = 0;
                    events.flags &= !KVM_VCPUEVENT_VALID_PAYLOAD;
                    fd.set_vcpu_events(&events)
                        .map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))?;
                    bump(&c.injected[class(inj.error_code)], 1);
                    return Ok(());
                }
                None => {
                    // The `out` is complete now (RIP is past it on any
                    // KVM): the reply must not put the guest back on it.
                    regs.rip = after;
                    self.guard = RestartGuard::default();
                    outcome = Outcome::error(status::NO_RESTART, inj.cr2);
                }
            }
        }
        if let Outcome::Reply {
            status,
            value,
            code,
        } = outcome
        {
            bump(
                if status == status::OK {
                    &c.ok
                } else {
                    &c.failed
                },
                1,
            );
            regs.rax = status;
            regs.rdx = value;
            if let Some(code) = code {
                regs.rcx = code;
            }
            // RIP untouched: KVM's completion of the `out` skips it (kvm_pvm
            // has moved RIP past it before the exit already; after the
            // immediate-exit completion above, so has any KVM).
            fd.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
        }
        Ok(())
    }
}

impl VcpuAgent {
    /// The two bytes before the linear RIP of this vCPU (fetched through
    /// its page tables, as the CPU fetched the `out`), if they are RAM.
    fn code_before(
        &self,
        sregs: &kvm_sregs,
        regs: &kvm_regs,
        paging: (u8, CpuFeatures),
        user: bool,
    ) -> Option<[u8; 2]> {
        let (linear, ctx, access) = instruction_fetch(sregs, regs, paging.0, paging.1, user);
        let map = self.agent.gup.memory_map();
        let mut bytes = [0u8; 2];
        for (i, b) in bytes.iter_mut().enumerate() {
            let va = linear.checked_sub(2 - i as u64)?;
            let t = translate(map.memory(), &ctx, va, access).ok()?;
            *b = map.memory().read_obj(GuestAddress(t.gpa)).ok()?;
        }
        Some(bytes)
    }
}

/// Whether the vCPU runs at CPL3: CPL is CS.RPL (SDM 5.5).
fn user_mode(sregs: &kvm_sregs) -> bool {
    sregs.cs.selector & 3 == 3
}

/// `out %al, $imm8` with the agent's port: the encoding a request must use
/// to be restartable on a KVM that moves RIP past the `out` before exiting.
pub const OUT_INSN: [u8; 2] = [0xe6, PORT as u8];

/// Where the `out` of a request is, from RIP at the exit (`at_exit`), RIP
/// after the pending I/O was completed (`after`) and, when they are equal,
/// the two bytes before RIP (`before`): `None` when it cannot be known.
///
/// - `after != at_exit`: KVM skipped the `out` on completion (upstream
///   KVM): RIP was on it at the exit.
/// - `after == at_exit` and the bytes before RIP are [`OUT_INSN`]: KVM
///   moved RIP past the `out` before exiting (kvm_pvm, and KVM before Linux
///   5.x): it is 2 bytes back.
pub fn out_rip(at_exit: u64, after: u64, before: Option<[u8; 2]>) -> Option<u64> {
    if after != at_exit {
        // At most the longest `out` (a 0x66 prefix and imm8: 3 bytes) apart.
        return (after.wrapping_sub(at_exit) <= 3).then_some(at_exit);
    }
    (before == Some(OUT_INSN)).then(|| at_exit.wrapping_sub(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_mm::paging::PagingContext;
    use vm_memory::{Bytes, GuestAddress};

    use crate::memory;

    #[test]
    fn decode_validates_the_registers() {
        assert_eq!(decode(op::PING, 1, 2, 3), Ok(Op::Ping));
        assert_eq!(
            decode(op::FILL, 0x4400_0800, 0x3000, 7),
            Ok(Op::Fill {
                addr: 0x4400_0800,
                len: 0x3000,
                seed: 7
            })
        );
        assert_eq!(
            decode(op::SUM, 0x1000, MAX_LEN, 0),
            Ok(Op::Sum {
                addr: 0x1000,
                len: MAX_LEN
            })
        );
        assert_eq!(
            decode(op::SUM, 0x1000, MAX_LEN + 1, 0),
            Err(status::TOO_LONG)
        );
        assert_eq!(decode(op::FILL, 0, u64::MAX, 0), Err(status::TOO_LONG));
        assert_eq!(
            decode(op::FILL, u64::MAX - 10, 11, 0),
            Err(status::BAD_ADDRESS)
        );
        assert!(decode(op::FILL, u64::MAX - 10, 10, 0).is_ok());
        for bad in [3, 0x100, 1 << 63, u64::MAX] {
            assert_eq!(decode(bad, 0, 0, 0), Err(status::UNKNOWN_OP), "op {bad:#x}");
        }
    }

    #[test]
    fn pattern_and_hash_are_the_documented_functions() {
        // FNV-1a 64 reference values.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        // splitmix64's first output for seed 0 (its state starts at 0).
        assert_eq!(pattern(0, 0), 0xe220_a839_7b1d_cdaf);
        // Bytes are the words' little-endian bytes, from any offset.
        let mut whole = [0u8; 24];
        pattern_bytes(9, 0, &mut whole);
        let mut part = [0u8; 13];
        pattern_bytes(9, 5, &mut part);
        assert_eq!(&whole[5..18], &part);
        assert_eq!(&whole[8..16], &pattern(9, 1).to_le_bytes());
    }

    fn restart(rip: u64) -> RequestKey {
        RequestKey {
            rip,
            regs: [op::FILL, 0x4400_0000, 0x3000, 1],
        }
    }

    fn inject(cr2: u64) -> Outcome {
        Outcome::Inject(Injection {
            cr2,
            error_code: ErrorCode(0x6),
        })
    }

    #[test]
    fn the_same_fault_is_injected_at_most_max_same_fault_times() {
        let mut g = RestartGuard::default();
        let key = restart(0x1000);
        for _ in 0..MAX_SAME_FAULT {
            assert_eq!(
                g.check(key, inject(0x4400_0000)),
                (inject(0x4400_0000), false)
            );
        }
        let (reply, gave_up) = g.check(key, inject(0x4400_0000));
        assert!(gave_up);
        assert_eq!(
            reply,
            Outcome::Reply {
                status: status::FAULT,
                value: 0x4400_0000,
                code: Some(0x6)
            }
        );
        // The next request starts afresh.
        assert!(!g.check(key, inject(0x4400_0000)).1);
    }

    #[test]
    fn progress_and_new_requests_reset_the_count() {
        let mut g = RestartGuard::default();
        let key = restart(0x1000);
        // A request that moves on to the next page is making progress.
        for page in 0..64u64 {
            for _ in 0..MAX_SAME_FAULT {
                assert!(!g.check(key, inject(page << 12)).1);
            }
        }
        // A reply ends the request; another request (other registers or
        // RIP) is counted on its own.
        assert!(!g.check(key, Outcome::ok(0)).1);
        for _ in 0..MAX_SAME_FAULT {
            assert!(!g.check(key, inject(0)).1);
        }
        assert!(!g.check(restart(0x2000), inject(0)).1);
        // The total bound: alternating between two pages forever.
        let mut g = RestartGuard::default();
        let mut gave_up = 0;
        for i in 0..=MAX_INJECTIONS {
            if g.check(key, inject((u64::from(i) & 1) << 12)).1 {
                gave_up = i;
                break;
            }
        }
        assert_eq!(gave_up, MAX_INJECTIONS);
    }

    /// 4-level tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD),
    /// 0x4000 (PT) mapping VA 0x4000_0000.. with 4K pages: page 0 to
    /// 0x10_0000 (user, writable), page 1 not present, page 2 to 0x10_2000
    /// read-only.
    fn setup() -> (Agent, crate::memory::GuestMemoryMmap, PagingContext) {
        let (gup, mem) = memory::create_with_gup(4 << 20).unwrap();
        let w = |a: u64, v: u64| mem.write_obj(v, GuestAddress(a)).unwrap();
        w(0x1000, 0x2007);
        w(0x2000 + 8, 0x3007);
        w(0x3000, 0x4007);
        w(0x4000, 0x10_0007);
        w(0x4000 + 16, 0x10_2005);
        let ctx = PagingContext::new(0x8001_0011, 0x1000, 0x20, 0x500).with_maxphyaddr(40);
        (Agent::new(gup), mem, ctx)
    }

    #[test]
    fn fill_and_sum_run_on_the_pinned_guest_memory() {
        let (agent, mem, ctx) = setup();
        let out = agent.serve(
            &ctx,
            true,
            Op::Fill {
                addr: 0x4000_0100,
                len: 0x200,
                seed: 42,
            },
        );
        assert_eq!(out, Outcome::ok(0));
        let mut got = [0u8; 0x200];
        mem.read_slice(&mut got, GuestAddress(0x10_0100)).unwrap();
        let mut want = [0u8; 0x200];
        pattern_bytes(42, 0, &mut want);
        assert_eq!(got, want);
        // Untouched around it.
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10_00f8)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10_0300)).unwrap(), 0);
        let out = agent.serve(
            &ctx,
            true,
            Op::Sum {
                addr: 0x4000_0100,
                len: 0x200,
            },
        );
        assert_eq!(out, Outcome::ok(fnv1a(FNV_OFFSET, &want)));
        // The guest's A and D bits were set (TOUCH), the pins released.
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x4000)).unwrap(),
            0x10_0067
        );
        let c = agent.counters();
        assert_eq!((c.bytes_filled, c.bytes_summed), (0x200, 0x200));
        assert_eq!(agent.gup.stats().requests, 2);
    }

    #[test]
    fn faults_become_injections_with_the_cpu_error_code() {
        let (agent, mem, ctx) = setup();
        // Page 0 is fine, page 1 is not present: the pins of page 0 are
        // dropped and the #PF of page 1 comes back, write + user.
        let fill = Op::Fill {
            addr: 0x4000_0f00,
            len: 0x200,
            seed: 1,
        };
        let want = Outcome::Inject(Injection {
            cr2: 0x4000_1000,
            error_code: ErrorCode(0x6),
        });
        assert_eq!(agent.serve(&ctx, true, fill), want);
        // Nothing written: the request runs only once all of it is pinned.
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x10_0f00)).unwrap(), 0);
        // A read at CPL0 of the not-present page: error code 0.
        let sum = Op::Sum {
            addr: 0x4000_1ff0,
            len: 0x20,
        };
        assert_eq!(
            agent.serve(&ctx, false, sum),
            Outcome::Inject(Injection {
                cr2: 0x4000_1ff0,
                error_code: ErrorCode(0)
            })
        );
        // A write to the read-only page: a protection fault.
        let ro = Op::Fill {
            addr: 0x4000_2000,
            len: 8,
            seed: 0,
        };
        assert_eq!(
            agent.serve(&ctx, true, ro),
            Outcome::Inject(Injection {
                cr2: 0x4000_2000,
                error_code: ErrorCode(0x7)
            })
        );
        // The guest "maps" page 1; the request now completes.
        mem.write_obj(0x10_1007u64, GuestAddress(0x4008)).unwrap();
        assert_eq!(agent.serve(&ctx, true, fill), Outcome::ok(0));
        // A non-canonical address is #GP, not a #PF: an error status.
        let bad = Op::Sum {
            addr: 0x8000_0000_0000,
            len: 8,
        };
        assert_eq!(
            agent.serve(&ctx, true, bad),
            Outcome::error(status::BAD_ADDRESS, 0x8000_0000_0000)
        );
        // A page mapped to no RAM.
        mem.write_obj(0x4000_0007u64, GuestAddress(0x4018)).unwrap();
        let hole = Op::Sum {
            addr: 0x4000_3000,
            len: 8,
        };
        assert_eq!(
            agent.serve(&ctx, true, hole),
            Outcome::error(status::NO_RAM, 0x4000_3000)
        );
        // Every pin was released.
        let map = agent.gup.memory_map();
        for r in map.regions() {
            assert_eq!(r.frames().total_refs(), 0, "a frame is still referenced");
        }
    }

    #[test]
    fn the_out_is_found_where_each_kvm_leaves_rip() {
        // Upstream KVM: RIP on the `out` at the exit, skipped on completion.
        assert_eq!(out_rip(0x1000, 0x1002, None), Some(0x1000));
        assert_eq!(out_rip(0x1000, 0x1001, None), Some(0x1000));
        // kvm_pvm: RIP already past `out %al, $0xf8` at the exit.
        assert_eq!(out_rip(0x1002, 0x1002, Some(OUT_INSN)), Some(0x1000));
        assert_eq!(OUT_INSN, [0xe6, 0xf8]);
        // Past some other encoding, or code that is not readable: unknown.
        assert_eq!(out_rip(0x1002, 0x1002, Some([0x66, 0xef])), None);
        assert_eq!(out_rip(0x1002, 0x1002, Some([0xe6, 0xf4])), None);
        assert_eq!(out_rip(0x1002, 0x1002, None), None);
        // RIP moved somewhere no `out` completion would put it.
        assert_eq!(out_rip(0x1000, 0x2000, None), None);
        assert_eq!(out_rip(0x1000, 0xff0, None), None);
    }

    #[test]
    fn the_counter_line_names_every_class() {
        let c = AgentCounters {
            exits: 9,
            ok: 3,
            failed: 2,
            bad_input: 1,
            bytes_filled: 100,
            bytes_summed: 50,
            injected: [4, 16, 0, 0],
            gave_up: 1,
        };
        assert_eq!(
            c.to_string(),
            "agent: port=0xf8 exits=9 replies=5 ok=3 failed=2 bad_input=1 bytes_filled=100 bytes_summed=50 injected_pf=20 not_present=4 protection=16 reserved=0 pkey=0 gave_up=1"
        );
    }
}
