//! Property tests: every wire type survives encode → decode → encode
//! unchanged, for values drawn at random (proptest). The fuzz targets in
//! `fuzz/` cover the other direction: arbitrary bytes into the decoders.

use proptest::{collection::vec, prelude::*};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    beat_chain::{Anchor, Proved},
    core::membership::HostRecord,
    directory::DirOp,
    message::{Encoding, Payload},
    protocol::*,
    relay_proof::Proof,
    request::Corr,
};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9.>*-]{0,12}"
}

fn payload() -> impl Strategy<Value = Payload> {
    (any::<bool>(), bytes(64)).prop_map(|(json, b)| Payload {
        encoding: if json {
            Encoding::Json
        } else {
            Encoding::Postcard
        },
        bytes: b.into(),
    })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    let corr = prop_oneof![
        Just(Corr::None),
        any::<u64>().prop_map(Corr::Request),
        any::<u64>().prop_map(Corr::Reply),
    ];
    (text(), text(), payload(), corr).prop_map(|(from, to, payload, corr)| Envelope {
        from: from.into(),
        to: to.into(),
        payload,
        corr,
    })
}

fn proved() -> impl Strategy<Value = Proved> {
    (any::<u64>(), any::<[u8; 16]>()).prop_map(|(beat, proof)| Proved { beat, proof })
}

fn signed() -> impl Strategy<Value = SignedRecord> {
    (bytes(96), bytes(64)).prop_map(|(record, signature)| SignedRecord { record, signature })
}

fn beat() -> impl Strategy<Value = Beat> {
    (any::<u64>(), any::<u64>(), any::<u64>(), proved()).prop_map(|(key, epoch, seq, proved)| {
        Beat {
            key,
            epoch,
            seq,
            proved,
        }
    })
}

fn digest() -> impl Strategy<Value = Digest> {
    let body = prop_oneof![
        vec(beat(), 0..8).prop_map(DigestBody::Full),
        vec(proved(), 0..8).prop_map(DigestBody::Counters),
        vec((any::<u32>(), proved()), 0..8).prop_map(DigestBody::Newer),
    ];
    (any::<u64>(), body).prop_map(|(view, body)| Digest { view, body })
}

fn relayed() -> impl Strategy<Value = Relayed> {
    let proof = (
        any::<u32>(),
        any::<u32>(),
        vec(any::<[u8; 32]>(), 0..4),
        bytes(64),
    )
        .prop_map(|(index, count, path, signature)| Proof {
            index,
            count,
            path,
            signature,
        });
    (bytes(40), bytes(40), bytes(64), proptest::option::of(proof)).prop_map(
        |(origin, to, inner, proof)| Relayed {
            origin,
            to,
            inner,
            proof,
        },
    )
}

fn request() -> impl Strategy<Value = Request> {
    let op = (any::<bool>(), text()).prop_map(|(reg, id)| {
        if reg {
            DirOp::Register(id.into())
        } else {
            DirOp::Withdraw(id.into())
        }
    });
    prop_oneof![
        (any::<u64>(), any::<u64>(), vec(envelope(), 0..6))
            .prop_map(|(epoch, batch, envs)| Request::Deliver { epoch, batch, envs }),
        (any::<u64>(), vec(op, 0..8)).prop_map(|(epoch, ops)| Request::Directory { epoch, ops }),
        text().prop_map(Request::Lookup),
        vec(signed(), 0..4).prop_map(Request::Join),
        signed().prop_map(Request::Leave),
        Just(Request::Resync),
        digest().prop_map(Request::Beats),
        vec((signed(), proved()), 0..4).prop_map(Request::Records),
        vec(relayed(), 0..4).prop_map(Request::Relay),
        (
            any::<u64>(),
            text(),
            proptest::option::of(text()),
            payload()
        )
            .prop_map(|(id, from, to, payload)| Request::Broadcast {
                id,
                from,
                to,
                payload
            }),
        (text(), text(), text(), payload()).prop_map(|(channel, pattern, group, payload)| {
            Request::Queue {
                channel,
                pattern,
                group,
                payload,
            }
        }),
    ]
}

