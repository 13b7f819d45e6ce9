//! Command line, environment and config file, merged into one [`Settings`].
//!
//! Every node setting has a flag (`--lease`), an environment variable
//! (`DISTRIBUS_LEASE`) and a config-file key (`lease`). Precedence: flag >
//! environment > file > default. clap resolves flag over environment; this
//! module then falls back to the file and to the defaults.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use distribus::HostConfig;
use serde::{Deserialize, Serialize};

/// Default TCP listen address (documented in the README).
pub(crate) const DEFAULT_TCP: &str = "/ip4/127.0.0.1/tcp/7400";
/// Default WebSocket listen address (documented in the README).
pub(crate) const DEFAULT_WS: &str = "/ip4/127.0.0.1/tcp/7401/ws";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "distribus-node",
    version,
    about = "Runs a distribus host: a node of a peer-to-peer message bus.",
    long_about = "Runs a distribus host: a node of a peer-to-peer message bus.\n\n\
        With no arguments it listens on TCP 127.0.0.1:7400 and WebSocket \
        127.0.0.1:7401 and prints the command another node runs to join it. \
        Try `distribus-node demo` for a three-node network in one process.\n\n\
        Every option can also be set with a DISTRIBUS_* environment variable \
        or a key in the --config TOML file. Precedence: flag > environment > \
        file > default. `distribus-node config` prints the merged settings \
        as a config file."
)]
pub(crate) struct Cli {
    /// What to run; without a subcommand the node runs until SIGINT/SIGTERM.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Node options.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start a three-node network in this process, send messages across it,
    /// publish on a channel, print what happens, and exit.
    Demo,
    /// Print the settings after merging flags, environment and config file,
    /// in config-file form, and exit.
    Config,
    /// Write a new network key to FILE (mode 0600; refuses to overwrite)
    /// for `--network-key`, and exit.
    Keygen {
        /// Where to write the key.
        file: PathBuf,
    },
    /// Client commands: through a node's client gateway.
    #[command(flatten)]
    Client(ClientCommand),
}

/// Where a client command connects.
#[derive(Debug, Args, Clone)]
pub(crate) struct ClientArgs {
    /// The node's client gateway.
    #[arg(
        long = "gateway",
        env = "DISTRIBUS_URL",
        value_name = "URL",
        default_value = "ws://127.0.0.1:7402"
    )]
    pub gateway: String,
    /// Bearer token, when the gateway asks for one.
    #[arg(long, env = "DISTRIBUS_TOKEN", value_name = "TOKEN")]
    pub token: Option<String>,
}

