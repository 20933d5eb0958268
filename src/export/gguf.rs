//! `wick export --to gguf`: a llama or qwen2 model in the Hugging Face layout written as one GGUF
//! file that llama.cpp (and wick's GGUF path) loads — the weights dense or quantized by
//! `--quantize`'s recipes (the same blocks wick makes at load), the shape in llama.cpp's
//! `{arch}.*` keys, and the tokenizer as `tokenizer.ggml.*`.
//!
//! Two things llama.cpp expects are not in a Hugging Face directory and are derived here:
//! llama's query and key rows are permuted for its interleaved rotary layout (the inverse of
//! what [`super::gguf_to_safetensors`] undoes), and a byte-level BPE tokenizer is named by the
//! pre-tokenizer (`tokenizer.ggml.pre`) that splits words as `tokenizer.json` does — found by
//! rebuilding the tokenizer from the written keys under each name wick knows and keeping the one
//! that tokenizes a sample exactly as `tokenizer.json` does.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content, Value, VersionedMagic};
use candle_core::quantized::{GgmlDType, QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{DType, Device};
use tokenizers::Tokenizer;

use crate::engine::Quantize;
use crate::engine::chat::TokenizerConfig;
use crate::engine::load::safetensors::{self, HfFiles, Matrices, SafetensorsSource};
use crate::engine::model::config::RopeScaling;
use crate::engine::model::{Config, Family, WeightSource, hf_name};
use crate::engine::tokenizer::{self as tokenizers_gguf, CONTROL, NORMAL, USER_DEFINED};
use crate::error::{Error, Result};

/// What the written matrices hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufWeights {
    /// Every matrix in this dtype (f32, f16 or bf16); norms and biases stay f32, as llama.cpp
    /// keeps them.
    Dense(DType),
    /// Matrices quantized as `--quantize` does at load; norms and biases f32.
    Quantized(Quantize),
}

impl GgufWeights {
    /// llama.cpp's `general.file_type` (`llama_ftype`) for these weights.
    fn file_type(self) -> u32 {
        match self {
            GgufWeights::Dense(DType::F16) => 1,
            GgufWeights::Dense(DType::BF16) => 32,
            GgufWeights::Dense(_) => 0,
            GgufWeights::Quantized(Quantize::Q8_0) => 7,
            GgufWeights::Quantized(Quantize::Q4K) => 15,
            GgufWeights::Quantized(Quantize::Q6K) => 18,
        }
    }
}

