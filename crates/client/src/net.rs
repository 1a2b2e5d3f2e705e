//! How a connection to an address is opened: the dial function, and TLS.
//!
//! A [`Dial`] is a user function from an address to a byte stream. A
//! boxed `AsyncRead + AsyncWrite` stream rather than a `TcpStream` is what
//! lets it go through a proxy, an SSH tunnel or a Unix socket. The same
//! type is used by the consensus service for peer traffic and joins, so
//! one function serves a whole node. TLS, when configured, runs over
//! whatever the dial function returns.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream a connection runs over.
pub trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection for T {}

/// What a dial function returns.
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<Box<dyn Connection>>> + Send>>;

/// Opens the connection to an address (`host:port` as the cluster knows
/// it). The default dials TCP.
///
/// ```
/// # use dqlite_client::Dial;
/// // Every address goes through one local proxy.
/// let dial = Dial::new(|_address: String| tokio::net::TcpStream::connect("127.0.0.1:7000"));
/// ```
#[derive(Clone)]
pub struct Dial(Arc<dyn Fn(String) -> DialFuture + Send + Sync>);

impl Dial {
    /// A dial function from an async `f(address) -> io::Result<stream>`.
    pub fn new<F, Fut, C>(f: F) -> Dial
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<C>> + Send + 'static,
        C: Connection,
    {
        Dial(Arc::new(move |address| {
            let fut = f(address);
            Box::pin(async move { Ok(Box::new(fut.await?) as Box<dyn Connection>) })
        }))
    }

    /// Plain TCP, with Nagle off (one small request per round trip).
    pub fn tcp() -> Dial {
        Dial::new(|address: String| async move {
            let tcp = TcpStream::connect(address).await?;
            tcp.set_nodelay(true)?;
            Ok(tcp)
        })
    }

    /// Opens a connection to `address`.
    pub async fn dial(&self, address: &str) -> io::Result<Box<dyn Connection>> {
        (self.0)(address.to_owned()).await
    }
}

impl Default for Dial {
    fn default() -> Self {
        Dial::tcp()
    }
}

impl fmt::Debug for Dial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dial(..)")
    }
}

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// PEM could not be parsed.
    #[error("bad PEM: {0}")]
    Pem(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every TLS configuration of the workspace uses.
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates from PEM.
pub fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate".into()));
    }
    Ok(certs)
}

/// The first private key in PEM.
pub fn pem_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| TlsError::Pem(e.to_string()))?
        .ok_or_else(|| TlsError::Pem("no private key".into()))
}

/// A root store of the certificates in `ca_pem`.
pub fn pem_roots(ca_pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(ca_pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Client-side TLS: who we are and whom we trust.
///
/// Trust follows Go's `crypto/x509`, which go-dqlite relies on: a peer
/// whose certificate is one of the CA certificates themselves is
/// accepted (LXD's model, one self-signed cluster certificate that is CA
/// and identity of every node and client, `CA:TRUE` and all), and any
/// other certificate must chain to the CA and name the address's host
/// (or [`Tls::with_server_name`]).
#[derive(Clone, Debug)]
pub struct Tls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl Tls {
    /// Mutual TLS from PEM: the CA certificate(s), our certificate chain
    /// and its private key. For LXD's model pass the cluster certificate
    /// as both `ca` and `cert`.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Tls, TlsError> {
        Ok(Tls::new(client_config(ca, cert, key)?))
    }

    /// TLS with a configuration built elsewhere.
    pub fn new(config: Arc<ClientConfig>) -> Tls {
        Tls {
            config,
            server_name: None,
        }
    }

    /// The name to verify servers against, instead of the host of the
    /// address dialled (go-dqlite sets its certificate's first DNS name).
    pub fn with_server_name(mut self, name: &str) -> Result<Tls, TlsError> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| TlsError::Pem(format!("bad server name {name}: {e}")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// The rustls configuration.
    pub fn client_config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// Runs the TLS handshake over `stream`, opened to `address`.
    pub async fn connect(
        &self,
        address: &str,
        stream: Box<dyn Connection>,
    ) -> io::Result<Box<dyn Connection>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => server_name(address).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {address}"))
            })?,
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        Ok(Box::new(connector.connect(name, stream).await?))
    }
}

/// A client configuration presenting `cert`/`key` and trusting `ca` (see
/// [`Tls`] for what is trusted).
pub fn client_config(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
    let pinned = pem_certs(ca)?;
    let roots = Arc::new(pem_roots(ca)?);
    let inner = WebPkiServerVerifier::builder_with_provider(roots, tls_provider())
        .build()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    let verifier = Arc::new(PinnedOrWebPki { pinned, inner });
    let config = ClientConfig::builder_with_provider(tls_provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(pem_certs(cert)?, pem_key(key)?)?;
    Ok(Arc::new(config))
}

/// The TLS server name for a `host:port` address.
pub fn server_name(address: &str) -> Option<ServerName<'static>> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

/// Accepts a server certificate equal to a CA certificate (webpki alone
/// refuses a CA certificate as an end entity), else verifies it with
/// webpki. The handshake signature is always checked.
#[derive(Debug)]
struct PinnedOrWebPki {
    pinned: Vec<CertificateDer<'static>>,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
