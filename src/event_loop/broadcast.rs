//! Broadcasts this host makes, and those other hosts send it (see
//! [`crate::broadcast`]; the reports and what was taken already are
//! [`crate::core::broadcasts`]'s).

use std::sync::Arc;

use libp2p::{request_response::OutboundFailure, PeerId};
use tokio::sync::oneshot;

use super::{EventLoop, Pending};
use crate::{
    broadcast::{fan_out, BroadcastReport},
    error::Result,
    message::Payload,
    protocol::{Request, Response},
};

/// The caller of a broadcast, answered once every host has answered.
pub(crate) type BroadcastReply = oneshot::Sender<Result<BroadcastReport, crate::BroadcastError>>;

impl EventLoop {
    /// Delivers to the local peers (those matching `to`, if given) and
    /// sends the broadcast to every other live member; answers `reply` once
    /// each has answered or failed.
    pub(super) fn start_broadcast(
        &mut self,
        from: Arc<str>,
        to: Option<String>,
        payload: Payload,
        reply: BroadcastReply,
    ) {
        let counter = match to {
            Some(_) => &self.shared.counters.group_sends,
            None => &self.shared.counters.broadcasts,
        };
        crate::shared::bump(counter);
        let local = self.local();
        let id = rand::random::<u64>();
        let here = fan_out(&self.shared, &from, to.as_deref(), &payload);
        let others: Vec<PeerId> = self
            .members
            .membership()
            .iter()
            .map(|(h, _)| *h)
            .filter(|h| *h != local)
            .collect();
        if let Some((reply, answer)) = self.broadcasts.start(local, id, here, others.len(), reply) {
            let _ = reply.send(answer);
            return;
        }
        for host in others {
            let req = Request::Broadcast {
                id,
                from: from.to_string(),
                to: to.clone(),
                payload: payload.clone(),
            };
            let rid = self.request(host, req);
            self.requests.insert(rid, Pending::Broadcast { id, host });
        }
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
        if !self.broadcasts.first_time(origin, id) {
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
        let reached = match result {
            Ok(Response::Broadcast { peers, missed }) => Some((peers, missed)),
            _ => None,
        };
        if let Some((reply, answer)) = self.broadcasts.on_answer(id, host, reached) {
            let _ = reply.send(answer);
        }
    }
}
