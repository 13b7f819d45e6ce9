//! Attacks by hostile hosts and strangers: each test plays the attacker
//! against real hosts and shows the weakness is gone.

use crate::common;

use std::time::{Duration, Instant};

use common::{raw::*, *};
use distribus::{testing::RawMember, Host, HostConfig};
use libp2p::identity::Keypair;

/// A raw member that joined `host` at `addr`: its swarm, its wire state,
/// and the hosts `host` told it about.
async fn raw_member(
    host: &Host,
    addr: &libp2p::Multiaddr,
) -> (RawSwarm, RawMember, Vec<distribus::testing::KnownHost>) {
    let key = Keypair::generate_ed25519();
    let member = RawMember::new(key.clone());
    let mut swarm = raw_client_with(key);
    swarm.add_peer_address(host.id(), addr.clone());
    let answer = ask(&mut swarm, host.id(), member.join(&[]).unwrap())
        .await
        .expect("join answered");
    let known = RawMember::members(&answer).expect("membership answer");
    (swarm, member, known)
}

/// Whether `host` lists `other` as a member.
async fn lists(host: &Host, other: libp2p::PeerId) -> bool {
    host.members()
        .await
        .is_ok_and(|m| m.iter().any(|i| i.host == other))
}

/// Three hosts (250 ms heartbeats, 3 s lease); a member sends a digest that
/// claims c's counter is `u64::MAX`, and keeps claiming it for three leases.
/// Before counters carried proofs, c's real counter never rose again
/// anywhere and c lapsed on a and b one lease later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inflated_counter_does_not_evict_a_live_host() {
    let cfg = HostConfig::for_tests();
    let nodes = star_with_addrs(3, &cfg).await;
    let (a, a_addr) = &nodes[0];
    let (b, c) = (&nodes[1].0, &nodes[2].0);
    let _c_peer = c.create("c-peer").unwrap();
    wait_found(a, "c-peer", c).await;

    let (mut swarm, mut liar, known) = raw_member(a, a_addr).await;
    let kc = known.iter().find(|k| k.host == c.id()).expect("a knows c");
    let start = Instant::now();
    while start.elapsed() < cfg.lease * 3 {
        let forged = liar.digest(&[(kc, u64::MAX)]).unwrap();
        ask(&mut swarm, a.id(), forged)
            .await
            .expect("digest answered");
        for h in [a, b] {
            assert!(lists(h, c.id()).await, "c was evicted");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for h in [a, b] {
        assert!(lists(h, c.id()).await, "c was evicted");
        wait_found(h, "c-peer", c).await;
    }
}

/// Three hosts; c crashes (no leave). A member keeps telling a that c's
/// counter rises, pushes c's record with rising counters and joins again
/// with c's record in its snapshot. c still lapses on a and b within two
/// leases of the crash. Before counters carried proofs, c stayed alive for
/// as long as the lies went on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_member_cannot_keep_a_dead_host_alive() {
    let cfg = HostConfig::for_tests();
    let mut nodes = star_with_addrs(3, &cfg).await;
    let (c, _) = nodes.pop().unwrap();
    let c_id = c.id();
    let (a, a_addr) = &nodes[0];
    let b = &nodes[1].0;
    let (mut swarm, mut liar, known) = raw_member(a, a_addr).await;
    let kc = known
        .iter()
        .find(|k| k.host == c_id)
        .expect("a knows c")
        .clone();

    drop(c);
    let crashed = Instant::now();
    let deadline = crashed + cfg.lease * 2 + Duration::from_secs(1);
    let mut beat = 1_000;
    loop {
        beat += 10;
        let lies = [
            liar.digest(&[(&kc, beat)]).unwrap(),
            liar.push_record(&kc, beat).unwrap(),
            liar.join(std::slice::from_ref(&kc)).unwrap(),
        ];
        for lie in lies {
            let _ = ask(&mut swarm, a.id(), lie).await;
        }
        if !lists(a, c_id).await && !lists(b, c_id).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "c still listed {:?} after its crash",
            crashed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And it stays gone while the lies go on for another lease.
    let until = Instant::now() + cfg.lease;
    while Instant::now() < until {
        beat += 10;
        let _ = ask(&mut swarm, a.id(), liar.digest(&[(&kc, beat)]).unwrap()).await;
        let _ = ask(&mut swarm, a.id(), liar.push_record(&kc, beat).unwrap()).await;
        assert!(
            !lists(a, c_id).await && !lists(b, c_id).await,
            "c came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// a creates alice, then b creates alice: b's registration is refused by
/// the holders (b's `registered()` names a, and b's alice is removed), c's
/// messages land on a's alice, and after b removes its alice c still finds
/// alice on a. Before ids had owners, holders kept the last writer: c's
/// messages went to b, and b's removal hid a's alice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_id_neither_steals_nor_hides_the_first() {
    let cfg = HostConfig::for_tests();
    let hosts = star(3, &cfg).await;
    let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
    let alice = a
        .create_unique("alice")
        .await
        .expect("a's alice registered");
    let sender = c.create("carol").unwrap();
    wait_found(c, "alice", a).await;

    let dup = b.create("alice").expect("created locally at once");
    match within("b's registration", dup.registered()).await {
        Err(distribus::CreateError::IdTaken { id, host }) => {
            assert_eq!((id.as_str(), host), ("alice", a.id()))
        }
        other => panic!("b's duplicate alice was not refused: {other:?}"),
    }
    assert!(b.get("alice").is_none(), "the duplicate stays on b");
    assert!(
        within("duplicate ends", dup.recv()).await.is_none(),
        "the duplicate's inbox ended"
    );
    assert_eq!(b.stats().ids_lost, 1);
    // create_unique says the same.
    assert!(matches!(
        within("b again", b.create_unique("alice")).await,
        Err(distribus::CreateError::IdTaken { .. })
    ));

    for i in 0..20u32 {
        sender.send("alice", &i).await.expect("send to alice");
    }
    for i in 0..20u32 {
        let m = within("alice's message", alice.recv()).await.unwrap();
        assert_eq!(m.decode::<u32>().unwrap(), i);
    }
    for (i, h) in [a, b, c].iter().enumerate() {
        let found = h.find("alice").await.unwrap().host;
        assert_eq!(found, a.id(), "host {i} finds alice elsewhere");
    }
    let _ = b.remove("alice");
    tokio::time::sleep(cfg.heartbeat_interval * 4).await;
    for h in [a, b, c] {
        assert_eq!(h.find("alice").await.unwrap().host, a.id());
    }

    // A real move still works: removed on a, then created on b.
    assert!(a.remove("alice").unwrap());
    let moved = within("move", b.create_unique("alice"))
        .await
        .expect("moved");
    wait_found(c, "alice", b).await;
    sender.send("alice", &99u32).await.unwrap();
    let m = within("moved alice's message", moved.recv()).await.unwrap();
    assert_eq!(m.decode::<u32>().unwrap(), 99);
}

/// A closed network: hosts with the key join each other over TCP and over
/// WebSocket; a host without a key, or with another key, cannot complete a
/// connection on either (nor on the memory transport). Before, anyone who
/// could reach a listen address joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_without_the_network_key_cannot_connect() {
    let key = distribus::NetworkKey::generate();
    let keyed = |k: Option<distribus::NetworkKey>| {
        let mut cfg = HostConfig::for_tests();
        cfg.network_key = k;
        cfg.join_timeout = Duration::from_secs(3);
        cfg
    };
    let (a, tcp_addr) = tcp_host(keyed(Some(key))).await;
    let ws_addr = a.listen("/ip4/127.0.0.1/tcp/0/ws").await.unwrap().remove(0);
    let mut friends = Vec::new();
    for addr in [&tcp_addr, &ws_addr] {
        let (friend, _) = tcp_host(keyed(Some(key))).await;
        friend
            .join(&addr.to_string())
            .await
            .expect("same key joins");
        friends.push(friend);
        for stranger_key in [None, Some(distribus::NetworkKey::generate())] {
            let (stranger, _) = tcp_host(keyed(stranger_key)).await;
            let r = stranger.join(&addr.to_string()).await;
            assert!(
                matches!(r, Err(distribus::JoinError::Join { .. })),
                "{addr} with key {stranger_key:?}: {r:?}"
            );
            assert_eq!(stranger.stats().hosts, 1);
        }
    }
    let (m, m_addr) = mem_host(keyed(Some(key))).await;
    let (stranger, _) = mem_host(keyed(None)).await;
    assert!(stranger.join(&m_addr.to_string()).await.is_err());
    let (friend, _) = mem_host(keyed(Some(key))).await;
    friend
        .join(&m_addr.to_string())
        .await
        .expect("same key joins");
    // `hosts` is a gauge, published at the end of m's turn: the join's
    // answer can come first.
    wait_for("m counts the keyed host", || async { m.stats().hosts == 2 }).await;
    wait_for("a's two keyed friends, and a", || async {
        a.stats().hosts == 3
    })
    .await;
}

/// A member delivers a message to b's alice claiming to come from `bob`,
/// who lives on a. alice's reply goes to a's bob, not to the member. Before
/// claimed senders were checked against the directory, b cached `bob` at
/// the member's host and the reply went there (here it failed: the member
/// does not accept deliveries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_redirect_replies() {
    let cfg = HostConfig::for_tests();
    let nodes = star_with_addrs(3, &cfg).await;
    let (a, a_addr) = &nodes[0];
    let (b, b_addr) = &nodes[1];
    let bob = a.create("bob").unwrap();
    let alice = b.create("alice").unwrap();
    wait_found(b, "bob", a).await;

    let (mut swarm, liar, _) = raw_member(a, a_addr).await;
    swarm.add_peer_address(b.id(), b_addr.clone());
    ask(&mut swarm, b.id(), liar.join(&[]).unwrap())
        .await
        .expect("b answered the join");
    let payload = distribus::Payload::postcard(&"from bob, honest").unwrap();
    let spoofed = distribus::testing::encode_delivery(1, "bob", "alice", &payload).unwrap();
    let answer = ask(&mut swarm, b.id(), spoofed).await.expect("delivered");
    assert_eq!(
        distribus::testing::decode_delivered(&answer).unwrap(),
        vec![true]
    );
    let m = within("the spoofed message", alice.recv()).await.unwrap();
    assert_eq!(m.from, "bob");

    for i in 0..3u32 {
        within("reply", alice.send("bob", &i))
            .await
            .expect("the reply reaches the real bob");
        let got = within("bob's reply", bob.recv()).await.unwrap();
        assert_eq!(got.decode::<u32>().unwrap(), i);
    }
    assert_eq!(b.cached_location("bob").await.unwrap(), Some(a.id()));
}

/// A member that saw one request of a host (its peer "mole" was asked)
/// forges replies "from bob" to alice's next request, to bob, with the ids
/// that follow the one it saw. Every forged reply is refused, and alice
/// gets bob's own. With counted request ids the first forgery was taken
/// (the id after the mole's) and alice got the forger's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_forge_the_reply_to_another_peers_request() {
    let cfg = HostConfig::for_tests();
    let nodes = star_with_addrs(3, &cfg).await;
    let (a, a_addr) = &nodes[0];
    let (b, b_addr) = &nodes[1];
    let (c, _) = &nodes[2];
    let bob = a.create("bob").unwrap();
    let alice = b.create("alice").unwrap();
    let mole = c.create("mole").unwrap();
    wait_found(b, "bob", a).await;
    wait_found(b, "mole", c).await;

    // The attacker learns one of b's request ids through its mole.
    let asked = tokio::spawn({
        let alice = alice.clone();
        async move { alice.request("mole", &0u32, Duration::from_secs(10)).await }
    });
    let seen = within("the mole's request", mole.recv()).await.unwrap();
    let seen_id = seen.request_id().unwrap().as_u64();
    seen.reply(&mole, &0u32).await.unwrap();
    within("the mole's reply", asked).await.unwrap().unwrap();

    // Alice asks bob; the attacker answers first, in bob's name.
    let asking = tokio::spawn({
        let alice = alice.clone();
        async move { alice.request("bob", &1u32, Duration::from_secs(10)).await }
    });
    let honest = within("bob's request", bob.recv()).await.unwrap();
    let (mut swarm, forger, _) = raw_member(a, a_addr).await;
    swarm.add_peer_address(b.id(), b_addr.clone());
    ask(&mut swarm, b.id(), forger.join(&[]).unwrap())
        .await
        .expect("b answered the join");
    let lie = distribus::Payload::postcard(&666u32).unwrap();
    let ids = (1..=256).map(|k| seen_id.wrapping_add(k));
    let forged = distribus::testing::encode_replies(1, "bob", "alice", ids, &lie).unwrap();
    let answer = ask(&mut swarm, b.id(), forged).await.expect("answered");
    let taken = distribus::testing::decode_delivered(&answer).unwrap();
    assert_eq!(taken.len(), 256);
    assert!(taken.iter().all(|t| !t), "a forged reply was taken");
    assert_eq!(b.stats().replies_unmatched, 256);

    honest.reply(&bob, &2u32).await.unwrap();
    let reply = within("alice's reply", asking).await.unwrap().unwrap();
    assert_eq!(
        (reply.from.as_str(), reply.decode::<u32>().unwrap()),
        ("bob", 2)
    );
}

