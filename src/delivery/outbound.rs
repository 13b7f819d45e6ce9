//! The link task: one per destination host, it sends that host's delivery
//! batches over one stream and answers each send when its ack comes.
//!
//! Sends arrive from the event loop in order. The task gathers what is
//! waiting into a batch (up to `max_batch_messages` and the frame size),
//! keeps up to [`WINDOW`] batches in flight and matches acks to batches in
//! order. If the stream breaks with batches in flight, it opens a new one
//! and sends them again (the receiver answers a batch it already delivered
//! from memory); if no stream opens, it stops taking sends and hands every
//! unanswered one back to the loop, oldest first. A batch unanswered within
//! the request timeout fails its sends with [`SendError::Timeout`] and the
//! stream is dropped. After [`IDLE`] without sends the task closes its
//! stream and ends (the loop starts a new one on the next send).

use std::{
    collections::VecDeque,
    io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::{
    io::{ReadHalf, WriteHalf},
    stream::BoxStream,
    AsyncReadExt, StreamExt,
};
use libp2p::{PeerId, Stream};
use tokio::{sync::mpsc, time::Instant};

use super::{TaskContext, TaskEvent, WINDOW};
use crate::{
    core::send::PendingSend,
    delivery::local::{finish, no_request},
    error::SendError,
    protocol::{read_frame, write_frame, Ack, StreamAcks, StreamBatchRef},
    shared::bump,
};

/// A link without sends for this long closes its stream and ends.
const IDLE: Duration = Duration::from_secs(5);
/// Sends of one batch after the first when its stream breaks under it.
const RESENDS: u8 = 2;
/// Bytes kept free in a batch frame for the framing itself.
const FRAME_SLACK: usize = 64 * 1024;

/// Batches in flight that leave as soon as there is a send.
const EAGER_BATCHES: usize = 2;
/// Sends queued that make a further batch (up to [`WINDOW`]) leave before
/// an ack comes.
const GATHER: usize = 64;

/// Sends waiting in a link task's queue, at most, in batches of the
/// largest size (more wait in the loop's queue for the destination).
const QUEUED_BATCHES: usize = 4;

/// Why a link task did not take a send.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Its queue is full: keep the send queued and try again later.
    Full(PendingSend),
    /// The task has ended: start a new one.
    Ended(PendingSend),
}

/// The loop's handle on a link task (peers' direct lanes hold copies).
#[derive(Debug, Clone)]
pub(crate) struct LinkHandle {
    tx: mpsc::Sender<PendingSend>,
    /// Sends handed to the task and not answered or handed back yet.
    outstanding: Arc<AtomicUsize>,
}

impl LinkHandle {
    /// Starts the link task to `host`.
    pub(crate) fn spawn(host: PeerId, ctx: TaskContext) -> Self {
        let max_batch = ctx.shared.with_config(|c| c.max_batch_messages);
        let (tx, rx) = mpsc::channel(QUEUED_BATCHES * max_batch.max(1));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let task = LinkTask {
            host,
            ctx,
            rx,
            rx_open: true,
            outstanding: outstanding.clone(),
            in_flight: VecDeque::new(),
            stream: None,
        };
        tokio::spawn(task.run());
        LinkHandle { tx, outstanding }
    }

