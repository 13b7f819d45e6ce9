//! Requests through the relay overlay (see [`crate::overlay`]), without I/O.
//!
//! Above [`HostConfig::relay_above`](crate::HostConfig::relay_above) hosts,
//! a request for a host that is neither a neighbour nor linked already goes
//! to the contact in the destination's group, wrapped in a
//! [`Relayed`] that the origin signs with its host key (over the
//! destination and the request bytes; once for all its requests in a
//! bundle, see [`crate::relay_proof`]); lookups go unsigned
//! ([`Request::needs_origin_proof`]). The contact forwards it unchanged
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
//! per origin and epoch; see `core::batch_memory`); a replayed directory
//! operation of the origin's current epoch is applied again (a withdrawn id
//! could come back until the origin answers "unknown peer" to a send for
//! it, which drops the stale location).
//!
//! [`Relays`] decides all of this with `now` given; the event loop sends
//! the bundles it hands out, handles the requests that arrived for this
//! host, and carries out the [`Effect`]s.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::{identity::Keypair, PeerId};

use crate::{
    core::membership::Membership,
    core::outbox::{Outbox, Pick, Weigh},
    protocol::{Relayed, Request, Response},
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
/// What a relay holds of other hosts' requests, queued or in a bundle in
/// flight, over all its next hops, in frames (`max_frame_size`): beyond,
/// it refuses them (`RelayFailed`, which their origin retries like a
/// broken link). It is one bound for all next hops, bundles in flight
/// included: a bound per next hop would let origins that name
/// destinations which never answer make a relay hold that much per
/// neighbour (about 60 at 512 hosts).
const HELD_FRAMES: usize = 4;
/// One next hop may take at most this share of what a relay holds (a
/// half), so that a destination that stopped answering (crashed, until
/// its lease lapses) leaves room for the others.
const HOP_SHARE: usize = 2;
/// One sending host may take at most this share (a quarter: one frame),
/// so that one origin cannot keep the others out.
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
    if let Some(proof) = &r.proof {
        let leaf = crate::relay_proof::leaf(&r.to, &r.inner);
        if !crate::relay_proof::verify(&member.key, leaf, proof) {
            return Err(format!("signature of origin {origin} does not verify"));
        }
    }
    let req: Request = crate::protocol::decode_frame(&r.inner).map_err(|e| e.to_string())?;
    if !req.is_relayable() {
        return Err("this request cannot be relayed".into());
    }
    if r.proof.is_none() && req.needs_origin_proof() {
        return Err(format!("unsigned: origin {origin} must sign this request"));
    }
    Ok((origin, req))
}

/// Where the answer to one relayed request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// One of ours, answered by [`Effect::Own`] with this id.
    Own(u64),
    /// Another host's, or one for this host, at `index` of the inbound
    /// bundle `bundle`.
    Inbound { bundle: u64, index: usize },
}

