//! Direct messages between hosts, without I/O: the queue per destination
//! host, which path a queue takes, and what a delivery's answer means for
//! each send.
//!
//! Sends to one destination host wait in that host's queue, the one place
//! that orders them. While the hosts are linked, the queue goes straight
//! to the destination's link task, which batches and pipelines over a
//! delivery stream (see `crate::delivery`). Otherwise (not linked yet, or
//! the network relays) a batch goes as a request, possibly through a
//! relay, at most one per destination in flight, so messages from one peer
//! to another arrive in send order; a switch between the two waits until
//! the other has nothing in flight. The receiver answers a batch with one
//! ack per envelope, given after the envelope is in the recipient's inbox
//! (or refused).
//!
//! A link may close while a batch is travelling (the remote host closed it
//! over its link budget, or the connection broke): the batch is then sent
//! again, with the same batch id, over a new link. The receiver remembers
//! the last batches of each sending host and their acks (see
//! [`crate::core::batch_memory`]), so a batch it already delivered is
//! answered from memory, not delivered twice.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use libp2p::PeerId;

use crate::{
    core::{
        outbox::{Outbox, Pick},
        send::PendingSend,
    },
    protocol::{Ack, Response},
};

/// Sends of one batch after the first when its link closes under it.
const RESENDS: u8 = 2;
/// After a link task gave up, sends to that host go as requests this long.
const STREAM_BACKOFF: Duration = Duration::from_secs(1);
/// Times a send may come back from link tasks before it fails.
const HANDED_BACK: u8 = 4;

/// What the loop knows of the link to a destination host.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    /// A connection to the host is open.
    pub connected: bool,
    /// The host's link task still has sends it has not answered.
    pub stream_busy: bool,
}

/// The most one request batch carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub messages: usize,
    pub bytes: usize,
}

/// Which path a destination's queue takes now.
#[derive(Debug)]
pub(crate) enum Route {
    /// Nothing goes now: nothing waits, a batch is in flight, or the queue
    /// rests.
    Nothing,
    /// The hosts are linked: hand the whole queue to the link task.
    Stream(VecDeque<PendingSend>),
    /// Not linked, but the link task still has sends out: they finish or
    /// come back first (order); try again soon.
    Wait,
    /// Send these as one request batch, under a new batch id.
    Request(Vec<PendingSend>),
    /// A batch a broken stream handed back: send it again as it was, under
    /// its id, before anything newer.
    Again { batch: u64, sends: Vec<PendingSend> },
}

/// Why a request batch got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The link closed under it (sent again, up to [`RESENDS`] times).
    LinkClosed,
    /// No answer in time.
    Timeout,
    /// Any other failure: the host cannot be reached.
    Unreachable,
}

/// The outcome of one send of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// In the recipient's inbox.
    Delivered,
    /// The recipient's inbox is full.
    InboxFull,
    /// A reply that no request of its recipient waits for.
    NoRequest,
    /// The host says the recipient does not live there: resolve again.
    UnknownPeer,
    /// The host could not be reached, or answered no ack for it.
    Unreachable,
    /// The batch timed out.
    Timeout,
}

/// What a batch's answer leads to.
#[derive(Debug)]
pub(crate) enum Settled {
    /// Send the batch again, as this attempt, under the same id.
    Resend {
        attempt: u8,
        sends: Vec<PendingSend>,
    },
    /// Each send's outcome; the queue may send again.
    Done(Vec<(PendingSend, Outcome)>),
}

/// The direct-message queues of one host.
#[derive(Debug, Default)]
pub(crate) struct Messaging {
    /// Sends by destination host, one request batch in flight to each.
    links: Outbox<PeerId, PendingSend>,
    /// Hosts that got sends since the last [`Messaging::take_dirty`]: their
    /// queues go at the end of the loop's turn, so a burst of commands
    /// goes out together.
    dirty: Vec<PeerId>,
    /// Hosts whose link task took no stream lately, and until when their
    /// sends go as requests (which dial or relay).
    stream_backoff: foldhash::HashMap<PeerId, Instant>,
}

impl Messaging {
    /// Queues a send for `host`.
    pub(crate) fn enqueue(&mut self, host: PeerId, p: PendingSend) {
        if self.links.push(host, p) {
            self.dirty.push(host);
        }
    }

    /// The hosts that got sends since the last call.
    pub(crate) fn take_dirty(&mut self) -> Vec<PeerId> {
        std::mem::take(&mut self.dirty)
    }

