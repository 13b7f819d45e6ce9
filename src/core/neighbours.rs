//! Which relay overlay this host is in, and which of its neighbours it
//! dials when, without I/O (the overlay itself is computed by
//! [`crate::overlay`]).
//!
//! Above `relay_above` hosts a host keeps links to its overlay neighbours
//! only. The overlay is recomputed after a membership change, at most every
//! [`RECOMPUTE_EVERY`] (during a join wave the membership changes many
//! times a second, and a slightly stale overlay only costs a direct request
//! or an extra dial), except that crossing `relay_above` either way is
//! taken at once: until then every request goes direct and links the hosts
//! the overlay would keep apart.
//!
//! Missing links to neighbours are dialled a few per heartbeat
//! ([`DIALS_PER_ROUND`]), so they exist before requests need them: a
//! neighbour of the host's own group at once, any other once the
//! neighbours have not changed for [`STABLE_BEATS`] heartbeats or once it
//! has been one for [`crate::overlay::CONTACT_WAIT`] (see
//! [`Settling`]). Of two neighbours only the one with the lower id dials:
//! when both did, they often dialled each other at once and kept two
//! connections (a 512-host join opened about 23,500 connections instead of
//! 20,500).

use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::{
    core::membership::Membership,
    overlay::{Overlay, Settling},
};

/// The overlay is recomputed at most this often while the membership changes.
pub(crate) const RECOMPUTE_EVERY: Duration = Duration::from_millis(500);
/// Most neighbours dialled per heartbeat.
pub(crate) const DIALS_PER_ROUND: usize = 32;
/// Neighbours outside this host's group are dialled once the neighbours
/// have not changed for this many heartbeats.
pub(crate) const STABLE_BEATS: u32 = 2;

/// The overlay as last computed, for which membership, and which missing
/// links are due.
#[derive(Debug, Default)]
pub(crate) struct Neighbours {
    current: Option<Overlay>,
    version: Option<u64>,
    next_compute: Option<Instant>,
    settling: Settling,
}

/// A recomputed overlay.
#[derive(Debug)]
pub(crate) struct Recomputed {
    /// Whether the host relays now, and whether it did before.
    pub relaying: bool,
    pub was_relaying: bool,
    /// Its neighbours (none when it does not relay).
    pub neighbours: foldhash::HashSet<PeerId>,
}

impl Neighbours {
    /// The overlay, if the network (of `members` hosts) is large enough to
    /// relay.
    pub(crate) fn overlay(&self, members: usize, relay_above: usize) -> Option<&Overlay> {
        if members <= relay_above {
            return None;
        }
        self.current.as_ref()
    }

    /// Recomputes the overlay of `local` if the membership changed (see the
    /// module docs for how often); what it is now, if recomputed.
    pub(crate) fn refresh(
        &mut self,
        now: Instant,
        membership: &Membership,
        local: PeerId,
        relay_above: usize,
    ) -> Option<Recomputed> {
        let version = membership.version();
        let was_relaying = self.current.is_some();
        let relaying = membership.len() > relay_above;
        let crossing = relaying != was_relaying;
        if self.version == Some(version)
            || (!crossing && self.next_compute.is_some_and(|t| now < t))
        {
            return None;
        }
        self.current = relaying.then(|| Overlay::new(membership.keys(), local));
        let neighbours: foldhash::HashSet<PeerId> = self
            .current
            .as_ref()
            .map(|o| o.neighbours().copied().collect())
            .unwrap_or_default();
        self.settling.update(&neighbours, now);
        self.version = Some(version);
        self.next_compute = Some(now + RECOMPUTE_EVERY);
        Some(Recomputed {
            relaying,
            was_relaying,
            neighbours,
        })
    }

