//! A discrete-event model of a network of hosts that runs the protocol
//! core itself, not a second implementation of it: each host is the
//! core's [`crate::core::members`], [`crate::core::neighbours`],
//! [`crate::core::registration`] and [`crate::core::lookup`], driven by
//! simulated time, a seeded random generator, a latency and loss model for
//! every message, and a CPU cost model, so thousands of hosts run in one
//! process.
//!
//! What it models: membership, the directory's registrations and finds.
//! Hosts join (one at a time, each a random earlier host, as
//! `distribus-sim` does, or in waves), their
//! records spread (by gossip below [`ModelConfig::relay_above`] hosts, by
//! the digests' anti-entropy above, as in a real host), and heartbeat
//! digests keep the leases. Links are opened as a real host opens them: by
//! any request below `relay_above`; above, by the core's choice of overlay
//! neighbours to dial ([`crate::core::neighbours`]) and by requests to
//! neighbours, while a request to any other host goes through the
//! overlay's next hop (one more hop). Links are not closed (a real host's
//! link budget of 256 rarely binds below 1,024 hosts). Once the
//! network has idled, every host creates its share of the peers and the
//! core's registration sends them to their holders, whose stores apply
//! them; then finds run the core's lookup against those stores.
//!
//! **CPU.** Each host handles one event at a time; an event costs
//! [`CpuCost::per_message`] for each message it reads or sends,
//! [`CpuCost::per_entry`] for each digest entry or record it reads or
//! writes, and [`CpuCost::per_check`] for each record signature it checks
//! (the core counts them), and [`CpuCost::per_link`] on both sides of each
//! link it opens. With [`ModelConfig::cores`] unset every host has
//! its own CPU (a fleet); set, all hosts share that many (the in-process
//! simulator, for validation against it). A host whose CPU is busy handles
//! its events late, and a heartbeat that comes late is excused by the core
//! as on a real host.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, BinaryHeap, HashMap},
    time::{Duration, Instant},
};

use libp2p::{identity::Keypair, PeerId};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::{
    core::{
        lookup::{LookupStep, LookupView, Lookups},
        members::{Asked, Effect, Links, Members, Settings},
        neighbours::Neighbours,
        registration::{Change, DirSend, Registration},
    },
    directory::{closest, key_of, DirOp, DirectoryStore},
    protocol::{DigestBody, Request, Response},
};

/// The timer granularity of a real host's loop (its slow tick).
const GRANULARITY: Duration = Duration::from_millis(250);

/// CPU costs of the work a host does.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CpuCost {
    /// Each message read or sent (framing, encryption, the loop's turn).
    pub per_message: Duration,
    /// Each digest entry or record read or written.
    pub per_entry: Duration,
    /// Each record signature checked.
    pub per_check: Duration,
    /// Each new link, on each side (the noise handshake, identify, the
    /// protocols' first exchanges).
    pub per_link: Duration,
}

impl Default for CpuCost {
    /// Figures of a 2-core machine of this project's CI: an ed25519 check
    /// of ~50 µs, ~20 µs of libp2p and loop work per request.
    fn default() -> Self {
        CpuCost {
            per_message: Duration::from_micros(20),
            per_entry: Duration::from_nanos(150),
            per_check: Duration::from_micros(50),
            per_link: Duration::from_millis(1),
        }
    }
}

impl CpuCost {
    /// The defaults, with the cost of a record check measured on this
    /// machine (the real check of a signed record, 200 times).
    pub fn calibrated() -> Self {
        let mut m = Members::new(
            Keypair::generate_ed25519(),
            1,
            Settings {
                lease: Duration::from_secs(10),
                heartbeat: Duration::from_secs(1),
                max_hosts: usize::MAX,
                allowed: None,
            },
            Instant::now(),
        );
        let record = m.join_records();
        const N: u32 = 200;
        let t = Instant::now();
        for _ in 0..N {
            let _ = std::hint::black_box(crate::core::membership::verify(&record[0]));
        }
        let per_check = t.elapsed() / N;
        CpuCost {
            per_check,
            ..CpuCost::default()
        }
    }
}

/// A model run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
    /// Hosts in the network.
    pub hosts: usize,
    /// Seed of every random choice (keys, join targets, digest targets,
    /// latency, loss).
    pub seed: u64,
    /// The heartbeat interval.
    pub heartbeat: Duration,
    /// The lease.
    pub lease: Duration,
    /// Above this many hosts, the network relays (see `overlay`).
    pub relay_above: usize,
    /// One-way latency of a hop.
    pub latency: Duration,
    /// Up to this much more, uniformly.
    pub jitter: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Hosts that start and join at once (1: one after another).
    pub join_wave: usize,
    /// Cores shared by all hosts; `None`: a core per host.
    pub cores: Option<usize>,
    /// CPU costs.
    pub cost: CpuCost,
    /// After the join, how long the idle network is measured.
    pub idle_window: Duration,
    /// Peers registered after the idle window, spread evenly.
    pub peers: usize,
    /// Holders of each directory entry.
    pub replication: usize,
    /// Finds of random peers from random hosts once registered.
    pub finds: usize,
    /// Simulated time after which a join that has not converged fails.
    pub limit: Duration,
}

