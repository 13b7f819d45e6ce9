//! Requests through the relay overlay (see [`crate::overlay`]).
//!
//! Above [`HostConfig::relay_above`](crate::HostConfig::relay_above) hosts,
//! a request for a host that is neither a neighbour nor linked already goes
//! to the contact in the destination's group, wrapped in a
//! [`Relayed`] that the origin signs with its host key (over the
//! destination and the request bytes). The contact forwards it unchanged
//! over its own link, and passes the answer back. The destination checks
//! the signature against the origin's membership record and then handles
//! the request exactly as if the origin had sent it directly: directory
//! entries still point only to the host that signed them, batch dedup is
//! per origin.
//!
//! What a relay can do: delay or drop a request, or answer it falsely
//! (answers are not signed: a relay is a member, trusted as far as any
//! member's answer to a lookup is). What it cannot do: forge, alter or
//! redirect a request. A member relay could replay a request it carried;
//! directory operations carry the origin's epoch and a replayed delivery
//! batch is answered from the destination's memory of the origin's last
//! batch, but an older batch replayed would be delivered again (no
//! per-origin replay window yet).

use std::time::{Duration, Instant};

use libp2p::{request_response::ResponseChannel, PeerId};

use super::{EventLoop, Pending};
use crate::{
    membership::Membership,
    overlay::Overlay,
    protocol::{Relayed, Request, Response},
};

/// The overlay is recomputed at most this often while the membership changes.
const RECOMPUTE_EVERY: Duration = Duration::from_millis(500);
/// Most neighbours dialled per heartbeat.
const DIALS_PER_ROUND: usize = 32;

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
    if !member
        .key
        .verify(&Relayed::signed_bytes(&r.to, &r.inner), &r.signature)
    {
        return Err(format!("signature of origin {origin} does not verify"));
    }
    let req: Request = crate::protocol::decode_frame(&r.inner).map_err(|e| e.to_string())?;
    if !req.is_relayable() {
        return Err("this request cannot be relayed".into());
    }
    Ok((origin, req))
}

/// The overlay as last computed, and for which membership.
#[derive(Debug, Default)]
pub(crate) struct OverlayState {
    current: Option<Overlay>,
    version: Option<u64>,
    next_compute: Option<Instant>,
}

impl EventLoop {
    /// The overlay, if the network is large enough to relay.
    pub(super) fn overlay(&self) -> Option<&Overlay> {
        let above = self.shared.with_config(|c| c.relay_above);
        if self.membership.len() <= above {
            return None;
        }
        self.overlay.current.as_ref()
    }

    /// Recomputes the overlay after a membership change (at most every
    /// [`RECOMPUTE_EVERY`]: during a join wave the membership changes many
    /// times a second, and a slightly stale overlay only costs a direct
    /// request or an extra dial).
    pub(super) fn refresh_overlay(&mut self, now: Instant) {
        let version = self.membership.version();
        if self.overlay.version == Some(version)
            || self.overlay.next_compute.is_some_and(|t| now < t)
        {
            return;
        }
        let above = self.shared.with_config(|c| c.relay_above);
        let was_relaying = self.overlay.current.is_some();
        if self.membership.len() <= above {
            self.overlay.current = None;
        } else {
            self.overlay.current = Some(Overlay::new(self.membership.keys(), self.local()));
        }
        // Membership records travel on a gossipsub topic of every host in a
        // small network; a relaying one leaves it (each host in one mesh
        // of all costs heartbeats and IHAVE gossip on every link) and
        // spreads records by digest anti-entropy alone.
        let relaying = self.overlay.current.is_some();
        if relaying != was_relaying {
            let gs = &mut self.swarm.behaviour_mut().gossipsub;
            let topic = super::members::topic();
            if relaying {
                gs.unsubscribe(&topic);
            } else if let Err(e) = gs.subscribe(&topic) {
                tracing::warn!(error = %e, "cannot subscribe to the membership topic");
            }
        }
        let neighbours = self
            .overlay
            .current
            .as_ref()
            .map(|o| o.neighbours().copied().collect());
        self.swarm.behaviour_mut().gate.set_neighbours(neighbours);
        self.overlay.version = Some(version);
        self.overlay.next_compute = Some(now + RECOMPUTE_EVERY);
    }

    /// Dials neighbours that are not linked (a few per heartbeat), so the
    /// overlay's links exist before requests need them.
    pub(super) fn keep_neighbours(&mut self) {
        let Some(o) = self.overlay() else {
            return;
        };
        let missing: Vec<PeerId> = o
            .neighbours()
            .filter(|h| !self.swarm.is_connected(h))
            .take(DIALS_PER_ROUND)
            .copied()
            .collect();
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
        self.overlay().map_or(host, |o| o.next_hop(host))
    }

