//! The phases of a run, on real hosts of the library.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use distribus::{Error, FindError, Host, HostConfig, Peer, PeerId};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

use crate::{
    measure::{cpu_seconds, rss_bytes, Samples},
    report::Report,
    scenario::Scenario,
};

/// How long the register phase creates peers between two pauses (see
/// there). Shorter pauses split the directory's batches finer: pausing
/// every 250 ms (or every 100,000 creates), 512 × 1M registered in 23–24 s
/// instead of 18; its creation takes under a second, so it does not pause.
const CREATE_SLICE: Duration = Duration::from_secs(2);

/// The id of peer number `n`.
fn peer_id(n: usize) -> String {
    format!("p{n}")
}

/// Host settings for simulated networks.
pub(crate) fn host_config(s: &Scenario) -> HostConfig {
    let mut c = HostConfig::for_tests();
    c.link_budget = (s.link_budget > 0).then_some(s.link_budget);
    c.relay_above = s.relay_above;
    c.replication = s.replication;
    c.heartbeat_interval = s.heartbeat;
    c.link_delay = s.latency;
    c.link_loss = s.loss;
    c.lease = c.heartbeat_interval * 10;
    c.gossip_heartbeat = Duration::from_secs(1);
    c.request_timeout = Duration::from_secs(30);
    c.join_timeout = Duration::from_secs(30);
    c
}

/// A progress bar on a terminal; elsewhere (CI, logs) one line per phase.
fn bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("distribus-sim: {what} ({len})");
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Waits until `done` holds, at most `limit`; the time taken.
async fn until<F, Fut>(what: &str, limit: Duration, done: F) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    distribus::testing::wait_until(what, limit, done)
        .await
        .map_err(|e| e.to_string())
}

fn error_name(e: &Error) -> String {
    let s = format!("{e:?}");
    s.split(['(', ' ', '{'])
        .next()
        .unwrap_or("Error")
        .to_string()
}

/// Starts a host on the memory transport and returns it with its address.
pub(crate) async fn start_host(cfg: &HostConfig) -> Result<(Host, String), String> {
    let h = Host::new(cfg.clone()).await.map_err(|e| e.report())?;
    let addr = h
        .listen("/memory/0")
        .await
        .map_err(|e| e.report())?
        .into_iter()
        .next()
        .ok_or("no listen address")?;
    Ok((h, addr.to_string()))
}

/// The simulated network.
struct Net {
    hosts: Vec<Host>,
    addrs: Vec<String>,
    ids: Vec<PeerId>,
    /// Peer `n` lives on host `n % hosts` (until churn kills it).
    peers: Vec<Option<Peer>>,
    alive: Vec<bool>,
}

/// Connected host pairs: each host counts its connected hosts; a link is
/// counted from both ends.
fn links(net: &Net) -> u64 {
    net.hosts
        .iter()
        .zip(&net.alive)
        .filter(|(_, alive)| **alive)
        .map(|(h, _)| h.stats().connected_hosts)
        .sum::<u64>()
        / 2
}

/// Request counts summed over the live hosts.
#[derive(Clone, Copy, Default)]
struct Wire {
    requests: u64,
    stream_requests: u64,
    relay_bundles: u64,
    directory_batches: u64,
    lapses: u64,
    bytes_sent: u64,
}

fn wire(net: &Net) -> Wire {
    let mut w = Wire::default();
    for (h, _) in net.hosts.iter().zip(&net.alive).filter(|(_, a)| **a) {
        let s = h.stats();
        w.requests += s.requests_sent;
        w.stream_requests += s.stream_requests;
        w.relay_bundles += s.relay_bundles;
        w.directory_batches += s.directory_batches;
        w.lapses += s.leases_lapsed;
        w.bytes_sent += s.bytes_sent;
    }
    w
}

/// Requests the hosts forwarded as relays, in all.
fn relayed(net: &Net) -> u64 {
    net.hosts.iter().map(|h| h.stats().relayed).sum()
}

/// Network round trips of the hosts' lookups, in all.
fn trips(net: &Net) -> u64 {
    net.hosts.iter().map(|h| h.stats().lookup_round_trips).sum()
}

