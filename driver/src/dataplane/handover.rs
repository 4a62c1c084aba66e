//! Handing a live FUSE connection to a successor process, so that a restart
//! or crash of the data plane costs the pods above no I/O error.
//!
//! A FUSE connection lives as long as one of its `/dev/fuse` open files does.
//! A [`Holder`] — a small process apart from the data plane — keeps a copy of
//! every fd of every connection, received over a unix socket with
//! `SCM_RIGHTS` ([`HolderLink`], an [`FdObserver`]), together with the saved
//! `INIT` parameters. The data plane hands each fd over right after creating
//! it and before its first read: closing an fd that has read requests would
//! end those requests with an error, so every fd the kernel may have given a
//! request to must outlive the process. When the data plane dies, the kernel
//! keeps queueing requests; the successor [`take`]s the fds and parameters,
//! runs its own request loop on them without a new `INIT` (a new session
//! would answer nothing before `INIT`), and sends `FUSE_NOTIFY_RESEND`
//! (Linux ≥ 6.9) so the requests the dead process had read but not answered
//! are queued again ([`crate::dataplane::fuse::FuseServer::resume`]). Resent
//! requests are replayed: reads and writes of a block device are idempotent
//! at the same offset, and the kernel does not issue two overlapping direct
//! writes at once, so a replay cannot undo a later write.
//!
//! FUSE over io_uring cannot be handed over this way (its queues are bound to
//! the ring of the process that registered them), hence the classic
//! `/dev/fuse` path.
//!
//! # If the holder dies
//!
//! While the data plane runs, nothing happens: the data plane holds its own
//! copies of the fds, I/O goes on, and only the safety net is gone. The data
//! plane should notice (its link's socket fails) and hand its fds to a new
//! holder; until it does, a crash of the data plane is fatal to its
//! connections. If both are gone at once, the last reference to each
//! connection's files closes: the kernel aborts the connection, every request
//! in flight and every later one fails with `ENOTCONN`/`EIO`, the file
//! system on the loop device sees I/O errors (ext4 remounts read-only or
//! shuts down), and the volume must be unstaged and staged again — what this
//! whole mechanism exists to avoid. Run the holder with as little code and as
//! few reasons to restart as possible, and never roll it together with the
//! data plane.
//!
//! The socket is 0600 whatever the umask, and only root and the holder's
//! own uid are served ([`localsock`]): whoever holds these fds can answer a
//! live volume's I/O.
//!
//! Wire protocol (`SOCK_SEQPACKET`, one request and one answer per message):
//! a kind byte, then for `PUT_INIT` the 40-byte [`InitParams`], then the
//! connection's key (the volume id) in UTF-8. `PUT_FD` carries one fd;
//! the answer to `TAKE` carries the parameters and every fd.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use super::fuse::abi::{InitParams, INIT_PARAMS_LEN};
use super::fuse::{Connection, FdObserver};
use super::localsock;

const PUT_FD: u8 = 1;
const PUT_INIT: u8 = 2;
const TAKE: u8 = 3;
const RELEASE: u8 = 4;

const ANSWER_OK: u8 = 0;
const ANSWER_UNKNOWN: u8 = 1;
const ANSWER_BAD: u8 = 2;

/// Most fds one message carries (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;
const MAX_KEY: usize = 255;

/// What can go wrong handing a connection over.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoverError {
    /// A socket call failed.
    #[error("{op} on the holder socket {path}")]
    Socket {
        /// What was being done.
        op: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The holder has no connection under this key (or no INIT for it).
    #[error("the holder has no complete connection for {0:?}")]
    Unknown(String),
    /// The holder refused the request or answered nonsense.
    #[error("the holder answered {0} to a request")]
    Refused(u8),
    /// The key is empty or too long.
    #[error("connection key must be 1..=255 bytes")]
    BadKey,
}

/// A connection as the holder keeps it.
#[derive(Debug, Default)]
struct Held {
    fds: Vec<OwnedFd>,
    init: Option<InitParams>,
}

type Table = Arc<Mutex<HashMap<String, Held>>>;

