//! The relay overlay: two hops to any host over O(√hosts) links.
//!
//! Registrations, lookups and messages go to the host that holds an entry
//! or a peer, which in a big network is any host at all: sent directly,
//! every host ends up linked to nearly every other (hosts² links; at 256
//! hosts in one process that was 32,640 links and 7.4 GB). Above
//! [`HostConfig::relay_above`](crate::HostConfig::relay_above) hosts, a host
//! instead keeps links to its *neighbours* only and reaches the rest through
//! one of them:
//!
//! - Hosts fall into `2^bits` **groups** by the top bits of their XOR key
//!   ([`crate::directory::host_key`]), with `bits` the smallest for which
//!   `2 · 4^bits ≥ hosts` (about √(hosts/2) groups of about √(2·hosts)).
//! - In every other group a host has one **contact**: the group's host whose
//!   key is XOR-closest to its own (so contacts spread over the group).
//! - Its neighbours are the hosts of its own group, its contacts, and the
//!   hosts whose contact it is. At 512 hosts that is about 60 links.
//! - A request to a host of its own group, or to a host it is linked to
//!   anyway, goes directly; any other goes to its contact in the
//!   destination's group, which is in the destination's group and so a
//!   neighbour of the destination: it forwards the request over that link.
//!
//! Every host computes the same groups from the same membership; while
//! views differ (a join spreading) a contact may not yet be linked to the
//! destination, and simply dials it. The relayed request is signed by its
//! origin, so the destination checks who sent it (see `event_loop::relay`).

use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::directory::host_key;

/// A neighbour outside this host's group (a contact, or a host whose
/// contact this one is) is dialled once the neighbours have not changed for
/// the caller's `stable` time, or once it has been one for
/// [`CONTACT_WAIT`]. While a membership grows, each group's contact changes
/// several times (it is the XOR-closest host known so far): dialling each at
/// once made a 512-host join wave open 25,000 connections to keep 14,500,
/// and their handshakes took a third of its CPU. Requests dial what they
/// need meanwhile, and a host's own group, which only grows, is dialled at
/// once.
pub(crate) const CONTACT_WAIT: Duration = Duration::from_secs(15);

/// Since when each neighbour has been one, and when the set last changed:
/// which missing links are due.
#[derive(Debug, Default)]
pub(crate) struct Settling {
    since: foldhash::HashMap<PeerId, Instant>,
    changed: Option<Instant>,
}

impl Settling {
    /// The neighbours as computed at `now`.
    pub(crate) fn update(&mut self, neighbours: &foldhash::HashSet<PeerId>, now: Instant) {
        let before = self.since.len();
        self.since.retain(|h, _| neighbours.contains(h));
        let mut changed = self.since.len() != before;
        for h in neighbours {
            self.since.entry(*h).or_insert_with(|| {
                changed = true;
                now
            });
        }
        if changed {
            self.changed = Some(now);
        }
    }

    /// Whether the missing link to neighbour `host` is due at `now` (see
    /// [`CONTACT_WAIT`]).
    pub(crate) fn due(
        &self,
        host: &PeerId,
        in_own_group: bool,
        now: Instant,
        stable: Duration,
    ) -> bool {
        let after = |t: Option<Instant>, wait: Duration| {
            t.is_none_or(|t| now.saturating_duration_since(t) >= wait)
        };
        in_own_group
            || after(self.changed, stable)
            || after(self.since.get(host).copied(), CONTACT_WAIT)
    }
}

/// The overlay of one host, computed from a membership.
#[derive(Debug, Clone)]
pub(crate) struct Overlay {
    bits: u32,
    local: (u64, PeerId),
    /// Every live host (this one included), by key.
    sorted: Vec<(u64, PeerId)>,
    neighbours: foldhash::HashSet<PeerId>,
}

