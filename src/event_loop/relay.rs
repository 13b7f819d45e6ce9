//! Requests through the relay overlay (see [`crate::overlay`]).
//!
//! Above [`HostConfig::relay_above`](crate::HostConfig::relay_above) hosts,
//! a request for a host that is neither a neighbour nor linked already goes
//! to the contact in the destination's group, wrapped in a
//! [`Relayed`] that the origin signs with its host key (over the
//! destination and the request bytes; once for all its requests in a
//! bundle, see [`crate::relay_proof`]). The contact forwards it unchanged
//! over its own link, and passes the answer back. The destination checks
//! the signature against the origin's membership record and then handles
//! the request exactly as if the origin had sent it directly: directory
//! entries still point only to the host that signed them, batch dedup is
//! per origin.
//!
//! Requests for one next hop travel together: while a bundle to it is in
//! flight, the next ones queue behind and go as one [`Request::Relay`]
//! when it is answered (on the origin, per contact; on the contact, per
//! destination). Answers come back in order, one per request.
//!
//! A relay that cannot be reached (a crashed contact is a member until its
//! lease lapses) fails the bundle in flight; its requests are resent (or
//! retried) and, until the lease would have lapsed, go directly to their
//! destinations instead.
//!
//! What a relay can do: delay or drop a request, or answer it falsely
//! (answers are not signed: a relay is a member, trusted as far as any
//! member's answer to a lookup is). What it cannot do: forge, alter or
//! redirect a request. A member relay could replay a request it carried:
//! a replayed delivery batch is answered from the destination's memory of
//! the origin's last batch, and an older one is refused (batch ids rise
//! per origin and epoch; see `messaging::BatchMemory`); a replayed
//! directory operation of the origin's current epoch is applied again (a
//! withdrawn id could come back until the origin answers "unknown peer"
//! to a send for it, which drops the stale location).

use std::{collections::HashMap, time::Instant};

use libp2p::{request_response::OutboundFailure, PeerId};

use super::{EventLoop, Pending, ReqKey};
use crate::{
    core::membership::Membership,
    core::outbox::{Outbox, Pick, Weigh},
    overlay::Overlay,
    protocol::{Relayed, Request, Response},
    rpc_stream::Reply,
};

/// Most relays remembered as unreachable.
const MAX_AVOIDED: usize = 1024;
/// Most requests in one bundle.
const MAX_BUNDLE: usize = 4096;
/// Bytes per bundled request besides its own: ids, framing and its proof
/// (a 64-byte signature and up to 12 sibling hashes, for the
/// [`MAX_BUNDLE`] requests one signature covers).
const ITEM_OVERHEAD: usize = 560;
/// Bytes of a frame kept free beyond the bundled requests.
const BUNDLE_SLACK: usize = 64 * 1024;
/// What a relay queues for one next hop, in frames (`max_frame_size`):
/// beyond, it refuses other hosts' requests for that hop (`RelayFailed`,
/// which their origin retries like a broken link), so the origins cannot
/// make a relay hold more than this per neighbour.
const QUEUED_FRAMES_PER_HOP: usize = 4;
/// One host's requests may take at most this share of a queue (a quarter:
/// one frame), so that one origin filling it cannot keep the others' out.
const SENDER_SHARE: usize = 4;

/// Checks a relayed request that arrived for this host through `relay`: a
/// member relay, a member origin whose key signed it, and a request that
/// may be relayed. Returns the origin and the request.
fn open(membership: &Membership, relay: PeerId, r: &Relayed) -> Result<(PeerId, Request), String> {
    if !membership.contains(&relay) {
        return Err("relay is not a member".into());
    }
    let origin = PeerId::from_bytes(&r.origin).map_err(|_| "bad origin id".to_string())?;
    let member = membership
        .get(&origin)
        .ok_or_else(|| format!("origin {origin} is not a member"))?;
    let signed = r.proof.as_ref().is_some_and(|proof| {
        crate::relay_proof::verify(
            &member.key,
            crate::relay_proof::leaf(&r.to, &r.inner),
            proof,
        )
    });
    if !signed {
        return Err(format!("signature of origin {origin} does not verify"));
    }
    let req: Request = crate::protocol::decode_frame(&r.inner).map_err(|e| e.to_string())?;
    if !req.is_relayable() {
        return Err("this request cannot be relayed".into());
    }
    Ok((origin, req))
}