    /// Hands a send to the task, or gives it back.
    // The refused send comes back by value: boxing it would allocate on
    // the path that runs when links are busiest.
    #[allow(clippy::result_large_err)]
    pub(crate) fn forward(&self, p: PendingSend) -> Result<(), Refused> {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.tx.try_send(p).map_err(|e| {
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(p) => Refused::Full(p),
                mpsc::error::TrySendError::Closed(p) => Refused::Ended(p),
            }
        })
    }

    /// Sends handed over and not answered or handed back yet.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Whether the task has ended (idle, or it gave up).
    pub(crate) fn ended(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A batch waiting for its acks.
struct InFlight {
    batch: u64,
    sends: Vec<PendingSend>,
    sent: Instant,
    attempts: u8,
}

/// An open delivery stream: acks are read as a stream of frames (so a
/// partly read frame survives the task's `select!`), batches written.
struct Open {
    acks: BoxStream<'static, io::Result<StreamAcks>>,
    writer: WriteHalf<Stream>,
}

struct LinkTask {
    host: PeerId,
    ctx: TaskContext,
    rx: mpsc::Receiver<PendingSend>,
    /// Whether the task still takes sends (it stops when it gives up, or
    /// when the loop drops its handle).
    rx_open: bool,
    outstanding: Arc<AtomicUsize>,
    in_flight: VecDeque<InFlight>,
    stream: Option<Open>,
}

impl LinkTask {
    async fn run(mut self) {
        loop {
            let (timeout, max_frame) = self
                .ctx
                .shared
                .with_config(|c| (c.request_timeout, c.max_frame_size));
            let deadline = match self.in_flight.front() {
                Some(b) => b.sent + timeout,
                None => Instant::now() + IDLE,
            };
            // Nagle-like: with batches already in flight, a new one waits
            // for an ack (which comes within a round trip) unless enough
            // sends are queued to fill it. Senders on the direct lane hand
            // sends over one by one; taken as they come, batches of one or
            // two cost a frame and an ack each.
            let room = self.rx_open
                && (self.in_flight.len() < EAGER_BATCHES
                    || (self.in_flight.len() < WINDOW && self.rx.len() >= GATHER));
            tokio::select! {
                biased;
                ack = next_ack(&mut self.stream) => match ack {
                    Some(Ok(a)) => self.on_acks(a).await,
                    Some(Err(e)) => self.on_broken(&e.to_string()).await,
                    None => self.on_broken("stream closed").await,
                },
                p = self.rx.recv(), if room => match p {
                    Some(p) => self.send_batch(p, max_frame).await,
                    None => self.rx_open = false,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if self.in_flight.is_empty() {
                        // Idle: take no more, hand back what slipped in.
                        self.give_up().await;
                    } else {
                        self.time_out();
                    }
                }
            }
            if self.in_flight.is_empty() && !self.rx_open {
                break;
            }
        }
        tracing::trace!(host = %self.host, "link task ended");
    }

    /// Gathers a batch starting with `first` and sends it.
    async fn send_batch(&mut self, first: PendingSend, max_frame: usize) {
        let max_msgs = self.ctx.shared.with_config(|c| c.max_batch_messages);
        let max_bytes = max_frame.saturating_sub(FRAME_SLACK);
        let mut sends = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(p) = next.take() {
            // A caller that gave up (timeout, dropped future) is not delivered.
            if p.reply.is_closed() {
                self.outstanding.fetch_sub(1, Ordering::Relaxed);
            } else {
                bytes += p.wire_size();
                sends.push(p);
            }
            if sends.len() >= max_msgs || bytes >= max_bytes {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        if sends.is_empty() {
            return;
        }
        let batch = self.ctx.next_batch.fetch_add(1, Ordering::Relaxed);
        self.in_flight.push_back(InFlight {
            batch,
            sends,
            sent: Instant::now(),
            attempts: 0,
        });
        if self.stream.is_none() && !self.open().await {
            self.give_up().await;
            return;
        }
        if let Err(e) = self.write_last(max_frame).await {
            self.on_broken(&e.to_string()).await;
        }
    }

    /// Writes the newest batch in flight.
    async fn write_last(&mut self, max_frame: usize) -> io::Result<()> {
        let (Some(open), Some(b)) = (self.stream.as_mut(), self.in_flight.back()) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let timeout = self.ctx.shared.with_config(|c| c.request_timeout);
        write_batch(open, self.ctx.epoch, b, (max_frame, timeout)).await
    }

    /// Opens a stream to the host; false if none opens within the timeout.
    async fn open(&mut self) -> bool {
        let timeout = self.ctx.shared.with_config(|c| c.request_timeout);
        let opening = self.ctx.opener.open(self.host);
        let stream = match tokio::time::timeout(timeout, opening).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(host = %self.host, error = %e, "no delivery stream");
                return false;
            }
            Err(_) => {
                tracing::debug!(host = %self.host, "no delivery stream in time");
                return false;
            }
        };
        let (reader, writer) = stream.split();
        let acks = frames(reader, self.ctx.shared.clone());
        self.stream = Some(Open { acks, writer });
        true
    }

    /// Answers the oldest batch's sends from its acks.
    async fn on_acks(&mut self, a: StreamAcks) {
        if self.in_flight.front().map(|b| b.batch) != Some(a.batch) {
            self.on_broken("acks out of order").await;
            return;
        }
        let Some(b) = self.in_flight.pop_front() else {
            return;
        };
        self.outstanding.fetch_sub(b.sends.len(), Ordering::Relaxed);
        let host = self.host;
        let shared = &self.ctx.shared;
        let acks = match a.acks {
            Ok(acks) => acks,
            Err(reason) => {
                tracing::warn!(%host, %reason, "delivery batch refused");
                Vec::new()
            }
        };
        let mut acks = acks.into_iter();
        for p in b.sends {
            match acks.next() {
                Some(Ack::Delivered) => {
                    bump(&shared.counters.sent_remote);
                    let _ = p.reply.send(Ok(()));
                }
                Some(Ack::InboxFull) => {
                    let e = SendError::InboxFull(p.env.to.to_string());
                    finish(shared, p, Err(e));
                }
                Some(Ack::NoRequest) => {
                    let e = no_request(&p.env.to, p.env.corr);
                    finish(shared, p, Err(e));
                }
                Some(Ack::UnknownPeer) => {
                    let ev = TaskEvent::Unresolved { host, send: p };
                    if let Err(mpsc::error::SendError(TaskEvent::Unresolved { send, .. })) =
                        self.ctx.events.send(ev).await
                    {
                        finish(shared, send, Err(SendError::Closed));
                    }
                }
                None => {
                    let id = p.env.to.to_string();
                    finish(shared, p, Err(SendError::PeerUnreachable { id, host }));
                }
            }
        }
    }

    /// The stream broke: send what is in flight again over a new one, or
    /// give up.
    async fn on_broken(&mut self, why: &str) {
        tracing::debug!(host = %self.host, %why, "delivery stream broke");
        self.stream = None;
        if self.in_flight.is_empty() {
            return;
        }
        let host = self.host;
        for b in std::mem::take(&mut self.in_flight) {
            if b.attempts >= RESENDS {
                for p in b.sends {
                    self.outstanding.fetch_sub(1, Ordering::Relaxed);
                    let id = p.env.to.to_string();
                    finish(
                        &self.ctx.shared,
                        p,
                        Err(SendError::PeerUnreachable { id, host }),
                    );
                }
            } else {
                self.in_flight.push_back(InFlight {
                    attempts: b.attempts + 1,
                    sent: Instant::now(),
                    ..b
                });
            }
        }
        if self.in_flight.is_empty() {
            return;
        }
        if !self.open().await {
            self.give_up().await;
            return;
        }
        let limits = self
            .ctx
            .shared
            .with_config(|c| (c.max_frame_size, c.request_timeout));
        let epoch = self.ctx.epoch;
        let Some(open) = self.stream.as_mut() else {
            return;
        };
        for b in &self.in_flight {
            if let Err(e) = write_batch(open, epoch, b, limits).await {
                // A stream that breaks again at once: the sends go back to
                // the loop rather than round this loop again.
                tracing::debug!(%host, error = %e, "new delivery stream broke too");
                self.stream = None;
                self.give_up().await;
                return;
            }
        }
    }

    /// Fails every batch in flight with a timeout and drops the stream
    /// (acks behind a lost one would be mismatched).
    fn time_out(&mut self) {
        tracing::debug!(host = %self.host, "delivery batch timed out");
        self.stream = None;
        for b in std::mem::take(&mut self.in_flight) {
            self.outstanding.fetch_sub(b.sends.len(), Ordering::Relaxed);
            for p in b.sends {
                finish(&self.ctx.shared, p, Err(SendError::Timeout));
            }
        }
    }

    /// Takes no more sends and hands back every unanswered one, oldest
    /// first: the batches in flight, then what waits in the queue.
    async fn give_up(&mut self) {
        self.stream = None;
        self.rx_open = false;
        self.rx.close();
        // Each written batch keeps its id: the receiver may have it.
        let mut sends: Vec<PendingSend> = std::mem::take(&mut self.in_flight)
            .into_iter()
            .flat_map(|b| {
                b.sends.into_iter().map(move |mut p| {
                    p.batch = Some(b.batch);
                    p
                })
            })
            .collect();
        while let Ok(p) = self.rx.try_recv() {
            sends.push(p);
        }
        self.outstanding.fetch_sub(sends.len(), Ordering::Relaxed);
        if sends.is_empty() {
            return;
        }
        let ev = TaskEvent::Unsent {
            host: self.host,
            sends,
        };
        if let Err(mpsc::error::SendError(TaskEvent::Unsent { sends, .. })) =
            self.ctx.events.send(ev).await
        {
            for p in sends {
                finish(&self.ctx.shared, p, Err(SendError::Closed));
            }
        }
    }
}

/// The next ack frame of the open stream; never ready without one.
/// The frames read from `reader`, each decoded as a `T` within the
/// host's frame limit (a stream, so a partly read frame survives a
/// `select!`).
pub(crate) fn frames<T: serde::de::DeserializeOwned + Send + 'static>(
    reader: ReadHalf<Stream>,
    shared: Arc<crate::shared::Shared>,
) -> BoxStream<'static, io::Result<T>> {
    futures::stream::unfold((reader, shared), |(mut reader, shared)| async move {
        let max = shared.with_config(|c| c.max_frame_size);
        let r = read_frame(&mut reader, max, &shared.wire).await;
        Some((r, (reader, shared)))
    })
    .boxed()
}

async fn next_ack(stream: &mut Option<Open>) -> Option<io::Result<StreamAcks>> {
    match stream {
        Some(open) => open.acks.next().await,
        None => futures::future::pending().await,
    }
}

/// Writes a batch; one that cannot be written within `timeout` (the other
/// host stopped reading) is an error, so the stream is dropped rather than
/// the task stuck behind it.
async fn write_batch(
    open: &mut Open,
    epoch: u64,
    b: &InFlight,
    (max_frame, timeout): (usize, Duration),
) -> io::Result<()> {
    let frame = StreamBatchRef {
        epoch,
        batch: b.batch,
        envs: crate::protocol::SerializeIter {
            items: &b.sends,
            get: |p: &PendingSend| &p.env,
        },
    };
    bounded(timeout, write_frame(&mut open.writer, &frame, max_frame)).await
}

/// Runs a write, bounded by `timeout` when it does not finish at once (a
/// timer per write showed in throughput; most writes only fill a buffer).
pub(crate) async fn bounded(
    timeout: Duration,
    write: impl std::future::Future<Output = io::Result<()>>,
) -> io::Result<()> {
    let mut write = std::pin::pin!(write);
    match futures::poll!(write.as_mut()) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => tokio::time::timeout(timeout, write)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
    }
}
