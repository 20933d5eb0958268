//! The fixtures of the MCP conformance suite (`@modelcontextprotocol/conformance`), served on
//! wick's own HTTP stack: the same `wick::server::router` (access policy, CORS, body limit,
//! Streamable HTTP for both protocol eras, legacy SSE) and `wick::server::serve` that
//! `wick serve` uses, with a handler that implements the tools, resources, prompts,
//! completions and logging the suite's scenarios call by name.
//!
//! ```sh
//! cargo run --example conformance_server -- --port 3001
//! ```
//!
//! tests/conformance.rs starts it and runs the suite against it; the scenarios that need no
//! fixtures run against `wick serve` itself.
//!
//! Logging, roots and `resources/subscribe` are deprecated by SEP-2577 but still part of the
//! 2025-11-25 scenarios, hence the `allow(deprecated)`.
#![allow(deprecated)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use clap::Parser;
use rmcp::handler::server::prompt::PromptContext;
use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::{InputResponses, RequestState};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResponse, CallToolResult, ClientCapabilities, ClientResult, CompleteRequestParams,
    CompleteResult, CompletionInfo, ContentBlock, CreateMessageRequest, CreateMessageRequestParams,
    ElicitRequest, ElicitRequestParams, ElicitationSchema, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, Implementation, InputRequest, InputRequests,
    InputRequiredResult, JsonObject, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListRootsRequest, LoggingLevel, LoggingMessageNotificationParam,
    PaginatedRequestParams, ProgressNotificationParam, Prompt, PromptMessage, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Reference, Resource,
    ResourceContents, ResourceTemplate, Role, SamplingMessage, ServerCapabilities, ServerConfig,
    ServerRequest, SetLevelRequestMethod, SetLevelRequestParams, SubscribeRequestParams,
    SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext, SubscriptionSink};
use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler, prompt, prompt_router, tool, tool_handler,
    tool_router,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use wick::server::{self, HealthCheck, ServerOptions};

/// A 1x1 red PNG.
const PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
/// Eight silent samples of 16-bit mono WAV at 8 kHz.
const WAV: &str =
    "UklGRjQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YRAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Serves the conformance fixtures on 127.0.0.1.
#[derive(Debug, Parser)]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

/// Prints the URL the tests wait for, then serves until SIGINT or SIGTERM.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let options = ServerOptions {
        port: args.port,
        ..ServerOptions::default()
    };
    let shared = Arc::new(Shared::new());
    let health: HealthCheck = Arc::new(|| (true, json!({ "status": "ready" })));
    let shutdown = wick::server::Shutdown::default();
    let stop_accepting = CancellationToken::new();
    let app = server::router(
        &options,
        &shutdown,
        move || Fixtures::new(shared.clone()),
        health,
        axum::Router::new(),
    );

    let listener = tokio::net::TcpListener::bind(options.addr()).await?;
    let local = listener.local_addr()?;
    println!("wick: serving MCP at http://{local}/mcp (legacy SSE at http://{local}/sse)");
    std::io::stdout().flush()?;

    let mut serving = tokio::spawn(server::serve(
        listener,
        app,
        &options,
        stop_accepting.clone(),
    ));
    tokio::select! {
        _ = server::shutdown_signal() => {}
        result = &mut serving => return Ok(result??),
    }
    shutdown.sessions.cancel();
    stop_accepting.cancel();
    Ok(serving.await??)
}

/// State shared by every handler instance: the server builds one handler per session
/// (2025-11-25) or per request (2026-07-28), but `requestState` must verify on any of them and
/// list-changed notifications must reach every open `subscriptions/listen` stream.
struct Shared {
    /// HMAC-SHA256 key that seals `requestState`, random per process.
    state_key: [u8; 32],
    listeners: Mutex<HashMap<u64, SubscriptionSink>>,
    next_listener: AtomicU64,
}

impl Shared {
    fn new() -> Self {
        let mut state_key = [0u8; 32];
        state_key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        state_key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self {
            state_key,
            listeners: Mutex::default(),
            next_listener: AtomicU64::new(0),
        }
    }