/// A relayed request waiting for its next hop, with the host that sent it
/// (`None`: our own).
#[derive(Debug)]
struct Item {
    r: Relayed,
    slot: Slot,
    sender: Option<PeerId>,
    /// One of ours that its destination takes only with a proof (see
    /// [`Request::needs_origin_proof`]): signed when its bundle goes.
    sign: bool,
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

/// A bundle another host sent through this one, waiting for answers; `C`
/// is how the loop answers it.
#[derive(Debug)]
struct InBundle<C> {
    peer: PeerId,
    channel: C,
    responses: Vec<Option<Response>>,
    remaining: usize,
}

/// What the event loop is to do.
#[derive(Debug)]
pub(crate) enum Effect<C> {
    /// Send `items` to `via` as one [`Request::Relay`] (our own requests
    /// among them signed), and report its outcome with
    /// [`Relays::on_bundle_result`] and these `slots`.
    Send {
        via: PeerId,
        items: Vec<Relayed>,
        slots: Vec<Slot>,
    },
    /// One of our relayed requests (from [`Relays::queue_own`]) has its
    /// answer; `Err` when the relay could not pass it on, which the caller
    /// treats as a broken link.
    Own {
        id: u64,
        answer: Result<Response, String>,
    },
    /// Answer the bundle `peer` sent, one response per request in order.
    Answer {
        peer: PeerId,
        channel: C,
        response: Response,
    },
    /// A request of `from` was queued to be forwarded to `to`.
    Forwarded { from: PeerId, to: PeerId },
    /// A request of `from` for `to` was refused: the relay holds its bound
    /// of other hosts' requests (in all, for `to`, or from `from`).
    Refused { from: PeerId, to: PeerId },
}

/// A request that arrived relayed for this host: the loop handles it as if
/// `origin` had sent it and gives its response to [`Relays::settle`].
#[derive(Debug)]
pub(crate) struct ForUs {
    pub slot: Slot,
    pub origin: PeerId,
    pub request: Request,
}

/// The relay queues of one host: its own requests by contact, and the
/// requests it forwards by destination, one bundle in flight to each.
#[derive(Debug)]
pub(crate) struct Relays<C> {
    local: PeerId,
    key: Keypair,
    /// Requests by next hop, one bundle in flight to each (a failed bundle
    /// fails its requests: they are not queued again, so no rest applies).
    links: Outbox<PeerId, Item>,
    /// Bytes of other hosts' requests this relay holds, queued or in
    /// flight: in all, per next hop, and per sending host.
    held: Held,
    /// Other hosts' requests in the bundle in flight to each next hop (its
    /// sender and bytes): held until the bundle's answer.
    in_flight: HashMap<PeerId, Vec<(PeerId, usize)>>,
    /// Next hops with requests queued since the last [`Relays::flush`]:
    /// their bundles go then, so a burst (a directory flush, an inbound
    /// bundle) fills one bundle per next hop instead of sending its first
    /// request alone.
    dirty: Vec<PeerId>,
    inbound: HashMap<u64, InBundle<C>>,
    next_id: u64,
    /// Relays a bundle could not reach lately, and until when requests go
    /// around them (directly to their destination): a crashed contact
    /// stays in the membership until its lease lapses.
    avoid: HashMap<PeerId, Instant>,
}

impl<C> Relays<C> {
    /// The relay queues of the host with `key`.
    pub(crate) fn new(key: Keypair) -> Self {
        Relays {
            local: key.public().to_peer_id(),
            key,
            links: Outbox::default(),
            held: Held::default(),
            in_flight: HashMap::new(),
            dirty: Vec::new(),
            inbound: HashMap::new(),
            next_id: 0,
            avoid: HashMap::new(),
        }
    }

    /// Bytes of other hosts' requests held now (see [`HELD_FRAMES`]).
    pub(crate) fn held_bytes(&self) -> usize {
        self.held.total
    }

    /// The first hop of a relayable request for `host`, given the hop the
    /// overlay plans (`planned`: `host` itself when linked, a neighbour or
    /// the network is small): `host` itself while the planned relay is
    /// avoided as unreachable.
    pub(crate) fn next_hop(&self, host: PeerId, planned: PeerId, now: Instant) -> PeerId {
        if planned != host && self.avoid.get(&planned).is_some_and(|until| *until > now) {
            return host;
        }
        planned
    }

    /// Queues our request `req` for `host` on the bundle to `via`; its
    /// answer comes as [`Effect::Own`] with the returned id. `None` if it
    /// could not be encoded (the caller sends it directly).
    pub(crate) fn queue_own(&mut self, via: PeerId, host: PeerId, req: &Request) -> Option<u64> {
        let inner = postcard::to_allocvec(req).ok()?;
        let r = Relayed {
            origin: self.local.to_bytes(),
            to: host.to_bytes(),
            inner,
            proof: None,
        };
        let id = self.take_id();
        let item = Item {
            r,
            slot: Slot::Own(id),
            sender: None,
            sign: req.needs_origin_proof(),
        };
        self.push(via, item);
        Some(id)
    }

    /// Sends the bundles of the requests queued since the last flush;
    /// `max_frame` is the largest frame a request may be.
    pub(crate) fn flush(&mut self, max_frame: usize, now: Instant, out: &mut Vec<Effect<C>>) {
        for via in std::mem::take(&mut self.dirty) {
            self.flush_one(via, max_frame, now, out);
        }
    }

