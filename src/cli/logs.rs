//! `colony logs`: the cluster's log lines (`GET /v1/logs`) printed as `pm2 logs`
//! prints them, one line each:
//!
//! ```text
//! worker-a | 06:14:49.123 INFO  [worker-a/math/0] actors::math: sum 1+2 trace=4bf9…
//! ```
//!
//! the node, the time (UTC), the level, the worker (when a worker logged it),
//! the target and the message, and the trace id when the line has one. When
//! stdout is a terminal and `NO_COLOR` is not set, each node's name has a
//! colour of its own, errors are red and warnings yellow. Control characters
//! in a line are shown escaped, so a line cannot drive the terminal.

use std::io::{BufRead, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// What `colony logs` asks for.
#[derive(Debug)]
pub(super) struct Ask {
    /// Only this node's lines.
    pub(super) node: Option<String>,
    /// Then every new line, until interrupted.
    pub(super) follow: bool,
    /// The least severe level shown.
    pub(super) level: Option<String>,
    /// The newest lines printed first.
    pub(super) lines: usize,
}

/// The longest line read from the node; its lines are far shorter.
const MAX_LINE: u64 = 1024 * 1024;
/// How long printing the kept lines may take, without `--follow`.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Prints the lines `ask` asks the node at `api` for; exits 1 with `error: …`
/// when the node refuses or cannot be reached.
pub(super) fn run(api: &str, token: Option<String>, ask: &Ask) -> ExitCode {
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::FAILURE
    };
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)));
    if !ask.follow {
        config = config.timeout_global(Some(TIMEOUT));
    }
    let agent: ureq::Agent = config.build().into();
    let url = format!("{}/v1/logs?{}", api.trim_end_matches('/'), query(ask));
    let mut req = agent.get(&url);
    if let Some(token) = &token {
        req = req.header("Authorization", format!("Bearer {token}"));
    }
    let response = match req.call() {
        Ok(response) => response,
        Err(e) => return fail(format!("NodeDown: cannot reach {url} ({e})")),
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
    let mut printer = Printer::new(colour_wanted());
    let mut reader = std::io::BufReader::new(body.into_reader());
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line);
        match read {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(_) if !line.ends_with(b"\n") && line.len() as u64 >= MAX_LINE => {
                return fail(format!("the node sent a line longer than {MAX_LINE} bytes"))
            }
            Ok(_) => {}
            Err(e) => return fail(format!("the stream broke: {e}")),
        }
        let text = printer.line(&String::from_utf8_lossy(&line));
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            // stdout closed (piped into `head`): done.
            return ExitCode::SUCCESS;
        }
    }
}

/// The query string of `ask`.
fn query(ask: &Ask) -> String {
    let mut query = format!("lines={}", ask.lines);
    if ask.follow {
        query.push_str("&follow=1");
    }
    if let Some(level) = &ask.level {
        query.push_str(&format!("&level={}", encode(level)));
    }
    if let Some(node) = &ask.node {
        query.push_str(&format!("&node={}", encode(node)));
    }
    query
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether to colour: stdout is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>).
fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A line of the stream as the node writes it.
#[derive(Deserialize)]
struct Line {
    ts: String,
    node: String,
    level: String,
    target: String,
    worker: Option<String>,
    trace: Option<String>,
    msg: String,
}

/// Lines of a node that left its ring before they were read.
#[derive(Deserialize)]
struct Dropped {
    node: String,
    dropped: u64,
}

/// ANSI colours given to nodes in the order they first appear.
const PALETTE: [&str; 6] = ["36", "32", "35", "34", "33", "96"];

/// Turns the stream's JSON lines into printed lines.
pub(super) struct Printer {
    colour: bool,
    /// Nodes in the order they first appeared.
    nodes: Vec<String>,
    width: usize,
}

impl Printer {
    /// A printer that colours when `colour`.
    pub(super) fn new(colour: bool) -> Printer {
        Printer {
            colour,
            nodes: Vec::new(),
            width: 0,
        }
    }

