//! `wick export --to safetensors`: a llama-family GGUF file, dequantized into a directory in the
//! Hugging Face layout — `config.json`, `model.safetensors` with the Hub's tensor names,
//! `tokenizer.json`, `tokenizer_config.json` (with the chat template) and
//! `generation_config.json` — that the `huggingface` backend (or `transformers`) loads.
//!
//! llama.cpp's converter permutes the rows of the query and key projections for its interleaved
//! rotary layout; the Hugging Face layout keeps the halves split, so those rows are put back.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::engine::gguf_metadata::Metadata;
use crate::engine::tokenizer;
use crate::error::{Error, Result, candle_message};

/// Writes the Hugging Face layout of the llama-family GGUF `gguf` into `out` (created if needed),
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
    let architecture = meta.string("general.architecture").unwrap_or_default();
    if architecture != "llama" {
        return Err(Error::UnsupportedArchitecture {
            found: architecture,
            path: gguf.to_path_buf(),
            supported: "llama (export)".into(),
        });
    }
    let required = |key: &str| meta.required(key).map_err(load_error);
    let heads = required("llama.attention.head_count")?;
    let kv_heads = meta
        .integer("llama.attention.head_count_kv")
        .unwrap_or(heads);
    if heads == 0 || kv_heads == 0 {
        return Err(load_error(format!(
            "the GGUF file declares {heads} attention heads and {kv_heads} key/value heads; the \
             file is corrupt"
        )));
    }
    let layers = required("llama.block_count")?;
    let hidden = required("llama.embedding_length")?;
    let bos = meta.integer("tokenizer.ggml.bos_token_id");
    let eos = meta.integer("tokenizer.ggml.eos_token_id");
    let has_output = ct.tensor_infos.contains_key("output.weight");
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": required("llama.feed_forward_length")?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden / heads,
        "rms_norm_eps": meta.float("llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        "rope_theta": meta.float("llama.rope.freq_base").unwrap_or(10_000.0),
        "max_position_embeddings": meta.integer("llama.context_length").unwrap_or(4096),
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
        let Some(hf_name) = hf_name(&name) else {
            tracing::warn!(tensor = %name, "no Hugging Face name for this tensor; skipped");
            continue;
        };
        let mut weight = ct.tensor(&mut file, &name, &device)?.dequantize(&device)?;
        if name.ends_with("attn_q.weight") {
            weight = unpermute(&weight, heads as usize)?;
        } else if name.ends_with("attn_k.weight") {
            weight = unpermute(&weight, kv_heads as usize)?;
        }
        tensors.insert(hf_name, weight.to_dtype(dtype)?);
    }

    std::fs::create_dir_all(out)?;
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
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

/// GGUF tensor names to the names `transformers` (and candle's HF models) use.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let part = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{part}"))
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
        // llama.cpp: w.reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (heads, rows, cols) = (2, 8, 3);
        let hf = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let gguf = hf
            .reshape((heads, 2, rows / heads / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let back = unpermute(&gguf, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn tensor_names() {
        assert_eq!(
            hf_name("blk.3.attn_k.weight").unwrap(),
            "model.layers.3.self_attn.k_proj.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
