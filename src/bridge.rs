//! The bridge: how nodes find, authenticate and talk to each other.
//!
//! Every node listens on `bridge.listen`. A worker node dials the master(s) in
//! `bridge.join` and announces itself (`Join`: its addresses and the services it
//! runs with their capacity). The master keeps the member table and sends it to
//! every member on each change; members then connect to each other directly (the
//! node whose name sorts first dials), so a request to any node costs one network
//! round trip. A link that stays silent for three heartbeats is down: requests
//! waiting on it fail with `NodeDown`, the master drops the member and tells the
//! others, and the dialer reconnects with exponential backoff and jitter (100 ms
//! up to 5 s). Node up and down are lifecycle events.
//!
//! - `frame`: length-prefixed frames with a maximum checked before allocation.
//! - `wire`: the messages inside frames.
//! - `handshake`: version agreement and the HMAC proof of the cluster secret.
//! - `tls`: optional mutual TLS under the handshake.
//! - `peer`: one live connection: send queue, heartbeats, requests in flight.
//!
//! Connections run on the bridge's own arbiter thread, apart from the workers'.

pub mod frame;
pub mod handshake;
pub(crate) mod peer;
pub(crate) mod tls;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_rt::{Arbiter, ArbiterHandle};
use bytes::BytesMut;
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

use crate::config::{BridgeSection, Role};
use crate::error::ServiceError;
use crate::guard::Origin;
use crate::message::WorkerId;
use crate::messages::{EventBus, LifecycleEvent};
use crate::router::Router;
use crate::status::NodeStatus;
use frame::FrameCodec;
use futures::future::BoxFuture;
use handshake::Secret;
use peer::Peer;
use wire::{Control, Member, RequestFrame, TO_WORKER};

/// How long a connection may take to open and authenticate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the bridge asks of its own node for peers: its status, and kills.
pub(crate) trait LocalNode: Send + Sync {
    /// This node's status.
    fn status(&self) -> NodeStatus;
    /// Kills one of this node's workers.
    fn kill(&self, worker: WorkerId) -> BoxFuture<'static, Result<(), ServiceError>>;
}

