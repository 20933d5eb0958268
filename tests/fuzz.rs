//! Property-based fuzzing of the MCP endpoints with `proptest`: a few thousand requests to
//! `/mcp` and `/sse/messages` with mutated JSON-RPC bodies (values and types changed, fields
//! dropped and added, deep nesting, corrupted bytes), random HTTP methods and random or wrong
//! headers (`Accept`, `Content-Type`, `Mcp-Session-Id`, `Mcp-Protocol-Version`, `Mcp-Method`,
//! `Mcp-Name`, `Last-Event-ID`), against one `wick serve` process.
//!
//! It proves that every answer is 2xx or 4xx (503 and 429 only as the documented session-limit
//! and busy refusals), never a dropped connection; that a POST to `/mcp` whose body is not one
//! JSON object gets 400 with a JSON-RPC error; that a JSON answer to a request with an id is a
//! JSON-RPC response or error for that id, and an event stream ends with one; and that the
//! server afterwards serves a normal streamed call and `/health`, with no panic in its log.

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

/// Cases per property; together a few thousand requests.
const BODIES: u32 = 2500;
const HEADERS: u32 = 1200;
const LEGACY: u32 = 1300;
/// A request that takes this long is a hang (each one generates at most two tokens).
const HANG: Duration = Duration::from_secs(60);

/// Placeholders in generated requests, replaced when sent by what the server handed out.
const SESSION: &str = "<session>";
const LEGACY_SESSION: &str = "<legacy>";
const BODY_METHOD: &str = "<method>";
const BODY_NAME: &str = "<name>";

