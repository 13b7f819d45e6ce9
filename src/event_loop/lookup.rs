//! The directory's network side: registration batches to the holders, the
//! rebalancing that follows membership changes, and one-hop lookups.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use libp2p::{request_response::OutboundFailure, PeerId};
use tokio::sync::oneshot;

use super::{messaging::PendingSend, EventLoop, Pending};
use crate::{
    command::Location,
    directory::{closest, closest_indices, key_of, DirOp},
    error::{Error, Result},
    protocol::{Request, Response, WireLocation},
    shared::bump,
};

/// Most operations in one directory request.
const MAX_DIR_BATCH: usize = 65_536;
/// After a directory flush, changes gather this long before the next one.
const DIR_GATHER: Duration = Duration::from_millis(10);
/// Wait before resending directory operations that failed.
const DIR_RETRY: Duration = Duration::from_millis(500);
/// Most directory requests in flight from one host, over all holders: a
/// burst of creates in a network of hundreds of hosts does not put a
/// request to every holder on the wire at once, and the queues behind keep
/// gathering, so later batches are larger. In a relaying network the
/// requests to one group travel in one bundle through its contact, so the
/// cap must leave room for every holder's: at 64, bundles held one or two
/// requests and 512 × 1M registration took 80 s; at 256 (half the holders
/// of a 512-host network in the first wave, the rest trickling out as
/// answers came back) 40 s; at 1,024, 34 s.
const MAX_DIR_IN_FLIGHT: usize = 1024;

/// Directory operations waiting for one holder.
#[derive(Debug, Default)]
pub(crate) struct DirLink {
    queue: VecDeque<DirOp>,
    in_flight: bool,
    retry_at: Option<Instant>,
}

/// Who waits for a lookup.
#[derive(Debug)]
pub(crate) enum Waiter {
    Send(PendingSend),
    Find(oneshot::Sender<Result<Location>>),
}

/// A lookup in progress: the holders left to ask, and who waits.
#[derive(Debug)]
pub(crate) struct LookupState {
    candidates: VecDeque<PeerId>,
    waiters: Vec<Waiter>,
    round_trips: u64,
    /// Holders asked so far.
    asked: Vec<PeerId>,
    /// Kademlia fallback: 0 not used, 1 routing table asked, 2 query ran.
    kad_stage: u8,
    /// Addresses the answering holder gave for the host found.
    found_addrs: Vec<libp2p::Multiaddr>,
    started: std::time::Instant,
}

