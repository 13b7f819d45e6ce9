//! A receiver's memory of the delivery batches each sending host delivered
//! here, so that a batch sent again (after its link broke) is answered from
//! memory instead of delivered twice.

use std::collections::VecDeque;

use libp2p::PeerId;

use crate::protocol::Ack;

/// Sending hosts whose last batches are remembered.
pub(crate) const REMEMBERED_SENDERS: std::num::NonZeroUsize =
    match std::num::NonZeroUsize::new(4096) {
        Some(n) => n,
        None => unreachable!(),
    };

/// What a receiver knows of a sending host's delivery batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not seen before: deliver it.
    New,
    /// Delivered already (a resend, on a new stream or as a request): its
    /// acks, to answer from memory.
    Again(Vec<Ack>),
    /// Older than every remembered batch of that host, whose memory is
    /// full: it may have been delivered and forgotten, so it is refused (a
    /// relay replaying what it carried, or a batch overtaken by more than
    /// the window).
    Stale,
}

/// The last `window` delivery batches of each sending host, by `(epoch,
/// batch)`, with their acks; bounded (least recently heard senders are
/// forgotten, and a forgotten sender's next batch counts as new). One
/// memory serves delivery streams and delivery requests, and a sender
/// numbers the batches of both from one counter: a batch written on a
/// stream that broke goes again as a request with its id, and is answered
/// from here if it had arrived. Batches of the two paths may arrive out of
/// order, so the memory is a window, not a high-water mark: the window
/// holds more batches than a sender has in flight to one host at once
/// (four on its stream, one request).
#[derive(Debug)]
pub(crate) struct BatchMemory {
    window: usize,
    last: lru::LruCache<PeerId, VecDeque<Remembered>>,
}

/// A delivered batch's id and acks.
type Remembered = ((u64, u64), Vec<Ack>);

impl BatchMemory {
    /// Remembers `window` batches for each of `senders` hosts.
    pub(crate) fn new(window: usize, senders: std::num::NonZeroUsize) -> Self {
        BatchMemory {
            window: window.max(1),
            last: super::growing_lru(senders),
        }
    }

    /// Whether batch `id` of `host` is new, a resend or stale.
    pub(crate) fn check(&mut self, host: PeerId, id: (u64, u64)) -> Seen {
        let Some(last) = self.last.get(&host) else {
            return Seen::New;
        };
        if let Some((_, acks)) = last.iter().find(|(b, _)| *b == id) {
            return Seen::Again(acks.clone());
        }
        // Until the window is full nothing of this host was forgotten, so
        // a batch not in it is new whatever its id.
        match last.front() {
            Some((oldest, _)) if last.len() >= self.window && *oldest > id => Seen::Stale,
            _ => Seen::New,
        }
    }

    /// Remembers batch `id` of `host` as delivered with `acks` (the oldest
    /// is forgotten when the window is full).
    pub(crate) fn record(&mut self, host: PeerId, id: (u64, u64), acks: Vec<Ack>) {
        let last = self.last.get_or_insert_mut(host, VecDeque::new);
        let at = last.partition_point(|(b, _)| *b < id);
        last.insert(at, (id, acks));
        if last.len() > self.window {
            last.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resent_batch_is_answered_from_memory_and_a_forgotten_one_refused() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut m = BatchMemory::new(2, REMEMBERED_SENDERS);
        assert_eq!(m.check(a, (5, 1)), Seen::New);
        m.record(a, (5, 1), vec![Ack::Delivered]);
        assert_eq!(m.check(a, (5, 1)), Seen::Again(vec![Ack::Delivered]));
        // Overtaken (a request batch behind a stream batch): not seen, and
        // nothing of this host forgotten yet, so new.
        assert_eq!(m.check(a, (5, 0)), Seen::New);
        m.record(a, (5, 0), vec![Ack::InboxFull]);
        assert_eq!(m.check(a, (5, 0)), Seen::Again(vec![Ack::InboxFull]));
        m.record(a, (5, 2), vec![Ack::Delivered]);
        // Batch 0 was forgotten: a relay replaying it, or a batch of an
        // earlier incarnation, is refused.
        assert_eq!(m.check(a, (5, 0)), Seen::Stale);
        assert_eq!(m.check(a, (4, 9)), Seen::Stale);
        assert_eq!(m.check(a, (5, 1)), Seen::Again(vec![Ack::Delivered]));
        // A restart (higher epoch) starts its count again; other senders
        // are apart.
        assert_eq!(m.check(a, (6, 0)), Seen::New);
        assert_eq!(m.check(b, (1, 0)), Seen::New);
    }
}
