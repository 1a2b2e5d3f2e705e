//! Where a server listens: a TCP address, or an abstract Unix socket
//! (`@name`, Linux) as C dqlite's bind address allows. go-dqlite's app
//! binds its node to `@dqlite-<id>` when it terminates TLS itself and
//! proxies the cluster's connections to that socket.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::either::Either;

/// An accepted connection: TCP or Unix.
pub type Stream = Either<TcpStream, UnixStream>;

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// A TCP address.
    Tcp(TcpListener),
    /// An abstract Unix socket; only this process may connect (as C
    /// dqlite: the socket is the inside of the application's proxy, and
    /// anyone else would bypass its TLS).
    Unix {
        /// The socket.
        listener: UnixListener,
        /// `@name`.
        name: String,
    },
}

impl Listener {
    /// Binds `address`: `@name` is an abstract Unix socket, anything
    /// else a TCP `host:port`.
    pub async fn bind(address: &str) -> io::Result<Listener> {
        match address.strip_prefix('@') {
            Some(name) => bind_abstract(name).map(|listener| Listener::Unix {
                listener,
                name: address.to_string(),
            }),
            None => Ok(Listener::Tcp(TcpListener::bind(address).await?)),
        }
    }

    /// The bound TCP address (with the port picked for port 0); `None`
    /// for a Unix socket.
    pub fn tcp_addr(&self) -> io::Result<Option<SocketAddr>> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(Some),
            Listener::Unix { .. } => Ok(None),
        }
    }

    /// What was bound, as an address string (`ip:port` or `@name`).
    pub fn local_address(&self) -> io::Result<String> {
        match self {
            Listener::Tcp(l) => Ok(l.local_addr()?.to_string()),
            Listener::Unix { name, .. } => Ok(name.clone()),
        }
    }

    /// The next connection and a description of its peer for logs.
    /// Unix connections from other processes are closed here.
    pub async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // One small request per round trip.
                let _ = s.set_nodelay(true);
                Ok((Either::Left(s), peer.to_string()))
            }
            Listener::Unix { listener, name } => loop {
                let (s, _) = listener.accept().await?;
                let pid = s.peer_cred().ok().and_then(|c| c.pid());
                if pid == Some(std::process::id() as i32) {
                    return Ok((Either::Right(s), name.clone()));
                }
                tracing::debug!(?pid, socket = %name, "connection from another process; closing");
            },
        }
    }
}

#[cfg(target_os = "linux")]
fn bind_abstract(name: &str) -> io::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    if name.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an abstract socket needs a name after '@'",
        ));
    }
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let std = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    std.set_nonblocking(true)?;
    UnixListener::from_std(std)
}

#[cfg(not(target_os = "linux"))]
fn bind_abstract(_name: &str) -> io::Result<UnixListener> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract Unix sockets exist on Linux only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_abstract_socket_accepts_this_process() {
        let name = format!("@dqlite-rs-test-{}", std::process::id());
        let listener = Listener::bind(&name).await.expect("bind");
        assert_eq!(listener.local_address().expect("address"), name);
        assert!(listener.tcp_addr().expect("addr").is_none());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name.as_bytes()[1..])
            .expect("name");
        use std::os::linux::net::SocketAddrExt;
        let client = std::os::unix::net::UnixStream::connect_addr(&addr).expect("connect");
        client.set_nonblocking(true).expect("nonblocking");
        let mut client = UnixStream::from_std(client).expect("tokio");
        let (mut server, peer) = listener.accept().await.expect("accept");
        assert_eq!(peer, name);
        client.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hi");
        // A second bind of the same name fails: it is taken.
        assert!(Listener::bind(&name).await.is_err());
        assert!(Listener::bind("@").await.is_err());
    }
}
