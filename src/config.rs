//! Host configuration: defaults, presets and what may change at run time.

use std::time::Duration;

use libp2p::{identity::Keypair, Multiaddr};

use crate::error::{Error, Result};

/// Which transports a host speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TransportKind {
    /// TCP and WebSocket (with DNS), for real deployments. Listen on
    /// `/ip4/…/tcp/…` and `/ip4/…/tcp/…/ws`.
    #[default]
    Tcp,
    /// libp2p's in-process memory transport (`/memory/<n>`), for tests and
    /// simulations with many hosts in one process.
    Memory,
}

/// Configuration of a [`crate::Host`].
///
/// Build one with [`HostConfig::default`] and change fields, or with the
/// [`HostConfig::for_tests`] preset (memory transport, fast heartbeats).
/// Fields marked *run time* may be changed on a running host with
/// [`crate::Host::set_config`]; the others are fixed at creation.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HostConfig {
    /// Network id. Hosts with different ids refuse each other; it namespaces
    /// every protocol name (`/distribus/<network_id>/…`).
    pub network_id: String,
    /// The host's identity key. `None` makes a new ed25519 key (and, given
    /// to [`crate::Host::set_config`], keeps the current one).
    pub keypair: Option<Keypair>,
    /// The last epoch (incarnation) of this identity, if known: the host's
    /// epoch is the wall clock at start in nanoseconds, or this plus one if
    /// the clock is not past it. Other hosts take a restarted identity only
    /// at a higher epoch, so a host restarted with the same key on a clock
    /// that stepped back would be ignored (its records and delivery batches
    /// taken for an old incarnation's) until its old epoch lapsed. Keep
    /// [`crate::Host::epoch`] with the key and pass it here on the next
    /// start (`distribus-node --identity` does, in `<identity>.epoch`).
    /// Fixed at creation; 0 by default.
    pub min_epoch: u64,
    /// The addresses other hosts should dial to reach this one, when they
    /// differ from its listen addresses (a namespace or container behind a
    /// forwarded port, NAT, a listener on 0.0.0.0). When set, this host's
    /// signed record carries these instead of its listen addresses, and
    /// identify reports them. Fixed at creation; empty by default.
    pub advertise: Vec<Multiaddr>,
    /// Transports to build.
    pub transport: TransportKind,
    /// A closed network's pre-shared key ([`crate::NetworkKey`]): with it,
    /// only processes that hold the same key can connect at all (on every
    /// transport). `None`: anyone who can reach a listen address may join
    /// (given to [`crate::Host::set_config`]: keep the current key).
    pub network_key: Option<crate::NetworkKey>,
    /// How many hosts hold each directory entry (the closest by XOR distance).
    pub replication: usize,
    /// How often a host raises its heartbeat counter and swaps membership
    /// digests with a few other hosts. Counters reach every host in a few
    /// rounds (O(log hosts)), so keep the lease at about ten of these.
    pub heartbeat_interval: Duration,
    /// A host whose heartbeat counter has not risen for this long is dropped
    /// from the membership, and its directory entries with it.
    pub lease: Duration,
    /// *Run time.* First delay before redialling a dropped joined host.
    pub reconnect_delay: Duration,
    /// *Run time.* Factor by which the redial delay grows after each failure.
    pub reconnect_decay: f64,
    /// *Run time.* How long a dropped joined host is redialled; after it the
    /// cached locations on that host are forgotten.
    pub reconnect_timeout: Duration,
    /// *Run time.* Deadline of a direct send and of a `find`.
    pub request_timeout: Duration,
    /// *Run time.* Deadline of `join`.
    pub join_timeout: Duration,
    /// *Run time.* Largest encoded payload of one message or publish, in bytes.
    pub max_message_size: usize,
    /// Largest frame accepted from the network, in bytes. Larger frames are
    /// rejected and counted.
    pub max_frame_size: usize,
    /// Most envelopes carried in one host-to-host batch.
    pub max_batch_messages: usize,
    /// *Run time.* Capacity of the inbox of peers created from now on.
    pub inbox_capacity: usize,
    /// *Run time.* Capacity of each channel subscription created from now on.
    pub subscription_capacity: usize,
    /// Capacity of the bounded cache of peer locations.
    pub location_cache_capacity: usize,
    /// *Run time.* How long [`Host::find`](crate::Host::find) answers from
    /// its last answer for the same peer, without asking the directory
    /// (sooner forgotten when the peer's host leaves, restarts or says the
    /// peer is not there). Zero: every `find` asks.
    pub find_cache_ttl: Duration,
    /// Most directory entries this host holds for others.
    pub max_directory_entries: usize,
    /// Most directory entries this host holds for any one other host: one
    /// member cannot fill the store for everyone. Registrations past it are
    /// refused (the registering host is told, and counts them).
    pub max_directory_entries_per_host: usize,
    /// Most hosts in the membership. Records of further new hosts are
    /// refused and counted (`Stats::records_refused`): new host keys cost
    /// nothing, so without a cap one member could grow every host's
    /// membership without bound.
    pub max_hosts: usize,
    /// *Run time.* Hosts admitted to the membership (`None`: any host that
    /// joins, or that a member names). With a list, a host not on it is
    /// refused at join, its records are dropped and its requests refused;
    /// hosts removed from the list by [`crate::Host::set_config`] are
    /// dropped from the membership at once. This host is always admitted.
    pub allowed_hosts: Option<std::collections::BTreeSet<libp2p::PeerId>>,
    /// *Run time.* How long a publish waits for the gossip mesh to reach the
    /// channel's known subscribers before it is sent to those reachable.
    pub publish_warmup: Duration,
    /// Gossipsub heartbeat (mesh maintenance) interval.
    pub gossip_heartbeat: Duration,
    /// Connections with no traffic and no gossip streams close after this.
    pub idle_connection_timeout: Duration,
    /// Most established connections in all (`None`: no limit).
    pub max_connections: Option<u32>,
    /// Most established connections to one host (`None`: no limit). Two
    /// hosts dialling each other at once may briefly hold two.
    pub max_connections_per_host: Option<u32>,
    /// Most connections being set up at once, inbound and outbound each
    /// (`None`: no limit).
    pub max_pending_connections: Option<u32>,
    /// *Run time.* Soft budget of links to other hosts (`None`: none). Above
    /// it, links with no request in flight and unused for a few seconds are
    /// closed, least recently used first; links to hosts this one joined
    /// are kept. Gossipsub keeps every link open for good otherwise, so
    /// without a budget a host ends up linked to every host it ever talked to.
    pub link_budget: Option<usize>,
    /// In a network of more hosts than this, a host keeps links to about
    /// √(2·hosts) *neighbours* and reaches the others in two hops through
    /// them (registrations, lookups, messages, digests); links to other
    /// hosts are closed once idle. At or below it, hosts talk directly.
    /// See the README's "Relay overlay".
    pub relay_above: usize,
    /// Refuse new connections while the process uses more than this fraction
    /// of the machine's physical memory (`None`: off). Meant for one host per
    /// process (the node binary), not for many hosts sharing a process.
    pub max_memory_fraction: Option<f64>,
    /// Simulation only (memory transport): one-way delay added to every
    /// chunk a connection carries. Zero (the default) adds nothing.
    pub link_delay: Duration,
    /// Simulation only (memory transport): share of chunks that arrive a
    /// further 200 ms late, as a retransmitted segment would.
    pub link_loss: f64,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            network_id: "distribus".into(),
            keypair: None,
            min_epoch: 0,
            advertise: Vec::new(),
            transport: TransportKind::Tcp,
            network_key: None,
            replication: 3,
            heartbeat_interval: Duration::from_secs(2),
            lease: Duration::from_secs(20),
            reconnect_delay: Duration::from_secs(1),
            reconnect_decay: 2.0,
            reconnect_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(10),
            max_message_size: 1 << 20,
            max_frame_size: 16 << 20,
            max_batch_messages: 4096,
            inbox_capacity: 1024,
            subscription_capacity: 16_384,
            location_cache_capacity: 100_000,
            find_cache_ttl: Duration::from_secs(1),
            max_directory_entries: 20_000_000,
            max_directory_entries_per_host: 5_000_000,
            max_hosts: 10_000,
            allowed_hosts: None,
            publish_warmup: Duration::from_secs(5),
            gossip_heartbeat: Duration::from_millis(700),
            idle_connection_timeout: Duration::from_secs(60),
            max_connections: Some(1024),
            max_connections_per_host: Some(4),
            max_pending_connections: Some(128),
            link_budget: Some(256),
            relay_above: 128,
            max_memory_fraction: None,
            link_delay: Duration::ZERO,
            link_loss: 0.0,
        }
    }
}

