//! wick's own CPU matmul kernels over GGUF blocks as the file stores them, for the rows of a
//! decode step (1 to 31 rows): where candle's kernels cost bytes or time.
//!
//! - Q4_K and Q6_K ([`k_quants`]): candle's fast x86 kernels repack these into tiles a third
//!   larger (f32 scales), need 16-row multiples, and Q6_K has no fast one-row kernel; these read
//!   the 144- and 210-byte blocks as stored, with the activations quantized once per row to Q8_K
//!   and shared by every matrix of the same input. An AVX-512 VNNI path and an AVX2 path, chosen
//!   at run time; both give the same bits (exact integer block sums, the same f32 steps).
//! - Q8_0 ([`q8_0`]): several rows on matrices candle's fast kernels skip.
//!
//! Columns (output features) are split over wick's own threads ([`pool`], made to share the CPU
//! with other processes), so a row's result never depends on the other rows of the call (batch
//! invariance), nor on the number of threads.

mod activations;
mod k_quants;
mod pool;
pub(crate) mod q8_0;

use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::Result;
use activations::Q8K;

/// Values per k-quant block (and per Q8_K activation block).
const QK_K: usize = 256;
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

/// The SIMD instruction sets the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// AVX-512 F/BW/VL with VNNI (Zen 4, Sapphire Rapids and later).
    Avx512Vnni,
    /// AVX2 with FMA (Haswell, Zen 1 and later).
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
            if has!("avx2") && has!("fma") {
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

/// Whether the k-quant kernels take `weight`: Q4_K or Q6_K, `(n, k)`, stored whole.
pub(crate) fn k_quant_applies(weight: &QTensor) -> bool {
    let Ok((n, k)) = weight.shape().dims2() else {
        return false;
    };
    block_bytes(weight.dtype()).is_some_and(|bytes| {
        k.is_multiple_of(QK_K)
            && weight
                .data()
                .is_ok_and(|data| data.len() == n * (k / QK_K) * bytes)
    })
}

fn block_bytes(dtype: GgmlDType) -> Option<usize> {
    match dtype {
        GgmlDType::Q4K => Some(k_quants::Q4K_BYTES),
        GgmlDType::Q6K => Some(k_quants::Q6K_BYTES),
        _ => None,
    }
}

/// `x` `(m, k)` row-major times each of `weights` `(n, k)` (Q4_K or Q6_K) transposed, at
/// `level`: `(m, n)` row-major each. The weights share one Q8_K quantization of `x` and one
/// parallel region.
pub(crate) fn k_quant_matmul(
    weights: &[&QTensor],
    x: &[f32],
    m: usize,
    level: Level,
    threads: Threads,
) -> Result<Vec<Vec<f32>>> {
    let k = x.len() / m.max(1);
    let mut parts = Vec::with_capacity(weights.len());
    for weight in weights {
        let (n, inner) = weight.shape().dims2()?;
        if !k_quant_applies(weight) || inner != k || m * k != x.len() {
            return Err(candle_core::Error::Msg(format!(
                "k-quant kernel: {:?} weight {n}x{inner}, {} inputs for {m} rows",
                weight.dtype(),
                x.len()
            ))
            .into());
        }
        parts.push((weight.data()?, weight.dtype(), n));
    }
    let acts = Q8K::quantize(x, m);
    let mut outputs: Vec<Vec<f32>> = parts.iter().map(|(_, _, n)| vec![0f32; m * n]).collect();
    let targets: Vec<usize> = outputs
        .iter_mut()
        .map(|y| y.as_mut_ptr() as usize)
        .collect();
    // About eight tasks per thread even out the threads, and let the others take a late
    // thread's share (see `pool`).
    let columns: usize = parts.iter().map(|(_, _, n)| n).sum();
    let threads_count = candle_core::utils::get_num_threads();
    let per_task = (columns / (8 * threads_count)).max(TASK_COLUMNS);
    let tasks: Vec<(usize, usize)> = parts
        .iter()
        .enumerate()
        .flat_map(|(i, (_, _, n))| (0..*n).step_by(per_task).map(move |first| (i, first)))
        .collect();
    let run = |task: usize| {
        let (i, first) = tasks[task];
        let (data, dtype, n) = &parts[i];
        let bytes = acts.blocks * block_bytes(*dtype).unwrap_or(0);
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
    match threads {
        Threads::Wick => pool::pool().run(tasks.len(), run),
        Threads::Candle => candle_core::utils::barrier_pool()
            .execute_chunked(tasks.len(), |range| range.for_each(run)),
    }
    Ok(outputs)
}

/// `out.len()` columns of weights (all their blocks, one column after another) times `rows`
/// (1 to 4) activation rows from `first`: `out[column][row]`.
fn columns_times_rows(
    level: Level,
    dtype: GgmlDType,
    columns: &[u8],
    acts: &Q8K,
    first: usize,
    rows: usize,
    out: &mut [[f32; 4]],
) {
    assert!(first + rows <= acts.rows && (1..=4).contains(&rows));
    assert_eq!(
        Some(columns.len()),
        block_bytes(dtype).map(|b| b * acts.blocks * out.len())
    );
    let columns = columns.as_ptr();
    #[cfg(target_arch = "x86_64")]
    {
        use k_quants::x86::*;
        macro_rules! run {
            ($kernel:ident) => {
                // SAFETY: `level` came from `Level::supported()` (its features are present); the
                // asserts above keep every block and row the kernel reads inside `columns` and
                // `acts`.
                match rows {
                    1 => unsafe { $kernel::<1>(columns, out, acts, first) },
                    2 => unsafe { $kernel::<2>(columns, out, acts, first) },
                    3 => unsafe { $kernel::<3>(columns, out, acts, first) },
                    _ => unsafe { $kernel::<4>(columns, out, acts, first) },
                }
            };
        }
        match (level, dtype) {
            (Level::Avx512Vnni, GgmlDType::Q4K) => run!(q4k_avx512),
            (Level::Avx512Vnni, _) => run!(q6k_avx512),
            (Level::Avx2, GgmlDType::Q4K) => run!(q4k_avx2),
            (Level::Avx2, _) => run!(q6k_avx2),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (level, columns, out);
}

#[cfg(test)]
mod tests;
