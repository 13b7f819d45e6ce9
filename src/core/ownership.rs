//! Who owns a peer id, without I/O: the conflicts holders report, and the
//! registration checks behind [`crate::Peer::registered`].
//!
//! A holder refuses a registration of an id another live host holds (see
//! [`crate::directory`]) and names that host. The registering host then
//! withdraws the id from every holder at once (some may have taken it, if
//! they did not hold the first's entry yet), so that it never resolves to
//! the duplicate, and tries again a few times: a real move (removed on one
//! host, created on another) races the first host's withdrawal, which
//! lands within a directory round. If the id is still taken after the
//! last try, the local peer is removed (its receivers end) and the id is
//! remembered as lost to the owner, which `registered()` reports.
//!
//! A registration check asks every holder where the id lives. One that
//! finds it still pending is parked, not answered: it is made again when a
//! holder acknowledges the id's operations (or after [`PARKED_RECHECK`]),
//! so a waiting caller hears within a round trip of the last holder taking
//! it instead of polling (a 50 ms poll made a `create_unique` take 32.6 ms
//! on three in-memory hosts; parked, 20.9 ms).

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use libp2p::PeerId;
use lru::LruCache;

use crate::{
    command::RegStatus,
    directory::{DirOp, Id},
};

/// Registrations of a contested id, the first included.
const ATTEMPTS: u8 = 4;
/// Wait between them.
const RETRY: Duration = Duration::from_millis(500);
/// A contest with no conflict for this long is over: the id is ours.
const SETTLED: Duration = Duration::from_secs(3);
/// Most ids contested at once (more are lost at their first conflict).
const MAX_CONTESTED: usize = 65_536;
/// Lost ids remembered for `registered()`.
const LOST: usize = 4096;
/// Registration checks parked at once, at most: past this a pending check
/// is answered `Pending` at once (its caller asks again a little later).
const MAX_PARKED: usize = 65_536;
/// A parked check is made again after this even without news of its id
/// (its holders may have changed, or its news come by another path).
const PARKED_RECHECK: Duration = Duration::from_millis(500);

/// An id another host holds, being registered again.
#[derive(Debug)]
struct Contest {
    attempts: u8,
    owner: PeerId,
    last_conflict: Instant,
    retry_at: Option<Instant>,
}

/// A registration check: the holders' answers to a lookup of the id; `R`
/// answers its caller.
#[derive(Debug)]
struct Check<R> {
    id: Id,
    waiting: usize,
    status: RegStatus,
    reply: R,
}

/// A check that found the id pending, waiting for news of it.
#[derive(Debug)]
struct Parked<R> {
    reply: R,
    since: Instant,
}

/// What the loop is to do.
#[derive(Debug)]
pub(crate) enum Effect<R> {
    /// Send `op` to each holder of its id.
    TellHolders(DirOp),
    /// The id belongs to `owner`: remove the local peer (its receivers
    /// end). Its holders are told to withdraw it already.
    Lose { id: Id, owner: PeerId },
    /// Ask each of `holders` where `id` lives (a lookup), answering with
    /// [`Ownership::on_check_answer`] and `check`.
    Ask {
        check: u64,
        id: Id,
        holders: Vec<PeerId>,
    },
    /// Answer a registration check.
    Answer { reply: R, status: RegStatus },
}

/// The ids this host registers that other hosts hold, the ids it lost,
/// and the registration checks under way.
#[derive(Debug)]
pub(crate) struct Ownership<R> {
    contested: HashMap<Id, Contest>,
    lost: LruCache<Id, PeerId>,
    checks: HashMap<u64, Check<R>>,
    next_check: u64,
    parked: HashMap<Id, Vec<Parked<R>>>,
    parked_count: usize,
}

impl<R> Default for Ownership<R> {
    fn default() -> Self {
        Ownership {
            contested: HashMap::new(),
            lost: super::growing_lru(NonZeroUsize::new(LOST).unwrap_or(NonZeroUsize::MIN)),
            checks: HashMap::new(),
            next_check: 0,
            parked: HashMap::new(),
            parked_count: 0,
        }
    }
}

