//! A host holding a million peers is a normal case.

use crate::common;

use common::*;
use distribus::HostConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_holds_a_million_peers_and_others_reach_them() {
    const N: usize = 1_000_000;
    let cfg = HostConfig::for_tests();
    let (a, a_addr) = mem_host(cfg.clone()).await;
    let (b, _) = mem_host(cfg).await;
    b.join(&a_addr.to_string()).await.unwrap();
    let started = std::time::Instant::now();
    let mut kept = Vec::new();
    for i in 0..N {
        let p = a.create(&format!("peer-{i}")).unwrap();
        if i % 100_000 == 7 {
            kept.push(p);
        }
    }
    assert_eq!(a.peer_count(), N);
    // With two hosts and replication 3 both hold every entry.
    wait_for("all entries registered on both hosts", || async {
        a.stats().directory_entries == N as u64 && b.stats().directory_entries == N as u64
    })
    .await;
    eprintln!(
        "1M peers created and registered on 2 hosts in {:?}",
        started.elapsed()
    );
    let sender = b.create("sender").unwrap();
    for p in &kept {
        assert_eq!(b.find(p.id()).await.unwrap().host, a.id());
        sender.send(p.id(), "hello").await.unwrap();
        assert_eq!(within("delivery", p.recv()).await.unwrap().from, "sender");
    }
    // Removing withdraws: half the entries go away on both hosts.
    for i in (0..N).step_by(2) {
        a.remove(format!("peer-{i}")).unwrap();
    }
    wait_for("withdrawals applied", || async {
        a.stats().directory_entries == (N / 2) as u64 + 1
            && b.stats().directory_entries == (N / 2) as u64 + 1
    })
    .await;
}
