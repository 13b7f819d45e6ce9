//! Lookups: one hop to the holders of an id, then Kademlia's routing table
//! and iterative query as the fallback.

use std::{sync::Arc, time::Instant};

use libp2p::{request_response::OutboundFailure, PeerId};
use tokio::sync::oneshot;

use super::{EventLoop, Pending};
use crate::{
    command::Location,
    core::{
        lookup::{Finished, LookupStep, LookupView, Lookups},
        send::PendingSend,
    },
    directory::{closest, key_of},
    error::{FindError, SendError},
    protocol::{Request, Response, WireLocation},
    shared::bump,
};

/// Who waits for a lookup.
#[derive(Debug)]
pub(crate) enum Waiter {
    Send(PendingSend),
    Find(oneshot::Sender<Result<Location, FindError>>),
}

impl EventLoop {
    /// `find`: where does this peer live? Asks the holders, not the
    /// cache: the cache serves sends, whose failures correct it, while a
    /// find must not report a peer where it no longer is.
    pub(super) fn find(&mut self, id: String, reply: oneshot::Sender<Result<Location, FindError>>) {
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
        let holders = closest(
            self.members.membership().keys(),
            key_of(id.as_bytes()),
            self.replication,
        );
        let now = Instant::now();
        let step = self.with_lookups(|l, view| l.start(now, id, waiter, holders, view));
        self.carry_out_lookup(step);
    }

    /// Runs `f` on the lookups with this loop as their view.
    fn with_lookups<R>(&mut self, f: impl FnOnce(&mut Lookups<Waiter>, &EventLoop) -> R) -> R {
        let mut lookups = std::mem::take(&mut self.lookups);
        let r = f(&mut lookups, self);
        self.lookups = lookups;
        r
    }

    /// Does what a lookup's step says, until it waits for the network.
    fn carry_out_lookup(&mut self, mut step: Option<LookupStep<Waiter>>) {
        let now = Instant::now();
        while let Some(s) = step.take() {
            match s {
                LookupStep::Ask { id, holder } => {
                    let rid = self.request(holder, Request::Lookup(id.clone()));
                    self.requests
                        .insert(rid, Pending::Lookup { id, host: holder });
                }
                LookupStep::Table { id, key } => {
                    let table = self.kad_table_by_distance(key);
                    step = self.with_lookups(|l, view| l.on_table(now, id, table, view));
                }
                LookupStep::Query { id } => {
                    let q = self
                        .swarm
                        .behaviour_mut()
                        .kad
                        .get_closest_peers(id.as_bytes().to_vec());
                    self.kad_lookups.insert(q, id);
                }
                LookupStep::Done(f) => self.complete_lookup(f),
            }
        }
    }

    pub(super) fn on_lookup_result(
        &mut self,
        id: String,
        holder: PeerId,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        let found = match result {
            Ok(Response::Location(Some(w))) => PeerId::from_bytes(&w.host).ok().map(|h| {
                let addrs = w
                    .addrs
                    .into_iter()
                    .filter_map(|a| libp2p::Multiaddr::try_from(a).ok())
                    .collect();
                (h, addrs)
            }),
            _ => None,
        };
        let now = Instant::now();
        let step = self.with_lookups(|l, view| l.on_answer(now, id, holder, found, view));
        self.carry_out_lookup(step);
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
        tracing::debug!(%id, hosts = peers.len(), "kademlia fallback lookup");
        let now = Instant::now();
        let step = self.with_lookups(|l, view| l.on_closest(now, id, peers, view));
        self.carry_out_lookup(step);
    }

    fn complete_lookup(&mut self, f: Finished<Waiter>) {
        let (id, host) = (f.id.as_str(), f.host);
        if let Some(h) = host {
            for a in &f.addrs {
                self.swarm.add_peer_address(h, a.clone());
            }
        }
        if f.round_trips > 0 {
            bump(&self.shared.counters.lookups);
            self.shared.counters.lookup_latency.record(f.took);
            self.shared
                .counters
                .lookup_round_trips
                .fetch_add(f.round_trips, std::sync::atomic::Ordering::Relaxed);
        }
        let id_arc: Arc<str> = Arc::from(id);
        if let Some(h) = host {
            // A holder may still point to a host that just said "unknown
            // peer" (its withdrawal is on the way): do not cache that.
            let refused = f
                .waiters
                .iter()
                .any(|w| matches!(w, Waiter::Send(p) if p.refused_by.as_deref() == Some(&h)));
            if h != self.local() && !refused {
                self.locations.learned(id_arc.clone(), h);
            }
        }
        for w in f.waiters {
            match (w, host) {
                (Waiter::Find(reply), Some(h)) => {
                    let mut loc = self.location_of(h);
                    if loc.addrs.is_empty() {
                        loc.addrs = f.addrs.clone();
                    }
                    loc.round_trips = u32::try_from(f.round_trips).unwrap_or(u32::MAX);
                    let _ = reply.send(Ok(loc));
                }
                (Waiter::Find(reply), None) => {
                    let _ = reply.send(Err(FindError::PeerNotFound(id.to_string())));
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
                    match self.locations.claim(id) {
                        Some(h) if p.refused_by.as_deref() != Some(&h) => self.enqueue(h, p),
                        _ => {
                            let e = SendError::PeerNotFound(id.to_string());
                            self.finish_send(p, Err(e));
                        }
                    }
                }
                (Waiter::Send(p), Some(_)) => {
                    let e = SendError::PeerNotFound(id.to_string());
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
            Some(h) => self.members.membership().contains(&h).then_some(h),
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
            self.members
                .membership()
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
        self.locations.forget_host(host);
    }

    /// Fails every lookup (on close).
    pub(super) fn fail_all_lookups(&mut self) {
        for w in self.lookups.drain() {
            match w {
                Waiter::Send(p) => {
                    let _ = p.reply.send(Err(SendError::Closed));
                }
                Waiter::Find(reply) => {
                    let _ = reply.send(Err(FindError::Closed));
                }
            }
        }
    }
}

impl LookupView for EventLoop {
    fn is_member(&self, host: &PeerId) -> bool {
        self.members.membership().contains(host)
    }

    fn is_local(&self, host: &PeerId) -> bool {
        *host == self.shared.local
    }

    fn held_here(&self, id: &str) -> Option<PeerId> {
        self.store.lookup(id)
    }

    fn direct(&self, host: &PeerId) -> bool {
        self.next_hop(*host) == *host
    }
}
