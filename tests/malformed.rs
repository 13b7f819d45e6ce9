//! Bytes from a remote host are untrusted: oversized and malformed frames
//! are rejected and counted, and the host goes on working.

mod common;

use std::{io, time::Duration};

use common::*;
use distribus::HostConfig;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    core::{transport::MemoryTransport, upgrade},
    noise,
    request_response::{self, ProtocolSupport},
    swarm::SwarmEvent,
    yamux, StreamProtocol, SwarmBuilder, Transport,
};

/// A codec that writes whatever bytes it is given, unframed.
#[derive(Clone, Default)]
struct RawCodec;

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
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        if v.is_empty() {
            // The victim closed the stream without an answer.
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(v)
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

/// A bare libp2p swarm speaking the distribus request protocol with
/// [`RawCodec`]: it sends whatever bytes a test gives it.
fn raw_client() -> libp2p::Swarm<request_response::Behaviour<RawCodec>> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|k| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            Ok(MemoryTransport::default()
                .upgrade(upgrade::Version::V1)
                .authenticate(noise::Config::new(k)?)
                .multiplex(yamux::Config::default()))
        })
        .unwrap()
        .with_behaviour(|_| {
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
        .unwrap()
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_are_rejected_and_counted() {
    let mut cfg = HostConfig::for_tests();
    cfg.max_frame_size = 64 * 1024;
    cfg.max_message_size = 32 * 1024;
    let (victim, victim_addr) = mem_host(cfg.clone()).await;
    let (friend, _) = mem_host(cfg).await;
    friend.join(&victim_addr.to_string()).await.unwrap();
    let v_peer = victim.create("v").unwrap();
    let f_peer = friend.create("f").unwrap();
    wait_found(&friend, "v", &victim).await;

    let mut attacker = raw_client();
    let victim_id = victim.id();
    attacker.add_peer_address(victim_id, victim_addr.clone());

    let mut oversized = u32::MAX.to_be_bytes().to_vec();
    oversized.extend([0u8; 16]);
    let mut garbage = 12u32.to_be_bytes().to_vec();
    garbage.extend([0xff; 12]);
    let truncated = 100u32.to_be_bytes().to_vec();
    let attacks = [oversized, garbage, truncated, vec![1, 2]];
    for a in &attacks {
        attacker.behaviour_mut().send_request(&victim_id, a.clone());
    }
    let mut failures = 0;
    within("attacker requests end", async {
        while failures < attacks.len() {
            match attacker.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                    failures += 1
                }
                SwarmEvent::Behaviour(request_response::Event::Message { .. }) => {
                    panic!("the victim answered a malformed request")
                }
                _ => {}
            }
        }
    })
    .await;
    wait_for("rejections counted", || async {
        victim.stats().rejected_frames >= 2
    })
    .await;

    // The victim still works.
    f_peer.send("v", "still alive").await.unwrap();
    assert_eq!(
        within("delivery", v_peer.recv())
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "still alive"
    );
    v_peer.send("f", "yes").await.unwrap();
}

/// A delivery batch sent again with the same batch id (as a sender does when
/// the link closed before the answer came) is answered "delivered" again but
/// not put in the inbox twice; the next batch id is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_is_not_delivered_twice() {
    use distribus::bench_support::{decode_delivered, encode_delivery};
    let (host, addr) = mem_host(HostConfig::for_tests()).await;
    let v = host.create("v").unwrap();
    let mut client = raw_client();
    client.add_peer_address(host.id(), addr);
    let payload = distribus::Payload::postcard(&1u32).unwrap();
    let again = encode_delivery(7, "x", "v", &payload).unwrap();
    let next = encode_delivery(8, "x", "v", &payload).unwrap();
    for frame in [&again, &again, &next] {
        client
            .behaviour_mut()
            .send_request(&host.id(), frame.clone());
        let answer = within("answer", async {
            loop {
                match client.select_next_some().await {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { response, .. },
                        ..
                    }) => break response,
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        error,
                        ..
                    }) => panic!("request failed: {error}"),
                    _ => {}
                }
            }
        })
        .await;
        assert_eq!(decode_delivered(&answer).unwrap(), vec![true]);
    }
    for _ in 0..2 {
        assert_eq!(within("message", v.recv()).await.unwrap().from, "x");
    }
    assert!(v.try_recv().is_none(), "batch 7 was delivered twice");
}
