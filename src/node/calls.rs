//! The calls a node makes for its actors and tasks: typed requests and their
//! cluster-wide forms, routed to this node's workers or over its transport.

use std::future::Future;
use std::time::{Duration, Instant};

use super::handle::{node_stopped, Node, STATUS_TIMEOUT};
use crate::app::MASTER_SERVICE;
use crate::deadline;
use crate::error::{ErrorKind, ServiceError};
use crate::guard::Origin;
use crate::message::{ReplyOf, Request, WorkerId};
use crate::remote::{self, Target};
use crate::root::Kill;
use crate::transport::not_sent;

impl Node {
    /// Request `msg` from a worker of `service`, on this node or another by the
    /// service's routing, and wait for the typed reply within the service's timeout.
    ///
    /// Its future is the call's own, with no wrapper around it.
    pub fn request<'a, M: Request>(
        &'a self,
        service: &'a str,
        msg: M,
    ) -> impl Future<Output = Result<ReplyOf<M>, ServiceError>> + 'a {
        self.call(service, msg, None)
    }

    /// As [`request`](Self::request), with this call's own `timeout`.
    pub fn request_timeout<'a, M: Request>(
        &'a self,
        service: &'a str,
        msg: M,
        timeout: Duration,
    ) -> impl Future<Output = Result<ReplyOf<M>, ServiceError>> + 'a {
        self.call(service, msg, Some(timeout))
    }

    async fn call<M: Request>(
        &self,
        service: &str,
        msg: M,
        timeout: Option<Duration>,
    ) -> Result<ReplyOf<M>, ServiceError> {
        if let Some((speaker, default)) = self.messenger_service(service) {
            let data = serde_json::to_vec(&msg)
                .map_err(|e| ServiceError::bad_request(format!("request is not JSON: {e}")))?;
            let reply = speaker
                .request(M::SUBJECT, &data, timeout.unwrap_or(default))
                .await?;
            return serde_json::from_str(reply.get()).map_err(|e| {
                ServiceError::bad_request(format!(
                    "the reply of messenger-backed service {service} to `{}` does not fit: {e}",
                    M::SUBJECT
                ))
            });
        }
        // Served here: the request's future is only the serving one. The routing
        // loop, which may wait for a service to return and cross to another node,
        // is boxed on the other path.
        let (here, first) = match self.target(service) {
            Ok(Target::Local(local)) => (Some(local), None),
            Ok(Target::Remote(remote)) => (None, Some(remote)),
            Err(_) => (None, None),
        };
        if let Some(local) = here {
            // Nothing else is kept across the wait.
            drop(first);
            return local.serve(msg, timeout, Origin::Local).await;
        }
        let sent = &msg;
        let routed = Box::pin(
            self.routed(service, timeout, first, |remote, timeout| async move {
                remote.request(sent, timeout, None).await
            }),
        )
        .await;
        match routed {
            Routed::Local(local, timeout) => local.serve(msg, timeout, Origin::Local).await,
            Routed::Answered(answer) => answer,
        }
    }

    /// A JSON request, as the HTTP API makes it: routed like [`request`](Self::request).
    pub(crate) async fn request_json(
        &self,
        service: &str,
        subject: &str,
        body: bytes::Bytes,
        timeout: Option<Duration>,
    ) -> Result<Box<serde_json::value::RawValue>, ServiceError> {
        if let Some((speaker, default)) = self.messenger_service(service) {
            return speaker
                .request(subject, &body, timeout.unwrap_or(default))
                .await;
        }
        let sent = &body[..];
        let routed = self
            .routed(service, timeout, None, |remote, timeout| async move {
                remote.request_json(subject, sent, timeout).await
            })
            .await;
        match routed {
            Routed::Local(_, timeout) => {
                self.inner
                    .router
                    .request_json(service, subject, body.clone(), timeout, Origin::Http, None)
                    .await
            }
            Routed::Answered(answer) => answer,
        }
    }

    /// The routing loop of every request, typed or JSON: finds where `service`
    /// runs, and either hands back this node's service (with what is left of
    /// `timeout`) or has `remote` ask the node that runs it. A node found leaving
    /// at the last moment refuses without sending and leaves the routing: the next
    /// pass picks another. `first` is a node already chosen for the first pass.
    /// Failures are counted for `/metrics`.
    ///
    /// Its future is part of every request's: what it holds, every request
    /// carries. So the way a request takes is logged where it goes: by
    /// `Remote` when it leaves, and where it is served (the router).
    async fn routed<T, F, Fut>(
        &self,
        service: &str,
        timeout: Option<Duration>,
        mut first: Option<remote::Remote>,
        mut remote: F,
    ) -> Routed<T>
    where
        F: FnMut(remote::Remote, Option<Duration>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ServiceError>>,
    {
        let deadline = deadline::after(timeout.unwrap_or(RETURN_WAIT));
        loop {
            let target = match first.take() {
                Some(chosen) => Ok(Target::Remote(chosen)),
                None => self.route(service, deadline).await,
            };
            self.record_failure(service, &target);
            let timeout = timeout.map(|_| remaining(deadline));
            match target {
                Err(e) => return Routed::Answered(Err(e)),
                Ok(Target::Local(local)) => return Routed::Local(local, timeout),
                Ok(Target::Remote(node)) => {
                    let answer = remote(node, timeout).await;
                    if matches!(&answer, Err(e) if not_sent(e)) {
                        continue;
                    }
                    self.record_failure(service, &answer);
                    return Routed::Answered(answer);
                }
            }
        }
    }

    /// Hand `msg` to a worker of `service` without waiting for its reply. Returns
    /// once a worker (or the node holding one) has it; errors (no service,
    /// overloaded, rejected) still come back.
    pub async fn tell<M: Request>(&self, service: &str, msg: M) -> Result<(), ServiceError> {
        if let Some((speaker, _)) = self.messenger_service(service) {
            let data = serde_json::to_vec(&msg)
                .map_err(|e| ServiceError::bad_request(format!("request is not JSON: {e}")))?;
            return speaker.send(M::SUBJECT, &data);
        }
        let deadline = deadline::after(RETURN_WAIT);
        loop {
            match self.route(service, deadline).await? {
                Target::Local(local) => return local.tell(msg, Origin::Local).await,
                Target::Remote(remote) => match remote.tell(&msg, None).await {
                    Err(e) if not_sent(&e) => continue,
                    told => return told,
                },
            }
        }
    }

    /// `msg` to every worker of `service` in the cluster, without waiting for
    /// replies; returns how many workers it reached.
    pub async fn broadcast<M: Request + Clone>(
        &self,
        service: &str,
        msg: M,
    ) -> Result<usize, ServiceError> {
        let remotes = remote::remotes(self.transport(), service);
        let mut reached = match self.inner.router.service(service) {
            Ok(local) => local.broadcast(msg.clone(), Origin::Local)?,
            Err(e) if remotes.is_empty() => return Err(e),
            Err(_) => 0,
        };
        for remote in &remotes {
            for index in 0..remote.offer.workers {
                match remote.tell(&msg, Some(index)).await {
                    Ok(()) => reached += 1,
                    Err(e) => {
                        log::warn!("broadcast to {}/{service}/{index}: {e}", remote.node())
                    }
                }
            }
        }
        Ok(reached)
    }

    /// Request `msg` from the worker `worker`, on whichever node it runs.
    pub async fn request_worker<M: Request>(
        &self,
        worker: &WorkerId,
        msg: M,
    ) -> Result<ReplyOf<M>, ServiceError> {
        if worker.node != self.inner.name {
            let remote = remote::remote_on(self.transport(), &worker.node, &worker.service)?;
            return remote.request(&msg, None, Some(worker.index)).await;
        }
        let (service, incarnation) = self.inner.router.worker(worker)?;
        service
            .request_worker(incarnation, msg, None, Origin::Local)
            .await
    }

    /// Request `msg` from every worker of `service` in the cluster; one result per
    /// worker.
    pub async fn request_all<M: Request + Clone>(
        &self,
        service: &str,
        msg: M,
    ) -> Result<Vec<(WorkerId, Result<ReplyOf<M>, ServiceError>)>, ServiceError> {
        let remotes = remote::remotes(self.transport(), service);
        let mut results = match self.inner.router.service(service) {
            Ok(local) => local.request_all(msg.clone(), None, Origin::Local).await,
            Err(e) if remotes.is_empty() => return Err(e),
            Err(_) => Vec::new(),
        };
        let msg = &msg;
        let calls = remotes.iter().flat_map(|remote| {
            remote.worker_ids().map(move |id| async move {
                let reply = remote.request(msg, None, Some(id.index)).await;
                (id, reply)
            })
        });
        results.extend(futures::future::join_all(calls).await);
        Ok(results)
    }

    /// Request `msg` from the master's handlers (the app's [`App::master`](crate::App::master) actor),
    /// on the master node.
    pub async fn request_master<M: Request>(&self, msg: M) -> Result<ReplyOf<M>, ServiceError> {
        if let Ok(local) = self.inner.router.service(MASTER_SERVICE) {
            return local.request(msg, None, Origin::Local).await;
        }
        let master = self.transport().and_then(|t| t.master());
        match master {
            Some(master) if master != self.inner.name => {
                let remote = remote::remote_on(self.transport(), &master, MASTER_SERVICE)?;
                remote.request(&msg, None, None).await
            }
            _ => Err(ServiceError::no_such_service(format!(
                "no master handlers reachable from node {}: the app defines none (App::master) or no master node is connected",
                self.inner.name
            ))),
        }
    }

    /// Stops worker `worker`, on whichever node it runs, as if it crashed; its
    /// supervisor applies its policy.
    pub async fn kill(&self, worker: &WorkerId) -> Result<(), ServiceError> {
        if worker.node != self.inner.name {
            let link = self
                .transport()
                .and_then(|t| t.link(&worker.node))
                .ok_or_else(|| {
                    ServiceError::no_such_service(format!(
                        "worker {} is not running: node {} is not connected",
                        crate::logging::untrusted(&worker.to_string()),
                        crate::logging::untrusted(&worker.node)
                    ))
                })?;
            let deadline = tokio::time::Instant::now() + STATUS_TIMEOUT;
            return link.kill(&worker.to_string(), deadline).await;
        }
        self.root()?
            .send(Kill(worker.clone()))
            .await
            .map_err(|_| node_stopped(self.name()))?
    }

    /// Ends node `node`'s process with exit `code`, as if it crashed: the node
    /// that spawned it restarts it by its policy. `node` may be this node.
    pub async fn kill_node(&self, node: &str, code: i32) -> Result<(), ServiceError> {
        if node == self.name() {
            self.exit_soon(code);
            return Ok(());
        }
        let link = self.transport().and_then(|t| t.link(node)).ok_or_else(|| {
            ServiceError::no_such_service(format!("node {node} is not connected to this node"))
        })?;
        let deadline = tokio::time::Instant::now() + STATUS_TIMEOUT;
        link.kill_node(code, deadline).await
    }

    /// Exits the process with `code` in a moment (after the answer that says so
    /// has gone out), without draining: a kill is a crash.
    pub(crate) fn exit_soon(&self, code: i32) {
        log::error!("node {}: killed; exiting with code {code}", self.name());
        std::thread::spawn(move || {
            std::thread::sleep(EXIT_DELAY);
            std::process::exit(code);
        });
    }
}

