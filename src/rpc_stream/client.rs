//! The requesting side: one task per destination host writes the loop's
//! requests on one stream and reports every answer, failure and timeout.
//!
//! The task opens its stream when it starts. If none opens, or the stream
//! breaks, every request it holds fails as a broken request-response
//! exchange would (`ConnectionClosed`, or the opening error), and the task
//! ends; the loop starts a new one for the next request. A request
//! unanswered within the request timeout fails with `Timeout` on its own
//! (a relay may take long to answer one request while answering others).
//! After [`IDLE`] with nothing sent or waiting, the task closes its stream
//! and ends.

use std::{
    collections::{HashMap, VecDeque},
    io,
    time::Duration,
};

use futures::{io::ReadHalf, stream::BoxStream, AsyncWriteExt, StreamExt};
use libp2p::{request_response::OutboundFailure, PeerId, Stream};
use tokio::{sync::mpsc, time::Instant};

use super::{server::IN_FLIGHT, RpcContext, RpcEvent};
use crate::{
    delivery::outbound::bounded,
    protocol::{encode_frame, read_frame, Request, Response},
};

/// Requests waiting in a client task, at most (more go as
/// request-response exchanges).
const QUEUE: usize = 1024;
/// A stream without requests for this long is closed.
const IDLE: Duration = Duration::from_secs(20);
/// Bytes of requests gathered into one write.
const WRITE_BYTES: usize = 256 * 1024;

/// The loop's handle on a client task.
#[derive(Debug)]
pub(crate) struct ClientHandle {
    tx: mpsc::Sender<(u64, Request)>,
}

impl ClientHandle {
    /// Starts the client task for `host`.
    pub(crate) fn spawn(host: PeerId, ctx: RpcContext) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = Client {
            host,
            ctx,
            rx,
            rx_open: true,
            waiting: HashMap::new(),
            order: VecDeque::new(),
        };
        tokio::spawn(task.run());
        ClientHandle { tx }
    }

    /// Hands request `id` to the task, or gives it back (queue full, or
    /// the task has ended).
    pub(crate) fn send(&self, id: u64, req: Request) -> Result<(), Request> {
        self.tx.try_send((id, req)).map_err(|e| e.into_inner().1)
    }

    /// Whether the task has ended (idle, or its stream broke).
    pub(crate) fn ended(&self) -> bool {
        self.tx.is_closed()
    }
}

type Answers = BoxStream<'static, io::Result<(u64, Response)>>;

struct Client {
    host: PeerId,
    ctx: RpcContext,
    rx: mpsc::Receiver<(u64, Request)>,
    /// Whether the task still takes requests.
    rx_open: bool,
    /// Requests written and not answered, with when they were written.
    waiting: HashMap<u64, Instant>,
    /// `waiting` in the order written (answered ones are skipped lazily).
    order: VecDeque<(u64, Instant)>,
}

