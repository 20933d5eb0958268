//! Q8_0 weights times a few rows of activations, on CPUs with AVX-512 VNNI: the decode rows of
//! a batch, for the matrices candle's fast x86 kernels skip (an inner dimension that is not a
//! multiple of 256, as in every projection of SmolLM2 and Gemma 3 270M).
//!
//! candle's kernel for these multiplies one row at a time with 256-bit AVX2 (sign trick,
//! `maddubs`, `madd`), so a step of 8 decode rows cost about 8 single-row steps: the batch was
//! compute-bound. This one takes each 32-value weight block once for a tile of 4 rows and 4
//! columns and multiplies with `vpdpbusd` (see `cargo bench --bench kernels`).
//!
//! The arithmetic is candle's (and ggml's) Q8_0 dot product, operation for operation:
//! activations quantized per 32-value block with a scale of `max|x| / 127` rounded to f16, exact
//! integer dot products per block, scaled by the product of the two scales into eight f32 lanes,
//! summed as candle sums them. So a row gets the same bits from this kernel, whatever rows share
//! the call, as from candle's and from `blocks32`, which takes a lone row (the model's tests
//! check a segment's bits alone and in any batch).

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::Threads;
use crate::error::Result;

const BLOCK: usize = 32;
/// A Q8_0 block: an f16 scale, then 32 signed bytes.
const BLOCK_BYTES: usize = 34;
/// The fewest output columns per parallel task.
const TASK_COLUMNS: usize = 32;

/// Whether this CPU runs the kernel.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether `weight` suits the kernel (on a CPU where [`available`]).
pub(crate) fn applies(weight: &QTensor) -> bool {
    weight.dtype() == GgmlDType::Q8_0
        && weight
            .shape()
            .dims2()
            .is_ok_and(|(_, k)| k.is_multiple_of(BLOCK))
}

/// `x` `(m, k)` row-major times each of `weights` `(n, k)` transposed: `(m, n)` row-major each.
/// Several weights share one quantization of `x` and one parallel region (q/k/v, gate/up).
pub(crate) fn matmul(
    weights: &[&QTensor],
    x: &[f32],
    m: usize,
    threads: Threads,
) -> Result<Vec<Vec<f32>>> {
    let k = x.len() / m.max(1);
    let mut parts = Vec::with_capacity(weights.len());
    for weight in weights {
        let (n, inner) = weight.shape().dims2()?;
        let data = weight.data()?;
        if !applies(weight) || inner != k || data.len() != n * (k / BLOCK) * BLOCK_BYTES {
            return Err(candle_core::Error::Msg(format!(
                "q8_0 kernel: weight {n}x{inner} ({} bytes), {} inputs for {m} rows",
                data.len(),
                x.len()
            ))
            .into());
        }
        parts.push((data, n));
    }
    let rows = Activations::quantize(x, m, k);
    let mut outputs: Vec<Vec<f32>> = parts.iter().map(|(_, n)| vec![0f32; m * n]).collect();
    let targets: Vec<usize> = outputs
        .iter_mut()
        .map(|y| y.as_mut_ptr() as usize)
        .collect();
    // The model's other kernels' pool runs the tasks: a second pool would fight its spinning
    // workers for the cores.
    let columns: Vec<usize> = parts.iter().map(|(_, n)| *n).collect();
    let (per_task, tasks) = super::column_tasks(&columns, TASK_COLUMNS);
    let run = |task: usize| {
        let (i, first) = tasks[task];
        let (data, n) = &parts[i];
        let count = per_task.min(n - first);
        // SAFETY: each task writes only its own columns of output `i`, which outlives the
        // call; `run_columns` keeps to the `m` rows and `n` columns.
        let out = Output {
            y: targets[i] as *mut f32,
            n: *n,
        };
        unsafe { run_columns(data, k, first, count, &rows, &out) };
    };
    threads.run(tasks.len(), run);
    Ok(outputs)
}

/// Where a task writes: an `(m, n)` row-major output.
struct Output {
    y: *mut f32,
    n: usize,
}

/// Activations quantized as ggml's Q8_0: per row and block, a scale and 32 signed bytes.
struct Activations {
    scales: Vec<f32>,
    values: Vec<i8>,
    rows: usize,
}

impl Activations {
    fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let mut scales = Vec::with_capacity(m * k / BLOCK);
        let mut values = Vec::with_capacity(m * k);
        for block in x.chunks_exact(BLOCK) {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
            scales.push(f16::from_f32(d).to_f32());
            values.extend(block.iter().map(|v| (v * inverse).round() as i8));
        }
        Self {
            scales,
            values,
            rows: m,
        }
    }
}

