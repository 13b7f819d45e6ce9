//! Typed errors of the public API.

use std::{fmt, sync::Arc};

use libp2p::PeerId;

/// The underlying cause of an [`Error`], returned by its `source()`: the
/// error of the codec, transport or listener that failed, or a remote
/// host's reason given as text.
///
/// It is shared (an `Arc`), so `Error` stays `Clone`; two causes are equal
/// when their messages are.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    /// Wraps an error as a cause.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause(Arc::new(e))
    }

    /// A cause known only as text (a refusal a remote host sent).
    pub fn msg(m: impl Into<String>) -> Self {
        let boxed: Box<dyn std::error::Error + Send + Sync> = m.into().into();
        Cause(Arc::from(boxed))
    }

    /// The wrapped error, to downcast (`cause.get_ref().downcast_ref::<T>()`).
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

/// Every way a distribus operation can fail.
///
/// The enum is `#[non_exhaustive]`: match the variants you handle and keep a
/// catch-all arm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host was closed (by [`crate::Host::close`]) or its event loop ended.
    #[error("the host is closed")]
    Closed,
    /// A peer with this id already exists on this host.
    #[error("a peer with id {0:?} already exists on this host")]
    IdExists(String),
    /// Another live host registered this peer id first: the directory
    /// keeps the first (see [`crate::Peer::registered`]).
    #[error("peer id {id:?} belongs to host {host}, which registered it first")]
    IdTaken {
        /// The id.
        id: String,
        /// The host that holds it.
        host: PeerId,
    },
    /// The peer id is not valid: it must be non-empty UTF-8 of at most 256 bytes.
    #[error("invalid peer id: {0}")]
    InvalidId(String),
    /// No host in the network holds a peer with this id.
    #[error("peer {0:?} was not found")]
    PeerNotFound(String),
    /// The host that holds the peer could not be reached.
    #[error("peer {id:?} is on host {host} which cannot be reached")]
    PeerUnreachable {
        /// The peer that was addressed.
        id: String,
        /// The host that holds it.
        host: PeerId,
    },
    /// A reply found no request waiting for it: the message was not a
    /// request, or its requester was answered already or stopped waiting
    /// (timed out). The reply was not delivered.
    #[error("no request waits for this reply: {0}")]
    NoRequest(String),
    /// A broadcast reached no other host: every one of the other live
    /// hosts (this many) failed to take it. The local peers have it.
    #[error("the broadcast reached none of the {0} other live hosts")]
    Partitioned(usize),
    /// The operation did not complete within its deadline.
    #[error("the operation timed out")]
    Timeout,
    /// The encoded message is larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// Size of the encoded payload.
        size: usize,
        /// The configured `max_message_size`.
        limit: usize,
    },
    /// The recipient's bounded inbox is full; the message was not delivered.
    #[error("the inbox of peer {0:?} is full")]
    InboxFull(String),
    /// The payload could not be encoded (the codec's error is the source).
    #[error("could not encode the payload")]
    Encode(#[source] Cause),
    /// The payload could not be decoded into the requested type (the
    /// codec's error is the source).
    #[error("could not decode the payload")]
    Decode(#[source] Cause),
    /// A multiaddr or URL could not be parsed or used.
    #[error("invalid address {addr:?}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was refused.
        #[source]
        source: Cause,
    },
    /// Listening on the address failed (for example the port is busy).
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// The transport's error.
        #[source]
        source: Cause,
    },
    /// Joining a host failed (dial error, refused, or no answer in time).
    #[error("cannot join {addr}")]
    Join {
        /// The address that was dialled.
        addr: String,
        /// Why the join failed: the dial error, the remote host's refusal,
        /// or a timeout.
        #[source]
        source: Cause,
    },
    /// The remote host belongs to another network id.
    #[error("cannot join {addr}: it belongs to network {theirs:?}, this host to network {ours:?}")]
    NetworkMismatch {
        /// The address that was dialled.
        addr: String,
        /// Our network id.
        ours: String,
        /// The remote host's network id.
        theirs: String,
    },
    /// The configuration is invalid, or a field that cannot change at run time was changed.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A channel name is invalid (empty or longer than 256 bytes).
    #[error("invalid channel name: {0}")]
    InvalidChannel(String),
    /// A pattern of peer ids for a group send is invalid (empty tokens,
    /// `>` not last, or longer than 256 bytes).
    #[error("invalid group pattern: {0}")]
    InvalidPattern(String),
    /// No member of a queue group could take a publish: every one of its
    /// hosts failed, or every member's queue was full. The group's other
    /// subscribers (and plain ones) got it as usual.
    #[error("no member of queue group {group:?} on {pattern:?} could take the message")]
    QueueUnavailable {
        /// The group's channel pattern.
        pattern: String,
        /// The group's name.
        group: String,
    },
    /// Publishing on a channel failed (gossipsub's error is the source).
    #[error("publish failed")]
    Publish(#[source] Cause),
    /// The swarm could not be built.
    #[error("transport error")]
    Transport(#[source] Cause),
}

impl Error {
    /// The message followed by each cause in turn, `: `-separated, as a log
    /// line or a command line tool shows an error
    /// (`"cannot join /memory/9: Failed to negotiate transport protocol(s): …"`).
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        // Bounded: a chain of causes is finite, but a buggy `source()` could
        // loop; 16 is far deeper than any real chain.
        for _ in 0..16 {
            let Some(cause) = next else { break };
            let text = cause.to_string();
            if !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            next = cause.source();
        }
        out
    }
}

/// Shorthand for results of distribus operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl<T> From<tokio::sync::mpsc::error::SendError<T>> for Error {
    fn from(_: tokio::sync::mpsc::error::SendError<T>) -> Self {
        Error::Closed
    }
}

impl From<tokio::sync::oneshot::error::RecvError> for Error {
    fn from(_: tokio::sync::oneshot::error::RecvError) -> Self {
        Error::Closed
    }
}
