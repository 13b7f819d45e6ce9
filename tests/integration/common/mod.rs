//! Helpers shared by the integration tests: hosts on the memory transport
//! (or TCP loopback), topologies, and bounded waiting.
#![allow(dead_code)]

#[cfg(feature = "gateway")]
pub(crate) mod client;
pub(crate) mod raw;

use std::{collections::HashSet, future::Future, time::Duration};

use distribus::{Host, HostConfig, Multiaddr, Peer, TransportKind};

/// Longest any single wait in a test may take.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Installs a tracing subscriber once (RUST_LOG controls it).
pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A memory-transport host listening on `/memory/0`, and its address.
pub(crate) async fn mem_host(cfg: HostConfig) -> (Host, Multiaddr) {
    init_tracing();
    let host = Host::new(cfg).await.expect("host");
    let addr = host.listen("/memory/0").await.expect("listen").remove(0);
    (host, addr)
}

/// A TCP host on 127.0.0.1 with an OS-chosen port, and its address.
pub(crate) async fn tcp_host(mut cfg: HostConfig) -> (Host, Multiaddr) {
    init_tracing();
    cfg.transport = TransportKind::Tcp;
    let host = Host::new(cfg).await.expect("host");
    let addr = host
        .listen("/ip4/127.0.0.1/tcp/0")
        .await
        .expect("listen")
        .remove(0);
    (host, addr)
}

/// `n` memory hosts with the test preset.
pub(crate) async fn mem_hosts(n: usize, cfg: &HostConfig) -> Vec<(Host, Multiaddr)> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(mem_host(cfg.clone()).await);
    }
    v
}

/// `n` memory hosts where every host joined the first, with full membership.
pub(crate) async fn star(n: usize, cfg: &HostConfig) -> Vec<Host> {
    star_with_addrs(n, cfg)
        .await
        .into_iter()
        .map(|(h, _)| h)
        .collect()
}

/// Like [`star`], with each host's address.
pub(crate) async fn star_with_addrs(n: usize, cfg: &HostConfig) -> Vec<(Host, Multiaddr)> {
    let nodes = mem_hosts(n, cfg).await;
    let first = nodes[0].1.to_string();
    for (h, _) in &nodes[1..] {
        h.join(&first).await.expect("join");
    }
    wait_membership(&nodes.iter().map(|(h, _)| h).collect::<Vec<_>>(), n).await;
    nodes
}

/// Waits until `check` holds; fails the test after `WAIT`.
pub(crate) async fn wait_for<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if let Err(e) = distribus::testing::wait_until(what, WAIT, check).await {
        panic!("timed out: {e}");
    }
}

/// `n` in-memory hosts that relay above 4 hosts, joined as a binary tree
/// (host i joins host (i-1)/2), once every host knows every other.
pub(crate) async fn relaying_tree(n: usize) -> Vec<Host> {
    let mut cfg = HostConfig::for_tests();
    cfg.relay_above = 4;
    let nodes = mem_hosts(n, &cfg).await;
    for i in 1..n {
        let to = nodes[(i - 1) / 2].1.to_string();
        nodes[i].0.join(&to).await.expect("join");
    }
    let hosts: Vec<Host> = nodes.into_iter().map(|(h, _)| h).collect();
    wait_membership(&hosts.iter().collect::<Vec<_>>(), n).await;
    hosts
}

/// Waits until the relay overlay's links are up: every link that either
/// end keeps as a neighbour link is open. From then on, with the
/// membership still, no new link opens (a host reaches the rest through
/// relays), so a test can tell which sends must be relayed.
pub(crate) async fn wait_overlay_linked(hosts: &[Host]) {
    wait_for("the overlay's links", || async {
        let mut wanted = HashSet::new();
        let mut linked = HashSet::new();
        for h in hosts {
            for m in h.members().await.unwrap() {
                let pair = if h.id() < m.host {
                    (h.id(), m.host)
                } else {
                    (m.host, h.id())
                };
                if m.neighbour {
                    wanted.insert(pair);
                }
                if m.connected {
                    linked.insert(pair);
                }
            }
        }
        !wanted.is_empty() && wanted.is_subset(&linked)
    })
    .await;
}