/// Small directory quotas: a stranger's 5,000 registrations are refused as
/// a non-member's, and a member's are stored up to its share of a's store
/// and refused past it (answered as refused, and counted) — while an honest
/// host's peer created afterwards is still registered and found. Before,
/// anyone's registrations were stored until the store was full, and
/// registrations past it were answered `DirectoryOk`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_fill_the_directory() {
    let mut cfg = HostConfig::for_tests();
    cfg.max_directory_entries = 3_000;
    cfg.max_directory_entries_per_host = 1_000;
    let nodes = star_with_addrs(2, &cfg).await;
    let (a, a_addr) = &nodes[0];
    let b = &nodes[1].0;

    let mut stranger = raw_client();
    stranger.add_peer_address(a.id(), a_addr.clone());
    let outsider = RawMember::new(Keypair::generate_ed25519());
    let answer = ask(
        &mut stranger,
        a.id(),
        outsider.registrations("s", 5_000).unwrap(),
    )
    .await
    .expect("answered");
    assert!(RawMember::refused_as_non_member(&answer));

    let (mut swarm, member, _) = raw_member(a, a_addr).await;
    let mut refused = 0;
    for batch in 0..10 {
        let frame = member.registrations(&format!("m{batch}-"), 500).unwrap();
        let answer = ask(&mut swarm, a.id(), frame).await.expect("answered");
        refused += RawMember::registrations_refused(&answer).expect("a directory answer");
    }
    assert_eq!(
        refused, 4_000,
        "past its share, every registration is refused"
    );
    // A gauge, published at the end of the loop's turn: the answer can
    // come first.
    wait_for("the refusals counted", || async {
        a.stats().directory_refused >= 4_000
    })
    .await;
    assert!(a.stats().directory_entries <= 1_000 + 100);

    let honest = b.create("honest").unwrap();
    within("registered", honest.registered())
        .await
        .expect("the honest peer is registered");
    wait_found(a, "honest", b).await;
}

