//! The HTTP API (SPEC §6) on actix-web: health, status, request, kill (a worker
//! or a node), scale, reload, metrics (Prometheus text), publish, subscribe (a
//! stream of JSON lines), push, queues, the cluster's [`logs`] (JSON lines too);
//! and the live [`dashboard`] at `GET /`. JSON in and out; every error is
//! `{"error":{"kind","message"}}` with the status of its kind.
//!
//! Every request passes [`access`] first (Host, Origin, token, content type, body
//! size); [`limits`] keeps connections within the node's file descriptors. A body
//! must arrive within `api.read_timeout` and is capped at `api.max_body` bytes
//! while it is read. Connections are [`paced`]: of a client that pipelines
//! requests without reading the answers, little is read, and its connection
//! closes once the node could write nothing to it for `api.read_timeout`.
//!
//! Every request is served within its W3C trace ([`traced`]): the caller's
//! `traceparent`, continued, or a new trace; every response carries it back.

pub(crate) mod access;
mod dashboard;
pub(crate) mod limits;
mod logs;
mod paced;
mod traced;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_service::{IntoServiceFactory as _, ServiceFactoryExt as _};
use actix_web::dev::{ServerHandle, Service as _};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures::future::{ready, Either};
use futures::{FutureExt as _, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use self::access::{Access, Refusal};
use self::traced::RequestTrace;
use crate::config::ApiSection;
use crate::error::{ErrorKind, ServiceError};
use crate::message::WorkerId;
use crate::node::Node;

/// A running API server.
pub(crate) struct ApiServer {
    pub(crate) handle: ServerHandle,
    pub(crate) addr: SocketAddr,
}

struct State {
    node: Node,
    token: Option<String>,
    max_body: usize,
    read_timeout: Duration,
    log_streams: Arc<logs::LogStreams>,
}

/// The longest `?timeout=` a request may ask for.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// Serves the API for `node` on `listener`, as `config` says, until the returned
/// handle stops it.
pub(crate) fn serve(
    listener: TcpListener,
    node: Node,
    token: Option<String>,
    config: &ApiSection,
) -> std::io::Result<ApiServer> {
    let addr = listener.local_addr()?;
    let access = Arc::new(Access {
        token: token.clone(),
        allowed_hosts: config
            .allowed_hosts
            .iter()
            .map(|h| access::allowed_host(h))
            .collect(),
        listen_ip: addr.ip(),
        max_body: config.max_body,
    });
    let state = web::Data::new(State {
        node,
        token,
        max_body: config.max_body,
        read_timeout: config.read_timeout,
        log_streams: Arc::default(),
    });
    let connections = limits::connection_budget(config.max_connections, limits::raise_fd_limit());
    if connections < config.max_connections {
        log::warn!(
            "api: at most {connections} connections at once, not {} (api.max_connections): the open-file limit keeps descriptors for the bridge",
            config.max_connections
        );
    }
    let read_timeout = config.read_timeout;
    // Accepted connections inherit it.
    socket2::SockRef::from(&listener).set_send_buffer_size(paced::SEND_BUFFER)?;
    let builder = actix_server::Server::build();
    let shutdown = builder.graceful_shutdown_signal();
    let server = builder
        .workers(WORKERS)
        // actix counts connections per worker.
        .max_concurrent_connections((connections / WORKERS).max(1))
        .disable_signals()
        .shutdown_timeout(10)
        .listen("colony-api", listener, move || {
            let access = access.clone();
            let app = actix_web::App::new()
                .app_data(state.clone())
                .wrap_fn(move |mut req, srv| {
                    // Until the answer is ready (a refusal's at once).
                    let in_flight = paced::Pace::of(req.request()).map(|p| p.start(&mut req));
                    let trace = RequestTrace::of(req.headers());
                    match access.check(&req) {
                        Ok(()) => {
                            let context = Some(trace.context);
                            let call = crate::trace::scope_sync(context, || srv.call(req));
                            Either::Left(crate::trace::scope(context, call).map(move |r| {
                                drop(in_flight);
                                r.map(|mut r| {
                                    trace.stamp(r.headers_mut());
                                    r.map_into_left_body()
                                })
                            }))
                        }
                        Err(refusal) => {
                            let mut refused = req.into_response(refusal.response());
                            trace.stamp(refused.headers_mut());
                            Either::Right(ready(Ok(refused.map_into_right_body())))
                        }
                    }
                })
                .service(endpoint("/v1/health", web::get().to(health)))
                .service(endpoint("/v1/status", web::get().to(status)))
                .service(endpoint(
                    "/v1/request/{service}/{subject}",
                    web::post().to(request),
                ))
                .service(endpoint("/v1/kill", web::post().to(kill)))
                .service(endpoint("/v1/scale/{service}", web::post().to(scale)))
                .service(endpoint("/v1/reload", web::post().to(reload)))
                .service(endpoint("/metrics", web::get().to(metrics)))
                .service(endpoint("/v1/publish/{topic:.*}", web::post().to(publish)))
                .service(endpoint("/v1/subscribe", web::get().to(subscribe_all)))
                .service(endpoint(
                    "/v1/subscribe/{prefix:.*}",
                    web::get().to(subscribe),
                ))
                .service(endpoint("/v1/push/{queue}", web::post().to(push)))
                .service(endpoint("/v1/queues", web::get().to(queues)))
                .service(endpoint("/v1/logs", web::get().to(logs)))
                .configure(|config| {
                    for path in dashboard::PATHS {
                        config.service(endpoint(path, web::get().to(dashboard::serve)));
                    }
                })
                .default_service(web::to(not_found))
                .into_factory()
                .map_err(|e| e.error_response());
            let shutdown = shutdown.clone();
            let http = actix_http::HttpService::build()
                .graceful_shutdown_signal(move || {
                    let shutdown = shutdown.clone();
                    async move { shutdown.notified().await }
                })
                .client_request_timeout(read_timeout)
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(addr)
                .on_connect_ext(|io: &paced::Paced, data| {
                    data.insert(io.pace());
                })
                .finish(actix_service::map_config(app, move |_| {
                    actix_web::dev::AppConfig::default()
                }));
            actix_service::fn_service(move |io: tokio::net::TcpStream| async move {
                let _ = io.set_nodelay(true);
                let peer = io.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((
                    paced::Paced::new(io, read_timeout),
                    actix_http::Protocol::Http1,
                    peer,
                ))
            })
            .and_then(http)
        })?
        .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(ApiServer { handle, addr })
}

/// One endpoint: `route` at `path`, and a JSON 405 for any other method.
fn endpoint(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(wrong_method))
}

