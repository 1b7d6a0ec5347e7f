//! Who may hold a link, once a peer has proved the cluster secret.
//!
//! - A node name belongs to one live link at a time. A second connection that
//!   claims it is refused (both sides log why) and the live link is untouched. A
//!   node that restarts after a crash is refused only until its old link is known
//!   dead (at once on a closed socket, after three silent heartbeats otherwise), and
//!   its dialer retries with backoff meanwhile.
//! - A cluster has one master. A master that joins another is refused by both
//!   (`node X is a master; this cluster's master is Y`), and a worker takes a master
//!   only among the nodes it joined itself (`bridge.join`).
//! - Only the master this node joined may send the member table, and no table
//!   entry may make another node a master.
//! - With TLS, a peer's certificate must name the node its Hello names (see `tls`).
//!
//! A refusal after the handshake is a [`Control::Refused`] frame, then the close.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;

use super::peer::Peer;
use super::state::Bridge;
use super::wire::{Control, Member};
use crate::config::Role;
use crate::logging::untrusted;

/// Members a table may list.
const MAX_MEMBERS: usize = 10_000;

fn master() -> String {
    Role::Master.to_string()
}

impl Bridge {
    /// Registers `peer`'s link under its name, unless the name is this node's own
    /// or a live link holds it: then the newcomer is told why and refused.
    pub(super) fn claim(&self, peer: &Arc<Peer>) -> Result<(), String> {
        let refusal = if peer.name == self.me.name {
            Some(format!("node {} is this node's own name", peer.name))
        } else {
            let mut peers = self.peers.write();
            match peers.get(&peer.name) {
                Some(live) if live.is_up() && !Arc::ptr_eq(live, peer) => Some(format!(
                    "node {} is already linked with node {} over a live link; \
                     a second connection cannot take its name",
                    peer.name, self.me.name
                )),
                _ => {
                    // A link that is closed but not yet gone is replaced; its end
                    // finds itself replaced and stays quiet.
                    if let Some(old) = peers.insert(peer.name.clone(), peer.clone()) {
                        old.shut();
                    }
                    None
                }
            }
        };
        match refusal {
            None => Ok(()),
            Some(reason) => {
                log::warn!("bridge: refused a link: {reason}");
                tell_refused(peer, &reason);
                Err(format!("refused: {reason}"))
            }
        }
    }

    /// Whether `name` is the node at one of this node's `bridge.join` addresses,
    /// linked now.
    fn joined(&self, name: &str) -> bool {
        self.joined.lock().values().any(|n| n == name)
    }

    /// Remembers that the link opened to join address `addr` is to node `name`
    /// (`None` when it ended).
    pub(super) fn set_joined(&self, addr: SocketAddr, name: Option<&str>) {
        let mut joined = self.joined.lock();
        match name {
            Some(name) => joined.insert(addr, name.to_string()),
            None => joined.remove(&addr),
        };
    }

    /// The master this node is linked with now, other than `except`.
    fn live_master(&self, except: &str) -> Option<String> {
        if self.is_master() {
            return Some(self.me.name.clone());
        }
        let masters: Vec<String> = self
            .members
            .lock()
            .values()
            .filter(|m| m.role == master() && m.name != except)
            .map(|m| m.name.clone())
            .collect();
        masters.into_iter().find(|m| self.peer(m).is_some())
    }

    /// Why `peer`, which announced itself as `member`, may not hold its link, if
    /// it may not: a second master.
    pub(super) fn refuse_role(&self, peer: &Peer, member: &Member) -> Option<String> {
        if member.role != master() {
            return None;
        }
        let them = &peer.name;
        if self.is_master() {
            let (second, first) = if self.joined(them) {
                (&self.me.name, them)
            } else {
                (them, &self.me.name)
            };
            return Some(format!(
                "node {second} is a master; this cluster's master is {first}"
            ));
        }
        if let Some(first) = self.live_master(them) {
            return Some(format!(
                "node {them} is a master; this cluster's master is {first}"
            ));
        }
        if !self.joined(them) {
            return Some(format!(
                "node {them} says it is a master, but node {} did not join it",
                self.me.name
            ));
        }
        None
    }

    /// Whether `peer` may send this node the member table: only the master it joined.
    pub(super) fn sent_by_master(&self, peer: &Peer) -> bool {
        !self.is_master()
            && self.joined(&peer.name)
            && self
                .members
                .lock()
                .get(&peer.name)
                .is_none_or(|m| m.role == master())
    }

    /// `peer` sent a member table it may not send; it is ignored.
    pub(super) fn table_refused(&self, peer: &Peer) {
        let why = if self.is_master() {
            "this node is a master"
        } else {
            "it is not the master this node joined"
        };
        log::warn!(
            "bridge: node {} sent a member table, but {why}; ignored",
            peer.name
        );
    }

    /// The entries of `from`'s member table this node takes: none that makes a
    /// node other than `from` a master.
    pub(super) fn vet_table(&self, from: &str, members: Vec<Member>) -> Vec<Member> {
        let offered = members.len();
        // Names are checked as a Hello's are, and the table is bounded: each
        // member becomes a map entry and a dial loop.
        let members: Vec<Member> = members
            .into_iter()
            .filter(|m| super::handshake::check_node_name(&m.name).is_ok())
            .take(MAX_MEMBERS)
            .collect();
        if members.len() < offered {
            log::warn!(
                "bridge: the member table of node {from} has {} entries with bad names or \
                 past {MAX_MEMBERS}; they are ignored",
                offered - members.len()
            );
        }
        let (kept, dropped): (Vec<Member>, Vec<Member>) = members
            .into_iter()
            .partition(|m| m.role != master() || m.name == from);
        if let Some(first) = dropped.first() {
            log::warn!(
                "bridge: the member table of node {from} makes {} other node(s) a master \
                 (node {} first); those entries are ignored",
                dropped.len(),
                untrusted(&first.name)
            );
        }
        kept
    }

    /// Ends `peer`'s link, telling it why; it goes without a node-down event, as it
    /// was never a member.
    pub(super) fn refuse(&self, peer: &Arc<Peer>, reason: &str) {
        log::error!("bridge: refused the link with node {}: {reason}", peer.name);
        tell_refused(peer, reason);
        self.forget(peer);
        peer.shut();
    }

    /// `peer` refused this node's link.
    pub(super) fn refused_by(&self, peer: &Arc<Peer>, reason: &str) {
        log::error!(
            "bridge: node {} refused the link: {}",
            peer.name,
            untrusted(reason)
        );
        self.forget(peer);
        peer.shut();
    }

    /// Unregisters `peer`'s link, if it is the one registered under its name.
    fn forget(&self, peer: &Arc<Peer>) {
        let mut peers = self.peers.write();
        if peers.get(&peer.name).is_some_and(|p| Arc::ptr_eq(p, peer)) {
            peers.remove(&peer.name);
        }
    }
}

/// Queues a [`Control::Refused`] for `peer`; best effort, as the link closes next.
pub(super) fn tell_refused(peer: &Peer, reason: &str) {
    let mut frame = BytesMut::new();
    let refused = Control::Refused {
        reason: reason.to_string(),
    };
    if refused.encode(&mut frame, usize::MAX).is_ok() {
        let _ = peer.send(frame.freeze());
    }
}
