//! Measures what an idle peer costs: resident memory (RSS, Linux) before and
//! after creating a million peers on one host, before and after their
//! directory entries are registered; and how fast `create` runs, a million
//! times in a loop (as the original's `mem_1M_create_rate` in
//! `../shared/peers`).
//!
//! ```text
//! cargo run --release --example peer_memory
//! ```

use std::time::{Duration, Instant};

use distribus::{Error, Host, HostConfig};

const PEERS: u64 = 1_000_000;

/// Resident set size in bytes, from /proc (0 where unavailable).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let host = Host::new(HostConfig::for_tests()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss();
    let start = Instant::now();
    for i in 0..PEERS {
        host.create(&format!("peer-{i:07}"))?;
    }
    let took = start.elapsed();
    let created = rss();
    for _ in 0..6000 {
        if host.stats().directory_entries >= PEERS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let registered = rss();
    println!("{PEERS} idle peers with 12-byte ids on one host:");
    println!(
        "  created in {:.2} s: {:.0} peers/s",
        took.as_secs_f64(),
        PEERS as f64 / took.as_secs_f64()
    );
    println!(
        "  {} bytes RSS per peer after create",
        (created - before) / PEERS
    );
    println!(
        "  {} bytes RSS per peer with its directory entry held on the same host",
        (registered - before) / PEERS
    );
    host.close().await
}
