//! Activations quantized once per row, for every matrix that takes the same input (q/k/v,
//! gate/up): as ggml's Q8_K for the k-quants (per 256 values a scale, 256 signed bytes and the
//! sums of each 16), and in blocks of 32 for the 32-value types (per block a scale, 32 signed
//! bytes and the block's sum times its scale).

use super::{QK_K, QK32};

/// `rows` rows of `blocks` Q8_K blocks each, row after row.
pub(crate) struct Q8K {
    pub scales: Vec<f32>,
    pub values: Vec<i8>,
    /// The sum of each 16 values of a block (16 per block), for the weights' offsets and mins.
    pub sums: Vec<i16>,
    pub rows: usize,
    pub blocks: usize,
}

impl Q8K {
    /// `x` is `(rows, k)` row-major with `k` a multiple of 256. ggml's rounding
    /// (`quantize_row_q8_K_ref`): the value of largest magnitude maps to -127 exactly.
    pub fn quantize(x: &[f32], rows: usize) -> Self {
        let blocks = x.len() / rows.max(1) / QK_K;
        let mut scales = Vec::with_capacity(rows * blocks);
        let mut values = vec![0i8; rows * blocks * QK_K];
        let mut sums = Vec::with_capacity(rows * blocks * 16);
        for (block, out) in x.chunks_exact(QK_K).zip(values.chunks_exact_mut(QK_K)) {
            let mut max = 0f32;
            let mut amax = 0f32;
            for &v in block {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                scales.push(0.0);
                sums.extend([0; 16]);
                continue;
            }
            let inverse = -127.0 / max;
            for (q, &v) in out.iter_mut().zip(block) {
                *q = (inverse * v).round_ties_even().min(127.0) as i8;
            }
            sums.extend(
                out.chunks_exact(16)
                    .map(|group| group.iter().map(|&q| i16::from(q)).sum::<i16>()),
            );
            scales.push(1.0 / inverse);
        }
        Self {
            scales,
            values,
            sums,
            rows,
            blocks,
        }
    }

    /// Block `b` of row `r`: its scale, values and sums of 16.
    #[inline(always)]
    pub fn block(&self, r: usize, b: usize) -> (f32, &[i8], &[i16]) {
        let i = r * self.blocks + b;
        (
            self.scales[i],
            &self.values[i * QK_K..(i + 1) * QK_K],
            &self.sums[i * 16..(i + 1) * 16],
        )
    }
}

/// `rows` rows of `blocks` blocks of 32 values each, row after row: ggml's Q8_0 (so Q8_0
/// weights get the bits candle's and wick's prompt-chunk kernel give), and each block's sum as
/// Q8_1 carries it.
pub(crate) struct Q8x32 {
    pub scales: Vec<f32>,
    /// Each block's scale times the sum of its values (what a weight offset multiplies), per
    /// group of four rows (rows `4g..4g + 4`, zero past the last), block after block: the
    /// kernels take a weight block's offset times four rows in one instruction.
    pub group_sums: Vec<[f32; 4]>,
    pub values: Vec<i8>,
    pub rows: usize,
    pub blocks: usize,
}

impl Q8x32 {
    /// `x` is `(rows, k)` row-major with `k` a multiple of 32. ggml's rounding
    /// (`quantize_row_q8_0_ref`): the scale is `max|x| / 127` stored as f16, values are `x` over
    /// the unrounded scale, rounded half away from zero.
    pub fn quantize(x: &[f32], rows: usize) -> Self {
        let blocks = x.len() / rows.max(1) / QK32;
        let mut scales = Vec::with_capacity(rows * blocks);
        let mut group_sums = vec![[0f32; 4]; rows.div_ceil(4) * blocks];
        let mut values = vec![0i8; rows * blocks * QK32];
        let chunks = x.chunks_exact(QK32).zip(values.chunks_exact_mut(QK32));
        for (i, (block, out)) in chunks.enumerate() {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inverse = if d == 0.0 { 0.0 } else { 1.0 / d };
            for (q, &v) in out.iter_mut().zip(block) {
                *q = (v * inverse).round() as i8;
            }
            let sum: i32 = out.iter().map(|&q| i32::from(q)).sum();
            let d = half::f16::from_f32(d).to_f32();
            scales.push(d);
            let (r, b) = (i / blocks, i % blocks);
            group_sums[r / 4 * blocks + b][r % 4] = d * sum as f32;
        }
        Self {
            scales,
            group_sums,
            values,
            rows,
            blocks,
        }
    }