impl EventLoop {
    /// Sends the local creates and removes to their holders. Right after a
    /// flush, new changes gather until the next tick, so a burst of creates
    /// becomes a few large batches rather than many small requests.
    pub(super) fn flush_directory(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_dir_flush) < DIR_GATHER {
            // The changes gather until a tick soon.
            self.wake_soon = true;
            return;
        }
        self.last_dir_flush = now;
        let changes = self.shared.take_changes();
        if changes.is_empty() {
            return;
        }
        let keys = self.membership.keys();
        // Operations per holder (by index into `keys`), then one queue
        // append per holder: no host id is hashed or copied per operation.
        let mut per_holder: Vec<Vec<DirOp>> = vec![Vec::new(); keys.len()];
        let mut best = Vec::with_capacity(self.replication + 1);
        for c in changes {
            closest_indices(keys, c.key, self.replication, &mut best);
            let op = if c.register {
                DirOp::Register(c.id)
            } else {
                DirOp::Withdraw(c.id)
            };
            for &(_, i) in &best {
                per_holder[i as usize].push(op.clone());
            }
        }
        let batches: Vec<(PeerId, Vec<DirOp>)> = per_holder
            .into_iter()
            .enumerate()
            .filter(|(_, ops)| !ops.is_empty())
            .map(|(i, ops)| (keys[i].1, ops))
            .collect();
        for (holder, ops) in batches {
            self.send_dir_ops(holder, ops);
        }
    }

    /// Gives `holder` these operations: applied at once if it is this
    /// host, else queued behind what waits for it and sent when it can.
    pub(super) fn send_dir_ops(&mut self, holder: PeerId, ops: Vec<DirOp>) {
        if holder == self.local() {
            let applied = self.store.apply(holder, self.epoch, ops);
            if !applied.conflicts.is_empty() {
                self.on_conflicts(applied.conflicts);
            }
        } else {
            self.dir_links.entry(holder).or_default().queue.extend(ops);
            self.flush_dir_link(holder);
        }
    }

    fn flush_dir_link(&mut self, holder: PeerId) {
        let Some(link) = self.dir_links.get_mut(&holder) else {
            return;
        };
        if link.in_flight || link.queue.is_empty() {
            return;
        }
        if link.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if self.dir_in_flight >= MAX_DIR_IN_FLIGHT {
            self.dir_waiting = true;
            return;
        }
        self.dir_in_flight += 1;
        crate::shared::bump(&self.shared.counters.directory_batches);
        let n = link.queue.len().min(MAX_DIR_BATCH);
        let ops: Vec<DirOp> = link.queue.drain(..n).collect();
        link.in_flight = true;
        link.retry_at = None;
        let id = self.request(
            holder,
            Request::Directory {
                epoch: self.epoch,
                ops: ops.clone(),
            },
        );
        self.requests
            .insert(id, Pending::Directory { host: holder, ops });
    }

    pub(super) fn on_directory_result(
        &mut self,
        holder: PeerId,
        ops: Vec<DirOp>,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        self.dir_in_flight = self.dir_in_flight.saturating_sub(1);
        if std::mem::take(&mut self.dir_waiting) {
            self.flush_waiting_dir_links(holder);
        }
        let still_member = self.membership.contains(&holder);
        if let Ok(Response::DirectoryApplied { conflicts, full }) = &result {
            if *full > 0 {
                tracing::warn!(%holder, refused = full, "a holder's directory is full");
                self.shared
                    .counters
                    .registrations_refused
                    .fetch_add(u64::from(*full), std::sync::atomic::Ordering::Relaxed);
            }
            let conflicts: Vec<(Arc<str>, PeerId)> = conflicts
                .iter()
                .filter_map(|(id, h)| Some((Arc::from(id.as_str()), PeerId::from_bytes(h).ok()?)))
                .collect();
            if !conflicts.is_empty() {
                self.on_conflicts(conflicts);
            }
        }
        let Some(link) = self.dir_links.get_mut(&holder) else {
            return;
        };
        link.in_flight = false;
        match result {
            Ok(Response::DirectoryOk | Response::DirectoryApplied { .. }) => {}
            other => {
                tracing::debug!(%holder, result = ?other.err(), "directory batch failed");
                if still_member {
                    for op in ops.into_iter().rev() {
                        link.queue.push_front(op);
                    }
                    link.retry_at = Some(Instant::now() + DIR_RETRY);
                    return;
                }
            }
        }
        if still_member && !link.queue.is_empty() {
            self.flush_dir_link(holder);
        } else {
            self.dir_links.remove(&holder);
        }
    }

    /// Sends the batches that waited for a free slot (not `except`'s, which
    /// its caller handles).
    fn flush_waiting_dir_links(&mut self, except: PeerId) {
        let now = Instant::now();
        let waiting: Vec<PeerId> = self
            .dir_links
            .iter()
            .filter(|(h, l)| {
                **h != except
                    && !l.in_flight
                    && !l.queue.is_empty()
                    && l.retry_at.is_none_or(|t| t <= now)
            })
            .map(|(h, _)| *h)
            .collect();
        for h in waiting {
            self.flush_dir_link(h);
        }
    }

    /// Resends directory batches whose retry time has come.
    pub(super) fn retry_directory(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .dir_links
            .iter()
            .filter(|(_, l)| !l.in_flight && l.retry_at.is_some_and(|t| t <= now))
            .map(|(h, _)| *h)
            .collect();
        for h in due {
            if !self.membership.contains(&h) {
                self.dir_links.remove(&h);
                continue;
            }
            self.flush_dir_link(h);
        }
    }

    /// After the membership changed: register every local peer with the
    /// holders that became responsible for it, and schedule dropping the
    /// entries this host is no longer responsible for.
    pub(super) fn rebalance(&mut self) {
        // Checked every tick: compare versions, not the key lists (O(hosts)).
        if self.rebalanced_version == self.membership.version() {
            return;
        }
        self.rebalanced_version = self.membership.version();
        if self.rebalanced.as_slice() == self.membership.keys() {
            return;
        }
        // Give the owners of entries time to register with their new holders
        // (they learn of the change by the same gossip) before trimming.
        let settle = self.shared.with_config(|c| c.heartbeat_interval) * 2;
        self.trim_due = Some(Instant::now() + settle);
        let old = std::mem::replace(&mut self.rebalanced, self.membership.keys().to_vec());
        let new = &self.rebalanced;
        let r = self.replication;
        let mut moves: HashMap<PeerId, Vec<DirOp>> = HashMap::new();
        self.shared.registry.for_each(|id, key| {
            let before = closest(&old, key, r);
            for h in closest(new, key, r) {
                if !before.contains(&h) {
                    moves
                        .entry(h)
                        .or_default()
                        .push(DirOp::Register(id.clone()));
                }
            }
        });
        for (holder, ops) in moves {
            self.send_dir_ops(holder, ops);
        }
    }

    /// A holder dropped this host's entries at a false lapse: register with
    /// it again every local peer it is among the closest hosts for.
    pub(super) fn resync_holder(&mut self, holder: PeerId) {
        if !self.membership.contains(&holder) {
            return;
        }
        let (keys, r) = (self.membership.keys(), self.replication);
        let Some(target) = keys.iter().position(|(_, h)| *h == holder) else {
            return;
        };
        let mut ops = Vec::new();
        let mut best = Vec::with_capacity(r + 1);
        self.shared.registry.for_each(|id, key| {
            closest_indices(keys, key, r, &mut best);
            if best.iter().any(|&(_, i)| i as usize == target) {
                ops.push(DirOp::Register(id.clone()));
            }
        });
        tracing::info!(%holder, entries = ops.len(), "registering again with a holder that had dropped us");
        self.send_dir_ops(holder, ops);
    }

    /// Drops held entries whose closest hosts no longer include this one,
    /// once the membership has settled: entries move with the membership.
    pub(super) fn trim_directory(&mut self, now: Instant) {
        if self.trim_due.is_none_or(|t| t > now) {
            return;
        }
        self.trim_due = None;
        let (keys, r, local) = (self.membership.keys(), self.replication, self.shared.local);
        if keys.len() <= r {
            return; // every host holds everything
        }
        let Some(me) = keys.iter().position(|(_, h)| *h == local) else {
            return;
        };
        let before = self.store.len();
        let mut best = Vec::with_capacity(r + 1);
        self.store.retain(|id| {
            closest_indices(keys, key_of(id.as_bytes()), r, &mut best);
            best.iter().any(|&(_, i)| i as usize == me)
        });
        tracing::debug!(
            dropped = before - self.store.len(),
            "trimmed directory after a membership change"
        );
    }

    /// `find`: where does this peer live? Asks the holders, not the
    /// cache: the cache serves sends, whose failures correct it, while a
    /// find must not report a peer where it no longer is.
    pub(super) fn find(&mut self, id: String, reply: oneshot::Sender<Result<Location>>) {
        if self.shared.registry.get(&id).is_some() && !self.ownership.is_contested(&id) {
            let _ = reply.send(Ok(self.location_of(self.local())));
            return;
        }
        self.start_lookup(id, Waiter::Find(reply));
    }

    /// Resolves a send's recipient, ignoring the cache.
    pub(super) fn resolve_for_send(&mut self, p: PendingSend) {
        let id = p.env.to.to_string();
        self.start_lookup(id, Waiter::Send(p));
    }

    fn start_lookup(&mut self, id: String, waiter: Waiter) {
        if let Some(l) = self.lookups.get_mut(&id) {
            l.waiters.push(waiter);
            return;
        }
        let mut candidates = closest(
            self.membership.keys(),
            key_of(id.as_bytes()),
            self.replication,
        );
        // Every holder has the entry: ask first those reachable in one hop.
        candidates.sort_by_key(|h| self.next_hop(*h) != *h);
        self.lookups.insert(
            id.clone(),
            LookupState {
                candidates: candidates.into(),
                waiters: vec![waiter],
                round_trips: 0,
                asked: Vec::new(),
                kad_stage: 0,
                found_addrs: Vec::new(),
                started: std::time::Instant::now(),
            },
        );
        self.lookup_step(id);
    }

    /// Asks the next holder, or ends the lookup.
    fn lookup_step(&mut self, id: String) {
        loop {
            let Some(state) = self.lookups.get_mut(&id) else {
                return;
            };
            let Some(holder) = state.candidates.pop_front() else {
                // The holders in our view do not know the id (our view may
                // differ from the registering host's, e.g. mid-rebalance):
                // ask the other members in Kademlia's routing table, closest
                // to the id first, then those Kademlia's iterative query
                // finds. Only members are asked (see `on_lookup_result`).
                let stage = state.kad_stage;
                let asked = std::mem::take(&mut state.asked);
                if stage == 0 {
                    let mut table = self.kad_table_by_distance(key_of(id.as_bytes()));
                    table.retain(|h| self.membership.contains(h) && !asked.contains(h));
                    if !table.is_empty() {
                        if let Some(state) = self.lookups.get_mut(&id) {
                            state.kad_stage = 1;
                            state.candidates.extend(table);
                            state.asked = asked;
                        }
                        continue;
                    }
                } else if stage == 1 {
                    if let Some(state) = self.lookups.get_mut(&id) {
                        state.kad_stage = 2;
                        state.asked = asked;
                    }
                    let q = self
                        .swarm
                        .behaviour_mut()
                        .kad
                        .get_closest_peers(id.as_bytes().to_vec());
                    self.kad_lookups.insert(q, id);
                    return;
                }
                self.complete_lookup(&id, None);
                return;
            };
            if state.asked.contains(&holder) {
                continue;
            }
            if holder != self.shared.local && !self.membership.contains(&holder) {
                // Kademlia's query may name hosts outside the membership:
                // their answers would not count, so they are not asked.
                state.asked.push(holder);
                continue;
            }
            state.asked.push(holder);
            if holder == self.shared.local {
                if let Some(host) = self.store.lookup(&id) {
                    if self.membership.contains(&host) {
                        self.complete_lookup(&id, Some(host));
                        return;
                    }
                }
                continue;
            }
            // A relayed lookup is two network round trips.
            let trips = if self.next_hop(holder) == holder {
                1
            } else {
                2
            };
            if let Some(state) = self.lookups.get_mut(&id) {
                state.round_trips += trips;
            }
            let rid = self.request(holder, Request::Lookup(id.clone()));
            self.requests
                .insert(rid, Pending::Lookup { id, host: holder });
            return;
        }
    }

    pub(super) fn on_lookup_result(
        &mut self,
        id: String,
        holder: PeerId,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        let found = match result {
            // Only a member's answer counts (it may have lapsed since it
            // was asked): anyone reachable could otherwise redirect sends.
            Ok(Response::Location(Some(w))) if self.membership.contains(&holder) => {
                PeerId::from_bytes(&w.host).ok().map(|h| (h, w.addrs))
            }
            _ => None,
        };
        match found {
            // A location outside our membership is not trusted either: a
            // member might point sends at a host nobody admitted.
            Some((host, addrs)) if self.membership.contains(&host) => {
                let addrs: Vec<libp2p::Multiaddr> = addrs
                    .into_iter()
                    .filter_map(|a| libp2p::Multiaddr::try_from(a).ok())
                    .collect();
                for a in &addrs {
                    self.swarm.add_peer_address(host, a.clone());
                }
                if let Some(l) = self.lookups.get_mut(&id) {
                    l.found_addrs = addrs;
                }
                self.complete_lookup(&id, Some(host))
            }
            _ => self.lookup_step(id),
        }
    }

    /// The hosts in Kademlia's routing table, closest to `key` first.
    fn kad_table_by_distance(&mut self, key: u64) -> Vec<PeerId> {
        let mut hosts: Vec<(u64, PeerId)> = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for e in bucket.iter() {
                let h = *e.node.key.preimage();
                hosts.push((crate::directory::host_key(&h) ^ key, h));
            }
        }
        hosts.sort_unstable_by_key(|(d, _)| *d);
        hosts.into_iter().map(|(_, h)| h).collect()
    }

    /// Kademlia's closest hosts for a lookup's id: ask them in turn.
    pub(super) fn on_kad_closest(&mut self, query: libp2p::kad::QueryId, peers: Vec<PeerId>) {
        let Some(id) = self.kad_lookups.remove(&query) else {
            return;
        };
        if let Some(state) = self.lookups.get_mut(&id) {
            tracing::debug!(%id, hosts = peers.len(), "kademlia fallback lookup");
            state.candidates.extend(peers);
        }
        self.lookup_step(id);
    }

    fn complete_lookup(&mut self, id: &str, host: Option<PeerId>) {
        let Some(state) = self.lookups.remove(id) else {
            return;
        };
        if state.round_trips > 0 {
            bump(&self.shared.counters.lookups);
            self.shared
                .counters
                .lookup_latency
                .record(state.started.elapsed());
            self.shared
                .counters
                .lookup_round_trips
                .fetch_add(state.round_trips, std::sync::atomic::Ordering::Relaxed);
        }
        let id_arc: Arc<str> = Arc::from(id);
        if let Some(h) = host {
            // A holder may still point to a host that just said "unknown
            // peer" (its withdrawal is on the way): do not cache that.
            let refused = state
                .waiters
                .iter()
                .any(|w| matches!(w, Waiter::Send(p) if p.refused_by.as_deref() == Some(&h)));
            if h != self.local() && !refused {
                self.cache.put(id_arc.clone(), h);
            }
        }
        for w in state.waiters {
            match (w, host) {
                (Waiter::Find(reply), Some(h)) => {
                    let mut loc = self.location_of(h);
                    if loc.addrs.is_empty() {
                        loc.addrs = state.found_addrs.clone();
                    }
                    loc.round_trips = u32::try_from(state.round_trips).unwrap_or(u32::MAX);
                    let _ = reply.send(Ok(loc));
                }
                (Waiter::Find(reply), None) => {
                    let _ = reply.send(Err(Error::PeerNotFound(id.to_string())));
                }
                (Waiter::Send(p), Some(h)) if p.refused_by.as_deref() != Some(&h) => {
                    if h == self.local() {
                        // Created here while the lookup ran.
                        self.send(p);
                    } else {
                        self.enqueue(h, p);
                    }
                }
                (Waiter::Send(p), None) => {
                    // Unknown to the holders: a sender that wrote from
                    // that host moments ago (its entry is on its way).
                    match self.claims.peek(id).copied() {
                        Some(h) if p.refused_by.as_deref() != Some(&h) => self.enqueue(h, p),
                        _ => {
                            let e = Error::PeerNotFound(id.to_string());
                            self.finish_send(p, Err(e));
                        }
                    }
                }
                (Waiter::Send(p), Some(_)) => {
                    let e = Error::PeerNotFound(id.to_string());
                    self.finish_send(p, Err(e));
                }
            }
        }
    }

    /// A holder's answer to a lookup.
    pub(super) fn answer_lookup(&self, id: &str) -> Response {
        let local = self.local();
        let ours = || self.shared.registry.get(id).is_some() && !self.ownership.is_contested(id);
        let host = match self.store.lookup(id) {
            // Never for a peer of ours that is gone (its withdrawal may
            // still be on its way to the other holders).
            Some(h) if h == local => ours().then_some(local),
            // The first live host to register the id, not a local duplicate.
            Some(h) => self.membership.contains(&h).then_some(h),
            None => ours().then_some(local),
        };
        Response::Location(host.map(|h| {
            let loc = self.location_of(h);
            WireLocation {
                host: h.to_bytes(),
                addrs: loc.addrs.iter().map(|a| a.to_vec()).collect(),
            }
        }))
    }

    /// The location of a host, with the addresses this host knows for it.
    pub(super) fn location_of(&self, host: PeerId) -> Location {
        let addrs = if host != self.local() {
            self.membership
                .get(&host)
                .map(|m| m.addrs.clone())
                .unwrap_or_default()
        } else if self.advertise.is_empty() {
            self.swarm.listeners().cloned().collect()
        } else {
            self.advertise.clone()
        };
        Location {
            host,
            addrs,
            round_trips: 0,
        }
    }

    /// Forgets cached and claimed locations on `host`.
    pub(super) fn forget_locations(&mut self, host: PeerId) {
        self.shared.finds.forget_host(&host);
        for map in [&mut self.cache, &mut self.claims] {
            let stale: Vec<Arc<str>> = map
                .iter()
                .filter(|(_, h)| **h == host)
                .map(|(id, _)| id.clone())
                .collect();
            for id in stale {
                map.pop(&id);
            }
        }
    }

    /// Fails every lookup (on close).
    pub(super) fn fail_all_lookups(&mut self) {
        for (_, state) in self.lookups.drain() {
            for w in state.waiters {
                match w {
                    Waiter::Send(p) => {
                        let _ = p.reply.send(Err(Error::Closed));
                    }
                    Waiter::Find(reply) => {
                        let _ = reply.send(Err(Error::Closed));
                    }
                }
            }
        }
    }
}
