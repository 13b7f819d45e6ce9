//! Queue groups: this host's members, and the hand-over of publishes to
//! one member of each matching group (see [`crate::queue_group`]).

use std::collections::HashMap;

use libp2p::{request_response::OutboundFailure, PeerId};
use tokio::sync::{mpsc::error::TrySendError, oneshot};

use super::{EventLoop, Pending};
use crate::{
    channel_name::{check_name, check_pattern, matches},
    command::SubSink,
    error::{Error, Result},
    message::{ChannelMessage, Payload},
    protocol::{Request, Response},
    queue_group::{order, QueueGroup},
    shared::bump,
};

/// A group's key: its pattern and its name.
type Key = (String, String);

/// One group's members on this host.
#[derive(Default)]
struct Local {
    sinks: Vec<SubSink>,
    /// The member whose turn is next.
    next: usize,
}

/// A publish on its way to one member of one group.
struct Flight {
    channel: String,
    key: Key,
    payload: Payload,
    /// The hosts to try, first choice first.
    hosts: Vec<PeerId>,
    /// The next of `hosts` to try.
    next: usize,
    reply: oneshot::Sender<Result<()>>,
}

/// The queue groups concern's state.
#[derive(Default)]
pub(crate) struct Queues {
    local: HashMap<Key, Local>,
    /// Each group's turn counter, per publishing host.
    turns: HashMap<Key, u64>,
    flights: HashMap<u64, Flight>,
    next_flight: u64,
}

impl Queues {
    /// This host's groups, for its record.
    pub(crate) fn interests(&self) -> Vec<QueueGroup> {
        let mut v: Vec<QueueGroup> = self
            .local
            .iter()
            .map(|((pattern, group), l)| QueueGroup {
                pattern: pattern.clone(),
                group: group.clone(),
                members: u32::try_from(l.sinks.len()).unwrap_or(u32::MAX),
            })
            .collect();
        v.sort();
        v
    }

    /// Groups this host has members of.
    pub(crate) fn len(&self) -> usize {
        self.local.len()
    }

    /// Gives `payload` to one member of the local group `key`, in turn;
    /// whether one took it (members whose queue is full are passed over,
    /// ended ones dropped).
    fn deliver_one(&mut self, key: &Key, channel: &str, payload: &Payload) -> bool {
        let Some(l) = self.local.get_mut(key) else {
            return false;
        };
        l.sinks.retain(|s| !s.tx.is_closed());
        let n = l.sinks.len();
        for i in 0..n {
            let at = (l.next + i) % n;
            let s = &l.sinks[at];
            match s.tx.try_reserve() {
                Ok(room) => {
                    room.send(ChannelMessage {
                        channel: channel.to_string(),
                        payload: payload.clone(),
                    });
                    l.next = (at + 1) % n;
                    return true;
                }
                // Another member (or host) takes it instead.
                Err(TrySendError::Full(()) | TrySendError::Closed(())) => {}
            }
        }
        false
    }
}

impl EventLoop {
    /// Adds a member of group `group` on `pattern`.
    pub(super) fn subscribe_queue(
        &mut self,
        pattern: String,
        group: String,
        sink: SubSink,
    ) -> Result<()> {
        let key = (pattern, group);
        if !self.queues.local.contains_key(&key)
            && self.subs.len() + self.queues.len() >= crate::core::membership::MAX_RECORD_CHANNELS
        {
            return Err(Error::InvalidChannel(format!(
                "{:?}: this host subscribes to {} channels and queue groups already, the most a host record carries",
                key.0,
                crate::core::membership::MAX_RECORD_CHANNELS
            )));
        }
        self.queues.local.entry(key).or_default().sinks.push(sink);
        self.publish_queue_patterns();
        // The record carries each group's member count.
        self.announce();
        Ok(())
    }

    /// Ends a member (`id`) or every member of a group on `pattern`.
    pub(super) fn unsubscribe_queue(&mut self, pattern: String, group: String, id: Option<u64>) {
        let key = (pattern, group);
        let Some(l) = self.queues.local.get_mut(&key) else {
            return;
        };
        match id {
            Some(id) => l.sinks.retain(|s| s.id != id),
            None => l.sinks.clear(),
        }
        if l.sinks.is_empty() {
            self.queues.local.remove(&key);
            self.publish_queue_patterns();
        }
        self.announce();
    }

