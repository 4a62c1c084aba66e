//! A group snapshot is one cut across its volumes (issue 4, acceptance):
//! three ext4 volumes, one writer appending numbered records round-robin
//! across them and fsyncing each before the next; a group snapshot taken
//! while it runs, restored, holds a gap-free prefix 1..k of the records with
//! k at least the last one acknowledged before the RPC was sent, and each
//! restored file system passes `e2fsck -fn` — also when a failpoint delays
//! the second volume's cut by 200 ms. A control shows the check has teeth:
//! three single-volume snapshots taken one after the other, the writer 30 records on between two,
//! do not form such a prefix.
//!
//! Needs root, /dev/fuse, loop devices, mkfs.ext4 and e2fsck: in CI (`CI`
//! set) their absence is a failure, elsewhere the test is skipped with a note.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use floe_driver::dataplane::mount::{self, FsType, MountedFs};
use floe_proto::csi;
use floe_proto::csi::controller_server::Controller;
use floe_proto::csi::group_controller_server::GroupController;
use floe_proto::csi::node_server::Node;
use rustix::mount::MountFlags;
use tonic::Request;

mod common;

use common::csi::{block_cap, create_req, mount_cap, restore_req, unstage_req, Harness};

const SIZE: i64 = 64 << 20;
const VOLUMES: usize = 3;

/// The writer: record k goes to volume (k-1) % 3, fsynced before k+1.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<Result<()>>,
}

