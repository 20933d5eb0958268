//! The MCP server on loopback, driven by rmcp's own client in both protocol eras, with the real
//! model behind it.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server::TestServer;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientConfig, ClientRequest, Implementation,
    ProgressNotificationParam, ProgressToken, ProtocolVersion, Request,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, ServiceExt};
use serde_json::{Value, json};
use wick::LoadOptions;
use wick::server::ServerOptions;
use wick::server::mcp::GenerationResult;

/// Records every progress notification, per progress token.
#[derive(Clone)]
struct Recorder {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    info: ClientConfig,
}

impl Recorder {
    fn new() -> Self {
        let mut info = ClientConfig::default().with_protocol_version(ProtocolVersion::V_2025_11_25);
        info.client_info = Implementation::new("wick-tests", "0");
        Self {
            progress: Arc::default(),
            info,
        }
    }

    fn for_token(&self, token: &ProgressToken) -> Vec<ProgressNotificationParam> {
        let all = self.progress.lock().unwrap();
        all.iter()
            .filter(|p| &p.progress_token == token)
            .cloned()
            .collect()
    }

    fn by_token(&self) -> BTreeMap<String, Vec<ProgressNotificationParam>> {
        let mut map = BTreeMap::<String, Vec<_>>::new();
        for p in self.progress.lock().unwrap().iter() {
            map.entry(format!("{:?}", p.progress_token))
                .or_default()
                .push(p.clone());
        }
        map
    }

    async fn wait_for(&self, token: &ProgressToken, count: usize) {
        for _ in 0..6000 {
            if self.for_token(token).len() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no {count} progress notifications for {token:?}");
    }
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }

    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
}

#[derive(Clone, Copy, Debug)]
enum Era {
    /// 2025-11-25: initialize handshake and a session.
    Sessions,
    /// 2026-07-28: server/discover and self-contained stateless requests.
    Stateless,
}

type Client = RunningService<RoleClient, Recorder>;

async fn connect(server: &TestServer, era: Era) -> (Client, Recorder) {
    let recorder = Recorder::new();
    let transport = StreamableHttpClientTransport::from_uri(server.mcp());
    let client = match era {
        Era::Sessions => recorder.clone().serve(transport).await,
        Era::Stateless => {
            recorder
                .clone()
                .serve_with_lifecycle(
                    transport,
                    ClientLifecycleMode::Discover {
                        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                    },
                )
                .await
        }
    }
    .expect("the client connects");
    (client, recorder)
}

fn call(tool: &str, arguments: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool.to_string())
        .with_arguments(arguments.as_object().expect("object").clone())
}

fn structured(result: &CallToolResult) -> GenerationResult {
    serde_json::from_value(
        result
            .structured_content
            .clone()
            .expect("structured content"),
    )
    .unwrap()
}

fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

async fn server() -> TestServer {
    TestServer::start(ServerOptions::default(), LoadOptions::default()).await
}

/// The stream of one call: progress strictly increasing, and the messages adding up to exactly
/// the final text.
fn assert_stream_matches(
    progress: &[ProgressNotificationParam],
    result: &CallToolResult,
    max_tokens: f64,
) {
    assert!(
        progress.len() >= 10,
        "only {} notifications",
        progress.len()
    );
    assert!(
        progress.windows(2).all(|w| w[1].progress > w[0].progress),
        "progress must increase"
    );
    assert!(progress.iter().all(|p| p.total == Some(max_tokens)));
    let streamed: String = progress.iter().filter_map(|p| p.message.clone()).collect();
    assert_eq!(streamed, text(result));
    assert_eq!(streamed, structured(result).text);
}

