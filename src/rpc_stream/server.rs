//! The answering side: an acceptor takes the request streams other hosts
//! open; per stream, a reader hands each request to the event loop with a
//! [`Reply`], and a writer sends the answers back as they come.
//!
//! A stream may have at most [`IN_FLIGHT`] requests unanswered: past that
//! the reader stops reading (the sender's window is the same size), so a
//! remote host cannot queue work in this one without bound. A frame over
//! the size limit, or bytes that do not decode, end that stream (counted in
//! the host's rejected frames); the sender's requests on it fail and it
//! opens a new one.

use std::sync::Arc;

use futures::{
    io::{ReadHalf, WriteHalf},
    AsyncReadExt, AsyncWriteExt,
};
use libp2p::{PeerId, Stream};
use tokio::{
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};

use super::{Reply, RpcContext, RpcEvent};
use crate::{
    delivery::{outbound::bounded, streams::accept_limited},
    protocol::{decode_counted, encode_frame, read_frame_body, Request, Response},
};

/// Requests unanswered on one stream, at most.
pub(crate) const IN_FLIGHT: usize = 256;
/// Request streams one remote host may hold open to this one at a time.
pub(crate) const STREAMS_PER_HOST: usize = 2;
/// Bytes of answers gathered into one write.
const WRITE_BYTES: usize = 256 * 1024;

/// Request-response exchanges one remote host may have open with this one
/// at a time: as many as one request stream's requests in flight, so that
/// a remote host cannot hold more of this host's memory on one path than
/// on the other.
pub(crate) const EXCHANGES_PER_HOST: usize = IN_FLIGHT;

/// Starts the acceptor of the streams in `incoming`; the returned task
/// owns their readers and writers (aborting it ends them).
pub(crate) fn spawn_acceptor(
    incoming: mpsc::Receiver<(PeerId, Stream)>,
    ctx: RpcContext,
) -> JoinHandle<()> {
    spawn_limited(incoming, ctx, STREAMS_PER_HOST, serve, drop)
}

/// Starts the acceptor of request-response exchanges: the answering side
/// of the rpc protocol, whose requesting side is libp2p's request-response
/// behaviour (it dials hosts that are not connected). Served here rather
/// than by that behaviour because it drops the streams past its cap with a
/// log line only; here each is refused with an answer (see
/// [`Refusals`]), and counted.
pub(crate) fn spawn_exchange_acceptor(
    (incoming, refusals): (mpsc::Receiver<(PeerId, Stream)>, Refusals),
    ctx: RpcContext,
) -> JoinHandle<()> {
    spawn_limited(incoming, ctx, EXCHANGES_PER_HOST, exchange, move |s| {
        refusals.refuse(s)
    })
}

/// Runs `serve` on each stream of `incoming`, `per_host` at a time per
/// remote host, past that `refuse` (see [`accept_limited`]).
fn spawn_limited<F, Fut>(
    incoming: mpsc::Receiver<(PeerId, Stream)>,
    ctx: RpcContext,
    per_host: usize,
    serve: F,
    refuse: impl Fn(Stream) + Send + 'static,
) -> JoinHandle<()>
where
    F: Fn(PeerId, Stream, RpcContext) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = PeerId> + Send + 'static,
{
    let wire = ctx.shared.wire.clone();
    tokio::spawn(accept_limited(
        incoming,
        per_host,
        wire,
        move |host, s| serve(host, s, ctx.clone()),
        refuse,
    ))
}

/// One exchange: one request frame in, one answer frame out, then the
/// stream closes (the framing of [`crate::protocol::Codec`]).
async fn exchange(host: PeerId, mut stream: Stream, ctx: RpcContext) -> PeerId {
    let (max_frame, timeout) = ctx
        .shared
        .with_config(|c| (c.max_frame_size, c.request_timeout));
    let wire = &ctx.shared.wire;
    let read = async {
        let body = read_frame_body(&mut stream, max_frame, wire).await?;
        decode_counted::<Request>(&body, wire)
    };
    let request = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(%host, error = %e, "inbound exchange failed");
            return host;
        }
        Err(_) => {
            tracing::debug!(%host, "inbound exchange timed out before its request");
            return host;
        }
    };
    let (tx, mut rx) = mpsc::channel(1);
    let Ok(permit) = Arc::new(Semaphore::new(1)).acquire_owned().await else {
        return host;
    };
    let event = RpcEvent::Request {
        host,
        request,
        reply: Reply::new(0, tx, permit),
    };
    if ctx.events.send(event).await.is_err() {
        return host;
    }
    // A relayed request is answered when its next hop has answered, which
    // may take up to the requester's own timeout; past that, nobody waits.
    let Ok(Some((_, response, _))) = tokio::time::timeout(timeout, rx.recv()).await else {
        return host;
    };
    let Some(frame) = answer_frame(&response, max_frame, encode_frame) else {
        return host;
    };
    let written = bounded(timeout, async {
        stream.write_all(&frame).await?;
        stream.close().await
    });
    if let Err(e) = written.await {
        tracing::debug!(%host, error = %e, "answer to an exchange not sent");
    }
    host
}

