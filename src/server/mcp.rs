//! The MCP tools: `generate`, `chat` and `list_models`.
//!
//! Every generated text delta goes to the client as `notifications/progress` on the request's
//! own stream when the request carries a progress token: `progress` counts the tokens so far,
//! `total` is `max_tokens`, `message` is the new text. Concatenating the messages gives exactly
//! the final text.
//!
//! Errors follow the MCP specification: protocol faults (unknown tool, malformed JSON-RPC) are
//! JSON-RPC errors, and so is a full generation queue (the server, not the request, is at
//! fault); problems with a call's arguments or with generating (wrong types, an unknown model, a
//! prompt past the context window, an engine failure) are tool results with `isError: true`
//! (SEP-1303), so that a calling model can read the message and correct itself.

use std::sync::Arc;

use futures::StreamExt;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::{ToolCallContext, schema_for_output};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestMethod,
    CompleteRequestParams, CompleteResult, ContentBlock, ErrorCode, Implementation,
    ListPromptsRequestMethod, ListPromptsResult, ListResourceTemplatesRequestMethod,
    ListResourceTemplatesResult, ListResourcesRequestMethod, ListResourcesResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ServerState;
use super::generation::Generation;
use super::invalid_argument::InvalidArgument;
use super::metrics::Frontend;
use crate::engine::{
    ChatMessage, Constraint, FinishReason, GenerateRequest, ModelStatus, SamplingParams, Summary,
    TokenEvent,
};
use crate::error::Error;

/// Sampling options shared by `generate` and `chat`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct GenerationOptions {
    /// Most tokens to generate (default 256).
    #[schemars(range(min = 1), extend("default" = 256))]
    pub max_tokens: Option<u32>,
    /// Sampling temperature; 0 always picks the most likely token (default 0.7).
    #[schemars(range(min = 0.0), extend("default" = 0.7))]
    pub temperature: Option<f64>,
    /// Nucleus sampling: keep the most likely tokens up to this total probability (default 0.95).
    #[schemars(extend("exclusiveMinimum" = 0, "maximum" = 1, "default" = 0.95))]
    pub top_p: Option<f64>,
    /// Sample among the k most likely tokens; 0 means all (default 40).
    #[schemars(extend("default" = 40))]
    pub top_k: Option<u32>,
    /// Divides the scores of recently used tokens; 1 turns it off (default 1.1).
    #[schemars(extend("exclusiveMinimum" = 0, "default" = 1.1))]
    pub repeat_penalty: Option<f32>,
    /// Random seed; the same seed and options give the same text.
    pub seed: Option<u64>,
    /// Stop before any of these texts; they are not part of the result.
    pub stop: Option<Vec<String>>,
    /// The model: a size tier (`small`, `medium`, `large`), a tier and backend
    /// (`medium/huggingface`), or a registry name (see `list_models`). Loaded on first use.
    /// Default: the model the server started with.
    // 2026-era clients mirror it into an `Mcp-Param-Model` header (SEP-2243) that load balancers
    // route on without reading bodies; rmcp checks that header against this argument. Headers
    // mirror only primitive-typed arguments: a plain `string` (absent means the default).
    #[schemars(extend("x-mcp-header" = "Model", "type" = "string"))]
    pub model: Option<String>,
    /// Hold the text to JSON valid against this JSON schema; the structured result's `json`
    /// then has the parsed value.
    pub json_schema: Option<serde_json::Map<String, serde_json::Value>>,
    /// Hold the text to this grammar, in Lark syntax as llguidance reads it (a regular
    /// expression is `start: /[0-9]+/`). Not with `json_schema`.
    pub grammar: Option<String>,
}

