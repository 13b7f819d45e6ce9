//! The directory: which host holds which peer id.
//!
//! Placement follows Kademlia: an id's key is the first 8 bytes of its
//! SHA-256, a host's key the same of its libp2p peer id bytes, and an entry
//! lives on the `replication` hosts whose keys are closest to the id's key by
//! XOR distance. Every host knows the full membership (see
//! [`crate::core::membership`]), so it computes the holders locally and reaches them
//! in one hop.
//!
//! [`DirectoryStore`] is what a holder keeps. An entry always points to the
//! host that registered it: the holder takes the host from the authenticated
//! connection, never from the request's bytes, so a host can only publish,
//! refresh or withdraw entries that point to itself. Entries carry the
//! registering host's epoch (its start time); entries of an older epoch of
//! the same host are stale and are dropped when a newer epoch appears.
//!
//! An id belongs to the first live host that registered it: a holder
//! refuses another host's registration of an id it holds (a conflict, which
//! the registering host is told), so a duplicate can neither take the
//! first's messages nor, by withdrawing, hide it. Entries of a host that
//! leaves or lapses are dropped, which frees its ids.

use std::collections::HashMap;

use libp2p::PeerId;
use sha2::{Digest, Sha256};

/// A peer id as the directory keeps and sends it: shared by the queues
/// to its holders and the requests kept for a resend. `triomphe`'s `Arc`
/// has one reference count where `std`'s has two, which puts a 12-byte id
/// in a 32-byte allocation instead of 48, at every holder of a million
/// entries.
pub(crate) type Id = triomphe::Arc<str>;

/// The XOR-metric key of an id or of a host's peer-id bytes.
pub(crate) fn key_of(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    let mut k = [0u8; 8];
    k.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(k)
}

/// The key of a host.
pub(crate) fn host_key(host: &PeerId) -> u64 {
    key_of(&host.to_bytes())
}

/// The `n` hosts of `sorted` (the members ordered by key) closest to
/// `key`, into `best` (cleared first) as `(distance, position in
/// sorted)`, closest first. The hosts sharing the top `b` bits of `key`
/// lie next to each other there, and each is closer than any host outside
/// them, so only the narrowest such run that still holds `n` hosts is
/// read: about `2n` keys and a few binary searches instead of every
/// member. Per-peer paths (each created peer, each local peer when
/// the membership changes, each held entry at a trim) run this once per
/// peer, so with every member read a change of membership at 1,024 hosts
/// cost each host `peers × 1,024` steps.
pub(crate) fn closest_sorted(
    sorted: &[(u64, PeerId)],
    key: u64,
    n: usize,
    best: &mut Vec<(u64, u32)>,
) {
    debug_assert!(sorted.windows(2).all(|w| w[0].0 <= w[1].0));
    // The run of hosts whose key starts with `key`'s top `bits` bits.
    let run = |bits: u32| -> (usize, usize) {
        let (low, high) = match bits {
            0 => (0, u64::MAX),
            64 => (key, key),
            b => {
                let low = key & (u64::MAX << (64 - b));
                (low, low | (u64::MAX >> b))
            }
        };
        (
            sorted.partition_point(|&(k, _)| k < low),
            sorted.partition_point(|&(k, _)| k <= high),
        )
    };
    // The most shared bits whose run still holds `n` hosts (runs only
    // shrink as bits are added). Keys are hashes, so a run of `bits` holds
    // about `hosts / 2^bits`: start there and step, two or three runs in
    // all (at most 65 when keys bunch).
    if n == 0 || sorted.len() <= n {
        closest_in(sorted, 0..sorted.len(), key, n, best);
        return;
    }
    let mut bits = (sorted.len() / n).ilog2().min(64);
    let mut found = run(bits);
    if found.1 - found.0 >= n {
        while bits < 64 {
            let narrower = run(bits + 1);
            if narrower.1 - narrower.0 < n {
                break;
            }
            (bits, found) = (bits + 1, narrower);
        }
    } else {
        // The run of 0 bits is every host, more than `n`: this ends.
        while found.1 - found.0 < n {
            bits -= 1;
            found = run(bits);
        }
    }
    closest_in(sorted, found.0..found.1, key, n, best);
}

