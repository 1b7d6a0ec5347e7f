//! Reading a config: the file (bounded), the YAML (checked before it expands), the
//! environment's overrides, serde with the key of any error, then every value's
//! rules; and the configs of the nodes it spawns. Whether the app provides the
//! services a config lists is the node's check (`node::check`): config knows no app.

use std::path::{Path, PathBuf};

use super::{input, ConfigError, NodeConfig, Role, ServiceConfig, MASTER_SERVICE};

impl NodeConfig {
    /// Reads `path` with the environment's `COLONY__…` overrides, and checks every value.
    pub fn load(path: impl AsRef<Path>) -> Result<NodeConfig, ConfigError> {
        let path = path.as_ref();
        let text = Self::read(path)?;
        Self::parse(path, &text)
    }

    /// The text of config file `path`, refused past [`input::MAX_FILE`] bytes.
    fn read(path: &Path) -> Result<String, ConfigError> {
        let size = std::fs::metadata(path)
            .map_err(|e| ConfigError::new(path, "", format!("cannot read: {e}")))?
            .len();
        if size > input::MAX_FILE as u64 {
            return Err(ConfigError::new(
                path,
                "",
                format!(
                    "is {size} bytes; a config may be at most {}",
                    input::MAX_FILE
                ),
            ));
        }
        std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "", format!("cannot read: {e}")))
    }

    /// Parses YAML `text` as if read from `path`, with environment overrides.
    pub fn parse(path: &Path, text: &str) -> Result<NodeConfig, ConfigError> {
        Self::parse_with(path, text, true)
    }

    /// Reads `path` as [`load`](Self::load) does, but without the environment's
    /// overrides: those are meant for this process's own node, never for the
    /// configs of the children it spawns.
    fn load_as_child(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = Self::read(path)?;
        Self::parse_with(path, &text, false)
    }

    fn parse_with(path: &Path, text: &str, env: bool) -> Result<NodeConfig, ConfigError> {
        input::check_yaml(text).map_err(|problem| ConfigError::new(path, "", problem))?;
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Yaml));
        if env {
            builder = builder.add_source(
                config::Environment::with_prefix("COLONY")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            );
        }
        let built = builder
            .build()
            .map_err(|e| ConfigError::new(path, "", clean_message(&e.to_string())))?;
        let mut parsed: NodeConfig = serde_path_to_error::deserialize(built).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            ConfigError::new(path, key, clean_message(&e.into_inner().to_string()))
        })?;
        parsed.validate(path)?;
        parsed.source = Some(path.to_path_buf());
        Ok(parsed)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |key: &str, problem: String| Err(ConfigError::new(path, key, problem));
        let name = &self.node.name;
        let name_ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return err(
                "node.name",
                format!(
                    "`{}` is not 1 to 32 characters of a-z, 0-9 and -",
                    crate::logging::untrusted(name)
                ),
            );
        }
        self.check_limits(path)?;
        if self.node.threads == Some(0) {
            return err("node.threads", "must be at least 1".into());
        }
        if let Some(listen) = self.api.listen {
            if !listen.ip().is_loopback() && self.api.token_file.is_none() {
                return err(
                    "api.token_file",
                    format!("required because api.listen {listen} is not a loopback address"),
                );
            }
        }
        if let (Some(_), Some(_)) = (&self.bridge, &self.nats) {
            return err(
                "nats",
                "cannot go with bridge: a node joins the cluster by one or the other".into(),
            );
        }
        if let Some(nats) = &self.nats {
            if let Err((key, problem)) = nats.check() {
                return err(key, problem);
            }
            if self.node.role.is_none() {
                return err(
                    "node.role",
                    "is required with nats: master on one node, worker on the others".into(),
                );
            }
        }
        if let Some(messenger) = &self.messenger {
            if let Err((key, problem)) = messenger.check() {
                return err(&key, problem);
            }
        }
        if let Some(bridge) = &self.bridge {
            if bridge.max_frame < 1024 {
                return err("bridge.max_frame", "must be at least 1024".into());
            }
            if bridge.queue == 0 {
                return err("bridge.queue", "must be at least 1".into());
            }
        }
        if self.api.max_body == 0 {
            return err("api.max_body", "must be at least 1".into());
        }
        for (service, cfg) in &self.services {
            let key = |field: &str| format!("services.{service}.{field}");
            if service == MASTER_SERVICE {
                return err(
                    &format!("services.{service}"),
                    "is reserved for the master's handlers".into(),
                );
            }
            if cfg.workers == Some(0) {
                return err(&key("workers"), "must be at least 1".into());
            }
            if cfg.messenger.len() > super::messenger::MAX_ENTRIES {
                return err(&key("messenger"), "lists too many listeners".into());
            }
            for address in &cfg.messenger {
                super::check_address(address)
                    .map_err(|p| ConfigError::new(path, key("messenger"), p))?;
            }
            if cfg.concurrency == 0 {
                return err(&key("concurrency"), "must be at least 1".into());
            }
            if cfg.timeout.is_zero() {
                return err(&key("timeout"), "must be longer than 0".into());
            }
            if cfg.restart.within.is_zero() {
                return err(&key("restart.within"), "must be longer than 0".into());
            }
            let b = cfg.restart.backoff;
            if b.min > b.max {
                return err(
                    &key("restart.backoff"),
                    format!(
                        "min {} is above max {}",
                        humantime::format_duration(b.min),
                        humantime::format_duration(b.max)
                    ),
                );
            }
        }
        for (queue, cfg) in &self.queues {
            let key = |field: &str| format!("queues.{queue}.{field}");
            if cfg.max_attempts == 0 {
                return err(&key("max_attempts"), "must be at least 1".into());
            }
            if cfg.capacity == 0 {
                return err(&key("capacity"), "must be at least 1".into());
            }
            if cfg.max_bytes == 0 {
                return err(&key("max_bytes"), "must be at least 1".into());
            }
            if cfg.lease.is_zero() {
                return err(&key("lease"), "must be longer than 0".into());
            }
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (i, child) in self.spawn.iter().enumerate() {
            let key = |field: &str| format!("spawn[{i}].{field}");
            if let Some(cpu) = child.cpu.map(|c| c.resolve(i, cpus)) {
                if cpu >= cpus {
                    return err(
                        &key("cpu"),
                        format!("CPU {cpu} does not exist here (CPUs 0 to {})", cpus - 1),
                    );
                }
            }
            if child.max_restarts == 0 {
                return err(&key("max_restarts"), "must be at least 1".into());
            }
        }
        Ok(())
    }

    /// Reads the configs of the nodes this node spawns, checks that their names are
    /// unique (and not this node's), and returns them in `spawn` order.
    pub fn spawned(&self) -> Result<Vec<NodeConfig>, ConfigError> {
        let file = self
            .source
            .clone()
            .unwrap_or_else(|| PathBuf::from("<config>"));
        let mut names = vec![self.node.name.clone()];
        let mut configs = Vec::new();
        for (i, child) in self.spawn.iter().enumerate() {
            let config = NodeConfig::load_as_child(&child.config).map_err(|e| {
                ConfigError::new(&file, format!("spawn[{i}].config"), e.to_string())
            })?;
            if names.contains(&config.node.name) {
                return Err(ConfigError::new(
                    &file,
                    format!("spawn[{i}].config"),
                    format!(
                        "{}: node name {} is already taken in this cluster",
                        child.config.display(),
                        config.node.name
                    ),
                ));
            }
            names.push(config.node.name.clone());
            configs.push(config);
        }
        Ok(configs)
    }

    /// The node's role: `node.role`, else `worker` when its bridge joins another
    /// node, else `master`. A spawned node's parent is filled into `bridge.join`
    /// before this is asked, so a spawned child defaults to `worker` too.
    pub fn role(&self) -> Role {
        self.node.role.unwrap_or(match &self.bridge {
            Some(bridge) if !bridge.join.is_empty() => Role::Worker,
            _ => Role::Master,
        })
    }

    /// The config of service `name` on this node, if the node runs it.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.get(name)
    }
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into
/// "unknown field, expected one of a, b": the key already names the field.
fn clean_message(message: &str) -> String {
    // The key is already named in front; the `config` crate repeats it at the end.
    let message = match message.rfind(" for key `") {
        Some(at) if message.ends_with('`') => &message[..at],
        _ => message,
    };
    let message = match message.strip_prefix("unknown field `") {
        Some(rest) => match rest.find("`, ") {
            Some(end) => format!("unknown field, {}", &rest[end + 3..]),
            None => message.to_string(),
        },
        None => message.to_string(),
    };
    message.replace('`', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_message_names_the_alternatives() {
        assert_eq!(
            clean_message("unknown field `workrs`, expected one of `workers`, `queue` for key `services.math`"),
            "unknown field, expected one of workers, queue"
        );
        assert_eq!(
            clean_message("invalid value: expected a duration for key `services.math.timeout`"),
            "invalid value: expected a duration"
        );
    }
}
