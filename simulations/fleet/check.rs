//! The checks, Jepsen style, from the loads' record files: every
//! acknowledged send delivered exactly once, every failure typed and within
//! the deadline, every live peer findable at the end.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::Duration,
};

/// A send's outcome, as recorded.
#[derive(Debug)]
struct Send {
    to: String,
    start_ms: u64,
    elapsed_ms: u64,
    outcome: String,
}

/// What the records of one scenario show.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Tally {
    /// Sends started (with an outcome or not).
    pub sends: u64,
    /// Sends acknowledged (in the recipient's inbox).
    pub acknowledged: u64,
    /// Acknowledged, never received, receiver alive: must be 0.
    pub lost: u64,
    /// Acknowledged in the last second before the receiving load was
    /// killed and not read by it: the inbox a crash takes (allowed).
    pub lost_in_killed_inbox: u64,
    /// Received more than once: must be 0.
    pub duplicated: u64,
    /// Failed sends by error kind.
    pub failed: BTreeMap<String, u64>,
    /// Failed, but the recipient got it (an acknowledgement lost in the
    /// fault): allowed, the sender was told it may not have arrived.
    pub failed_but_delivered: u64,
    /// Failures that took longer than the deadline (plus 1 s): must be 0.
    pub slow_failures: u64,
    /// Sends with no outcome: their sender was killed mid-send.
    pub unknown: u64,
    /// Received with no send record (the sender was killed before it
    /// recorded the outcome).
    pub received_unrecorded: u64,
    /// Finds at the end that failed: must be 0.
    pub finds_failed: u64,
    /// Finds at the end.
    pub finds: u64,
}

impl Tally {
    /// The checks this tally fails, as sentences.
    pub(crate) fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.lost > 0 {
            out.push(format!("{} acknowledged sends were lost", self.lost));
        }
        if self.duplicated > 0 {
            out.push(format!("{} messages were delivered twice", self.duplicated));
        }
        if self.slow_failures > 0 {
            out.push(format!(
                "{} sends failed later than the deadline",
                self.slow_failures
            ));
        }
        if self.finds_failed > 0 {
            out.push(format!(
                "{} of {} live peers were not findable at the end",
                self.finds_failed, self.finds
            ));
        }
        if self.acknowledged == 0 {
            out.push("no send was acknowledged at all".into());
        }
        out
    }
}

/// Reads every load's record file in `dir` and checks them. `killed`
/// gives, per load index, the times (ms) it was killed.
pub(crate) fn tally(
    dir: &Path,
    loads: usize,
    killed: &HashMap<usize, Vec<u64>>,
    deadline: Duration,
) -> Result<Tally, String> {
    let mut sends: HashMap<u64, Send> = HashMap::new();
    let mut received: HashMap<u64, u64> = HashMap::new();
    let mut t = Tally::default();
    for j in 0..loads {
        let file = dir.join(format!("load{j}.rec"));
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            match (f.first().copied(), f.len()) {
                (Some("S"), 6) => {
                    let (Some(seq), Some(start_ms), Some(elapsed_ms)) = (num(1), num(3), num(4))
                    else {
                        return Err(format!("bad line in {}: {line}", file.display()));
                    };
                    sends.insert(
                        seq,
                        Send {
                            to: f[2].to_string(),
                            start_ms,
                            elapsed_ms,
                            outcome: f[5].to_string(),
                        },
                    );
                }
                (Some("R"), 4) => {
                    let Some(seq) = num(1) else {
                        return Err(format!("bad line in {}: {line}", file.display()));
                    };
                    *received.entry(seq).or_default() += 1;
                }
                (Some("F"), 4) => {
                    t.finds += 1;
                    if f[2] != "ok" {
                        t.finds_failed += 1;
                    }
                }
                // A line cut by kill -9 mid-write.
                _ => {}
            }
        }
    }
    // Sequence numbers are dense per load incarnation: the highest one
    // seen tells how many were started.
    let mut started: HashMap<u64, u64> = HashMap::new();
    for &seq in sends.keys().chain(received.keys()) {
        let (prefix, n) = (seq >> 40, seq & ((1 << 40) - 1));
        let top = started.entry(prefix).or_default();
        *top = (*top).max(n);
    }
    t.sends = started.values().sum();
    let slack = deadline.as_millis() as u64 + 1000;
    for (seq, s) in &sends {
        let got = received.get(seq).copied().unwrap_or(0);
        if got > 1 {
            t.duplicated += 1;
        }
        if s.outcome == "ok" {
            t.acknowledged += 1;
            if got == 0 {
                let ack = s.start_ms + s.elapsed_ms;
                let receiver = receiver_load(&s.to);
                let crash = receiver
                    .and_then(|r| killed.get(&r))
                    .is_some_and(|ts| ts.iter().any(|&k| ack <= k && k <= ack + 1000));
                if crash {
                    t.lost_in_killed_inbox += 1;
                } else {
                    t.lost += 1;
                }
            }
        } else {
            *t.failed.entry(s.outcome.clone()).or_default() += 1;
            if got > 0 {
                t.failed_but_delivered += 1;
            }
            if s.elapsed_ms > slack {
                t.slow_failures += 1;
            }
        }
    }
    for (seq, n) in &received {
        if !sends.contains_key(seq) {
            t.received_unrecorded += 1;
            if *n > 1 {
                t.duplicated += 1;
            }
        }
    }
    t.unknown = t.sends.saturating_sub(sends.len() as u64);
    Ok(t)
}

/// The load index in a peer id `load{j}.p{k}`.
fn receiver_load(peer: &str) -> Option<usize> {
    peer.strip_prefix("load")?.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_and_a_duplicated_message_are_both_caught() {
        let dir = tempfile::tempdir().unwrap();
        let s = |seq: u64, outcome: &str| format!("S {seq} load1.p0 1000 5 {outcome}\n");
        std::fs::write(
            dir.path().join("load0.rec"),
            [s(1, "ok"), s(2, "ok"), s(3, "Timeout"), s(4, "ok")].concat(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("load1.rec"),
            "R 1 load1.p0 1006\nR 2 load1.p0 1006\nR 2 load1.p0 1007\nF load0.p0 ok 1\n",
        )
        .unwrap();
        let t = tally(dir.path(), 2, &HashMap::new(), Duration::from_secs(1)).unwrap();
        assert_eq!(
            (t.sends, t.acknowledged, t.lost, t.duplicated),
            (4, 3, 1, 1)
        );
        assert_eq!(t.failed.get("Timeout"), Some(&1));
        assert_eq!(t.failures().len(), 2);
        // The same loss right before its receiver was killed is excused.
        let killed = HashMap::from([(1, vec![1500])]);
        let t = tally(dir.path(), 2, &killed, Duration::from_secs(1)).unwrap();
        assert_eq!((t.lost, t.lost_in_killed_inbox), (0, 1));
    }
}
