//! Mount-table helpers of the node service: what is mounted where (from
//! `/proc/self/mountinfo`), file systems and bind mounts, statvfs, and the
//! teardown of attachments a crashed predecessor left behind.

use std::path::Path;

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use super::error::{Error, Result};
use crate::dataplane::mount::{unmount_path, FsType};
use crate::dataplane::mounttable;
pub use crate::dataplane::mounttable::{mount_at, mounts_of, node_binds_of, MountEntry};

/// The mount table of this process.
pub fn mount_table() -> Result<Vec<MountEntry>> {
    mounttable::table().map_err(Error::io("read", "/proc/self/mountinfo"))
}

/// `(major, minor)` of a block device node.
pub fn device_number(device: &Path) -> Result<(u32, u32)> {
    mounttable::device_number(device).map_err(Error::io("stat", device))
}

/// Mounts `device` (holding `fs`) on `target`.
pub fn mount_fs(device: &Path, target: &Path, fs: FsType, flags: MountFlags, data: &str) -> Result<()> {
    let data = std::ffi::CString::new(data).map_err(|_| Error::Invalid {
        field: "mount_flags",
        value: data.to_owned(),
        expected: "options without NUL".into(),
    })?;
    rustix::mount::mount(device, target, fs.name(), flags, data.as_c_str())
        .map_err(|e| Error::io("mount the volume's file system on", target)(e.into()))?;
    // A private mount, so a bind of it does not propagate back and forth.
    let _ = rustix::mount::mount_change(target, MountPropagationFlags::PRIVATE);
    Ok(())
}

/// Bind-mounts `source` onto `target`, read-only when asked (a second
/// remount, as the kernel ignores `MS_RDONLY` on the bind itself).
pub fn bind(source: &Path, target: &Path, read_only: bool, flags: MountFlags) -> Result<()> {
    rustix::mount::mount_bind(source, target).map_err(|e| Error::io("bind-mount the volume on", target)(e.into()))?;
    let extra = flags & (MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::NOATIME);
    if read_only || !extra.is_empty() {
        let mut f = MountFlags::BIND | extra;
        if read_only {
            f |= MountFlags::RDONLY;
        }
        if let Err(e) = rustix::mount::mount_remount(target, f, c"") {
            let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
            return Err(Error::io("remount read-only", target)(e.into()));
        }
    }
    Ok(())
}

/// Unmounts whatever is at `target` (every layer), retrying while busy.
/// Not being a mount point is success.
pub fn unmount_all(target: &Path) -> Result<()> {
    for _ in 0..16 {
        let table = mount_table()?;
        if mount_at(&table, target).is_none() {
            return Ok(());
        }
        unmount_path(target).map_err(|source| Error::Mount { op: "unmount", source })?;
    }
    Err(Error::FailedPrecondition(format!(
        "{} still has mounts stacked on it after 16 unmounts",
        target.display()
    )))
}

/// Usage of the file system at `path`: (total, available, used) bytes and
/// (total, free, used) inodes.
pub fn usage(path: &Path) -> Result<([u64; 3], [u64; 3])> {
    let s = rustix::fs::statvfs(path).map_err(|e| Error::io("statvfs", path)(e.into()))?;
    let frsize = if s.f_frsize > 0 { s.f_frsize } else { s.f_bsize };
    let bytes = [
        s.f_blocks * frsize,
        s.f_bavail * frsize,
        s.f_blocks.saturating_sub(s.f_bfree) * frsize,
    ];
    let inodes = [s.f_files, s.f_ffree, s.f_files.saturating_sub(s.f_ffree)];
    Ok((bytes, inodes))
}

/// Grows the file system mounted at `mount_point` from `device` to fill it.
pub fn grow_fs(fs_type: &str, device: &Path, mount_point: &Path) -> Result<()> {
    let (tool, arg) = match fs_type {
        "ext4" => ("resize2fs", device),
        "xfs" => ("xfs_growfs", mount_point),
        other => {
            return Err(Error::FailedPrecondition(format!(
                "the file system at {} is {other}, which floe does not grow",
                mount_point.display()
            )))
        }
    };
    use crate::dataplane::cmd::{self, CommandError};
    let out = cmd::run(tool, &[arg]);
    if let Err(CommandError::Failed { stderr, .. }) = &out {
        if fs_type == "ext4" && stderr.contains("Permission denied") {
            return Err(Error::FailedPrecondition(format!(
                "the device of {} grew, but growing a mounted ext4 needs CAP_SYS_RESOURCE, which floe-csi lacks: \
                 grant it, or unstage and stage the volume to grow the file system offline",
                mount_point.display()
            )));
        }
    }
    out.map(|_| ())
        .map_err(|e| Error::io("grow the file system on", arg)(std::io::Error::other(e)))
}
