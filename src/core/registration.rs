//! Registration: this host tells the holders of its peers' directory
//! entries where they live, in batches, and moves them when the membership
//! changes.
//!
//! The decisions only: which holders get which operations, when a batch
//! may go, retries, what a membership change moves and when the holder
//! side trims. The event loop turns [`DirSend`]s into requests and reports
//! their outcomes back.

use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::outbox::{Backoff, Outbox, Pick, Weigh};
use crate::directory::{closest_sorted, key_of, DirOp, DirectoryStore, Id};

/// Most operations in one directory request.
pub(crate) const MAX_DIR_BATCH: usize = 65_536;
/// After a batch of local changes went out, new ones gather this long
/// before the next: a burst of creates becomes a few large batches rather
/// than many small requests.
pub(crate) const DIR_GATHER: Duration = Duration::from_millis(10);
/// How long a holder rests after a failed batch (doubling while failures
/// continue).
const DIR_RETRY: Backoff = Backoff {
    first: Duration::from_millis(500),
    max: Duration::from_secs(4),
};
/// Most directory requests in flight from one host, over all holders: a
/// burst of creates in a network of hundreds of hosts does not put a
/// request to every holder on the wire at once, and the queues behind keep
/// gathering, so later batches are larger. In a relaying network the
/// requests to one group travel in one bundle through its contact, so the
/// cap leaves room for every holder's (at 512 hosts, a cap of 64 left one
/// or two requests per bundle).
pub(crate) const MAX_DIR_IN_FLIGHT: usize = 1024;

impl Weigh for DirOp {}

/// A local peer created (`register`) or removed, as the registry reports it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub register: bool,
    pub id: Id,
    pub key: u64,
}

/// What the loop is to do with directory operations.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DirSend {
    /// Apply them to this host's own store (it is one of the holders).
    Here(Vec<DirOp>),
    /// Send them to `holder` in one request, and report the outcome with
    /// [`Registration::on_result`].
    To { holder: PeerId, ops: Vec<DirOp> },
}

/// The registration concern's state.
#[derive(Debug)]
pub(crate) struct Registration {
    local: PeerId,
    replication: usize,
    queues: Outbox<PeerId, DirOp>,
    /// When the last local changes went out (they gather after it).
    last_publish: Option<Instant>,
    /// The member keys (ordered by key) the local entries were last
    /// placed for, and the membership version they were checked against.
    placed: Vec<(u64, PeerId)>,
    placed_version: u64,
    /// When the holder side drops what it no longer holds.
    trim_due: Option<Instant>,
}

impl Registration {
    /// The state of a host whose membership has `keys`.
    pub(crate) fn new(local: PeerId, replication: usize, keys: &[(u64, PeerId)]) -> Self {
        // Kept ordered by key, as `rebalance` is given them.
        let mut placed = keys.to_vec();
        placed.sort_unstable();
        Registration {
            local,
            replication: replication.max(1),
            queues: Outbox::new(DIR_RETRY, MAX_DIR_IN_FLIGHT),
            last_publish: None,
            placed,
            placed_version: 0,
            trim_due: None,
        }
    }

    /// The same with at most `cap` requests in flight (tests).
    #[cfg(test)]
    fn with_cap(mut self, cap: usize) -> Self {
        self.queues = Outbox::new(DIR_RETRY, cap);
        self
    }

    /// Whether local changes must gather a little longer (until
    /// [`DIR_GATHER`] after the last publish); the loop calls again soon.
    pub(crate) fn gathering(&self, now: Instant) -> bool {
        self.last_publish
            .is_some_and(|t| now.saturating_duration_since(t) < DIR_GATHER)
    }

