//! Overlay requests over long-lived streams.
//!
//! Between connected hosts, the event loop's requests (directory batches,
//! relay bundles, digests, lookups) travel on one long-lived stream per
//! direction instead of one request-response exchange each. Every
//! request-response exchange opens a yamux stream, negotiates its protocol
//! and arms a timer on libp2p's shared timer thread; in a 512-host
//! registration that machinery was about 40 % of the CPU. On a stream a
//! request is one frame `(id, request)` and its answer one frame `(id,
//! response)`; answers may come in any order (a relay answers when the
//! next hop has).
//!
//! - [`client`]: one task per destination host writes the loop's requests
//!   and reports each answer, failure or timeout back to the loop.
//! - [`server`]: an acceptor takes the streams other hosts open; a reader
//!   per stream hands each request to the loop with a [`Reply`], a writer
//!   sends the answers. A remote host has at most [`server::IN_FLIGHT`]
//!   unanswered requests per stream (the reader stops reading), and at most
//!   [`server::STREAMS_PER_HOST`] streams.
//!
//! Join and leave stay on request-response (see
//! [`crate::protocol::Request::uses_streams`]); so does everything to a
//! host that is not connected (request-response dials).

pub(crate) mod client;
pub(crate) mod server;

use std::sync::Arc;

use libp2p::{request_response::OutboundFailure, PeerId};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::{
    protocol::{Request, Response},
    shared::Shared,
};

/// What the stream tasks tell the event loop.
#[derive(Debug)]
pub(crate) enum RpcEvent {
    /// The answer to request `id` of ours, or why there is none.
    Answer {
        id: u64,
        result: Result<Response, OutboundFailure>,
    },
    /// A request from `host`; answer it with `reply`.
    Request {
        host: PeerId,
        request: Request,
        reply: Reply,
    },
}

/// Where the answer to one inbound request goes. Dropped unanswered, it
/// answers [`Response::Refused`] (as a dropped request-response channel
/// fails the exchange), so the requester does not wait for its timeout.
#[derive(Debug)]
pub(crate) struct Reply {
    inner: Option<ReplyTo>,
}

type AnswerTx = mpsc::Sender<(u64, Response, OwnedSemaphorePermit)>;

#[derive(Debug)]
struct ReplyTo {
    id: u64,
    tx: AnswerTx,
    permit: OwnedSemaphorePermit,
}

impl Reply {
    pub(crate) fn new(id: u64, tx: AnswerTx, permit: OwnedSemaphorePermit) -> Self {
        Reply {
            inner: Some(ReplyTo { id, tx, permit }),
        }
    }

    /// Sends the answer. `false` if the stream has ended.
    pub(crate) fn send(mut self, response: Response) -> bool {
        self.inner.take().is_some_and(|r| r.send(response))
    }
}

impl ReplyTo {
    fn send(self, response: Response) -> bool {
        // Never full: the channel holds as many answers as the reader lets
        // requests be unanswered, and each answer carries its permit.
        self.tx.try_send((self.id, response, self.permit)).is_ok()
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(r) = self.inner.take() {
            r.send(Response::Refused("dropped unanswered".into()));
        }
    }
}

/// What every stream task of a host shares.
#[derive(Clone)]
pub(crate) struct RpcContext {
    pub opener: crate::delivery::streams::Opener,
    pub shared: Arc<Shared>,
    pub events: mpsc::Sender<RpcEvent>,
}
