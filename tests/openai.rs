//! The OpenAI-compatible API and `/metrics` of `wick serve`, driven by the official `openai`
//! Python SDK and read back with `prometheus_client`'s own parser (tests/clients/openai_client.py).

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::process::{ServerProcess, client_script, python};
use serde_json::Value;

/// What the client printed, by kind; a kind printed several times keeps every value.
fn run(base: &str, mode: &str, key: Option<&str>) -> HashMap<String, Vec<Value>> {
    let mut command = Command::new(python());
    command
        .arg(client_script("openai_client.py"))
        .args([base, mode])
        .args(key);
    let output = command.output().expect("the client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut seen: HashMap<String, Vec<Value>> = HashMap::new();
    for (kind, json) in stdout.lines().filter_map(|line| line.split_once(' ')) {
        let value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{kind}: {e}: {json}"));
        seen.entry(kind.to_string()).or_default().push(value);
    }
    seen
}

fn one<'a>(seen: &'a HashMap<String, Vec<Value>>, kind: &str) -> &'a Value {
    &seen
        .get(kind)
        .unwrap_or_else(|| panic!("no {kind} in {seen:?}"))[0]
}

fn joined(pieces: &Value) -> String {
    pieces
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| p.as_str().expect("text"))
        .collect()
}

fn assert_refused(refusal: &Value, status: u64, param: &str) {
    assert_eq!(refusal["status"], status, "{refusal}");
    assert_eq!(refusal["param"], param, "{refusal}");
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|m| m.contains(param)),
        "the message names `{param}`: {refusal}"
    );
}

#[test]
fn openai_sdk_chat_and_completions() {
    let server = ServerProcess::serve(&[]);
    let seen = run(&server.base, "main", None);

    let models = one(&seen, "MODELS");
    assert!(
        models
            .as_array()
            .unwrap()
            .contains(&Value::from("smollm2-135m-instruct-q4_1")),
        "{models}"
    );

    // Streamed deltas join to the non-streamed greedy reply; usage comes in its own last chunk.
    let chat = one(&seen, "CHAT");
    let choice = &chat["choices"][0];
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["model"], "smollm2-135m-instruct-q4_1");
    assert_eq!(choice["message"]["role"], "assistant");
    let stream = one(&seen, "CHAT_STREAM");
    assert_eq!(joined(&stream["deltas"]), choice["message"]["content"]);
    assert!(stream["deltas"].as_array().unwrap().len() > 3, "{stream}");
    assert_eq!(
        stream["roles"][0], "assistant",
        "the first chunk has the role"
    );
    assert_eq!(
        stream["finish"],
        serde_json::json!([choice["finish_reason"]])
    );
    // The same counts, but for the prompt tokens the prefix cache served: the streamed chat
    // repeats the whole one's prompt.
    let usage = &chat["usage"];
    assert_cached_tokens(usage);
    let streamed_usage = &stream["usage"][0];
    assert_cached_tokens(streamed_usage);
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(streamed_usage[field], usage[field], "{field}: {stream}");
    }
    assert_eq!(
        stream["usage"].as_array().map(Vec::len),
        Some(1),
        "{stream}"
    );
    assert_eq!(stream["usage_chunk_choices"], serde_json::json!([0]));
    assert_eq!(stream["ids"].as_array().unwrap().len(), 1, "{stream}");
    assert_eq!(
        stream["objects"],
        serde_json::json!(["chat.completion.chunk"])
    );
    let without_usage = one(&seen, "CHAT_STREAM_NO_USAGE");
    assert_eq!(without_usage["usage"], serde_json::json!([]));
    assert_eq!(without_usage["deltas"], stream["deltas"]);

    let completion = one(&seen, "COMPLETION");
    let text = completion["choices"][0]["text"].as_str().unwrap();
    assert_eq!(completion["object"], "text_completion");
    assert!(text.contains("Paris"), "{completion}");
    assert_eq!(joined(one(&seen, "COMPLETION_STREAM")), text);
    assert_eq!(completion["usage"]["completion_tokens"], 24, "{completion}");
    assert_cached_tokens(&completion["usage"]);

    // `stop` ends the same greedy text just before the stop text.
    let stop = one(&seen, "STOP");
    let (greedy, stop_text) = (
        stop["greedy"].as_str().unwrap(),
        stop["stop"].as_str().unwrap(),
    );
    let cut = greedy
        .find(stop_text)
        .expect("the stop text comes from the greedy text");
    assert_eq!(stop["text"], greedy[..cut], "{stop}");
    assert_eq!(stop["finish"], "stop");

    let length = one(&seen, "LENGTH");
    assert_eq!(length["finish"], "length");
    assert_eq!(length["usage"]["completion_tokens"], 5);

    assert_refused(one(&seen, "REFUSED_N"), 400, "n");
    assert_refused(one(&seen, "REFUSED_ECHO"), 400, "echo");
    assert_refused(one(&seen, "REFUSED_UNKNOWN"), 400, "mirostat");
    assert_refused(one(&seen, "REFUSED_TYPE"), 400, "max_tokens");
    let negative = one(&seen, "REFUSED_TYPE")["message"].to_string();
    assert!(negative.contains("at least 1"), "{negative}");
    assert_refused(one(&seen, "REFUSED_TEMPERATURE"), 400, "temperature");
    assert_refused(one(&seen, "REFUSED_STREAM_OPTIONS"), 400, "stream_options");
    assert_refused(one(&seen, "REFUSED_PROMPT"), 400, "prompt");
    let context = one(&seen, "REFUSED_CONTEXT");
    assert_eq!(context["status"], 400, "{context}");
    let message = context["message"].as_str().unwrap();
    assert!(
        message.contains("100000") && message.contains("8192"),
        "{message}"
    );
    assert_refused(one(&seen, "REFUSED_MODEL"), 404, "model");
    let stats = server.stats();
    assert_eq!(stats["active"], 0);
    // `/health` shows the KV blocks in each state and the prefix cache's counts.
    for field in [
        "kv_blocks_total",
        "kv_blocks_used",
        "kv_blocks_cached",
        "kv_blocks_free",
        "kv_block_size",
        "prefix_cache_queries",
        "prefix_cache_hits",
        "preemptions",
    ] {
        assert!(stats[field].is_u64(), "{field}: {stats}");
    }
}

