//! The client subcommands (`send`, `request`, `reply`, `pub`, `sub`,
//! `find`, `members`, `stats`), like the `nats` CLI: each connects to a node's client gateway
//! over WebSocket (docs/CLIENT-PROTOCOL.md), does one thing and exits.

use std::collections::VecDeque;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
};
use tokio_tungstenite::{
    tungstenite::{protocol::CloseFrame, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::settings::{ClientArgs, ClientCommand};

/// How long a command waits for the gateway to answer one request.
const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// One gateway connection.
struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: VecDeque<Value>,
}

impl Conn {
    async fn open(args: &ClientArgs) -> Result<Conn, String> {
        let url = &args.gateway;
        let connecting = tokio_tungstenite::connect_async(url.as_str());
        let (ws, _) = tokio::time::timeout(ANSWER_WAIT, connecting)
            .await
            .map_err(|_| format!("no answer from {url}"))?
            .map_err(|e| {
                format!("cannot connect to {url}: {e} (is the node started with --gateway?)")
            })?;
        let mut conn = Conn {
            ws,
            next_id: 1,
            events: VecDeque::new(),
        };
        let mut hello = json!({"op": "hello", "version": distribus::CLIENT_PROTOCOL});
        if let Some(t) = &args.token {
            hello["token"] = json!(t);
        }
        conn.call(hello).await?;
        Ok(conn)
    }

    async fn start(&mut self, mut req: Value) -> Result<u64, String> {
        let id = self.next_id;
        self.next_id += 1;
        req["id"] = json!(id);
        self.ws
            .send(Message::text(req.to_string()))
            .await
            .map_err(|e| format!("the connection failed: {e}"))?;
        Ok(id)
    }

    /// The next frame; an error when the connection ends.
    async fn frame(&mut self) -> Result<Value, String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(&t).map_err(|e| format!("bad frame: {e}"))
                }
                Some(Ok(Message::Close(f))) => {
                    let why = f.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Err(format!("the gateway closed the connection {why}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("the connection failed: {e}")),
                None => return Err("the connection ended".into()),
            }
        }
    }

    async fn answer(&mut self, id: u64) -> Result<Value, String> {
        loop {
            let f = tokio::time::timeout(ANSWER_WAIT, self.frame())
                .await
                .map_err(|_| "no answer in time".to_string())??;
            if f.get("event").is_some() {
                if f["event"] == "closing" {
                    return Err(format!("{}: {}", f["code"], f["message"]));
                }
                self.events.push_back(f);
            } else if f["id"] == json!(id) || f["id"] == json!(0) {
                if let Some(e) = f.get("error") {
                    let code = e["code"].as_str().unwrap_or("error");
                    let msg = e["message"].as_str().unwrap_or("");
                    return Err(format!("{code}: {msg}"));
                }
                return Ok(f["ok"].clone());
            }
        }
    }

    async fn call(&mut self, req: Value) -> Result<Value, String> {
        let id = self.start(req).await?;
        self.answer(id).await
    }

    async fn close(mut self) {
        let frame = CloseFrame {
            code: 1000u16.into(),
            reason: "done".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
    }
}

/// A message given on the command line: JSON if it parses as JSON,
/// otherwise the text as a JSON string.
fn message(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The messages to send: the argument, or one per line of stdin.
async fn messages(
    arg: &Option<String>,
    mut each: impl AsyncFnMut(Value) -> Result<(), String>,
) -> Result<(), String> {
    if let Some(text) = arg {
        return each(message(text)).await;
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| format!("cannot read stdin: {e}"))?
    {
        if !line.is_empty() {
            each(message(&line)).await?;
        }
    }
    Ok(())
}

/// One line per message: `#channel data` for a publish, `from: data` for a
/// message to the peer; the whole event with `--json`.
fn print_payload(event: &Value, as_json: bool) {
    if as_json {
        println!("{event}");
        return;
    }
    let text = |key: &str| event[key].as_str().unwrap_or("").to_string();
    if event["event"] == "publish" {
        println!("#{} {}", text("channel"), payload_text(event));
    } else {
        println!("{}: {}", text("from"), payload_text(event));
    }
}

/// A payload as one line: a JSON string's text, other JSON as JSON, and a
/// payload that is not JSON as its encoding and base64.
fn payload_text(event: &Value) -> String {
    match event.get("data") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => format!(
            "<{} payload, base64 {}>",
            event["encoding"], event["base64"]
        ),
    }
}

/// Broadcasts (`to` is `None`) or sends to a group each message, printing
/// each report.
async fn fan_out(
    conn: &mut Conn,
    to: Option<String>,
    text: Option<String>,
    from: Option<String>,
) -> Result<(), String> {
    if let Some(f) = &from {
        conn.call(json!({"op": "create", "peer": f})).await?;
    }
    messages(&text, async |data| {
        let mut req = match &to {
            Some(p) => json!({"op": "send_group", "to": p, "data": data}),
            None => json!({"op": "broadcast", "data": data}),
        };
        if let Some(f) = &from {
            req["from"] = json!(f);
        }
        let report = conn.call(req).await?;
        println!("{report}");
        Ok(())
    })
    .await
}

/// Waits for the next event, or `None` on Ctrl-C.
async fn next_event(
    conn: &mut Conn,
    stop: &mut std::pin::Pin<&mut impl std::future::Future>,
) -> Result<Option<Value>, String> {
    if let Some(e) = conn.events.pop_front() {
        return Ok(Some(e));
    }
    tokio::select! {
        _ = stop => Ok(None),
        f = conn.frame() => f.map(Some),
    }
}

/// Runs one client command.
pub(crate) async fn run(command: ClientCommand) -> Result<(), String> {
    let mut conn = Conn::open(command.conn()).await?;
    let result = match command {
        ClientCommand::Send {
            to,
            message: text,
            from,
            ..
        } => {
            let from = from.unwrap_or_else(|| format!("cli-{:08x}", rand::random::<u32>()));
            conn.call(json!({"op": "create", "peer": from})).await?;
            messages(&text, async |data| {
                conn.call(json!({"op": "send", "from": from, "to": to, "data": data}))
                    .await
                    .map(|_| ())
            })
            .await
        }
        ClientCommand::Request {
            to,
            message: text,
            from,
            timeout,
            ..
        } => {
            let from = from.unwrap_or_else(|| format!("cli-{:08x}", rand::random::<u32>()));
            conn.call(json!({"op": "create", "peer": from})).await?;
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            messages(&text, async |data| {
                let req =
                    json!({"op": "request", "from": from, "to": to, "data": data, "timeout": ms});
                let reply = conn.call(req).await?;
                println!("{}", payload_text(&reply));
                Ok(())
            })
            .await
        }
        ClientCommand::Reply { peer, answer, .. } => {
            conn.call(json!({"op": "create", "peer": peer})).await?;
            let answer = answer.as_deref().map(message);
            eprintln!("answering requests to {peer}; Ctrl-C to stop");
            let stop = tokio::signal::ctrl_c();
            tokio::pin!(stop);
            while let Some(event) = next_event(&mut conn, &mut stop).await? {
                match event["event"].as_str() {
                    Some("message") => {
                        print_payload(&event, false);
                        let Some(request) = event.get("request") else {
                            continue;
                        };
                        let data = match (&answer, event.get("data")) {
                            (Some(a), _) => a.clone(),
                            (None, Some(d)) => d.clone(),
                            (None, None) => Value::Null,
                        };
                        let reply = json!({"op": "reply", "from": peer, "to": event["from"],
                            "request": request, "data": data});
                        // A requester that stopped waiting is reported, not fatal.
                        if let Err(e) = conn.call(reply).await {
                            eprintln!("reply to {}: {e}", event["from"]);
                        }
                    }
                    Some("closing") => {
                        return Err(format!("{}: {}", event["code"], event["message"]))
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        ClientCommand::Pub {
            channel,
            message: text,
            ..
        } => {
            messages(&text, async |data| {
                conn.call(json!({"op": "publish", "channel": channel, "data": data}))
                    .await
                    .map(|_| ())
            })
            .await
        }
        ClientCommand::Broadcast {
            message: text,
            from,
            ..
        } => fan_out(&mut conn, None, text, from).await,
        ClientCommand::SendGroup {
            pattern,
            message: text,
            from,
            ..
        } => fan_out(&mut conn, Some(pattern), text, from).await,
        ClientCommand::Sub {
            channel,
            json,
            peer,
            queue,
            ..
        } => {
            if let Some(p) = &peer {
                conn.call(json!({"op": "create", "peer": p})).await?;
            }
            if let Some(c) = &channel {
                let mut req = json!({"op": "subscribe", "channel": c});
                if let Some(q) = &queue {
                    req["queue"] = json!(q);
                }
                conn.call(req).await?;
            }
            if channel.is_none() && peer.is_none() {
                return Err("sub needs a channel or --peer".into());
            }
            eprintln!("listening; Ctrl-C to stop");
            let stop = tokio::signal::ctrl_c();
            tokio::pin!(stop);
            while let Some(event) = next_event(&mut conn, &mut stop).await? {
                match event["event"].as_str() {
                    Some("publish" | "message") => print_payload(&event, json),
                    Some("closing") => {
                        return Err(format!("{}: {}", event["code"], event["message"]))
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        ClientCommand::Find { id, .. } => {
            let found = conn.call(json!({"op": "find", "peer": id})).await?;
            println!("{}", found["host"].as_str().unwrap_or(""));
            for a in found["addrs"].as_array().into_iter().flatten() {
                println!("  {}", a.as_str().unwrap_or(""));
            }
            Ok(())
        }
        ClientCommand::Members { .. } => {
            let m = conn.call(json!({"op": "members"})).await?;
            println!("{} (this node)", m["self"].as_str().unwrap_or(""));
            for h in m["hosts"].as_array().into_iter().flatten() {
                let link = if h["connected"] == json!(true) {
                    "connected"
                } else {
                    ""
                };
                println!("{} {link}", h["host"].as_str().unwrap_or(""));
            }
            Ok(())
        }
        ClientCommand::Stats { .. } => {
            let s = conn.call(json!({"op": "stats"})).await?;
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            Ok(())
        }
    };
    conn.close().await;
    result
}