/// The `n` hosts of `members` closest to `key`, closest first.
pub(crate) fn closest(members: &[(u64, PeerId)], key: u64, n: usize) -> Vec<PeerId> {
    let mut best = Vec::with_capacity(n + 1);
    closest_in(members, 0..members.len(), key, n, &mut best);
    best.iter().map(|&(_, i)| members[i as usize].1).collect()
}

/// The `n` of `members[range]` closest to `key`, into `best` as
/// `(distance, index into members)`, closest first.
fn closest_in(
    members: &[(u64, PeerId)],
    range: std::ops::Range<usize>,
    key: u64,
    n: usize,
    best: &mut Vec<(u64, u32)>,
) {
    best.clear();
    if n == 0 {
        return;
    }
    let start = range.start;
    for (i, &(k, _)) in members[range].iter().enumerate() {
        let i = start + i;
        let d = k ^ key;
        if best.len() == n {
            if best.last().is_some_and(|&(bd, _)| d >= bd) {
                continue;
            }
            best.pop();
        }
        let pos = best.partition_point(|&(bd, _)| bd <= d);
        best.insert(pos, (d, i as u32));
    }
}

/// A directory operation, in the order the registering host made it. The
/// id is shared (`Arc`) between the host's registry, the queues to its
/// holders and the requests kept for a resend, so an operation for three
/// holders allocates nothing; a holder decodes it with one allocation and
/// keeps it as is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum DirOp {
    /// The peer id now lives on the sending host.
    Register(#[serde(serialize_with = "id_str", deserialize_with = "arc_str")] Id),
    /// The peer id no longer lives on the sending host.
    Withdraw(#[serde(serialize_with = "id_str", deserialize_with = "arc_str")] Id),
}

/// Encodes an [`Id`] as a string.
fn id_str<S: serde::Serializer>(id: &Id, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(id)
}

/// Decodes a string straight into an [`Id`] (one allocation, no copy
/// through a `Box<str>`).
fn arc_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Id;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
            Ok(Id::from(v))
        }
    }
    d.deserialize_str(V)
}

/// What a holder refused of a batch of operations.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Ids registered by another live host, with that host.
    pub conflicts: Vec<(Id, PeerId)>,
    /// Registrations refused because the store is full.
    pub full: u32,
}

/// Where entries came from: a host in one of its epochs. An entry names
/// its origin by index (4 bytes, where the host's index and the epoch took
/// 16 with padding: 8 bytes less per slot of the table).
#[derive(Debug, Clone, Copy)]
struct Origin {
    host: u32,
    epoch: u64,
    /// Entries of this origin; at 0 the origin's index is reused.
    entries: u32,
}

/// Entries this host holds for others (and for itself), bounded in count.
#[derive(Debug)]
pub(crate) struct DirectoryStore {
    /// Each id with the index of its origin in `origins`.
    entries: HashMap<Id, u32, foldhash::fast::RandomState>,
    origins: Vec<Origin>,
    /// The live origins (those with entries), by host and epoch; the
    /// others' indices wait in `free`. Live origins never outnumber the
    /// entries, whatever epochs a host sends.
    origin_index: HashMap<(u32, u64), u32>,
    free: Vec<u32>,
    hosts: Vec<PeerId>,
    /// Entries held per host (by interned index): the per-host quota.
    counts: Vec<usize>,
    host_index: HashMap<PeerId, u32>,
    max_entries: usize,
    max_per_host: usize,
    refused: u64,
}

