//! One client connection: its hello, its requests, the pushes of its peers'
//! messages and its channels' publishes, and what survives a reconnect.
//!
//! Flow control is the connection's own: one task reads requests, runs at
//! most `max_in_flight` of them at once, and writes answers and pushes. A
//! client that stops reading stalls that task's writes, so its peers' bounded
//! inboxes fill (their senders get `InboxFull`) and its subscriptions count
//! what they miss; nothing grows. A write stalled for `write_timeout` ends
//! the connection.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures::{
    future::BoxFuture,
    stream::{BoxStream, FuturesUnordered, SelectAll, SplitSink, SplitStream},
    FutureExt, SinkExt, StreamExt,
};
use tokio::sync::oneshot;

use super::{
    frames::{self, Op, Refusal, VERSION},
    replay::Replay,
    tokens::{retry_after, Allowance, TokenLimits},
    Shared,
};
use crate::{ChannelMessage, Host, Message, Peer};

/// What a connection's peers and subscriptions yield.
enum Inbound {
    Message(Arc<str>, Message),
    PeerEnded(Arc<str>),
    /// A publish, and the subscription it came through.
    Publish(Arc<frames::SubKey>, ChannelMessage),
}

/// What survives a reconnect: the peers and subscriptions a connection
/// made. Dropping it removes the peers (withdrawing them) and ends the
/// subscriptions.
pub(crate) struct State {
    host: Host,
    peers: HashMap<Arc<str>, Peer>,
    inbound: SelectAll<BoxStream<'static, Inbound>>,
    /// Dropping a subscription's sender ends its stream.
    channels: HashMap<frames::SubKey, oneshot::Sender<()>>,
    allowance: Arc<Allowance>,
    /// Events not yet acknowledged, for a client that acknowledges.
    replay: Option<Replay>,
}

impl State {
    /// Whether an event may go now: a client that acknowledges has room
    /// in its window.
    fn may_push(&self, window: usize) -> bool {
        self.replay.as_ref().is_none_or(|r| !r.full(window))
    }
}

impl Drop for State {
    fn drop(&mut self) {
        for id in self.peers.keys() {
            let _ = self.host.remove(id.as_ref());
            self.allowance.give_peer();
        }
    }
}

/// A parked session's hand-over: the live connection that holds it gives
/// its state up when a reconnect names its token.
type Kick = oneshot::Sender<oneshot::Sender<State>>;

enum Slot {
    Live {
        kick: Kick,
        allowance: Arc<Allowance>,
    },
    Parked {
        state: State,
        generation: u64,
    },
}

impl Slot {
    fn allowance(&self) -> &Arc<Allowance> {
        match self {
            Slot::Live { allowance, .. } => allowance,
            Slot::Parked { state, .. } => &state.allowance,
        }
    }
}

/// Why a session was not handed over.
pub(crate) enum NotTaken {
    /// No such session (never was, or its grace period passed).
    Unknown,
    /// It belongs to a client of another token; it stays where it is.
    OtherToken,
}

/// Sessions by resume token: live ones (to take over) and parked ones
/// (kept for the grace period after their connection dropped).
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Slot>>,
    generation: AtomicUsize,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Takes a session back: at once if parked; from its live connection
    /// (which then ends) if it has one. `same_client` is asked first, and a
    /// session it refuses is left as it is.
    async fn take(
        &self,
        token: &str,
        same_client: impl Fn(&Arc<Allowance>) -> bool,
    ) -> Result<State, NotTaken> {
        let slot = {
            let mut map = self.lock();
            match map.get(token) {
                None => return Err(NotTaken::Unknown),
                Some(slot) if !same_client(slot.allowance()) => return Err(NotTaken::OtherToken),
                Some(_) => map.remove(token).ok_or(NotTaken::Unknown)?,
            }
        };
        match slot {
            Slot::Parked { state, .. } => Ok(state),
            Slot::Live { kick, .. } => {
                let (tx, rx) = oneshot::channel();
                kick.send(tx).map_err(|_| NotTaken::Unknown)?;
                match tokio::time::timeout(std::time::Duration::from_secs(5), rx).await {
                    Ok(Ok(state)) => Ok(state),
                    _ => Err(NotTaken::Unknown),
                }
            }
        }
    }

    fn live(&self, token: &str, kick: Kick, allowance: Arc<Allowance>) {
        self.lock()
            .insert(token.to_string(), Slot::Live { kick, allowance });
    }

    fn forget(&self, token: &str) {
        self.lock().remove(token);
    }

    /// Parks a session for `grace`; after it, unless taken back, its
    /// peers are removed.
    fn park(self: &Arc<Self>, token: String, state: State, grace: std::time::Duration) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) as u64;
        self.lock()
            .insert(token.clone(), Slot::Parked { state, generation });
        let sessions = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let mut map = sessions.lock();
            if matches!(map.get(&token), Some(Slot::Parked { generation: g, .. }) if *g == generation)
            {
                let expired = map.remove(&token);
                drop(map);
                drop(expired);
            }
        });
    }
}

fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a connection ended, which decides its session's fate.
enum End {
    /// The client closed with code 1000: it is done; remove its peers.
    Done,
    /// The connection dropped: keep the session for the grace period.
    Dropped,
    /// A reconnect took the session over (already handed on).
    TakenOver,
}

struct Conn {
    shared: Arc<Shared>,
    sink: SplitSink<WebSocket, WsMessage>,
    stream: SplitStream<WebSocket>,
    in_flight: FuturesUnordered<BoxFuture<'static, String>>,
    /// Whether frames were fed since the last flush.
    unflushed: bool,
    /// The client takes batches: answers and events wait in `out` and go
    /// as one array frame at the flush.
    batch: bool,
    out: Vec<String>,
    out_bytes: usize,
}

/// A batch is written out once it holds this many bytes.
const BATCH_BYTES: usize = 64 << 10;

/// Why a write could not be made: the connection is over.
struct Gone;

impl Conn {
    /// Queues one frame; the socket's own buffer batches frames until
    /// [`Conn::flush`].
    async fn feed(&mut self, text: String) -> Result<(), Gone> {
        if self.batch {
            self.out_bytes += text.len() + 1;
            self.out.push(text);
            if self.out_bytes >= BATCH_BYTES {
                self.write_batch().await?;
            }
            return Ok(());
        }
        self.write(text).await
    }

    /// Writes the waiting batch as one frame (a lone item as itself).
    async fn write_batch(&mut self) -> Result<(), Gone> {
        let text = match self.out.len() {
            0 => return Ok(()),
            1 => self.out.pop().unwrap_or_default(),
            _ => {
                let mut t = String::with_capacity(self.out_bytes + 2);
                t.push('[');
                for (i, item) in self.out.drain(..).enumerate() {
                    if i > 0 {
                        t.push(',');
                    }
                    t.push_str(&item);
                }
                t.push(']');
                t
            }
        };
        self.out_bytes = 0;
        self.write(text).await
    }

    async fn write(&mut self, text: String) -> Result<(), Gone> {
        let wait = self.shared.config.write_timeout;
        match tokio::time::timeout(wait, self.sink.feed(WsMessage::Text(text.into()))).await {
            Ok(Ok(())) => {
                self.unflushed = true;
                Ok(())
            }
            _ => Err(Gone),
        }
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        self.write_batch().await?;
        if !self.unflushed {
            return Ok(());
        }
        let wait = self.shared.config.write_timeout;
        match tokio::time::timeout(wait, self.sink.flush()).await {
            Ok(Ok(())) => {
                self.unflushed = false;
                Ok(())
            }
            _ => Err(Gone),
        }
    }

    /// Tells the client why, then closes.
    async fn refuse_and_close(&mut self, refusal: &Refusal, code: u16) {
        let _ = self.feed(frames::closing(refusal)).await;
        let _ = self.write_batch().await;
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(refusal.code),
        };
        let wait = self.shared.config.write_timeout;
        let _ = tokio::time::timeout(wait, self.sink.send(WsMessage::Close(Some(frame)))).await;
    }
}