/// How long a killed node waits to let its answer out before it exits.
const EXIT_DELAY: Duration = Duration::from_millis(100);

/// How long a request without its own timeout waits for a service whose only
/// nodes are restarting.
const RETURN_WAIT: Duration = Duration::from_secs(5);
/// How often such a request looks again.
const RETURN_POLL: Duration = Duration::from_millis(5);

/// Where the routing loop left a request.
enum Routed<T> {
    /// This node runs the service: serve it here, within the timeout left.
    Local(
        std::sync::Arc<crate::service::LocalService>,
        Option<Duration>,
    ),
    /// Another node answered, or the request failed.
    Answered(Result<T, ServiceError>),
}

/// What is left until `deadline`, at least a millisecond.
fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

impl Node {
    /// Counts a failed call in `/metrics`, under `service` only if a node of the
    /// cluster runs it (a name from a URL may be anything).
    fn record_failure<T>(&self, service: &str, result: &Result<T, ServiceError>) {
        self.inner.call_failures.record(
            service,
            || {
                self.inner.router.get(service).is_some()
                    || self.transport().is_some_and(|b| {
                        b.members()
                            .iter()
                            .any(|m| m.services.iter().any(|o| o.name == service))
                    })
            },
            result,
        );
    }

    /// Where a request for `service` goes. While no node runs it but one that did
    /// said it was leaving (as a node restarting in a reload does), waits for the
    /// service to come back, until `deadline` at most.
    async fn route(&self, service: &str, deadline: Instant) -> Result<Target, ServiceError> {
        loop {
            let target = self.target(service);
            if let Err(e) = &target {
                let returning = self.transport().and_then(|b| b.returning(service));
                let wait = e.kind == ErrorKind::NoSuchService
                    && returning.is_some_and(|until| {
                        let now = tokio::time::Instant::now();
                        now < until && Instant::now() < deadline
                    });
                if wait {
                    tokio::time::sleep(RETURN_POLL).await;
                    continue;
                }
            }
            return target;
        }
    }
}
