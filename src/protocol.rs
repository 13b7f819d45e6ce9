//! Wire format: versioned protocol names, request/response types and a
//! length-prefixed postcard codec with explicit size limits.
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes of
//! postcard. Frames over the configured limit, and bytes that do not decode,
//! are rejected with an `InvalidData` error (the request fails, the host goes
//! on) and counted in [`WireStats`].

use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{message::Payload, request::Corr};

/// Version of the distribus host-to-host protocol.
pub const PROTOCOL_VERSION: u32 = 14;

/// The request-response protocol name for a network id.
pub(crate) fn rpc_protocol(network: &str) -> Option<StreamProtocol> {
    StreamProtocol::try_from_owned(format!("/distribus/{network}/rpc/{PROTOCOL_VERSION}")).ok()
}

/// The delivery stream protocol name for a network id: one long-lived
/// stream per pair of linked hosts carries direct-message batches one way
/// and their acks the other (see [`crate::stream_link`]).
pub(crate) fn deliver_protocol(network: &str) -> Option<StreamProtocol> {
    StreamProtocol::try_from_owned(format!("/distribus/{network}/deliver/{PROTOCOL_VERSION}")).ok()
}

/// The request stream protocol name for a network id: between connected
/// hosts, one long-lived stream per direction carries the event loop's
/// requests and their answers (see [`crate::rpc_stream`]).
pub(crate) fn request_stream_protocol(network: &str) -> Option<StreamProtocol> {
    StreamProtocol::try_from_owned(format!("/distribus/{network}/requests/{PROTOCOL_VERSION}")).ok()
}

/// The identify protocol version string for a network id.
pub(crate) fn identify_version(network: &str) -> String {
    format!("/distribus/{network}/{PROTOCOL_VERSION}")
}

/// One direct message on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub from: Arc<str>,
    pub to: Arc<str>,
    pub payload: Payload,
    /// Whether this is a request or a reply (see [`crate::request`]).
    pub corr: Corr,
}

/// A delivery batch on a delivery stream (sender to receiver). `(epoch,
/// batch)` rises with every batch a host sends over its streams; a batch
/// sent again over a new stream (the old one broke before its acks came)
/// is answered from the receiver's memory, not delivered twice. (This
/// owned form is for tests and the fuzz target: senders write
/// [`StreamBatchRef`], readers decode [`StreamBatchIn`].)
#[cfg(any(test, feature = "testing", feature = "fuzzing"))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StreamBatch {
    pub epoch: u64,
    pub batch: u64,
    pub envs: Vec<Envelope>,
}

/// The receiving side's view of a [`StreamBatch`]: ids and payload bytes
/// borrowed from the frame, so delivering copies each payload once and
/// allocates nothing for the ids but the sender's in the inbox message.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamBatchIn<'a> {
    pub epoch: u64,
    pub batch: u64,
    #[serde(borrow)]
    pub envs: Vec<EnvelopeIn<'a>>,
}

/// An [`Envelope`] borrowed from a frame.
#[derive(Debug, Deserialize)]
pub(crate) struct EnvelopeIn<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub encoding: crate::message::Encoding,
    pub bytes: &'a [u8],
    pub corr: Corr,
}

/// The sending side's view of a [`StreamBatch`]: the envelopes are
/// serialized in place from the sends waiting for their acks, not copied.
/// Encodes exactly as a [`StreamBatch`] does.
#[derive(Serialize)]
#[serde(bound = "")]
pub(crate) struct StreamBatchRef<'a, E> {
    pub epoch: u64,
    pub batch: u64,
    pub envs: SerializeIter<'a, E>,
}

/// Serializes a slice of items as a sequence of what `get` picks from each.
pub(crate) struct SerializeIter<'a, E> {
    pub items: &'a [E],
    pub get: fn(&E) -> &Envelope,
}

impl<E> Serialize for SerializeIter<'_, E> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.items.iter().map(self.get))
    }
}

/// The receiver's answer to a [`StreamBatch`]: its batch id and one ack per
/// envelope, in order, or why it was refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StreamAcks {
    pub batch: u64,
    pub acks: Result<Vec<Ack>, String>,
}

/// A membership record signed by the host it describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SignedRecord {
    /// postcard bytes of a [`crate::core::membership::HostRecord`].
    pub record: Vec<u8>,
    /// Signature of `record` with the host's key.
    pub signature: Vec<u8>,
}

