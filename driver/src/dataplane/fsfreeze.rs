//! Quiescing a mounted file system for a consistent cut: `syncfs`, then
//! `FIFREEZE`; `FITHAW` after the epoch flipped.
//!
//! [`FrozenFs`] thaws on drop, so a freeze sequence that fails half-way never
//! leaves a file system frozen behind it; the deadline watchdog and the
//! start-up thaw of leftovers (DESIGN §4) are the controller's business.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::sys;

/// What can go wrong freezing or thawing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FreezeError {
    /// A call on the file system's root failed.
    #[error("{op} {path}")]
    Call {
        /// `open`, `syncfs`, `FIFREEZE` or `FITHAW`.
        op: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn open_root(path: &Path) -> Result<OwnedFd, FreezeError> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FreezeError::Call {
        op: "open",
        path: path.to_owned(),
        source: e.into(),
    })
}

/// Writes back everything dirty of the file system mounted at `path`.
pub fn syncfs(path: &Path) -> Result<(), FreezeError> {
    let root = open_root(path)?;
    let _own = crate::failpoint::OwnIo::enter();
    rustix::fs::syncfs(&root).map_err(|e| FreezeError::Call {
        op: "syncfs",
        path: path.to_owned(),
        source: e.into(),
    })
}

/// Thaws the file system mounted at `path`. Thawing one that is not frozen
/// is not an error (the kernel says `EINVAL`).
pub fn thaw(path: &Path) -> Result<(), FreezeError> {
    let root = open_root(path)?;
    // ext4 writes its superblock while it thaws: through this process too.
    let _own = crate::failpoint::OwnIo::enter();
    match sys::fithaw(&root) {
        Ok(()) | Err(Errno::INVAL) => Ok(()),
        Err(e) => Err(FreezeError::Call {
            op: "FITHAW",
            path: path.to_owned(),
            source: e.into(),
        }),
    }
}

/// A frozen file system: thawed by [`FrozenFs::thaw`] or on drop.
#[derive(Debug)]
pub struct FrozenFs {
    path: PathBuf,
    root: Option<OwnedFd>,
}

impl FrozenFs {
    /// `syncfs` then `FIFREEZE` on the file system mounted at `path`.
    pub fn freeze(path: &Path) -> Result<Self, FreezeError> {
        let root = open_root(path)?;
        let err = |op| {
            move |e: Errno| FreezeError::Call {
                op,
                path: path.to_owned(),
                source: e.into(),
            }
        };
        let own = crate::failpoint::OwnIo::enter();
        rustix::fs::syncfs(&root).map_err(err("syncfs"))?;
        sys::fifreeze(&root).map_err(err("FIFREEZE"))?;
        drop(own);
        Ok(Self {
            path: path.to_owned(),
            root: Some(root),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Thaws. Idempotent.
    pub fn thaw(&mut self) -> Result<(), FreezeError> {
        let Some(root) = self.root.take() else { return Ok(()) };
        let _own = crate::failpoint::OwnIo::enter();
        match sys::fithaw(&root) {
            Ok(()) | Err(Errno::INVAL) => Ok(()),
            Err(e) => Err(FreezeError::Call {
                op: "FITHAW",
                path: self.path.clone(),
                source: e.into(),
            }),
        }
    }
}

impl Drop for FrozenFs {
    fn drop(&mut self) {
        if let Err(e) = self.thaw() {
            tracing::error!(error = %e, "thaw file system on drop");
        }
    }
}
