//! Broadcasts this host makes, and those other hosts send it (see
//! [`crate::broadcast`]).

use std::{collections::HashMap, sync::Arc};

use libp2p::{request_response::OutboundFailure, PeerId};
use tokio::sync::oneshot;

use super::{EventLoop, Pending};
use crate::{
    broadcast::{fan_out, BroadcastReport, Taken},
    error::{Error, Result},
    message::Payload,
    protocol::{Request, Response},
};

/// A broadcast of this host, waiting for the other hosts' answers.
struct Outgoing {
    report: BroadcastReport,
    waiting: usize,
    reply: oneshot::Sender<Result<BroadcastReport>>,
}

/// The broadcast concern's state.
#[derive(Default)]
pub(crate) struct Broadcasts {
    outgoing: HashMap<u64, Outgoing>,
    taken: Taken,
}

impl EventLoop {
    /// Delivers to the local peers (those matching `to`, if given) and
    /// sends the broadcast to every other live member; answers `reply` once
    /// each has answered or failed.
    pub(super) fn start_broadcast(
        &mut self,
        from: Arc<str>,
        to: Option<String>,
        payload: Payload,
        reply: oneshot::Sender<Result<BroadcastReport>>,
    ) {
        let counter = match to {
            Some(_) => &self.shared.counters.group_sends,
            None => &self.shared.counters.broadcasts,
        };
        crate::shared::bump(counter);
        let local = self.local();
        let id = rand::random::<u64>();
        self.broadcasts.taken.first_time(local, id);
        let here = fan_out(&self.shared, &from, to.as_deref(), &payload);
        let report = BroadcastReport {
            hosts: 1,
            peers: here.peers,
            missed: here.missed,
            failed: Vec::new(),
        };
        let others: Vec<PeerId> = self
            .members
            .membership()
            .iter()
            .map(|(h, _)| *h)
            .filter(|h| *h != local)
            .collect();
        if others.is_empty() {
            let _ = reply.send(Ok(report));
            return;
        }
        for host in &others {
            let req = Request::Broadcast {
                id,
                from: from.to_string(),
                to: to.clone(),
                payload: payload.clone(),
            };
            let rid = self.request(*host, req);
            self.requests
                .insert(rid, Pending::Broadcast { id, host: *host });
        }
        self.broadcasts.outgoing.insert(
            id,
            Outgoing {
                report,
                waiting: others.len(),
                reply,
            },
        );
    }

    /// Another member's broadcast: delivered to every local peer (matching
    /// `to`, if given) once.
    pub(super) fn on_broadcast_request(
        &mut self,
        origin: PeerId,
        id: u64,
        from: String,
        to: Option<String>,
        payload: Payload,
    ) -> Response {
        if let Some(p) = &to {
            if crate::channel_name::check_group(p).is_err() {
                self.shared.wire.count_rejected();
                return Response::Refused("not a group pattern".into());
            }
        }
        if !self.broadcasts.taken.first_time(origin, id) {
            return Response::Broadcast {
                peers: 0,
                missed: 0,
            };
        }
        let f = fan_out(&self.shared, &Arc::from(from), to.as_deref(), &payload);
        Response::Broadcast {
            peers: f.peers,
            missed: f.missed,
        }
    }

    /// A host's answer to one of our broadcasts.
    pub(super) fn on_broadcast_result(
        &mut self,
        id: u64,
        host: PeerId,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        let Some(out) = self.broadcasts.outgoing.get_mut(&id) else {
            return;
        };
        match result {
            Ok(Response::Broadcast { peers, missed }) => {
                out.report.hosts += 1;
                out.report.peers += peers;
                out.report.missed += missed;
            }
            _ => out.report.failed.push(host),
        }
        out.waiting = out.waiting.saturating_sub(1);
        if out.waiting > 0 {
            return;
        }
        if let Some(out) = self.broadcasts.outgoing.remove(&id) {
            let mut report = out.report;
            report.failed.sort();
            let answer = if report.hosts == 1 {
                Err(Error::Partitioned(report.failed.len()))
            } else {
                Ok(report)
            };
            let _ = out.reply.send(answer);
        }
    }
}
