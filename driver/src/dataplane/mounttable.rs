//! The mount table (`/proc/self/mountinfo`) and the questions floe asks of
//! it: what is mounted at a path, where the file system on a device is
//! mounted (by device number, so a mount made through another node of the
//! same device counts), and where a device node itself is bind-mounted.
//! Shared by the data-plane daemon and the CSI node service.

use std::io;
use std::path::{Path, PathBuf};

use super::mount::unescape_mount_field as unescape;

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
pub fn table() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// `(major, minor)` of a block device node.
pub fn device_number(device: &Path) -> io::Result<(u32, u32)> {
    let st = rustix::fs::stat(device)?;
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

/// Whether `path` (resolved) is a mount point.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let path = std::fs::canonicalize(path)?;
    Ok(table()?.iter().any(|m| m.mount_point == path))
}

/// Where the file system on block device `device` is mounted (its own
/// mount and its binds).
pub fn mount_points_of(device: &Path) -> io::Result<Vec<PathBuf>> {
    let dev = device_number(device)?;
    Ok(mounts_of(&table()?, dev).into_iter().map(|m| m.mount_point).collect())
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
