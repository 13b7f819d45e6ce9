//! One host's membership and liveness protocol, without I/O.
//!
//! [`Members`] owns everything this host knows about the others and about
//! itself as a member: the membership table, its own signed record and hash
//! chain, the heartbeat schedule, the digest forms, the hosts that lapsed
//! here, and the hosts it introduced itself to. The event loop feeds it
//! what arrives (a digest, an answer, a record, a join) with `now`, and
//! carries out the [`Effect`]s it returns: ask a host, spread a record,
//! drop what a departed host held. So the whole exchange runs between
//! several instances in a test with a fake clock (see the tests below).
//!
//! **Heartbeat digests: push-pull anti-entropy.** Once per heartbeat
//! interval a host raises its own counter and swaps digests with
//! [`crate::core::liveness::FANOUT`] other hosts: for every host it knows,
//! the record version (epoch, seq) and the highest counter heard. Each side
//! renews the lease of every host whose counter rose, and sends the signed
//! records the other side was seen to lack (unknown, or an older version).
//! Counters spread epidemically, in O(log hosts) rounds, for O(hosts ×
//! fanout) requests per round in the whole network; a digest entry is 4
//! integers and the counter's 16-byte proof. (Gossiping every host's signed
//! record each beat instead costs O(hosts²) messages and signature checks.)
//!
//! **Compact digests.** Every digest carries the sender's *view*, a
//! fingerprint of every live host's key and record version
//! ([`Membership::view`]). To a host whose last digest showed the same view,
//! a host sends only the proved counters, in key order (under half the
//! bytes; members reached by position, no key look-ups); the answer carries
//! only the counters the asker was seen to lack, by position. A host whose
//! view has changed since answers a compact digest in full, and the sender
//! then follows up with its own full digest, so no counter is lost while
//! views differ (a join, a lapse).
//!
//! **Trust.** Records carry their host's signature and cannot be forged,
//! and every counter carries a proof from its host's hash chain
//! ([`crate::beat_chain`]): a member can neither raise another host's
//! counter (to evict it: its real counter would never rise again) nor keep
//! a dead host's counter rising. A lapsed host comes back in the same
//! incarnation only with a counter proved since, or by joining itself.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use libp2p::{identity::Keypair, Multiaddr, PeerId};
use rand::Rng;

use crate::{
    beat_chain::{Chain, Proved},
    core::{
        liveness::{Form, Liveness},
        membership::{is_known, verify, verify_unless, Change, HostRecord, Lapsed, Membership},
    },
    protocol::{Beat, Digest, DigestBody, Request, Response, SignedRecord},
};

pub(crate) use crate::core::membership::Verified;

/// Most digest entries read from one digest.
const MAX_DIGEST: usize = 1 << 20;
/// Most records sent in one answer or push; the rest follow next round.
const MAX_RECORDS: usize = 1024;
/// Hashes one digest may cost to check its counters' proofs: a fixed part
/// plus a part per entry. An honest entry costs one or two (its counter
/// rose by one or two since the last digest), but the first proof of a host
/// just learnt costs up to a chain's length (half of one on average): the
/// fixed part lets a host that joins a network of 512 catch up in a few
/// digests, at ~10 ms of hashing each. A lying member cannot make a host
/// hash more than this per digest.
const HASHES_PER_DIGEST: u64 = 65_536;
const HASHES_PER_ENTRY: u64 = 16;
/// Most lapsed hosts remembered for a resync, and most hosts remembered as
/// introduced to.
const MAX_LAPSED: usize = 65_536;
/// Most records taken from one join or membership answer.
pub(crate) const MAX_JOIN_RECORDS: usize = 65_536;

/// The hash budget for checking a digest of `entries` entries.
fn hash_budget(entries: usize) -> u64 {
    HASHES_PER_DIGEST + HASHES_PER_ENTRY * entries as u64
}

/// The settings membership reads: the host's configuration, copied in when
/// it changes ([`Members::configure`]).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// How long a host's counter may stay still before it lapses.
    pub lease: Duration,
    /// How often this host beats.
    pub heartbeat: Duration,
    /// Most hosts admitted.
    pub max_hosts: usize,
    /// The only hosts admitted, if set.
    pub allowed: Option<BTreeSet<PeerId>>,
}

/// What this host says of itself beyond its identity: set by the loop
/// whenever it changes ([`Members::announce`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Content {
    /// Where other hosts reach it.
    pub addrs: Vec<Multiaddr>,
    /// The channels it subscribes to, sorted.
    pub channels: Vec<String>,
    /// Its queue groups.
    pub queues: Vec<crate::queue_group::QueueGroup>,
}

/// Where a membership record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Straight from a host (join snapshot, leave), named: spread it by
    /// gossip.
    Direct(PeerId),
    /// From membership gossip: gossipsub spreads it on.
    Gossip,
    /// From a heartbeat digest exchange, with the newest proved counter
    /// the sender knows for it.
    Synced(Proved),
}

/// What a request of ours was, for reading its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    /// Our digest; `compact` if it was sent compact.
    Beats { compact: bool },
    /// Records the host was seen to lack.
    Records,
    /// A request to register its entries again (it lapsed here and is back).
    Resync,
    /// Our record, to a host that refused us as a non-member.
    Introduce,
}

