//! Two sites as separate process trees for the site tests and the demo:
//! a primary node and a DR node ([`super::site::Node`]), on loopback or in
//! network namespaces of their own ([`super::netns::Net`]), a group of ext4
//! volumes made, mounted and paired; the group freeze driven over each
//! node's `NodeAdmin` as a controller would; writers of fsynced records.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
pub use floe_driver::dataplane::mount::FsType;
use floe_driver::replication::freeze::{FreezeMember, Token};
use floe_engine::Mode;
use floe_proto::node as wire;

use super::netns::Net;
use super::proxy::Proxy;
use super::site::Node;
use super::tls::{self, SITE_DNS};

pub const GROUP: &str = "orders";
pub const MEMBERS: usize = 2;
pub const MIB: u64 = 1 << 20;
/// Size of each volume (its store has room to grow far beyond).
pub const VOLUME_BYTES: u64 = 64 * MIB;

pub fn ready(test: &str) -> bool {
    super::privileged(test) && super::tool_present("mkfs.ext4") && super::tool_present("e2fsck")
}

pub fn volume(m: usize) -> String {
    format!("pvc-{m}")
}

/// A loopback address with a port free on it, for a listener a data plane
/// binds a moment later. The address is one of 127.0.0.0/8 that only this
/// test process uses: the port is released before the data plane binds it,
/// and on 127.0.0.1 any outgoing connection of a test running beside this
/// one may take it as its source port in between (loopback connections
/// leave from 127.0.0.1, never from this address).
pub fn free_loopback() -> Result<std::net::SocketAddr> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // 16 bits of the pid, 8 of a counter; 127.0.0.x is left to others.
    let pid = std::process::id() & 0xffff;
    let host = ((pid.max(1) << 8) | (n & 0xff)).to_be_bytes();
    let ip = std::net::Ipv4Addr::new(127, host[1], host[2], host[3]);
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?)
}

pub fn tls_args(files: &floe_driver::csi::remote::TlsFiles, peer: &str) -> Vec<String> {
    vec![
        "--replication-cert".into(),
        files.cert.display().to_string(),
        "--replication-key".into(),
        files.key.display().to_string(),
        "--replication-ca".into(),
        files.ca.display().to_string(),
        "--replication-peer".into(),
        peer.into(),
    ]
}

/// Appends fsynced records to `dir/log` until `stop`; counts them.
pub fn writer(dir: PathBuf, stop: Arc<AtomicBool>, written: Arc<AtomicU64>) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))?;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let record = format!("record {i:016} {}\n", "x".repeat(200));
            f.write_all(record.as_bytes())?;
            f.sync_data()?;
            // A second file, rewritten in place: blocks written again and
            // again between freezes.
            std::fs::write(dir.join(format!("hot-{}", i % 8)), record.repeat(20))?;
            written.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
        Ok(())
    })
}

/// The test's own writes to the members' raw devices, one 4 KiB block at a
/// time with O_DIRECT (loop devices with direct I/O over FUSE): a write is
/// in the primary's engine when it returns.
pub struct RawWriter {
    files: Vec<std::fs::File>,
    raw: Vec<u8>,
    at: usize,
}

impl RawWriter {
    /// Block size of the writes.
    pub const BLOCK: u64 = 4096;

    /// Opens every device of `devices` for writing.
    pub fn open(devices: &[PathBuf]) -> Result<Self> {
        let files = devices
            .iter()
            .map(|d| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                    .open(d)
                    .with_context(|| format!("open {}", d.display()))
            })
            .collect::<Result<_>>()?;
        let raw = vec![0u8; 2 * Self::BLOCK as usize];
        let at = raw.as_ptr().align_offset(Self::BLOCK as usize);
        Ok(RawWriter { files, raw, at })
    }

    /// Writes block `block` of member `m`, its bytes drawn from `stamp`
    /// (distinct stamps give distinct blocks).
    pub fn write(&mut self, m: usize, block: u64, stamp: u64) -> Result<()> {
        let buf = &mut self.raw[self.at..self.at + Self::BLOCK as usize];
        for (n, word) in buf.chunks_mut(8).enumerate() {
            let v = stamp.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (n as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            word.copy_from_slice(&v.to_le_bytes());
        }
        std::os::unix::fs::FileExt::write_all_at(&self.files[m], buf, block * Self::BLOCK)
            .with_context(|| format!("write block {block} of member {m}"))
    }
}

