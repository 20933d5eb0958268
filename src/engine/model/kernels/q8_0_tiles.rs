//! Q8_0 matrices in tiles of 16 output columns, for every row count: decode rows and prompt
//! chunks take the same kernel, so a row gets the same bits in any call.
//!
//! A Q8_0 file stores each column's blocks one after another (an f16 scale, 32 signed bytes).
//! Here each block of 16 columns is stored together, no larger: their values in groups of four
//! bytes, column after column within a group, each byte plus 128, and their 16 scales (two
//! blocks' values, then their scales, so that every 64-byte load is one cache line). One
//! 512-bit load is then a group of all 16 columns, one `vpdpbusd` multiplies it by four values
//! of a row (broadcast) into 16 column sums, and the f32 work (scale, convert, add) is done once
//! per block for 16 columns instead of once per column. The tiles are the matrix's only copy.
//! candle's fast Q8_0 kernel (AVX-512 VNNI, an inner dimension that is a multiple of 256) gets
//! its speed the same way from a second, repacked copy beside the blocks; those matrices keep it
//! until the two are compared end to end (BENCHMARKS.md), and these tiles take the others (every
//! matrix of SmolLM2 and Gemma 3 270M but SmolLM2's `ffn_down`).
//!
//! The activations are ggml's Q8_0 ([`Q8x32`]). A block's integer dot product is exact (the
//! `+128` comes off through the row's block sum, computed once per row), scaled by the product of
//! the two scales and added in block order, lane by lane: the AVX2 path (two halves of eight
//! columns, `maddubs` on the signed bytes) gives the same bits.

use candle_core::quantized::{GgmlDType, QTensor};

use super::activations::Q8x32;
use super::{Level, QK32, Threads};
use crate::error::Result;

/// Output columns per tile.
const COLUMNS: usize = 16;
/// A Q8_0 block as stored: an f16 scale, then 32 signed bytes.
const BLOCK_BYTES: usize = 34;
/// One block of a tile: 16 × 32 values and 16 f16 scales.
const TILE_BLOCK_BYTES: usize = COLUMNS * BLOCK_BYTES;
/// A tile block's values.
const VALUES: usize = COLUMNS * QK32;
/// A cache line: where the values start.
const LINE: usize = 64;

/// Where block `b` of `blocks` has its values and its scales within a tile. Blocks go in pairs,
/// both blocks' values before both blocks' scales (a pair is 17 cache lines), so with an even
/// number of blocks every load of values is aligned.
#[inline(always)]
fn block_at(b: usize, blocks: usize) -> (usize, usize) {
    let pair = b / 2 * 2;
    let base = pair * TILE_BLOCK_BYTES;
    let in_pair = (blocks - pair).min(2);
    (
        base + b % 2 * VALUES,
        base + in_pair * VALUES + b % 2 * 2 * COLUMNS,
    )
}
/// Rows per kernel call: each weight group loaded once serves them all (registers: a sum and
/// an integer dot per row).
const ROWS: usize = 8;

/// A Q8_0 matrix `(n, k)` in tiles of 16 columns (the last padded with zero columns).
pub(crate) struct Q8_0Tiles {
    /// The tiles from `start`, the first cache-line boundary of the allocation.
    bytes: Vec<u8>,
    start: usize,
    n: usize,
    k: usize,
}

impl Q8_0Tiles {
    /// `weight` in tiles, where it is Q8_0 `(n, k)` with `k` a multiple of 32, stored whole.
    pub fn from_qtensor(weight: &QTensor) -> Result<Option<Self>> {
        let Ok((n, k)) = weight.shape().dims2() else {
            return Ok(None);
        };
        let data = weight.data()?;
        let blocks = k / QK32;
        if weight.dtype() != GgmlDType::Q8_0
            || !k.is_multiple_of(QK32)
            || data.len() != n * blocks * BLOCK_BYTES
        {
            return Ok(None);
        }
        let tiles = n.div_ceil(COLUMNS);
        let tile_bytes = blocks * TILE_BLOCK_BYTES;
        // Padded columns keep values 0 (stored as 128) and a scale of 0.
        let mut bytes = vec![0x80u8; tiles * tile_bytes + LINE];
        let start = bytes.as_ptr().align_offset(LINE).min(LINE);
        let tiled = &mut bytes[start..start + tiles * tile_bytes];
        for (column, stored) in data.chunks_exact(blocks * BLOCK_BYTES).enumerate() {
            let (tile, c) = (column / COLUMNS, column % COLUMNS);
            let tile = &mut tiled[tile * tile_bytes..][..tile_bytes];
            for (b, block) in stored.chunks_exact(BLOCK_BYTES).enumerate() {
                let (values, scales) = block_at(b, blocks);
                tile[scales + 2 * c..][..2].copy_from_slice(&block[..2]);
                for (g, four) in block[2..].chunks_exact(4).enumerate() {
                    let to = &mut tile[values + (g * COLUMNS + c) * 4..][..4];
                    for (out, &q) in to.iter_mut().zip(four) {
                        *out = q ^ 0x80;
                    }
                }
            }
        }
        for column in n..tiles * COLUMNS {
            let tile = &mut tiled[(tiles - 1) * tile_bytes..][..tile_bytes];
            for b in 0..blocks {
                let scales = block_at(b, blocks).1 + 2 * (column % COLUMNS);
                tile[scales..scales + 2].fill(0);
            }
        }
        super::prefer_huge_pages(tiled);
        Ok(Some(Self { bytes, start, n, k }))
    }

