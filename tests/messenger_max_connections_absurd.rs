//! `messenger.max_connections` far past anything a node could hold is either
//! refused by the config check (naming the key) or works as "no cap": a node
//! must not start with a messenger listener that silently serves no one.

mod common;

use std::path::Path;
use std::time::Duration;

use colony::{Node, NodeConfig};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[actix_rt::test]
async fn an_absurd_max_connections_is_refused_or_served() {
    let yaml = "node: { name: m, threads: 1 }
state: { mode: memory }
services: { calc: { workers: 1 } }
messenger:
  listen: 127.0.0.1:0
  max_connections: 2305843009213693952
  routes: { add: calc/add }
";
    let config = match NodeConfig::parse(Path::new("test.yaml"), yaml) {
        Ok(config) => config,
        Err(e) => {
            assert_eq!(e.key, "messenger.max_connections", "{e}");
            return;
        }
    };
    let node = Node::start(test_app(), config).await.expect("node starts");
    let addr = node.messenger_addr().expect("a messenger listener");
    let request = b"{\"id\":\"id-1\",\"subject\":\"add\",\"data\":{\"a\":40,\"b\":2}}\0";
    let answer = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(request).await.ok()?;
        let mut read = Vec::new();
        let mut buf = [0u8; 1024];
        while !read.contains(&0) {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            read.extend_from_slice(&buf[..n]);
        }
        Some(String::from_utf8_lossy(&read).into_owned())
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .ok()
        .flatten();
    assert!(
        answer.as_deref().is_some_and(|a| a.contains("\"sum\":42")),
        "the node started, its messenger listener at {addr} answered {answer:?}"
    );
    node.shutdown(Duration::from_secs(1)).await;
}