/// The reason a host gives when it refuses a request of a host that is not
/// a member: the sender introduces itself with a join.
pub(crate) const NOT_MEMBER: &str = "not a member";
/// The reason a host gives to a host that its allow-list does not admit.
pub(crate) const NOT_ALLOWED: &str = "not on the allow-list";

/// Requests between hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Put these envelopes in the recipients' inboxes. `(epoch, batch)`
    /// identifies the batch among the sender's and rises with every new
    /// one: a batch sent again (its link closed before the answer came) is
    /// answered from the receiver's memory of the sender's last batch, not
    /// delivered twice, and an older one (a relay replaying a batch it
    /// carried) is refused.
    Deliver {
        epoch: u64,
        batch: u64,
        envs: Vec<Envelope>,
    },
    /// Directory changes for entries that point to the sending host.
    Directory {
        /// The sender's epoch (start time); newer epochs supersede older ones.
        epoch: u64,
        /// Registrations and withdrawals, in the order they were made.
        ops: Vec<crate::directory::DirOp>,
    },
    /// Where does this peer live?
    Lookup(String),
    /// The sender joins: here is the membership it knows.
    Join(Vec<SignedRecord>),
    /// The sender leaves the network (its own signed leaving record).
    Leave(SignedRecord),
    /// The sender had dropped the receiver after a lapsed lease and has
    /// heard from it again: register again the entries it should hold.
    Resync,
    /// Liveness: the heartbeat counters of every host the sender knows,
    /// its own included (see [`crate::core::members`]).
    Beats(Digest),
    /// Membership records the receiver was seen to lack, each with the
    /// newest heartbeat counter the sender knows for it.
    Records(Vec<(SignedRecord, crate::beat_chain::Proved)>),
    /// Requests of other hosts carried through this one (see
    /// [`crate::overlay`]): each is forwarded if it is for another host
    /// (those for one host go on together), handled as its origin's own if
    /// it is for this one. Answered by [`Response::Relayed`], in order.
    Relay(Vec<Relayed>),
    /// Put this message in the inbox of every local peer, or of those
    /// whose id matches `to` (a group send; see [`crate::broadcast`]);
    /// `id` names it among the sender's broadcasts.
    Broadcast {
        id: u64,
        from: String,
        to: Option<String>,
        payload: Payload,
    },
    /// Give this publish on `channel` to one local member of the queue
    /// group `group` on `pattern` (see [`crate::queue_group`]).
    Queue {
        channel: String,
        pattern: String,
        group: String,
        payload: Payload,
    },
}

/// A request carried through a relay host, signed by the host that made it
/// (together with the other requests of its bundle: see
/// [`crate::relay_proof`]), so a relay can neither alter the request nor
/// send it elsewhere; lookups go unsigned ([`Request::needs_origin_proof`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Relayed {
    /// Peer id bytes of the host that made the request.
    pub origin: Vec<u8>,
    /// Peer id bytes of the host it is for.
    pub to: Vec<u8>,
    /// postcard bytes of the request.
    pub inner: Vec<u8>,
    /// The origin's proof; `None` while queued on the origin (it signs
    /// when the bundle goes), and for a request that needs none.
    pub proof: Option<crate::relay_proof::Proof>,
}

impl Request {
    /// Whether the request may travel through a relay: joins are made over
    /// a direct link (the other side does not know the joiner yet), and
    /// relayed requests are not relayed again.
    pub(crate) fn is_relayable(&self) -> bool {
        !matches!(self, Request::Join(_) | Request::Relay(_))
    }

    /// Whether a relayed copy must carry its origin's proof. A lookup need
    /// not: its answer does not depend on who asks, any member may ask it
    /// directly, and its relay could answer it falsely anyway (answers are
    /// not signed), so a relay that altered or redirected one would gain
    /// nothing. Relayed lookups were half of the ed25519 work of a random
    /// message at 512 hosts (a signing and a check each).
    pub(crate) fn needs_origin_proof(&self) -> bool {
        !matches!(self, Request::Lookup(_))
    }

    /// Heartbeat digests and the records they carry: they do not count as
    /// use of a link for the link budget (else every link would look busy).
    pub(crate) fn is_liveness(&self) -> bool {
        matches!(self, Request::Beats(_) | Request::Records(_))
    }

