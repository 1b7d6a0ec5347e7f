//! `GET /v1/logs` on one node of a three-node cluster (on the bridge, and on
//! NATS) gives the lines of all three, merged in time order, each with its node,
//! level, target, worker and number; `node=` keeps one node's, `level=` a
//! minimum level, `lines=` the newest.

mod common;

use std::collections::BTreeSet;

use colony::WorkerId;
use common::logs::*;
use common::*;
use serde_json::Value;

fn keys(line: &Value) -> BTreeSet<&str> {
    line.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[actix_rt::test]
async fn the_lines_of_three_nodes_arrive_merged_in_time_order() {
    merged_on(Net::bridge(), ["merge-a", "merge-b", "merge-c"]).await;
}

#[actix_rt::test]
async fn the_lines_of_three_nodes_on_nats_arrive_merged_in_time_order() {
    merged_on(Net::nats(), ["nats-a", "nats-b", "nats-c"]).await;
}

async fn merged_on(net: Net, names: [&str; 3]) {
    // Lines outside a worker go to the first node's ring.
    colony::logging::init_quiet(names[0]);
    let nodes = nodes_on(
        &net,
        &names,
        "api: { listen: 127.0.0.1:0 }\nservices:\n  chatter: { workers: 1 }\n",
        |yaml| async move { start_chatter_node(&yaml).await },
    )
    .await;

    // Each node's own worker speaks in turn, so that time order interleaves them.
    let mut said = Vec::new();
    for round in 0..5 {
        for name in names {
            let text = format!("{name} says {round}");
            let worker = WorkerId::new(name, "chatter", 0);
            nodes[0]
                .request_worker(&worker, Say::info(&text))
                .await
                .expect("said");
            said.push(text);
        }
    }
    let warned = format!("{} warns", names[2]);
    nodes[0]
        .request_worker(
            &WorkerId::new(names[2], "chatter", 0),
            Say {
                text: warned.clone(),
                level: Some("warn".into()),
                times: None,
            },
        )
        .await
        .expect("warned");

    let api = nodes[0].api_addr().expect("an API");
    let (status, lines) = log_lines(api, "lines=10000").await;
    assert_eq!(status, 200, "{lines:?}");
    let mut expected = said.clone();
    expected.push(warned.clone());
    assert_eq!(chatter(&lines), expected);

    for line in lines.iter().filter(|l| l["target"] == CHATTER) {
        assert_eq!(
            keys(line),
            BTreeSet::from(["ts", "node", "seq", "level", "target", "worker", "trace", "msg"]),
            "{line}"
        );
        let node = line["node"].as_str().expect("a node");
        let msg = line["msg"].as_str().expect("a message");
        assert!(msg.starts_with(node), "{line}");
        assert_eq!(line["worker"], format!("{node}/chatter/0"), "{line}");
        assert!(line["seq"].as_u64().is_some_and(|seq| seq >= 1), "{line}");
        assert_eq!(line["trace"], Value::Null, "{line}");
        let expected = if *msg == warned { "warn" } else { "info" };
        assert_eq!(line["level"], expected, "{line}");
    }
    // Every line, of every node, in time order (RFC 3339 with microseconds, UTC,
    // sorts as text); each node's numbers rise.
    let times: Vec<&str> = lines.iter().filter_map(|l| l["ts"].as_str()).collect();
    assert_eq!(times.len(), lines.len());
    assert!(
        times.iter().all(|t| t.len() == 27 && t.ends_with('Z')),
        "{times:?}"
    );
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    for name in names {
        let seqs: Vec<u64> = lines
            .iter()
            .filter(|l| l["node"] == name)
            .filter_map(|l| l["seq"].as_u64())
            .collect();
        assert!(!seqs.is_empty(), "no line of {name}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{name}: {seqs:?}");
    }

    // One node's lines, from another node's API.
    let other_api = nodes[1].api_addr().expect("an API");
    let query = format!("node={}&lines=10000", names[2]);
    let (status, lines) = log_lines(other_api, &query).await;
    assert_eq!(status, 200);
    assert!(lines.iter().all(|l| l["node"] == names[2]), "{lines:?}");
    let expected: Vec<String> = expected
        .iter()
        .filter(|m| m.starts_with(names[2]))
        .cloned()
        .collect();
    assert_eq!(chatter(&lines), expected);

    // A minimum level.
    let (status, lines) = log_lines(api, "level=warn&lines=10000").await;
    assert_eq!(status, 200);
    assert!(
        lines
            .iter()
            .all(|l| l["level"] == "warn" || l["level"] == "error"),
        "{lines:?}"
    );
    assert_eq!(chatter(&lines), std::slice::from_ref(&warned));

    // The newest lines only: the last two it said.
    let query = format!("lines=2&node={}", names[2]);
    let (status, lines) = log_lines(api, &query).await;
    assert_eq!(status, 200);
    assert_eq!(
        chatter(&lines),
        [format!("{} says 4", names[2]), warned.clone()]
    );
}
