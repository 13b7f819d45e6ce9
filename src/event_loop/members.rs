//! Membership in the event loop: joins (dial, identify, the snapshot swap),
//! graceful leave, redialling dropped joined hosts, and carrying out what
//! the membership protocol ([`crate::core::members`]) decides: its
//! requests, record gossip, and what a host that joined, left or lapsed
//! changes in the other concerns.

use std::time::{Duration, Instant};

use libp2p::{
    gossipsub, identify,
    request_response::OutboundFailure,
    swarm::{dial_opts::DialOpts, ConnectionId},
    Multiaddr, PeerId,
};
use tokio::sync::oneshot;

use super::{EventLoop, Pending};
use crate::{
    command::{HostInfo, Readiness},
    core::{
        members::{Asked, Content, Effect, Links, Settings, Verified, MAX_JOIN_RECORDS},
        membership::verify,
        redial::Timing,
    },
    error::JoinError,
    protocol::{identify_version, Request, Response, SignedRecord},
};

/// How long a leaving host waits for the others to acknowledge.
const LEAVE_WAIT: Duration = Duration::from_secs(2);
/// Joins of more records than this have their signatures checked on a
/// blocking thread, not on the loop (an ed25519 check is ~50 µs: 20,000
/// records held the loop for about a second).
pub(super) const INLINE_RECORDS: usize = 64;
/// Big joins being checked at once, at most; a host sends one at a time.
const CHECKING_JOINS: usize = 4;

/// A big join whose records were checked off the loop.
#[derive(Debug)]
pub(crate) struct CheckedJoin {
    ticket: u64,
    verified: Vec<Verified>,
}

/// Big joins being checked off the loop, with whom to answer.
#[derive(Debug)]
pub(crate) struct JoinChecks {
    pending: std::collections::HashMap<u64, (PeerId, crate::rpc_stream::Reply)>,
    next_ticket: u64,
    done_tx: tokio::sync::mpsc::Sender<CheckedJoin>,
    pub(super) done: tokio::sync::mpsc::Receiver<CheckedJoin>,
}

impl Default for JoinChecks {
    fn default() -> Self {
        let (done_tx, done) = tokio::sync::mpsc::channel(CHECKING_JOINS);
        JoinChecks {
            pending: Default::default(),
            next_ticket: 0,
            done_tx,
            done,
        }
    }
}

/// The gossip topic every host joins for membership records.
pub(super) fn topic() -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new("members")
}

/// A join waiting for its connection, the remote's identify, and the snapshot.
#[derive(Debug)]
pub(crate) struct JoinState {
    addr: Multiaddr,
    shown: String,
    peer: Option<PeerId>,
    deadline: Instant,
    reply: Option<oneshot::Sender<Result<PeerId, JoinError>>>,
}

/// A close in progress.
#[derive(Debug)]
pub(crate) struct Closing {
    pub replies: Vec<oneshot::Sender<()>>,
    pub outstanding: usize,
    pub deadline: Instant,
}

impl JoinState {
    /// Whether this join goes through `host`.
    pub(super) fn is_with(&self, host: &PeerId) -> bool {
        self.peer.as_ref() == Some(host)
    }
}

impl Closing {
    pub(super) fn done(&self) -> bool {
        self.outstanding == 0
    }
}

impl EventLoop {
    pub(super) fn join(
        &mut self,
        addr: Multiaddr,
        shown: String,
        reply: oneshot::Sender<Result<PeerId, JoinError>>,
    ) {
        let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
        let conn = opts.connection_id();
        if let Err(e) = self.dial(opts) {
            let _ = reply.send(Err(JoinError::Join {
                addr: shown,
                source: crate::Cause::new(e),
            }));
            return;
        }
        let timeout = self.shared.with_config(|c| c.join_timeout);
        self.joins.insert(
            conn,
            JoinState {
                addr,
                shown,
                peer: None,
                deadline: Instant::now() + timeout,
                reply: Some(reply),
            },
        );
    }

