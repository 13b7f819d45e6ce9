//! What a simulation run does: from flags, or a TOML file with the same keys.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use serde::{Deserialize, Serialize};

/// Command line of `distribus-sim`.
#[derive(Debug, Parser)]
#[command(
    name = "distribus-sim",
    version,
    about = "Runs N real distribus hosts in one process on the in-memory transport \
             and measures joining, registration, lookups, direct messages, channel \
             publishes and churn."
)]
pub(crate) struct Cli {
    /// Scenario file (TOML, keys as the long flags with `_`); flags given on
    /// the command line override it.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Fail (exit 1) unless every find and every message succeeded and every
    /// subscriber got every publish: the CI smoke check.
    #[arg(long)]
    pub check: bool,
    /// Run a sweep over sizes instead of one scenario: each size runs as a
    /// child process; results and charts go to --out.
    #[arg(long)]
    pub sweep: bool,
    /// Host counts of a sweep.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256,512")]
    pub sweep_hosts: Vec<usize>,
    /// Peer counts of a sweep.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub sweep_peers: Vec<usize>,
    /// Where a sweep writes `sweep.json` and the charts.
    #[arg(long, default_value = "simulations/results")]
    pub out: PathBuf,
    /// Draw the charts of a sweep already run (its `sweep.json`) into
    /// --out, without running anything.
    #[arg(long)]
    pub charts_from: Option<PathBuf>,
    /// Run the discrete-event model of the protocol core instead of real
    /// hosts (`distribus::testing::model`): one run per --model-hosts,
    /// `model.json` and its charts into --out.
    #[arg(long)]
    pub model: bool,
    /// Host counts of the model.
    #[arg(long, value_delimiter = ',', default_value = "64,256,512,1024,2048")]
    pub model_hosts: Vec<usize>,
    /// Cores the model's hosts share (0: a core per host, as in a fleet;
    /// 2: as the simulator's hosts in one process on this machine).
    #[arg(long, default_value_t = 0)]
    pub model_cores: usize,
    /// Hosts that start and join at once in the model (1: one by one).
    #[arg(long, default_value_t = 1)]
    pub model_wave: usize,
    /// The scenario.
    #[command(flatten)]
    pub flags: ScenarioFlags,
}

/// Scenario values given as flags (all optional: file, then defaults).
#[derive(Debug, Clone, clap::Args, Default)]
pub(crate) struct ScenarioFlags {
    /// Hosts to start. Default 32.
    #[arg(long)]
    pub hosts: Option<usize>,
    /// Peers, spread evenly over the hosts. Default 10000.
    #[arg(long)]
    pub peers: Option<usize>,
    /// Random direct messages. Default 10000.
    #[arg(long)]
    pub messages: Option<usize>,
    /// Random finds from random hosts. Default 1000.
    #[arg(long)]
    pub finds: Option<usize>,
    /// Requests from random peers, each to a different random peer that
    /// replies. Default 1000 (at most half the peers).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Broadcasts from random hosts, each to every peer. Default 1.
    #[arg(long)]
    pub broadcasts: Option<usize>,
    /// Group sends from random hosts, each to the members of one of 10
    /// groups of 100 peers (`room.<g>.*`) spread over the hosts. Default 3.
    #[arg(long)]
    pub group_sends: Option<usize>,
    /// Publishes to a queue group of 2 members on each of (at most) 32
    /// random hosts, from 4 random hosts, 64 in flight. Default 2000.
    #[arg(long)]
    pub queue_publishes: Option<usize>,
    /// Channel publishes. Default 100.
    #[arg(long)]
    pub publishes: Option<usize>,
    /// Hosts subscribing to the channel. Default 8 (at most all hosts).
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Hosts killed (without leaving) and as many new hosts added during
    /// traffic. Default 0 (no churn phase).
    #[arg(long)]
    pub churn: Option<usize>,
    /// Sends or finds in flight at once. Default 256.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Directory replication. Default 3.
    #[arg(long)]
    pub replication: Option<usize>,
    /// Seed of every random choice. Default 1.
    #[arg(long)]
    pub seed: Option<u64>,
    /// One-way delay added to every link, e.g. "2ms". Default none.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub latency: Option<Duration>,
    /// Share of link chunks that arrive a further 200 ms late (a lost and
    /// retransmitted segment). Default 0.
    #[arg(long)]
    pub loss: Option<f64>,
    /// Membership heartbeat (digest exchange round). Default 1s, 2s above
    /// 128 hosts.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub heartbeat: Option<Duration>,
    /// Links each host keeps before closing idle ones (0: no budget).
    /// Default: the library's (`HostConfig::link_budget`, 256).
    #[arg(long)]
    pub link_budget: Option<usize>,
    /// Networks of more hosts than this relay through the overlay.
    /// Default: the library's (`HostConfig::relay_above`, 128).
    #[arg(long)]
    pub relay_above: Option<usize>,
    /// Longest wait of any phase. Default 300s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub phase_timeout: Option<Duration>,
    /// Wait after joining before the idle cost is measured. Default 5s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub settle: Option<Duration>,
    /// How long the idle cost is measured (longer is steadier). Default 3s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_window: Option<Duration>,
    /// Hosts started and joined at once, each wave once the last one's
    /// joins have answered. Default 1 (one by one); the host count starts
    /// them all at once, as a fleet restarts after a power cut.
    #[arg(long)]
    pub join_wave: Option<usize>,
}

