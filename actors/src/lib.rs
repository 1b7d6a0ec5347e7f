//! The example colony application (SPEC §7), after messenger's example: a `data`
//! service guarded by `member_only` that publishes `user.deleted`, a `stream`
//! service subscribed to `user.`, a `math` service, and `chaos` for demonstrating
//! supervision and the job queue `chaos.jobs`.
//!
//! | service | subjects |
//! |---|---|
//! | `math` | `sum` |
//! | `data` | `users.popular`, `users.delete` (guarded by [`data::member_only`]) |
//! | `stream` | `recent`; subscribed to the topics `user.` |
//! | `chaos` | `echo`, `sleep`, `panic`; takes `work` jobs from queue `chaos.jobs` |

pub mod chaos;
pub mod data;
pub mod math;
pub mod stream;

use colony::App;

/// The app: every service and the messages each handles.
pub fn app() -> App {
    App::new()
        .service("math", math::Math::default)
        .handles::<math::Sum>()
        .service("data", data::Data::new)
        .handles::<data::PopularUsers>()
        .handles::<data::DeleteUser>()
        .guard::<data::DeleteUser>(data::member_only)
        .service("stream", stream::Stream::new)
        .handles::<stream::Recent>()
        .service("chaos", chaos::Chaos::default)
        .handles::<chaos::Echo>()
        .handles::<chaos::Sleep>()
        .handles::<chaos::Panic>()
        .consumes::<chaos::Work>(chaos::JOBS)
        .into()
}
