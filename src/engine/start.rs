//! From fetched files to a running engine: load the model and start its decode loop.

use std::sync::Arc;

use candle_core::{DType, Device};
use tokio::sync::mpsc;

use super::chat::ChatTemplate;
use super::constraint::Grammars;
use super::device::{DTypeChoice, DeviceChoice, default_kv_cache_budget, describe};
use super::kv::{KvManager, KvStore};
use super::load::{Quantize, gguf, safetensors};
use super::resolve::{ModelFiles, ResolvedModel};
use super::scheduler::Limits;
use super::worker::{self, FaultInjection, WorkerSetup};
use super::{Engine, ModelInfo};
use crate::error::{Error, Result};

/// How models are loaded and served.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LoadOptions {
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    /// Sequences generated at once, each with its own KV cache.
    pub max_active: usize,
    /// Requests that may wait for a free slot before new ones are turned away as busy.
    pub queue_limit: usize,
    /// Prompt tokens one step takes besides its decode rows (and the prompt chunk size);
    /// `None`: 512 on the CPU, 2048 on a GPU.
    pub max_batch_tokens: Option<usize>,
    /// Bytes of the KV block pool; `None`: a share of the device's free memory once the weights
    /// are loaded.
    pub kv_cache_memory: Option<usize>,
    /// Positions per KV block.
    pub kv_block_size: usize,
    /// What the KV blocks hold.
    pub kv_cache_dtype: KvDTypeChoice,
    /// Whether prompts share the blocks of a prefix computed before.
    pub prefix_cache: bool,
    /// Quantize safetensors matrices at load to this block type.
    pub quantize: Option<Quantize>,
}

/// `--kv-cache-dtype`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum KvDTypeChoice {
    /// f16 on the CPU (half the bytes of f32 for attention to read), the model's dtype on a GPU.
    #[default]
    Auto,
    F16,
    Bf16,
    F32,
}

impl KvDTypeChoice {
    fn resolve(self, device: &Device, model: DType) -> DType {
        match self {
            Self::Auto if device.is_cpu() => DType::F16,
            Self::Auto => model,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
            Self::F32 => DType::F32,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            dtype: DTypeChoice::Auto,
            max_active: 16,
            queue_limit: 32,
            max_batch_tokens: None,
            kv_cache_memory: None,
            kv_block_size: 16,
            kv_cache_dtype: KvDTypeChoice::Auto,
            prefix_cache: true,
            quantize: None,
        }
    }
}

/// The process's peak resident memory so far (Linux's `VmHWM`), in MiB: what loading took at
/// its height, memory maps of the weights included.
fn peak_resident_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib >> 10)
}

/// Loads the files onto `device` (`options.device`, resolved) and starts the model's decode
/// loop (blocking: run it off the async workers).
pub(crate) fn start_engine(
    model: &ResolvedModel,
    files: &ModelFiles,
    device: Device,
    options: &LoadOptions,
) -> Result<Engine> {
    let started = std::time::Instant::now();
    let loaded = match files {
        ModelFiles::Gguf { .. } if options.quantize.is_some() => {
            return Err(Error::InvalidRequest(format!(
                "--quantize quantizes safetensors weights as they load (--backend huggingface); \
                 {} is a GGUF model, quantized already",
                model.name
            )));
        }
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
            let (dtype, matrices) = match options.quantize {
                // Quantized weights compute in f32, as GGUF weights do.
                Some(to) => (
                    options.dtype.resolve_quantized()?,
                    safetensors::Matrices::Quantized(to),
                ),
                None => (
                    options.dtype.resolve(&device),
                    match device.is_cpu() {
                        true => safetensors::Matrices::Cpu(options.dtype),
                        false => safetensors::Matrices::Compute,
                    },
                ),
            };
            safetensors::load(files, &device, dtype, matrices)?
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
    let stop_ids = super::handle::stop_ids(&loaded.tokenizer, &loaded.eos_ids, chat.as_ref().ok());
    let info = ModelInfo {
        name: model.name.clone(),
        backend: model.backend,
        architecture: loaded.architecture.clone(),
        source: model.to_string(),
        device: describe(&device),
        dtype: loaded.dtype.clone(),
        context_length: loaded.model.config().context_length,
        has_chat_template: chat.is_ok(),
        weight_bytes_per_token: loaded.model.weight_bytes() as u64,
    };
    let limits = Limits {
        max_active: options.max_active.max(1),
        max_batch_tokens: options
            .max_batch_tokens
            .unwrap_or(if device.is_cpu() { 512 } else { 2048 })
            .max(1),
        replay_rows: loaded.model.replay_rows(),
    };
    let kv_budget = options
        .kv_cache_memory
        .unwrap_or_else(|| default_kv_cache_budget(&device));
    let dtype = options
        .kv_cache_dtype
        .resolve(&device, loaded.model.dtype());
    let kv_shape = loaded.model.kv_shape(options.kv_block_size.max(1), dtype);
    let kv_blocks = kv_shape.blocks_in(kv_budget);
    if kv_blocks == 0 {
        return Err(Error::InvalidRequest(format!(
            "--kv-cache-memory {kv_budget} bytes holds no KV block of {} bytes \
             (--kv-block-size {} positions); raise it",
            kv_shape.bytes_per_block(),
            kv_shape.block_size
        )));
    }
    let store = KvStore::new(kv_shape, kv_blocks, &device)?;
    let kv = KvManager::new(kv_shape, kv_blocks, options.prefix_cache);
    let tokenizer = Arc::new(loaded.tokenizer);
    let grammars = Grammars::new(tokenizer.clone(), stop_ids.iter().copied().collect());
    // One more than the queue limit: the engine may hold the oldest request outside it.
    let (jobs, queue) = mpsc::channel(options.queue_limit.max(1) + 1);
    let counters = Arc::new(super::Counters::default());
    let faults = Arc::new(FaultInjection::default());
    worker::spawn(
        WorkerSetup {
            name: model.name.clone(),
            model: loaded.model,
            store,
            tokenizer: tokenizer.clone(),
            stop_ids,
            limits,
            counters: counters.clone(),
            faults: faults.clone(),
        },
        kv,
        queue,
    )?;
    tracing::info!(
        model = %info.name,
        architecture = %info.architecture,
        device = %info.device,
        dtype = %info.dtype,
        context = info.context_length,
        max_active = limits.max_active,
        max_batch_tokens = limits.max_batch_tokens,
        kv_cache_mib = (kv_blocks * kv_shape.bytes_per_block()) >> 20,
        kv_blocks,
        kv_block_size = kv_shape.block_size,
        kv_dtype = ?kv_shape.dtype,
        prefix_cache = options.prefix_cache,
        weights_mib = info.weight_bytes_per_token >> 20,
        peak_resident_mib = peak_resident_mib(),
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
        kv_shape,
        kv_blocks,
        faults,
        grammars,
    })
}
