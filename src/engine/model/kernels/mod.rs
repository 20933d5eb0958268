//! wick's own CPU matmul kernels over GGUF blocks as the file stores them, for the rows of a
//! decode step (1 to 31 rows): where candle's kernels cost bytes or time.
//!
//! - Q4_K and Q6_K ([`k_quants`]): candle's fast x86 kernels repack these into tiles a third
//!   larger (f32 scales), need 16-row multiples, and Q6_K has no fast one-row kernel; these read
//!   the 144- and 210-byte blocks as stored, with the activations quantized once per row to Q8_K
//!   and shared by every matrix of the same input.
//! - Q4_0, Q4_1, Q5_0 and Q8_0 ([`blocks32`]): candle has no fast x86 kernel for the first three,
//!   nor for Q8_0 where the inner dimension is not a multiple of 256 (every matrix of SmolLM2 and
//!   Gemma 3 270M); activations are quantized once per row in blocks of 32.
//! - Q8_0 tiles ([`q8_0`]): 2 to 255 rows on matrices candle's fast kernels skip, each weight
//!   block shared by four rows; the same bits as [`blocks32`] gives a lone row.
//! - bf16 and f16 safetensors matrices as stored ([`half`]): candle has no bf16 matmul on a CPU
//!   and would widen them to f32, twice the bytes; these widen in registers, for any number of
//!   rows.
//!
//! An AVX-512 VNNI path and an AVX2 path, chosen at run time; both give the same bits (exact
//! integer block sums, the same f32 steps).
//!
//! Columns (output features) are split over wick's own threads ([`pool`], made to share the CPU
//! with other processes), so a row's result never depends on the other rows of the call (batch
//! invariance), nor on the number of threads.

mod activations;
mod blocks32;
pub(crate) mod half;
mod k_quants;
mod pool;
pub(crate) mod q8_0;

use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::Result;
use activations::{Q8K, Q8x32};

/// Values per k-quant block (and per Q8_K activation block).
const QK_K: usize = 256;
/// Values per block of the 32-value types (and per activation block of theirs).
const QK32: usize = 32;
/// The fewest output columns per parallel task.
const TASK_COLUMNS: usize = 16;
/// Columns per kernel call: the per-call setup is spread over them, the sums fit on the stack.
const COLUMNS_PER_CALL: usize = 64;

/// Whose threads a k-quant call runs on. wick's own pool shares a busy CPU gracefully, but in a
/// model whose other matrices still take candle's kernels, two pools of spinning workers fight
/// for the cores (Gemma 3 270M decoded ~8% slower that way): such a model runs them all on
/// candle's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Threads {
    Wick,
    Candle,
}

impl Threads {
    /// Runs `f` for each of `parts` on these threads.
    pub(crate) fn run(self, parts: usize, f: impl Fn(usize) + Sync) {
        match self {
            Threads::Wick => pool::pool().run(parts, f),
            Threads::Candle => candle_core::utils::barrier_pool()
                .execute_chunked(parts, |range| range.for_each(&f)),
        }
    }
}

/// The SIMD instruction sets the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// AVX-512 F/BW/VL with VNNI (Zen 4, Sapphire Rapids and later).
    Avx512Vnni,
    /// AVX2 with FMA and F16C (Haswell, Zen 1 and later).
    Avx2,
}

impl Level {
    /// Every level this CPU runs, widest first: the first is the one used, the others are
    /// tested against it.
    pub fn supported() -> Vec<Level> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let mut levels = Vec::new();
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                levels.push(Level::Avx512Vnni);
            }
            if has!("avx2") && has!("fma") && has!("f16c") {
                levels.push(Level::Avx2);
            }
            levels
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Vec::new()
        }
    }

    /// The widest level this CPU runs; `None` keeps candle's kernels.
    pub fn best() -> Option<Level> {
        static BEST: std::sync::OnceLock<Option<Level>> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Level::supported().first().copied())
    }
}

