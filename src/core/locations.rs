//! Where peers live, as far as this host knows without asking: the
//! locations the directory gave (a cache), and where inbound messages say
//! their senders live (claims), kept apart because a claim is not proof.
//!
//! The connection proves which host sent a message, not that the host owns
//! the sender's id: a host could name any `from` and receive the replies
//! meant for it. So a claim becomes a cached location only when this
//! host's directory store (it holds the id) agrees; otherwise it is kept
//! apart and used only when the holders do not know the id yet (an entry
//! still on its way).

use std::{num::NonZeroUsize, sync::Arc};

use libp2p::PeerId;
use lru::LruCache;

/// Known locations of peers by id, bounded (least recently used go).
#[derive(Debug)]
pub(crate) struct Locations {
    cache: LruCache<Arc<str>, PeerId>,
    /// Where inbound messages said their senders live, not confirmed by
    /// the directory.
    claims: LruCache<Arc<str>, PeerId>,
}

impl Locations {
    /// Room for `cache` locations and `claims` claims.
    pub(crate) fn new(cache: NonZeroUsize, claims: NonZeroUsize) -> Self {
        Locations {
            cache: super::growing_lru(cache),
            claims: super::growing_lru(claims),
        }
    }

    /// The cached location of `id` (now the most recently used).
    pub(crate) fn get(&mut self, id: &str) -> Option<PeerId> {
        self.cache.get(id).copied()
    }

    /// The cached location of `id`, leaving the order as it is.
    pub(crate) fn peek(&self, id: &str) -> Option<PeerId> {
        self.cache.peek(id).copied()
    }

    /// Where a sender claimed `id` lives, if it did.
    pub(crate) fn claim(&self, id: &str) -> Option<PeerId> {
        self.claims.peek(id).copied()
    }

    /// The directory says `id` lives on `host`.
    pub(crate) fn learned(&mut self, id: Arc<str>, host: PeerId) {
        self.cache.put(id, host);
    }

    /// `host` said `id` does not live there (or withdrew it): its cached
    /// location is forgotten if it pointed there.
    pub(crate) fn not_on(&mut self, id: &str, host: PeerId) {
        if self.cache.peek(id) == Some(&host) {
            self.cache.pop(id);
        }
    }

    /// `host` delivered a message from `from`; `holder_says` is where this
    /// host's directory store puts `from` (if it holds the id).
    pub(crate) fn note_sender(
        &mut self,
        from: Arc<str>,
        host: PeerId,
        holder_says: Option<PeerId>,
    ) {
        match holder_says {
            Some(owner) if owner == host => {
                if self.cache.peek(&from) != Some(&host) {
                    self.cache.put(from, host);
                }
            }
            Some(_) => {}
            None if self.cache.peek(&from) == Some(&host) => {}
            None => {
                if self.claims.peek(&from) != Some(&host) {
                    self.claims.put(from, host);
                }
            }
        }
    }

    /// Forgets every location and claim on `host` (it left or lapsed).
    pub(crate) fn forget_host(&mut self, host: PeerId) {
        for map in [&mut self.cache, &mut self.claims] {
            remove_where(map, |h| *h == host);
        }
    }
}

/// Removes the entries of `map` whose value `stale` picks (`lru` has no
/// `retain`).
pub(crate) fn remove_where<K, V>(map: &mut LruCache<K, V>, stale: impl Fn(&V) -> bool)
where
    K: std::hash::Hash + Eq + Clone,
{
    let keys: Vec<K> = map
        .iter()
        .filter(|(_, v)| stale(v))
        .map(|(k, _)| k.clone())
        .collect();
    for k in keys {
        map.pop(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locations() -> Locations {
        let n = NonZeroUsize::new(16).unwrap();
        Locations::new(n, n)
    }

    #[test]
    fn a_senders_claim_is_a_location_only_where_the_directory_agrees() {
        let mut l = locations();
        let (real, liar) = (PeerId::random(), PeerId::random());
        // This host holds "alice" on `real`: `liar` claiming her is ignored.
        l.note_sender("alice".into(), liar, Some(real));
        assert_eq!((l.peek("alice"), l.claim("alice")), (None, None));
        l.note_sender("alice".into(), real, Some(real));
        assert_eq!(l.get("alice"), Some(real));
        // An id this host does not hold: a claim only, never a location.
        l.note_sender("bob".into(), liar, None);
        assert_eq!((l.peek("bob"), l.claim("bob")), (None, Some(liar)));
    }

    #[test]
    fn locations_are_forgotten_where_their_host_denies_them_or_leaves() {
        let mut l = locations();
        let (a, b) = (PeerId::random(), PeerId::random());
        l.learned("x".into(), a);
        l.not_on("x", b);
        assert_eq!(
            l.peek("x"),
            Some(a),
            "another host's denial changes nothing"
        );
        l.not_on("x", a);
        assert_eq!(l.peek("x"), None);
        l.learned("y".into(), a);
        l.learned("z".into(), b);
        l.note_sender("w".into(), a, None);
        l.forget_host(a);
        assert_eq!(
            (l.peek("y"), l.peek("z"), l.claim("w")),
            (None, Some(b), None)
        );
    }
}
