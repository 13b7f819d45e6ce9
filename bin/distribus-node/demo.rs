//! `distribus-node demo`: three nodes on loopback in this process, started
//! the same way the binary starts one, with peers talking across them.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use distribus::Keypair;
use distribus::{Error, FindError, Host, HostConfig, Peer};

use crate::{
    node::Node,
    settings::{LogFormat, Settings},
};

/// How long any one step of the demo may take.
const STEP: Duration = Duration::from_secs(15);

fn settings(listen: &[&str], join: Vec<String>, echo: &str) -> Settings {
    Settings {
        gateway: None,
        listen: listen.iter().map(|s| s.to_string()).collect(),
        join,
        identity: None,
        network_key: None,
        allow_hosts: None,
        metrics: None,
        echo_peers: vec![echo.to_string()],
        subscribe: Vec::new(),
        log_format: LogFormat::Text,
        log_filter: String::new(),
        shutdown_timeout: Duration::from_secs(5),
        threads: None,
        host: HostConfig::default(),
        merged: Default::default(),
    }
}

/// Polls `check` every 20 ms until it is true, for at most [`STEP`].
async fn until<F, Fut>(what: &str, mut check: F) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < STEP {
        if check().await {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("demo: {what} did not happen within {STEP:?}"))
}

async fn recv(peer: &Peer) -> Result<distribus::Message, String> {
    tokio::time::timeout(STEP, peer.recv())
        .await
        .map_err(|_| format!("demo: {} got nothing", peer.id()))?
        .ok_or_else(|| format!("demo: {} was closed", peer.id()))
}

fn err(e: impl Into<Error>) -> String {
    let e: Error = e.into();
    format!("demo: {}", e.report())
}

