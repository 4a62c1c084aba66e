//! The FUSE kernel ABI, as far as a one-file file system needs it.
//!
//! Numbers and layouts follow `include/uapi/linux/fuse.h` (protocol 7.x). The
//! structs are parsed from and written to byte buffers field by field, in
//! native byte order, so no `unsafe` transmutes are needed; each layout's size
//! is checked in the tests below against the header.

/// Protocol major version we speak.
pub const KERNEL_VERSION: u32 = 7;
/// Highest protocol minor version we speak (7.40 added `FUSE_NOTIFY_RESEND`).
pub const KERNEL_MINOR_VERSION: u32 = 40;
/// Node id of the root directory.
pub const ROOT_ID: u64 = 1;
/// The kernel sets this bit in `unique` of a request it resends after
/// `FUSE_NOTIFY_RESEND`.
pub const UNIQUE_RESEND: u64 = 1 << 63;
/// Smallest read buffer the kernel accepts on `/dev/fuse`.
pub const MIN_READ_BUFFER: usize = 8192;

/// Request opcodes (`enum fuse_opcode`).
#[allow(missing_docs)] // the kernel's names
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
}

/// Notification codes (`enum fuse_notify_code`), sent in `error` of an
/// out-header whose `unique` is 0.
#[allow(missing_docs)] // the kernel's names
pub mod notify {
    pub const INVAL_INODE: i32 = 2;
    pub const RESEND: i32 = 7;
}

/// `INIT` flags (`flags` holds bits 0..31, `flags2` bits 32..63).
#[allow(missing_docs)] // the kernel's names
pub mod init_flags {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const HAS_RESEND: u64 = 1 << 39;
}

/// `fuse_open_out.open_flags`.
#[allow(missing_docs)] // the kernel's names
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
}

/// `fuse_setattr_in.valid` bits.
#[allow(missing_docs)] // the kernel's names
pub mod fattr {
    pub const SIZE: u32 = 1 << 3;
}

/// `fallocate(2)` modes the kernel forwards.
#[allow(missing_docs)] // the kernel's names
pub mod falloc {
    pub const KEEP_SIZE: u32 = 0x01;
    pub const PUNCH_HOLE: u32 = 0x02;
    pub const ZERO_RANGE: u32 = 0x10;
}

/// Size of `struct fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// Size of `struct fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;
/// Size of `struct fuse_write_in`.
pub const WRITE_IN_LEN: usize = 40;
/// Size of `struct fuse_init_out` (protocol ≥ 7.23).
pub const INIT_OUT_LEN: usize = 64;
/// Size of `struct fuse_attr`.
pub const ATTR_LEN: usize = 88;
/// Size of `struct fuse_attr_out`.
pub const ATTR_OUT_LEN: usize = 16 + ATTR_LEN;
/// Size of `struct fuse_entry_out`.
pub const ENTRY_OUT_LEN: usize = 40 + ATTR_LEN;
/// Size of `struct fuse_open_out`.
pub const OPEN_OUT_LEN: usize = 16;
/// Size of `struct fuse_statfs_out`.
pub const STATFS_OUT_LEN: usize = 80;

/// A request too short for what its opcode says it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("truncated FUSE message: need {need} bytes at offset {at}, have {have}")]
pub struct Truncated {
    /// Where the missing field starts.
    pub at: usize,
    /// How many bytes the field needs.
    pub need: usize,
    /// How many bytes the message has.
    pub have: usize,
}

/// Reads native-endian fields off a byte slice.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(Truncated {
            at: self.at,
            need: n,
            have: self.buf.len(),
        })?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// Everything not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.at..]
    }

    /// Next `u16`.
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_ne_bytes(self.bytes(2)?.try_into().expect("2 bytes")))
    }

    /// Next `u32`.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_ne_bytes(self.bytes(4)?.try_into().expect("4 bytes")))
    }

    /// Next `u64`.
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_ne_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }
}

/// Appends native-endian fields to a buffer.
pub trait Put {
    /// Appends a `u16`.
    fn put_u16(&mut self, v: u16);
    /// Appends a `u32`.
    fn put_u32(&mut self, v: u32);
    /// Appends a `u64`.
    fn put_u64(&mut self, v: u64);
}

impl Put for Vec<u8> {
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_ne_bytes());
    }
}

/// `struct fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    /// Length of the whole request, header included.
    pub len: u32,
    /// What the kernel asks.
    pub opcode: u32,
    /// Request id, echoed in the reply.
    pub unique: u64,
    /// Inode the request is about.
    pub nodeid: u64,
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's pid.
    pub pid: u32,
    /// Length of extensions after the request's own arguments, in 8-byte units.
    pub total_extlen: u16,
}

