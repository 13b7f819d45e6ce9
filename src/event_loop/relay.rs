//! The overlay and relayed requests, between the swarm and the core: the
//! overlay's mode and links (decided by [`crate::core::neighbours`]) and
//! the relay queues (decided by [`crate::core::relay`], which explains the
//! protocol and what a relay can and cannot do).

use std::time::Instant;

use libp2p::{request_response::OutboundFailure, PeerId};

use super::{EventLoop, Pending, ReqKey};
use crate::{
    core::relay::Effect,
    overlay::Overlay,
    protocol::{Relayed, Request, Response},
    rpc_stream::Reply,
};

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
    /// or a neighbour (or the network is small), else its relay, unless
    /// that relay failed lately.
    pub(super) fn next_hop(&self, host: PeerId) -> PeerId {
        if self.swarm.is_connected(&host) {
            return host;
        }
        let planned = self.overlay().map_or(host, |o| o.next_hop(host));
        self.relays.next_hop(host, planned, Instant::now())
    }

    /// Queues one of our requests for `host` on the bundle to `via`; its
    /// answer comes back under the returned key. `None` if it could not be
    /// encoded (the caller sends it directly).
    pub(super) fn relay_own(&mut self, via: PeerId, host: PeerId, req: &Request) -> Option<ReqKey> {
        self.relays.queue_own(via, host, req).map(ReqKey::Relayed)
    }

    /// Sends the bundles of the requests queued in this loop turn.
    pub(super) fn flush_dirty_relays(&mut self) {
        let max_frame = self.shared.with_config(|c| c.max_frame_size);
        let mut out = Vec::new();
        self.relays.flush(max_frame, Instant::now(), &mut out);
        self.carry_out_relays(out);
    }

    /// Inbound relayed requests from `peer`: those for this host are
    /// handled here as if their origin had sent them; the core forwards
    /// the rest and answers `channel` once every request has an answer.
    pub(super) fn on_relay(&mut self, peer: PeerId, items: Vec<Relayed>, channel: Reply) {
        let max_frame = self.shared.with_config(|c| c.max_frame_size);
        let mut out = Vec::new();
        let for_us = self.relays.on_relay(
            peer,
            items,
            channel,
            self.members.membership(),
            max_frame,
            &mut out,
        );
        for r in for_us {
            let response = self.on_request(r.origin, r.request);
            self.relays.settle(r.slot, Ok(response), &mut out);
        }
        self.carry_out_relays(out);
    }

    /// A bundle sent to `via` was answered (or failed).
    pub(super) fn on_bundle_result(
        &mut self,
        via: PeerId,
        slots: Vec<crate::core::relay::Slot>,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        let (lease, max_frame) = self.shared.with_config(|c| (c.lease, c.max_frame_size));
        let mut out = Vec::new();
        self.relays.on_bundle_result(
            via,
            slots,
            result.map_err(|e| e.to_string()),
            lease,
            max_frame,
            Instant::now(),
            &mut out,
        );
        self.carry_out_relays(out);
    }

    /// Does what the relay queues decided.
    fn carry_out_relays(&mut self, out: Vec<Effect<Reply>>) {
        for effect in out {
            match effect {
                Effect::Send { via, items, slots } => {
                    self.touch(via);
                    self.dial_member(via);
                    crate::shared::bump(&self.shared.counters.relay_bundles);
                    let key = self.send_request(via, Request::Relay(items));
                    self.requests
                        .insert(key, Pending::RelayBundle { via, slots });
                }
                Effect::Own { id, answer } => {
                    let Some(p) = self.requests.remove(&ReqKey::Relayed(id)) else {
                        continue;
                    };
                    // A relay that could not pass the request on fails it
                    // as a broken link would (those are retried).
                    let result = answer.map_err(|why| {
                        OutboundFailure::Io(std::io::Error::other(format!("relay: {why}")))
                    });
                    self.on_response(p, result);
                }
                Effect::Answer {
                    peer,
                    channel,
                    response,
                } => self.answer(peer, channel, response),
                Effect::Forwarded { from, to } => {
                    crate::shared::bump(&self.shared.counters.relayed);
                    tracing::trace!(peer = %from, %to, "forwarding a relayed request");
                    self.touch(to);
                }
                Effect::Refused { from, to } => {
                    crate::shared::bump(&self.shared.counters.relay_refused);
                    tracing::debug!(peer = %from, %to, "relay full; refusing a request");
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
