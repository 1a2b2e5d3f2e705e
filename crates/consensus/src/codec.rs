//! How the service encodes its log entries.
//!
//! A normal entry's data starts with a tag byte: [`TAG_STATE`] (the rest is
//! an instruction for the [`crate::State`]) or [`TAG_SERVICE`] (the rest is a
//! JSON [`ServiceCommand`]). Empty data is a leader's no-op. An entry's
//! context names its proposer (node id, sequence number) so the proposer
//! can match the applied entry to its waiting caller. A conf change's own
//! context carries the registry changes ([`MemberChange`]) as JSON.

use crate::membership::{MemberChange, ServiceCommand};

/// Tag of an instruction for the application state.
pub const TAG_STATE: u8 = 0;
/// Tag of a service command.
pub const TAG_SERVICE: u8 = 1;

/// What a normal entry carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// A leader's no-op.
    Empty,
    /// An instruction for the State.
    State(&'a [u8]),
    /// A service command.
    Service(ServiceCommand),
    /// Data this version does not understand.
    Unknown,
}

/// Encodes a State instruction.
pub fn state_entry(instruction: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(instruction.len() + 1);
    v.push(TAG_STATE);
    v.extend_from_slice(instruction);
    v
}

/// Encodes a service command.
pub fn service_entry(cmd: &ServiceCommand) -> Vec<u8> {
    let mut v = vec![TAG_SERVICE];
    // Serializing these plain types cannot fail.
    v.extend(serde_json::to_vec(cmd).unwrap_or_default());
    v
}

/// Decodes a normal entry's data.
pub fn decode(data: &[u8]) -> Payload<'_> {
    match data.split_first() {
        None => Payload::Empty,
        Some((&TAG_STATE, rest)) => Payload::State(rest),
        Some((&TAG_SERVICE, rest)) => match serde_json::from_slice(rest) {
            Ok(cmd) => Payload::Service(cmd),
            Err(_) => Payload::Unknown,
        },
        Some(_) => Payload::Unknown,
    }
}

/// Encodes a proposal context.
pub fn context(node: u64, seq: u64) -> Vec<u8> {
    let mut v = node.to_le_bytes().to_vec();
    v.extend_from_slice(&seq.to_le_bytes());
    v
}

/// Encodes registry changes for a conf change context.
pub fn member_changes(changes: &[MemberChange]) -> Vec<u8> {
    serde_json::to_vec(changes).unwrap_or_default()
}

/// Decodes a conf change context (empty or invalid: no changes).
pub fn decode_member_changes(data: &[u8]) -> Vec<MemberChange> {
    serde_json::from_slice(data).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        assert_eq!(decode(&[]), Payload::Empty);
        assert_eq!(decode(&state_entry(b"x")), Payload::State(b"x"));
        let cmd = ServiceCommand::Allow("a:1".into());
        assert_eq!(decode(&service_entry(&cmd)), Payload::Service(cmd));
        assert_eq!(decode(&[9, 9]), Payload::Unknown);
        assert_eq!(decode(&[TAG_SERVICE, b'{']), Payload::Unknown);
    }
}