/// The per-layer tensors of a llama or qwen2 model, by their GGUF stems.
const LAYER_STEMS: [&str; 9] = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// Writes the Hugging Face model `files` as the GGUF file `out`.
pub(crate) fn safetensors_to_gguf(files: &HfFiles, out: &Path, weights: GgufWeights) -> Result<()> {
    let json = safetensors::read_json(&files.config)?;
    let config_error = |message: String| Error::Load {
        path: files.config.clone(),
        message,
    };
    let config = Config::from_hf(&json).map_err(config_error)?;
    let arch = match config.family {
        Family::Llama => "llama",
        Family::Qwen2 => "qwen2",
        other => {
            return Err(Error::UnsupportedArchitecture {
                found: other.name().to_string(),
                path: files.config.clone(),
                supported: "llama, qwen2 (export)".into(),
            });
        }
    };
    let tokenizer = crate::engine::tokenizer::from_file(&files.tokenizer)?;
    let mut metadata = model_metadata(arch, &config, weights).map_err(config_error)?;
    metadata.extend(tokenizer_metadata(files, &json, &tokenizer)?);

    let mut source = SafetensorsSource {
        tensors: safetensors::open(files)?,
        family: config.family,
        dtype: DType::F32,
        device: Device::Cpu,
        matrices: match weights {
            GgufWeights::Quantized(to) => Matrices::Quantized(to),
            GgufWeights::Dense(_) => Matrices::Compute,
        },
        layers: config.layers,
        kept: None,
    };
    let names = std::iter::once("token_embd.weight".to_string())
        .chain((0..config.layers).flat_map(|i| {
            LAYER_STEMS.iter().flat_map(move |stem| {
                ["weight", "bias"].map(|suffix| format!("blk.{i}.{stem}.{suffix}"))
            })
        }))
        .chain([
            "output_norm.weight".to_string(),
            "output.weight".to_string(),
        ])
        .filter(|name| source.contains(name))
        .collect::<Vec<_>>();
    let mut tensors = Vec::new();
    for name in names {
        let mut tensor = match source.quantized(&name)? {
            Some(quantized) => quantized,
            None => {
                let tensor = source.dense(&name)?;
                let dtype = match (weights, tensor.rank()) {
                    (GgufWeights::Dense(DType::F16), 2) => GgmlDType::F16,
                    (GgufWeights::Dense(DType::BF16), 2) => GgmlDType::BF16,
                    _ => GgmlDType::F32,
                };
                QTensor::quantize(&tensor, dtype)?
            }
        };
        if config.family == Family::Llama {
            if name.starts_with("blk.") && name.contains(".attn_q.") {
                tensor = permute_rows(&tensor, config.heads)?;
            } else if name.starts_with("blk.") && name.contains(".attn_k.") {
                tensor = permute_rows(&tensor, config.kv_heads)?;
            }
        }
        tensors.push((name, tensor));
    }
    let written: Vec<String> = tensors
        .iter()
        .filter_map(|(name, _)| hf_name(config.family, name))
        .collect();
    for (name, _) in source.tensors.tensors() {
        if !written.contains(&name) {
            tracing::warn!(tensor = %name, "no GGUF name for this tensor; skipped");
        }
    }

    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    // Written beside `out` and renamed into place, so a failed export leaves no partial file.
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty());
    let mut file = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))?;
    gguf_file::write(file.as_file_mut(), &metadata, &tensors)?;
    file.persist(out).map_err(|e| e.error)?;
    crate::fetch::usual_permissions(out)?;
    Ok(())
}

/// The model's shape in llama.cpp's `general.*` and `{arch}.*` keys.
fn model_metadata(
    arch: &str,
    config: &Config,
    weights: GgufWeights,
) -> std::result::Result<Vec<(String, Value)>, String> {
    let count = |n: usize| Value::U32(n as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let mut metadata = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.file_type".into(), Value::U32(weights.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (key("context_length"), count(config.context_length)),
        (key("embedding_length"), count(config.hidden)),
        (key("block_count"), count(config.layers)),
        (key("feed_forward_length"), count(config.ffn)),
        (key("attention.head_count"), count(config.heads)),
        (key("attention.head_count_kv"), count(config.kv_heads)),
        (key("attention.key_length"), count(config.head_dim)),
        (key("attention.value_length"), count(config.head_dim)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(config.norm_eps as f32),
        ),
        (key("rope.freq_base"), Value::F32(config.rope_theta)),
        (key("rope.dimension_count"), count(config.head_dim)),
    ];
    match config.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear(factor) => {
            metadata.push((key("rope.scaling.type"), Value::String("linear".into())));
            metadata.push((key("rope.scaling.factor"), Value::F32(factor)));
        }
        _ => {
            return Err(
                "it uses Llama 3 rope scaling, which the GGUF export cannot write yet \
                 (llama.cpp keeps it as a `rope_freqs.weight` tensor)"
                    .into(),
            );
        }
    }
    Ok(metadata)
}

/// Text that tells llama.cpp's byte-level pre-tokenizers apart: digit runs (one at a time, up
/// to three, or whole), contractions in either case, punctuation before words, runs of spaces,
/// tabs and newlines, and scripts without spaces.
const PRE_TOKENIZER_SAMPLE: &str = "Hello world! It's 2026: 1234567 tokens, 3.14159 ... \
    I'VE said we'll (maybe) go.\n\n\tTabs\tand   spaces   \r\n¿Qué tal? 你好世界 🦙 $100,000\n \n";

/// The llama.cpp pre-tokenizer names wick rebuilds, tried in this order.
const PRE_TOKENIZERS: [&str; 4] = ["smollm", "qwen2", "llama-bpe", "gpt-2"];

