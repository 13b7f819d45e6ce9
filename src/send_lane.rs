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
//! remote send, so an idle peer costs 16 bytes more.
//!
//! A route goes when its link task has ended (the send goes through the
//! loop, which starts a new one) and when the recipient's host answers
//! "unknown peer" (the loop resolves the recipient again).

use std::sync::{Arc, Mutex, MutexGuard};

use crate::{
    core::send::PendingSend,
    delivery::outbound::{LinkHandle, Refused},
};

/// The sending side of a local peer.
#[derive(Debug, Default)]
pub(crate) struct SendLane {
    /// Sends of this peer in the event loop's hands (not yet handed to a
    /// link task, nor finished).
    via_loop: u32,
    /// The recipient of the last send the loop handed to a link task, and
    /// that link task.
    route: Option<(Arc<str>, LinkHandle)>,
}

/// A peer's lane, allocated at its first remote send.
#[derive(Debug, Default)]
pub(crate) struct LaneCell(Mutex<Option<Box<SendLane>>>);

impl LaneCell {
    fn lock(&self) -> MutexGuard<'_, Option<Box<SendLane>>> {
        // The lane is two plain fields; a panic elsewhere cannot leave it
        // half-updated.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the route to `to`, if that is where it goes.
    pub(crate) fn forget(&self, to: &str) {
        if let Some(lane) = self.lock().as_mut() {
            if lane.route.as_ref().is_some_and(|(r, _)| **r == *to) {
                lane.route = None;
            }
        }
    }
}

/// Sends `make()`'s send to `to` on the direct lane if it may take it:
/// the link task gets it while the peer's lock is held, so no later send of
/// the same peer can overtake it. Otherwise returns it with its
/// [`LoopTicket`], to go through the event loop. `make` gets the route's
/// copy of the recipient id, if there is a route to `to` (no new
/// allocation).
pub(crate) fn take(
    owner: &Arc<crate::inbox::PeerSlot>,
    to: &str,
    counters: &crate::shared::Counters,
    make: impl FnOnce(Option<Arc<str>>) -> PendingSend,
) -> Option<PendingSend> {
    let mut guard = owner.lane.lock();
    let lane = guard.get_or_insert_with(Default::default);
    let direct = match lane.route.as_ref() {
        Some((id, link)) if lane.via_loop == 0 && **id == *to => Some((id.clone(), link)),
        _ => None,
    };
    let mut p = match direct {
        Some((id, link)) => match link.forward(make(Some(id))) {
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
        None => make(None),
    };
    lane.via_loop += 1;
    drop(guard);
    p.ticket = Some(LoopTicket(Some(owner.clone())));
    Some(p)
}

/// Counts one send of a peer as in the event loop's hands until dropped
/// or released.
#[derive(Debug)]
pub(crate) struct LoopTicket(Option<Arc<crate::inbox::PeerSlot>>);

impl LoopTicket {
    /// The loop handed the send to `to` to `link`: later sends of the
    /// peer to `to` may go there directly (once no other send of the peer
    /// is in the loop's hands).
    pub(crate) fn release_to(mut self, to: Arc<str>, link: &LinkHandle) {
        if let Some(owner) = self.0.take() {
            let mut guard = owner.lane.lock();
            if let Some(lane) = guard.as_mut() {
                lane.via_loop = lane.via_loop.saturating_sub(1);
                lane.route = Some((to, link.clone()));
            }
        }
    }
}

impl Drop for LoopTicket {
    fn drop(&mut self) {
        if let Some(owner) = self.0.take() {
            if let Some(lane) = owner.lane.lock().as_mut() {
                lane.via_loop = lane.via_loop.saturating_sub(1);
            }
        }
    }
}
