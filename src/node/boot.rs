//! Starting a node's services, its backbone and its job consumers from a config
//! that has been checked against the app.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_rt::Arbiter;
use parking_lot::Mutex;

use crate::app::{App, AppService, MASTER_SERVICE};
use crate::bridge::Bridge;
use crate::config::{NodeConfig, Role, ServiceConfig};
use crate::dealer::Dealer;
use crate::events::EventBus;
use crate::message::WorkerId;
use crate::pubsub::PubSub;
use crate::root::Root;
use crate::router::Router;
use crate::service::{LocalService, Slots};
use crate::state::ClusterState;
use crate::supervisor::Supervisor;
use crate::transport::{self, Backbone, Inbound, Member, Offer, Transport};
use crate::worker::WorkerSlot;

use super::consumer;
use super::handle::{Inner, Node, StartError, WeakNode};
use super::spawned;
use super::status::offer;

impl Node {
    /// Starts the services `config` lists, from `app`, each under its supervisor,
    /// and the bridge; `api_addr` is where the surface has bound the HTTP API, told
    /// to the cluster. Returns once everything is started; requests made before a
    /// worker is online wait for it at the dealer. The config has been checked
    /// (`check::check`) before. With a `backbone`, the node is linked to the
    /// others by it instead of by the config's bridge.
    pub(crate) fn boot(
        app: App,
        config: NodeConfig,
        api_addr: Option<SocketAddr>,
        backbone: Option<Backbone>,
    ) -> Result<Node, StartError> {
        let mut config = config;
        // A spawned worker with a bridge but nowhere to join joins its parent.
        if let (Some(bridge), false) = (&mut config.bridge, config.node.role == Some(Role::Master))
        {
            if bridge.join.is_empty() {
                bridge.join.extend(spawned::parent_bridge());
            }
        }
        let name = config.node.name.clone();
        let events = EventBus::default();
        // The master holds the cluster's queues and locks; a node alone holds its own.
        let role = config.role();
        // On NATS the cluster state is in JetStream, and no node holds it.
        let holds = config.nats.is_none()
            && (role == Role::Master || (config.bridge.is_none() && backbone.is_none()));
        let state = match holds {
            true => Some(ClusterState::start(
                &name,
                config.queues.clone(),
                &config.state,
                events.clone(),
            )?),
            false => None,
        };

        let arbiters: Vec<Arbiter> = (0..config.node.threads()).map(|_| Arbiter::new()).collect();
        let handles: Vec<_> = arbiters.iter().map(Arbiter::handle).collect();
        for handle in &handles {
            handle.spawn(anchor_timers());
        }
        let router = Router::new(&name);
        let pubsub = Arc::new(PubSub::new(config.api.subscribe_buffer));
        let node = Node {
            inner: Arc::new(Inner {
                name: name.clone(),
                role,
                started: Instant::now(),
                router: router.clone(),
                root: Mutex::new(None),
                arbiters: Mutex::new(arbiters),
                api: Mutex::new(None),
                api_addr,
                transport: std::sync::OnceLock::new(),
                announcer: std::sync::OnceLock::new(),
                turn: Default::default(),
                stopping: Default::default(),
                pubsub: pubsub.clone(),
                state,
                next_claim: Default::default(),
                spawner: std::sync::OnceLock::new(),
                events: events.clone(),
                restarts: spawned::restarts_from_env(),
                call_failures: Default::default(),
                messenger: Default::default(),
                log: crate::logging::ring_for(&name, config.log.keep, config.log.max_bytes),
                log_answer_bytes: super::logs::answer_bytes(&config),
            }),
        };

        let mut supervisors = Vec::new();
        let mut consumers = Vec::new();
        let mut spread = 0;
        for AppService { def, bind } in app.services {
            let service_config = if def.name == MASTER_SERVICE {
                if role != Role::Master {
                    continue;
                }
                ServiceConfig {
                    workers: Some(1),
                    ..ServiceConfig::default()
                }
            } else {
                match config.services.get(&def.name) {
                    Some(c) => c.clone(),
                    None => continue,
                }
            };
            let workers = service_config.workers.unwrap_or(handles.len());
            let slots = (0..workers)
                .map(|i| Arc::new(WorkerSlot::new(WorkerId::new(&name, &def.name, i))))
                .collect();
            // Rotate each service's first worker so that services share the threads.
            let mut threads = handles.clone();
            threads.rotate_left(spread % handles.len());
            spread += workers;
            let service = Arc::new(LocalService {
                name: def.name.clone(),
                dealer: Dealer::new(&def.name, workers, service_config.queue),
                config: service_config,
                def: Arc::new(def),
                slots: Slots::new(slots),
                threads,
                metrics: Default::default(),
            });
            router.insert(service.clone());
            if !service.def.consumes.is_empty() {
                consumers.push(service.clone());
            }
            let supervisor = Supervisor::new(service.clone(), bind(&node), &name, events.clone());
            supervisors.push((service.name.clone(), supervisor));
        }
        let offers: Vec<Offer> = router.services().iter().map(|s| offer(s)).collect();
        let inbound = Inbound {
            router: router.clone(),
            events: events.clone(),
            pubsub: pubsub.clone(),
            local: Arc::new(WeakNode(Arc::downgrade(&node.inner))),
        };
        let mut me = Member {
            name: name.clone(),
            role: role.to_string(),
            bridge: ([0, 0, 0, 0], 0).into(),
            api: api_addr,
            services: offers,
        };
        // Before any worker starts: a transport that cannot start leaves nothing to
        // undo but the idle threads.
        let transport: Option<Result<Arc<dyn Transport>, StartError>> = match backbone {
            Some(backbone) => Some((backbone.0)(me, inbound).map_err(StartError::Transport)),
            None => config.bridge.clone().map(|section| {
                me.bridge = section.listen;
                match Bridge::start(me, section, inbound) {
                    Ok(bridge) => Ok(bridge as Arc<dyn Transport>),
                    Err(e) => Err(e.into()),
                }
            }),
        };
        match transport {
            Some(Ok(transport)) => {
                let _ = node.inner.transport.set(transport);
            }
            Some(Err(e)) => {
                for arbiter in node.inner.arbiters.lock().drain(..) {
                    arbiter.stop();
                }
                return Err(e);
            }
            None => {}
        }
        match node.start_messenger(&config) {
            Ok(messenger) => {
                let _ = node.inner.messenger.set(messenger);
            }
            Err(e) => {
                for arbiter in node.inner.arbiters.lock().drain(..) {
                    arbiter.stop();
                }
                return Err(e);
            }
        }
        if let Some(transport) = node.inner.transport.get() {
            let announcer = transport::announce_changes(transport, &pubsub);
            let _ = node.inner.announcer.set(announcer);
        }
        let root = Root::new(&name, events.clone(), supervisors).start();
        *node.inner.root.lock() = Some(root);
        for service in consumers {
            consumer::start(&node, &service, &service.slots.get());
        }

        Ok(node)
    }
}

/// Keeps one timer pending on a worker thread, a second at most ahead.
///
/// A thread's timer driver is woken (an `eventfd` write) for every timer set
/// earlier than the earliest one it knew of when it last slept; with none
/// pending then, that is every timer until it sleeps again. Each request a
/// worker's thread serves sets one (its deadline), so without this anchor a
/// busy worker thread would wake itself once per request.
async fn anchor_timers() {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