/// Keeps the `/dev/fuse` fds of live connections for successors; serves a
/// unix socket from a thread.
#[derive(Debug)]
pub struct Holder {
    path: PathBuf,
    table: Table,
    listener: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Holder {
    /// Binds the socket at `path` (replacing a stale one) and starts serving.
    pub fn bind(path: &Path) -> Result<Self, HandoverError> {
        let listener =
            localsock::listen_private(path, SocketType::SEQPACKET, 16).map_err(|source| HandoverError::Socket {
                op: "listen (mode 0600) on",
                path: path.to_owned(),
                source,
            })?;
        let listener = Arc::new(listener);
        let table: Table = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (listener, table, stop) = (Arc::clone(&listener), Arc::clone(&table), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("floe-holder".into())
                .spawn(move || accept_loop(&listener, &table, &stop))
                .map_err(|source| HandoverError::Socket {
                    op: "spawn",
                    path: path.to_owned(),
                    source,
                })?
        };
        Ok(Self {
            path: path.to_owned(),
            table,
            listener,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many fds the holder keeps for `key`.
    pub fn held_fds(&self, key: &str) -> usize {
        self.table
            .lock()
            .expect("holder table lock")
            .get(key)
            .map_or(0, |h| h.fds.len())
    }

    /// Serves until the process is killed (a holder binary's `main`).
    pub fn wait(mut self) {
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }

    /// Stops serving and closes every fd it kept (ending connections nobody
    /// else holds).
    pub fn shutdown(mut self) {
        self.stop_serving();
    }

    fn stop_serving(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes `accept` (it fails with EINVAL on a shut-down listener).
        let _ = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Both);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        self.table.lock().expect("holder table lock").clear();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.stop_serving();
        }
    }
}

fn accept_loop(listener: &OwnedFd, table: &Table, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let client = match rustix::net::accept_with(listener, SocketFlags::CLOEXEC) {
            Ok(c) => c,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                if !stop.load(Ordering::SeqCst) {
                    tracing::error!(error = %e, "holder accept");
                }
                return;
            }
        };
        if let Err(e) = localsock::check_peer(&client) {
            tracing::warn!(error = %e, "holder: refused a peer");
            continue;
        }
        let table = Arc::clone(table);
        let spawned = std::thread::Builder::new()
            .name("floe-holder-client".into())
            .spawn(move || serve_client(&client, &table));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "holder: start a client thread");
        }
    }
}

fn serve_client(client: &OwnedFd, table: &Table) {
    let mut buf = [0u8; 1 + INIT_PARAMS_LEN + MAX_KEY];
    loop {
        let (n, fds) = match recv(client, &mut buf, 1) {
            Ok((0, _)) => return,
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(error = %e, "holder: receive a request");
                return;
            }
        };
        let answer = handle(table, &buf[..n], fds);
        let sent = match answer {
            Answer::Code(c) => send(client, &[c], &[]),
            Answer::Take(init, fds) => {
                let mut msg = vec![ANSWER_OK];
                msg.extend_from_slice(&init.to_bytes());
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
                send(client, &msg, &borrowed)
            }
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "holder: answer a request");
            return;
        }
    }
}

enum Answer {
    Code(u8),
    Take(InitParams, Vec<OwnedFd>),
}

fn handle(table: &Table, msg: &[u8], mut fds: Vec<OwnedFd>) -> Answer {
    let Some((&kind, rest)) = msg.split_first() else {
        return Answer::Code(ANSWER_BAD);
    };
    let (init, key) = if kind == PUT_INIT {
        if rest.len() < INIT_PARAMS_LEN {
            return Answer::Code(ANSWER_BAD);
        }
        let (init, key) = rest.split_at(INIT_PARAMS_LEN);
        (InitParams::from_bytes(init).ok(), key)
    } else {
        (None, rest)
    };
    let Ok(key) = std::str::from_utf8(key) else {
        return Answer::Code(ANSWER_BAD);
    };
    if key.is_empty() {
        return Answer::Code(ANSWER_BAD);
    }
    let mut table = table.lock().expect("holder table lock");
    match kind {
        PUT_FD if fds.len() == 1 => {
            let held = table.entry(key.to_owned()).or_default();
            if held.fds.len() >= MAX_FDS {
                return Answer::Code(ANSWER_BAD);
            }
            held.fds.append(&mut fds);
            Answer::Code(ANSWER_OK)
        }
        PUT_INIT if init.is_some() => {
            table.entry(key.to_owned()).or_default().init = init;
            Answer::Code(ANSWER_OK)
        }
        TAKE => match table.get(key) {
            Some(Held { fds, init: Some(init) }) if !fds.is_empty() => {
                let copies: Result<Vec<OwnedFd>, _> = fds.iter().map(|f| f.try_clone()).collect();
                match copies {
                    Ok(copies) => Answer::Take(*init, copies),
                    Err(e) => {
                        tracing::error!(error = %e, "holder: duplicate fds");
                        Answer::Code(ANSWER_BAD)
                    }
                }
            }
            _ => Answer::Code(ANSWER_UNKNOWN),
        },
        RELEASE => {
            table.remove(key);
            Answer::Code(ANSWER_OK)
        }
        _ => Answer::Code(ANSWER_BAD),
    }
}

fn send(sock: &OwnedFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds for one message",
        ));
    }
    rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

fn recv(sock: &OwnedFd, buf: &mut [u8], max_fds: usize) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "fds were truncated"));
    }
    Ok((msg.bytes, fds))
}

fn check_key(key: &str) -> Result<(), HandoverError> {
    if key.is_empty() || key.len() > MAX_KEY {
        Err(HandoverError::BadKey)
    } else {
        Ok(())
    }
}

/// A data plane's link to the holder: hands over each fd of one connection
/// as it is created, and the `INIT` parameters.
#[derive(Debug)]
pub struct HolderLink {
    path: PathBuf,
    key: String,
    sock: Mutex<OwnedFd>,
}