/// The frame `encode` makes of `response`, or of a refusal saying why
/// when that does not encode within `max_frame`.
fn answer_frame(
    response: &Response,
    max_frame: usize,
    encode: impl Fn(&Response) -> std::io::Result<Vec<u8>>,
) -> Option<Vec<u8>> {
    let frame = match encode(response) {
        Ok(f) if f.len() - 4 <= max_frame => Ok(f),
        Ok(_) => Err("answer exceeds the frame limit".to_string()),
        Err(e) => Err(e.to_string()),
    };
    frame.or_else(|why| encode(&Response::Refused(why))).ok()
}

/// Why an exchange past [`EXCHANGES_PER_HOST`] is refused.
pub(crate) const TOO_MANY_EXCHANGES: &str = "too many requests at once";

/// Refusals being answered at once, over all remote hosts of one host:
/// past this, an exchange past the cap is dropped unanswered (still
/// counted).
const REFUSING: usize = 64;
/// How long a refusal may take: to go out, and for the requester to finish
/// writing its request.
const REFUSAL_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Answers exchanges past the cap with a refusal (one host's; clones share
/// the bound).
///
/// Each refusal gets its own short task: written in place (when it could
/// be made at once) it was lost whenever the connection was busy, as in a
/// burst of the very requests the cap refuses. The task then waits for the
/// requester's side to end before dropping the stream: a stream dropped
/// while its request is still arriving is reset by yamux when the next
/// bytes come, and a requester still writing then sees a broken stream,
/// not the refusal. At most [`REFUSING`] such tasks run, for at most
/// [`REFUSAL_TIME`], reading at most one frame's bytes, so the refusals
/// hold little of what the cap bounds.
#[derive(Clone)]
pub(crate) struct Refusals {
    permits: Arc<Semaphore>,
    max_frame: usize,
    /// The refusal's frame, encoded once (`None` if it could not be).
    frame: Option<Arc<[u8]>>,
}

impl Refusals {
    /// Refusals of requests of at most `max_frame` bytes.
    pub(crate) fn new(max_frame: usize) -> Self {
        Refusals {
            permits: Arc::new(Semaphore::new(REFUSING)),
            max_frame,
            frame: encode_frame(&Response::Refused(TOO_MANY_EXCHANGES.into()))
                .ok()
                .map(Arc::from),
        }
    }

    /// Answers `stream` with a refusal, then drops it (see [`Refusals`]).
    pub(crate) fn refuse(&self, mut stream: Stream) {
        let Some(frame) = self.frame.clone() else {
            return;
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return;
        };
        let request_bytes = self.max_frame as u64 + 4;
        tokio::spawn(async move {
            let _permit = permit;
            let answer = async {
                stream.write_all(&frame).await?;
                stream.close().await?;
                // The request is not read, only let finish (bounded: a
                // frame's length prefix and body).
                let mut rest = (&mut stream).take(request_bytes);
                futures::io::copy(&mut rest, &mut futures::io::sink()).await
            };
            let _ = tokio::time::timeout(REFUSAL_TIME, answer).await;
        });
    }
}

/// Serves the requests of one stream from `host` until it ends.
async fn serve(host: PeerId, stream: Stream, ctx: RpcContext) -> PeerId {
    let (reader, writer) = futures::AsyncReadExt::split(stream);
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let max_frame = ctx.shared.with_config(|c| c.max_frame_size);
    tokio::join!(
        read_requests(host, reader, tx, &ctx),
        write_answers(host, writer, rx, &ctx, max_frame)
    );
    host
}

async fn read_requests(
    host: PeerId,
    mut reader: ReadHalf<Stream>,
    tx: mpsc::Sender<(u64, Response, OwnedSemaphorePermit)>,
    ctx: &RpcContext,
) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let wire = &ctx.shared.wire;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let max_frame = ctx.shared.with_config(|c| c.max_frame_size);
        let body = match read_frame_body(&mut reader, max_frame, wire).await {
            Ok(body) => body,
            Err(e) => {
                tracing::trace!(%host, error = %e, "request stream ended");
                return;
            }
        };
        let (id, request): (u64, Request) = match decode_counted(&body, wire) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%host, error = %e, "malformed request; stream ended");
                return;
            }
        };
        let reply = Reply::new(id, tx.clone(), permit);
        let event = RpcEvent::Request {
            host,
            request,
            reply,
        };
        if ctx.events.send(event).await.is_err() {
            return;
        }
    }
}

/// Writes the answers until every [`Reply`] of the stream is answered or
/// dropped (the reader has ended) or the stream breaks.
async fn write_answers(
    host: PeerId,
    mut writer: WriteHalf<Stream>,
    mut rx: mpsc::Receiver<(u64, Response, OwnedSemaphorePermit)>,
    ctx: &RpcContext,
    max_frame: usize,
) {
    let timeout = ctx.shared.with_config(|c| c.request_timeout);
    while let Some(first) = rx.recv().await {
        let mut buf = Vec::new();
        let mut next = Some(first);
        // Each answer's permit goes when it is taken for writing.
        while let Some((id, response, _permit)) = next.take() {
            if let Some(f) = answer_frame(&response, max_frame, |r| encode_frame(&(id, r))) {
                buf.extend_from_slice(&f);
            }
            if buf.len() >= WRITE_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        let written = bounded(timeout, async {
            writer.write_all(&buf).await?;
            writer.flush().await
        });
        if let Err(e) = written.await {
            tracing::trace!(%host, error = %e, "request stream ended");
            return;
        }
    }
    let _ = writer.close().await;
}
