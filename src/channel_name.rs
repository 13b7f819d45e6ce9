//! Channel names and wildcard patterns (NATS syntax), and how they map to
//! gossipsub topics; the same patterns address groups of peers by id.
//!
//! A channel name is `.`-separated tokens, none empty: `sensors.kitchen.temp`.
//! A subscription takes a pattern: `*` matches exactly one token,
//! `>` (last only) one or more trailing tokens: `sensors.*.temp`, `logs.>`.
//! A token is a wildcard only as a whole token (`a*` is a plain token).
//!
//! Gossipsub carries publishes on [`TOPICS`] topics, chosen by a stable hash
//! of the channel's first token. A pattern whose first token is literal
//! joins one topic; one that starts with a wildcard joins all of them. So a
//! host receives the publishes of its channels' topics only (plus those of
//! other channels that hash alike, which it drops on receipt), never every
//! publish of the network unless it asked for everything. A topic per
//! channel would be exact but cannot serve `*.temp`; a topic per first
//! token would leave a leading wildcard nothing to join.

/// Longest channel name or pattern, in bytes.
pub(crate) const MAX_LEN: usize = crate::host::MAX_ID_LEN;

/// Gossipsub topics the channels are spread over.
pub(crate) const TOPICS: u64 = 64;

fn is_wild(token: &str) -> bool {
    token == "*" || token == ">"
}

/// Why `s` is not 1 to [`MAX_LEN`] bytes of non-empty `.`-separated tokens.
fn check_tokens(what: &str, s: &str) -> std::result::Result<(), String> {
    if s.is_empty() || s.len() > MAX_LEN {
        return Err(format!("{s:?}: {what}s are 1 to {MAX_LEN} bytes"));
    }
    if s.split('.').any(str::is_empty) {
        return Err(format!(
            "{s:?}: a {what} is `.`-separated tokens, none of them empty"
        ));
    }
    Ok(())
}

/// Why `pattern` is not tokens with `>` last only.
fn check_wildcards(what: &str, pattern: &str) -> std::result::Result<(), String> {
    check_tokens(what, pattern)?;
    let mut tokens = pattern.split('.').peekable();
    while let Some(t) = tokens.next() {
        if t == ">" && tokens.peek().is_some() {
            return Err(format!(
                "{pattern:?}: `>` matches the trailing tokens, so it comes last"
            ));
        }
    }
    Ok(())
}

/// Checks a channel name to publish on: tokens, no wildcards. The error is
/// the reason, for each operation's `InvalidChannel`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    check_tokens("channel name", name)?;
    if name.split('.').any(is_wild) {
        return Err(format!(
            "{name:?}: `*` and `>` are wildcards, for subscriptions only"
        ));
    }
    Ok(())
}

/// Checks a subscription pattern: tokens, `>` last only.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    check_wildcards("channel pattern", pattern)
}

/// Checks a pattern of peer ids for a group send: the syntax of a channel
/// pattern. A peer id is split at each `.` into tokens (an id without a
/// `.` is one token; empty tokens are tokens too, which `*` matches), so
/// `room.42.*` matches `room.42.ann` but neither `room.42` nor
/// `room.42.ann.b`; `room.>` matches both of the latter.
pub(crate) fn check_group(pattern: &str) -> Result<(), String> {
    check_wildcards("group pattern", pattern)
}

/// Whether the pattern contains a wildcard.
pub(crate) fn is_pattern(pattern: &str) -> bool {
    pattern.split('.').any(is_wild)
}

/// Whether `name` (a channel name) matches `pattern`.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    let mut names = name.split('.');
    for p in pattern.split('.') {
        match (p, names.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (p, Some(n)) if p == n => {}
            _ => return false,
        }
    }
    names.next().is_none()
}

/// FNV-1a: the same on every host and every build, unlike the std hasher.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn topic(bucket: u64) -> String {
    format!("ch/{bucket}")
}

/// The topic a publish on `name` goes on.
pub(crate) fn topic_of_name(name: &str) -> String {
    let first = name.split('.').next().unwrap_or(name);
    topic(stable_hash(first) % TOPICS)
}