/// What the loop is to do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Send `request` to `host` (dialling it if need be).
    Ask {
        host: PeerId,
        request: Request,
        asked: Asked,
    },
    /// Spread a record this host learnt directly (or its own).
    Spread(SignedRecord),
    /// A host's record is new or changed: where it listens now.
    Addresses { host: PeerId, addrs: Vec<Multiaddr> },
    /// A host became a member.
    Joined(PeerId),
    /// A member restarted: what was held for its incarnations before
    /// `epoch` is stale.
    Restarted { host: PeerId, epoch: u64 },
    /// A member left.
    Left(PeerId),
    /// A member's lease lapsed.
    Lapsed(Lapsed),
    /// A member the allow-list no longer admits was dropped.
    Disallowed(PeerId),
    /// Some member's channels changed.
    ChannelsChanged,
    /// A record was refused under this host's limits.
    Refused { host: PeerId, why: &'static str },
    /// A silent member was probed.
    Probed(PeerId),
}

/// This host's links, as the digest targets need them.
pub(crate) struct Links<'a> {
    /// The connected hosts (a few dozen: a scan is cheap).
    pub connected: &'a [PeerId],
    /// Whether the network relays (its links are the overlay's, which
    /// cross the whole network: no random member is mixed in).
    pub relaying: bool,
}

/// One host's membership and liveness (see the module docs).
#[derive(Debug)]
pub(crate) struct Members {
    key: Keypair,
    local: PeerId,
    /// This incarnation.
    epoch: u64,
    /// The sequence number of our newest record.
    seq: u64,
    own_key: u64,
    /// Our record as last announced.
    own_signed: Option<SignedRecord>,
    content: Content,
    /// The hash chain that proves our counter.
    chain: Chain,
    membership: Membership,
    liveness: Liveness,
    /// Hosts whose lease lapsed here (their entries were dropped), with the
    /// incarnation and last proved counter each was dropped with: if one
    /// turns out alive, it is asked to register its entries again.
    lapsed: HashMap<PeerId, (u64, Proved)>,
    /// Hosts that refused us as a non-member and were sent a join, and when.
    introduced: HashMap<PeerId, Instant>,
    settings: Settings,
    /// Record signatures checked (the costly part of membership).
    checks: u64,
}

/// Whether a record of `host`'s incarnation `epoch` from `source` would
/// revive a host that lapsed here without proof of life. A lapsed host
/// comes back in the same incarnation only with a counter proved since (or
/// by joining again itself): else a host still trusting a dead one (or
/// lying) would revive it here again and again.
fn unproved_revival(
    lapsed: &HashMap<PeerId, (u64, Proved)>,
    source: Source,
    host: &PeerId,
    epoch: u64,
    budget: &mut u64,
) -> bool {
    match (source, lapsed.get(host)) {
        (Source::Synced(p), Some((e, last))) => {
            epoch == *e && !crate::beat_chain::verify(last, &p, budget)
        }
        (Source::Direct(from), Some((e, _))) if from != *host => epoch == *e,
        (Source::Gossip, Some((e, _))) => epoch == *e,
        _ => false,
    }
}

impl Members {
    /// A host of incarnation `epoch` that knows nobody yet; its first beat
    /// is due at `now`.
    pub(crate) fn new(key: Keypair, epoch: u64, settings: Settings, now: Instant) -> Self {
        let local = key.public().to_peer_id();
        Members {
            key,
            local,
            epoch,
            seq: 0,
            own_key: crate::directory::host_key(&local),
            own_signed: None,
            content: Content::default(),
            chain: Chain::new(0),
            membership: Membership::new(local),
            liveness: Liveness::new(now),
            lapsed: HashMap::new(),
            introduced: HashMap::new(),
            settings,
            checks: 0,
        }
    }