/// The API's threads.
const WORKERS: usize = 2;

fn error_response(error: &ServiceError) -> HttpResponse {
    let status =
        StatusCode::from_u16(error.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(error.to_body())
}

/// The token check for handlers that answer with a stream. The middleware in
/// [`access`] has already refused a missing or wrong token; this stays so the
/// stream handlers need not know that.
fn authorize(req: &HttpRequest, state: &State) -> Result<(), ServiceError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(access::bearer);
    if given.is_some_and(|given| access::constant_time_eq(given.as_bytes(), token.as_bytes())) {
        Ok(())
    } else {
        Err(ServiceError::rejected(
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        ))
    }
}

/// Reads a body as it arrives (nothing is reserved from its announced length),
/// at most `max` bytes (413), all within `read_timeout` (408; the connection closes).
async fn read_body(payload: web::Payload, state: &State) -> Result<Vec<u8>, Refusal> {
    let max = state.max_body;
    let read = async move {
        let mut payload = payload;
        let mut body = Vec::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| ServiceError::bad_request(format!("cannot read request body: {e}")))?;
            if body.len().saturating_add(chunk.len()) > max {
                return Err(access::too_large(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(state.read_timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorKind::Timeout,
                format!(
                    "the request body did not arrive within {} (api.read_timeout)",
                    humantime::format_duration(state.read_timeout)
                ),
            ))
        })
}

async fn health(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "node": state.node.name() }))
}

async fn status(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(state.node.cluster_status().await)
}

#[derive(Deserialize)]
struct RequestQuery {
    timeout: Option<String>,
}

