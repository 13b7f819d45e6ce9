//! A minimal client of the gateway's protocol (docs/CLIENT-PROTOCOL.md) for
//! the tests: requests with ids, answers matched to them, pushes kept in
//! order.

use std::collections::VecDeque;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{protocol::CloseFrame, Message},
    MaybeTlsStream, WebSocketStream,
};

use super::within;

/// One client connection.
pub(crate) struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Pushes (`event` frames) read while waiting for answers.
    events: VecDeque<Value>,
    /// The hello's answer.
    pub welcome: Value,
    /// The last event numbered `seq` it has (events are acknowledged as
    /// they are taken, and ones seen before are skipped).
    seen: u64,
}

/// An error answer: its code and message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refused {
    pub code: String,
    pub message: String,
}

impl Client {
    /// Connects without a hello.
    pub(crate) async fn raw(url: &str) -> Client {
        let (ws, _) = within("connect", tokio_tungstenite::connect_async(url))
            .await
            .expect("connect");
        Client {
            ws,
            next_id: 1,
            events: VecDeque::new(),
            welcome: Value::Null,
            seen: 0,
        }
    }

    /// Connects and says hello (with a token or a session to resume).
    pub(crate) async fn hello(url: &str, extra: Value) -> Result<Client, Refused> {
        let mut c = Client::raw(url).await;
        let mut hello = json!({"op": "hello", "version": 1});
        if let (Some(h), Some(e)) = (hello.as_object_mut(), extra.as_object()) {
            h.extend(e.clone());
        }
        c.welcome = c.call(hello).await?;
        Ok(c)
    }

    /// Connects anonymously, acknowledging events.
    pub(crate) async fn connect(url: &str) -> Client {
        Client::hello(url, json!({"acks": true}))
            .await
            .expect("hello")
    }

    /// Connects again and takes back the session of `old` (dropped), with
    /// the events it had not taken.
    pub(crate) async fn resume(url: &str, old: (String, u64)) -> Result<Client, Refused> {
        let (session, seen) = old;
        let mut c =
            Client::hello(url, json!({"resume": session, "acks": true, "seq": seen})).await?;
        c.seen = seen;
        Ok(c)
    }

    /// Drops the connection without a close frame, as a network failure
    /// would; returns what [`Client::resume`] needs.
    pub(crate) fn drop_connection(self) -> (String, u64) {
        (self.session(), self.seen)
    }

    /// The session token to resume with.
    pub(crate) fn session(&self) -> String {
        self.welcome["session"]
            .as_str()
            .expect("session")
            .to_string()
    }

    /// Sends a request without waiting; returns its id.
    pub(crate) async fn start(&mut self, mut req: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        req["id"] = json!(id);
        self.send_text(req.to_string()).await;
        id
    }

    /// Sends a text frame as it is.
    pub(crate) async fn send_text(&mut self, text: String) {
        within("write", self.ws.send(Message::text(text)))
            .await
            .expect("write");
    }

    /// The next frame as JSON; `None` when the connection ended. The wait
    /// is bounded as a whole: the gateway's pings do not extend it.
    pub(crate) async fn frame(&mut self) -> Option<Value> {
        within("frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return Some(serde_json::from_str(&t).expect("json"))
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
    }

    /// Waits for the answer to request `id`, keeping pushes for later.
    pub(crate) async fn answer(&mut self, id: u64) -> Result<Value, Refused> {
        loop {
            let f = self
                .frame()
                .await
                .expect("connection ended before the answer");
            if f.get("event").is_some() {
                self.events.push_back(f);
                continue;
            }
            if f["id"] != json!(id) {
                panic!("answer to another request: {f}");
            }
            if let Some(e) = f.get("error") {
                return Err(Refused {
                    code: e["code"].as_str().unwrap_or("").into(),
                    message: e["message"].as_str().unwrap_or("").into(),
                });
            }
            return Ok(f["ok"].clone());
        }
    }

    /// Sends a request and waits for its answer.
    pub(crate) async fn call(&mut self, req: Value) -> Result<Value, Refused> {
        let id = self.start(req).await;
        self.answer(id).await
    }

    /// Acknowledges every event up to `seq`.
    pub(crate) async fn ack(&mut self, seq: u64) {
        self.seen = seq;
        self.send_text(json!({"op": "ack", "seq": seq}).to_string())
            .await;
    }

    /// The next push (acknowledged, when numbered; one seen before is
    /// skipped).
    pub(crate) async fn event(&mut self) -> Value {
        loop {
            let e = match self.events.pop_front() {
                Some(e) => e,
                None => {
                    let f = self
                        .frame()
                        .await
                        .expect("connection ended before the event");
                    assert!(f.get("event").is_some(), "an answer nobody waited for: {f}");
                    f
                }
            };
            let Some(seq) = e["seq"].as_u64() else {
                return e;
            };
            if seq <= self.seen {
                continue;
            }
            assert_eq!(seq, self.seen + 1, "an event is missing before {e}");
            self.ack(seq).await;
            return e;
        }
    }

    /// Closes with code 1000: the session ends and its peers go.
    pub(crate) async fn close(mut self) {
        let frame = CloseFrame {
            code: 1000u16.into(),
            reason: "bye".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
        while let Ok(Some(_)) =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.ws.next()).await
        {}
    }
}
