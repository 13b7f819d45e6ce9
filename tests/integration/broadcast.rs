//! Broadcast: one message to every peer on every host, once each.

use crate::common;

use std::time::Duration;

use common::*;
use distribus::{BroadcastError, Host, HostConfig, Peer};

/// Takes what `peer` has now (after a moment for stragglers).
async fn drain(peer: &Peer) -> Vec<(String, u32)> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = Vec::new();
    while let Some(m) = peer.try_recv() {
        got.push((m.from.clone(), m.decode::<u32>().expect("a number")));
    }
    got
}

/// 12 hosts joined as a tree, relaying above 4 hosts, three peers each: a
/// broadcast from a peer, then one from a host, each on a host that is not
/// linked to every other, reach every peer once (partly through relays),
/// and the reports count every host and peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_every_peer_on_every_host_once_through_relays() {
    const N: usize = 12;
    let hosts = relaying_tree(N).await;
    // Once every host has its overlay's links, registrations to hosts that
    // are not neighbours go through relays instead of opening links.
    wait_overlay_linked(&hosts).await;
    let peers: Vec<Peer> = (0..N * 3)
        .map(|i| hosts[i % N].create(&format!("p{i}")).unwrap())
        .collect();
    for (i, p) in peers.iter().enumerate() {
        wait_found(&hosts[(i + 1) % N], p.id(), &hosts[i % N]).await;
    }
    // A host with a member it is neither linked to nor keeps a link to
    // must send that member its broadcast through a relay. Under load a
    // relay that was slow is avoided for a lease and a link may open
    // meanwhile, so the senders are picked again before each try, and a
    // broadcast that went without a relay is followed by another, at most
    // four: with relaying broken every try fails.
    let unlinked_senders = || async {
        let mut senders = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let members = h.members().await.unwrap();
            if members.iter().any(|m| !m.connected && !m.neighbour) {
                senders.push(i);
            }
        }
        senders
    };
    let mut from_peers = Vec::new();
    let mut relayed = false;
    let mut second = 0;
    for _ in 0..4 {
        let senders = unlinked_senders().await;
        assert!(
            senders.len() >= 2,
            "hosts with unlinked members: {senders:?}"
        );
        let first = senders[0];
        second = senders[1];
        let relayed_before: u64 = hosts.iter().map(|h| h.stats().relayed).sum();
        let report = within("broadcast", peers[first].broadcast(&7u32))
            .await
            .unwrap();
        assert_eq!(
            (report.hosts, report.peers, report.missed),
            (N, 3 * N as u64, 0)
        );
        assert!(report.failed.is_empty(), "{report:?}");
        from_peers.push(peers[first].id().to_string());
        let relayed_after: u64 = hosts.iter().map(|h| h.stats().relayed).sum();
        if relayed_after > relayed_before {
            relayed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert!(
        relayed,
        "no broadcast went through a relay in {} tries",
        from_peers.len()
    );
    let report = within("broadcast", hosts[second].broadcast(&8u32))
        .await
        .unwrap();
    assert_eq!((report.hosts, report.peers), (N, 3 * N as u64));

    let from_host = hosts[second].id().to_string();
    let mut want: Vec<(String, u32)> = from_peers.iter().map(|f| (f.clone(), 7)).collect();
    want.push((from_host, 8));
    for p in &peers {
        assert_eq!(drain(p).await, want, "what {} received", p.id());
    }
    let broadcasts = from_peers.len() as u64 + 1;
    let delivered: u64 = hosts.iter().map(|h| h.stats().broadcast_delivered).sum();
    assert_eq!(delivered, broadcasts * 3 * N as u64);
    let made: u64 = hosts.iter().map(|h| h.stats().broadcasts).sum();
    assert_eq!(made, broadcasts);
}

/// Full inboxes are counted as missed, a crashed host is named, and with
/// every other host gone the broadcast fails as partitioned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_says_what_it_missed_and_fails_when_partitioned() {
    let mut cfg = HostConfig::for_tests();
    cfg.inbox_capacity = 4;
    let [a, b, c]: [Host; 3] = star(3, &cfg).await.try_into().unwrap();
    let a1 = a.create("a1").unwrap();
    let b1 = b.create("b1").unwrap();
    let full = b.create("full").unwrap();
    let c1 = c.create("c1").unwrap();
    wait_found(&a, "full", &b).await;
    for n in 0..4u32 {
        a1.send("full", &n).await.unwrap();
    }
    let report = within("broadcast", a1.broadcast(&1u32)).await.unwrap();
    assert_eq!((report.hosts, report.peers, report.missed), (3, 3, 1));
    assert_eq!(drain(&b1).await, vec![("a1".to_string(), 1)]);
    assert_eq!(full.pending(), 4);

    // c crashes (no leave): until its lease lapses it is a member, and the
    // broadcast names it.
    let c_id = c.id();
    drop((c, c1));
    let report = within("broadcast", a1.broadcast(&2u32)).await.unwrap();
    assert_eq!(
        (report.hosts, report.failed.clone()),
        (2, vec![c_id]),
        "{report:?}"
    );
    assert_eq!(drain(&b1).await, vec![("a1".to_string(), 2)]);

    let b_id = b.id();
    drop((b, b1, full));
    match within("broadcast", a1.broadcast(&3u32)).await {
        Err(BroadcastError::Partitioned(n)) => assert!(n >= 1, "{n}"),
        other => panic!("expected Partitioned, got {other:?} (b was {b_id})"),
    }
    // The local peers have it all the same.
    assert_eq!(
        drain(&a1).await,
        vec![
            ("a1".to_string(), 1),
            ("a1".to_string(), 2),
            ("a1".to_string(), 3)
        ]
    );
}

