//! Who owns a peer id: the conflicts holders report, and the registration
//! checks behind [`crate::Peer::registered`].
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
use tokio::sync::oneshot;

use super::{EventLoop, Pending};
use crate::{
    command::RegStatus,
    directory::{closest, key_of, DirOp, Id},
    protocol::{Request, Response},
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

/// A registration check: the holders' answers to a lookup of the id.
#[derive(Debug)]
struct Check {
    id: Id,
    waiting: usize,
    status: RegStatus,
    reply: oneshot::Sender<RegStatus>,
}

/// A check that found the id pending, waiting for news of it: its caller
/// is answered when a holder acknowledges the id (or after
/// [`PARKED_RECHECK`]), not polled.
#[derive(Debug)]
pub(super) struct Parked {
    reply: oneshot::Sender<RegStatus>,
    since: Instant,
}

/// The ownership state of the loop.
#[derive(Debug)]
pub(crate) struct Ownership {
    contested: HashMap<Id, Contest>,
    lost: LruCache<Id, PeerId>,
    checks: HashMap<u64, Check>,
    next_check: u64,
    parked: HashMap<Id, Vec<Parked>>,
    parked_count: usize,
}

impl Default for Ownership {
    fn default() -> Self {
        Ownership {
            contested: HashMap::new(),
            lost: LruCache::new(NonZeroUsize::new(LOST).unwrap_or(NonZeroUsize::MIN)),
            checks: HashMap::new(),
            next_check: 0,
            parked: HashMap::new(),
            parked_count: 0,
        }
    }
}

impl Ownership {
    /// Whether `id` is contested here (it must not be answered as ours).
    pub(crate) fn is_contested(&self, id: &str) -> bool {
        self.contested.contains_key(id)
    }
}

impl EventLoop {
    /// Holders named other hosts as owners of these ids.
    pub(super) fn on_conflicts(&mut self, conflicts: Vec<(Id, PeerId)>) {
        let now = Instant::now();
        for (id, owner) in conflicts {
            if owner == self.local() || self.shared.registry.get(&id).is_none() {
                continue;
            }
            let own = &mut self.ownership;
            if !own.contested.contains_key(&id) && own.contested.len() >= MAX_CONTESTED {
                self.lose(id, owner);
                continue;
            }
            let c = own.contested.entry(id.clone()).or_insert(Contest {
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
                self.lose(id, owner);
                continue;
            }
            c.retry_at = Some(now + RETRY);
            tracing::debug!(%id, %owner, attempt = c.attempts, "peer id held by another host");
            // Holders that did take it must not resolve it here meanwhile.
            self.tell_holders(&id, DirOp::Withdraw(id.clone()));
        }
    }

    /// Registers contested ids again when their time comes; ends settled
    /// contests.
    pub(super) fn retry_contests(&mut self, now: Instant) {
        if self.ownership.contested.is_empty() {
            return;
        }
        self.wake_soon = true;
        let mut due = Vec::new();
        self.ownership.contested.retain(|id, c| {
            if c.retry_at.is_some_and(|t| t <= now) {
                c.retry_at = None;
                c.attempts += 1;
                due.push(id.clone());
            }
            c.retry_at.is_some() || now.duration_since(c.last_conflict) < SETTLED
        });
        for id in due {
            if self.shared.registry.get(&id).is_some() {
                self.tell_holders(&id, DirOp::Register(id.clone()));
            }
        }
    }

    /// Gives up an id another host holds: the local peer goes.
    fn lose(&mut self, id: Id, owner: PeerId) {
        tracing::info!(%id, %owner, "peer id belongs to another host; local peer removed");
        self.ownership.contested.remove(&id);
        self.tell_holders(&id, DirOp::Withdraw(id.clone()));
        self.shared.registry.remove(&id);
        self.ownership.lost.put(id, owner);
        crate::shared::bump(&self.shared.counters.ids_lost);
    }

    /// Sends `op` about `id` to each of its holders.
    fn tell_holders(&mut self, id: &str, op: DirOp) {
        let holders = closest(
            self.members.membership().keys(),
            key_of(id.as_bytes()),
            self.replication,
        );
        for h in holders {
            self.send_dir_ops(h, vec![op.clone()]);
        }
    }

    /// `Peer::registered`: asks every holder of `id` where it lives.
    pub(super) fn check_registration(&mut self, id: String, reply: oneshot::Sender<RegStatus>) {
        if self.shared.registry.get(&id).is_none() {
            let status = match self.ownership.lost.get(id.as_str()) {
                Some(owner) => RegStatus::Lost(*owner),
                None => RegStatus::Removed,
            };
            let _ = reply.send(status);
            return;
        }
        if self.ownership.is_contested(&id) {
            let _ = reply.send(RegStatus::Pending);
            return;
        }
        let holders = closest(
            self.members.membership().keys(),
            key_of(id.as_bytes()),
            self.replication,
        );
        let check = self.ownership.next_check;
        self.ownership.next_check += 1;
        let mut state = Check {
            id: Id::from(id.as_str()),
            waiting: 0,
            status: RegStatus::Registered,
            reply,
        };
        let local = self.local();
        for h in holders {
            if h == local {
                if self.store.lookup(&id) != Some(local) {
                    state.status = RegStatus::Pending;
                }
            } else {
                state.waiting += 1;
                let key = self.request(h, Request::Lookup(id.clone()));
                self.requests.insert(key, Pending::RegCheck { check });
            }
        }
        if state.waiting == 0 {
            self.answer_check(state);
        } else {
            self.ownership.checks.insert(check, state);
        }
    }

    /// Answers a finished check, or parks it if the id is still pending.
    fn answer_check(&mut self, state: Check) {
        let own = &mut self.ownership;
        if state.status != RegStatus::Pending || own.parked_count >= MAX_PARKED {
            let _ = state.reply.send(state.status);
            return;
        }
        own.parked_count += 1;
        own.parked.entry(state.id).or_default().push(Parked {
            reply: state.reply,
            since: Instant::now(),
        });
    }

    /// News of these ids (a holder took their operations): takes their
    /// parked checks, to be made again ([`EventLoop::recheck`]) once the
    /// operations are applied.
    pub(super) fn registration_news(&mut self, ops: &[DirOp]) -> Vec<(Id, Vec<Parked>)> {
        if self.ownership.parked.is_empty() {
            return Vec::new();
        }
        let mut due = Vec::new();
        for op in ops {
            let (DirOp::Register(id) | DirOp::Withdraw(id)) = op;
            if let Some(waiting) = self.ownership.parked.remove(id) {
                due.push((id.clone(), waiting));
            }
        }
        due
    }

    /// Makes parked checks again that waited [`PARKED_RECHECK`] for news.
    pub(super) fn recheck_parked(&mut self, now: Instant) {
        if self.ownership.parked.is_empty() {
            return;
        }
        let mut due = Vec::new();
        self.ownership.parked.retain(|id, waiting| {
            if waiting
                .iter()
                .any(|p| now.duration_since(p.since) >= PARKED_RECHECK)
            {
                due.push((id.clone(), std::mem::take(waiting)));
                return false;
            }
            true
        });
        self.recheck(due);
    }

    /// Makes these parked checks again.
    pub(super) fn recheck(&mut self, due: Vec<(Id, Vec<Parked>)>) {
        for (id, waiting) in due {
            let own = &mut self.ownership;
            own.parked_count = own.parked_count.saturating_sub(waiting.len());
            for p in waiting {
                // A caller that gave up is not asked about.
                if !p.reply.is_closed() {
                    self.check_registration(id.to_string(), p.reply);
                }
            }
        }
    }

    /// A holder's answer to a registration check.
    pub(super) fn on_reg_check_result(
        &mut self,
        check: u64,
        result: std::result::Result<Response, libp2p::request_response::OutboundFailure>,
    ) {
        let local = self.local();
        let Some(state) = self.ownership.checks.get_mut(&check) else {
            return;
        };
        let here = matches!(
            &result,
            Ok(Response::Location(Some(l))) if PeerId::from_bytes(&l.host).ok() == Some(local)
        );
        if !here {
            state.status = RegStatus::Pending;
        }
        state.waiting = state.waiting.saturating_sub(1);
        if state.waiting == 0 {
            if let Some(state) = self.ownership.checks.remove(&check) {
                self.answer_check(state);
            }
        }
    }
}
