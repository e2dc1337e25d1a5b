// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The command line, in Firecracker's spirit: a few flags, each checked
//! before the VM is made, each error naming its flag or file.

use std::fs::{File, OpenOptions};
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
    /// A disk image, `,ro` for read-only (repeatable). Checked, but not
    /// attached yet: virtio-blk arrives with a later issue.
    #[arg(long, value_name = "PATH[,ro]", value_parser = parse_disk)]
    pub disk: Vec<DiskArg>,
}

/// One --disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskArg {
    /// The image.
    pub path: PathBuf,
    /// Read-only.
    pub read_only: bool,
}

fn parse_disk(s: &str) -> std::result::Result<DiskArg, String> {
    let (path, read_only) = match s.rsplit_once(',') {
        Some((p, "ro")) => (p, true),
        Some((_, opt)) => return Err(format!("unknown option `{opt}` (the only option is `ro`)")),
        None => (s, false),
    };
    if path.is_empty() {
        return Err("empty path".into());
    }
    Ok(DiskArg {
        path: PathBuf::from(path),
        read_only,
    })
}

impl DiskArg {
    /// Opens the image as the device would (read-only or read-write).
    pub fn open(&self) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .open(&self.path)
            .map_err(|source| Error::File {
                flag: "--disk",
                path: self.path.clone(),
                source,
            })
    }
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
    fn disks_and_ro() {
        let c = parse(&["--disk", "a.img", "--disk", "b,c.img,ro"]).unwrap();
        assert_eq!(
            c.disk[0],
            DiskArg {
                path: "a.img".into(),
                read_only: false
            }
        );
        assert_eq!(
            c.disk[1],
            DiskArg {
                path: "b,c.img".into(),
                read_only: true
            }
        );
        let e = parse(&["--disk", "a.img,rw"]).unwrap_err().to_string();
        assert!(e.contains("--disk") && e.contains("rw"), "{e}");
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
