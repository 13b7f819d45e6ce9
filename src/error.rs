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
        report(self)
    }
}

/// An error's message followed by each cause in turn, `: `-separated.
fn report(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
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

/// The host was closed (by [`crate::Host::close`]) or its event loop
/// ended: the one way the operations that only talk to this host's event
/// loop can fail ([`crate::Host::members`], [`crate::Host::close`], …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the host is closed")]
pub struct Closed;

/// A payload could not be encoded ([`crate::Payload::postcard`],
/// [`crate::Payload::json`]); the codec's error is the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not encode the payload")]
pub struct EncodeError(#[source] pub Cause);

/// A payload could not be decoded into the requested type
/// ([`crate::Message::decode`]); the codec's error is the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not decode the payload")]
pub struct DecodeError(#[source] pub Cause);

/// Why a send, a request or a reply failed ([`crate::Peer::send`],
/// [`crate::Peer::request`], [`crate::Peer::reply`],
/// [`crate::Message::reply`]). The variants mean what [`Error`]'s of the
/// same name mean, and convert into them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The host was closed.
    #[error("the host is closed")]
    Closed,
    /// The recipient id is not valid (empty, or longer than 256 bytes).
    #[error("invalid peer id: {0}")]
    InvalidId(String),
    /// No host holds the recipient (or the sending peer was removed).
    #[error("peer {0:?} was not found")]
    PeerNotFound(String),
    /// The recipient's host could not be reached.
    #[error("peer {id:?} is on host {host} which cannot be reached")]
    PeerUnreachable {
        /// The peer that was addressed.
        id: String,
        /// The host that holds it.
        host: PeerId,
    },
    /// Replies only: no request of the recipient waits for this reply
    /// (answered already, or timed out). The reply was not delivered.
    #[error("no request waits for this reply: {0}")]
    NoRequest(String),
    /// No acknowledgement (for a request: no reply) in time.
    #[error("the operation timed out")]
    Timeout,
    /// The payload is larger than `max_message_size`.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// Size of the encoded payload.
        size: usize,
        /// The configured `max_message_size`.
        limit: usize,
    },
    /// The recipient's inbox is full; the message was not delivered.
    #[error("the inbox of peer {0:?} is full")]
    InboxFull(String),
    /// The value could not be encoded.
    #[error("could not encode the payload")]
    Encode(#[source] Cause),
}

/// Why [`crate::Host::find`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FindError {
    /// The host was closed.
    #[error("the host is closed")]
    Closed,
    /// The id is not valid (empty, or longer than 256 bytes).
    #[error("invalid peer id: {0}")]
    InvalidId(String),
    /// No host holds a peer with this id.
    #[error("peer {0:?} was not found")]
    PeerNotFound(String),
    /// The directory's holders did not answer in time.
    #[error("the operation timed out")]
    Timeout,
}

/// Why [`crate::Host::create`], [`crate::Host::create_unique`] or
/// [`crate::Peer::registered`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The host was closed.
    #[error("the host is closed")]
    Closed,
    /// The id is not valid (empty, or longer than 256 bytes).
    #[error("invalid peer id: {0}")]
    InvalidId(String),
    /// A peer with this id already exists on this host.
    #[error("a peer with id {0:?} already exists on this host")]
    IdExists(String),
    /// Waiting for registration only: another live host registered the
    /// id first (the local peer was removed).
    #[error("peer id {id:?} belongs to host {host}, which registered it first")]
    IdTaken {
        /// The id.
        id: String,
        /// The host that holds it.
        host: PeerId,
    },
    /// Waiting for registration only: the peer was removed meanwhile.
    #[error("peer {0:?} was not found")]
    PeerNotFound(String),
    /// Waiting for registration only: the holders did not all confirm in
    /// time.
    #[error("the operation timed out")]
    Timeout,
}

/// Why [`crate::Host::subscribe`], [`crate::Host::subscribe_queue`] or
/// [`crate::Host::unsubscribe`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The host was closed.
    #[error("the host is closed")]
    Closed,
    /// The channel pattern or group name is invalid, or the host is at its
    /// limit of 4,096 channels and groups.
    #[error("invalid channel name: {0}")]
    InvalidChannel(String),
}