/// The tokenizer in llama.cpp's `tokenizer.ggml.*` keys, with the chat template.
fn tokenizer_metadata(
    files: &HfFiles,
    config: &serde_json::Value,
    tokenizer: &Tokenizer,
) -> Result<Vec<(String, Value)>> {
    let unsupported = |what: &str| {
        Error::Tokenizer(format!(
            "the GGUF export writes byte-level BPE tokenizers (GPT-2's kind: SmolLM2, Qwen2, Llama 3) \
         only; this tokenizer.json {what}"
        ))
    };
    let json = safetensors::read_json(&files.tokenizer)?;
    let model = &json["model"];
    // Byte-level BPE names its `ByteLevel` step in the pipeline around the model (the
    // vocabulary itself is not searched).
    let byte_level = ["pre_tokenizer", "decoder", "post_processor"]
        .iter()
        .any(|part| json[part].to_string().contains("\"ByteLevel\""));
    if model["type"] != "BPE" || !byte_level {
        return Err(unsupported("is not one"));
    }
    // Merges are "left right" strings, or [left, right] pairs in newer files.
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .ok_or_else(|| unsupported("has no merges"))?
        .iter()
        .map(|merge| match merge {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(pair) => Some(format!(
                "{} {}",
                pair.first()?.as_str()?,
                pair.get(1)?.as_str()?
            )),
            _ => None,
        })
        .map(|merge| merge.map(Value::String))
        .collect::<Option<_>>()
        .ok_or_else(|| unsupported("has a merge that is neither a string nor a pair"))?;

    // Every id up to the largest, as llama.cpp's converter writes them: gaps become unused
    // `[PAD{id}]` tokens; added tokens are control tokens when special, else user-defined.
    let vocab = tokenizer.get_vocab(true);
    let size = vocab.values().max().map_or(0, |&id| id as usize + 1);
    let mut tokens: Vec<Option<String>> = vec![None; size];
    for (token, id) in vocab {
        tokens[id as usize] = Some(token);
    }
    let added = tokenizer.get_added_tokens_decoder();
    const UNUSED: i32 = 5;
    let types: Vec<Value> = (0..size as u32)
        .map(|id| match (&tokens[id as usize], added.get(&id)) {
            (None, _) => UNUSED,
            (Some(_), Some(token)) if token.special => CONTROL,
            (Some(_), Some(_)) => USER_DEFINED,
            (Some(_), None) => NORMAL,
        })
        .map(Value::I32)
        .collect();
    let tokens: Vec<Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| Value::String(token.unwrap_or_else(|| format!("[PAD{id}]"))))
        .collect();

    let tokenizer_config = match &files.tokenizer_config {
        Some(path) => TokenizerConfig::from_file(path)?,
        None => TokenizerConfig::default(),
    };
    let special = |text: &Option<String>, key: &str| {
        text.as_deref()
            .and_then(|t| tokenizer.token_to_id(t))
            .or_else(|| first_id(&config[key]))
    };
    let bos = special(&tokenizer_config.bos_token, "bos_token_id");
    let eos = special(&tokenizer_config.eos_token, "eos_token_id");
    // Whether encoding adds the BOS token, as the tokenizer's post-processor does.
    let encode = |specials| {
        tokenizer
            .encode("a", specials)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer(e.to_string()))
    };
    let add_bos = bos.is_some_and(|bos| {
        matches!((encode(true), encode(false)), (Ok(with), Ok(without))
            if with.len() > without.len() && with.first() == Some(&bos))
    });
    let chat_template = match &files.chat_template {
        Some(path) => Some(std::fs::read_to_string(path)?),
        None => tokenizer_config.chat_template,
    };

    let mut metadata = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
    ];
    metadata.extend(bos.map(|id| ("tokenizer.ggml.bos_token_id".into(), Value::U32(id))));
    metadata.extend(eos.map(|id| ("tokenizer.ggml.eos_token_id".into(), Value::U32(id))));
    let pad = first_id(&config["pad_token_id"]);
    metadata.extend(pad.map(|id| ("tokenizer.ggml.padding_token_id".into(), Value::U32(id))));
    metadata.extend(chat_template.map(|t| ("tokenizer.chat_template".into(), Value::String(t))));
    let pre = pre_tokenizer(&metadata, tokenizer)?;
    metadata.push(("tokenizer.ggml.pre".into(), Value::String(pre.into())));
    Ok(metadata)
}

