//! Directory registration rate in a 50-host in-process network (memory
//! transport, replication 3): peers are created round-robin over the hosts,
//! and the clock stops when every holder has stored every entry.
//!
//! `cargo bench --bench directory`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use distribus::{Host, HostConfig};

const HOSTS: usize = 50;
const BATCH: u64 = 50_000;

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
    let entries = |hosts: &[Host]| {
        hosts
            .iter()
            .map(|h| h.stats().directory_entries)
            .sum::<u64>()
    };
    let mut next = 0u64;
    let mut g = c.benchmark_group("directory");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("register_50k_peers_50_hosts_r3", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let hosts = hosts.clone();
            let first = next;
            next += iters * BATCH;
            async move {
                let before = entries(&hosts);
                let start = Instant::now();
                let total = iters * BATCH;
                for i in 0..total {
                    let id = first + i;
                    hosts[(id as usize) % HOSTS]
                        .create(&format!("peer-{id}"))
                        .expect("create");
                }
                let created = start.elapsed();
                let want = before + total * 3;
                let deadline = Instant::now() + Duration::from_secs(120);
                while entries(&hosts) < want && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                assert!(entries(&hosts) >= want, "registrations did not complete");
                if std::env::var_os("DIRECTORY_BENCH_TRACE").is_some() {
                    eprintln!(
                        "created {total} in {created:?}, registered in {:?}",
                        start.elapsed()
                    );
                }
                start.elapsed()
            }
        })
    });
    g.finish();
    let opened: u64 = hosts.iter().map(|h| h.stats().connections_opened).sum();
    let connected: u64 = hosts.iter().map(|h| h.stats().connected_hosts).sum();
    eprintln!("connections opened {opened}, open now {connected}");
}

criterion_group!(benches, directory);
criterion_main!(benches);