/// Asks Linux to back `bytes` (weights, read once per token) with 2 MiB pages. Decoding streams
/// through every weight each step, and with 4 KiB pages a TLB miss every 4 KiB costs the stream
/// much of its speed, most in a virtual machine, where a miss walks two page tables: on the VM
/// BENCHMARKS.md measures on, a plain multi-threaded read went from 31 to 51 GB/s. Pages already
/// there are collapsed at once (`MADV_COLLAPSE`, Linux 6.1); where Linux says no, nothing changes.
pub(crate) fn prefer_huge_pages(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (bytes.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (bytes.as_ptr() as usize + bytes.len()) / HUGE * HUGE;
        if end > start {
            let (address, length) = (start as *mut libc::c_void, end - start);
            // SAFETY: advice on whole pages inside memory `bytes` already owns: it changes how
            // the pages are backed, never what they hold. A refusal (old kernel, no THP) is
            // harmless and ignored.
            unsafe {
                libc::madvise(address, length, libc::MADV_HUGEPAGE);
                libc::madvise(address, length, libc::MADV_COLLAPSE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

/// How a type's activations are quantized: matrices of one family share one quantization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// Q4_K, Q6_K: Q8_K activations.
    KQuants,
    /// Q4_0, Q4_1, Q5_0, Q8_0: activations in blocks of 32.
    Blocks32,
}

/// The family of a type the kernels read, with its values and bytes per block.
fn layout(dtype: GgmlDType) -> Option<(Family, usize, usize)> {
    match dtype {
        GgmlDType::Q4K => Some((Family::KQuants, QK_K, k_quants::Q4K_BYTES)),
        GgmlDType::Q6K => Some((Family::KQuants, QK_K, k_quants::Q6K_BYTES)),
        other => blocks32::kind(other).map(|(_, bytes)| (Family::Blocks32, QK32, bytes)),
    }
}

/// The family of `weight` where wick's kernels take it: a type they read, `(n, k)` with `k` a
/// multiple of the block, stored whole.
pub(crate) fn family(weight: &QTensor) -> Option<Family> {
    let (n, k) = weight.shape().dims2().ok()?;
    let (family, values, bytes) = layout(weight.dtype())?;
    let whole = weight
        .data()
        .is_ok_and(|data| data.len() == n * (k / values) * bytes);
    (k.is_multiple_of(values) && whole).then_some(family)
}

/// The activations of one call, quantized for the weights' family.
enum Activations {
    KQuants(Q8K),
    Blocks32(Q8x32),
}

impl Activations {
    /// Rows, and blocks per row.
    fn shape(&self) -> (usize, usize) {
        match self {
            Activations::KQuants(acts) => (acts.rows, acts.blocks),
            Activations::Blocks32(acts) => (acts.rows, acts.blocks),
        }
    }
}

/// `x` `(m, k)` row-major times each of `weights` `(n, k)` transposed, at `level`: `(m, n)`
/// row-major each. The weights, all of one [`Family`], share one quantization of `x` and one
/// parallel region.
pub(crate) fn matmul(
    weights: &[&QTensor],
    x: &[f32],
    m: usize,
    level: Level,
    threads: Threads,
) -> Result<Vec<Vec<f32>>> {
    let k = x.len() / m.max(1);
    let first_family = weights.first().and_then(|w| family(w));
    let mut parts = Vec::with_capacity(weights.len());
    for weight in weights {
        let (n, inner) = weight.shape().dims2()?;
        let family = family(weight).filter(|f| Some(*f) == first_family);
        let Some((_, _, bytes)) = layout(weight.dtype()).filter(|_| family.is_some()) else {
            return Err(candle_core::Error::Msg(format!(
                "wick's kernels: {:?} weight {n}x{inner} beside {first_family:?}",
                weight.dtype()
            ))
            .into());
        };
        if inner != k || m * k != x.len() {
            return Err(candle_core::Error::Msg(format!(
                "wick's kernels: weight {n}x{inner}, {} inputs for {m} rows",
                x.len()
            ))
            .into());
        }
        parts.push((weight.data()?, weight.dtype(), n, bytes));
    }
    let acts = match first_family {
        Some(Family::Blocks32) => Activations::Blocks32(Q8x32::quantize(x, m)),
        _ => Activations::KQuants(Q8K::quantize(x, m)),
    };
    let mut outputs: Vec<Vec<f32>> = parts.iter().map(|(_, _, n, _)| vec![0f32; m * n]).collect();
    let targets: Vec<usize> = outputs
        .iter_mut()
        .map(|y| y.as_mut_ptr() as usize)
        .collect();
    let columns: Vec<usize> = parts.iter().map(|(_, _, n, _)| *n).collect();
    let (per_task, tasks) = column_tasks(&columns, TASK_COLUMNS);
    let run = |task: usize| {
        let (i, first) = tasks[task];
        let (data, dtype, n, block_bytes) = &parts[i];
        let bytes = acts.shape().1 * block_bytes;
        let end = (first + per_task).min(*n);
        let mut sums = [[0f32; 4]; COLUMNS_PER_CALL];
        for start in (first..end).step_by(COLUMNS_PER_CALL) {
            let count = COLUMNS_PER_CALL.min(end - start);
            let weights = &data[start * bytes..(start + count) * bytes];
            let mut r = 0;
            while r < m {
                let rows = (m - r).min(4);
                columns_times_rows(level, *dtype, weights, &acts, r, rows, &mut sums[..count]);
                for (j, column) in sums[..count].iter().enumerate() {
                    for (row, &v) in column.iter().take(rows).enumerate() {
                        // SAFETY: row `r + row` < m and column `start + j` < n, so inside output
                        // `i`, which outlives the call; only this task writes these columns.
                        let at = (r + row) * n + start + j;
                        unsafe { *(targets[i] as *mut f32).add(at) = v };
                    }
                }
                r += rows;
            }
        }
    };
    threads.run(tasks.len(), run);
    Ok(outputs)
}

/// The parallel tasks of a call over matrices of `columns` output columns each: `(matrix, first
/// column)`, each of the returned count of columns (a multiple of four, at least `fewest`).
/// Long runs of columns stream from memory best; about eight tasks per thread even out the
/// threads and let the others take a late thread's share (see `pool`).
fn column_tasks(columns: &[usize], fewest: usize) -> (usize, Vec<(usize, usize)>) {
    let threads = candle_core::utils::get_num_threads();
    let per_task = (columns.iter().sum::<usize>() / (8 * threads))
        .next_multiple_of(4)
        .max(fewest);
    let tasks = columns
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| (0..n).step_by(per_task).map(move |first| (i, first)))
        .collect();
    (per_task, tasks)
}

/// `out.len()` columns of weights (all their blocks, one column after another) times `rows`
/// (1 to 4) activation rows from `first`: `out[column][row]`.
fn columns_times_rows(
    level: Level,
    dtype: GgmlDType,
    columns: &[u8],
    acts: &Activations,
    first: usize,
    rows: usize,
    out: &mut [[f32; 4]],
) {
    let (rows_there, blocks) = acts.shape();
    // Rows come in groups of four from the first (the 32-value kernels read a group's sums).
    assert!(first + rows <= rows_there && (1..=4).contains(&rows) && first.is_multiple_of(4));
    assert_eq!(
        Some(columns.len()),
        layout(dtype).map(|(_, _, bytes)| bytes * blocks * out.len())
    );
    let columns = columns.as_ptr();
    #[cfg(target_arch = "x86_64")]
    {
        use blocks32::x86 as b32;
        use k_quants::x86::*;
        macro_rules! run {
            ($kernel:ident, $acts:expr) => {
                // SAFETY: `level` came from `Level::supported()` (its features are present); the
                // asserts above keep every block and row the kernel reads inside `columns` and
                // the activations.
                match rows {
                    1 => unsafe { $kernel::<1>(columns, out, $acts, first) },
                    2 => unsafe { $kernel::<2>(columns, out, $acts, first) },
                    3 => unsafe { $kernel::<3>(columns, out, $acts, first) },
                    _ => unsafe { $kernel::<4>(columns, out, $acts, first) },
                }
            };
            ($kernel:ident::<$kind:ident>, $acts:expr) => {
                // SAFETY: as above. One row takes one column at a time, several rows several
                // columns (each activation block loaded once for them): what measured fastest.
                match rows {
                    1 => unsafe {
                        $kernel::<{ blocks32::$kind }, 1, 1>(columns, out, $acts, first)
                    },
                    2 => unsafe {
                        $kernel::<{ blocks32::$kind }, 2, 2>(columns, out, $acts, first)
                    },
                    3 => unsafe {
                        $kernel::<{ blocks32::$kind }, 3, 4>(columns, out, $acts, first)
                    },
                    _ => unsafe {
                        $kernel::<{ blocks32::$kind }, 4, 4>(columns, out, $acts, first)
                    },
                }
            };
        }
        use b32::{avx2 as b32_avx2, avx512 as b32_avx512};
        match (acts, level, dtype) {
            (Activations::KQuants(a), Level::Avx512Vnni, GgmlDType::Q4K) => run!(q4k_avx512, a),
            (Activations::KQuants(a), Level::Avx512Vnni, _) => run!(q6k_avx512, a),
            (Activations::KQuants(a), Level::Avx2, GgmlDType::Q4K) => run!(q4k_avx2, a),
            (Activations::KQuants(a), Level::Avx2, _) => run!(q6k_avx2, a),
            (Activations::Blocks32(a), Level::Avx512Vnni, GgmlDType::Q4_0) => {
                run!(b32_avx512::<Q4_0>, a)
            }
            (Activations::Blocks32(a), Level::Avx512Vnni, GgmlDType::Q4_1) => {
                run!(b32_avx512::<Q4_1>, a)
            }
            (Activations::Blocks32(a), Level::Avx512Vnni, GgmlDType::Q5_0) => {
                run!(b32_avx512::<Q5_0>, a)
            }
            (Activations::Blocks32(a), Level::Avx512Vnni, _) => run!(b32_avx512::<Q8_0>, a),
            (Activations::Blocks32(a), Level::Avx2, GgmlDType::Q4_0) => run!(b32_avx2::<Q4_0>, a),
            (Activations::Blocks32(a), Level::Avx2, GgmlDType::Q4_1) => run!(b32_avx2::<Q4_1>, a),
            (Activations::Blocks32(a), Level::Avx2, GgmlDType::Q5_0) => run!(b32_avx2::<Q5_0>, a),
            (Activations::Blocks32(a), Level::Avx2, _) => run!(b32_avx2::<Q8_0>, a),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (level, columns, out);
}

#[cfg(test)]
mod tests;
