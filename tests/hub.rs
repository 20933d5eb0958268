//! The Hugging Face backend: safetensors models made from the packaged GGUF (the Hub itself is
//! out of reach here), downloaded through the real hf-hub code path from a Hub on loopback.

mod common;

use std::path::{Path, PathBuf};

use common::hub::{COMMIT, HubBuilder};
use common::{greedy, load_error, run, small_engine, small_gguf};
use futures::StreamExt;
use wick::{
    Backend, DTypeChoice, LoadOptions, ModelManager, ModelSelector, Quantize, SamplingParams,
    TokenEvent,
};

const REPO: &str = "wick-tests/SmolLM2-135M-Instruct";

async fn hf_fixture() -> PathBuf {
    common::fixture::hf_fixture(&small_gguf().await)
}

/// A manager whose Hub is `endpoint`, with fresh, empty caches under `cache`.
fn manager_for(endpoint: &str, cache: &Path) -> ModelManager {
    common::manager_with(|config| config.fetcher = common::hub_at(endpoint, cache, None))
}

fn repo(id: &str) -> ModelSelector {
    ModelSelector::repo(id, None, Backend::Huggingface)
}

/// `wick` as a user runs it, with the Hub and caches set by environment variables.
async fn wick(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wick"));
    command
        .args(args)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn the_cli_downloads_caches_and_runs_offline() {
    let fixture = hf_fixture().await;
    let mut hub = HubBuilder::new().repo(REPO, &fixture).start().await;
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_str().unwrap();
    let endpoint = hub.endpoint.clone();
    let env = [("HF_ENDPOINT", endpoint.as_str()), ("HF_HOME", home_path)];
    let args = [
        "generate",
        "The capital of France is",
        "--backend",
        "huggingface",
        "--model",
        REPO,
        "--temperature",
        "0",
        "--max-tokens",
        "12",
    ];

    let out = wick(&args, &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Paris"), "{}", text(&out.stdout));
    // The hub cache layout, as huggingface_hub writes it.
    let snapshot = home
        .path()
        .join("hub/models--wick-tests--SmolLM2-135M-Instruct/snapshots")
        .join(COMMIT);
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(snapshot.join(file).is_file(), "{file} not cached");
    }
    assert!(
        hub.requests().iter().any(|r| r.starts_with("GET /lfs/")),
        "the weights came through the LFS redirect"
    );

    // The Hub is gone: the cached copy serves.
    hub.stop().await;
    let out = wick(&args, &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Paris"));

    // Offline with an empty cache: an error that names the missing file.
    let empty = tempfile::tempdir().unwrap();
    let offline = [
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_HOME", empty.path().to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let out = wick(&args, &offline).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("HF_HUB_OFFLINE") && stderr.contains("config.json"),
        "{stderr}"
    );
}

/// Same weights, different arithmetic: the GGUF kernels quantize activations to 8 bits inside
/// their Q4_1 matrix products, so a near-tie between two tokens can go either way; these prompts
/// have a clear winner at each of their first 8 steps.
#[tokio::test]
async fn safetensors_greedy_matches_the_gguf_model() {
    let fixture = hf_fixture().await;
    let gguf = small_engine(LoadOptions::default()).await;
    let hf = common::manager(LoadOptions::default())
        .get(&ModelSelector::Path(fixture))
        .await
        .unwrap();
    assert_eq!(hf.info().backend, Backend::Huggingface);
    assert_eq!(hf.info().dtype, "f32");
    for prompt in [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, in a small village,",
    ] {
        let (_, a, _) = run(&gguf, greedy(prompt, 8)).await;
        let (_, b, _) = run(&hf, greedy(prompt, 8)).await;
        assert_eq!(a, b, "first 8 greedy tokens differ for {prompt:?}");
    }
}

/// Greedy tokens with how far the chosen one led the next (in log-probability).
async fn greedy_with_leads(engine: &wick::Engine, prompt: &str, n: usize) -> Vec<(u32, f32)> {
    // No repeat penalty: the leads are of the raw logits, so the choice must be too.
    let params = SamplingParams {
        logprobs: Some(2),
        repeat_penalty: 1.0,
        ..SamplingParams::greedy(n)
    };
    let request = wick::GenerateRequest::prompt(prompt).with_params(params);
    let mut stream = engine.generate(request).expect("request accepted");
    let mut tokens = Vec::new();
    while let Some(TokenEvent::Token(token)) = stream.next().await {
        let lead = token
            .logprobs
            .as_ref()
            .map_or(f32::INFINITY, |l| match &l.top[..] {
                [first, second, ..] => first.logprob - second.logprob,
                _ => f32::INFINITY,
            });
        tokens.push((token.id, lead));
    }
    tokens
}

const AGREEMENT_PROMPTS: [&str; 3] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
];

/// `ours` gives `reference`'s first 12 greedy tokens on the test prompts up to the first step
/// where `reference`'s choice led by less than 0.5 (where other rounding may flip it).
async fn agrees_where_the_lead_is_clear(reference: &wick::Engine, ours: &wick::Engine) {
    let mut agreed = 0;
    for prompt in AGREEMENT_PROMPTS {
        let expected = greedy_with_leads(reference, prompt, 12).await;
        let got = greedy_with_leads(ours, prompt, 12).await;
        agreed += assert_agrees(prompt, &expected, &got);
    }
    assert!(agreed >= 8, "only {agreed} tokens compared");
}

/// `got` has `expected`'s tokens up to the first step where `expected`'s choice led by less
/// than 0.5 (after which the two may part), or all of them; returns how many agreed.
fn assert_agrees(prompt: &str, expected: &[(u32, f32)], got: &[(u32, f32)]) -> usize {
    let agreed = expected
        .iter()
        .zip(got)
        .take_while(|(a, b)| a.0 == b.0)
        .count();
    match expected.get(agreed) {
        Some((token, lead)) => assert!(
            *lead < 0.5,
            "{prompt:?}: token {agreed} differs ({token} led by {lead}): {expected:?} {got:?}"
        ),
        None => assert_eq!(got.len(), expected.len(), "{prompt:?}: {got:?}"),
    }
    agreed
}

/// `wick export --to gguf` of the SmolLM2 safetensors (bf16, as the Hub's are), dense and
/// quantized, loads in llama.cpp (its Python binding, a source build): llama.cpp splits the
/// prompts into wick's tokens (digits, contractions, brackets: the pre-tokenizer the export
/// named) and decodes wick's greedy tokens wherever its own choice led by 0.5 or more. The
/// Q8_0 file, on wick's GGUF path, also decodes as `--quantize q8_0` does at load from the same
/// weights, reading as many bytes per token.
#[tokio::test]
async fn the_gguf_export_loads_in_llama_cpp_and_decodes_as_wick_does() {
    let fixture = common::fixture::hf_fixture_in(&small_gguf().await, candle_core::DType::BF16);
    let dir = tempfile::tempdir().unwrap();
    let prompts = AGREEMENT_PROMPTS
        .into_iter()
        .chain(["In 2026, 1234567 people said: I'VE (maybe) gone...\n\n\tOK?"]);
    for (name, format) in [
        ("q8_0", ["--quantize", "q8_0"]),
        ("q4_k", ["--quantize", "q4_k"]),
        ("bf16", ["--weights", "bf16"]),
    ] {
        let gguf = dir.path().join(format!("smollm2-{name}.gguf"));
        let mut args = vec!["export", "--to", "gguf", "--backend", "huggingface"];
        args.extend(["--model-path", fixture.to_str().unwrap()]);
        args.extend(["--out", gguf.to_str().unwrap()]);
        args.extend(format);
        let out = wick(&args, &[]).await;
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));

        let ours = common::manager(LoadOptions::default())
            .get(&ModelSelector::Path(gguf.clone()))
            .await
            .unwrap();
        let llama_cpp = std::process::Command::new(common::process::python())
            .arg(common::process::client_script("llama_cpp_greedy.py"))
            .arg(&gguf)
            .arg("12")
            .args(prompts.clone())
            .output()
            .unwrap();
        assert!(llama_cpp.status.success(), "{}", text(&llama_cpp.stderr));
        let answers: Vec<serde_json::Value> = text(&llama_cpp.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(answers.len(), prompts.clone().count());
        let mut agreed = 0;
        for (prompt, answer) in prompts.clone().zip(answers) {
            let ids = ours
                .encode_input(&wick::Input::Prompt(prompt.to_string()))
                .unwrap();
            let theirs: Vec<u32> = serde_json::from_value(answer["prompt_ids"].clone()).unwrap();
            assert_eq!(theirs, ids, "{name}: {prompt:?} tokenized differently");
            let expected: Vec<(u32, f32)> =
                serde_json::from_value(answer["steps"].clone()).unwrap();
            let got = greedy_with_leads(&ours, prompt, 12).await;
            agreed += assert_agrees(&format!("{name}: {prompt}"), &expected, &got);
        }
        assert!(agreed >= 8, "{name}: only {agreed} tokens compared");

        if name == "q8_0" {
            let at_load = common::manager(LoadOptions {
                quantize: Some(Quantize::Q8_0),
                ..LoadOptions::default()
            })
            .get(&ModelSelector::Path(fixture.clone()))
            .await
            .unwrap();
            assert_eq!(
                at_load.info().weight_bytes_per_token,
                ours.info().weight_bytes_per_token
            );
            agrees_where_the_lead_is_clear(&at_load, &ours).await;
        }
    }
}

