//! Reading a model's files into a [`LoadedModel`]: the weights through the one transformer, the
//! tokenizer, and the chat template and special tokens around them.

pub(crate) mod gguf;
mod quantize;
pub(crate) mod safetensors;

pub use quantize::Quantize;

use std::sync::Arc;

use candle_core::Device;

use super::model::{Logits, Segment, Transformer};
use crate::error::Result;

/// What a loader produces: the model plus everything the engine needs around it.
pub(crate) struct LoadedModel {
    pub model: Arc<Transformer>,
    pub tokenizer: tokenizers::Tokenizer,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub eos_ids: Vec<u32>,
    pub architecture: String,
    pub dtype: String,
}

/// Builds the transformer and runs one token through it, so weights that do not fit the config
/// (a mis-shaped or missing tensor) fail here, as a load error, rather than in a request.
fn build(
    config: super::model::Config,
    source: &mut dyn super::model::WeightSource,
    device: &Device,
) -> std::result::Result<Transformer, String> {
    let model = Transformer::load(config, source, device).map_err(|e| e.to_string())?;
    let check = || -> Result<()> {
        let shape = model.kv_shape(1, model.dtype());
        let store = crate::engine::kv::KvStore::new(shape, 1, device)?;
        model.forward(
            &store,
            &[Segment {
                table: &[0],
                start: 0,
                tokens: &[0],
                logits: Logits::Last,
                prompt: true,
            }],
        )?;
        Ok(())
    };
    check().map_err(|e| format!("the weights do not fit the config: {e}"))?;
    Ok(model)
}
