//! Answers of recent `find`s, read without the event loop.
//!
//! A `find` asks the peer's directory holders, through the loop: about
//! 10 µs on one host and a network round trip otherwise. A program that
//! asks where a peer is again and again (to show it, or to pick a route)
//! gets the last answer from here instead, in well under a microsecond,
//! while it is younger than `HostConfig::find_cache_ttl`. What can make
//! an answer stale sooner removes it: its host leaving or restarting, the
//! peer's host answering "unknown peer" to a send, a withdrawal this host
//! holds the entry of, and, for this host's own peers, their removal.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use libp2p::PeerId;
use lru::LruCache;

use crate::command::Location;

/// Answers kept per host. Unbounded-then-trimmed rather than preallocated:
/// a host that never calls `find` costs nothing.
const CAPACITY: usize = 4096;

/// Recent `find` answers of one host.
#[derive(Debug)]
pub(crate) struct FindCache {
    map: Mutex<LruCache<String, (Location, Instant)>>,
}

impl Default for FindCache {
    fn default() -> Self {
        FindCache {
            map: Mutex::new(LruCache::unbounded()),
        }
    }
}

impl FindCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, (Location, Instant)>> {
        // Plain map operations; a panic elsewhere cannot leave it torn.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer for `id` if it is younger than `ttl` (as a cache answer:
    /// no round trips).
    pub(crate) fn get(&self, id: &str, now: Instant, ttl: Duration) -> Option<Location> {
        let mut map = self.lock();
        match map.get(id) {
            Some((loc, at)) if now.saturating_duration_since(*at) < ttl => {
                let mut loc = loc.clone();
                loc.round_trips = 0;
                Some(loc)
            }
            Some(_) => {
                map.pop(id);
                None
            }
            None => None,
        }
    }

    /// Keeps the answer for `id`, found at `now`.
    pub(crate) fn put(&self, id: &str, loc: Location, now: Instant) {
        let mut map = self.lock();
        map.put(id.to_string(), (loc, now));
        while map.len() > CAPACITY {
            map.pop_lru();
        }
    }

    /// Forgets the answer for `id`.
    pub(crate) fn forget(&self, id: &str) {
        self.lock().pop(id);
    }

    /// Forgets every answer on `host` (it left or restarted).
    pub(crate) fn forget_host(&self, host: &PeerId) {
        let mut map = self.lock();
        if map.is_empty() {
            return;
        }
        crate::core::locations::remove_where(&mut map, |(loc, _)| loc.host == *host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(host: PeerId) -> Location {
        Location {
            host,
            addrs: Vec::new(),
            round_trips: 1,
        }
    }

    #[test]
    fn answers_last_until_the_ttl_or_until_forgotten() {
        let cache = FindCache::default();
        let (h1, h2) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1);
        cache.put("a", loc(h1), t0);
        cache.put("b", loc(h2), t0);
        let hit = cache
            .get("a", t0 + Duration::from_millis(999), ttl)
            .unwrap();
        assert_eq!((hit.host, hit.round_trips), (h1, 0));
        // Exactly at the TTL it is stale, and gone.
        assert!(cache.get("a", t0 + ttl, ttl).is_none());
        assert!(cache.get("a", t0, ttl).is_none());
        cache.forget_host(&h2);
        assert!(cache.get("b", t0, ttl).is_none());
        cache.put("c", loc(h1), t0);
        cache.forget("c");
        assert!(cache.get("c", t0, ttl).is_none());
    }

    #[test]
    fn the_oldest_answers_go_past_the_capacity() {
        let cache = FindCache::default();
        let t0 = Instant::now();
        let h = PeerId::random();
        for i in 0..CAPACITY + 10 {
            cache.put(&format!("p{i}"), loc(h), t0);
        }
        let ttl = Duration::from_secs(1);
        assert!(cache.get("p0", t0, ttl).is_none());
        assert!(cache.get(&format!("p{}", CAPACITY + 9), t0, ttl).is_some());
    }
}
