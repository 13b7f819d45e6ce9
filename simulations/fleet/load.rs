//! The load generator: one distribus host (the library, as an application
//! embeds it) in its own namespace, with a few peers. It sends to the peers
//! of the other load hosts at a fixed rate, each message a unique sequence
//! number, and writes one line per event to its record file:
//!
//! - `S <seq> <to> <start_ms> <elapsed_ms> <outcome>`: a send ended; the
//!   outcome is `ok` (the recipient's inbox has it) or an error kind.
//! - `R <seq> <to> <at_ms>`: a peer here received a message.
//! - `F <id> <outcome> <elapsed_ms>`: a find after the run.
//!
//! Each line is written with one `write` call, so a `kill -9` loses no line
//! that was written. It reads commands on stdin: `stop` ends the sending
//! (in-flight sends still finish and are recorded), `find` looks every
//! target up (then it prints `found`), `exit` closes the host.

use std::{
    io::{BufRead, Write},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use distribus::{Error, Host, HostConfig};
use rand::seq::SliceRandom;

/// Most sends in flight at once.
const MAX_IN_FLIGHT: usize = 4096;

/// The load's options (given by the harness).
#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// This load's index.
    #[arg(long)]
    pub index: usize,
    /// How many load hosts there are (targets are the others' peers).
    #[arg(long)]
    pub loads: usize,
    /// Restart count of this load (part of every sequence number).
    #[arg(long, default_value_t = 0)]
    pub incarnation: u64,
    /// Peers on each load host.
    #[arg(long, default_value_t = 4)]
    pub peers: usize,
    /// Messages per second sent by this load.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Address to listen on.
    #[arg(long)]
    pub listen: String,
    /// Hosts to join (repeatable).
    #[arg(long)]
    pub join: Vec<String>,
    /// Identity key file (created when missing).
    #[arg(long)]
    pub identity: PathBuf,
    /// Record file (appended to).
    #[arg(long)]
    pub out: PathBuf,
    /// Heartbeat interval.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// Lease.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Deadline of a send.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

/// The peer id of peer `k` on load `j`.
pub(crate) fn peer_id(j: usize, k: usize) -> String {
    format!("load{j}.p{k}")
}

/// Milliseconds since the Unix epoch (the harness and the loads share the
/// machine's clock).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The short name of an error kind, for the records.
pub(crate) fn kind(e: &(impl std::fmt::Debug + Clone + Into<Error>)) -> String {
    let debug = format!("{:?}", e.clone().into());
    debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("Other")
        .to_string()
}

/// Appends whole lines to the record file.
#[derive(Clone)]
struct Record(Arc<Mutex<std::fs::File>>);

impl Record {
    fn line(&self, line: String) {
        if let Ok(mut f) = self.0.lock() {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

fn load_key(path: &PathBuf) -> Result<distribus::Keypair, String> {
    if let Ok(bytes) = std::fs::read(path) {
        return distribus::Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| format!("{}: {e}", path.display()));
    }
    let key = distribus::Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().map_err(|e| e.to_string())?;
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key)
}

/// Runs the load until `find` is read on stdin (or stdin closes).
pub(crate) async fn run(args: LoadArgs) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("distribus=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .map_err(|e| format!("{}: {e}", args.out.display()))?;
    let record = Record(Arc::new(Mutex::new(file)));
    let mut cfg = HostConfig::default();
    cfg.keypair = Some(load_key(&args.identity)?);
    cfg.heartbeat_interval = args.heartbeat;
    cfg.lease = args.lease;
    cfg.request_timeout = args.request_timeout;
    let host = Host::new(cfg).await.map_err(|e| e.to_string())?;
    host.listen(&args.listen).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + args.lease * 4;
    'joined: loop {
        for a in &args.join {
            if host.join(a).await.is_ok() {
                break 'joined;
            }
        }
        if Instant::now() > deadline {
            return Err("could not join any node".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut peers = Vec::new();
    for k in 0..args.peers {
        let peer = host
            .create(&peer_id(args.index, k))
            .map_err(|e| e.to_string())?;
        peers.push(peer);
    }
    for peer in &peers {
        let (peer, record) = (peer.clone(), record.clone());
        tokio::spawn(async move {
            while let Some(m) = peer.recv().await {
                if let Ok(seq) = m.decode::<u64>() {
                    record.line(format!("R {seq} {} {}", peer.id(), now_ms()));
                }
            }
        });
    }
    for peer in &peers {
        let _ = tokio::time::timeout(args.lease * 2, peer.registered()).await;
    }
    let targets: Vec<String> = (0..args.loads)
        .filter(|&j| j != args.index)
        .flat_map(|j| (0..args.peers).map(move |k| peer_id(j, k)))
        .collect();
    // Every target findable before the load starts (bounded).
    for t in &targets {
        let until = Instant::now() + args.lease * 4;
        while host.find(t).await.is_err() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("ready");

    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if cmd_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counter: u64 = 0;
    let base = ((args.index as u64) << 48) | (args.incarnation << 40);
    let mut sending = !targets.is_empty();
    loop {
        tokio::select! {
            cmd = cmd_rx.recv() => match cmd.as_deref() {
                Some("stop") => sending = false,
                Some("find") | None => break,
                Some(_) => {}
            },
            _ = tick.tick(), if sending => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else { continue };
                let (from, to) = {
                    let mut rng = rand::thread_rng();
                    (peers.choose(&mut rng).cloned(), targets.choose(&mut rng).cloned())
                };
                let (Some(from), Some(to)) = (from, to) else { continue };
                counter += 1;
                let seq = base | counter;
                let record = record.clone();
                tokio::spawn(async move {
                    let (start, t0) = (now_ms(), Instant::now());
                    let outcome = match from.send(&to, &seq).await {
                        Ok(()) => "ok".to_string(),
                        Err(e) => kind(&e),
                    };
                    record.line(format!(
                        "S {seq} {to} {start} {} {outcome}",
                        t0.elapsed().as_millis()
                    ));
                    drop(permit);
                });
            }
        }
    }
    // In-flight sends end within their deadline.
    let _ = tokio::time::timeout(
        args.request_timeout * 2,
        in_flight.acquire_many(MAX_IN_FLIGHT as u32),
    )
    .await;
    for t in &targets {
        let t0 = Instant::now();
        let outcome = match host.find(t).await {
            Ok(_) => "ok".to_string(),
            Err(e) => kind(&e),
        };
        record.line(format!("F {t} {outcome} {}", t0.elapsed().as_millis()));
    }
    // Close only once told: the other loads may still be looking our
    // peers up.
    println!("found");
    while let Some(cmd) = cmd_rx.recv().await {
        if cmd == "exit" {
            break;
        }
    }
    let _ = host.close().await;
    println!("done");
    Ok(())
}
