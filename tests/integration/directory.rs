//! Directory entries move to the hosts now closest when membership changes,
//! and holders drop the entries of hosts that leave.

use crate::common;

use std::time::Duration;

use common::*;
use distribus::HostConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_move_when_hosts_join_and_leave() {
    const N: u64 = 2_000;
    let mut cfg = HostConfig::for_tests();
    cfg.replication = 1; // each entry on exactly one host
    let (a, a_addr) = mem_host(cfg.clone()).await;
    let (b, _) = mem_host(cfg.clone()).await;
    b.join(&a_addr.to_string()).await.unwrap();
    wait_membership(&[&a, &b], 2).await;
    let peers: Vec<_> = (0..N)
        .map(|i| a.create(&format!("peer-{i}")).unwrap())
        .collect();
    let total = |hosts: Vec<distribus::Host>| async move {
        hosts
            .iter()
            .map(|h| h.stats().directory_entries)
            .sum::<u64>()
    };
    wait_for("each entry held once by a or b", || {
        let hs = vec![a.clone(), b.clone()];
        async move { total(hs).await == N }
    })
    .await;
    assert!(b.stats().directory_entries > 0, "b holds its share");
    // a and b are connected: a's directory batches went on its request
    // stream to b, not as request-response exchanges.
    assert!(a.stats().stream_requests > 0, "no request went on a stream");

    // c joins: its share moves to it, and the others drop that share.
    let (c, _) = mem_host(cfg).await;
    c.join(&a_addr.to_string()).await.unwrap();
    wait_membership(&[&a, &b, &c], 3).await;
    wait_for("c holds its share and nothing is held twice", || {
        let hs = vec![a.clone(), b.clone(), c.clone()];
        let c = c.clone();
        async move { c.stats().directory_entries > 0 && total(hs).await == N }
    })
    .await;
    for p in peers.iter().step_by(97) {
        assert_eq!(c.find(p.id()).await.unwrap().host, a.id());
        assert_eq!(b.find(p.id()).await.unwrap().host, a.id());
    }

    // b leaves: its share moves back to a and c; nothing is lost.
    b.close().await;
    wait_for("b's share re-registered", || {
        let hs = vec![a.clone(), c.clone()];
        async move { total(hs).await == N }
    })
    .await;
    for p in peers.iter().step_by(89) {
        assert_eq!(c.find(p.id()).await.unwrap().host, a.id());
    }
}

/// A host whose membership lapsed to itself alone still reaches the others
/// through its connections and Kademlia's routing table, but their answers
/// do not count: only members answer lookups. Before, Kademlia's fallback
/// trusted any host that answered (a stranger could redirect sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kademlia_answers_from_hosts_outside_the_membership_do_not_count() {
    // a, b and c heartbeat rarely; x holds leases of 1 s, so right after
    // joining its membership lapses to itself alone while its connections
    // and Kademlia routing table still know the others.
    let mut slow = HostConfig::for_tests();
    slow.heartbeat_interval = Duration::from_secs(60);
    slow.lease = Duration::from_secs(300);
    let nodes = star_with_addrs(3, &slow).await;
    let hosts: Vec<_> = nodes.iter().map(|(h, _)| h.clone()).collect();
    let p = hosts[2].create("far").unwrap();
    wait_found(&hosts[0], "far", &hosts[2]).await;
    wait_found(&hosts[1], "far", &hosts[2]).await;

    let mut forgetful = HostConfig::for_tests();
    forgetful.heartbeat_interval = Duration::from_millis(200);
    forgetful.lease = Duration::from_secs(1);
    let (x, _) = mem_host(forgetful).await;
    x.join(&nodes[0].1.to_string()).await.unwrap();
    // While they are members, x finds the peer.
    assert_eq!(x.find("far").await.unwrap().host, hosts[2].id());
    wait_for("x's membership lapsed", || async {
        x.members().await.unwrap().is_empty()
    })
    .await;
    assert!(x.stats().connected_hosts >= 1, "x still has connections");
    assert!(matches!(
        x.find("far").await,
        Err(distribus::FindError::PeerNotFound(_))
    ));
    drop(p);
}

