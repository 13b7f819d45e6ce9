//! Queue groups between the swarm and the core: this host's members'
//! queues, and the requests that hand a publish from host to host (the
//! choices are [`crate::core::queue_groups`]'s; the protocol is described
//! in [`crate::queue_group`]).

use libp2p::request_response::OutboundFailure;
use tokio::sync::oneshot;

use super::{EventLoop, Pending};
use crate::{
    channel_name::{check_name, check_pattern, matches},
    command::SubSink,
    core::queue_groups::Step,
    error::{PublishError, SubscribeError},
    message::{ChannelMessage, Payload},
    protocol::Response,
    shared::bump,
};

/// The publisher of a hand-over, answered once a member has it.
pub(crate) type QueueReply = oneshot::Sender<Result<(), PublishError>>;

/// Offers a publish to one member's queue: whether it took it (a full or
/// closed queue passes it on to another member or host).
fn offer(s: &SubSink, channel: &str, payload: &Payload) -> bool {
    match s.tx.try_reserve() {
        Ok(room) => {
            room.send(ChannelMessage {
                channel: channel.into(),
                payload: payload.clone(),
            });
            true
        }
        Err(_) => false,
    }
}

impl EventLoop {
    /// Adds a member of group `group` on `pattern`.
    pub(super) fn subscribe_queue(
        &mut self,
        pattern: String,
        group: String,
        sink: SubSink,
    ) -> Result<(), SubscribeError> {
        self.queues
            .subscribe((pattern, group), sink, self.subs.len())?;
        self.publish_queue_patterns();
        // The record carries each group's member count.
        self.announce();
        Ok(())
    }

    /// Ends a member (`id`) or every member of a group on `pattern`.
    pub(super) fn unsubscribe_queue(&mut self, pattern: String, group: String, id: Option<u64>) {
        if self.queues.unsubscribe(&(pattern, group), id) {
            self.publish_queue_patterns();
        }
        self.announce();
    }

    /// Tells the publish lane the patterns of every queue group this host
    /// knows of: publishes on channels they match come as commands.
    pub(super) fn publish_queue_patterns(&mut self) {
        let mut v: Vec<String> = self.queues.patterns().cloned().collect();
        for (_, m) in self.members.membership().iter() {
            v.extend(m.queues.iter().map(|q| q.pattern.clone()));
        }
        v.sort_unstable();
        v.dedup();
        self.shared.publish_lane.set_queue_patterns(v);
    }

    /// Hands a publish on `channel` to one member of each group whose
    /// pattern matches it. Returns the answer for the rest of the publish:
    /// `reply` itself when no group matches; otherwise one that, once
    /// answered, answers `reply` when every group has it too.
    pub(super) fn publish_to_queues(
        &mut self,
        channel: &str,
        payload: &Payload,
        reply: QueueReply,
    ) -> QueueReply {
        let mut handed = Vec::new();
        let local = self.local();
        let remote = self
            .members
            .membership()
            .iter()
            .map(|(h, m)| (*h, &m.queues[..]));
        let steps = self.queues.hand_over(
            channel,
            payload,
            local,
            remote,
            &mut rand::thread_rng(),
            || {
                let (tx, rx) = oneshot::channel();
                handed.push(rx);
                tx
            },
            &mut offer,
        );
        if handed.is_empty() {
            return reply;
        }
        for step in steps {
            self.queue_step(step);
        }
        let (rest, rest_done) = oneshot::channel();
        tokio::spawn(async move {
            let mut out = rest_done.await.unwrap_or(Err(PublishError::Closed));
            for h in handed {
                let r = h.await.unwrap_or(Err(PublishError::Closed));
                if out.is_ok() {
                    out = r;
                }
            }
            let _ = reply.send(out);
        });
        rest
    }

    /// Does what a hand-over decided.
    fn queue_step(&mut self, step: Step<QueueReply>) {
        match step {
            Step::Ask {
                flight,
                host,
                request,
            } => {
                let rid = self.request(host, request);
                self.requests
                    .insert(rid, Pending::Queue { id: flight, host });
            }
            Step::Done {
                reply,
                result,
                here,
            } => {
                if here {
                    bump(&self.shared.counters.queue_delivered);
                } else if result.is_err() {
                    bump(&self.shared.counters.queue_unavailable);
                }
                let _ = reply.send(result);
            }
        }
    }

    /// Another host hands us a publish for one member of a local group.
    pub(super) fn on_queue_request(
        &mut self,
        channel: String,
        pattern: String,
        group: String,
        payload: Payload,
    ) -> Response {
        if check_name(&channel).is_err()
            || check_pattern(&pattern).is_err()
            || !matches(&pattern, &channel)
        {
            self.shared.wire.count_rejected();
            return Response::Refused("not a channel of the group's pattern".into());
        }
        let taken = self
            .queues
            .take(&(pattern, group), &channel, &payload, &mut offer);
        if taken {
            bump(&self.shared.counters.queue_delivered);
        }
        Response::QueueTaken(taken)
    }

    /// A host's answer to a hand-over: done, or on to the next host.
    pub(super) fn on_queue_result(
        &mut self,
        id: u64,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        let taken = matches!(result, Ok(Response::QueueTaken(true)));
        let local = self.local();
        if let Some(step) = self.queues.on_answer(id, taken, local, &mut offer) {
            self.queue_step(step);
        }
    }
}