    /// Takes changed settings.
    pub(crate) fn configure(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// This host.
    pub(crate) fn local(&self) -> PeerId {
        self.local
    }

    /// How many record signatures this host has checked.
    pub(crate) fn checks(&self) -> u64 {
        self.checks
    }

    /// The membership table.
    pub(crate) fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Every live host by key, sorted by key (this host included).
    pub(crate) fn sorted_keys(&mut self) -> &[(u64, PeerId)] {
        self.membership.sorted_keys()
    }

    /// This incarnation.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When the next heartbeat is due.
    pub(crate) fn next_beat(&self) -> Instant {
        self.liveness.next_beat()
    }

    /// Whether this host agrees with the others on the membership.
    pub(crate) fn converged(&self, now: Instant) -> bool {
        self.liveness.converged(now, self.settings.heartbeat)
    }

    /// When `host` was last probed, if lately.
    pub(crate) fn probed_at(&self, host: &PeerId) -> Option<Instant> {
        self.liveness.probed_at(host)
    }

    // ---- own record ----

    /// Our current record: the last one announced, or a new one.
    pub(crate) fn own_signed(&mut self) -> Option<SignedRecord> {
        if self.own_signed.is_none() {
            self.own_signed = self.own_record(false);
        }
        self.own_signed.clone()
    }

    /// Our record, signed, with a fresh sequence number.
    fn own_record(&mut self, leaving: bool) -> Option<SignedRecord> {
        self.seq += 1;
        let record = HostRecord {
            public_key: self.key.public().encode_protobuf(),
            epoch: self.epoch,
            seq: self.seq,
            addrs: self.content.addrs.iter().map(|a| a.to_vec()).collect(),
            channels: self.content.channels.clone(),
            queues: self.content.queues.clone(),
            leaving,
            anchor: self.chain.anchor(),
        };
        record.sign(&self.key)
    }

    /// What our first record will say, before anything is announced.
    pub(crate) fn describe(&mut self, content: Content) {
        self.content = content;
    }

    /// What we say of ourselves changed: a new record, kept as the current
    /// one and spread.
    pub(crate) fn announce(&mut self, content: Content, out: &mut Vec<Effect>) {
        self.content = content;
        self.renew_record(out);
    }

    fn renew_record(&mut self, out: &mut Vec<Effect>) {
        self.own_signed = self.own_record(false);
        out.extend(self.own_signed.clone().map(Effect::Spread));
    }

    /// Our leaving record (a host that closes sends it to its links).
    pub(crate) fn leaving_record(&mut self) -> Option<SignedRecord> {
        self.own_record(true)
    }

    /// Our counter with its proof.
    fn own_proved(&self) -> Proved {
        // The chain covers the counter: `tick` starts a new one first.
        self.chain
            .prove(self.liveness.beat())
            .unwrap_or_else(|| self.chain.anchor().proved())
    }

    /// Our view fingerprint, with our own record current.
    fn own_view(&mut self) -> u64 {
        // Make sure a current record exists, so its seq is the one counted.
        let _ = self.own_signed();
        self.membership.view(self.epoch, self.seq)
    }

    /// Every record we hold, ours last: what a join swaps.
    pub(crate) fn join_records(&mut self) -> Vec<SignedRecord> {
        let mut records = self.membership.records();
        records.extend(self.own_signed());
        records
    }

    // ---- heartbeats ----

    /// One turn of the loop's timer at `now`, which wakes at least every
    /// `granularity`. If a heartbeat is due: time this host was held up is
    /// excused, the counter rises (a new chain and record when it ran out),
    /// digests go to [`Liveness::targets`], lapsed leases are dropped and
    /// silent hosts probed. Returns whether a heartbeat was due.
    pub(crate) fn tick<R: Rng>(
        &mut self,
        now: Instant,
        granularity: Duration,
        links: &Links<'_>,
        rng: &mut R,
        out: &mut Vec<Effect>,
    ) -> bool {
        let Some(late) = self.liveness.due(now, self.settings.heartbeat, granularity) else {
            return false;
        };
        if !late.is_zero() {
            self.membership.excuse(late, now);
        }
        let beat = self.liveness.beat();
        if !self.chain.anchor().covers(beat) {
            // The chain ran out: a new one, whose tip proves this counter,
            // goes out in a new record.
            self.chain = Chain::new(beat);
            self.renew_record(out);
        }
        let targets = self.beat_targets(now, links, rng);
        self.send_digests(targets, now, out);
        self.expire(now, out);
        true
    }

    /// Whom this beat's digests go to.
    fn beat_targets<R: Rng>(&self, now: Instant, links: &Links<'_>, rng: &mut R) -> Vec<PeerId> {
        // From the links (a few dozen), not the membership (hundreds).
        let connected: Vec<PeerId> = links
            .connected
            .iter()
            .filter(|h| self.membership.contains(h) && **h != self.local)
            .copied()
            .collect();
        self.liveness.targets(
            &connected,
            self.membership.keys(),
            self.liveness.fanout(now, self.settings.heartbeat),
            !links.relaying,
            |h| links.connected.contains(h),
            rng,
        )
    }

    /// Our digest to each of `targets`: compact to a host last seen with
    /// our view, full to any other (each form built once).
    fn send_digests(&mut self, targets: Vec<PeerId>, now: Instant, out: &mut Vec<Effect>) {
        let view = self.own_view();
        let (mut full, mut compact) = (None, None);
        for host in targets {
            let same = self
                .liveness
                .form(&host, view, now, self.settings.heartbeat)
                == Form::Compact;
            let d = if same {
                compact
                    .get_or_insert_with(|| self.compact_digest(view))
                    .clone()
            } else {
                full.get_or_insert_with(|| self.full_digest(view)).clone()
            };
            out.push(Effect::Ask {
                host,
                request: Request::Beats(d),
                asked: Asked::Beats { compact: same },
            });
        }
    }

    fn note_view(&mut self, host: PeerId, view: u64, now: Instant) {
        let own = self.own_view();
        self.liveness.note_view(host, view, own, now);
    }

    fn full_digest(&mut self, view: u64) -> Digest {
        Digest {
            view,
            body: DigestBody::Full(self.digest()),
        }
    }

    fn compact_digest(&mut self, view: u64) -> Digest {
        Digest {
            view,
            body: DigestBody::Counters(self.membership.counters(self.own_proved())),
        }
    }

    /// This host's digest: itself first, then every member.
    fn digest(&mut self) -> Vec<Beat> {
        let _ = self.own_signed();
        let own = Beat {
            key: self.own_key,
            epoch: self.epoch,
            seq: self.seq,
            proved: self.own_proved(),
        };
        let mut out = Vec::with_capacity(self.membership.len());
        out.push(own);
        out.extend(self.membership.digest());
        out
    }

    /// Takes a full digest from `from`: renews leases whose counters rose
    /// and returns the records `from` lacks.
    fn merge_digest(
        &mut self,
        from: PeerId,
        beats: &[Beat],
        now: Instant,
    ) -> Vec<(SignedRecord, Proved)> {
        let mut budget = hash_budget(beats.len());
        let mut listed: foldhash::HashSet<u64> = foldhash::HashSet::with_capacity_and_hasher(
            beats.len().min(MAX_DIGEST),
            Default::default(),
        );
        let mut lacks = Vec::new();
        for b in beats.iter().take(MAX_DIGEST) {
            listed.insert(b.key);
            if b.key == self.own_key {
                if (b.epoch, b.seq) < (self.epoch, self.seq) {
                    if let Some(own) = self.own_signed() {
                        lacks.push((own, self.own_proved()));
                    }
                }
                continue;
            }
            // A host unknown here is skipped: `from` sends its record when
            // it reads our digest, which does not list it.
            lacks.extend(self.membership.merge_beat(b, now, &mut budget));
        }
        for (key, h) in self.membership.keys().iter().skip(1) {
            if lacks.len() >= MAX_RECORDS {
                break;
            }
            if *h == from || listed.contains(key) {
                continue;
            }
            if let Some(m) = self.membership.get(h) {
                lacks.push((m.signed.clone(), m.proved));
            }
        }
        if !listed.contains(&self.own_key) {
            if let Some(own) = self.own_signed() {
                lacks.push((own, self.own_proved()));
            }
        }
        lacks.truncate(MAX_RECORDS);
        lacks
    }

    /// Answers `from`'s digest with ours and the records it lacks.
    pub(crate) fn on_beats(&mut self, from: PeerId, digest: Digest, now: Instant) -> Response {
        let view = self.own_view();
        self.note_view(from, digest.view, now);
        match digest.body {
            DigestBody::Counters(c) if digest.view == view => {
                let own = self.own_proved();
                let mut budget = hash_budget(c.len());
                match self.membership.merge_counters(&c, own, now, &mut budget) {
                    Some(newer) => Response::Beats {
                        beats: Digest {
                            view,
                            body: DigestBody::Newer(newer),
                        },
                        records: Vec::new(),
                    },
                    None => self.full_answer(view),
                }
            }
            DigestBody::Full(beats) => {
                let records = self.merge_digest(from, &beats, now);
                let beats = if digest.view == view {
                    self.compact_digest(view)
                } else {
                    self.full_digest(view)
                };
                Response::Beats { beats, records }
            }
            // Another view (or an answer's form in a request): our full
            // digest shows the sender what we lack (it pushes those
            // records), and it sends its full digest next time, which shows
            // what it lacks.
            DigestBody::Counters(_) | DigestBody::Newer(_) => self.full_answer(view),
        }
    }

    /// The answer that carries our full digest and no records.
    fn full_answer(&mut self, view: u64) -> Response {
        Response::Beats {
            beats: self.full_digest(view),
            records: Vec::new(),
        }
    }

    /// `host` answered our digest (sent compact if `compact`): take its
    /// records and counters, and push what it lacks.
    pub(crate) fn on_beats_answer(
        &mut self,
        host: PeerId,
        compact: bool,
        answer: Response,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Response::Beats { beats, records } = answer else {
            return;
        };
        self.take_records(records, now, out);
        self.note_view(host, beats.view, now);
        match beats.body {
            DigestBody::Full(entries) => {
                let lacks = self.merge_digest(host, &entries, now);
                if !lacks.is_empty() {
                    out.push(Effect::Ask {
                        host,
                        request: Request::Records(lacks),
                        asked: Asked::Records,
                    });
                }
                if compact {
                    // Its view had changed, so it could not read our
                    // counters: they follow in full (while views change,
                    // as in a wave of lapses, no renewal may be lost).
                    self.send_digests(vec![host], now, out);
                }
            }
            DigestBody::Counters(c) => {
                if beats.view == self.own_view() {
                    let (own, mut budget) = (self.own_proved(), hash_budget(c.len()));
                    self.membership.merge_counters(&c, own, now, &mut budget);
                }
            }
            DigestBody::Newer(n) => {
                if beats.view == self.own_view() {
                    let mut budget = hash_budget(n.len());
                    self.membership.merge_newer(&n, now, &mut budget);
                }
            }
        }
    }

    /// Applies records pushed by a digest exchange.
    pub(crate) fn take_records(
        &mut self,
        records: Vec<(SignedRecord, Proved)>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let records = &records[..records.len().min(MAX_RECORDS)];
        let mut budget = hash_budget(records.len());
        for (r, proved) in records {
            self.apply_signed(r, Source::Synced(*proved), &mut budget, now, out);
        }
    }

    // ---- leases ----

    /// Drops the members whose lease ran out, then probes the living ones
    /// that have been silent a while: each is asked directly (through a
    /// relay if need be) for its digest, which carries its own counter
    /// first; if it answers, its lease is renewed. Without the probe, live
    /// hosts lapsed by the thousand at 512 hosts on two cores, and every
    /// lapse and return moves directory entries.
    fn expire(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let lease = self.settings.lease;
        for gone in self.membership.expire(now, lease) {
            if self.lapsed.len() < MAX_LAPSED {
                self.lapsed.insert(gone.host, (gone.epoch, gone.proved));
            }
            out.push(Effect::Lapsed(gone));
        }
        let suspects = self.liveness.probes(now, lease, &self.membership);
        if suspects.is_empty() {
            return;
        }
        out.extend(suspects.iter().copied().map(Effect::Probed));
        self.send_digests(suspects, now, out);
    }

    // ---- records ----

    /// Checks and applies a record; records already known are not checked.
    /// A synced record's counter is checked within `budget` hashes.
    pub(crate) fn apply_signed(
        &mut self,
        r: &SignedRecord,
        source: Source,
        budget: &mut u64,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let mut known = false;
        let (membership, lapsed) = (&self.membership, &self.lapsed);
        let known_or_revived = |h: &PeerId, rec: &HostRecord| {
            known =
                unproved_revival(lapsed, source, h, rec.epoch, budget) || membership.knows(h, rec);
            known
        };
        let held = |h: &PeerId| membership.get(h).map(|m| m.key.clone());
        let verified = verify_unless(r, known_or_revived, held);
        if !known {
            self.checks += 1;
        }
        match verified {
            Some(v) => {
                let (host, epoch) = (v.host, v.record.epoch);
                self.apply_verified(v, source, now, out);
                if let Source::Synced(p) = source {
                    self.membership.heard(&host, epoch, &p, now, budget);
                }
            }
            None if known => {}
            None => tracing::warn!("dropping a malformed or badly signed membership record"),
        }
    }

    /// Why this host refuses `v` under its limits, if it does.
    fn refusal(&self, v: &Verified) -> Option<&'static str> {
        let r = &v.record;
        if r.channels.len() + r.queues.len() > crate::core::membership::MAX_RECORD_CHANNELS
            || r.channels.iter().any(|c| c.len() > crate::MAX_ID_LEN)
            || r.queues
                .iter()
                .any(|q| q.pattern.len() > crate::MAX_ID_LEN || q.group.len() > crate::MAX_ID_LEN)
        {
            return Some("the record lists too many channels or too long a name");
        }
        if !self.allowed(&v.host) {
            return Some("the host is not on the allow-list");
        }
        if !r.leaving
            && !self.membership.contains(&v.host)
            && self.membership.len() >= self.settings.max_hosts
        {
            return Some("the membership is at max_hosts");
        }
        None
    }

