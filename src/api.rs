//! The HTTP API (SPEC §6) on actix-web: health, status, request, kill (a worker
//! or a node), reload, metrics (Prometheus text), publish, subscribe (a stream of
//! JSON lines), push and queues. JSON in and out; every error is
//! `{"error":{"kind","message"}}` with the status of its kind.
//! Bodies are capped at `api.max_body` bytes while they are read. With a token
//! configured, every endpoint but health needs `Authorization: Bearer TOKEN`.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::error::ServiceError;
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
}

/// Reads a bearer token file: its first line, trimmed, must not be empty.
pub(crate) fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err("is empty".into());
    }
    Ok(token)
}

/// Serves the API for `node` on `listener` until the returned handle stops it.
pub(crate) fn serve(
    listener: TcpListener,
    node: Node,
    token: Option<String>,
    max_body: usize,
) -> std::io::Result<ApiServer> {
    let addr = listener.local_addr()?;
    let state = web::Data::new(State {
        node,
        token,
        max_body,
    });
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .route("/v1/health", web::get().to(health))
            .route("/v1/status", web::get().to(status))
            .route("/v1/request/{service}/{subject}", web::post().to(request))
            .route("/v1/kill", web::post().to(kill))
            .route("/v1/reload", web::post().to(reload))
            .route("/metrics", web::get().to(metrics))
            .route("/v1/publish/{topic:.*}", web::post().to(publish))
            .route("/v1/subscribe", web::get().to(subscribe_all))
            .route("/v1/subscribe/{prefix:.*}", web::get().to(subscribe))
            .route("/v1/push/{queue}", web::post().to(push))
            .route("/v1/queues", web::get().to(queues))
            .default_service(web::to(not_found))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(10)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(ApiServer { handle, addr })
}

fn error_response(error: &ServiceError) -> HttpResponse {
    let status =
        StatusCode::from_u16(error.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(error.to_body())
}

fn authorize(req: &HttpRequest, state: &State) -> Result<(), ServiceError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit, so timing does not reveal a prefix.
    let matches = given.is_some_and(|given| {
        given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if matches {
        Ok(())
    } else {
        Err(ServiceError::rejected(
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        ))
    }
}

async fn read_body(mut payload: web::Payload, max: usize) -> Result<Vec<u8>, ServiceError> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ServiceError::bad_request(format!("cannot read request body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(ServiceError::bad_request(format!(
                "request body is larger than the {max}-byte limit (api.max_body)"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn health(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "node": state.node.name() }))
}

async fn status(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    match authorize(&req, &state) {
        Ok(()) => HttpResponse::Ok().json(state.node.cluster_status().await),
        Err(e) => error_response(&e),
    }
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
        authorize(&req, &state)?;
        let timeout = parse_timeout(req.query_string())?;
        let body = read_body(payload, state.max_body).await?;
        let (service, subject) = path.into_inner();
        state
            .node
            .request_json(&service, &subject, body, timeout)
            .await
    };
    match answer.await {
        Ok(reply) => HttpResponse::Ok().json(json!({ "reply": reply })),
        Err(e) => error_response(&e),
    }
}

fn parse_timeout(query: &str) -> Result<Option<Duration>, ServiceError> {
    let query: RequestQuery = parse_query(query)?;
    query
        .timeout
        .map(|t| {
            humantime::parse_duration(&t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    ServiceError::bad_request(format!(
                        "timeout `{t}` is not a duration like 500ms or 5s"
                    ))
                })
        })
        .transpose()
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

async fn kill(req: HttpRequest, payload: web::Payload, state: web::Data<State>) -> HttpResponse {
    let answer = async {
        authorize(&req, &state)?;
        let body = read_body(payload, state.max_body).await?;
        let body: KillBody = serde_json::from_slice(&body)
            .map_err(|e| ServiceError::bad_request(format!("{KILL_FORMS}: {e}")))?;
        match (body.worker, body.node, body.code) {
            (Some(worker), None, None) => {
                let id: WorkerId = worker.parse()?;
                state.node.kill(&id).await?;
                Ok(json!({ "killed": id }))
            }
            (None, Some(node), code) => {
                let code = code.unwrap_or(1);
                state.node.kill_node(&node, code).await?;
                Ok(json!({ "killed": node, "code": code }))
            }
            _ => Err(ServiceError::bad_request(KILL_FORMS)),
        }
    };
    match answer.await {
        Ok(killed) => HttpResponse::Accepted().json(killed),
        Err(e) => error_response(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadBody {
    node: Option<String>,
}

async fn reload(req: HttpRequest, payload: web::Payload, state: web::Data<State>) -> HttpResponse {
    let answer = async {
        authorize(&req, &state)?;
        let body = read_body(payload, state.max_body).await?;
        let body: ReloadBody = if body.iter().all(u8::is_ascii_whitespace) {
            ReloadBody { node: None }
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ServiceError::bad_request(format!(
                    "reload takes {{}} (every spawned node) or {{\"node\":\"NAME\"}}: {e}"
                ))
            })?
        };
        state.node.reload(body.node.as_deref()).await
    };
    match answer.await {
        Ok(reloaded) => HttpResponse::Ok().json(json!({ "reloaded": reloaded })),
        Err(e) => error_response(&e),
    }
}

async fn metrics(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    match authorize(&req, &state) {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(state.node.metrics()),
        Err(e) => error_response(&e),
    }
}

async fn publish(
    req: HttpRequest,
    topic: web::Path<String>,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let answer = async {
        authorize(&req, &state)?;
        let body = read_body(payload, state.max_body).await?;
        state.node.publish_json(&topic, Bytes::from(body))
    };
    match answer.await {
        Ok(delivered) => HttpResponse::Accepted().json(json!({ "delivered": delivered })),
        Err(e) => error_response(&e),
    }
}

/// JSON lines a slow `GET /v1/subscribe` client may have outstanding, within the
/// `api.subscribe_buffer` bytes it may hold; past either it misses messages, as any
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

async fn push(
    req: HttpRequest,
    queue: web::Path<String>,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let answer = async {
        authorize(&req, &state)?;
        let body = read_body(payload, state.max_body).await?;
        let job: Box<RawValue> = serde_json::from_slice(&body)
            .map_err(|e| ServiceError::bad_request(format!("job is not JSON: {e}")))?;
        state.node.push_json(&queue, job).await
    };
    match answer.await {
        Ok(id) => HttpResponse::Accepted().json(json!({ "job": id })),
        Err(e) => error_response(&e),
    }
}

async fn queues(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let answer = async {
        authorize(&req, &state)?;
        state.node.queues().await
    };
    match answer.await {
        Ok(queues) => HttpResponse::Ok().json(json!({ "queues": queues })),
        Err(e) => error_response(&e),
    }
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    error_response(&ServiceError::bad_request(format!(
        "no endpoint {} {}",
        req.method(),
        req.path()
    )))
}
