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
//! - `accept`: incoming connections before authentication: the caps on
//!   handshakes, overall and per source, and the refusal log.
//! - `frame`: length-prefixed frames with a maximum checked before allocation.
//! - `wire`: the messages inside frames.
//! - `handshake`: version agreement and the HMAC proof of the cluster secret.
//! - `tls`: optional mutual TLS under the handshake.
//! - `identity`: who may hold a link: one live link per name, one master, the
//!   member table only from it, certificates that name their node.
//! - `peer`: one live link, as a `transport::Link`: its send queue and one table of the
//!   calls waiting for its answers.
//! - `session`: the tasks of one connection: writer, reader, heartbeats.
//! - `control`: every control message after the handshake: membership,
//!   subscription tables, status, kills, leaving.
//! - `pubsub`: publications and subscription changes across links; the topic
//!   prefixes a peer's subscribers hold, bounded.
//!
//! Connections run on the bridge's own arbiter thread, apart from the workers'.
//!
//! The bridge is a backbone: it implements `transport::Transport`, and calls into
//! its node through `transport::Inbound`.

mod accept;
mod control;
pub mod frame;
pub mod handshake;
mod identity;
mod peer;
mod pubsub;
mod session;
pub(crate) mod tls;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_rt::{Arbiter, ArbiterHandle};
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

use crate::backoff::Backoff;
use crate::config::{BridgeSection, Role};
use crate::logging::untrusted;
use crate::pubsub::{Change, Delivery};
pub use crate::transport::BridgeStats;
use crate::transport::{Inbound, Link, Offered, Transport};
use bytes::BytesMut;
use frame::FrameCodec;
use handshake::Secret;
use peer::Peer;
use wire::{Control, Member};

/// How long a connection may take to open and authenticate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a node said it was leaving requests for a service only it ran
/// wait for the service to come back (long enough for a reload's drain and start).
const RETURN_HOLD: Duration = Duration::from_secs(15);
/// How a dial loop waits between attempts: 100 ms to 5 s, doubling, jittered,
/// afresh after a link that lasted the longest wait.
const REDIAL: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    .jitter()
    .reset_after(Duration::from_secs(5));

#[derive(Default)]
pub(crate) struct Counters {
    frames_in: [AtomicU64; 6],
    bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    links_opened: AtomicU64,
    reconnects: AtomicU64,
    /// Every node this node has linked with.
    linked: Mutex<std::collections::HashSet<String>>,
}

impl Counters {
    pub(crate) fn received(&self, kind: u8, len: usize) {
        if let Some(n) = self.frames_in.get(usize::from(kind).wrapping_sub(1)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes_in.fetch_add(len as u64 + 5, Ordering::Relaxed);
    }
}

/// One peer request being served; see [`Bridge::serving`].
pub(crate) struct Serving(Arc<AtomicU64>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A node's bridge to the rest of the cluster.
pub(crate) struct Bridge {
    me: Member,
    config: BridgeSection,
    secret: Secret,
    tls: Option<tls::Tls>,
    /// Where what peers send goes.
    inbound: Inbound,
    pub(crate) counters: Counters,
    arbiter: Arbiter,
    peers: RwLock<HashMap<String, Arc<Peer>>>,
    members: Mutex<BTreeMap<String, Member>>,
    dialing: Mutex<Vec<String>>,
    /// The node linked now at each `bridge.join` address: the masters this node
    /// joined (see `identity`).
    joined: Mutex<HashMap<SocketAddr, String>>,
    stopping: AtomicBool,
    /// Peer requests being served now.
    serving: Arc<AtomicU64>,
    /// Services offered by nodes that said they were leaving, with until when a
    /// request for one of them waits for a node that runs it to (re)appear.
    returning: Mutex<HashMap<String, tokio::time::Instant>>,
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
        inbound: Inbound,
    ) -> Result<Arc<Bridge>, BridgeError> {
        let secret = Secret::read(&config.secret_file).map_err(|problem| BridgeError::Secret {
            path: config.secret_file.display().to_string(),
            problem,
        })?;
        let tls = match &config.tls {
            Some(section) => Some(tls::Tls::load(section, &me.name).map_err(BridgeError::Tls)?),
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
            inbound,
            counters: Counters::default(),
            arbiter,
            peers: RwLock::default(),
            dialing: Mutex::default(),
            joined: Mutex::default(),
            stopping: AtomicBool::new(false),
            serving: Arc::default(),
            returning: Mutex::default(),
        });
        let handle = bridge.arbiter.handle();
        let accepting = bridge.clone();
        handle.spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => accept::accept_loop(accepting, listener).await,
                Err(e) => log::error!("bridge listener unusable: {e}"),
            }
        });
        for addr in bridge.config.join.clone() {
            handle.spawn(dial_loop(bridge.clone(), addr, None));
        }
        log::info!("bridge of node {} on {}", bridge.me.name, bridge.me.bridge);
        Ok(bridge)
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

    /// Tells every peer that this node is leaving and waits (until `deadline`) for
    /// each to answer: from then on no new request comes, while those already sent
    /// are served.
    pub(crate) async fn leave(&self, deadline: tokio::time::Instant) {
        let peers = self.peers();
        futures::future::join_all(peers.iter().map(|p| p.leave(deadline))).await;
    }

    /// Traffic since the bridge started.
    pub(crate) fn stats(&self) -> BridgeStats {
        let c = &self.counters;
        BridgeStats {
            frames_in: std::array::from_fn(|i| c.frames_in[i].load(Ordering::Relaxed)),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            links_opened: c.links_opened.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            peers_up: self.peers().len() as u64,
        }
    }

    /// Until when a request for `service`, which no node runs now, may wait for a
    /// node that left to come back with it.
    pub(crate) fn returning(&self, service: &str) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let mut returning = self.returning.lock();
        returning.retain(|_, until| *until > now);
        returning.get(service).copied()
    }

    /// Counts one peer request as being served until the guard drops.
    pub(crate) fn serving(&self) -> Serving {
        self.serving.fetch_add(1, Ordering::AcqRel);
        Serving(self.serving.clone())
    }

    /// Waits (until `deadline`) for the peer requests being served to be answered
    /// and for every queued frame to be written.
    pub(crate) async fn flush(&self, deadline: tokio::time::Instant) {
        let done = || {
            self.serving.load(Ordering::Acquire) == 0 && self.peers().iter().all(|p| p.flushed())
        };
        while !done() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
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
            let (io, cert): (Box<dyn Io>, _) = match &self.tls {
                Some(tls) if dialer => {
                    let (io, cert) = tls.connect(stream).await?;
                    (Box::new(io), Some(cert))
                }
                Some(tls) => {
                    let (io, cert) = tls.accept(stream).await?;
                    (Box::new(io), Some(cert))
                }
                None => (Box::new(stream), None),
            };
            let mut framed = Framed::new(io, FrameCodec::new(self.config.max_frame));
            let peer = if dialer {
                handshake::dial(&mut framed, &self.me.name, &self.secret).await
            } else {
                handshake::accept(&mut framed, &self.me.name, &self.secret).await
            };
            let peer = peer.map_err(|e| e.to_string())?;
            // The certificate must name the node the Hello named.
            if let Some(Err(why)) = cert.map(|c| c.check(&peer)) {
                let refused = Control::Refused {
                    reason: why.clone(),
                };
                let mut frame = BytesMut::new();
                if refused.encode(&mut frame, self.config.max_frame).is_ok() {
                    use tokio::io::AsyncWriteExt;
                    let _ = framed.get_mut().write_all(&frame).await;
                    let _ = framed.get_mut().shutdown().await;
                }
                return Err(why);
            }
            Ok((framed, peer))
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, opening).await {
            Ok(opened) => opened,
            Err(_) => Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
        }
    }
}

