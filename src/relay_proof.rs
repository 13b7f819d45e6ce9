//! One signature for a whole relay bundle.
//!
//! A relayed request must prove who made it (the destination acts on it as
//! the origin's own; see `event_loop::relay`). Signing each request cost an
//! ed25519 signature per (origin, destination) pair: at 512 hosts a burst of
//! registrations is about 260,000 of them. Instead the origin signs the
//! requests of one bundle together: each request is a leaf of a Merkle tree
//! (SHA-256 of its destination and bytes), the origin signs the root once,
//! and each request carries the root's signature and the sibling hashes
//! from its leaf up to the root (at most 12 for a bundle's 4,096 requests).
//! The destination recomputes the root from the request it got and checks
//! the signature: a relay can still neither alter a request, nor send it to
//! another destination, nor make one up.
//!
//! Tree shape: leaves in order; each level pairs neighbours left to right
//! and hashes them (with a tag unlike the leaves'); an odd last node moves
//! up unchanged.

use libp2p::identity::{Keypair, PublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A SHA-256 hash.
pub(crate) type Hash = [u8; 32];

/// Most requests signed together (a bundle holds at most 4,096).
pub(crate) const MAX_LEAVES: u32 = 1 << 16;

/// Proof that the origin signed one request of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Proof {
    /// Place of the request among those signed together.
    pub index: u32,
    /// How many were signed together.
    pub count: u32,
    /// Sibling hashes from the request's leaf up to the root.
    pub path: Vec<Hash>,
    /// The origin's signature of the root.
    pub signature: Vec<u8>,
}

/// The leaf of a request for destination `to` (peer id bytes) made of
/// `inner` (its postcard bytes).
pub(crate) fn leaf(to: &[u8], inner: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(b"distribus/relay/leaf/1");
    h.update((to.len() as u32).to_be_bytes());
    h.update(to);
    h.update(inner);
    h.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(b"distribus/relay/node/1");
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn signed_bytes(root: &Hash) -> Vec<u8> {
    let mut b = b"distribus/relay/root/1".to_vec();
    b.extend_from_slice(root);
    b
}

/// Signs `leaves` together: one proof per leaf, in order. `None` if there
/// are none, too many, or the key cannot sign.
pub(crate) fn sign(key: &Keypair, leaves: &[Hash]) -> Option<Vec<Proof>> {
    let count = u32::try_from(leaves.len()).ok()?;
    if count == 0 || count > MAX_LEAVES {
        return None;
    }
    // Every level of the tree, leaves first.
    let mut levels = vec![leaves.to_vec()];
    while levels.last().is_some_and(|l| l.len() > 1) {
        let below = levels.last()?;
        let up = below
            .chunks(2)
            .filter_map(|pair| match pair {
                [l, r] => Some(node(l, r)),
                [only] => Some(*only),
                _ => None,
            })
            .collect();
        levels.push(up);
    }
    let root = levels.last()?.first()?;
    let signature = key.sign(&signed_bytes(root)).ok()?;
    let proofs = (0..leaves.len())
        .map(|i| {
            let mut path = Vec::new();
            let mut at = i;
            for level in &levels[..levels.len() - 1] {
                let sibling = at ^ 1;
                if sibling < level.len() {
                    path.push(level[sibling]);
                }
                at /= 2;
            }
            Proof {
                index: i as u32,
                count,
                path,
                signature: signature.clone(),
            }
        })
        .collect();
    Some(proofs)
}

/// The root that `leaf` at the proof's place leads to, if the proof is
/// well formed (every sibling used, none missing).
fn root_of(leaf: Hash, proof: &Proof) -> Option<Hash> {
    if proof.count == 0 || proof.count > MAX_LEAVES || proof.index >= proof.count {
        return None;
    }
    let (mut at, mut width, mut hash) = (proof.index, proof.count, leaf);
    let mut path = proof.path.iter();
    while width > 1 {
        let sibling = at ^ 1;
        if sibling < width {
            let s = path.next()?;
            hash = if at % 2 == 0 {
                node(&hash, s)
            } else {
                node(s, &hash)
            };
        }
        at /= 2;
        width = width.div_ceil(2);
    }
    path.next().is_none().then_some(hash)
}

/// Whether `key` signed the request with this leaf.
pub(crate) fn verify(key: &PublicKey, leaf: Hash, proof: &Proof) -> bool {
    root_of(leaf, proof).is_some_and(|root| key.verify(&signed_bytes(&root), &proof.signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf(b"to", &i.to_be_bytes())).collect()
    }

    #[test]
    fn every_leaf_of_every_bundle_size_verifies_in_its_place_only() {
        let key = Keypair::generate_ed25519();
        let public = key.public();
        for n in 1..=17 {
            let ls = leaves(n);
            let proofs = sign(&key, &ls).expect("signs");
            assert_eq!(proofs.len(), n);
            for (i, p) in proofs.iter().enumerate() {
                assert!(verify(&public, ls[i], p), "leaf {i} of {n}");
                assert!(p.path.len() <= 5);
                // Another request in its place does not verify.
                let other = leaf(b"to", b"forged");
                assert!(!verify(&public, other, p));
                // Nor the right one at another place.
                if n > 1 {
                    let moved = Proof {
                        index: (p.index + 1) % n as u32,
                        ..p.clone()
                    };
                    assert!(!verify(&public, ls[i], &moved), "leaf {i} of {n} moved");
                }
            }
        }
    }

    #[test]
    fn tampered_proofs_and_other_keys_fail() {
        let (key, other) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let ls = leaves(6);
        let proofs = sign(&key, &ls).expect("signs");
        let p = &proofs[3];
        assert!(verify(&key.public(), ls[3], p));
        assert!(!verify(&other.public(), ls[3], p), "another signer");
        let mut bad = p.clone();
        bad.path[0][0] ^= 1;
        assert!(!verify(&key.public(), ls[3], &bad), "altered sibling");
        let mut short = p.clone();
        short.path.pop();
        assert!(!verify(&key.public(), ls[3], &short), "missing sibling");
        let mut long = p.clone();
        long.path.push([0; 32]);
        assert!(!verify(&key.public(), ls[3], &long), "extra sibling");
        for (index, count) in [(6, 6), (0, 0), (0, MAX_LEAVES + 1)] {
            let odd = Proof {
                index,
                count,
                ..p.clone()
            };
            assert!(!verify(&key.public(), ls[3], &odd), "{index}/{count}");
        }
        // A leaf binds its destination: the same bytes for another host
        // are another leaf.
        assert_ne!(leaf(b"a", b"x"), leaf(b"b", b"x"));
        assert_ne!(leaf(b"ab", b"x"), leaf(b"a", b"bx"));
        assert!(sign(&key, &[]).is_none());
    }
}