/// The client commands, like the `nats` CLI.
#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Send a message (JSON, or text) to a peer from a temporary peer on the
    /// node; without MESSAGE, send each line of stdin.
    Send {
        /// The recipient's id.
        to: String,
        /// The message.
        message: Option<String>,
        /// Id of the sending peer. Default: `cli-` and random characters.
        #[arg(long)]
        from: Option<String>,
        /// Where to connect.
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Send a request (JSON, or text) to a peer and print its reply; without
    /// MESSAGE, one request per line of stdin.
    Request {
        /// The peer asked.
        to: String,
        /// The request.
        message: Option<String>,
        /// Id of the asking peer. Default: `cli-` and random characters.
        #[arg(long)]
        from: Option<String>,
        /// How long to wait for each reply.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Where to connect.
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Create a peer that answers every request with ANSWER (or with the
    /// request itself, as an echo), printing each, until Ctrl-C.
    Reply {
        /// The answering peer's id.
        peer: String,
        /// The answer (JSON, or text). Default: the request, echoed.
        answer: Option<String>,
        /// Where to connect.
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Publish a message (JSON, or text) on a channel; without MESSAGE,
    /// publish each line of stdin.
    Pub {
        /// The channel.
        channel: String,
        /// The message.
        message: Option<String>,
        /// Where to connect.
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Deliver a message (JSON, or text) to every peer on every host and
    /// print what it reached as JSON; without MESSAGE, each line of stdin.
    Broadcast {
        /// The message.
        message: Option<String>,
        /// Send it from this peer (made on the node). Default: from the node.
        #[arg(long)]
        from: Option<String>,
        /// Where to connect.
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Deliver a message (JSON, or text) to every peer whose id matches
    /// PATTERN (`room.42.*`, `room.>`), on any host, and print what it
    /// reached as JSON; without MESSAGE, each line of stdin.
    SendGroup {
        /// The pattern of peer ids.
        pattern: String,
        /// The message.
        message: Option<String>,
        /// Send it from this peer (made on the node). Default: from the node.
        #[arg(long)]
        from: Option<String>,
        /// Where to connect.
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Print every message on a channel (and/or to a peer made with --peer),
    /// one line each, until Ctrl-C.
    Sub {
        /// The channel.
        channel: Option<String>,
        /// Also create this peer and print what it receives.
        #[arg(long)]
        peer: Option<String>,
        /// Join this queue group on the channel: each publish goes to one
        /// member of the group (see `distribus::Host::subscribe_queue`).
        #[arg(long, requires = "channel")]
        queue: Option<String>,
        /// Print each whole event as JSON.
        #[arg(long)]
        json: bool,
        /// Where to connect.
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Print the host that holds a peer, and its addresses.
    Find {
        /// The peer's id.
        id: String,
        /// Where to connect.
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Print the node's host id and every other live host.
    Members {
        /// Where to connect.
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Print the node's counters as JSON.
    Stats {
        /// Where to connect.
        #[command(flatten)]
        conn: ClientArgs,
    },
}

impl ClientCommand {
    /// Where it connects.
    pub(crate) fn conn(&self) -> &ClientArgs {
        match self {
            ClientCommand::Send { conn, .. }
            | ClientCommand::Request { conn, .. }
            | ClientCommand::Reply { conn, .. }
            | ClientCommand::Pub { conn, .. }
            | ClientCommand::Broadcast { conn, .. }
            | ClientCommand::SendGroup { conn, .. }
            | ClientCommand::Sub { conn, .. }
            | ClientCommand::Find { conn, .. }
            | ClientCommand::Members { conn }
            | ClientCommand::Stats { conn } => conn,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Node options (each with an environment variable and a file key).
#[derive(Debug, Args, Default)]
pub(crate) struct NodeArgs {
    /// TOML config file; its keys are the long option names with `_` for `-`.
    #[arg(long, global = true, env = "DISTRIBUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable, or comma-separated in the env var).
    /// Default: /ip4/127.0.0.1/tcp/7400 and /ip4/127.0.0.1/tcp/7401/ws.
    #[arg(
        long,
        env = "DISTRIBUS_LISTEN",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub listen: Vec<String>,
    /// Host to join at start: a multiaddr or a ws://host:port URL
    /// (repeatable). Unreachable hosts are retried in the background.
    #[arg(
        long,
        env = "DISTRIBUS_JOIN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub join: Vec<String>,
    /// Address other hosts should dial to reach this node, when it is not
    /// a listen address (a namespace or container behind a forwarded port,
    /// NAT, a listener on 0.0.0.0): the node's record carries these instead
    /// of its listen addresses (repeatable). Default: the listen addresses.
    #[arg(
        long,
        env = "DISTRIBUS_ADVERTISE",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub advertise: Vec<String>,
    /// Network id; hosts of different networks refuse each other.
    /// Default: distribus.
    #[arg(long, global = true, env = "DISTRIBUS_NETWORK_ID", value_name = "ID")]
    pub network_id: Option<String>,
    /// File holding this node's key, so the host id survives restarts.
    /// Created (mode 0600) when missing. Default: a new key every start.
    #[arg(long, global = true, env = "DISTRIBUS_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Swarm key file of a closed network (make one with `keygen`; mode
    /// 0600): only processes with the same key can connect. Default: an
    /// open network.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUS_NETWORK_KEY",
        value_name = "FILE"
    )]
    pub network_key: Option<PathBuf>,
    /// File listing the host ids admitted to the membership, one per line
    /// (`#` starts a comment); re-read on SIGHUP. Default: any host.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUS_ALLOW_HOSTS",
        value_name = "FILE"
    )]
    pub allow_hosts: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9400).
    #[arg(long, global = true, env = "DISTRIBUS_METRICS", value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Serve the client gateway (WebSocket, docs/CLIENT-PROTOCOL.md) on
    /// ADDR, e.g. 127.0.0.1:7402: programs in any language attach peers to
    /// this node. On a non-loopback address it needs --gateway-tokens or
    /// --gateway-anonymous. Default: off.
    #[arg(long, env = "DISTRIBUS_GATEWAY", value_name = "ADDR")]
    pub gateway: Option<SocketAddr>,
    /// File of the gateway's bearer tokens (mode 0600): one per line, with
    /// optional `peers=N rate=N` limits. Default: no tokens.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUS_GATEWAY_TOKENS",
        value_name = "FILE"
    )]
    pub gateway_tokens: Option<PathBuf>,
    /// Let clients in without a token on a non-loopback gateway address.
    #[arg(long, env = "DISTRIBUS_GATEWAY_ANONYMOUS")]
    pub gateway_anonymous: bool,
    /// Browser origin allowed to connect to the gateway, e.g.
    /// `https://app.example.com` (repeatable). Default: any origin.
    #[arg(
        long,
        env = "DISTRIBUS_GATEWAY_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub gateway_origin: Vec<String>,
    /// How long a dropped client's peers wait for it to reconnect.
    /// Default: 30s.
    #[arg(long, env = "DISTRIBUS_GATEWAY_GRACE", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub gateway_grace: Option<Duration>,
    /// Serve the gateway over TLS (wss://) with this PEM certificate chain
    /// (needs --gateway-tls-key).
    #[arg(
        long,
        env = "DISTRIBUS_GATEWAY_TLS_CERT",
        value_name = "FILE",
        requires = "gateway_tls_key"
    )]
    pub gateway_tls_cert: Option<PathBuf>,
    /// The PEM private key of --gateway-tls-cert.
    #[arg(
        long,
        env = "DISTRIBUS_GATEWAY_TLS_KEY",
        value_name = "FILE",
        requires = "gateway_tls_cert"
    )]
    pub gateway_tls_key: Option<PathBuf>,
    /// Serve the browser demo page and the JavaScript client at the
    /// gateway's address (http://ADDR/).
    #[arg(long, env = "DISTRIBUS_GATEWAY_UI")]
    pub gateway_ui: bool,
    /// Create a peer with this id that sends every message back to its
    /// sender: a health probe through directory, routing and delivery
    /// (repeatable).
    #[arg(
        long,
        env = "DISTRIBUS_ECHO_PEER",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub echo_peer: Vec<String>,
    /// Subscribe to this channel and print every message on it to stdout,
    /// one line each: `#channel payload` (repeatable).
    #[arg(
        long,
        env = "DISTRIBUS_SUBSCRIBE",
        value_name = "CHANNEL",
        value_delimiter = ','
    )]
    pub subscribe: Vec<String>,
    /// Log format. Default: text.
    #[arg(long, global = true, env = "DISTRIBUS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level: error, warn, info, debug or trace. RUST_LOG, when set,
    /// takes over unless this or -v/-q is given. Default: info.
    #[arg(long, global = true, env = "DISTRIBUS_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// More log output (repeatable).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less log output (repeatable).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub quiet: u8,
    /// How often the node raises its heartbeat counter and swaps membership digests. Default: 2s.
    #[arg(long, global = true, env = "DISTRIBUS_HEARTBEAT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub heartbeat: Option<Duration>,
    /// A host not heard of for this long is dropped with its peers.
    /// Default: 20s.
    #[arg(long, global = true, env = "DISTRIBUS_LEASE", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lease: Option<Duration>,
    /// Deadline of a direct send and of a lookup. Default: 10s.
    #[arg(long, global = true, env = "DISTRIBUS_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,
    /// Longest graceful shutdown before the node exits anyway. Default: 10s.
    #[arg(long, global = true, env = "DISTRIBUS_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Largest message or publish payload, in bytes. Default: 1048576.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUS_MAX_MESSAGE_SIZE",
        value_name = "BYTES"
    )]
    pub max_message_size: Option<usize>,
    /// Most established connections. Default: 1024.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUS_MAX_CONNECTIONS",
        value_name = "N"
    )]
    pub max_connections: Option<u32>,
    /// Most established connections to one host. Default: 4.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUS_MAX_CONNECTIONS_PER_HOST",
        value_name = "N"
    )]
    pub max_connections_per_host: Option<u32>,
    /// Most connections being set up at once, inbound and outbound each.
    /// Default: 128.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUS_MAX_PENDING_CONNECTIONS",
        value_name = "N"
    )]
    pub max_pending_connections: Option<u32>,
    /// Links to other hosts kept before idle ones are closed, least
    /// recently used first (links to joined hosts stay). Default: 256.
    #[arg(long, global = true, env = "DISTRIBUS_LINK_BUDGET", value_name = "N")]
    pub link_budget: Option<usize>,
    /// In a network of more hosts than this, keep links to about
    /// sqrt(2 x hosts) neighbours and reach the others through them.
    /// Default: 128.
    #[arg(long, global = true, env = "DISTRIBUS_RELAY_ABOVE", value_name = "N")]
    pub relay_above: Option<usize>,
    /// Refuse new connections while the process uses more than this fraction
    /// of physical memory. Default: 0.9.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUS_MAX_MEMORY_FRACTION",
        value_name = "FRACTION"
    )]
    pub max_memory_fraction: Option<f64>,
    /// First delay before redialling a dropped joined host. Default: 1s.
    #[arg(long, global = true, env = "DISTRIBUS_RECONNECT_DELAY", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub reconnect_delay: Option<Duration>,
    /// Factor by which the redial delay grows after each failure (at least
    /// 1). Default: 2.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUS_RECONNECT_DECAY",
        value_name = "FACTOR"
    )]
    pub reconnect_decay: Option<f64>,
    /// How long a dropped joined host is redialled; after it, cached
    /// locations on that host are forgotten. Default: 5m.
    #[arg(long, global = true, env = "DISTRIBUS_RECONNECT_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub reconnect_timeout: Option<Duration>,
    /// How many hosts hold each directory entry. Every node of a network
    /// must use the same value. Default: 3.
    #[arg(long, global = true, env = "DISTRIBUS_REPLICATION", value_name = "N")]
    pub replication: Option<usize>,
    /// Messages a peer's inbox holds before senders get InboxFull.
    /// Default: 1024.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUS_INBOX_CAPACITY",
        value_name = "N"
    )]
    pub inbox_capacity: Option<usize>,
}

