//! Helpers for tests, benchmarks and the simulator (feature `testing`):
//! waiting for a condition, wire frames written by hand for the
//! malformed-input and attack tests, the process's memory and CPU time,
//! and a discrete-event model of thousands of hosts running the protocol
//! core ([`model`]). Not covered by semver.

pub mod model;

use std::{
    future::Future,
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::protocol::{
    decode_frame, encode_frame, Ack, Envelope, Request, Response, StreamAcks, StreamBatch,
};

/// A condition that did not hold in time (see [`wait_until`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} did not happen within {limit:?}")]
pub struct TimedOut {
    /// What was waited for.
    pub what: String,
    /// How long.
    pub limit: Duration,
}

/// How often [`wait_until`] checks.
pub const POLL: Duration = Duration::from_millis(20);

/// Checks `done` every [`POLL`] until it holds or `limit` passes; how long
/// it took. For what has no event to await (a membership converging,
/// entries reaching their holders), and never as a measure of speed.
pub async fn wait_until<F, Fut>(
    what: &str,
    limit: Duration,
    mut done: F,
) -> Result<Duration, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if done().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= limit {
            return Err(TimedOut {
                what: what.to_string(),
                limit,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Delivery batch number `batch` holding one envelope, as a frame.
pub fn encode_delivery(batch: u64, from: &str, to: &str, payload: &Payload) -> io::Result<Vec<u8>> {
    let envs = vec![Envelope {
        from: Arc::from(from),
        to: Arc::from(to),
        payload: payload.clone(),
        corr: crate::request::Corr::None,
    }];
    encode_frame(&Request::Deliver {
        epoch: 1,
        batch,
        envs,
    })
}

/// Delivery batch number `batch` holding replies from `from` to `to`, one
/// per request id in `ids`, as a frame (the attack tests forge them).
pub fn encode_replies(
    batch: u64,
    from: &str,
    to: &str,
    ids: impl IntoIterator<Item = u64>,
    payload: &Payload,
) -> io::Result<Vec<u8>> {
    let envs = ids
        .into_iter()
        .map(|id| Envelope {
            from: Arc::from(from),
            to: Arc::from(to),
            payload: payload.clone(),
            corr: crate::request::Corr::Reply(id),
        })
        .collect();
    encode_frame(&Request::Deliver {
        epoch: 1,
        batch,
        envs,
    })
}

/// The acks of an answer frame to a delivery: `true` per envelope put
/// in its recipient's inbox.
pub fn decode_delivered(frame: &[u8]) -> io::Result<Vec<bool>> {
    match decode_frame::<Response>(frame.get(4..).unwrap_or_default())? {
        Response::Delivered(acks) => Ok(acks.iter().map(|a| *a == Ack::Delivered).collect()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a delivery answer",
        )),
    }
}
use crate::message::Payload;

/// Delivery-stream batch number `batch` (epoch 1) holding one envelope, as
/// a frame.
pub fn encode_stream_delivery(
    batch: u64,
    from: &str,
    to: &str,
    payload: &Payload,
) -> io::Result<Vec<u8>> {
    encode_frame(&StreamBatch {
        epoch: 1,
        batch,
        envs: vec![Envelope {
            from: Arc::from(from),
            to: Arc::from(to),
            payload: payload.clone(),
            corr: crate::request::Corr::None,
        }],
    })
}

/// A delivery stream's answer frame body (without its length prefix): the
/// batch id, and `true` per envelope put in its recipient's inbox, or why
/// the batch was refused.
pub fn decode_stream_acks(body: &[u8]) -> io::Result<(u64, Result<Vec<bool>, String>)> {
    let a: StreamAcks = decode_frame(body)?;
    let acks = a
        .acks
        .map(|acks| acks.iter().map(|a| *a == Ack::Delivered).collect());
    Ok((a.batch, acks))
}

/// A request-stream frame: request `id`, a lookup of `peer`.
pub fn encode_stream_lookup(id: u64, peer: &str) -> io::Result<Vec<u8>> {
    encode_frame(&(id, Request::Lookup(peer.to_string())))
}

/// A request stream's answer frame body (without its length prefix) to a
/// lookup: the request id, and the host found (`None`: not found). Another
/// kind of answer is an `InvalidData` error.
pub fn decode_stream_location(body: &[u8]) -> io::Result<(u64, Option<libp2p::PeerId>)> {
    let (id, r): (u64, Response) = decode_frame(body)?;
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    match r {
        Response::Location(None) => Ok((id, None)),
        Response::Location(Some(loc)) => libp2p::PeerId::from_bytes(&loc.host)
            .map(|h| (id, Some(h)))
            .map_err(|e| bad(e.to_string())),
        other => Err(bad(format!("not a location: {other:?}"))),
    }
}

/// A direct-message batch of `n` envelopes carrying `payload`, encoded
/// as one frame (length prefix included).
pub fn encode_batch(n: usize, payload: &Payload) -> io::Result<Vec<u8>> {
    let from: Arc<str> = Arc::from("sender-peer");
    let to: Arc<str> = Arc::from("receiver-peer");
    let envs = (0..n)
        .map(|_| Envelope {
            from: from.clone(),
            to: to.clone(),
            payload: payload.clone(),
            corr: crate::request::Corr::None,
        })
        .collect();
    encode_frame(&Request::Deliver {
        epoch: 1,
        batch: 1,
        envs,
    })
}

/// Decodes a frame made by [`encode_batch`]; returns its envelope count.
pub fn decode_batch(frame: &[u8]) -> io::Result<usize> {
    match decode_frame::<Request>(frame.get(4..).unwrap_or_default())? {
        Request::Deliver { envs, .. } => Ok(envs.len()),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "not a batch")),
    }
}

/// The `(epoch, batch)` id of a delivery-stream batch frame body (without
/// its length prefix).
pub fn stream_batch_id(body: &[u8]) -> io::Result<(u64, u64)> {
    let b: crate::protocol::StreamBatchIn<'_> = decode_frame_borrowed(body)?;
    Ok((b.epoch, b.batch))
}

/// A delivery batch's `(epoch, batch)` id and its envelope count.
pub type BatchSummary = ((u64, u64), usize);

/// A request-stream frame body (without its length prefix): its request
/// id, and if it is a delivery batch, its summary.
pub fn stream_request_delivery(body: &[u8]) -> io::Result<(u64, Option<BatchSummary>)> {
    let (id, request): (u64, Request) = decode_frame(body)?;
    Ok(match request {
        Request::Deliver { epoch, batch, envs } => (id, Some(((epoch, batch), envs.len()))),
        _ => (id, None),
    })
}

/// The answer to request `id` on a request stream: `n` messages
/// delivered, as a frame.
pub fn encode_stream_delivered(id: u64, n: usize) -> io::Result<Vec<u8>> {
    encode_frame(&(id, Response::Delivered(vec![Ack::Delivered; n])))
}

/// The answer to request `id` on a request stream: refused, for `why`, as
/// a frame.
pub fn encode_stream_refusal(id: u64, why: &str) -> io::Result<Vec<u8>> {
    encode_frame(&(id, Response::Refused(why.to_string())))
}

fn decode_frame_borrowed<'a, M: serde::Deserialize<'a>>(body: &'a [u8]) -> io::Result<M> {
    postcard::from_bytes(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Resident set size of this process, in bytes (from `/proc`; 0 where
/// there is none).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU seconds (user and system) this process has used (from `/proc`; 0
/// where there is none).
pub fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// A host that speaks the wire protocol by hand, for the attack tests: it
/// signs its own record and proves its own counters like a real host, and
/// can say whatever it likes about other hosts.
#[derive(Debug)]
pub struct RawMember {
    key: libp2p::identity::Keypair,
    chain: crate::beat_chain::Chain,
    epoch: u64,
    beat: u64,
}

/// What a raw member learned of another host from a membership answer.
#[derive(Debug, Clone)]
pub struct KnownHost {
    /// The host.
    pub host: libp2p::PeerId,
    /// Its incarnation.
    pub epoch: u64,
    /// Its record's sequence number.
    pub seq: u64,
    /// Its signed record, as received.
    record: crate::protocol::SignedRecord,
}

impl RawMember {
    /// A raw member with `key` (the identity its connections use).
    pub fn new(key: libp2p::identity::Keypair) -> RawMember {
        RawMember {
            key,
            chain: crate::beat_chain::Chain::new(0),
            epoch: 1,
            beat: 0,
        }
    }

    fn own_record(&self) -> io::Result<crate::protocol::SignedRecord> {
        self.own_record_with(vec![])
    }

    fn own_record_with(&self, channels: Vec<String>) -> io::Result<crate::protocol::SignedRecord> {
        crate::core::membership::HostRecord {
            public_key: self.key.public().encode_protobuf(),
            epoch: self.epoch,
            seq: 1,
            addrs: vec![],
            channels,
            queues: vec![],
            leaving: false,
            anchor: self.chain.anchor(),
        }
        .sign(&self.key)
        .ok_or_else(|| io::Error::other("cannot sign"))
    }

    /// A join request frame whose own record lists `channels` channels.
    pub fn join_with_channels(&self, channels: usize) -> io::Result<Vec<u8>> {
        let names = (0..channels).map(|i| format!("ch{i}")).collect();
        encode_frame(&Request::Join(vec![self.own_record_with(names)?]))
    }

    /// A join request frame with this member's own record and the records
    /// of `n` hosts that do not exist, each signed by a new key of its own
    /// (a Sybil join: keys cost nothing).
    pub fn join_with_strangers(&self, n: usize) -> io::Result<Vec<u8>> {
        let mut records = Vec::with_capacity(n + 1);
        for _ in 0..n {
            let key = libp2p::identity::Keypair::generate_ed25519();
            let record = crate::core::membership::HostRecord {
                public_key: key.public().encode_protobuf(),
                epoch: 1,
                seq: 1,
                addrs: vec![],
                channels: vec![],
                queues: vec![],
                leaving: false,
                anchor: crate::beat_chain::Anchor::default(),
            };
            records.push(
                record
                    .sign(&key)
                    .ok_or_else(|| io::Error::other("cannot sign"))?,
            );
        }
        records.push(self.own_record()?);
        encode_frame(&Request::Join(records))
    }

    /// A join request frame of `n` empty records (they would not verify;
    /// a host refuses the join by its count before checking any).
    pub fn join_of_empty_records(n: usize) -> io::Result<Vec<u8>> {
        let empty = crate::protocol::SignedRecord {
            record: vec![],
            signature: vec![],
        };
        encode_frame(&Request::Join(vec![empty; n]))
    }

    /// Whether an answer frame (length prefix included) is a refusal whose
    /// reason contains `text`.
    pub fn refused_with(frame: &[u8], text: &str) -> bool {
        matches!(
            decode_frame::<Response>(frame.get(4..).unwrap_or_default()),
            Ok(Response::Refused(why)) if why.contains(text)
        )
    }

    /// A directory request frame registering ids `{prefix}0` to
    /// `{prefix}{n-1}` on this member.
    pub fn registrations(&self, prefix: &str, n: usize) -> io::Result<Vec<u8>> {
        let ops = (0..n)
            .map(|i| crate::directory::DirOp::Register(format!("{prefix}{i}").into()))
            .collect();
        encode_frame(&Request::Directory {
            epoch: self.epoch,
            ops,
        })
    }

    /// How many registrations a directory answer frame (length prefix
    /// included) refused because the store was full, or `None` if the
    /// answer is not a directory answer.
    pub fn registrations_refused(frame: &[u8]) -> Option<u32> {
        match decode_frame::<Response>(frame.get(4..).unwrap_or_default()) {
            Ok(Response::DirectoryApplied { full, .. }) => Some(full),
            Ok(Response::DirectoryOk) => Some(0),
            _ => None,
        }
    }

    /// A join request frame carrying this member's own record and the
    /// records of `others` (whoever they are, alive or not).
    pub fn join(&self, others: &[KnownHost]) -> io::Result<Vec<u8>> {
        let mut records: Vec<_> = others.iter().map(|k| k.record.clone()).collect();
        records.push(self.own_record()?);
        encode_frame(&Request::Join(records))
    }

    /// A request-stream frame: request `id`, a join with this member's own
    /// record.
    pub fn join_on_stream(&self, id: u64) -> io::Result<Vec<u8>> {
        encode_frame(&(id, Request::Join(vec![self.own_record()?])))
    }

    /// A request-stream frame: request `id`, a digest of this member's own
    /// counter (raised by one): it keeps the member alive.
    pub fn beat_on_stream(&mut self, id: u64) -> io::Result<Vec<u8>> {
        let frame = self.digest(&[])?;
        let req: Request = decode_frame(frame.get(4..).unwrap_or_default())?;
        encode_frame(&(id, req))
    }

    /// One request of every kind but a join, as frames (length prefix
    /// included), each with its name: what a member may ask.
    pub fn every_other_request(&mut self) -> io::Result<Vec<(&'static str, Vec<u8>)>> {
        let mut leaving = crate::core::membership::HostRecord {
            public_key: self.key.public().encode_protobuf(),
            epoch: self.epoch,
            seq: 2,
            addrs: vec![],
            channels: vec![],
            queues: vec![],
            leaving: true,
            anchor: self.chain.anchor(),
        };
        let leave = leaving
            .sign(&self.key)
            .ok_or_else(|| io::Error::other("cannot sign"))?;
        leaving.leaving = false;
        let payload = Payload::postcard(&1u32).map_err(io::Error::other)?;
        Ok(vec![
            ("deliver", encode_delivery(1, "x", "v", &payload)?),
            (
                "directory",
                encode_frame(&Request::Directory {
                    epoch: 1,
                    ops: vec![crate::directory::DirOp::Register("x".into())],
                })?,
            ),
            ("lookup", encode_frame(&Request::Lookup("v".into()))?),
            ("leave", encode_frame(&Request::Leave(leave))?),
            ("resync", encode_frame(&Request::Resync)?),
            ("beats", self.digest(&[])?),
            (
                "records",
                encode_frame(&Request::Records(vec![(
                    self.own_record()?,
                    self.chain.anchor().proved(),
                )]))?,
            ),
            ("relay", encode_frame(&Request::Relay(vec![]))?),
            (
                "broadcast",
                encode_frame(&Request::Broadcast {
                    id: 1,
                    from: "x".into(),
                    to: None,
                    payload: payload.clone(),
                })?,
            ),
            (
                "queue",
                encode_frame(&Request::Queue {
                    channel: "x".into(),
                    pattern: "x".into(),
                    group: "g".into(),
                    payload: payload.clone(),
                })?,
            ),
        ])
    }

    /// Whether an answer frame (length prefix included) refuses a request
    /// because its sender is not a member.
    pub fn refused_as_non_member(frame: &[u8]) -> bool {
        matches!(
            decode_frame::<Response>(frame.get(4..).unwrap_or_default()),
            Ok(Response::Refused(why)) if why == crate::protocol::NOT_MEMBER
        )
    }

    /// The hosts of a join answer frame (length prefix included).
    pub fn members(frame: &[u8]) -> io::Result<Vec<KnownHost>> {
        let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        let Response::Members(records) = decode_frame(frame.get(4..).unwrap_or_default())? else {
            return Err(bad("not a membership answer".into()));
        };
        records
            .into_iter()
            .map(|r| {
                let v =
                    crate::core::membership::verify(&r).ok_or_else(|| bad("bad record".into()))?;
                Ok(KnownHost {
                    host: v.host,
                    epoch: v.record.epoch,
                    seq: v.record.seq,
                    record: r,
                })
            })
            .collect()
    }

    /// A full digest frame: this member's own counter (raised by one, with
    /// its proof), and for each of `claims` the host's current record
    /// version with the counter given (and no valid proof: only the host
    /// could make one).
    pub fn digest(&mut self, claims: &[(&KnownHost, u64)]) -> io::Result<Vec<u8>> {
        use crate::{
            beat_chain::Proved,
            directory::host_key,
            protocol::{Beat, Digest, DigestBody},
        };
        self.beat += 1;
        let own = self
            .chain
            .prove(self.beat)
            .ok_or_else(|| io::Error::other("chain ran out"))?;
        let mut beats = vec![Beat {
            key: host_key(&self.key.public().to_peer_id()),
            epoch: self.epoch,
            seq: 1,
            proved: own,
        }];
        beats.extend(claims.iter().map(|(k, beat)| Beat {
            key: host_key(&k.host),
            epoch: k.epoch,
            seq: k.seq,
            proved: Proved {
                beat: *beat,
                proof: [0xa5; 16],
            },
        }));
        encode_frame(&Request::Beats(Digest {
            view: 0,
            body: DigestBody::Full(beats),
        }))
    }

    /// A push of `host`'s record with a claimed (unproved) counter.
    pub fn push_record(&self, host: &KnownHost, beat: u64) -> io::Result<Vec<u8>> {
        let proved = crate::beat_chain::Proved {
            beat,
            proof: [0x5a; 16],
        };
        encode_frame(&Request::Records(vec![(host.record.clone(), proved)]))
    }
}
