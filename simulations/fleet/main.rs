//! `distribus-fleet`: real `distribus-node` processes, each in its own
//! network namespace, under load and under faults (kill -9, SIGSTOP,
//! partitions, packet loss, restarts, a clock stepped back), checked
//! Jepsen style from what every send and every receipt recorded.
//!
//! Linux only, as root (it creates namespaces, veths, a bridge and
//! nftables rules, and removes them). See docs/RELIABILITY.md.

mod check;
mod delay;
mod fleet;
mod load;
mod net;
mod scale;

use std::{
    collections::HashMap,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use rand::Rng;

use crate::{
    check::Tally,
    fleet::{Launch, Proc, Timings},
    net::Net,
};

/// Every scenario, in the order `all` runs them.
const SCENARIOS: &[&str] = &[
    "kill-node",
    "kill-load",
    "pause-short",
    "pause-long",
    "partition",
    "partition-one-way",
    "latency-loss",
    "restart",
    "clock-back",
    "rolling",
];

/// Most resident memory a node may reach in a scenario.
const RSS_BOUND: u64 = 256 << 20;

#[derive(Parser)]
#[command(name = "distribus-fleet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios on a fresh fleet each and check them.
    Run(RunArgs),
    /// The load generator (started by `run` inside a namespace).
    Load(load::LoadArgs),
    /// Many node processes on loopback (no namespaces, no root), peers
    /// attached through their gateways, and the simulator's figures.
    Scale(scale::ScaleArgs),
    /// Holds this namespace's queued packets for a while (started by `run`
    /// inside a namespace, for latency).
    Delay {
        /// Milliseconds each packet waits.
        #[arg(long)]
        ms: u64,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Scenarios, comma-separated, or `all`.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// `distribus-node` processes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Load hosts (each with 4 peers, sending to the others' peers).
    #[arg(long, default_value_t = 2)]
    loads: usize,
    /// Messages per second of each load.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Directory for keys, logs, records and results (default: a new
    /// temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The node binary (default: `distribus-node` beside this one).
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Load(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(load::run(args))),
        Cmd::Delay { ms } => delay::run(Duration::from_millis(ms)),
        Cmd::Scale(args) => match scale::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => Err("a scale check failed (see above)".into()),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distribus-fleet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What one scenario showed.
#[derive(Debug, serde::Serialize)]
struct Report {
    scenario: String,
    tally: Tally,
    /// From the end of the fault until every live node was ready and
    /// counted every live host (`None`: not within four leases).
    converged_ms: Option<u64>,
    /// Largest resident memory of any node.
    max_rss_bytes: u64,
    /// Log lines with "panicked" in any process's log.
    panics: usize,
    seconds: f64,
    failures: Vec<String>,
}

fn run(args: RunArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let node_bin = args
        .node_bin
        .clone()
        .unwrap_or_else(|| exe.with_file_name("distribus-node"));
    if !node_bin.exists() {
        return Err(format!(
            "no node binary at {} (build it, or pass --node-bin)",
            node_bin.display()
        ));
    }
    let names: Vec<String> = if args.scenarios.iter().any(|s| s == "all") {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    for n in &names {
        if !SCENARIOS.contains(&n.as_str()) {
            return Err(format!(
                "unknown scenario `{n}` (known: {})",
                SCENARIOS.join(", ")
            ));
        }
    }
    if args.nodes < 3 || args.loads < 2 {
        return Err("at least 3 nodes and 2 loads".into());
    }
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("distribus-fleet-{}", std::process::id())),
    };
    let timings = Timings {
        heartbeat: Duration::from_millis(500),
        lease: Duration::from_secs(5),
        request_timeout: Duration::from_secs(4),
    };
    println!(
        "| scenario | sends | acked | lost | dup | failed (by error) | failed but delivered | unknown | converged | max RSS | ok |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut reports = Vec::new();
    for name in &names {
        let dir = root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let launch = Launch {
            node_bin: node_bin.clone(),
            fleet_bin: exe.clone(),
            dir,
            timings,
            nodes: args.nodes,
            loads: args.loads,
            rate: args.rate,
        };
        let report = scenario(name, launch)?;
        let failed: Vec<String> = report
            .tally
            .failed
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} MiB | {} |",
            report.scenario,
            report.tally.sends,
            report.tally.acknowledged,
            report.tally.lost,
            report.tally.duplicated,
            if failed.is_empty() {
                "0".to_string()
            } else {
                failed.join(", ")
            },
            report.tally.failed_but_delivered,
            report.tally.unknown,
            report
                .converged_ms
                .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "no".into()),
            report.max_rss_bytes >> 20,
            if report.failures.is_empty() {
                "yes".to_string()
            } else {
                report.failures.join("; ")
            },
        );
        reports.push(report);
    }
    let json = serde_json::to_string_pretty(&reports).map_err(|e| e.to_string())?;
    let out = root.join("results.json");
    std::fs::write(&out, json).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("records, logs and results.json in {}", root.display());
    let bad: Vec<&str> = reports
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| r.scenario.as_str())
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("checks failed in: {}", bad.join(", ")))
    }
}