#[test]
fn mutated_requests_get_2xx_or_4xx_and_json_rpc_errors_and_the_server_keeps_serving() {
    // The server's log, kept where `WICK_FUZZ_LOG` says, else removed with the test.
    let logs = tempfile::tempdir().unwrap();
    let log = std::env::var_os("WICK_FUZZ_LOG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| logs.path().join("wick-serve.log"));
    let server = ServerProcess::serve_logged(&[], &log);
    let target = Target::new(&server.base);
    let started = Instant::now();

    let properties: [(&str, u32, BoxedStrategy<Request>); 3] = [
        ("mutated bodies", BODIES, mutated_bodies().boxed()),
        (
            "methods and headers",
            HEADERS,
            methods_and_headers().boxed(),
        ),
        ("legacy SSE messages", LEGACY, legacy_messages().boxed()),
    ];
    for (name, cases, strategy) in properties {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, |request| target.check(&request)) {
            panic!("{name}: {e}");
        }
    }
    let elapsed = started.elapsed();

    // A normal streamed call, /health, and a clean log.
    let (streamed, result) = target.generate();
    assert_eq!(result["structuredContent"]["text"], streamed.as_str());
    assert_eq!(result["isError"], false, "{result}");
    let health = target.http.get(format!("{}/health", target.base)).send();
    assert_eq!(health.unwrap().status(), 200);
    let stats = server.stats();
    drop(server);
    let tally = target.tally.lock().unwrap();
    eprintln!(
        "fuzz: {} requests in {:.1}s; statuses {:?}; {} JSON-RPC errors in JSON, {} event \
         streams; legacy stream messages {}; engine {stats}",
        tally.requests,
        elapsed.as_secs_f64(),
        tally.statuses,
        tally.json_errors,
        tally.streams,
        tally.legacy_messages.lock().unwrap(),
    );
    let bad_events = tally.legacy_bad.lock().unwrap();
    assert!(
        bad_events.is_empty(),
        "the legacy stream sent: {bad_events:?}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let panics: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "the server panicked: {panics:#?}");
}

/// The server under test, with a live 2025-era session and a live legacy SSE session to aim
/// requests at (reopened when a request ends them).
struct Target {
    base: String,
    http: reqwest::blocking::Client,
    session: Mutex<Option<String>>,
    legacy: Mutex<Option<String>>,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    requests: u64,
    statuses: BTreeMap<u16, u64>,
    json_errors: u64,
    streams: u64,
    legacy_messages: Arc<Mutex<u64>>,
    /// Events on a legacy stream that are not JSON-RPC messages.
    legacy_bad: Arc<Mutex<Vec<String>>>,
}

impl Target {
    fn new(base: &str) -> Self {
        Self {
            base: base.to_string(),
            // Pooled connections, as real clients keep them: an answer that leaves a request body
            // unread (a refusal, or a 204 to a DELETE with a body) must say `Connection: close`,
            // or the next request races hyper closing the connection and fails.
            http: reqwest::blocking::Client::builder()
                .timeout(HANG)
                .build()
                .unwrap(),
            session: Mutex::new(None),
            legacy: Mutex::new(None),
            tally: Mutex::default(),
        }
    }

    /// The live 2025-era session, opened if there is none.
    fn session(&self) -> String {
        let mut session = self.session.lock().unwrap();
        if session.is_none() {
            let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "fuzz", "version": "0"}}});
            let response = self
                .http
                .post(format!("{}/mcp", self.base))
                .header("accept", "application/json, text/event-stream")
                .json(&init)
                .send()
                .unwrap();
            assert_eq!(response.status(), 200);
            let id = response.headers()["mcp-session-id"].to_str().unwrap();
            *session = Some(id.to_string());
            drop(response.text());
            let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
            let response = self
                .http
                .post(format!("{}/mcp", self.base))
                .header("accept", "application/json, text/event-stream")
                .header("mcp-session-id", session.as_deref().unwrap())
                .header("mcp-protocol-version", "2025-11-25")
                .json(&initialized)
                .send()
                .unwrap();
            assert_eq!(response.status(), 202);
        }
        session.clone().unwrap()
    }

    /// The live legacy SSE session, opened (and initialized) if there is none. A thread reads
    /// its events, as a client must, checking that each is a JSON-RPC message.
    fn legacy(&self) -> String {
        let mut legacy = self.legacy.lock().unwrap();
        if legacy.is_none() {
            let stream = reqwest::blocking::Client::new()
                .get(format!("{}/sse", self.base))
                .send()
                .unwrap();
            assert_eq!(stream.status(), 200);
            let mut lines = BufReader::new(stream).lines();
            let endpoint = lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|l| l.strip_prefix("data: ").map(str::to_string))
                .expect("the endpoint event");
            let id = endpoint
                .split_once("sessionId=")
                .expect("the endpoint names the session")
                .1
                .to_string();
            let tally = self.tally.lock().unwrap();
            let (count, bad) = (tally.legacy_messages.clone(), tally.legacy_bad.clone());
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    let Some(data) = line.strip_prefix("data: ") else {
                        continue;
                    };
                    *count.lock().unwrap() += 1;
                    let message = serde_json::from_str::<Value>(data);
                    if !message.is_ok_and(|m| m["jsonrpc"] == "2.0") {
                        bad.lock().unwrap().push(data.to_string());
                    }
                }
            });
            let url = format!("{}{endpoint}", self.base);
            let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2024-11-05", "capabilities": {},
                "clientInfo": {"name": "fuzz", "version": "0"}}});
            let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
            for message in [init, initialized] {
                let response = self.http.post(&url).json(&message).send().unwrap();
                assert_eq!(response.status(), 202);
            }
            *legacy = Some(id);
        }
        legacy.clone().unwrap()
    }

    /// Sends `request` and checks the answer.
    fn check(&self, request: &Request) -> Result<(), TestCaseError> {
        let session = self.session();
        let legacy = self.legacy();
        let fill = |value: &str| {
            value
                .replace(SESSION, &session)
                .replace(LEGACY_SESSION, &legacy)
        };
        let parsed: Option<Value> = serde_json::from_slice(&request.body).ok();
        let url = format!("{}{}", self.base, fill(&request.path));
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap();
        let mut builder = self.http.request(method.clone(), &url);
        for (name, value) in &request.headers {
            let value = match value.as_str() {
                BODY_METHOD => parsed.as_ref().map(|b| b["method"].to_string()),
                BODY_NAME => parsed.as_ref().map(|b| b["params"]["name"].to_string()),
                value => Some(fill(value)),
            };
            // The body's own method and tool name, without JSON's quotes.
            let value = value.map(|v| v.trim_matches('"').to_string());
            if let Some(value) = value.filter(|v| reqwest::header::HeaderValue::from_str(v).is_ok())
            {
                builder = builder.header(*name, value);
            }
        }
        if !request.body.is_empty() {
            builder = builder.body(request.body.clone());
        }
        let response = builder
            .send()
            .map_err(|e| TestCaseError::fail(format!("no answer: {e:?}")))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let session_header = request
            .headers
            .iter()
            .find(|(name, _)| *name == "mcp-session-id")
            .map(|(_, v)| v.as_str());
        {
            let mut tally = self.tally.lock().unwrap();
            tally.requests += 1;
            *tally.statuses.entry(status).or_default() += 1;
        }
        // A live session that a request ended is opened again for the next case.
        let ended = (method == reqwest::Method::DELETE && status < 300) || status == 404;
        if session_header == Some(SESSION) && ended {
            *self.session.lock().unwrap() = None;
        }
        let to_legacy = request.path.starts_with("/sse/messages");
        if to_legacy && request.path.contains(LEGACY_SESSION) && (status == 404 || status == 410) {
            *self.legacy.lock().unwrap() = None;
        }

        // An event stream opened by GET (a session's standalone stream, a resumption) stays
        // open: the status is the answer.
        let streaming = content_type.starts_with("text/event-stream");
        let body = if streaming && method != reqwest::Method::POST {
            String::new()
        } else {
            response
                .text()
                .map_err(|e| TestCaseError::fail(format!("{status}: the body broke: {e}")))?
        };
        let context = || format!("{status} {content_type}: {body:.400}");

        prop_assert!(
            status < 500 || documented_refusal(status, &body),
            "a server error: {}",
            context()
        );
        if to_legacy {
            return Ok(()); // answers come on the event stream
        }
        let is_object = parsed.as_ref().is_some_and(Value::is_object);
        if method == reqwest::Method::POST && !is_object && status != 413 {
            let error: Option<Value> = serde_json::from_str(&body).ok();
            let code = error.as_ref().map(|e| e["error"]["code"].clone());
            prop_assert!(
                status == 400 && matches!(code.and_then(|c| c.as_i64()), Some(-32700 | -32600)),
                "a body that is not one JSON object wants 400 and a JSON-RPC error: {}",
                context()
            );
        }
        prop_assert!(
            !(status == 415 && body.contains("JSON-RPC")),
            "a JSON object that is no JSON-RPC message wants 400 and -32600: {}",
            context()
        );
        // What answered a request (an object with an id and a method) must be its response.
        let id = parsed
            .as_ref()
            .filter(|b| b.get("method").is_some())
            .and_then(|b| b.get("id"))
            .cloned();
        if content_type.starts_with("application/json") {
            let message: Value = serde_json::from_str(&body)
                .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {}", context())))?;
            if let Some(id) = &id {
                prop_assert!(
                    is_response(&message, id),
                    "not a JSON-RPC response to id {}: {}",
                    id,
                    context()
                );
            }
            if message.get("error").is_some() {
                self.tally.lock().unwrap().json_errors += 1;
            }
        } else if streaming && method == reqwest::Method::POST {
            self.tally.lock().unwrap().streams += 1;
            let messages: Vec<Value> = body
                .split("\n\n")
                .filter_map(|event| {
                    event
                        .lines()
                        .find_map(|l| l.strip_prefix("data:"))
                        .map(str::trim)
                })
                .filter(|data| !data.is_empty())
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()
                .map_err(|e| TestCaseError::fail(format!("an event is not JSON ({e})")))?;
            if let Some(id) = &id {
                prop_assert!(
                    messages.last().is_some_and(|m| is_response(m, id)),
                    "the stream does not end with the response to id {}: {}",
                    id,
                    context()
                );
            }
        }
        Ok(())
    }

    /// A normal stateless `generate` call: the streamed text and the result.
    fn generate(&self) -> (String, Value) {
        let request = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "generate",
            "arguments": {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0},
            "_meta": {"progressToken": "t", "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}}}});
        let response = self
            .http
            .post(format!("{}/mcp", self.base))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "generate")
            .json(&request)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        let (mut streamed, mut result) = (String::new(), None);
        for line in response.text().unwrap().lines() {
            let Some(message) = line
                .strip_prefix("data:")
                .and_then(|d| serde_json::from_str::<Value>(d.trim()).ok())
            else {
                continue;
            };
            if message["method"] == "notifications/progress" {
                streamed.push_str(message["params"]["message"].as_str().unwrap());
            } else if let Some(r) = message.get("result") {
                result = Some(r.clone());
            }
        }
        (streamed, result.expect("a result"))
    }
}