    /// Whether the allow-list (if any) admits `host`.
    pub(crate) fn allowed(&self, host: &PeerId) -> bool {
        *host == self.local
            || self
                .settings
                .allowed
                .as_ref()
                .is_none_or(|list| list.contains(host))
    }

    /// Applies a record whose signature was checked.
    fn apply_verified(&mut self, v: Verified, source: Source, now: Instant, out: &mut Vec<Effect>) {
        if let Some(why) = self.refusal(&v) {
            out.push(Effect::Refused { host: v.host, why });
            return;
        }
        let tombstone = self.settings.lease * 4;
        let host = v.host;
        let channels_before = self.membership.get(&host).map(|m| m.channels.clone());
        let change = self.membership.apply(&v, now, tombstone);
        let channels_changed =
            self.membership.get(&host).map(|m| &m.channels) != channels_before.as_ref();
        if channels_changed {
            out.push(Effect::ChannelsChanged);
        }
        match change {
            Change::None => return,
            Change::Joined | Change::Updated => {
                if let Some(m) = self.membership.get(&host) {
                    out.push(Effect::Addresses {
                        host,
                        addrs: m.addrs.clone(),
                    });
                }
                if change == Change::Joined {
                    tracing::debug!(%host, "host joined the membership");
                    out.push(Effect::Joined(host));
                    if self.lapsed.remove(&host).is_some() {
                        // It was alive after all (heartbeats late): the
                        // entries dropped at its lapse must come back.
                        tracing::info!(%host, "lapsed host is back; asking it to resync");
                        out.push(Effect::Ask {
                            host,
                            request: Request::Resync,
                            asked: Asked::Resync,
                        });
                    }
                }
            }
            Change::Restarted { .. } => {
                self.lapsed.remove(&host);
                out.push(Effect::Restarted {
                    host,
                    epoch: v.record.epoch,
                });
            }
            Change::Left => {
                tracing::debug!(%host, "host left");
                self.lapsed.remove(&host);
                out.push(Effect::Left(host));
            }
        }
        if matches!(source, Source::Direct(_)) {
            // Spread what we learned directly, so the whole network hears it.
            out.push(Effect::Spread(v.signed));
        }
    }