impl DirectoryStore {
    pub(crate) fn new(max_entries: usize, max_per_host: usize) -> Self {
        DirectoryStore {
            entries: HashMap::default(),
            origins: Vec::new(),
            origin_index: HashMap::new(),
            free: Vec::new(),
            hosts: Vec::new(),
            counts: Vec::new(),
            host_index: HashMap::new(),
            max_entries,
            max_per_host,
            refused: 0,
        }
    }

    /// The index of `host`. Interned hosts are members that registered
    /// (non-members are refused before this), so the list is bounded by
    /// the hosts ever admitted.
    fn intern(&mut self, host: PeerId) -> u32 {
        if let Some(&i) = self.host_index.get(&host) {
            return i;
        }
        let i = self.hosts.len() as u32;
        self.hosts.push(host);
        self.counts.push(0);
        self.host_index.insert(host, i);
        i
    }

    /// The index of the origin `(host, epoch)`, made live if it was not.
    fn origin(&mut self, host: u32, epoch: u64) -> u32 {
        if let Some(&o) = self.origin_index.get(&(host, epoch)) {
            return o;
        }
        let origin = Origin {
            host,
            epoch,
            entries: 0,
        };
        let o = match self.free.pop() {
            Some(o) => {
                self.origins[o as usize] = origin;
                o
            }
            None => {
                self.origins.push(origin);
                (self.origins.len() - 1) as u32
            }
        };
        self.origin_index.insert((host, epoch), o);
        o
    }

    /// Frees origin `o` if no entry names it any more.
    fn release(&mut self, o: u32) {
        let origin = self.origins[o as usize];
        if origin.entries == 0 && self.origin_index.get(&(origin.host, origin.epoch)) == Some(&o) {
            self.origin_index.remove(&(origin.host, origin.epoch));
            self.free.push(o);
        }
    }

    /// Counts the entries per host and per origin again, and frees the
    /// origins left without entries.
    fn recount(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.origins.iter_mut().for_each(|o| o.entries = 0);
        for &o in self.entries.values() {
            let origin = &mut self.origins[o as usize];
            origin.entries += 1;
            self.counts[origin.host as usize] += 1;
        }
        for o in 0..self.origins.len() as u32 {
            self.release(o);
        }
    }

    /// Applies `ops` made by `host` in epoch `epoch`; returns the
    /// registrations refused.
    pub(crate) fn apply(&mut self, host: PeerId, epoch: u64, ops: Vec<DirOp>) -> Applied {
        let h = self.intern(host);
        let o = self.origin(h, epoch);
        let mut out = Applied::default();
        for op in ops {
            match op {
                DirOp::Register(id) => {
                    if let Some(e) = self.entries.get_mut(&*id) {
                        let cur = self.origins[*e as usize];
                        if cur.host != h {
                            let owner = self.hosts[cur.host as usize];
                            out.conflicts.push((id, owner));
                            continue;
                        }
                        if cur.epoch > epoch {
                            continue; // a late packet of an older epoch
                        }
                        if *e != o {
                            let old = std::mem::replace(e, o);
                            self.origins[old as usize].entries -= 1;
                            self.origins[o as usize].entries += 1;
                            self.release(old);
                        }
                    } else if self.entries.len() < self.max_entries
                        && self.counts[h as usize] < self.max_per_host
                    {
                        self.entries.insert(id, o);
                        self.origins[o as usize].entries += 1;
                        self.counts[h as usize] += 1;
                    } else {
                        self.refused += 1;
                        out.full += 1;
                    }
                }
                DirOp::Withdraw(id) => {
                    let Some(&e) = self.entries.get(&*id) else {
                        continue;
                    };
                    let cur = self.origins[e as usize];
                    if cur.host == h && cur.epoch <= epoch {
                        self.entries.remove(&*id);
                        self.origins[e as usize].entries -= 1;
                        self.counts[h as usize] -= 1;
                        // This batch's own origin stays live until its
                        // end: later operations may still name it.
                        if e != o {
                            self.release(e);
                        }
                    }
                }
            }
        }
        self.release(o);
        out
    }

