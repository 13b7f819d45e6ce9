//! Direct messages between hosts.
//!
//! Sends to one destination host wait in that host's [`Link`] queue. At most
//! one batch per destination is in flight, so messages from one peer to
//! another arrive in send order, and everything that queued up while a batch
//! was travelling goes out together in the next one. The receiver answers a
//! batch with one ack per envelope, given after the envelope is in the
//! recipient's inbox (or refused).
//!
//! A link may close while a batch is travelling (the remote host closed it
//! over its link budget, or the connection broke): the batch is then sent
//! again, with the same batch id, over a new link. The receiver remembers
//! the last batch of each sending host and its acks, so a batch it already
//! delivered is answered from memory, not delivered twice. Batch ids rise
//! per sender and epoch, so an older batch (only a relay replaying one it
//! carried sends that) is refused.

use std::collections::VecDeque;

use libp2p::{request_response::OutboundFailure, PeerId};
use tokio::sync::oneshot;

use super::{EventLoop, Pending};
use crate::{
    error::{Error, Result},
    inbox::PushError,
    message::{Message, Payload},
    protocol::{Ack, Envelope, Request, Response},
    shared::{bump, count_failure},
};

/// Bytes kept free in a batch frame for the envelope framing itself.
const FRAME_SLACK: usize = 64 * 1024;
/// Sends of one batch after the first when its link closes under it.
const RESENDS: u8 = 2;
/// Sending hosts whose last batch is remembered.
pub(super) const REMEMBERED_SENDERS: std::num::NonZeroUsize =
    match std::num::NonZeroUsize::new(4096) {
        Some(n) => n,
        None => unreachable!(),
    };

/// A send waiting for its outcome.
#[derive(Debug)]
pub(crate) struct PendingSend {
    pub env: Envelope,
    pub reply: oneshot::Sender<Result<()>>,
    /// The host that answered "unknown peer" for this send already.
    pub refused_by: Option<PeerId>,
}

impl PendingSend {
    pub fn new(env: Envelope, reply: oneshot::Sender<Result<()>>) -> Self {
        PendingSend {
            env,
            reply,
            refused_by: None,
        }
    }
}

/// The outbound queue to one host.
#[derive(Debug, Default)]
pub(crate) struct Link {
    queue: VecDeque<PendingSend>,
    in_flight: bool,
}

/// What a receiver knows of a sending host's delivery batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Newer than any from that host: deliver it.
    New,
    /// The last one again (a resend): its acks, to answer from memory.
    Again(Vec<Ack>),
    /// Older than the last one: only a relay replaying what it carried
    /// sends that (a host sends its batches to one destination one at a
    /// time, in rising order).
    Stale,
}

/// The last delivery batch of each sending host, by `(epoch, batch)`, with
/// its acks; bounded (least recently heard senders are forgotten, and a
/// forgotten sender's next batch counts as new).
#[derive(Debug)]
pub(crate) struct BatchMemory {
    last: lru::LruCache<PeerId, ((u64, u64), Vec<Ack>)>,
}

impl Default for BatchMemory {
    fn default() -> Self {
        BatchMemory {
            last: lru::LruCache::new(REMEMBERED_SENDERS),
        }
    }
}

impl BatchMemory {
    /// Whether batch `id` of `host` is new, a resend or stale.
    pub fn check(&mut self, host: PeerId, id: (u64, u64)) -> Seen {
        match self.last.get(&host) {
            Some((last, acks)) if *last == id => Seen::Again(acks.clone()),
            Some((last, _)) if *last > id => Seen::Stale,
            _ => Seen::New,
        }
    }

    /// Remembers batch `id` of `host` as delivered with `acks`.
    pub fn record(&mut self, host: PeerId, id: (u64, u64), acks: Vec<Ack>) {
        self.last.put(host, (id, acks));
    }
}

impl EventLoop {
    /// Sends one message: locally if the recipient lives here, else to its host.
    pub(super) fn send(&mut self, p: PendingSend) {
        if let Some(slot) = self.shared.registry.get(&p.env.to) {
            let r = push_local(&slot, &p.env.from, p.env.payload.clone());
            self.finish_send(p, r);
            return;
        }
        match self.cache.get(&p.env.to).copied() {
            Some(host) if host != self.local() => self.enqueue(host, p),
            _ => self.resolve_for_send(p),
        }
    }

