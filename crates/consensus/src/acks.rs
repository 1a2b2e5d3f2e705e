//! Coalescing a follower's append acknowledgements.
//!
//! A follower answers every append message it takes. When several wait for
//! the same fsync, they leave together, and the leader only needs the
//! newest: it reads an accepting `MsgAppendResponse` as "matched up to
//! `index`", so a later accept to the same leader in the same term with an
//! index at least as high says everything an earlier one said. Dropping
//! the earlier one is what a lossy network may do anyway, so raft is safe
//! either way; this only saves the leader the work of stepping them.
//! Rejections, and answers that carry a context, are kept as they are.

use raft::eraftpb::{Message, MessageType};

fn is_plain_accept(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgAppendResponse && !m.reject && m.context.is_empty()
}

/// Drops every accept that a later one (same destination and term, index
/// at least as high) makes redundant; the order of what is kept is kept.
pub fn coalesce(messages: Vec<Message>) -> Vec<Message> {
    if messages.iter().filter(|m| is_plain_accept(m)).count() < 2 {
        return messages;
    }
    // (to, term, highest index of an accept kept after this point).
    let mut newest: Vec<(u64, u64, u64)> = Vec::new();
    let mut kept = Vec::with_capacity(messages.len());
    for m in messages.into_iter().rev() {
        if is_plain_accept(&m) {
            match newest
                .iter_mut()
                .find(|(to, term, _)| *to == m.to && *term == m.term)
            {
                Some((_, _, index)) if *index >= m.index => continue,
                Some((_, _, index)) => *index = m.index,
                None => newest.push((m.to, m.term, m.index)),
            }
        }
        kept.push(m);
    }
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(to: u64, term: u64, index: u64) -> Message {
        Message {
            msg_type: MessageType::MsgAppendResponse,
            to,
            term,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn only_the_newest_accept_per_leader_and_term_is_kept() {
        let reject = Message {
            reject: true,
            reject_hint: 3,
            ..ack(1, 2, 4)
        };
        let heartbeat = Message {
            msg_type: MessageType::MsgHeartbeatResponse,
            to: 1,
            term: 2,
            ..Default::default()
        };
        let with_context = Message {
            context: b"x".to_vec().into(),
            ..ack(1, 2, 5)
        };
        let got = coalesce(vec![
            ack(1, 2, 5),
            reject.clone(),
            ack(1, 2, 7),
            heartbeat.clone(),
            ack(1, 3, 6),
            with_context.clone(),
            ack(3, 2, 1),
            ack(1, 2, 9),
        ]);
        assert_eq!(
            got,
            vec![
                reject,
                heartbeat,
                ack(1, 3, 6),
                with_context,
                ack(3, 2, 1),
                ack(1, 2, 9),
            ]
        );
    }

    #[test]
    fn an_older_accept_with_a_higher_index_is_kept() {
        // A retransmitted append answered after a newer one: its accept has
        // the lower index and says less, so both stay.
        let msgs = vec![ack(1, 2, 9), ack(1, 2, 4)];
        assert_eq!(coalesce(msgs.clone()), msgs);
        let single = vec![ack(1, 2, 9)];
        assert_eq!(coalesce(single.clone()), single);
    }
}
