//! State shared between the handles and the event loop.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use libp2p::PeerId;
use tokio::sync::Notify;

use crate::{
    config::HostConfig, core::registration::Change, error::SendError, inbox::PeerSlot,
    inbox::Registry, protocol::WireStats, request::Requests,
};

/// Counters a host keeps about itself.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub sent_local: AtomicU64,
    pub sent_remote: AtomicU64,
    pub received_remote: AtomicU64,
    pub failed: AtomicU64,
    pub failures: [AtomicU64; FailureReason::COUNT],
    pub published: AtomicU64,
    pub publishes_failed: AtomicU64,
    pub channel_delivered: AtomicU64,
    pub channel_missed: AtomicU64,
    pub lookups: AtomicU64,
    pub lookup_round_trips: AtomicU64,
    pub lookup_latency: LatencyRecorder,
    pub directory_entries: AtomicU64,
    pub directory_refused: AtomicU64,
    pub hosts: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connected: AtomicU64,
    pub relayed: AtomicU64,
    pub relay_refused: AtomicU64,
    pub relay_held_bytes: AtomicU64,
    pub liveness_probes: AtomicU64,
    pub longest_silence_ms: AtomicU64,
    pub directory_batches: AtomicU64,
    pub requests_sent: AtomicU64,
    pub stream_requests: AtomicU64,
    pub lane_sends: AtomicU64,
    pub relay_bundles: AtomicU64,
    pub leases_lapsed: AtomicU64,
    pub ids_lost: AtomicU64,
    pub refused_non_members: AtomicU64,
    pub registrations_refused: AtomicU64,
    pub records_refused: AtomicU64,
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    pub replies_unmatched: AtomicU64,
    pub broadcasts: AtomicU64,
    pub group_sends: AtomicU64,
    pub queue_delivered: AtomicU64,
    pub queue_unavailable: AtomicU64,
    pub broadcast_delivered: AtomicU64,
    pub broadcast_missed: AtomicU64,
}

