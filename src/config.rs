//! Node configuration (SPEC §4): a YAML file read with the `config` crate, every key
//! overridable from the environment (`COLONY__SERVICES__MATH__WORKERS=4`), durations
//! written like `500ms`. Unknown keys, unknown services and invalid values are
//! errors naming the file, the key and the problem.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod files;
mod input;
pub mod limits;
mod load;
mod logs;
mod messenger;
mod names;
mod nats;
mod state;

pub use logs::LogSection;
pub use messenger::{check_address, split_target, MessengerSection, ShoutTo};
pub use nats::{NatsSection, NatsTls, DEFAULT_PREFIX};
pub use state::{StateMode, StateSection};

/// The start of environment variables that override config keys.
pub const ENV_PREFIX: &str = "COLONY__";

/// The name of the service that answers the master's requests; it runs one worker
/// on the master node. A config may not list it: it is reserved for the master's
/// handlers.
pub const MASTER_SERVICE: &str = "@master";

/// A node's whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Who this node is.
    pub node: NodeSection,
    /// The HTTP API; absent or without `listen`, the node serves none.
    #[serde(default)]
    pub api: ApiSection,
    /// How this node joins the cluster; absent, it runs alone.
    #[serde(default)]
    pub bridge: Option<BridgeSection>,
    /// The cluster over NATS instead of the bridge; `bridge:` and `nats:` do not
    /// go together.
    #[serde(default)]
    pub nats: Option<NatsSection>,
    /// Node `messenger` compatibility: Speakers served, listeners shouted to.
    #[serde(default)]
    pub messenger: Option<MessengerSection>,
    /// The services this node runs, by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// Job queues this node holds (the master, or a node without a bridge), by
    /// name. Only these exist: a push or take for any other name is `NoSuchService`.
    #[serde(default)]
    pub queues: BTreeMap<String, QueueConfig>,
    /// Where the cluster state is kept, on the node that holds it.
    #[serde(default)]
    pub state: StateSection,
    /// Child node processes this node starts, keeps running and reloads.
    #[serde(default)]
    pub spawn: Vec<SpawnConfig>,
    /// The node's recent log lines kept for `GET /v1/logs`.
    #[serde(default)]
    pub log: LogSection,
    /// The file this config was read from, for error messages.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `node:` — name, role and threads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// `[a-z0-9-]{1,32}`, unique in the cluster.
    pub name: String,
    /// `master` or `worker`; absent, a node whose bridge joins another (or its
    /// spawning parent) is a worker, any other node a master. See [`NodeConfig::role`].
    #[serde(default)]
    pub role: Option<Role>,
    /// Arbiter threads that run workers; default: the CPU count.
    #[serde(default, deserialize_with = "input::optional_integer")]
    pub threads: Option<usize>,
}

impl NodeSection {
    /// The arbiter thread count, resolving the default.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Keeps the member table and runs the master's handlers.
    Master,
    /// Joins a master.
    Worker,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Worker => "worker",
        })
    }
}

/// `api:` — where the HTTP API listens and its bearer token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Address to bind, e.g. `127.0.0.1:8000` (port 0 picks a free port).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token; required when `listen` is not loopback.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes; a larger `Content-Length` is 413
    /// before any of the body is read.
    #[serde(default = "default_max_body", deserialize_with = "input::integer")]
    pub max_body: usize,
    /// Host names (the `Host` header, without port) served besides loopback names
    /// and addresses; any other `Host` is 421, so DNS rebinding cannot reach the API.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Time a client has to send its headers and body; past it, 408 and the
    /// connection closes.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    #[serde(
        default = "default_max_connections",
        deserialize_with = "input::integer"
    )]
    pub max_connections: usize,
    /// Bytes one `GET /v1/subscribe` stream may hold for a slow client; past it,
    /// messages are dropped and the client is told with a line `{"dropped":N}`.
    /// All the streams together hold at most 8 times this
    /// ([`STREAM_BUDGET_BUFFERS`](crate::pubsub::STREAM_BUDGET_BUFFERS)).
    #[serde(
        default = "default_subscribe_buffer",
        deserialize_with = "input::integer"
    )]
    pub subscribe_buffer: usize,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: None,
            token_file: None,
            max_body: default_max_body(),
            allowed_hosts: Vec::new(),
            read_timeout: default_read_timeout(),
            max_connections: default_max_connections(),
            subscribe_buffer: default_subscribe_buffer(),
        }
    }
}

fn default_max_body() -> usize {
    1024 * 1024
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    512
}
fn default_subscribe_buffer() -> usize {
    8 * 1024 * 1024
}

