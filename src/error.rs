//! Typed errors of the public API.

use libp2p::PeerId;

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
    /// The payload could not be encoded.
    #[error("could not encode the payload: {0}")]
    Encode(String),
    /// The payload could not be decoded into the requested type.
    #[error("could not decode the payload: {0}")]
    Decode(String),
    /// A multiaddr or URL could not be parsed or used.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was refused.
        reason: String,
    },
    /// Listening on the address failed (for example the port is busy).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// The transport's reason.
        reason: String,
    },
    /// Joining a host failed (dial error, refused, or no answer in time).
    #[error("cannot join {addr}: {reason}")]
    Join {
        /// The address that was dialled.
        addr: String,
        /// Why the join failed.
        reason: String,
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
    /// Publishing on a channel failed.
    #[error("publish failed: {0}")]
    Publish(String),
    /// The swarm could not be built.
    #[error("transport error: {0}")]
    Transport(String),
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