/// BLAKE3 of `device` (of `total` bytes) read with O_DIRECT.
pub fn device_digest(device: &Path, total: u64) -> Result<Vec<u8>> {
    const CHUNK: usize = 1 << 20;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(device)?;
    let mut raw = vec![0u8; CHUNK + 4096];
    let offset = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[offset..offset + CHUNK];
    let mut hasher = blake3::Hasher::new();
    let mut read = 0u64;
    loop {
        let n = std::io::Read::read(&mut f, buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    ensure!(
        read <= total,
        "the device has {read} bytes, more than its store's {total}"
    );
    let zeros = vec![0u8; CHUNK];
    let mut left = total - read;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        hasher.update(&zeros[..n]);
        left -= n as u64;
    }
    Ok(hasher.finalize().as_bytes().to_vec())
}

/// The two sites. Fields drop in order: the nodes (unmount, stop) before
/// the network namespaces they run in, before their directory.
pub struct Sites {
    /// The metrics listeners of `primary` and `dr` (in their namespaces,
    /// if they have them).
    pub metrics: [std::net::SocketAddr; 2],
    /// The replication listeners of `primary` and `dr`.
    pub listen: [std::net::SocketAddr; 2],
    /// Whether `primary` and `dr` traded places ([`check_promoted`]):
    /// `primary` runs in site 1's namespace then.
    pub swapped: bool,
    /// More primary nodes (`Place::Spread`), before `primary` in drop order
    /// does not matter: each tears itself down.
    pub others: Vec<Node>,
    /// More DR nodes (`Place::Spread`): `dr` runs the group's coordinator.
    pub dr_others: Vec<Node>,
    /// The primary node of each member: 0 `primary`, k `others[k - 1]`.
    pub owner: Vec<usize>,
    /// The DR node of each member: 0 `dr`, k `dr_others[k - 1]`.
    pub dr_owner: Vec<usize>,
    pub primary: Node,
    pub dr: Node,
    pub net: Option<Arc<Net>>,
    /// Between the primary and the DR's listener, if asked for.
    pub proxy: Option<Proxy>,
    pub _dir: tempfile::TempDir,
    pub devices: Vec<PathBuf>,
    pub mounts: Vec<PathBuf>,
    /// Each volume's size.
    pub volume_bytes: u64,
}

/// Where the sites run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Both in this network namespace, over loopback.
    Loopback,
    /// Each in a network namespace of its own, joined by veth pairs.
    Namespaces,
    /// As `Namespaces`, with two nodes per site: the group's members on
    /// different nodes at each site (member m on node m % 2), the group's
    /// coordinator on the DR's first node.
    Spread,
}

/// How [`start_with`] sets the sites up beyond [`start`]'s defaults.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Committed epochs the DR keeps besides the last (`Pair`'s K).
    pub retained: u32,
    /// The volumes' file system.
    pub fs: FsType,
    /// Each volume's size (xfs needs at least 300 MiB).
    pub volume_bytes: u64,
    /// The primary reaches the DR's listener through a [`Proxy`] (loopback
    /// sites only).
    pub proxy: bool,
    /// Every data plane holds its store's unsynced writes in memory, so a
    /// SIGKILL loses what a power cut loses (`FLOE_POWER_CUT`).
    pub power_cut: bool,
    /// The volumes stay raw block devices: no file system, no mount (the
    /// test writes the blocks itself).
    pub raw: bool,
    /// The primary's replication bandwidth (`--replication-limit-bytes`).
    pub limit_bytes_per_second: Option<u64>,
    /// Volumes in the group.
    pub members: usize,
    /// `Place::Spread` only: member m's replica on DR node (m / 2) % 2
    /// rather than m % 2, so each primary node streams to both DR nodes
    /// (each member names its DR listener in `Pair`).
    pub cross: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retained: 0,
            fs: FsType::Ext4,
            volume_bytes: VOLUME_BYTES,
            proxy: false,
            power_cut: false,
            raw: false,
            limit_bytes_per_second: None,
            members: MEMBERS,
            cross: false,
        }
    }
}

