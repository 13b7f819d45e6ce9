//! Broadcasts and group sends without I/O: the report of each broadcast
//! of this host as the other hosts answer, and which broadcasts of other
//! hosts this host has taken already (the protocol is described in
//! [`crate::broadcast`]).

use std::collections::HashMap;

use libp2p::PeerId;

use crate::{
    broadcast::{BroadcastReport, Fanned, Taken},
    error::BroadcastError,
};

/// A broadcast of this host, waiting for the other hosts' answers; `R`
/// answers its caller.
#[derive(Debug)]
struct Outgoing<R> {
    report: BroadcastReport,
    waiting: usize,
    reply: R,
}

/// The broadcasts of one host.
pub(crate) struct Broadcasts<R> {
    outgoing: HashMap<u64, Outgoing<R>>,
    taken: Taken,
}

impl<R> Default for Broadcasts<R> {
    fn default() -> Self {
        Broadcasts {
            outgoing: HashMap::new(),
            taken: Taken::default(),
        }
    }
}

/// A broadcast's caller and its answer.
pub(crate) type Answer<R> = (R, Result<BroadcastReport, BroadcastError>);

impl<R> Broadcasts<R> {
    /// Starts broadcast `id` of this host (`local`), which reached `here`
    /// on this host and goes to `others` other live hosts. Returns the
    /// answer at once when there is no other host.
    pub(crate) fn start(
        &mut self,
        local: PeerId,
        id: u64,
        here: Fanned,
        others: usize,
        reply: R,
    ) -> Option<Answer<R>> {
        self.taken.first_time(local, id);
        let report = BroadcastReport {
            hosts: 1,
            peers: here.peers,
            missed: here.missed,
            failed: Vec::new(),
        };
        if others == 0 {
            return Some((reply, Ok(report)));
        }
        self.outgoing.insert(
            id,
            Outgoing {
                report,
                waiting: others,
                reply,
            },
        );
        None
    }

    /// Whether broadcast `id` of `origin` is new here (and now taken).
    pub(crate) fn first_time(&mut self, origin: PeerId, id: u64) -> bool {
        self.taken.first_time(origin, id)
    }

    /// `host`'s answer to broadcast `id`: the peers it reached and missed,
    /// or `None` if it failed. Returns the caller's answer once every host
    /// has answered: the report, or [`BroadcastError::Partitioned`] when no other
    /// host took it.
    pub(crate) fn on_answer(
        &mut self,
        id: u64,
        host: PeerId,
        reached: Option<(u64, u64)>,
    ) -> Option<Answer<R>> {
        let out = self.outgoing.get_mut(&id)?;
        match reached {
            Some((peers, missed)) => {
                out.report.hosts += 1;
                out.report.peers += peers;
                out.report.missed += missed;
            }
            None => out.report.failed.push(host),
        }
        out.waiting = out.waiting.saturating_sub(1);
        if out.waiting > 0 {
            return None;
        }
        let out = self.outgoing.remove(&id)?;
        let mut report = out.report;
        report.failed.sort();
        let answer = if report.hosts == 1 {
            Err(BroadcastError::Partitioned(report.failed.len()))
        } else {
            Ok(report)
        };
        Some((out.reply, answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here(peers: u64) -> Fanned {
        Fanned { peers, missed: 0 }
    }

    #[test]
    fn the_report_adds_up_every_host_and_names_those_that_failed() {
        let mut b = Broadcasts::default();
        let local = PeerId::random();
        let hosts: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        assert!(b.start(local, 9, here(5), hosts.len(), "caller").is_none());
        assert!(b.on_answer(9, hosts[0], Some((10, 1))).is_none());
        assert!(b.on_answer(9, hosts[2], None).is_none());
        let (caller, report) = b.on_answer(9, hosts[1], Some((7, 0))).unwrap();
        let report = report.unwrap();
        assert_eq!(caller, "caller");
        assert_eq!((report.hosts, report.peers, report.missed), (3, 22, 1));
        assert_eq!(report.failed, vec![hosts[2]]);
        assert!(
            b.on_answer(9, hosts[1], Some((1, 0))).is_none(),
            "answered once"
        );
    }

    #[test]
    fn a_broadcast_no_other_host_took_is_a_partition_and_a_lone_host_is_done_at_once() {
        let mut b = Broadcasts::default();
        let local = PeerId::random();
        let (h1, h2) = (PeerId::random(), PeerId::random());
        b.start(local, 1, here(2), 2, ());
        b.on_answer(1, h1, None);
        let (_, answer) = b.on_answer(1, h2, None).unwrap();
        assert!(matches!(answer, Err(BroadcastError::Partitioned(2))));
        let (_, alone) = b.start(local, 2, here(2), 0, ()).unwrap();
        assert_eq!(alone.unwrap().peers, 2);
    }

    #[test]
    fn a_broadcast_is_taken_once_and_its_own_host_never_takes_it_back() {
        let mut b: Broadcasts<()> = Broadcasts::default();
        let (local, other) = (PeerId::random(), PeerId::random());
        b.start(local, 4, here(0), 1, ());
        assert!(!b.first_time(local, 4), "sent back by a relay: not again");
        assert!(b.first_time(other, 4));
        assert!(!b.first_time(other, 4));
    }
}