/// A bf16 checkpoint (as the Hub's mostly are) stays bf16 in memory on a CPU under `--dtype
/// auto`, on wick's half kernel: half the bytes per token of the same file widened to f32
/// (`--dtype f32`, candle's GEMM), the same values summed in another order, so the f32 model's
/// greedy tokens wherever its choice was clear.
#[tokio::test]
async fn bf16_weights_stay_bf16_on_the_cpu_and_agree_with_f32() {
    let bf16 = common::fixture::hf_fixture_in(&small_gguf().await, candle_core::DType::BF16);
    let load = |dtype| {
        let selector = ModelSelector::Path(bf16.clone());
        async move {
            common::manager(LoadOptions {
                dtype,
                ..LoadOptions::default()
            })
            .get(&selector)
            .await
            .unwrap()
        }
    };
    let kept = load(DTypeChoice::Auto).await;
    assert_eq!(kept.info().dtype, "bf16 weights, f32 activations");
    let wide = load(DTypeChoice::F32).await;
    assert_eq!(wide.info().dtype, "f32");
    assert_eq!(
        2 * kept.info().weight_bytes_per_token,
        wide.info().weight_bytes_per_token
    );
    agrees_where_the_lead_is_clear(&wide, &kept).await;
}

/// wick's half kernel on SmolLM2's real bf16 matrices (and as f16), 1 to 32 rows: every SIMD
/// level gives the same bits, within f32 rounding of the exact product of the stored values.
#[tokio::test]
async fn the_half_kernel_on_real_weights_matches_the_widened_product() {
    use candle_core::{DType, Device, Tensor};
    let bf16 = common::fixture::hf_fixture_in(&small_gguf().await, DType::BF16);
    let tensors =
        candle_core::safetensors::load(bf16.join("model.safetensors"), &Device::Cpu).unwrap();
    for name in [
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.7.mlp.down_proj.weight",
        "model.layers.29.mlp.gate_proj.weight",
    ] {
        let stored = &tensors[name];
        assert_eq!(stored.dtype(), DType::BF16, "{name}");
        for weight in [stored.clone(), stored.to_dtype(DType::F16).unwrap()] {
            let (n, k) = weight.dims2().unwrap();
            let w: Vec<f32> = weight
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for rows in [1, 3, 4, 9, 32] {
                let x: Vec<f32> = Tensor::randn(0f32, 1.0, rows * k, &Device::Cpu)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let kernel = wick::engine::HalfKernel::new(&weight).unwrap().unwrap();
                let outputs: Vec<Vec<f32>> = (0..)
                    .map_while(|level| kernel.matmul(&x, rows, level))
                    .map(Result::unwrap)
                    .collect();
                if outputs.is_empty() {
                    return;
                }
                for level in &outputs[1..] {
                    assert_eq!(level, &outputs[0], "{name}: levels differ, {rows} rows");
                }
                for (i, y) in outputs[0].iter().enumerate() {
                    let (r, c) = (i / n, i % n);
                    let products =
                        (0..k).map(|j| f64::from(w[c * k + j]) * f64::from(x[r * k + j]));
                    let magnitude: f64 = products.clone().map(f64::abs).sum();
                    let error = (f64::from(*y) - products.sum::<f64>()).abs();
                    assert!(
                        error <= magnitude * 1e-5,
                        "{name} {rows} rows, {r},{c}: {error}"
                    );
                }
            }
        }
    }
}

