//! `chaos`: echo, sleep and panic on request, to see supervision at work.

use std::time::Duration;

use actix::prelude::*;
use colony::{Request, ServiceError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `chaos` worker.
#[derive(Debug, Default)]
pub struct Chaos;

impl Actor for Chaos {
    type Context = Context<Self>;
}

/// `echo`: replies with its input.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<Value, ServiceError>")]
#[serde(transparent)]
pub struct Echo(pub Value);

impl Request for Echo {
    const SUBJECT: &'static str = "echo";
}

impl Handler<Echo> for Chaos {
    type Result = Result<Value, ServiceError>;

    fn handle(&mut self, msg: Echo, _: &mut Context<Self>) -> Self::Result {
        Ok(msg.0)
    }
}

/// `sleep`: `{"ms":N}` → `{"slept":N}` after N ms, without blocking the thread.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<SleepReply, ServiceError>")]
pub struct Sleep {
    /// How long to sleep.
    pub ms: u64,
}

impl Request for Sleep {
    const SUBJECT: &'static str = "sleep";
}

/// The reply to [`Sleep`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleepReply {
    /// How long it slept.
    pub slept: u64,
}

impl Handler<Sleep> for Chaos {
    type Result = ResponseFuture<Result<SleepReply, ServiceError>>;

    fn handle(&mut self, msg: Sleep, _: &mut Context<Self>) -> Self::Result {
        Box::pin(async move {
            actix_rt::time::sleep(Duration::from_millis(msg.ms)).await;
            Ok(SleepReply { slept: msg.ms })
        })
    }
}

/// `panic`: the handler panics.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct Panic {
    /// The panic's message.
    #[serde(default)]
    pub message: Option<String>,
}

impl Request for Panic {
    const SUBJECT: &'static str = "panic";
}

impl Handler<Panic> for Chaos {
    type Result = Result<(), ServiceError>;

    fn handle(&mut self, msg: Panic, _: &mut Context<Self>) -> Self::Result {
        panic!(
            "{}",
            msg.message.as_deref().unwrap_or("chaos: panic requested")
        );
    }
}
