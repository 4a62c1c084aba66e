//! Mounting a one-file FUSE file system and serving it from several threads.
//!
//! Each worker thread reads requests from its own `/dev/fuse` fd (the
//! session fd for the first, clones made with `FUSE_DEV_IOC_CLONE` for the
//! others), answers them through [`OneFile`] and writes the reply to the same
//! fd. A connection's fds can be observed as they are created, before their
//! first read, which is what the handover holder needs; [`FuseServer::resume`]
//! serves a connection whose `INIT` another process already answered.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

use super::abi::{self, init_flags, InHeader, InitIn, InitParams};
use super::ops::{OneFile, Outcome, FILE_NAME};
use super::{FuseConfig, FuseError};
use crate::dataplane::backend::BlockBackend;
use crate::dataplane::mounttable::parse_mountinfo;
use crate::dataplane::sys;

/// How long [`FuseServer::unmount`] waits for the workers to see the
/// connection end before it aborts it (and again after the abort).
pub const WORKER_GRACE: Duration = Duration::from_secs(5);

/// Told about every `/dev/fuse` fd of a connection before its first read, and
/// about the `INIT` parameters once they are settled. The handover holder
/// implements this to keep a copy of each fd.
pub trait FdObserver: Send + Sync {
    /// A new fd of the connection; nothing has been read from it yet.
    fn fd_opened(&self, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// `INIT` was answered with these parameters.
    fn initialized(&self, params: &InitParams) -> io::Result<()>;
}

/// A live FUSE connection as a process holds it: every fd and the `INIT`
/// parameters it was started with.
#[derive(Debug)]
pub struct Connection {
    /// The session fd first, then the clones.
    pub fds: Vec<OwnedFd>,
    /// What `INIT` settled.
    pub init: InitParams,
}

/// A mounted one-file FUSE file system and the threads serving it.
///
/// Unmounts on [`FuseServer::unmount`] or, best effort, on drop.
pub struct FuseServer {
    mountpoint: PathBuf,
    init: InitParams,
    workers: Vec<JoinHandle<()>>,
    mounted: bool,
    fs: Arc<OneFile>,
}

impl std::fmt::Debug for FuseServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseServer")
            .field("mountpoint", &self.mountpoint)
            .field("init", &self.init)
            .field("workers", &self.workers.len())
            .field("mounted", &self.mounted)
            .finish()
    }
}

