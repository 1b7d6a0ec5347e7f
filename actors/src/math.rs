//! `math`: arithmetic on request.

use actix::prelude::*;
use colony::{Request, ServiceError};
use serde::{Deserialize, Serialize};

/// The `math` worker; it keeps no state.
#[derive(Debug, Default)]
pub struct Math;

impl Actor for Math {
    type Context = Context<Self>;
}

/// `sum`: `{"a":1,"b":2}` → `{"sum":3}`.
#[derive(Debug, Clone, Message, Serialize, Deserialize)]
#[rtype(result = "Result<SumReply, ServiceError>")]
pub struct Sum {
    /// First addend.
    pub a: i64,
    /// Second addend.
    pub b: i64,
}

impl Request for Sum {
    const SUBJECT: &'static str = "sum";
}

/// The reply to [`Sum`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumReply {
    /// `a + b`.
    pub sum: i64,
}

impl Handler<Sum> for Math {
    type Result = Result<SumReply, ServiceError>;

    fn handle(&mut self, msg: Sum, _: &mut Context<Self>) -> Self::Result {
        log::debug!("sum of {} and {}", msg.a, msg.b);
        let sum = msg.a.checked_add(msg.b).ok_or_else(|| {
            ServiceError::application(
                "sum overflows i64",
                serde_json::json!({ "a": msg.a, "b": msg.b }),
            )
        })?;
        Ok(SumReply { sum })
    }
}