/// The refusals that may come as 503 or 429: the session limit, a full queue.
fn documented_refusal(status: u16, body: &str) -> bool {
    (status == 503 || status == 429) && (body.contains("--max-sessions") || body.contains("busy"))
}

/// A JSON-RPC response or error answering `id` (an error may answer `null`: the id could not be
/// read).
fn is_response(message: &Value, id: &Value) -> bool {
    let answers = &message["id"] == id || message["id"].is_null();
    let result = message.get("result").is_some();
    let error = message
        .get("error")
        .is_some_and(|e| e["code"].is_i64() && e["message"].is_string());
    message["jsonrpc"] == "2.0" && answers && (result != error)
}

/// One HTTP request; header values and the path may hold placeholders.
#[derive(Clone)]
struct Request {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {:?} ", self.method, self.path, self.headers)?;
        match std::str::from_utf8(&self.body) {
            Ok(text) => write!(f, "{text}"),
            Err(_) => write!(f, "{:?}", self.body),
        }
    }
}

// ---- Bodies: valid JSON-RPC messages, mutated ----

/// Well-formed messages of both eras, to mutate.
fn templates() -> Vec<Value> {
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}, "progressToken": "f"});
    vec![
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "fuzz", "version": "0"}}}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": meta}}),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "generate",
            "arguments": {"prompt": "Hello", "max_tokens": 2, "temperature": 0}, "_meta": meta}}),
        json!({"jsonrpc": "2.0", "id": "five", "method": "tools/call", "params": {"name": "chat",
            "arguments": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
            "_meta": {"progressToken": 5}}}),
        json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
               "params": {"name": "list_models", "arguments": {}, "_meta": meta}}),
        json!({"jsonrpc": "2.0", "id": 7, "method": "server/discover", "params": {"_meta": meta}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
               "params": {"requestId": 4, "reason": "fuzz"}}),
        json!({"jsonrpc": "2.0", "id": 8, "method": "resources/list", "params": {}}),
        json!({"jsonrpc": "2.0", "id": 9, "method": "completion/complete", "params": {
            "ref": {"type": "ref/prompt", "name": "x"}, "argument": {"name": "a", "value": "b"}}}),
        json!({"jsonrpc": "2.0", "id": 10, "method": "logging/setLevel", "params": {"level": "debug"}}),
        json!({"jsonrpc": "2.0", "id": 11, "result": {}}),
        json!({"jsonrpc": "2.0", "id": 12, "error": {"code": -32000, "message": "no"}}),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300..1e300f64).prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "2.0",
            "1.0",
            "tools/call",
            "tools/list",
            "generate",
            "chat",
            "list_models",
            "initialize",
            "ping",
            "notifications/cancelled",
            "2025-11-25",
            "2026-07-28",
            "small",
            "no-such-model",
            "\u{0}",
            "\u{1F600}",
            "\\u0000",
        ])
        .prop_map(Value::from),
        // Long strings: a prompt past the context window, a long method name.
        (1usize..40_000).prop_map(|n| Value::from("hello ".repeat(n / 6 + 1))),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            hash_map("[a-z_]{0,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    /// The node at this index (in a walk of the message) becomes this value.
    Replace(usize, Value),
    Remove(usize),
    Insert(usize, String, Value),
    /// The node, wrapped this deep in arrays (or objects).
    Nest(usize, usize, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "jsonrpc",
            "id",
            "method",
            "params",
            "result",
            "error",
            "name",
            "arguments",
            "_meta",
            "progressToken",
            "prompt",
            "messages",
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "seed",
            "stop",
            "model",
            "requestId",
        ])
        .prop_map(str::to_string),
        "\\PC{0,12}",
    ];
    prop_oneof![
        4 => (any::<usize>(), json_value()).prop_map(|(at, v)| Mutation::Replace(at, v)),
        2 => any::<usize>().prop_map(Mutation::Remove),
        2 => (any::<usize>(), key, json_value()).prop_map(|(at, k, v)| Mutation::Insert(at, k, v)),
        1 => (any::<usize>(), 1usize..300, any::<bool>())
            .prop_map(|(at, depth, array)| Mutation::Nest(at, depth, array)),
    ]
}

