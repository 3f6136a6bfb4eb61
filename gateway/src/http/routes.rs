//! Routes, their access rules and their handlers.
//!
//! [`ROUTES`] is the access table: for every method and path, who may call it. The
//! gatekeeper in [`super`] enforces it before any handler runs; the OpenAPI test checks
//! that the table, the router and the committed OpenAPI document list the same routes,
//! and the isolation test walks every entry with a key of another workspace.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use waping_protocol::{Body, ErrorCode, MessageId, Text};

use super::{Api, ApiError, Caller, JsonBody, PathParam, QueryParams};
use crate::admit::{self, NotAdmitted};
use crate::control::config::Retention;
use crate::control::jobs::{DeletionJob, DeletionKind, NewDeletion};
use crate::control::roles::Permission;
use crate::control::{
    Error, IssuedKey, KeyInfo, KeyUpdate, NewKey, NewWorkspace, Principal, WorkspaceRecord, WorkspaceUpdate,
};
use crate::session::DeviceCommand;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials: `/healthz` and `/readyz` only.
    Public,
    /// The node administrator only.
    Admin,
    /// A workspace key whose role grants the permission.
    Key(Permission),
}

/// One row of the access table.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path template as registered (`{id}` parameters).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

const fn r(method: &'static str, path: &'static str, access: Access) -> Route {
    Route { method, path, access }
}

use Access::{Admin, Key};
use Permission as P;

/// The access table: every route of the API.
pub const ROUTES: &[Route] = &[
    r("GET", "/healthz", Access::Public),
    r("GET", "/readyz", Access::Public),
    r("GET", "/v1/admin/workspaces", Admin),
    r("POST", "/v1/admin/workspaces", Admin),
    r("GET", "/v1/admin/workspaces/{workspace}", Admin),
    r("PATCH", "/v1/admin/workspaces/{workspace}", Admin),
    r("DELETE", "/v1/admin/workspaces/{workspace}", Admin),
    r("POST", "/v1/admin/workspaces/{workspace}/keys", Admin),
    r("GET", "/v1/admin/workspaces/{workspace}/deletions/{id}", Admin),
    r("GET", "/v1/workspace", Key(P::WorkspaceRead)),
    r("GET", "/v1/retention", Key(P::SettingsRead)),
    r("PUT", "/v1/retention", Key(P::SettingsWrite)),
    r("GET", "/v1/keys", Key(P::KeysRead)),
    r("POST", "/v1/keys", Key(P::KeysWrite)),
    r("GET", "/v1/keys/{id}", Key(P::KeysRead)),
    r("DELETE", "/v1/keys/{id}", Key(P::KeysWrite)),
    r("PATCH", "/v1/keys/{id}", Key(P::KeysWrite)),
    r("POST", "/v1/keys/{id}/rotate", Key(P::KeysWrite)),
    r("GET", "/v1/devices", Key(P::DevicesRead)),
    r("POST", "/v1/devices", Key(P::DevicesWrite)),
    r("GET", "/v1/devices/{id}", Key(P::DevicesRead)),
    r("DELETE", "/v1/devices/{id}", Key(P::DeletionsWrite)),
    r("POST", "/v1/devices/{id}/link", Key(P::DevicesWrite)),
    r("POST", "/v1/devices/{id}/unlink", Key(P::DevicesWrite)),
    r("POST", "/v1/devices/{id}/disable", Key(P::DevicesWrite)),
    r("POST", "/v1/devices/{id}/enable", Key(P::DevicesWrite)),
    r("POST", "/v1/messages", Key(P::MessagesSend)),
    r("GET", "/v1/messages", Key(P::MessagesReadOwn)),
    r("POST", "/v1/messages/batch", Key(P::MessagesSend)),
    r("GET", "/v1/messages/{id}", Key(P::MessagesReadOwn)),
    r("GET", "/v1/dead-letters", Key(P::DeadLettersRead)),
    r("GET", "/v1/dead-letters/{id}", Key(P::DeadLettersRead)),
    r("DELETE", "/v1/dead-letters/{id}", Key(P::DeadLettersWrite)),
    r("POST", "/v1/dead-letters/{id}/replay", Key(P::DeadLettersWrite)),
    r("GET", "/v1/deletions", Key(P::DeletionsWrite)),
    r("POST", "/v1/deletions", Key(P::DeletionsWrite)),
    r("GET", "/v1/deletions/{id}", Key(P::DeletionsWrite)),
    r("GET", "/v1/webhooks", Key(P::WebhooksManage)),
    r("POST", "/v1/webhooks", Key(P::WebhooksManage)),
    r("GET", "/v1/webhooks/{id}", Key(P::WebhooksManage)),
    r("PATCH", "/v1/webhooks/{id}", Key(P::WebhooksManage)),
    r("DELETE", "/v1/webhooks/{id}", Key(P::WebhooksManage)),
    r("POST", "/v1/webhooks/{id}/rotate-secret", Key(P::WebhooksManage)),
    r("GET", "/v1/webhooks/{id}/dead", Key(P::WebhooksManage)),
    r("POST", "/v1/webhooks/{id}/dead/replay", Key(P::WebhooksManage)),
    r("GET", super::events_ws::ROUTE, Key(P::EventsSubscribe)),
    // Automations (issue 8).
    r("GET", "/v1/automations", Key(P::AutomationsManage)),
    r("POST", "/v1/automations", Key(P::AutomationsManage)),
    r("GET", "/v1/automations/tags", Key(P::AutomationsManage)),
    r("GET", "/v1/automations/{id}", Key(P::AutomationsManage)),
    r("PATCH", "/v1/automations/{id}", Key(P::AutomationsManage)),
    r("DELETE", "/v1/automations/{id}", Key(P::AutomationsManage)),
];

