//! The libp2p side of a host: the combined network behaviour and the swarm
//! built on the configured transport.

use std::{num::NonZeroUsize, sync::Arc, time::Duration};

use libp2p::{
    connection_limits::{self, ConnectionLimits},
    core::{transport::MemoryTransport, upgrade},
    gossipsub, identify,
    identity::Keypair,
    kad, memory_connection_limits, noise,
    request_response::{self, ProtocolSupport},
    swarm::{behaviour::toggle::Toggle, NetworkBehaviour},
    tcp, yamux, StreamProtocol, Swarm, SwarmBuilder, Transport,
};

use crate::{
    config::{HostConfig, TransportKind},
    error::{Error, Result},
    protocol::{identify_version, rpc_protocol, Codec, WireStats},
};

/// Everything a host speaks, in one behaviour.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Connection counts: total, per host, pending.
    pub limits: connection_limits::Behaviour,
    /// Refuses connections while process memory is over the limit.
    pub memory: Toggle<memory_connection_limits::Behaviour>,
    /// Directory operations, lookups, join and leave, and direct messages
    /// between hosts that are not linked (or through a relay): the
    /// requesting side. Other hosts' requests come in on `exchanges`.
    pub rpc: request_response::Behaviour<Codec>,
    /// The answering side of the rpc protocol: inbound exchanges go to
    /// [`crate::rpc_stream::server::spawn_exchange_acceptor`].
    pub exchanges: crate::delivery::streams::Behaviour,
    /// Delivery streams: direct messages between linked hosts.
    pub streams: crate::delivery::streams::Behaviour,
    /// Request streams: the loop's requests between connected hosts.
    pub request_streams: crate::delivery::streams::Behaviour,
    /// Channels and membership gossip.
    pub gossipsub: gossipsub::Behaviour,
    /// Routing table, bootstrap and closest-host lookups.
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Listen addresses and the network id of connected hosts.
    pub identify: identify::Behaviour,
    /// In a relaying network, denies dials to hosts that are not overlay
    /// links (Kademlia's own).
    pub gate: crate::dial_gate::Behaviour,
}

/// Gossipsub message id: SHA-256 of the topic (length first) and the data,
/// 128 bits of it. Every published frame carries a random nonce, so distinct
/// publishes get distinct ids. A hash with a fixed definition: `std`'s
/// `DefaultHasher` may change between Rust releases, and hosts built with
/// different compilers would then disagree on ids (duplicates or drops).
fn message_id(m: &gossipsub::Message) -> gossipsub::MessageId {
    use sha2::Digest as _;
    let topic = m.topic.as_str().as_bytes();
    let mut h = sha2::Sha256::new();
    h.update((topic.len() as u64).to_be_bytes());
    h.update(topic);
    h.update(&m.data);
    gossipsub::MessageId::from(h.finalize()[..16].to_vec())
}

fn build_behaviour(
    key: &Keypair,
    cfg: &HostConfig,
    stats: Arc<WireStats>,
    (streams, request_streams, exchanges): (
        crate::delivery::streams::Behaviour,
        crate::delivery::streams::Behaviour,
        crate::delivery::streams::Behaviour,
    ),
) -> std::result::Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let net = &cfg.network_id;
    let rpc_proto = rpc_protocol(net).ok_or("invalid network id")?;
    let rpc = request_response::Behaviour::with_codec(
        Codec {
            max_frame: cfg.max_frame_size,
            stats,
        },
        [(rpc_proto, ProtocolSupport::Outbound)],
        request_response::Config::default()
            .with_request_timeout(cfg.request_timeout)
            .with_max_concurrent_streams(MAX_OUTBOUND_EXCHANGES),
    );

    // Anonymous gossipsub: links are already noise-authenticated, and
    // membership records carry their own signatures. Signed mode checks a
    // signature on every received copy, which capped 50 in-process hosts
    // near 160 msgs/s with losses; anonymous with a payload-hash id is ~6x
    // cheaper (see README, "Channels").
    let gs_cfg = gossipsub::ConfigBuilder::default()
        .protocol_id_prefix(format!("/distribus/{net}/meshsub"))
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(message_id)
        .max_transmit_size(cfg.max_message_size + 1024)
        .heartbeat_initial_delay(Duration::from_millis(100))
        .heartbeat_interval(cfg.gossip_heartbeat)
        .connection_handler_queue_len(20_000)
        .publish_queue_duration(Duration::from_secs(30))
        .forward_queue_duration(Duration::from_secs(10))
        .flood_publish(true)
        // The message cache keeps every frame sent or received for
        // `history_length` heartbeats, to answer IWANT: at 2 M publishes/s
        // five heartbeats were ~1 GB between two hosts, and faulting in its
        // fresh pages a quarter of the CPU. Flood publishing reaches every
        // known subscriber directly and records spread by digests, so the
        // gossip repair keeps one heartbeat of IHAVE and two of cache.
        .history_length(2)
        .history_gossip(1)
        .build()
        .map_err(|e| format!("gossipsub config: {e}"))?;
    let gossipsub: gossipsub::Behaviour =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gs_cfg)?;

    let local = key.public().to_peer_id();
    let kad_proto = StreamProtocol::try_from_owned(format!("/distribus/{net}/kad/1"))
        .map_err(|e| e.to_string())?;
    let mut kad_cfg = kad::Config::new(kad_proto);
    kad_cfg
        .set_query_timeout(cfg.request_timeout)
        .set_periodic_bootstrap_interval(Some(Duration::from_secs(300)))
        // No records or providers are stored in Kademlia (only its routing
        // table and closest-host lookups are used): without these jobs an
        // idle host arms none of their timers.
        .set_replication_interval(None)
        .set_publication_interval(None)
        .set_provider_publication_interval(None)
        .set_replication_factor(NonZeroUsize::new(cfg.replication).ok_or("replication 0")?);
    let mut kad = kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kad_cfg);
    // Loopback and memory hosts have no confirmed external address; without
    // server mode kad would stay a client and never be added to tables.
    kad.set_mode(Some(kad::Mode::Server));

    let identify = identify::Behaviour::new(
        identify::Config::new(identify_version(net), key.public())
            .with_agent_version(format!("distribus/{}", env!("CARGO_PKG_VERSION"))),
    );
    let limits = connection_limits::Behaviour::new(
        ConnectionLimits::default()
            .with_max_established(cfg.max_connections)
            .with_max_established_per_peer(cfg.max_connections_per_host)
            .with_max_pending_incoming(cfg.max_pending_connections)
            .with_max_pending_outgoing(cfg.max_pending_connections),
    );
    let memory = Toggle::from(
        cfg.max_memory_fraction
            .map(memory_connection_limits::Behaviour::with_max_percentage),
    );
    Ok(Behaviour {
        limits,
        memory,
        rpc,
        exchanges,
        streams,
        request_streams,
        gossipsub,
        kad,
        identify,
        gate: Default::default(),
    })
}

