//! `stream`: hears of user events and answers `recent` with those it received.

use std::collections::VecDeque;

use actix::prelude::*;
use colony::{Request, ServiceError};
use serde::{Deserialize, Serialize};

/// How many events a worker remembers.
pub const KEEP: usize = 100;

/// The `stream` worker.
#[derive(Debug, Default)]
pub struct Stream {
    events: VecDeque<Event>,
}

impl Actor for Stream {
    type Context = Context<Self>;
}

/// A user event as `recent` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// e.g. `user.deleted`.
    pub topic: String,
    /// The user concerned.
    #[serde(rename = "userId")]
    pub user_id: u64,
}

/// `user.deleted`: a user was deleted.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct UserDeleted {
    /// The deleted user.
    #[serde(rename = "userId")]
    pub user_id: u64,
}

impl Request for UserDeleted {
    const SUBJECT: &'static str = "user.deleted";
}

impl Handler<UserDeleted> for Stream {
    type Result = Result<(), ServiceError>;

    fn handle(&mut self, msg: UserDeleted, _: &mut Context<Self>) -> Self::Result {
        if self.events.len() == KEEP {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            topic: UserDeleted::SUBJECT.to_string(),
            user_id: msg.user_id,
        });
        Ok(())
    }
}

/// `recent`: `{}` → `{"events":[…]}`, newest last.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<RecentReply, ServiceError>")]
pub struct Recent {}

impl Request for Recent {
    const SUBJECT: &'static str = "recent";
}

/// The reply to [`Recent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentReply {
    /// The events this worker received, newest last.
    pub events: Vec<Event>,
}

impl Handler<Recent> for Stream {
    type Result = Result<RecentReply, ServiceError>;

    fn handle(&mut self, _: Recent, _: &mut Context<Self>) -> Self::Result {
        Ok(RecentReply {
            events: self.events.iter().cloned().collect(),
        })
    }
}
