//! The application's connect function as a [`Dial`]: it is called on a
//! blocking thread (it blocks until connected, as dqlite.h asks of it) and
//! the socket it returns, TCP or Unix, carries the peer traffic.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use dqlite_node::Dial;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ffi::ConnectFunc;

/// A dial function that opens every connection through `connect`.
pub fn dial(connect: ConnectFunc) -> Dial {
    let connect = Arc::new(connect);
    Dial::new(move |address: String| {
        let connect = Arc::clone(&connect);
        async move {
            let fd = tokio::task::spawn_blocking(move || connect.connect(&address))
                .await
                .map_err(io::Error::other)??;
            stream(fd)
        }
    })
}

/// A connected socket of either family, as one stream type.
type Stream = Box<dyn Connection>;
trait Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Connection for T {}

/// Wraps a connected socket for the node's runtime.
fn stream(fd: OwnedFd) -> io::Result<Stream> {
    let tcp = std::net::TcpStream::from(fd);
    // getsockname tells the families apart: std refuses a Unix socket's
    // address as a TCP one.
    if tcp.local_addr().is_ok() {
        tcp.set_nonblocking(true)?;
        let tcp = tokio::net::TcpStream::from_std(tcp)?;
        // One small request per round trip, as the default dialer.
        tcp.set_nodelay(true)?;
        return Ok(Box::new(tcp));
    }
    let unix = std::os::unix::net::UnixStream::from(OwnedFd::from(tcp));
    unix.local_addr().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the connect function returned neither a TCP nor a Unix socket: {e}"),
        )
    })?;
    unix.set_nonblocking(true)?;
    Ok(Box::new(tokio::net::UnixStream::from_std(unix)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tcp_and_unix_sockets_become_streams() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let mut s = stream(OwnedFd::from(client)).expect("tcp stream");
        s.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        std::io::Read::read_exact(&mut server, &mut buf).expect("read");
        assert_eq!(&buf, b"ping");

        let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let mut s = stream(OwnedFd::from(a)).expect("unix stream");
        std::io::Write::write_all(&mut b, b"pong").expect("write");
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong");
    }

    #[test]
    fn other_descriptors_are_refused() {
        let file = tempfile::tempfile().expect("file");
        assert!(stream(OwnedFd::from(file)).is_err());
    }
}
