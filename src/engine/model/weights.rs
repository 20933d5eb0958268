//! Where the transformer's tensors come from. GGUF files and safetensors differ only in how a
//! tensor is found and stored; the transformer asks for each one by its GGUF name, and a
//! safetensors source looks up the Hugging Face name through [`hf_name`].

use candle_core::{DType, Tensor};

use super::config::Family;
use super::embedding::Embedding;
use super::linear::Linear;
use crate::error::Result;

/// The tensors of one model, by GGUF name.
pub(crate) trait WeightSource {
    /// The dtype activations (and the KV cache) use with these weights.
    fn dtype(&self) -> DType;
    fn contains(&self, name: &str) -> bool;
    /// A projection's matrix, kept quantized where the source is.
    fn linear(&mut self, name: &str, bias: Option<Tensor>) -> Result<Linear>;
    /// The token embedding table, kept quantized where the source is and rows are looked up on
    /// the CPU.
    fn embedding(&mut self, name: &str) -> Result<Embedding>;
    /// Any other tensor (norms, biases), dense in [`WeightSource::dtype`].
    fn dense(&mut self, name: &str) -> Result<Tensor>;
}

/// The Hugging Face (`transformers`) name of a GGUF tensor of `family`, or `None` where the
/// Hugging Face layout has no such tensor.
pub(crate) fn hf_name(family: Family, gguf: &str) -> Option<String> {
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
    let (stem, suffix) = part.rsplit_once('.')?;
    let gemma = family == Family::Gemma3;
    let stem = match stem {
        "attn_norm" => "input_layernorm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" if family == Family::Phi3 => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{stem}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names() {
        let cases = [
            (
                Family::Llama,
                "blk.3.attn_k.weight",
                Some("model.layers.3.self_attn.k_proj.weight"),
            ),
            (
                Family::Qwen2,
                "blk.0.attn_q.bias",
                Some("model.layers.0.self_attn.q_proj.bias"),
            ),
            (
                Family::Llama,
                "token_embd.weight",
                Some("model.embed_tokens.weight"),
            ),
            (
                Family::Llama,
                "blk.1.ffn_norm.weight",
                Some("model.layers.1.post_attention_layernorm.weight"),
            ),
            (
                Family::Gemma3,
                "blk.1.ffn_norm.weight",
                Some("model.layers.1.pre_feedforward_layernorm.weight"),
            ),
            (
                Family::Gemma3,
                "blk.2.post_ffw_norm.weight",
                Some("model.layers.2.post_feedforward_layernorm.weight"),
            ),
            (
                Family::Phi3,
                "blk.0.ffn_up.weight",
                Some("model.layers.0.mlp.gate_up_proj.weight"),
            ),
            (
                Family::Phi3,
                "blk.0.attn_qkv.weight",
                Some("model.layers.0.self_attn.qkv_proj.weight"),
            ),
            (Family::Llama, "rope_freqs.weight", None),
        ];
        for (family, gguf, hf) in cases {
            assert_eq!(hf_name(family, gguf).as_deref(), hf, "{gguf}");
        }
    }
}
