//! Liveness by heartbeat digests: push-pull anti-entropy.
//!
//! Once per heartbeat interval a host raises its own counter and swaps
//! digests with [`crate::core::liveness::FANOUT`] other hosts: for every host it knows, the record
//! version (epoch, seq) and the highest counter heard. Each side renews the
//! lease of every host whose counter rose, and sends the signed records the
//! other side was seen to lack (unknown, or an older version). Counters
//! spread epidemically, in O(log hosts) rounds, for O(hosts × fanout)
//! requests per round in the whole network; a digest entry is 4 integers
//! and the counter's 16-byte proof.
//! (Before, every host gossiped a signed record per heartbeat that every
//! other host had to check: O(hosts²) messages and signature checks.)
//!
//! Compact digests: every digest carries the sender's *view*, a fingerprint
//! of every live host's key and record version
//! ([`crate::core::membership::Membership::view`]). To a host whose last digest
//! showed the same view, a host sends only the proved counters, in key
//! order (under half the bytes; members reached by position, no key
//! look-ups); the answer carries only the counters the asker was seen to
//! lack, by position (about half of them). A host
//! whose view has changed since answers a compact digest in full, and the
//! sender then follows up with its own full digest, so no counter is lost
//! while views differ (a join, a lapse). At 512 hosts this took the idle
//! cost from 0.8–0.95 to about 0.5 of a core.
//!
//! Digests go to connected hosts, so liveness costs few new connections;
//! in a network that does not relay, every fourth round (or when no host is
//! connected) one more goes to a random unconnected member, so the exchange
//! crosses the whole network even where links form separate clusters (a
//! relaying network's links are the overlay's, which join every host within
//! two hops). Digests do not count as use of a link for the link budget.
//!
//! Trust: records carry their host's signature and cannot be forged, and
//! every counter carries a proof from its host's hash chain
//! ([`crate::beat_chain`]): a member can neither raise another host's
//! counter (to evict it: its real counter would never rise again) nor keep
//! a dead host's counter rising. Digests are taken from members only.

use std::time::Instant;

use libp2p::{request_response::OutboundFailure, PeerId};

use super::{members::Source, EventLoop, Pending};
use crate::{
    beat_chain::{Chain, Proved},
    core::liveness::Form,
    protocol::{Beat, Digest, DigestBody, Request, Response, SignedRecord},
};

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

/// The hash budget for checking a digest of `entries` entries.
fn hash_budget(entries: usize) -> u64 {
    HASHES_PER_DIGEST + HASHES_PER_ENTRY * entries as u64
}

impl EventLoop {
    /// One heartbeat: raise the counter and exchange digests.
    pub(super) fn heartbeat(&mut self) {
        let beat = self.liveness.beat();
        if !self.chain.anchor().covers(beat) {
            // The chain ran out: a new one, whose tip proves this counter,
            // goes out in a new record.
            self.chain = Chain::new(beat);
            self.announce();
        }
        let targets = self.beat_targets();
        if targets.is_empty() {
            return;
        }
        self.send_digests(targets);
    }

    /// Sends our digest to each of `targets`: compact to a host last seen
    /// with our view, full to any other (each form built once).
    fn send_digests(&mut self, targets: Vec<PeerId>) {
        let view = self.own_view();
        let (now, heartbeat) = (
            Instant::now(),
            self.shared.with_config(|c| c.heartbeat_interval),
        );
        let (mut full, mut compact) = (None, None);
        for host in targets {
            let same = self.liveness.form(&host, view, now, heartbeat) == Form::Compact;
            let d = if same {
                compact
                    .get_or_insert_with(|| self.compact_digest(view))
                    .clone()
            } else {
                full.get_or_insert_with(|| self.full_digest(view)).clone()
            };
            let id = self.request(host, Request::Beats(d));
            self.requests.insert(
                id,
                Pending::Beats {
                    host,
                    compact: same,
                },
            );
        }
    }

    /// Our view fingerprint, with our own record current.
    fn own_view(&mut self) -> u64 {
        // Make sure a current record exists, so its seq is the one counted.
        let _ = self.own_signed();
        self.membership.view(self.epoch, self.seq)
    }