/// Where the answer to one relayed request goes.
#[derive(Debug)]
pub(crate) enum Slot {
    /// One of ours, under `ReqKey::Relayed(id)` in the loop's requests.
    Own(u64),
    /// Another host's, at `index` of the inbound bundle `bundle`.
    Forward { bundle: u64, index: usize },
}

/// A relayed request waiting for its next hop, with the host that sent it
/// (`None`: our own).
#[derive(Debug)]
struct Item {
    r: Relayed,
    slot: Slot,
    sender: Option<PeerId>,
}

impl Weigh for Item {
    fn weight(&self) -> usize {
        item_size(&self.r)
    }
}

/// Bytes a relayed request counts for in queues and bundles.
fn item_size(r: &Relayed) -> usize {
    r.inner.len() + ITEM_OVERHEAD
}

/// A bundle another host sent through this one, waiting for answers.
#[derive(Debug)]
struct InBundle {
    peer: PeerId,
    channel: Reply,
    responses: Vec<Option<Response>>,
    remaining: usize,
}

/// Bundles out and in.
#[derive(Debug, Default)]
pub(crate) struct RelayQueues {
    /// Requests by next hop, one bundle in flight to each (a failed bundle
    /// fails its requests: they are not queued again, so no rest applies).
    links: Outbox<PeerId, Item>,
    /// Bytes queued per (next hop, sending host): each sender's quota.
    by_sender: HashMap<(PeerId, PeerId), usize>,
    /// Next hops with requests queued in this loop turn: their bundles go
    /// at its end, so a burst (a directory flush, an inbound bundle) fills
    /// one bundle per next hop instead of sending its first request alone.
    dirty: Vec<PeerId>,
    inbound: HashMap<u64, InBundle>,
    next_id: u64,
    /// Relays a bundle could not reach lately, and until when requests go
    /// around them (directly to their destination): a crashed contact
    /// stays in the membership until its lease lapses.
    avoid: HashMap<PeerId, Instant>,
}

impl RelayQueues {
    /// Queues a request for `via`, sent by `sender` (`None`: our own).
    fn push(&mut self, via: PeerId, r: Relayed, slot: Slot, sender: Option<PeerId>) {
        if let Some(s) = sender {
            *self.by_sender.entry((via, s)).or_default() += item_size(&r);
        }
        self.links.push(via, Item { r, slot, sender });
    }

    /// The next bundle for `via` (up to `max_bytes` and [`MAX_BUNDLE`]
    /// requests; at least one), unless one is in flight or none waits; the
    /// link counts as in flight until its answer.
    fn take_bundle(&mut self, via: &PeerId, max_bytes: usize) -> Option<(Vec<Relayed>, Vec<Slot>)> {
        let now = Instant::now();
        let batch = self.links.take(via, now, |item, n, bytes| {
            if n > 0 && (bytes + item.weight() > max_bytes || n >= MAX_BUNDLE) {
                Pick::Stop
            } else {
                Pick::Take
            }
        })?;
        let (mut items, mut slots) = (
            Vec::with_capacity(batch.len()),
            Vec::with_capacity(batch.len()),
        );
        for item in batch {
            if let Some(s) = item.sender {
                if let Some(b) = self.by_sender.get_mut(&(*via, s)) {
                    *b = b.saturating_sub(item_size(&item.r));
                    if *b == 0 {
                        self.by_sender.remove(&(*via, s));
                    }
                }
            }
            items.push(item.r);
            slots.push(item.slot);
        }
        Some((items, slots))
    }

    /// Whether a request of `size` bytes that `sender` sent fits in the
    /// queue to `via` under `cap` bytes, and under the sender's share of
    /// it (an empty queue takes any one request).
    fn admits(&self, via: &PeerId, size: usize, cap: usize, sender: &PeerId) -> bool {
        self.links.get(via).is_none_or(|q| {
            let theirs = self.by_sender.get(&(*via, *sender)).copied().unwrap_or(0);
            q.items().len() == 0 || (q.bytes() + size <= cap && theirs + size <= cap / SENDER_SHARE)
        })
    }
}