    /// The tiles, one after another.
    fn tiles(&self) -> &[u8] {
        let blocks = self.k / QK32;
        &self.bytes[self.start..][..self.n.div_ceil(COLUMNS) * blocks * TILE_BLOCK_BYTES]
    }

    /// `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The bytes a multiplication reads.
    pub fn bytes(&self) -> usize {
        self.tiles().len()
    }

    /// Column `column` (a row of the `(n, k)` matrix) dequantized, as candle dequantizes a Q8_0
    /// row (`d · q`): what a tied embedding table looks up. `None` past the last.
    pub fn row(&self, column: usize) -> Option<Vec<f32>> {
        if column >= self.n {
            return None;
        }
        let blocks = self.k / QK32;
        let (tile, c) = (column / COLUMNS, column % COLUMNS);
        let tile = &self.tiles()[tile * blocks * TILE_BLOCK_BYTES..];
        let mut row = Vec::with_capacity(self.k);
        for b in 0..blocks {
            let (values, scales) = block_at(b, blocks);
            let d = half::f16::from_le_bytes([tile[scales + 2 * c], tile[scales + 2 * c + 1]]);
            let d = d.to_f32();
            for g in 0..QK32 / 4 {
                let four = &tile[values + (g * COLUMNS + c) * 4..][..4];
                row.extend(four.iter().map(|&q| d * f32::from((q ^ 0x80) as i8)));
            }
        }
        Some(row)
    }
}

/// `x` `(m, k)` row-major times each of `weights` `(n, k)` transposed, at `level`: `(m, n)`
/// row-major each. Several matrices share one quantization of `x` and one parallel region
/// (q/k/v, gate/up).
pub(crate) fn matmul(
    weights: &[&Q8_0Tiles],
    x: &[f32],
    m: usize,
    level: Level,
    threads: Threads,
) -> Result<Vec<Vec<f32>>> {
    let k = x.len() / m.max(1);
    if let Some(w) = weights.iter().find(|w| w.k != k || m * k != x.len()) {
        return Err(candle_core::Error::Msg(format!(
            "q8_0 tiles: weight {}x{}, {} inputs for {m} rows",
            w.n,
            w.k,
            x.len()
        ))
        .into());
    }
    let acts = Q8x32::quantize(x, m);
    // Each block's -128 · Σy: the offset of the stored values, taken off the integer dot.
    let offsets: Vec<i32> = acts
        .values
        .chunks_exact(QK32)
        .map(|block| -128 * block.iter().map(|&q| i32::from(q)).sum::<i32>())
        .collect();
    let mut outputs: Vec<Vec<f32>> = weights.iter().map(|w| vec![0f32; m * w.n]).collect();
    let targets: Vec<usize> = outputs
        .iter_mut()
        .map(|y| y.as_mut_ptr() as usize)
        .collect();
    // Tasks of whole tiles: about eight per thread even out the threads (see `pool`).
    let tiles: Vec<usize> = weights.iter().map(|w| w.n.div_ceil(COLUMNS)).collect();
    let per_task =
        (tiles.iter().sum::<usize>() / (8 * candle_core::utils::get_num_threads())).max(1);
    let tasks: Vec<(usize, usize)> = tiles
        .iter()
        .enumerate()
        .flat_map(|(i, &t)| (0..t).step_by(per_task).map(move |first| (i, first)))
        .collect();
    let blocks = k / QK32;
    let run = |task: usize| {
        let (i, first) = tasks[task];
        let w = weights[i];
        let last = (first + per_task).min(tiles[i]);
        let mut sums = [[0f32; COLUMNS]; ROWS];
        for tile in first..last {
            let columns = COLUMNS.min(w.n - tile * COLUMNS);
            let tile_bytes =
                &w.tiles()[tile * blocks * TILE_BLOCK_BYTES..][..blocks * TILE_BLOCK_BYTES];
            for r in (0..m).step_by(ROWS) {
                let rows = ROWS.min(m - r);
                let call = Call {
                    tile: tile_bytes,
                    values: &acts.values[r * k..(r + rows) * k],
                    scales: &acts.scales[r * blocks..(r + rows) * blocks],
                    offsets: &offsets[r * blocks..(r + rows) * blocks],
                    blocks,
                };
                call.run(level, rows, &mut sums);
                for (row, sums) in sums.iter().take(rows).enumerate() {
                    let at = (r + row) * w.n + tile * COLUMNS;
                    // SAFETY: row `r + row` < m and columns `at..at + columns` inside row of
                    // output `i`, which outlives the call; only this task writes this tile's
                    // columns.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut((targets[i] as *mut f32).add(at), columns)
                    };
                    out.copy_from_slice(&sums[..columns]);
                }
            }
        }
    };
    threads.run(tasks.len(), run);
    Ok(outputs)
}

