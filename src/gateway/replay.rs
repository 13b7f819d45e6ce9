//! Events a client has not acknowledged yet, kept so that a reconnect gets
//! them again.
//!
//! Without acknowledgements, the events written to a connection that
//! dropped before the gateway noticed (they sit in socket buffers, or were
//! on the wire) are lost: the session is resumed, but what was "delivered"
//! to the dead socket never reaches the client. A client that says
//! `"acks": true` in its hello gets a `seq` on every event and acknowledges
//! them cumulatively (`{"op":"ack","seq":N}`); the session keeps each event
//! until then and sends the unacknowledged ones again after a resume. The
//! window is bounded: while it is full the session takes nothing more from
//! its peers' inboxes, so the inboxes fill and senders get `inbox_full`, as
//! with a client that does not read.

use std::collections::VecDeque;

/// At most this many bytes of events wait for their acknowledgement (a
/// single larger event still goes when nothing else waits).
pub(crate) const WINDOW_BYTES: usize = 8 << 20;

/// The unacknowledged events of one session, in order.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// The sequence number of the next event (the first is 1).
    next: u64,
    events: VecDeque<(u64, String)>,
    bytes: usize,
}

impl Replay {
    pub(crate) fn new() -> Self {
        Replay {
            next: 1,
            ..Default::default()
        }
    }

    /// Numbers an event (a JSON object's text), keeps it, and returns the
    /// text to send: the same object with `"seq":N` first.
    pub(crate) fn stamp(&mut self, event: &str) -> String {
        let seq = self.next;
        self.next += 1;
        let body = event.strip_prefix('{').unwrap_or(event);
        let text = format!("{{\"seq\":{seq},{body}");
        self.bytes += text.len();
        self.events.push_back((seq, text.clone()));
        text
    }

    /// The client has every event up to `seq`.
    pub(crate) fn ack(&mut self, seq: u64) {
        while let Some((s, text)) = self.events.front() {
            if *s > seq {
                break;
            }
            self.bytes -= text.len();
            self.events.pop_front();
        }
    }

    /// No more events may go until some are acknowledged.
    pub(crate) fn full(&self, window: usize) -> bool {
        !self.events.is_empty() && (self.events.len() >= window || self.bytes >= WINDOW_BYTES)
    }

    /// The unacknowledged events, oldest first, to send again.
    pub(crate) fn pending(&self) -> impl Iterator<Item = &str> {
        self.events.iter().map(|(_, t)| t.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_kept_until_acknowledged_and_bounded() {
        let mut r = Replay::new();
        let a = r.stamp(r#"{"event":"message","data":1}"#);
        assert_eq!(a, r#"{"seq":1,"event":"message","data":1}"#);
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(v["seq"], 1);
        r.stamp(r#"{"event":"message","data":2}"#);
        r.stamp(r#"{"event":"message","data":3}"#);
        assert!(r.full(3));
        assert!(!r.full(4));
        r.ack(2);
        assert_eq!(
            r.pending().collect::<Vec<_>>(),
            vec![r#"{"seq":3,"event":"message","data":3}"#]
        );
        // Old and repeated acknowledgements change nothing.
        r.ack(1);
        assert_eq!(r.pending().count(), 1);
        r.ack(3);
        assert_eq!((r.pending().count(), r.bytes), (0, 0));
        assert!(!r.full(1));
        // Bytes bound the window too, but one big event always goes.
        let big = format!(
            r#"{{"event":"message","data":"{}"}}"#,
            "x".repeat(WINDOW_BYTES)
        );
        assert!(!r.full(1024));
        r.stamp(&big);
        assert!(r.full(1024));
        assert!(r
            .stamp(r#"{"event":"removed"}"#)
            .starts_with(r#"{"seq":5,"event""#));
    }
}
