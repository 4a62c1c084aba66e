//! What the split-mode tests share: a node plugin serving its volumes
//! with mutual TLS as `--node-admin-listen` does (the [`Harness`] node
//! behind [`serve_node_admin`]), the controller services over the cluster
//! `--node-endpoint` builds, and request builders with topology.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use floe_driver::cli::{CsiArgs, PluginMode};
use floe_driver::csi::controller::ControllerService;
use floe_driver::csi::group::GroupService;
use floe_driver::csi::remote::{cluster_from_args, serve_node_admin, NodeAdminServer, RemoteVolumes, TlsFiles};
use floe_driver::csi::{Plugin, TOPOLOGY_KEY};
use floe_driver::node::volumes::NodeVolumes;
use floe_proto::csi;
use floe_proto::csi::controller_server::Controller;
use tonic::Request;

use super::csi::{block_cap, create_req, Harness};

/// One mebibyte.
pub const MIB: i64 = 1 << 20;

/// `--tls-cert`, `--tls-key`, `--tls-ca` of `tls`.
pub fn tls_flags(tls: &TlsFiles) -> Vec<String> {
    let mut out = Vec::new();
    for (flag, path) in [
        ("--tls-cert", &tls.cert),
        ("--tls-key", &tls.key),
        ("--tls-ca", &tls.ca),
    ] {
        out.push(flag.to_owned());
        out.push(path.display().to_string());
    }
    out
}

/// `floe-csi` flags `argv` and `tls`, parsed and validated.
pub fn args(mut argv: Vec<String>, tls: &TlsFiles) -> Result<CsiArgs> {
    argv.insert(0, "floe-csi".into());
    argv.extend(tls_flags(tls));
    let args = CsiArgs::try_parse_from(argv)?;
    args.validate()?;
    Ok(args)
}

/// A node plugin in split mode: its own volumes, served with mutual TLS.
pub struct Node {
    /// Its node id.
    pub id: &'static str,
    /// Where it serves NodeVolumes.
    pub url: String,
    /// The node itself.
    pub harness: Harness,
    admin: Option<NodeAdminServer>,
}

impl Node {
    /// Starts node `id` with the TLS files `tls`.
    pub async fn start(id: &'static str, tls: &TlsFiles) -> Result<Node> {
        let harness = Harness::new(&format!("split-{id}"))?;
        let flags = ["--mode=node", "--node-admin-listen", "127.0.0.1:0"];
        let args = args(flags.map(String::from).to_vec(), tls)?;
        let admin = serve_node_admin(&args, Arc::clone(&harness.plugin.volumes))
            .await?
            .context("--node-admin-listen serves")?;
        let url = format!("https://127.0.0.1:{}", admin.local_addr().port());
        Ok(Node {
            id,
            url,
            harness,
            admin: Some(admin),
        })
    }

    /// What the node itself answers, without the network.
    pub fn local(&self) -> &Arc<dyn NodeVolumes> {
        &self.harness.plugin.volumes
    }

    /// A client of the node with `tls` (and the name to verify).
    pub fn remote(&self, tls: &TlsFiles, server_name: Option<&str>) -> Result<RemoteVolumes> {
        Ok(RemoteVolumes::new(self.id, &self.url, tls, server_name)?)
    }

    /// Stops serving NodeVolumes: the node is down for the controller.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(admin) = self.admin.take() {
            tokio::time::timeout(Duration::from_secs(20), admin.stop())
                .await
                .context("the NodeVolumes server did not stop")??;
        }
        Ok(())
    }
}

/// The controller services over the cluster of `nodes`.
pub fn controller(nodes: &[&Node], tls: &TlsFiles) -> Result<(ControllerService, GroupService)> {
    let endpoints: Vec<String> = nodes.iter().map(|n| format!("{}={}", n.id, n.url)).collect();
    let argv = vec![
        "--mode=controller".into(),
        "--node-endpoint".into(),
        endpoints.join(","),
    ];
    let cluster = cluster_from_args(&args(argv, tls)?)?;
    let plugin = Arc::new(Plugin::new(
        PluginMode::Controller,
        "floe-controller",
        8,
        Arc::new(cluster),
    ));
    Ok((ControllerService::new(Arc::clone(&plugin)), GroupService::new(plugin)))
}

pub fn topology(node: &str) -> csi::Topology {
    csi::Topology {
        segments: [(TOPOLOGY_KEY.to_owned(), node.to_owned())].into(),
    }
}

/// A CreateVolume request of `size` bytes with a topology requirement.
pub fn placed(name: &str, size: i64, requisite: &[&str], preferred: &[&str]) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        accessibility_requirements: Some(csi::TopologyRequirement {
            requisite: requisite.iter().map(|n| topology(n)).collect(),
            preferred: preferred.iter().map(|n| topology(n)).collect(),
        }),
        ..create_req(name, size, block_cap())
    }
}

pub fn from_snapshot(mut req: csi::CreateVolumeRequest, snapshot: &str) -> csi::CreateVolumeRequest {
    use csi::volume_content_source::{SnapshotSource, Type};
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(Type::Snapshot(SnapshotSource {
            snapshot_id: snapshot.into(),
        })),
    });
    req
}

/// The node a volume reports as its topology.
pub fn node_of(v: &csi::Volume) -> String {
    assert_eq!(v.accessible_topology.len(), 1, "{v:?}");
    v.accessible_topology[0].segments[TOPOLOGY_KEY].clone()
}

pub async fn create(c: &ControllerService, req: csi::CreateVolumeRequest) -> Result<csi::Volume, tonic::Status> {
    Ok(c.create_volume(Request::new(req))
        .await?
        .into_inner()
        .volume
        .expect("a volume"))
}

pub async fn capacity(c: &ControllerService, node: &str) -> Result<i64, tonic::Status> {
    let req = csi::GetCapacityRequest {
        accessible_topology: Some(topology(node)),
        ..Default::default()
    };
    Ok(c.get_capacity(Request::new(req)).await?.into_inner().available_capacity)
}