impl ModelConfig {
    /// The in-process simulator's settings for `hosts` hosts: heartbeat
    /// 1 s (2 s above 128 hosts), lease ten heartbeats, one by one.
    pub fn like_sim(hosts: usize) -> Self {
        let heartbeat = Duration::from_secs(if hosts > 128 { 2 } else { 1 });
        ModelConfig {
            hosts,
            seed: 1,
            heartbeat,
            lease: heartbeat * 10,
            relay_above: 128,
            latency: Duration::from_micros(100),
            jitter: Duration::from_micros(50),
            loss: 0.0,
            join_wave: 1,
            cores: None,
            cost: CpuCost::default(),
            idle_window: heartbeat * 10,
            peers: 10_000,
            replication: 3,
            finds: 1_000,
            limit: Duration::from_secs(3600),
        }
    }
}

/// What a run measured (simulated time).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelReport {
    /// Hosts.
    pub hosts: usize,
    /// From the first start until every host knows every host, seconds.
    pub join_s: f64,
    /// The same in heartbeats.
    pub join_heartbeats: f64,
    /// From the last host's join until every host knows every host, in
    /// heartbeats: how long the records take to spread.
    pub spread_heartbeats: f64,
    /// Whether the join converged within the limit.
    pub converged: bool,
    /// Record signatures checked per host, join included.
    pub checks_per_host: f64,
    /// Bytes sent per host during the join.
    pub join_bytes_per_host: f64,
    /// Requests per host per second, idle.
    pub idle_requests_per_host_s: f64,
    /// Bytes sent per host per second, idle (digests and their answers).
    pub idle_bytes_per_host_s: f64,
    /// Share of the CPU busy per host, idle.
    pub idle_cpu_per_host: f64,
    /// From the first create until every directory operation was
    /// acknowledged, seconds.
    pub register_s: f64,
    /// Directory requests sent per host while registering.
    pub register_requests_per_host: f64,
    /// Directory requests per 1,000 peers, in the whole network.
    pub register_requests_per_1000_peers: f64,
    /// Bytes of directory requests per peer registered.
    pub register_bytes_per_peer: f64,
    /// Directory entries held, per host (replication × peers / hosts).
    pub entries_per_host: f64,
    /// Finds that named the right host.
    pub finds_ok: f64,
    /// Network round trips of a find (a relayed request counts two), at
    /// the median and the 99th percentile.
    pub find_round_trips_p50: u64,
    /// See `find_round_trips_p50`.
    pub find_round_trips_p99: u64,
    /// Leases that lapsed (none in a healthy run).
    pub lapses: u64,
    /// Links per host at the end.
    pub links_per_host: f64,
    /// Link ends opened in the whole run (each link counts twice).
    pub links_opened: u64,
    /// Events handled.
    pub events: u64,
    /// Wall time of the run, seconds.
    pub wall_s: f64,
    /// Memory of the process at the end (all hosts' core state), bytes.
    pub rss_bytes: u64,
}

/// What travels between hosts.
enum Msg {
    /// Directory operations for a holder.
    Directory(Vec<DirOp>),
    /// The holder applied them.
    Applied,
    Ask {
        request: Request,
        kind: Kind,
    },
    Answer {
        response: Response,
        kind: Kind,
    },
    /// A record by membership gossip.
    Gossip(Vec<u8>),
}

/// What a request was, for its answer.
#[derive(Clone, Copy)]
enum Kind {
    Members(Asked),
    Join,
}

/// An event due at `t`, ordered by time, then by when it was scheduled.
struct Scheduled {
    t: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.t, self.seq) == (other.t, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.t, self.seq).cmp(&(other.t, other.seq))
    }
}

enum Ev {
    /// Hosts `from..to` start and join.
    Start {
        from: usize,
        to: usize,
    },
    Tick(usize),
    Deliver {
        to: usize,
        from: usize,
        msg: Msg,
    },
}

struct Host {
    members: Members,
    registration: Registration,
    store: DirectoryStore,
    /// Ordered, so that runs of one seed are the same.
    links: BTreeSet<usize>,
    /// The relay overlay and which neighbours to dial (the core's).
    neighbours: Neighbours,
    busy_until: Duration,
    busy: Duration,
    sent_bytes: u64,
    requests: u64,
}

