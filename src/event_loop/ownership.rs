//! Who owns a peer id, between the loop and the core: the conflicts
//! holders report and the registration checks behind
//! [`crate::Peer::registered`] are decided by [`crate::core::ownership`]
//! (which describes them); this file tells the holders, removes a lost
//! peer and answers the callers.

use std::time::Instant;

use libp2p::PeerId;
use tokio::sync::oneshot;

use super::{EventLoop, Pending};
use crate::{
    command::RegStatus,
    core::ownership::Effect,
    directory::{closest, key_of, DirOp, Id},
    protocol::{Request, Response},
};

/// The caller of a registration check.
pub(crate) type CheckReply = oneshot::Sender<RegStatus>;

impl EventLoop {
    /// Holders named other hosts as owners of these ids.
    pub(super) fn on_conflicts(&mut self, conflicts: Vec<(Id, PeerId)>) {
        let (local, registry) = (self.local(), &self.shared.registry);
        let mut out = Vec::new();
        self.ownership.on_conflicts(
            conflicts,
            local,
            |id| registry.get(id).is_some(),
            Instant::now(),
            &mut out,
        );
        self.carry_out_ownership(out);
    }

    /// Registers contested ids again when their time comes; ends settled
    /// contests.
    pub(super) fn retry_contests(&mut self, now: Instant) {
        let registry = &self.shared.registry;
        let mut out = Vec::new();
        if self
            .ownership
            .retry(now, |id| registry.get(id).is_some(), &mut out)
        {
            self.wake_soon = true;
        }
        self.carry_out_ownership(out);
    }

    /// `Peer::registered`: asks every holder of `id` where it lives.
    pub(super) fn check_registration(&mut self, id: String, reply: CheckReply) {
        let local = self.local();
        let ours = self.shared.registry.get(&id).is_some();
        let holders = if ours {
            closest(
                self.members.membership().keys(),
                key_of(id.as_bytes()),
                self.replication,
            )
        } else {
            Vec::new()
        };
        // Only asked when this host is one of the holders.
        let local_holds = holders.contains(&local) && self.store.lookup(&id) == Some(local);
        let mut out = Vec::new();
        self.ownership.check(
            Id::from(id.as_str()),
            ours,
            holders,
            local,
            local_holds,
            reply,
            Instant::now(),
            &mut out,
        );
        self.carry_out_ownership(out);
    }

    /// News of these ids (a holder took their operations): takes their
    /// parked checks, to be made again ([`EventLoop::recheck`]) once the
    /// operations are applied.
    pub(super) fn registration_news(&mut self, ops: &[DirOp]) -> Vec<(Id, Vec<CheckReply>)> {
        self.ownership.news(ops)
    }

    /// Makes parked checks again that waited long enough for news.
    pub(super) fn recheck_parked(&mut self, now: Instant) {
        let due = self.ownership.overdue(now);
        self.recheck(due);
    }

    /// Makes these parked checks again.
    pub(super) fn recheck(&mut self, due: Vec<(Id, Vec<CheckReply>)>) {
        for (id, waiting) in due {
            for reply in waiting {
                // A caller that gave up is not asked about.
                if !reply.is_closed() {
                    self.check_registration(id.to_string(), reply);
                }
            }
        }
    }

    /// A holder's answer to a registration check.
    pub(super) fn on_reg_check_result(
        &mut self,
        check: u64,
        result: std::result::Result<Response, libp2p::request_response::OutboundFailure>,
    ) {
        let local = self.local();
        let here = matches!(
            &result,
            Ok(Response::Location(Some(l))) if PeerId::from_bytes(&l.host).ok() == Some(local)
        );
        let mut out = Vec::new();
        self.ownership
            .on_check_answer(check, here, Instant::now(), &mut out);
        self.carry_out_ownership(out);
    }

    /// Does what the ownership machine decided.
    fn carry_out_ownership(&mut self, out: Vec<Effect<CheckReply>>) {
        for effect in out {
            match effect {
                Effect::TellHolders(op) => {
                    let (DirOp::Register(id) | DirOp::Withdraw(id)) = &op;
                    let holders = closest(
                        self.members.membership().keys(),
                        key_of(id.as_bytes()),
                        self.replication,
                    );
                    for h in holders {
                        self.send_dir_ops(h, vec![op.clone()]);
                    }
                }
                Effect::Lose { id, owner } => {
                    tracing::info!(%id, %owner, "peer id belongs to another host; local peer removed");
                    self.shared.registry.remove(&id);
                    crate::shared::bump(&self.shared.counters.ids_lost);
                }
                Effect::Ask { check, id, holders } => {
                    for h in holders {
                        let key = self.request(h, Request::Lookup(id.to_string()));
                        self.requests.insert(key, Pending::RegCheck { check });
                    }
                }
                Effect::Answer { reply, status } => {
                    let _ = reply.send(status);
                }
            }
        }
    }
}
