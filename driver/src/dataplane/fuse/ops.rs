//! What each FUSE request does to the one-file file system: a root directory
//! holding one regular file, [`FILE_NAME`], whose bytes are the backend's.
//!
//! Pure over byte buffers (no `/dev/fuse` here), so it is unit-tested without
//! the kernel.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::io::Errno;

use super::abi::{self, falloc, fattr, fopen, opcode, Attr, InHeader, Put};
use crate::dataplane::backend::BlockBackend;

/// Name of the volume file in the FUSE mount's root.
pub const FILE_NAME: &str = "volume";
/// Node id of the volume file.
pub const FILE_ID: u64 = 2;
/// How long the kernel may cache names and attributes. The size only changes
/// through our own SETATTR, whose reply refreshes the kernel's copy.
const TTL_SECS: u64 = 60;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const DT_DIR: u32 = 4;
const DT_REG: u32 = 8;

/// What to send back for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing (FORGET, INTERRUPT).
    NoReply,
    /// The payload in the output buffer, with this errno (0 for success;
    /// the payload is ignored otherwise).
    Reply(i32),
}

impl Outcome {
    fn err(e: Errno) -> Self {
        Outcome::Reply(e.raw_os_error())
    }
}

/// The file system a connection serves.
pub struct OneFile {
    backend: Arc<dyn BlockBackend>,
    mount_time: u64,
}

impl OneFile {
    /// A file system whose one file is `backend`.
    pub fn new(backend: Arc<dyn BlockBackend>) -> Self {
        let mount_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self { backend, mount_time }
    }

    /// The backend behind the file.
    pub fn backend(&self) -> &Arc<dyn BlockBackend> {
        &self.backend
    }

    fn attr(&self, ino: u64) -> Option<Attr> {
        match ino {
            abi::ROOT_ID => Some(Attr {
                ino,
                size: 0,
                blocks: 0,
                time: self.mount_time,
                mode: S_IFDIR | 0o755,
                nlink: 2,
                blksize: 4096,
            }),
            FILE_ID => {
                let size = self.backend.size();
                Some(Attr {
                    ino,
                    size,
                    blocks: size.div_ceil(512),
                    time: self.mount_time,
                    mode: S_IFREG | 0o600,
                    nlink: 1,
                    blksize: 4096,
                })
            }
            _ => None,
        }
    }

    /// Handles one request (not INIT, which the session answers): appends the
    /// reply payload to `out` and says what to send.
    pub fn handle(&self, h: &InHeader, body: &[u8], out: &mut Vec<u8>) -> Outcome {
        match self.dispatch(h, body, out) {
            Ok(outcome) => outcome,
            Err(e) => {
                out.clear();
                Outcome::Reply(e)
            }
        }
    }

