// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The request queue's requests (docs/guest-va-dma.md, "Queues"): decoded
//! from the device-readable bytes of a chain, applied to the [`Shared`]
//! tables, answered with the bytes of the device-writable part (PROBE's
//! properties, then the tail).

use std::collections::BTreeMap;

use vm_memory::{GuestAddress, GuestMemoryBackend as _};

use super::domain::{
    table_flags, Domain, Kind, Mapping, Shared, Table, MAP_MMIO, MAP_READ, MAP_WRITE,
};
use super::event::Response;
use super::{features, DOMAIN_END, PROBE_SIZE};
use guest_mm::gup::GuestMemory;

/// Request types.
pub mod kind {
    /// ATTACH.
    pub const ATTACH: u8 = 1;
    /// DETACH.
    pub const DETACH: u8 = 2;
    /// MAP.
    pub const MAP: u8 = 3;
    /// UNMAP.
    pub const UNMAP: u8 = 4;
    /// PROBE.
    pub const PROBE: u8 = 5;
    /// ATTACH_TABLE (draft).
    pub const ATTACH_TABLE: u8 = 6;
    /// PAGE_RESP (draft).
    pub const PAGE_RESP: u8 = 8;
}

/// Request status codes.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Virtio communication error.
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
    /// Internal device error.
    pub const DEVERR: u8 = 3;
    /// Invalid parameters.
    pub const INVAL: u8 = 4;
    /// Out-of-range parameters.
    pub const RANGE: u8 = 5;
    /// Entry not found.
    pub const NOENT: u8 = 6;
    /// Bad address.
    pub const FAULT: u8 = 7;
    /// Out of resources.
    pub const NOMEM: u8 = 8;
}

/// Length of the tail.
pub const TAIL_LEN: usize = 4;
/// ATTACH_TABLE's format: x86 4/5-level (the VT-d first-stage layout).
pub const FORMAT_X86: u16 = 4;
/// PAGE_RESP flag: `pasid` is valid (refused: no PASID support).
pub const PAGE_RESP_PASID_VALID: u32 = 1;
/// PROBE property: reserved memory.
pub const PROBE_T_RESV_MEM: u16 = 1;
/// PROBE property: page-table formats (draft).
pub const PROBE_T_PAGE_TABLE_FMT: u16 = 6;
/// RESV_MEM subtype: MSI doorbell.
pub const RESV_MEM_T_MSI: u8 = 1;
/// The x86 interrupt window, reported as reserved.
pub const MSI_WINDOW: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

/// Device-readable length of each request type (head and body, no tail).
fn readable_len(kind: u8) -> Option<usize> {
    Some(match kind {
        kind::ATTACH | kind::DETACH => 20,
        kind::MAP => 36,
        kind::UNMAP => 28,
        kind::PROBE => 72,
        kind::ATTACH_TABLE => 44,
        kind::PAGE_RESP => 28,
        _ => return None,
    })
}

/// What a request needs from the device.
pub struct Context<'a> {
    /// The tables and events.
    pub shared: &'a Shared,
    /// The negotiated features.
    pub features: u64,
    /// Guest memory (to check a page-table root is RAM).
    pub mem: &'a GuestMemory,
}

struct Body<'a>(&'a [u8]);

impl Body<'_> {
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }
    fn u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(b)
    }
    fn u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(b)
    }
    fn zero(&self, from: usize, to: usize) -> bool {
        self.0[from..to].iter().all(|&b| b == 0)
    }
}

/// Largest device-writable part the device fills (PROBE's properties and
/// tail, with room to spare); a larger one is not answered (used length 0).
pub const MAX_WRITABLE: usize = PROBE_SIZE as usize + TAIL_LEN + 4096;

