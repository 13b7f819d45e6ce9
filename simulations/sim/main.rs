//! `distribus-sim`: many real distribus hosts in one process, measured.
//!
//! ```text
//! cargo run --release --bin distribus-sim -- --hosts 64 --peers 100000 --json out.json
//! cargo run --release --bin distribus-sim -- --sweep
//! cargo run --release --bin distribus-sim -- --charts-from simulations/results/sweep.json
//! cargo run --release --bin distribus-sim -- --model --model-hosts 64,1024 --seed 1
//! ```

mod chart;
mod measure;
mod model;
mod report;
mod run;
mod scenario;

use std::{path::Path, process::ExitCode};

use clap::Parser;

use crate::{
    report::Report,
    scenario::{Cli, Scenario},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let result = if let Some(from) = &cli.charts_from {
        charts_from(from, &cli.out)
    } else if cli.model {
        model::run_all(&cli)
    } else if cli.sweep {
        sweep(&cli)
    } else {
        single(&cli)
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("distribus-sim: error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Draws the charts of the sweep results in `from` into `out`.
fn charts_from(from: &Path, out: &Path) -> Result<bool, String> {
    let text = std::fs::read_to_string(from)
        .map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    let results: Vec<Report> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", from.display()))?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    chart::draw_all(&results, out)?;
    Ok(true)
}

/// One scenario in this process. Returns whether the check passed.
fn single(cli: &Cli) -> Result<bool, String> {
    let s = Scenario::resolve(cli.flags.clone(), cli.scenario.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let scenario = s.clone();
    let report = rt.block_on(async move {
        tokio::spawn(async move { run::run(&scenario).await })
            .await
            .map_err(|e| e.to_string())?
    })?;
    print!("{}", report.summary());
    if let Some(p) = &cli.json {
        write_json(p, &report)?;
    }
    if cli.check && !report.all_ok() {
        eprintln!(
            "distribus-sim: check failed: not every find, message, request and publish succeeded"
        );
        return Ok(false);
    }
    Ok(true)
}

/// Every size of the sweep as a child process (so each starts with a clean
/// heap), then charts.
fn sweep(cli: &Cli) -> Result<bool, String> {
    std::fs::create_dir_all(&cli.out).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut results: Vec<Report> = Vec::new();
    let mut all_ok = true;
    for &hosts in &cli.sweep_hosts {
        for &peers in &cli.sweep_peers {
            let json = cli.out.join(format!("run-{hosts}-{peers}.json"));
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["--hosts", &hosts.to_string(), "--peers", &peers.to_string()]);
            cmd.arg("--json").arg(&json);
            let f = &cli.flags;
            for (flag, v) in [
                ("--messages", f.messages),
                ("--finds", f.finds),
                ("--requests", f.requests),
                ("--broadcasts", f.broadcasts),
                ("--group-sends", f.group_sends),
                ("--queue-publishes", f.queue_publishes),
                ("--publishes", f.publishes),
                ("--subscribers", f.subscribers),
                ("--churn", f.churn),
                ("--concurrency", f.concurrency),
                ("--replication", f.replication),
            ] {
                if let Some(v) = v {
                    cmd.args([flag, &v.to_string()]);
                }
            }
            if let Some(seed) = f.seed {
                cmd.args(["--seed", &seed.to_string()]);
            }
            for (flag, v) in [
                ("--heartbeat", f.heartbeat),
                ("--phase-timeout", f.phase_timeout),
            ] {
                if let Some(d) = v {
                    cmd.args([flag, &format!("{}ms", d.as_millis())]);
                }
            }
            if let Some(p) = &cli.scenario {
                cmd.arg("--scenario").arg(p);
            }
            eprintln!("sweep: {hosts} hosts, {peers} peers");
            let status = cmd.status().map_err(|e| e.to_string())?;
            if !status.success() {
                eprintln!("sweep: {hosts} hosts, {peers} peers failed ({status})");
                all_ok = false;
                continue;
            }
            let text = std::fs::read_to_string(&json).map_err(|e| e.to_string())?;
            results.push(serde_json::from_str(&text).map_err(|e| e.to_string())?);
        }
    }
    write_json(&cli.out.join("sweep.json"), &results)?;
    chart::draw_all(&results, &cli.out)?;
    println!("{}", markdown_table(&results));
    Ok(all_ok)
}

/// The sweep as a Markdown table (for simulations/README.md).
fn markdown_table(rs: &[Report]) -> String {
    let mut t = String::from(
        "| hosts | peers | join s | register s | peers/s | find ok | find p50 ms | find p99 ms | find RTT p99 | delivered | msgs/s | send p99 ms | RSS MiB | bytes/peer | CPU s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rs {
        t.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.0} | {:.4} | {:.2} | {:.2} | {} | {:.4} | {:.0} | {:.2} | {:.0} | {:.0} | {:.1} |\n",
            r.hosts,
            r.peers,
            r.join_s,
            r.register_s,
            r.registrations_per_s,
            r.find_success_ratio,
            r.find_p50_ms,
            r.find_p99_ms,
            r.find_round_trips_p99,
            r.delivered_ratio,
            r.msgs_per_s,
            r.latency_p99_ms,
            r.rss_bytes as f64 / 1048576.0,
            r.rss_per_peer_bytes,
            r.cpu_s
        ));
    }
    t
}
