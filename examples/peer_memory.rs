//! Measures what an idle peer costs: resident memory (RSS, Linux) per peer
//! after creating a million peers on one host and registering them, and how
//! fast `create` runs, a million times in a loop (as the original's
//! `mem_1M_create_rate` in `../shared/peers`).
//!
//! Two runs, each in a fresh process (this program runs itself again), so
//! neither inherits the other's heap:
//! - the peers alone: the host holds no directory entries
//!   (`max_directory_entries = 0`; it refuses its own registrations), which
//!   is what a peer costs on its host when the holders of its entry are
//!   other hosts, as in any network of more than `replication` hosts;
//! - the peers and their entries: a one-host network, where the host holds
//!   every entry. The difference is what an entry costs at a holder.
//!
//! ```text
//! cargo run --release --example peer_memory
//! ```

use std::time::{Duration, Instant};

use distribus::{Error, Host, HostConfig};

const PEERS: u64 = 1_000_000;
/// Set in the environment of the runs this program starts.
const RUN: &str = "PEER_MEMORY_RUN";

/// Resident set size in bytes, from /proc (0 where unavailable).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// One run: creates the peers, waits until the host has handled every
/// registration, and prints `<bytes per peer> <seconds to create>`.
async fn run(hold_entries: bool) -> Result<(), Error> {
    let mut config = HostConfig::for_tests();
    if !hold_entries {
        config.max_directory_entries = 0;
    }
    let host = Host::new(config).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss();
    let start = Instant::now();
    for i in 0..PEERS {
        host.create(&format!("peer-{i:07}"))?;
    }
    let took = start.elapsed();
    for _ in 0..6000 {
        let s = host.stats();
        if s.directory_entries + s.directory_refused >= PEERS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("{} {}", (rss() - before) / PEERS, took.as_secs_f64());
    host.close().await;
    Ok(())
}

/// Runs this program again for one run and reads what it printed.
fn measure(hold_entries: bool) -> Result<(u64, f64), Box<dyn std::error::Error>> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .env(RUN, if hold_entries { "holder" } else { "peers" })
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(b), Some(s)) if out.status.success() => Ok((b.parse()?, s.parse()?)),
        _ => Err(format!("a run failed: {}", String::from_utf8_lossy(&out.stderr)).into()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(which) = std::env::var(RUN) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return Ok(rt.block_on(run(which == "holder"))?);
    }
    let (peer, _) = measure(false)?;
    let (with_entry, took) = measure(true)?;
    println!("{PEERS} idle peers with 12-byte ids on one host:");
    println!(
        "  created in {took:.2} s: {:.0} peers/s (the host holding their entries)",
        PEERS as f64 / took
    );
    println!("  {peer} bytes RSS per peer on its host (its entry held elsewhere)");
    println!("  {with_entry} bytes RSS per peer with its entry held on the same host");
    println!(
        "  {} bytes RSS per directory entry at a holder",
        with_entry.saturating_sub(peer)
    );
    Ok(())
}