/// Runs one request: `readable` are its device-readable bytes (the first
/// up to 128 are enough), `writable` the size of its device-writable part.
/// Returns the bytes to write into the whole writable part: PROBE's
/// properties (zero-padded), and the tail in its last 4 bytes, where the
/// driver reads it (Linux reads it at the end of the request buffer).
/// Empty (used length 0) when not even the tail fits, or the writable part
/// is larger than [`MAX_WRITABLE`].
pub fn execute(ctx: &Context, readable: &[u8], writable: usize) -> Vec<u8> {
    if !(TAIL_LEN..=MAX_WRITABLE).contains(&writable) {
        ctx.shared
            .stats
            .request(readable.first().copied().unwrap_or(0));
        ctx.shared.stats.failed();
        return Vec::new();
    }
    let kind = readable.first().copied().unwrap_or(0);
    ctx.shared.stats.request(kind);
    let mut out = Vec::new();
    let st = match readable_len(kind) {
        None => status::UNSUPP,
        Some(n) if readable.len() < n => status::INVAL,
        Some(n) => {
            let b = Body(&readable[..n]);
            match kind {
                kind::ATTACH => attach(ctx, &b),
                kind::DETACH => detach(ctx, &b),
                kind::MAP => map(ctx, &b),
                kind::UNMAP => unmap(ctx, &b),
                kind::PROBE => probe(ctx, &b, writable, &mut out),
                kind::ATTACH_TABLE => attach_table(ctx, &b),
                _ => page_resp(ctx, &b),
            }
        }
    };
    if st != status::OK {
        ctx.shared.stats.failed();
    }
    // PROBE's properties fill probe_size bytes (zeroes after the last
    // one: a zero type ends the list); a failed request writes no
    // property. The tail ends the writable part, for every request type.
    if st != status::OK {
        out.clear();
    }
    out.resize(writable - TAIL_LEN, 0);
    out.extend_from_slice(&[st, 0, 0, 0]);
    out
}

fn has(ctx: &Context, bit: u32) -> bool {
    ctx.features & (1 << bit) != 0
}

/// Checks shared by ATTACH and ATTACH_TABLE.
fn check_attach(ctx: &Context, domain: u32, endpoint: u32, flags: u32) -> Result<(), u8> {
    if !ctx.shared.endpoints.contains(&endpoint) {
        return Err(status::NOENT);
    }
    if domain > DOMAIN_END {
        return Err(status::RANGE);
    }
    // BYPASS (bit 0) needs BYPASS_CONFIG, which is not offered.
    if flags != 0 {
        return Err(status::INVAL);
    }
    Ok(())
}

/// Moves `endpoint` to `domain` (creating it); the domain it leaves is
/// destroyed if it was its last endpoint.
fn move_endpoint(t: &mut super::domain::Tables, endpoint: u32, domain: u32) {
    if let Some(old) = t.attached.remove(&endpoint) {
        leave(t, old);
    }
    t.domains.entry(domain).or_default().endpoints += 1;
    t.attached.insert(endpoint, domain);
}

fn leave(t: &mut super::domain::Tables, domain: u32) {
    if let Some(d) = t.domains.get_mut(&domain) {
        d.endpoints = d.endpoints.saturating_sub(1);
        if d.endpoints == 0 {
            t.domains.remove(&domain);
        }
    }
}

fn attach(ctx: &Context, b: &Body) -> u8 {
    let (domain, endpoint, flags) = (b.u32(4), b.u32(8), b.u32(12));
    if let Err(s) = check_attach(ctx, domain, endpoint, flags) {
        return s;
    }
    if !b.zero(16, 20) {
        return status::INVAL;
    }
    let mut t = ctx.shared.write();
    if t.attached.get(&endpoint) != Some(&domain) {
        move_endpoint(&mut t, endpoint, domain);
    }
    status::OK
}

fn detach(ctx: &Context, b: &Body) -> u8 {
    let (domain, endpoint) = (b.u32(4), b.u32(8));
    if !ctx.shared.endpoints.contains(&endpoint) {
        return status::NOENT;
    }
    // Bytes 12..20 are reserved, which the device must ignore (virtio 1.2
    // 5.13.6.4).
    let mut t = ctx.shared.write();
    if t.attached.get(&endpoint) != Some(&domain) {
        return status::INVAL;
    }
    t.attached.remove(&endpoint);
    leave(&mut t, domain);
    status::OK
}