fn connect(path: &Path) -> Result<OwnedFd, HandoverError> {
    let err = |op| {
        move |e: rustix::io::Errno| HandoverError::Socket {
            op,
            path: path.to_owned(),
            source: e.into(),
        }
    };
    let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .map_err(err("socket"))?;
    let addr = SocketAddrUnix::new(path).map_err(err("address"))?;
    rustix::net::connect(&sock, &addr).map_err(err("connect"))?;
    Ok(sock)
}

/// Sends one request and reads the answer's first byte (and fds).
fn call(
    sock: &OwnedFd,
    path: &Path,
    msg: &[u8],
    fds: &[BorrowedFd<'_>],
    answer: &mut [u8],
    max_fds: usize,
) -> Result<(usize, Vec<OwnedFd>), HandoverError> {
    let err = |op| {
        move |source| HandoverError::Socket {
            op,
            path: path.to_owned(),
            source,
        }
    };
    send(sock, msg, fds).map_err(err("send"))?;
    let (n, fds) = recv(sock, answer, max_fds).map_err(err("receive"))?;
    if n == 0 {
        return Err(err("receive")(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok((n, fds))
}

impl HolderLink {
    /// Connects to the holder at `path` for the connection named `key`.
    pub fn connect(path: &Path, key: &str) -> Result<Self, HandoverError> {
        check_key(key)?;
        Ok(Self {
            path: path.to_owned(),
            key: key.to_owned(),
            sock: Mutex::new(connect(path)?),
        })
    }

    fn put(&self, head: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), HandoverError> {
        let mut msg = head.to_vec();
        msg.extend_from_slice(self.key.as_bytes());
        let sock = self.sock.lock().expect("holder link lock");
        let mut answer = [0u8; 1];
        call(&sock, &self.path, &msg, fds, &mut answer, 1)?;
        match answer[0] {
            ANSWER_OK => Ok(()),
            code => Err(HandoverError::Refused(code)),
        }
    }

    /// Tells the holder to close its copies: the connection ended on purpose
    /// (the volume was detached).
    pub fn release(&self) -> Result<(), HandoverError> {
        self.put(&[RELEASE], &[])
    }
}

impl FdObserver for HolderLink {
    fn fd_opened(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.put(&[PUT_FD], &[fd]).map_err(io::Error::other)
    }

    fn initialized(&self, params: &InitParams) -> io::Result<()> {
        let mut head = vec![PUT_INIT];
        head.extend_from_slice(&params.to_bytes());
        self.put(&head, &[]).map_err(io::Error::other)
    }
}

/// Fetches the connection named `key` from the holder at `path`: copies of
/// every fd and the `INIT` parameters. The holder keeps its own copies.
pub fn take(path: &Path, key: &str) -> Result<Connection, HandoverError> {
    check_key(key)?;
    let sock = connect(path)?;
    let mut msg = vec![TAKE];
    msg.extend_from_slice(key.as_bytes());
    let mut answer = [0u8; 1 + INIT_PARAMS_LEN];
    let (n, fds) = call(&sock, path, &msg, &[], &mut answer, MAX_FDS)?;
    match answer[0] {
        ANSWER_OK if n == answer.len() => {
            let init = InitParams::from_bytes(&answer[1..]).map_err(|_| HandoverError::Refused(ANSWER_BAD))?;
            Ok(Connection { fds, init })
        }
        ANSWER_UNKNOWN => Err(HandoverError::Unknown(key.to_owned())),
        code => Err(HandoverError::Refused(code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> InitParams {
        InitParams {
            minor: 40,
            kernel_flags: 7,
            flags: 3,
            max_readahead: 1 << 17,
            max_write: 1 << 20,
            max_pages: 256,
            max_background: 64,
            congestion_threshold: 48,
        }
    }

    #[test]
    fn holder_keeps_fds_and_init_until_released() {
        let dir = tempfile::Builder::new()
            .prefix("floe-holder")
            .tempdir()
            .expect("tempdir");
        let sock = dir.path().join("holder.sock");
        let holder = Holder::bind(&sock).expect("bind");
        let link = HolderLink::connect(&sock, "pvc-1").expect("connect");
        let (r, _w) = rustix::pipe::pipe().expect("pipe");
        assert!(matches!(take(&sock, "pvc-1"), Err(HandoverError::Unknown(_))));
        link.fd_opened(r.as_fd()).expect("put fd");
        link.fd_opened(r.as_fd()).expect("put fd");
        assert!(
            matches!(take(&sock, "pvc-1"), Err(HandoverError::Unknown(_))),
            "no INIT yet"
        );
        link.initialized(&params()).expect("put init");
        assert_eq!(holder.held_fds("pvc-1"), 2);
        let conn = take(&sock, "pvc-1").expect("take");
        assert_eq!(conn.init, params());
        assert_eq!(conn.fds.len(), 2);
        assert_eq!(holder.held_fds("pvc-1"), 2, "taking leaves the holder's copies");
        link.release().expect("release");
        assert_eq!(holder.held_fds("pvc-1"), 0);
        assert!(HolderLink::connect(&sock, "").is_err());
        holder.shutdown();
        assert!(!sock.exists());
    }
}
