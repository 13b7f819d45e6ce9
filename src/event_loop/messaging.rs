//! Direct messages between hosts: routing, and the request path.
//!
//! Sends to one destination host wait in that host's queue of the loop's
//! outbox ([`crate::core::outbox`]), the one place that orders them.
//! While the hosts are linked, the queue goes
//! straight to the destination's link task, which batches and pipelines
//! over a delivery stream (see [`crate::delivery`]). Otherwise (not linked
//! yet, or the network relays) a batch goes as a request, possibly through
//! a relay, at most one per destination in flight, so messages from one
//! peer to another arrive in send order; a switch between the two waits
//! until the other has nothing in flight. The receiver answers a batch with
//! one ack per envelope, given after the envelope is in the recipient's
//! inbox (or refused).
//!
//! A link may close while a batch is travelling (the remote host closed it
//! over its link budget, or the connection broke): the batch is then sent
//! again, with the same batch id, over a new link. The receiver remembers
//! the last batches of each sending host and their acks, so a batch it
//! already delivered is answered from memory, not delivered twice. Batch
//! ids rise per sender and epoch, so an older batch (only a relay replaying
//! one it carried sends that) is refused.

use std::{
    sync::atomic::Ordering,
    sync::Arc,
    time::{Duration, Instant},
};

use libp2p::{request_response::OutboundFailure, PeerId};

use super::{EventLoop, Pending};
use crate::{
    core::{batch_memory::Seen, outbox::Pick, send::PendingSend},
    delivery::{
        local::{deliver_envs, finish, no_request, push_local},
        outbound::{LinkHandle, Refused},
        TaskEvent,
    },
    error::{Error, Result},
    protocol::{Ack, Envelope, Request, Response},
    shared::bump,
};

/// Bytes kept free in a batch frame for the envelope framing itself.
const FRAME_SLACK: usize = 64 * 1024;
/// Sends of one batch after the first when its link closes under it.
const RESENDS: u8 = 2;
/// After a link task gave up, sends to that host go as requests this long.
const STREAM_BACKOFF: Duration = Duration::from_secs(1);
/// Times a send may come back from link tasks before it fails.
const HANDED_BACK: u8 = 4;
impl EventLoop {
    /// Sends one message: locally if the recipient lives here, else to its host.
    pub(super) fn send(&mut self, p: PendingSend) {
        let local = self.local();
        let mut cached = self.cache.get(&p.env.to).copied();
        if cached.is_none() {
            // A reply to a message that just came over a delivery stream:
            // its reader reported the sender's host before delivering.
            self.take_task_events();
            cached = self.cache.get(&p.env.to).copied();
        }
        // A location cached on another host goes there without a registry
        // look-up (the sender's handle looked already): a peer that moved
        // here since is reached after that host answers "unknown peer".
        if let Some(host) = cached.filter(|h| *h != local) {
            self.enqueue(host, p);
            return;
        }
        if let Some(slot) = self.shared.registry.get(&p.env.to) {
            let r = push_local(
                &self.shared,
                &slot,
                &p.env.from,
                p.env.payload.clone(),
                p.env.corr,
            );
            self.finish_send(p, r);
            return;
        }
        self.resolve_for_send(p);
    }

    /// Queues a send for `host`; the link is flushed at the end of the
    /// loop's turn, so a burst of commands goes out together.
    pub(super) fn enqueue(&mut self, host: PeerId, p: PendingSend) {
        if self.links.push(host, p) {
            self.dirty_links.push(host);
        }
    }

    /// Flushes the links that got sends in this turn of the loop.
    pub(super) fn flush_dirty_links(&mut self) {
        for host in std::mem::take(&mut self.dirty_links) {
            self.flush_link(host);
        }
    }

