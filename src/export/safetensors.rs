//! `wick export --to safetensors`: a llama or qwen2 GGUF file, dequantized into a directory in the
//! Hugging Face layout — `config.json`, `model.safetensors` with the Hub's tensor names,
//! `tokenizer.json`, `tokenizer_config.json` (with the chat template) and
//! `generation_config.json` — that the `huggingface` backend (or `transformers`) loads.
//!
//! llama.cpp's converter permutes the rows of llama's query and key projections for its
//! interleaved rotary layout; the Hugging Face layout keeps the halves split, so those rows are
//! put back (qwen2's are stored as they are).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::engine::gguf_metadata::Metadata;
use crate::engine::model::{Config, Family, hf_name};
use crate::engine::tokenizer;
use crate::error::{Error, Result, candle_message};

/// Writes the Hugging Face layout of the llama or qwen2 GGUF `gguf` into `out` (created if needed),
/// storing weights as `dtype`.
pub fn gguf_to_safetensors(gguf: &Path, out: &Path, dtype: DType) -> Result<()> {
    let load_error = |message: String| Error::Load {
        path: gguf.to_path_buf(),
        message,
    };
    let mut file = File::open(gguf)?;
    let mut ct = Content::read(&mut file)
        .map_err(|e| load_error(format!("not a valid GGUF file ({})", candle_message(&e))))?;
    let meta = Metadata(&ct);
    let shape = Config::from_gguf(meta).map_err(load_error)?;
    let (model_type, architecture) = match shape.family {
        Family::Llama => ("llama", "LlamaForCausalLM"),
        Family::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        other => {
            return Err(Error::UnsupportedArchitecture {
                found: other.name().to_string(),
                path: gguf.to_path_buf(),
                supported: "llama, qwen2 (export)".into(),
            });
        }
    };
    let llama = shape.family == Family::Llama;
    if ct.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(load_error(
            "it carries Llama 3 rope scaling (`rope_freqs.weight`), which the export cannot \
             write into config.json yet"
                .into(),
        ));
    }
    let bos = meta.integer("tokenizer.ggml.bos_token_id");
    let eos = meta.integer("tokenizer.ggml.eos_token_id");
    let has_output = ct.tensor_infos.contains_key("output.weight");
    let config = json!({
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.ffn,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "rms_norm_eps": shape.norm_eps,
        "rope_theta": shape.rope_theta,
        "max_position_embeddings": shape.context_length,
        "vocab_size": meta.array_len("tokenizer.ggml.tokens"),
        "tie_word_embeddings": !has_output,
        "hidden_act": "silu",
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": dtype_name(dtype),
    });
    let chat_template = meta.string("tokenizer.chat_template");
    let tok = tokenizer::from_gguf(&mut ct)?;
    let token = |id: Option<u32>| id.and_then(|id| tok.id_to_token(id));
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(bos),
        "eos_token": token(eos),
        "chat_template": chat_template,
        "model_max_length": config["max_position_embeddings"],
    });

    let device = Device::Cpu;
    let mut tensors = HashMap::new();
    let names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    for name in names {
        let Some(hf_name) = hf_name(shape.family, &name) else {
            tracing::warn!(tensor = %name, "no Hugging Face name for this tensor; skipped");
            continue;
        };
        let mut weight = ct.tensor(&mut file, &name, &device)?.dequantize(&device)?;
        if llama && name.ends_with("attn_q.weight") {
            weight = unpermute(&weight, shape.heads)?;
        } else if llama && name.ends_with("attn_k.weight") {
            weight = unpermute(&weight, shape.kv_heads)?;
        }
        tensors.insert(hf_name, weight.to_dtype(dtype)?);
    }

    std::fs::create_dir_all(out)?;
    let weights = out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights)?;
    // safetensors writes through a private (0600) temporary file; the other files are 0644.
    crate::fetch::usual_permissions(&weights)?;
    write_json(&out.join("config.json"), &config)?;
    write_json(&out.join("tokenizer_config.json"), &tokenizer_config)?;
    write_json(
        &out.join("generation_config.json"),
        &json!({ "bos_token_id": bos, "eos_token_id": eos }),
    )?;
    tok.save(out.join("tokenizer.json"), false)
        .map_err(|e| Error::Tokenizer(format!("cannot write tokenizer.json: {e}")))?;
    Ok(())
}

/// Undoes llama.cpp's `permute`: within each head, its rows were interleaved as
/// `(head_dim / 2, 2)`; the Hugging Face layout stores them as `(2, head_dim / 2)`.
fn unpermute(weight: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    let half = rows / heads / 2;
    Ok(weight
        .reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// llama.cpp's `permute` (its converter's layout for llama q/k rows), which
/// [`unpermute`] undoes: `w.reshape(heads, 2, rows / heads / 2, cols).swapaxes(1, 2)`.
#[cfg(test)]
pub(crate) fn permute(weight: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    Ok(weight
        .reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(path, text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (heads, rows, cols) = (2, 8, 3);
        let hf = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let gguf = permute(&hf, heads).unwrap();
        assert_ne!(gguf.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
        let back = unpermute(&gguf, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    }
}
