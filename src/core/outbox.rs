//! One queue per destination, at most one batch in flight to each, and a
//! retry time after a failure: the shape shared by direct messages,
//! directory operations and relayed requests.
//!
//! Pure: it takes `now` and never looks at a clock, so its timing is tested
//! with a fake one. The caller sends what [`Outbox::take`] hands out and
//! reports the outcome with [`Outbox::done`] or [`Outbox::failed`].

use std::{
    collections::VecDeque,
    hash::Hash,
    time::{Duration, Instant},
};

/// How long a destination rests after failures: `first` after one,
/// doubling with each further failure in a row, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// No rest: a failed batch may go again at once.
    pub(crate) const NONE: Backoff = Backoff {
        first: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// The rest after `failures` failures in a row (at least one).
    pub(crate) fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.first
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// Something queued, with the bytes it counts for in a batch.
pub(crate) trait Weigh {
    /// Bytes this item adds to a batch (0 where only counts matter).
    fn weight(&self) -> usize {
        0
    }
}

/// One destination's queue.
#[derive(Debug)]
pub(crate) struct Queue<T> {
    items: VecDeque<T>,
    in_flight: bool,
    /// Failures in a row, and when the next batch may go after the last.
    failures: u32,
    retry_at: Option<Instant>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            items: VecDeque::new(),
            in_flight: false,
            failures: 0,
            retry_at: None,
        }
    }
}

impl<T: Weigh> Queue<T> {
    /// The items waiting, oldest first.
    pub(crate) fn items(&self) -> impl ExactSizeIterator<Item = &T> {
        self.items.iter()
    }

    fn may_send(&self, now: Instant) -> bool {
        !self.in_flight && !self.items.is_empty() && self.retry_at.is_none_or(|t| t <= now)
    }

    fn pop_front(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    fn push_front(&mut self, item: T) {
        self.items.push_front(item);
    }
}

/// What [`Outbox::take`] does with the item at the front of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// Put it in the batch.
    Take,
    /// Drop it (its sender gave up) and look at the next.
    Drop,
    /// End the batch before it.
    Stop,
}

/// Queues by destination, with a cap on batches in flight over all of them.
#[derive(Debug)]
pub(crate) struct Outbox<K, T> {
    queues: foldhash::HashMap<K, Queue<T>>,
    backoff: Backoff,
    /// Most batches out at once over every destination (`usize::MAX`: no cap).
    cap: usize,
    out: usize,
    /// A batch was held back by the cap: [`Outbox::ready`] lists its queue
    /// once a slot frees.
    held: bool,
}

impl<K: Hash + Eq + Copy, T: Weigh> Default for Outbox<K, T> {
    /// No rest after failures, no cap.
    fn default() -> Self {
        Outbox::new(Backoff::NONE, usize::MAX)
    }
}

impl<K: Hash + Eq + Copy, T: Weigh> Outbox<K, T> {
    /// An outbox whose destinations rest after failures as `backoff` says,
    /// with at most `cap` batches out at once.
    pub(crate) fn new(backoff: Backoff, cap: usize) -> Self {
        Outbox {
            queues: Default::default(),
            backoff,
            cap: cap.max(1),
            out: 0,
            held: false,
        }
    }

    /// Queues `item` for `dest`; whether the queue was empty before (the
    /// caller then has a destination to flush).
    pub(crate) fn push(&mut self, dest: K, item: T) -> bool {
        let q = self.queues.entry(dest).or_default();
        q.items.push_back(item);
        q.items.len() == 1
    }

    /// Queues `items` for `dest`, in order.
    pub(crate) fn extend(&mut self, dest: K, items: impl IntoIterator<Item = T>) {
        let q = self.queues.entry(dest).or_default();
        q.items.extend(items);
    }

    /// Puts `items` back at the front of `dest`'s queue, in their order
    /// (they go before anything queued since they were taken).
    pub(crate) fn put_back(&mut self, dest: K, items: impl DoubleEndedIterator<Item = T>) {
        let q = self.queues.entry(dest).or_default();
        for item in items.rev() {
            q.push_front(item);
        }
    }

