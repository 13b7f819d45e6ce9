//! A running node: one host, its listeners, joins, echo peers and metrics.

use std::{net::SocketAddr, time::Duration};

use distribus::Keypair;
use distribus::{Host, Multiaddr};
use tokio::task::JoinHandle;

use crate::{echo, gateway, identity, metrics, settings::Settings};

/// A started node.
#[derive(Debug)]
pub(crate) struct Node {
    /// The node's host.
    pub host: Host,
    /// Every address the node listens on, with `/p2p/<host id>`.
    pub addrs: Vec<Multiaddr>,
    /// Where metrics are served, if they are.
    pub metrics: Option<SocketAddr>,
    /// The client gateway, if it is served.
    pub gateway: Option<distribus::Gateway>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Starts a host with `settings` and identity `key`: listens, joins,
    /// creates the echo peers and serves metrics.
    pub(crate) async fn start(settings: &Settings, key: Keypair) -> Result<Node, String> {
        let mut cfg = settings.host.clone();
        cfg.keypair = Some(key);
        // A persistent identity keeps its last epoch beside it: the next
        // start takes a higher one even if the clock stepped back, and it
        // is written before anything is announced.
        let epoch_file = settings.identity.as_deref().map(identity::epoch_file);
        if let Some(file) = &epoch_file {
            if let Some(last) = identity::load_epoch(file)? {
                cfg.min_epoch = cfg.min_epoch.max(last);
            }
        }
        let host = Host::new(cfg).await.map_err(|e| e.report())?;
        if let Some(file) = &epoch_file {
            identity::store_epoch(file, host.epoch())?;
        }
        let mut addrs = Vec::new();
        for l in &settings.listen {
            let got = host
                .listen(l)
                .await
                .map_err(|e| format!("cannot listen on {l}: {}", e.report()))?;
            addrs.extend(got);
        }
        let mut tasks = Vec::new();
        for id in &settings.echo_peers {
            let task =
                echo::spawn(&host, id).map_err(|e| format!("echo peer `{id}`: {}", e.report()))?;
            tasks.push(task);
        }
        for channel in &settings.subscribe {
            let sub = host
                .subscribe(channel)
                .await
                .map_err(|e| format!("cannot subscribe to `{channel}`: {}", e.report()))?;
            tasks.push(tokio::spawn(print_channel(sub)));
        }
        let metrics = match settings.metrics {
            Some(addr) => {
                let alone = settings.join.is_empty();
                let (bound, task) = metrics::serve(host.clone(), addr, alone).await?;
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };
        let gateway = match &settings.gateway {
            Some(g) => Some(gateway::serve(&host, g).await?),
            None => None,
        };
        if !settings.join.is_empty() {
            join_all(&host, &settings.join, &mut tasks).await;
        }
        Ok(Node {
            host,
            addrs,
            metrics,
            gateway,
            tasks,
        })
    }

    /// The command another node runs to join this one.
    pub(crate) fn join_hint(&self) -> Option<String> {
        self.addrs
            .first()
            .map(|a| format!("join with: distribus-node --join {a}"))
    }

    /// Leaves the network (directory entries withdrawn, connections closed)
    /// within `timeout`.
    pub(crate) async fn shutdown(self, timeout: Duration) -> Result<(), String> {
        if let Some(g) = self.gateway {
            g.close().await;
        }
        let closed = tokio::time::timeout(timeout, self.host.close()).await;
        for t in &self.tasks {
            t.abort();
        }
        match closed {
            Ok(()) => Ok(()),
            Err(_) => Err(format!("host did not close within {timeout:?}")),
        }
    }
}

/// Prints each message of a subscription on stdout: JSON payloads as JSON,
/// others by size.
async fn print_channel(mut sub: distribus::Subscription) {
    while let Some(m) = sub.recv().await {
        let body = match m.decode::<serde_json::Value>() {
            Ok(v) if m.payload.encoding == distribus::Encoding::Json => v.to_string(),
            _ => format!(
                "<{} bytes, {:?}>",
                m.payload.bytes.len(),
                m.payload.encoding
            ),
        };
        println!("#{} {body}", m.channel);
    }
}

/// Joins each address once now; those that fail are retried in the
/// background with backoff until one join succeeds.
async fn join_all(host: &Host, addrs: &[String], tasks: &mut Vec<JoinHandle<()>>) {
    let mut failed = Vec::new();
    let mut joined = false;
    for a in addrs {
        match host.join(a).await {
            Ok(h) => {
                tracing::info!(addr = %a, host = %h, "joined");
                joined = true;
            }
            Err(e) => {
                tracing::warn!(addr = %a, error = %e.report(), "join failed; retrying in the background");
                failed.push(a.clone());
            }
        }
    }
    if joined || failed.is_empty() {
        return;
    }
    let host = host.clone();
    tasks.push(tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            tokio::time::sleep(delay).await;
            for a in &failed {
                match host.join(a).await {
                    Ok(h) => {
                        tracing::info!(addr = %a, host = %h, "joined");
                        return;
                    }
                    Err(distribus::JoinError::Closed) => return,
                    Err(e) => tracing::warn!(addr = %a, error = %e.report(), "join failed"),
                }
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }));
}
