//! `/v1/automations`: a workspace's automation rules and the tags they set (permission
//! `automations.manage`). Invalid rules get 422 listing every problem as `path: message`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::routes::{ApiResult, created, on_control};
use super::{Api, Caller, JsonBody, PathParam, QueryParams};
use crate::automations::rules::{RuleSpec, RuleUpdate};
use crate::control::automations::{RuleInfo, TagSet};

/// Creates a rule; it applies to the next inbound message.
#[utoipa::path(post, path = "/v1/automations", tag = "automations", security(("api_key" = [])),
    request_body = RuleSpec,
    responses((status = 201, body = RuleInfo), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn create_rule(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    JsonBody(spec): JsonBody<RuleSpec>,
) -> ApiResult<Response> {
    let r = on_control(&api, move |c| c.create_rule(&p, spec)).await?;
    Ok(created(r))
}

/// The workspace's rules, in the order they run.
#[utoipa::path(get, path = "/v1/automations", tag = "automations", security(("api_key" = [])),
    responses((status = 200, body = Vec<RuleInfo>), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn list_rules(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
) -> ApiResult<axum::Json<Vec<RuleInfo>>> {
    Ok(axum::Json(on_control(&api, move |c| c.list_rules(&p)).await?))
}

/// One rule with its counters.
#[utoipa::path(get, path = "/v1/automations/{id}", tag = "automations", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = RuleInfo), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn get_rule(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<axum::Json<RuleInfo>> {
    Ok(axum::Json(on_control(&api, move |c| c.get_rule(&p, &id)).await?))
}

/// Changes a rule (validated as a whole; applied at once).
#[utoipa::path(patch, path = "/v1/automations/{id}", tag = "automations", security(("api_key" = [])),
    params(("id" = String, Path)),
    request_body = RuleUpdate,
    responses((status = 200, body = RuleInfo), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn update_rule(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(req): JsonBody<RuleUpdate>,
) -> ApiResult<axum::Json<RuleInfo>> {
    Ok(axum::Json(
        on_control(&api, move |c| c.update_rule(&p, &id, req)).await?,
    ))
}

/// Deletes a rule.
#[utoipa::path(delete, path = "/v1/automations/{id}", tag = "automations", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn delete_rule(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<StatusCode> {
    on_control(&api, move |c| c.delete_rule(&p, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Which (device, sender) to read tags of.
#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TagQuery {
    /// Device id.
    pub device: String,
    /// Sender (any form of the number).
    pub sender: String,
}

/// Tags automations set on one (device, sender).
#[utoipa::path(get, path = "/v1/automations/tags", tag = "automations", security(("api_key" = [])),
    params(TagQuery),
    responses((status = 200, body = TagSet), (status = "4XX", body = super::ErrorBody)))]
pub(crate) async fn get_tags(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    QueryParams(q): QueryParams<TagQuery>,
) -> ApiResult<axum::Json<TagSet>> {
    Ok(axum::Json(
        on_control(&api, move |c| c.get_tags(&p, &q.device, &q.sender)).await?,
    ))
}
