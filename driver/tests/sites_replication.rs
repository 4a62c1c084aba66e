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

use common::site::Node;
use common::tls::{self, CONTROLLER_DNS, NODE_DNS};

const GROUP: &str = "orders";
const MEMBERS: usize = 2;
const MIB: u64 = 1 << 20;

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

/// BLAKE3 of `device` read with O_DIRECT, then zeros up to `total` bytes
/// (the store's geometry, larger than the volume).
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

struct Sites {
    _dir: tempfile::TempDir,
    primary: Node,
    dr: Node,
    devices: Vec<PathBuf>,
    mounts: Vec<PathBuf>,
    /// Bytes of each member's store.
    store_bytes: Vec<u64>,
}

/// Both sites started, the group's volumes made, mounted and paired.
fn start(name: &str, mode: Mode) -> Result<Sites> {
    let dir = common::scratch(&format!("sites-{name}"))?;
    let pki = tls::pki(&dir.path().join("tls"))?;
    let port = free_port()?;
    let primary_args = tls_args(&pki.controller, NODE_DNS);
    let mut dr_args = tls_args(&pki.node, CONTROLLER_DNS);
    dr_args.extend(["--replication-listen".into(), format!("127.0.0.1:{port}")]);
    let mut primary = Node::new(dir.path(), "primary", primary_args)?;
    let mut dr = Node::new(dir.path(), "dr", dr_args)?;
    primary.start(&|_| {})?;
    dr.start(&|_| {})?;

    let c = primary.client()?;
    let (mut devices, mut mounts) = (Vec::new(), Vec::new());
    for m in 0..MEMBERS {
        c.create(&volume(m), 64 * MIB, Some(4096), Some(mode))?;
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
            peer_address: format!("127.0.0.1:{port}"),
            generation: None,
        }),
    )?;
    let store_bytes = paired.members.iter().map(|m| m.block_size * m.blocks).collect();
    c.block_on(dr.admin().pair(wire::PairRequest {
        group: GROUP.into(),
        role: wire::Role::Secondary.into(),
        members: paired.members.clone(),
        peer_address: String::new(),
        generation: paired.generation,
    }))?;
    Ok(Sites {
        _dir: dir,
        primary,
        dr,
        devices,
        mounts,
        store_bytes,
    })
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
        for (dev, total) in s.devices.iter().zip(&s.store_bytes) {
            let (dev, total) = (dev.clone(), *total);
            digests.push(tokio::task::spawn_blocking(move || device_digest(&dev, total)).await??);
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

fn run_epochs(name: &str, mode: Mode, epochs: u64) -> Result<()> {
    let s = start(name, mode)?;
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
            let digests = client.block_on(freeze_and_read(&s, &members, epoch))?;
            for (m, want) in digests.iter().enumerate() {
                let mut got = None;
                wait_until(
                    &format!("epoch {epoch} committed at the DR"),
                    Duration::from_secs(120),
                    || {
                        got = client.block_on(dadmin.verify(&volume(m), epoch)).ok();
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
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().map_err(|_| anyhow::anyhow!("a writer panicked"))??;
    }
    result?;
    ensure!(written.load(Ordering::Relaxed) > 0, "the writers wrote nothing");
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

#[test]
fn a_group_replicates_between_two_data_planes_at_every_committed_epoch() -> Result<()> {
    if !ready("a_group_replicates_between_two_data_planes_at_every_committed_epoch") {
        return Ok(());
    }
    run_epochs("continuous", Mode::Continuous, 5)
}