async fn request(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let answer = async {
        let timeout = parse_timeout(req.query_string())?;
        let body = read_body(payload, &state).await?;
        let (service, subject) = path.into_inner();
        let reply = state
            .node
            .request_json(&service, &subject, body.into(), timeout)
            .await?;
        Ok::<_, Refusal>(reply)
    };
    match answer.await {
        Ok(reply) => {
            // The reply's JSON goes out as it came, not parsed again.
            #[derive(serde::Serialize)]
            struct Replied {
                reply: Box<serde_json::value::RawValue>,
            }
            HttpResponse::Ok().json(Replied { reply })
        }
        Err(e) => e.response(),
    }
}

/// `?timeout=`: a duration like `500ms`, more than zero and at most an hour.
fn parse_timeout(query: &str) -> Result<Option<Duration>, ServiceError> {
    let query: RequestQuery = parse_query(query)?;
    let Some(text) = query.timeout else {
        return Ok(None);
    };
    let timeout = humantime::parse_duration(&text)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ServiceError::bad_request(format!(
                "timeout `{}` is not a duration like 500ms or 5s",
                crate::logging::untrusted(&text)
            ))
        })?;
    if timeout > MAX_REQUEST_TIMEOUT {
        return Err(ServiceError::bad_request(format!(
            "timeout `{}` is longer than the 1h maximum",
            crate::logging::untrusted(&text)
        )));
    }
    Ok(Some(timeout))
}

