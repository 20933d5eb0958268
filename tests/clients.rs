//! Real MCP clients nobody here wrote — the official Python SDK and the official TypeScript
//! SDKs — against `wick serve`, the binary users run. Each client prints every token as its
//! progress notification arrives; these tests check what they printed.

mod common;

use std::process::Command;

use common::process::{ServerProcess, client_script, client_tools, node22, python};
use serde_json::Value;

/// What a client printed: its progress notifications and its final result.
struct Transcript {
    progress: Vec<Value>,
    result: Value,
    lines: Vec<(String, Value)>,
}

fn run(mut command: Command) -> Transcript {
    let output = command.output().expect("the client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "client failed:\n{stdout}\n{stderr}"
    );
    // The SDKs warn about what they find odd (a DELETE answered 202, say): wick gives them none.
    assert!(
        !stderr.contains("failed") && !stderr.to_lowercase().contains("warn"),
        "the client complained:\n{stderr}"
    );
    let lines: Vec<(String, Value)> = stdout
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter_map(|(kind, json)| Some((kind.to_string(), serde_json::from_str(json).ok()?)))
        .collect();
    let progress = lines
        .iter()
        .filter(|(k, _)| k == "PROGRESS")
        .map(|(_, v)| v.clone())
        .collect();
    let result = lines
        .iter()
        .find(|(k, _)| k == "RESULT")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no RESULT line in:\n{stdout}\n{stderr}"));
    Transcript {
        progress,
        result,
        lines,
    }
}