/// A holder that drops a host at a lapsed lease while the host is in fact
/// alive (its heartbeats came late) gets the host's entries back once it
/// hears from it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_come_back_after_a_false_lapse() {
    const N: usize = 400;
    // a's lease (1 s) is shorter than x's heartbeat (2 s): a drops x
    // between heartbeats, again and again, while x considers a alive.
    let mut a_cfg = HostConfig::for_tests();
    a_cfg.replication = 1;
    a_cfg.lease = Duration::from_secs(1);
    let mut x_cfg = HostConfig::for_tests();
    x_cfg.replication = 1;
    x_cfg.heartbeat_interval = Duration::from_secs(2);
    x_cfg.lease = Duration::from_secs(20);
    let (a, a_addr) = mem_host(a_cfg).await;
    let (x, _) = mem_host(x_cfg).await;
    x.join(&a_addr.to_string()).await.unwrap();
    let _peers: Vec<_> = (0..N)
        .map(|i| x.create(&format!("x-{i}")).unwrap())
        .collect();
    // With replication 1, a holds the entries whose key is closer to it,
    // x the others: every entry is on one of them. (Registration may reach
    // a in more than one batch, so a's first count is not its share.)
    let held = || a.stats().directory_entries;
    let share = || N as u64 - x.stats().directory_entries;
    wait_for("a to hold its share of x's entries", || async {
        held() > 0 && held() == share()
    })
    .await;
    let before = held();
    wait_for("a to drop x at the lapse", || async {
        a.members().await.map(|m| m.is_empty()).unwrap_or(false) && held() == 0
    })
    .await;
    // x's next heartbeat brings it back; a asks it to register again.
    wait_for("a to hold x's entries again", || async {
        a.members().await.map(|m| m.len() == 1).unwrap_or(false) && held() == before
    })
    .await;
    assert_eq!(held(), before);
}

/// A repeated `find` answers from the last answer (no round trip), and
/// forgets it as soon as it is known to be stale, however long its TTL:
/// the peer moved to the asking host, or its host left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_find_answers_from_its_last_answer_until_it_is_stale() {
    let mut cfg = HostConfig::for_tests();
    cfg.replication = 1; // each entry is held by one host only
    cfg.find_cache_ttl = Duration::ZERO; // every find asks, for now
    let (a, a_addr) = mem_host(cfg.clone()).await;
    let (b, _) = mem_host(cfg.clone()).await;
    b.join(&a_addr.to_string()).await.unwrap();
    wait_membership(&[&a, &b], 2).await;
    let peers: Vec<_> = (0..64)
        .map(|i| b.create(&format!("p{i}")).unwrap())
        .collect();
    for p in &peers {
        wait_found(&a, p.id(), &b).await;
    }
    // The peers whose entry b holds: a asks b for them.
    let mut remote = Vec::new();
    for p in &peers {
        if a.find(p.id()).await.unwrap().round_trips > 0 {
            remote.push(p.id().to_string());
        }
    }
    assert!(remote.len() >= 8, "only {} entries on b", remote.len());

    cfg.find_cache_ttl = Duration::from_secs(3600);
    a.set_config(cfg).unwrap();
    // (An entry can come to a meanwhile, and a then answers from its own
    // share: only the finds that asked count.)
    let mut asked = 0;
    for id in &remote {
        let first = a.find(id).await.unwrap();
        let again = a.find(id).await.unwrap();
        assert_eq!(again.host, b.id());
        assert_eq!(again.round_trips, 0, "{id}: answered from the last answer");
        asked += usize::from(first.round_trips > 0);
    }
    assert!(asked >= 4, "only {asked} finds asked b first");

    // A peer that moves to a: a knows its own peers, and says so at once.
    let moved = remote[0].clone();
    b.remove(&moved).unwrap();
    wait_for("the move's withdrawal", || async {
        matches!(
            b.find(&moved).await,
            Err(distribus::FindError::PeerNotFound(_))
        )
    })
    .await;
    let _here = a.create(&moved).unwrap();
    assert_eq!(a.find(&moved).await.unwrap().host, a.id());

    // b leaves: a forgets where b's peers were, well before the TTL.
    b.close().await;
    wait_for("a forgets b's peers", || async {
        matches!(
            a.find(&remote[1]).await,
            Err(distribus::FindError::PeerNotFound(_))
        )
    })
    .await;
}
