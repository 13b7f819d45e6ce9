//! Direct-message benchmarks (64-byte payloads):
//! - same-host sends;
//! - host to host over TCP loopback with 1 and with 1,024 sends in flight;
//! - the round trip of one send (it resolves on the receiver's ack), next to
//!   a raw libp2p request-response round trip measured in the same run;
//! - request/reply host to host, 1 and 1,024 in flight;
//! - two-host channel publishes: awaited, 1,024 in flight, and latency.
//!
//! `cargo bench --bench messaging`
//!
//! With mimalloc, the allocator `distribus-node` ships with (the system
//! allocator's figures beside them: docs/PERFORMANCE.md, "Allocator").

use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use distribus::{Host, HostConfig, Payload, Peer, Subscription};
use futures::{stream, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    noise,
    request_response::{self, ProtocolSupport},
    swarm::SwarmEvent,
    tcp, yamux, Multiaddr, StreamProtocol, Swarm, SwarmBuilder,
};
use tokio::runtime::Runtime;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn payload() -> Payload {
    Payload::postcard(&[7u8; 63][..]).expect("encode")
}

/// Two TCP hosts, a sender on the first and a draining receiver on the second.
async fn two_hosts() -> (Host, Host, Peer) {
    let mut cfg = HostConfig::default();
    cfg.inbox_capacity = 1 << 20;
    let a = Host::new(cfg.clone()).await.expect("host");
    let b = Host::new(cfg).await.expect("host");
    a.listen("/ip4/127.0.0.1/tcp/0").await.expect("listen");
    let b_addr = b
        .listen("/ip4/127.0.0.1/tcp/0")
        .await
        .expect("listen")
        .remove(0);
    a.join(&b_addr.to_string()).await.expect("join");
    let sender = a.create("sender").expect("create");
    let receiver = b.create("receiver").expect("create");
    tokio::spawn(async move { while receiver.recv().await.is_some() {} });
    for _ in 0..200 {
        if sender.send_payload("receiver", payload()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (a, b, sender)
}

/// Runs `iters` calls of `op` with 1,024 in flight; the time they took.
async fn pipelined<T, E: std::fmt::Debug, Fut>(iters: u64, op: impl Fn() -> Fut) -> Duration
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    stream::iter(0..iters)
        .map(|_| op())
        .buffer_unordered(1024)
        .for_each(|r| async move {
            r.expect("answered");
        })
        .await;
    start.elapsed()
}

fn same_host(c: &mut Criterion) {
    let rt = runtime();
    let (host, a, b) = rt.block_on(async {
        let mut cfg = HostConfig::default();
        cfg.inbox_capacity = 1024;
        let host = Host::new(cfg).await.expect("host");
        let a = host.create("a").expect("create");
        let b = host.create("b").expect("create");
        (host, a, b)
    });
    let p = payload();
    let mut g = c.benchmark_group("same_host");
    g.throughput(Throughput::Elements(1));
    g.bench_function("send_64B", |bench| {
        bench.to_async(&rt).iter_custom(|iters| {
            let (a, b, p) = (a.clone(), b.clone(), p.clone());
            async move {
                let start = Instant::now();
                for i in 0..iters {
                    a.send_payload("b", p.clone()).await.expect("send");
                    if i % 512 == 511 {
                        while b.try_recv().is_some() {}
                    }
                }
                while b.try_recv().is_some() {}
                start.elapsed()
            }
        })
    });
    g.finish();
    drop(host);
}

fn host_to_host(c: &mut Criterion) {
    let rt = runtime();
    let (_a, _b, sender) = rt.block_on(two_hosts());
    let sender = Arc::new(sender);
    let p = payload();
    let mut g = c.benchmark_group("host_to_host");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("send_64B_1_in_flight", |bench| {
        bench.to_async(&rt).iter(|| async {
            sender
                .send_payload("receiver", p.clone())
                .await
                .expect("send");
        })
    });
    g.bench_function("send_64B_1024_in_flight", |bench| {
        bench.to_async(&rt).iter_custom(|iters| {
            let (sender, p) = (sender.clone(), p.clone());
            pipelined(iters, move || {
                let (sender, p) = (sender.clone(), p.clone());
                async move { sender.send_payload("receiver", p).await }
            })
        })
    });
    g.finish();
}

/// Request/reply between two TCP hosts: a peer on the second host answers
/// each request with its payload; one request in flight (the round trip)
/// and 1,024 (the rate).
fn request_reply(c: &mut Criterion) {
    let rt = runtime();
    let (_a, b, sender) = rt.block_on(two_hosts());
    let replier = b.create("replier").expect("create");
    rt.spawn({
        let replier = replier.clone();
        // Replies pipelined as requests are: each waits for its ack.
        async move {
            let answering = replier.clone();
            answering
                .map(|m| {
                    let replier = replier.clone();
                    async move { m.reply_payload(&replier, m.payload.clone()).await }
                })
                .buffer_unordered(1024)
                .for_each(|_| async {})
                .await
        }
    });
    rt.block_on(async {
        for _ in 0..200 {
            if sender
                .request_payload("replier", payload(), Duration::from_secs(5))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let sender = Arc::new(sender);
    let p = payload();
    let wait = Duration::from_secs(10);
    let mut g = c.benchmark_group("host_to_host");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("request_64B_1_in_flight", |bench| {
        bench.to_async(&rt).iter(|| async {
            sender
                .request_payload("replier", p.clone(), wait)
                .await
                .expect("reply");
        })
    });
    g.bench_function("request_64B_1024_in_flight", |bench| {
        bench.to_async(&rt).iter_custom(|iters| {
            let (sender, p) = (sender.clone(), p.clone());
            pipelined(iters, move || {
                let (sender, p) = (sender.clone(), p.clone());
                async move { sender.request_payload("replier", p, wait).await }
            })
        })
    });
    g.finish();
}

/// Length-prefixed bytes, for the raw request-response baseline.
#[derive(Clone, Default)]
struct Bytes64;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let mut v = vec![0; u32::from_be_bytes(len) as usize];
    io.read_exact(&mut v).await?;
    Ok(v)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, v: &[u8]) -> io::Result<()> {
    io.write_all(&(v.len() as u32).to_be_bytes()).await?;
    io.write_all(v).await?;
    io.close().await
}

impl request_response::Codec for Bytes64 {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io).await
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &r).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &r).await
    }
}

