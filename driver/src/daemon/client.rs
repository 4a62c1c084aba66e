//! [`DaemonClient`]: the data plane's `DataPlane` service on its unix
//! socket, for `floe-csi` and tests. The node's operations on the same
//! socket are `node::rpc::client::RemoteVolumes::local`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use floe_proto::node as wire;
use floe_proto::node::data_plane_client::DataPlaneClient;
use tonic::transport::Channel;

use crate::node::error::{Error, Result};
use crate::node::rpc::{refusal, LocalChannel};

/// The data plane serving on one socket. Cheap to clone; connects lazily
/// and dials again after the data plane restarts.
#[derive(Clone, Debug)]
pub struct DaemonClient {
    url: String,
    channel: LocalChannel,
}

const WHO: &str = "this node's data plane (floe-dataplane serve)";

impl DaemonClient {
    /// The data plane at `socket` (`<run-dir>/dataplane.sock`).
    pub fn new(socket: &Path) -> Self {
        DaemonClient {
            url: format!("unix:{}", socket.display()),
            channel: LocalChannel::new(socket),
        }
    }

    fn client(&self) -> DataPlaneClient<Channel> {
        DataPlaneClient::new(self.channel.get())
    }

    /// The process, its volumes, the file systems frozen now.
    pub async fn status(&self) -> Result<wire::GetStatusResponse> {
        let r = self.client().get_status(wire::GetStatusRequest {}).await;
        Ok(r.map_err(|s| refusal(WHO, &self.url, s))?.into_inner())
    }

    /// `syncfs` and `FIFREEZE` the floe volume's file system mounted at
    /// `path` for at most `timeout` (`None`: the data plane's default).
    pub async fn quiesce(&self, path: &Path, timeout: Option<Duration>) -> Result<wire::FrozenMount> {
        let req = wire::QuiesceMountRequest {
            path: path.to_string_lossy().into_owned(),
            timeout_ms: timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        };
        let r = self.client().quiesce_mount(req).await;
        r.map_err(|s| refusal(WHO, &self.url, s))?
            .into_inner()
            .frozen
            .ok_or_else(|| Error::Internal("the data plane answered a quiesce without the frozen mount".into()))
    }

    /// Thaws what the quiesce of `token` froze; returns its mount point.
    pub async fn thaw(&self, token: &str) -> Result<PathBuf> {
        let req = wire::ThawMountRequest {
            token: token.to_owned(),
        };
        let r = self.client().thaw_mount(req).await;
        Ok(PathBuf::from(
            r.map_err(|s| refusal(WHO, &self.url, s))?.into_inner().path,
        ))
    }
}

/// Asks the data plane at `socket` for its status every `interval` and
/// logs it (or that it is unreachable), on the current runtime: what a
/// node plugin does to show the data plane's health, never in the I/O path.
pub fn spawn_status_watch(socket: &Path, interval: Duration) -> tokio::task::JoinHandle<()> {
    let client = DaemonClient::new(socket);
    tokio::spawn(async move {
        let mut was_up = None;
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            match client.status().await {
                Ok(s) => {
                    let attached = s.volumes.iter().filter(|v| v.attachment.is_some()).count();
                    tracing::info!(
                        pid = s.pid,
                        volumes = s.volumes.len(),
                        attached,
                        frozen = s.frozen.len(),
                        holder_reachable = s.holder_reachable,
                        "data plane status"
                    );
                    was_up = Some(true);
                }
                Err(e) => {
                    if was_up != Some(false) {
                        tracing::warn!(socket = %client.url, error = %crate::node::error::chain(&e), "data plane not reachable");
                    }
                    was_up = Some(false);
                }
            }
        }
    })
}