/// The access rule of a matched route, if listed.
pub fn access(method: &Method, path: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|r| r.path == path && r.method == method.as_str())
}

/// Every handler, by path.
pub fn router() -> Router<Arc<Api>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/v1/admin/workspaces",
            get(list_workspaces).post(create_workspace),
        )
        .route(
            "/v1/admin/workspaces/{workspace}",
            get(get_workspace_admin)
                .patch(update_workspace_admin)
                .delete(delete_workspace_admin),
        )
        .route("/v1/admin/workspaces/{workspace}/keys", post(create_key_admin))
        .route(
            "/v1/admin/workspaces/{workspace}/deletions/{id}",
            get(get_deletion_admin),
        )
        .route("/v1/workspace", get(get_workspace))
        .route("/v1/retention", get(get_retention).put(put_retention))
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", get(get_key).patch(update_key).delete(revoke_key))
        .route("/v1/keys/{id}/rotate", post(rotate_key))
        .route("/v1/devices", get(list_devices).post(create_device))
        .route("/v1/devices/{id}", get(get_device).delete(delete_device))
        .route("/v1/devices/{id}/link", post(link_device))
        .route("/v1/devices/{id}/unlink", post(unlink_device))
        .route("/v1/devices/{id}/disable", post(disable_device))
        .route("/v1/devices/{id}/enable", post(enable_device))
        .route("/v1/messages", post(send_message).get(find_message))
        .route("/v1/messages/batch", post(send_batch))
        .route("/v1/messages/{id}", get(get_message))
        .route("/v1/dead-letters", get(list_dead_letters))
        .route(
            "/v1/dead-letters/{id}",
            get(get_dead_letter).delete(purge_dead_letter),
        )
        .route("/v1/dead-letters/{id}/replay", post(replay_dead_letter))
        .route("/v1/deletions", get(list_deletions).post(create_deletion))
        .route("/v1/deletions/{id}", get(get_deletion))
        .route(
            "/v1/webhooks",
            get(super::webhooks::list_webhooks).post(super::webhooks::create_webhook),
        )
        .route(
            "/v1/webhooks/{id}",
            get(super::webhooks::get_webhook)
                .patch(super::webhooks::update_webhook)
                .delete(super::webhooks::delete_webhook),
        )
        .route(
            "/v1/webhooks/{id}/rotate-secret",
            post(super::webhooks::rotate_webhook_secret),
        )
        .route("/v1/webhooks/{id}/dead", get(super::webhooks::list_dead))
        .route(
            "/v1/webhooks/{id}/dead/replay",
            post(super::webhooks::replay_dead),
        )
        .route(super::events_ws::ROUTE, get(super::events_ws::stream))
        // Automations (issue 8).
        .route(
            "/v1/automations",
            get(super::automations::list_rules).post(super::automations::create_rule),
        )
        .route("/v1/automations/tags", get(super::automations::get_tags))
        .route(
            "/v1/automations/{id}",
            get(super::automations::get_rule)
                .patch(super::automations::update_rule)
                .delete(super::automations::delete_rule),
        )
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Runs a control-plane change off the async workers: each is an fsynced write to
/// `control.redb` (and sometimes the keyring), milliseconds a request may wait but a runtime
/// worker should not.
pub(crate) async fn on_control<T: Send + 'static>(
    api: &Api,
    f: impl FnOnce(&Arc<crate::control::Control>) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let c = api.control.clone();
    let ctx = crate::audit::current();
    let (result, receipts) = tokio::task::spawn_blocking(move || crate::audit::collect(ctx, || f(&c)))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    // The answer waits for the change's audit records to be durable.
    crate::audit::settle(receipts).await;
    result
}

pub(crate) fn created<T: Serialize>(v: T) -> Response {
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

fn accepted<T: Serialize>(v: T) -> Response {
    (StatusCode::ACCEPTED, axum::Json(v)).into_response()
}

/// Secrets are shown once; nothing may cache them.
pub(crate) fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
}

// ----- health ----------------------------------------------------------------------------

/// Liveness: the process serves requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Readiness and the check behind each answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Whether every check passed.
    pub ready: bool,
    /// Each check.
    pub checks: Vec<ReadinessCheck>,
}

/// One readiness check.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessCheck {
    /// `journal`, `state_dir`, `audit` or `retry_queue`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why not, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The process is alive and its HTTP workers answer. No credentials.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok".into() })
}

/// Ready for traffic: the journal commits (a flush answers within 2 s; it was replayed
/// before the listeners opened), the state directory is writable, the audit log takes
/// records, and the retry queue has room. 503 with the failing checks otherwise.
/// No credentials; nothing about tenants is shown.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let c = &api.control;
    let mut checks = Vec::new();
    let mut check = |name: &str, r: Result<(), String>| {
        checks.push(ReadinessCheck {
            name: name.into(),
            ok: r.is_ok(),
            detail: r.err(),
        });
    };
    let journal =
        match tokio::time::timeout(std::time::Duration::from_secs(2), c.durable.journal.flush()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the journal did not commit within 2 s".into()),
        };
    check("journal", journal);
    let dir = c.config().server.resolved_state_dir();
    let writable = tokio::task::spawn_blocking(move || {
        let probe = dir.join(".readyz-probe");
        std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| format!("state directory not writable: {e}")));
    check("state_dir", writable);
    check("audit", c.audit.auditor().check().map_err(|e| e.to_string()));
    let (len, cap) = (c.durable.retry.len(), c.durable.retry.capacity());
    check(
        "retry_queue",
        if len < cap {
            Ok(())
        } else {
            Err(format!(
                "retry queue full ({len} of {cap}): the upstream is failing"
            ))
        },
    );
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(Readiness { ready, checks })).into_response()
}

