//! `--max-sessions`: how many sessions (2025-era at `/mcp` and legacy SSE at `/sse` together) may
//! live at once. Each holds memory until it is deleted or idles out, and any client can open
//! one with a small request. At the limit, the least recently used 2025-era session that has
//! been idle for `--session-min-idle` with no request running is closed to make room (its client
//! gets 404 on its next request and must start a new session); with none such, the new session
//! is refused — HTTP 503 with `Retry-After` — while the sessions already open keep working. So
//! a flood of idle sessions locks new clients out for `--session-min-idle`, not for the idle
//! timeout.
//!
//! Opening a session is admitted one at a time (check, then create), so the limit holds exactly
//! under concurrent `initialize`s.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::jsonrpc;
use super::malformed;
use super::resume::ResumableSessions;
use super::sse_legacy;

/// The sessions open now, and how many may be.
pub struct SessionLimit {
    max: usize,
    min_idle: Duration,
    mcp: Arc<ResumableSessions>,
    legacy: sse_legacy::Sessions,
    /// Held from the check until the new session exists.
    admission: tokio::sync::Mutex<()>,
}

/// How long a refused client is asked to wait: sessions end as clients delete them or idle out.
const RETRY_AFTER_SECS: &str = "10";

impl SessionLimit {
    pub fn new(
        max: usize,
        min_idle: Duration,
        mcp: Arc<ResumableSessions>,
        legacy: sse_legacy::Sessions,
    ) -> Self {
        Self {
            max,
            min_idle,
            mcp,
            legacy,
            admission: tokio::sync::Mutex::new(()),
        }
    }

    /// `None` while there is room for another session (made, if need be, by closing the idlest
    /// one), else why not. Call it holding `admission`.
    async fn full(&self) -> Option<String> {
        let open = || async { self.mcp.open().await + sse_legacy::count(&self.legacy) };
        if open().await >= self.max {
            self.mcp.close_idlest(self.min_idle).await;
        }
        (open().await >= self.max).then(|| {
            format!(
                "this server already holds its limit of {} sessions (--max-sessions); retry \
                 later, close sessions you no longer use (DELETE), or call statelessly with \
                 protocol revision 2026-07-28",
                self.max
            )
        })
    }

    /// The refusal of a new session, as plain text (legacy SSE) or as a JSON-RPC error answering
    /// `id` (Streamable HTTP).
    pub fn refusal(message: String, id: Option<&Value>) -> Response {
        tracing::warn!("refused a new session: {message}");
        let mut response = match id {
            Some(id) => (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(jsonrpc::error(
                    Some(id),
                    -32000,
                    message,
                    Some(json!({ "reason": "max_sessions" })),
                )),
            )
                .into_response(),
            None => (StatusCode::SERVICE_UNAVAILABLE, message).into_response(),
        };
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
        response
    }
}

/// In front of `/mcp` and `/sse`: what would open a session past the limit is refused — an
/// `initialize` without a session, or `GET /sse`. Requests of open sessions (`Mcp-Session-Id`)
/// and stateless ones (`Mcp-Method`) pass unread.
pub async fn guard(
    State(limit): State<Arc<SessionLimit>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let opens_sse = request.method() == Method::GET && request.uri().path() == "/sse";
    let may_initialize = request.method() == Method::POST
        && request.uri().path() == "/mcp"
        && !headers.contains_key("mcp-session-id")
        && !headers.contains_key("mcp-method");
    if !opens_sse && !may_initialize {
        return next.run(request).await;
    }
    let (request, id) = if opens_sse {
        (request, None)
    } else {
        let (parts, body) = request.into_parts();
        let bytes = match malformed::buffered(body).await {
            Ok(bytes) => bytes,
            Err(refusal) => return refusal,
        };
        let initialize = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(|body| body["method"] == "initialize");
        let request = Request::from_parts(parts, Body::from(bytes));
        match initialize {
            Some(body) => (request, Some(body["id"].clone())),
            None => return next.run(request).await,
        }
    };
    // One opening at a time, until its session exists (rmcp creates it before it answers).
    let _admitting = limit.admission.lock().await;
    match limit.full().await {
        None => next.run(request).await,
        Some(message) => SessionLimit::refusal(message, id.as_ref()),
    }
}
