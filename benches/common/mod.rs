//! What both benchmarks share: the message, its echoing actor and the counts.
#![allow(dead_code)]

use std::time::Duration;

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

/// One side's figures for one round.
pub struct Figures {
    pub p50: Duration,
    pub p99: Duration,
    pub per_sec: f64,
}

/// The p50 and p99 of latency samples.
pub fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

/// The best of each figure over the rounds.
pub fn best(runs: &[Figures]) -> Figures {
    Figures {
        p50: runs.iter().map(|f| f.p50).min().unwrap_or_default(),
        p99: runs.iter().map(|f| f.p99).min().unwrap_or_default(),
        per_sec: runs.iter().map(|f| f.per_sec).fold(0.0, f64::max),
    }
}

/// The median of each figure over the rounds (the upper middle of an even count).
pub fn median(runs: &[Figures]) -> Figures {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let secs = |f: fn(&Figures) -> Duration| {
        Duration::from_secs_f64(mid(runs.iter().map(|r| f(r).as_secs_f64()).collect()))
    };
    Figures {
        p50: secs(|f| f.p50),
        p99: secs(|f| f.p99),
        per_sec: mid(runs.iter().map(|f| f.per_sec).collect()),
    }
}

/// A duration in microseconds, for the table.
pub fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}