/// Both sites started, the group's ext4 volumes made, mounted and paired.
pub fn start(name: &str, mode: Mode, place: Place) -> Result<Sites> {
    start_with(name, mode, place, Options::default())
}

/// [`start`], set up as `opts` says.
pub fn start_with(name: &str, mode: Mode, place: Place, opts: Options) -> Result<Sites> {
    let dir = super::scratch(&format!("sites-{name}"))?;
    let pki = tls::pki(&dir.path().join("tls"))?;
    let net = match place {
        Place::Loopback => None,
        Place::Namespaces | Place::Spread => {
            let nodes = if place == Place::Spread { 2 } else { 1 };
            Some(Arc::new(Net::new(name, 2, nodes, dir.path())?))
        }
    };
    // Each site listens for streams (the primary's listener serves a
    // failback) and serves its metrics.
    let addr = |site: usize, port: u16| -> Result<std::net::SocketAddr> {
        Ok(match &net {
            None => free_loopback()?,
            Some(net) => net.socket(site, 0, port),
        })
    };
    let listen = [addr(0, 7443)?, addr(1, 7443)?];
    let metrics = [addr(0, 9100)?, addr(1, 9100)?];
    let site_args = |files, peer, site: usize| {
        let mut args = tls_args(files, peer);
        args.extend(["--replication-listen".into(), listen[site].to_string()]);
        args.extend(["--metrics-listen".into(), metrics[site].to_string()]);
        args
    };
    let mut primary_args = site_args(&pki.sites[0], SITE_DNS[1], 0);
    if let Some(limit) = opts.limit_bytes_per_second {
        primary_args.extend(["--replication-limit-bytes".into(), limit.to_string()]);
    }
    let dr_args = site_args(&pki.sites[1], SITE_DNS[0], 1);
    let proxy = match (opts.proxy, place) {
        (false, _) => None,
        (true, Place::Loopback) => Some(Proxy::start(listen[1])?),
        (true, _) => bail!("the proxy runs between loopback sites only"),
    };
    let listen_dr = proxy.as_ref().map_or(listen[1], |p| p.addr);
    let mut primary = Node::new(dir.path(), "primary", primary_args.clone())?;
    let mut dr = Node::new(dir.path(), "dr", dr_args)?;
    let mut others = Vec::new();
    let mut dr_others = Vec::new();
    // The second DR node's replication listener, and the first's coordinator
    // listener (the DR's nodes reach each other as site B's nodes).
    let (listen_dr2, coordinator) = match &net {
        Some(net) if place == Place::Spread => (net.socket(1, 1, 7443), Some(net.socket(1, 0, 7444))),
        _ => (listen_dr, None),
    };
    if let Some(coordinator) = coordinator {
        others.push(Node::new(
            dir.path(),
            "primary-2",
            tls_args(&pki.sites[0], SITE_DNS[1]),
        )?);
        // Site B's nodes trust site B's CA and name between themselves.
        let site_b: [String; 4] = [
            "--site-ca".into(),
            pki.sites[1].ca.display().to_string(),
            "--site-name".into(),
            SITE_DNS[1].into(),
        ];
        dr.serve_args.extend(site_b.clone());
        dr.serve_args
            .extend(["--coordinator-listen".into(), coordinator.to_string()]);
        let mut dr2_args = tls_args(&pki.sites[1], SITE_DNS[0]);
        dr2_args.extend(site_b);
        dr2_args.extend(["--replication-listen".into(), listen_dr2.to_string()]);
        dr_others.push(Node::new(dir.path(), "dr-2", dr2_args)?);
    }
    if opts.power_cut {
        for node in [&mut primary, &mut dr]
            .into_iter()
            .chain(others.iter_mut())
            .chain(dr_others.iter_mut())
        {
            node.serve_env
                .push((floe_driver::store::volatile::ENV.into(), "1".into()));
        }
    }
    if let Some(net) = &net {
        let placed = [(&mut primary, 0, 0), (&mut dr, 1, 0)].into_iter();
        let more = others
            .iter_mut()
            .map(|o| (o, 0, 1))
            .chain(dr_others.iter_mut().map(|o| (o, 1, 1)));
        for (node, site, n) in placed.chain(more) {
            let net = Arc::clone(net);
            node.launch_with(Arc::new(move |cmd: &mut std::process::Command| {
                net.within(site, n, || cmd.spawn())
                    .map_err(|e| std::io::Error::other(format!("{e:#}")))?
            }));
        }
    }
    primary.start()?;
    for o in &mut others {
        o.start()?;
    }
    dr.start()?;
    for o in &mut dr_others {
        o.start()?;
    }

    // Member m lives on primary node m % (nodes): each node makes, mounts
    // and pairs its own.
    let owner: Vec<usize> = (0..opts.members).map(|m| m % (1 + others.len())).collect();
    let dr_owner: Vec<usize> = (0..opts.members)
        .map(|m| match (dr_others.is_empty(), opts.cross) {
            (true, _) => 0,
            (false, false) => owner[m],
            (false, true) => (m / 2) % 2,
        })
        .collect();
    let dr_listen = |o: usize| if o == 0 { listen_dr } else { listen_dr2 };
    let (mut devices, mut mounts) = (Vec::new(), Vec::new());
    for (m, &o) in owner.iter().enumerate() {
        let node = if o == 0 { &mut primary } else { &mut others[o - 1] };
        let c = node.client()?;
        c.create_fs(&volume(m), opts.volume_bytes, Some(4096), Some(mode), opts.fs)?;
        let dev = c.attach(&volume(m))?;
        if !opts.raw {
            mounts.push(node.mount_fs(&dev, &volume(m), opts.fs)?);
        }
        devices.push(dev);
    }
    let c = primary.client()?;
    let mut members = vec![wire::GroupMember::default(); opts.members];
    let mut generation = None;
    for o in 0..=others.len() {
        let node = if o == 0 { &primary } else { &others[o - 1] };
        let mine: Vec<usize> = (0..opts.members).filter(|m| owner[*m] == o).collect();
        let paired = c.block_on(
            node.admin().pair(wire::PairRequest {
                group: GROUP.into(),
                role: wire::Role::Primary.into(),
                members: mine
                    .iter()
                    .map(|m| wire::GroupMember {
                        volume: volume(*m),
                        peer_address: if opts.cross {
                            dr_listen(dr_owner[*m]).to_string()
                        } else {
                            String::new()
                        },
                        ..Default::default()
                    })
                    .collect(),
                // Each primary node streams to the DR node of the same rank.
                peer_address: dr_listen(o).to_string(),
                generation: None,
                retained_points: 0,
                ..Default::default()
            }),
        )?;
        ensure!(
            generation.is_none() || generation == paired.generation,
            "the primary nodes answered different generations"
        );
        generation = paired.generation;
        for (m, member) in mine.into_iter().zip(paired.members) {
            members[m] = member;
        }
    }
    for o in 0..=dr_others.len() {
        let node = if o == 0 { &dr } else { &dr_others[o - 1] };
        let spread = !dr_others.is_empty();
        c.block_on(node.admin().pair(wire::PairRequest {
            group: GROUP.into(),
            role: wire::Role::Secondary.into(),
            members: members.clone(),
            peer_address: String::new(),
            generation,
            retained_points: opts.retained,
            coordinator_address: match coordinator {
                Some(addr) if o > 0 => addr.to_string(),
                _ => String::new(),
            },
            hosted_members: if spread {
                (0..opts.members as u32)
                    .filter(|m| dr_owner[*m as usize] == o)
                    .collect()
            } else {
                Vec::new()
            },
        }))?;
    }
    Ok(Sites {
        metrics,
        listen,
        swapped: false,
        others,
        dr_others,
        owner,
        dr_owner,
        _dir: dir,
        net,
        proxy,
        primary,
        dr,
        devices,
        mounts,
        volume_bytes: opts.volume_bytes,
    })
}

