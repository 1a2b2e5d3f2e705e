//! Peer traffic on the client port: the server sniffs each connection and
//! hands the non-dqlite ones here; they are `/raft/` HTTP, in TLS when the
//! cluster uses TLS.

use std::sync::Arc;

use dqlite_consensus::transport::{serve_connection, RaftHttp};
use dqlite_server::peer::{sniff, BoxFuture, PeerHandler, Prefixed, Sniffed};
use tokio::net::TcpStream;
use tracing::debug;

/// Serves `/raft/` on connections handed over by the server.
pub(crate) struct RaftPeers {
    pub http: RaftHttp,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl RaftPeers {
    pub fn new(http: RaftHttp, tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>) -> Self {
        RaftPeers {
            http,
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
        }
    }
}

impl PeerHandler for RaftPeers {
    fn serve(&self, stream: Prefixed<TcpStream>) -> BoxFuture {
        let http = self.http.clone();
        let tls = self.tls.clone();
        let kind = stream
            .prefix()
            .try_into()
            .map_or(Sniffed::Unknown, |first: [u8; 8]| sniff(&first));
        Box::pin(async move {
            match (kind, tls) {
                (Sniffed::Http, None) => serve_connection(stream, http).await,
                (Sniffed::Tls, Some(acceptor)) => match acceptor.accept(stream).await {
                    Ok(tls) => serve_connection(tls, http).await,
                    Err(e) => debug!(error = %e, "peer TLS handshake failed"),
                },
                // Plain HTTP when TLS is required, or TLS we cannot serve.
                (kind, _) => debug!(?kind, "peer connection refused"),
            }
        })
    }
}