impl HostConfig {
    /// A preset for tests and simulations: memory transport, heartbeats every
    /// 250 ms, a 3 s lease and short timeouts.
    pub fn for_tests() -> Self {
        HostConfig {
            transport: TransportKind::Memory,
            heartbeat_interval: Duration::from_millis(250),
            lease: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(5),
            gossip_heartbeat: Duration::from_millis(200),
            ..Self::default()
        }
    }

    /// Checks the values for consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: &str| Err(Error::Config(s.to_string()));
        if self.network_id.is_empty()
            || self.network_id.len() > 64
            || !self
                .network_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return bad("network_id must be 1-64 characters of [A-Za-z0-9._-]");
        }
        if self.replication == 0 {
            return bad("replication must be at least 1");
        }
        if self.heartbeat_interval.is_zero() || self.lease <= self.heartbeat_interval {
            return bad("lease must be longer than a non-zero heartbeat_interval");
        }
        if self.reconnect_decay < 1.0 {
            return bad("reconnect_decay must be at least 1");
        }
        if self.inbox_capacity == 0 || self.subscription_capacity == 0 {
            return bad("inbox_capacity and subscription_capacity must be at least 1");
        }
        if self.max_batch_messages == 0 || self.location_cache_capacity == 0 {
            return bad("max_batch_messages and location_cache_capacity must be at least 1");
        }
        if self.max_message_size + 1024 > self.max_frame_size {
            return bad("max_frame_size must exceed max_message_size by at least 1 KiB");
        }
        if self.max_hosts < 2 || self.max_directory_entries_per_host == 0 {
            return bad(
                "max_hosts must be at least 2 and max_directory_entries_per_host at least 1",
            );
        }
        if [
            self.max_connections,
            self.max_connections_per_host,
            self.max_pending_connections,
            self.link_budget.map(|b| b as u32),
        ]
        .contains(&Some(0))
        {
            return bad("connection limits must be at least 1 (or none)");
        }
        if self
            .max_memory_fraction
            .is_some_and(|f| !(f > 0.0 && f <= 1.0))
        {
            return bad("max_memory_fraction must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.link_loss) {
            return bad("link_loss must be between 0 and 1");
        }
        Ok(())
    }

    /// Checks that `new` only changes the fields marked *run time*.
    pub(crate) fn check_runtime_change(&self, new: &HostConfig) -> Result<()> {
        let fixed = self.network_id == new.network_id
            && self.transport == new.transport
            && self.replication == new.replication
            && self.heartbeat_interval == new.heartbeat_interval
            && self.lease == new.lease
            && self.max_frame_size == new.max_frame_size
            && self.max_batch_messages == new.max_batch_messages
            && self.location_cache_capacity == new.location_cache_capacity
            && self.max_directory_entries == new.max_directory_entries
            && self.max_directory_entries_per_host == new.max_directory_entries_per_host
            && self.max_hosts == new.max_hosts
            && self.gossip_heartbeat == new.gossip_heartbeat
            && self.idle_connection_timeout == new.idle_connection_timeout
            && self.max_connections == new.max_connections
            && self.max_connections_per_host == new.max_connections_per_host
            && self.max_pending_connections == new.max_pending_connections
            && self.max_memory_fraction == new.max_memory_fraction
            && self.relay_above == new.relay_above
            && self.link_delay == new.link_delay
            && self.link_loss == new.link_loss
            // `None` keeps the current key and network key.
            && new
                .keypair
                .as_ref()
                .is_none_or(|k| self.keypair.as_ref().map(|c| c.public()) == Some(k.public()))
            && new.network_key.is_none_or(|k| self.network_key == Some(k));
        if !fixed {
            return Err(Error::Config(
                "only run-time fields may change on a running host".into(),
            ));
        }
        if new.max_message_size + 1024 > self.max_frame_size {
            return Err(Error::Config(
                "max_message_size must stay 1 KiB below max_frame_size".into(),
            ));
        }
        new.validate()
    }
}