/// Why [`crate::Host::publish`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The host was closed.
    #[error("the host is closed")]
    Closed,
    /// The channel name is invalid (wildcards are for subscriptions).
    #[error("invalid channel name: {0}")]
    InvalidChannel(String),
    /// The payload is larger than `max_message_size`.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// Size of the encoded payload.
        size: usize,
        /// The configured `max_message_size`.
        limit: usize,
    },
    /// The value could not be encoded.
    #[error("could not encode the payload")]
    Encode(#[source] Cause),
    /// No member of a queue group could take the message (the other
    /// subscribers got it).
    #[error("no member of queue group {group:?} on {pattern:?} could take the message")]
    QueueUnavailable {
        /// The group's channel pattern.
        pattern: String,
        /// The group's name.
        group: String,
    },
    /// Gossipsub refused the message (its error is the source).
    #[error("publish failed")]
    Publish(#[source] Cause),
}

/// Why a broadcast or a group send failed ([`crate::Host::broadcast`],
/// [`crate::Peer::send_group`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastError {
    /// The host was closed.
    #[error("the host is closed")]
    Closed,
    /// Group sends only: the pattern is invalid.
    #[error("invalid group pattern: {0}")]
    InvalidPattern(String),
    /// From a peer only: the sending peer was removed.
    #[error("peer {0:?} was not found")]
    PeerNotFound(String),
    /// No other live host (this many) took it; the local peers have it.
    #[error("the broadcast reached none of the {0} other live hosts")]
    Partitioned(usize),
    /// The hosts did not all answer or fail in time.
    #[error("the operation timed out")]
    Timeout,
    /// The payload is larger than `max_message_size`.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// Size of the encoded payload.
        size: usize,
        /// The configured `max_message_size`.
        limit: usize,
    },
    /// The value could not be encoded.
    #[error("could not encode the payload")]
    Encode(#[source] Cause),
}

/// Why [`crate::Host::join`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The host was closed.
    #[error("the host is closed")]
    Closed,
    /// The address could not be parsed.
    #[error("invalid address {addr:?}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was refused.
        #[source]
        source: Cause,
    },
    /// The dial failed, the remote host refused, or no answer in time.
    #[error("cannot join {addr}")]
    Join {
        /// The address that was dialled.
        addr: String,
        /// The dial error, the remote host's refusal, or a timeout.
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
}

/// Why [`crate::Host::listen`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// The host was closed.
    #[error("the host is closed")]
    Closed,
    /// The address could not be parsed.
    #[error("invalid address {addr:?}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was refused.
        #[source]
        source: Cause,
    },
    /// The transport could not listen there (for example the port is busy).
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// The transport's error.
        #[source]
        source: Cause,
    },
}

/// `From` between two error enums whose variants have the same names and
/// fields: the listed variants of `$from` become those of `$to`. The match
/// is exhaustive, so a variant added to `$from` and not listed here (or
/// missing from `$to`) is a compile error, never a lost case.
macro_rules! widen {
    ($from:ident => $to:ident { $($v:ident $(($x:ident))? $({ $($f:ident),* })?),* $(,)? }) => {
        impl From<$from> for $to {
            fn from(e: $from) -> Self {
                match e {
                    $($from::$v $(($x))? $({ $($f),* })? => $to::$v $(($x))? $({ $($f),* })?,)*
                }
            }
        }
    };
}

widen!(SendError => Error {
    Closed, InvalidId(x), PeerNotFound(x), PeerUnreachable { id, host }, NoRequest(x), Timeout,
    MessageTooLarge { size, limit }, InboxFull(x), Encode(x),
});
widen!(FindError => Error { Closed, InvalidId(x), PeerNotFound(x), Timeout });
widen!(FindError => SendError { Closed, InvalidId(x), PeerNotFound(x), Timeout });
widen!(CreateError => Error {
    Closed, InvalidId(x), IdExists(x), IdTaken { id, host }, PeerNotFound(x), Timeout,
});
widen!(SubscribeError => Error { Closed, InvalidChannel(x) });
widen!(PublishError => Error {
    Closed, InvalidChannel(x), MessageTooLarge { size, limit }, Encode(x),
    QueueUnavailable { pattern, group }, Publish(x),
});
widen!(BroadcastError => Error {
    Closed, InvalidPattern(x), PeerNotFound(x), Partitioned(x), Timeout,
    MessageTooLarge { size, limit }, Encode(x),
});
widen!(JoinError => Error {
    Closed, InvalidAddress { addr, source }, Join { addr, source },
    NetworkMismatch { addr, ours, theirs },
});
widen!(ListenError => Error { Closed, InvalidAddress { addr, source }, Listen { addr, source } });

/// The same `report` on every operation's error.
macro_rules! reports {
    ($($t:ident),*) => {$(
        impl $t {
            /// The message followed by each cause in turn, `: `-separated
            /// (see [`Error::report`]).
            pub fn report(&self) -> String {
                report(self)
            }
        }
    )*};
}

reports!(
    EncodeError,
    DecodeError,
    SendError,
    FindError,
    CreateError,
    SubscribeError,
    PublishError,
    BroadcastError,
    JoinError,
    ListenError
);

