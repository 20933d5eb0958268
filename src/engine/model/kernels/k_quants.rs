//! Q4_K and Q6_K weights, read as the file stores them, times Q8_K activations: one column of
//! weights (an output feature) against up to four activation rows, each weight block unpacked
//! once for all of them.
//!
//! Each block's dot product is exact in eight i32 lanes (lane `l` holds bytes `4l..4l + 4` of
//! every 32 values), the same integers at every SIMD level (AVX-512 folds its 16 lanes to 8);
//! each lane is scaled and accumulated in f32 with one fused multiply-add per block, and the
//! lanes are summed in one fixed order at the end of a column. So every level gives the same
//! bits, and a row the same bits whatever rows share the call.
//!
//! Block layouts (ggml's `block_q4_K`, `block_q6_K`), 256 weights each:
//! - Q4_K, 144 bytes: `d` and `dmin` (f16), 12 bytes of 6-bit scales and mins for 8 groups of
//!   32, 128 bytes of 4-bit values (each 32 bytes: group 2i in the low nibbles, 2i+1 in the
//!   high). A weight is `d·scale·q − dmin·min`.
//! - Q6_K, 210 bytes: 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 signed 8-bit scales
//!   (one per 16 weights), `d` (f16). A weight is `d·scale·(q − 32)`.

use half::f16;

#[cfg(test)]
use super::QK_K;
use super::activations::Q8K;

pub(crate) const Q4K_BYTES: usize = 144;
pub(crate) const Q6K_BYTES: usize = 210;
/// How far ahead of the block in use the kernels ask for weights.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 1024;

/// The f16 at `p`.
///
/// # Safety
/// `p` points at two readable bytes.
#[inline(always)]
pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller's promise; f16 has no invalid bit patterns.
    f16::from_bits(unsafe { p.cast::<u16>().read_unaligned() }).to_f32()
}

/// A Q4_K block's `d`, `dmin`, 8 scales and 8 mins.
///
/// # Safety
/// `block` points at a whole Q4_K block.
#[inline(always)]
unsafe fn q4k_header(block: *const u8) -> (f32, f32, [u8; 8], [u8; 8]) {
    // SAFETY: the first 16 bytes of the block (the caller's promise); u8 arrays have alignment 1.
    let (d, dmin, packed) = unsafe {
        (
            f16_at(block),
            f16_at(block.add(2)),
            &*block.add(4).cast::<[u8; 12]>(),
        )
    };
    let (scales, mins) = q4k_scales_mins(packed);
    (d, dmin, scales, mins)
}

/// A Q4_K block's 8 scales and 8 mins from its 12 packed bytes (ggml's `utmp` shuffle).
#[inline(always)]
fn q4k_scales_mins(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word =
        |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    let scales = [a & LOW6, (c & LOW4) | (((a >> 6) & LOW2) << 4)];
    let mins = [b & LOW6, ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4)];
    let bytes = |w: [u32; 2]| {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&w[0].to_le_bytes());
        out[4..].copy_from_slice(&w[1].to_le_bytes());
        out
    };
    (bytes(scales), bytes(mins))
}