/// `--quantize q8_0` on the real SmolLM2 weights gives the Q8_0 matrices the GGUF path makes of
/// its Q4_1 file (as many bytes per token), and the GGUF model's greedy tokens wherever that
/// model's choice led by 0.5 or more (the embedding table is Q8_0 here, its exact Q4_1 rows
/// there); `q4_k` reads fewer bytes; a GGUF model is refused.
#[tokio::test]
async fn quantized_at_load_decodes_as_the_gguf_model() {
    let fixture = hf_fixture().await;
    let quantized = |quantize| {
        common::manager(LoadOptions {
            quantize: Some(quantize),
            ..LoadOptions::default()
        })
    };
    let gguf = small_engine(LoadOptions::default()).await;
    let q8 = quantized(Quantize::Q8_0)
        .get(&ModelSelector::Path(fixture.clone()))
        .await
        .unwrap();
    assert_eq!(q8.info().dtype, "q8_0 (quantized at load)");
    assert_eq!(
        q8.info().weight_bytes_per_token,
        gguf.info().weight_bytes_per_token
    );
    agrees_where_the_lead_is_clear(&gguf, &q8).await;
    let q4 = quantized(Quantize::Q4K)
        .get(&ModelSelector::Path(fixture))
        .await
        .unwrap();
    assert!(q4.info().weight_bytes_per_token < q8.info().weight_bytes_per_token);
    let (pieces, _, _) = run(&q4, greedy("The capital of France is", 4)).await;
    assert!(pieces.concat().contains("Paris"), "{pieces:?}");
    let refused = load_error(
        &quantized(Quantize::Q8_0),
        &ModelSelector::Path(small_gguf().await),
    )
    .await;
    assert!(refused.contains("--quantize"), "{refused}");
    let half = common::manager(LoadOptions {
        quantize: Some(Quantize::Q8_0),
        dtype: DTypeChoice::F16,
        ..LoadOptions::default()
    });
    let refused = load_error(&half, &ModelSelector::Path(hf_fixture().await)).await;
    assert!(refused.contains("--dtype f16"), "{refused}");
}

