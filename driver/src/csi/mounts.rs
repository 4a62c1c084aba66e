//! Mount-table helpers of the node service: what is mounted where (from
//! `/proc/self/mountinfo`), file systems and bind mounts, statvfs, and the
//! teardown of attachments a crashed predecessor left behind.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use super::error::{Error, Result};
use crate::dataplane::mount::unescape_mount_field as unescape;
use crate::dataplane::mount::{unmount_path, FsType};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount id.
    pub id: u64,
    /// Device major number of the file system.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Root of the mount within its file system (`/loop3` for a bind of a
    /// devtmpfs node).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `ro`, `noatime`, ...).
    pub options: Vec<String>,
    /// File-system type.
    pub fs_type: String,
    /// Mount source.
    pub source: String,
}

impl MountEntry {
    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Parses the text of a mountinfo file; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if f.len() < 6 || r.len() < 2 {
                return None;
            }
            let (major, minor) = f[2].split_once(':')?;
            Some(MountEntry {
                id: f[0].parse().ok()?,
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                root: unescape(f[3]),
                mount_point: PathBuf::from(unescape(f[4])),
                options: f[5].split(',').map(str::to_owned).collect(),
                fs_type: r[0].to_owned(),
                source: unescape(r[1]),
            })
        })
        .collect()
}

/// The mount table of this process.
pub fn mount_table() -> Result<Vec<MountEntry>> {
    let path = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(path).map_err(Error::io("read", path))?;
    Ok(parse_mountinfo(&text))
}

/// `(major, minor)` of a block device node.
pub fn device_number(device: &Path) -> Result<(u32, u32)> {
    let st = rustix::fs::stat(device).map_err(|e| Error::io("stat", device)(e.into()))?;
    Ok((rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)))
}

/// What is mounted at `path` (the top of the stack), if anything.
pub fn mount_at(table: &[MountEntry], path: &Path) -> Option<MountEntry> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    table.iter().rev().find(|m| m.mount_point == path).cloned()
}

/// Mounts of the file system on `device` (its own and its binds).
pub fn mounts_of(table: &[MountEntry], dev: (u32, u32)) -> Vec<MountEntry> {
    table.iter().filter(|m| (m.major, m.minor) == dev).cloned().collect()
}

/// Bind mounts of the device node itself (block volumes published onto a
/// file): devtmpfs mounts whose root is the node's name.
pub fn node_binds_of(table: &[MountEntry], device: &Path) -> Vec<MountEntry> {
    let Some(name) = device.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let root = format!("/{name}");
    table
        .iter()
        .filter(|m| m.fs_type == "devtmpfs" && m.root == root)
        .cloned()
        .collect()
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

/// Whether `path` is a block device node.
pub fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
98 22 7:3 / /tmp/floe\\040x/staging rw,noatime shared:50 - ext4 /dev/loop3 rw
99 22 0:5 /loop3 /tmp/floe\\040x/target ro,nosuid master:2 - devtmpfs udev rw,size=10m
100 22 7:3 / /tmp/floe\\040x/pub rw - ext4 /dev/loop3 rw
";

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_optional_fields() {
        let t = parse_mountinfo(SAMPLE);
        assert_eq!(t.len(), 4);
        assert_eq!(t[1].mount_point, Path::new("/tmp/floe x/staging"));
        assert_eq!((t[1].major, t[1].minor), (7, 3));
        assert_eq!(t[1].fs_type, "ext4");
        assert!(!t[1].read_only());
        assert!(t[2].read_only());
        assert_eq!(mounts_of(&t, (7, 3)).len(), 2);
        assert_eq!(node_binds_of(&t, Path::new("/dev/loop3")).len(), 1);
        assert!(node_binds_of(&t, Path::new("/dev/loop30")).is_empty());
        assert_eq!(mount_at(&t, Path::new("/tmp/floe x/pub")).map(|m| m.id), Some(100));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse_mountinfo("garbage\n1 2 x / / rw - ext4 a b\n").is_empty());
    }
}
