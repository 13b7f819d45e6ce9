//! The result of a run: JSON for machines, one screen of text for people.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything a run measured. Ratios are 0 to 1; times in seconds or
/// milliseconds as the names say.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Hosts started.
    pub hosts: usize,
    /// Peers registered.
    pub peers: usize,
    /// Seed of the random choices.
    pub seed: u64,
    /// Time until every host knew the full membership.
    pub join_s: f64,
    /// Time from the first `create` until every directory entry was held.
    pub register_s: f64,
    /// Peers registered per second.
    pub registrations_per_s: f64,
    /// Finds made.
    pub finds: usize,
    /// Finds that returned the right host.
    pub find_success_ratio: f64,
    /// Find latency, median.
    pub find_p50_ms: f64,
    /// Find latency, 99th percentile.
    pub find_p99_ms: f64,
    /// Network round trips of a find, 99th percentile (0 = answered locally).
    pub find_round_trips_p99: f64,
    /// Direct messages sent.
    pub messages: usize,
    /// Messages acknowledged as delivered (and found in the inboxes).
    pub delivered_ratio: f64,
    /// Messages per second over the message phase.
    pub msgs_per_s: f64,
    /// CPU time of the whole process over the message phase, per message
    /// sent, in microseconds (every host's share: the sender's, relays',
    /// holders' and recipient's).
    #[serde(default)]
    pub message_cpu_us: f64,
    /// Requests the hosts sent over the message phase, per message
    /// (lookups, relay bundles, request batches of messages; not what went
    /// on delivery streams).
    #[serde(default)]
    pub message_requests: f64,
    /// Requests relays forwarded over the message phase, per message.
    #[serde(default)]
    pub message_relayed: f64,
    /// Network round trips of lookups over the message phase, per message
    /// (a relayed lookup counts two).
    #[serde(default)]
    pub message_lookup_trips: f64,
    /// Send latency (until acknowledged), median.
    pub latency_p50_ms: f64,
    /// Send latency, 99th percentile.
    pub latency_p99_ms: f64,
    /// Failed sends by error.
    pub send_errors: BTreeMap<String, usize>,
    /// Request/reply exchanges made (each to a different peer).
    pub requests: usize,
    /// Requests answered with the replier's reply.
    pub request_success_ratio: f64,
    /// Requests per second over the request phase.
    pub requests_per_s: f64,
    /// Request-to-reply latency, median.
    pub request_p50_ms: f64,
    /// Request-to-reply latency, 99th percentile.
    pub request_p99_ms: f64,
    /// Failed requests by error.
    pub request_errors: BTreeMap<String, usize>,
    /// Broadcasts made (one after another, from random hosts).
    pub broadcasts: usize,
    /// Share of the living peers each broadcast reached (the least of
    /// them), checked in their inboxes.
    pub broadcast_reached_ratio: f64,
    /// Time from a broadcast's call until every host has it in its peers'
    /// inboxes (the call returns then), median.
    pub broadcast_p50_ms: f64,
    /// The same, slowest.
    pub broadcast_max_ms: f64,
    /// Group sends made (one after another, from random hosts, each to
    /// one group of [`crate::run::GROUP_SIZE`] peers spread over the hosts).
    pub group_sends: usize,
    /// Share of each group's members that got its message once, and no
    /// other peer did (the least over the sends), checked in the inboxes.
    pub group_reached_ratio: f64,
    /// Time from a group send's call until every host has answered,
    /// median.
    pub group_p50_ms: f64,
    /// The same, slowest.
    pub group_max_ms: f64,
    /// Publishes to the queue group (see [`crate::run`]'s queue phase).
    pub queue_publishes: usize,
    /// Members of the queue group.
    pub queue_members: usize,
    /// Share of the publishes that exactly one member got (each at most
    /// once; a publish a member got twice counts as not delivered).
    pub queue_delivered_ratio: f64,
    /// Publishes per second, 64 in flight (each resolves once a member's
    /// host has taken it).
    pub queue_per_s: f64,
    /// The fewest and the most publishes one member got.
    pub queue_share_min: usize,
    /// See `queue_share_min`.
    pub queue_share_max: usize,
    /// Publishes made.
    pub publishes: usize,
    /// Hosts subscribed.
    pub subscribers: usize,
    /// Of them, hosts subscribed by a wildcard pattern (`sim.*`; the others
    /// to `sim.news`, the channel published on).
    pub wildcard_subscribers: usize,
    /// Share of (publish, subscriber) pairs delivered.
    pub publish_delivered_ratio: f64,
    /// Publish-to-subscriber latency, median.
    pub publish_p50_ms: f64,
    /// Publish-to-subscriber latency, 99th percentile.
    pub publish_p99_ms: f64,
    /// Hosts killed and added in the churn phase (0: no churn phase).
    pub churn: usize,
    /// Time until no surviving host found a killed host's peers.
    pub churn_recovery_s: f64,
    /// Time until the added hosts' peers were found.
    pub churn_join_s: f64,
    /// Messages sent during churn, and how those that failed failed.
    pub churn_messages: usize,
    /// Failed churn sends by error.
    pub churn_errors: BTreeMap<String, usize>,
    /// CPU cores kept busy by an idle network (no traffic), measured over
    /// 3 s starting 5 s after the join phase (once the join wave's
    /// Kademlia bootstraps are over): the cost of liveness and connections.
    pub idle_cpu_cores: f64,
    /// Request-response exchanges per second in that idle window (all
    /// hosts): digests, probes and the relay bundles carrying them.
    pub idle_requests_per_s: f64,
    /// Bytes each host sent per second in that idle window, on average, as
    /// its connections carried them (`Stats::bytes_sent`).
    pub idle_bytes_per_host_s: f64,
    /// The longest any host went without hearing a live member's counter
    /// rise, sampled every second of that idle window: how close liveness
    /// came to its lease (silent hosts are probed from 0.6 of it).
    pub idle_longest_silence_s: f64,
    /// The lease the hosts ran with.
    pub lease_s: f64,
    /// Requests sent during registration (all hosts), those of them that
    /// went on request streams, the relay bundles among them, and the
    /// directory batches (direct or relayed) hosts sent to holders.
    pub register_requests: u64,
    pub register_stream_requests: u64,
    pub register_relay_bundles: u64,
    pub register_directory_batches: u64,
    /// Leases that lapsed (counted on every host) during registration and
    /// in the whole run: live hosts dropped by a loaded network.
    pub register_lapses: u64,
    pub lapses: u64,
    /// Host-to-host links (connected host pairs) once every host knew all.
    pub links_after_join: u64,
    /// Host-to-host links once every directory entry was held.
    pub links_after_register: u64,
    /// Host-to-host links at the end of the run.
    pub links_at_end: u64,
    /// Requests hosts forwarded for others as relays (see the library's
    /// relay overlay), in the whole run.
    pub relayed_requests: u64,
    /// Requests relays refused to forward because they held their bound
    /// of other hosts' requests (the origins retried them), in the whole
    /// run.
    #[serde(default)]
    pub relay_refused: u64,
    /// Silent hosts probed directly before a lapse, in the whole run, and
    /// in the idle window after joining.
    pub liveness_probes: u64,
    pub idle_liveness_probes: u64,
    /// Process RSS at the end.
    pub rss_bytes: u64,
    /// RSS per host, measured after joining (before any peer).
    pub rss_per_host_bytes: u64,
    /// RSS growth per registered peer.
    pub rss_per_peer_bytes: f64,
    /// CPU seconds (user + system) of the whole run.
    pub cpu_s: f64,
    /// Wall-clock seconds of the whole run.
    pub wall_s: f64,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

