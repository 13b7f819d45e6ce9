//! Command line, environment and config file, merged into one [`Settings`].
//!
//! Every node setting has a flag (`--lease`), an environment variable
//! (`DISTRIBUS_LEASE`) and a config-file key (`lease`), all from one field
//! of [`NodeArgs`]. figment layers them: flag > environment > file >
//! default.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum};
use distribus::HostConfig;
use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

/// Default TCP listen address (documented in the README).
pub(crate) const DEFAULT_TCP: &str = "/ip4/127.0.0.1/tcp/7400";
/// Default WebSocket listen address (documented in the README).
pub(crate) const DEFAULT_WS: &str = "/ip4/127.0.0.1/tcp/7401/ws";
/// How long a dropped client's peers wait for it, unless set.
const GATEWAY_GRACE: Duration = Duration::from_secs(30);
/// Longest graceful shutdown, unless set.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

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
        Every option can also be set with an environment variable \
        (DISTRIBUS_ and its name in capitals with _ for -: DISTRIBUS_LEASE=5s; \
        lists comma-separated) or a key in the --config TOML file (its name \
        with _ for -). Precedence: flag > environment > \
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

/// Node options. Each is written once, here: clap makes it a flag
/// (`--lease`), serde a config-file key (`lease`) and an environment
/// variable (`DISTRIBUS_LEASE`), and [`Settings::resolve`] layers them.
/// A field that is `None` (or empty, or `false`) was not given.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct NodeArgs {
    /// TOML config file; its keys are the long option names with `_` for `-`.
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable, or comma-separated in the env var).
    /// Default: /ip4/127.0.0.1/tcp/7400 and /ip4/127.0.0.1/tcp/7401/ws.
    #[arg(long, value_name = "MULTIADDR", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "list")]
    pub listen: Vec<String>,
    /// Host to join at start: a multiaddr or a ws://host:port URL
    /// (repeatable). Unreachable hosts are retried in the background.
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "list")]
    pub join: Vec<String>,
    /// Address other hosts should dial to reach this node, when it is not
    /// a listen address (a namespace or container behind a forwarded port,
    /// NAT, a listener on 0.0.0.0): the node's record carries these instead
    /// of its listen addresses (repeatable). Default: the listen addresses.
    #[arg(long, value_name = "MULTIADDR", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "list")]
    pub advertise: Vec<String>,
    /// Network id; hosts of different networks refuse each other.
    /// Default: distribus.
    #[arg(long, global = true, value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_id: Option<String>,
    /// File holding this node's key, so the host id survives restarts.
    /// Created (mode 0600) when missing. Default: a new key every start.
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    /// Swarm key file of a closed network (make one with `keygen`; mode
    /// 0600): only processes with the same key can connect. Default: an
    /// open network.
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_key: Option<PathBuf>,
    /// File listing the host ids admitted to the membership, one per line
    /// (`#` starts a comment); re-read on SIGHUP. Default: any host.
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_hosts: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9400).
    #[arg(long, global = true, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// Serve the client gateway (WebSocket, docs/CLIENT-PROTOCOL.md) on
    /// ADDR, e.g. 127.0.0.1:7402: programs in any language attach peers to
    /// this node. On a non-loopback address it needs --gateway-tokens or
    /// --gateway-anonymous. Default: off.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<SocketAddr>,
    /// File of the gateway's bearer tokens (mode 0600): one per line, with
    /// optional `peers=N rate=N` limits. Default: no tokens.
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_tokens: Option<PathBuf>,
    /// Let clients in without a token on a non-loopback gateway address.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub gateway_anonymous: bool,
    /// Browser origin allowed to connect to the gateway, e.g.
    /// `https://app.example.com` (repeatable). Default: any origin.
    #[arg(long, value_name = "ORIGIN", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "list")]
    pub gateway_origin: Vec<String>,
    /// How long a dropped client's peers wait for it to reconnect.
    /// Default: 30s.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub gateway_grace: Option<Duration>,
    /// Serve the gateway over TLS (wss://) with this PEM certificate chain
    /// (needs --gateway-tls-key).
    #[arg(long, value_name = "FILE", requires = "gateway_tls_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_tls_cert: Option<PathBuf>,
    /// The PEM private key of --gateway-tls-cert.
    #[arg(long, value_name = "FILE", requires = "gateway_tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_tls_key: Option<PathBuf>,
    /// Serve the browser demo page and the JavaScript client at the
    /// gateway's address (http://ADDR/).
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub gateway_ui: bool,
    /// Create a peer with this id that sends every message back to its
    /// sender: a health probe through directory, routing and delivery
    /// (repeatable).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "list")]
    pub echo_peer: Vec<String>,
    /// Subscribe to this channel and print every message on it to stdout,
    /// one line each: `#channel payload` (repeatable).
    #[arg(long, value_name = "CHANNEL", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "list")]
    pub subscribe: Vec<String>,
    /// Log format. Default: text.
    #[arg(long, global = true, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Log level: error, warn, info, debug or trace. RUST_LOG, when set,
    /// takes over unless this or -v/-q is given. Default: info.
    #[arg(long, global = true, value_name = "LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// More log output (repeatable).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    #[serde(skip)]
    pub verbose: u8,
    /// Less log output (repeatable).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    #[serde(skip)]
    pub quiet: u8,
    /// How often the node raises its heartbeat counter and swaps membership digests. Default: 2s.
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub heartbeat: Option<Duration>,
    /// A host not heard of for this long is dropped with its peers.
    /// Default: 20s.
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// Deadline of a direct send and of a lookup. Default: 10s.
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// How long `find` answers from its last answer for the same peer
    /// without asking the directory; 0s: every find asks. Default: 1s.
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub find_cache_ttl: Option<Duration>,
    /// Longest graceful shutdown before the node exits anyway. Default: 10s.
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub shutdown_timeout: Option<Duration>,
    /// Largest message or publish payload, in bytes. Default: 1048576.
    #[arg(long, global = true, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<usize>,
    /// Most established connections. Default: 1024.
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Most established connections to one host. Default: 4.
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_host: Option<u32>,
    /// Most connections being set up at once, inbound and outbound each.
    /// Default: 128.
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_connections: Option<u32>,
    /// Links to other hosts kept before idle ones are closed, least
    /// recently used first (links to joined hosts stay). Default: 256.
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_budget: Option<usize>,
    /// In a network of more hosts than this, keep links to about
    /// sqrt(2 x hosts) neighbours and reach the others through them.
    /// Default: 128.
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_above: Option<usize>,
    /// Refuse new connections while the process uses more than this fraction
    /// of physical memory. Default: 0.9.
    #[arg(long, global = true, value_name = "FRACTION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_fraction: Option<f64>,
    /// First delay before redialling a dropped joined host. Default: 1s.
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub reconnect_delay: Option<Duration>,
    /// Factor by which the redial delay grows after each failure (at least
    /// 1). Default: 2.
    #[arg(long, global = true, value_name = "FACTOR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_decay: Option<f64>,
    /// How long a dropped joined host is redialled; after it, cached
    /// locations on that host are forgotten. Default: 5m.
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub reconnect_timeout: Option<Duration>,
    /// How many hosts hold each directory entry. Every node of a network
    /// must use the same value. Default: 3.
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<usize>,
    /// Messages a peer's inbox holds before senders get InboxFull.
    /// Default: 1024.
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbox_capacity: Option<usize>,
    /// Worker threads of the node's runtime. On a machine the node shares
    /// with its clients or other nodes, fewer threads mean fewer hand-offs
    /// between CPUs (lower latency). Default: one per core.
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