/// Columns `first..first + count` of `out` for every row.
///
/// # Safety
/// No other thread writes those columns of `out`, which holds `rows.rows` rows of `out.n`.
unsafe fn run_columns(
    weights: &[u8],
    k: usize,
    first: usize,
    count: usize,
    rows: &Activations,
    out: &Output,
) {
    let m = rows.rows;
    let blocks = k / BLOCK;
    // Whole blocks of every column this call covers, and every row's values and scales.
    assert!(weights.len() >= (first + count) * blocks * BLOCK_BYTES && first + count <= out.n);
    assert!(rows.values.len() >= m * k && rows.scales.len() >= m * blocks);
    let mut c = 0;
    while c < count {
        let columns = if count - c >= 4 { 4 } else { 1 };
        let mut r = 0;
        while r < m {
            let tile_rows = (m - r).min(4);
            let tile = Tile {
                weights: weights[(first + c) * blocks * BLOCK_BYTES..].as_ptr(),
                values: rows.values[r * k..].as_ptr(),
                scales: rows.scales[r * blocks..].as_ptr(),
                blocks,
            };
            let mut sums = [[0f32; 4]; 4];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available()` held when the projection chose this kernel; the asserts
            // above keep every block the tile reads inside the slices.
            unsafe {
                match (columns, tile_rows) {
                    (4, 4) => x86::tile::<4, 4>(&tile, &mut sums),
                    (4, 3) => x86::tile::<4, 3>(&tile, &mut sums),
                    (4, 2) => x86::tile::<4, 2>(&tile, &mut sums),
                    (4, _) => x86::tile::<4, 1>(&tile, &mut sums),
                    (_, 4) => x86::tile::<1, 4>(&tile, &mut sums),
                    (_, 3) => x86::tile::<1, 3>(&tile, &mut sums),
                    (_, 2) => x86::tile::<1, 2>(&tile, &mut sums),
                    (_, _) => x86::tile::<1, 1>(&tile, &mut sums),
                }
            }
            for (j, column) in sums.iter().enumerate().take(columns) {
                for (i, &v) in column.iter().enumerate().take(tile_rows) {
                    // SAFETY: row `r + i` < m, column `first + c + j` < n, and this task's own.
                    unsafe { *out.y.add((r + i) * out.n + first + c + j) = v };
                }
            }
            r += tile_rows;
        }
        c += columns;
    }
}

/// Where one tile of columns and rows starts.
struct Tile {
    /// The first column's first block; the others follow, `blocks` blocks each.
    weights: *const u8,
    /// The first row's values and scales; the others follow.
    values: *const i8,
    scales: *const f32,
    blocks: usize,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, BLOCK_BYTES, Tile};

    /// `sums[c][r]`: column `c` of the tile times row `r`, for `C` columns and `R` rows.
    ///
    /// # Safety
    /// The CPU has the features below; `tile` points at `C` columns and `R` rows of whole blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn tile<const C: usize, const R: usize>(
        tile: &Tile,
        sums: &mut [[f32; 4]; 4],
    ) {
        let zero = _mm256_setzero_si256();
        // vpdpbusd multiplies unsigned by signed bytes: the activations go in shifted by 128
        // (`y ^ 0x80`), and each column block's 128 · Σw, computed once for all rows, comes off.
        let shift = _mm256_set1_epi8(i8::MIN);
        let mut acc = [[_mm256_setzero_ps(); R]; C];
        let column_bytes = tile.blocks * BLOCK_BYTES;
        let row_values = tile.blocks * BLOCK;
        for b in 0..tile.blocks {
            let mut y = [zero; R];
            let mut dy = [_mm256_setzero_ps(); R];
            for r in 0..R {
                // SAFETY (all reads): inside the tile, as the caller promises.
                unsafe {
                    let values = tile.values.add(r * row_values + b * BLOCK);
                    y[r] = _mm256_xor_si256(_mm256_loadu_si256(values.cast()), shift);
                    dy[r] = _mm256_set1_ps(*tile.scales.add(r * tile.blocks + b));
                }
            }
            for (c, acc) in acc.iter_mut().enumerate() {
                let block = unsafe { tile.weights.add(c * column_bytes + b * BLOCK_BYTES) };
                let bits = unsafe { block.cast::<u16>().read_unaligned() };
                let dw = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                    bits,
                )))));
                let w = unsafe { _mm256_loadu_si256(block.add(2).cast()) };
                // The tile after this one: DRAM streams better ahead of need.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(block.add(C * column_bytes).cast()) };
                let correction = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, shift, w));
                for ((acc, &y), &dy) in acc.iter_mut().zip(&y).zip(&dy) {
                    // Per lane, the sum of 4 products y·w, exactly as candle's kernel has it.
                    let dot = _mm256_dpbusd_epi32(correction, y, w);
                    let d = _mm256_mul_ps(dw, dy);
                    *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), *acc);
                }
            }
        }
        for (sums, acc) in sums.iter_mut().zip(&acc) {
            for (sum_out, &acc) in sums.iter_mut().zip(acc) {
                *sum_out = sum(acc);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn sum(v: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let one = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
        _mm_cvtss_f32(one)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Module, Tensor};

    use super::*;

    /// Against candle's own Q8_0 kernel: the same integer dot products, scaled and summed in
    /// the same order, so the same bits (a lone decode row takes candle's kernel, which is
    /// faster for one row; batched rows take this one).
    #[test]
    fn agrees_with_candles_kernel() {
        if !available() {
            return;
        }
        let device = Device::Cpu;
        for (m, n, k) in [(1, 64, 576), (3, 70, 96), (8, 130, 1536), (31, 36, 64)] {
            let w = Tensor::randn(0f32, 0.02, (n, k), &device).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            let x = Tensor::randn(0f32, 1.0, (m, k), &device).unwrap();
            let x_values = x.flatten_all().unwrap().to_vec1().unwrap();
            let ours = matmul(&[&q, &q], &x_values, m, Threads::Wick).unwrap();
            let theirs = candle_core::quantized::QMatMul::from_qtensor(q)
                .unwrap()
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(ours, [theirs.clone(), theirs], "{m}x{n}x{k}");
        }
    }
}
