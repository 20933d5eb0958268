//! Activations quantized once per row as ggml's Q8_K, for every k-quant matrix that takes the
//! same input (q/k/v, gate/up): per 256 values a scale, 256 signed bytes and the sums of each 16.

use super::QK_K;

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
}
