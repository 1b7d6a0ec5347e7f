//! A reload of the only node that runs a service fails no request: the other
//! nodes heard it leave, so a request for that service waits for it to come back
//! instead of failing with `NoSuchService`.

mod common;

use std::time::Duration;

use common::{
    http, node_of, pid_of, spawning_cluster, wait_nodes_running, wait_until, Load, NodeProcess,
};

/// POSTs `chaos echo` `{"n":1}` to `api`: `Ok` if the reply echoes it.
fn request_echo(api: &str) -> Result<(), String> {
    let result = http(api, "POST", "/v1/request/chaos/echo", r#"{"n":1}"#);
    let good = matches!(&result, Ok((200, body))
        if serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| v["reply"]["n"] == 1));
    if good {
        Ok(())
    } else {
        Err(format!("{result:?}"))
    }
}

#[test]
fn reloading_the_only_node_of_a_service_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    // `chaos` runs on worker-a only; the master and worker-b do not run it.
    let config = spawning_cluster(
        dir.path(),
        "{ math: { workers: 1 } }",
        &[
            ("worker-a", "", "{ chaos: { workers: 1 } }"),
            ("worker-b", "", "{ math: { workers: 1 } }"),
        ],
    );
    let master = NodeProcess::start(&config, &[]);
    wait_nodes_running(&master, 3);
    master.wait_all_running();
    let old = pid_of(&master.status(), "worker-a");

    let load = Load::start_with(&master.api, 4, Duration::from_millis(2), request_echo);
    wait_until(
        &master,
        "50 echoes before the reload",
        Duration::from_secs(20),
        || load.ok() >= 50,
    );
    let out = master.cli(&["reload", "worker-a"]);
    assert_eq!(out.code(), 0, "reload: {out:?}\nstderr:\n{}", master.log());
    assert_eq!(out.stdout, "reloaded worker-a\n");
    let before = load.ok();
    wait_until(
        &master,
        "50 echoes after the reload",
        Duration::from_secs(20),
        || load.ok() >= before + 50,
    );
    let (failed, failures) = load.finish();
    assert_eq!(
        failed,
        0,
        "requests failed during the reload: {failures:?}\nstderr:\n{}",
        master.log()
    );
    let status = master.status();
    let new = pid_of(&status, "worker-a");
    assert_ne!(new, old, "worker-a was not restarted: {status}");
    assert_eq!(node_of(&status, "worker-a")["restarts"], 1, "{status}");
    // The reload really left the service without a node for a while: the master
    // logged worker-a's old process exit before the new one forked.
    let log = master.log();
    let exit = log
        .find(&format!("node worker-a: exit (pid {old}, code 0)"))
        .unwrap_or_else(|| panic!("no exit line for {old}:\n{log}"));
    let fork = log
        .find(&format!("node worker-a: fork (pid {new})"))
        .unwrap_or_else(|| panic!("no fork line for {new}:\n{log}"));
    assert!(
        exit < fork,
        "the old process exited after the new one forked:\n{log}"
    );
}
