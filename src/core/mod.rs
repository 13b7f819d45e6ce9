//! The protocol's decisions, without I/O: state machines that take inputs
//! with `now` and return what the event loop is to do, so each is tested
//! with a fake clock (the style of iroh-gossip's `proto` and quinn-proto).
//!
//! - `outbox`: a queue per destination with one batch in flight, retry
//!   rests and a cap over all destinations (directory operations, direct
//!   messages and relayed requests all use it);
//! - `broadcasts`: the report of each broadcast of this host as hosts
//!   answer, and the broadcasts of others taken already;
//! - `budget`: which idle links close when a host has too many;
//! - `batch_memory`: which delivery batches a receiver has seen;
//! - `send`: a direct message on its way;
//! - `messaging`: direct messages' queues per destination host, the switch
//!   between link tasks and request batches, and what an answer means for
//!   each send;
//! - `locations`: where peers live as the directory said, and senders'
//!   claims kept apart until the directory agrees;
//! - `lookup`: the holders asked for an id, in what order, and the
//!   Kademlia fallback;
//! - `registration`: which holders get which directory operations, when,
//!   and what a membership change moves;
//! - `members`: one host's membership and liveness protocol: its own
//!   record, heartbeat digests, leases, joins and leaves (on `membership`
//!   and `liveness`);
//! - `membership`: signed host records, heartbeat counters and leases;
//! - `neighbours`: the relay overlay this host is in, when it is
//!   recomputed, and which of its neighbours it dials when;
//! - `liveness`: when to beat, whom to swap digests with and in what form,
//!   which silent hosts to probe, and when the membership has converged;
//! - `ownership`: ids another host holds (withdrawn, tried again, lost)
//!   and registration checks, parked until news of their id;
//! - `publish`: channel publishes waiting for the mesh, batched into
//!   frames, and the callers held by backpressure;
//! - `relay`: requests through the overlay's contacts: bundles per next
//!   hop, what a contact forwards or refuses, and relays to go around;
//! - `subscriptions`: which local subscribers a publish reaches, once
//!   each, and which gossipsub topics the host is in;
//! - `queue_groups`: this host's members of queue groups, whose turn a
//!   publish is, and its hand-over from host to host until one takes it;
//! - `redial`: which dropped joined hosts and lapsed members to dial
//!   again, when, and when to give up.

pub(crate) mod batch_memory;
pub(crate) mod broadcasts;
pub(crate) mod budget;
pub(crate) mod liveness;
pub(crate) mod locations;
pub(crate) mod lookup;
pub(crate) mod members;
pub(crate) mod membership;
pub(crate) mod messaging;
pub(crate) mod neighbours;
pub(crate) mod outbox;
pub(crate) mod ownership;
pub(crate) mod publish;
pub(crate) mod queue_groups;
pub(crate) mod redial;
pub(crate) mod registration;
pub(crate) mod relay;
pub(crate) mod send;
pub(crate) mod subscriptions;

/// An LRU cache of at most `cap` entries whose table grows as entries
/// come. `LruCache::new` allocates its table for all of `cap` up front
/// (the location cache's 100,000 were 2 MiB of address space per host,
/// its control bytes written at once and the rest paged in as random
/// puts touched it): at 1,024 hosts in one process that is gigabytes.
pub(crate) fn growing_lru<K: std::hash::Hash + Eq, V>(
    cap: std::num::NonZeroUsize,
) -> lru::LruCache<K, V> {
    let mut cache = lru::LruCache::unbounded();
    // On an empty cache `resize` allocates nothing; `put` then keeps the
    // bound by evicting the least recently used.
    cache.resize(cap);
    cache
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    #[test]
    fn a_growing_lru_keeps_its_bound() {
        let cap = NonZeroUsize::new(3).unwrap();
        let mut c = super::growing_lru::<u32, u32>(cap);
        assert_eq!(c.cap(), cap);
        for i in 0..10 {
            c.put(i, i);
            assert!(c.len() <= 3);
        }
        assert_eq!(c.len(), 3);
        // The least recently used went first.
        assert!(c.peek(&6).is_none());
        assert_eq!(c.peek(&7), Some(&7));
        c.get(&7);
        c.put(10, 10);
        assert_eq!(c.peek(&7), Some(&7));
        assert!(c.peek(&8).is_none());
    }
}
