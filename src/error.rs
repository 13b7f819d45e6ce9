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

/// Declares an error enum from the catalogue in its arms: each failure's
/// fields, message and cause are written once, and each operation's enum
/// lists the names of the failures it has. It also writes `From` into each
/// enum named after `into`, as an exhaustive match: a failure the wider
/// enum does not have is a compile error, never a case lost in a
/// conversion.
macro_rules! failures {
    (
        $(#[$meta:meta])*
        pub enum $name:ident into [$($wide:ident),*] { $($var:ident),* $(,)? }
    ) => {
        failures!(@step [$(#[$meta])*] $name [$($wide),*] [] [] $($var)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] Closed $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// The host was closed (by [`crate::Host::close`]) or its event loop ended.
            #[error("the host is closed")]
            Closed,
        ] [$($arm)* [Closed]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] IdExists $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// A peer with this id already exists on this host.
            #[error("a peer with id {0:?} already exists on this host")]
            IdExists(String),
        ] [$($arm)* [IdExists (x)]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] IdTaken $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// Another live host registered this peer id first: the directory
            /// keeps the first (see [`crate::Peer::registered`]).
            #[error("peer id {id:?} belongs to host {host}, which registered it first")]
            IdTaken {
                /// The id.
                id: String,
                /// The host that holds it.
                host: PeerId,
            },
        ] [$($arm)* [IdTaken { id, host }]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] InvalidId $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// The peer id is not valid: it must be non-empty UTF-8 of at most 256 bytes.
            #[error("invalid peer id: {0}")]
            InvalidId(String),
        ] [$($arm)* [InvalidId (x)]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] PeerNotFound $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// No host in the network holds a peer with this id.
            #[error("peer {0:?} was not found")]
            PeerNotFound(String),
        ] [$($arm)* [PeerNotFound (x)]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] PeerUnreachable $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// The host that holds the peer could not be reached.
            #[error("peer {id:?} is on host {host} which cannot be reached")]
            PeerUnreachable {
                /// The peer that was addressed.
                id: String,
                /// The host that holds it.
                host: PeerId,
            },
        ] [$($arm)* [PeerUnreachable { id, host }]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] NoRequest $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// A reply found no request waiting for it: the message was not a
            /// request, or its requester was answered already or stopped waiting
            /// (timed out). The reply was not delivered.
            #[error("no request waits for this reply: {0}")]
            NoRequest(String),
        ] [$($arm)* [NoRequest (x)]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] Partitioned $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// A broadcast reached no other host: every one of the other live
            /// hosts (this many) failed to take it. The local peers have it.
            #[error("the broadcast reached none of the {0} other live hosts")]
            Partitioned(usize),
        ] [$($arm)* [Partitioned (x)]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] Timeout $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// The operation did not complete within its deadline.
            #[error("the operation timed out")]
            Timeout,
        ] [$($arm)* [Timeout]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] MessageTooLarge $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// The encoded message is larger than the configured limit.
            #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
            MessageTooLarge {
                /// Size of the encoded payload.
                size: usize,
                /// The configured `max_message_size`.
                limit: usize,
            },
        ] [$($arm)* [MessageTooLarge { size, limit }]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] InboxFull $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// The recipient's bounded inbox is full; the message was not delivered.
            #[error("the inbox of peer {0:?} is full")]
            InboxFull(String),
        ] [$($arm)* [InboxFull (x)]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] Encode $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// The payload could not be encoded (the codec's error is the source).
            #[error("could not encode the payload")]
            Encode(#[source] Cause),
        ] [$($arm)* [Encode (x)]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] Decode $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// The payload could not be decoded into the requested type (the
            /// codec's error is the source).
            #[error("could not decode the payload")]
            Decode(#[source] Cause),
        ] [$($arm)* [Decode (x)]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] InvalidAddress $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// A multiaddr or URL could not be parsed or used.
            #[error("invalid address {addr:?}")]
            InvalidAddress {
                /// The address as given.
                addr: String,
                /// Why it was refused.
                #[source]
                source: Cause,
            },
        ] [$($arm)* [InvalidAddress { addr, source }]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] Listen $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// Listening on the address failed (for example the port is busy).
            #[error("cannot listen on {addr}")]
            Listen {
                /// The address.
                addr: String,
                /// The transport's error.
                #[source]
                source: Cause,
            },
        ] [$($arm)* [Listen { addr, source }]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] Join $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
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
        ] [$($arm)* [Join { addr, source }]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] NetworkMismatch $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
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
        ] [$($arm)* [NetworkMismatch { addr, ours, theirs }]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] Config $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// The configuration is invalid, or a field that cannot change at run time was changed.
            #[error("invalid configuration: {0}")]
            Config(String),
        ] [$($arm)* [Config (x)]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] InvalidChannel $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// A channel name is invalid (empty or longer than 256 bytes).
            #[error("invalid channel name: {0}")]
            InvalidChannel(String),
        ] [$($arm)* [InvalidChannel (x)]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] InvalidPattern $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// A pattern of peer ids for a group send is invalid (empty tokens,
            /// `>` not last, or longer than 256 bytes).
            #[error("invalid group pattern: {0}")]
            InvalidPattern(String),
        ] [$($arm)* [InvalidPattern (x)]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] QueueUnavailable $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
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
        ] [$($arm)* [QueueUnavailable { pattern, group }]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] Publish $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// Publishing on a channel failed (gossipsub's error is the source).
            #[error("publish failed")]
            Publish(#[source] Cause),
        ] [$($arm)* [Publish (x)]] $($rest)*);
    };
    (@step $meta:tt $name:ident $wide:tt [$($def:tt)*] [$($arm:tt)*] Transport $($rest:ident)*) => {
        failures!(@step $meta $name $wide [$($def)*
            /// The swarm could not be built.
            #[error("transport error")]
            Transport(#[source] Cause),
        ] [$($arm)* [Transport (x)]] $($rest)*);
    };
    (@step [$($meta:tt)*] $name:ident [$($wide:ident),*] [$($def:tt)*] $arms:tt) => {
        $($meta)*
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[non_exhaustive]
        pub enum $name { $($def)* }
        $(failures!(@from $name $wide $arms);)*

        impl $name {
            /// The message followed by each cause in turn, `: `-separated, as
            /// a log line or a command line tool shows an error
            /// (`"cannot join /memory/9: Failed to negotiate transport protocol(s): …"`).
            pub fn report(&self) -> String {
                report(self)
            }
        }

        // Every operation can find its host closed (a `Closed` case is in
        // each enum), also as the event loop's channels ending.
        impl From<Closed> for $name {
            fn from(_: Closed) -> Self {
                $name::Closed
            }
        }
        impl<T> From<tokio::sync::mpsc::error::SendError<T>> for $name {
            fn from(_: tokio::sync::mpsc::error::SendError<T>) -> Self {
                $name::Closed
            }
        }
        impl From<tokio::sync::oneshot::error::RecvError> for $name {
            fn from(_: tokio::sync::oneshot::error::RecvError) -> Self {
                $name::Closed
            }
        }
    };
    (@from $name:ident $wide:ident [$([$v:ident $($pat:tt)?])*]) => {
        impl From<$name> for $wide {
            fn from(e: $name) -> Self {
                match e {
                    $($name::$v $($pat)? => $wide::$v $($pat)?,)*
                }
            }
        }
    };
}