// ----- workspaces ------------------------------------------------------------------------

/// Every workspace of the node.
#[utoipa::path(get, path = "/v1/admin/workspaces", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = [WorkspaceRecord]), (status = "4XX", body = super::ErrorBody)))]
async fn list_workspaces(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
) -> ApiResult<axum::Json<Vec<WorkspaceRecord>>> {
    Ok(axum::Json(api.control.list_workspaces(&p)?))
}

/// Creates a workspace (and its data key).
#[utoipa::path(post, path = "/v1/admin/workspaces", tag = "admin", security(("admin_token" = [])),
    request_body = NewWorkspace,
    responses((status = 201, body = WorkspaceRecord), (status = "4XX", body = super::ErrorBody)))]
async fn create_workspace(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    JsonBody(req): JsonBody<NewWorkspace>,
) -> ApiResult<Response> {
    let rec = on_control(&api, move |c| c.create_workspace(&p, req)).await?;
    Ok(created(rec))
}

/// One workspace.
#[utoipa::path(get, path = "/v1/admin/workspaces/{workspace}", tag = "admin", security(("admin_token" = [])),
    params(("workspace" = String, Path)),
    responses((status = 200, body = WorkspaceRecord), (status = "4XX", body = super::ErrorBody)))]
async fn get_workspace_admin(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(ws): PathParam<String>,
) -> ApiResult<axum::Json<WorkspaceRecord>> {
    Ok(axum::Json(api.control.workspace(&p, Some(&ws))?))
}

/// Changes a workspace's send limits or quotas (workspaces created through the API; those of
/// the configuration file change there). Applies at once to live traffic.
#[utoipa::path(patch, path = "/v1/admin/workspaces/{workspace}", tag = "admin", security(("admin_token" = [])),
    params(("workspace" = String, Path)),
    request_body = WorkspaceUpdate,
    responses((status = 200, body = WorkspaceRecord), (status = "4XX", body = super::ErrorBody)))]
async fn update_workspace_admin(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(ws): PathParam<String>,
    JsonBody(req): JsonBody<WorkspaceUpdate>,
) -> ApiResult<axum::Json<WorkspaceRecord>> {
    Ok(axum::Json(
        on_control(&api, move |c| c.update_workspace(&p, &ws, req)).await?,
    ))
}

/// Deletes a workspace: access ends at once, then a job removes its data and destroys its
/// data key.
#[utoipa::path(delete, path = "/v1/admin/workspaces/{workspace}", tag = "admin", security(("admin_token" = [])),
    params(("workspace" = String, Path)),
    responses((status = 202, body = DeletionJob), (status = "4XX", body = super::ErrorBody)))]
async fn delete_workspace_admin(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(ws): PathParam<String>,
) -> ApiResult<Response> {
    deletion(
        api,
        p,
        NewDeletion {
            kind: DeletionKind::Workspace,
            target: ws,
        },
    )
    .await
}

/// Creates a key in a workspace (bootstrap of its first owner key).
#[utoipa::path(post, path = "/v1/admin/workspaces/{workspace}/keys", tag = "admin", security(("admin_token" = [])),
    params(("workspace" = String, Path)), request_body = NewKey,
    responses((status = 201, body = IssuedKey), (status = "4XX", body = super::ErrorBody)))]
async fn create_key_admin(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(ws): PathParam<String>,
    JsonBody(req): JsonBody<NewKey>,
) -> ApiResult<Response> {
    let k = on_control(&api, move |c| c.create_key(&p, Some(&ws), req)).await?;
    Ok(no_store(created(k)))
}

/// A workspace deletion job.
#[utoipa::path(get, path = "/v1/admin/workspaces/{workspace}/deletions/{id}", tag = "admin", security(("admin_token" = [])),
    params(("workspace" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = DeletionJob), (status = "4XX", body = super::ErrorBody)))]
async fn get_deletion_admin(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam((ws, id)): PathParam<(String, String)>,
) -> ApiResult<axum::Json<DeletionJob>> {
    Ok(axum::Json(api.control.admin_deletion(&p, &ws, &id)?))
}

/// The caller's workspace.
#[utoipa::path(get, path = "/v1/workspace", tag = "workspace", security(("api_key" = [])),
    responses((status = 200, body = WorkspaceRecord), (status = "4XX", body = super::ErrorBody)))]
async fn get_workspace(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
) -> ApiResult<axum::Json<WorkspaceRecord>> {
    Ok(axum::Json(api.control.workspace(&p, None)?))
}

/// Retention windows of the caller's workspace.
#[utoipa::path(get, path = "/v1/retention", tag = "workspace", security(("api_key" = [])),
    responses((status = 200, body = Retention), (status = "4XX", body = super::ErrorBody)))]
async fn get_retention(State(api): State<Arc<Api>>, Caller(p): Caller) -> ApiResult<axum::Json<Retention>> {
    p.require(Permission::SettingsRead)?;
    Ok(axum::Json(api.control.workspace(&p, None)?.retention))
}

/// Changes the retention windows of the caller's workspace.
#[utoipa::path(put, path = "/v1/retention", tag = "workspace", security(("api_key" = [])),
    request_body = Retention,
    responses((status = 200, body = Retention), (status = "4XX", body = super::ErrorBody)))]
