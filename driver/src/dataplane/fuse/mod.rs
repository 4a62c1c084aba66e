//! A FUSE server for one file, on the classic `/dev/fuse` path, with its own
//! request loop.
//!
//! Layout:
//! - [`abi`]: the kernel's structs and numbers, parsed and written by hand;
//! - [`ops`]: what each request does to the one-file file system (pure);
//! - [`session`]: mounting, the `INIT` handshake, per-thread cloned fds and
//!   the worker threads that read requests and write replies.
//!
//! Why our own loop rather than `fuser`: a successor process must be able to
//! take over the `/dev/fuse` fds of a live connection and serve it from the
//! saved `INIT` parameters, without a new `INIT` (see
//! [`crate::dataplane::handover`]); that needs control over every fd from its
//! creation and over the loop's start.
//!
//! Why `mount(2)` rather than `fusermount3`: the data plane runs as root, so
//! the privileged helper buys nothing; calling `mount` ourselves keeps the
//! `/dev/fuse` fd in our hands from `open` on (no fd passing from a helper),
//! needs no extra binary in the image, and reports errors as errnos.

pub mod abi;
pub mod ops;
pub mod session;

use std::io;
use std::path::PathBuf;

pub use abi::InitParams;
pub use session::{abort_connection, connection_dir, Connection, FdObserver, FuseServer};

/// How a FUSE server is set up.
#[derive(Debug, Clone)]
pub struct FuseConfig {
    /// Worker threads, each reading its own cloned `/dev/fuse` fd.
    pub threads: usize,
    /// Largest WRITE (and READ) the kernel may send, in bytes.
    pub max_write: u32,
    /// Async (background) requests the kernel keeps in flight; async direct
    /// I/O from the loop device counts here, so this caps the queue depth.
    pub max_background: u16,
    /// Background requests in flight before the kernel reports congestion.
    pub congestion_threshold: u16,
}

impl Default for FuseConfig {
    fn default() -> Self {
        Self {
            threads: 4,
            max_write: 1 << 20,
            max_background: 64,
            congestion_threshold: 48,
        }
    }
}

impl FuseConfig {
    /// Checks the values against what the kernel accepts.
    pub fn validate(&self) -> Result<(), FuseError> {
        let ok = self.threads >= 1
            && self.max_write >= 4096
            && self.max_write & 4095 == 0
            && self.max_write <= 256 * 4096
            && self.max_background >= 1
            && self.congestion_threshold <= self.max_background;
        if ok {
            Ok(())
        } else {
            Err(FuseError::Config(self.clone()))
        }
    }
}

/// What can go wrong serving a FUSE file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FuseError {
    /// The configuration is out of range.
    #[error("invalid FUSE configuration {0:?}")]
    Config(FuseConfig),
    /// Opening `/dev/fuse` failed.
    #[error("open /dev/fuse")]
    OpenDevice(#[source] io::Error),
    /// Preparing the mount point failed.
    #[error("prepare mount point {path}")]
    MountPoint {
        /// The mount point.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `mount(2)` failed.
    #[error("mount FUSE at {path}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Unmounting failed.
    #[error("unmount FUSE at {path}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing `/dev/fuse` during `INIT` failed.
    #[error("exchange INIT on /dev/fuse")]
    Init(#[source] io::Error),
    /// The kernel speaks a protocol we do not.
    #[error("kernel speaks FUSE {major}.{minor}, we need 7.x")]
    Protocol {
        /// Kernel's major version.
        major: u32,
        /// Kernel's minor version.
        minor: u32,
    },
    /// The first request was not INIT or was malformed.
    #[error("first FUSE request was opcode {0}, not a well-formed INIT")]
    NotInit(u32),
    /// Cloning the session fd for a worker failed.
    #[error("clone the /dev/fuse session fd")]
    Clone(#[source] io::Error),
    /// The fd observer (the handover holder) refused an fd.
    #[error("hand a /dev/fuse fd to the holder")]
    Observer(#[source] io::Error),
    /// Starting a worker thread failed.
    #[error("start a FUSE worker thread")]
    Spawn(#[source] io::Error),
    /// Writing a notification failed.
    #[error("send a FUSE notification")]
    Notify(#[source] io::Error),
    /// No fds to serve.
    #[error("no /dev/fuse fd to serve")]
    NoFds,
}
