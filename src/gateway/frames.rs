//! The client protocol's frames (docs/CLIENT-PROTOCOL.md): requests decoded
//! from JSON text, answers and pushes encoded to it.
//!
//! Decoding goes through one flat struct of optional, borrowed fields rather
//! than a tagged enum: serde's internally tagged enums buffer the whole
//! object first, and `send` is the hot path. Payloads stay raw JSON text
//! (`RawValue`) from the frame to the wire and back, never parsed into a
//! tree. serde_json limits nesting to 128 levels, and the WebSocket layer
//! limits the frame's size before any of this runs.

use std::fmt::Write as _;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{error::Error, message::Encoding, request::RequestId, Message, Payload};

/// The protocol version this gateway speaks.
pub const VERSION: u32 = 1;

/// An error answer's code: a stable, lower-case name per failure
/// (docs/CLIENT-PROTOCOL.md lists them).
pub(crate) fn code(e: &Error) -> &'static str {
    match e {
        Error::Closed => "closed",
        Error::IdExists(_) => "id_exists",
        Error::IdTaken { .. } => "id_taken",
        Error::InvalidId(_) => "invalid_id",
        Error::PeerNotFound(_) => "not_found",
        Error::PeerUnreachable { .. } => "unreachable",
        Error::Timeout => "timeout",
        Error::MessageTooLarge { .. } => "too_large",
        Error::InboxFull(_) => "inbox_full",
        Error::InvalidChannel(_) => "invalid_channel",
        Error::InvalidPattern(_) => "invalid_pattern",
        Error::QueueUnavailable { .. } => "queue_unavailable",
        Error::NoRequest(_) => "no_request",
        Error::Partitioned(_) => "partitioned",
        Error::Encode(_) | Error::Decode(_) => "bad_request",
        _ => "internal",
    }
}

/// A request that could not be taken: its code and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code (`bad_request`, `unauthorized`, `limit`, …).
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Refusal::new("bad_request", message)
    }
}

/// Any operation's error, by the code of the [`Error`] it converts into.
impl<E: Clone + Into<Error>> From<&E> for Refusal {
    fn from(e: &E) -> Self {
        let e: Error = e.clone().into();
        Refusal::new(code(&e), e.report())
    }
}

/// Every field any request has; each operation takes the ones it needs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flat<'a> {
    op: &'a str,
    id: Option<u64>,
    #[serde(borrow)]
    peer: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    from: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    to: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    queue: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    resume: Option<std::borrow::Cow<'a, str>>,
    version: Option<u32>,
    limit: Option<u64>,
    batch: Option<bool>,
    request: Option<u64>,
    timeout: Option<u64>,
    acks: Option<bool>,
    seq: Option<u64>,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The first frame of a connection.
    Hello {
        /// The protocol version the client speaks.
        version: u32,
        /// A bearer token, when the gateway asks for one.
        token: Option<String>,
        /// The session to take back after a reconnect.
        resume: Option<String>,
        /// The client takes batches: frames holding an array of answers
        /// and events.
        batch: bool,
        /// The client acknowledges events (numbered by `seq`), and the
        /// session sends the unacknowledged ones again after a resume.
        acks: bool,
        /// With `resume`: the last event the client has.
        seq: Option<u64>,
    },
    /// The client has every event up to `seq` (never answered).
    Ack {
        /// The last event it has.
        seq: u64,
    },
    /// Creates a peer on the node, owned by this connection.
    Create {
        /// Its id.
        peer: String,
    },
    /// Removes one of this connection's peers.
    Remove {
        /// Its id.
        peer: String,
    },
    /// Sends `data` (JSON) from one of this connection's peers.
    Send {
        /// The sending peer (this connection's).
        from: String,
        /// The recipient, anywhere.
        to: String,
        /// The message as JSON text.
        data: Payload,
    },
    /// Sends `data` as a request and answers with the reply.
    Request {
        /// The asking peer (this connection's).
        from: String,
        /// The peer asked, anywhere.
        to: String,
        /// The request as JSON text.
        data: Payload,
        /// How long to wait for the reply.
        timeout: std::time::Duration,
    },
    /// Replies to a request one of this connection's peers received.
    Reply {
        /// The replying peer (this connection's): the one asked.
        from: String,
        /// The peer that asked.
        to: String,
        /// The request's id, from its `message` event.
        request: RequestId,
        /// The reply as JSON text.
        data: Payload,
    },
    /// Subscribes this connection to a channel, or makes it a member of
    /// the channel's queue group `queue`.
    Subscribe {
        /// The channel.
        channel: String,
        /// The queue group.
        queue: Option<String>,
    },
    /// Ends this connection's subscription to a channel (or membership of
    /// its queue group `queue`).
    Unsubscribe {
        /// The channel.
        channel: String,
        /// The queue group.
        queue: Option<String>,
    },
    /// Publishes `data` (JSON) on a channel.
    Publish {
        /// The channel.
        channel: String,
        /// The message as JSON text.
        data: Payload,
    },
    /// Delivers `data` (JSON) to every peer on every host (`broadcast`),
    /// or to those whose id matches `to` (`send_group`), from one of this
    /// connection's peers or (without `from`) from the node.
    Broadcast {
        /// The sending peer, if any.
        from: Option<String>,
        /// The pattern of peer ids of a group send.
        to: Option<String>,
        /// The message as JSON text.
        data: Payload,
    },
    /// Where a peer lives.
    Find {
        /// The peer's id.
        peer: String,
    },
    /// The live hosts of the network.
    Members,
    /// The node's counters.
    Stats,
    /// Ids of peers on the node (up to `limit`).
    Peers {
        /// Most ids to list.
        limit: usize,
    },
    /// Answered at once (round-trip checks).
    Ping,
}