impl EventLoop {
    /// The overlay, if the network is large enough to relay.
    pub(super) fn overlay(&self) -> Option<&Overlay> {
        let above = self.shared.with_config(|c| c.relay_above);
        self.overlay.overlay(self.members.membership().len(), above)
    }

    /// Recomputes the overlay after a membership change (see
    /// [`crate::core::neighbours`]), and follows a change of mode.
    pub(super) fn refresh_overlay(&mut self, now: Instant) {
        let above = self.shared.with_config(|c| c.relay_above);
        let local = self.local();
        let Some(r) = self
            .overlay
            .refresh(now, self.members.membership(), local, above)
        else {
            return;
        };
        // Membership records travel on a gossipsub topic of every host in a
        // small network; a relaying one leaves it (each host in one mesh
        // of all costs heartbeats and IHAVE gossip on every link) and
        // spreads records by digest anti-entropy alone.
        if r.relaying != r.was_relaying {
            let gs = &mut self.swarm.behaviour_mut().gossipsub;
            let topic = super::members::topic();
            if r.relaying {
                gs.unsubscribe(&topic);
            } else if let Err(e) = gs.subscribe(&topic) {
                tracing::warn!(error = %e, "cannot subscribe to the membership topic");
            }
        }
        self.swarm.behaviour_mut().gate.set_neighbours(r.neighbours);
    }

    /// Dials the neighbours that are due (see [`crate::core::neighbours`]),
    /// so the overlay's links exist before requests need them.
    pub(super) fn keep_neighbours(&mut self, now: Instant) {
        if self.overlay().is_none() {
            return;
        }
        let heartbeat = self.shared.with_config(|c| c.heartbeat_interval);
        let swarm = &self.swarm;
        let missing = self
            .overlay
            .to_dial(now, self.local(), heartbeat, |h| swarm.is_connected(h));
        for h in missing {
            self.dial_member(h);
        }
    }

    /// Whether the overlay keeps the link to `host`.
    pub(super) fn is_neighbour(&self, host: &PeerId) -> bool {
        self.overlay().is_some_and(|o| o.is_neighbour(host))
    }

    /// The first hop of a relayable request for `host`: itself if linked
    /// or a neighbour (or the network is small), else its relay.
    pub(super) fn next_hop(&self, host: PeerId) -> PeerId {
        if self.swarm.is_connected(&host) {
            return host;
        }
        let via = self.overlay().map_or(host, |o| o.next_hop(host));
        if via != host
            && self
                .relays
                .avoid
                .get(&via)
                .is_some_and(|until| *until > Instant::now())
        {
            return host;
        }
        via
    }

    /// Wraps a request for relaying to `to` (signed when its bundle goes).
    fn wrap(&self, to: PeerId, req: &Request) -> Option<Relayed> {
        let inner = postcard::to_allocvec(req).ok()?;
        Some(Relayed {
            origin: self.local().to_bytes(),
            to: to.to_bytes(),
            inner,
            proof: None,
        })
    }

    /// Queues one of our requests for `host` on the bundle to `via`; its
    /// answer comes back under the returned key. `None` if it could not be
    /// encoded (the caller sends it directly).
    pub(super) fn relay_own(&mut self, via: PeerId, host: PeerId, req: &Request) -> Option<ReqKey> {
        let r = self.wrap(host, req)?;
        let id = self.relays.next_id;
        self.relays.next_id += 1;
        self.enqueue_relay(via, r, Slot::Own(id), None);
        Some(ReqKey::Relayed(id))
    }

    fn enqueue_relay(&mut self, via: PeerId, r: Relayed, slot: Slot, sender: Option<PeerId>) {
        self.relays.push(via, r, slot, sender);
        if !self.relays.dirty.contains(&via) {
            self.relays.dirty.push(via);
        }
    }

    /// Sends the bundles of the requests queued in this loop turn.
    pub(super) fn flush_dirty_relays(&mut self) {
        for via in std::mem::take(&mut self.relays.dirty) {
            self.flush_relay(via);
        }
    }

