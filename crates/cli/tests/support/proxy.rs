//! A fault-injecting TCP proxy in front of one node, for partitions on
//! loopback without network namespaces. The node binds elsewhere
//! (`--bind`) and advertises the proxy's address, so every client and peer
//! connection to it passes here. Clients and peers share the port; the
//! proxy tells them apart by the first bytes (peers speak HTTP) and a peer
//! by its `x-raft-from-address` header. A partition drops the peer traffic
//! of the nodes it names, both ways, and leaves clients connected.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Largest HTTP request head read to find the sender.
const MAX_HEAD: usize = 16 << 10;

#[derive(Default)]
struct Rules {
    /// Peer traffic arriving here from these advertised addresses is cut.
    blocked_senders: HashSet<String>,
    /// All peer traffic arriving here is cut.
    isolated: bool,
    /// Live connections: the sender (None for a client) and a handle to
    /// shut them down when a partition starts.
    live: Vec<(Option<String>, TcpStream)>,
}

impl Rules {
    fn allows(&self, sender: &Option<String>) -> bool {
        match sender {
            None => true,
            Some(from) => !self.isolated && !self.blocked_senders.contains(from),
        }
    }
}

/// One proxy; stops accepting when dropped.
pub struct Proxy {
    /// Where it listens (what the node advertises).
    pub address: String,
    rules: Arc<Mutex<Rules>>,
    stop: Arc<AtomicBool>,
}

fn lock(rules: &Mutex<Rules>) -> std::sync::MutexGuard<'_, Rules> {
    rules.lock().unwrap_or_else(|p| p.into_inner())
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `target`.
    pub fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let address = listener.local_addr().expect("proxy address").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let rules = Arc::new(Mutex::new(Rules::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (rules.clone(), stop.clone());
        thread::spawn(move || {
            // Bounded by `stop`, set on drop.
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (r, target) = (r.clone(), target.clone());
                        thread::spawn(move || serve(conn, &target, &r));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy {
            address,
            rules,
            stop,
        }
    }

    /// Cuts all peer traffic arriving at this node.
    pub fn isolate(&self) {
        let mut r = lock(&self.rules);
        r.isolated = true;
        Self::enforce(&mut r);
    }

    /// Cuts peer traffic arriving here from the node advertising `from`.
    pub fn block_sender(&self, from: &str) {
        let mut r = lock(&self.rules);
        r.blocked_senders.insert(from.to_string());
        Self::enforce(&mut r);
    }

    /// Lets every peer through again.
    pub fn heal(&self) {
        let mut r = lock(&self.rules);
        r.isolated = false;
        r.blocked_senders.clear();
    }

    fn enforce(r: &mut Rules) {
        let live = std::mem::take(&mut r.live);
        for (sender, conn) in live {
            if r.allows(&sender) {
                r.live.push((sender, conn));
            } else {
                let _ = conn.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut r = lock(&self.rules);
        for (_, conn) in r.live.drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// Reads what identifies the connection: `None` for a client, the
/// sender's advertised address for a peer. Returns the bytes read.
fn classify(conn: &mut TcpStream) -> Option<(Option<String>, Vec<u8>)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    // Bounded by MAX_HEAD and the read timeout.
    loop {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
        let http = [&b"POST "[..], b"GET ", b"PUT "]
            .iter()
            .any(|m| head.starts_with(m) || m.starts_with(&head));
        if !http {
            break;
        }
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]).to_lowercase();
            let from = text
                .lines()
                .find_map(|l| l.strip_prefix("x-raft-from-address:"))
                .map(|v| v.trim().to_string())
                .unwrap_or_default();
            conn.set_read_timeout(None).ok()?;
            return Some((Some(from), head));
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
    conn.set_read_timeout(None).ok()?;
    Some((None, head))
}

fn serve(mut conn: TcpStream, target: &str, rules: &Mutex<Rules>) {
    let Some((sender, head)) = classify(&mut conn) else {
        return;
    };
    let Ok(mut upstream) = TcpStream::connect(target) else {
        return;
    };
    {
        let mut r = lock(rules);
        if !r.allows(&sender) {
            return;
        }
        if let (Ok(a), Ok(b)) = (conn.try_clone(), upstream.try_clone()) {
            r.live.push((sender.clone(), a));
            r.live.push((sender, b));
        }
    }
    if upstream.write_all(&head).is_err() {
        return;
    }
    let (Ok(mut down_in), Ok(mut down_out)) = (upstream.try_clone(), conn.try_clone()) else {
        return;
    };
    let back = thread::spawn(move || {
        let _ = std::io::copy(&mut down_in, &mut down_out);
        let _ = down_out.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut conn, &mut upstream);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = back.join();
}
