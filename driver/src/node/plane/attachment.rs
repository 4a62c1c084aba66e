//! One attached volume: its engine, its FUSE connection and loop device, and
//! its link to the fd holder — attached here, or taken over from a
//! predecessor, or found broken.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use floe_engine::{Mode, Primary, VolumeStore};
use serde::{Deserialize, Serialize};

use super::error::{chain, PlaneError};
use super::files::RunPaths;
use super::types::{AttachState, AttachmentInfo};
use crate::dataplane::fuse::{abort_connection, FuseConfig, FuseServer};
use crate::dataplane::handover::{self, HandoverError, HolderLink};
use crate::dataplane::loopdev;
use crate::dataplane::mounttable;
use crate::dataplane::{mount, AttachedVolume, EngineBackend, SizedBackend};
use crate::store::FileStore;

/// What `attached.json` says about one volume: enough for a successor to
/// find its connection in the holder and its loop device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedRecord {
    /// The FUSE mount point.
    pub fuse_dir: PathBuf,
    /// The loop device on the FUSE file; absent while the attach is under
    /// way (the record is written before the FUSE mount, so that a crash
    /// in between leaves nothing a successor does not know of).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<PathBuf>,
}

/// `<run-dir>/attached.json`: volume id → [`AttachedRecord`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedFile {
    /// Every attached volume.
    pub volumes: BTreeMap<String, AttachedRecord>,
}

enum Kind {
    /// Attached by this process.
    Serving(AttachedVolume),
    /// Taken over: the loop device was attached by a predecessor.
    Resumed(FuseServer),
    /// Found attached but not servable; why.
    Broken(String),
}

/// An attached volume.
pub(crate) struct Attachment {
    volume: String,
    backend: Option<Arc<SizedBackend>>,
    device: PathBuf,
    fuse_dir: PathBuf,
    link: Option<HolderLink>,
    kind: Kind,
}

/// Opens a volume's store and reopens its engine (bumping the incarnation).
pub(crate) fn open_engine(data_dir: &Path, volume: &str, mode: Mode) -> Result<Primary<FileStore>, PlaneError> {
    let store = FileStore::open(data_dir, volume).map_err(|source| PlaneError::Store {
        op: "open the store",
        volume: volume.to_owned(),
        source,
    })?;
    let geo = store.geometry();
    let mut primary = Primary::open(store, geo, mode).map_err(|source| PlaneError::Engine {
        op: "reopen the engine",
        volume: volume.to_owned(),
        source,
    })?;
    // A snapshot whose copy a crash cut short was never reported taken (the
    // call waits for the copy); the engine dropped what was left of it.
    for name in primary.take_failed_snapshots() {
        tracing::warn!(volume, snapshot = %name, "snapshot failed: the data plane stopped during its copy; its partial copy is removed");
    }
    Ok(primary)
}

impl Attachment {
    /// Attaches `volume`, shown as `size` bytes: its engine, a FUSE file
    /// whose every fd the holder gets before its first read, and a
    /// direct-I/O loop device on it.
    pub(crate) fn attach(
        volume: &str,
        mode: Mode,
        size: u64,
        data_dir: &Path,
        run: &RunPaths,
        config: &FuseConfig,
    ) -> Result<Self, PlaneError> {
        let holder = run.holder_socket();
        let link = HolderLink::connect(&holder, volume).map_err(|source| PlaneError::HolderUnavailable {
            path: holder.clone(),
            run_dir: run.dir.display().to_string(),
            source,
        })?;
        let fuse_dir = run.fuse_dir(volume);
        clear_stale(volume, &fuse_dir, &link)?;
        let engine = EngineBackend::new(open_engine(data_dir, volume, mode)?);
        let backend = Arc::new(SizedBackend::new(engine, size));
        let attached = AttachedVolume::attach_with(backend.clone(), &fuse_dir, config, Some(&link));
        let av = match attached {
            Ok(av) => av,
            Err(source) => {
                // The connection is gone; the holder's copies are of no use.
                if let Err(e) = link.release() {
                    tracing::warn!(volume, error = %chain(&e), "release the holder's fds after a failed attach");
                }
                return Err(PlaneError::Attach {
                    volume: volume.to_owned(),
                    source,
                });
            }
        };
        Ok(Attachment {
            volume: volume.to_owned(),
            backend: Some(backend),
            device: av.device().to_owned(),
            fuse_dir,
            link: Some(link),
            kind: Kind::Serving(av),
        })
    }