impl InHeader {
    /// Parses the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, Truncated> {
        let mut c = Cursor::new(buf);
        let h = InHeader {
            len: c.u32()?,
            opcode: c.u32()?,
            unique: c.u64()?,
            nodeid: c.u64()?,
            uid: c.u32()?,
            gid: c.u32()?,
            pid: c.u32()?,
            total_extlen: c.u16()?,
        };
        c.u16()?;
        Ok(h)
    }

    /// Appends the header (for tests and tools that build requests).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.put_u32(self.len);
        out.put_u32(self.opcode);
        out.put_u64(self.unique);
        out.put_u64(self.nodeid);
        out.put_u32(self.uid);
        out.put_u32(self.gid);
        out.put_u32(self.pid);
        out.put_u16(self.total_extlen);
        out.put_u16(0);
    }
}

/// `struct fuse_out_header`, as bytes.
pub fn out_header(len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// `struct fuse_init_in`: what the kernel offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitIn {
    /// Kernel's protocol major version.
    pub major: u32,
    /// Kernel's protocol minor version.
    pub minor: u32,
    /// Kernel's read-ahead limit.
    pub max_readahead: u32,
    /// Offered flags, `flags2` already shifted into bits 32..63.
    pub flags: u64,
}

impl InitIn {
    /// Parses an `INIT` request body (shorter, older layouts too).
    pub fn parse(body: &[u8]) -> Result<Self, Truncated> {
        let mut c = Cursor::new(body);
        let major = c.u32()?;
        let minor = c.u32()?;
        let max_readahead = c.u32()?;
        let mut flags = u64::from(c.u32()?);
        if flags & init_flags::INIT_EXT != 0 {
            flags |= u64::from(c.u32()?) << 32;
        }
        Ok(InitIn {
            major,
            minor,
            max_readahead,
            flags,
        })
    }
}

/// The parameters a connection was initialised with: what a successor
/// process needs to serve the same connection without a new `INIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitParams {
    /// Negotiated protocol minor version (major is 7).
    pub minor: u32,
    /// Flags the kernel offered.
    pub kernel_flags: u64,
    /// Flags we enabled (a subset of `kernel_flags`).
    pub flags: u64,
    /// Read-ahead limit we answered.
    pub max_readahead: u32,
    /// Largest WRITE payload the kernel sends.
    pub max_write: u32,
    /// Largest request in pages.
    pub max_pages: u16,
    /// Background (async) requests in flight before the kernel queues.
    pub max_background: u16,
    /// Background requests in flight before the kernel reports congestion.
    pub congestion_threshold: u16,
}

/// Length of [`InitParams::to_bytes`].
pub const INIT_PARAMS_LEN: usize = 40;

impl InitParams {
    /// Fixed-size encoding, for handing the connection over.
    pub fn to_bytes(&self) -> [u8; INIT_PARAMS_LEN] {
        let mut v = Vec::with_capacity(INIT_PARAMS_LEN);
        v.put_u32(self.minor);
        v.put_u64(self.kernel_flags);
        v.put_u64(self.flags);
        v.put_u32(self.max_readahead);
        v.put_u32(self.max_write);
        v.put_u16(self.max_pages);
        v.put_u16(self.max_background);
        v.put_u16(self.congestion_threshold);
        v.put_u16(0);
        v.put_u32(0);
        v.try_into().expect("INIT_PARAMS_LEN bytes")
    }

    /// Parses [`InitParams::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, Truncated> {
        let mut c = Cursor::new(b);
        Ok(InitParams {
            minor: c.u32()?,
            kernel_flags: c.u64()?,
            flags: c.u64()?,
            max_readahead: c.u32()?,
            max_write: c.u32()?,
            max_pages: c.u16()?,
            max_background: c.u16()?,
            congestion_threshold: c.u16()?,
        })
    }

    /// The `INIT` reply body (`struct fuse_init_out`).
    pub fn init_out(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(INIT_OUT_LEN);
        v.put_u32(KERNEL_VERSION);
        v.put_u32(self.minor);
        v.put_u32(self.max_readahead);
        v.put_u32(self.flags as u32);
        v.put_u16(self.max_background);
        v.put_u16(self.congestion_threshold);
        v.put_u32(self.max_write);
        v.put_u32(1); // time_gran: nanoseconds
        v.put_u16(self.max_pages);
        v.put_u16(0); // map_alignment
        v.put_u32((self.flags >> 32) as u32);
        v.resize(INIT_OUT_LEN, 0); // max_stack_depth, request_timeout, unused
        v
    }
}

