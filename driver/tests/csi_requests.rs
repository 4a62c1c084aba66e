//! Every RPC fed malformed and contradictory requests: the gRPC code is the
//! one the CSI spec names, and the message says what to fix. None of these
//! needs a block device (volumes are created and cut while detached), so
//! they run everywhere.

use std::collections::HashMap;

use anyhow::Result;
use floe_proto::csi;
use floe_proto::csi::controller_server::Controller;
use floe_proto::csi::group_controller_server::GroupController;
use floe_proto::csi::node_server::Node;
use tonic::{Code, Request, Response, Status};

mod common;

use common::csi::{block_cap, create_req, mount_cap, Harness};

const MIB: i64 = 1 << 20;

#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<Response<T>, Status>, code: Code, needle: &str) {
    let s = r.expect_err("the request must be refused");
    assert_eq!(s.code(), code, "code of {:?}", s.message());
    assert!(
        s.message().contains(needle),
        "message {:?} should mention {needle:?}",
        s.message()
    );
}

fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn multi_node_cap() -> csi::VolumeCapability {
    let mut c = mount_cap("");
    c.access_mode = Some(csi::volume_capability::AccessMode {
        mode: csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
    });
    c
}

async fn create(h: &Harness, name: &str, size: i64) -> Result<csi::Volume> {
    let v = h
        .controller
        .create_volume(Request::new(create_req(name, size, mount_cap(""))))
        .await?;
    Ok(v.into_inner().volume.expect("a volume"))
}

#[tokio::test]
async fn create_volume_refuses_malformed_and_contradictory_requests() -> Result<()> {
    let h = Harness::new("csi-requests")?;
    let c = &h.controller;
    let call = |r: csi::CreateVolumeRequest| c.create_volume(Request::new(r));
    refused(
        call(create_req("", MIB, mount_cap(""))).await,
        Code::InvalidArgument,
        "name is required",
    );
    let mut r = create_req("v", MIB, mount_cap(""));
    r.volume_capabilities.clear();
    refused(call(r).await, Code::InvalidArgument, "volume_capabilities is required");
    refused(
        call(create_req("v", MIB, multi_node_cap())).await,
        Code::InvalidArgument,
        "single-node",
    );
    let mut cap = mount_cap("");
    cap.access_type = None;
    refused(
        call(create_req("v", MIB, cap)).await,
        Code::InvalidArgument,
        "mount or block",
    );
    refused(
        call(create_req("v", MIB, mount_cap("btrfs"))).await,
        Code::InvalidArgument,
        "ext4 or xfs",
    );
    for (kv, needle) in [
        (("blockSize", "4000"), "power of two"),
        (("blockSize", "2048"), "power of two"),
        (("replicationMode", "sync"), "continuous, log or interval"),
        (("fsType", "ntfs"), "ext4 or xfs"),
        (("fstype", "ext4"), "unknown parameter \"fstype\""),
    ] {
        let mut r = create_req("v", MIB, mount_cap(""));
        r.parameters = params(&[kv]);
        refused(call(r).await, Code::InvalidArgument, needle);
    }
    let mut r = create_req("v", MIB, mount_cap(""));
    r.mutable_parameters = params(&[("iops", "10")]);
    refused(call(r).await, Code::InvalidArgument, "no mutable parameters");
    let mut r = create_req("v", 10 * MIB, mount_cap(""));
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: 10 * MIB,
        limit_bytes: 5 * MIB,
    });
    refused(
        call(r).await,
        Code::OutOfRange,
        "make limit_bytes at least required_bytes",
    );
    let mut r = create_req("v", MIB + 1, mount_cap(""));
    r.parameters = params(&[("blockSize", "1048576")]);
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: MIB + 1,
        limit_bytes: MIB + 4096,
    });
    refused(call(r).await, Code::OutOfRange, "rounded up");
    let mut r = create_req("v", -1, mount_cap(""));
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: -1,
        limit_bytes: 0,
    });
    refused(call(r).await, Code::InvalidArgument, "zero (unset) or more");
    let mut r = create_req("v", MIB, mount_cap("xfs"));
    r.parameters = params(&[("fsType", "ext4")]);
    refused(call(r).await, Code::InvalidArgument, "different file systems");
    let mut r = create_req("v", MIB, mount_cap("xfs"));
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: MIB,
        limit_bytes: 100 * MIB,
    });
    refused(call(r).await, Code::OutOfRange, "limit_bytes");
    let mut cap = mount_cap("");
    if let Some(csi::volume_capability::AccessType::Mount(m)) = cap.access_type.as_mut() {
        m.volume_mount_group = "1000".into();
    }
    refused(
        call(create_req("v", MIB, cap)).await,
        Code::InvalidArgument,
        "VOLUME_MOUNT_GROUP",
    );
    let mut r = create_req("v", MIB, mount_cap(""));
    r.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![csi::Topology {
            segments: params(&[("topology.floe.dev/node", "elsewhere")]),
        }],
        preferred: vec![],
    });
    refused(call(r).await, Code::ResourceExhausted, "topology");
    let mut r = create_req("v", MIB, mount_cap(""));
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: "no-such-snapshot".into(),
            },
        )),
    });
    refused(call(r).await, Code::NotFound, "no-such-snapshot");
    let mut r = create_req("v", MIB, mount_cap(""));
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: "no-such-volume".into(),
            },
        )),
    });
    refused(call(r).await, Code::NotFound, "no-such-volume");

    // Idempotent by name; an incompatible re-create is AlreadyExists.
    let a = create(&h, "pvc-a", 16 * MIB).await?;
    let again = create(&h, "pvc-a", 16 * MIB).await?;
    assert_eq!(a.volume_id, again.volume_id);
    assert_eq!(a.capacity_bytes, 16 * MIB);
    refused(
        call(create_req("pvc-a", 32 * MIB, mount_cap(""))).await,
        Code::AlreadyExists,
        "not compatible",
    );
    let mut r = create_req("pvc-a", 16 * MIB, mount_cap(""));
    r.parameters = params(&[("blockSize", "65536")]);
    refused(call(r).await, Code::AlreadyExists, "blockSize 4096");
    // A name that is not a safe file name still works, under a hashed id.
    let odd = create(&h, "my volume/ü", 16 * MIB).await?;
    assert!(odd.volume_id.starts_with('~'), "{}", odd.volume_id);
    Ok(())
}