/// The handle that opens streams of one protocol, and the inbound ones.
pub(crate) type StreamEnds = (
    crate::delivery::streams::Opener,
    tokio::sync::mpsc::Receiver<(libp2p::PeerId, libp2p::Stream)>,
);

/// Why listening on `addr` must fail although libp2p would accept it: its
/// TCP port is held by another socket. libp2p-tcp sets `SO_REUSEPORT` on
/// listeners, so a second host of this process (or any process of this
/// user that does the same) would share the port silently and get half the
/// connections. A plain bind, without that option, is refused while anyone
/// listens there; the probe socket is closed at once.
pub(crate) fn busy_tcp_port(addr: &libp2p::Multiaddr) -> Option<String> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::from(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::from(a)),
            Protocol::Tcp(0) => return None,
            Protocol::Tcp(port) => {
                let sa = std::net::SocketAddr::new(ip?, port);
                return match std::net::TcpListener::bind(sa) {
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        Some(format!("TCP port {port} is already in use ({e})"))
                    }
                    _ => None,
                };
            }
            _ => {}
        }
    }
    None
}

/// Request-response exchanges this host may have open at once on one
/// connection, as the requester (libp2p fails further ones at once, as
/// `OutboundFailure::Io`). Inbound exchanges are bounded per remote host by
/// `rpc_stream::server::EXCHANGES_PER_HOST`.
const MAX_OUTBOUND_EXCHANGES: usize = 256;

/// The swarm, the ends of its delivery and request streams, and the
/// inbound rpc exchanges.
pub(crate) type Built = (
    Swarm<Behaviour>,
    StreamEnds,
    StreamEnds,
    (
        tokio::sync::mpsc::Receiver<(libp2p::PeerId, libp2p::Stream)>,
        crate::rpc_stream::server::Refusals,
    ),
);

/// TCP and WebSocket (with DNS), each connection metered
/// ([`crate::metered`]); on a closed network the pnet handshake under `psk`
/// comes first, then noise and yamux as on an open one. (libp2p's
/// `SwarmBuilder` has no step to wrap the raw connection of its TCP and
/// WebSocket phases, so the transport is composed here.)
fn tcp_and_ws(
    k: &Keypair,
    psk: Option<libp2p::pnet::PreSharedKey>,
    stats: Arc<WireStats>,
) -> std::result::Result<
    libp2p::core::transport::Boxed<(libp2p::PeerId, libp2p::core::muxing::StreamMuxerBox)>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    let tcp = || libp2p::tcp::tokio::Transport::new(tcp::Config::default());
    let ws = libp2p::websocket::Config::new(libp2p::dns::tokio::Transport::system(tcp())?);
    let base = ws.or_transport(libp2p::dns::tokio::Transport::system(tcp())?);
    Ok(base
        .map(move |conn, _| crate::metered::Metered::new(conn, stats.clone()))
        .and_then(move |conn, _| private(conn, psk))
        .upgrade(upgrade::Version::V1)
        .authenticate(noise::Config::new(k)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, libp2p::core::muxing::StreamMuxerBox::new(muxer)))
        .boxed())
}

