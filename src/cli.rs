//! The `colony` command line (SPEC §5). An app's binary is one line:
//! `fn main() -> ExitCode { colony::cli::main(my_app()) }`.
//!
//! `node` runs a node in the foreground; `check-config` validates configs; the other
//! commands talk to a node's HTTP API at `--api`, else `$COLONY_API`, else
//! `http://127.0.0.1:8000`, with `--token` or `$COLONY_TOKEN` when it needs one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

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
    /// Stop a worker as if it crashed; its supervisor applies its restart policy.
    Kill {
        /// The worker id, `NODE/SERVICE/INDEX`.
        worker: String,
    },
}

/// Parses the command line and runs it with `app`'s services.
pub fn main(app: impl Into<App>) -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Node { config, drain } => run_node(app.into(), &config, drain),
        Command::CheckConfig { files } => check_config(&app.into(), &files),
        Command::Status { json } => client(&cli.api, cli.token, |c| status(c, json)),
        Command::Request {
            service,
            subject,
            json,
            timeout,
        } => {
            // The node answers by the request's own timeout; wait a little longer.
            let wait = timeout.map_or(CLIENT_TIMEOUT, |t| t + Duration::from_secs(10));
            client_with_timeout(&cli.api, cli.token, wait, |c| {
                request(c, &service, &subject, json.as_deref(), timeout)
            })
        }
        Command::Kill { worker } => client(&cli.api, cli.token, |c| kill(c, &worker)),
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
    let result = system.block_on(crate::node::run(app, config, shutdown_signal(), drain));
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
        let checked = NodeConfig::load(file).and_then(|c| c.check_services(file, app));
        match checked {
            Ok(()) => println!("ok: {}", file.display()),
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
        let unreachable =
            |e: ureq::Error| Failure(format!("cannot reach the node API at {}: {e}", self.api));
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

fn kill(client: &Client, worker: &str) -> Result<(), Failure> {
    let body = serde_json::json!({ "worker": worker }).to_string();
    client.call("POST", "/v1/kill", Some(body.as_bytes()))?;
    println!("killed {worker}");
    Ok(())
}