    /// A record from membership gossip.
    pub(crate) fn on_gossip(&mut self, data: &[u8], now: Instant, out: &mut Vec<Effect>) {
        match crate::protocol::decode_frame::<SignedRecord>(data) {
            Ok(r) => self.apply_signed(&r, Source::Gossip, &mut 0, now, out),
            Err(e) => tracing::debug!(error = %e, "malformed membership gossip"),
        }
    }

    /// Drops the members a changed allow-list no longer admits.
    pub(crate) fn enforce_allow_list(&mut self, out: &mut Vec<Effect>) {
        let gone: Vec<PeerId> = self
            .membership
            .iter()
            .map(|(h, _)| *h)
            .filter(|h| !self.allowed(h))
            .collect();
        for host in gone {
            tracing::info!(%host, "host removed from the allow-list; dropping it");
            self.membership.remove(&host);
            self.lapsed.remove(&host);
            out.push(Effect::Disallowed(host));
        }
    }

    // ---- joins and leaves ----

    /// Records from a host's join (ours, or its answer to ours): applied as
    /// learnt directly from `from`, at most [`MAX_JOIN_RECORDS`].
    pub(crate) fn take_join(
        &mut self,
        from: PeerId,
        records: &[SignedRecord],
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        for r in records.iter().take(MAX_JOIN_RECORDS) {
            self.apply_signed(r, Source::Direct(from), &mut 0, now, out);
        }
    }