/// A frame from the client, as the session sees it.
enum Frame {
    Text(Utf8Bytes),
    /// Protocol version 1 has no binary frames.
    Binary,
    /// A ping or pong: the client is there.
    Alive,
    /// The connection ended: with the client's close code, if it sent one.
    End(Option<u16>),
}

/// The next frame (pings and pongs are the socket's business).
async fn next_frame(stream: &mut SplitStream<WebSocket>) -> Frame {
    match stream.next().await {
        Some(Ok(WsMessage::Text(t))) => Frame::Text(t),
        Some(Ok(WsMessage::Binary(_))) => Frame::Binary,
        Some(Ok(WsMessage::Close(frame))) => Frame::End(Some(frame.map_or(1005, |f| f.code))),
        Some(Ok(_)) => Frame::Alive,
        Some(Err(_)) | None => Frame::End(None),
    }
}

/// Serves one upgraded connection to its end.
pub(crate) async fn serve(socket: WebSocket, shared: Arc<Shared>) {
    let (sink, stream) = socket.split();
    let mut conn = Conn {
        shared: shared.clone(),
        sink,
        stream,
        in_flight: FuturesUnordered::new(),
        unflushed: false,
        batch: false,
        out: Vec::new(),
        out_bytes: 0,
    };
    let Some((token, state)) = hello(&mut conn).await else {
        return;
    };
    let (kick_tx, kick_rx) = oneshot::channel();
    shared
        .sessions
        .live(&token, kick_tx, state.allowance.clone());
    let mut state = Some(state);
    let end = run(&mut conn, &mut state, kick_rx).await;
    let _ = conn.flush().await;
    match (end, state) {
        (End::Dropped, Some(state)) => {
            shared.sessions.park(token, state, shared.config.grace);
        }
        (End::Done, state) => {
            shared.sessions.forget(&token);
            drop(state);
        }
        _ => {}
    }
}