async fn tools_list(era: Era) {
    let server = server().await;
    let (client, _) = connect(&server, era).await;
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for name in ["generate", "chat", "list_models"] {
        let tool = tools.iter().find(|t| t.name == name).unwrap();
        assert!(
            tool.description.as_ref().is_some_and(|d| !d.is_empty()),
            "{name}"
        );
        assert!(
            tool.output_schema.is_some(),
            "{name} declares its structured output"
        );
    }
    let generate = tools.iter().find(|t| t.name == "generate").unwrap();
    let properties = generate.input_schema["properties"].as_object().unwrap();
    for argument in [
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "model",
    ] {
        assert!(properties.contains_key(argument), "{argument}");
    }
    let output = generate.output_schema.as_ref().expect("an output schema");
    for field in ["prompt_tokens", "cached_tokens", "completion_tokens"] {
        assert!(output["properties"][field].is_object(), "{field}");
        let required = output["required"].as_array();
        assert!(
            required.is_some_and(|r| r.contains(&json!(field))),
            "{field}"
        );
    }
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn tools_list_with_sessions() {
    tools_list(Era::Sessions).await;
}

#[tokio::test]
async fn tools_list_stateless() {
    tools_list(Era::Stateless).await;
}

async fn generate_streams_every_token(era: Era) {
    let server = server().await;
    let (client, recorder) = connect(&server, era).await;
    let arguments =
        json!({"prompt": "The capital of France is", "max_tokens": 32, "temperature": 0});
    let result = client.call_tool(call("generate", arguments)).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let progress = recorder.by_token();
    assert_eq!(progress.len(), 1, "one progress token per call");
    let progress = progress.into_values().next().unwrap();
    assert_stream_matches(&progress, &result, 32.0);
    let summary = structured(&result);
    assert!(summary.text.contains("Paris"), "{}", summary.text);
    assert_eq!(summary.completion_tokens, 32);
    assert_eq!(summary.prompt_tokens, 5);
    // The prompt tokens the prefix cache served are counted, in the content as the schema says.
    let content = result
        .structured_content
        .as_ref()
        .expect("structured content");
    assert!(
        content["cached_tokens"].as_u64().is_some_and(|c| c <= 5),
        "{content}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn generate_streams_every_token_with_sessions() {
    generate_streams_every_token(Era::Sessions).await;
}

#[tokio::test]
async fn generate_streams_every_token_stateless() {
    generate_streams_every_token(Era::Stateless).await;
}

async fn chat_streams_every_token(era: Era) {
    let server = server().await;
    let (client, recorder) = connect(&server, era).await;
    let arguments = json!({
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
        ],
        "max_tokens": 120,
        "temperature": 0
    });
    let result = client.call_tool(call("chat", arguments)).await.unwrap();
    let progress = recorder.by_token().into_values().next().unwrap();
    assert_stream_matches(&progress, &result, 120.0);
    assert_eq!(
        structured(&result).finish_reason,
        wick::FinishReason::Stop,
        "ends at the end of the turn"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn chat_streams_every_token_with_sessions() {
    chat_streams_every_token(Era::Sessions).await;
}

#[tokio::test]
async fn chat_streams_every_token_stateless() {
    chat_streams_every_token(Era::Stateless).await;
}

/// After cancelling a long generation mid-stream, the engine has stopped it and serves the
/// next request from a free slot.
async fn assert_cancelled_and_free(server: &TestServer, client: &Client, max_tokens: u64) {
    let engine = server.engine().await;
    for _ in 0..3000 {
        if engine.stats().cancelled == 1 && engine.stats().active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = engine.stats();
    assert_eq!((stats.cancelled, stats.active), (1, 0), "{stats:?}");
    assert!(
        stats.tokens < max_tokens / 2,
        "generation went on: {stats:?}"
    );
    let next = json!({"prompt": "Hello", "max_tokens": 4, "temperature": 0});
    let result = client.call_tool(call("generate", next)).await.unwrap();
    assert_eq!(
        structured(&result).finish_reason,
        wick::FinishReason::Length
    );
}

const ENDLESS: &str = "1, 2, 3, 4, 5, 6, 7,";

#[tokio::test]
async fn notifications_cancelled_stops_generation_with_sessions() {
    let server = TestServer::start(
        ServerOptions::default(),
        LoadOptions {
            max_active: 1,
            ..LoadOptions::default()
        },
    )
    .await;
    let (client, recorder) = connect(&server, Era::Sessions).await;
    let arguments = json!({"prompt": ENDLESS, "max_tokens": 1000, "temperature": 0});
    let handle = client
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(call("generate", arguments))),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    recorder.wait_for(&handle.progress_token, 5).await;
    handle.cancel(Some("enough".into())).await.unwrap();
    assert_cancelled_and_free(&server, &client, 1000).await;
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn closing_the_stream_stops_generation_stateless() {
    let server = TestServer::start(
        ServerOptions::default(),
        LoadOptions {
            max_active: 1,
            ..LoadOptions::default()
        },
    )
    .await;
    let (client, recorder) = connect(&server, Era::Stateless).await;
    let arguments = json!({"prompt": ENDLESS, "max_tokens": 1000, "temperature": 0});
    let wait = async {
        for _ in 0..6000 {
            if recorder.progress.lock().unwrap().len() >= 5 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    // Dropping the call closes its response stream: the 2026-07-28 cancellation signal.
    tokio::select! {
        _ = client.call_tool(call("generate", arguments)) => panic!("the generation ran to the end"),
        _ = wait => {}
    }
    assert_cancelled_and_free(&server, &client, 1000).await;
    client.cancel().await.unwrap();
}

/// `n` calls at once give the texts they give alone, each streamed on its own progress token.
async fn concurrent_calls(era: Era, n: usize) {
    let server = server().await;
    let (client, recorder) = connect(&server, era).await;
    let prompts = &common::PROMPTS[..n];
    let args = |p: &str| json!({"prompt": p, "max_tokens": 24, "temperature": 0});
    let mut alone = Vec::new();
    for p in prompts {
        alone.push(text(
            &client.call_tool(call("generate", args(p))).await.unwrap(),
        ));
    }
    recorder.progress.lock().unwrap().clear();
    let calls = prompts
        .iter()
        .map(|p| client.call_tool(call("generate", args(p))));
    let results = futures::future::join_all(calls).await;
    let streams = recorder.by_token();
    assert_eq!(streams.len(), n, "one progress stream per call");
    for (result, expected) in results.iter().zip(&alone) {
        let result = result.as_ref().unwrap();
        assert_eq!(&text(result), expected, "same text as alone");
        let stream = streams
            .values()
            .find(|s| {
                s.iter()
                    .filter_map(|p| p.message.clone())
                    .collect::<String>()
                    == *expected
            })
            .expect("a progress stream that adds up to this result");
        assert_stream_matches(stream, result, 24.0);
    }
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn four_concurrent_streaming_calls_with_sessions() {
    concurrent_calls(Era::Sessions, 4).await;
}

#[tokio::test]
async fn sixteen_concurrent_streaming_calls_stateless() {
    concurrent_calls(Era::Stateless, 16).await;
}

#[tokio::test]
async fn an_expired_session_gets_404_and_the_client_initializes_again() {
    let options = ServerOptions {
        session_idle_timeout: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let server = TestServer::start(options, LoadOptions::default()).await;
    let http = reqwest::Client::new();

    // A raw session: its id is answered with 404 once it has expired.
    let init = initialize_request(0);
    let response = post(&http, &server, &init, &[]).await;
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(ping_in_session(&http, &server, &session).await, 200);
    // Idle for longer than the timeout (any request would count as activity).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = ping_in_session(&http, &server, &session).await;
    assert_eq!(status, 404, "the session should have expired");
    // So is a DELETE of it: there is nothing to end.
    assert_eq!(delete(&http, &server, &session).await.status(), 404);
    // An open session's DELETE ends it with 204.
    let response = post(&http, &server, &init, &[]).await;
    let open = response.headers()["mcp-session-id"].to_str().unwrap();
    assert_eq!(delete(&http, &server, open).await.status(), 204);

    // rmcp's client meets the same 404 and initializes a new session by itself.
    let (client, _) = connect(&server, Era::Sessions).await;
    client.list_all_tools().await.unwrap();
    let before = server.handlers.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tools = client
        .list_all_tools()
        .await
        .expect("the client recovers from the expired session");
    assert_eq!(tools.len(), 3);
    assert!(
        server.handlers.load(std::sync::atomic::Ordering::SeqCst) > before,
        "a new session was made"
    );
    client.cancel().await.unwrap();
}

/// DELETE of a 2025-era session.
async fn delete(http: &reqwest::Client, server: &TestServer, session: &str) -> reqwest::Response {
    http.delete(server.mcp())
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap()
}

async fn post(
    http: &reqwest::Client,
    server: &TestServer,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = http
        .post(server.mcp())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// A 2025-11-25 `initialize` request with `id`: what opens a raw session.
fn initialize_request(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
}

/// A `ping` inside the 2025-era session `session`: the HTTP status it gets.
async fn ping_in_session(
    http: &reqwest::Client,
    server: &TestServer,
    session: &str,
) -> reqwest::StatusCode {
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let headers = [
        ("mcp-session-id", session),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    post(http, server, &ping, &headers).await.status()
}

/// The JSON-RPC messages of an SSE (or plain JSON) response.
async fn messages(response: reqwest::Response) -> Vec<Value> {
    let body = response.text().await.unwrap();
    if let Ok(json) = serde_json::from_str::<Value>(&body) {
        return vec![json];
    }
    body.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str(data.trim()).ok())
        .collect()
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let options = ServerOptions {
        api_key: Some("s3cret".into()),
        ..ServerOptions::default()
    };
    let server = TestServer::start(options, LoadOptions::default()).await;
    let http = reqwest::Client::new();
    let auth = ("authorization", "Bearer s3cret");
    let init = initialize_request(0);

    // No token, a wrong token: 401 with a Bearer challenge.
    for headers in [vec![], vec![("authorization", "Bearer wrong")]] {
        let response = post(&http, &server, &init, &headers).await;
        assert_eq!(response.status(), 401);
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        // A JSON-RPC error, which the SDKs show; not plain text, which they cannot.
        let error = &messages(response).await[0];
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("--api-key"), "{error}");
    }
    // A foreign Origin: 403.
    let response = post(
        &http,
        &server,
        &init,
        &[auth, ("origin", "http://evil.example.com")],
    )
    .await;
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("--allowed-origin"));
    // A foreign Host: 403 (DNS rebinding).
    let response = post(&http, &server, &init, &[auth, ("host", "evil.example.com")]).await;
    assert_eq!(response.status(), 403);

    // Malformed JSON and a batch: 400 with a JSON-RPC error.
    let raw = |body: &'static str| {
        http.post(server.mcp())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", "Bearer s3cret")
            .body(body)
            .send()
    };
    let response = raw("{not json").await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(messages(response).await[0]["error"]["code"], -32700);
    let response = raw(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#)
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error = &messages(response).await[0]["error"];
    assert_eq!(error["code"], -32600);
    assert!(error["message"].as_str().unwrap().contains("batch"));
    // A JSON object that is no JSON-RPC message (an object for an id): the same.
    let response = raw(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#)
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error = &messages(response).await[0]["error"];
    assert_eq!(error["code"], -32600);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("\"id\" (string or number)")
    );
    // A 10 MB body: 413.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(10 << 20)
    );
    let response = http
        .post(server.mcp())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", "Bearer s3cret")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let error = &messages(response).await[0];
    assert_eq!(error["error"]["code"], -32600, "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("--max-body-bytes") && message.contains(&(4 << 20).to_string()),
        "{error}"
    );
    // No Accept header: 406.
    let response = http
        .post(server.mcp())
        .header("content-type", "application/json")
        .header("authorization", "Bearer s3cret")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 406);

    // A real session, then bad requests inside it.
    let response = post(&http, &server, &init, &[auth]).await;
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let in_session = [
        auth,
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    // A wrong MCP-Protocol-Version, an unknown session id.
    let response = post(
        &http,
        &server,
        &ping,
        &[
            auth,
            ("mcp-session-id", &session),
            ("mcp-protocol-version", "1999-01-01"),
        ],
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("MCP-Protocol-Version")
    );
    let response = post(
        &http,
        &server,
        &ping,
        &[
            auth,
            ("mcp-session-id", "no-such-session"),
            ("mcp-protocol-version", "2025-11-25"),
        ],
    )
    .await;
    assert_eq!(response.status(), 404);

    let call_tool = |id: u64, name: &str, arguments: Value| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": arguments}});
    // An unknown tool: a JSON-RPC error naming the tools that exist.
    let reply = messages(
        post(
            &http,
            &server,
            &call_tool(2, "nope", json!({})),
            &in_session,
        )
        .await,
    )
    .await;
    let error = &reply.last().unwrap()["error"];
    assert_eq!(error["code"], -32602);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("generate, list_models"),
        "{error}"
    );
    // A call without params, or without a tool name: -32602 saying what a call needs.
    for (id, call) in [
        (
            3,
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call"}),
        ),
        (
            4,
            json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"arguments": {}}}),
        ),
    ] {
        let reply = messages(post(&http, &server, &call, &in_session).await).await;
        let answer = reply.last().unwrap();
        assert_eq!(answer["id"], id);
        assert_eq!(answer["error"]["code"], -32602, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("\"name\": a tool"),
            "{answer}"
        );
    }
    // Wrong argument values and types: tool errors the calling model can read (SEP-1303).
    let cases = [
        (
            json!({"prompt": "x", "max_tokens": -1}),
            "invalid argument `max_tokens`: invalid value: integer `-1`, expected a whole number",
        ),
        (
            json!({"prompt": "x", "temperature": "hot"}),
            "invalid argument `temperature`: invalid type: string \"hot\", expected a number",
        ),
        (
            json!({"prompt": 7}),
            "invalid argument `prompt`: invalid type: integer `7`, expected a string",
        ),
        (
            json!({"prompt": "x", "max_tokens": 0}),
            "max_tokens must be at least 1",
        ),
        (
            json!({"prompt": "x", "model": "gigantic"}),
            "smollm2-135m-instruct-q4_1",
        ),
        (
            json!({"prompt": "hello ".repeat(9000), "max_tokens": 16}),
            "context window",
        ),
    ];
    for (id, (arguments, expected)) in (3..).zip(cases) {
        let reply = messages(
            post(
                &http,
                &server,
                &call_tool(id, "generate", arguments),
                &in_session,
            )
            .await,
        )
        .await;
        let result = &reply.last().unwrap()["result"];
        assert_eq!(result["isError"], true, "{result}");
        let message = result["content"][0]["text"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
    let reply = messages(
        post(
            &http,
            &server,
            &call_tool(19, "chat", json!({"messages": []})),
            &in_session,
        )
        .await,
    )
    .await;
    let result = &reply.last().unwrap()["result"];
    assert_eq!(result["isError"], true);
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("at least one message")
    );

    // Still serving.
    let reply = messages(
        post(
            &http,
            &server,
            &call_tool(20, "generate", json!({"prompt": "Hello", "max_tokens": 3})),
            &in_session,
        )
        .await,
    )
    .await;
    assert_eq!(reply.last().unwrap()["result"]["isError"], false);
}

#[tokio::test]
async fn a_full_queue_is_a_json_rpc_error() {
    let server = TestServer::start(
        ServerOptions::default(),
        LoadOptions {
            max_active: 1,
            queue_limit: 1,
            ..LoadOptions::default()
        },
    )
    .await;
    let (client, recorder) = connect(&server, Era::Sessions).await;
    let long = json!({"prompt": ENDLESS, "max_tokens": 400, "temperature": 0});
    let first = client
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(call("generate", long.clone()))),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    recorder.wait_for(&first.progress_token, 1).await; // holds the only slot
    let second = client
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(call("generate", long))),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let engine = server.engine().await;
    while engine.stats().queued == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = client
        .call_tool(call("generate", json!({"prompt": "x", "max_tokens": 2})))
        .await
        .expect_err("the queue is full");
    assert!(error.to_string().contains("busy"), "{error}");
    first.cancel(None).await.unwrap();
    second.cancel(None).await.unwrap();
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn list_models_shows_what_is_loaded() {
    let server = server().await;
    let (client, _) = connect(&server, Era::Stateless).await;
    let result = client
        .call_tool(call("list_models", json!({})))
        .await
        .unwrap();
    let models = result.structured_content.unwrap()["models"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(models.len(), 7);
    let small = models
        .iter()
        .find(|m| m["name"] == "smollm2-135m-instruct-q4_1")
        .unwrap();
    assert_eq!(small["loaded"], true);
    assert_eq!(small["device"], "cpu");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn legacy_sse_transport_streams_progress() {
    use futures::StreamExt;
    let server = server().await;
    let http = reqwest::Client::new();
    let mut events = http
        .get(format!("{}/sse", server.base))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut buffer = String::new();
    let mut next_event = async || -> (String, String) {
        loop {
            if let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                };
                if block.starts_with(':') {
                    continue; // keep-alive
                }
                return (field("event:"), field("data:"));
            }
            let chunk = events.next().await.expect("the stream stays open").unwrap();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    let (kind, endpoint) = next_event().await;
    assert_eq!(kind, "endpoint");
    assert!(endpoint.starts_with("/sse/messages?sessionId="));
    let url = format!("{}{endpoint}", server.base);
    let send = |body: Value| http.post(&url).json(&body).send();
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}});
    assert_eq!(send(init).await.unwrap().status(), 202);
    let (_, reply) = next_event().await;
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap()["result"]["protocolVersion"],
        "2024-11-05"
    );
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await
        .unwrap();
    let generate = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "generate",
        "arguments": {"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0},
        "_meta": {"progressToken": "legacy"}}});
    assert_eq!(send(generate).await.unwrap().status(), 202);
    let mut streamed = String::new();
    let result = loop {
        let (kind, data) = next_event().await;
        assert_eq!(kind, "message");
        let message: Value = serde_json::from_str(&data).unwrap();
        if message["method"] == "notifications/progress" {
            assert_eq!(message["params"]["progressToken"], "legacy");
            streamed.push_str(message["params"]["message"].as_str().unwrap());
        } else {
            break message["result"].clone();
        }
    };
    assert_eq!(result["structuredContent"]["text"], streamed.as_str());
    assert!(streamed.contains("Paris"));
    let unknown = http
        .post(format!("{}/sse/messages?sessionId=nope", server.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn health_reports_ready() {
    let server = server().await;
    let response = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// A raw 2025-11-25 session: initialized, with the headers its later requests carry.
struct RawSession {
    http: reqwest::Client,
    mcp: String,
    id: String,
}

impl RawSession {
    async fn open(server: &TestServer) -> Self {
        let http = reqwest::Client::new();
        let init = initialize_request(0);
        let response = post(&http, server, &init, &[]).await;
        let id = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        let session = Self {
            http,
            mcp: server.mcp(),
            id,
        };
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        session.post(&initialized).await;
        session
    }

    async fn post(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(&self.mcp)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.id)
            .header("mcp-protocol-version", "2025-11-25")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `generate` with `arguments`, streaming progress.
    async fn generate(&self, arguments: Value) -> reqwest::Response {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "generate",
            "arguments": arguments, "_meta": {"progressToken": "r"}}});
        self.post(&call).await
    }

    /// `GET /mcp` with `Last-Event-ID`.
    async fn resume(&self, last_event_id: &str) -> reqwest::Response {
        self.http
            .get(&self.mcp)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &self.id)
            .header("mcp-protocol-version", "2025-11-25")
            .header("last-event-id", last_event_id)
            .send()
            .await
            .unwrap()
    }
}

