// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The command line, in Firecracker's spirit: a few flags, each checked
//! before the VM is made, each error naming its flag or file.

use std::fs::File;
use std::path::PathBuf;

use clap::Parser;

use crate::error::{Error, Result};

/// Smallest --mem (MiB): the built-in guest needs 8 MiB.
pub const MIN_MEM_MIB: u64 = 8;
/// Largest --mem (MiB): 1 TiB.
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// Default --mem (MiB).
pub const DEFAULT_MEM_MIB: u64 = 256;
/// Largest --vcpus.
pub const MAX_VCPUS: u8 = 64;
/// Command line given to a --kernel when --cmdline is absent.
pub const DEFAULT_LINUX_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// `vmm`: boots a microVM. With no --kernel it boots the built-in guest.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(name = "vmm", version, about, long_about = None)]
pub struct Cli {
    /// Kernel: an ELF with a PVH note, an ELF vmlinux or a bzImage.
    /// Default: the built-in guest (embedded in this binary).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs (PVH module 0, or the Linux ramdisk).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default with --kernel: "console=ttyS0 reboot=k panic=1"].
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Guest RAM in MiB.
    #[arg(long, value_name = "MiB", default_value_t = DEFAULT_MEM_MIB,
          value_parser = clap::value_parser!(u64).range(MIN_MEM_MIB..=MAX_MEM_MIB))]
    pub mem: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=MAX_VCPUS as i64))]
    pub vcpus: u8,
    /// A disk image, attached as a virtio-blk device (repeatable; disk i
    /// sits at 0xd0000000 + i * 0x1000, IRQ 5 + i). Options: `ro`
    /// (read-only, offered to the guest as VIRTIO_BLK_F_RO), `direct`
    /// (O_DIRECT for aligned transfers); `,,` is a comma in the path.
    /// Default for the built-in guest: three scratch disks (the third behind
    /// the IOMMU), removed at exit. `,iommu` puts the disk behind a
    /// virtio-iommu (docs/guest-va-dma.md): its DMA addresses are then I/O
    /// virtual addresses, translated by MAP tables or the guest's own page
    /// tables.
    #[arg(long, value_name = "PATH[,ro][,direct][,iommu]", value_parser = parse_disk)]
    pub disk: Vec<DiskArg>,
    /// How long (microseconds) a virtio-blk worker keeps polling its queue
    /// after it ran dry, before it sleeps until the next notification
    /// (0: never poll).
    #[arg(long, value_name = "US", default_value_t = DEFAULT_BLK_POLL_US,
          value_parser = clap::value_parser!(u64).range(0..=MAX_BLK_POLL_US))]
    pub blk_poll_us: u64,
    /// How long (milliseconds) a DMA request behind the IOMMU waits for the
    /// guest's answer to its page request before it fails with IOERR.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_IOMMU_PRQ_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_IOMMU_PRQ_TIMEOUT_MS))]
    pub iommu_prq_timeout_ms: u64,
}

/// Default --iommu-prq-timeout-ms.
pub const DEFAULT_IOMMU_PRQ_TIMEOUT_MS: u64 = 2000;
/// Largest --iommu-prq-timeout-ms (10 minutes).
pub const MAX_IOMMU_PRQ_TIMEOUT_MS: u64 = 600_000;

/// Default --blk-poll-us: no polling. Measured with the guest's bench mode
/// (4 KiB random reads at queue depth 32): with both cores free polling
/// gains nothing (the driver batches and EVENT_IDX leaves a handful of
/// notifications per 20,000 requests); with one core busy elsewhere the
/// spinning worker takes the vCPU's time (IOPS medians of 6 runs: 0 us
/// 162k, 20 us 135k, 50 us 108k, 200 us 53k).
pub const DEFAULT_BLK_POLL_US: u64 = 0;
/// Largest --blk-poll-us (1 s).
pub const MAX_BLK_POLL_US: u64 = 1_000_000;