impl Report {
    /// Whether every find and message succeeded and every publish arrived.
    pub(crate) fn all_ok(&self) -> bool {
        self.find_success_ratio == 1.0
            && self.delivered_ratio == 1.0
            && (self.requests == 0 || self.request_success_ratio == 1.0)
            && (self.broadcasts == 0 || self.broadcast_reached_ratio == 1.0)
            && (self.group_sends == 0 || self.group_reached_ratio == 1.0)
            && (self.queue_publishes == 0 || self.queue_delivered_ratio == 1.0)
            && (self.publishes == 0 || self.publish_delivered_ratio == 1.0)
    }

    /// One screen of text.
    pub(crate) fn summary(&self) -> String {
        let mut s = String::new();
        let mut line = |t: String| {
            s.push_str(&t);
            s.push('\n');
        };
        line(format!(
            "distribus-sim: {} hosts, {} peers, seed {}",
            self.hosts, self.peers, self.seed
        ));
        line(format!(
            "  join        every host knows all hosts after {:.2} s",
            self.join_s
        ));
        line(format!(
            "  register    {} peers in {:.2} s = {:.0} peers/s",
            self.peers, self.register_s, self.registrations_per_s
        ));
        line(format!(
            "  find        {} finds, success {:.4}, p50 {:.3} ms, p99 {:.3} ms, round trips p99 {}",
            self.finds,
            self.find_success_ratio,
            self.find_p50_ms,
            self.find_p99_ms,
            self.find_round_trips_p99
        ));
        line(format!(
            "  messages    {} sent, delivered {:.4}, {:.0} msgs/s, p50 {:.3} ms, p99 {:.3} ms{}",
            self.messages,
            self.delivered_ratio,
            self.msgs_per_s,
            self.latency_p50_ms,
            self.latency_p99_ms,
            if self.send_errors.is_empty() {
                String::new()
            } else {
                format!(", errors {:?}", self.send_errors)
            }
        ));
        if self.messages > 0 {
            line(format!(
                "              per message: {:.0} us of CPU, {:.2} requests, {:.2} relayed, {:.2} lookup round trips",
                self.message_cpu_us,
                self.message_requests,
                self.message_relayed,
                self.message_lookup_trips
            ));
        }
        if self.broadcasts > 0 {
            line(format!(
                "  broadcast   {} broadcasts, reached {:.4} of the peers, every peer has it in p50 {:.1} ms, max {:.1} ms",
                self.broadcasts,
                self.broadcast_reached_ratio,
                self.broadcast_p50_ms,
                self.broadcast_max_ms,
            ));
        }
        if self.group_sends > 0 {
            line(format!(
                "  group send  {} sends to groups of {}, reached {:.4} of their members, all have it in p50 {:.1} ms, max {:.1} ms",
                self.group_sends,
                crate::run::GROUP_SIZE,
                self.group_reached_ratio,
                self.group_p50_ms,
                self.group_max_ms,
            ));
        }
        if self.queue_publishes > 0 {
            line(format!(
                "  queue       {} publishes to a group of {} members, each to exactly one: {:.4}, {:.0}/s, a member got {} to {}",
                self.queue_publishes,
                self.queue_members,
                self.queue_delivered_ratio,
                self.queue_per_s,
                self.queue_share_min,
                self.queue_share_max,
            ));
        }
        if self.requests > 0 {
            line(format!(
                "  req/reply   {} requests, answered {:.4}, {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms{}",
                self.requests,
                self.request_success_ratio,
                self.requests_per_s,
                self.request_p50_ms,
                self.request_p99_ms,
                if self.request_errors.is_empty() {
                    String::new()
                } else {
                    format!(", errors {:?}", self.request_errors)
                }
            ));
        }
        if self.publishes > 0 {
            line(format!(
                "  publish     {} publishes x {} subscriber hosts ({} by wildcard), delivered {:.4}, p50 {:.3} ms, p99 {:.3} ms",
                self.publishes,
                self.subscribers,
                self.wildcard_subscribers,
                self.publish_delivered_ratio,
                self.publish_p50_ms,
                self.publish_p99_ms
            ));
        }
        if self.churn > 0 {
            line(format!(
                "  churn       {} hosts killed and {} added: killed peers gone after {:.2} s, \
                 new peers found after {:.2} s; {} sends during churn, failed {:?}",
                self.churn,
                self.churn,
                self.churn_recovery_s,
                self.churn_join_s,
                self.churn_messages,
                self.churn_errors
            ));
        }
        line(format!(
            "  idle        {:.2} cores busy while nothing is sent, once joined and settled ({} liveness probes then, {} in the run); longest silence {:.1} s of a {:.0} s lease",
            self.idle_cpu_cores, self.idle_liveness_probes, self.liveness_probes,
            self.idle_longest_silence_s, self.lease_s
        ));
        line(format!(
            "  requests    {:.0}/s idle ({:.1} KB/s sent per host); {} while registering ({} on request streams; {} relay bundles, {} directory batches)",
            self.idle_requests_per_s,
            self.idle_bytes_per_host_s / 1e3,
            self.register_requests,
            self.register_stream_requests,
            self.register_relay_bundles,
            self.register_directory_batches
        ));
        line(format!(
            "  lapses      {} leases lapsed while registering, {} in the run",
            self.register_lapses, self.lapses
        ));
        line(format!(
            "  links       {} after join, {} after register, {} at the end; {} requests relayed, {} refused by full relays",
            self.links_after_join,
            self.links_after_register,
            self.links_at_end,
            self.relayed_requests,
            self.relay_refused
        ));
        line(format!(
            "  memory      RSS {:.1} MiB in all, {:.2} MiB per host, {:.0} bytes per peer",
            mib(self.rss_bytes),
            mib(self.rss_per_host_bytes),
            self.rss_per_peer_bytes
        ));
        line(format!(
            "  cpu         {:.1} s CPU in {:.1} s wall",
            self.cpu_s, self.wall_s
        ));
        s
    }
}