/// The first of [`PRE_TOKENIZERS`] under which the tokenizer rebuilt from `metadata` tokenizes
/// [`PRE_TOKENIZER_SAMPLE`] as `tokenizer` does.
fn pre_tokenizer(metadata: &[(String, Value)], tokenizer: &Tokenizer) -> Result<&'static str> {
    let ids = |tokenizer: &Tokenizer| {
        tokenizer
            .encode(PRE_TOKENIZER_SAMPLE, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer(e.to_string()))
    };
    let wanted = ids(tokenizer)?;
    for pre in PRE_TOKENIZERS {
        let mut content = Content {
            magic: VersionedMagic::GgufV3,
            metadata: metadata
                .iter()
                .cloned()
                .chain([("tokenizer.ggml.pre".into(), Value::String(pre.into()))])
                .collect::<HashMap<_, _>>(),
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        };
        if ids(&tokenizers_gguf::from_gguf(&mut content)?)? == wanted {
            return Ok(pre);
        }
    }
    Err(Error::Tokenizer(format!(
        "the tokenizer splits words unlike any llama.cpp pre-tokenizer wick knows ({}), so the \
         GGUF export cannot name it",
        PRE_TOKENIZERS.join(", ")
    )))
}

/// A token id written as a number or as a list whose first number is used.
fn first_id(value: &serde_json::Value) -> Option<u32> {
    match value {
        serde_json::Value::Array(ids) => ids.first().and_then(first_id),
        other => other.as_u64().and_then(|id| u32::try_from(id).ok()),
    }
}

/// The Hugging Face row that GGUF row `r` holds, in a llama query or key projection of `rows`
/// rows over `heads` heads: llama.cpp's converter interleaves each head's two halves,
/// `w.reshape(heads, 2, half, cols).swapaxes(1, 2)`.
fn hf_row(r: usize, rows: usize, heads: usize) -> usize {
    let per_head = rows / heads;
    let (head, within) = (r / per_head, r % per_head);
    head * per_head + (within % 2) * (per_head / 2) + within / 2
}

/// `tensor` (a matrix or a bias, in any block type) with its rows in llama.cpp's order: blocks
/// never span rows, so rows are moved as stored bytes.
fn permute_rows(tensor: &QTensor, heads: usize) -> Result<QTensor> {
    let dims = tensor.shape().dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(Error::Load {
            path: Default::default(),
            message: format!("a projection of {rows} rows does not split into {heads} heads"),
        });
    }
    let data = tensor.data()?;
    let row_bytes = data.len() / rows;
    let mut permuted = Vec::with_capacity(data.len());
    for r in 0..rows {
        let from = hf_row(r, rows, heads) * row_bytes;
        permuted.extend_from_slice(&data[from..from + row_bytes]);
    }
    Ok(qtensor_from_ggml(
        tensor.dtype(),
        &permuted,
        dims,
        &Device::Cpu,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    #[test]
    fn rows_move_as_llama_cpp_permutes_them_in_any_block_type() {
        let (heads, rows, cols) = (4, 16, 64);
        let hf = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let expected = super::super::permute(&hf, heads).unwrap();
        for dtype in [GgmlDType::F32, GgmlDType::Q8_0] {
            let moved = permute_rows(&QTensor::quantize(&hf, dtype).unwrap(), heads).unwrap();
            let want = QTensor::quantize(&expected, dtype).unwrap();
            assert_eq!(moved.data().unwrap(), want.data().unwrap(), "{dtype:?}");
        }
        assert!(permute_rows(&QTensor::quantize(&hf, GgmlDType::F32).unwrap(), 3).is_err());
    }
}
