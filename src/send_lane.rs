//! The direct lane of remote sends: a peer whose last send to a recipient
//! went to a host's link task sends the next ones to that link task
//! itself, without the event loop.
//!
//! With 1,024 sends in flight between two hosts, the hop through the loop
//! (its command queue, the location cache, the hand-over) was about a sixth
//! of the CPU. The loop stays in charge of routing: it resolves the first
//! send to a recipient, and a route is only a shortcut to where the loop
//! sent the last one.
//!
//! Order: messages from one peer to another arrive in send order. A send
//! takes the lane only while none of the peer's earlier sends is still in
//! the loop's hands (`via_loop`, counted by a [`LoopTicket`] per send until
//! the loop hands it to a link task or finishes it); then every earlier
//! send is already in the link task's queue, and the new one goes behind
//! it. The lane state lives behind the peer's lock, allocated at its first
//! remote send, so it costs an idle peer nothing.
//!
//! A route goes when its link task has ended (the send goes through the
//! loop, which starts a new one) and when the recipient's host answers
//! "unknown peer" (the loop resolves the recipient again).

use std::sync::Arc;

use crate::{
    core::send::PendingSend,
    delivery::outbound::{LinkHandle, Refused},
    inbox::PeerSlot,
};

/// The sending side of a local peer.
#[derive(Debug)]
pub(crate) struct SendLane {
    /// The peer's id, shared by the envelopes of its remote sends (the
    /// slot holds the id inline, where it cannot be shared).
    from: Arc<str>,
    /// Sends of this peer in the event loop's hands (not yet handed to a
    /// link task, nor finished).
    via_loop: u32,
    /// The recipient of the last send the loop handed to a link task, and
    /// that link task.
    route: Option<(Arc<str>, LinkHandle)>,
}

impl SendLane {
    pub(crate) fn new(from: &str) -> Self {
        SendLane {
            from: Arc::from(from),
            via_loop: 0,
            route: None,
        }
    }

    /// Forgets the route to `to`, if that is where it goes.
    pub(crate) fn forget(&mut self, to: &str) {
        if self.route.as_ref().is_some_and(|(r, _)| **r == *to) {
            self.route = None;
        }
    }
}

/// Sends `make()`'s send to `to` on the direct lane if it may take it:
/// the link task gets it while the peer's lock is held, so no later send of
/// the same peer can overtake it. Otherwise returns it with its
/// [`LoopTicket`], to go through the event loop. `make` gets the sender's
/// id and the route's copy of the recipient id, if there is a route to
/// `to` (no new allocation).
pub(crate) fn take(
    owner: &PeerSlot,
    to: &str,
    counters: &crate::shared::Counters,
    make: impl FnOnce(Arc<str>, Option<Arc<str>>) -> PendingSend,
) -> Option<PendingSend> {
    let mut p = owner.with_lane(|lane| {
        let from = lane.from.clone();
        let direct = match lane.route.as_ref() {
            Some((id, link)) if lane.via_loop == 0 && **id == *to => Some((id.clone(), link)),
            _ => None,
        };
        let p = match direct {
            Some((id, link)) => match link.forward(make(from, Some(id))) {
                Ok(()) => {
                    crate::shared::bump(&counters.lane_sends);
                    return None;
                }
                Err(Refused::Full(back)) => back,
                Err(Refused::Ended(back)) => {
                    lane.route = None;
                    back
                }
            },
            None => make(from, None),
        };
        lane.via_loop += 1;
        Some(p)
    })?;
    p.ticket = Some(LoopTicket(Some(owner.clone())));
    Some(p)
}

/// Counts one send of a peer as in the event loop's hands until dropped
/// or released.
#[derive(Debug)]
pub(crate) struct LoopTicket(Option<PeerSlot>);

impl LoopTicket {
    /// The loop handed the send to `to` to `link`: later sends of the
    /// peer to `to` may go there directly (once no other send of the peer
    /// is in the loop's hands).
    pub(crate) fn release_to(mut self, to: Arc<str>, link: &LinkHandle) {
        if let Some(owner) = self.0.take() {
            owner.if_lane(|lane| {
                lane.via_loop = lane.via_loop.saturating_sub(1);
                lane.route = Some((to, link.clone()));
            });
        }
    }
}

impl Drop for LoopTicket {
    fn drop(&mut self) {
        if let Some(owner) = self.0.take() {
            owner.if_lane(|lane| lane.via_loop = lane.via_loop.saturating_sub(1));
        }
    }
}
