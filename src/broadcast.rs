//! Broadcast: one message to every peer on every host; and group sends,
//! to every peer whose id matches a pattern, on any host.
//!
//! The origin sends one request per live member (through the relay overlay
//! in a big network, as every request), and each host puts the message in
//! every local peer's inbox and answers with how many it reached. So a
//! broadcast costs one transfer per host, not per peer, and the caller
//! learns how many hosts and peers it reached and which hosts it did not.
//!
//! A group send is a broadcast with a pattern of peer ids (the channel
//! syntax of [`crate::channel_name`]: an id is split at each `.` into
//! tokens; `*` matches one token, `>` one or more trailing ones), which
//! each host matches against its own peers. The ids live on their hosts
//! only, so every host is asked, as for a broadcast; what one costs is one
//! request per host and a scan of each host's peers.
//!
//! Semantics: at most once per peer. A peer whose inbox is full misses it
//! (counted in the report's `missed`); a host that does not answer is named
//! in `failed`. Each host remembers the broadcasts it has taken (by origin
//! and id, the last [`REMEMBERED`]), so a request sent again, or replayed
//! by a relay, is not delivered twice.

use std::sync::Arc;

use libp2p::PeerId;

use crate::{message::Payload, request::Corr, shared::Shared};

/// What a broadcast or a group send reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BroadcastReport {
    /// Hosts that took it, this one included.
    pub hosts: usize,
    /// Peers whose inbox has it, on every host that answered.
    pub peers: u64,
    /// Peers that missed it (their inbox was full).
    pub missed: u64,
    /// Live hosts that did not answer (unreachable, or refused it).
    #[serde(serialize_with = "host_ids")]
    pub failed: Vec<PeerId>,
}

fn host_ids<S: serde::Serializer>(hosts: &[PeerId], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(hosts.iter().map(|h| h.to_string()))
}

/// Broadcasts each host remembers having taken (over all origins).
pub(crate) const REMEMBERED: usize = 65_536;

/// The broadcasts this host has taken, to take each once. Grown as
/// broadcasts come: `LruCache::new` allocates its table for all of
/// [`REMEMBERED`] up front, which cost the simulator's 512 hosts about
/// 110 MiB of RSS (512 × 1M, 7.74 → 7.63 GiB).
pub(crate) struct Taken(lru::LruCache<(PeerId, u64), ()>);

impl Default for Taken {
    fn default() -> Self {
        Taken(lru::LruCache::unbounded())
    }
}

impl Taken {
    /// Whether the broadcast `id` of `origin` is new (and now remembered).
    pub(crate) fn first_time(&mut self, origin: PeerId, id: u64) -> bool {
        if self.0.put((origin, id), ()).is_some() {
            return false;
        }
        if self.0.len() > REMEMBERED {
            self.0.pop_lru();
        }
        true
    }
}

/// What a host's fan-out reached.
#[derive(Debug, Default)]
pub(crate) struct Fanned {
    pub peers: u64,
    pub missed: u64,
}

/// Puts the message in the inbox of every local peer, or of those whose id
/// matches `to`.
pub(crate) fn fan_out(
    shared: &Shared,
    from: &Arc<str>,
    to: Option<&str>,
    payload: &Payload,
) -> Fanned {
    let mut out = Fanned::default();
    shared.registry.for_each_slot(|slot| {
        if to.is_some_and(|p| !crate::channel_name::matches(p, slot.id())) {
            return;
        }
        match crate::delivery::local::deliver(shared, slot, from, payload.clone(), Corr::None) {
            Ok(()) => out.peers += 1,
            Err(_) => out.missed += 1,
        }
    });
    crate::shared::add(&shared.counters.broadcast_delivered, out.peers);
    crate::shared::add(&shared.counters.broadcast_missed, out.missed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broadcast_is_taken_once_per_origin_and_id() {
        let mut t = Taken::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(t.first_time(a, 1));
        assert!(!t.first_time(a, 1));
        assert!(t.first_time(a, 2));
        assert!(t.first_time(b, 1));
        for id in 10..10 + REMEMBERED as u64 {
            t.first_time(b, id);
        }
        // Forgotten once REMEMBERED others came after it.
        assert!(t.first_time(a, 1));
    }
}
