//! [`Peer`]: an endpoint with a string id that sends and receives messages.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::Stream;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::{
    broadcast::BroadcastReport,
    command::Command,
    command::RegStatus,
    core::send::PendingSend,
    delivery::local::push_local,
    error::{BroadcastError, CreateError, Result, SendError},
    host::{validate_id, Host},
    inbox::PeerSlot,
    message::{Message, Payload},
    protocol::Envelope,
    request::{Corr, RequestId},
    shared::{bump, count_failure},
};

/// A peer living on a [`Host`].
///
/// Receive with [`Peer::recv`] or as a [`Stream`] of [`Message`]s; the stream
/// ends when the peer is removed or the host closes. Send with
/// [`Peer::send`]. Dropping a `Peer` handle does not remove the peer (use
/// [`Host::remove`]); [`Host::get`] returns a new handle to it.
#[derive(Debug, Clone)]
pub struct Peer {
    host: Host,
    slot: PeerSlot,
}

impl AsRef<str> for Peer {
    fn as_ref(&self) -> &str {
        self.slot.id()
    }
}

impl Peer {
    pub(crate) fn new(host: Host, slot: PeerSlot) -> Self {
        Peer { host, slot }
    }

    /// The peer's id.
    pub fn id(&self) -> &str {
        self.slot.id()
    }

    /// The host the peer lives on.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Sends a value, encoded with postcard, to the peer `to`, wherever it lives.
    ///
    /// Resolves `Ok` once the message is in the recipient's inbox. Errors:
    /// [`SendError::PeerNotFound`], [`SendError::PeerUnreachable`],
    /// [`SendError::Timeout`], [`SendError::MessageTooLarge`],
    /// [`SendError::InboxFull`], [`SendError::Closed`].
    /// Messages from one peer to another arrive in the order they were sent:
    /// sends awaited one after another always, and sends whose futures run
    /// concurrently in the order they were first polled, while the host's
    /// command queue (4096 commands) has room.
    pub async fn send<T: Serialize + ?Sized>(&self, to: &str, value: &T) -> Result<(), SendError> {
        self.send_payload(to, Payload::postcard(value)?).await
    }

    /// Sends a value encoded as JSON (for example a `serde_json::Value`).
    pub async fn send_json<T: Serialize + ?Sized>(
        &self,
        to: &str,
        value: &T,
    ) -> Result<(), SendError> {
        self.send_payload(to, Payload::json(value)?).await
    }

    /// Sends an encoded payload.
    pub async fn send_payload(&self, to: &str, payload: Payload) -> Result<(), SendError> {
        // Everything before the wait is synchronous, so the future keeps
        // little state: with 1,024 sends in flight, moving big futures
        // into their tasks showed in profiles.
        let started = self.start_send(to, payload, Corr::None)?;
        wait_started(&self.host, started).await
    }

    /// Sends a request, encoded with postcard, to the peer `to` and waits
    /// for its reply ([`Message::reply`] on the other side).
    ///
    /// The reply is taken only from `to` and never enters this peer's
    /// inbox. Errors: those of [`Peer::send`] for the request, and
    /// [`SendError::Timeout`] when no reply comes within `timeout` (counted
    /// from the call; the replier then gets [`SendError::NoRequest`]).
    pub async fn request<T: Serialize + ?Sized>(
        &self,
        to: &str,
        value: &T,
        timeout: std::time::Duration,
    ) -> Result<Message, SendError> {
        self.request_payload(to, Payload::postcard(value)?, timeout)
            .await
    }

    /// Sends a request encoded as JSON (see [`Peer::request`]).
    pub async fn request_json<T: Serialize + ?Sized>(
        &self,
        to: &str,
        value: &T,
        timeout: std::time::Duration,
    ) -> Result<Message, SendError> {
        self.request_payload(to, Payload::json(value)?, timeout)
            .await
    }

    /// Sends a request with an encoded payload (see [`Peer::request`]).
    pub async fn request_payload(
        &self,
        to: &str,
        payload: Payload,
        timeout: std::time::Duration,
    ) -> Result<Message, SendError> {
        self.begin_request(to, payload, timeout).await
    }