#[tokio::test]
async fn sharded_checkpoints_load() {
    let fixture = hf_fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let tensors = candle_core::safetensors::load(
        fixture.join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let subset: std::collections::HashMap<&String, candle_core::Tensor> =
            part.iter().map(|n| (*n, tensors[*n].clone())).collect();
        candle_core::safetensors::save(&subset, dir.path().join(&file)).unwrap();
        for name in part {
            weight_map.insert((*name).clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    for file in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture.join(file), dir.path().join(file)).unwrap();
    }

    // Through the Hub: the index is fetched, then each shard it names.
    let hub = HubBuilder::new()
        .repo("wick-tests/sharded", dir.path())
        .start()
        .await;
    let cache = tempfile::tempdir().unwrap();
    let sharded = manager_for(&hub.endpoint, cache.path())
        .get(&repo("wick-tests/sharded"))
        .await
        .unwrap();
    let whole = common::manager(LoadOptions::default())
        .get(&ModelSelector::Path(fixture))
        .await
        .unwrap();
    let prompt = "The capital of France is";
    assert_eq!(
        run(&sharded, greedy(prompt, 8)).await.1,
        run(&whole, greedy(prompt, 8)).await.1
    );
    let requests = hub.requests();
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(
            requests.iter().any(|r| r.contains(shard)),
            "{shard} was not fetched: {requests:?}"
        );
    }
}