fn raw_swarm() -> Swarm<request_response::Behaviour<Bytes64>> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| {
            request_response::Behaviour::new(
                [(StreamProtocol::new("/bench/raw/1"), ProtocolSupport::Full)],
                request_response::Config::default().with_max_concurrent_streams(4096),
            )
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build()
}

fn raw_baseline(c: &mut Criterion) {
    let rt = runtime();
    let client = rt.block_on(async {
        let mut server = raw_swarm();
        server
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
            .expect("listen");
        let addr: Multiaddr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
                break address;
            }
        };
        let server_id = *server.local_peer_id();
        tokio::spawn(async move {
            loop {
                if let SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                }) = server.select_next_some().await
                {
                    let _ = server.behaviour_mut().send_response(channel, request);
                }
            }
        });
        let mut client = raw_swarm();
        client.add_peer_address(server_id, addr);
        (client, server_id)
    });
    let (client, server_id) = (Arc::new(tokio::sync::Mutex::new(client.0)), client.1);
    let mut g = c.benchmark_group("host_to_host");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("raw_request_response_64B_1_in_flight", |bench| {
        bench.to_async(&rt).iter_custom(|iters| {
            let client = client.clone();
            async move {
                let mut swarm = client.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    swarm
                        .behaviour_mut()
                        .send_request(&server_id, vec![7u8; 64]);
                    loop {
                        match swarm.select_next_some().await {
                            SwarmEvent::Behaviour(request_response::Event::Message {
                                message: request_response::Message::Response { .. },
                                ..
                            }) => break,
                            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                                error,
                                ..
                            }) => {
                                panic!("raw request failed: {error}")
                            }
                            _ => {}
                        }
                    }
                }
                start.elapsed()
            }
        })
    });
    g.finish();
}

