//! `stream`: subscribes to the `user.` topics and answers `recent` with the events
//! it received, as messenger's stream service fed by `shout`.

use std::collections::VecDeque;

use actix::prelude::*;
use colony::{Node, Published, Request, ServiceError, Subscription, WorkerContext};
use serde::{Deserialize, Serialize};

/// How many events a worker remembers.
pub const KEEP: usize = 100;

/// The topic prefix `stream` subscribes to.
pub const TOPICS: &str = "user.";

/// The `stream` worker.
#[derive(Debug)]
pub struct Stream {
    node: Node,
    events: VecDeque<Event>,
    subscription: Option<Subscription>,
}

impl Stream {
    /// A worker that has heard of nothing yet.
    pub fn new(context: WorkerContext) -> Self {
        Stream {
            node: context.node,
            events: VecDeque::new(),
            subscription: None,
        }
    }
}

impl Actor for Stream {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Held in the worker's state: a restarted worker subscribes afresh.
        match self.node.subscribe(TOPICS, ctx.address().recipient()) {
            Ok(subscription) => self.subscription = Some(subscription),
            Err(e) => log::error!("stream cannot subscribe to {TOPICS}: {e}"),
        }
    }
}

/// A user event as `recent` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// e.g. `user.deleted`.
    pub topic: String,
    /// The user concerned.
    #[serde(rename = "userId")]
    pub user_id: u64,
    /// The node it was published on.
    pub node: String,
}

/// The message of `user.*` topics: `{"userId":ID}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    /// The user concerned.
    #[serde(rename = "userId")]
    pub user_id: u64,
}

impl Handler<Published> for Stream {
    type Result = ();

    fn handle(&mut self, msg: Published, _: &mut Context<Self>) {
        let event = match msg.decode::<UserEvent>() {
            Ok(event) => event,
            Err(e) => {
                log::warn!("stream: ignoring a message on {}: {e}", msg.topic());
                return;
            }
        };
        if self.events.len() == KEEP {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            topic: msg.topic().to_string(),
            user_id: event.user_id,
            node: msg.meta().node.clone(),
        });
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