/// Every token arrived as progress, in order, and the pieces add up to the final text.
fn check(transcript: &Transcript, protocol: &str) {
    let Transcript {
        progress, result, ..
    } = transcript;
    assert_eq!(result["protocol"], protocol);
    assert_eq!(result["is_error"], false, "{result}");
    assert!(
        progress.len() >= 10,
        "{} progress notifications",
        progress.len()
    );
    let values: Vec<f64> = progress
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect();
    assert!(values.windows(2).all(|w| w[1] > w[0]), "{values:?}");
    assert!(progress.iter().all(|p| p["total"] == 24.0));
    let streamed: String = progress
        .iter()
        .map(|p| p["message"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, result["text"].as_str().unwrap());
    assert_eq!(streamed, result["structured"]["text"].as_str().unwrap());
    assert!(streamed.contains("Paris"), "{streamed}");
}

fn python_client(url: &str, mode: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(python());
    command
        .arg(client_script("py_client.py"))
        .args([url, mode])
        .args(extra);
    command
}

#[test]
fn python_sdk_streamable_http_2025_11_25() {
    let server = ServerProcess::serve(&[]);
    check(
        &run(python_client(&server.mcp(), "legacy", &[])),
        "2025-11-25",
    );
}

#[test]
fn python_sdk_streamable_http_2026_07_28() {
    let server = ServerProcess::serve(&[]);
    check(
        &run(python_client(&server.mcp(), "2026-07-28", &[])),
        "2026-07-28",
    );
}

#[test]
fn python_sdk_legacy_sse_transport() {
    let server = ServerProcess::serve(&[]);
    let url = format!("{}/sse", server.base);
    check(&run(python_client(&url, "sse", &[])), "2025-11-25");
}

/// A `json_schema` call: the tokens still stream as progress and join to the text, the
/// structured result's `json` is that text parsed and fits the schema, and a schema that cannot
/// compile is a tool error naming it.
#[test]
fn python_sdk_json_schema_2026_07_28() {
    let server = ServerProcess::serve(&[]);
    let transcript = run(python_client(&server.mcp(), "2026-07-28", &["json"]));
    let result = &transcript.result;
    assert_eq!(result["is_error"], false, "{result}");
    let text = result["text"].as_str().unwrap();
    let streamed: String = transcript
        .progress
        .iter()
        .map(|p| p["message"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, text);
    let parsed: Value = serde_json::from_str(text).expect("the text is JSON");
    assert_eq!(result["structured"]["json"], parsed, "{result}");
    let object = parsed.as_object().expect("an object");
    assert!(
        object["city"].is_string() && object["country"].is_string(),
        "{parsed}"
    );
    assert_eq!(object.len(), 2, "{parsed}");
    let bad = &transcript
        .lines
        .iter()
        .find(|(k, _)| k == "BAD")
        .expect("a BAD line")
        .1;
    assert_eq!(bad["is_error"], true, "{bad}");
    assert!(
        bad["text"].as_str().unwrap().contains("JSON schema"),
        "{bad}"
    );
}

/// The client abandons a long call after 5 tokens: the server stops that generation (seen in
/// its counters) and answers the next call.
fn python_cancel(mode: &str) {
    let server = ServerProcess::serve(&["--max-active", "1"]);
    let transcript = run(python_client(&server.mcp(), mode, &["cancel"]));
    assert!(transcript.lines.iter().any(|(k, _)| k == "CANCELLED"));
    assert!(!transcript.lines.iter().any(|(k, _)| k == "UNEXPECTED"));
    assert_eq!(transcript.result["is_error"], false);
    let stats = server.stats_once("cancelled", 1);
    assert_eq!(stats["cancelled"], 1, "{stats}");
    assert!(
        stats["tokens"].as_u64().unwrap() < 200,
        "the long call kept generating: {stats}"
    );
}

#[test]
fn python_sdk_cancellation_2025_11_25() {
    python_cancel("legacy");
}

#[test]
fn python_sdk_cancellation_2026_07_28() {
    python_cancel("2026-07-28");
}

fn typescript_client(url: &str, flavour: &str) -> Command {
    let mut command = Command::new(node22());
    command
        .arg(client_script("ts_sdk_client.mjs"))
        .args([url, flavour]);
    command
}

#[test]
fn typescript_sdk_v1_streamable_http() {
    let server = ServerProcess::serve(&[]);
    check(&run(typescript_client(&server.mcp(), "v1")), "2025-11-25");
}

#[test]
fn typescript_client_v2_streamable_http_2026_07_28() {
    let server = ServerProcess::serve(&[]);
    check(&run(typescript_client(&server.mcp(), "v2")), "2026-07-28");
}

#[test]
fn python_sdk_with_a_bearer_token() {
    let server = ServerProcess::serve(&["--api-key", "s3cret"]);
    let mut without = python_client(&server.mcp(), "legacy", &[]);
    without.env_remove("WICK_API_KEY");
    let refused = without.output().unwrap();
    assert!(!refused.status.success(), "no token, no service");
    // The refusal is a JSON-RPC error, so the SDK shows wick's words, not "Server returned an
    // error response".
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--api-key"), "{stderr}");
    let mut with = python_client(&server.mcp(), "2026-07-28", &[]);
    with.env("WICK_API_KEY", "s3cret");
    check(&run(with), "2026-07-28");
}

/// The MCP Inspector's command line at 0.15.0 (what `npx` resolves on Node 20) converts a
/// `--tool-arg` to a number only where the schema's type is exactly `"integer"` or `"number"`:
/// wick's optional numeric arguments must arrive as numbers, not as refused strings.
#[test]
fn mcp_inspector_0_15_passes_numeric_arguments_as_numbers() {
    let server = ServerProcess::serve(&[]);
    let inspector =
        client_tools().join("node_modules/@modelcontextprotocol/inspector-cli/build/index.js");
    let output = Command::new(node22())
        .arg(inspector)
        .arg(server.mcp())
        .args(["--transport", "http", "--method", "tools/call"])
        .args(["--tool-name", "generate", "--tool-arg"])
        .args([
            "prompt=The capital of France is",
            "max_tokens=3",
            "temperature=0",
        ])
        .output()
        .expect("the Inspector runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(result["isError"], false, "{result}");
    let generated = &result["structuredContent"]["completion_tokens"];
    assert!(
        generated.as_u64().is_some_and(|n| (1..=3).contains(&n)),
        "max_tokens=3 was honoured as a number: {result}"
    );
}