impl Transport for Bridge {
    fn link(&self, node: &str) -> Option<Arc<dyn Link>> {
        self.peer(node).map(|p| p as Arc<dyn Link>)
    }

    fn links(&self) -> Vec<Arc<dyn Link>> {
        self.peers()
            .into_iter()
            .map(|p| p as Arc<dyn Link>)
            .collect()
    }

    fn offering(&self, service: &str) -> Vec<Offered> {
        self.peers
            .read()
            .values()
            .filter(|p| p.is_up() && !p.leaving.load(Ordering::Acquire))
            .filter_map(|p| {
                p.offer(service)
                    .map(|(offer, load)| (p.clone() as Arc<dyn Link>, offer, load))
            })
            .collect()
    }

    fn members(&self) -> Vec<Member> {
        Bridge::members(self)
    }

    fn master(&self) -> Option<String> {
        Bridge::master(self)
    }

    fn returning(&self, service: &str) -> Option<tokio::time::Instant> {
        Bridge::returning(self, service)
    }

    fn publish(&self, delivery: &Delivery) -> usize {
        Bridge::publish(self, delivery)
    }

    fn subscribers(&self, topic: &str) -> usize {
        Bridge::subscribers(self, topic)
    }

    fn subscriptions_changed(&self, change: Change) {
        self.announce(change)
    }

    fn leave(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, ()> {
        Box::pin(Bridge::leave(self, deadline))
    }

    fn flush(&self, deadline: tokio::time::Instant) -> BoxFuture<'_, ()> {
        Box::pin(Bridge::flush(self, deadline))
    }

    fn stop(&self) {
        Bridge::stop(self)
    }

    fn addr(&self) -> Option<SocketAddr> {
        Some(self.me.bridge)
    }

    fn stats(&self) -> Option<BridgeStats> {
        Some(Bridge::stats(self))
    }
}

/// A byte stream the bridge can run a connection over: TCP or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Keeps a link to `addr` open: reconnects with backoff and jitter until the
/// bridge stops or, for a member, until it leaves the table or links otherwise.
async fn dial_loop(bridge: Arc<Bridge>, addr: SocketAddr, member: Option<String>) {
    let mut backoff = REDIAL;
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
                        if member.is_none() {
                            bridge.set_joined(addr, Some(&name));
                        }
                        let opened = tokio::time::Instant::now();
                        let why = session::run(bridge.clone(), framed, name.clone()).await;
                        if member.is_none() {
                            bridge.set_joined(addr, None);
                        }
                        // A link refused or dropped at once backs off like a failed dial.
                        backoff.ran_for(opened.elapsed());
                        log::info!(
                            "bridge: link to {name} at {addr} ended: {}",
                            untrusted(&why)
                        );
                    }
                    Err(why) => {
                        log::warn!("bridge: connection to {addr} refused: {}", untrusted(&why))
                    }
                }
            }
            Ok(Err(e)) => log::debug!("bridge: cannot reach {addr}: {e}"),
            Err(_) => log::debug!("bridge: connecting to {addr} timed out"),
        }
        if bridge.stopping.load(Ordering::Acquire) {
            break;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
    if let Some(name) = member {
        bridge.dialing.lock().retain(|n| *n != name);
    }
}
