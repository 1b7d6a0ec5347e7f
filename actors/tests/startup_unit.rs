//! `colony startup` prints a systemd unit that runs the node with its config at
//! boot from the directory it was asked in, restarts it on failure and stops it
//! with SIGTERM within the drain (plus the 15 s its children may take, and 5 s). The unit is checked with
//! `systemd-analyze verify` (no error and no warning) where that exists, and its
//! sections are parsed in any case. A config that does not load prints no unit.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;

/// The unit's sections: name → key → values (keys may repeat).
fn sections(unit: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut all: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = None;
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_string());
            all.entry(name.to_string()).or_default();
            continue;
        }
        let section = current
            .clone()
            .unwrap_or_else(|| panic!("`{line}` outside a section"));
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("`{line}` is no key=value"));
        all.entry(section)
            .or_default()
            .entry(key.to_string())
            .or_default()
            .push(value.to_string());
    }
    all
}

#[test]
fn startup_prints_a_unit_systemd_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "edge node.yaml",
        "node: { name: edge }\nstate: { mode: memory }\n",
    );
    let out = run(colony_command().current_dir(dir.path()).args([
        "startup",
        "--config",
        "edge node.yaml",
        "--user",
        "root",
        "--drain",
        "7s",
    ]));
    assert_eq!(out.code(), 0, "{out:?}");
    let unit = out.stdout;
    let parsed = sections(&unit);
    let one = |section: &str, key: &str| -> String {
        let values = &parsed[section][key];
        assert_eq!(values.len(), 1, "{section}.{key}: {values:?}");
        values[0].clone()
    };
    assert_eq!(one("Unit", "Description"), "colony node edge");
    let exec = one("Service", "ExecStart");
    let colony = std::fs::canonicalize(COLONY).unwrap();
    let config = std::fs::canonicalize(&config).unwrap();
    assert_eq!(
        exec,
        format!(
            "\"{}\" node --config \"{}\" --drain 7s",
            colony.display(),
            config.display()
        )
    );
    assert_eq!(
        Path::new(&one("Service", "WorkingDirectory")),
        std::fs::canonicalize(dir.path()).unwrap()
    );
    assert_eq!(one("Service", "User"), "root");
    assert_eq!(one("Service", "Restart"), "on-failure");
    assert_eq!(one("Service", "KillSignal"), "SIGTERM");
    assert_eq!(one("Service", "TimeoutStopSec"), "27s");
    assert_eq!(one("Install", "WantedBy"), "multi-user.target");

    // systemd's own reading of it: no error, no warning.
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if analyze.is_ok_and(|o| o.status.success()) {
        let file = dir.path().join("colony-edge.service");
        std::fs::write(&file, &unit).unwrap();
        let verify = run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&file));
        assert_eq!(verify.code(), 0, "{verify:?}\n{unit}");
        assert_eq!(verify.stderr.trim(), "", "{unit}");
    }

    // A config that does not load: no unit, exit code 2, the error named.
    write_config(dir.path(), "bad.yaml", "node: { name: Not Valid }\n");
    let bad = run(colony_command()
        .current_dir(dir.path())
        .args(["startup", "--config", "bad.yaml"]));
    assert_eq!(bad.code(), 2, "{bad:?}");
    assert!(bad.stdout.is_empty());
    assert!(bad.stderr.contains("node.name"), "{bad:?}");
}