async fn put_retention(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    JsonBody(r): JsonBody<Retention>,
) -> ApiResult<axum::Json<Retention>> {
    let rec = on_control(&api, move |c| c.set_retention(&p, r)).await?;
    Ok(axum::Json(rec.retention))
}

// ----- keys ------------------------------------------------------------------------------

/// API keys of the caller's workspace (never their secrets).
#[utoipa::path(get, path = "/v1/keys", tag = "keys", security(("api_key" = [])),
    responses((status = 200, body = [KeyInfo]), (status = "4XX", body = super::ErrorBody)))]
async fn list_keys(State(api): State<Arc<Api>>, Caller(p): Caller) -> ApiResult<axum::Json<Vec<KeyInfo>>> {
    Ok(axum::Json(api.control.list_keys(&p)?))
}

/// Creates a key; the secret is in this response only.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", security(("api_key" = [])),
    request_body = NewKey,
    responses((status = 201, body = IssuedKey), (status = "4XX", body = super::ErrorBody)))]
async fn create_key(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    JsonBody(req): JsonBody<NewKey>,
) -> ApiResult<Response> {
    let k = on_control(&api, move |c| c.create_key(&p, None, req)).await?;
    Ok(no_store(created(k)))
}

/// One key.
#[utoipa::path(get, path = "/v1/keys/{id}", tag = "keys", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = KeyInfo), (status = "4XX", body = super::ErrorBody)))]
async fn get_key(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<axum::Json<KeyInfo>> {
    Ok(axum::Json(api.control.get_key(&p, &id)?))
}

/// Revokes a key: it stops working at once on HTTP and QUIC.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = super::ErrorBody)))]
async fn revoke_key(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<StatusCode> {
    on_control(&api, move |c| c.revoke_key(&p, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Changes a key's role. Requests and QUIC connections authenticated under the old role end
/// at once (connections are closed with AUTH_FAILED and reconnect under the new role).
#[utoipa::path(patch, path = "/v1/keys/{id}", tag = "keys", security(("api_key" = [])),
    params(("id" = String, Path)),
    request_body = KeyUpdate,
    responses((status = 200, body = KeyInfo), (status = "4XX", body = super::ErrorBody)))]
async fn update_key(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(req): JsonBody<KeyUpdate>,
) -> ApiResult<axum::Json<KeyInfo>> {
    Ok(axum::Json(
        on_control(&api, move |c| c.set_key_role(&p, &id, req.role)).await?,
    ))
}

/// Rotates a key: a new secret (and id) now, the old key revoked at once.
#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "keys", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 201, body = IssuedKey), (status = "4XX", body = super::ErrorBody)))]
async fn rotate_key(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<Response> {
    let k = on_control(&api, move |c| c.rotate_key(&p, &id)).await?;
    Ok(no_store(created(k)))
}

// ----- devices ---------------------------------------------------------------------------

/// A device and its session state.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    /// Device id.
    pub id: String,
    /// Session state: unlinked, linking, connected, disconnected, logged_out, banned, disabled.
    pub state: String,
    /// Where it was defined.
    pub source: crate::control::Source,
}

/// Device creation request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// Device id, unique in the workspace: 1–64 of `A-Z a-z 0-9 . _ -`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub id: String,
}

/// How to link a device.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// `qr` (QR refs arrive as `link_code` events) or `pairing_code` (needs `phone`).
    pub method: LinkMethodName,
    /// Phone number, digits with country code, for `pairing_code`.
    #[schema(pattern = "^[1-9][0-9]{6,14}$")]
    pub phone: Option<String>,
}

/// Link method.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkMethodName {
    /// QR code.
    Qr,
    /// 8-character pairing code typed into the phone.
    PairingCode,
}

/// A device's state after a command.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceStateView {
    /// Device id.
    pub id: String,
    /// State after the command.
    pub state: String,
}

fn device_view(api: &Api, p: &Principal, id: &str) -> Result<DeviceView, Error> {
    let k = p.require(Permission::DevicesRead)?;
    let s = api
        .control
        .sessions
        .get(k.workspace.idx, &Text::from(id))
        .ok_or(Error::NotFound)?;
    Ok(DeviceView {
        id: id.to_string(),
        state: s.state().as_str().to_string(),
        source: if api.control.device_from_config(&k.workspace.id, id) {
            crate::control::Source::Config
        } else {
            crate::control::Source::Api
        },
    })
}

/// Devices of the caller's workspace.
#[utoipa::path(get, path = "/v1/devices", tag = "devices", security(("api_key" = [])),
    responses((status = 200, body = [DeviceView]), (status = "4XX", body = super::ErrorBody)))]
async fn list_devices(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
) -> ApiResult<axum::Json<Vec<DeviceView>>> {
    let k = p.require(Permission::DevicesRead)?;
    let ids = api.control.device_ids(&k.workspace);
    Ok(axum::Json(
        ids.iter()
            .filter_map(|id| device_view(&api, &p, id).ok())
            .collect(),
    ))
}

/// Adds a device (unlinked until linked).
#[utoipa::path(post, path = "/v1/devices", tag = "devices", security(("api_key" = [])),
    request_body = NewDevice,
    responses((status = 201, body = DeviceView), (status = "4XX", body = super::ErrorBody)))]
async fn create_device(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    JsonBody(req): JsonBody<NewDevice>,
) -> ApiResult<Response> {
    let (p2, id) = (p.clone(), req.id.clone());
    on_control(&api, move |c| c.create_device(&p2, &id)).await?;
    Ok(created(device_view(&api, &p, &req.id)?))
}