/// A member joins a with its own record and 20,000 records of hosts that
/// do not exist, each signed by a key of its own. a checks the signatures
/// off its loop: `find`s made meanwhile answer within 500 ms. And a admits
/// only `max_hosts` hosts; the other records are refused and counted.
/// Before, the 20,000 signatures were checked on the loop (about a second
/// here), and every record was admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_flood_does_not_stall_the_loop() {
    let mut cfg = HostConfig::for_tests();
    cfg.max_hosts = 64;
    let nodes = star_with_addrs(2, &cfg).await;
    let (a, a_addr) = &nodes[0];
    let b = &nodes[1].0;
    let _x = b.create("x").unwrap();
    wait_found(a, "x", b).await;

    let key = Keypair::generate_ed25519();
    let sybil = RawMember::new(key.clone());
    let flood = tokio::task::spawn_blocking(move || sybil.join_with_strangers(20_000).unwrap())
        .await
        .unwrap();
    let mut swarm = raw_client_with(key);
    swarm.add_peer_address(a.id(), a_addr.clone());
    let a_id = a.id();
    let join = tokio::spawn(async move { ask(&mut swarm, a_id, flood).await });

    let mut slowest = Duration::ZERO;
    let mut finds = 0;
    while !join.is_finished() && finds < 500 {
        let t = Instant::now();
        let found = within("find during the flood", a.find("x")).await.unwrap();
        assert_eq!(found.host, b.id());
        slowest = slowest.max(t.elapsed());
        finds += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = join.await.unwrap().expect("the join was answered");
    assert!(
        RawMember::members(&answer).is_ok(),
        "a join answer (the membership)"
    );
    assert!(finds >= 3, "finds ran while the join was checked ({finds})");
    assert!(
        slowest < Duration::from_millis(500),
        "a find took {slowest:?} during the join flood"
    );
    let hosts = a.members().await.unwrap().len() + 1;
    assert!(hosts <= 64, "{hosts} hosts admitted, max_hosts is 64");
    assert!(a.stats().records_refused >= 20_000 - 64);
}

