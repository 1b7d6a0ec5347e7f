//! The application: the services a binary offers, each an actor type with one typed
//! line per message it handles.
//!
//! ```
//! use actix::prelude::*;
//! use colony::{App, Request, ServiceError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default)]
//! struct Math;
//! impl Actor for Math { type Context = Context<Self>; }
//!
//! #[derive(Message, Serialize, Deserialize)]
//! #[rtype(result = "Result<SumReply, ServiceError>")]
//! struct Sum { a: i64, b: i64 }
//! #[derive(Serialize, Deserialize)]
//! struct SumReply { sum: i64 }
//! impl Request for Sum { const SUBJECT: &'static str = "sum"; }
//!
//! impl Handler<Sum> for Math {
//!     type Result = Result<SumReply, ServiceError>;
//!     fn handle(&mut self, m: Sum, _: &mut Context<Self>) -> Self::Result {
//!         Ok(SumReply { sum: m.a + m.b })
//!     }
//! }
//!
//! let app: App = App::new().service("math", Math::default).handles::<Sum>().into();
//! assert_eq!(app.service_names(), vec!["math"]);
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use actix::prelude::*;

use crate::guard::{Guard, Meta, Rejection};
use crate::message::{Request, WorkerId};
use crate::node::Node;
use crate::router::call_json;
use crate::service::{Route, ServiceDef};
use crate::worker::{start_worker, StartWorker};

/// The name of the service that answers [`Node::request_master`]; it runs one worker
/// on the master node.
pub use crate::config::MASTER_SERVICE;

/// What a worker's factory may know: its own id and the node it runs on, through
/// which it makes its own calls. What a handler knows of the request it serves
/// besides the message: its trace, from [`trace::current`](crate::trace::current).
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// The worker's id, `NODE/SERVICE/INDEX`.
    pub id: WorkerId,
    /// The node the worker runs on.
    pub node: Node,
}

/// Builds a service's actor: `Fn() -> A` (e.g. `Math::default`) or
/// `Fn(WorkerContext) -> A` for actors that call other services.
pub trait ServiceFactory<A, Marker>: Send + Sync + 'static {
    /// A fresh actor for a worker starting with `context`.
    fn build(&self, context: WorkerContext) -> A;
}

impl<A, F> ServiceFactory<A, ()> for F
where
    F: Fn() -> A + Send + Sync + 'static,
{
    fn build(&self, _: WorkerContext) -> A {
        self()
    }
}

impl<A, F> ServiceFactory<A, WorkerContext> for F
where
    F: Fn(WorkerContext) -> A + Send + Sync + 'static,
{
    fn build(&self, context: WorkerContext) -> A {
        self(context)
    }
}

/// What starts the workers of one service on a node: the app's factory, bound to
/// the node that runs them, its actor type erased.
pub(crate) type WorkerFactory = Arc<dyn Fn(&Node) -> StartWorker + Send + Sync>;

/// One service of an application: its definition and how its workers are built.
pub(crate) struct AppService {
    pub(crate) def: ServiceDef,
    /// Binds the app's factory to the node that runs the service.
    pub(crate) bind: WorkerFactory,
}

/// The services of an application. A node runs the ones its config lists.
#[derive(Default)]
pub struct App {
    pub(crate) services: Vec<AppService>,
}

impl App {
    /// An app with no services.
    pub fn new() -> Self {
        App::default()
    }

    /// Adds service `name`, whose workers `factory` builds; chain `.handles::<M>()`
    /// for each message it answers.
    ///
    /// # Panics
    /// If the app already has a service of that name: a programming error caught when
    /// the binary starts.
    pub fn service<A, Marker>(
        self,
        name: &str,
        factory: impl ServiceFactory<A, Marker>,
    ) -> ServiceBuilder<A>
    where
        A: Actor<Context = Context<A>>,
    {
        assert!(
            self.services.iter().all(|s| s.def.name != name),
            "service `{name}` is defined twice"
        );
        let factory = Arc::new(factory);
        let bind: WorkerFactory = Arc::new(move |node: &Node| {
            let factory = factory.clone();
            let node = node.clone();
            start_worker::<A>(Arc::new(move |id| {
                factory.build(WorkerContext {
                    id,
                    node: node.clone(),
                })
            }))
        });
        ServiceBuilder {
            app: self,
            def: ServiceDef::new(name.to_string()),
            bind,
            actor: PhantomData,
        }
    }