/// A host's requests sent, bytes sent and CPU used, at some time.
type Marks = (u64, u64, Duration);

/// The model's state.
struct Model<'a> {
    cfg: &'a ModelConfig,
    base: Instant,
    rng: StdRng,
    hosts: Vec<Host>,
    keys: Vec<Keypair>,
    ids: Vec<PeerId>,
    index: HashMap<PeerId, usize>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    /// Order among events of the same time: first scheduled, first run.
    next_event: u64,
    /// Free time of each shared core.
    cores: Vec<Duration>,
    started: usize,
    full: usize,
    /// Directory requests sent and not yet answered, sent in all, and
    /// their bytes.
    dir_in_flight: usize,
    dir_requests: u64,
    dir_bytes: u64,
    report: ModelReport,
}

/// Runs the model and reports what it measured.
pub fn run(cfg: &ModelConfig) -> ModelReport {
    let wall = Instant::now();
    let mut m = Model::new(cfg);
    m.run();
    m.report.wall_s = wall.elapsed().as_secs_f64();
    m.report.rss_bytes = super::rss_bytes();
    m.report
}

impl<'a> Model<'a> {
    fn new(cfg: &'a ModelConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let keys: Vec<Keypair> = (0..cfg.hosts)
            .map(|_| {
                let mut secret = [0u8; 32];
                rng.fill(&mut secret);
                // Any 32 bytes are an ed25519 secret key.
                Keypair::ed25519_from_bytes(secret).unwrap_or_else(|_| Keypair::generate_ed25519())
            })
            .collect();
        let ids: Vec<PeerId> = keys.iter().map(|k| k.public().to_peer_id()).collect();
        let index = ids.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        Model {
            cfg,
            base: Instant::now(),
            rng,
            hosts: Vec::with_capacity(cfg.hosts),
            keys,
            ids,
            index,
            queue: BinaryHeap::new(),
            next_event: 0,
            cores: vec![Duration::ZERO; cfg.cores.unwrap_or(0)],
            started: 0,
            full: 0,
            dir_in_flight: 0,
            dir_requests: 0,
            dir_bytes: 0,
            report: ModelReport {
                hosts: cfg.hosts,
                ..ModelReport::default()
            },
        }
    }

    fn at(&mut self, t: Duration, ev: Ev) {
        self.next_event += 1;
        self.queue.push(Reverse(Scheduled {
            t,
            seq: self.next_event,
            ev,
        }));
    }

    fn settings(&self) -> Settings {
        Settings {
            lease: self.cfg.lease,
            heartbeat: self.cfg.heartbeat,
            max_hosts: usize::MAX,
            allowed: None,
        }
    }

    fn run(&mut self) {
        let wave = self.cfg.join_wave.max(1);
        self.at(
            Duration::ZERO,
            Ev::Start {
                from: 0,
                to: wave.min(self.cfg.hosts),
            },
        );
        // When the idle window starts, and each host's requests, bytes and
        // CPU then.
        let mut idle: Option<(Duration, Vec<Marks>)> = None;
        let mut last_join = Duration::ZERO;
        let mut registering: Option<(Duration, u64)> = None;
        while let Some(Reverse(Scheduled { t, ev, .. })) = self.queue.pop() {
            if t > self.cfg.limit {
                break;
            }
            self.report.events += 1;
            if let Ev::Start { .. } = ev {
                last_join = t;
            }
            self.handle(t, ev);
            if !self.report.converged && self.started == self.cfg.hosts && self.full == self.started
            {
                self.report.converged = true;
                self.report.join_s = t.as_secs_f64();
                self.report.join_heartbeats = t.as_secs_f64() / self.cfg.heartbeat.as_secs_f64();
                self.report.spread_heartbeats =
                    (t - last_join).as_secs_f64() / self.cfg.heartbeat.as_secs_f64();
                let n = self.cfg.hosts as f64;
                self.report.join_bytes_per_host =
                    self.hosts.iter().map(|h| h.sent_bytes).sum::<u64>() as f64 / n;
                self.report.checks_per_host =
                    self.hosts.iter().map(|h| h.members.checks()).sum::<u64>() as f64 / n;
                // The idle window starts once the views have settled.
                let from = t + self.cfg.heartbeat * 5;
                idle = Some((from, Vec::new()));
            }
            if let Some((from, marks)) = idle.as_mut() {
                if marks.is_empty() && t >= *from {
                    *marks = self
                        .hosts
                        .iter()
                        .map(|h| (h.requests, h.sent_bytes, h.busy))
                        .collect();
                    *from = t;
                } else if !marks.is_empty() && t >= *from + self.cfg.idle_window {
                    let window = (t - *from).as_secs_f64();
                    let n = self.cfg.hosts as f64;
                    let (mut req, mut bytes, mut busy) = (0u64, 0u64, Duration::ZERO);
                    for (h, (r0, b0, c0)) in self.hosts.iter().zip(marks.iter()) {
                        req += h.requests - r0;
                        bytes += h.sent_bytes - b0;
                        busy += h.busy.saturating_sub(*c0);
                    }
                    self.report.idle_requests_per_host_s = req as f64 / window / n;
                    self.report.idle_bytes_per_host_s = bytes as f64 / window / n;
                    self.report.idle_cpu_per_host = busy.as_secs_f64() / window / n;
                    idle = None;
                    registering = Some((t, self.dir_bytes));
                    self.start_registering(t);
                }
            }
            if let Some((start, bytes0)) = registering {
                if self.dir_in_flight == 0 {
                    let n = self.cfg.hosts as f64;
                    let peers = self.cfg.peers.max(1) as f64;
                    self.report.register_s = (t - start).as_secs_f64();
                    self.report.register_requests_per_host = self.dir_requests as f64 / n;
                    self.report.register_requests_per_1000_peers =
                        self.dir_requests as f64 * 1000.0 / peers;
                    self.report.register_bytes_per_peer = (self.dir_bytes - bytes0) as f64 / peers;
                    self.report.entries_per_host =
                        self.hosts.iter().map(|h| h.store.len()).sum::<usize>() as f64 / n;
                    self.finds(t);
                    break;
                }
            }
        }
        let n = self.hosts.len().max(1) as f64;
        self.report.links_per_host =
            self.hosts.iter().map(|h| h.links.len()).sum::<usize>() as f64 / n;
    }

