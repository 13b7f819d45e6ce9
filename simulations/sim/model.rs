//! `--model`: the discrete-event model of the protocol core
//! (`distribus::testing::model`) over a range of host counts, with its
//! JSON and charts.

use std::time::Duration;

use distribus::testing::model::{self, CpuCost, ModelConfig, ModelReport};

use crate::{
    chart::{draw, Chart},
    scenario::Cli,
};

/// One model run as written to `model.json`: its settings and figures.
#[derive(serde::Serialize)]
struct Row {
    config: ModelConfig,
    report: ModelReport,
}

/// The CPU a link costs on each side, measured with real hosts: `JOINERS`
/// hosts join one host one after another, and the process's CPU time for
/// those joins, less their record checks and messages at the model's
/// costs, is shared over the link ends opened meanwhile (the hosts' own
/// count, Kademlia's bootstrap dials included).
fn link_cost(cost: &CpuCost) -> Result<Duration, String> {
    const JOINERS: usize = 48;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let cfg = crate::run::host_config(&crate::scenario::Scenario::resolve(
            crate::scenario::ScenarioFlags::default(),
            None,
        )?);
        let mut hosts = Vec::new();
        for _ in 0..=JOINERS {
            hosts.push(crate::run::start_host(&cfg).await?);
        }
        // Let the hosts' start-up work settle before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let opened = |hosts: &[(distribus::Host, String)]| -> u64 {
            hosts
                .iter()
                .map(|(h, _)| h.stats().connections_opened)
                .sum()
        };
        let (cpu, ends) = (distribus::testing::cpu_seconds(), opened(&hosts));
        for (h, _) in &hosts[1..] {
            h.join(&hosts[0].1)
                .await
                .map_err(|e| format!("join: {}", e.report()))?;
        }
        let cpu = distribus::testing::cpu_seconds() - cpu;
        // Kademlia's bootstrap dials more than the joins' own links.
        let ends = u32::try_from(opened(&hosts) - ends)
            .unwrap_or(u32::MAX)
            .max(1);
        // Joiner i checks the i records it is sent, host 0 each joiner's;
        // a join is a request and its answer on each side.
        let checks = (JOINERS * (JOINERS + 1) / 2 + JOINERS) as u32;
        let known = cost.per_check * checks + cost.per_message * (4 * JOINERS as u32);
        let per_end = Duration::from_secs_f64(cpu).saturating_sub(known) / ends;
        eprintln!("distribus-model: {JOINERS} joins opened {ends} link ends in {cpu:.3} s of CPU");
        for (h, _) in hosts {
            let _ = h.close().await;
        }
        Ok(per_end)
    })
}

/// Runs the model at every `--model-hosts` count; true if every run
/// converged without a lapse.
pub(crate) fn run_all(cli: &Cli) -> Result<bool, String> {
    let mut cost = CpuCost::calibrated();
    cost.per_link = link_cost(&cost)?;
    eprintln!(
        "distribus-model: measured here, a record check costs {:?} and a link end {:?}; \
         estimated, a message {:?} and a digest entry {:?}",
        cost.per_check, cost.per_link, cost.per_message, cost.per_entry
    );
    let cores = (cli.model_cores > 0).then_some(cli.model_cores);
    println!(
        "{:>6} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10} {:>7} {:>9} {:>8} {:>8} {:>6} {:>7} {:>7} {:>8}",
        "hosts",
        "join s",
        "join hb",
        "spread hb",
        "checks/h",
        "idle B/h/s",
        "idle req/s",
        "cpu/h",
        "reg s",
        "dir req/h",
        "B/peer",
        "find ok",
        "RT p99",
        "lapses",
        "wall s"
    );
    let mut rows = Vec::new();
    let mut healthy = true;
    for &hosts in &cli.model_hosts {
        let mut cfg = ModelConfig::like_sim(hosts);
        cfg.seed = cli.flags.seed.unwrap_or(1);
        cfg.cores = cores;
        cfg.cost = cost;
        cfg.join_wave = cli.model_wave.max(1);
        if let Some(l) = cli.flags.loss {
            cfg.loss = l;
        }
        if let Some(hb) = &cli.flags.heartbeat {
            cfg.heartbeat = *hb;
            cfg.lease = *hb * 10;
            cfg.idle_window = *hb * 10;
        }
        if let Some(r) = cli.flags.relay_above {
            cfg.relay_above = r;
        }
        if let Some(p) = cli.flags.peers {
            cfg.peers = p;
        }
        if let Some(f) = cli.flags.finds {
            cfg.finds = f;
        }
        if let Some(r) = cli.flags.replication {
            cfg.replication = r;
        }
        let r = model::run(&cfg);
        println!(
            "{:>6} {:>8.2} {:>8.1} {:>9.1} {:>9.0} {:>10.0} {:>10.2} {:>7.4} {:>9.3} {:>8.1} {:>8.1} {:>6.3} {:>7} {:>7} {:>8.1}",
            r.hosts,
            r.join_s,
            r.join_heartbeats,
            r.spread_heartbeats,
            r.checks_per_host,
            r.idle_bytes_per_host_s,
            r.idle_requests_per_host_s,
            r.idle_cpu_per_host,
            r.register_s,
            r.register_requests_per_host,
            r.register_bytes_per_peer,
            r.finds_ok,
            r.find_round_trips_p99,
            r.lapses,
            r.wall_s
        );
        healthy &= r.converged && r.lapses == 0 && (cfg.finds == 0 || r.finds_ok == 1.0);
        rows.push(Row {
            config: cfg,
            report: r,
        });
    }
    std::fs::create_dir_all(&cli.out)
        .map_err(|e| format!("cannot create {}: {e}", cli.out.display()))?;
    let suffix = match cores {
        Some(c) => format!("-{c}cores"),
        None => String::new(),
    };
    crate::write_json(&cli.out.join(format!("model{suffix}.json")), &rows)?;
    let points = |f: fn(&ModelReport) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .map(|r| (r.report.hosts as f64, f(&r.report)))
            .collect()
    };
    let join = format!("model{suffix}-join.svg");
    draw(
        &cli.out,
        &Chart {
            file: &join,
            title: "Model: join (one by one) until every host knows all",
            x_label: "hosts",
            y_label: "heartbeats",
            series: vec![
                ("join".into(), points(|r| r.join_heartbeats)),
                (
                    "spread after the last join".into(),
                    points(|r| r.spread_heartbeats),
                ),
            ],
        },
    )?;
    let idle = format!("model{suffix}-idle.svg");
    draw(
        &cli.out,
        &Chart {
            file: &idle,
            title: "Model: idle digest traffic per host",
            x_label: "hosts",
            y_label: "bytes per second",
            series: vec![("sent".into(), points(|r| r.idle_bytes_per_host_s))],
        },
    )?;
    Ok(healthy)
}
