//! One enum over the model implementations wick runs: its own transformer for GGUF files, and
//! candle-transformers' models for safetensors.
//!
//! Each keeps its KV cache somewhere different (inside the layers, or in a separate cache).
//! [`Weights::fork`] hides that: it returns a copy that shares the weights and has an empty cache
//! of its own, so each sequence in flight gets its own cache.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{llama, phi3, qwen2, qwen3};

use super::transformer::{Cache, Transformer};
use crate::error::Result;

pub(crate) enum Weights {
    /// A GGUF model (llama, qwen2, qwen3).
    Gguf {
        model: Arc<Transformer>,
        cache: Cache,
    },
    Llama {
        model: Arc<llama::Llama>,
        cache: llama::Cache,
    },
    Qwen2(qwen2::ModelForCausalLM),
    Qwen3(qwen3::ModelForCausalLM),
    Phi3(phi3::Model),
}

impl Weights {
    /// Runs `tokens` at positions `pos..pos + tokens.len()` and returns the logits of the last
    /// position as a 1-D f32 tensor.
    pub fn forward(&mut self, tokens: &[u32], pos: usize, device: &Device) -> Result<Tensor> {
        // candle's models take a `(1, len)` batch; wick's GGUF transformer takes the ids.
        let input = || Tensor::new(tokens, device)?.unsqueeze(0);
        let logits = match self {
            Weights::Gguf { model, cache } => {
                debug_assert_eq!(cache.len(), pos);
                return model.forward(tokens, cache);
            }
            Weights::Llama { model, cache } => model.forward(&input()?, pos, cache)?,
            Weights::Qwen2(m) => m.forward(&input()?, pos)?,
            Weights::Qwen3(m) => m.forward(&input()?, pos)?,
            Weights::Phi3(m) => m.forward(&input()?, pos)?,
        };
        // (1, vocab) or (1, 1, vocab), in the model's dtype.
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?)
    }

    /// A copy with the same weights and an empty KV cache. Call it on the model as loaded, never
    /// run: some candle models write their cache in place, and copies would share it.
    pub fn fork(&self) -> Weights {
        match self {
            Weights::Gguf { model, .. } => Weights::Gguf {
                model: model.clone(),
                cache: model.new_cache(),
            },
            Weights::Llama { model, cache } => Weights::Llama {
                model: model.clone(),
                cache: cache.clone(),
            },
            Weights::Qwen2(m) => Weights::Qwen2(m.clone()),
            Weights::Qwen3(m) => Weights::Qwen3(m.clone()),
            Weights::Phi3(m) => Weights::Phi3(m.clone()),
        }
    }

    /// Longest prompt slice one forward pass may take. Families whose attention mask handles an
    /// offset (a rectangular mask) can prefill in chunks, which lets other sequences decode in
    /// between; the others prefill the whole prompt at once.
    pub fn prefill_chunk(&self) -> Option<usize> {
        match self {
            Weights::Gguf { .. } | Weights::Llama { .. } => Some(512),
            _ => None,
        }
    }
}
