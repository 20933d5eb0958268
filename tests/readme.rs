//! The client snippets of README.md's "Connecting clients" and "OpenAI API" sections, taken from
//! the README itself and run against `wick serve`, so that the README cannot rot: each must exit
//! by itself and print the tokens it was streamed.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{ServerProcess, client_tools, node22, python};
use serde_json::Value;

/// The URL the snippets name; the test server listens on a port of its own.
const README_URL: &str = "http://127.0.0.1:8080";

/// Long enough for any machine to load nothing and stream 24 tokens; a snippet that does not
/// exit by then hangs.
const TIMEOUT: Duration = Duration::from_secs(180);

const CONNECTING: &str = "### Connecting clients";
const OPENAI: &str = "## OpenAI API";

/// The fenced blocks of `language` in the README section headed `heading`.
fn snippets(heading: &str, language: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find(&format!("{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has a section `{heading}`"));
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let fence = format!("```{language}\n");
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(at) = rest.find(&fence) {
        let body = &rest[at + fence.len()..];
        let end = body.find("```").expect("a closed code block");
        blocks.push(body[..end].to_string());
        rest = &body[end..];
    }
    blocks
}

/// The one block of `language` under `heading`, pointed at `server`.
fn snippet(heading: &str, language: &str, server: &ServerProcess) -> String {
    let blocks = snippets(heading, language);
    assert_eq!(
        blocks.len(),
        1,
        "one {language} snippet expected: {blocks:?}"
    );
    for_server(&blocks[0], server)
}

fn for_server(snippet: &str, server: &ServerProcess) -> String {
    assert!(snippet.contains(README_URL), "{snippet}");
    snippet.replace(README_URL, &server.base)
}

/// Runs `command` to its exit and returns its stdout; fails if it exits non-zero or is still
/// running after `TIMEOUT`.
fn run(mut command: Command) -> String {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the snippet starts");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the snippet") {
            break Some(status);
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    match status {
        None => panic!(
            "the snippet did not exit within {TIMEOUT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ),
        Some(status) => assert!(
            status.success(),
            "the snippet failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ),
    }
    stdout
}

/// The snippets print each token as it arrives, then a newline, a space and the structured
/// result: the streamed text must be there, before the result.
fn check_streamed(stdout: &str) {
    let at = stdout
        .rfind("\n {")
        .unwrap_or_else(|| panic!("no structured result after the tokens:\n{stdout}"));
    let (streamed, result) = stdout.split_at(at);
    assert!(streamed.contains("Paris"), "streamed: {streamed:?}");
    assert!(
        result.contains("finish_reason") && result.contains("completion_tokens"),
        "{result}"
    );
}

#[test]
fn readme_python_snippet_streams_and_exits() {
    let server = ServerProcess::serve(&[]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("snippet.py");
    std::fs::write(&script, snippet(CONNECTING, "python", &server)).unwrap();
    let mut command = Command::new(python());
    command.arg(&script);
    check_streamed(&run(command));
}

#[test]
fn readme_typescript_snippet_streams_and_exits() {
    let server = ServerProcess::serve(&[]);
    // Beside the installed SDK, so that its imports resolve.
    let script = client_tools().join(format!("readme-snippet-{}.mjs", std::process::id()));
    std::fs::write(&script, snippet(CONNECTING, "js", &server)).unwrap();
    let mut command = Command::new(node22());
    command.arg(&script);
    let stdout = run(command);
    let _ = std::fs::remove_file(&script);
    check_streamed(&stdout);
}

#[test]
fn readme_openai_snippet_streams_and_exits() {
    let server = ServerProcess::serve(&[]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("snippet.py");
    // The structured-output snippet (`parse`), the tool call, then the streaming one.
    let blocks = snippets(OPENAI, "python");
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    let (parse, tools, streaming) = (&blocks[0], &blocks[1], &blocks[2]);
    std::fs::write(&script, for_server(parse, &server)).unwrap();
    let mut command = Command::new(python());
    command.arg(&script);
    let stdout = run(command);
    assert!(
        stdout.contains("name=") && stdout.contains("population="),
        "{stdout}"
    );
    std::fs::write(&script, for_server(tools, &server)).unwrap();
    let mut command = Command::new(python());
    command.arg(&script);
    let stdout = run(command);
    assert!(stdout.starts_with("get_weather {'city': "), "{stdout}");
    std::fs::write(&script, for_server(streaming, &server)).unwrap();
    let mut command = Command::new(python());
    command.arg(&script);
    let stdout = run(command);
    assert!(!stdout.trim().is_empty(), "no streamed text");
    // Each delta as it came, then the newline the snippet ends with.
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    let stats = server.stats();
    assert_eq!(stats["requests"], 4, "{stats}");
    assert!(stats["tokens"].as_u64().unwrap() > 1, "{stats}");

    let mut curl = Command::new("bash");
    curl.args(["-c", &snippet(OPENAI, "sh", &server)]);
    let stdout = run(curl);
    let chunks: Vec<Value> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str(data).ok())
        .collect();
    assert!(chunks.len() > 2, "{stdout}");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(stdout.trim_end().ends_with("data: [DONE]"), "{stdout}");
}

/// The JSON-RPC messages of an event stream.
fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str(data.trim()).ok())
        .collect()
}

#[test]
fn readme_curl_snippets_speak_the_stateless_protocol() {
    let server = ServerProcess::serve(&[]);
    let curls: Vec<String> = snippets(CONNECTING, "sh")
        .into_iter()
        .filter(|block| block.trim_start().starts_with("curl"))
        .collect();
    let (mut discovered, mut called) = (false, false);
    for curl in &curls {
        let mut command = Command::new("bash");
        command.args(["-c", &for_server(curl, &server)]);
        let stdout = run(command);
        let messages = events(&stdout);
        let Some(last) = messages.last() else {
            panic!("no JSON-RPC message from\n{curl}\n{stdout}");
        };
        assert!(last.get("error").is_none(), "{curl}\n{stdout}");
        let result = &last["result"];
        if curl.contains("server/discover") {
            discovered = true;
            assert!(
                result["supportedVersions"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|v| v == "2026-07-28")),
                "{stdout}"
            );
        } else {
            called = true;
            let streamed: String = messages
                .iter()
                .filter(|m| m["method"] == "notifications/progress")
                .filter_map(|m| m["params"]["message"].as_str())
                .collect();
            assert!(streamed.contains("Paris"), "{stdout}");
            assert_eq!(result["structuredContent"]["text"], streamed.as_str());
        }
    }
    assert!(
        discovered && called,
        "expected a discover and a tools/call curl: {curls:?}"
    );
}
