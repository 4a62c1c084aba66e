//! The node service against the real kernel: stage (mkfs + mount), publish
//! (bind, read-only where asked; the device node for block volumes), stats
//! with a condition, online growth (of XFS) within the store and its refusal past
//! it, idempotent retries, and teardown.
//!
//! Needs root, /dev/fuse, loop devices and xfsprogs: in CI (`CI` set) their
//! absence is a failure, elsewhere the test is skipped with a note.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use floe_proto::csi;
use floe_proto::csi::controller_server::Controller;
use floe_proto::csi::node_server::Node;
use tonic::{Code, Request};

mod common;

use common::csi::{block_cap, create_req, mount_cap, restore_req, unpublish_req, unstage_req, Harness};

const MIB: i64 = 1 << 20;

fn stage_req(id: &str, staging: &Path, cap: csi::VolumeCapability) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap),
        ..Default::default()
    }
}

fn publish_req(
    id: &str,
    staging: &Path,
    target: &Path,
    cap: csi::VolumeCapability,
    ro: bool,
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap),
        readonly: ro,
        ..Default::default()
    }
}

async fn stats(h: &Harness, id: &str, path: &Path) -> Result<csi::NodeGetVolumeStatsResponse> {
    Ok(h.node
        .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.display().to_string(),
            ..Default::default()
        }))
        .await?
        .into_inner())
}

