//! The link budget.
//!
//! Gossipsub keeps a long-lived stream on every link to a host that speaks
//! it, so libp2p's idle timeout never closes such a link: a host would end
//! up linked to every host it ever sent a message, a registration or a
//! digest to (all of them, in a big network). Links cost memory (buffers of
//! the muxer, the security layer and each protocol) and the CPU of keeping
//! them, so above [`HostConfig::link_budget`](crate::HostConfig::link_budget)
//! links the loop closes the least recently used ones that are idle: no
//! request of ours in flight on it, nothing sent or asked over it for
//! [`IDLE`]. Links to hosts this one joined, and to hosts that joined
//! through it, stay (they hold the network together); a closed link is
//! dialled again when needed, and a delivery batch caught by a closing link
//! is sent again without being delivered twice (see `messaging`).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use libp2p::PeerId;

use super::{EventLoop, Pending};

/// A link unused for this long may be closed when over budget. Heartbeat
/// digests do not count as use.
const IDLE: Duration = Duration::from_secs(5);
/// A new link is kept at least this long (a join or a first request is
/// under way on it).
const GRACE: Duration = Duration::from_secs(1);
/// How often the budget is checked.
const EVERY: Duration = Duration::from_millis(500);

impl EventLoop {
    /// Notes that `host` was just used.
    pub(super) fn touch(&mut self, host: PeerId) {
        self.last_used.insert(host, Instant::now());
    }

    /// Notes a new link to `host`: kept for [`GRACE`] if not used.
    pub(super) fn touch_new(&mut self, host: PeerId) {
        let now = Instant::now();
        let as_if = now.checked_sub(IDLE - GRACE).unwrap_or(now);
        let used = self.last_used.entry(host).or_insert(as_if);
        *used = (*used).max(as_if);
    }

    /// Hosts with one of our requests or delivery batches in flight.
    fn busy_hosts(&self) -> HashSet<PeerId> {
        let streaming = self
            .stream_links
            .iter()
            .filter(|(_, l)| l.outstanding() > 0)
            .map(|(h, _)| *h);
        self.requests
            .values()
            .filter_map(|p| match p {
                Pending::Deliver { host, .. }
                | Pending::Directory { host, .. }
                | Pending::Lookup { host, .. }
                | Pending::Join { host }
                | Pending::Introduce { host }
                | Pending::Beats { host, .. }
                | Pending::Broadcast { host, .. }
                | Pending::Queue { host, .. }
                | Pending::RelayBundle { via: host, .. } => Some(*host),
                Pending::Leave | Pending::Resync | Pending::Records | Pending::RegCheck { .. } => {
                    None
                }
            })
            .chain(streaming)
            .collect()
    }

    /// Closes idle links above the budget, least recently used first.
    pub(super) fn trim_links(&mut self, now: Instant) {
        if now < self.next_trim {
            return;
        }
        self.next_trim = now + EVERY;
        self.last_used.retain(|h, _| self.swarm.is_connected(h));
        // Bounded: a joiner that is not (or no longer) a member is forgotten.
        let membership = &self.membership;
        self.joiners.retain(|h| membership.contains(h));
        let Some(mut budget) = self.shared.with_config(|c| c.link_budget) else {
            return;
        };
        // In a relaying network the overlay's neighbours are the links to
        // keep; any other closes once idle.
        if let Some(o) = self.overlay() {
            budget = budget.min(o.neighbours().count());
        }
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        if connected.len() <= budget {
            return;
        }
        let busy = self.busy_hosts();
        // A link from a host that is not a member yet carries a join that
        // may take a while on a busy host: it gets the join's deadline.
        let join_timeout = self.shared.with_config(|c| c.join_timeout);
        let mut idle: Vec<(Option<Instant>, PeerId)> = connected
            .into_iter()
            .filter(|h| {
                !busy.contains(h)
                    && !self.rejoin.get(h).is_some_and(|r| r.joined)
                    && !self.joiners.contains(h)
                    && !self.joining(h)
                    && !self.is_neighbour(h)
            })
            .map(|h| (self.last_used.get(&h).copied(), h))
            .filter(|(used, h)| {
                let idle = if self.membership.contains(h) {
                    IDLE
                } else {
                    join_timeout.max(IDLE)
                };
                used.is_none_or(|t| now.duration_since(t) >= idle)
            })
            .collect();
        // Never used first, then oldest use first.
        idle.sort_unstable_by_key(|(used, _)| *used);
        let over = self.swarm.connected_peers().count() - budget;
        for (_, host) in idle.into_iter().take(over) {
            tracing::trace!(%host, "closing an idle link over the budget");
            if self.swarm.disconnect_peer_id(host).is_ok() {
                self.last_used.remove(&host);
            }
        }
    }

    /// Whether a join through `host` is still under way.
    fn joining(&self, host: &PeerId) -> bool {
        self.joins.values().any(|j| j.is_with(host))
    }
}