/// Group bits for `hosts` hosts: the smallest `b` with `2 · 4^b ≥ hosts`.
pub(crate) fn group_bits(hosts: usize) -> u32 {
    let mut b = 0;
    while b < 31 && 2usize.saturating_mul(1usize << (2 * b)) < hosts {
        b += 1;
    }
    b
}

impl Overlay {
    /// The overlay of `local` among `members` (`(key, host)` of every live
    /// host, this one included, in any order).
    pub(crate) fn new(members: &[(u64, PeerId)], local: PeerId) -> Self {
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut o = Overlay {
            bits: group_bits(sorted.len()),
            local: (host_key(&local), local),
            sorted,
            neighbours: Default::default(),
        };
        o.neighbours = o.compute_neighbours();
        o
    }

    fn group_of(&self, key: u64) -> u64 {
        if self.bits == 0 {
            0
        } else {
            key >> (64 - self.bits)
        }
    }

    /// The hosts of group `g`, by key.
    fn group(&self, g: u64) -> &[(u64, PeerId)] {
        if self.bits == 0 {
            return &self.sorted;
        }
        let shift = 64 - self.bits;
        let start = self.sorted.partition_point(|&(k, _)| (k >> shift) < g);
        let end = self.sorted.partition_point(|&(k, _)| (k >> shift) <= g);
        &self.sorted[start..end]
    }

    /// The contact in group `g` of the host with key `from`: the group's
    /// host XOR-closest to it.
    fn contact(&self, from: u64, g: u64) -> Option<PeerId> {
        self.group(g)
            .iter()
            .min_by_key(|&&(k, _)| k ^ from)
            .map(|&(_, h)| h)
    }

    fn compute_neighbours(&self) -> foldhash::HashSet<PeerId> {
        let (lk, local) = self.local;
        let own = self.group_of(lk);
        let mut n: foldhash::HashSet<PeerId> = self.group(own).iter().map(|&(_, h)| h).collect();
        let groups = if self.bits == 0 {
            1u64
        } else {
            1u64 << self.bits
        };
        for g in (0..groups).filter(|&g| g != own) {
            n.extend(self.contact(lk, g));
        }
        for &(k, h) in &self.sorted {
            if self.group_of(k) != own && self.contact(k, own) == Some(local) {
                n.insert(h);
            }
        }
        n.remove(&local);
        n
    }

    /// The host to send a request for `dest` to: `dest` itself if it is a
    /// neighbour (or unknown here), else the contact in its group.
    pub(crate) fn next_hop(&self, dest: PeerId) -> PeerId {
        if self.neighbours.contains(&dest) {
            return dest;
        }
        let key = host_key(&dest);
        if self.sorted.binary_search(&(key, dest)).is_err() {
            return dest;
        }
        self.contact(self.local.0, self.group_of(key))
            .filter(|&c| c != self.local.1)
            .unwrap_or(dest)
    }

    /// Whether `host` falls in this host's group (whose members all link
    /// each other; they change only by joining and leaving).
    pub(crate) fn in_own_group(&self, host: &PeerId) -> bool {
        self.group_of(host_key(host)) == self.group_of(self.local.0)
    }

    /// Whether `host` is one of this host's neighbours.
    pub(crate) fn is_neighbour(&self, host: &PeerId) -> bool {
        self.neighbours.contains(host)
    }

