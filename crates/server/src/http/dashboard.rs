//! The built-in dashboard: `/` serves its page and `/ui/<file>` its embedded assets
//! (`strata_web`), revalidated by `ETag` and confined by a content security policy to this
//! origin (no CDN, no inline script).

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use strata_web::Asset;

/// What the page may load: its own files and this server's API and stream, nothing else.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

/// `GET /`.
pub async fn index(headers: HeaderMap) -> Response {
    serve(strata_web::INDEX, &headers)
}

/// `GET /ui/{*file}`.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match strata_web::asset(&file) {
        Some(a) => serve(a, &headers),
        None => super::ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("the dashboard has no file {file:?}"),
        )
        .into_response(),
    }
}

fn serve(a: &'static Asset, headers: &HeaderMap) -> Response {
    let etag = HeaderValue::from_static(a.etag());
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == a.etag() || t.trim() == "*");
    let common = [
        (header::ETAG, etag),
        // Revalidated each time: a new binary brings new files under the same names.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        )],
        a.body,
    )
        .into_response()
}