impl GenerationOptions {
    fn params(&self) -> SamplingParams {
        let defaults = SamplingParams::default();
        SamplingParams {
            max_tokens: self.max_tokens.map_or(defaults.max_tokens, |n| n as usize),
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.map_or(defaults.top_k, |k| k as usize),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(defaults.repeat_penalty),
            seed: self.seed,
            stop: self.stop.clone().unwrap_or_default(),
            constraint: match (&self.json_schema, &self.grammar) {
                (Some(schema), _) => Some(Constraint::JsonSchema(schema.clone().into())),
                (None, Some(grammar)) => Some(Constraint::Lark(grammar.clone())),
                (None, None) => None,
            },
            ..defaults
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(transform = for_form_clients)]
pub struct GenerateArgs {
    /// The text to continue.
    pub prompt: String,
    #[serde(flatten)]
    pub options: GenerationOptions,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(transform = for_form_clients)]
pub struct ChatArgs {
    /// The conversation so far, oldest first; the reply continues it as the assistant.
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub options: GenerationOptions,
}

/// The structured result of `generate` and `chat`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = for_form_clients)]
pub struct GenerationResult {
    /// The generated text.
    pub text: String,
    /// Why generation ended: `stop` (end of sequence, end of turn or a stop text), `length`
    /// (max_tokens), `cancelled`, or `error`.
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache instead of being computed.
    pub cached_tokens: usize,
    /// Tokens generated, including a final end-of-sequence token.
    pub completion_tokens: usize,
    /// Seconds from the request reaching the model to its first token.
    pub time_to_first_token: f64,
    /// Generation speed after the first token.
    pub tokens_per_second: f64,
    /// The model that answered.
    pub model: String,
    /// The text parsed, for a call with `json_schema` whose text is complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
}

/// Schemas as form-filling clients read them:
/// - schemars marks unsigned integers with formats (`uint`, `uint32`…) that JSON Schema
///   validators do not know and warn about on every call; the `minimum: 0` beside them already
///   says it;
/// - an optional argument is typed `["integer", "null"]`, and clients that convert command-line
///   or form text by the schema's type (the MCP Inspector up to 0.15 converts only a type that is
///   exactly `"integer"`/`"number"`) send `"5"` for 5: an argument that may be left out is typed
///   plainly (sending `null` still means the default).
fn for_form_clients(schema: &mut schemars::Schema) {
    fn walk(map: &mut serde_json::Map<String, serde_json::Value>) {
        if map
            .get("format")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|format| format.starts_with("uint"))
        {
            map.remove("format");
        }
        if let Some(serde_json::Value::Array(types)) = map.get("type")
            && let [one] = types.iter().filter(|t| *t != "null").collect::<Vec<_>>()[..]
        {
            let one = one.clone();
            map.insert("type".into(), one);
        }
        for value in map.values_mut() {
            match value {
                serde_json::Value::Object(inner) => walk(inner),
                serde_json::Value::Array(items) => items
                    .iter_mut()
                    .filter_map(serde_json::Value::as_object_mut)
                    .for_each(walk),
                _ => {}
            }
        }
    }
    if let Some(map) = schema.as_object_mut() {
        walk(map);
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ModelList {
    pub models: Vec<ModelStatus>,
}

#[derive(Clone)]
pub struct WickMcp {
    state: Arc<ServerState>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl WickMcp {
    pub fn new(state: Arc<ServerState>) -> Self {
        Self {
            state,
            tool_router: Self::tool_router(),
        }
    }

    /// Continue a text with a language model. With a progress token, every new piece of text
    /// arrives as a progress notification while the model writes.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<GenerationResult>()
    )]
    async fn generate(
        &self,
        Parameters(args): Parameters<GenerateArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let request = GenerateRequest::prompt(args.prompt).with_params(args.options.params());
        self.run(args.options.model.as_deref(), request, ctx).await
    }

    /// Reply to a conversation with the model's chat template applied; the reply ends at the
    /// end of the assistant's turn. Streams like `generate`.
    #[tool(
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<GenerationResult>()
    )]
    async fn chat(
        &self,
        Parameters(args): Parameters<ChatArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let request = GenerateRequest::chat(args.messages).with_params(args.options.params());
        self.run(args.options.model.as_deref(), request, ctx).await
    }

    /// The models this server can run, which of them are loaded, and on what device.
    #[tool(annotations(read_only_hint = true, open_world_hint = false))]
    async fn list_models(&self) -> Json<ModelList> {
        Json(ModelList {
            models: self.state.manager.status(),
        })
    }
}

impl WickMcp {
    async fn run(
        &self,
        model: Option<&str>,
        request: GenerateRequest,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        // Tracked so that a graceful shutdown lets this generation finish.
        let work = self.stream(model, request, ctx);
        self.state.in_flight.track_future(work).await
    }

