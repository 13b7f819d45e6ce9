//! foca (SWIM) on a discrete-event loop with a virtual clock: foca is
//! sans-IO, so its sends and timers become events of one queue and the run
//! takes no wall time but the CPU foca itself needs.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashSet},
    num::NonZeroU32,
    time::Duration,
};

use bytes::Bytes;
use foca::{Config, Foca, Identity, Notification, PostcardCodec, Runtime, State, Timer};
use rand::{rngs::StdRng, RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{cpu_seconds, Args, Outcome};

/// One-way delay of every message (the in-memory transport's order).
const LATENCY: Duration = Duration::from_millis(1);
/// What a late message waits on top (as `distribus-sim --loss`).
const LATE: Duration = Duration::from_millis(200);
/// How often convergence and suspicions are sampled.
const SAMPLE: Duration = Duration::from_millis(100);

/// A host's identity, as big as a libp2p peer id with a compact address
/// (foca sends identities in every message header).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
struct Id {
    key: [u8; 32],
    index: u32,
    bump: u16,
}

impl Identity for Id {
    type Addr = u32;

    fn renew(&self) -> Option<Self> {
        Some(Id {
            bump: self.bump.wrapping_add(1),
            ..*self
        })
    }

    fn addr(&self) -> u32 {
        self.index
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

enum Kind {
    Deliver { to: usize, data: Bytes },
    Timer { node: usize, timer: Timer<Id> },
    Announce { node: usize, to: usize },
}

struct Event {
    at: Duration,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The clock, the event queue and the counters: what a host's runtime
/// touches.
struct World {
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<Event>>,
    rng: StdRng,
    late: f64,
    messages: u64,
    bytes: u64,
    /// Events foca answered with an error.
    refused: u64,
    /// (observer, host) pairs declared down, once counting.
    downs: Option<HashSet<(usize, u32)>>,
}

impl World {
    fn push(&mut self, after: Duration, kind: Kind) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at: self.now + after,
            seq: self.seq,
            kind,
        }));
    }
}

/// The runtime foca calls while one host handles one event.
struct Rt<'a> {
    world: &'a mut World,
    node: usize,
}

impl Runtime<Id> for Rt<'_> {
    fn notify(&mut self, notification: Notification<'_, Id>) {
        if let (Notification::MemberDown(id), Some(downs)) = (notification, &mut self.world.downs) {
            downs.insert((self.node, id.index));
        }
    }

    fn send_to(&mut self, to: Id, data: &[u8]) {
        let w = &mut *self.world;
        w.messages += 1;
        w.bytes += data.len() as u64;
        let late = w.late > 0.0 && w.rng.random_bool(w.late);
        let after = if late { LATENCY + LATE } else { LATENCY };
        w.push(
            after,
            Kind::Deliver {
                to: to.index as usize,
                data: Bytes::copy_from_slice(data),
            },
        );
    }

    fn submit_after(&mut self, event: Timer<Id>, after: Duration) {
        let node = self.node;
        self.world.push(after, Kind::Timer { node, timer: event });
    }
}

type Host = Foca<Id, PostcardCodec, StdRng, foca::NoCustomBroadcast>;

/// Runs every event due by `until`, then sets the clock to it.
fn run_until(hosts: &mut [Host], ids: &[Id], world: &mut World, until: Duration) {
    while world.queue.peek().is_some_and(|Reverse(e)| e.at <= until) {
        let Some(Reverse(e)) = world.queue.pop() else {
            break;
        };
        world.now = e.at;
        let result = match e.kind {
            Kind::Deliver { to, data } => hosts[to].handle_data(&data, Rt { world, node: to }),
            Kind::Timer { node, timer } => hosts[node].handle_timer(timer, Rt { world, node }),
            Kind::Announce { node, to } => hosts[node].announce(ids[to], Rt { world, node }),
        };
        // foca refuses, e.g., a message for an identity it renewed; the
        // run goes on as a network would, and counts them.
        if result.is_err() {
            world.refused += 1;
        }
    }
    world.now = until;
}

/// Runs foca with `n` hosts.
pub(crate) fn run(n: usize, args: &Args) -> anyhow::Result<Outcome> {
    let size = NonZeroU32::new(u32::try_from(n)?).ok_or_else(|| anyhow::anyhow!("0 hosts"))?;
    let config = Config::new_lan(size);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let ids: Vec<Id> = (0..n)
        .map(|i| Id {
            key: rng.random(),
            index: i as u32,
            bump: 0,
        })
        .collect();
    let mut hosts: Vec<Host> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            Foca::new(
                *id,
                config.clone(),
                StdRng::seed_from_u64(seed),
                PostcardCodec,
            )
        })
        .collect();
    let mut world = World {
        now: Duration::ZERO,
        seq: 0,
        queue: BinaryHeap::new(),
        rng: StdRng::seed_from_u64(args.seed ^ 0x5eed),
        late: 0.0,
        messages: 0,
        bytes: 0,
        refused: 0,
        downs: None,
    };
    // Every host joins a random earlier one, all within the first
    // millisecond (a fleet starting at once).
    for i in 1..n {
        let to = rng.random_range(0..i);
        let at = Duration::from_nanos(i as u64 * 1_000_000 / n as u64);
        world.push(at, Kind::Announce { node: i, to });
    }
    let mut out = Outcome {
        system: "foca",
        hosts: n,
        round_s: config.probe_period.as_secs_f64(),
        late_share: args.late,
        ..Outcome::default()
    };

    let cpu0 = cpu_seconds();
    while world.now < args.converge_timeout {
        let next = world.now + SAMPLE;
        run_until(&mut hosts, &ids, &mut world, next);
        if hosts.iter().all(|h| h.num_members() == n - 1) {
            out.converged_s = Some(world.now.as_secs_f64());
            break;
        }
    }
    out.join_cpu_s = cpu_seconds() - cpu0;
    out.least_known =
        hosts.iter().map(|h| h.num_members()).min().unwrap_or(0) as f64 / (n - 1) as f64;
    out.join_messages_per_host = world.messages as f64 / n as f64;
    out.join_bytes_per_host = world.bytes as f64 / n as f64;

    // Idle: nothing but the protocol's own traffic.
    let (m0, b0, cpu0, t0) = (world.messages, world.bytes, cpu_seconds(), world.now);
    let end = t0 + args.window;
    run_until(&mut hosts, &ids, &mut world, end);
    let secs = (world.now - t0).as_secs_f64() * n as f64;
    out.idle_messages_per_host_s = (world.messages - m0) as f64 / secs;
    out.idle_bytes_per_host_s = (world.bytes - b0) as f64 / secs;
    out.idle_cores = (cpu_seconds() - cpu0) / (world.now - t0).as_secs_f64();

    // Loaded: a share of messages late; every host stays alive.
    world.late = args.late;
    world.downs = Some(HashSet::new());
    let mut suspected = HashSet::new();
    let end = world.now + args.window;
    while world.now < end {
        let next = world.now + SAMPLE;
        run_until(&mut hosts, &ids, &mut world, next);
        for (i, h) in hosts.iter().enumerate() {
            for m in h.iter_membership_state() {
                if m.state() == State::Suspect {
                    suspected.insert((i, m.id().index));
                }
            }
        }
    }
    out.false_downs = world.downs.map_or(0, |d| d.len() as u64);
    out.false_suspicions = suspected.len() as u64;
    out.refused = world.refused;
    Ok(out)
}
