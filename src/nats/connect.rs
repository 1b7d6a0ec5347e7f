//! Joining the NATS server before the node boots: the connection (with its
//! token, credentials or TLS), the checks that the server will do (version 2.10
//! or later, JetStream on), the cluster state's streams and buckets, and the
//! node's subscriptions, made before its first beat so that nothing sent to it
//! once the others know it is missed.

use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use async_nats::{Client, ConnectOptions, Event, Subscriber};

use super::state::JetStreamState;
use super::subjects::{token, Subjects};
use crate::backoff::Backoff;
use crate::config::{NatsSection, NodeConfig};

/// How long a node tries to reach the server before it gives up starting.
const FIRST_CONNECT: Duration = Duration::from_secs(10);
/// Reconnects: 50 ms to 5 s, doubling.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
/// Messages one subscription holds before the client drops what comes more.
const SUBSCRIPTION_CAPACITY: usize = 8192;
/// The oldest server that has what colony needs.
const MIN_VERSION: (u64, u64) = (2, 10);

/// What a node on NATS has ready before it boots.
pub(crate) struct Prepared {
    pub(super) client: Client,
    pub(super) subjects: Subjects,
    pub(super) heartbeat: Duration,
    pub(super) state: Arc<JetStreamState>,
    pub(super) subscriptions: Subscriptions,
    /// Where answers to the node's calls come: `INBOX.<call>`.
    pub(super) inbox: String,
    /// Bumped each time the connection to the server is lost.
    pub(super) disconnects: tokio::sync::watch::Receiver<u64>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").finish_non_exhaustive()
    }
}

/// The node's subscriptions.
pub(crate) struct Subscriptions {
    pub(super) requests: Subscriber,
    pub(super) control: Subscriber,
    pub(super) beats: Subscriber,
    pub(super) subs: Subscriber,
    pub(super) inbox: Subscriber,
    /// Each service's NATS services API registration and its endpoint.
    pub(super) services: Vec<(
        String,
        async_nats::service::Service,
        async_nats::service::endpoint::Endpoint,
    )>,
}

/// Connects node `config` to its NATS server and makes ready what it needs
/// there; an error says what is wrong (an unreachable or old server, no
/// JetStream, refused credentials).
pub(crate) async fn prepare(
    config: &NodeConfig,
    section: &NatsSection,
) -> Result<Prepared, String> {
    let node = &config.node.name;
    let (lost, disconnects) = tokio::sync::watch::channel(0u64);
    let client = connect(section, node, lost).await?;
    let version = client.server_info().version;
    if !new_enough(&version) {
        return Err(format!(
            "the NATS server at {} is version {version}; colony needs 2.10 or later \
             (JetStream key-value buckets and work-queue streams as 2.10 has them)",
            section.url.join(", ")
        ));
    }
    let js = async_nats::jetstream::new(client.clone());
    if let Err(e) = js.query_account().await {
        return Err(format!(
            "the NATS server at {} has no JetStream for this account ({e}); \
             start it with JetStream on (nats-server -js, or a jetstream {{}} block)",
            section.url.join(", ")
        ));
    }
    let state =
        JetStreamState::open(js, &section.prefix, node, &config.queues, section.replicas).await?;
    let subjects = Subjects::new(&section.prefix);
    let subscribe = |subject: String| {
        let client = client.clone();
        async move {
            client
                .subscribe(subject.clone())
                .await
                .map_err(|e| format!("cannot subscribe to {subject}: {e}"))
        }
    };
    let inbox = client.new_inbox();
    let mut subscriptions = Subscriptions {
        requests: subscribe(subjects.requests(node)).await?,
        control: subscribe(subjects.control(node)).await?,
        beats: subscribe(subjects.beats()).await?,
        subs: subscribe(subjects.all_subscriptions()).await?,
        inbox: subscribe(format!("{inbox}.*")).await?,
        services: Vec::new(),
    };
    for name in config.services.keys() {
        let subject = subjects.service(name);
        let service = client
            .service_builder()
            .description(format!("colony service {name} on node {node}"))
            .metadata([("node".to_string(), node.clone())].into())
            .start(token(name), env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| format!("cannot register service {name} with NATS: {e}"))?;
        let endpoint = service
            .endpoint_builder()
            .name("request")
            .queue_group(&subject)
            .add(format!("{subject}.>"))
            .await
            .map_err(|e| format!("cannot serve {subject}.> for NATS clients: {e}"))?;
        subscriptions
            .services
            .push((name.clone(), service, endpoint));
    }
    client
        .flush()
        .await
        .map_err(|e| format!("the NATS server did not take the node's subscriptions: {e}"))?;
    Ok(Prepared {
        client,
        subjects,
        heartbeat: section.heartbeat,
        state,
        subscriptions,
        inbox,
        disconnects,
    })
}

