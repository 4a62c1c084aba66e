//! The node's operations over gRPC: `floe.node.v1.NodeVolumes`, one
//! service definition (`proto/node.proto`) with one server and one client
//! for every transport.
//!
//! # Layout
//!
//! - [`convert`]: the domain types of [`super::volumes`] to and from their
//!   messages, checked on receipt;
//! - [`server`]: [`server::NodeVolumesService`], the gRPC service over any
//!   [`super::volumes::NodeVolumes`];
//! - [`member`]: `NodeAdmin`: a volume of a group freeze on any node, and
//!   pairing, status, verification;
//! - [`client`]: [`client::RemoteVolumes`], one node's volumes over a
//!   channel;
//! - here: the channel to the data-plane daemon's unix socket.
//!
//! The transports: the data-plane daemon serves the service on its unix
//! socket (`crate::daemon`), where `floe-csi` reaches it; a node plugin
//! in split mode serves the same service over mutual TLS to the
//! controller (`crate::csi::remote`).

pub mod client;
pub mod convert;
pub mod member;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use super::error::{chain, Error};

/// The longest a call on the local data plane may take: a backstop for a
/// process that hangs (a restore copies a whole volume; a call cut short
/// goes on in the data plane, and its retry finds the result).
const LOCAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// A channel to the gRPC server on a unix socket, made at its first use
/// (making a tonic channel needs a runtime; this may be built without
/// one). It connects lazily: every request that finds no server fails
/// `UNAVAILABLE`, and the next one dials again.
#[derive(Clone, Debug)]
pub struct LocalChannel {
    path: Arc<PathBuf>,
    made: Arc<OnceLock<Channel>>,
}

impl LocalChannel {
    /// The server on `socket`.
    pub fn new(socket: &Path) -> Self {
        LocalChannel {
            path: Arc::new(socket.to_owned()),
            made: Arc::default(),
        }
    }

    /// The channel (call on a runtime).
    pub fn get(&self) -> Channel {
        self.made
            .get_or_init(|| {
                let path = Arc::clone(&self.path);
                // The authority is a placeholder: the connector ignores the URI.
                Endpoint::from_static("http://floe-dataplane.local")
                    .timeout(LOCAL_REQUEST_TIMEOUT)
                    .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                        let path = Arc::clone(&path);
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(&*path).await?))
                        }
                    }))
            })
            .clone()
    }
}

/// The error of a failed call on `node` at `url`: the node's own refusal
/// as it is (code and message), or `UNAVAILABLE` naming the node when the
/// call never reached its service (connection, TLS or transport failure:
/// a status made on this side of the wire keeps its cause; one the node
/// sent has none).
pub fn refusal(node: &str, url: &str, s: Status) -> Error {
    if let Some(cause) = std::error::Error::source(&s) {
        return Error::Remote {
            code: Code::Unavailable,
            message: format!("{node} at {url} cannot be reached: {}", chain(cause)),
        };
    }
    Error::Remote {
        code: s.code(),
        message: s.message().to_owned(),
    }
}