/// Reads the hello: checks the version and token, takes back a session it
/// names, and answers with the session's token.
async fn hello(conn: &mut Conn) -> Option<(String, State)> {
    let shared = conn.shared.clone();
    let first =
        tokio::time::timeout(shared.config.hello_timeout, next_frame(&mut conn.stream)).await;
    let Ok(Frame::Text(text)) = first else {
        let r = Refusal::new("bad_request", "no hello in time");
        conn.refuse_and_close(&r, 1008).await;
        return None;
    };
    let (id, version, token, resume, batch, acks, seen) = match frames::decode(&text) {
        Ok(frames::Request {
            id,
            op:
                Op::Hello {
                    version,
                    token,
                    resume,
                    batch,
                    acks,
                    seq,
                },
        }) => (id, version, token, resume, batch, acks, seq),
        Ok(r) => {
            let refusal = Refusal::new("bad_request", "the first request must be a hello");
            let _ = conn.feed(frames::error(r.id, &refusal)).await;
            conn.refuse_and_close(&refusal, 1008).await;
            return None;
        }
        Err((id, refusal)) => {
            let _ = conn.feed(frames::error(id, &refusal)).await;
            conn.refuse_and_close(&refusal, 1008).await;
            return None;
        }
    };
    let refuse = |code, message: String| Refusal::new(code, message);
    if version != VERSION {
        let r = refuse(
            "unsupported_version",
            format!("this gateway speaks version {VERSION}, not {version}"),
        );
        let _ = conn.feed(frames::error(id, &r)).await;
        conn.refuse_and_close(&r, 1008).await;
        return None;
    }
    let limits = match (&shared.config.tokens, token.as_deref()) {
        (None, _) => TokenLimits::default(),
        (Some(tokens), Some(t)) if tokens.get(t).is_some() => tokens.get(t).unwrap_or_default(),
        (Some(_), _) => {
            let r = refuse("unauthorized", "a valid token is needed".into());
            let _ = conn.feed(frames::error(id, &r)).await;
            conn.refuse_and_close(&r, 1008).await;
            return None;
        }
    };
    let allowance = match token.as_deref() {
        Some(t) if shared.config.tokens.is_some() => {
            shared.allowances.for_token(t, limits, Instant::now())
        }
        _ => Allowance::new(limits, Instant::now()),
    };
    // A session is resumed only by a client of the token that made it
    // (with tokens, each token's connections share one allowance).
    let anonymous = shared.config.tokens.is_none();
    let taken = match &resume {
        Some(t) => {
            let same = |a: &Arc<Allowance>| anonymous || Arc::ptr_eq(a, &allowance);
            Some(shared.sessions.take(t, same).await)
        }
        None => None,
    };
    let (session, mut state, resumed) = match (resume, taken) {
        (Some(t), Some(Ok(state))) => (t, state, true),
        (Some(_), Some(Err(NotTaken::OtherToken))) => {
            let r = refuse(
                "unauthorized",
                "this session was made with another token".into(),
            );
            let _ = conn.feed(frames::error(id, &r)).await;
            conn.refuse_and_close(&r, 1008).await;
            return None;
        }
        _ => {
            let state = State {
                host: shared.host.clone(),
                peers: HashMap::new(),
                inbound: SelectAll::new(),
                channels: HashMap::new(),
                allowance,
                replay: None,
            };
            (new_token(), state, false)
        }
    };
    // What the client already has is not sent again; the rest is, first.
    let mut again = Vec::new();
    if let Some(r) = state.replay.as_mut() {
        if let Some(seen) = seen {
            r.ack(seen);
        }
        again.extend(r.pending().map(str::to_string));
    }
    match (acks, &state.replay) {
        (true, None) => state.replay = Some(Replay::new()),
        (false, Some(_)) => state.replay = None,
        _ => {}
    }
    let mut peers: Vec<&str> = state.peers.keys().map(|k| k.as_ref()).collect();
    peers.sort_unstable();
    let mut channels: Vec<&str> = state
        .channels
        .keys()
        .filter(|(_, q)| q.is_none())
        .map(|(c, _)| c.as_str())
        .collect();
    channels.sort_unstable();
    let mut queues: Vec<[&str; 2]> = state
        .channels
        .keys()
        .filter_map(|(c, q)| Some([c.as_str(), q.as_deref()?]))
        .collect();
    queues.sort_unstable();
    let answer = serde_json::json!({
        "version": VERSION,
        "session": session,
        "resumed": resumed,
        "host": shared.host.id().to_string(),
        "peers": peers,
        "channels": channels,
        "queues": queues,
        "limits": {
            "max_frame": shared.config.max_frame,
            "max_message": shared.host.config().max_message_size,
            "max_in_flight": shared.config.max_in_flight,
            "max_peers": state.allowance.limits.max_peers,
            "max_rate": state.allowance.limits.max_rate,
            "grace_ms": shared.config.grace.as_millis() as u64,
            "ack_window": shared.config.ack_window,
        },
        "acks": acks,
    });
    let mut sent = conn.feed(frames::ok(id, &answer)).await;
    for event in again {
        if sent.is_ok() {
            sent = conn.feed(event).await;
        }
    }
    if sent.is_err() || conn.flush().await.is_err() {
        shared.sessions.park(session, state, shared.config.grace);
        return None;
    }
    conn.batch = batch;
    Some((session, state))
}

/// What woke the connection.
enum Event {
    Frame(Frame),
    Answer(String),
    Inbound(Option<Inbound>),
    Kicked(oneshot::Sender<State>),
    Ping,
}

/// Most events handled between two flushes.
const BATCH: usize = 256;