/// One --disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskArg {
    /// The image.
    pub path: PathBuf,
    /// Read-only.
    pub read_only: bool,
    /// O_DIRECT.
    pub direct: bool,
    /// Behind the IOMMU.
    pub iommu: bool,
}

/// `PATH[,ro][,direct]`: the path runs to the first single comma (`,,`
/// stands for a comma in the path); each option after it is `ro` or
/// `direct`.
fn parse_disk(s: &str) -> std::result::Result<DiskArg, String> {
    let mut path = String::new();
    let mut options = None;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != ',' {
            path.push(c);
        } else if chars.peek().is_some_and(|&(_, n)| n == ',') {
            chars.next();
            path.push(',');
        } else {
            options = Some(&s[i + 1..]);
            break;
        }
    }
    if path.is_empty() {
        return Err("empty path".into());
    }
    let mut disk = DiskArg {
        path: PathBuf::from(path),
        read_only: false,
        direct: false,
        iommu: false,
    };
    for opt in options.map(|o| o.split(',')).into_iter().flatten() {
        match opt {
            "ro" => disk.read_only = true,
            "direct" => disk.direct = true,
            "iommu" => disk.iommu = true,
            _ => {
                return Err(format!(
                    "unknown option `{opt}` (the options are `ro`, `direct` and `iommu`; `,,` is a comma in the path)"
                ))
            }
        }
    }
    Ok(disk)
}

/// Opens a file named by `flag`.
pub fn open_file(flag: &'static str, path: &PathBuf) -> Result<File> {
    let f = File::open(path).map_err(|source| Error::File {
        flag,
        path: path.clone(),
        source,
    })?;
    let meta = f.metadata().map_err(|source| Error::File {
        flag,
        path: path.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(Error::File {
            flag,
            path: path.clone(),
            source: std::io::Error::other("not a regular file"),
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vmm").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            (c.kernel, c.mem, c.vcpus, c.disk.len()),
            (None, DEFAULT_MEM_MIB, 1, 0)
        );
    }

    #[test]
    fn disks_and_options() {
        let c = parse(&[
            "--disk",
            "a.img",
            "--disk",
            "b,,c.img,ro",
            "--disk",
            "d.img,direct,ro",
            "--disk",
            "e.img,iommu",
        ])
        .unwrap();
        let disk = |path: &str, read_only, direct| DiskArg {
            path: path.into(),
            read_only,
            direct,
            iommu: false,
        };
        assert_eq!(c.disk[0], disk("a.img", false, false));
        assert_eq!(c.disk[1], disk("b,c.img", true, false));
        assert_eq!(c.disk[2], disk("d.img", true, true));
        assert_eq!(
            c.disk[3],
            DiskArg {
                iommu: true,
                ..disk("e.img", false, false)
            }
        );
        assert_eq!(c.iommu_prq_timeout_ms, DEFAULT_IOMMU_PRQ_TIMEOUT_MS);
        for (arg, bad) in [
            ("a.img,rw", "`rw`"),
            ("a.img,ro,", "``"),
            ("b,c.img", "`c.img`"),
            (",ro", "empty path"),
        ] {
            let e = parse(&["--disk", arg]).unwrap_err().to_string();
            assert!(e.contains("--disk") && e.contains(bad), "{arg}: {e}");
        }
    }

    #[test]
    fn blk_poll_us() {
        assert_eq!(parse(&[]).unwrap().blk_poll_us, DEFAULT_BLK_POLL_US);
        assert_eq!(parse(&["--blk-poll-us", "25"]).unwrap().blk_poll_us, 25);
        let e = parse(&["--blk-poll-us", "2000000"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--blk-poll-us"), "{e}");
    }

    #[test]
    fn bad_numbers_name_their_flag() {
        for (args, flag) in [
            (&["--mem", "0"][..], "--mem"),
            (&["--mem", "lots"][..], "--mem"),
            (&["--mem", "99999999999"][..], "--mem"),
            (&["--vcpus", "0"][..], "--vcpus"),
            (&["--vcpus", "300"][..], "--vcpus"),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }
}