#[tokio::test]
async fn volume_rpcs_refuse_missing_ids_and_unknown_volumes() -> Result<()> {
    let h = Harness::new("csi-requests")?;
    let c = &h.controller;
    refused(
        c.delete_volume(Request::new(csi::DeleteVolumeRequest::default())).await,
        Code::InvalidArgument,
        "volume_id is required",
    );
    c.delete_volume(Request::new(csi::DeleteVolumeRequest {
        volume_id: "never-was".into(),
        ..Default::default()
    }))
    .await?;

    refused(
        c.validate_volume_capabilities(Request::new(csi::ValidateVolumeCapabilitiesRequest::default()))
            .await,
        Code::InvalidArgument,
        "volume_id is required",
    );
    refused(
        c.validate_volume_capabilities(Request::new(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: "x".into(),
            ..Default::default()
        }))
        .await,
        Code::InvalidArgument,
        "volume_capabilities is required",
    );
    refused(
        c.validate_volume_capabilities(Request::new(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: "never-was".into(),
            volume_capabilities: vec![mount_cap("")],
            ..Default::default()
        }))
        .await,
        Code::NotFound,
        "never-was",
    );
    let v = create(&h, "pvc-v", 16 * MIB).await?;
    let validate = |caps: Vec<csi::VolumeCapability>| {
        c.validate_volume_capabilities(Request::new(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: caps,
            ..Default::default()
        }))
    };
    let ok = validate(vec![mount_cap("ext4"), block_cap()]).await?.into_inner();
    assert!(ok.confirmed.is_some(), "{}", ok.message);
    let no = validate(vec![multi_node_cap()]).await?.into_inner();
    assert!(
        no.confirmed.is_none() && no.message.contains("single-node"),
        "{}",
        no.message
    );
    let no = validate(vec![mount_cap("xfs")]).await?.into_inner();
    assert!(
        no.confirmed.is_none() && no.message.contains("not xfs"),
        "{}",
        no.message
    );

    refused(
        c.list_volumes(Request::new(csi::ListVolumesRequest {
            starting_token: "invalid-token".into(),
            ..Default::default()
        }))
        .await,
        Code::Aborted,
        "start again without one",
    );
    refused(
        c.list_volumes(Request::new(csi::ListVolumesRequest {
            max_entries: -1,
            ..Default::default()
        }))
        .await,
        Code::InvalidArgument,
        "max_entries",
    );
    create(&h, "pvc-w", 16 * MIB).await?;
    create(&h, "pvc-x", 16 * MIB).await?;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_volumes(Request::new(csi::ListVolumesRequest {
                max_entries: 2,
                starting_token: token,
            }))
            .await?
            .into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.into_iter().filter_map(|e| e.volume).map(|v| v.volume_id));
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen, vec!["pvc-v", "pvc-w", "pvc-x"]);

    let mut r = csi::GetCapacityRequest {
        parameters: params(&[("blockSize", "3")]),
        ..Default::default()
    };
    refused(
        c.get_capacity(Request::new(r.clone())).await,
        Code::InvalidArgument,
        "power of two",
    );
    r.parameters.clear();
    assert!(
        c.get_capacity(Request::new(r.clone()))
            .await?
            .into_inner()
            .available_capacity
            > 0
    );
    r.accessible_topology = Some(csi::Topology {
        segments: params(&[("topology.floe.dev/node", "elsewhere")]),
    });
    assert_eq!(
        c.get_capacity(Request::new(r)).await?.into_inner().available_capacity,
        0
    );

    refused(
        c.controller_publish_volume(Request::new(csi::ControllerPublishVolumeRequest::default()))
            .await,
        Code::Unimplemented,
        "attachRequired: false",
    );

    // Expansion.
    let expand = |id: &str, range: Option<csi::CapacityRange>| {
        c.controller_expand_volume(Request::new(csi::ControllerExpandVolumeRequest {
            volume_id: id.into(),
            capacity_range: range,
            ..Default::default()
        }))
    };
    let range = |r, l| {
        Some(csi::CapacityRange {
            required_bytes: r,
            limit_bytes: l,
        })
    };
    refused(
        expand("", range(MIB, 0)).await,
        Code::InvalidArgument,
        "volume_id is required",
    );
    refused(
        expand(&v.volume_id, None).await,
        Code::InvalidArgument,
        "capacity_range is required",
    );
    refused(expand("never-was", range(MIB, 0)).await, Code::NotFound, "never-was");
    refused(
        expand(&v.volume_id, range(64 * MIB, 32 * MIB)).await,
        Code::OutOfRange,
        "limit_bytes",
    );
    let same = expand(&v.volume_id, range(MIB, 0)).await?.into_inner();
    assert_eq!(same.capacity_bytes, 16 * MIB, "a smaller size is a no-op");
    let grown = expand(&v.volume_id, range(2048 * MIB, 0)).await?.into_inner();
    assert_eq!(
        grown.capacity_bytes,
        2048 * MIB,
        "offline growth past the reserve copies the volume"
    );
    assert!(grown.node_expansion_required);

    // An operation in progress on the volume: Aborted.
    let guard = h.plugin.locks.try_lock(&[format!("volume {}", v.volume_id)])?;
    refused(
        c.delete_volume(Request::new(csi::DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        }))
        .await,
        Code::Aborted,
        "in progress",
    );
    drop(guard);
    Ok(())
}

