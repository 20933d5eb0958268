//! bf16 and f16 weights, kept as a safetensors file stores them, times f32 activations: half the
//! bytes of the f32 matrices candle would need on a CPU (it has no bf16 matmul there), and a
//! decode step reads every weight once, so half the time.
//!
//! Each weight is widened in registers — bf16 by a 16-bit shift, f16 by `vcvtph2ps` — and
//! multiplied into f32 accumulators with FMA, so the activations keep every bit: the product is
//! the f32 product of the widened weights, rounded only by the order of the sums. That order is
//! fixed: per output, 16 lanes over the inner dimension (lane `i` takes the values `i`, `i + 16`,
//! …), summed in one tree. The AVX2 path keeps the same 16 lanes in two registers, so both
//! paths give the same bits, and a row's bits never depend on the other rows of the call (batch
//! invariance) or on how a prompt is cut into chunks.
//!
//! A tile of columns is read once for every row of the call (the rows go four at a time while
//! the tile stays in cache): on SmolLM2's 576 × 1536 matrix, 8 rows cost about twice what one
//! does (`cargo bench --bench kernels -- half`).

use candle_core::{DType, Tensor};
use half::{bf16, f16};

use super::{Level, Threads};
use crate::error::Result;

/// Lanes per output: the inner dimension is taken 16 values at a time.
const LANES: usize = 16;
/// The fewest output columns per parallel task.
const TASK_COLUMNS: usize = 16;

/// The two 16-bit float formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Half {
    Bf16,
    F16,
}

impl Half {
    /// The format of `dtype`, where it is one.
    pub fn of(dtype: DType) -> Option<Half> {
        match dtype {
            DType::BF16 => Some(Half::Bf16),
            DType::F16 => Some(Half::F16),
            _ => None,
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            Half::Bf16 => DType::BF16,
            Half::F16 => DType::F16,
        }
    }

    fn widen(self, bits: u16) -> f32 {
        match self {
            Half::Bf16 => bf16::from_bits(bits).to_f32(),
            Half::F16 => f16::from_bits(bits).to_f32(),
        }
    }
}

/// An `(n, k)` matrix of 16-bit floats, row-major (one output column per row, as a projection's
/// weight is stored).
pub(crate) struct HalfMatrix {
    bits: Vec<u16>,
    format: Half,
    n: usize,
    k: usize,
}

impl HalfMatrix {
    /// The matrix whose values are `bytes`, little-endian as safetensors stores them; `None`
    /// where the kernels do not take its shape (`k` not a multiple of 16) or the bytes are not
    /// `n * k` values.
    pub fn from_le_bytes(format: Half, bytes: &[u8], n: usize, k: usize) -> Option<Self> {
        if !k.is_multiple_of(LANES) || bytes.len() != n * k * 2 {
            return None;
        }
        let bits = bytes
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        Some(Self { bits, format, n, k })
    }

    /// A 2-D tensor converted to `format`; `None` as for [`HalfMatrix::from_le_bytes`].
    pub fn from_tensor(format: Half, tensor: &Tensor) -> Result<Option<Self>> {
        let (n, k) = tensor.dims2()?;
        let flat = tensor.to_dtype(format.dtype())?.flatten_all()?;
        let bits: Vec<u16> = match format {
            Half::Bf16 => flat
                .to_vec1::<bf16>()?
                .into_iter()
                .map(bf16::to_bits)
                .collect(),
            Half::F16 => flat
                .to_vec1::<f16>()?
                .into_iter()
                .map(f16::to_bits)
                .collect(),
        };
        Ok(k.is_multiple_of(LANES)
            .then_some(Self { bits, format, n, k }))
    }

    pub fn format(&self) -> Half {
        self.format
    }

    /// `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    pub fn bytes(&self) -> usize {
        self.bits.len() * 2
    }

    /// The stored bytes, for the pages that hold them.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: u16 has no padding and any alignment above u8's; the slice covers exactly the
        // vector's initialized values and borrows it.
        unsafe { std::slice::from_raw_parts(self.bits.as_ptr().cast(), self.bits.len() * 2) }
    }

    /// Rows `ids` widened to f32, `(ids.len(), k)` (embedding lookups); `None` for an id past
    /// the last row.
    pub fn rows(&self, ids: &[u32]) -> Option<Vec<f32>> {
        let mut values = Vec::with_capacity(ids.len() * self.k);
        for &id in ids {
            let row = self
                .bits
                .get(id as usize * self.k..(id as usize + 1) * self.k)?;
            values.extend(row.iter().map(|&b| self.format.widen(b)));
        }
        Some(values)
    }
}

