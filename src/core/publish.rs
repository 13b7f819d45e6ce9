//! Channel publishes on their way to gossipsub: parked per channel, in
//! order, until the mesh reaches every subscriber host (or the warm-up
//! passes), then taken in batches that share one gossip frame.
//!
//! The caller of a publish goes on as soon as its publish is queued, while
//! the channel's queue holds fewer than [`PUBLISH_QUEUE`]; past that it
//! waits (backpressure) until enough of the queue has left. Which hosts
//! subscribe and which gossipsub knows, and the publishing itself, are the
//! event loop's (gossipsub); this type decides whether the mesh is ready,
//! which subscriber hosts to dial, what waits, what leaves together, and
//! whom to release.
//! `T` is what answers a waiting caller (a reply channel in the loop).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use libp2p::PeerId;

use crate::message::Payload;

/// Publishes queued per channel before callers have to wait.
pub(crate) const PUBLISH_QUEUE: usize = 1024;
/// Target size of one gossip frame of batched publishes.
pub(crate) const BATCH_BYTES: usize = 64 * 1024;
/// Most publishes in one frame.
const BATCH_COUNT: usize = 4096;
/// Bytes counted per publish beside its payload (its length and framing).
const OVERHEAD: usize = 8;
/// The largest emptied queue kept for reuse, in publishes (the lane's
/// room: what one channel holds when its publisher runs ahead).
const SPARE_CAPACITY: usize = crate::publish_lane::LANE_ROOM * 2;
/// How long to wait before dialling a subscriber host again.
const REDIAL: Duration = Duration::from_secs(1);

/// A publish waiting for the mesh, for queue room, or to be batched.
#[derive(Debug)]
struct Parked<T> {
    payload: Payload,
    /// The caller, held while the queue is over [`PUBLISH_QUEUE`].
    waiter: Option<T>,
    /// It came by the publish lane, whose room it holds until it leaves.
    lane: bool,
    /// When it leaves even if the mesh is not ready.
    deadline: Instant,
}

/// The publishes that left in one frame, as [`Publishes::take`] hands them
/// back.
#[derive(Debug)]
pub(crate) struct Taken<T> {
    /// Callers still waiting for these publishes: answer each with the
    /// publish's outcome.
    pub sent: Vec<T>,
    /// How many of them came by the publish lane (room to give back).
    pub lane: usize,
    /// Callers of publishes still queued that are now within the bound:
    /// they may go on.
    pub released: Vec<T>,
}

/// Parked publishes of every channel, and which channels' meshes are known
/// to be ready.
#[derive(Debug)]
pub(crate) struct Publishes<T> {
    parked: HashMap<String, VecDeque<Parked<T>>>,
    /// Channels whose mesh reached every subscriber host since the last
    /// change of subscribers or links ([`Publishes::unready`]).
    ready: HashSet<String>,
    /// Subscriber hosts dialled for a mesh, and when they may be dialled
    /// again (forgotten once a dial ends: [`Publishes::dial_ended`]).
    dialing: HashMap<PeerId, Instant>,
    /// The last queue emptied, kept for the next channel that parks: a
    /// publisher that keeps one channel's queue filling and draining would
    /// otherwise grow a new queue, doubling, at every turn of the loop.
    spare: VecDeque<Parked<T>>,
}

impl<T> Default for Publishes<T> {
    fn default() -> Self {
        Publishes {
            parked: HashMap::new(),
            ready: HashSet::new(),
            dialing: HashMap::new(),
            spare: VecDeque::new(),
        }
    }
}

impl<T> Publishes<T> {
    /// Whether any publish waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    /// Whether publishes on `channel` wait (a new one queues behind them,
    /// to keep the channel's order).
    pub(crate) fn has_parked(&self, channel: &str) -> bool {
        self.parked.contains_key(channel)
    }

    /// Channels with publishes waiting.
    pub(crate) fn channels(&self) -> Vec<String> {
        self.parked.keys().cloned().collect()
    }