    /// When host `i` may start on an event that arrives at `t`, and marks
    /// its CPU busy for `cost` from then: when it ends.
    fn cpu(&mut self, i: usize, t: Duration, cost: Duration) -> Duration {
        let mut start = t.max(self.hosts[i].busy_until);
        if let Some((c, free)) = self.earliest_core() {
            start = start.max(free);
            self.cores[c] = start + cost;
        }
        let end = start + cost;
        let h = &mut self.hosts[i];
        h.busy_until = end;
        h.busy += cost;
        end
    }

    fn handle(&mut self, t: Duration, ev: Ev) {
        match ev {
            Ev::Start { from, to } => {
                for i in from..to {
                    let key = self.keys[i].clone();
                    let members = Members::new(key, 1 + i as u64, self.settings(), self.base + t);
                    let local = members.local();
                    let own = [(crate::directory::host_key(&local), local)];
                    self.hosts.push(Host {
                        registration: Registration::new(local, self.cfg.replication, &own),
                        store: DirectoryStore::new(usize::MAX, usize::MAX),
                        members,
                        links: BTreeSet::new(),
                        neighbours: Neighbours::default(),
                        busy_until: t,
                        busy: Duration::ZERO,
                        sent_bytes: 0,
                        requests: 0,
                    });
                    self.started += 1;
                    self.note_full(i);
                    self.at(t, Ev::Tick(i));
                    if i > 0 {
                        let to = self.rng.gen_range(0..i);
                        let records = self.hosts[i].members.join_records();
                        let request = Request::Join(records);
                        self.send(
                            i,
                            to,
                            t,
                            Msg::Ask {
                                request,
                                kind: Kind::Join,
                            },
                        );
                    }
                }
                if to == 1 {
                    // The first host alone has no one to join: the next
                    // wave starts at once.
                    self.next_wave(t);
                }
            }
            Ev::Tick(i) => self.tick(i, t),
            Ev::Deliver { to, from, msg } => self.deliver(to, from, msg, t),
        }
    }

    fn next_wave(&mut self, t: Duration) {
        let from = self.hosts.len();
        if from < self.cfg.hosts {
            let to = (from + self.cfg.join_wave.max(1)).min(self.cfg.hosts);
            self.at(t, Ev::Start { from, to });
        }
    }

    fn note_full(&mut self, i: usize) {
        if self.hosts[i].members.membership().len() == self.cfg.hosts {
            self.full += 1;
        }
    }

    fn relaying(&self, i: usize) -> bool {
        self.hosts[i].members.membership().len() > self.cfg.relay_above
    }