/// `struct fuse_attr`, the fields we set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Seconds since the epoch, for atime, mtime and ctime.
    pub time: u64,
    /// File type and permission bits.
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

impl Attr {
    /// Appends `struct fuse_attr`.
    pub fn write(&self, v: &mut Vec<u8>) {
        v.put_u64(self.ino);
        v.put_u64(self.size);
        v.put_u64(self.blocks);
        v.put_u64(self.time); // atime
        v.put_u64(self.time); // mtime
        v.put_u64(self.time); // ctime
        v.put_u32(0); // atimensec
        v.put_u32(0); // mtimensec
        v.put_u32(0); // ctimensec
        v.put_u32(self.mode);
        v.put_u32(self.nlink);
        v.put_u32(0); // uid: root
        v.put_u32(0); // gid: root
        v.put_u32(0); // rdev
        v.put_u32(self.blksize);
        v.put_u32(0); // flags
    }
}

/// Appends `struct fuse_attr_out`.
pub fn attr_out(v: &mut Vec<u8>, valid_secs: u64, attr: &Attr) {
    v.put_u64(valid_secs);
    v.put_u32(0);
    v.put_u32(0);
    attr.write(v);
}

/// Appends `struct fuse_entry_out`.
pub fn entry_out(v: &mut Vec<u8>, valid_secs: u64, attr: &Attr) {
    v.put_u64(attr.ino); // nodeid
    v.put_u64(1); // generation
    v.put_u64(valid_secs); // entry_valid
    v.put_u64(valid_secs); // attr_valid
    v.put_u32(0);
    v.put_u32(0);
    attr.write(v);
}

/// Appends `struct fuse_open_out`.
pub fn open_out(v: &mut Vec<u8>, fh: u64, open_flags: u32) {
    v.put_u64(fh);
    v.put_u32(open_flags);
    v.put_u32(0); // backing_id
}

/// Appends one `struct fuse_dirent` (8-byte aligned).
pub fn dirent(v: &mut Vec<u8>, ino: u64, off: u64, kind: u32, name: &[u8]) {
    v.put_u64(ino);
    v.put_u64(off);
    v.put_u32(name.len() as u32);
    v.put_u32(kind);
    v.extend_from_slice(name);
    let pad = (8 - (24 + name.len()) % 8) % 8;
    v.extend(std::iter::repeat_n(0u8, pad));
}

/// `struct fuse_read_in`, the fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadIn {
    /// File handle.
    pub fh: u64,
    /// Offset in the file.
    pub offset: u64,
    /// Bytes wanted.
    pub size: u32,
}

impl ReadIn {
    /// Parses a READ or READDIR body.
    pub fn parse(body: &[u8]) -> Result<Self, Truncated> {
        let mut c = Cursor::new(body);
        Ok(ReadIn {
            fh: c.u64()?,
            offset: c.u64()?,
            size: c.u32()?,
        })
    }
}

/// `struct fuse_write_in` and the data after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteIn<'a> {
    /// Offset in the file.
    pub offset: u64,
    /// The bytes to write.
    pub data: &'a [u8],
}

impl<'a> WriteIn<'a> {
    /// Parses a WRITE body.
    pub fn parse(body: &'a [u8]) -> Result<Self, Truncated> {
        let mut c = Cursor::new(body);
        let _fh = c.u64()?;
        let offset = c.u64()?;
        let size = c.u32()? as usize;
        c.bytes(WRITE_IN_LEN - 20)?;
        Ok(WriteIn {
            offset,
            data: c.bytes(size)?,
        })
    }
}

/// `struct fuse_fallocate_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallocateIn {
    /// Offset in the file.
    pub offset: u64,
    /// Length of the range.
    pub length: u64,
    /// `fallocate(2)` mode.
    pub mode: u32,
}

impl FallocateIn {
    /// Parses a FALLOCATE body.
    pub fn parse(body: &[u8]) -> Result<Self, Truncated> {
        let mut c = Cursor::new(body);
        let _fh = c.u64()?;
        Ok(FallocateIn {
            offset: c.u64()?,
            length: c.u64()?,
            mode: c.u32()?,
        })
    }
}

/// `struct fuse_setattr_in`, the fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetattrIn {
    /// Which fields are set (`FATTR_*`).
    pub valid: u32,
    /// New size, when `valid` has `FATTR_SIZE`.
    pub size: u64,
}

