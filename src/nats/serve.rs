//! The node's tasks on NATS: its presence beats and the others' (membership and
//! liveness), answers to its calls, requests for its workers, control requests,
//! requests of NATS clients to its services, subscription tables, publications,
//! and the writer that hands what it sends to the client.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::{Message, Subscriber};
use bytes::Bytes;
use futures::future::Either;
use futures::StreamExt;

use super::connect::Subscriptions;
use super::control;
use super::node::{Kind, NatsNode, MISSED_BEATS};
use super::outbox::Out;
use super::peers::{Heard, Peer, FORGET_DOWN, MAX_BEAT};
use super::subjects::Subjects;
use super::topics::Todo;
use super::wire::{self, Beat, Control, SubsChange, SubsTable};
use crate::error::{ErrorKind, ServiceError};
use crate::guard::Origin;
use crate::pubsub::Change;
use crate::transport::{serving_span, Incoming};

/// Starts the node's tasks.
pub(super) fn start(
    node: &Arc<NatsNode>,
    subscriptions: Subscriptions,
    changed: tokio::sync::mpsc::UnboundedReceiver<Change>,
    mut disconnects: tokio::sync::watch::Receiver<u64>,
) {
    let Subscriptions {
        requests,
        control,
        beats,
        subs,
        inbox,
        services,
    } = subscriptions;
    let weak = Arc::downgrade(node);
    {
        let outbox = node.outbox.clone();
        let client = node.client.clone();
        let weak = weak.clone();
        node.spawn(outbox.run(client, move |call, why| {
            if let Some(node) = weak.upgrade() {
                node.answer(
                    call,
                    Err(ServiceError::new(
                        ErrorKind::NodeDown,
                        format!("the request could not be sent over NATS: {why}"),
                    )),
                );
            }
        }));
    }
    node.spawn(answers(weak.clone(), inbox));
    {
        // Requests and answers on their way when the connection drops may be
        // lost (core NATS delivers at most once): every call waiting fails with
        // NodeDown at once, as a lost link's do on the bridge.
        let weak = weak.clone();
        node.spawn(async move {
            while disconnects.changed().await.is_ok() {
                let Some(node) = weak.upgrade() else { return };
                node.fail_all_calls("this node lost its NATS server, and the call with it");
            }
        });
    }
    node.spawn(requests_loop(weak.clone(), requests));
    node.spawn(control::control_loop(weak.clone(), control));
    node.spawn(beats_loop(weak.clone(), beats));
    node.spawn(subs_loop(weak.clone(), subs));
    node.spawn(topics_loop(weak.clone(), changed));
    for (name, service, endpoint) in services {
        node.spawn(service_loop(weak.clone(), name, service, endpoint));
    }
}

/// Logs a bad message from outside now and then, not once per message.
fn bad(what: &str, why: &str) {
    static BAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let before = BAD.fetch_add(1, Ordering::Relaxed);
    if before.is_multiple_of(1000) {
        log::warn!(
            "nats: ignored a malformed {what}: {} ({} so far)",
            crate::logging::untrusted(why),
            before + 1
        );
    }
}

/// Answers to this node's calls, by the call's number at the end of the subject.
async fn answers(node: std::sync::Weak<NatsNode>, mut inbox: Subscriber) {
    while let Some(message) = inbox.next().await {
        let Some(node) = node.upgrade() else { return };
        node.count(Kind::Reply);
        let Some(id) = message
            .subject
            .rsplit('.')
            .next()
            .and_then(|id| id.parse::<u64>().ok())
        else {
            bad("answer", "its subject names no call");
            continue;
        };
        let Some((tx, holder)) = node.calls.lock().remove(&id) else {
            continue;
        };
        let answer = if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            Err(crate::transport::node_down(
                &holder,
                "nothing on NATS takes its requests",
            ))
        } else {
            wire::read_reply(message.payload, &holder)
        };
        let _ = tx.send(answer);
    }
}

/// Requests served at once from one node's subscription; past it the loop
/// reads no more until one is answered, and the server holds the rest.
const MAX_SERVING: usize = 4096;

