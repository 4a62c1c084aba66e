//! Two sites in one process for the replication-link tests and benchmark:
//! a group of volumes, real engines on real `FileStore`s, the DR's group
//! coordinator on a `FileDecisionLog`, a sender per primary volume and the
//! DR's `Replication` service over mutual TLS on loopback, through a TCP
//! proxy the caller can cut.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use floe_driver::csi::remote::TlsFiles;
use floe_driver::dataplane::freeze_member::LocalMember;
use floe_driver::model::PeerName;
use floe_driver::replication::endpoint::{HostedPrimary, HostedReplica, LocalCoordinator, MemberSink, ReplicaEnd};
use floe_driver::replication::freeze::FreezeMember;
use floe_driver::replication::handshake::Pairing;
use floe_driver::replication::link::{LinkHandle, LinkMetrics};
use floe_driver::replication::listener;
use floe_driver::replication::receiver::{Paired, Receivers};
use floe_driver::replication::sender::{self, SenderConfig};
use floe_driver::replication::tls::{SiteTls, TlsSource};
use floe_driver::store::{FileDecisionLog, FileStore};
use floe_engine::{Geometry, Mode, Primary, Replica, RoleGeneration, VolumeStore};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::tls;

/// Tracking block size of the volumes.
pub const BS: usize = 4096;
/// Volumes in the group.
pub const MEMBERS: usize = 2;
/// The primary site's role generation.
pub const GENERATION: RoleGeneration = RoleGeneration { counter: 1, site: 1 };
/// The group's name.
pub const GROUP: &str = "orders";

/// Volumes of `blocks` blocks.
pub fn geometry(blocks: u64) -> Geometry {
    Geometry::new(BS, blocks, 16).expect("a valid geometry")
}

/// xorshift64*: the test's only randomness, replayable from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Block k drawn with weight 1/(k+1)^1.1 (inverse CDF over a table).
pub struct Zipf(Vec<f64>);

impl Zipf {
    pub fn new(n: u64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|k| {
                acc += 1.0 / ((k + 1) as f64).powf(1.1);
                acc
            })
            .collect();
        cdf.iter_mut().for_each(|c| *c /= acc);
        Zipf(cdf)
    }
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        self.0.partition_point(|&c| c < u) as u64
    }
}

pub fn seed(var: &str) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    })
}

