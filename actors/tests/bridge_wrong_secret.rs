//! The cluster secret between node processes: a worker node holding another
//! secret is refused by the master and never joins, both sides log why, and a
//! worker with the right secret then joins; a bridge whose secret file is missing
//! or too short keeps the node from starting at all.
//!
//! Every child is killed by a guard when the test ends, even after a failed
//! assertion; a client that does not finish within its deadline is killed too.

mod common;

use common::*;

/// Another cluster's secret, with a trailing newline as `echo` would write it.
const OTHER_SECRET: &str = "secret-b-of-another-cluster-4567\n";

const MATH: &str = "{ math: { workers: 1 } }";
const DATA: &str = "{ data: { workers: 1 } }";

fn names(nodes: &[(String, String)]) -> Vec<&str> {
    nodes.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn a_worker_with_another_secret_is_refused_and_one_with_the_right_secret_joins() {
    let dir = tempfile::tempdir().unwrap();
    let secret_a = write_secret(dir.path());
    let secret_b = write_private(dir.path(), "b.secret", OTHER_SECRET);
    let master = NodeProcess::start_bridged(
        &write_config(
            dir.path(),
            "m.yaml",
            &cluster_config("m", "master", &secret_a, None, MATH),
        ),
        &[],
    );
    let join = master.bridge_addr();
    assert_eq!(names(&master.nodes()), ["m"]);

    let bad = NodeProcess::start_bridged(
        &write_config(
            dir.path(),
            "bad.yaml",
            &cluster_config("w-bad", "worker", &secret_b, Some(join), DATA),
        ),
        &[],
    );
    // The dialer checks the master's proof first, finds it wrong and refuses; the
    // master hears the refusal. Both say why.
    master.wait_logged("the master's rejection of w-bad", |l| {
        l.contains("rejected connection from")
            && (l.contains("wrong cluster secret") || l.contains("failed the cluster secret check"))
    });
    bad.wait_logged("w-bad's refusal", |l| {
        l.contains("refused")
            && l.contains(join)
            && (l.contains("failed the cluster secret check") || l.contains("wrong cluster secret"))
    });
    // The master's view: itself only. And w-bad's: itself only.
    assert_eq!(
        master.nodes(),
        [("m".to_string(), "running".to_string())],
        "master stderr:\n{}",
        master.log()
    );
    assert_eq!(
        names(&bad.nodes()),
        ["w-bad"],
        "w-bad stderr:\n{}",
        bad.log()
    );
    // Neither side ever linked.
    assert!(
        !master.logged(|l| l.contains("linked with node w-bad")),
        "{}",
        master.log()
    );
    assert!(
        !bad.logged(|l| l.contains("linked with node")),
        "{}",
        bad.log()
    );
    // A request for the master's service from w-bad does not cross.
    let out = bad.cli(&["request", "math", "sum", r#"{"a":1,"b":2}"#]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.starts_with("error: NoSuchService:"), "{out:?}");

    let good = NodeProcess::start_bridged(
        &write_config(
            dir.path(),
            "good.yaml",
            &cluster_config("w-good", "worker", &secret_a, Some(join), DATA),
        ),
        &[],
    );
    poll("the master sees m and w-good running", || {
        master.nodes()
            == [
                ("m".to_string(), "running".to_string()),
                ("w-good".to_string(), "running".to_string()),
            ]
    });
    poll("w-good reaches the master's math service", || {
        let out = good.cli(&["request", "math", "sum", r#"{"a":40,"b":2}"#]);
        out.code() == 0 && out.stdout == "{\"sum\":42}\n"
    });
    // w-bad is still out, still refused.
    assert_eq!(names(&master.nodes()), ["m", "w-good"]);
    assert!(
        !master.logged(|l| l.contains("linked with node w-bad")),
        "{}",
        master.log()
    );
}

#[test]
fn a_bridge_without_a_usable_secret_file_keeps_the_node_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.secret");
    let short = write_private(dir.path(), "short.secret", "too-short\n");
    for (file, secret, problem) in [
        ("missing.yaml", &missing, "cannot read"),
        ("short.yaml", &short, "at least 16"),
    ] {
        let config = write_config(
            dir.path(),
            file,
            &cluster_config("lonely", "master", secret, None, MATH),
        );
        let out = run(colony_command()
            .env("RUST_LOG", "info")
            .args(["node", "--config"])
            .arg(&config));
        assert_ne!(out.code(), 0, "{file}: {out:?}");
        assert!(
            out.stderr.contains("bridge.secret_file")
                && out.stderr.contains(&secret.display().to_string())
                && out.stderr.contains(problem),
            "{file}: {out:?}"
        );
        assert!(
            !out.stderr.contains("HTTP API on"),
            "{file}: the API came up: {out:?}"
        );
    }
}
