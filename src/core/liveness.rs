//! Liveness decisions: when a heartbeat is due (and how long this host was
//! held up before it), whom to swap digests with and in which form, which
//! silent hosts to probe before their lease lapses, and whether the
//! membership has converged. The counters and leases themselves live in
//! [`super::membership::Membership`]; the digests and their exchange in
//! [`super::members`].

use std::time::{Duration, Instant};

use libp2p::PeerId;
use rand::{seq::SliceRandom, Rng};

use super::membership::Membership;

/// Hosts each digest exchange round talks to while the membership
/// converges (records still spread with the digests).
pub(crate) const FANOUT: usize = 3;
/// Hosts each round talks to once converged, when digests only renew
/// leases. Every exchange carries every host's counter, so an idle
/// network's cost is in proportion to this.
pub(crate) const STEADY_FANOUT: usize = 2;
/// Every this many rounds one exchange goes to a random member.
const MIX_EVERY: u64 = 4;
/// Random draws looking for an unconnected member to mix with.
const MIX_DRAWS: usize = 8;
/// Share of the lease after which a silent host is probed directly.
pub(crate) const SUSPECT_AFTER: f64 = 0.6;
/// Most hosts probed per heartbeat.
pub(crate) const MAX_PROBES: usize = 64;
/// Most other hosts' views remembered (to choose the digest form).
const MAX_PEER_VIEWS: usize = 4096;
/// Consecutive digest exchanges that must show this host's own view before
/// it calls its membership converged.
const AGREEING_EXCHANGES: u32 = 3;
/// An agreement older than this many heartbeats no longer counts.
const AGREEMENT_BEATS: u32 = 3;

/// The form of a digest to one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Only the counters, by position: the host last showed our view.
    Compact,
    /// Every entry with its key and record version.
    Full,
}

/// The liveness state of one host.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// This host's heartbeat counter.
    beat: u64,
    /// When the next heartbeat is due.
    next_beat: Instant,
    /// The view each other host last showed, and when.
    views: foldhash::HashMap<PeerId, (u64, Instant)>,
    /// Exchanges in a row that showed our view, and when the last was.
    agreeing: u32,
    last_agreed: Option<Instant>,
    /// Silent hosts probed, and when.
    probed: foldhash::HashMap<PeerId, Instant>,
}

