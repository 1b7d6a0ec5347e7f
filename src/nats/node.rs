//! This node's side of the cluster over NATS: what it knows of the others, the
//! calls it waits on, what it sends, and the counts of what it receives. Its
//! tasks are in `serve`, its links in `link`, and the transport the node calls
//! in `cluster`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use super::outbox::{Out, Outbox};
use super::peers::{Peer, Peers};
use super::state::JetStreamState;
use super::subjects::Subjects;
use super::topics::Filters;
use crate::config::Role;
use crate::error::ServiceError;
use crate::pubsub::Change;
use crate::transport::{self, Answer, Inbound, Member, Offer};

/// Beats a node may miss before it is down.
pub(super) const MISSED_BEATS: u32 = 3;
/// Kinds of message received, as [`BridgeStats::frames_in`] counts them.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Control = 0,
    Request = 1,
    Reply = 2,
    Beat = 3,
    Publication = 4,
}

/// Calls waiting for an answer at most.
const MAX_CALLS: usize = 1 << 20;

/// A call waiting for its answer: where the answer goes, and the node that
/// holds the call.
pub(super) type Waiting = (oneshot::Sender<Answer>, Arc<str>);

/// This node's side of the cluster over NATS.
pub(crate) struct NatsNode {
    pub(super) me: Member,
    /// Its services now (`me.services` as it started, then as scaled): its
    /// beats carry them.
    pub(super) offers: RwLock<Vec<Offer>>,
    /// This run of the node, so the others tell a restart from a beat.
    pub(super) instance: String,
    pub(super) client: Client,
    pub(super) subjects: Subjects,
    pub(super) inbound: Inbound,
    pub(super) heartbeat: Duration,
    pub(super) peers: Peers,
    /// Calls waiting for their answer, by number: where it goes, and the node
    /// that holds the call.
    pub(super) calls: Mutex<HashMap<u64, Waiting>>,
    pub(super) next_call: AtomicU64,
    /// Where answers to this node's calls come: `INBOX.<call>`.
    pub(super) inbox: String,
    pub(super) outbox: Arc<Outbox>,
    /// Largest message the server takes.
    pub(super) max_payload: usize,
    pub(super) leaving: AtomicBool,
    pub(super) stopped: AtomicBool,
    /// Requests of other nodes (and NATS clients) being served here now.
    pub(super) serving: Arc<AtomicU64>,
    pub(super) filters: Filters,
    /// Changes to this node's subscriptions, for the task that subscribes.
    pub(super) changes: tokio::sync::mpsc::UnboundedSender<Change>,
    /// The version of this node's subscription table, one up per change.
    pub(super) subs_version: AtomicU64,
    pub(super) state: Arc<JetStreamState>,
    pub(super) tasks: Mutex<Vec<actix_rt::task::JoinHandle<()>>>,
    /// Messages received, by kind, as [`BridgeStats::frames_in`] counts them.
    pub(super) received: [AtomicU64; 6],
    /// This transport, for the links it hands out.
    pub(super) this: std::sync::Weak<NatsNode>,
}

impl std::fmt::Debug for NatsNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsNode")
            .field("node", &self.me.name)
            .finish_non_exhaustive()
    }
}

impl NatsNode {
    /// Counts a message received.
    pub(super) fn count(&self, kind: Kind) {
        self.received[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn spawn(&self, task: impl std::future::Future<Output = ()> + 'static) {
        let handle = actix_rt::spawn(task);
        self.tasks.lock().push(handle);
    }

    /// This node's member entry, with its services now.
    pub(super) fn member(&self) -> Member {
        Member {
            services: self.offers.read().clone(),
            ..self.me.clone()
        }
    }

    pub(super) fn is_master(member: &Member) -> bool {
        member.role == Role::Master.to_string()
    }

    /// Registers a call held by node `node`; its number and where its answer
    /// comes.
    pub(super) fn register(&self, node: &str) -> Result<(u64, transport::Pending), ServiceError> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, pending) = transport::Pending::new(id);
        let mut calls = self.calls.lock();
        if calls.len() >= MAX_CALLS {
            return Err(ServiceError::new(
                crate::error::ErrorKind::Overloaded,
                format!("{MAX_CALLS} calls over NATS are waiting for answers already"),
            ));
        }
        calls.insert(id, (tx, Arc::from(node)));
        Ok((id, pending))
    }

    /// Answers call `id`.
    pub(super) fn answer(&self, id: u64, answer: Answer) {
        if let Some((tx, _)) = self.calls.lock().remove(&id) {
            let _ = tx.send(answer);
        }
    }

    /// Fails every call node `node` holds, for `why`.
    pub(super) fn fail_calls_of(&self, node: &str, why: &str) {
        let failed: Vec<_> = {
            let mut calls = self.calls.lock();
            let ids: Vec<u64> = calls
                .iter()
                .filter(|(_, (_, n))| &**n == node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| calls.remove(&id)).collect()
        };
        for (tx, _) in failed {
            let _ = tx.send(Err(transport::node_down(node, why)));
        }
    }

    /// Sends `answer` to the inbox `reply` through the outbox.
    pub(super) fn answer_to(
        &self,
        reply: async_nats::Subject,
        answer: &Result<Vec<u8>, ServiceError>,
    ) {
        let out = Out {
            subject: reply,
            reply: None,
            payload: super::wire::reply(answer),
            call: None,
            headers: None,
        };
        if let Err(e) = self.outbox.push(out) {
            log::debug!("nats: an answer was not sent: {e}");
        }
    }

    /// Fails every call waiting for an answer, for `why`.
    pub(super) fn fail_all_calls(&self, why: &str) {
        let failed: Vec<_> = self.calls.lock().drain().collect();
        for (_, (tx, node)) in failed {
            let _ = tx.send(Err(transport::node_down(&node, why)));
        }
    }

    /// Sends a message (to a node's subject, maybe with a reply inbox) through
    /// the outbox.
    pub(super) fn send(&self, out: Out) -> Result<(), ServiceError> {
        if out.payload.len() > self.max_payload {
            return Err(ServiceError::bad_request(format!(
                "a message of {} bytes is more than the NATS server takes ({} bytes, its max_payload)",
                out.payload.len(),
                self.max_payload
            )));
        }
        self.outbox.push(out)
    }

    /// Node `peer` is down, for `why`.
    pub(super) fn down(&self, peer: &Peer, why: &str) {
        self.fail_calls_of(&peer.name, why);
        peer.subs.replace(&peer.name, Default::default());
        peer.subs_version.store(0, Ordering::Release);
        log::warn!("nats: node {} is down: {why}", peer.name);
        // The master releases the locks the node held, as on the bridge, when
        // it is itself connected: a node cut off from the server sees every
        // other node fall silent, and must not release their locks.
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        if Self::is_master(&self.me) && connected {
            self.state.node_down(&peer.name);
        }
        self.inbound.node_down(&peer.name, why);
    }

    /// This transport, for a link.
    pub(super) fn this(&self) -> Option<Arc<NatsNode>> {
        self.this.upgrade()
    }
}
