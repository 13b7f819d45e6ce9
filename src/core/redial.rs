//! Redialling: which hosts to dial again after a drop, when, and when to
//! give up.
//!
//! Two kinds of host are redialled. A host this one *joined* stays linked:
//! whenever its link drops it is dialled again, with waits that grow by
//! the reconnect decay, until it is back or the reconnect timeout passes.
//! A member whose lease *lapsed* may be alive behind a partition, and
//! neither side would talk to the other again (each swaps digests with its
//! own members only): it is dialled the same way until it is a member
//! again or the timeout passes. Waits never exceed the lease, so two sides
//! find each other within about a lease of a fault healing, however long
//! it lasted.

use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

/// Most hosts redialled at once (joined ones and lapsed ones).
pub(crate) const MAX_REDIALS: usize = 4096;

/// The timing of redials (from the host's configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// The first wait after a drop.
    pub delay: Duration,
    /// The factor each failed attempt grows the wait by.
    pub decay: f64,
    /// How long a host is redialled before it is given up.
    pub timeout: Duration,
    /// The lease: no wait is longer (unless `delay` is).
    pub lease: Duration,
}

impl Timing {
    /// The wait before redial `attempt` (from 1): `delay` grown by `decay`
    /// per failed attempt, but never past the lease.
    pub(crate) fn wait(&self, attempt: u32) -> Duration {
        let grown = self
            .delay
            .mul_f64(self.decay.powi(attempt.min(64) as i32).min(1e6));
        grown.min(self.lease.max(self.delay))
    }
}

/// One host on the redial list.
#[derive(Debug)]
struct Entry {
    addr: Multiaddr,
    attempt: u32,
    /// Since when it is down (`None`: linked, nothing to do).
    down_since: Option<Instant>,
    next_dial: Option<Instant>,
    /// Joined (redialled at every drop) rather than lapsed (redialled until
    /// it is back once).
    joined: bool,
}

/// What is due at one tick.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Due {
    /// Hosts to dial now, at these addresses.
    pub dial: Vec<(PeerId, Multiaddr)>,
    /// Hosts given up (down longer than the timeout), and whether each
    /// was a joined one. Their cached peer locations are stale.
    pub gave_up: Vec<(PeerId, bool)>,
    /// Some host is down: the next tick should come soon, so redials keep
    /// to their waits however short.
    pub waiting: bool,
}

/// The hosts redialled, and when.
#[derive(Debug, Default)]
pub(crate) struct Redials {
    hosts: foldhash::HashMap<PeerId, Entry>,
}

impl Redials {
    /// This host joined `host` at `addr`: it is kept linked from now on.
    pub(crate) fn joined(&mut self, host: PeerId, addr: Multiaddr) {
        self.hosts.insert(
            host,
            Entry {
                addr,
                attempt: 0,
                down_since: None,
                next_dial: None,
                joined: true,
            },
        );
    }

    /// Whether `host` is one this host joined.
    pub(crate) fn is_joined(&self, host: &PeerId) -> bool {
        self.hosts.get(host).is_some_and(|e| e.joined)
    }

    /// Whether `host` is on the list (joined, or lapsed and redialled).
    pub(crate) fn contains(&self, host: &PeerId) -> bool {
        self.hosts.contains_key(host)
    }

    /// A link to `host` is up. A joined host waits for its next drop;
    /// returns whether it had been down. A lapsed host stays on the list
    /// until it is a member again ([`Redials::back`]): its join may fail.
    pub(crate) fn up(&mut self, host: &PeerId) -> bool {
        match self.hosts.get_mut(host).filter(|e| e.joined) {
            Some(e) => {
                e.attempt = 0;
                e.next_dial = None;
                e.down_since.take().is_some()
            }
            None => false,
        }
    }

