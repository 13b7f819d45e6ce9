//! Membership: every host keeps the full list of live hosts.
//!
//! Each host describes itself in a [`HostRecord`] that it signs with its host
//! key: its addresses, its epoch (start time), a sequence number that grows
//! with every change, the channels it subscribes to, and whether it is
//! leaving. Records spread by gossip (a gossipsub topic every host joins) when
//! they change, by the snapshot two hosts swap when one joins the other, and
//! by the heartbeat digests (anti-entropy). A record is only accepted if its
//! signature matches the host it names, so no host can speak for another.
//!
//! Liveness is a heartbeat counter per host, raised by the host itself once
//! per interval and spread in digests (see [`crate::core::members`]). A host
//! whose counter has not risen for a lease is dropped; a leaving record drops
//! it at once and leaves a tombstone so stale records cannot revive it.

use std::time::{Duration, Instant};

use libp2p::{identity::Keypair, identity::PublicKey, Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::{
    beat_chain::{verify as verify_beat, Anchor, Proved},
    directory::host_key,
    protocol::{Beat, SignedRecord},
};

/// What a host says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HostRecord {
    /// Protobuf encoding of the host's public key.
    pub public_key: Vec<u8>,
    /// Start time of this incarnation (ns since the Unix epoch).
    pub epoch: u64,
    /// Grows with every new record of this incarnation.
    pub seq: u64,
    /// Addresses to reach the host.
    pub addrs: Vec<Vec<u8>>,
    /// Channels the host subscribes to.
    pub channels: Vec<String>,
    /// Queue groups the host has members of.
    pub queues: Vec<crate::queue_group::QueueGroup>,
    /// The host is leaving the network.
    pub leaving: bool,
    /// The hash chain that proves this incarnation's heartbeat counters
    /// (see [`crate::beat_chain`]).
    pub anchor: Anchor,
}

impl HostRecord {
    /// Signs the record with the host's key.
    pub(crate) fn sign(&self, key: &Keypair) -> Option<SignedRecord> {
        let record = postcard::to_allocvec(self).ok()?;
        let signature = key.sign(&record).ok()?;
        Some(SignedRecord { record, signature })
    }
}

/// A verified record.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub host: PeerId,
    pub record: HostRecord,
    pub signed: SignedRecord,
    /// The host's public key (from the record).
    pub key: PublicKey,
}

/// Most channels a host record may list (a host subscribes to at most
/// this many); records listing more are refused.
pub(crate) const MAX_RECORD_CHANNELS: usize = 4096;

/// Checks a signed record; `None` if it does not decode or its signature is wrong.
pub(crate) fn verify(signed: &SignedRecord) -> Option<Verified> {
    verify_unless(signed, |_, _| false, |_| None)
}

/// The host id a record's encoded key names, without decoding the key: a
/// key's id is its own protobuf encoding inlined in an identity multihash
/// (every ed25519 key's is). Decoding an ed25519 key is a point
/// decompression, two thirds of a signature check; most records a host
/// receives are ones it holds, which need only the id. `None` for a
/// longer encoding (hashed ids; such keys are decoded).
fn inline_id(public_key: &[u8]) -> Option<PeerId> {
    // libp2p inlines encodings of up to 42 bytes.
    if public_key.len() > 42 {
        return None;
    }
    let hash = libp2p::multihash::Multihash::<64>::wrap(0x00, public_key).ok()?;
    PeerId::from_multihash(hash).ok()
}

/// Whether `signed` decodes to a record that `known(host, record)` says is
/// already known; no signature is checked (a record that does not decode
/// is not known).
pub(crate) fn is_known(
    signed: &SignedRecord,
    known: impl FnOnce(&PeerId, &HostRecord) -> bool,
) -> bool {
    let Ok(record) = postcard::from_bytes::<HostRecord>(&signed.record) else {
        return false;
    };
    match inline_id(&record.public_key) {
        Some(host) => known(&host, &record),
        None => PublicKey::try_decode_protobuf(&record.public_key)
            .is_ok_and(|key| known(&key.to_peer_id(), &record)),
    }
}

/// Like [`verify`], but first asks `known(host, record)` whether the record
/// is already known (not newer than what we hold); then it is not checked
/// (signature checks are the costly part of membership) and `None` returns.
/// `held(host)` may give the host's key already decoded (a member's), so a
/// newer record of a member is not decoded again.
pub(crate) fn verify_unless(
    signed: &SignedRecord,
    mut known: impl FnMut(&PeerId, &HostRecord) -> bool,
    held: impl FnOnce(&PeerId) -> Option<PublicKey>,
) -> Option<Verified> {
    let record: HostRecord = postcard::from_bytes(&signed.record).ok()?;
    // An id taken from the bytes is only used to skip known records and to
    // find a held key that encodes to the same bytes; a non-canonical
    // encoding names no member and is decoded below.
    let inline = inline_id(&record.public_key);
    if let Some(host) = inline {
        if known(&host, &record) {
            return None;
        }
    }
    let held = inline
        .and_then(|h| held(&h))
        .filter(|k| k.encode_protobuf() == record.public_key);
    let key = match held {
        Some(k) => k,
        None => {
            let key = PublicKey::try_decode_protobuf(&record.public_key).ok()?;
            let host = key.to_peer_id();
            if inline != Some(host) && known(&host, &record) {
                return None;
            }
            key
        }
    };
    if !key.verify(&signed.record, &signed.signature) {
        return None;
    }
    Some(Verified {
        host: key.to_peer_id(),
        record,
        signed: signed.clone(),
        key,
    })
}