async fn run(
    conn: &mut Conn,
    state: &mut Option<State>,
    mut kick: oneshot::Receiver<oneshot::Sender<State>>,
) -> End {
    let mut ping = tokio::time::interval(conn.shared.config.ping_interval);
    ping.reset();
    let mut last_heard = Instant::now();
    loop {
        let mut handled = 0;
        let mut wait = true;
        while handled < BATCH {
            let Some(st) = state.as_mut() else {
                return End::TakenOver;
            };
            let reading = conn.in_flight.len() < conn.shared.config.max_in_flight;
            let pushing = !st.inbound.is_empty() && st.may_push(conn.shared.config.ack_window);
            let event = tokio::select! {
                biased;
                k = &mut kick => match k {
                    Ok(reply) => Event::Kicked(reply),
                    Err(_) => return End::Dropped,
                },
                Some(a) = conn.in_flight.next() => Event::Answer(a),
                i = st.inbound.next(), if pushing => Event::Inbound(i),
                f = next_frame(&mut conn.stream), if reading => Event::Frame(f),
                _ = ping.tick(), if wait => Event::Ping,
                _ = std::future::ready(()), if !wait => break,
            };
            wait = false;
            handled += 1;
            let step = match event {
                Event::Kicked(reply) => {
                    if let Some(s) = state.take() {
                        let _ = reply.send(s);
                    }
                    let r = Refusal::new("taken_over", "another connection resumed this session");
                    conn.refuse_and_close(&r, 1000).await;
                    return End::TakenOver;
                }
                Event::Frame(Frame::Text(text)) => {
                    last_heard = Instant::now();
                    frame(conn, st, &text).await
                }
                Event::Frame(Frame::Binary) => {
                    last_heard = Instant::now();
                    let r = Refusal::new("bad_request", "protocol version 1 has no binary frames");
                    conn.feed(frames::error(0, &r)).await.map(|()| None)
                }
                Event::Frame(Frame::Alive) => {
                    last_heard = Instant::now();
                    Ok(None)
                }
                Event::Frame(Frame::End(Some(1000))) => return End::Done,
                Event::Frame(Frame::End(_)) => return End::Dropped,
                Event::Answer(a) => conn.feed(a).await.map(|()| None),
                Event::Inbound(Some(i)) => inbound(conn, st, i).await.map(|()| None),
                Event::Inbound(None) => Ok(None),
                Event::Ping => {
                    if last_heard.elapsed() > conn.shared.config.ping_interval * 3 {
                        return End::Dropped;
                    }
                    let wait = conn.shared.config.write_timeout;
                    let ping = conn.sink.feed(WsMessage::Ping(bytes::Bytes::new()));
                    match tokio::time::timeout(wait, ping).await {
                        Ok(Ok(())) => {
                            conn.unflushed = true;
                            Ok(None)
                        }
                        _ => Err(Gone),
                    }
                }
            };
            match step {
                Ok(None) => {}
                Ok(Some(end)) => return end,
                Err(Gone) => return End::Dropped,
            }
        }
        if conn.flush().await.is_err() {
            return End::Dropped;
        }
    }
}

/// Pushes one peer message or publish to the client (numbered and kept
/// until acknowledged, for a client that acknowledges).
async fn inbound(conn: &mut Conn, st: &mut State, i: Inbound) -> Result<(), Gone> {
    let event = match i {
        Inbound::Message(peer, m) => frames::message(&peer, &m),
        Inbound::Publish(pattern, m) => frames::publish(&m.channel, &pattern, &m.payload),
        Inbound::PeerEnded(peer) => {
            if st.peers.remove(&peer).is_none() {
                return Ok(());
            }
            st.allowance.give_peer();
            let why = "the node removed it (another host holds its id, or the node is closing)";
            frames::removed(&peer, why)
        }
    };
    match st.replay.as_mut() {
        Some(r) => conn.feed(r.stamp(&event)).await,
        None => conn.feed(event).await,
    }
}

/// Handles one frame: a request or a batch of them.
async fn frame(conn: &mut Conn, st: &mut State, text: &str) -> Result<Option<End>, Gone> {
    let max = conn.shared.config.max_frame;
    if text.len() > max {
        let r = Refusal::new(
            "too_large",
            format!(
                "a frame of {} bytes is over this gateway's limit of {max}",
                text.len()
            ),
        );
        conn.refuse_and_close(&r, 1009).await;
        return Ok(Some(End::Dropped));
    }
    let items = match frames::split_batch(text) {
        Ok(items) => items,
        Err(refusal) => return conn.feed(frames::error(0, &refusal)).await.map(|()| None),
    };
    for item in items {
        if let Some(end) = request(conn, st, item).await? {
            return Ok(Some(end));
        }
    }
    Ok(None)
}

