//! The API socket: `floe.node.v1.NodeVolumes` and `floe.node.v1.DataPlane`
//! (`proto/node.proto`) over HTTP/2 on a unix socket, on a small tokio
//! runtime of its own.
//!
//! The socket is 0600 whatever the umask, and a peer that is neither root
//! nor this process's uid is refused (`SO_PEERCRED`) before a byte is read.
//! Connections are bounded ([`ApiLimits`]): one idle (no call under way)
//! for the idle timeout is closed, and when every slot is taken the
//! connection idle the longest is closed to make room (a client that only
//! connects cannot starve those that call); when every slot has a call
//! under way the new connection is closed. A connection is closed with
//! HTTP/2 `GOAWAY`, so a call that races the close is refused cleanly and
//! the client's channel dials again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

/// The error of a routed call (none in practice: a failed call is a
/// gRPC status in a response).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

use crate::dataplane::localsock;
use crate::node::plane::error::PlaneError;

/// How many API connections the daemon serves at once, and how long one
/// may sit idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a connection may go without a call before it is closed.
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

/// Stack of the runtime's threads (this process locks its memory, so each
/// stack is resident; the calls keep their buffers on the heap).
const THREAD_STACK: usize = 1 << 20;
/// Threads for the blocking work of calls (copies, freezes, file I/O).
const BLOCKING_THREADS: usize = 16;
/// How long a closed connection may take to finish the calls under way.
const CLOSE_GRACE: Duration = Duration::from_secs(30);
/// How long a closed connection without a call may take to acknowledge
/// the close (HTTP/2 waits for a ping's answer before its last `GOAWAY`;
/// a client that never answers is dropped after this).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One served connection, as the table sees it.
struct Conn {
    /// Calls under way on it.
    calls: Arc<AtomicUsize>,
    /// When a call last started or ended (or it connected).
    last: Arc<Mutex<Instant>>,
    /// Cancelled to close it.
    close: CancellationToken,
}

impl Conn {
    fn idle_since(&self) -> Option<Instant> {
        (self.calls.load(Ordering::SeqCst) == 0).then(|| *self.last.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[derive(Default)]
struct Table {
    next: u64,
    live: HashMap<u64, Conn>,
}

type Shared = Arc<Mutex<Table>>;

fn table(t: &Shared) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The runtime of the API and of replication: two workers, a bounded
/// blocking pool, small stacks.
pub(super) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_stack_size(THREAD_STACK)
        .thread_name("floe-api")
        .enable_all()
        .build()
}

/// Binds `path` (replacing a stale socket: the serve lock says no other
/// process serves) and serves `routes` on it from `runtime`, which this
/// takes over.
pub(super) fn listen(
    routes: Routes,
    path: &Path,
    limits: ApiLimits,
    runtime: tokio::runtime::Runtime,
) -> Result<(), PlaneError> {
    let listener = {
        let _entered = runtime.enter();
        localsock::listen_tokio(path).map_err(PlaneError::io("listen (mode 0600) on the API socket", path))?
    };
    tracing::info!(socket = %path.display(), max_connections = limits.max_connections, idle_timeout = ?limits.idle_timeout, "API listening");
    std::thread::Builder::new()
        .name("floe-api".into())
        .spawn(move || runtime.block_on(accept(listener, routes, limits)))
        .map_err(PlaneError::io("start the API thread", path))?;
    Ok(())
}

async fn accept(listener: tokio::net::UnixListener, routes: Routes, limits: ApiLimits) {
    let conns: Shared = Arc::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => admit(&conns, stream, &routes, limits),
            Err(e) => {
                tracing::warn!(error = %e, "accept an API connection");
                // EMFILE and the like: give the process a moment.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Checks the peer, makes room, and starts serving the connection.
fn admit(conns: &Shared, stream: UnixStream, routes: &Routes, limits: ApiLimits) {
    if let Err(e) = localsock::check_peer(&stream) {
        tracing::warn!(error = %e, "API: refused a peer");
        return;
    }
    let conn = Conn {
        calls: Arc::default(),
        last: Arc::new(Mutex::new(Instant::now())),
        close: CancellationToken::new(),
    };
    let (calls, last, close) = (Arc::clone(&conn.calls), Arc::clone(&conn.last), conn.close.clone());
    let id = {
        let mut t = table(conns);
        if t.live.len() >= limits.max_connections {
            let oldest_idle = t
                .live
                .iter()
                .filter_map(|(id, c)| c.idle_since().map(|at| (*id, at)))
                .min_by_key(|(_, at)| *at)
                .map(|(id, _)| id);
            match oldest_idle.and_then(|id| t.live.remove(&id)) {
                Some(c) => {
                    tracing::info!(
                        limit = limits.max_connections,
                        "API: closed the connection idle the longest to make room"
                    );
                    c.close.cancel();
                }
                None => {
                    tracing::warn!(
                        limit = limits.max_connections,
                        "API: every connection has a call under way; refused a new one"
                    );
                    return;
                }
            }
        }
        t.next += 1;
        let id = t.next;
        t.live.insert(id, conn);
        id
    };
    let service = counted(routes.clone(), Arc::clone(&calls), Arc::clone(&last));
    let conns = Arc::clone(conns);
    tokio::spawn(async move {
        serve_connection(stream, service, &calls, &last, close, limits.idle_timeout).await;
        table(&conns).live.remove(&id);
    });
}

/// `routes`, counting the calls under way and when the last one started or
/// ended.
fn counted(
    routes: Routes,
    calls: Arc<AtomicUsize>,
    last: Arc<Mutex<Instant>>,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<tonic::body::BoxBody>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut routes = routes.clone();
        let (calls, last) = (Arc::clone(&calls), Arc::clone(&last));
        calls.fetch_add(1, Ordering::SeqCst);
        *last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        async move {
            let response = tower::Service::call(&mut routes, req.map(tonic::body::boxed)).await;
            *last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
            calls.fetch_sub(1, Ordering::SeqCst);
            response
        }
    })
}

/// Serves one connection until the client leaves, it stays idle for
/// `idle_timeout`, or `close` is cancelled (to make room).
async fn serve_connection<S>(
    stream: UnixStream,
    service: S,
    calls: &AtomicUsize,
    last: &Mutex<Instant>,
    close: CancellationToken,
    idle_timeout: Duration,
) where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::BoxBody>,
            Error = BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    loop {
        let idle_at = *last.lock().unwrap_or_else(PoisonError::into_inner) + idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "API connection ended");
                }
                return;
            }
            () = close.cancelled() => break,
            () = tokio::time::sleep_until(idle_at.into()) => {
                let idle = calls.load(Ordering::SeqCst) == 0
                    && last.lock().unwrap_or_else(PoisonError::into_inner).elapsed() >= idle_timeout;
                if idle {
                    tracing::debug!("API: closed an idle connection");
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let grace = if calls.load(Ordering::SeqCst) == 0 {
        IDLE_CLOSE_GRACE
    } else {
        CLOSE_GRACE
    };
    if tokio::time::timeout(grace, conn).await.is_err() && grace == CLOSE_GRACE {
        tracing::warn!(
            ?grace,
            "API: a closed connection's calls outlived the grace; dropped it"
        );
    }
}
