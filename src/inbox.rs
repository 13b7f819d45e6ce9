//! Local peers: a bounded, lazily allocated inbox per peer and the registry
//! of the peers living on this host.
//!
//! An idle peer must cost little: a host may hold a million of them. The
//! inbox is a `VecDeque` that allocates only when a message waits, a waker,
//! and the peer's id; the registry is a set keyed by the id inside the slot,
//! so the id is stored once.

use std::{
    borrow::Borrow,
    collections::{HashSet, VecDeque},
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
    task::{Context, Poll},
};

use futures::task::AtomicWaker;

use crate::{directory::key_of, message::Message};

/// Why a message could not be put in an inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The inbox holds `capacity` messages already.
    Full,
    /// The peer was removed.
    Removed,
}

/// One local peer: its id, its directory key and its inbox.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    pub id: Arc<str>,
    /// XOR-metric key of the id (see [`crate::directory::key_of`]).
    pub key: u64,
    capacity: u32,
    queue: Mutex<VecDeque<Message>>,
    waker: AtomicWaker,
    removed: AtomicBool,
    /// The direct lane of this peer's remote sends (see
    /// [`crate::send_lane`]).
    pub lane: crate::send_lane::LaneCell,
}

impl PeerSlot {
    pub(crate) fn new(id: &str, capacity: usize) -> Self {
        PeerSlot {
            id: id.into(),
            key: key_of(id.as_bytes()),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            queue: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            removed: AtomicBool::new(false),
            lane: Default::default(),
        }
    }

    /// Puts a message in the inbox, or says why it cannot.
    pub(crate) fn push(&self, msg: Message) -> Result<(), PushError> {
        if self.removed.load(Ordering::Acquire) {
            return Err(PushError::Removed);
        }
        {
            // A poisoned lock only means another thread panicked while pushing
            // or popping a VecDeque, which leaves it consistent: keep using it.
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= self.capacity as usize {
                return Err(PushError::Full);
            }
            q.push_back(msg);
        }
        self.waker.wake();
        Ok(())
    }

    /// Takes the next message; `Ready(None)` once the peer is removed and drained.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        if let Some(m) = self.try_recv() {
            return Poll::Ready(Some(m));
        }
        self.waker.register(cx.waker());
        if let Some(m) = self.try_recv() {
            return Poll::Ready(Some(m));
        }
        if self.removed.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Takes the next message if one waits.
    pub(crate) fn try_recv(&self) -> Option<Message> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let m = q.pop_front();
        if q.is_empty() && q.capacity() > 64 {
            // Give back a burst's memory so an idle peer stays small.
            *q = VecDeque::new();
        }
        m
    }

    /// Number of messages waiting.
    pub(crate) fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

/// A registry entry, hashed and compared by the peer id.
#[derive(Debug, Clone)]
struct Entry(Arc<PeerSlot>);

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}
impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state)
    }
}
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for Entry {}

/// The peers living on this host, shared by the handles and the event loop.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    // foldhash, seeded per map (ids come from users and remote hosts), and
    // several times cheaper than SipHash, which dominated creating a
    // million peers.
    peers: RwLock<HashSet<Entry, foldhash::fast::RandomState>>,
}

impl Registry {
    /// Inserts a new slot; `false` if the id is taken.
    pub(crate) fn insert(&self, slot: Arc<PeerSlot>) -> bool {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        peers.insert(Entry(slot))
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<PeerSlot>> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        peers.get(id).map(|e| e.0.clone())
    }

    /// Removes the slot for `id` and marks it removed.
    pub(crate) fn remove(&self, id: &str) -> Option<Arc<PeerSlot>> {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let slot = peers.take(id).map(|e| e.0)?;
        slot.mark_removed();
        Some(slot)
    }

    pub(crate) fn len(&self) -> usize {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Calls `f` with the id and key of every local peer.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Arc<str>, u64)) {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        for e in peers.iter() {
            f(&e.0.id, e.0.key);
        }
    }

    /// Calls `f` with every local peer's slot (under the read lock: `f`
    /// must not create or remove peers).
    pub(crate) fn for_each_slot(&self, mut f: impl FnMut(&PeerSlot)) {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        for e in peers.iter() {
            f(&e.0);
        }
    }

    /// Removes every peer (on close).
    pub(crate) fn clear(&self) {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        for e in peers.drain() {
            e.0.mark_removed();
        }
    }
}
