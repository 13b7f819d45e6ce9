#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

//! # Module map
//!
//! The handles, what applications use:
//! - `host.rs`: [`Host`], the cheap cloneable handle; `peer.rs`: [`Peer`];
//!   `subscription.rs`: [`Subscription`]; `message.rs`: payloads and
//!   received messages; `config.rs`: [`HostConfig`]; `error.rs`: [`Error`].
//! - `command.rs`: the commands the handles send to the event loop, each
//!   with its reply channel; `shared.rs`: what the handles and the loop
//!   share (the registry, counters, the lanes).
//! - `inbox.rs`: the local peers' bounded inboxes and the registry;
//!   `send_lane.rs`: sends that skip the loop once a link task is known;
//!   `publish_lane.rs`: publishes handed to the loop in batches;
//!   `find_cache.rs`: recent `find` answers, read without the loop;
//!   `request.rs`: request/reply correlation.
//!
//! The protocol's decisions, without I/O (`core/`, tested with a fake
//! clock): `outbox` (a queue per destination), `registration`, `lookup`,
//! `locations` (known and claimed locations of peers),
//! `members` (one host's membership protocol: its record, heartbeat
//! digests, leases, joins), `membership` (signed records, counters,
//! leases), `liveness` (heartbeats, digest targets, probes), `neighbours`
//! (the overlay's links), `relay` (relayed requests' bundles), `messaging`
//! (direct messages' queues and paths), `subscriptions` (which local
//! subscribers a publish reaches), `publish` (channel publishes waiting
//! for the mesh, batched), `queue_groups` (who takes a queue group's
//! publish), `broadcasts` (reports, broadcasts taken), `ownership` (ids
//! another host holds, registration checks), `redial`, `budget`
//! (the link budget), `batch_memory`, `send`;
//! and beside it, as pure: `directory.rs` (placement by XOR distance and
//! the holder's store), `overlay.rs` (the relay overlay), `beat_chain.rs`
//! (heartbeat counters only their host can raise), `relay_proof.rs` (one
//! signature per relay bundle), `channel_name.rs` (names, wildcards, topics),
//! `queue_group.rs` (the order in which a group's hosts are tried).
//!
//! The I/O:
//! - `event_loop/`: the task that owns the libp2p swarm, feeds the core and
//!   carries out what it returns: `mod.rs` the state and the `select!`;
//!   `commands.rs`, `swarm.rs` and `requests.rs` the translation from the
//!   handles, the swarm and other hosts; one file per concern besides.
//! - `behaviour.rs`: the libp2p behaviour and transports; `dial_gate.rs`:
//!   which dials a relaying host accepts; `network_key.rs`: closed networks;
//!   `link_delay.rs`: simulated latency on the memory transport.
//! - `delivery/`: direct messages over long-lived streams (a link task per
//!   destination, a reader per inbound stream) and into local inboxes;
//!   `rpc_stream/`: overlay requests over long-lived streams.
//! - `protocol.rs`: the wire types and the size-limited codec.
//! - `broadcast.rs`: broadcast and group sends.
//! - `gateway/` (feature `gateway`): WebSocket clients in any language.
//! - `testing/` (feature `testing`), `fuzzing.rs` (feature `fuzzing`):
//!   helpers for tests, benchmarks, the simulator and the fuzz targets;
//!   `testing/model.rs` is a discrete-event model that runs the core's
//!   membership, registration and lookup for thousands of hosts in
//!   simulated time.

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
mod message;
mod metered;
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
pub use error::{
    BroadcastError, Cause, Closed, CreateError, DecodeError, EncodeError, Error, FindError,
    JoinError, ListenError, PublishError, Result, SendError, SubscribeError,
};
#[cfg(feature = "gateway")]
pub use gateway::{
    decode_request, Gateway, GatewayConfig, Op as ClientOp, Page, Refusal,
    Request as ClientRequest, TlsIdentity, TokenLimits, Tokens, PROTOCOL as CLIENT_PROTOCOL,
};
pub use host::{parse_address, Host, MAX_ID_LEN};
pub use libp2p::{identity::Keypair, Multiaddr, PeerId};
pub use message::{ChannelMessage, Encoding, Message, Payload};
pub use network_key::NetworkKey;
pub use peer::Peer;
#[doc(hidden)]
pub use protocol::PROTOCOL_VERSION;
pub use queue_group::QueueGroup;
pub use request::RequestId;
pub use shared::{Failures, LatencyHistogram, Stats};
pub use subscription::Subscription;
