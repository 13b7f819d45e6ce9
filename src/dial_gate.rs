//! A dial gate for relaying networks.
//!
//! Kademlia dials on its own: its bootstrap (run by every joining host
//! while its routing table is small, and not switchable off in kad 0.49)
//! and its queries contact twenty or more hosts each. In a network that
//! relays through the overlay ([`crate::overlay`]) those links are not
//! wanted: each costs a noise handshake and stream set-up on both sides and
//! is closed again by the link budget a few seconds later. When the gate is
//! closed, outbound dials are allowed only to the overlay's neighbours and
//! for dials the event loop made itself (registered by connection id);
//! others are denied, which Kademlia takes as an unreachable host for that
//! query (its routing table is left as it was).

use std::{
    collections::HashSet,
    convert::Infallible,
    task::{Context, Poll},
};

use libp2p::{
    core::{transport::PortUse, Endpoint},
    swarm::{
        dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId,
};

/// Most dials of our own remembered while pending (bounded; the oldest
/// are not tracked further, so such a dial is denied rather than memory
/// growing).
const MAX_PENDING: usize = 4096;

/// Denies outbound dials the event loop did not make, to hosts that are
/// not overlay neighbours, while the network relays.
#[derive(Debug, Default)]
pub(crate) struct Behaviour {
    /// `None`: open (the network is small enough to talk directly).
    neighbours: Option<HashSet<PeerId>>,
    /// Connection ids of dials the event loop made.
    ours: HashSet<ConnectionId>,
}

/// The dial was not made by the event loop and is not to a neighbour.
#[derive(Debug)]
struct NotAnOverlayLink;

impl std::fmt::Display for NotAnOverlayLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not an overlay link (the network relays)")
    }
}

impl std::error::Error for NotAnOverlayLink {}

impl Behaviour {
    /// Opens the gate (`None`) or closes it to all but these neighbours.
    pub(crate) fn set_neighbours(&mut self, neighbours: Option<HashSet<PeerId>>) {
        self.neighbours = neighbours;
    }

    /// Lets the dial with this connection id through.
    pub(crate) fn allow(&mut self, id: ConnectionId) {
        if self.ours.len() >= MAX_PENDING {
            self.ours.clear();
        }
        self.ours.insert(id);
    }

    /// Forgets a dial that did not start.
    pub(crate) fn forget(&mut self, id: ConnectionId) {
        self.ours.remove(&id);
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let ours = self.ours.remove(&id);
        match &self.neighbours {
            Some(n) if !ours && !peer.is_some_and(|p| n.contains(&p)) => {
                Err(ConnectionDenied::new(NotAnOverlayLink))
            }
            _ => Ok(vec![]),
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