    /// Adds the master's handlers: requests sent with [`Node::request_master`] go to
    /// the one worker of this actor on the master node.
    pub fn master<A, Marker>(self, factory: impl ServiceFactory<A, Marker>) -> ServiceBuilder<A>
    where
        A: Actor<Context = Context<A>>,
    {
        self.service(MASTER_SERVICE, factory)
    }

    /// The names of the app's services, in the order they were added.
    pub fn service_names(&self) -> Vec<&str> {
        self.services.iter().map(|s| s.def.name.as_str()).collect()
    }

    pub(crate) fn has_service(&self, name: &str) -> bool {
        self.services.iter().any(|s| s.def.name == name)
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field(
                "services",
                &self.services.iter().map(|s| &s.def).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A service being defined; finish it by adding another service or by turning it
/// into the [`App`] (`.into()`, or any function taking `impl Into<App>`).
pub struct ServiceBuilder<A> {
    app: App,
    def: ServiceDef,
    bind: WorkerFactory,
    actor: PhantomData<fn() -> A>,
}

impl<A> ServiceBuilder<A>
where
    A: Actor<Context = Context<A>>,
{
    /// The service answers requests of type `M` at subject `M::SUBJECT`.
    ///
    /// # Panics
    /// If another message type of the service already uses that subject.
    pub fn handles<M>(mut self) -> Self
    where
        A: Handler<M>,
        M: Request,
    {
        self.route_mut::<M>();
        self
    }

    /// Runs `guard` on every `M` before it reaches a worker; guards run in the order
    /// added and the first rejection wins. Also registers `M` like [`handles`](Self::handles).
    pub fn guard<M>(mut self, guard: impl Guard<M>) -> Self
    where
        A: Handler<M>,
        M: Request,
    {
        if let Some(chain) = self.route_mut::<M>().guards_mut::<M>() {
            chain.push(guard);
        }
        self
    }

    /// The service's workers take jobs of type `M` from the cluster's job queue
    /// `queue` (see [`Node::push`]): each worker takes one job per unit of its
    /// `concurrency` when it is online and free, and the job counts as done when
    /// its handler returns `Ok`. Also registers `M` like [`handles`](Self::handles).
    ///
    /// # Panics
    /// If the service already consumes `queue`.
    pub fn consumes<M>(mut self, queue: &str) -> Self
    where
        A: Handler<M>,
        M: Request,
    {
        self.route_mut::<M>();
        assert!(
            self.def.consumes.iter().all(|(q, _)| q != queue),
            "service `{}` consumes queue `{queue}` twice",
            self.def.name
        );
        self.def.consumes.push((queue.to_string(), M::SUBJECT));
        self
    }

    /// Runs `guard` on every request to the service, whatever its subject.
    pub fn guard_all(
        mut self,
        guard: impl Fn(&Meta<'_>) -> Result<(), Rejection> + Send + Sync + 'static,
    ) -> Self {
        self.def.guards.push(Arc::new(guard));
        self
    }

    /// Finishes this service and starts defining the next.
    pub fn service<B, Marker>(
        self,
        name: &str,
        factory: impl ServiceFactory<B, Marker>,
    ) -> ServiceBuilder<B>
    where
        B: Actor<Context = Context<B>>,
    {
        App::from(self).service(name, factory)
    }

    /// Finishes this service and defines the master's handlers.
    pub fn master<B, Marker>(self, factory: impl ServiceFactory<B, Marker>) -> ServiceBuilder<B>
    where
        B: Actor<Context = Context<B>>,
    {
        App::from(self).master(factory)
    }

    fn route_mut<M>(&mut self) -> &mut Route
    where
        A: Handler<M>,
        M: Request,
    {
        let route = self
            .def
            .routes
            .entry(M::SUBJECT)
            .or_insert_with(|| Route::new::<A, M>(call_json::<M>));
        assert!(
            route.is_type::<M>(),
            "service `{}`: subject `{}` is taken by {}",
            self.def.name,
            M::SUBJECT,
            route.type_name()
        );
        route
    }
}

impl<A> From<ServiceBuilder<A>> for App {
    fn from(builder: ServiceBuilder<A>) -> App {
        let mut app = builder.app;
        app.services.push(AppService {
            def: builder.def,
            bind: builder.bind,
        });
        app
    }
}

impl<A> fmt::Debug for ServiceBuilder<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBuilder")
            .field("service", &self.def)
            .finish()
    }
}