impl SetattrIn {
    /// Parses a SETATTR body.
    pub fn parse(body: &[u8]) -> Result<Self, Truncated> {
        let mut c = Cursor::new(body);
        let valid = c.u32()?;
        let _padding = c.u32()?;
        let _fh = c.u64()?;
        Ok(SetattrIn { valid, size: c.u64()? })
    }
}

/// Appends `struct fuse_kstatfs`.
pub fn statfs_out(v: &mut Vec<u8>, blocks: u64, bsize: u32) {
    v.put_u64(blocks); // blocks
    v.put_u64(0); // bfree
    v.put_u64(0); // bavail
    v.put_u64(2); // files
    v.put_u64(0); // ffree
    v.put_u32(bsize);
    v.put_u32(255); // namelen
    v.put_u32(bsize); // frsize
    v.put_u32(0); // padding
    v.extend_from_slice(&[0u8; 24]); // spare
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_the_kernel_sizes() {
        let attr = Attr::default();
        let mut v = Vec::new();
        attr.write(&mut v);
        assert_eq!(v.len(), ATTR_LEN);
        v.clear();
        attr_out(&mut v, 1, &attr);
        assert_eq!(v.len(), ATTR_OUT_LEN);
        v.clear();
        entry_out(&mut v, 1, &attr);
        assert_eq!(v.len(), ENTRY_OUT_LEN);
        v.clear();
        open_out(&mut v, 0, 0);
        assert_eq!(v.len(), OPEN_OUT_LEN);
        v.clear();
        statfs_out(&mut v, 1, 4096);
        assert_eq!(v.len(), STATFS_OUT_LEN);
        let p = InitParams {
            minor: 40,
            kernel_flags: 0,
            flags: 0,
            max_readahead: 0,
            max_write: 0,
            max_pages: 0,
            max_background: 0,
            congestion_threshold: 0,
        };
        assert_eq!(p.init_out().len(), INIT_OUT_LEN);
    }

    #[test]
    fn in_header_round_trips() {
        let h = InHeader {
            len: 80,
            opcode: 16,
            unique: UNIQUE_RESEND | 9,
            nodeid: 2,
            uid: 1,
            gid: 2,
            pid: 3,
            total_extlen: 0,
        };
        let mut v = Vec::new();
        h.write(&mut v);
        assert_eq!(v.len(), IN_HEADER_LEN);
        assert_eq!(InHeader::parse(&v), Ok(h));
        assert!(InHeader::parse(&v[..39]).is_err());
    }

    #[test]
    fn init_in_reads_flags2_only_with_init_ext() {
        let mut v = Vec::new();
        for x in [7u32, 45, 131072, init_flags::INIT_EXT as u32 | 1, 1 << 7] {
            v.put_u32(x);
        }
        let i = InitIn::parse(&v).expect("parse");
        assert_eq!(i.flags, init_flags::INIT_EXT | 1 | init_flags::HAS_RESEND);
        let i = InitIn::parse(&v[..16]);
        assert!(i.is_err(), "INIT_EXT promises flags2");
        v[12..16].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(InitIn::parse(&v[..16]).expect("old layout").flags, 1);
    }

    #[test]
    fn init_params_round_trip() {
        let p = InitParams {
            minor: 40,
            kernel_flags: u64::MAX - 5,
            flags: 1 << 39 | 1,
            max_readahead: 128 << 10,
            max_write: 1 << 20,
            max_pages: 256,
            max_background: 64,
            congestion_threshold: 48,
        };
        assert_eq!(InitParams::from_bytes(&p.to_bytes()), Ok(p));
        assert!(InitParams::from_bytes(&p.to_bytes()[..10]).is_err());
    }

    #[test]
    fn write_in_checks_the_payload_length() {
        let mut v = Vec::new();
        v.put_u64(0);
        v.put_u64(4096);
        v.put_u32(3);
        v.extend_from_slice(&[0u8; 20]);
        v.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            WriteIn::parse(&v),
            Ok(WriteIn {
                offset: 4096,
                data: &[1, 2, 3]
            })
        );
        assert!(WriteIn::parse(&v[..v.len() - 1]).is_err());
    }

    #[test]
    fn dirents_are_eight_byte_aligned() {
        for name in [&b"."[..], b"..", b"volume", b"12345678"] {
            let mut v = Vec::new();
            dirent(&mut v, 1, 1, 4, name);
            assert_eq!(v.len() % 8, 0);
            assert!(v.len() >= 24 + name.len());
        }
    }
}