/// The config file: the same settings, all optional.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    join: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_hosts: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_tokens: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_anonymous: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_origin: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_grace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_ui: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    echo_peer: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscribe: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_message_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections_per_host: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_pending_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    link_budget: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_above: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_memory_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect_delay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect_decay: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconnect_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replication: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inbox_capacity: Option<usize>,
}

impl FileConfig {
    fn read(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().replace('\n', " ");
            format!("config file {}: {msg}", path.display())
        })
    }
}

/// The merged settings a node runs with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Listen addresses.
    pub listen: Vec<String>,
    /// Hosts to join.
    pub join: Vec<String>,
    /// Identity key file.
    pub identity: Option<PathBuf>,
    /// Network key file.
    pub network_key: Option<PathBuf>,
    /// Allow-list file of host ids.
    pub allow_hosts: Option<PathBuf>,
    /// Metrics address.
    pub metrics: Option<SocketAddr>,
    /// The client gateway, if it is served.
    pub gateway: Option<GatewaySettings>,
    /// Echo peers to create.
    pub echo_peers: Vec<String>,
    /// Channels whose messages are printed.
    pub subscribe: Vec<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter directives.
    pub log_filter: String,
    /// Longest graceful shutdown.
    pub shutdown_timeout: Duration,
    /// Host configuration (without the key).
    pub host: HostConfig,
}