/// A snapshot of a host's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
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
    /// Sends that failed, by reason.
    pub failures: Failures,
    /// Channel publishes accepted.
    pub published: u64,
    /// Accepted channel publishes that gossipsub then refused (other than
    /// for want of room, which only delays them): lost to the other hosts'
    /// subscribers. An awaited publish also returns the error; a publish
    /// taken by the publish lane had already returned, so this count is
    /// the only trace of its loss.
    pub publishes_failed: u64,
    /// Channel messages put in a local subscription.
    pub channel_delivered: u64,
    /// Channel messages a local subscription missed because it was full.
    pub channel_missed: u64,
    /// Directory lookups made over the network.
    pub lookups: u64,
    /// Network round trips those lookups took in all.
    pub lookup_round_trips: u64,
    /// How long those lookups took.
    pub lookup_latency: LatencyHistogram,
    /// Inbound frames rejected as oversized or malformed.
    pub rejected_frames: u64,
    /// Inbound streams (request-response exchanges, delivery and request
    /// streams) refused because their host already held as many of that
    /// kind as this host serves at once (256 exchanges, 4 delivery streams,
    /// 2 request streams), or because they came faster than the acceptor
    /// took them. A refused exchange is answered with a refusal (up to 64
    /// being answered at once, each for at most 5 s; past that it is
    /// reset); delivery and request streams are reset (their senders open
    /// another).
    pub refused_streams: u64,
    /// Bytes this host wrote to its connections, as the transport carries
    /// them (with encryption, multiplexing and every protocol's framing).
    pub bytes_sent: u64,
    /// Bytes this host read from its connections, likewise.
    pub bytes_received: u64,
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
    /// Requests of other hosts this host forwarded as a relay.
    pub relayed: u64,
    /// Requests of other hosts this host refused to forward because it
    /// held its bound of other hosts' requests (in all, for their next
    /// hop, or from their sender).
    pub relay_refused: u64,
    /// Bytes of other hosts' requests this host holds now as a relay,
    /// queued or in flight (at most four frames of `max_frame_size`).
    pub relay_held_bytes: u64,
    /// Silent hosts this host asked directly whether they are alive
    /// (before letting their lease lapse).
    pub liveness_probes: u64,
    /// How long, in milliseconds, the most silent live member had gone
    /// without its heartbeat counter rising here, as of this host's last
    /// heartbeat: the margin left against the lease
    /// ([`HostConfig::lease`](crate::HostConfig::lease)). Silent hosts are
    /// probed from six tenths of the lease.
    pub longest_silence_ms: u64,
    /// Directory batches (registrations and withdrawals) this host sent
    /// to holders.
    pub directory_batches: u64,
    /// Requests this host sent to other hosts: directory batches, digests,
    /// lookups, relay bundles, joins, and messages that did not travel on a
    /// delivery stream.
    pub requests_sent: u64,
    /// Those of them that went on a request stream (to a connected host);
    /// the others were request-response exchanges (a new stream each).
    pub stream_requests: u64,
    /// Remote sends that went straight to their host's link task on the
    /// sender's direct lane, without the event loop.
    pub lane_sends: u64,
    /// Relay bundles among them (its own relayed requests, or other hosts'
    /// that it forwards).
    pub relay_bundles: u64,
    /// Hosts this host dropped because their lease lapsed.
    pub leases_lapsed: u64,
    /// Local peers removed because another live host had registered their
    /// id first.
    pub ids_lost: u64,
    /// Registrations of local peers that holders refused because their
    /// directory store was full.
    pub registrations_refused: u64,
    /// Requests and delivery batches refused because their sender is not a
    /// member (only a join is served to a host that is not), or not on
    /// the allow-list, or sent while a big join of theirs was being checked.
    pub refused_non_members: u64,
    /// Host records refused by this host's limits: a host not on the
    /// allow-list, a new host past `max_hosts`, a record listing too many
    /// channels.
    pub records_refused: u64,
    /// Requests local peers made ([`crate::Peer::request`]).
    pub requests: u64,
    /// Replies handed to a waiting request of a local peer.
    pub replies: u64,
    /// Replies refused because no request of their recipient waited for
    /// them (answered already, timed out, or a reply from another peer
    /// than the one asked).
    pub replies_unmatched: u64,
    /// Broadcasts this host made ([`crate::Host::broadcast`]).
    pub broadcasts: u64,
    /// Group sends this host made ([`crate::Peer::send_group`]).
    pub group_sends: u64,
    /// Publishes this host gave to a local member of a queue group.
    pub queue_delivered: u64,
    /// Publishes of this host that no member of a queue group could take.
    pub queue_unavailable: u64,
    /// Broadcast and group messages put in local peers' inboxes.
    pub broadcast_delivered: u64,
    /// Broadcast and group messages local peers missed (their inbox was
    /// full).
    pub broadcast_missed: u64,
}

/// A peer created (`register`) or removed on this host, for the directory.
#[derive(Debug)]
pub(crate) struct SlotChange {
    /// Created (else removed).
    pub register: bool,
    /// Its id, as the directory keeps it.
    pub id: crate::directory::Id,
    /// Its slot, whose key the loop works out.
    pub slot: PeerSlot,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub local: PeerId,
    /// This host's incarnation (see [`HostConfig::min_epoch`]).
    pub epoch: u64,
    pub registry: Registry,
    /// Peers created or removed since the loop last looked. The loop works
    /// out each id's directory key (a SHA-256, a tenth of `create`'s time)
    /// itself. The id is copied here, not on the loop: copied on the loop's
    /// thread, ids held by the directory cost 7 more bytes of RSS per peer
    /// (another allocator arena).
    pub changes: Mutex<Vec<SlotChange>>,
    pub changes_ready: Notify,
    pub config: RwLock<HostConfig>,
    /// The configuration's `max_message_size`, kept beside it (updated
    /// under its write lock) for the publish path: reading the lock per
    /// publish bounced its line between the publisher's and the loop's
    /// threads.
    pub max_message_size: AtomicUsize,
    /// Bumped by every `set_config`: the loop applies what a new
    /// configuration changes beyond reading it (the allow-list).
    pub config_changes: AtomicU64,
    pub closed: AtomicBool,
    /// Woken when `closed` is set (see [`Shared::until_closed`]).
    pub closing: Notify,
    pub wire: Arc<WireStats>,
    pub counters: Counters,
    /// Every live member (this host included), as the event loop last saw
    /// it: the delivery readers refuse batches of other hosts.
    pub members: RwLock<foldhash::HashSet<PeerId>>,
    /// Requests of local peers waiting for their replies.
    pub requests: Arc<Requests>,
    /// Channel publishes on their way to the event loop.
    pub publish_lane: crate::publish_lane::PublishLane,
    /// Recent `find` answers.
    pub finds: crate::find_cache::FindCache,
}

