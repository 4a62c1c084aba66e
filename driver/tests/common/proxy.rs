//! A userspace TCP proxy between the sites, for the bad-link tests: bytes
//! cross it after a latency with jitter (a delay line, so the latency does
//! not cap the throughput), [`Proxy::stall`] holds every byte until
//! [`Proxy::resume`], and [`Proxy::reset`] ends every connection with a TCP
//! reset. It listens on loopback and forwards to one upstream address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the proxy does to the bytes, and what it saw.
struct Shared {
    latency_ms: AtomicU64,
    jitter_ms: AtomicU64,
    stalled: watch::Sender<bool>,
    /// Bumped by every [`Proxy::reset`]: each connection ends when it changes.
    resets: watch::Sender<u64>,
    connections: AtomicU64,
    forwarded: AtomicU64,
    /// Bytes read and not yet written (queued in the delay line or held by a stall).
    queued: AtomicU64,
}

/// The proxy; see the module doc. Its tasks end when it drops.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<Proxy> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            latency_ms: AtomicU64::new(0),
            jitter_ms: AtomicU64::new(0),
            stalled: watch::channel(false).0,
            resets: watch::channel(0).0,
            connections: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        rt.spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    continue;
                };
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                tokio::spawn(connection(down, upstream, Arc::clone(&s), seed));
            }
        });
        Ok(Proxy {
            addr,
            shared,
            rt: Some(rt),
        })
    }

    /// Every byte waits `latency` plus up to `jitter` (order kept).
    pub fn set_latency(&self, latency: Duration, jitter: Duration) {
        self.shared
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
        self.shared
            .jitter_ms
            .store(jitter.as_millis() as u64, Ordering::Relaxed);
    }

    /// Hold every byte (both ways) until [`Proxy::resume`].
    pub fn stall(&self) {
        self.shared.stalled.send_replace(true);
    }

    /// Let the held bytes go.
    pub fn resume(&self) {
        self.shared.stalled.send_replace(false);
    }

    /// End every connection now with a TCP reset.
    pub fn reset(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far, both ways.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Bytes read and not written yet.
    pub fn queued(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn connection(down: TcpStream, upstream: SocketAddr, s: Arc<Shared>, seed: u64) {
    let mut resets = s.resets.subscribe();
    let Ok(up) = TcpStream::connect(upstream).await else {
        reset_on_close(&down);
        return;
    };
    s.connections.fetch_add(1, Ordering::Relaxed);
    for stream in [&down, &up] {
        let _ = stream.set_nodelay(true);
        reset_on_close(stream);
    }
    let (dr, dw) = down.into_split();
    let (ur, uw) = up.into_split();
    tokio::select! {
        _ = direction(dr, uw, Arc::clone(&s), seed) => {}
        _ = direction(ur, dw, Arc::clone(&s), seed ^ 0x5555) => {}
        _ = resets.changed() => {}
    }
}

/// Closing `stream` sends a reset, not a FIN: what a broken middlebox does
/// (a zero linger never blocks the close).
fn reset_on_close(stream: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(stream, Some(Duration::ZERO));
}

/// One direction: a reader putting chunks on the delay line, a writer
/// taking them off when due (and not stalled).
async fn direction(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, s: Arc<Shared>, mut rng: u64) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    // This direction's share of `queued`, given back when it ends (a reset
    // drops what it held).
    let mine = Arc::new(AtomicU64::new(0));
    let _give_back = GiveBack {
        s: Arc::clone(&s),
        mine: Arc::clone(&mine),
    };
    let reader = {
        let s = Arc::clone(&s);
        let mine = Arc::clone(&mine);
        async move {
            let mut due = Instant::now();
            loop {
                let mut buf = vec![0; 64 << 10];
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.truncate(n);
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let jitter = s.jitter_ms.load(Ordering::Relaxed);
                let wait = s.latency_ms.load(Ordering::Relaxed) + if jitter > 0 { rng % (jitter + 1) } else { 0 };
                // Later bytes never overtake earlier ones.
                due = due.max(Instant::now() + Duration::from_millis(wait));
                s.queued.fetch_add(n as u64, Ordering::Relaxed);
                mine.fetch_add(n as u64, Ordering::Relaxed);
                if tx.send((due, buf)).await.is_err() {
                    return;
                }
            }
        }
    };
    let writer = {
        let s = Arc::clone(&s);
        let mine = Arc::clone(&mine);
        async move {
            let mut stalled = s.stalled.subscribe();
            while let Some((due, buf)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                while *stalled.borrow_and_update() {
                    if stalled.changed().await.is_err() {
                        return;
                    }
                }
                if w.write_all(&buf).await.is_err() {
                    return;
                }
                s.queued.fetch_sub(buf.len() as u64, Ordering::Relaxed);
                mine.fetch_sub(buf.len() as u64, Ordering::Relaxed);
                s.forwarded.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
}

/// Takes a direction's queued bytes off the count when it ends, however
/// it ends (a reset drops the future).
struct GiveBack {
    s: Arc<Shared>,
    mine: Arc<AtomicU64>,
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        self.s
            .queued
            .fetch_sub(self.mine.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}
