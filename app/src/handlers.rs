//! Endpoint handlers and the shared state they run against.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
    X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use keyring::Keyring;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::auth::authenticate;
use crate::body::{empty, full, Body, BodyChunks, FileBody, RequestBody};
use crate::cursor::{self, Cursor};
use crate::errors::{json_response, ApiError};
use crate::metrics::Metrics;
use crate::routes::Route;
use crate::store::{DocMeta, PutError, Store};
use crate::users::Users;
use crate::validate::{
    content_disposition, is_valid_document_name, parse_limit, query_param, sanitize_content_type,
};

const MAX_LOGIN_BODY: usize = 64 * 1024;
/// An upload that sends nothing for this long is abandoned (slow-body protection).
const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AppState {
    pub users: Arc<Users>,
    pub keyring: Keyring,
    pub store: Store,
    pub metrics: Metrics,
    pub token_ttl: Duration,
    pub max_upload_bytes: u64,
    /// Caps concurrent argon2 runs: each needs ~19 MiB and a core, and the blocking
    /// pool alone would allow hundreds.
    pub hash_permits: Semaphore,
}

impl AppState {
    pub fn new(
        users: Users,
        keyring: Keyring,
        store: Store,
        token_ttl: Duration,
        max_upload_bytes: u64,
    ) -> AppState {
        let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get());
        AppState {
            users: Arc::new(users),
            keyring,
            store,
            metrics: Metrics::new(),
            token_ttl,
            max_upload_bytes,
            hash_permits: Semaphore::new(parallelism.max(2)),
        }
    }
}

pub async fn dispatch<B: RequestBody>(
    state: &AppState,
    route: Route,
    req: Request<B>,
    user: &mut Option<String>,
) -> Result<Response<Body>, ApiError> {
    match route {
        Route::Healthz => Ok(json_response(StatusCode::OK, &Status { status: "ok" })),
        Route::Readyz => readyz(state).await,
        Route::Metrics => Ok(metrics(state)),
        Route::Token => login(state, req).await,
        Route::ListDocuments => {
            let user_id = user.insert(authenticate(&state.keyring, req.headers())?);
            list(state, user_id, req.uri().query())
        }
        Route::UploadDocument => {
            let user_id = user
                .insert(authenticate(&state.keyring, req.headers())?)
                .clone();
            upload(state, &user_id, req).await
        }
        Route::GetDocument(id) => {
            let user_id = user.insert(authenticate(&state.keyring, req.headers())?);
            download(state, user_id, &id).await
        }
        Route::DeleteDocument(id) => {
            let user_id = user.insert(authenticate(&state.keyring, req.headers())?);
            delete(state, user_id, &id).await
        }
    }
}

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

async fn readyz(state: &AppState) -> Result<Response<Body>, ApiError> {
    match state.store.probe_writable().await {
        Ok(()) => Ok(json_response(StatusCode::OK, &Status { status: "ready" })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness probe failed: data_dir not writable");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "storage is not writable",
            ))
        }
    }
}

fn metrics(state: &AppState) -> Response<Body> {
    let (count, bytes) = state.store.totals();
    let mut resp = Response::new(full(state.metrics.render(count, bytes)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[derive(Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

async fn login<B: RequestBody>(
    state: &AppState,
    req: Request<B>,
) -> Result<Response<Body>, ApiError> {
    if content_length(req.headers()).is_some_and(|n| n > MAX_LOGIN_BODY as u64) {
        return Err(ApiError::payload_too_large());
    }
    let bytes = match Limited::new(req.into_body(), MAX_LOGIN_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::payload_too_large())
        }
        Err(_) => {
            return Err(ApiError::bad_request(
                "bad_body",
                "could not read request body",
            ))
        }
    };
    let creds: LoginRequest = serde_json::from_slice(&bytes).map_err(|_| {
        ApiError::bad_request(
            "invalid_json",
            "body must be JSON with string fields username and password",
        )
    })?;
    let _permit = state
        .hash_permits
        .acquire()
        .await
        .map_err(|e| ApiError::internal("hash semaphore closed", e))?;
    let users = state.users.clone();
    let user_id =
        tokio::task::spawn_blocking(move || users.authenticate(&creds.username, &creds.password))
            .await
            .map_err(|e| ApiError::internal("password check task failed", e))?;
    let Some(user_id) = user_id else {
        tracing::info!("login failed");
        // One response for unknown user and wrong password.
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid username or password",
        ));
    };
    let token = state
        .keyring
        .sign(&user_id, state.token_ttl, SystemTime::now());
    tracing::info!(user_id = %user_id, "login succeeded");
    let mut resp = json_response(
        StatusCode::OK,
        &TokenResponse {
            access_token: token,
            token_type: "Bearer",
            expires_in: state.token_ttl.as_secs(),
        },
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[derive(Serialize)]
struct DocumentView<'a> {
    id: &'a str,
    name: &'a str,
    size: u64,
    content_type: &'a str,
    created_at: String,
}

impl<'a> From<&'a DocMeta> for DocumentView<'a> {
    fn from(m: &'a DocMeta) -> Self {
        DocumentView {
            id: &m.id,
            name: &m.name,
            size: m.size,
            content_type: &m.content_type,
            created_at: humantime::format_rfc3339_millis(m.created_at()).to_string(),
        }
    }
}

#[derive(Serialize)]
struct ListResponse<'a> {
    documents: Vec<DocumentView<'a>>,
    next_cursor: Option<String>,
}