    /// The link to `host` dropped at `now`: a joined host is redialled
    /// after the first wait. Returns whether that started a redial.
    pub(crate) fn down(&mut self, host: &PeerId, now: Instant, t: &Timing) -> bool {
        match self.hosts.get_mut(host).filter(|e| e.joined) {
            Some(e) if e.down_since.is_none() => {
                Self::start(e, now, t);
                true
            }
            _ => false,
        }
    }

    fn start(e: &mut Entry, now: Instant, t: &Timing) {
        e.down_since = Some(now);
        e.attempt = 0;
        e.next_dial = Some(now + t.delay);
    }

    /// `host`'s lease lapsed at `now`; `addr` is where it was last heard.
    /// A host already listed (joined) is redialled now even if its link
    /// still looks open (packets may be dropped silently); another is
    /// listed while there is room. Returns whether `host` is a joined one
    /// (whose cached peer locations are kept until it is given up).
    pub(crate) fn lapsed(
        &mut self,
        host: PeerId,
        addr: Option<Multiaddr>,
        now: Instant,
        t: &Timing,
    ) -> bool {
        if let Some(e) = self.hosts.get_mut(&host) {
            if e.down_since.is_none() {
                Self::start(e, now, t);
            }
            return true;
        }
        if let Some(addr) = addr.filter(|_| self.hosts.len() < MAX_REDIALS) {
            let mut e = Entry {
                addr,
                attempt: 0,
                down_since: None,
                next_dial: None,
                joined: false,
            };
            Self::start(&mut e, now, t);
            self.hosts.insert(host, e);
        }
        false
    }

    /// `host` is a member again: a joined one waits for its next drop, a
    /// lapsed one is no longer redialled.
    pub(crate) fn back(&mut self, host: &PeerId) {
        match self.hosts.get_mut(host) {
            Some(e) if e.joined => {
                e.down_since = None;
                e.attempt = 0;
                e.next_dial = None;
            }
            Some(_) => {
                self.hosts.remove(host);
            }
            None => {}
        }
    }

    /// `host` left or is no longer admitted: never redialled.
    pub(crate) fn remove(&mut self, host: &PeerId) {
        self.hosts.remove(host);
    }

