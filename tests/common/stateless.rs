//! MCP 2026-07-28 `tools/call` requests as raw HTTP, as a stateless client sends them: no
//! session, the protocol version and capabilities in `_meta`, the routing headers beside the
//! body. The answer is read event by event, so a test can act between tokens.

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};

/// The server-sent events of one response, decoded.
pub struct Events {
    body: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: String,
    peeked: Option<Value>,
}

impl Events {
    /// The next message, left in place for `next` (and `finish`).
    pub async fn peek(&mut self) -> Option<&Value> {
        if self.peeked.is_none() {
            self.peeked = self.next().await;
        }
        self.peeked.as_ref()
    }

    /// The next JSON-RPC message, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Value> {
        if let Some(message) = self.peeked.take() {
            return Some(message);
        }
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                // Events without data (e.g. a stream's priming event) carry no message.
                let data = event.lines().find_map(|l| l.strip_prefix("data:"));
                if let Some(data) = data.map(str::trim).filter(|d| !d.is_empty()) {
                    return Some(serde_json::from_str(data).expect("an event is JSON-RPC"));
                }
                continue;
            }
            let chunk = self.body.next().await?.expect("the stream reads");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// What a call streamed, and its result.
#[derive(Debug)]
pub struct Streamed {
    pub result: Value,
    /// The progress notifications' messages, joined.
    pub streamed: String,
    pub progress: usize,
}

/// POSTs `tools/call` `tool` with `arguments` to `url` (an `/mcp` endpoint), with `headers`
/// added (e.g. `Mcp-Param-Model`).
pub async fn call(
    client: &reqwest::Client,
    url: &str,
    tool: &str,
    arguments: Value,
    headers: &[(&str, &str)],
) -> Events {
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": tool,
        "arguments": arguments,
        "_meta": {"progressToken": "t", "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let mut builder = client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = builder
        .json(&request)
        .send()
        .await
        .expect("the request is sent");
    let status = response.status();
    assert!(status.is_success(), "{status}: {:?}", response.text().await);
    Events {
        body: response
            .bytes_stream()
            .map(|chunk| chunk.map(|b| b.to_vec()))
            .boxed(),
        buffer: String::new(),
        peeked: None,
    }
}

/// Reads `events` to the result.
pub async fn finish(mut events: Events) -> Streamed {
    let (mut streamed, mut progress) = (String::new(), 0);
    while let Some(message) = events.next().await {
        if message["method"] == "notifications/progress" {
            progress += 1;
            streamed.push_str(message["params"]["message"].as_str().unwrap_or_default());
        } else if let Some(result) = message.get("result") {
            return Streamed {
                result: result.clone(),
                streamed,
                progress,
            };
        } else if message.get("error").is_some() {
            panic!("the call failed: {message}");
        }
    }
    panic!("the stream ended before the result");
}

/// A `generate` call to the end.
pub async fn generate(client: &reqwest::Client, url: &str, arguments: Value) -> Streamed {
    finish(call(client, url, "generate", arguments, &[]).await).await
}
