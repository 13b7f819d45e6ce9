//! This host's channel subscriptions, without I/O: which subscribers a
//! publish reaches, and which gossipsub topics the host is to be in.
//!
//! Subscriptions take NATS-style patterns (`sensors.*.temp`, `logs.>`). A
//! publish travels on the gossipsub topic of its channel's first token
//! (see [`crate::channel_name`]), so a pattern needs the topics
//! [`channel_name::topics_of_pattern`] names; a topic is joined while any
//! pattern of this host needs it. Every channel subscribed to is listed in
//! this host's signed record, which is why their number is capped.

use std::collections::HashMap;

use crate::{
    channel_name::{self, matches},
    core::membership::MAX_RECORD_CHANNELS,
    error::SubscribeError,
};

/// A subscriber, told apart from the others of its channel by an id.
pub(crate) trait Subscriber {
    /// The subscription's id.
    fn id(&self) -> u64;

    /// Whether its reader is gone (it is then dropped).
    fn is_gone(&self) -> bool {
        false
    }
}

/// What a subscription change asks of the loop: the topics to join or
/// leave, and that the host's record is to list the new set of channels.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changed {
    /// Topics no pattern needed before.
    pub join: Vec<String>,
    /// Topics no pattern needs any more.
    pub leave: Vec<String>,
}

/// The subscriptions by pattern (an exact channel name is a pattern too).
#[derive(Debug)]
pub(crate) struct Subscriptions<S> {
    subs: HashMap<String, Vec<S>>,
    /// The patterns with wildcards, matched against every publish (the
    /// exact ones are found by key).
    wild: Vec<String>,
    /// How many patterns need each topic.
    topic_refs: HashMap<String, usize>,
}

impl<S> Default for Subscriptions<S> {
    fn default() -> Self {
        Subscriptions {
            subs: HashMap::new(),
            wild: Vec::new(),
            topic_refs: HashMap::new(),
        }
    }
}

impl<S: Subscriber> Subscriptions<S> {
    /// Adds `sink` on `pattern` (checked by the caller). `others` is how
    /// many other entries (queue groups) this host's record lists: the
    /// record carries at most [`MAX_RECORD_CHANNELS`] in all, so a new
    /// pattern beyond is refused. `Some` when the pattern is new.
    pub(crate) fn subscribe(
        &mut self,
        pattern: String,
        sink: S,
        others: usize,
    ) -> Result<Option<Changed>, SubscribeError> {
        if let Some(sinks) = self.subs.get_mut(&pattern) {
            sinks.push(sink);
            return Ok(None);
        }
        if self.subs.len() + others >= MAX_RECORD_CHANNELS {
            return Err(SubscribeError::InvalidChannel(format!(
                "{pattern:?}: a host record lists at most {MAX_RECORD_CHANNELS} channels and queue groups, and this host has {}",
                self.subs.len() + others
            )));
        }
        let mut changed = Changed::default();
        for t in channel_name::topics_of_pattern(&pattern) {
            let n = self.topic_refs.entry(t.clone()).or_default();
            *n += 1;
            if *n == 1 {
                changed.join.push(t);
            }
        }
        if channel_name::is_pattern(&pattern) {
            self.wild.push(pattern.clone());
        }
        self.subs.insert(pattern, vec![sink]);
        Ok(Some(changed))
    }

    /// Ends subscription `id` on `pattern`, or all of them (`None`).
    /// `Some` when the pattern has no subscriber left.
    pub(crate) fn unsubscribe(&mut self, pattern: &str, id: Option<u64>) -> Option<Changed> {
        let sinks = self.subs.get_mut(pattern)?;
        match id {
            Some(id) => sinks.retain(|s| s.id() != id),
            None => sinks.clear(),
        }
        if sinks.is_empty() {
            Some(self.remove(pattern))
        } else {
            None
        }
    }

    /// Hands a publish on `channel` to every subscriber whose pattern
    /// matches it, once each (`hand` returns false for a subscriber that
    /// is gone, which is dropped). Returns what dropping them changed.
    pub(crate) fn deliver(&mut self, channel: &str, mut hand: impl FnMut(&S) -> bool) -> Changed {
        let mut changed = Changed::default();
        let mut to = |this: &mut Self, pattern: &str| {
            let Some(sinks) = this.subs.get_mut(pattern) else {
                return;
            };
            sinks.retain(|s| hand(s));
            if sinks.is_empty() {
                let c = this.remove(pattern);
                changed.leave.extend(c.leave);
            }
        };
        if !self.wild.is_empty() {
            let patterns: Vec<String> = self.wild_matching(channel).cloned().collect();
            for p in patterns {
                to(self, &p);
            }
        }
        to(self, channel);
        changed
    }

    /// The wildcard patterns that match `channel` (the exact one is found
    /// by key).
    fn wild_matching<'a>(&'a self, channel: &'a str) -> impl Iterator<Item = &'a String> {
        self.wild.iter().filter(move |p| matches(p, channel))
    }

    /// Whether `pred` holds for every subscriber whose pattern matches
    /// `channel` (true when none does).
    pub(crate) fn all(&self, channel: &str, pred: impl Fn(&S) -> bool) -> bool {
        let of = |pattern: &str| self.subs.get(pattern).into_iter().flatten();
        self.wild_matching(channel)
            .flat_map(|p| of(p))
            .chain(of(channel))
            .all(pred)
    }

