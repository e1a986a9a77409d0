//! The deployments' HTTP surface: `GET /v1/deployments[/{name}]`, `POST
//! /v1/deployments/{name}/rollback`, and the OpenAI-compatible `GET /v1/models`, which lists
//! the deployments (the names clients send as `model`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rbee_core::proto::deployment::{DeploymentSpec, DeploymentStatus};
use rbee_http::ApiError;

use crate::routes::Queen;

/// `GET /v1/deployments`.
pub(crate) async fn list(State(queen): State<Arc<Queen>>) -> Json<Vec<DeploymentStatus>> {
    Json(queen.deployments.statuses())
}

/// `PUT /v1/deployments`: makes these specs the desired deployments (what `rbee sync` does
/// after its package steps, for programs that keep their specs themselves); answers at once
/// with what changed. Each spec is checked as the config loader checks it.
pub(crate) async fn apply(State(queen): State<Arc<Queen>>, Json(specs): Json<Vec<DeploymentSpec>>) -> Response {
    let mut problems = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for spec in &specs {
        if let Err(e) = spec.check() {
            problems.push(format!("{}: {e}", spec.name));
        }
        if !names.insert(spec.name.as_str()) {
            problems.push(format!("{}: declared twice", spec.name));
        }
    }
    if !problems.is_empty() {
        return ApiError::new(StatusCode::BAD_REQUEST, problems.join("; ")).into_response();
    }
    let (changes, _) = queen.deployments.apply(specs);
    Json(serde_json::json!({"changes": changes})).into_response()
}

/// `GET /v1/deployments/{name}`.
pub(crate) async fn get_one(State(queen): State<Arc<Queen>>, Path(name): Path<String>) -> Response {
    match queen.deployments.status_of(&name) {
        Ok(status) => Json(status).into_response(),
        Err(message) => ApiError::new(StatusCode::NOT_FOUND, message).into_response(),
    }
}

/// `POST /v1/deployments/{name}/rollback`: the previous revision's spec becomes the next
/// revision, rolled out like any change.
pub(crate) async fn rollback(State(queen): State<Arc<Queen>>, Path(name): Path<String>) -> Response {
    match queen.deployments.rollback(&name) {
        Ok(revision) => Json(serde_json::json!({"deployment": name, "revision": revision})).into_response(),
        Err(message) if message.starts_with("no deployment") => {
            ApiError::new(StatusCode::NOT_FOUND, message).into_response()
        }
        Err(message) => ApiError::new(StatusCode::CONFLICT, message).into_response(),
    }
}

/// `GET /v1/models` (OpenAI-compatible): one entry per deployment.
pub(crate) async fn models(State(queen): State<Arc<Queen>>) -> Json<serde_json::Value> {
    let data: Vec<serde_json::Value> = queen
        .deployments
        .statuses()
        .into_iter()
        .map(|d| {
            serde_json::json!({
                "id": d.name,
                "object": "model",
                "owned_by": "rbee",
                "ready_replicas": d.ready,
                "replicas": d.replicas,
            })
        })
        .collect();
    Json(serde_json::json!({"object": "list", "data": data}))
}