impl<R> Ownership<R> {
    /// Whether `id` is contested here (it must not be answered as ours).
    pub(crate) fn is_contested(&self, id: &str) -> bool {
        self.contested.contains_key(id)
    }

    /// Holders named other hosts as owners of these ids; `ours` says
    /// whether a peer with the id lives on this host (`local`).
    pub(crate) fn on_conflicts(
        &mut self,
        conflicts: Vec<(Id, PeerId)>,
        local: PeerId,
        ours: impl Fn(&Id) -> bool,
        now: Instant,
        out: &mut Vec<Effect<R>>,
    ) {
        for (id, owner) in conflicts {
            if owner == local || !ours(&id) {
                continue;
            }
            if !self.contested.contains_key(&id) && self.contested.len() >= MAX_CONTESTED {
                self.lose(id, owner, out);
                continue;
            }
            let c = self.contested.entry(id.clone()).or_insert(Contest {
                attempts: 1,
                owner,
                last_conflict: now,
                retry_at: None,
            });
            c.owner = owner;
            c.last_conflict = now;
            if c.retry_at.is_some() {
                continue; // a conflict of the same attempt, from another holder
            }
            if c.attempts >= ATTEMPTS {
                self.lose(id, owner, out);
                continue;
            }
            c.retry_at = Some(now + RETRY);
            tracing::debug!(%id, %owner, attempt = c.attempts, "peer id held by another host");
            // Holders that did take it must not resolve it here meanwhile.
            out.push(Effect::TellHolders(DirOp::Withdraw(id)));
        }
    }

    /// Registers contested ids again when their time comes (those still
    /// `ours`); ends settled contests. Whether any contest goes on (the
    /// loop then ticks soon).
    pub(crate) fn retry(
        &mut self,
        now: Instant,
        ours: impl Fn(&Id) -> bool,
        out: &mut Vec<Effect<R>>,
    ) -> bool {
        if self.contested.is_empty() {
            return false;
        }
        self.contested.retain(|id, c| {
            if c.retry_at.is_some_and(|t| t <= now) {
                c.retry_at = None;
                c.attempts += 1;
                if ours(id) {
                    out.push(Effect::TellHolders(DirOp::Register(id.clone())));
                }
            }
            c.retry_at.is_some() || now.duration_since(c.last_conflict) < SETTLED
        });
        true
    }

    /// Gives up an id another host holds.
    fn lose(&mut self, id: Id, owner: PeerId, out: &mut Vec<Effect<R>>) {
        self.contested.remove(&id);
        out.push(Effect::TellHolders(DirOp::Withdraw(id.clone())));
        self.lost.put(id.clone(), owner);
        out.push(Effect::Lose { id, owner });
    }

