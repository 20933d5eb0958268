//! Attention on the CPU, reading keys and values through each sequence's block table.
//!
//! One kernel serves decode rows and prompt chunks. Each query row's scores, softmax and weighted
//! sum of values run over its visible keys in position order, the same way whatever rows share
//! the call, so a row's bits never depend on how its prompt was chunked: a prompt whose prefix
//! came from the cache continues exactly as one computed cold. (candle's GEMM, which prompt chunks
//! used before, sums in an order that follows the number of rows.) Keys and values are read once
//! per block for all the query heads that share them and all the unit's rows, converted from the
//! cache's dtype a block at a time. `tests` check it against softmax attention through the GEMM.

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Result, Storage, Tensor, bail};
use half::{f16, slice::HalfFloatSliceExt};

use crate::engine::kv::{BlockId, pool_row};

/// One sequence's query rows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueryRows<'a> {
    pub table: &'a [BlockId],
    /// The position of the first row; every position before it is in the cache.
    pub start: usize,
    pub rows: usize,
}

/// The shape of a layer's attention.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    /// A query sees the keys less than this many positions behind it (sliding-window layers).
    pub window: Option<usize>,
}

/// Query rows per unit of work: enough to read each key block once for several rows, few enough
/// to spread a short chunk over the cores.
const UNIT_ROWS: usize = 16;

/// `q` `(heads, rows, head_dim)` f32 contiguous, already scaled, the rows of `segments` in order;
/// `keys` and `values` a layer's pool (see `KvStore`), with every row's own key already written.
/// The result is `(rows, heads * head_dim)`.
pub(crate) fn paged_attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    segments: &[QueryRows<'_>],
    shape: Heads,
) -> Result<Tensor> {
    let Heads {
        heads,
        kv_heads,
        head_dim: dim,
        ..
    } = shape;
    let total: usize = segments.iter().map(|s| s.rows).sum();
    if q.dims() != [heads, total, dim] || heads % kv_heads != 0 || keys.dims() != values.dims() {
        bail!(
            "paged attention: q {:?} for {total} rows, pool {:?}",
            q.dims(),
            keys.dims()
        )
    }
    let q = q.contiguous()?;
    let (q_storage, q_layout) = q.storage_and_layout();
    let (k_storage, k_layout) = keys.storage_and_layout();
    let (v_storage, v_layout) = values.storage_and_layout();
    if !k_layout.is_contiguous() || !v_layout.is_contiguous() {
        bail!("paged attention needs a contiguous pool")
    }
    let Storage::Cpu(CpuStorage::F32(q_all)) = &*q_storage else {
        bail!("paged attention takes f32 queries on the CPU")
    };
    let q_all = &q_all[q_layout.start_offset()..];
    let pool_rows = keys.dim(1)?;
    let mut units = Vec::new();
    let mut offset = 0;
    for segment in segments {
        for first in (0..segment.rows).step_by(UNIT_ROWS) {
            for kv in 0..kv_heads {
                units.push(Unit {
                    table: segment.table,
                    first_position: segment.start + first,
                    rows: UNIT_ROWS.min(segment.rows - first),
                    kv,
                    row0: offset + first,
                    total,
                });
            }
        }
        offset += segment.rows;
    }
    let results: Vec<OnceLock<Vec<f32>>> = units.iter().map(|_| OnceLock::new()).collect();
    let run = |pool: Pool<'_>| {
        candle_core::utils::barrier_pool().execute_chunked(units.len(), |range| {
            for u in range {
                let _ = results[u].set(units[u].attend(q_all, &pool, &shape, pool_rows));
            }
        })
    };
    match (&*k_storage, &*v_storage) {
        (Storage::Cpu(CpuStorage::F32(k)), Storage::Cpu(CpuStorage::F32(v))) => run(Pool::F32(
            &k[k_layout.start_offset()..],
            &v[v_layout.start_offset()..],
        )),
        (Storage::Cpu(CpuStorage::F16(k)), Storage::Cpu(CpuStorage::F16(v))) => run(Pool::F16(
            &k[k_layout.start_offset()..],
            &v[v_layout.start_offset()..],
        )),
        _ => bail!("paged attention takes an f32 or f16 pool on the CPU"),
    }
    // Scatter each unit's (groups, rows, dim) into (rows, heads, dim).
    let groups = heads / kv_heads;
    let mut out = vec![0f32; total * heads * dim];
    for (unit, result) in units.iter().zip(results) {
        let (row0, kv, rows) = (unit.row0, unit.kv, unit.rows);
        let Some(y) = result.into_inner() else {
            bail!("paged attention: a unit was not computed")
        };
        for g in 0..groups {
            for r in 0..rows {
                let head = kv * groups + g;
                let to = ((row0 + r) * heads + head) * dim;
                out[to..to + dim].copy_from_slice(&y[(g * rows + r) * dim..][..dim]);
            }
        }
    }
    Tensor::from_vec(out, (total, heads * dim), q.device())
}

/// A layer's pool in the cache's dtype.
enum Pool<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [f16], &'a [f16]),
}