/// Runs the scenario and returns its report.
pub(crate) async fn run(s: &Scenario) -> Result<Report, String> {
    let wall = Instant::now();
    let cpu0 = cpu_seconds();
    let rss0 = rss_bytes();
    let mut rng = StdRng::seed_from_u64(s.seed);
    let cfg = host_config(s);
    let mut r = Report {
        hosts: s.hosts,
        peers: s.peers,
        seed: s.seed,
        churn: s.churn,
        lease_s: cfg.lease.as_secs_f64(),
        ..Report::default()
    };

    // 1. Join: host i joins a random earlier host (a random tree), so the
    // membership has to spread; then wait until every host knows all.
    // Hosts start in waves of `join_wave` at once (one by one by default;
    // all at once as a fleet restarts); a wave's joins run together.
    let pb = bar(s.hosts as u64, "join");
    let mut net = Net {
        hosts: Vec::new(),
        addrs: Vec::new(),
        ids: Vec::new(),
        peers: Vec::new(),
        alive: Vec::new(),
    };
    let join_start = Instant::now();
    let mut reported = 0;
    while net.hosts.len() < s.hosts {
        let first = net.hosts.len();
        let wave = s.join_wave.min(s.hosts - first);
        let started = futures::future::join_all((0..wave).map(|_| start_host(&cfg))).await;
        for started in started {
            let (h, addr) = started?;
            net.ids.push(h.id());
            net.hosts.push(h);
            net.addrs.push(addr);
            net.alive.push(true);
        }
        let joins = (first.max(1)..net.hosts.len()).map(|i| {
            let to = rng.gen_range(0..i);
            let (h, addr) = (net.hosts[i].clone(), net.addrs[to].clone());
            async move {
                h.join(&addr)
                    .await
                    .map_err(|e| format!("join: {}", e.report()))
            }
        });
        for joined in futures::future::join_all(joins).await {
            joined?;
        }
        pb.inc(wave as u64);
        if net.hosts.len() / 64 > reported {
            reported = net.hosts.len() / 64;
            pb.suspend(|| {
                eprintln!(
                    "distribus-sim:   {} hosts joined after {:.1} s, {} links, {} opened",
                    net.hosts.len(),
                    join_start.elapsed().as_secs_f64(),
                    links(&net),
                    net.hosts
                        .iter()
                        .map(|h| h.stats().connections_opened)
                        .sum::<u64>()
                        / 2
                )
            });
        }
    }
    let n = s.hosts as u64;
    until("full membership", s.phase_timeout, || {
        let hosts = net.hosts.clone();
        async move { hosts.iter().all(|h| h.stats().hosts >= n) }
    })
    .await?;
    r.join_s = join_start.elapsed().as_secs_f64();
    r.links_after_join = links(&net);
    let probes = |net: &Net| -> u64 { net.hosts.iter().map(|h| h.stats().liveness_probes).sum() };
    // Right after a join wave the hosts still run Kademlia's bootstrap
    // queries (dialling each other), which cost 0.8 cores at 32 hosts and
    // 1.85 at 64 for a few seconds, and registration would share the
    // machine with them.
    tokio::time::sleep(s.settle).await;
    let (idle_cpu, idle_probes, idle_wire) = (cpu_seconds(), probes(&net), wire(&net));
    // Sampled through the window: each host's gauge is as of its last beat.
    let idle_end = Instant::now() + s.idle_window;
    while let Some(left) = idle_end.checked_duration_since(Instant::now()) {
        let silence = net.hosts.iter().map(|h| h.stats().longest_silence_ms);
        r.idle_longest_silence_s = r
            .idle_longest_silence_s
            .max(silence.max().unwrap_or(0) as f64 / 1e3);
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
    let window = s.idle_window.as_secs_f64().max(1e-3);
    r.idle_cpu_cores = (cpu_seconds() - idle_cpu) / window;
    let idle_end = wire(&net);
    r.idle_requests_per_s = (idle_end.requests - idle_wire.requests) as f64 / window;
    r.idle_bytes_per_host_s =
        (idle_end.bytes_sent - idle_wire.bytes_sent) as f64 / window / s.hosts as f64;
    r.idle_liveness_probes = probes(&net) - idle_probes;
    pb.finish_and_clear();
    let rss_joined = rss_bytes();
    r.rss_per_host_bytes = rss_joined.saturating_sub(rss0) / n;

    // 2. Register: create every peer, wait until every entry is held.
    let want = (s.peers * s.replication.min(s.hosts)) as u64;
    let pb = bar(want, "register");
    let reg_start = Instant::now();
    let reg_wire = wire(&net);
    net.peers.reserve(s.peers);
    let mut slice = Instant::now();
    for p in 0..s.peers {
        let peer = net.hosts[p % s.hosts]
            .create(&peer_id(p))
            .map_err(|e| e.report())?;
        net.peers.push(Some(peer));
        // Creating 10 million peers takes seconds: without a pause this
        // task held one of the two worker threads all along, and the host
        // loops it woke waited for the other (or in this one's LIFO slot,
        // which the other cannot steal): heartbeats went out seconds late.
        if p % 1024 == 0 && slice.elapsed() >= CREATE_SLICE {
            tokio::task::yield_now().await;
            slice = Instant::now();
        }
    }
    until("registration", s.phase_timeout, || {
        let total: u64 = net.hosts.iter().map(|h| h.stats().directory_entries).sum();
        pb.set_position(total.min(want));
        async move { total >= want }
    })
    .await?;
    r.register_s = reg_start.elapsed().as_secs_f64();
    let w = wire(&net);
    r.register_requests = w.requests - reg_wire.requests;
    r.register_stream_requests = w.stream_requests - reg_wire.stream_requests;
    r.register_relay_bundles = w.relay_bundles - reg_wire.relay_bundles;
    r.register_directory_batches = w.directory_batches - reg_wire.directory_batches;
    r.register_lapses = w.lapses - reg_wire.lapses;
    r.registrations_per_s = s.peers as f64 / r.register_s.max(1e-9);
    r.links_after_register = links(&net);
    pb.finish_and_clear();
    r.rss_per_peer_bytes = rss_bytes().saturating_sub(rss_joined) as f64 / (s.peers.max(1)) as f64;

    // 3. Finds from random hosts for random ids.
    find_phase(s, &net, &mut rng, &mut r).await;

    // 4. Random direct messages.
    message_phase(s, &net, &mut rng, &mut r).await?;

    // 5. Request/reply.
    if s.requests > 0 {
        request_phase(s, &net, &mut rng, &mut r).await;
    }

    // 5b. Broadcasts.
    if s.broadcasts > 0 {
        broadcast_phase(s, &net, &mut rng, &mut r).await?;
    }

    // 5c. Group sends.
    if s.group_sends > 0 {
        group_phase(s, &net, &mut rng, &mut r).await?;
    }

    // 5d. A queue group.
    if s.queue_publishes > 0 {
        queue_phase(s, &net, &mut rng, &mut r).await?;
    }

    // 6. Publishes.
    if s.publishes > 0 {
        publish_phase(s, &net, &mut rng, &mut r).await?;
    }

    // 7. Churn.
    if s.churn > 0 {
        churn_phase(s, &mut net, &cfg, &mut rng, &mut r).await?;
    }

    r.links_at_end = links(&net);
    r.relayed_requests = relayed(&net);
    r.relay_refused = net.hosts.iter().map(|h| h.stats().relay_refused).sum();
    r.lapses = wire(&net).lapses;
    r.liveness_probes = probes(&net);
    r.rss_bytes = rss_bytes();
    r.cpu_s = cpu_seconds() - cpu0;
    r.wall_s = wall.elapsed().as_secs_f64();
    // Every host leaves at once (one by one, 512 hosts each telling all the
    // others took minutes); the run is measured already.
    let closes = futures::future::join_all(net.hosts.iter().map(|h| h.close()));
    let _ = tokio::time::timeout(Duration::from_secs(30), closes).await;
    Ok(r)
}

async fn find_phase(s: &Scenario, net: &Net, rng: &mut StdRng, r: &mut Report) {
    let picks: Vec<(usize, usize)> = (0..s.finds)
        .map(|_| (rng.gen_range(0..s.hosts), rng.gen_range(0..s.peers)))
        .collect();
    let pb = bar(s.finds as u64, "find");
    let results: Vec<(bool, Duration, u32)> = futures::stream::iter(picks)
        .map(|(h, p)| {
            let host = net.hosts[h].clone();
            let expect = net.ids[p % s.hosts];
            let pb = pb.clone();
            async move {
                let t = Instant::now();
                let got = host.find(&peer_id(p)).await;
                pb.inc(1);
                match got {
                    Ok(loc) => (loc.host == expect, t.elapsed(), loc.round_trips),
                    Err(_) => (false, t.elapsed(), 0),
                }
            }
        })
        .buffer_unordered(s.concurrency)
        .collect()
        .await;
    pb.finish_and_clear();
    let mut lat = Samples::default();
    let mut trips = Samples::default();
    let mut ok = 0;
    for (good, d, rt) in &results {
        ok += usize::from(*good);
        lat.push_ms(*d);
        trips.push(f64::from(*rt));
    }
    r.finds = s.finds;
    r.find_success_ratio = ok as f64 / s.finds.max(1) as f64;
    r.find_p50_ms = lat.pct(50.0);
    r.find_p99_ms = lat.pct(99.0);
    r.find_round_trips_p99 = trips.pct(99.0);
}

/// Sends `count` random messages among the living peers; returns the
/// latencies, the failures by error, and how many were delivered.
async fn send_random(
    s: &Scenario,
    net: &Net,
    rng: &mut StdRng,
    count: usize,
    label: &str,
) -> (Samples, BTreeMap<String, usize>, usize) {
    let living: Vec<usize> = (0..s.peers).filter(|p| net.peers[*p].is_some()).collect();
    let picks: Vec<(usize, usize)> = (0..count)
        .map(|_| {
            let from = living[rng.gen_range(0..living.len())];
            let mut to = rng.gen_range(0..s.peers);
            if to == from {
                to = (to + 1) % s.peers;
            }
            (from, to)
        })
        .collect();
    let pb = bar(count as u64, label);
    let results: Vec<Result<Duration, Error>> = futures::stream::iter(picks)
        .map(|(from, to)| {
            let peer = net.peers[from].clone();
            let pb = pb.clone();
            async move {
                let t = Instant::now();
                let res = match peer {
                    Some(p) => p
                        .send(&peer_id(to), &[7u8; 48][..])
                        .await
                        .map_err(Error::from),
                    None => Err(Error::Closed),
                };
                pb.inc(1);
                res.map(|()| t.elapsed())
            }
        })
        .buffer_unordered(s.concurrency)
        .collect()
        .await;
    pb.finish_and_clear();
    tally(results)
}

/// The latencies of the operations that succeeded, the failures by error,
/// and how many succeeded.
fn tally(results: Vec<Result<Duration, Error>>) -> (Samples, BTreeMap<String, usize>, usize) {
    let mut lat = Samples::default();
    let mut errors = BTreeMap::new();
    let mut ok = 0;
    for res in results {
        match res {
            Ok(d) => {
                ok += 1;
                lat.push_ms(d);
            }
            Err(e) => *errors.entry(error_name(&e)).or_insert(0) += 1,
        }
    }
    (lat, errors, ok)
}

async fn message_phase(
    s: &Scenario,
    net: &Net,
    rng: &mut StdRng,
    r: &mut Report,
) -> Result<(), String> {
    let (cpu0, wire0, relayed0, trips0) = (cpu_seconds(), wire(net), relayed(net), trips(net));
    let start = Instant::now();
    let (mut lat, errors, ok) = send_random(s, net, rng, s.messages, "messages").await;
    let took = start.elapsed().as_secs_f64();
    let per = |n: f64| n / s.messages.max(1) as f64;
    r.message_cpu_us = per((cpu_seconds() - cpu0) * 1e6);
    r.message_requests = per(wire(net).requests.saturating_sub(wire0.requests) as f64);
    r.message_relayed = per(relayed(net).saturating_sub(relayed0) as f64);
    r.message_lookup_trips = per(trips(net).saturating_sub(trips0) as f64);
    // Acknowledged means in the inbox: count and empty the inboxes.
    let mut in_inboxes = 0;
    for p in net.peers.iter().flatten() {
        while p.try_recv().is_some() {
            in_inboxes += 1;
        }
    }
    // A `Timeout` is ambiguous (docs/RELIABILITY.md): its message may have
    // arrived. Every other error means it did not.
    let timeouts = errors.get("Timeout").copied().unwrap_or(0);
    if in_inboxes < ok || in_inboxes > ok + timeouts {
        return Err(format!(
            "{ok} sends were acknowledged ({timeouts} timed out) but {in_inboxes} messages \
             are in the inboxes; errors: {errors:?}"
        ));
    }
    r.messages = s.messages;
    r.delivered_ratio = ok as f64 / s.messages.max(1) as f64;
    r.msgs_per_s = s.messages as f64 / took.max(1e-9);
    r.latency_p50_ms = lat.pct(50.0);
    r.latency_p99_ms = lat.pct(99.0);
    r.send_errors = errors;
    Ok(())
}

/// Requests from random peers, each to a different random peer, which
/// receives it and replies (driven here: the simulator holds every peer).
/// Targets are distinct, so each inbox has one waiter.
async fn request_phase(s: &Scenario, net: &Net, rng: &mut StdRng, r: &mut Report) {
    let living: Vec<usize> = (0..s.peers).filter(|p| net.peers[*p].is_some()).collect();
    let count = s.requests.min(living.len() / 2);
    let mut targets = std::collections::HashSet::with_capacity(count);
    while targets.len() < count {
        targets.insert(living[rng.gen_range(0..living.len())]);
    }
    let picks: Vec<(usize, usize)> = targets
        .into_iter()
        .map(|to| {
            let mut from = living[rng.gen_range(0..living.len())];
            if from == to {
                from =
                    living[(living.iter().position(|p| *p == to).unwrap_or(0) + 1) % living.len()];
            }
            (from, to)
        })
        .collect();
    let pb = bar(count as u64, "requests");
    let wait = s.phase_timeout.min(Duration::from_secs(30));
    let start = Instant::now();
    let results: Vec<Result<Duration, Error>> = futures::stream::iter(picks)
        .map(|(from, to)| {
            let (asker, replier) = (net.peers[from].clone(), net.peers[to].clone());
            let pb = pb.clone();
            async move {
                let (Some(asker), Some(replier)) = (asker, replier) else {
                    return Err(Error::Closed);
                };
                let to_id = peer_id(to);
                let t = Instant::now();
                let answer = async {
                    let m = tokio::time::timeout(wait, replier.recv())
                        .await
                        .map_err(|_| Error::Timeout)?
                        .ok_or(Error::Closed)?;
                    let n: u32 = m.decode()?;
                    m.reply(&replier, &(n + 1)).await.map_err(Error::from)
                };
                let (got, answered) = tokio::join!(asker.request(&to_id, &7u32, wait), answer);
                pb.inc(1);
                answered?;
                let reply = got?;
                match reply.decode::<u32>() {
                    Ok(8) if reply.from == to_id => Ok(t.elapsed()),
                    _ => Err(Error::Decode(distribus::Cause::msg("a wrong reply"))),
                }
            }
        })
        .buffer_unordered(s.concurrency)
        .collect()
        .await;
    let took = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let (mut lat, errors, ok) = tally(results);
    r.request_errors = errors;
    r.requests = count;
    r.request_success_ratio = ok as f64 / count.max(1) as f64;
    r.requests_per_s = count as f64 / took.max(1e-9);
    r.request_p50_ms = lat.pct(50.0);
    r.request_p99_ms = lat.pct(99.0);
}

/// Broadcasts from random hosts, one after another: each must reach every
/// living peer (the report's count, then each inbox is checked).
async fn broadcast_phase(
    s: &Scenario,
    net: &Net,
    rng: &mut StdRng,
    r: &mut Report,
) -> Result<(), String> {
    let living: Vec<&Peer> = net.peers.iter().flatten().collect();
    let mut took = Vec::with_capacity(s.broadcasts);
    let mut least = 1.0f64;
    for n in 0..s.broadcasts {
        let from = loop {
            let h = rng.gen_range(0..s.hosts);
            if net.alive[h] {
                break h;
            }
        };
        let t = Instant::now();
        let report = net.hosts[from]
            .broadcast(&(n as u32))
            .await
            .map_err(|e| format!("broadcast {n}: {}", e.report()))?;
        took.push(t.elapsed().as_secs_f64() * 1e3);
        least = least.min(report.peers as f64 / living.len().max(1) as f64);
        if !report.failed.is_empty() {
            tracing::warn!(failed = ?report.failed, "a broadcast missed hosts");
        }
    }
    // Each living peer has every broadcast, once, in order.
    let mut complete = 0usize;
    for p in &living {
        let mut got = Vec::with_capacity(s.broadcasts);
        while let Some(m) = p.try_recv() {
            got.push(m.decode::<u32>().map_err(|e| e.report())?);
        }
        if got == (0..s.broadcasts as u32).collect::<Vec<_>>() {
            complete += 1;
        }
    }
    took.sort_by(|a, b| a.total_cmp(b));
    r.broadcasts = s.broadcasts;
    r.broadcast_reached_ratio = least.min(complete as f64 / living.len().max(1) as f64);
    r.broadcast_p50_ms = took[took.len() / 2];
    r.broadcast_max_ms = took.last().copied().unwrap_or(0.0);
    Ok(())
}

/// Members of each of the group phase's groups.
pub(crate) const GROUP_SIZE: usize = 100;
/// Groups in the group phase.
const GROUPS: usize = 10;

/// Makes [`GROUPS`] groups of [`GROUP_SIZE`] peers (`room.<g>.m<i>`) spread
/// over the living hosts, then group sends from random hosts to random
/// groups, one after another: each must reach its group's members once
/// and no other peer (each report, then each inbox is checked).
async fn group_phase(
    s: &Scenario,
    net: &Net,
    rng: &mut StdRng,
    r: &mut Report,
) -> Result<(), String> {
    let alive: Vec<usize> = (0..s.hosts).filter(|&h| net.alive[h]).collect();
    let mut members = Vec::with_capacity(GROUPS * GROUP_SIZE);
    for i in 0..GROUPS * GROUP_SIZE {
        let host = &net.hosts[alive[i % alive.len()]];
        let id = format!("room.{}.m{i}", i % GROUPS);
        members.push(
            host.create(&id)
                .map_err(|e| format!("create {id}: {}", e.report()))?,
        );
    }
    let mut took = Vec::with_capacity(s.group_sends);
    let mut sent = vec![Vec::new(); GROUPS];
    let mut least = 1.0f64;
    for n in 0..s.group_sends {
        let from = alive[rng.gen_range(0..alive.len())];
        let g = rng.gen_range(0..GROUPS);
        let t = Instant::now();
        let report = net.hosts[from]
            .send_group(&format!("room.{g}.*"), &(n as u32))
            .await
            .map_err(|e| format!("group send {n}: {}", e.report()))?;
        took.push(t.elapsed().as_secs_f64() * 1e3);
        least = least.min(report.peers as f64 / GROUP_SIZE as f64);
        sent[g].push(n as u32);
    }
    // Each member has its group's messages, once, in order; the peers of
    // the other phases have none.
    let mut complete = 0usize;
    for (i, p) in members.iter().enumerate() {
        let mut got = Vec::new();
        while let Some(m) = p.try_recv() {
            got.push(m.decode::<u32>().map_err(|e| e.report())?);
        }
        if got == sent[i % GROUPS] {
            complete += 1;
        }
    }
    let strays = net
        .peers
        .iter()
        .flatten()
        .filter(|p| p.try_recv().is_some())
        .count();
    if strays > 0 {
        tracing::warn!(strays, "peers outside the groups got a group message");
        least = 0.0;
    }
    took.sort_by(|a, b| a.total_cmp(b));
    r.group_sends = s.group_sends;
    r.group_reached_ratio = least.min(complete as f64 / members.len() as f64);
    r.group_p50_ms = took[took.len() / 2];
    r.group_max_ms = took.last().copied().unwrap_or(0.0);
    // Gone again, so the later phases see the peers they made.
    for (i, p) in members.iter().enumerate() {
        let _ = net.hosts[alive[i % alive.len()]].remove(p.id());
    }
    Ok(())
}

/// Two members of the queue group `workers` on `sim.jobs` on each of (at
/// most) 32 random living hosts; publishes from 4 random living hosts, 64
/// in flight: each must reach exactly one member, and the members should
/// share them evenly.
async fn queue_phase(
    s: &Scenario,
    net: &Net,
    rng: &mut StdRng,
    r: &mut Report,
) -> Result<(), String> {
    const CHANNEL: &str = "sim.jobs";
    const GROUP: &str = "workers";
    let mut alive: Vec<usize> = (0..s.hosts).filter(|&h| net.alive[h]).collect();
    alive.shuffle(rng);
    let member_hosts: Vec<usize> = alive.iter().copied().take(32).collect();
    let publishers: Vec<usize> = alive.iter().rev().copied().take(4).collect();
    let mut members = Vec::new();
    for &h in &member_hosts {
        for _ in 0..2 {
            members.push(
                net.hosts[h]
                    .subscribe_queue(CHANNEL, GROUP)
                    .await
                    .map_err(|e| e.report())?,
            );
        }
    }
    // Every publisher must know every member host's two members first.
    for &p in &publishers {
        let host = net.hosts[p].clone();
        let local = member_hosts.contains(&p) as usize;
        let want = member_hosts.len() - local;
        until("queue group to spread", s.phase_timeout, || {
            let h = host.clone();
            async move {
                h.members()
                    .await
                    .map(|m| {
                        m.iter()
                            .filter(|i| i.queues.iter().any(|q| q.group == GROUP && q.members == 2))
                            .count()
                            >= want
                    })
                    .unwrap_or(false)
            }
        })
        .await?;
    }
    let pb = bar(s.queue_publishes as u64, "queue");
    let t = Instant::now();
    let mut next = 0u32;
    while (next as usize) < s.queue_publishes {
        let end = (next as usize + 64).min(s.queue_publishes) as u32;
        let batch = (next..end).map(|n| {
            let host = &net.hosts[publishers[n as usize % publishers.len()]];
            async move { host.publish(CHANNEL, &n).await }
        });
        for res in futures::future::join_all(batch).await {
            res.map_err(|e| format!("queue publish: {}", e.report()))?;
        }
        pb.inc(u64::from(end - next));
        next = end;
    }
    r.queue_per_s = s.queue_publishes as f64 / t.elapsed().as_secs_f64().max(1e-9);
    pb.finish_and_clear();
    let mut times = vec![0u32; s.queue_publishes];
    let mut shares = Vec::with_capacity(members.len());
    for m in &mut members {
        let mut n_got = 0;
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(20), m.recv()).await {
            let n = msg.decode::<u32>().map_err(|e| e.report())?;
            if let Some(t) = times.get_mut(n as usize) {
                *t += 1;
            }
            n_got += 1;
        }
        shares.push(n_got);
    }
    r.queue_publishes = s.queue_publishes;
    r.queue_members = members.len();
    r.queue_delivered_ratio =
        times.iter().filter(|&&t| t == 1).count() as f64 / s.queue_publishes as f64;
    r.queue_share_min = shares.iter().copied().min().unwrap_or(0);
    r.queue_share_max = shares.iter().copied().max().unwrap_or(0);
    Ok(())
}

