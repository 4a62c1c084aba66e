//! A volume attached on the node: its FUSE file and the loop device on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::backend::BlockBackend;
use super::fuse::{FdObserver, FuseConfig, FuseError, FuseServer};
use super::loopdev::{LoopDevice, LoopError};

/// What can go wrong attaching, growing or detaching a volume.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The FUSE side failed.
    #[error("serve the volume file")]
    Fuse(#[from] FuseError),
    /// The loop device failed.
    #[error("loop device")]
    Loop(#[from] LoopError),
    /// Growing the volume file failed.
    #[error("grow the volume file {path} to {size} bytes")]
    Grow {
        /// The volume file.
        path: PathBuf,
        /// The size asked for.
        size: u64,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The loop device did not take the new size.
    #[error("loop device reports {got} bytes after growing to {want}")]
    GrowMismatch {
        /// The size asked for.
        want: u64,
        /// What the device reports.
        got: u64,
    },
}

/// A volume exposed as a block device: a FUSE mount whose one file is the
/// volume, and a direct-I/O loop device on that file.
///
/// [`AttachedVolume::detach`] tears both down (loop first); it is idempotent
/// and runs, best effort, on drop. A file system mounted on the device must
/// be unmounted first. With a handover holder (an observer passed to
/// [`AttachedVolume::attach_with`]), call
/// [`crate::dataplane::handover::HolderLink::release`] after detaching so the
/// holder closes its copies of the (by then dead) connection's fds.
#[derive(Debug)]
pub struct AttachedVolume {
    // Declared before `fuse` so that, should the fields drop without
    // `detach`, the loop device lets go of the file before FUSE unmounts.
    loopdev: LoopDevice,
    fuse: FuseServer,
}

impl AttachedVolume {
    /// Serves `backend` as a FUSE file under `fuse_dir` (created if missing)
    /// and attaches a loop device to it, with the default FUSE settings.
    pub fn attach(backend: Arc<dyn BlockBackend>, fuse_dir: &Path) -> Result<Self, AttachError> {
        Self::attach_with(backend, fuse_dir, &FuseConfig::default(), None)
    }

    /// [`AttachedVolume::attach`] with explicit FUSE settings and an observer
    /// of the `/dev/fuse` fds (the handover holder).
    pub fn attach_with(
        backend: Arc<dyn BlockBackend>,
        fuse_dir: &Path,
        config: &FuseConfig,
        observer: Option<&dyn FdObserver>,
    ) -> Result<Self, AttachError> {
        let fuse = FuseServer::mount(backend, fuse_dir, config, observer)?;
        // If attaching fails, dropping `fuse` unmounts it.
        let loopdev = LoopDevice::attach(&fuse.file_path())?;
        Ok(Self { loopdev, fuse })
    }

    /// The block device, `/dev/loopN`.
    pub fn device(&self) -> &Path {
        self.loopdev.path()
    }

    /// The loop device.
    pub fn loop_device(&self) -> &LoopDevice {
        &self.loopdev
    }

    /// The FUSE server.
    pub fn fuse(&self) -> &FuseServer {
        &self.fuse
    }

    /// The volume file in the FUSE mount.
    pub fn fuse_file(&self) -> PathBuf {
        self.fuse.file_path()
    }

    /// Grows the volume online: the file (a SETATTR that reaches
    /// [`BlockBackend::set_size`]), then the loop device's capacity. The file
    /// system on top is grown separately.
    pub fn grow(&self, new_size: u64) -> Result<(), AttachError> {
        let path = self.fuse.file_path();
        let err = |source| AttachError::Grow {
            path: path.clone(),
            size: new_size,
            source,
        };
        let file = std::fs::OpenOptions::new().write(true).open(&path).map_err(err)?;
        file.set_len(new_size).map_err(err)?;
        self.loopdev.set_capacity()?;
        let got = self.loopdev.size()?;
        if got != new_size {
            return Err(AttachError::GrowMismatch { want: new_size, got });
        }
        tracing::info!(device = %self.device().display(), size = new_size, "volume grown");
        Ok(())
    }

    /// Detaches the loop device, then unmounts the FUSE file. Idempotent.
    pub fn detach(&mut self) -> Result<(), AttachError> {
        self.loopdev.detach()?;
        self.fuse.unmount()?;
        Ok(())
    }
}

impl Drop for AttachedVolume {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::error!(error = %e, "detach volume on drop");
        }
    }
}