/// How the node serves clients.
#[derive(Debug, Clone)]
pub(crate) struct GatewaySettings {
    /// Its address.
    pub addr: SocketAddr,
    /// Token file.
    pub tokens: Option<PathBuf>,
    /// Anonymous clients allowed beyond loopback.
    pub anonymous: bool,
    /// Allowed browser origins (empty: any).
    pub origins: Vec<String>,
    /// Grace period of a dropped client's session.
    pub grace: Duration,
    /// Serve the demo page and the JavaScript client.
    pub ui: bool,
    /// TLS certificate chain and key files.
    pub tls: Option<(PathBuf, PathBuf)>,
}

fn duration(key: &str, v: Option<String>) -> Result<Option<Duration>, String> {
    v.map(|s| {
        humantime::parse_duration(&s)
            .map_err(|e| format!("config file key `{key}`: {e} (e.g. \"500ms\", \"20s\")"))
    })
    .transpose()
}

/// Turns the base level and -v/-q into filter directives. Other crates
/// (libp2p) log warnings and errors only; RUST_LOG gives full control.
fn log_filter(base: &str, verbose: u8, quiet: u8) -> Result<String, String> {
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let base = base.trim().to_ascii_lowercase();
    let i = LEVELS.iter().position(|l| *l == base).ok_or_else(|| {
        format!("unknown log level `{base}` (use error, warn, info, debug or trace)")
    })?;
    let i = (i + usize::from(verbose))
        .saturating_sub(usize::from(quiet))
        .min(LEVELS.len() - 1);
    let ours = LEVELS[i];
    let others = LEVELS[i.min(1)];
    // A lone node's Kademlia warns that it has nobody to bootstrap from.
    let kad = LEVELS[0];
    Ok(format!(
        "{others},libp2p_kad={kad},distribus={ours},distribus_node={ours}"
    ))
}