/// A request: its id (echoed in the answer) and operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the client; echoed in the answer.
    pub id: u64,
    /// What to do.
    pub op: Op,
}

/// The wait for a reply when a request names none.
pub(super) const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest wait for a reply a request may ask for: a request holds
/// one of its connection's in-flight places until then.
pub(super) const MAX_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Most peer ids one `peers` answer lists.
const MAX_LISTED: u64 = 10_000;

/// Decodes one text frame. A frame that is not a request at all (not JSON,
/// no id) is refused with the id 0; a request with an id but bad fields is
/// refused with its id, so the client can match the refusal.
pub fn decode(text: &str) -> Result<Request, (u64, Refusal)> {
    let flat: Flat = serde_json::from_str(text).map_err(|e| {
        // A field of the wrong type fails the whole request; its answer
        // still goes to its id when it has one, so the client's call ends
        // with the error instead of waiting for ever.
        #[derive(Deserialize)]
        struct IdOnly {
            id: Option<u64>,
        }
        let id = serde_json::from_str::<IdOnly>(text)
            .ok()
            .and_then(|r| r.id)
            .unwrap_or(0);
        (id, Refusal::bad(format!("not a request: {e}")))
    })?;
    // An acknowledgement has no id: it is never answered.
    if flat.op == "ack" {
        let seq = flat
            .seq
            .ok_or_else(|| (0, Refusal::bad("ack needs \"seq\"")))?;
        return Ok(Request {
            id: 0,
            op: Op::Ack { seq },
        });
    }
    let id = flat
        .id
        .ok_or_else(|| (0, Refusal::bad("the request has no id")))?;
    let fail = |m: &str| (id, Refusal::bad(m.to_string()));
    let need = |v: Option<std::borrow::Cow<'_, str>>, name: &str| {
        v.map(|c| c.into_owned())
            .ok_or_else(|| fail(&format!("{} needs {name:?}", flat.op)))
    };
    let data = |v: Option<&RawValue>| {
        let raw = v.ok_or_else(|| fail(&format!("{} needs \"data\"", flat.op)))?;
        Ok(Payload {
            encoding: Encoding::Json,
            bytes: bytes::Bytes::copy_from_slice(raw.get().as_bytes()),
        })
    };
    let op = match flat.op {
        "hello" => Op::Hello {
            version: flat
                .version
                .ok_or_else(|| fail("hello needs \"version\""))?,
            token: flat.token.map(|t| t.into_owned()),
            resume: flat.resume.map(|t| t.into_owned()),
            batch: flat.batch.unwrap_or(false),
            acks: flat.acks.unwrap_or(false),
            seq: flat.seq,
        },
        "create" => Op::Create {
            peer: need(flat.peer, "peer")?,
        },
        "remove" => Op::Remove {
            peer: need(flat.peer, "peer")?,
        },
        "send" => Op::Send {
            from: need(flat.from, "from")?,
            to: need(flat.to, "to")?,
            data: data(flat.data)?,
        },
        "request" => Op::Request {
            from: need(flat.from, "from")?,
            to: need(flat.to, "to")?,
            data: data(flat.data)?,
            timeout: flat
                .timeout
                .map_or(DEFAULT_REQUEST_TIMEOUT, std::time::Duration::from_millis)
                .min(MAX_REQUEST_TIMEOUT),
        },
        "reply" => Op::Reply {
            from: need(flat.from, "from")?,
            to: need(flat.to, "to")?,
            request: RequestId(
                flat.request
                    .ok_or_else(|| fail("reply needs \"request\""))?,
            ),
            data: data(flat.data)?,
        },
        "subscribe" => Op::Subscribe {
            channel: need(flat.channel, "channel")?,
            queue: flat.queue.map(|q| q.into_owned()),
        },
        "unsubscribe" => Op::Unsubscribe {
            channel: need(flat.channel, "channel")?,
            queue: flat.queue.map(|q| q.into_owned()),
        },
        "publish" => Op::Publish {
            channel: need(flat.channel, "channel")?,
            data: data(flat.data)?,
        },
        "broadcast" => Op::Broadcast {
            from: flat.from.map(|f| f.into_owned()),
            to: None,
            data: data(flat.data)?,
        },
        "send_group" => Op::Broadcast {
            from: flat.from.map(|f| f.into_owned()),
            to: Some(need(flat.to, "to")?),
            data: data(flat.data)?,
        },
        "find" => Op::Find {
            peer: need(flat.peer, "peer")?,
        },
        "members" => Op::Members,
        "stats" => Op::Stats,
        "peers" => Op::Peers {
            limit: flat.limit.unwrap_or(1000).min(MAX_LISTED) as usize,
        },
        "ping" => Op::Ping,
        other => return Err(fail(&format!("unknown op {other:?}"))),
    };
    Ok(Request { id, op })
}

