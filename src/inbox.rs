//! Local peers: a bounded, lazily allocated inbox per peer and the registry
//! of the peers living on this host.
//!
//! An idle peer must cost little: a host may hold a million of them. A
//! peer is one allocation holding its id, its directory key, a removed
//! flag and a lock over an empty pointer; its inbox queue, the waker of a
//! waiting receiver and its send lane are allocated behind that pointer
//! when it first receives, waits or sends to another host. The registry is
//! a table of the slots with their ids' hashes, so the id is stored once.

use std::{
    collections::VecDeque,
    hash::BuildHasher,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex, MutexGuard, RwLock,
    },
    task::{Context, Poll, Waker},
};

use hashbrown::HashTable;
use triomphe::HeaderSlice;

use crate::{directory::key_of, message::Message, send_lane::SendLane};

/// Why a message could not be put in an inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The inbox holds `capacity` messages already.
    Full,
    /// The peer was removed.
    Removed,
}

/// One local peer: its id, its directory key and its inbox. Cloning
/// shares it.
///
/// The id sits in the same allocation as the rest (a `triomphe` header
/// and string, with one reference count): 64 bytes in all for a 12-byte
/// id, where a `std::sync::Arc` of the slot and a separate `Arc<str>` of
/// the id took 192.
#[derive(Debug, Clone)]
pub(crate) struct PeerSlot(triomphe::Arc<HeaderSlice<Header, str>>);

#[derive(Debug)]
pub(crate) struct Header {
    /// XOR-metric key of the id (see [`crate::directory::key_of`]), or 0
    /// until first asked for: it is a SHA-256, worked out on the event loop
    /// when it registers the peer rather than in `create`.
    key: AtomicU64,
    /// Most messages the inbox holds.
    capacity: u32,
    removed: AtomicBool,
    busy: Mutex<Option<Box<Busy>>>,
}

/// What a peer holds once it has received, waited or sent remotely.
#[derive(Debug, Default)]
struct Busy {
    queue: VecDeque<Message>,
    waker: Option<Waker>,
    lane: Option<SendLane>,
}

impl PeerSlot {
    pub(crate) fn new(id: &str, capacity: usize) -> Self {
        let header = Header {
            key: AtomicU64::new(0),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            removed: AtomicBool::new(false),
            busy: Mutex::new(None),
        };
        PeerSlot(triomphe::Arc::from_header_and_str(header, id))
    }

    /// The peer's id.
    pub(crate) fn id(&self) -> &str {
        &self.0.slice
    }

    /// XOR-metric key of the id (computed on first use; a key that is 0
    /// is computed every time, which is only slower).
    pub(crate) fn key(&self) -> u64 {
        let known = self.0.header.key.load(Ordering::Relaxed);
        if known != 0 {
            return known;
        }
        let key = key_of(self.id().as_bytes());
        self.0.header.key.store(key, Ordering::Relaxed);
        key
    }