    /// Relayed requests that `peer` sent: those for this host are returned
    /// to be handled, checked (a member relay, a member origin whose
    /// signature holds, a relayable request); the others are forwarded
    /// (first hop only), queued per destination. `channel` gets the answer
    /// ([`Effect::Answer`]) once every request has one.
    pub(crate) fn on_relay(
        &mut self,
        peer: PeerId,
        items: Vec<Relayed>,
        channel: C,
        membership: &Membership,
        max_frame: usize,
        out: &mut Vec<Effect<C>>,
    ) -> Vec<ForUs> {
        let bundle = self.take_id();
        let mut responses = vec![None; items.len()];
        let mut forward = Vec::new();
        let mut for_us = Vec::new();
        for (index, r) in items.into_iter().enumerate() {
            let slot = Slot::Inbound { bundle, index };
            let to = PeerId::from_bytes(&r.to).ok();
            if to == Some(self.local) {
                match open(membership, peer, &r) {
                    Ok((origin, request)) => for_us.push(ForUs {
                        slot,
                        origin,
                        request,
                    }),
                    Err(why) => {
                        tracing::debug!(%peer, %why, "relayed request refused");
                        responses[index] = Some(Response::RelayFailed(why));
                    }
                }
                continue;
            }
            let refused = match to {
                None => Some("bad destination id"),
                Some(_) if r.origin != peer.to_bytes() => Some("relayed requests are relayed once"),
                Some(to) if !membership.contains(&to) => Some("destination is not a member"),
                Some(_) if !membership.contains(&peer) => Some("origin is not a member"),
                Some(_) => None,
            };
            match (refused, to) {
                (None, Some(to)) => forward.push((to, r, slot)),
                (why, _) => {
                    let why = why.unwrap_or("refused").to_string();
                    responses[index] = Some(Response::RelayFailed(why));
                }
            }
        }
        let remaining = forward.len() + for_us.len();
        if remaining == 0 {
            out.push(Effect::Answer {
                peer,
                channel,
                response: Response::Relayed(complete(responses)),
            });
            return for_us;
        }
        self.inbound.insert(
            bundle,
            InBundle {
                peer,
                channel,
                remaining,
                responses,
            },
        );
        for (to, r, slot) in forward {
            if let Err(bound) = self.held.admits(&to, &peer, item_size(&r), max_frame) {
                out.push(Effect::Refused { from: peer, to });
                let why = format!("this relay holds {bound} of other hosts' requests");
                self.settle(slot, Err(why), out);
                continue;
            }
            out.push(Effect::Forwarded { from: peer, to });
            let item = Item {
                r,
                slot,
                sender: Some(peer),
                sign: false,
            };
            self.push(to, item);
        }
        for_us
    }

    /// The bundle sent to `via` was answered (`Ok`) or could not be
    /// delivered (`Err`: the relay is unreachable, and requests go around
    /// it until `lease` from `now`). Each request's answer goes to whoever
    /// waits for it, and what queued meanwhile goes as the next bundle.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_bundle_result(
        &mut self,
        via: PeerId,
        slots: Vec<Slot>,
        result: Result<Response, String>,
        lease: Duration,
        max_frame: usize,
        now: Instant,
        out: &mut Vec<Effect<C>>,
    ) {
        self.links.done(&via);
        for (sender, size) in self.in_flight.remove(&via).unwrap_or_default() {
            self.held.release(&via, &sender, size);
        }
        let answers: Vec<Result<Response, String>> = match result {
            Ok(Response::Relayed(rs)) if rs.len() == slots.len() => {
                rs.into_iter().map(Ok).collect()
            }
            Ok(other) => {
                let why = format!("{via}: unexpected answer {}", answer_name(&other));
                vec![Err(why); slots.len()]
            }
            Err(e) => {
                if self.avoid.len() >= MAX_AVOIDED {
                    self.avoid.retain(|_, until| *until > now);
                }
                if self.avoid.len() < MAX_AVOIDED {
                    self.avoid.insert(via, now + lease);
                }
                vec![Err(format!("{via}: {e}")); slots.len()]
            }
        };
        for (slot, answer) in slots.into_iter().zip(answers) {
            self.settle(slot, answer, out);
        }
        self.flush_one(via, max_frame, now, out);
    }

