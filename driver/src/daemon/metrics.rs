//! The data plane's Prometheus metrics over plain HTTP (`--metrics-listen`):
//! `GET /metrics` answers the process's one registry in the text format;
//! anything else is 404. The listener is meant for the node's scraper
//! (bind it to the pod or host address the scraper reaches); the metrics
//! name volumes and counts, nothing secret.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};

/// The answer to one request.
fn answer(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"only GET /metrics is served here\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
        let mut r = Response::new(Full::new(Bytes::from(format!("encode the metrics: {e}\n"))));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    if let Ok(v) = http::HeaderValue::from_str(encoder.format_type()) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// Binds `addr` and serves `registry` from `rt` until the process ends.
pub(super) fn serve(addr: SocketAddr, registry: Registry, rt: &tokio::runtime::Handle) -> std::io::Result<()> {
    let listener = {
        let _entered = rt.enter();
        let std = std::net::TcpListener::bind(addr)?;
        std.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(std)?
    };
    tracing::info!(%addr, "metrics served at /metrics");
    rt.spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept a metrics connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let r = answer(&registry, &req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                // A scrape is one request; a client that stalls is dropped.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
            });
        }
    });
    Ok(())
}
