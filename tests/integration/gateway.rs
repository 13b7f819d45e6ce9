//! The client gateway, across real hosts: WebSocket clients attach peers
//! to two joined hosts and talk to each other and to Rust peers.
#![cfg(feature = "gateway")]

use crate::common;

use std::time::Duration;

use common::{client::Client, *};
use distribus::{GatewayConfig, Host, HostConfig, TokenLimits, Tokens};
use serde_json::json;

fn gateway_config() -> GatewayConfig {
    let mut g = GatewayConfig::default();
    g.grace = Duration::from_secs(2);
    g
}

/// Two joined hosts, each with a gateway; returns the hosts and the URLs.
async fn pair(g: GatewayConfig) -> ([Host; 2], [String; 2], Vec<distribus::Gateway>) {
    let hosts: [Host; 2] = star(2, &HostConfig::for_tests()).await.try_into().unwrap();
    let mut gws = Vec::new();
    for h in &hosts {
        gws.push(
            h.serve_clients("127.0.0.1:0", g.clone())
                .await
                .expect("gateway"),
        );
    }
    let urls = [gws[0].url(), gws[1].url()];
    (hosts, urls, gws)
}

/// A client on each URL, with peer "alice" on the first and "bob" on the
/// second.
async fn alice_and_bob(ua: &str, ub: &str) -> (Client, Client) {
    let mut alice = Client::connect(ua).await;
    let mut bob = Client::connect(ub).await;
    alice
        .call(json!({"op":"create","peer":"alice"}))
        .await
        .unwrap();
    bob.call(json!({"op":"create","peer":"bob"})).await.unwrap();
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_hosts_and_a_rust_peer_talk_to_each_other() {
    let ([a, b], [ua, ub], _gws) = pair(gateway_config()).await;
    let mut alice = Client::connect(&ua).await;
    let mut bob = Client::connect(&ub).await;
    assert_eq!(alice.welcome["host"], a.id().to_string());
    let created = alice
        .call(json!({"op":"create","peer":"alice"}))
        .await
        .unwrap();
    assert_eq!(created["registered"], true);
    bob.call(json!({"op":"create","peer":"bob"})).await.unwrap();
    let rust = b.create("rust").unwrap();
    rust.registered().await.unwrap();

    // A client peer is a peer of its host: the other host finds it there.
    wait_found(&b, "alice", &a).await;
    let found = bob.call(json!({"op":"find","peer":"alice"})).await.unwrap();
    assert_eq!(found["host"], a.id().to_string());

    // Client to client across hosts: answered once bob's inbox has it.
    alice
        .call(json!({"op":"send","from":"alice","to":"bob","data":{"text":"Hi","n":[1,2]}}))
        .await
        .unwrap();
    let m = bob.event().await;
    assert_eq!(m["event"], "message");
    assert_eq!((&m["peer"], &m["from"]), (&json!("bob"), &json!("alice")));
    assert_eq!(m["data"], json!({"text":"Hi","n":[1,2]}));

    // Client to a Rust peer: JSON it can decode.
    alice
        .call(json!({"op":"send","from":"alice","to":"rust","data":"hello rust"}))
        .await
        .unwrap();
    let got = within("rust recv", rust.recv()).await.unwrap();
    assert_eq!(got.from, "alice");
    assert_eq!(got.decode::<String>().unwrap(), "hello rust");

    // A Rust peer to a client: JSON as data, a typed value as base64.
    rust.send_json("alice", &json!({"ok": true})).await.unwrap();
    rust.send("alice", &7u32).await.unwrap();
    let m = alice.event().await;
    assert_eq!(
        (&m["from"], &m["data"]),
        (&json!("rust"), &json!({"ok": true}))
    );
    let m = alice.event().await;
    assert_eq!(
        (&m["encoding"], &m["base64"]),
        (&json!("postcard"), &json!("Bw=="))
    );

    // Many sends in flight at once arrive once each, in order.
    let mut ids = Vec::new();
    for k in 0..500 {
        ids.push(
            alice
                .start(json!({"op":"send","from":"alice","to":"bob","data":k}))
                .await,
        );
    }
    for id in ids {
        alice.answer(id).await.unwrap();
    }
    for k in 0..500 {
        let m = bob.event().await;
        assert_eq!(m["data"], json!(k));
    }

    let members = alice.call(json!({"op":"members"})).await.unwrap();
    assert_eq!(members["hosts"][0]["host"], b.id().to_string());
    let stats = alice.call(json!({"op":"stats"})).await.unwrap();
    assert!(stats["sent_remote"].as_u64().unwrap() >= 501, "{stats}");

    // A clean close removes the client's peers from the network.
    alice.close().await;
    wait_for("alice withdrawn", || async {
        matches!(
            b.find("alice").await,
            Err(distribus::FindError::PeerNotFound(_))
        )
    })
    .await;
    let r = bob
        .call(json!({"op":"send","from":"bob","to":"alice","data":1}))
        .await
        .unwrap_err();
    assert_eq!(r.code, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_from_a_client_reaches_every_peer_once() {
    let ([a, b], [ua, ub], _gws) = pair(gateway_config()).await;
    let (mut alice, mut bob) = alice_and_bob(&ua, &ub).await;
    let rust = b.create("rust").unwrap();
    let report = alice
        .call(json!({"op":"broadcast","from":"alice","data":{"all":true}}))
        .await
        .unwrap();
    assert_eq!(
        report,
        json!({"hosts": 2, "peers": 3, "missed": 0, "failed": []})
    );
    for c in [&mut alice, &mut bob] {
        let m = c.event().await;
        assert_eq!(
            (&m["from"], &m["data"]),
            (&json!("alice"), &json!({"all": true}))
        );
    }
    let got = within("rust recv", rust.recv()).await.unwrap();
    assert_eq!(got.from, "alice");
    // From the node itself, and not from another connection's peer.
    let report = bob.call(json!({"op":"broadcast","data":2})).await.unwrap();
    assert_eq!(report["peers"], 3);
    let m = alice.event().await;
    assert_eq!(
        (&m["from"], &m["data"]),
        (&json!(b.id().to_string()), &json!(2))
    );
    let r = bob
        .call(json!({"op":"broadcast","from":"alice","data":3}))
        .await
        .unwrap_err();
    assert_eq!(r.code, "not_found");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_send_from_a_client_reaches_the_matching_peers_only() {
    let ([a, b], [ua, ub], _gws) = pair(gateway_config()).await;
    let mut ca = Client::connect(&ua).await;
    let mut cb = Client::connect(&ub).await;
    for (c, p) in [(&mut ca, "team.red.ann"), (&mut cb, "team.blue.bo")] {
        c.call(json!({"op":"create","peer":p})).await.unwrap();
    }
    let rust = b.create("team.red.rust").unwrap();
    let report = cb
        .call(json!({"op":"send_group","from":"team.blue.bo","to":"team.red.*","data":"hi"}))
        .await
        .unwrap();
    assert_eq!(
        report,
        json!({"hosts": 2, "peers": 2, "missed": 0, "failed": []})
    );
    let m = ca.event().await;
    assert_eq!(
        (&m["peer"], &m["from"], &m["data"]),
        (&json!("team.red.ann"), &json!("team.blue.bo"), &json!("hi"))
    );
    let got = within("rust recv", rust.recv()).await.unwrap();
    assert_eq!(got.from, "team.blue.bo");
    // The sender's own peer does not match: the first thing it gets is a
    // message sent after the group send (which filled the local inboxes
    // before it answered).
    ca.call(json!({"op":"send","from":"team.red.ann","to":"team.blue.bo","data":"after"}))
        .await
        .unwrap();
    assert_eq!(cb.event().await["data"], json!("after"));
    let r = ca
        .call(json!({"op":"send_group","to":"team..x","data":1}))
        .await
        .unwrap_err();
    assert_eq!(r.code, "invalid_pattern");
    let r = ca
        .call(json!({"op":"send_group","data":1}))
        .await
        .unwrap_err();
    assert_eq!(r.code, "bad_request");
    drop(a);
}

/// Two client members of a queue group, on two nodes, and a plain client
/// subscriber: each publish goes to one member (named in the event), every
/// one to the plain subscriber; a resumed session keeps its membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_queue_group_members_share_publishes() {
    let ([a, b], [ua, ub], _gws) = pair(gateway_config()).await;
    let mut wa = Client::connect(&ua).await;
    let mut wb = Client::connect(&ub).await;
    let mut plain = Client::connect(&ub).await;
    for w in [&mut wa, &mut wb] {
        w.call(json!({"op":"subscribe","channel":"jobs.*","queue":"workers"}))
            .await
            .unwrap();
    }
    plain
        .call(json!({"op":"subscribe","channel":"jobs.*"}))
        .await
        .unwrap();
    wait_for("b's queue group known on a", || async {
        a.members()
            .await
            .unwrap()
            .iter()
            .any(|m| m.host == b.id() && m.queues.iter().any(|q| q.group == "workers"))
    })
    .await;
    let mut publisher = Client::connect(&ua).await;
    for k in 0..10 {
        publisher
            .call(json!({"op":"publish","channel":"jobs.print","data":k}))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for w in [&mut wa, &mut wb] {
        for _ in 0..5 {
            let e = w.event().await;
            assert_eq!(
                (&e["channel"], &e["subscription"], &e["queue"]),
                (&json!("jobs.print"), &json!("jobs.*"), &json!("workers"))
            );
            got.push(e["data"].as_u64().unwrap());
        }
    }
    got.sort();
    assert_eq!(got, (0..10).collect::<Vec<_>>(), "each to one member");
    for k in 0..10 {
        let e = plain.event().await;
        assert_eq!((&e["data"], e.get("queue")), (&json!(k), None));
    }
    // The hello of a resumed session lists the membership.
    let old = wb.drop_connection();
    let wb = Client::resume(&ub, old).await.unwrap();
    assert_eq!(wb.welcome["queues"], json!([["jobs.*", "workers"]]));
    assert_eq!(wb.welcome["channels"], json!([]));
    let r = wa
        .call(json!({"op":"subscribe","channel":"jobs","queue":""}))
        .await
        .unwrap_err();
    assert_eq!(r.code, "invalid_channel");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_reach_client_and_rust_subscribers_on_every_host() {
    let ([a, b], [ua, ub], _gws) = pair(gateway_config()).await;
    let mut sub_a = Client::connect(&ua).await;
    let mut sub_b = Client::connect(&ub).await;
    sub_a
        .call(json!({"op":"subscribe","channel":"news"}))
        .await
        .unwrap();
    sub_b
        .call(json!({"op":"subscribe","channel":"news"}))
        .await
        .unwrap();
    // Twice is once.
    sub_b
        .call(json!({"op":"subscribe","channel":"news"}))
        .await
        .unwrap();
    let mut rust = a.subscribe("news").await.unwrap();
    wait_for("b's subscription known on a", || async {
        a.members()
            .await
            .unwrap()
            .iter()
            .any(|m| m.host == b.id() && m.channels.iter().any(|c| c == "news"))
    })
    .await;

    let mut publisher = Client::connect(&ua).await;
    for k in 0..3 {
        publisher
            .call(json!({"op":"publish","channel":"news","data":{"k":k}}))
            .await
            .unwrap();
    }
    for client in [&mut sub_a, &mut sub_b] {
        for k in 0..3 {
            let e = client.event().await;
            assert_eq!(
                (&e["event"], &e["channel"]),
                (&json!("publish"), &json!("news"))
            );
            assert_eq!(e["data"], json!({"k": k}));
        }
    }
    let m = within("rust subscriber", rust.recv()).await.unwrap();
    assert_eq!(m.decode::<serde_json::Value>().unwrap(), json!({"k": 0}));

    // After unsubscribing, nothing more comes; the Rust subscriber still gets it.
    sub_b
        .call(json!({"op":"unsubscribe","channel":"news"}))
        .await
        .unwrap();
    publisher
        .call(json!({"op":"publish","channel":"news","data":"late"}))
        .await
        .unwrap();
    let ping = sub_b.call(json!({"op":"ping"})).await;
    assert!(ping.is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = sub_b.start(json!({"op":"ping"})).await;
    let f = sub_b.frame().await.unwrap();
    assert_eq!(f["id"], json!(id), "an unsubscribed client got {f}");
    let e = sub_a.event().await;
    assert_eq!(e["data"], "late");

    // Overlapping wildcard subscriptions: one event each, naming it.
    for p in ["alerts.>", "alerts.*"] {
        sub_b
            .call(json!({"op":"subscribe","channel":p}))
            .await
            .unwrap();
    }
    wait_for("b's wildcards known on a", || async {
        let members = a.members().await.unwrap();
        let theirs = members.iter().find(|m| m.host == b.id());
        ["alerts.>", "alerts.*"]
            .iter()
            .all(|p| theirs.is_some_and(|m| m.channels.iter().any(|c| c == p)))
    })
    .await;
    publisher
        .call(json!({"op":"publish","channel":"alerts.fire","data":1}))
        .await
        .unwrap();
    let mut via = Vec::new();
    for _ in 0..2 {
        let e = sub_b.event().await;
        assert_eq!(
            (&e["channel"], &e["data"]),
            (&json!("alerts.fire"), &json!(1))
        );
        via.push(e["subscription"].as_str().unwrap_or("").to_string());
    }
    via.sort();
    assert_eq!(via, ["alerts.*", "alerts.>"]);
    let r = publisher
        .call(json!({"op":"publish","channel":"alerts.*","data":1}))
        .await
        .unwrap_err();
    assert_eq!(r.code, "invalid_channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_errors_and_the_connection_goes_on() {
    let ([_a, b], [ua, _ub], _gws) = pair(gateway_config()).await;
    let mut c = Client::connect(&ua).await;
    c.call(json!({"op":"create","peer":"p"})).await.unwrap();
    let code = |r: Result<serde_json::Value, common::client::Refused>| r.unwrap_err().code;
    assert_eq!(
        code(c.call(json!({"op":"create","peer":"p"})).await),
        "id_exists"
    );
    assert_eq!(
        code(c.call(json!({"op":"create","peer":""})).await),
        "invalid_id"
    );
    assert_eq!(
        code(
            c.call(json!({"op":"send","from":"p","to":"nobody","data":1}))
                .await
        ),
        "not_found"
    );
    assert_eq!(
        code(
            c.call(json!({"op":"send","from":"not-mine","to":"p","data":1}))
                .await
        ),
        "not_found"
    );
    assert_eq!(
        code(c.call(json!({"op":"send","from":"p","to":"x"})).await),
        "bad_request"
    );
    assert_eq!(code(c.call(json!({"op":"launch"})).await), "bad_request");
    assert_eq!(
        code(c.call(json!({"op":"hello","version":1})).await),
        "bad_request"
    );
    assert_eq!(
        code(c.call(json!({"op":"subscribe","channel":""})).await),
        "invalid_channel"
    );
    let big = "x".repeat((1 << 20) + 10);
    b.create("q").unwrap().registered().await.unwrap();
    assert_eq!(
        code(
            c.call(json!({"op":"send","from":"p","to":"q","data":big}))
                .await
        ),
        "too_large"
    );
    // Not JSON at all: refused with id 0.
    c.send_text("{{{".into()).await;
    let f = c.frame().await.unwrap();
    assert_eq!(
        (&f["id"], &f["error"]["code"]),
        (&json!(0), &json!("bad_request"))
    );
    // Still served.
    c.call(json!({"op":"send","from":"p","to":"q","data":"fine"}))
        .await
        .unwrap();

    // A frame over the gateway's limit: told why, then closed.
    let huge = format!(
        "{{\"op\":\"ping\",\"id\":9,\"data\":\"{}\"}}",
        "y".repeat((1 << 20) + (70 << 10))
    );
    c.send_text(huge).await;
    let f = c.frame().await.unwrap();
    assert_eq!(
        (&f["event"], &f["code"]),
        (&json!("closing"), &json!("too_large"))
    );
    assert!(c.frame().await.is_none());

    // The first request must be a hello of a version the gateway speaks.
    let mut raw = Client::raw(&ua).await;
    assert_eq!(code(raw.call(json!({"op":"ping"})).await), "bad_request");
    let r = Client::hello(&ua, json!({"version": 99}))
        .await
        .err()
        .unwrap();
    assert_eq!(r.code, "unsupported_version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_resumes_its_session_and_misses_nothing() {
    let ([a, b], [ua, _ub], _gws) = pair(gateway_config()).await;
    let mut c = Client::connect(&ua).await;
    c.call(json!({"op":"create","peer":"roamer"}))
        .await
        .unwrap();
    c.call(json!({"op":"subscribe","channel":"alerts"}))
        .await
        .unwrap();
    let sender = b.create("sender").unwrap();
    wait_found(&b, "roamer", &a).await;
    for k in 0..5 {
        sender.send_json("roamer", &k).await.unwrap();
    }
    // The client takes two events, then reads three more frames but fails
    // before it takes them; more are written to its socket while it is
    // gone, and more wait while it is away.
    for k in 0..2 {
        assert_eq!(c.event().await["data"], json!(k));
    }
    for k in 2..5 {
        assert_eq!(c.frame().await.unwrap()["data"], json!(k));
    }
    for k in 5..8 {
        sender.send_json("roamer", &k).await.unwrap();
    }
    let old = c.drop_connection();
    for k in 8..10 {
        sender.send_json("roamer", &k).await.unwrap();
    }
    let mut back = Client::resume(&ua, old.clone()).await.unwrap();
    assert_eq!(back.welcome["resumed"], true);
    assert_eq!(back.welcome["peers"], json!(["roamer"]));
    assert_eq!(back.welcome["channels"], json!(["alerts"]));
    // Every event it had not taken, once each, in order.
    for k in 2..10 {
        let m = back.event().await;
        assert_eq!((&m["peer"], &m["data"]), (&json!("roamer"), &json!(k)));
    }
    back.call(json!({"op":"send","from":"roamer","to":"sender","data":"back"}))
        .await
        .unwrap();
    assert_eq!(
        within("sender recv", sender.recv())
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "back"
    );

    // Gone for longer than the grace period: its peer is withdrawn.
    back.drop_connection();
    wait_for("roamer withdrawn after the grace period", || async {
        matches!(
            b.find("roamer").await,
            Err(distribus::FindError::PeerNotFound(_))
        )
    })
    .await;
    let late = Client::resume(&ua, old).await.unwrap();
    assert_eq!(late.welcome["resumed"], false);
    assert_eq!(a.peer_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_acknowledge_holds_at_most_its_window() {
    let mut cfg = HostConfig::for_tests();
    cfg.inbox_capacity = 64;
    let [a, b]: [Host; 2] = star(2, &cfg).await.try_into().unwrap();
    let mut g = gateway_config();
    g.ack_window = 100;
    let gw = a.serve_clients("127.0.0.1:0", g).await.unwrap();
    let mut c = Client::connect(&gw.url()).await;
    c.call(json!({"op":"create","peer":"slow"})).await.unwrap();
    let sender = b.create("fast").unwrap();
    wait_found(&b, "slow", &a).await;
    // The client reads every frame but acknowledges none: the window and
    // the inbox take what they can hold, and the rest is refused.
    let (mut accepted, mut full) = (0u32, 0u32);
    for k in 0..1000u32 {
        match sender.send_json("slow", &k).await {
            Ok(()) => accepted += 1,
            Err(distribus::SendError::InboxFull(_)) => full += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(accepted, 164, "window 100 + inbox 64 ({full} refused)");
    let mut got = 0;
    while got < 100 {
        let f = c.frame().await.unwrap();
        assert_eq!(f["seq"], json!(got + 1));
        got += 1;
    }
    // Acknowledged, the window moves on: the inbox's 64 come through.
    c.ack(100).await;
    for k in 100..164 {
        assert_eq!(c.event().await["data"], json!(k));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_cannot_grow_the_node() {
    let mut cfg = HostConfig::for_tests();
    cfg.inbox_capacity = 64;
    let [a, b]: [Host; 2] = star(2, &cfg).await.try_into().unwrap();
    let mut g = gateway_config();
    g.write_timeout = Duration::from_secs(3);
    let gw = a.serve_clients("127.0.0.1:0", g).await.unwrap();
    let mut lazy = Client::connect(&gw.url()).await;
    lazy.call(json!({"op":"create","peer":"lazy"}))
        .await
        .unwrap();
    // From here on the client reads nothing.
    let sender = b.create("flood").unwrap();
    wait_found(&b, "lazy", &a).await;
    let blob = "z".repeat(60_000);
    let mut full = 0;
    let mut delivered = 0u32;
    for _ in 0..4000 {
        match sender.send_json("lazy", &blob).await {
            Ok(()) => delivered += 1,
            Err(distribus::SendError::InboxFull(_)) => {
                full += 1;
                if full > 50 {
                    break;
                }
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(full > 50, "senders were never told the inbox is full");
    // What was accepted is bounded by the socket buffers and the inbox,
    // far below what was offered (4,000 × 60 kB = 240 MB).
    eprintln!("accepted {delivered}, refused {full}");
    assert!(
        delivered < 1000,
        "{delivered} accepted for a client that reads nothing"
    );
    drop(lazy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_limits_and_origins_are_enforced() {
    let hosts: [Host; 1] = star(1, &HostConfig::for_tests()).await.try_into().unwrap();
    let h = &hosts[0];
    let mut tokens = Tokens::new();
    tokens.insert(
        "s3cret",
        TokenLimits {
            max_peers: Some(1),
            max_rate: Some(5),
        },
    );
    tokens.insert("other", TokenLimits::default());
    let mut g = gateway_config();
    g.tokens = Some(tokens);
    g.origins = Some(vec!["https://app.example".into()]);
    let gw = h.serve_clients("127.0.0.1:0", g).await.unwrap();
    let url = gw.url();

    let r = Client::hello(&url, json!({})).await.err().unwrap();
    assert_eq!(r.code, "unauthorized");
    let r = Client::hello(&url, json!({"token":"guess"}))
        .await
        .err()
        .unwrap();
    assert_eq!(r.code, "unauthorized");

    let mut c = Client::hello(&url, json!({"token":"s3cret"}))
        .await
        .unwrap();
    c.call(json!({"op":"create","peer":"one"})).await.unwrap();
    // Its session cannot be resumed with another token, and stays its own.
    let r = Client::hello(&url, json!({"token":"other", "resume": c.session()}))
        .await
        .err()
        .unwrap();
    assert_eq!(r.code, "unauthorized");
    let r = c
        .call(json!({"op":"create","peer":"two"}))
        .await
        .unwrap_err();
    assert_eq!(r.code, "limit");
    // The limit is the token's, over all its connections.
    let mut c2 = Client::hello(&url, json!({"token":"s3cret"}))
        .await
        .unwrap();
    assert_eq!(
        c2.call(json!({"op":"create","peer":"two"}))
            .await
            .unwrap_err()
            .code,
        "limit"
    );
    c.call(json!({"op":"remove","peer":"one"})).await.unwrap();
    c2.call(json!({"op":"create","peer":"two"})).await.unwrap();

    let mut limited = 0;
    for k in 0..20 {
        match c.call(json!({"op":"publish","channel":"c","data":k})).await {
            Ok(_) => {}
            Err(r) if r.code == "rate_limited" => limited += 1,
            Err(r) => panic!("{r:?}"),
        }
    }
    assert!(
        limited >= 10,
        "only {limited} of 20 publishes refused at 5/s"
    );

    // A browser page from another origin is refused at the upgrade.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("Origin", "https://app.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());

    // Beyond loopback, a gateway without tokens is refused unless asked for.
    let e = h
        .serve_clients("0.0.0.0:0", GatewayConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(e, distribus::Error::Config(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_requests_is_answered_in_batches() {
    let ([_a, b], [ua, _ub], _gws) = pair(gateway_config()).await;
    let mut c = Client::hello(&ua, json!({"batch": true})).await.unwrap();
    c.call(json!({"op":"create","peer":"batcher"}))
        .await
        .unwrap();
    // Answers that are ready at once leave as one frame: the gateway
    // flushes only when nothing more is ready.
    let pings: Vec<_> = (0..100).map(|k| json!({"op":"ping","id":k})).collect();
    c.send_text(serde_json::Value::from(pings).to_string())
        .await;
    let f = c.frame().await.expect("answers");
    let items = f.as_array().expect("one array frame");
    let ids: Vec<u64> = items.iter().filter_map(|i| i["id"].as_u64()).collect();
    assert_eq!(ids, (0..100).collect::<Vec<u64>>(), "{f}");

    // Answers that wait on the network are answered as they come, each
    // once, in whatever frames were ready together.
    let sink = b.create("sink").unwrap();
    sink.registered().await.unwrap();
    let requests: Vec<_> = (0..100)
        .map(|k| json!({"op":"send","id":1000 + k,"from":"batcher","to":"sink","data":k}))
        .collect();
    c.send_text(serde_json::Value::from(requests).to_string())
        .await;
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < 100 {
        let f = c.frame().await.expect("answers");
        let items = match f {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        };
        for item in items {
            assert_eq!(item["ok"], json!({}), "{item}");
            assert!(answered.insert(item["id"].as_u64().unwrap()));
        }
    }
    for k in 0..100 {
        let m = within("sink", sink.recv()).await.unwrap();
        assert_eq!(m.decode::<serde_json::Value>().unwrap(), json!(k));
    }
    // A malformed batch is refused as a whole, and the connection goes on.
    c.send_text("[{\"op\":\"ping\",\"id\":1},".into()).await;
    let f = c.frame().await.unwrap();
    assert_eq!(f["error"]["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_replies_between_clients_and_rust_peers_across_hosts() {
    let ([a, b], [ua, ub], _gws) = pair(gateway_config()).await;
    let (mut alice, mut bob) = alice_and_bob(&ua, &ub).await;
    let rust = b.create("rust").unwrap();
    rust.registered().await.unwrap();
    wait_found(&a, "bob", &b).await;
    wait_found(&b, "alice", &a).await;

    // Client to client across hosts: bob sees the request's id and replies.
    let asked = alice
        .start(json!({"op":"request","from":"alice","to":"bob","data":{"q":1},"timeout":5000}))
        .await;
    let m = bob.event().await;
    assert_eq!(
        (&m["event"], &m["from"], &m["data"]),
        (&json!("message"), &json!("alice"), &json!({"q":1}))
    );
    let request = m["request"].as_u64().expect("a request id");
    bob.call(json!({"op":"reply","from":"bob","to":"alice","request":request,"data":{"a":2}}))
        .await
        .unwrap();
    let reply = alice.answer(asked).await.unwrap();
    assert_eq!(
        (&reply["from"], &reply["data"]),
        (&json!("bob"), &json!({"a":2}))
    );
    // Answered once: the same reply again is refused.
    let again = bob
        .call(json!({"op":"reply","from":"bob","to":"alice","request":request,"data":0}))
        .await
        .unwrap_err();
    assert_eq!(again.code, "no_request");

    // A client asks a Rust peer.
    let asked = alice
        .start(json!({"op":"request","from":"alice","to":"rust","data":"ping"}))
        .await;
    let got = within("rust recv", rust.recv()).await.unwrap();
    assert_eq!(got.decode::<String>().unwrap(), "ping");
    got.reply_json(&rust, &json!("pong")).await.unwrap();
    let reply = alice.answer(asked).await.unwrap();
    assert_eq!(
        (&reply["from"], &reply["data"]),
        (&json!("rust"), &json!("pong"))
    );

    // A Rust peer asks a client.
    let rust2 = rust.clone();
    let asking = tokio::spawn(async move {
        rust2
            .request_json("alice", &json!({"n": 41}), Duration::from_secs(5))
            .await
    });
    let m = alice.event().await;
    let request = m["request"].as_u64().expect("a request id");
    alice
        .call(json!({"op":"reply","from":"alice","to":"rust","request":request,"data":{"n":42}}))
        .await
        .unwrap();
    let reply = within("rust's reply", asking).await.unwrap().unwrap();
    assert_eq!(
        reply.decode::<serde_json::Value>().unwrap(),
        json!({"n": 42})
    );

    // Nobody answers: the requester times out, the late replier is told.
    let asked = alice
        .start(json!({"op":"request","from":"alice","to":"bob","data":1,"timeout":200}))
        .await;
    let m = bob.event().await;
    let late = alice.answer(asked).await.unwrap_err();
    assert_eq!(late.code, "timeout");
    let refused = bob
        .call(json!({"op":"reply","from":"bob","to":"alice","request":m["request"],"data":2}))
        .await
        .unwrap_err();
    assert_eq!(refused.code, "no_request");
    // Only a connection's own peers ask and reply.
    let r = bob
        .call(json!({"op":"request","from":"alice","to":"bob","data":1}))
        .await
        .unwrap_err();
    assert_eq!(r.code, "not_found");
}
