//! The link budget's I/O (see [`crate::core::budget`]): which links are
//! busy or must stay, and closing the ones the budget picks. Links to hosts
//! this one joined, and to hosts that joined through it, stay (they hold the
//! network together); a delivery batch caught by a closing link is sent
//! again without being delivered twice (see `messaging`).

use std::time::Instant;

use libp2p::PeerId;

use super::{EventLoop, Pending};
use crate::core::budget::{Keep, LinkBudget, IDLE};

impl EventLoop {
    /// Notes that `host` was just used.
    pub(super) fn touch(&mut self, host: PeerId) {
        self.budget.touch(host, Instant::now());
    }

    /// Notes a new link to `host` (kept a little while if not used).
    pub(super) fn touch_new(&mut self, host: PeerId) {
        self.budget.touch_new(host, Instant::now());
    }

    /// Hosts with one of our requests or delivery batches in flight.
    fn busy_hosts(&self) -> foldhash::HashSet<PeerId> {
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
        if !self.budget.due(now) {
            return;
        }
        // Bounded: a joiner that is not (or no longer) a member is forgotten.
        let membership = &self.members.membership();
        self.joiners.retain(|h| membership.contains(h));
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let Some(mut budget) = self.shared.with_config(|c| c.link_budget) else {
            self.budget
                .over_budget(now, &connected, usize::MAX, |_| Keep::Always);
            return;
        };
        // In a relaying network the overlay's neighbours are the links to
        // keep; any other closes once idle.
        if let Some(o) = self.overlay() {
            budget = budget.min(o.neighbours().count());
        }
        // Taken out while `keep` reads the rest of the loop.
        let mut state = std::mem::replace(&mut self.budget, LinkBudget::new(now));
        // Built only if a link that is not a neighbour is looked at: most
        // links of a relaying network are neighbours.
        let busy = std::cell::OnceCell::new();
        // A link from a host that is not a member yet carries a join that
        // may take a while on a busy host: it gets the join's deadline.
        let join_timeout = self.shared.with_config(|c| c.join_timeout);
        let keep = |h: &PeerId| {
            if self.is_neighbour(h)
                || self.redials.is_joined(h)
                || self.joiners.contains(h)
                || busy.get_or_init(|| self.busy_hosts()).contains(h)
                || self.joining(h)
            {
                Keep::Always
            } else if self.members.membership().contains(h) {
                Keep::IdleAfter(IDLE)
            } else {
                Keep::IdleAfter(join_timeout.max(IDLE))
            }
        };
        let close = state.over_budget(now, &connected, budget, keep);
        self.budget = state;
        for host in close {
            tracing::trace!(%host, "closing an idle link over the budget");
            if self.swarm.disconnect_peer_id(host).is_ok() {
                self.budget.closed(&host);
            }
        }
    }

    /// Whether a join through `host` is still under way.
    fn joining(&self, host: &PeerId) -> bool {
        self.joins.values().any(|j| j.is_with(host))
    }
}