    /// Takes over a volume a predecessor attached: its connection from the
    /// holder (served from the saved `INIT` parameters, then
    /// `FUSE_NOTIFY_RESEND`), its engine reopened from disk. `None` when no
    /// loop device is on its FUSE file (an attach that never completed, or
    /// nothing left after a reboot: what remains is torn down). A volume
    /// that cannot be served comes back [`AttachState::Broken`], with the
    /// reason.
    pub(crate) fn take_over(
        volume: &str,
        mode: Mode,
        size: u64,
        rec: &AttachedRecord,
        data_dir: &Path,
        run: &RunPaths,
    ) -> Option<Self> {
        let holder = run.holder_socket();
        let file = rec.fuse_dir.join(crate::dataplane::fuse::ops::FILE_NAME);
        let devices = loopdev::devices_backed_by(&file);
        let device = rec
            .device
            .as_ref()
            .filter(|d| devices.contains(d))
            .cloned()
            .or_else(|| devices.first().cloned());
        let Some(device) = device else {
            // The attach never reached its loop device (or nothing of it is
            // left, as after a reboot): undo whatever remains.
            tracing::warn!(
                volume,
                "no loop device on the FUSE file of an attached volume: the attach did not finish; torn down"
            );
            tear_down_fuse(&rec.fuse_dir);
            if let Ok(link) = HolderLink::connect(&holder, volume) {
                let _ = link.release();
            }
            return None;
        };
        let broken = |why: String| {
            tracing::error!(volume, device = %device.display(), why, "volume cannot be served");
            Some(Attachment {
                volume: volume.to_owned(),
                backend: None,
                device: device.clone(),
                fuse_dir: rec.fuse_dir.clone(),
                link: None,
                kind: Kind::Broken(why),
            })
        };
        let conn = match handover::take(&holder, volume) {
            Ok(conn) => {
                crate::failpoint::hit(crate::failpoint::HANDOVER_TAKEN);
                conn
            }
            Err(e @ (HandoverError::Unknown(_) | HandoverError::Socket { .. })) => {
                return broken(format!(
                    "its FUSE connection could not be taken over ({}): the holder lost it, so the connection ended with the previous data plane and I/O on {} fails; unmount the file system on it, then detach",
                    chain(&e),
                    device.display()
                ))
            }
            Err(e) => return broken(format!("take its FUSE connection from the holder: {}", chain(&e))),
        };
        let backend = match open_engine(data_dir, volume, mode) {
            Ok(p) => Arc::new(SizedBackend::new(EngineBackend::new(p), size)),
            // The connection stays unserved: I/O waits, and a later start
            // may succeed. Detach aborts it.
            Err(e) => return broken(chain(&e)),
        };
        let fuse = match FuseServer::resume(backend.clone(), &rec.fuse_dir, conn) {
            Ok(f) => f,
            Err(e) => return broken(format!("resume its FUSE connection: {}", chain(&e))),
        };
        let link = match HolderLink::connect(&holder, volume) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(volume, error = %chain(&e), "connect to the holder (needed only to release the fds at detach)");
                None
            }
        };
        match sysfs_dio(&device) {
            Some(true) => {}
            other => {
                tracing::warn!(volume, device = %device.display(), dio = ?other, "taken-over loop device does not report direct I/O")
            }
        }
        tracing::info!(volume, device = %device.display(), "volume taken over from the previous data plane");
        Some(Attachment {
            volume: volume.to_owned(),
            backend: Some(backend),
            device,
            fuse_dir: rec.fuse_dir.clone(),
            link,
            kind: Kind::Resumed(fuse),
        })
    }

    /// The volume id.
    pub(crate) fn volume(&self) -> &str {
        &self.volume
    }

    /// The loop device.
    pub(crate) fn device(&self) -> &Path {
        &self.device
    }

    /// What `attached.json` says about it.
    pub(crate) fn record(&self) -> AttachedRecord {
        AttachedRecord {
            fuse_dir: self.fuse_dir.clone(),
            device: Some(self.device.clone()),
        }
    }

    /// The engine, when served.
    pub(crate) fn backend(&self) -> Option<&EngineBackend> {
        self.backend.as_deref().map(SizedBackend::engine)
    }

    /// The sized engine, when served (kept alive past the attachment).
    pub(crate) fn sized(&self) -> Option<&Arc<SizedBackend>> {
        self.backend.as_ref()
    }

    /// Grows the device to `size` bytes (at most the store's geometry): the
    /// FUSE file first, then the loop device.
    pub(crate) fn grow(&self, size: u64) -> Result<(), PlaneError> {
        let volume = self.volume.clone();
        match &self.kind {
            Kind::Serving(av) => av.grow(size).map_err(|source| PlaneError::Attach { volume, source }),
            Kind::Resumed(_) => {
                let file = self.fuse_dir.join(crate::dataplane::fuse::ops::FILE_NAME);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .and_then(|f| f.set_len(size))
                    .map_err(PlaneError::io("grow the FUSE file", &file))?;
                loopdev::set_capacity_of(&self.device).map_err(|source| PlaneError::Loop {
                    op: "grow the loop device",
                    volume,
                    source,
                })
            }
            Kind::Broken(_) => Err(PlaneError::NotServed(volume)),
        }
    }

    /// As the API shows it.
    pub(crate) fn info(&self) -> AttachmentInfo {
        let (state, detail) = match &self.kind {
            Kind::Serving(_) => (AttachState::Serving, None),
            Kind::Resumed(_) => (AttachState::Resumed, None),
            Kind::Broken(why) => (AttachState::Broken, Some(why.clone())),
        };
        let engine = self.backend.as_ref().map(|b| {
            b.engine().with_primary(|p| {
                let incarnation = p.store().get_meta().ok().flatten().map(|m| m.incarnation);
                (incarnation, p.dirty_blocks())
            })
        });
        AttachmentInfo {
            device: self.device.clone(),
            fuse_dir: self.fuse_dir.clone(),
            state,
            detail,
            incarnation: engine.and_then(|(i, _)| i),
            dirty_blocks: engine.map(|(_, d)| d),
        }
    }

    /// Tears down the loop device, then the FUSE mount, tells the holder to
    /// let go, and flushes the engine. The caller checked that nothing is
    /// mounted on the device. On error the attachment stays as it is, and a
    /// retry resumes where this stopped.
    pub(crate) fn detach(&mut self) -> Result<(), PlaneError> {
        let volume = self.volume.clone();
        let detach_loop = || {
            loopdev::detach_device(&self.device).map_err(|source| PlaneError::Loop {
                op: "detach the loop device",
                volume: volume.clone(),
                source,
            })
        };
        match &mut self.kind {
            Kind::Serving(av) => av.detach().map_err(|source| PlaneError::Attach {
                volume: volume.clone(),
                source,
            })?,
            Kind::Resumed(fuse) => {
                detach_loop()?;
                fuse.unmount().map_err(|source| PlaneError::Fuse {
                    op: "unmount the FUSE file",
                    volume: volume.clone(),
                    source,
                })?;
            }
            Kind::Broken(_) => {
                // Nobody serves the connection (or it is dead): end it so
                // that nothing waits on it, then take everything down.
                abort_connection(&self.fuse_dir);
                detach_loop()?;
                unmount_fuse(&self.fuse_dir);
            }
        }
        if let Some(link) = &self.link {
            if let Err(e) = link.release() {
                tracing::warn!(volume = %self.volume, error = %chain(&e), "tell the holder to close the fds of a detached volume");
            }
        }
        if let Some(b) = &self.backend {
            if let Err(e) = b.engine().with_primary(|p| p.flush()) {
                tracing::error!(volume = %self.volume, error = %chain(&e), "flush the engine after detach");
            }
        }
        let _ = std::fs::remove_dir(&self.fuse_dir);
        tracing::info!(volume = %self.volume, device = %self.device.display(), "volume detached");
        Ok(())
    }

    /// Leaves the FUSE mount, the loop device and the holder's copies as
    /// they are, for a successor: the process is about to exit.
    pub(crate) fn abandon(self) {
        match self.kind {
            // `AttachedVolume` has no abandon of its own: not running its
            // destructor leaves the loop device and the mount in place.
            Kind::Serving(av) => std::mem::forget(av),
            Kind::Resumed(fuse) => fuse.abandon(),
            Kind::Broken(_) => {}
        }
    }
}