/// Whether server version `version` (`2.10.4`, `2.11.0-RC.1`) is 2.10 or later.
pub(crate) fn new_enough(version: &str) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= MIN_VERSION
}

async fn options(
    section: &NatsSection,
    node: &str,
    lost: Arc<tokio::sync::watch::Sender<u64>>,
) -> Result<ConnectOptions, String> {
    let mut options = match &section.credentials_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| format!("nats.credentials_file {}: {e}", path.display()))?,
        None => ConnectOptions::new(),
    };
    if let Some(path) = &section.token_file {
        let token = crate::config::files::read_token(path)
            .map_err(|e| format!("nats.token_file {}: {e}", path.display()))?;
        options = options.token(token);
    }
    if let Some(tls) = &section.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let name = node.to_string();
    Ok(options
        .name(format!("colony {node}"))
        .connection_timeout(Duration::from_secs(2))
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        // A node's own publications and requests never come back to it.
        .no_echo()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let mut backoff = RECONNECT;
            let mut delay = backoff.next_delay();
            for _ in 0..attempts.min(16) {
                delay = backoff.next_delay();
            }
            delay
        })
        .event_callback(move |event| {
            let name = name.clone();
            let lost = lost.clone();
            async move {
                match event {
                    Event::Disconnected => {
                        log::warn!("nats: node {name} lost the server; reconnecting");
                        // What was on its way may be lost: the node's calls fail.
                        lost.send_modify(|n| *n += 1);
                    }
                    Event::Connected => log::info!("nats: node {name} connected to the server"),
                    Event::SlowConsumer(sid) => log::warn!(
                        "nats: node {name} fell behind on subscription {sid}; the server dropped messages"
                    ),
                    other => log::info!("nats: node {name}: {other}"),
                }
            }
        }))
}

/// Connects, trying again with backoff for up to [`FIRST_CONNECT`].
async fn connect(
    section: &NatsSection,
    node: &str,
    lost: tokio::sync::watch::Sender<u64>,
) -> Result<Client, String> {
    let deadline = tokio::time::Instant::now() + FIRST_CONNECT;
    let mut backoff = RECONNECT;
    let lost = Arc::new(lost);
    loop {
        let options = options(section, node, lost.clone()).await?;
        match options.connect(section.url.clone()).await {
            Ok(client) => return Ok(client),
            Err(e) => {
                let delay = backoff.next_delay();
                if tokio::time::Instant::now() + delay >= deadline {
                    return Err(format!(
                        "cannot reach the NATS server at {}: {e}",
                        section.url.join(", ")
                    ));
                }
                log::debug!("nats: cannot reach the server yet ({e}); trying again");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_before_2_10_are_refused() {
        for (v, ok) in [
            ("2.10.0", true),
            ("2.15.1", true),
            ("3.0.0", true),
            ("2.11.0-RC.1", true),
            ("2.9.25", false),
            ("1.4.1", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(super::new_enough(v), ok, "{v}");
        }
    }
}
