//! The HTTP server: MCP over Streamable HTTP at `/mcp` (both protocol eras), the legacy HTTP+SSE
//! transport at `/sse` + `/sse/messages`, the OpenAI-compatible API at `/v1`, `/metrics` and
//! `/health`, behind one access policy.

mod access;
mod connections;
mod generation;
mod invalid_argument;
mod jsonrpc;
mod malformed;
pub mod mcp;
pub mod metrics;
mod openai;
mod refusal;
mod resume;
mod run;
mod sessions;
mod sse_legacy;
mod state;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use rmcp::ServerHandler;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

use access::AccessPolicy;

pub use connections::serve;
pub use run::{serve_models, shutdown_signal};
pub use state::{ServerState, Shutdown};

/// How the server listens and whom it lets in.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub host: IpAddr,
    pub port: u16,
    /// Host names accepted besides loopback and `host` (`*`: any).
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted besides loopback pages.
    pub allowed_origins: Vec<String>,
    pub api_key: Option<String>,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// A 2025-era session unused for this long is closed; its id then gets 404.
    pub session_idle_timeout: Duration,
    /// Sessions (2025-era and legacy SSE together) open at once; past it new ones get 503.
    pub max_sessions: usize,
    /// At `max_sessions`, the least recently used 2025-era session idle this long with nothing
    /// running is closed to make room for a new one.
    pub session_min_idle: Duration,
    /// How long a 2025-era request whose stream broke keeps running for a `Last-Event-ID`
    /// reconnect before it is cancelled; a finished one stays resumable as long.
    pub resume_window: Duration,
    /// Connections open at once; past it a new one is answered 503 and closed.
    pub max_connections: usize,
    /// A connection that has not sent a whole request header for this long (a slow sender, or
    /// an idle keep-alive connection) is closed.
    pub idle_connection_timeout: Duration,
    /// How long a shutdown waits for running generations before cutting them off.
    pub shutdown_grace: Duration,
    /// Serve `/metrics` without the API key (for scrapers inside a trusted network).
    pub metrics_public: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            api_key: None,
            max_body_bytes: 4 << 20,
            session_idle_timeout: Duration::from_secs(30 * 60),
            max_sessions: 2048,
            session_min_idle: Duration::from_secs(60),
            resume_window: Duration::from_secs(30),
            max_connections: 1024,
            idle_connection_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            metrics_public: false,
        }
    }
}

impl ServerOptions {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

/// What `/health` answers: 200 with `body` when `ready`, else 503.
pub type HealthCheck = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

/// The routes for any MCP handler, and `more` routes, behind the access policy. `wick serve`
/// mounts wick's tools and [`api_routes`]; the conformance fixture server mounts its fixtures on
/// the very same configuration.
pub fn router<H, F>(
    options: &ServerOptions,
    shutdown: &Shutdown,
    make_handler: F,
    health: HealthCheck,
    more: Router,
) -> Router
where
    H: ServerHandler,
    F: Fn() -> H + Send + Sync + 'static,
{
    let make_handler: Arc<dyn Fn() -> H + Send + Sync> = Arc::new(make_handler);
    let mut session_manager = LocalSessionManager::default();
    session_manager.session_config.keep_alive = Some(options.session_idle_timeout);
    // Each request's events are pumped out of rmcp's channel at once into a log of their own
    // (resume.rs), so the channel only needs room for a burst.
    session_manager.session_config.channel_capacity = 64;
    // Host and Origin are checked by the access policy, for every route alike.
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_sse_keep_alive(Some(Duration::from_secs(5)))
        .with_max_request_body_bytes(options.max_body_bytes)
        .with_cancellation_token(shutdown.sessions.clone());
    let factory = make_handler.clone();
    let session_manager = Arc::new(resume::ResumableSessions::new(
        session_manager,
        options.resume_window,
    ));
    let legacy_sessions = sse_legacy::Sessions::default();
    let session_limit = Arc::new(sessions::SessionLimit::new(
        options.max_sessions,
        options.session_min_idle,
        session_manager.clone(),
        legacy_sessions.clone(),
    ));
    let mcp = StreamableHttpService::new(move || Ok(factory()), session_manager.clone(), config);

    let policy = Arc::new(AccessPolicy::new(
        options.host,
        &options.allowed_hosts,
        &options.allowed_origins,
        options.api_key.as_deref(),
        options.metrics_public,
    ));
    let cors_policy = policy.clone();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|o| cors_policy.origin_allowed(o))
        }))
        .allow_methods(tower_http::cors::AllowMethods::mirror_request())
        .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
        .expose_headers([
            HeaderName::from_static("mcp-session-id"),
            HeaderName::from_static("mcp-protocol-version"),
            HeaderName::from_static("www-authenticate"),
        ]);

    Router::new()
        .nest_service("/mcp", mcp)
        .layer(axum::middleware::from_fn(malformed::reject_malformed))
        .layer(axum::middleware::from_fn_with_state(
            session_manager,
            delete_session,
        ))
        .merge(sse_legacy::routes(
            make_handler,
            legacy_sessions,
            shutdown.sessions.clone(),
        ))
        .layer(axum::middleware::from_fn_with_state(
            session_limit,
            sessions::guard,
        ))
        .merge(more)
        .route(
            "/health",
            get(move || {
                let health = health.clone();
                async move {
                    let (ready, body) = health();
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, axum::Json(body)).into_response()
                }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            shutdown.responses.clone(),
            track_posts,
        ))
        .layer(RequestBodyLimitLayer::new(options.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            options.max_body_bytes,
            explain_too_large,
        ))
        .layer(axum::middleware::from_fn_with_state(policy, access::guard))
        .layer(cors)
}

/// The OpenAI-compatible API and `/metrics`: `wick serve`'s routes besides MCP.
pub fn api_routes(state: Arc<ServerState>) -> Router {
    openai::routes(state.clone()).route(
        "/metrics",
        get(move || {
            let state = state.clone();
            async move {
                match state.metrics.encode(&state.manager.loaded()) {
                    Ok(text) => (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                        )],
                        text,
                    )
                        .into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }
        }),
    )
}

/// A session's DELETE. rmcp closes whatever id it is given and answers 202, which the MCP SDKs
/// log as a failed termination (Python: `Session termination failed: 202`): a session that was
/// open gets 204 instead, and one that is not gets rmcp's own 404 for any request naming an
/// ended session, as MCP asks.
async fn delete_session(
    State(sessions): State<Arc<resume::ResumableSessions>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use rmcp::transport::streamable_http_server::SessionManager;
    if request.method() != axum::http::Method::DELETE {
        return next.run(request).await;
    }
    let id = request
        .headers()
        .get("mcp-session-id")
        .and_then(|id| id.to_str().ok());
    if let Some(id) = id
        && !sessions.has_session(&id.into()).await.unwrap_or(true)
    {
        return (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
    }
    let mut response = next.run(request).await;
    if response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::NO_CONTENT;
        *response.body_mut() = axum::body::Body::empty();
    }
    response
}

/// A 413 from the body limit says only "length limit exceeded"; this one names the limit and
/// the flag that raises it.
async fn explain_too_large(
    State(limit): State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    refusal::refusal(
        &path,
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than the {limit} bytes this server accepts; raise the \
             limit with --max-body-bytes"
        ),
    )
}

/// Holds a token of `responses` until a POST's response body has been sent (or dropped).
async fn track_posts(
    State(responses): State<TaskTracker>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    let token = responses.token();
    let (parts, body) = next.run(request).await.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _sending = &token;
        chunk
    });
    axum::response::Response::from_parts(parts, axum::body::Body::from_stream(body))
}