    /// `state` of `tool` with an HMAC appended: the client echoes it back verbatim, and a
    /// changed byte (or a state from another tool) no longer verifies.
    fn seal(&self, tool: &str, state: &str) -> String {
        format!("{state}.{}", hex::encode(self.mac(tool, state)))
    }

    /// The state inside `sealed`, if its HMAC verifies for `tool`.
    fn open<'a>(&self, tool: &str, sealed: &'a str) -> Result<&'a str, McpError> {
        let verified = sealed.rsplit_once('.').and_then(|(state, mac)| {
            let mac = hex::decode(mac).ok()?;
            bool::from(mac.ct_eq(&self.mac(tool, state))).then_some(state)
        });
        verified.ok_or_else(|| {
            McpError::invalid_params(
                "requestState failed its integrity check; start the request over",
                None,
            )
        })
    }

    fn mac(&self, tool: &str, state: &str) -> [u8; 32] {
        let (mut inner_pad, mut outer_pad) = ([0x36u8; 64], [0x5cu8; 64]);
        for (i, byte) in self.state_key.iter().enumerate() {
            inner_pad[i] ^= byte;
            outer_pad[i] ^= byte;
        }
        let inner = Sha256::new()
            .chain_update(inner_pad)
            .chain_update(tool.as_bytes())
            .chain_update([0])
            .chain_update(state.as_bytes())
            .finalize();
        Sha256::new()
            .chain_update(outer_pad)
            .chain_update(inner)
            .finalize()
            .into()
    }

    fn listeners(&self) -> MutexGuard<'_, HashMap<u64, SubscriptionSink>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One handler instance: the fixtures, and the log level a 2025-11-25 session chose.
#[derive(Clone)]
struct Fixtures {
    shared: Arc<Shared>,
    /// Set by `logging/setLevel`; 2026-07-28 requests carry theirs in `_meta` instead.
    log_level: Arc<Mutex<LoggingLevel>>,
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

impl Fixtures {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            log_level: Arc::new(Mutex::new(LoggingLevel::Info)),
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }

    /// Sends an info-level `notifications/message` if the client asked for that level: with
    /// `logging/setLevel` on a 2025-11-25 session, with `_meta` logLevel on a 2026-07-28
    /// request (no logLevel there means no log messages at all).
    async fn log(&self, ctx: &RequestContext<RoleServer>, message: &str) {
        let threshold = if is_2026(ctx) {
            ctx.meta.log_level()
        } else {
            Some(*self.log_level.lock().unwrap_or_else(|e| e.into_inner()))
        };
        if threshold.is_some_and(|level| level as u8 <= LoggingLevel::Info as u8) {
            let message = LoggingMessageNotificationParam::new(LoggingLevel::Info, json!(message))
                .with_logger("conformance-fixtures");
            let _ = ctx.peer.notify_logging_message(message).await;
        }
    }
}

/// Whether the request speaks protocol 2026-07-28 or later (stateless, per-request `_meta`).
fn is_2026(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.protocol_version()
        .is_some_and(|version| version >= ProtocolVersion::V_2026_07_28)
}

/// A successful tool result with one text block.
fn text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

/// A JSON schema object for `#[tool(input_schema = ..)]`.
fn schema(value: Value) -> Arc<JsonObject> {
    Arc::new(value.as_object().cloned().unwrap_or_default())
}

/// A form elicitation asking for one `field` of JSON type `kind`.
fn elicitation(message: &str, field: &str, kind: &str) -> Result<InputRequest, McpError> {
    let schema = json!({
        "type": "object",
        "properties": { field: { "type": kind } },
        "required": [field],
    });
    Ok(InputRequest::Elicitation(ElicitRequest::new(
        ElicitRequestParams::FormElicitationParams {
            meta: None,
            message: message.into(),
            requested_schema: elicitation_schema(schema)?,
        },
    )))
}

/// `schema` as rmcp's typed elicitation schema.
fn elicitation_schema(schema: Value) -> Result<ElicitationSchema, McpError> {
    serde_json::from_value(schema)
        .map_err(|e| McpError::internal_error(format!("bad elicitation schema: {e}"), None))
}