    /// Host `i`'s overlay at `t`, recomputed by the core when the
    /// membership changed, and the neighbours it dials now (as a real
    /// host does once a beat): each a link at both ends.
    fn keep_neighbours(&mut self, i: usize, t: Duration) {
        let now = self.base + t;
        let h = &mut self.hosts[i];
        let local = h.members.local();
        h.neighbours
            .refresh(now, h.members.membership(), local, self.cfg.relay_above);
        if !self.relaying(i) {
            return;
        }
        let h = &self.hosts[i];
        let index = &self.index;
        let dial = h.neighbours.to_dial(now, local, self.cfg.heartbeat, |p| {
            index.get(p).is_some_and(|j| h.links.contains(j))
        });
        for p in dial {
            if let Some(j) = self.index.get(&p).copied() {
                self.link(i, j, t);
            }
        }
    }

    /// A link between `i` and `j` from `t`, if there was none.
    fn link(&mut self, i: usize, j: usize, t: Duration) {
        if j < self.hosts.len() && self.hosts[i].links.insert(j) {
            self.link_cost(i, t);
            if self.hosts[j].links.insert(i) {
                self.link_cost(j, t);
            }
        }
    }

    /// Whether a request from `i` to `j` goes in one hop: linked, or the
    /// overlay (if `i` relays) names `j` itself as the next hop.
    fn direct(&self, i: usize, j: usize) -> bool {
        let h = &self.hosts[i];
        h.links.contains(&j)
            || h.neighbours
                .overlay(h.members.membership().len(), self.cfg.relay_above)
                .is_none_or(|o| o.next_hop(self.ids[j]) == self.ids[j])
    }

    fn tick(&mut self, i: usize, t: Duration) {
        let start = t.max(self.hosts[i].busy_until);
        self.keep_neighbours(i, start);
        let relaying = self.relaying(i);
        let connected: Vec<PeerId> = self.hosts[i].links.iter().map(|j| self.ids[*j]).collect();
        let links = Links {
            connected: &connected,
            relaying,
        };
        let mut out = Vec::new();
        let before = self.hosts[i].members.checks();
        let due = self.hosts[i].members.tick(
            self.base + start,
            GRANULARITY,
            &links,
            &mut self.rng,
            &mut out,
        );
        let next = self.hosts[i]
            .members
            .next_beat()
            .saturating_duration_since(self.base);
        if due {
            let cost = self.effects_cost(&out) + self.checks_cost(i, before);
            let end = self.cpu(i, start, cost);
            self.carry_out(i, out, end);
        }
        self.at(next.max(t + Duration::from_millis(1)), Ev::Tick(i));
    }

    fn checks_cost(&self, i: usize, before: u64) -> Duration {
        let checks = self.hosts[i].members.checks() - before;
        self.cfg.cost.per_check * u32::try_from(checks).unwrap_or(u32::MAX)
    }

    fn effects_cost(&self, out: &[Effect]) -> Duration {
        let c = &self.cfg.cost;
        out.iter()
            .map(|e| match e {
                Effect::Ask { request, .. } => {
                    c.per_message + c.per_entry * entries_of_request(request)
                }
                Effect::Spread(_) => c.per_message,
                _ => Duration::ZERO,
            })
            .sum()
    }

    fn msg_cost(&self, msg: &Msg) -> Duration {
        let c = &self.cfg.cost;
        match msg {
            Msg::Directory(ops) => {
                c.per_message + c.per_entry * u32::try_from(ops.len()).unwrap_or(u32::MAX)
            }
            Msg::Applied => c.per_message,
            Msg::Ask { request, .. } => c.per_message + c.per_entry * entries_of_request(request),
            Msg::Answer { response, .. } => {
                c.per_message + c.per_entry * entries_of_response(response)
            }
            // Gossipsub batches messages per link and drops the ones it has
            // seen before they reach the loop: an entry's cost (a record
            // new here also costs its check).
            Msg::Gossip(_) => c.per_entry,
        }
    }