/// A live host as this host knows it.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub epoch: u64,
    pub seq: u64,
    pub addrs: Vec<Multiaddr>,
    pub channels: Vec<String>,
    pub queues: Vec<crate::queue_group::QueueGroup>,
    pub signed: SignedRecord,
    /// The host's public key: checks what it signs (relayed requests).
    pub key: PublicKey,
    /// Highest heartbeat counter proved for this incarnation, and its proof.
    pub proved: Proved,
    /// The chain anchor of the current record.
    pub anchor: Anchor,
    /// When the counter last rose (or the record was first taken).
    pub last_heard: Instant,
    /// The host's key in the directory's key space ([`host_key`]): a
    /// member reached by its position in the key index is checked to be
    /// the one the key names, so that an index gone wrong fails as an
    /// unknown key, never as another host's lease.
    pub host_key: u64,
}

impl Member {
    /// Takes `new` if it proves a higher counter of the current chain
    /// (within `budget` hashes): renews the lease. Returns whether it did.
    fn raise(&mut self, new: &Proved, now: Instant, budget: &mut u64) -> bool {
        // The comparison first: about half of a digest's counters are not
        // higher, and it is the cheapest refusal.
        if new.beat <= self.proved.beat
            || !self.anchor.covers(new.beat)
            || !verify_beat(&self.proved, new, budget)
        {
            return false;
        }
        self.proved = *new;
        self.last_heard = now;
        true
    }
}

/// A host dropped because its counter stopped rising.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lapsed {
    pub host: PeerId,
    pub epoch: u64,
    /// Its last proved counter.
    pub proved: Proved,
    /// The first address its record gave (to redial it after a partition).
    pub addr: Option<Multiaddr>,
}

/// What applying a record changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing new (an old or duplicate record).
    None,
    /// A host we did not know.
    Joined,
    /// A known host's newer record, same incarnation.
    Updated,
    /// A known host restarted: entries of `old_epoch` are stale.
    Restarted { old_epoch: u64 },
    /// The host left.
    Left,
}

/// The membership table of one host.
#[derive(Debug)]
pub(crate) struct Membership {
    local: PeerId,
    // foldhash (seeded per map): digests look every member up several
    // times per entry, and SipHash was a tenth of the CPU at 512 hosts.
    // An index map, so that compact digests reach members by position
    // (`slots`) without hashing and comparing 38-byte ids per entry.
    members: indexmap::IndexMap<PeerId, Member, foldhash::fast::RandomState>,
    /// Left hosts: the epoch that left, and until when to remember it.
    tombstones: foldhash::HashMap<PeerId, (u64, Instant)>,
    /// `(key, host)` of every live host including this one; rebuilt on change.
    keys: Vec<(u64, PeerId)>,
    /// Position in `members` of each key's host (other live hosts only):
    /// a full digest's entry reaches its member by one lookup of a `u64`,
    /// not a second one hashing and comparing the 38-byte id (at 1,024
    /// hosts joining, that second lookup was a seventh of the CPU).
    /// Kept right on every removal ([`Self::drop_member`]).
    by_key: foldhash::HashMap<u64, usize>,
    /// Raised whenever a host joins or leaves the key indexes.
    version: u64,
    /// Raised whenever the live hosts or their record versions change.
    records_version: u64,
    /// Every live host by key, for compact digests, and the `version` it
    /// was sorted for.
    sorted: (u64, Vec<(u64, PeerId)>),
    /// Position in `members` of each host of `sorted` (`None`: this one),
    /// rebuilt with it: every removal from `members` raises `version`.
    slots: Vec<Option<usize>>,
    /// The last view fingerprint: for which `records_version` and own
    /// record version, and its value.
    view: Option<(u64, u64, u64, u64)>,
}

impl Membership {
    pub(crate) fn new(local: PeerId) -> Self {
        Membership {
            local,
            members: Default::default(),
            tombstones: Default::default(),
            keys: vec![(host_key(&local), local)],
            by_key: Default::default(),
            version: 0,
            records_version: 0,
            sorted: (u64::MAX, Vec::new()),
            slots: Vec::new(),
            view: None,
        }
    }

    /// Adds a host, at position `slot` of `members`, to the key indexes
    /// (O(1): joins of many hosts must not rehash every member each time).
    fn index(&mut self, host: PeerId, slot: usize) {
        let key = host_key(&host);
        self.keys.push((key, host));
        self.by_key.insert(key, slot);
        self.version += 1;
        self.records_version += 1;
    }

    /// Removes hosts from the key indexes.
    fn unindex(&mut self, gone: &[PeerId]) {
        if gone.is_empty() {
            return;
        }
        // A set: thousands of hosts may lapse at once (say, after a join
        // full of hosts that never beat), and a list made this quadratic.
        let gone: std::collections::HashSet<&PeerId> = gone.iter().collect();
        let (local, by_key) = (self.local, &mut self.by_key);
        self.keys.retain(|(k, h)| {
            let keep = *h == local || !gone.contains(h);
            if !keep {
                by_key.remove(k);
            }
            keep
        });
        self.version += 1;
        self.records_version += 1;
    }

