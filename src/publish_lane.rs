//! The publish lane: channel publishes handed to the event loop in batches,
//! without a command and a reply each.
//!
//! With 1,024 publishes in flight between two hosts, the command, the
//! oneshot reply and waking the caller per publish were about a quarter of
//! the CPU (`cargo bench --bench messaging -- publish/`, under `perf`). A
//! publish that needs no answer from the network, because no queue group
//! matches its channel, is accepted once it is in the lane and the caller
//! goes on; the loop takes the whole lane at each turn.
//!
//! Room: the lane holds at most [`LANE_ROOM`] publishes, counting those the
//! loop holds until gossipsub takes them (the mesh warm-up, full gossipsub
//! queues). Past that, callers wait: backpressure instead of loss.
//!
//! Order: a publisher's publishes on one channel leave in order. Publishes
//! that match a queue group go to the loop as commands, to be answered; the
//! loop takes the lane before each command, so a lane publish made before
//! one of them leaves first. A lane publish made after one could overtake it
//! only if the set of queue groups changed in between.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex, RwLock,
};

use tokio::sync::{Notify, Semaphore, TryAcquireError};

use crate::{channel_name::matches, error::PublishError, message::Payload};

/// Publishes the lane and the loop hold before callers wait.
pub(crate) const LANE_ROOM: usize = 8192;

/// Publishes on their way from `Host::publish` to the event loop.
#[derive(Debug)]
pub(crate) struct PublishLane {
    /// Each publish's channel, shared with the publish queued before it
    /// when they name the same channel (one allocation per run, not per
    /// publish), and its payload.
    queue: Mutex<Vec<(Arc<str>, Payload)>>,
    /// An emptied vector for the queue to go on with once taken.
    spare: Mutex<Vec<(Arc<str>, Payload)>>,
    /// Woken when the lane was empty and a publish came.
    pub(crate) ready: Notify,
    room: Semaphore,
    /// The patterns of every queue group the loop knows of: publishes on
    /// channels they match go to the loop as commands.
    queue_patterns: RwLock<Vec<String>>,
    /// Whether `queue_patterns` holds any.
    any_patterns: AtomicBool,
}

impl Default for PublishLane {
    fn default() -> Self {
        PublishLane {
            queue: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
            ready: Notify::new(),
            room: Semaphore::new(LANE_ROOM),
            queue_patterns: RwLock::new(Vec::new()),
            any_patterns: AtomicBool::new(false),
        }
    }
}

impl PublishLane {
    /// Whether a publish on `channel` may take the lane (no queue group the
    /// loop knows of matches it).
    pub(crate) fn takes(&self, channel: &str) -> bool {
        // Without queue groups, no lock is taken per publish.
        !self.any_patterns.load(Ordering::Relaxed)
            || !self
                .queue_patterns
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|p| matches(p, channel))
    }

    /// Queues a publish once there is room; fails with [`PublishError::Closed`]
    /// once the host is closed.
    pub(crate) async fn push(&self, channel: &str, payload: Payload) -> Result<(), PublishError> {
        // Room is there nearly always: no future to build and poll then.
        let permit = match self.room.try_acquire() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(PublishError::Closed),
            Err(TryAcquireError::NoPermits) => self
                .room
                .acquire()
                .await
                .map_err(|_| PublishError::Closed)?,
        };
        // The loop gives the room back when gossipsub has the publish.
        permit.forget();
        let was_empty = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let channel = match q.last() {
                Some((last, _)) if **last == *channel => last.clone(),
                _ => Arc::from(channel),
            };
            q.push((channel, payload));
            q.len() == 1
        };
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Takes every queued publish, oldest first. The lane goes on with the
    /// vector last given back ([`PublishLane::recycle`]), so neither side
    /// grows a vector afresh, doubling, at each turn of the loop.
    pub(crate) fn take(&self) -> Vec<(Arc<str>, Payload)> {
        let spare = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|p| p.into_inner()));
        std::mem::replace(
            &mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()),
            spare,
        )
    }

    /// Gives back a vector [`PublishLane::take`] returned, once emptied.
    pub(crate) fn recycle(&self, mut taken: Vec<(Arc<str>, Payload)>) {
        taken.clear();
        if taken.capacity() <= LANE_ROOM {
            *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = taken;
        }
    }

    /// Gives back the room of `n` publishes that left the host.
    pub(crate) fn release(&self, n: usize) {
        if n > 0 {
            self.room.add_permits(n);
        }
    }

    /// Fails every waiting and later push with [`PublishError::Closed`].
    pub(crate) fn close(&self) {
        self.room.close();
    }

    /// Replaces the queue group patterns the lane checks.
    pub(crate) fn set_queue_patterns(&self, patterns: Vec<String>) {
        let mut current = self
            .queue_patterns
            .write()
            .unwrap_or_else(|p| p.into_inner());
        // Set under the lock: a publish that reads `false` ran before the
        // patterns existed, as it would have with the lock.
        self.any_patterns
            .store(!patterns.is_empty(), Ordering::Relaxed);
        *current = patterns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lane_waits_for_room_and_fails_once_closed() {
        let lane = PublishLane::default();
        let p = Payload::postcard(&1u8).unwrap();
        for _ in 0..LANE_ROOM {
            lane.push("a", p.clone()).await.unwrap();
        }
        // Full: the next push waits until room is given back.
        let waiting = lane.push("a", p.clone());
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        let taken = lane.take();
        assert_eq!(taken.len(), LANE_ROOM);
        // One run: every publish shares the first one's channel.
        assert!(taken.iter().all(|(c, _)| Arc::ptr_eq(c, &taken[0].0)));
        let room = taken.capacity();
        lane.recycle(taken);
        lane.release(1);
        waiting.await.unwrap();
        let taken = lane.take();
        assert_eq!(taken.len(), 1);
        lane.recycle(taken);
        lane.release(1);
        // The lane went on with the vector given back first.
        lane.push("a", p.clone()).await.unwrap();
        let taken = lane.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken.capacity(), room);
        lane.close();
        assert!(matches!(lane.push("a", p).await, Err(PublishError::Closed)));
    }

    #[tokio::test]
    async fn a_run_of_publishes_on_one_channel_shares_its_name() {
        let lane = PublishLane::default();
        let p = Payload::postcard(&1u8).unwrap();
        for c in ["a", "a", "b", "a"] {
            lane.push(c, p.clone()).await.unwrap();
        }
        let taken = lane.take();
        let names: Vec<&str> = taken.iter().map(|(c, _)| &**c).collect();
        assert_eq!(names, ["a", "a", "b", "a"]);
        assert!(Arc::ptr_eq(&taken[0].0, &taken[1].0));
        assert!(
            !Arc::ptr_eq(&taken[1].0, &taken[3].0),
            "a new run, a new name"
        );
    }

    #[test]
    fn channels_matching_a_queue_group_skip_the_lane() {
        let lane = PublishLane::default();
        assert!(lane.takes("jobs.1"));
        lane.set_queue_patterns(vec!["jobs.*".into()]);
        assert!(!lane.takes("jobs.1"));
        assert!(lane.takes("news"));
    }
}