/// Log-probabilities on both endpoints through the SDK's own types: greedy tokens are the most
/// likely of their alternatives, the tokens join to the text, streamed equals whole, and the
/// prompt's (`echo`) equal what generating the same tokens gave.
#[test]
fn openai_sdk_logprobs() {
    let server = ServerProcess::serve(&[]);
    let seen = run(&server.base, "logprobs", None);
    let close = |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-3;

    let chat = one(&seen, "CHAT");
    let content = chat["content"].as_array().expect("logprobs.content");
    assert!(!content.is_empty(), "{chat}");
    let tokens: String = content
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, chat["text"].as_str().unwrap(), "{chat}");
    for token in content {
        let top = token["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), 5, "{token}");
        // Greedy: the token is its alternatives' most likely.
        assert_eq!(top[0]["token"], token["token"], "{token}");
        assert!(close(&top[0]["logprob"], &token["logprob"]), "{token}");
        assert_sorted_and_at_most_one(top, |t| t["logprob"].as_f64().unwrap());
        let bytes: Vec<u8> = serde_json::from_value(token["bytes"].clone()).unwrap();
        assert_eq!(bytes, token["token"].as_str().unwrap().as_bytes());
    }
    let streamed = one(&seen, "CHAT_STREAM").as_array().unwrap();
    assert_eq!(streamed.len(), content.len(), "{streamed:?}");
    for (s, w) in streamed.iter().zip(content) {
        assert_eq!(s["token"], w["token"]);
        assert!(close(&s["logprob"], &w["logprob"]), "{s} {w}");
    }
    for token in one(&seen, "SAMPLED").as_array().unwrap() {
        let top = token["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{token}");
        assert!(token["logprob"].as_f64().unwrap() <= top[0]["logprob"].as_f64().unwrap() + 1e-6);
        assert_sorted_and_at_most_one(top, |t| t["logprob"].as_f64().unwrap());
    }
    assert_eq!(one(&seen, "PLAIN")["logprobs"], Value::Null);

    let completion = one(&seen, "COMPLETION");
    let logprobs = &completion["logprobs"];
    let tokens: Vec<&str> = logprobs["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), completion["text"].as_str().unwrap());
    let (values, tops, offsets) = (
        logprobs["token_logprobs"].as_array().unwrap(),
        logprobs["top_logprobs"].as_array().unwrap(),
        logprobs["text_offset"].as_array().unwrap(),
    );
    assert_eq!(values.len(), tokens.len());
    assert_eq!(tops.len(), tokens.len());
    let mut offset = 0;
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(offsets[i], offset, "{logprobs}");
        offset += token.chars().count();
        let top = tops[i].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3, "{logprobs}");
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(close(&best.into(), &values[i]), "{logprobs}");
        assert!(close(&top[*token], &values[i]), "{logprobs}");
    }
    assert_eq!(one(&seen, "COMPLETION_STREAM"), &logprobs["tokens"]);

    // `echo` with `max_tokens: 0` scores the prompt: every token but the first (`null`).
    let echo = one(&seen, "ECHO");
    let prompt = "The capital of France is";
    assert_eq!(echo["text"], prompt);
    assert_eq!(echo["usage"]["completion_tokens"], 0, "{echo}");
    let scored = &echo["logprobs"];
    let prompt_tokens = scored["tokens"].as_array().unwrap();
    let joined: String = prompt_tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, prompt);
    assert_eq!(
        echo["usage"]["prompt_tokens"],
        prompt_tokens.len(),
        "{echo}"
    );
    assert_eq!(scored["token_logprobs"][0], Value::Null);
    assert_eq!(scored["top_logprobs"][0], Value::Null);
    for i in 1..prompt_tokens.len() {
        assert!(
            scored["token_logprobs"][i].as_f64().unwrap() <= 0.0,
            "{scored}"
        );
        let top = scored["top_logprobs"][i].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 2, "{scored}");
    }
    // The prompt followed by its greedy continuation: the echo scores the continuation's tokens
    // as the generation did (the same rows of the same model; prompt rows and decode rows may
    // take other kernels, hence the tolerance), and the prompt's as above.
    let continued = one(&seen, "ECHO_CONTINUED");
    let generated = completion["text"].as_str().unwrap();
    assert_eq!(continued["text"], format!("{prompt}{generated}"));
    let all = &continued["logprobs"];
    let expected: Vec<&Value> = prompt_tokens
        .iter()
        .chain(logprobs["tokens"].as_array().unwrap())
        .collect();
    let tokens: Vec<&Value> = all["tokens"].as_array().unwrap().iter().collect();
    assert_eq!(tokens, expected, "{continued}");
    let values = all["token_logprobs"].as_array().unwrap();
    let reference = scored["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(logprobs["token_logprobs"].as_array().unwrap());
    for (i, (value, reference)) in values.iter().zip(reference).enumerate().skip(1) {
        assert!(
            close(value, reference),
            "token {i}: {value} against {reference}"
        );
    }
    assert_refused(one(&seen, "REFUSED_ECHO_STREAM"), 400, "echo");

    assert_refused(one(&seen, "REFUSED_TOP"), 400, "top_logprobs");
    assert_refused(one(&seen, "REFUSED_TOP_ALONE"), 400, "top_logprobs");
    assert_refused(one(&seen, "REFUSED_COMPLETION"), 400, "logprobs");
}

