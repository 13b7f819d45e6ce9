//! [`Host`]: the cheap, cloneable handle through which a program uses distribus.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use libp2p::{identity::Keypair, multiaddr::Protocol, Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::{
    behaviour::build_swarm,
    broadcast::BroadcastReport,
    command::{Command, HostInfo, Location, Readiness, SubSink},
    config::HostConfig,
    error::{
        BroadcastError, Cause, Closed, CreateError, Error, FindError, JoinError, ListenError,
        PublishError, Result, SubscribeError,
    },
    event_loop::EventLoop,
    inbox::PeerSlot,
    message::Payload,
    peer::Peer,
    protocol::WireStats,
    shared::{Shared, SlotChange, Stats},
    subscription::Subscription,
};

/// Commands waiting for the event loop; senders wait when it is full.
const COMMAND_QUEUE: usize = 4096;
/// Longest peer id and channel name, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// A distribus host: one node of the network, holding any number of peers.
///
/// `Host` is a cheap handle (an `Arc`); clone it freely. One task per host,
/// spawned on the current tokio runtime, owns the libp2p swarm; the handle's
/// methods send it commands. [`Host::close`] leaves the network gracefully;
/// dropping every handle (including those held by [`Peer`]s and
/// [`Subscription`]s) stops the host abruptly, as a crash would.
///
/// Unless a method says otherwise, dropping its future is safe: the operation
/// is abandoned, and a message whose send was abandoned before it left is not
/// delivered.
#[derive(Clone, Debug)]
pub struct Host {
    pub(crate) inner: Arc<Inner>,
}

/// What every handle of one host shares. When the last one is dropped the
/// command channel closes, and the event loop stops without a leave.
#[derive(Debug)]
pub(crate) struct Inner {
    pub shared: Arc<Shared>,
    pub commands: mpsc::Sender<Command>,
    next_sub: AtomicU64,
}

/// Checks a peer id: non-empty UTF-8 of at most [`MAX_ID_LEN`] bytes; the
/// error is the reason, for each operation's `InvalidId`.
pub(crate) fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the id is empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "the id is {} bytes long; the limit is {MAX_ID_LEN}",
            id.len()
        ));
    }
    Ok(())
}

/// Parses a multiaddr, or a `ws://host:port` URL as the JavaScript original took.
pub fn parse_address(addr: &str) -> Result<Multiaddr> {
    parse_multiaddr(addr).map_err(|source| Error::InvalidAddress {
        addr: addr.to_string(),
        source,
    })
}

/// [`parse_address`], with the reason it failed, for each operation's
/// `InvalidAddress`.
fn parse_multiaddr(addr: &str) -> Result<Multiaddr, Cause> {
    let invalid = |reason: &str| Cause::msg(reason);
    if let Some(rest) = addr
        .strip_prefix("ws://")
        .or_else(|| addr.strip_prefix("wss://").map(|_| ""))
    {
        if rest.is_empty() {
            return Err(invalid("wss:// is not supported; use ws:// or a multiaddr"));
        }
        let hostport = rest.split('/').next().unwrap_or_default();
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| invalid("a ws:// URL needs host:port"))?;
        let port: u16 = port.parse().map_err(|_| invalid("bad port"))?;
        let mut m = Multiaddr::empty();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => m.push(Protocol::Ip4(ip)),
            Ok(std::net::IpAddr::V6(ip)) => m.push(Protocol::Ip6(ip)),
            Err(_) => m.push(Protocol::Dns(host.to_string().into())),
        }
        m.push(Protocol::Tcp(port));
        m.push(Protocol::Ws("/".into()));
        return Ok(m);
    }
    addr.parse::<Multiaddr>().map_err(Cause::new)
}

impl Host {
    /// Creates a host and starts its event loop on the current tokio runtime.
    ///
    /// The host listens nowhere yet; call [`Host::listen`] and [`Host::join`].
    pub async fn new(config: HostConfig) -> Result<Host> {
        Host::start(config).await
    }