/// `bridge:` — the link to the other nodes of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSection {
    /// Where this node's bridge listens (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Master address(es) a worker node joins.
    #[serde(default)]
    pub join: Vec<SocketAddr>,
    /// The shared cluster secret; a node refuses to run a bridge without it.
    pub secret_file: PathBuf,
    /// Interval of heartbeats; a peer silent for three is down.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Mutual TLS on every bridge connection.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Largest frame accepted, in bytes (checked before any allocation).
    #[serde(default = "default_max_frame", deserialize_with = "input::integer")]
    pub max_frame: usize,
    /// Frames waiting to be sent to one peer; past it, calls get `Overloaded`.
    #[serde(default = "default_send_queue", deserialize_with = "input::integer")]
    pub queue: usize,
    /// Bytes waiting to be sent to one peer; past it, calls get `Overloaded`.
    #[serde(default = "default_queue_bytes", deserialize_with = "input::integer")]
    pub queue_bytes: usize,
    /// Connections in their handshake at once; more are closed at once, so
    /// unauthenticated peers cannot hold memory or descriptors.
    #[serde(
        default = "default_max_handshakes",
        deserialize_with = "input::integer"
    )]
    pub max_handshakes: usize,
    /// Allows plain TCP (no `tls`) on a non-loopback `listen` or `join` address.
    #[serde(default)]
    pub insecure: bool,
}

fn default_heartbeat() -> Duration {
    Duration::from_millis(500)
}
/// The largest bridge frame accepted unless `bridge.max_frame` says otherwise:
/// 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

fn default_max_frame() -> usize {
    DEFAULT_MAX_FRAME
}
fn default_send_queue() -> usize {
    8192
}
fn default_queue_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_max_handshakes() -> usize {
    64
}

/// `bridge.tls:` — PEM files for mutual TLS. Every node's certificate is signed by
/// `ca` and names its node (subjectAltName `DNS:NODE`); `colony certs` writes them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// This node's certificate chain.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// The cluster's certificate authority.
    pub ca: PathBuf,
}

/// `spawn[N]:` — a child node process: its config, where it may run, and how
/// often it may crash before it is left `errored` (pm2's `max_restarts` and
/// `min_uptime`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnConfig {
    /// The child's node config, relative to the working directory.
    pub config: PathBuf,
    /// The CPU the child is pinned to (its affinity), counted from 0, or `auto`:
    /// the children spread over the CPUs that exist, in `spawn` order.
    #[serde(default)]
    pub cpu: Option<Cpu>,
    /// The program to run instead of this binary; it is given
    /// `node --config CONFIG` as `colony` is.
    #[serde(default)]
    pub command: Option<PathBuf>,
    /// Restarts in a row, each after less than `min_uptime`, before the child is
    /// `errored` and no longer restarted (until a reload).
    #[serde(
        default = "default_spawn_restarts",
        deserialize_with = "input::integer"
    )]
    pub max_restarts: u32,
    /// A child that ran at least this long did not crash-loop.
    #[serde(default = "default_min_uptime", with = "humantime_serde")]
    pub min_uptime: Duration,
}

fn default_spawn_restarts() -> u32 {
    10
}
fn default_min_uptime() -> Duration {
    Duration::from_secs(1)
}

/// `spawn[N].cpu:` — one CPU, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cpu {
    /// Spread: the `N`th child runs on CPU `N` modulo the CPUs that exist.
    Auto,
    /// This CPU.
    #[serde(untagged)]
    Index(usize),
}

impl Cpu {
    /// The CPU a child at `position` in the `spawn` list runs on, given `cpus` CPUs.
    pub fn resolve(self, position: usize, cpus: usize) -> usize {
        match self {
            Cpu::Auto => position % cpus.max(1),
            Cpu::Index(cpu) => cpu,
        }
    }
}

/// `queues.NAME:` — how a job queue retries, and its bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Deliveries of a job before it goes to the dead letters.
    #[serde(default = "default_attempts", deserialize_with = "input::integer")]
    pub max_attempts: u32,
    /// Jobs waiting for a worker; a push beyond is `Overloaded`.
    #[serde(
        default = "default_queue_capacity",
        deserialize_with = "input::integer"
    )]
    pub capacity: usize,
    /// How long a worker may hold a job without acknowledging it before it is
    /// delivered again (a safety net: a worker's death, panic or node loss redelivers
    /// at once).
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Dead letters kept; past this the oldest is dropped, with an error in the log.
    #[serde(default = "default_dead_letters", deserialize_with = "input::integer")]
    pub dead_letters: usize,
    /// Bytes of job JSON the queue holds, waiting or leased (a leased job may come
    /// back); a push beyond is `Overloaded`. Its dead letters are kept within as
    /// many bytes again, past which the oldest is dropped. Without it `capacity`
    /// 1 MB jobs would be 100 GB.
    #[serde(
        default = "default_queue_max_bytes",
        deserialize_with = "input::integer"
    )]
    pub max_bytes: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_attempts: default_attempts(),
            capacity: default_queue_capacity(),
            lease: default_lease(),
            dead_letters: default_dead_letters(),
            max_bytes: default_queue_max_bytes(),
        }
    }
}

