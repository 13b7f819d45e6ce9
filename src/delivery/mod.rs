//! Direct messages between linked hosts over long-lived delivery streams.
//!
//! While two hosts are linked, one stream per direction carries the
//! sender's delivery batches and the receiver's acks (protocol
//! [`deliver_protocol`](crate::protocol::deliver_protocol)). Compared with a
//! request-response exchange per batch, nothing is negotiated per batch,
//! several batches travel at once (the stream keeps their order), and
//! neither event loop is on the path: a [`outbound`] link task per
//! destination batches the sends the loop hands it and answers each caller
//! when its ack comes; an [`inbound`] reader per stream puts envelopes
//! straight into the local inboxes and writes the acks.
//!
//! The loop stays in charge of routing: it hands a destination's sends to
//! its link task while the hosts are linked, and uses a (possibly relayed)
//! request otherwise (see `event_loop::messaging`). What a link task cannot
//! deliver (its stream broke and no new one opens) goes back to the loop,
//! oldest first, and is routed again.

pub(crate) mod inbound;
pub(crate) mod local;
pub(crate) mod outbound;
pub(crate) mod streams;

use std::sync::{atomic::AtomicU64, Arc};

use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::{core::send::PendingSend, shared::Shared};

/// Batches one link task keeps in flight on its stream.
pub(crate) const WINDOW: usize = 4;

/// What the delivery tasks tell the event loop.
#[derive(Debug)]
pub(crate) enum TaskEvent {
    /// The destination host answered "unknown peer" for this send: its
    /// cached location is stale.
    Unresolved { host: PeerId, send: PendingSend },
    /// Sends a link task gave up on (its stream broke and no new one
    /// opened), oldest first, to be routed again.
    Unsent {
        host: PeerId,
        sends: Vec<PendingSend>,
    },
    /// Messages came in over a stream from `host`: these senders (not
    /// reported before on that stream) live there, and the link is in use.
    Inbound { host: PeerId, froms: Vec<Arc<str>> },
}

/// What every delivery task of a host shares.
#[derive(Clone)]
pub(crate) struct TaskContext {
    pub opener: streams::Opener,
    pub shared: Arc<Shared>,
    pub events: mpsc::Sender<TaskEvent>,
    /// This host's epoch: with `next_batch`, what identifies a batch.
    pub epoch: u64,
    /// Id of the next batch over any stream of this host.
    pub next_batch: Arc<AtomicU64>,
}
