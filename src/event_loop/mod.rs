//! The event loop: one task per host owns the libp2p swarm and all state that
//! is not shared, and serves the handles' commands.
//!
//! The loop `select!`s fairly over commands, swarm events, local directory
//! changes and a short tick. Work is split by concern into the files beside
//! this one; each adds methods to [`EventLoop`] that feed a machine of
//! [`crate::core`] and carry out what it returns:
//! - `messaging`: direct messages (see [`crate::core::messaging`]): queues
//!   handed to link tasks, request batches, callers answered;
//! - `registration`: directory operations to the holders (see
//!   [`crate::core::registration`]);
//! - `lookup`: one-hop lookups and the Kademlia fallback (see
//!   [`crate::core::lookup`]);
//! - `members`: joins, leave and reconnects, and what the membership
//!   protocol decides (see [`crate::core::members`]: records, leases,
//!   heartbeat digests);
//! - `budget`: the link budget (idle links closed, least recently used first);
//! - `relay`: the overlay's links and requests through its contacts (see
//!   [`crate::core::neighbours`] and [`crate::core::relay`]);
//! - `channels`: subscriptions and publishes over gossipsub (see
//!   [`crate::core::subscriptions`] and [`crate::core::publish`]);
//! - `queues`: queue groups (see [`crate::core::queue_groups`]);
//! - `broadcast`: broadcasts and group sends (see
//!   [`crate::core::broadcasts`]); `ownership`: registration
//!   checks and contested ids (see [`crate::core::ownership`]).

mod broadcast;
mod budget;
mod channels;
mod lookup;
mod members;
pub(crate) mod messaging;
pub(crate) mod ownership;
mod queues;
mod registration;
mod relay;

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
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
use tokio::sync::{mpsc, oneshot};

use crate::{
    behaviour::{Behaviour, BehaviourEvent},
    command::{Command, SubSink},
    core::{
        batch_memory::BatchMemory, members::Members, redial::Redials, registration::Registration,
        send::PendingSend,
    },
    directory::{DirOp, DirectoryStore},
    error::ListenError,
    rpc_stream::Reply,
    shared::Shared,
};

/// Most commands handled in one turn of the loop before swarm events.
const COMMAND_BATCH: usize = 256;
/// The tick while something waits for it: sends queued behind a busy link
/// task, directory changes gathering, a redial.
const FAST_TICK: Duration = Duration::from_millis(20);
/// The tick of an idle loop (leases, budget and retries are all coarser
/// than this; a heartbeat due sooner brings the tick forward). Each tick
/// wakes the loop and polls the swarm: 512 idle hosts in one process
/// ticking every 100 ms spent about a twentieth of a core more than every
/// 250 ms, and every 20 ms 0.15 to 0.2 more.
const SLOW_TICK: Duration = Duration::from_millis(250);
/// Claimed sender locations kept (see [`crate::core::locations`]): a claim
/// matters only until the sender's entry reaches its holders. (`lru`
/// allocates its table for the whole capacity up front.)
const CLAIMS: NonZeroUsize = match NonZeroUsize::new(4096) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};
/// Reports of the delivery tasks waiting for the loop, at most (readers
/// drop theirs when full; link tasks wait).
const TASK_EVENTS: usize = 1024;

/// Key of an outbound request: a request-response request of ours, or one
/// carried in a relay bundle (see `relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ReqKey {
    Rr(OutboundRequestId),
    Relayed(u64),
    /// On a request stream (see [`crate::rpc_stream`]).
    Stream(u64),
}

/// What an outbound request was for.
#[derive(Debug)]
enum Pending {
    Deliver {
        host: PeerId,
        batch: u64,
        attempt: u8,
        sends: Vec<PendingSend>,
    },
    Directory {
        host: PeerId,
        ops: Vec<DirOp>,
    },
    Lookup {
        id: String,
        host: PeerId,
    },
    Join {
        host: PeerId,
    },
    Leave,
    Resync,
    Beats {
        host: PeerId,
        /// The digest sent was compact.
        compact: bool,
    },
    Records,
    /// A join sent to a host that refused us as a non-member.
    Introduce {
        host: PeerId,
    },
    /// A lookup of a registration check (see `ownership`).
    RegCheck {
        check: u64,
    },
    /// A bundle of relayed requests sent to `via` (ours, or others' this
    /// host forwards): one slot per request.
    RelayBundle {
        via: PeerId,
        slots: Vec<crate::core::relay::Slot>,
    },
    /// One host's part of a broadcast of ours.
    Broadcast {
        id: u64,
        host: PeerId,
    },
    /// A publish handed to a host of a queue group.
    Queue {
        id: u64,
        host: PeerId,
    },
}

