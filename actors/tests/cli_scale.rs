//! `colony scale SERVICE N [--node NODE]` end to end: a node runs as a child
//! process, the command prints one line saying what it did, `colony status`
//! shows the new workers at once, and a count out of bounds or not a number is
//! refused with the node's (or the command line's) reason.

mod common;

use common::*;

fn math_rows(status: &str) -> Vec<String> {
    status
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| id.starts_with("cli/math/"))
        .map(String::from)
        .collect()
}

#[test]
fn scale_prints_what_it_did_and_status_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "cli.yaml",
        "
node: { name: cli, role: master, threads: 2 }
api: { listen: 127.0.0.1:0 }
services:
  math: { workers: 1 }
",
    );
    let node = NodeProcess::start(&config, &[]);
    node.wait_all_running();

    let out = node.cli(&["scale", "math", "3"]);
    assert_eq!(
        (out.code(), out.stdout.as_str(), out.stderr.as_str()),
        (
            0,
            "scaled math on cli up from 1 to 3 workers: 2 starting\n",
            ""
        ),
        "{out:?}"
    );
    let out = node.cli(&["status"]);
    assert_eq!(
        math_rows(&out.stdout),
        ["cli/math/0", "cli/math/1", "cli/math/2"]
    );
    poll("the three math workers run", || {
        (0..3).all(|i| worker(&node.status(), &format!("cli/math/{i}"))["state"] == "running")
    });

    let out = node.cli(&["scale", "math", "2", "--node", "cli"]);
    assert_eq!(
        out.stdout,
        "scaled math on cli down from 3 to 2 workers: 1 stopping once its requests are done\n",
        "{out:?}"
    );
    let out = node.cli(&["status"]);
    assert_eq!(math_rows(&out.stdout), ["cli/math/0", "cli/math/1"]);
    let out = node.cli(&["scale", "math", "2"]);
    assert_eq!(out.stdout, "math on cli has 2 workers already\n", "{out:?}");

    let out = node.cli(&["scale", "math", "0"]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: BadRequest: 0 workers is fewer than the least allowed, 1"),
        "{out:?}"
    );
    let out = node.cli(&["scale", "math", "20000"]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("most allowed, 10000"), "{out:?}");
    let out = node.cli(&["scale", "nope", "2"]);
    assert!(out.stderr.starts_with("error: NoSuchService:"), "{out:?}");
    // Not a count: the command line refuses it before asking the node.
    let out = node.cli(&["scale", "math", "three"]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("three"), "{out:?}");

    let out = node.cli(&["status"]);
    assert_eq!(math_rows(&out.stdout), ["cli/math/0", "cli/math/1"]);
    node.terminate_gracefully();
}
