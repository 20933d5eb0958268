//! Clear answers to bodies that are not one JSON-RPC message. The Streamable HTTP transport asks
//! for HTTP 400 with a JSON-RPC error (no id) when the server cannot accept the input; rmcp
//! would answer 415 in plain text, even for a JSON object that is not a JSON-RPC message, which
//! sends users looking at their Content-Type instead of their JSON. A `tools/call` whose params
//! do not parse gets -32602 saying why, where rmcp would call it an unknown method (-32601).

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{CallToolRequestParams, ClientJsonRpcMessage};
use serde::Deserialize;
use serde_json::Value;

use super::jsonrpc;

/// The whole body, for a layer that must read it before passing the request on; the body limit
/// layer in front has already bounded its size, so a failure is a body past that limit.
pub async fn buffered(body: Body) -> Result<axum::body::Bytes, Response> {
    to_bytes(body, usize::MAX)
        .await
        .map_err(|e| (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response())
}

pub async fn reject_malformed(request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match buffered(body).await {
        Ok(bytes) => bytes,
        Err(refusal) => return refusal,
    };
    let refusal = match serde_json::from_slice::<Value>(&bytes) {
        Err(e) => Some(invalid(
            -32700,
            format!("Parse error: the body is not valid JSON ({e})"),
        )),
        Ok(Value::Array(_)) => Some(invalid(
            -32600,
            "JSON-RPC batches are not supported: MCP removed them in protocol revision \
             2025-06-18; send one message per request"
                .to_string(),
        )),
        Ok(message @ Value::Object(_)) => match ClientJsonRpcMessage::deserialize(&message) {
            Err(e) => Some(invalid(
                -32600,
                format!(
                    "Invalid Request: the body is not a JSON-RPC 2.0 message ({e}); a request \
                     has \"jsonrpc\": \"2.0\", an \"id\" (string or number), a \"method\" and \
                     optional \"params\" (an object)"
                ),
            )),
            Ok(_) => tool_call_params(&message),
        },
        Ok(_) => Some(invalid(
            -32600,
            "the body must be one JSON-RPC message (a JSON object)".to_string(),
        )),
    };
    match refusal {
        Some(refusal) => refusal,
        None => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

/// HTTP 400 with a JSON-RPC error and no id: the body never got as far as a request rmcp could
/// answer.
fn invalid(code: i32, message: String) -> Response {
    let error = jsonrpc::error(None, code, message, None);
    (StatusCode::BAD_REQUEST, axum::Json(error)).into_response()
}

/// The in-band answer (HTTP 200, as rmcp gives -32602) to a `tools/call` request whose params
/// are missing or lack what a call needs; `None` for anything else.
fn tool_call_params(message: &Value) -> Option<Response> {
    if message["method"] != "tools/call" {
        return None;
    }
    let id = message.get("id")?;
    let problem = match message.get("params").filter(|p| !p.is_null()) {
        None => "no params".to_string(),
        Some(params) => CallToolRequestParams::deserialize(params)
            .err()?
            .to_string(),
    };
    let message = format!(
        "Invalid params for tools/call ({problem}): it needs \"params\": {{\"name\": a tool, \
         \"arguments\": an object}}"
    );
    let error = jsonrpc::error(Some(id), -32602, message, None);
    Some(axum::Json(error).into_response())
}