    /// Removes `host` from `members` (not yet from the key indexes: see
    /// [`Self::unindex`]); whether it was one. The last member moves into
    /// its place, so that member's position in `by_key` follows it.
    fn drop_member(&mut self, host: &PeerId) -> bool {
        let Some((slot, _, _)) = self.members.swap_remove_full(host) else {
            return false;
        };
        if let Some((_, moved)) = self.members.get_index(slot) {
            self.by_key.insert(moved.host_key, slot);
        }
        true
    }

    /// Changes whenever the set of live hosts changes.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Changes whenever the live hosts or their records change.
    pub(crate) fn records_version(&self) -> u64 {
        self.records_version
    }

    /// Applies a verified record of another host.
    pub(crate) fn apply(&mut self, v: &Verified, now: Instant, tombstone_for: Duration) -> Change {
        if v.host == self.local {
            return Change::None;
        }
        let r = &v.record;
        if let Some(&(epoch, _)) = self.tombstones.get(&v.host) {
            if r.epoch <= epoch {
                return Change::None;
            }
            self.tombstones.remove(&v.host);
        }
        if r.leaving {
            self.tombstones
                .insert(v.host, (r.epoch, now + tombstone_for));
            if self.drop_member(&v.host) {
                self.unindex(&[v.host]);
                return Change::Left;
            }
            return Change::None;
        }
        let addrs = r
            .addrs
            .iter()
            .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
            .collect();
        let member = Member {
            epoch: r.epoch,
            seq: r.seq,
            addrs,
            channels: r.channels.clone(),
            queues: r.queues.clone(),
            signed: v.signed.clone(),
            key: v.key.clone(),
            proved: r.anchor.proved(),
            anchor: r.anchor,
            last_heard: now,
            host_key: host_key(&v.host),
        };
        match self.members.get_mut(&v.host) {
            None => {
                let (slot, _) = self.members.insert_full(v.host, member);
                self.index(v.host, slot);
                Change::Joined
            }
            Some(m) if (r.epoch, r.seq) <= (m.epoch, m.seq) => Change::None,
            Some(m) => {
                let old_epoch = m.epoch;
                self.records_version += 1;
                if r.epoch > old_epoch {
                    *m = member;
                    return Change::Restarted { old_epoch };
                }
                // A newer record of the same incarnation proves no life by
                // itself (anyone may replay it): the lease stays as it was,
                // and the counter goes on from the new chain's anchor if
                // the host started one.
                let (proved, last_heard) = if r.anchor == m.anchor {
                    (m.proved, m.last_heard)
                } else {
                    (r.anchor.proved(), m.last_heard)
                };
                *m = Member {
                    proved,
                    last_heard,
                    ..member
                };
                Change::Updated
            }
        }
    }

    /// Takes heartbeat counter `proved` of incarnation `epoch` of `host`; a
    /// proved counter higher than the one held renews the host's lease.
    /// Returns whether it did.
    pub(crate) fn heard(
        &mut self,
        host: &PeerId,
        epoch: u64,
        proved: &Proved,
        now: Instant,
        budget: &mut u64,
    ) -> bool {
        match self.members.get_mut(host) {
            Some(m) if m.epoch == epoch => m.raise(proved, now, budget),
            _ => false,
        }
    }

    /// Merges one entry of another host's digest (not this host's own): if
    /// that side's record of the host is older than ours, returns ours (and
    /// our counter) for it; else renews the lease if the counter rose. One
    /// key lookup and one member lookup per entry: digests list every host.
    pub(crate) fn merge_beat(
        &mut self,
        b: &Beat,
        now: Instant,
        budget: &mut u64,
    ) -> Option<(SignedRecord, Proved)> {
        let slot = *self.by_key.get(&b.key)?;
        let (_, m) = self
            .members
            .get_index_mut(slot)
            .filter(|(_, m)| m.host_key == b.key)?;
        if (b.epoch, b.seq) < (m.epoch, m.seq) {
            return Some((m.signed.clone(), m.proved));
        }
        if b.epoch == m.epoch {
            m.raise(&b.proved, now, budget);
        }
        None
    }

    /// Brings `sorted` (every live host, this one included, by key) up to
    /// date with the key indexes.
    fn sort_keys(&mut self) {
        if self.sorted.0 != self.version {
            let mut v = self.keys.clone();
            v.sort_unstable();
            self.slots = v.iter().map(|(k, _)| self.by_key.get(k).copied()).collect();
            self.sorted = (self.version, v);
        }
    }