#[derive(Clone, Debug)]
enum ByteOp {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn byte_op() -> impl Strategy<Value = ByteOp> {
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"{}[]\",:\\0123456789eE-+.ntf \n".to_vec()),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, b)| ByteOp::Flip(at, b)),
        (any::<usize>(), byte).prop_map(|(at, b)| ByteOp::Insert(at, b)),
        any::<usize>().prop_map(ByteOp::Delete),
        any::<usize>().prop_map(ByteOp::Truncate),
    ]
}

/// Paths to every node of `value`, the root first.
fn paths(value: &Value) -> Vec<Vec<Value>> {
    let mut all = vec![vec![]];
    let mut i = 0;
    while i < all.len() {
        let path = all[i].clone();
        let node = at(value, &path).unwrap();
        let children: Vec<Value> = match node {
            Value::Object(map) => map.keys().map(|k| Value::from(k.as_str())).collect(),
            Value::Array(items) => (0..items.len()).map(Value::from).collect(),
            _ => vec![],
        };
        for child in children {
            let mut deeper = path.clone();
            deeper.push(child);
            all.push(deeper);
        }
        i += 1;
    }
    all
}

fn at<'a>(value: &'a Value, path: &[Value]) -> Option<&'a Value> {
    path.iter().try_fold(value, |node, step| match step {
        Value::String(key) => node.get(key.as_str()),
        step => node.get(step.as_u64()? as usize),
    })
}

