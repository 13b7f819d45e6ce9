//! Prometheus metrics at `/metrics`, read from the host's counters on each
//! scrape; beside them, for operators and harnesses: `/healthz` (the host
//! is up), `/readyz` (joined, and its membership converged),
//! `/admin/members` and `/admin/peers` (JSON, like nats-server's monitoring
//! endpoints).

use std::{net::SocketAddr, sync::Arc};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use distribus::{Host, LatencyHistogram};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::task::JoinHandle;

/// Reads a host's [`distribus::Stats`] when scraped.
#[derive(Debug)]
struct HostCollector(Host);

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A counter with one label, one sample per `(label value, count)`.
fn labelled(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in values {
        let labels = [(label, *value)];
        ConstCounter::new(*count).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &LatencyHistogram,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    let buckets = h.cumulative_seconds();
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum_us as f64 / 1e6,
        h.count(),
        &buckets,
        None,
    )
}

impl Collector for HostCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = self.0.stats();
        let e = &mut e;
        gauge(
            e,
            "distribus_local_peers",
            "Peers living on this host.",
            s.local_peers,
        )?;
        gauge(
            e,
            "distribus_directory_entries",
            "Directory entries (peer id -> host) this host holds, its own and others'.",
            s.directory_entries,
        )?;
        gauge(
            e,
            "distribus_hosts",
            "Live hosts in the membership, this one included.",
            s.hosts,
        )?;
        gauge(
            e,
            "distribus_connected_hosts",
            "Hosts with an open connection to this one.",
            s.connected_hosts,
        )?;
        gauge(
            e,
            "distribus_longest_silence_milliseconds",
            "How long the most silent live host had gone without its heartbeat counter rising, at the last heartbeat (hosts lapse at the lease).",
            s.longest_silence_ms,
        )?;
        counter(
            e,
            "distribus_connections_opened",
            "Connections opened since start.",
            s.connections_opened,
        )?;
        labelled(
            e,
            "distribus_messages_sent",
            "Direct messages delivered, by path (local: same host, remote: acknowledged by another host).",
            "path",
            &[("local", s.sent_local), ("remote", s.sent_remote)],
        )?;
        counter(
            e,
            "distribus_messages_received",
            "Direct messages from other hosts put in a local inbox.",
            s.received_remote,
        )?;
        labelled(
            e,
            "distribus_messages_failed",
            "Direct sends that failed, by reason.",
            "reason",
            &s.failures.by_reason(),
        )?;
        counter(
            e,
            "distribus_publishes",
            "Channel publishes accepted.",
            s.published,
        )?;
        counter(
            e,
            "distribus_publishes_failed",
            "Accepted channel publishes that gossipsub refused: lost to other hosts' subscribers.",
            s.publishes_failed,
        )?;
        counter(
            e,
            "distribus_channel_messages_delivered",
            "Channel messages put in a local subscription.",
            s.channel_delivered,
        )?;
        counter(
            e,
            "distribus_channel_messages_missed",
            "Channel messages a local subscription missed because it was full (channels are at most once).",
            s.channel_missed,
        )?;
        counter(
            e,
            "distribus_requests",
            "Requests local peers made (request/reply).",
            s.requests,
        )?;
        labelled(
            e,
            "distribus_replies",
            "Replies to local peers' requests, by outcome (matched: handed to the waiting request; unmatched: refused, nobody waited).",
            "outcome",
            &[("matched", s.replies), ("unmatched", s.replies_unmatched)],
        )?;
        counter(
            e,
            "distribus_broadcasts",
            "Broadcasts this node made.",
            s.broadcasts,
        )?;
        counter(
            e,
            "distribus_group_sends",
            "Group sends (to the peers whose id matches a pattern) this node made.",
            s.group_sends,
        )?;
        labelled(
            e,
            "distribus_queue_messages",
            "Queue group hand-overs, by outcome (delivered: a member on this node took it; unavailable: no member of a group could take a publish of this node).",
            "outcome",
            &[
                ("delivered", s.queue_delivered),
                ("unavailable", s.queue_unavailable),
            ],
        )?;
        labelled(
            e,
            "distribus_broadcast_messages",
            "Broadcast and group messages for local peers, by outcome (delivered: in the inbox; missed: the inbox was full).",
            "outcome",
            &[
                ("delivered", s.broadcast_delivered),
                ("missed", s.broadcast_missed),
            ],
        )?;
        counter(
            e,
            "distribus_lookups",
            "Directory lookups made over the network.",
            s.lookups,
        )?;
        counter(
            e,
            "distribus_lookup_round_trips",
            "Network round trips taken by those lookups.",
            s.lookup_round_trips,
        )?;
        histogram(
            e,
            "distribus_lookup_duration_seconds",
            "Time to resolve a peer id over the network.",
            &s.lookup_latency,
        )?;
        counter(
            e,
            "distribus_frames_rejected",
            "Inbound frames rejected as oversized or malformed.",
            s.rejected_frames,
        )?;
        counter(
            e,
            "distribus_directory_refused",
            "Directory registrations refused because the store (or the host's share) was full.",
            s.directory_refused,
        )?;
        counter(
            e,
            "distribus_refused_non_members",
            "Requests and delivery batches refused because their sender is not a member.",
            s.refused_non_members,
        )?;
        counter(
            e,
            "distribus_refused_streams",
            "Inbound streams refused because their host already held as many as this host serves at once.",
            s.refused_streams,
        )?;
        counter(
            e,
            "distribus_bytes_sent",
            "Bytes written to this host's connections (with encryption and framing).",
            s.bytes_sent,
        )?;
        counter(
            e,
            "distribus_bytes_received",
            "Bytes read from this host's connections (with encryption and framing).",
            s.bytes_received,
        )?;
        counter(
            e,
            "distribus_relay_refused",
            "Other hosts' requests refused by this relay because it held its bound of them (in all, for their next hop, or from their sender).",
            s.relay_refused,
        )?;
        gauge(
            e,
            "distribus_relay_held_bytes",
            "Bytes of other hosts' requests this relay holds now, queued or in flight (at most four frames).",
            s.relay_held_bytes,
        )?;
        counter(
            e,
            "distribus_records_refused",
            "Host records refused: not on the allow-list, past max_hosts, or too many channels.",
            s.records_refused,
        )?;
        counter(
            e,
            "distribus_ids_lost",
            "Local peers removed because another live host had registered their id first.",
            s.ids_lost,
        )?;
        counter(
            e,
            "distribus_registrations_refused",
            "Registrations of local peers that holders refused because their store was full.",
            s.registrations_refused,
        )?;
        Ok(())
    }
}

