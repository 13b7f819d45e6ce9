//! Queue groups: each publish goes to exactly one member of each matching
//! group, the members share the work, and the rest take over when a
//! member's host dies.

use crate::common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use distribus::{Host, HostConfig, PublishError, SubscribeError, Subscription};

/// Waits until `host` knows that `member`'s host has `n` members of
/// `group` on `pattern`.
async fn wait_group(host: &Host, member: &Host, pattern: &str, group: &str, n: u32) {
    let id = member.id();
    wait_for("queue group known", || async {
        host.members().await.unwrap().iter().any(|m| {
            m.host == id
                && m.queues
                    .iter()
                    .any(|q| q.pattern == pattern && q.group == group && q.members == n)
        })
    })
    .await;
}

/// Everything `sub` has now (after a moment for stragglers).
async fn drain(sub: &mut Subscription) -> Vec<u32> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), sub.recv()).await {
        got.push(m.decode::<u32>().expect("a number"));
    }
    got
}

/// Four workers on three hosts share 400 publishes exactly (a host's share
/// follows its members); a second group and a plain subscriber get every
/// one; when a worker's host dies, the rest take over and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_publish_goes_to_one_member_the_members_share_and_the_rest_take_over() {
    let cfg = HostConfig::for_tests();
    let [a, b, c, d]: [Host; 4] = star(4, &cfg).await.try_into().unwrap();
    let mut workers = vec![
        b.subscribe_queue("jobs", "workers").await.unwrap(),
        c.subscribe_queue("jobs", "workers").await.unwrap(),
        d.subscribe_queue("jobs", "workers").await.unwrap(),
        d.subscribe_queue("jobs", "workers").await.unwrap(),
    ];
    // Another group on a pattern, and a plain subscription.
    let mut auditor = b.subscribe_queue("jobs.>", "auditors").await.unwrap();
    let mut auditor_all = b.subscribe_queue("*", "auditors").await.unwrap();
    let mut plain = d.subscribe("jobs").await.unwrap();
    assert_eq!(workers[0].group(), Some("workers"));
    wait_group(&a, &b, "jobs", "workers", 1).await;
    wait_group(&a, &c, "jobs", "workers", 1).await;
    wait_group(&a, &d, "jobs", "workers", 2).await;
    wait_group(&a, &b, "*", "auditors", 1).await;
    // The plain subscription too: a publish before a knows of it skips it.
    wait_for("d's subscription known", || async {
        a.members()
            .await
            .unwrap()
            .iter()
            .any(|m| m.host == d.id() && m.channels.iter().any(|c| c == "jobs"))
    })
    .await;

    for n in 0..400u32 {
        within("publish", a.publish("jobs", &n)).await.unwrap();
    }
    let mut all = Vec::new();
    for (i, w) in workers.iter_mut().enumerate() {
        let got = drain(w).await;
        assert_eq!(got.len(), 100, "worker {i} got {} of 400", got.len());
        all.extend(got);
    }
    all.sort();
    assert_eq!(all, (0..400).collect::<Vec<_>>(), "each exactly once");
    assert_eq!(drain(&mut auditor_all).await, (0..400).collect::<Vec<_>>());
    assert!(
        drain(&mut auditor).await.is_empty(),
        "`jobs.>` does not match `jobs`"
    );
    let mut plain_got = drain(&mut plain).await;
    plain_got.sort();
    assert_eq!(plain_got, (0..400).collect::<Vec<_>>());

    // c dies without leaving: its member's turns go to the others, also
    // while c is still a member (its lease has not lapsed).
    let c_worker = workers.remove(1);
    drop((c, c_worker));
    for n in 400..500u32 {
        within("publish", a.publish("jobs", &n)).await.unwrap();
    }
    let mut all = Vec::new();
    let mut shares = BTreeMap::new();
    for (i, w) in workers.iter_mut().enumerate() {
        let got = drain(w).await;
        shares.insert(i, got.len());
        all.extend(got);
    }
    all.sort();
    assert_eq!(all, (400..500).collect::<Vec<_>>(), "shares {shares:?}");
    assert!(shares.values().all(|n| *n > 0), "shares {shares:?}");
    let delivered: u64 = [&b, &d].iter().map(|h| h.stats().queue_delivered).sum();
    assert_eq!(delivered, 400 + 400 + 100);
}

/// A group whose members cannot take a publish (their queues are full)
/// fails the publish with a typed error naming it; once a member reads,
/// publishes go through again. A member that ends leaves the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_cannot_take_a_publish_fails_it_and_recovers() {
    let mut cfg = HostConfig::for_tests();
    cfg.subscription_capacity = 2;
    let [a, b]: [Host; 2] = star(2, &cfg).await.try_into().unwrap();
    let mut solo = b.subscribe_queue("tasks.*", "solo").await.unwrap();
    wait_group(&a, &b, "tasks.*", "solo", 1).await;
    a.publish("tasks.x", &1u32).await.unwrap();
    a.publish("tasks.y", &2u32).await.unwrap();
    match a.publish("tasks.z", &3u32).await {
        Err(PublishError::QueueUnavailable { pattern, group }) => {
            assert_eq!((pattern.as_str(), group.as_str()), ("tasks.*", "solo"))
        }
        other => panic!("expected QueueUnavailable, got {other:?}"),
    }
    assert_eq!(a.stats().queue_unavailable, 1);
    let m = within("recv", solo.recv()).await.unwrap();
    assert_eq!((&*m.channel, m.decode::<u32>().unwrap()), ("tasks.x", 1));
    a.publish("tasks.w", &4u32).await.unwrap();
    assert_eq!(drain(&mut solo).await, vec![2, 4]);

    // Bad group names are refused; an ended member leaves the group, and a
    // publish with no group is just a publish.
    assert!(matches!(
        b.subscribe_queue("tasks", "").await,
        Err(SubscribeError::InvalidChannel(_))
    ));
    drop(solo);
    wait_for("the group is gone", || async {
        a.members()
            .await
            .unwrap()
            .iter()
            .all(|m| m.queues.is_empty())
    })
    .await;
    a.publish("tasks.v", &5u32).await.unwrap();
}
