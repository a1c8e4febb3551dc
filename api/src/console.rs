//! The web console at `/ui/`: a page per hash route (workflows, one workflow, definitions with
//! their diagrams, the cluster), drawn in the browser from this same API. Its files are built
//! into the binary: nothing is fetched from anywhere else at run time.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

/// The console's files, by name under `/ui/`.
const FILES: [(&str, &str, &str); 3] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../ui/style.css"),
    ),
];

/// Scripts, styles and requests only from this node; no frames, no plugins.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) async fn redirect() -> Redirect {
    Redirect::permanent("/ui/")
}

/// The web console (its scripts and styles are under `/ui/`).
#[utoipa::path(get, path = "/ui/", responses((status = 200, description = "the console's page (HTML)")))]
pub(crate) async fn index() -> Response {
    serve("index.html")
}

pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}

fn serve(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => {
            let mut resp = (StatusCode::OK, *body).into_response();
            let headers = resp.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            resp
        }
        None => {
            crate::error::ApiError::not_found(format!("no console file {name:?}")).into_response()
        }
    }
}