/// `Closed` (and the channel errors that mean the event loop is gone) into
/// each error that has a `Closed` variant.
macro_rules! closed_into {
    ($($t:ident),*) => {$(
        impl From<Closed> for $t {
            fn from(_: Closed) -> Self {
                $t::Closed
            }
        }
        impl<T> From<tokio::sync::mpsc::error::SendError<T>> for $t {
            fn from(_: tokio::sync::mpsc::error::SendError<T>) -> Self {
                $t::Closed
            }
        }
        impl From<tokio::sync::oneshot::error::RecvError> for $t {
            fn from(_: tokio::sync::oneshot::error::RecvError) -> Self {
                $t::Closed
            }
        }
    )*};
}

closed_into!(
    Error,
    SendError,
    FindError,
    CreateError,
    SubscribeError,
    PublishError,
    BroadcastError,
    JoinError,
    ListenError
);

/// An encoding failure into each error that has an `Encode` variant.
macro_rules! encode_into {
    ($($t:ident),*) => {$(
        impl From<EncodeError> for $t {
            fn from(e: EncodeError) -> Self {
                $t::Encode(e.0)
            }
        }
    )*};
}

encode_into!(Error, SendError, PublishError, BroadcastError);

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Decode(e.0)
    }
}

/// Shorthand for results of distribus operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Says the same as the [`Error`] it converts into, cause included.
    fn same_as_wide<E: std::error::Error + Clone + Into<Error>>(e: E) {
        let wide: Error = e.clone().into();
        assert_eq!(e.to_string(), wide.to_string());
        assert_eq!(report(&e), wide.report());
    }

    #[test]
    fn each_operations_error_says_what_the_one_error_says() {
        let id = || "bob".to_string();
        let host = PeerId::random();
        let cause = || Cause::msg("refused");
        let (size, limit) = (9, 8);
        for e in [
            SendError::Closed,
            SendError::InvalidId(id()),
            SendError::PeerNotFound(id()),
            SendError::PeerUnreachable { id: id(), host },
            SendError::NoRequest(id()),
            SendError::Timeout,
            SendError::MessageTooLarge { size, limit },
            SendError::InboxFull(id()),
            SendError::Encode(cause()),
        ] {
            same_as_wide(e);
        }
        for e in [
            FindError::Closed,
            FindError::InvalidId(id()),
            FindError::PeerNotFound(id()),
            FindError::Timeout,
        ] {
            same_as_wide(e.clone());
            same_as_wide(SendError::from(e));
        }
        for e in [
            CreateError::Closed,
            CreateError::InvalidId(id()),
            CreateError::IdExists(id()),
            CreateError::IdTaken { id: id(), host },
            CreateError::PeerNotFound(id()),
            CreateError::Timeout,
        ] {
            same_as_wide(e);
        }
        same_as_wide(SubscribeError::Closed);
        same_as_wide(SubscribeError::InvalidChannel(id()));
        for e in [
            PublishError::Closed,
            PublishError::InvalidChannel(id()),
            PublishError::MessageTooLarge { size, limit },
            PublishError::Encode(cause()),
            PublishError::QueueUnavailable {
                pattern: id(),
                group: id(),
            },
            PublishError::Publish(cause()),
        ] {
            same_as_wide(e);
        }
        for e in [
            BroadcastError::Closed,
            BroadcastError::InvalidPattern(id()),
            BroadcastError::PeerNotFound(id()),
            BroadcastError::Partitioned(3),
            BroadcastError::Timeout,
            BroadcastError::MessageTooLarge { size, limit },
            BroadcastError::Encode(cause()),
        ] {
            same_as_wide(e);
        }
        for e in [
            JoinError::Closed,
            JoinError::InvalidAddress {
                addr: id(),
                source: cause(),
            },
            JoinError::Join {
                addr: id(),
                source: cause(),
            },
            JoinError::NetworkMismatch {
                addr: id(),
                ours: id(),
                theirs: id(),
            },
        ] {
            same_as_wide(e);
        }
        for e in [
            ListenError::Closed,
            ListenError::InvalidAddress {
                addr: id(),
                source: cause(),
            },
            ListenError::Listen {
                addr: id(),
                source: cause(),
            },
        ] {
            same_as_wide(e);
        }
        same_as_wide(Closed);
        same_as_wide(EncodeError(cause()));
        same_as_wide(DecodeError(cause()));
    }

    #[test]
    fn the_cause_is_the_source_through_every_conversion() {
        let e = JoinError::Join {
            addr: "/memory/9".into(),
            source: Cause::msg("refused"),
        };
        assert_eq!(e.report(), "cannot join /memory/9: refused");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("refused"));
        let wide = Error::from(e);
        let source = std::error::Error::source(&wide).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("refused"));
        let sent = SendError::from(EncodeError(Cause::msg("no serializer")));
        assert_eq!(sent.report(), "could not encode the payload: no serializer");
    }
}