    /// Tells the publish lane the patterns of every queue group this host
    /// knows of: publishes on channels they match come as commands.
    pub(super) fn publish_queue_patterns(&mut self) {
        let mut v: Vec<String> = self.queues.local.keys().map(|(p, _)| p.clone()).collect();
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
        reply: oneshot::Sender<Result<()>>,
    ) -> oneshot::Sender<Result<()>> {
        let groups = self.queue_hosts(channel);
        if groups.is_empty() {
            return reply;
        }
        let mut handed = Vec::with_capacity(groups.len());
        for (key, candidates) in groups {
            let turn = self
                .queues
                .turns
                .entry(key.clone())
                .or_insert_with(rand::random::<u64>);
            *turn = turn.wrapping_add(1);
            let hosts = order(&candidates, *turn);
            let (tx, rx) = oneshot::channel();
            handed.push(rx);
            self.try_next_host(Flight {
                channel: channel.to_string(),
                key,
                payload: payload.clone(),
                hosts,
                next: 0,
                reply: tx,
            });
        }
        let (rest, rest_done) = oneshot::channel();
        tokio::spawn(async move {
            let mut out = rest_done.await.unwrap_or(Err(Error::Closed));
            for h in handed {
                let r = h.await.unwrap_or(Err(Error::Closed));
                if out.is_ok() {
                    out = r;
                }
            }
            let _ = reply.send(out);
        });
        rest
    }

    /// Every group matching `channel`, with its hosts (sorted) and their
    /// member counts.
    fn queue_hosts(&self, channel: &str) -> Vec<(Key, Vec<(PeerId, u32)>)> {
        let local = self.local();
        let mut groups: HashMap<Key, Vec<(PeerId, u32)>> = HashMap::new();
        for (key, l) in &self.queues.local {
            if matches(&key.0, channel) {
                let members = u32::try_from(l.sinks.len()).unwrap_or(u32::MAX);
                groups
                    .entry(key.clone())
                    .or_default()
                    .push((local, members));
            }
        }
        for (host, m) in self.members.membership().iter() {
            if *host == local {
                continue;
            }
            for i in &m.queues {
                if i.members > 0 && matches(&i.pattern, channel) {
                    groups
                        .entry((i.pattern.clone(), i.group.clone()))
                        .or_default()
                        .push((*host, i.members));
                }
            }
        }
        let mut out: Vec<_> = groups.into_iter().collect();
        for (_, hosts) in &mut out {
            hosts.sort();
        }
        out
    }

    /// Offers the flight to its next host: at once if it is this one, by a
    /// request otherwise; fails it when no host is left.
    fn try_next_host(&mut self, mut f: Flight) {
        let local = self.local();
        while let Some(&host) = f.hosts.get(f.next) {
            f.next += 1;
            if host != local {
                let req = Request::Queue {
                    channel: f.channel.clone(),
                    pattern: f.key.0.clone(),
                    group: f.key.1.clone(),
                    payload: f.payload.clone(),
                };
                let rid = self.request(host, req);
                let id = self.queues.next_flight;
                self.queues.next_flight += 1;
                self.requests.insert(rid, Pending::Queue { id, host });
                self.queues.flights.insert(id, f);
                return;
            }
            if self.queues.deliver_one(&f.key, &f.channel, &f.payload) {
                bump(&self.shared.counters.queue_delivered);
                let _ = f.reply.send(Ok(()));
                return;
            }
        }
        bump(&self.shared.counters.queue_unavailable);
        let _ = f.reply.send(Err(Error::QueueUnavailable {
            pattern: f.key.0,
            group: f.key.1,
        }));
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
        let key = (pattern, group);
        let taken = self.queues.deliver_one(&key, &channel, &payload);
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
        let Some(f) = self.queues.flights.remove(&id) else {
            return;
        };
        if let Ok(Response::QueueTaken(true)) = result {
            let _ = f.reply.send(Ok(()));
            return;
        }
        self.try_next_host(f);
    }
}
