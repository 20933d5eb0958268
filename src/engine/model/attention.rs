//! Attention on the CPU, reading keys and values through each sequence's block table.
//!
//! One kernel serves decode rows and prompt chunks. A row's keys are taken in partitions of
//! [`PARTITION`] positions, counted from position 0 (flash-decoding's split): each partition's
//! scores, softmax numerators and weighted sum of values run over the row's visible keys in
//! position order, and the partitions are combined in order. Nothing in that depends on the
//! other rows of the call, so a row's bits never depend on how its prompt was chunked: a prompt
//! whose prefix came from the cache continues exactly as one computed cold. (candle's GEMM, which
//! prompt chunks used before, sums in an order that follows the number of rows.) Partitions are
//! also what spreads one long sequence's decode over the cores. Keys and values are read once
//! per block for all the query heads that share them and all the unit's rows, converted from the
//! cache's dtype a block at a time. `tests` check it against softmax attention through the GEMM.

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Result, Storage, Tensor, bail};
use half::{f16, slice::HalfFloatSliceExt};

use super::kernels::Threads;
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

/// Key positions per partition: small enough that one sequence's decode at depth splits over the
/// cores, large enough that combining partitions costs little.
const PARTITION: usize = 256;

/// `q` `(heads, rows, head_dim)` f32 contiguous, already scaled, the rows of `segments` in order;
/// `keys` and `values` a layer's pool (see `KvStore`), with every row's own key already written.
/// The result is `(rows, heads * head_dim)`.
pub(crate) fn paged_attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    segments: &[QueryRows<'_>],
    shape: Heads,
    threads: Threads,
) -> Result<Tensor> {
    let path = Path::best(shape.head_dim);
    let run = Run {
        partition: PARTITION,
        path,
        threads,
    };
    attention_in_partitions(q, keys, values, segments, shape, run)
}

/// How a call is split and run: key positions per partition, the SIMD path, and the pool (the
/// model's matmuls' own, so that only one pool of threads spins).
#[derive(Clone, Copy)]
struct Run {
    partition: usize,
    path: Path,
    threads: Threads,
}