/// A join of more than 65,536 records is refused by its count, before any
/// record is decoded or checked, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_of_more_than_65536_records_is_refused() {
    let (a, a_addr) = mem_host(HostConfig::for_tests()).await;
    let mut swarm = raw_client();
    swarm.add_peer_address(a.id(), a_addr);
    let too_many = RawMember::join_of_empty_records(65_537).unwrap();
    let answer = ask(&mut swarm, a.id(), too_many).await.expect("answered");
    assert!(RawMember::refused_with(&answer, "at most 65536"));
    assert_eq!(a.stats().refused_non_members, 1);
    assert_eq!(a.members().await.unwrap().len(), 0);
}

/// A record listing more channels than a record may carry is refused (and
/// counted): its host does not become a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_too_many_channels_is_refused() {
    let cfg = HostConfig::for_tests();
    let (a, a_addr) = mem_host(cfg).await;
    let key = Keypair::generate_ed25519();
    let member = RawMember::new(key.clone());
    let mut swarm = raw_client_with(key.clone());
    swarm.add_peer_address(a.id(), a_addr);
    ask(
        &mut swarm,
        a.id(),
        member.join_with_channels(5_000).unwrap(),
    )
    .await
    .expect("answered");
    assert_eq!(a.stats().records_refused, 1);
    assert!(!lists(&a, key.public().to_peer_id()).await);
    // Within the limit it is a member.
    ask(&mut swarm, a.id(), member.join_with_channels(100).unwrap())
        .await
        .expect("answered");
    assert!(lists(&a, key.public().to_peer_id()).await);
}