    /// Whether the request may go on a request stream to a connected host.
    /// Joins and leaves stay on request-response: a join's refusal by a
    /// host of another network is read from its protocol negotiation, and
    /// a leave is the last word on a link that is closing.
    pub(crate) fn uses_streams(&self) -> bool {
        !matches!(self, Request::Join(_) | Request::Leave(_))
    }
}

/// One host's liveness as a digest entry: which record version is current
/// and how far its heartbeat counter has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Beat {
    /// The host's XOR-metric key ([`crate::directory::host_key`]).
    pub key: u64,
    /// The host's incarnation.
    pub epoch: u64,
    /// Its current membership record's sequence number.
    pub seq: u64,
    /// Its heartbeat counter, raised once per heartbeat interval, with
    /// the proof that the host itself raised it.
    pub proved: crate::beat_chain::Proved,
}

/// A liveness digest: the sender's view fingerprint
/// ([`crate::core::membership::Membership::view`]) and its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Digest {
    /// Fingerprint of every live host's key and record version, as the
    /// sender knows them.
    pub view: u64,
    /// The entries.
    pub body: DigestBody,
}

/// The entries of a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DigestBody {
    /// Every host the sender knows with its key and record version, the
    /// sender first.
    Full(Vec<Beat>),
    /// Counters only, one per live host in key order, for a receiver with
    /// the same view (a third of the bytes, and no key look-ups).
    Counters(Vec<crate::beat_chain::Proved>),
    /// The answer to `Counters` of the same view: only the counters the
    /// answering host has higher, by position in key order, ascending.
    /// The asker already has the rest, and each counter costs its proof's
    /// 16 bytes to send and a hash to check.
    Newer(Vec<(u32, crate::beat_chain::Proved)>),
}

/// Per-message outcome of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Ack {
    Delivered,
    UnknownPeer,
    InboxFull,
    /// A reply that no request of its recipient waits for.
    NoRequest,
}

/// A peer's location on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireLocation {
    pub host: Vec<u8>,
    pub addrs: Vec<Vec<u8>>,
}

/// Responses between hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Response {
    /// One ack per envelope, in order.
    Delivered(Vec<Ack>),
    /// Done (a resync).
    DirectoryOk,
    /// Directory changes applied, but for these: ids another live host
    /// holds (with that host's peer id bytes), and how many registrations
    /// were refused because the holder's store is full.
    DirectoryApplied {
        conflicts: Vec<(String, Vec<u8>)>,
        full: u32,
    },
    /// Answer to a lookup.
    Location(Option<WireLocation>),
    /// Answer to a join: the membership the receiver knows.
    Members(Vec<SignedRecord>),
    /// Acknowledges a leave.
    LeaveOk,
    /// Answer to [`Request::Beats`]: the receiver's own digest, and the
    /// records the sender was seen to lack.
    Beats {
        beats: Digest,
        records: Vec<(SignedRecord, crate::beat_chain::Proved)>,
    },
    /// Records taken.
    RecordsOk,
    /// The request was refused.
    Refused(String),
    /// A relay could not forward the request, or its destination refused
    /// it as relayed: the reason.
    RelayFailed(String),
    /// The answers to a [`Request::Relay`], one per request, in order.
    /// Relayed requests are never relayed again, so an answer inside is
    /// never `Relayed` itself: decoding refuses a nested one, which keeps
    /// the decoder's recursion at two levels whatever a remote host sends.
    Relayed(#[serde(deserialize_with = "one_level")] Vec<Response>),
    /// Answer to a broadcast: the local peers that have it and those that
    /// missed it (inbox full); both 0 for a broadcast taken before.
    Broadcast { peers: u64, missed: u64 },
    /// Answer to a [`Request::Queue`]: whether a member took it.
    QueueTaken(bool),
}

thread_local! {
    /// Set while the answers inside a [`Response::Relayed`] decode.
    static IN_RELAYED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Decodes the answers of a [`Response::Relayed`], refusing one nested in
/// another: postcard has no depth limit, and ~50k nested answers (100 KB)
/// overflowed the stack and aborted the process.
fn one_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Response>, D::Error> {
    /// Clears the flag however decoding ends.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_RELAYED.with(|f| f.set(false));
        }
    }
    if IN_RELAYED.with(|f| f.replace(true)) {
        return Err(serde::de::Error::custom(
            "a relayed answer inside a relayed answer",
        ));
    }
    let _reset = Reset;
    Vec::<Response>::deserialize(d)
}

