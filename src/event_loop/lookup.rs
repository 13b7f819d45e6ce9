//! Lookups: one hop to the holders of an id, then Kademlia's routing table
//! and iterative query as the fallback.

use std::{collections::VecDeque, sync::Arc};

use libp2p::{request_response::OutboundFailure, PeerId};
use tokio::sync::oneshot;

use super::{EventLoop, Pending};
use crate::{
    command::Location,
    core::send::PendingSend,
    directory::{closest, key_of},
    error::{Error, Result},
    protocol::{Request, Response, WireLocation},
    shared::bump,
};

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