    /// Which path the queue of `host` takes now. A batch handed back by a
    /// broken stream goes first, whole; while linked (and the link task
    /// took streams lately) the queue goes to the link task; otherwise a
    /// request batch of up to `limits` goes once the link task has nothing
    /// out. Sends whose callers gave up are dropped from request batches.
    /// `link` and `limits` are asked for only when needed (this runs for
    /// every destination with sends in every turn of the loop).
    pub(crate) fn route(
        &mut self,
        host: PeerId,
        link: impl FnOnce() -> Link,
        limits: impl FnOnce() -> Limits,
        now: Instant,
    ) -> Route {
        if !self.links.may_send(&host, now) {
            return Route::Nothing;
        }
        let handed_back = self
            .links
            .get(&host)
            .and_then(|q| q.items().next())
            .and_then(|p| p.batch);
        if let Some(batch) = handed_back {
            // Even sends whose callers gave up: acks go by position.
            let sends = self.links.take(&host, now, |p, _, _| {
                if p.batch == Some(batch) {
                    Pick::Take
                } else {
                    Pick::Stop
                }
            });
            return match sends {
                Some(sends) => Route::Again { batch, sends },
                None => Route::Nothing,
            };
        }
        let backoff = self.stream_backoff.get(&host).is_some_and(|t| *t > now);
        let link = link();
        if link.connected && !backoff {
            return match self.links.remove(&host) {
                Some(queue) if !queue.is_empty() => Route::Stream(queue),
                _ => Route::Nothing,
            };
        }
        if link.stream_busy {
            return Route::Wait;
        }
        let limits = limits();
        let sends = self.links.take(&host, now, |p, n, bytes| {
            if p.reply.is_closed() {
                // A caller that gave up (timeout, dropped future) is not delivered.
                Pick::Drop
            } else if n > 0 && (n >= limits.messages || bytes + p.wire_size() > limits.bytes) {
                Pick::Stop
            } else {
                Pick::Take
            }
        });
        match sends {
            Some(sends) => Route::Request(sends),
            None => Route::Nothing,
        }
    }

    /// Puts sends back at the front of `host`'s queue, in order (a link
    /// task's queue was full, or its task ended).
    pub(crate) fn put_back(
        &mut self,
        host: PeerId,
        sends: impl DoubleEndedIterator<Item = PendingSend>,
    ) {
        self.links.put_back(host, sends);
    }

    /// A link task handed `sends` back unsent (its link took no stream):
    /// sends to `host` go as requests for a while, and these go again,
    /// except those handed back too often, which are returned to fail.
    pub(crate) fn on_unsent(
        &mut self,
        host: PeerId,
        sends: Vec<PendingSend>,
        now: Instant,
    ) -> Vec<PendingSend> {
        self.stream_backoff.insert(host, now + STREAM_BACKOFF);
        let (mut again, mut failed) = (Vec::new(), Vec::new());
        for mut p in sends {
            p.handed_back = p.handed_back.saturating_add(1);
            // A written batch goes again whole (as a request, which ends
            // it either way), never partly failed here.
            if p.batch.is_none() && p.handed_back > HANDED_BACK {
                failed.push(p);
            } else {
                again.push(p);
            }
        }
        self.links.put_back(host, again.into_iter());
        failed
    }

    /// The request batch `attempt` to `host` was answered, or failed:
    /// sent again if its link closed under it (unless `closing`), else
    /// each send's outcome, matched to the acks by position.
    pub(crate) fn on_result(
        &mut self,
        host: PeerId,
        attempt: u8,
        sends: Vec<PendingSend>,
        result: Result<Response, Failure>,
        closing: bool,
    ) -> Settled {
        if matches!(result, Err(Failure::LinkClosed)) && attempt < RESENDS && !closing {
            return Settled::Resend {
                attempt: attempt + 1,
                sends,
            };
        }
        self.links.done(&host);
        let outcomes: Vec<Outcome> = match result {
            Ok(Response::Delivered(acks)) => {
                let mut acks = acks.into_iter();
                (0..sends.len())
                    .map(|_| match acks.next() {
                        Some(Ack::Delivered) => Outcome::Delivered,
                        Some(Ack::InboxFull) => Outcome::InboxFull,
                        Some(Ack::NoRequest) => Outcome::NoRequest,
                        Some(Ack::UnknownPeer) => Outcome::UnknownPeer,
                        None => Outcome::Unreachable,
                    })
                    .collect()
            }
            Ok(other) => {
                tracing::warn!(%host, response = ?other, "unexpected answer to a delivery");
                vec![Outcome::Unreachable; sends.len()]
            }
            Err(Failure::Timeout) => vec![Outcome::Timeout; sends.len()],
            Err(_) => vec![Outcome::Unreachable; sends.len()],
        };
        Settled::Done(sends.into_iter().zip(outcomes).collect())
    }

