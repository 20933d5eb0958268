//! The examples users run first, run here with small token counts so that they cannot rot.

mod common;

use std::process::Command;

use common::hub::HubBuilder;
use common::process::{ServerProcess, example};

fn run(mut command: Command) -> (String, String) {
    let output = command.output().expect("the example runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn streaming_example_prints_tokens_and_a_summary() {
    let mut command = Command::new(example("streaming_example"));
    command.args(["The capital of France is", "--max-tokens", "8"]);
    let (stdout, _) = run(command);
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(
        stdout.contains("completion 8 tokens") && stdout.contains("finish length"),
        "{stdout}"
    );
}

/// Both backends of the small tier, the safetensors one through the real hf-hub code path
/// from a Hub on loopback serving the registry's repository at its pinned revision.
#[tokio::test]
async fn streaming_test_compares_the_backends() {
    let gguf = common::small_gguf().await;
    let fixture = common::fixture::hf_fixture(&gguf);
    let registry = wick::Registry::builtin().unwrap();
    let entry = registry
        .by_tier(wick::Tier::Small, wick::Backend::Huggingface)
        .unwrap();
    let hub = HubBuilder::new()
        .repo_at(&entry.repo, &fixture, &entry.revision)
        .start()
        .await;
    let home = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(example("streaming_test"));
    command
        .args([
            "--backend",
            "all",
            "--max-tokens",
            "8",
            "--runs",
            "2",
            "--device",
            "cpu",
        ])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HOME", home.path());
    let output = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("gguf") || l.starts_with("huggingface"))
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    for row in rows {
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[2], "8", "{row}");
        let decode: f64 = columns[7].parse().unwrap();
        assert!(decode > 0.0, "{row}");
    }
}

/// A backend that cannot load gets a row saying so; the other is still measured.
#[test]
fn streaming_test_reports_a_failing_backend_and_goes_on() {
    // No Hub and an empty Hub cache: the safetensors model cannot be fetched; the GGUF one
    // comes from wick's own cache.
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(example("streaming_test"));
    command
        .args([
            "--backend",
            "all",
            "--max-tokens",
            "4",
            "--runs",
            "1",
            "--device",
            "cpu",
        ])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", home.path());
    let output = command.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    let gguf: Vec<&str> = stdout.lines().filter(|l| l.starts_with("gguf")).collect();
    assert_eq!(gguf.len(), 1, "{stdout}\n{stderr}");
    assert_eq!(gguf[0].split_whitespace().nth(2), Some("4"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("huggingface") && l.contains("failed")),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn the_mcp_client_example_streams_from_the_mcp_server_example() {
    let mut command = Command::new(example("streamable_http_mcp_server"));
    command.args(["--port", "0"]);
    let server = ServerProcess::spawn(command);
    let client = example("streamable_http_mcp_client");
    // A URL without a path gets the transport's endpoint.
    let cases = [
        (server.mcp(), "streamable", "2025-11-25"),
        (server.mcp(), "streamable", "2026-07-28"),
        (format!("{}/sse", server.base), "sse", "2025-11-25"),
        (server.base.clone(), "sse", "2025-11-25"),
    ];
    for (url, transport, protocol) in &cases {
        let mut command = Command::new(&client);
        command.args([
            "--url",
            url,
            "--transport",
            transport,
            "--protocol",
            protocol,
            "--max-tokens",
            "12",
        ]);
        let (stdout, stderr) = run(command);
        assert!(
            stderr.contains("tools: chat, generate, list_models")
                || stderr.contains("tools: generate"),
            "{stderr}"
        );
        // The tokens (which may hold newlines), a newline, then the pretty-printed result.
        let at = stdout.rfind("\n{\n").expect("tokens, then the result");
        let (streamed, result) = (&stdout[..at], &stdout[at + 1..]);
        let result: serde_json::Value =
            serde_json::from_str(result).expect("the structured result");
        assert_eq!(result["text"], streamed, "{transport} {protocol}");
        assert!(streamed.contains("Paris"), "{streamed}");
        assert_eq!(result["completion_tokens"], 12);
    }
    // The example serves the OpenAI API and /metrics too, which counted each call by transport.
    let http = reqwest::blocking::Client::new();
    let completion: serde_json::Value = http
        .post(format!("{}/v1/completions", server.base))
        .json(&serde_json::json!({ "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0 }))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .expect("a completion");
    assert_eq!(completion["usage"]["completion_tokens"], 12, "{completion}");
    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .and_then(|r| r.text())
        .expect("/metrics");
    let calls_by = |transport: &str| cases.iter().filter(|c| c.1 == transport).count();
    for (frontend, calls) in [
        ("mcp", calls_by("streamable")),
        ("sse", calls_by("sse")),
        ("openai", 1),
    ] {
        let line = format!(r#"frontend="{frontend}",outcome="length"}} {calls}"#);
        assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
    }
}