/// Encodes every metric in `registry` in the Prometheus/OpenMetrics text format.
pub(crate) fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

async fn scrape(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    match render(&registry) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// 200 while the host runs, 503 once it is closed.
async fn healthz(State(Admin { host, .. }): State<Admin>) -> impl IntoResponse {
    use axum::http::StatusCode;
    if host.is_closed() {
        (StatusCode::SERVICE_UNAVAILABLE, "closed\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// 200 once the host is ready to serve: it has joined other hosts and its
/// membership has converged with theirs ([`Host::readiness`]); a node
/// started without `--join` is ready alone. 503 otherwise (and once
/// closed). The body says which.
async fn readyz(State(admin): State<Admin>) -> axum::response::Response {
    use axum::http::StatusCode;
    let (members, converged) = match admin.host.readiness().await {
        Ok(r) => (r.members, r.converged),
        Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, "closed\n").into_response(),
    };
    let ready = if members == 0 { admin.alone } else { converged };
    let body = serde_json::json!({ "ready": ready, "members": members, "converged": converged });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, json(&body)).into_response()
}

fn json(value: &serde_json::Value) -> axum::response::Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// The other live hosts this host knows ([`Host::members`]): id,
/// addresses, channels, and whether it has a connection to each.
async fn members(State(Admin { host, .. }): State<Admin>) -> axum::response::Response {
    use axum::http::StatusCode;
    match host.members().await {
        Ok(hosts) => json(&serde_json::json!({ "count": hosts.len(), "hosts": hosts })),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// Most peer ids one `/admin/peers` answer lists (a host may have
/// millions).
const MAX_LISTED_PEERS: usize = 100_000;

/// The peers on this host: their count, and the ids of up to `?limit=N`
/// of them (1,000 unless asked; at most [`MAX_LISTED_PEERS`]).
async fn peers(
    State(Admin { host, .. }): State<Admin>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    use axum::http::StatusCode;
    let mut limit = 1000;
    for pair in query.as_deref().unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("limit=") {
            match v.parse::<usize>() {
                Ok(n) => limit = n.min(MAX_LISTED_PEERS),
                Err(_) => {
                    return (StatusCode::BAD_REQUEST, "limit must be a number\n").into_response()
                }
            }
        }
    }
    let ids = host.peer_ids(limit);
    json(&serde_json::json!({ "count": host.peer_count(), "peers": ids }))
}

/// What the admin endpoints read.
#[derive(Clone)]
struct Admin {
    host: Host,
    /// Started without hosts to join: ready with no other member.
    alone: bool,
}

/// Serves `host`'s metrics on `addr`; returns the bound address and the
/// server task. `alone`: the node was not asked to join anyone.
pub(crate) async fn serve(
    host: Host,
    addr: SocketAddr,
    alone: bool,
) -> Result<(SocketAddr, JoinHandle<()>), String> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(HostCollector(host.clone())));
    let admin = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/members", get(members))
        .route("/admin/peers", get(peers))
        .with_state(Admin { host, alone });
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(registry))
        .merge(admin);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, task))
}