impl Writer {
    fn start(dirs: Vec<PathBuf>) -> Result<Self> {
        let mut files = dirs
            .iter()
            .map(|d| OpenOptions::new().create(true).append(true).open(d.join("log")))
            .collect::<std::io::Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&acked));
        let handle = std::thread::spawn(move || -> Result<()> {
            let mut k = 1u64;
            while !s.load(Ordering::SeqCst) {
                let f = &mut files[((k - 1) % VOLUMES as u64) as usize];
                f.write_all(format!("{k}\n").as_bytes())?;
                f.sync_all()?;
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

    async fn wait_past(&self, n: u64) -> Result<()> {
        for _ in 0..3000 {
            if self.acked() >= n {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("the writer did not reach record {n} in 30 s (at {})", self.acked())
    }

    fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok(self.acked.load(Ordering::SeqCst))
    }
}

/// Checks that the records of the volumes form 1..=k exactly; returns k.
fn gap_free_prefix(logs: &[Vec<u64>]) -> Result<u64, String> {
    let mut all: Vec<u64> = logs.iter().flatten().copied().collect();
    all.sort_unstable();
    for (i, r) in all.iter().enumerate() {
        if *r != i as u64 + 1 {
            return Err(format!(
                "record {} is missing (found {r} in its place; volumes hold {:?} records)",
                i + 1,
                logs.iter().map(Vec::len).collect::<Vec<_>>()
            ));
        }
    }
    Ok(all.len() as u64)
}

/// Restores each snapshot into a new volume, checks its file system and
/// reads its records.
async fn restore_and_read(h: &Harness, label: &str, snaps: &[csi::Snapshot]) -> Result<Vec<Vec<u64>>> {
    let mut logs = Vec::new();
    for (i, s) in snaps.iter().enumerate() {
        let req = restore_req(
            &format!("{label}-restore-{i}"),
            s.size_bytes,
            block_cap(),
            &s.snapshot_id,
        );
        let vol = h
            .controller
            .create_volume(Request::new(req))
            .await?
            .into_inner()
            .volume
            .context("volume")?;
        let staging = h.path(&format!("{label}-restore-{i}"));
        h.node
            .node_stage_volume(Request::new(csi::NodeStageVolumeRequest {
                volume_id: vol.volume_id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(block_cap()),
                ..Default::default()
            }))
            .await?;
        let device = h
            .plugin
            .volumes
            .volume(&vol.volume_id)
            .await?
            .and_then(|v| v.attachment)
            .context("the restored volume is attached")?
            .device;
        let dev = device.clone();
        let read = tokio::task::spawn_blocking(move || -> Result<Vec<u64>> {
            mount::check(&dev, FsType::Ext4).context("e2fsck -fn on the restored volume")?;
            let dir = dev_mount_dir(&dev);
            let mut fs = MountedFs::mount(&dev, &dir, FsType::Ext4, MountFlags::RDONLY, "")?;
            let text = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            fs.unmount()?;
            let _ = std::fs::remove_dir(&dir);
            text.lines()
                .map(|l| l.parse::<u64>().with_context(|| format!("a torn record {l:?}")))
                .collect()
        });
        let records = read.await??;
        h.node
            .node_unstage_volume(Request::new(unstage_req(&vol.volume_id, &staging)))
            .await?;
        h.controller
            .delete_volume(Request::new(csi::DeleteVolumeRequest {
                volume_id: vol.volume_id,
                ..Default::default()
            }))
            .await?;
        logs.push(records);
    }
    Ok(logs)
}

fn dev_mount_dir(dev: &Path) -> PathBuf {
    let name = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::env::temp_dir().join(format!("floe-restore-{}-{name}", std::process::id()))
}

async fn group_snapshot(h: &Harness, name: &str, volumes: &[String]) -> Result<Vec<csi::Snapshot>> {
    let g = h
        .group
        .create_volume_group_snapshot(Request::new(csi::CreateVolumeGroupSnapshotRequest {
            name: name.into(),
            source_volume_ids: volumes.to_vec(),
            ..Default::default()
        }))
        .await?
        .into_inner()
        .group_snapshot
        .context("group snapshot")?;
    ensure!(g.ready_to_use && g.snapshots.len() == volumes.len());
    // In the order of the volumes.
    Ok(volumes
        .iter()
        .filter_map(|v| g.snapshots.iter().find(|s| &s.source_volume_id == v).cloned())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_snapshot_under_writes_restores_to_a_gap_free_prefix_of_the_records() -> Result<()> {
    if !common::privileged("csi group snapshot") {
        return Ok(());
    }
    if !(common::tool_present("mkfs.ext4") && common::tool_present("e2fsck")) {
        common::skip_or_fail("csi group snapshot: needs mkfs.ext4 and e2fsck");
        return Ok(());
    }
    let h = Harness::new("csi-group")?;
    let mut ids = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..VOLUMES {
        let v = h
            .controller
            .create_volume(Request::new(create_req(&format!("pvc-{i}"), SIZE, mount_cap("ext4"))))
            .await?
            .into_inner()
            .volume
            .context("volume")?;
        let staging = h.path(&format!("staging-{i}"));
        h.node
            .node_stage_volume(Request::new(csi::NodeStageVolumeRequest {
                volume_id: v.volume_id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(mount_cap("ext4")),
                ..Default::default()
            }))
            .await?;
        ids.push(v.volume_id);
        dirs.push(staging);
    }
    let writer = Writer::start(dirs.clone())?;
    writer.wait_past(30).await?;

    // 1. A plain group snapshot while the writer runs.
    let before_plain = writer.acked();
    let plain = group_snapshot(&h, "g-plain", &ids).await?;
    writer.wait_past(before_plain + 30).await?;

    // 2. The same with the second volume's cut delayed by 200 ms.
    *h.failpoints().cut_delay.lock().expect("failpoint") = Some((1, Duration::from_millis(200)));
    let before_delayed = writer.acked();
    let delayed = group_snapshot(&h, "g-delayed", &ids).await?;
    *h.failpoints().cut_delay.lock().expect("failpoint") = None;
    writer.wait_past(before_delayed + 30).await?;

    // 3. Control: one volume at a time, the writer 30 records further on
    //    between two, no common cut.
    let mut sequential = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let s = h
            .controller
            .create_snapshot(Request::new(csi::CreateSnapshotRequest {
                name: format!("seq-{i}"),
                source_volume_id: id.clone(),
                ..Default::default()
            }))
            .await?
            .into_inner()
            .snapshot
            .context("snapshot")?;
        sequential.push(s);
        writer.wait_past(writer.acked() + 30).await?;
    }
    let last = writer.stop()?;

    let k = gap_free_prefix(&restore_and_read(&h, "plain", &plain).await?)
        .map_err(|e| anyhow::anyhow!("the group snapshot is not one cut: {e}"))?;
    ensure!(
        k >= before_plain,
        "group snapshot holds 1..{k}, but record {before_plain} was acknowledged before it"
    );
    let kd = gap_free_prefix(&restore_and_read(&h, "delayed", &delayed).await?)
        .map_err(|e| anyhow::anyhow!("the group snapshot with a delayed cut is not one cut: {e}"))?;
    ensure!(
        kd >= before_delayed,
        "delayed cut holds 1..{kd}, but {before_delayed} was acknowledged before it"
    );
    let control = gap_free_prefix(&restore_and_read(&h, "sequential", &sequential).await?);
    ensure!(
        control.is_err(),
        "three snapshots 30 records apart formed a prefix 1..{:?} (writer reached {last}): the check cannot tell a cut from a sequence",
        control
    );
    eprintln!("group cut: records 1..{k} (acked {before_plain} before); delayed cut: 1..{kd} (acked {before_delayed}); sequential: {}", control.err().unwrap_or_default());

    // Clean up through the API, as a CO would.
    for g in ["g-plain", "g-delayed"] {
        h.group
            .delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: g.into(),
                ..Default::default()
            }))
            .await?;
    }
    for s in &sequential {
        h.controller
            .delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
                snapshot_id: s.snapshot_id.clone(),
                ..Default::default()
            }))
            .await?;
    }
    for (id, dir) in ids.iter().zip(&dirs) {
        h.node.node_unstage_volume(Request::new(unstage_req(id, dir))).await?;
        h.controller
            .delete_volume(Request::new(csi::DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            }))
            .await?;
    }
    Ok(())
}
