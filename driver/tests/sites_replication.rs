//! Two sites as separate process trees: a primary node and a DR node, each
//! `floe-dataplane holder` + `serve`, the primary's volumes carrying ext4
//! under a writer that fsyncs every record, the DR holding the replicas and
//! the group's coordinator. The test drives the group freeze over each
//! node's `NodeAdmin` as a controller would, reads the primary's devices
//! while they are frozen, and checks that the DR's consistent images reach
//! exactly those bytes at every committed epoch, and that they are clean
//! ext4 at the end.
//!
//! Needs root, `/dev/fuse`, loop devices and `mkfs.ext4`/`e2fsck`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use floe_driver::node::rpc::member::AdminClient;
use floe_driver::replication::freeze::{FreezeMember, Token};
use floe_engine::Mode;
use floe_proto::node as wire;

mod common;

use common::netns::Net;
use common::site::Node;
use common::tls::{self, CONTROLLER_DNS, NODE_DNS};

const GROUP: &str = "orders";
const MEMBERS: usize = 2;
const MIB: u64 = 1 << 20;
/// Size of each volume (its store has room to grow far beyond).
const VOLUME_BYTES: u64 = 64 * MIB;

fn ready(test: &str) -> bool {
    common::privileged(test) && common::tool_present("mkfs.ext4") && common::tool_present("e2fsck")
}

fn volume(m: usize) -> String {
    format!("pvc-{m}")
}

/// A free TCP port on loopback (the DR binds it right after).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tls_args(files: &floe_driver::csi::remote::TlsFiles, peer: &str) -> Vec<String> {
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
fn writer(dir: PathBuf, stop: Arc<AtomicBool>, written: Arc<AtomicU64>) -> std::thread::JoinHandle<Result<()>> {
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

/// BLAKE3 of `device` (of `total` bytes) read with O_DIRECT.
fn device_digest(device: &Path, total: u64) -> Result<Vec<u8>> {
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
struct Sites {
    /// The primary's metrics listener (loopback runs).
    metrics: Option<std::net::SocketAddr>,
    primary: Node,
    dr: Node,
    net: Option<Arc<Net>>,
    _dir: tempfile::TempDir,
    devices: Vec<PathBuf>,
    mounts: Vec<PathBuf>,
}

/// Where the sites run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Both in this network namespace, over loopback.
    Loopback,
    /// Each in a network namespace of its own, joined by veth pairs.
    Namespaces,
}

/// Both sites started, the group's volumes made, mounted and paired.
fn start(name: &str, mode: Mode, place: Place) -> Result<Sites> {
    let dir = common::scratch(&format!("sites-{name}"))?;
    let pki = tls::pki(&dir.path().join("tls"))?;
    let (net, listen) = match place {
        Place::Loopback => (None, std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?))),
        Place::Namespaces => {
            let net = Arc::new(Net::pair(name, dir.path())?);
            let addr = net.socket(1, 0, 7443);
            (Some(net), addr)
        }
    };
    let mut primary_args = tls_args(&pki.controller, NODE_DNS);
    let metrics = match place {
        Place::Loopback => {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
            primary_args.extend(["--metrics-listen".into(), addr.to_string()]);
            Some(addr)
        }
        Place::Namespaces => None,
    };
    let mut dr_args = tls_args(&pki.node, CONTROLLER_DNS);
    dr_args.extend(["--replication-listen".into(), listen.to_string()]);
    let mut primary = Node::new(dir.path(), "primary", primary_args)?;
    let mut dr = Node::new(dir.path(), "dr", dr_args)?;
    if let Some(net) = &net {
        for (node, site) in [(&mut primary, 0), (&mut dr, 1)] {
            let net = Arc::clone(net);
            node.launch_with(Arc::new(move |cmd: &mut std::process::Command| {
                net.within(site, 0, || cmd.spawn())
                    .map_err(|e| std::io::Error::other(format!("{e:#}")))?
            }));
        }
    }
    primary.start()?;
    dr.start()?;

    let c = primary.client()?;
    let (mut devices, mut mounts) = (Vec::new(), Vec::new());
    for m in 0..MEMBERS {
        c.create(&volume(m), VOLUME_BYTES, Some(4096), Some(mode))?;
        let dev = c.attach(&volume(m))?;
        mounts.push(primary.mount_ext4(&dev, &volume(m))?);
        devices.push(dev);
    }
    let paired = c.block_on(
        primary.admin().pair(wire::PairRequest {
            group: GROUP.into(),
            role: wire::Role::Primary.into(),
            members: (0..MEMBERS)
                .map(|m| wire::GroupMember {
                    volume: volume(m),
                    ..Default::default()
                })
                .collect(),
            peer_address: listen.to_string(),
            generation: None,
        }),
    )?;
    c.block_on(dr.admin().pair(wire::PairRequest {
        group: GROUP.into(),
        role: wire::Role::Secondary.into(),
        members: paired.members.clone(),
        peer_address: String::new(),
        generation: paired.generation,
    }))?;
    Ok(Sites {
        metrics,
        _dir: dir,
        net,
        primary,
        dr,
        devices,
        mounts,
    })
}