fn attention_in_partitions(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    segments: &[QueryRows<'_>],
    shape: Heads,
    run: Run,
) -> Result<Tensor> {
    let Run {
        partition,
        path,
        threads,
    } = run;
    let Heads {
        heads,
        kv_heads,
        head_dim: dim,
        window,
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
    // Units in (segment, rows, kv head, partition) order: a group's partitions are adjacent.
    let mut units = Vec::new();
    let mut offset = 0;
    for segment in segments {
        for first in (0..segment.rows).step_by(UNIT_ROWS) {
            let rows = UNIT_ROWS.min(segment.rows - first);
            let (position, last) = (segment.start + first, segment.start + first + rows - 1);
            let lo = window.map_or(0, |w| (position + 1).saturating_sub(w));
            for kv in 0..kv_heads {
                for p in lo / partition..=last / partition {
                    units.push(Unit {
                        table: segment.table,
                        first_position: position,
                        rows,
                        kv,
                        row0: offset + first,
                        total,
                        keys: (p * partition).max(lo)..=((p + 1) * partition - 1).min(last),
                    });
                }
            }
        }
        offset += segment.rows;
    }
    let results: Vec<OnceLock<Vec<f32>>> = units.iter().map(|_| OnceLock::new()).collect();
    let run = |pool: Pool<'_>| {
        threads.run(units.len(), |u| {
            let _ = results[u].set(units[u].attend(q_all, &pool, &shape, pool_rows, path));
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
    // Combine each group's partitions in order, and scatter (groups, rows, dim) into
    // (rows, heads, dim).
    let groups = heads / kv_heads;
    let mut out = vec![0f32; total * heads * dim];
    let mut combined = Vec::new();
    let mut u = 0;
    while u < units.len() {
        let (row0, kv, rows) = (units[u].row0, units[u].kv, units[u].rows);
        let same = units[u..]
            .iter()
            .take_while(|other| other.row0 == row0 && other.kv == kv)
            .count();
        let mut parts = Vec::with_capacity(same);
        for result in &results[u..u + same] {
            let Some(part) = result.get() else {
                bail!("paged attention: a unit was not computed")
            };
            parts.push(part.as_slice());
        }
        combined.clear();
        combined.resize(groups * rows * dim, 0.0);
        combine(&parts, dim, &mut combined);
        for g in 0..groups {
            for r in 0..rows {
                let head = kv * groups + g;
                let to = ((row0 + r) * heads + head) * dim;
                out[to..to + dim].copy_from_slice(&combined[(g * rows + r) * dim..][..dim]);
            }
        }
        u += same;
    }
    Tensor::from_vec(out, (total, heads * dim), q.device())
}

/// A partition's result for one query row of one head: the largest score, the sum of the
/// softmax numerators, and their weighted sum of values (`dim` values), in that order.
const PARTIAL: usize = 2;

/// Combines the partitions of each (head, row), in order, into `out` (`dim` values each).
fn combine(parts: &[&[f32]], dim: usize, out: &mut [f32]) {
    for (i, o) in out.chunks_exact_mut(dim).enumerate() {
        let at = i * (PARTIAL + dim);
        let max = parts
            .iter()
            .map(|part| part[at])
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for part in parts {
            let p = &part[at..at + PARTIAL + dim];
            if p[1] == 0.0 {
                continue; // the row sees no key of this partition
            }
            let scale = (p[0] - max).exp();
            sum += p[1] * scale;
            for (o, x) in o.iter_mut().zip(&p[PARTIAL..]) {
                *o += scale * x;
            }
        }
        for o in o.iter_mut() {
            *o /= sum;
        }
    }
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

/// Some consecutive query rows of one sequence against one key/value head and one partition of
/// its keys.
struct Unit<'a> {
    table: &'a [BlockId],
    first_position: usize,
    rows: usize,
    kv: usize,
    /// The first row's index in the call, and the call's rows.
    row0: usize,
    total: usize,
    /// The partition's key positions that any of the rows sees.
    keys: std::ops::RangeInclusive<usize>,
}

impl Unit<'_> {
    /// `(groups, rows, PARTIAL + dim)`: each query head of the group, each row.
    fn attend(
        &self,
        q_all: &[f32],
        pool: &Pool<'_>,
        shape: &Heads,
        pool_rows: usize,
        path: Path,
    ) -> Vec<f32> {
        match *pool {
            Pool::F32(k, v) => self.attend_in(q_all, k, v, shape, pool_rows, path),
            Pool::F16(k, v) => self.attend_in(q_all, k, v, shape, pool_rows, path),
        }
    }

    fn attend_in<E: Element>(
        &self,
        q_all: &[f32],
        keys: &[E],
        values: &[E],
        shape: &Heads,
        pool_rows: usize,
        path: Path,
    ) -> Vec<f32> {
        let Heads {
            heads,
            kv_heads,
            head_dim: dim,
            block_size: bs,
            window,
        } = *shape;
        let groups = heads / kv_heads;
        let (lo, hi) = (*self.keys.start(), *self.keys.end());
        let span = hi + 1 - lo;
        // Row r sees the partition's keys visible(r).0..=visible(r).1 (none where .0 > .1).
        let visible = |r: usize| {
            let last = self.first_position + r;
            let first = window.map_or(0, |w| (last + 1).saturating_sub(w));
            (first.max(lo), last.min(hi))
        };
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
            for r in 0..self.rows {
                let (first, last) = visible(r);
                let (from, to) = (first.max(position), last.min(position + run - 1));
                if from > to {
                    continue;
                }
                let keys = &block[(from - position) * dim..(to + 1 - position) * dim];
                for g in 0..groups {
                    let row = &mut scores[(g * self.rows + r) * span..][from - lo..=to - lo];
                    path.dots(query(g, r), keys, row);
                }
            }
        });
        let stride = PARTIAL + dim;
        let mut out = vec![0f32; groups * self.rows * stride];
        for g in 0..groups {
            for r in 0..self.rows {
                let i = g * self.rows + r;
                let (first, last) = visible(r);
                let partial = &mut out[i * stride..][..PARTIAL];
                if first > last {
                    partial[0] = f32::NEG_INFINITY;
                    continue;
                }
                let row = &mut scores[i * span..][first - lo..=last - lo];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                partial[0] = max;
                partial[1] = exp_in_place(row, max);
            }
        }
        for_each_block(lo, hi, bs, |position, run| {
            let at = head_base + pool_row(self.table, bs, position) * dim;
            let block = rows_f32(values, at, run * dim, &mut scratch);
            for r in 0..self.rows {
                let (first, last) = visible(r);
                let (from, to) = (first.max(position), last.min(position + run - 1));
                if from > to {
                    continue;
                }
                for g in 0..groups {
                    let i = g * self.rows + r;
                    let weights = &scores[i * span..][from - lo..=to - lo];
                    let values = &block[(from - position) * dim..(to + 1 - position) * dim];
                    path.weighted_sum(weights, values, &mut out[i * stride + PARTIAL..][..dim]);
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

/// Lanes of the portable loops, which the compiler keeps in one AVX-512 register (two AVX2 ones).
const LANES: usize = 16;

/// How the kernel's two inner loops (scores, weighted sum of values) run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// AVX-512F, where the CPU has it and the head dimension is a multiple of 16.
    Avx512,
    /// Loops the compiler vectorizes for whatever the build targets.
    Portable,
}

impl Path {
    /// The widest path for heads of `dim` values on this CPU.
    fn best(dim: usize) -> Path {
        #[cfg(target_arch = "x86_64")]
        if dim.is_multiple_of(LANES) && std::arch::is_x86_feature_detected!("avx512f") {
            return Path::Avx512;
        }
        let _ = dim;
        Path::Portable
    }

    /// `scores[j] = q · keys[j]`, `keys` holding `scores.len()` rows of `q.len()`.
    fn dots(self, q: &[f32], keys: &[f32], scores: &mut [f32]) {
        debug_assert_eq!(keys.len(), q.len() * scores.len());
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `best` chose this path on a CPU with AVX-512F, for a `dim` of whole
            // registers.
            Path::Avx512 => unsafe { x86::dots(q, keys, scores) },
            _ => {
                for (s, key) in scores.iter_mut().zip(keys.chunks_exact(q.len())) {
                    *s = dot(q, key);
                }
            }
        }
    }

    /// `out += Σ weights[j] · values[j]`, `values` holding one row of `out.len()` per weight.
    fn weighted_sum(self, weights: &[f32], values: &[f32], out: &mut [f32]) {
        debug_assert_eq!(values.len(), out.len() * weights.len());
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `dots`.
            Path::Avx512 => unsafe { x86::weighted_sum(weights, values, out) },
            _ => weighted_sum(weights, values, out),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::Path::dots`] in AVX-512: one register accumulates each key's products.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `q.len()` is a multiple of 16; `keys.len() >= q.len() *
    /// scores.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots(q: &[f32], keys: &[f32], scores: &mut [f32]) {
        let dim = q.len();
        for (s, key) in scores.iter_mut().zip(keys.chunks_exact(dim)) {
            let mut acc = _mm512_setzero_ps();
            for c in (0..dim).step_by(16) {
                // SAFETY: `c + 16 <= dim`, the length of both `q` and `key`.
                let (x, k) = unsafe {
                    (
                        _mm512_loadu_ps(q.as_ptr().add(c)),
                        _mm512_loadu_ps(key.as_ptr().add(c)),
                    )
                };
                acc = _mm512_fmadd_ps(x, k, acc);
            }
            *s = _mm512_reduce_add_ps(acc);
        }
    }

    /// [`super::Path::weighted_sum`] in AVX-512: each 16 values of `out` stay in a register
    /// while every weighted value row is added to them.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `out.len()` is a multiple of 16; `values.len() >= out.len() *
    /// weights.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weighted_sum(weights: &[f32], values: &[f32], out: &mut [f32]) {
        let dim = out.len();
        for c in (0..dim).step_by(16) {
            // SAFETY: `c + 16 <= dim`, the length of `out`.
            let mut acc = unsafe { _mm512_loadu_ps(out.as_ptr().add(c)) };
            for (&w, value) in weights.iter().zip(values.chunks_exact(dim)) {
                // SAFETY: `c + 16 <= dim`, the length of `value`.
                let v = unsafe { _mm512_loadu_ps(value.as_ptr().add(c)) };
                acc = _mm512_fmadd_ps(_mm512_set1_ps(w), v, acc);
            }
            // SAFETY: as the load above.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(c), acc) };
        }
    }
}

/// A dot product in [`LANES`] lanes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a16, b16) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a16
        .remainder()
        .iter()
        .zip(b16.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a16.zip(b16) {
        for i in 0..LANES {
            lanes[i] += x[i] * y[i];
        }
    }
    sum_lanes(lanes) + tail
}

/// The lanes' sum, halves added pairwise: a few shuffles rather than fifteen dependent adds.
#[inline(always)]
fn sum_lanes(mut lanes: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
        width /= 2;
    }
    lanes[0]
}

/// Replaces each score `s` by `exp(s - max)` and returns their sum.
fn exp_in_place(row: &mut [f32], max: f32) -> f32 {
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        let mut x = [0f32; LANES];
        for (x, s) in x.iter_mut().zip(chunk.iter()) {
            *x = s - max;
        }
        let e = exp_lanes(x);
        for ((s, e), sum) in chunk.iter_mut().zip(e).zip(&mut sums) {
            *s = e;
            *sum += e;
        }
    }
    let tail = chunks.into_remainder();
    let mut x = [f32::NEG_INFINITY; LANES];
    for (x, s) in x.iter_mut().zip(tail.iter()) {
        *x = s - max;
    }
    let e = exp_lanes(x);
    for ((s, e), sum) in tail.iter_mut().zip(e).zip(&mut sums) {
        *s = e;
        *sum += e;
    }
    sums.iter().sum()
}

/// `exp(x)` for `x <= 0` in each lane, within 2 ulp for `x >= -87` and about 0 below: Cephes'
/// `expf` (a degree-7 polynomial on `x - n·ln 2`, times `2^n`), which, unlike a call to the
/// library's, the compiler vectorizes.
#[inline(always)]
fn exp_lanes(x: [f32; LANES]) -> [f32; LANES] {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to an integer, which the sum's low mantissa bits then hold.
    const ROUND: f32 = 12_582_912.0;
    let mut out = [0f32; LANES];
    for (out, x) in out.iter_mut().zip(x) {
        let x = x.max(-87.0);
        let t = x * std::f32::consts::LOG2_E + ROUND;
        let n = t - ROUND;
        let r = x - n * LN2_HI - n * LN2_LO;
        let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
            * r
            + 0.166_666_65)
            * r
            + 0.5;
        let e = p * (r * r) + r + 1.0;
        let two_n = (t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23;
        *out = e * f32::from_bits(two_n as u32);
    }
    out
}

/// [`Path::weighted_sum`] in portable loops.
#[inline(always)]
fn weighted_sum(weights: &[f32], values: &[f32], out: &mut [f32]) {
    let dim = out.len();
    let mut chunks = out.chunks_exact_mut(LANES);
    for (c, chunk) in (&mut chunks).enumerate() {
        let mut acc = [0f32; LANES];
        acc.copy_from_slice(chunk);
        for (w, value) in weights.iter().zip(values.chunks_exact(dim)) {
            let value = &value[c * LANES..][..LANES];
            for i in 0..LANES {
                acc[i] += w * value[i];
            }
        }
        chunk.copy_from_slice(&acc);
    }
    let tail = chunks.into_remainder();
    let start = dim - tail.len();
    for (w, value) in weights.iter().zip(values.chunks_exact(dim)) {
        for (o, x) in tail.iter_mut().zip(&value[start..]) {
            *o += w * x;
        }
    }
}

/// The cache dtypes the kernel reads.
pub(crate) fn reads(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16)
}
#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// A call split as the tests ask, on wick's pool.
    fn tested(partition: usize, path: Path) -> Run {
        let threads = Threads::Wick;
        Run {
            partition,
            path,
            threads,
        }
    }

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

    /// Every path this CPU runs: the widest, and the portable one forced.
    fn paths() -> impl Iterator<Item = Path> {
        let best = Path::best(64);
        [best, Path::Portable]
            .into_iter()
            .take(if best == Path::Portable { 1 } else { 2 })
    }

    #[test]
    fn this_cpu_takes_the_avx512_path_where_it_has_it() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            Path::best(64) == Path::Avx512,
            std::arch::is_x86_feature_detected!("avx512f")
        );
        assert_eq!(Path::best(72), Path::Portable);
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
        for (window, partition) in [
            (None, PARTITION),
            (Some(7), PARTITION),
            (None, 8),
            (Some(7), 8),
        ] {
            let shape = Heads { window, ..shape };
            for (dtype, path) in [DType::F32, DType::F16]
                .into_iter()
                .flat_map(|d| paths().map(move |p| (d, p)))
            {
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
                let ours = attention_in_partitions(
                    &q,
                    &keys,
                    &values,
                    &segments,
                    shape,
                    tested(partition, path),
                )
                .unwrap();
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
                        assert!(
                            diff < 1e-4,
                            "{dtype:?} {window:?} {partition} {path:?} row {row}: {diff}"
                        );
                        row += 1;
                    }
                }
            }
        }
    }

    /// A row's bits depend neither on the chunk it is computed in nor on where its blocks are.
    #[test]
    fn a_row_gets_the_same_bits_in_any_chunk_and_any_blocks() {
        for (dtype, partition) in [
            (DType::F32, PARTITION),
            (DType::F16, PARTITION),
            (DType::F16, 8),
        ] {
            for (window, path) in [None, Some(5)]
                .into_iter()
                .flat_map(|w| paths().map(move |p| (w, p)))
            {
                let shape = heads(window);
                let (keys, values) = pool(2, 16, 64, dtype);
                let scattered: Vec<BlockId> = vec![13, 2, 9, 4, 11, 0, 7, 15];
                let q = Tensor::randn(0f32, 1.0, (6, 30, 64), &Device::Cpu).unwrap();
                let run = |table: &[BlockId], start: usize, rows: usize| {
                    let segments = [QueryRows { table, start, rows }];
                    let q = q.narrow(1, start, rows).unwrap().contiguous().unwrap();
                    attention_in_partitions(
                        &q,
                        &keys,
                        &values,
                        &segments,
                        shape,
                        tested(partition, path),
                    )
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
                let moved = attention_in_partitions(
                    &q,
                    &keys,
                    &values,
                    &segments,
                    shape,
                    tested(partition, path),
                )
                .unwrap();
                assert_eq!(
                    moved.to_vec2::<f32>().unwrap(),
                    whole,
                    "{dtype:?} {window:?}"
                );
            }
        }
    }

    #[test]
    fn exp_lanes_is_within_two_ulp_of_the_library_exp() {
        let mut worst = 0f32;
        for step in 0..=87_000 {
            let x = -(step as f32) / 1000.0;
            let ours = exp_lanes([x; LANES])[0];
            let theirs = x.exp();
            worst = worst.max((ours - theirs).abs() / theirs);
        }
        assert!(worst <= 2.0 * f32::EPSILON, "relative error {worst}");
        assert_eq!(exp_lanes([0.0; LANES])[0], 1.0);
        assert!(exp_lanes([f32::NEG_INFINITY; LANES])[0] < 1e-37);
    }
}