impl Sites {
    /// The DR node holding member `m`'s replica.
    pub fn dr_node_of(&self, m: usize) -> &Node {
        match self.dr_owner[m] {
            0 => &self.dr,
            o => &self.dr_others[o - 1],
        }
    }

    /// The `NodeAdmin` of the primary node holding member `m`.
    pub fn admin_of(&self, m: usize) -> floe_driver::node::rpc::member::AdminClient {
        match self.owner[m] {
            0 => self.primary.admin(),
            o => self.others[o - 1].admin(),
        }
    }

    /// A [`record_writer`] on every member's file system until `stop`; the
    /// count of records each acknowledged, and the threads.
    pub fn record_writers(&self, stop: &Arc<AtomicBool>) -> (Vec<Arc<AtomicU64>>, Vec<std::thread::JoinHandle<()>>) {
        let acked: Vec<Arc<AtomicU64>> = self.mounts.iter().map(|_| Arc::default()).collect();
        let writers = self
            .mounts
            .iter()
            .zip(&acked)
            .map(|(m, a)| record_writer(m.clone(), Arc::clone(stop), Arc::clone(a)))
            .collect();
        (acked, writers)
    }

    /// Every member as a group-freeze member, in member order.
    pub fn members(&self) -> Vec<Arc<dyn FreezeMember>> {
        (0..self.owner.len())
            .map(|m| Arc::new(self.admin_of(m).member(&volume(m))) as Arc<dyn FreezeMember>)
            .collect()
    }
}

