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
use crate::engine::DTypeChoice;
use crate::engine::chat::TokenizerConfig;
use crate::engine::model::kernels::Level;
use crate::engine::model::kernels::half::{Half, HalfMatrix};
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

/// How a model's matrices (projections and the embedding table) are kept; norms and biases are
/// always in the compute dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Matrices {
    /// In the compute dtype, converted as they are read (on a GPU).
    Compute,
    /// On a CPU, in the dtype `--dtype` keeps there for what the file stores
    /// ([`DTypeChoice::on_cpu`]): 16-bit ones on wick's half kernel, f32 as f32.
    Cpu(DTypeChoice),
    /// Quantized as they load, onto the kernels GGUF files use.
    Quantized(Quantize),
}

pub(crate) fn load(
    files: &HfFiles,
    device: &Device,
    dtype: DType,
    matrices: Matrices,
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

    let tensors = open(files)?;
    let layers = config.layers;
    let mut source = SafetensorsSource {
        tensors,
        family,
        dtype,
        device: device.clone(),
        matrices,
        layers,
        kept: None,
    };
    let model = super::build(config, &mut source, device).map_err(config_error)?;
    let dtype = match (matrices, source.kept) {
        (Matrices::Quantized(to), _) => format!("{to} (quantized at load)"),
        (_, Some(half)) => format!("{:?} weights, f32 activations", half.dtype()).to_lowercase(),
        _ => format!("{dtype:?}").to_lowercase(),
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

/// The model's safetensors files, memory-mapped.
pub(crate) fn open(files: &HfFiles) -> Result<MmapedSafetensors> {
    // SAFETY: the weights are memory-mapped; wick never writes to a file in place (downloads
    // are renamed into the cache whole), so the mapped bytes do not change while in use.
    unsafe { MmapedSafetensors::multi(&files.weights) }.map_err(|e| Error::Load {
        path: files.weights.first().cloned().unwrap_or_default(),
        message: format!(
            "the safetensors weights are unreadable (truncated download?): {}",
            candle_message(&e)
        ),
    })
}

/// Memory-mapped safetensors, looked up through the Hugging Face names of GGUF names and
/// converted to the engine's dtype (f32 on the CPU, bf16 on CUDA) as they are read, or matrices
/// kept or quantized one at a time as `matrices` says.
pub(crate) struct SafetensorsSource {
    pub tensors: MmapedSafetensors,
    pub family: Family,
    pub dtype: DType,
    pub device: Device,
    pub matrices: Matrices,
    /// The model's layer count (the quantization recipe's).
    pub layers: usize,
    /// The 16-bit format matrices are kept in (the first one kept), for the load's report.
    pub kept: Option<Half>,
}

impl SafetensorsSource {
    fn name(&self, gguf: &str) -> Option<String> {
        hf_name(self.family, gguf).filter(|name| self.tensors.get(name).is_ok())
    }

    /// The matrix `name` quantized as `--quantize` says, where it does.
    pub(crate) fn quantized(&mut self, name: &str) -> Result<Option<QTensor>> {
        let Matrices::Quantized(to) = self.matrices else {
            return Ok(None);
        };
        let tied = !self.contains("output.weight");
        let Some(hf) = self.name(name) else {
            return Ok(None);
        };
        let view = self.tensors.get(&hf)?;
        let (&[n, k], Ok(stored)) = (view.shape(), DType::try_from(view.dtype())) else {
            return Ok(None);
        };
        let Some(block) = to.block_type(name, k, self.layers, tied) else {
            return Ok(None);
        };
        // Rows are read straight from the mapped bytes, a piece at a time.
        let row_bytes = k * stored.size_in_bytes();
        let data = view.data();
        let rows = |first: usize, count: usize| -> Result<Tensor> {
            let bytes = data
                .get(first * row_bytes..(first + count) * row_bytes)
                .ok_or_else(|| candle_core::Error::Msg(format!("`{hf}` is truncated")))?;
            let piece = Tensor::from_raw_buffer(bytes, stored, &[count, k], &Device::Cpu)?;
            Ok(piece.to_dtype(DType::F32)?)
        };
        let weight = quantize((n, k), rows, block, &self.device)?;
        release_pages(data);
        Ok(Some(weight))
    }

    /// The matrix `name` in 16 bits for wick's half kernel, where `matrices` keeps it so on this
    /// CPU: copied as stored when the file holds that format (the mapped pages then go), else
    /// converted.
    fn half(&mut self, name: &str) -> Result<Option<(HalfMatrix, Level)>> {
        let Some(level) = Level::best().filter(|_| self.device.is_cpu()) else {
            return Ok(None);
        };
        let (Matrices::Cpu(choice), Some(hf)) = (self.matrices, self.name(name)) else {
            return Ok(None);
        };
        let view = self.tensors.get(&hf)?;
        let stored = [Half::Bf16, Half::F16]
            .into_iter()
            .find(|half| view.dtype() == half.dtype().into());
        let kept = choice.on_cpu(stored.map_or(DType::F32, Half::dtype));
        let Some(format) = Half::of(kept) else {
            return Ok(None);
        };
        let &[n, k] = view.shape() else {
            return Ok(None);
        };
        let matrix = match stored == Some(format) {
            true => {
                let matrix = HalfMatrix::from_le_bytes(format, view.data(), n, k);
                release_pages(view.data());
                matrix
            }
            false => HalfMatrix::from_tensor(format, &self.load(name, DType::F32, &Device::Cpu)?)?,
        };
        self.kept = self.kept.or(matrix.as_ref().map(HalfMatrix::format));
        Ok(matrix.map(|matrix| (matrix, level)))
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
        if let Some(weight) = self.quantized(name)? {
            return Linear::quantized(weight, bias, &self.device);
        }
        match self.half(name)? {
            Some((weight, level)) => Ok(Linear::half(weight, bias, level)),
            None => Ok(Linear::dense(self.dense(name)?, bias)),
        }
    }

    fn embedding(&mut self, name: &str) -> Result<Embedding> {
        // Rows are looked up from a quantized or 16-bit table on the CPU only, as for GGUF.
        if !self.device.is_cpu() {
            return Ok(Embedding::Dense(self.dense(name)?));
        }
        if let Some(table) = self.quantized(name)? {
            return Embedding::quantized(table);
        }
        match self.half(name)? {
            Some((table, _)) => Ok(Embedding::half(table)),
            None => Ok(Embedding::Dense(self.dense(name)?)),
        }
    }

    fn dense(&mut self, name: &str) -> Result<Tensor> {
        self.load(name, self.dtype, &self.device)
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
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