    /// The patterns subscribed to.
    pub(crate) fn patterns(&self) -> impl Iterator<Item = &String> {
        self.subs.keys()
    }

    /// How many patterns are subscribed to.
    pub(crate) fn len(&self) -> usize {
        self.subs.len()
    }

    /// Drops every subscription (the host closes).
    pub(crate) fn clear(&mut self) {
        self.subs.clear();
        self.wild.clear();
        self.topic_refs.clear();
    }

    /// Removes `pattern`; the topics no other pattern needs are left.
    fn remove(&mut self, pattern: &str) -> Changed {
        self.subs.remove(pattern);
        self.wild.retain(|p| p != pattern);
        let mut changed = Changed::default();
        for t in channel_name::topics_of_pattern(pattern) {
            let Some(n) = self.topic_refs.get_mut(&t) else {
                continue;
            };
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.topic_refs.remove(&t);
                changed.leave.push(t);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber that records what it was handed, and may be gone.
    #[derive(Debug)]
    struct Sink {
        id: u64,
        open: bool,
        got: std::cell::RefCell<Vec<String>>,
    }

    impl Subscriber for Sink {
        fn id(&self) -> u64 {
            self.id
        }
    }

    fn sink(id: u64) -> Sink {
        Sink {
            id,
            open: true,
            got: Default::default(),
        }
    }

    fn topics(ps: &[&str]) -> Vec<String> {
        ps.iter().map(|p| channel_name::topic_of_name(p)).collect()
    }

    #[test]
    fn a_publish_reaches_each_matching_subscriber_once_even_where_patterns_overlap() {
        let mut s = Subscriptions::default();
        for (id, p) in [
            (1, "sensors.kitchen.temp"),
            (2, "sensors.*.temp"),
            (3, "sensors.>"),
            (4, "sensors.*.humidity"),
            (5, "logs.>"),
        ] {
            s.subscribe(p.to_string(), sink(id), 0).unwrap();
        }
        let mut reached = Vec::new();
        let changed = s.deliver("sensors.kitchen.temp", |k| {
            reached.push(k.id);
            true
        });
        reached.sort();
        assert_eq!(reached, vec![1, 2, 3]);
        assert_eq!(changed, Changed::default());
        let mut reached = Vec::new();
        s.deliver("logs.a.b", |k| {
            reached.push(k.id);
            k.got.borrow_mut().push("x".into());
            true
        });
        assert_eq!(reached, vec![5]);
        // `all` asks the same subscribers as a delivery, and only them.
        let asked = std::cell::RefCell::new(Vec::new());
        let ask = |k: &Sink| {
            asked.borrow_mut().push(k.id);
            k.id != 4
        };
        assert!(s.all("sensors.kitchen.temp", ask));
        asked.borrow_mut().sort();
        assert_eq!(*asked.borrow(), vec![1, 2, 3]);
        assert!(!s.all("sensors.hall.humidity", |k| k.id != 4));
        assert!(s.all("nobody.here", |_| false), "true when none matches");
    }

    #[test]
    fn a_topic_is_joined_once_and_left_with_the_last_pattern_that_needs_it() {
        let mut s = Subscriptions::default();
        let first = s.subscribe("a.b".into(), sink(1), 0).unwrap().unwrap();
        assert_eq!(first.join, topics(&["a.b"]));
        // A second subscriber on the same channel changes nothing.
        assert!(s.subscribe("a.b".into(), sink(2), 0).unwrap().is_none());
        // Another pattern on the same first token needs the same topic.
        let same = s.subscribe("a.*".into(), sink(3), 0).unwrap().unwrap();
        assert!(same.join.is_empty(), "{same:?}");
        assert!(s.unsubscribe("a.b", Some(1)).is_none(), "one is left");
        let gone = s.unsubscribe("a.b", Some(2)).unwrap();
        assert!(gone.leave.is_empty(), "a.* still needs the topic");
        let last = s.unsubscribe("a.*", None).unwrap();
        assert_eq!(last.leave, topics(&["a.b"]));
        assert_eq!(s.len(), 0);
        assert!(s.unsubscribe("a.*", None).is_none());
    }

    #[test]
    fn subscribers_that_are_gone_are_dropped_on_delivery() {
        let mut s = Subscriptions::default();
        s.subscribe("x.y".into(), sink(1), 0).unwrap();
        s.subscribe(
            "x.>".into(),
            Sink {
                open: false,
                ..sink(2)
            },
            0,
        )
        .unwrap();
        let changed = s.deliver("x.y", |k| k.open);
        assert!(changed.leave.is_empty(), "x.y still needs the topic");
        assert_eq!(s.patterns().collect::<Vec<_>>(), vec!["x.y"]);
        let mut reached = 0;
        s.deliver("x.y", |_| {
            reached += 1;
            false
        });
        assert_eq!(reached, 1);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn the_record_limit_counts_queue_groups_too() {
        let mut s = Subscriptions::default();
        for i in 0..MAX_RECORD_CHANNELS - 10 {
            s.subscribe(format!("c{i}"), sink(0), 10 - 1).unwrap();
        }
        // With ten queue groups the record is full.
        let err = s.subscribe("one.more".into(), sink(0), 10).unwrap_err();
        assert!(matches!(err, SubscribeError::InvalidChannel(_)), "{err}");
        // Another subscriber of a channel listed already still joins.
        assert!(s.subscribe("c0".into(), sink(1), 10).unwrap().is_none());
    }
}
