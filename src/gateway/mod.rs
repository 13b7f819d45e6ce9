//! The client gateway: applications in any language attach peers to a host
//! over WebSocket (docs/CLIENT-PROTOCOL.md), and the host proxies them: the
//! peers live on the host, are registered in the directory as its own, and
//! every other host reaches them like any peer.
//!
//! - `frames.rs`: the protocol's JSON frames.
//! - `session.rs`: one connection, and the sessions kept across reconnects.
//! - `tokens.rs`: bearer tokens and their limits.

mod frames;
mod replay;
mod session;
mod tls;
mod tokens;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::{ws::WebSocketUpgrade, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use tokio::{sync::oneshot, task::JoinHandle};

pub use frames::{decode as decode_request, Op, Refusal, Request, VERSION as PROTOCOL};
pub use tls::TlsIdentity;
pub use tokens::{TokenLimits, Tokens};

/// A message push as the gateway writes it (for the fuzz target).
#[cfg(any(feature = "fuzzing", test))]
pub(crate) fn fuzz_push(peer: &str, from: &str, payload: &crate::Payload) -> String {
    let m = crate::Message::new(
        from.into(),
        payload.clone(),
        crate::request::Corr::Request(1),
    );
    frames::message(peer, &m)
}

use crate::{
    error::{Error, Result},
    Host,
};

/// A file the gateway serves over plain HTTP beside its WebSocket (for a
/// browser page and the script it loads).
#[derive(Debug, Clone)]
pub struct Page {
    /// Its path, starting with `/`.
    pub path: String,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its content.
    pub body: bytes::Bytes,
}

/// How a gateway serves clients ([`Host::serve_clients`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Largest frame a client may send, in bytes. A larger one gets a
    /// `closing` event with code `too_large`, then the connection closes.
    /// Default: the host's `max_message_size` plus 64 KiB.
    pub max_frame: Option<usize>,
    /// Requests one connection may have in flight; beyond it, the gateway
    /// reads no more of its frames until an answer goes out. Default 1,024.
    pub max_in_flight: usize,
    /// How long a dropped connection's peers and subscriptions wait for it
    /// to come back with its session token. Default 30 s.
    pub grace: Duration,
    /// Sessions at once, live and waiting for a reconnect. Default 16,384.
    pub max_sessions: usize,
    /// Bearer tokens; `None` lets anyone in (refused on a non-loopback
    /// address unless `allow_anonymous` is set).
    pub tokens: Option<Tokens>,
    /// Serve anyone on a non-loopback address without tokens.
    pub allow_anonymous: bool,
    /// Browser origins allowed to connect (`Origin` header, e.g.
    /// `https://app.example.com`); `None` allows every origin. Clients that
    /// send no `Origin` (not browsers) are not affected.
    pub origins: Option<Vec<String>>,
    /// A write that cannot go out for this long ends the connection (its
    /// session is kept for `grace`). Default 10 s.
    pub write_timeout: Duration,
    /// Time a new connection has to send its hello. Default 10 s.
    pub hello_timeout: Duration,
    /// How often the gateway pings an idle client; three intervals without
    /// a frame end the connection. Default 15 s.
    pub ping_interval: Duration,
    /// Events a client that acknowledges (`"acks": true`) may have
    /// unacknowledged (and at most 8 MiB of them); while the window is
    /// full, its peers' messages wait in their inboxes. Default 1,024.
    pub ack_window: usize,
    /// Files served over HTTP on the same port (a demo page, a client
    /// bundle).
    pub pages: Vec<Page>,
    /// Serve `wss://` (and `https://` pages) with this certificate.
    pub tls: Option<TlsIdentity>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_frame: None,
            max_in_flight: 1024,
            grace: Duration::from_secs(30),
            max_sessions: 16_384,
            tokens: None,
            allow_anonymous: false,
            origins: None,
            write_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            ack_window: 1024,
            pages: Vec::new(),
            tls: None,
        }
    }
}

