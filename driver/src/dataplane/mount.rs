//! File systems on a volume's block device: probe, format when empty, mount,
//! grow online, check, trim.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags, UnmountFlags};

use super::cmd::{self, CommandError};

/// File systems the node plugin formats and grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    /// ext4.
    Ext4,
    /// XFS.
    Xfs,
}

impl FsType {
    /// Name as `mount(2)` and `blkid` spell it.
    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// Parses a CSI `fs_type` or a `blkid` TYPE.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ext4" => Some(FsType::Ext4),
            "xfs" => Some(FsType::Xfs),
            _ => None,
        }
    }
}

/// What can go wrong with a file system.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// A tool failed.
    #[error("{op}")]
    Tool {
        /// What was being done.
        op: &'static str,
        /// The failure.
        #[source]
        source: CommandError,
    },
    /// The device holds a file system of another type (or something else).
    #[error("{device} already holds {found:?}, not {wanted}")]
    WrongContent {
        /// The device.
        device: PathBuf,
        /// What `blkid` found.
        found: String,
        /// What was asked for.
        wanted: &'static str,
    },
    /// `mount(2)` failed.
    #[error("mount {device} on {target}")]
    Mount {
        /// The device.
        device: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `umount(2)` failed.
    #[error("unmount {target}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The marker of a file system creation could not be written or removed.
    #[error("{op} the file-system creation marker {path}")]
    Marker {
        /// What was being done.
        op: &'static str,
        /// The marker.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A consistency check found problems.
    #[error("{tool} found problems on {device}: {output}")]
    Unclean {
        /// The checker.
        tool: &'static str,
        /// The device.
        device: PathBuf,
        /// What the checker printed.
        output: String,
    },
}

/// What `blkid` finds on `device`: `None` when it is empty (no signature).
pub fn probe(device: &Path) -> Result<Option<String>, MountError> {
    match cmd::run(
        "blkid",
        &[
            "-p".as_ref(),
            "-o".as_ref(),
            "value".as_ref(),
            "-s".as_ref(),
            "TYPE".as_ref(),
            device.as_os_str(),
        ],
    ) {
        Ok(out) if out.trim().is_empty() => Ok(None),
        Ok(out) => Ok(Some(out.trim().to_owned())),
        // blkid exits with 2 when it finds nothing.
        Err(e) if e.code() == Some(2) => Ok(None),
        Err(source) => Err(MountError::Tool {
            op: "probe the device with blkid",
            source,
        }),
    }
}

/// Formats `device` with `fs` when it is empty. Returns whether it formatted;
/// refuses a device that holds something else.
pub fn format_if_empty(device: &Path, fs: FsType) -> Result<bool, MountError> {
    format_once(device, fs, None)
}

/// [`format_if_empty`] that survives being killed in the middle of `mkfs`:
/// `marker` (a file in a directory the caller owns) exists exactly while
/// `mkfs` runs, so a retry that finds it formats again instead of taking a
/// half-made file system that `blkid` may already recognise (mkfs.xfs
/// writes its superblock early) for a finished one.
pub fn format_once(device: &Path, fs: FsType, marker: Option<&Path>) -> Result<bool, MountError> {
    let interrupted = marker.is_some_and(Path::exists);
    let found = if interrupted {
        tracing::warn!(device = %device.display(), "a file system creation was cut short: making it again");
        None
    } else {
        probe(device)?
    };
    match found {
        None => {}
        Some(found) if found == fs.name() => return Ok(false),
        Some(found) => {
            return Err(MountError::WrongContent {
                device: device.to_owned(),
                found,
                wanted: fs.name(),
            })
        }
    }
    let marker_err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| MountError::Marker { op, path, source }
    };
    if let Some(m) = marker {
        std::fs::File::create(m)
            .and_then(|f| f.sync_all())
            .map_err(marker_err("create", m))?;
        sync_parent(m).map_err(marker_err("sync the directory of", m))?;
    }
    make_fs(device, fs)?;
    if let Some(m) = marker {
        std::fs::remove_file(m).map_err(marker_err("remove", m))?;
        sync_parent(m).map_err(marker_err("sync the directory of", m))?;
    }
    Ok(true)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Makes a file system of type `fs` on `device`, whatever it holds.
pub fn make_fs(device: &Path, fs: FsType) -> Result<(), MountError> {
    let dev = device.as_os_str();
    let res = match fs {
        FsType::Ext4 => cmd::run("mkfs.ext4", &["-q".as_ref(), "-F".as_ref(), dev]),
        FsType::Xfs => cmd::run("mkfs.xfs", &["-q".as_ref(), "-f".as_ref(), dev]),
    };
    res.map_err(|source| MountError::Tool {
        op: "make the file system",
        source,
    })?;
    tracing::info!(device = %device.display(), fs = fs.name(), "file system created");
    Ok(())
}

/// A mounted file system; unmounts on [`MountedFs::unmount`] or, best
/// effort, on drop.
#[derive(Debug)]
pub struct MountedFs {
    device: PathBuf,
    target: PathBuf,
    fs: FsType,
    mounted: bool,
}

impl MountedFs {
    /// Mounts `device` (holding `fs`) on `target`, created if missing.
    pub fn mount(device: &Path, target: &Path, fs: FsType, flags: MountFlags, data: &str) -> Result<Self, MountError> {
        let err = |source: std::io::Error| MountError::Mount {
            device: device.to_owned(),
            target: target.to_owned(),
            source,
        };
        std::fs::create_dir_all(target).map_err(err)?;
        let data =
            std::ffi::CString::new(data).map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        rustix::mount::mount(device, target, fs.name(), flags, data.as_c_str()).map_err(|e| err(e.into()))?;
        Ok(Self {
            device: device.to_owned(),
            target: target.to_owned(),
            fs,
            mounted: true,
        })
    }

    /// The mount point.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The device.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// Grows the file system to fill its (already grown) device, online.
    pub fn grow(&self) -> Result<(), MountError> {
        let res = match self.fs {
            FsType::Ext4 => cmd::run("resize2fs", &[self.device.as_os_str()]),
            FsType::Xfs => cmd::run("xfs_growfs", &[self.target.as_os_str()]),
        };
        res.map(|_| ()).map_err(|source| MountError::Tool {
            op: "grow the file system",
            source,
        })
    }

    /// Discards the file system's unused blocks (`fstrim`).
    pub fn trim(&self) -> Result<(), MountError> {
        cmd::run("fstrim", &[self.target.as_os_str()])
            .map(|_| ())
            .map_err(|source| MountError::Tool {
                op: "trim the file system",
                source,
            })
    }

    /// Unmounts; retries for a few seconds while the mount is busy. Idempotent.
    pub fn unmount(&mut self) -> Result<(), MountError> {
        if !self.mounted {
            return Ok(());
        }
        unmount_path(&self.target)?;
        self.mounted = false;
        Ok(())
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::error!(error = %e, "unmount file system on drop");
        }
    }
}