    fn busy(&self) -> MutexGuard<'_, Option<Box<Busy>>> {
        // A poisoned lock only means another thread panicked while pushing
        // or popping a VecDeque or setting a field, which leaves them
        // consistent: keep using it.
        self.0.header.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a message in the inbox, or says why it cannot.
    pub(crate) fn push(&self, msg: Message) -> Result<(), PushError> {
        if self.is_removed() {
            return Err(PushError::Removed);
        }
        let waker = {
            let mut busy = self.busy();
            let b = busy.get_or_insert_with(Default::default);
            if b.queue.len() >= self.0.header.capacity as usize {
                return Err(PushError::Full);
            }
            b.queue.push_back(msg);
            b.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Takes the next message; `Ready(None)` once the peer is removed and drained.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let mut busy = self.busy();
        if let Some(m) = pop(&mut busy) {
            return Poll::Ready(Some(m));
        }
        // `mark_removed` sets the flag before it takes the waker under this
        // lock, so a removal is seen here or wakes the waker set below.
        if self.is_removed() {
            return Poll::Ready(None);
        }
        let b = busy.get_or_insert_with(Default::default);
        match &mut b.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes the next message if one waits.
    pub(crate) fn try_recv(&self) -> Option<Message> {
        pop(&mut self.busy())
    }

    /// Number of messages waiting.
    pub(crate) fn len(&self) -> usize {
        self.busy().as_ref().map_or(0, |b| b.queue.len())
    }

    /// Runs `f` on the peer's send lane (allocated with the sender's id on
    /// first use) under the peer's lock.
    pub(crate) fn with_lane<R>(&self, f: impl FnOnce(&mut SendLane) -> R) -> R {
        let mut busy = self.busy();
        let b = busy.get_or_insert_with(Default::default);
        f(b.lane.get_or_insert_with(|| SendLane::new(self.id())))
    }

    /// Runs `f` on the peer's send lane if it has one.
    pub(crate) fn if_lane(&self, f: impl FnOnce(&mut SendLane)) {
        if let Some(lane) = self.busy().as_mut().and_then(|b| b.lane.as_mut()) {
            f(lane);
        }
    }

    pub(crate) fn mark_removed(&self) {
        self.0.header.removed.store(true, Ordering::Release);
        let waker = self.busy().as_mut().and_then(|b| b.waker.take());
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.0.header.removed.load(Ordering::Acquire)
    }
}

/// Takes the next message of an inbox.
fn pop(busy: &mut Option<Box<Busy>>) -> Option<Message> {
    let q = &mut busy.as_mut()?.queue;
    let m = q.pop_front();
    if q.is_empty() && q.capacity() > 64 {
        // Give back a burst's memory so an idle peer stays small.
        *q = VecDeque::new();
    }
    m
}

/// A registry entry: where the peer's slot is, with 32 bits of its id's
/// hash. Keeping the hash in the table lets it grow without reading any
/// slot (on growth every entry is placed anew, and each slot read is a
/// cache miss: a quarter of `create`'s time went to that in a million
/// creates). Eight bytes, not the sixteen of a hash and a slot pointer: at
/// a million peers the table is 16 MiB instead of 32 and mostly stays in
/// the last-level cache, where `create` waited on its stores missing it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    hash: u32,
    at: u32,
}

/// The table's 64-bit hash of an entry's 32: the low bits pick the bucket
/// and the top seven are hashbrown's tag, so both come from the hash.
fn widen(hash: u32) -> u64 {
    (u64::from(hash) << 32) | u64::from(hash)
}

/// The registry's table and the slots it points into.
#[derive(Debug, Default)]
struct Peers {
    index: HashTable<Entry>,
    /// Slots by place; a removed peer's place is reused. Like the table,
    /// the vector keeps its size after peers are removed.
    slots: Vec<Option<PeerSlot>>,
    free: Vec<u32>,
}

/// Whether `e` is the entry of `id` (whose hash is `hash`).
fn is(slots: &[Option<PeerSlot>], e: &Entry, hash: u32, id: &str) -> bool {
    e.hash == hash && slot(slots, e.at).is_some_and(|s| s.id() == id)
}

fn slot(slots: &[Option<PeerSlot>], at: u32) -> Option<&PeerSlot> {
    slots.get(at as usize)?.as_ref()
}

/// The peers living on this host, shared by the handles and the event loop.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    // foldhash, seeded per registry (ids come from users and remote hosts),
    // and several times cheaper than SipHash, which dominated creating a
    // million peers.
    hasher: foldhash::fast::RandomState,
    peers: RwLock<Peers>,
}

impl Registry {
    fn hash(&self, id: &str) -> u32 {
        // The high half: foldhash mixes its last step into it best.
        (self.hasher.hash_one(id) >> 32) as u32
    }

    /// Inserts a new slot; `false` if the id is taken.
    pub(crate) fn insert(&self, slot: PeerSlot) -> bool {
        let hash = self.hash(slot.id());
        let mut guard = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let peers = &mut *guard;
        let found = peers
            .index
            .find(widen(hash), |e| is(&peers.slots, e, hash, slot.id()));
        if found.is_some() {
            return false;
        }
        let at = match peers.free.pop() {
            Some(at) => at,
            // Four billion peers on one host would be 256 GiB of slots:
            // unreachable, and refused rather than wrapped.
            None => match u32::try_from(peers.slots.len()) {
                Ok(at) => {
                    peers.slots.push(None);
                    at
                }
                Err(_) => return false,
            },
        };
        peers.slots[at as usize] = Some(slot);
        peers
            .index
            .insert_unique(widen(hash), Entry { hash, at }, |e| widen(e.hash));
        true
    }