/// The Prometheus text a data plane serves at `addr`.
fn scrape(addr: std::net::SocketAddr) -> Result<String> {
    let mut conn = std::net::TcpStream::connect(addr)?;
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
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
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
async fn freeze_and_read(s: &Sites, members: &[Arc<dyn FreezeMember>], epoch: u64) -> Result<Vec<Vec<u8>>> {
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
            digests.push(tokio::task::spawn_blocking(move || device_digest(&dev, VOLUME_BYTES)).await??);
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

/// What happens to the sites between two epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Nothing.
    None,
    /// Every few epochs a data plane is stopped and started again, in turn:
    /// the primary's with SIGTERM (a handover), the DR's with SIGKILL, the
    /// primary's with SIGKILL, the DR's with SIGTERM.
    Restarts,
    /// The primary site's link goes down while the epoch's writes stream,
    /// the epoch is frozen with the link down, and the link comes back.
    LinkCuts,
}

fn run_epochs(name: &str, mode: Mode, epochs: u64, fault: Fault) -> Result<()> {
    let place = match fault {
        Fault::LinkCuts => Place::Namespaces,
        Fault::None | Fault::Restarts => Place::Loopback,
    };
    let mut s = start(name, mode, place)?;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = s
        .mounts
        .iter()
        .map(|m| writer(m.clone(), Arc::clone(&stop), Arc::clone(&written)))
        .collect();
    let client = s.primary.client()?;
    let (padmin, dadmin): (AdminClient, AdminClient) = (s.primary.admin(), s.dr.admin());
    let members: Vec<Arc<dyn FreezeMember>> = (0..MEMBERS)
        .map(|m| Arc::new(padmin.member(&volume(m))) as Arc<dyn FreezeMember>)
        .collect();
    let result = (|| -> Result<()> {
        for epoch in 1..=epochs {
            // The previous epoch must be resolved before this one is taken.
            wait_until("the members are ready", Duration::from_secs(120), || {
                Ok(members.iter().all(|m| client.block_on(m.ready(epoch)).is_ok()))
            })?;
            let cut = match (&s.net, fault) {
                (Some(net), Fault::LinkCuts) => {
                    net.link_down(0)?;
                    Some(net)
                }
                _ => None,
            };
            let digests = client.block_on(freeze_and_read(&s, &members, epoch))?;
            if let Some(net) = cut {
                // Frozen and thawed with the link down: the DR cannot have
                // the epoch yet.
                ensure!(
                    client.block_on(dadmin.verify(&volume(0), epoch, VOLUME_BYTES)).is_err(),
                    "epoch {epoch} committed at the DR while the link was down"
                );
                net.link_up(0)?;
            }
            for (m, want) in digests.iter().enumerate() {
                let mut got = None;
                wait_until(
                    &format!("epoch {epoch} committed at the DR"),
                    Duration::from_secs(120),
                    || {
                        got = client.block_on(dadmin.verify(&volume(m), epoch, VOLUME_BYTES)).ok();
                        Ok(got.is_some())
                    },
                )
                .with_context(|| format!("{}\n--- dr:\n{}", s.primary.log_tail(), s.dr.log_tail()))?;
                let got = got.context("verified")?;
                ensure!(
                    got.epoch == epoch && got.hash == *want,
                    "epoch {epoch}, {}: the DR's image differs from the primary's frozen image",
                    volume(m)
                );
            }
            let status = client.block_on(padmin.status(&volume(0)))?;
            ensure!(status.link == "up", "link of {}: {:?}", volume(0), status.link);
            if fault == Fault::Restarts && epoch % 3 == 0 {
                use rustix::process::Signal;
                let (node, signal) = match (epoch / 3) % 4 {
                    1 => (&mut s.primary, Signal::TERM),
                    2 => (&mut s.dr, Signal::KILL),
                    3 => (&mut s.primary, Signal::KILL),
                    _ => (&mut s.dr, Signal::TERM),
                };
                eprintln!("after epoch {epoch}: {signal:?} to the {} data plane", node.name);
                node.stop_serve(signal)?;
                node.start_serve()?;
            }
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().map_err(|_| anyhow::anyhow!("a writer panicked"))??;
    }
    result?;
    ensure!(written.load(Ordering::Relaxed) > 0, "the writers wrote nothing");
    if let Some(addr) = s.metrics {
        let text = scrape(addr)?;
        for m in 0..MEMBERS {
            let line = format!("floe_sender_sent_blocks_total{{volume=\"{}\"}}", volume(m));
            let sent: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&line))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no {line} in the metrics:\n{text}"))?;
            ensure!(sent > 0, "{line} is {sent}");
        }
    }
    // The DR's images at the last epoch are clean ext4.
    for m in 0..MEMBERS {
        let image =
            s.dr.dir
                .join("data/replication/dr/volumes")
                .join(volume(m))
                .join("image");
        let out = std::process::Command::new("e2fsck").arg("-fn").arg(&image).output()?;
        ensure!(
            out.status.success(),
            "e2fsck -fn of the DR's {}: {}{}",
            volume(m),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = client;
    Ok(())
}

/// Committed epochs per mode (the acceptance asks for at least 20).
const EPOCHS: u64 = 20;

/// The primary site cut off from the DR at every epoch (20 cycles), the
/// sites in network namespaces of their own: the stream resumes and every
/// epoch still reaches the DR byte for byte.
#[test]
fn link_cuts_between_network_namespaces_keep_the_dr_exact() -> Result<()> {
    if !ready("link_cuts_between_network_namespaces_keep_the_dr_exact") {
        return Ok(());
    }
    run_epochs("cuts", Mode::Continuous, EPOCHS, Fault::LinkCuts)
}

#[test]
fn continuous_mode_replicates_a_group_between_two_data_planes_at_every_epoch() -> Result<()> {
    if !ready("continuous_mode_replicates_a_group_between_two_data_planes_at_every_epoch") {
        return Ok(());
    }
    run_epochs("continuous", Mode::Continuous, EPOCHS, Fault::None)
}

#[test]
fn log_mode_replicates_a_group_between_two_data_planes_at_every_epoch() -> Result<()> {
    if !ready("log_mode_replicates_a_group_between_two_data_planes_at_every_epoch") {
        return Ok(());
    }
    run_epochs("log", Mode::Log, EPOCHS, Fault::None)
}

#[test]
fn interval_mode_replicates_a_group_between_two_data_planes_at_every_epoch() -> Result<()> {
    if !ready("interval_mode_replicates_a_group_between_two_data_planes_at_every_epoch") {
        return Ok(());
    }
    run_epochs("interval", Mode::Interval, EPOCHS, Fault::None)
}

/// Handovers and crashes of either site's data plane under the writers:
/// no host I/O error (the writers fsync every record), the streams resume,
/// and every later epoch still reaches the DR byte for byte.
#[test]
fn restarts_and_crashes_of_either_data_plane_keep_the_dr_exact() -> Result<()> {
    if !ready("restarts_and_crashes_of_either_data_plane_keep_the_dr_exact") {
        return Ok(());
    }
    run_epochs("restarts", Mode::Continuous, 13, Fault::Restarts)
}

/// A paired primary volume detached (its sender stopped first, so the
/// detach lets go of the engine) and attached again (its sender started
/// again): the next epoch still reaches the DR byte for byte.
#[test]
fn a_paired_volume_detaches_and_reattaches_with_its_stream() -> Result<()> {
    if !ready("a_paired_volume_detaches_and_reattaches_with_its_stream") {
        return Ok(());
    }
    let mut s = start("reattach", Mode::Continuous, Place::Loopback)?;
    let client = s.primary.client()?;
    let (padmin, dadmin) = (s.primary.admin(), s.dr.admin());
    let members: Vec<Arc<dyn FreezeMember>> = (0..MEMBERS)
        .map(|m| Arc::new(padmin.member(&volume(m))) as Arc<dyn FreezeMember>)
        .collect();
    let commit = |s: &Sites, epoch: u64| -> Result<()> {
        let digests = client.block_on(freeze_and_read(s, &members, epoch))?;
        for (m, want) in digests.iter().enumerate() {
            let mut got = None;
            wait_until(
                &format!("epoch {epoch} committed at the DR"),
                Duration::from_secs(120),
                || {
                    got = client.block_on(dadmin.verify(&volume(m), epoch, VOLUME_BYTES)).ok();
                    Ok(got.is_some())
                },
            )?;
            ensure!(
                got.context("verified")?.hash == *want,
                "epoch {epoch}: {} differs",
                volume(m)
            );
        }
        Ok(())
    };
    std::fs::write(s.mounts[0].join("before"), vec![7u8; 1 << 20])?;
    commit(&s, 1)?;
    let target = s.mounts[0].clone();
    s.primary.unmount(&target)?;
    client.detach(&volume(0))?;
    let status = client.block_on(padmin.status(&volume(0)))?;
    ensure!(
        status.link.is_empty(),
        "a detached volume still streams: {:?}",
        status.link
    );
    let device = client.attach(&volume(0))?;
    s.devices[0] = device.clone();
    let again = s.primary.mount_ext4(&device, &volume(0))?;
    std::fs::write(again.join("after"), vec![9u8; 1 << 20])?;
    wait_until("the members are ready", Duration::from_secs(120), || {
        Ok(members.iter().all(|m| client.block_on(m.ready(2)).is_ok()))
    })?;
    commit(&s, 2)?;
    let status = client.block_on(padmin.status(&volume(0)))?;
    ensure!(status.link == "up", "the stream did not come back: {:?}", status.link);
    Ok(())
}

/// Appends fsynced numbered records to `dir/log` until `stop` or an I/O
/// error (the site dies); `acked` is the number of records acknowledged.
fn record_writer(dir: PathBuf, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))
        else {
            return;
        };
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let record = format!("record {i:016} {}\n", "y".repeat(100));
            if f.write_all(record.as_bytes()).and_then(|()| f.sync_data()).is_err() {
                return;
            }
            i += 1;
            acked.store(i, Ordering::SeqCst);
        }
    })
}

