// Copyright 2026 The guest-mm authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VMM's errors: every one names the flag, file or KVM call at fault.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Process exit code when the VMM itself fails (bad flag, unusable file,
/// KVM refusing a call): 125, as `env`, `docker run` and friends use for
/// "the runner failed, not the thing it runs".
pub const EXIT_VMM_ERROR: i32 = 125;
/// Process exit code when the guest crashed: triple fault (shutdown), KVM
/// internal error (e.g. emulation failure) or a failed VM entry.
pub const EXIT_GUEST_CRASH: i32 = 124;

/// Everything that can stop the VMM before or while it runs a guest.
#[derive(Debug)]
pub enum Error {
    /// A file named by a flag cannot be used.
    File {
        /// The flag (`--kernel`, `--initrd`, `--disk`).
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A flag's value is not acceptable.
    Flag {
        /// The flag.
        flag: &'static str,
        /// Why.
        why: String,
    },
    /// The kernel image could not be loaded into guest memory.
    Load {
        /// Which image (`--kernel <path>` or `the built-in guest`).
        image: String,
        /// Why.
        why: String,
    },
    /// A KVM ioctl failed.
    Kvm {
        /// The call (e.g. `KVM_CREATE_VM`).
        call: &'static str,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    Memory(String),
    /// A host facility (signals, eventfd, epoll, threads) failed.
    Host {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl Error {
    /// Shorthand for a [`Error::Kvm`] mapper: `.map_err(Error::kvm("KVM_RUN"))`.
    pub fn kvm(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { call, source }
    }

    /// Shorthand for a [`Error::Host`] mapper.
    pub fn host<E: Into<io::Error>>(what: &'static str) -> impl FnOnce(E) -> Error {
        move |e| Error::Host {
            what,
            source: e.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::File { flag, path, source } => {
                write!(f, "{flag} {}: {source}", path.display())
            }
            Error::Flag { flag, why } => write!(f, "{flag}: {why}"),
            Error::Load { image, why } => write!(f, "loading {image}: {why}"),
            Error::Kvm { call, source } => write!(f, "{call} failed: {source}"),
            Error::Memory(why) => write!(f, "guest memory: {why}"),
            Error::Host { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::File { source, .. } | Error::Host { source, .. } => Some(source),
            Error::Kvm { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The VMM's result type.
pub type Result<T> = std::result::Result<T, Error>;