/// A node's bridge to the rest of the cluster.
pub(crate) struct Bridge {
    me: Member,
    config: BridgeSection,
    secret: Secret,
    tls: Option<tls::Tls>,
    router: Router,
    events: EventBus,
    local: Box<dyn LocalNode>,
    arbiter: Arbiter,
    peers: RwLock<HashMap<String, Arc<Peer>>>,
    members: Mutex<BTreeMap<String, Member>>,
    dialing: Mutex<Vec<String>>,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("node", &self.me.name)
            .finish()
    }
}

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The secret file is missing, unreadable or too short.
    #[error("bridge.secret_file {path}: {problem}")]
    Secret {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The TLS files do not load.
    #[error("bridge.tls: {0}")]
    Tls(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on bridge address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Bridge {
    /// Binds the listener and starts connecting. `me` describes this node, its
    /// `bridge` address is filled in from the bound listener.
    pub(crate) fn start(
        mut me: Member,
        config: BridgeSection,
        router: Router,
        events: EventBus,
        local: Box<dyn LocalNode>,
    ) -> Result<Arc<Bridge>, BridgeError> {
        let secret = Secret::read(&config.secret_file).map_err(|problem| BridgeError::Secret {
            path: config.secret_file.display().to_string(),
            problem,
        })?;
        let tls = match &config.tls {
            Some(section) => Some(tls::Tls::load(section).map_err(BridgeError::Tls)?),
            None => None,
        };
        let listener = std::net::TcpListener::bind(config.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| BridgeError::Bind {
                addr: config.listen,
                source,
            })?;
        me.bridge = listener.local_addr().map_err(|source| BridgeError::Bind {
            addr: config.listen,
            source,
        })?;
        let arbiter = Arbiter::new();
        let bridge = Arc::new(Bridge {
            members: Mutex::new(BTreeMap::from([(me.name.clone(), me.clone())])),
            me,
            config,
            secret,
            tls,
            router,
            events,
            local,
            arbiter,
            peers: RwLock::default(),
            dialing: Mutex::default(),
            stopping: AtomicBool::new(false),
        });
        let handle = bridge.arbiter.handle();
        let accepting = bridge.clone();
        handle.spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(accepting, listener).await,
                Err(e) => log::error!("bridge listener unusable: {e}"),
            }
        });
        for addr in bridge.config.join.clone() {
            handle.spawn(dial_loop(bridge.clone(), addr, None));
        }
        log::info!("bridge of node {} on {}", bridge.me.name, bridge.me.bridge);
        Ok(bridge)
    }

    /// Where this node's bridge listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.me.bridge
    }

    pub(crate) fn config(&self) -> &BridgeSection {
        &self.config
    }

    fn handle(&self) -> ArbiterHandle {
        self.arbiter.handle()
    }

    fn is_master(&self) -> bool {
        self.me.role == Role::Master.to_string()
    }

    /// The live link to `node`.
    pub(crate) fn peer(&self, node: &str) -> Option<Arc<Peer>> {
        self.peers.read().get(node).filter(|p| p.is_up()).cloned()
    }

    /// Every live link.
    pub(crate) fn peers(&self) -> Vec<Arc<Peer>> {
        let mut peers: Vec<_> = self
            .peers
            .read()
            .values()
            .filter(|p| p.is_up())
            .cloned()
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        peers
    }

    /// The live links to nodes that run `service`, with their offer and our load.
    pub(crate) fn peers_offering(
        &self,
        service: &str,
    ) -> Vec<(Arc<Peer>, wire::Offer, Arc<AtomicU64>)> {
        self.peers
            .read()
            .values()
            .filter(|p| p.is_up())
            .filter_map(|p| {
                p.offer(service)
                    .map(|(offer, load)| (p.clone(), offer, load))
            })
            .collect()
    }

    /// The members this node knows of, itself included.
    pub(crate) fn members(&self) -> Vec<Member> {
        self.members.lock().values().cloned().collect()
    }

    /// The master's name, if a member is the master.
    pub(crate) fn master(&self) -> Option<String> {
        self.members
            .lock()
            .values()
            .find(|m| m.role == Role::Master.to_string())
            .map(|m| m.name.clone())
    }

    pub(crate) fn local_status(&self) -> NodeStatus {
        self.local.status()
    }

    pub(crate) fn local_kill(
        &self,
        worker: WorkerId,
    ) -> BoxFuture<'static, Result<(), ServiceError>> {
        self.local.kill(worker)
    }

    /// Serves a peer's request with this node's own workers.
    pub(crate) async fn serve(
        &self,
        request: RequestFrame,
        from: &str,
    ) -> Result<Vec<u8>, ServiceError> {
        let timeout = Duration::from_millis(u64::from(request.timeout_ms.max(1)));
        let worker = (request.flags & TO_WORKER != 0).then_some(request.worker as usize);
        let reply = self
            .router
            .request_json(
                &request.service,
                &request.subject,
                request.payload.to_vec(),
                Some(timeout),
                Origin::Node(from.to_string()),
                worker,
            )
            .await?;
        serde_json::to_vec(&reply)
            .map_err(|e| ServiceError::bad_request(format!("reply is not JSON: {e}")))
    }

    pub(crate) fn peer_up(&self, peer: Arc<Peer>) {
        if let Some(member) = self.members.lock().get(&peer.name) {
            peer.set_offers(&member.services);
        }
        let old = self.peers.write().insert(peer.name.clone(), peer.clone());
        if let Some(old) = old {
            old.shut();
        }
        log::info!("bridge: linked with node {}", peer.name);
        let mut frame = BytesMut::new();
        let join = Control::Join {
            member: self.me.clone(),
        };
        if join.encode(&mut frame, self.config.max_frame).is_ok() {
            if let Err(e) = peer.send(frame.freeze()) {
                log::warn!("bridge: cannot introduce this node to {}: {e}", peer.name);
            }
        }
    }

    pub(crate) fn peer_down(&self, peer: &Arc<Peer>, why: &str) {
        {
            let mut peers = self.peers.write();
            if peers.get(&peer.name).is_some_and(|p| Arc::ptr_eq(p, peer)) {
                peers.remove(&peer.name);
            } else {
                // A newer link to the same node replaced this one.
                return;
            }
        }
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        log::warn!("bridge: node {} is down: {why}", peer.name);
        self.events.publish(LifecycleEvent::NodeDown {
            node: peer.name.clone(),
            reason: why.to_string(),
        });
        if self.is_master() {
            self.members.lock().remove(&peer.name);
            self.broadcast_members();
        }
    }

    pub(crate) fn control(self: &Arc<Self>, peer: &Arc<Peer>, control: Control) {
        match control {
            Control::Join { member } => {
                if member.name != peer.name {
                    log::warn!(
                        "bridge: node {} announced itself as {}; ignored",
                        peer.name,
                        member.name
                    );
                    return;
                }
                peer.set_offers(&member.services);
                let new = self
                    .members
                    .lock()
                    .insert(member.name.clone(), member)
                    .is_none();
                if self.is_master() {
                    if new {
                        self.events.publish(LifecycleEvent::NodeUp {
                            node: peer.name.clone(),
                        });
                    }
                    self.broadcast_members();
                }
            }
            Control::Members { members } => self.learn(members),
            other => log::warn!("bridge: unexpected message from {}: {other:?}", peer.name),
        }
    }

    /// Takes the master's member table, links to new members and forgets gone ones.
    fn learn(self: &Arc<Self>, members: Vec<Member>) {
        let table: BTreeMap<String, Member> = members
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .chain([(self.me.name.clone(), self.me.clone())])
            .collect();
        for member in table.values() {
            if let Some(peer) = self.peer(&member.name) {
                peer.set_offers(&member.services);
            }
        }
        let gone: Vec<String> = self
            .members
            .lock()
            .keys()
            .filter(|name| !table.contains_key(*name))
            .cloned()
            .collect();
        *self.members.lock() = table.clone();
        for name in gone {
            if let Some(peer) = self.peer(&name) {
                peer.shut();
            }
        }
        for member in table.values() {
            let should_dial = member.name.as_str() > self.me.name.as_str()
                && member.role != Role::Master.to_string()
                && self.peer(&member.name).is_none();
            if should_dial && !self.dialing.lock().contains(&member.name) {
                self.dialing.lock().push(member.name.clone());
                self.handle().spawn(dial_loop(
                    self.clone(),
                    member.bridge,
                    Some(member.name.clone()),
                ));
            }
        }
    }

    fn broadcast_members(&self) {
        let members = self.members();
        let mut frame = BytesMut::new();
        if let Err(e) = (Control::Members { members }).encode(&mut frame, self.config.max_frame) {
            log::error!("bridge: member table does not fit a frame: {e}");
            return;
        }
        let frame = frame.freeze();
        for peer in self.peers() {
            if let Err(e) = peer.send(frame.clone()) {
                log::warn!("bridge: member table not sent to {}: {e}", peer.name);
            }
        }
    }

    /// Closes every link and stops connecting.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for peer in self.peers() {
            peer.shut();
        }
        self.arbiter.stop();
    }

    async fn open<S>(
        &self,
        stream: S,
        dialer: bool,
    ) -> Result<(Framed<Box<dyn Io>, FrameCodec>, String), String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // One deadline for TLS and the secret handshake together: a peer that goes
        // silent at any step costs a task and a socket for no longer than this.
        let opening = async {
            let io: Box<dyn Io> = match &self.tls {
                Some(tls) if dialer => Box::new(tls.connect(stream).await?),
                Some(tls) => Box::new(tls.accept(stream).await?),
                None => Box::new(stream),
            };
            let mut framed = Framed::new(io, FrameCodec::new(self.config.max_frame));
            let peer = if dialer {
                handshake::dial(&mut framed, &self.me.name, &self.secret).await
            } else {
                handshake::accept(&mut framed, &self.me.name, &self.secret).await
            };
            peer.map(|peer| (framed, peer)).map_err(|e| e.to_string())
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, opening).await {
            Ok(opened) => opened,
            Err(_) => Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
        }
    }
}

