//! Local sockets and directories with modes that do not depend on the
//! umask, and the check of a local peer's credentials.
//!
//! Every directory floe makes for its run-time state or data is 0700 and
//! every socket 0600, set explicitly: the umask is process-wide (and the
//! data plane has threads), so it is never changed. A socket is made
//! connectable only after its mode is set: `bind`, `chmod`, then `listen`
//! (a connect before `listen` is refused), so there is no moment when a
//! wider mode lets another user in.
//!
//! The holder and the data plane also check each peer with `SO_PEERCRED`
//! ([`check_peer`]): only root and the process's own uid are served, so a
//! socket whose mode an operator opened up still does not serve others.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// Mode of every directory floe makes for its state.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every socket floe listens on.
pub const SOCKET_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents, 0700 as well) and sets its mode to
/// 0700, whatever the umask and whatever mode it had.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}

/// Creates `dir` 0700 when it does not exist; an existing directory (one
/// the operator or kubelet made) keeps its mode.
pub fn dir_if_missing(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    private_dir(dir)
}

/// A listening unix socket of `kind` at `path`, mode 0600 before it
/// listens. It is bound under a temporary name beside `path` (`.NAME~`),
/// made 0600, set listening, and only then renamed to `path`, replacing a
/// stale socket file there (the caller knows no other process serves it):
/// whoever finds `path` can connect at once, and never with a wider mode.
/// Close-on-exec.
pub fn listen_private(path: &Path, kind: SocketType, backlog: i32) -> io::Result<OwnedFd> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a socket path needs a file name"))?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push("~");
    let temp = path.with_file_name(temp);
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let sock = rustix::net::socket_with(AddressFamily::UNIX, kind, SocketFlags::CLOEXEC, None)?;
    rustix::net::bind(&sock, &SocketAddrUnix::new(&temp)?)?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    rustix::net::listen(&sock, backlog)?;
    std::fs::rename(&temp, path)?;
    Ok(sock)
}

/// [`listen_private`] of a stream socket, for tokio to serve (call it
/// within the runtime).
pub fn listen_tokio(path: &Path) -> io::Result<tokio::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::from(listen_private(path, SocketType::STREAM, 128)?);
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// Who is on the other end of a local socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its process id (at connect time).
    pub pid: i32,
    /// Its effective uid.
    pub uid: u32,
    /// Its effective gid.
    pub gid: u32,
}

/// A peer this process does not serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// `SO_PEERCRED` failed.
    #[error("read the peer's credentials (SO_PEERCRED)")]
    Credentials(#[source] io::Error),
    /// The peer is neither root nor this process's uid.
    #[error("uid {} (pid {}) is neither root nor uid {ours}", .peer.uid, .peer.pid)]
    Refused {
        /// Who it is.
        peer: Peer,
        /// This process's uid.
        ours: u32,
    },
}

/// Checks the peer of a connected unix socket: root and this process's own
/// effective uid are allowed, anyone else is refused.
pub fn check_peer(sock: impl AsFd) -> Result<Peer, PeerError> {
    let cred = rustix::net::sockopt::socket_peercred(sock).map_err(|e| PeerError::Credentials(e.into()))?;
    let peer = Peer {
        pid: cred.pid.as_raw_nonzero().get(),
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
    };
    let ours = rustix::process::geteuid().as_raw();
    if peer.uid == 0 || peer.uid == ours {
        Ok(peer)
    } else {
        Err(PeerError::Refused { peer, ours })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_and_dirs_get_their_modes_and_own_peers_pass() {
        let scratch = tempfile::Builder::new()
            .prefix("floe-localsock")
            .tempdir()
            .expect("tempdir");
        let dir = scratch.path().join("a/b");
        private_dir(&dir).expect("dir");
        for d in [scratch.path().join("a"), dir.clone()] {
            let mode = std::fs::metadata(&d).expect("stat").permissions().mode() & 0o7777;
            assert_eq!(mode, DIR_MODE, "{}", d.display());
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir_if_missing(&dir).expect("exists");
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "an existing directory keeps its mode");
        let path = dir.join("s.sock");
        std::fs::write(&path, b"stale").expect("stale file");
        let listener = listen_private(&path, SocketType::STREAM, 4).expect("listen");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, SOCKET_MODE);
        let client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        let server = rustix::net::accept(&listener).expect("accept");
        let peer = check_peer(&server).expect("our own uid passes");
        assert_eq!(peer.pid, std::process::id() as i32);
        drop(client);
    }
}