    /// Queues a send for `host` and flushes the link if it is idle.
    pub(super) fn enqueue(&mut self, host: PeerId, p: PendingSend) {
        self.links.entry(host).or_default().queue.push_back(p);
        self.flush_link(host);
    }

    fn flush_link(&mut self, host: PeerId) {
        let (max_msgs, max_bytes) = self.shared.with_config(|c| {
            (
                c.max_batch_messages,
                c.max_frame_size.saturating_sub(FRAME_SLACK),
            )
        });
        let Some(link) = self.links.get_mut(&host) else {
            return;
        };
        if link.in_flight {
            return;
        }
        let mut sends = Vec::new();
        let mut bytes = 0;
        while let Some(p) = link.queue.front() {
            let size = p.env.payload.len() + p.env.from.len() + p.env.to.len() + 16;
            if !sends.is_empty() && (sends.len() >= max_msgs || bytes + size > max_bytes) {
                break;
            }
            let Some(p) = link.queue.pop_front() else {
                break;
            };
            // A caller that gave up (timeout, dropped future) is not delivered.
            if p.reply.is_closed() {
                continue;
            }
            bytes += size;
            sends.push(p);
        }
        if sends.is_empty() {
            if link.queue.is_empty() {
                self.links.remove(&host);
            }
            return;
        }
        link.in_flight = true;
        let batch = self.next_batch;
        self.next_batch += 1;
        self.send_batch(host, batch, 0, sends);
    }

    fn send_batch(&mut self, host: PeerId, batch: u64, attempt: u8, sends: Vec<PendingSend>) {
        let envs = sends.iter().map(|p| p.env.clone()).collect();
        let epoch = self.epoch;
        let id = self.request(host, Request::Deliver { epoch, batch, envs });
        self.requests.insert(
            id,
            Pending::Deliver {
                host,
                batch,
                attempt,
                sends,
            },
        );
    }

    pub(super) fn on_deliver_result(
        &mut self,
        host: PeerId,
        (batch, attempt): (u64, u8),
        sends: Vec<PendingSend>,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        if let Err(OutboundFailure::ConnectionClosed | OutboundFailure::Io(_)) = &result {
            if attempt < RESENDS && self.closing.is_none() {
                tracing::debug!(%host, batch, "link closed under a batch; sending it again");
                self.send_batch(host, batch, attempt + 1, sends);
                return;
            }
        }
        if let Some(link) = self.links.get_mut(&host) {
            link.in_flight = false;
        }
        match result {
            Ok(Response::Delivered(acks)) => {
                let mut acks = acks.into_iter();
                for p in sends {
                    match acks.next() {
                        Some(Ack::Delivered) => {
                            bump(&self.shared.counters.sent_remote);
                            let _ = p.reply.send(Ok(()));
                        }
                        Some(Ack::InboxFull) => {
                            let e = Error::InboxFull(p.env.to.to_string());
                            self.finish_send(p, Err(e));
                        }
                        Some(Ack::UnknownPeer) => self.on_unknown_peer(host, p),
                        None => {
                            let e = Error::PeerUnreachable {
                                id: p.env.to.to_string(),
                                host,
                            };
                            self.finish_send(p, Err(e));
                        }
                    }
                }
            }
            Ok(other) => {
                tracing::warn!(%host, response = ?other, "unexpected answer to a delivery");
                for p in sends {
                    let e = Error::PeerUnreachable {
                        id: p.env.to.to_string(),
                        host,
                    };
                    self.finish_send(p, Err(e));
                }
            }
            Err(failure) => {
                tracing::debug!(%host, %failure, "delivery batch failed");
                for p in sends {
                    let e = match failure {
                        OutboundFailure::Timeout => Error::Timeout,
                        _ => Error::PeerUnreachable {
                            id: p.env.to.to_string(),
                            host,
                        },
                    };
                    self.finish_send(p, Err(e));
                }
            }
        }
        self.flush_link(host);
    }

