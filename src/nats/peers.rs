//! The other nodes as this node hears of them on NATS: each one's member entry
//! from its presence beats, whether it is up, its subscriptions, and this
//! node's load on its services.
//!
//! The table is keyed by names from outside, so it is bounded: at most
//! [`MAX_PEERS`] nodes; a beat from one more, or with a name no config allows,
//! is ignored (and logged now and then).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::pubsub::PeerSubscriptions;
use crate::transport::Member;

/// Nodes known at most.
pub(crate) const MAX_PEERS: usize = 1024;
/// The largest presence beat read: a member entry with hundreds of services.
pub(crate) const MAX_BEAT: usize = 64 * 1024;
/// How long a node that went down stays listed (as `down`) before it is
/// forgotten, as pm2 keeps a crashed process in its list for a while.
pub(crate) const FORGET_DOWN: std::time::Duration = std::time::Duration::from_secs(300);

/// One other node.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) name: String,
    /// Where its requests and control requests go.
    pub(crate) requests: async_nats::Subject,
    pub(crate) control: String,
    pub(crate) member: RwLock<Member>,
    pub(crate) instance: Mutex<String>,
    pub(crate) last_beat: Mutex<Instant>,
    pub(crate) up: AtomicBool,
    pub(crate) leaving: AtomicBool,
    pub(crate) subs: PeerSubscriptions,
    pub(crate) subs_version: AtomicU64,
    loads: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Peer {
    /// This node's load on the peer's service `service`, if it runs it.
    pub(crate) fn load(&self, service: &str) -> Option<Arc<AtomicU64>> {
        if self
            .member
            .read()
            .services
            .iter()
            .all(|o| o.name != service)
        {
            return None;
        }
        let mut loads = self.loads.lock();
        if let Some(load) = loads.get(service) {
            return Some(load.clone());
        }
        Some(loads.entry(service.to_string()).or_default().clone())
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// What a beat changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    /// A node not up before (new, or back).
    Up(Arc<Peer>),
    /// A node that was up came back as a new run: the old run is down.
    Restarted(Arc<Peer>),
    /// A node up already.
    Known(Arc<Peer>),
    /// Ignored: past the bound, or a bad name.
    Ignored,
}

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for Peer {}

/// Every other node heard of.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    peers: RwLock<BTreeMap<String, Arc<Peer>>>,
    ignored: AtomicU64,
}

/// Whether `name` is a node name a config allows: `[a-z0-9-]{1,32}`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Peers {
    /// A beat from `member` (run `instance`), with subjects made by `subjects`.
    pub(crate) fn heard(
        &self,
        member: Member,
        instance: &str,
        leaving: bool,
        subjects: &super::subjects::Subjects,
    ) -> Heard {
        if !valid_name(&member.name) {
            self.ignore("a beat with a name no config allows");
            return Heard::Ignored;
        }
        let now = Instant::now();
        if let Some(peer) = self.get(&member.name) {
            *peer.last_beat.lock() = now;
            peer.leaving.store(leaving, Ordering::Release);
            let restarted = {
                let mut known = peer.instance.lock();
                let restarted = *known != instance;
                if restarted {
                    *known = instance.to_string();
                }
                restarted
            };
            if *peer.member.read() != member {
                *peer.member.write() = member;
            }
            let was_up = peer.up.swap(true, Ordering::AcqRel);
            return match (was_up, restarted) {
                (false, _) => Heard::Up(peer),
                (true, true) => Heard::Restarted(peer),
                (true, false) => Heard::Known(peer),
            };
        }
        let mut peers = self.peers.write();
        if peers.len() >= MAX_PEERS {
            drop(peers);
            self.ignore("a beat past the bound of nodes known");
            return Heard::Ignored;
        }
        let peer = Arc::new(Peer {
            name: member.name.clone(),
            requests: subjects.requests(&member.name).into(),
            control: subjects.control(&member.name),
            member: RwLock::new(member),
            instance: Mutex::new(instance.to_string()),
            last_beat: Mutex::new(now),
            up: AtomicBool::new(true),
            leaving: AtomicBool::new(leaving),
            subs: PeerSubscriptions::default(),
            subs_version: AtomicU64::new(0),
            loads: Mutex::default(),
        });
        peers.insert(peer.name.clone(), peer.clone());
        Heard::Up(peer)
    }

    fn ignore(&self, what: &str) {
        let before = self.ignored.fetch_add(1, Ordering::Relaxed);
        if before.is_multiple_of(1000) {
            log::warn!("nats: ignored {what} ({} so far)", before + 1);
        }
    }

    /// The peer `name`, up or down.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Peer>> {
        self.peers.read().get(name).cloned()
    }

    /// Every peer, up or down, in name order.
    pub(crate) fn all(&self) -> Vec<Arc<Peer>> {
        self.peers.read().values().cloned().collect()
    }

    /// The peers up now, in name order.
    pub(crate) fn up(&self) -> Vec<Arc<Peer>> {
        self.peers
            .read()
            .values()
            .filter(|p| p.is_up())
            .cloned()
            .collect()
    }

    /// Marks down the peers up whose last beat is older than `silence`; returns
    /// them.
    pub(crate) fn silent(&self, silence: std::time::Duration) -> Vec<Arc<Peer>> {
        let now = Instant::now();
        self.up()
            .into_iter()
            .filter(|p| now.duration_since(*p.last_beat.lock()) > silence)
            .filter(|p| p.up.swap(false, Ordering::AcqRel))
            .collect()
    }

    /// Forgets the peers down and silent for longer than `forget`.
    pub(crate) fn forget_silent(&self, forget: std::time::Duration) {
        let now = Instant::now();
        self.peers
            .write()
            .retain(|_, p| p.is_up() || now.duration_since(*p.last_beat.lock()) <= forget);
    }

    /// Node `name` left the cluster: it is forgotten.
    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Peer>> {
        let peer = self.peers.write().remove(name)?;
        peer.up.store(false, Ordering::Release);
        Some(peer)
    }
}