impl Sites {
    /// Waits until the DR has committed `epoch` on every member, then
    /// checks each member's image equals `digests` (the primary's images
    /// read while frozen at `epoch`).
    pub fn check_dr_exact(&self, client: &super::plane::PlaneClient, epoch: u64, digests: &[Vec<u8>]) -> Result<()> {
        for (m, want) in digests.iter().enumerate() {
            let dadmin = self.dr_node_of(m).admin();
            let mut got = None;
            wait_until(
                &format!("epoch {epoch} committed at the DR"),
                Duration::from_secs(120),
                || {
                    got = client
                        .block_on(dadmin.verify(&volume(m), epoch, self.volume_bytes))
                        .ok();
                    Ok(got.is_some())
                },
            )
            .with_context(|| self.logs())?;
            let got = got.context("verified")?;
            ensure!(
                got.epoch == epoch && got.hash == *want,
                "epoch {epoch}, {}: the DR's image differs from the primary's frozen image",
                volume(m)
            );
        }
        Ok(())
    }
}

impl Sites {
    /// The Prometheus text the primary's data plane serves.
    pub fn scrape_primary(&self) -> Result<String> {
        self.scrape(0)
    }

    /// The Prometheus text `primary` (0) or `dr` (1) serves.
    pub fn scrape(&self, node: usize) -> Result<String> {
        let conn = match &self.net {
            None => std::net::TcpStream::connect(self.metrics[node])?,
            Some(net) => net.connect(
                node ^ usize::from(self.swapped),
                0,
                self.metrics[node],
                Duration::from_secs(10),
            )??,
        };
        scrape(conn)
    }