    /// The body of [`Host::new`], boxed: an `async fn`'s state machine is
    /// compiled in every crate that awaits it, with everything it spawns,
    /// here the whole event loop and swarm. Behind a plain function and a
    /// `dyn Future` they are compiled once, in this crate (each example,
    /// test and binary built about a minute of CPU faster).
    fn start(
        mut config: HostConfig,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Host>> + Send>> {
        Box::pin(async move {
            config.validate()?;
            let key = config
                .keypair
                .clone()
                .unwrap_or_else(Keypair::generate_ed25519);
            config.keypair = Some(key.clone());
            let local = key.public().to_peer_id();
            let wire = Arc::new(WireStats::default());
            let (swarm, delivery, requests, exchanges) =
                build_swarm(key.clone(), &config, wire.clone()).await?;
            let shared = Arc::new(Shared::new(local, config, wire));
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            let event_loop = EventLoop::new(
                swarm,
                shared.clone(),
                rx,
                key,
                delivery,
                (requests, exchanges),
            );
            let short = local.to_base58();
            let span = tracing::info_span!("host", id = %&short[short.len().saturating_sub(6)..]);
            tokio::spawn(event_loop.run().instrument(span));
            Ok(Host {
                inner: Arc::new(Inner {
                    shared,
                    commands: tx,
                    next_sub: AtomicU64::new(1),
                }),
            })
        })
    }

    /// This host's libp2p peer id.
    pub fn id(&self) -> PeerId {
        self.inner.shared.local
    }

    /// This host's epoch (incarnation): the wall clock at start in
    /// nanoseconds since the Unix epoch, raised above
    /// [`HostConfig::min_epoch`]. Other hosts take a restarted identity only
    /// at a higher epoch: keep this value with a persistent key and pass it
    /// as `min_epoch` on the next start, so that a clock stepped back in
    /// between does not make the new incarnation look older.
    pub fn epoch(&self) -> u64 {
        self.inner.shared.epoch
    }

    /// The current configuration (with the host's keypair filled in).
    pub fn config(&self) -> HostConfig {
        self.inner.shared.config()
    }

    /// Replaces the configuration. Only fields marked *run time* in
    /// [`HostConfig`] may differ from the current ones; otherwise
    /// [`Error::Config`].
    pub fn set_config(&self, config: HostConfig) -> Result<()> {
        let mut cur = self
            .inner
            .shared
            .config
            .write()
            .unwrap_or_else(|p| p.into_inner());
        cur.check_runtime_change(&config)?;
        let mut config = config;
        config.keypair = config.keypair.or_else(|| cur.keypair.clone());
        config.network_key = config.network_key.or(cur.network_key);
        let shared = &self.inner.shared;
        shared
            .max_message_size
            .store(config.max_message_size, Ordering::Relaxed);
        *cur = config;
        shared.config_changes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn check_open(&self) -> Result<(), Closed> {
        if self.inner.shared.is_closed() {
            Err(Closed)
        } else {
            Ok(())
        }
    }

    /// Sends a command and waits for its reply.
    pub(crate) async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Closed> {
        self.check_open()?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(make(tx))
            .await
            .map_err(|_| Closed)?;
        rx.await.map_err(|_| Closed)
    }

    /// Listens on a multiaddr such as `/ip4/127.0.0.1/tcp/0`,
    /// `/ip4/127.0.0.1/tcp/0/ws` or `/memory/0`. Returns the address actually
    /// bound, ending in `/p2p/<host id>`: give it to other hosts' `join`.
    pub async fn listen(&self, addr: &str) -> Result<Vec<Multiaddr>, ListenError> {
        let addr = parse_multiaddr(addr).map_err(|source| ListenError::InvalidAddress {
            addr: addr.to_string(),
            source,
        })?;
        self.call(|reply| Command::Listen { addr, reply }).await?
    }

    /// Joins the network of the host at `addr` (a multiaddr or a `ws://` URL).
    ///
    /// Resolves once the two hosts are connected, have checked they share a
    /// network id, and have swapped their membership, so this host knows the
    /// whole network. Fails with [`JoinError::NetworkMismatch`] for a host
    /// of another network and [`JoinError::Join`] for a dead address, within
    /// `join_timeout`. Returns the joined host's id.
    pub async fn join(&self, addr: &str) -> Result<PeerId, JoinError> {
        let shown = addr.to_string();
        let parsed = parse_multiaddr(addr).map_err(|source| JoinError::InvalidAddress {
            addr: shown.clone(),
            source,
        })?;
        let timeout = self.inner.shared.with_config(|c| c.join_timeout);
        let call = self.call(|reply| Command::Join {
            addr: parsed,
            shown: shown.clone(),
            reply,
        });
        match tokio::time::timeout(timeout + Duration::from_secs(1), call).await {
            Ok(r) => r?,
            Err(_) => Err(JoinError::Join {
                addr: shown,
                source: Cause::msg("no answer in time"),
            }),
        }
    }

    /// Creates a peer with this id on this host.
    ///
    /// Costs no network round trip: the directory learns of the peer in the
    /// background, in batches. Fails with [`CreateError::IdExists`] if the
    /// id is taken on this host and [`CreateError::InvalidId`] if it is not
    /// valid.
    pub fn create(&self, id: &str) -> Result<Peer, CreateError> {
        self.check_open()?;
        validate_id(id).map_err(CreateError::InvalidId)?;
        let capacity = self.inner.shared.with_config(|c| c.inbox_capacity);
        let slot = PeerSlot::new(id, capacity);
        if !self.inner.shared.registry.insert(slot.clone()) {
            return Err(CreateError::IdExists(id.to_string()));
        }
        self.inner.shared.push_change(SlotChange {
            register: true,
            id: crate::directory::Id::from(slot.id()),
            slot: slot.clone(),
        });
        Ok(Peer::new(self.clone(), slot))
    }

    /// Creates a peer and waits until the whole network resolves its id to
    /// this host ([`Peer::registered`]).
    ///
    /// Fails with [`CreateError::IdTaken`] if another live host registered
    /// the id first (the local peer is then removed), and with the errors of
    /// [`Host::create`] and [`Peer::registered`].
    pub async fn create_unique(&self, id: &str) -> Result<Peer, CreateError> {
        let peer = self.create(id)?;
        match peer.registered().await {
            Ok(()) => Ok(peer),
            Err(e) => {
                let _ = self.remove(&peer);
                Err(e)
            }
        }
    }

    /// A handle to the peer with this id on this host, if there is one.
    ///
    /// Handles share the peer's inbox: a message goes to whichever handle
    /// receives first.
    pub fn get(&self, id: &str) -> Option<Peer> {
        if self.inner.shared.is_closed() {
            return None;
        }
        let slot = self.inner.shared.registry.get(id)?;
        Some(Peer::new(self.clone(), slot))
    }

    /// Removes a peer (by id or by handle) and withdraws it from the
    /// directory. Its receivers end. Returns whether it existed.
    pub fn remove(&self, peer: impl AsRef<str>) -> Result<bool, Closed> {
        self.check_open()?;
        let Some(slot) = self.inner.shared.registry.remove(peer.as_ref()) else {
            return Ok(false);
        };
        self.inner.shared.push_change(SlotChange {
            register: false,
            id: crate::directory::Id::from(slot.id()),
            slot,
        });
        Ok(true)
    }

    /// Number of peers on this host.
    pub fn peer_count(&self) -> usize {
        self.inner.shared.registry.len()
    }

    /// Ids of up to `limit` peers on this host, in no particular order
    /// ([`Host::peer_count`] says how many there are in all).
    pub fn peer_ids(&self, limit: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(limit.min(self.peer_count()));
        self.inner.shared.registry.for_each(|id, _| {
            if ids.len() < limit {
                ids.push(id.to_string());
            }
        });
        ids
    }

    /// Where a peer lives: from this host's own peers, or one hop to the
    /// holders of its directory entry. [`FindError::PeerNotFound`] if no
    /// host holds it.
    ///
    /// An answer is reused, without asking again, for
    /// [`HostConfig::find_cache_ttl`] (1 s by default; its `round_trips` is
    /// then 0), unless its host leaves or restarts, says the peer is not
    /// there, or the peer moved from or to this host: within that time a
    /// peer that moved between two other hosts may still be reported where
    /// it was.
    pub async fn find(&self, id: &str) -> Result<Location, FindError> {
        validate_id(id).map_err(FindError::InvalidId)?;
        let shared = &self.inner.shared;
        let (timeout, ttl) = shared.with_config(|c| (c.request_timeout, c.find_cache_ttl));
        if !ttl.is_zero() {
            if let Some(loc) = shared.finds.get(id, Instant::now(), ttl) {
                // This host knows its own peers: an answer that says the
                // peer is here when it is not, or elsewhere when it is
                // here now, is stale.
                if (loc.host == shared.local) == shared.registry.get(id).is_some() {
                    return Ok(loc);
                }
                shared.finds.forget(id);
            }
        }
        let asked = Instant::now();
        let owned = id.to_string();
        let find = self.call(|reply| Command::Find { id: owned, reply });
        let loc = match tokio::time::timeout(timeout, find).await {
            Ok(r) => r??,
            Err(_) => return Err(FindError::Timeout),
        };
        if !ttl.is_zero() {
            // Aged from the ask: an answer is no fresher than its question.
            shared.finds.put(id, loc.clone(), asked);
        }
        Ok(loc)
    }

    /// Subscribes to a channel. The subscription is a stream of every message
    /// published on the channel from now on, on any host; dropping it ends it.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, SubscribeError> {
        self.subscribe_to(channel, None).await
    }

    /// Joins the queue group `group` on `channel` (a channel name or
    /// pattern), as NATS's queue subscriptions: each publish on a matching
    /// channel goes to exactly one member of the group, on any host, the
    /// members taking turns (in proportion to their number on each host).
    /// Groups are named per pattern: `workers` on `jobs` and `workers` on
    /// `jobs.*` are two groups.
    ///
    /// A member whose queue is full is passed over, and a host that cannot
    /// take it (gone, unreachable) too: the next member takes it, so when a
    /// member's host dies the others take over. The publisher's `publish`
    /// resolves once a member of every matching group has it, and fails with
    /// [`PublishError::QueueUnavailable`] when no member of a group could
    /// take it.
    /// Plain subscriptions of the channel get every publish as usual.
    pub async fn subscribe_queue(
        &self,
        channel: &str,
        group: &str,
    ) -> Result<Subscription, SubscribeError> {
        crate::queue_group::check_group_name(group).map_err(SubscribeError::InvalidChannel)?;
        self.subscribe_to(channel, Some(group.to_string())).await
    }

    /// A subscription to `channel`, or a member of its queue group `group`.
    async fn subscribe_to(
        &self,
        channel: &str,
        group: Option<String>,
    ) -> Result<Subscription, SubscribeError> {
        crate::channel_name::check_pattern(channel).map_err(SubscribeError::InvalidChannel)?;
        self.check_open()?;
        let capacity = self.inner.shared.with_config(|c| c.subscription_capacity);
        let (tx, rx) = mpsc::channel(capacity);
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        let missed = Arc::new(AtomicU64::new(0));
        let sink = SubSink {
            id,
            tx,
            missed: missed.clone(),
        };
        self.call(|reply| Command::Subscribe {
            channel: channel.to_string(),
            group: group.clone(),
            sink,
            reply,
        })
        .await??;
        Ok(Subscription::new(
            self.clone(),
            (channel.to_string(), group),
            id,
            rx,
            missed,
        ))
    }

    /// Ends every subscription of this host on `channel` (memberships of
    /// its queue groups end when their [`Subscription`] is dropped).
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), SubscribeError> {
        crate::channel_name::check_pattern(channel).map_err(SubscribeError::InvalidChannel)?;
        self.check_open()?;
        self.inner
            .commands
            .send(Command::Unsubscribe {
                channel: channel.to_string(),
                group: None,
                id: None,
            })
            .await?;
        Ok(())
    }

