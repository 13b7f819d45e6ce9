//! Peers and lookups:
//! - `create` rate on one host (the directory registration that follows
//!   runs in the background and is measured by `benches/directory.rs`);
//! - bytes of RSS per idle peer (printed, not timed);
//! - `find` answered from its last answer (the find cache), and `find`
//!   that takes one network round trip to the holder (the find cache off,
//!   a location cache of one entry, ids cycling);
//! - `create_unique` on one of three hosts (replication 3): a create
//!   answered once every holder has the entry, one at a time (what a
//!   gateway client's `create` waits for).
//!
//! `cargo bench --bench peers`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use distribus::{testing::rss_bytes, Host, HostConfig, Peer};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn creation(c: &mut Criterion) {
    let rt = runtime();
    let host = rt.block_on(async { Host::new(HostConfig::for_tests()).await.expect("host") });
    let _guard = rt.enter();

    // Bytes per idle peer: 200,000 peers with 12-byte ids, RSS before and
    // after, handles kept (as an application would).
    let before = rss_bytes();
    let kept: Vec<Peer> = (0..200_000)
        .map(|i| host.create(&format!("idle-{i:07}")).expect("create"))
        .collect();
    rt.block_on(tokio::time::sleep(Duration::from_millis(500)));
    let per_peer = rss_bytes().saturating_sub(before) as f64 / kept.len() as f64;
    println!("peers/idle_peer_bytes: {per_peer:.0} bytes of RSS per idle peer (200,000 peers)");

    let mut next = 0u64;
    let mut g = c.benchmark_group("peers");
    g.throughput(Throughput::Elements(1));
    g.bench_function("create", |b| {
        b.iter_custom(|iters| {
            let first = next;
            next += iters;
            let start = Instant::now();
            for i in first..first + iters {
                let _ = host.create(&format!("c{i}")).expect("create");
            }
            start.elapsed()
        })
    });
    g.finish();
    drop(kept);
    rt.block_on(async { host.close().await });
}

fn find(c: &mut Criterion) {
    let rt = runtime();
    const IDS: usize = 20_000;
    let (a, b, remote_ids) = rt.block_on(async {
        // Replication 1 on two hosts: half the entries live only on b, so a
        // must ask b for them; a one-entry cache keeps cycling ids uncached.
        let mut cfg = HostConfig::for_tests();
        cfg.replication = 1;
        cfg.location_cache_capacity = 1;
        let a = Host::new(cfg.clone()).await.expect("host");
        let b = Host::new(cfg).await.expect("host");
        let addr = b.listen("/memory/0").await.expect("listen").remove(0);
        a.join(&addr.to_string()).await.expect("join");
        let peers: Vec<Peer> = (0..IDS)
            .map(|i| b.create(&format!("f{i}")).expect("create"))
            .collect();
        let mut remote = Vec::new();
        for p in &peers {
            for _ in 0..500 {
                match a.find(p.id()).await {
                    Ok(loc) if loc.round_trips > 0 => {
                        remote.push(p.id().to_string());
                        break;
                    }
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
        std::mem::forget(peers);
        (a, b, remote)
    });
    assert!(
        !remote_ids.is_empty(),
        "no id lives only on the remote host"
    );

    let mut g = c.benchmark_group("find");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cached", |bench| {
        let id = remote_ids[0].clone();
        bench.to_async(&rt).iter_custom(|iters| {
            let (a, id) = (a.clone(), id.clone());
            async move {
                a.find(&id).await.expect("find");
                let start = Instant::now();
                for _ in 0..iters {
                    a.find(&id).await.expect("find");
                }
                start.elapsed()
            }
        })
    });
    // Every find asks from here on: no answer is reused.
    let mut cfg = a.config();
    cfg.find_cache_ttl = Duration::ZERO;
    a.set_config(cfg).expect("config");
    let mut turn = 0usize;
    g.bench_function("uncached_one_round_trip", |bench| {
        bench.to_async(&rt).iter_custom(|iters| {
            let a = a.clone();
            let ids: Vec<String> = (0..iters as usize)
                .map(|i| remote_ids[(turn + i) % remote_ids.len()].clone())
                .collect();
            turn += iters as usize;
            async move {
                let start = Instant::now();
                for id in &ids {
                    a.find(id).await.expect("find");
                }
                start.elapsed()
            }
        })
    });
    g.finish();
    rt.block_on(async {
        let _ = a.close().await;
        let _ = b.close().await;
    });
}

fn registration(c: &mut Criterion) {
    let rt = runtime();
    let hosts = rt.block_on(async {
        let cfg = HostConfig::for_tests();
        let a = Host::new(cfg.clone()).await.expect("host");
        let addr = a.listen("/memory/0").await.expect("listen").remove(0);
        let mut hosts = vec![a];
        for _ in 0..2 {
            let h = Host::new(cfg.clone()).await.expect("host");
            h.join(&addr.to_string()).await.expect("join");
            hosts.push(h);
        }
        for h in &hosts {
            while h.stats().hosts < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        hosts
    });
    let mut next = 0u64;
    let mut g = c.benchmark_group("registration");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    g.bench_function("create_unique", |bench| {
        bench.to_async(&rt).iter_custom(|iters| {
            let a = hosts[0].clone();
            let first = next;
            next += iters;
            async move {
                let start = Instant::now();
                for i in first..first + iters {
                    let p = a.create_unique(&format!("u{i}")).await.expect("registered");
                    std::mem::forget(p);
                }
                start.elapsed()
            }
        })
    });
    g.finish();
    rt.block_on(async {
        for h in hosts {
            let _ = h.close().await;
        }
    });
}

criterion_group!(benches, creation, find, registration);
criterion_main!(benches);
