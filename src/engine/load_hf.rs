//! Loading a model in the Hugging Face layout: `config.json`, safetensors weights (one file or
//! shards with an index), `tokenizer.json`, and optional tokenizer and generation configs.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, phi3, qwen2, qwen3};
use serde_json::Value;

use super::chat::TokenizerConfig;
use super::load::LoadedModel;
use super::model::Weights;
use super::tokenizer;
use crate::error::{Error, Result, candle_message};

pub(crate) const ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "phi3"];

pub(crate) struct HfFiles {
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
    pub weights: Vec<PathBuf>,
}

impl HfFiles {
    pub fn paths(&self) -> Vec<PathBuf> {
        [&self.config, &self.tokenizer]
            .into_iter()
            .cloned()
            .chain(self.tokenizer_config.clone())
            .chain(self.generation_config.clone())
            .chain(self.weights.iter().cloned())
            .collect()
    }
}

/// The shard files a `model.safetensors.index.json` names, in order.
pub(crate) fn shard_names(index: &Path) -> Result<Vec<String>> {
    let json = read_json(index)?;
    let map = json["weight_map"].as_object().ok_or_else(|| Error::Load {
        path: index.to_path_buf(),
        message: "it has no `weight_map` object".into(),
    })?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    shards.sort();
    shards.dedup();
    if let Some(bad) = shards
        .iter()
        .find(|s| s.contains("..") || s.starts_with('/'))
    {
        return Err(Error::Load {
            path: index.to_path_buf(),
            message: format!("it names a shard outside the repository: {bad}"),
        });
    }
    Ok(shards)
}

pub(crate) fn load(files: &HfFiles, device: &Device, dtype: DType) -> Result<LoadedModel> {
    let config = read_json(&files.config)?;
    let architecture = config["model_type"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(Error::UnsupportedArchitecture {
            found: architecture,
            path: files.config.clone(),
            supported: ARCHITECTURES.join(", "),
        });
    }
    let mut eos_ids = token_ids(&config["eos_token_id"]);
    if let Some(path) = &files.generation_config {
        eos_ids.extend(token_ids(&read_json(path)?["eos_token_id"]));
    }
    eos_ids.sort_unstable();
    eos_ids.dedup();
    let context_length = config["max_position_embeddings"].as_u64().unwrap_or(4096) as usize;

    let tokenizer = tokenizer::from_file(&files.tokenizer)?;
    let tokenizer_config = match &files.tokenizer_config {
        Some(path) => TokenizerConfig::from_file(path)?,
        None => TokenizerConfig::default(),
    };

    // SAFETY: the weights are memory-mapped; wick never writes to a file in place (downloads
    // are renamed into the cache whole), so the mapped bytes do not change while in use.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files.weights, dtype, device) }
        .map_err(|e| Error::Load {
            path: files.weights.first().cloned().unwrap_or_default(),
            message: format!(
                "the safetensors weights are unreadable (truncated download?): {}",
                candle_message(&e)
            ),
        })?;
    let weights =
        build(&architecture, &config, vb, dtype, device).map_err(|message| Error::Load {
            path: files.config.clone(),
            message,
        })?;

    Ok(LoadedModel {
        weights,
        tokenizer,
        chat_template: tokenizer_config.chat_template,
        bos_token: tokenizer_config.bos_token,
        eos_token: tokenizer_config.eos_token,
        eos_ids,
        context_length,
        architecture,
        dtype: format!("{dtype:?}").to_lowercase(),
    })
}

/// Builds the candle model; candle's constructors can panic on unexpected weights, so panics
/// become load errors too.
fn build(
    architecture: &str,
    config: &Value,
    vb: VarBuilder,
    dtype: DType,
    device: &Device,
) -> std::result::Result<Weights, String> {
    fn parse<T: serde::de::DeserializeOwned>(config: &Value, arch: &str) -> Result<T, String> {
        serde_json::from_value(config.clone())
            .map_err(|e| format!("config.json does not describe a {arch} model: {e}"))
    }
    let weights_error = |e: candle_core::Error| {
        format!("the weights do not fit the config: {}", candle_message(&e))
    };
    let flash_attn = cfg!(feature = "flash-attn");
    let built = std::panic::catch_unwind(AssertUnwindSafe(|| match architecture {
        "llama" => {
            let cfg = parse::<llama::LlamaConfig>(config, architecture)?.into_config(flash_attn);
            let model = llama::Llama::load(vb, &cfg).map_err(weights_error)?;
            let cache = llama::Cache::new(true, dtype, &cfg, device).map_err(weights_error)?;
            Ok(Weights::Llama {
                model: Arc::new(model),
                cache,
            })
        }
        "qwen2" => {
            let cfg = parse::<qwen2::Config>(config, architecture)?;
            Ok(Weights::Qwen2(
                qwen2::ModelForCausalLM::new(&cfg, vb).map_err(weights_error)?,
            ))
        }
        "qwen3" => {
            let cfg = parse::<qwen3::Config>(config, architecture)?;
            Ok(Weights::Qwen3(
                qwen3::ModelForCausalLM::new(&cfg, vb).map_err(weights_error)?,
            ))
        }
        _ => {
            let cfg = parse::<phi3::Config>(config, architecture)?;
            Ok(Weights::Phi3(
                phi3::Model::new(&cfg, vb).map_err(weights_error)?,
            ))
        }
    }));
    built.unwrap_or_else(|_| {
        Err("the weights do not fit the config (a tensor is missing or mis-shaped)".into())
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Load {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Load {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

/// `eos_token_id` is a number or a list of numbers.
fn token_ids(value: &Value) -> Vec<u32> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .into_iter()
            .collect(),
        Value::Array(items) => items.iter().flat_map(token_ids).collect(),
        _ => Vec::new(),
    }
}
