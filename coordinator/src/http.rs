//! The coordinator's HTTP listener (`serve --http ADDR`): `GET /metrics` for Prometheus. With
//! `--auth` a scrape needs the bearer token of a `metrics` (or `admin`) principal, so that the
//! farm's numbers are not everyone's; without it the listener stays on loopback like the gRPC
//! one, unless `--insecure`.

use crate::auth::Role;
use crate::{now_ms, Coordinator};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

pub fn router(coordinator: Arc<Coordinator>) -> axum::Router {
    axum::Router::new().route("/metrics", get(metrics)).with_state(coordinator)
}

/// The token of an `authorization: Bearer TOKEN` header, if the request has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Whether the request carries a token that may read the metrics.
fn allowed(coordinator: &Coordinator, headers: &HeaderMap) -> bool {
    let Some(tokens) = &coordinator.config.auth else {
        return true;
    };
    let token = bearer(headers).unwrap_or_default();
    matches!(tokens.authenticate(token).map(|p| p.role), Some(Role::Metrics | Role::Admin))
}

async fn metrics(State(coordinator): State<Arc<Coordinator>>, headers: HeaderMap) -> Response {
    // Open, it answers only to an IP address or localhost, like the dashboard: a page of
    // another site whose name was re-pointed at the listener (DNS rebinding) gets nothing.
    if coordinator.config.auth.is_none() && !crate::web::addressed_by_ip(&headers) {
        return (StatusCode::MISDIRECTED_REQUEST, "address this listener by its IP address, or serve it with --auth\n")
            .into_response();
    }
    if !allowed(&coordinator, &headers) {
        let challenge = [(header::WWW_AUTHENTICATE, "Bearer")];
        return (StatusCode::UNAUTHORIZED, challenge, "a metrics or admin token is required\n").into_response();
    }
    match coordinator.db(|c| crate::metrics::snapshot(c, now_ms())).await {
        Ok(snapshot) => {
            let body = coordinator.metrics.encode(&snapshot);
            let kind = [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")];
            (kind, body).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "reading metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("reading metrics failed: {e}\n")).into_response()
        }
    }
}
