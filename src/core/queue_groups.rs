//! Queue groups without I/O: this host's members of each group, whose turn
//! a publish is, and the hand-over of a publish from one host of a group
//! to the next until a member takes it (the protocol is described in
//! [`crate::queue_group`]).
//!
//! The loop gives [`QueueGroups`] a publish with the groups other hosts
//! list in their records, and carries out the [`Step`]s it returns: ask a
//! host to take the publish, or answer the publisher. A member on this
//! host is offered the publish through a closure (the member's queue is
//! the loop's), so the hand-over runs between several instances in a test.

use std::collections::HashMap;

use libp2p::PeerId;
use rand::Rng;

use crate::{
    channel_name::matches,
    core::{membership::MAX_RECORD_CHANNELS, subscriptions::Subscriber},
    error::{PublishError, SubscribeError},
    message::Payload,
    protocol::Request,
    queue_group::{order, QueueGroup},
};

/// A group's key: its pattern and its name.
pub(crate) type Key = (String, String);

/// One group's members on this host.
#[derive(Debug)]
struct Local<S> {
    sinks: Vec<S>,
    /// The member whose turn is next.
    next: usize,
}

/// A publish on its way to one member of one group; `R` answers its
/// publisher.
#[derive(Debug)]
struct Flight<R> {
    channel: String,
    key: Key,
    payload: Payload,
    /// The hosts to try, first choice first.
    hosts: Vec<PeerId>,
    /// The next of `hosts` to try.
    next: usize,
    reply: R,
}

/// What the loop is to do for a hand-over.
#[derive(Debug)]
pub(crate) enum Step<R> {
    /// Ask `host` to give the publish to one member of its group; report
    /// its answer with [`QueueGroups::on_answer`] and this `flight`.
    Ask {
        flight: u64,
        host: PeerId,
        request: Request,
    },
    /// The hand-over is over: a member has it (`here`: one on this
    /// host), or none could take it ([`PublishError::QueueUnavailable`]).
    Done {
        reply: R,
        result: Result<(), PublishError>,
        here: bool,
    },
}

/// The queue groups of one host.
#[derive(Debug)]
pub(crate) struct QueueGroups<S, R> {
    local: HashMap<Key, Local<S>>,
    /// Each group's turn counter on this host (started at random, so that
    /// publishing hosts do not all choose the same host first).
    turns: HashMap<Key, u64>,
    flights: HashMap<u64, Flight<R>>,
    next_flight: u64,
}

impl<S, R> Default for QueueGroups<S, R> {
    fn default() -> Self {
        QueueGroups {
            local: HashMap::new(),
            turns: HashMap::new(),
            flights: HashMap::new(),
            next_flight: 0,
        }
    }
}

impl<S: Subscriber, R> QueueGroups<S, R> {
    /// Adds `sink` as a member of the group `key`. `others` is how many
    /// channels this host's record lists besides its groups: the record
    /// carries at most [`MAX_RECORD_CHANNELS`] in all, so a new group
    /// beyond is refused.
    pub(crate) fn subscribe(
        &mut self,
        key: Key,
        sink: S,
        others: usize,
    ) -> Result<(), SubscribeError> {
        if let Some(l) = self.local.get_mut(&key) {
            l.sinks.push(sink);
            return Ok(());
        }
        if self.local.len() + others >= MAX_RECORD_CHANNELS {
            return Err(SubscribeError::InvalidChannel(format!(
                "{:?}: a host record lists at most {MAX_RECORD_CHANNELS} channels and queue groups, and this host has {}",
                key.0,
                self.local.len() + others
            )));
        }
        self.local.insert(
            key,
            Local {
                sinks: vec![sink],
                next: 0,
            },
        );
        Ok(())
    }

    /// Ends member `id` of the group `key`, or all of them (`None`);
    /// whether the group has no member here any more.
    pub(crate) fn unsubscribe(&mut self, key: &Key, id: Option<u64>) -> bool {
        let Some(l) = self.local.get_mut(key) else {
            return false;
        };
        match id {
            Some(id) => l.sinks.retain(|s| s.id() != id),
            None => l.sinks.clear(),
        }
        if l.sinks.is_empty() {
            self.local.remove(key);
            return true;
        }
        false
    }