/// Handles one request: answers what is answered at once and puts the
/// rest in flight.
async fn request(conn: &mut Conn, st: &mut State, text: &str) -> Result<Option<End>, Gone> {
    let shared = conn.shared.clone();
    let req = match frames::decode(text) {
        Ok(r) => r,
        Err((id, refusal)) => return conn.feed(frames::error(id, &refusal)).await.map(|()| None),
    };
    let id = req.id;
    let host = &shared.host;
    let answer = move |r: crate::Result<(), crate::Error>| match r {
        Ok(()) => frames::done(id),
        Err(e) => frames::error(id, &Refusal::from(&e)),
    };
    let now = match req.op {
        Op::Hello { .. } => {
            frames::error(id, &Refusal::new("bad_request", "hello was already said"))
        }
        Op::Ack { seq } => {
            if let Some(r) = st.replay.as_mut() {
                r.ack(seq);
            }
            return Ok(None);
        }
        Op::Ping => frames::done(id),
        Op::Create { peer } => match create(st, host, &peer) {
            Ok(p) => {
                let wait = async move {
                    match p.registered().await {
                        Ok(()) => frames::ok(id, &serde_json::json!({ "registered": true })),
                        Err(crate::CreateError::Timeout) => {
                            frames::ok(id, &serde_json::json!({ "registered": false }))
                        }
                        Err(e) => frames::error(id, &Refusal::from(&e)),
                    }
                };
                conn.in_flight.push(wait.boxed());
                return Ok(None);
            }
            Err(r) => frames::error(id, &r),
        },
        Op::Remove { peer } => match st.peers.remove(peer.as_str()) {
            Some(_) => {
                st.allowance.give_peer();
                answer(host.remove(&peer).map(|_| ()).map_err(Into::into))
            }
            None => frames::error(id, &not_ours(&peer)),
        },
        Op::Send { from, to, data } => match sender(st, &from) {
            Ok(p) => {
                conn.in_flight.push(
                    p.begin_send(&to, data)
                        .map(move |r| answer(r.map_err(Into::into)))
                        .boxed(),
                );
                return Ok(None);
            }
            Err(r) => frames::error(id, &r),
        },
        Op::Request {
            from,
            to,
            data,
            timeout,
        } => match sender(st, &from) {
            Ok(p) => {
                let asked = p.begin_request(&to, data, timeout).map(move |r| match r {
                    Ok(m) => frames::reply(id, &m),
                    Err(e) => frames::error(id, &Refusal::from(&e)),
                });
                conn.in_flight.push(asked.boxed());
                return Ok(None);
            }
            Err(r) => frames::error(id, &r),
        },
        Op::Reply {
            from,
            to,
            request,
            data,
        } => match sender(st, &from) {
            Ok(p) => {
                let sent = p.begin_reply(&to, request, data);
                conn.in_flight
                    .push(sent.map(move |r| answer(r.map_err(Into::into))).boxed());
                return Ok(None);
            }
            Err(r) => frames::error(id, &r),
        },
        Op::Publish { channel, data } => {
            if let Some(r) = over_rate(st) {
                frames::error(id, &r)
            } else {
                let host = host.clone();
                let published = async move { host.publish_payload(&channel, data).await };
                conn.in_flight.push(
                    published
                        .map(move |r| answer(r.map_err(Into::into)))
                        .boxed(),
                );
                return Ok(None);
            }
        }
        Op::Broadcast { from, to, data } => {
            let sent = match &from {
                Some(f) => sender(st, f).map(|p| p.begin_broadcast(to, data)),
                None => match over_rate(st) {
                    Some(r) => Err(r),
                    None => {
                        let host = host.clone();
                        Ok(async move {
                            match to {
                                Some(p) => host.send_group_payload(&p, data).await,
                                None => host.broadcast_payload(data).await,
                            }
                        }
                        .boxed())
                    }
                },
            };
            match sent {
                Ok(fut) => {
                    let done = fut.map(move |r| match r {
                        Ok(report) => match serde_json::to_value(&report) {
                            Ok(v) => frames::ok(id, &v),
                            Err(e) => frames::error(id, &Refusal::new("internal", e.to_string())),
                        },
                        Err(e) => frames::error(id, &Refusal::from(&e)),
                    });
                    conn.in_flight.push(done.boxed());
                    return Ok(None);
                }
                Err(r) => frames::error(id, &r),
            }
        }
        Op::Subscribe { channel, queue } => match st.channels.entry((channel, queue)) {
            std::collections::hash_map::Entry::Occupied(_) => frames::done(id),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let (channel, queue) = slot.key();
                let made = match queue {
                    Some(q) => host.subscribe_queue(channel, q).await,
                    None => host.subscribe(channel).await,
                };
                match made {
                    Ok(sub) => {
                        let (tx, rx) = oneshot::channel::<()>();
                        let pattern = Arc::new(slot.key().clone());
                        slot.insert(tx);
                        st.inbound.push(
                            sub.take_until(rx)
                                .map(move |m| Inbound::Publish(pattern.clone(), m))
                                .boxed(),
                        );
                        frames::done(id)
                    }
                    Err(e) => frames::error(id, &Refusal::from(&e)),
                }
            }
        },
        Op::Unsubscribe { channel, queue } => {
            st.channels.remove(&(channel, queue));
            frames::done(id)
        }
        Op::Find { peer } => {
            let host = host.clone();
            let found = async move {
                match host.find(&peer).await {
                    Ok(l) => frames::ok(id, &serde_json::json!(l)),
                    Err(e) => frames::error(id, &Refusal::from(&e)),
                }
            };
            conn.in_flight.push(found.boxed());
            return Ok(None);
        }
        Op::Members => {
            let host = host.clone();
            let listed = async move {
                match host.members().await {
                    Ok(hosts) => frames::ok(
                        id,
                        &serde_json::json!({ "self": host.id().to_string(), "hosts": hosts }),
                    ),
                    Err(e) => frames::error(id, &Refusal::from(&e)),
                }
            };
            conn.in_flight.push(listed.boxed());
            return Ok(None);
        }
        Op::Peers { limit } => frames::ok(
            id,
            &serde_json::json!({ "count": host.peer_count(), "peers": host.peer_ids(limit) }),
        ),
        Op::Stats => match serde_json::to_value(host.stats()) {
            Ok(v) => frames::ok(id, &v),
            Err(e) => frames::error(id, &Refusal::new("internal", e.to_string())),
        },
    };
    conn.feed(now).await.map(|()| None)
}

