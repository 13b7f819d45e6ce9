//! The directory: which host holds which peer id.
//!
//! Placement follows Kademlia: an id's key is the first 8 bytes of its
//! SHA-256, a host's key the same of its libp2p peer id bytes, and an entry
//! lives on the `replication` hosts whose keys are closest to the id's key by
//! XOR distance. Every host knows the full membership (see
//! [`crate::membership`]), so it computes the holders locally and reaches them
//! in one hop.
//!
//! [`DirectoryStore`] is what a holder keeps. An entry always points to the
//! host that registered it: the holder takes the host from the authenticated
//! connection, never from the request's bytes, so a host can only publish,
//! refresh or withdraw entries that point to itself. Entries carry the
//! registering host's epoch (its start time); entries of an older epoch of
//! the same host are stale and are dropped when a newer epoch appears.

use std::collections::HashMap;

use libp2p::PeerId;
use sha2::{Digest, Sha256};

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

/// The `n` hosts of `members` closest to `key`, closest first.
pub(crate) fn closest(members: &[(u64, PeerId)], key: u64, n: usize) -> Vec<PeerId> {
    let mut best: Vec<(u64, PeerId)> = Vec::with_capacity(n + 1);
    for &(k, host) in members {
        let d = k ^ key;
        if best.len() == n && best.last().is_some_and(|&(bd, _)| d >= bd) {
            continue;
        }
        let pos = best.partition_point(|&(bd, _)| bd <= d);
        best.insert(pos, (d, host));
        best.truncate(n);
    }
    best.into_iter().map(|(_, h)| h).collect()
}

/// A directory operation, in the order the registering host made it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum DirOp {
    /// The peer id now lives on the sending host.
    Register(String),
    /// The peer id no longer lives on the sending host.
    Withdraw(String),
}

#[derive(Debug, Clone, Copy)]
struct Holding {
    host: u32,
    epoch: u64,
}

/// Entries this host holds for others (and for itself), bounded in count.
#[derive(Debug)]
pub(crate) struct DirectoryStore {
    entries: HashMap<Box<str>, Holding, ahash::RandomState>,
    hosts: Vec<PeerId>,
    host_index: HashMap<PeerId, u32>,
    max_entries: usize,
    refused: u64,
}

impl DirectoryStore {
    pub fn new(max_entries: usize) -> Self {
        DirectoryStore {
            entries: HashMap::default(),
            hosts: Vec::new(),
            host_index: HashMap::new(),
            max_entries,
            refused: 0,
        }
    }

    fn intern(&mut self, host: PeerId) -> u32 {
        if let Some(&i) = self.host_index.get(&host) {
            return i;
        }
        let i = self.hosts.len() as u32;
        self.hosts.push(host);
        self.host_index.insert(host, i);
        i
    }

    /// Applies `ops` made by `host` in epoch `epoch`.
    pub fn apply(&mut self, host: PeerId, epoch: u64, ops: Vec<DirOp>) {
        let h = self.intern(host);
        for op in ops {
            match op {
                DirOp::Register(id) => {
                    if let Some(e) = self.entries.get_mut(id.as_str()) {
                        if e.host == h && e.epoch > epoch {
                            continue; // a late packet of an older epoch
                        }
                        *e = Holding { host: h, epoch };
                    } else if self.entries.len() < self.max_entries {
                        self.entries
                            .insert(id.into_boxed_str(), Holding { host: h, epoch });
                    } else {
                        self.refused += 1;
                    }
                }
                DirOp::Withdraw(id) => {
                    if self
                        .entries
                        .get(id.as_str())
                        .is_some_and(|e| e.host == h && e.epoch <= epoch)
                    {
                        self.entries.remove(id.as_str());
                    }
                }
            }
        }
    }

    /// Keeps only the entries for which `keep(id)` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|id, _| keep(id));
    }

    /// The host an id lives on, if this store holds it.
    pub fn lookup(&self, id: &str) -> Option<PeerId> {
        let e = self.entries.get(id)?;
        self.hosts.get(e.host as usize).copied()
    }

    /// Drops every entry of `host` whose epoch is older than `epoch`
    /// (`u64::MAX` drops them all).
    pub fn drop_host(&mut self, host: &PeerId, before_epoch: u64) {
        let Some(&h) = self.host_index.get(host) else {
            return;
        };
        self.entries
            .retain(|_, e| !(e.host == h && e.epoch < before_epoch));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Registrations refused because the store was full.
    pub fn refused(&self) -> u64 {
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

    #[test]
    fn entries_point_to_their_host_only() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = DirectoryStore::new(10);
        s.apply(a, 1, vec![DirOp::Register("x".into())]);
        // b cannot withdraw a's entry
        s.apply(b, 1, vec![DirOp::Withdraw("x".into())]);
        assert_eq!(s.lookup("x"), Some(a));
        // the peer moves to b
        s.apply(b, 1, vec![DirOp::Register("x".into())]);
        assert_eq!(s.lookup("x"), Some(b));
        // a's late withdrawal does not remove b's entry
        s.apply(a, 1, vec![DirOp::Withdraw("x".into())]);
        assert_eq!(s.lookup("x"), Some(b));
        s.apply(b, 1, vec![DirOp::Withdraw("x".into())]);
        assert_eq!(s.lookup("x"), None);
    }

    #[test]
    fn newer_epoch_supersedes_and_store_is_bounded() {
        let a = PeerId::random();
        let mut s = DirectoryStore::new(2);
        s.apply(
            a,
            1,
            vec![DirOp::Register("x".into()), DirOp::Register("y".into())],
        );
        s.apply(a, 1, vec![DirOp::Register("z".into())]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.refused(), 1);
        s.drop_host(&a, 2);
        assert_eq!(s.len(), 0);
        s.apply(a, 2, vec![DirOp::Register("x".into())]);
        s.apply(a, 1, vec![DirOp::Register("x".into())]);
        s.drop_host(&a, 2);
        assert_eq!(s.lookup("x"), Some(a), "the old epoch did not overwrite");
    }
}