fn at_mut<'a>(value: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |node, step| match step {
        Value::String(key) => node.get_mut(key.as_str()),
        step => node.get_mut(step.as_u64()? as usize),
    })
}

fn mutate(message: &mut Value, mutation: &Mutation) {
    let all = paths(message);
    let pick = |at: usize| all[at % all.len()].clone();
    match mutation {
        Mutation::Replace(i, value) => *at_mut(message, &pick(*i)).unwrap() = value.clone(),
        Mutation::Remove(i) => {
            let mut path = pick(*i);
            let Some(last) = path.pop() else { return };
            match (at_mut(message, &path).unwrap(), last) {
                (Value::Object(map), Value::String(key)) => drop(map.remove(&key)),
                (Value::Array(items), index) => {
                    drop(items.remove(index.as_u64().unwrap() as usize))
                }
                _ => {}
            }
        }
        Mutation::Insert(i, key, value) => match at_mut(message, &pick(*i)).unwrap() {
            Value::Object(map) => drop(map.insert(key.clone(), value.clone())),
            Value::Array(items) => items.push(value.clone()),
            _ => {}
        },
        Mutation::Nest(i, depth, array) => {
            let node = at_mut(message, &pick(*i)).unwrap();
            for _ in 0..*depth {
                let inner = node.take();
                *node = if *array {
                    json!([inner])
                } else {
                    json!({ "a": inner })
                };
            }
        }
    }
}

/// Tool calls that might be valid generate at most two tokens, so that the fuzz does not queue
/// long generations: a missing or larger `max_tokens` (in `u32`'s range, where it would be
/// taken) becomes 2; wrong types and out-of-range values stay, to be refused.
fn keep_generations_short(message: &mut Value) {
    if let Some(arguments) = message
        .pointer_mut("/params/arguments")
        .and_then(Value::as_object_mut)
    {
        let long = arguments.get("max_tokens").is_none_or(|n| {
            n.as_f64()
                .is_some_and(|n| n > 2.0 && n <= f64::from(u32::MAX))
        });
        if long {
            arguments.insert("max_tokens".into(), json!(2));
        }
    }
}

fn corrupt(bytes: &mut Vec<u8>, op: &ByteOp) {
    let at = |i: usize, len: usize| i % len.max(1);
    match *op {
        ByteOp::Flip(i, b) if !bytes.is_empty() => {
            let i = at(i, bytes.len());
            bytes[i] = b;
        }
        ByteOp::Insert(i, b) => bytes.insert(at(i, bytes.len() + 1), b),
        ByteOp::Delete(i) if !bytes.is_empty() => drop(bytes.remove(at(i, bytes.len()))),
        ByteOp::Truncate(i) => bytes.truncate(at(i, bytes.len() + 1)),
        _ => {}
    }
}

/// A template, mutated, serialized and maybe corrupted byte by byte.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let templates = templates();
    let mutated = (
        0..templates.len(),
        vec(mutation(), 0..4),
        prop_oneof![3 => Just(vec![]), 1 => vec(byte_op(), 1..4)],
    )
        .prop_map(move |(which, mutations, byte_ops)| {
            let mut message = templates[which].clone();
            for mutation in &mutations {
                mutate(&mut message, mutation);
            }
            keep_generations_short(&mut message);
            let mut bytes = serde_json::to_vec(&message).unwrap();
            for op in &byte_ops {
                corrupt(&mut bytes, op);
            }
            // Corruption that still parses may have made a number larger.
            if let Ok(mut message) = serde_json::from_slice::<Value>(&bytes) {
                keep_generations_short(&mut message);
                bytes = serde_json::to_vec(&message).unwrap();
            }
            bytes
        });
    prop_oneof![
        8 => mutated,
        1 => vec(any::<u8>(), 0..64),
        1 => Just(vec![]),
    ]
}