/// Greedy `generate` arguments.
fn greedy(max_tokens: u64) -> Value {
    json!({"prompt": ENDLESS, "max_tokens": max_tokens, "temperature": 0})
}

/// Hot sampling: a stream of random tokens that seldom ends before `max_tokens`.
fn hot(max_tokens: u64) -> Value {
    json!({"prompt": ENDLESS, "max_tokens": max_tokens, "temperature": 2.0, "top_p": 1.0,
           "top_k": 0, "seed": 7})
}

/// `(id, message)` for each SSE event with data, until `stop` says enough or the stream ends.
async fn sse_events(
    response: reqwest::Response,
    mut stop: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let (mut buffer, mut events) = (String::new(), Vec::new());
    while !stop(&events) {
        let Some(chunk) = body.next().await else {
            break;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                event
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            if let (Some(id), Some(data)) = (field("id:"), field("data:"))
                && let Ok(message) = serde_json::from_str(data)
            {
                events.push((id.to_string(), message));
            }
        }
    }
    events
}

fn progress_count(events: &[(String, Value)]) -> usize {
    events
        .iter()
        .filter(|(_, m)| m["method"] == "notifications/progress")
        .count()
}

fn has_result(events: &[(String, Value)]) -> bool {
    events.iter().any(|(_, m)| m.get("result").is_some())
}