fn total_bytes(s: &csi::NodeGetVolumeStatsResponse) -> i64 {
    s.usage
        .iter()
        .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
        .map(|u| u.total)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_volume_stages_publishes_grows_online_and_tears_down() -> Result<()> {
    if !common::privileged("csi node") {
        return Ok(());
    }
    // XFS: growing a mounted ext4 needs CAP_SYS_RESOURCE, which a sandbox
    // may lack; xfs_growfs needs only what mounting needs.
    if !common::tool_present("mkfs.xfs") || !common::tool_present("xfs_growfs") {
        common::skip_or_fail("csi node: needs mkfs.xfs and xfs_growfs");
        return Ok(());
    }
    let h = Harness::new("csi-node")?;
    let v = h
        .controller
        .create_volume(Request::new(create_req("pvc-node", 300 * MIB, mount_cap("xfs"))))
        .await?
        .into_inner()
        .volume
        .context("volume")?;
    let id = v.volume_id.as_str();
    let (staging, target, ro_target) = (h.path("staging"), h.path("pods/a/mount"), h.path("pods/b/mount"));
    for _ in 0..2 {
        h.node
            .node_stage_volume(Request::new(stage_req(id, &staging, mount_cap("xfs"))))
            .await?;
        h.node
            .node_publish_volume(Request::new(publish_req(
                id,
                &staging,
                &target,
                mount_cap("xfs"),
                false,
            )))
            .await?;
    }
    h.node
        .node_publish_volume(Request::new(publish_req(
            id,
            &staging,
            &ro_target,
            mount_cap("xfs"),
            true,
        )))
        .await?;
    std::fs::write(target.join("hello"), b"floe")?;
    ensure!(
        std::fs::read(ro_target.join("hello"))? == b"floe",
        "both targets show the volume"
    );
    let err = std::fs::write(ro_target.join("nope"), b"x").expect_err("read-only target");
    ensure!(err.raw_os_error() == Some(30), "EROFS, got {err}");
    let conflict = h
        .node
        .node_publish_volume(Request::new(publish_req(
            id,
            &staging,
            &ro_target,
            mount_cap("xfs"),
            false,
        )))
        .await
        .expect_err("a read-write publish where a read-only one is");
    ensure!(conflict.code() == Code::AlreadyExists, "{conflict:?}");

    let s = stats(&h, id, &target).await?;
    ensure!(s.usage.len() == 2, "bytes and inodes: {s:?}");
    ensure!(!s.volume_condition.as_ref().context("condition")?.abnormal);
    let before = total_bytes(&s);

    // Online growth within the store: the device grows with the controller
    // call, the file system with the node call.
    let grown = h
        .controller
        .controller_expand_volume(Request::new(csi::ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 600 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        }))
        .await?
        .into_inner();
    ensure!(grown.capacity_bytes == 600 * MIB && grown.node_expansion_required);
    let n = h
        .node
        .node_expand_volume(Request::new(csi::NodeExpandVolumeRequest {
            volume_id: id.into(),
            volume_path: target.display().to_string(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    ensure!(n.capacity_bytes == 600 * MIB);
    let after = total_bytes(&stats(&h, id, &target).await?);
    ensure!(
        after > before + 250 * MIB,
        "the file system grew online: {before} -> {after} bytes"
    );
    ensure!(std::fs::read(target.join("hello"))? == b"floe");

    // Past the store's reserve, an attached volume cannot grow.
    let refused = h
        .controller
        .controller_expand_volume(Request::new(csi::ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 8192 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        }))
        .await
        .expect_err("growth past the store while attached");
    ensure!(
        refused.code() == Code::FailedPrecondition && refused.message().contains("unstage it"),
        "{refused:?}"
    );

    // Deleting a staged volume is refused; unstaging a published one too.
    let busy = h
        .controller
        .delete_volume(Request::new(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        }))
        .await
        .expect_err("delete while staged");
    ensure!(busy.code() == Code::FailedPrecondition, "{busy:?}");

    // A mount gone behind the driver's back shows as an abnormal condition.
    rustix::mount::unmount(&ro_target, rustix::mount::UnmountFlags::empty())?;
    let gone = stats(&h, id, &ro_target).await?;
    ensure!(gone.volume_condition.context("condition")?.abnormal);

    for t in [&target, &ro_target] {
        for _ in 0..2 {
            h.node.node_unpublish_volume(Request::new(unpublish_req(id, t))).await?;
        }
        ensure!(!t.exists(), "{} removed", t.display());
    }
    for _ in 0..2 {
        h.node
            .node_unstage_volume(Request::new(unstage_req(id, &staging)))
            .await?;
    }
    h.controller
        .delete_volume(Request::new(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        }))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_volume_is_published_as_its_device_node() -> Result<()> {
    if !common::privileged("csi node block") {
        return Ok(());
    }
    let h = Harness::new("csi-node-block")?;
    let v = h
        .controller
        .create_volume(Request::new(create_req("pvc-block", 32 * MIB, block_cap())))
        .await?
        .into_inner()
        .volume
        .context("volume")?;
    let id = v.volume_id.as_str();
    let (staging, target) = (h.path("staging"), h.path("pods/a/dev"));
    h.node
        .node_stage_volume(Request::new(stage_req(id, &staging, block_cap())))
        .await?;
    for _ in 0..2 {
        h.node
            .node_publish_volume(Request::new(publish_req(id, &staging, &target, block_cap(), false)))
            .await?;
    }
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&target)?;
        f.write_all_at(&[7u8; 4096], 4096)?;
        f.sync_all()?;
        let mut back = [0u8; 4096];
        f.read_exact_at(&mut back, 4096)?;
        ensure!(back == [7u8; 4096], "the target is the volume's device");
    }
    let s = stats(&h, id, &target).await?;
    ensure!(total_bytes(&s) == 32 * MIB, "{s:?}");
    h.node
        .node_unpublish_volume(Request::new(unpublish_req(id, &target)))
        .await?;
    ensure!(!target.exists());
    h.node
        .node_unstage_volume(Request::new(unstage_req(id, &staging)))
        .await?;
    h.controller
        .delete_volume(Request::new(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        }))
        .await?;
    Ok(())
}

/// `cap` with access mode `mode`.
fn with_mode(mut cap: csi::VolumeCapability, mode: csi::volume_capability::access_mode::Mode) -> csi::VolumeCapability {
    cap.access_mode = Some(csi::volume_capability::AccessMode { mode: mode as i32 });
    cap
}