    /// The printed form of one JSON line (as it came, escaped, if it is not a
    /// line of the stream).
    pub(super) fn line(&mut self, json: &str) -> String {
        let json = json.trim_end();
        if let Ok(line) = serde_json::from_str::<Line>(json) {
            let level = line.level.to_ascii_uppercase();
            let level = match (self.colour, level.as_str()) {
                (true, "ERROR") => format!("\x1b[31m{level:<5}\x1b[0m"),
                (true, "WARN") => format!("\x1b[33m{level:<5}\x1b[0m"),
                _ => format!("{level:<5}"),
            };
            let worker = line
                .worker
                .map(|w| format!("[{}] ", clean(&w)))
                .unwrap_or_default();
            let trace = line
                .trace
                .map(|t| format!(" trace={}", clean(&t)))
                .unwrap_or_default();
            format!(
                "{} {} {level} {worker}{}: {}{trace}",
                self.node(&line.node),
                time_of(&line.ts),
                clean(&line.target),
                clean(&line.msg),
            )
        } else if let Ok(dropped) = serde_json::from_str::<Dropped>(json) {
            format!(
                "{} {} lines dropped: they left the node's log before they were read",
                self.node(&dropped.node),
                dropped.dropped
            )
        } else {
            clean(json)
        }
    }

    /// `NODE |`, padded to the longest node so far, in the node's colour.
    fn node(&mut self, node: &str) -> String {
        let node = clean(node);
        let index = match self.nodes.iter().position(|n| *n == node) {
            Some(index) => index,
            None => {
                self.width = self.width.max(node.chars().count()).min(32);
                self.nodes.push(node.clone());
                self.nodes.len() - 1
            }
        };
        let padded = format!("{node:<width$} |", width = self.width);
        if self.colour {
            format!("\x1b[{}m{padded}\x1b[0m", PALETTE[index % PALETTE.len()])
        } else {
            padded
        }
    }
}

/// `HH:MM:SS.mmm` of an RFC 3339 time, or the time as it is.
fn time_of(ts: &str) -> String {
    match ts.get(11..23) {
        Some(time) if ts.len() > 23 && ts.as_bytes()[10] == b'T' => time.to_string(),
        _ => clean(ts),
    }
}

/// `text` with its control characters escaped.
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_print_as_pm2_prints_them() {
        let mut printer = Printer::new(false);
        let line = r#"{"ts":"2026-12-02T06:14:49.123456Z","node":"worker-a","seq":3,"level":"info","target":"actors::math","worker":"worker-a/math/0","trace":"4bf92f3577b34da6a3ce929d0e0e4736","msg":"sum"}"#;
        assert_eq!(
            printer.line(line),
            "worker-a | 06:14:49.123 INFO  [worker-a/math/0] actors::math: sum trace=4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let line = r#"{"ts":"2026-12-02T06:14:49.200000Z","node":"m","seq":4,"level":"warn","target":"colony::node","worker":null,"trace":null,"msg":"evil\u001b[31m\nFORGED"}"#;
        assert_eq!(
            printer.line(line),
            "m        | 06:14:49.200 WARN  colony::node: evil\\u{1b}[31m\\nFORGED"
        );
        assert_eq!(
            printer.line(r#"{"node":"m","dropped":7}"#),
            "m        | 7 lines dropped: they left the node's log before they were read"
        );
    }

    #[test]
    fn each_node_has_its_colour_when_colouring() {
        let mut printer = Printer::new(true);
        let line = |node: &str, level: &str| {
            format!(
                r#"{{"ts":"2026-12-02T06:14:49.123456Z","node":"{node}","seq":1,"level":"{level}","target":"t","worker":null,"trace":null,"msg":"m"}}"#
            )
        };
        let a = printer.line(&line("a", "info"));
        let b = printer.line(&line("b", "error"));
        assert!(a.starts_with("\x1b[36ma |\x1b[0m"), "{a:?}");
        assert!(b.starts_with("\x1b[32mb |\x1b[0m"), "{b:?}");
        assert!(b.contains("\x1b[31mERROR\x1b[0m"), "{b:?}");
        assert!(printer.line(&line("a", "info")).starts_with("\x1b[36m"));
    }

    #[test]
    fn the_query_is_encoded() {
        let ask = Ask {
            node: Some("a b".into()),
            follow: true,
            level: Some("warn".into()),
            lines: 5,
        };
        assert_eq!(query(&ask), "lines=5&follow=1&level=warn&node=a%20b");
    }
}