fn not_ours(peer: &str) -> Refusal {
    Refusal::new(
        "not_found",
        format!("peer {peer:?} is not one of this connection's peers"),
    )
}

/// The connection's peer `from`, when a message from it may go now: it is
/// this connection's, and the token's rate allows one more.
fn sender<'a>(st: &'a State, from: &str) -> Result<&'a Peer, Refusal> {
    let p = st.peers.get(from).ok_or_else(|| not_ours(from))?;
    match over_rate(st) {
        Some(r) => Err(r),
        None => Ok(p),
    }
}

fn over_rate(st: &State) -> Option<Refusal> {
    if st.allowance.take_message(Instant::now()) {
        return None;
    }
    let rate = st.allowance.limits.max_rate.unwrap_or(0);
    Some(Refusal::new(
        "rate_limited",
        format!(
            "over this token's {rate} messages per second; retry after {} ms",
            retry_after(rate).as_millis().max(1)
        ),
    ))
}

/// Creates a peer for this connection within its token's limit.
fn create(st: &mut State, host: &Host, id: &str) -> Result<Peer, Refusal> {
    if !st.allowance.take_peer() {
        let max = st.allowance.limits.max_peers.unwrap_or(0);
        return Err(Refusal::new(
            "limit",
            format!("this token may hold {max} peers at once"),
        ));
    }
    let peer = match host.create(id) {
        Ok(p) => p,
        Err(e) => {
            st.allowance.give_peer();
            return Err(Refusal::from(&e));
        }
    };
    let key: Arc<str> = Arc::from(id);
    let ended = futures::stream::once(std::future::ready(Inbound::PeerEnded(key.clone())));
    let messages = {
        let key = key.clone();
        peer.clone().map(move |m| Inbound::Message(key.clone(), m))
    };
    st.inbound.push(messages.chain(ended).boxed());
    st.peers.insert(key, peer.clone());
    Ok(peer)
}