    fn flush_link(&mut self, host: PeerId) {
        let now = Instant::now();
        if !self.links.may_send(&host, now) {
            return;
        }
        let handed_back = self
            .links
            .get(&host)
            .and_then(|q| q.items().next())
            .and_then(|p| p.batch);
        if let Some(batch) = handed_back {
            // Handed back from a broken stream: that batch again, as it
            // was (even sends whose callers gave up: acks go by position),
            // before anything newer.
            let sends = self.links.take(&host, now, |p, _, _| {
                if p.batch == Some(batch) {
                    Pick::Take
                } else {
                    Pick::Stop
                }
            });
            if let Some(sends) = sends {
                self.send_batch(host, batch, 0, sends);
            }
            return;
        }
        let backoff = self.stream_backoff.get(&host).is_some_and(|t| *t > now);
        if self.swarm.is_connected(&host) && !backoff {
            self.hand_to_link_task(host);
            return;
        }
        if self
            .stream_links
            .get(&host)
            .is_some_and(|l| l.outstanding() > 0)
        {
            // The link task's sends finish or come back first (order);
            // the tick tries again.
            self.wake_soon = true;
            return;
        }
        let (max_msgs, max_bytes) = self.shared.with_config(|c| {
            (
                c.max_batch_messages,
                c.max_frame_size.saturating_sub(FRAME_SLACK),
            )
        });
        let sends = self.links.take(&host, now, |p, n, bytes| {
            if p.reply.is_closed() {
                // A caller that gave up (timeout, dropped future) is not delivered.
                Pick::Drop
            } else if n > 0 && (n >= max_msgs || bytes + p.wire_size() > max_bytes) {
                Pick::Stop
            } else {
                Pick::Take
            }
        });
        let Some(sends) = sends else {
            return;
        };
        // The counter the link tasks use: a batch id names one batch on
        // either path.
        let batch = self.delivery.next_batch.fetch_add(1, Ordering::Relaxed);
        self.send_batch(host, batch, 0, sends);
    }