    /// Keeps only the entries for which `keep(id)` is true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|id, _| keep(id));
        self.recount();
    }

    /// The host an id lives on, if this store holds it.
    pub(crate) fn lookup(&self, id: &str) -> Option<PeerId> {
        let &o = self.entries.get(id)?;
        let origin = self.origins.get(o as usize)?;
        self.hosts.get(origin.host as usize).copied()
    }

    /// Drops every entry of `host` whose epoch is older than `epoch`
    /// (`u64::MAX` drops them all).
    pub(crate) fn drop_host(&mut self, host: &PeerId, before_epoch: u64) {
        let Some(&h) = self.host_index.get(host) else {
            return;
        };
        let origins = &self.origins;
        self.entries.retain(|_, o| {
            let origin = &origins[*o as usize];
            !(origin.host == h && origin.epoch < before_epoch)
        });
        self.recount();
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Registrations refused because the store, or the registering host's
    /// share of it, was full.
    pub(crate) fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<(u64, PeerId)> {
        (0..n)
            .map(|_| {
                let p = PeerId::random();
                (host_key(&p), p)
            })
            .collect()
    }

    #[test]
    fn closest_matches_a_full_sort() {
        let hs = hosts(50);
        for i in 0..200u32 {
            let key = key_of(format!("peer-{i}").as_bytes());
            let mut sorted = hs.clone();
            sorted.sort_by_key(|(k, _)| k ^ key);
            let want: Vec<PeerId> = sorted.iter().take(3).map(|(_, p)| *p).collect();
            assert_eq!(closest(&hs, key, 3), want);
        }
        assert_eq!(closest(&hs[..2], 7, 3).len(), 2);
    }

    proptest::proptest! {
        /// The search over sorted keys finds the hosts a full scan finds,
        /// also for keys bunched under a shared prefix and for every size
        /// from an empty membership up.
        #[test]
        fn the_sorted_search_finds_what_a_full_scan_finds(
            raw in proptest::collection::vec(proptest::num::u64::ANY, 0..80),
            bunch in 0u32..64,
            key in proptest::num::u64::ANY,
            n in 0usize..6,
        ) {
            // Half the keys share their top `bunch` bits with `key`.
            let mask = if bunch == 0 { 0 } else { u64::MAX << (64 - bunch) };
            let mut members: Vec<(u64, PeerId)> = raw
                .iter()
                .enumerate()
                .map(|(i, &k)| {
                    let k = if i % 2 == 0 { (key & mask) | (k & !mask) } else { k };
                    (k, PeerId::random())
                })
                .collect();
            members.sort_unstable();
            members.dedup_by_key(|(k, _)| *k);
            let (mut want, mut got) = (Vec::new(), Vec::new());
            closest_in(&members, 0..members.len(), key, n, &mut want);
            closest_sorted(&members, key, n, &mut got);
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn entries_point_to_their_host_only() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = DirectoryStore::new(10, 10);
        s.apply(a, 1, vec![DirOp::Register("x".into())]);
        // b cannot withdraw a's entry
        s.apply(b, 1, vec![DirOp::Withdraw("x".into())]);
        assert_eq!(s.lookup("x"), Some(a));
        // b cannot take it either: a conflict, naming a
        let r = s.apply(b, 1, vec![DirOp::Register("x".into())]);
        assert_eq!(r.conflicts, vec![(Id::from("x"), a)]);
        assert_eq!(s.lookup("x"), Some(a));
        // the peer moves to b: a withdraws, b registers
        s.apply(a, 1, vec![DirOp::Withdraw("x".into())]);
        assert!(s
            .apply(b, 1, vec![DirOp::Register("x".into())])
            .conflicts
            .is_empty());
        assert_eq!(s.lookup("x"), Some(b));
        // a's late withdrawal does not remove b's entry
        s.apply(a, 1, vec![DirOp::Withdraw("x".into())]);
        assert_eq!(s.lookup("x"), Some(b));
        // a host restarted (same host, newer epoch) keeps its ids
        assert!(s
            .apply(b, 2, vec![DirOp::Register("x".into())])
            .conflicts
            .is_empty());
        s.apply(b, 1, vec![DirOp::Withdraw("x".into())]);
        assert_eq!(
            s.lookup("x"),
            Some(b),
            "an older epoch's withdrawal is late"
        );
        s.apply(b, 2, vec![DirOp::Withdraw("x".into())]);
        assert_eq!(s.lookup("x"), None);
    }

    #[test]
    fn newer_epoch_supersedes_and_store_is_bounded() {
        let a = PeerId::random();
        let mut s = DirectoryStore::new(2, 2);
        s.apply(
            a,
            1,
            vec![DirOp::Register("x".into()), DirOp::Register("y".into())],
        );
        assert_eq!(s.apply(a, 1, vec![DirOp::Register("z".into())]).full, 1);
        assert_eq!(s.len(), 2);
        assert_eq!(s.refused(), 1);
        s.drop_host(&a, 2);
        assert_eq!(s.len(), 0);
        s.apply(a, 2, vec![DirOp::Register("x".into())]);
        s.apply(a, 1, vec![DirOp::Register("x".into())]);
        s.drop_host(&a, 2);
        assert_eq!(s.lookup("x"), Some(a), "the old epoch did not overwrite");
    }

    #[test]
    fn origins_stay_bounded_by_the_entries() {
        let a = PeerId::random();
        let mut s = DirectoryStore::new(10, 10);
        // A host that sends a new epoch with every request moves its
        // entry along; the origins it leaves empty are reused.
        for epoch in 1..1000u64 {
            s.apply(a, epoch, vec![DirOp::Register("x".into())]);
            s.apply(a, epoch + 1, vec![DirOp::Withdraw("y".into())]);
        }
        assert_eq!(s.lookup("x"), Some(a));
        assert_eq!(s.origin_index.len(), 1);
        assert!(s.origins.len() <= 2, "{} origins", s.origins.len());
        // An older epoch's withdrawal is late; the entry's own removes it.
        s.apply(a, 5, vec![DirOp::Withdraw("x".into())]);
        assert_eq!(s.lookup("x"), Some(a));
        s.apply(a, 999, vec![DirOp::Withdraw("x".into())]);
        assert_eq!((s.len(), s.origin_index.len()), (0, 0));
        // A batch that empties its origin and then registers again keeps
        // it: another host's origin must not take its index.
        let b = PeerId::random();
        let ops = vec![
            DirOp::Register("p".into()),
            DirOp::Withdraw("p".into()),
            DirOp::Register("q".into()),
        ];
        s.apply(a, 1000, ops);
        s.apply(b, 1, vec![DirOp::Register("r".into())]);
        assert_eq!(s.lookup("q"), Some(a));
        assert_eq!(s.lookup("r"), Some(b));
        assert_eq!(s.lookup("p"), None);
    }

    #[test]
    fn one_host_cannot_take_more_than_its_share() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = DirectoryStore::new(100, 3);
        let regs = |p: &str, n: usize| -> Vec<DirOp> {
            (0..n)
                .map(|i| DirOp::Register(format!("{p}{i}").into()))
                .collect()
        };
        assert_eq!(s.apply(a, 1, regs("a", 10)).full, 7);
        assert_eq!(s.apply(b, 1, regs("b", 3)).full, 0, "b still has room");
        assert_eq!((s.len(), s.refused()), (6, 7));
        // Withdrawing frees a's share; dropping a frees all of it.
        s.apply(a, 1, vec![DirOp::Withdraw("a0".into())]);
        assert_eq!(s.apply(a, 1, regs("c", 2)).full, 1);
        s.drop_host(&a, u64::MAX);
        assert_eq!(s.apply(a, 2, regs("d", 3)).full, 0);
        s.retain(|id| !id.starts_with('d'));
        assert_eq!(s.apply(a, 2, regs("e", 4)).full, 1);
    }
}
