//! `distribus-node` as real processes on loopback, driven by a test-side
//! host that joins their mesh through the library.
#![allow(unreachable_pub)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use distribus::{FindError, Host, HostConfig, Peer, PeerId, SendError};

const BIN: &str = env!("CARGO_BIN_EXE_distribus-node");
/// Upper bound of any single wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

/// Waits until `check` holds; fails the test after `WAIT`.
async fn wait_for<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if let Err(e) = distribus::testing::wait_until(what, WAIT, check).await {
        panic!("timed out: {e}");
    }
}

/// A `distribus-node` child process, killed when dropped (also when a test
/// fails).
struct Node {
    child: Child,
    id: PeerId,
    addrs: Vec<String>,
    metrics: Option<String>,
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// The address given with `--advertise`, if a test set one.
    advertised: String,
    /// The client gateway's URL, if it serves one.
    gateway: Option<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("DISTRIBUS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Starts a node on an ephemeral loopback port with short membership
/// timings; returns once it printed how to join it.
fn start(extra: &[&str]) -> Node {
    let mut args = vec![
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--heartbeat",
        "250ms",
        "--request-timeout",
        "3s",
    ];
    if !extra.contains(&"--lease") {
        args.extend(["--lease", "3s"]);
    }
    args.extend_from_slice(extra);
    let mut cmd = base_command(&args);
    // DISTRIBUS_TEST_NODE_LOG=debug shows the nodes' logs on stderr.
    if let Ok(level) = std::env::var("DISTRIBUS_TEST_NODE_LOG") {
        cmd.args(["--log-level", &level]).stderr(Stdio::inherit());
    }
    let mut child = cmd.spawn().expect("spawn distribus-node");
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    if let Some(err) = child.stderr.take() {
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
    }
    let mut node = Node {
        child,
        id: PeerId::random(),
        addrs: Vec::new(),
        metrics: None,
        stdout: rx,
        stderr,
        advertised: String::new(),
        gateway: None,
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match node.stdout.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => panic!(
                "node did not start; stderr:\n{}",
                node.stderr.lock().unwrap()
            ),
        };
        if let Some(id) = line.split("host id ").nth(1) {
            node.id = id.trim().parse().expect("host id");
        } else if let Some(a) = line.strip_prefix("listening on ") {
            node.addrs.push(a.to_string());
        } else if let Some(g) = line.strip_prefix("client gateway on ") {
            node.gateway = Some(g.to_string());
        } else if let Some(m) = line.strip_prefix("metrics on http://") {
            node.metrics = m.strip_suffix("/metrics").map(str::to_string);
        } else if line.starts_with("join with: ") {
            break;
        }
    }
    node
}

impl Node {
    fn addr(&self) -> &str {
        &self.addrs[0]
    }

    /// Sends `sig` (e.g. "TERM") to the process.
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node did not exit within {WAIT:?}");
    }

    /// Waits (bounded) for a stdout line containing `text`.
    fn wait_line(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(l) if l.contains(text) => return l,
                Ok(_) => {}
                Err(_) => panic!("no stdout line with {text:?}"),
            }
        }
    }

    /// GETs `/metrics` and returns the body.
    /// The JSON body of a 200 answer to a GET of `path`.
    fn json(&self, path: &str) -> serde_json::Value {
        let answer = self.get(path);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let (_, json) = answer.split_once("\r\n\r\n").expect("a body");
        serde_json::from_str(json).expect("JSON")
    }

    fn scrape(&self) -> String {
        let body = self.get("/metrics");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        body
    }

    /// The whole HTTP answer (status line, headers, body) to a GET of
    /// `path` on the metrics port.
    fn get(&self, path: &str) -> String {
        let addr = self.metrics.as_ref().expect("metrics address");
        let mut s = TcpStream::connect(addr).expect("connect to metrics");
        s.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read answer");
        body
    }
}

/// The entry of `host` in an `/admin/members` answer.
fn member_entry<'a>(members: &'a serde_json::Value, host: &PeerId) -> &'a serde_json::Value {
    let id = host.to_string();
    members["hosts"]
        .as_array()
        .expect("a host list")
        .iter()
        .find(|h| h["host"] == id.as_str())
        .unwrap_or_else(|| panic!("no {id} in {members}"))
}

/// The value of the first sample line starting with `series` (name plus
/// labels).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {series} in\n{metrics}"))
}

/// A test-side host on TCP loopback with the nodes' timings.
async fn test_host(lease: Duration) -> Host {
    let mut cfg = HostConfig::default();
    cfg.heartbeat_interval = Duration::from_millis(250);
    cfg.lease = lease;
    cfg.request_timeout = Duration::from_secs(3);
    cfg.join_timeout = Duration::from_secs(5);
    let host = Host::new(cfg).await.unwrap();
    host.listen("/ip4/127.0.0.1/tcp/0").await.unwrap();
    host
}

/// Sends a probe to an echo peer and expects it back.
async fn echo_round_trip(probe: &Peer, echo: &str, text: &str) {
    probe.send(echo, text).await.unwrap();
    let m = tokio::time::timeout(WAIT, probe.recv())
        .await
        .expect("echo reply in time")
        .expect("probe open");
    assert_eq!(m.from, echo);
    assert_eq!(m.decode::<String>().unwrap(), text);
}

