//! chitchat (scuttlebutt with a phi-accrual failure detector) on a paused
//! tokio clock: its own gossip tasks run unchanged, time jumps whenever
//! every task waits, and messages go through chitchat's own in-process
//! transport, which encodes and decodes each one (as over a datagram
//! socket) and counts it.

use std::{
    collections::{HashSet, VecDeque},
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use chitchat::{
    spawn_chitchat,
    transport::{ChannelTransport, RecvOutcome, SendOutcome, Socket, Transport},
    ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};
use rand::{rngs::StdRng, RngExt, SeedableRng};

use crate::{cpu_seconds, Args, Outcome};

/// What a late message waits (as `distribus-sim --loss`).
const LATE: Duration = Duration::from_millis(200);
/// How often convergence and deaths are sampled.
const SAMPLE: Duration = Duration::from_millis(100);
/// chitchat's gossip round (its default, and Quickwit's).
const GOSSIP: Duration = Duration::from_secs(1);

/// chitchat's in-process transport (it encodes, decodes and counts every
/// message), with a share of messages held back [`LATE`] on receipt.
#[derive(Clone)]
struct Net {
    inner: ChannelTransport,
    /// The late share, as `f64` bits (0: none).
    late: Arc<AtomicU64>,
    /// Seed of the first socket's late choices; each next one adds 1.
    seed: u64,
    /// Sockets opened so far.
    opened: Arc<AtomicU64>,
}

#[async_trait]
impl Transport for Net {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.inner.open(listen_addr).await?;
        // Hosts open their sockets one after another: each its own stream.
        let seed = self
            .seed
            .wrapping_add(self.opened.fetch_add(1, Ordering::Relaxed));
        Ok(Box::new(LateSocket {
            inner,
            late: self.late.clone(),
            rng: StdRng::seed_from_u64(seed),
            held: VecDeque::new(),
        }))
    }
}

/// A socket that holds back a share of what it receives.
struct LateSocket {
    inner: Box<dyn Socket>,
    late: Arc<AtomicU64>,
    rng: StdRng,
    /// Held messages with when they are due, oldest first.
    held: VecDeque<(tokio::time::Instant, RecvOutcome)>,
}

#[async_trait]
impl Socket for LateSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        self.inner.send(to, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let now = tokio::time::Instant::now();
            if self.held.front().is_some_and(|(due, _)| *due <= now) {
                if let Some((_, m)) = self.held.pop_front() {
                    return Ok(m);
                }
            }
            let due = self.held.front().map(|(due, _)| *due);
            tokio::select! {
                m = self.inner.recv() => {
                    let m = m?;
                    let p = f64::from_bits(self.late.load(Ordering::Relaxed));
                    if p > 0.0 && self.rng.random_bool(p) {
                        self.held.push_back((now + LATE, m));
                        continue;
                    }
                    return Ok(m);
                }
                () = tokio::time::sleep_until(due.unwrap_or(now)), if due.is_some() => {}
            }
        }
    }
}

fn addr(i: usize) -> SocketAddr {
    let i = i as u32;
    SocketAddr::from((
        Ipv4Addr::from(0x0a00_0000 | (i >> 8)),
        7000 + (i & 0xff) as u16,
    ))
}

/// Every host's count of live hosts (itself included) and the ids of the
/// hosts it holds dead.
async fn views(handles: &[ChitchatHandle]) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        let c = h.chitchat();
        let c = c.lock().await;
        out.push((
            c.live_nodes().count(),
            c.dead_nodes().map(|id| id.node_id.to_string()).collect(),
        ));
    }
    out
}

async fn run_async(n: usize, args: &Args) -> anyhow::Result<Outcome> {
    let net = Net {
        inner: ChannelTransport::default(),
        late: Arc::new(AtomicU64::new(0f64.to_bits())),
        seed: args.seed ^ 0x5eed,
        opened: Arc::new(AtomicU64::new(0)),
    };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut handles = Vec::with_capacity(n);
    let cpu0 = cpu_seconds();
    let start = tokio::time::Instant::now();
    for i in 0..n {
        // A node id as long as a libp2p peer id's text.
        let id = format!("12D3KooW{:044x}", rng.random::<u128>() ^ i as u128);
        let seeds = if i == 0 {
            Vec::new()
        } else {
            vec![addr(rng.random_range(0..i)).to_string()]
        };
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(id, 0, addr(i)),
            cluster_id: "compare".to_string(),
            gossip_interval: GOSSIP,
            listen_addr: addr(i),
            seed_nodes: seeds,
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        handles.push(spawn_chitchat(config, Vec::new(), &net).await?);
    }
    let mut out = Outcome {
        system: "chitchat",
        hosts: n,
        round_s: GOSSIP.as_secs_f64(),
        late_share: args.late,
        ..Outcome::default()
    };
    while start.elapsed() < args.converge_timeout {
        tokio::time::sleep(SAMPLE).await;
        if views(&handles).await.iter().all(|(live, _)| *live == n) {
            out.converged_s = Some(start.elapsed().as_secs_f64());
            break;
        }
    }
    out.join_cpu_s = cpu_seconds() - cpu0;
    let least = views(&handles)
        .await
        .iter()
        .map(|(live, _)| *live)
        .min()
        .unwrap_or(1);
    out.least_known = (least - 1) as f64 / (n - 1) as f64;
    let counts = |net: &Net| {
        let s = net.inner.statistics();
        (s.num_messages_total, s.num_bytes_total)
    };
    let (m, b) = counts(&net);
    out.join_messages_per_host = m as f64 / n as f64;
    out.join_bytes_per_host = b as f64 / n as f64;

    let ((m0, b0), cpu0, t0) = (counts(&net), cpu_seconds(), tokio::time::Instant::now());
    tokio::time::sleep(args.window).await;
    let secs = t0.elapsed().as_secs_f64();
    let (m1, b1) = counts(&net);
    out.idle_messages_per_host_s = (m1 - m0) as f64 / (secs * n as f64);
    out.idle_bytes_per_host_s = (b1 - b0) as f64 / (secs * n as f64);
    out.idle_cores = (cpu_seconds() - cpu0) / secs;

    net.late.store(args.late.to_bits(), Ordering::Relaxed);
    let mut dead = HashSet::new();
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < args.window {
        tokio::time::sleep(SAMPLE).await;
        for (i, (_, d)) in views(&handles).await.into_iter().enumerate() {
            dead.extend(d.into_iter().map(|id| (i, id)));
        }
    }
    out.false_downs = dead.len() as u64;
    for h in handles {
        h.abort();
    }
    Ok(out)
}

/// Runs chitchat with `n` hosts.
pub(crate) fn run(n: usize, args: &Args) -> anyhow::Result<Outcome> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?
        .block_on(run_async(n, args))
}
