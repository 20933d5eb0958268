//! From fetched files to a running engine: load the model and start its decode loop.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::chat::ChatTemplate;
use super::device::{DTypeChoice, DeviceChoice, describe};
use super::load::{gguf, safetensors};
use super::resolve::{ModelFiles, ResolvedModel};
use super::worker::{self, WorkerSetup};
use super::{Engine, ModelInfo};
use crate::error::Result;

/// How models are loaded and served.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LoadOptions {
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    /// Sequences generated at once, each with its own KV cache.
    pub max_active: usize,
    /// Requests that may wait for a free slot before new ones are turned away as busy.
    pub queue_limit: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            dtype: DTypeChoice::Auto,
            max_active: 4,
            queue_limit: 32,
        }
    }
}

/// Loads the files and starts the model's decode loop (blocking: run it off the async workers).
pub(crate) fn start_engine(
    model: &ResolvedModel,
    files: &ModelFiles,
    options: &LoadOptions,
) -> Result<Engine> {
    let device = options.device.resolve()?;
    let started = std::time::Instant::now();
    let loaded = match files {
        ModelFiles::Gguf {
            weights,
            tokenizer_json,
            tokenizer_config,
        } => gguf::load(
            weights,
            gguf::Companions {
                tokenizer_json: tokenizer_json.as_deref(),
                tokenizer_config: tokenizer_config.as_deref(),
            },
            &device,
        )?,
        ModelFiles::Hf(files) => {
            safetensors::load(files, &device, options.dtype.resolve(&device)?)?
        }
    };
    let chat = match &loaded.chat_template {
        None => Err("it has no chat template".to_string()),
        Some(source) => ChatTemplate::new(
            source,
            loaded.bos_token.clone().unwrap_or_default(),
            loaded.eos_token.clone().unwrap_or_default(),
        )
        .map_err(|e| e.to_string()),
    };
    if let Err(why) = &chat {
        tracing::warn!(model = %model.name, "chat is unavailable: {why}");
    }
    let stop_ids = super::stop_ids(&loaded.tokenizer, &loaded.eos_ids, chat.as_ref().ok());
    let info = ModelInfo {
        name: model.name.clone(),
        backend: model.backend,
        architecture: loaded.architecture.clone(),
        source: model.to_string(),
        device: describe(&device),
        dtype: loaded.dtype.clone(),
        context_length: loaded.model.config().context_length,
        has_chat_template: chat.is_ok(),
    };
    let tokenizer = Arc::new(loaded.tokenizer);
    let (jobs, queue) = mpsc::channel(options.queue_limit.max(1));
    let counters = Arc::new(super::Counters::default());
    worker::spawn(
        WorkerSetup {
            name: model.name.clone(),
            model: loaded.model,
            tokenizer: tokenizer.clone(),
            stop_ids,
            max_active: options.max_active,
            counters: counters.clone(),
        },
        queue,
    )?;
    tracing::info!(
        model = %info.name,
        architecture = %info.architecture,
        device = %info.device,
        dtype = %info.dtype,
        context = info.context_length,
        seconds = started.elapsed().as_secs_f32(),
        "model loaded"
    );
    Ok(Engine {
        info,
        tokenizer,
        chat,
        jobs,
        queue_limit: options.queue_limit.max(1),
        counters,
    })
}