/// What a broken stream and its resumption delivered together: nothing repeated, nothing lost.
fn assert_joined(first: &[(String, Value)], rest: &[(String, Value)]) {
    let events: Vec<&Value> = first.iter().chain(rest).map(|(_, m)| m).collect();
    let progress: Vec<&Value> = events
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .copied()
        .collect();
    let steps: Vec<f64> = progress
        .iter()
        .map(|m| m["params"]["progress"].as_f64().unwrap())
        .collect();
    assert!(
        steps.windows(2).all(|w| w[1] > w[0]),
        "nothing repeated: {steps:?}"
    );
    let streamed: String = progress
        .iter()
        .map(|m| m["params"]["message"].as_str().unwrap())
        .collect();
    let result = events
        .iter()
        .find_map(|m| m.get("result"))
        .expect("the result after resuming");
    assert_eq!(
        result["structuredContent"]["text"],
        streamed.as_str(),
        "nothing lost"
    );
}

/// A 2025-11-25 client whose stream breaks mid-generation reconnects with `Last-Event-ID` within
/// `--resume-window` and gets the rest, none twice.
#[tokio::test]
async fn a_broken_stream_resumes_from_last_event_id() {
    let server = server().await;
    let session = RawSession::open(&server).await;
    let first = sse_events(session.generate(greedy(48)).await, |e| {
        progress_count(e) >= 5
    })
    .await;
    // The client went away; it comes back for the rest.
    let resumed = session.resume(&first.last().unwrap().0).await;
    assert_eq!(resumed.status(), 200);
    let rest = sse_events(resumed, has_result).await;
    assert!(!rest.is_empty() && progress_count(&first) >= 5);
    assert_joined(&first, &rest);
}

