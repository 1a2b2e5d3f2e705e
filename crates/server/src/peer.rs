//! The other protocol on the client port: peer (raft) traffic. The listener
//! reads the first 8 bytes of every connection (inside TLS when the server
//! has TLS); a dqlite handshake goes to the gateway, HTTP goes to the
//! [`PeerHandler`] together with the bytes already read. The hook keeps
//! this crate free of the consensus crate: the node plugs its `/raft/`
//! handler in here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A boxed, sendable future.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection handed to a [`PeerHandler`]: TCP, or the decrypted
/// stream when the server runs TLS.
pub trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> PeerStream for T {}

/// Serves one peer connection whose first bytes have been sniffed as HTTP.
pub trait PeerHandler: Send + Sync + 'static {
    /// Serves `stream` until it closes. The sniffed bytes are replayed
    /// first, so the handler sees the connection from its first byte.
    fn serve(&self, stream: Prefixed<Box<dyn PeerStream>>) -> BoxFuture;
}

/// What the first bytes of a non-dqlite connection look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// An HTTP/1 request line (`POST /raft/...`, `GET ...`).
    Http,
    /// A TLS record (handshake content type 0x16, version 3.x).
    Tls,
    /// Neither.
    Unknown,
}

/// Classifies the first 8 bytes of a connection that is not a dqlite
/// client.
pub fn sniff(first: &[u8; 8]) -> Sniffed {
    if first[0] == 0x16 && first[1] == 0x03 {
        return Sniffed::Tls;
    }
    // An HTTP method is upper-case ASCII letters followed by a space.
    let method_len = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if (3..=7).contains(&method_len) && first[method_len] == b' ' {
        return Sniffed::Http;
    }
    Sniffed::Unknown
}

/// A stream with some bytes already read off it, replayed before the rest.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, whose first bytes `prefix` were already consumed.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The bytes that were sniffed.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let rest = &this.prefix[this.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn sniffs_http_and_tls() {
        assert_eq!(sniff(b"POST /ra"), Sniffed::Http);
        assert_eq!(sniff(b"GET /raf"), Sniffed::Http);
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0, 0, 0, 0, 0]), Sniffed::Tls);
        assert_eq!(sniff(&2u64.to_le_bytes()), Sniffed::Unknown);
        assert_eq!(sniff(b"POSTXXXX"), Sniffed::Unknown);
        assert_eq!(sniff(b"post /ra"), Sniffed::Unknown);
    }

    #[tokio::test]
    async fn prefix_is_replayed_before_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut p = Prefixed::new(b"hello".to_vec(), b);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