    async fn stream(
        &self,
        model: Option<&str>,
        request: GenerateRequest,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        // The legacy SSE transport marks its requests; everything else came through /mcp.
        let frontend = ctx
            .extensions
            .get::<Frontend>()
            .copied()
            .unwrap_or(Frontend::Mcp);
        let total = request.params.max_tokens as f64;
        let json = matches!(request.params.constraint, Some(Constraint::JsonSchema(_)));
        let started = Generation::start(&self.state, frontend, model, request, Some(&ctx.ct));
        let mut generation = match started.await {
            Ok(generation) => generation,
            Err(error) => {
                return match &error {
                    Error::Busy { model, .. } => Err(McpError::new(
                        ErrorCode(-32000),
                        error.to_string(),
                        Some(serde_json::json!({ "reason": "busy", "model": model })),
                    )),
                    _ => Ok(tool_error(&error)),
                };
            }
        };
        let progress_token = ctx.meta.get_progress_token();
        let mut text = String::new();
        let mut summary = None;
        while let Some(event) = generation.tokens.next().await {
            match event {
                TokenEvent::Token(token) if !token.text.is_empty() => {
                    text.push_str(&token.text);
                    if let Some(progress_token) = &progress_token {
                        let progress = ProgressNotificationParam::new(
                            progress_token.clone(),
                            token.index as f64,
                        )
                        .with_total(total)
                        .with_message(token.text);
                        // A client that went away is noticed by the engine through ctx.ct.
                        let _ = ctx.peer.notify_progress(progress).await;
                    }
                }
                TokenEvent::Token(_) => {}
                TokenEvent::Done(done) => summary = Some(done),
            }
        }
        let summary = Generation::settle(&self.state, summary);
        Ok(result(text, summary, &generation.engine.info().name, json))
    }
}

/// The tool result of a generation: its text, or its error (a failure, or a cut-off partial
/// text), with the structured result either way.
fn result(text: String, summary: Summary, model: &str, json: bool) -> CallToolResult {
    let complete = json && summary.finish_reason == FinishReason::Stop;
    let structured = GenerationResult {
        json: complete.then(|| serde_json::from_str(&text).ok()).flatten(),
        text: text.clone(),
        finish_reason: summary.finish_reason,
        prompt_tokens: summary.prompt_tokens,
        cached_tokens: summary.cached_tokens,
        completion_tokens: summary.completion_tokens,
        time_to_first_token: summary.time_to_first_token.as_secs_f64(),
        tokens_per_second: summary.decode_tokens_per_second,
        model: model.to_string(),
    };
    let mut result = match (summary.finish_reason, summary.error) {
        (FinishReason::Error, error) => CallToolResult::error(vec![ContentBlock::text(format!(
            "generation failed: {}",
            error.as_deref().unwrap_or("unknown error")
        ))]),
        // Cut off: the partial text is still in the structured result.
        (_, Some(error)) => CallToolResult::error(vec![ContentBlock::text(format!(
            "{error}; the partial text is in the structured result"
        ))]),
        (_, None) => CallToolResult::success(vec![ContentBlock::text(text)]),
    };
    result.structured_content = serde_json::to_value(structured).ok();
    result
}

/// Checks the arguments of `generate` and `chat` field by field before rmcp parses them, so that
/// a wrong one is named, with what was given and what is accepted: rmcp's own message names no
/// field, and serde loses the path inside the flattened options.
fn check_arguments(request: &CallToolRequestParams) -> Result<(), String> {
    fn named<T: serde::de::DeserializeOwned>(arguments: &serde_json::Value) -> Result<(), String> {
        serde_path_to_error::deserialize::<_, T>(arguments)
            .map(drop)
            .map_err(|e| {
                let InvalidArgument { name, problem } = e.into();
                format!(
                    "invalid argument `{name}`: {problem} (the tool's input schema lists what \
                     each argument takes)"
                )
            })
    }
    let arguments = serde_json::Value::Object(request.arguments.clone().unwrap_or_default());
    let given = |name: &str| arguments.get(name).is_some_and(|v| !v.is_null());
    if given("json_schema") && given("grammar") {
        return Err("give `json_schema` or `grammar`, not both".into());
    }
    match request.name.as_ref() {
        "generate" => named::<GenerationOptions>(&arguments).and(named::<GenerateArgs>(&arguments)),
        "chat" => named::<GenerationOptions>(&arguments).and(named::<ChatArgs>(&arguments)),
        _ => Ok(()),
    }
}