    /// Rows `first..first + 4` (`first` a multiple of 4): each block's scaled sums.
    #[inline(always)]
    pub fn group(&self, first: usize) -> &[[f32; 4]] {
        &self.group_sums[first / 4 * self.blocks..][..self.blocks]
    }

    /// Block `b` of row `r`: its scale, its scaled sum and its values (for the tests'
    /// reference; the kernels take a row at a time).
    #[cfg(test)]
    pub fn block(&self, r: usize, b: usize) -> (f32, f32, &[i8]) {
        let i = r * self.blocks + b;
        (
            self.scales[i],
            self.group(r / 4 * 4)[b][r % 4],
            &self.values[i * QK32..(i + 1) * QK32],
        )
    }

    /// Row `r`: its blocks' scales and its values (`blocks` and `32·blocks`).
    #[inline(always)]
    pub fn row(&self, r: usize) -> (&[f32], &[i8]) {
        let blocks = r * self.blocks..(r + 1) * self.blocks;
        let values = blocks.start * QK32..blocks.end * QK32;
        (&self.scales[blocks], &self.values[values])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_times_the_scale_give_back_the_input_and_sums_add_up() {
        let x: Vec<f32> = (0..2 * 512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let q = Q8K::quantize(&x, 2);
        assert_eq!((q.rows, q.blocks), (2, 2));
        for r in 0..2 {
            for b in 0..2 {
                let (d, values, sums) = q.block(r, b);
                let input = &x[(r * 2 + b) * QK_K..][..QK_K];
                let amax = input.iter().fold(0f32, |a, v| a.max(v.abs()));
                for (&q, &v) in values.iter().zip(input) {
                    assert!((f32::from(q) * d - v).abs() <= amax / 127.0 * 0.5001);
                }
                for (g, &s) in sums.iter().enumerate() {
                    let expected: i16 = values[g * 16..][..16].iter().map(|&q| i16::from(q)).sum();
                    assert_eq!(s, expected);
                }
            }
        }
        let zeros = Q8K::quantize(&[0.0; 256], 1);
        assert_eq!(zeros.block(0, 0).0, 0.0);
    }

    #[test]
    fn blocks_of_32_give_back_the_input_and_carry_their_sums() {
        let x: Vec<f32> = (0..3 * 64)
            .map(|i| ((i * 29 % 83) as f32 - 41.0) / 5.0)
            .collect();
        let q = Q8x32::quantize(&x, 3);
        assert_eq!((q.rows, q.blocks), (3, 2));
        for r in 0..3 {
            for b in 0..2 {
                let (d, scaled_sum, values) = q.block(r, b);
                let input = &x[(r * 2 + b) * QK32..][..QK32];
                let amax = input.iter().fold(0f32, |a, v| a.max(v.abs()));
                for (&q, &v) in values.iter().zip(input) {
                    // Half a step, and the scale's rounding to f16 (a relative 2^-11).
                    assert!((f32::from(q) * d - v).abs() <= amax / 127.0 * 0.5001 + amax / 1024.0);
                }
                let sum: i32 = values.iter().map(|&q| i32::from(q)).sum();
                assert_eq!(scaled_sum, d * sum as f32);
            }
        }
        assert_eq!(Q8x32::quantize(&[0.0; 32], 1).block(0, 0).0, 0.0);
    }
}