/// Requests of other nodes for this node's workers, served in this task (no
/// task per request); answers go out through the outbox, with the others.
async fn requests_loop(weak: std::sync::Weak<NatsNode>, mut requests: Subscriber) {
    let mut serving = futures::stream::FuturesUnordered::new();
    loop {
        let message = if serving.len() >= MAX_SERVING {
            serving.next().await;
            continue;
        } else {
            tokio::select! {
                message = requests.next() => message,
                Some(()) = serving.next(), if !serving.is_empty() => continue,
            }
        };
        let Some(message) = message else { return };
        let Some(node) = weak.upgrade() else { return };
        node.count(Kind::Request);
        let trace = wire::read_trace(message.headers.as_ref());
        let request = match wire::read_request(message.payload) {
            Ok(request) => request,
            Err(why) => {
                bad("request", &why);
                if let Some(reply) = message.reply {
                    let e = ServiceError::bad_request(format!("malformed request: {why}"));
                    node.answer_to(reply, &Err(e));
                }
                continue;
            }
        };
        let incoming = Incoming {
            service: request.service,
            subject: request.subject,
            payload: request.payload,
            timeout_ms: request.timeout_ms,
            worker: request.worker,
        };
        let counted = Serving::start(&node);
        let reply = message.reply;
        let from = request.from;
        drop(node);
        let weak = weak.clone();
        let serve = async move {
            let _counted = counted;
            let Some(inbound) = weak.upgrade().map(|n| n.inbound.clone()) else {
                return;
            };
            // A peer's name reaches logs and guards escaped and cut.
            let from = crate::logging::untrusted(&from).to_string();
            let answer = inbound.serve(incoming, &from).await;
            let Some(node) = weak.upgrade() else { return };
            match reply {
                Some(reply) => node.answer_to(reply, &answer),
                None => {
                    if let Err(e) = answer {
                        log::warn!(
                            "one-way request from {from} failed: {}",
                            crate::logging::untrusted(&e.to_string())
                        );
                    }
                }
            }
        };
        // A traced request is served in a box of its own, within its span:
        // the untraced ones' futures hold nothing for traces.
        match serving_span(trace) {
            None => serving.push(Either::Right(serve)),
            Some(span) => serving.push(Either::Left(Box::pin(crate::trace::scope(
                Some(span),
                serve,
            )))),
        }
    }
}

/// Counts one request being served until it drops.
struct Serving(Arc<std::sync::atomic::AtomicU64>);