    /// The last lines of both nodes' `serve` logs, for a failure's context.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let nodes = [&self.primary, &self.dr]
            .into_iter()
            .chain(&self.others)
            .chain(&self.dr_others);
        for node in nodes {
            out.push_str(&format!("{} log:\n{}\n", node.name, node.log_tail()));
        }
        out
    }

    /// After a failover: the promoted DR node is `primary` from now on,
    /// with `devices` and `mounts` its members', and the old primary `dr`.
    pub fn swap_roles(&mut self, devices: Vec<PathBuf>, mounts: Vec<PathBuf>) {
        assert!(self.others.is_empty() && self.dr_others.is_empty(), "one node per site");
        std::mem::swap(&mut self.primary, &mut self.dr);
        self.metrics.swap(0, 1);
        self.listen.swap(0, 1);
        self.swapped = !self.swapped;
        self.devices = devices;
        self.mounts = mounts;
    }
}

/// The value of the metric line that starts with `name` (labels included).
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The Prometheus text a data plane answers on `conn`.
fn scrape(mut conn: std::net::TcpStream) -> Result<String> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: floe\r\n\r\n")?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut conn, &mut out)?;
    ensure!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "scrape: {out}"
    );
    Ok(out)
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Freezes the group at `epoch` step by step as a controller would,
/// reading each primary device while frozen; returns their digests.
pub async fn freeze_and_read(s: &Sites, members: &[Arc<dyn FreezeMember>], epoch: u64) -> Result<Vec<Vec<u8>>> {
    let token = Token::fresh()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    for m in members {
        m.quiesce(&token, deadline)
            .await
            .map_err(|e| anyhow::anyhow!("quiesce {}: {e}", m.name()))?;
    }
    let flipped = async {
        for m in members {
            m.freeze(epoch, &token)
                .await
                .map_err(|e| anyhow::anyhow!("freeze {}: {e}", m.name()))?;
        }
        let mut digests = Vec::new();
        for dev in &s.devices {
            let dev = dev.clone();
            let bytes = s.volume_bytes;
            digests.push(tokio::task::spawn_blocking(move || device_digest(&dev, bytes)).await??);
        }
        anyhow::Ok(digests)
    }
    .await;
    for m in members {
        m.thaw(&token)
            .await
            .map_err(|e| anyhow::anyhow!("thaw {}: {e}", m.name()))?;
    }
    flipped
}

/// Bytes of one record of [`record_writer`].
pub const RECORD_BYTES: u64 = 125;

/// Appends fsynced numbered records to `dir/log` (after those it holds)
/// until `stop` or an I/O error (the site dies); `acked` is the number of
/// records the log holds acknowledged.
pub fn record_writer(dir: PathBuf, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))
        else {
            return;
        };
        // A log a writer before this one left goes on where it ends.
        let mut i = gap_free_records(&dir.join("log")).unwrap_or(0);
        acked.store(i, Ordering::SeqCst);
        while !stop.load(Ordering::Relaxed) {
            let record = format!("record {i:016} {}\n", "y".repeat(100));
            debug_assert_eq!(record.len() as u64, RECORD_BYTES);
            if f.write_all(record.as_bytes()).and_then(|()| f.sync_data()).is_err() {
                return;
            }
            i += 1;
            acked.store(i, Ordering::SeqCst);
        }
    })
}

/// The records in `log`: a gap-free run from 0; their count.
pub fn gap_free_records(log: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(log)?;
    let mut n = 0u64;
    for line in text.lines() {
        let i: u64 = line
            .strip_prefix("record ")
            .and_then(|r| r.get(..16))
            .and_then(|d| d.parse().ok())
            .with_context(|| format!("{}: record {n} is not a record: {line:?}", log.display()))?;
        ensure!(i == n, "{}: record {n} is followed by record {i}", log.display());
        n += 1;
    }
    Ok(n)
}

/// What the primary site committed before it was lost, per epoch from 1.
pub struct Committed {
    /// The records each member had acknowledged before the epoch's freeze.
    pub acked: Vec<Vec<u64>>,
    /// Each member's device digest, read while the epoch was frozen.
    pub digests: Vec<Vec<Vec<u8>>>,
}

