//! `GET /v1/logs?follow=1` keeps streaming: a line logged on another node after
//! the stream opened arrives within a second (followers ask every node each
//! 250 ms), and a line logged before it opened is not shown again; the stream
//! ends when the node stops, and does not hold up its stop.

mod common;

use std::time::Duration;

use colony::WorkerId;
use common::logs::*;
use common::*;

#[actix_rt::test]
async fn follow_sees_a_new_line_within_a_second() {
    colony::logging::init_quiet("follow-a");
    let net = Net::bridge();
    let nodes = nodes_on(
        &net,
        &["follow-a", "follow-b"],
        "api: { listen: 127.0.0.1:0 }\nservices:\n  chatter: { workers: 1 }\n",
        |yaml| async move { start_chatter_node(&yaml).await },
    )
    .await;
    let on_b = WorkerId::new("follow-b", "chatter", 0);
    nodes[0]
        .request_worker(&on_b, Say::info("before the stream"))
        .await
        .expect("said");

    let api = nodes[0].api_addr().expect("an API");
    let followed = Followed::open(api, "follow=1&lines=0").await;
    assert_eq!(followed.status, 200);
    assert_eq!(followed.content_type, "application/x-ndjson");

    for n in 0..3 {
        let text = format!("after the stream opened {n}");
        nodes[0]
            .request_worker(&on_b, Say::info(&text))
            .await
            .expect("said");
        wait_until(
            &format!("the follower sees {text:?}"),
            Duration::from_secs(1),
            || async { followed.chatter().contains(&text) },
        )
        .await;
    }
    assert_eq!(
        followed.chatter(),
        [
            "after the stream opened 0",
            "after the stream opened 1",
            "after the stream opened 2"
        ]
    );
    assert!(followed
        .lines()
        .iter()
        .all(|l| l["node"] == "follow-b" || l["node"] == "follow-a"));
}
