//! `data`: a small in-memory user table, as messenger's data service. Deleting a
//! user needs a `userId` (the [`member_only`] guard) and publishes `user.deleted`
//! to the cluster, where every `stream` worker hears of it.

use actix::prelude::*;
use colony::{Meta, Node, Rejection, Request, ServiceError, WorkerContext};
use serde::{Deserialize, Serialize};

use crate::stream::UserEvent;

/// A user of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub id: u64,
    /// The user's name.
    pub name: String,
    /// How many followers the user has.
    pub followers: u64,
}

/// The `data` worker: its own copy of the user table.
#[derive(Debug)]
pub struct Data {
    node: Node,
    users: Vec<User>,
}

impl Data {
    /// A worker with the seed table.
    pub fn new(context: WorkerContext) -> Self {
        let users = [
            ("ada", 950),
            ("grace", 870),
            ("linus", 640),
            ("barbara", 410),
            ("ken", 220),
        ]
        .iter()
        .enumerate()
        .map(|(i, (name, followers))| User {
            id: i as u64 + 1,
            name: name.to_string(),
            followers: *followers,
        })
        .collect();
        Data {
            node: context.node,
            users,
        }
    }
}

impl Actor for Data {
    type Context = Context<Self>;
}

/// A message that may carry the id of the user making it.
pub trait Authenticated {
    /// The caller's user id, if given.
    fn user_id(&self) -> Option<u64>;
}

/// messenger's `memberOnly`: passes messages that carry a `userId`.
pub fn member_only<M: Authenticated>(msg: &mut M, _: &Meta<'_>) -> Result<(), Rejection> {
    match msg.user_id() {
        Some(_) => Ok(()),
        None => Err("You are not authenticated.".into()),
    }
}

/// `users.popular`: `{"limit":N}` → `{"users":[…]}`, most followed first.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<PopularUsersReply, ServiceError>")]
pub struct PopularUsers {
    /// At most this many users.
    pub limit: usize,
}

impl Request for PopularUsers {
    const SUBJECT: &'static str = "users.popular";
}

/// The reply to [`PopularUsers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopularUsersReply {
    /// The users, most followed first.
    pub users: Vec<User>,
}

impl Handler<PopularUsers> for Data {
    type Result = Result<PopularUsersReply, ServiceError>;

    fn handle(&mut self, msg: PopularUsers, _: &mut Context<Self>) -> Self::Result {
        let mut users = self.users.clone();
        users.sort_by_key(|u| std::cmp::Reverse(u.followers));
        users.truncate(msg.limit);
        Ok(PopularUsersReply { users })
    }
}

/// `users.delete`: `{"userId":ID}` → `{"deleted":ID}`.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<DeleteUserReply, ServiceError>")]
pub struct DeleteUser {
    /// The user to delete, who must be the caller.
    #[serde(rename = "userId", default)]
    pub user_id: Option<u64>,
}

impl Request for DeleteUser {
    const SUBJECT: &'static str = "users.delete";
}

impl Authenticated for DeleteUser {
    fn user_id(&self) -> Option<u64> {
        self.user_id
    }
}

/// The topic a deletion is published under.
pub const DELETED: &str = "user.deleted";

/// The reply to [`DeleteUser`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteUserReply {
    /// The deleted user's id.
    pub deleted: u64,
}

impl Handler<DeleteUser> for Data {
    type Result = Result<DeleteUserReply, ServiceError>;

    fn handle(&mut self, msg: DeleteUser, _: &mut Context<Self>) -> Self::Result {
        let id = msg
            .user_id
            .ok_or_else(|| ServiceError::rejected("You are not authenticated."))?;
        self.users.retain(|u| u.id != id);
        // Every subscriber of `user.` in the cluster hears of it.
        let heard = self.node.publish(DELETED, UserEvent { user_id: id })?;
        log::debug!("user {id} deleted; {heard} subscribers told");
        Ok(DeleteUserReply { deleted: id })
    }
}