failures! {
    /// Every way a distribus operation can fail: the union of each
    /// operation's own error ([`SendError`], [`FindError`], …), which all
    /// convert into it, so `?` works in a function returning [`Result`]. Its
    /// own uses are the host's start and configuration.
    ///
    /// The enum is `#[non_exhaustive]`: match the variants you handle and keep a
    /// catch-all arm.
    pub enum Error into [] {
        Closed, IdExists, IdTaken, InvalidId, PeerNotFound, PeerUnreachable, NoRequest, Partitioned, Timeout, MessageTooLarge, InboxFull, Encode, Decode, InvalidAddress, Listen, Join, NetworkMismatch, Config, InvalidChannel, InvalidPattern, QueueUnavailable, Publish, Transport,
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
/// ended: the one way the calls that only ask this host can fail
/// ([`crate::Host::members`], [`crate::Host::readiness`],
/// [`crate::Host::remove`], …).
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

failures! {
    /// Why a send, a request or a reply failed ([`crate::Peer::send`],
    /// [`crate::Peer::request`], [`crate::Peer::reply`],
    /// [`crate::Message::reply`]). `NoRequest` comes from replies only;
    /// `Timeout` is the missing acknowledgement, or for a request the
    /// missing reply; `PeerNotFound` also when the sending peer was removed.
    pub enum SendError into [Error] {
        Closed, InvalidId, PeerNotFound, PeerUnreachable, NoRequest, Timeout, MessageTooLarge,
        InboxFull, Encode,
    }
}

failures! {
    /// Why [`crate::Host::find`] failed. `Timeout`: the directory's
    /// holders did not answer in time.
    pub enum FindError into [Error, SendError] {
        Closed, InvalidId, PeerNotFound, Timeout,
    }
}

failures! {
    /// Why [`crate::Host::create`], [`crate::Host::create_unique`] or
    /// [`crate::Peer::registered`] failed. `IdTaken`, `PeerNotFound` (the
    /// peer was removed meanwhile) and `Timeout` (the holders did not all
    /// confirm in time) come only from waiting for the registration.
    pub enum CreateError into [Error] {
        Closed, InvalidId, IdExists, IdTaken, PeerNotFound, Timeout,
    }
}

failures! {
    /// Why [`crate::Host::subscribe`], [`crate::Host::subscribe_queue`] or
    /// [`crate::Host::unsubscribe`] failed. `InvalidChannel` also names an
    /// invalid queue group, and a host at its limit of 4,096 channels and
    /// groups.
    pub enum SubscribeError into [Error] {
        Closed, InvalidChannel,
    }
}

failures! {
    /// Why [`crate::Host::publish`] failed. `InvalidChannel` also for a
    /// name with wildcards (they are for subscriptions).
    pub enum PublishError into [Error] {
        Closed, InvalidChannel, MessageTooLarge, Encode, QueueUnavailable, Publish,
    }
}

failures! {
    /// Why a broadcast or a group send failed ([`crate::Host::broadcast`],
    /// [`crate::Peer::send_group`]). `InvalidPattern` comes from group
    /// sends only, `PeerNotFound` (the sending peer was removed) from a
    /// peer's only; `Timeout`: the hosts did not all answer or fail in time.
    pub enum BroadcastError into [Error] {
        Closed, InvalidPattern, PeerNotFound, Partitioned, Timeout, MessageTooLarge, Encode,
    }
}

failures! {
    /// Why [`crate::Host::join`] failed.
    pub enum JoinError into [Error] {
        Closed, InvalidAddress, Join, NetworkMismatch,
    }
}

failures! {
    /// Why [`crate::Host::listen`] failed.
    pub enum ListenError into [Error] {
        Closed, InvalidAddress, Listen,
    }
}

impl EncodeError {
    /// The message followed by the codec's error (see [`Error::report`]).
    pub fn report(&self) -> String {
        report(self)
    }
}

impl DecodeError {
    /// The message followed by the codec's error (see [`Error::report`]).
    pub fn report(&self) -> String {
        report(self)
    }
}

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