fn parse_query(query: &str) -> Result<RequestQuery, ServiceError> {
    web::Query::<RequestQuery>::from_query(query)
        .map(web::Query::into_inner)
        .map_err(|e| ServiceError::bad_request(format!("bad query string: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillBody {
    worker: Option<String>,
    node: Option<String>,
    code: Option<i32>,
}

const KILL_FORMS: &str = "kill takes {\"worker\":\"ID\"} or {\"node\":\"NAME\",\"code\":N}";

async fn kill(payload: web::Payload, state: web::Data<State>) -> HttpResponse {
    let answer = async {
        let body = read_body(payload, &state).await?;
        let body: KillBody = serde_json::from_slice(&body)
            .map_err(|e| ServiceError::bad_request(format!("{KILL_FORMS}: {e}")))?;
        match (body.worker, body.node, body.code) {
            (Some(worker), None, None) => {
                let id: WorkerId = worker.parse()?;
                state.node.kill(&id).await?;
                Ok::<_, Refusal>(json!({ "killed": id }))
            }
            (None, Some(node), code) => {
                let code = code.unwrap_or(1);
                state.node.kill_node(&node, code).await?;
                Ok(json!({ "killed": node, "code": code }))
            }
            _ => Err(ServiceError::bad_request(KILL_FORMS).into()),
        }
    };
    match answer.await {
        Ok(killed) => HttpResponse::Accepted().json(killed),
        Err(e) => e.response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    /// Read as any JSON value, so that every wrong one gets the same clear answer.
    workers: Value,
    node: Option<String>,
}

/// `POST /v1/scale/{service}` with `{"workers":N}` or `{"workers":N,"node":"NAME"}`:
/// the service's workers on that node (by default this one, or the one that runs
/// it) from now on; 200 `{"service","node","workers","was"}`.
async fn scale(
    service: web::Path<String>,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let answer = async {
        let body = read_body(payload, &state).await?;
        let forms = format!(
            "scale takes {{\"workers\":N}} or {{\"workers\":N,\"node\":\"NAME\"}}, N a whole number from 1 to {}",
            crate::config::limits::MAX_WORKERS
        );
        let body: ScaleBody = serde_json::from_slice(&body).map_err(|e| {
            ServiceError::bad_request(format!(
                "{forms}: {}",
                crate::logging::untrusted(&e.to_string())
            ))
        })?;
        let workers = body
            .workers
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                ServiceError::bad_request(format!(
                    "{forms}, not {}",
                    crate::logging::untrusted(&body.workers.to_string())
                ))
            })?;
        let scaled = state
            .node
            .scale(&service, workers, body.node.as_deref())
            .await?;
        Ok::<_, Refusal>(scaled)
    };
    match answer.await {
        Ok(scaled) => HttpResponse::Ok().json(scaled),
        Err(e) => e.response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadBody {
    node: Option<String>,
}

async fn reload(payload: web::Payload, state: web::Data<State>) -> HttpResponse {
    let answer = async {
        let body = read_body(payload, &state).await?;
        let body: ReloadBody = if body.iter().all(u8::is_ascii_whitespace) {
            ReloadBody { node: None }
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ServiceError::bad_request(format!(
                    "reload takes {{}} (every spawned node) or {{\"node\":\"NAME\"}}: {e}"
                ))
            })?
        };
        Ok::<_, Refusal>(state.node.reload(body.node.as_deref()).await?)
    };
    match answer.await {
        Ok(reloaded) => HttpResponse::Ok().json(json!({ "reloaded": reloaded })),
        Err(e) => e.response(),
    }
}

async fn metrics(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.node.metrics())
}

async fn publish(
    topic: web::Path<String>,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let answer = async {
        let body = read_body(payload, &state).await?;
        Ok::<_, Refusal>(state.node.publish_json(&topic, Bytes::from(body))?)
    };
    match answer.await {
        Ok(delivered) => HttpResponse::Accepted().json(json!({ "delivered": delivered })),
        Err(e) => e.response(),
    }
}

/// JSON lines a slow `GET /v1/subscribe` client may have outstanding, within the
/// `api.subscribe_buffer` bytes it may hold (and within the budget all streams
/// share, 8 such buffers); past either it misses messages, as any
/// subscriber past its high-water mark does, and is told how many with a line
/// `{"dropped":N}` before the next message it gets.
const STREAM_BUFFER: usize = 1024;

async fn subscribe_all(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    stream_lines(&req, &state, "")
}

async fn subscribe(
    req: HttpRequest,
    prefix: web::Path<String>,
    state: web::Data<State>,
) -> HttpResponse {
    stream_lines(&req, &state, &prefix)
}

fn stream_lines(req: &HttpRequest, state: &State, prefix: &str) -> HttpResponse {
    let subscribed =
        authorize(req, state).and_then(|()| state.node.subscribe_lines(prefix, STREAM_BUFFER));
    match subscribed {
        Ok((subscription, lines)) => {
            // The subscription lives as long as the stream: a client that hangs up
            // unsubscribes.
            let stream = futures::stream::unfold(
                (lines, subscription),
                |(mut lines, subscription)| async move {
                    let line = lines.recv().await?;
                    Some((Ok::<_, actix_web::Error>(line), (lines, subscription)))
                },
            );
            HttpResponse::Ok()
                .content_type("application/x-ndjson")
                .insert_header(("cache-control", "no-cache"))
                .streaming(stream)
        }
        Err(e) => error_response(&e),
    }
}

async fn logs(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let opened = authorize(&req, &state).and_then(|()| {
        let pace = paced::Pace::of(&req);
        logs::open(req.query_string(), &state.node, &state.log_streams, pace)
    });
    match opened {
        Ok(lines) => HttpResponse::Ok()
            .content_type("application/x-ndjson")
            .insert_header(("cache-control", "no-cache"))
            .streaming(lines),
        Err(e) => error_response(&e),
    }
}

async fn push(
    queue: web::Path<String>,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let answer = async {
        let body = read_body(payload, &state).await?;
        let job: Box<RawValue> = serde_json::from_slice(&body)
            .map_err(|e| ServiceError::bad_request(format!("job is not JSON: {e}")))?;
        Ok::<_, Refusal>(state.node.push_json(&queue, job).await?)
    };
    match answer.await {
        Ok(id) => HttpResponse::Accepted().json(json!({ "job": id })),
        Err(e) => e.response(),
    }
}

async fn queues(state: web::Data<State>) -> HttpResponse {
    match state.node.queues().await {
        Ok(queues) => HttpResponse::Ok().json(json!({ "queues": queues })),
        Err(e) => error_response(&e),
    }
}

async fn wrong_method(req: HttpRequest) -> HttpResponse {
    Refusal::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::BadRequest,
        format!(
            "{} {}: this endpoint does not take {0}",
            req.method(),
            crate::logging::untrusted(req.path())
        ),
    )
    .response()
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    error_response(&ServiceError::no_such_service(format!(
        "no endpoint {} {}",
        req.method(),
        crate::logging::untrusted(req.path())
    )))
}
