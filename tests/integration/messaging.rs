//! Direct messages between peers, on one host and across hosts.

use crate::common;

use common::*;
use distribus::{CreateError, FindError, Host, HostConfig, SendError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Greeting {
    text: String,
    n: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_exchange_typed_and_json_messages() {
    let cfg = HostConfig::for_tests();
    let (a, _) = mem_host(cfg.clone()).await;
    let (b, b_addr) = mem_host(cfg).await;
    assert_eq!(a.join(&b_addr.to_string()).await.unwrap(), b.id());
    let alice = a.create("alice").unwrap();
    let bob = b.create("bob").unwrap();
    wait_found(&a, "bob", &b).await;
    wait_found(&b, "alice", &a).await;

    let g = Greeting {
        text: "hello".into(),
        n: 1,
    };
    alice.send("bob", &g).await.unwrap();
    let m = within("bob receives", bob.recv()).await.unwrap();
    assert_eq!(m.from, "alice");
    assert_eq!(m.decode::<Greeting>().unwrap(), g);

    let v = serde_json::json!({"text": "hi", "list": [1, 2, 3], "nested": {"ok": true}});
    bob.send_json("alice", &v).await.unwrap();
    let m = within("alice receives", alice.recv()).await.unwrap();
    assert_eq!(m.from, "bob");
    assert_eq!(m.decode::<serde_json::Value>().unwrap(), v);
    assert!(a.stats().sent_remote >= 1);
    // a looked bob up over the network: the lookup's time is recorded.
    let lookups = a.stats().lookup_latency;
    assert!(lookups.count() >= 1, "{lookups:?}");
    assert_eq!(
        lookups.cumulative_seconds().last().map(|(_, n)| *n),
        Some(lookups.count())
    );
    // bob replied without a lookup: alice's location came with her message.
    assert_eq!(b.cached_location("alice").await.unwrap(), Some(a.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_on_the_wire_are_counted_per_direction_over_tcp() {
    const SIZE: usize = 300_000;
    let (a, b, alice, bob) = alice_and_bob().await;
    let (a0, b0) = (a.stats(), b.stats());
    assert!(a0.bytes_sent > 0 && a0.bytes_received > 0, "{a0:?}");
    alice.send("bob", &vec![7u8; SIZE]).await.unwrap();
    let m = within("bob receives", bob.recv()).await.unwrap();
    assert_eq!(m.decode::<Vec<u8>>().unwrap().len(), SIZE);
    let (a1, b1) = (a.stats(), b.stats());
    // The message went one way, encrypted and framed: at least its size
    // out of a and into b, and only acknowledgements and digests back.
    assert!(a1.bytes_sent - a0.bytes_sent >= SIZE as u64, "{a1:?}");
    assert!(
        b1.bytes_received - b0.bytes_received >= SIZE as u64,
        "{b1:?}"
    );
    assert!(
        a1.bytes_received - a0.bytes_received < SIZE as u64 / 2,
        "{a1:?}"
    );
    assert!(b1.bytes_sent - b0.bytes_sent < SIZE as u64 / 2, "{b1:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_delivery_never_touches_the_network() {
    let h = distribus::Host::new(HostConfig::for_tests()).await.unwrap();
    let a = h.create("a").unwrap();
    let b = h.create("b").unwrap();
    for i in 0..100u32 {
        a.send("b", &i).await.unwrap();
    }
    for i in 0..100u32 {
        assert_eq!(b.recv().await.unwrap().decode::<u32>().unwrap(), i);
    }
    let s = h.stats();
    assert_eq!(s.sent_local, 100);
    assert_eq!(s.sent_remote, 0);
    assert_eq!(s.lookups, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_in_send_order_even_pipelined() {
    use futures::stream::{FuturesOrdered, StreamExt};
    let (_a, _b, alice, bob) = mem_pair(HostConfig::for_tests(), "alice", "bob").await;
    const N: u32 = 1000;
    let mut sends: FuturesOrdered<_> = (0..N)
        .map(|i| {
            let alice = alice.clone();
            async move { alice.send("bob", &i).await }
        })
        .collect();
    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..N {
            got.push(bob.recv().await.unwrap().decode::<u32>().unwrap());
        }
        got
    });
    while let Some(r) = within("sends", sends.next()).await {
        r.unwrap();
    }
    let got = within("receive all", receiver).await.unwrap();
    let first_wrong = got.iter().enumerate().find(|(i, v)| *i as u32 != **v);
    assert_eq!(first_wrong, None, "out of order");
    assert_eq!(got.len(), N as usize);
}

/// Sends switch between the event loop and the direct lane to the link
/// task (small batches, so the link task's queue fills and sends fall back
/// to the loop, then take the lane again): two senders' messages still
/// arrive each in its send order, all of them, and both ways were taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_when_sends_switch_between_the_loop_and_the_direct_lane() {
    use futures::stream::StreamExt;
    let mut cfg = HostConfig::for_tests();
    cfg.max_batch_messages = 4; // a link task queues 16 sends at most
    cfg.inbox_capacity = 100_000;
    let (a, _) = mem_host(cfg.clone()).await;
    let (b, b_addr) = mem_host(cfg).await;
    a.join(&b_addr.to_string()).await.unwrap();
    let senders = [a.create("s0").unwrap(), a.create("s1").unwrap()];
    let bob = b.create("bob").unwrap();
    wait_found(&a, "bob", &b).await;
    // Rounds of a pipelined burst (far more in flight than a link task
    // queues: sends wait in the loop) and of sends one at a time (nothing
    // in the loop's hands: the lane).
    const ROUNDS: u32 = 5;
    const BURST: u32 = 200;
    const SINGLE: u32 = 20;
    const N: u32 = ROUNDS * (BURST + SINGLE);
    let before = a.stats();
    let receiver = tokio::spawn(async move {
        let mut next = std::collections::HashMap::new();
        for _ in 0..2 * N {
            let (from, i) = bob.recv().await.unwrap().decode::<(String, u32)>().unwrap();
            let want = next.entry(from.clone()).or_insert(0u32);
            assert_eq!(i, *want, "{from}'s messages out of order");
            *want += 1;
        }
        next
    });
    let mut i = 0;
    for _ in 0..ROUNDS {
        let mut burst = futures::stream::iter(i..i + BURST)
            .flat_map(|i| futures::stream::iter(senders.clone().map(move |s| (s, i))))
            .map(|(s, i)| async move { s.send("bob", &(s.id().to_string(), i)).await })
            .buffered(256);
        while let Some(r) = within("burst", burst.next()).await {
            r.unwrap();
        }
        i += BURST;
        for _ in 0..SINGLE {
            for s in &senders {
                s.send("bob", &(s.id().to_string(), i)).await.unwrap();
            }
            i += 1;
        }
    }
    let next = within("receive all", receiver).await.unwrap();
    assert_eq!(next.get("s0"), Some(&N));
    assert_eq!(next.get("s1"), Some(&N));
    let after = a.stats();
    let lane = after.lane_sends - before.lane_sends;
    assert!(lane > 0, "no send took the direct lane");
    assert!(lane < 2 * N as u64, "every send took the direct lane");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_removed_and_moved_peers() {
    let cfg = HostConfig::for_tests();
    let [a, b, c]: [Host; 3] = star(3, &cfg).await.try_into().unwrap();
    let alice = a.create("alice").unwrap();
    assert_eq!(
        alice.send("nobody", &1u8).await.unwrap_err(),
        SendError::PeerNotFound("nobody".into())
    );
    assert_eq!(
        a.find("nobody").await.unwrap_err(),
        FindError::PeerNotFound("nobody".into())
    );

    let bob = b.create("bob").unwrap();
    wait_found(&a, "bob", &b).await;
    alice.send("bob", &1u8).await.unwrap();
    assert_eq!(a.cached_location("bob").await.unwrap(), Some(b.id()));
    // Removed: the stale cached location is dropped and the send fails.
    assert!(b.remove(&bob).unwrap());
    assert!(
        bob.recv().await.unwrap().decode::<u8>().is_ok(),
        "queued message still readable"
    );
    assert!(bob.recv().await.is_none(), "receiver ends after remove");
    wait_for("bob withdrawn", || async {
        matches!(
            alice.send("bob", &2u8).await,
            Err(SendError::PeerNotFound(_))
        )
    })
    .await;
    assert_eq!(a.cached_location("bob").await.unwrap(), None);
    // Re-created elsewhere: the send re-resolves and succeeds.
    let bob_on_c = c.create("bob").unwrap();
    wait_for("bob found on c", || async {
        alice.send("bob", &3u8).await.is_ok()
    })
    .await;
    assert_eq!(
        within("bob on c", bob_on_c.recv())
            .await
            .unwrap()
            .decode::<u8>()
            .unwrap(),
        3
    );
    // And moved with the old location still cached: one send re-resolves.
    // (Waited for: the send above may have been resolved by one holder
    // before every holder had bob's new entry.)
    wait_found(&a, "bob", &c).await;
    c.remove("bob").unwrap();
    let bob_on_b = b.create("bob").unwrap();
    wait_found(&b, "bob", &b).await;
    wait_for("moved bob reached", || async {
        alice.send("bob", &4u8).await.is_ok()
    })
    .await;
    assert_eq!(
        within("bob on b", bob_on_b.recv())
            .await
            .unwrap()
            .decode::<u8>()
            .unwrap(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_host_timeout_size_and_full_inbox_errors() {
    let mut cfg = HostConfig::for_tests();
    cfg.inbox_capacity = 2;
    cfg.max_message_size = 1000;
    let (a, b, alice, bob) = mem_pair(cfg, "alice", "bob").await;

    // Oversized.
    let err = alice.send("bob", &vec![1u8; 2000]).await.unwrap_err();
    assert!(
        matches!(err, SendError::MessageTooLarge { limit: 1000, .. }),
        "{err:?}"
    );
    // Full inbox, remote and local.
    alice.send("bob", &1u8).await.unwrap();
    alice.send("bob", &2u8).await.unwrap();
    assert_eq!(
        alice.send("bob", &3u8).await.unwrap_err(),
        SendError::InboxFull("bob".into())
    );
    let _ = a.create("al2").unwrap();
    let al2 = a.get("al2").unwrap();
    alice.send("al2", &1u8).await.unwrap();
    alice.send("al2", &1u8).await.unwrap();
    assert_eq!(
        alice.send("al2", &1u8).await.unwrap_err(),
        SendError::InboxFull("al2".into())
    );
    assert_eq!(al2.pending(), 2);
    // Nothing was lost: bob reads the first two in order.
    assert_eq!(bob.recv().await.unwrap().decode::<u8>().unwrap(), 1);
    assert_eq!(bob.recv().await.unwrap().decode::<u8>().unwrap(), 2);

    // Timeout: hosts whose links take 100 ms each way, and a 20 ms
    // deadline once the peer's location is known: no acknowledgement can
    // come back in time, however fast the machine.
    let mut slow = HostConfig::for_tests();
    slow.link_delay = std::time::Duration::from_millis(100);
    let (c, _d, carl, _carol) = mem_pair(slow, "carl", "carol").await;
    let mut quick = c.config();
    quick.request_timeout = std::time::Duration::from_millis(20);
    c.set_config(quick).unwrap();
    assert_eq!(
        carl.send("carol", &7u8).await.unwrap_err(),
        SendError::Timeout
    );
    assert_eq!(c.stats().failures.timeout, 1);

    // Unreachable: b stops without leaving; bob's location is still known.
    let b_id = b.id();
    drop((bob, b));
    let err = within("unreachable", alice.send("bob", &9u8))
        .await
        .unwrap_err();
    match err {
        SendError::PeerUnreachable { id, host } => {
            assert_eq!(id, "bob");
            assert_eq!(host, b_id);
        }
        other => panic!("expected PeerUnreachable, got {other:?}"),
    }
    // Every failure above is counted by its reason (the oversized send
    // fails before counting: nothing was attempted).
    let f = a.stats().failures;
    assert_eq!(f.inbox_full, 2, "{f:?}");
    assert_eq!(f.unreachable, 1, "{f:?}");
    assert_eq!(a.stats().failed, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_ids_and_streams() {
    use futures::StreamExt;
    let h = distribus::Host::new(HostConfig::for_tests()).await.unwrap();
    let p = h.create("p").unwrap();
    assert_eq!(
        h.create("p").unwrap_err(),
        CreateError::IdExists("p".into())
    );
    assert!(matches!(h.create(""), Err(CreateError::InvalidId(_))));
    assert!(matches!(
        h.create(&"x".repeat(257)),
        Err(CreateError::InvalidId(_))
    ));
    h.create(&"x".repeat(256)).unwrap();
    assert!(h.get("nope").is_none());
    let mut again = h.get("p").unwrap();
    p.send("p", "to myself").await.unwrap();
    let m = within("stream", again.next()).await.unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "to myself");
    assert_eq!(h.peer_count(), 2);
    assert!(h.remove("p").unwrap());
    assert!(!h.remove("p").unwrap());
    assert!(again.next().await.is_none());
    assert_eq!(
        p.send("p", &1u8).await.unwrap_err(),
        SendError::PeerNotFound("p".into())
    );
}

/// The memory transport's simulated link delay (for simulations) applies
/// to every message: an acknowledged send takes at least one round trip of
/// the delay, and everything is still delivered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_link_delay_slows_but_loses_nothing() {
    let mut cfg = HostConfig::for_tests();
    cfg.link_delay = std::time::Duration::from_millis(25);
    cfg.link_loss = 0.1;
    let (a, _) = mem_host(cfg.clone()).await;
    let (b, b_addr) = mem_host(cfg).await;
    a.join(&b_addr.to_string()).await.unwrap();
    let alice = a.create("alice").unwrap();
    let bob = b.create("bob").unwrap();
    wait_found(&a, "bob", &b).await;
    for i in 0..20u32 {
        let start = std::time::Instant::now();
        alice.send("bob", &i).await.unwrap();
        assert!(start.elapsed() >= std::time::Duration::from_millis(50));
    }
    for i in 0..20u32 {
        let m = within("bob receives", bob.recv()).await.unwrap();
        assert_eq!(m.decode::<u32>().unwrap(), i);
    }
}
