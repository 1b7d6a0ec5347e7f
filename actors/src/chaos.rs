//! `chaos`: echo, sleep and panic on request, to see supervision at work.

use std::time::Duration;

use actix::prelude::*;
use colony::{Request, ServiceError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The longest a `sleep` or a `work` job may ask for: a request from outside
/// cannot park a worker for longer.
pub const MAX_MS: u64 = 60_000;

fn check_ms(ms: u64) -> Result<Duration, ServiceError> {
    if ms > MAX_MS {
        return Err(ServiceError::bad_request(format!(
            "ms is {ms}; chaos sleeps at most {MAX_MS} ms"
        )));
    }
    Ok(Duration::from_millis(ms))
}

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

/// `sleep`: `{"ms":N}` → `{"slept":N}` after N ms (at most [`MAX_MS`]), without
/// blocking the thread.
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
        let pause = check_ms(msg.ms);
        Box::pin(async move {
            actix_rt::time::sleep(pause?).await;
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

/// The job queue `chaos` workers take [`Work`] from.
pub const JOBS: &str = "chaos.jobs";

/// `work`, a job of queue [`JOBS`]: `{"ms":N}` takes N ms (at most
/// [`MAX_MS`]), without blocking the thread, and completes the job. With `"panic":true` the handler panics
/// instead, and the job is delivered again until it is dead.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<WorkReply, ServiceError>")]
pub struct Work {
    /// How long the job takes.
    #[serde(default)]
    pub ms: u64,
    /// Panic instead of working.
    #[serde(default)]
    pub panic: bool,
}

impl Request for Work {
    const SUBJECT: &'static str = "work";
}

/// The reply to [`Work`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkReply {
    /// How long it worked.
    pub worked: u64,
}

impl Handler<Work> for Chaos {
    type Result = ResponseActFuture<Self, Result<WorkReply, ServiceError>>;

    fn handle(&mut self, msg: Work, _: &mut Context<Self>) -> Self::Result {
        if msg.panic {
            panic!("chaos: this job panics");
        }
        let pause = match check_ms(msg.ms) {
            Ok(pause) => pause,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        // An actor future: it ends with the worker, as a job in progress does.
        Box::pin(
            actix_rt::time::sleep(pause)
                .into_actor(self)
                .map(move |(), _, _| Ok(WorkReply { worked: msg.ms })),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony::ErrorKind;

    #[actix_rt::test]
    async fn absurd_sleeps_are_bad_requests_and_the_worker_keeps_serving() {
        let chaos = Chaos.start();
        for ms in [MAX_MS + 1, u64::MAX] {
            let slept = chaos.send(Sleep { ms }).await.expect("mailbox");
            assert_eq!(slept.map_err(|e| e.kind), Err(ErrorKind::BadRequest));
            let worked = chaos
                .send(Work { ms, panic: false })
                .await
                .expect("mailbox");
            assert_eq!(worked.map_err(|e| e.kind), Err(ErrorKind::BadRequest));
        }
        let slept = chaos.send(Sleep { ms: 1 }).await.expect("mailbox");
        assert_eq!(slept.map(|r| r.slept).map_err(|e| e.kind), Ok(1));
    }
}
