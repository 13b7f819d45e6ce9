//! The event loop: one task per host owns the libp2p swarm and all state that
//! is not shared, and serves the handles' commands.
//!
//! This file holds the loop's state and its `select!`, fair over commands,
//! swarm events, local directory changes and a short tick. Three files
//! translate between the outside and the concerns:
//! - `commands`: each command of the handles to the concern that serves it;
//! - `swarm`: the swarm's events to the concerns, listening and dialling;
//! - `requests`: requests to other hosts (a request stream,
//!   request-response or a relay) and the dispatch of inbound requests and
//!   answers, after the membership check every inbound request passes.
//!
//! The rest is split by concern; each file adds methods to [`EventLoop`]
//! that feed a machine of [`crate::core`] and carry out what it returns:
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
mod commands;
mod lookup;
mod members;
pub(crate) mod messaging;
pub(crate) mod ownership;
mod queues;
mod registration;
mod relay;
mod requests;
mod swarm;

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{identity::Keypair, swarm::ConnectionId, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use self::requests::{Pending, ReqKey};
use crate::{
    behaviour::Behaviour,
    command::{Command, SubSink},
    core::{
        batch_memory::BatchMemory, members::Members, redial::Redials, registration::Registration,
    },
    directory::DirectoryStore,
    error::ListenError,
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
        c.relay_held_bytes
            .store(self.relays.held_bytes() as u64, Relaxed);
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
