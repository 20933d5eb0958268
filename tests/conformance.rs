//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, installed by
//! tests/clients/setup.sh) against wick, for protocol revisions 2025-11-25 and 2026-07-28.
//!
//! - `wick serve` itself, for the scenarios about the transport and the lifecycle, which need
//!   no fixtures: initialization and sessions, stateless requests, DNS-rebinding protection,
//!   concurrent SSE streams, and `tools/list`.
//! - examples/conformance_server.rs for everything the revision requires: it mounts the suite's
//!   fixture tools, resources and prompts (`test_tool_with_progress`, the MRTR tools, …) on
//!   wick's own router and transport configuration, exactly as `wick serve` mounts its tools.
//!
//! Each scenario runs on its own, with the suite's baseline option pointing at
//! tests/conformance/expected-failures-<server>-<revision>.yaml: a run fails on a failed check
//! or a warning that the file does not list, and on an entry that passes (a stale one). Every
//! entry there says why it cannot apply to wick.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use common::process::{ServerProcess, client_tools, node22};
use serde_json::Value;

const REVISIONS: [&str; 2] = ["2025-11-25", "2026-07-28"];

/// What `wick serve` answers without fixtures. Scenarios that do not apply at a revision (the
/// `initialize` handshake at 2026-07-28, stateless requests at 2025-11-25) are skipped by the
/// suite.
const SERVE_SCENARIOS: &[&str] = &[
    "server-initialize",
    "server-session-lifecycle",
    "server-stateless",
    "dns-rebinding-protection",
    "server-sse-multiple-streams",
    "tools-list",
    "http-custom-header-server-validation",
];

/// Run on the fixture server besides the revision's required list: scenarios the requirements
/// file leaves unscored (added after its release, or pending) that wick's stack passes. Left
/// out: the `tasks-*` scenarios of the tasks extension (SEP-2663), which wick does not offer.
const FIXTURE_EXTRAS: &[&str] = &[
    "server-session-lifecycle",
    "server-sse-polling",
    "json-schema-2020-12",
    "http-header-validation",
    "http-custom-header-server-validation",
];

#[test]
fn wick_serve_2025_11_25() {
    let server = ServerProcess::serve(&[]);
    check("serve", &server, REVISIONS[0], &owned(SERVE_SCENARIOS));
}

#[test]
fn wick_serve_2026_07_28() {
    let server = ServerProcess::serve(&[]);
    check("serve", &server, REVISIONS[1], &owned(SERVE_SCENARIOS));
}

#[test]
fn fixture_server_2025_11_25() {
    let server = ServerProcess::spawn(Command::new(fixture_server()));
    check(
        "fixtures",
        &server,
        REVISIONS[0],
        &fixture_scenarios(REVISIONS[0]),
    );
}

#[test]
fn fixture_server_2026_07_28() {
    let server = ServerProcess::spawn(Command::new(fixture_server()));
    check(
        "fixtures",
        &server,
        REVISIONS[1],
        &fixture_scenarios(REVISIONS[1]),
    );
}

/// Runs `scenarios` one by one against `server` at `revision`, then fails with what went wrong
/// in every scenario that did not pass.
fn check(name: &str, server: &ServerProcess, revision: &str, scenarios: &[String]) {
    let baseline = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "tests/conformance/expected-failures-{name}-{revision}.yaml"
    ));
    let expected = expected_failures(&baseline);
    let results = tempfile::tempdir().expect("a temporary directory");
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for scenario in scenarios {
        let out = results.path().join(scenario);
        let output = Command::new(node22())
            .arg(suite().join("dist/index.js"))
            .args(["server", "--url", &server.mcp(), "--scenario", scenario])
            .args(["--spec-version", revision, "--expected-failures"])
            .arg(&baseline)
            .arg("--output-dir")
            .arg(&out)
            .output()
            .expect("node runs the conformance suite");
        let text = plain(&format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
        if text.trim_start().starts_with("SKIPPED") {
            report.push(format!("  - {scenario}: not applicable at {revision}"));
            continue;
        }
        let checks = read_checks(&out);
        let mark = if output.status.success() {
            "ok"
        } else {
            "FAILED"
        };
        report.push(format!("  {mark} {scenario}: {}", tally(&checks)));
        if !output.status.success() {
            failed.push(explain(scenario, &output.status, &checks, &expected, &text));
        }
    }
    let report = report.join("\n");
    println!(
        "conformance {revision} against {name} ({}):\n{report}",
        server.mcp()
    );
    assert!(
        failed.is_empty(),
        "{} of {} scenarios failed against {name} at {revision}:\n{report}\n\n{}\n\nbaseline: {}",
        failed.len(),
        scenarios.len(),
        failed.join("\n\n"),
        baseline.display()
    );
}