/// The failover scenario's first half: under record writers, `epochs`
/// group epochs each frozen (the devices read while frozen) and waited for
/// at the DR; then records of the next epoch streaming; then the primary
/// site lost, its uplink down and every process killed.
pub fn commit_then_lose_the_primary(s: &mut Sites, epochs: u64) -> Result<Committed> {
    commit_then_lose_the_primary_with(s, epochs, |_, _| Ok(()))
}

/// [`commit_then_lose_the_primary`], calling `after(s, epoch)` once each
/// epoch has committed (before the next one is frozen).
pub fn commit_then_lose_the_primary_with(
    s: &mut Sites,
    epochs: u64,
    mut after: impl FnMut(&Sites, u64) -> Result<()>,
) -> Result<Committed> {
    let client = s.primary.client()?;
    let dadmin = s.dr.admin();
    let members = s.members();
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, writers) = s.record_writers(&stop);
    let mut committed = Committed {
        acked: Vec::new(),
        digests: Vec::new(),
    };
    for epoch in 1..=epochs {
        wait_until("the members are ready", Duration::from_secs(120), || {
            Ok(members.iter().all(|m| client.block_on(m.ready(epoch)).is_ok()))
        })?;
        committed
            .acked
            .push(acked.iter().map(|a| a.load(Ordering::SeqCst)).collect());
        committed
            .digests
            .push(client.block_on(freeze_and_read(s, &members, epoch))?);
        wait_until(
            &format!("epoch {epoch} committed at the DR"),
            Duration::from_secs(120),
            || Ok(client.block_on(dadmin.verify(&volume(0), epoch, VOLUME_BYTES)).is_ok()),
        )?;
        after(s, epoch)?;
    }
    // Mid-epoch: writes of the next epoch streaming, then the site is gone.
    let more = acked[0].load(Ordering::SeqCst) + 50;
    wait_until("more records written", Duration::from_secs(60), || {
        Ok(acked[0].load(Ordering::SeqCst) >= more)
    })?;
    s.net.clone().context("namespaces")?.link_down(0)?;
    s.primary.kill_all()?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    Ok(committed)
}

/// Record writers on `s`'s primary until each member's log holds `n` more
/// records, then stopped.
pub fn write_records(s: &Sites, n: u64) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, writers) = s.record_writers(&stop);
    let start: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let written = wait_until("records written", Duration::from_secs(60), || {
        Ok(acked.iter().zip(&start).all(|(a, s)| a.load(Ordering::SeqCst) >= s + n))
    });
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().map_err(|_| anyhow::anyhow!("a writer panicked"))?;
    }
    written
}

/// After a promotion: each member's volume attached on the DR node, its
/// file system `e2fsck -fn` clean, mounted, its records a gap-free prefix
/// holding the `acked[m]` acknowledged before the promoted cut's freeze,
/// and writable; then the sites trade roles ([`Sites::swap_roles`]). The
/// records each holds.
pub fn check_promoted(s: &mut Sites, acked: &[u64]) -> Result<Vec<u64>> {
    let dr = s.dr.client()?;
    let mut held = Vec::new();
    let (mut devices, mut mounts) = (Vec::new(), Vec::new());
    for (m, &want) in acked.iter().enumerate() {
        let device = dr.attach(&volume(m))?;
        let out = std::process::Command::new("e2fsck").arg("-fn").arg(&device).output()?;
        ensure!(
            out.status.success(),
            "e2fsck -fn of the promoted {}: {}",
            volume(m),
            String::from_utf8_lossy(&out.stdout)
        );
        let mnt = s.dr.mount_ext4(&device, &volume(m))?;
        let n = gap_free_records(&mnt.join("log"))?;
        ensure!(
            n >= want,
            "{}: {n} records after promote, but {want} were acknowledged before the cut's freeze",
            volume(m)
        );
        std::fs::write(mnt.join("after-failover"), b"written on the new primary")?;
        held.push(n);
        devices.push(device);
        mounts.push(mnt);
    }
    s.swap_roles(devices, mounts);
    Ok(held)
}