    pub(super) fn on_connected(&mut self, peer: PeerId, conn: ConnectionId) {
        if let Some(j) = self.joins.get_mut(&conn) {
            j.peer = Some(peer);
        }
        // A lapsed host stays on the redial list until it is a member again
        // (its join may fail); a joined one waits for its next drop.
        if self.redials.up(&peer) {
            tracing::info!(%peer, "reconnected to joined host");
        }
        self.publishes.dial_ended(&peer);
    }

    /// A connection closed: a join waiting on it fails.
    pub(super) fn on_connection_closed(&mut self, conn: ConnectionId) {
        if let Some(mut j) = self.joins.remove(&conn) {
            if let Some(reply) = j.reply.take() {
                let _ = reply.send(Err(JoinError::Join {
                    addr: j.shown,
                    source: crate::Cause::msg("the remote host closed the connection"),
                }));
            }
        }
    }

    pub(super) fn on_disconnected(&mut self, peer: PeerId) {
        self.publishes.dial_ended(&peer);
        self.budget.closed(&peer);
        // Its stream broke with the connection; the task reports and ends.
        self.request_clients.remove(&peer);
        let timing = self.redial_timing();
        if self.redials.down(&peer, Instant::now(), &timing) {
            tracing::info!(%peer, "lost connection to joined host; redialling");
        }
    }

    pub(super) fn on_dial_failed(
        &mut self,
        conn: ConnectionId,
        peer: Option<PeerId>,
        error: libp2p::swarm::DialError,
    ) {
        if let Some(peer) = peer {
            self.publishes.dial_ended(&peer);
        }
        tracing::debug!(?peer, %error, "dial failed");
        if let Some(mut j) = self.joins.remove(&conn) {
            if let Some(reply) = j.reply.take() {
                let _ = reply.send(Err(JoinError::Join {
                    addr: j.shown,
                    source: crate::Cause::new(error),
                }));
            }
        }
    }

    pub(super) fn on_identify(&mut self, peer: PeerId, conn: ConnectionId, info: identify::Info) {
        let ours = identify_version(&self.shared.with_config(|c| c.network_id.clone()));
        if info.protocol_version != ours {
            tracing::warn!(%peer, theirs = %info.protocol_version, "refusing a host of another network");
            let Some(mut j) = self.joins.remove(&conn) else {
                return;
            };
            if let Some(reply) = j.reply.take() {
                let strip = |v: &str| {
                    v.trim_start_matches("/distribus/")
                        .rsplit_once('/')
                        .map(|(n, _)| n.to_string())
                        .unwrap_or_else(|| v.to_string())
                };
                let _ = reply.send(Err(JoinError::NetworkMismatch {
                    addr: j.shown,
                    ours: strip(&ours),
                    theirs: strip(&info.protocol_version),
                }));
            }
            // Only the joining side disconnects: had we closed an inbound
            // connection at once, the joiner might not have read our identify
            // yet and could not say why its join failed. A connection that
            // speaks none of our protocols closes when idle anyway.
            if !self.swarm.close_connection(conn) {
                tracing::trace!(%peer, "connection already closed");
            }
            return;
        }
        for a in &info.listen_addrs {
            self.swarm.add_peer_address(peer, a.clone());
            self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
        }
        let joining = self.joins.get(&conn).is_some_and(|j| j.peer == Some(peer));
        let rejoined = self.redials.contains(&peer);
        if joining || rejoined {
            self.send_join(peer);
        }
    }

    /// Sends `peer` every record we hold, ours included; its answer carries
    /// the records it holds, so both sides end with one membership.
    fn send_join(&mut self, peer: PeerId) {
        let records = self.members.join_records();
        let id = self.request(peer, Request::Join(records));
        self.requests.insert(id, Pending::Join { host: peer });
    }