/// Structured output through the SDK: `parse` with a Pydantic model, five schemas sampled at
/// temperature 1 all valid by `jsonschema`, `json_object`, a schema that does not compile, and a
/// constrained and a free request giving the same texts together as alone.
#[test]
fn openai_sdk_structured_output() {
    let server = ServerProcess::serve(&[]);
    let seen = run(&server.base, "json", None);

    let parsed = one(&seen, "PARSED");
    let object = &parsed["parsed"];
    assert!(
        object["name"].is_string() && object["country"].is_string(),
        "{parsed}"
    );
    assert!(object["population"].is_i64(), "{parsed}");
    let content: Value = serde_json::from_str(parsed["content"].as_str().unwrap()).unwrap();
    assert_eq!(&content, object);

    let sampled = one(&seen, "SAMPLED");
    assert!(sampled["generations"].as_u64().unwrap() >= 5, "{sampled}");
    assert_eq!(sampled["invalid"], serde_json::json!([]), "{sampled}");

    let any = one(&seen, "JSON_OBJECT");
    let text: Value = serde_json::from_str(any["text"].as_str().unwrap()).expect("JSON");
    assert!(text.is_object(), "{any}");
    assert_eq!(any["finish"], "stop");

    let refused = one(&seen, "REFUSED_SCHEMA");
    assert_eq!(refused["status"], 400, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("JSON schema"),
        "{refused}"
    );
    assert_refused(one(&seen, "REFUSED_FORMAT"), 400, "response_format.type");

    let mixed = one(&seen, "MIXED");
    assert_eq!(mixed["alone"], mixed["together"], "{mixed}");
    let constrained = mixed["alone"][0].as_str().unwrap();
    assert!(
        serde_json::from_str::<Value>(constrained).is_ok(),
        "{mixed}"
    );
}