    /// `dest`'s queue, if it has one.
    pub(crate) fn get(&self, dest: &K) -> Option<&Queue<T>> {
        self.queues.get(dest)
    }

    /// Whether a batch for `dest` could go now (none out, something
    /// waiting, its rest over), leaving the cap aside.
    pub(crate) fn may_send(&self, dest: &K, now: Instant) -> bool {
        self.queues.get(dest).is_some_and(|q| q.may_send(now))
    }

    /// The next batch for `dest`, if one may go now and the cap allows:
    /// items from the front while `pick` takes them (the first is always
    /// offered; a batch that ends empty is not sent). The queue then
    /// counts as in flight until [`Outbox::done`] or [`Outbox::failed`].
    pub(crate) fn take(
        &mut self,
        dest: &K,
        now: Instant,
        mut pick: impl FnMut(&T, usize, usize) -> Pick,
    ) -> Option<Vec<T>> {
        let q = self.queues.get_mut(dest)?;
        if !q.may_send(now) {
            return None;
        }
        if self.out >= self.cap {
            self.held = true;
            return None;
        }
        let (mut batch, mut bytes) = (Vec::new(), 0usize);
        while let Some(front) = q.items.front() {
            match pick(front, batch.len(), bytes) {
                Pick::Stop => break,
                Pick::Drop => {
                    q.pop_front();
                }
                Pick::Take => {
                    let Some(item) = q.pop_front() else { break };
                    bytes += item.weight();
                    batch.push(item);
                }
            }
        }
        if batch.is_empty() {
            if q.items.is_empty() {
                self.queues.remove(dest);
            }
            return None;
        }
        q.in_flight = true;
        q.retry_at = None;
        self.out += 1;
        Some(batch)
    }

    /// The batch out to `dest` arrived: the queue may send again at once.
    /// An emptied queue is forgotten.
    pub(crate) fn done(&mut self, dest: &K) {
        self.settle(dest);
        if let Some(q) = self.queues.get_mut(dest) {
            q.failures = 0;
            if q.items.is_empty() && !q.in_flight {
                self.queues.remove(dest);
            }
        }
    }

    /// The batch out to `dest` failed: its `items` go back to the front
    /// and the queue rests (longer after each failure in a row); when the
    /// rest ends is returned.
    pub(crate) fn failed(&mut self, dest: K, now: Instant, items: Vec<T>) -> Instant {
        self.settle(&dest);
        self.put_back(dest, items.into_iter());
        let backoff = self.backoff;
        let q = self.queues.entry(dest).or_default();
        q.failures = q.failures.saturating_add(1);
        let at = now + backoff.after(q.failures);
        q.retry_at = Some(at);
        at
    }

    fn settle(&mut self, dest: &K) {
        if let Some(q) = self.queues.get_mut(dest) {
            if q.in_flight {
                q.in_flight = false;
                self.out = self.out.saturating_sub(1);
            }
        }
    }

    /// Destinations that may send now: their rest is over, none is out,
    /// and something waits (all of them may be held back by the cap again).
    pub(crate) fn ready(&mut self, now: Instant) -> Vec<K> {
        self.held = false;
        self.queues
            .iter()
            .filter(|(_, q)| q.may_send(now))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Whether a batch was held back by the cap since the last [`Outbox::ready`].
    pub(crate) fn held(&self) -> bool {
        self.held
    }

    /// Forgets `dest`'s queue (a batch out stays counted until its outcome).
    pub(crate) fn remove(&mut self, dest: &K) -> Option<VecDeque<T>> {
        let q = self.queues.remove(dest)?;
        if q.in_flight {
            // Its outcome will not find the queue: count the slot free now.
            self.out = self.out.saturating_sub(1);
        }
        Some(q.items)
    }

    /// Every destination's queue, emptied (on close).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (K, VecDeque<T>)> + '_ {
        self.out = 0;
        self.queues.drain().map(|(k, q)| (k, q.items))
    }