/// One device.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = "4XX", body = super::ErrorBody)))]
async fn get_device(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<axum::Json<DeviceView>> {
    Ok(axum::Json(device_view(&api, &p, &id)?))
}

/// Deletes a device: logs it out of WhatsApp, removes its credentials, session state and
/// dead letters (a deletion job).
#[utoipa::path(delete, path = "/v1/devices/{id}", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 202, body = DeletionJob), (status = "4XX", body = super::ErrorBody)))]
async fn delete_device(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<Response> {
    deletion(
        api,
        p,
        NewDeletion {
            kind: DeletionKind::Device,
            target: id,
        },
    )
    .await
}

async fn command(
    api: Arc<Api>,
    p: Principal,
    id: String,
    cmd: DeviceCommand,
) -> ApiResult<axum::Json<DeviceStateView>> {
    let st = api.control.device_command(&p, &id, cmd).await?;
    Ok(axum::Json(DeviceStateView {
        id,
        state: st.as_str().to_string(),
    }))
}

/// Starts linking: QR refs or a pairing code arrive as `link_code` events.
#[utoipa::path(post, path = "/v1/devices/{id}/link", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path)), request_body = LinkRequest,
    responses((status = 200, body = DeviceStateView), (status = "4XX", body = super::ErrorBody)))]
async fn link_device(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
    JsonBody(req): JsonBody<LinkRequest>,
) -> ApiResult<axum::Json<DeviceStateView>> {
    let method = match (req.method, req.phone) {
        (LinkMethodName::Qr, None) => crate::upstream::LinkMethod::Qr,
        (LinkMethodName::Qr, Some(_)) => {
            return Err(Error::Invalid("phone: only for method pairing_code".into()).into());
        }
        (LinkMethodName::PairingCode, Some(phone)) => {
            waping_protocol::validate::phone(&Text::from(phone.as_str()))
                .map_err(|e| Error::Invalid(format!("phone: {}", e.message)))?;
            crate::upstream::LinkMethod::PairingCode { phone }
        }
        (LinkMethodName::PairingCode, None) => {
            return Err(Error::Invalid("phone: required for method pairing_code".into()).into());
        }
    };
    command(api, p, id, DeviceCommand::Link(method)).await
}

/// Logs the device out of WhatsApp and forgets its credentials.
#[utoipa::path(post, path = "/v1/devices/{id}/unlink", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DeviceStateView), (status = "4XX", body = super::ErrorBody)))]
async fn unlink_device(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<axum::Json<DeviceStateView>> {
    command(api, p, id, DeviceCommand::Unlink).await
}

/// Stops the device's session (it refuses sends with DEVICE_DISABLED).
#[utoipa::path(post, path = "/v1/devices/{id}/disable", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DeviceStateView), (status = "4XX", body = super::ErrorBody)))]
async fn disable_device(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<axum::Json<DeviceStateView>> {
    command(api, p, id, DeviceCommand::Disable).await
}

/// Resumes a disabled device.
#[utoipa::path(post, path = "/v1/devices/{id}/enable", tag = "devices", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DeviceStateView), (status = "4XX", body = super::ErrorBody)))]
async fn enable_device(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<axum::Json<DeviceStateView>> {
    command(api, p, id, DeviceCommand::Enable).await
}

// ----- messages --------------------------------------------------------------------------

/// One message to send.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// Device to send from.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub device: String,
    /// Recipient: phone number digits with country code, or a WhatsApp JID.
    #[schema(
        pattern = "^(\\+?[0-9]{6,15}|[0-9]{6,15}@(s\\.whatsapp\\.net|c\\.us)|[0-9-]+@g\\.us|[0-9]+@(lid|newsletter))$"
    )]
    pub to: String,
    /// Client key that makes a resend safe: the same key within the window returns the
    /// original message id and sends nothing again. 1–128 bytes.
    #[schema(min_length = 1, max_length = 128)]
    pub idempotency_key: String,
    /// Text content (exactly one of `text` and `media`), 1–65 536 bytes.
    #[schema(min_length = 1, max_length = 65536)]
    pub text: Option<String>,
    /// Media content.
    pub media: Option<MediaBody>,
}

/// Media reference.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaBody {
    /// URL or storage key.
    pub reference: String,
    /// MIME type.
    pub mime: String,
    /// Caption.
    #[serde(default)]
    pub caption: String,
}

/// An accepted message.
#[derive(Debug, Serialize, ToSchema)]
pub struct SendResult {
    /// Gateway message id (32 hex characters).
    pub id: String,
    /// True when the idempotency key was known: nothing new was accepted.
    pub duplicate: bool,
}

/// Up to `api.max_batch` messages.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBatch {
    /// The messages, each admitted or refused on its own.
    pub messages: Vec<SendMessage>,
}

/// One message's outcome in a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    /// Position in the request.
    pub index: usize,
    /// Set when accepted.
    pub accepted: Option<SendResult>,
    /// Set when refused (the message was not accepted; fix or retry it).
    pub error: Option<super::ErrorDetail>,
}

/// Outcome of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    /// One entry per message, in request order.
    pub results: Vec<BatchItem>,
}

fn body_of(m: &SendMessage) -> Result<Body, ApiError> {
    match (&m.text, &m.media) {
        (Some(t), None) => Ok(Body::Text(Text::from(t.as_str()))),
        (None, Some(md)) => Ok(Body::Media {
            reference: Text::from(md.reference.as_str()),
            mime: Text::from(md.mime.as_str()),
            caption: Text::from(md.caption.as_str()),
        }),
        _ => Err(Error::Invalid("exactly one of `text` and `media` is required".into()).into()),
    }
}

