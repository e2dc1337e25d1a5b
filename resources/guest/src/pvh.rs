// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the PVH loader handed over: `hvm_start_info` (its address was in
//! EBX at entry), the kernel command line and the memory map, plus the
//! command-line syntax the guest understands:
//!
//! - `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`, as Linux parses it
//!   (size and base in memparse syntax: decimal or `0x` hex with an
//!   optional `K`/`M`/`G` suffix; irq and id decimal), one per device;
//! - `guest.<key>` and `guest.<key>=<value>` options for this guest.

use core::ptr::{addr_of, read_volatile};

use crate::boot;

/// `hvm_start_info.magic`.
pub const PVH_MAGIC: u32 = 0x336e_c578;
/// Memory below this is identity-mapped (and readable at CPL3).
pub const IDENTITY_LIMIT: u64 = 0x4000_0000;
/// Longest command line read (bytes, without the NUL).
const CMDLINE_MAX: u64 = 4096;

/// Reads a `u32` at an identity-mapped physical address.
pub fn read_u32(paddr: u64) -> u32 {
    // SAFETY: callers pass identity-mapped addresses below IDENTITY_LIMIT
    // (checked against the limit before every use).
    unsafe { read_volatile(paddr as *const u32) }
}

/// Reads a `u64` at an identity-mapped physical address.
pub fn read_u64(paddr: u64) -> u64 {
    // SAFETY: as for `read_u32`.
    unsafe { read_volatile(paddr as *const u64) }
}

/// Physical address of `hvm_start_info`, if it has the PVH magic and lies
/// in identity-mapped memory.
pub fn start_info() -> Option<u64> {
    // SAFETY: written once at CPL0 before CPL3 started.
    let si = unsafe { read_volatile(addr_of!(boot::start_info_paddr)) };
    (si != 0 && si + 56 <= IDENTITY_LIMIT && read_u32(si) == PVH_MAGIC).then_some(si)
}

/// The kernel command line (empty when there is none or it is not in
/// identity-mapped memory).
pub fn cmdline() -> &'static [u8] {
    let Some(si) = start_info() else { return &[] };
    let p = read_u64(si + 24);
    if p == 0 || p >= IDENTITY_LIMIT - CMDLINE_MAX {
        return &[];
    }
    let mut len = 0;
    // SAFETY: p..p + CMDLINE_MAX is identity-mapped memory (checked above).
    while len < CMDLINE_MAX && unsafe { read_volatile((p + len) as *const u8) } != 0 {
        len += 1;
    }
    // SAFETY: the bytes were just read; the loader wrote them before entry
    // and nothing writes them afterwards.
    unsafe { core::slice::from_raw_parts(p as *const u8, len as usize) }
}

/// Whether the PVH memory map has RAM (type 1) covering `start..end`
/// (within one entry). False without a memory map (start info version 0).
pub fn ram_covers(start: u64, end: u64) -> bool {
    let Some(si) = start_info() else { return false };
    if read_u32(si + 4) < 1 {
        return false;
    }
    let map = read_u64(si + 40);
    let entries = u64::from(read_u32(si + 48));
    (0..entries).any(|i| {
        let e = map + i * 24;
        e + 24 <= IDENTITY_LIMIT
            && read_u32(e + 16) == 1
            && read_u64(e) <= start
            && read_u64(e).saturating_add(read_u64(e + 8)) >= end
    })
}

/// The whitespace-separated words of a command line.
pub fn words(cmd: &[u8]) -> impl Iterator<Item = &[u8]> {
    cmd.split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
}

/// The value of the last `key=value` word (later words override earlier).
pub fn value<'a>(cmd: &'a [u8], key: &str) -> Option<&'a [u8]> {
    words(cmd)
        .filter_map(|w| w.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
        .last()
}

/// Whether the word `key` (or `key=...`) is present.
pub fn flag(cmd: &[u8], key: &str) -> bool {
    words(cmd).any(|w| w == key.as_bytes() || value(w, key).is_some())
}

/// A number: decimal, or hex with `0x`.
pub fn parse_num(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix(b"0x").or_else(|| s.strip_prefix(b"0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let d = char::from(b).to_digit(radix)?;
        acc.checked_mul(u64::from(radix))?.checked_add(u64::from(d))
    })
}

/// A number with an optional `K`, `M` or `G` suffix (Linux's memparse).
pub fn parse_size(s: &[u8]) -> Option<u64> {
    let (num, shift) = match s.last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_num(num)?.checked_mul(1 << shift)
}

/// A numeric option `key=<number>` (memparse syntax), if present and valid.
pub fn num_option(cmd: &[u8], key: &str) -> Option<u64> {
    parse_size(value(cmd, key)?)
}

/// One `virtio_mmio.device=` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Bytes of the register window.
    pub size: u64,
    /// Physical base address.
    pub base: u64,
    /// Interrupt line.
    pub irq: u32,
    /// Platform device id (the optional fourth field).
    pub id: Option<u32>,
}

/// Parses `<size>@<base>:<irq>[:<id>]`.
pub fn parse_mmio_device(s: &[u8]) -> Option<MmioDevice> {
    let at = s.iter().position(|&b| b == b'@')?;
    let size = parse_size(&s[..at])?;
    let mut rest = s[at + 1..].split(|&b| b == b':');
    let base = parse_size(rest.next()?)?;
    let irq = u32::try_from(parse_num(rest.next()?)?).ok()?;
    let id = match rest.next() {
        Some(i) => Some(u32::try_from(parse_num(i)?).ok()?),
        None => None,
    };
    if rest.next().is_some() || size == 0 {
        return None;
    }
    Some(MmioDevice {
        size,
        base,
        irq,
        id,
    })
}

/// Every `virtio_mmio.device=` value on the command line, parsed or not
/// (`Err` carries the text that did not parse).
pub fn mmio_devices(cmd: &[u8]) -> impl Iterator<Item = Result<MmioDevice, &[u8]>> {
    words(cmd)
        .filter_map(|w| w.strip_prefix(b"virtio_mmio.device="))
        .map(|v| parse_mmio_device(v).ok_or(v))
}