    pub(super) fn on_join_result(
        &mut self,
        host: PeerId,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        let outcome = match result {
            Ok(Response::Members(records)) => {
                let mut out = Vec::new();
                self.members
                    .take_join(host, &records, Instant::now(), &mut out);
                self.carry_out_members(out);
                Ok(host)
            }
            Ok(Response::Refused(why)) => Err(why),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        };
        let conns: Vec<ConnectionId> = self
            .joins
            .iter()
            .filter(|(_, j)| j.peer == Some(host))
            .map(|(c, _)| *c)
            .collect();
        for c in conns {
            let Some(mut j) = self.joins.remove(&c) else {
                continue;
            };
            if outcome.is_ok() {
                self.redials.joined(host, j.addr.clone());
            }
            if let Some(reply) = j.reply.take() {
                let _ = reply.send(outcome.clone().map_err(|reason| JoinError::Join {
                    addr: j.shown.clone(),
                    source: crate::Cause::msg(reason),
                }));
            }
        }
        // Now there is someone to gossip the record to. It is the one
        // sent with the join, not signed anew: a new version would be
        // checked again by every host (a third of a 512-host join's
        // signature checks).
        if outcome.is_ok() {
            if let Some(r) = self.members.own_signed() {
                self.gossip_record(r);
            }
        }
    }

    pub(super) fn on_join_request(&mut self, peer: PeerId, records: Vec<SignedRecord>) -> Response {
        if records.len() > MAX_JOIN_RECORDS {
            crate::shared::bump(&self.shared.counters.refused_non_members);
            return Response::Refused(format!(
                "a join of {} records (at most {MAX_JOIN_RECORDS})",
                records.len()
            ));
        }
        let mut out = Vec::new();
        self.members
            .take_join(peer, &records, Instant::now(), &mut out);
        self.carry_out_members(out);
        self.joined_through_us(peer)
    }

    /// A join of more than [`INLINE_RECORDS`]: its signatures are checked
    /// on a blocking thread and the join is answered when they are (see
    /// [`Self::on_join_checked`]). One at a time per host, a few at once.
    pub(super) fn check_join_off_loop(
        &mut self,
        peer: PeerId,
        mut records: Vec<SignedRecord>,
        responder: crate::rpc_stream::Reply,
    ) {
        // Records this host holds already are not checked again (as in
        // `apply_signed`): a joiner's snapshot is mostly those.
        if records.len() <= MAX_JOIN_RECORDS {
            records.retain(|r| !self.members.knows_record(r));
            if records.len() <= INLINE_RECORDS {
                let response = self.on_join_request(peer, records);
                self.publish_members();
                self.answer(peer, responder, response);
                return;
            }
        }
        let busy = self.join_checks.pending.len() >= CHECKING_JOINS
            || self.join_checks.pending.values().any(|(p, _)| *p == peer);
        if busy || records.len() > MAX_JOIN_RECORDS {
            crate::shared::bump(&self.shared.counters.refused_non_members);
            let why = if busy {
                "busy checking other joins; try again".to_string()
            } else {
                format!(
                    "a join of {} records (at most {MAX_JOIN_RECORDS})",
                    records.len()
                )
            };
            self.answer(peer, responder, Response::Refused(why));
            return;
        }
        let ticket = self.join_checks.next_ticket;
        self.join_checks.next_ticket += 1;
        self.join_checks.pending.insert(ticket, (peer, responder));
        let done = self.join_checks.done_tx.clone();
        tokio::task::spawn_blocking(move || {
            let verified = records.iter().filter_map(verify).collect();
            // The loop may have ended meanwhile: then nobody waits.
            let _ = done.blocking_send(CheckedJoin { ticket, verified });
        });
    }

    /// A big join's checked records: applied like a small join's, then
    /// the join is answered.
    pub(super) fn on_join_checked(&mut self, checked: CheckedJoin) {
        self.sync_config();
        let Some((peer, responder)) = self.join_checks.pending.remove(&checked.ticket) else {
            return;
        };
        let mut out = Vec::new();
        self.members
            .take_checked_join(peer, checked.verified, Instant::now(), &mut out);
        self.carry_out_members(out);
        let response = self.joined_through_us(peer);
        self.publish_members();
        self.answer(peer, responder, response);
    }