/// A failed call the client can act on, as a tool result with `isError: true`.
fn tool_error(error: &Error) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(error.to_string())])
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for WickMcp {
    /// rmcp's router answers an unknown tool with a bare "tool not found"; name it and the
    /// tools that exist instead.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if let Err(message) = check_arguments(&request) {
            return Ok(CallToolResult::error(vec![ContentBlock::text(message)]).into());
        }
        if !self.tool_router.has_route(&request.name) {
            let available: Vec<String> = self
                .tool_router
                .list_all()
                .into_iter()
                .map(|tool| tool.name.to_string())
                .collect();
            return Err(McpError::invalid_params(
                format!(
                    "unknown tool `{}`; this server has: {}",
                    request.name,
                    available.join(", ")
                ),
                Some(serde_json::json!({ "tool": request.name, "available": available })),
            ));
        }
        self.tool_router
            .call(ToolCallContext::new(self, request, context))
            .await
    }

    // wick declares only the tools capability. rmcp's defaults answer prompts/list,
    // resources/list, resources/templates/list and completion/complete with empty results
    // anyway, which tells a 2026-07-28 client the server handles them (the conformance suite's
    // server-stateless check sep-2575-server-declares-prompts-in-discover fails on it). Say
    // "method not found" instead, as for every other method wick does not declare.

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Err(McpError::method_not_found::<ListPromptsRequestMethod>())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Err(McpError::method_not_found::<ListResourcesRequestMethod>())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Err(McpError::method_not_found::<
            ListResourceTemplatesRequestMethod,
        >())
    }

    async fn complete(
        &self,
        _request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        Err(McpError::method_not_found::<CompleteRequestMethod>())
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("wick", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "wick runs language models. Call `generate` to continue a text or `chat` to \
                 answer a conversation; send a progressToken to receive each new piece of text \
                 as a notifications/progress message while the model writes. `list_models` \
                 shows the models available.",
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doc comments on the argument and result types become the tools' schema descriptions,
    /// which clients show to people and models: rustdoc's link syntax must not leak into them.
    /// Clients validate arguments and results with JSON Schema validators (ajv in the MCP
    /// Inspector), which warn on every `format` they do not know, such as schemars' `uint`.
    #[test]
    fn tool_schemas_use_only_formats_validators_know() {
        fn formats(schema: &serde_json::Value, found: &mut Vec<String>) {
            match schema {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(format)) = map.get("format") {
                        found.push(format.clone());
                    }
                    map.values().for_each(|v| formats(v, found));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| formats(v, found)),
                _ => {}
            }
        }
        // ajv-formats' numeric formats; wick's tools use no string formats.
        let known = ["int32", "int64", "float", "double"];
        for tool in WickMcp::tool_router().list_all() {
            let mut found = Vec::new();
            formats(&serde_json::to_value(&tool).unwrap_or_default(), &mut found);
            let unknown: Vec<_> = found
                .iter()
                .filter(|f| !known.contains(&f.as_str()))
                .collect();
            assert!(unknown.is_empty(), "{}: {unknown:?}", tool.name);
        }
    }

    /// The schema says what `SamplingParams::validate` refuses.
    #[test]
    fn input_schemas_state_the_limits() {
        let tools = WickMcp::tool_router().list_all();
        for tool in tools.iter().filter(|t| t.name != "list_models") {
            let properties = &tool.input_schema["properties"];
            assert_eq!(properties["max_tokens"]["minimum"], 1, "{}", tool.name);
            assert_eq!(properties["temperature"]["minimum"], 0.0);
            assert_eq!(properties["top_p"]["exclusiveMinimum"], 0);
            assert_eq!(properties["top_p"]["maximum"], 1);
            assert_eq!(properties["repeat_penalty"]["exclusiveMinimum"], 0);
        }
    }

    /// Every optional argument has one plain type (Inspector 0.15 sent `max_tokens=5` as the
    /// string "5" for `["integer", "null"]`), and the defaults the schema shows are the ones a
    /// call gets.
    #[test]
    fn optional_arguments_have_plain_types_and_the_real_defaults() {
        let defaults = SamplingParams::default();
        for tool in WickMcp::tool_router().list_all() {
            let properties = tool.input_schema["properties"].as_object().cloned();
            for (name, property) in properties.unwrap_or_default() {
                assert!(
                    property["type"].is_string(),
                    "{}.{name}: {property}",
                    tool.name
                );
            }
            if tool.name == "list_models" {
                continue;
            }
            let shown = |name: &str| tool.input_schema["properties"][name]["default"].clone();
            assert_eq!(shown("max_tokens"), defaults.max_tokens);
            assert_eq!(shown("temperature"), defaults.temperature);
            assert_eq!(shown("top_p"), defaults.top_p);
            assert_eq!(shown("top_k"), defaults.top_k);
            let repeat_penalty = shown("repeat_penalty").as_f64().map(|v| v as f32);
            assert_eq!(repeat_penalty, Some(defaults.repeat_penalty));
        }
    }

    #[test]
    fn tool_schemas_carry_no_rustdoc_links() {
        let tools = WickMcp::tool_router().list_all();
        assert_eq!(tools.len(), 3);
        for tool in tools {
            let json = serde_json::to_string(&tool).unwrap_or_default();
            assert!(json.contains("inputSchema"), "{json}");
            for leak in ["[`", "`]"] {
                assert!(!json.contains(leak), "{}: {leak} in {json}", tool.name);
            }
        }
    }
}
