//! Delivery into local inboxes: what every path that carries a direct
//! message ends with (a local send, a delivery stream, a delivery request,
//! a broadcast).

use crate::{
    core::send::PendingSend,
    error::SendError,
    inbox::{PeerSlot, PushError},
    message::{Message, Payload},
    protocol::Ack,
    request::{Corr, Unmatched},
    shared::{bump, count_failure, Shared},
};

/// Puts each message `(from, to, payload, corr)` in its recipient's inbox
/// (or, for a reply, hands it to the waiting request); one ack per message.
/// Runs of messages for one recipient look it up once.
pub(crate) fn deliver_envs<'a>(
    shared: &Shared,
    msgs: impl IntoIterator<Item = (&'a str, &'a str, Payload, Corr)>,
) -> Vec<Ack> {
    let mut last: Option<(&str, Option<PeerSlot>)> = None;
    msgs.into_iter()
        .map(|(from, to, payload, corr)| {
            let slot = match &last {
                Some((id, slot)) if *id == to => slot.clone(),
                _ => {
                    let slot = shared.registry.get(to);
                    last = Some((to, slot.clone()));
                    slot
                }
            };
            let Some(slot) = slot else {
                return Ack::UnknownPeer;
            };
            match deliver(shared, &slot, from, payload, corr) {
                Ok(()) => {
                    bump(&shared.counters.received_remote);
                    Ack::Delivered
                }
                Err(NotDelivered::Full) => Ack::InboxFull,
                Err(NotDelivered::Removed) => Ack::UnknownPeer,
                Err(NotDelivered::NoRequest) => Ack::NoRequest,
            }
        })
        .collect()
}

/// Why a message was not delivered to a local peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotDelivered {
    Full,
    Removed,
    NoRequest,
}

/// Delivers one message to a local peer: a reply to the request waiting
/// for it, anything else to the inbox.
pub(crate) fn deliver(
    shared: &Shared,
    slot: &PeerSlot,
    from: &str,
    payload: Payload,
    corr: Corr,
) -> std::result::Result<(), NotDelivered> {
    let msg = Message::new(from.to_string(), payload, corr);
    if let Corr::Reply(id) = corr {
        if slot.is_removed() {
            return Err(NotDelivered::Removed);
        }
        // Counted before the waiter runs: it may read the stats at once.
        let answered = match shared.requests.take(id, slot.id(), from) {
            Ok(waiter) if waiter.is_waiting() => {
                bump(&shared.counters.replies);
                waiter.send(msg)
            }
            _ => Err(Unmatched::NoRequest),
        };
        if answered.is_err() {
            bump(&shared.counters.replies_unmatched);
        }
        return answered.map_err(|_| NotDelivered::NoRequest);
    }
    slot.push(msg).map_err(|e| match e {
        PushError::Full => NotDelivered::Full,
        PushError::Removed => NotDelivered::Removed,
    })
}

/// The error a replier gets for a reply no request waits for.
pub(crate) fn no_request(to: &str, corr: Corr) -> SendError {
    let id = match corr {
        Corr::Reply(id) | Corr::Request(id) => id,
        Corr::None => 0,
    };
    SendError::NoRequest(format!(
        "peer {to:?} has no request {id} waiting (answered, timed out, or not its request)"
    ))
}

/// Answers a send and counts its outcome.
pub(crate) fn finish(shared: &Shared, p: PendingSend, r: Result<(), SendError>) {
    match &r {
        Ok(()) => bump(&shared.counters.sent_local),
        // A caller that gave up has counted its timeout already.
        Err(e) if !p.reply.is_closed() => count_failure(&shared.counters, e),
        Err(_) => {}
    }
    let _ = p.reply.send(r);
}

/// Delivers a message from `from` to a local slot, with the error a
/// sender gets.
pub(crate) fn push_local(
    shared: &Shared,
    slot: &crate::inbox::PeerSlot,
    from: &str,
    payload: Payload,
    corr: Corr,
) -> Result<(), SendError> {
    deliver(shared, slot, from, payload, corr).map_err(|e| match e {
        NotDelivered::Full => SendError::InboxFull(slot.id().to_string()),
        NotDelivered::Removed => SendError::PeerNotFound(slot.id().to_string()),
        NotDelivered::NoRequest => no_request(slot.id(), corr),
    })
}
