//! The relay overlay of big networks: two hops over few links.

use crate::common;

use std::{collections::HashSet, time::Duration};

use common::*;
use distribus::{Host, HostConfig};

/// 32 hosts joined as a tree, relaying above 4 hosts (so every host keeps
/// about 13 neighbours instead of 31 links): every peer sends to every
/// other, finds succeed from every host, many requests go through relays,
/// yet every message arrives exactly once and in order, a channel reaches
/// every subscriber once, and the hosts hold far fewer links than a full
/// mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relaying_network_delivers_everything_once_over_few_links() {
    const N: usize = 32;
    const EACH: u32 = 4;
    let hosts = relaying_tree(N).await;

    all_to_all_exactly_once(&hosts, EACH).await;
    let relayed: u64 = hosts.iter().map(|h| h.stats().relayed).sum();
    assert!(relayed > 0, "nothing went through a relay");
    let on_streams: u64 = hosts.iter().map(|h| h.stats().stream_requests).sum();
    assert!(on_streams > 0, "no request went on a request stream");
    // Everything was answered: no relay still holds another host's request.
    wait_for("relays hold nothing once all is answered", || async {
        hosts.iter().all(|h| h.stats().relay_held_bytes == 0)
    })
    .await;

    // A channel with five subscribing hosts, published from a sixth.
    let mut subscribers = Vec::new();
    for i in [3, 9, 14, 22, 30] {
        subscribers.push(hosts[i].subscribe("news").await.unwrap());
    }
    let publisher = &hosts[17];
    wait_for("publisher knows the subscribers", || async {
        let members = publisher.members().await.unwrap();
        let subscribed: HashSet<_> = members
            .iter()
            .filter(|m| m.channels.iter().any(|c| c == "news"))
            .map(|m| m.host)
            .collect();
        subscribed.len() == subscribers.len()
    })
    .await;
    for n in 0..50u32 {
        publisher.publish("news", &n).await.unwrap();
    }
    for mut s in subscribers {
        for n in 0..50u32 {
            let m = within("publish", s.recv()).await.unwrap();
            assert_eq!(m.decode::<u32>().unwrap(), n);
        }
        let again = tokio::time::timeout(Duration::from_millis(300), s.recv()).await;
        assert!(again.is_err(), "a publish arrived twice");
    }

    // A full mesh would be 496 links; the overlay keeps about 13 per host
    // plus the join tree's.
    wait_for("links shrink to the overlay", || async {
        let links: u64 = hosts.iter().map(|h| h.stats().connected_hosts).sum::<u64>() / 2;
        links <= 300
    })
    .await;
}

/// A relay that crashes (no leave) is still a member until its lease
/// lapses; requests that would go through it must go around it, so every
/// send between live hosts right after the crash succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_go_around_a_crashed_relay() {
    const N: usize = 20;
    const DEAD: [usize; 4] = [5, 9, 13, 17];
    let mut cfg = HostConfig::for_tests();
    cfg.relay_above = 4;
    cfg.lease = Duration::from_secs(30); // the dead stay members all test long
    let nodes = mem_hosts(N, &cfg).await;
    let first = nodes[0].1.to_string();
    for (h, _) in &nodes[1..] {
        h.join(&first).await.unwrap();
    }
    let mut hosts: Vec<Option<Host>> = nodes.into_iter().map(|(h, _)| Some(h)).collect();
    let all: Vec<&Host> = hosts.iter().flatten().collect();
    wait_membership(&all, N).await;
    let mut peers: Vec<Option<distribus::Peer>> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| h.as_ref().map(|h| h.create(&format!("p{i}")).unwrap()))
        .collect();
    for (i, h) in hosts.iter().enumerate() {
        for (j, owner) in hosts.iter().enumerate() {
            if i != j {
                wait_found(
                    h.as_ref().unwrap(),
                    &format!("p{j}"),
                    owner.as_ref().unwrap(),
                )
                .await;
            }
        }
    }
    // Links made while the network was small close once idle: from here
    // on, most pairs of hosts talk through a relay.
    wait_for("links shrink to the overlay", || async {
        let links: u64 = hosts
            .iter()
            .flatten()
            .map(|h| h.stats().connected_hosts)
            .sum::<u64>()
            / 2;
        links <= 130
    })
    .await;
    let before: u64 = hosts.iter().flatten().map(|h| h.stats().relayed).sum();
    // Crash: every handle dropped, no leave.
    for d in DEAD {
        peers[d] = None;
        hosts[d] = None;
    }
    let live: Vec<usize> = (0..N).filter(|i| !DEAD.contains(i)).collect();
    for &i in &live {
        let p = peers[i].as_ref().unwrap();
        for &j in &live {
            if i != j {
                within("send", p.send(&format!("p{j}"), &(i as u32)))
                    .await
                    .unwrap_or_else(|e| panic!("p{i} -> p{j}: {e}"));
            }
        }
    }
    let after: u64 = hosts.iter().flatten().map(|h| h.stats().relayed).sum();
    assert!(after > before, "no send went through a relay");
    for &j in &live {
        let p = peers[j].as_ref().unwrap();
        for _ in 0..live.len() - 1 {
            within("message", p.recv()).await.unwrap();
        }
    }
}
