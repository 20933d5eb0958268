//! The HTTP+SSE transport of protocol revision 2024-11-05, for clients that predate Streamable
//! HTTP: `GET /sse` opens an event stream whose first event (`endpoint`) names the URL to POST
//! JSON-RPC messages to; replies and notifications come back as `message` events.
//!
//! rmcp no longer ships this server transport, so each session here is a pair of channels fed
//! to rmcp as a `(Sink, Stream)` transport: the JSON-RPC handling is rmcp's, as on `/mcp`.
//! Closing the event stream ends the session and cancels its running tool calls.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use rmcp::ServerHandler;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, PollSender};

use super::metrics::Frontend;

/// The open sessions, by id.
pub type Sessions = Arc<Mutex<HashMap<String, mpsc::Sender<ClientJsonRpcMessage>>>>;

/// How many sessions are open.
pub fn count(sessions: &Sessions) -> usize {
    lock(sessions).len()
}

struct Legacy<H> {
    sessions: Sessions,
    make_handler: Arc<dyn Fn() -> H + Send + Sync>,
    shutdown: CancellationToken,
}

pub fn routes<H: ServerHandler>(
    make_handler: Arc<dyn Fn() -> H + Send + Sync>,
    sessions: Sessions,
    shutdown: CancellationToken,
) -> Router {
    let state = Arc::new(Legacy {
        sessions,
        make_handler,
        shutdown,
    });
    Router::new()
        .route("/sse", get(open::<H>))
        .route("/sse/messages", post(message::<H>))
        .with_state(state)
}

/// Opens a session. Its id goes out twice: in the `endpoint` event, for the client, and in an
/// `Mcp-Session-Id` response header, for a load balancer, which cannot read a streamed body
/// but can pin the session's later `POST /sse/messages?sessionId=` to this replica.
async fn open<H: ServerHandler>(
    State(state): State<Arc<Legacy<H>>>,
) -> (
    [(&'static str, String); 1],
    Sse<impl Stream<Item = Result<Event, Infallible>>>,
) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (to_server, from_client) = mpsc::channel(64);
    let (to_client, outgoing) = mpsc::channel::<ServerJsonRpcMessage>(64);
    lock(&state.sessions).insert(id.clone(), to_server);
    let session = state.shutdown.child_token();

    let handler = (state.make_handler)();
    let transport = (PollSender::new(to_client), ReceiverStream::new(from_client));
    let (sessions, ct, session_id) = (state.sessions.clone(), session.clone(), id.clone());
    tokio::spawn(async move {
        match rmcp::service::serve_server_with_ct(handler, transport, ct).await {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(e) => tracing::debug!(session = %session_id, "legacy SSE session ended: {e}"),
        }
        lock(&sessions).remove(&session_id);
    });
    tracing::debug!(session = %id, "legacy SSE session opened");

    // Dropping the response body (the client left) cancels the session and its tool calls.
    let closed = session.drop_guard();
    let endpoint = Event::default()
        .event("endpoint")
        .data(format!("/sse/messages?sessionId={id}"));
    let messages = ReceiverStream::new(outgoing).filter_map(move |message| {
        let _session = &closed;
        let event = match serde_json::to_string(&message) {
            Ok(json) => Some(Ok(Event::default().event("message").data(json))),
            Err(e) => {
                tracing::error!("cannot serialize an outgoing message: {e}");
                None
            }
        };
        futures::future::ready(event)
    });
    let events = Sse::new(futures::stream::once(async { Ok(endpoint) }).chain(messages))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
    ([("mcp-session-id", id)], events)
}

async fn message<H: ServerHandler>(
    State(state): State<Arc<Legacy<H>>>,
    Query(query): Query<HashMap<String, String>>,
    parts: Parts,
    body: Bytes,
) -> Response {
    let Some(id) = query.get("sessionId") else {
        return (
            StatusCode::BAD_REQUEST,
            "missing ?sessionId=; use the URL from the `endpoint` event of GET /sse",
        )
            .into_response();
    };
    let Some(session) = lock(&state.sessions).get(id).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            format!("unknown session `{id}`; open a new one with GET /sse"),
        )
            .into_response();
    };
    let mut message: ClientJsonRpcMessage = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the body is not a JSON-RPC message: {e}"),
            )
                .into_response();
        }
    };
    message.insert_extension(parts);
    message.insert_extension(Frontend::Sse);
    match session.send(message).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => (StatusCode::GONE, format!("session `{id}` has ended")).into_response(),
    }
}

fn lock(
    sessions: &Sessions,
) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<ClientJsonRpcMessage>>> {
    sessions.lock().unwrap_or_else(|e| e.into_inner())
}