/// One tile's blocks times up to [`ROWS`] rows of activations.
struct Call<'a> {
    tile: &'a [u8],
    values: &'a [i8],
    scales: &'a [f32],
    offsets: &'a [i32],
    blocks: usize,
}

impl Call<'_> {
    /// `sums[r][c]` for the call's rows (1 to [`ROWS`]).
    fn run(&self, level: Level, rows: usize, sums: &mut [[f32; COLUMNS]; ROWS]) {
        let blocks = self.blocks;
        assert!(
            (1..=ROWS).contains(&rows)
                && self.tile.len() == blocks * TILE_BLOCK_BYTES
                && self.values.len() == rows * blocks * QK32
                && self.scales.len() == rows * blocks
                && self.offsets.len() == rows * blocks
        );
        #[cfg(target_arch = "x86_64")]
        {
            macro_rules! rows {
                ($kernel:ident) => {
                    // SAFETY: `level` came from `Level::supported()` (its features are present);
                    // the assert above keeps every read inside the slices.
                    match rows {
                        1 => unsafe { x86::$kernel::<1>(self, sums) },
                        2 => unsafe { x86::$kernel::<2>(self, sums) },
                        3 => unsafe { x86::$kernel::<3>(self, sums) },
                        4 => unsafe { x86::$kernel::<4>(self, sums) },
                        5 => unsafe { x86::$kernel::<5>(self, sums) },
                        6 => unsafe { x86::$kernel::<6>(self, sums) },
                        7 => unsafe { x86::$kernel::<7>(self, sums) },
                        _ => unsafe { x86::$kernel::<8>(self, sums) },
                    }
                };
            }
            match level {
                Level::Avx512Vnni => rows!(avx512),
                Level::Avx2 => rows!(avx2),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (level, sums);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{COLUMNS, Call, QK32, ROWS, block_at};

    /// # Safety
    /// The CPU has the features below; `call` holds `R` rows of `call.blocks` blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn avx512<const R: usize>(call: &Call, sums: &mut [[f32; COLUMNS]; ROWS]) {
        let (tile, values) = (call.tile.as_ptr(), call.values.as_ptr());
        let (scales, offsets) = (call.scales.as_ptr(), call.offsets.as_ptr());
        let row_values = call.blocks * QK32;
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..call.blocks {
            // SAFETY (all reads): block `b` of the tile and of each of the `R` rows, inside the
            // slices as the caller promises.
            let (at, scales_at) = block_at(b, call.blocks);
            let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(tile.add(scales_at).cast()) });
            let mut dot = [_mm512_setzero_si512(); R];
            for (r, dot) in dot.iter_mut().enumerate() {
                // SAFETY: block `b` of row `r`, inside the slice as the caller promises.
                *dot = _mm512_set1_epi32(unsafe { *offsets.add(r * call.blocks + b) });
            }
            for g in 0..QK32 / 4 {
                let w = unsafe { _mm512_loadu_si512(tile.add(at + g * 64).cast()) };
                for (r, dot) in dot.iter_mut().enumerate() {
                    let four = unsafe {
                        values
                            .add(r * row_values + b * QK32 + 4 * g)
                            .cast::<i32>()
                            .read_unaligned()
                    };
                    *dot = _mm512_dpbusd_epi32(*dot, w, _mm512_set1_epi32(four));
                }
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let dy = unsafe { *scales.add(r * call.blocks + b) };
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(dy));
                *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot[r]), *acc);
            }
        }
        for (sums, acc) in sums.iter_mut().zip(acc) {
            // SAFETY: 16 f32 into a 16-f32 array.
            unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), acc) };
        }
    }

    /// The same arithmetic in two halves of eight columns: the integer dot of signed weights
    /// (`w ^ 0x80`) by `maddubs` on `|w|` and the row's values given `w`'s sign, exact as above.
    ///
    /// # Safety
    /// As [`avx512`], for AVX2 with FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn avx2<const R: usize>(call: &Call, sums: &mut [[f32; COLUMNS]; ROWS]) {
        let (tile, values) = (call.tile.as_ptr(), call.values.as_ptr());
        let row_values = call.blocks * QK32;
        let (shift, ones) = (_mm256_set1_epi8(i8::MIN), _mm256_set1_epi16(1));
        for half in 0..2 {
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..call.blocks {
                // SAFETY (all reads): as in `avx512`.
                let (at, scales_at) = block_at(b, call.blocks);
                let dw = _mm256_cvtph_ps(unsafe {
                    _mm_loadu_si128(tile.add(scales_at + 16 * half).cast())
                });
                let mut dot = [_mm256_setzero_si256(); R];
                for g in 0..QK32 / 4 {
                    let w = unsafe { _mm256_loadu_si256(tile.add(at + g * 64 + 32 * half).cast()) };
                    let w = _mm256_xor_si256(w, shift);
                    let magnitude = _mm256_abs_epi8(w);
                    for (r, dot) in dot.iter_mut().enumerate() {
                        let four = unsafe {
                            values
                                .add(r * row_values + b * QK32 + 4 * g)
                                .cast::<i32>()
                                .read_unaligned()
                        };
                        let y = _mm256_sign_epi8(_mm256_set1_epi32(four), w);
                        let pairs = _mm256_maddubs_epi16(magnitude, y);
                        *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
                    }
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let d = _mm256_mul_ps(dw, _mm256_set1_ps(call.scales[r * call.blocks + b]));
                    *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot[r]), *acc);
                }
            }
            for (sums, acc) in sums.iter_mut().zip(acc) {
                // SAFETY: 8 f32 into the half of a 16-f32 array.
                unsafe { _mm256_storeu_ps(sums.as_mut_ptr().add(8 * half), acc) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{inputs, weights};
    use super::*;

    /// Every level gives the same bits, a row the same bits alone and among others, and the
    /// result is dequantize + f32 within the rounding of the activations to 8 bits; a tied
    /// table's rows are candle's dequantized rows.
    #[test]
    fn every_level_agrees_bit_for_bit_and_with_f32_within_the_activation_rounding() {
        let levels = Level::supported();
        for (n, k) in [(40, 576), (37, 640), (64, 1536), (19, 8960)] {
            let (q, dense) = weights(GgmlDType::Q8_0, n, k, n as u64);
            let tiles = Q8_0Tiles::from_qtensor(&q).unwrap().unwrap();
            assert_eq!(tiles.bytes(), n.next_multiple_of(16) * k / 32 * 34);
            for (column, expected) in dense.chunks_exact(k).enumerate() {
                assert_eq!(tiles.row(column).unwrap(), expected, "{n}x{k} row {column}");
            }
            assert!(tiles.row(n).is_none());
            let Some(&best) = levels.first() else {
                continue;
            };
            for m in [1, 2, 3, 8, 17, 32] {
                let x = inputs(m, k);
                let ours = matmul(&[&tiles, &tiles], &x, m, best, Threads::Wick).unwrap();
                assert_eq!(ours[0], ours[1]);
                for &level in &levels[1..] {
                    let other = matmul(&[&tiles], &x, m, level, Threads::Wick).unwrap();
                    assert_eq!(other[0], ours[0], "{level:?} {m}x{n}x{k}");
                }
                for r in 0..m {
                    let alone = matmul(&[&tiles], &x[r * k..][..k], 1, best, Threads::Wick);
                    assert_eq!(alone.unwrap()[0], ours[0][r * n..][..n], "row {r} of {m}");
                    let row = &x[r * k..][..k];
                    // A value is off by half its block's step and the step's rounding to f16.
                    let error: Vec<f32> = row
                        .chunks_exact(QK32)
                        .flat_map(|block| {
                            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                            [amax / 127.0 * (0.5 + 127.0 / 2048.0) * 1.01; QK32]
                        })
                        .collect();
                    for (c, w) in dense.chunks_exact(k).enumerate() {
                        let exact: f32 = w.iter().zip(row).map(|(a, b)| a * b).sum();
                        let bound: f32 = w
                            .iter()
                            .zip(row)
                            .zip(&error)
                            .map(|((w, x), e)| w.abs() * (e + 1e-5 * x.abs()))
                            .sum();
                        let got = ours[0][r * n + c];
                        assert!(
                            (got - exact).abs() <= bound,
                            "{m}x{n}x{k} [{r},{c}]: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }
}