/// The records in `log`: a gap-free run from 0; their count.
fn gap_free_records(log: &Path) -> Result<u64> {
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

/// The primary site dies mid-epoch (its link cut, every process SIGKILLed)
/// with the group's writers running; the DR is promoted: every member at
/// one committed cut, at least the last one the test saw committed; each
/// file system is clean ext4 and its records a gap-free prefix holding
/// every record acknowledged before that cut's freeze.
#[test]
fn unplanned_failover_promotes_the_dr_at_the_last_committed_cut() -> Result<()> {
    if !ready("unplanned_failover_promotes_the_dr_at_the_last_committed_cut") {
        return Ok(());
    }
    for mode in [Mode::Continuous, Mode::Log, Mode::Interval] {
        failover(mode).with_context(|| format!("{mode:?} mode"))?;
    }
    Ok(())
}

fn failover(mode: Mode) -> Result<()> {
    let mut s = start(&format!("failover-{}", mode.name()), mode, Place::Namespaces)?;
    let client = s.primary.client()?;
    let (padmin, dadmin) = (s.primary.admin(), s.dr.admin());
    let members: Vec<Arc<dyn FreezeMember>> = (0..MEMBERS)
        .map(|m| Arc::new(padmin.member(&volume(m))) as Arc<dyn FreezeMember>)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Vec<Arc<AtomicU64>> = (0..MEMBERS).map(|_| Arc::default()).collect();
    let writers: Vec<_> = s
        .mounts
        .iter()
        .zip(&acked)
        .map(|(m, a)| record_writer(m.clone(), Arc::clone(&stop), Arc::clone(a)))
        .collect();
    // Records acknowledged before each epoch's freeze, per member.
    let mut acked_at = Vec::new();
    let epochs = 4;
    for epoch in 1..=epochs {
        wait_until("the members are ready", Duration::from_secs(120), || {
            Ok(members.iter().all(|m| client.block_on(m.ready(epoch)).is_ok()))
        })?;
        let before: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        client.block_on(freeze_and_read(&s, &members, epoch))?;
        acked_at.push(before);
        wait_until(
            &format!("epoch {epoch} committed at the DR"),
            Duration::from_secs(120),
            || Ok(client.block_on(dadmin.verify(&volume(0), epoch, VOLUME_BYTES)).is_ok()),
        )?;
    }
    // Mid-epoch: writes of the next epoch streaming, then the site is gone.
    let more = acked[0].load(Ordering::SeqCst) + 50;
    wait_until("more records written", Duration::from_secs(60), || {
        Ok(acked[0].load(Ordering::SeqCst) >= more)
    })?;
    let old = client
        .block_on(padmin.status(&volume(0)))?
        .generation
        .context("the primary's generation")?;
    let net = s.net.clone().context("namespaces")?;
    net.link_down(0)?;
    s.primary.kill_all()?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }

    let dr = s.dr.client()?;
    let epoch = client.block_on(dadmin.promote(GROUP, 2))?;
    ensure!(
        epoch >= epochs,
        "promoted at epoch {epoch}, before the last committed {epochs}"
    );
    // Promote again: the same answer.
    ensure!(
        client.block_on(dadmin.promote(GROUP, 2))? == epoch,
        "a second promote differs"
    );
    let status = client.block_on(dadmin.status(&volume(0)))?;
    ensure!(
        status.role() == wire::Role::Primary
            && status
                .generation
                .is_some_and(|g| g.counter == old.counter + 1 && g.site_id == 2),
        "after promote: {status:?}"
    );
    for (m, &want) in acked_at[(epoch - 1) as usize].iter().enumerate() {
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
            "{}: {n} records after promote, but {want} were acknowledged before epoch {epoch}'s freeze",
            volume(m)
        );
        // The promoted volume takes writes.
        std::fs::write(mnt.join("after-failover"), b"written on the new primary")?;
        eprintln!("{mode:?}: {} holds {n} records (≥ {want}) at epoch {epoch}", volume(m));
    }
    Ok(())
}
