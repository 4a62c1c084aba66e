//! A crash of the process serving the volumes (FUSE connections dead, loop
//! devices and mounts left behind) is cleaned up when the node's volumes
//! are opened again, and the retried stage and publish succeed with every
//! fsynced byte still there.
//!
//! The crash is made by aborting the FUSE connection through
//! `/sys/fs/fuse/connections/N/abort`, which is what the kernel does when
//! the serving process dies. Needs root, /dev/fuse, loop devices and
//! mkfs.ext4: in CI (`CI` set) their absence is a failure, elsewhere the test
//! is skipped with a note.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use floe_driver::cli::PluginMode;
use floe_driver::csi::controller::ControllerService;
use floe_driver::csi::local::LocalVolumes;
use floe_driver::csi::node::NodeService;
use floe_driver::csi::Plugin;
use floe_proto::csi;
use floe_proto::csi::controller_server::Controller;
use floe_proto::csi::node_server::Node;
use tonic::Request;

mod common;

use common::csi::{create_req, mount_cap, sweep};

fn services(data: &Path) -> Result<(LocalVolumes, ControllerService, NodeService)> {
    let volumes = LocalVolumes::open(data)?;
    let plugin = Arc::new(Plugin::new(
        PluginMode::All,
        "floe-test-node",
        8,
        Arc::new(volumes.clone()),
    ));
    Ok((
        volumes,
        ControllerService::new(Arc::clone(&plugin)),
        NodeService::new(plugin),
    ))
}

async fn stage_and_publish(node: &NodeService, id: &str, staging: &Path, target: &Path) -> Result<()> {
    node.node_stage_volume(Request::new(csi::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(mount_cap("ext4")),
        ..Default::default()
    }))
    .await?;
    node.node_publish_volume(Request::new(csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap("ext4")),
        ..Default::default()
    }))
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_node_cleans_up_and_retried_calls_succeed() -> Result<()> {
    if !common::privileged("csi restart") {
        return Ok(());
    }
    if !common::tool_present("mkfs.ext4") {
        common::skip_or_fail("csi restart: needs mkfs.ext4");
        return Ok(());
    }
    let dir = common::scratch("csi-restart")?;
    let result = run(dir.path()).await;
    sweep(dir.path());
    result
}

async fn run(root: &Path) -> Result<()> {
    let data = root.join("data");
    let (staging, target) = (root.join("staging"), root.join("target"));
    let (old, controller, node) = services(&data)?;
    let v = controller
        .create_volume(Request::new(create_req("pvc-crash", 64 << 20, mount_cap("ext4"))))
        .await?
        .into_inner()
        .volume
        .context("volume")?;
    let id = v.volume_id;
    stage_and_publish(&node, &id, &staging, &target).await?;
    {
        let f = std::fs::File::create(target.join("kept"))?;
        use std::io::Write;
        (&f).write_all(b"acknowledged before the crash")?;
        f.sync_all()?;
    }

    // The crash: the FUSE connection dies as if its process had.
    let fuse_mount = data.join("csi/fuse").join(&id);
    let minor = rustix::fs::minor(std::fs::metadata(&fuse_mount)?.dev());
    let conn = Path::new("/sys/fs/fuse/connections").join(minor.to_string());
    std::fs::write(conn.join("abort"), "1").with_context(|| format!("abort {}", conn.display()))?;
    ensure!(
        std::fs::metadata(fuse_mount.join("volume")).is_err(),
        "the FUSE connection is dead"
    );
    // The dead process's state is gone with it, without any teardown.
    std::mem::forget(old);
    drop((controller, node));

    // A new process opens the node's volumes: the leftovers are torn down.
    let (_new, controller, node) = services(&data)?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let root_s = root.display().to_string();
    ensure!(
        !mounts.lines().any(|l| l.contains(&root_s)),
        "nothing of the crashed process is mounted any more:\n{}",
        mounts
            .lines()
            .filter(|l| l.contains(&root_s))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Kubelet's retries succeed and the acknowledged write is there.
    stage_and_publish(&node, &id, &staging, &target).await?;
    let kept = std::fs::read(target.join("kept"))?;
    ensure!(
        kept == b"acknowledged before the crash",
        "fsynced data survives the crash"
    );

    node.node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
        volume_id: id.clone(),
        target_path: target.display().to_string(),
    }))
    .await?;
    node.node_unstage_volume(Request::new(csi::NodeUnstageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.display().to_string(),
    }))
    .await?;
    controller
        .delete_volume(Request::new(csi::DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        }))
        .await?;
    Ok(())
}
