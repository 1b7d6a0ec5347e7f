//! Config errors (SPEC §4): unknown keys, unknown services and invalid values are
//! errors that name the file, the dotted key and the problem, and never a panic.
//!
//! No test here sets environment variables: the tests of one file share a process,
//! and `NodeConfig::parse` reads `COLONY__…` overrides. Overrides are tested through
//! a child process in `actors/tests/cli_end_to_end.rs`.

mod common;

use std::io::Write;
use std::path::Path;

use colony::node::check::check_services;
use colony::{ConfigError, Node, NodeConfig, StartError};

const FILE: &str = "configs/x.yaml";

/// A valid config around `services`, indented as the `services:` map's body.
fn with_services(services: &str) -> String {
    format!("node: {{ name: alpha, threads: 1 }}\nservices:\n{services}")
}

fn parse_err(yaml: &str) -> ConfigError {
    match NodeConfig::parse(Path::new(FILE), yaml) {
        Ok(config) => panic!("config parsed but should not have: {config:?}\n{yaml}"),
        Err(e) => e,
    }
}

#[test]
fn a_typo_in_a_service_key_displays_exactly_as_the_spec_example() {
    let err = parse_err(&with_services("  math:\n    workrs: 2\n"));
    assert_eq!(err.file, FILE);
    assert_eq!(err.key, "services.math.workrs");
    assert_eq!(
        err.to_string(),
        "configs/x.yaml: services.math.workrs: unknown field, expected one of workers, concurrency, queue, timeout, restart, routing, messenger"
    );
}

#[test]
fn an_unknown_top_level_key_is_named() {
    let err = parse_err("node: { name: alpha }\nservise: {}\n");
    assert_eq!(err.file, FILE);
    assert_eq!(err.key, "servise");
    assert_eq!(
        err.to_string(),
        "configs/x.yaml: servise: unknown field, expected one of node, api, bridge, nats, messenger, services, queues, state, spawn, log"
    );
}

#[test]
fn a_bad_duration_names_the_timeout_key() {
    let err = parse_err(&with_services("  math:\n    timeout: 5 parsecs\n"));
    assert_eq!(err.file, FILE);
    assert_eq!(err.key, "services.math.timeout");
    assert!(err.problem.contains("5 parsecs"), "{err}");
    assert!(err.problem.contains("duration"), "{err}");
    assert!(
        err.to_string()
            .starts_with("configs/x.yaml: services.math.timeout: "),
        "{err}"
    );
}

#[test]
fn a_bad_restart_policy_names_the_policy_key() {
    let err = parse_err(&with_services(
        "  math:\n    restart: { policy: forever }\n",
    ));
    assert_eq!(err.file, FILE);
    assert_eq!(err.key, "services.math.restart.policy");
    assert!(err.problem.contains("forever"), "{err}");
}

#[test]
fn an_uppercase_node_name_is_refused() {
    let err = parse_err("node: { name: Alpha }\n");
    assert_eq!(err.file, FILE);
    assert_eq!(err.key, "node.name");
    assert_eq!(
        err.to_string(),
        "configs/x.yaml: node.name: `Alpha` is not 1 to 32 characters of a-z, 0-9 and -"
    );
}

#[test]
fn zero_workers_are_refused() {
    let err = parse_err(&with_services("  math:\n    workers: 0\n"));
    assert_eq!(
        err.to_string(),
        "configs/x.yaml: services.math.workers: must be at least 1"
    );
    // One worker is the smallest valid count.
    NodeConfig::parse(Path::new(FILE), &with_services("  math:\n    workers: 1\n"))
        .expect("one worker is valid");
}

#[test]
fn a_backoff_whose_min_is_above_its_max_is_refused() {
    let err = parse_err(&with_services(
        "  math:\n    restart: { backoff: { min: 5s, max: 1s } }\n",
    ));
    assert_eq!(
        err.to_string(),
        "configs/x.yaml: services.math.restart.backoff: min 5s is above max 1s"
    );
    // Equal bounds are fine.
    NodeConfig::parse(
        Path::new(FILE),
        &with_services("  math:\n    restart: { backoff: { min: 1s, max: 1s } }\n"),
    )
    .expect("min == max is valid");
}