impl FuseServer {
    /// Mounts a FUSE file system at `mountpoint` (created if missing) whose
    /// one file, `mountpoint/volume`, is `backend`, answers `INIT`, and starts
    /// `config.threads` workers.
    pub fn mount(
        backend: Arc<dyn BlockBackend>,
        mountpoint: &Path,
        config: &FuseConfig,
        observer: Option<&dyn FdObserver>,
    ) -> Result<Self, FuseError> {
        config.validate()?;
        std::fs::create_dir_all(mountpoint).map_err(|source| FuseError::MountPoint {
            path: mountpoint.to_owned(),
            source,
        })?;
        let session = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| FuseError::OpenDevice(e.into()))?;
        if let Some(o) = observer {
            o.fd_opened(session.as_fd()).map_err(FuseError::Observer)?;
        }
        let options = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
            session.as_raw_fd()
        );
        let options = std::ffi::CString::new(options).expect("no NUL in mount options");
        rustix::mount::mount(
            "floe",
            mountpoint,
            "fuse.floe",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::NOATIME,
            options.as_c_str(),
        )
        .map_err(|e| FuseError::Mount {
            path: mountpoint.to_owned(),
            source: e.into(),
        })?;

        // From here on a failure must undo the mount.
        let undo = |e: FuseError| {
            let _ = rustix::mount::unmount(mountpoint, UnmountFlags::DETACH);
            e
        };
        let init = answer_init(&session, config).map_err(undo)?;
        let mut fds = vec![session];
        for _ in 1..config.threads {
            let clone = sys::fuse_clone(fds[0].as_fd()).map_err(|e| undo(FuseError::Clone(e.into())))?;
            if let Some(o) = observer {
                o.fd_opened(clone.as_fd()).map_err(|e| undo(FuseError::Observer(e)))?;
            }
            fds.push(clone);
        }
        if let Some(o) = observer {
            o.initialized(&init).map_err(|e| undo(FuseError::Observer(e)))?;
        }
        let server = Self::start(backend, mountpoint, init, fds)?;
        tracing::info!(mountpoint = %mountpoint.display(), threads = config.threads, ?init, "FUSE file mounted");
        Ok(server)
    }

    /// Serves a connection that another process mounted and initialised
    /// (its fds handed over), then asks the kernel to resend every request
    /// the previous server read but did not answer.
    pub fn resume(backend: Arc<dyn BlockBackend>, mountpoint: &Path, conn: Connection) -> Result<Self, FuseError> {
        if conn.fds.is_empty() {
            return Err(FuseError::NoFds);
        }
        let notify_fd = conn.fds[0].try_clone().map_err(FuseError::Notify)?;
        let server = Self::start(backend, mountpoint, conn.init, conn.fds)?;
        notify_resend(notify_fd.as_fd())?;
        tracing::info!(mountpoint = %mountpoint.display(), init = ?conn.init, "FUSE connection resumed");
        Ok(server)
    }

    /// Serves `backend` on the connection mounted at `mountpoint` and set
    /// up with `init`: a worker on each of `fds`.
    fn start(
        backend: Arc<dyn BlockBackend>,
        mountpoint: &Path,
        init: InitParams,
        fds: Vec<OwnedFd>,
    ) -> Result<Self, FuseError> {
        let mut server = FuseServer {
            mountpoint: mountpoint.to_owned(),
            init,
            workers: Vec::new(),
            mounted: true,
            fs: Arc::new(OneFile::new(backend)),
        };
        let bufsize = init.max_write as usize + 4096;
        for (i, fd) in fds.into_iter().enumerate() {
            let fs = Arc::clone(&server.fs);
            let handle = std::thread::Builder::new()
                .name(format!("floe-fuse-{i}"))
                .spawn(move || serve(fd, &fs, bufsize))
                .map_err(FuseError::Spawn)?;
            server.workers.push(handle);
        }
        Ok(server)
    }

    /// Path of the volume file.
    pub fn file_path(&self) -> PathBuf {
        self.mountpoint.join(FILE_NAME)
    }

    /// Where the file system is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The connection's fusectl directory (`/sys/fs/fuse/connections/N`),
    /// whose `waiting` counts requests in flight and whose `abort` ends it.
    pub fn connection_dir(&self) -> Option<PathBuf> {
        connection_dir(&self.mountpoint)
    }

    /// Leaves the mount and the worker threads as they are, for a process
    /// about to exit after a successor took the connection over: dropping
    /// the server afterwards neither unmounts nor waits.
    pub fn abandon(mut self) {
        self.mounted = false;
        self.workers.clear();
    }

    /// Unmounts and waits for the workers. Idempotent. Waits up to 10 s for
    /// users of the file (a loop device being torn down) to let go, then
    /// detaches lazily and aborts the connection. The wait for the workers
    /// is bounded too: when another mount namespace holds a copy of the
    /// mount (`unshare -m`; containerd makes one per pod), the connection
    /// outlives the unmount here, so after [`WORKER_GRACE`] it is aborted
    /// through fusectl (found before the unmount, while this namespace
    /// still shows the mount).
    pub fn unmount(&mut self) -> Result<(), FuseError> {
        let conn = if self.mounted {
            connection_dir(&self.mountpoint)
        } else {
            None
        };
        if self.mounted {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match rustix::mount::unmount(&self.mountpoint, UnmountFlags::empty()) {
                    Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => break,
                    Err(Errno::BUSY) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    Err(Errno::BUSY) => {
                        tracing::warn!(mountpoint = %self.mountpoint.display(), "FUSE mount busy: detaching and aborting");
                        let conn = connection_dir(&self.mountpoint);
                        let _ = rustix::mount::unmount(&self.mountpoint, UnmountFlags::DETACH);
                        if let Some(dir) = conn {
                            let _ = std::fs::write(dir.join("abort"), "1");
                        }
                        break;
                    }
                    Err(e) => {
                        return Err(FuseError::Unmount {
                            path: self.mountpoint.clone(),
                            source: e.into(),
                        });
                    }
                }
            }
            self.mounted = false;
        }
        self.join_workers(conn.as_deref());
        Ok(())
    }

    /// Joins the workers, aborting the connection at `conn` if they still
    /// serve it after [`WORKER_GRACE`]; a worker still running after a
    /// second grace is left behind (logged), never waited for without end.
    fn join_workers(&mut self, conn: Option<&Path>) {
        let running = |ws: &[JoinHandle<()>]| ws.iter().any(|w| !w.is_finished());
        let wait = |ws: &[JoinHandle<()>]| {
            let deadline = Instant::now() + WORKER_GRACE;
            while running(ws) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait(&self.workers);
        if running(&self.workers) {
            tracing::warn!(
                mountpoint = %self.mountpoint.display(),
                "the FUSE connection outlived its unmount (another mount namespace holds a copy of the mount): aborting it"
            );
            match conn {
                Some(dir) => {
                    if let Err(e) = std::fs::write(dir.join("abort"), "1") {
                        tracing::error!(error = %e, dir = %dir.display(), "abort the FUSE connection");
                    }
                }
                None => {
                    tracing::error!(mountpoint = %self.mountpoint.display(), "no fusectl directory to abort the FUSE connection with")
                }
            }
            wait(&self.workers);
        }
        for w in self.workers.drain(..) {
            if w.is_finished() {
                let _ = w.join();
            } else {
                tracing::error!(mountpoint = %self.mountpoint.display(), "a FUSE worker still runs after the abort: left behind");
            }
        }
    }
}