/// A `sampling/createMessage` input request with one user message.
fn sampling(prompt: &str, max_tokens: u32) -> InputRequest {
    InputRequest::CreateMessage(CreateMessageRequest::new(CreateMessageRequestParams::new(
        vec![SamplingMessage::user_text(prompt)],
        max_tokens,
    )))
}

/// A `roots/list` input request.
fn list_roots() -> InputRequest {
    InputRequest::ListRoots(ListRootsRequest::default())
}

/// An MRTR answer: "first answer these `requests`, then call again (with `state`)".
fn ask<const N: usize>(
    requests: [(&str, InputRequest); N],
    state: Option<String>,
) -> InputRequiredResult {
    let requests: InputRequests = requests
        .into_iter()
        .map(|(key, request)| (key.to_string(), request))
        .collect();
    InputRequiredResult::new(Some(requests), state)
}

/// The client's answer to input request `key`. Only a JSON object is an answer: anything else
/// (a number, null) counts as missing, so the server asks again.
fn answer<'a>(responses: &'a Option<rmcp::model::InputResponses>, key: &str) -> Option<&'a Value> {
    responses
        .as_ref()
        .and_then(|responses| responses.get(key))
        .filter(|value| value.is_object())
}

/// `answer.content.field` of an accepted elicitation, as text.
fn elicited<'a>(answer: &'a Value, field: &str) -> Option<&'a str> {
    answer.pointer(&format!("/content/{field}"))?.as_str()
}

/// Arguments of `test_sampling`.
#[derive(Debug, Deserialize, JsonSchema)]
struct SamplingArgs {
    /// The prompt to send to the client's model.
    prompt: String,
}

/// Arguments of `test_elicitation`.
#[derive(Debug, Deserialize, JsonSchema)]
struct ElicitationArgs {
    /// The message to show the user.
    message: String,
}

#[tool_router]
impl Fixtures {
    /// Returns a simple text response.
    #[tool]
    async fn test_simple_text(&self) -> CallToolResult {
        text("This is a simple text response for testing.")
    }

    /// Returns a 1x1 PNG image.
    #[tool]
    async fn test_image_content(&self) -> CallToolResult {
        CallToolResult::success(vec![ContentBlock::image(PNG, "image/png")])
    }

    /// Returns a short WAV clip.
    #[tool]
    async fn test_audio_content(&self) -> CallToolResult {
        CallToolResult::success(vec![ContentBlock::audio(WAV, "audio/wav")])
    }

    /// Returns an embedded text resource.
    #[tool]
    async fn test_embedded_resource(&self) -> CallToolResult {
        CallToolResult::success(vec![ContentBlock::resource(ResourceContents::text(
            "This is an embedded resource content.",
            "test://embedded-resource",
        ))])
    }

    /// Returns text, an image and an embedded resource in one result.
    #[tool]
    async fn test_multiple_content_types(&self) -> CallToolResult {
        CallToolResult::success(vec![
            ContentBlock::text("Multiple content types test:"),
            ContentBlock::image(PNG, "image/png"),
            ContentBlock::resource(
                ResourceContents::text(
                    r#"{"test":"data","value":123}"#,
                    "test://mixed-content-resource",
                )
                .with_mime_type("application/json"),
            ),
        ])
    }