/// A running fleet.
struct Fleet {
    launch: Launch,
    // Processes before the network: fields drop in this order, and a
    // namespace is only gone once no process is left in it.
    nodes: Vec<Option<Proc>>,
    loads: Vec<Option<Proc>>,
    incarnations: Vec<u64>,
    /// Per load, when it was killed (ms since the epoch).
    killed: HashMap<usize, Vec<u64>>,
    max_rss: u64,
    net: Net,
}

impl Fleet {
    fn start(launch: Launch) -> Result<Fleet, String> {
        let net = Net::create(launch.nodes + launch.loads)?;
        let mut f = Fleet {
            nodes: Vec::new(),
            loads: Vec::new(),
            incarnations: vec![0; launch.loads],
            killed: HashMap::new(),
            max_rss: 0,
            launch,
            net,
        };
        for i in 0..f.launch.nodes {
            let p = f.launch.node(i, false)?;
            f.nodes.push(Some(p));
        }
        let wait = f.launch.timings.lease * (6 + f.launch.nodes as u32 / 8);
        if f.converge(wait).is_none() {
            return Err("the nodes did not converge at start".into());
        }
        for j in 0..f.launch.loads {
            let p = f.launch.load(j, 0)?;
            f.loads.push(Some(p));
        }
        for p in f.loads.iter().flatten() {
            p.wait_line("ready", f.launch.timings.lease * 12)?;
        }
        Ok(f)
    }

    fn lease(&self) -> Duration {
        self.launch.timings.lease
    }

    /// Sleeps `d`, sampling the nodes' memory.
    fn idle(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            for p in self.nodes.iter().flatten() {
                self.max_rss = self.max_rss.max(p.rss());
            }
            std::thread::sleep(Duration::from_millis(250).min(d));
        }
    }

    /// Waits until every live node is ready and counts every live host;
    /// returns how long it took (`None`: not within `wait`).
    fn converge(&mut self, wait: Duration) -> Option<u64> {
        let t0 = Instant::now();
        while t0.elapsed() < wait {
            let live = self.nodes.iter().flatten().count() + self.loads.iter().flatten().count();
            let all = self.nodes.iter().flatten().all(|p| {
                let ready = matches!(fleet::get(p.slot, "/readyz"), Some((200, _)));
                let count = fleet::get(p.slot, "/admin/members")
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .and_then(|v| v["count"].as_u64());
                ready && count == Some(live as u64 - 1)
            });
            if all {
                return Some(t0.elapsed().as_millis() as u64);
            }
            self.idle(Duration::from_millis(200));
        }
        None
    }

    fn node(&mut self, i: usize) -> Result<&mut Proc, String> {
        self.nodes
            .get_mut(i)
            .and_then(|p| p.as_mut())
            .ok_or_else(|| format!("node {i} is not running"))
    }

    fn kill_node(&mut self, i: usize, sig: &str) -> Result<(), String> {
        let wait = self.lease();
        let p = self.node(i)?;
        p.signal(sig);
        p.wait_exit(wait);
        self.nodes[i] = None;
        Ok(())
    }

    fn restart_node(&mut self, i: usize, clock_back: bool) -> Result<(), String> {
        let p = self.launch.node(i, clock_back)?;
        self.nodes[i] = Some(p);
        Ok(())
    }

    /// Slots of a two-sided split: the first half of the nodes and load 0
    /// against the rest.
    fn sides(&self) -> (Vec<usize>, Vec<usize>) {
        let (n, l) = (self.launch.nodes, self.launch.loads);
        let mut a: Vec<usize> = (0..n / 2).collect();
        let mut b: Vec<usize> = (n / 2..n).collect();
        a.push(n);
        b.extend((1..l).map(|j| n + j));
        (a, b)
    }

    /// Ends the load: stop sending, let in-flight sends end, find every
    /// peer, exit.
    fn finish_loads(&mut self) -> Result<(), String> {
        for p in self.loads.iter_mut().flatten() {
            p.tell("stop");
        }
        self.idle(self.launch.timings.request_timeout + Duration::from_secs(1));
        for p in self.loads.iter_mut().flatten() {
            p.tell("find");
        }
        let wait = self.launch.timings.request_timeout * 8;
        for p in self.loads.iter().flatten() {
            p.wait_line("found", wait)?;
        }
        for p in self.loads.iter_mut().flatten() {
            p.tell("exit");
            p.wait_line("done", wait)?;
            p.wait_exit(wait);
        }
        Ok(())
    }

    fn stop_nodes(&mut self) {
        for p in self.nodes.iter().flatten() {
            p.signal("CONT");
            p.signal("TERM");
        }
        for p in self.nodes.iter_mut().flatten() {
            p.wait_exit(Duration::from_secs(5));
        }
    }

    /// Lines with "panicked" in every log of the scenario.
    fn panics(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.launch.dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .map(|text| text.lines().filter(|l| l.contains("panicked")).count())
            .sum()
    }
}