impl Drop for FuseServer {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::error!(error = %e, mountpoint = %self.mountpoint.display(), "unmount FUSE on drop");
        }
    }
}

/// The fusectl directory of the connection mounted at `mountpoint`; mounts
/// fusectl on `/sys/fs/fuse/connections` when nobody did (as systemd does on
/// most hosts). Finds the connection through `/proc/self/mountinfo`, never
/// through the mount itself, so it works while the server is hung or dead.
pub fn connection_dir(mountpoint: &Path) -> Option<PathBuf> {
    let root = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(root).ok()?.next().is_none() {
        // Empty: fusectl is not mounted (a mounted one lists our connection).
        if let Err(e) = rustix::mount::mount("fusectl", root, "fusectl", MountFlags::empty(), None) {
            tracing::debug!(error = %e, "mount fusectl");
        }
    }
    let dev = mount_dev(&std::fs::read_to_string("/proc/self/mountinfo").ok()?, mountpoint)?;
    let dir = root.join(dev.to_string());
    dir.exists().then_some(dir)
}

/// The device number (`major << 20 | minor`, as fusectl names connections)
/// of the last mount at `mountpoint` in a `mountinfo` listing.
fn mount_dev(mountinfo: &str, mountpoint: &Path) -> Option<u64> {
    let m = parse_mountinfo(mountinfo)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mountpoint)?;
    Some((u64::from(m.major) << 20) | u64::from(m.minor))
}

/// Aborts the FUSE connection mounted at `mountpoint`: every request in
/// flight and every later one fails. The last resort of a cleanup.
pub fn abort_connection(mountpoint: &Path) -> bool {
    connection_dir(mountpoint).is_some_and(|dir| std::fs::write(dir.join("abort"), "1").is_ok())
}

/// Reads the kernel's `INIT` from the session fd and answers it.
fn answer_init(fd: &OwnedFd, config: &FuseConfig) -> Result<InitParams, FuseError> {
    let mut buf = vec![0u8; (config.max_write as usize + 4096).max(abi::MIN_READ_BUFFER)];
    let n = loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(n) => break n,
            Err(Errno::INTR | Errno::AGAIN | Errno::NOENT) => continue,
            Err(e) => return Err(FuseError::Init(e.into())),
        }
    };
    let h = InHeader::parse(&buf[..n]).map_err(|_| FuseError::NotInit(0))?;
    if h.opcode != abi::opcode::INIT {
        return Err(FuseError::NotInit(h.opcode));
    }
    let offered = InitIn::parse(&buf[abi::IN_HEADER_LEN..n]).map_err(|_| FuseError::NotInit(h.opcode))?;
    if offered.major != abi::KERNEL_VERSION || offered.minor < 31 {
        reply(fd.as_fd(), h.unique, Errno::PROTO.raw_os_error(), &[]);
        return Err(FuseError::Protocol {
            major: offered.major,
            minor: offered.minor,
        });
    }
    let wanted = init_flags::ASYNC_READ
        | init_flags::BIG_WRITES
        | init_flags::ASYNC_DIO
        | init_flags::PARALLEL_DIROPS
        | init_flags::MAX_PAGES
        | init_flags::INIT_EXT;
    let params = InitParams {
        minor: offered.minor.min(abi::KERNEL_MINOR_VERSION),
        kernel_flags: offered.flags,
        flags: offered.flags & wanted,
        max_readahead: offered.max_readahead,
        max_write: config.max_write,
        max_pages: (config.max_write / 4096) as u16,
        max_background: config.max_background,
        congestion_threshold: config.congestion_threshold,
    };
    let out = params.init_out();
    let hdr = abi::out_header(abi::OUT_HEADER_LEN + out.len(), 0, h.unique);
    rustix::io::writev(fd, &[io::IoSlice::new(&hdr), io::IoSlice::new(&out)]).map_err(|e| FuseError::Init(e.into()))?;
    Ok(params)
}

