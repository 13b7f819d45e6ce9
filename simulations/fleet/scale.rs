//! `distribus-fleet scale`: many `distribus-node` processes on loopback TCP,
//! peers attached through their client gateways, and the simulator's
//! figures (join, register, find latency, messages per second, publishes,
//! RSS per node) measured on real processes. No namespaces, no root.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Options of a scale run.
#[derive(Debug, clap::Args)]
pub(crate) struct ScaleArgs {
    /// `distribus-node` processes.
    #[arg(long, default_value_t = 64)]
    nodes: usize,
    /// Peers in all, spread evenly over the nodes' gateways.
    #[arg(long, default_value_t = 100_000)]
    peers: usize,
    /// Random direct messages among them.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Random finds, one at a time per node, for their latency.
    #[arg(long, default_value_t = 1_000)]
    finds: usize,
    /// Publishes on a channel every node's client subscribes to.
    #[arg(long, default_value_t = 100)]
    publishes: usize,
    /// The `distribus-node` binary. Default: beside this one.
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Where the results (scale.json) and node logs go.
    #[arg(long, default_value = "/tmp/distribus-scale")]
    dir: PathBuf,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Longest any phase may take.
const PHASE: Duration = Duration::from_secs(300);
/// Requests in flight over all clients while sending messages.
const IN_FLIGHT: usize = 4096;

/// A node process and what it printed.
struct Node {
    child: Child,
    addr: String,
    gateway: String,
    metrics: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn rss(&self) -> u64 {
        crate::fleet::rss_of(self.child.id())
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        crate::fleet::http_get(&self.metrics, path)
    }
}

fn start_node(
    bin: &PathBuf,
    i: usize,
    join: &[String],
    dir: &std::path::Path,
) -> Result<Node, String> {
    let log = std::fs::File::create(dir.join(format!("node{i}.log"))).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--gateway",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--inbox-capacity",
        "4096",
        "--log-level",
        "warn",
    ]);
    for j in join {
        cmd.args(["--join", j]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let (mut addr, mut gateway, mut metrics) = (None, None, None);
    let mut lines = BufReader::new(out).lines();
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(a) = line.strip_prefix("listening on ") {
            addr.get_or_insert(a.to_string());
        } else if let Some(g) = line.strip_prefix("client gateway on ") {
            gateway = Some(g.to_string());
        } else if let Some(m) = line.strip_prefix("metrics on http://") {
            metrics = m.strip_suffix("/metrics").map(str::to_string);
        } else if line.starts_with("join with:") {
            break;
        }
    }
    // Keep draining stdout so the node never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    match (addr, gateway, metrics) {
        (Some(addr), Some(gateway), Some(metrics)) => Ok(Node {
            child,
            addr,
            gateway,
            metrics,
        }),
        _ => Err(format!("node {i} did not start (see node{i}.log)")),
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One gateway connection: requests go through a writer task that batches
/// them; a reader task matches answers and counts pushes.
#[derive(Clone)]
struct Client {
    out: mpsc::Sender<String>,
    pending: Pending,
    next: Arc<AtomicU64>,
    messages: Arc<AtomicU64>,
    publishes: Arc<AtomicU64>,
}

impl Client {
    async fn connect(url: &str) -> Result<Client, String> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::channel::<String>(8192);
        let c = Client {
            out,
            pending: Arc::default(),
            next: Arc::new(AtomicU64::new(1)),
            messages: Arc::default(),
            publishes: Arc::default(),
        };
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < 1024 {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let frame = if batch.len() == 1 {
                    batch.pop().unwrap_or_default()
                } else {
                    format!("[{}]", batch.join(","))
                };
                if sink.send(Message::text(frame)).await.is_err() {
                    return;
                }
            }
        });
        let reader = c.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                match v {
                    Value::Array(items) => items.into_iter().for_each(|i| reader.dispatch(i)),
                    one => reader.dispatch(one),
                }
            }
        });
        let hello = c
            .call(json!({"op": "hello", "version": 1, "batch": true}))
            .await?;
        if hello.get("ok").is_none() {
            return Err(format!("hello refused: {hello}"));
        }
        Ok(c)
    }

    fn dispatch(&self, v: Value) {
        match v.get("event").and_then(Value::as_str) {
            Some("message") => {
                self.messages.fetch_add(1, Ordering::Relaxed);
            }
            Some("publish") => {
                self.publishes.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {}
            None => {
                let id = v.get("id").and_then(Value::as_u64).unwrap_or(0);
                let tx = self
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.send(v);
                }
            }
        }
    }

    /// Sends a request; the answer (the whole frame) comes on the receiver.
    async fn start(&self, mut req: Value) -> oneshot::Receiver<Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        req["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let _ = self.out.send(req.to_string()).await;
        rx
    }

    async fn call(&self, req: Value) -> Result<Value, String> {
        match tokio::time::timeout(PHASE, self.start(req).await).await {
            Ok(Ok(v)) => Ok(v),
            _ => Err("no answer".into()),
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the scale measurement; true when every check held.
pub(crate) fn run(args: ScaleArgs) -> Result<bool, String> {
    std::fs::create_dir_all(&args.dir).map_err(|e| e.to_string())?;
    let bin = match &args.node_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("distribus-node"),
    };
    let n = args.nodes.max(1);

    // 1. Join: node i joins nodes i-1 and i/2; until every node is ready
    // and counts every other.
    let t0 = Instant::now();
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    for i in 0..n {
        let mut join = Vec::new();
        if i > 0 {
            join.push(nodes[i - 1].addr.clone());
            if i / 2 != i - 1 {
                join.push(nodes[i / 2].addr.clone());
            }
        }
        nodes.push(start_node(&bin, i, &join, &args.dir)?);
    }
    let started_s = t0.elapsed().as_secs_f64();
    let until = Instant::now() + PHASE;
    loop {
        let ready = nodes.iter().all(|node| {
            let members = node
                .get("/admin/members")
                .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                .and_then(|v| v["count"].as_u64())
                .unwrap_or(0);
            members as usize == n - 1 && matches!(node.get("/readyz"), Some((200, _)))
        });
        if ready {
            break;
        }
        if Instant::now() > until {
            return Err("the nodes did not form one membership in time".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let join_s = t0.elapsed().as_secs_f64();
    println!(
        "joined: {n} nodes in {join_s:.1} s ({started_s:.1} s to start them one after another)"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let report = rt.block_on(measure(&args, &nodes))?;
    let rss: Vec<u64> = nodes.iter().map(Node::rss).collect();
    let rss_mean = rss.iter().sum::<u64>() as f64 / n as f64 / 1048576.0;
    let rss_max = *rss.iter().max().unwrap_or(&0) as f64 / 1048576.0;
    let mut all = report;
    all["nodes"] = json!(n);
    all["join_s"] = json!(join_s);
    all["rss_mean_mib"] = json!(rss_mean);
    all["rss_max_mib"] = json!(rss_max);
    println!("RSS per node: mean {rss_mean:.1} MiB, max {rss_max:.1} MiB");
    std::fs::write(
        args.dir.join("scale.json"),
        serde_json::to_string_pretty(&all).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    let ok = all["registered_ratio"] == json!(1.0)
        && all["find_ok_ratio"] == json!(1.0)
        && all["delivered_ratio"] == json!(1.0)
        && all["publish_delivered_ratio"] == json!(1.0);
    println!("results in {}", args.dir.join("scale.json").display());
    Ok(ok)
}

async fn measure(args: &ScaleArgs, nodes: &[Node]) -> Result<Value, String> {
    let n = nodes.len();
    let mut clients = Vec::with_capacity(n);
    for node in nodes {
        clients.push(Client::connect(&node.gateway).await?);
    }
    // Each node's host id, to check what finds answer.
    let mut hosts = Vec::with_capacity(n);
    for c in &clients {
        let m = c.call(json!({"op": "members"})).await?;
        hosts.push(m["ok"]["self"].as_str().unwrap_or("").to_string());
    }
    let mut rng = StdRng::seed_from_u64(args.seed);

    // 2. Register: peer s{i} lives on node i % n; each create is answered
    // once every holder has it.
    let t = Instant::now();
    let mut waits = Vec::with_capacity(args.peers);
    for i in 0..args.peers {
        waits.push(
            clients[i % n]
                .start(json!({"op": "create", "peer": format!("s{i}")}))
                .await,
        );
    }
    let mut registered = 0usize;
    for w in waits {
        if let Ok(Ok(v)) = tokio::time::timeout(PHASE, w).await {
            if v["ok"]["registered"] == json!(true) {
                registered += 1;
            }
        }
    }
    let register_s = t.elapsed().as_secs_f64();
    println!(
        "registered: {registered} of {} peers in {register_s:.2} s ({:.0}/s)",
        args.peers,
        args.peers as f64 / register_s
    );

    // 3. Finds, one at a time per node, from random nodes.
    let mut lat = Vec::with_capacity(args.finds);
    let mut found = 0usize;
    let per_node = args.finds.div_ceil(n);
    let mut tasks = Vec::new();
    for (k, c) in clients.iter().enumerate() {
        let picks: Vec<usize> = (0..per_node)
            .filter(|j| k * per_node + j < args.finds)
            .map(|_| rng.gen_range(0..args.peers))
            .collect();
        let c = c.clone();
        let hosts = hosts.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for p in picks {
                let t = Instant::now();
                let v = c.call(json!({"op": "find", "peer": format!("s{p}")})).await;
                let ok = matches!(&v, Ok(v) if v["ok"]["host"] == json!(hosts[p % hosts.len()]));
                out.push((t.elapsed().as_secs_f64() * 1e3, ok));
            }
            out
        }));
    }
    for t in tasks {
        for (ms, ok) in t.await.map_err(|e| e.to_string())? {
            lat.push(ms);
            found += usize::from(ok);
        }
    }
    lat.sort_by(f64::total_cmp);
    let finds = lat.len().max(1);
    println!(
        "finds: {found} of {} right, p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    // 4. Random messages, IN_FLIGHT at once over all clients.
    let t = Instant::now();
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut ok = 0usize;
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut tally = |v: Result<Value, oneshot::error::RecvError>| match v {
        Ok(v) if v.get("ok").is_some() => ok += 1,
        Ok(v) => {
            let code = v["error"]["code"].as_str().unwrap_or("?").to_string();
            *errors.entry(code).or_default() += 1;
        }
        Err(_) => *errors.entry("lost".into()).or_default() += 1,
    };
    for _ in 0..args.messages {
        let from = rng.gen_range(0..args.peers);
        let to = rng.gen_range(0..args.peers);
        if inflight.len() >= IN_FLIGHT {
            if let Some(v) = inflight.next().await {
                tally(v);
            }
        }
        let req = json!({
            "op": "send", "from": format!("s{from}"), "to": format!("s{to}"), "data": "x".repeat(62)
        });
        inflight.push(clients[from % n].start(req).await);
    }
    while let Some(v) = inflight.next().await {
        tally(v);
    }
    let received = || {
        clients
            .iter()
            .map(|c| c.messages.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let until = Instant::now() + Duration::from_secs(30);
    while received() < ok as u64 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let messages_s = t.elapsed().as_secs_f64();
    let msgs_per_s = args.messages as f64 / messages_s;
    println!(
        "messages: {ok} of {} acknowledged, {} received, {msgs_per_s:.0} msgs/s; errors {errors:?}",
        args.messages,
        received()
    );

    // 5. Publishes: every node's client subscribes; once node 0 sees every
    // other's subscription, publishes from random clients.
    for c in &clients {
        c.call(json!({"op": "subscribe", "channel": "scale"}))
            .await?;
    }
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let m = clients[0].call(json!({"op": "members"})).await?;
        let subscribed = m["ok"]["hosts"].as_array().map_or(0, |hs| {
            hs.iter()
                .filter(|h| {
                    h["channels"]
                        .as_array()
                        .is_some_and(|c| c.contains(&json!("scale")))
                })
                .count()
        });
        if subscribed == n - 1 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    for _ in 0..args.publishes {
        let c = &clients[rng.gen_range(0..n)];
        let _ = c
            .call(json!({"op": "publish", "channel": "scale", "data": "x".repeat(62)}))
            .await?;
    }
    let want = (args.publishes * n) as u64;
    let got = || {
        clients
            .iter()
            .map(|c| c.publishes.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let until = Instant::now() + Duration::from_secs(30);
    while got() < want && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publish_s = t.elapsed().as_secs_f64();
    println!(
        "publishes: {} of {want} copies delivered in {publish_s:.2} s",
        got()
    );

    Ok(json!({
        "peers": args.peers,
        "register_s": register_s,
        "registered_ratio": registered as f64 / args.peers.max(1) as f64,
        "find_ok_ratio": found as f64 / finds as f64,
        "find_p50_ms": percentile(&lat, 0.5),
        "find_p99_ms": percentile(&lat, 0.99),
        "messages": args.messages,
        "delivered_ratio": received().min(ok as u64) as f64 / args.messages.max(1) as f64,
        "msgs_per_s": msgs_per_s,
        "message_errors": errors,
        "publishes": args.publishes,
        "publish_delivered_ratio": got() as f64 / want.max(1) as f64,
    }))
}