/// Most worker threads a node starts (a typo should not start a million).
const MAX_THREADS: usize = 1024;

fn is_false(b: &bool) -> bool {
    !*b
}

/// A list from a config file (an array) or the environment (one string,
/// comma-separated).
fn list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    Ok(match List::deserialize(d)? {
        List::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        List::Many(v) => v,
    })
}

impl NodeArgs {
    /// The defaults: the library's, except where a node differs (listen
    /// addresses, a memory ceiling), and the node's own.
    fn defaults() -> NodeArgs {
        let host = HostConfig::default();
        NodeArgs {
            listen: vec![DEFAULT_TCP.to_string(), DEFAULT_WS.to_string()],
            network_id: Some(host.network_id),
            gateway_grace: Some(GATEWAY_GRACE),
            log_format: Some(LogFormat::Text),
            heartbeat: Some(host.heartbeat_interval),
            lease: Some(host.lease),
            request_timeout: Some(host.request_timeout),
            find_cache_ttl: Some(host.find_cache_ttl),
            shutdown_timeout: Some(SHUTDOWN_TIMEOUT),
            max_message_size: Some(host.max_message_size),
            max_connections: host.max_connections,
            max_connections_per_host: host.max_connections_per_host,
            max_pending_connections: host.max_pending_connections,
            link_budget: host.link_budget,
            relay_above: Some(host.relay_above),
            max_memory_fraction: Some(0.9),
            reconnect_delay: Some(host.reconnect_delay),
            reconnect_decay: Some(host.reconnect_decay),
            reconnect_timeout: Some(host.reconnect_timeout),
            replication: Some(host.replication),
            inbox_capacity: Some(host.inbox_capacity),
            ..NodeArgs::default()
        }
    }

