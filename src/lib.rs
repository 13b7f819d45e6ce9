#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

//! # Module map
//! - [`Host`] (`host.rs`): the handle; [`Peer`] (`peer.rs`); [`Subscription`].
//! - `core/`: the protocol's decisions without I/O (tested with a fake
//!   clock); the event loop feeds them and carries out what they return.
//! - `event_loop/`: the task that owns the libp2p swarm.
//! - `delivery/`: direct messages between linked hosts over long-lived
//!   streams (a link task per destination, a reader per inbound stream).
//! - `directory.rs`: placement by XOR distance and the holder-side store.
//! - `find_cache.rs`: recent `find` answers, read without the event loop.
//! - `membership.rs`: signed host records, leases, tombstones.
//! - `protocol.rs`: wire types and the size-limited codec.
//! - `inbox.rs`: lazily allocated bounded inboxes and the local registry.
//! - `publish_lane.rs`: channel publishes handed to the event loop in
//!   batches, with room for a bounded number.
//! - `request.rs`: request/reply: correlation ids and the requests waiting
//!   for their replies.

mod beat_chain;
mod behaviour;
mod broadcast;
mod channel_name;
mod command;
mod config;
mod core;
mod delivery;
mod dial_gate;
mod directory;
mod error;
mod event_loop;
mod find_cache;
#[cfg(any(feature = "fuzzing", test))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "gateway")]
mod gateway;
mod host;
mod inbox;
mod link_delay;
mod membership;
mod message;
mod network_key;
mod overlay;
mod peer;
mod protocol;
mod publish_lane;
mod queue_group;
mod relay_proof;
mod request;
mod rpc_stream;
mod send_lane;
mod shared;
mod subscription;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(test)]
mod wire_props;

pub use broadcast::BroadcastReport;
pub use command::{HostInfo, Location, Readiness};
pub use config::{HostConfig, TransportKind};
pub use error::{Error, Result};
#[cfg(feature = "gateway")]
pub use gateway::{
    decode_request, Gateway, GatewayConfig, Op as ClientOp, Page, Refusal,
    Request as ClientRequest, TlsIdentity, TokenLimits, Tokens, PROTOCOL as CLIENT_PROTOCOL,
};
pub use host::{parse_address, Host, MAX_ID_LEN};
pub use libp2p::{Multiaddr, PeerId};
pub use message::{ChannelMessage, Encoding, Message, Payload};
pub use network_key::NetworkKey;
pub use peer::Peer;
#[doc(hidden)]
pub use protocol::PROTOCOL_VERSION;
pub use queue_group::QueueGroup;
pub use request::RequestId;
pub use shared::{Failures, LatencyHistogram, Stats};
pub use subscription::Subscription;
