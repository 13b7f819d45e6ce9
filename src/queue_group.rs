//! Queue groups (as NATS's): subscriptions that share a channel's
//! publishes, each publish going to exactly one member of the group.
//!
//! Each host lists its queue groups in its signed membership record, with
//! how many members each has there, so every host knows every group's
//! hosts. A publish is handed, for each group whose pattern matches its
//! channel, to one host of the group, chosen in turn in proportion to its
//! members (so members share the work evenly); that host gives it to one of
//! its members, in turn. The hand-over is a request, answered once a
//! member's subscription has it: when the chosen host cannot take it (gone,
//! unreachable, or every member's queue full), the next host is asked, so
//! when a member's host dies the rest take over. `publish` resolves after
//! every group has it, or fails with [`crate::PublishError::QueueUnavailable`]
//! when no member of a group could take it.
//!
//! The choice is this module's pure part: [`order`] turns the group's
//! hosts and a turn counter into the hosts to try, first choice first.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// A queue group a host has members of, as its record lists it (see
/// [`crate::Host::subscribe_queue`] and [`crate::HostInfo`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueGroup {
    /// The channel pattern the group subscribes to.
    pub pattern: String,
    /// The group's name.
    pub group: String,
    /// Members of the group on the host (at least 1).
    pub members: u32,
}

/// Checks a queue group's name: 1 to 256 bytes.
pub(crate) fn check_group_name(group: &str) -> Result<(), String> {
    if group.is_empty() || group.len() > crate::host::MAX_ID_LEN {
        return Err(format!(
            "queue group {group:?}: names are 1 to {} bytes",
            crate::host::MAX_ID_LEN
        ));
    }
    Ok(())
}

/// The hosts to try for one publish to a group whose hosts have
/// `candidates` members each (sorted by host, none 0): the host whose
/// share of the members holds position `turn` (modulo their sum) first,
/// then the others in order.
pub(crate) fn order(candidates: &[(PeerId, u32)], turn: u64) -> Vec<PeerId> {
    let total: u64 = candidates.iter().map(|(_, n)| u64::from(*n)).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut at = turn % total;
    let first = candidates
        .iter()
        .position(|(_, n)| {
            let n = u64::from(*n);
            if at < n {
                return true;
            }
            at -= n;
            false
        })
        .unwrap_or(0);
    candidates[first..]
        .iter()
        .chain(&candidates[..first])
        .map(|(h, _)| *h)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_spread_publishes_in_proportion_to_members_and_fall_back_in_order() {
        let mut hosts: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        hosts.sort();
        let c = vec![(hosts[0], 1), (hosts[1], 3), (hosts[2], 2)];
        let mut firsts = std::collections::HashMap::new();
        for turn in 100..106 {
            let o = order(&c, turn);
            assert_eq!(o.len(), 3);
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, hosts, "every host is tried once");
            *firsts.entry(o[0]).or_insert(0) += 1;
            // After the first choice, the next hosts in order.
            let i = hosts.iter().position(|h| *h == o[0]).unwrap();
            assert_eq!(o[1], hosts[(i + 1) % 3]);
        }
        assert_eq!(firsts[&hosts[0]], 1);
        assert_eq!(firsts[&hosts[1]], 3);
        assert_eq!(firsts[&hosts[2]], 2);
        assert!(order(&[], 7).is_empty());
    }

    #[test]
    fn group_names_are_checked() {
        assert!(check_group_name("workers").is_ok());
        assert!(check_group_name("").is_err());
        assert!(check_group_name(&"w".repeat(257)).is_err());
    }
}