    fn deliver(&mut self, to: usize, from: usize, msg: Msg, t: Duration) {
        let start = t.max(self.hosts[to].busy_until);
        let now = self.base + start;
        let from_id = self.hosts[from].members.local();
        let before = self.hosts[to].members.checks();
        let mut out = Vec::new();
        let mut reply = None;
        let mut joined = false;
        let was_full = self.hosts[to].members.membership().len() == self.cfg.hosts;
        let read = self.msg_cost(&msg);
        let mut dir = Vec::new();
        match msg {
            Msg::Directory(ops) => {
                let epoch = self.hosts[from].members.epoch();
                self.hosts[to].store.apply(from_id, epoch, ops);
                reply = Some(Msg::Applied);
            }
            Msg::Applied => {
                self.dir_in_flight -= 1;
                self.hosts[to].registration.on_result(
                    now,
                    from_id,
                    Vec::new(),
                    true,
                    true,
                    &mut dir,
                );
            }
            Msg::Ask { request, kind } => {
                let members = &mut self.hosts[to].members;
                let response = match request {
                    Request::Beats(d) => Some(members.on_beats(from_id, d, now)),
                    Request::Records(r) => {
                        members.take_records(r, now, &mut out);
                        None
                    }
                    Request::Join(r) => {
                        members.take_join(from_id, &r, now, &mut out);
                        Some(Response::Members(members.join_records()))
                    }
                    _ => None,
                };
                reply = response.map(|response| Msg::Answer { response, kind });
            }
            Msg::Answer { response, kind } => {
                let members = &mut self.hosts[to].members;
                match (kind, response) {
                    (Kind::Members(Asked::Beats { compact }), answer) => {
                        members.on_beats_answer(from_id, compact, answer, now, &mut out)
                    }
                    (Kind::Join, Response::Members(r)) => {
                        members.take_join(from_id, &r, now, &mut out);
                        // The real host spreads its record once joined.
                        out.extend(members.own_signed().map(Effect::Spread));
                    }
                    (Kind::Members(Asked::Introduce), Response::Members(r)) => {
                        members.take_join(from_id, &r, now, &mut out)
                    }
                    _ => {}
                }
                // The next wave starts once the last of this one has joined.
                joined = matches!(kind, Kind::Join)
                    && (self.cfg.join_wave <= 1 || to + 1 == self.hosts.len());
            }
            Msg::Gossip(frame) => {
                self.hosts[to].members.on_gossip(&frame, now, &mut out);
            }
        }
        let mut cost = read + self.effects_cost(&out) + self.checks_cost(to, before);
        if let Some(r) = &reply {
            cost += self.msg_cost(r);
        }
        let end = self.cpu(to, start, cost);
        if let Some(r) = reply {
            self.send(to, from, end, r);
        }
        self.carry_out_directory(to, dir, end);
        self.carry_out(to, out, end);
        if !was_full {
            self.note_full(to);
        }
        if joined {
            self.next_wave(end);
        }
    }

    fn carry_out(&mut self, i: usize, out: Vec<Effect>, t: Duration) {
        for e in out {
            match e {
                Effect::Ask {
                    host,
                    request,
                    asked,
                } => {
                    if let Some(j) = self.index.get(&host).copied() {
                        if j < self.hosts.len() {
                            self.send(
                                i,
                                j,
                                t,
                                Msg::Ask {
                                    request,
                                    kind: Kind::Members(asked),
                                },
                            );
                        }
                    }
                }
                Effect::Spread(r) => {
                    if self.relaying(i) {
                        // A relaying network spreads records by digests only.
                        continue;
                    }
                    let Ok(frame) = postcard::to_allocvec(&r) else {
                        continue;
                    };
                    let to: Vec<usize> = self.hosts[i]
                        .members
                        .membership()
                        .iter()
                        .filter_map(|(p, _)| self.index.get(p).copied())
                        .collect();
                    // Gossipsub carries it over the mesh: a hop or two.
                    self.hosts[i].sent_bytes += frame.len() as u64 * 4;
                    for j in to {
                        let at = t + self.delay() + self.delay();
                        if !self.lost() {
                            self.at(
                                at,
                                Ev::Deliver {
                                    to: j,
                                    from: i,
                                    msg: Msg::Gossip(frame.clone()),
                                },
                            );
                        }
                    }
                }
                Effect::Lapsed(_) => self.report.lapses += 1,
                _ => {}
            }
        }
    }

    /// Every host creates its share of the peers at `t`, and the core's
    /// registration sends them to their holders.
    fn start_registering(&mut self, t: Duration) {
        let n = self.hosts.len();
        for i in 0..n {
            let count = self.cfg.peers / n + usize::from(i < self.cfg.peers % n);
            let changes: Vec<Change> = (0..count)
                .map(|k| {
                    let id = peer_id(i, k);
                    Change {
                        register: true,
                        key: key_of(id.as_bytes()),
                        id: id.as_str().into(),
                    }
                })
                .collect();
            let mut out = Vec::new();
            let now = self.base + t;
            let h = &mut self.hosts[i];
            let keys = h.members.sorted_keys().to_vec();
            h.registration.publish(now, changes, &keys, &mut out);
            let cost = self.cfg.cost.per_entry * u32::try_from(count).unwrap_or(u32::MAX);
            let end = self.cpu(i, t, cost);
            self.carry_out_directory(i, out, end);
        }
    }

    fn carry_out_directory(&mut self, i: usize, out: Vec<DirSend>, t: Duration) {
        for send in out {
            match send {
                DirSend::Here(ops) => {
                    let h = &mut self.hosts[i];
                    let (local, epoch) = (h.members.local(), h.members.epoch());
                    h.store.apply(local, epoch, ops);
                }
                DirSend::To { holder, ops } => {
                    if let Some(j) = self.index.get(&holder).copied() {
                        self.send(i, j, t, Msg::Directory(ops));
                    }
                }
            }
        }
    }