    /// This host's neighbours.
    pub(crate) fn neighbours(&self) -> impl Iterator<Item = &PeerId> {
        self.neighbours.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` hosts with fixed keys (from seeded ed25519 keys), so the bounds
    /// asserted below do not depend on the draw.
    fn hosts(n: usize) -> Vec<(u64, PeerId)> {
        (0..n as u32)
            .map(|i| {
                let mut seed = [7u8; 32];
                seed[..4].copy_from_slice(&i.to_be_bytes());
                let key = libp2p::identity::Keypair::ed25519_from_bytes(seed)
                    .expect("a 32-byte seed is a valid ed25519 key");
                let h = key.public().to_peer_id();
                (host_key(&h), h)
            })
            .collect()
    }

    #[test]
    fn group_bits_grow_with_the_square_root() {
        assert_eq!(group_bits(1), 0);
        assert_eq!(group_bits(2), 0);
        assert_eq!(group_bits(8), 1);
        assert_eq!(group_bits(128), 3);
        assert_eq!(group_bits(129), 4);
        assert_eq!(group_bits(512), 4);
    }

    #[test]
    fn every_host_reaches_every_other_in_two_hops_over_few_links() {
        let n = 512;
        let members = hosts(n);
        let overlays: std::collections::HashMap<PeerId, Overlay> = members
            .iter()
            .map(|&(_, h)| (h, Overlay::new(&members, h)))
            .collect();
        let links: Vec<usize> = overlays.values().map(|o| o.neighbours.len()).collect();
        let max_links = links.iter().copied().max().unwrap_or(0);
        let mean_links = links.iter().sum::<usize>() as f64 / n as f64;
        eprintln!("links per host: mean {mean_links:.1}, max {max_links}");
        // A full mesh is 511 links per host; about √(8·512) = 64 expected.
        assert!(mean_links < 80.0, "mean {mean_links} links per host");
        assert!(max_links < 160, "at most {max_links} links per host");
        for (&a, oa) in &overlays {
            for &(_, b) in members.iter().take(64) {
                if a == b {
                    continue;
                }
                let hop = oa.next_hop(b);
                assert!(oa.is_neighbour(&hop), "first hop is a neighbour");
                if hop != b {
                    assert!(overlays[&hop].is_neighbour(&b), "second hop is a link");
                }
            }
        }
        // Neighbourhood is symmetric: both ends keep the link.
        for (&a, oa) in &overlays {
            for b in oa.neighbours() {
                assert!(overlays[b].is_neighbour(&a));
            }
        }
    }

    #[test]
    fn contacts_are_due_once_the_neighbours_settle_or_after_the_wait() {
        let t0 = Instant::now();
        let stable = Duration::from_secs(4);
        let [a, b, c] = [PeerId::random(), PeerId::random(), PeerId::random()];
        let set = |hs: &[PeerId]| hs.iter().copied().collect::<foldhash::HashSet<_>>();
        let mut s = Settling::default();
        s.update(&set(&[a, b]), t0);
        assert!(s.due(&a, true, t0, stable), "the own group at once");
        assert!(!s.due(&b, false, t0, stable), "a new contact waits");
        assert!(!s.due(&b, false, t0 + stable / 2, stable));
        // The set changes (c replaces b): the wait starts again.
        s.update(&set(&[a, c]), t0 + stable / 2);
        assert!(!s.due(&c, false, t0 + stable, stable));
        assert!(
            s.due(&c, false, t0 + stable / 2 + stable, stable),
            "settled"
        );
        // Recomputing the same set is no change.
        s.update(&set(&[a, c]), t0 + stable);
        assert!(s.due(&c, false, t0 + stable / 2 + stable, stable));
        // Under steady change (a new neighbour every second) c is due
        // once it has been one for CONTACT_WAIT, the newest is not.
        let end = t0 + stable / 2 + CONTACT_WAIT;
        let (mut t, mut newest) = (t0 + stable, c);
        while t <= end {
            newest = PeerId::random();
            s.update(&set(&[a, c, newest]), t);
            t += Duration::from_secs(1);
        }
        let last = t - Duration::from_secs(1);
        assert!(!s.due(&c, false, end - Duration::from_millis(1), stable));
        assert!(
            s.due(&c, false, end.max(last), stable),
            "c waited long enough"
        );
        assert!(!s.due(&newest, false, last, stable), "the newest waits");
    }

    #[test]
    fn small_networks_are_direct() {
        let members = hosts(2);
        let o = Overlay::new(&members, members[0].1);
        assert_eq!(o.next_hop(members[1].1), members[1].1);
        let stranger = PeerId::random();
        assert_eq!(o.next_hop(stranger), stranger);
    }
}