    /// Batches out now.
    #[cfg(test)]
    pub(crate) fn out(&self) -> usize {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Weigh for u32 {
        fn weight(&self) -> usize {
            *self as usize
        }
    }

    const BACKOFF: Backoff = Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(4),
    };

    fn all(_: &u32, _: usize, _: usize) -> Pick {
        Pick::Take
    }

    #[test]
    fn one_batch_in_flight_per_destination_in_order() {
        let t0 = Instant::now();
        let mut o = Outbox::new(BACKOFF, usize::MAX);
        assert!(o.push(1u8, 10u32));
        assert!(!o.push(1, 11));
        assert_eq!(o.take(&1, t0, all), Some(vec![10, 11]));
        assert!(o.push(1, 12), "the queue emptied when its batch went");
        assert_eq!(o.take(&1, t0, all), None, "a batch is out");
        o.done(&1);
        assert_eq!(o.take(&1, t0, all), Some(vec![12]));
        o.done(&1);
        assert!(o.get(&1).is_none(), "an emptied queue is forgotten");
    }

    #[test]
    fn a_batch_ends_where_pick_says_and_takes_at_least_one() {
        let t0 = Instant::now();
        let mut o = Outbox::new(BACKOFF, usize::MAX);
        o.extend(7u8, [100u32, 1, 2, 3]);
        let under_50 = |x: &u32, n: usize, bytes: usize| {
            if n > 0 && bytes + *x as usize > 50 {
                Pick::Stop
            } else {
                Pick::Take
            }
        };
        assert_eq!(o.take(&7, t0, under_50), Some(vec![100]));
        o.done(&7);
        let drop_even = |x: &u32, _: usize, _: usize| {
            if x.is_multiple_of(2) {
                Pick::Drop
            } else {
                Pick::Take
            }
        };
        assert_eq!(o.take(&7, t0, drop_even), Some(vec![1, 3]));
        assert!(o.get(&7).is_none_or(|q| q.items().len() == 0));
    }

    #[test]
    fn failures_back_off_doubling_up_to_the_most_and_success_resets() {
        let t0 = Instant::now();
        let mut o = Outbox::new(BACKOFF, usize::MAX);
        o.extend(1u8, [1u32, 2]);
        let mut now = t0;
        let mut rests = Vec::new();
        for _ in 0..6 {
            let batch = o.take(&1, now, all).expect("the rest is over");
            assert_eq!(batch, vec![1, 2], "a failed batch goes again first, whole");
            let at = o.failed(1, now, batch);
            rests.push(at - now);
            assert!(!o.may_send(&1, at - Duration::from_millis(1)));
            assert!(o.may_send(&1, at));
            now = at;
        }
        let ms: Vec<u128> = rests.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 4000, 4000]);
        let batch = o.take(&1, now, all).expect("due");
        o.done(&1);
        o.extend(1, batch);
        let batch = o.take(&1, now, all).expect("no rest after a success");
        assert_eq!(o.failed(1, now, batch) - now, Duration::from_millis(500));
    }

    #[test]
    fn the_cap_holds_batches_back_until_a_slot_frees() {
        let t0 = Instant::now();
        let mut o = Outbox::new(BACKOFF, 2);
        for d in 0u8..3 {
            o.push(d, u32::from(d));
        }
        let sent: Vec<u8> = (0u8..3).filter(|d| o.take(d, t0, all).is_some()).collect();
        assert_eq!(sent.len(), 2);
        assert!(o.held());
        let waiting = (0u8..3).find(|d| !sent.contains(d)).expect("one waits");
        o.done(&sent[0]);
        assert_eq!(o.ready(t0), vec![waiting]);
        assert!(!o.held());
        assert!(o.take(&waiting, t0, all).is_some());
        assert_eq!(o.out(), 2);
        // A removed in-flight queue frees its slot.
        o.remove(&sent[1]);
        assert_eq!(o.out(), 1);
    }
}