    /// Sends what waits for `via` as one bundle, unless one is in flight
    /// (then it goes when that one is answered, with whatever gathered).
    fn flush_relay(&mut self, via: PeerId) {
        let max_bytes = self
            .shared
            .with_config(|c| c.max_frame_size.saturating_sub(BUNDLE_SLACK));
        let Some((mut items, slots)) = self.relays.take_bundle(&via, max_bytes) else {
            return;
        };
        // Our own requests in the bundle are signed together, once.
        let own: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].proof.is_none())
            .collect();
        if !own.is_empty() {
            let leaves: Vec<_> = own
                .iter()
                .map(|&i| crate::relay_proof::leaf(&items[i].to, &items[i].inner))
                .collect();
            match crate::relay_proof::sign(&self.key, &leaves) {
                Some(proofs) => {
                    for (&i, proof) in own.iter().zip(proofs) {
                        items[i].proof = Some(proof);
                    }
                }
                None => tracing::warn!("cannot sign relayed requests; their relay refuses them"),
            }
        }
        self.touch(via);
        self.dial_member(via);
        crate::shared::bump(&self.shared.counters.relay_bundles);
        let key = self.send_request(via, Request::Relay(items));
        self.requests
            .insert(key, Pending::RelayBundle { via, slots });
    }

    /// Inbound relayed requests from `peer`: those for this host are
    /// handled at once; the others are forwarded (first hop only), bundled
    /// per destination. The answer goes back when every request has one.
    pub(super) fn on_relay(&mut self, peer: PeerId, items: Vec<Relayed>, channel: Reply) {
        let local = self.local();
        let bundle = self.relays.next_id;
        self.relays.next_id += 1;
        let mut responses = vec![None; items.len()];
        let mut forward = Vec::new();
        for (index, r) in items.into_iter().enumerate() {
            let to = PeerId::from_bytes(&r.to).ok();
            if to == Some(local) {
                let response = match open(self.members.membership(), peer, &r) {
                    Ok((origin, req)) => self.on_request(origin, req),
                    Err(why) => {
                        tracing::debug!(%peer, %why, "relayed request refused");
                        Response::RelayFailed(why)
                    }
                };
                responses[index] = Some(response);
                continue;
            }
            let refused = match to {
                None => Some("bad destination id"),
                Some(_) if r.origin != peer.to_bytes() => Some("relayed requests are relayed once"),
                Some(_) if r.proof.is_none() => Some("unsigned"),
                Some(to) if !self.members.membership().contains(&to) => {
                    Some("destination is not a member")
                }
                Some(_) if !self.members.membership().contains(&peer) => {
                    Some("origin is not a member")
                }
                Some(_) => None,
            };
            match (refused, to) {
                (None, Some(to)) => forward.push((to, r, index)),
                (why, _) => {
                    let why = why.unwrap_or("refused").to_string();
                    responses[index] = Some(Response::RelayFailed(why));
                }
            }
        }
        if forward.is_empty() {
            let all = responses
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Response::RelayFailed("no answer".into())))
                .collect();
            self.answer(peer, channel, Response::Relayed(all));
            return;
        }
        self.relays.inbound.insert(
            bundle,
            InBundle {
                peer,
                channel,
                remaining: forward.len(),
                responses,
            },
        );
        let cap = self
            .shared
            .with_config(|c| c.max_frame_size.saturating_mul(QUEUED_FRAMES_PER_HOP));
        for (to, r, index) in forward {
            let slot = Slot::Forward { bundle, index };
            if !self.relays.admits(&to, item_size(&r), cap, &peer) {
                crate::shared::bump(&self.shared.counters.relay_refused);
                tracing::debug!(%peer, %to, "relay queue full; refusing a request");
                self.settle(slot, Err(format!("relay queue to {to} is full")));
                continue;
            }
            crate::shared::bump(&self.shared.counters.relayed);
            self.touch(to);
            self.enqueue_relay(to, r, slot, Some(peer));
        }
    }

    /// A bundle sent to `via` was answered (or failed): each request's
    /// answer goes to whoever waits for it.
    pub(super) fn on_bundle_result(
        &mut self,
        via: PeerId,
        slots: Vec<Slot>,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        self.relays.links.done(&via);
        let answers: Vec<std::result::Result<Response, String>> = match result {
            Ok(Response::Relayed(rs)) if rs.len() == slots.len() => {
                rs.into_iter().map(Ok).collect()
            }
            Ok(other) => {
                let why = format!("{via}: unexpected answer {}", answer_name(&other));
                vec![Err(why); slots.len()]
            }
            Err(e) => {
                // The relay itself is unreachable: go around it until its
                // lease would have lapsed.
                let now = Instant::now();
                let lease = self.shared.with_config(|c| c.lease);
                let avoid = &mut self.relays.avoid;
                if avoid.len() >= MAX_AVOIDED {
                    avoid.retain(|_, until| *until > now);
                }
                if avoid.len() < MAX_AVOIDED {
                    avoid.insert(via, now + lease);
                }
                vec![Err(format!("{via}: {e}")); slots.len()]
            }
        };
        for (slot, answer) in slots.into_iter().zip(answers) {
            self.settle(slot, answer);
        }
        self.flush_relay(via);
    }

    /// Gives one relayed request its answer.
    fn settle(&mut self, slot: Slot, answer: std::result::Result<Response, String>) {
        match slot {
            Slot::Own(id) => {
                let Some(p) = self.requests.remove(&ReqKey::Relayed(id)) else {
                    return;
                };
                // A relay that could not pass the request on fails it as a
                // broken link would (those are retried).
                let result = match answer {
                    Ok(Response::RelayFailed(why)) | Err(why) => Err(OutboundFailure::Io(
                        std::io::Error::other(format!("relay: {why}")),
                    )),
                    Ok(r) => Ok(r),
                };
                self.on_response(p, result);
            }
            Slot::Forward { bundle, index } => {
                let Some(b) = self.relays.inbound.get_mut(&bundle) else {
                    return;
                };
                if let Some(r) = b.responses.get_mut(index) {
                    *r = Some(answer.unwrap_or_else(Response::RelayFailed));
                }
                b.remaining = b.remaining.saturating_sub(1);
                if b.remaining == 0 {
                    if let Some(b) = self.relays.inbound.remove(&bundle) {
                        let all = b
                            .responses
                            .into_iter()
                            .map(|r| r.unwrap_or_else(|| Response::RelayFailed("no answer".into())))
                            .collect();
                        self.answer(b.peer, b.channel, Response::Relayed(all));
                    }
                }
            }
        }
    }

    /// Sends `response` on `channel`.
    pub(super) fn answer(&mut self, peer: PeerId, channel: Reply, response: Response) {
        if !channel.send(response) {
            tracing::debug!(%peer, "response channel closed before answering");
        }
    }
}

