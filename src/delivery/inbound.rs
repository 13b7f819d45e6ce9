//! The receiving side of delivery streams: an acceptor task takes the
//! streams other hosts open, and one reader per stream delivers each batch
//! into the local inboxes and writes its acks.
//!
//! A host may hold at most [`STREAMS_PER_HOST`] delivery streams from one
//! remote host (more are reset as they arrive, and counted in
//! `Stats::refused_streams`): a remote party cannot grow the number of
//! readers. A frame over the size limit, or bytes that do not decode, end
//! that stream (counted in the host's rejected frames); the sender opens a
//! new one and the host goes on.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::AsyncReadExt;
use libp2p::{PeerId, Stream};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{outbound::bounded, TaskContext, TaskEvent};
use crate::{
    core::batch_memory::{BatchMemory, Seen},
    delivery::local::deliver_envs,
    message::Payload,
    protocol::{decode_counted, read_frame_body, write_frame, StreamAcks, StreamBatchIn},
};

/// Delivery streams one remote host may hold open to this one at a time.
pub(crate) const STREAMS_PER_HOST: usize = 4;
/// Senders a reader remembers having reported to the loop (then it starts
/// over).
const REPORTED: usize = 4096;
/// A reader reports its link as used at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Starts the acceptor of the streams in `incoming`; the returned task
/// owns the readers (aborting it ends them).
pub(crate) fn spawn_acceptor(
    incoming: mpsc::Receiver<(PeerId, Stream)>,
    ctx: TaskContext,
    memory: Arc<Mutex<BatchMemory>>,
) -> JoinHandle<()> {
    let wire = ctx.shared.wire.clone();
    tokio::spawn(super::streams::accept_limited(
        incoming,
        STREAMS_PER_HOST,
        wire,
        move |host, stream| serve(host, stream, ctx.clone(), memory.clone()),
        drop,
    ))
}

/// Reads batches from `host` until the stream ends; returns `host`.
async fn serve(
    host: PeerId,
    stream: Stream,
    ctx: TaskContext,
    memory: Arc<Mutex<BatchMemory>>,
) -> PeerId {
    let (mut reader, mut writer) = stream.split();
    let shared = &ctx.shared;
    let mut reported: HashSet<Arc<str>> = HashSet::new();
    let mut last_report: Option<Instant> = None;
    loop {
        let max_frame = shared.with_config(|c| c.max_frame_size);
        let body = match read_frame_body(&mut reader, max_frame, &shared.wire).await {
            Ok(body) => body,
            Err(e) => {
                tracing::trace!(%host, error = %e, "delivery stream ended");
                return host;
            }
        };
        let b: StreamBatchIn = match decode_counted(&body, &shared.wire) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(%host, error = %e, "malformed delivery batch; stream ended");
                return host;
            }
        };
        // Only members deliver: a host that is not one (never joined, or
        // its lease lapsed here) is refused, batch by batch.
        let member = shared.is_member(&host);
        if !member {
            crate::shared::bump(&shared.counters.refused_non_members);
        }
        let acks = if !member {
            Err(crate::protocol::NOT_MEMBER.to_string())
        } else {
            let mut memory = memory.lock().unwrap_or_else(|e| e.into_inner());
            match memory.check(host, (b.epoch, b.batch)) {
                Seen::New => {
                    if reported.len() >= REPORTED {
                        reported.clear();
                    }
                    let mut froms = Vec::new();
                    let mut last: Option<&str> = None;
                    for env in &b.envs {
                        if last != Some(env.from) && !reported.contains(env.from) {
                            let from: Arc<str> = Arc::from(env.from);
                            reported.insert(from.clone());
                            froms.push(from);
                        }
                        last = Some(env.from);
                    }
                    // Reported before delivering: a recipient that replies
                    // at once finds its sender's host in the loop's cache.
                    let due = last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY);
                    if !froms.is_empty() || due {
                        last_report = Some(Instant::now());
                        // The location cache and the link budget are hints:
                        // when the loop is behind, a report is dropped
                        // rather than queued.
                        let froms = std::mem::take(&mut froms);
                        let _ = ctx.events.try_send(TaskEvent::Inbound { host, froms });
                    }
                    let msgs = b.envs.iter().map(|e| {
                        let payload = Payload {
                            encoding: e.encoding,
                            bytes: bytes::Bytes::copy_from_slice(e.bytes),
                        };
                        (e.from, e.to, payload, e.corr)
                    });
                    let acks = deliver_envs(shared, msgs);
                    memory.record(host, (b.epoch, b.batch), acks.clone());
                    Ok(acks)
                }
                Seen::Again(acks) => Ok(acks),
                Seen::Stale => {
                    tracing::warn!(%host, batch = b.batch, "refused a stale delivery batch");
                    Err("delivery batch older than the last ones".to_string())
                }
            }
        };
        let answer = StreamAcks {
            batch: b.batch,
            acks,
        };
        // A sender that stops reading its acks loses the stream rather
        // than holding this reader.
        let timeout = shared.with_config(|c| c.request_timeout);
        let written = bounded(timeout, write_frame(&mut writer, &answer, max_frame));
        if let Err(e) = written.await {
            tracing::trace!(%host, error = %e, "delivery stream ended");
            return host;
        }
    }
}