/// Two hosts over TCP loopback, the second subscribing to `bench` and
/// `wild.*`, both known to the first.
async fn publish_hosts() -> (Host, Host, Subscription, Subscription) {
    let mut cfg = HostConfig::default();
    // Room for a whole pipelined sample: a subscription that falls this far
    // behind misses messages (channels are at most once).
    cfg.subscription_capacity = 1 << 20;
    let a = Host::new(cfg.clone()).await.expect("host");
    let b = Host::new(cfg).await.expect("host");
    let addr = b
        .listen("/ip4/127.0.0.1/tcp/0")
        .await
        .expect("listen")
        .remove(0);
    a.listen("/ip4/127.0.0.1/tcp/0").await.expect("listen");
    a.join(&addr.to_string()).await.expect("join");
    let sub = b.subscribe("bench").await.expect("subscribe");
    let wild = b.subscribe("wild.*").await.expect("subscribe");
    for _ in 0..500 {
        let members = a.members().await.expect("members");
        let known = |ch: &str| members.iter().any(|m| m.channels.iter().any(|c| c == ch));
        if known("bench") && known("wild.*") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (a, b, sub, wild)
}

/// Publishes the subscriber missed (its reader too slow: channels are at
/// most once), and publishes made, over the publish benches.
static MISSED: AtomicU64 = AtomicU64::new(0);
static PUBLISHED: AtomicU64 = AtomicU64::new(0);

/// Receives `n` messages, or fewer where the subscription counts the rest
/// as missed; fails loudly instead of hanging on a loss (a publish neither
/// delivered nor counted).
async fn receive(sub: &mut Subscription, n: u64) {
    let (mut got, before) = (0, sub.missed());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // Read in runs, as a reader that keeps up with a pipelining publisher
    // does (`Subscription::recv_many`); never more than this sample's.
    let mut batch = Vec::with_capacity(1024);
    while got + (sub.missed() - before) < n {
        let want = (n - got - (sub.missed() - before)).min(1024) as usize;
        batch.clear();
        // A missed publish never arrives: look at the count again soon.
        match tokio::time::timeout(Duration::from_millis(20), sub.recv_many(&mut batch, want)).await
        {
            Ok(0) => break,
            Ok(k) => got += k as u64,
            Err(_) if tokio::time::Instant::now() < deadline => {}
            Err(_) => break,
        }
    }
    let missed = sub.missed() - before;
    if got + missed < n {
        panic!("{got} of {n} publishes arrived ({missed} missed)");
    }
    MISSED.fetch_add(missed, Ordering::Relaxed);
    PUBLISHED.fetch_add(n, Ordering::Relaxed);
}

/// Two-host publishes: the publisher on one TCP host, one subscriber on
/// the other; the clock stops when the subscriber has all.
/// - `two_hosts_64B`: each publish awaited, to a subscription of the
///   channel itself, and to a wildcard subscription (`wild.*`, publishes
///   on `wild.x`);
/// - `two_hosts_64B_1024_in_flight`: 1,024 publishes in flight, the rate a
///   pipelining publisher sustains (as NATS clients publish);
/// - `latency_64B`: one publish at a time, timed from the call until the
///   subscriber has it (compare with `host_to_host/send_64B_1_in_flight`,
///   a direct message's round trip).
fn publish(c: &mut Criterion) {
    let rt = runtime();
    let (a, b, sub, wild) = rt.block_on(publish_hosts());
    let p = payload();
    let sub = Arc::new(tokio::sync::Mutex::new(sub));
    let wild = Arc::new(tokio::sync::Mutex::new(wild));
    let mut g = c.benchmark_group("publish");
    g.throughput(Throughput::Elements(1));
    for (name, channel, sub, in_flight) in [
        ("two_hosts_64B", "bench", &sub, false),
        ("two_hosts_64B_wildcard", "wild.x", &wild, false),
        ("two_hosts_64B_1024_in_flight", "bench", &sub, true),
    ] {
        g.bench_function(name, |bench| {
            bench.to_async(&rt).iter_custom(|iters| {
                let (a, sub, p) = (a.clone(), sub.clone(), p.clone());
                async move {
                    let start = Instant::now();
                    // Receive while publishing.
                    let receiver = tokio::spawn(async move {
                        receive(&mut *sub.lock().await, iters).await;
                    });
                    if in_flight {
                        pipelined(iters, || a.publish_payload(channel, p.clone())).await;
                    } else {
                        for _ in 0..iters {
                            a.publish_payload(channel, p.clone())
                                .await
                                .expect("publish");
                        }
                    }
                    receiver.await.expect("receiver");
                    start.elapsed()
                }
            })
        });
        report_missed(name);
    }
    g.bench_function("latency_64B", |bench| {
        bench.to_async(&rt).iter_custom(|iters| {
            let (a, sub, p) = (a.clone(), sub.clone(), p.clone());
            async move {
                let mut sub = sub.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    a.publish_payload("bench", p.clone())
                        .await
                        .expect("publish");
                    receive(&mut sub, 1).await;
                }
                start.elapsed()
            }
        })
    });
    report_missed("latency_64B");
    g.finish();
    rt.block_on(async {
        let _ = a.close().await;
        let _ = b.close().await;
    });
}

/// Prints how many publishes the subscriber of bench `name` missed.
fn report_missed(name: &str) {
    let missed = MISSED.swap(0, Ordering::Relaxed);
    let published = PUBLISHED.swap(0, Ordering::Relaxed);
    if missed > 0 {
        eprintln!(
            "publish/{name}: the subscriber missed {missed} of {published} publishes ({:.2} %: \
             its reader was slower than the publisher; channels are at most once)",
            100.0 * missed as f64 / published as f64
        );
    }
}

criterion_group!(
    benches,
    same_host,
    host_to_host,
    request_reply,
    raw_baseline,
    publish
);
criterion_main!(benches);
