//! Peer transport: HTTP under `/raft/` between nodes.
//!
//! - `POST /raft/msg`: a batch of raft messages (`u32` length + protobuf,
//!   repeated), body capped at [`MAX_MESSAGE_BODY`].
//! - `POST /raft/snapshot`: one `MsgSnapshot` (framed as above) followed by
//!   the snapshot file, streamed in chunks (a metadata-only snapshot is
//!   sent with a fresh image of the state instead, generated as it is
//!   sent); the receiver verifies and fsyncs the file before stepping the
//!   message into raft.
//! - `POST /raft/join`: JSON join request, answered with the new node's id
//!   and the member list.
//!
//! Sending never blocks the raft loop: each peer has a bounded queue drained
//! by its own task, and a full queue drops the message (raft retransmits).

pub mod client;
pub mod server;
pub mod tls;

use protobuf::Message as _;
use raft::eraftpb::Message;

pub use client::HttpTransport;
pub use server::{serve_connection, RaftHttp};
pub use tls::TlsConfig;

/// Upper bound on a `/raft/msg` request body.
pub const MAX_MESSAGE_BODY: usize = 64 << 20;
/// Upper bound on one framed message (matches the body cap).
pub const MAX_FRAME: usize = MAX_MESSAGE_BODY;

/// What the transport tells the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    /// A peer could not be reached.
    Unreachable(u64),
    /// The leader answered that this node is no longer a member.
    Removed,
    /// A snapshot stream to a peer finished.
    SnapshotSent {
        /// The peer.
        to: u64,
        /// Whether the peer accepted it.
        ok: bool,
    },
}

/// How the driver sends to peers. The simulator supplies its own network.
pub trait Transport: Send + Sync + 'static {
    /// Queues a message for its destination; never blocks, may drop.
    fn send(&self, msg: Message);
    /// Streams `snapshot` to `msg.to` with its `MsgSnapshot`, off the
    /// caller's thread; reports [`Feedback::SnapshotSent`] when done.
    fn send_snapshot(&self, msg: Message, snapshot: crate::core::OutgoingSnapshot);
    /// Replaces the address book (node id → address).
    fn set_peers(&self, peers: Vec<(u64, String)>);
}

/// Appends one framed message.
pub fn encode_frame(msg: &Message, out: &mut Vec<u8>) {
    let bytes = msg.write_to_bytes().unwrap_or_default();
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&bytes);
}

/// Decodes a body of framed messages; `None` on any malformed frame.
pub fn decode_frames(mut body: &[u8]) -> Option<Vec<Message>> {
    let mut out = Vec::new();
    // Bounded: each iteration consumes at least 4 bytes.
    while !body.is_empty() {
        if body.len() < 4 {
            return None;
        }
        let len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        if len > MAX_FRAME || body.len() < 4 + len {
            return None;
        }
        out.push(Message::parse_from_bytes(&body[4..4 + len]).ok()?);
        body = &body[4 + len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_rejected() {
        let m = Message {
            to: 2,
            from: 1,
            term: 9,
            ..Default::default()
        };
        let mut body = Vec::new();
        encode_frame(&m, &mut body);
        encode_frame(&m, &mut body);
        assert_eq!(decode_frames(&body).unwrap(), vec![m.clone(), m]);
        assert!(decode_frames(&body[..body.len() - 1]).is_none());
        assert!(decode_frames(&[255, 255, 255, 255, 0]).is_none());
        assert!(decode_frames(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).is_none());
    }
}