/// The same values in a scenario file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScenarioFile {
    hosts: Option<usize>,
    peers: Option<usize>,
    messages: Option<usize>,
    finds: Option<usize>,
    requests: Option<usize>,
    broadcasts: Option<usize>,
    group_sends: Option<usize>,
    queue_publishes: Option<usize>,
    publishes: Option<usize>,
    subscribers: Option<usize>,
    churn: Option<usize>,
    concurrency: Option<usize>,
    replication: Option<usize>,
    seed: Option<u64>,
    latency: Option<String>,
    loss: Option<f64>,
    heartbeat: Option<String>,
    link_budget: Option<usize>,
    relay_above: Option<usize>,
    phase_timeout: Option<String>,
    settle: Option<String>,
    idle_window: Option<String>,
    join_wave: Option<usize>,
}

/// A resolved scenario.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Scenario {
    /// Hosts.
    pub hosts: usize,
    /// Peers.
    pub peers: usize,
    /// Direct messages.
    pub messages: usize,
    /// Finds.
    pub finds: usize,
    /// Request/reply exchanges.
    pub requests: usize,
    /// Broadcasts, one after another.
    pub broadcasts: usize,
    /// Group sends, one after another.
    pub group_sends: usize,
    /// Publishes to a queue group.
    pub queue_publishes: usize,
    /// Publishes.
    pub publishes: usize,
    /// Subscribing hosts.
    pub subscribers: usize,
    /// Hosts killed and added.
    pub churn: usize,
    /// Operations in flight.
    pub concurrency: usize,
    /// Directory replication.
    pub replication: usize,
    /// Seed.
    pub seed: u64,
    /// One-way link delay.
    #[serde(with = "humantime_serde_ms")]
    pub latency: Duration,
    /// Share of chunks delayed by a retransmission.
    pub loss: f64,
    /// Membership heartbeat (the lease is five of them).
    #[serde(with = "humantime_serde_ms")]
    pub heartbeat: Duration,
    /// Link budget per host (0: none).
    pub link_budget: usize,
    /// Networks of more hosts than this relay.
    pub relay_above: usize,
    /// Longest phase wait.
    #[serde(with = "humantime_serde_ms")]
    pub phase_timeout: Duration,
    /// Hosts started and joined at once.
    pub join_wave: usize,
    /// Wait after joining before the idle window.
    #[serde(with = "humantime_serde_ms")]
    pub settle: Duration,
    /// The idle window.
    #[serde(with = "humantime_serde_ms")]
    pub idle_window: Duration,
}

/// Durations as milliseconds in JSON.
mod humantime_serde_ms {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }
}

fn dur(key: &str, v: Option<String>) -> Result<Option<Duration>, String> {
    v.map(|s| humantime::parse_duration(&s).map_err(|e| format!("scenario key `{key}`: {e}")))
        .transpose()
}

impl Scenario {
    /// Flags over file over defaults.
    pub(crate) fn resolve(
        flags: ScenarioFlags,
        file: Option<&std::path::Path>,
    ) -> Result<Scenario, String> {
        let f: ScenarioFile = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {}", p.display(), e.message()))?
            }
            None => ScenarioFile::default(),
        };
        let hosts = flags.hosts.or(f.hosts).unwrap_or(32);
        let s = Scenario {
            hosts,
            peers: flags.peers.or(f.peers).unwrap_or(10_000),
            messages: flags.messages.or(f.messages).unwrap_or(10_000),
            finds: flags.finds.or(f.finds).unwrap_or(1_000),
            requests: flags.requests.or(f.requests).unwrap_or(1_000),
            broadcasts: flags.broadcasts.or(f.broadcasts).unwrap_or(1),
            group_sends: flags.group_sends.or(f.group_sends).unwrap_or(3),
            queue_publishes: flags.queue_publishes.or(f.queue_publishes).unwrap_or(2_000),
            publishes: flags.publishes.or(f.publishes).unwrap_or(100),
            subscribers: flags.subscribers.or(f.subscribers).unwrap_or(8).min(hosts),
            churn: flags.churn.or(f.churn).unwrap_or(0),
            concurrency: flags.concurrency.or(f.concurrency).unwrap_or(256).max(1),
            replication: flags.replication.or(f.replication).unwrap_or(3),
            seed: flags.seed.or(f.seed).unwrap_or(1),
            latency: flags
                .latency
                .or(dur("latency", f.latency)?)
                .unwrap_or(Duration::ZERO),
            loss: flags.loss.or(f.loss).unwrap_or(0.0),
            heartbeat: flags
                .heartbeat
                .or(dur("heartbeat", f.heartbeat)?)
                .unwrap_or(if hosts > 128 {
                    Duration::from_secs(2)
                } else {
                    Duration::from_secs(1)
                }),
            link_budget: flags
                .link_budget
                .or(f.link_budget)
                .or(distribus::HostConfig::default().link_budget)
                .unwrap_or(0),
            relay_above: flags
                .relay_above
                .or(f.relay_above)
                .unwrap_or(distribus::HostConfig::default().relay_above),
            phase_timeout: flags
                .phase_timeout
                .or(dur("phase_timeout", f.phase_timeout)?)
                .unwrap_or(Duration::from_secs(300)),
            settle: flags
                .settle
                .or(dur("settle", f.settle)?)
                .unwrap_or(Duration::from_secs(5)),
            idle_window: flags
                .idle_window
                .or(dur("idle_window", f.idle_window)?)
                .unwrap_or(Duration::from_secs(3)),
            join_wave: flags.join_wave.or(f.join_wave).unwrap_or(1),
        };
        if s.hosts < 2 {
            return Err("--hosts must be at least 2".into());
        }
        if !(0.0..=1.0).contains(&s.loss) {
            return Err("--loss must be between 0 and 1".into());
        }
        if s.peers < 2 {
            return Err("--peers must be at least 2".into());
        }
        if s.join_wave == 0 {
            return Err("--join-wave must be at least 1".into());
        }
        if s.churn >= s.hosts {
            return Err("--churn must be less than --hosts".into());
        }
        Ok(s)
    }
}
