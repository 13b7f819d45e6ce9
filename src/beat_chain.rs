//! Heartbeat counters that only their own host can raise: a hash chain.
//!
//! Counters spread second hand, in digests, so a counter alone proves
//! nothing: a member could claim `u64::MAX` for another host (whose real
//! counter would then never rise again anywhere, evicting it) or keep
//! raising a dead host's counter (keeping it alive). So every counter
//! travels with a proof. A host draws a random seed and hashes it
//! [`CHAIN_LEN`] times; the last hash, the chain's *tip*, goes in its signed
//! record as an [`Anchor`] together with the counter it stands for. Beat
//! `start + i` is proved by the value `i` hashes before the tip, which only
//! the holder of the seed can produce; anyone checks it by hashing it
//! forward to the last proved value. A relay of the value cannot raise it,
//! and once a host dies no new proof appears. When a chain runs out the host
//! signs a record with a new anchor (once every `CHAIN_LEN` heartbeats).
//!
//! Cost: 17 bytes per digest entry (the value, as bytes) and, per receiving
//! host, one hash per counter step of every other host (about one per host
//! per heartbeat). Answers to compact digests carry only the counters the
//! asker lacks, which halves the bytes of an exchange's answer.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// Counters one chain can prove.
pub(crate) const CHAIN_LEN: u64 = 4096;
/// One in this many chain values is kept; the others are hashed again
/// from the next kept one when needed (at most this many hashes).
const KEEP_EVERY: u64 = 64;

/// A chain value: 128 bits of SHA-256, far beyond reach of a preimage search.
pub(crate) type Token = [u8; 16];

/// One step of the chain.
pub(crate) fn step(t: &Token) -> Token {
    let d = sha2::Sha256::digest(t);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// The part of a chain a host signs in its record: `tip` proves counter
/// `start`, and the values before it prove `start + 1 ..= start + CHAIN_LEN`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Anchor {
    /// The counter the tip stands for.
    pub start: u64,
    /// The last hash of the chain.
    #[serde(with = "serde_bytes")]
    pub tip: Token,
}

/// A counter with its proof.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Proved {
    /// The counter.
    pub beat: u64,
    /// Its chain value (as bytes on the wire: one copy instead of sixteen
    /// one-byte fields, and digests carry one per host).
    #[serde(with = "serde_bytes")]
    pub proof: Token,
}

impl Anchor {
    /// The counter the anchor itself proves.
    pub(crate) fn proved(&self) -> Proved {
        Proved {
            beat: self.start,
            proof: self.tip,
        }
    }

    /// Whether `beat` is within what this anchor's chain can prove.
    pub(crate) fn covers(&self, beat: u64) -> bool {
        beat >= self.start && beat - self.start <= CHAIN_LEN
    }
}

/// Whether `new` proves a higher counter than `known` (both of the chain
/// of one anchor), spending at most `budget` hashes (the count spent is
/// taken off it, whatever the outcome).
pub(crate) fn verify(known: &Proved, new: &Proved, budget: &mut u64) -> bool {
    if new.beat <= known.beat {
        return false;
    }
    let steps = new.beat - known.beat;
    if steps > CHAIN_LEN || steps > *budget {
        return false;
    }
    *budget -= steps;
    let mut t = new.proof;
    for _ in 0..steps {
        t = step(&t);
    }
    t == known.proof
}

/// The chain of this host.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    start: u64,
    /// `kept[k]` is the value proving `start + k * KEEP_EVERY`.
    kept: Vec<Token>,
}

impl Chain {
    /// A new chain whose tip proves counter `start`.
    pub(crate) fn new(start: u64) -> Chain {
        let mut seed = Token::default();
        rand::thread_rng().fill_bytes(&mut seed);
        // Values from the seed (proving start + CHAIN_LEN) back to the tip.
        let mut kept = vec![Token::default(); (CHAIN_LEN / KEEP_EVERY) as usize + 1];
        let mut t = seed;
        for i in (0..=CHAIN_LEN).rev() {
            if i % KEEP_EVERY == 0 {
                kept[(i / KEEP_EVERY) as usize] = t;
            }
            if i > 0 {
                t = step(&t);
            }
        }
        Chain { start, kept }
    }

    /// The anchor to sign.
    pub(crate) fn anchor(&self) -> Anchor {
        Anchor {
            start: self.start,
            tip: self.kept[0],
        }
    }

    /// The proof of counter `beat`, if this chain covers it.
    pub(crate) fn prove(&self, beat: u64) -> Option<Proved> {
        if !self.anchor().covers(beat) {
            return None;
        }
        let i = beat - self.start;
        let k = i.div_ceil(KEEP_EVERY);
        let mut t = *self.kept.get(k as usize)?;
        for _ in i..k * KEEP_EVERY {
            t = step(&t);
        }
        Some(Proved { beat, proof: t })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_forward_and_only_forward() {
        let c = Chain::new(10);
        let a = c.anchor();
        assert_eq!(c.prove(10), Some(a.proved()));
        let mut budget = u64::MAX;
        for beat in [11, 12, 75, 74 + KEEP_EVERY, 10 + CHAIN_LEN] {
            let p = c.prove(beat).unwrap();
            assert!(verify(&a.proved(), &p, &mut budget), "beat {beat}");
        }
        let p20 = c.prove(20).unwrap();
        let p30 = c.prove(30).unwrap();
        assert!(verify(&p20, &p30, &mut budget));
        assert!(!verify(&p30, &p20, &mut budget), "backwards");
        assert!(!verify(&p20, &p20, &mut budget), "same counter");
        assert_eq!(c.prove(11 + CHAIN_LEN), None);
        assert_eq!(c.prove(9), None);
    }

    #[test]
    fn a_forged_counter_does_not_verify() {
        let c = Chain::new(0);
        let known = c.prove(5).unwrap();
        let mut budget = u64::MAX;
        let forged = Proved {
            beat: u64::MAX,
            proof: known.proof,
        };
        assert!(!verify(&known, &forged, &mut budget));
        let guess = Proved {
            beat: 6,
            proof: [7; 16],
        };
        assert!(!verify(&known, &guess, &mut budget));
        // Another chain's values prove nothing on this one.
        let other = Chain::new(0).prove(6).unwrap();
        assert!(!verify(&known, &other, &mut budget));
    }

    #[test]
    fn the_budget_bounds_the_hashing() {
        let c = Chain::new(0);
        let mut budget = 10;
        assert!(!verify(
            &c.anchor().proved(),
            &c.prove(11).unwrap(),
            &mut budget
        ));
        assert_eq!(budget, 10, "refused before hashing");
        assert!(verify(
            &c.anchor().proved(),
            &c.prove(10).unwrap(),
            &mut budget
        ));
        assert_eq!(budget, 0);
    }
}
