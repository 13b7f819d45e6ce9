//! Directory registration rate in a 50-host in-process network (memory
//! transport, replication 3): peers are created round-robin over the hosts,
//! and the clock stops when every holder has stored every entry.
//!
//! `cargo bench --bench directory`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use distribus::{testing::cpu_seconds, Host, HostConfig};

const HOSTS: usize = 50;
/// Peers created per timed run: a bulk load of a million, and a burst of
/// 50,000 (where the per-request cost of reaching all 49 holders from
/// every host weighs more).
const BURSTS: [u64; 2] = [1_000_000, 50_000];

/// Total directory entries held by all hosts.
fn entries(hosts: &[Host]) -> u64 {
    hosts.iter().map(|h| h.stats().directory_entries).sum()
}

/// Waits (bounded) until the hosts hold `want` entries in all.
async fn until_entries(hosts: &[Host], want: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while entries(hosts) != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(entries(hosts), want, "the directory did not settle");
}

/// Creates `total` peers (ids from `first`) round-robin over the hosts and
/// times until every holder stores every entry. Then, untimed, removes
/// them again and waits for the withdrawals, so memory stays flat over
/// the samples.
async fn register_burst(hosts: &[Host], first: u64, total: u64) -> Duration {
    let before = entries(hosts);
    let cpu = cpu_seconds();
    let start = Instant::now();
    for id in first..first + total {
        hosts[(id as usize) % HOSTS]
            .create(&format!("peer-{id}"))
            .expect("create");
    }
    let created = start.elapsed();
    until_entries(hosts, before + total * 3).await;
    let took = start.elapsed();
    if std::env::var_os("DIRECTORY_BENCH_TRACE").is_some() {
        let batches: u64 = hosts.iter().map(|h| h.stats().directory_batches).sum();
        eprintln!(
            "created {total} in {created:?}, registered in {took:?} using {:.2} CPU-s; {batches} batches so far",
            cpu_seconds() - cpu
        );
    }
    for id in first..first + total {
        hosts[(id as usize) % HOSTS]
            .remove(format!("peer-{id}"))
            .expect("remove");
    }
    until_entries(hosts, before).await;
    took
}

fn directory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let hosts: Vec<Host> = rt.block_on(async {
        let mut cfg = HostConfig::for_tests();
        cfg.heartbeat_interval = Duration::from_secs(2);
        cfg.lease = Duration::from_secs(60);
        cfg.gossip_heartbeat = Duration::from_secs(1);
        let mut hosts = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..HOSTS {
            let h = Host::new(cfg.clone()).await.expect("host");
            addrs.push(h.listen("/memory/0").await.expect("listen").remove(0));
            if i > 0 {
                h.join(&addrs[(i - 1) / 2].to_string()).await.expect("join");
            }
            hosts.push(h);
        }
        for h in &hosts {
            while h.stats().hosts as usize != HOSTS {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        hosts
    });
    let mut g = c.benchmark_group("directory");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(20));
    let mut next = 0u64;
    for burst in BURSTS {
        g.throughput(Throughput::Elements(burst));
        let name = format!("register_{}k_peers_50_hosts_r3", burst / 1000);
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let hosts = hosts.clone();
                let first = next;
                next += iters * burst;
                async move {
                    let mut took = Duration::ZERO;
                    for i in 0..iters {
                        took += register_burst(&hosts, first + i * burst, burst).await;
                    }
                    took
                }
            })
        });
    }
    g.finish();
    if std::env::var_os("DIRECTORY_BENCH_TRACE").is_some() {
        let cpu = cpu_seconds();
        std::thread::sleep(Duration::from_secs(3));
        eprintln!("idle: {:.2} cores", (cpu_seconds() - cpu) / 3.0);
    }
    let opened: u64 = hosts.iter().map(|h| h.stats().connections_opened).sum();
    let connected: u64 = hosts.iter().map(|h| h.stats().connected_hosts).sum();
    eprintln!("connections opened {opened}, open now {connected}");
}

criterion_group!(benches, directory);
criterion_main!(benches);