#[tokio::test]
async fn single_node_single_writer_allows_one_publication_and_multi_writer_several() -> Result<()> {
    use csi::volume_capability::access_mode::Mode as M;
    if !common::privileged("csi node access modes") {
        return Ok(());
    }
    let h = Harness::new("csi-rwop")?;
    for (label, cap) in [("mount", mount_cap("ext4")), ("block", block_cap())] {
        let id = format!("rwop-{label}");
        h.controller
            .create_volume(Request::new(create_req(&id, 16 * MIB, cap.clone())))
            .await?;
        let staging = h.path(&format!("{label}/staging"));
        let (t1, t2, t3) = (
            h.path(&format!("{label}/t1")),
            h.path(&format!("{label}/t2")),
            h.path(&format!("{label}/t3")),
        );
        let single = with_mode(cap.clone(), M::SingleNodeSingleWriter);
        let multi = with_mode(cap.clone(), M::SingleNodeMultiWriter);
        h.node
            .node_stage_volume(Request::new(stage_req(&id, &staging, single.clone())))
            .await?;
        h.node
            .node_publish_volume(Request::new(publish_req(&id, &staging, &t1, single.clone(), false)))
            .await?;
        // The same publication again is a retry, not a second one.
        h.node
            .node_publish_volume(Request::new(publish_req(&id, &staging, &t1, single.clone(), false)))
            .await?;
        let refused = h
            .node
            .node_publish_volume(Request::new(publish_req(&id, &staging, &t2, single.clone(), false)))
            .await
            .expect_err("a second single-writer publication is refused");
        ensure!(
            refused.code() == Code::FailedPrecondition
                && refused.message().contains(&t1.display().to_string())
                && refused.message().contains("SINGLE_NODE_SINGLE_WRITER"),
            "{label}: {refused:?}"
        );
        // Multi-writer: another publication next to the first is fine.
        for t in [&t2, &t3] {
            h.node
                .node_publish_volume(Request::new(publish_req(&id, &staging, t, multi.clone(), false)))
                .await
                .with_context(|| format!("{label}: multi-writer publication at {}", t.display()))?;
        }
        for t in [&t1, &t2, &t3] {
            h.node
                .node_unpublish_volume(Request::new(unpublish_req(&id, t)))
                .await?;
        }
        h.node
            .node_unstage_volume(Request::new(unstage_req(&id, &staging)))
            .await?;
    }
    Ok(())
}

/// The data plane finds a file system on a volume's device however the
/// device was named when it was mounted (what it freezes for a cut and
/// what keeps a detach from pulling the device from under a mount).
#[tokio::test]
async fn a_volume_mounted_through_another_device_node_is_still_found_mounted() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !common::privileged("csi node device alias") {
        return Ok(());
    }
    let h = Harness::new("csi-alias")?;
    let id = "alias";
    h.controller
        .create_volume(Request::new(create_req(id, 16 * MIB, block_cap())))
        .await?;
    let staging = h.path("staging");
    h.node
        .node_stage_volume(Request::new(stage_req(id, &staging, block_cap())))
        .await?;
    let device = h
        .plugin
        .volumes
        .volume(id)
        .await?
        .and_then(|v| v.attachment)
        .context("staged block volume is attached")?
        .device;
    let rdev = std::fs::metadata(&device)?.rdev();
    let alias = h.path("alias-dev");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &alias,
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rdev,
    )?;
    let out = std::process::Command::new("mkfs.ext4")
        .arg("-qF")
        .arg(&alias)
        .output()?;
    ensure!(out.status.success(), "mkfs: {}", String::from_utf8_lossy(&out.stderr));
    let mnt = h.path("mnt");
    std::fs::create_dir_all(&mnt)?;
    rustix::mount::mount(&alias, &mnt, "ext4", rustix::mount::MountFlags::empty(), None)?;
    let found = floe_driver::dataplane::mounttable::mount_points_of(&device)?;
    let detach = h
        .node
        .node_unstage_volume(Request::new(unstage_req(id, &staging)))
        .await;
    rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::empty())?;
    ensure!(
        found.contains(&mnt),
        "{} mounted through {} not found: {found:?}",
        device.display(),
        alias.display()
    );
    let refused = detach.expect_err("unstage refuses while a file system is mounted from the device");
    ensure!(refused.code() == Code::FailedPrecondition, "{refused:?}");
    h.node
        .node_unstage_volume(Request::new(unstage_req(id, &staging)))
        .await?;
    Ok(())
}

