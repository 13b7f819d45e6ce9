//! Direct messages between hosts, between the swarm, the link tasks and the
//! core: which path a destination's queue takes and what an answer means
//! are decided by [`crate::core::messaging`] (which describes the
//! protocol); this file hands queues to link tasks, sends request batches,
//! and answers the callers.

use std::{sync::atomic::Ordering, sync::Arc, time::Instant};

use libp2p::{request_response::OutboundFailure, PeerId};

use super::{EventLoop, Pending};
use crate::{
    core::{
        batch_memory::Seen,
        messaging::{Failure, Limits, Link, Outcome, Route, Settled},
        send::PendingSend,
    },
    delivery::{
        local::{deliver_envs, finish, no_request, push_local},
        outbound::{LinkHandle, Refused},
        TaskEvent,
    },
    error::SendError,
    protocol::{Envelope, Request, Response},
    shared::bump,
};

/// Bytes kept free in a batch frame for the envelope framing itself.
const FRAME_SLACK: usize = 64 * 1024;

impl EventLoop {
    /// Sends one message: locally if the recipient lives here, else to its host.
    pub(super) fn send(&mut self, p: PendingSend) {
        let local = self.local();
        let mut cached = self.locations.get(&p.env.to);
        if cached.is_none() {
            // A reply to a message that just came over a delivery stream:
            // its reader reported the sender's host before delivering.
            self.take_task_events();
            cached = self.locations.get(&p.env.to);
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
        self.messaging.enqueue(host, p);
    }

    /// Flushes the links that got sends in this turn of the loop.
    pub(super) fn flush_dirty_links(&mut self) {
        for host in self.messaging.take_dirty() {
            self.flush_link(host);
        }
    }

    /// Sends what waits for `host` on the path the core chooses.
    fn flush_link(&mut self, host: PeerId) {
        let (shared, swarm, tasks) = (&self.shared, &self.swarm, &self.stream_links);
        let limits = || {
            shared.with_config(|c| Limits {
                messages: c.max_batch_messages,
                bytes: c.max_frame_size.saturating_sub(FRAME_SLACK),
            })
        };
        let link = || Link {
            connected: swarm.is_connected(&host),
            stream_busy: tasks.get(&host).is_some_and(|l| l.outstanding() > 0),
        };
        match self.messaging.route(host, link, limits, Instant::now()) {
            Route::Nothing => {}
            // The tick tries again.
            Route::Wait => self.wake_soon = true,
            Route::Stream(queue) => self.hand_to_link_task(host, queue),
            Route::Again { batch, sends } => self.send_batch(host, batch, 0, sends),
            Route::Request(sends) => {
                // The counter the link tasks use: a batch id names one
                // batch on either path.
                let batch = self.delivery.next_batch.fetch_add(1, Ordering::Relaxed);
                self.send_batch(host, batch, 0, sends);
            }
        }
    }

    /// Hands the queue of `host` to its link task (started if there is
    /// none, or it ended).
    fn hand_to_link_task(
        &mut self,
        host: PeerId,
        mut queue: std::collections::VecDeque<PendingSend>,
    ) {
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
                    self.messaging.put_back(host, queue.into_iter());
                    self.wake_soon = true;
                    return;
                }
                Err(Refused::Ended(mut p)) => {
                    p.ticket = ticket.map(|(t, _)| t);
                    queue.push_front(p);
                    self.stream_links.remove(&host);
                    if started {
                        // A task that ended at once: keep the queue for the tick.
                        self.messaging.put_back(host, queue.into_iter());
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
        for host in self.messaging.ready(Instant::now()) {
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
                let failed = self.messaging.on_unsent(host, sends, Instant::now());
                for p in failed {
                    let id = p.env.to.to_string();
                    self.finish_send(p, Err(SendError::PeerUnreachable { id, host }));
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
        let result = result.map_err(|failure| {
            tracing::debug!(%host, batch, %failure, "delivery batch failed");
            match failure {
                OutboundFailure::ConnectionClosed | OutboundFailure::Io(_) => Failure::LinkClosed,
                OutboundFailure::Timeout => Failure::Timeout,
                _ => Failure::Unreachable,
            }
        });
        let closing = self.closing.is_some();
        let outcomes = match self
            .messaging
            .on_result(host, attempt, sends, result, closing)
        {
            Settled::Resend { attempt, sends } => {
                tracing::debug!(%host, batch, "link closed under a batch; sending it again");
                self.send_batch(host, batch, attempt, sends);
                return;
            }
            Settled::Done(outcomes) => outcomes,
        };
        for (p, outcome) in outcomes {
            let e = match outcome {
                Outcome::Delivered => {
                    bump(&self.shared.counters.sent_remote);
                    let _ = p.reply.send(Ok(()));
                    continue;
                }
                Outcome::UnknownPeer => {
                    self.on_unknown_peer(host, p);
                    continue;
                }
                Outcome::InboxFull => SendError::InboxFull(p.env.to.to_string()),
                Outcome::NoRequest => no_request(&p.env.to, p.env.corr),
                Outcome::Timeout => SendError::Timeout,
                Outcome::Unreachable => SendError::PeerUnreachable {
                    id: p.env.to.to_string(),
                    host,
                },
            };
            self.finish_send(p, Err(e));
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
        self.locations.not_on(&p.env.to, host);
        self.shared.finds.forget(&p.env.to);
        if p.refused_by.is_some() {
            let e = SendError::PeerNotFound(p.env.to.to_string());
            self.finish_send(p, Err(e));
            return;
        }
        p.refused_by = Some(Box::new(host));
        self.resolve_for_send(p);
    }

    pub(super) fn finish_send(&self, p: PendingSend, r: Result<(), SendError>) {
        finish(&self.shared, p, r);
    }

    /// Remembers that `host` says it delivers for `from`: a location
    /// only where this host's directory store agrees (see
    /// [`crate::core::locations`]).
    pub(super) fn note_sender(&mut self, from: Arc<str>, host: PeerId) {
        let holder_says = self.store.lookup(&from);
        self.locations.note_sender(from, host, holder_says);
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
        for p in self.messaging.drain() {
            let _ = p.reply.send(Err(SendError::Closed));
        }
    }
}