    /// Queues an awaited publish (one that did not come by the publish
    /// lane) that leaves at the latest `warmup` after `now`. Returns the
    /// waiter if its caller may go on now (the queue is within its bound);
    /// otherwise it is kept and comes back from [`Publishes::take`].
    pub(crate) fn park(
        &mut self,
        channel: String,
        payload: Payload,
        waiter: T,
        now: Instant,
        warmup: Duration,
    ) -> Option<T> {
        let queue = self
            .parked
            .entry(channel)
            .or_insert_with(|| std::mem::take(&mut self.spare));
        let (go_on, waiter) = if queue.len() < PUBLISH_QUEUE {
            (Some(waiter), None)
        } else {
            (None, Some(waiter))
        };
        queue.push_back(Parked {
            payload,
            waiter,
            lane: false,
            deadline: now + warmup,
        });
        go_on
    }

    /// Queues publishes that came by the publish lane (no caller waits on
    /// them), in order, leaving at the latest `warmup` after `now`: one
    /// look-up of the channel's queue for the whole run.
    pub(crate) fn park_lane(
        &mut self,
        channel: &str,
        payloads: impl ExactSizeIterator<Item = Payload>,
        now: Instant,
        warmup: Duration,
    ) {
        // One key allocated per run of publishes, not per publish.
        let queue = self
            .parked
            .entry(channel.to_string())
            .or_insert_with(|| std::mem::take(&mut self.spare));
        queue.reserve(payloads.len());
        let deadline = now + warmup;
        queue.extend(payloads.map(|payload| Parked {
            payload,
            waiter: None,
            lane: true,
            deadline,
        }));
    }

    /// Whether `channel`'s mesh is known to be ready.
    pub(crate) fn is_ready(&self, channel: &str) -> bool {
        self.ready.contains(channel)
    }

    /// `channel`'s mesh reaches every subscriber host: its publishes leave
    /// without waiting until [`Publishes::unready`].
    pub(crate) fn set_ready(&mut self, channel: &str) {
        if !self.ready.contains(channel) {
            self.ready.insert(channel.to_string());
        }
    }

    /// Whether a channel's mesh reaches every host of `subscribers`
    /// (gossipsub knows those in `known` as subscribers of its topic), and
    /// which of the others to dial now: those not `connected`, at most
    /// once per [`REDIAL`] each.
    pub(crate) fn check_mesh(
        &mut self,
        subscribers: impl IntoIterator<Item = PeerId>,
        known: &HashSet<PeerId>,
        connected: impl Fn(&PeerId) -> bool,
        now: Instant,
    ) -> (bool, Vec<PeerId>) {
        let (mut ready, mut dial) = (true, Vec::new());
        for h in subscribers {
            if known.contains(&h) {
                continue;
            }
            ready = false;
            if !connected(&h) && self.dialing.get(&h).is_none_or(|t| *t <= now) {
                self.dialing.insert(h, now + REDIAL);
                dial.push(h);
            }
        }
        (ready, dial)
    }

    /// A connection to `host` opened or closed, or a dial to it failed: it
    /// may be dialled again at once.
    pub(crate) fn dial_ended(&mut self, host: &PeerId) {
        self.dialing.remove(host);
    }

    /// Subscribers or links changed: every channel's mesh is checked again.
    pub(crate) fn unready(&mut self) {
        self.ready.clear();
    }

    /// The payloads of `channel`'s next frame at `now`: its oldest publishes
    /// up to [`BATCH_BYTES`] (or `max_bytes`, if smaller) and
    /// [`BATCH_COUNT`], at least one. `None` while nothing is parked, or
    /// while the mesh is not `ready` and the oldest publish's warm-up lasts.
    pub(crate) fn next_batch(
        &self,
        channel: &str,
        ready: bool,
        now: Instant,
        max_bytes: usize,
    ) -> Option<Vec<Payload>> {
        let queue = self.parked.get(channel)?;
        let front = queue.front()?;
        if !ready && front.deadline > now {
            return None;
        }
        let limit = BATCH_BYTES.min(max_bytes);
        let (mut n, mut bytes) = (0, 0);
        for p in queue {
            if n > 0 && (bytes + p.payload.len() > limit || n >= BATCH_COUNT) {
                break;
            }
            bytes += p.payload.len() + OVERHEAD;
            n += 1;
        }
        Some(queue.iter().take(n).map(|p| p.payload.clone()).collect())
    }

