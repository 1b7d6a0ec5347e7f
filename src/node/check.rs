//! Everything a node refuses at start, checked without starting anything: the
//! config's services against the app, the files it names (secret, token, TLS:
//! present, private, well formed; the state directory: one that can be made)
//! and, the same way, each config it spawns. A damaged state file is found only
//! when the node opens it: it may be open in a running node now.
//! `colony check-config` and [`Node::start`](super::Node::start) share it, so a
//! config that passes the one never fails the other.

use std::path::Path;

use crate::app::App;
use crate::bridge::handshake::Secret;
use crate::bridge::tls::Tls;
use crate::config::files::read_token;
use crate::config::{ConfigError, NodeConfig, Role, StateMode, MASTER_SERVICE};

/// Checks `config` (read from `file`) and the configs it spawns; returns those.
pub fn check(config: &NodeConfig, file: &Path, app: &App) -> Result<Vec<NodeConfig>, ConfigError> {
    check_services(config, file, app)?;
    check_files(config, file)?;
    let spawned = check_spawned(config, app)?;
    for (i, (entry, child)) in config.spawn.iter().zip(&spawned).enumerate() {
        check_files(child, &entry.config).map_err(|e| ConfigError {
            file: file.display().to_string(),
            key: format!("spawn[{i}].config"),
            problem: e.to_string(),
        })?;
    }
    Ok(spawned)
}

/// [`NodeConfig::spawned`], and each child that runs this binary (no `command`)
/// checked against `app` as its own node would check it.
pub fn check_spawned(config: &NodeConfig, app: &App) -> Result<Vec<NodeConfig>, ConfigError> {
    let spawned = config.spawned()?;
    for (entry, child) in config.spawn.iter().zip(&spawned) {
        if entry.command.is_none() {
            check_services(child, &entry.config, app)?;
        }
    }
    Ok(spawned)
}

/// Checks that `app` provides every service `config` (read from `file`) lists.
pub fn check_services(config: &NodeConfig, file: &Path, app: &App) -> Result<(), ConfigError> {
    // A service backed by Node messenger listeners has no workers of the app.
    let by_messenger = |name: &&String| !config.services[*name].messenger.is_empty();
    if let Some(name) = config
        .services
        .keys()
        .find(|name| by_messenger(name) && app.has_service(name))
    {
        return Err(ConfigError::new(
            file,
            format!("services.{name}.messenger"),
            "the app runs this service itself: its workers or messenger listeners, not both",
        ));
    }
    let unknown = |name: &&String| !by_messenger(name) && !app.has_service(name);
    match config.services.keys().find(unknown) {
        None => Ok(()),
        Some(name) => {
            let mut known: Vec<&str> = app
                .service_names()
                .into_iter()
                .filter(|n| *n != MASTER_SERVICE)
                .collect();
            known.sort();
            Err(ConfigError::new(
                file,
                format!("services.{name}"),
                format!("unknown service, expected one of {}", known.join(", ")),
            ))
        }
    }
}

/// The secret, token and TLS files of `config`, read as the node would read them.
fn check_files(config: &NodeConfig, file: &Path) -> Result<(), ConfigError> {
    let fail = |key: &str, path: &Path, problem: String| ConfigError {
        file: file.display().to_string(),
        key: key.to_string(),
        problem: format!("{}: {problem}", path.display()),
    };
    if let Some(path) = &config.api.token_file {
        read_token(path).map_err(|p| fail("api.token_file", path, p))?;
    }
    if let Some(bridge) = &config.bridge {
        let path = &bridge.secret_file;
        Secret::read(path).map_err(|p| fail("bridge.secret_file", path, p))?;
        if let Some(tls) = &bridge.tls {
            Tls::load(tls, &config.node.name).map_err(|problem| ConfigError {
                file: file.display().to_string(),
                key: "bridge.tls".into(),
                problem,
            })?;
        }
    }
    if let Some(nats) = &config.nats {
        if let Some(path) = &nats.token_file {
            read_token(path).map_err(|p| fail("nats.token_file", path, p))?;
        }
        if let Some(path) = &nats.credentials_file {
            crate::config::files::read_private(path)
                .map_err(|p| fail("nats.credentials_file", path, p))?;
        }
        let tls = nats.tls.iter().flat_map(|t| [&t.ca, &t.cert, &t.key]);
        for (path, key) in tls.zip(["nats.tls.ca", "nats.tls.cert", "nats.tls.key"]) {
            if let Some(path) = path {
                let readable = std::fs::metadata(path)
                    .map_err(|e| e.to_string())
                    .and_then(|m| m.is_file().then_some(()).ok_or("is not a file".into()));
                readable.map_err(|p| fail(key, path, p))?;
            }
        }
    }
    let holds_state =
        config.nats.is_none() && (config.role() == Role::Master || config.bridge.is_none());
    if holds_state && config.state.mode == StateMode::Durable {
        let dir = config.state.dir_of(&config.node.name);
        check_state_dir(&dir).map_err(|problem| ConfigError {
            file: file.display().to_string(),
            key: "state.dir".into(),
            problem,
        })?;
    }
    Ok(())
}

/// Whether the state directory `dir` can be made: the nearest part of its path
/// that exists is a directory, and a state file already there is a file.
fn check_state_dir(dir: &Path) -> Result<(), String> {
    let shown = |path: &Path| crate::logging::untrusted(&path.to_string_lossy()).to_string();
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => return Err(format!("cannot be made: {} is not a directory", shown(at))),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot be made: {}: {e}", shown(at)))
            }
            Err(_) => match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                _ => break,
            },
        }
    }
    let file = dir.join(crate::store::FILE);
    match std::fs::metadata(&file) {
        Ok(meta) if !meta.is_file() => Err(format!("{} is not a regular file", shown(&file))),
        _ => Ok(()),
    }
}