/// A short name of an answer, for errors.
fn answer_name(r: &Response) -> &'static str {
    match r {
        Response::RelayFailed(_) => "relay failed",
        Response::Refused(_) => "refused",
        _ => "of another kind",
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use libp2p::identity::Keypair;

    use super::*;

    #[test]
    fn a_relay_queue_takes_other_hosts_requests_up_to_its_cap() {
        let mut q = RelayQueues::default();
        let (via, other) = (PeerId::random(), PeerId::random());
        let item = |n: usize| Relayed {
            origin: vec![],
            to: vec![],
            inner: vec![0; n],
            proof: None,
        };
        assert!(
            q.admits(&via, 1 << 30, 3000, &other),
            "an empty queue takes one of any size"
        );
        // 3 × (40 + 560) = 1,800 bytes queued under a cap of 3,000.
        for i in 0..3 {
            q.push(via, item(40), Slot::Own(i), None);
        }
        assert!(q.admits(&via, 750, 3000, &other));
        assert!(!q.admits(&via, 751, 3000, &other), "over its share");
        // A bundle goes out (all three fit in 10 kB): the queue is free again.
        let (items, slots) = q.take_bundle(&via, 10_000).expect("a bundle");
        assert_eq!((items.len(), slots.len()), (3, 3));
        assert!(q.admits(&via, 3000, 3000, &other));
        // While it is in flight, what queues waits and counts.
        q.push(via, item(2440), Slot::Own(3), None);
        assert!(
            q.take_bundle(&via, 10_000).is_none(),
            "one bundle in flight"
        );
        assert!(!q.admits(&via, 1, 3000, &other));
    }

    #[test]
    fn one_host_takes_at_most_a_quarter_of_a_relay_queue() {
        let mut q = RelayQueues::default();
        let (via, greedy, modest) = (PeerId::random(), PeerId::random(), PeerId::random());
        let item = |n: usize| Relayed {
            origin: vec![],
            to: vec![],
            inner: vec![0; n],
            proof: None,
        };
        // Cap 40,000: each sender may queue 10,000 bytes.
        let mut taken = 0;
        for i in 0..100 {
            if !q.admits(&via, 1000, 40_000, &greedy) {
                break;
            }
            q.push(via, item(440), Slot::Own(i), Some(greedy));
            taken += 1;
        }
        assert_eq!(taken, 10, "the greedy sender stops at its share");
        assert!(q.admits(&via, 1000, 40_000, &modest), "others still get in");
        // Once its requests go out, its share is free again.
        q.take_bundle(&via, 1 << 20).expect("a bundle");
        assert!(q.admits(&via, 1000, 40_000, &greedy));
    }

    /// A membership of `local` that knows the hosts of `keys`.
    fn membership_with(local: PeerId, keys: &[&Keypair]) -> Membership {
        let mut m = Membership::new(local);
        for k in keys {
            let v = crate::core::membership::tests::record(k, 1, 1, false);
            m.apply(&v, Instant::now(), Duration::from_secs(1));
        }
        m
    }

    /// `req` for `to` signed by `signer` in a bundle of three (the other
    /// two are for other hosts).
    fn relayed(signer: &Keypair, origin: PeerId, to: PeerId, req: &Request) -> Relayed {
        let inner = postcard::to_allocvec(req).unwrap();
        let to = to.to_bytes();
        let leaves = [
            crate::relay_proof::leaf(b"other", b"one"),
            crate::relay_proof::leaf(&to, &inner),
            crate::relay_proof::leaf(b"other", b"two"),
        ];
        let proof = crate::relay_proof::sign(signer, &leaves)
            .unwrap()
            .swap_remove(1);
        Relayed {
            origin: origin.to_bytes(),
            to,
            inner,
            proof: Some(proof),
        }
    }

    #[test]
    fn only_what_the_origin_signed_is_taken() {
        let (a, relay, dest) = (
            Keypair::generate_ed25519(),
            Keypair::generate_ed25519(),
            Keypair::generate_ed25519(),
        );
        let (a_id, relay_id, dest_id) = (
            a.public().to_peer_id(),
            relay.public().to_peer_id(),
            dest.public().to_peer_id(),
        );
        let m = membership_with(dest_id, &[&a, &relay]);
        let req = Request::Lookup("x".into());

        let good = relayed(&a, a_id, dest_id, &req);
        let (origin, got) = open(&m, relay_id, &good).unwrap();
        assert_eq!(origin, a_id);
        assert!(matches!(got, Request::Lookup(id) if id == "x"));

        // The relay alters the request: the signature no longer holds.
        let mut altered = good.clone();
        altered.inner = postcard::to_allocvec(&Request::Lookup("y".into())).unwrap();
        assert!(open(&m, relay_id, &altered)
            .unwrap_err()
            .contains("signature"));

        // The relay signs a request in the origin's name with its own key.
        let forged = relayed(&relay, a_id, dest_id, &req);
        assert!(open(&m, relay_id, &forged)
            .unwrap_err()
            .contains("signature"));

        // Redirected: signed for another destination.
        let mut redirected = relayed(&a, a_id, relay_id, &req);
        redirected.to = dest_id.to_bytes();
        assert!(open(&m, relay_id, &redirected).is_err());

        // A stranger as origin, or as relay.
        let stranger = Keypair::generate_ed25519();
        let s_id = stranger.public().to_peer_id();
        let from_stranger = relayed(&stranger, s_id, dest_id, &req);
        assert!(open(&m, relay_id, &from_stranger)
            .unwrap_err()
            .contains("not a member"));
        assert!(open(&m, s_id, &good).unwrap_err().contains("not a member"));

        // Unsigned (as queued on its origin), or with the proof of
        // another request of the bundle.
        let unsigned = Relayed {
            proof: None,
            ..good.clone()
        };
        assert!(open(&m, relay_id, &unsigned)
            .unwrap_err()
            .contains("signature"));
        let mut misplaced = good.clone();
        if let Some(p) = misplaced.proof.as_mut() {
            p.index = 0;
        }
        assert!(open(&m, relay_id, &misplaced)
            .unwrap_err()
            .contains("signature"));

        // Joins are never taken relayed.
        let join = relayed(&a, a_id, dest_id, &Request::Join(vec![]));
        assert!(open(&m, relay_id, &join)
            .unwrap_err()
            .contains("cannot be relayed"));
    }
}
