//! The API socket: accepts connections and answers one JSON line per
//! request line, a thread per connection (a node has few clients: the CSI
//! server and an operator's shell).
//!
//! The socket is 0600 whatever the umask, and a peer that is neither root
//! nor this process's uid is refused (`SO_PEERCRED`). Connections are
//! bounded ([`ApiLimits`]): each has a thread with a 1 MiB stack (this process locks
//! its memory, so every stack is resident), waits at most the idle timeout
//! for its next request, and when all slots are taken the connection idle
//! the longest is closed to make room (a client that only connects cannot
//! starve those that call); when every slot is busy with a request the new
//! connection is closed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::api::{RequestError, Response, WireError, MAX_REQUEST_BYTES};
use super::Daemon;
use crate::dataplane::localsock;
use crate::node::error::Error as NodeError;
use crate::node::plane::error::PlaneError;

/// How many API connections the daemon serves at once, and how long one
/// may sit idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Connections served at once (each has a thread).
    pub max_connections: usize,
    /// How long a connection may wait between requests before it is closed.
    pub idle_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_connections: 32,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Stack of a connection thread (half the default: with the memory locked,
/// each stack is resident; the calls keep their buffers on the heap).
const CONNECTION_STACK: usize = 1 << 20;

struct Conn {
    stream: UnixStream,
    busy: bool,
    last: Instant,
}

#[derive(Default)]
struct Conns {
    next: u64,
    live: HashMap<u64, Conn>,
}

type Table = Arc<Mutex<Conns>>;

fn table(t: &Table) -> std::sync::MutexGuard<'_, Conns> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Binds `path` (replacing a stale socket: the serve lock says no other
/// process serves) and answers from a thread.
pub(super) fn listen(daemon: Arc<Daemon>, path: &Path, limits: ApiLimits) -> Result<(), PlaneError> {
    let listener = localsock::listen_private(path, rustix::net::SocketType::STREAM, 128)
        .map_err(PlaneError::io("listen (mode 0600) on the API socket", path))?;
    let listener = UnixListener::from(listener);
    tracing::info!(socket = %path.display(), max_connections = limits.max_connections, idle_timeout = ?limits.idle_timeout, "API listening");
    let conns: Table = Arc::default();
    std::thread::Builder::new()
        .name("floe-api".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => admit(&daemon, &conns, s, limits),
                    Err(e) => tracing::warn!(error = %e, "accept an API connection"),
                }
            }
        })
        .map_err(PlaneError::io("start the API thread", path))?;
    Ok(())
}

/// Checks the peer, makes room, and starts the connection's thread.
fn admit(daemon: &Arc<Daemon>, conns: &Table, stream: UnixStream, limits: ApiLimits) {
    if let Err(e) = localsock::check_peer(&stream) {
        tracing::warn!(error = %e, "API: refused a peer");
        return;
    }
    let (Ok(handle), Ok(())) = (stream.try_clone(), stream.set_read_timeout(Some(limits.idle_timeout))) else {
        tracing::warn!("API: prepare a connection");
        return;
    };
    let id = {
        let mut t = table(conns);
        if t.live.len() >= limits.max_connections {
            let oldest_idle = t
                .live
                .iter()
                .filter(|(_, c)| !c.busy)
                .min_by_key(|(_, c)| c.last)
                .map(|(id, _)| *id);
            match oldest_idle.and_then(|id| t.live.remove(&id)) {
                Some(c) => {
                    tracing::info!(
                        limit = limits.max_connections,
                        "API: closed the connection idle the longest to make room"
                    );
                    let _ = c.stream.shutdown(Shutdown::Both);
                }
                None => {
                    tracing::warn!(
                        limit = limits.max_connections,
                        "API: every connection is busy; refused a new one"
                    );
                    return;
                }
            }
        }
        t.next += 1;
        let id = t.next;
        t.live.insert(
            id,
            Conn {
                stream: handle,
                busy: false,
                last: Instant::now(),
            },
        );
        id
    };
    let (d, c) = (Arc::clone(daemon), Arc::clone(conns));
    let spawned = std::thread::Builder::new()
        .name("floe-api-conn".into())
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            serve_connection(&d, stream, &c, id);
            table(&c).live.remove(&id);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "start an API connection thread");
        table(conns).live.remove(&id);
    }
}

/// Marks connection `id` busy or idle; false when it was closed to make room.
fn mark(conns: &Table, id: u64, busy: bool) -> bool {
    match table(conns).live.get_mut(&id) {
        Some(c) => {
            c.busy = busy;
            c.last = Instant::now();
            true
        }
        None => false,
    }
}

fn serve_connection(daemon: &Daemon, stream: UnixStream, conns: &Table, id: u64) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "clone an API connection");
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match reader.by_ref().take(MAX_REQUEST_BYTES as u64 + 1).read_line(&mut line) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                tracing::debug!("API: closed an idle connection");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "read an API request");
                return;
            }
        };
        if !mark(conns, id, true) {
            return;
        }
        let too_long = n > MAX_REQUEST_BYTES && !line.ends_with('\n');
        let response = if too_long {
            Response::Error(WireError::from(&NodeError::from(PlaneError::from(
                RequestError::TooLong,
            ))))
        } else if line.trim().is_empty() {
            mark(conns, id, false);
            continue;
        } else {
            daemon.handle_line(line.trim_end())
        };
        let mut out = serde_json::to_vec(&response).expect("responses always encode");
        out.push(b'\n');
        if let Err(e) = writer.write_all(&out) {
            tracing::debug!(error = %e, "write an API response");
            return;
        }
        if too_long || !mark(conns, id, false) {
            return;
        }
    }
}