    /// Gives one relayed request its answer: ours go out as
    /// [`Effect::Own`], an inbound bundle is answered once complete.
    pub(crate) fn settle(
        &mut self,
        slot: Slot,
        answer: Result<Response, String>,
        out: &mut Vec<Effect<C>>,
    ) {
        match slot {
            Slot::Own(id) => {
                let answer = match answer {
                    Ok(Response::RelayFailed(why)) => Err(why),
                    other => other,
                };
                out.push(Effect::Own { id, answer });
            }
            Slot::Inbound { bundle, index } => {
                let Some(b) = self.inbound.get_mut(&bundle) else {
                    return;
                };
                if let Some(r) = b.responses.get_mut(index) {
                    *r = Some(answer.unwrap_or_else(Response::RelayFailed));
                }
                b.remaining = b.remaining.saturating_sub(1);
                if b.remaining == 0 {
                    if let Some(b) = self.inbound.remove(&bundle) {
                        out.push(Effect::Answer {
                            peer: b.peer,
                            channel: b.channel,
                            response: Response::Relayed(complete(b.responses)),
                        });
                    }
                }
            }
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Queues a request for `via` (its `sender`: `None` for our own).
    fn push(&mut self, via: PeerId, item: Item) {
        if let Some(s) = item.sender {
            self.held.take(via, s, item_size(&item.r));
        }
        self.links.push(via, item);
        if !self.dirty.contains(&via) {
            self.dirty.push(via);
        }
    }

    /// Sends what waits for `via` as one bundle, unless one is in flight
    /// (then it goes when that one is answered, with whatever gathered).
    fn flush_one(&mut self, via: PeerId, max_frame: usize, now: Instant, out: &mut Vec<Effect<C>>) {
        let Some((mut items, slots, own)) =
            self.take_bundle(&via, max_frame.saturating_sub(BUNDLE_SLACK), now)
        else {
            return;
        };
        // Our own requests in the bundle that need a proof are signed
        // together, once.
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
        out.push(Effect::Send { via, items, slots });
    }

    /// The next bundle for `via` (up to `max_bytes` and [`MAX_BUNDLE`]
    /// requests; at least one), unless one is in flight or none waits; the
    /// link counts as in flight until its answer.
    fn take_bundle(
        &mut self,
        via: &PeerId,
        max_bytes: usize,
        now: Instant,
    ) -> Option<(Vec<Relayed>, Vec<Slot>, Vec<usize>)> {
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
        let (mut others, mut sign) = (Vec::new(), Vec::new());
        for item in batch {
            if let Some(s) = item.sender {
                others.push((s, item_size(&item.r)));
            }
            if item.sign {
                sign.push(items.len());
            }
            items.push(item.r);
            slots.push(item.slot);
        }
        if !others.is_empty() {
            // One bundle is in flight per next hop, so none is replaced;
            // were one, its bytes are released rather than held for ever.
            if let Some(stale) = self.in_flight.insert(*via, others) {
                for (sender, size) in stale {
                    self.held.release(via, &sender, size);
                }
            }
        }
        Some((items, slots, sign))
    }
}

/// What a relay holds of other hosts' requests (see [`HELD_FRAMES`]).
#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_hop: HashMap<PeerId, usize>,
    by_sender: HashMap<PeerId, usize>,
}

impl Held {
    /// Whether a request of `size` bytes that `sender` sent for `via` may
    /// be held too: under the relay's bound, the hop's share and the
    /// sender's share of it; else which one it would pass.
    fn admits(
        &self,
        via: &PeerId,
        sender: &PeerId,
        size: usize,
        max_frame: usize,
    ) -> Result<(), &'static str> {
        let cap = max_frame.saturating_mul(HELD_FRAMES);
        let of = |m: &HashMap<PeerId, usize>, k: &PeerId| m.get(k).copied().unwrap_or(0);
        if of(&self.by_sender, sender) + size > cap / SENDER_SHARE {
            Err("the sender's share")
        } else if of(&self.by_hop, via) + size > cap / HOP_SHARE {
            Err("the next hop's share")
        } else if self.total + size > cap {
            Err("the relay's bound")
        } else {
            Ok(())
        }
    }

    fn take(&mut self, via: PeerId, sender: PeerId, size: usize) {
        self.total += size;
        *self.by_hop.entry(via).or_default() += size;
        *self.by_sender.entry(sender).or_default() += size;
    }

    fn release(&mut self, via: &PeerId, sender: &PeerId, size: usize) {
        self.total = self.total.saturating_sub(size);
        for (m, k) in [(&mut self.by_hop, via), (&mut self.by_sender, sender)] {
            if let Some(b) = m.get_mut(k) {
                *b = b.saturating_sub(size);
                if *b == 0 {
                    m.remove(k);
                }
            }
        }
    }
}

