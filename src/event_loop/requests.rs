//! Requests between hosts: what each outbound request of this host was
//! for ([`Pending`]), how it goes (a request stream, request-response, or
//! a relay of the overlay), and the dispatch of inbound requests and of
//! answers to the concern that handles them. Every inbound request is
//! checked against the allow-list and the membership here, before any
//! concern sees it.

use libp2p::{
    request_response::{self, OutboundRequestId},
    PeerId,
};

use super::{members, EventLoop};
use crate::{core::send::PendingSend, directory::DirOp, rpc_stream::Reply};

/// Key of an outbound request: a request-response request of ours, or one
/// carried in a relay bundle (see `relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum ReqKey {
    Rr(OutboundRequestId),
    Relayed(u64),
    /// On a request stream (see [`crate::rpc_stream`]).
    Stream(u64),
}

/// What an outbound request was for.
#[derive(Debug)]
pub(super) enum Pending {
    Deliver {
        host: PeerId,
        batch: u64,
        attempt: u8,
        sends: Vec<PendingSend>,
    },
    Directory {
        host: PeerId,
        ops: Vec<DirOp>,
    },
    Lookup {
        id: String,
        host: PeerId,
    },
    Join {
        host: PeerId,
    },
    Leave,
    Resync,
    Beats {
        host: PeerId,
        /// The digest sent was compact.
        compact: bool,
    },
    Records,
    /// A join sent to a host that refused us as a non-member.
    Introduce {
        host: PeerId,
    },
    /// A lookup of a registration check (see `ownership`).
    RegCheck {
        check: u64,
    },
    /// A bundle of relayed requests sent to `via` (ours, or others' this
    /// host forwards): one slot per request.
    RelayBundle {
        via: PeerId,
        slots: Vec<crate::core::relay::Slot>,
    },
    /// One host's part of a broadcast of ours.
    Broadcast {
        id: u64,
        host: PeerId,
    },
    /// A publish handed to a host of a queue group.
    Queue {
        id: u64,
        host: PeerId,
    },
}

impl Pending {
    /// The host the request went to, where the pending request names it.
    fn host(&self) -> Option<PeerId> {
        match self {
            Pending::Deliver { host, .. }
            | Pending::Directory { host, .. }
            | Pending::Lookup { host, .. }
            | Pending::Beats { host, .. }
            | Pending::Broadcast { host, .. }
            | Pending::Queue { host, .. } => Some(*host),
            _ => None,
        }
    }
}

impl EventLoop {
    /// Sends a request to `host`, first dialling it at the addresses of its
    /// membership record if not connected (the swarm's own address sources,
    /// kad's buckets and identify's cache, do not hold every member).
    /// In a big network it may go through a relay (see `relay`).
    pub(super) fn request(&mut self, host: PeerId, req: crate::protocol::Request) -> ReqKey {
        let liveness = req.is_liveness();
        if !liveness {
            self.touch(host);
        }
        let via = if req.is_relayable() {
            self.next_hop(host)
        } else {
            host
        };
        if via != host {
            if let Some(key) = self.relay_own(via, host, &req) {
                return key;
            }
        }
        self.dial_member(host);
        self.send_request(host, req)
    }

    /// Sends a request to `host` as it is: on its request stream if
    /// connected, else (or when the stream's queue is full) by
    /// request-response, which dials.
    pub(super) fn send_request(&mut self, host: PeerId, req: crate::protocol::Request) -> ReqKey {
        crate::shared::bump(&self.shared.counters.requests_sent);
        let mut req = req;
        if req.uses_streams() && self.swarm.is_connected(&host) {
            let id = self.next_stream_request;
            self.next_stream_request += 1;
            use std::collections::hash_map::Entry;
            let spawn = || {
                crate::rpc_stream::client::ClientHandle::spawn(host, self.request_streams.clone())
            };
            let client = match self.request_clients.entry(host) {
                Entry::Occupied(mut e) => {
                    if e.get().ended() {
                        e.insert(spawn());
                    }
                    e.into_mut()
                }
                Entry::Vacant(e) => e.insert(spawn()),
            };
            match client.send(id, req) {
                Ok(()) => {
                    crate::shared::bump(&self.shared.counters.stream_requests);
                    return ReqKey::Stream(id);
                }
                Err(back) => req = back,
            }
        }
        ReqKey::Rr(self.swarm.behaviour_mut().rpc.send_request(&host, req))
    }

    /// An answer or an inbound request from the request streams.
    pub(super) fn on_rpc_event(&mut self, ev: crate::rpc_stream::RpcEvent) {
        self.sync_config();
        use crate::rpc_stream::RpcEvent;
        match ev {
            RpcEvent::Answer { id, result } => {
                if let Some(p) = self.requests.remove(&ReqKey::Stream(id)) {
                    self.on_response(p, result);
                }
            }
            RpcEvent::Request {
                host,
                request,
                reply,
            } => self.on_inbound_request(host, request, reply),
        }
    }

