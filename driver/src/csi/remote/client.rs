//! A controller's [`RemoteVolumes`] of one node plugin, over mutual TLS.

use std::time::Duration;

use tonic::transport::{ClientTlsConfig, Endpoint};

use super::TlsFiles;
use crate::node::error::{chain, Error, Result};
pub use crate::node::rpc::client::RemoteVolumes;

/// How long a connection attempt to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a call on a node may take: a backstop for a node that hangs
/// (the CO's own deadline usually ends a call sooner). Generous, because a
/// restore or clone copies a whole volume; a call cut short goes on in the
/// node's data plane, and its retry finds the result (or `ABORTED` while it
/// runs).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

impl RemoteVolumes {
    /// The volumes of node `node`, served at `url` (`https://HOST:PORT`).
    /// The client shows `tls.cert` and trusts only servers whose certificate
    /// `tls.ca` signed for `server_name` (default: the host of `url`).
    /// Nothing is dialled yet.
    pub fn new(node: &str, url: &str, tls: &TlsFiles, server_name: Option<&str>) -> Result<Self> {
        let bad = |expected: String| Error::Invalid {
            field: "--node-endpoint",
            value: format!("{node}={url}"),
            expected,
        };
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| bad(format!("NODE=https://HOST:PORT ({e})")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        let uri = endpoint.uri();
        let host = match (uri.scheme_str(), uri.host(), uri.port_u16()) {
            (Some("https"), Some(host), Some(_)) => host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            _ => return Err(bad("NODE=https://HOST:PORT".into())),
        };
        let config = ClientTlsConfig::new()
            .ca_certificate(tls.ca_certificate()?)
            .identity(tls.identity()?)
            .domain_name(server_name.unwrap_or(&host));
        let endpoint = endpoint
            .tls_config(config)
            .map_err(|e| bad(format!("an address TLS can verify ({})", chain(&e))))?;
        Ok(RemoteVolumes::over(node, url, endpoint.connect_lazy()))
    }
}
