//! The CSI services of `floe-csi`: Identity, Controller, GroupController and
//! Node, over tonic on a unix socket.
//!
//! # Layout
//!
//! - [`identity`], [`controller`], [`group`], [`node`]: one file per service;
//!   every handler reads the same way — convert the request ([`params`]),
//!   take the per-object guards ([`crate::node::locks`]), call the node
//!   ([`crate::node::volumes::NodeVolumes`]), map the error
//!   ([`crate::node::error`], the one place a `tonic::Status` is made);
//! - [`remote`]: split mode, `node.proto` over mutual TLS.
//!
//! A node plugin's `NodeVolumes` is the data-plane daemon's
//! (`floe-dataplane serve`), reached over its unix socket with
//! `node::rpc::client::RemoteVolumes::local`, so `floe-csi` holds no volume
//! and can be killed at any time; the daemon runs the node's catalog
//! ([`crate::node::local`]) for those calls.
//!
//! # Modes
//!
//! `--mode=all` serves everything and the controller calls the node's
//! volumes directly. `--mode=node` serves Identity and Node, and with
//! `--node-admin-listen` also its volumes over `node.proto` with mutual TLS.
//! `--mode=controller` serves Identity, Controller and GroupController over
//! the volumes of the node plugins it reaches that way ([`remote`]).

pub mod controller;
pub mod group;
pub mod identity;
pub mod node;
pub mod params;
pub mod remote;

use std::path::PathBuf;
use std::sync::Arc;

use floe_proto::csi;

use crate::cli::PluginMode;
use crate::dataplane::localsock;
use crate::node::error::{self, Error, Result};
use crate::node::locks::Locks;
use crate::node::volumes::{self, NodeVolumes, Snapshot};

/// The driver's name, as the CSIDriver object and StorageClasses say it.
pub const DRIVER_NAME: &str = "floe.csi.dev";
/// The topology key: volumes live on one node.
pub const TOPOLOGY_KEY: &str = "topology.floe.dev/node";

/// What every service shares.
pub struct Plugin {
    /// CSI driver name.
    pub driver: String,
    /// This node's id (the Kubernetes node name).
    pub node_id: String,
    /// What this process serves.
    pub mode: PluginMode,
    /// Most volumes this node stages at once.
    pub max_volumes: i64,
    /// The node holding the volumes.
    pub volumes: Arc<dyn NodeVolumes>,
    /// Per-object guards.
    pub locks: Locks,
}

impl Plugin {
    /// A plugin of `mode` on node `node_id` over `volumes`.
    pub fn new(mode: PluginMode, node_id: &str, max_volumes: i64, volumes: Arc<dyn NodeVolumes>) -> Self {
        Plugin {
            driver: DRIVER_NAME.to_owned(),
            node_id: node_id.to_owned(),
            mode,
            max_volumes,
            volumes,
            locks: Locks::default(),
        }
    }

    /// Volume `id`, NOT_FOUND when no node holds it.
    pub async fn volume(&self, id: &str) -> Result<volumes::Volume> {
        let v = self.volumes.volume(id).await?;
        v.ok_or_else(|| Error::VolumeNotFound(id.to_owned()))
    }

    /// Snapshot `id`, NOT_FOUND when no node holds it.
    pub async fn snapshot(&self, id: &str) -> Result<Snapshot> {
        let all = self.volumes.snapshots().await?;
        all.into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| Error::SnapshotNotFound(id.to_owned()))
    }
}

/// The topology segment of `node`.
pub fn topology(node: &str) -> csi::Topology {
    csi::Topology {
        segments: [(TOPOLOGY_KEY.to_owned(), node.to_owned())].into(),
    }
}

/// A snapshot as CSI shows it (always ready: the cut is durable when taken).
pub fn csi_snapshot(s: &Snapshot) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: s.size_bytes as i64,
        snapshot_id: s.id.clone(),
        source_volume_id: s.source_volume.clone(),
        creation_time: Some(s.created.into()),
        ready_to_use: true,
        group_snapshot_id: s.group.clone().unwrap_or_default(),
    }
}

/// The path of a `unix://` endpoint.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(Error::Invalid {
            field: "--endpoint",
            value: endpoint.to_owned(),
            expected: "unix:///absolute/path/to/csi.sock".into(),
        });
    }
    Ok(PathBuf::from(path))
}

/// Serves the services of `plugin.mode` on the unix socket at `path` (a
/// stale socket file is removed first; the socket is 0600 and a directory
/// made for it 0700, whatever the umask) until `shutdown` resolves.
pub async fn serve(
    plugin: Arc<Plugin>,
    path: &std::path::Path,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    use floe_proto::csi::{
        controller_server::ControllerServer, group_controller_server::GroupControllerServer,
        identity_server::IdentityServer, node_server::NodeServer,
    };
    if let Some(dir) = path.parent() {
        localsock::dir_if_missing(dir).map_err(Error::io("create the socket directory (mode 0700)", dir))?;
    }
    // Mode 0600 before it listens, whatever the umask: only root (kubelet,
    // the sidecars) may call.
    let listener = localsock::listen_tokio(path).map_err(Error::io("listen (mode 0600) on", path))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let serves_controller = matches!(plugin.mode, PluginMode::Controller | PluginMode::All);
    let serves_node = matches!(plugin.mode, PluginMode::Node | PluginMode::All);
    let router = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity::IdentityService::new(Arc::clone(&plugin))))
        .add_optional_service(
            serves_controller.then(|| ControllerServer::new(controller::ControllerService::new(Arc::clone(&plugin)))),
        )
        .add_optional_service(
            serves_controller.then(|| GroupControllerServer::new(group::GroupService::new(Arc::clone(&plugin)))),
        )
        .add_optional_service(serves_node.then(|| NodeServer::new(node::NodeService::new(Arc::clone(&plugin)))));
    tracing::info!(socket = %path.display(), mode = ?plugin.mode, node = %plugin.node_id, "serving CSI");
    let res = router.serve_with_incoming_shutdown(incoming, shutdown).await;
    let _ = std::fs::remove_file(path);
    res.map_err(|e| Error::Internal(format!("serve CSI on {}: {}", path.display(), error::chain(&e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_absolute_unix_paths() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").ok(),
            Some(PathBuf::from("/csi/csi.sock"))
        );
        assert_eq!(
            socket_path("unix:/csi/csi.sock").ok(),
            Some(PathBuf::from("/csi/csi.sock"))
        );
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        assert!(socket_path("unix://relative").is_err());
    }
}