    /// Always fails, as a tool result with `isError: true`.
    #[tool]
    async fn test_error_handling(&self) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text(
            "This tool intentionally returns an error for testing",
        )])
    }

    /// Reports progress 0, 50 and 100 of 100, about 50 ms apart.
    #[tool]
    async fn test_tool_with_progress(&self, ctx: RequestContext<RoleServer>) -> CallToolResult {
        let token = ctx.meta.get_progress_token();
        for (step, progress) in [0.0, 50.0, 100.0].into_iter().enumerate() {
            if step > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Some(token) = &token {
                let notification = ProgressNotificationParam::new(token.clone(), progress)
                    .with_total(100.0)
                    .with_message(format!("{progress}% done"));
                let _ = ctx.peer.notify_progress(notification).await;
            }
        }
        text("Progress test completed")
    }

    /// Sends three log messages about 50 ms apart (2025-11-25).
    #[tool]
    async fn test_tool_with_logging(&self, ctx: RequestContext<RoleServer>) -> CallToolResult {
        for (step, message) in [
            "Tool execution started",
            "Tool processing data",
            "Tool execution completed",
        ]
        .into_iter()
        .enumerate()
        {
            if step > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.log(&ctx, message).await;
        }
        text("Logging test completed")
    }

    /// Logs one message, only when the request asks for a log level (2026-07-28 `_meta`).
    #[tool]
    async fn test_logging_tool(&self, ctx: RequestContext<RoleServer>) -> CallToolResult {
        self.log(&ctx, "logLevel was requested").await;
        text("Logging tool completed")
    }

    /// Asks the client's model to answer `prompt` (`sampling/createMessage`, 2025-11-25).
    #[tool]
    async fn test_sampling(
        &self,
        Parameters(args): Parameters<SamplingArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let request =
            CreateMessageRequestParams::new(vec![SamplingMessage::user_text(args.prompt)], 100);
        match ctx.peer.create_message(request).await {
            Ok(result) => {
                let answer = result
                    .message
                    .content
                    .first()
                    .and_then(|content| content.as_text())
                    .map_or("(no text)", |content| content.text.as_str())
                    .to_string();
                text(format!("LLM response: {answer}"))
            }
            Err(e) => {
                CallToolResult::error(vec![ContentBlock::text(format!("sampling failed: {e}"))])
            }
        }
    }

    /// Asks the user for a username and an email (`elicitation/create`, 2025-11-25).
    #[tool]
    async fn test_elicitation(
        &self,
        Parameters(args): Parameters<ElicitationArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let schema = json!({
            "type": "object",
            "properties": {
                "username": { "type": "string", "description": "User's response" },
                "email": { "type": "string", "description": "User's email address" }
            },
            "required": ["username", "email"]
        });
        elicit(&ctx, args.message, schema, "User response").await
    }

    /// Asks for values whose schema gives every primitive type a default (SEP-1034).
    #[tool]
    async fn test_elicitation_sep1034_defaults(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": { "type": "string", "description": "User's name", "default": "John Doe" },
                "age": { "type": "integer", "description": "User's age", "default": 30 },
                "score": { "type": "number", "description": "User's score", "default": 95.5 },
                "status": {
                    "type": "string",
                    "description": "User's status",
                    "enum": ["active", "inactive", "pending"],
                    "default": "active"
                },
                "verified": {
                    "type": "boolean",
                    "description": "Whether the user is verified",
                    "default": true
                }
            }
        });
        let message = "Please review these values (all have defaults)";
        elicit(&ctx, message, schema, "Elicitation completed").await
    }

    /// Asks for choices in all five enum shapes (SEP-1330).
    #[tool]
    async fn test_elicitation_sep1330_enums(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let choices = |titles: [&str; 3]| {
            let values = ["value1", "value2", "value3"];
            values
                .iter()
                .zip(titles)
                .map(|(value, title)| json!({ "const": value, "title": title }))
                .collect::<Vec<_>>()
        };
        let schema = json!({
            "type": "object",
            "properties": {
                "untitledSingle": { "type": "string", "enum": ["option1", "option2", "option3"] },
                "titledSingle": {
                    "type": "string",
                    "oneOf": choices(["First Option", "Second Option", "Third Option"])
                },
                "legacyEnum": {
                    "type": "string",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"]
                },
                "untitledMulti": {
                    "type": "array",
                    "items": { "type": "string", "enum": ["option1", "option2", "option3"] }
                },
                "titledMulti": {
                    "type": "array",
                    "items": { "anyOf": choices(["First Choice", "Second Choice", "Third Choice"]) }
                }
            }
        });
        elicit(&ctx, "Choose some options", schema, "Elicitation completed").await
    }

    /// Needs the client's `sampling` capability, and says so with -32021 when it is missing.
    #[tool]
    async fn test_missing_capability(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let declared = ctx
            .client_capabilities()
            .is_some_and(|capabilities| capabilities.sampling.is_some());
        if !declared {
            return Err(McpError::missing_required_client_capability(
                ClientCapabilities::builder().enable_sampling().build(),
            ));
        }
        Ok(text("The client declared sampling"))
    }

    /// Needs user input; on 2026-07-28 it asks through an `input_required` result, never with
    /// a request of its own on the response stream.
    #[tool]
    async fn test_streaming_elicitation(&self) -> Result<CallToolResponse, McpError> {
        let value = elicitation("Provide a value", "value", "string")?;
        Ok(ask([("value", value)], None).into())
    }

    /// Answers after a short pause on its request's SSE stream, which starts with a priming
    /// event and a `retry` field (SEP-1699). A server may also close that stream mid-call and
    /// let the client resume it with `Last-Event-ID`; this one does not, which is allowed.
    #[tool]
    async fn test_reconnection(&self) -> CallToolResult {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text("Reconnection test completed")
    }

    /// Sends `notifications/tools/list_changed` to every `subscriptions/listen` stream.
    #[tool]
    async fn test_trigger_tool_change(&self) -> CallToolResult {
        let listeners: Vec<_> = self.shared.listeners().values().cloned().collect();
        for listener in listeners {
            let _ = listener.notify_tool_list_changed().await;
        }
        text("tools/list_changed sent")
    }

    /// Sends `notifications/prompts/list_changed` to every `subscriptions/listen` stream.
    #[tool]
    async fn test_trigger_prompt_change(&self) -> CallToolResult {
        let listeners: Vec<_> = self.shared.listeners().values().cloned().collect();
        for listener in listeners {
            let _ = listener.notify_prompt_list_changed().await;
        }
        text("prompts/list_changed sent")
    }

    /// Takes arguments described with JSON Schema 2020-12 keywords (SEP-1613, SEP-2106).
    #[tool(input_schema = schema(json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": { "street": { "type": "string" }, "city": { "type": "string" } }
            }
        },
        "properties": {
            "name": { "type": "string" },
            "address": { "$ref": "#/$defs/address" },
            "contactMethod": { "type": "string", "enum": ["phone", "email"] },
            "phone": { "type": "string" },
            "email": { "type": "string" }
        },
        "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
        "if": {
            "properties": { "contactMethod": { "const": "phone" } },
            "required": ["contactMethod"]
        },
        "then": { "required": ["phone"] },
        "else": { "required": ["email"] },
        "additionalProperties": false
    })))]
    async fn json_schema_2020_12_tool(&self, arguments: JsonObject) -> CallToolResult {
        let name = arguments
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("world");
        text(format!("Hello, {name}!"))
    }

    /// Echoes `value`, which also travels in the `Mcp-Param-Value` header (SEP-2243).
    #[tool(input_schema = schema(json!({
        "type": "object",
        "properties": { "value": { "type": "string", "x-mcp-header": "Value" } },
        "required": ["value"]
    })))]
    async fn test_custom_header(&self, arguments: JsonObject) -> CallToolResult {
        text(
            arguments
                .get("value")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )
    }

    /// MRTR: asks for the user's name, then greets them.
    #[tool]
    async fn test_input_required_result_elicitation(
        &self,
        InputResponses(responses): InputResponses,
    ) -> Result<CallToolResponse, McpError> {
        if let Some(answer) = answer(&responses, "user_name") {
            let name = elicited(answer, "name").unwrap_or("stranger");
            return Ok(text(format!("Hello, {name}!")).into());
        }
        let question = elicitation("What is your name?", "name", "string")?;
        Ok(ask([("user_name", question)], None).into())
    }

    /// MRTR: asks the client's model a question, then returns its answer.
    #[tool]
    async fn test_input_required_result_sampling(
        &self,
        InputResponses(responses): InputResponses,
    ) -> CallToolResponse {
        match answer(&responses, "capital_question") {
            Some(answer) => {
                let reply = answer.pointer("/content/text").and_then(Value::as_str);
                text(format!("The model said: {}", reply.unwrap_or("(no text)"))).into()
            }
            None => {
                let question = sampling("What is the capital of France?", 100);
                ask([("capital_question", question)], None).into()
            }
        }
    }

    /// MRTR: asks for the client's roots, then lists them.
    #[tool]
    async fn test_input_required_result_list_roots(
        &self,
        InputResponses(responses): InputResponses,
    ) -> CallToolResponse {
        match answer(&responses, "client_roots") {
            Some(answer) => {
                let roots: Vec<&str> = answer
                    .get("roots")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|root| root.get("uri").and_then(Value::as_str))
                    .collect();
                text(format!("Client roots: {}", roots.join(", "))).into()
            }
            None => ask([("client_roots", list_roots())], None).into(),
        }
    }

    /// MRTR: asks for a confirmation along with a sealed `requestState`, and finishes only when
    /// that state comes back intact.
    #[tool]
    async fn test_input_required_result_request_state(
        &self,
        InputResponses(responses): InputResponses,
        RequestState(state): RequestState,
    ) -> Result<CallToolResponse, McpError> {
        self.confirm("request_state", responses, state)
    }

    /// MRTR: like `test_input_required_result_request_state`; a tampered state is an error.
    #[tool]
    async fn test_input_required_result_tampered_state(
        &self,
        InputResponses(responses): InputResponses,
        RequestState(state): RequestState,
    ) -> Result<CallToolResponse, McpError> {
        self.confirm("tampered_state", responses, state)
    }

    /// MRTR: asks for a name, a model's greeting and the client's roots in one round.
    #[tool]
    async fn test_input_required_result_multiple_inputs(
        &self,
        InputResponses(responses): InputResponses,
        RequestState(state): RequestState,
    ) -> Result<CallToolResponse, McpError> {
        const TOOL: &str = "multiple_inputs";
        if let Some(state) = &state {
            self.shared.open(TOOL, state)?;
            let keys = ["user_name", "greeting", "client_roots"];
            if keys.iter().all(|key| answer(&responses, key).is_some()) {
                return Ok(text("All inputs received").into());
            }
        }
        let requests = [
            (
                "user_name",
                elicitation("What is your name?", "name", "string")?,
            ),
            ("greeting", sampling("Generate a greeting", 50)),
            ("client_roots", list_roots()),
        ];
        Ok(ask(requests, Some(self.shared.seal(TOOL, "asked"))).into())
    }

    /// MRTR: one question per round; the sealed `requestState` holds the question asked.
    #[tool]
    async fn test_input_required_result_multi_round(
        &self,
        InputResponses(responses): InputResponses,
        RequestState(state): RequestState,
    ) -> Result<CallToolResponse, McpError> {
        const TOOL: &str = "multi_round";
        // (input key, question, answer field)
        const ROUNDS: [(&str, &str, &str); 2] = [
            ("step1", "Step 1: What is your name?", "name"),
            ("step2", "Step 2: What is your favorite color?", "color"),
        ];
        let next = match &state {
            None => 0,
            Some(state) => {
                let asked: usize = self.shared.open(TOOL, state)?.parse().unwrap_or_default();
                let answered = ROUNDS
                    .get(asked)
                    .is_some_and(|(key, ..)| answer(&responses, key).is_some());
                asked + usize::from(answered)
            }
        };
        let Some((key, question, field)) = ROUNDS.get(next) else {
            return Ok(text("Multi-round flow complete").into());
        };
        let state = self.shared.seal(TOOL, &next.to_string());
        Ok(ask(
            [(*key, elicitation(question, field, "string")?)],
            Some(state),
        )
        .into())
    }

    /// MRTR: asks only for the inputs the client declared it can provide.
    #[tool]
    async fn test_input_required_result_capabilities(
        &self,
        InputResponses(responses): InputResponses,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if responses.is_some_and(|responses| !responses.is_empty()) {
            return Ok(text("Capability-aware flow complete").into());
        }
        let capabilities = ctx.client_capabilities().unwrap_or_default();
        let mut requests = InputRequests::new();
        if capabilities.elicitation.is_some() {
            let question = elicitation("What is your name?", "name", "string")?;
            requests.insert("user_name".into(), question);
        }
        if capabilities.sampling.is_some() {
            requests.insert("greeting".into(), sampling("Generate a greeting", 50));
        }
        if capabilities.roots.is_some() {
            requests.insert("client_roots".into(), list_roots());
        }
        if requests.is_empty() {
            return Ok(text("The client declared no capability to ask through").into());
        }
        Ok(InputRequiredResult::from_input_requests(requests).into())
    }
}

