//! The `colony` command line (SPEC §5). An app's binary is one line:
//! `fn main() -> ExitCode { colony::cli::main(my_app()) }`.
//!
//! `node` runs a node in the foreground; `check-config` validates configs; the other
//! commands (`logs` among them, in `cli::logs`) talk to a node's HTTP API at
//! `--api`, else `$COLONY_API`, else `http://127.0.0.1:8000`, with `--token` or `$COLONY_TOKEN` (or the first line of
//! `--token-file` or `$COLONY_TOKEN_FILE`) when it needs one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

mod logs;
mod startup;

use crate::app::App;
use crate::config::NodeConfig;
use crate::status::ClusterStatus;

#[derive(Parser, Debug)]
#[command(name = "colony", version, about = "Run and talk to colony nodes")]
struct Cli {
    /// The node API to talk to.
    #[arg(
        long,
        global = true,
        env = "COLONY_API",
        default_value = "http://127.0.0.1:8000"
    )]
    api: String,
    /// Bearer token for the node API.
    #[arg(long, global = true, env = "COLONY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File whose first line is the bearer token (used when no --token is given).
    #[arg(long, global = true, env = "COLONY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node in the foreground; SIGINT/SIGTERM stop it gracefully.
    Node {
        /// The node's YAML config.
        #[arg(long)]
        config: PathBuf,
        /// How long requests in flight may take to finish at shutdown.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        drain: Duration,
    },
    /// Validate configs: `ok: FILE`, or the error and exit code 2.
    CheckConfig {
        /// Config files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Nodes, services and workers of the cluster.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a request and print the reply JSON.
    Request {
        /// The service, e.g. `math`.
        service: String,
        /// The subject, e.g. `sum`.
        subject: String,
        /// The message as JSON (default `{}`).
        json: Option<String>,
        /// This request's timeout, e.g. `500ms`.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Stop a worker, or a whole node's process, as if it crashed; its supervisor
    /// (or the node that spawned it) applies its restart policy.
    Kill {
        /// A worker id, `NODE/SERVICE/INDEX`, or a node name.
        target: String,
        /// The exit code of a killed node.
        #[arg(long, default_value_t = 1)]
        code: i32,
    },
    /// Set the number of workers of SERVICE on a node while it runs: new workers
    /// start; removed ones (the highest indexes) finish their requests, then
    /// stop. Until the node restarts; `workers:` in its config makes it permanent.
    Scale {
        /// The service, e.g. `math`.
        service: String,
        /// Its workers from now on.
        workers: u64,
        /// The node; by default the one the API is on if it runs SERVICE, else
        /// the one node that does.
        #[arg(long)]
        node: Option<String>,
    },
    /// Restart the spawned nodes one at a time (or only NODE) with no failed
    /// requests: each drains, starts again and is online before the next.
    Reload {
        /// One spawned node; all of them when omitted.
        node: Option<String>,
    },
    /// Publish a message to every subscriber of the cluster whose prefix matches.
    Publish {
        /// The topic, e.g. `user.deleted`.
        topic: String,
        /// The message as JSON.
        json: String,
    },
    /// Print every message of the cluster whose topic starts with PREFIX, one JSON
    /// line each, until interrupted.
    Subscribe {
        /// The topic prefix; empty for every message.
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Print the cluster's log lines as `pm2 logs` does, merged in time order:
    /// the newest first, then (with --follow) each new one until interrupted.
    Logs {
        /// Only this node's lines.
        #[arg(long)]
        node: Option<String>,
        /// Keep printing new lines until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// The least severe level printed: error, warn, info, debug or trace.
        #[arg(long)]
        level: Option<String>,
        /// How many of the newest lines to print first (at most 10000).
        #[arg(long, default_value_t = 100)]
        lines: usize,
    },
    /// Push a job onto a job queue of the cluster.
    Push {
        /// The queue.
        queue: String,
        /// The job as JSON.
        json: String,
    },
    /// The cluster's job queues: counts and dead letters, as JSON.
    Queues,
    /// Print a systemd unit that runs a node with CONFIG at boot, restarts it when
    /// it fails and stops it with SIGTERM within the drain; install it with
    /// `colony startup --config FILE | sudo tee /etc/systemd/system/colony.service`.
    Startup {
        /// The node's YAML config.
        #[arg(long, default_value = "configs/master.yaml")]
        config: PathBuf,
        /// The user the node runs as; root when omitted.
        #[arg(long)]
        user: Option<String>,
        /// How long requests in flight may take to finish when systemd stops it.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        drain: Duration,
    },
    /// Write a cluster CA (ca.pem, ca.key) and a certificate and key per node
    /// (NODE.pem, NODE.key, naming the node) into DIR, for `bridge.tls`.
    Certs {
        /// Where to write them; created if missing. Existing files are kept.
        dir: PathBuf,
        /// The node names, comma-separated, e.g. `master,worker-a,worker-b`.
        #[arg(long, required = true, value_delimiter = ',')]
        nodes: Vec<String>,
    },
}

/// Parses the command line and runs it with `app`'s services.
pub fn main(app: impl Into<App>) -> ExitCode {
    let mut cli = Cli::parse();
    if cli.token.is_none()
        && !matches!(
            cli.command,
            Command::Node { .. } | Command::CheckConfig { .. } | Command::Startup { .. }
        )
    {
        if let Some(path) = &cli.token_file {
            match crate::config::files::read_token(path) {
                Ok(token) => cli.token = Some(token),
                Err(problem) => {
                    eprintln!("error: token file {}: {problem}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    match cli.command {
        Command::Node { config, drain } => run_node(app.into(), &config, drain),
        Command::CheckConfig { files } => check_config(&app.into(), &files),
        Command::Certs { dir, nodes } => crate::certs::run(&dir, &nodes),
        Command::Startup {
            config,
            user,
            drain,
        } => startup(&config, user.as_deref(), drain),
        Command::Status { json } => client(&cli.api, cli.token, |c| status(c, json)),
        Command::Request {
            service,
            subject,
            json,
            timeout,
        } => {
            // The node answers by the request's own timeout; wait a little longer.
            let wait = timeout.map_or(CLIENT_TIMEOUT, |t| {
                t.saturating_add(Duration::from_secs(10))
            });
            client_with_timeout(&cli.api, cli.token, wait, |c| {
                request(c, &service, &subject, json.as_deref(), timeout)
            })
        }
        Command::Kill { target, code } => client(&cli.api, cli.token, |c| kill(c, &target, code)),
        Command::Scale {
            service,
            workers,
            node,
        } => client(&cli.api, cli.token, |c| {
            scale(c, &service, workers, node.as_deref())
        }),
        Command::Reload { node } => client_with_timeout(&cli.api, cli.token, RELOAD_TIMEOUT, |c| {
            reload(c, node.as_deref())
        }),
        Command::Publish { topic, json } => {
            client(&cli.api, cli.token, |c| publish(c, &topic, &json))
        }
        Command::Subscribe { prefix } => subscribe(&cli.api, cli.token, &prefix),
        Command::Logs {
            node,
            follow,
            level,
            lines,
        } => logs::run(
            &cli.api,
            cli.token,
            &logs::Ask {
                node,
                follow,
                level,
                lines,
            },
        ),
        Command::Push { queue, json } => client(&cli.api, cli.token, |c| push(c, &queue, &json)),
        Command::Queues => client(&cli.api, cli.token, |c| {
            let (_, value) = c.call("GET", "/v1/queues", None)?;
            println!("{value}");
            Ok(())
        }),
    }
}

/// Prints the systemd unit of the node `path` configures (see `startup`).
fn startup(path: &std::path::Path, user: Option<&str>, drain: Duration) -> ExitCode {
    let config = match NodeConfig::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let absolute =
        |p: &std::path::Path| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
    let unit = absolute(path).and_then(|config_path| {
        let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
        let dir = std::env::current_dir().map_err(|e| format!("the current directory: {e}"))?;
        startup::unit(
            &absolute(&exe)?,
            &config_path,
            &dir,
            &config.node.name,
            user,
            drain,
        )
    });
    match unit {
        Ok(unit) => {
            print!("{unit}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(app: App, path: &std::path::Path, drain: Duration) -> ExitCode {
    let config = match NodeConfig::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init(&config.node.name);
    let system = actix_rt::System::new();
    let result = system.block_on(crate::run::run(app, config, shutdown_signal(), drain));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            log::warn!("cannot watch SIGTERM ({e}); only SIGINT stops the node");
            if let Err(e) = tokio::signal::ctrl_c().await {
                log::error!("cannot watch SIGINT either ({e}); stop the node with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
    log::info!("signal received");
}

fn check_config(app: &App, files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        // The nodes it spawns are checked with it.
        let checked = NodeConfig::load(file).and_then(|c| crate::node::check::check(&c, file, app));
        match checked {
            Ok(_) => println!("ok: {}", file.display()),
            Err(e) => {
                eprintln!("error: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// A client call's failure, printed as `error: …`.
struct Failure(String);

struct Client {
    api: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<(u16, Value), Failure> {
        let url = format!("{}{path}", self.api.trim_end_matches('/'));
        let unreachable = |e: ureq::Error| Failure(unreachable(&url, &e));
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut response = match (method, body) {
            ("GET", _) => {
                let mut req = self.agent.get(&url);
                if let Some(auth) = &auth {
                    req = req.header("Authorization", auth);
                }
                req.call().map_err(unreachable)?
            }
            (_, body) => {
                let mut req = self.agent.post(&url).content_type("application/json");
                if let Some(auth) = &auth {
                    req = req.header("Authorization", auth);
                }
                req.send(body.unwrap_or(b"")).map_err(unreachable)?
            }
        };
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| Failure(format!("cannot read the node's answer: {e}")))?;
        let value = serde_json::from_str(&text).map_err(|_| {
            Failure(format!(
                "the node answered {status} with non-JSON: {}",
                text.trim()
            ))
        })?;
        if (200..300).contains(&status) {
            return Ok((status, value));
        }
        let kind = value["error"]["kind"].as_str().unwrap_or("Unknown");
        let message = value["error"]["message"].as_str().unwrap_or("");
        Err(Failure(format!("{kind}: {message}")))
    }
}

/// How long a client command waits for the node's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn client(
    api: &str,
    token: Option<String>,
    run: impl FnOnce(&Client) -> Result<(), Failure>,
) -> ExitCode {
    client_with_timeout(api, token, CLIENT_TIMEOUT, run)
}

fn client_with_timeout(
    api: &str,
    token: Option<String>,
    timeout: Duration,
    run: impl FnOnce(&Client) -> Result<(), Failure>,
) -> ExitCode {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let client = Client {
        api: api.to_string(),
        token,
        agent,
    };
    match run(&client) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn status(client: &Client, json: bool) -> Result<(), Failure> {
    let (_, value) = client.call("GET", "/v1/status", None)?;
    if json {
        println!("{value}");
        return Ok(());
    }
    let status: ClusterStatus = serde_json::from_value(value).map_err(|e| {
        Failure(format!(
            "the node's status is not what this colony reads: {e}"
        ))
    })?;
    print!("{}", status.table());
    Ok(())
}

fn request(
    client: &Client,
    service: &str,
    subject: &str,
    json: Option<&str>,
    timeout: Option<Duration>,
) -> Result<(), Failure> {
    let body = json.unwrap_or("{}");
    if let Err(e) = serde_json::from_str::<Value>(body) {
        return Err(Failure(format!("BadRequest: the message is not JSON: {e}")));
    }
    let mut path = format!("/v1/request/{service}/{subject}");
    if let Some(timeout) = timeout {
        path.push_str(&format!("?timeout={}ms", timeout.as_millis().max(1)));
    }
    let (_, value) = client.call("POST", &path, Some(body.as_bytes()))?;
    println!("{}", value["reply"]);
    Ok(())
}

fn kill(client: &Client, target: &str, code: i32) -> Result<(), Failure> {
    let body = if target.contains('/') {
        serde_json::json!({ "worker": target })
    } else {
        serde_json::json!({ "node": target, "code": code })
    };
    client.call("POST", "/v1/kill", Some(body.to_string().as_bytes()))?;
    println!("killed {target}");
    Ok(())
}

fn scale(client: &Client, service: &str, workers: u64, node: Option<&str>) -> Result<(), Failure> {
    let body = serde_json::json!({ "workers": workers, "node": node }).to_string();
    let path = format!("/v1/scale/{}", encode_path(service));
    let (_, value) = client.call("POST", &path, Some(body.as_bytes()))?;
    let scaled: crate::status::Scaled = serde_json::from_value(value).map_err(|e| {
        Failure(format!(
            "the node's answer to the scale is not what this colony reads: {e}"
        ))
    })?;
    println!("{scaled}");
    Ok(())
}

/// How long `colony reload` waits: each node drains (up to its own deadline)
/// and starts again, one after the other.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(600);

fn reload(client: &Client, node: Option<&str>) -> Result<(), Failure> {
    let body = serde_json::json!({ "node": node }).to_string();
    let (_, value) = client.call("POST", "/v1/reload", Some(body.as_bytes()))?;
    let reloaded: Vec<&str> = value["reloaded"]
        .as_array()
        .map(|nodes| nodes.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!("reloaded {}", reloaded.join(", "));
    Ok(())
}

fn check_json(json: &str) -> Result<(), Failure> {
    serde_json::from_str::<Value>(json)
        .map(drop)
        .map_err(|e| Failure(format!("BadRequest: the message is not JSON: {e}")))
}

fn publish(client: &Client, topic: &str, json: &str) -> Result<(), Failure> {
    check_json(json)?;
    let path = format!("/v1/publish/{}", encode_path(topic));
    let (_, value) = client.call("POST", &path, Some(json.as_bytes()))?;
    println!("{value}");
    Ok(())
}

fn push(client: &Client, queue: &str, json: &str) -> Result<(), Failure> {
    check_json(json)?;
    let path = format!("/v1/push/{}", encode_path(queue));
    let (_, value) = client.call("POST", &path, Some(json.as_bytes()))?;
    println!("{value}");
    Ok(())
}

/// Streams `GET /v1/subscribe/PREFIX` to stdout, line by line, until the node
/// closes the stream (it stops) or the command is interrupted.
fn subscribe(api: &str, token: Option<String>, prefix: &str) -> ExitCode {
    use std::io::{BufRead, Write};
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!(
        "{}/v1/subscribe/{}",
        api.trim_end_matches('/'),
        encode_path(prefix)
    );
    let mut req = agent.get(&url);
    if let Some(token) = &token {
        req = req.header("Authorization", format!("Bearer {token}"));
    }
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::FAILURE
    };
    let response = match req.call() {
        Ok(response) => response,
        Err(e) => return fail(unreachable(&url, &e)),
    };
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if !(200..300).contains(&status) {
        let text = body.read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or_default();
        let kind = value["error"]["kind"].as_str().unwrap_or("Unknown");
        let message = value["error"]["message"].as_str().unwrap_or(text.trim());
        return fail(format!("{kind}: {message}"));
    }
    let stdout = std::io::stdout();
    for line in std::io::BufReader::new(body.into_reader()).lines() {
        let line = match line {
            Ok(line) => line,
            Err(e) => return fail(format!("the stream broke: {e}")),
        };
        let mut out = stdout.lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // stdout closed (e.g. piped into `head`): done.
            return ExitCode::SUCCESS;
        }
    }
    ExitCode::SUCCESS
}

/// The failure of a call that got no HTTP answer at all.
fn unreachable(url: &str, why: &ureq::Error) -> String {
    format!("NodeDown: cannot reach {url} ({why})")
}

/// Percent-encodes a topic, prefix or queue name for a URL path.
fn encode_path(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' | b'@' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