    /// The names of the options, which are also the file keys and, in
    /// capitals after `DISTRIBUS_`, the environment variables (clap knows
    /// them; nothing else lists them).
    fn keys() -> Vec<String> {
        Cli::command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|k| !["config", "verbose", "quiet", "help", "version"].contains(&k.as_str()))
            .collect()
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
    /// Worker threads of the runtime (None: one per core).
    pub threads: Option<usize>,
    /// Host configuration (without the key).
    pub host: HostConfig,
    /// The merged options, for `distribus-node config`.
    pub merged: NodeArgs,
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

/// Layers the defaults, the config file, the environment and the flags
/// (each over the one before) into one set of options.
fn merge(args: &NodeArgs, file: Option<&Path>) -> Result<NodeArgs, String> {
    let mut figment = Figment::from(Serialized::defaults(NodeArgs::defaults()));
    if let Some(path) = file {
        // A named file must exist (figment would take a missing one as empty).
        if !path.is_file() {
            return Err(format!(
                "cannot read config file {}: not a file",
                path.display()
            ));
        }
        figment = figment.merge(Toml::file(path));
    }
    let keys = NodeArgs::keys();
    figment
        .merge(
            Env::prefixed("DISTRIBUS_").filter(move |k| keys.iter().any(|key| k == key.as_str())),
        )
        .merge(Serialized::defaults(args))
        .extract()
        .map_err(|e| e.to_string().replace('\n', " "))
}

impl Settings {
    /// Merges flags, environment, the config file and the defaults.
    pub(crate) fn resolve(args: NodeArgs) -> Result<Settings, String> {
        let o = merge(&args, args.config.as_deref())?;

        // RUST_LOG applies unless a level is given on the command line or
        // in the environment, file or -v/-q.
        let log_filter = match (&o.log_level, std::env::var("RUST_LOG").ok()) {
            (None, Some(rust_log)) if args.verbose == 0 && args.quiet == 0 => rust_log,
            (level, _) => log_filter(level.as_deref().unwrap_or("info"), args.verbose, args.quiet)?,
        };

        let mut host = HostConfig::default();
        for a in &o.advertise {
            let addr = a
                .parse()
                .map_err(|e| format!("advertise: `{a}` is not a multiaddr: {e}"))?;
            host.advertise.push(addr);
        }
        if let Some(v) = &o.network_id {
            host.network_id.clone_from(v);
        }
        host.heartbeat_interval = o.heartbeat.unwrap_or(host.heartbeat_interval);
        host.lease = o.lease.unwrap_or(host.lease);
        host.request_timeout = o.request_timeout.unwrap_or(host.request_timeout);
        host.find_cache_ttl = o.find_cache_ttl.unwrap_or(host.find_cache_ttl);
        if let Some(v) = o.max_message_size {
            host.max_message_size = v;
            host.max_frame_size = host.max_frame_size.max(v.saturating_add(64 * 1024));
        }
        host.max_connections = o.max_connections;
        host.max_connections_per_host = o.max_connections_per_host;
        host.max_pending_connections = o.max_pending_connections;
        host.link_budget = o.link_budget;
        host.max_memory_fraction = o.max_memory_fraction;
        if let Some(v) = o.relay_above {
            host.relay_above = v;
        }
        host.reconnect_delay = o.reconnect_delay.unwrap_or(host.reconnect_delay);
        if let Some(v) = o.reconnect_decay {
            host.reconnect_decay = v;
        }
        host.reconnect_timeout = o.reconnect_timeout.unwrap_or(host.reconnect_timeout);
        if let Some(v) = o.replication {
            host.replication = v;
        }
        if let Some(v) = o.inbox_capacity {
            host.inbox_capacity = v;
        }
        host.validate().map_err(|e| e.to_string())?;
        let gateway = match o.gateway {
            Some(addr) => Some(GatewaySettings {
                addr,
                tokens: o.gateway_tokens.clone(),
                anonymous: o.gateway_anonymous,
                origins: o.gateway_origin.clone(),
                grace: o.gateway_grace.unwrap_or(GATEWAY_GRACE),
                ui: o.gateway_ui,
                tls: match (o.gateway_tls_cert.clone(), o.gateway_tls_key.clone()) {
                    (Some(c), Some(k)) => Some((c, k)),
                    (None, None) => None,
                    _ => return Err("gateway TLS needs both a certificate and a key".into()),
                },
            }),
            None => None,
        };

        Ok(Settings {
            gateway,
            listen: o.listen.clone(),
            join: o.join.clone(),
            identity: o.identity.clone(),
            network_key: o.network_key.clone(),
            allow_hosts: o.allow_hosts.clone(),
            metrics: o.metrics,
            echo_peers: o.echo_peer.clone(),
            subscribe: o.subscribe.clone(),
            log_format: o.log_format.unwrap_or_default(),
            log_filter,
            shutdown_timeout: o.shutdown_timeout.unwrap_or(SHUTDOWN_TIMEOUT),
            threads: match o.threads {
                Some(n) if !(1..=MAX_THREADS).contains(&n) => {
                    return Err(format!("threads must be between 1 and {MAX_THREADS}"))
                }
                t => t,
            },
            host,
            merged: o,
        })
    }

    /// The settings in config-file form.
    pub(crate) fn to_toml(&self) -> Result<String, String> {
        toml::to_string(&self.merged).map_err(|e| e.to_string())
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
        assert!(toml::from_str::<NodeArgs>("lisen = []").is_err());
        let f: NodeArgs = toml::from_str("lease = \"3s\"\nmax_connections = 7").unwrap();
        assert_eq!(f.lease, Some(Duration::from_secs(3)));
        assert_eq!(f.max_connections, Some(7));
    }

    #[test]
    fn every_option_is_a_key() {
        let keys = NodeArgs::keys();
        for key in [
            "listen",
            "lease",
            "gateway_tls_cert",
            "inbox_capacity",
            "log_level",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        // Each key deserializes as a field (a clap id that serde does not
        // know would be refused from the environment).
        for key in &keys {
            let err = toml::from_str::<NodeArgs>(&format!("{key} = {{}}")).unwrap_err();
            assert!(!err.to_string().contains("unknown field"), "{key}: {err}");
        }
    }
}