    /// Whether a record is one this host already holds (not newer).
    pub(crate) fn knows_record(&self, r: &SignedRecord) -> bool {
        is_known(r, |h, rec| self.membership.knows(h, rec))
    }

    /// Records of `from`'s join whose signatures were checked off the loop.
    pub(crate) fn take_checked_join(
        &mut self,
        from: PeerId,
        verified: Vec<Verified>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let source = Source::Direct(from);
        for v in verified {
            let stale = unproved_revival(&self.lapsed, source, &v.host, v.record.epoch, &mut 0);
            if !stale && !self.membership.knows(&v.host, &v.record) {
                self.apply_verified(v, source, now, out);
            }
        }
    }

    /// `host` refused a request of ours as a non-member (it never heard of
    /// us, or our lease lapsed there): we join it with our own record, at
    /// most once per lease.
    pub(crate) fn introduce(&mut self, host: PeerId, now: Instant, out: &mut Vec<Effect>) {
        let lease = self.settings.lease;
        if self.introduced.get(&host).is_some_and(|t| now < *t + lease) {
            return;
        }
        if self.introduced.len() >= MAX_LAPSED {
            self.introduced.clear();
        }
        self.introduced.insert(host, now);
        let Some(own) = self.own_signed() else {
            return;
        };
        tracing::info!(%host, "refused as a non-member; introducing this host");
        out.push(Effect::Ask {
            host,
            request: Request::Join(vec![own]),
            asked: Asked::Introduce,
        });
    }