/// Tool calls through the SDK: for each `tool_choice`, the streamed reply the SDK's users put
/// together equals the whole one; `required` calls sampled at temperature 1 all validate against
/// their tool's schema; a call and its result sent back are rendered into the prompt; refusals.
#[test]
fn openai_sdk_tool_calls() {
    let server = ServerProcess::serve(&[]);
    let seen = run(&server.base, "tools", None);

    for reply in &seen["TOOLS"] {
        let choice = reply["choice"].as_str().unwrap();
        let whole = &reply["whole"];
        assert_eq!(whole, &reply["streamed"], "{reply}");
        let calls = whole["calls"].as_array().unwrap();
        let ids = |key: &str| reply[key].as_array().unwrap().clone();
        assert!(
            ids("ids")
                .iter()
                .chain(&ids("streamed_ids"))
                .all(|id| id.as_str().is_some_and(|id| id.starts_with("call_"))),
            "{reply}"
        );
        match choice {
            "required" | "named" => {
                assert_eq!(whole["finish"], "tool_calls", "{reply}");
                assert_eq!(
                    calls.len(),
                    1,
                    "one call unless parallel_tool_calls: {reply}"
                );
                assert_eq!(whole["text"], Value::Null, "{reply}");
                let arguments: Value =
                    serde_json::from_str(calls[0][1].as_str().unwrap()).expect("JSON arguments");
                assert!(arguments.is_object(), "{reply}");
                if choice == "named" {
                    assert_eq!(calls[0][0], "get_time", "{reply}");
                }
            }
            // With `none` the tools are not offered, so no call can be made.
            "none" => {
                assert!(calls.is_empty(), "{reply}");
                assert_ne!(whole["finish"], "tool_calls", "{reply}");
            }
            // The model chooses: whatever it chose, the reply is one or the other.
            _ => assert_eq!(calls.is_empty(), whole["finish"] != "tool_calls", "{reply}"),
        }
    }
    assert_eq!(seen["TOOLS"].len(), 4);

    let sampled = one(&seen, "REQUIRED_SAMPLED");
    assert!(sampled["generations"].as_u64().unwrap() >= 5, "{sampled}");
    assert_eq!(sampled["invalid"], serde_json::json!([]), "{sampled}");

    // The call and the tool's result make the prompt longer than the question alone.
    let history = one(&seen, "HISTORY");
    assert!(
        history["prompt_tokens"].as_u64() > history["ask_prompt_tokens"].as_u64(),
        "{history}"
    );

    let unknown = one(&seen, "REFUSED_UNKNOWN_FUNCTION");
    assert_eq!(unknown["status"], 400, "{unknown}");
    assert!(
        unknown["message"].as_str().unwrap().contains("fly"),
        "{unknown}"
    );
    assert_refused(one(&seen, "REFUSED_NO_TOOLS"), 400, "tool_choice");
    assert_refused(one(&seen, "REFUSED_TOOL_TYPE"), 400, "tools");
    let both = one(&seen, "REFUSED_WITH_FORMAT");
    assert_eq!(both["status"], 400, "{both}");
    assert!(
        both["message"]
            .as_str()
            .unwrap()
            .contains("response format"),
        "{both}"
    );
    assert_refused(one(&seen, "REFUSED_ON_COMPLETIONS"), 400, "tools");
}

/// Log-probabilities most likely first, whose probabilities add up to at most 1.
fn assert_sorted_and_at_most_one(top: &[Value], logprob: impl Fn(&Value) -> f64) {
    let values: Vec<f64> = top.iter().map(logprob).collect();
    assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
    assert!(values.iter().all(|v| *v <= 0.0), "{values:?}");
    let total: f64 = values.iter().map(|v| v.exp()).sum();
    assert!(total <= 1.0 + 1e-4, "{values:?}");
}

/// `usage.prompt_tokens_details.cached_tokens`, OpenAI's count of prompt tokens served from its
/// prompt cache, is there, and counts some of the prompt.
fn assert_cached_tokens(usage: &Value) {
    let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64();
    let prompt = usage["prompt_tokens"].as_u64();
    assert!(
        cached.zip(prompt).is_some_and(|(c, p)| c <= p),
        "cached_tokens: {usage}"
    );
}