/// Asks the kernel to put every request that was read but not answered back
/// in the queue (`FUSE_NOTIFY_RESEND`, Linux ≥ 6.9). Resent requests carry
/// [`abi::UNIQUE_RESEND`] in `unique`; replies echo it unchanged.
pub fn notify_resend(fd: BorrowedFd<'_>) -> Result<(), FuseError> {
    let hdr = abi::out_header(abi::OUT_HEADER_LEN, abi::notify::RESEND, 0);
    rustix::io::write(fd, &hdr)
        .map(|_| ())
        .map_err(|e| FuseError::Notify(e.into()))
}

/// Writes one reply; a reply to a request the kernel already dropped
/// (interrupted, or the connection is gone) is not an error worth more than a
/// debug line.
fn reply(fd: BorrowedFd<'_>, unique: u64, errno: i32, payload: &[u8]) {
    let res = if errno != 0 {
        rustix::io::write(fd, &abi::out_header(abi::OUT_HEADER_LEN, -errno, unique))
    } else {
        let hdr = abi::out_header(abi::OUT_HEADER_LEN + payload.len(), 0, unique);
        rustix::io::writev(fd, &[io::IoSlice::new(&hdr), io::IoSlice::new(payload)])
    };
    match res {
        Ok(_) => {}
        Err(Errno::NOENT | Errno::NODEV) => tracing::debug!(unique, "reply to a request the kernel dropped"),
        Err(e) => tracing::warn!(unique, error = %e, "write FUSE reply"),
    }
}

/// One worker: read a request, handle it, reply; until the connection ends.
fn serve(fd: OwnedFd, fs: &OneFile, bufsize: usize) {
    // Covers servers started after `main` set up the process (tests).
    if let Err(e) = crate::dataplane::process::set_io_flusher() {
        tracing::debug!(error = %e, "PR_SET_IO_FLUSHER on a FUSE worker");
    }
    let mut buf = vec![0u8; bufsize.max(abi::MIN_READ_BUFFER)];
    let mut out = Vec::with_capacity(bufsize);
    loop {
        let n = match rustix::io::read(&fd, &mut buf) {
            Ok(n) => n,
            // ENOENT: the request was interrupted before we could read it.
            Err(Errno::INTR | Errno::AGAIN | Errno::NOENT) => continue,
            // The file system was unmounted or the connection aborted.
            Err(Errno::NODEV | Errno::CONNABORTED) => break,
            Err(e) => {
                tracing::error!(error = %e, "read /dev/fuse");
                break;
            }
        };
        let h = match InHeader::parse(&buf[..n]) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "short read from /dev/fuse");
                continue;
            }
        };
        out.clear();
        match fs.handle(&h, &buf[abi::IN_HEADER_LEN..n], &mut out) {
            Outcome::NoReply => {}
            Outcome::Reply(errno) => reply(fd.as_fd(), h.unique, errno, &out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_dev_reads_the_last_matching_mountinfo_line() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    90 22 0:77 / /tmp/floe-x/fuse rw,nosuid - fuse.floe floe rw\n\
                    91 22 7:3 / /tmp/floe-x/mnt rw - ext4 /dev/loop3 rw\n\
                    92 90 0:78 / /tmp/floe-x/fuse rw,nosuid - fuse.floe floe rw\n";
        assert_eq!(mount_dev(info, Path::new("/tmp/floe-x/fuse")), Some(78));
        assert_eq!(mount_dev(info, Path::new("/tmp/floe-x/mnt")), Some((7 << 20) | 3));
        assert_eq!(mount_dev(info, Path::new("/nowhere")), None);
    }

    #[test]
    fn mount_dev_unescapes_every_octal_escape_of_mountinfo() {
        let info = "90 22 0:77 / /tmp/a\\011b\\134c\\040d rw - fuse.floe floe rw\n";
        assert_eq!(mount_dev(info, Path::new("/tmp/a\tb\\c d")), Some(77));
    }
}
