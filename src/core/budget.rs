//! The link budget: which idle links to close when a host has more than
//! it should.
//!
//! Gossipsub keeps a long-lived stream on every link to a host that speaks
//! it, so libp2p's idle timeout never closes such a link: a host would end
//! up linked to every host it ever sent a message, a registration or a
//! digest to (all of them, in a big network). Links cost memory (buffers of
//! the muxer, the security layer and each protocol) and the CPU of keeping
//! them, so above the budget the least recently used idle links close: no
//! request in flight on them, nothing sent or asked over them for
//! [`IDLE`]. A closed link is dialled again when needed.

use std::time::{Duration, Instant};

use libp2p::PeerId;

/// A link unused for this long may be closed when over budget. Heartbeat
/// digests do not count as use.
pub(crate) const IDLE: Duration = Duration::from_secs(5);
/// A new link is kept at least this long (a join or a first request is
/// under way on it).
pub(crate) const GRACE: Duration = Duration::from_secs(1);
/// How often the budget is checked.
pub(crate) const EVERY: Duration = Duration::from_millis(500);

/// How the budget treats one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Never closed by the budget (busy, a neighbour, holding the network
    /// together).
    Always,
    /// Closed when over budget once unused for this long.
    IdleAfter(Duration),
}

/// When each link was last used, and when the budget is next checked.
#[derive(Debug)]
pub(crate) struct LinkBudget {
    last_used: foldhash::HashMap<PeerId, Instant>,
    next_check: Instant,
}

impl LinkBudget {
    /// A budget first checked at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        LinkBudget {
            last_used: Default::default(),
            next_check: now,
        }
    }

    /// `host`'s link was used at `now`.
    pub(crate) fn touch(&mut self, host: PeerId, now: Instant) {
        self.last_used.insert(host, now);
    }

    /// A link to `host` opened at `now`: kept at least [`GRACE`] even if
    /// unused.
    pub(crate) fn touch_new(&mut self, host: PeerId, now: Instant) {
        let as_if = now.checked_sub(IDLE - GRACE).unwrap_or(now);
        let used = self.last_used.entry(host).or_insert(as_if);
        *used = (*used).max(as_if);
    }

    /// `host`'s link closed.
    pub(crate) fn closed(&mut self, host: &PeerId) {
        self.last_used.remove(host);
    }

    /// Whether the budget is due for a check at `now` (every [`EVERY`]).
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        if now < self.next_check {
            return false;
        }
        self.next_check = now + EVERY;
        true
    }

    /// The links to close at `now`: with `connected` links over `budget`,
    /// the idle ones (by `keep`), never used first, then least recently
    /// used, at most as many as are over.
    pub(crate) fn over_budget(
        &mut self,
        now: Instant,
        connected: &[PeerId],
        budget: usize,
        keep: impl Fn(&PeerId) -> Keep,
    ) -> Vec<PeerId> {
        // A set, not `connected.contains`: that was links² comparisons of
        // 38-byte ids twice a second per host.
        // Closed links leave the map as they close (`closed`); this only
        // bounds it should one be missed.
        if self.last_used.len() > connected.len() {
            let linked: foldhash::HashSet<&PeerId> = connected.iter().collect();
            self.last_used.retain(|h, _| linked.contains(h));
        }
        if connected.len() <= budget {
            return Vec::new();
        }
        let mut idle: Vec<(Option<Instant>, PeerId)> = connected
            .iter()
            .filter_map(|h| match keep(h) {
                Keep::Always => None,
                Keep::IdleAfter(after) => {
                    let used = self.last_used.get(h).copied();
                    used.is_none_or(|t| now.saturating_duration_since(t) >= after)
                        .then_some((used, *h))
                }
            })
            .collect();
        // Never used first, then oldest use first.
        idle.sort_unstable_by_key(|(used, _)| *used);
        idle.into_iter()
            .take(connected.len() - budget)
            .map(|(_, h)| h)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn over_budget_the_least_recently_used_idle_links_close_first() {
        let t0 = Instant::now();
        let hs = hosts(5);
        let mut b = LinkBudget::new(t0);
        for (i, h) in hs.iter().enumerate() {
            b.touch(*h, t0 + Duration::from_secs(i as u64));
        }
        let now = t0 + Duration::from_secs(20);
        let idle = |_: &PeerId| Keep::IdleAfter(IDLE);
        assert!(b.over_budget(now, &hs, 5, idle).is_empty(), "within budget");
        assert_eq!(b.over_budget(now, &hs, 3, idle), vec![hs[0], hs[1]]);
        // A busy link is not closed; the next oldest goes instead.
        let busy = |h: &PeerId| {
            if *h == hs[0] {
                Keep::Always
            } else {
                Keep::IdleAfter(IDLE)
            }
        };
        assert_eq!(b.over_budget(now, &hs, 3, busy), vec![hs[1], hs[2]]);
    }

    #[test]
    fn a_link_used_lately_or_new_stays() {
        let t0 = Instant::now();
        let hs = hosts(3);
        let mut b = LinkBudget::new(t0);
        b.touch(hs[0], t0);
        b.touch_new(hs[1], t0 + Duration::from_secs(10));
        // hs[2] never used: first to go.
        let idle = |_: &PeerId| Keep::IdleAfter(IDLE);
        let now = t0 + Duration::from_secs(10);
        assert_eq!(b.over_budget(now, &hs, 0, idle), vec![hs[2], hs[0]]);
        // The new link closes once its grace is over, not before.
        let just_before = now + GRACE - Duration::from_millis(1);
        assert!(!b.over_budget(just_before, &hs, 0, idle).contains(&hs[1]));
        assert!(b.over_budget(now + GRACE, &hs, 0, idle).contains(&hs[1]));
        // A longer idle time (a joiner's link) keeps it longer.
        let slow = |_: &PeerId| Keep::IdleAfter(Duration::from_secs(30));
        assert_eq!(b.over_budget(now + GRACE, &hs, 0, slow), vec![hs[2]]);
    }

    #[test]
    fn checks_come_every_half_second_and_closed_links_are_forgotten() {
        let t0 = Instant::now();
        let mut b = LinkBudget::new(t0);
        assert!(b.due(t0));
        assert!(!b.due(t0 + EVERY - Duration::from_millis(1)));
        assert!(b.due(t0 + EVERY));
        let h = PeerId::random();
        b.touch(h, t0);
        b.over_budget(t0, &[], 0, |_| Keep::Always);
        assert!(
            b.last_used.is_empty(),
            "a link no longer connected is forgotten"
        );
    }
}