    /// Remembers the view `host` last showed.
    fn note_view(&mut self, host: PeerId, view: u64) {
        let own = self.own_view();
        self.liveness.note_view(host, view, own, Instant::now());
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

    /// Whom this beat's digests go to ([`crate::core::liveness::Liveness::targets`]).
    fn beat_targets(&self) -> Vec<PeerId> {
        // From the links (a few dozen), not the membership (hundreds).
        let connected: Vec<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|h| self.membership.contains(h) && **h != self.local())
            .copied()
            .collect();
        let heartbeat = self.shared.with_config(|c| c.heartbeat_interval);
        self.liveness.targets(
            &connected,
            self.membership.keys(),
            self.liveness.fanout(Instant::now(), heartbeat),
            self.overlay().is_none(),
            |h| self.swarm.is_connected(h),
            &mut rand::thread_rng(),
        )
    }

    /// This host's digest: itself first, then every member.
    fn digest(&mut self) -> Vec<Beat> {
        // Make sure a current record exists, so its seq is the one sent.
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

    /// This host's counter with its proof.
    pub(super) fn own_proved(&self) -> Proved {
        // The chain covers the counter: `heartbeat` starts a new one first.
        self.chain
            .prove(self.liveness.beat())
            .unwrap_or_else(|| self.chain.anchor().proved())
    }

    /// Takes a digest from `from`: renews leases whose counters rose and
    /// returns the records `from` lacks.
    fn merge_digest(&mut self, from: PeerId, beats: &[Beat]) -> Vec<(SignedRecord, Proved)> {
        let now = Instant::now();
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

    /// Answers a digest with ours and the records the sender lacks.
    pub(super) fn on_beats(&mut self, peer: PeerId, digest: Digest) -> Response {
        let view = self.own_view();
        self.note_view(peer, digest.view);
        match digest.body {
            DigestBody::Counters(c) if digest.view == view => {
                let own = self.own_proved();
                let mut budget = hash_budget(c.len());
                match self
                    .membership
                    .merge_counters(&c, own, Instant::now(), &mut budget)
                {
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
                let records = self.merge_digest(peer, &beats);
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

    /// Our digest was answered: take its records and push what it lacks.
    pub(super) fn on_beats_result(
        &mut self,
        host: PeerId,
        sent_compact: bool,
        result: std::result::Result<Response, OutboundFailure>,
    ) {
        let Ok(Response::Beats { beats, records }) = result else {
            return;
        };
        self.take_records(records);
        self.note_view(host, beats.view);
        match beats.body {
            DigestBody::Full(entries) => {
                let lacks = self.merge_digest(host, &entries);
                if !lacks.is_empty() {
                    let id = self.request(host, Request::Records(lacks));
                    self.requests.insert(id, Pending::Records);
                }
                if sent_compact {
                    // Its view had changed, so it could not read our
                    // counters: they follow in full (while views change,
                    // as in a wave of lapses, no renewal may be lost).
                    self.send_digests(vec![host]);
                }
            }
            DigestBody::Counters(c) => {
                if beats.view == self.own_view() {
                    let (own, mut budget) = (self.own_proved(), hash_budget(c.len()));
                    self.membership
                        .merge_counters(&c, own, Instant::now(), &mut budget);
                }
            }
            DigestBody::Newer(n) => {
                if beats.view == self.own_view() {
                    let mut budget = hash_budget(n.len());
                    self.membership.merge_newer(&n, Instant::now(), &mut budget);
                }
            }
        }
    }

    /// Suspicion before a lapse: each host [`crate::core::liveness::Liveness::probes`] names is
    /// asked directly (through a relay if need be) for its digest, which
    /// carries its own counter first; if it answers, its lease is renewed.
    /// Without the probe, live hosts lapsed by the thousand at 512 hosts
    /// on two cores, and every lapse and return moves directory entries.
    pub(super) fn probe_silent(&mut self, now: Instant, lease: std::time::Duration) {
        let suspects = self.liveness.probes(now, lease, &self.membership);
        if suspects.is_empty() {
            return;
        }
        for _ in &suspects {
            crate::shared::bump(&self.shared.counters.liveness_probes);
        }
        self.send_digests(suspects);
    }

    /// Applies records pushed by a digest exchange.
    pub(super) fn take_records(&mut self, records: Vec<(SignedRecord, Proved)>) {
        let records = &records[..records.len().min(MAX_RECORDS)];
        let mut budget = hash_budget(records.len());
        for (r, proved) in records {
            self.apply_signed(r, Source::Synced(*proved), &mut budget);
        }
    }
}