    /// The host said the peer does not live there: forget the location and
    /// resolve again once; the peer may have moved.
    fn on_unknown_peer(&mut self, host: PeerId, mut p: PendingSend) {
        if self.cache.peek(&p.env.to) == Some(&host) {
            self.cache.pop(&p.env.to);
        }
        if p.refused_by.is_some() {
            let e = Error::PeerNotFound(p.env.to.to_string());
            self.finish_send(p, Err(e));
            return;
        }
        p.refused_by = Some(host);
        self.resolve_for_send(p);
    }

    pub(super) fn finish_send(&self, p: PendingSend, r: Result<()>) {
        match &r {
            Ok(()) => bump(&self.shared.counters.sent_local),
            // A caller that gave up has counted its timeout already.
            Err(e) if !p.reply.is_closed() => count_failure(&self.shared.counters, e),
            Err(_) => {}
        }
        let _ = p.reply.send(r);
    }

    /// Puts every envelope of an inbound batch in its recipient's inbox.
    ///
    /// The senders live on `host` (the authenticated connection says so):
    /// their locations are cached, so a reply needs no lookup and works even
    /// before a just-created sender's directory entry has spread. A stale
    /// entry is corrected like any other (the host answers "unknown peer").
    pub(super) fn deliver_inbound(
        &mut self,
        host: PeerId,
        batch: (u64, u64),
        envs: Vec<Envelope>,
    ) -> Response {
        match self.last_batches.check(host, batch) {
            Seen::New => {}
            Seen::Again(acks) => return Response::Delivered(acks),
            Seen::Stale => {
                tracing::warn!(%host, ?batch, "refused a delivery batch older than the last one");
                return Response::Refused(
                    "delivery batch older than the last one (replayed)".into(),
                );
            }
        }
        let mut last_from: Option<std::sync::Arc<str>> = None;
        let acks = envs
            .into_iter()
            .inspect(|env| {
                if last_from.as_deref() != Some(&*env.from) {
                    if self.cache.peek(&env.from) != Some(&host) {
                        self.cache.put(env.from.clone(), host);
                    }
                    last_from = Some(env.from.clone());
                }
            })
            .map(|env| match self.shared.registry.get(&env.to) {
                None => Ack::UnknownPeer,
                Some(slot) => match slot.push(Message {
                    from: env.from.to_string(),
                    payload: env.payload,
                }) {
                    Ok(()) => {
                        bump(&self.shared.counters.received_remote);
                        Ack::Delivered
                    }
                    Err(PushError::Full) => Ack::InboxFull,
                    Err(PushError::Removed) => Ack::UnknownPeer,
                },
            })
            .collect::<Vec<Ack>>();
        self.last_batches.record(host, batch, acks.clone());
        Response::Delivered(acks)
    }

    /// Fails every queued send (on close).
    pub(super) fn fail_all_sends(&mut self) {
        for (_, link) in self.links.drain() {
            for p in link.queue {
                let _ = p.reply.send(Err(Error::Closed));
            }
        }
    }
}

/// Delivers a message from `from` to a local slot.
pub(crate) fn push_local(
    slot: &crate::inbox::PeerSlot,
    from: &str,
    payload: Payload,
) -> Result<()> {
    slot.push(Message {
        from: from.to_string(),
        payload,
    })
    .map_err(|e| match e {
        PushError::Full => Error::InboxFull(slot.id.to_string()),
        PushError::Removed => Error::PeerNotFound(slot.id.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resent_batch_is_answered_from_memory_and_an_older_one_refused() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut m = BatchMemory::default();
        assert_eq!(m.check(a, (5, 0)), Seen::New);
        m.record(a, (5, 0), vec![Ack::Delivered]);
        assert_eq!(m.check(a, (5, 0)), Seen::Again(vec![Ack::Delivered]));
        assert_eq!(m.check(a, (5, 1)), Seen::New);
        m.record(a, (5, 1), vec![Ack::InboxFull]);
        // A relay replaying batch 0, or one of an earlier incarnation.
        assert_eq!(m.check(a, (5, 0)), Seen::Stale);
        assert_eq!(m.check(a, (4, 9)), Seen::Stale);
        // A restart (higher epoch) starts its count again; other senders
        // are apart.
        assert_eq!(m.check(a, (6, 0)), Seen::New);
        assert_eq!(m.check(b, (1, 0)), Seen::New);
    }
}