    /// Removes `channel`'s `n` oldest publishes (the batch that left).
    pub(crate) fn take(&mut self, channel: &str, n: usize) -> Taken<T> {
        let mut taken = Taken {
            sent: Vec::new(),
            lane: 0,
            released: Vec::new(),
        };
        let Some(queue) = self.parked.get_mut(channel) else {
            return taken;
        };
        let n = n.min(queue.len());
        for p in queue.drain(..n) {
            taken.lane += usize::from(p.lane);
            taken.sent.extend(p.waiter);
        }
        // Callers that waited past the bound go on once within it. A held
        // caller sat at the bound or beyond, so only the `n` places just
        // inside it can hold one now (no scan of the whole window per frame).
        let window = PUBLISH_QUEUE.saturating_sub(n)..PUBLISH_QUEUE.min(queue.len());
        if !window.is_empty() {
            taken.released = queue
                .range_mut(window)
                .filter_map(|p| p.waiter.take())
                .collect();
        }
        if queue.is_empty() {
            if let Some(q) = self.parked.remove(channel) {
                // A queue grown by a burst far past the bound is not kept.
                if q.capacity() <= SPARE_CAPACITY {
                    self.spare = q;
                }
            }
        }
        taken
    }

    /// Every waiting caller, the queues emptied (the host closes).
    pub(crate) fn drain_waiters(&mut self) -> Vec<T> {
        self.parked
            .drain()
            .flat_map(|(_, q)| q.into_iter().filter_map(|p| p.waiter))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(bytes: Vec<u8>) -> Payload {
        Payload {
            encoding: crate::message::Encoding::Postcard,
            bytes: bytes.into(),
        }
    }

    fn payload(len: usize) -> Payload {
        raw(vec![0u8; len])
    }

    const WARMUP: Duration = Duration::from_millis(500);

    #[test]
    fn a_publish_waits_for_the_mesh_or_the_end_of_its_warmup() {
        let t0 = Instant::now();
        let mut p: Publishes<u32> = Publishes::default();
        assert_eq!(p.park("c".into(), payload(10), 1, t0, WARMUP), Some(1));
        assert!(
            p.next_batch("c", false, t0, usize::MAX).is_none(),
            "mesh not ready"
        );
        let just_before = t0 + WARMUP - Duration::from_millis(1);
        assert!(p.next_batch("c", false, just_before, usize::MAX).is_none());
        assert_eq!(
            p.next_batch("c", false, t0 + WARMUP, usize::MAX)
                .map(|b| b.len()),
            Some(1)
        );
        assert_eq!(
            p.next_batch("c", true, t0, usize::MAX).map(|b| b.len()),
            Some(1),
            "ready"
        );
        assert!(p.next_batch("other", true, t0, usize::MAX).is_none());
    }

    #[test]
    fn batches_keep_order_and_stay_within_the_frame_size() {
        let t0 = Instant::now();
        let mut p: Publishes<u32> = Publishes::default();
        // Ten publishes of 20 KiB, by the lane in two runs: three fit in a
        // 64 KiB frame.
        let twenty = |i: u8| {
            let mut bytes = vec![0u8; 20 << 10];
            bytes[0] = i;
            raw(bytes)
        };
        p.park_lane("c", (0..4).map(twenty), t0, WARMUP);
        p.park_lane("c", (4..10).map(twenty), t0, WARMUP);
        let mut seen = Vec::new();
        let mut lane = 0;
        while let Some(batch) = p.next_batch("c", true, t0, usize::MAX) {
            assert!(batch.len() <= 3, "{}", batch.len());
            seen.extend(batch.iter().map(|b| b.bytes[0]));
            lane += p.take("c", batch.len()).lane;
        }
        assert_eq!(seen, (0..10).collect::<Vec<u8>>());
        assert_eq!(lane, 10, "every lane publish gives its room back");
        assert!(p.is_empty());
        // The emptied queue is kept for the next channel to park.
        assert!(p.spare.capacity() >= 10);
        p.park("d".into(), payload(1), 0, t0, WARMUP);
        assert_eq!(p.spare.capacity(), 0);
        assert_eq!(p.take("d", 1).lane, 0);
        // One publish larger than the frame still leaves, alone.
        p.park("c".into(), payload(100 << 10), 0, t0, WARMUP);
        p.park("c".into(), payload(1), 0, t0, WARMUP);
        assert_eq!(
            p.next_batch("c", true, t0, usize::MAX).map(|b| b.len()),
            Some(1)
        );
        // A smaller message limit makes smaller frames.
        assert_eq!(p.take("c", 2).lane, 0);
        assert!(p.is_empty());
        for _ in 0..3 {
            p.park("c".into(), payload(100), 0, t0, WARMUP);
        }
        assert_eq!(p.next_batch("c", true, t0, 250).map(|b| b.len()), Some(2));
    }

    #[test]
    fn callers_wait_past_the_bound_and_go_on_once_within_it() {
        let t0 = Instant::now();
        let mut p: Publishes<usize> = Publishes::default();
        for i in 0..PUBLISH_QUEUE + 3 {
            let go_on = p.park("c".into(), payload(1), i, t0, WARMUP);
            assert_eq!(go_on.is_some(), i < PUBLISH_QUEUE, "publish {i}");
        }
        // Two leave: the two callers queued at the bound's edge go on; the
        // third still waits; none of the sent two had a waiter left.
        let taken = p.take("c", 2);
        assert!(taken.sent.is_empty());
        assert_eq!(taken.released, vec![PUBLISH_QUEUE, PUBLISH_QUEUE + 1]);
        let taken = p.take("c", PUBLISH_QUEUE + 1);
        assert_eq!(
            taken.sent,
            vec![PUBLISH_QUEUE + 2],
            "answered with the outcome"
        );
        assert!(p.is_empty());
    }

    #[test]
    fn readiness_is_forgotten_on_any_change_and_close_answers_the_waiters() {
        let t0 = Instant::now();
        let mut p: Publishes<usize> = Publishes::default();
        p.set_ready("a");
        p.set_ready("b");
        assert!(p.is_ready("a") && p.is_ready("b"));
        p.unready();
        assert!(!p.is_ready("a") && !p.is_ready("b"));
        // Channel "c" over its bound by two, "d" within it.
        for i in 0..PUBLISH_QUEUE + 2 {
            p.park("c".into(), payload(1), i, t0, WARMUP);
        }
        p.park("d".into(), payload(1), 9999, t0, WARMUP);
        let mut channels = p.channels();
        channels.sort();
        assert_eq!(channels, ["c", "d"]);
        let mut waiting = p.drain_waiters();
        waiting.sort_unstable();
        assert_eq!(waiting, vec![PUBLISH_QUEUE, PUBLISH_QUEUE + 1]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_subscriber_host_outside_the_mesh_is_dialled_once_a_second_until_linked() {
        let mut p = Publishes::<()>::default();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let known: HashSet<PeerId> = [a].into();
        let linked = |h: &PeerId| *h == b;
        let (ready, dial) = p.check_mesh([a, b, c], &known, linked, t0);
        assert!(!ready);
        assert_eq!(dial, vec![c], "b is linked: gossipsub hears of it soon");
        let soon = t0 + REDIAL - Duration::from_millis(1);
        assert!(p.check_mesh([c], &known, linked, soon).1.is_empty());
        assert_eq!(p.check_mesh([c], &known, linked, t0 + REDIAL).1, vec![c]);
        // A failed dial may be tried again at once.
        p.dial_ended(&c);
        assert_eq!(p.check_mesh([c], &known, linked, t0 + REDIAL).1, vec![c]);
        // Every subscriber known: ready, nobody dialled.
        let all: HashSet<PeerId> = [a, b, c].into();
        assert_eq!(p.check_mesh([a, b, c], &all, linked, t0), (true, vec![]));
    }
}
