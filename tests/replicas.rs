//! Several `wick serve` replicas behind a real HAProxy (2.6, as Debian ships it), configured by
//! the file users deploy, deploy/haproxy.cfg: the replicas' addresses and the listening ports
//! go in through its environment variables. Replicas are told apart by their `/health`
//! counters, and the clients are the official MCP Python SDK and raw 2026-era HTTP.

mod common;

use std::io::{BufRead, BufReader, Lines, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::process::{ServerProcess, client_script, client_tools, python};
use common::stateless::{self, Streamed};
use serde_json::{Value, json};

const POOL_B_MODEL: &str = "gemma-3-270m-q4_k_m";

/// The tests here each run several servers: one at a time, on a small machine.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The HAProxy that tests/clients/setup.sh provided (see tests/clients/haproxy.sh).
fn haproxy() -> Command {
    let mut command = Command::new(client_tools().join("bin/haproxy"));
    // Only what the test sets reaches the configuration.
    command.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// HAProxy running deploy/haproxy.cfg, on loopback ports of its own.
struct Haproxy {
    child: Child,
    base: String,
    stats: String,
}

impl Haproxy {
    fn start(env: &[(&str, String)]) -> Self {
        let (port, stats_port) = (free_port(), free_port());
        let child = haproxy()
            .args(["-db", "-f"])
            .arg(repo("deploy/haproxy.cfg"))
            .env("WICK_LB_BIND", format!("127.0.0.1:{port}"))
            .env("WICK_LB_STATS", format!("127.0.0.1:{stats_port}"))
            // Quick health checks: a draining replica leaves rotation within a second.
            .env("WICK_CHECK_INTER", "300ms")
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy runs (tests/clients/haproxy.sh provides it)");
        let mut proxy = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            stats: format!("http://127.0.0.1:{stats_port}/stats;csv"),
        };
        for _ in 0..100 {
            if let Some(status) = proxy.child.try_wait().expect("haproxy's status") {
                panic!("haproxy exited: {status}");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return proxy;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("haproxy does not listen");
    }

    fn mcp(&self) -> String {
        format!("{}/mcp", self.base)
    }

    /// HAProxy's view of `server` (UP, DOWN, ...), from its statistics page.
    fn status(&self, server: &str) -> String {
        let csv = reqwest::blocking::get(&self.stats)
            .and_then(|r| r.text())
            .expect("the statistics page");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .expect("a header")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name| header.iter().position(|h| *h == name).expect(name);
        let (svname, status) = (column("svname"), column("status"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|fields| fields[svname] == server)
            .map(|fields| fields[status].to_string())
            .unwrap_or_else(|| panic!("no server {server} in:\n{csv}"))
    }

    /// Waits until HAProxy's health checks have taken `server` out of rotation.
    fn wait_down(&self, server: &str) {
        for _ in 0..600 {
            if self.status(server).starts_with("DOWN") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("HAProxy still routes to {server}: {}", self.status(server));
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `host:port` of a replica, for HAProxy.
fn address(replica: &ServerProcess) -> String {
    replica.base.trim_start_matches("http://").to_string()
}

/// `count` replicas, started side by side.
fn replicas(count: usize, args: &[&str]) -> Vec<ServerProcess> {
    std::thread::scope(|scope| {
        let started: Vec<_> = (0..count)
            .map(|_| scope.spawn(|| ServerProcess::serve(args)))
            .collect();
        started
            .into_iter()
            .map(|s| s.join().expect("a replica starts"))
            .collect()
    })
}

/// Requests each replica's default model has accepted so far.
fn requests(replicas: &[ServerProcess]) -> Vec<u64> {
    replicas
        .iter()
        .map(|r| r.stats()["requests"].as_u64().expect("a request count"))
        .collect()
}

fn delta(before: &[u64], after: &[u64]) -> Vec<u64> {
    before.iter().zip(after).map(|(b, a)| a - b).collect()
}

/// Generations running on `base`, from its /health.
async fn active(client: &reqwest::Client, base: &str) -> u64 {
    let health: Value = client
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health answers")
        .json()
        .await
        .expect("health is JSON");
    health["models"][0]["stats"]["active"]
        .as_u64()
        .unwrap_or_default()
}

/// The call streamed every token of its result and ran to its length limit.
fn check_streamed(call: &Streamed) {
    let structured = &call.result["structuredContent"];
    assert_ne!(call.result["isError"], true, "{}", call.result);
    assert_eq!(structured["finish_reason"], "length", "{}", call.result);
    assert!(call.progress > 0, "{}", call.result);
    assert_eq!(
        structured["text"],
        call.streamed.as_str(),
        "{}",
        call.result
    );
}

fn generate_args(prompt: &str, max_tokens: usize) -> Value {
    json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

/// The JSON lines a Python client printed, as (kind, value).
fn parse(line: &str) -> Option<(String, Value)> {
    let (kind, json) = line.split_once(' ')?;
    Some((kind.to_string(), serde_json::from_str(json).ok()?))
}

fn run_python(script: &str, args: &[&str]) -> Vec<(String, Value)> {
    let output = Command::new(python())
        .arg(client_script(script))
        .args(args)
        .output()
        .expect("the client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().filter_map(parse).collect()
}

/// A Python SDK call's line: the text arrived as progress, and no error.
fn check_sdk_call(call: &Value) {
    assert_eq!(call["is_error"], false, "{call}");
    assert_eq!(call["streamed"], call["text"], "{call}");
    assert!(
        !call["text"].as_str().unwrap_or_default().is_empty(),
        "{call}"
    );
}

#[test]
fn the_shipped_haproxy_config_and_kubernetes_manifests_are_valid() {
    let config = repo("deploy/haproxy.cfg");
    let layouts: [&[(&str, &str)]; 3] = [
        &[("WICK_REPLICA_1", "127.0.0.1:8081")],
        &[
            ("WICK_REPLICA_1", "127.0.0.1:8081"),
            ("WICK_REPLICA_2", "127.0.0.1:8082"),
            ("WICK_REPLICA_3", "127.0.0.1:8083"),
            ("WICK_REPLICA_4", "127.0.0.1:8084"),
            ("WICK_POOL_B_MODEL", POOL_B_MODEL),
            ("WICK_POOL_B_1", "127.0.0.1:8091"),
            ("WICK_POOL_B_2", "127.0.0.1:8092"),
            ("WICK_LB_STATS", "127.0.0.1:8404"),
        ],
        &[("WICK_REPLICAS_DNS", "localhost:8080")],
    ];
    for env in layouts {
        let output = haproxy()
            .arg("-c")
            .arg("-f")
            .arg(&config)
            .envs(env.iter().copied())
            .output()
            .expect("haproxy runs (tests/clients/haproxy.sh provides it)");
        assert!(
            output.status.success(),
            "haproxy -c with {env:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let mut manifests = Vec::new();
    let mut folders = vec![repo("deploy/kubernetes")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("deploy/kubernetes") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                manifests.push(path);
            }
        }
    }
    assert!(manifests.len() >= 4, "{manifests:?}");
    let output = Command::new(client_tools().join("py/bin/kubernetes-validate"))
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        output.status.success(),
        "kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn replicas_share_stateless_calls_stream_tokens_and_keep_sessions() {
    let _serial = serial();
    let replicas = replicas(3, &[]);
    let env: Vec<(&str, String)> = ["WICK_REPLICA_1", "WICK_REPLICA_2", "WICK_REPLICA_3"]
        .into_iter()
        .zip(replicas.iter().map(address))
        .collect();
    let proxy = Haproxy::start(&env);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let client = reqwest::Client::new();

    // Not buffered: when the first token reaches the client, its generation is still running.
    let running = runtime.block_on(async {
        let arguments = generate_args("1, 2, 3, 4, 5, 6, 7,", 40);
        let mut events = stateless::call(&client, &proxy.mcp(), "generate", arguments, &[]).await;
        let first = events.peek().await.expect("an event");
        assert_eq!(first["method"], "notifications/progress", "{first}");
        let mut running = 0;
        for replica in &replicas {
            running += active(&client, &replica.base).await;
        }
        let rest = stateless::finish(events).await;
        check_streamed(&rest);
        running
    });
    assert_eq!(running, 1, "the proxy held the tokens back until the end");

    // Twelve concurrent stateless calls: each streams every token, and more than one replica works.
    let before = requests(&replicas);
    let url = proxy.mcp();
    let calls =
        runtime.block_on(futures::future::join_all(common::PROMPTS[..12].iter().map(
            |prompt| stateless::generate(&client, &url, generate_args(prompt, 8)),
        )));
    calls.iter().for_each(check_streamed);
    let spread = delta(&before, &requests(&replicas));
    assert_eq!(spread.iter().sum::<u64>(), 12, "{spread:?}");
    assert!(
        spread.iter().filter(|&&n| n > 0).count() > 1,
        "all calls went to one replica: {spread:?}"
    );

    // A 2025-11-25 session: five calls, all on the replica that created the session (its open
    // GET stream makes that replica the busiest, so leastconn alone would send them elsewhere).
    let before = requests(&replicas);
    let lines = run_python("py_replicas.py", &[&proxy.mcp(), "session", "5"]);
    let calls: Vec<&Value> = lines
        .iter()
        .filter(|(k, _)| k == "CALL")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(calls.len(), 5, "{lines:?}");
    calls.iter().copied().for_each(check_sdk_call);
    assert!(calls[0]["session"].is_string(), "{}", calls[0]);
    assert!(calls.iter().all(|c| c["session"] == calls[0]["session"]));
    let mut spread = delta(&before, &requests(&replicas));
    spread.sort();
    assert_eq!(spread, [0, 0, 5], "one session, one replica");

    // GET /sse names its session in a header too, for the proxy: the id of the endpoint event.
    let (header, endpoint) = runtime.block_on(async {
        let response = client
            .get(format!("{}/sse", proxy.base))
            .send()
            .await
            .expect("GET /sse");
        let header = response.headers().get("mcp-session-id").cloned();
        let mut body = response.bytes_stream();
        let mut text = String::new();
        while !text.contains("\n\n") {
            let chunk = futures::StreamExt::next(&mut body).await;
            text.push_str(&String::from_utf8_lossy(
                &chunk.expect("an event").expect("bytes"),
            ));
        }
        (header, text)
    });
    let header = header.expect("an Mcp-Session-Id header");
    let header = header.to_str().expect("ASCII");
    assert!(
        endpoint.contains(&format!("/sse/messages?sessionId={header}\n")),
        "{header}: {endpoint}"
    );

    // A legacy SSE session: its POSTs reach the replica holding its event stream.
    let before = requests(&replicas);
    let sse = format!("{}/sse", proxy.base);
    let lines = run_python("py_client.py", &[&sse, "sse"]);
    let result = lines
        .iter()
        .find(|(k, _)| k == "RESULT")
        .map(|(_, v)| v)
        .expect("a result");
    assert_eq!(result["is_error"], false, "{result}");
    let streamed: String = lines
        .iter()
        .filter(|(k, _)| k == "PROGRESS")
        .filter_map(|(_, v)| v["message"].as_str())
        .collect();
    assert_eq!(result["text"], streamed.as_str());
    let mut spread = delta(&before, &requests(&replicas));
    spread.sort();
    assert_eq!(spread, [0, 0, 1]);
}

/// A replica serving the default model and one serving POOL_B_MODEL, with HAProxy routing
/// `Mcp-Param-Model: POOL_B_MODEL` to the second.
fn two_pools() -> (ServerProcess, ServerProcess, Haproxy) {
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| ServerProcess::serve(&[]));
        let b = scope.spawn(|| ServerProcess::serve(&["--model", POOL_B_MODEL]));
        (
            a.join().expect("pool A starts"),
            b.join().expect("pool B starts"),
        )
    });
    let proxy = Haproxy::start(&[
        ("WICK_REPLICA_1", address(&a)),
        ("WICK_POOL_B_MODEL", POOL_B_MODEL.to_string()),
        ("WICK_POOL_B_1", address(&b)),
    ]);
    (a, b, proxy)
}

/// Pool A never loaded pool B's model, and pool B answered `calls` requests.
fn answered_by_pool_b(a: &ServerProcess, b: &ServerProcess, calls: u64) {
    let models = a.health().expect("pool A's health")["models"].clone();
    assert_eq!(models.as_array().map(Vec::len), Some(1), "{models}");
    assert_eq!(b.stats()["requests"], calls);
}

#[test]
fn the_mcp_param_model_header_picks_the_pool_serving_that_model() {
    let _serial = serial();
    let (a, b, proxy) = two_pools();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let client = reqwest::Client::new();

    let mut arguments = generate_args("The capital of France is", 6);
    arguments["model"] = json!(POOL_B_MODEL);
    let headers = [("mcp-param-model", POOL_B_MODEL)];
    let call = runtime.block_on(async {
        let events = stateless::call(&client, &proxy.mcp(), "generate", arguments, &headers).await;
        stateless::finish(events).await
    });
    check_streamed(&call);
    assert_eq!(call.result["structuredContent"]["model"], POOL_B_MODEL);
    answered_by_pool_b(&a, &b, 1);

    // Without the header: the default pool.
    let before = a.stats()["requests"].as_u64();
    let call = runtime.block_on(stateless::generate(
        &client,
        &proxy.mcp(),
        generate_args("The capital of France is", 6),
    ));
    check_streamed(&call);
    assert_eq!(a.stats()["requests"].as_u64(), before.map(|n| n + 1));
    answered_by_pool_b(&a, &b, 1);
}

/// The SDK sends `Mcp-Param-Model` by itself, from the `x-mcp-header` annotation on the tools'
/// `model` argument.
#[test]
fn the_python_sdk_reaches_the_pool_of_the_model_it_names() {
    let _serial = serial();
    let (a, b, proxy) = two_pools();
    let lines = run_python("py_replicas.py", &[&proxy.mcp(), "model", POOL_B_MODEL]);
    let call = lines
        .iter()
        .find(|(k, _)| k == "CALL")
        .map(|(_, v)| v)
        .expect("a call");
    check_sdk_call(call);
    assert_eq!(call["params"]["mcp-param-model"], POOL_B_MODEL, "{call}");
    assert_eq!(call["structured"]["model"], POOL_B_MODEL, "{call}");
    answered_by_pool_b(&a, &b, 1);
}

/// The Python client of the failover scenario: its lines, read as they come.
struct FailoverClient {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl FailoverClient {
    fn start(url: &str) -> Self {
        let mut child = Command::new(python())
            .arg(client_script("py_replicas.py"))
            .args([url, "failover"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the client runs");
        let stdout = child.stdout.take().expect("its stdout");
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// Lines up to and including the first of `kind`.
    fn until(&mut self, kind: &str) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        for line in self.lines.by_ref() {
            let line = line.expect("the client's output");
            if let Some(parsed) = parse(&line) {
                let done = parsed.0 == kind;
                seen.push(parsed);
                if done {
                    return seen;
                }
            }
        }
        panic!("the client ended before {kind}: {seen:?}");
    }
}

impl Drop for FailoverClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sigterm(replica: &ServerProcess) {
    let status = Command::new("kill")
        .args(["-TERM", &replica.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[test]
fn a_draining_replica_finishes_its_calls_while_the_others_take_new_ones() {
    let _serial = serial();
    let mut replicas = replicas(2, &["--shutdown-grace", "300"]);
    let proxy = Haproxy::start(&[
        ("WICK_REPLICA_1", address(&replicas[0])),
        ("WICK_REPLICA_2", address(&replicas[1])),
    ]);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let client = reqwest::Client::new();

    // A 2025-11-25 session makes its first call, then waits.
    let mut session = FailoverClient::start(&proxy.mcp());
    let first = session.until("WAITING");
    check_sdk_call(&first[0].1);
    let spread = requests(&replicas);
    let holder = spread
        .iter()
        .position(|&n| n == 1)
        .unwrap_or_else(|| panic!("{spread:?}"));
    let other = 1 - holder;

    // Calls running on both replicas when the session's replica is told to stop.
    let (running, after_stop) = runtime.block_on(async {
        let mut streams = Vec::new();
        for prompt in &common::PROMPTS[..4] {
            let mut events = stateless::call(
                &client,
                &proxy.mcp(),
                "generate",
                generate_args(prompt, 24),
                &[],
            )
            .await;
            let first = events.peek().await.expect("an event");
            assert_eq!(first["method"], "notifications/progress", "{first}");
            streams.push(events);
        }
        let on_holder = active(&client, &replicas[holder].base).await;
        assert!(on_holder > 0, "no call runs on the replica to stop");
        sigterm(&replicas[holder]);
        let mut finished = Vec::new();
        for events in streams {
            finished.push(stateless::finish(events).await);
        }
        (finished, on_holder)
    });
    // Every call ran to its end, those on the draining replica included.
    running.iter().for_each(check_streamed);
    assert!(after_stop > 0);

    // Once HAProxy sees the replica draining, new calls go to the other one.
    proxy.wait_down(&format!("wick{}", holder + 1));
    let before = replicas[other].stats()["requests"]
        .as_u64()
        .unwrap_or_default();
    let url = proxy.mcp();
    let calls =
        runtime.block_on(futures::future::join_all(common::PROMPTS[4..7].iter().map(
            |prompt| stateless::generate(&client, &url, generate_args(prompt, 6)),
        )));
    calls.iter().for_each(check_streamed);
    let after = replicas[other].stats()["requests"]
        .as_u64()
        .unwrap_or_default();
    assert_eq!(after - before, 3);

    // The session lived on the stopped replica: the next call finds it gone (404), and a new
    // session, opened through the proxy, answers on the other replica.
    writeln!(session.child.stdin.as_mut().expect("the client's stdin")).expect("the client reads");
    let rest = session.until("CALL");
    assert!(rest.iter().any(|(k, _)| k == "EXPIRED"), "{rest:?}");
    let call = &rest.last().expect("a call").1;
    check_sdk_call(call);
    assert_ne!(call["session"], first[0].1["session"]);
    assert_eq!(
        replicas[other].stats()["requests"].as_u64(),
        Some(after + 1)
    );
    let status = session.child.wait().expect("the client ends");
    assert!(status.success(), "{status}");

    // The stopped replica exits by itself, having finished its work.
    let stopped = &mut replicas[holder].child;
    for _ in 0..600 {
        if let Some(status) = stopped.try_wait().expect("the replica's status") {
            assert!(status.success(), "{status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the draining replica did not exit");
}

/// A directory of links to just `tools` from this PATH, to run a script on a PATH of its own.
fn path_of(dir: &Path, tools: &[&str]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("a bin directory");
    for tool in tools {
        std::os::unix::fs::symlink(on_path(tool), bin.join(tool)).expect("link a tool");
    }
    bin
}

/// Where `tool` is on this PATH.
fn on_path(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").expect("PATH");
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} on PATH"))
}

#[test]
fn haproxy_setup_without_apt_get_names_the_command_to_run() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bin = path_of(dir.path(), &["mkdir", "rm", "id", "grep"]);
    // bash itself by its full path: the script's PATH has no bash on it.
    let output = Command::new(on_path("bash"))
        .arg(repo("tests/clients/haproxy.sh"))
        .arg(dir.path().join("tools"))
        .env("PATH", &bin)
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("apt-get install -y haproxy") && stderr.contains("no apt-get"),
        "{stderr}"
    );
}

/// The path a user without root takes: Debian's package and the libraries this system lacks,
/// downloaded and unpacked into the tools directory. As root, the test drops to `nobody`.
#[test]
fn haproxy_setup_without_root_unpacks_debians_package() {
    let apt_get = Command::new("sh")
        .args(["-c", "command -v apt-get"])
        .output();
    if !apt_get.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: no apt-get here, so no Debian package to unpack");
        return;
    }
    let root = is_root();
    if root {
        // A fresh image may have no package lists yet: fetching them needs root, as a user's
        // administrator would.
        let policy = Command::new("apt-cache")
            .args(["policy", "haproxy"])
            .output();
        let known =
            policy.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Candidate: 2"));
        if !known {
            let update = Command::new("apt-get").args(["update", "-qq"]).status();
            assert!(update.is_ok_and(|s| s.success()), "apt-get update");
        }
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tools = dir.path().join("tools");
    let mut command = if root {
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("let nobody write the tools directory");
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"]);
        command
    } else {
        Command::new("bash")
    };
    // Debian keeps haproxy in /usr/sbin, which is not on this PATH, as on a user's.
    let output = command
        .arg(repo("tests/clients/haproxy.sh"))
        .arg(&tools)
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .output()
        .expect("the setup step runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    if !Path::new("/usr/bin/haproxy").exists() {
        assert!(tools.join("haproxy/usr/sbin/haproxy").is_file(), "{stderr}");
    }
    let version = Command::new(tools.join("bin/haproxy"))
        .arg("-v")
        .env_clear()
        .output()
        .expect("the unpacked haproxy runs");
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("HAProxy version"),
        "{version:?}"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