    /// What is due at `now`: the dials whose wait is over (each then waits
    /// longer for its next attempt), and the hosts down for longer than
    /// the timeout, which leave the list.
    pub(crate) fn due(&mut self, now: Instant, t: &Timing) -> Due {
        let mut due = Due::default();
        for (host, e) in self.hosts.iter_mut() {
            let Some(since) = e.down_since else { continue };
            due.waiting = true;
            if now.duration_since(since) > t.timeout {
                due.gave_up.push((*host, e.joined));
                continue;
            }
            if e.next_dial.is_some_and(|at| at <= now) {
                e.attempt += 1;
                e.next_dial = Some(now + t.wait(e.attempt));
                due.dial.push((*host, e.addr.clone()));
            }
        }
        for (host, _) in &due.gave_up {
            self.hosts.remove(host);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    const T: Timing = Timing {
        delay: SEC,
        decay: 2.0,
        timeout: Duration::from_secs(60),
        lease: Duration::from_secs(20),
    };

    fn addr() -> Multiaddr {
        "/memory/1".parse().expect("a memory address")
    }

    /// The seconds after `t0` at which `host` is dialled, stepping every
    /// 100 ms up to `until` seconds, and when it is given up.
    fn dials(r: &mut Redials, t0: Instant, until: u64) -> (Vec<f64>, Option<f64>) {
        let (mut at, mut gave_up) = (Vec::new(), None);
        for tick in 0..=until * 10 {
            let now = t0 + Duration::from_millis(tick * 100);
            let due = r.due(now, &T);
            at.extend(due.dial.iter().map(|_| tick as f64 / 10.0));
            if !due.gave_up.is_empty() && gave_up.is_none() {
                gave_up = Some(tick as f64 / 10.0);
            }
        }
        (at, gave_up)
    }

    #[test]
    fn waits_grow_by_the_decay_up_to_the_lease() {
        let waits: Vec<u64> = (1..=7).map(|a| T.wait(a).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 20, 20, 20]);
        assert_eq!(T.wait(u32::MAX), T.lease);
        // A first delay longer than the lease is kept.
        let long = Timing {
            delay: Duration::from_secs(60),
            ..T
        };
        assert_eq!(long.wait(3), long.delay);
    }

    #[test]
    fn a_dropped_joined_host_is_redialled_with_growing_waits_then_given_up() {
        let t0 = Instant::now();
        let host = PeerId::random();
        let mut r = Redials::default();
        r.joined(host, addr());
        assert_eq!(r.due(t0, &T), Due::default(), "linked: nothing to do");
        assert!(r.down(&host, t0, &T));
        assert!(!r.down(&host, t0, &T), "already down");
        let (at, gave_up) = dials(&mut r, t0, 70);
        // 1 s, then waits of 2, 4, 8, 16 and then the lease (20 s).
        assert_eq!(at, [1.0, 3.0, 7.0, 15.0, 31.0, 51.0]);
        assert_eq!(gave_up, Some(60.1), "past the 60 s timeout");
        assert!(!r.contains(&host));
    }

    #[test]
    fn a_reconnect_resets_the_waits() {
        let t0 = Instant::now();
        let host = PeerId::random();
        let mut r = Redials::default();
        r.joined(host, addr());
        r.down(&host, t0, &T);
        let (at, _) = dials(&mut r, t0, 10);
        assert_eq!(at, [1.0, 3.0, 7.0]);
        assert!(r.up(&host), "it had been down");
        assert!(!r.up(&host));
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(r.due(t1, &T), Due::default());
        r.down(&host, t1, &T);
        let (at, _) = dials(&mut r, t1, 4);
        assert_eq!(at, [1.0, 3.0], "from the first wait again");
        assert!(r.is_joined(&host));
    }

    #[test]
    fn a_lapsed_member_is_redialled_until_it_is_back() {
        let t0 = Instant::now();
        let (lapsed, joined) = (PeerId::random(), PeerId::random());
        let mut r = Redials::default();
        r.joined(joined, addr());
        assert!(!r.lapsed(lapsed, Some(addr()), t0, &T));
        assert!(r.lapsed(joined, None, t0, &T), "a joined host stays joined");
        let due = r.due(t0 + SEC, &T);
        let mut dialled: Vec<PeerId> = due.dial.iter().map(|(h, _)| *h).collect();
        dialled.sort();
        let mut both = vec![lapsed, joined];
        both.sort();
        assert_eq!(dialled, both, "both redialled after the first wait");
        // A link up is not enough for a lapsed host (its join may fail);
        // being a member again is.
        assert!(!r.up(&lapsed));
        assert!(r.contains(&lapsed));
        r.back(&lapsed);
        r.back(&joined);
        assert!(!r.contains(&lapsed));
        assert!(r.is_joined(&joined));
        assert_eq!(r.due(t0 + 10 * SEC, &T), Due::default());
    }

    #[test]
    fn the_list_is_bounded_and_a_lapse_without_an_address_is_not_listed() {
        let t0 = Instant::now();
        let mut r = Redials::default();
        assert!(!r.lapsed(PeerId::random(), None, t0, &T));
        for _ in 0..MAX_REDIALS + 10 {
            r.lapsed(PeerId::random(), Some(addr()), t0, &T);
        }
        assert_eq!(r.due(t0 + SEC, &T).dial.len(), MAX_REDIALS);
    }

    #[test]
    fn a_host_that_left_is_never_redialled() {
        let t0 = Instant::now();
        let host = PeerId::random();
        let mut r = Redials::default();
        r.joined(host, addr());
        r.down(&host, t0, &T);
        r.remove(&host);
        assert_eq!(r.due(t0 + SEC, &T), Due::default());
    }
}