fn default_attempts() -> u32 {
    5
}
fn default_queue_capacity() -> usize {
    100_000
}
fn default_lease() -> Duration {
    Duration::from_secs(60)
}
fn default_dead_letters() -> usize {
    1000
}
fn default_queue_max_bytes() -> usize {
    64 * 1024 * 1024
}

/// `services.NAME:` — how many workers, how they take work, how they restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Worker count; default: `node.threads`.
    #[serde(default, deserialize_with = "input::optional_integer")]
    pub workers: Option<usize>,
    /// Requests in flight per worker.
    #[serde(default = "one", deserialize_with = "input::integer")]
    pub concurrency: usize,
    /// High-water mark of requests waiting for a free worker.
    #[serde(default = "default_queue", deserialize_with = "input::integer")]
    pub queue: usize,
    /// Default request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Restart policy, strategy and intensity.
    #[serde(default)]
    pub restart: RestartConfig,
    /// Which node serves a request for this service made on this node.
    #[serde(default)]
    pub routing: Routing,
    /// Node `messenger` listeners (`host:port`) that serve this service instead
    /// of workers of the app; requests go to them in turn.
    #[serde(default)]
    pub messenger: Vec<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            workers: None,
            concurrency: 1,
            queue: default_queue(),
            timeout: default_timeout(),
            restart: RestartConfig::default(),
            routing: Routing::default(),
            messenger: Vec::new(),
        }
    }
}

fn one() -> usize {
    1
}
fn default_queue() -> usize {
    1024
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `services.NAME.restart:` — the supervisor's rules for the service's workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    /// Which exits restart a worker.
    #[serde(default)]
    pub policy: Policy,
    /// Which workers restart when one exits.
    #[serde(default)]
    pub strategy: Strategy,
    /// More restarts than this within `within` fail the service.
    #[serde(default = "default_max_restarts", deserialize_with = "input::integer")]
    pub max_restarts: u32,
    /// The window of the restart intensity.
    #[serde(default = "default_within", with = "humantime_serde")]
    pub within: Duration,
    /// Delay before a restart, doubling per restart in the window.
    #[serde(default)]
    pub backoff: Backoff,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            policy: Policy::default(),
            strategy: Strategy::default(),
            max_restarts: default_max_restarts(),
            within: default_within(),
            backoff: Backoff::default(),
        }
    }
}

fn default_max_restarts() -> u32 {
    5
}
fn default_within() -> Duration {
    Duration::from_secs(10)
}

/// Which exits restart a worker (Erlang/OTP's restart types).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Always restarted.
    #[default]
    Permanent,
    /// Restarted only after a panic or a kill.
    Transient,
    /// Never restarted.
    Temporary,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Permanent => "permanent",
            Policy::Transient => "transient",
            Policy::Temporary => "temporary",
        })
    }
}

/// Which workers of the service restart when one exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the one that exited.
    #[default]
    OneForOne,
    /// All workers of the service.
    OneForAll,
    /// The one that exited and those started after it.
    RestForOne,
}

/// Which node serves a request: this one or another that runs the service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// A free local worker first, else the least-loaded other node.
    #[default]
    LocalFirst,
    /// Each node in turn, this one included.
    RoundRobin,
    /// The node with the fewest requests in flight for its capacity.
    LeastLoaded,
}

/// Exponential backoff bounds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// First delay.
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub min: Duration,
    /// Largest delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: default_backoff_min(),
            max: default_backoff_max(),
        }
    }
}

impl Backoff {
    /// The delay before the `n`th restart within the window (`n` ≥ 1).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        self.min.saturating_mul(factor).min(self.max)
    }
}

fn default_backoff_min() -> Duration {
    Duration::from_millis(10)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(5)
}

/// A config that cannot be used: the file, the key and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}{sep}{problem}", sep = if key.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// The dotted key at fault, e.g. `services.math.workers`; empty for the whole file.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(file: &Path, key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            key: key.into(),
            problem: problem.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_max() {
        let b = Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(50),
        };
        let delays: Vec<_> = (1..=5).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![10, 20, 40, 50, 50]);
        assert_eq!(b.delay(1000), Duration::from_millis(50));
    }
}