/// A stream that broke stays resumable after its generation has finished, for the window: the
/// remaining tokens and the result are replayed.
#[tokio::test]
async fn a_finished_stream_is_resumable_within_the_window() {
    let server = server().await;
    let engine = server.engine().await;
    let session = RawSession::open(&server).await;
    let first = sse_events(session.generate(greedy(16)).await, |e| {
        progress_count(e) >= 3
    })
    .await;
    while engine.stats().active + engine.stats().queued > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rest = sse_events(session.resume(&first.last().unwrap().0).await, |_| false).await;
    assert!(has_result(&rest), "the result is replayed: {rest:?}");
    assert_joined(&first, &rest);
    assert_eq!(engine.stats().cancelled, 0);
}

/// A stream that broke and is not resumed within `--resume-window` is cancelled, freeing its
/// slot; its log is dropped after another window, and a late `Last-Event-ID` gets an empty stream.
#[tokio::test]
async fn an_abandoned_stream_is_cancelled_after_the_resume_window() {
    let options = ServerOptions {
        resume_window: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let server = TestServer::start(options, LoadOptions::default()).await;
    let engine = server.engine().await;
    let session = RawSession::open(&server).await;
    // Far more tokens than this test waits for: only a cancellation ends it early.
    let first = sse_events(session.generate(hot(4000)).await, |e| {
        progress_count(e) >= 3
    })
    .await;
    for _ in 0..1200 {
        if engine.stats().cancelled == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = engine.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert!(stats.tokens < 4000, "{stats:?}");
    for _ in 0..200 {
        if engine.stats().active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(engine.stats().active, 0, "the slot is free");
    // The session itself lives on.
    let ping = session
        .post(&json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}))
        .await;
    assert_eq!(ping.status(), 200);
    // One window after the cancellation the log goes; until then the client could still read
    // how its request ended.
    let mut late = Vec::new();
    for _ in 0..300 {
        let response = session.resume(&first.last().unwrap().0).await;
        assert_eq!(response.status(), 200);
        late = sse_events(response, |_| false).await;
        if late.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(late.is_empty(), "{late:?}");
}

/// `--max-sessions`: past the limit a new session (2025-era or legacy SSE) gets 503 with
/// `Retry-After` and a JSON-RPC error naming the flag; open sessions and stateless calls keep
/// working; deleting or idling out a session makes room again.
#[tokio::test]
async fn sessions_past_the_limit_are_refused_and_open_ones_keep_working() {
    let options = ServerOptions {
        max_sessions: 3,
        session_idle_timeout: Duration::from_secs(2),
        ..ServerOptions::default()
    };
    let server = TestServer::start(options, LoadOptions::default()).await;
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    for id in 0..9 {
        let response = post(&http, &server, &initialize_request(id), &[]).await;
        if id < 3 {
            assert_eq!(response.status(), 200);
            sessions.push(
                response.headers()["mcp-session-id"]
                    .to_str()
                    .unwrap()
                    .to_string(),
            );
            continue;
        }
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "10");
        let error = &messages(response).await[0];
        assert_eq!(error["id"], id, "{error}");
        assert_eq!(error["error"]["code"], -32000, "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("--max-sessions") && message.contains('3'),
            "{message}"
        );
    }
    let sse = http
        .get(format!("{}/sse", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 503);
    assert!(sse.text().await.unwrap().contains("--max-sessions"));

    // The open sessions still work, and so do stateless calls, which hold no session.
    for session in &sessions {
        assert_eq!(ping_in_session(&http, &server, session).await, 200);
    }
    let (client, _) = connect(&server, Era::Stateless).await;
    assert_eq!(client.list_all_tools().await.unwrap().len(), 3);

    // A deleted session makes room at once.
    assert_eq!(delete(&http, &server, &sessions[0]).await.status(), 204);
    assert_eq!(
        post(&http, &server, &initialize_request(20), &[])
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&http, &server, &initialize_request(21), &[])
            .await
            .status(),
        503
    );
    // Idle sessions expire and make room too.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in 30..33 {
        assert_eq!(
            post(&http, &server, &initialize_request(id), &[])
                .await
                .status(),
            200
        );
    }
}