    /// `Peer::registered` for `id`: `ours` if a peer with it lives on this
    /// host (`local`), `holders` its holders, `local_holds` whether this
    /// host's own store, if it is a holder, resolves it here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check(
        &mut self,
        id: Id,
        ours: bool,
        holders: Vec<PeerId>,
        local: PeerId,
        local_holds: bool,
        reply: R,
        now: Instant,
        out: &mut Vec<Effect<R>>,
    ) {
        if !ours {
            let status = match self.lost.get(&id) {
                Some(owner) => RegStatus::Lost(*owner),
                None => RegStatus::Removed,
            };
            out.push(Effect::Answer { reply, status });
            return;
        }
        if self.is_contested(&id) {
            out.push(Effect::Answer {
                reply,
                status: RegStatus::Pending,
            });
            return;
        }
        let check = self.next_check;
        self.next_check += 1;
        let mut state = Check {
            id: id.clone(),
            waiting: 0,
            status: RegStatus::Registered,
            reply,
        };
        let mut ask = Vec::with_capacity(holders.len());
        for h in holders {
            if h == local {
                if !local_holds {
                    state.status = RegStatus::Pending;
                }
            } else {
                ask.push(h);
            }
        }
        state.waiting = ask.len();
        if state.waiting == 0 {
            self.finish(state, now, out);
            return;
        }
        self.checks.insert(check, state);
        out.push(Effect::Ask {
            check,
            id,
            holders: ask,
        });
    }

    /// A holder's answer to check `check`: whether it resolves the id to
    /// this host.
    pub(crate) fn on_check_answer(
        &mut self,
        check: u64,
        here: bool,
        now: Instant,
        out: &mut Vec<Effect<R>>,
    ) {
        let Some(state) = self.checks.get_mut(&check) else {
            return;
        };
        if !here {
            state.status = RegStatus::Pending;
        }
        state.waiting = state.waiting.saturating_sub(1);
        if state.waiting == 0 {
            if let Some(state) = self.checks.remove(&check) {
                self.finish(state, now, out);
            }
        }
    }

    /// Answers a finished check, or parks it if the id is still pending.
    fn finish(&mut self, state: Check<R>, now: Instant, out: &mut Vec<Effect<R>>) {
        if state.status != RegStatus::Pending || self.parked_count >= MAX_PARKED {
            out.push(Effect::Answer {
                reply: state.reply,
                status: state.status,
            });
            return;
        }
        self.parked_count += 1;
        self.parked.entry(state.id).or_default().push(Parked {
            reply: state.reply,
            since: now,
        });
    }

    /// News of these ids (a holder took their operations): their parked
    /// checks, to be made again once the operations are applied.
    pub(crate) fn news(&mut self, ops: &[DirOp]) -> Vec<(Id, Vec<R>)> {
        if self.parked.is_empty() {
            return Vec::new();
        }
        let mut due = Vec::new();
        for op in ops {
            let (DirOp::Register(id) | DirOp::Withdraw(id)) = op;
            if let Some(waiting) = self.parked.remove(id) {
                due.push((id.clone(), self.unpark(waiting)));
            }
        }
        due
    }

    /// The parked checks that waited [`PARKED_RECHECK`] for news, to be
    /// made again.
    pub(crate) fn overdue(&mut self, now: Instant) -> Vec<(Id, Vec<R>)> {
        if self.parked.is_empty() {
            return Vec::new();
        }
        let mut due = Vec::new();
        self.parked.retain(|id, waiting| {
            if waiting
                .iter()
                .any(|p| now.duration_since(p.since) >= PARKED_RECHECK)
            {
                due.push((id.clone(), std::mem::take(waiting)));
                return false;
            }
            true
        });
        due.into_iter()
            .map(|(id, waiting)| (id, self.unpark(waiting)))
            .collect()
    }

    fn unpark(&mut self, waiting: Vec<Parked<R>>) -> Vec<R> {
        self.parked_count = self.parked_count.saturating_sub(waiting.len());
        waiting.into_iter().map(|p| p.reply).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Own = Ownership<u32>;
    type Effects = Vec<Effect<u32>>;

    fn id(s: &str) -> Id {
        Id::from(s)
    }

    fn ops(out: &Effects) -> Vec<String> {
        out.iter()
            .filter_map(|e| match e {
                Effect::TellHolders(DirOp::Register(id)) => Some(format!("register {id}")),
                Effect::TellHolders(DirOp::Withdraw(id)) => Some(format!("withdraw {id}")),
                Effect::Lose { id, .. } => Some(format!("lose {id}")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_contested_id_is_withdrawn_registered_again_in_turn_and_lost_after_the_last_try() {
        let (mut o, local, owner) = (Own::default(), PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut out = Effects::new();
        let conflict = || vec![(id("p"), owner)];
        o.on_conflicts(conflict(), local, |_| true, t0, &mut out);
        assert_eq!(ops(&out), ["withdraw p"]);
        assert!(o.is_contested("p"));
        // Another holder's conflict for the same attempt changes nothing.
        o.on_conflicts(conflict(), local, |_| true, t0, &mut out);
        assert_eq!(ops(&out).len(), 1);
        out.clear();
        let mut t = t0;
        for attempt in 2..=ATTEMPTS {
            assert!(o.retry(t + RETRY - Duration::from_millis(1), |_| true, &mut out));
            assert!(out.is_empty(), "not before the wait");
            t += RETRY;
            o.retry(t, |_| true, &mut out);
            assert_eq!(ops(&out), ["register p"], "attempt {attempt}");
            out.clear();
            o.on_conflicts(conflict(), local, |_| true, t, &mut out);
            if attempt < ATTEMPTS {
                assert_eq!(ops(&out), ["withdraw p"]);
                out.clear();
            }
        }
        assert_eq!(ops(&out), ["withdraw p", "lose p"]);
        assert!(!o.is_contested("p"));
        // `registered()` then says who has it.
        out.clear();
        o.check(id("p"), false, vec![], local, false, 1, t, &mut out);
        assert!(
            matches!(out[..], [Effect::Answer { reply: 1, status: RegStatus::Lost(o) }] if o == owner)
        );
    }

    #[test]
    fn a_contest_with_no_conflict_for_a_while_is_won() {
        let (mut o, local, owner) = (Own::default(), PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut out = Effects::new();
        o.on_conflicts(vec![(id("p"), owner)], local, |_| true, t0, &mut out);
        o.retry(t0 + RETRY, |_| true, &mut out);
        assert!(o.is_contested("p"));
        o.retry(t0 + SETTLED - Duration::from_millis(1), |_| true, &mut out);
        assert!(o.is_contested("p"));
        o.retry(t0 + SETTLED, |_| true, &mut out);
        assert!(!o.is_contested("p"), "no conflict since: the id is ours");
        assert!(!o.retry(t0 + SETTLED, |_| true, &mut out));
        // Conflicts for ids not on this host, or naming it, are ignored.
        out.clear();
        o.on_conflicts(
            vec![(id("q"), owner), (id("p"), local)],
            local,
            |i| i.as_ref() != "q",
            t0,
            &mut out,
        );
        assert!(out.is_empty() && !o.is_contested("p"));
    }

    #[test]
    fn a_pending_check_is_parked_until_news_of_its_id_or_a_while() {
        let (mut o, local) = (Own::default(), PeerId::random());
        let (h1, h2) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut out = Effects::new();
        o.check(
            id("p"),
            true,
            vec![h1, local, h2],
            local,
            true,
            7,
            t0,
            &mut out,
        );
        let Some(Effect::Ask { check, holders, .. }) = out.pop() else {
            panic!("the other holders are asked");
        };
        assert_eq!(holders, vec![h1, h2]);
        o.on_check_answer(check, true, t0, &mut out);
        o.on_check_answer(check, false, t0, &mut out);
        assert!(
            out.is_empty(),
            "h2 does not have it yet: parked, not answered"
        );
        // News of another id changes nothing; news of this one unparks it.
        assert!(o.news(&[DirOp::Register(id("q"))]).is_empty());
        assert_eq!(
            o.news(&[DirOp::Register(id("p"))]),
            vec![(id("p"), vec![7])]
        );

        // Every holder agrees: registered at once.
        o.check(id("p"), true, vec![local], local, true, 8, t0, &mut out);
        assert!(matches!(
            out[..],
            [Effect::Answer {
                reply: 8,
                status: RegStatus::Registered
            }]
        ));
        out.clear();
        // This host holds it but does not have it yet: parked, then made
        // again after a while without news.
        o.check(id("p"), true, vec![local], local, false, 9, t0, &mut out);
        assert!(out.is_empty());
        assert!(o
            .overdue(t0 + PARKED_RECHECK - Duration::from_millis(1))
            .is_empty());
        assert_eq!(o.overdue(t0 + PARKED_RECHECK), vec![(id("p"), vec![9])]);
    }
}