#[tokio::test]
async fn snapshot_rpcs_refuse_malformed_and_contradictory_requests() -> Result<()> {
    let h = Harness::new("csi-requests")?;
    let c = &h.controller;
    let snap = |name: &str, vol: &str| {
        c.create_snapshot(Request::new(csi::CreateSnapshotRequest {
            name: name.into(),
            source_volume_id: vol.into(),
            ..Default::default()
        }))
    };
    refused(snap("", "v").await, Code::InvalidArgument, "name is required");
    refused(
        snap("s", "").await,
        Code::InvalidArgument,
        "source_volume_id is required",
    );
    refused(snap("s", "never-was").await, Code::NotFound, "never-was");
    let v1 = create(&h, "pvc-1", 16 * MIB).await?;
    let v2 = create(&h, "pvc-2", 16 * MIB).await?;
    refused(
        c.create_snapshot(Request::new(csi::CreateSnapshotRequest {
            name: "s".into(),
            source_volume_id: v1.volume_id.clone(),
            parameters: params(&[("class", "gold")]),
            ..Default::default()
        }))
        .await,
        Code::InvalidArgument,
        "take no parameters",
    );
    let s1 = snap("snap-1", &v1.volume_id)
        .await?
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert!(s1.ready_to_use);
    assert_eq!(s1.size_bytes, 16 * MIB);
    let again = snap("snap-1", &v1.volume_id)
        .await?
        .into_inner()
        .snapshot
        .expect("snapshot");
    assert_eq!(again.snapshot_id, s1.snapshot_id);
    assert_eq!(
        again.creation_time, s1.creation_time,
        "the same snapshot, not a new cut"
    );
    refused(
        snap("snap-1", &v2.volume_id).await,
        Code::AlreadyExists,
        "source volume",
    );

    refused(
        c.get_snapshot(Request::new(csi::GetSnapshotRequest::default())).await,
        Code::InvalidArgument,
        "snapshot_id is required",
    );
    refused(
        c.get_snapshot(Request::new(csi::GetSnapshotRequest {
            snapshot_id: "never-was".into(),
            ..Default::default()
        }))
        .await,
        Code::NotFound,
        "never-was",
    );
    refused(
        c.list_snapshots(Request::new(csi::ListSnapshotsRequest {
            starting_token: "v:00".into(),
            ..Default::default()
        }))
        .await,
        Code::Aborted,
        "starting_token",
    );
    refused(
        c.delete_snapshot(Request::new(csi::DeleteSnapshotRequest::default()))
            .await,
        Code::InvalidArgument,
        "snapshot_id is required",
    );
    c.delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
        snapshot_id: "never-was".into(),
        ..Default::default()
    }))
    .await?;

    // Restore needs room for the snapshot.
    let mut r = create_req("restored", 8 * MIB, mount_cap(""));
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: 8 * MIB,
        limit_bytes: 8 * MIB,
    });
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: s1.snapshot_id.clone(),
            },
        )),
    });
    refused(
        c.create_volume(Request::new(r.clone())).await,
        Code::OutOfRange,
        "raise the limit",
    );
    r.capacity_range = None;
    let restored = c
        .create_volume(Request::new(r))
        .await?
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(restored.capacity_bytes, 16 * MIB, "grown to the snapshot's size");
    assert!(restored.content_source.is_some());

    // Group snapshots.
    let g = &h.group;
    let group = |name: &str, vols: &[&str]| {
        g.create_volume_group_snapshot(Request::new(csi::CreateVolumeGroupSnapshotRequest {
            name: name.into(),
            source_volume_ids: vols.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }))
    };
    refused(group("", &["a"]).await, Code::InvalidArgument, "name is required");
    refused(
        group("g", &[]).await,
        Code::InvalidArgument,
        "source_volume_ids is required",
    );
    refused(group("g", &["pvc-1", "pvc-1"]).await, Code::InvalidArgument, "twice");
    refused(group("g", &["pvc-1", "never-was"]).await, Code::NotFound, "never-was");
    let made = group("g", &["pvc-1", "pvc-2"])
        .await?
        .into_inner()
        .group_snapshot
        .expect("group");
    assert_eq!(made.snapshots.len(), 2);
    assert!(made
        .snapshots
        .iter()
        .all(|s| s.group_snapshot_id == made.group_snapshot_id));
    let again = group("g", &["pvc-1", "pvc-2"])
        .await?
        .into_inner()
        .group_snapshot
        .expect("group");
    assert_eq!(again.creation_time, made.creation_time);
    refused(group("g", &["pvc-1"]).await, Code::AlreadyExists, "source volumes");
    let member = made.snapshots[0].snapshot_id.clone();
    refused(
        c.delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
            snapshot_id: member,
            ..Default::default()
        }))
        .await,
        Code::FailedPrecondition,
        "delete the group snapshot",
    );
    refused(
        g.get_volume_group_snapshot(Request::new(csi::GetVolumeGroupSnapshotRequest::default()))
            .await,
        Code::InvalidArgument,
        "group_snapshot_id is required",
    );
    refused(
        g.get_volume_group_snapshot(Request::new(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: "never-was".into(),
            ..Default::default()
        }))
        .await,
        Code::NotFound,
        "never-was",
    );
    refused(
        g.get_volume_group_snapshot(Request::new(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: made.group_snapshot_id.clone(),
            snapshot_ids: vec!["other".into()],
            ..Default::default()
        }))
        .await,
        Code::InvalidArgument,
        "pass its own snapshot_ids",
    );
    refused(
        g.delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: made.group_snapshot_id.clone(),
            snapshot_ids: vec!["other".into()],
            ..Default::default()
        }))
        .await,
        Code::InvalidArgument,
        "pass its own snapshot_ids",
    );
    refused(
        g.delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest::default()))
            .await,
        Code::InvalidArgument,
        "group_snapshot_id is required",
    );
    g.delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: made.group_snapshot_id.clone(),
        ..Default::default()
    }))
    .await?;
    let left = c
        .list_snapshots(Request::new(csi::ListSnapshotsRequest::default()))
        .await?
        .into_inner()
        .entries;
    assert_eq!(left.len(), 1, "the group's members went with it");
    Ok(())
}

