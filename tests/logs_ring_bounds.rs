//! A node keeps at most `log.keep` of its log lines and at most `log.max_bytes`
//! of them; a follower that fell further behind than the node keeps is told
//! how many lines it missed (`{"node","dropped"}`), then gets the newest.

mod common;

use std::time::Duration;

use common::logs::*;
use common::*;
use serde_json::Value;

const KEEP: usize = 50;

/// One test, so that no other node of this process logs meanwhile: lines
/// outside a worker go to the ring of `keeper`, the process's node.
#[actix_rt::test]
async fn a_node_keeps_at_most_log_keep_lines_and_log_max_bytes_of_them() {
    colony::logging::init_quiet("keeper");
    let node = start_chatter_node(&format!(
        "node: {{ name: keeper, threads: 1 }}\napi: {{ listen: 127.0.0.1:0 }}\nlog: {{ keep: {KEEP} }}\n"
    ))
    .await;
    let max_bytes = 64 * 1024;
    let bytes_node = start_chatter_node(&format!(
        "node: {{ name: bytes-keeper, threads: 1 }}\napi: {{ listen: 127.0.0.1:0 }}\nlog: {{ max_bytes: {max_bytes} }}\nservices:\n  chatter: {{ workers: 1 }}\n"
    ))
    .await;
    all_running(&bytes_node).await;
    lines_past_log_keep_are_dropped_and_a_follower_told(&node).await;
    lines_past_log_max_bytes_are_dropped(&bytes_node, max_bytes).await;
}

async fn lines_past_log_keep_are_dropped_and_a_follower_told(node: &colony::Node) {
    let api = node.api_addr().expect("an API");
    let followed = Followed::open(api, "follow=1&lines=0").await;
    assert_eq!(followed.status, 200);

    // Far more than kept, faster than a follower asks (each 250 ms).
    let total = 2000;
    for n in 0..total {
        log::info!(target: CHATTER, "line {n}");
    }
    let (status, lines) = log_lines(api, "lines=10000").await;
    assert_eq!(status, 200);
    assert_eq!(lines.len(), KEEP, "{lines:?}");
    let newest: Vec<String> = (total - KEEP..total).map(|n| format!("line {n}")).collect();
    assert_eq!(chatter(&lines), newest);

    let last = format!("line {}", total - 1);
    wait_until(
        "the follower has the newest line",
        Duration::from_secs(10),
        || async { followed.chatter().contains(&last) },
    )
    .await;
    let seen = followed.lines();
    let dropped: u64 = seen
        .iter()
        .filter(|l| l["node"] == "keeper")
        .filter_map(|l| l["dropped"].as_u64())
        .sum();
    let got = chatter(&seen);
    // Every line is either shown or counted as missed, in order.
    assert!(dropped > 0, "{seen:?}");
    assert_eq!(got.len() as u64 + dropped, total as u64, "{seen:?}");
    let numbers: Vec<usize> = got
        .iter()
        .filter_map(|m| m.strip_prefix("line ")?.parse().ok())
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    assert!(seen
        .iter()
        .all(|l| l["dropped"].is_u64() || l["msg"] != Value::Null));
}

async fn lines_past_log_max_bytes_are_dropped(node: &colony::Node, max_bytes: usize) {
    // Lines of 4 KiB, cut to 4 KiB: about 15 fit.
    let long = "y".repeat(10_000);
    node.request(
        "chatter",
        Say {
            text: long,
            level: None,
            times: Some(100),
        },
    )
    .await
    .expect("said");
    let api = node.api_addr().expect("an API");
    let (status, lines) = log_lines(api, "lines=10000&node=bytes-keeper").await;
    assert_eq!(status, 200);
    let kept = chatter(&lines);
    assert!(
        (10..=16).contains(&kept.len()),
        "{} lines of 4 KiB kept in 64 KiB",
        kept.len()
    );
    for msg in &kept {
        assert!(msg.len() <= 4096 && msg.ends_with('…'), "{}", msg.len());
    }
    let bytes: usize = lines.iter().map(|l| l.to_string().len()).sum();
    assert!(bytes <= max_bytes, "{bytes} bytes shown");
}