impl Liveness {
    /// A host whose first heartbeat is due at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Liveness {
            beat: 0,
            next_beat: now,
            views: Default::default(),
            agreeing: 0,
            last_agreed: None,
            probed: Default::default(),
        }
    }

    /// This host's counter.
    pub(crate) fn beat(&self) -> u64 {
        self.beat
    }

    /// Whether a heartbeat is due at `now`, with heartbeats every
    /// `interval` and a loop that wakes at least every `granularity`. If
    /// so, the counter rises, the next beat is scheduled, and the answer is
    /// how long this host was held up beyond the granularity: silence that
    /// long is nobody else's fault, so the caller excuses it
    /// ([`Membership::excuse`]) before leases are checked.
    pub(crate) fn due(
        &mut self,
        now: Instant,
        interval: Duration,
        granularity: Duration,
    ) -> Option<Duration> {
        if now < self.next_beat {
            return None;
        }
        let late = now
            .saturating_duration_since(self.next_beat)
            .saturating_sub(granularity);
        self.next_beat = now + interval;
        self.beat += 1;
        Some(late)
    }

    /// When the next heartbeat is due.
    pub(crate) fn next_beat(&self) -> Instant {
        self.next_beat
    }

    /// Whether this beat also goes to a random member (every
    /// [`MIX_EVERY`] rounds), so that the exchange crosses the network
    /// even where links form separate clusters.
    fn mixes(&self) -> bool {
        self.beat.is_multiple_of(MIX_EVERY)
    }

    /// How many of its links a round talks to at `now`: [`FANOUT`] while
    /// converging, [`STEADY_FANOUT`] once converged.
    pub(crate) fn fanout(&self, now: Instant, heartbeat: Duration) -> usize {
        if self.converged(now, heartbeat) {
            STEADY_FANOUT
        } else {
            FANOUT
        }
    }

    /// Whom this beat's digests go to: up to `fanout` of the `connected`
    /// members, plus a random unconnected one of `members` when none is
    /// connected, or every [`MIX_EVERY`] rounds if `mix`. `members` is the
    /// membership's key list (this host first).
    ///
    /// A relaying network passes `mix: false`: its links are the overlay's,
    /// one graph of diameter two by construction, so counters cross it
    /// without help, and a random other member costs a connection (a noise
    /// handshake on both sides) that the link budget closes a few seconds
    /// later. At 512 hosts that was 64 handshakes a second, idle.
    pub(crate) fn targets<R: Rng>(
        &self,
        connected: &[PeerId],
        members: &[(u64, PeerId)],
        fanout: usize,
        mix: bool,
        is_connected: impl Fn(&PeerId) -> bool,
        rng: &mut R,
    ) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = connected.choose_multiple(rng, fanout).copied().collect();
        if (mix && self.mixes()) || out.is_empty() {
            // A few random draws, not a scan of the membership.
            let others = members.get(1..).unwrap_or_default();
            let pick = (0..MIX_DRAWS)
                .filter_map(|_| others.choose(rng))
                .map(|(_, h)| *h)
                .find(|h| !is_connected(h));
            out.extend(pick);
        }
        out
    }

    /// The form of a digest to `host` at `now`, given our `view`: compact
    /// when its last view matched ours; full when it differed within the
    /// last [`AGREEMENT_BEATS`] heartbeats; otherwise (never heard, or
    /// long ago) compact if this host has [`Liveness::converged`], else
    /// full.
    ///
    /// The guess matters after a join: each pair of a 512-host network
    /// talks only every twenty rounds or so, so a view noted during the
    /// join was stale for about 40 s after it, and a third of the digests
    /// then were full (at about 1.7 times the bytes and a merge by key). A
    /// wrong guess costs what a view change costs today: the answer comes
    /// in full and the full digest follows.
    pub(crate) fn form(&self, host: &PeerId, view: u64, now: Instant, heartbeat: Duration) -> Form {
        match self.views.get(host) {
            Some((v, _)) if *v == view => Form::Compact,
            Some((_, at)) if now.saturating_duration_since(*at) <= heartbeat * AGREEMENT_BEATS => {
                Form::Full
            }
            _ if self.converged(now, heartbeat) => Form::Compact,
            _ => Form::Full,
        }
    }

    /// `host` showed `view` at `now`; ours is `own`.
    pub(crate) fn note_view(&mut self, host: PeerId, view: u64, own: u64, now: Instant) {
        if view == own {
            self.agreeing = self.agreeing.saturating_add(1);
            self.last_agreed = Some(now);
        } else {
            self.agreeing = 0;
        }
        // Bounded: past the cap, start over (a few full digests follow).
        if self.views.len() >= MAX_PEER_VIEWS && !self.views.contains_key(&host) {
            self.views.clear();
        }
        self.views.insert(host, (view, now));
    }

    /// Converged at `now`: the last [`AGREEING_EXCHANGES`] exchanges showed
    /// our view, the latest within [`AGREEMENT_BEATS`] heartbeats.
    pub(crate) fn converged(&self, now: Instant, heartbeat: Duration) -> bool {
        self.agreeing >= AGREEING_EXCHANGES
            && self
                .last_agreed
                .is_some_and(|t| now.duration_since(t) <= heartbeat * AGREEMENT_BEATS)
    }

    /// When `host` was last probed, if within the lease's last part.
    pub(crate) fn probed_at(&self, host: &PeerId) -> Option<Instant> {
        self.probed.get(host).copied()
    }

    /// The hosts to probe at `now`: silent for [`SUSPECT_AFTER`] of the
    /// lease and not probed in the rest of it, at most [`MAX_PROBES`].
    /// Counters spread in O(log hosts) rounds, and on a loaded host rounds
    /// stretch; a direct probe renews a live host's lease before it
    /// lapses, while a crashed one does not answer and lapses at the lease.
    pub(crate) fn probes(
        &mut self,
        now: Instant,
        lease: Duration,
        membership: &Membership,
    ) -> Vec<PeerId> {
        let quiet = lease.mul_f64(1.0 - SUSPECT_AFTER);
        self.probed.retain(|_, at| now.duration_since(*at) < quiet);
        let suspects: Vec<PeerId> = membership
            .silent(now, lease.mul_f64(SUSPECT_AFTER))
            .into_iter()
            .filter(|h| !self.probed.contains_key(h))
            .take(MAX_PROBES)
            .collect();
        for h in &suspects {
            self.probed.insert(*h, now);
        }
        suspects
    }
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;
    use crate::core::membership::tests::record;

    const SEC: Duration = Duration::from_secs(1);
    const LEASE: Duration = Duration::from_secs(10);
    const TICK: Duration = Duration::from_millis(100);

    /// A membership of this host and `n` others, each heard at `t0`.
    fn members(n: usize, t0: Instant) -> (Membership, Vec<PeerId>) {
        let mut m = Membership::new(PeerId::random());
        let mut hosts = Vec::new();
        for _ in 0..n {
            let k = Keypair::generate_ed25519();
            m.apply(&record(&k, 1, 1, false), t0, SEC);
            hosts.push(k.public().to_peer_id());
        }
        (m, hosts)
    }

    /// Hosts and when something happened to each.
    type Events = Vec<(PeerId, Instant)>;

    /// Steps the loop from `from` to `to` every `TICK`, as the event loop
    /// does: a due beat excuses lateness, expires, then probes. Returns
    /// when each host was probed and when each lapsed.
    fn run(l: &mut Liveness, m: &mut Membership, from: Instant, to: Instant) -> (Events, Events) {
        let (mut probed, mut lapsed) = (Vec::new(), Vec::new());
        let mut now = from;
        while now <= to {
            if let Some(late) = l.due(now, SEC, TICK) {
                if !late.is_zero() {
                    m.excuse(late, now);
                }
                lapsed.extend(m.expire(now, LEASE).into_iter().map(|x| (x.host, now)));
                probed.extend(l.probes(now, LEASE, m).into_iter().map(|h| (h, now)));
            }
            now += TICK;
        }
        (probed, lapsed)
    }

    #[test]
    fn a_silent_host_is_probed_once_then_lapses_at_its_lease() {
        let t0 = Instant::now();
        let (mut m, hosts) = members(1, t0);
        let mut l = Liveness::new(t0);
        let (probed, lapsed) = run(&mut l, &mut m, t0, t0 + 20 * SEC);
        // Beats fall on whole seconds: the first past 6 s of silence
        // (0.6 of the lease) probes it, once; the first past 10 s lapses
        // it.
        assert_eq!(probed, vec![(hosts[0], t0 + 7 * SEC)]);
        assert_eq!(lapsed, vec![(hosts[0], t0 + 11 * SEC)]);
        assert_eq!(m.len(), 1, "only this host is left");
    }

    #[test]
    fn a_lease_lapses_exactly_when_it_runs_out() {
        let t0 = Instant::now();
        let (mut m, hosts) = members(1, t0);
        assert!(m.expire(t0 + LEASE, LEASE).is_empty(), "live at the lease");
        let lapsed = m.expire(t0 + LEASE + Duration::from_nanos(1), LEASE);
        assert_eq!(lapsed.iter().map(|x| x.host).collect::<Vec<_>>(), hosts);
    }

    #[test]
    fn a_stalled_loop_lapses_nobody() {
        let t0 = Instant::now();
        let (mut m, _) = members(3, t0);
        let mut l = Liveness::new(t0);
        assert_eq!(l.due(t0, SEC, TICK), Some(Duration::ZERO));
        // The loop is held up for 30 s, three leases: its next beat comes
        // late, and the time it heard nobody is excused.
        let woke = t0 + 31 * SEC;
        let late = l.due(woke, SEC, TICK).expect("a beat is due");
        assert_eq!(late, 30 * SEC - TICK);
        m.excuse(late, woke);
        assert!(m.expire(woke, LEASE).is_empty(), "nobody lapses");
        assert!(l.probes(woke, LEASE, &m).is_empty(), "nobody is probed");
        // Silence outside the stall counts: the beat interval before it
        // and the tick's granularity (1.1 s), then every second after it.
        let (_, lapsed) = run(&mut l, &mut m, woke, woke + 15 * SEC);
        assert_eq!(lapsed.len(), 3);
        assert!(
            lapsed.iter().all(|(_, at)| *at == woke + 9 * SEC),
            "{lapsed:?}"
        );
    }

    #[test]
    fn a_late_tick_within_the_granularity_excuses_nothing() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        assert_eq!(l.due(t0, SEC, TICK), Some(Duration::ZERO));
        assert_eq!(l.due(t0 + SEC / 2, SEC, TICK), None, "not due yet");
        assert_eq!(l.due(t0 + SEC + TICK, SEC, TICK), Some(Duration::ZERO));
        assert_eq!(l.beat(), 2);
    }

    #[test]
    fn probes_are_capped_per_beat() {
        let t0 = Instant::now();
        let (m, _) = members(MAX_PROBES + 10, t0);
        let mut l = Liveness::new(t0);
        let at = t0 + 7 * SEC;
        assert_eq!(l.probes(at, LEASE, &m).len(), MAX_PROBES);
        assert_eq!(l.probes(at + SEC, LEASE, &m).len(), 10, "the rest next");
        assert!(l.probes(at + 2 * SEC, LEASE, &m).is_empty());
    }

    #[test]
    fn digests_go_to_connected_members_and_sometimes_a_random_other() {
        let mut rng = StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let (m, hosts) = members(20, t0);
        let connected: Vec<PeerId> = hosts[..5].to_vec();
        let is_connected = |h: &PeerId| connected.contains(h);
        let mut l = Liveness::new(t0);
        for round in 1..=8u64 {
            l.due(t0 + SEC * round as u32, SEC, TICK);
            let t = l.targets(&connected, m.keys(), FANOUT, true, is_connected, &mut rng);
            let (linked, other): (Vec<PeerId>, Vec<PeerId>) =
                t.iter().partition(|h| connected.contains(h));
            assert_eq!(linked.len(), FANOUT, "round {round}");
            // Every fourth round adds one unconnected member.
            assert_eq!(
                other.len(),
                usize::from(round % MIX_EVERY == 0),
                "round {round}"
            );
            assert!(other.iter().all(|h| hosts.contains(h)));
            // A relaying network keeps to its links, every round.
            let t = l.targets(&connected, m.keys(), FANOUT, false, is_connected, &mut rng);
            assert_eq!(t.len(), FANOUT, "round {round}");
            assert!(t.iter().all(|h| connected.contains(h)), "round {round}");
        }
        // With no link at all, one random member every round, mixing or not.
        for mix in [true, false] {
            let t = l.targets(&[], m.keys(), FANOUT, mix, |_| false, &mut rng);
            assert_eq!(t.len(), 1);
            assert!(hosts.contains(&t[0]));
        }
    }

    #[test]
    fn compact_digests_to_hosts_that_showed_our_view_or_when_converged() {
        let (t0, beat) = (Instant::now(), SEC);
        let mut l = Liveness::new(t0);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!(l.form(&a, 5, t0, beat), Form::Full, "never heard");
        l.note_view(a, 5, 5, t0);
        l.note_view(b, 4, 5, t0);
        assert_eq!(l.form(&a, 5, t0, beat), Form::Compact);
        assert_eq!(l.form(&b, 5, t0, beat), Form::Full);
        assert_eq!(
            l.form(&a, 6, t0, beat),
            Form::Full,
            "our view changed since"
        );
        // Three exchanges in a row show our view: converged.
        for _ in 0..3 {
            l.note_view(a, 5, 5, t0);
        }
        assert_eq!(
            l.form(&c, 5, t0, beat),
            Form::Compact,
            "never heard: guessed"
        );
        assert_eq!(l.form(&b, 5, t0, beat), Form::Full, "differed just now");
        let later = t0 + beat * (AGREEMENT_BEATS + 1);
        l.note_view(a, 5, 5, later);
        assert_eq!(
            l.form(&b, 5, later, beat),
            Form::Compact,
            "differed long ago: guessed"
        );
        // Not converged (a differing view resets it): no guess.
        l.note_view(a, 7, 5, later);
        assert_eq!(l.form(&c, 5, later, beat), Form::Full);
        assert_eq!(l.form(&b, 5, later, beat), Form::Full);
    }

    #[test]
    fn rounds_talk_to_fewer_links_once_converged_and_more_again_when_views_differ() {
        let mut rng = StdRng::seed_from_u64(3);
        let (t0, beat) = (Instant::now(), SEC);
        let (m, hosts) = members(20, t0);
        let connected: Vec<PeerId> = hosts[..10].to_vec();
        let is_connected = |h: &PeerId| connected.contains(h);
        let mut l = Liveness::new(t0);
        let round = |l: &Liveness, now, rng: &mut StdRng| {
            let f = l.fanout(now, beat);
            l.targets(&connected, m.keys(), f, false, is_connected, rng)
                .len()
        };
        assert_eq!(round(&l, t0, &mut rng), FANOUT, "converging");
        for _ in 0..AGREEING_EXCHANGES {
            l.note_view(hosts[0], 9, 9, t0);
        }
        assert_eq!(round(&l, t0, &mut rng), STEADY_FANOUT, "converged");
        let stale = t0 + beat * (AGREEMENT_BEATS + 1);
        assert_eq!(round(&l, stale, &mut rng), FANOUT, "agreement too old");
        l.note_view(hosts[1], 8, 9, t0);
        assert_eq!(round(&l, t0, &mut rng), FANOUT, "a view differs");
    }

    #[test]
    fn the_next_beat_is_an_interval_after_the_last() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        assert_eq!(l.next_beat(), t0, "the first beat is due at once");
        l.due(t0 + TICK, SEC, TICK);
        assert_eq!(l.next_beat(), t0 + TICK + SEC);
    }

    #[test]
    fn convergence_needs_recent_consecutive_matching_views() {
        let (t0, beat) = (Instant::now(), SEC);
        let mut l = Liveness::new(t0);
        let h = PeerId::random();
        assert!(!l.converged(t0, beat), "nothing heard yet");
        l.note_view(h, 1, 1, t0);
        l.note_view(h, 1, 1, t0);
        assert!(
            !l.converged(t0, beat),
            "two agreeing exchanges are not enough"
        );
        l.note_view(h, 1, 1, t0);
        assert!(l.converged(t0, beat));
        assert!(l.converged(t0 + beat * 3, beat));
        assert!(!l.converged(t0 + beat * 4, beat), "an old agreement lapses");
        l.note_view(h, 2, 1, t0);
        assert!(!l.converged(t0, beat), "one differing view resets it");
    }
}