impl Client {
    async fn run(mut self) {
        let timeout = self.ctx.shared.with_config(|c| c.request_timeout);
        let opened = tokio::time::timeout(timeout, self.ctx.opener.open(self.host)).await;
        let stream = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.fail_all(e.kind(), &e.to_string()).await,
            Err(_) => {
                return self
                    .fail_all(io::ErrorKind::TimedOut, "no stream opened")
                    .await
            }
        };
        let (reader, mut writer) = futures::AsyncReadExt::split(stream);
        let mut answers = answers(reader, self.ctx.clone());
        loop {
            let now = Instant::now();
            let deadline = self.next_deadline(timeout).unwrap_or(now + IDLE);
            let room = self.rx_open && self.waiting.len() < IN_FLIGHT;
            tokio::select! {
                biased;
                a = answers.next() => match a {
                    Some(Ok((id, response))) => {
                        if self.waiting.remove(&id).is_some() {
                            self.report(id, Ok(response)).await;
                        }
                    }
                    Some(Err(e)) => return self.fail_all(e.kind(), &e.to_string()).await,
                    None => return self.fail_all(io::ErrorKind::UnexpectedEof, "stream closed").await,
                },
                r = self.rx.recv(), if room => match r {
                    Some(first) => {
                        if let Err(e) = self.write(&mut writer, first, timeout).await {
                            return self.fail_all(e.kind(), &e.to_string()).await;
                        }
                    }
                    None => self.rx_open = false,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if self.waiting.is_empty() {
                        // Idle: take no more (what slipped in is still sent).
                        self.rx.close();
                    } else {
                        self.expire(timeout).await;
                    }
                }
            }
            if !self.rx_open && self.waiting.is_empty() {
                let _ = writer.close().await;
                return;
            }
        }
    }

    /// When the oldest waiting request times out.
    fn next_deadline(&mut self, timeout: Duration) -> Option<Instant> {
        while let Some((id, _)) = self.order.front() {
            if self.waiting.contains_key(id) {
                break;
            }
            self.order.pop_front();
        }
        self.order.front().map(|(_, at)| *at + timeout)
    }

    /// Fails the requests waiting longer than `timeout`.
    async fn expire(&mut self, timeout: Duration) {
        let now = Instant::now();
        while let Some(&(id, at)) = self.order.front() {
            if self.waiting.contains_key(&id) && now < at + timeout {
                break;
            }
            self.order.pop_front();
            if self.waiting.remove(&id).is_some() {
                self.report(id, Err(OutboundFailure::Timeout)).await;
            }
        }
    }

    /// Writes `first` and whatever else is queued (within the window and
    /// [`WRITE_BYTES`]) in one write.
    async fn write(
        &mut self,
        writer: &mut futures::io::WriteHalf<Stream>,
        first: (u64, Request),
        timeout: Duration,
    ) -> io::Result<()> {
        let max_frame = self.ctx.shared.with_config(|c| c.max_frame_size);
        let mut buf = Vec::new();
        let mut next = Some(first);
        let now = Instant::now();
        while let Some((id, req)) = next.take() {
            match encode_frame(&(id, &req)) {
                Ok(frame) if frame.len() - 4 <= max_frame => {
                    buf.extend_from_slice(&frame);
                    self.waiting.insert(id, now);
                    self.order.push_back((id, now));
                }
                Ok(_) => {
                    let e = io::Error::new(io::ErrorKind::InvalidInput, "frame exceeds limit");
                    self.report(id, Err(OutboundFailure::Io(e))).await;
                }
                Err(e) => self.report(id, Err(OutboundFailure::Io(e))).await,
            }
            if buf.len() >= WRITE_BYTES || self.waiting.len() >= IN_FLIGHT {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        if buf.is_empty() {
            return Ok(());
        }
        bounded(timeout, async {
            writer.write_all(&buf).await?;
            writer.flush().await
        })
        .await
    }

    /// The stream is gone (or never opened): every request written or
    /// queued fails, and the task takes no more.
    async fn fail_all(mut self, kind: io::ErrorKind, why: &str) {
        tracing::trace!(host = %self.host, %why, "request stream ended");
        self.rx.close();
        let mut ids: Vec<u64> = self.order.iter().map(|(id, _)| *id).collect();
        ids.retain(|id| self.waiting.remove(id).is_some());
        while let Ok((id, _)) = self.rx.try_recv() {
            ids.push(id);
        }
        for id in ids {
            let failure = match kind {
                io::ErrorKind::NotConnected
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::UnexpectedEof => OutboundFailure::ConnectionClosed,
                _ => OutboundFailure::Io(io::Error::new(kind, why.to_string())),
            };
            self.report(id, Err(failure)).await;
        }
    }

    async fn report(&self, id: u64, result: Result<Response, OutboundFailure>) {
        // The loop is gone only when the host is: nothing left to tell.
        let _ = self.ctx.events.send(RpcEvent::Answer { id, result }).await;
    }
}

/// The answers read from `reader`, one frame each (a stream, so a partly
/// read frame survives the task's `select!`).
fn answers(reader: ReadHalf<Stream>, ctx: RpcContext) -> Answers {
    futures::stream::unfold((reader, ctx), |(mut reader, ctx)| async move {
        let max = ctx.shared.with_config(|c| c.max_frame_size);
        let r = read_frame(&mut reader, max, &ctx.shared.wire).await;
        Some((r, (reader, ctx)))
    })
    .boxed()
}