    fn dispatch(&self, h: &InHeader, body: &[u8], out: &mut Vec<u8>) -> Result<Outcome, i32> {
        let einval = |e: abi::Truncated| {
            tracing::warn!(opcode = h.opcode, error = %e, "malformed FUSE request");
            Errno::INVAL.raw_os_error()
        };
        let be = |e: crate::dataplane::backend::BackendError| {
            tracing::warn!(opcode = h.opcode, error = %e, "backend failed a FUSE request");
            e.errno()
        };
        let ok = Ok(Outcome::Reply(0));
        match h.opcode {
            opcode::LOOKUP => {
                let name = body.split(|&b| b == 0).next().unwrap_or_default();
                if h.nodeid != abi::ROOT_ID || name != FILE_NAME.as_bytes() {
                    return Ok(Outcome::err(Errno::NOENT));
                }
                let attr = self.attr(FILE_ID).expect("the file exists");
                abi::entry_out(out, TTL_SECS, &attr);
                ok
            }
            opcode::GETATTR => {
                let attr = self.attr(h.nodeid).ok_or(Errno::NOENT.raw_os_error())?;
                abi::attr_out(out, TTL_SECS, &attr);
                ok
            }
            opcode::SETATTR => {
                let s = abi::SetattrIn::parse(body).map_err(einval)?;
                if s.valid & fattr::SIZE != 0 {
                    if h.nodeid != FILE_ID {
                        return Ok(Outcome::err(Errno::ISDIR));
                    }
                    // The volume never shrinks through its file: an O_TRUNC
                    // open would otherwise empty it.
                    if s.size < self.backend.size() {
                        return Ok(Outcome::err(Errno::PERM));
                    }
                    if s.size > self.backend.size() {
                        self.backend.set_size(s.size).map_err(be)?;
                    }
                }
                // Mode, owner and times are fixed; report them unchanged.
                let attr = self.attr(h.nodeid).ok_or(Errno::NOENT.raw_os_error())?;
                abi::attr_out(out, TTL_SECS, &attr);
                ok
            }
            opcode::OPEN => {
                if h.nodeid != FILE_ID {
                    return Ok(Outcome::err(Errno::ISDIR));
                }
                // No page cache in the FUSE layer: the loop device above does
                // direct I/O, and any other reader must see the same bytes.
                abi::open_out(out, 0, fopen::DIRECT_IO | fopen::PARALLEL_DIRECT_WRITES);
                ok
            }
            opcode::READ => {
                let r = abi::ReadIn::parse(body).map_err(einval)?;
                let size = self.backend.size();
                let n = size.saturating_sub(r.offset).min(u64::from(r.size)) as usize;
                out.resize(n, 0);
                if n > 0 {
                    self.backend.read_at(r.offset, out).map_err(be)?;
                }
                ok
            }
            opcode::WRITE => {
                let w = abi::WriteIn::parse(body).map_err(einval)?;
                self.backend.write_at(w.offset, w.data).map_err(be)?;
                out.put_u32(w.data.len() as u32);
                out.put_u32(0);
                ok
            }
            opcode::FALLOCATE => {
                let f = abi::FallocateIn::parse(body).map_err(einval)?;
                let size = self.backend.size();
                crate::dataplane::backend::check_range(f.offset, f.length, size).map_err(be)?;
                match f.mode & !falloc::KEEP_SIZE {
                    // Preallocation inside the volume: every byte already exists.
                    0 => {}
                    falloc::PUNCH_HOLE if f.mode & falloc::KEEP_SIZE != 0 => {
                        self.backend.zero_range(f.offset, f.length).map_err(be)?;
                    }
                    falloc::ZERO_RANGE => self.backend.zero_range(f.offset, f.length).map_err(be)?,
                    // Never ENOSYS: that would disable fallocate for the connection.
                    _ => return Ok(Outcome::err(Errno::OPNOTSUPP)),
                }
                ok
            }
            opcode::FSYNC | opcode::FSYNCDIR | opcode::SYNCFS => {
                self.backend.flush().map_err(be)?;
                ok
            }
            opcode::STATFS => {
                abi::statfs_out(out, self.backend.size() / 4096, 4096);
                ok
            }
            opcode::OPENDIR => {
                if h.nodeid != abi::ROOT_ID {
                    return Ok(Outcome::err(Errno::NOTDIR));
                }
                abi::open_out(out, 0, 0);
                ok
            }
            opcode::READDIR => {
                let r = abi::ReadIn::parse(body).map_err(einval)?;
                let entries: [(u64, u32, &[u8]); 3] = [
                    (abi::ROOT_ID, DT_DIR, b"."),
                    (abi::ROOT_ID, DT_DIR, b".."),
                    (FILE_ID, DT_REG, FILE_NAME.as_bytes()),
                ];
                for (i, (ino, kind, name)) in entries.iter().enumerate().skip(r.offset as usize) {
                    let before = out.len();
                    abi::dirent(out, *ino, i as u64 + 1, *kind, name);
                    if out.len() > r.size as usize {
                        out.truncate(before);
                        break;
                    }
                }
                ok
            }
            opcode::RELEASE | opcode::RELEASEDIR | opcode::FLUSH | opcode::ACCESS | opcode::DESTROY => ok,
            opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT => Ok(Outcome::NoReply),
            opcode::CREATE
            | opcode::MKNOD
            | opcode::MKDIR
            | opcode::SYMLINK
            | opcode::LINK
            | opcode::UNLINK
            | opcode::RMDIR
            | opcode::RENAME
            | opcode::RENAME2
            | opcode::TMPFILE
            | opcode::SETXATTR
            | opcode::REMOVEXATTR => Ok(Outcome::err(Errno::PERM)),
            // ENOSYS turns these off for the connection, which is what we want
            // (GETXATTR would otherwise come before every write).
            opcode::GETXATTR | opcode::LISTXATTR | opcode::READLINK => Ok(Outcome::err(Errno::NOSYS)),
            opcode::INIT => Ok(Outcome::err(Errno::PROTO)),
            _ => Ok(Outcome::err(Errno::NOSYS)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::backend::FileBackend;

    fn fs() -> (tempfile::TempDir, OneFile) {
        let dir = tempfile::Builder::new().prefix("floe-ops").tempdir().expect("tempdir");
        let backend = FileBackend::create(&dir.path().join("vol"), 1 << 20).expect("backend");
        (dir, OneFile::new(Arc::new(backend)))
    }

    fn header(opcode: u32, nodeid: u64) -> InHeader {
        InHeader {
            len: 0,
            opcode,
            unique: 1,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 0,
            total_extlen: 0,
        }
    }

    #[test]
    fn lookup_finds_only_the_volume_file() {
        let (_d, fs) = fs();
        let mut out = Vec::new();
        assert_eq!(
            fs.handle(&header(opcode::LOOKUP, 1), b"volume\0", &mut out),
            Outcome::Reply(0)
        );
        assert_eq!(out.len(), abi::ENTRY_OUT_LEN);
        assert_eq!(u64::from_ne_bytes(out[..8].try_into().expect("8")), FILE_ID);
        out.clear();
        let r = fs.handle(&header(opcode::LOOKUP, 1), b"other\0", &mut out);
        assert_eq!(r, Outcome::Reply(Errno::NOENT.raw_os_error()));
    }

    #[test]
    fn write_then_read_round_trips_and_read_stops_at_the_end() {
        let (_d, fs) = fs();
        let mut body = Vec::new();
        body.put_u64(0);
        body.put_u64(4096);
        body.put_u32(4);
        body.extend_from_slice(&[0u8; 20]);
        body.extend_from_slice(b"floe");
        let mut out = Vec::new();
        assert_eq!(
            fs.handle(&header(opcode::WRITE, FILE_ID), &body, &mut out),
            Outcome::Reply(0)
        );
        assert_eq!(out[..4], 4u32.to_ne_bytes());
        let mut rd = Vec::new();
        rd.put_u64(0);
        rd.put_u64(4094);
        rd.put_u32(8);
        rd.extend_from_slice(&[0u8; 20]);
        out.clear();
        assert_eq!(
            fs.handle(&header(opcode::READ, FILE_ID), &rd, &mut out),
            Outcome::Reply(0)
        );
        assert_eq!(out, b"\0\0floe\0\0");
        rd[8..16].copy_from_slice(&((1u64 << 20) - 2).to_ne_bytes());
        out.clear();
        assert_eq!(
            fs.handle(&header(opcode::READ, FILE_ID), &rd, &mut out),
            Outcome::Reply(0)
        );
        assert_eq!(out.len(), 2, "a read past the end is short");
    }

    #[test]
    fn fallocate_never_answers_enosys_and_refuses_shrink() {
        let (_d, fs) = fs();
        let falloc = |mode: u32| {
            let mut b = Vec::new();
            b.put_u64(0);
            b.put_u64(0);
            b.put_u64(4096);
            b.put_u32(mode);
            b.put_u32(0);
            b
        };
        let mut out = Vec::new();
        for mode in [
            0,
            falloc::KEEP_SIZE,
            falloc::PUNCH_HOLE | falloc::KEEP_SIZE,
            falloc::ZERO_RANGE,
        ] {
            assert_eq!(
                fs.handle(&header(opcode::FALLOCATE, FILE_ID), &falloc(mode), &mut out),
                Outcome::Reply(0)
            );
        }
        let r = fs.handle(&header(opcode::FALLOCATE, FILE_ID), &falloc(0x20), &mut out);
        assert_eq!(r, Outcome::Reply(Errno::OPNOTSUPP.raw_os_error()));
        let mut s = Vec::new();
        s.put_u32(fattr::SIZE);
        s.put_u32(0);
        s.put_u64(0);
        s.put_u64(0);
        s.resize(88, 0);
        let r = fs.handle(&header(opcode::SETATTR, FILE_ID), &s, &mut out);
        assert_eq!(r, Outcome::Reply(Errno::PERM.raw_os_error()));
    }

    #[test]
    fn readdir_lists_three_entries_and_resumes_at_offset() {
        let (_d, fs) = fs();
        let mut rd = Vec::new();
        rd.put_u64(0);
        rd.put_u64(0);
        rd.put_u32(4096);
        rd.extend_from_slice(&[0u8; 20]);
        let mut out = Vec::new();
        fs.handle(&header(opcode::READDIR, 1), &rd, &mut out);
        assert_eq!(out.len(), 3 * 32, "each entry pads to 32 bytes");
        rd[8..16].copy_from_slice(&3u64.to_ne_bytes());
        out.clear();
        fs.handle(&header(opcode::READDIR, 1), &rd, &mut out);
        assert!(out.is_empty());
    }
}
