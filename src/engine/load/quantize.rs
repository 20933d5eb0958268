//! Quantization at load (`--quantize`): safetensors matrices quantized one by one as they are read
//! from the memory map, into the GGUF block types the GGUF path runs on the same kernels, so a
//! Hugging Face repository decodes at a GGUF file's speed without a conversion step.

use candle_core::quantized::{GgmlDType, QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{Device, Tensor};

use crate::error::Result;

/// `--quantize`: the block type safetensors matrices take at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Quantize {
    /// 8.5 bits per weight: every matrix and the embedding table in Q8_0.
    #[value(name = "q8_0")]
    Q8_0,
    /// About 6.6 bits per weight: every matrix in Q6_K.
    #[value(name = "q6_k")]
    Q6K,
    /// About 4.9 bits per weight, llama.cpp's Q4_K_M recipe: Q4_K, with the output matrix (or a
    /// tied embedding table) in Q6_K, and `attn_v` and `ffn_down` in Q6_K in the first and last
    /// eighth of the layers and every third layer between.
    #[value(name = "q4_k")]
    Q4K,
}

impl std::fmt::Display for Quantize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quantize::Q8_0 => "q8_0",
            Quantize::Q6K => "q6_k",
            Quantize::Q4K => "q4_k",
        })
    }
}

impl Quantize {
    /// Bits per weight, on average (q4_k: as llama.cpp's Q4_K_M on a 7B model).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Quantize::Q8_0 => 8.5,
            Quantize::Q6K => 6.5625,
            Quantize::Q4K => 4.85,
        }
    }

    /// The block type of the GGUF-named matrix `name` with inner dimension `k`, in a model of
    /// `layers` layers whose output is `tied` to the embedding table. A k-quant needs `k` a
    /// multiple of 256; other widths (SmolLM2's 576, Gemma 3 270M's 640) take Q8_0, as llama.cpp
    /// falls back to a 32-value type there. `None`: `k` fits no block, the matrix stays dense.
    pub fn block_type(self, name: &str, k: usize, layers: usize, tied: bool) -> Option<GgmlDType> {
        let wanted = match self {
            Quantize::Q8_0 => GgmlDType::Q8_0,
            Quantize::Q6K => GgmlDType::Q6K,
            Quantize::Q4K => {
                let output = name == "output.weight" || (tied && name == "token_embd.weight");
                let more_bits = (name.contains(".attn_v.") || name.contains(".ffn_down."))
                    && layer(name).is_some_and(|i| more_bits(i, layers));
                match output || more_bits {
                    true => GgmlDType::Q6K,
                    false => GgmlDType::Q4K,
                }
            }
        };
        [wanted, GgmlDType::Q8_0]
            .into_iter()
            .find(|t| k.is_multiple_of(t.block_size()))
    }
}

/// The layer of a `blk.{i}.…` name.
fn layer(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// llama.cpp's `use_more_bits`: the layers whose `attn_v` and `ffn_down` Q4_K_M keeps in Q6_K.
fn more_bits(i: usize, layers: usize) -> bool {
    let first = layers / 8;
    match i.checked_sub(first) {
        None => true,
        Some(past) => i >= 7 * layers / 8 || past % 3 == 2,
    }
}

/// How much of a matrix is widened to f32 at a time to be quantized.
const CHUNK_BYTES: usize = 64 << 20;

/// An `(n, k)` matrix quantized to `dtype` on `device`, read a block of rows at a time through
/// `rows(first, count)` (f32, `(count, k)`): blocks never span rows, so the pieces' blocks are
/// the whole matrix's, and only one piece is ever widened to f32 (a 151,936-row embedding table
/// would be 933 MB of f32 at once).
pub(crate) fn quantize(
    (n, k): (usize, usize),
    mut rows: impl FnMut(usize, usize) -> Result<Tensor>,
    dtype: GgmlDType,
    device: &Device,
) -> Result<QTensor> {
    let chunk = (CHUNK_BYTES / (4 * k).max(1)).max(1);
    let mut bytes = Vec::new();
    for first in (0..n).step_by(chunk) {
        let piece = QTensor::quantize(&rows(first, chunk.min(n - first))?, dtype)?;
        bytes.extend_from_slice(&piece.data()?);
    }
    Ok(qtensor_from_ggml(dtype, &bytes, vec![n, k], device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_q4_k_recipe_is_llama_cpp_s_q4_k_m() {
        let q = |name: &str| Quantize::Q4K.block_type(name, 1536, 28, false);
        assert_eq!(q("blk.5.attn_q.weight"), Some(GgmlDType::Q4K));
        assert_eq!(q("output.weight"), Some(GgmlDType::Q6K));
        assert_eq!(q("token_embd.weight"), Some(GgmlDType::Q4K));
        // 28 layers: the first 3 and last 4, and every third between, keep more bits.
        let kept: Vec<usize> = (0..28)
            .filter(|i| q(&format!("blk.{i}.ffn_down.weight")) == Some(GgmlDType::Q6K))
            .collect();
        assert_eq!(kept, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
        assert_eq!(q("blk.3.attn_v.weight"), Some(GgmlDType::Q4K));
        assert_eq!(q("blk.5.attn_v.weight"), Some(GgmlDType::Q6K));
        // A tied table is the output too.
        assert_eq!(
            Quantize::Q4K.block_type("token_embd.weight", 1536, 28, true),
            Some(GgmlDType::Q6K)
        );
    }

    #[test]
    fn widths_a_block_does_not_fit_fall_back_to_q8_0_or_stay_dense() {
        for quantize in [Quantize::Q4K, Quantize::Q6K, Quantize::Q8_0] {
            assert_eq!(
                quantize.block_type("blk.0.attn_q.weight", 576, 30, true),
                Some(GgmlDType::Q8_0)
            );
            assert_eq!(
                quantize.block_type("blk.0.attn_q.weight", 100, 30, true),
                None
            );
        }
        assert_eq!(
            Quantize::Q6K.block_type("blk.0.attn_q.weight", 512, 30, true),
            Some(GgmlDType::Q6K)
        );
    }
}
