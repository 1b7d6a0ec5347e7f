//! The live dashboard, `GET /`: one page, its script and its style sheet, all
//! compiled into the binary (no build step, nothing fetched from outside).
//!
//! The page polls `GET /v1/status`, which gathers every node of the cluster
//! with its counters, and draws from successive answers; its buttons call
//! `POST /v1/kill`, `/v1/reload` and `/v1/scale/{service}` like any client.
//!
//! # Who may load it
//!
//! The three files need no token, unlike every other endpoint but
//! `GET /v1/health` (see [`access`](super::access)): a browser navigating to
//! `http://127.0.0.1:8000/` cannot send an `Authorization` header, so the page
//! could never load otherwise. This gives nothing away: the files are the same
//! in every build and hold no secret and no data of the cluster. The page asks
//! for the token and sends it as `Authorization: Bearer` on each call, so
//! every call from it passes the same checks as a call from `curl`: `Host`,
//! `Origin`, token, JSON content type. `Host` and `Origin` are checked for these
//! files too, so a rebound DNS name serves nothing.
//!
//! The responses carry a `Content-Security-Policy` that allows scripts, styles
//! and connections from the node itself only, and no inline script at all, so
//! that a name from the cluster that slipped into the page as markup could not
//! run; the page also puts every such name in the DOM as text. They forbid
//! framing (against clickjacking of the kill buttons) and MIME sniffing.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};

/// A file of the dashboard: its path and content type, and its text.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 3] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("dashboard/index.html"),
    },
    Asset {
        path: "/dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("dashboard/dashboard.js"),
    },
    Asset {
        path: "/dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("dashboard/dashboard.css"),
    },
];

/// Scripts, styles and connections from the node only; no inline script or
/// style, no plugin, no form target elsewhere, no framing, no `<base>`.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The dashboard's paths; `GET` serves each without a token (see the module doc).
pub(crate) const PATHS: [&str; 3] = [ASSETS[0].path, ASSETS[1].path, ASSETS[2].path];

/// Whether `path` is one of the dashboard's files.
pub(crate) fn is_asset(path: &str) -> bool {
    PATHS.contains(&path)
}

/// Serves the dashboard's file at the request's path, with the headers of the
/// module doc.
pub(crate) async fn serve(req: HttpRequest) -> HttpResponse {
    let Some(asset) = ASSETS.iter().find(|a| a.path == req.path()) else {
        return HttpResponse::NotFound().finish();
    };
    HttpResponse::Ok()
        .content_type(asset.content_type)
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .insert_header((
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .insert_header((
            header::HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ))
        // A new binary's page, never a cached one of the old.
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .body(asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_script_and_style_from_the_node_and_nothing_else() {
        let page = ASSETS[0].body;
        assert!(page.contains(r#"<script src="/dashboard.js" defer></script>"#));
        assert!(page.contains(r#"<link rel="stylesheet" href="/dashboard.css">"#));
        // No inline script or handler (the policy would block them), and no
        // markup made from text.
        assert_eq!(page.matches("<script").count(), 1);
        for asset in &ASSETS {
            // The SVG namespace is a name, not an address the page loads.
            let text = asset.body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http:") && !text.contains("https:"),
                "{}",
                asset.path
            );
            for markup in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                assert!(!text.contains(markup), "{}: {markup}", asset.path);
            }
        }
        let handler = page
            .split(|c: char| c.is_whitespace() || c == '<')
            .find(|word| word.starts_with("on") && word.contains('='));
        assert_eq!(handler, None);
    }
}