impl Settings {
    /// Merges flags and environment (already in `args`), the config file and
    /// the defaults.
    pub(crate) fn resolve(args: NodeArgs) -> Result<Settings, String> {
        let file = match &args.config {
            Some(p) => FileConfig::read(p)?,
            None => FileConfig::default(),
        };
        let list = |cli: Vec<String>, file: Option<Vec<String>>| {
            if cli.is_empty() {
                file.unwrap_or_default()
            } else {
                cli
            }
        };
        let mut listen = list(args.listen, file.listen);
        if listen.is_empty() {
            listen = vec![DEFAULT_TCP.to_string(), DEFAULT_WS.to_string()];
        }

        // RUST_LOG applies unless a level is given on the command line or
        // in the environment, file or -v/-q.
        let explicit = args.log_level.or(file.log_level);
        let log_filter = match (explicit, std::env::var("RUST_LOG").ok()) {
            (None, Some(rust_log)) if args.verbose == 0 && args.quiet == 0 => rust_log,
            (level, _) => log_filter(level.as_deref().unwrap_or("info"), args.verbose, args.quiet)?,
        };

        let mut host = HostConfig::default();
        host.max_memory_fraction = Some(0.9);
        for a in list(args.advertise, file.advertise) {
            let addr = a
                .parse()
                .map_err(|e| format!("advertise: `{a}` is not a multiaddr: {e}"))?;
            host.advertise.push(addr);
        }
        if let Some(v) = args.network_id.or(file.network_id) {
            host.network_id = v;
        }
        if let Some(v) = args.heartbeat.or(duration("heartbeat", file.heartbeat)?) {
            host.heartbeat_interval = v;
        }
        if let Some(v) = args.lease.or(duration("lease", file.lease)?) {
            host.lease = v;
        }
        if let Some(v) = args
            .request_timeout
            .or(duration("request_timeout", file.request_timeout)?)
        {
            host.request_timeout = v;
        }
        if let Some(v) = args.max_message_size.or(file.max_message_size) {
            host.max_message_size = v;
            host.max_frame_size = host.max_frame_size.max(v.saturating_add(64 * 1024));
        }
        if let Some(v) = args.max_connections.or(file.max_connections) {
            host.max_connections = Some(v);
        }
        if let Some(v) = args
            .max_connections_per_host
            .or(file.max_connections_per_host)
        {
            host.max_connections_per_host = Some(v);
        }
        if let Some(v) = args
            .max_pending_connections
            .or(file.max_pending_connections)
        {
            host.max_pending_connections = Some(v);
        }
        if let Some(v) = args.link_budget.or(file.link_budget) {
            host.link_budget = Some(v);
        }
        if let Some(v) = args.relay_above.or(file.relay_above) {
            host.relay_above = v;
        }
        if let Some(v) = args.max_memory_fraction.or(file.max_memory_fraction) {
            host.max_memory_fraction = Some(v);
        }
        if let Some(v) = args
            .reconnect_delay
            .or(duration("reconnect_delay", file.reconnect_delay)?)
        {
            host.reconnect_delay = v;
        }
        if let Some(v) = args.reconnect_decay.or(file.reconnect_decay) {
            host.reconnect_decay = v;
        }
        if let Some(v) = args
            .reconnect_timeout
            .or(duration("reconnect_timeout", file.reconnect_timeout)?)
        {
            host.reconnect_timeout = v;
        }
        if let Some(v) = args.replication.or(file.replication) {
            host.replication = v;
        }
        if let Some(v) = args.inbox_capacity.or(file.inbox_capacity) {
            host.inbox_capacity = v;
        }
        host.validate().map_err(|e| e.to_string())?;
        let gateway = match args.gateway.or(file.gateway) {
            Some(addr) => Some(GatewaySettings {
                addr,
                tokens: args.gateway_tokens.or(file.gateway_tokens),
                anonymous: args.gateway_anonymous || file.gateway_anonymous.unwrap_or(false),
                origins: list(args.gateway_origin, file.gateway_origin),
                grace: args
                    .gateway_grace
                    .or(duration("gateway_grace", file.gateway_grace)?)
                    .unwrap_or(Duration::from_secs(30)),
                ui: args.gateway_ui || file.gateway_ui.unwrap_or(false),
                tls: match (
                    args.gateway_tls_cert.or(file.gateway_tls_cert),
                    args.gateway_tls_key.or(file.gateway_tls_key),
                ) {
                    (Some(c), Some(k)) => Some((c, k)),
                    (None, None) => None,
                    _ => return Err("gateway TLS needs both a certificate and a key".into()),
                },
            }),
            None => None,
        };

        Ok(Settings {
            gateway,
            listen,
            join: list(args.join, file.join),
            identity: args.identity.or(file.identity),
            network_key: args.network_key.or(file.network_key),
            allow_hosts: args.allow_hosts.or(file.allow_hosts),
            metrics: args.metrics.or(file.metrics),
            echo_peers: list(args.echo_peer, file.echo_peer),
            subscribe: list(args.subscribe, file.subscribe),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            log_filter,
            shutdown_timeout: args
                .shutdown_timeout
                .or(duration("shutdown_timeout", file.shutdown_timeout)?)
                .unwrap_or(Duration::from_secs(10)),
            host,
        })
    }

