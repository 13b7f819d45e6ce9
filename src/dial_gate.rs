//! A dial gate: the event loop decides which hosts this host links to.
//!
//! Kademlia dials on its own: its bootstrap (run by every joining host
//! while its routing table is small, and not switchable off in kad 0.49)
//! and its queries contact twenty or more hosts each. Those links are not
//! wanted in a network of any size: each costs a noise handshake and stream
//! set-up on both sides. In a small network they linked every host to
//! every other during the join, long before any request needed them (the
//! join figures are in `docs/PERFORMANCE.md`); in a relaying network
//! ([`crate::overlay`]) the link budget closed them again a few seconds
//! later. So outbound dials are allowed only for dials the event loop made
//! itself (registered by connection id) and to the overlay's neighbours;
//! others are denied, which Kademlia takes as an unreachable host for that
//! query (its routing table is left as it was). The loop dials a member
//! when a request of its own needs it, so links form where requests go.

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
/// not overlay neighbours.
#[derive(Debug, Default)]
pub(crate) struct Behaviour {
    /// The overlay's neighbours (none while the network does not relay).
    neighbours: foldhash::HashSet<PeerId>,
    /// Connection ids of dials the event loop made.
    ours: HashSet<ConnectionId>,
}

/// The dial was not made by the event loop and is not to a neighbour.
#[derive(Debug)]
struct NotOurDial;

impl std::fmt::Display for NotOurDial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a dial of the event loop's, nor to an overlay neighbour")
    }
}

impl std::error::Error for NotOurDial {}

impl Behaviour {
    /// The overlay's neighbours, whose dials pass (empty while the network
    /// does not relay).
    pub(crate) fn set_neighbours(&mut self, neighbours: foldhash::HashSet<PeerId>) {
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
        if ours || peer.is_some_and(|p| self.neighbours.contains(&p)) {
            Ok(vec![])
        } else {
            Err(ConnectionDenied::new(NotOurDial))
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
