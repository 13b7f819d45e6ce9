//! Bearer tokens and what each may do: how many peers its connections hold
//! at once and how many messages (sends and publishes) per second they make.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::error::{Error, Result};

/// What one token allows. `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenLimits {
    /// Most peers the token's connections hold at once.
    pub max_peers: Option<usize>,
    /// Most messages (sends and publishes) per second, over all the
    /// token's connections, with a burst of one second's worth.
    pub max_rate: Option<u32>,
}

/// The tokens a gateway accepts, each with its limits.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    limits: HashMap<String, TokenLimits>,
}

impl Tokens {
    /// No tokens yet ([`Tokens::insert`] adds them).
    pub fn new() -> Self {
        Tokens::default()
    }

    /// Accepts `token` with `limits`.
    pub fn insert(&mut self, token: impl Into<String>, limits: TokenLimits) {
        self.limits.insert(token.into(), limits);
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.limits.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// The limits of a token, if it is one.
    pub(crate) fn get(&self, token: &str) -> Option<TokenLimits> {
        self.limits.get(token).copied()
    }

    /// Reads a token file: one token per line, optionally followed by
    /// `peers=N` and `rate=N`; `#` starts a comment. The file must not be
    /// readable by group or others (mode 0600), as ssh asks of its keys:
    /// the tokens are secrets.
    pub fn load(path: &Path) -> Result<Tokens> {
        let shown = path.display();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path)
                .map_err(|e| Error::Config(format!("cannot read token file {shown}: {e}")))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::Config(format!(
                    "token file {shown} has mode {mode:o}: others can read it (chmod 600 {shown})"
                )));
            }
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read token file {shown}: {e}")))?;
        Tokens::parse(&text).map_err(|e| Error::Config(format!("token file {shown}: {e}")))
    }

    /// Parses the text of a token file ([`Tokens::load`]).
    pub fn parse(text: &str) -> std::result::Result<Tokens, String> {
        let mut tokens = Tokens::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut words = line.split_whitespace();
            let Some(token) = words.next() else { continue };
            let mut limits = TokenLimits::default();
            for word in words {
                let bad = || format!("line {}: {word:?} is not peers=N or rate=N", n + 1);
                let (key, value) = word.split_once('=').ok_or_else(bad)?;
                match key {
                    "peers" => limits.max_peers = Some(value.parse().map_err(|_| bad())?),
                    "rate" => limits.max_rate = Some(value.parse().map_err(|_| bad())?),
                    _ => return Err(bad()),
                }
            }
            tokens.insert(token, limits);
        }
        if tokens.is_empty() {
            return Err("no tokens".into());
        }
        Ok(tokens)
    }
}

/// What the connections of one token share: their peer count and rate.
#[derive(Debug)]
pub(crate) struct Allowance {
    pub limits: TokenLimits,
    state: Mutex<Use>,
}

#[derive(Debug)]
struct Use {
    peers: usize,
    /// Messages that may go now (a token bucket, refilled at `max_rate`).
    credit: f64,
    refilled: Instant,
}

impl Allowance {
    pub(super) fn new(limits: TokenLimits, now: Instant) -> Arc<Self> {
        Arc::new(Allowance {
            limits,
            state: Mutex::new(Use {
                peers: 0,
                credit: limits.max_rate.map_or(0.0, f64::from),
                refilled: now,
            }),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Use) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// Takes a peer slot; false when the token holds its most.
    pub(super) fn take_peer(&self) -> bool {
        let max = self.limits.max_peers;
        self.with(|u| {
            if max.is_some_and(|m| u.peers >= m) {
                return false;
            }
            u.peers += 1;
            true
        })
    }

    /// Gives a peer slot back.
    pub(super) fn give_peer(&self) {
        self.with(|u| u.peers = u.peers.saturating_sub(1));
    }

    /// Takes one message's credit at `now`; false when over the rate.
    pub(super) fn take_message(&self, now: Instant) -> bool {
        let Some(rate) = self.limits.max_rate else {
            return true;
        };
        let rate = f64::from(rate);
        self.with(|u| {
            let elapsed = now.saturating_duration_since(u.refilled);
            u.refilled = now;
            u.credit = (u.credit + elapsed.as_secs_f64() * rate).min(rate);
            if u.credit >= 1.0 {
                u.credit -= 1.0;
                true
            } else {
                false
            }
        })
    }
}

/// One allowance per token in use, shared by its connections; an
/// anonymous gateway gives each connection an unlimited one.
#[derive(Debug, Default)]
pub(crate) struct Allowances {
    by_token: Mutex<HashMap<String, Arc<Allowance>>>,
}

impl Allowances {
    pub(super) fn for_token(
        &self,
        token: &str,
        limits: TokenLimits,
        now: Instant,
    ) -> Arc<Allowance> {
        let mut map = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(token.to_string())
            .or_insert_with(|| Allowance::new(limits, now))
            .clone()
    }
}

/// How long a refused message's sender should wait before the credit for
/// one more is there (said in the refusal).
pub(crate) fn retry_after(rate: u32) -> Duration {
    Duration::from_secs_f64(1.0 / f64::from(rate.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_parse_limits_and_refuse_typos() {
        let t = Tokens::parse("# clients\nabc peers=2 rate=10\n\nxyz\n").unwrap();
        assert_eq!(
            t.get("abc"),
            Some(TokenLimits {
                max_peers: Some(2),
                max_rate: Some(10)
            })
        );
        assert_eq!(t.get("xyz"), Some(TokenLimits::default()));
        assert!(Tokens::parse("abc peer=2").is_err());
        assert!(Tokens::parse("abc rate=fast").is_err());
        assert!(Tokens::parse("# nothing").is_err());
    }

    #[test]
    fn the_rate_refills_with_time_up_to_one_second_of_burst() {
        let t0 = Instant::now();
        let a = Allowance::new(
            TokenLimits {
                max_peers: Some(1),
                max_rate: Some(4),
            },
            t0,
        );
        assert!((0..4).all(|_| a.take_message(t0)));
        assert!(!a.take_message(t0));
        assert!(a.take_message(t0 + Duration::from_millis(250)));
        assert!(!a.take_message(t0 + Duration::from_millis(250)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| a.take_message(later)).count(), 4);
        assert!(a.take_peer());
        assert!(!a.take_peer());
        a.give_peer();
        assert!(a.take_peer());
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Tokens::load(&path), Err(Error::Config(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Tokens::load(&path).unwrap().len(), 1);
    }
}