    /// Publishes a value (encoded with postcard) on a channel: every
    /// subscription on every host receives it once, this host's included.
    ///
    /// Resolves when the message is handed to the gossip layer, and a
    /// member of each matching queue group ([`Host::subscribe_queue`]) has
    /// it. Right after a join it waits (up to `publish_warmup`) for the mesh
    /// to reach the channel's subscribers; under load it waits for queue
    /// room.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        value: &T,
    ) -> Result<(), PublishError> {
        self.publish_payload(channel, Payload::postcard(value)?)
            .await
    }

    /// Publishes a value encoded as JSON.
    pub async fn publish_json<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        value: &T,
    ) -> Result<(), PublishError> {
        self.publish_payload(channel, Payload::json(value)?).await
    }

    /// Publishes an encoded payload.
    pub async fn publish_payload(
        &self,
        channel: &str,
        payload: Payload,
    ) -> Result<(), PublishError> {
        crate::channel_name::check_name(channel).map_err(PublishError::InvalidChannel)?;
        let limit = self.inner.shared.max_message_size.load(Ordering::Relaxed);
        if payload.len() > limit {
            return Err(PublishError::MessageTooLarge {
                size: payload.len(),
                limit,
            });
        }
        let lane = &self.inner.shared.publish_lane;
        if lane.takes(channel) {
            self.check_open()?;
            return lane.push(channel, payload).await;
        }
        self.call(|reply| Command::Publish {
            channel: channel.to_string(),
            payload,
            reply,
        })
        .await?
    }

    /// Delivers a value, encoded with postcard, to every peer on every live
    /// host (this one's included), once each; its `from` is this host's id.
    ///
    /// One request goes to each host, which puts the message in its peers'
    /// inboxes and answers with how many have it. Resolves when every host
    /// has answered or failed, with what it reached ([`BroadcastReport`]:
    /// peers whose inbox was full missed it; hosts that did not answer are
    /// named). Fails with [`BroadcastError::Partitioned`] when there are
    /// other hosts and none took it, and [`BroadcastError::MessageTooLarge`].
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<BroadcastReport, BroadcastError> {
        self.broadcast_payload(Payload::postcard(value)?).await
    }

    /// Broadcasts a value encoded as JSON (see [`Host::broadcast`]).
    pub async fn broadcast_json<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<BroadcastReport, BroadcastError> {
        self.broadcast_payload(Payload::json(value)?).await
    }

    /// Broadcasts an encoded payload (see [`Host::broadcast`]).
    pub async fn broadcast_payload(
        &self,
        payload: Payload,
    ) -> Result<BroadcastReport, BroadcastError> {
        let from: std::sync::Arc<str> = std::sync::Arc::from(self.id().to_string());
        self.broadcast_from(from, None, payload).await
    }

    /// Delivers a value, encoded with postcard, to every peer whose id
    /// matches `pattern`, on every live host (this one's included), once
    /// each; its `from` is this host's id. See [`Peer::send_group`].
    pub async fn send_group<T: Serialize + ?Sized>(
        &self,
        pattern: &str,
        value: &T,
    ) -> Result<BroadcastReport, BroadcastError> {
        self.send_group_payload(pattern, Payload::postcard(value)?)
            .await
    }

    /// Sends a value encoded as JSON to a group (see [`Host::send_group`]).
    pub async fn send_group_json<T: Serialize + ?Sized>(
        &self,
        pattern: &str,
        value: &T,
    ) -> Result<BroadcastReport, BroadcastError> {
        self.send_group_payload(pattern, Payload::json(value)?)
            .await
    }

    /// Sends an encoded payload to a group (see [`Host::send_group`]).
    pub async fn send_group_payload(
        &self,
        pattern: &str,
        payload: Payload,
    ) -> Result<BroadcastReport, BroadcastError> {
        let from: std::sync::Arc<str> = std::sync::Arc::from(self.id().to_string());
        self.broadcast_from(from, Some(pattern.to_string()), payload)
            .await
    }

    /// A broadcast, or a group send when `to` is a pattern of peer ids,
    /// whose `from` is `from` (this host, or one of its peers).
    pub(crate) async fn broadcast_from(
        &self,
        from: std::sync::Arc<str>,
        to: Option<String>,
        payload: Payload,
    ) -> Result<BroadcastReport, BroadcastError> {
        if let Some(p) = &to {
            crate::channel_name::check_group(p).map_err(BroadcastError::InvalidPattern)?;
        }
        let (limit, timeout) = self
            .inner
            .shared
            .with_config(|c| (c.max_message_size, c.request_timeout));
        if payload.len() > limit {
            return Err(BroadcastError::MessageTooLarge {
                size: payload.len(),
                limit,
            });
        }
        // Each host's request fails by itself within the request timeout
        // (a relayed one within a few); this bounds the whole.
        let call = self.call(|reply| Command::Broadcast {
            from,
            to,
            payload,
            reply,
        });
        match tokio::time::timeout(timeout * 3, call).await {
            Ok(r) => r?,
            Err(_) => Err(BroadcastError::Timeout),
        }
    }

    /// The other live hosts this host knows.
    pub async fn members(&self) -> Result<Vec<HostInfo>, Closed> {
        self.call(|reply| Command::Members { reply }).await
    }

    /// Whether this host has joined others and its membership has converged
    /// with theirs (what `distribus-node`'s `/readyz` answers).
    pub async fn readiness(&self) -> Result<Readiness, Closed> {
        self.call(|reply| Command::Readiness { reply }).await
    }

    /// The host this host's location cache holds for `id`, if any.
    pub async fn cached_location(&self, id: &str) -> Result<Option<PeerId>, Closed> {
        let id = id.to_string();
        self.call(|reply| Command::CachedLocation { id, reply })
            .await
    }

    /// Counters of this host.
    pub fn stats(&self) -> Stats {
        self.inner.shared.stats()
    }

    /// Leaves the network gracefully: the other hosts are told at once and
    /// forget this host's peers; then the event loop stops. Afterwards every
    /// method fails with its `Closed`. Closing twice is fine.
    pub async fn close(&self) {
        if self.inner.shared.mark_closed() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Close { reply: tx })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Whether [`Host::close`] was called or the event loop ended.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls_become_multiaddrs() {
        assert_eq!(
            parse_address("ws://127.0.0.1:3000").unwrap().to_string(),
            "/ip4/127.0.0.1/tcp/3000/ws"
        );
        assert_eq!(
            parse_address("ws://localhost:80/").unwrap().to_string(),
            "/dns/localhost/tcp/80/ws"
        );
        assert!(parse_address("ws://nohost").is_err());
        assert!(parse_address("wss://a:1").is_err());
        assert!(parse_address("not an address").is_err());
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("").is_err());
        assert!(validate_id(&"x".repeat(257)).is_err());
        assert!(validate_id(&"é".repeat(128)).is_ok());
    }
}