/// The pnet handshake under `psk` on `conn`, or `conn` as it is on an open
/// network.
async fn private<S>(
    conn: S,
    psk: Option<libp2p::pnet::PreSharedKey>,
) -> std::result::Result<
    futures::future::Either<S, libp2p::pnet::PnetOutput<S>>,
    libp2p::pnet::PnetError,
>
where
    S: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static,
{
    use futures::future::Either;
    match psk {
        None => Ok(Either::Left(conn)),
        Some(psk) => libp2p::pnet::PnetConfig::new(psk)
            .handshake(conn)
            .await
            .map(Either::Right),
    }
}

/// Builds the swarm for `cfg` with identity `key`.
pub(crate) async fn build_swarm(
    key: Keypair,
    cfg: &HostConfig,
    stats: Arc<WireStats>,
) -> Result<Built> {
    fn terr<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
        Error::Transport(crate::Cause::new(e))
    }
    let bad_id = || Error::Transport(crate::Cause::msg("invalid network id"));
    let protocol = crate::protocol::deliver_protocol(&cfg.network_id).ok_or_else(bad_id)?;
    // A delivery or request stream past what is taken is dropped: its
    // sender opens another.
    let dropped: crate::delivery::streams::Refuse = Arc::new(drop);
    let (streams, opener, inbound) =
        crate::delivery::streams::Behaviour::new(protocol, stats.clone(), dropped.clone());
    let protocol = crate::protocol::request_stream_protocol(&cfg.network_id).ok_or_else(bad_id)?;
    let (request_streams, req_opener, req_inbound) =
        crate::delivery::streams::Behaviour::new(protocol, stats.clone(), dropped);
    let protocol = rpc_protocol(&cfg.network_id).ok_or_else(bad_id)?;
    // Never opens streams: requests go out by request-response. An
    // exchange past what is taken is answered with a refusal.
    let refusals = crate::rpc_stream::server::Refusals::new(cfg.max_frame_size);
    let refuse = refusals.clone();
    let (exchanges, _, exchanges_inbound) = crate::delivery::streams::Behaviour::new(
        protocol,
        stats.clone(),
        Arc::new(move |s| refuse.refuse(s)),
    );
    let streams = (streams, request_streams, exchanges);
    let idle = cfg.idle_connection_timeout;
    let psk = cfg.network_key.map(|k| k.0);
    let swarm = match (cfg.transport, psk) {
        (TransportKind::Tcp, psk) => SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_other_transport(|k| tcp_and_ws(k, psk, stats.clone()))
            .map_err(terr)?
            .with_behaviour(|k| build_behaviour(k, cfg, stats, streams))
            .map_err(terr)?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build(),
        (TransportKind::Memory, psk) => SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_other_transport(
                |k| -> std::result::Result<_, Box<dyn std::error::Error + Send + Sync>> {
                    let (delay, loss) = (cfg.link_delay, cfg.link_loss);
                    let metered = stats.clone();
                    Ok(MemoryTransport::default()
                        .map(move |conn, _| {
                            use futures::future::Either;
                            let conn = crate::metered::Metered::new(conn, metered.clone());
                            if delay.is_zero() && loss == 0.0 {
                                Either::Left(conn)
                            } else {
                                Either::Right(crate::link_delay::DelayedLink::new(
                                    conn, delay, loss,
                                ))
                            }
                        })
                        .and_then(move |conn, _| private(conn, psk))
                        .upgrade(upgrade::Version::V1)
                        .authenticate(noise::Config::new(k)?)
                        .multiplex(yamux::Config::default()))
                },
            )
            .map_err(terr)?
            .with_behaviour(|k| build_behaviour(k, cfg, stats, streams))
            .map_err(terr)?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build(),
    };
    Ok((
        swarm,
        (opener, inbound),
        (req_opener, req_inbound),
        (exchanges_inbound, refusals),
    ))
}

#[cfg(test)]
mod tests {
    /// The id is a fixed function of topic and data: this value must never
    /// change, or hosts of different builds stop agreeing on ids.
    #[test]
    fn message_ids_have_a_fixed_definition() {
        let m = libp2p::gossipsub::Message {
            source: None,
            data: b"hello".to_vec(),
            sequence_number: None,
            topic: libp2p::gossipsub::TopicHash::from_raw("news"),
        };
        let id = super::message_id(&m);
        let hex: String = id.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex.len(), 32);
        assert_eq!(id, super::message_id(&m.clone()));
        let other = libp2p::gossipsub::Message {
            topic: libp2p::gossipsub::TopicHash::from_raw("new"),
            data: b"shello".to_vec(),
            ..m
        };
        assert_ne!(super::message_id(&other), id, "topic and data stay apart");
        assert_eq!(hex, FIXED);
    }

    /// SHA-256 of 4u64 (big endian) ‖ "news" ‖ "hello", first 16 bytes.
    const FIXED: &str = "d1108f0fa174533acb98b6988f3024f2";
}