    /// Hands the queue of `host` to its link task (started if there is
    /// none, or it ended).
    fn hand_to_link_task(&mut self, host: PeerId) {
        let Some(mut queue) = self.links.remove(&host) else {
            return;
        };
        if queue.is_empty() {
            return;
        }
        self.touch(host);
        let mut started = false;
        while let Some(mut p) = queue.pop_front() {
            let ticket = p.ticket.take().map(|t| (t, p.env.to.clone()));
            let task = match self.stream_links.entry(host) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    started = true;
                    e.insert(LinkHandle::spawn(host, self.delivery.clone()))
                }
            };
            match task.forward(p) {
                Ok(()) => {
                    if let Some((ticket, to)) = ticket {
                        ticket.release_to(to, task);
                    }
                }
                Err(Refused::Full(mut p)) => {
                    p.ticket = ticket.map(|(t, _)| t);
                    // The tick hands over the rest.
                    queue.push_front(p);
                    self.links.put_back(host, queue.into_iter());
                    self.wake_soon = true;
                    return;
                }
                Err(Refused::Ended(mut p)) => {
                    p.ticket = ticket.map(|(t, _)| t);
                    queue.push_front(p);
                    self.stream_links.remove(&host);
                    if started {
                        // A task that ended at once: keep the queue for the tick.
                        self.links.put_back(host, queue.into_iter());
                        self.wake_soon = true;
                        return;
                    }
                }
            }
        }
    }

    /// Retries the queues that waited (for a link task to drain), and
    /// forgets link tasks that ended.
    pub(super) fn retry_links(&mut self) {
        self.stream_links.retain(|_, l| !l.ended());
        let now = Instant::now();
        self.stream_backoff.retain(|_, t| *t > now);
        for host in self.links.ready(now) {
            self.flush_link(host);
        }
    }

    /// Handles what the delivery tasks report.
    pub(super) fn on_task_event(&mut self, ev: TaskEvent) {
        match ev {
            TaskEvent::Unresolved { host, send } => self.on_unknown_peer(host, send),
            TaskEvent::Unsent { host, sends } => {
                // The link (often one that is closing) took no stream: the
                // next sends go as requests, which dial or relay.
                self.stream_backoff
                    .insert(host, Instant::now() + STREAM_BACKOFF);
                let (mut again, mut failed) = (Vec::new(), Vec::new());
                for mut p in sends {
                    p.handed_back += 1;
                    // A written batch goes again whole (as a request, which
                    // ends it either way), never partly failed here.
                    if p.batch.is_none() && p.handed_back > HANDED_BACK {
                        failed.push(p);
                    } else {
                        again.push(p);
                    }
                }
                self.links.put_back(host, again.into_iter());
                for p in failed {
                    let id = p.env.to.to_string();
                    self.finish_send(p, Err(Error::PeerUnreachable { id, host }));
                }
                self.flush_link(host);
            }
            TaskEvent::Inbound { host, froms } => {
                self.touch(host);
                for from in froms {
                    self.note_sender(from, host);
                }
            }
        }
    }

    /// Handles the delivery tasks' reports that are waiting (bounded).
    pub(super) fn take_task_events(&mut self) {
        for _ in 0..super::COMMAND_BATCH {
            match self.task_events.try_recv() {
                Ok(ev) => self.on_task_event(ev),
                Err(_) => break,
            }
        }
    }

    fn send_batch(&mut self, host: PeerId, batch: u64, attempt: u8, sends: Vec<PendingSend>) {
        let envs = sends.iter().map(|p| p.env.clone()).collect();
        let epoch = self.members.epoch();
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
        self.links.done(&host);
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
                        Some(Ack::NoRequest) => {
                            let e = no_request(&p.env.to, p.env.corr);
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
        // Its sender's direct lane to the recipient went to that host too.
        if let Some(owner) = self.shared.registry.get(&p.env.from) {
            owner.if_lane(|lane| lane.forget(&p.env.to));
        }
        if self.cache.peek(&p.env.to) == Some(&host) {
            self.cache.pop(&p.env.to);
        }
        self.shared.finds.forget(&p.env.to);
        if p.refused_by.is_some() {
            let e = Error::PeerNotFound(p.env.to.to_string());
            self.finish_send(p, Err(e));
            return;
        }
        p.refused_by = Some(Box::new(host));
        self.resolve_for_send(p);
    }

    pub(super) fn finish_send(&self, p: PendingSend, r: Result<()>) {
        finish(&self.shared, p, r);
    }

    /// Remembers that `host` says it delivers for `from`.
    ///
    /// The connection proves which host sent a message, not that the host
    /// owns the sender's id: a host could name any `from` and receive the
    /// replies meant for it. So the claim is cached as a location only when
    /// this host's directory store (it holds the id) agrees; otherwise it is
    /// kept apart and used only when the holders do not know the id yet.
    pub(super) fn note_sender(&mut self, from: Arc<str>, host: PeerId) {
        match self.store.lookup(&from) {
            Some(owner) if owner == host => {
                if self.cache.peek(&from) != Some(&host) {
                    self.cache.put(from, host);
                }
            }
            Some(_) => {}
            None if self.cache.peek(&from) == Some(&host) => {}
            None => {
                if self.claims.peek(&from) != Some(&host) {
                    self.claims.put(from, host);
                }
            }
        }
    }

    /// Puts every envelope of an inbound batch in its recipient's inbox.
    ///
    /// The senders' claimed locations are noted (see `note_sender`), so a
    /// reply works even before a just-created sender's directory entry has
    /// spread. A stale entry is corrected like any other (the host answers
    /// "unknown peer").
    pub(super) fn deliver_inbound(
        &mut self,
        host: PeerId,
        batch: (u64, u64),
        envs: Vec<Envelope>,
    ) -> Response {
        // Held until the batch is recorded: a stream reader may have the
        // same batch (a resend racing its original).
        let batches = self.batches.clone();
        let mut memory = batches.lock().unwrap_or_else(|e| e.into_inner());
        match memory.check(host, batch) {
            Seen::New => {}
            Seen::Again(acks) => return Response::Delivered(acks),
            Seen::Stale => {
                tracing::warn!(%host, ?batch, "refused a delivery batch older than the remembered ones");
                return Response::Refused(
                    "delivery batch older than the last ones (replayed)".into(),
                );
            }
        }
        let mut last_from: Option<&str> = None;
        for env in &envs {
            if last_from != Some(&*env.from) {
                self.note_sender(env.from.clone(), host);
                last_from = Some(&env.from);
            }
        }
        let acks = deliver_envs(
            &self.shared,
            envs.iter()
                .map(|e| (&*e.from, &*e.to, e.payload.clone(), e.corr)),
        );
        memory.record(host, batch, acks.clone());
        Response::Delivered(acks)
    }

    /// Fails every queued send (on close).
    pub(super) fn fail_all_sends(&mut self) {
        for (_, queue) in self.links.drain() {
            for p in queue {
                let _ = p.reply.send(Err(Error::Closed));
            }
        }
    }
}
