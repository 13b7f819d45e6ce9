//! The swarm's side of the loop: its events translated into calls of the
//! concerns, listening, and every dial of the loop's own (through the
//! dial gate).

use libp2p::{gossipsub, identify, swarm::SwarmEvent, Multiaddr, PeerId};
use tokio::sync::oneshot;

use super::{members, EventLoop};
use crate::{behaviour::BehaviourEvent, error::ListenError};

impl EventLoop {
    /// Dials a member at its record's addresses unless connected or dialling.
    /// A failed dial fails the requests waiting for it, which say why.
    pub(super) fn dial_member(&mut self, host: PeerId) {
        if self.swarm.is_connected(&host) {
            return;
        }
        let addrs = self
            .members
            .membership()
            .get(&host)
            .map(|m| m.addrs.clone())
            .unwrap_or_default();
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(host)
            .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .build();
        match self.dial(opts) {
            Ok(()) => tracing::trace!(%host, "dialling a member"),
            Err(e) => tracing::trace!(%host, error = %e, "not dialled"),
        }
    }

    /// Dials, letting the dial through the gate (see `dial_gate`): every
    /// dial of the loop's own goes through here.
    pub(super) fn dial(
        &mut self,
        opts: libp2p::swarm::dial_opts::DialOpts,
    ) -> std::result::Result<(), libp2p::swarm::DialError> {
        let id = opts.connection_id();
        self.swarm.behaviour_mut().gate.allow(id);
        let r = self.swarm.dial(opts);
        if r.is_err() {
            self.swarm.behaviour_mut().gate.forget(id);
        }
        r
    }

    pub(super) fn listen(
        &mut self,
        addr: Multiaddr,
        reply: oneshot::Sender<Result<Vec<Multiaddr>, ListenError>>,
    ) {
        if let Some(reason) = crate::behaviour::busy_tcp_port(&addr) {
            let _ = reply.send(Err(ListenError::Listen {
                addr: addr.to_string(),
                source: crate::Cause::msg(reason),
            }));
            return;
        }
        match self.swarm.listen_on(addr.clone()) {
            Ok(id) => {
                self.listener_ids.push(id);
                self.listens.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(ListenError::Listen {
                    addr: addr.to_string(),
                    source: transport_cause(e),
                }));
            }
        }
    }

    pub(super) fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.sync_config();
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(ev)) => self.on_rpc(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => self.on_gossip(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            })) => self.on_identify(peer_id, connection_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(
                libp2p::kad::Event::OutboundQueryProgressed {
                    id,
                    result: libp2p::kad::QueryResult::GetClosestPeers(r),
                    ..
                },
            )) => {
                let peers = match r {
                    Ok(ok) => ok.peers,
                    Err(libp2p::kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let local = self.local();
                let peers = peers
                    .into_iter()
                    .map(|p| p.peer_id)
                    .filter(|p| *p != local)
                    .collect();
                self.on_kad_closest(id, peers);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(_)) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Identify(_)) => {}
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                let full = address.with_p2p(self.local()).unwrap_or_else(|a| a);
                if let Some(reply) = self.listens.remove(&listener_id) {
                    let _ = reply.send(Ok(vec![full]));
                }
                self.announce();
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                if let Some(reply) = self.listens.remove(&listener_id) {
                    let _ = reply.send(Err(ListenError::Listen {
                        addr: format!("{addresses:?}"),
                        source: match reason {
                            Ok(()) => crate::Cause::msg("listener closed"),
                            Err(e) => crate::Cause::new(e),
                        },
                    }));
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(reply) = self.listens.remove(&listener_id) {
                    let _ = reply.send(Err(ListenError::Listen {
                        addr: String::new(),
                        source: crate::Cause::new(error),
                    }));
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            } => {
                crate::shared::bump(&self.shared.counters.connections_opened);
                // A new link gets a grace before the budget may close it.
                self.touch_new(peer_id);
                self.on_connected(peer_id, connection_id)
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                connection_id,
                ..
            } => {
                self.on_connection_closed(connection_id);
                if num_established == 0 {
                    self.publishes.unready();
                    self.on_disconnected(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => self.on_dial_failed(connection_id, peer_id, error),
            other => tracing::trace!(event = ?other, "swarm event"),
        }
    }

    pub(super) fn on_gossip(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message { message, .. } => {
                if message.topic == members::topic().hash() {
                    self.on_member_gossip(&message.data);
                } else {
                    self.on_channel_message(message);
                }
            }
            gossipsub::Event::Subscribed { .. } => self.retry_parked(),
            _ => {}
        }
    }
}

/// A readable reason from a transport error.
fn transport_cause<E: std::error::Error + Send + Sync + 'static>(
    e: libp2p::TransportError<E>,
) -> crate::Cause {
    match e {
        libp2p::TransportError::MultiaddrNotSupported(a) => crate::Cause::msg(format!(
            "address {a} is not supported by this host's transports"
        )),
        libp2p::TransportError::Other(e) => crate::Cause::new(e),
    }
}
