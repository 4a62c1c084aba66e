//! SIGKILL of the data plane in the middle of a snapshot's copy (issue 13):
//! a CSI snapshot is marked while the file system is frozen and copied after
//! the thaw, and a data plane that dies during that copy must leave the
//! snapshot either complete and equal to the frozen image, or failed —
//! never a partial snapshot that exists.
//!
//! The node: `floe-dataplane holder` and `floe-dataplane serve` as child
//! processes, the CSI services in this process calling the data plane over
//! its socket, as `floe-csi` does. An ext4 volume holds a few hundred MiB of
//! data (so the copy takes seconds) and a writer appends numbered records,
//! fsyncing each. CreateSnapshot is sent; the test watches the copy's
//! progress record in the store and SIGKILLs `serve` as soon as the copy is
//! partway. Then:
//! - the call has failed (the data plane died under it), and after a
//!   successor has taken the volume over, nothing of the snapshot is left:
//!   no partial copy, no progress record, not listed, and the successor's
//!   log names it failed;
//! - the writer went on without an error;
//! - CreateSnapshot retried with the same name succeeds, and the snapshot,
//!   restored, passes `e2fsck -fn` and holds the records 1..k with k at
//!   least the last one acknowledged before the retry.
//!
//! If the copy had finished before the kill landed (it is watched to be
//! partway, so it should not), the snapshot must instead be listed and
//! pass the same restore check.
//!
//! Needs root, /dev/fuse, loop devices, mkfs.ext4 and e2fsck: in CI (`CI`
//! set) their absence is a failure, elsewhere the test is skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use floe_driver::cli::PluginMode;
use floe_driver::csi::controller::ControllerService;
use floe_driver::csi::node::NodeService;
use floe_driver::csi::Plugin;
use floe_driver::dataplane::mount::{self, FsType, MountedFs};
use floe_driver::node::rpc::client::RemoteVolumes;
use floe_proto::csi;
use floe_proto::csi::controller_server::Controller;
use floe_proto::csi::node_server::Node as _;
use rustix::mount::MountFlags;
use tonic::Request;

mod common;

use common::csi::{
    block_cap, create_req, mount_cap, restore_req, start_holder, sweep, unstage_req, wait_for_socket, DATAPLANE,
};

const SIZE: i64 = 1 << 30;
/// Data written before the snapshot, so that its copy lasts.
const FILL_MIB: usize = 384;

/// Holder and data plane as processes, on a scratch dir.
struct Node {
    dir: tempfile::TempDir,
    holder: Option<Child>,
    serve: Option<Child>,
    serves: usize,
}

impl Node {
    fn start() -> Result<Self> {
        let dir = common::scratch("snap-kill")?;
        let mut node = Node {
            holder: Some(start_holder(&dir.path().join("run"), &dir.path().join("holder.log"))?),
            dir,
            serve: None,
            serves: 0,
        };
        node.spawn_serve()?;
        Ok(node)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn serve_log(&self, n: usize) -> PathBuf {
        self.path(&format!("serve-{n}.log"))
    }

    fn spawn_serve(&mut self) -> Result<()> {
        // A killed data plane's socket file stays behind: wait for the new one.
        let _ = std::fs::remove_file(self.path("run/dataplane.sock"));
        self.serves += 1;
        let child = Command::new(DATAPLANE)
            .arg("serve")
            .arg("--data-dir")
            .arg(self.path("data"))
            .arg("--run-dir")
            .arg(self.path("run"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.serve_log(self.serves))?)
            .spawn()?;
        self.serve = Some(child);
        wait_for_socket(&self.path("run/dataplane.sock"))
    }

    fn kill_serve(&mut self) -> Result<()> {
        let mut s = self.serve.take().context("serve is running")?;
        s.kill()?;
        s.wait()?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        sweep(self.dir.path());
        for mut c in [self.serve.take(), self.holder.take()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        sweep(self.dir.path());
    }
}

/// Files of snapshots being copied in any store: (path, next, blocks) for
/// each progress record, and the partial copies.
fn copies_in_progress(data: &Path) -> (Vec<(PathBuf, u64, u64)>, Vec<PathBuf>) {
    let mut progress = Vec::new();
    let mut parts = Vec::new();
    let stores = std::fs::read_dir(data.join("volumes")).into_iter().flatten().flatten();
    for store in stores {
        for e in std::fs::read_dir(store.path().join("snapshots"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".img.part") {
                parts.push(e.path());
            } else if name.ends_with(".progress") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let mut it = text.split_whitespace().map(|n| n.parse::<u64>().unwrap_or(0));
                let (next, blocks) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                progress.push((e.path(), next, blocks));
            }
        }
    }
    (progress, parts)
}

/// The writer: record k appended and fsynced before k+1.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<Result<()>>,
}