// ---- Headers ----

const HEADER_NAMES: [&str; 7] = [
    "accept",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
];

/// Values for header `name`: right ones, wrong ones, garbage.
fn header_value(name: &'static str) -> BoxedStrategy<String> {
    let known: Vec<&str> = match name {
        "accept" => vec![
            "application/json, text/event-stream",
            "application/json",
            "text/event-stream",
            "*/*",
            "text/html",
            "",
        ],
        "content-type" => vec![
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
        ],
        "mcp-session-id" => vec![
            SESSION,
            SESSION,
            LEGACY_SESSION,
            "00000000-0000-0000-0000-000000000000",
            "",
        ],
        "mcp-protocol-version" => vec![
            "2025-11-25",
            "2026-07-28",
            "2025-06-18",
            "2025-03-26",
            "2024-11-05",
            "1999-01-01",
        ],
        "mcp-method" => vec![
            BODY_METHOD,
            BODY_METHOD,
            "tools/call",
            "tools/list",
            "initialize",
        ],
        "mcp-name" => vec![BODY_NAME, BODY_NAME, "generate", "chat"],
        _ => vec![
            "0/0",
            "1/0",
            "0/3",
            "99/99",
            "0",
            "/",
            "-1/-1",
            "0/0/0",
            "18446744073709551616/0",
        ],
    };
    prop_oneof![
        4 => prop::sample::select(known).prop_map(str::to_string),
        1 => "[ -~]{0,24}",
    ]
    .boxed()
}

/// Consistent header sets of each kind of client, to start from.
fn profile(kind: u8) -> Vec<(&'static str, String)> {
    let both = ("accept", "application/json, text/event-stream".to_string());
    let json = ("content-type", "application/json".to_string());
    match kind {
        // A 2026-07-28 stateless client.
        0 => vec![
            both,
            json,
            ("mcp-protocol-version", "2026-07-28".into()),
            ("mcp-method", BODY_METHOD.into()),
            ("mcp-name", BODY_NAME.into()),
        ],
        // A 2025-11-25 client in its session.
        1 => vec![
            both,
            json,
            ("mcp-session-id", SESSION.into()),
            ("mcp-protocol-version", "2025-11-25".into()),
        ],
        // A 2025-11-25 client before `initialize` answered.
        2 => vec![both, json],
        _ => vec![],
    }
}

/// A client's header set, with a few headers changed, dropped or added.
fn headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let change = (0..HEADER_NAMES.len()).prop_flat_map(|i| {
        let name = HEADER_NAMES[i];
        (Just(name), prop::option::weighted(0.8, header_value(name)))
    });
    (0..4u8, vec(change, 0..3)).prop_map(|(kind, changes)| {
        let mut headers = profile(kind);
        for (name, value) in changes {
            headers.retain(|(n, _)| *n != name);
            if let Some(value) = value {
                headers.push((name, value));
            }
        }
        headers
    })
}

// ---- The three properties' requests ----

/// POSTs of mutated bodies to `/mcp`, mostly with a client's consistent headers.
fn mutated_bodies() -> impl Strategy<Value = Request> {
    (headers(), body()).prop_map(|(headers, body)| Request {
        method: "POST",
        path: "/mcp".into(),
        headers,
        body,
    })
}

/// Any method, any headers, to `/mcp`.
fn methods_and_headers() -> impl Strategy<Value = Request> {
    let method = prop::sample::select(vec![
        "GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD",
    ]);
    (method, headers(), body()).prop_map(|(method, headers, body)| Request {
        method,
        path: "/mcp".into(),
        headers,
        body,
    })
}

/// Mutated messages to `/sse/messages`, for the live legacy session, an unknown one, none.
fn legacy_messages() -> impl Strategy<Value = Request> {
    let query = prop_oneof![
        6 => Just(format!("?sessionId={LEGACY_SESSION}")),
        1 => Just(format!("?sessionId={SESSION}")),
        1 => Just("?sessionId=00000000000000000000000000000000".to_string()),
        1 => Just(String::new()),
        1 => Just("?sessionId=".to_string()),
        1 => "\\?[a-zA-Z0-9=&_-]{0,16}",
    ];
    let method = prop_oneof![8 => Just("POST"), 1 => Just("GET"), 1 => Just("DELETE")];
    (method, query, headers(), body()).prop_map(|(method, query, headers, body)| Request {
        method,
        path: format!("/sse/messages{query}"),
        headers,
        body,
    })
}
