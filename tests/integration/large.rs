//! Fifty hosts on the memory transport in a sparse topology.

use crate::common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::*;
use distribus::{Host, HostConfig, Peer};
use rand::{rngs::StdRng, Rng, SeedableRng};

const HOSTS: usize = 50;

fn config() -> HostConfig {
    let mut cfg = HostConfig::for_tests();
    // 50 hosts in one process on 2 cores: calmer heartbeats.
    cfg.heartbeat_interval = Duration::from_secs(1);
    cfg.lease = Duration::from_secs(30);
    cfg.request_timeout = Duration::from_secs(15);
    cfg.subscription_capacity = 20_000;
    cfg
}

/// Host i joins one random earlier host: a random tree, not a mesh.
async fn tree(seed: u64) -> Vec<Host> {
    let mut rng = StdRng::seed_from_u64(seed);
    let nodes = mem_hosts(HOSTS, &config()).await;
    for i in 1..HOSTS {
        let parent = rng.gen_range(0..i);
        nodes[i].0.join(&nodes[parent].1.to_string()).await.unwrap();
    }
    let hosts: Vec<Host> = nodes.into_iter().map(|(h, _)| h).collect();
    let refs: Vec<&Host> = hosts.iter().collect();
    wait_membership(&refs, HOSTS).await;
    hosts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_hosts_sparse_random_peers_reach_each_other_and_channels_deliver() {
    let hosts = tree(7).await;
    let mut rng = StdRng::seed_from_u64(11);

    // A host finds a peer on a host it was never connected to.
    let mut probe = None;
    'outer: for (i, h) in hosts.iter().enumerate() {
        let members = h.members().await.unwrap();
        for (j, other) in hosts.iter().enumerate() {
            if i != j && members.iter().any(|m| m.host == other.id() && !m.connected) {
                probe = Some((i, j));
                break 'outer;
            }
        }
    }
    let (i, j) = probe.expect("the tree is not a full mesh");
    let far = hosts[j].create("far-away").unwrap();
    wait_for("find on a never-connected host", || async {
        matches!(hosts[i].find("far-away").await, Ok(l) if l.host == hosts[j].id())
    })
    .await;
    drop(far);

    // 20 peers per host, then 300 random messages between random peers.
    let mut peers: Vec<Peer> = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        for k in 0..20 {
            peers.push(h.create(&format!("p-{i}-{k}")).unwrap());
        }
    }
    let by_id: HashMap<String, Peer> = peers
        .iter()
        .map(|p| (p.id().to_string(), p.clone()))
        .collect();
    let mut expected: HashMap<String, Vec<u32>> = HashMap::new();
    for n in 0..300u32 {
        let from = &peers[rng.gen_range(0..peers.len())];
        let to = &peers[rng.gen_range(0..peers.len())];
        let deadline = Instant::now() + WAIT;
        loop {
            match from.send(to.id(), &n).await {
                Ok(()) => break,
                // Registrations are batched in the background: just created
                // peers may not be registered yet.
                Err(distribus::SendError::PeerNotFound(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("send {n} from {} to {}: {e}", from.id(), to.id()),
            }
        }
        expected.entry(to.id().to_string()).or_default().push(n);
    }
    for (id, want) in &expected {
        let p = &by_id[id];
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(
                within("random message", p.recv())
                    .await
                    .unwrap()
                    .decode::<u32>()
                    .unwrap(),
            );
        }
        assert_eq!(&got, want, "messages to {id}");
    }

    // 10 subscribing hosts, 3 publishers (subscribers or not), 20 each.
    let mut subs = Vec::new();
    for h in hosts.iter().step_by(5) {
        subs.push(h.subscribe("events").await.unwrap());
    }
    let sub_ids: Vec<_> = hosts.iter().step_by(5).map(|h| h.id()).collect();
    for h in &hosts {
        wait_for("subscribers known", || async {
            let m = h.members().await.unwrap();
            sub_ids
                .iter()
                .all(|s| *s == h.id() || m.iter().any(|x| x.host == *s && x.channels.len() == 1))
        })
        .await;
    }
    for p in [3usize, 10, 47] {
        for n in 0..20u32 {
            hosts[p].publish("events", &(p as u32, n)).await.unwrap();
        }
    }
    for s in subs.iter_mut() {
        let mut got = Vec::new();
        for _ in 0..60 {
            got.push(
                within("channel message", s.recv())
                    .await
                    .unwrap()
                    .decode::<(u32, u32)>()
                    .unwrap(),
            );
        }
        got.sort();
        let mut want: Vec<(u32, u32)> = [3u32, 10, 47]
            .iter()
            .flat_map(|p| (0..20).map(move |n| (*p, n)))
            .collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(s.missed(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_ten_thousand_publishes_reaches_all_fifty_subscribers() {
    const N: u32 = 10_000;
    let hosts = tree(3).await;
    let mut subs = Vec::new();
    for h in &hosts {
        subs.push(h.subscribe("burst").await.unwrap());
    }
    for h in &hosts {
        wait_for("all subscriptions known", || async {
            h.members()
                .await
                .unwrap()
                .iter()
                .filter(|m| m.channels.len() == 1)
                .count()
                == HOSTS - 1
        })
        .await;
    }
    // A first publish warms the mesh up (the publisher dials every
    // subscribing host); the burst's time is delivery alone.
    let publisher = hosts[17].clone();
    let warm_start = Instant::now();
    publisher.publish("burst", &u32::MAX).await.unwrap();
    for s in subs.iter_mut() {
        let m = within("the warm-up publish", s.recv()).await.unwrap();
        assert_eq!(m.decode::<u32>().unwrap(), u32::MAX);
    }
    let warm = warm_start.elapsed();
    let counters: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut next = 0u32;
                let mut out_of_order = 0;
                let all = async {
                    let mut batch = Vec::with_capacity(256);
                    while next < N {
                        batch.clear();
                        if s.recv_many(&mut batch, 256).await == 0 {
                            break;
                        }
                        for m in &batch {
                            if m.decode::<u32>().unwrap() != next {
                                out_of_order += 1;
                            }
                            next += 1;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(60), all).await;
                (next, out_of_order, s.missed())
            })
        })
        .collect();
    let delivered = || {
        hosts
            .iter()
            .map(|h| h.stats().channel_delivered)
            .sum::<u64>()
    };
    let before = delivered();
    let started = Instant::now();
    for n in 0..N {
        publisher.publish("burst", &n).await.unwrap();
    }
    // Every copy in its subscription's queue (the library's part), then
    // read by the 50 consumer tasks (which share the 2 worker threads with
    // the 50 hosts).
    let want = before + u64::from(N) * HOSTS as u64;
    within("every copy delivered", async {
        while delivered() < want {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let in_queues = started.elapsed();
    let mut reordered = 0;
    for c in counters {
        let (received, out_of_order, missed) = c.await.unwrap();
        assert_eq!(missed, 0);
        assert_eq!(received, N, "every subscriber gets all {N}");
        // Not asserted: a gossipsub forward can overtake a direct frame
        // (docs/RELIABILITY.md).
        reordered = reordered.max(out_of_order);
    }
    let took = started.elapsed();
    let rate = |t: Duration| f64::from(N) * HOSTS as f64 / t.as_secs_f64();
    eprintln!(
        "10k burst to 50 hosts: every copy in its subscription after {in_queues:?} ({:.0} deliveries/s), \
         read by every consumer after {took:?} ({:.0}/s); the warm-up publish took {warm:?}; \
         at most {reordered} publishes out of order at a subscriber",
        rate(in_queues),
        rate(took)
    );
}