    /// The fingerprint of this host's view: every live host's key and
    /// record version (this host's own is `own_epoch`, `own_seq`). Two
    /// hosts with the same view can swap compact digests: counters only,
    /// in key order. Recomputed only after a change.
    pub(crate) fn view(&mut self, own_epoch: u64, own_seq: u64) -> u64 {
        if let Some((rv, e, s, fp)) = self.view {
            if (rv, e, s) == (self.records_version, own_epoch, own_seq) {
                return fp;
            }
        }
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        let local = self.local;
        self.sort_keys();
        for ((key, host), slot) in self.sorted.1.iter().zip(&self.slots) {
            let (epoch, seq) = if *host == local {
                (own_epoch, own_seq)
            } else {
                match slot.and_then(|s| self.members.get_index(s)) {
                    Some((_, m)) => (m.epoch, m.seq),
                    None => continue,
                }
            };
            h.update(key.to_be_bytes());
            h.update(epoch.to_be_bytes());
            h.update(seq.to_be_bytes());
        }
        let d = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&d[..8]);
        let fp = u64::from_be_bytes(first);
        self.view = Some((self.records_version, own_epoch, own_seq, fp));
        fp
    }

    /// The heartbeat counters of every live host in key order (this host's
    /// own is `own_beat`): the body of a compact digest.
    pub(crate) fn counters(&mut self, own: Proved) -> Vec<Proved> {
        let local = self.local;
        self.sort_keys();
        self.sorted
            .1
            .iter()
            .zip(&self.slots)
            .map(|((_, h), slot)| {
                if *h == local {
                    own
                } else {
                    slot.and_then(|s| self.members.get_index(s))
                        .map_or(Proved::default(), |(_, m)| m.proved)
                }
            })
            .collect()
    }

    /// Merges the answer to our compact digest (what
    /// [`Self::merge_counters`] returned at a host with the same view): renews the lease of every host whose counter
    /// rose. `false` (the rest not taken) at a position out of range or
    /// out of order.
    pub(crate) fn merge_newer(
        &mut self,
        newer: &[(u32, Proved)],
        now: Instant,
        budget: &mut u64,
    ) -> bool {
        let local = self.local;
        self.sort_keys();
        let mut next = 0;
        for (i, proved) in newer {
            let i = *i as usize;
            let Some((_, h)) = self.sorted.1.get(i).filter(|_| i >= next) else {
                return false;
            };
            next = i + 1;
            if *h == local {
                continue;
            }
            let slot = self.slots.get(i).copied().flatten();
            if let Some((_, m)) = slot.and_then(|s| self.members.get_index_mut(s)) {
                m.raise(proved, now, budget);
            }
        }
        true
    }

    /// Merges a compact digest of a host with the same view: renews the
    /// lease of every host whose counter rose, and returns the counters
    /// this host has higher (`own` is this host's), by position in key
    /// order: the answer to that digest. `None` (nothing taken) if it does
    /// not list every live host.
    pub(crate) fn merge_counters(
        &mut self,
        counters: &[Proved],
        own: Proved,
        now: Instant,
        budget: &mut u64,
    ) -> Option<Vec<(u32, Proved)>> {
        let local = self.local;
        self.sort_keys();
        if counters.len() != self.sorted.1.len() {
            return None;
        }
        let mut newer = Vec::new();
        let entries = self.sorted.1.iter().zip(&self.slots).zip(counters);
        for (i, (((_, h), slot), theirs)) in entries.enumerate() {
            // One look-up by position serves both the merge and the answer.
            let mine = if *h == local {
                own
            } else if let Some((_, m)) = slot.and_then(|s| self.members.get_index_mut(s)) {
                // (A stale position could not renew the wrong host: a
                // counter's proof verifies only on its own host's chain.)
                m.raise(theirs, now, budget);
                m.proved
            } else {
                continue;
            };
            if mine.beat > theirs.beat {
                newer.push((i as u32, mine));
            }
        }
        Some(newer)
    }

    /// The live host whose key is `key` (not this one).
    #[cfg(test)]
    pub(crate) fn host_of_key(&self, key: u64) -> Option<PeerId> {
        let slot = *self.by_key.get(&key)?;
        self.members.get_index(slot).map(|(h, _)| *h)
    }

    /// This host could hear nobody for `late` (its loop, or the whole
    /// process, was held up): that silence does not count against any
    /// lease. Without it, a stall of a few seconds in a loaded network
    /// (512 hosts registering a million peers on two cores) let leases
    /// lapse everywhere, and the moves of directory entries that follow
    /// loaded the network further.
    pub(crate) fn excuse(&mut self, late: Duration, now: Instant) {
        for m in self.members.values_mut() {
            m.last_heard = (m.last_heard + late).min(now);
        }
    }

    /// Removes hosts not heard of for `lease`; returns them.
    /// Hosts whose counter has not risen for `after`.
    pub(crate) fn silent(&self, now: Instant, after: Duration) -> Vec<PeerId> {
        self.members
            .iter()
            .filter(|(_, m)| now.duration_since(m.last_heard) > after)
            .map(|(h, _)| *h)
            .collect()
    }

    /// Drops `host` (no longer admitted); whether it was a member.
    pub(crate) fn remove(&mut self, host: &PeerId) -> bool {
        let was = self.drop_member(host);
        if was {
            self.unindex(&[*host]);
        }
        was
    }

    /// How long the most silent member has gone without its counter
    /// rising here (zero with no other member): the margin left against
    /// the lease.
    pub(crate) fn longest_silence(&self, now: Instant) -> Duration {
        self.members
            .values()
            .map(|m| now.saturating_duration_since(m.last_heard))
            .max()
            .unwrap_or_default()
    }

    pub(crate) fn expire(&mut self, now: Instant, lease: Duration) -> Vec<Lapsed> {
        let gone: Vec<Lapsed> = self
            .members
            .iter()
            .filter(|(_, m)| now.duration_since(m.last_heard) > lease)
            .map(|(h, m)| Lapsed {
                host: *h,
                epoch: m.epoch,
                proved: m.proved,
                addr: m.addrs.first().cloned(),
            })
            .collect();
        for l in &gone {
            self.drop_member(&l.host);
        }
        let hosts: Vec<PeerId> = gone.iter().map(|l| l.host).collect();
        self.unindex(&hosts);
        self.tombstones.retain(|_, (_, until)| *until > now);
        gone
    }

    /// Keys of every live host, this one included.
    pub(crate) fn keys(&self) -> &[(u64, PeerId)] {
        &self.keys
    }

    /// The same ordered by key, for [`crate::directory::closest_sorted`]
    /// (sorted again only after a host joined or left).
    pub(crate) fn sorted_keys(&mut self) -> &[(u64, PeerId)] {
        self.sort_keys();
        &self.sorted.1
    }

    /// Whether `record` of `host` is not newer than what this table holds.
    pub(crate) fn knows(&self, host: &PeerId, record: &HostRecord) -> bool {
        if *host == self.local {
            return true;
        }
        if let Some(&(epoch, _)) = self.tombstones.get(host) {
            if record.epoch <= epoch {
                return true;
            }
        }
        self.members
            .get(host)
            .is_some_and(|m| (record.epoch, record.seq) <= (m.epoch, m.seq))
    }

    pub(crate) fn get(&self, host: &PeerId) -> Option<&Member> {
        self.members.get(host)
    }

    pub(crate) fn contains(&self, host: &PeerId) -> bool {
        *host == self.local || self.members.contains_key(host)
    }

    /// Other live hosts.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&PeerId, &Member)> {
        self.members.iter()
    }

    /// Number of live hosts, this one included.
    pub(crate) fn len(&self) -> usize {
        self.members.len() + 1
    }

    /// Signed records of every other live host.
    pub(crate) fn records(&self) -> Vec<SignedRecord> {
        self.members.values().map(|m| m.signed.clone()).collect()
    }

    /// The liveness digest of every other live host.
    pub(crate) fn digest(&self) -> impl Iterator<Item = Beat> + '_ {
        self.keys[1..].iter().filter_map(|(key, _)| {
            let slot = *self.by_key.get(key)?;
            let (_, m) = self.members.get_index(slot)?;
            (m.host_key == *key).then_some(Beat {
                key: *key,
                epoch: m.epoch,
                seq: m.seq,
                proved: m.proved,
            })
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use crate::beat_chain::Chain;

    /// A verified record of `key`'s host (also used by the relay tests).
    pub(crate) fn record(key: &Keypair, epoch: u64, seq: u64, leaving: bool) -> Verified {
        record_on(key, epoch, seq, leaving, Anchor::default())
    }

    /// A verified record of `key`'s host with a chain anchor.
    fn record_on(key: &Keypair, epoch: u64, seq: u64, leaving: bool, anchor: Anchor) -> Verified {
        let r = HostRecord {
            public_key: key.public().encode_protobuf(),
            epoch,
            seq,
            addrs: vec![],
            channels: vec![],
            queues: vec![],
            leaving,
            anchor,
        };
        verify(&r.sign(key).unwrap()).unwrap()
    }

    #[test]
    fn forged_record_is_refused() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let r = HostRecord {
            public_key: a.public().encode_protobuf(),
            epoch: 1,
            seq: 1,
            addrs: vec![],
            channels: vec![],
            queues: vec![],
            leaving: true,
            anchor: Anchor::default(),
        };
        let mut forged = r.sign(&b).unwrap();
        assert!(verify(&forged).is_none());
        forged.record[0] ^= 1;
        assert!(verify(&forged).is_none());
    }

    #[test]
    fn known_records_are_skipped_by_the_id_in_their_key_bytes_and_held_keys_must_match() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let host = a.public().to_peer_id();
        assert_eq!(inline_id(&a.public().encode_protobuf()), Some(host));
        let signed = record(&a, 1, 2, false).signed;
        // Known: skipped before any decoding or check, named by its id.
        let mut asked = Vec::new();
        let known = |h: &PeerId, r: &HostRecord| {
            asked.push((*h, r.seq));
            true
        };
        assert!(verify_unless(&signed, known, |_| None).is_none());
        assert_eq!(asked, vec![(host, 2)]);
        // Newer: checked with the held key when it is the record's own...
        let v = verify_unless(&signed, |_, _| false, |_| Some(a.public())).unwrap();
        assert_eq!((v.host, v.record.seq), (host, 2));
        // ...and a held key that is not the record's is not used.
        let v = verify_unless(&signed, |_, _| false, |_| Some(b.public())).unwrap();
        assert_eq!(v.key, a.public());
        // A record signed by another key fails with either key held.
        let mut forged = signed.clone();
        forged.signature = b.sign(&forged.record).unwrap();
        assert!(verify_unless(&forged, |_, _| false, |_| Some(a.public())).is_none());
        assert!(verify_unless(&forged, |_, _| false, |_| None).is_none());
        // Key bytes that are no key: no id, and the record is refused.
        assert!(inline_id(&[0xff; 43]).is_none());
        let mut bad = record(&a, 1, 3, false).record;
        bad.public_key = vec![8, 1, 18, 3, 1, 2, 3];
        let bad = SignedRecord {
            record: postcard::to_allocvec(&bad).unwrap(),
            signature: vec![0; 64],
        };
        assert!(verify_unless(&bad, |_, _| false, |_| Some(a.public())).is_none());
    }

    #[test]
    fn join_update_leave_and_tombstone() {
        let me = PeerId::random();
        let k = Keypair::generate_ed25519();
        let mut m = Membership::new(me);
        let now = Instant::now();
        let t = Duration::from_secs(60);
        assert_eq!(m.apply(&record(&k, 1, 1, false), now, t), Change::Joined);
        assert_eq!(m.apply(&record(&k, 1, 1, false), now, t), Change::None);
        assert_eq!(m.apply(&record(&k, 1, 2, false), now, t), Change::Updated);
        assert_eq!(m.len(), 2);
        assert_eq!(m.apply(&record(&k, 1, 3, true), now, t), Change::Left);
        assert_eq!(m.apply(&record(&k, 1, 4, false), now, t), Change::None);
        assert_eq!(m.len(), 1);
        assert_eq!(m.apply(&record(&k, 2, 1, false), now, t), Change::Joined);
        assert_eq!(
            m.apply(&record(&k, 3, 1, false), now, t),
            Change::Restarted { old_epoch: 2 }
        );
    }

    /// Every member is reached through its key at its own position, after
    /// removals of every kind (a leaving record, `remove`, lapses) moved
    /// other members into the freed places; a full digest's entries and
    /// the view follow the members, not stale positions.
    #[test]
    fn keys_reach_their_own_member_after_removals_move_others() {
        let me = PeerId::random();
        let mut m = Membership::new(me);
        let t0 = Instant::now();
        let t = Duration::from_secs(60);
        let keys: Vec<Keypair> = (0..12).map(|_| Keypair::generate_ed25519()).collect();
        // The live ones are taken 30 s after the others, which lapse.
        let live = [1, 2, 4, 7, 8];
        let later = t0 + Duration::from_secs(30);
        for (i, k) in keys.iter().enumerate() {
            let at = if live.contains(&i) { later } else { t0 };
            assert_eq!(m.apply(&record(k, 1, 2, false), at, t), Change::Joined);
        }
        let host = |i: usize| keys[i].public().to_peer_id();
        // Removed from the front, the middle and the end, three ways.
        assert_eq!(m.apply(&record(&keys[0], 1, 3, true), t0, t), Change::Left);
        assert!(m.remove(&host(5)));
        assert!(m.remove(&host(11)));
        let gone: Vec<PeerId> = m
            .expire(later, Duration::from_secs(10))
            .into_iter()
            .map(|l| l.host)
            .collect();
        assert_eq!(gone.len(), 4, "3, 6, 9 and 10 lapse");
        assert_eq!(m.len(), live.len() + 1);
        for i in live {
            let h = host(i);
            assert_eq!(m.host_of_key(host_key(&h)), Some(h), "member {i}");
        }
        for i in [0, 3, 5, 6, 9, 10, 11] {
            assert_eq!(m.host_of_key(host_key(&host(i))), None, "gone {i}");
        }
        // Each digest entry carries its own member's record version.
        let beats: Vec<Beat> = m.digest().collect();
        assert_eq!(beats.len(), live.len());
        for b in &beats {
            let h = m.host_of_key(b.key).unwrap();
            assert_eq!((b.epoch, b.seq), (1, 2), "{h}");
        }
        // A newer record of one member changes the view; an older beat of
        // it is answered with that member's own record.
        let v0 = m.view(1, 1);
        assert_eq!(
            m.apply(&record(&keys[7], 1, 3, false), later, t),
            Change::Updated
        );
        assert_ne!(m.view(1, 1), v0);
        let old = Beat {
            key: host_key(&host(7)),
            epoch: 1,
            seq: 1,
            proved: Proved::default(),
        };
        let mut budget = BUDGET;
        let (ours, _) = m.merge_beat(&old, later, &mut budget).unwrap();
        assert_eq!(ours.record, record(&keys[7], 1, 3, false).signed.record);
    }

    /// A membership that knows one other host (record `epoch`, `seq`,
    /// taken now): the membership, that host, when, and the host's chain.
    fn one_member(epoch: u64, seq: u64) -> (Membership, PeerId, Instant, Chain) {
        let mut m = Membership::new(PeerId::random());
        let k = Keypair::generate_ed25519();
        let t0 = Instant::now();
        let chain = Chain::new(0);
        let r = record_on(&k, epoch, seq, false, chain.anchor());
        m.apply(&r, t0, Duration::from_secs(1));
        (m, k.public().to_peer_id(), t0, chain)
    }

    const BUDGET: u64 = 1 << 20;

    #[test]
    fn only_a_rising_proved_counter_of_the_same_incarnation_renews_the_lease() {
        let (mut m, host, t0, chain) = one_member(5, 1);
        let p = |beat| chain.prove(beat).unwrap();
        let b = &mut BUDGET.clone();
        assert_eq!(m.host_of_key(host_key(&host)), Some(host));
        let later = t0 + Duration::from_secs(2);
        assert!(m.heard(&host, 5, &p(3), later, b));
        assert!(!m.heard(&host, 5, &p(3), later, b), "same counter again");
        assert!(!m.heard(&host, 5, &p(2), later, b), "older counter");
        assert!(!m.heard(&host, 4, &p(9), later, b), "other incarnation");
        let forged = Proved {
            beat: u64::MAX,
            proof: p(3).proof,
        };
        assert!(!m.heard(&host, 5, &forged, later, b), "unproved counter");
        let d: Vec<Beat> = m.digest().collect();
        assert_eq!(
            d,
            vec![Beat {
                key: host_key(&host),
                epoch: 5,
                seq: 1,
                proved: p(3),
            }]
        );
        // Renewed at `later`: live half a second after it, lapsed two after.
        let gone = m.expire(later + Duration::from_millis(500), Duration::from_secs(1));
        assert!(gone.is_empty());
        let gone = m.expire(later + Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(
            gone,
            vec![Lapsed {
                host,
                epoch: 5,
                proved: p(3),
                addr: None,
            }]
        );
        assert_eq!(m.host_of_key(host_key(&host)), None);
    }

    #[test]
    fn a_digest_entry_renews_the_lease_or_gets_our_newer_record() {
        let (mut m, host, t0, chain) = one_member(5, 2);
        let later = t0 + Duration::from_secs(2);
        let bu = &mut BUDGET.clone();
        let beat = |epoch, seq, beat| Beat {
            key: host_key(&host),
            epoch,
            seq,
            proved: chain.prove(beat).unwrap(),
        };
        // Same record, higher counter: renewed, nothing to send.
        assert_eq!(m.merge_beat(&beat(5, 2, 7), later, bu), None);
        assert_eq!(
            m.get(&host).map(|h| (h.proved.beat, h.last_heard)),
            Some((7, later))
        );
        // An older record there: ours goes back, with our counter.
        let (rec, b) = m
            .merge_beat(&beat(5, 1, 9), later, bu)
            .expect("ours is newer");
        assert_eq!(
            (rec, b.beat),
            (m.get(&host).map(|h| h.signed.clone()).expect("member"), 7)
        );
        // Another incarnation's counter does not renew; unknown keys are skipped.
        assert_eq!(m.merge_beat(&beat(6, 1, 99), later, bu), None);
        assert_eq!(m.get(&host).map(|h| h.proved.beat), Some(7));
        // An inflated counter is not taken, and the real one still renews.
        let inflated = Beat {
            proved: Proved {
                beat: u64::MAX,
                proof: [0; 16],
            },
            ..beat(5, 2, 8)
        };
        let at = later + Duration::from_secs(1);
        assert_eq!(m.merge_beat(&inflated, at, bu), None);
        assert_eq!(m.get(&host).map(|h| h.last_heard), Some(later));
        assert_eq!(m.merge_beat(&beat(5, 2, 8), at, bu), None);
        assert_eq!(m.get(&host).map(|h| h.last_heard), Some(at));
        let stranger = Beat {
            key: 42,
            ..beat(5, 2, 9)
        };
        assert_eq!(m.merge_beat(&stranger, later, bu), None);
    }

    #[test]
    fn hosts_with_the_same_view_swap_counters_in_key_order() {
        // Two hosts a and b that both know c: the same view, whichever
        // order they learnt the records in.
        let (ka, kb, kc) = (
            Keypair::generate_ed25519(),
            Keypair::generate_ed25519(),
            Keypair::generate_ed25519(),
        );
        let (a, b, c) = (
            ka.public().to_peer_id(),
            kb.public().to_peer_id(),
            kc.public().to_peer_id(),
        );
        let (t0, lease) = (Instant::now(), Duration::from_secs(1));
        let (ca, cb, cc) = (Chain::new(0), Chain::new(0), Chain::new(0));
        let rec = |k, e, s, c: &Chain| record_on(k, e, s, false, c.anchor());
        let mut ma = Membership::new(a);
        ma.apply(&rec(&kc, 3, 1, &cc), t0, lease);
        ma.apply(&rec(&kb, 2, 1, &cb), t0, lease);
        let mut mb = Membership::new(b);
        mb.apply(&rec(&ka, 1, 1, &ca), t0, lease);
        mb.apply(&rec(&kc, 3, 1, &cc), t0, lease);
        assert_eq!(ma.view(1, 1), mb.view(2, 1));
        // Another own record version, or a newer record of c: another view.
        assert_ne!(ma.view(1, 2), mb.view(2, 1));
        let v = ma.view(1, 1);
        mb.apply(&rec(&kc, 3, 2, &cc), t0, lease);
        assert_ne!(mb.view(2, 1), v, "c's newer record changes b's view");
        ma.apply(&rec(&kc, 3, 2, &cc), t0, lease);
        assert_eq!(ma.view(1, 1), mb.view(2, 1));

        // a's counters (its own is 7, c's 4) renew b's leases of a and c.
        let bu = &mut BUDGET.clone();
        ma.heard(&c, 3, &cc.prove(4).unwrap(), t0, bu);
        let counters = ma.counters(ca.prove(7).unwrap());
        assert_eq!(counters.len(), 3);
        let later = t0 + Duration::from_millis(800);
        let own_b = cb.prove(9).unwrap();
        let newer = mb.merge_counters(&counters, own_b, later, bu);
        assert_eq!(newer.map(|n| n.len()), Some(1), "b's own counter is newer");
        let seen = |m: &Membership, h| m.get(h).map(|m| (m.proved.beat, m.last_heard));
        assert_eq!(seen(&mb, &a), Some((7, later)));
        assert_eq!(seen(&mb, &c), Some((4, later)));
        // Lower counters renew nothing; a list of the wrong length is refused.
        let zeros = [Proved::default(); 3];
        assert!(mb
            .merge_counters(&zeros, own_b, later + lease, bu)
            .is_some());
        assert_eq!(mb.get(&a).map(|m| m.last_heard), Some(later));
        assert_eq!(mb.merge_counters(&counters[..2], own_b, later, bu), None);
        // b answers with what it has higher only: its own counter and c's
        // newer one, not a's (a has that already).
        mb.heard(&c, 3, &cc.prove(6).unwrap(), later, bu);
        let newer = mb
            .merge_counters(&counters, own_b, later, bu)
            .unwrap_or_default();
        let beats: Vec<u64> = newer.iter().map(|(_, p)| p.beat).collect();
        assert_eq!(newer.len(), 2, "{beats:?}");
        let mut both = beats.clone();
        both.sort_unstable();
        assert_eq!(both, [6, 9]);
        let even_later = later + Duration::from_millis(100);
        assert!(ma.merge_newer(&newer, even_later, bu));
        assert_eq!(seen(&ma, &b), Some((9, even_later)));
        assert_eq!(seen(&ma, &c), Some((6, even_later)));
        // Positions out of order or out of range are refused.
        let (p0, p1) = (newer[0], newer[1]);
        assert!(!ma.merge_newer(&[p1, p0], later, bu));
        assert!(!ma.merge_newer(&[(3, p0.1)], later, bu));
        // c lapses at b: b's view changes.
        let before = mb.view(2, 1);
        assert_eq!(mb.expire(later + lease + lease, lease).len(), 2);
        assert_ne!(mb.view(2, 1), before);
    }

    #[test]
    fn compact_digests_reach_the_right_members_after_removals() {
        // Members are reached by position: removing one moves another into
        // its place, and the counters must still land on their own hosts.
        let t0 = Instant::now();
        let (lease, bu) = (Duration::from_secs(1), &mut BUDGET.clone());
        let me = Keypair::generate_ed25519().public().to_peer_id();
        let others: Vec<(Keypair, Chain)> = (0..5)
            .map(|_| (Keypair::generate_ed25519(), Chain::new(0)))
            .collect();
        let mut m = Membership::new(me);
        for (k, c) in &others {
            m.apply(&record_on(k, 1, 1, false, c.anchor()), t0, lease);
        }
        let hosts: Vec<PeerId> = others
            .iter()
            .map(|(k, _)| k.public().to_peer_id())
            .collect();
        // Read the positions once, then drop the first two members.
        let _ = m.counters(Proved::default());
        assert!(m.remove(&hosts[0]));
        assert!(m.remove(&hosts[1]));
        // A compact digest in today's key order: each host's own counter.
        let order: Vec<PeerId> = {
            m.sort_keys();
            m.sorted.1.iter().map(|(_, h)| *h).collect()
        };
        let counters: Vec<Proved> = order
            .iter()
            .map(|h| match hosts.iter().position(|x| x == h) {
                Some(i) => others[i].1.prove(10 + i as u64).unwrap_or_default(),
                None => Proved::default(),
            })
            .collect();
        let later = t0 + Duration::from_millis(500);
        assert!(m
            .merge_counters(&counters, Proved::default(), later, bu)
            .is_some());
        for (i, h) in hosts.iter().enumerate().skip(2) {
            let got = m.get(h).map(|x| (x.proved.beat, x.last_heard));
            assert_eq!(got, Some((10 + i as u64, later)), "host {i}");
        }
        assert_eq!(m.counters(Proved::default()), counters);
    }

    #[test]
    fn time_this_host_was_held_up_does_not_count_against_leases() {
        let (mut m, host, t0, _) = one_member(1, 1);
        let lease = Duration::from_secs(1);
        // Held up for 800 ms just before the lease would lapse: the host
        // has 800 ms more.
        let at = t0 + Duration::from_millis(900);
        m.excuse(Duration::from_millis(800), at);
        assert!(m.expire(t0 + Duration::from_millis(1500), lease).is_empty());
        assert_eq!(m.expire(t0 + Duration::from_millis(1900), lease).len(), 1);
        // Never beyond now: an excuse cannot put a host in the future.
        let (mut m, host2, t0, _) = one_member(1, 1);
        m.excuse(Duration::from_secs(60), t0);
        assert_eq!(m.get(&host2).map(|h| h.last_heard), Some(t0));
        assert_ne!(host, host2);
    }

    #[test]
    fn silent_hosts_expire() {
        let mut m = Membership::new(PeerId::random());
        let k = Keypair::generate_ed25519();
        let now = Instant::now();
        m.apply(&record(&k, 1, 1, false), now, Duration::from_secs(1));
        assert!(m
            .expire(now + Duration::from_secs(1), Duration::from_secs(2))
            .is_empty());
        assert_eq!(
            m.expire(now + Duration::from_secs(3), Duration::from_secs(2))
                .len(),
            1
        );
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn the_longest_silence_is_the_most_silent_members() {
        let now = Instant::now();
        let mut m = Membership::new(PeerId::random());
        assert_eq!(m.longest_silence(now), Duration::ZERO);
        for (i, k) in [Keypair::generate_ed25519(), Keypair::generate_ed25519()]
            .iter()
            .enumerate()
        {
            let heard = now + Duration::from_secs(i as u64);
            m.apply(&record(k, 1, 1, false), heard, Duration::from_secs(1));
        }
        let later = now + Duration::from_secs(5);
        assert_eq!(m.longest_silence(later), Duration::from_secs(5));
    }
}
