//! The dashboard's static assets (`iot-gateway/ui/`), embedded in the binary and served under
//! `/ui/`: plain HTML, CSS and JavaScript modules, no build step, nothing fetched from elsewhere.
//!
//! The dashboard signs users in with `POST /auth/login` and calls the service API with the
//! session's bearer token; every call is checked against the access matrix as for any other
//! client (see `docs/dashboard.md`). These routes need no token and no `api-version`: they serve
//! only the fixed files below, which hold no data.
//!
//! Each answer says its content type with `X-Content-Type-Options: nosniff`, and the page's
//! `Content-Security-Policy` allows scripts, styles and connections to this origin only (no
//! inline script, no frames), so an injected string cannot run code or send the token away.

use axum::Router;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::{ApiError, code};
use super::state::HttpState;

/// Where the dashboard is.
pub const UI_PATH: &str = "/ui/";

/// The policy of every asset: this origin only; images may be `data:` URLs.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

macro_rules! asset {
    ($name:literal, $kind:literal) => {
        (
            $name,
            $kind,
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $name)).as_slice(),
        )
    };
}

/// (file name, content type, bytes) of every asset.
pub const ASSETS: &[(&str, &str, &[u8])] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("sse.js", "text/javascript; charset=utf-8"),
    asset!("chart.js", "text/javascript; charset=utf-8"),
    asset!("map.js", "text/javascript; charset=utf-8"),
    asset!("pages.js", "text/javascript; charset=utf-8"),
    asset!("admin.js", "text/javascript; charset=utf-8"),
    asset!("fleet.js", "text/javascript; charset=utf-8"),
];

/// The routes: `/` and `/ui` redirect to `/ui/`, which is `index.html`; `/ui/{file}` an asset.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/", get(redirect))
        .route("/ui", get(redirect))
        .route(UI_PATH, get(|| async { serve("index.html") }))
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>| async move { serve(&file) }),
        )
}

/// Whether `path` is one of these routes (they take no `api-version`).
pub(super) fn is_ui_path(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with(UI_PATH)
}

async fn redirect() -> Response {
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, HeaderValue::from_static(UI_PATH))],
    )
        .into_response()
}

fn serve(file: &str) -> Response {
    let Some((_, kind, bytes)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return ApiError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, "no such resource")
            .into_response();
    };
    let mut response = (*bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    // Assets change with the binary: revalidate rather than keep a stale page.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_there_once_with_a_type() {
        for (i, (name, kind, bytes)) in ASSETS.iter().enumerate() {
            assert!(!bytes.is_empty(), "{name} is empty");
            assert!(!kind.is_empty());
            assert!(
                ASSETS[..i].iter().all(|(n, _, _)| n != name),
                "{name} twice"
            );
        }
    }

    #[test]
    fn the_pages_load_nothing_from_elsewhere() {
        for (name, _, bytes) in ASSETS {
            // The SVG namespace is a name, not a place anything is fetched from.
            let text = String::from_utf8_lossy(bytes).replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://"), "{name} names an http:// URL");
            assert!(!text.contains("https://"), "{name} names an https:// URL");
        }
    }
}
