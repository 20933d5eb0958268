//! Refusals made in front of every route (access, body size), worded once and shaped for the
//! front end the path belongs to, so that each client shows the reason rather than a bare status:
//! OpenAI's `{"error": {…}}` under `/v1` (the `openai` SDK prints its message), a JSON-RPC error
//! at `/mcp` and `/sse` (the MCP SDKs surface a JSON-RPC error body at any status), plain text
//! elsewhere (`/metrics`, `/health`).

use super::jsonrpc;
use super::openai::ApiError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// `status` with `message`, in the shape of the front end at `path`.
pub fn refusal(path: &str, status: StatusCode, message: String) -> Response {
    match Frontend::of(path) {
        Frontend::Openai => ApiError::refusal(status, message).into_response(),
        Frontend::Mcp => {
            // -32001: JSON-RPC's range for the server's own errors; the HTTP status says which.
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                -32600
            } else {
                -32001
            };
            let error = jsonrpc::error(None, code, message, None);
            (status, axum::Json(error)).into_response()
        }
        Frontend::Other => (status, message).into_response(),
    }
}

enum Frontend {
    Openai,
    Mcp,
    Other,
}

impl Frontend {
    fn of(path: &str) -> Self {
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if under("/v1") {
            Frontend::Openai
        } else if under("/mcp") || under("/sse") {
            Frontend::Mcp
        } else {
            Frontend::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> (Option<String>, String) {
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        (kind, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn each_front_end_gets_its_own_shape_with_the_same_words() {
        let words = "this server requires a key";
        let (kind, text) = body(refusal(
            "/v1/models",
            StatusCode::UNAUTHORIZED,
            words.into(),
        ))
        .await;
        assert_eq!(kind.as_deref(), Some("application/json"));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(value["error"]["message"], words, "{text}");
        assert_eq!(value["error"]["type"], "authentication_error", "{text}");

        for path in ["/mcp", "/sse", "/sse/messages"] {
            let (kind, text) = body(refusal(path, StatusCode::FORBIDDEN, words.into())).await;
            assert_eq!(kind.as_deref(), Some("application/json"));
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            assert_eq!(value["jsonrpc"], "2.0", "{text}");
            assert_eq!(value["error"]["message"], words, "{text}");
        }

        for path in ["/metrics", "/v1x", "/mcpx"] {
            let (kind, text) = body(refusal(path, StatusCode::FORBIDDEN, words.into())).await;
            assert!(kind.is_some_and(|k| k.starts_with("text/plain")), "{path}");
            assert_eq!(text, words);
        }
    }
}
