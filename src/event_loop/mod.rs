//! The event loop: one task per host owns the libp2p swarm and all state that
//! is not shared, and serves the handles' commands.
//!
//! The loop `select!`s fairly over commands, swarm events, local directory
//! changes and a short tick. Work is split by concern into the files beside
//! this one; each adds methods to [`EventLoop`]:
//! - `messaging`: direct messages, batched per destination host;
//! - `lookup`: directory registration batches and one-hop lookups;
//! - `members`: join, leave, heartbeats, leases and reconnects;
//! - `channels`: subscriptions and publishes over gossipsub.

mod channels;
mod lookup;
mod members;
pub(crate) mod messaging;

use std::{
    collections::{HashMap, VecDeque},
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    gossipsub, identify,
    identity::Keypair,
    request_response::{self, OutboundRequestId},
    swarm::{ConnectionId, SwarmEvent},
    Multiaddr, PeerId, Swarm,
};
use lru::LruCache;
use tokio::sync::{mpsc, oneshot};

use crate::{
    behaviour::{Behaviour, BehaviourEvent},
    command::{Command, SubSink},
    directory::{DirOp, DirectoryStore},
    error::{Error, Result},
    membership::Membership,
    shared::Shared,
};

pub(crate) use messaging::PendingSend;

/// Most commands handled in one turn of the loop before swarm events.
const COMMAND_BATCH: usize = 256;

/// What an outbound request was for.
#[derive(Debug)]
enum Pending {
    Deliver {
        host: PeerId,
        sends: Vec<PendingSend>,
    },
    Directory {
        host: PeerId,
        ops: Vec<DirOp>,
    },
    Lookup {
        id: String,
    },
    Join {
        host: PeerId,
    },
    Leave,
    Resync,
}