/// What the gateway's connections share.
pub(crate) struct Shared {
    host: Host,
    config: Settled,
    sessions: Arc<session::Sessions>,
    allowances: tokens::Allowances,
}

/// [`GatewayConfig`] with its defaults filled in.
struct Settled {
    max_frame: usize,
    max_in_flight: usize,
    grace: Duration,
    max_sessions: usize,
    tokens: Option<Tokens>,
    origins: Option<Vec<String>>,
    write_timeout: Duration,
    hello_timeout: Duration,
    ping_interval: Duration,
    ack_window: usize,
}

/// A running gateway. Dropping it (or [`Gateway::close`]) stops taking
/// connections and ends the open ones; their sessions' peers are removed
/// after the grace period.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Gateway {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients connect to (`ws://ip:port`, or `wss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops the gateway and waits until it has.
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Host {
    /// Serves the client protocol (docs/CLIENT-PROTOCOL.md) over WebSocket
    /// on `addr` (`ip:port`; port 0 picks one): programs in any language
    /// connect, create peers on this host, send, receive and subscribe.
    ///
    /// Refuses ([`Error::Config`]) a non-loopback address without tokens
    /// unless [`GatewayConfig::allow_anonymous`] is set, and fails with
    /// [`Error::Listen`] if the address cannot be bound.
    pub async fn serve_clients(&self, addr: &str, config: GatewayConfig) -> Result<Gateway> {
        self.start_gateway(addr, config).await
    }

    /// The body of [`Host::serve_clients`], boxed so that the server's
    /// state machines are compiled here, not in every crate that awaits
    /// it (see `Host::start`).
    fn start_gateway<'a>(
        &'a self,
        addr: &'a str,
        config: GatewayConfig,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Gateway>> + Send + 'a>> {
        Box::pin(async move {
            let sock: SocketAddr = addr.parse().map_err(|e| Error::InvalidAddress {
                addr: addr.to_string(),
                source: crate::Cause::msg(format!("{e} (expected ip:port)")),
            })?;
            if !sock.ip().is_loopback() && config.tokens.is_none() && !config.allow_anonymous {
                return Err(Error::Config(format!(
                    "the gateway on {sock} would let anyone who reaches it in: give it tokens, \
                     listen on a loopback address, or allow anonymous clients explicitly"
                )));
            }
            if config.max_in_flight == 0 || config.max_sessions == 0 {
                return Err(Error::Config(
                    "max_in_flight and max_sessions must be at least 1".into(),
                ));
            }
            let message = self.config().max_message_size;
            let max_frame = config.max_frame.unwrap_or(message + (64 << 10));
            let listener =
                tokio::net::TcpListener::bind(sock)
                    .await
                    .map_err(|e| Error::Listen {
                        addr: sock.to_string(),
                        source: crate::Cause::new(e),
                    })?;
            let bound = listener.local_addr().map_err(|e| Error::Listen {
                addr: sock.to_string(),
                source: crate::Cause::new(e),
            })?;
            let index = Arc::new(
                config
                    .pages_index()
                    .unwrap_or_else(|| bytes::Bytes::from_static(INDEX)),
            );
            let shared = Arc::new(Shared {
                host: self.clone(),
                config: Settled {
                    max_frame,
                    max_in_flight: config.max_in_flight,
                    grace: config.grace,
                    max_sessions: config.max_sessions,
                    tokens: config.tokens,
                    origins: config.origins,
                    write_timeout: config.write_timeout,
                    hello_timeout: config.hello_timeout,
                    ping_interval: config.ping_interval,
                    ack_window: config.ack_window.max(1),
                },
                sessions: Arc::default(),
                allowances: Default::default(),
            });
            let mut app = Router::new().route("/", get(upgrade));
            for page in config.pages {
                let Page {
                    path,
                    content_type,
                    body,
                } = page;
                if path == "/" {
                    continue;
                }
                app = app.route(
                    &path,
                    get(move || async move { ([(header::CONTENT_TYPE, content_type)], body) }),
                );
            }
            let app = app.with_state((shared, index));
            let (stop, stopped) = oneshot::channel::<()>();
            let host = self.clone();
            let until = async move {
                // Ends with the handle, or with the host.
                tokio::select! {
                    _ = stopped => {}
                    _ = host.inner.shared.until_closed() => {}
                }
            };
            let tls = config.tls.is_some();
            let task = match config.tls {
                Some(identity) => {
                    let listener = tls::TlsListener::new(listener, &identity, bound);
                    tokio::spawn(async move {
                        if let Err(e) = axum::serve(listener, app)
                            .with_graceful_shutdown(until)
                            .await
                        {
                            tracing::warn!(error = %e, "client gateway stopped");
                        }
                    })
                }
                None => {
                    use axum::serve::ListenerExt;
                    // Small frames one after another (a ping-pong) would
                    // otherwise wait on Nagle's algorithm and the client's
                    // delayed ACK: 44 ms round trips measured before this.
                    let listener = listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    tokio::spawn(async move {
                        if let Err(e) = axum::serve(listener, app)
                            .with_graceful_shutdown(until)
                            .await
                        {
                            tracing::warn!(error = %e, "client gateway stopped");
                        }
                    })
                }
            };
            tracing::info!(addr = %bound, "client gateway");
            Ok(Gateway {
                addr: bound,
                tls,
                stop: Some(stop),
                task,
            })
        })
    }
}

