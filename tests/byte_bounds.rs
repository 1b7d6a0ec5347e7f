//! Every queue is bounded in bytes, not only in items: a peer that stops reading,
//! a subscriber that never handles its messages and an HTTP subscribe client that
//! stalls each cost at most their byte bound (so do a job queue, and all of a
//! node's HTTP subscribe streams together, in `budgets`), and the overflow is refused
//! (`Overloaded`) or dropped and counted, never held. Subscription changes cross
//! the bridge as deltas, and a node holds at most 10,000 distinct prefixes, its own
//! or a peer's; a change a full link queue could not take reaches the peer as the
//! whole table once it reads again. Each test checks the refusal or the count,
//! that memory (VmRSS) stays bounded, and that the node keeps serving.

#[path = "byte_bounds/budgets.rs"]
mod budgets;
mod common;
#[path = "byte_bounds/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use colony::bridge::wire::Control;
use colony::pubsub::{HIGH_WATER_BYTES, MAX_PREFIXES};
use colony::{ErrorKind, Node, Subscription};
use common::*;
use support::*;

const DEADLINE: Duration = Duration::from_secs(10);

fn bridge(secret: &tempfile::NamedTempFile, join: &str, extra: &str) -> String {
    format!(
        "bridge: {{ listen: 127.0.0.1:0, join: [{join}], secret_file: {}, heartbeat: 500ms{extra} }}\n",
        secret.path().display()
    )
}