    /// The settings in config-file form.
    pub(crate) fn to_toml(&self) -> Result<String, String> {
        let d = |d: Duration| Some(humantime::format_duration(d).to_string());
        let file = FileConfig {
            listen: Some(self.listen.clone()),
            join: Some(self.join.clone()),
            advertise: Some(self.host.advertise.iter().map(|a| a.to_string()).collect()),
            network_id: Some(self.host.network_id.clone()),
            identity: self.identity.clone(),
            network_key: self.network_key.clone(),
            allow_hosts: self.allow_hosts.clone(),
            metrics: self.metrics,
            gateway: self.gateway.as_ref().map(|g| g.addr),
            gateway_tokens: self.gateway.as_ref().and_then(|g| g.tokens.clone()),
            gateway_anonymous: self.gateway.as_ref().map(|g| g.anonymous),
            gateway_origin: self.gateway.as_ref().map(|g| g.origins.clone()),
            gateway_grace: self.gateway.as_ref().and_then(|g| d(g.grace)),
            gateway_ui: self.gateway.as_ref().map(|g| g.ui),
            gateway_tls_cert: self
                .gateway
                .as_ref()
                .and_then(|g| g.tls.clone().map(|t| t.0)),
            gateway_tls_key: self
                .gateway
                .as_ref()
                .and_then(|g| g.tls.clone().map(|t| t.1)),
            echo_peer: Some(self.echo_peers.clone()),
            subscribe: Some(self.subscribe.clone()),
            log_format: Some(self.log_format),
            log_level: None,
            heartbeat: d(self.host.heartbeat_interval),
            lease: d(self.host.lease),
            request_timeout: d(self.host.request_timeout),
            shutdown_timeout: d(self.shutdown_timeout),
            max_message_size: Some(self.host.max_message_size),
            max_connections: self.host.max_connections,
            max_connections_per_host: self.host.max_connections_per_host,
            max_pending_connections: self.host.max_pending_connections,
            link_budget: self.host.link_budget,
            relay_above: Some(self.host.relay_above),
            max_memory_fraction: self.host.max_memory_fraction,
            reconnect_delay: d(self.host.reconnect_delay),
            reconnect_decay: Some(self.host.reconnect_decay),
            reconnect_timeout: d(self.host.reconnect_timeout),
            replication: Some(self.host.replication),
            inbox_capacity: Some(self.host.inbox_capacity),
        };
        toml::to_string(&file).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_shift_with_verbosity() {
        assert_eq!(
            log_filter("info", 0, 0).as_deref(),
            Ok("warn,libp2p_kad=error,distribus=info,distribus_node=info")
        );
        assert_eq!(
            log_filter("info", 1, 0).as_deref(),
            Ok("warn,libp2p_kad=error,distribus=debug,distribus_node=debug")
        );
        assert_eq!(
            log_filter("info", 0, 2).as_deref(),
            Ok("error,libp2p_kad=error,distribus=error,distribus_node=error")
        );
        assert!(log_filter("loud", 0, 0).is_err());
    }

    #[test]
    fn file_keys_are_checked() {
        assert!(toml::from_str::<FileConfig>("lisen = []").is_err());
        let f: FileConfig = toml::from_str("lease = \"3s\"\nmax_connections = 7").unwrap();
        assert_eq!(duration("lease", f.lease), Ok(Some(Duration::from_secs(3))));
        assert_eq!(f.max_connections, Some(7));
    }
}
