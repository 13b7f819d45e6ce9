//! A bare libp2p swarm that speaks the distribus request protocol with raw
//! bytes: the malformed-input and attack tests send whatever they like.

use std::{io, time::Duration};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    core::{transport::MemoryTransport, upgrade},
    identity::Keypair,
    noise,
    request_response::{self, ProtocolSupport},
    swarm::SwarmEvent,
    yamux, PeerId, StreamProtocol, SwarmBuilder, Transport,
};

/// A codec that writes whatever bytes it is given, unframed.
#[derive(Clone, Default)]
pub(crate) struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_answer(io).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&res).await?;
        io.close().await
    }
}

/// Reads a whole answer (at most 1 MiB); a stream closed without one is
/// an error.
pub(crate) async fn read_answer<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    io.take(1 << 20).read_to_end(&mut v).await?;
    if v.is_empty() {
        // The victim closed the stream without an answer.
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(v)
}

/// The raw swarm.
pub(crate) type RawSwarm = libp2p::Swarm<request_response::Behaviour<RawCodec>>;

/// A raw swarm with a new identity on the memory transport.
pub(crate) fn raw_client() -> RawSwarm {
    raw_client_with(Keypair::generate_ed25519())
}

/// A raw swarm with identity `key` on the memory transport.
pub(crate) fn raw_client_with(key: Keypair) -> RawSwarm {
    memory_swarm(key, || {
        request_response::Behaviour::<RawCodec>::new(
            [(
                StreamProtocol::try_from_owned(format!(
                    "/distribus/distribus/rpc/{}",
                    distribus::PROTOCOL_VERSION
                ))
                .unwrap(),
                ProtocolSupport::Outbound,
            )],
            request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
        )
    })
}

/// A bare swarm with identity `key` on the memory transport (noise,
/// yamux), with `behaviour`; idle connections stay 30 s.
pub(crate) fn memory_swarm<B: libp2p::swarm::NetworkBehaviour>(
    key: Keypair,
    behaviour: impl FnOnce() -> B,
) -> libp2p::Swarm<B> {
    SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|k| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            Ok(MemoryTransport::default()
                .upgrade(upgrade::Version::V1)
                .authenticate(noise::Config::new(k)?)
                .multiplex(yamux::Config::default()))
        })
        .unwrap()
        .with_behaviour(|_| behaviour())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

/// Sends `frame` to `host` and waits for its answer (the raw bytes), or the
/// failure.
pub(crate) async fn ask(
    swarm: &mut RawSwarm,
    host: PeerId,
    frame: Vec<u8>,
) -> Result<Vec<u8>, String> {
    swarm.behaviour_mut().send_request(&host, frame);
    super::within("raw answer", async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => break Ok(response),
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => break Err(error.to_string()),
                _ => {}
            }
        }
    })
    .await
}
