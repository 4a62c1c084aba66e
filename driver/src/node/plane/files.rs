//! Small file-system helpers of the daemon: the run directory's layout,
//! records written atomically, tokens and clocks.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where the daemon keeps its run-time state:
///
/// ```text
/// <run-dir>/
///     dataplane.sock      the gRPC API (node.proto)
///     holder.sock         the fd holder
///     serve.lock          flock(2): one serving process at a time
///     attached.json       what is attached: volume -> FUSE dir, loop device
///     frozen/<token>.json one record per frozen file system
///     fuse/<volume>/      FUSE mount points
/// ```
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// The run directory.
    pub dir: PathBuf,
}

impl RunPaths {
    /// The layout under `dir`.
    pub fn new(dir: &Path) -> Self {
        RunPaths { dir: dir.to_owned() }
    }
    /// The API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("dataplane.sock")
    }
    /// The holder's socket.
    pub fn holder_socket(&self) -> PathBuf {
        self.dir.join("holder.sock")
    }
    /// The lock a serving process holds.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("serve.lock")
    }
    /// The record of attached volumes.
    pub fn attached(&self) -> PathBuf {
        self.dir.join("attached.json")
    }
    /// Records of frozen file systems.
    pub fn frozen(&self) -> PathBuf {
        self.dir.join("frozen")
    }
    /// FUSE mount point of `volume`.
    pub fn fuse_dir(&self, volume: &str) -> PathBuf {
        self.dir.join("fuse").join(volume)
    }
}

/// Writes `value` as JSON to `path` so that a crash leaves the old record or
/// the new one, never a mix: a temporary file, fsynced, renamed over, and
/// the directory fsynced.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&bytes)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Reads a JSON record; `None` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes a file and makes the removal durable; a missing file is fine.
pub fn remove_durably(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsyncs a directory (its entries).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A fresh 128-bit token in hex, from the kernel's random source.
pub fn new_token() -> io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_replaced_whole() {
        let dir = tempfile::Builder::new()
            .prefix("floe-files")
            .tempdir()
            .expect("tempdir");
        let p = dir.path().join("r.json");
        assert_eq!(read_json::<Vec<u32>>(&p).expect("read"), None);
        write_json(&p, &vec![1u32, 2]).expect("write");
        write_json(&p, &vec![3u32]).expect("write");
        assert_eq!(read_json::<Vec<u32>>(&p).expect("read"), Some(vec![3]));
        assert!(!dir.path().join(".r.json.tmp").exists());
        remove_durably(&p).expect("remove");
        remove_durably(&p).expect("remove twice");
    }

    #[test]
    fn tokens_are_fresh_hex() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert!(super::super::types::is_token(&a));
        assert_ne!(a, b);
    }
}