/// A clone of an xfs volume (restored from its snapshot) carries the same
/// file-system UUID, which xfs refuses to mount twice on one kernel: the
/// node stages xfs with `nouuid`, so the clone stages beside its source
/// (as a DR rehearsal's clones stage beside each other, and a snapshot's
/// restore beside the volume).
#[tokio::test(flavor = "multi_thread")]
async fn an_xfs_clone_stages_beside_the_volume_it_was_copied_from() -> Result<()> {
    if !common::privileged("csi node xfs clone") {
        return Ok(());
    }
    if !common::tool_present("mkfs.xfs") {
        common::skip_or_fail("csi node xfs clone: needs mkfs.xfs");
        return Ok(());
    }
    let h = Harness::new("csi-node-xfs-clone")?;
    let source = h
        .controller
        .create_volume(Request::new(create_req("pvc-xfs-source", 300 * MIB, mount_cap("xfs"))))
        .await?
        .into_inner()
        .volume
        .context("volume")?;
    let (staging_a, staging_b) = (h.path("staging-a"), h.path("staging-b"));
    h.node
        .node_stage_volume(Request::new(stage_req(&source.volume_id, &staging_a, mount_cap("xfs"))))
        .await?;
    std::fs::write(staging_a.join("before-the-snapshot"), b"kept")?;
    let snapshot = h
        .controller
        .create_snapshot(Request::new(csi::CreateSnapshotRequest {
            source_volume_id: source.volume_id.clone(),
            name: "snap-xfs".into(),
            ..Default::default()
        }))
        .await?
        .into_inner()
        .snapshot
        .context("snapshot")?;
    let req = restore_req("pvc-xfs-clone", 300 * MIB, mount_cap("xfs"), &snapshot.snapshot_id);
    let clone = h
        .controller
        .create_volume(Request::new(req))
        .await?
        .into_inner()
        .volume
        .context("clone")?;
    h.node
        .node_stage_volume(Request::new(stage_req(&clone.volume_id, &staging_b, mount_cap("xfs"))))
        .await
        .context("stage the xfs clone while its source is staged")?;
    ensure!(
        std::fs::read(staging_b.join("before-the-snapshot"))? == b"kept",
        "the clone holds the source's file"
    );
    std::fs::write(staging_b.join("clone-only"), b"x")?;
    ensure!(
        !staging_a.join("clone-only").exists(),
        "a write to the clone reached its source"
    );
    for (id, staging) in [(&clone.volume_id, &staging_b), (&source.volume_id, &staging_a)] {
        h.node
            .node_unstage_volume(Request::new(unstage_req(id, staging)))
            .await?;
    }
    h.controller
        .delete_volume(Request::new(csi::DeleteVolumeRequest {
            volume_id: clone.volume_id.clone(),
            ..Default::default()
        }))
        .await?;
    h.controller
        .delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
            snapshot_id: snapshot.snapshot_id,
            ..Default::default()
        }))
        .await?;
    h.controller
        .delete_volume(Request::new(csi::DeleteVolumeRequest {
            volume_id: source.volume_id,
            ..Default::default()
        }))
        .await?;
    Ok(())
}