    /// The neighbours `local` is to dial now: not linked (by
    /// `is_connected`), due, and of a higher id; at most
    /// [`DIALS_PER_ROUND`].
    pub(crate) fn to_dial(
        &self,
        now: Instant,
        local: PeerId,
        heartbeat: Duration,
        is_connected: impl Fn(&PeerId) -> bool,
    ) -> Vec<PeerId> {
        let Some(o) = self.current.as_ref() else {
            return Vec::new();
        };
        let stable = heartbeat * STABLE_BEATS;
        o.neighbours()
            .filter(|h| local < **h)
            .filter(|h| !is_connected(h))
            .filter(|h| self.settling.due(h, o.in_own_group(h), now, stable))
            .take(DIALS_PER_ROUND)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::membership::tests::record;
    use libp2p::identity::Keypair;

    const HB: Duration = Duration::from_secs(1);

    fn membership(local: &Keypair, others: &[Keypair], now: Instant) -> Membership {
        let mut m = Membership::new(local.public().to_peer_id());
        for k in others {
            m.apply(&record(k, 1, 1, false), now, HB * 40);
        }
        m
    }

    #[test]
    fn crossing_relay_above_is_taken_at_once_other_changes_every_half_second() {
        let now = Instant::now();
        let local = Keypair::generate_ed25519();
        let id = local.public().to_peer_id();
        let keys: Vec<Keypair> = (0..40).map(|_| Keypair::generate_ed25519()).collect();
        let mut n = Neighbours::default();
        let m = membership(&local, &keys[..20], now);
        let r = n.refresh(now, &m, id, 30).expect("first computation");
        assert!(!r.relaying && r.neighbours.is_empty());
        // Over the threshold 10 ms later: recomputed at once.
        let m = membership(&local, &keys[..35], now);
        let later = now + Duration::from_millis(10);
        let r = n.refresh(later, &m, id, 30).expect("crossing");
        assert!(r.relaying && !r.was_relaying && !r.neighbours.is_empty());
        assert!(n.overlay(m.len(), 30).is_some());
        // Another change within half a second waits for it.
        let m = membership(&local, &keys, now);
        assert!(n
            .refresh(later + Duration::from_millis(100), &m, id, 30)
            .is_none());
        let r = n.refresh(later + RECOMPUTE_EVERY, &m, id, 30);
        assert!(r.is_some_and(|r| r.relaying && r.was_relaying));
        // Nothing changed since: nothing to do.
        assert!(n.refresh(later + HB * 5, &m, id, 30).is_none());
    }

    #[test]
    fn the_own_group_is_dialled_at_once_contacts_once_settled_by_the_lower_id() {
        let now = Instant::now();
        // The lowest id of the 201 is this host's: it is the one that dials
        // every neighbour (with a random one, a host whose group held no
        // higher id had nothing to dial at first, one run in ten).
        let mut keys: Vec<Keypair> = (0..201).map(|_| Keypair::generate_ed25519()).collect();
        keys.sort_by_key(|k| k.public().to_peer_id());
        let local = keys.remove(0);
        let id = local.public().to_peer_id();
        let mut n = Neighbours::default();
        let m = membership(&local, &keys, now);
        let r = n.refresh(now, &m, id, 64).expect("computed");
        let o = n.overlay(m.len(), 64).expect("relaying").clone();
        let none = |_: &PeerId| false;
        let first = n.to_dial(now, id, HB, none);
        // Right after a change: only the own group, only higher ids.
        assert!(!first.is_empty());
        assert!(first.iter().all(|h| o.in_own_group(h) && id < *h));
        // Once the neighbours have been stable for two beats: the contacts
        // too (at most a round's worth), still only higher ids.
        let settled = n.to_dial(now + HB * STABLE_BEATS, id, HB, none);
        assert!(settled.len() > first.len() || settled.len() == DIALS_PER_ROUND);
        assert!(settled.iter().all(|h| id < *h && r.neighbours.contains(h)));
        assert!(settled.len() <= DIALS_PER_ROUND);
        // Linked neighbours are not dialled again.
        let all = |_: &PeerId| true;
        assert!(n.to_dial(now + HB * 10, id, HB, all).is_empty());
    }
}
