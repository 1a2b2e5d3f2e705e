//! Peer transport: HTTP under `/raft/` between nodes.
//!
//! - `POST /raft/stream`: one long-lived request per peer lane whose
//!   chunked body carries framed messages (`u32` length + protobuf) for as
//!   long as the connection lives; the receiver steps each batch into raft
//!   as it arrives and answers only when the stream ends (`410 Gone` at
//!   once if the sender was removed). A batch costs one write on the
//!   sender and one read on the receiver, not a request and a response.
//! - `POST /raft/msg`: a batch of messages framed as above, body capped
//!   at [`MAX_MESSAGE_BODY`]; a sender falls back to it when a peer
//!   answers `/raft/stream` with 404 (an older node).
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

/// Decodes the complete frames at the start of `buf`: the messages and
/// the bytes they took (a partial frame at the end is left for later).
/// `None` on a malformed frame.
pub fn take_frames(buf: &[u8]) -> Option<(Vec<Message>, usize)> {
    let mut out = Vec::new();
    let mut used = 0;
    // Bounded: each iteration consumes at least 4 bytes.
    while buf.len() - used >= 4 {
        let rest = &buf[used..];
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_FRAME {
            return None;
        }
        if rest.len() < 4 + len {
            break;
        }
        out.push(Message::parse_from_bytes(&rest[4..4 + len]).ok()?);
        used += 4 + len;
    }
    Some((out, used))
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

    #[test]
    fn a_stream_is_cut_into_whole_frames_wherever_its_chunks_end() {
        let msgs: Vec<Message> = (1..=3)
            .map(|i| Message {
                to: 2,
                from: 1,
                term: i,
                ..Default::default()
            })
            .collect();
        let mut body = Vec::new();
        for m in &msgs {
            encode_frame(m, &mut body);
        }
        // Every split point: what is decoded first plus what the rest
        // yields is always the three messages, in order.
        for cut in 0..=body.len() {
            let mut buf = body[..cut].to_vec();
            let (mut got, used) = take_frames(&buf).unwrap();
            buf.drain(..used);
            buf.extend_from_slice(&body[cut..]);
            let (rest, used) = take_frames(&buf).unwrap();
            assert_eq!(used, buf.len());
            got.extend(rest);
            assert_eq!(got, msgs, "cut at {cut}");
        }
        assert!(take_frames(&[255, 255, 255, 255, 0]).is_none());
        assert_eq!(take_frames(&[3, 0, 0]).unwrap().1, 0);
    }
}