/// a admits only the hosts on its allow-list: c's join is refused and c is
/// not a member even after b (allowed) names it; added to the list, c
/// joins; removed again, c is dropped from a's membership at once. Before,
/// any host that could connect joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_admits_only_the_hosts_on_it() {
    let cfg = HostConfig::for_tests();
    let nodes = mem_hosts(3, &cfg).await;
    let (a, a_addr) = &nodes[0];
    let (b, b_addr) = &nodes[1];
    let c = &nodes[2].0;
    let mut listed = a.config();
    listed.allowed_hosts = Some([a.id(), b.id()].into_iter().collect());
    a.set_config(listed.clone()).unwrap();

    b.join(&a_addr.to_string()).await.expect("b is on the list");
    match c.join(&a_addr.to_string()).await {
        Err(distribus::JoinError::Join { source, .. }) => {
            assert!(source.to_string().contains("allow-list"), "{source}")
        }
        other => panic!("c joined a host whose allow-list lacks it: {other:?}"),
    }
    // Through b, c's record reaches a, which drops it.
    c.join(&b_addr.to_string()).await.expect("b admits anyone");
    wait_for("b lists c", || lists(b, c.id())).await;
    tokio::time::sleep(cfg.heartbeat_interval * 4).await;
    assert!(!lists(a, c.id()).await, "a admitted c");
    assert!(a.stats().records_refused >= 1);
    assert!(a.stats().refused_non_members >= 1);

    listed.allowed_hosts = Some([a.id(), b.id(), c.id()].into_iter().collect());
    a.set_config(listed.clone()).unwrap();
    c.join(&a_addr.to_string())
        .await
        .expect("c is on the list now");
    assert!(lists(a, c.id()).await);

    listed.allowed_hosts = Some([a.id(), b.id()].into_iter().collect());
    a.set_config(listed).unwrap();
    wait_for("a dropped c", || async { !lists(a, c.id()).await }).await;
    let _carol = c.create("carol").unwrap();
    tokio::time::sleep(cfg.heartbeat_interval * 4).await;
    assert!(!lists(a, c.id()).await, "c came back");
    assert!(lists(a, b.id()).await);
}
