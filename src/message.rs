//! Payloads and received messages.
//!
//! A payload is bytes plus the name of their encoding, so a receiver can
//! decode a typed value sent from Rust (postcard) as well as a JSON value sent
//! by a browser client.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{
    error::{Cause, DecodeError, EncodeError, SendError},
    peer::Peer,
    request::{Corr, RequestId},
};

/// How a payload's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Encoding {
    /// [postcard](https://docs.rs/postcard): compact, not self-describing.
    /// The default for typed Rust values.
    Postcard,
    /// JSON text. Self-describing: decodes into `serde_json::Value`.
    Json,
}

/// An encoded payload: the bytes and how they are encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The encoding of `bytes`.
    pub encoding: Encoding,
    /// The encoded value.
    pub bytes: Bytes,
}

impl Payload {
    /// Encodes a value with postcard.
    pub fn postcard<T: Serialize + ?Sized>(value: &T) -> Result<Self, EncodeError> {
        let bytes = postcard::to_allocvec(value).map_err(|e| EncodeError(Cause::new(e)))?;
        Ok(Payload {
            encoding: Encoding::Postcard,
            bytes: bytes.into(),
        })
    }

    /// Encodes a value as JSON (for `serde_json::Value` and browser clients).
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, EncodeError> {
        let bytes = serde_json::to_vec(value).map_err(|e| EncodeError(Cause::new(e)))?;
        Ok(Payload {
            encoding: Encoding::Json,
            bytes: bytes.into(),
        })
    }

    /// Decodes the payload into `T` with the encoding it was sent in.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        match self.encoding {
            Encoding::Postcard => {
                postcard::from_bytes(&self.bytes).map_err(|e| DecodeError(Cause::new(e)))
            }
            Encoding::Json => {
                serde_json::from_slice(&self.bytes).map_err(|e| DecodeError(Cause::new(e)))
            }
        }
    }

    /// Size of the encoded bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the encoded bytes are empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A direct message received by a [`crate::Peer`], or the reply to a
/// request ([`crate::Peer::request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Id of the sending peer.
    pub from: String,
    /// The payload as sent.
    pub payload: Payload,
    /// Set when the sender made this message with [`crate::Peer::request`]
    /// and waits for a reply.
    request: Option<RequestId>,
}

impl Message {
    pub(crate) fn new(from: String, payload: Payload, corr: Corr) -> Self {
        let request = match corr {
            Corr::Request(id) => Some(RequestId(id)),
            Corr::None | Corr::Reply(_) => None,
        };
        Message {
            from,
            payload,
            request,
        }
    }

    /// Decodes the payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        self.payload.decode()
    }

    /// The request's id when the sender waits for a reply (see
    /// [`Message::reply`]); `None` for a plain message.
    pub fn request_id(&self) -> Option<RequestId> {
        self.request
    }

    /// Whether the sender waits for a reply.
    pub fn is_request(&self) -> bool {
        self.request.is_some()
    }

    /// Replies to this request from `peer` (the peer that received it),
    /// with a value encoded with postcard.
    ///
    /// Resolves once the reply is with the waiting requester. Errors as
    /// [`crate::Peer::send`], and [`SendError::NoRequest`] when this message is
    /// not a request or its requester no longer waits (it was answered or
    /// timed out); [`SendError::PeerNotFound`] when the requester is gone.
    pub async fn reply<T: Serialize + ?Sized>(
        &self,
        peer: &Peer,
        value: &T,
    ) -> Result<(), SendError> {
        self.reply_payload(peer, Payload::postcard(value)?).await
    }

    /// Replies with a value encoded as JSON (see [`Message::reply`]).
    pub async fn reply_json<T: Serialize + ?Sized>(
        &self,
        peer: &Peer,
        value: &T,
    ) -> Result<(), SendError> {
        self.reply_payload(peer, Payload::json(value)?).await
    }

    /// Replies with an encoded payload (see [`Message::reply`]).
    pub async fn reply_payload(&self, peer: &Peer, payload: Payload) -> Result<(), SendError> {
        let Some(id) = self.request else {
            return Err(SendError::NoRequest(format!(
                "the message from {:?} is not a request",
                self.from
            )));
        };
        peer.reply_payload(&self.from, id, payload).await
    }
}

/// A message received on a channel subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMessage {
    /// The channel it was published on (shared by every copy of one
    /// frame's publishes: one allocation per frame, not per delivery).
    pub channel: std::sync::Arc<str>,
    /// The payload as published.
    pub payload: Payload,
}

impl ChannelMessage {
    /// Decodes the payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        self.payload.decode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Greeting {
        text: String,
        n: u32,
    }

    #[test]
    fn postcard_round_trip() {
        let g = Greeting {
            text: "hi".into(),
            n: 7,
        };
        let p = Payload::postcard(&g).unwrap();
        assert_eq!(p.decode::<Greeting>().unwrap(), g);
    }

    #[test]
    fn json_value_round_trip() {
        let v = serde_json::json!({"a": [1, 2, {"b": null}], "c": "d"});
        let p = Payload::json(&v).unwrap();
        assert_eq!(p.decode::<serde_json::Value>().unwrap(), v);
    }

    #[test]
    fn a_decode_error_keeps_the_codec_error_as_its_source() {
        let p = Payload::json(&"not a number").unwrap();
        let e = p.decode::<u32>().unwrap_err();
        let DecodeError(cause) = &e;
        assert!(cause
            .get_ref()
            .downcast_ref::<serde_json::Error>()
            .is_some());
        let source = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(source, Some(cause.to_string()));
        assert_eq!(e.to_string(), "could not decode the payload");
        assert_eq!(e.report(), format!("could not decode the payload: {cause}"));
    }

    #[test]
    fn postcard_is_not_self_describing() {
        let p = Payload::postcard(&5u32).unwrap();
        assert!(p.decode::<serde_json::Value>().is_err());
    }
}
