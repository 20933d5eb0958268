//! Q4_0, Q4_1, Q5_0 and Q8_0 weights (blocks of 32 values), read as the file stores them, times
//! activations quantized in blocks of 32 ([`Q8x32`]): up to four columns of weights (output
//! features) against up to four activation rows, each weight block unpacked once for the rows
//! and each activation block loaded once for the columns.
//!
//! A block's weights become 32 bytes: unsigned, 0..15 (Q4_0, Q4_1) or 0..31 (Q5_0), or signed
//! (Q8_0, multiplied as |w| times the activation given w's sign, as ggml does). Their dot product
//! with the activations is exact in eight i32 lanes (lane `l`: values `4l..4l + 4`), the same
//! integers from AVX-512 VNNI's `vpdpbusd` as from AVX2's `vpmaddubsw` + `vpmaddwd`. Each lane is
//! scaled by the two blocks' scales and accumulated in f32 with one fused multiply-add per block;
//! a block's offset (Q4_1's `m`, Q4_0's `−8d`, Q5_0's `−16d`) times the activations' scaled sum
//! is accumulated apart, block after block; a column ends with the lanes summed in one fixed
//! order. So every level gives the same bits, and a row the same bits whatever rows share the
//! call.
//!
//! Block layouts (ggml's), 32 weights each:
//! - Q4_0, 18 bytes: `d` (f16), 16 bytes of 4-bit values (value `j` in the low nibble of byte
//!   `j`, value `j + 16` in the high one). A weight is `d·(q − 8)`.
//! - Q4_1, 20 bytes: `d` and `m` (f16), then 16 bytes as Q4_0's. A weight is `d·q + m`.
//! - Q5_0, 22 bytes: `d` (f16), 4 bytes of fifth bits (bit `j` for value `j`), then 16 bytes as
//!   Q4_0's. A weight is `d·(q − 16)`.
//! - Q8_0, 34 bytes: `d` (f16), 32 signed bytes. A weight is `d·q`.

use candle_core::quantized::GgmlDType;

use super::activations::Q8x32;
use super::k_quants::f16_at;

/// The 32-value types, as the kernels' `KIND` parameter.
pub(crate) const Q4_0: u8 = 0;
pub(crate) const Q4_1: u8 = 1;
pub(crate) const Q5_0: u8 = 2;
pub(crate) const Q8_0: u8 = 3;

/// The kernels' `KIND` for `dtype`, and its block's bytes.
pub(crate) fn kind(dtype: GgmlDType) -> Option<(u8, usize)> {
    match dtype {
        GgmlDType::Q4_0 => Some((Q4_0, block_bytes(Q4_0))),
        GgmlDType::Q4_1 => Some((Q4_1, block_bytes(Q4_1))),
        GgmlDType::Q5_0 => Some((Q5_0, block_bytes(Q5_0))),
        GgmlDType::Q8_0 => Some((Q8_0, block_bytes(Q8_0))),
        _ => None,
    }
}

const fn block_bytes(kind: u8) -> usize {
    match kind {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        _ => 34,
    }
}

/// A block's scale `d` and offset factor (what multiplies the activations' scaled sum).
///
/// # Safety
/// `block` points at a whole block of `KIND`.
#[inline(always)]
unsafe fn header<const KIND: u8>(block: *const u8) -> (f32, f32) {
    // SAFETY: the first two (Q4_1: four) bytes of the block, the caller's promise.
    let d = unsafe { f16_at(block) };
    let offset = match KIND {
        Q4_0 => -8.0 * d,
        Q4_1 => unsafe { f16_at(block.add(2)) },
        Q5_0 => -16.0 * d,
        _ => 0.0,
    };
    (d, offset)
}

/// The sum of eight f32 lanes, in the order the SIMD code adds them.
#[cfg(test)]
use super::k_quants::lanes_sum;

