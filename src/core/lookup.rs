//! Lookups: where does a peer id live? Ask its holders (the replication
//! hosts closest to its key) one at a time, those reached in one hop
//! first; when none knows it, the other members in Kademlia's routing
//! table, then those Kademlia's iterative query finds.
//!
//! The decisions only. The loop supplies what it knows through
//! [`LookupView`] and carries out each [`LookupStep`]; several callers
//! waiting for one id share one lookup.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId};

use crate::directory::key_of;

/// What a lookup needs to know of this host's view.
pub(crate) trait LookupView {
    /// Whether `host` is a member: only members are asked, only their
    /// answers count, and only a member is accepted as the peer's host.
    fn is_member(&self, host: &PeerId) -> bool;
    /// Whether `host` is this host.
    fn is_local(&self, host: &PeerId) -> bool;
    /// This host's own directory entry for `id`, if it holds one.
    fn held_here(&self, id: &str) -> Option<PeerId>;
    /// Whether a request to `host` goes in one hop (else through a relay:
    /// two round trips).
    fn direct(&self, host: &PeerId) -> bool;
}

/// What the loop is to do next for a lookup.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LookupStep<W> {
    /// Send `holder` a lookup request for `id`; report the answer with
    /// [`Lookups::on_answer`].
    Ask { id: String, holder: PeerId },
    /// Every holder missed: list the members in Kademlia's routing table,
    /// closest to `key` first, for [`Lookups::on_table`].
    Table { id: String, key: u64 },
    /// Run Kademlia's iterative query for `id`; report the hosts it finds
    /// with [`Lookups::on_closest`].
    Query { id: String },
    /// The lookup ended.
    Done(Finished<W>),
}

/// An ended lookup.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Finished<W> {
    pub id: String,
    /// The peer's host, if found.
    pub host: Option<PeerId>,
    /// Who waited for it, first caller first.
    pub waiters: Vec<W>,
    /// Network round trips it took (a relayed request counts two).
    pub round_trips: u64,
    /// The addresses the answering holder gave for the host.
    pub addrs: Vec<Multiaddr>,
    pub took: Duration,
}

/// How far the Kademlia fallback went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// Asking the holders of this host's view.
    Holders,
    /// Asking the members of Kademlia's routing table.
    Table,
    /// Asking what Kademlia's query found.
    Query,
}

#[derive(Debug)]
struct Lookup<W> {
    candidates: VecDeque<PeerId>,
    asked: Vec<PeerId>,
    waiters: Vec<W>,
    round_trips: u64,
    fallback: Fallback,
    started: Instant,
}

/// The lookups in progress, by id.
#[derive(Debug)]
pub(crate) struct Lookups<W> {
    active: HashMap<String, Lookup<W>>,
}

impl<W> Default for Lookups<W> {
    fn default() -> Self {
        Lookups {
            active: HashMap::new(),
        }
    }
}

impl<W> Lookups<W> {
    /// Starts a lookup of `id` among `holders` (or joins the one running).
    pub(crate) fn start(
        &mut self,
        now: Instant,
        id: String,
        waiter: W,
        holders: Vec<PeerId>,
        view: &impl LookupView,
    ) -> Option<LookupStep<W>> {
        if let Some(l) = self.active.get_mut(&id) {
            l.waiters.push(waiter);
            return None;
        }
        let mut candidates = holders;
        // Every holder has the entry: ask first those reached in one hop.
        candidates.sort_by_key(|h| !view.direct(h));
        self.active.insert(
            id.clone(),
            Lookup {
                candidates: candidates.into(),
                asked: Vec::new(),
                waiters: vec![waiter],
                round_trips: 0,
                fallback: Fallback::Holders,
                started: now,
            },
        );
        self.step(now, id, view)
    }

    /// `holder`'s answer: the host it names for `id` (with addresses), or
    /// none (it does not know the id, or the request failed).
    pub(crate) fn on_answer(
        &mut self,
        now: Instant,
        id: String,
        holder: PeerId,
        found: Option<(PeerId, Vec<Multiaddr>)>,
        view: &impl LookupView,
    ) -> Option<LookupStep<W>> {
        match found {
            // Only a member's answer counts (it may have lapsed since it
            // was asked): anyone reachable could otherwise redirect sends.
            // Nor is a host outside the membership accepted: a member
            // might point sends at a host nobody admitted.
            Some((host, addrs)) if view.is_member(&holder) && view.is_member(&host) => {
                self.finish(now, &id, Some(host), addrs)
            }
            _ => self.step(now, id, view),
        }
    }

