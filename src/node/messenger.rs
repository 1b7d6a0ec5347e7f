//! A node's side of messenger compatibility (see `messenger`): the services it
//! reaches through Node listeners, the Speakers it serves on
//! `messenger.listen`, and the publications it shouts to Node listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::value::RawValue;

use super::handle::{Node, StartError};
use crate::config::NodeConfig;
use crate::error::ServiceError;
use crate::messenger::{self, Running, Speaker};

/// Lines a `shout_to` subscription holds before dropping, as a subscriber does.
const SHOUT_LINES: usize = 4096;

/// The node as the messenger listener's host: requests and publications go
/// through it as they would from any caller.
struct Host(std::sync::Weak<super::handle::Inner>);

impl messenger::Host for Host {
    fn request(
        &self,
        service: &str,
        subject: &str,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Box<RawValue>, ServiceError>> {
        let node = self.0.upgrade().map(|inner| Node { inner });
        let (service, subject) = (service.to_string(), subject.to_string());
        Box::pin(async move {
            match node {
                Some(node) => node.request_json(&service, &subject, body, None).await,
                None => Err(super::handle::node_stopped("(stopped)")),
            }
        })
    }

    fn thread_of(&self, service: &str) -> Option<actix_rt::ArbiterHandle> {
        let inner = self.0.upgrade()?;
        let worker = inner.router.likely_worker(service, None)?;
        Some(worker.arbiter.clone())
    }

    fn threads(&self) -> Vec<actix_rt::ArbiterHandle> {
        self.0.upgrade().map_or_else(Vec::new, |inner| {
            inner.arbiters.lock().iter().map(|a| a.handle()).collect()
        })
    }

    fn publish(&self, topic: &str, body: Bytes) -> Result<usize, ServiceError> {
        let body = if body.is_empty() {
            Bytes::from_static(b"null")
        } else {
            body
        };
        match self.0.upgrade() {
            Some(inner) => Node { inner }.publish_json(topic, body),
            None => Err(super::handle::node_stopped("(stopped)")),
        }
    }
}

impl Node {
    /// Starts what `config`'s `messenger:` section and messenger-backed services
    /// ask for: speakers, the listener, the shouts.
    pub(super) fn start_messenger(&self, config: &NodeConfig) -> Result<Running, StartError> {
        let max_message = config
            .messenger
            .as_ref()
            .map_or(1024 * 1024, |m| m.max_message);
        let mut messenger = Running::default();
        for (name, service) in &config.services {
            if !service.messenger.is_empty() {
                let speaker =
                    Speaker::start(format!("service {name}"), &service.messenger, max_message);
                messenger
                    .services
                    .insert(name.clone(), (speaker, service.timeout));
            }
        }
        let Some(section) = &config.messenger else {
            return Ok(messenger);
        };
        if let Some(addr) = section.listen {
            let bind = |source| StartError::Bind { addr, source };
            let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
            listener.set_nonblocking(true).map_err(bind)?;
            let bound = listener.local_addr().map_err(bind)?;
            log::info!("node {}: messenger listener on {bound}", self.inner.name);
            messenger.listen = Some(bound);
            let listener = tokio::net::TcpListener::from_std(listener).map_err(bind)?;
            let host = Arc::new(Host(Arc::downgrade(&self.inner)));
            let stop = messenger.stop.clone();
            let serving = messenger::serve(listener, section.clone(), host);
            actix_rt::spawn(async move { stop.run_until_cancelled(serving).await });
        }
        for (i, target) in section.shout_to.iter().enumerate() {
            let speaker =
                Speaker::start(format!("messenger.shout_to[{i}]"), &target.to, max_message);
            for (topic, subject) in &target.topics {
                let (subscription, mut lines) = self
                    .subscribe_lines(topic, SHOUT_LINES)
                    .map_err(|e| StartError::Transport(format!("messenger.shout_to[{i}]: {e}")))?;
                let speaker = speaker.clone();
                let (topic, subject) = (topic.clone(), subject.clone());
                let stop = messenger.stop.clone();
                actix_rt::spawn(async move {
                    let _subscription = subscription;
                    let shouting = async {
                        while let Some(line) = lines.recv().await {
                            shout_line(&speaker, &topic, &subject, &line);
                        }
                    };
                    stop.run_until_cancelled(shouting).await;
                });
            }
            messenger.shouters.push(speaker);
        }
        Ok(messenger)
    }

    /// The speaker and timeout of `service`, if Node listeners back it here.
    pub(super) fn messenger_service(&self, service: &str) -> Option<(Arc<Speaker>, Duration)> {
        self.inner.messenger.get()?.service(service)
    }

    /// Where Node Speakers connect to this node (`messenger.listen`, bound).
    pub fn messenger_addr(&self) -> Option<SocketAddr> {
        self.inner.messenger.get().and_then(|m| m.listen)
    }
}

/// A publication as a subscription line, `{"topic","meta","data"}`.
#[derive(serde::Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    data: Option<&'a RawValue>,
}

/// Shouts the publication `line` as `subject` when its topic is `topic` itself.
fn shout_line(speaker: &Speaker, topic: &str, subject: &str, line: &[u8]) {
    let Ok(line) = serde_json::from_slice::<Line>(line) else {
        // `{"dropped":N}`: the listeners were too slow to keep up.
        log::warn!(
            "messenger: shouts to `{subject}` dropped: {}",
            String::from_utf8_lossy(line).trim()
        );
        return;
    };
    if line.topic != topic {
        return;
    }
    let data = line.data.unwrap_or(RawValue::NULL);
    if let Err(e) = speaker.shout(subject, data) {
        log::warn!("messenger: shout `{subject}` failed: {e}");
    }
}