/// A TCP proxy whose connections the test can cut (a partition in the
/// middle of whatever the stream was doing).
pub struct Proxy {
    addr: std::net::SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let list = Arc::clone(&conns);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().expect("proxy list").push(conn.abort_handle());
            }
        });
        Ok(Proxy { addr, conns, task })
    }

    /// Drops every connection open now.
    pub fn cut(&self) -> usize {
        let conns = std::mem::take(&mut *self.conns.lock().expect("proxy list"));
        let n = conns.iter().filter(|c| !c.is_finished()).count();
        for c in conns {
            c.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

pub struct Sites {
    pub geometry: Geometry,
    pub primaries: Vec<Arc<HostedPrimary<FileStore>>>,
    pub replicas: Vec<Arc<HostedReplica<FileStore>>>,
    pub coordinator: Arc<LocalCoordinator<FileDecisionLog>>,
    pub links: Vec<LinkHandle>,
    pub receivers: Receivers,
    pub registry: prometheus::Registry,
    /// The primary site's TLS identity.
    pub primary_tls: Arc<TlsSource>,
    /// Where the primary site dials (the proxy).
    pub target: String,
    /// The certificates of both sites (and rogue ones).
    pub pki: tls::Pki,
    pub proxy: Proxy,
    pub cancel: CancellationToken,
    pub server: tokio::task::JoinHandle<()>,
}

impl Sites {
    /// Waits until no member has an epoch still closing: a freeze before
    /// that would be refused (the group freeze checks it first).
    pub async fn wait_resolved(&self) -> Result<()> {
        for p in &self.primaries {
            let mut closing = p.watch_closing();
            // The guard `wait_for` returns would hold the watch's lock: dropped here.
            let done = tokio::time::timeout(WAIT, closing.wait_for(Option::is_none))
                .await
                .map(|r| r.map(|_| ()));
            if !matches!(done, Ok(Ok(()))) {
                anyhow::bail!("epoch {:?} still closing after {WAIT:?}", *closing.borrow());
            }
        }
        Ok(())
    }

    /// Waits until the group committed `epoch`.
    pub async fn wait_committed(&self, epoch: u64) -> Result<()> {
        let mut record = self.coordinator.watch();
        let done = tokio::time::timeout(WAIT, record.wait_for(|r| r.committed >= epoch))
            .await
            .map(|r| r.map(|_| ()));
        if !matches!(done, Ok(Ok(()))) {
            let links: Vec<_> = self.links.iter().map(|l| l.state.borrow().clone()).collect();
            anyhow::bail!("epoch {epoch} not committed within {WAIT:?}; links {links:?}");
        }
        Ok(())
    }

    /// The primaries as group-freeze members with no file system.
    pub fn engine_members(&self) -> Vec<Arc<dyn FreezeMember>> {
        self.primaries
            .iter()
            .enumerate()
            .map(|(m, p)| Arc::new(LocalMember::new(format!("pvc-{m}"), Arc::clone(p), None)) as Arc<dyn FreezeMember>)
            .collect()
    }
}

/// Longest wait for an epoch to resolve or commit.
pub const WAIT: Duration = Duration::from_secs(120);

impl Drop for Sites {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.server.abort();
    }
}

pub fn pairing(m: usize, mode: Mode, geometry: Geometry) -> Pairing {
    Pairing {
        group: GROUP.into(),
        volume: format!("pvc-{m}"),
        geometry,
        mode,
    }
}

/// One site's TLS files as the replication link takes them, wanting `peer`.
pub fn site_tls(files: &TlsFiles, peer: &str) -> Result<SiteTls> {
    Ok(SiteTls {
        cert: files.cert.clone(),
        key: files.key.clone(),
        ca: files.ca.clone(),
        peer: PeerName::parse("peer", peer)?,
    })
}

/// Two sites under `dir` whose primaries are new engines on `FileStore`s.
pub async fn start(dir: &Path, mode: Mode, blocks: u64) -> Result<Sites> {
    let geo = geometry(blocks);
    let primary_dir = dir.join("primary");
    std::fs::create_dir_all(&primary_dir)?;
    let mut primaries = Vec::new();
    for m in 0..MEMBERS {
        let store = FileStore::create(&primary_dir, &pairing(m, mode, geo).volume, geo)?;
        primaries.push(Arc::new(HostedPrimary::new(Primary::create(
            store, geo, mode, GENERATION,
        )?)));
    }
    start_with(dir, mode, geo, primaries, None).await
}

/// Where the DR keeps member `m`'s image under the `dir` given to `start`.
pub fn dr_image(dir: &Path, m: usize) -> std::path::PathBuf {
    dir.join("dr").join("volumes").join(format!("pvc-{m}")).join("image")
}

/// Two sites under `dir` around `primaries` (hosted by the caller, e.g.
/// behind a mounted data path), of generation [`GENERATION`], the senders
/// sharing a bandwidth limit of `limit` bytes a second if given.
pub async fn start_with(
    dir: &Path,
    mode: Mode,
    geo: Geometry,
    primaries: Vec<Arc<HostedPrimary<FileStore>>>,
    limit: Option<u64>,
) -> Result<Sites> {
    let limit = limit.map(sender::bandwidth_limit);
    let pki = tls::pki(&dir.join("tls"))?;
    let dr_dir = dir.join("dr");
    std::fs::create_dir_all(&dr_dir)?;
    let mut replicas = Vec::new();
    for m in 0..MEMBERS {
        let p = pairing(m, mode, geo);
        let store = FileStore::create(&dr_dir, &p.volume, geo)?;
        replicas.push(Arc::new(HostedReplica::new(Replica::create(
            store, geo, m as u32, GENERATION,
        )?)));
    }
    let members: Vec<MemberSink> = replicas
        .iter()
        .map(|r| MemberSink::Here(Arc::clone(r) as Arc<dyn ReplicaEnd>))
        .collect();
    let coordinator = Arc::new(LocalCoordinator::open(FileDecisionLog::open(&dr_dir, GROUP)?, members)?);
    let registry = prometheus::Registry::new();
    let receivers = Receivers::new(LinkMetrics::register(&registry, "receiver")?);
    let sender_metrics = LinkMetrics::register(&registry, "sender")?;
    for (m, r) in replicas.iter().enumerate() {
        receivers.add(Paired {
            pairing: pairing(m, mode, geo),
            end: Arc::clone(r) as Arc<dyn ReplicaEnd>,
            coordinator: Arc::clone(&coordinator) as _,
            incarnation: 1,
        });
    }

    // The DR serves as the node identity and wants the controller's name;
    // the primary site dials as the controller and wants the node's.
    let dr_tls = TlsSource::load(site_tls(&pki.node, tls::CONTROLLER_DNS)?)?;
    let primary_tls = TlsSource::load(site_tls(&pki.controller, tls::NODE_DNS)?)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = receivers.clone();
    let server = tokio::spawn(async move {
        if let Err(e) = listener::serve(listener, dr_tls, serving, std::future::pending()).await {
            eprintln!("replication listener ended: {e}");
        }
    });

    let proxy = Proxy::start(addr).await?;
    let target = proxy.addr.to_string();
    let cancel = CancellationToken::new();
    let links = primaries
        .iter()
        .enumerate()
        .map(|(m, p)| {
            let mut cfg = SenderConfig::new(
                target.clone(),
                Arc::clone(&primary_tls),
                pairing(m, mode, geo),
                GENERATION,
                1,
            );
            // Small frames, so a cut often falls in the middle of an epoch.
            cfg.max_blocks = 8;
            cfg.retry = (Duration::from_millis(5), Duration::from_millis(100));
            cfg.limit = limit.clone();
            let stats = sender_metrics.for_volume(&format!("pvc-{m}"));
            sender::spawn(Arc::clone(p), cfg, stats, cancel.clone())
        })
        .collect();
    Ok(Sites {
        geometry: geo,
        primaries,
        replicas,
        coordinator,
        links,
        receivers,
        registry,
        primary_tls,
        target,
        pki,
        proxy,
        cancel,
        server,
    })
}

pub fn pattern(rng: &mut Rng) -> Vec<u8> {
    let tag = rng.next();
    (0..BS).map(|i| (tag >> (i % 8 * 8)) as u8 ^ (i / 8) as u8).collect()
}

/// The primary's whole image, read through the engine.
pub fn primary_image(p: &mut Primary<FileStore>) -> Result<Vec<u8>> {
    let mut image = vec![0u8; p.geometry().bytes() as usize];
    p.read(0, &mut image)?;
    Ok(image)
}

pub fn replica_image(r: &Replica<FileStore>, geometry: Geometry) -> Result<Vec<u8>> {
    let mut image = vec![0u8; geometry.bytes() as usize];
    for (b, chunk) in image.chunks_mut(BS).enumerate() {
        r.store().read_image(b as u64, chunk)?;
    }
    Ok(image)
}