    /// Where a request for `host` goes: itself, or through a relay.
    pub(super) fn route(&self, host: PeerId, req: Request) -> (PeerId, Request) {
        if !req.is_relayable() {
            return (host, req);
        }
        let via = self.next_hop(host);
        if via == host {
            return (host, req);
        }
        match self.wrap(host, &req) {
            Some(r) => (via, Request::Relay(r)),
            None => (host, req),
        }
    }

    /// Signs a request for relaying to `to`.
    fn wrap(&self, to: PeerId, req: &Request) -> Option<Relayed> {
        let inner = postcard::to_allocvec(req).ok()?;
        let to = to.to_bytes();
        let signature = self
            .key
            .sign(&Relayed::signed_bytes(&to, &inner))
            .inspect_err(|e| tracing::warn!(error = %e, "cannot sign a relayed request"))
            .ok()?;
        Some(Relayed {
            origin: self.local().to_bytes(),
            to,
            inner,
            signature,
        })
    }

    /// An inbound relayed request from `peer`: handled here if it is for
    /// this host, else forwarded (first hop only) and answered when the
    /// destination answers.
    pub(super) fn on_relay(
        &mut self,
        peer: PeerId,
        r: Relayed,
        channel: ResponseChannel<Response>,
    ) {
        let to = PeerId::from_bytes(&r.to).ok();
        if to == Some(self.local()) {
            let response = match open(&self.membership, peer, &r) {
                Ok((origin, req)) => self.on_request(origin, req),
                Err(why) => {
                    tracing::debug!(%peer, %why, "relayed request refused");
                    Response::RelayFailed(why)
                }
            };
            self.answer(peer, channel, response);
            return;
        }
        let refused = match to {
            None => Some("bad destination id"),
            Some(_) if r.origin != peer.to_bytes() => Some("relayed requests are relayed once"),
            Some(to) if !self.membership.contains(&to) => Some("destination is not a member"),
            Some(_) if !self.membership.contains(&peer) => Some("origin is not a member"),
            Some(_) => None,
        };
        match (refused, to) {
            (None, Some(to)) => {
                crate::shared::bump(&self.shared.counters.relayed);
                self.touch(to);
                self.dial_member(to);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_request(&to, Request::Relay(r));
                self.requests.insert(id, Pending::Relay { to, channel });
            }
            (why, _) => {
                let why = why.unwrap_or("refused").to_string();
                self.answer(peer, channel, Response::RelayFailed(why));
            }
        }
    }

    /// The destination's answer (or the failure to reach it) goes back to
    /// the origin of a forwarded request.
    pub(super) fn on_relay_result(
        &mut self,
        to: PeerId,
        channel: ResponseChannel<Response>,
        result: std::result::Result<Response, libp2p::request_response::OutboundFailure>,
    ) {
        let response = result.unwrap_or_else(|e| Response::RelayFailed(format!("{to}: {e}")));
        self.answer(to, channel, response);
    }

    /// Sends `response` on `channel`.
    pub(super) fn answer(
        &mut self,
        peer: PeerId,
        channel: ResponseChannel<Response>,
        response: Response,
    ) {
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
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use libp2p::identity::Keypair;

    use super::*;
    use crate::membership::{verify, HostRecord};

    /// A membership of `local` that knows the hosts of `keys`.
    fn membership_with(local: PeerId, keys: &[&Keypair]) -> Membership {
        let mut m = Membership::new(local);
        for k in keys {
            let r = HostRecord {
                public_key: k.public().encode_protobuf(),
                epoch: 1,
                seq: 1,
                addrs: vec![],
                channels: vec![],
                leaving: false,
            };
            let v = verify(&r.sign(k).unwrap()).unwrap();
            m.apply(&v, Instant::now(), Duration::from_secs(1));
        }
        m
    }

    fn relayed(signer: &Keypair, origin: PeerId, to: PeerId, req: &Request) -> Relayed {
        let inner = postcard::to_allocvec(req).unwrap();
        let to = to.to_bytes();
        let signature = signer.sign(&Relayed::signed_bytes(&to, &inner)).unwrap();
        Relayed {
            origin: origin.to_bytes(),
            to,
            inner,
            signature,
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

        // Joins are never taken relayed.
        let join = relayed(&a, a_id, dest_id, &Request::Join(vec![]));
        assert!(open(&m, relay_id, &join)
            .unwrap_err()
            .contains("cannot be relayed"));
    }
}
