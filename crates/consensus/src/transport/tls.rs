//! Mutual TLS between peers (and, on a node, for dqlite clients): every
//! side presents a certificate the other trusts. Trust is the client
//! crate's (see `dqlite_client::Tls`): a certificate equal to a CA
//! certificate is accepted, as Go accepts LXD's one self-signed cluster
//! certificate, else it must chain to the CA.

use std::sync::Arc;

use dqlite_client::net::{client_config, pem_certs, pem_key, pem_roots, tls_provider};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};

pub use dqlite_client::net::TlsError;

/// PEM material for mutual TLS.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// The cluster CA certificate (PEM).
    pub ca_pem: Vec<u8>,
    /// This node's certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// This node's private key (PEM).
    pub key_pem: Vec<u8>,
}

impl TlsConfig {
    /// Server side: requires a client certificate the CA vouches for.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(
            Arc::new(pem_roots(&self.ca_pem)?),
            tls_provider(),
        )
        .build()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
        let verifier = Arc::new(PinnedOrWebPki {
            pinned: pem_certs(&self.ca_pem)?,
            inner,
        });
        let config = ServerConfig::builder_with_provider(tls_provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(pem_certs(&self.cert_pem)?, pem_key(&self.key_pem)?)?;
        // No ALPN: go-dqlite offers none, and a server list would refuse
        // a client offering another protocol for nothing.
        Ok(Arc::new(config))
    }

    /// Client side: trusts the CA, presents this node's certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        client_config(&self.ca_pem, &self.cert_pem, &self.key_pem)
    }

    /// The same material for the dqlite client crate.
    pub fn client(&self) -> Result<dqlite_client::Tls, TlsError> {
        Ok(dqlite_client::Tls::new(self.client_config()?))
    }
}

/// The TLS server name for a `host:port` address.
pub fn server_name(address: &str) -> Option<ServerName<'static>> {
    dqlite_client::net::server_name(address)
}

/// Accepts a client certificate equal to a CA certificate, else verifies
/// it with webpki; the handshake signature is always checked.
#[derive(Debug)]
struct PinnedOrWebPki {
    pinned: Vec<CertificateDer<'static>>,
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for PinnedOrWebPki {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            return Ok(ClientCertVerified::assertion());
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
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