/// `x` `(m, k)` row-major times each of `weights` `(n, k)` transposed, at `level`: `(m, n)`
/// row-major each, in one parallel region.
pub(crate) fn matmul(
    weights: &[&HalfMatrix],
    x: &[f32],
    m: usize,
    level: Level,
    threads: Threads,
) -> Result<Vec<Vec<f32>>> {
    let k = x.len() / m.max(1);
    if let Some(w) = weights.iter().find(|w| w.k != k || m * k != x.len()) {
        return Err(candle_core::Error::Msg(format!(
            "half kernel: weight {}x{}, {} inputs for {m} rows",
            w.n,
            w.k,
            x.len()
        ))
        .into());
    }
    let mut outputs: Vec<Vec<f32>> = weights.iter().map(|w| vec![0f32; m * w.n]).collect();
    let targets: Vec<usize> = outputs
        .iter_mut()
        .map(|y| y.as_mut_ptr() as usize)
        .collect();
    let columns: Vec<usize> = weights.iter().map(|w| w.n).collect();
    let (per_task, tasks) = super::column_tasks(&columns, TASK_COLUMNS);
    let run = |task: usize| {
        let (i, first) = tasks[task];
        let w = weights[i];
        let count = per_task.min(w.n - first);
        // SAFETY: each task writes only its own columns of output `i`, which outlives the call
        // and holds `m` rows of `w.n`.
        unsafe { run_columns(w, x, m, level, first, count, targets[i] as *mut f32) };
    };
    threads.run(tasks.len(), run);
    Ok(outputs)
}

/// Columns `first..first + count` of `y`, `(m, w.n)`, for every row.
///
/// # Safety
/// `y` holds `m * w.n` values, and no other thread writes those columns.
unsafe fn run_columns(
    w: &HalfMatrix,
    x: &[f32],
    m: usize,
    level: Level,
    first: usize,
    count: usize,
    y: *mut f32,
) {
    let k = w.k;
    assert!(first + count <= w.n && x.len() == m * k && k.is_multiple_of(LANES));
    // Four columns at a time where AVX-512's 32 registers hold 4 × 4 accumulators; AVX2 needs
    // two registers per accumulator and has 16.
    let wide = match level {
        Level::Avx512Vnni => 4,
        Level::Avx2 => 2,
    };
    let mut sums = [[0f32; 4]; 4];
    let mut c = 0;
    while c < count {
        let columns = if count - c >= wide { wide } else { 1 };
        let weights = w.bits[(first + c) * k..(first + c + columns) * k].as_ptr();
        let mut r = 0;
        while r < m {
            let rows = (m - r).min(4);
            let x = x[r * k..(r + rows) * k].as_ptr();
            #[cfg(target_arch = "x86_64")]
            {
                macro_rules! tile {
                    ($kernel:ident, $c:literal) => {
                        // SAFETY: `level` came from `Level::supported()`, so its features are
                        // present; `weights` holds `columns` columns and `x` `rows` rows of `k`
                        // values each (sliced above), with `k` a multiple of 16.
                        unsafe {
                            match (w.format, rows) {
                                (Half::Bf16, 1) => {
                                    x86::$kernel::<true, $c, 1>(weights, x, k, &mut sums)
                                }
                                (Half::Bf16, 2) => {
                                    x86::$kernel::<true, $c, 2>(weights, x, k, &mut sums)
                                }
                                (Half::Bf16, 3) => {
                                    x86::$kernel::<true, $c, 3>(weights, x, k, &mut sums)
                                }
                                (Half::Bf16, _) => {
                                    x86::$kernel::<true, $c, 4>(weights, x, k, &mut sums)
                                }
                                (Half::F16, 1) => {
                                    x86::$kernel::<false, $c, 1>(weights, x, k, &mut sums)
                                }
                                (Half::F16, 2) => {
                                    x86::$kernel::<false, $c, 2>(weights, x, k, &mut sums)
                                }
                                (Half::F16, 3) => {
                                    x86::$kernel::<false, $c, 3>(weights, x, k, &mut sums)
                                }
                                (Half::F16, _) => {
                                    x86::$kernel::<false, $c, 4>(weights, x, k, &mut sums)
                                }
                            }
                        }
                    };
                }
                match (level, columns) {
                    (Level::Avx512Vnni, 4) => tile!(tile_avx512, 4),
                    (Level::Avx512Vnni, _) => tile!(tile_avx512, 1),
                    (Level::Avx2, 2) => tile!(tile_avx2, 2),
                    (Level::Avx2, _) => tile!(tile_avx2, 1),
                }
            }
            for (j, column) in sums.iter().enumerate().take(columns) {
                for (i, &v) in column.iter().enumerate().take(rows) {
                    // SAFETY: row `r + i` < m, column `first + c + j` < n, and this task's own.
                    unsafe { *y.add((r + i) * w.n + first + c + j) = v };
                }
            }
            r += rows;
        }
        c += columns;
    }
}