/// Most requests one batch frame may hold.
pub(super) const MAX_BATCH: usize = 4096;

/// Splits a frame into its requests: a JSON array is a batch (each element
/// one request's text), anything else is one request.
pub(crate) fn split_batch(text: &str) -> Result<Vec<&str>, Refusal> {
    if !text.trim_start().starts_with('[') {
        return Ok(vec![text]);
    }
    let items: Vec<&RawValue> = serde_json::from_str(text)
        .map_err(|e| Refusal::bad(format!("not a batch of requests: {e}")))?;
    if items.len() > MAX_BATCH {
        return Err(Refusal::bad(format!(
            "a batch of {} requests; at most {MAX_BATCH}",
            items.len()
        )));
    }
    Ok(items.into_iter().map(RawValue::get).collect())
}

/// `{"id":N,"ok":<value>}`.
pub(crate) fn ok(id: u64, value: &serde_json::Value) -> String {
    format!("{{\"id\":{id},\"ok\":{value}}}")
}

/// `{"id":N,"ok":{}}`, the answer of most operations.
pub(crate) fn done(id: u64) -> String {
    format!("{{\"id\":{id},\"ok\":{{}}}}")
}

/// `{"id":N,"error":{"code":…,"message":…}}`.
pub(crate) fn error(id: u64, refusal: &Refusal) -> String {
    let body = serde_json::json!({ "code": refusal.code, "message": refusal.message });
    format!("{{\"id\":{id},\"error\":{body}}}")
}

/// `{"event":"closing",…}`: why the gateway is about to close the connection.
pub(crate) fn closing(refusal: &Refusal) -> String {
    serde_json::json!({
        "event": "closing",
        "code": refusal.code,
        "message": refusal.message,
    })
    .to_string()
}

