//! Registration's I/O: feeds [`Registration`] the local changes, the
//! membership and the outcomes of directory requests, and carries out what
//! it returns (apply here, or send a request to a holder).

use std::time::Instant;

use libp2p::{request_response::OutboundFailure, PeerId};

use super::{EventLoop, Pending};
use crate::{
    core::registration::DirSend,
    directory::DirOp,
    protocol::{Request, Response},
    shared::bump,
};

impl EventLoop {
    /// Sends the local creates and removes to their holders, unless they
    /// are still gathering after the last batch (the tick sends them).
    pub(super) fn flush_directory(&mut self) {
        let now = Instant::now();
        if self.registration.gathering(now) {
            self.wake_soon = true;
            return;
        }
        let changes = self.shared.take_changes();
        let mut out = Vec::new();
        self.registration
            .publish(now, changes, self.members.sorted_keys(), &mut out);
        self.carry_out(out);
    }

    /// Gives `holder` these operations (see [`Registration::send`]).
    ///
    /// [`Registration::send`]: crate::core::registration::Registration::send
    pub(super) fn send_dir_ops(&mut self, holder: PeerId, ops: Vec<DirOp>) {
        let mut out = Vec::new();
        self.registration
            .send(Instant::now(), holder, ops, &mut out);
        self.carry_out(out);
    }

    fn carry_out(&mut self, out: Vec<DirSend>) {
        for send in out {
            match send {
                DirSend::Here(ops) => {
                    let local = self.local();
                    let news = self.registration_news(&ops);
                    let applied = self.store.apply(local, self.members.epoch(), ops);
                    if !applied.conflicts.is_empty() {
                        self.on_conflicts(applied.conflicts);
                    }
                    self.recheck(news);
                }
                DirSend::To { holder, ops } => {
                    bump(&self.shared.counters.directory_batches);
                    let req = Request::Directory {
                        epoch: self.members.epoch(),
                        ops: ops.clone(),
                    };
                    let id = self.request(holder, req);
                    self.requests
                        .insert(id, Pending::Directory { host: holder, ops });
                }
            }
        }
    }

    pub(super) fn on_directory_result(
        &mut self,
        holder: PeerId,
        ops: Vec<DirOp>,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        if let Ok(Response::DirectoryApplied { conflicts, full }) = &result {
            if *full > 0 {
                tracing::warn!(%holder, refused = full, "a holder's directory is full");
                self.shared
                    .counters
                    .registrations_refused
                    .fetch_add(u64::from(*full), std::sync::atomic::Ordering::Relaxed);
            }
            let conflicts: Vec<(crate::directory::Id, PeerId)> = conflicts
                .iter()
                .filter_map(|(id, h)| {
                    Some((
                        crate::directory::Id::from(id.as_str()),
                        PeerId::from_bytes(h).ok()?,
                    ))
                })
                .collect();
            if !conflicts.is_empty() {
                self.on_conflicts(conflicts);
            }
        }
        let ok = matches!(
            result,
            Ok(Response::DirectoryOk | Response::DirectoryApplied { .. })
        );
        if ok {
            let news = self.registration_news(&ops);
            self.recheck(news);
        } else {
            tracing::debug!(%holder, result = ?result.err(), "directory batch failed");
        }
        let still_member = self.members.membership().contains(&holder);
        let mut out = Vec::new();
        self.registration
            .on_result(Instant::now(), holder, ops, ok, still_member, &mut out);
        self.carry_out(out);
    }

    /// Resends directory batches whose rest is over.
    pub(super) fn retry_directory(&mut self, now: Instant) {
        let mut out = Vec::new();
        let membership = &self.members.membership();
        self.registration
            .retry(now, |h| membership.contains(h), &mut out);
        self.carry_out(out);
    }

    /// After a membership change: registers the local peers with their new
    /// holders, and trims what this host no longer holds once it settled.
    pub(super) fn rebalance(&mut self, now: Instant) {
        let settle = self.shared.with_config(|c| c.heartbeat_interval) * 2;
        let mut out = Vec::new();
        let registry = &self.shared.registry;
        self.registration.rebalance(
            now,
            self.members.membership().version(),
            self.members.sorted_keys(),
            settle,
            |f| registry.for_each(|id, key| f(id, key)),
            &mut out,
        );
        self.carry_out(out);
        let dropped = self
            .registration
            .trim(now, self.members.sorted_keys(), &mut self.store);
        if dropped > 0 {
            tracing::debug!(dropped, "trimmed directory after a membership change");
        }
    }

    /// A holder dropped this host's entries at a false lapse: register with
    /// it again every local peer it is among the closest hosts for.
    pub(super) fn resync_holder(&mut self, holder: PeerId) {
        if !self.members.membership().contains(&holder) {
            return;
        }
        let mut out = Vec::new();
        let registry = &self.shared.registry;
        let entries = self.registration.resync(
            Instant::now(),
            holder,
            self.members.sorted_keys(),
            |f| registry.for_each(|id, key| f(id, key)),
            &mut out,
        );
        tracing::info!(%holder, entries, "registering again with a holder that had dropped us");
        self.carry_out(out);
    }
}