/// Counters of rejected inbound frames and refused inbound streams, shared
/// by all codec instances and stream acceptors of a host.
#[derive(Debug, Default)]
pub(crate) struct WireStats {
    rejected: AtomicU64,
    refused_streams: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

impl WireStats {
    /// Frames rejected because they were too large or malformed.
    pub(crate) fn rejected_frames(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Inbound streams refused because their host already held as many of
    /// that kind as this host serves at once, or because they came faster
    /// than the acceptor took them.
    pub(crate) fn refused_streams(&self) -> u64 {
        self.refused_streams.load(Ordering::Relaxed)
    }

    pub(crate) fn count_refused_stream(&self) {
        self.refused_streams.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes written to all connections ([`crate::metered`]).
    pub(crate) fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// Bytes read from all connections.
    pub(crate) fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    pub(crate) fn count_sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Length-prefixed postcard codec with a frame size limit.
#[derive(Debug, Clone)]
pub(crate) struct Codec {
    pub max_frame: usize,
    pub stats: Arc<WireStats>,
}

impl Codec {
    async fn read_frame<T, M>(&self, io: &mut T) -> io::Result<M>
    where
        T: AsyncRead + Unpin + Send,
        M: DeserializeOwned,
    {
        read_frame(io, self.max_frame, &self.stats).await
    }

    async fn write_frame<T, M>(&self, io: &mut T, msg: &M) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
        M: Serialize,
    {
        write_frame(io, msg, self.max_frame).await?;
        io.close().await
    }
}

/// Reads one length-prefixed frame of at most `max_frame` bytes and decodes
/// it; an oversized or malformed frame is an `InvalidData` error, counted in
/// `stats`.
pub(crate) async fn read_frame<T, M>(
    io: &mut T,
    max_frame: usize,
    stats: &WireStats,
) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: DeserializeOwned,
{
    let body = read_frame_body(io, max_frame, stats).await?;
    decode_counted(&body, stats)
}

/// Decodes a frame body; a malformed one is an `InvalidData` error, counted
/// in `stats`.
pub(crate) fn decode_counted<'a, M: Deserialize<'a>>(
    body: &'a [u8],
    stats: &WireStats,
) -> io::Result<M> {
    postcard::from_bytes(body).map_err(|e| {
        stats.count_rejected();
        tracing::warn!(error = %e, "rejected malformed frame");
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    })
}

/// Reads one length-prefixed frame of at most `max_frame` bytes; returns
/// its body. An oversized frame is an `InvalidData` error, counted in
/// `stats`.
pub(crate) async fn read_frame_body<T>(
    io: &mut T,
    max_frame: usize,
    stats: &WireStats,
) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max_frame {
        stats.count_rejected();
        tracing::warn!(len, max = max_frame, "rejected oversized frame");
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds limit of {max_frame}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Encodes `msg` as one frame, writes and flushes it (the stream stays
/// open). A frame over `max_frame` bytes is an `InvalidInput` error.
pub(crate) async fn write_frame<T, M>(io: &mut T, msg: &M, max_frame: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
    let buf = encode_frame(msg)?;
    if buf.len() - 4 > max_frame {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame exceeds limit",
        ));
    }
    io.write_all(&buf).await?;
    io.flush().await
}

/// Encodes a message as a length-prefixed frame.
pub(crate) fn encode_frame<M: Serialize>(msg: &M) -> io::Result<Vec<u8>> {
    let mut buf = encode_after(msg, 4)?;
    let len = u32::try_from(buf.len() - 4)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// Encodes a message without a length prefix (a gossipsub message's body),
/// into a buffer of exactly its size.
pub(crate) fn encode_body<M: Serialize>(msg: &M) -> io::Result<Vec<u8>> {
    encode_after(msg, 0)
}

/// Encodes a message after `prefix` zero bytes, into one buffer of exactly
/// that size: sized first, then written in place (postcard's `Vec`
/// flavours push byte by byte, which cost more than the sizing pass, and a
/// vector grown by doubling copies a 64 KiB frame about ten times).
fn encode_after<M: Serialize>(msg: &M, prefix: usize) -> io::Result<Vec<u8>> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    let size = postcard::experimental::serialized_size(msg).map_err(|e| invalid(e.to_string()))?;
    let mut buf = vec![0u8; prefix + size];
    let written = postcard::to_slice(msg, &mut buf[prefix..])
        .map_err(|e| invalid(e.to_string()))?
        .len();
    buf.truncate(prefix + written);
    Ok(buf)
}

/// Decodes a frame body (without its length prefix).
pub(crate) fn decode_frame<M: DeserializeOwned>(body: &[u8]) -> io::Result<M> {
    postcard::from_bytes(body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_frame(io, &res).await
    }
}

/// What a channel publish carries on the wire: one or more payloads
/// published in this order on the same channel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChannelFrame {
    /// Makes each frame's gossip message id unique.
    pub nonce: u64,
    /// The channel (its topic is shared with other channels).
    pub channel: String,
    pub payloads: Vec<Payload>,
}

/// The receiving side's view of a [`ChannelFrame`]: the channel and the
/// payloads borrowed from the frame, so each delivered payload is a slice
/// of the received frame's buffer, not a copy.
#[derive(Debug, Deserialize)]
pub(crate) struct ChannelFrameIn<'a> {
    #[allow(dead_code)] // read only by gossipsub's message id (the whole frame)
    pub nonce: u64,
    pub channel: &'a str,
    #[serde(borrow)]
    pub payloads: Vec<PayloadIn<'a>>,
}

/// A [`Payload`] borrowed from a frame.
#[derive(Debug, Deserialize)]
pub(crate) struct PayloadIn<'a> {
    pub encoding: crate::message::Encoding,
    pub bytes: &'a [u8],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{message::Payload, request::Corr};