#[actix_rt::test]
async fn a_peer_that_stops_reading_costs_at_most_queue_bytes_then_callers_are_overloaded() {
    let _serial = serial().await;
    let secret = secret_file(SECRET);
    let master = start_node(&format!(
        "node: {{ name: master, role: master, threads: 2 }}\n{}",
        bridge(&secret, "", ", queue_bytes: 8388608")
    ))
    .await;
    let addr = master.bridge_addr().expect("bridge");
    let worker = start_node(&format!(
        "node: {{ name: worker-b, role: worker, threads: 2 }}\n{}services: {{ calc: {{ workers: 1 }} }}\n",
        bridge(&secret, &addr.to_string(), "")
    ))
    .await;
    cluster_of(&master, 2).await;

    // The attacker: an authenticated peer offering `far` and subscribing to `far.`,
    // which then never reads a byte.
    let fake = FakePeer::dial(addr, "a-fake").await;
    fake.send(join_offering_far());
    fake.send(Control::Subscribed {
        prefix: "far.".into(),
    });
    wait_until("the master knows a-fake's subscriber", DEADLINE, || async {
        master.subscribers("far.x") == 1
    })
    .await;
    wait_until("requests for `far` go to a-fake", DEADLINE, || async {
        master.tell("far", Secret { user: None }).await.is_ok()
    })
    .await;

    let before = rss();
    let big = "x".repeat(MB as usize);
    let mut accepted = 0;
    let mut refused = None;
    for _ in 0..200 {
        match master
            .tell(
                "far",
                Secret {
                    user: Some(big.clone()),
                },
            )
            .await
        {
            Ok(()) => accepted += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a caller is refused once bridge.queue_bytes is reached");
    eprintln!("{accepted} messages of 1 MiB queued before: {refused}");
    assert_eq!(refused.kind, ErrorKind::Overloaded, "{refused}");
    assert!(
        refused.message.contains("bridge.queue_bytes"),
        "{}",
        refused.message
    );
    // 8 MiB of queue, plus what the kernel's socket buffers took.
    assert!(accepted < 64, "{accepted} MiB were taken");
    assert_grew_less_than(before, 64 * MB, "a stalled peer");

    // A message for the stalled peer's subscriber is dropped and counted, not held.
    let dropped = master.publish_dropped();
    assert_eq!(master.publish("far.x", big.clone()).expect("publish"), 0);
    assert_eq!(master.publish_dropped(), dropped + 1);

    // The node keeps serving: its other peer, and its own subscribers.
    let added = master
        .request("calc", Add { a: 2, b: 3 })
        .await
        .expect("worker-b still serves through the master");
    assert_eq!(added.sum, 5);
    let (sub, handled) = counter();
    let _subscription = master.subscribe("local.", sub.recipient()).unwrap();
    assert_eq!(master.publish("local.x", 1).expect("publish"), 1);
    wait_until("the local subscriber has it", DEADLINE, || async {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;

    drop(fake);
    worker.shutdown(Duration::from_millis(100)).await;
    master.shutdown(Duration::from_millis(100)).await;
}

#[actix_rt::test]
async fn a_subscriber_that_never_reads_holds_at_most_its_byte_bound() {
    let _serial = serial().await;
    let node = start_node("node: { name: solo, threads: 2 }\n").await;
    // An actor whose context has not started: its mailbox fills, nothing is handled.
    let stalled = Context::<Counter>::new();
    let handled = Arc::new(AtomicUsize::new(0));
    let _subscription = node
        .subscribe("big.", stalled.address().recipient())
        .unwrap();

    let before = rss();
    let message = json_string(1_000_000);
    let mut delivered = 0;
    for _ in 0..1200 {
        delivered += node.publish("big.x", message.clone()).expect("publish");
    }
    // Each message is 1,000,000 bytes of JSON: eight fit the 8 MiB bound.
    let fit = HIGH_WATER_BYTES / 1_000_000;
    assert_eq!(delivered, fit);
    assert_eq!(node.publish_dropped(), (1200 - fit) as u64);
    assert_grew_less_than(
        before,
        100 * MB,
        "1,200 messages of 1 MB to a stalled subscriber",
    );

    // Once it runs, it handles exactly what was accepted, and gets new messages.
    let _running = stalled.run(Counter(handled.clone()));
    wait_until("the subscriber handled what it held", DEADLINE, || async {
        handled.load(Ordering::SeqCst) == fit
    })
    .await;
    assert_eq!(node.publish("big.y", "small").expect("publish"), 1);
    wait_until("the subscriber has the next one", DEADLINE, || async {
        handled.load(Ordering::SeqCst) == fit + 1
    })
    .await;
    assert_eq!(node.publish_dropped(), (1200 - fit) as u64);
    node.shutdown(Duration::from_millis(100)).await;
}

#[actix_rt::test]
async fn an_http_subscriber_that_stalls_holds_at_most_subscribe_buffer_and_hears_of_drops() {
    let _serial = serial().await;
    let node = start_node(
        "node: { name: web, threads: 2 }\napi: { listen: 127.0.0.1:0, subscribe_buffer: 2097152 }\n",
    )
    .await;
    let api = node.api_addr().expect("api");

    // A client with a small receive buffer, so that the kernel holds little for it.
    let (stream, buf, head) = open_stream(api, "big.", 64 * 1024).await;
    assert!(head.to_ascii_lowercase().contains("chunked"), "{head}");
    wait_until("the stream is subscribed", DEADLINE, || async {
        node.subscribers("big.x") == 1
    })
    .await;

    // The client stops reading; 150 MiB are published for it.
    let before = rss();
    let message = json_string(512 * 1024);
    let mut accepted = 0;
    for _ in 0..300 {
        accepted += node.publish("big.x", message.clone()).expect("publish");
    }
    let mut dropped = 300 - accepted;
    eprintln!("{accepted} of 300 messages of 512 KiB taken by the stalled stream");
    assert!(dropped > 0, "the stream took all 300 messages");
    assert_eq!(node.publish_dropped(), dropped as u64);
    assert_grew_less_than(before, 64 * MB, "150 MiB for a stalled HTTP subscriber");

    // The client reads again: it gets what was held, then `{"dropped":N}`, then
    // the next message.
    let seen = Arc::new(Mutex::new(Vec::new()));
    actix_rt::spawn(read_lines(stream, buf, seen.clone()));
    wait_until("the stream takes a message again", DEADLINE, || {
        let taken = node.publish("big.after", "after").expect("publish") == 1;
        if !taken {
            dropped += 1;
        }
        async move { taken }
    })
    .await;
    wait_until("the client read the last message", DEADLINE, || async {
        seen.lock()
            .unwrap()
            .last()
            .is_some_and(|s| *s == Seen::Message("big.after".into()))
    })
    .await;
    {
        let seen = seen.lock().unwrap();
        let messages = seen
            .iter()
            .filter(|s| **s == Seen::Message("big.x".into()))
            .count();
        let reported: u64 = seen
            .iter()
            .map(|s| match s {
                Seen::Dropped(n) => *n,
                Seen::Message(_) => 0,
            })
            .sum();
        assert_eq!(messages, accepted, "every message taken reaches the client");
        assert_eq!(reported, dropped as u64, "the client hears of every drop");
        assert_eq!(node.publish_dropped(), dropped as u64);
        let markers: Vec<usize> = (0..seen.len())
            .filter(|&i| matches!(seen[i], Seen::Dropped(_)))
            .collect();
        assert!(!markers.is_empty(), "no {{\"dropped\":N}} line");
        for i in markers {
            assert!(
                matches!(seen.get(i + 1), Some(Seen::Message(_))),
                "a drop report is followed by the next message: {:?}",
                &seen[i..seen.len().min(i + 2)]
            );
        }
    }

    // The node keeps serving.
    let health = ureq::get(&format!("http://{api}/v1/health"))
        .call()
        .expect("health answers");
    assert_eq!(health.status(), 200);
    node.shutdown(Duration::from_millis(100)).await;
}

#[actix_rt::test]
async fn subscription_changes_cross_the_bridge_as_deltas() {
    let _serial = serial().await;
    let net = Net::bridge();
    let nodes = nodes_on(&net, &["master", "worker-a"], "", |yaml| async move {
        start_node(&yaml).await
    })
    .await;
    let (master, worker) = (&nodes[0], &nodes[1]);
    let prefixes: Vec<String> = (0..1000)
        .map(|i| format!("{i:04}{}", "p".repeat(1020)))
        .collect();
    let (sub, handled) = counter();
    let sent = |node: &Node| node.bridge_stats().expect("bridge").bytes_out;

    let before = rss();
    let start = sent(worker);
    let subscriptions: Vec<Subscription> = prefixes
        .iter()
        .map(|p| {
            worker
                .subscribe(p, sub.clone().recipient())
                .expect("subscribe")
        })
        .collect();
    wait_until(
        "the master knows all 1,000 subscriptions",
        DEADLINE,
        || async { prefixes.iter().all(|p| master.subscribers(p) == 1) },
    )
    .await;
    drop(subscriptions);
    wait_until("the master knows they ended", DEADLINE, || async {
        prefixes.iter().all(|p| master.subscribers(p) == 0)
    })
    .await;
    let bytes = sent(worker) - start;
    eprintln!(
        "1,000 subscriptions on 1 KB prefixes, made and ended: {} KB over the bridge",
        bytes / 1024
    );
    // Each change carries one prefix: about 2 MB for 2,000 changes (whole tables
    // would be about 1 GB).
    assert!(
        bytes > 2_000_000,
        "{bytes} bytes: the changes were not all sent"
    );
    assert!(bytes < 10 * MB, "{bytes} bytes for 2,000 changes");
    assert_grew_less_than(before, 100 * MB, "1,000 subscriptions on 1 KB prefixes");

    // The link still carries subscriptions and messages.
    let _subscription = worker.subscribe("after.", sub.recipient()).unwrap();
    wait_until("the master knows the new subscriber", DEADLINE, || async {
        master.subscribers("after.x") == 1
    })
    .await;
    assert_eq!(master.publish("after.x", 1).expect("publish"), 1);
    wait_until("it arrives", DEADLINE, || async {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
    for node in nodes.iter().rev() {
        node.shutdown(Duration::from_millis(100)).await;
    }
}

#[actix_rt::test]
async fn a_node_holds_at_most_ten_thousand_prefixes_its_own_or_a_peers() {
    let _serial = serial().await;
    let secret = secret_file(SECRET);
    let node = start_node(&format!(
        "node: {{ name: master, role: master, threads: 2 }}\n{}",
        bridge(&secret, "", "")
    ))
    .await;
    let before = rss();

    // Its own subscribers: a new prefix past the cap is refused.
    let (sub, handled) = counter();
    let mut subscriptions: BTreeMap<String, Subscription> = (0..MAX_PREFIXES)
        .map(|i| {
            let prefix = format!("p{i:05}");
            let subscription = node
                .subscribe(&prefix, sub.clone().recipient())
                .expect("subscribe");
            (prefix, subscription)
        })
        .collect();
    let refused = node
        .subscribe("p-one-too-many", sub.clone().recipient())
        .expect_err("a prefix past the cap is refused");
    assert_eq!(refused.kind, ErrorKind::Overloaded, "{refused}");
    let again = node
        .subscribe("p00000", sub.clone().recipient())
        .expect("a prefix held already is not new");
    subscriptions.remove("p00001");
    let room = node
        .subscribe("p-one-too-many", sub.clone().recipient())
        .expect("an ended prefix makes room");

    // A peer announcing more: what is past the cap is ignored, the link stays.
    let fake = FakePeer::dial(node.bridge_addr().expect("bridge"), "a-fake").await;
    let table: BTreeMap<String, u32> = (0..12_000).map(|i| (format!("q{i:05}"), 1)).collect();
    fake.send(Control::Subscriptions { prefixes: table });
    wait_until("the node read the peer's table", DEADLINE, || async {
        node.subscribers("q09999") == 1
    })
    .await;
    assert_eq!(node.subscribers("q10000"), 0, "past the cap");
    assert_eq!(node.subscribers("q11999"), 0, "past the cap");
    fake.send(Control::Subscribed { prefix: "r".into() });
    fake.send(Control::Unsubscribed {
        prefix: "q00000".into(),
    });
    wait_until("the node read the peer's changes", DEADLINE, || async {
        node.subscribers("q00000") == 0
    })
    .await;
    assert_eq!(
        node.subscribers("r"),
        0,
        "a new prefix past the cap is ignored"
    );
    fake.send(Control::Subscribed { prefix: "r".into() });
    wait_until("a new prefix fits once there is room", DEADLINE, || async {
        node.subscribers("r") == 1
    })
    .await;
    assert_grew_less_than(
        before,
        50 * MB,
        "10,000 prefixes of its own and 12,000 of a peer",
    );

    // The node keeps serving its own subscribers.
    assert_eq!(node.publish("p00000.x", 1).expect("publish"), 2);
    wait_until("both subscriptions got it", DEADLINE, || async {
        handled.load(Ordering::SeqCst) == 2
    })
    .await;
    drop((again, room, subscriptions, fake));
    node.shutdown(Duration::from_millis(100)).await;
}

#[actix_rt::test]
async fn a_peer_that_missed_a_change_while_its_queue_was_full_gets_the_whole_table_again() {
    let _serial = serial().await;
    let secret = secret_file(SECRET);
    let master = start_node(&format!(
        "node: {{ name: master, role: master, threads: 2 }}\n{}",
        bridge(&secret, "", ", queue_bytes: 1048576")
    ))
    .await;
    let mut fake = FakePeer::dial(master.bridge_addr().expect("bridge"), "a-fake").await;
    fake.send(join_offering_far());
    wait_until("requests for `far` go to a-fake", DEADLINE, || async {
        master.tell("far", Secret { user: None }).await.is_ok()
    })
    .await;

    // The peer stops reading: its queue fills to its last few bytes.
    let before = rss();
    for size in [64 * 1024, 1024, 16] {
        let user = "x".repeat(size);
        let mut refused = None;
        for _ in 0..10_000 {
            let told = master
                .tell(
                    "far",
                    Secret {
                        user: Some(user.clone()),
                    },
                )
                .await;
            if let Err(e) = told {
                refused = Some(e);
                break;
            }
        }
        let refused = refused.expect("the queue fills");
        assert_eq!(refused.kind, ErrorKind::Overloaded, "{refused}");
    }
    assert_grew_less_than(before, 64 * MB, "a stalled peer with 1 MiB of queue");

    // A change that does not fit the queue is not lost: once the peer reads
    // again, it gets the whole table, and then changes again.
    let (sub, _) = counter();
    let late = format!("late.{}", "x".repeat(1000));
    let _late = master.subscribe(&late, sub.clone().recipient()).unwrap();
    let learned = fake.read_subscriptions();
    wait_until("a-fake learned the change it missed", DEADLINE, || async {
        learned.lock().unwrap().table.get(&late) == Some(&1)
    })
    .await;
    assert_eq!(
        learned.lock().unwrap().tables,
        2,
        "the table when the link opened, and the table again"
    );
    let _later = master.subscribe("later.", sub.recipient()).unwrap();
    wait_until("a-fake learns the next change", DEADLINE, || async {
        learned.lock().unwrap().table.get("later.") == Some(&1)
    })
    .await;
    assert_eq!(learned.lock().unwrap().table.len(), 2);
    assert_eq!(learned.lock().unwrap().tables, 2);
    drop(fake);
    master.shutdown(Duration::from_millis(100)).await;
}