impl GatewayConfig {
    /// The page configured for `/`, if any.
    fn pages_index(&self) -> Option<bytes::Bytes> {
        self.pages
            .iter()
            .find(|p| p.path == "/")
            .map(|p| p.body.clone())
    }
}

/// What `/` shows a browser when no page is configured.
const INDEX: &[u8] = b"distribus client gateway: connect with a WebSocket client \
(docs/CLIENT-PROTOCOL.md)\n";

/// Initial read buffer of a client's socket.
const READ_BUFFER: usize = 4 << 10;
/// Bytes written to a client's socket buffer before it is flushed anyway.
const WRITE_BUFFER: usize = 16 << 10;

type AppState = (Arc<Shared>, Arc<bytes::Bytes>);

/// `/`: a WebSocket upgrade becomes a session; a plain GET gets the page.
async fn upgrade(
    State((shared, index)): State<AppState>,
    headers: HeaderMap,
    ws: std::result::Result<
        WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Response {
    let Ok(ws) = ws else {
        let kind = if index.starts_with(b"distribus client gateway") {
            "text/plain; charset=utf-8"
        } else {
            "text/html; charset=utf-8"
        };
        return ([(header::CONTENT_TYPE, kind)], index.as_ref().clone()).into_response();
    };
    if let (Some(allowed), Some(origin)) = (&shared.config.origins, headers.get(header::ORIGIN)) {
        let origin = origin.to_str().unwrap_or("");
        if !allowed.iter().any(|a| a == origin) {
            return (
                StatusCode::FORBIDDEN,
                format!("origin {origin:?} is not allowed\n"),
            )
                .into_response();
        }
    }
    if shared.sessions.len() >= shared.config.max_sessions {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway holds as many sessions as it serves\n",
        )
            .into_response();
    }
    // The socket's own limit is twice ours, so a frame between the two gets
    // a `closing` event that says why before the connection closes.
    let hard = shared.config.max_frame.saturating_mul(2);
    // Buffers sized for many small clients: tungstenite's defaults (128 KiB
    // to read, allocated up front) made 10,000 idle clients cost 137 kB
    // each; the buffers still grow for a large frame.
    ws.max_message_size(hard)
        .max_frame_size(hard)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| session::serve(socket, shared))
}