impl Shared {
    pub(crate) fn new(local: PeerId, config: HostConfig, wire: Arc<WireStats>) -> Self {
        // Nanoseconds: two starts of one identity within a clock tick
        // cannot share an epoch.
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Shared {
            local,
            epoch: clock.max(config.min_epoch.saturating_add(1)),
            registry: Registry::default(),
            changes: Mutex::new(Vec::new()),
            changes_ready: Notify::new(),
            max_message_size: AtomicUsize::new(config.max_message_size),
            config: RwLock::new(config),
            config_changes: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            wire,
            counters: Counters::default(),
            members: RwLock::new(std::iter::once(local).collect()),
            requests: Arc::default(),
            publish_lane: Default::default(),
            finds: Default::default(),
        }
    }

    /// Whether `host` is a live member, as the event loop last saw it.
    pub(crate) fn is_member(&self, host: &PeerId) -> bool {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(host)
    }

    pub(crate) fn config(&self) -> HostConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads one field of the configuration without cloning it all.
    pub(crate) fn with_config<T>(&self, f: impl FnOnce(&HostConfig) -> T) -> T {
        f(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Queues a directory change; wakes the loop only for the first one,
    /// since a flush takes everything queued.
    pub(crate) fn push_change(&self, change: SlotChange) {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let first = changes.is_empty();
        changes.push(change);
        drop(changes);
        if first {
            self.changes_ready.notify_one();
        }
    }

    /// The changes pushed since the last call, as the directory takes
    /// them (keys worked out on the caller's thread, the loop's).
    pub(crate) fn take_changes(&self) -> Vec<Change> {
        // The list is taken whole and grows from empty again: handing the
        // producer back an emptied list with room (or taking with room
        // reserved) was no faster for a million creates and kept up to
        // 10 bytes per peer more resident.
        let taken = std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()));
        taken
            .into_iter()
            .map(|c| Change {
                register: c.register,
                id: c.id,
                key: c.slot.key(),
            })
            .collect()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the host closed; returns whether it was already.
    pub(crate) fn mark_closed(&self) -> bool {
        let was = self.closed.swap(true, Ordering::AcqRel);
        self.publish_lane.close();
        self.closing.notify_waiters();
        was
    }

    /// Resolves once the host is closed.
    #[cfg(feature = "gateway")]
    pub(crate) async fn until_closed(&self) {
        loop {
            // Registered before the check, so a close between the check and
            // the wait still wakes it.
            let woken = self.closing.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.is_closed() {
                return;
            }
            woken.await;
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            sent_local: r(&c.sent_local),
            sent_remote: r(&c.sent_remote),
            received_remote: r(&c.received_remote),
            failed: r(&c.failed),
            failures: Failures::from_counters(&c.failures),
            published: r(&c.published),
            publishes_failed: r(&c.publishes_failed),
            channel_delivered: r(&c.channel_delivered),
            channel_missed: r(&c.channel_missed),
            lookups: r(&c.lookups),
            lookup_round_trips: r(&c.lookup_round_trips),
            lookup_latency: c.lookup_latency.snapshot(),
            rejected_frames: self.wire.rejected_frames(),
            refused_streams: self.wire.refused_streams(),
            bytes_sent: self.wire.bytes_sent(),
            bytes_received: self.wire.bytes_received(),
            local_peers: self.registry.len() as u64,
            directory_entries: r(&c.directory_entries),
            directory_refused: r(&c.directory_refused),
            hosts: r(&c.hosts),
            connections_opened: r(&c.connections_opened),
            connected_hosts: r(&c.connected),
            relayed: r(&c.relayed),
            relay_refused: r(&c.relay_refused),
            relay_held_bytes: r(&c.relay_held_bytes),
            liveness_probes: r(&c.liveness_probes),
            longest_silence_ms: r(&c.longest_silence_ms),
            directory_batches: r(&c.directory_batches),
            requests_sent: r(&c.requests_sent),
            stream_requests: r(&c.stream_requests),
            lane_sends: r(&c.lane_sends),
            relay_bundles: r(&c.relay_bundles),
            leases_lapsed: r(&c.leases_lapsed),
            ids_lost: r(&c.ids_lost),
            registrations_refused: r(&c.registrations_refused),
            refused_non_members: r(&c.refused_non_members),
            records_refused: r(&c.records_refused),
            requests: r(&c.requests),
            replies: r(&c.replies),
            replies_unmatched: r(&c.replies_unmatched),
            broadcasts: r(&c.broadcasts),
            group_sends: r(&c.group_sends),
            queue_delivered: r(&c.queue_delivered),
            queue_unavailable: r(&c.queue_unavailable),
            broadcast_delivered: r(&c.broadcast_delivered),
            broadcast_missed: r(&c.broadcast_missed),
        }
    }
}

/// Why a send failed, for the per-reason counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureReason {
    NotFound,
    Unreachable,
    Timeout,
    TooLarge,
    InboxFull,
    Other,
}

