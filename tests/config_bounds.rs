//! Configs that once passed check-config and then failed the node: absurd numbers,
//! fractions where counts belong, alias bombs, missing or world-readable secret
//! files, plain TCP off loopback, a worker config that forgot its role. Each is
//! refused by the one check `colony check-config` and `Node::start` share, with
//! the key and the problem named, memory stays bounded, and a good config next to
//! it still starts and serves.
//!
//! No test here sets environment variables (the tests of a file share a process);
//! overrides reaching children are tested in `actors/tests/spawn_env_overrides.rs`.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use colony::config::Role;
use colony::{ConfigError, Node, NodeConfig, StartError};
use common::*;

const FILE: &str = "configs/x.yaml";

fn parse(yaml: &str) -> Result<NodeConfig, ConfigError> {
    let mut config = NodeConfig::parse(Path::new(FILE), yaml)?;
    config.state.mode = colony::config::StateMode::Memory;
    Ok(config)
}

fn refused(yaml: &str) -> ConfigError {
    match parse(yaml) {
        Ok(config) => panic!("config parsed but should not have: {config:?}\n{yaml}"),
        Err(e) => e,
    }
}

/// Everything the node refuses at start, as `colony check-config` checks it.
fn check(config: &NodeConfig) -> Result<(), ConfigError> {
    colony::node::check::check(config, Path::new(FILE), &test_app()).map(|_| ())
}

/// The peak resident memory of this process, in KiB.
fn peak_kib() -> u64 {
    proc_kb("self", "VmHWM")
}

fn service(body: &str) -> String {
    format!("node: {{ name: alpha, threads: 1 }}\nservices:\n  calc: {body}\n")
}

#[test]
fn counts_past_their_bounds_are_refused_with_the_bound_named() {
    let cases = [
        (service("{ concurrency: 18446744073709551615 }"), "services.calc.concurrency"),
        (service("{ concurrency: 100001 }"), "services.calc.concurrency"),
        (service("{ workers: 10001 }"), "services.calc.workers"),
        (service("{ workers: 100, concurrency: 100000 }"), "services.calc.workers × concurrency"),
        (service("{ queue: 10000001 }"), "services.calc.queue"),
        (service("{ timeout: 300000000000y }"), "services.calc.timeout"),
        ("node: { name: alpha, threads: 100000 }\n".to_string(), "node.threads"),
        (
            "node: { name: alpha }\nbridge: { listen: 127.0.0.1:0, secret_file: s, max_frame: 268435457 }\n"
                .to_string(),
            "bridge.max_frame",
        ),
        (
            "node: { name: alpha }\nqueues: { jobs: { capacity: 10000001 } }\n".to_string(),
            "queues.jobs.capacity",
        ),
        (
            "node: { name: alpha }\nqueues: { jobs: { max_bytes: 4294967297 } }\n".to_string(),
            "queues.jobs.max_bytes",
        ),
        (
            "node: { name: alpha }\nqueues: { jobs: { max_bytes: 0 } }\n".to_string(),
            "queues.jobs.max_bytes",
        ),
    ];
    for (yaml, key) in cases {
        let err = refused(&yaml);
        assert!(
            err.key == key || err.key.starts_with(key),
            "{yaml}: expected key {key}, got {err}"
        );
        assert!(!err.problem.is_empty(), "{err}");
    }
    // The bounds themselves pass.
    let at_bounds = service("{ workers: 10, concurrency: 100000, queue: 10000000 }");
    parse(&at_bounds).expect("values at their bounds are accepted");
    parse("node: { name: alpha, threads: 1024 }\n").expect("1024 threads");
}