impl Pending {
    /// The host the request went to, where the pending request names it.
    fn host(&self) -> Option<PeerId> {
        match self {
            Pending::Deliver { host, .. }
            | Pending::Directory { host, .. }
            | Pending::Lookup { host, .. }
            | Pending::Beats { host, .. }
            | Pending::Broadcast { host, .. }
            | Pending::Queue { host, .. } => Some(*host),
            _ => None,
        }
    }
}

/// The loop's state. Fields are grouped by the file that uses them.
pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    replication: usize,
    requests: HashMap<ReqKey, Pending>,
    listens: HashMap<
        libp2p::core::transport::ListenerId,
        oneshot::Sender<Result<Vec<Multiaddr>, ListenError>>,
    >,
    /// Every listener opened, removed when the loop ends (the memory
    /// transport frees its port only on removal).
    listener_ids: Vec<libp2p::core::transport::ListenerId>,

    // messaging (host-keyed maps on the send path use foldhash, seeded per
    // map: SipHash over an 80-byte host id per send showed in profiles)
    /// Sends by destination host, and which path each queue takes.
    messaging: crate::core::messaging::Messaging,
    /// The last batches each sending host delivered here, by stream or by
    /// request (shared with the delivery stream readers), with their acks.
    batches: Arc<Mutex<BatchMemory>>,
    /// Link tasks of the delivery streams, by destination host.
    stream_links: foldhash::HashMap<PeerId, crate::delivery::outbound::LinkHandle>,
    /// What the delivery tasks share.
    delivery: crate::delivery::TaskContext,
    /// Reports of the delivery tasks.
    task_events: mpsc::Receiver<crate::delivery::TaskEvent>,
    /// The tasks accepting delivery streams, request streams and
    /// request-response exchanges (they own their readers).
    acceptors: Vec<tokio::task::JoinHandle<()>>,
    /// Request stream client tasks, by destination host.
    request_clients: foldhash::HashMap<PeerId, crate::rpc_stream::client::ClientHandle>,
    /// What the request stream tasks share.
    request_streams: crate::rpc_stream::RpcContext,
    /// Answers and inbound requests of the request streams.
    rpc_events: mpsc::Receiver<crate::rpc_stream::RpcEvent>,
    /// Id of the next request sent on a request stream.
    next_stream_request: u64,

    // lookup
    store: DirectoryStore,
    /// Where peers live as the directory said, and where senders claimed
    /// to live (a send to such a sender asks the holders first and goes
    /// there only when they do not know it: an entry still on its way).
    locations: crate::core::locations::Locations,
    lookups: crate::core::lookup::Lookups<lookup::Waiter>,
    kad_lookups: HashMap<libp2p::kad::QueryId, String>,
    /// Directory operations on their way to the holders.
    registration: Registration,
    /// Addresses put in our record instead of the listen addresses.
    advertise: Vec<libp2p::Multiaddr>,
    /// Something waits for the next tick: it comes after [`FAST_TICK`],
    /// not [`SLOW_TICK`].
    wake_soon: bool,

    // members
    /// Membership and liveness: the records, leases and heartbeat digests.
    members: Members,
    joins: HashMap<ConnectionId, members::JoinState>,
    /// Joined hosts and lapsed members to dial again.
    redials: Redials,
    closing: Option<members::Closing>,

    // channels
    /// Subscriptions by pattern (a channel name is a pattern that matches
    /// itself), and the gossipsub topics they need.
    subs: crate::core::subscriptions::Subscriptions<SubSink>,
    /// Channel publishes waiting for the mesh or to be batched, and which
    /// channels' meshes are ready (forgotten when membership or links change).
    publishes: crate::core::publish::Publishes<channels::PublishReply>,

    // budget
    /// When each connected host was last sent or asked something.
    budget: crate::core::budget::LinkBudget,
    /// Hosts that joined the network through this one: their links stay,
    /// as the links to the hosts this one joined do.
    joiners: std::collections::HashSet<PeerId>,

    // relay
    overlay: crate::core::neighbours::Neighbours,
    relays: crate::core::relay::Relays<crate::rpc_stream::Reply>,

    // ownership
    ownership: crate::core::ownership::Ownership<ownership::CheckReply>,

    // broadcast
    broadcasts: crate::core::broadcasts::Broadcasts<broadcast::BroadcastReply>,
    // queues
    queues: crate::core::queue_groups::QueueGroups<SubSink, queues::QueueReply>,
    /// The membership version last copied to the shared member set.
    members_version: u64,
    /// The membership's records version the publish lane's queue group
    /// patterns were last taken from.
    records_version: u64,
    /// The `Shared::config_changes` this loop has applied.
    config_seen: u64,
    /// Big joins whose signatures are being checked off the loop.
    join_checks: members::JoinChecks,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        key: Keypair,
        (opener, inbound): crate::behaviour::StreamEnds,
        ((req_opener, req_inbound), exchanges): (
            crate::behaviour::StreamEnds,
            (
                mpsc::Receiver<(PeerId, libp2p::Stream)>,
                crate::rpc_stream::server::Refusals,
            ),
        ),
    ) -> Self {
        let cfg = shared.config();
        let mut swarm = swarm;
        for a in &cfg.advertise {
            // Identify reports these, so a host that connects learns them.
            swarm.add_external_address(a.clone());
        }
        let epoch = shared.epoch;
        let local = shared.local;
        let cache_cap = NonZeroUsize::new(cfg.location_cache_capacity).unwrap_or(NonZeroUsize::MIN);
        let (events_tx, task_events) = mpsc::channel(TASK_EVENTS);
        let delivery = crate::delivery::TaskContext {
            opener,
            shared: shared.clone(),
            events: events_tx,
            epoch,
            next_batch: Default::default(),
        };
        let batches = Arc::new(Mutex::new(BatchMemory::new(
            2 * crate::delivery::WINDOW,
            crate::core::batch_memory::REMEMBERED_SENDERS,
        )));
        let acceptor =
            crate::delivery::inbound::spawn_acceptor(inbound, delivery.clone(), batches.clone());
        let (rpc_tx, rpc_events) = mpsc::channel(TASK_EVENTS);
        let request_streams = crate::rpc_stream::RpcContext {
            opener: req_opener,
            shared: shared.clone(),
            events: rpc_tx,
        };
        let acceptors = vec![
            acceptor,
            crate::rpc_stream::server::spawn_acceptor(req_inbound, request_streams.clone()),
            crate::rpc_stream::server::spawn_exchange_acceptor(exchanges, request_streams.clone()),
        ];
        let mut this = EventLoop {
            swarm,
            commands,
            members: Members::new(
                key.clone(),
                epoch,
                Self::member_settings(&shared),
                Instant::now(),
            ),
            replication: cfg.replication,
            requests: HashMap::new(),
            listens: HashMap::new(),
            listener_ids: Vec::new(),
            messaging: Default::default(),
            batches,
            stream_links: Default::default(),
            delivery,
            task_events,
            acceptors,
            request_clients: Default::default(),
            request_streams,
            rpc_events,
            next_stream_request: 0,
            store: DirectoryStore::new(
                cfg.max_directory_entries,
                cfg.max_directory_entries_per_host,
            ),
            locations: crate::core::locations::Locations::new(cache_cap, cache_cap.min(CLAIMS)),
            lookups: Default::default(),
            kad_lookups: HashMap::new(),
            registration: Registration::new(
                local,
                cfg.replication,
                &[(crate::directory::host_key(&local), local)],
            ),
            wake_soon: false,
            advertise: cfg.advertise.clone(),
            joins: HashMap::new(),
            redials: Redials::default(),
            closing: None,
            subs: Default::default(),
            publishes: Default::default(),
            budget: crate::core::budget::LinkBudget::new(Instant::now()),
            joiners: Default::default(),
            overlay: Default::default(),
            relays: crate::core::relay::Relays::new(key),
            ownership: Default::default(),
            broadcasts: Default::default(),
            queues: Default::default(),
            members_version: u64::MAX,
            records_version: u64::MAX,
            config_seen: 0,
            join_checks: Default::default(),
            shared,
        };
        // The advertised addresses, if configured, from the first record on.
        let content = this.record_content();
        this.members.describe(content);
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
        let tick = tokio::time::sleep(FAST_TICK);
        tokio::pin!(tick);
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
                Some(ev) = self.task_events.recv() => {
                    self.on_task_event(ev);
                    self.take_task_events();
                }
                Some(ev) = self.rpc_events.recv() => {
                    self.on_rpc_event(ev);
                    for _ in 0..COMMAND_BATCH {
                        match self.rpc_events.try_recv() {
                            Ok(ev) => self.on_rpc_event(ev),
                            Err(_) => break,
                        }
                    }
                }
                _ = self.shared.changes_ready.notified() => self.flush_directory(),
                _ = self.shared.publish_lane.ready.notified() => self.take_publish_lane(),
                Some(checked) = self.join_checks.done.recv() => self.on_join_checked(checked),
                _ = &mut tick => {
                    self.wake_soon = false;
                    self.on_tick();
                    let next = if self.wake_soon { FAST_TICK } else { SLOW_TICK };
                    let now = Instant::now();
                    let beat = self.members.next_beat().saturating_duration_since(now);
                    tick.as_mut().reset(tokio::time::Instant::from_std(now + next.min(beat)));
                }
            }
            self.flush_dirty_links();
            self.flush_dirty_relays();
            if !self.publishes.is_empty() {
                self.retry_parked();
            }
            if self.wake_soon {
                let soon = tokio::time::Instant::now() + FAST_TICK;
                if tick.deadline() > soon {
                    tick.as_mut().reset(soon);
                }
            }
            self.publish_gauges();
            if self.closing.as_ref().is_some_and(|c| c.done()) {
                break;
            }
        }
        self.finish_close();
        for a in self.acceptors.drain(..) {
            a.abort();
        }
        for id in std::mem::take(&mut self.listener_ids) {
            self.swarm.remove_listener(id);
        }
        tracing::debug!("event loop ended");
    }

    /// Copies the sizes of loop-owned state into the shared counters, and
    /// the membership into the shared member set when it changed.
    fn publish_gauges(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.publish_members();
        let c = &self.shared.counters;
        c.directory_entries.store(self.store.len() as u64, Relaxed);
        c.directory_refused.store(self.store.refused(), Relaxed);
        c.hosts
            .store(self.members.membership().len() as u64, Relaxed);
        c.connected
            .store(self.swarm.connected_peers().count() as u64, Relaxed);
    }

    /// Copies the membership into the shared member set if it changed:
    /// before any answer goes out, so that a host that has just been
    /// answered its join finds its delivery batches taken.
    fn publish_members(&mut self) {
        if self.records_version != self.members.membership().records_version() {
            self.records_version = self.members.membership().records_version();
            self.publish_queue_patterns();
        }
        if self.members_version != self.members.membership().version() {
            self.members_version = self.members.membership().version();
            let set = self
                .members
                .membership()
                .keys()
                .iter()
                .map(|(_, h)| *h)
                .collect();
            *self
                .shared
                .members
                .write()
                .unwrap_or_else(|p| p.into_inner()) = set;
        }
    }

    fn local(&self) -> PeerId {
        self.shared.local
    }

    /// Sends a request to `host`, first dialling it at the addresses of its
    /// membership record if not connected (the swarm's own address sources,
    /// kad's buckets and identify's cache, do not hold every member).
    /// In a big network it may go through a relay (see `relay`).
    fn request(&mut self, host: PeerId, req: crate::protocol::Request) -> ReqKey {
        let liveness = req.is_liveness();
        if !liveness {
            self.touch(host);
        }
        let via = if req.is_relayable() {
            self.next_hop(host)
        } else {
            host
        };
        if via != host {
            if let Some(key) = self.relay_own(via, host, &req) {
                return key;
            }
        }
        self.dial_member(host);
        self.send_request(host, req)
    }

    /// Sends a request to `host` as it is: on its request stream if
    /// connected, else (or when the stream's queue is full) by
    /// request-response, which dials.
    fn send_request(&mut self, host: PeerId, req: crate::protocol::Request) -> ReqKey {
        crate::shared::bump(&self.shared.counters.requests_sent);
        let mut req = req;
        if req.uses_streams() && self.swarm.is_connected(&host) {
            let id = self.next_stream_request;
            self.next_stream_request += 1;
            use std::collections::hash_map::Entry;
            let spawn = || {
                crate::rpc_stream::client::ClientHandle::spawn(host, self.request_streams.clone())
            };
            let client = match self.request_clients.entry(host) {
                Entry::Occupied(mut e) => {
                    if e.get().ended() {
                        e.insert(spawn());
                    }
                    e.into_mut()
                }
                Entry::Vacant(e) => e.insert(spawn()),
            };
            match client.send(id, req) {
                Ok(()) => {
                    crate::shared::bump(&self.shared.counters.stream_requests);
                    return ReqKey::Stream(id);
                }
                Err(back) => req = back,
            }
        }
        ReqKey::Rr(self.swarm.behaviour_mut().rpc.send_request(&host, req))
    }

    /// An answer or an inbound request from the request streams.
    fn on_rpc_event(&mut self, ev: crate::rpc_stream::RpcEvent) {
        self.sync_config();
        use crate::rpc_stream::RpcEvent;
        match ev {
            RpcEvent::Answer { id, result } => {
                if let Some(p) = self.requests.remove(&ReqKey::Stream(id)) {
                    self.on_response(p, result);
                }
            }
            RpcEvent::Request {
                host,
                request,
                reply,
            } => self.on_inbound_request(host, request, reply),
        }
    }

    /// A request from `peer`, by request-response or on a request stream.
    fn on_inbound_request(
        &mut self,
        peer: PeerId,
        request: crate::protocol::Request,
        responder: Reply,
    ) {
        use crate::protocol::{Request, Response, NOT_ALLOWED, NOT_MEMBER};
        if !self.members.allowed(&peer) {
            crate::shared::bump(&self.shared.counters.refused_non_members);
            tracing::debug!(%peer, "refused a request of a host not on the allow-list");
            self.answer(peer, responder, Response::Refused(NOT_ALLOWED.into()));
            return;
        }
        // Only a join is served to a host that is not a member.
        if !matches!(request, Request::Join(_)) && !self.members.membership().contains(&peer) {
            crate::shared::bump(&self.shared.counters.refused_non_members);
            tracing::debug!(%peer, "refused a request of a host that is not a member");
            self.answer(peer, responder, Response::Refused(NOT_MEMBER.into()));
            return;
        }
        if !request.is_liveness() {
            self.touch(peer);
        }
        let request = match request {
            Request::Relay(items) => {
                self.on_relay(peer, items, responder);
                return;
            }
            Request::Join(records) if records.len() > members::INLINE_RECORDS => {
                self.check_join_off_loop(peer, records, responder);
                return;
            }
            other => other,
        };
        let response = self.on_request(peer, request);
        self.publish_members();
        self.answer(peer, responder, response);
    }

    /// Dials a member at its record's addresses unless connected or dialling.
    /// A failed dial fails the requests waiting for it, which say why.
    fn dial_member(&mut self, host: PeerId) {
        if self.swarm.is_connected(&host) {
            return;
        }
        let addrs = self
            .members
            .membership()
            .get(&host)
            .map(|m| m.addrs.clone())
            .unwrap_or_default();
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(host)
            .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .build();
        match self.dial(opts) {
            Ok(()) => tracing::trace!(%host, "dialling a member"),
            Err(e) => tracing::trace!(%host, error = %e, "not dialled"),
        }
    }

    /// Dials, letting the dial through the gate (see `dial_gate`): every
    /// dial of the loop's own goes through here.
    fn dial(
        &mut self,
        opts: libp2p::swarm::dial_opts::DialOpts,
    ) -> std::result::Result<(), libp2p::swarm::DialError> {
        let id = opts.connection_id();
        self.swarm.behaviour_mut().gate.allow(id);
        let r = self.swarm.dial(opts);
        if r.is_err() {
            self.swarm.behaviour_mut().gate.forget(id);
        }
        r
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
            Command::Send(p) => self.send(p),
            Command::Find { id, reply } => self.find(id, reply),
            Command::Subscribe {
                channel,
                group: None,
                sink,
                reply,
            } => {
                let _ = reply.send(self.subscribe(channel, sink));
            }
            Command::Subscribe {
                channel,
                group: Some(group),
                sink,
                reply,
            } => {
                let _ = reply.send(self.subscribe_queue(channel, group, sink));
            }
            Command::Unsubscribe {
                channel,
                group: None,
                id,
            } => self.unsubscribe(&channel, id),
            Command::Unsubscribe {
                channel,
                group: Some(group),
                id,
            } => self.unsubscribe_queue(channel, group, id),
            Command::Publish {
                channel,
                payload,
                reply,
            } => self.publish(channel, payload, reply),
            Command::Broadcast {
                from,
                to,
                payload,
                reply,
            } => self.start_broadcast(from, to, payload, reply),
            Command::Members { reply } => {
                let _ = reply.send(self.members_info());
            }
            Command::Readiness { reply } => {
                let _ = reply.send(self.readiness());
            }
            Command::Registration { id, reply } => self.check_registration(id, reply),
            Command::CachedLocation { id, reply } => {
                let _ = reply.send(self.locations.peek(id.as_str()));
            }
            Command::Close { reply } => self.start_close(reply),
        }
    }

    fn listen(
        &mut self,
        addr: Multiaddr,
        reply: oneshot::Sender<Result<Vec<Multiaddr>, ListenError>>,
    ) {
        if let Some(reason) = crate::behaviour::busy_tcp_port(&addr) {
            let _ = reply.send(Err(ListenError::Listen {
                addr: addr.to_string(),
                source: crate::Cause::msg(reason),
            }));
            return;
        }
        match self.swarm.listen_on(addr.clone()) {
            Ok(id) => {
                self.listener_ids.push(id);
                self.listens.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(ListenError::Listen {
                    addr: addr.to_string(),
                    source: transport_cause(e),
                }));
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.sync_config();
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
                    let _ = reply.send(Err(ListenError::Listen {
                        addr: format!("{addresses:?}"),
                        source: match reason {
                            Ok(()) => crate::Cause::msg("listener closed"),
                            Err(e) => crate::Cause::new(e),
                        },
                    }));
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(reply) = self.listens.remove(&listener_id) {
                    let _ = reply.send(Err(ListenError::Listen {
                        addr: String::new(),
                        source: crate::Cause::new(error),
                    }));
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            } => {
                crate::shared::bump(&self.shared.counters.connections_opened);
                // A new link gets a grace before the budget may close it.
                self.touch_new(peer_id);
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
                    self.publishes.unready();
                    self.on_disconnected(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => self.on_dial_failed(connection_id, peer_id, error),
            other => tracing::trace!(event = ?other, "swarm event"),
        }
    }

    fn on_rpc(
        &mut self,
        ev: request_response::Event<crate::protocol::Request, crate::protocol::Response>,
    ) {
        use request_response::{Event, Message};
        match ev {
            // Inbound exchanges are served by the exchange acceptor; this
            // behaviour only requests.
            Event::Message {
                peer,
                message: Message::Request { .. },
                ..
            } => tracing::debug!(%peer, "request-response request on the requesting side"),
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(p) = self.requests.remove(&ReqKey::Rr(request_id)) {
                    self.on_response(p, Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(p) = self.requests.remove(&ReqKey::Rr(request_id)) {
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
            Request::Deliver { epoch, batch, envs } => {
                self.deliver_inbound(peer, (epoch, batch), envs)
            }
            Request::Directory { epoch, ops } => {
                // A cached location this holder sees withdrawn is stale.
                for op in &ops {
                    if let crate::directory::DirOp::Withdraw(id) = op {
                        self.locations.not_on(id, peer);
                        self.shared.finds.forget(id);
                    }
                }
                let applied = self.store.apply(peer, epoch, ops);
                Response::DirectoryApplied {
                    conflicts: applied
                        .conflicts
                        .into_iter()
                        .map(|(id, h)| (id.to_string(), h.to_bytes()))
                        .collect(),
                    full: applied.full,
                }
            }
            Request::Lookup(id) => self.answer_lookup(&id),
            Request::Join(records) => self.on_join_request(peer, records),
            Request::Leave(record) => self.on_leave_request(peer, record),
            Request::Resync => {
                self.resync_holder(peer);
                Response::DirectoryOk
            }
            Request::Beats(beats) => self.on_beats(peer, beats),
            Request::Records(records) => {
                self.on_records(records);
                Response::RecordsOk
            }
            Request::Relay(_) => Response::RelayFailed("relayed twice".into()),
            Request::Broadcast {
                id,
                from,
                to,
                payload,
            } => self.on_broadcast_request(peer, id, from, to, payload),
            Request::Queue {
                channel,
                pattern,
                group,
                payload,
            } => self.on_queue_request(channel, pattern, group, payload),
        }
    }

    fn on_response(
        &mut self,
        pending: Pending,
        result: std::result::Result<crate::protocol::Response, request_response::OutboundFailure>,
    ) {
        if let Ok(crate::protocol::Response::Refused(why)) = &result {
            if why == crate::protocol::NOT_MEMBER {
                if let Some(host) = pending.host() {
                    self.introduce(host);
                }
            }
        }
        match pending {
            Pending::Deliver {
                host,
                batch,
                attempt,
                sends,
            } => self.on_deliver_result(host, (batch, attempt), sends, result),
            Pending::Directory { host, ops } => self.on_directory_result(host, ops, result),
            Pending::Lookup { id, host } => self.on_lookup_result(id, host, result),
            Pending::Join { host } => self.on_join_result(host, result),
            Pending::Introduce { host } => self.on_introduced(host, result),
            Pending::Resync | Pending::Records => {}
            Pending::RegCheck { check } => self.on_reg_check_result(check, result),
            Pending::RelayBundle { via, slots } => self.on_bundle_result(via, slots, result),
            Pending::Beats { host, compact } => self.on_beats_result(host, compact, result),
            Pending::Broadcast { id, host } => self.on_broadcast_result(id, host, result),
            Pending::Queue { id, .. } => self.on_queue_result(id, result),
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

    /// Takes a changed configuration (an atomic load when unchanged): the
    /// membership's settings and allow-list apply from the next event on.
    fn sync_config(&mut self) {
        let changes = self
            .shared
            .config_changes
            .load(std::sync::atomic::Ordering::Relaxed);
        if changes != self.config_seen {
            self.config_seen = changes;
            self.reconfigure_members();
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.sync_config();
        if self.beat(now, SLOW_TICK) {
            self.keep_neighbours(now);
            // Once a beat, not every tick: an ended client is replaced when
            // next used anyway, and this only bounds the map.
            self.request_clients.retain(|_, c| !c.ended());
        }
        self.refresh_overlay(now);
        self.redial(now);
        self.trim_links(now);
        self.retry_links();
        self.flush_directory();
        self.rebalance(now);
        self.retry_directory(now);
        self.retry_parked();
        self.retry_contests(now);
        self.recheck_parked(now);
        self.expire_joins(now);
        if let Some(c) = self.closing.as_mut() {
            if now >= c.deadline {
                c.outstanding = 0;
            }
        }
    }
}

/// A readable reason from a transport error.
fn transport_cause<E: std::error::Error + Send + Sync + 'static>(
    e: libp2p::TransportError<E>,
) -> crate::Cause {
    match e {
        libp2p::TransportError::MultiaddrNotSupported(a) => crate::Cause::msg(format!(
            "address {a} is not supported by this host's transports"
        )),
        libp2p::TransportError::Other(e) => crate::Cause::new(e),
    }
}