/// With `--model-path`, the model is listed under its path: that id, like every id listed and
/// every name `model` accepts (`small`, `small/gguf`), resolves in `GET /v1/models/{id}` and
/// serves requests.
#[test]
fn every_listed_model_id_is_retrievable_and_served() {
    let pulled = std::process::Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["pull", "--model-size", "small"])
        .output()
        .expect("wick pull runs");
    let stdout = String::from_utf8_lossy(&pulled.stdout);
    let path = stdout
        .lines()
        .find(|line| line.starts_with('/') && line.ends_with(".gguf"))
        .unwrap_or_else(|| panic!("pull prints the file: {stdout}"));
    let server = ServerProcess::serve(&["--model-path", path]);
    let seen = run(&server.base, "ids", None);
    let listed = one(&seen, "LISTED");
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.contains(&Value::from(path))),
        "{listed}"
    );
    let retrieved = &seen["RETRIEVED"];
    assert_eq!(retrieved.len(), listed.as_array().map_or(0, Vec::len) + 2);
    for model in retrieved {
        assert_eq!(model["id"], model["asked"], "{model}");
    }
    assert_eq!(one(&seen, "RETRIEVE_UNKNOWN")["status"], 404);
    let served = one(&seen, "BY_LISTED_ID");
    assert_eq!(served["model"], path, "{served}");
    assert_eq!(served["finish"], "length", "{served}");
}

/// The client abandons a long stream after 3 chunks: the engine stops that generation (seen in
/// its counters) and, with one slot, the next request runs.
#[test]
fn openai_sdk_abandoned_stream_frees_its_slot() {
    let server = ServerProcess::serve(&["--max-active", "1"]);
    let seen = run(&server.base, "abort", None);
    assert_eq!(one(&seen, "ABORTED"), 3);
    assert_eq!(one(&seen, "AFTER")["finish"], "length");
    let stats = server.stats_once("cancelled", 1);
    assert_eq!(stats["cancelled"], 1, "{stats}");
    assert!(
        stats["tokens"].as_u64().unwrap() < 200,
        "the abandoned stream kept generating: {stats}"
    );
}

#[test]
fn openai_sdk_needs_the_bearer_key() {
    let server = ServerProcess::serve(&["--api-key", "s3cret", "--max-body-bytes", "65536"]);
    let seen = run(&server.base, "auth", Some("s3cret"));
    // Each refusal in OpenAI's shape, so that the SDK shows wick's words, not a bare status.
    let refused = |kind: &str, status: u64, error_type: &str, words: &str| {
        let refusal = one(&seen, kind);
        assert_eq!(refusal["status"], status, "{refusal}");
        assert_eq!(refusal["type"], error_type, "{refusal}");
        let message = refusal["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{refusal}");
    };
    refused("WRONG_KEY", 401, "authentication_error", "--api-key");
    refused(
        "FOREIGN_ORIGIN",
        403,
        "permission_error",
        "--allowed-origin",
    );
    refused(
        "TOO_LARGE",
        413,
        "invalid_request_error",
        "--max-body-bytes",
    );
    assert_eq!(one(&seen, "RIGHT_KEY")["finish"], "length");
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base)).unwrap();
    assert_eq!(metrics.status(), 401, "/metrics needs the key too");
}

#[test]
fn metrics_public_opens_only_metrics() {
    let server = ServerProcess::serve(&["--api-key", "s3cret", "--metrics-public"]);
    let get = |path: &str| {
        reqwest::blocking::get(format!("{}{path}", server.base))
            .unwrap()
            .status()
    };
    assert_eq!(get("/metrics"), 200);
    assert_eq!(get("/v1/models"), 401);
}

