//! The NATS tests' own server (tests/common/nats.rs): a real nats-server with
//! JetStream on a free port, that restarts on the same port with its store, and
//! that stops and dies when told.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use async_nats::jetstream;
use common::nats::NatsServer;
use serde_json::Value;

/// The server's greeting to a new client: `INFO {…}`, its JSON parsed.
fn info(port: u16) -> Value {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("the server accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("the server greets");
    let json = line
        .strip_prefix("INFO ")
        .unwrap_or_else(|| panic!("first line is not INFO: {line:?}"));
    assert!(json.starts_with('{'), "INFO without JSON: {line:?}");
    serde_json::from_str(json.trim_end()).expect("INFO carries JSON")
}

fn refused(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err()
}

#[test]
fn starts_with_jetstream_restarts_on_its_port_and_stops() {
    let mut server = NatsServer::start();
    let port = server.port();
    assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));
    let first = info(port);
    assert_eq!(first["jetstream"], true, "JetStream is on: {first}");
    assert_eq!(first["port"], port);
    assert!(
        server.store_dir().join("jetstream").is_dir(),
        "JetStream stores under store_dir()"
    );
    let first_pid = server.pid().expect("a running server has a pid");

    server.restart();
    assert_eq!(server.port(), port, "a restart keeps the port");
    let second = info(port);
    assert_eq!(second["jetstream"], true);
    assert_ne!(second["server_id"], first["server_id"], "a new process");
    assert_ne!(server.pid(), Some(first_pid));

    server.kill();
    assert!(!server.is_running());
    assert!(refused(port), "a killed server no longer accepts");
    server.restart();
    assert_eq!(info(port)["jetstream"], true, "back after a kill");

    server.stop();
    assert!(!server.is_running());
    assert!(refused(port), "a stopped server no longer accepts");
}

#[actix_rt::test]
async fn a_restart_after_a_kill_keeps_what_jetstream_acknowledged() {
    let mut server = NatsServer::start();
    {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let kv = jetstream::new(client)
            .create_key_value(jetstream::kv::Config {
                bucket: "harness".into(),
                ..Default::default()
            })
            .await
            .expect("create a KV bucket");
        kv.put("answer", "42".into()).await.expect("put");
    }

    server.kill();
    server.restart();

    let client = async_nats::connect(server.url()).await.expect("reconnect");
    let kv = jetstream::new(client)
        .get_key_value("harness")
        .await
        .expect("the bucket survived");
    let value = kv.get("answer").await.expect("get");
    assert_eq!(value.as_deref(), Some(&b"42"[..]));
}