/// A byte stream the bridge can run a connection over: TCP or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn accept_loop(bridge: Arc<Bridge>, listener: TcpListener) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("bridge: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let bridge = bridge.clone();
        actix_rt::spawn(async move {
            match bridge.open(stream, false).await {
                Ok((framed, name)) => {
                    let why = peer::run(bridge, framed, name.clone()).await;
                    log::debug!("bridge: link from {name} ended: {why}");
                }
                Err(why) => log::warn!("bridge: rejected connection from {from}: {why}"),
            }
        });
    }
}

/// Keeps a link to `addr` open: reconnects with backoff and jitter until the
/// bridge stops or, for a member, until it leaves the table or links otherwise.
async fn dial_loop(bridge: Arc<Bridge>, addr: SocketAddr, member: Option<String>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if bridge.stopping.load(Ordering::Acquire) {
            break;
        }
        if let Some(name) = &member {
            let known = bridge.members.lock().contains_key(name);
            if !known || bridge.peer(name).is_some() {
                break;
            }
        }
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                match bridge.open(stream, true).await {
                    Ok((framed, name)) => {
                        backoff = BACKOFF_MIN;
                        let why = peer::run(bridge.clone(), framed, name.clone()).await;
                        log::info!("bridge: link to {name} at {addr} ended: {why}");
                    }
                    Err(why) => log::warn!("bridge: connection to {addr} refused: {why}"),
                }
            }
            Ok(Err(e)) => log::debug!("bridge: cannot reach {addr}: {e}"),
            Err(_) => log::debug!("bridge: connecting to {addr} timed out"),
        }
        if bridge.stopping.load(Ordering::Acquire) {
            break;
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    if let Some(name) = member {
        bridge.dialing.lock().retain(|n| *n != name);
    }
}

/// `base` scaled by a random factor in [0.5, 1.5), so reconnecting nodes spread out.
fn jitter(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let factor = match getrandom::fill(&mut byte) {
        Ok(()) => 0.5 + f64::from(byte[0]) / 256.0,
        Err(_) => 1.0,
    };
    base.mul_f64(factor)
}