fn list(state: &AppState, user_id: &str, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let bad_limit =
        || ApiError::bad_request("invalid_limit", "limit must be an integer from 1 to 1000");
    let bad_cursor = || ApiError::bad_request("invalid_cursor", "cursor is not valid");
    let limit = query_param(query, "limit").map_err(|_| bad_limit())?;
    let limit = parse_limit(limit.as_deref()).ok_or_else(bad_limit)?;
    let after = match query_param(query, "cursor").map_err(|_| bad_cursor())? {
        Some(raw) => Some(cursor::decode(&raw).ok_or_else(bad_cursor)?),
        None => None,
    };
    let (page, more) = state.store.list(user_id, after.as_ref(), limit);
    let next_cursor = if more {
        page.last().map(|m| {
            cursor::encode(&Cursor {
                created_ns: m.created_ns,
                id: m.id.clone(),
            })
        })
    } else {
        None
    };
    Ok(json_response(
        StatusCode::OK,
        &ListResponse {
            documents: page.iter().map(DocumentView::from).collect(),
            next_cursor,
        },
    ))
}

async fn upload<B: RequestBody>(
    state: &AppState,
    user_id: &str,
    req: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let bad_name = || {
        ApiError::bad_request(
            "invalid_name",
            "query parameter name is required: 1 to 255 bytes, no control characters",
        )
    };
    let name = query_param(req.uri().query(), "name")
        .map_err(|_| bad_name())?
        .filter(|n| is_valid_document_name(n))
        .ok_or_else(bad_name)?;
    // Refuse before reading a byte when the client announces too much.
    if content_length(req.headers()).is_some_and(|n| n > state.max_upload_bytes) {
        return Err(ApiError::payload_too_large());
    }
    let content_type = sanitize_content_type(req.headers().get(CONTENT_TYPE));
    let result = state
        .store
        .put(
            user_id,
            name,
            content_type,
            BodyChunks(req.into_body()),
            state.max_upload_bytes,
            UPLOAD_IDLE_TIMEOUT,
        )
        .await;
    let meta = match result {
        Ok(meta) => meta,
        Err(PutError::TooLarge) => return Err(ApiError::payload_too_large()),
        Err(PutError::Timeout) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "request body stalled",
            ))
        }
        Err(PutError::Body(e)) => {
            tracing::info!(error = %e, "upload body aborted");
            return Err(ApiError::bad_request(
                "bad_body",
                "could not read request body",
            ));
        }
        Err(PutError::Io(e)) => return Err(ApiError::internal("storing upload failed", e)),
    };
    tracing::info!(document_id = %meta.id, size = meta.size, "document stored");
    let mut resp = json_response(StatusCode::CREATED, &DocumentView::from(&meta));
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/documents/{}", meta.id)) {
        resp.headers_mut().insert(LOCATION, location);
    }
    Ok(resp)
}

async fn download(state: &AppState, user_id: &str, id: &str) -> Result<Response<Body>, ApiError> {
    let (meta, file) = state
        .store
        .open_data(user_id, id)
        .await
        .map_err(|e| ApiError::internal("opening document failed", e))?
        .ok_or_else(ApiError::not_found)?;
    // Streamed from disk in 64 KiB chunks (FileBody), never read whole into memory.
    let mut resp = Response::new(FileBody::new(file, meta.size).boxed());
    let headers = resp.headers_mut();
    let content_type = HeaderValue::from_str(&meta.content_type).unwrap_or(
        HeaderValue::from_static(crate::validate::DEFAULT_CONTENT_TYPE),
    );
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(meta.size));
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&meta.name)) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(resp)
}

async fn delete(state: &AppState, user_id: &str, id: &str) -> Result<Response<Body>, ApiError> {
    match state.store.delete(user_id, id).await {
        Ok(true) => {
            tracing::info!(document_id = %id, "document deleted");
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            Ok(resp)
        }
        Ok(false) => Err(ApiError::not_found()),
        Err(e) => Err(ApiError::internal("deleting document failed", e)),
    }
}
