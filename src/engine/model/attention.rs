//! Attention for a decode row on the CPU: one new token per query head, against a sequence's
//! cached keys and values.
//!
//! candle's GEMM would first pack every cached key and value into buffers of its own, so at long
//! contexts a step copied the whole cache once more than it read it (perf: `pack_lhs` 12% of a
//! 2,048-token generation). This computes the scores, their softmax and the weighted sum of the
//! values in one pass over the cache, reading each key once for all the query heads that share it.
//! `tests` check it against the GEMM path.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};

/// `q` `(heads, head_dim)` contiguous; keys and values `(kv_heads, positions, head_dim)`, rows
/// contiguous (views into a cache). Queries are already scaled. The result is `(heads, head_dim)`.
pub(crate) struct DecodeAttention;

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (heads, dim) = q_layout.shape().dims2()?;
        let (kv_heads, len, k_dim) = k_layout.shape().dims3()?;
        if k_dim != dim || v_layout.shape() != k_layout.shape() || heads % kv_heads != 0 {
            bail!(
                "decode attention: q {:?}, k {:?}, v {:?}",
                q_layout.shape(),
                k_layout.shape(),
                v_layout.shape()
            )
        }
        let rows_contiguous = |l: &Layout| l.stride()[1] == dim && l.stride()[2] == 1;
        if !q_layout.is_contiguous() || !rows_contiguous(k_layout) || !rows_contiguous(v_layout) {
            bail!("decode attention needs contiguous rows")
        }
        let q = &q.as_slice::<f32>()?[q_layout.start_offset()..];
        let k = &k.as_slice::<f32>()?[k_layout.start_offset()..];
        let v = &v.as_slice::<f32>()?[v_layout.start_offset()..];
        let (k_head, v_head) = (k_layout.stride()[0], v_layout.stride()[0]);
        let groups = heads / kv_heads;
        let mut out = vec![0f32; heads * dim];
        let mut scores = vec![0f32; groups * len];
        for kv in 0..kv_heads {
            let queries = &q[kv * groups * dim..(kv + 1) * groups * dim];
            for j in 0..len {
                let key = &k[kv * k_head + j * dim..][..dim];
                for (g, query) in queries.chunks_exact(dim).enumerate() {
                    scores[g * len + j] = dot(query, key);
                }
            }
            for (g, row) in scores.chunks_exact_mut(len).enumerate() {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in row.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let output = &mut out[(kv * groups + g) * dim..][..dim];
                for (j, &weight) in row.iter().enumerate() {
                    let value = &v[kv * v_head + j * dim..][..dim];
                    let weight = weight / sum;
                    for (o, x) in output.iter_mut().zip(value) {
                        *o += weight * x;
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((heads, dim))))
    }
}

/// The attention of several decode rows, each `[q, keys, values]` as [`DecodeAttention`] takes
/// them (one sequence's row each), spread over candle's CPU worker pool: alone, a row's attention
/// is too small to split, and one after another they left the other cores idle.
pub(crate) fn decode_attention(rows: &[[Tensor; 3]]) -> Result<Vec<Tensor>> {
    if let [[q, keys, values]] = rows {
        return Ok(vec![q.apply_op3_no_bwd(keys, values, &DecodeAttention)?]);
    }
    let results: Vec<OnceLock<Result<Tensor>>> = rows.iter().map(|_| OnceLock::new()).collect();
    candle_core::utils::barrier_pool().execute_chunked(rows.len(), |range| {
        for i in range {
            let [q, keys, values] = &rows[i];
            let _ = results[i].set(q.apply_op3_no_bwd(keys, values, &DecodeAttention));
        }
    });
    let mut outputs = Vec::with_capacity(rows.len());
    for result in results {
        match result.into_inner() {
            Some(y) => outputs.push(y?),
            None => bail!("decode attention: a row was not computed"),
        }
    }
    Ok(outputs)
}

/// A dot product in 16 lanes, which the compiler keeps in one AVX-512 register.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a16
        .remainder()
        .iter()
        .zip(b16.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a16.zip(b16) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    #[test]
    fn matches_softmax_attention_through_the_gemm() {
        let device = Device::Cpu;
        let (heads, kv_heads, dim, capacity, len) = (6, 2, 64, 512, 300);
        let random = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &device).unwrap();
        let q = random(&[heads, dim]);
        // Views into a larger cache, as the transformer passes them.
        let keys = random(&[kv_heads, capacity, dim])
            .narrow(1, 7, len)
            .unwrap();
        let values = random(&[kv_heads, capacity, dim])
            .narrow(1, 7, len)
            .unwrap();
        let ours = q
            .apply_op3_no_bwd(&keys, &values, &DecodeAttention)
            .unwrap();

        let grouped = q.reshape((kv_heads, heads / kv_heads, dim)).unwrap();
        let scores = grouped.matmul(&keys.t().unwrap()).unwrap();
        let weights = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let theirs = weights
            .matmul(&values)
            .unwrap()
            .reshape((heads, dim))
            .unwrap();
        let diff = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "{diff}");
    }
}
