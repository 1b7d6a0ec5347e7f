//! `colony startup`: a systemd unit that runs a node at boot, as `pm2 startup`
//! does for a pm2 process list.
//!
//! The unit runs `colony node --config FILE` from the directory `colony
//! startup` ran in (where the config's relative paths and `.colony/` are),
//! restarts it when it fails, and stops it with SIGTERM: the node drains for up
//! to `--drain`, and systemd waits that long plus a margin before it kills.

use std::path::Path;
use std::time::Duration;

/// How much longer than the drain systemd waits before it kills the node: the
/// node first stops the children it spawned (15 s at most), then drains.
const STOP_MARGIN: Duration = Duration::from_secs(20);

/// The unit running `exe node --config CONFIG --drain DRAIN` in `dir` as `user`
/// (root when none); an error names a path systemd cannot carry.
pub(super) fn unit(
    exe: &Path,
    config: &Path,
    dir: &Path,
    node: &str,
    user: Option<&str>,
    drain: Duration,
) -> Result<String, String> {
    let exe = quoted(exe)?;
    let config = quoted(config)?;
    let dir = plain(dir)?;
    let drain_secs = drain.as_secs().max(1);
    let stop = drain.saturating_add(STOP_MARGIN).as_secs();
    let user = match user {
        Some(user) if valid_user(user) => format!("User={user}\n"),
        Some(user) => {
            return Err(format!(
                "`{}` is not a user name",
                crate::logging::untrusted(user)
            ))
        }
        None => String::new(),
    };
    Ok(format!(
        "# colony node {node}, written by `colony startup`. Install it with:
#   colony startup --config ... | sudo tee /etc/systemd/system/colony.service
#   sudo systemctl daemon-reload && sudo systemctl enable --now colony
[Unit]
Description=colony node {node}
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
{user}WorkingDirectory={dir}
ExecStart={exe} node --config {config} --drain {drain_secs}s
Environment=RUST_LOG=info
Restart=on-failure
RestartSec=1s
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec={stop}s
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"
    ))
}

/// A path as one `ExecStart=` argument: quoted, with systemd's `%` and `$`
/// specifiers escaped.
fn quoted(path: &Path) -> Result<String, String> {
    let text = plain(path)?
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('$', "$$");
    Ok(format!("\"{text}\""))
}

/// A path as a unit setting's value; `%` escaped, no line breaks.
fn plain(path: &Path) -> Result<String, String> {
    let Some(text) = path.to_str() else {
        return Err(format!("{} is not UTF-8", path.display()));
    };
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{} holds a control character, which a systemd unit cannot carry",
            crate::logging::untrusted(text)
        ));
    }
    Ok(text.replace('%', "%%"))
}

/// A user name systemd takes: letters, digits, `_`, `-`, `.`, not starting
/// with a digit or `-`, at most 32 bytes.
fn valid_user(user: &str) -> bool {
    let first_ok = user
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok
        && user.len() <= 32
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_and_escaped_and_bad_input_is_refused() {
        let unit = unit(
            Path::new("/opt/my apps/colony"),
            Path::new("/etc/colony/100%.yaml"),
            Path::new("/srv/colony"),
            "master",
            Some("colony"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(unit.contains(
            "ExecStart=\"/opt/my apps/colony\" node --config \"/etc/colony/100%%.yaml\" --drain 10s\n"
        ));
        assert!(unit.contains("User=colony\n"));
        assert!(unit.contains("TimeoutStopSec=30s\n"));
        let line_break = unit_for(Path::new("/srv/a\nExecStartPre=/bin/sh"));
        assert!(line_break.unwrap_err().contains("control character"));
        let bad_user = super::unit(
            Path::new("/c"),
            Path::new("/c.yaml"),
            Path::new("/"),
            "m",
            Some("root\nExecStartPre=x"),
            Duration::from_secs(1),
        );
        assert!(bad_user.is_err());
    }

    fn unit_for(dir: &Path) -> Result<String, String> {
        unit(
            Path::new("/c"),
            Path::new("/c.yaml"),
            dir,
            "m",
            None,
            Duration::from_secs(1),
        )
    }
}