/// Plain Rust, lane by lane, for the tests: the same integers and float steps as the SIMD.
#[cfg(test)]
pub(crate) fn reference(dtype: GgmlDType, column: &[u8], acts: &Q8x32, r: usize) -> f32 {
    let Some((kind, bytes)) = kind(dtype) else {
        unreachable!("{dtype:?}")
    };
    let (mut values, mut offsets) = ([0f32; 8], 0f32);
    for b in 0..acts.blocks {
        let block = &column[b * bytes..][..bytes];
        let (da, scaled_sum, y) = acts.block(r, b);
        // SAFETY: a whole block.
        let (d, offset) = unsafe {
            match kind {
                Q4_0 => header::<Q4_0>(block.as_ptr()),
                Q4_1 => header::<Q4_1>(block.as_ptr()),
                Q5_0 => header::<Q5_0>(block.as_ptr()),
                _ => header::<Q8_0>(block.as_ptr()),
            }
        };
        let weight = |j: usize| -> i32 {
            let nibbles = &block[bytes - 16..];
            let nibble = i32::from(if j < 16 {
                nibbles[j] & 0xF
            } else {
                nibbles[j - 16] >> 4
            });
            match kind {
                Q4_0 | Q4_1 => nibble,
                Q5_0 => {
                    let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                    nibble | (((high >> j) & 1) as i32) << 4
                }
                _ => i32::from(block[2 + j] as i8),
            }
        };
        let mut dots = [0i32; 8];
        for (j, &y) in y.iter().enumerate() {
            dots[j / 4] += weight(j) * i32::from(y);
        }
        for (value, dot) in values.iter_mut().zip(dots) {
            *value = (dot as f32).mul_add(d * da, *value);
        }
        offsets = offset.mul_add(scaled_sum, offsets);
    }
    match kind {
        Q8_0 => lanes_sum(values),
        _ => lanes_sum(values) + offsets,
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::*;
    use crate::engine::model::kernels::k_quants::x86::hsum_ps;

    /// How far ahead of the block in use the kernels ask for weights.
    const PREFETCH: usize = 1024;

    /// A block's 32 weights as bytes in value order: unsigned for Q4_0, Q4_1 and Q5_0, signed for
    /// Q8_0.
    ///
    /// # Safety
    /// `block` points at a whole block of `KIND`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn weights<const KIND: u8>(block: *const u8) -> __m256i {
        if KIND == Q8_0 {
            // SAFETY: bytes 2..34 of the block.
            return unsafe { _mm256_loadu_si256(block.add(2).cast()) };
        }
        let nibbles = block_bytes(KIND) - 16;
        // SAFETY: the block's last 16 bytes.
        let packed = unsafe { _mm_loadu_si128(block.add(nibbles).cast()) };
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
        let values = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
        if KIND != Q5_0 {
            return values;
        }
        // Bit j of the fifth bits, as 16 or 0 in byte j (ggml's `bytes_from_bits_32`).
        // SAFETY: bytes 2..6 of the block.
        let bits = unsafe { block.add(2).cast::<u32>().read_unaligned() };
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            ),
        );
        let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1));
        _mm256_or_si256(values, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
    }

    macro_rules! kernel {
        ($(#[$doc:meta])* $name:ident, $features:literal, $dot:ident) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn $name<const KIND: u8, const R: usize, const C: usize>(
                columns: *const u8,
                out: &mut [[f32; 4]],
                acts: &Q8x32,
                first: usize,
            ) {
                let stride = acts.blocks * block_bytes(KIND);
                // Each row's blocks, checked once here rather than at every block.
                let rows: [(&[f32], &[i8]); R] = std::array::from_fn(|r| acts.row(first + r));
                let group = acts.group(first);
                let whole = out.len() / C * C;
                for (g, sums) in out[..whole].chunks_exact_mut(C).enumerate() {
                    // SAFETY: columns `g·C..` are inside `columns` (the caller's promise).
                    let at = unsafe { columns.add(g * C * stride) };
                    // SAFETY: the caller's promise, for these columns.
                    unsafe { tile::<KIND, R, C>(at, stride, sums, &rows, group) };
                }
                for (i, sums) in out[whole..].iter_mut().enumerate() {
                    // SAFETY: as above, for the columns left over.
                    let at = unsafe { columns.add((whole + i) * stride) };
                    let sums = std::slice::from_mut(sums);
                    unsafe { tile::<KIND, R, 1>(at, stride, sums, &rows, group) };
                }

                /// `C` columns, `stride` bytes apart from `columns`, times the `R` rows: each
                /// block of activations is loaded once for the `C` columns, each weight block
                /// unpacked once for the `R` rows. A column's arithmetic is the same whatever
                /// `C` is.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn tile<const KIND: u8, const R: usize, const C: usize>(
                    columns: *const u8,
                    stride: usize,
                    out: &mut [[f32; 4]],
                    rows: &[(&[f32], &[i8]); R],
                    group: &[[f32; 4]],
                ) {
                    let bytes = block_bytes(KIND);
                    let mut values = [[_mm256_setzero_ps(); R]; C];
                    // Lane r: row r's offsets, one fused multiply-add per block for all rows.
                    let mut offsets = [_mm_setzero_ps(); C];
                    for (b, group_sums) in group.iter().enumerate() {
                        let mut weights_of = [_mm256_setzero_si256(); C];
                        let mut signs = [_mm256_setzero_si256(); C];
                        let mut scales = [_mm256_setzero_ps(); C];
                        for c in 0..C {
                            // SAFETY: block `b` of column `c` is inside `columns` (the caller's
                            // promise).
                            let block = unsafe { columns.add(c * stride + b * bytes) };
                            // Memory streams better asked for ahead of need (a prefetch past
                            // the end is harmless).
                            _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH).cast());
                            // SAFETY: a whole block.
                            let w = unsafe { weights::<KIND>(block) };
                            let (d, offset) = unsafe { header::<KIND>(block) };
                            scales[c] = _mm256_set1_ps(d);
                            if KIND != Q8_0 {
                                // SAFETY: four f32s.
                                let sums = unsafe { _mm_loadu_ps(group_sums.as_ptr()) };
                                offsets[c] = _mm_fmadd_ps(_mm_set1_ps(offset), sums, offsets[c]);
                            }
                            // Q8_0 multiplies |w| by the activations given w's sign.
                            (weights_of[c], signs[c]) = match KIND {
                                Q8_0 => (_mm256_sign_epi8(w, w), w),
                                _ => (w, w),
                            };
                        }
                        for (r, &(row_scales, ys)) in rows.iter().enumerate() {
                            // SAFETY: `b` < the row's blocks, the length of `row_scales`, and
                            // `ys` holds 32 values per block.
                            let (da, y) = unsafe {
                                (
                                    _mm256_set1_ps(*row_scales.get_unchecked(b)),
                                    _mm256_loadu_si256(ys.as_ptr().add(b * 32).cast()),
                                )
                            };
                            for c in 0..C {
                                let y = match KIND {
                                    Q8_0 => _mm256_sign_epi8(y, signs[c]),
                                    _ => y,
                                };
                                let dot = _mm256_cvtepi32_ps($dot(weights_of[c], y));
                                let scale = _mm256_mul_ps(scales[c], da);
                                values[c][r] = _mm256_fmadd_ps(dot, scale, values[c][r]);
                            }
                        }
                    }
                    for (c, column_sums) in out.iter_mut().enumerate() {
                        let mut offset = [0f32; 4];
                        // SAFETY: four f32s.
                        unsafe { _mm_storeu_ps(offset.as_mut_ptr(), offsets[c]) };
                        for r in 0..R {
                            // Q8_0 has no offsets: its sum is the lanes' alone, as in candle's
                            // kernel and `q8_0.rs` (adding 0 would turn a -0 into +0).
                            column_sums[r] = match KIND {
                                Q8_0 => hsum_ps(values[c][r]),
                                _ => hsum_ps(values[c][r]) + offset[r],
                            };
                        }
                    }
                }
            }
        };
    }

    /// Eight lanes of four exact u8 × i8 products each, with AVX-512 VNNI.
    #[inline]
    #[target_feature(enable = "avx512vl,avx512vnni")]
    fn dot_vnni(w: __m256i, y: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, y)
    }

    /// The same lanes with AVX2: pairs of products (at most 2·127·31 or 2·127·127, no
    /// saturation), then pairs of pairs.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dot_avx2(w: __m256i, y: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), _mm256_set1_epi16(1))
    }

    kernel!(
        /// Rows `first..first + R` of `acts` times `out.len()` columns of `KIND` blocks,
        /// `acts.blocks` each, one after the other from `columns`: `out[c][r]` (`R` of the 4).
        ///
        /// # Safety
        /// The CPU has AVX-512 F/BW/VL and VNNI; `columns` points at `out.len()` columns of whole
        /// blocks; `first + R <= acts.rows`.
        avx512,
        "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma",
        dot_vnni
    );

    kernel!(
        /// As [`avx512`] with AVX2.
        ///
        /// # Safety
        /// As [`avx512`], with AVX2 and FMA for the CPU features.
        avx2,
        "avx2,fma",
        dot_avx2
    );
}
