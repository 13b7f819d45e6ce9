//! `distribus-node`: runs one distribus host as a process: listens, joins a
//! mesh, serves metrics, answers health probes through echo peers, and
//! leaves gracefully on SIGINT/SIGTERM. A thin front end over the library.

mod client;
mod demo;
mod echo;
mod gateway;
mod identity;
mod logging;
mod metrics;
mod node;
mod settings;
mod signals;

use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};
use distribus::Keypair;

use crate::{
    node::Node,
    settings::{Cli, Command, LogFormat, Settings},
    signals::Signals,
};

// mimalloc, not the system allocator: measured with two hosts over
// loopback, it moves about a quarter more acknowledged messages and half
// again as many channel publishes as glibc's (docs/PERFORMANCE.md,
// "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                _ => {
                    let text = e.render().to_string();
                    let first = text.lines().next().unwrap_or("invalid arguments");
                    let first = first.strip_prefix("error: ").unwrap_or(first);
                    eprintln!("distribus-node: error: {first} (see --help)");
                    ExitCode::from(2)
                }
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("distribus-node: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime, with `threads` workers (None: tokio's default, one per
/// core, which `TOKIO_WORKER_THREADS` also sets).
fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Runs `fut` as a task on a new runtime (not on the blocking main thread).
fn block_on<F>(threads: Option<usize>, fut: F) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    runtime(threads)?.block_on(async move {
        tokio::spawn(fut)
            .await
            .map_err(|e| format!("node task failed: {e}"))?
    })
}

fn run(cli: Cli) -> Result<(), String> {
    let chatty = cli.node.verbose > 0 || std::env::var_os("RUST_LOG").is_some();
    let settings = Settings::resolve(cli.node)?;
    match cli.command {
        Some(Command::Config) => {
            print!("{}", settings.to_toml()?);
            Ok(())
        }
        Some(Command::Keygen { file }) => {
            let key = identity::write_network_key(&file)?;
            println!(
                "wrote network key {} to {}; give every node --network-key {}",
                key.fingerprint(),
                file.display(),
                file.display()
            );
            Ok(())
        }
        Some(Command::Client(command)) => {
            logging::init(
                LogFormat::Text,
                if chatty {
                    settings.log_filter.as_str()
                } else {
                    "error"
                },
            )?;
            // Not spawned: a client command runs on this thread (its future
            // need not be Send).
            runtime(settings.threads)?.block_on(client::run(command))
        }
        Some(Command::Demo) => {
            let filter = if chatty {
                settings.log_filter.as_str()
            } else {
                "warn"
            };
            logging::init(LogFormat::Text, filter)?;
            block_on(settings.threads, demo::run())
        }
        None => {
            logging::init(settings.log_format, &settings.log_filter)?;
            block_on(settings.threads, serve(settings))
        }
    }
}

/// SIGHUP: reads the allow-list file again and applies it; a file that no
/// longer reads keeps the current list (and says why).
fn reload_allow_list(host: &distribus::Host, path: Option<&std::path::Path>) {
    let Some(path) = path else {
        tracing::info!("SIGHUP: no allow-list to re-read");
        return;
    };
    match identity::load_allow_list(path) {
        Ok(hosts) => {
            let n = hosts.len();
            let mut cfg = host.config();
            cfg.allowed_hosts = Some(hosts);
            match host.set_config(cfg) {
                Ok(()) => tracing::info!(hosts = n, "SIGHUP: allow-list re-read"),
                Err(e) => tracing::warn!(error = %e, "SIGHUP: allow-list not applied"),
            }
        }
        Err(e) => tracing::warn!(error = %e, "SIGHUP: allow-list kept as it was"),
    }
}

/// The node's life: start, print how to join, wait for a signal, leave.
async fn serve(mut settings: Settings) -> Result<(), String> {
    let mut signals = Signals::register()?;
    if let Some(path) = &settings.network_key {
        let key = identity::load_network_key(path)?;
        tracing::info!(fingerprint = %key.fingerprint(), "closed network");
        settings.host.network_key = Some(key);
    } else if settings
        .listen
        .iter()
        .any(|a| !(a.contains("127.0.0.1") || a.contains("/ip6/::1/") || a.contains("localhost")))
    {
        tracing::warn!(
            "listening beyond loopback without a network key: anyone who can reach this node \
             can join it (make a key with `distribus-node keygen <file>`, pass --network-key)"
        );
    }
    if let Some(path) = &settings.allow_hosts {
        let hosts = identity::load_allow_list(path)?;
        tracing::info!(hosts = hosts.len(), file = %path.display(), "allow-list");
        settings.host.allowed_hosts = Some(hosts);
    }
    let key = match &settings.identity {
        Some(path) => {
            let (key, created) = identity::load_or_create(path)?;
            if created {
                tracing::info!(file = %path.display(), "created a new identity file");
            }
            key
        }
        None => Keypair::generate_ed25519(),
    };
    let node = Node::start(&settings, key).await?;
    println!(
        "distribus-node {} on network `{}`, host id {}",
        env!("CARGO_PKG_VERSION"),
        settings.host.network_id,
        node.host.id()
    );
    for a in &node.addrs {
        println!("listening on {a}");
    }
    for id in &settings.echo_peers {
        println!("echo peer `{id}` ready");
    }
    if let Some(m) = node.metrics {
        println!("metrics on http://{m}/metrics");
    }
    if let Some(g) = &node.gateway {
        println!("client gateway on {}", g.url());
    }
    if let Some(hint) = node.join_hint() {
        println!("{hint}");
    }
    let name = signals
        .shutdown(|| reload_allow_list(&node.host, settings.allow_hosts.as_deref()))
        .await;
    tracing::info!(signal = name, "leaving the network");
    signals.exit_on_next();
    if let Err(e) = node.shutdown(settings.shutdown_timeout).await {
        tracing::warn!(error = %e, "shutdown was not graceful");
    }
    println!("closed");
    Ok(())
}
