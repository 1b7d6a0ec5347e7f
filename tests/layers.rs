//! The layering of `src/`: every file imports only from its own layer or the
//! layers below it, and no files of `src/` import each other in a circle.
//!
//! The layers, from the ground up, are [`LAYERS`]; each top-level module of
//! `src/` belongs to exactly one. An import is any path a file names through
//! `crate::`, `super::`, `self::` or a child module it declares, read from the
//! source as text (comments and `#[cfg(test)]` modules left out). A new module
//! must be placed in a layer here before it can be built on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer `i` may import from layers `0..=i`.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "core types",
        &[
            "error", "message", "guard", "deadline", "events", "logging", "backoff", "config",
            "status", "trace",
        ],
    ),
    (
        "in-node runtime",
        &[
            "worker",
            "dealer",
            "supervisor",
            "root",
            "router",
            "service",
            "inbox",
            "metrics",
        ],
    ),
    (
        "cluster services",
        &[
            "transport",
            "remote",
            "pubsub",
            "jobs",
            "locks",
            "confirm",
            "state",
            "store",
        ],
    ),
    ("transports", &["bridge", "memory", "nats", "messenger"]),
    ("the node", &["node", "app"]),
    ("surfaces", &["api", "cli", "spawn", "certs", "run"]),
];

/// The most lines a file of `src/` may have.
const MAX_LINES: usize = 600;

#[test]
fn no_file_is_longer_than_600_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let long: Vec<String> = module_files(&src)
        .values()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(path).expect("read").lines().count();
            (lines > MAX_LINES).then(|| format!("{} has {lines} lines", rel(path)))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these below {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn every_import_runs_down_the_layers_and_none_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = module_files(&src);
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, modules))| modules.iter().map(move |m| (*m, i)))
        .collect();

    let mut problems = BTreeSet::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &files {
        if module.is_empty() {
            continue; // lib.rs: the crate's root re-exports every layer.
        }
        let Some(&layer) = layer_of.get(module[0].as_str()) else {
            problems.insert(format!(
                "{}: module `{}` is in no layer of tests/layers.rs",
                rel(path),
                module[0]
            ));
            continue;
        };
        let text = std::fs::read_to_string(path).expect("read a source file");
        for target in imports(module, &code_of(&text)) {
            let Some(target_path) = resolve(&files, &target) else {
                continue;
            };
            if target_path == *path || target.is_empty() {
                continue;
            }
            graph
                .entry(rel(path))
                .or_default()
                .insert(rel(&target_path));
            let target_layer = layer_of.get(target[0].as_str()).copied().unwrap_or(0);
            let edge = (rel(path), rel(&target_path));
            if target_layer > layer {
                problems.insert(format!(
                    "{} ({}) imports {} ({}), a layer above it",
                    edge.0, LAYERS[layer].0, edge.1, LAYERS[target_layer].0
                ));
            }
        }
    }
    for circle in circles(&graph) {
        problems.insert(format!("files import each other in a circle: {circle:?}"));
    }
    let problems: Vec<String> = problems.into_iter().collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A module path, `["bridge", "peer"]` for `src/bridge/peer.rs`.
type Module = Vec<String>;

fn rel(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every `.rs` file under `src`, by its module path.
fn module_files(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read src/")
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(src, &mut paths);
    paths
        .into_iter()
        .map(|path| {
            let inner = path
                .strip_prefix(src)
                .expect("under src/")
                .with_extension("");
            let mut module: Module = inner
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|m| m == "mod" || m == "lib") {
                module.pop();
            }
            (module, path)
        })
        .collect()
}

/// The file a path names: the longest prefix of it that is a module file.
fn resolve(files: &BTreeMap<Module, PathBuf>, target: &[String]) -> Option<PathBuf> {
    (1..=target.len())
        .rev()
        .find_map(|n| files.get(&target[..n].to_vec()).cloned())
}

/// `text` without comments, string contents or the `#[cfg(test)]` module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '"' => {
                out.push('"');
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push('"');
            }
            '\'' => {
                // A char literal ('x', '\n') is skipped; a lifetime is kept.
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with('\\') {
                    for c in chars.by_ref() {
                        if c == '\'' {
                            break;
                        }
                    }
                } else if rest.chars().nth(1) == Some('\'') {
                    chars.next();
                    chars.next();
                } else {
                    out.push(c);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every module path `code` (of file `module`) names.
fn imports(module: &[String], code: &str) -> Vec<Module> {
    let children: BTreeSet<String> = code
        .split(';')
        .filter_map(|stmt| {
            let words: Vec<&str> = stmt.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "mod")?;
            (at + 2 == words.len()).then(|| words[at + 1].to_string())
        })
        .collect();
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let word_start = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b':';
        if !word_start || !is_ident(bytes[i]) {
            i += 1;
            continue;
        }
        let end = (i..bytes.len())
            .find(|&j| !is_ident(bytes[j]))
            .unwrap_or(bytes.len());
        let word = &code[i..end];
        let base: Option<Module> = match word {
            "crate" => Some(Vec::new()),
            "super" => Some(module[..module.len().saturating_sub(1)].to_vec()),
            "self" => Some(module.to_vec()),
            w if children.contains(w) => {
                let mut m = module.to_vec();
                m.push(w.to_string());
                // The child's name alone (`peer::run`) is read by `path_tree`.
                if code[end..].starts_with("::") {
                    found.push(m);
                }
                i = end;
                continue;
            }
            _ => None,
        };
        if let Some(base) = base {
            if code[end..].starts_with("::") {
                path_tree(&base, &code[end + 2..], &mut found);
            }
        }
        i = end;
    }
    found
}

/// Reads `a::b::{c, d::e}` after `base::`, pushing every path it names.
fn path_tree(base: &[String], rest: &str, found: &mut Vec<Module>) {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0usize;
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    path_tree(base, &group[start..i], found);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    path_tree(base, &group[start..i], found);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let word = &rest[..end];
    if word.is_empty() || word == "self" {
        found.push(base.to_vec());
        return;
    }
    let mut next = base.to_vec();
    if word == "super" {
        next.pop();
    } else {
        next.push(word.to_string());
    }
    if rest[end..].starts_with("::") {
        path_tree(&next, &rest[end + 2..], found);
    } else {
        found.push(next);
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The strongly connected groups of more than one file, each sorted.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let nodes: Vec<&String> = graph
        .keys()
        .chain(graph.values().flatten())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for next in graph.get(&n).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut placed = BTreeSet::new();
    for n in &nodes {
        if placed.contains(*n) || !reaches[n].contains(*n) {
            continue;
        }
        let circle: Vec<String> = nodes
            .iter()
            .filter(|m| reaches[n].contains(**m) && reaches[**m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        placed.extend(circle.iter().cloned());
        out.push(circle);
    }
    out
}
