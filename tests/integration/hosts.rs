//! Hosts: listen, join, network ids, close, configuration.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use distribus::{
    CreateError, Error, FindError, Host, HostConfig, JoinError, ListenError, PublishError,
    SendError, TransportKind,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_on_tcp_and_websocket_returns_full_addresses() {
    let h = Host::new(HostConfig::default()).await.unwrap();
    let tcp = h.listen("/ip4/127.0.0.1/tcp/0").await.unwrap();
    let ws = h.listen("/ip4/127.0.0.1/tcp/0/ws").await.unwrap();
    let p2p = format!("/p2p/{}", h.id());
    assert!(tcp[0].to_string().starts_with("/ip4/127.0.0.1/tcp/"));
    assert!(tcp[0].to_string().ends_with(&p2p), "{}", tcp[0]);
    assert!(ws[0].to_string().contains("/ws/"), "{}", ws[0]);
    assert!(ws[0].to_string().ends_with(&p2p));
    assert!(
        !tcp[0].to_string().contains("/tcp/0/"),
        "a real port: {}",
        tcp[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_on_a_busy_port_is_a_clear_error() {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let h = Host::new(HostConfig::default()).await.unwrap();
    let err = h
        .listen(&format!("/ip4/127.0.0.1/tcp/{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, ListenError::Listen { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&port.to_string()) || err.to_string().contains("in use"),
        "{err}"
    );
    assert!(matches!(
        h.listen("/bogus").await,
        Err(ListenError::InvalidAddress { .. })
    ));
}

/// A second host of this process cannot listen on a port the first one
/// holds, on TCP or WebSocket. Before, libp2p's `SO_REUSEPORT` let both
/// listen, and connections went to either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_cannot_listen_on_a_port_the_first_holds() {
    let first = Host::new(HostConfig::default()).await.unwrap();
    let second = Host::new(HostConfig::default()).await.unwrap();
    for proto in ["", "/ws"] {
        let addr = first
            .listen(&format!("/ip4/127.0.0.1/tcp/0{proto}"))
            .await
            .unwrap();
        let port = addr[0]
            .iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .unwrap();
        for again in ["", "/ws"] {
            let busy = format!("/ip4/127.0.0.1/tcp/{port}{again}");
            match second.listen(&busy).await {
                Err(ListenError::Listen { addr, source }) => {
                    assert_eq!(addr, busy);
                    assert!(source.to_string().contains("in use"), "{source}");
                }
                other => panic!("listening on {busy} again: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_over_websocket_url_like_the_original() {
    let cfg = HostConfig::default();
    let a = Host::new(cfg.clone()).await.unwrap();
    let b = Host::new(cfg).await.unwrap();
    let ws = b.listen("/ip4/127.0.0.1/tcp/0/ws").await.unwrap().remove(0);
    let port = ws
        .to_string()
        .split("/tcp/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        a.join(&format!("ws://127.0.0.1:{port}")).await.unwrap(),
        b.id()
    );
    let _alice = a.create("alice").unwrap();
    let bob = b.create("bob").unwrap();
    wait_found(&b, "alice", &a).await;
    bob.send("alice", "over websocket").await.unwrap();
    assert_eq!(
        a.get("alice")
            .unwrap()
            .recv()
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "over websocket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_dead_address_fails_in_bounded_time() {
    let mut cfg = HostConfig::default();
    cfg.join_timeout = Duration::from_secs(3);
    let a = Host::new(cfg).await.unwrap();
    // A port nobody listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let err = a
        .join(&format!("/ip4/127.0.0.1/tcp/{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::Join { .. }), "{err:?}");
    // The dial error is kept as the source, not flattened into the message.
    let source = std::error::Error::source(&err).expect("a join error has its cause");
    assert!(
        source.downcast_ref::<distribus::Cause>().is_some_and(|c| c
            .get_ref()
            .downcast_ref::<libp2p::swarm::DialError>()
            .is_some()),
        "{source:?}"
    );
    assert!(
        err.report().starts_with(&format!("{err}: ")),
        "{}",
        err.report()
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    // Memory transport: nothing listens on this port.
    let (m, _) = mem_host(HostConfig::for_tests()).await;
    let err = m.join("/memory/987654321").await.unwrap_err();
    assert!(matches!(err, JoinError::Join { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_of_different_networks_refuse_each_other() {
    let mut one = HostConfig::for_tests();
    one.network_id = "red".into();
    let mut two = HostConfig::for_tests();
    two.network_id = "blue".into();
    let (a, _) = mem_host(one).await;
    let (_b, b_addr) = mem_host(two).await;
    let err = a.join(&b_addr.to_string()).await.unwrap_err();
    match &err {
        JoinError::NetworkMismatch { ours, theirs, .. } => {
            assert_eq!(ours, "red");
            assert_eq!(theirs, "blue");
        }
        other => panic!("expected NetworkMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("blue"));
    assert!(a.members().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_makes_others_forget_its_peers_at_once() {
    let mut cfg = HostConfig::for_tests();
    // A long lease: forgetting must come from the leave, not from expiry.
    cfg.lease = Duration::from_secs(600);
    let [a, b, c]: [Host; 3] = star(3, &cfg).await.try_into().unwrap();
    let _bob = b.create("bob").unwrap();
    let carol = c.create("carol").unwrap();
    wait_found(&a, "bob", &b).await;
    wait_found(&c, "bob", &b).await;
    c.find("bob").await.unwrap(); // cached on c now

    let t = Instant::now();
    b.close().await;
    // Others forget b's peers well before any lease.
    wait_for("a forgets bob", || async {
        matches!(a.find("bob").await, Err(FindError::PeerNotFound(_)))
    })
    .await;
    wait_for("c forgets bob", || async {
        matches!(
            carol.send("bob", &1u8).await,
            Err(SendError::PeerNotFound(_))
        )
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(10));
    wait_membership(&[&a, &c], 2).await;

    // The closed host's API is closed.
    assert_eq!(b.create("x").unwrap_err(), CreateError::Closed);
    assert_eq!(b.find("carol").await.unwrap_err(), FindError::Closed);
    assert_eq!(b.join("/memory/1").await.unwrap_err(), JoinError::Closed);
    assert!(matches!(
        b.publish("ch", &1u8).await,
        Err(PublishError::Closed)
    ));
    assert!(b.get("bob").is_none());
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reads_and_runtime_fields_change() {
    let h = Host::new(HostConfig::for_tests()).await.unwrap();
    let mut cfg = h.config();
    assert_eq!(cfg.transport, TransportKind::Memory);
    assert_eq!(cfg.keypair.as_ref().unwrap().public().to_peer_id(), h.id());
    cfg.max_message_size = 100;
    cfg.request_timeout = Duration::from_secs(1);
    h.set_config(cfg.clone()).unwrap();
    assert_eq!(h.config().max_message_size, 100);
    let p = h.create("p").unwrap();
    let err = p.send("p", &vec![0u8; 200]).await.unwrap_err();
    assert_eq!(
        err,
        SendError::MessageTooLarge {
            size: 202,
            limit: 100
        }
    );
    // Publishes read the new limit too.
    assert!(matches!(
        h.publish("ch", &vec![0u8; 200]).await,
        Err(PublishError::MessageTooLarge {
            size: 202,
            limit: 100
        })
    ));
    h.publish("ch", &vec![0u8; 50]).await.unwrap();
    cfg.network_id = "other".into();
    assert!(matches!(h.set_config(cfg), Err(Error::Config(_))));
    let mut bad = HostConfig::for_tests();
    bad.replication = 0;
    assert!(matches!(Host::new(bad).await, Err(Error::Config(_))));
}

/// `set_config` with a config that leaves the key unset keeps the host's key
/// (as the original `host.config(options)` merged options): run-time fields
/// change, fixed ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_config_with_no_key_keeps_the_key() {
    let host = distribus::Host::new(distribus::HostConfig::default())
        .await
        .unwrap();
    let mut cfg = distribus::HostConfig::default();
    cfg.reconnect_delay = std::time::Duration::from_millis(123);
    host.set_config(cfg).expect("None keeps the current key");
    let now = host.config();
    assert_eq!(now.reconnect_delay, std::time::Duration::from_millis(123));
    assert_eq!(
        now.keypair.map(|k| k.public().to_peer_id()),
        Some(host.id())
    );
    let mut other = distribus::HostConfig::default();
    other.keypair = Some(libp2p::identity::Keypair::generate_ed25519());
    assert!(matches!(
        host.set_config(other),
        Err(distribus::Error::Config(_))
    ));
    host.close().await;
}