    /// The members of Kademlia's routing table, closest to the id first.
    pub(crate) fn on_table(
        &mut self,
        now: Instant,
        id: String,
        table: Vec<PeerId>,
        view: &impl LookupView,
    ) -> Option<LookupStep<W>> {
        if let Some(l) = self.active.get_mut(&id) {
            l.candidates.extend(
                table
                    .into_iter()
                    .filter(|h| view.is_member(h) && !l.asked.contains(h)),
            );
        }
        self.step(now, id, view)
    }

    /// The hosts Kademlia's query found for `id`.
    pub(crate) fn on_closest(
        &mut self,
        now: Instant,
        id: String,
        hosts: Vec<PeerId>,
        view: &impl LookupView,
    ) -> Option<LookupStep<W>> {
        if let Some(l) = self.active.get_mut(&id) {
            l.candidates.extend(hosts);
        }
        self.step(now, id, view)
    }

    /// Ends every lookup (on close): their waiters.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = W> + '_ {
        self.active.drain().flat_map(|(_, l)| l.waiters)
    }

    /// Asks the next candidate, moves to the next fallback, or ends.
    fn step(&mut self, now: Instant, id: String, view: &impl LookupView) -> Option<LookupStep<W>> {
        loop {
            let l = self.active.get_mut(&id)?;
            let Some(holder) = l.candidates.pop_front() else {
                // The holders in our view do not know the id (our view may
                // differ from the registering host's, e.g. mid-rebalance).
                return match l.fallback {
                    Fallback::Holders => {
                        l.fallback = Fallback::Table;
                        let key = key_of(id.as_bytes());
                        Some(LookupStep::Table { id, key })
                    }
                    Fallback::Table => {
                        l.fallback = Fallback::Query;
                        Some(LookupStep::Query { id })
                    }
                    Fallback::Query => self.finish(now, &id, None, Vec::new()),
                };
            };
            if l.asked.contains(&holder) {
                continue;
            }
            l.asked.push(holder);
            if view.is_local(&holder) {
                // This host is one of the holders: its own store answers.
                match view.held_here(&id).filter(|h| view.is_member(h)) {
                    Some(host) => return self.finish(now, &id, Some(host), Vec::new()),
                    None => continue,
                }
            }
            if !view.is_member(&holder) {
                // Kademlia's query may name hosts outside the membership:
                // their answers would not count, so they are not asked.
                continue;
            }
            l.round_trips += if view.direct(&holder) { 1 } else { 2 };
            return Some(LookupStep::Ask { id, holder });
        }
    }

    fn finish(
        &mut self,
        now: Instant,
        id: &str,
        host: Option<PeerId>,
        addrs: Vec<Multiaddr>,
    ) -> Option<LookupStep<W>> {
        let l = self.active.remove(id)?;
        Some(LookupStep::Done(Finished {
            id: id.to_string(),
            host,
            waiters: l.waiters,
            round_trips: l.round_trips,
            addrs,
            took: now.saturating_duration_since(l.started),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[derive(Default)]
    struct View {
        local: Option<PeerId>,
        members: HashSet<PeerId>,
        direct: HashSet<PeerId>,
        held: HashMap<String, PeerId>,
    }

    impl View {
        /// Every one of `hosts` a member, reached in one hop.
        fn all_direct(hosts: &[PeerId]) -> View {
            View {
                members: hosts.iter().copied().collect(),
                direct: hosts.iter().copied().collect(),
                ..View::default()
            }
        }
    }

    impl LookupView for View {
        fn is_member(&self, host: &PeerId) -> bool {
            self.members.contains(host)
        }
        fn is_local(&self, host: &PeerId) -> bool {
            self.local == Some(*host)
        }
        fn held_here(&self, id: &str) -> Option<PeerId> {
            self.held.get(id).copied()
        }
        fn direct(&self, host: &PeerId) -> bool {
            self.direct.contains(host)
        }
    }

    fn hosts(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    fn asked(step: Option<LookupStep<u8>>) -> PeerId {
        match step {
            Some(LookupStep::Ask { holder, .. }) => holder,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn done(step: Option<LookupStep<u8>>) -> Finished<u8> {
        match step {
            Some(LookupStep::Done(f)) => f,
            other => panic!("expected the end, got {other:?}"),
        }
    }

    #[test]
    fn holders_in_one_hop_go_first_and_a_relayed_one_counts_two_round_trips() {
        let hs = hosts(4);
        let view = View {
            members: hs.iter().copied().collect(),
            direct: [hs[2]].into(),
            ..View::default()
        };
        let t0 = Instant::now();
        let mut l = Lookups::default();
        let first = asked(l.start(t0, "p".into(), 1u8, vec![hs[1], hs[2]], &view));
        assert_eq!(first, hs[2], "the one-hop holder first");
        assert!(
            l.start(t0, "p".into(), 2u8, vec![], &view).is_none(),
            "joins the lookup"
        );
        let second = asked(l.on_answer(t0, "p".into(), hs[2], None, &view));
        assert_eq!(second, hs[1]);
        let later = t0 + Duration::from_millis(7);
        let f = done(l.on_answer(later, "p".into(), hs[1], Some((hs[3], vec![])), &view));
        assert_eq!(f.host, Some(hs[3]));
        assert_eq!(f.waiters, vec![1, 2]);
        assert_eq!(f.round_trips, 1 + 2);
        assert_eq!(f.took, Duration::from_millis(7));
    }

    #[test]
    fn answers_from_or_about_non_members_do_not_count() {
        let hs = hosts(4);
        let stranger = PeerId::random();
        let view = View::all_direct(&hs);
        let t0 = Instant::now();
        let mut l = Lookups::default();
        let h = asked(l.start(t0, "p".into(), 0u8, vec![hs[0], hs[1], hs[2]], &view));
        // A holder pointing at a host nobody admitted: ask the next.
        let h = asked(l.on_answer(t0, "p".into(), h, Some((stranger, vec![])), &view));
        // An answer credited to a non-member (it lapsed meanwhile).
        let next = asked(l.on_answer(t0, "p".into(), stranger, Some((hs[3], vec![])), &view));
        assert_ne!(next, h);
    }

    #[test]
    fn a_miss_everywhere_falls_back_to_the_routing_table_then_the_query_then_ends() {
        let hs = hosts(6);
        let outsider = PeerId::random();
        let view = View::all_direct(&hs);
        let t0 = Instant::now();
        let mut l = Lookups::default();
        let h0 = asked(l.start(t0, "p".into(), 0u8, vec![hs[0]], &view));
        let Some(LookupStep::Table { id, key }) = l.on_answer(t0, "p".into(), h0, None, &view)
        else {
            panic!("the routing table next");
        };
        assert_eq!(key, key_of(b"p"));
        // The table names a holder already asked, an outsider and a member.
        let h = asked(l.on_table(t0, id, vec![hs[0], outsider, hs[1]], &view));
        assert_eq!(h, hs[1], "neither the asked holder nor the outsider");
        let Some(LookupStep::Query { id }) = l.on_answer(t0, "p".into(), h, None, &view) else {
            panic!("Kademlia's query next");
        };
        // The query names an outsider (skipped) and a member.
        let h = asked(l.on_closest(t0, id, vec![outsider, hs[2]], &view));
        assert_eq!(h, hs[2]);
        let f = done(l.on_answer(t0, "p".into(), h, None, &view));
        assert_eq!((f.host, f.round_trips), (None, 3));
    }

    #[test]
    fn this_host_as_a_holder_answers_from_its_own_store() {
        let hs = hosts(3);
        let mut view = View {
            local: Some(hs[0]),
            ..View::all_direct(&hs)
        };
        view.held.insert("p".into(), hs[2]);
        let t0 = Instant::now();
        let mut l = Lookups::default();
        let f = done(l.start(t0, "p".into(), 0u8, vec![hs[0], hs[1]], &view));
        assert_eq!((f.host, f.round_trips), (Some(hs[2]), 0));
        // An entry of ours naming a host that lapsed is not an answer.
        view.members.remove(&hs[2]);
        let h = asked(l.start(t0, "p".into(), 0u8, vec![hs[0], hs[1]], &view));
        assert_eq!(h, hs[1]);
    }
}