    /// A host's leaving record, from the host itself.
    pub(crate) fn on_leave(
        &mut self,
        from: PeerId,
        record: &SignedRecord,
        now: Instant,
        out: &mut Vec<Effect>,
    ) -> Response {
        self.checks += 1;
        match verify(record) {
            Some(v) if v.host == from && v.record.leaving => {
                self.apply_verified(v, Source::Direct(from), now, out);
                Response::LeaveOk
            }
            _ => Response::Refused("not the sender's own leaving record".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    const HEARTBEAT: Duration = Duration::from_millis(500);
    const LEASE: Duration = Duration::from_secs(5);
    const TICK: Duration = Duration::from_millis(50);

    fn settings() -> Settings {
        Settings {
            lease: LEASE,
            heartbeat: HEARTBEAT,
            max_hosts: 10_000,
            allowed: None,
        }
    }

    /// Hosts in memory, fully linked, with a fake clock: every request is
    /// answered at once, in order.
    struct Net {
        hosts: Vec<Members>,
        /// Hosts that stopped (crashed): they neither beat nor answer.
        down: Vec<bool>,
        now: Instant,
        rng: StdRng,
        /// Requests delivered, by kind.
        asked: HashMap<&'static str, usize>,
        /// Lapses seen, as (at host, lapsed host).
        lapses: Vec<(usize, PeerId)>,
    }

    impl Net {
        fn new(n: usize, seed: u64) -> Net {
            let now = Instant::now();
            let hosts = (0..n)
                .map(|i| {
                    let key = Keypair::generate_ed25519();
                    Members::new(key, 1 + i as u64, settings(), now)
                })
                .collect();
            Net {
                hosts,
                down: vec![false; n],
                now,
                rng: StdRng::seed_from_u64(seed),
                asked: HashMap::new(),
                lapses: Vec::new(),
            }
        }

        fn id(&self, i: usize) -> PeerId {
            self.hosts[i].local
        }

        fn index(&self, h: &PeerId) -> usize {
            self.hosts
                .iter()
                .position(|m| m.local == *h)
                .expect("a host of the net")
        }

        /// Host `i` joins host `j`: the two swap every record they hold.
        fn join(&mut self, i: usize, j: usize) {
            let (a, b) = (self.id(i), self.id(j));
            let mine = self.hosts[i].join_records();
            let mut out = Vec::new();
            let now = self.now;
            self.hosts[j].take_join(a, &mine, now, &mut out);
            let theirs = self.hosts[j].join_records();
            self.run(j, out);
            let mut out = Vec::new();
            self.hosts[i].take_join(b, &theirs, now, &mut out);
            self.run(i, out);
        }

        /// Carries out host `i`'s effects: requests are answered at once
        /// (the answer's own effects carried out in turn), spreads are
        /// dropped (anti-entropy alone must converge).
        fn run(&mut self, i: usize, effects: Vec<Effect>) {
            let mut queue: std::collections::VecDeque<(usize, Effect)> =
                effects.into_iter().map(|e| (i, e)).collect();
            let now = self.now;
            let mut steps = 0;
            while let Some((at, e)) = queue.pop_front() {
                steps += 1;
                assert!(steps < 100_000, "effects never settle");
                let Effect::Ask {
                    host,
                    request,
                    asked,
                } = e
                else {
                    if let Effect::Lapsed(l) = e {
                        self.lapses.push((at, l.host));
                    }
                    continue;
                };
                let to = self.index(&host);
                if self.down[to] {
                    continue;
                }
                let from = self.id(at);
                let mut out = Vec::new();
                let answer = match request {
                    Request::Beats(d) => {
                        *self.asked.entry("beats").or_default() += 1;
                        self.hosts[to].on_beats(from, d, now)
                    }
                    Request::Records(r) => {
                        *self.asked.entry("records").or_default() += 1;
                        self.hosts[to].take_records(r, now, &mut out);
                        Response::RecordsOk
                    }
                    Request::Join(r) => {
                        self.hosts[to].take_join(from, &r, now, &mut out);
                        Response::Members(self.hosts[to].join_records())
                    }
                    _ => Response::DirectoryOk,
                };
                queue.extend(out.into_iter().map(|e| (to, e)));
                let mut out = Vec::new();
                match asked {
                    Asked::Beats { compact } => {
                        self.hosts[at].on_beats_answer(host, compact, answer, now, &mut out)
                    }
                    Asked::Introduce => {
                        if let Response::Members(r) = answer {
                            self.hosts[at].take_join(host, &r, now, &mut out);
                        }
                    }
                    Asked::Records | Asked::Resync => {}
                }
                queue.extend(out.into_iter().map(|e| (at, e)));
            }
        }

        /// Advances the clock by `by`, in ticks, running every live host's
        /// timer at each.
        fn advance(&mut self, by: Duration) {
            let end = self.now + by;
            while self.now < end {
                self.now += TICK;
                for i in 0..self.hosts.len() {
                    if self.down[i] {
                        continue;
                    }
                    let connected: Vec<PeerId> = (0..self.hosts.len())
                        .filter(|j| *j != i && !self.down[*j])
                        .map(|j| self.id(j))
                        .collect();
                    let links = Links {
                        connected: &connected,
                        relaying: false,
                    };
                    let mut out = Vec::new();
                    let now = self.now;
                    self.hosts[i].tick(now, TICK, &links, &mut self.rng, &mut out);
                    self.run(i, out);
                }
            }
        }

        fn sizes(&self) -> Vec<usize> {
            self.hosts.iter().map(|m| m.membership.len()).collect()
        }
    }

    #[test]
    fn a_chain_of_joins_converges_by_digests_alone() {
        // Each host joins only the one before it, and record gossip is
        // dropped: only the digest exchange can tell host 0 of host 7.
        let mut net = Net::new(8, 1);
        for i in 1..8 {
            net.join(i, i - 1);
        }
        assert!(net.sizes().iter().any(|s| *s < 8), "joins alone converged");
        net.advance(HEARTBEAT * 10);
        assert_eq!(net.sizes(), vec![8; 8]);
        // Once the views agree, digests go compact and every host says it
        // has converged.
        net.advance(HEARTBEAT * 10);
        let now = net.now;
        assert!(net.hosts.iter().all(|m| m.converged(now)));
        assert!(net.lapses.is_empty(), "{:?}", net.lapses);
    }

    #[test]
    fn a_crashed_host_lapses_everywhere_a_lease_after_its_last_counter() {
        let mut net = Net::new(5, 2);
        for i in 1..5 {
            net.join(i, 0);
        }
        net.advance(HEARTBEAT * 6);
        assert!(net.lapses.is_empty());
        net.down[4] = true;
        let gone = net.id(4);
        // Its last counter reached the others within a beat or two before
        // the crash: none lapses it sooner than a lease after, less those...
        net.advance(LEASE - HEARTBEAT * 3);
        assert!(net.lapses.is_empty(), "lapsed early: {:?}", net.lapses);
        // ... and all of them a lease after they heard it, the last within
        // the few beats it took to spread.
        net.advance(HEARTBEAT * 8);
        let mut at: Vec<usize> = net
            .lapses
            .iter()
            .filter(|(_, h)| *h == gone)
            .map(|(i, _)| *i)
            .collect();
        at.sort();
        assert_eq!(at, vec![0, 1, 2, 3]);
        assert_eq!(net.sizes()[..4], [4, 4, 4, 4]);
    }

    #[test]
    fn a_stalled_process_lapses_nobody() {
        let mut net = Net::new(4, 3);
        for i in 1..4 {
            net.join(i, 0);
        }
        net.advance(HEARTBEAT * 6);
        // Every loop is held up for two leases (the process was stopped, or
        // starved of CPU): nobody heard anyone meanwhile, and nobody's
        // silence is anyone's fault.
        net.now += LEASE * 2;
        net.advance(HEARTBEAT * 4);
        assert!(net.lapses.is_empty(), "{:?}", net.lapses);
        assert_eq!(net.sizes(), vec![4; 4]);
        // Without the excuse, the same stall lapses everyone.
        let now = net.now + LEASE * 2;
        let mut out = Vec::new();
        net.hosts[0].expire(now, &mut out);
        let lapsed = out
            .iter()
            .filter(|e| matches!(e, Effect::Lapsed(_)))
            .count();
        assert_eq!(lapsed, 3);
    }

    #[test]
    fn a_lapsed_host_is_not_revived_by_hearsay_but_comes_back_by_its_counter() {
        let mut net = Net::new(3, 4);
        net.join(1, 0);
        net.join(2, 0);
        net.advance(HEARTBEAT * 4);
        // Host 0 alone stops hearing the others for two leases.
        let h2 = net.id(2);
        let stale = net.hosts[1].membership.get(&h2).map(|m| m.signed.clone());
        let stale = stale.expect("host 1 knows host 2");
        let now = net.now + LEASE * 2;
        let mut out = Vec::new();
        net.hosts[0].expire(now, &mut out);
        assert!(out
            .iter()
            .any(|e| matches!(e, Effect::Lapsed(l) if l.host == h2)));
        assert!(!net.hosts[0].membership.contains(&h2));
        out.clear();
        // Its record again, from gossip or from a third host's join: no.
        net.hosts[0].apply_signed(&stale, Source::Gossip, &mut 0, now, &mut out);
        let h1 = net.id(1);
        net.hosts[0].take_join(h1, std::slice::from_ref(&stale), now, &mut out);
        assert!(!net.hosts[0].membership.contains(&h2));
        assert!(out.is_empty(), "{out:?}");
        // A digest exchange carries its newer proved counter: it is back,
        // and asked to register its entries again.
        net.hosts[2].liveness.due(now, HEARTBEAT, TICK);
        let proved = net.hosts[2].own_proved();
        net.hosts[0].apply_signed(&stale, Source::Synced(proved), &mut 1024, now, &mut out);
        assert!(net.hosts[0].membership.contains(&h2));
        assert!(out.iter().any(|e| matches!(
            e,
            Effect::Ask { host, asked: Asked::Resync, .. } if *host == h2
        )));
    }

    #[test]
    fn a_host_not_allowed_is_refused_and_dropped_when_the_list_changes() {
        let mut net = Net::new(3, 5);
        let (h1, h2) = (net.id(1), net.id(2));
        let mut s = settings();
        s.allowed = Some([h1].into_iter().collect());
        net.hosts[0].configure(s);
        net.join(1, 0);
        net.join(2, 0);
        assert!(net.hosts[0].membership.contains(&h1));
        assert!(!net.hosts[0].membership.contains(&h2));
        let mut s = settings();
        s.allowed = Some(BTreeSet::new());
        net.hosts[0].configure(s);
        let mut out = Vec::new();
        net.hosts[0].enforce_allow_list(&mut out);
        assert!(matches!(&out[..], [Effect::Disallowed(h)] if *h == h1));
        assert_eq!(net.hosts[0].membership.len(), 1);
    }

    #[test]
    fn compact_digests_carry_the_counters_once_views_agree() {
        let mut net = Net::new(6, 6);
        for i in 1..6 {
            net.join(i, 0);
        }
        net.advance(HEARTBEAT * 20);
        // In the steady state a digest is compact: an exchange of counters
        // with no records pushed.
        net.asked.clear();
        let before = net.hosts[0]
            .membership
            .get(&net.id(5))
            .map(|m| m.proved.beat);
        net.advance(HEARTBEAT * 4);
        let after = net.hosts[0]
            .membership
            .get(&net.id(5))
            .map(|m| m.proved.beat);
        assert!(after > before, "{before:?} -> {after:?}");
        assert_eq!(net.asked.get("records"), None, "{:?}", net.asked);
        // Host 5 changes its record: views differ, the next exchanges are
        // full and carry the new record to everyone.
        let mut out = Vec::new();
        let content = Content {
            channels: vec!["news".into()],
            ..Content::default()
        };
        net.hosts[5].announce(content, &mut out);
        assert!(matches!(&out[..], [Effect::Spread(_)]));
        net.advance(HEARTBEAT * 10);
        let h5 = net.id(5);
        for m in &net.hosts[..5] {
            let channels = m.membership.get(&h5).map(|m| m.channels.clone());
            assert_eq!(channels, Some(vec!["news".to_string()]));
        }
    }
}