#[tokio::test]
async fn hub_errors_are_clear() {
    let fixture = hf_fixture().await;
    let hub = HubBuilder::new()
        .repo(REPO, &fixture)
        .gated_repo("wick-tests/gated", &fixture, "hf_right")
        .start()
        .await;
    let cache = tempfile::tempdir().unwrap();
    let manager = manager_for(&hub.endpoint, cache.path());

    let message = load_error(&manager, &repo("wick-tests/no-such-repo")).await;
    assert!(
        message.contains("repository wick-tests/no-such-repo not found") && message.contains("404"),
        "{message}"
    );

    let message = load_error(&manager, &repo("wick-tests/gated")).await;
    assert!(
        message.contains("gated") && message.contains("HF_TOKEN=") && message.contains("401"),
        "{message}"
    );

    // A token: a wrong one is refused with its own advice; the right one gets the files.
    let with_token = |token: &str| {
        let cache = cache.path().join(token);
        common::manager_with(|config| {
            config.fetcher = common::hub_at(&hub.endpoint, &cache, Some(token))
        })
    };
    let message = load_error(&with_token("hf_wrong"), &repo("wick-tests/gated")).await;
    assert!(
        message.contains("403") && message.contains("refused"),
        "{message}"
    );
    let engine = with_token("hf_right")
        .get(&repo("wick-tests/gated"))
        .await
        .unwrap();
    assert!(
        run(&engine, greedy("The capital of France is", 4))
            .await
            .0
            .concat()
            .contains("Paris")
    );

    let message = load_error(
        &manager,
        &ModelSelector::repo(REPO, Some("v9".into()), Backend::Huggingface),
    )
    .await;
    assert!(message.contains("revision `v9` not found"), "{message}");
}

#[tokio::test]
async fn an_interrupted_download_leaves_nothing_to_trust() {
    let fixture = hf_fixture().await;
    let hub = HubBuilder::new().repo(REPO, &fixture).start().await;
    let cache = tempfile::tempdir().unwrap();
    hub.cut_next_download("model.safetensors", 5 << 20);
    let message = load_error(&manager_for(&hub.endpoint, cache.path()), &repo(REPO)).await;
    assert!(message.contains("model.safetensors"), "{message}");
    let repo_dir = cache
        .path()
        .join("hub/models--wick-tests--SmolLM2-135M-Instruct");
    assert!(
        !repo_dir
            .join("snapshots")
            .join(COMMIT)
            .join("model.safetensors")
            .exists()
    );
    // The next run downloads the file again, whole, and the model works.
    let engine = manager_for(&hub.endpoint, cache.path())
        .get(&repo(REPO))
        .await
        .unwrap();
    assert!(
        run(&engine, greedy("The capital of France is", 4))
            .await
            .0
            .concat()
            .contains("Paris")
    );
}

#[tokio::test]
async fn broken_local_models_are_clear_errors() {
    let fixture = hf_fixture().await;
    let manager = common::manager(LoadOptions::default());

    let truncated = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture.join(file), truncated.path().join(file)).unwrap();
    }
    let weights = std::fs::read(fixture.join("model.safetensors")).unwrap();
    std::fs::write(
        truncated.path().join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    let message = load_error(&manager, &ModelSelector::Path(truncated.path().into())).await;
    assert!(
        message.contains("model.safetensors") && message.contains("truncated"),
        "{message}"
    );

    let unknown = tempfile::tempdir().unwrap();
    std::fs::write(
        unknown.path().join("config.json"),
        r#"{"model_type": "mamba"}"#,
    )
    .unwrap();
    for file in ["tokenizer.json", "model.safetensors"] {
        std::fs::write(unknown.path().join(file), b"").unwrap();
    }
    let message = load_error(&manager, &ModelSelector::Path(unknown.path().into())).await;
    assert!(
        message.contains("`mamba`") && message.contains("llama, qwen2, qwen3, phi3"),
        "{message}"
    );
}

/// An f32 checkpoint stays f32 under `--dtype auto`; `--dtype bf16` and `f16` convert its
/// matrices to 16 bits at load (half the bytes per token), computing in f32 on the half kernel.
#[tokio::test]
async fn dtype_choices_on_the_cpu() {
    let fixture = hf_fixture().await;
    let with_dtype = |dtype| common::manager_with(|config| config.load.dtype = dtype);
    let f32 = with_dtype(DTypeChoice::Auto)
        .get(&ModelSelector::Path(fixture.clone()))
        .await
        .unwrap();
    assert_eq!(f32.info().dtype, "f32");
    for (dtype, name) in [(DTypeChoice::F16, "f16"), (DTypeChoice::Bf16, "bf16")] {
        let half = with_dtype(dtype)
            .get(&ModelSelector::Path(fixture.clone()))
            .await
            .unwrap();
        assert_eq!(
            half.info().dtype,
            format!("{name} weights, f32 activations")
        );
        assert_eq!(
            2 * half.info().weight_bytes_per_token,
            f32.info().weight_bytes_per_token
        );
        let (pieces, _, _) = run(&half, greedy("The capital of France is", 4)).await;
        assert!(pieces.concat().contains("Paris"), "{name}: {pieces:?}");
    }
}

