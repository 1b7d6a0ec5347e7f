//! What both benchmarks share: the message, its echoing actor and the counts.
#![allow(dead_code)]

use actix::prelude::*;
use colony::{Request, ServiceError};
use serde::{Deserialize, Serialize};

/// Sequential round trips per round (p50, p99 over these).
pub const SEQUENTIAL: usize = 20_000;
/// Pipelined round trips per round.
pub const PIPELINED: usize = 200_000;
/// Requests in flight when pipelined.
pub const IN_FLIGHT: usize = 64;
/// Rounds, alternating which side goes first; the best of each side is reported.
pub const ROUNDS: usize = 4;

/// The request: a number to echo.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Result<Pong, ServiceError>")]
pub struct Ping {
    pub n: u64,
}

impl Request for Ping {
    const SUBJECT: &'static str = "ping";
}

/// The reply.
#[derive(Serialize, Deserialize)]
pub struct Pong {
    pub n: u64,
}

/// Echoes pings.
#[derive(Default)]
pub struct Echo;

impl Actor for Echo {
    type Context = Context<Self>;
}

impl Handler<Ping> for Echo {
    type Result = Result<Pong, ServiceError>;
    fn handle(&mut self, msg: Ping, _: &mut Context<Self>) -> Self::Result {
        Ok(Pong { n: msg.n })
    }
}