    /// Destinations whose queues may go now (a link task drained, a rest
    /// ended); forgets rests that are over.
    pub(crate) fn ready(&mut self, now: Instant) -> Vec<PeerId> {
        self.stream_backoff.retain(|_, t| *t > now);
        self.links.ready(now)
    }

    /// Every queued send, emptied out (on close).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = PendingSend> + '_ {
        self.links.drain().flat_map(|(_, q)| q)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;
    use crate::{message::Encoding, protocol::Envelope, Payload};

    const LIMITS: Limits = Limits {
        messages: 3,
        bytes: 1 << 20,
    };
    const LINKED: Link = Link {
        connected: true,
        stream_busy: false,
    };
    const UNLINKED: Link = Link {
        connected: false,
        stream_busy: false,
    };

    /// A send to peer `to`, with the receiver its caller waits on.
    fn send(to: &str) -> (PendingSend, oneshot::Receiver<Result<(), crate::SendError>>) {
        let (tx, rx) = oneshot::channel();
        let env = Envelope {
            from: "a".into(),
            to: to.into(),
            payload: Payload {
                encoding: Encoding::Postcard,
                bytes: vec![0u8; 8].into(),
            },
            corr: Default::default(),
        };
        (PendingSend::new(env, tx), rx)
    }

    /// Queues sends to `to..` for `host`, keeping their callers waiting.
    fn queue(
        m: &mut Messaging,
        host: PeerId,
        tos: &[&str],
    ) -> Vec<oneshot::Receiver<Result<(), crate::SendError>>> {
        tos.iter()
            .map(|to| {
                let (p, rx) = send(to);
                m.enqueue(host, p);
                rx
            })
            .collect()
    }

    fn tos(sends: &[PendingSend]) -> Vec<String> {
        sends.iter().map(|p| p.env.to.to_string()).collect()
    }

    #[test]
    fn a_linked_queue_goes_to_its_link_task_and_an_unlinked_one_as_request_batches() {
        let (mut m, host, now) = (Messaging::default(), PeerId::random(), Instant::now());
        let _callers = queue(&mut m, host, &["1", "2", "3", "4"]);
        assert_eq!(m.take_dirty(), vec![host], "one flush per host and turn");
        assert!(m.take_dirty().is_empty());
        let Route::Stream(q) = m.route(host, || LINKED, || LIMITS, now) else {
            panic!("linked: the whole queue goes to the link task");
        };
        assert_eq!(q.len(), 4);

        // Unlinked, while the link task still has sends out: wait (order).
        let _callers = queue(&mut m, host, &["5", "6", "7", "8"]);
        let busy = Link {
            connected: false,
            stream_busy: true,
        };
        assert!(matches!(
            m.route(host, || busy, || LIMITS, now),
            Route::Wait
        ));
        // Then request batches of at most three, one in flight.
        let Route::Request(first) = m.route(host, || UNLINKED, || LIMITS, now) else {
            panic!("a request batch");
        };
        assert_eq!(tos(&first), ["5", "6", "7"]);
        assert!(matches!(
            m.route(host, || UNLINKED, || LIMITS, now),
            Route::Nothing
        ));
        let acks = Response::Delivered(vec![Ack::Delivered; 3]);
        let Settled::Done(done) = m.on_result(host, 0, first, Ok(acks), false) else {
            panic!("answered");
        };
        assert!(done.iter().all(|(_, o)| *o == Outcome::Delivered));
        let Route::Request(next) = m.route(host, || UNLINKED, || LIMITS, now) else {
            panic!("the next batch once the first is answered");
        };
        assert_eq!(tos(&next), ["8"]);
    }

    #[test]
    fn sends_whose_callers_gave_up_are_not_sent_as_requests() {
        let (mut m, host, now) = (Messaging::default(), PeerId::random(), Instant::now());
        let mut callers = queue(&mut m, host, &["1", "2", "3"]);
        drop(callers.remove(1));
        let Route::Request(batch) = m.route(host, || UNLINKED, || LIMITS, now) else {
            panic!("a batch");
        };
        assert_eq!(tos(&batch), ["1", "3"]);
    }

    #[test]
    fn after_a_link_task_hands_sends_back_they_go_as_requests_for_a_second() {
        let (mut m, host, t0) = (Messaging::default(), PeerId::random(), Instant::now());
        let (p, _caller) = send("1");
        assert!(m.on_unsent(host, vec![p], t0).is_empty());
        let Route::Request(batch) = m.route(host, || LINKED, || LIMITS, t0) else {
            panic!("linked, but the stream failed: a request");
        };
        let acks = Response::Delivered(vec![Ack::Delivered]);
        m.on_result(host, 0, batch, Ok(acks), false);
        let _callers = queue(&mut m, host, &["2"]);
        let later = t0 + STREAM_BACKOFF - Duration::from_millis(1);
        let Route::Request(second) = m.route(host, || LINKED, || LIMITS, later) else {
            panic!("still a request within the second");
        };
        let acks = Response::Delivered(vec![Ack::Delivered]);
        m.on_result(host, 0, second, Ok(acks), false);
        // Once the second is over, the queue goes to the link task again.
        let _callers = queue(&mut m, host, &["3"]);
        let then = t0 + STREAM_BACKOFF;
        assert_eq!(m.ready(then), vec![host]);
        assert!(matches!(
            m.route(host, || LINKED, || LIMITS, then),
            Route::Stream(_)
        ));
    }

