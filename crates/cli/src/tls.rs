//! The client TLS flags of `shell`, `cluster` and `bench`: the files
//! Debian's `dqlite` shell takes (`-c/--cert`, `-k/--key`), plus `--ca`.

use std::path::PathBuf;

use anyhow::Context;
use dqlite_client::{Config, Tls};

/// TLS to the cluster.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Client certificate (PEM): talk TLS to the cluster, as `dqlite -c`.
    #[arg(short = 'c', long = "cert", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM), as `dqlite -k`.
    #[arg(short = 'k', long = "key", requires = "cert")]
    pub key: Option<PathBuf>,
    /// CA certificate(s) (PEM) the servers' certificates must chain to.
    /// Default: the client certificate itself, as go-dqlite does (LXD's
    /// model: one cluster certificate is CA and identity of everyone).
    #[arg(long = "ca", requires = "cert")]
    pub ca: Option<PathBuf>,
}

impl TlsArgs {
    /// Sets `config.tls` when a certificate was given.
    pub fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(());
        };
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let ca_pem = match &self.ca {
            Some(ca) => read(ca)?,
            None => cert_pem.clone(),
        };
        config.tls = Some(Tls::from_pem(&ca_pem, &cert_pem, &key_pem).context("TLS")?);
        Ok(())
    }
}