/// Runs scenario `name` on a fresh fleet and checks it.
fn scenario(name: &str, launch: Launch) -> Result<Report, String> {
    let started = Instant::now();
    let mut f = Fleet::start(launch)?;
    let lease = f.lease();
    // Load before the fault.
    f.idle(Duration::from_secs(3));
    let victim = rand::thread_rng().gen_range(1..f.launch.nodes);
    match name {
        "kill-node" => {
            f.kill_node(victim, "KILL")?;
            f.idle(lease + Duration::from_secs(1));
            f.restart_node(victim, false)?;
        }
        "kill-load" => {
            let j = f.launch.loads - 1;
            if let Some(p) = f.loads[j].as_mut() {
                p.signal("KILL");
                p.wait_exit(lease);
            }
            f.killed.entry(j).or_default().push(load::now_ms());
            f.loads[j] = None;
            f.idle(Duration::from_secs(1));
            f.incarnations[j] += 1;
            let p = f.launch.load(j, f.incarnations[j])?;
            p.wait_line("ready", lease * 12)?;
            f.loads[j] = Some(p);
        }
        "pause-short" | "pause-long" => {
            let hold = if name == "pause-short" {
                lease / 2
            } else {
                lease * 2
            };
            f.node(victim)?.signal("STOP");
            f.idle(hold);
            f.node(victim)?.signal("CONT");
        }
        "partition" | "partition-one-way" => {
            let (a, b) = f.sides();
            f.net.cut(&a, &b)?;
            if name == "partition" {
                f.net.cut(&b, &a)?;
            }
            f.idle(lease * 2);
            f.net.heal()?;
        }
        "latency-loss" => {
            // 200 ms more on every packet each namespace sends, and 5 % of
            // them lost.
            let mut delayers = Vec::new();
            for slot in 0..f.net.slots() {
                delayers.push(f.launch.delayer(slot, Duration::from_millis(200))?);
                f.net.queue_to_delayer(slot, true)?;
            }
            f.net.loss(5)?;
            f.idle(Duration::from_secs(10));
            f.net.heal()?;
            for slot in 0..f.net.slots() {
                f.net.queue_to_delayer(slot, false)?;
            }
            drop(delayers);
        }
        "restart" | "clock-back" => {
            f.kill_node(victim, "TERM")?;
            f.restart_node(victim, name == "clock-back")?;
        }
        "rolling" => {
            for i in 0..f.launch.nodes {
                f.kill_node(i, "TERM")?;
                f.restart_node(i, false)?;
                f.converge(lease * 2);
            }
        }
        other => return Err(format!("unknown scenario {other}")),
    }
    let converged_ms = f.converge(lease * 4);
    f.idle(Duration::from_secs(3));
    f.finish_loads()?;
    f.stop_nodes();
    let deadline = f.launch.timings.request_timeout;
    let tally = check::tally(&f.launch.dir, f.launch.loads, &f.killed, deadline)?;
    let panics = f.panics();
    let mut failures = tally.failures();
    match converged_ms {
        Some(ms) if ms <= 2 * lease.as_millis() as u64 => {}
        Some(ms) => failures.push(format!("converged after {ms} ms, beyond two leases")),
        None => failures.push("did not converge within four leases".into()),
    }
    if panics > 0 {
        failures.push(format!("{panics} panics in the logs"));
    }
    if f.max_rss > RSS_BOUND {
        failures.push(format!("a node reached {} MiB", f.max_rss >> 20));
    }
    Ok(Report {
        scenario: name.to_string(),
        tally,
        converged_ms,
        max_rss_bytes: f.max_rss,
        panics,
        seconds: started.elapsed().as_secs_f64(),
        failures,
    })
}
