//! One enum over the model implementations wick runs: its own transformer for GGUF files, and
//! candle-transformers' models for safetensors.
//!
//! Each keeps its KV cache somewhere different (inside the layers, or in a separate cache).
//! [`Weights::fork`] hides that: it returns a copy that shares the weights and has an empty cache
//! of its own, so each sequence in flight gets its own cache. A family whose model cannot be
//! copied would run one sequence at a time instead ([`Weights::fork`] returning `None`).

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
        if let Weights::Gguf { model, cache } = self {
            debug_assert_eq!(cache.len(), pos);
            return model.forward(tokens, cache);
        }
        let input = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let logits = match self {
            Weights::Gguf { .. } => unreachable!("handled above"),
            Weights::Llama { model, cache } => model.forward(&input, pos, cache)?,
            Weights::Qwen2(m) => m.forward(&input, pos)?,
            Weights::Qwen3(m) => m.forward(&input, pos)?,
            Weights::Phi3(m) => m.forward(&input, pos)?,
        };
        // (1, vocab) or (1, 1, vocab), in the model's dtype.
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?)
    }

    /// A copy with the same weights and an empty KV cache, if this family can be copied.
    /// Must be called on a model that has not run yet: some caches are written in place.
    pub fn fork(&self) -> Option<Weights> {
        Some(match self {
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
        })
    }

    /// Forgets the cached sequence, for families that are reused rather than forked.
    pub fn clear(&mut self) {
        match self {
            Weights::Gguf { model, cache } => *cache = model.new_cache(),
            Weights::Llama { .. } => {}
            Weights::Qwen2(m) => m.clear_kv_cache(),
            Weights::Qwen3(m) => m.clear_kv_cache(),
            Weights::Phi3(m) => m.clear_kv_cache(),
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

/// Hands out a model with an empty cache for each new sequence.
pub(crate) struct ModelPool {
    template: Option<Weights>,
    forkable: bool,
}

impl ModelPool {
    pub fn new(template: Weights) -> Self {
        let forkable = template.fork().is_some();
        Self {
            template: Some(template),
            forkable,
        }
    }

    /// How many sequences can be in flight at once (1 when the family cannot be forked).
    pub fn capacity(&self, wanted: usize) -> usize {
        if self.forkable { wanted.max(1) } else { 1 }
    }

    /// A model for a new sequence, or `None` while the only instance is in use.
    pub fn acquire(&mut self) -> Option<Weights> {
        if self.forkable {
            self.template.as_ref().and_then(Weights::fork)
        } else {
            self.template.take()
        }
    }

    /// Returns a model acquired earlier; forked copies are dropped with their cache.
    pub fn release(&mut self, mut weights: Weights) {
        if !self.forkable {
            weights.clear();
            self.template = Some(weights);
        }
    }
}