fn map(ctx: &Context, b: &Body) -> u8 {
    if !has(ctx, features::MAP_UNMAP) {
        return status::UNSUPP;
    }
    let (domain, start, end, phys, flags) = (b.u32(4), b.u64(8), b.u64(16), b.u64(24), b.u32(32));
    if flags & !(MAP_READ | MAP_WRITE | MAP_MMIO) != 0 || flags & MAP_MMIO != 0 {
        return status::INVAL;
    }
    if end < start
        || start & 0xfff != 0
        || phys & 0xfff != 0
        || end & 0xfff != 0xfff
        || phys.checked_add(end - start).is_none()
    {
        return status::RANGE;
    }
    // The MSI window is a RESV_MEM region: a MAP overlapping it is refused
    // (virtio 1.2 5.13.6.8.2.2).
    if start <= MSI_WINDOW.1 && end >= MSI_WINDOW.0 {
        return status::INVAL;
    }
    let mut t = ctx.shared.write();
    let Some(d) = t.domains.get_mut(&domain) else {
        return status::NOENT;
    };
    let maps = match &mut d.kind {
        Kind::Table(_) => return status::INVAL,
        Kind::Map(m) => m,
        k @ Kind::Empty => {
            *k = Kind::Map(BTreeMap::new());
            match k {
                Kind::Map(m) => m,
                _ => return status::DEVERR,
            }
        }
    };
    // Overlap: the mapping starting at or before `end` that ends at or
    // after `start`.
    if maps
        .range(..=end)
        .next_back()
        .is_some_and(|(_, m)| m.end >= start)
    {
        return status::INVAL;
    }
    maps.insert(start, Mapping { end, phys, flags });
    status::OK
}

fn unmap(ctx: &Context, b: &Body) -> u8 {
    if !has(ctx, features::MAP_UNMAP) {
        return status::UNSUPP;
    }
    let (domain, start, end) = (b.u32(4), b.u64(8), b.u64(16));
    if !b.zero(24, 28) {
        return status::INVAL;
    }
    if end < start {
        return status::RANGE;
    }
    let mut t = ctx.shared.write();
    let Some(d) = t.domains.get_mut(&domain) else {
        return status::NOENT;
    };
    let maps = match &mut d.kind {
        Kind::Table(_) => return status::INVAL,
        Kind::Empty => return status::OK,
        Kind::Map(m) => m,
    };
    // A mapping that starts before `start` and reaches into the range, or
    // one inside that goes past `end`, would be split: nothing is removed.
    if maps
        .range(..start)
        .next_back()
        .is_some_and(|(_, m)| m.end >= start)
        || maps.range(start..=end).any(|(_, m)| m.end > end)
    {
        return status::RANGE;
    }
    let inside: Vec<u64> = maps.range(start..=end).map(|(&v, _)| v).collect();
    for v in inside {
        maps.remove(&v);
    }
    status::OK
}

fn probe(ctx: &Context, b: &Body, writable: usize, out: &mut Vec<u8>) -> u8 {
    if !has(ctx, features::PROBE) {
        return status::UNSUPP;
    }
    if !ctx.shared.endpoints.contains(&b.u32(4)) {
        return status::NOENT;
    }
    // Bytes 8..72 are reserved, which the device must ignore (virtio 1.2
    // 5.13.6.7).
    if writable < PROBE_SIZE as usize + TAIL_LEN {
        return status::INVAL;
    }
    // RESV_MEM: the MSI window.
    out.extend_from_slice(&PROBE_T_RESV_MEM.to_le_bytes());
    out.extend_from_slice(&20u16.to_le_bytes());
    out.extend_from_slice(&[RESV_MEM_T_MSI, 0, 0, 0]);
    out.extend_from_slice(&MSI_WINDOW.0.to_le_bytes());
    out.extend_from_slice(&MSI_WINDOW.1.to_le_bytes());
    if has(ctx, features::ATTACH_TABLE) {
        let mut tf = table_flags::ALL;
        if !has(ctx, features::PAGE_REQUEST) {
            tf &= !table_flags::PRI;
        }
        out.extend_from_slice(&PROBE_T_PAGE_TABLE_FMT.to_le_bytes());
        out.extend_from_slice(&8u16.to_le_bytes());
        out.extend_from_slice(&FORMAT_X86.to_le_bytes());
        out.extend_from_slice(&[0b11, 0]);
        out.extend_from_slice(&(tf as u32).to_le_bytes());
    }
    status::OK
}