/// Runs the demo; returns an error line if a step fails.
pub(crate) async fn run() -> Result<(), String> {
    println!("distribus demo: three nodes on 127.0.0.1 in this process\n");
    let tcp = "/ip4/127.0.0.1/tcp/0";
    let ws = "/ip4/127.0.0.1/tcp/0/ws";
    let alpha = Node::start(&settings(&[tcp, ws], vec![], "echo-alpha"), key()).await?;
    let alpha_ws = alpha
        .addrs
        .iter()
        .find(|a| a.to_string().contains("/ws"))
        .and_then(|a| ws_url(&a.to_string()))
        .ok_or("demo: alpha has no WebSocket address")?;
    let alpha_tcp = alpha.addrs[0].to_string();
    println!("node alpha {} listening on", alpha.host.id());
    for a in &alpha.addrs {
        println!("    {a}");
    }
    let beta = Node::start(&settings(&[tcp], vec![alpha_tcp], "echo-beta"), key()).await?;
    println!("node beta  {} joined alpha over TCP", beta.host.id());
    let gamma = Node::start(
        &settings(&[ws], vec![alpha_ws.clone()], "echo-gamma"),
        key(),
    )
    .await?;
    println!(
        "node gamma {} joined alpha over WebSocket at {alpha_ws}",
        gamma.host.id()
    );
    let hosts = [&alpha.host, &beta.host, &gamma.host];
    let took = until("membership", || async {
        let mut all = true;
        for h in hosts {
            all &= h.members().await.map(|m| m.len() >= 2).unwrap_or(false);
        }
        all
    })
    .await?;
    println!("every node knows all three hosts after {took:.1?}\n");

    let alice = alpha.host.create("alice").map_err(err)?;
    let bob = beta.host.create("bob").map_err(err)?;
    let carol = gamma.host.create("carol").map_err(err)?;
    let mut subs = Vec::new();
    for h in hosts {
        subs.push(h.subscribe("news").await.map_err(err)?);
    }
    let took = until("directory registration", || async {
        let mut all = true;
        for h in hosts {
            for id in [
                "alice",
                "bob",
                "carol",
                "echo-alpha",
                "echo-beta",
                "echo-gamma",
            ] {
                all &= h.find(id).await.is_ok();
            }
        }
        all
    })
    .await?;
    println!("peers alice@alpha, bob@beta, carol@gamma and an echo peer on each node");
    println!("are in the directory; every node finds every peer after {took:.1?}\n");

    for (from, to, text) in [
        (&alice, &bob, "hello bob, from alpha"),
        (&bob, &carol, "hello carol, from beta"),
        (&carol, &alice, "hello alice, from gamma (over WebSocket)"),
    ] {
        from.send(to.id(), text).await.map_err(err)?;
        let m = recv(to).await?;
        let body: String = m.decode().map_err(err)?;
        println!("{:>5} <- {:<5} {body:?}", to.id(), m.from);
    }
    let json = serde_json::json!({"kind": "reading", "celsius": 21.5});
    alice.send_json("carol", &json).await.map_err(err)?;
    let m = recv(&carol).await?;
    println!(
        "carol <- alice JSON {}",
        m.decode::<serde_json::Value>().map_err(err)?
    );

    for echo in ["echo-beta", "echo-gamma"] {
        let start = Instant::now();
        alice.send(echo, "ping").await.map_err(err)?;
        let m = recv(&alice).await?;
        println!(
            "alice -> {echo}: {:?} came back from {} in {:.2?}",
            m.decode::<String>().map_err(err)?,
            m.from,
            start.elapsed()
        );
    }

    // Every node has seen the others' subscriptions before publishing.
    until("subscriptions to spread", || async {
        beta.host
            .members()
            .await
            .map(|m| {
                m.iter()
                    .filter(|h| h.channels.iter().any(|c| c == "news"))
                    .count()
                    >= 2
            })
            .unwrap_or(false)
    })
    .await?;
    beta.host
        .publish("news", "beta says: the bus is up")
        .await
        .map_err(err)?;
    for (name, sub) in ["alpha", "beta", "gamma"].iter().zip(subs.iter_mut()) {
        let m = tokio::time::timeout(STEP, sub.recv())
            .await
            .map_err(|_| format!("demo: {name} missed the publish"))?
            .ok_or("demo: subscription closed")?;
        println!(
            "#{} on {name}: {:?}",
            m.channel,
            m.decode::<String>().map_err(err)?
        );
    }

    match alice.send("nobody", "?").await {
        Err(e) => println!("\nalice -> nobody: {e} (a typed error, nothing lost)"),
        Ok(()) => return Err("demo: a message to an unknown peer was delivered".into()),
    }

    gamma.shutdown(Duration::from_secs(5)).await?;
    let took = until("gamma's peers to be forgotten", || async {
        matches!(
            alpha.host.find("carol").await,
            Err(FindError::PeerNotFound(_))
        )
    })
    .await?;
    println!("gamma closed; alpha no longer finds carol after {took:.1?}");
    print_stats("alpha", &alpha.host);
    print_stats("beta", &beta.host);
    beta.shutdown(Duration::from_secs(5)).await?;
    alpha.shutdown(Duration::from_secs(5)).await?;
    println!("\nall nodes closed; demo done");
    Ok(())
}

fn key() -> Keypair {
    Keypair::generate_ed25519()
}

/// `/ip4/A/tcp/P/ws/p2p/…` as the `ws://A:P` URL the original accepted.
fn ws_url(addr: &str) -> Option<String> {
    let parts: Vec<&str> = addr.split('/').collect();
    match parts.as_slice() {
        ["", "ip4", ip, "tcp", port, "ws", ..] => Some(format!("ws://{ip}:{port}")),
        _ => None,
    }
}

fn print_stats(name: &str, host: &Host) {
    let s = host.stats();
    println!(
        "{name}: {} local peers, {} directory entries, {} messages sent to other hosts, \
         {} received from them, {} failed",
        s.local_peers, s.directory_entries, s.sent_remote, s.received_remote, s.failed
    );
}
