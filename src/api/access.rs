//! Who may talk to the API, checked for every request before any handler runs
//! (one middleware, so no endpoint can forget a check). In this order:
//!
//! 0. `Host`, `Origin`, `Authorization`, `Content-Type` and `Content-Length`
//!    each appear at most once; else 400, so no two parts of the stack can read
//!    different values.
//! 1. `Host` (port stripped) is a loopback name or address, the node's own listen
//!    address, or listed in `api.allowed_hosts`; else 421. A page that rebinds its
//!    own DNS name to 127.0.0.1 cannot reach the API.
//! 2. An `Origin`, when sent, is the API's own (`http://` + the request's `Host`);
//!    else 403. Browsers send it on every cross-site POST.
//! 3. With a token, every endpoint but `GET /v1/health` and the dashboard's
//!    static files (`GET /`, see [`dashboard`] for why) needs
//!    `Authorization: Bearer TOKEN` (the scheme in any case): 401 when missing,
//!    403 when wrong, compared in constant time.
//! 4. A POST's body is `application/json`; else 415. A browser's "simple request"
//!    (no preflight) cannot carry that type.
//! 5. A `Content-Length` over `api.max_body` is 413 before a body byte is read.

use std::net::IpAddr;

use actix_web::dev::ServiceRequest;
use actix_web::http::{header, Method, StatusCode};
use actix_web::HttpResponse;

use super::dashboard;
use crate::error::{ErrorKind, ServiceError};

/// An answer that is not the one the client asked for: an HTTP status and the
/// error body of the nearest SPEC §3 kind.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    error: ServiceError,
}

impl Refusal {
    /// A refusal with `status` and an error of `kind`.
    pub(crate) fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Refusal {
            status,
            error: ServiceError::new(kind, message),
        }
    }

    /// The response: `{"error":{"kind","message"}}` with the refusal's status. A
    /// body left unread (413, 408) closes the connection.
    pub(crate) fn response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            response.force_close();
        }
        response.json(self.error.to_body())
    }
}

impl From<ServiceError> for Refusal {
    fn from(error: ServiceError) -> Self {
        let status = StatusCode::from_u16(error.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Refusal { status, error }
    }
}

/// What the checks compare against, fixed at start.
#[derive(Debug)]
pub(crate) struct Access {
    /// The bearer token, if `api.token_file` is set.
    pub(crate) token: Option<String>,
    /// `api.allowed_hosts`, lowercased and without port.
    pub(crate) allowed_hosts: Vec<String>,
    /// The address the API listens on: a `Host` naming it is the API itself.
    pub(crate) listen_ip: IpAddr,
    /// `api.max_body`.
    pub(crate) max_body: usize,
}

impl Access {
    /// Runs every check on `req`, in the order of the module doc.
    pub(crate) fn check(&self, req: &ServiceRequest) -> Result<(), Refusal> {
        let headers = req.headers();
        for name in [
            header::HOST,
            header::ORIGIN,
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
        ] {
            if headers.get_all(&name).nth(1).is_some() {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::BadRequest,
                    format!("the request has more than one {name} header"),
                ));
            }
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    ErrorKind::Rejected,
                    "the request has no Host header",
                )
            })?;
        self.check_host(host)?;
        check_origin(headers.get(header::ORIGIN), host)?;
        let public = req.path() == "/v1/health" || dashboard::is_asset(req.path());
        if !(req.method() == Method::GET && public) {
            self.check_token(headers.get(header::AUTHORIZATION))?;
        }
        if req.method() == Method::POST {
            check_json(headers.get(header::CONTENT_TYPE))?;
            self.check_length(headers.get(header::CONTENT_LENGTH))?;
        }
        Ok(())
    }

    fn check_host(&self, host: &str) -> Result<(), Refusal> {
        let name = host_name(host).unwrap_or_default();
        let allowed = !name.is_empty()
            && (is_loopback_name(&name)
                || name.parse::<IpAddr>().is_ok_and(|ip| {
                    ip.is_loopback() || (ip == self.listen_ip && !ip.is_unspecified())
                })
                || self.allowed_hosts.contains(&name));
        if allowed {
            return Ok(());
        }
        Err(Refusal::new(
            StatusCode::MISDIRECTED_REQUEST,
            ErrorKind::Rejected,
            format!(
                "Host `{}` is not served: use a loopback address or list it in api.allowed_hosts",
                printable(host)
            ),
        ))
    }

    fn check_token(&self, given: Option<&header::HeaderValue>) -> Result<(), Refusal> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = given
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorKind::Rejected,
                    "this node needs a token: send Authorization: Bearer TOKEN",
                )
            })?;
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                ErrorKind::Rejected,
                "wrong bearer token",
            ))
        }
    }

    fn check_length(&self, length: Option<&header::HeaderValue>) -> Result<(), Refusal> {
        let Some(length) = length else {
            return Ok(());
        };
        // actix-http already refused a Content-Length that is not a number.
        let length = length
            .to_str()
            .ok()
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if length > self.max_body as u64 {
            return Err(too_large(self.max_body));
        }
        Ok(())
    }
}

