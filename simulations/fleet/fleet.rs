//! The fleet's processes: `distribus-node`s and load hosts, each started
//! in its namespace with `ip netns exec` (which execs, so the child's pid is
//! the process's own: `kill -9` and SIGSTOP reach it directly).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::net::Net;

/// The timings every process of the fleet runs with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Lease.
    pub lease: Duration,
    /// Deadline of a send or lookup.
    pub request_timeout: Duration,
}

/// TCP port every node listens on (in its own namespace).
const PORT: u16 = 7400;
/// Port of each node's metrics and admin endpoints.
const METRICS_PORT: u16 = 9400;

/// How a process is run.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// The node binary.
    pub node_bin: PathBuf,
    /// This binary (for loads).
    pub fleet_bin: PathBuf,
    /// Directory of keys, logs and records.
    pub dir: PathBuf,
    /// The fleet's timings.
    pub timings: Timings,
    /// Nodes in the fleet (slots 0..nodes; loads follow).
    pub nodes: usize,
    /// Loads in the fleet.
    pub loads: usize,
    /// Messages per second of each load.
    pub rate: u32,
}

/// One running process.
pub(crate) struct Proc {
    /// Its slot (namespace).
    pub slot: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: mpsc::Receiver<String>,
}

impl Proc {
    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (KILL, STOP, CONT, TERM).
    pub(crate) fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    /// Whether it has exited.
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (bounded) for it to exit; kills it after `wait`.
    pub(crate) fn wait_exit(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while !self.exited() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Writes a command line to its stdin (loads).
    pub(crate) fn tell(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// Waits (bounded) for a line of its stdout starting with `prefix`.
    pub(crate) fn wait_line(&self, prefix: &str, wait: Duration) -> Result<String, String> {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => {}
                Err(_) => return Err(format!("slot {}: no `{prefix}` line", self.slot)),
            }
        }
    }

    /// Resident memory in bytes (0 once gone).
    pub(crate) fn rss(&self) -> u64 {
        rss_of(self.pid())
    }
}

/// Resident memory of process `pid` in bytes (0 once gone).
pub(crate) fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
    status
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Launch {
    /// The multiaddr of node `i`.
    pub(crate) fn node_addr(i: usize) -> String {
        format!("/ip4/{}/tcp/{PORT}", Net::ip(i))
    }

    fn log(&self, name: &str) -> Result<std::fs::File, String> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .map_err(|e| format!("log {name}: {e}"))
    }

    fn spawn(&self, slot: usize, mut cmd: Command, log: &str) -> Result<Proc, String> {
        let err = self.log(log)?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start slot {slot}: {e}"))?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Proc {
            slot,
            child,
            stdin,
            stdout: rx,
        })
    }

    /// Hosts to join: for node `i` above 1, nodes `i - 1` and `i / 2` (so
    /// that a large fleet's joins spread over many nodes, not two); for the
    /// others (nodes 0 and 1, loads), the first two nodes other than
    /// themselves.
    fn seeds(&self, slot: usize) -> Vec<String> {
        let picks: Vec<usize> = if (2..self.nodes).contains(&slot) {
            vec![slot - 1, slot / 2]
        } else {
            (0..self.nodes).filter(|&i| i != slot).take(2).collect()
        };
        picks.into_iter().map(Launch::node_addr).collect()
    }

    /// Starts node `i`; `clock_back` runs it with its wall clock an hour
    /// behind (libfaketime), as after a clock step.
    pub(crate) fn node(&self, i: usize, clock_back: bool) -> Result<Proc, String> {
        let t = self.timings;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &Net::ns(i)]);
        if clock_back {
            cmd.args(["env", "FAKETIME=-1h", "FAKETIME_DONT_FAKE_MONOTONIC=1"]);
            cmd.arg(format!("LD_PRELOAD={}", faketime_lib()?));
        }
        cmd.arg(&self.node_bin)
            .args(["--listen", &Launch::node_addr(i)])
            .args(["--metrics", &format!("{}:{METRICS_PORT}", Net::ip(i))])
            .args(["--identity", &path(&self.dir.join(format!("node{i}.key")))])
            .args(["--heartbeat", &human(t.heartbeat)])
            .args(["--lease", &human(t.lease)])
            .args(["--request-timeout", &human(t.request_timeout)])
            .args(["--shutdown-timeout", "3s"])
            // DISTRIBUS_FLEET_LOG=debug: more detail in every node's log.
            .args([
                "--log-level",
                &std::env::var("DISTRIBUS_FLEET_LOG").unwrap_or_else(|_| "info".into()),
            ]);
        for s in self.seeds(i) {
            cmd.args(["--join", &s]);
        }
        let p = self.spawn(i, cmd, &format!("node{i}"))?;
        // It prints this once its joins answered or timed out.
        p.wait_line("join with", Duration::from_secs(60))?;
        Ok(p)
    }

    /// Starts the delayer of slot `slot` (see [`crate::delay`]).
    pub(crate) fn delayer(&self, slot: usize, delay: Duration) -> Result<Proc, String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &Net::ns(slot)])
            .arg(&self.fleet_bin)
            .args(["delay", "--ms", &delay.as_millis().to_string()]);
        let p = self.spawn(slot, cmd, &format!("delay{slot}"))?;
        p.wait_line("delaying", Duration::from_secs(10))?;
        Ok(p)
    }

    /// Starts load `j` (slot `nodes + j`); it prints `ready` once its peers
    /// are registered and every other load's peers findable.
    pub(crate) fn load(&self, j: usize, incarnation: u64) -> Result<Proc, String> {
        let t = self.timings;
        let slot = self.nodes + j;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &Net::ns(slot)])
            .arg(&self.fleet_bin)
            .arg("load")
            .args(["--index", &j.to_string()])
            .args(["--loads", &self.loads.to_string()])
            .args(["--incarnation", &incarnation.to_string()])
            .args(["--rate", &self.rate.to_string()])
            .args(["--listen", &format!("/ip4/{}/tcp/{PORT}", Net::ip(slot))])
            .args(["--identity", &path(&self.dir.join(format!("load{j}.key")))])
            .args(["--out", &path(&self.dir.join(format!("load{j}.rec")))])
            .args(["--heartbeat", &human(t.heartbeat)])
            .args(["--lease", &human(t.lease)])
            .args(["--request-timeout", &human(t.request_timeout)]);
        for s in self.seeds(usize::MAX) {
            cmd.args(["--join", &s]);
        }
        self.spawn(slot, cmd, &format!("load{j}"))
    }
}

/// Where Debian's libfaketime is.
fn faketime_lib() -> Result<String, String> {
    for p in [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ] {
        if Path::new(p).exists() {
            return Ok(p.to_string());
        }
    }
    Err("the clock-step scenario needs libfaketime (apt-get install faketime)".into())
}

fn human(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// GET `path` of node `i`'s admin port: status code and body.
pub(crate) fn get(i: usize, path: &str) -> Option<(u16, String)> {
    http_get(&format!("{}:{METRICS_PORT}", Net::ip(i)), path)
}

/// GET `path` of the HTTP server at `addr` (`ip:port`): status code and body.
pub(crate) fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let sock = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let code = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}