/// A block's rows of one head as f32: borrowed from an f32 pool, converted from an f16 one.
fn rows_f32<'a>(
    pool: &'a [impl Element],
    at: usize,
    len: usize,
    scratch: &'a mut [f32],
) -> &'a [f32] {
    Element::as_f32(&pool[at..at + len], &mut scratch[..len])
}

trait Element: Copy {
    fn as_f32<'a>(rows: &'a [Self], scratch: &'a mut [f32]) -> &'a [f32];
}

impl Element for f32 {
    fn as_f32<'a>(rows: &'a [f32], _: &'a mut [f32]) -> &'a [f32] {
        rows
    }
}

impl Element for f16 {
    fn as_f32<'a>(rows: &'a [f16], scratch: &'a mut [f32]) -> &'a [f32] {
        rows.convert_to_f32_slice(scratch);
        scratch
    }
}

/// Some consecutive query rows of one sequence against one key/value head.
struct Unit<'a> {
    table: &'a [BlockId],
    first_position: usize,
    rows: usize,
    kv: usize,
    /// The first row's index in the call, and the call's rows.
    row0: usize,
    total: usize,
}

impl Unit<'_> {
    /// `(groups, rows, dim)`: each query head of the group, each row.
    fn attend(&self, q_all: &[f32], pool: &Pool<'_>, shape: &Heads, pool_rows: usize) -> Vec<f32> {
        match *pool {
            Pool::F32(k, v) => self.attend_in(q_all, k, v, shape, pool_rows),
            Pool::F16(k, v) => self.attend_in(q_all, k, v, shape, pool_rows),
        }
    }

    fn attend_in<E: Element>(
        &self,
        q_all: &[f32],
        keys: &[E],
        values: &[E],
        shape: &Heads,
        pool_rows: usize,
    ) -> Vec<f32> {
        let Heads {
            heads,
            kv_heads,
            head_dim: dim,
            block_size: bs,
            window,
        } = *shape;
        let groups = heads / kv_heads;
        // Row r sees keys first(r)..=last(r).
        let last = |r: usize| self.first_position + r;
        let first = |r: usize| window.map_or(0, |w| (last(r) + 1).saturating_sub(w));
        let (lo, hi) = (first(0), last(self.rows - 1));
        let span = hi + 1 - lo;
        let query = |g: usize, r: usize| {
            let head = self.kv * groups + g;
            &q_all[(head * self.total + self.row0 + r) * dim..][..dim]
        };
        let head_base = self.kv * pool_rows * dim;
        let mut scratch = vec![0f32; bs * dim];
        // Scores, (groups, rows, span); only each row's visible keys are written and read.
        let mut scores = vec![0f32; groups * self.rows * span];
        for_each_block(lo, hi, bs, |position, run| {
            let at = head_base + pool_row(self.table, bs, position) * dim;
            let block = rows_f32(keys, at, run * dim, &mut scratch);
            for (j, key) in (position..position + run).zip(block.chunks_exact(dim)) {
                for r in 0..self.rows {
                    if j < first(r) || j > last(r) {
                        continue;
                    }
                    for g in 0..groups {
                        scores[(g * self.rows + r) * span + j - lo] = dot(query(g, r), key);
                    }
                }
            }
        });
        // Softmax over each row's visible keys, in position order; the weights divided by the
        // sum as they are applied.
        let mut sums = vec![0f32; groups * self.rows];
        for g in 0..groups {
            for r in 0..self.rows {
                let row = &mut scores[(g * self.rows + r) * span..][first(r) - lo..=last(r) - lo];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for s in row.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                sums[g * self.rows + r] = sum;
            }
        }
        let mut out = vec![0f32; groups * self.rows * dim];
        for_each_block(lo, hi, bs, |position, run| {
            let at = head_base + pool_row(self.table, bs, position) * dim;
            let block = rows_f32(values, at, run * dim, &mut scratch);
            for (j, value) in (position..position + run).zip(block.chunks_exact(dim)) {
                for r in 0..self.rows {
                    if j < first(r) || j > last(r) {
                        continue;
                    }
                    for g in 0..groups {
                        let i = g * self.rows + r;
                        let weight = scores[i * span + j - lo] / sums[i];
                        for (o, x) in out[i * dim..(i + 1) * dim].iter_mut().zip(value) {
                            *o += weight * x;
                        }
                    }
                }
            }
        });
        out
    }
}

