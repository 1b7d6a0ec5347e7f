//! A client on the NATS server that is not a colony node cannot crash,
//! exhaust or confuse one: garbage on every subject a node reads is ignored or
//! answered with `BadRequest`, a flood of beats with made-up names is bounded, a
//! huge beat is ignored, and through all of it the node keeps serving.

mod common;

use std::time::Duration;

use colony::ErrorKind;
use common::*;

const DEADLINE: Duration = Duration::from_secs(10);

#[actix_rt::test]
async fn garbage_on_every_subject_leaves_the_node_serving() {
    let net = Net::nats();
    let services = "services: { calc: { workers: 1 } }\n";
    let nodes = nodes_on(&net, &["m", "w"], services, |yaml| async move {
        start_node(&yaml).await
    })
    .await;
    let Net::Nats(server) = &net else {
        unreachable!()
    };
    let client = async_nats::connect(server.url()).await.unwrap();

    // A malformed request with a reply subject is answered BadRequest.
    for garbage in [
        &b""[..],
        b"\x01",
        b"\x09garbage",
        b"\x01\0\0\0\x01\0\0\0\0\xff\xff",
    ] {
        let reply = client
            .request("colony.node.m.req", garbage.to_vec().into())
            .await
            .unwrap();
        assert_eq!(reply.payload[0], 1, "an error answer");
        let error: colony::ServiceError = serde_json::from_slice(&reply.payload[1..]).unwrap();
        assert_eq!(error.kind, ErrorKind::BadRequest, "{error}");
    }
    // A malformed control request too.
    let reply = client
        .request("colony.node.m.ctl", "{\"op\":\"format-disk\"}".into())
        .await
        .unwrap();
    assert_eq!(reply.payload[0], 1);

    // Garbage where nodes only listen: beats, subscription changes,
    // publications, answers to a node's inbox that do not exist.
    for subject in [
        "colony.hb.m",
        "colony.hb.x",
        "colony.subs.w",
        "colony.pub.a",
        "colony.pub.~zz",
    ] {
        for garbage in [
            &b""[..],
            b"{",
            b"\x01\xff\xff",
            b"null",
            b"{\"v\":99999999999}",
        ] {
            client
                .publish(subject, garbage.to_vec().into())
                .await
                .unwrap();
        }
    }
    // A beat far too large, and beats from 2,000 made-up nodes.
    let huge = format!(
        "{{\"instance\":\"i\",\"member\":{{\"name\":\"big\",\"role\":\"worker\",\"bridge\":\"0.0.0.0:0\",\"api\":null,\"services\":[]}},\"pad\":\"{}\"}}",
        "x".repeat(200_000)
    );
    client.publish("colony.hb.big", huge.into()).await.unwrap();
    for i in 0..2000 {
        let name = format!("fake-{i}");
        let beat = serde_json::json!({
            "instance": "i",
            "member": {"name": name, "role": "worker", "bridge": "0.0.0.0:0", "api": null, "services": []},
        });
        client
            .publish(format!("colony.hb.{name}"), beat.to_string().into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    // The nodes still serve each other, and the made-up nodes are bounded.
    let m = &nodes[0];
    wait_until("the flood is read", DEADLINE, || async {
        let status = m.cluster_status().await;
        status.nodes.len() > 1000
    })
    .await;
    let status = m.cluster_status().await;
    assert!(status.nodes.len() <= 1 + 1024, "{}", status.nodes.len());
    assert!(status.nodes.iter().all(|n| n.name != "big"));
    let added = nodes[1].request("calc", Add { a: 1, b: 2 }).await.unwrap();
    assert_eq!(added.sum, 3);
    // The made-up nodes fall silent and are down, the real ones stay up.
    wait_until("made-up nodes are down", DEADLINE, || async {
        let status = m.cluster_status().await;
        status
            .nodes
            .iter()
            .filter(|n| n.name.starts_with("fake-"))
            .all(|n| n.state == "down")
            && status
                .nodes
                .iter()
                .filter(|n| n.name == "m" || n.name == "w")
                .all(|n| n.state == "running")
    })
    .await;
    let added = nodes[1].request("calc", Add { a: 2, b: 2 }).await.unwrap();
    assert_eq!(added.sum, 4);
}