/// Where the suite's package lies (installed on first use).
fn suite() -> PathBuf {
    client_tools().join("node_modules/@modelcontextprotocol/conformance")
}

/// The revision's required server scenarios, from the suite's own requirements file, and the
/// extras.
fn fixture_scenarios(revision: &str) -> Vec<String> {
    let file = suite().join(format!("requirements/{revision}.yaml"));
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let mut scenarios = required_server_scenarios(&text);
    assert!(
        scenarios.len() > 20,
        "too few required scenarios in {}: {scenarios:?}",
        file.display()
    );
    for extra in FIXTURE_EXTRAS {
        if !scenarios.iter().any(|s| s == extra) {
            scenarios.push(extra.to_string());
        }
    }
    scenarios
}

/// The entries of the top-level `server:` list of a requirements file.
fn required_server_scenarios(yaml: &str) -> Vec<String> {
    yaml.lines()
        .skip_while(|line| line.trim_end() != "server:")
        .skip(1)
        .take_while(|line| line.starts_with("  - ") || line.trim().is_empty())
        .filter_map(|line| line.strip_prefix("  - "))
        .map(|scenario| scenario.trim().to_string())
        .collect()
}

/// The checks the suite recorded in the `checks.json` files under `dir`.
fn read_checks(dir: &Path) -> Vec<Value> {
    walk(dir)
        .into_iter()
        .filter(|path| path.ends_with("checks.json"))
        .filter_map(|file| serde_json::from_slice::<Value>(&std::fs::read(file).ok()?).ok())
        .flat_map(|checks| checks.as_array().cloned().unwrap_or_default())
        .collect()
}

/// "12 success, 1 warning": how many checks ended in each status.
fn tally(checks: &[Value]) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for check in checks {
        let status = check["status"].as_str().unwrap_or("?").to_lowercase();
        *counts.entry(status).or_default() += 1;
    }
    if counts.is_empty() {
        return "no checks recorded".to_string();
    }
    counts
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The entries of an expected-failures file: `scenario` or `scenario:check-id`.
fn expected_failures(file: &Path) -> Vec<String> {
    let yaml = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    yaml.lines()
        .filter_map(|line| line.trim_start().strip_prefix("- "))
        .map(|entry| {
            entry
                .split('#')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect()
}

/// A failed scenario: each check that failed or warned and is not an expected failure, with
/// the suite's message and details, then the suite's verdict on the baseline (unexpected
/// failures, stale entries). Without such checks (the suite itself failed, or only stale
/// entries), all of the suite's output.
fn explain(
    scenario: &str,
    status: &ExitStatus,
    checks: &[Value],
    expected: &[String],
    output: &str,
) -> String {
    let mut text = format!("──── {scenario} ({status}) ────\n");
    let problems: Vec<&Value> = checks
        .iter()
        .filter(|check| matches!(check["status"].as_str(), Some("FAILURE" | "WARNING")))
        .filter(|check| {
            let id = format!("{scenario}:{}", check["id"].as_str().unwrap_or_default());
            !expected
                .iter()
                .any(|entry| *entry == id || entry == scenario)
        })
        .collect();
    if problems.is_empty() {
        text.push_str(output);
        return text;
    }
    for check in problems {
        let details = check
            .get("details")
            .map(Value::to_string)
            .unwrap_or_default();
        let details: String = details.chars().take(600).collect();
        text.push_str(&format!(
            "{} {}: {}\n    {}\n    details: {details}\n",
            check["status"].as_str().unwrap_or("?"),
            check["id"].as_str().unwrap_or("?"),
            check["description"].as_str().unwrap_or_default(),
            check["errorMessage"].as_str().unwrap_or("(no message)"),
        ));
    }
    let verdict = ["Expected failures", "Stale baseline", "Unexpected failures"]
        .iter()
        .filter_map(|heading| output.find(heading))
        .min()
        .map_or("", |start| &output[start..]);
    text.push_str(verdict.trim_end());
    text
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// The suite's output without its terminal colours.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn fixture_server() -> PathBuf {
    common::process::example("conformance_server")
}

fn owned(scenarios: &[&str]) -> Vec<String> {
    scenarios.iter().map(|s| s.to_string()).collect()
}

#[test]
fn reads_the_suite_files() {
    let yaml = "# comment\nserver:\n  - server-initialize\n  - ping\n\nclient:\n  - initialize\n\
                not_scored:\n  - scenario: x\n";
    assert_eq!(
        required_server_scenarios(yaml),
        ["server-initialize", "ping"]
    );
    assert_eq!(plain("\u{1b}[32mSUCCESS\u{1b}[0m ok"), "SUCCESS ok");
}