#[test]
fn counts_must_be_whole_numbers() {
    for (yaml, key) in [
        (service("{ workers: 1.5 }"), "services.calc.workers"),
        (service("{ concurrency: -1 }"), "services.calc.concurrency"),
        (service("{ queue: many }"), "services.calc.queue"),
        (
            "node: { name: alpha, threads: 2.0 }\n".to_string(),
            "node.threads",
        ),
    ] {
        let err = refused(&yaml);
        assert_eq!(err.key, key, "{yaml}: {err}");
        assert!(
            err.problem.contains("whole number") || err.problem.contains("negative"),
            "{yaml}: {err}"
        );
    }
    let config = parse(&service("{ workers: 3 }")).expect("an integer is fine");
    assert_eq!(config.services["calc"].workers, Some(3));

    // A number in quotes is text, and a number past u64 says it is too large,
    // not that it is a fraction.
    let err = refused(&service(r#"{ workers: "3" }"#));
    assert_eq!(err.key, "services.calc.workers", "{err}");
    assert!(err.problem.contains("without quotes"), "{err}");
    let err = refused(&service("{ concurrency: 18446744073709551616 }"));
    assert!(err.problem.contains("too large"), "{err}");
    let err = refused(&service("{ workers: 1.0 }"));
    assert!(err.problem.contains("1.0 is not a whole number"), "{err}");
}

#[test]
fn durations_too_short_to_work_are_refused() {
    let err = refused("node: { name: alpha }\napi: { read_timeout: 1ms }\n");
    assert_eq!(err.key, "api.read_timeout", "{err}");
    assert!(
        err.problem.contains("shorter than the least allowed"),
        "{err}"
    );
    let err = refused(
        "node: { name: alpha }\nbridge: { listen: 127.0.0.1:0, secret_file: s, heartbeat: 1ms }\n",
    );
    assert_eq!(err.key, "bridge.heartbeat", "{err}");
    assert!(
        err.problem.contains("shorter than the least allowed"),
        "{err}"
    );
    parse("node: { name: alpha }\napi: { read_timeout: 100ms }\n").expect("100ms is enough");
}

#[test]
fn a_huge_node_name_is_cut_in_the_message() {
    let name = "x".repeat(1_000_000);
    let err = refused(&format!("node: {{ name: \"{name}\" }}\n"));
    assert_eq!(err.key, "node.name", "{err}");
    assert!(
        err.to_string().len() < 1000,
        "{} bytes",
        err.to_string().len()
    );
}

#[test]
fn an_alias_bomb_is_refused_without_expanding_it() {
    // Nine levels of ten aliases each: 10^9 values once expanded.
    let mut bomb = String::from("node: { name: alpha }\nx0: &x0 [a, a, a, a, a, a, a, a, a, a]\n");
    for level in 1..10 {
        let prev = format!("*x{}", level - 1);
        let refs = [prev.as_str(); 10].join(", ");
        bomb.push_str(&format!("x{level}: &x{level} [{refs}]\n"));
    }
    let before = peak_kib();
    let err = refused(&bomb);
    let grown = peak_kib().saturating_sub(before);
    assert!(err.problem.contains("aliases"), "{err}");
    assert!(
        grown < 64 * 1024,
        "parsing the bomb grew the peak by {grown} KiB"
    );

    // So is a file nested past the bound, and one past 1 MiB.
    let deep = format!(
        "node: {{ name: alpha }}\nx: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let err = refused(&deep);
    assert!(
        err.problem.contains("deeper") || err.problem.contains("recursion limit"),
        "{err}"
    );
    let big = format!("node: {{ name: alpha }}\n#{}\n", "x".repeat(1024 * 1024));
    assert!(refused(&big).problem.contains("at most"));
}

#[test]
fn a_node_that_joins_another_is_a_worker_unless_it_says_otherwise() {
    let secret = secret_file("a-cluster-secret-for-tests-only");
    let joining = format!(
        "node: {{ name: alpha }}\nbridge: {{ listen: 127.0.0.1:0, join: [127.0.0.1:7100], secret_file: {} }}\n",
        secret.path().display()
    );
    assert_eq!(parse(&joining).expect("parses").role(), Role::Worker);
    let alone = format!(
        "node: {{ name: alpha }}\nbridge: {{ listen: 127.0.0.1:0, secret_file: {} }}\n",
        secret.path().display()
    );
    assert_eq!(parse(&alone).expect("parses").role(), Role::Master);
    let explicit = joining.replace("name: alpha", "name: alpha, role: master");
    assert_eq!(parse(&explicit).expect("parses").role(), Role::Master);
}

#[test]
fn plain_tcp_off_loopback_needs_tls_or_insecure() {
    let secret = secret_file("a-cluster-secret-for-tests-only");
    let bridge = |extra: &str| {
        format!(
            "node: {{ name: alpha }}\nbridge: {{ listen: 0.0.0.0:0, secret_file: {}{extra} }}\n",
            secret.path().display()
        )
    };
    let err = refused(&bridge(""));
    assert_eq!(err.key, "bridge.tls", "{err}");
    assert!(err.problem.contains("insecure"), "{err}");
    parse(&bridge(", insecure: true")).expect("insecure: true allows it");
    let joins_out = format!(
        "node: {{ name: alpha }}\nbridge: {{ listen: 127.0.0.1:0, join: [10.1.2.3:7100], secret_file: {} }}\n",
        secret.path().display()
    );
    assert_eq!(refused(&joins_out).key, "bridge.tls");
}

#[test]
fn cpu_auto_spreads_over_the_cpus_that_exist_and_a_missing_cpu_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = dir.path().join("child.yaml");
    std::fs::write(&child, "node: { name: child, threads: 1 }\n").expect("write child");
    let spawning = |cpu: &str| {
        format!(
            "node: {{ name: alpha, threads: 1 }}\nspawn:\n  - {{ config: {}, cpu: {cpu} }}\n",
            child.display()
        )
    };
    let config = parse(&spawning("auto")).expect("cpu: auto");
    check(&config).expect("cpu: auto checks on any machine");
    let err = refused(&spawning("100000"));
    assert_eq!(err.key, "spawn[0].cpu", "{err}");
    assert!(err.problem.contains("does not exist"), "{err}");
    assert_eq!(refused(&spawning("often")).key, "spawn[0].cpu");
}

#[actix_rt::test]
async fn missing_or_exposed_secret_files_are_refused_by_check_and_start_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("cluster.secret");
    let with_secret = |path: &Path| {
        format!(
            "node: {{ name: alpha, threads: 1 }}\nbridge: {{ listen: 127.0.0.1:0, secret_file: {} }}\nservices: {{ calc: {{ workers: 1 }} }}\n",
            path.display()
        )
    };

    // Missing.
    let config = parse(&with_secret(&secret)).expect("parses");
    let err = check(&config).unwrap_err();
    assert_eq!(err.key, "bridge.secret_file", "{err}");
    assert!(err.problem.contains("cannot read"), "{err}");
    match Node::start(test_app(), config).await {
        Err(StartError::Config(e)) => assert_eq!(e, err),
        other => panic!("a node with a missing secret must not start: {other:?}"),
    }

    // Readable by others.
    let mut file = std::fs::File::create(&secret).expect("create secret");
    file.write_all(b"a-cluster-secret-for-tests-only")
        .expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = parse(&with_secret(&secret)).expect("parses");
    let err = check(&config).unwrap_err();
    assert!(
        err.problem
            .contains(&format!("chmod 600 {}", secret.display())),
        "{err}"
    );
    assert!(Node::start(test_app(), config).await.is_err());

    // Token files follow the same rule.
    let token = dir.path().join("api.token");
    std::fs::write(&token, "a-token").expect("write token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let with_token = format!(
        "node: {{ name: alpha, threads: 1 }}\napi: {{ listen: 127.0.0.1:0, token_file: {} }}\n",
        token.display()
    );
    let err = check(&parse(&with_token).expect("parses")).unwrap_err();
    assert_eq!(err.key, "api.token_file", "{err}");
    assert!(err.problem.contains("chmod 600"), "{err}");

    // Not a regular file (a FIFO would block the reader, a directory is no
    // secret), or too large to be one.
    let fifo = dir.path().join("fifo.secret");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let huge = dir.path().join("huge.secret");
    std::fs::write(&huge, vec![b'k'; 64 * 1024 + 1]).expect("write");
    std::fs::set_permissions(&huge, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for (path, problem) in [
        (&fifo, "not a regular file"),
        (&dir.path().to_path_buf(), "not a regular file"),
        (&huge, "at most 65536"),
    ] {
        let config = parse(&with_secret(path)).expect("parses");
        let err = check(&config).unwrap_err();
        assert!(err.problem.contains(problem), "{err}");
        assert!(Node::start(test_app(), config).await.is_err());
    }

    // Fixed, the same configs start and serve.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = parse(&with_secret(&secret)).expect("parses");
    check(&config).expect("a private secret checks");
    let node = Node::start(test_app(), config).await.expect("starts");
    let sum = node
        .request("calc", Add { a: 2, b: 3 })
        .await
        .expect("serves");
    assert_eq!(sum.sum, 5);
    node.shutdown(std::time::Duration::from_secs(1)).await;
}
