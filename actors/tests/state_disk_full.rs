//! A master whose state file cannot grow (a file-size limit, `ulimit -f`, makes
//! every write past it fail with `EFBIG` as a full disk does): a push that cannot
//! be written is answered `ServiceFailed` with the reason, nothing is counted for
//! it, and the node keeps serving requests. Once the disk has room again (the
//! limit is lifted with `prlimit`), pushes are written again without a restart.

mod common;

use serde_json::Value;

use common::*;

#[test]
fn a_push_that_cannot_be_written_fails_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "solo.yaml",
        "node: { name: solo, threads: 1 }\n\
         api: { listen: 127.0.0.1:0, max_body: 2097152 }\n\
         services: { math: { workers: 1 } }\n\
         queues: { big: { max_bytes: 1073741824 } }\n",
    );
    let node = NodeProcess::start_with_file_limit(&config, 4 * 1024);
    let job = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100 * 1024));
    let mut accepted = 0;
    let mut failure = None;
    for _ in 0..400 {
        let out = node.cli(&["push", "big", &job]);
        if out.code() == 0 {
            accepted += 1;
            continue;
        }
        failure = Some(out);
        break;
    }
    let failure = failure.unwrap_or_else(|| {
        panic!(
            "400 pushes of 100 KiB all fit in 4 MiB; stderr:\n{}",
            node.log()
        )
    });
    assert!(accepted > 0, "the first push fits: {failure:?}");
    let said = format!("{}{}", failure.stdout, failure.stderr);
    assert!(said.contains("ServiceFailed"), "{said}");
    assert!(
        said.contains("cluster.redb"),
        "the reason names the file: {said}"
    );

    // The node still serves, and counts only what was written.
    let out = node.cli(&["request", "math", "sum", r#"{"a":2,"b":3}"#]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains('5'), "{out:?}");
    let out = node.cli(&["queues"]);
    assert_eq!(out.code(), 0, "{out:?}");
    let all: Value = serde_json::from_str(&out.stdout).unwrap();
    let big = &all["queues"][0];
    assert_eq!(big["name"], "big");
    assert_eq!(big["pushed"].as_u64(), Some(accepted), "{big}");

    // Room again: the next push is written, without a restart.
    let lifted = run(std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(node.pid())
        .arg("--fsize=unlimited:"));
    assert_eq!(lifted.code(), 0, "prlimit: {lifted:?}");
    let out = node.cli(&["push", "big", &job]);
    assert_eq!(out.code(), 0, "a push once the disk has room: {out:?}");
    let out = node.cli(&["queues"]);
    let all: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(all["queues"][0]["pushed"].as_u64(), Some(accepted + 1));
}