    /// This host's groups, for its record.
    pub(crate) fn interests(&self) -> Vec<QueueGroup> {
        let mut v: Vec<QueueGroup> = self
            .local
            .iter()
            .map(|((pattern, group), l)| QueueGroup {
                pattern: pattern.clone(),
                group: group.clone(),
                members: u32::try_from(l.sinks.len()).unwrap_or(u32::MAX),
            })
            .collect();
        v.sort();
        v
    }

    /// Groups this host has members of.
    pub(crate) fn len(&self) -> usize {
        self.local.len()
    }

    /// The patterns of this host's groups.
    pub(crate) fn patterns(&self) -> impl Iterator<Item = &String> {
        self.local.keys().map(|(p, _)| p)
    }

    /// Hands a publish on `channel` to one member of each group whose
    /// pattern matches it, on this host (`local`) or on the hosts of
    /// `remote` (each with the groups its record lists). Each group's
    /// publisher is answered by its own `reply()`; `hand` offers the
    /// publish to one of this host's members.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn hand_over<'a>(
        &mut self,
        channel: &str,
        payload: &Payload,
        local: PeerId,
        remote: impl Iterator<Item = (PeerId, &'a [QueueGroup])>,
        rng: &mut impl Rng,
        mut reply: impl FnMut() -> R,
        hand: &mut impl FnMut(&S, &str, &Payload) -> bool,
    ) -> Vec<Step<R>> {
        let groups = self.groups(channel, local, remote);
        let mut steps = Vec::with_capacity(groups.len());
        for (key, candidates) in groups {
            let turn = self
                .turns
                .entry(key.clone())
                .or_insert_with(|| rng.gen::<u64>());
            *turn = turn.wrapping_add(1);
            let flight = Flight {
                channel: channel.to_string(),
                key,
                payload: payload.clone(),
                hosts: order(&candidates, *turn),
                next: 0,
                reply: reply(),
            };
            steps.push(self.advance(flight, local, hand));
        }
        steps
    }

    /// A host's answer to the hand-over `flight`: a member took it
    /// (`taken`), or on to the next host. `None` for a flight that is not
    /// (or no longer) waiting.
    pub(crate) fn on_answer(
        &mut self,
        flight: u64,
        taken: bool,
        local: PeerId,
        hand: &mut impl FnMut(&S, &str, &Payload) -> bool,
    ) -> Option<Step<R>> {
        let f = self.flights.remove(&flight)?;
        if taken {
            return Some(Step::Done {
                reply: f.reply,
                result: Ok(()),
                here: false,
            });
        }
        Some(self.advance(f, local, hand))
    }

    /// Every group matching `channel`, with its hosts (sorted) and their
    /// member counts.
    fn groups<'a>(
        &self,
        channel: &str,
        local: PeerId,
        remote: impl Iterator<Item = (PeerId, &'a [QueueGroup])>,
    ) -> Vec<(Key, Vec<(PeerId, u32)>)> {
        let mut groups: HashMap<Key, Vec<(PeerId, u32)>> = HashMap::new();
        for (key, l) in &self.local {
            if matches(&key.0, channel) {
                let members = u32::try_from(l.sinks.len()).unwrap_or(u32::MAX);
                groups
                    .entry(key.clone())
                    .or_default()
                    .push((local, members));
            }
        }
        for (host, queues) in remote {
            if host == local {
                continue;
            }
            for q in queues {
                if q.members > 0 && matches(&q.pattern, channel) {
                    groups
                        .entry((q.pattern.clone(), q.group.clone()))
                        .or_default()
                        .push((host, q.members));
                }
            }
        }
        let mut out: Vec<_> = groups.into_iter().collect();
        for (_, hosts) in &mut out {
            hosts.sort();
        }
        out
    }

