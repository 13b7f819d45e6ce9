//! Membership spreads through joins and gossip; dropped joined hosts are
//! redialled with backoff; cached locations outlive a drop until the
//! reconnect timeout.

use crate::common;

use std::time::Duration;

use common::*;
use distribus::{FindError, HostConfig, SendError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaches_c_when_both_joined_b() {
    let cfg = HostConfig::for_tests();
    let (a, _) = mem_host(cfg.clone()).await;
    let (b, b_addr) = mem_host(cfg.clone()).await;
    let (c, _) = mem_host(cfg).await;
    a.join(&b_addr.to_string()).await.unwrap();
    c.join(&b_addr.to_string()).await.unwrap();
    wait_membership(&[&a, &b, &c], 3).await;
    let alice = a.create("alice").unwrap();
    let carol = c.create("carol").unwrap();
    wait_found(&a, "carol", &c).await;
    alice.send("carol", "hi carol").await.unwrap();
    assert_eq!(within("carol", carol.recv()).await.unwrap().from, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaches_c_along_a_chain() {
    let cfg = HostConfig::for_tests();
    let (a, _) = mem_host(cfg.clone()).await;
    let (b, b_addr) = mem_host(cfg.clone()).await;
    let (c, c_addr) = mem_host(cfg).await;
    a.join(&b_addr.to_string()).await.unwrap();
    b.join(&c_addr.to_string()).await.unwrap();
    wait_membership(&[&a, &b, &c], 3).await;
    let alice = a.create("alice").unwrap();
    let carol = c.create("carol").unwrap();
    wait_found(&a, "carol", &c).await;
    alice.send("carol", &7u32).await.unwrap();
    assert_eq!(
        within("carol", carol.recv())
            .await
            .unwrap()
            .decode::<u32>()
            .unwrap(),
        7
    );
    carol.send("alice", &8u32).await.unwrap();
    assert_eq!(
        within("alice", alice.recv())
            .await
            .unwrap()
            .decode::<u32>()
            .unwrap(),
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_networks_merge_into_one() {
    let cfg = HostConfig::for_tests();
    let (a, _) = mem_host(cfg.clone()).await;
    let (b, b_addr) = mem_host(cfg.clone()).await;
    let (c, _) = mem_host(cfg.clone()).await;
    let (d, d_addr) = mem_host(cfg).await;
    a.join(&b_addr.to_string()).await.unwrap();
    c.join(&d_addr.to_string()).await.unwrap();
    wait_membership(&[&a, &b], 2).await;
    wait_membership(&[&c, &d], 2).await;
    let peers: Vec<_> = [&a, &b, &c, &d]
        .iter()
        .enumerate()
        .map(|(i, h)| h.create(&format!("p{i}")).unwrap())
        .collect();
    // One host of each joins the other.
    b.join(&d_addr.to_string()).await.unwrap();
    wait_membership(&[&a, &b, &c, &d], 4).await;
    for (i, from) in peers.iter().enumerate() {
        for (j, to) in peers.iter().enumerate() {
            if i == j {
                continue;
            }
            wait_found(from.host(), to.id(), to.host()).await;
            from.send(to.id(), &(i, j)).await.unwrap();
            let m = within("merged delivery", to.recv()).await.unwrap();
            assert_eq!(m.decode::<(usize, usize)>().unwrap(), (i, j));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_joined_host_is_redialled_and_cache_lives_until_timeout() {
    let mut cfg = HostConfig::for_tests();
    cfg.reconnect_delay = Duration::from_millis(100);
    cfg.reconnect_decay = 2.0;
    cfg.reconnect_timeout = Duration::from_secs(4);
    cfg.lease = Duration::from_secs(60);
    let mut b_cfg = HostConfig::for_tests();
    b_cfg.keypair = Some(libp2p::identity::Keypair::generate_ed25519());
    let (a, _) = mem_host(cfg.clone()).await;
    let b = distribus::Host::new(b_cfg.clone()).await.unwrap();
    let port = 40_000 + (rand_port() % 10_000);
    let b_addr = b
        .listen(&format!("/memory/{port}"))
        .await
        .unwrap()
        .remove(0);
    a.join(&b_addr.to_string()).await.unwrap();
    let alice = a.create("alice").unwrap();
    let _bob = b.create("bob").unwrap();
    wait_found(&a, "bob", &b).await;
    alice.send("bob", "one").await.unwrap();
    assert_eq!(a.cached_location("bob").await.unwrap(), Some(b.id()));

    // b crashes: every handle dropped, no leave.
    let b_id = b.id();
    drop(_bob);
    drop(b);
    wait_for("a sees b disconnected", || async {
        a.members()
            .await
            .unwrap()
            .iter()
            .all(|m| m.host != b_id || !m.connected)
    })
    .await;
    // Within the reconnect timeout the cached location stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.cached_location("bob").await.unwrap(), Some(b_id));
    assert!(matches!(
        alice.send("bob", "lost").await,
        Err(SendError::PeerUnreachable { .. }) | Err(SendError::Timeout)
    ));

    // b restarts at the same address with the same key: a redials it by itself.
    let b2 = distribus::Host::new(b_cfg.clone()).await.unwrap();
    // The old listener is freed when the aborted task is dropped.
    wait_for("port free again", || async {
        b2.listen(&format!("/memory/{port}")).await.is_ok()
    })
    .await;
    let bob2 = b2.create("bob").unwrap();
    wait_for("a reconnects to b", || async {
        a.members()
            .await
            .unwrap()
            .iter()
            .any(|m| m.host == b_id && m.connected)
    })
    .await;
    wait_for("bob reachable again", || async {
        alice.send("bob", "two").await.is_ok()
    })
    .await;
    assert_eq!(
        within("bob2", bob2.recv())
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "two"
    );

    // Now b drops for longer than the reconnect timeout: the cache is forgotten.
    drop(bob2);
    drop(b2);
    wait_for("cache forgotten after the timeout", || async {
        a.cached_location("bob").await.unwrap().is_none()
    })
    .await;
}

fn rand_port() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// A host restarted with the same key on a clock that stepped back (its
/// last incarnation started an hour "later" than now) is taken by the
/// others at once when it is given its last epoch (`min_epoch`, which
/// `distribus-node --identity` keeps beside the key): its new epoch is
/// above the old one, its peers are found and reached. Started on the bare
/// clock instead, its epoch is below the one the others remember, and they
/// ignore it (the defect: an epoch that depends on the clock going
/// forward).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_the_clock_stepped_back_is_taken_at_once() {
    let cfg = HostConfig::for_tests();
    let (b, b_addr) = mem_host(cfg.clone()).await;
    let bob = b.create("bob").unwrap();
    let key = libp2p::identity::Keypair::generate_ed25519();
    let hour_ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        + 3_600_000_000_000;

    let mut first = cfg.clone();
    first.keypair = Some(key.clone());
    first.min_epoch = hour_ahead;
    let (a1, _) = mem_host(first).await;
    assert!(a1.epoch() > hour_ahead);
    a1.join(&b_addr.to_string()).await.unwrap();
    let _alice = a1.create("alice").unwrap();
    wait_found(&b, "alice", &a1).await;
    let last_epoch = a1.epoch();
    a1.close().await;
    wait_for("alice withdrawn", || async {
        matches!(b.find("alice").await, Err(FindError::PeerNotFound(_)))
    })
    .await;

    // On the bare clock: an older incarnation to b.
    let mut bare = cfg.clone();
    bare.keypair = Some(key.clone());
    let (a_bare, _) = mem_host(bare).await;
    assert!(a_bare.epoch() < last_epoch);
    let joined = a_bare.join(&b_addr.to_string()).await;
    let _alice = a_bare.create("alice").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        joined.is_err() || b.find("alice").await.is_err(),
        "an incarnation older than the last one was taken"
    );
    a_bare.close().await;

    // Given its last epoch: taken at once.
    let mut again = cfg;
    again.keypair = Some(key);
    again.min_epoch = last_epoch;
    let (a2, _) = mem_host(again).await;
    assert!(a2.epoch() > last_epoch);
    a2.join(&b_addr.to_string()).await.unwrap();
    let alice = a2.create("alice").unwrap();
    wait_found(&b, "alice", &a2).await;
    bob.send("alice", &1u32).await.unwrap();
    assert_eq!(within("alice", alice.recv()).await.unwrap().from, "bob");
    alice.send("bob", &2u32).await.unwrap();
    assert_eq!(within("bob", bob.recv()).await.unwrap().from, "alice");
}

/// Six hosts joined as a chain, in a network too small to relay: once all
/// know all, each is still linked only to the hosts it joined or that
/// joined it. Links form where requests go; Kademlia's bootstrap and
/// queries after a join do not link every host to every other (the dial
/// gate denies every dial the event loop did not make).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_links_only_the_hosts_that_joined_each_other() {
    const N: usize = 6;
    let mut cfg = HostConfig::for_tests();
    // Digests go to linked hosts, and every fourth one to a random other
    // member (which links them): slow beats keep that out of this test.
    cfg.heartbeat_interval = Duration::from_secs(10);
    cfg.lease = Duration::from_secs(60);
    let nodes = mem_hosts(N, &cfg).await;
    for i in 1..N {
        let to = nodes[i - 1].1.to_string();
        nodes[i].0.join(&to).await.expect("join");
    }
    let hosts: Vec<&distribus::Host> = nodes.iter().map(|(h, _)| h).collect();
    wait_membership(&hosts, N).await;
    // Time for the bootstrap and the queries a join starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, h) in hosts.iter().enumerate() {
        let mut linked: Vec<usize> = h
            .members()
            .await
            .unwrap()
            .iter()
            .filter(|m| m.connected)
            .filter_map(|m| hosts.iter().position(|o| o.id() == m.host))
            .collect();
        let chain: Vec<usize> = [i.checked_sub(1), Some(i + 1).filter(|&j| j < N)]
            .into_iter()
            .flatten()
            .collect();
        linked.sort();
        assert_eq!(linked, chain, "host {i}'s links");
    }
}