/// Appends `,"data":<json>` for a JSON payload, or
/// `,"encoding":"postcard","base64":"…"` for one a Rust host sent typed.
/// A payload marked JSON that does not parse as one JSON value is sent as
/// base64 too: splicing it unchecked would let a remote peer forge fields
/// of the frame. The check is a full parse, not `RawValue`'s: that one
/// takes numbers such as `1e+2111` that strict parsers (serde_json's
/// `Value`, hence Rust clients) refuse, and one such payload would make a
/// client drop the whole frame.
fn push_payload(out: &mut String, payload: &Payload) {
    if payload.encoding == Encoding::Json {
        if let Ok(text) = std::str::from_utf8(&payload.bytes) {
            if serde_json::from_str::<serde_json::Value>(text).is_ok() {
                out.push_str(",\"data\":");
                out.push_str(text);
                return;
            }
        }
    }
    let name = match payload.encoding {
        Encoding::Postcard => "postcard",
        Encoding::Json => "json",
    };
    let _ = write!(out, ",\"encoding\":\"{name}\",\"base64\":\"");
    base64::engine::general_purpose::STANDARD.encode_string(&payload.bytes, out);
    out.push('"');
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `{"event":"message","peer":…,"from":…,"data":…}`, with `"request":N`
/// when the sender waits for a reply.
pub(crate) fn message(peer: &str, m: &Message) -> String {
    let (from, payload) = (&m.from, &m.payload);
    let mut out = String::with_capacity(80 + peer.len() + from.len() + payload.len());
    let _ = write!(
        out,
        "{{\"event\":\"message\",\"peer\":{},\"from\":{}",
        json_str(peer),
        json_str(from)
    );
    if let Some(r) = m.request_id() {
        let _ = write!(out, ",\"request\":{r}");
    }
    push_payload(&mut out, payload);
    out.push('}');
    out
}

/// `{"id":N,"ok":{"from":…,"data":…}}`: the reply to a `request`.
pub(crate) fn reply(id: u64, m: &Message) -> String {
    let mut out = String::with_capacity(48 + m.from.len() + m.payload.len());
    let _ = write!(out, "{{\"id\":{id},\"ok\":{{\"from\":{}", json_str(&m.from));
    push_payload(&mut out, &m.payload);
    out.push_str("}}");
    out
}

/// `{"event":"publish","channel":…,"data":…}`, with
/// `"subscription":<pattern>` when it came through a wildcard subscription.
/// A connection's subscription: its pattern, and its queue group for a
/// member of one.
pub(crate) type SubKey = (String, Option<String>);

pub(crate) fn publish(channel: &str, sub: &SubKey, payload: &Payload) -> String {
    let (pattern, queue) = sub;
    let mut out = String::with_capacity(64 + channel.len() + pattern.len() + payload.len());
    let _ = write!(
        out,
        "{{\"event\":\"publish\",\"channel\":{}",
        json_str(channel)
    );
    if pattern != channel {
        let _ = write!(out, ",\"subscription\":{}", json_str(pattern));
    }
    if let Some(q) = queue {
        let _ = write!(out, ",\"queue\":{}", json_str(q));
    }
    push_payload(&mut out, payload);
    out.push('}');
    out
}

/// `{"event":"removed","peer":…,"reason":…}`: a peer of this connection
/// ended without the client asking (its id was taken, or the node removed it).
pub(crate) fn removed(peer: &str, reason: &str) -> String {
    serde_json::json!({ "event": "removed", "peer": peer, "reason": reason }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Corr;

    #[test]
    fn a_send_keeps_its_data_as_written() {
        let r = decode(r#"{"op":"send","id":7,"from":"a","to":"b","data":{"x":[1, 2]}}"#).unwrap();
        assert_eq!(r.id, 7);
        let Op::Send { from, to, data } = r.op else {
            panic!("not a send: {r:?}")
        };
        assert_eq!((from.as_str(), to.as_str()), ("a", "b"));
        assert_eq!(&data.bytes[..], br#"{"x":[1, 2]}"#);
        assert_eq!(data.encoding, Encoding::Json);
    }

    #[test]
    fn a_batch_is_split_into_its_requests() {
        let items = split_batch(r#" [{"op":"ping","id":1}, {"op":"ping","id":2}]"#).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(decode(items[1]).unwrap().id, 2);
        assert_eq!(split_batch(r#"{"op":"ping","id":1}"#).unwrap().len(), 1);
        assert!(split_batch("[1,").is_err());
        let many = format!("[{}]", vec!["{}"; MAX_BATCH + 1].join(","));
        assert!(split_batch(&many).is_err());
    }

    #[test]
    fn requests_and_replies_decode_with_their_bounds() {
        let r = decode(r#"{"op":"request","id":1,"from":"a","to":"b","data":1,"timeout":250}"#);
        let Op::Request { timeout, .. } = r.unwrap().op else {
            panic!("not a request")
        };
        assert_eq!(timeout, std::time::Duration::from_millis(250));
        let r = decode(r#"{"op":"request","id":1,"from":"a","to":"b","data":1,"timeout":1e3}"#);
        assert!(r.is_err(), "a timeout is an integer of milliseconds");
        let r = decode(r#"{"op":"request","id":1,"from":"a","to":"b","data":1}"#).unwrap();
        assert!(matches!(r.op, Op::Request { timeout, .. } if timeout == DEFAULT_REQUEST_TIMEOUT));
        let r =
            decode(r#"{"op":"request","id":1,"from":"a","to":"b","data":1,"timeout":99999999999}"#);
        assert!(
            matches!(r.unwrap().op, Op::Request { timeout, .. } if timeout == MAX_REQUEST_TIMEOUT)
        );
        let r = decode(r#"{"op":"reply","id":2,"from":"b","to":"a","request":77,"data":[]}"#);
        assert!(matches!(r.unwrap().op, Op::Reply { request, .. } if request.as_u64() == 77));
        let (id, r) = decode(r#"{"op":"reply","id":3,"from":"b","to":"a","data":[]}"#).unwrap_err();
        assert_eq!((id, r.code), (3, "bad_request"));
    }

    #[test]
    fn escaped_ids_are_unescaped() {
        let r = decode(r#"{"op":"create","id":1,"peer":"a\"b\u00e9"}"#).unwrap();
        assert_eq!(
            r.op,
            Op::Create {
                peer: "a\"bé".into()
            }
        );
    }

    #[test]
    fn bad_frames_are_refused_with_the_request_id_when_there_is_one() {
        assert_eq!(decode("not json").unwrap_err().0, 0);
        assert_eq!(decode(r#"{"op":"ping"}"#).unwrap_err().0, 0);
        let (id, r) = decode(r#"{"op":"send","id":3,"from":"a","to":"b"}"#).unwrap_err();
        assert_eq!((id, r.code), (3, "bad_request"));
        let (id, r) = decode(r#"{"op":"explode","id":4}"#).unwrap_err();
        assert_eq!((id, r.code), (4, "bad_request"));
        assert_eq!(
            decode(r#"{"op":"ping","id":5,"extra":1}"#).unwrap_err().0,
            5
        );
        // A field of the wrong type: still answered to its id.
        let (id, r) = decode(r#"{"op":"send","id":6,"from":"a","to":42,"data":1}"#).unwrap_err();
        assert_eq!((id, r.code), (6, "bad_request"));
        // Deep nesting: a field decoded into a value is refused (serde_json
        // stops at 128 levels); raw data is skipped without recursion.
        let nest = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let deep = format!("{{\"op\":\"ping\",\"id\":1,\"peer\":{}}}", nest(10_000));
        assert!(decode(&deep).is_err());
        let deep = format!(
            "{{\"op\":\"publish\",\"id\":1,\"channel\":\"c\",\"data\":{}}}",
            nest(100_000)
        );
        assert!(decode(&deep).is_ok());
    }

    #[test]
    fn pushes_are_json_and_cannot_be_forged_by_a_payload() {
        let p = Payload::json(&serde_json::json!({"k": "v"})).unwrap();
        let msg = |payload: &Payload| Message::new("q".into(), payload.clone(), Corr::Request(9));
        let m: serde_json::Value = serde_json::from_str(&message("p\"1", &msg(&p))).unwrap();
        assert_eq!(m["request"], 9);
        assert_eq!(m["peer"], "p\"1");
        assert_eq!(m["data"]["k"], "v");
        let forged = Payload {
            encoding: Encoding::Json,
            bytes: bytes::Bytes::from_static(br#"1,"peer":"someone else""#),
        };
        let m: serde_json::Value = serde_json::from_str(&message("p", &msg(&forged))).unwrap();
        assert_eq!(m["peer"], "p");
        assert_eq!(m["encoding"], "json");
        // Found by the fuzz target: grammatical JSON that strict parsers refuse.
        let huge = Payload {
            encoding: Encoding::Json,
            bytes: bytes::Bytes::from_static(b"1e+2111"),
        };
        let m: serde_json::Value = serde_json::from_str(&message("p", &msg(&huge))).unwrap();
        assert_eq!(m["encoding"], "json");
        let m: serde_json::Value = serde_json::from_str(&reply(4, &msg(&forged))).unwrap();
        assert_eq!((&m["id"], &m["ok"]["from"]), (&4.into(), &"q".into()));
        assert_eq!(m["ok"]["encoding"], "json");
        let typed = Payload::postcard(&7u32).unwrap();
        let m: serde_json::Value =
            serde_json::from_str(&publish("c", &("c".into(), None), &typed)).unwrap();
        assert_eq!(m["encoding"], "postcard");
        assert!(m.get("subscription").is_none() && m.get("queue").is_none());
        let queued = ("c.*".to_string(), Some("w".to_string()));
        let m: serde_json::Value = serde_json::from_str(&publish("c.d", &queued, &typed)).unwrap();
        assert_eq!(
            (&m["subscription"], &m["queue"]),
            (&"c.*".into(), &"w".into())
        );
        assert_eq!(m["base64"], "Bw==");
    }
}