    /// Finds of random peers from random hosts, by the core's lookup
    /// against the holders' stores: whether each named the right host,
    /// and its round trips.
    fn finds(&mut self, t: Duration) {
        let n = self.hosts.len();
        if n == 0 || self.cfg.peers == 0 || self.cfg.finds == 0 {
            return;
        }
        let now = self.base + t;
        let (mut ok, mut trips) = (0usize, Vec::with_capacity(self.cfg.finds));
        for _ in 0..self.cfg.finds {
            let at = self.rng.gen_range(0..n);
            let p = self.rng.gen_range(0..self.cfg.peers);
            let (owner, k) = (p % n, p / n);
            let id = peer_id(owner, k);
            let view = FindView { model: self, at };
            let holders = closest(
                self.hosts[at].members.membership().keys(),
                key_of(id.as_bytes()),
                self.cfg.replication,
            );
            let mut lookups: Lookups<()> = Lookups::default();
            let mut step = lookups.start(now, id.clone(), (), holders, &view);
            let mut asks = 0;
            while let Some(st) = step.take() {
                match st {
                    LookupStep::Ask { id, holder } if asks < 16 => {
                        asks += 1;
                        let found = self
                            .index
                            .get(&holder)
                            .and_then(|j| self.hosts[*j].store.lookup(&id))
                            .map(|h| (h, Vec::new()));
                        step = lookups.on_answer(now, id, holder, found, &view);
                    }
                    LookupStep::Done(f) => {
                        if f.host == Some(self.hosts[owner].members.local()) {
                            ok += 1;
                        }
                        trips.push(f.round_trips);
                    }
                    _ => {}
                }
            }
        }
        trips.sort_unstable();
        let pick = |q: f64| {
            trips
                .get(((trips.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        self.report.finds_ok = ok as f64 / self.cfg.finds as f64;
        self.report.find_round_trips_p50 = pick(0.5);
        self.report.find_round_trips_p99 = pick(0.99);
    }

    /// Host `i` opened or accepted a link at `t`. The handshake runs in
    /// the link's own task, not on the host's loop: it takes a shared core
    /// (if cores are shared) but does not hold up the host's events.
    fn link_cost(&mut self, i: usize, t: Duration) {
        self.report.links_opened += 1;
        let cost = self.cfg.cost.per_link;
        if let Some((c, free)) = self.earliest_core() {
            self.cores[c] = t.max(free) + cost;
        }
        self.hosts[i].busy += cost;
    }

    /// The shared core free first, and when.
    fn earliest_core(&self) -> Option<(usize, Duration)> {
        self.cores
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, f)| *f)
    }

    fn delay(&mut self) -> Duration {
        let jitter = self.cfg.jitter.as_nanos() as u64;
        let extra = if jitter == 0 {
            0
        } else {
            self.rng.gen_range(0..jitter)
        };
        self.cfg.latency + Duration::from_nanos(extra)
    }

    fn lost(&mut self) -> bool {
        self.cfg.loss > 0.0 && self.rng.gen_bool(self.cfg.loss.min(1.0))
    }

    /// Sends `msg` from `i` to `j` at `t`: directly if linked (or not
    /// relaying: a dial makes the link), else through a relay.
    fn send(&mut self, i: usize, j: usize, t: Duration, msg: Msg) {
        let bytes = match &msg {
            // An epoch and the operations: as `Request::Directory`.
            Msg::Directory(ops) => 9 + postcard::experimental::serialized_size(ops).unwrap_or(0),
            Msg::Applied => 2,
            Msg::Ask { request, .. } => {
                postcard::experimental::serialized_size(request).unwrap_or(0)
            }
            Msg::Answer { response, .. } => {
                postcard::experimental::serialized_size(response).unwrap_or(0)
            }
            Msg::Gossip(f) => f.len(),
        } as u64;
        // Through the overlay's next hop if not direct (its own link to
        // `j` is one of its neighbours, dialled by itself).
        let relayed = !self.direct(i, j);
        if !relayed {
            self.link(i, j, t);
        }
        let h = &mut self.hosts[i];
        h.sent_bytes += if relayed { bytes * 2 } else { bytes };
        if let Msg::Ask { .. } = msg {
            h.requests += 1;
        }
        let mut at = t + self.delay();
        if relayed {
            at += self.delay();
        }
        if let Msg::Directory(_) = msg {
            self.dir_requests += 1;
            self.dir_in_flight += 1;
            self.dir_bytes += bytes;
        }
        // Joins and directory operations are not lost: a real host tries
        // them again, and the model's phases wait for them.
        let join = matches!(
            msg,
            Msg::Ask {
                kind: Kind::Join,
                ..
            } | Msg::Answer {
                kind: Kind::Join,
                ..
            } | Msg::Directory(_)
                | Msg::Applied
        );
        if !join && self.lost() {
            return;
        }
        self.at(
            at,
            Ev::Deliver {
                to: j,
                from: i,
                msg,
            },
        );
    }
}

/// The id of host `i`'s `k`th peer.
fn peer_id(i: usize, k: usize) -> String {
    format!("p{i}.{k}")
}

/// A host of the model as its lookups see it.
struct FindView<'m, 'c> {
    model: &'m Model<'c>,
    at: usize,
}

impl LookupView for FindView<'_, '_> {
    fn is_member(&self, host: &PeerId) -> bool {
        let m = &self.model.hosts[self.at].members;
        m.local() == *host || m.membership().contains(host)
    }

    fn is_local(&self, host: &PeerId) -> bool {
        self.model.hosts[self.at].members.local() == *host
    }

    fn held_here(&self, id: &str) -> Option<PeerId> {
        self.model.hosts[self.at].store.lookup(id)
    }

    fn direct(&self, host: &PeerId) -> bool {
        self.model
            .index
            .get(host)
            .is_none_or(|j| self.model.direct(self.at, *j))
    }
}

fn entries_of_request(r: &Request) -> u32 {
    let n = match r {
        Request::Beats(d) => digest_len(&d.body),
        Request::Records(r) => r.len(),
        Request::Join(r) => r.len(),
        _ => 1,
    };
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn entries_of_response(r: &Response) -> u32 {
    let n = match r {
        Response::Beats { beats, records } => digest_len(&beats.body) + records.len(),
        Response::Members(r) => r.len(),
        _ => 1,
    };
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn digest_len(d: &DigestBody) -> usize {
    match d {
        DigestBody::Full(v) => v.len(),
        DigestBody::Counters(v) => v.len(),
        DigestBody::Newer(v) => v.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_network_joins_and_idles_without_lapses() {
        let mut cfg = ModelConfig::like_sim(32);
        cfg.idle_window = cfg.heartbeat * 5;
        let r = run(&cfg);
        assert!(r.converged, "{r:?}");
        assert_eq!(r.lapses, 0, "{r:?}");
        assert!(r.idle_requests_per_host_s > 0.0, "{r:?}");
        // Every host checks every other host's record at least once.
        assert!(r.checks_per_host >= 31.0, "{r:?}");
        // Every peer reached its three holders, and every find its host in
        // one round trip (every host is linked to every holder it asks).
        assert_eq!(r.entries_per_host, 3.0 * 10_000.0 / 32.0, "{r:?}");
        assert!(r.register_requests_per_host >= 3.0, "{r:?}");
        assert_eq!(r.finds_ok, 1.0, "{r:?}");
        assert_eq!(r.find_round_trips_p99, 1, "{r:?}");
    }

    #[test]
    fn a_relaying_network_converges_by_digests() {
        let mut cfg = ModelConfig::like_sim(200);
        cfg.relay_above = 64;
        cfg.idle_window = cfg.heartbeat * 3;
        let r = run(&cfg);
        assert!(r.converged, "{r:?}");
        assert_eq!(r.lapses, 0, "{r:?}");
        assert!(r.links_per_host < 100.0, "{r:?}");
        // A find goes through a relay when no holder is a neighbour.
        assert_eq!(r.finds_ok, 1.0, "{r:?}");
        assert_eq!(r.find_round_trips_p99, 2, "{r:?}");
    }

    #[test]
    fn a_lossy_network_still_joins_and_keeps_every_lease() {
        // A message in four lost (joins and directory operations are
        // retried by real hosts, so the model does not lose them), with a
        // lease of four beats: the digests of later rounds and the probes
        // of silent hosts make up for it.
        let mut cfg = ModelConfig::like_sim(48);
        cfg.loss = 0.25;
        cfg.lease = cfg.heartbeat * 4;
        cfg.idle_window = cfg.heartbeat * 30;
        let r = run(&cfg);
        assert!(r.converged, "{r:?}");
        assert_eq!(r.lapses, 0, "{r:?}");
        assert_eq!(r.finds_ok, 1.0, "{r:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let mut cfg = ModelConfig::like_sim(24);
        cfg.idle_window = cfg.heartbeat * 3;
        let (a, b) = (run(&cfg), run(&cfg));
        assert_eq!(a.join_s, b.join_s);
        assert_eq!(a.events, b.events);
        assert_eq!(a.idle_bytes_per_host_s, b.idle_bytes_per_host_s);
    }
}