fn attach_table(ctx: &Context, b: &Body) -> u8 {
    if !has(ctx, features::ATTACH_TABLE) {
        return status::UNSUPP;
    }
    let (domain, endpoint, flags) = (b.u32(4), b.u32(8), b.u32(12));
    if let Err(s) = check_attach(ctx, domain, endpoint, flags) {
        return s;
    }
    let (format, pasid, pgd, tflags, width) =
        (b.u16(16), b.u32(20), b.u64(24), b.u64(32), b.u32(40));
    if !b.zero(18, 20) {
        return status::INVAL;
    }
    if format != FORMAT_X86 || pasid != 0 || !(width == 48 || width == 57) {
        return status::UNSUPP;
    }
    if tflags & !table_flags::ALL != 0
        || (tflags & table_flags::PRI != 0 && !has(ctx, features::PAGE_REQUEST))
    {
        return status::INVAL;
    }
    let maxphy = u32::from(ctx.shared.maxphyaddr());
    let root = pgd & !0xfff;
    if maxphy < 64 && root >> maxphy != 0 {
        return status::INVAL;
    }
    if !ctx.mem.address_in_range(GuestAddress(root)) {
        return status::INVAL;
    }
    let table = Table::new(pgd, width, tflags, ctx.shared.maxphyaddr());
    let mut t = ctx.shared.write();
    if let Some(Domain {
        kind: Kind::Map(m), ..
    }) = t.domains.get(&domain)
    {
        if !m.is_empty() {
            return status::INVAL;
        }
    }
    if t.attached.get(&endpoint) != Some(&domain) {
        move_endpoint(&mut t, endpoint, domain);
    }
    if let Some(d) = t.domains.get_mut(&domain) {
        d.kind = Kind::Table(table);
    }
    // Page requests start again for every endpoint of the domain.
    let members: Vec<u32> = t
        .attached
        .iter()
        .filter(|(_, &d)| d == domain)
        .map(|(&e, _)| e)
        .collect();
    for e in members {
        t.pri_stopped.remove(&e);
    }
    status::OK
}

fn page_resp(ctx: &Context, b: &Body) -> u8 {
    if !has(ctx, features::PAGE_REQUEST) {
        return status::UNSUPP;
    }
    let (domain, endpoint, flags, pasid, group, code) = (
        b.u32(4),
        b.u32(8),
        b.u32(12),
        b.u32(16),
        b.u32(20),
        b.u16(24),
    );
    if !ctx.shared.endpoints.contains(&endpoint) {
        return status::NOENT;
    }
    if flags != 0 || pasid != 0 || !b.zero(26, 28) {
        return status::INVAL;
    }
    let Some(response) = Response::from_code(code) else {
        return status::INVAL;
    };
    let Ok(group) = u16::try_from(group) else {
        return status::INVAL;
    };
    // The tables stay locked until the answer is recorded: a FAILURE stops
    // the endpoint's page requests before its device sees the answer, and
    // only if the group was outstanding.
    let mut t = ctx.shared.write();
    if t.attached.get(&endpoint) != Some(&domain) {
        return status::INVAL;
    }
    if !ctx.shared.events.respond(endpoint, group, response) {
        ctx.shared.stats.stray_response();
        return status::NOENT;
    }
    if response == Response::Failure {
        t.pri_stopped.insert(endpoint, true);
    }
    drop(t);
    ctx.shared.stats.response(code);
    status::OK
}