async fn send_one(api: &Api, p: &Principal, m: SendMessage) -> Result<SendResult, ApiError> {
    let k = p.require(Permission::MessagesSend)?;
    let body = body_of(&m)?;
    let c = &api.control;
    let node = admit::Node {
        sessions: &c.sessions,
        durable: &c.durable,
        ids: &api.ids,
        clock: api.clock,
        metrics: &api.metrics,
        audit: &c.audit,
    };
    let req = admit::Request {
        idempotency_key: Text::from(m.idempotency_key.as_str()),
        device: Text::from(m.device.as_str()),
        recipient: Text::from(m.to.as_str()),
        body,
        seq: 0,
        reply: None,
        submitted_by: k.id.clone(),
    };
    let a = match admit::admit(node, &k.workspace, req) {
        Ok(a) => a,
        Err(NotAdmitted::Refused(r)) => {
            api.metrics.rejected(r.code);
            let status = super::status_of(r.code);
            return Err(ApiError::new(status, r.code, r.reason).retry_after(r.retry_after_ms));
        }
        Err(NotAdmitted::Duplicate { id, pending }) => {
            if let Some(w) = pending
                && !w.wait().await
            {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::INTERNAL,
                    "the original message with this idempotency key was not persisted; resend",
                )
                .retry_after(100));
            }
            return Ok(SendResult {
                id: id.to_string(),
                duplicate: true,
            });
        }
    };
    let durable = &c.durable;
    match durable.journal.append(vec![a.record]).await {
        Ok(_) => {
            durable.idem.commit(a.token);
            api.metrics.accepted.increment(1);
            let id = a.out.id;
            a.permit.send(a.out);
            Ok(SendResult {
                id: id.to_string(),
                duplicate: false,
            })
        }
        Err(e) => {
            durable.idem.release(a.token);
            let after = e.retry_after().map_or(1000, admit::ceil_ms);
            let code = if e.retry_after().is_some() {
                ErrorCode::OVERLOADED
            } else {
                tracing::error!(error = %e, "journal append failed; refusing the message");
                ErrorCode::INTERNAL
            };
            Err(ApiError::new(super::status_of(code), code, format!("not persisted: {e}")).retry_after(after))
        }
    }
}

/// Sends one message. 202 once it is durable (journaled and fsynced); its delivery is
/// followed with `GET /v1/messages/{id}`.
#[utoipa::path(post, path = "/v1/messages", tag = "messages", security(("api_key" = [])),
    request_body = SendMessage,
    responses((status = 202, body = SendResult), (status = "4XX", body = super::ErrorBody), (status = "5XX", body = super::ErrorBody)))]
async fn send_message(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    JsonBody(m): JsonBody<SendMessage>,
) -> ApiResult<Response> {
    Ok(accepted(send_one(&api, &p, m).await?))
}

/// Sends up to `api.max_batch` messages; each is accepted or refused on its own.
#[utoipa::path(post, path = "/v1/messages/batch", tag = "messages", security(("api_key" = [])),
    request_body = SendBatch,
    responses((status = 207, body = BatchResult), (status = "4XX", body = super::ErrorBody)))]
async fn send_batch(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    JsonBody(b): JsonBody<SendBatch>,
) -> ApiResult<Response> {
    if b.messages.len() > api.cfg.max_batch as usize {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PAYLOAD_TOO_LARGE,
            format!("at most {} messages per batch", api.cfg.max_batch),
        ));
    }
    let mut results = Vec::with_capacity(b.messages.len());
    for (index, m) in b.messages.into_iter().enumerate() {
        match send_one(&api, &p, m).await {
            Ok(r) => results.push(BatchItem {
                index,
                accepted: Some(r),
                error: None,
            }),
            Err(e) => results.push(BatchItem {
                index,
                accepted: None,
                error: Some(e.detail()),
            }),
        }
    }
    Ok((StatusCode::MULTI_STATUS, axum::Json(BatchResult { results })).into_response())
}

/// Where a message stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    /// Gateway message id.
    pub id: String,
    /// Device.
    pub device: String,
    /// queued, in_flight, retry_wait, sent, failed, dead, purged.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// Last error code, when the state has one.
    pub code: Option<u16>,
    /// WhatsApp's id, once sent.
    pub upstream_id: Option<String>,
    /// Acceptance time, unix ms.
    pub accepted_at_ms: u64,
    /// Last change, unix ms.
    pub updated_at_ms: u64,
}

fn parse_id(s: &str) -> Result<MessageId, Error> {
    crate::durable::dead_letters::parse_id(s).map_err(|_| Error::NotFound)
}

async fn message_view(api: &Api, p: &Principal, id: MessageId) -> Result<MessageView, Error> {
    let k = p.require(Permission::MessagesReadOwn)?;
    let st = api
        .control
        .durable
        .journal
        .message_status(id)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .ok_or(Error::NotFound)?;
    if st.workspace != *k.workspace.id
        || (!k.role.allows(Permission::MessagesReadAll) && st.submitted_by != k.id)
    {
        return Err(Error::NotFound);
    }
    use waping_journal::StatusState as S;
    // The journal keeps finished records for the node's window; a workspace with a shorter
    // `delivery_records_days` does not see them past its own.
    let finished = matches!(st.state, S::Sent { .. } | S::Failed { .. } | S::Purged);
    let window_ms = u64::from(api.control.retention_of(&k.workspace.id).delivery_records_days) * 86_400_000;
    if finished && crate::unix_ms().saturating_sub(st.updated_at_ms) > window_ms {
        return Err(Error::NotFound);
    }
    let (state, code, upstream_id) = match &st.state {
        S::Queued => ("queued", None, None),
        S::InFlight => ("in_flight", None, None),
        S::RetryWait { last_code, .. } => ("retry_wait", Some(*last_code), None),
        S::Sent { upstream_id } => ("sent", None, Some(upstream_id.clone())),
        S::Failed { code } => ("failed", Some(*code), None),
        S::Dead { last_code } => ("dead", Some(*last_code), None),
        S::Purged => ("purged", None, None),
    };
    Ok(MessageView {
        id: id.to_string(),
        device: st.device.clone(),
        state: state.into(),
        attempts: st.attempts,
        code,
        upstream_id,
        accepted_at_ms: st.accepted_at_ms,
        updated_at_ms: st.updated_at_ms,
    })
}

