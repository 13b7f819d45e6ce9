//! Channels: subscriptions, publishes across hosts, warm-up and bursts.

use crate::common;

use std::time::Duration;

use common::*;
use distribus::{Host, HostConfig, PublishError, SubscribeError};

/// Waits until `host` knows that `subscriber` subscribes to `channel`.
async fn wait_subscribed(host: &Host, subscriber: &Host, channel: &str) {
    let id = subscriber.id();
    wait_for("subscription known", || async {
        host.members()
            .await
            .unwrap()
            .iter()
            .any(|m| m.host == id && m.channels.iter().any(|c| c == channel))
    })
    .await;
}

/// Two in-memory hosts, the second joined to the first.
async fn joined_pair() -> (Host, Host) {
    let cfg = HostConfig::for_tests();
    let (a, a_addr) = mem_host(cfg.clone()).await;
    let (b, _) = mem_host(cfg).await;
    b.join(&a_addr.to_string()).await.unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_every_subscription_on_every_host_once() {
    let cfg = HostConfig::for_tests();
    let [a, b, c]: [Host; 3] = star(3, &cfg).await.try_into().unwrap();
    let mut subs = [
        a.subscribe("news").await.unwrap(),
        b.subscribe("news").await.unwrap(),
        b.subscribe("news").await.unwrap(),
        c.subscribe("news").await.unwrap(),
    ];
    let mut other = c.subscribe("sports").await.unwrap();
    for h in [&a, &b, &c] {
        for s in [&b, &c] {
            if h.id() != s.id() {
                wait_subscribed(h, s, "news").await;
            }
        }
    }
    for (i, h) in [&a, &b, &c].iter().enumerate() {
        h.publish("news", &format!("from {i}")).await.unwrap();
    }
    for s in subs.iter_mut() {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(
                within("news", s.recv())
                    .await
                    .unwrap()
                    .decode::<String>()
                    .unwrap(),
            );
        }
        got.sort();
        assert_eq!(got, ["from 0", "from 1", "from 2"]);
        // Exactly once: nothing more arrives.
        assert!(tokio::time::timeout(Duration::from_millis(300), s.recv())
            .await
            .is_err());
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(100), other.recv())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_or_unsubscribing_ends_subscriptions() {
    let (a, b) = joined_pair().await;
    let s1 = b.subscribe("ch").await.unwrap();
    let mut s2 = b.subscribe("ch").await.unwrap();
    wait_subscribed(&a, &b, "ch").await;
    drop(s1);
    a.publish("ch", &1u8).await.unwrap();
    assert_eq!(
        within("s2", s2.recv())
            .await
            .unwrap()
            .decode::<u8>()
            .unwrap(),
        1
    );
    b.unsubscribe("ch").await.unwrap();
    assert!(within("s2 ends", s2.recv()).await.is_none());
    // The other host learns that b no longer subscribes.
    let b_id = b.id();
    wait_for("unsubscribe spreads", || async {
        a.members()
            .await
            .unwrap()
            .iter()
            .any(|m| m.host == b_id && m.channels.is_empty())
    })
    .await;
    assert!(matches!(
        a.subscribe("").await,
        Err(SubscribeError::InvalidChannel(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_many_takes_what_is_queued_in_order_up_to_its_limit_and_0_once_ended() {
    let (a, b) = joined_pair().await;
    let mut s = b.subscribe("runs").await.unwrap();
    wait_subscribed(&a, &b, "runs").await;
    for n in 0..10u32 {
        a.publish("runs", &n).await.unwrap();
    }
    let mut got = Vec::new();
    let mut batch = Vec::new();
    while got.len() < 10 {
        batch.clear();
        let k = within("a run", s.recv_many(&mut batch, 4)).await;
        assert!((1..=4).contains(&k), "{k} taken with a limit of 4");
        assert_eq!(k, batch.len());
        got.extend(batch.iter().map(|m| m.decode::<u32>().unwrap()));
    }
    assert_eq!(got, (0..10).collect::<Vec<_>>(), "in order, once each");
    assert_eq!(s.missed(), 0);
    b.unsubscribe("runs").await.unwrap();
    batch.clear();
    assert_eq!(within("ended", s.recv_many(&mut batch, 4)).await, 0);
    assert!(batch.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_right_after_join_is_not_lost() {
    for round in 0..3 {
        let cfg = HostConfig::for_tests();
        let (a, a_addr) = mem_host(cfg.clone()).await;
        let mut sub = a.subscribe("live").await.unwrap();
        let (b, _) = mem_host(cfg).await;
        b.join(&a_addr.to_string()).await.unwrap();
        // No wait: the gossip mesh is still forming.
        b.publish("live", &round).await.unwrap();
        let m = within("first publish after join", sub.recv())
            .await
            .unwrap();
        assert_eq!(m.decode::<i32>().unwrap(), round);
        assert_eq!(&*m.channel, "live");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_publish_is_refused() {
    let mut cfg = HostConfig::for_tests();
    cfg.max_message_size = 64;
    let h = Host::new(cfg).await.unwrap();
    assert!(matches!(
        h.publish("x", &vec![0u8; 100]).await,
        Err(PublishError::MessageTooLarge { .. })
    ));
}

/// A host record lists every channel and queue group its host subscribes
/// to, and other hosts refuse records listing more than 4,096 in all: so a
/// host subscribes to at most 4,096, and the next is a clear error (more
/// subscriptions on a channel it has are fine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_subscribes_to_at_most_4096_channels() {
    let (h, _) = mem_host(HostConfig::for_tests()).await;
    let mut subs = Vec::with_capacity(4096);
    for i in 0..4096 {
        subs.push(
            h.subscribe(&format!("c{i}"))
                .await
                .expect("within the limit"),
        );
    }
    match h.subscribe("one-more").await {
        Err(distribus::SubscribeError::InvalidChannel(why)) => {
            assert!(why.contains("4096"), "{why}")
        }
        other => panic!("subscribed past the limit: {:?}", other.map(|_| ())),
    }
    let _again = h.subscribe("c7").await.expect("a channel it has");
    drop(subs.pop());
    let _room = h.subscribe("one-more").await.expect("room again");
    // A queue group counts as one more entry of the record.
    drop(subs.pop());
    let _worker = h.subscribe_queue("jobs", "workers").await.expect("room");
    match h.subscribe("past-the-record").await {
        Err(distribus::SubscribeError::InvalidChannel(why)) => {
            assert!(why.contains("4096"), "{why}")
        }
        other => panic!(
            "subscribed past the record's limit: {:?}",
            other.map(|_| ())
        ),
    }
}

/// A subscription that does not read keeps `subscription_capacity`
/// messages; the rest are missed (channels are at most once), and counted
/// on the subscription and on the host, while a reading subscription of
/// the same host gets every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscription_misses_what_it_has_no_room_for_and_says_so() {
    let mut cfg = HostConfig::for_tests();
    cfg.subscription_capacity = 8;
    let [a, b]: [Host; 2] = star(2, &cfg).await.try_into().unwrap();
    let slow = b.subscribe("ticks").await.unwrap();
    let mut reader = b.subscribe("ticks").await.unwrap();
    wait_subscribed(&a, &b, "ticks").await;
    let mut got = Vec::new();
    for i in 0..20u32 {
        a.publish("ticks", &i).await.unwrap();
        got.push(
            within("tick", reader.recv())
                .await
                .unwrap()
                .decode::<u32>()
                .unwrap(),
        );
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert_eq!(slow.missed(), 12);
    let s = b.stats();
    assert_eq!((s.channel_delivered, s.channel_missed), (28, 12));
}

/// Takes `n` messages of a subscription (sorted), then checks nothing more
/// comes.
async fn take(s: &mut distribus::Subscription, n: usize) -> Vec<(String, u32)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let m = within("publish", s.recv()).await.unwrap();
        got.push((m.channel.to_string(), m.decode::<u32>().unwrap()));
    }
    got.sort();
    let more = tokio::time::timeout(Duration::from_millis(300), s.recv()).await;
    assert!(more.is_err(), "more than {n}: {got:?} and {more:?}");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions_get_what_they_match_once_each() {
    let cfg = HostConfig::for_tests();
    let [a, b, c]: [Host; 3] = star(3, &cfg).await.try_into().unwrap();
    // Overlapping patterns on one host each get a publish once.
    let mut exact = b.subscribe("sensors.kitchen.temp").await.unwrap();
    let mut one = b.subscribe("sensors.*.temp").await.unwrap();
    let mut rest = b.subscribe("sensors.>").await.unwrap();
    let mut all = c.subscribe(">").await.unwrap();
    let mut temps = c.subscribe("*.*.temp").await.unwrap();
    let mut local = a.subscribe("sensors.>").await.unwrap();
    for p in ["sensors.kitchen.temp", "sensors.*.temp", "sensors.>"] {
        wait_subscribed(&a, &b, p).await;
    }
    for p in [">", "*.*.temp"] {
        wait_subscribed(&a, &c, p).await;
    }
    let sent = [
        ("sensors.kitchen.temp", 1u32),
        ("sensors.kitchen.humidity", 2),
        ("logs.web", 3),
        ("garden.shed.temp", 4),
    ];
    for (channel, n) in sent {
        a.publish(channel, &n).await.unwrap();
    }
    let of = |ns: &[u32]| -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = sent
            .iter()
            .filter(|(_, n)| ns.contains(n))
            .map(|(c, n)| (c.to_string(), *n))
            .collect();
        v.sort();
        v
    };
    assert_eq!(take(&mut exact, 1).await, of(&[1]));
    assert_eq!(take(&mut one, 1).await, of(&[1]));
    assert_eq!(take(&mut rest, 2).await, of(&[1, 2]));
    assert_eq!(take(&mut all, 4).await, of(&[1, 2, 3, 4]));
    assert_eq!(take(&mut temps, 2).await, of(&[1, 4]));
    assert_eq!(take(&mut local, 2).await, of(&[1, 2]));

    // Wildcards are for subscriptions; names are tokens.
    for bad in ["sensors.*", "logs.>", "a..b", ".a", ""] {
        assert!(
            matches!(
                a.publish(bad, &0u32).await,
                Err(PublishError::InvalidChannel(_))
            ),
            "publish {bad:?}"
        );
    }
    for bad in ["a.>.b", "a..b", "a."] {
        assert!(
            matches!(
                a.subscribe(bad).await,
                Err(SubscribeError::InvalidChannel(_))
            ),
            "subscribe {bad:?}"
        );
    }
}