    /// The answer to a join: this host's membership.
    fn joined_through_us(&mut self, peer: PeerId) -> Response {
        tracing::debug!(%peer, "host joined through us");
        self.joiners.insert(peer);
        Response::Members(self.members.join_records())
    }

    /// `host` refused a request of ours as a non-member: we join it with
    /// our own record, at most once per lease.
    pub(super) fn introduce(&mut self, host: PeerId) {
        let mut out = Vec::new();
        self.members.introduce(host, Instant::now(), &mut out);
        self.carry_out_members(out);
    }

    /// The answer to [`Self::introduce`]: the host's membership.
    pub(super) fn on_introduced(
        &mut self,
        host: PeerId,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        if let Ok(Response::Members(records)) = result {
            let mut out = Vec::new();
            self.members
                .take_join(host, &records, Instant::now(), &mut out);
            self.carry_out_members(out);
        }
    }

    pub(super) fn on_leave_request(&mut self, peer: PeerId, record: SignedRecord) -> Response {
        let mut out = Vec::new();
        let response = self
            .members
            .on_leave(peer, &record, Instant::now(), &mut out);
        self.carry_out_members(out);
        response
    }

    pub(super) fn on_member_gossip(&mut self, data: &[u8]) {
        let mut out = Vec::new();
        self.members.on_gossip(data, Instant::now(), &mut out);
        self.carry_out_members(out);
    }

    /// A digest from `peer`, answered with ours.
    pub(super) fn on_beats(&mut self, peer: PeerId, digest: crate::protocol::Digest) -> Response {
        self.members.on_beats(peer, digest, Instant::now())
    }

    /// Records a digest exchange found us lacking.
    pub(super) fn on_records(&mut self, records: Vec<(SignedRecord, crate::beat_chain::Proved)>) {
        let mut out = Vec::new();
        self.members.take_records(records, Instant::now(), &mut out);
        self.carry_out_members(out);
    }

    /// The answer to our digest.
    pub(super) fn on_beats_result(
        &mut self,
        host: PeerId,
        compact: bool,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        if let Ok(answer) = result {
            let mut out = Vec::new();
            self.members
                .on_beats_answer(host, compact, answer, Instant::now(), &mut out);
            self.carry_out_members(out);
        }
    }