impl Fixtures {
    /// Asks for a confirmation with a sealed state; done once both come back.
    fn confirm(
        &self,
        tool: &str,
        responses: Option<rmcp::model::InputResponses>,
        state: Option<String>,
    ) -> Result<CallToolResponse, McpError> {
        if let Some(state) = &state {
            self.shared.open(tool, state)?;
            if answer(&responses, "confirm").is_some() {
                return Ok(text("Confirmed: state-ok").into());
            }
        }
        let question = elicitation("Please confirm", "ok", "boolean")?;
        Ok(ask(
            [("confirm", question)],
            Some(self.shared.seal(tool, "asked")),
        )
        .into())
    }
}

/// Sends `elicitation/create` with `schema` to a 2025-11-25 client and reports its answer.
async fn elicit(
    ctx: &RequestContext<RoleServer>,
    message: impl Into<String>,
    schema: Value,
    label: &str,
) -> Result<CallToolResult, McpError> {
    let request = ElicitRequest::new(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: message.into(),
        requested_schema: elicitation_schema(schema)?,
    });
    let answer = ctx
        .peer
        .send_request(ServerRequest::ElicitRequest(request))
        .await;
    Ok(match answer {
        Ok(ClientResult::ElicitResult(result)) => {
            let action = serde_json::to_value(result.action).unwrap_or_default();
            let content = result.content.unwrap_or_default();
            text(format!("{label}: action={action}, content={content}"))
        }
        Ok(other) => CallToolResult::error(vec![ContentBlock::text(format!(
            "unexpected answer to elicitation/create: {other:?}"
        ))]),
        Err(e) => {
            CallToolResult::error(vec![ContentBlock::text(format!("elicitation failed: {e}"))])
        }
    })
}

