//! Liveness by heartbeat digests, and the link budget.

use crate::common;

use std::time::Duration;

use common::*;
use distribus::{Host, HostConfig};

/// Hosts in a line (each joined the one before) with a link budget of one:
/// heartbeat counters must travel host to host, since the ends are not
/// linked for long. For three leases no live host may drop another; then a
/// crashed host (no leave) lapses on every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_keep_a_line_alive_and_a_crashed_host_lapses_everywhere() {
    let mut cfg = HostConfig::for_tests(); // 250 ms heartbeats, 3 s lease
    cfg.link_budget = Some(1);
    let mut nodes = mem_hosts(5, &cfg).await;
    for i in 1..nodes.len() {
        let to = nodes[i - 1].1.to_string();
        nodes[i].0.join(&to).await.unwrap();
    }
    let hosts: Vec<&Host> = nodes.iter().map(|(h, _)| h).collect();
    wait_membership(&hosts, 5).await;
    for _ in 0..36 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for h in &hosts {
            assert_eq!(h.stats().hosts, 5, "a live host was dropped");
        }
    }
    // The two ends of the line still count each other alive.
    let first = nodes[0].0.id();
    let last_members = nodes[4].0.members().await.unwrap();
    assert!(last_members.iter().any(|m| m.host == first));

    let (crashed, _) = nodes.pop().unwrap();
    drop(crashed);
    let hosts: Vec<&Host> = nodes.iter().map(|(h, _)| h).collect();
    wait_membership(&hosts, 4).await;
}

/// Eight hosts, every peer sends to every other peer, with a link budget
/// of two: links are closed and dialled again under the traffic, yet every
/// message arrives exactly once and in order, and once the traffic stops
/// each host's links shrink back towards the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_budget_bounds_links_and_loses_or_doubles_nothing() {
    const N: usize = 8;
    const EACH: u32 = 20;
    let mut cfg = HostConfig::for_tests();
    cfg.link_budget = Some(2);
    let hosts = star(N, &cfg).await;
    all_to_all_exactly_once(&hosts, EACH).await;
    // Hub: 7 joined through it. Others: the hub, the budget, and at most a
    // couple of young links from digest mixing. Without a budget every host
    // would stay linked to all 7 others.
    for (i, h) in hosts.iter().enumerate().skip(1) {
        wait_for(&format!("host {i} back near its budget"), || async {
            h.stats().connected_hosts <= 5
        })
        .await;
    }
}
