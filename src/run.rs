//! Starting a whole node from its config: the config checked against the app,
//! the HTTP API bound, the node booted (services, bridge), then the API served and
//! the config's `spawn:` children started and attached to it. This is where the
//! node meets its surfaces; the node itself knows them only as the hooks it
//! defines ([`Children`], [`StopServer`]).

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use crate::api;
use crate::app::App;
use crate::config::files::read_token;
use crate::config::NodeConfig;
use crate::node::spawned::notify_listening;
use crate::node::{check, Children, Node, StartError, StopServer};
use crate::spawn::NodeSpawner;
use crate::transport::Backbone;

impl Node {
    /// Starts the services `config` lists, from `app`, each under its supervisor,
    /// the HTTP API if `api.listen` is set, and the nodes of its `spawn:` list.
    /// Returns once everything is started; requests made before a worker is online
    /// wait for it at the dealer.
    pub async fn start(app: impl Into<App>, config: NodeConfig) -> Result<Node, StartError> {
        Self::start_on(app, config, None).await
    }

    /// Starts as [`start`](Self::start) does, linked to the other nodes by
    /// `backbone` instead of a bridge (the config's `bridge` section, if any, is
    /// not used); as on a bridge, the master holds the cluster's queues and locks.
    pub async fn start_with_transport(
        app: impl Into<App>,
        config: NodeConfig,
        backbone: Backbone,
    ) -> Result<Node, StartError> {
        let mut config = config;
        config.bridge = None;
        config.nats = None;
        Self::start_on(app, config, Some(backbone)).await
    }

    async fn start_on(
        app: impl Into<App>,
        config: NodeConfig,
        backbone: Option<Backbone>,
    ) -> Result<Node, StartError> {
        let app: App = app.into();
        let source = config
            .source
            .clone()
            .unwrap_or_else(|| PathBuf::from("<config>"));
        // Children's configs are read before anything starts: a broken one is this
        // node's config error.
        let spawned = check::check(&config, &source, &app)?;

        // Idle API connections, the bridge and spawned children all take descriptors.
        api::limits::raise_fd_limit();
        let listener = match config.api.listen {
            Some(addr) => {
                Some(TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })?)
            }
            None => None,
        };
        let token = match &config.api.token_file {
            Some(path) => Some(read_token(path).map_err(|problem| StartError::Token {
                path: path.clone(),
                problem,
            })?),
            None => None,
        };
        let api_addr = listener.as_ref().and_then(|l| l.local_addr().ok());

        // A node on NATS is connected, and its subscriptions made, before it boots.
        let backbone = match (&config.nats, backbone) {
            (Some(section), None) => Some(crate::nats::backbone(
                crate::nats::prepare(&config, section)
                    .await
                    .map_err(StartError::Transport)?,
            )),
            (_, backbone) => backbone,
        };
        let node = Node::boot(app, config.clone(), api_addr, backbone)?;

        if let Some(listener) = listener {
            let server =
                api::serve(listener, node.clone(), token, &config.api).map_err(|source| {
                    StartError::Bind {
                        addr: api_addr.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                        source,
                    }
                })?;
            log::info!(
                target: "colony::node",
                "node {}: HTTP API on http://{}",
                node.name(),
                server.addr
            );
            let handle = server.handle;
            let stop: StopServer = Box::new(move || Box::pin(handle.stop(true)));
            node.attach_api(stop);
        }
        if !spawned.is_empty() {
            let spawner = NodeSpawner::start(
                &config,
                spawned,
                node.events(),
                node.probe(),
                node.bridge_addr(),
            );
            let children: Box<dyn Children> = Box::new(spawner);
            node.attach_children(children);
        }
        Ok(node)
    }
}

/// Runs a node until `shutdown` resolves, then stops it gracefully, giving requests
/// in flight up to `drain` to finish. Call inside an actix `System`.
pub async fn run(
    app: impl Into<App>,
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> Result<(), StartError> {
    let node = Node::start(app, config).await?;
    notify_listening(node.api_addr(), node.bridge_addr());
    shutdown.await;
    node.shutdown(drain).await;
    Ok(())
}