/// Where a message stands (a sender key sees only messages it sent).
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = MessageView), (status = "4XX", body = super::ErrorBody)))]
async fn get_message(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<axum::Json<MessageView>> {
    Ok(axum::Json(message_view(&api, &p, parse_id(&id)?).await?))
}

/// Lookup by idempotency key.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ByKey {
    /// The idempotency key the message was sent with.
    pub idempotency_key: String,
}

/// Finds a message by its idempotency key (within the idempotency window).
#[utoipa::path(get, path = "/v1/messages", tag = "messages", security(("api_key" = [])),
    params(ByKey),
    responses((status = 200, body = MessageView), (status = "4XX", body = super::ErrorBody)))]
async fn find_message(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    QueryParams(q): QueryParams<ByKey>,
) -> ApiResult<axum::Json<MessageView>> {
    let k = p.require(Permission::MessagesReadOwn)?;
    let id = api
        .control
        .durable
        .idem
        .lookup(&k.workspace.id, &q.idempotency_key)
        .ok_or(Error::NotFound)?;
    Ok(axum::Json(message_view(&api, &p, id).await?))
}

// ----- dead letters ----------------------------------------------------------------------

/// A message that exhausted its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// Message id.
    pub id: String,
    /// Device.
    pub device: String,
    /// Recipient.
    pub to: String,
    /// Idempotency key it was sent with.
    pub idempotency_key: String,
    /// Attempts made.
    pub attempts: u32,
    /// Last error code and its name.
    pub last_code: u16,
    /// Name of `last_code`.
    pub last_code_name: String,
    /// Last error detail.
    pub last_detail: String,
    /// Acceptance time, unix ms.
    pub accepted_at_ms: u64,
    /// When it died, unix ms.
    pub dead_at_ms: u64,
}

fn dl_view(d: waping_journal::DeadLetter) -> DeadLetterView {
    DeadLetterView {
        id: d.message.id.to_string(),
        device: d.message.device,
        to: d.message.recipient,
        idempotency_key: d.message.idempotency_key,
        attempts: d.attempts,
        last_code: d.last_code,
        last_code_name: ErrorCode(d.last_code).name().to_string(),
        last_detail: d.last_detail,
        accepted_at_ms: d.message.accepted_at_ms,
        dead_at_ms: d.dead_at_ms,
    }
}

/// Paging.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Items after this id (the last id of the previous page).
    pub after: Option<String>,
    /// Page size, 1..=`api.max_page` (default 100 or `max_page` if smaller).
    pub limit: Option<u32>,
}

/// A page of dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    /// The items, by id.
    pub items: Vec<DeadLetterView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

async fn dead_in(
    api: &Api,
    p: &Principal,
    id: &str,
    need: Permission,
) -> Result<(MessageId, waping_journal::DeadLetter), Error> {
    let k = p.require(need)?;
    let id = parse_id(id)?;
    let d = api
        .control
        .durable
        .journal
        .dead_letter(id)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .ok_or(Error::NotFound)?;
    if d.message.workspace != *k.workspace.id {
        return Err(Error::NotFound);
    }
    Ok((id, d))
}

/// Dead letters of the caller's workspace.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "dead-letters", security(("api_key" = [])),
    params(PageQuery),
    responses((status = 200, body = DeadLetterPage), (status = "4XX", body = super::ErrorBody)))]
async fn list_dead_letters(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<axum::Json<DeadLetterPage>> {
    let k = p.require(Permission::DeadLettersRead)?;
    let max = api.cfg.max_page;
    let limit = q.limit.unwrap_or(100.min(max));
    if limit == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::INVALID_FIELD,
            format!("limit: must be 1..={max}"),
        ));
    }
    if limit > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PAYLOAD_TOO_LARGE,
            format!("limit: at most {max} items per page (api.max_page)"),
        ));
    }
    let after = match q.after.as_deref() {
        Some(a) => Some(
            crate::durable::dead_letters::parse_id(a).map_err(|e| Error::Invalid(format!("after: {e}")))?,
        ),
        None => None,
    };
    let items = api
        .control
        .durable
        .journal
        .dead_letters_in(&k.workspace.id, after, limit as usize)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    let next = (items.len() == limit as usize)
        .then(|| items.last().map(|d| d.message.id.to_string()))
        .flatten();
    Ok(axum::Json(DeadLetterPage {
        items: items.into_iter().map(dl_view).collect(),
        next,
    }))
}