async fn publish_phase(
    s: &Scenario,
    net: &Net,
    rng: &mut StdRng,
    r: &mut Report,
) -> Result<(), String> {
    // Half the subscribing hosts take the channel by a wildcard pattern.
    const CHANNEL: &str = "sim.news";
    const PATTERN: &str = "sim.*";
    let publisher = rng.gen_range(0..s.hosts);
    let mut chosen: Vec<usize> = (0..s.hosts).collect();
    for i in 0..chosen.len() {
        let j = rng.gen_range(i..chosen.len());
        chosen.swap(i, j);
    }
    chosen.truncate(s.subscribers);
    let epoch = Instant::now();
    let mut tasks = Vec::new();
    for (i, &h) in chosen.iter().enumerate() {
        let mut sub = net.hosts[h]
            .subscribe(if i % 2 == 1 { PATTERN } else { CHANNEL })
            .await
            .map_err(|e| e.report())?;
        let want = s.publishes;
        tasks.push(tokio::spawn(async move {
            let mut lat = Samples::default();
            let mut got = 0;
            while got < want {
                match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await {
                    Ok(Some(m)) => {
                        if let Ok(sent_ns) = m.decode::<u64>() {
                            let now = epoch.elapsed().as_nanos() as f64;
                            lat.push((now - sent_ns as f64) / 1e6);
                        }
                        got += 1;
                    }
                    _ => break,
                }
            }
            (got, lat)
        }));
    }
    // The publisher must have heard of every subscription first.
    let others = chosen.iter().filter(|h| **h != publisher).count();
    let pub_host = net.hosts[publisher].clone();
    until("subscriptions to spread", s.phase_timeout, || {
        let h = pub_host.clone();
        async move {
            h.members()
                .await
                .map(|m| {
                    m.iter()
                        .filter(|i| i.channels.iter().any(|c| c == CHANNEL || c == PATTERN))
                        .count()
                        >= others
                })
                .unwrap_or(false)
        }
    })
    .await?;
    let pb = bar(s.publishes as u64, "publish");
    for _ in 0..s.publishes {
        let now = epoch.elapsed().as_nanos() as u64;
        pub_host
            .publish(CHANNEL, &now)
            .await
            .map_err(|e| format!("publish: {}", e.report()))?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut total = 0;
    let mut lat = Samples::default();
    for t in tasks {
        let (got, l) = t.await.map_err(|e| e.to_string())?;
        total += got;
        lat.extend(l);
    }
    r.publishes = s.publishes;
    r.wildcard_subscribers = chosen.len() / 2;
    r.subscribers = chosen.len();
    r.publish_delivered_ratio = total as f64 / (s.publishes * chosen.len()).max(1) as f64;
    r.publish_p50_ms = lat.pct(50.0);
    r.publish_p99_ms = lat.pct(99.0);
    for &h in &chosen {
        let _ = net.hosts[h].unsubscribe(CHANNEL).await;
    }
    Ok(())
}

async fn churn_phase(
    s: &Scenario,
    net: &mut Net,
    cfg: &HostConfig,
    rng: &mut StdRng,
    r: &mut Report,
) -> Result<(), String> {
    // Kill `churn` random hosts other than host 0: drop every handle, so
    // they stop without leaving, as a crash would.
    let mut victims = Vec::new();
    while victims.len() < s.churn {
        let v = rng.gen_range(1..s.hosts);
        if !victims.contains(&v) {
            victims.push(v);
        }
    }
    let mut dead_ids = Vec::new();
    for &v in &victims {
        net.alive[v] = false;
        for p in (v..s.peers).step_by(s.hosts) {
            net.peers[p] = None;
            if dead_ids.len() < 100 {
                dead_ids.push(peer_id(p));
            }
        }
        let (placeholder, _) = start_host(cfg).await?;
        let dead = std::mem::replace(&mut net.hosts[v], placeholder.clone());
        drop(dead);
        // The placeholder never joins; close it so it holds nothing.
        let _ = placeholder.close().await;
    }
    let killed_at = Instant::now();
    let living: Vec<Host> = (0..s.hosts)
        .filter(|h| net.alive[*h])
        .map(|h| net.hosts[h].clone())
        .collect();

    // Traffic while the network notices.
    let count = (s.messages / 10).max(100);
    let (_, errors, _) = send_random(s, net, rng, count, "churn").await;
    r.churn_messages = count;
    r.churn_errors = errors;

    let dead = Arc::new(dead_ids);
    let probe = living[0].clone();
    let d = until("killed peers to be forgotten", s.phase_timeout, || {
        let dead = dead.clone();
        let probe = probe.clone();
        async move {
            for id in dead.iter() {
                if !matches!(probe.find(id).await, Err(FindError::PeerNotFound(_))) {
                    return false;
                }
            }
            true
        }
    })
    .await?;
    r.churn_recovery_s = (killed_at.elapsed().max(d)).as_secs_f64();

    // Add as many hosts, each with its share of new peers.
    let per_host = (s.peers / s.hosts).max(1);
    let join_start = Instant::now();
    let mut fresh = Vec::new();
    let mut new_peers = Vec::new();
    for i in 0..s.churn {
        let (h, _) = start_host(cfg).await?;
        let alive: Vec<usize> = (0..s.hosts).filter(|h| net.alive[*h]).collect();
        let addr = net.addrs[alive[rng.gen_range(0..alive.len())]].clone();
        h.join(&addr)
            .await
            .map_err(|e| format!("churn join: {}", e.report()))?;
        for k in 0..per_host {
            new_peers.push(h.create(&format!("c{i}-{k}")).map_err(|e| e.report())?);
        }
        fresh.push(h);
    }
    let sample: Vec<String> = new_peers
        .iter()
        .take(100)
        .map(|p| p.id().to_string())
        .collect();
    until("new peers to be found", s.phase_timeout, || {
        let probe = probe.clone();
        let sample = sample.clone();
        async move {
            for id in &sample {
                if probe.find(id).await.is_err() {
                    return false;
                }
            }
            true
        }
    })
    .await?;
    r.churn_join_s = join_start.elapsed().as_secs_f64();
    for h in fresh {
        let _ = h.close().await;
    }
    Ok(())
}
