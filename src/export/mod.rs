//! `wick export`: a model written out in the other layout wick reads — a GGUF file as a Hugging
//! Face directory ([`gguf_to_safetensors`]), or a Hugging Face directory as one GGUF file that
//! llama.cpp loads ([`safetensors_to_gguf`], dense or quantized with `--quantize`'s recipes).
//! Both take llama and qwen2 models.

mod gguf;
mod safetensors;

pub use gguf::GgufWeights;
pub(crate) use gguf::safetensors_to_gguf;
pub use safetensors::gguf_to_safetensors;
#[cfg(test)]
pub(crate) use safetensors::permute;
