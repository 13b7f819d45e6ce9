//! `membership-compare`: runs the two membership libraries a message bus
//! could adopt, at the simulator's sizes, and prints the figures that
//! `docs/ARCHITECTURE.md` compares with distribus's own membership:
//!
//! - [`foca`], SWIM (direct and indirect probes, suspicion, updates
//!   piggybacked on probes and a periodic gossip): sans-IO, driven here by
//!   a discrete-event loop on a virtual clock;
//! - [`chitchat`], scuttlebutt anti-entropy with a phi-accrual failure
//!   detector (Quickwit's): it runs its own tokio tasks, driven here on a
//!   paused tokio clock over an in-process transport.
//!
//! Each host joins a random earlier host, all at once (as
//! `distribus-sim --join-wave <hosts>`). Reported per size: the virtual
//! time until every host knows every other, the idle messages, bytes and
//! CPU per host per second once converged, and the false suspicions while
//! a share of messages arrives 200 ms late (as `distribus-sim --loss`).
//! CPU is the driving thread's over the window, so it counts each
//! library's own work with its encoding and decoding, not a network's.
//!
//! ```text
//! cargo run --release -p distribus-membership-compare -- --hosts 64,512
//! ```

mod chitchat_run;
mod foca_run;

use std::time::Duration;

use clap::Parser;
use serde::Serialize;

/// Runs foca and chitchat at the simulator's sizes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Host counts to run.
    #[arg(long, value_delimiter = ',', default_value = "64,512")]
    hosts: Vec<usize>,
    /// Which libraries to run.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    system: Which,
    /// Length of the idle and of the loaded window (virtual time).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    window: Duration,
    /// Share of messages that arrive 200 ms late in the loaded window.
    #[arg(long, default_value_t = 0.05)]
    late: f64,
    /// Longest virtual wait for every host to know every other.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300s")]
    converge_timeout: Duration,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// The libraries a run can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    Foca,
    Chitchat,
    Both,
}

/// What a run measured.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Outcome {
    /// The library.
    pub system: &'static str,
    /// Hosts.
    pub hosts: usize,
    /// Virtual seconds until every host knew every other (`None`: not
    /// within the timeout).
    pub converged_s: Option<f64>,
    /// Least share of the other hosts any host knew as live when the
    /// join phase ended (1 once converged).
    pub least_known: f64,
    /// The library's own round (probe period or gossip interval), seconds.
    pub round_s: f64,
    /// Messages sent per host until converged.
    pub join_messages_per_host: f64,
    /// Bytes sent per host until converged.
    pub join_bytes_per_host: f64,
    /// CPU seconds of the whole process until converged.
    pub join_cpu_s: f64,
    /// Idle messages sent per host per second.
    pub idle_messages_per_host_s: f64,
    /// Idle bytes sent per host per second.
    pub idle_bytes_per_host_s: f64,
    /// Idle CPU of all hosts together, in cores (CPU seconds per second).
    pub idle_cores: f64,
    /// Share of messages made late in the loaded window.
    pub late_share: f64,
    /// Hosts declared down (foca) or seen dead (chitchat) by some host
    /// while all were alive, in the loaded window: (observer, host) pairs.
    pub false_downs: u64,
    /// Hosts suspected at some sample of the loaded window (foca only):
    /// (observer, host) pairs.
    pub false_suspicions: u64,
    /// Events the library answered with an error in the whole run (foca
    /// only; chitchat logs them).
    pub refused: u64,
}

/// CPU seconds the calling thread has used, from /proc (nanoseconds;
/// each run drives its hosts from one thread).
pub(crate) fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

fn print(o: &Outcome) {
    let conv = o.converged_s.map_or(
        format!(
            "not in time (the least informed host knew {:.1} % of the others)",
            o.least_known * 100.0
        ),
        |s| format!("in {s:.1} s ({:.1} rounds)", s / o.round_s),
    );
    println!(
        "{:9} {:5} hosts: converged {conv}; join {:.0} msgs, {:.1} KB, per host, {:.1} CPU-s in all",
        o.system,
        o.hosts,
        o.join_messages_per_host,
        o.join_bytes_per_host / 1e3,
        o.join_cpu_s
    );
    println!(
        "{:9} {:5} hosts: idle {:.1} msgs/s, {:.2} KB/s per host, {:.4} cores for all hosts; with {:.0} % late: {} false downs, {} false suspicions",
        o.system,
        o.hosts,
        o.idle_messages_per_host_s,
        o.idle_bytes_per_host_s / 1e3,
        o.idle_cores,
        o.late_share * 100.0,
        o.false_downs,
        o.false_suspicions
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut all = Vec::new();
    for &hosts in &args.hosts {
        anyhow::ensure!(hosts >= 2, "at least 2 hosts");
        if args.system != Which::Chitchat {
            let o = foca_run::run(hosts, &args)?;
            print(&o);
            all.push(o);
        }
        if args.system != Which::Foca {
            let o = chitchat_run::run(hosts, &args)?;
            print(&o);
            all.push(o);
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&all)?)?;
    }
    Ok(())
}
