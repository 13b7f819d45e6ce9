//! The network behaviour of delivery streams: it opens outbound streams on
//! an existing connection when a link task asks ([`Opener`]) and hands
//! inbound ones to the acceptor.
//!
//! Written for this one protocol rather than taken from `libp2p-stream`:
//! that crate's handler builds its protocol list under a lock shared by all
//! connections every time a connection is polled, which cost a 256-host
//! simulation a fifth of its registration rate. Here the listen protocol is
//! a fixed name. Streams are opened only on a connection that exists (the
//! event loop decides when hosts are linked; it dials, this never does).

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    io,
    sync::Arc,
    task::{Context, Poll},
};

use libp2p::{
    core::{transport::PortUse, upgrade::ReadyUpgrade, Endpoint},
    swarm::{
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
        },
        ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
        NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId, Stream, StreamProtocol,
};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::WireStats;

/// Stream requests waiting for the swarm, at most.
const OPEN_QUEUE: usize = 256;
/// Inbound streams waiting for the acceptor, at most (more are reset and
/// counted in `Stats::refused_streams`; the sender opens another).
const INBOUND_QUEUE: usize = 256;

/// Where an opened stream (or why none opened) goes.
type Reply = oneshot::Sender<io::Result<Stream>>;

/// Asks the behaviour for outbound delivery streams.
#[derive(Debug, Clone)]
pub(crate) struct Opener {
    tx: mpsc::Sender<(PeerId, Reply)>,
}

impl Opener {
    /// Opens a delivery stream to `host` on a connection to it.
    pub(crate) async fn open(&self, host: PeerId) -> io::Result<Stream> {
        let (reply, rx) = oneshot::channel();
        let gone = || io::Error::new(io::ErrorKind::ConnectionReset, "host closed");
        self.tx.send((host, reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// The delivery stream behaviour.
pub(crate) struct Behaviour {
    protocol: StreamProtocol,
    opens: mpsc::Receiver<(PeerId, Reply)>,
    inbound: mpsc::Sender<(PeerId, Stream)>,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    wire: Arc<WireStats>,
    overflow: Refuse,
}

/// What becomes of a stream this host does not take: answered with the
/// protocol's refusal where it has one, or dropped. It must not wait.
pub(crate) type Refuse = Arc<dyn Fn(Stream) + Send + Sync>;

impl Behaviour {
    /// The behaviour, the handle that opens streams and the receiver of
    /// inbound streams.
    /// Inbound streams that find the acceptor's queue full go to
    /// `overflow`, counted in `wire`: a burst that outruns the acceptor is
    /// refused as the acceptor itself would refuse it.
    pub(crate) fn new(
        protocol: StreamProtocol,
        wire: Arc<WireStats>,
        overflow: Refuse,
    ) -> (Self, Opener, mpsc::Receiver<(PeerId, Stream)>) {
        let (tx, opens) = mpsc::channel(OPEN_QUEUE);
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let b = Behaviour {
            protocol,
            opens,
            inbound,
            connections: HashMap::new(),
            wire,
            overflow,
        };
        (b, Opener { tx }, inbound_rx)
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            protocol: self.protocol.clone(),
            inbound: self.inbound.clone(),
            wire: self.wire.clone(),
            overflow: self.overflow.clone(),
            requested: VecDeque::new(),
            negotiating: VecDeque::new(),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connections
                    .entry(e.peer_id)
                    .or_default()
                    .push(e.connection_id);
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(conns) = self.connections.get_mut(&e.peer_id) {
                    conns.retain(|c| *c != e.connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&e.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        ev: THandlerOutEvent<Self>,
    ) {
        match ev {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some((peer, reply))) = self.opens.poll_recv(cx) {
            // The newest connection: an older one may be closing.
            match self.connections.get(&peer).and_then(|c| c.last()) {
                Some(conn) => {
                    return Poll::Ready(ToSwarm::NotifyHandler {
                        peer_id: peer,
                        handler: NotifyHandler::One(*conn),
                        event: reply,
                    })
                }
                None => {
                    let _ = reply.send(Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "not linked to that host",
                    )));
                }
            }
        }
        Poll::Pending
    }
}

/// The per-connection side: opens what it is asked to, passes on what
/// comes in.
pub(crate) struct Handler {
    peer: PeerId,
    protocol: StreamProtocol,
    inbound: mpsc::Sender<(PeerId, Stream)>,
    wire: Arc<WireStats>,
    overflow: Refuse,
    /// Requests not yet turned into stream requests.
    requested: VecDeque<Reply>,
    /// Requests whose stream is being negotiated (any stream answers any
    /// of them).
    negotiating: VecDeque<Reply>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Reply;
    type ToBehaviour = Infallible;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ())
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Infallible>> {
        match self.requested.pop_front() {
            Some(reply) => {
                self.negotiating.push_back(reply);
                Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                    protocol: SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ()),
                })
            }
            None => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, reply: Reply) {
        self.requested.push_back(reply);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                let peer = self.peer;
                if let Err(e) = self.inbound.try_send((peer, stream)) {
                    self.wire.count_refused_stream();
                    tracing::debug!(host = %peer, protocol = %self.protocol, "inbound stream queue full; refused one");
                    let (_, stream) = e.into_inner();
                    (self.overflow)(stream);
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => {
                if let Some(reply) = self.negotiating.pop_front() {
                    let _ = reply.send(Ok(stream));
                }
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                if let Some(reply) = self.negotiating.pop_front() {
                    let _ = reply.send(Err(io::Error::other(error.to_string())));
                }
            }
            _ => {}
        }
    }
}

/// Runs `serve` on each stream in `incoming`, at most `per_host` at a time
/// for one remote host: a remote party cannot grow the number of tasks.
/// Streams past that go to `refuse` as they arrive, which must not wait
/// (it answers what it can at once and drops the stream); each is counted
/// in `wire`. `serve` returns its stream's host. Ends when `incoming` does;
/// dropping it ends every `serve`.
pub(crate) async fn accept_limited<F, Fut, R>(
    mut incoming: mpsc::Receiver<(PeerId, Stream)>,
    per_host: usize,
    wire: Arc<WireStats>,
    serve: F,
    refuse: R,
) where
    F: Fn(PeerId, Stream) -> Fut,
    Fut: std::future::Future<Output = PeerId> + Send + 'static,
    R: Fn(Stream),
{
    let mut tasks = tokio::task::JoinSet::new();
    let mut open: HashMap<PeerId, usize> = HashMap::new();
    loop {
        tokio::select! {
            next = incoming.recv() => {
                let Some((host, stream)) = next else { break };
                let n = open.entry(host).or_default();
                if *n >= per_host {
                    wire.count_refused_stream();
                    tracing::debug!(%host, "too many streams from one host; refused one");
                    refuse(stream);
                    continue;
                }
                *n += 1;
                tasks.spawn(serve(host, stream));
            }
            Some(done) = tasks.join_next() => {
                if let Ok(host) = done {
                    if let Some(n) = open.get_mut(&host) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            open.remove(&host);
                        }
                    }
                }
            }
        }
    }
}
