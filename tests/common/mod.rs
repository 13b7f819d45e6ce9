//! Helpers shared by the integration tests: hosts on the memory transport
//! (or TCP loopback), topologies, and bounded waiting.
#![allow(dead_code)]

use std::{future::Future, time::Duration};

use distribus::{Host, HostConfig, Multiaddr, TransportKind};

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// Installs a tracing subscriber once (RUST_LOG controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A memory-transport host listening on `/memory/0`, and its address.
pub async fn mem_host(cfg: HostConfig) -> (Host, Multiaddr) {
    init_tracing();
    let host = Host::new(cfg).await.expect("host");
    let addr = host.listen("/memory/0").await.expect("listen").remove(0);
    (host, addr)
}

/// A TCP host on 127.0.0.1 with an OS-chosen port, and its address.
pub async fn tcp_host(mut cfg: HostConfig) -> (Host, Multiaddr) {
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
pub async fn mem_hosts(n: usize, cfg: &HostConfig) -> Vec<(Host, Multiaddr)> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(mem_host(cfg.clone()).await);
    }
    v
}

/// `n` memory hosts where every host joined the first, with full membership.
pub async fn star(n: usize, cfg: &HostConfig) -> Vec<Host> {
    star_with_addrs(n, cfg)
        .await
        .into_iter()
        .map(|(h, _)| h)
        .collect()
}

/// Like [`star`], with each host's address.
pub async fn star_with_addrs(n: usize, cfg: &HostConfig) -> Vec<(Host, Multiaddr)> {
    let nodes = mem_hosts(n, cfg).await;
    let first = nodes[0].1.to_string();
    for (h, _) in &nodes[1..] {
        h.join(&first).await.expect("join");
    }
    wait_membership(&nodes.iter().map(|(h, _)| h).collect::<Vec<_>>(), n).await;
    nodes
}

/// Polls `check` every 25 ms until it returns true or `WAIT` passes.
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until every host knows `n` hosts in all (itself included).
pub async fn wait_membership(hosts: &[&Host], n: usize) {
    for h in hosts {
        wait_for("full membership", || async {
            h.stats().hosts as usize == n
        })
        .await;
    }
}

/// Waits until `host` can find `id` on `expected`.
pub async fn wait_found(host: &Host, id: &str, expected: &Host) {
    let want = expected.id();
    wait_for(&format!("{id} found on {want}"), || async {
        matches!(host.find(id).await, Ok(l) if l.host == want)
    })
    .await;
}

/// Runs a future with a deadline, failing the test when it passes.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
