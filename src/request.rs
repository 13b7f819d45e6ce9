//! Request/reply on direct messages: a request is a direct message with a
//! correlation id, and its reply a direct message back that names the id.
//!
//! The requester's host keeps one entry per request in flight; a reply is
//! handed to the waiting request, never to the requester's inbox, and only
//! when it comes from the peer that was asked and is addressed to the peer
//! that asked. A reply that matches nothing (the request was answered,
//! timed out or never made) is refused, so the replier learns it with
//! [`crate::SendError::NoRequest`] instead of its reply vanishing.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::message::Message;

/// The id of a request, as its replier sees it: [`crate::Message::request_id`]
/// gives it and [`crate::Peer::reply`] answers it.
///
/// Ids are random and unique among a host's requests in flight, so a reply
/// meant for an earlier request (or an earlier incarnation of the host)
/// does not match a new one, and a host cannot guess the id of a request
/// it did not receive. Ids a distribus host makes stay below 2^53, the
/// integers a JavaScript number holds exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The id as a number (the client gateway's `request` field).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id a client gave back (see [`RequestId::as_u64`]).
    pub fn from_u64(id: u64) -> Self {
        RequestId(id)
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a direct message is to a request/reply exchange (on the wire in
/// every envelope; one byte for a plain message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) enum Corr {
    /// A plain message.
    #[default]
    None,
    /// A request: the recipient may reply with this id.
    Request(u64),
    /// The reply to request `id` of the recipient.
    Reply(u64),
}

/// One request in flight.
#[derive(Debug)]
struct Waiting {
    /// The peer that asked.
    requester: Arc<str>,
    /// The peer that was asked: only its reply is taken.
    responder: Box<str>,
    answer: oneshot::Sender<Message>,
}

/// The requests of this host's peers that wait for their replies.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    waiting: Mutex<HashMap<u64, Waiting, foldhash::fast::RandomState>>,
}

/// Ids are random below 2^52: exact as JavaScript numbers (the client
/// gateway's `request` field), and not guessable, so a host that saw one
/// request of this host cannot answer the next one in another peer's name.
fn random_id() -> u64 {
    rand::random::<u64>() >> 12
}

/// Why a reply was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unmatched {
    /// No request of this id waits (answered, timed out, never made), or
    /// it was made by another peer or asked another one.
    NoRequest,
}

impl Requests {
    /// Opens a request of `requester` to `responder`; the entry goes when
    /// the returned guard drops (answered, timed out, or the caller gave
    /// up), so nothing outlives its waiter.
    pub(crate) fn open(
        self: &Arc<Self>,
        requester: &str,
        responder: &str,
    ) -> (Open, oneshot::Receiver<Message>) {
        let (tx, rx) = oneshot::channel();
        let waiting = Waiting {
            requester: requester.into(),
            responder: responder.into(),
            answer: tx,
        };
        let mut map = self.lock();
        // A collision among the requests in flight is as good as
        // impossible, but an entry must never be overwritten.
        let mut id = random_id();
        while map.contains_key(&id) {
            id = random_id();
        }
        map.insert(id, waiting);
        drop(map);
        (
            Open {
                requests: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Takes the request a reply from `from` to `to` answers: `to` must be
    /// the peer that asked and `from` the one it asked.
    pub(crate) fn take(&self, id: u64, to: &str, from: &str) -> Result<Answer, Unmatched> {
        let mut waiting = self.lock();
        let matches = waiting
            .get(&id)
            .is_some_and(|w| &*w.requester == to && &*w.responder == from);
        match waiting.remove(&id) {
            Some(w) if matches => Ok(Answer(w.answer)),
            Some(w) => {
                // Not this reply's: put it back untouched.
                waiting.insert(id, w);
                Err(Unmatched::NoRequest)
            }
            None => Err(Unmatched::NoRequest),
        }
    }

    /// Requests in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting, foldhash::fast::RandomState>> {
        // The map is consistent between calls: a panic elsewhere while it
        // was held cannot leave a half-made entry.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request taken by its reply ([`Requests::take`]).
#[derive(Debug)]
pub(crate) struct Answer(oneshot::Sender<Message>);

impl Answer {
    /// Whether the requester still waits (it may give up at any instant;
    /// checked so that a reply it no longer takes is counted once).
    pub(crate) fn is_waiting(&self) -> bool {
        !self.0.is_closed()
    }

    /// Hands the reply over; fails if the waiter gave up at this instant
    /// (it has its timeout already).
    pub(crate) fn send(self, reply: Message) -> Result<(), Unmatched> {
        self.0.send(reply).map_err(|_| Unmatched::NoRequest)
    }
}

/// An open request: removes its entry when dropped.
#[derive(Debug)]
pub(crate) struct Open {
    requests: Arc<Requests>,
    id: u64,
}

impl Open {
    /// The request's correlation id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.requests.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Payload;

    fn reply(from: &str) -> Message {
        Message::new(from.into(), Payload::json(&1).unwrap(), Corr::None)
    }

    #[test]
    fn a_reply_is_taken_only_from_the_asked_peer_to_the_asker() {
        let r = Arc::new(Requests::default());
        let (open, mut rx) = r.open(&Arc::from("a"), "b");
        let id = open.id();
        // Another peer, or the right peer to another requester: refused.
        assert_eq!(r.take(id, "a", "c").err(), Some(Unmatched::NoRequest));
        assert_eq!(r.take(id, "x", "b").err(), Some(Unmatched::NoRequest));
        assert_eq!(r.take(id + 1, "a", "b").err(), Some(Unmatched::NoRequest));
        assert!(rx.try_recv().is_err());
        assert_eq!(r.take(id, "a", "b").unwrap().send(reply("b")), Ok(()));
        assert_eq!(rx.try_recv().map(|m| m.from), Ok("b".to_string()));
        // Answered once: a second reply is refused.
        assert_eq!(r.take(id, "a", "b").err(), Some(Unmatched::NoRequest));
        drop(open);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn ids_are_exact_as_javascript_numbers() {
        let r = Arc::new(Requests::default());
        let (open, _rx) = r.open(&Arc::from("a"), "b");
        assert!(open.id() < 1 << 52);
    }

    #[test]
    fn a_dropped_request_leaves_nothing_and_refuses_its_late_reply() {
        let r = Arc::new(Requests::default());
        let (open, _rx) = r.open(&Arc::from("a"), "b");
        let id = open.id();
        assert_eq!(r.len(), 1);
        drop(open);
        assert_eq!(r.len(), 0);
        assert_eq!(r.take(id, "a", "b").err(), Some(Unmatched::NoRequest));
    }
}
