//! A direct message on its way: what the loop's queues and the link tasks
//! carry, with the caller waiting for its outcome.

use libp2p::PeerId;
use tokio::sync::oneshot;

use super::outbox::Weigh;
use crate::{error::SendError, protocol::Envelope};

/// A send waiting for its outcome.
#[derive(Debug)]
pub(crate) struct PendingSend {
    pub env: Envelope,
    pub reply: oneshot::Sender<Result<(), SendError>>,
    /// The host that answered "unknown peer" for this send already (boxed:
    /// sends are moved between queues often, and a host id is 80 bytes).
    pub refused_by: Option<Box<PeerId>>,
    /// Times a link task handed this send back undelivered.
    pub handed_back: u8,
    /// The batch a link task wrote this send in before its stream broke:
    /// the send goes again in that batch, with the same sends in the same
    /// order, so that a receiver that had it answers from memory instead
    /// of delivering it twice.
    pub batch: Option<u64>,
    /// Counts the send as in the loop's hands for its sender's direct lane
    /// until it is handed to a link task (see [`crate::send_lane`]).
    pub ticket: Option<crate::send_lane::LoopTicket>,
}

impl PendingSend {
    pub(crate) fn new(env: Envelope, reply: oneshot::Sender<Result<(), SendError>>) -> Self {
        PendingSend {
            env,
            reply,
            refused_by: None,
            handed_back: 0,
            batch: None,
            ticket: None,
        }
    }

    /// About the bytes the envelope takes in a batch frame.
    pub(crate) fn wire_size(&self) -> usize {
        self.env.payload.len() + self.env.from.len() + self.env.to.len() + 16
    }
}

impl Weigh for PendingSend {
    fn weight(&self) -> usize {
        self.wire_size()
    }
}