/// Unmounts whatever is mounted at `target`, retrying `EBUSY` for 5 s.
/// Not being a mount point counts as success.
pub fn unmount_path(target: &Path) -> Result<(), MountError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match rustix::mount::unmount(target, UnmountFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(rustix::io::Errno::BUSY) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                return Err(MountError::Unmount {
                    target: target.to_owned(),
                    source: e.into(),
                })
            }
        }
    }
}

/// Read-only consistency check of an unmounted device (`e2fsck -fn`,
/// `xfs_repair -n`).
pub fn check(device: &Path, fs: FsType) -> Result<(), MountError> {
    let (tool, res) = match fs {
        FsType::Ext4 => (
            "e2fsck",
            cmd::run("e2fsck", &["-f".as_ref(), "-n".as_ref(), device.as_os_str()]),
        ),
        FsType::Xfs => (
            "xfs_repair",
            cmd::run("xfs_repair", &["-n".as_ref(), device.as_os_str()]),
        ),
    };
    match res {
        Ok(_) => Ok(()),
        Err(CommandError::Failed { stderr, .. }) => Err(MountError::Unclean {
            tool,
            device: device.to_owned(),
            output: stderr,
        }),
        Err(source) => Err(MountError::Tool {
            op: "check the file system",
            source,
        }),
    }
}

/// Undoes the octal escapes of `/proc/*/mountinfo` and `/proc/mounts`
/// (`\040` for a space, `\134` for a backslash).
pub fn unescape_mount_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_names_round_trip() {
        for fs in [FsType::Ext4, FsType::Xfs] {
            assert_eq!(FsType::parse(fs.name()), Some(fs));
        }
        assert_eq!(FsType::parse("btrfs"), None);
    }
}