/// Arguments of `test_prompt_with_arguments`.
#[derive(Debug, Deserialize, JsonSchema)]
struct PromptArgs {
    /// First test argument.
    arg1: String,
    /// Second test argument.
    arg2: String,
}

/// Arguments of `test_prompt_with_embedded_resource`.
#[derive(Debug, Deserialize, JsonSchema)]
struct EmbeddedResourceArgs {
    /// URI of the resource to embed.
    #[serde(rename = "resourceUri")]
    resource_uri: String,
}

#[prompt_router]
impl Fixtures {
    /// A prompt without arguments.
    #[prompt]
    async fn test_simple_prompt(&self) -> Vec<PromptMessage> {
        vec![PromptMessage::new_text(
            Role::User,
            "This is a simple prompt for testing.",
        )]
    }

    /// A prompt with two required arguments.
    #[prompt]
    async fn test_prompt_with_arguments(
        &self,
        Parameters(args): Parameters<PromptArgs>,
    ) -> Vec<PromptMessage> {
        vec![PromptMessage::new_text(
            Role::User,
            format!(
                "Prompt with arguments: arg1='{}', arg2='{}'",
                args.arg1, args.arg2
            ),
        )]
    }

    /// A prompt that embeds the resource named by `resourceUri`.
    #[prompt]
    async fn test_prompt_with_embedded_resource(
        &self,
        Parameters(args): Parameters<EmbeddedResourceArgs>,
    ) -> Vec<PromptMessage> {
        vec![
            PromptMessage::new(
                Role::User,
                ContentBlock::resource(ResourceContents::text(
                    "Embedded resource content for testing.",
                    args.resource_uri,
                )),
            ),
            PromptMessage::new_text(Role::User, "Please process the embedded resource above."),
        ]
    }

