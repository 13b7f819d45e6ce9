//! Closed networks: a pre-shared key that every connection must prove.
//!
//! With a key set, every connection (TCP, WebSocket and memory alike)
//! starts with libp2p's private-network handshake (`pnet`: both sides
//! exchange nonces and encrypt everything after with XSalsa20 under the
//! key) before noise. A process without the key cannot complete the noise
//! handshake, so it never reaches any distribus protocol. The key file is
//! the format the other libp2p stacks use for swarm keys
//! (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits).

use std::{fmt, str::FromStr};

use libp2p::pnet::PreSharedKey;
use rand::RngCore;

use crate::error::{Error, Result};

/// A 32-byte pre-shared network key. Its `Debug` shows the fingerprint
/// only, never the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NetworkKey(pub(crate) PreSharedKey);

impl NetworkKey {
    /// A new random key.
    pub fn generate() -> NetworkKey {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        NetworkKey(PreSharedKey::new(bytes))
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> NetworkKey {
        NetworkKey(PreSharedKey::new(bytes))
    }

    /// Reads a swarm key file's text.
    pub fn from_key_file(text: &str) -> Result<NetworkKey> {
        PreSharedKey::from_str(text)
            .map(NetworkKey)
            .map_err(|e| Error::Config(format!("invalid network key file: {e}")))
    }

    /// The key as a swarm key file's text (this is the secret).
    pub fn to_key_file(&self) -> String {
        self.0.to_key_file()
    }

    /// A fingerprint that identifies the key without revealing it.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint().to_string()
    }
}

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NetworkKey")
            .field(&self.fingerprint())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_bad_ones_are_refused() {
        let k = NetworkKey::generate();
        let text = k.to_key_file();
        assert!(text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"));
        assert_eq!(NetworkKey::from_key_file(&text).unwrap(), k);
        assert!(!format!("{k:?}").contains(&text.lines().nth(2).unwrap()[..16]));
        for bad in [
            "",
            "/key/swarm/psk/1.0.0/\n/base16/\nzz",
            "nonsense\n/base16/\n00",
        ] {
            assert!(matches!(
                NetworkKey::from_key_file(bad),
                Err(Error::Config(_))
            ));
        }
    }
}
