//! Loading a model in the Hugging Face layout: `config.json`, safetensors weights (one file or
//! shards with an index), `tokenizer.json`, and optional tokenizer and generation configs and
//! `chat_template.jinja`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::LoadedModel;
use super::quantize::{Quantize, quantize};
use crate::engine::chat::TokenizerConfig;
use crate::engine::model::{Config, Embedding, Family, Linear, WeightSource, hf_name};
use crate::engine::tokenizer;
use crate::error::{Error, Result, candle_message};

pub(crate) struct HfFiles {
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
    /// Where transformers (since 4.50) saves the chat template, instead of inside
    /// `tokenizer_config.json`; it wins when both are there, as in transformers.
    pub chat_template: Option<PathBuf>,
    pub weights: Vec<PathBuf>,
}

impl HfFiles {
    pub fn paths(&self) -> Vec<PathBuf> {
        [&self.config, &self.tokenizer]
            .into_iter()
            .cloned()
            .chain(self.tokenizer_config.clone())
            .chain(self.generation_config.clone())
            .chain(self.chat_template.clone())
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

pub(crate) fn load(
    files: &HfFiles,
    device: &Device,
    dtype: DType,
    quantize: Option<Quantize>,
) -> Result<LoadedModel> {
    let json = read_json(&files.config)?;
    let config_error = |message: String| Error::Load {
        path: files.config.clone(),
        message,
    };
    let model_type = json["model_type"].as_str().unwrap_or_default().to_string();
    let Some(family) = Family::from_hf(&model_type) else {
        return Err(Error::UnsupportedArchitecture {
            found: model_type,
            path: files.config.clone(),
            supported: Family::supported(),
        });
    };
    let config = Config::from_hf(&json).map_err(config_error)?;
    let mut eos_ids = token_ids(&json["eos_token_id"]);
    if let Some(path) = &files.generation_config {
        eos_ids.extend(token_ids(&read_json(path)?["eos_token_id"]));
    }
    eos_ids.sort_unstable();
    eos_ids.dedup();

    let tokenizer = tokenizer::from_file(&files.tokenizer)?;
    let tokenizer_config = match &files.tokenizer_config {
        Some(path) => TokenizerConfig::from_file(path)?,
        None => TokenizerConfig::default(),
    };
    let chat_template = match &files.chat_template {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| Error::Load {
            path: path.clone(),
            message: e.to_string(),
        })?),
        None => tokenizer_config.chat_template,
    };

    let weights_error = |message: String| Error::Load {
        path: files.weights.first().cloned().unwrap_or_default(),
        message,
    };
    // SAFETY: the weights are memory-mapped; wick never writes to a file in place (downloads
    // are renamed into the cache whole), so the mapped bytes do not change while in use.
    let tensors = unsafe { MmapedSafetensors::multi(&files.weights) }.map_err(|e| {
        weights_error(format!(
            "the safetensors weights are unreadable (truncated download?): {}",
            candle_message(&e)
        ))
    })?;
    let layers = config.layers;
    let mut source = SafetensorsSource {
        tensors,
        family,
        dtype,
        device: device.clone(),
        quantize: quantize.map(|to| (to, layers)),
    };
    let model = super::build(config, &mut source, device).map_err(config_error)?;
    let dtype = match quantize {
        Some(to) => format!("{to} (quantized at load)"),
        None => format!("{dtype:?}").to_lowercase(),
    };
    Ok(LoadedModel {
        model: Arc::new(model),
        tokenizer,
        chat_template,
        bos_token: tokenizer_config.bos_token,
        eos_token: tokenizer_config.eos_token,
        eos_ids,
        architecture: family.name().to_string(),
        dtype,
    })
}

/// Memory-mapped safetensors, looked up through the Hugging Face names of GGUF names and
/// converted to the engine's dtype (f32 on the CPU, bf16 on CUDA) as they are read, or, with
/// `quantize`, matrices quantized one at a time.
pub(crate) struct SafetensorsSource {
    pub tensors: MmapedSafetensors,
    pub family: Family,
    pub dtype: DType,
    pub device: Device,
    /// The block type to quantize matrices to, and the model's layer count (the recipe's).
    pub quantize: Option<(Quantize, usize)>,
}

impl SafetensorsSource {
    fn name(&self, gguf: &str) -> Option<String> {
        hf_name(self.family, gguf).filter(|name| self.tensors.get(name).is_ok())
    }

    /// The matrix `name` quantized as `--quantize` says, where it does.
    fn quantized(&mut self, name: &str) -> Result<Option<QTensor>> {
        let Some((to, layers)) = self.quantize else {
            return Ok(None);
        };
        let tied = !self.contains("output.weight");
        let weight = self.load(name, DType::F32, &Device::Cpu)?;
        let k = weight.dims().last().copied().unwrap_or(0);
        match to.block_type(name, k, layers, tied) {
            Some(block) => Ok(Some(quantize(&weight, block, &self.device)?)),
            None => Ok(None),
        }
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let Some(hf) = self.name(name) else {
            let expected = hf_name(self.family, name).unwrap_or_else(|| name.to_string());
            let message = format!("the weights have no tensor `{expected}`");
            return Err(candle_core::Error::Msg(message).into());
        };
        let tensor = self.tensors.load(&hf, device)?.to_dtype(dtype)?;
        // The tensor is a copy now: the mapped file pages it was read from can go.
        if let Ok(view) = self.tensors.get(&hf) {
            release_pages(view.data());
        }
        Ok(tensor)
    }
}

/// Drops the resident pages of `bytes`, a part of the weights' read-only file mapping whose
/// contents were copied out, so that loading (above all quantizing at load, which reads every
/// f32 weight once) does not leave the whole file resident beside the model.
fn release_pages(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (bytes.as_ptr() as usize).next_multiple_of(PAGE);
        let end = (bytes.as_ptr() as usize + bytes.len()) / PAGE * PAGE;
        if end > start {
            // SAFETY: whole pages inside a read-only mapping of a file that is never written
            // while mapped (see `load`): dropped pages are read back from the file, unchanged,
            // if they are touched again. A refusal is harmless and ignored.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

impl WeightSource for SafetensorsSource {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn contains(&self, name: &str) -> bool {
        self.name(name).is_some()
    }

    fn linear(&mut self, name: &str, bias: Option<Tensor>) -> Result<Linear> {
        match self.quantized(name)? {
            Some(weight) => Linear::quantized(weight, bias, &self.device),
            None => Ok(Linear::dense(self.dense(name)?, bias)),
        }
    }

    fn embedding(&mut self, name: &str) -> Result<Embedding> {
        // Rows are looked up from a quantized table on the CPU only, as for GGUF.
        match self.device.is_cpu() {
            true => match self.quantized(name)? {
                Some(table) => Embedding::quantized(table),
                None => Ok(Embedding::Dense(self.dense(name)?)),
            },
            false => Ok(Embedding::Dense(self.dense(name)?)),
        }
    }

    fn dense(&mut self, name: &str) -> Result<Tensor> {
        self.load(name, self.dtype, &self.device)
    }
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
