// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The scratch disks of the default run (the built-in guest with no
//! `--disk`): made in a private temporary directory (mode 0700, under
//! `$TMPDIR` or /tmp) that is removed when [`ScratchDisks`] is dropped:
//! at exit, on every error return, and on SIGINT/SIGTERM/SIGHUP (the VMM
//! turns those into a clean stop, see [`crate::event_loop`]).
//!
//! - disk 0, read-write: [`DISK0_BYTES`], sparse (all zeroes);
//! - disk 1, read-only: [`DISK1_BYTES`] whose little-endian 8-byte word at
//!   every byte offset `o` (a multiple of 8) is [`disk1_word`]`(o)` =
//!   `0x524f_0000_0000_0000 | o`; the built-in guest checks its reads of
//!   disk 1 against this formula.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use vmm_sys_util::tempdir::TempDir;

use crate::cli::DiskArg;
use crate::error::{Error, Result};

/// Size of scratch disk 0 (read-write).
pub const DISK0_BYTES: u64 = 32 << 20;
/// Size of scratch disk 1 (read-only, patterned).
pub const DISK1_BYTES: u64 = 4 << 20;
/// Size of scratch disk 2 (read-write, sparse, behind the IOMMU: the
/// guest-virtual DMA scenarios).
pub const DISK2_BYTES: u64 = 8 << 20;
/// The tag in the top bytes of disk 1's words ("RO").
pub const DISK1_TAG: u64 = 0x524f_0000_0000_0000;

/// The word at byte offset `offset` (a multiple of 8) of disk 1.
pub fn disk1_word(offset: u64) -> u64 {
    DISK1_TAG | offset
}

/// The scratch disks; their directory goes when this is dropped.
pub struct ScratchDisks {
    dir: TempDir,
    /// The disks as `--disk` arguments (disk 0 read-write, disk 1
    /// read-only, disk 2 read-write behind the IOMMU).
    pub disks: Vec<DiskArg>,
}

impl ScratchDisks {
    /// Makes the directory and both disks.
    pub fn create() -> Result<Self> {
        let prefix = std::env::temp_dir().join("vmm-scratch-");
        let dir = TempDir::new_with_prefix(&prefix).map_err(|e| Error::Host {
            what: "creating the scratch disks' directory",
            source: e.into(),
        })?;
        let path0 = dir.as_path().join("disk0-rw.img");
        let path1 = dir.as_path().join("disk1-ro.img");
        let made = (|| -> io::Result<()> {
            File::create(&path0)?.set_len(DISK0_BYTES)?;
            let mut f = File::create(&path1)?;
            let mut chunk = Vec::with_capacity(1 << 16);
            for base in (0..DISK1_BYTES).step_by(1 << 16) {
                chunk.clear();
                for o in (base..base + (1 << 16)).step_by(8) {
                    chunk.extend_from_slice(&disk1_word(o).to_le_bytes());
                }
                f.write_all(&chunk)?;
            }
            f.sync_all()
        })();
        made.map_err(|source| Error::Host {
            what: "writing the scratch disks",
            source,
        })?;
        let path2 = dir.as_path().join("disk2-iommu.img");
        File::create(&path2)
            .and_then(|f| f.set_len(DISK2_BYTES))
            .map_err(|source| Error::Host {
                what: "writing the scratch disks",
                source,
            })?;
        let disk = |path: PathBuf, read_only, iommu| DiskArg {
            path,
            read_only,
            direct: false,
            iommu,
        };
        Ok(ScratchDisks {
            disks: vec![
                disk(path0, false, false),
                disk(path1, true, false),
                disk(path2, false, true),
            ],
            dir,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.as_path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn disks_have_their_size_and_pattern_and_go_with_their_directory() {
        let s = ScratchDisks::create().unwrap();
        let dir = s.dir().to_path_buf();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let m0 = std::fs::metadata(&s.disks[0].path).unwrap();
        assert_eq!(m0.len(), DISK0_BYTES);
        // Sparse: (almost) no blocks allocated.
        assert!(
            m0.blocks() * 512 < DISK0_BYTES / 8,
            "{} blocks",
            m0.blocks()
        );
        let mut bytes = Vec::new();
        File::open(&s.disks[1].path)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(bytes.len() as u64, DISK1_BYTES);
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            let o = i as u64 * 8;
            assert_eq!(u64::from_le_bytes(w.try_into().unwrap()), disk1_word(o));
        }
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 0, 0, 0x4f, 0x52]);
        assert!(!s.disks[0].read_only && s.disks[1].read_only);
        assert_eq!(
            std::fs::metadata(&s.disks[2].path).unwrap().len(),
            DISK2_BYTES
        );
        assert!(!s.disks[2].read_only && s.disks[2].iommu && !s.disks[0].iommu);
        drop(s);
        assert!(!dir.exists());
    }
}
