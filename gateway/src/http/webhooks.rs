//! `/v1/webhooks`: a workspace's webhook endpoints (permission `webhooks.manage`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::ToSchema;

use super::routes::{ApiResult, created, no_store, on_control};
use super::{Api, Caller, JsonBody, PathParam};
use crate::control::webhooks::{
    DeadDelivery, IssuedWebhook, NewWebhook, RotateSecret, WebhookInfo, WebhookUpdate,
};

/// Creates an endpoint. The signing secret (`whsec_…`) is in this answer only.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", security(("api_key" = [])),
    request_body = NewWebhook,
    responses((status = 201, body = IssuedWebhook), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn create_webhook(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    JsonBody(req): JsonBody<NewWebhook>,
) -> ApiResult<Response> {
    let w = on_control(&api, move |c| c.create_webhook(&p, req)).await?;
    Ok(no_store(created(w)))
}

/// The workspace's endpoints (secrets are never shown again; fingerprints are).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("api_key" = [])),
    responses((status = 200, body = Vec<WebhookInfo>), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn list_webhooks(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
) -> ApiResult<axum::Json<Vec<WebhookInfo>>> {
    Ok(axum::Json(on_control(&api, move |c| c.list_webhooks(&p)).await?))
}

/// One endpoint with its pending and dead delivery counts.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = WebhookInfo), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn get_webhook(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<axum::Json<WebhookInfo>> {
    Ok(axum::Json(
        on_control(&api, move |c| c.get_webhook(&p, &id)).await?,
    ))
}

/// Changes an endpoint: URL, types, order, description, enabled (re-enable after HTTP 410).
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path)),
    request_body = WebhookUpdate,
    responses((status = 200, body = WebhookInfo), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn update_webhook(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(req): JsonBody<WebhookUpdate>,
) -> ApiResult<axum::Json<WebhookInfo>> {
    Ok(axum::Json(
        on_control(&api, move |c| c.update_webhook(&p, &id, req)).await?,
    ))
}

/// Deletes an endpoint and the deliveries still owed to it.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn delete_webhook(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<StatusCode> {
    on_control(&api, move |c| c.delete_webhook(&p, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret; the old one keeps signing beside it for `overlap_s` (both
/// signatures are sent), so the receiver can roll over without losing a delivery.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path)),
    request_body = RotateSecret,
    responses((status = 201, body = IssuedWebhook), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn rotate_webhook_secret(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(req): JsonBody<RotateSecret>,
) -> ApiResult<Response> {
    let w = on_control(&api, move |c| c.rotate_webhook_secret(&p, &id, req)).await?;
    Ok(no_store(created(w)))
}

/// Deliveries the gateway gave up for this endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}/dead", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Vec<DeadDelivery>), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn list_dead(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<axum::Json<Vec<DeadDelivery>>> {
    Ok(axum::Json(
        on_control(&api, move |c| c.webhook_dead(&p, &id)).await?,
    ))
}

/// `POST /v1/webhooks/{id}/dead/replay`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The dead delivery to replay (its `seq`); absent = all of the endpoint's.
    #[serde(default)]
    pub seq: Option<u64>,
}

/// How many dead deliveries went back to work.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Replayed {
    /// Deliveries replayed.
    pub replayed: u64,
}

/// Puts dead deliveries back to work (attempts start again).
#[utoipa::path(post, path = "/v1/webhooks/{id}/dead/replay", tag = "webhooks", security(("api_key" = [])),
    params(("id" = String, Path)),
    request_body = ReplayRequest,
    responses((status = 200, body = Replayed), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn replay_dead(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(req): JsonBody<ReplayRequest>,
) -> ApiResult<axum::Json<Replayed>> {
    let n = on_control(&api, move |c| c.webhook_replay(&p, &id, req.seq)).await?;
    Ok(axum::Json(Replayed { replayed: n }))
}
