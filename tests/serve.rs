//! `wick serve` as a process: graceful shutdown and start-up errors.

mod common;

use std::process::Command;

use common::process::{ServerProcess, resident_kib};
use futures::StreamExt;
use serde_json::{Value, json};

fn sigterm(server: &ServerProcess) {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sigterm_drains_lets_a_running_stream_finish_then_exits() {
    // A long grace period: the point is that the stream ends by itself, however busy the machine.
    let mut server = ServerProcess::serve(&["--shutdown-grace", "600"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (result, streamed, health) = runtime.block_on(stream_through_sigterm(&server, 60));
    // Draining: still answering, but /health says 503 so that load balancers stop sending.
    assert_eq!(health, (503, json!({ "status": "draining" })));
    // The generation ran to its own end, and every token reached the client.
    let finish = &result["structuredContent"]["finish_reason"];
    assert!(finish == "length" || finish == "stop", "{result}");
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["structuredContent"]["text"], streamed.as_str());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_generation_past_the_grace_period_ends_with_an_error() {
    let mut server = ServerProcess::serve(&["--shutdown-grace", "1"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (result, streamed, _) = runtime.block_on(stream_through_sigterm(&server, 4000));
    // Cut off: a result, not a silently closed stream, that says why and keeps the partial text.
    assert_eq!(result["isError"], true, "{result}");
    let message = result["content"][0]["text"].as_str().unwrap();
    assert!(message.contains("--shutdown-grace"), "{message}");
    assert_eq!(result["structuredContent"]["finish_reason"], "cancelled");
    assert_eq!(result["structuredContent"]["text"], streamed.as_str());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}

/// Streams a generation of up to `max_tokens`, sending SIGTERM after the third token and then
/// asking /health; returns the result, the text of the progress notifications and what /health
/// answered.
async fn stream_through_sigterm(
    server: &ServerProcess,
    max_tokens: usize,
) -> (Value, String, (u16, Value)) {
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "generate",
        "arguments": {"prompt": "1, 2, 3, 4, 5, 6, 7,", "max_tokens": max_tokens,
                      "temperature": 0, "repeat_penalty": 1.0},
        "_meta": {"progressToken": "t", "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let response = reqwest::Client::new()
        .post(server.mcp())
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "generate")
        .json(&request)
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let (mut buffer, mut progress, mut health) = (String::new(), 0, None);
    let mut streamed = String::new();
    let result = 'read: loop {
        let chunk = body
            .next()
            .await
            .expect("the stream stays open until the result")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let message: Value = serde_json::from_str(data).unwrap();
            if message["method"] == "notifications/progress" {
                progress += 1;
                streamed.push_str(message["params"]["message"].as_str().unwrap());
                if progress == 3 && health.is_none() {
                    sigterm(server);
                    health = Some(health_after_sigterm(server).await);
                }
            } else if message.get("result").is_some() {
                break 'read message["result"].clone();
            }
        }
    };
    (result, streamed, health.expect("SIGTERM was sent"))
}

/// /health once the server has seen the signal (it answers 200 until then).
async fn health_after_sigterm(server: &ServerProcess) -> (u16, Value) {
    let url = format!("{}/health", server.base);
    for _ in 0..200 {
        let response = reqwest::get(&url).await.expect("still accepting");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if status != 200 {
            return (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("/health kept answering 200 after SIGTERM");
}

#[test]
fn an_unknown_model_stops_serve_with_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["serve", "--port", "0", "--model", "no-such-model"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown model `no-such-model`"), "{stderr}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["serve", "--port", &port])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot listen on") && stderr.contains("--port"),
        "{stderr}"
    );
    // The OS's reason, once.
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
}

#[test]
fn a_model_that_fails_to_load_is_never_announced_as_served() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"not a gguf file").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["serve", "--port", "0", "--model-path"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        stdout.contains("wick: loading") && stdout.contains("MCP will be at http://"),
        "{stdout}"
    );
    assert!(!stdout.contains("serving MCP at"), "{stdout}");
    assert!(stderr.contains("cannot load"), "{stderr}");
}

/// A 2025-era `initialize` request with `id`: the response, which opens a session on 200.
fn initialize(
    http: &reqwest::blocking::Client,
    server: &ServerProcess,
    id: usize,
) -> reqwest::blocking::Response {
    http.post(server.mcp())
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "serve-tests", "version": "0"}}}),
        )
        .send()
        .unwrap()
}