/// `/metrics` parses with Prometheus' own parser, and its counters add up to the requests' usage.
#[test]
fn metrics_count_what_ran() {
    let server = ServerProcess::serve(&[]);
    let usages = run(&server.base, "three", None)["USAGE"].clone();
    assert_eq!(usages.len(), 3);
    let sum = |field: &str| -> f64 { usages.iter().map(|u| u[field].as_f64().unwrap()).sum() };
    let seen = run(&server.base, "metrics", None);
    let metrics = one(&seen, "METRICS");
    assert!(
        metrics["content_type"]
            .as_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{metrics}"
    );
    let families = &metrics["families"];
    for (name, kind) in [
        ("wick:num_requests_running", "gauge"),
        ("wick:num_requests_waiting", "gauge"),
        ("wick:kv_cache_usage_bytes", "gauge"),
        ("wick:kv_cache_capacity_bytes", "gauge"),
        ("wick:kv_cache_usage_perc", "gauge"),
        ("wick:kv_cache_blocks", "gauge"),
        ("wick:prefix_cache_queries", "counter"),
        ("wick:prefix_cache_hits", "counter"),
        ("wick:num_preemptions", "counter"),
        ("wick:requests", "counter"),
        ("wick:prompt_tokens", "counter"),
        ("wick:generation_tokens", "counter"),
        ("wick:time_to_first_token_seconds", "histogram"),
        ("wick:inter_token_latency_seconds", "histogram"),
        ("wick:e2e_request_latency_seconds", "histogram"),
        ("wick:request_queue_time_seconds", "histogram"),
    ] {
        assert_eq!(families[name], kind, "{name}: {families}");
    }
    let samples = metrics["samples"].as_array().unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|s| s["name"] == name)
            .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .map(|s| s["value"].as_f64().unwrap())
            .sum()
    };
    let model = ("model_name", "smollm2-135m-instruct-q4_1");
    assert_eq!(
        value("wick:generation_tokens_total", &[model]),
        sum("completion_tokens")
    );
    assert_eq!(
        value("wick:prompt_tokens_total", &[model]),
        sum("prompt_tokens")
    );
    // Each ran to its length or stopped at the end of its turn.
    let openai = [model, ("frontend", "openai")];
    assert_eq!(value("wick:requests_total", &openai), 3.0);
    let error = [model, ("frontend", "openai"), ("outcome", "error")];
    assert_eq!(value("wick:requests_total", &error), 0.0);
    for histogram in [
        "wick:time_to_first_token_seconds_count",
        "wick:e2e_request_latency_seconds_count",
        "wick:request_queue_time_seconds_count",
    ] {
        assert_eq!(value(histogram, &[model]), 3.0, "{histogram}");
    }
    // Every token after a request's first is one inter-token interval.
    assert_eq!(
        value("wick:inter_token_latency_seconds_count", &[model]),
        sum("completion_tokens") - 3.0
    );
    assert_eq!(value("wick:num_requests_running", &[model]), 0.0);
    assert_eq!(value("wick:num_requests_waiting", &[model]), 0.0);
    assert_eq!(value("wick:kv_cache_usage_bytes", &[model]), 0.0);
    assert!(value("wick:kv_cache_capacity_bytes", &[model]) > 0.0);
    // Nothing is running: no block is used, and the prefix cache found at most what was asked.
    assert_eq!(value("wick:kv_cache_usage_perc", &[model]), 0.0);
    let used = [model, ("state", "used")];
    assert_eq!(value("wick:kv_cache_blocks", &used), 0.0);
    for state in ["cached", "free"] {
        let exposed = samples
            .iter()
            .any(|s| s["name"] == "wick:kv_cache_blocks" && s["labels"]["state"] == state);
        assert!(exposed, "no {state} blocks");
    }
    assert!(
        value("wick:prefix_cache_hits_total", &[model])
            <= value("wick:prefix_cache_queries_total", &[model])
    );
    assert_eq!(value("wick:num_preemptions_total", &[model]), 0.0);
}

/// With its one slot and one queue place taken, the server answers 429 with `Retry-After` in
/// OpenAI's error shape, and counts the refusal.
#[test]
fn a_full_queue_is_a_429_with_retry_after() {
    let server = ServerProcess::serve(&["--max-active", "1", "--queue-limit", "1"]);
    let http = reqwest::blocking::Client::new();
    let url = format!("{}/v1/completions", server.base);
    let long = serde_json::json!({ "prompt": "1, 2, 3,", "max_tokens": 4000, "stream": true });
    let wait_for = |counter: &str| {
        let stats = server.stats_once(counter, 1);
        assert_eq!(stats[counter], 1, "no request became {counter}: {stats}");
    };
    let running = http.post(&url).json(&long).send().unwrap();
    wait_for("active");
    let waiting = http.post(&url).json(&long).send().unwrap();
    wait_for("queued");
    let refused = http
        .post(&url)
        .json(&serde_json::json!({ "prompt": "Hi", "max_tokens": 4 }))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().unwrap();
    assert_eq!(body["error"]["code"], "server_busy", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--queue-limit"),
        "{body}"
    );
    drop((running, waiting));
    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .and_then(|r| r.text())
        .unwrap();
    assert!(
        metrics.contains(r#"frontend="openai",outcome="busy"} 1"#),
        "{metrics}"
    );
}
