//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each
//! takes bytes as a remote host could send them and runs the decoder that
//! would read them, with the checks the host makes after decoding. A
//! decoded value must encode again, and decode to the same encoding
//! (postcard is canonical for our types): a panic, an abort or a failed
//! check is a finding.

use crate::protocol::{decode_frame, encode_frame, Request, Response};

/// Decodes `data` as `M`; if it decodes, checks that its encoding decodes
/// and encodes to the same bytes.
pub(crate) fn round_trip<M: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) {
    let Ok(m) = decode_frame::<M>(data) else {
        return;
    };
    let Ok(once) = encode_frame(&m) else {
        return; // too large to frame: refused on the way out as well
    };
    let again: M = decode_frame(&once[4..]).expect("an encoding decodes");
    let twice = encode_frame(&again).expect("encodes again");
    assert_eq!(once, twice, "encoding is not stable");
}

/// A length-prefixed frame as a stream carries it: the length checked
/// against the limit before anything is allocated, then the body decoded
/// as a request.
pub fn frame(data: &[u8]) {
    let stats = crate::protocol::WireStats::default();
    let mut io = futures::io::Cursor::new(data);
    let body =
        futures::executor::block_on(crate::protocol::read_frame_body(&mut io, 64 * 1024, &stats));
    if let Ok(body) = body {
        assert!(body.len() <= 64 * 1024);
        round_trip::<Request>(&body);
    }
}

/// A request body, by request-response or on a request stream (with its
/// request id).
pub fn request(data: &[u8]) {
    round_trip::<Request>(data);
    round_trip::<(u64, Request)>(data);
}

/// An answer body, by request-response or on a request stream; relayed
/// answers nest at most one level.
pub fn response(data: &[u8]) {
    round_trip::<Response>(data);
    round_trip::<(u64, Response)>(data);
}

/// A delivery stream's frames: a batch (borrowed, as the reader decodes
/// it) and the acks that answer it.
pub fn delivery(data: &[u8]) {
    let _ = decode_frame::<crate::protocol::StreamBatch>(data);
    let _ = postcard::from_bytes::<crate::protocol::StreamBatchIn<'_>>(data);
    round_trip::<crate::protocol::StreamAcks>(data);
}

/// A channel frame from gossipsub (borrowed, as a host decodes it).
pub fn channel(data: &[u8]) {
    round_trip::<crate::protocol::ChannelFrame>(data);
    let _ = postcard::from_bytes::<crate::protocol::ChannelFrameIn<'_>>(data);
}

/// A membership record from gossip or a join, checked as a host checks it
/// (decoded, its key parsed, its signature verified), and a digest.
pub fn record(data: &[u8]) {
    if let Ok(signed) = decode_frame::<crate::protocol::SignedRecord>(data) {
        let _ = crate::core::membership::verify(&signed);
    }
    let _ = postcard::from_bytes::<crate::core::membership::HostRecord>(data);
    round_trip::<crate::protocol::Digest>(data);
}

/// A relayed request, opened as a host opens one: its proof checked
/// against a key (here a fixed one).
pub fn relay(data: &[u8]) {
    use std::sync::OnceLock;
    static KEY: OnceLock<libp2p::identity::Keypair> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        libp2p::identity::Keypair::ed25519_from_bytes([7u8; 32]).expect("a valid seed")
    });
    if let Ok(r) = decode_frame::<crate::protocol::Relayed>(data) {
        if let Some(proof) = &r.proof {
            let leaf = crate::relay_proof::leaf(&r.to, &r.inner);
            let _ = crate::relay_proof::verify(&key.public(), leaf, proof);
        }
        let _ = decode_frame::<Request>(&r.inner);
    }
}

/// A client gateway frame (its text decoded as a request), and the same
/// bytes as a payload pushed to a client, which must stay one JSON object
/// whose fields the payload cannot change.
#[cfg(feature = "gateway")]
pub fn gateway_frame(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::gateway::decode_request(text);
    }
    for encoding in [crate::Encoding::Json, crate::Encoding::Postcard] {
        let payload = crate::Payload {
            encoding,
            bytes: bytes::Bytes::copy_from_slice(data),
        };
        let pushed = crate::gateway::fuzz_push("p", "q", &payload);
        let value: serde_json::Value = match serde_json::from_str(&pushed) {
            Ok(v) => v,
            Err(e) => panic!("a push is not JSON ({e}): {pushed}"),
        };
        assert_eq!(value["peer"], "p", "a payload changed the push: {pushed}");
        assert_eq!(value["from"], "q", "a payload changed the push: {pushed}");
        assert_eq!(value["request"], 1, "a payload changed the push: {pushed}");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// A corpus directory's name and the target its inputs go through.
    type Target = (&'static str, fn(&[u8]));

    /// Every input of the kept corpus (`fuzz/corpus/<target>`, what
    /// libFuzzer found with `cargo fuzz run`) through its target, in every
    /// `cargo test`: an input that once crashed a decoder stays fixed
    /// without the nightly build of the fuzz targets.
    #[test]
    fn every_kept_fuzz_input_replays_without_a_finding() {
        let mut targets: Vec<Target> = vec![
            ("frame", super::frame),
            ("request", super::request),
            ("response", super::response),
            ("delivery", super::delivery),
            ("channel", super::channel),
            ("record", super::record),
            ("relay", super::relay),
        ];
        #[cfg(feature = "gateway")]
        targets.push(("gateway", super::gateway_frame));
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in targets {
            let dir = root.join(name);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
            let mut replayed = 0;
            for entry in entries {
                let path = entry.expect("a corpus entry").path();
                let data = std::fs::read(&path).expect("a corpus file");
                target(&data);
                replayed += 1;
            }
            assert!(replayed > 0, "the {name} corpus is empty");
        }
    }
}
