//! Control requests from other nodes: status, kills, the subscription table and
//! operators' commands, each answered on the request's reply subject.

use std::sync::atomic::Ordering;

use async_nats::Subscriber;
use futures::StreamExt;

use super::node::{Kind, NatsNode};
use super::wire::{self, Control, SubsTable};
use crate::error::ServiceError;

/// Control requests: status, kills, the subscription table.
pub(super) async fn control_loop(node: std::sync::Weak<NatsNode>, mut control: Subscriber) {
    while let Some(message) = control.next().await {
        let Some(node) = node.upgrade() else { return };
        node.count(Kind::Control);
        let Some(reply) = message.reply else { continue };
        let local = node.inbound.local.clone();
        let answer: Result<Vec<u8>, ServiceError> =
            match serde_json::from_slice::<Control>(&message.payload) {
                Err(e) => Err(ServiceError::bad_request(format!(
                    "malformed control request: {e}"
                ))),
                Ok(Control::Status) => serde_json::to_vec(&local.status())
                    .map_err(|e| ServiceError::bad_request(e.to_string())),
                Ok(Control::Subs) => serde_json::to_vec(&table(&node))
                    .map_err(|e| ServiceError::bad_request(e.to_string())),
                Ok(Control::Exit { code }) => local.exit(code).map(|()| b"null".to_vec()),
                Ok(Control::Admin { admin }) => {
                    let client = node.client.clone();
                    let command = local.admin(admin);
                    actix_rt::spawn(async move {
                        let answer = command.await.and_then(|answer| {
                            serde_json::to_vec(&answer)
                                .map_err(|e| ServiceError::bad_request(e.to_string()))
                        });
                        let _ = client.publish(reply, wire::reply(&answer)).await;
                    });
                    continue;
                }
                Ok(Control::Kill { worker }) => match worker.parse() {
                    Ok(worker) => {
                        let client = node.client.clone();
                        actix_rt::spawn(async move {
                            let answer = local.kill(worker).await.map(|()| b"null".to_vec());
                            let _ = client.publish(reply, wire::reply(&answer)).await;
                        });
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
        let _ = node.client.publish(reply, wire::reply(&answer)).await;
    }
}

/// This node's subscription table and its version.
pub(super) fn table(node: &NatsNode) -> SubsTable {
    node.inbound.pubsub.with_prefixes(|table| SubsTable {
        v: node.subs_version.load(Ordering::Acquire),
        table,
    })
}