    /// Offers the flight to its next host: at once if it is this one, by a
    /// request otherwise; fails it when no host is left.
    fn advance(
        &mut self,
        mut f: Flight<R>,
        local: PeerId,
        hand: &mut impl FnMut(&S, &str, &Payload) -> bool,
    ) -> Step<R> {
        while let Some(&host) = f.hosts.get(f.next) {
            f.next += 1;
            if host != local {
                let request = Request::Queue {
                    channel: f.channel.clone(),
                    pattern: f.key.0.clone(),
                    group: f.key.1.clone(),
                    payload: f.payload.clone(),
                };
                let flight = self.next_flight;
                self.next_flight += 1;
                self.flights.insert(flight, f);
                return Step::Ask {
                    flight,
                    host,
                    request,
                };
            }
            if self.take(&f.key, &f.channel, &f.payload, hand) {
                return Step::Done {
                    reply: f.reply,
                    result: Ok(()),
                    here: true,
                };
            }
        }
        Step::Done {
            reply: f.reply,
            result: Err(PublishError::QueueUnavailable {
                pattern: f.key.0,
                group: f.key.1,
            }),
            here: false,
        }
    }

    /// Gives a publish on `channel` to one member of this host's group
    /// `key`, in turn (another host handed it over, or it is this host's
    /// turn); whether one took it (members whose queue is full are passed
    /// over, gone ones dropped).
    pub(crate) fn take(
        &mut self,
        key: &Key,
        channel: &str,
        payload: &Payload,
        hand: &mut impl FnMut(&S, &str, &Payload) -> bool,
    ) -> bool {
        let Some(l) = self.local.get_mut(key) else {
            return false;
        };
        l.sinks.retain(|s| !s.is_gone());
        let n = l.sinks.len();
        for i in 0..n {
            let at = (l.next + i) % n;
            if hand(&l.sinks[at], channel, payload) {
                l.next = (at + 1) % n;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use rand::{rngs::StdRng, SeedableRng};

    use super::*;
    use crate::message::Encoding;

    /// A member that counts what it took, and takes nothing while full.
    #[derive(Debug)]
    struct Member {
        id: u64,
        full: Cell<bool>,
        gone: bool,
        took: Cell<u32>,
    }

    impl Subscriber for Member {
        fn id(&self) -> u64 {
            self.id
        }
        fn is_gone(&self) -> bool {
            self.gone
        }
    }

    fn member(id: u64) -> Member {
        Member {
            id,
            full: Cell::new(false),
            gone: false,
            took: Cell::new(0),
        }
    }

    fn offer(m: &Member, _: &str, _: &Payload) -> bool {
        if m.full.get() {
            return false;
        }
        m.took.set(m.took.get() + 1);
        true
    }

    fn payload() -> Payload {
        Payload {
            encoding: Encoding::Postcard,
            bytes: vec![1u8].into(),
        }
    }

    type Groups = QueueGroups<Member, u32>;

    fn key() -> Key {
        ("jobs.*".into(), "workers".into())
    }

    fn listed(members: u32) -> Vec<QueueGroup> {
        vec![QueueGroup {
            pattern: "jobs.*".into(),
            group: "workers".into(),
            members,
        }]
    }

    #[test]
    fn publishes_are_spread_over_hosts_in_proportion_to_their_members() {
        let mut g = Groups::default();
        let local = PeerId::random();
        g.subscribe(key(), member(1), 0).unwrap();
        let (b, c) = (PeerId::random(), PeerId::random());
        let (lb, lc) = (listed(2), listed(1));
        let mut rng = StdRng::seed_from_u64(7);
        let mut asked = HashMap::<PeerId, u32>::new();
        for i in 0..400 {
            let remote = [(b, &lb[..]), (c, &lc[..]), (local, &lb[..])].into_iter();
            let steps = g.hand_over(
                "jobs.x",
                &payload(),
                local,
                remote,
                &mut rng,
                || i,
                &mut offer,
            );
            assert_eq!(steps.len(), 1, "one group matches");
            match steps.into_iter().next() {
                Some(Step::Ask { host, flight, .. }) => {
                    *asked.entry(host).or_default() += 1;
                    // The host's member took it.
                    let done = g.on_answer(flight, true, local, &mut offer);
                    assert!(
                        matches!(done, Some(Step::Done { reply, result: Ok(()), here: false }) if reply == i)
                    );
                }
                Some(Step::Done { result, here, .. }) => {
                    assert!(result.is_ok() && here);
                }
                None => unreachable!(),
            }
        }
        // 4 members: 2 on b, 1 on c, 1 here (this host's own entry in the
        // membership is not counted twice).
        assert_eq!((asked[&b], asked[&c]), (200, 100));
        assert_eq!(g.local[&key()].sinks[0].took.get(), 100);
        // A channel no pattern matches hands nothing over.
        let none = g.hand_over(
            "other",
            &payload(),
            local,
            std::iter::empty(),
            &mut rng,
            || 0,
            &mut offer,
        );
        assert!(none.is_empty());
    }

    #[test]
    fn when_a_host_cannot_take_it_the_next_one_is_asked_then_the_publisher_told() {
        let mut g = Groups::default();
        let local = PeerId::random();
        let mut hosts = [PeerId::random(), PeerId::random()];
        hosts.sort();
        let l = listed(1);
        let mut rng = StdRng::seed_from_u64(1);
        let remote = hosts.iter().map(|h| (*h, &l[..]));
        let steps = g.hand_over(
            "jobs.x",
            &payload(),
            local,
            remote,
            &mut rng,
            || 5,
            &mut offer,
        );
        let Some(Step::Ask {
            flight,
            host: first,
            ..
        }) = steps.into_iter().next()
        else {
            panic!("a host is asked");
        };
        // Its host is gone (or refused): the other is asked.
        let Some(Step::Ask {
            flight,
            host: second,
            ..
        }) = g.on_answer(flight, false, local, &mut offer)
        else {
            panic!("the next host");
        };
        assert_ne!(first, second);
        // No host could take it: the publisher learns it.
        let Some(Step::Done {
            reply: 5,
            result: Err(PublishError::QueueUnavailable { group, .. }),
            ..
        }) = g.on_answer(flight, false, local, &mut offer)
        else {
            panic!("unavailable");
        };
        assert_eq!(group, "workers");
        assert!(
            g.on_answer(flight, true, local, &mut offer).is_none(),
            "answered once"
        );
    }

    #[test]
    fn local_members_take_turns_and_a_full_or_gone_one_is_passed_over() {
        let mut g = Groups::default();
        for id in 0..3 {
            g.subscribe(key(), member(id), 0).unwrap();
        }
        for _ in 0..6 {
            assert!(g.take(&key(), "jobs.x", &payload(), &mut offer));
        }
        let took: Vec<u32> = g.local[&key()].sinks.iter().map(|m| m.took.get()).collect();
        assert_eq!(took, vec![2, 2, 2]);
        g.local.get_mut(&key()).unwrap().sinks[1].full.set(true);
        g.local.get_mut(&key()).unwrap().sinks[2].gone = true;
        for _ in 0..4 {
            assert!(g.take(&key(), "jobs.x", &payload(), &mut offer));
        }
        let took: Vec<u32> = g.local[&key()].sinks.iter().map(|m| m.took.get()).collect();
        assert_eq!(
            took,
            vec![6, 2],
            "the gone member is dropped, the full one skipped"
        );
        g.local.get_mut(&key()).unwrap().sinks[0].full.set(true);
        assert!(
            !g.take(&key(), "jobs.x", &payload(), &mut offer),
            "all full"
        );
        assert!(!g.take(&("x".into(), "y".into()), "x", &payload(), &mut offer));
        // Members end; the group ends with the last.
        assert!(!g.unsubscribe(&key(), Some(0)));
        assert_eq!(g.interests()[0].members, 1);
        assert!(g.unsubscribe(&key(), None));
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn the_record_limit_counts_channels_too() {
        let mut g = Groups::default();
        g.subscribe(key(), member(0), MAX_RECORD_CHANNELS - 1)
            .unwrap();
        let err = g
            .subscribe(("a".into(), "b".into()), member(1), MAX_RECORD_CHANNELS - 1)
            .unwrap_err();
        assert!(matches!(err, SubscribeError::InvalidChannel(_)));
        g.subscribe(key(), member(2), MAX_RECORD_CHANNELS).unwrap();
    }
}
