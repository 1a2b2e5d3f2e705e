//! HTTP on the client port: the server sniffs each connection and hands
//! the non-dqlite ones here. They are `/raft/` peer traffic, or a scrape of
//! `GET /metrics` (the server has already unwrapped TLS, if any).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use dqlite_consensus::transport::RaftHttp;
use dqlite_server::peer::{BoxFuture, PeerHandler, PeerStream, Prefixed};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::metrics::{NodeMetrics, CONTENT_TYPE};

/// Serves `/raft/` and `/metrics` on connections handed over by the server.
pub(crate) struct RaftPeers {
    pub http: RaftHttp,
    pub metrics: Arc<NodeMetrics>,
}

impl RaftPeers {
    pub fn new(http: RaftHttp, metrics: Arc<NodeMetrics>) -> Self {
        RaftPeers { http, metrics }
    }
}

impl PeerHandler for RaftPeers {
    fn serve(&self, stream: Prefixed<Box<dyn PeerStream>>) -> BoxFuture {
        let http = self.http.clone();
        let metrics = Arc::clone(&self.metrics);
        Box::pin(serve_http(stream, http, metrics))
    }
}

/// Serves HTTP/1.1 until the connection closes: `/metrics` here, the rest
/// by the raft handler.
async fn serve_http<I>(io: I, http: RaftHttp, metrics: Arc<NodeMetrics>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let http = http.clone();
        let metrics = Arc::clone(&metrics);
        async move {
            if req.uri().path() == "/metrics" {
                return Ok::<_, Infallible>(scrape(req.method(), &metrics));
            }
            Ok(http.handle(req).await)
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        debug!(error = %e, "HTTP connection ended");
    }
}

fn scrape(method: &Method, metrics: &NodeMetrics) -> Response<Full<Bytes>> {
    let mut resp = if method == Method::GET || method == Method::HEAD {
        let mut r = Response::new(Full::new(Bytes::from(metrics.render())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(CONTENT_TYPE),
        );
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"use GET\n")));
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r
    };
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}