    /// Starts a request now (queued in order with sends begun before it)
    /// and returns the wait for its reply, which owns what it needs.
    pub(crate) fn begin_request(
        &self,
        to: &str,
        payload: Payload,
        timeout: std::time::Duration,
    ) -> impl std::future::Future<Output = Result<Message, SendError>> + Send + 'static {
        let deadline = tokio::time::Instant::now() + timeout;
        let shared = &self.host.inner.shared;
        let (open, reply) = shared.requests.open(self.slot.id(), to);
        let started = self.start_send(to, payload, Corr::Request(open.id()));
        let host = self.host.clone();
        async move {
            let started = started?;
            bump(&host.inner.shared.counters.requests);
            let exchange = async {
                wait_started(&host, started).await?;
                reply.await.map_err(SendError::from)
            };
            let answer = tokio::time::timeout_at(deadline, exchange).await;
            // The entry goes before the caller sees the outcome: a reply
            // racing the timeout is refused, not left behind.
            drop(open);
            match answer {
                Ok(r) => r,
                Err(_) => {
                    count_failure(&host.inner.shared.counters, &SendError::Timeout);
                    Err(SendError::Timeout)
                }
            }
        }
    }

    /// Replies to request `id` of peer `to`, with a value encoded with
    /// postcard (for a reply after its [`Message`] is gone; otherwise
    /// [`Message::reply`] says it shorter).
    ///
    /// Resolves once the reply is with the waiting requester. Errors: those
    /// of [`Peer::send`], and [`SendError::NoRequest`] when `to` does not wait
    /// for a reply of this peer to `id` (answered, timed out).
    pub async fn reply<T: Serialize + ?Sized>(
        &self,
        to: &str,
        id: RequestId,
        value: &T,
    ) -> Result<(), SendError> {
        self.reply_payload(to, id, Payload::postcard(value)?).await
    }

    /// Replies with an encoded payload (see [`Peer::reply`]).
    pub async fn reply_payload(
        &self,
        to: &str,
        id: RequestId,
        payload: Payload,
    ) -> Result<(), SendError> {
        let started = self.start_send(to, payload, Corr::Reply(id.0))?;
        wait_started(&self.host, started).await
    }

    /// Starts a send now (so sends begun one after another are queued in
    /// that order) and returns the wait for its answer, which owns what it
    /// needs: the client gateway keeps many in flight per connection.
    #[cfg(feature = "gateway")]
    pub(crate) fn begin_send(
        &self,
        to: &str,
        payload: Payload,
    ) -> impl std::future::Future<Output = Result<(), SendError>> + Send + 'static {
        let started = self.start_send(to, payload, Corr::None);
        let host = self.host.clone();
        async move { wait_started(&host, started?).await }
    }

    /// Starts a reply now (see [`Peer::begin_send`]).
    #[cfg(feature = "gateway")]
    pub(crate) fn begin_reply(
        &self,
        to: &str,
        id: RequestId,
        payload: Payload,
    ) -> impl std::future::Future<Output = Result<(), SendError>> + Send + 'static {
        let started = self.start_send(to, payload, Corr::Reply(id.0));
        let host = self.host.clone();
        async move { wait_started(&host, started?).await }
    }

    /// Checks a send and delivers it locally or hands it to the event loop
    /// (in this first poll when the queue has room, so sends started in
    /// order are queued in order even when their futures run concurrently).
    fn start_send(&self, to: &str, payload: Payload, corr: Corr) -> Result<Started, SendError> {
        let shared = &self.host.inner.shared;
        if shared.is_closed() {
            return Err(SendError::Closed);
        }
        if self.slot.is_removed() {
            return Err(SendError::PeerNotFound(self.slot.id().to_string()));
        }
        validate_id(to).map_err(SendError::InvalidId)?;
        let (limit, timeout) = shared.with_config(|c| (c.max_message_size, c.request_timeout));
        if payload.len() > limit {
            return Err(SendError::MessageTooLarge {
                size: payload.len(),
                limit,
            });
        }
        // Same host: straight into the inbox, no event loop, no network.
        if let Some(slot) = shared.registry.get(to) {
            let r = push_local(shared, &slot, self.slot.id(), payload, corr);
            match &r {
                Ok(()) => bump(&shared.counters.sent_local),
                Err(e) => count_failure(&shared.counters, e),
            }
            return r.map(|()| Started::Done);
        }
        let (tx, rx) = oneshot::channel();
        let make = |from: Arc<str>, route_id: Option<Arc<str>>| {
            let env = Envelope {
                from,
                to: route_id.unwrap_or_else(|| Arc::from(to)),
                payload,
                corr,
            };
            PendingSend::new(env, tx)
        };
        // The direct lane to the recipient's link task, when the last send
        // went there and none is in the loop's hands (see `send_lane`).
        let Some(p) = crate::send_lane::take(&self.slot, to, &shared.counters, make) else {
            return Ok(Started::Queued { rx, timeout });
        };
        match self.host.inner.commands.try_send(Command::Send(p)) {
            Ok(()) => Ok(Started::Queued { rx, timeout }),
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                Ok(Started::Full(Box::new((cmd, rx, timeout))))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// Delivers a value, encoded with postcard, to every peer on every live
    /// host, this one included, once each, from this peer (see
    /// [`Host::broadcast`]).
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<BroadcastReport, BroadcastError> {
        self.broadcast_payload(Payload::postcard(value)?).await
    }

    /// Broadcasts a value encoded as JSON, from this peer.
    pub async fn broadcast_json<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<BroadcastReport, BroadcastError> {
        self.broadcast_payload(Payload::json(value)?).await
    }

    /// Broadcasts an encoded payload, from this peer.
    pub async fn broadcast_payload(
        &self,
        payload: Payload,
    ) -> Result<BroadcastReport, BroadcastError> {
        self.fan_out(None, payload).await
    }

    /// Delivers a value, encoded with postcard, to every peer whose id
    /// matches `pattern` (`room.42.*`), on every live host, this one
    /// included, once each, from this peer.
    ///
    /// Patterns have the syntax of channel patterns: an id is split at each
    /// `.` into tokens (an id without a `.` is one token), `*` matches one
    /// token and `>` (last only) one or more trailing tokens. A pattern
    /// without wildcards addresses the one peer of that id (this peer too,
    /// if it matches). Peers' ids live on their own hosts, so every host is
    /// asked, as for a [`Peer::broadcast`]: the report says how many
    /// peers have it, how many missed it (inbox full) and which hosts did
    /// not answer. Fails with [`BroadcastError::InvalidPattern`],
    /// [`BroadcastError::Partitioned`] (no other host took it) and
    /// [`BroadcastError::MessageTooLarge`].
    pub async fn send_group<T: Serialize + ?Sized>(
        &self,
        pattern: &str,
        value: &T,
    ) -> Result<BroadcastReport, BroadcastError> {
        self.send_group_payload(pattern, Payload::postcard(value)?)
            .await
    }

    /// Sends a value encoded as JSON to a group, from this peer.
    pub async fn send_group_json<T: Serialize + ?Sized>(
        &self,
        pattern: &str,
        value: &T,
    ) -> Result<BroadcastReport, BroadcastError> {
        self.send_group_payload(pattern, Payload::json(value)?)
            .await
    }

    /// Sends an encoded payload to a group, from this peer.
    pub async fn send_group_payload(
        &self,
        pattern: &str,
        payload: Payload,
    ) -> Result<BroadcastReport, BroadcastError> {
        self.fan_out(Some(pattern.to_string()), payload).await
    }

    /// A broadcast (`to` is `None`) or a group send from this peer.
    async fn fan_out(
        &self,
        to: Option<String>,
        payload: Payload,
    ) -> Result<BroadcastReport, BroadcastError> {
        if self.slot.is_removed() {
            return Err(BroadcastError::PeerNotFound(self.slot.id().to_string()));
        }
        self.host
            .broadcast_from(Arc::from(self.slot.id()), to, payload)
            .await
    }

    /// Starts a broadcast, or a group send to `to`, from this peer (see
    /// [`Peer::begin_send`]).
    #[cfg(feature = "gateway")]
    pub(crate) fn begin_broadcast(
        &self,
        to: Option<String>,
        payload: Payload,
    ) -> futures::future::BoxFuture<'static, Result<BroadcastReport, BroadcastError>> {
        let peer = self.clone();
        Box::pin(async move { peer.fan_out(to, payload).await })
    }

    /// Receives the next message; `None` once the peer is removed (or its
    /// host closed) and its inbox is empty.
    ///
    /// Cancel-safe. Only one task should wait on a peer at a time: a second
    /// concurrent waiter may not be woken.
    pub async fn recv(&self) -> Option<Message> {
        futures::future::poll_fn(|cx| self.slot.poll_recv(cx)).await
    }

    /// Takes a waiting message without waiting.
    pub fn try_recv(&self) -> Option<Message> {
        self.slot.try_recv()
    }

    /// Number of messages waiting in the inbox.
    pub fn pending(&self) -> usize {
        self.slot.len()
    }

    /// Waits until the directory resolves this peer's id to its host on
    /// every holder: from then on, any host finds it.
    ///
    /// An id belongs to the first live host that registered it. If another
    /// host holds it, this peer is removed (its receivers end) and this
    /// fails with [`CreateError::IdTaken`] naming that host; a duplicate
    /// never takes the first's messages. Fails with
    /// [`CreateError::PeerNotFound`] if the peer was removed, and
    /// [`CreateError::Timeout`] if the holders do not
    /// all confirm within twice the configured `request_timeout`.
    pub async fn registered(&self) -> Result<(), CreateError> {
        let host = self.host();
        let wait = host.config().request_timeout * 2;
        let deadline = tokio::time::Instant::now() + wait;
        let id = self.id().to_string();
        loop {
            let asked = id.clone();
            // The loop answers once the id is registered, or news of it
            // came and it is still pending; `Pending` at once only while
            // the id is contested (or too many checks wait).
            let call = host.call(|reply| Command::Registration { id: asked, reply });
            let Ok(status) = tokio::time::timeout_at(deadline, call).await else {
                return Err(CreateError::Timeout);
            };
            match status? {
                RegStatus::Registered => return Ok(()),
                RegStatus::Lost(owner) => return Err(CreateError::IdTaken { id, host: owner }),
                RegStatus::Removed => return Err(CreateError::PeerNotFound(id)),
                RegStatus::Pending => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CreateError::Timeout);
            }
            tokio::time::sleep(REGISTRATION_POLL).await;
        }
    }
}