    pub(crate) fn get(&self, id: &str) -> Option<PeerSlot> {
        let hash = self.hash(id);
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let e = peers
            .index
            .find(widen(hash), |e| is(&peers.slots, e, hash, id))?;
        slot(&peers.slots, e.at).cloned()
    }

    /// Removes the slot for `id` and marks it removed.
    pub(crate) fn remove(&self, id: &str) -> Option<PeerSlot> {
        let hash = self.hash(id);
        let mut guard = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let peers = &mut *guard;
        let slots = &peers.slots;
        let found = peers
            .index
            .find_entry(widen(hash), |e| is(slots, e, hash, id));
        let at = found.ok()?.remove().0.at;
        let slot = peers.slots.get_mut(at as usize)?.take()?;
        peers.free.push(at);
        slot.mark_removed();
        Some(slot)
    }

    pub(crate) fn len(&self) -> usize {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .index
            .len()
    }

    /// Calls `f` with the id and key of every local peer.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&str, u64)) {
        self.for_each_slot(|s| f(s.id(), s.key()));
    }

    /// Calls `f` with every local peer's slot (under the read lock: `f`
    /// must not create or remove peers).
    pub(crate) fn for_each_slot(&self, mut f: impl FnMut(&PeerSlot)) {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        for s in peers.slots.iter().flatten() {
            f(s);
        }
    }

    /// Removes every peer (on close).
    pub(crate) fn clear(&self) {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let Peers { index, slots, free } = &mut *peers;
        index.clear();
        free.clear();
        for s in slots.drain(..).flatten() {
            s.mark_removed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_finds_each_peer_by_id_refuses_a_taken_id_and_forgets_a_removed_one() {
        let registry = Registry::default();
        let ids: Vec<String> = (0..5000).map(|i| format!("peer-{i}")).collect();
        for id in &ids {
            assert!(registry.insert(PeerSlot::new(id, 8)), "{id} is new");
        }
        // Growing the table (5,000 entries) placed every entry anew.
        assert_eq!(registry.len(), ids.len());
        assert!(!registry.insert(PeerSlot::new("peer-42", 8)), "taken");
        for id in &ids {
            let slot = registry.get(id).expect("registered");
            assert_eq!(slot.id(), id);
        }
        assert!(registry.get("peer-5000").is_none());

        let removed = registry.remove("peer-7").expect("there");
        assert!(removed.is_removed());
        assert!(registry.get("peer-7").is_none());
        assert!(registry.remove("peer-7").is_none(), "already gone");
        assert!(registry.insert(PeerSlot::new("peer-7", 8)), "free again");
        assert_eq!(registry.len(), ids.len());

        // Removed peers' places are reused, and every live peer is visited
        // once, removed ones never.
        let places = |r: &Registry| r.peers.read().unwrap().slots.len();
        let before = places(&registry);
        for id in &ids[100..200] {
            assert!(registry.remove(id).is_some());
        }
        for i in 0..100 {
            assert!(registry.insert(PeerSlot::new(&format!("new-{i}"), 8)));
        }
        assert_eq!(places(&registry), before, "places reused");
        let mut seen = Vec::new();
        registry.for_each_slot(|s| seen.push(s.id().to_string()));
        assert_eq!(seen.len(), registry.len());
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), ids.len(), "each once");
        assert!(registry.get("peer-150").is_none());
        assert_eq!(registry.get("new-42").expect("there").id(), "new-42");
        registry.clear();
        assert_eq!(registry.len(), 0);
        assert!(registry.get("new-42").is_none());
    }

    #[test]
    fn a_peers_key_is_its_ids_key_whenever_it_is_first_asked_for() {
        let registry = Registry::default();
        for id in ["a", "room.42.alice", "peer-000001"] {
            assert!(registry.insert(PeerSlot::new(id, 8)));
        }
        // Asked through the registry before the slot was ever asked.
        let mut seen = Vec::new();
        registry.for_each(|id, key| {
            assert_eq!(key, key_of(id.as_bytes()), "{id}");
            seen.push(id.to_string());
        });
        seen.sort();
        assert_eq!(seen, ["a", "peer-000001", "room.42.alice"]);
        // And again, now cached in the slot.
        let slot = registry.get("room.42.alice").expect("there");
        assert_eq!(slot.key(), key_of(b"room.42.alice"));
        assert_eq!(slot.key(), slot.key());
    }
}