/// The 16 lanes of one output in one fixed tree (lane `i` plus lane `i + 8`, then `i + 4`, `i +
/// 2`, `i + 1`), as both paths sum their registers.
#[cfg(test)]
fn sum(lanes: &[f32; LANES]) -> f32 {
    let mut v = *lanes;
    for half in [8, 4, 2, 1] {
        for i in 0..half {
            v[i] += v[i + half];
        }
    }
    v[0]
}

/// Column `c`, row `r` of a call, lane by lane as the kernels compute it, in plain Rust.
#[cfg(test)]
fn reference(w: &HalfMatrix, x: &[f32], c: usize, r: usize) -> f32 {
    let k = w.k;
    let mut lanes = [0f32; LANES];
    for i in (0..k).step_by(LANES) {
        for (lane, acc) in lanes.iter_mut().enumerate() {
            let weight = w.format.widen(w.bits[c * k + i + lane]);
            *acc = weight.mul_add(x[r * k + i + lane], *acc);
        }
    }
    sum(&lanes)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// `sums[c][r]`: column `c` times row `r`, for `C` columns of `k` values at `w` and `R`
    /// rows of `k` values at `x`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `w` and `x` hold `C * k` and `R * k` values; `k % 16 == 0`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx512<const BF16: bool, const C: usize, const R: usize>(
        w: *const u16,
        x: *const f32,
        k: usize,
        sums: &mut [[f32; 4]; 4],
    ) {
        let mut acc = [[_mm512_setzero_ps(); R]; C];
        for i in (0..k).step_by(LANES) {
            let mut xs = [_mm512_setzero_ps(); R];
            for (r, xs) in xs.iter_mut().enumerate() {
                // SAFETY: row `r` < R, values `i..i + 16` < k.
                *xs = unsafe { _mm512_loadu_ps(x.add(r * k + i)) };
            }
            for (c, acc) in acc.iter_mut().enumerate() {
                // SAFETY: column `c` < C, values `i..i + 16` < k; the prefetch only hints (the
                // next tile's same place, which DRAM streams better ahead of need).
                let raw = unsafe {
                    let at = w.add(c * k + i);
                    _mm_prefetch::<_MM_HINT_T0>(at.add(C * k).cast());
                    _mm256_loadu_si256(at.cast())
                };
                let weights = match BF16 {
                    true => {
                        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
                    }
                    false => _mm512_cvtph_ps(raw),
                };
                for (acc, &xs) in acc.iter_mut().zip(&xs) {
                    *acc = _mm512_fmadd_ps(weights, xs, *acc);
                }
            }
        }
        for (sums, acc) in sums.iter_mut().zip(&acc) {
            for (sum, &acc) in sums.iter_mut().zip(acc) {
                let low = _mm512_castps512_ps256(acc);
                let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
                *sum = eight(_mm256_add_ps(low, high));
            }
        }
    }

    /// Lanes 0–7 of an output whose lanes 8–15 were already added in: the rest of the tree.
    #[target_feature(enable = "avx2")]
    fn eight(v: __m256) -> f32 {
        let four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
        let one = _mm_add_ss(two, _mm_shuffle_ps::<1>(two, two));
        _mm_cvtss_f32(one)
    }

    /// [`tile_avx512`] on AVX2: each accumulator's 16 lanes in two registers, the same FMAs
    /// lane for lane.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; otherwise as [`tile_avx512`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const BF16: bool, const C: usize, const R: usize>(
        w: *const u16,
        x: *const f32,
        k: usize,
        sums: &mut [[f32; 4]; 4],
    ) {
        let mut acc = [[[_mm256_setzero_ps(); 2]; R]; C];
        for i in (0..k).step_by(LANES) {
            for (c, acc) in acc.iter_mut().enumerate() {
                let mut weights = [_mm256_setzero_ps(); 2];
                for (h, weights) in weights.iter_mut().enumerate() {
                    // SAFETY: column `c` < C, values `i + 8h..i + 8h + 8` < k.
                    let raw = unsafe {
                        let at = w.add(c * k + i + 8 * h);
                        _mm_prefetch::<_MM_HINT_T0>(at.add(C * k).cast());
                        _mm_loadu_si128(at.cast())
                    };
                    *weights = match BF16 {
                        true => {
                            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
                        }
                        false => _mm256_cvtph_ps(raw),
                    };
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    for (h, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: row `r` < R, values `i + 8h..i + 8h + 8` < k.
                        let xs = unsafe { _mm256_loadu_ps(x.add(r * k + i + 8 * h)) };
                        *acc = _mm256_fmadd_ps(weights[h], xs, *acc);
                    }
                }
            }
        }
        for (sums, acc) in sums.iter_mut().zip(&acc) {
            for (sum, &[low, high]) in sums.iter_mut().zip(acc) {
                *sum = eight(_mm256_add_ps(low, high));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::super::tests::inputs;
    use super::*;

    /// Deterministic weights with a spread of magnitudes, as `format`.
    fn matrix(format: Half, n: usize, k: usize, seed: u32) -> HalfMatrix {
        let values: Vec<f32> = (0..n * k)
            .map(|i| {
                let v = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32;
                (v / (1 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        let t = Tensor::from_vec(values, (n, k), &Device::Cpu).unwrap();
        HalfMatrix::from_tensor(format, &t).unwrap().unwrap()
    }

    /// Every level gives the reference's bits (so the same bits as each other) for 1 to 32 rows,
    /// and the reference is the f64 product of the widened weights within f32 rounding.
    #[test]
    fn every_level_matches_the_reference_and_the_widened_product() {
        let levels = Level::supported();
        for format in [Half::Bf16, Half::F16] {
            for (n, k) in [(40, 576), (37, 640), (9, 1536), (5, 8960)] {
                let w = matrix(format, n, k, 3);
                for m in [1, 2, 3, 4, 5, 8, 17, 32] {
                    let x = inputs(m, k);
                    for level in &levels {
                        let y = &matmul(&[&w], &x, m, *level, Threads::Wick).unwrap()[0];
                        for (i, y) in y.iter().enumerate() {
                            let (r, c) = (i / n, i % n);
                            let expected = reference(&w, &x, c, r);
                            assert_eq!(
                                y.to_bits(),
                                expected.to_bits(),
                                "{format:?} {level:?} {n}x{k}, {m} rows: row {r} column {c}"
                            );
                        }
                    }
                    for r in 0..m {
                        for c in 0..n {
                            let products = (0..k).map(|i| {
                                let weight = format.widen(w.bits[c * k + i]);
                                f64::from(weight) * f64::from(x[r * k + i])
                            });
                            let magnitude: f64 = products.clone().map(f64::abs).sum();
                            let exact: f64 = products.sum();
                            let error = (f64::from(reference(&w, &x, c, r)) - exact).abs();
                            assert!(error <= magnitude * 1e-5, "{format:?} {error} at {r},{c}");
                        }
                    }
                }
            }
        }
    }

    /// A row's bits do not depend on the other rows of the call nor on the matrices beside it.
    #[test]
    fn a_row_gets_the_same_bits_alone_and_in_any_batch() {
        let Some(level) = Level::best() else {
            return;
        };
        let (a, b) = (
            matrix(Half::Bf16, 72, 640, 1),
            matrix(Half::Bf16, 40, 640, 2),
        );
        let x = inputs(32, 640);
        let together = matmul(&[&a, &b], &x, 32, level, Threads::Wick).unwrap();
        for r in [0, 5, 16, 31] {
            let row = &x[r * 640..(r + 1) * 640];
            let alone = matmul(&[&b, &a], row, 1, level, Threads::Candle).unwrap();
            assert_eq!(alone[1], together[0][r * 72..(r + 1) * 72], "row {r}");
            assert_eq!(alone[0], together[1][r * 40..(r + 1) * 40], "row {r}");
        }
    }

    #[test]
    fn shapes_the_kernels_do_not_take_are_refused() {
        assert!(HalfMatrix::from_le_bytes(Half::Bf16, &[0; 2 * 4 * 24], 4, 24).is_none());
        assert!(HalfMatrix::from_le_bytes(Half::Bf16, &[0; 2 * 4 * 32], 4, 16).is_none());
        let w = HalfMatrix::from_le_bytes(Half::F16, &[0; 2 * 4 * 32], 4, 32).unwrap();
        assert_eq!(w.rows(&[3]).map(|r| r.len()), Some(32));
        assert_eq!(w.rows(&[4]), None);
        if let Some(level) = Level::best() {
            assert!(matmul(&[&w], &inputs(1, 16), 1, level, Threads::Wick).is_err());
        }
    }
}