async fn wait_members(host: &Host, n: usize) {
    wait_for(&format!("{n} other hosts"), || async {
        host.members().await.map(|m| m.len() >= n).unwrap_or(false)
    })
    .await;
}

async fn wait_found(host: &Host, id: &str) {
    wait_for(&format!("{id} in the directory"), || async {
        host.find(id).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_mesh_through_one_bootstrap() {
    let a = start(&["--echo-peer", "echo-a", "--subscribe", "news"]);
    let b = start(&[
        "--join",
        a.addr(),
        "--echo-peer",
        "echo-b",
        "--subscribe",
        "news",
    ]);
    // One node on a single worker thread: everything still works there.
    let c = start(&[
        "--join",
        a.addr(),
        "--echo-peer",
        "echo-c",
        "--subscribe",
        "news",
        "--threads",
        "1",
    ]);
    let t = test_host(Duration::from_secs(3)).await;
    t.join(a.addr()).await.unwrap();
    wait_members(&t, 3).await;
    let members = t.members().await.unwrap();
    for n in [&a, &b, &c] {
        assert!(members.iter().any(|m| m.host == n.id), "{} missing", n.id);
    }

    // Each node's peer answers across hosts; b and c were only ever
    // introduced to a.
    let probe = t.create("probe").unwrap();
    for echo in ["echo-a", "echo-b", "echo-c"] {
        wait_found(&t, echo).await;
        echo_round_trip(&probe, echo, &format!("ping {echo}")).await;
    }

    // A publish from the test host reaches the subscribers on all three.
    wait_for("subscriptions of the three nodes", || async {
        t.members()
            .await
            .map(|m| {
                m.iter()
                    .filter(|h| h.channels.iter().any(|c| c == "news"))
                    .count()
                    == 3
            })
            .unwrap_or(false)
    })
    .await;
    t.publish_json("news", &serde_json::json!({"n": 1}))
        .await
        .unwrap();
    for n in [&a, &b, &c] {
        assert_eq!(n.wait_line("#news"), r#"#news {"n":1}"#);
    }
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_the_same_identity_keeps_the_host_id() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    let key_arg = key.to_str().unwrap();
    let boot = start(&[]);
    let mut a = start(&[
        "--identity",
        key_arg,
        "--join",
        boot.addr(),
        "--echo-peer",
        "echo-a",
    ]);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first_id = a.id;
    let t = test_host(Duration::from_secs(3)).await;
    t.join(boot.addr()).await.unwrap();
    let probe = t.create("probe").unwrap();
    wait_found(&t, "echo-a").await;
    echo_round_trip(&probe, "echo-a", "before").await;

    a.signal("TERM");
    assert!(a.wait_exit().success());
    wait_for("echo-a withdrawn", || async {
        matches!(t.find("echo-a").await, Err(FindError::PeerNotFound(_)))
    })
    .await;
    // The epoch is kept beside the key. Set an hour ahead, as if this
    // incarnation's clock had been ahead and has stepped back since: the
    // next one still starts above it.
    let epoch_file = dir.path().join("node.key.epoch");
    let read_epoch = || -> u64 {
        std::fs::read_to_string(&epoch_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(read_epoch() <= now, "the epoch is the clock at start");
    let ahead = now + 3_600_000_000_000;
    std::fs::write(&epoch_file, format!("{ahead}\n")).unwrap();

    let a2 = start(&[
        "--identity",
        key_arg,
        "--join",
        boot.addr(),
        "--echo-peer",
        "echo-a",
    ]);
    assert_eq!(a2.id, first_id, "host id must survive a restart");
    assert!(
        read_epoch() > ahead,
        "the restart's epoch is above the last"
    );
    wait_for("restarted node back in the membership", || async {
        t.members()
            .await
            .map(|m| m.iter().any(|h| h.host == first_id))
            .unwrap_or(false)
    })
    .await;
    wait_found(&t, "echo-a").await;
    echo_round_trip(&probe, "echo-a", "after").await;
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_fails_fast_then_expires_then_recovers() {
    let a = start(&["--echo-peer", "echo-a"]);
    let b = start(&["--join", a.addr(), "--echo-peer", "echo-b"]);
    let mut c = start(&["--join", a.addr(), "--echo-peer", "echo-c"]);
    let t = test_host(Duration::from_secs(3)).await;
    t.join(a.addr()).await.unwrap();
    let probe = t.create("probe").unwrap();
    for echo in ["echo-b", "echo-c"] {
        wait_found(&t, echo).await;
        echo_round_trip(&probe, echo, "warm").await;
    }

    // Messages flow to c while it is killed.
    let sender = t.create("sender").unwrap();
    let flow = tokio::spawn(async move {
        let start = Instant::now();
        let mut outcome = None;
        for i in 0..10_000u32 {
            let sent = Instant::now();
            match sender.send("echo-c", &format!("m{i}")).await {
                Ok(()) => {}
                Err(e) => {
                    outcome = Some((e, sent.elapsed()));
                    break;
                }
            }
            while sender.try_recv().is_some() {}
            if start.elapsed() > WAIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        outcome
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.child.kill().unwrap();
    let status = c.wait_exit();
    assert!(!status.success());
    let (err, took) = flow
        .await
        .unwrap()
        .expect("a send to the killed node failed");
    assert!(
        matches!(
            err,
            SendError::PeerUnreachable { .. } | SendError::PeerNotFound(_)
        ),
        "got {err:?}"
    );
    assert!(took <= Duration::from_secs(4), "failed after {took:?}");

    // The others keep working.
    echo_round_trip(&probe, "echo-b", "still here").await;
    echo_round_trip(&probe, "echo-a", "still here").await;

    // After the lease, c's entries are gone from the directory.
    wait_for("echo-c to expire", || async {
        matches!(t.find("echo-c").await, Err(FindError::PeerNotFound(_)))
    })
    .await;

    // Restarted, its re-created peer is reachable again.
    let _c2 = start(&["--join", a.addr(), "--echo-peer", "echo-c"]);
    wait_found(&t, "echo-c").await;
    echo_round_trip(&probe, "echo-c", "back").await;
    drop(b);
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_and_others_forget_at_once() {
    // A lease far longer than the test: forgetting must come from the leave.
    let a = start(&["--lease", "60s"]);
    let mut b = start(&[
        "--lease",
        "60s",
        "--join",
        a.addr(),
        "--echo-peer",
        "echo-b",
        "--log-format",
        "json",
        "--log-level",
        "info",
    ]);
    let t = test_host(Duration::from_secs(60)).await;
    t.join(a.addr()).await.unwrap();
    wait_found(&t, "echo-b").await;

    let sent = Instant::now();
    b.signal("TERM");
    let status = b.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "stderr: {}",
        b.stderr.lock().unwrap()
    );
    assert!(sent.elapsed() < Duration::from_secs(10));
    // Structured logs: every stderr line is a JSON object; one says why the
    // node left.
    std::thread::sleep(Duration::from_millis(100));
    let logs = b.stderr.lock().unwrap().clone();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["message"] == "leaving the network"
                && v["fields"]["signal"] == "SIGTERM"),
        "{logs}"
    );
    wait_for("echo-b forgotten", || async {
        matches!(t.find("echo-b").await, Err(FindError::PeerNotFound(_)))
    })
    .await;
    assert!(
        sent.elapsed() < Duration::from_secs(15),
        "took {:?}",
        sent.elapsed()
    );
    assert!(!t.members().await.unwrap().iter().any(|m| m.host == b.id));
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answer_and_move_with_traffic() {
    let a = start(&["--metrics", "127.0.0.1:0", "--echo-peer", "echo-a"]);
    let before = a.scrape();
    assert_eq!(sample(&before, "distribus_local_peers"), 1.0);
    assert_eq!(sample(&before, "distribus_relay_held_bytes"), 0.0);
    assert!(before.contains("distribus_lookup_duration_seconds_bucket"));
    assert!(before.contains("distribus_messages_failed_total{reason=\"timeout\"}"));
    let received_before = sample(&before, "distribus_messages_received_total");

    let t = test_host(Duration::from_secs(3)).await;
    t.join(a.addr()).await.unwrap();
    let probe = t.create("probe").unwrap();
    wait_found(&t, "echo-a").await;
    // Lookups the node made before the round trips (joining can make one:
    // an ownership check of its echo peer's id) are not the replies'.
    let lookups_before = sample(&a.scrape(), "distribus_lookup_duration_seconds_count");
    for i in 0..5 {
        echo_round_trip(&probe, "echo-a", &format!("m{i}")).await;
    }
    // The node counts a reply once its ack is back, just after the probe
    // got it: scrape until the counters caught up (bounded).
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let m = a.scrape();
        let sent = sample(&m, "distribus_messages_sent_total{path=\"remote\"}");
        if sent >= 5.0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // An echo peer answers a request with a reply, which the node counts.
    let r = probe
        .request("echo-a", "ping", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.decode::<String>().unwrap(), "ping");
    assert_eq!((t.stats().requests, t.stats().replies), (1, 1));
    assert_eq!(
        sample(&after, "distribus_channel_messages_missed_total"),
        0.0
    );
    assert_eq!(
        sample(&after, "distribus_channel_messages_delivered_total"),
        0.0
    );
    assert_eq!(
        sample(&after, "distribus_replies_total{outcome=\"unmatched\"}"),
        0.0
    );
    assert!(sample(&after, "distribus_messages_received_total") >= received_before + 5.0);
    assert!(sample(&after, "distribus_messages_sent_total{path=\"remote\"}") >= 5.0);
    assert!(sample(&after, "distribus_hosts") >= 2.0);
    assert!(sample(&after, "distribus_connected_hosts") >= 1.0);
    // The probe's messages came in and the echoes went out over TCP.
    for bytes in [
        "distribus_bytes_sent_total",
        "distribus_bytes_received_total",
    ] {
        assert!(sample(&after, bytes) > sample(&before, bytes), "{bytes}");
    }
    // Exported (`sample` fails on a missing series), under the 20 s lease.
    assert!(sample(&after, "distribus_longest_silence_milliseconds") < 20_000.0);
    // The node answered from the location the probe's messages carried:
    // no lookup was needed, and the histogram says so.
    assert_eq!(
        sample(&after, "distribus_lookup_duration_seconds_count"),
        lookups_before
    );
    // A broadcast reaches the node's echo peer, and the node counts it.
    let report = probe.broadcast_json(&"to all").await.unwrap();
    assert_eq!((report.hosts, report.peers, report.missed), (2, 2, 0));
    let m = a.scrape();
    assert_eq!(
        sample(
            &m,
            "distribus_broadcast_messages_total{outcome=\"delivered\"}"
        ),
        1.0
    );
    // Exported before any use (a scrape that lacks one fails `sample`).
    for exported in [
        "distribus_group_sends_total",
        "distribus_queue_messages_total{outcome=\"delivered\"}",
        "distribus_queue_messages_total{outcome=\"unavailable\"}",
    ] {
        assert_eq!(sample(&m, exported), 0.0, "{exported}");
    }

    // Beside the metrics: health, members and peers.
    let health = a.get("/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let members = a.json("/admin/members");
    assert_eq!(members["count"], 1, "the other live host: {members}");
    let t_entry = member_entry(&members, &t.id());
    assert_eq!(t_entry["connected"], true, "{members}");
    let peers = a.json("/admin/peers");
    assert_eq!(peers["count"], 1, "{peers}");
    assert_eq!(peers["peers"], serde_json::json!(["echo-a"]), "{peers}");
    let none = a.json("/admin/peers?limit=0");
    assert_eq!(none["peers"], serde_json::json!([]), "{none}");
    assert!(a.get("/admin/peers?limit=x").starts_with("HTTP/1.1 400"));
    t.close().await;
}

/// Runs the binary to completion (bounded) and returns exit code and stderr.
/// Starts a node on an ephemeral port with `flag FILE`, to the end (a
/// refused file ends it at once): its exit code and stderr.
fn start_with_file(flag: &str, file: &std::path::Path) -> (Option<i32>, String) {
    let file = file.to_str().expect("a UTF-8 path");
    let (code, _, err) = run_to_end(&["--listen", "/ip4/127.0.0.1/tcp/0", flag, file], &[]);
    (code, err)
}

fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = base_command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + WAIT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("distribus-node {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(code: Option<i32>, stderr: &str, needle: &str) {
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("distribus-node: error: "), "{stderr}");
    assert!(stderr.contains(needle), "{stderr} lacks {needle:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_flags_and_identity_files_fail_cleanly() {
    let (code, _, err) = run_to_end(&["--no-such-flag"], &[]);
    assert_one_line_error(code, &err, "--no-such-flag");
    let (code, _, err) = run_to_end(&["--lease", "soon"], &[]);
    assert_one_line_error(code, &err, "soon");

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("open.key");
    std::fs::write(&key, b"whatever").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let listen = ["--listen", "/ip4/127.0.0.1/tcp/0"];
    let key_s = key.to_str().unwrap();
    let (code, _, err) = run_to_end(&[listen[0], listen[1], "--identity", key_s], &[]);
    assert_one_line_error(code, &err, "chmod 600");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = run_to_end(&[listen[0], listen[1], "--identity", key_s], &[]);
    assert_one_line_error(code, &err, "does not hold a distribus host key");
    let missing_dir = dir.path().join("no/such/dir/node.key");
    let (code, _, err) = run_to_end(
        &[
            listen[0],
            listen[1],
            "--identity",
            missing_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert_one_line_error(code, &err, "cannot create identity file");

    // A busy port is an unusable listen address.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}");
    let (code, _, err) = run_to_end(&["--listen", &addr], &[]);
    assert_one_line_error(code, &err, "cannot listen on");

    let bad_config = dir.path().join("bad.toml");
    std::fs::write(&bad_config, "lisen = [\"/ip4/127.0.0.1/tcp/0\"]\n").unwrap();
    let (code, _, err) = run_to_end(&["--config", bad_config.to_str().unwrap()], &[]);
    assert_one_line_error(code, &err, "lisen");
    // A bad value from the environment names its setting.
    let (code, _, err) = run_to_end(&["config"], &[("DISTRIBUS_MAX_CONNECTIONS", "many")]);
    assert_one_line_error(code, &err, "MAX_CONNECTIONS");
    let missing = dir.path().join("missing.toml");
    let (code, _, err) = run_to_end(&["config", "--config", missing.to_str().unwrap()], &[]);
    assert_one_line_error(code, &err, "cannot read config file");
}

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "network_id = \"from-file\"\nlease = \"7s\"\nmax_connections = 11\n\
         echo_peer = [\"file-echo\"]\nheartbeat = \"2s\"\n",
    )
    .unwrap();
    let (code, out, err) = run_to_end(
        &[
            "config",
            "--config",
            file.to_str().unwrap(),
            "--lease",
            "9s",
        ],
        &[
            ("DISTRIBUS_LEASE", "8s"),
            ("DISTRIBUS_NETWORK_ID", "from-env"),
            ("DISTRIBUS_ECHO_PEER", "env-a,env-b"),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{out}"))
            .to_string()
    };
    assert_eq!(line("lease"), "lease = \"9s\""); // flag
    assert_eq!(line("network_id"), "network_id = \"from-env\""); // env
    assert_eq!(line("echo_peer"), "echo_peer = [\"env-a\", \"env-b\"]"); // env list
    assert_eq!(line("max_connections"), "max_connections = 11"); // file
    assert_eq!(line("heartbeat"), "heartbeat = \"2s\""); // file
    assert_eq!(line("request_timeout"), "request_timeout = \"10s\""); // default
    assert_eq!(line("find_cache_ttl"), "find_cache_ttl = \"1s\""); // default
    assert!(out.contains("/ip4/127.0.0.1/tcp/7400"), "{out}"); // default listen
                                                               // The printed settings are a valid config file.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &out).unwrap();
    let (code, out2, err) = run_to_end(&["config", "--config", again.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, out2);

    // The README's example config file is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/example.toml");
    let (code, out, err) = run_to_end(&["config", "--config", example], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("network_id = \"production\""), "{out}");
}

/// The reconnect options, replication and inbox size can be set by flag,
/// environment and file like every other option, reach the host's
/// configuration, and are checked.
#[test]
fn reconnect_replication_inbox_and_thread_options_are_settable_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "reconnect_timeout = \"1m\"\ninbox_capacity = 64\n").unwrap();
    let (code, out, err) = run_to_end(
        &[
            "config",
            "--config",
            file.to_str().unwrap(),
            "--reconnect-delay",
            "250ms",
            "--reconnect-decay",
            "1.5",
        ],
        &[("DISTRIBUS_REPLICATION", "5"), ("DISTRIBUS_THREADS", "2")],
    );
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "reconnect_delay = \"250ms\"",
        "reconnect_decay = 1.5",
        "reconnect_timeout = \"1m\"",
        "replication = 5",
        "inbox_capacity = 64",
        "threads = 2",
    ] {
        assert!(out.lines().any(|l| l == line), "no `{line}` in\n{out}");
    }
    let (code, _, err) = run_to_end(&["config", "--reconnect-decay", "0.5"], &[]);
    assert_one_line_error(code, &err, "reconnect_decay must be at least 1");
    let (code, _, err) = run_to_end(&["config", "--replication", "0"], &[]);
    assert_one_line_error(code, &err, "replication must be at least 1");
    for bad in ["0", "1025"] {
        let (code, _, err) = run_to_end(&["config", "--threads", bad], &[]);
        assert_one_line_error(code, &err, "threads must be between 1 and 1024");
    }
}

#[test]
fn demo_runs_a_three_node_network_and_exits_cleanly() {
    let (code, out, err) = run_to_end(&["demo"], &[]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for needle in [
        "bob <- alice",
        "carol <- bob",
        "alice <- carol",
        "came back from echo-gamma",
        "#news on alpha",
        "#news on gamma",
        "was not found",
        "demo done",
    ] {
        assert!(out.contains(needle), "{needle:?} missing in\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    // b's graceful leave waits for a's answer; a is stopped (SIGSTOP), so
    // the leave hangs until the second signal ends b at once.
    let a = start(&[]);
    let mut b = start(&["--join", a.addr(), "--shutdown-timeout", "30s"]);
    // Let the connections settle (a may dial b back right after the join).
    std::thread::sleep(Duration::from_millis(500));
    a.signal("STOP");
    b.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    if let Some(st) = b.child.try_wait().unwrap() {
        panic!(
            "b should still be leaving, exited {st:?}: {}",
            b.stderr.lock().unwrap()
        );
    }
    b.signal("INT");
    let status = b.wait_exit();
    a.signal("CONT");
    assert_eq!(
        status.code(),
        Some(130),
        "stderr: {}",
        b.stderr.lock().unwrap()
    );
}

/// `keygen` writes a key file of mode 0600 (and will not overwrite one);
/// a node refuses a key file others can read; two nodes with the key mesh,
/// a host with the key joins them and reaches an echo peer, and a host
/// without it cannot join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_a_network_key_admit_only_hosts_that_hold_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("swarm.key");
    let key_s = key.to_str().unwrap();
    let (code, out, err) = run_to_end(&["keygen", key_s], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("wrote network key"), "{out}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (code, _, err) = run_to_end(&["keygen", key_s], &[]);
    assert_one_line_error(code, &err, "exists");

    let open = dir.path().join("open.key");
    std::fs::copy(&key, &open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = start_with_file("--network-key", &open);
    assert_one_line_error(code, &err, "chmod 600");

    let a = start(&["--network-key", key_s]);
    let _b = start(&[
        "--network-key",
        key_s,
        "--join",
        a.addr(),
        "--echo-peer",
        "echo-b",
    ]);
    let text = std::fs::read_to_string(&key).unwrap();
    let mut cfg = HostConfig::default();
    cfg.lease = Duration::from_secs(3);
    cfg.heartbeat_interval = Duration::from_millis(250);
    cfg.join_timeout = Duration::from_secs(3);
    cfg.network_key = Some(distribus::NetworkKey::from_key_file(&text).unwrap());
    let t = Host::new(cfg.clone()).await.unwrap();
    t.listen("/ip4/127.0.0.1/tcp/0").await.unwrap();
    t.join(a.addr()).await.expect("a host with the key joins");
    let probe = t.create("probe").unwrap();
    wait_found(&t, "echo-b").await;
    echo_round_trip(&probe, "echo-b", "closed").await;

    cfg.network_key = None;
    let stranger = Host::new(cfg).await.unwrap();
    assert!(
        stranger.join(a.addr()).await.is_err(),
        "a host without the key joined"
    );
    t.close().await;
}

/// `--allow-hosts FILE`: a host not on the list cannot join the node; once
/// the file lists it and the node gets SIGHUP, it can. A bad file at start
/// is a one-line error naming the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_is_read_at_start_and_again_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("allow");
    std::fs::write(&list, "not-a-host-id\n").unwrap();
    let (code, err) = start_with_file("--allow-hosts", &list);
    assert_one_line_error(code, &err, "line 1");

    let t = test_host(Duration::from_secs(3)).await;
    std::fs::write(&list, "# nobody yet\n").unwrap();
    let a = start(&["--allow-hosts", list.to_str().unwrap()]);
    match t.join(a.addr()).await {
        Err(distribus::JoinError::Join { source, .. }) => {
            assert!(source.to_string().contains("allow-list"), "{source}")
        }
        other => panic!("joined a node whose allow-list lacks it: {other:?}"),
    }
    std::fs::write(&list, format!("{}  # the test host\n", t.id())).unwrap();
    a.signal("HUP");
    wait_for("joined after SIGHUP", || async {
        t.join(a.addr()).await.is_ok()
    })
    .await;
    wait_members(&t, 1).await;
    t.close().await;
}

/// A loopback TCP forwarder: accepts on an ephemeral port and pipes each
/// connection to `target` (set once known); counts the connections.
async fn forwarder(
    target: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let Some(to) = target.get().copied() else {
                continue;
            };
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (port, count)
}

/// The TCP port of a `/ip4/…/tcp/N/…` multiaddr.
fn tcp_port(addr: &str) -> u16 {
    let mut parts = addr.split('/');
    parts.find(|p| *p == "tcp");
    parts
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a tcp port")
}

/// `/readyz` is 503 until a node has joined and its membership converged,
/// 200 after; a node asked to join nobody is ready alone. `--advertise`
/// puts the given address in the node's record instead of its listen
/// address, and other hosts reach it there (through a forwarded port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_membership_and_others_dial_the_advertised_address() {
    let status = |n: &Node, path: &str| n.get(path)[9..12].to_string();
    let a = start(&["--metrics", "127.0.0.1:0"]);
    assert_eq!(
        status(&a, "/readyz"),
        "200",
        "alone and asked to join nobody"
    );
    // Joining a host that never answers: not ready, and the body says so.
    let lonely = start(&["--metrics", "127.0.0.1:0", "--join", "/ip4/127.0.0.1/tcp/9"]);
    let answer = lonely.get("/readyz");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"members\":0"), "{answer}");

    let target = Arc::new(std::sync::OnceLock::new());
    let (port, forwarded) = forwarder(target.clone()).await;
    let advertised = format!("/ip4/127.0.0.1/tcp/{port}");
    let b = start(&[
        "--metrics",
        "127.0.0.1:0",
        "--join",
        a.addr(),
        "--advertise",
        &advertised,
        "--echo-peer",
        "echo-b",
    ]);
    target
        .set(format!("127.0.0.1:{}", tcp_port(b.addr())).parse().unwrap())
        .unwrap();
    wait_for("b ready", || async { status(&b, "/readyz") == "200" }).await;
    wait_for("a ready", || async { status(&a, "/readyz") == "200" }).await;
    let answer = b.get("/readyz");
    assert!(answer.contains("\"members\":1"), "{answer}");
    assert!(answer.contains("\"converged\":true"), "{answer}");

    // A's view of B carries the advertised address only.
    let members = a.json("/admin/members");
    let entry = member_entry(&members, &b.id);
    assert_eq!(entry["addrs"], serde_json::json!([advertised]), "{members}");

    // A host that knows only A reaches B's echo peer: it dials the
    // advertised address, through the forwarder.
    let t = test_host(Duration::from_secs(3)).await;
    t.join(a.addr()).await.unwrap();
    let probe = t.create("probe").unwrap();
    wait_found(&t, "echo-b").await;
    echo_round_trip(&probe, "echo-b", "through the advertised address").await;
    assert!(
        forwarded.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "nobody dialled the advertised address"
    );
    t.close().await;
}

/// A loopback TCP forwarder to `target` that can freeze: while frozen it
/// drops every byte either way (connections stay open, as through a
/// partition that drops packets silently; what was lost breaks them once
/// bytes flow again).
async fn freezable_forwarder(
    target: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
    frozen: Arc<std::sync::atomic::AtomicBool>,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Some(to) = target.get().copied() else {
                continue;
            };
            let frozen = frozen.clone();
            tokio::spawn(async move {
                let Ok(out) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = out.into_split();
                let pipe = |mut r: tokio::net::tcp::OwnedReadHalf,
                            mut w: tokio::net::tcp::OwnedWriteHalf,
                            frozen: Arc<std::sync::atomic::AtomicBool>| async move {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if frozen.load(std::sync::atomic::Ordering::Relaxed) {
                            continue;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let up = tokio::spawn(pipe(ri, wo, frozen.clone()));
                pipe(ro, wi, frozen).await;
                up.abort();
            });
        }
    });
    port
}

/// Three nodes; the two that joined the first lose every link for two
/// leases (every byte dropped, connections left open), and the first dies
/// meanwhile. Each of the two lapsed the other, and neither had joined the
/// other: once the links carry again they must still find each other.
/// Each lapsed host is redialled, and one whose connection survived gets a
/// join on it; before, a host never talked to a lapsed one again, and only
/// the dead seed would have been redialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_cut_off_from_each_other_merge_again_when_the_links_come_back() {
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut nodes: Vec<Node> = Vec::new();
    for _ in 0..3 {
        let target = Arc::new(std::sync::OnceLock::new());
        let port = freezable_forwarder(target.clone(), frozen.clone()).await;
        let advertised = format!("/ip4/127.0.0.1/tcp/{port}");
        let mut args = vec!["--metrics", "127.0.0.1:0", "--advertise", &advertised];
        let seed = nodes.first().map(|n: &Node| n.advertised.clone());
        if let Some(seed) = seed.as_deref() {
            args.extend(["--join", seed]);
        }
        let mut node = start(&args);
        target
            .set(
                format!("127.0.0.1:{}", tcp_port(node.addr()))
                    .parse()
                    .unwrap(),
            )
            .unwrap();
        node.advertised = advertised;
        nodes.push(node);
    }
    let count = |n: &Node| n.json("/admin/members")["count"].as_i64().unwrap_or(-1);
    wait_for("one membership", || async {
        nodes.iter().all(|n| count(n) == 2)
    })
    .await;

    frozen.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(nodes.remove(0)); // killed
    wait_for("both alone", || async {
        nodes.iter().all(|n| count(n) == 0)
    })
    .await;
    frozen.store(false, std::sync::atomic::Ordering::Relaxed);
    wait_for("the two together again", || async {
        nodes.iter().all(|n| count(n) == 1)
    })
    .await;
}

/// Lines a child writes to a pipe, read on a thread.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn the_client_commands_send_publish_and_listen_through_the_gateway() {
    let a = start(&["--gateway", "127.0.0.1:0"]);
    let b = start(&["--gateway", "127.0.0.1:0", "--join", a.addr()]);
    let (ga, gb) = (a.gateway.clone().unwrap(), b.gateway.clone().unwrap());

    // A listener on node b: a peer of its own and a channel.
    let mut sub = base_command(&["sub", "news", "--peer", "inbox", "--gateway", &gb])
        .spawn()
        .expect("spawn sub");
    let out = lines_of(sub.stdout.take().unwrap());
    let err = lines_of(sub.stderr.take().unwrap());
    let ready = err.recv_timeout(WAIT).expect("sub is listening");
    assert!(ready.contains("listening"), "{ready}");

    // Node a finds the peer on b, then a one-shot send reaches it.
    cli_finds(&ga, "inbox", &b.id);
    let (code, _, stderr) = run_to_end(&["send", "inbox", "hello there", "--gateway", &ga], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let line = out.recv_timeout(WAIT).expect("the message");
    assert!(
        line.starts_with("cli-") && line.ends_with(": hello there"),
        "{line}"
    );

    // A publish on a reaches it (repeated until b's subscription is known).
    let mut got = None;
    for _ in 0..40 {
        let (code, _, stderr) = run_to_end(&["pub", "news", r#"{"x":1}"#, "--gateway", &ga], &[]);
        assert_eq!(code, Some(0), "{stderr}");
        if let Ok(l) = out.recv_timeout(Duration::from_millis(500)) {
            got = Some(l);
            break;
        }
    }
    assert_eq!(got.as_deref(), Some(r#"#news {"x":1}"#));

    // A member of a queue group gets the publishes of its channel (once
    // b's record lists the group, the publish on a is handed to it).
    let mut worker = base_command(&["sub", "jobs", "--queue", "workers", "--gateway", &gb])
        .spawn()
        .expect("spawn sub --queue");
    let jobs = lines_of(worker.stdout.take().unwrap());
    let werr = lines_of(worker.stderr.take().unwrap());
    assert!(werr
        .recv_timeout(WAIT)
        .expect("listening")
        .contains("listening"));
    let mut got = None;
    for n in 0..40 {
        let (code, _, stderr) = run_to_end(&["pub", "jobs", &n.to_string(), "--gateway", &ga], &[]);
        assert_eq!(code, Some(0), "{stderr}");
        if let Ok(l) = jobs.recv_timeout(Duration::from_millis(500)) {
            got = Some((n, l));
            break;
        }
    }
    let (n, line) = got.expect("the queue member got a publish");
    assert_eq!(line, format!("#jobs {n}"));
    let _ = worker.kill();
    let _ = worker.wait();

    // A typed error is one line and a failing exit code.
    let (code, _, stderr) = run_to_end(&["send", "nobody", "hi", "--gateway", &ga], &[]);
    assert_one_line_error(code, &stderr, "not_found");
    let (code, _, stderr) = run_to_end(&["members", "--gateway", "ws://127.0.0.1:1"], &[]);
    assert_one_line_error(code, &stderr, "cannot connect");

    // The listener leaves on SIGINT with 0, and its peer goes with it.
    let ok = Command::new("kill")
        .args(["-INT", &sub.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = sub.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "sub did not exit on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, _, stderr) = run_to_end(&["find", "inbox", "--gateway", &ga], &[]);
        if code != Some(0) && stderr.contains("not_found") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inbox still found after sub left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the `find` command through `gateway` places `id` on `host`.
fn cli_finds(gateway: &str, id: &str, host: &PeerId) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, stdout, _) = run_to_end(&["find", id, "--gateway", gateway], &[]);
        if code == Some(0) && stdout.starts_with(&host.to_string()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never found through {gateway}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_request_command_gets_the_answer_of_a_reply_command_on_another_node() {
    let a = start(&["--gateway", "127.0.0.1:0"]);
    let b = start(&["--gateway", "127.0.0.1:0", "--join", a.addr()]);
    let (ga, gb) = (a.gateway.clone().unwrap(), b.gateway.clone().unwrap());
    // Two answering peers on b: one with a fixed answer, one that echoes.
    let mut repliers = Vec::new();
    let mut seen = Vec::new();
    for args in [&["reply", "time", "noon"][..], &["reply", "echo"][..]] {
        let mut args = args.to_vec();
        args.extend(["--gateway", &gb]);
        let mut r = base_command(&args).spawn().expect("spawn reply");
        seen.push(lines_of(r.stdout.take().unwrap()));
        let err = lines_of(r.stderr.take().unwrap());
        let ready = err.recv_timeout(WAIT).expect("reply is answering");
        assert!(ready.contains("answering"), "{ready}");
        repliers.push(r);
    }
    cli_finds(&ga, "time", &b.id);
    cli_finds(&ga, "echo", &b.id);

    let (code, stdout, stderr) = run_to_end(
        &[
            "request",
            "time",
            "what time is it?",
            "--from",
            "asker",
            "--gateway",
            &ga,
        ],
        &[],
    );
    assert_eq!((code, stdout.trim()), (Some(0), "noon"), "{stderr}");
    let line = seen[0].recv_timeout(WAIT).expect("the request, printed");
    assert_eq!(line, "asker: what time is it?");
    let (code, stdout, stderr) = run_to_end(
        &["request", "echo", r#"{"n":[1,2]}"#, "--gateway", &ga],
        &[],
    );
    assert_eq!(
        (code, stdout.trim()),
        (Some(0), r#"{"n":[1,2]}"#),
        "{stderr}"
    );

    // No such peer: a one-line typed error.
    let (code, _, stderr) = run_to_end(&["request", "nobody", "hi", "--gateway", &ga], &[]);
    assert_one_line_error(code, &stderr, "not_found");

    // A broadcast reaches both answering peers on b, and says so.
    let (code, stdout, stderr) = run_to_end(
        &["broadcast", "all hands", "--from", "boss", "--gateway", &ga],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert_eq!(
        (&report["hosts"], &report["peers"]),
        (&serde_json::json!(2), &serde_json::json!(3))
    );
    for s in &seen {
        // (after the requests each printed)
        let printed = (0..3).find_map(|_| {
            let line = s.recv_timeout(WAIT).expect("the broadcast, printed");
            (line == "boss: all hands").then_some(line)
        });
        assert!(printed.is_some(), "a replier did not print the broadcast");
    }
    // A group send reaches the one whose id matches.
    let (code, stdout, stderr) = run_to_end(&["send-group", "ti*", "x", "--gateway", &ga], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert_eq!(
        report["peers"],
        serde_json::json!(0),
        "`ti*` is a plain token"
    );
    let (code, stdout, stderr) = run_to_end(
        &[
            "send-group",
            "time",
            "tick",
            "--from",
            "boss",
            "--gateway",
            &ga,
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert_eq!(report["peers"], serde_json::json!(1), "{report}");
    assert_eq!(
        seen[0].recv_timeout(WAIT).expect("the group message"),
        "boss: tick"
    );
    let (code, _, stderr) = run_to_end(&["send-group", "a..b", "x", "--gateway", &ga], &[]);
    assert_one_line_error(code, &stderr, "invalid_pattern");
    for mut r in repliers {
        let _ = r.kill();
        let _ = r.wait();
    }
}
