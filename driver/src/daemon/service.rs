//! `floe.node.v1.DataPlane`: the daemon's own operations on its unix
//! socket — its state, and the freeze of a floe volume's mounted file
//! system. Requests are parsed here, once, into checked values; the work
//! (mount table, `syncfs`, `FIFREEZE`) runs on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use floe_proto::node as wire;
use floe_proto::node::data_plane_server::{DataPlane, DataPlaneServer};
use tonic::{Request, Response, Status};

use super::Daemon;
use crate::model::HostPath;
use crate::node::error::Error as NodeError;
use crate::node::plane::error::PlaneError;
use crate::node::plane::types::{
    is_token, parse_mode, AttachState, FrozenInfo, RequestError, VolumeInfo, DEFAULT_QUIESCE_TIMEOUT,
    MAX_QUIESCE_TIMEOUT,
};
use crate::node::rpc::convert::mode_to_wire;

/// The service, over a serving daemon.
pub(super) struct DataPlaneService {
    daemon: Arc<Daemon>,
}

impl DataPlaneService {
    /// The service in front of `daemon`, ready to route.
    pub(super) fn server(daemon: Arc<Daemon>) -> DataPlaneServer<Self> {
        DataPlaneServer::new(DataPlaneService { daemon })
    }

    /// Runs `op` on the daemon from tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Daemon) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, Status> {
        let daemon = Arc::clone(&self.daemon);
        tokio::task::spawn_blocking(move || op(&daemon))
            .await
            .map_err(|e| Status::internal(format!("a data-plane operation panicked or was cancelled: {e}")))?
            .map_err(|e| {
                let status = Status::from(e);
                tracing::warn!(code = ?status.code(), error = status.message(), "DataPlane call refused");
                status
            })
    }
}

/// A quiesce's timeout: 0 is the default; at most [`MAX_QUIESCE_TIMEOUT`].
fn quiesce_timeout(ms: u64) -> Result<Duration, RequestError> {
    match ms {
        0 => Ok(DEFAULT_QUIESCE_TIMEOUT),
        ms if u128::from(ms) > MAX_QUIESCE_TIMEOUT.as_millis() => Err(RequestError::Timeout(ms)),
        ms => Ok(Duration::from_millis(ms)),
    }
}

fn refused(e: impl Into<PlaneError>) -> Status {
    Status::from(NodeError::from(e.into()))
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl DataPlane for DataPlaneService {
    async fn get_status(&self, _: Request<wire::GetStatusRequest>) -> Answer<wire::GetStatusResponse> {
        let s = self.blocking(|d| Ok(d.status())).await?;
        Ok(Response::new(s))
    }

    async fn quiesce_mount(&self, request: Request<wire::QuiesceMountRequest>) -> Answer<wire::QuiesceMountResponse> {
        let req = request.into_inner();
        let path = HostPath::parse("path", &req.path).map_err(|e| refused(RequestError::from(e)))?;
        let timeout = quiesce_timeout(req.timeout_ms).map_err(refused)?;
        let q = self
            .blocking(move |d| {
                d.check_floe_mount(&path)?;
                Ok(d.freezer.quiesce(&path, timeout)?)
            })
            .await?;
        Ok(Response::new(wire::QuiesceMountResponse {
            frozen: Some(wire::FrozenMount {
                token: q.token,
                path: q.path.to_string_lossy().into_owned(),
                deadline_unix_ms: q.deadline_unix_ms,
            }),
            timeout_ms: q.timeout_ms,
        }))
    }

    async fn thaw_mount(&self, request: Request<wire::ThawMountRequest>) -> Answer<wire::ThawMountResponse> {
        let token = request.into_inner().token;
        if !is_token(&token) {
            return Err(refused(RequestError::Token(token)));
        }
        let token = token.to_ascii_lowercase();
        let path = self.blocking(move |d| Ok(d.freezer.thaw(&token)?)).await?;
        Ok(Response::new(wire::ThawMountResponse {
            path: path.to_string_lossy().into_owned(),
        }))
    }
}

/// A store of the plane as it travels.
pub(super) fn volume_to_wire(v: &VolumeInfo) -> wire::PlaneVolume {
    let mode = parse_mode(&v.mode).map_or(wire::ReplicationMode::Unspecified, mode_to_wire);
    wire::PlaneVolume {
        store: v.volume.clone(),
        size_bytes: v.size_bytes,
        block_size: v.block_size,
        mode: mode.into(),
        snapshots: v.snapshots.clone(),
        attachment: v.attachment.as_ref().map(|a| wire::PlaneAttachment {
            device: a.device.to_string_lossy().into_owned(),
            fuse_dir: a.fuse_dir.to_string_lossy().into_owned(),
            state: match a.state {
                AttachState::Serving => wire::AttachState::Serving,
                AttachState::Resumed => wire::AttachState::Resumed,
                AttachState::Broken => wire::AttachState::Broken,
            }
            .into(),
            detail: a.detail.clone().unwrap_or_default(),
            incarnation: a.incarnation,
            dirty_blocks: a.dirty_blocks,
        }),
    }
}

/// A frozen file system as it travels.
pub(super) fn frozen_to_wire(f: &FrozenInfo) -> wire::FrozenMount {
    wire::FrozenMount {
        token: f.token.clone(),
        path: f.path.to_string_lossy().into_owned(),
        deadline_unix_ms: f.deadline_unix_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiesce_timeouts_are_bounded_and_zero_is_the_default() {
        assert_eq!(quiesce_timeout(0).ok(), Some(DEFAULT_QUIESCE_TIMEOUT));
        assert_eq!(quiesce_timeout(5).ok(), Some(Duration::from_millis(5)));
        assert!(quiesce_timeout(600_000).is_ok());
        assert!(matches!(quiesce_timeout(600_001), Err(RequestError::Timeout(600_001))));
    }

    #[test]
    fn quiesce_paths_and_thaw_tokens_are_checked_before_any_work() {
        for bad in ["mnt", "/mnt/./x", "/mnt/../etc", "/mnt/x/", ""] {
            assert!(HostPath::parse("path", bad).is_err(), "{bad:?}");
        }
        assert!(HostPath::parse("path", "/mnt/x").is_ok());
        assert!(is_token("0123456789abcdef0123456789ABCDEF"));
        for bad in ["../x", "0123", "0123456789abcdef0123456789abcdeg"] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }
}