/// The sum of eight f32 lanes, in the order the SIMD code adds them.
#[cfg(test)]
pub(super) fn lanes_sum(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Plain Rust, lane by lane, for the tests: the same integers and float steps as the SIMD.
#[cfg(test)]
pub(crate) fn reference(
    dtype: candle_core::quantized::GgmlDType,
    column: &[u8],
    acts: &Q8K,
    r: usize,
) -> f32 {
    use candle_core::quantized::GgmlDType;
    let (mut values, mut offsets) = ([0f32; 8], [0f32; 8]);
    for b in 0..acts.blocks {
        let (dy, y, ysums) = acts.block(r, b);
        let y = |i: usize| i32::from(y[i]);
        let ysum = |i: usize| i32::from(ysums[i]);
        // Lane l: bytes 4l..4l + 4 of each 32 values.
        let mut dots = [0i32; 8];
        match dtype {
            GgmlDType::Q4K => {
                let block = &column[b * Q4K_BYTES..][..Q4K_BYTES];
                // SAFETY: a whole block.
                let (d, dmin, scales, mins) = unsafe { q4k_header(block.as_ptr()) };
                for c in 0..4 {
                    for p in 0..32 {
                        let byte = block[16 + 32 * c + p];
                        let low = i32::from(scales[2 * c]) * i32::from(byte & 0xF) * y(64 * c + p);
                        let high = i32::from(scales[2 * c + 1])
                            * i32::from(byte >> 4)
                            * y(64 * c + 32 + p);
                        dots[p / 4] += low + high;
                    }
                }
                for l in 0..8 {
                    let min = i32::from(mins[l]) * (ysum(2 * l) + ysum(2 * l + 1));
                    values[l] = (dots[l] as f32).mul_add(dy * d, values[l]);
                    offsets[l] = (min as f32).mul_add(dy * dmin, offsets[l]);
                }
            }
            GgmlDType::Q6K => {
                let block = &column[b * Q6K_BYTES..][..Q6K_BYTES];
                let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
                let scale = |i: usize| i32::from(scales[i] as i8);
                // SAFETY: two bytes.
                let d = unsafe { f16_at(block[208..].as_ptr()) };
                for v in 0..QK_K {
                    let (half, t) = (v / 128, v % 128);
                    let low = ql[64 * half + t % 64];
                    let low = if t < 64 { low & 0xF } else { low >> 4 };
                    let high = (qh[32 * half + t % 32] >> (2 * (t / 32))) & 3;
                    dots[(v % 32) / 4] += scale(v / 16) * i32::from(low | (high << 4)) * y(v);
                }
                for l in 0..8 {
                    let offset = scale(2 * l) * ysum(2 * l) + scale(2 * l + 1) * ysum(2 * l + 1);
                    values[l] = ((dots[l] - 32 * offset) as f32).mul_add(dy * d, values[l]);
                }
            }
            other => unreachable!("{other:?}"),
        }
    }
    lanes_sum(values) - lanes_sum(offsets)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// Rows `first..first + R` of `acts` times `out.len()` Q4_K columns of `acts.blocks` blocks
    /// each, one after the other from `columns`: `out[c][r]` (`R` of the 4).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL and VNNI; `columns` points at `out.len()` columns of whole
    /// Q4_K blocks; `first + R <= acts.rows`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    pub(crate) unsafe fn q4k_avx512<const R: usize>(
        columns: *const u8,
        out: &mut [[f32; 4]],
        acts: &Q8K,
        first: usize,
    ) {
        let nibble = _mm512_set1_epi8(0x0F);
        // The upper 32 bytes of a broadcast 32-byte chunk shift down to their high nibbles.
        let shift = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(4));
        // Group 2c's scale in the lower 16 lanes, 2c + 1's in the upper.
        let groups: [__m512i; 4] = std::array::from_fn(|c| {
            let (low, high) = (2 * c as i16, 2 * c as i16 + 1);
            _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_set1_epi16(low)),
                _mm256_set1_epi16(high),
            )
        });
        for (i, column_sums) in out.iter_mut().enumerate() {
            // SAFETY: column `i` is inside `columns` (the caller's promise).
            let column = unsafe { columns.add(i * acts.blocks * Q4K_BYTES) };
            let mut values = [_mm256_setzero_ps(); R];
            let mut offsets = [_mm256_setzero_ps(); R];
            for b in 0..acts.blocks {
                // SAFETY: block `b` of the column is inside it (the caller's promise).
                let block = unsafe { column.add(b * Q4K_BYTES) };
                // Memory streams better asked for ahead of need (a prefetch past the end is harmless).
                _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH).cast());
                let (d, dmin, scales, mins) = unsafe { q4k_header(block) };
                let scales = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(eight(scales)));
                let mins = mins_twice(mins);
                let mut weights = [_mm512_setzero_si512(); 4];
                let mut group_scales = [_mm512_setzero_si512(); 4];
                for c in 0..4 {
                    let chunk = unsafe { _mm256_loadu_si256(block.add(16 + 32 * c).cast()) };
                    let both = _mm512_srlv_epi16(_mm512_broadcast_i64x4(chunk), shift);
                    weights[c] = _mm512_and_si512(both, nibble);
                    group_scales[c] = _mm512_permutexvar_epi16(groups[c], scales);
                }
                for (r, (value, offset)) in values.iter_mut().zip(&mut offsets).enumerate() {
                    let (dy, y, ysums) = acts.block(first + r, b);
                    let mut dot = _mm512_setzero_si512();
                    for c in 0..4 {
                        // SAFETY: a Q8_K block has 256 values.
                        let y = unsafe { _mm512_loadu_si512(y.as_ptr().add(64 * c).cast()) };
                        let pairs = _mm512_maddubs_epi16(weights[c], y);
                        dot = _mm512_dpwssd_epi32(dot, pairs, group_scales[c]);
                    }
                    let ysums = unsafe { _mm256_loadu_si256(ysums.as_ptr().cast()) };
                    let min = _mm256_madd_epi16(mins, ysums);
                    *value = _mm256_fmadd_ps(fold(dot), _mm256_set1_ps(dy * d), *value);
                    let min = _mm256_cvtepi32_ps(min);
                    *offset = _mm256_fmadd_ps(min, _mm256_set1_ps(dy * dmin), *offset);
                }
            }
            for ((sum, value), offset) in column_sums.iter_mut().zip(values).zip(offsets) {
                *sum = hsum_ps(value) - hsum_ps(offset);
            }
        }
    }

    /// As [`q4k_avx512`] with 256-bit AVX2.
    ///
    /// # Safety
    /// As [`q4k_avx512`], with AVX2 for the CPU features.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn q4k_avx2<const R: usize>(
        columns: *const u8,
        out: &mut [[f32; 4]],
        acts: &Q8K,
        first: usize,
    ) {
        let nibble = _mm256_set1_epi8(0x0F);
        for (i, column_sums) in out.iter_mut().enumerate() {
            // SAFETY: column `i` is inside `columns` (the caller's promise).
            let column = unsafe { columns.add(i * acts.blocks * Q4K_BYTES) };
            let mut values = [_mm256_setzero_ps(); R];
            let mut offsets = [_mm256_setzero_ps(); R];
            for b in 0..acts.blocks {
                // SAFETY: block `b` of the column is inside it (the caller's promise).
                let block = unsafe { column.add(b * Q4K_BYTES) };
                // Memory streams better asked for ahead of need (a prefetch past the end is harmless).
                _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH).cast());
                let (d, dmin, scales, mins) = unsafe { q4k_header(block) };
                let mins = mins_twice(mins);
                let mut dots = [_mm256_setzero_si256(); R];
                for c in 0..4 {
                    let chunk = unsafe { _mm256_loadu_si256(block.add(16 + 32 * c).cast()) };
                    let low = _mm256_and_si256(chunk, nibble);
                    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(chunk), nibble);
                    let low_scale = _mm256_set1_epi16(i16::from(scales[2 * c]));
                    let high_scale = _mm256_set1_epi16(i16::from(scales[2 * c + 1]));
                    for (r, dot) in dots.iter_mut().enumerate() {
                        let y = acts.block(first + r, b).1.as_ptr();
                        // SAFETY: a Q8_K block has 256 values.
                        let (y_low, y_high) = unsafe {
                            (
                                _mm256_loadu_si256(y.add(64 * c).cast()),
                                _mm256_loadu_si256(y.add(64 * c + 32).cast()),
                            )
                        };
                        let low = _mm256_madd_epi16(_mm256_maddubs_epi16(low, y_low), low_scale);
                        let high =
                            _mm256_madd_epi16(_mm256_maddubs_epi16(high, y_high), high_scale);
                        *dot = _mm256_add_epi32(*dot, _mm256_add_epi32(low, high));
                    }
                }
                for (r, dot) in dots.into_iter().enumerate() {
                    let (dy, _, ysums) = acts.block(first + r, b);
                    let ysums = unsafe { _mm256_loadu_si256(ysums.as_ptr().cast()) };
                    let dot = _mm256_cvtepi32_ps(dot);
                    values[r] = _mm256_fmadd_ps(dot, _mm256_set1_ps(dy * d), values[r]);
                    let min = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins, ysums));
                    offsets[r] = _mm256_fmadd_ps(min, _mm256_set1_ps(dy * dmin), offsets[r]);
                }
            }
            for ((sum, value), offset) in column_sums.iter_mut().zip(values).zip(offsets) {
                *sum = hsum_ps(value) - hsum_ps(offset);
            }
        }
    }

    /// Rows `first..first + R` of `acts` times `out.len()` Q6_K columns.
    ///
    /// # Safety
    /// As [`q4k_avx512`], for Q6_K blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    pub(crate) unsafe fn q6k_avx512<const R: usize>(
        columns: *const u8,
        out: &mut [[f32; 4]],
        acts: &Q8K,
        first: usize,
    ) {
        let nibble = _mm512_set1_epi8(0x0F);
        let two_bits = _mm512_set1_epi8(3);
        let halves = |low: i16, high: i16| {
            _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_set1_epi16(low)),
                _mm256_set1_epi16(high),
            )
        };
        // The high bits of values 0..32 and 32..64 of a half, then of 64..96 and 96..128.
        let (first_shift, second_shift) = (halves(0, 2), halves(4, 6));
        // 64 values t·64.. take scales 4t..4t + 4, one per 8 lanes of 16 bits.
        let groups: [__m512i; 4] = std::array::from_fn(|t| {
            let lanes: [i16; 32] = std::array::from_fn(|l| (4 * t + l / 8) as i16);
            // SAFETY: 32 lanes of 16 bits are 64 bytes.
            unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) }
        });
        for (i, column_sums) in out.iter_mut().enumerate() {
            // SAFETY: column `i` is inside `columns` (the caller's promise).
            let column = unsafe { columns.add(i * acts.blocks * Q6K_BYTES) };
            let mut values = [_mm256_setzero_ps(); R];
            for b in 0..acts.blocks {
                // SAFETY: block `b` of the column is inside it (the caller's promise).
                let block = unsafe { column.add(b * Q6K_BYTES) };
                // Memory streams better asked for ahead of need (a prefetch past the end is harmless).
                _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH).cast());
                let d = unsafe { f16_at(block.add(208)) };
                let scales =
                    unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(block.add(192).cast())) };
                let wide_scales = _mm512_castsi256_si512(scales);
                let mut weights = [_mm512_setzero_si512(); 4];
                for half in 0..2 {
                    let (low, high) = unsafe {
                        (
                            _mm512_loadu_si512(block.add(64 * half).cast()),
                            _mm512_broadcast_i64x4(_mm256_loadu_si256(
                                block.add(128 + 32 * half).cast(),
                            )),
                        )
                    };
                    let high_bits = |shift| {
                        _mm512_slli_epi16::<4>(_mm512_and_si512(
                            _mm512_srlv_epi16(high, shift),
                            two_bits,
                        ))
                    };
                    weights[2 * half] =
                        _mm512_or_si512(_mm512_and_si512(low, nibble), high_bits(first_shift));
                    weights[2 * half + 1] = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(low), nibble),
                        high_bits(second_shift),
                    );
                }
                let group_scales: [__m512i; 4] =
                    std::array::from_fn(|t| _mm512_permutexvar_epi16(groups[t], wide_scales));
                for (r, value) in values.iter_mut().enumerate() {
                    let (dy, y, ysums) = acts.block(first + r, b);
                    let mut dot = _mm512_setzero_si512();
                    for t in 0..4 {
                        // SAFETY: a Q8_K block has 256 values.
                        let y = unsafe { _mm512_loadu_si512(y.as_ptr().add(64 * t).cast()) };
                        dot = _mm512_dpwssd_epi32(
                            dot,
                            _mm512_maddubs_epi16(weights[t], y),
                            group_scales[t],
                        );
                    }
                    let ysums = unsafe { _mm256_loadu_si256(ysums.as_ptr().cast()) };
                    let offset = _mm256_madd_epi16(scales, ysums);
                    let dot = _mm256_sub_epi32(fold_i32(dot), _mm256_slli_epi32::<5>(offset));
                    let dot = _mm256_cvtepi32_ps(dot);
                    *value = _mm256_fmadd_ps(dot, _mm256_set1_ps(dy * d), *value);
                }
            }
            for (sum, value) in column_sums.iter_mut().zip(values) {
                *sum = hsum_ps(value);
            }
        }
    }

    /// As [`q6k_avx512`] with 256-bit AVX2.
    ///
    /// # Safety
    /// As [`q6k_avx512`], with AVX2 for the CPU features.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn q6k_avx2<const R: usize>(
        columns: *const u8,
        out: &mut [[f32; 4]],
        acts: &Q8K,
        first: usize,
    ) {
        let nibble = _mm256_set1_epi8(0x0F);
        let two_bits = _mm256_set1_epi8(3);
        // Bytes 2u (8 times) then 2u + 1: the scales of values 32u..32u + 32.
        let pairs: [__m128i; 8] = std::array::from_fn(|u| {
            let bytes: [i8; 16] = std::array::from_fn(|l| (2 * u + l / 8) as i8);
            // SAFETY: 16 bytes.
            unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
        });
        for (i, column_sums) in out.iter_mut().enumerate() {
            // SAFETY: column `i` is inside `columns` (the caller's promise).
            let column = unsafe { columns.add(i * acts.blocks * Q6K_BYTES) };
            let mut values = [_mm256_setzero_ps(); R];
            for b in 0..acts.blocks {
                // SAFETY: block `b` of the column is inside it (the caller's promise).
                let block = unsafe { column.add(b * Q6K_BYTES) };
                // Memory streams better asked for ahead of need (a prefetch past the end is harmless).
                _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH).cast());
                let d = unsafe { f16_at(block.add(208)) };
                let packed_scales = unsafe { _mm_loadu_si128(block.add(192).cast()) };
                let mut dots = [_mm256_setzero_si256(); R];
                for half in 0..2 {
                    let (first_low, second_low, high) = unsafe {
                        (
                            _mm256_loadu_si256(block.add(64 * half).cast()),
                            _mm256_loadu_si256(block.add(64 * half + 32).cast()),
                            _mm256_loadu_si256(block.add(128 + 32 * half).cast()),
                        )
                    };
                    let high_bits = |shifted: __m256i| {
                        _mm256_slli_epi16::<4>(_mm256_and_si256(shifted, two_bits))
                    };
                    let weights = [
                        _mm256_or_si256(_mm256_and_si256(first_low, nibble), high_bits(high)),
                        _mm256_or_si256(
                            _mm256_and_si256(second_low, nibble),
                            high_bits(_mm256_srli_epi16::<2>(high)),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(first_low), nibble),
                            high_bits(_mm256_srli_epi16::<4>(high)),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(second_low), nibble),
                            high_bits(_mm256_srli_epi16::<6>(high)),
                        ),
                    ];
                    for (g, weights) in weights.into_iter().enumerate() {
                        let u = 4 * half + g;
                        let scales =
                            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(packed_scales, pairs[u]));
                        for (r, dot) in dots.iter_mut().enumerate() {
                            let y = acts.block(first + r, b).1.as_ptr();
                            // SAFETY: a Q8_K block has 256 values.
                            let y = unsafe { _mm256_loadu_si256(y.add(32 * u).cast()) };
                            let products =
                                _mm256_madd_epi16(_mm256_maddubs_epi16(weights, y), scales);
                            *dot = _mm256_add_epi32(*dot, products);
                        }
                    }
                }
                let scales = _mm256_cvtepi8_epi16(packed_scales);
                for (r, dot) in dots.into_iter().enumerate() {
                    let (dy, _, ysums) = acts.block(first + r, b);
                    let ysums = unsafe { _mm256_loadu_si256(ysums.as_ptr().cast()) };
                    let offset = _mm256_madd_epi16(scales, ysums);
                    let dot = _mm256_sub_epi32(dot, _mm256_slli_epi32::<5>(offset));
                    let dot = _mm256_cvtepi32_ps(dot);
                    values[r] = _mm256_fmadd_ps(dot, _mm256_set1_ps(dy * d), values[r]);
                }
            }
            for (sum, value) in column_sums.iter_mut().zip(values) {
                *sum = hsum_ps(value);
            }
        }
    }

    /// Eight bytes in the low half of a vector.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn eight(bytes: [u8; 8]) -> __m128i {
        _mm_set_epi64x(0, i64::from_le_bytes(bytes))
    }

    /// Each of a Q4_K block's 8 mins twice, as 16 lanes of 16 bits: beside the two sums of 16
    /// of its group of 32.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mins_twice(mins: [u8; 8]) -> __m256i {
        let mins = eight(mins);
        _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins, mins))
    }

    /// 16 i32 lanes folded to the 8 an AVX2 kernel has (lane `l` plus lane `l + 8`).
    #[inline]
    #[target_feature(enable = "avx512f,avx2")]
    fn fold_i32(v: __m512i) -> __m256i {
        _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
    }

    /// [`fold_i32`] as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx2")]
    fn fold(v: __m512i) -> __m256 {
        _mm256_cvtepi32_ps(fold_i32(v))
    }

    /// The sum of eight f32 lanes, in [`lanes_sum`]'s order.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn hsum_ps(v: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
    }
}
