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

use futures::{stream::BoxStream, AsyncWriteExt, StreamExt};
use libp2p::{request_response::OutboundFailure, PeerId, Stream};
use tokio::{sync::mpsc, time::Instant};

use super::{server::IN_FLIGHT, RpcContext, RpcEvent};
use crate::{
    delivery::outbound::{bounded, frames},
    protocol::{encode_frame, Request, Response},
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
        let mut answers: Answers = frames(reader, self.ctx.shared.clone());
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

#[cfg(test)]
mod tests {
    //! The client against a bare libp2p host that takes request streams
    //! and answers as the test says: never (timeout), by closing the
    //! stream (connection closed), or with garbage.

    use std::sync::Arc;

    use futures::{AsyncReadExt, StreamExt};
    use libp2p::{
        core::{transport::MemoryTransport, upgrade},
        noise,
        swarm::SwarmEvent,
        yamux, Multiaddr, StreamProtocol, SwarmBuilder, Transport,
    };

    use super::*;
    use crate::{config::HostConfig, protocol::WireStats, shared::Shared};

    fn protocol() -> StreamProtocol {
        StreamProtocol::new("/distribus/test/requests/0")
    }

    /// A client context on a swarm linked to a bare host, and the streams
    /// the bare host accepts.
    async fn linked() -> (
        RpcContext,
        PeerId,
        mpsc::Receiver<RpcEvent>,
        libp2p_stream::IncomingStreams,
    ) {
        let transport = |k: &libp2p::identity::Keypair| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                MemoryTransport::default()
                    .upgrade(upgrade::Version::V1)
                    .authenticate(noise::Config::new(k)?)
                    .multiplex(yamux::Config::default()),
            )
        };
        let mut bare = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(transport)
            .unwrap()
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
            .build();
        let incoming = bare.behaviour().new_control().accept(protocol()).unwrap();
        let port = rand::random::<u64>().max(1);
        let addr: Multiaddr = format!("/memory/{port}").parse().unwrap();
        bare.listen_on(addr.clone()).unwrap();
        let bare_id = *bare.local_peer_id();
        tokio::spawn(async move {
            loop {
                bare.select_next_some().await;
            }
        });

        let (behaviour, opener, _inbound) = crate::delivery::streams::Behaviour::new(
            protocol(),
            Default::default(),
            Arc::new(drop),
        );
        let mut ours = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(transport)
            .unwrap()
            .with_behaviour(|_| behaviour)
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
            .build();
        let local = *ours.local_peer_id();
        ours.dial(addr).unwrap();
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = ours.select_next_some().await {
                break;
            }
        }
        tokio::spawn(async move {
            loop {
                ours.select_next_some().await;
            }
        });
        let mut cfg = HostConfig::for_tests();
        cfg.request_timeout = Duration::from_millis(300);
        let shared = Arc::new(Shared::new(local, cfg, Arc::new(WireStats::default())));
        let (events, rx) = mpsc::channel(16);
        let ctx = RpcContext {
            opener,
            shared,
            events,
        };
        (ctx, bare_id, rx, incoming)
    }

    async fn accept(incoming: &mut libp2p_stream::IncomingStreams) -> libp2p::Stream {
        let next = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        next.ok()
            .flatten()
            .map(|(_, s)| s)
            .expect("no request stream")
    }

    async fn next_answer(
        rx: &mut mpsc::Receiver<RpcEvent>,
    ) -> (u64, Result<Response, OutboundFailure>) {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(RpcEvent::Answer { id, result })) => (id, result),
            other => panic!("no answer: {other:?}"),
        }
    }

    #[tokio::test]
    async fn unanswered_requests_time_out_one_by_one_and_a_closed_stream_fails_the_rest() {
        let (ctx, bare, mut rx, mut incoming) = linked().await;
        let client = ClientHandle::spawn(bare, ctx);
        client.send(1, Request::Lookup("x".into())).unwrap();
        let mut stream = accept(&mut incoming).await;
        // The request arrived; nobody answers it.
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.unwrap();
        let (id, result) = next_answer(&mut rx).await;
        assert_eq!(id, 1);
        assert!(
            matches!(result, Err(OutboundFailure::Timeout)),
            "{result:?}"
        );

        // Another request on the same stream, then the stream closes.
        client.send(2, Request::Lookup("y".into())).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(stream);
        let (id, result) = next_answer(&mut rx).await;
        assert_eq!(id, 2);
        assert!(
            matches!(result, Err(OutboundFailure::ConnectionClosed)),
            "{result:?}"
        );
        // The task has ended; the loop starts a new one for the next request.
        tokio::time::timeout(Duration::from_secs(5), async {
            while !client.ended() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn garbage_answers_fail_the_requests_on_that_stream() {
        let (ctx, bare, mut rx, mut incoming) = linked().await;
        let shared = ctx.shared.clone();
        let client = ClientHandle::spawn(bare, ctx);
        client.send(7, Request::Lookup("x".into())).unwrap();
        let mut stream = accept(&mut incoming).await;
        let mut garbage = 8u32.to_be_bytes().to_vec();
        garbage.extend([0xff; 8]);
        futures::AsyncWriteExt::write_all(&mut stream, &garbage)
            .await
            .unwrap();
        futures::AsyncWriteExt::flush(&mut stream).await.unwrap();
        let (id, result) = next_answer(&mut rx).await;
        assert_eq!(id, 7);
        assert!(result.is_err(), "a garbage answer was taken: {result:?}");
        assert_eq!(shared.wire.rejected_frames(), 1);
    }
}