    /// Sends the local `changes` to their holders (the replication
    /// closest of `keys`, every live host ordered by key, to each id's
    /// key). Each holder's operations are appended to its queue once: no
    /// host id is hashed or copied per operation.
    pub(crate) fn publish(
        &mut self,
        now: Instant,
        changes: Vec<Change>,
        keys: &[(u64, PeerId)],
        out: &mut Vec<DirSend>,
    ) {
        self.last_publish = Some(now);
        if changes.is_empty() {
            return;
        }
        let mut per_holder: Vec<Vec<DirOp>> = vec![Vec::new(); keys.len()];
        let mut best = Vec::with_capacity(self.replication + 1);
        for c in changes {
            closest_sorted(keys, c.key, self.replication, &mut best);
            let op = if c.register {
                DirOp::Register(c.id)
            } else {
                DirOp::Withdraw(c.id)
            };
            for &(_, i) in &best {
                if let Some(ops) = per_holder.get_mut(i as usize) {
                    ops.push(op.clone());
                }
            }
        }
        for (i, ops) in per_holder.into_iter().enumerate() {
            if let (false, Some(&(_, holder))) = (ops.is_empty(), keys.get(i)) {
                self.send(now, holder, ops, out);
            }
        }
    }

    /// Gives `holder` these operations: applied here if it is this host,
    /// else queued behind what waits for it and sent when it may.
    pub(crate) fn send(
        &mut self,
        now: Instant,
        holder: PeerId,
        ops: Vec<DirOp>,
        out: &mut Vec<DirSend>,
    ) {
        if holder == self.local {
            out.push(DirSend::Here(ops));
        } else {
            self.queues.extend(holder, ops);
            self.flush(now, holder, out);
        }
    }

    fn flush(&mut self, now: Instant, holder: PeerId, out: &mut Vec<DirSend>) {
        let batch = self.queues.take(&holder, now, |_, n, _| {
            if n < MAX_DIR_BATCH {
                Pick::Take
            } else {
                Pick::Stop
            }
        });
        if let Some(ops) = batch {
            out.push(DirSend::To { holder, ops });
        }
    }

    /// The outcome of a batch sent to `holder`: on failure its operations
    /// go again after a rest while `holder` is still a member, and are
    /// dropped if it is not (its entries move to other holders by
    /// [`Registration::rebalance`]).
    pub(crate) fn on_result(
        &mut self,
        now: Instant,
        holder: PeerId,
        ops: Vec<DirOp>,
        ok: bool,
        still_member: bool,
        out: &mut Vec<DirSend>,
    ) {
        let freed = self.queues.held();
        if ok {
            self.queues.done(&holder);
        } else if still_member {
            self.queues.failed(holder, now, ops);
        } else {
            self.queues.done(&holder);
        }
        if !still_member {
            self.queues.remove(&holder);
        } else {
            self.flush(now, holder, out);
        }
        if freed {
            // Batches the cap held back take the slot this one freed.
            for h in self.queues.ready(now) {
                self.flush(now, h, out);
            }
        }
    }

    /// Sends the batches whose rest is over; queues of holders that left
    /// are dropped.
    pub(crate) fn retry(
        &mut self,
        now: Instant,
        is_member: impl Fn(&PeerId) -> bool,
        out: &mut Vec<DirSend>,
    ) {
        for h in self.queues.ready(now) {
            if is_member(&h) {
                self.flush(now, h, out);
            } else {
                self.queues.remove(&h);
            }
        }
    }

    /// `holder` left: what waited for it is dropped.
    pub(crate) fn forget(&mut self, holder: &PeerId) {
        self.queues.remove(holder);
    }

    /// After the membership (at `version`, with `keys` ordered by key)
    /// changed: registers every local peer (`each_local` lists them with
    /// their keys) with the holders that became responsible for it, and
    /// schedules trimming what this host holds after `settle` (time for the
    /// owners of entries to register with their new holders: they learn of
    /// the change by the same gossip). Cheap when nothing changed.
    pub(crate) fn rebalance(
        &mut self,
        now: Instant,
        version: u64,
        keys: &[(u64, PeerId)],
        settle: Duration,
        each_local: impl FnOnce(&mut dyn FnMut(&str, u64)),
        out: &mut Vec<DirSend>,
    ) {
        // Called every tick: compare versions, not the key lists (O(hosts)).
        if self.placed_version == version {
            return;
        }
        self.placed_version = version;
        if self.placed.as_slice() == keys {
            return;
        }
        self.trim_due = Some(now + settle);
        let old = std::mem::replace(&mut self.placed, keys.to_vec());
        let r = self.replication;
        let mut moves: foldhash::HashMap<PeerId, Vec<DirOp>> = Default::default();
        let (mut before, mut after) = (Vec::with_capacity(r + 1), Vec::with_capacity(r + 1));
        each_local(&mut |id, key| {
            closest_sorted(&old, key, r, &mut before);
            closest_sorted(keys, key, r, &mut after);
            for &(_, i) in &after {
                let h = keys[i as usize].1;
                if !before.iter().any(|&(_, j)| old[j as usize].1 == h) {
                    moves
                        .entry(h)
                        .or_default()
                        .push(DirOp::Register(Id::from(id)));
                }
            }
        });
        for (holder, ops) in moves {
            self.send(now, holder, ops, out);
        }
    }