    /// The membership's timer: if a heartbeat was due, digests went out,
    /// lapsed leases were dropped and silent hosts probed. Returns whether
    /// it was due.
    pub(super) fn beat(&mut self, now: Instant, granularity: Duration) -> bool {
        if now < self.members.next_beat() {
            return false;
        }
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let links = Links {
            connected: &connected,
            relaying: self.overlay().is_some(),
        };
        let mut out = Vec::new();
        let due = self
            .members
            .tick(now, granularity, &links, &mut rand::thread_rng(), &mut out);
        self.carry_out_members(out);
        let silence = self.members.membership().longest_silence(now).as_millis();
        self.shared.counters.longest_silence_ms.store(
            u64::try_from(silence).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        due
    }

    /// Carries out what the membership protocol decided.
    pub(super) fn carry_out_members(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Ask {
                    host,
                    request,
                    asked,
                } => {
                    let id = self.request(host, request);
                    let pending = match asked {
                        Asked::Beats { compact } => Pending::Beats { host, compact },
                        Asked::Records => Pending::Records,
                        Asked::Resync => Pending::Resync,
                        Asked::Introduce => Pending::Introduce { host },
                    };
                    self.requests.insert(id, pending);
                }
                Effect::Spread(r) => self.gossip_record(r),
                Effect::Addresses { host, addrs } => {
                    // Kademlia's table gets every member: fed only the hosts
                    // we are linked to, it stays under K entries and
                    // bootstraps (dialling hosts) again after every new link.
                    for a in addrs {
                        self.swarm.add_peer_address(host, a.clone());
                        self.swarm.behaviour_mut().kad.add_address(&host, a);
                    }
                }
                Effect::Joined(host) => self.redials.back(&host),
                Effect::Restarted { host, epoch } => {
                    self.redials.back(&host);
                    self.store.drop_host(&host, epoch);
                }
                Effect::Left(host) => {
                    self.host_gone(host);
                    self.redials.remove(&host);
                    self.forget_locations(host);
                }
                Effect::Lapsed(gone) => {
                    let (host, now) = (gone.host, Instant::now());
                    let probed = self
                        .members
                        .probed_at(&host)
                        .map(|t| now.saturating_duration_since(t));
                    tracing::info!(%host, ?probed, "host lease lapsed");
                    crate::shared::bump(&self.shared.counters.leases_lapsed);
                    self.host_gone(host);
                    // Redialled (core::redial): a joined host keeps its
                    // cached locations until it is given up; any other
                    // loses them now.
                    let timing = self.redial_timing();
                    if !self.redials.lapsed(host, gone.addr, now, &timing) {
                        self.forget_locations(host);
                    }
                }
                Effect::Disallowed(host) => {
                    self.redials.remove(&host);
                    self.host_gone(host);
                    self.forget_locations(host);
                    let _ = self.swarm.disconnect_peer_id(host);
                }
                Effect::ChannelsChanged => {
                    // Publishes wait until gossipsub reaches the new
                    // subscriber set.
                    self.publishes.unready();
                }
                Effect::Refused { host, why } => {
                    crate::shared::bump(&self.shared.counters.records_refused);
                    tracing::debug!(%host, why, "refused a host record");
                }
                Effect::Probed(host) => {
                    tracing::debug!(%host, "probing a silent host");
                    crate::shared::bump(&self.shared.counters.liveness_probes);
                }
            }
        }
    }

    /// The membership settings from the configuration.
    pub(super) fn member_settings(shared: &crate::shared::Shared) -> Settings {
        shared.with_config(|c| Settings {
            lease: c.lease,
            heartbeat: c.heartbeat_interval,
            max_hosts: c.max_hosts,
            allowed: c.allowed_hosts.clone(),
        })
    }

    /// The configuration changed: drops the members a new allow-list no
    /// longer admits, and their connections.
    pub(super) fn reconfigure_members(&mut self) {
        self.members.configure(Self::member_settings(&self.shared));
        let mut out = Vec::new();
        self.members.enforce_allow_list(&mut out);
        self.carry_out_members(out);
    }

    /// Drops what this host holds for a host that left or lapsed.
    fn host_gone(&mut self, host: PeerId) {
        self.joiners.remove(&host);
        self.store.drop_host(&host, u64::MAX);
        self.registration.forget(&host);
    }

    /// What this host's record says of it now.
    pub(super) fn record_content(&self) -> Content {
        let mut channels: Vec<String> = self.subs.patterns().cloned().collect();
        channels.sort();
        Content {
            addrs: if self.advertise.is_empty() {
                self.swarm
                    .listeners()
                    .chain(self.swarm.external_addresses())
                    .cloned()
                    .collect()
            } else {
                // Listen addresses may be unreachable from other hosts
                // (0.0.0.0, a namespace behind a forwarded port).
                self.advertise.clone()
            },
            channels,
            queues: self.queues.interests(),
        }
    }

    /// Publishes this host's record after a change (addresses, channels,
    /// queue groups), and keeps it as the current one.
    pub(super) fn announce(&mut self) {
        let mut out = Vec::new();
        let content = self.record_content();
        self.members.announce(content, &mut out);
        self.carry_out_members(out);
    }

    fn gossip_record(&mut self, r: SignedRecord) {
        // A relaying network spreads records by digest anti-entropy only
        // (see `relay`): a gossipsub mesh of every host costs too much.
        if self.overlay().is_some() {
            return;
        }
        let Ok(frame) = postcard::to_allocvec(&r) else {
            return;
        };
        match self.swarm.behaviour_mut().gossipsub.publish(topic(), frame) {
            Ok(_)
            | Err(gossipsub::PublishError::Duplicate)
            | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!(error = %e, "membership gossip not sent"),
        }
    }

    /// The redial timing from the configuration.
    fn redial_timing(&self) -> Timing {
        self.shared.with_config(|c| Timing {
            delay: c.reconnect_delay,
            decay: c.reconnect_decay,
            timeout: c.reconnect_timeout,
            lease: c.lease,
        })
    }

    /// Redials dropped joined hosts and lapsed members when their wait is
    /// over; gives up on those down past the timeout.
    pub(super) fn redial(&mut self, now: Instant) {
        let due = self.redials.due(now, &self.redial_timing());
        if due.waiting {
            // Redials keep to their waits, however short.
            self.wake_soon = true;
        }
        for (peer, addr) in due.dial {
            if self.swarm.is_connected(&peer) {
                // A connection that outlived a partition (or a lapse on one
                // side only): no new connection, so no identify to start a
                // join from; the join goes on the connection there is.
                self.send_join(peer);
                continue;
            }
            tracing::debug!(%peer, %addr, "redialling joined host");
            let opts = DialOpts::peer_id(peer).addresses(vec![addr]).build();
            if let Err(e) = self.dial(opts) {
                tracing::debug!(%peer, error = %e, "redial failed");
            }
        }
        for (peer, joined) in due.gave_up {
            if joined {
                tracing::info!(%peer, "joined host did not come back; forgetting its peers");
            }
            self.forget_locations(peer);
        }
    }

    pub(super) fn expire_joins(&mut self, now: Instant) {
        let late: Vec<ConnectionId> = self
            .joins
            .iter()
            .filter(|(_, j)| j.deadline <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in late {
            if let Some(mut j) = self.joins.remove(&c) {
                if let Some(reply) = j.reply.take() {
                    let _ = reply.send(Err(JoinError::Join {
                        addr: j.shown,
                        source: crate::Cause::msg("no answer in time"),
                    }));
                }
            }
        }
    }

    pub(super) fn members_info(&self) -> Vec<HostInfo> {
        let overlay = self.overlay();
        let mut out: Vec<HostInfo> = self
            .members
            .membership()
            .iter()
            .map(|(h, m)| HostInfo {
                host: *h,
                addrs: m.addrs.clone(),
                channels: m.channels.clone(),
                queues: m.queues.clone(),
                connected: self.swarm.is_connected(h),
                neighbour: overlay.is_some_and(|o| o.is_neighbour(h)),
            })
            .collect();
        out.sort_by_key(|i| i.host);
        out
    }

    /// Whether this host has joined others and agrees with them on the
    /// membership ([`crate::Host::readiness`]).
    pub(super) fn readiness(&self) -> Readiness {
        Readiness {
            members: self.members.membership().len().saturating_sub(1),
            converged: self.members.converged(Instant::now()),
        }
    }

    /// Leaves gracefully: tells every connected host, then stops.
    pub(super) fn start_close(&mut self, reply: oneshot::Sender<()>) {
        let mut outstanding = 0;
        if let Some(record) = self.members.leaving_record() {
            self.gossip_record(record.clone());
            let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
            for p in peers {
                let id = self.request(p, Request::Leave(record.clone()));
                self.requests.insert(id, Pending::Leave);
                outstanding += 1;
            }
        }
        self.closing = Some(Closing {
            replies: vec![reply],
            outstanding,
            deadline: Instant::now() + LEAVE_WAIT,
        });
        self.fail_all_sends();
        self.fail_all_lookups();
        self.fail_all_publishes();
        self.shared.registry.clear();
        for (_, mut j) in self.joins.drain() {
            if let Some(r) = j.reply.take() {
                let _ = r.send(Err(JoinError::Closed));
            }
        }
    }

    /// Final step of the loop: answers close and drops what is left.
    pub(super) fn finish_close(&mut self) {
        self.shared.mark_closed();
        self.shared.registry.clear();
        self.subs.clear();
        if let Some(c) = self.closing.take() {
            for r in c.replies {
                let _ = r.send(());
            }
        }
    }
}