    #[test]
    fn a_batch_a_stream_handed_back_goes_again_whole_before_newer_sends() {
        let (mut m, host, now) = (Messaging::default(), PeerId::random(), Instant::now());
        let _newer = queue(&mut m, host, &["new"]);
        let mut written = Vec::new();
        let mut callers = Vec::new();
        for to in ["w1", "w2"] {
            let (mut p, rx) = send(to);
            p.batch = Some(7);
            written.push(p);
            callers.push(rx);
        }
        // A caller of the written batch gave up: acks go by position, so
        // its send goes again all the same.
        drop(callers.remove(0));
        m.on_unsent(host, written, now);
        let Route::Again { batch, sends } = m.route(host, || LINKED, || LIMITS, now) else {
            panic!("the handed-back batch first");
        };
        assert_eq!((batch, tos(&sends)), (7, vec!["w1".into(), "w2".into()]));
    }

    #[test]
    fn a_send_handed_back_too_often_fails() {
        let (mut m, host, now) = (Messaging::default(), PeerId::random(), Instant::now());
        let (mut p, _caller) = send("1");
        p.handed_back = HANDED_BACK;
        let (mut written, _caller2) = send("2");
        written.handed_back = HANDED_BACK;
        written.batch = Some(1);
        let failed = m.on_unsent(host, vec![p, written], now);
        assert_eq!(
            tos(&failed),
            ["1"],
            "a written batch is never failed partly"
        );
    }

    #[test]
    fn a_batch_whose_link_closes_is_sent_twice_more_then_fails() {
        let (mut m, host, now) = (Messaging::default(), PeerId::random(), Instant::now());
        let _callers = queue(&mut m, host, &["1"]);
        let Route::Request(mut sends) = m.route(host, || UNLINKED, || LIMITS, now) else {
            panic!("a batch");
        };
        for attempt in 0..RESENDS {
            match m.on_result(host, attempt, sends, Err(Failure::LinkClosed), false) {
                Settled::Resend {
                    attempt: a,
                    sends: s,
                } => {
                    assert_eq!(a, attempt + 1);
                    sends = s;
                }
                Settled::Done(_) => panic!("attempt {attempt} is sent again"),
            }
        }
        let Settled::Done(done) =
            m.on_result(host, RESENDS, sends, Err(Failure::LinkClosed), false)
        else {
            panic!("the last attempt settles");
        };
        assert_eq!(done[0].1, Outcome::Unreachable);
        // A closing host sends nothing again.
        let _callers = queue(&mut m, host, &["2"]);
        let Route::Request(sends) = m.route(host, || UNLINKED, || LIMITS, now) else {
            panic!("a batch");
        };
        assert!(matches!(
            m.on_result(host, 0, sends, Err(Failure::LinkClosed), true),
            Settled::Done(_)
        ));
    }

    #[test]
    fn acks_settle_the_sends_by_position() {
        let (mut m, host, now) = (Messaging::default(), PeerId::random(), Instant::now());
        let _callers = queue(&mut m, host, &["1", "2", "3"]);
        let Route::Request(sends) = m.route(host, || UNLINKED, || LIMITS, now) else {
            panic!("a batch");
        };
        let acks = Response::Delivered(vec![Ack::UnknownPeer, Ack::InboxFull]);
        let Settled::Done(done) = m.on_result(host, 0, sends, Ok(acks), false) else {
            panic!("answered");
        };
        let outcomes: Vec<_> = done
            .iter()
            .map(|(p, o)| (p.env.to.to_string(), *o))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("1".into(), Outcome::UnknownPeer),
                ("2".into(), Outcome::InboxFull),
                ("3".into(), Outcome::Unreachable),
            ]
        );
        // A timed-out batch times out each of its sends.
        let _callers = queue(&mut m, host, &["4"]);
        let Route::Request(sends) = m.route(host, || UNLINKED, || LIMITS, now) else {
            panic!("a batch");
        };
        let Settled::Done(done) = m.on_result(host, 0, sends, Err(Failure::Timeout), false) else {
            panic!("settled");
        };
        assert_eq!(done[0].1, Outcome::Timeout);
    }
}