/// Calls `f(position, run)` for each run of positions in `lo..=hi` that lies in one block.
fn for_each_block(lo: usize, hi: usize, bs: usize, mut f: impl FnMut(usize, usize)) {
    let mut position = lo;
    while position <= hi {
        let run = (bs - position % bs).min(hi + 1 - position);
        f(position, run);
        position += run;
    }
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

/// The cache dtypes the kernel reads.
pub(crate) fn reads(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    const BS: usize = 4;

    /// A pool of `blocks` blocks holding random keys and values, `(kv_heads, blocks * BS, dim)`.
    fn pool(kv_heads: usize, blocks: usize, dim: usize, dtype: DType) -> (Tensor, Tensor) {
        let random = || {
            Tensor::randn(0f32, 1.0, (kv_heads, blocks * BS, dim), &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap()
        };
        (random(), random())
    }

    /// Positions `first..end` of the sequence with `table`, `(kv_heads, end - first, dim)` f32.
    fn contiguous(t: &Tensor, table: &[BlockId], first: usize, end: usize) -> Tensor {
        let rows: Vec<u32> = (first..end)
            .map(|p| pool_row(table, BS, p) as u32)
            .collect();
        let rows = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
        t.index_select(&rows, 1)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    }

    fn heads(window: Option<usize>) -> Heads {
        Heads {
            heads: 6,
            kv_heads: 2,
            head_dim: 64,
            block_size: BS,
            window,
        }
    }

    #[test]
    fn matches_softmax_attention_through_the_gemm() {
        let shape = heads(Some(7));
        for window in [None, Some(7)] {
            let shape = Heads { window, ..shape };
            for dtype in [DType::F32, DType::F16] {
                let (keys, values) = pool(2, 12, 64, dtype);
                // Scattered blocks; 9 rows from position 21 (a chunk crossing blocks), and a
                // decode row of another sequence.
                let a: Vec<BlockId> = vec![11, 3, 7, 0, 9, 2, 5, 8];
                let b: Vec<BlockId> = vec![1, 4, 6];
                let segments = [
                    QueryRows {
                        table: &a,
                        start: 21,
                        rows: 9,
                    },
                    QueryRows {
                        table: &b,
                        start: 10,
                        rows: 1,
                    },
                ];
                let q = Tensor::randn(0f32, 1.0, (6, 10, 64), &Device::Cpu).unwrap();
                let ours = paged_attention(&q, &keys, &values, &segments, shape).unwrap();
                let mut row = 0;
                for segment in segments {
                    for r in 0..segment.rows {
                        let position = segment.start + r;
                        let first = window.map_or(0, |w| (position + 1).saturating_sub(w));
                        let k = contiguous(&keys, segment.table, first, position + 1);
                        let v = contiguous(&values, segment.table, first, position + 1);
                        let query = q.narrow(1, row, 1).unwrap().reshape((2, 3, 64)).unwrap();
                        let scores = query.matmul(&k.t().unwrap()).unwrap();
                        let weights = candle_nn::ops::softmax_last_dim(&scores).unwrap();
                        let theirs = weights.matmul(&v).unwrap().reshape((1, 6 * 64)).unwrap();
                        let diff = (ours.narrow(0, row, 1).unwrap() - theirs)
                            .unwrap()
                            .abs()
                            .unwrap()
                            .max_all()
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap();
                        assert!(diff < 1e-4, "{dtype:?} {window:?} row {row}: {diff}");
                        row += 1;
                    }
                }
            }
        }
    }

    /// A row's bits depend neither on the chunk it is computed in nor on where its blocks are.
    #[test]
    fn a_row_gets_the_same_bits_in_any_chunk_and_any_blocks() {
        for dtype in [DType::F32, DType::F16] {
            for window in [None, Some(5)] {
                let shape = heads(window);
                let (keys, values) = pool(2, 16, 64, dtype);
                let scattered: Vec<BlockId> = vec![13, 2, 9, 4, 11, 0, 7, 15];
                let q = Tensor::randn(0f32, 1.0, (6, 30, 64), &Device::Cpu).unwrap();
                let run = |table: &[BlockId], start: usize, rows: usize| {
                    let segments = [QueryRows { table, start, rows }];
                    let q = q.narrow(1, start, rows).unwrap().contiguous().unwrap();
                    paged_attention(&q, &keys, &values, &segments, shape)
                        .unwrap()
                        .to_vec2::<f32>()
                        .unwrap()
                };
                let whole = run(&scattered, 0, 30);
                for (start, rows) in [(0, 1), (5, 3), (12, 17), (29, 1)] {
                    assert_eq!(run(&scattered, start, rows), whole[start..start + rows]);
                }
                // The same keys and values at other places in the pool.
                let elsewhere: Vec<BlockId> = vec![1, 3, 5, 6, 8, 10, 12, 14];
                let copy = |t: &Tensor| {
                    let copy = t.zeros_like().unwrap();
                    for (&from, &to) in scattered.iter().zip(&elsewhere) {
                        let block = t
                            .narrow(1, from as usize * BS, BS)
                            .unwrap()
                            .contiguous()
                            .unwrap();
                        copy.slice_set(&block, 1, to as usize * BS).unwrap();
                    }
                    copy
                };
                let (keys, values) = (copy(&keys), copy(&values));
                let segments = [QueryRows {
                    table: &elsewhere,
                    start: 0,
                    rows: 30,
                }];
                let moved = paged_attention(&q, &keys, &values, &segments, shape).unwrap();
                assert_eq!(
                    moved.to_vec2::<f32>().unwrap(),
                    whole,
                    "{dtype:?} {window:?}"
                );
            }
        }
    }
}