fn ack() -> impl Strategy<Value = Ack> {
    prop_oneof![
        Just(Ack::Delivered),
        Just(Ack::UnknownPeer),
        Just(Ack::InboxFull),
        Just(Ack::NoRequest)
    ]
}

/// Every answer but a relayed one.
fn plain_response() -> impl Strategy<Value = Response> {
    let location =
        (bytes(40), vec(bytes(24), 0..3)).prop_map(|(host, addrs)| WireLocation { host, addrs });
    prop_oneof![
        vec(ack(), 0..8).prop_map(Response::Delivered),
        Just(Response::DirectoryOk),
        (vec((text(), bytes(40)), 0..4), any::<u32>())
            .prop_map(|(conflicts, full)| Response::DirectoryApplied { conflicts, full }),
        proptest::option::of(location).prop_map(Response::Location),
        vec(signed(), 0..4).prop_map(Response::Members),
        Just(Response::LeaveOk),
        (digest(), vec((signed(), proved()), 0..3))
            .prop_map(|(beats, records)| Response::Beats { beats, records }),
        Just(Response::RecordsOk),
        text().prop_map(Response::Refused),
        text().prop_map(Response::RelayFailed),
        (any::<u64>(), any::<u64>())
            .prop_map(|(peers, missed)| Response::Broadcast { peers, missed }),
        any::<bool>().prop_map(Response::QueueTaken),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        plain_response(),
        vec(plain_response(), 0..4).prop_map(Response::Relayed),
    ]
}

fn host_record() -> impl Strategy<Value = HostRecord> {
    (
        bytes(40),
        any::<u64>(),
        any::<u64>(),
        vec(bytes(24), 0..3),
        vec(text(), 0..4),
        vec((text(), text(), any::<u32>()), 0..3),
        any::<bool>(),
        (any::<u64>(), any::<[u8; 16]>()),
    )
        .prop_map(
            |(public_key, epoch, seq, addrs, channels, queues, leaving, (start, tip))| HostRecord {
                public_key,
                epoch,
                seq,
                addrs,
                channels,
                queues: queues
                    .into_iter()
                    .map(|(pattern, group, members)| crate::QueueGroup {
                        pattern,
                        group,
                        members,
                    })
                    .collect(),
                leaving,
                anchor: Anchor { start, tip },
            },
        )
}

/// Encodes `m`, decodes it, and encodes the result: the same bytes.
fn same_after_round_trip<M: Serialize + DeserializeOwned>(m: &M) -> Result<(), TestCaseError> {
    let once = encode_frame(m).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: M = decode_frame(&once[4..]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let twice = encode_frame(&back).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(once, twice);
    Ok(())
}

proptest! {
    #[test]
    fn requests_round_trip(r in request()) {
        same_after_round_trip(&r)?;
        same_after_round_trip(&(7u64, r))?;
    }

    #[test]
    fn responses_round_trip(r in response()) {
        same_after_round_trip(&r)?;
        same_after_round_trip(&(7u64, r))?;
    }

    #[test]
    fn delivery_frames_round_trip(
        epoch in any::<u64>(),
        batch in any::<u64>(),
        envs in vec(envelope(), 0..6),
        acks in prop_oneof![vec(ack(), 0..8).prop_map(Ok), text().prop_map(Err)],
    ) {
        let b = StreamBatch { epoch, batch, envs };
        same_after_round_trip(&b)?;
        // The reader's borrowed view decodes the same bytes.
        let frame = encode_frame(&b).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let view: StreamBatchIn<'_> = postcard::from_bytes(&frame[4..])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(view.envs.len(), b.envs.len());
        same_after_round_trip(&StreamAcks { batch, acks })?;
    }

    #[test]
    fn records_and_digests_round_trip(r in host_record(), s in signed(), d in digest()) {
        same_after_round_trip(&r)?;
        same_after_round_trip(&s)?;
        same_after_round_trip(&d)?;
    }

    #[test]
    fn relayed_requests_round_trip(r in relayed()) {
        same_after_round_trip(&r)?;
    }
}
