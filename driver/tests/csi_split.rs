//! Split mode: `floe-csi --mode=controller` reaching node plugins over
//! `floe.node.v1.NodeVolumes` with mutual TLS, on 127.0.0.1.
//!
//! Each node is the test harness's node (the fd holder, the data-plane
//! daemon and its `NodeVolumes`, on a scratch dir) served as
//! `--node-admin-listen` serves it; the controller is the Controller and
//! GroupController services over the cluster that `--node-endpoint` builds
//! (`common::split`). Volumes are created and cut while detached, so
//! nothing is mounted. Certificates come from `common::tls`.

use std::time::Duration;

use anyhow::{Context, Result};
use floe_driver::node::volumes::NodeVolumes;
use floe_proto::csi;
use floe_proto::csi::controller_server::Controller;
use floe_proto::csi::group_controller_server::GroupController;
use floe_proto::node::{node_volumes_client::NodeVolumesClient, GetCapacityRequest};
use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::{Code, Request};

mod common;

use common::csi::{block_cap, create_req};
use common::split::{capacity, controller, create, from_snapshot, node_of, placed, Node, MIB};
use common::tls::{self, NODE_DNS};

/// GetCapacity straight over a channel configured by `tls`.
async fn raw_capacity(url: &str, tls: ClientTlsConfig) -> Result<(), String> {
    let channel = Endpoint::from_shared(url.to_owned())
        .and_then(|e| e.tls_config(tls))
        .map_err(|e| format!("endpoint: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = NodeVolumesClient::new(channel);
    client
        .get_capacity(GetCapacityRequest {})
        .await
        .map_err(|s| format!("call: {s}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_only_clients_whose_certificate_its_ca_signed() -> Result<()> {
    let dir = common::scratch("split-tls")?;
    let pki = tls::pki(dir.path())?;
    let node = Node::start("node-a", &pki.node).await?;
    let trust = || -> Result<ClientTlsConfig> { Ok(ClientTlsConfig::new().ca_certificate(pki.node.ca_certificate()?)) };

    let with_cert = trust()?.identity(pki.controller.identity()?);
    raw_capacity(&node.url, with_cert).await.map_err(anyhow::Error::msg)?;
    let bare = raw_capacity(&node.url, trust()?).await;
    assert!(bare.is_err(), "a client without a certificate was served");
    let rogue = trust()?.identity(pki.rogue_controller.identity()?);
    assert!(
        raw_capacity(&node.url, rogue).await.is_err(),
        "another CA's client was served"
    );

    let e = node
        .remote(&pki.rogue_controller, None)?
        .capacity()
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    // The refusals did not take the server down.
    let cap = node.remote(&pki.controller, None)?.capacity().await?;
    assert!(cap.max_volume_bytes > 0, "{cap:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_trusts_only_nodes_whose_certificate_its_ca_signed_for_the_name_it_dials() -> Result<()> {
    let dir = common::scratch("split-tls")?;
    let pki = tls::pki(dir.path())?;
    let rogue = Node::start("node-r", &pki.rogue_node).await?;
    let e = rogue
        .remote(&pki.controller, None)?
        .capacity()
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("\"node-r\"") && msg.contains(&rogue.url), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");

    let node = Node::start("node-a", &pki.node).await?;
    node.remote(&pki.controller, None)?.capacity().await?;
    node.remote(&pki.controller, Some(NODE_DNS))?.capacity().await?;
    let e = node
        .remote(&pki.controller, Some("other.floe.test"))?
        .capacity()
        .await
        .expect_err("wrong name");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_only_the_controllers_name_among_the_certificates_its_ca_signed() -> Result<()> {
    let dir = common::scratch("split-tls")?;
    let pki = tls::pki(dir.path())?;
    let node = Node::start("node-a", &pki.node).await?;
    let trust = || -> Result<ClientTlsConfig> { Ok(ClientTlsConfig::new().ca_certificate(pki.node.ca_certificate()?)) };

    let intruder = trust()?.identity(pki.intruder.identity()?);
    let e = raw_capacity(&node.url, intruder)
        .await
        .expect_err("another name was served");
    assert!(e.contains("PermissionDenied") || e.contains("permission"), "{e}");
    let e = node.remote(&pki.intruder, None)?.capacity().await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.to_string().contains("controller"), "{e}");
    // A node's own certificate, of the same CA, drives no other node.
    let as_node = trust()?.identity(pki.node.identity()?);
    assert!(
        raw_capacity(&node.url, as_node).await.is_err(),
        "a node's certificate was served"
    );

    let cap = node.remote(&pki.controller, None)?.capacity().await?;
    assert!(cap.max_volume_bytes > 0, "{cap:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_refuses_a_node_certificate_its_ca_signed_for_another_name() -> Result<()> {
    let dir = common::scratch("split-tls")?;
    let pki = tls::pki(dir.path())?;
    let other = Node::start("node-o", &pki.other_node).await?;
    let e = other
        .remote(&pki.controller, None)?
        .capacity()
        .await
        .expect_err("a certificate for another name was trusted");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    let e = other
        .remote(&pki.controller, Some(NODE_DNS))?
        .capacity()
        .await
        .expect_err("not the node's name");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_go_to_the_node_the_topology_names_and_restores_to_the_node_of_their_snapshot() -> Result<()> {
    let dir = common::scratch("split-pki")?;
    let pki = tls::pki(dir.path())?;
    let (a, b) = (
        Node::start("node-a", &pki.node).await?,
        Node::start("node-b", &pki.node).await?,
    );
    let (c, _) = controller(&[&a, &b], &pki.controller)?;

    // Preferred first, within the requisite.
    let vb = create(&c, placed("pvc-b", 4 * MIB, &["node-a", "node-b"], &["node-b"])).await?;
    assert_eq!(node_of(&vb), "node-b");
    assert!(b.local().volume("pvc-b").await?.is_some());
    assert!(a.local().volume("pvc-b").await?.is_none());
    let va = create(&c, placed("pvc-a", 4 * MIB, &["node-a"], &[])).await?;
    assert_eq!(node_of(&va), "node-a");
    assert!(a.local().volume("pvc-a").await?.is_some());
    // No topology: some node, and the one it reports is the one holding it.
    let free = create(&c, create_req("pvc-free", 4 * MIB, block_cap())).await?;
    let holder = if node_of(&free) == "node-a" { &a } else { &b };
    assert!(holder.local().volume("pvc-free").await?.is_some(), "{free:?}");

    // A retry finds the volume where it is; a different size is refused.
    let again = create(&c, placed("pvc-b", 4 * MIB, &["node-a", "node-b"], &["node-a"])).await?;
    assert_eq!(
        (again.volume_id.as_str(), node_of(&again).as_str()),
        ("pvc-b", "node-b")
    );
    let e = create(&c, placed("pvc-b", 8 * MIB, &[], &[]))
        .await
        .expect_err("other size");
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = create(&c, placed("pvc-z", 4 * MIB, &["node-z"], &[]))
        .await
        .expect_err("unknown node");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    let list = c.list_volumes(Request::new(Default::default())).await?.into_inner();
    let listed: Vec<(String, String)> = list
        .entries
        .iter()
        .filter_map(|e| e.volume.as_ref())
        .map(|v| (v.volume_id.clone(), node_of(v)))
        .filter(|(id, _)| id != "pvc-free")
        .collect();
    assert_eq!(
        listed,
        [("pvc-a".into(), "node-a".into()), ("pvc-b".into(), "node-b".into())]
    );

    // Snapshot on B; its restore stays on B whatever is preferred, and a
    // requisite without B is refused.
    let snap = csi::CreateSnapshotRequest {
        name: "snap-b".into(),
        source_volume_id: "pvc-b".into(),
        ..Default::default()
    };
    c.create_snapshot(Request::new(snap)).await?;
    assert!(b.local().snapshots().await?.iter().any(|s| s.id == "snap-b"));
    assert!(a.local().snapshots().await?.is_empty());
    let restored = create(&c, from_snapshot(placed("pvc-r", 4 * MIB, &[], &["node-a"]), "snap-b")).await?;
    assert_eq!(node_of(&restored), "node-b");
    assert!(b.local().volume("pvc-r").await?.is_some());
    let e = create(&c, from_snapshot(placed("pvc-r2", 4 * MIB, &["node-a"], &[]), "snap-b"))
        .await
        .expect_err("the snapshot is on B");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("node-b"), "{e:?}");

    // Expansion and capacity per node.
    let grow = csi::ControllerExpandVolumeRequest {
        volume_id: "pvc-a".into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 8 * MIB,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    c.controller_expand_volume(Request::new(grow)).await?;
    assert_eq!(a.local().volume("pvc-a").await?.map(|v| v.size_bytes), Some(8 << 20));
    assert!(capacity(&c, "node-b").await? > 0);
    assert_eq!(capacity(&c, "node-z").await?, 0);

    // Deletes reach the node; deleting again and unknown ids succeed.
    for _ in 0..2 {
        c.delete_volume(Request::new(csi::DeleteVolumeRequest {
            volume_id: "pvc-r".into(),
            ..Default::default()
        }))
        .await?;
        c.delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
            snapshot_id: "snap-b".into(),
            ..Default::default()
        }))
        .await?;
    }
    assert!(b.local().volume("pvc-r").await?.is_none());
    assert!(b.local().snapshots().await?.is_empty());
    let get = csi::GetSnapshotRequest {
        snapshot_id: "snap-b".into(),
        ..Default::default()
    };
    let e = c.get_snapshot(Request::new(get)).await.expect_err("deleted");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_a_node_reaches_the_controller_with_the_nodes_code_and_message() -> Result<()> {
    use floe_driver::node::volumes::{GroupSpec, SnapshotSpec, VolumeSpec};
    let dir = common::scratch("split-pki")?;
    let pki = tls::pki(dir.path())?;
    let b = Node::start("node-b", &pki.node).await?;
    let remote = b.remote(&pki.controller, None)?;
    let spec = |size: u64| VolumeSpec {
        id: "pvc-1".into(),
        name: "pvc-1".into(),
        size_bytes: size,
        params: Default::default(),
        source: None,
        node: None,
    };
    let made = remote.create(spec(4 << 20)).await?;
    assert_eq!(remote.create(spec(4 << 20)).await?, made, "a retry returns the volume");

    // The same call to the node directly and through the network: the same
    // code, the same words.
    let snap = |volume: &str| SnapshotSpec {
        id: "s".into(),
        name: "s".into(),
        volume: volume.into(),
    };
    let cases: Vec<(Code, Result<(), floe_driver::node::error::Error>, Result<(), _>)> = vec![
        (
            Code::AlreadyExists,
            remote.create(spec(8 << 20)).await.map(drop),
            b.local().create(spec(8 << 20)).await.map(drop),
        ),
        (
            Code::NotFound,
            remote.expand("nope", 8 << 20).await.map(drop),
            b.local().expand("nope", 8 << 20).await.map(drop),
        ),
        (
            Code::NotFound,
            remote.snapshot(snap("nope")).await.map(drop),
            b.local().snapshot(snap("nope")).await.map(drop),
        ),
    ];
    for (code, remote, local) in cases {
        let (r, l) = (remote.expect_err("refused"), local.expect_err("refused"));
        assert_eq!((r.code(), l.code()), (code, code), "{r} / {l}");
        assert_eq!(r.to_string(), l.to_string());
    }

    // Aborted: a cut held on the node (failpoint) keeps pvc-1 busy; a call
    // on it meanwhile is refused by the node, and so reaches us.
    *b.harness.failpoints().cut_delay.lock().expect("lock") = Some((0, Duration::from_secs(3)));
    let cutting = {
        let remote = remote.clone();
        tokio::spawn(async move {
            // The probe below may hold pvc-1 for an instant when the cut
            // starts: the cut is then refused as busy itself, and retried.
            loop {
                let res = remote
                    .create_group(GroupSpec {
                        id: "g".into(),
                        name: "g".into(),
                        members: vec![snap("pvc-1")],
                    })
                    .await;
                match res {
                    Err(e) if e.code() == Code::Aborted => tokio::task::yield_now().await,
                    other => break other,
                }
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let busy = loop {
        match remote.detach("pvc-1").await {
            Err(e) => break e,
            Ok(()) => {
                anyhow::ensure!(!cutting.is_finished(), "the cut ended before a call found pvc-1 busy");
                anyhow::ensure!(tokio::time::Instant::now() < deadline, "pvc-1 never busy");
                tokio::task::yield_now().await;
            }
        }
    };
    assert_eq!(busy.code(), Code::Aborted, "{busy}");
    assert!(
        busy.to_string().contains("pvc-1") && busy.to_string().contains("in progress"),
        "{busy}"
    );
    cutting.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_snapshot_is_one_cut_on_one_node_and_one_across_nodes_is_refused() -> Result<()> {
    let dir = common::scratch("split-pki")?;
    let pki = tls::pki(dir.path())?;
    let (a, b) = (
        Node::start("node-a", &pki.node).await?,
        Node::start("node-b", &pki.node).await?,
    );
    let (c, g) = controller(&[&a, &b], &pki.controller)?;
    for (name, node) in [("pvc-a", "node-a"), ("pvc-b1", "node-b"), ("pvc-b2", "node-b")] {
        create(&c, placed(name, 4 * MIB, &[node], &[])).await?;
    }
    let group = |name: &str, volumes: &[&str]| csi::CreateVolumeGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: volumes.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let e = g
        .create_volume_group_snapshot(Request::new(group("g-ab", &["pvc-a", "pvc-b1"])))
        .await
        .expect_err("spans nodes");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("node-a") && e.message().contains("node-b"),
        "{e:?}"
    );
    assert!(a.local().snapshots().await?.is_empty() && b.local().snapshots().await?.is_empty());

    let made = g
        .create_volume_group_snapshot(Request::new(group("g-b", &["pvc-b1", "pvc-b2"])))
        .await?
        .into_inner()
        .group_snapshot
        .context("a group snapshot")?;
    assert_eq!(made.snapshots.len(), 2);
    assert!(b.local().group(&made.group_snapshot_id).await?.is_some());
    let held = b.local().snapshots().await?;
    assert!(made
        .snapshots
        .iter()
        .all(|s| held.iter().any(|h| h.id == s.snapshot_id)));
    g.delete_volume_group_snapshot(Request::new(csi::DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: made.group_snapshot_id.clone(),
        ..Default::default()
    }))
    .await?;
    assert!(b.local().group(&made.group_snapshot_id).await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_down_fails_only_the_calls_that_need_it_with_unavailable_naming_it() -> Result<()> {
    let dir = common::scratch("split-pki")?;
    let pki = tls::pki(dir.path())?;
    let (mut a, b) = (
        Node::start("node-a", &pki.node).await?,
        Node::start("node-b", &pki.node).await?,
    );
    let (c, _) = controller(&[&a, &b], &pki.controller)?;
    create(&c, placed("pvc-a", 4 * MIB, &["node-a"], &[])).await?;
    create(&c, placed("pvc-b", 4 * MIB, &["node-b"], &[])).await?;
    a.stop().await?;

    let down = |e: tonic::Status| {
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains("\"node-a\"") && e.message().contains(&a.url),
            "{e:?}"
        );
    };
    down(
        c.list_volumes(Request::new(Default::default()))
            .await
            .expect_err("A is down"),
    );
    down(capacity(&c, "node-a").await.expect_err("A is down"));
    // Whether pvc-new exists already cannot be told without A.
    down(
        create(&c, placed("pvc-new", 4 * MIB, &["node-b"], &[]))
            .await
            .expect_err("A is down"),
    );
    // What lives on B is still served.
    assert!(capacity(&c, "node-b").await? > 0);
    c.delete_volume(Request::new(csi::DeleteVolumeRequest {
        volume_id: "pvc-b".into(),
        ..Default::default()
    }))
    .await?;
    assert!(b.local().volume("pvc-b").await?.is_none());
    Ok(())
}