/// 50 concurrent `initialize`s against `--max-sessions 20`: exactly 20 sessions open (the check
/// and the session's creation are one step), the other 30 are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_session_limit_holds_exactly_under_a_concurrent_flood() {
    let options = ServerOptions {
        max_sessions: 20,
        ..ServerOptions::default()
    };
    let server = TestServer::start(options, LoadOptions::default()).await;
    let http = reqwest::Client::new();
    let flood = (0..50).map(|id| {
        let (http, server) = (&http, &server);
        async move {
            post(http, server, &initialize_request(id), &[])
                .await
                .status()
        }
    });
    let statuses = futures::future::join_all(flood).await;
    let opened = statuses.iter().filter(|s| s.as_u16() == 200).count();
    let refused = statuses.iter().filter(|s| s.as_u16() == 503).count();
    assert_eq!((opened, refused), (20, 30), "{statuses:?}");
}

/// At the limit, the least recently used session that has been idle for `--session-min-idle`
/// is closed to make room (its id then gets 404); a session used since is kept; with none idle
/// that long, a new session is refused.
#[tokio::test]
async fn at_the_limit_the_least_recently_used_idle_session_makes_room() {
    let options = ServerOptions {
        max_sessions: 3,
        session_min_idle: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let server = TestServer::start(options, LoadOptions::default()).await;
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    for id in 0..3 {
        let response = post(&http, &server, &initialize_request(id), &[]).await;
        assert_eq!(response.status(), 200);
        let session = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap_or_default();
        sessions.push(session.to_string());
    }
    // None has been idle for a second yet.
    let refused = post(&http, &server, &initialize_request(3), &[]).await;
    assert_eq!(refused.status(), 503);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ping = |i: usize| ping_in_session(&http, &server, &sessions[i]);
    // Sessions 1 and 2 are used again; session 0 is the least recently used.
    assert_eq!(ping(1).await, 200);
    assert_eq!(ping(2).await, 200);
    let admitted = post(&http, &server, &initialize_request(4), &[]).await;
    assert_eq!(admitted.status(), 200);
    assert_eq!(ping(0).await, 404, "the idlest session made room");
    assert_eq!(ping(1).await, 200);
    assert_eq!(ping(2).await, 200);
}

/// Sends `body` as a POST to `/mcp` with `headers` from a socket with a tiny receive buffer,
/// and never reads the answer: a client stuck with its stream open.
async fn stuck_post(
    server: &TestServer,
    body: &Value,
    headers: &[(&str, &str)],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let body = body.to_string();
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// A client that stops reading its stream holds up neither the engine nor its session: every
/// request has room for all of its own events (and no more), in both eras.
#[tokio::test]
async fn a_client_that_stops_reading_holds_up_nothing() {
    let server = server().await;
    let engine = server.engine().await;
    let session = RawSession::open(&server).await;
    // Enough events (~250 bytes each) to fill the socket buffers, and far more than rmcp's
    // channel for a session's stream holds (64).
    let max_tokens = 800;
    let call = |meta: Value| {
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "generate",
            "arguments": hot(max_tokens), "_meta": meta}})
    };
    let _in_session = stuck_post(
        &server,
        &call(json!({"progressToken": "stuck"})),
        &[
            ("mcp-session-id", &session.id),
            ("mcp-protocol-version", "2025-11-25"),
        ],
    )
    .await;
    let stateless_meta = json!({"progressToken": "stuck",
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}});
    let _stateless = stuck_post(
        &server,
        &call(stateless_meta),
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "generate"),
        ],
    )
    .await;
    // Both generations run to their end while nobody reads them.
    for _ in 0..6000 {
        let stats = engine.stats();
        if stats.requests == 2 && stats.active + stats.queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = engine.stats();
    assert_eq!(
        (stats.requests, stats.active, stats.queued),
        (2, 0, 0),
        "{stats:?}"
    );
    assert!(stats.tokens > 2 * 64, "{stats:?}");
    assert_eq!(stats.cancelled, 0, "{stats:?}");
    // The session that holds the stuck stream still answers.
    let events = sse_events(session.generate(greedy(4)).await, |_| false).await;
    assert!(has_result(&events), "{events:?}");
}