    /// A prompt with an image.
    #[prompt]
    async fn test_prompt_with_image(&self) -> Vec<PromptMessage> {
        vec![
            PromptMessage::new(Role::User, ContentBlock::image(PNG, "image/png")),
            PromptMessage::new_text(Role::User, "Please analyze the image above."),
        ]
    }
}

/// MRTR on `prompts/get`; answered in `get_prompt`, which sees the request's inputResponses.
const MRTR_PROMPT: &str = "test_input_required_result_prompt";

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Fixtures {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_logging()
            .enable_completions()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_resources_list_changed()
            .enable_tools()
            .enable_tool_list_changed()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(
                "wick-conformance-fixtures",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions("The MCP conformance suite's fixtures, served by wick's HTTP stack.")
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let mut prompts = self.prompt_router.list_all();
        prompts.push(Prompt::new(
            MRTR_PROMPT,
            Some("Asks what context to use (an input_required result), then builds the prompt"),
            None,
        ));
        Ok(ListPromptsResult::with_all_items(prompts))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if request.name == MRTR_PROMPT {
            if let Some(answer) = answer(&request.input_responses, "user_context") {
                let context = elicited(answer, "context").unwrap_or("(none)");
                let message = format!("Use this context: {context}");
                return Ok(GetPromptResult::new(vec![PromptMessage::new_text(
                    Role::User,
                    message,
                )])
                .into());
            }
            let question = elicitation("What context should the prompt use?", "context", "string")?;
            return Ok(ask([("user_context", question)], None).into());
        }
        let context = PromptContext::new(self, request.name, request.arguments, ctx);
        self.prompt_router.get_prompt(context).await
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new("test://static-text", "static-text")
                .with_description("A static text resource")
                .with_mime_type("text/plain"),
            Resource::new("test://static-binary", "static-binary")
                .with_description("A static binary resource (a PNG image)")
                .with_mime_type("image/png"),
            Resource::new("test://watched-resource", "watched-resource")
                .with_description("A resource clients may subscribe to")
                .with_mime_type("text/plain"),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("test://template/{id}/data", "template-data")
                .with_description("Data for any id")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri.as_str();
        let contents = match uri {
            "test://static-text" => {
                ResourceContents::text("This is the content of the static text resource.", uri)
            }
            "test://watched-resource" => ResourceContents::text("Watched resource content.", uri),
            "test://static-binary" => ResourceContents::blob(PNG, uri).with_mime_type("image/png"),
            _ => match uri
                .strip_prefix("test://template/")
                .and_then(|rest| rest.strip_suffix("/data"))
            {
                Some(id) => ResourceContents::text(
                    json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") })
                        .to_string(),
                    uri,
                )
                .with_mime_type("application/json"),
                None => {
                    return Err(McpError::resource_not_found(
                        format!("no resource at {uri}"),
                        Some(json!({ "uri": uri })),
                    ));
                }
            },
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn subscribe(
        &self,
        _request: SubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        // Nothing ever changes, so there is nothing to remember.
        Ok(())
    }

    async fn unsubscribe(
        &self,
        _request: UnsubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, subscription: SubscriptionContext) -> Result<(), McpError> {
        /// Forgets the stream however `listen` ends (cancelled, or its future dropped).
        struct Registered<'a>(&'a Shared, u64);
        impl Drop for Registered<'_> {
            fn drop(&mut self) {
                self.0.listeners().remove(&self.1);
            }
        }
        let id = self.shared.next_listener.fetch_add(1, Ordering::Relaxed);
        self.shared
            .listeners()
            .insert(id, subscription.sink().clone());
        let _registered = Registered(&self.shared, id);
        subscription.cancelled().await;
        Ok(())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let candidates: &[&str] = match (&request.r#ref, request.argument.name.as_str()) {
            (Reference::Prompt(_), "arg1" | "arg2") => &["paris", "park", "party"],
            (Reference::Resource(_), "id") => &["1", "2", "3", "123"],
            _ => &[],
        };
        let values = candidates
            .iter()
            .filter(|value| value.starts_with(&request.argument.value))
            .map(|value| value.to_string())
            .collect();
        let completion =
            CompletionInfo::new(values).map_err(|e| McpError::internal_error(e, None))?;
        Ok(CompleteResult::new(completion))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        // 2026-07-28 removed logging/setLevel: requests carry their level in `_meta`.
        if is_2026(&ctx) {
            return Err(McpError::method_not_found::<SetLevelRequestMethod>());
        }
        *self.log_level.lock().unwrap_or_else(|e| e.into_inner()) = request.level;
        Ok(())
    }
}