/// A flood of `initialize` requests, three times `--max-sessions`: the excess is refused, the
/// refusals cost no memory, and an open session still works.
#[test]
fn a_session_flood_is_refused_past_max_sessions_and_memory_stays_flat() {
    let Some(_) = resident_kib(std::process::id()) else {
        return; // no /proc: not Linux
    };
    let max = 200;
    let server = ServerProcess::serve(&["--max-sessions", &max.to_string()]);
    let http = reqwest::blocking::Client::new();
    let initialize = |id: usize| initialize(&http, &server, id);
    let pid = server.child.id();
    let start = resident_kib(pid).unwrap();
    let sessions: Vec<String> = (0..max)
        .map(|id| {
            let response = initialize(id);
            assert_eq!(response.status(), 200);
            response.headers()["mcp-session-id"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let full = resident_kib(pid).unwrap();
    let refused = (max..3 * max)
        .filter(|&id| initialize(id).status() == 503)
        .count();
    let after_refusals = resident_kib(pid).unwrap();
    assert_eq!(refused, 2 * max);
    let ping = http
        .post(server.mcp())
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &sessions[0])
        .header("mcp-protocol-version", "2025-11-25")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .unwrap();
    assert_eq!(ping.status(), 200);
    for session in &sessions {
        let deleted = http
            .delete(server.mcp())
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
            .unwrap();
        assert_eq!(deleted.status(), 204);
    }
    let after_delete = resident_kib(pid).unwrap();
    eprintln!(
        "resident KiB: start {start}, {max} sessions {full}, after {refused} refusals \
         {after_refusals}, all deleted {after_delete}"
    );
    assert!(
        after_refusals <= full + 4096,
        "refusals cost memory: {full} KiB -> {after_refusals} KiB"
    );
}

/// Reads from `stream` until the server closes it (or 60 s pass); what it sent.
fn read_until_closed(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return String::from_utf8_lossy(&received).into_owned(),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return String::from_utf8_lossy(&received).into_owned();
            }
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
}

/// `--idle-connection-timeout`: a client that sends half a header and stalls (slowloris), and a
/// keep-alive connection left idle after its response, are closed by the server.
#[test]
fn stalled_and_idle_connections_are_closed() {
    use std::io::Write;
    let server = ServerProcess::serve(&["--idle-connection-timeout", "1"]);
    let addr = server.base.trim_start_matches("http://");
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    stalled
        .write_all(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: appl")
        .unwrap();
    let answer = read_until_closed(&mut stalled);
    assert!(!answer.contains("200 OK"), "{answer}");

    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"ready\""), "{answer}");
}

/// `--max-connections`: past it a new connection is answered 503 naming the flag; the open ones
/// keep working, and closing one makes room.
#[test]
fn connections_past_max_connections_are_refused() {
    use std::io::Write;
    let server = ServerProcess::serve(&["--max-connections", "3"]);
    let addr = server.base.trim_start_matches("http://");
    let health = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let open: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Once those three are counted (the server accepts them as they come), a fourth is refused.
    let mut refused = String::new();
    for _ in 0..100 {
        let mut extra = std::net::TcpStream::connect(addr).unwrap();
        extra.write_all(health).unwrap();
        refused = read_until_closed(&mut extra);
        if refused.starts_with("HTTP/1.1 503") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("--max-connections"), "{refused}");
    assert!(
        refused.to_lowercase().contains("retry-after: 1"),
        "{refused}"
    );

    let mut first = &open[0];
    first.write_all(health).unwrap();
    let mut response = [0u8; 512];
    let n = std::io::Read::read(&mut first, &mut response).unwrap();
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));

    drop(open);
    let mut served = false;
    for _ in 0..100 {
        if server.health().is_some() {
            served = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(served, "closed connections make room");
}

/// Reads one HTTP/1.1 response from `stream` (a `content-length` body, or a chunked one that
/// holds no `0\r\n\r\n` before its end): its head, lowercased.
fn read_response_head(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed mid-head");
        received.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&received).to_lowercase();
    if head.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        while !body.ends_with(b"0\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed mid-body");
            body.push(byte[0]);
        }
    } else {
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse().unwrap());
        stream.read_exact(&mut vec![0u8; length]).unwrap();
    }
    head
}

/// An answer that leaves its request's body unread (a 204 to a DELETE that came with one) says
/// `Connection: close`, since the server then closes the connection; one that read its body
/// (a malformed POST, refused after reading) keeps the connection for the next request.
#[test]
fn an_answer_that_leaves_the_body_unread_says_connection_close() {
    use std::io::Write;
    let server = ServerProcess::serve(&[]);
    let addr = server.base.trim_start_matches("http://");

    let mut kept = std::net::TcpStream::connect(addr).unwrap();
    let malformed = "{\"not\": \"json-rpc\"";
    for _ in 0..2 {
        write!(
            kept,
            "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{malformed}",
            malformed.len()
        )
        .unwrap();
        let head = read_response_head(&mut kept);
        assert!(head.starts_with("http/1.1 400"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }

    // An open session's DELETE, with a body it does not read: 204, and the connection closes.
    let session =
        initialize(&reqwest::blocking::Client::new(), &server, 0).headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
    let mut unread = std::net::TcpStream::connect(addr).unwrap();
    write!(
        unread,
        "DELETE /mcp HTTP/1.1\r\nHost: localhost\r\nMcp-Session-Id: {session}\r\n\
         Mcp-Protocol-Version: 2025-11-25\r\nContent-Length: 100000\r\n\r\n{{\"partial\":"
    )
    .unwrap();
    let head = read_response_head(&mut unread);
    assert!(head.starts_with("http/1.1 204"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(
        read_until_closed(&mut unread),
        "",
        "closed after the answer"
    );
}