/// One dead letter.
#[utoipa::path(get, path = "/v1/dead-letters/{id}", tag = "dead-letters", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DeadLetterView), (status = "4XX", body = super::ErrorBody)))]
async fn get_dead_letter(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<axum::Json<DeadLetterView>> {
    Ok(axum::Json(dl_view(
        dead_in(&api, &p, &id, Permission::DeadLettersRead).await?.1,
    )))
}

/// Deletes a dead letter for good.
#[utoipa::path(delete, path = "/v1/dead-letters/{id}", tag = "dead-letters", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = super::ErrorBody)))]
async fn purge_dead_letter(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<StatusCode> {
    let (id, d) = dead_in(&api, &p, &id, Permission::DeadLettersWrite).await?;
    api.control.audit.gate()?;
    api.control
        .durable
        .journal
        .purge_dead(id)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    api.control
        .audit
        .emit_durable(dead_letter_event(
            &p,
            waping_audit::Action::DeadLetterPurge,
            &d,
            id,
        ))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Puts a dead letter back to work: it is sent again (same id, same idempotency key).
#[utoipa::path(post, path = "/v1/dead-letters/{id}/replay", tag = "dead-letters", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 202, body = SendResult), (status = "4XX", body = super::ErrorBody)))]
async fn replay_dead_letter(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<Response> {
    let (id, d) = dead_in(&api, &p, &id, Permission::DeadLettersWrite).await?;
    let k = p.require(Permission::DeadLettersWrite)?;
    api.control.audit.gate()?;
    let session = api
        .control
        .sessions
        .get(k.workspace.idx, &Text::from(d.message.device.as_str()))
        .ok_or_else(|| Error::Conflict("the message's device no longer exists".into()))?;
    let pending = api
        .control
        .durable
        .journal
        .replay_dead(id)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    let m = pending.message;
    let out = crate::session::Outbound {
        id: m.id,
        seq: 0,
        recipient: Text::from(m.recipient),
        body: crate::durable::pbody(m.body),
        reply: None,
        attempts: 0,
        first_attempt_ms: 0,
    };
    if let Err(e) = session.submit_wait(out).await {
        tracing::warn!(message = %id, error = ?e, "replayed dead letter could not be queued now; it is unfinished in the journal and resumes at the next start");
    }
    api.control
        .audit
        .emit_durable(dead_letter_event(
            &p,
            waping_audit::Action::DeadLetterReplay,
            &d,
            id,
        ))
        .await;
    Ok(accepted(SendResult {
        id: id.to_string(),
        duplicate: false,
    }))
}

fn dead_letter_event(
    p: &Principal,
    action: waping_audit::Action,
    d: &waping_journal::DeadLetter,
    id: waping_protocol::MessageId,
) -> waping_audit::Event {
    waping_audit::Event::new(crate::unix_ms(), crate::audit::actor(p), action)
        .workspace(&d.message.workspace)
        .target("message", id.to_string())
}

// ----- deletions -------------------------------------------------------------------------

async fn deletion(api: Arc<Api>, p: Principal, req: NewDeletion) -> ApiResult<Response> {
    let (job, _new) = on_control(&api, move |c| c.request_deletion(&p, req)).await?;
    Ok(accepted(job))
}

/// Requests the deletion of the caller's workspace (owner), one of its devices, or one
/// recipient's data. Idempotent: asking again while a job is pending returns it.
#[utoipa::path(post, path = "/v1/deletions", tag = "deletions", security(("api_key" = [])),
    request_body = NewDeletion,
    responses((status = 202, body = DeletionJob), (status = "4XX", body = super::ErrorBody)))]
async fn create_deletion(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    JsonBody(req): JsonBody<NewDeletion>,
) -> ApiResult<Response> {
    deletion(api, p, req).await
}

/// Deletion jobs of the caller's workspace.
#[utoipa::path(get, path = "/v1/deletions", tag = "deletions", security(("api_key" = [])),
    responses((status = 200, body = [DeletionJob]), (status = "4XX", body = super::ErrorBody)))]
async fn list_deletions(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
) -> ApiResult<axum::Json<Vec<DeletionJob>>> {
    Ok(axum::Json(api.control.list_deletions(&p)?))
}

/// One deletion job.
#[utoipa::path(get, path = "/v1/deletions/{id}", tag = "deletions", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DeletionJob), (status = "4XX", body = super::ErrorBody)))]
async fn get_deletion(
    State(api): State<Arc<Api>>,
    Caller(p): Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<axum::Json<DeletionJob>> {
    Ok(axum::Json(api.control.deletion(&p, &id)?))
}

/// The handlers' OpenAPI paths (used by [`super::openapi`]).
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(
    healthz,
    readyz,
    list_workspaces,
    create_workspace,
    get_workspace_admin,
    update_workspace_admin,
    delete_workspace_admin,
    create_key_admin,
    get_deletion_admin,
    get_workspace,
    get_retention,
    put_retention,
    list_keys,
    create_key,
    get_key,
    revoke_key,
    update_key,
    rotate_key,
    list_devices,
    create_device,
    get_device,
    delete_device,
    link_device,
    unlink_device,
    disable_device,
    enable_device,
    send_message,
    find_message,
    send_batch,
    get_message,
    list_dead_letters,
    get_dead_letter,
    purge_dead_letter,
    replay_dead_letter,
    create_deletion,
    list_deletions,
    get_deletion,
    super::webhooks::create_webhook,
    super::webhooks::list_webhooks,
    super::webhooks::get_webhook,
    super::webhooks::update_webhook,
    super::webhooks::delete_webhook,
    super::webhooks::rotate_webhook_secret,
    super::webhooks::list_dead,
    super::webhooks::replay_dead,
    super::events_ws::stream,
    super::automations::create_rule,
    super::automations::list_rules,
    super::automations::get_rule,
    super::automations::update_rule,
    super::automations::delete_rule,
    super::automations::get_tags
))]
pub struct Paths;
