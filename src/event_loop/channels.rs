//! Channels: local subscriptions and publishes over gossipsub.
//!
//! Which subscriptions a publish reaches and which topics this host is in
//! are decided by [`crate::core::subscriptions`]; each host delivers a
//! publish to every local subscription whose pattern matches its channel,
//! once each.
//!
//! Every host announces the channels it subscribes to in its membership
//! record. A publish is delivered to this host's own subscriptions at once;
//! for the other hosts it waits until every subscribing host is connected
//! and known to gossipsub as a subscriber (the mesh warm-up), or until
//! `publish_warmup` has passed, and then goes out with flood publishing, so
//! each subscriber host receives it directly. Publishes on one channel leave
//! in order. Publishes that no queue group matches come through the publish
//! lane (`crate::publish_lane`), the rest as commands. When gossipsub's
//! queues are full the publishes wait here, and once the lane's room is
//! used up, so do the callers: backpressure instead of loss.

use std::{
    collections::HashSet,
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use libp2p::{gossipsub, PeerId};
use tokio::sync::{mpsc::error::TrySendError, oneshot};

use super::EventLoop;
use crate::{
    channel_name::{self, matches},
    command::SubSink,
    core::subscriptions::Changed,
    error::PublishError,
    message::{ChannelMessage, Payload},
    protocol::{ChannelFrame, ChannelFrameIn},
    shared::bump,
};

/// The caller of a publish command, answered once it may go on (see
/// [`crate::core::publish`]).
pub(crate) type PublishReply = oneshot::Sender<Result<(), PublishError>>;

/// The gossipsub topic a publish on `channel` goes on.
fn channel_topic(channel: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(channel_name::topic_of_name(channel))
}

impl EventLoop {
    pub(super) fn subscribe(
        &mut self,
        channel: String,
        sink: SubSink,
    ) -> Result<(), crate::SubscribeError> {
        if let Some(changed) = self.subs.subscribe(channel, sink, self.queues.len())? {
            self.follow_topics(changed);
        }
        Ok(())
    }

    pub(super) fn unsubscribe(&mut self, channel: &str, id: Option<u64>) {
        if let Some(changed) = self.subs.unsubscribe(channel, id) {
            self.follow_topics(changed);
        }
    }

    /// Joins and leaves the gossipsub topics the subscriptions need, and
    /// announces the new set of channels in this host's record.
    fn follow_topics(&mut self, changed: Changed) {
        let gs = &mut self.swarm.behaviour_mut().gossipsub;
        for t in changed.join {
            if let Err(e) = gs.subscribe(&gossipsub::IdentTopic::new(&t)) {
                tracing::warn!(topic = %t, error = %e, "gossipsub subscribe failed");
            }
        }
        for t in changed.leave {
            gs.unsubscribe(&gossipsub::IdentTopic::new(t));
        }
        self.announce();
    }

    /// Delivers `payloads`, in order, to every local subscription whose
    /// pattern matches `channel`, once each, and drops the subscriptions
    /// whose reader is gone. The matching is done once for the whole run
    /// (a frame, or a run of lane publishes), and the run's messages share
    /// one allocation of the channel's name.
    fn deliver_local<'a>(
        &mut self,
        channel: &str,
        payloads: impl Iterator<Item = &'a Payload> + Clone,
    ) {
        let counters = &self.shared.counters;
        let mut name: Option<Arc<str>> = None;
        let changed = self.subs.deliver(channel, |s| {
            for payload in payloads.clone() {
                // Room is reserved, and the delivery counted, before the
                // message is handed over: a reader that got it sees it
                // counted.
                match s.tx.try_reserve() {
                    Ok(room) => {
                        bump(&counters.channel_delivered);
                        room.send(ChannelMessage {
                            channel: name.get_or_insert_with(|| channel.into()).clone(),
                            payload: payload.clone(),
                        });
                    }
                    Err(TrySendError::Full(())) => {
                        s.missed.fetch_add(1, Ordering::Relaxed);
                        bump(&counters.channel_missed);
                    }
                    Err(TrySendError::Closed(())) => return false,
                }
            }
            true
        });
        if changed != Changed::default() {
            self.follow_topics(changed);
        }
    }

    /// A publish command: one that matches a queue group, answered once
    /// the groups have it. It is delivered locally, handed to the queue
    /// groups it matches, and parked for gossipsub if another host may
    /// subscribe.
    pub(super) fn publish(&mut self, channel: String, payload: Payload, reply: PublishReply) {
        // Lane publishes made before this one leave before it.
        self.take_publish_lane();
        self.deliver_local(&channel, std::iter::once(&payload));
        bump(&self.shared.counters.published);
        let reply = self.publish_to_queues(&channel, &payload, reply);
        if !self.needs_gossip(&channel) {
            let _ = reply.send(Ok(()));
            return;
        }
        let warmup = self.shared.with_config(|c| c.publish_warmup);
        // Accepted into the bounded queue: the caller goes on. Past the
        // bound it waits until the queue drains (backpressure).
        let now = Instant::now();
        if let Some(r) = self.publishes.park(channel, payload, reply, now, warmup) {
            let _ = r.send(Ok(()));
        }
    }

    /// Takes the publishes of the publish lane (accepted already), a run
    /// of publishes on one channel at a time: the checks and the queue
    /// look-up of a publish are made once per run (with 1,024 publishes
    /// in flight, made per publish, they were a fifth of the publishing
    /// loop's CPU).
    pub(super) fn take_publish_lane(&mut self) {
        let mut taken = self.shared.publish_lane.take();
        let mut start = 0;
        while start < taken.len() {
            // The lane gives a run one shared allocation of its channel's
            // name, so a run ends where the allocation changes.
            let channel = taken[start].0.clone();
            let len = taken[start..]
                .iter()
                .take_while(|(c, _)| Arc::ptr_eq(c, &channel))
                .count();
            self.publish_run(&channel, &mut taken[start..start + len]);
            start += len;
        }
        self.shared.publish_lane.recycle(taken);
    }

    /// Publishes a run of lane publishes on `channel`, in order: each is
    /// delivered locally, then the run is parked for gossipsub (its
    /// payloads taken out of `run`) if another host may subscribe.
    fn publish_run(&mut self, channel: &str, run: &mut [(Arc<str>, Payload)]) {
        self.deliver_local(channel, run.iter().map(|(_, p)| p));
        let n = run.len();
        self.shared
            .counters
            .published
            .fetch_add(n as u64, Ordering::Relaxed);
        if !self.needs_gossip(channel) {
            self.shared.publish_lane.release(n);
            return;
        }
        let warmup = self.shared.with_config(|c| c.publish_warmup);
        // Taken without a copy: the vector goes back to the lane, emptied.
        let empty = || Payload {
            encoding: crate::Encoding::Postcard,
            bytes: bytes::Bytes::new(),
        };
        let payloads = run.iter_mut().map(|(_, p)| std::mem::replace(p, empty()));
        self.publishes
            .park_lane(channel, payloads, Instant::now(), warmup);
    }

    /// Whether a publish on `channel` goes to gossipsub: another host
    /// subscribes, or earlier publishes wait (it queues behind them).
    fn needs_gossip(&self, channel: &str) -> bool {
        self.publishes.has_parked(channel)
            || self.has_remote_subscribers(channel)
            || self.gossip_has_subscribers(channel)
    }

    /// Whether a host other than this one subscribes to `channel` (no
    /// allocation: it runs for every run of publishes).
    fn has_remote_subscribers(&self, channel: &str) -> bool {
        self.remote_subscriber_iter(channel).next().is_some()
    }

    /// Hosts other than this one that subscribe to `channel`.
    fn remote_subscribers(&self, channel: &str) -> Vec<PeerId> {
        self.remote_subscriber_iter(channel).collect()
    }

    fn remote_subscriber_iter<'a>(&'a self, channel: &'a str) -> impl Iterator<Item = PeerId> + 'a {
        self.members
            .membership()
            .iter()
            .filter(move |(_, m)| m.channels.iter().any(|c| matches(c, channel)))
            .map(|(h, _)| *h)
    }

    /// Whether gossipsub already heard of a connected subscriber (its
    /// SUBSCRIBE can arrive before the subscriber's membership record).
    fn gossip_has_subscribers(&self, channel: &str) -> bool {
        let hash = channel_topic(channel).hash();
        self.swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .any(|(_, topics)| topics.contains(&&hash))
    }

    /// Whether gossipsub can reach every subscriber host of `channel`;
    /// dials the ones that are not connected.
    fn mesh_ready(&mut self, channel: &str) -> bool {
        let subscribers = self.remote_subscribers(channel);
        if subscribers.is_empty() {
            return true;
        }
        let hash = channel_topic(channel).hash();
        let known: HashSet<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&hash))
            .map(|(p, _)| *p)
            .collect();
        let swarm = &self.swarm;
        let (ready, dial) = self.publishes.check_mesh(
            subscribers,
            &known,
            |h| swarm.is_connected(h),
            Instant::now(),
        );
        for h in dial {
            self.dial_member(h);
        }
        ready
    }

    /// Publishes the parked messages of `channel` that can go now, in
    /// order, batched into frames of up to [`BATCH_BYTES`].
    ///
    /// It runs at the end of each turn of the event loop, which takes up to
    /// `COMMAND_BATCH` commands per turn: under load the publishes of a turn
    /// share a frame (gossipsub costs per message, not per byte), and a lone
    /// publish leaves at once, with no timer to wait for.
    fn drain_parked(&mut self, channel: &str) {
        let ready = self.publishes.is_ready(channel) || self.mesh_ready(channel);
        if ready {
            self.publishes.set_ready(channel);
        }
        let now = Instant::now();
        let topic = channel_topic(channel);
        let max = self.shared.with_config(|c| c.max_message_size);
        while let Some(payloads) = self.publishes.next_batch(channel, ready, now, max) {
            let n = payloads.len();
            let frame = ChannelFrame {
                nonce: rand::random(),
                channel: channel.to_string(),
                payloads,
            };
            let outcome = match crate::protocol::encode_body(&frame) {
                Err(e) => Err(PublishError::Encode(crate::Cause::new(e))),
                Ok(bytes) => match self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic.clone(), bytes)
                {
                    Ok(_) | Err(gossipsub::PublishError::Duplicate) => Ok(()),
                    // Nobody reachable subscribes after the warm-up: the
                    // local subscribers had it; nothing else to do.
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(()),
                    Err(gossipsub::PublishError::AllQueuesFull(_)) => return, // backpressure
                    Err(e) => Err(PublishError::Publish(crate::Cause::new(e))),
                },
            };
            if let Err(e) = &outcome {
                tracing::warn!(%channel, error = %e.report(), "publish failed");
                self.shared
                    .counters
                    .publishes_failed
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            let taken = self.publishes.take(channel, n);
            for reply in taken.sent {
                let _ = reply.send(outcome.clone());
            }
            self.shared.publish_lane.release(taken.lane);
            for reply in taken.released {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Retries every channel with parked publishes.
    pub(super) fn retry_parked(&mut self) {
        for c in self.publishes.channels() {
            self.drain_parked(&c);
        }
    }

    pub(super) fn on_channel_message(&mut self, message: gossipsub::Message) {
        let topic = message.topic.as_str();
        let data = bytes::Bytes::from(message.data);
        match postcard::from_bytes::<ChannelFrameIn<'_>>(&data) {
            // A frame names a valid channel of the topic it came on.
            Ok(frame) if channel_name::belongs(topic, frame.channel) => {
                // When every subscription has room for the whole frame, the
                // payloads delivered are slices of its buffer: no copy and
                // no allocation per payload. Otherwise each is copied, so a
                // message kept by a slow reader keeps only its own bytes,
                // not a frame whose other payloads it missed.
                let n = frame.payloads.len();
                let share = self.subs.all(frame.channel, |s| s.tx.capacity() >= n);
                let payloads: Vec<Payload> = frame
                    .payloads
                    .iter()
                    .map(|p| Payload {
                        encoding: p.encoding,
                        bytes: if share {
                            data.slice_ref(p.bytes)
                        } else {
                            bytes::Bytes::copy_from_slice(p.bytes)
                        },
                    })
                    .collect();
                self.deliver_local(frame.channel, payloads.iter());
            }
            Ok(frame) => {
                self.shared.wire.count_rejected();
                tracing::warn!(%topic, channel = %frame.channel, "a channel frame on another channel's topic");
            }
            Err(e) => {
                self.shared.wire.count_rejected();
                tracing::warn!(%topic, error = %e, "malformed channel message");
            }
        }
    }

    pub(super) fn fail_all_publishes(&mut self) {
        self.shared.publish_lane.close();
        for reply in self.publishes.drain_waiters() {
            let _ = reply.send(Err(PublishError::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::{collection::vec, prelude::*};

    use crate::protocol::{decode_frame, encode_frame, ChannelFrame, ChannelFrameIn};

    proptest! {
        /// A channel frame survives encode → decode → encode unchanged.
        #[test]
        fn channel_frames_round_trip(
            nonce in any::<u64>(),
            payloads in vec((any::<bool>(), vec(any::<u8>(), 0..64)), 0..8),
        ) {
            let payloads = payloads
                .into_iter()
                .map(|(json, b)| crate::Payload {
                    encoding: if json { crate::Encoding::Json } else { crate::Encoding::Postcard },
                    bytes: b.into(),
                })
                .collect();
            let frame = ChannelFrame { nonce, channel: "a.b".into(), payloads };
            let once = encode_frame(&frame).unwrap();
            let back: ChannelFrame = decode_frame(&once[4..]).unwrap();
            prop_assert_eq!(encode_frame(&back).unwrap(), once.clone());
            // What a host sends, and what a receiving host reads of it.
            let sent = crate::protocol::encode_body(&frame).unwrap();
            prop_assert_eq!(&sent[..], &once[4..]);
            prop_assert_eq!(sent.capacity(), sent.len());
            let read: ChannelFrameIn<'_> = postcard::from_bytes(&sent).unwrap();
            prop_assert_eq!(read.channel, "a.b");
            prop_assert_eq!(read.payloads.len(), frame.payloads.len());
            for (r, p) in read.payloads.iter().zip(&frame.payloads) {
                prop_assert_eq!(r.encoding, p.encoding);
                prop_assert_eq!(r.bytes, &p.bytes[..]);
            }
        }
    }
}