impl Serving {
    fn start(node: &NatsNode) -> Serving {
        node.serving.fetch_add(1, Ordering::AcqRel);
        Serving(node.serving.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Publishes this node's presence beat now.
pub(super) async fn beat(node: &NatsNode) {
    let beat = Beat {
        instance: node.instance.clone(),
        member: node.member(),
        leaving: node.leaving.load(Ordering::Acquire),
        gone: false,
        subs: node.subs_version.load(Ordering::Acquire),
    };
    if let Ok(payload) = serde_json::to_vec(&beat) {
        let _ = node
            .client
            .publish(node.subjects.beat(&node.me.name), payload.into())
            .await;
    }
}

/// Beats, hears the others' beats, and marks down the silent.
async fn beats_loop(weak: std::sync::Weak<NatsNode>, mut beats: Subscriber) {
    let Some(heartbeat) = weak.upgrade().map(|n| n.heartbeat) else {
        return;
    };
    let mut ticks = tokio::time::interval(heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let Some(node) = weak.upgrade() else { return };
                beat(&node).await;
                for peer in node.peers.silent(heartbeat * MISSED_BEATS) {
                    node.down(&peer, &format!("no presence beat for {:?}", heartbeat * MISSED_BEATS));
                }
                node.peers.forget_silent(FORGET_DOWN);
            }
            message = beats.next() => {
                let Some(message) = message else { return };
                let Some(node) = weak.upgrade() else { return };
                node.count(Kind::Beat);
                heard(&node, message).await;
            }
        }
    }
}

/// One presence beat.
async fn heard(node: &Arc<NatsNode>, message: Message) {
    if message.payload.len() > MAX_BEAT {
        return bad("presence beat", "it is larger than 64 KiB");
    }
    let heard_beat: Beat = match serde_json::from_slice(&message.payload) {
        Ok(b) => b,
        Err(e) => return bad("presence beat", &e.to_string()),
    };
    let b = heard_beat;
    if node.subjects.node_of(&message.subject).as_deref() != Some(b.member.name.as_str()) {
        return bad("presence beat", "its subject names another node");
    }
    if b.member.name == node.me.name {
        if b.instance != node.instance {
            bad(
                "presence beat",
                "another node has this node's name on this cluster",
            );
        }
        return;
    }
    if b.gone {
        if let Some(peer) = node.peers.remove(&b.member.name) {
            node.down(&peer, "it left the cluster");
        }
        return;
    }
    let subs = b.subs;
    match node
        .peers
        .heard(b.member, &b.instance, b.leaving, &node.subjects)
    {
        Heard::Up(peer) => {
            log::info!("nats: node {} is up", peer.name);
            node.inbound.node_up(&peer.name);
            // The newcomer hears of this node at once, not a beat later.
            beat(node).await;
            fetch_table(node, peer);
        }
        Heard::Restarted(peer) => {
            node.down(&peer, "it restarted");
            node.inbound.node_up(&peer.name);
            fetch_table(node, peer);
        }
        Heard::Known(peer) => {
            if peer.subs_version.load(Ordering::Acquire) != subs {
                fetch_table(node, peer);
            }
        }
        Heard::Ignored => {}
    }
}

/// Asks `peer` for its whole subscription table, in a task.
fn fetch_table(node: &Arc<NatsNode>, peer: Arc<Peer>) {
    let client = node.client.clone();
    let heartbeat = node.heartbeat;
    actix_rt::spawn(async move {
        let Ok(body) = serde_json::to_vec(&Control::Subs) else {
            return;
        };
        let asked = client.request(peer.control.clone(), body.into());
        let Ok(Ok(message)) = tokio::time::timeout(heartbeat * MISSED_BEATS, asked).await else {
            return;
        };
        let Ok(json) = wire::read_reply(message.payload, &peer.name) else {
            return;
        };
        match serde_json::from_slice::<SubsTable>(&json) {
            Ok(table) if table.v >= peer.subs_version.load(Ordering::Acquire) => {
                peer.subs.replace(&peer.name, table.table);
                peer.subs_version.store(table.v, Ordering::Release);
            }
            Ok(_) => {}
            Err(e) => bad("subscription table", &e.to_string()),
        }
    });
}

/// The others' subscription changes.
async fn subs_loop(weak: std::sync::Weak<NatsNode>, mut subs: Subscriber) {
    while let Some(message) = subs.next().await {
        let Some(node) = weak.upgrade() else { return };
        let Some(name) = node.subjects.node_of(&message.subject) else {
            continue;
        };
        let Some(peer) = node.peers.get(&name).filter(|p| p.is_up()) else {
            continue;
        };
        let change: SubsChange = match serde_json::from_slice(&message.payload) {
            Ok(change) => change,
            Err(e) => {
                bad("subscription change", &e.to_string());
                continue;
            }
        };
        match step(peer.subs_version.load(Ordering::Acquire), change.v) {
            Step::Old => continue,
            Step::Gap => {
                // A change was missed: the whole table, then.
                fetch_table(&node, peer);
                continue;
            }
            Step::Next => {}
        }
        if let Some(prefix) = change.add {
            peer.subs.add(&peer.name, prefix);
        }
        if let Some(prefix) = change.remove {
            peer.subs.remove(&prefix);
        }
        peer.subs_version.store(change.v, Ordering::Release);
    }
}

/// This node's subscription changes: announced to the others, and the NATS
/// subscriptions for publications made and ended to match.
async fn topics_loop(
    weak: std::sync::Weak<NatsNode>,
    mut changed: tokio::sync::mpsc::UnboundedReceiver<Change>,
) {
    let mut readers: std::collections::HashMap<String, actix_rt::task::JoinHandle<()>> =
        Default::default();
    while let Some(change) = changed.recv().await {
        let Some(node) = weak.upgrade() else { return };
        let v = node.subs_version.fetch_add(1, Ordering::AcqRel) + 1;
        let (todo, announce) = match change {
            Change::Added(prefix) => (
                node.filters.add(node.subjects.topic_filter(&prefix)),
                SubsChange {
                    v,
                    add: Some(prefix),
                    remove: None,
                },
            ),
            Change::Removed(prefix) => (
                node.filters.remove(&node.subjects.topic_filter(&prefix)),
                SubsChange {
                    v,
                    add: None,
                    remove: Some(prefix),
                },
            ),
        };
        if let Ok(payload) = serde_json::to_vec(&announce) {
            let _ = node.outbox.push(Out {
                subject: node.subjects.subscriptions(&node.me.name).into(),
                reply: None,
                payload: payload.into(),
                call: None,
                headers: None,
            });
        }
        match todo {
            Todo::Subscribe(filter) => match node.client.subscribe(filter.clone()).await {
                Ok(subscriber) => {
                    let _ = node.client.flush().await;
                    node.filters.ready(&filter);
                    let reader =
                        actix_rt::spawn(publications(weak.clone(), filter.clone(), subscriber));
                    readers.insert(filter, reader);
                }
                Err(e) => log::error!("nats: cannot subscribe to {filter}: {e}"),
            },
            Todo::Unsubscribe(filter) => {
                if let Some(reader) = readers.remove(&filter) {
                    reader.abort();
                }
            }
            Todo::Nothing => {}
        }
    }
    for reader in readers.into_values() {
        reader.abort();
    }
}

/// Publications that came through filter `filter`.
async fn publications(weak: std::sync::Weak<NatsNode>, filter: String, mut subscriber: Subscriber) {
    while let Some(message) = subscriber.next().await {
        let Some(node) = weak.upgrade() else { return };
        node.count(Kind::Publication);
        if !node.filters.takes(&filter, &message.subject) {
            continue;
        }
        let trace = wire::read_trace(message.headers.as_ref());
        match wire::read_publication(message.payload) {
            Ok(p) => {
                if p.node == node.me.name {
                    continue;
                }
                if node.subjects.topic(&p.topic) != message.subject.as_str() {
                    bad("publication", "its topic is not its subject's");
                    continue;
                }
                node.inbound
                    .deliver(p.topic, p.node, p.worker, trace, p.payload);
            }
            Err(why) => bad("publication", &why),
        }
    }
}

/// Requests of NATS clients to service `name`, on `P.svc.SERVICE.SUBJECT`.
async fn service_loop(
    weak: std::sync::Weak<NatsNode>,
    name: String,
    _service: async_nats::service::Service,
    mut endpoint: async_nats::service::endpoint::Endpoint,
) {
    while let Some(request) = endpoint.next().await {
        let Some(node) = weak.upgrade() else { return };
        let stem = node.subjects.service(&name);
        let subject = Subjects::service_subject(&stem, &request.message.subject);
        let serving = Serving::start(&node);
        let router = node.inbound.router.clone();
        let name = name.clone();
        // A NATS client's own trace, continued in a span of this node's.
        let span = serving_span(wire::read_trace(request.message.headers.as_ref()));
        drop(node);
        let serve = async move {
            let _serving = serving;
            let answer = match subject {
                None => Err(ServiceError::bad_request(
                    "the subject after the service is not a colony subject",
                )),
                Some(subject) => router
                    .request_json(
                        &name,
                        &subject,
                        request.message.payload.clone(),
                        None,
                        Origin::Http,
                        None,
                    )
                    .await
                    .and_then(|reply| {
                        serde_json::to_vec(&reply).map_err(|e| {
                            ServiceError::bad_request(format!("reply is not JSON: {e}"))
                        })
                    }),
            };
            let response = match answer {
                Ok(json) => Ok(Bytes::from(json)),
                Err(e) => Err(async_nats::service::error::Error {
                    code: e.kind.http_status() as usize,
                    status: format!("{}: {}", e.kind.as_str(), e.message),
                }),
            };
            let _ = request.respond(response).await;
        };
        match span {
            None => drop(actix_rt::spawn(serve)),
            Some(span) => drop(actix_rt::spawn(crate::trace::scope(Some(span), serve))),
        }
    }
}

/// What a subscription change of version `v` is to a table at version `known`.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Seen already (or older).
    Old,
    /// The next one: applied.
    Next,
    /// One or more were missed (a version from outside may be any number).
    Gap,
}

fn step(known: u64, v: u64) -> Step {
    if v <= known {
        Step::Old
    } else if known.checked_add(1) == Some(v) {
        Step::Next
    } else {
        Step::Gap
    }
}

#[cfg(test)]
mod tests {
    use super::{step, Step};

    #[test]
    fn subscription_versions_from_outside_cannot_overflow() {
        assert_eq!(step(0, 1), Step::Next);
        assert_eq!(step(4, 4), Step::Old);
        assert_eq!(step(4, 9), Step::Gap);
        assert_eq!(step(u64::MAX, u64::MAX), Step::Old);
        assert_eq!(step(u64::MAX - 1, u64::MAX), Step::Next);
        assert_eq!(step(0, u64::MAX), Step::Gap);
    }
}