impl FailureReason {
    const COUNT: usize = 6;

    fn of(e: &SendError) -> Self {
        match e {
            SendError::PeerNotFound(_) => Self::NotFound,
            SendError::PeerUnreachable { .. } => Self::Unreachable,
            SendError::Timeout => Self::Timeout,
            SendError::MessageTooLarge { .. } => Self::TooLarge,
            SendError::InboxFull(_) => Self::InboxFull,
            SendError::Closed
            | SendError::InvalidId(_)
            | SendError::NoRequest(_)
            | SendError::Encode(_) => Self::Other,
        }
    }
}

/// Failed sends by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Failures {
    /// No host holds the recipient id (`PeerNotFound`).
    pub not_found: u64,
    /// The recipient's host could not be reached (`PeerUnreachable`).
    pub unreachable: u64,
    /// No acknowledgement within the request timeout (`Timeout`).
    pub timeout: u64,
    /// The payload was over the size limit (`MessageTooLarge`).
    pub too_large: u64,
    /// The recipient's inbox was full (`InboxFull`).
    pub inbox_full: u64,
    /// Any other error (for example the host closed).
    pub other: u64,
}

impl Failures {
    fn from_counters(c: &[AtomicU64; FailureReason::COUNT]) -> Self {
        let r = |i: FailureReason| c[i as usize].load(Ordering::Relaxed);
        Failures {
            not_found: r(FailureReason::NotFound),
            unreachable: r(FailureReason::Unreachable),
            timeout: r(FailureReason::Timeout),
            too_large: r(FailureReason::TooLarge),
            inbox_full: r(FailureReason::InboxFull),
            other: r(FailureReason::Other),
        }
    }

    /// `(reason, count)` pairs, with the reason as a short snake_case label.
    pub fn by_reason(&self) -> [(&'static str, u64); FailureReason::COUNT] {
        [
            ("not_found", self.not_found),
            ("unreachable", self.unreachable),
            ("timeout", self.timeout),
            ("too_large", self.too_large),
            ("inbox_full", self.inbox_full),
            ("other", self.other),
        ]
    }
}

/// Counts a failed send, in total and by reason.
pub(crate) fn count_failure(c: &Counters, e: &SendError) {
    bump(&c.failed);
    bump(&c.failures[FailureReason::of(e) as usize]);
}

/// Upper bounds of the lookup latency buckets, in microseconds.
const LATENCY_BOUNDS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// A fixed-bucket latency histogram updated without locks.
#[derive(Debug, Default)]
pub(crate) struct LatencyRecorder {
    /// One counter per bound, plus one for slower observations.
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyRecorder {
    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn snapshot(&self) -> LatencyHistogram {
        LatencyHistogram {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A latency histogram snapshot with fixed buckets (100 µs to 5 s).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last bucket holds those
    /// above the largest bound.
    pub counts: Vec<u64>,
    /// Sum of all observations, in microseconds.
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// Upper bounds of the buckets, in microseconds (the last bucket of
    /// [`LatencyHistogram::counts`] has no bound).
    pub fn bounds_us() -> &'static [u64] {
        &LATENCY_BOUNDS_US
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Cumulative `(upper bound in seconds, count)` pairs in the Prometheus
    /// convention, ending with `+Inf`.
    pub fn cumulative_seconds(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c;
            let bound = LATENCY_BOUNDS_US
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            out.push((bound, total));
        }
        out
    }
}

/// Adds one to a counter.
pub(crate) fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}