/// Waits until every host knows `n` hosts in all (itself included).
pub(crate) async fn wait_membership(hosts: &[&Host], n: usize) {
    for h in hosts {
        wait_for("full membership", || async {
            h.stats().hosts as usize == n
        })
        .await;
    }
}

/// Waits until `host` can find `id` on `expected`.
pub(crate) async fn wait_found(host: &Host, id: &str, expected: &Host) {
    let want = expected.id();
    wait_for(&format!("{id} found on {want}"), || async {
        matches!(host.find(id).await, Ok(l) if l.host == want)
    })
    .await;
}

/// Runs a future with a deadline, failing the test when it passes.
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Creates peer `p{i}` on every host, waits until every host finds every
/// other's, sends `each` numbered messages from every peer to every other
/// (all peers at once), and checks that each arrives exactly once and in
/// order. Returns the peers.
pub(crate) async fn all_to_all_exactly_once(hosts: &[Host], each: u32) -> Vec<Peer> {
    let n = hosts.len();
    let peers: Vec<Peer> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| h.create(&format!("p{i}")).expect("create"))
        .collect();
    for (i, h) in hosts.iter().enumerate() {
        for (j, owner) in hosts.iter().enumerate() {
            if i != j {
                wait_found(h, &format!("p{j}"), owner).await;
            }
        }
    }
    let mut sends = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let p = p.clone();
        sends.push(tokio::spawn(async move {
            for k in 0..each {
                for j in (0..n).filter(|j| *j != i) {
                    p.send(&format!("p{j}"), &k).await.expect("send");
                }
            }
        }));
    }
    for s in sends {
        within("sends", s).await.expect("send task");
    }
    for (j, p) in peers.iter().enumerate() {
        let mut next = vec![0u32; n];
        for _ in 0..(n - 1) * each as usize {
            let m = within("message", p.recv()).await.expect("inbox open");
            let from: usize = m.from[1..].parse().expect("p<index>");
            assert_eq!(
                m.decode::<u32>().expect("u32"),
                next[from],
                "p{from} -> p{j}"
            );
            next[from] += 1;
        }
        assert!(p.try_recv().is_none(), "p{j} got a message twice");
    }
    peers
}

/// Two joined hosts on TCP loopback, alice on the first and bob on the
/// second, bob found from alice's host.
pub(crate) async fn alice_and_bob() -> (Host, Host, Peer, Peer) {
    let cfg = HostConfig::for_tests();
    let (a, _) = tcp_host(cfg.clone()).await;
    let (b, b_addr) = tcp_host(cfg).await;
    pair_up(a, b, b_addr, "alice", "bob").await
}

/// Two joined hosts on the memory transport with `cfg`, peer `from` on the
/// first and `to` on the second, `to` found from the first.
pub(crate) async fn mem_pair(cfg: HostConfig, from: &str, to: &str) -> (Host, Host, Peer, Peer) {
    let (a, _) = mem_host(cfg.clone()).await;
    let (b, b_addr) = mem_host(cfg).await;
    pair_up(a, b, b_addr, from, to).await
}

/// `a` joins `b`, gets peer `from`, `b` gets `to`, and `a` finds `to`.
async fn pair_up(
    a: Host,
    b: Host,
    b_addr: Multiaddr,
    from: &str,
    to: &str,
) -> (Host, Host, Peer, Peer) {
    a.join(&b_addr.to_string()).await.unwrap();
    let from = a.create(from).unwrap();
    let to_peer = b.create(to).unwrap();
    wait_found(&a, to, &b).await;
    (a, b, from, to_peer)
}