    fn codec(max: usize) -> Codec {
        Codec {
            max_frame: max,
            stats: Arc::default(),
        }
    }

    #[test]
    fn frame_round_trip() {
        let req = Request::Deliver {
            epoch: 1,
            batch: 1,
            envs: vec![Envelope {
                from: "a".into(),
                to: "b".into(),
                payload: Payload::postcard(&42u64).unwrap(),
                corr: Corr::Reply(7),
            }],
        };
        let frame = encode_frame(&req).unwrap();
        let c = codec(1 << 20);
        let got: Request = futures::executor::block_on(async {
            let mut io = futures::io::Cursor::new(frame);
            c.read_frame(&mut io).await
        })
        .unwrap();
        match got {
            Request::Deliver { envs, .. } => {
                assert_eq!(&*envs[0].to, "b");
                assert_eq!(envs[0].corr, Corr::Reply(7));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn oversized_frame_is_rejected_and_counted() {
        let c = codec(16);
        let mut frame = 1000u32.to_be_bytes().to_vec();
        frame.extend(vec![0u8; 1000]);
        let r: io::Result<Request> = futures::executor::block_on(async {
            let mut io = futures::io::Cursor::new(frame);
            c.read_frame(&mut io).await
        });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(c.stats.rejected_frames(), 1);
    }

    /// ~50k nested relayed answers in about 100 KB: the decode must refuse
    /// them, not overflow the stack. Run in a child process (this test
    /// binary again, filtered to this test) so that an abort shows as a
    /// failed test instead of a lost test binary.
    #[test]
    fn a_nested_relayed_answer_does_not_abort_the_process() {
        const CHILD: &str = "DISTRIBUS_NESTED_RELAYED_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let relayed = {
                let probe = postcard::to_allocvec(&Response::Relayed(vec![])).unwrap();
                probe[0]
            };
            let mut body = Vec::new();
            for _ in 0..50_000 {
                body.extend([relayed, 1]);
            }
            body.extend(postcard::to_allocvec(&Response::DirectoryOk).unwrap());
            let stats = WireStats::default();
            // A worker thread's stack, not the main thread's 8 MiB.
            let r = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || decode_counted::<Response>(&body, &stats).map(|_| ()))
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
            // One level still decodes.
            let ok = Response::Relayed(vec![Response::DirectoryOk, Response::RecordsOk]);
            let back: Response = decode_frame(&postcard::to_allocvec(&ok).unwrap()).unwrap();
            assert!(matches!(back, Response::Relayed(v) if v.len() == 2));
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "protocol::tests::a_nested_relayed_answer_does_not_abort_the_process",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the decode failed in the child: {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn garbage_is_rejected_and_counted() {
        let c = codec(1 << 20);
        let mut frame = 8u32.to_be_bytes().to_vec();
        frame.extend([0xff; 8]);
        let r: io::Result<Request> = futures::executor::block_on(async {
            let mut io = futures::io::Cursor::new(frame);
            c.read_frame(&mut io).await
        });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(c.stats.rejected_frames(), 1);
    }
}