/// A tiny random-weight model of `architecture` in the Hugging Face layout: candle's own model
/// code asks for every weight it needs, so the files have exactly the names it loads.
fn tiny_model(architecture: &str, fixture: &Path, dir: &Path) {
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};
    use candle_transformers::models::{phi3, qwen2, qwen3};
    let config = serde_json::json!({
        "model_type": architecture, "vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 512, "sliding_window": 512, "max_window_layers": 2,
        "tie_word_embeddings": true, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "use_sliding_window": false, "hidden_act": "silu", "attention_bias": false,
        "bos_token_id": 1, "eos_token_id": 2,
    });
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    match architecture {
        "qwen2" => drop(
            qwen2::ModelForCausalLM::new(&serde_json::from_value(config.clone()).unwrap(), vb)
                .unwrap(),
        ),
        "qwen3" => drop(
            qwen3::ModelForCausalLM::new(&serde_json::from_value(config.clone()).unwrap(), vb)
                .unwrap(),
        ),
        _ => drop(phi3::Model::new(&serde_json::from_value(config.clone()).unwrap(), vb).unwrap()),
    }
    varmap.save(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture.join(file), dir.join(file)).unwrap();
    }
}

/// qwen2, qwen3 and phi3 load through the same path and keep concurrent sequences apart
/// (candle keeps their KV caches inside the model; wick gives each sequence its own copy).
#[tokio::test]
async fn qwen2_qwen3_and_phi3_models_load_and_generate() {
    let fixture = hf_fixture().await;
    for architecture in ["qwen2", "qwen3", "phi3"] {
        let dir = tempfile::tempdir().unwrap();
        tiny_model(architecture, &fixture, dir.path());
        let engine = common::manager(LoadOptions::default())
            .get(&ModelSelector::Path(dir.path().into()))
            .await
            .unwrap_or_else(|e| panic!("{architecture}: {e}"));
        assert_eq!(engine.info().architecture, architecture);
        let mut request = greedy("The capital of France is", 8);
        request.params.repeat_penalty = 1.0;
        let (_, alone, summary) = run(&engine, request.clone()).await;
        assert_eq!(summary.completion_tokens, alone.len());
        let (a, b) = tokio::join!(run(&engine, request.clone()), run(&engine, request));
        assert_eq!((a.1, b.1), (alone.clone(), alone), "{architecture}");
    }
}

/// transformers (since 4.50) saves the chat template as `chat_template.jinja` rather than inside
/// `tokenizer_config.json`: from the Hub, that file is fetched and chat uses it.
#[tokio::test]
async fn a_chat_template_in_its_own_file_is_used() {
    let fixture = hf_fixture().await;
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    ] {
        std::fs::hard_link(fixture.join(file), dir.path().join(file)).unwrap();
    }
    let mut tokenizer_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("tokenizer_config.json")).unwrap())
            .unwrap();
    let template = tokenizer_config
        .as_object_mut()
        .unwrap()
        .remove("chat_template")
        .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )
    .unwrap();
    let without = common::manager(LoadOptions::default())
        .get(&ModelSelector::Path(dir.path().to_path_buf()))
        .await
        .unwrap();
    assert!(!without.info().has_chat_template);

    std::fs::write(
        dir.path().join("chat_template.jinja"),
        template.as_str().unwrap(),
    )
    .unwrap();
    let hub = HubBuilder::new()
        .repo("wick-tests/jinja", dir.path())
        .start()
        .await;
    let cache = tempfile::tempdir().unwrap();
    let engine = manager_for(&hub.endpoint, cache.path())
        .get(&repo("wick-tests/jinja"))
        .await
        .unwrap();
    assert!(engine.info().has_chat_template);
    let request = wick::GenerateRequest::chat(vec![wick::ChatMessage::user("What is 2 + 2?")])
        .with_params(wick::SamplingParams::greedy(8));
    let (_, _, summary) = run(&engine, request).await;
    assert!(summary.prompt_tokens > 10, "the chat template was applied");
}
