//! wick's CPU kernels, exposed for `cargo bench --bench kernels` to measure against candle's.

use super::model;
use crate::error::Result;

/// wick's Q8_0 kernel for several rows, for `cargo bench --bench kernels` to measure against
/// candle's: `x` `(rows, k)` row-major times `weight` `(n, k)` transposed, or `None` where this
/// CPU or weight does not take it.
#[doc(hidden)]
pub fn q8_0_rows_kernel(
    weight: &candle_core::quantized::QTensor,
    x: &[f32],
    rows: usize,
) -> Option<Result<Vec<f32>>> {
    if !model::kernels::q8_0::available() || !model::kernels::q8_0::applies(weight) {
        return None;
    }
    let threads = model::kernels::Threads::Wick;
    let outputs = model::kernels::q8_0::matmul(&[weight], x, rows, threads);
    Some(outputs.map(|mut outputs| outputs.remove(0)))
}

/// wick's decode-row kernel for `weight`'s type (Q4_K, Q6_K, Q4_0, Q4_1, Q5_0, Q8_0) at this CPU's
/// widest SIMD level, for `cargo bench --bench kernels`: `x` `(rows, k)` row-major times `weight`
/// `(n, k)` transposed, or `None` where this CPU or weight does not take it.
#[doc(hidden)]
pub fn decode_rows_kernel(
    weight: &candle_core::quantized::QTensor,
    x: &[f32],
    rows: usize,
) -> Option<Result<Vec<f32>>> {
    let level = model::kernels::Level::best()?;
    model::kernels::family(weight)?;
    let threads = model::kernels::Threads::Wick;
    let outputs = model::kernels::matmul(&[weight], x, rows, level, threads);
    Some(outputs.map(|mut outputs| outputs.remove(0)))
}

/// wick's bf16/f16 kernel, for the benches and for testing it on real weights: a matrix `(n,
/// k)`, bf16 or f16 as a safetensors file stores it.
#[doc(hidden)]
pub struct HalfKernel(model::kernels::half::HalfMatrix);

impl HalfKernel {
    /// `None` where the kernel does not take `weight`'s dtype or shape.
    pub fn new(weight: &candle_core::Tensor) -> Option<Result<Self>> {
        use model::kernels::half::{Half, HalfMatrix};
        let format = Half::of(weight.dtype())?;
        HalfMatrix::from_tensor(format, weight)
            .map(|matrix| matrix.map(HalfKernel))
            .transpose()
    }

    /// `x` `(rows, k)` row-major times the matrix transposed, at the `level`-th SIMD level this
    /// CPU runs (0 the widest); `None` past the last.
    pub fn matmul(&self, x: &[f32], rows: usize, level: usize) -> Option<Result<Vec<f32>>> {
        let level = *model::kernels::Level::supported().get(level)?;
        let threads = model::kernels::Threads::Wick;
        let outputs = model::kernels::half::matmul(&[&self.0], x, rows, level, threads);
        Some(outputs.map(|mut outputs| outputs.remove(0)))
    }
}

/// wick's paged attention on the CPU, for `cargo bench --bench kernels` to measure against
/// candle's matmul + softmax + matmul: `rows` query rows at positions `depth - rows..depth` of one
/// sequence whose blocks are `0, 1, 2, …` of a pool `keys`/`values` `(kv_heads, positions,
/// head_dim)` (f32 or f16); `q` `(heads, rows, head_dim)` f32, already scaled. `(rows, heads *
/// head_dim)`.
#[doc(hidden)]
pub fn paged_attention_kernel(
    q: &candle_core::Tensor,
    keys: &candle_core::Tensor,
    values: &candle_core::Tensor,
    depth: usize,
    block_size: usize,
) -> Result<candle_core::Tensor> {
    let (heads, rows, head_dim) = q.dims3()?;
    let kv_heads = keys.dim(0)?;
    let table: Vec<u32> = (0..depth.div_ceil(block_size) as u32).collect();
    let segment = model::attention::QueryRows {
        table: &table,
        start: depth - rows,
        rows,
    };
    let shape = model::attention::Heads {
        heads,
        kv_heads,
        head_dim,
        block_size,
        window: None,
    };
    Ok(model::attention::paged_attention(
        q,
        keys,
        values,
        &[segment],
        shape,
        model::kernels::Threads::Wick,
    )?)
}