/// Clears what an attach of `volume` that did not finish may have left: the
/// holder's fds under its key, a loop device on its FUSE file, the FUSE
/// mount. Refuses when a file system is mounted on such a loop device.
fn clear_stale(volume: &str, fuse_dir: &Path, link: &HolderLink) -> Result<(), PlaneError> {
    link.release().map_err(|source| PlaneError::Handover {
        op: "clear the holder's stale fds",
        volume: volume.to_owned(),
        source,
    })?;
    let file = fuse_dir.join(crate::dataplane::fuse::ops::FILE_NAME);
    for device in loopdev::devices_backed_by(&file) {
        let targets = mounttable::mount_points_of(&device).map_err(PlaneError::io("find the mounts of", &device))?;
        if !targets.is_empty() {
            return Err(PlaneError::StaleMounted {
                volume: volume.to_owned(),
                device,
                targets,
            });
        }
        tracing::warn!(volume, device = %device.display(), "detaching a loop device left by an attach that did not finish");
        abort_connection(fuse_dir);
        loopdev::detach_device(&device).map_err(|source| PlaneError::Loop {
            op: "detach a stale loop device",
            volume: volume.to_owned(),
            source,
        })?;
    }
    tear_down_fuse(fuse_dir);
    Ok(())
}

/// Ends and unmounts whatever FUSE connection is mounted at `fuse_dir`.
fn tear_down_fuse(fuse_dir: &Path) {
    if mounttable::is_mount_point(fuse_dir).unwrap_or(false) {
        tracing::warn!(dir = %fuse_dir.display(), "unmounting a FUSE mount nobody serves");
        abort_connection(fuse_dir);
        unmount_fuse(fuse_dir);
    }
}

/// Unmounts the FUSE mount at `fuse_dir`, lazily when it stays busy.
fn unmount_fuse(fuse_dir: &Path) {
    if mount::unmount_path(fuse_dir).is_err() {
        let _ = rustix::mount::unmount(fuse_dir, rustix::mount::UnmountFlags::DETACH);
    }
}

fn sysfs_dio(device: &Path) -> Option<bool> {
    let name = device.file_name()?;
    let dio = std::fs::read_to_string(Path::new("/sys/block").join(name).join("loop/dio")).ok()?;
    Some(dio.trim() == "1")
}