/// The loop's state. Fields are grouped by the file that uses them.
pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    key: Keypair,
    epoch: u64,
    seq: u64,
    replication: usize,
    requests: HashMap<OutboundRequestId, Pending>,
    listens: HashMap<libp2p::core::transport::ListenerId, oneshot::Sender<Result<Vec<Multiaddr>>>>,
    /// Every listener opened, removed when the loop ends (the memory
    /// transport frees its port only on removal).
    listener_ids: Vec<libp2p::core::transport::ListenerId>,

    // messaging
    links: HashMap<PeerId, messaging::Link>,

    // lookup
    store: DirectoryStore,
    cache: LruCache<Arc<str>, PeerId>,
    lookups: HashMap<String, lookup::LookupState>,
    kad_lookups: HashMap<libp2p::kad::QueryId, String>,
    dir_links: HashMap<PeerId, lookup::DirLink>,
    rebalanced: Vec<(u64, PeerId)>,
    last_dir_flush: Instant,
    trim_due: Option<Instant>,

    // members
    membership: Membership,
    joins: HashMap<ConnectionId, members::JoinState>,
    rejoin: HashMap<PeerId, members::Rejoin>,
    /// Hosts whose lease lapsed here (their entries were dropped); if one
    /// turns out alive, it is asked to register its entries again.
    lapsed: std::collections::HashSet<PeerId>,
    next_heartbeat: Instant,
    closing: Option<members::Closing>,

    // channels
    subs: HashMap<String, Vec<SubSink>>,
    parked: HashMap<String, VecDeque<channels::Parked>>,
    /// Channels whose known subscriber hosts all reach us through gossipsub;
    /// cleared when membership or connections change.
    ready: std::collections::HashSet<String>,
    /// When each channel last sent a gossip frame.
    last_frame: HashMap<String, Instant>,
    dialing: HashMap<PeerId, Instant>,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        key: Keypair,
    ) -> Self {
        let cfg = shared.config();
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let local = shared.local;
        let cache_cap = NonZeroUsize::new(cfg.location_cache_capacity).unwrap_or(NonZeroUsize::MIN);
        let mut this = EventLoop {
            swarm,
            commands,
            key,
            epoch,
            seq: 0,
            replication: cfg.replication,
            requests: HashMap::new(),
            listens: HashMap::new(),
            listener_ids: Vec::new(),
            links: HashMap::new(),
            store: DirectoryStore::new(cfg.max_directory_entries),
            cache: LruCache::new(cache_cap),
            lookups: HashMap::new(),
            kad_lookups: HashMap::new(),
            dir_links: HashMap::new(),
            rebalanced: vec![],
            // The first changes go out at once; later ones gather.
            last_dir_flush: Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
            trim_due: None,
            membership: Membership::new(local),
            joins: HashMap::new(),
            rejoin: HashMap::new(),
            lapsed: std::collections::HashSet::new(),
            next_heartbeat: Instant::now(),
            closing: None,
            subs: HashMap::new(),
            parked: HashMap::new(),
            ready: Default::default(),
            last_frame: HashMap::new(),
            dialing: HashMap::new(),
            shared,
        };
        this.rebalanced = this.membership.keys().to_vec();
        if let Err(e) = this
            .swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&members::topic())
        {
            tracing::warn!(error = %e, "cannot subscribe to the membership topic");
        }
        this
    }

    /// Runs until the host is closed or every handle is dropped.
    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => {
                        self.on_command(cmd);
                        // Take what else is waiting, so bursts are batched.
                        for _ in 0..COMMAND_BATCH {
                            match self.commands.try_recv() {
                                Ok(cmd) => self.on_command(cmd),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = self.shared.changes_ready.notified() => self.flush_directory(),
                _ = tick.tick() => self.on_tick(),
            }
            if !self.parked.is_empty() {
                self.retry_parked();
            }
            self.publish_gauges();
            if self.closing.as_ref().is_some_and(|c| c.done()) {
                break;
            }
        }
        self.finish_close();
        for id in std::mem::take(&mut self.listener_ids) {
            self.swarm.remove_listener(id);
        }
        tracing::debug!("event loop ended");
    }

    /// Copies the sizes of loop-owned state into the shared counters.
    fn publish_gauges(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.shared.counters;
        c.directory_entries.store(self.store.len() as u64, Relaxed);
        c.directory_refused.store(self.store.refused(), Relaxed);
        c.hosts.store(self.membership.len() as u64, Relaxed);
        c.connected
            .store(self.swarm.connected_peers().count() as u64, Relaxed);
    }

    fn local(&self) -> PeerId {
        self.shared.local
    }

    fn on_command(&mut self, cmd: Command) {
        if self.closing.is_some() {
            // Every reply channel is dropped, which the handle reads as Closed.
            if let Command::Close { reply } = cmd {
                if let Some(c) = self.closing.as_mut() {
                    c.replies.push(reply);
                }
            }
            return;
        }
        match cmd {
            Command::Listen { addr, reply } => self.listen(addr, reply),
            Command::Join { addr, shown, reply } => self.join(addr, shown, reply),
            Command::Send { env, reply } => self.send(PendingSend::new(env, reply)),
            Command::Find { id, reply } => self.find(id, reply),
            Command::Subscribe { channel, sink } => self.subscribe(channel, sink),
            Command::Unsubscribe { channel, id } => self.unsubscribe(&channel, id),
            Command::Publish {
                channel,
                payload,
                reply,
            } => self.publish(channel, payload, reply),
            Command::Members { reply } => {
                let _ = reply.send(self.members_info());
            }
            Command::CachedLocation { id, reply } => {
                let _ = reply.send(self.cache.peek(id.as_str()).copied());
            }
            Command::Close { reply } => self.start_close(reply),
        }
    }

    fn listen(&mut self, addr: Multiaddr, reply: oneshot::Sender<Result<Vec<Multiaddr>>>) {
        match self.swarm.listen_on(addr.clone()) {
            Ok(id) => {
                self.listener_ids.push(id);
                self.listens.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Listen {
                    addr: addr.to_string(),
                    reason: transport_reason(&e),
                }));
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(ev)) => self.on_rpc(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => self.on_gossip(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            })) => self.on_identify(peer_id, connection_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(
                libp2p::kad::Event::OutboundQueryProgressed {
                    id,
                    result: libp2p::kad::QueryResult::GetClosestPeers(r),
                    ..
                },
            )) => {
                let peers = match r {
                    Ok(ok) => ok.peers,
                    Err(libp2p::kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let local = self.local();
                let peers = peers
                    .into_iter()
                    .map(|p| p.peer_id)
                    .filter(|p| *p != local)
                    .collect();
                self.on_kad_closest(id, peers);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(_)) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Identify(_)) => {}
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                let full = address.with_p2p(self.local()).unwrap_or_else(|a| a);
                if let Some(reply) = self.listens.remove(&listener_id) {
                    let _ = reply.send(Ok(vec![full]));
                }
                self.announce();
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                if let Some(reply) = self.listens.remove(&listener_id) {
                    let _ = reply.send(Err(Error::Listen {
                        addr: format!("{addresses:?}"),
                        reason: match reason {
                            Ok(()) => "listener closed".into(),
                            Err(e) => e.to_string(),
                        },
                    }));
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(reply) = self.listens.remove(&listener_id) {
                    let _ = reply.send(Err(Error::Listen {
                        addr: String::new(),
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            } => {
                crate::shared::bump(&self.shared.counters.connections_opened);
                self.on_connected(peer_id, connection_id)
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                connection_id,
                ..
            } => {
                self.on_connection_closed(connection_id);
                if num_established == 0 {
                    self.ready.clear();
                    self.on_disconnected(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => self.on_dial_failed(connection_id, peer_id, error.to_string()),
            other => tracing::trace!(event = ?other, "swarm event"),
        }
    }

    fn on_rpc(
        &mut self,
        ev: request_response::Event<crate::protocol::Request, crate::protocol::Response>,
    ) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let response = self.on_request(peer, request);
                if self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!(%peer, "response channel closed before answering");
                }
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(p) = self.requests.remove(&request_id) {
                    self.on_response(p, Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(p) = self.requests.remove(&request_id) {
                    self.on_response(p, Err(error));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_request(
        &mut self,
        peer: PeerId,
        request: crate::protocol::Request,
    ) -> crate::protocol::Response {
        use crate::protocol::{Request, Response};
        match request {
            Request::Deliver(envs) => self.deliver_inbound(peer, envs),
            Request::Directory { epoch, ops } => {
                self.store.apply(peer, epoch, ops);
                Response::DirectoryOk
            }
            Request::Lookup(id) => self.answer_lookup(&id),
            Request::Join(records) => self.on_join_request(peer, records),
            Request::Leave(record) => self.on_leave_request(peer, record),
            Request::Resync => {
                self.resync_holder(peer);
                Response::DirectoryOk
            }
        }
    }

    fn on_response(
        &mut self,
        pending: Pending,
        result: std::result::Result<crate::protocol::Response, request_response::OutboundFailure>,
    ) {
        match pending {
            Pending::Deliver { host, sends } => self.on_deliver_result(host, sends, result),
            Pending::Directory { host, ops } => self.on_directory_result(host, ops, result),
            Pending::Lookup { id } => self.on_lookup_result(id, result),
            Pending::Join { host } => self.on_join_result(host, result),
            Pending::Resync => {}
            Pending::Leave => {
                if let Some(c) = self.closing.as_mut() {
                    c.outstanding = c.outstanding.saturating_sub(1);
                }
            }
        }
    }

    fn on_gossip(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message { message, .. } => {
                if message.topic == members::topic().hash() {
                    self.on_member_gossip(&message.data);
                } else {
                    self.on_channel_message(message);
                }
            }
            gossipsub::Event::Subscribed { .. } => self.retry_parked(),
            _ => {}
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if now >= self.next_heartbeat {
            let interval = self.shared.with_config(|c| c.heartbeat_interval);
            self.next_heartbeat = now + interval;
            self.announce();
            self.expire_members(now);
        }
        self.redial(now);
        self.flush_directory();
        self.rebalance();
        self.trim_directory(now);
        self.retry_directory();
        self.retry_parked();
        self.expire_joins(now);
        if let Some(c) = self.closing.as_mut() {
            if now >= c.deadline {
                c.outstanding = 0;
            }
        }
    }
}

/// A readable reason from a transport error.
fn transport_reason<E: std::fmt::Display>(e: &libp2p::TransportError<E>) -> String {
    match e {
        libp2p::TransportError::MultiaddrNotSupported(a) => {
            format!("address {a} is not supported by this host's transports")
        }
        libp2p::TransportError::Other(e) => e.to_string(),
    }
}
