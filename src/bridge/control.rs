//! Control messages after the handshake, all in one place: membership (a node
//! joins, the master's member table, links to new members, a node's services
//! scaled), subscription tables and changes, status, kills, and a peer leaving.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;

use super::connect::dial_loop;
use super::peer::{Peer, Waiter};
use super::state::Bridge;
use super::wire::{Control, Member, Offer};
use crate::config::Role;
use crate::logging::untrusted;

/// How long after a node said it was leaving requests for a service only it ran
/// wait for the service to come back (long enough for a reload's drain and start).
const RETURN_HOLD: std::time::Duration = std::time::Duration::from_secs(15);

impl Bridge {
    /// Registers `peer`'s new link and introduces this node to it; refused (the
    /// link must close) when its name is taken (see `identity`).
    pub(super) fn peer_up(&self, peer: Arc<Peer>) -> Result<(), String> {
        self.claim(&peer)?;
        if let Some(member) = self.members.lock().get(&peer.name) {
            peer.set_offers(&member.services);
        }
        log::info!("bridge: linked with node {}", peer.name);
        // The table is taken and queued in turn with announcements (see
        // `PubSub::with_prefixes`): the peer already gets those made from now on.
        self.inbound.pubsub.with_prefixes(|prefixes| {
            let mut frame = BytesMut::new();
            let join = Control::Join {
                member: self.member(),
            };
            let subscriptions = Control::Subscriptions { prefixes };
            let encoded = join
                .encode(&mut frame, self.config.max_frame)
                .and_then(|()| subscriptions.encode(&mut frame, self.config.max_frame));
            match encoded {
                Ok(()) => {
                    if let Err(e) = peer.send(frame.freeze()) {
                        log::warn!("bridge: cannot introduce this node to {}: {e}", peer.name);
                    }
                }
                Err(e) => log::error!("bridge: introduction does not fit a frame: {e}"),
            }
        });
        self.counters.links_opened.fetch_add(1, Ordering::Relaxed);
        if !self.counters.linked.lock().insert(peer.name.clone()) {
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    pub(super) fn peer_down(&self, peer: &Arc<Peer>, why: &str) {
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
        log::warn!("bridge: node {} is down: {}", peer.name, untrusted(why));
        self.inbound.node_down(&peer.name, why);
        if self.is_master() {
            self.members.lock().remove(&peer.name);
            self.broadcast_members();
        }
    }

    /// Handles a control message from `peer`: every kind after the handshake.
    pub(super) fn control(self: &Arc<Self>, peer: &Arc<Peer>, control: Control) {
        match control {
            Control::Join { member } => {
                if member.name != peer.name {
                    log::warn!(
                        "bridge: node {} announced itself as {}; ignored",
                        peer.name,
                        untrusted(&member.name)
                    );
                    return;
                }
                if let Some(reason) = self.refuse_role(peer, &member) {
                    self.refuse(peer, &reason);
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
                        self.inbound.node_up(&peer.name);
                    }
                    self.broadcast_members();
                }
            }
            Control::Members { members } if self.sent_by_master(peer) => {
                let members = self.vet_table(&peer.name, members);
                self.learn(members)
            }
            Control::Members { .. } => self.table_refused(peer),
            Control::Refused { reason } => self.refused_by(peer, &reason),
            Control::Subscriptions { prefixes } => peer.subscriptions.replace(&peer.name, prefixes),
            Control::Subscribed { prefix } => peer.subscriptions.add(&peer.name, prefix),
            Control::Unsubscribed { prefix } => peer.subscriptions.remove(&prefix),
            Control::StatusRequest { id } => {
                let status = Box::new(self.inbound.local.status());
                let _ = peer.send_control(&Control::StatusReply { id, status });
            }
            Control::StatusReply { id, status } => {
                let waiter = peer.answered(id, |w| match w {
                    Waiter::Status(tx) => Ok(tx),
                    other => Err(other),
                });
                if let Some(waiter) = waiter {
                    let _ = waiter.send(*status);
                }
            }
            Control::Kill { id, worker } => {
                let peer = peer.clone();
                let killing = worker.parse().map(|worker| self.inbound.local.kill(worker));
                actix_rt::spawn(async move {
                    let error = match killing {
                        Ok(kill) => kill.await.err(),
                        Err(e) => Some(e),
                    };
                    let _ = peer.send_control(&Control::KillReply { id, error });
                });
            }
            Control::KillNode { id, code } => {
                let error = self.inbound.local.exit(code).err();
                let _ = peer.send_control(&Control::KillReply { id, error });
            }
            Control::Admin { id, op } => {
                let peer = peer.clone();
                let command = self.inbound.local.admin(op);
                actix_rt::spawn(async move {
                    let (answer, error) = match command.await {
                        Ok(answer) => (Some(answer), None),
                        Err(e) => (None, Some(e)),
                    };
                    if let Err(e) = peer.send_control(&Control::AdminReply { id, answer, error }) {
                        // Too large for a frame, most likely: the caller hears why.
                        let error = Some(e);
                        let _ = peer.send_control(&Control::AdminReply {
                            id,
                            answer: None,
                            error,
                        });
                    }
                });
            }
            Control::AdminReply { id, answer, error } => {
                let waiter = peer.answered(id, |w| match w {
                    Waiter::Admin(tx) => Ok(tx),
                    other => Err(other),
                });
                if let Some(waiter) = waiter {
                    let _ = waiter.send(match (error, answer) {
                        (Some(e), _) => Err(e),
                        (None, answer) => Ok(answer.unwrap_or_default()),
                    });
                }
            }
            Control::KillReply { id, error } => {
                let waiter = peer.answered(id, |w| match w {
                    Waiter::Kill(tx) => Ok(tx),
                    other => Err(other),
                });
                if let Some(waiter) = waiter {
                    let _ = waiter.send(error.map_or(Ok(()), Err));
                }
            }
            Control::Leaving { id } => {
                self.peer_leaving(peer);
                peer.left(&Control::LeavingAck { id });
            }
            Control::LeavingAck { id } => {
                let waiter = peer.answered(id, |w| match w {
                    Waiter::Leave(tx) => Ok(tx),
                    other => Err(other),
                });
                if let Some(waiter) = waiter {
                    let _ = waiter.send(());
                }
            }
            other => log::warn!(
                "bridge: unexpected message from {}: {}",
                peer.name,
                untrusted(&format!("{other:?}"))
            ),
        }
    }

    /// This node's member entry as the others should know it: with its
    /// services now (kept in its own row of the member table).
    pub(super) fn member(&self) -> Member {
        self.members
            .lock()
            .get(&self.me.name)
            .cloned()
            .unwrap_or_else(|| self.me.clone())
    }

    /// This node's offer of a service changed (it was scaled): its row in the
    /// member table takes it, and the other nodes hear it, from the master's
    /// table or, from a worker node, its `Join` again (the master passes it on).
    pub(super) fn announce_offer(&self, offer: Offer) {
        let member = {
            let mut members = self.members.lock();
            let me = members
                .entry(self.me.name.clone())
                .or_insert_with(|| self.me.clone());
            match me.services.iter_mut().find(|o| o.name == offer.name) {
                Some(old) => *old = offer,
                None => me.services.push(offer),
            }
            me.clone()
        };
        if self.is_master() {
            self.broadcast_members();
            return;
        }
        let mut frame = BytesMut::new();
        if let Err(e) = (Control::Join { member }).encode(&mut frame, self.config.max_frame) {
            log::error!("bridge: this node's member entry does not fit a frame: {e}");
            return;
        }
        let frame = frame.freeze();
        for peer in self.peers() {
            if let Err(e) = peer.send(frame.clone()) {
                log::warn!("bridge: node {} did not hear of the scale: {e}", peer.name);
            }
        }
    }

    /// Takes the master's member table, links to new members and forgets gone ones.
    fn learn(self: &Arc<Self>, members: Vec<Member>) {
        let mut table: BTreeMap<String, Member> =
            members.into_iter().map(|m| (m.name.clone(), m)).collect();
        let gone: Vec<String> = {
            let mut known = self.members.lock();
            // This node's own row is its own (a scale since the master's table).
            let me = known.get(&self.me.name).cloned();
            table.insert(self.me.name.clone(), me.unwrap_or_else(|| self.me.clone()));
            let gone = known
                .keys()
                .filter(|name| !table.contains_key(*name))
                .cloned()
                .collect();
            *known = table.clone();
            gone
        };
        for member in table.values() {
            if let Some(peer) = self.peer(&member.name) {
                peer.set_offers(&member.services);
            }
        }
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

    /// `peer` is leaving: requests for a service only it ran wait a while for the
    /// service to come back (a node restarting in a reload) instead of failing.
    pub(super) fn peer_leaving(&self, peer: &Peer) {
        let until = tokio::time::Instant::now() + RETURN_HOLD;
        let mut returning = self.returning.lock();
        for (offer, _) in peer.offers.lock().iter() {
            returning.insert(offer.name.clone(), until);
        }
    }
}