/// A group send reaches every peer whose id matches its pattern, on every
/// host (through relays), once each, and no other peer; a bad pattern is
/// refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_send_reaches_the_matching_peers_on_every_host_and_no_others() {
    const N: usize = 8;
    let hosts = relaying_tree(N).await;
    // room.1.<i> on every host, room.2.<i> and room.1.<i>.x on some.
    let mut room1 = Vec::new();
    let mut others = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        room1.push(h.create(&format!("room.1.{i}")).unwrap());
        if i % 2 == 0 {
            others.push(h.create(&format!("room.2.{i}")).unwrap());
            others.push(h.create(&format!("room.1.{i}.x")).unwrap());
        }
    }
    let lobby = hosts[3].create("lobby").unwrap();

    let report = within("group send", lobby.send_group("room.1.*", &5u32))
        .await
        .unwrap();
    assert_eq!(
        (report.hosts, report.peers, report.missed),
        (N, N as u64, 0),
        "{report:?}"
    );
    assert!(report.failed.is_empty(), "{report:?}");
    for p in &room1 {
        assert_eq!(drain(p).await, vec![("lobby".to_string(), 5)], "{}", p.id());
    }
    for p in others.iter().chain([&lobby]) {
        assert_eq!(drain(p).await, vec![], "{} got a message", p.id());
    }

    // `>` takes the deeper ids too; a host sends from itself.
    let report = within("group send", hosts[6].send_group("room.>", &6u32))
        .await
        .unwrap();
    // room.1.<i> on all 8, room.2.<i> and room.1.<i>.x on 4 each.
    assert_eq!(report.peers, 2 * N as u64, "{report:?}");
    assert_eq!(drain(&lobby).await, vec![]);
    assert_eq!(hosts[6].stats().group_sends, 1);
    assert_eq!(hosts[3].stats().group_sends, 1);

    for bad in ["", "room..1", "room.>.x"] {
        assert!(
            matches!(
                lobby.send_group(bad, &0u32).await,
                Err(BroadcastError::InvalidPattern(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(hosts[3].stats().group_sends, 1);
}