    /// A holder dropped this host's entries (a false lapse): registers
    /// with it again every local peer it is among the closest hosts for
    /// (of `keys`, ordered by key).
    pub(crate) fn resync(
        &mut self,
        now: Instant,
        holder: PeerId,
        keys: &[(u64, PeerId)],
        each_local: impl FnOnce(&mut dyn FnMut(&str, u64)),
        out: &mut Vec<DirSend>,
    ) -> usize {
        let r = self.replication;
        let Some(target) = keys.iter().position(|(_, h)| *h == holder) else {
            return 0;
        };
        let mut ops = Vec::new();
        let mut best = Vec::with_capacity(r + 1);
        each_local(&mut |id, key| {
            closest_sorted(keys, key, r, &mut best);
            if best.iter().any(|&(_, i)| i as usize == target) {
                ops.push(DirOp::Register(Id::from(id)));
            }
        });
        let n = ops.len();
        self.send(now, holder, ops, out);
        n
    }

    /// Once the membership has settled after a change: drops the entries
    /// of `store` whose closest hosts (of `keys`, ordered by key) no longer
    /// include this one; how many.
    pub(crate) fn trim(
        &mut self,
        now: Instant,
        keys: &[(u64, PeerId)],
        store: &mut DirectoryStore,
    ) -> usize {
        if self.trim_due.is_none_or(|t| t > now) {
            return 0;
        }
        self.trim_due = None;
        let r = self.replication;
        if keys.len() <= r {
            return 0; // every host holds everything
        }
        let Some(me) = keys.iter().position(|(_, h)| *h == self.local) else {
            return 0;
        };
        let before = store.len();
        let mut best = Vec::with_capacity(r + 1);
        store.retain(|id| {
            closest_sorted(keys, key_of(id.as_bytes()), r, &mut best);
            best.iter().any(|&(_, i)| i as usize == me)
        });
        before - store.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn hosts(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    fn keys_of(hosts: &[PeerId]) -> Vec<(u64, PeerId)> {
        let mut k: Vec<(u64, PeerId)> = hosts.iter().map(|h| (key_of(&h.to_bytes()), *h)).collect();
        k.sort();
        k
    }

    /// The `r` hosts closest to `key` by XOR, computed the slow way.
    fn brute_closest(keys: &[(u64, PeerId)], key: u64, r: usize) -> BTreeSet<PeerId> {
        let mut v: Vec<(u64, PeerId)> = keys.iter().map(|(k, h)| (k ^ key, *h)).collect();
        v.sort();
        v.into_iter().take(r).map(|(_, h)| h).collect()
    }

    fn ids(n: usize) -> Vec<(Id, u64)> {
        (0..n)
            .map(|i| {
                let id = Id::from(format!("peer-{i}"));
                let key = key_of(id.as_bytes());
                (id, key)
            })
            .collect()
    }

    fn changes(ids: &[(Id, u64)]) -> Vec<Change> {
        ids.iter()
            .map(|(id, key)| Change {
                register: true,
                id: id.clone(),
                key: *key,
            })
            .collect()
    }

    fn sent_to(out: &[DirSend]) -> BTreeMap<PeerId, usize> {
        let mut m = BTreeMap::new();
        for s in out {
            if let DirSend::To { holder, ops } = s {
                *m.entry(*holder).or_default() += ops.len();
            }
        }
        m
    }

    #[test]
    fn changes_go_to_each_of_their_holders_in_one_batch_and_then_gather() {
        let hs = hosts(6);
        let keys = keys_of(&hs);
        let me = hs[0];
        let t0 = Instant::now();
        let mut reg = Registration::new(me, 3, &keys);
        assert!(!reg.gathering(t0));
        let peers = ids(300);
        let mut out = Vec::new();
        reg.publish(t0, changes(&peers), &keys, &mut out);
        // Every id reaches exactly its 3 closest hosts; ours by `Here`.
        let mut expected: BTreeMap<PeerId, usize> = BTreeMap::new();
        for (_, key) in &peers {
            for h in brute_closest(&keys, *key, 3) {
                *expected.entry(h).or_default() += 1;
            }
        }
        let here: usize = out
            .iter()
            .map(|s| match s {
                DirSend::Here(ops) => ops.len(),
                DirSend::To { .. } => 0,
            })
            .sum();
        assert_eq!(here, expected.remove(&me).unwrap_or(0));
        assert_eq!(sent_to(&out), expected);
        assert_eq!(
            out.iter()
                .filter(|s| matches!(s, DirSend::To { .. }))
                .count(),
            expected.len(),
            "one request per holder"
        );
        assert!(reg.gathering(t0 + DIR_GATHER - Duration::from_micros(1)));
        assert!(!reg.gathering(t0 + DIR_GATHER));
    }

    #[test]
    fn a_holder_with_a_batch_out_gets_the_next_only_after_its_answer() {
        let hs = hosts(2);
        let keys = keys_of(&hs);
        let t0 = Instant::now();
        let mut reg = Registration::new(hs[0], 2, &keys);
        let mut out = Vec::new();
        reg.publish(t0, changes(&ids(5)), &keys, &mut out);
        let Some(DirSend::To { ops: first, .. }) =
            out.iter().find(|s| matches!(s, DirSend::To { .. }))
        else {
            panic!("a batch for the other host");
        };
        let first = first.clone();
        out.clear();
        reg.publish(t0 + DIR_GATHER, changes(&ids(8)[5..]), &keys, &mut out);
        assert_eq!(sent_to(&out), BTreeMap::new(), "the first batch is out");
        out.clear();
        reg.on_result(t0 + DIR_GATHER, hs[1], first, true, true, &mut out);
        assert_eq!(sent_to(&out), BTreeMap::from([(hs[1], 3)]));
    }

    #[test]
    fn failed_batches_rest_longer_each_time_then_go_whole() {
        let hs = hosts(2);
        let keys = keys_of(&hs);
        let t0 = Instant::now();
        let mut reg = Registration::new(hs[0], 2, &keys);
        let mut out = Vec::new();
        reg.publish(t0, changes(&ids(4)), &keys, &mut out);
        out.retain(|s| matches!(s, DirSend::To { .. }));
        let mut now = t0;
        let mut rests = Vec::new();
        for _ in 0..4 {
            let Some(DirSend::To { ops, .. }) = out.pop() else {
                panic!("a batch went");
            };
            assert_eq!(ops.len(), 4);
            out.clear();
            reg.on_result(now, hs[1], ops, false, true, &mut out);
            assert!(out.is_empty(), "no resend before the rest");
            // Step a fake clock 100 ms at a time until the resend.
            let failed_at = now;
            for _ in 0..100 {
                now += Duration::from_millis(100);
                reg.retry(now, |_| true, &mut out);
                if !out.is_empty() {
                    break;
                }
            }
            rests.push((now - failed_at).as_millis());
        }
        assert_eq!(rests, [500, 1000, 2000, 4000]);
        // A holder that left: its queue is dropped, not resent.
        let Some(DirSend::To { ops, .. }) = out.pop() else {
            panic!("a batch went");
        };
        reg.on_result(now, hs[1], ops, false, false, &mut out);
        reg.retry(now + Duration::from_secs(60), |_| false, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn the_in_flight_cap_holds_holders_back_until_an_answer() {
        let hs = hosts(5);
        let keys = keys_of(&hs);
        let t0 = Instant::now();
        let mut reg = Registration::new(hs[0], 5, &keys).with_cap(2);
        let mut out = Vec::new();
        reg.publish(t0, changes(&ids(1)), &keys, &mut out);
        let sent: Vec<(PeerId, Vec<DirOp>)> = out
            .drain(..)
            .filter_map(|s| match s {
                DirSend::To { holder, ops } => Some((holder, ops)),
                DirSend::Here(_) => None,
            })
            .collect();
        assert_eq!(sent.len(), 2, "4 holders, 2 slots");
        let (h, ops) = sent[0].clone();
        reg.on_result(t0, h, ops, true, true, &mut out);
        assert_eq!(
            sent_to(&out).len(),
            1,
            "the freed slot goes to a held holder"
        );
    }

    #[test]
    fn a_join_moves_exactly_the_entries_whose_holders_changed() {
        let hs = hosts(9);
        let (before, joiner) = (&hs[..8], hs[8]);
        let (old, new) = (keys_of(before), keys_of(&hs));
        let me = hs[0];
        let t0 = Instant::now();
        let settle = Duration::from_secs(2);
        let mut reg = Registration::new(me, 3, &old);
        let peers = ids(2000);
        let mut out = Vec::new();
        reg.rebalance(
            t0,
            1,
            &new,
            settle,
            |f| peers.iter().for_each(|(id, k)| f(id, *k)),
            &mut out,
        );
        let mut expected: BTreeMap<PeerId, BTreeSet<Id>> = BTreeMap::new();
        for (id, key) in &peers {
            let was = brute_closest(&old, *key, 3);
            for h in brute_closest(&new, *key, 3) {
                if !was.contains(&h) {
                    expected.entry(h).or_default().insert(id.clone());
                }
            }
        }
        assert_eq!(
            expected.keys().collect::<Vec<_>>(),
            vec![&joiner],
            "only the joiner gains"
        );
        let mut got: BTreeMap<PeerId, BTreeSet<Id>> = BTreeMap::new();
        for s in &out {
            let DirSend::To { holder, ops } = s else {
                panic!("nothing is applied here");
            };
            for op in ops {
                let DirOp::Register(id) = op else {
                    panic!("a rebalance only registers");
                };
                got.entry(*holder).or_default().insert(id.clone());
            }
        }
        assert_eq!(got, expected);
        assert!(!got.is_empty());
        // The same version again, or the same keys, move nothing.
        out.clear();
        reg.rebalance(t0, 1, &new, settle, |_| panic!("not listed"), &mut out);
        reg.rebalance(t0, 2, &new, settle, |_| panic!("not listed"), &mut out);
        assert!(out.is_empty());
        // The holder side trims only once the membership had time to settle.
        let mut store = DirectoryStore::new(1 << 20, 1 << 20);
        for (id, _) in &peers {
            let owner = PeerId::random();
            store.apply(owner, 1, vec![DirOp::Register(id.clone())]);
        }
        assert_eq!(
            reg.trim(t0 + settle - Duration::from_millis(1), &new, &mut store),
            0
        );
        let dropped = reg.trim(t0 + settle, &new, &mut store);
        let kept = peers
            .iter()
            .filter(|(_, k)| brute_closest(&new, *k, 3).contains(&me))
            .count();
        assert_eq!(store.len(), kept);
        assert_eq!(dropped, peers.len() - kept);
    }

    #[test]
    fn a_resync_registers_exactly_what_the_holder_should_hold() {
        let hs = hosts(7);
        let keys = keys_of(&hs);
        let t0 = Instant::now();
        let mut reg = Registration::new(hs[0], 2, &keys);
        let peers = ids(500);
        let mut out = Vec::new();
        let n = reg.resync(
            t0,
            hs[3],
            &keys,
            |f| peers.iter().for_each(|(id, k)| f(id, *k)),
            &mut out,
        );
        let expected = peers
            .iter()
            .filter(|(_, k)| brute_closest(&keys, *k, 2).contains(&hs[3]))
            .count();
        assert_eq!(n, expected);
        assert_eq!(sent_to(&out), BTreeMap::from([(hs[3], expected)]));
    }
}
