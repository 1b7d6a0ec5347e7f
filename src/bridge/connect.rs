//! Connecting: the bridge starting (its listener and the dial loops to
//! `bridge.join`), keeping a link to an address dialed, and opening a connection
//! (TLS and the handshake, under one deadline).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_rt::Arbiter;
use bytes::BytesMut;
use parking_lot::{Mutex, RwLock};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

use super::conn::Conn;
use super::frame::FrameCodec;
use super::handshake::{self, Secret};
use super::state::Bridge;
use super::wire::{Control, Member};
use super::{accept, session, tls};
use crate::backoff::Backoff;
use crate::config::BridgeSection;
use crate::logging::untrusted;
use crate::transport::Inbound;

/// How long a connection may take to open and authenticate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How a dial loop waits between attempts: 100 ms to 5 s, doubling, jittered,
/// afresh after a link that lasted the longest wait.
const REDIAL: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    .jitter()
    .reset_after(Duration::from_secs(5));

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
            counters: Arc::default(),
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

    pub(super) async fn open(
        &self,
        stream: TcpStream,
        dialer: bool,
    ) -> Result<(Framed<Conn, FrameCodec>, String), String> {
        // One deadline for TLS and the secret handshake together: a peer that goes
        // silent at any step costs a task and a socket for no longer than this.
        let opening = async {
            let (io, cert) = match &self.tls {
                Some(tls) if dialer => {
                    let (io, cert) = tls.connect(stream).await?;
                    (Conn::Boxed(Box::new(io)), Some(cert))
                }
                Some(tls) => {
                    let (io, cert) = tls.accept(stream).await?;
                    (Conn::Boxed(Box::new(io)), Some(cert))
                }
                None => (Conn::Plain(stream), None),
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

/// Keeps a link to `addr` open: reconnects with backoff and jitter until the
/// bridge stops or, for a member, until it leaves the table or links otherwise.
pub(super) async fn dial_loop(bridge: Arc<Bridge>, addr: SocketAddr, member: Option<String>) {
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