/// Every request's response, "no answer" where none came.
fn complete(responses: Vec<Option<Response>>) -> Vec<Response> {
    responses
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Response::RelayFailed("no answer".into())))
        .collect()
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

    /// The loop's answer channel, as far as these tests need one.
    type Relays = super::Relays<&'static str>;
    type Effects = Vec<Effect<&'static str>>;

    const FRAME: usize = 1 << 20;
    const LEASE: Duration = Duration::from_secs(20);

    fn item(n: usize) -> Relayed {
        Relayed {
            origin: vec![],
            to: vec![],
            inner: vec![0; n],
            proof: None,
        }
    }

    fn host() -> (Keypair, PeerId) {
        let k = Keypair::generate_ed25519();
        let id = k.public().to_peer_id();
        (k, id)
    }

    /// The bundles in `out`, as (next hop, requests, slots).
    fn sends(out: &mut Effects) -> Vec<(PeerId, Vec<Relayed>, Vec<Slot>)> {
        let (sends, rest): (Vec<_>, Vec<_>) = std::mem::take(out)
            .into_iter()
            .partition(|e| matches!(e, Effect::Send { .. }));
        *out = rest;
        sends
            .into_iter()
            .filter_map(|e| match e {
                Effect::Send { via, items, slots } => Some((via, items, slots)),
                _ => None,
            })
            .collect()
    }

    /// The answers to our own requests in `out`, by id.
    fn owns(out: &Effects) -> Vec<(u64, Result<Response, String>)> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Own { id, answer } => Some((*id, answer.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn what_a_relay_holds_for_others_is_bounded_in_all_per_hop_and_per_sender() {
        // Frames of 1,000 bytes: 4,000 held in all, 2,000 per next hop and
        // 1,000 per sender; each request here counts 40 + 560 = 600.
        let frame = 1000;
        let mut q = Relays::new(Keypair::generate_ed25519());
        let hops: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let s: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let mut slot = 0;
        let mut hold = |q: &mut Relays, via: PeerId, sender: PeerId| {
            slot += 1;
            let fits = q.held.admits(&via, &sender, 600, frame).is_ok();
            if fits {
                let queued = Item {
                    r: item(40),
                    slot: Slot::Own(slot),
                    sender: Some(sender),
                    sign: false,
                };
                q.push(via, queued);
            }
            fits
        };
        assert!(hold(&mut q, hops[0], s[0]));
        assert!(!hold(&mut q, hops[0], s[0]), "over one sender's share");
        assert!(!hold(&mut q, hops[1], s[0]), "whichever the next hop");
        assert!(hold(&mut q, hops[0], s[1]));
        assert!(hold(&mut q, hops[0], s[2]));
        assert!(!hold(&mut q, hops[0], s[3]), "over one hop's share");
        for &sender in &s[3..6] {
            assert!(hold(&mut q, hops[1], sender));
        }
        assert_eq!(q.held.total, 3600);
        assert!(!hold(&mut q, hops[2], s[6]), "over the relay's bound");
        // A refusal names the bound it met.
        let why =
            |q: &Relays, via: PeerId, sender: PeerId| q.held.admits(&via, &sender, 600, frame);
        assert_eq!(why(&q, hops[2], s[0]), Err("the sender's share"));
        assert_eq!(why(&q, hops[0], s[7]), Err("the next hop's share"));
        assert_eq!(why(&q, hops[2], s[7]), Err("the relay's bound"));

        // A bundle in flight still holds its requests; its answer frees them.
        let now = Instant::now();
        let (items, slots, _) = q.take_bundle(&hops[0], 1 << 20, now).expect("a bundle");
        assert_eq!(items.len(), 3);
        assert!(!hold(&mut q, hops[2], s[6]), "in flight is held too");
        let mut out = Effects::new();
        let answer = Response::Relayed(vec![Response::Location(None); 3]);
        q.on_bundle_result(hops[0], slots, Ok(answer), LEASE, frame, now, &mut out);
        assert_eq!(q.held.total, 1800);
        assert!(hold(&mut q, hops[2], s[6]));
        assert!(
            hold(&mut q, hops[0], s[0]),
            "the sender's share is free again"
        );
        // A failed bundle frees them as well.
        let (_, slots, _) = q.take_bundle(&hops[1], 1 << 20, now).expect("a bundle");
        q.on_bundle_result(
            hops[1],
            slots,
            Err("timeout".into()),
            LEASE,
            frame,
            now,
            &mut out,
        );
        assert_eq!(q.held.total, 1200);
        assert!(!q.held.by_hop.contains_key(&hops[1]) && !q.held.by_sender.contains_key(&s[3]));
    }

    /// Ten members each relay requests for ten destinations that never
    /// answer, round after round: the contact holds at most its bound of
    /// them (queued and in flight) and refuses the rest. Bounded per next
    /// hop only (and not counting bundles in flight), it took about ten
    /// times as much.
    #[test]
    fn destinations_that_never_answer_cannot_make_a_relay_hold_more_than_its_bound() {
        let (kr, r_id) = host();
        let origins: Vec<(Keypair, PeerId)> = (0..10).map(|_| host()).collect();
        let silent: Vec<(Keypair, PeerId)> = (0..10).map(|_| host()).collect();
        let keys: Vec<&Keypair> = origins.iter().chain(&silent).map(|(k, _)| k).collect();
        let m = membership_with(r_id, &keys);
        let mut r = Relays::new(kr);
        let frame = 8 * 1024;
        let now = Instant::now();
        let mut out = Effects::new();
        let (mut held, mut refused) = (0usize, 0usize);
        for round in 0..20 {
            for (k, origin) in &origins {
                let items: Vec<Relayed> = silent
                    .iter()
                    .map(|(_, to)| {
                        let req = Request::Lookup(format!("{round:0>300}"));
                        relayed(k, *origin, *to, &req)
                    })
                    .collect();
                let size = item_size(&items[0]);
                r.on_relay(*origin, items, "answer", &m, frame, &mut out);
                for e in out.drain(..) {
                    match e {
                        Effect::Forwarded { .. } => held += size,
                        Effect::Refused { .. } => refused += 1,
                        _ => {}
                    }
                }
            }
            // Bundles go to the silent hosts and are never answered.
            r.flush(frame, now, &mut out);
            out.clear();
        }
        assert!(held > 0, "requests are forwarded");
        assert!(refused > 0, "the rest are refused");
        assert!(
            held <= 4 * frame,
            "{held} bytes held, over the relay's bound"
        );
        assert_eq!(held, r.held.total);
    }

    #[test]
    fn requests_queued_behind_a_bundle_go_together_when_it_is_answered() {
        let (key, _) = host();
        let mut a = Relays::new(key);
        let (relay, b) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let mut out = Effects::new();

        let first = a.queue_own(relay, b, &Request::Resync).unwrap();
        a.flush(FRAME, now, &mut out);
        let sent = sends(&mut out);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].0, sent[0].1.len()), (relay, 1));
        assert!(
            sent[0].1[0].proof.is_some(),
            "what needs a proof goes signed"
        );

        // Two more while it is in flight: nothing goes.
        let second = a.queue_own(relay, b, &Request::Lookup("2".into())).unwrap();
        let third = a.queue_own(relay, b, &Request::Lookup("3".into())).unwrap();
        a.flush(FRAME, now, &mut out);
        assert!(sends(&mut out).is_empty(), "one bundle in flight per hop");

        // Its answer settles the first and sends the other two as one.
        let (via, _, slots) = sent.into_iter().next().unwrap();
        let answer = Response::Relayed(vec![Response::Location(None)]);
        a.on_bundle_result(via, slots, Ok(answer), LEASE, FRAME, now, &mut out);
        let answered = owns(&out);
        assert_eq!(answered.len(), 1);
        assert_eq!(answered[0].0, first);
        assert!(matches!(answered[0].1, Ok(Response::Location(None))));
        let next = sends(&mut out);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].1.len(), 2, "what queued goes as one bundle");
        assert_eq!(next[0].2, vec![Slot::Own(second), Slot::Own(third)]);

        // Answers are matched in order; a relay's refusal is an error.
        out.clear();
        let (via, _, slots) = next.into_iter().next().unwrap();
        let answer = Response::Relayed(vec![
            Response::Location(None),
            Response::RelayFailed("full".into()),
        ]);
        a.on_bundle_result(via, slots, Ok(answer), LEASE, FRAME, now, &mut out);
        let answered = owns(&out);
        assert_eq!(answered[0].0, second);
        assert!(answered[0].1.is_ok());
        assert!(matches!(&answered[1], (id, Err(why)) if *id == third && why == "full"));
    }

    #[test]
    fn a_relay_failure_routes_around_it_until_its_lease_would_lapse() {
        let (key, _) = host();
        let mut a = Relays::new(key);
        let (relay, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut out = Effects::new();
        assert_eq!(a.next_hop(b, relay, t0), relay, "the overlay's hop");

        let ids = [
            a.queue_own(relay, b, &Request::Lookup("1".into())).unwrap(),
            a.queue_own(relay, c, &Request::Lookup("2".into())).unwrap(),
        ];
        a.flush(FRAME, t0, &mut out);
        let (via, _, slots) = sends(&mut out).into_iter().next().unwrap();
        let t1 = t0 + Duration::from_secs(3);
        a.on_bundle_result(
            via,
            slots,
            Err("timeout".into()),
            LEASE,
            FRAME,
            t1,
            &mut out,
        );

        // Both requests fail (their callers retry them as a broken link's).
        let answered = owns(&out);
        assert_eq!(answered.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
        assert!(answered.iter().all(|(_, a)| a.is_err()));
        // Until the relay's lease would have lapsed, requests go directly.
        assert_eq!(a.next_hop(b, relay, t1), b);
        assert_eq!(
            a.next_hop(c, relay, t1 + LEASE - Duration::from_millis(1)),
            c
        );
        assert_eq!(
            a.next_hop(b, relay, t1 + LEASE),
            relay,
            "then it is tried again"
        );
        // A hop the overlay plans directly is never changed.
        assert_eq!(a.next_hop(relay, relay, t1), relay);
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

    #[test]
    fn a_contact_forwards_handles_and_refuses_and_answers_in_order() {
        let ((ka, a_id), (kr, r_id), (kb, b_id)) = (host(), host(), host());
        let now = Instant::now();
        let mut a = Relays::new(ka.clone());
        let mut r = Relays::new(kr.clone());
        let mut out = Effects::new();

        // A bundles a request for B and one for the contact itself.
        a.queue_own(r_id, b_id, &Request::Lookup("for b".into()));
        a.queue_own(r_id, r_id, &Request::Lookup("for r".into()));
        a.flush(FRAME, now, &mut out);
        let (_, mut items, _) = sends(&mut out).into_iter().next().unwrap();
        assert!(items.iter().all(|r| r.proof.is_none()), "lookups go bare");
        // Two more that the contact must refuse: for a stranger, and one
        // relayed already (another origin). Whether a request needed its
        // origin's proof is for its destination to check.
        let stranger = PeerId::random();
        let mut for_stranger = items[0].clone();
        for_stranger.to = stranger.to_bytes();
        let mut twice = items[0].clone();
        twice.origin = b_id.to_bytes();
        items.extend([for_stranger, twice]);

        let m = membership_with(r_id, &[&ka, &kb]);
        let for_us = r.on_relay(a_id, items, "to a", &m, FRAME, &mut out);
        assert_eq!(for_us.len(), 1, "the request for the contact is its own");
        assert_eq!(for_us[0].origin, a_id);
        assert!(matches!(&for_us[0].request, Request::Lookup(id) if id == "for r"));
        assert!(
            matches!(out[..], [Effect::Forwarded { from, to }] if from == a_id && to == b_id),
            "{out:?}"
        );
        out.clear();

        // The contact answers its own request, then B answers: A's bundle
        // is answered once, in A's order.
        r.settle(for_us[0].slot, Ok(Response::RecordsOk), &mut out);
        assert!(out.is_empty(), "B has not answered yet");
        r.flush(FRAME, now, &mut out);
        let (via, fwd, slots) = sends(&mut out).into_iter().next().unwrap();
        assert_eq!((via, fwd.len()), (b_id, 1));
        let answer = Response::Relayed(vec![Response::Location(None)]);
        r.on_bundle_result(via, slots, Ok(answer), LEASE, FRAME, now, &mut out);
        let Some(Effect::Answer {
            peer,
            channel,
            response: Response::Relayed(rs),
        }) = out.pop()
        else {
            panic!("no answer to A: {out:?}");
        };
        assert_eq!((peer, channel), (a_id, "to a"));
        let why = |r: &Response| match r {
            Response::RelayFailed(why) => why.clone(),
            _ => String::new(),
        };
        assert!(matches!(rs[0], Response::Location(None)));
        assert!(matches!(rs[1], Response::RecordsOk));
        assert_eq!(why(&rs[2]), "destination is not a member");
        assert_eq!(why(&rs[3]), "relayed requests are relayed once");
        assert_eq!(rs.len(), 4);
    }

    #[test]
    fn an_origin_signs_what_needs_its_proof_and_nothing_else() {
        let ((ka, a_id), (kr, r_id), (_, b_id)) = (host(), host(), host());
        let mut a = Relays::new(ka.clone());
        let mut out = Effects::new();
        a.queue_own(r_id, b_id, &Request::Lookup("1".into()));
        a.queue_own(r_id, b_id, &Request::Resync);
        a.queue_own(r_id, b_id, &Request::Lookup("2".into()));
        a.queue_own(r_id, b_id, &Request::Resync);
        a.flush(FRAME, Instant::now(), &mut out);
        let (_, items, _) = sends(&mut out).into_iter().next().unwrap();
        let signed: Vec<bool> = items.iter().map(|r| r.proof.is_some()).collect();
        assert_eq!(signed, [false, true, false, true]);
        // The two signed together verify at their destination.
        let m = membership_with(b_id, &[&ka, &kr]);
        for r in &items {
            let (origin, _) = open(&m, r_id, r).unwrap();
            assert_eq!(origin, a_id);
        }
    }

    #[test]
    fn a_full_queue_refuses_and_a_bundle_of_refusals_is_answered_at_once() {
        let ((ka, a_id), (kr, r_id), (kb, b_id)) = (host(), host(), host());
        let now = Instant::now();
        let mut a = Relays::new(ka.clone());
        let mut r = Relays::new(kr);
        let mut out = Effects::new();
        // Frames of 8 KB: the queue to B holds 32 KB, 8 KB of it A's.
        let frame = 8 * 1024;
        for i in 0..40 {
            a.queue_own(r_id, b_id, &Request::Lookup(format!("{i:0>200}")));
        }
        a.flush(FRAME, now, &mut out);
        let (_, items, _) = sends(&mut out).into_iter().next().unwrap();
        let m = membership_with(r_id, &[&ka, &kb]);
        // B's bundle is in flight so that A's requests queue behind it.
        let queued = Item {
            r: item(1),
            slot: Slot::Own(999),
            sender: None,
            sign: true,
        };
        r.push(b_id, queued);
        r.flush(frame, now, &mut out);
        out.clear();
        assert!(r
            .on_relay(a_id, items, "to a", &m, frame, &mut out)
            .is_empty());
        let forwarded = out
            .iter()
            .filter(|e| matches!(e, Effect::Forwarded { .. }))
            .count();
        let refused = out
            .iter()
            .filter(|e| matches!(e, Effect::Refused { .. }))
            .count();
        // Each request counts 200 + a few bytes + 560: ten fit in A's share.
        assert_eq!((forwarded, refused), (10, 30));

        // A bundle whose every request is refused is answered at once.
        out.clear();
        let mut bad = item(1);
        bad.to = b"not an id".to_vec();
        r.on_relay(a_id, vec![bad], "again", &m, frame, &mut out);
        assert!(matches!(
            &out[..],
            [Effect::Answer { channel: "again", response: Response::Relayed(rs), .. }]
                if matches!(&rs[..], [Response::RelayFailed(w)] if w == "bad destination id")
        ));
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
        let req = Request::Resync;

        let good = relayed(&a, a_id, dest_id, &req);
        let (origin, got) = open(&m, relay_id, &good).unwrap();
        assert_eq!(origin, a_id);
        assert!(matches!(got, Request::Resync));

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
            .contains("unsigned"));
        let mut misplaced = good.clone();
        if let Some(p) = misplaced.proof.as_mut() {
            p.index = 0;
        }
        assert!(open(&m, relay_id, &misplaced)
            .unwrap_err()
            .contains("signature"));

        // A lookup needs no proof (its answer is the same for any member
        // that asks, and its relay could forge the answer anyway); one
        // that carries a proof is still checked.
        let lookup = Request::Lookup("x".into());
        let bare = Relayed {
            proof: None,
            ..relayed(&a, a_id, dest_id, &lookup)
        };
        let (origin, got) = open(&m, relay_id, &bare).unwrap();
        assert_eq!(origin, a_id);
        assert!(matches!(got, Request::Lookup(id) if id == "x"));
        let mut altered = relayed(&a, a_id, dest_id, &lookup);
        altered.inner = postcard::to_allocvec(&Request::Lookup("y".into())).unwrap();
        assert!(open(&m, relay_id, &altered)
            .unwrap_err()
            .contains("signature"));
        let from_stranger = Relayed {
            origin: s_id.to_bytes(),
            ..bare.clone()
        };
        assert!(open(&m, relay_id, &from_stranger)
            .unwrap_err()
            .contains("not a member"));

        // Joins are never taken relayed.
        let join = relayed(&a, a_id, dest_id, &Request::Join(vec![]));
        assert!(open(&m, relay_id, &join)
            .unwrap_err()
            .contains("cannot be relayed"));
    }
}