#[tokio::test]
async fn node_rpcs_refuse_missing_fields_unknown_volumes_and_unstaged_ones() -> Result<()> {
    let h = Harness::new("csi-requests")?;
    let n = &h.node;
    let staging = h.path("staging").display().to_string();
    let target = h.path("target").display().to_string();
    let stage = |id: &str, path: &str, cap: Option<csi::VolumeCapability>| {
        n.node_stage_volume(Request::new(csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: path.into(),
            volume_capability: cap,
            ..Default::default()
        }))
    };
    refused(
        stage("", &staging, Some(mount_cap(""))).await,
        Code::InvalidArgument,
        "volume_id is required",
    );
    refused(
        stage("v", "", Some(mount_cap(""))).await,
        Code::InvalidArgument,
        "staging_target_path is required",
    );
    refused(
        stage("v", &staging, None).await,
        Code::InvalidArgument,
        "volume_capability is required",
    );
    refused(
        stage("v", &staging, Some(mount_cap("zfs"))).await,
        Code::InvalidArgument,
        "ext4 or xfs",
    );
    refused(
        stage("never-was", &staging, Some(mount_cap(""))).await,
        Code::NotFound,
        "never-was",
    );

    let unstage = |id: &str, path: &str| {
        n.node_unstage_volume(Request::new(csi::NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: path.into(),
        }))
    };
    refused(
        unstage("", &staging).await,
        Code::InvalidArgument,
        "volume_id is required",
    );
    refused(
        unstage("v", "").await,
        Code::InvalidArgument,
        "staging_target_path is required",
    );
    unstage("never-was", &staging).await?;

    let v = create(&h, "pvc-n", 16 * MIB).await?;
    let publish = |id: &str, staging: &str, target: &str, cap: Option<csi::VolumeCapability>| {
        n.node_publish_volume(Request::new(csi::NodePublishVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.into(),
            target_path: target.into(),
            volume_capability: cap,
            ..Default::default()
        }))
    };
    refused(
        publish("", &staging, &target, Some(mount_cap(""))).await,
        Code::InvalidArgument,
        "volume_id",
    );
    refused(
        publish("v", &staging, "", Some(mount_cap(""))).await,
        Code::InvalidArgument,
        "target_path",
    );
    refused(
        publish("v", &staging, &target, None).await,
        Code::InvalidArgument,
        "volume_capability",
    );
    refused(
        publish("v", "", &target, Some(mount_cap(""))).await,
        Code::InvalidArgument,
        "staging_target_path",
    );
    refused(
        publish("never-was", &staging, &target, Some(mount_cap(""))).await,
        Code::NotFound,
        "never-was",
    );
    refused(
        publish(&v.volume_id, &staging, &target, Some(mount_cap(""))).await,
        Code::FailedPrecondition,
        "call NodeStageVolume first",
    );

    let unpublish = |id: &str, target: &str| {
        n.node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.into(),
        }))
    };
    refused(
        unpublish("", &target).await,
        Code::InvalidArgument,
        "volume_id is required",
    );
    refused(
        unpublish("v", "").await,
        Code::InvalidArgument,
        "target_path is required",
    );
    std::fs::create_dir_all(&target)?;
    unpublish(&v.volume_id, &target).await?;
    assert!(!std::path::Path::new(&target).exists(), "unpublish removes the target");
    unpublish(&v.volume_id, &target).await?;

    let stats = |id: &str, path: &str| {
        n.node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.into(),
            ..Default::default()
        }))
    };
    refused(stats("", &target).await, Code::InvalidArgument, "volume_id is required");
    refused(stats("v", "").await, Code::InvalidArgument, "volume_path is required");
    refused(stats("never-was", "some/path").await, Code::NotFound, "never-was");
    refused(stats(&v.volume_id, "some/path").await, Code::NotFound, "does not exist");
    std::fs::create_dir_all(&staging)?;
    let gone = stats(&v.volume_id, &staging).await?.into_inner();
    let cond = gone.volume_condition.expect("a condition");
    assert!(cond.abnormal && cond.message.contains("not staged"), "{}", cond.message);

    let expand = |id: &str, path: &str| {
        n.node_expand_volume(Request::new(csi::NodeExpandVolumeRequest {
            volume_id: id.into(),
            volume_path: path.into(),
            ..Default::default()
        }))
    };
    refused(
        expand("", &target).await,
        Code::InvalidArgument,
        "volume_id is required",
    );
    refused(expand("v", "").await, Code::InvalidArgument, "volume_path is required");
    refused(expand("never-was", "some/path").await, Code::NotFound, "never-was");
    refused(
        expand(&v.volume_id, &target).await,
        Code::FailedPrecondition,
        "not staged",
    );
    Ok(())
}
