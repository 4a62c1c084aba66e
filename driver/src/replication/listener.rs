//! A DR node's replication listener: TCP, then a TLS handshake that needs a
//! client certificate of the peer site's CA carrying the peer site's name,
//! then the `Replication` service. Handshakes run beside the accept loop,
//! each bounded in time, so a peer that stalls holds up no one; a peer that
//! fails one is counted (`rejected_total{reason="identity"}`) and dropped
//! before it can send a frame.
//!
//! The same accept loop serves a node's coordinator listener
//! ([`serve_router`]), to the nodes of its own site.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::link::Reason;
use super::receiver::Receivers;
use super::tls::TlsSource;

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections past their handshake waiting for the server to take them.
const READY_QUEUE: usize = 16;

/// Serves `receivers` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<TlsSource>,
    receivers: Receivers,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let refused = receivers.unknown.clone();
    let router = tonic::transport::Server::builder()
        .http2_adaptive_window(Some(true))
        .add_service(receivers.service());
    serve_router(
        listener,
        tls,
        router,
        move || refused.reject(Reason::Identity),
        shutdown,
    )
    .await
}

/// Serves `router` on `listener` to peers that pass `tls` (a certificate of
/// its CA carrying its peer's name) until `shutdown` resolves; `refused`
/// counts the others.
pub async fn serve_router(
    listener: TcpListener,
    tls: Arc<TlsSource>,
    router: tonic::transport::server::Router,
    refused: impl Fn() + Clone + Send + Sync + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (ready, incoming) = mpsc::channel::<std::io::Result<TlsStream<TcpStream>>>(READY_QUEUE);
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "listener: accept failed");
                    continue;
                }
            };
            let (tls, ready, refused) = (Arc::clone(&tls), ready.clone(), refused.clone());
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.server());
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        refused();
                        tracing::warn!(%from, error = %e, "listener: TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        refused();
                        tracing::warn!(%from, "listener: TLS handshake timed out");
                        return;
                    }
                };
                if !tls.authorised(stream.get_ref().1.peer_certificates()) {
                    refused();
                    tracing::warn!(%from, peer = %tls.peer(), "listener: a certificate for another name");
                    return;
                }
                let _ = ready.send(Ok(stream)).await;
            });
        }
    });
    let served = router
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown)
        .await;
    accept.abort();
    served
}