/// Whether a frame naming `channel` may come on `topic`: a valid channel
/// name whose topic it is. A member cannot push a channel's publishes to
/// the hosts of another channel's topic.
pub(crate) fn belongs(topic: &str, channel: &str) -> bool {
    check_name(channel).is_ok() && topic_of_name(channel) == topic
}

/// The topics a subscription to `pattern` joins.
pub(crate) fn topics_of_pattern(pattern: &str) -> Vec<String> {
    let first = pattern.split('.').next().unwrap_or(pattern);
    if is_wild(first) {
        (0..TOPICS).map(topic).collect()
    } else {
        vec![topic(stable_hash(first) % TOPICS)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_wildcards_match_tokens() {
        let yes = [
            ("sensors.*.temp", "sensors.kitchen.temp"),
            ("sensors.>", "sensors.kitchen.temp"),
            ("sensors.>", "sensors.x"),
            (">", "a"),
            (">", "a.b.c"),
            ("*", "a"),
            ("*.*", "a.b"),
            ("a.b", "a.b"),
            ("a*", "a*"),
        ];
        for (p, n) in yes {
            assert!(matches(p, n), "{p} should match {n}");
        }
        let no = [
            ("sensors.*.temp", "sensors.temp"),
            ("sensors.*.temp", "sensors.a.b.temp"),
            ("sensors.>", "sensors"),
            ("*", "a.b"),
            ("a.b", "a.b.c"),
            ("a.b.c", "a.b"),
            ("a*", "ab"),
            ("*.temp", "sensors.kitchen.temp"),
        ];
        for (p, n) in no {
            assert!(!matches(p, n), "{p} should not match {n}");
        }
    }

    #[test]
    fn names_and_patterns_are_checked() {
        for ok in ["news", "a.b.c", "a-b_c/d", "a*"] {
            check_name(ok).unwrap();
            check_pattern(ok).unwrap();
        }
        for ok in ["*", ">", "a.*.c", "a.>", "*.>"] {
            check_pattern(ok).unwrap();
            assert!(check_name(ok).is_err(), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a.>.b", ">.a"] {
            assert!(check_pattern(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(MAX_LEN + 1)).is_err());
    }

    #[test]
    fn group_patterns_match_ids_by_token() {
        for bad in ["", "a..b", "a.>.b"] {
            assert!(check_group(bad).is_err(), "{bad:?}");
        }
        check_group("room.42.*").unwrap();
        assert!(matches("room.42.*", "room.42.ann"));
        assert!(!matches("room.42.*", "room.42"));
        assert!(!matches("room.42.*", "room.42.ann.b"));
        assert!(matches("room.>", "room.42.ann.b"));
        // An id without dots is one token; empty tokens of ids are tokens.
        assert!(matches("*", "alice"));
        assert!(!matches("*", "a.b"));
        assert!(matches("a.*.b", "a..b"));
    }

    #[test]
    fn a_frame_is_taken_only_on_its_channels_topic() {
        let news = topic_of_name("news.x");
        assert!(belongs(&news, "news.y"));
        // Some channel with another first token is on another topic.
        let other = (0..1000)
            .map(|i| format!("c{i}.x"))
            .find(|c| topic_of_name(c) != news)
            .unwrap();
        assert!(!belongs(&news, &other));
        assert!(!belongs(&news, "news.*"));
        assert!(!belongs(&topic_of_name("a"), "a..b"));
    }

    #[test]
    fn a_subscription_joins_the_topic_of_every_name_it_matches() {
        let names = ["sensors.kitchen.temp", "logs.a.b", "news", "x.y"];
        let patterns = ["sensors.*.temp", "sensors.>", "logs.>", ">", "*.y", "news"];
        for p in patterns {
            let topics = topics_of_pattern(p);
            for n in names {
                if matches(p, n) {
                    assert!(topics.contains(&topic_of_name(n)), "{p} / {n}");
                }
            }
        }
        assert_eq!(topics_of_pattern("sensors.>").len(), 1);
        assert_eq!(topics_of_pattern("*.temp").len(), TOPICS as usize);
        // Fixed for every host and build: the wire depends on it.
        assert_eq!(
            topic_of_name("news"),
            format!("ch/{}", stable_hash("news") % TOPICS)
        );
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
