//! State shared between the handles and the event loop.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Mutex, RwLock,
};

use libp2p::PeerId;
use tokio::sync::Notify;

use crate::{config::HostConfig, inbox::Registry, protocol::WireStats};

/// A local directory change waiting to be sent to the holders.
#[derive(Debug, Clone)]
pub(crate) struct LocalChange {
    pub register: bool,
    pub id: Arc<str>,
    pub key: u64,
}

/// Counters a host keeps about itself.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub sent_local: AtomicU64,
    pub sent_remote: AtomicU64,
    pub received_remote: AtomicU64,
    pub failed: AtomicU64,
    pub published: AtomicU64,
    pub lookups: AtomicU64,
    pub lookup_round_trips: AtomicU64,
    pub directory_entries: AtomicU64,
    pub directory_refused: AtomicU64,
    pub hosts: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connected: AtomicU64,
}

/// A snapshot of a host's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Messages delivered to a peer on the same host.
    pub sent_local: u64,
    /// Messages delivered to peers on other hosts (acknowledged).
    pub sent_remote: u64,
    /// Messages from other hosts put in a local inbox.
    pub received_remote: u64,
    /// Sends that failed (any reason).
    pub failed: u64,
    /// Channel publishes accepted.
    pub published: u64,
    /// Directory lookups made over the network.
    pub lookups: u64,
    /// Network round trips those lookups took in all.
    pub lookup_round_trips: u64,
    /// Inbound frames rejected as oversized or malformed.
    pub rejected_frames: u64,
    /// Peers living on this host.
    pub local_peers: u64,
    /// Directory entries this host holds (for itself and others).
    pub directory_entries: u64,
    /// Directory registrations refused because the store was full.
    pub directory_refused: u64,
    /// Live hosts in the membership, this one included.
    pub hosts: u64,
    /// Connections opened since the host started.
    pub connections_opened: u64,
    /// Hosts this host has an open connection to now.
    pub connected_hosts: u64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub local: PeerId,
    pub registry: Registry,
    pub changes: Mutex<Vec<LocalChange>>,
    pub changes_ready: Notify,
    pub config: RwLock<HostConfig>,
    pub closed: AtomicBool,
    pub wire: Arc<WireStats>,
    pub counters: Counters,
}

impl Shared {
    pub fn new(local: PeerId, config: HostConfig, wire: Arc<WireStats>) -> Self {
        Shared {
            local,
            registry: Registry::default(),
            changes: Mutex::new(Vec::new()),
            changes_ready: Notify::new(),
            config: RwLock::new(config),
            closed: AtomicBool::new(false),
            wire,
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> HostConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads one field of the configuration without cloning it all.
    pub fn with_config<T>(&self, f: impl FnOnce(&HostConfig) -> T) -> T {
        f(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Queues a directory change; wakes the loop only for the first one,
    /// since a flush takes everything queued.
    pub fn push_change(&self, change: LocalChange) {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let first = changes.is_empty();
        changes.push(change);
        drop(changes);
        if first {
            self.changes_ready.notify_one();
        }
    }

    pub fn take_changes(&self) -> Vec<LocalChange> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            sent_local: r(&c.sent_local),
            sent_remote: r(&c.sent_remote),
            received_remote: r(&c.received_remote),
            failed: r(&c.failed),
            published: r(&c.published),
            lookups: r(&c.lookups),
            lookup_round_trips: r(&c.lookup_round_trips),
            rejected_frames: self.wire.rejected_frames(),
            local_peers: self.registry.len() as u64,
            directory_entries: r(&c.directory_entries),
            directory_refused: r(&c.directory_refused),
            hosts: r(&c.hosts),
            connections_opened: r(&c.connections_opened),
            connected_hosts: r(&c.connected),
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}