impl Writer {
    fn start(dir: &Path) -> Result<Self> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&acked));
        let handle = std::thread::spawn(move || -> Result<()> {
            let mut k = 1u64;
            while !s.load(Ordering::SeqCst) {
                f.write_all(format!("{k}\n").as_bytes())
                    .with_context(|| format!("write record {k}"))?;
                f.sync_all().with_context(|| format!("fsync record {k}"))?;
                a.store(k, Ordering::SeqCst);
                k += 1;
            }
            Ok(())
        });
        Ok(Writer { stop, acked, handle })
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until record `n` is acknowledged (the writer's own progress).
    async fn wait_past(&self, n: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acked() < n {
            ensure!(
                !self.handle.is_finished(),
                "the writer stopped at record {}",
                self.acked()
            );
            ensure!(
                Instant::now() < deadline,
                "the writer did not reach record {n} (at {})",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok(self.acked.load(Ordering::SeqCst))
    }
}

/// Fills `dir/fill` with `mib` MiB of bytes that are not zeroes, fsynced.
fn fill(dir: &Path, mib: usize) -> Result<()> {
    let mut f = std::fs::File::create(dir.join("fill"))?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    Ok(())
}

struct Csi {
    plugin: Arc<Plugin>,
    controller: ControllerService,
    node: NodeService,
}

impl Csi {
    fn new(socket: &Path) -> Self {
        let plugin = Arc::new(Plugin::new(
            PluginMode::All,
            "floe-snap-kill-node",
            8,
            Arc::new(RemoteVolumes::local(socket)),
        ));
        Csi {
            controller: ControllerService::new(Arc::clone(&plugin)),
            node: NodeService::new(Arc::clone(&plugin)),
            plugin,
        }
    }

    async fn snapshot(&self, name: &str, volume: &str) -> Result<csi::Snapshot, tonic::Status> {
        let s = self
            .controller
            .create_snapshot(Request::new(csi::CreateSnapshotRequest {
                name: name.into(),
                source_volume_id: volume.into(),
                ..Default::default()
            }))
            .await?
            .into_inner()
            .snapshot
            .ok_or_else(|| tonic::Status::internal("no snapshot in the answer"))?;
        Ok(s)
    }

    async fn snapshots(&self) -> Result<Vec<csi::Snapshot>> {
        Ok(self
            .controller
            .list_snapshots(Request::new(csi::ListSnapshotsRequest::default()))
            .await?
            .into_inner()
            .entries
            .into_iter()
            .filter_map(|e| e.snapshot)
            .collect())
    }

    /// Restores `s` into a new volume, checks its file system, and returns
    /// its records.
    async fn restore_records(&self, node: &Node, s: &csi::Snapshot) -> Result<Vec<u64>> {
        let req = restore_req("restored", s.size_bytes, block_cap(), &s.snapshot_id);
        let vol = self
            .controller
            .create_volume(Request::new(req))
            .await?
            .into_inner()
            .volume
            .context("volume")?;
        let staging = node.path("restored-staging");
        self.node
            .node_stage_volume(Request::new(csi::NodeStageVolumeRequest {
                volume_id: vol.volume_id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(block_cap()),
                ..Default::default()
            }))
            .await?;
        let dev = self
            .plugin
            .volumes
            .volume(&vol.volume_id)
            .await?
            .and_then(|v| v.attachment)
            .context("the restored volume is attached")?
            .device;
        let mnt = node.path("restored-mnt");
        let records = tokio::task::spawn_blocking(move || -> Result<Vec<u64>> {
            mount::check(&dev, FsType::Ext4).context("e2fsck -fn on the restored snapshot")?;
            std::fs::create_dir_all(&mnt)?;
            let mut fs = MountedFs::mount(&dev, &mnt, FsType::Ext4, MountFlags::RDONLY, "")?;
            let text = std::fs::read_to_string(mnt.join("log")).unwrap_or_default();
            fs.unmount()?;
            text.lines()
                .map(|l| l.parse::<u64>().with_context(|| format!("a torn record {l:?}")))
                .collect()
        })
        .await??;
        self.node
            .node_unstage_volume(Request::new(unstage_req(&vol.volume_id, &staging)))
            .await?;
        self.controller
            .delete_volume(Request::new(csi::DeleteVolumeRequest {
                volume_id: vol.volume_id,
                ..Default::default()
            }))
            .await?;
        Ok(records)
    }
}

/// The records must be exactly 1..=k, with k at least `acked`.
fn check_prefix(records: &[u64], acked: u64, what: &str) -> Result<u64> {
    for (i, r) in records.iter().enumerate() {
        ensure!(
            *r == i as u64 + 1,
            "{what}: record {} is missing ({r} in its place)",
            i + 1
        );
    }
    let k = records.len() as u64;
    ensure!(
        k >= acked,
        "{what}: holds records 1..{k}, but {acked} was acknowledged before the call"
    );
    Ok(k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_plane_killed_during_a_snapshot_copy_leaves_it_failed_or_whole() -> Result<()> {
    if !common::privileged("snapshot copy kill") {
        return Ok(());
    }
    if !(common::tool_present("mkfs.ext4") && common::tool_present("e2fsck")) {
        common::skip_or_fail("snapshot copy kill: needs mkfs.ext4 and e2fsck");
        return Ok(());
    }
    let mut node = Node::start()?;
    let c = Csi::new(&node.path("run/dataplane.sock"));
    let vol = c
        .controller
        .create_volume(Request::new(create_req("pvc-snap-kill", SIZE, mount_cap("ext4"))))
        .await?
        .into_inner()
        .volume
        .context("volume")?;
    let staging = node.path("staging");
    c.node
        .node_stage_volume(Request::new(csi::NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        }))
        .await?;
    let dir = staging.clone();
    tokio::task::spawn_blocking(move || fill(&dir, FILL_MIB)).await??;
    let writer = Writer::start(&staging)?;
    writer.wait_past(20).await?;

    // The call, and the kill once its copy is partway.
    let acked_before = writer.acked();
    let call = {
        let c = Csi::new(&node.path("run/dataplane.sock"));
        let id = vol.volume_id.clone();
        tokio::spawn(async move { c.snapshot("snap-kill", &id).await })
    };
    let data = node.path("data");
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        let (progress, _) = copies_in_progress(&data);
        if let Some(p) = progress
            .into_iter()
            .find(|(_, next, blocks)| *next > 0 && next < blocks)
        {
            break Some(p);
        }
        if call.is_finished() {
            break None;
        }
        ensure!(Instant::now() < deadline, "no copy in progress was seen");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    node.kill_serve()?;
    let answer = call.await?;
    eprintln!("killed the data plane with the copy at {at_kill:?}; the call answered {answer:?}");
    node.spawn_serve()?;

    // The successor took the volume over; the copy is resolved one way or
    // the other.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (progress, parts) = copies_in_progress(&data);
        if progress.is_empty() && parts.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "a partial copy outlived the restart: {progress:?} {parts:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writer.wait_past(writer.acked() + 20).await?;
    let listed = c.snapshots().await?;
    match (&answer, at_kill) {
        (Err(status), Some(_)) => {
            ensure!(
                listed.is_empty(),
                "the interrupted snapshot exists: {listed:?} (the call failed: {status})"
            );
            let log = std::fs::read_to_string(node.serve_log(2))?;
            ensure!(
                log.contains("snapshot failed"),
                "the successor did not report the interrupted snapshot failed; its log:\n{log}"
            );
            eprintln!("the interrupted snapshot is gone and reported failed");
        }
        (Ok(s), _) => {
            // The copy finished before the kill: whole, as the frozen image.
            ensure!(listed.iter().any(|l| l.snapshot_id == s.snapshot_id));
            let records = c.restore_records(&node, s).await?;
            check_prefix(&records, acked_before, "a snapshot done before the kill")?;
        }
        (Err(status), None) => bail!("the snapshot failed before any copy was seen: {status}"),
    }

    // Retried, as a CO does: a whole snapshot, as of its own freeze.
    let acked_retry = writer.acked();
    let s = c
        .snapshot("snap-kill", &vol.volume_id)
        .await
        .map_err(|e| anyhow::anyhow!("the retried snapshot: {e}"))?;
    ensure!(s.ready_to_use, "the retried snapshot is not ready to use");
    let last = writer.stop()?;
    let records = c.restore_records(&node, &s).await?;
    let k = check_prefix(&records, acked_retry, "the retried snapshot")?;
    eprintln!(
        "retried snapshot: records 1..{k} (acknowledged {acked_retry} before it, {last} in all, first call acknowledged {acked_before} before it)"
    );

    c.controller
        .delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
            snapshot_id: s.snapshot_id,
            ..Default::default()
        }))
        .await?;
    c.node
        .node_unstage_volume(Request::new(unstage_req(&vol.volume_id, &staging)))
        .await?;
    c.controller
        .delete_volume(Request::new(csi::DeleteVolumeRequest {
            volume_id: vol.volume_id,
            ..Default::default()
        }))
        .await?;
    Ok(())
}