    /// A request from `peer`, by request-response or on a request stream.
    pub(super) fn on_inbound_request(
        &mut self,
        peer: PeerId,
        request: crate::protocol::Request,
        responder: Reply,
    ) {
        use crate::protocol::{Request, Response, NOT_ALLOWED, NOT_MEMBER};
        if !self.members.allowed(&peer) {
            crate::shared::bump(&self.shared.counters.refused_non_members);
            tracing::debug!(%peer, "refused a request of a host not on the allow-list");
            self.answer(peer, responder, Response::Refused(NOT_ALLOWED.into()));
            return;
        }
        // Only a join is served to a host that is not a member.
        if !matches!(request, Request::Join(_)) && !self.members.membership().contains(&peer) {
            crate::shared::bump(&self.shared.counters.refused_non_members);
            tracing::debug!(%peer, "refused a request of a host that is not a member");
            self.answer(peer, responder, Response::Refused(NOT_MEMBER.into()));
            return;
        }
        if !request.is_liveness() {
            self.touch(peer);
        }
        let request = match request {
            Request::Relay(items) => {
                self.on_relay(peer, items, responder);
                return;
            }
            Request::Join(records) if records.len() > members::INLINE_RECORDS => {
                self.check_join_off_loop(peer, records, responder);
                return;
            }
            other => other,
        };
        let response = self.on_request(peer, request);
        self.publish_members();
        self.answer(peer, responder, response);
    }

    pub(super) fn on_rpc(
        &mut self,
        ev: request_response::Event<crate::protocol::Request, crate::protocol::Response>,
    ) {
        use request_response::{Event, Message};
        match ev {
            // Inbound exchanges are served by the exchange acceptor; this
            // behaviour only requests.
            Event::Message {
                peer,
                message: Message::Request { .. },
                ..
            } => tracing::debug!(%peer, "request-response request on the requesting side"),
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(p) = self.requests.remove(&ReqKey::Rr(request_id)) {
                    self.on_response(p, Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(p) = self.requests.remove(&ReqKey::Rr(request_id)) {
                    self.on_response(p, Err(error));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    pub(super) fn on_request(
        &mut self,
        peer: PeerId,
        request: crate::protocol::Request,
    ) -> crate::protocol::Response {
        use crate::protocol::{Request, Response};
        match request {
            Request::Deliver { epoch, batch, envs } => {
                self.deliver_inbound(peer, (epoch, batch), envs)
            }
            Request::Directory { epoch, ops } => {
                // A cached location this holder sees withdrawn is stale.
                for op in &ops {
                    if let crate::directory::DirOp::Withdraw(id) = op {
                        self.locations.not_on(id, peer);
                        self.shared.finds.forget(id);
                    }
                }
                let applied = self.store.apply(peer, epoch, ops);
                Response::DirectoryApplied {
                    conflicts: applied
                        .conflicts
                        .into_iter()
                        .map(|(id, h)| (id.to_string(), h.to_bytes()))
                        .collect(),
                    full: applied.full,
                }
            }
            Request::Lookup(id) => self.answer_lookup(&id),
            Request::Join(records) => self.on_join_request(peer, records),
            Request::Leave(record) => self.on_leave_request(peer, record),
            Request::Resync => {
                self.resync_holder(peer);
                Response::DirectoryOk
            }
            Request::Beats(beats) => self.on_beats(peer, beats),
            Request::Records(records) => {
                self.on_records(records);
                Response::RecordsOk
            }
            Request::Relay(_) => Response::RelayFailed("relayed twice".into()),
            Request::Broadcast {
                id,
                from,
                to,
                payload,
            } => self.on_broadcast_request(peer, id, from, to, payload),
            Request::Queue {
                channel,
                pattern,
                group,
                payload,
            } => self.on_queue_request(channel, pattern, group, payload),
        }
    }

    pub(super) fn on_response(
        &mut self,
        pending: Pending,
        result: std::result::Result<crate::protocol::Response, request_response::OutboundFailure>,
    ) {
        if let Ok(crate::protocol::Response::Refused(why)) = &result {
            if why == crate::protocol::NOT_MEMBER {
                if let Some(host) = pending.host() {
                    self.introduce(host);
                }
            }
        }
        match pending {
            Pending::Deliver {
                host,
                batch,
                attempt,
                sends,
            } => self.on_deliver_result(host, (batch, attempt), sends, result),
            Pending::Directory { host, ops } => self.on_directory_result(host, ops, result),
            Pending::Lookup { id, host } => self.on_lookup_result(id, host, result),
            Pending::Join { host } => self.on_join_result(host, result),
            Pending::Introduce { host } => self.on_introduced(host, result),
            Pending::Resync | Pending::Records => {}
            Pending::RegCheck { check } => self.on_reg_check_result(check, result),
            Pending::RelayBundle { via, slots } => self.on_bundle_result(via, slots, result),
            Pending::Beats { host, compact } => self.on_beats_result(host, compact, result),
            Pending::Broadcast { id, host } => self.on_broadcast_result(id, host, result),
            Pending::Queue { id, .. } => self.on_queue_result(id, result),
            Pending::Leave => {
                if let Some(c) = self.closing.as_mut() {
                    c.outstanding = c.outstanding.saturating_sub(1);
                }
            }
        }
    }
}