/// The 413 for a body over `max` bytes.
pub(crate) fn too_large(max: usize) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::BadRequest,
        format!("request body is larger than the {max}-byte limit (api.max_body)"),
    )
}

/// The token of `Authorization: Bearer TOKEN`, the scheme in any case.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Equal without an early exit, so timing does not reveal a matching prefix.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_origin(origin: Option<&header::HeaderValue>, host: &str) -> Result<(), Refusal> {
    let Some(origin) = origin else {
        return Ok(());
    };
    let own = origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("http://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host));
    if own {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::FORBIDDEN,
        ErrorKind::Rejected,
        format!(
            "Origin `{}` is not this API's own (http://{}): cross-site requests are refused",
            printable(origin.to_str().unwrap_or("(not text)")),
            printable(host)
        ),
    ))
}

fn check_json(content_type: Option<&header::HeaderValue>) -> Result<(), Refusal> {
    let essence = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if essence.is_some_and(|e| e.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::BadRequest,
        format!(
            "a POST body must be Content-Type: application/json, not `{}`",
            printable(essence.unwrap_or("(none)"))
        ),
    ))
}

/// `Host` without its port, lowercased, without a trailing dot and IPv6 brackets;
/// `None` when it is not `NAME`, `NAME:PORT`, `[IPV6]` or `[IPV6]:PORT`.
fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    let is_port = |port: &str| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let name = if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        name
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            _ => host,
        }
    };
    Some(name.trim_end_matches('.').to_ascii_lowercase())
}

fn is_loopback_name(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

/// Normalizes an `api.allowed_hosts` entry as `Host` headers are.
pub(crate) fn allowed_host(entry: &str) -> String {
    host_name(entry).unwrap_or_else(|| entry.trim().to_ascii_lowercase())
}

/// Text from a header, fit for an error message: control characters escaped and
/// cut to 100 characters.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(100)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > 100 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_port_brackets_case_and_trailing_dot() {
        let name = |host| host_name(host).unwrap_or_else(|| "(refused)".into());
        assert_eq!(name("LocalHost:8000"), "localhost");
        assert_eq!(name("[::1]:8000"), "::1");
        assert_eq!(name("[::1]"), "::1");
        assert_eq!(name("127.0.0.1"), "127.0.0.1");
        assert_eq!(name("app.localhost.:80"), "app.localhost");
        assert_eq!(name("[::1]evil.example"), "(refused)");
        assert_eq!(name("[::1]:80evil"), "(refused)");
        assert_eq!(name("[::1]:"), "(refused)");
        assert_eq!(name("[::1"), "(refused)");
        assert!(is_loopback_name("a.b.localhost"));
        assert!(!is_loopback_name("localhost.evil.example"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
