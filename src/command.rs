//! Commands from the handles to the event loop, each with its reply channel.

use std::sync::{atomic::AtomicU64, Arc};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::Result,
    message::{ChannelMessage, Payload},
};

/// Where a peer lives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Location {
    /// The host that holds the peer.
    pub host: PeerId,
    /// Addresses of that host.
    pub addrs: Vec<Multiaddr>,
    /// Network round trips this answer took: 0 when it came from this
    /// host's own peers, directory share or cache.
    pub round_trips: u32,
}

/// A live host of the network, as this host knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The host's id.
    pub host: PeerId,
    /// Its addresses.
    pub addrs: Vec<Multiaddr>,
    /// Channels it subscribes to.
    pub channels: Vec<String>,
    /// Queue groups it has members of.
    pub queues: Vec<crate::QueueGroup>,
    /// Whether this host has an open connection to it.
    pub connected: bool,
    /// Whether the relay overlay keeps a link to it (this host reaches
    /// other hosts through a neighbour once it is not linked to them);
    /// `false` for every host while the network is too small to relay
    /// ([`HostConfig::relay_above`](crate::HostConfig::relay_above)).
    pub neighbour: bool,
}

/// Addresses as their text.
fn addr_texts(addrs: &[Multiaddr]) -> Vec<String> {
    addrs.iter().map(|a| a.to_string()).collect()
}

/// Serialized with the host id and the addresses as their text (the
/// client gateway's `members` and the node's `/admin/members`).
impl serde::Serialize for HostInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("HostInfo", 6)?;
        st.serialize_field("host", &self.host.to_string())?;
        st.serialize_field("addrs", &addr_texts(&self.addrs))?;
        st.serialize_field("channels", &self.channels)?;
        st.serialize_field("queues", &self.queues)?;
        st.serialize_field("connected", &self.connected)?;
        st.serialize_field("neighbour", &self.neighbour)?;
        st.end()
    }
}

/// Serialized with the host id and the addresses as their text (the
/// client gateway's `find`).
impl serde::Serialize for Location {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Location", 3)?;
        st.serialize_field("host", &self.host.to_string())?;
        st.serialize_field("addrs", &addr_texts(&self.addrs))?;
        st.serialize_field("round_trips", &self.round_trips)?;
        st.end()
    }
}

/// Whether a host has joined others and agrees with them on the membership
/// ([`crate::Host::readiness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Readiness {
    /// Other live hosts this host knows.
    pub members: usize,
    /// The last few digest exchanges (three in a row, the latest within
    /// three heartbeats) showed the other side holding the same records at
    /// the same versions as this host: its membership has converged with
    /// theirs. False while hosts join, leave or lapse, and on a host that
    /// has no other member.
    pub converged: bool,
}

/// The sending half of one subscription.
#[derive(Debug)]
pub(crate) struct SubSink {
    pub id: u64,
    pub tx: mpsc::Sender<ChannelMessage>,
    pub missed: Arc<AtomicU64>,
}

impl crate::core::subscriptions::Subscriber for SubSink {
    fn id(&self) -> u64 {
        self.id
    }

    fn is_gone(&self) -> bool {
        self.tx.is_closed()
    }
}

#[derive(Debug)]
pub(crate) enum Command {
    Listen {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<Vec<Multiaddr>, crate::ListenError>>,
    },
    Join {
        addr: Multiaddr,
        shown: String,
        reply: oneshot::Sender<Result<PeerId, crate::JoinError>>,
    },
    Send(crate::core::send::PendingSend),
    Find {
        id: String,
        reply: oneshot::Sender<Result<Location, crate::FindError>>,
    },
    Subscribe {
        channel: String,
        /// A queue group's name: the sink is one of its members.
        group: Option<String>,
        sink: SubSink,
        reply: oneshot::Sender<Result<(), crate::SubscribeError>>,
    },
    Unsubscribe {
        channel: String,
        /// The queue group, for a member of one.
        group: Option<String>,
        /// `None` ends every subscription on the channel.
        id: Option<u64>,
    },
    Publish {
        channel: String,
        payload: Payload,
        reply: oneshot::Sender<Result<(), crate::PublishError>>,
    },
    Broadcast {
        from: std::sync::Arc<str>,
        /// A pattern of peer ids (a group send); `None` is every peer.
        to: Option<String>,
        payload: Payload,
        reply: oneshot::Sender<Result<crate::BroadcastReport, crate::BroadcastError>>,
    },
    Members {
        reply: oneshot::Sender<Vec<HostInfo>>,
    },
    Readiness {
        reply: oneshot::Sender<Readiness>,
    },
    /// Where a local peer's registration stands (`Peer::registered`).
    Registration {
        id: String,
        reply: oneshot::Sender<RegStatus>,
    },
    CachedLocation {
        id: String,
        reply: oneshot::Sender<Option<PeerId>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Where a local peer's registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegStatus {
    /// Every holder resolves the id to this host.
    Registered,
    /// Not yet (not sent, in flight, or contested).
    Pending,
    /// Another live host holds the id.
    Lost(PeerId),
    /// The peer is not on this host.
    Removed,
}