#[test]
fn load_reads_a_good_file_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "node: { name: alpha, threads: 1 }\nservices:\n  calc: { workers: 2, timeout: 750ms }\n",
    )
    .unwrap();
    let config = NodeConfig::load(&good).expect("good config loads");
    assert_eq!(config.node.name, "alpha");
    let calc = config.service("calc").expect("calc is configured");
    assert_eq!(calc.workers, Some(2));
    assert_eq!(calc.timeout, std::time::Duration::from_millis(750));
    assert_eq!(config.source.as_deref(), Some(good.as_path()));

    let missing = dir.path().join("missing.yaml");
    let err = NodeConfig::load(&missing).expect_err("a missing file is an error");
    assert_eq!(err.file, missing.display().to_string());
    assert_eq!(err.key, "");
    assert!(err.problem.starts_with("cannot read: "), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display())),
        "{err}"
    );
}

#[test]
fn a_yaml_syntax_error_is_an_error_naming_the_file_and_line() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"node: { name: alpha\nservices: [\n")
        .unwrap();
    let err = NodeConfig::load(file.path()).expect_err("broken YAML is an error");
    assert_eq!(err.file, file.path().display().to_string());
    assert_eq!(err.key, "");
    assert!(err.problem.contains("line 2"), "{err}");
}

#[test]
fn an_unknown_service_is_named_with_the_known_ones() {
    let config = NodeConfig::parse(
        Path::new(FILE),
        &with_services("  calc: { workers: 1 }\n  nope: { workers: 1 }\n"),
    )
    .expect("the file itself is valid");
    let err = check_services(&config, Path::new(FILE), &common::test_app())
        .expect_err("nope is not a service of the app");
    assert_eq!(err.file, FILE);
    assert_eq!(err.key, "services.nope");
    assert_eq!(
        err.problem,
        "unknown service, expected one of calc, chaos, guarded"
    );

    // The same config without `nope` fits the app.
    let fits =
        NodeConfig::parse(Path::new(FILE), &with_services("  calc: { workers: 1 }\n")).unwrap();
    check_services(&fits, Path::new(FILE), &common::test_app())
        .expect("calc is a service of the app");
}

#[actix_rt::test]
async fn a_node_does_not_start_with_an_unknown_service() {
    let config = NodeConfig::parse(
        Path::new(FILE),
        &with_services("  calc: { workers: 1 }\n  nope: { workers: 1 }\n"),
    )
    .unwrap();
    match Node::start(common::test_app(), config).await {
        Err(StartError::Config(e)) => {
            assert_eq!(e.file, FILE);
            assert_eq!(e.key, "services.nope");
            assert!(e.problem.starts_with("unknown service"), "{e}");
        }
        Err(other) => panic!("expected a config error, got {other}"),
        Ok(node) => panic!("node {} started with an unknown service", node.name()),
    }
}

#[test]
fn an_unknown_state_mode_is_named_with_the_modes_there_are() {
    let err = parse_err("node: { name: alpha }\nstate: { mode: bogus }\n");
    assert_eq!(err.key, "state.mode");
    assert_eq!(
        err.to_string(),
        "configs/x.yaml: state.mode: unknown variant bogus, expected durable or memory"
    );
}

#[test]
fn a_messenger_route_or_listener_that_cannot_be_used_is_named() {
    let err = parse_err(
        "node: { name: alpha }\nmessenger: { routes: { get me some popular users: data } }\n",
    );
    assert_eq!(err.key, "messenger.routes.get me some popular users");
    assert!(
        err.problem.contains("`data` is not service/subject"),
        "{err}"
    );

    let err = parse_err(&with_services(
        "  legacy:\n    messenger: [\"127.0.0.1\"]\n",
    ));
    assert_eq!(err.key, "services.legacy.messenger");
    assert!(
        err.problem.contains("`127.0.0.1` is not host:port"),
        "{err}"
    );

    let err = parse_err(
        "node: { name: alpha }\nmessenger: { shout_to: [ { to: [\"localhost:99999\"], topics: { a: b } } ] }\n",
    );
    assert_eq!(err.key, "messenger.shout_to[0].to");

    let err = parse_err("node: { name: alpha }\nmessenger: { max_message: 1 }\n");
    assert_eq!(err.key, "messenger.max_message");
}