/// Waits for the answer of a started send.
async fn wait_started(host: &Host, started: Started) -> Result<(), SendError> {
    let answer = match started {
        Started::Done => return Ok(()),
        Started::Queued { rx, timeout } => tokio::time::timeout(timeout, rx).await,
        Started::Full(full) => {
            // The command queue is full: wait for room (rare; boxed so
            // the common path's future stays small).
            let (cmd, rx, timeout) = *full;
            let commands = host.inner.commands.clone();
            let call = async move {
                commands.send(cmd).await?;
                Ok::<_, SendError>(rx.await)
            };
            match tokio::time::timeout(timeout, Box::pin(call)).await {
                Ok(r) => Ok(r?),
                Err(e) => Err(e),
            }
        }
    };
    match answer {
        Ok(r) => r?,
        Err(_) => {
            count_failure(&host.inner.shared.counters, &SendError::Timeout);
            Err(SendError::Timeout)
        }
    }
}

/// How long [`Peer::registered`] waits before asking again after a
/// `Pending` answer.
const REGISTRATION_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Where a send's outcome comes from.
type Outcome = oneshot::Receiver<Result<(), SendError>>;

/// How a send started.
enum Started {
    /// Delivered on this host.
    Done,
    /// Queued for the event loop; the answer comes on `rx`.
    Queued {
        rx: Outcome,
        timeout: std::time::Duration,
    },
    /// The event loop's queue is full: the command still has to go
    /// (boxed: a send returns this enum, and the common cases are small).
    Full(Box<(Command, Outcome, std::time::Duration)>),
}

impl Stream for Peer {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.slot.poll_recv(cx)
    }
}
