use candle_core::{Device, Tensor};

use super::*;

/// Random weights `(n, k)` quantized to `dtype`, and their dequantized f32 values.
fn weights(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (QTensor, Vec<f32>) {
    let device = Device::Cpu;
    // A small linear congruential generator: the same weights on every machine.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..n * k)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.05
        })
        .collect();
    let w = Tensor::from_vec(values, (n, k), &device).unwrap();
    let q = QTensor::quantize(&w, dtype).unwrap();
    let dense = q.dequantize(&device).unwrap().flatten_all().unwrap();
    (q, dense.to_vec1().unwrap())
}

/// Activations `(m, k)`, shared with the other kernels' tests.
pub(super) fn inputs(m: usize, k: usize) -> Vec<f32> {
    // Deterministic, uneven, with a few large values, as real activations have.
    (0..m * k)
        .map(|i| {
            let v = ((i * 7919 % 1009) as f32 - 504.0) / 300.0;
            if i % 97 == 0 { v * 20.0 } else { v }
        })
        .collect()
}

/// The kernel of each type at `level`, column `c`, row `r`, computed lane by lane in plain Rust.
fn reference(dtype: GgmlDType, column: &[u8], x: &[f32], m: usize, r: usize) -> f32 {
    match layout(dtype) {
        Some((Family::KQuants, _, _)) => {
            k_quants::reference(dtype, column, &Q8K::quantize(x, m), r)
        }
        _ => blocks32::reference(dtype, column, &Q8x32::quantize(x, m), r),
    }
}

/// Each level against the block-by-block reference (the same bits), and the reference against
/// dequantize + f32 within the rounding of the activations to 8 bits.
#[test]
fn every_level_matches_the_reference_and_f32_within_the_activation_rounding() {
    let levels = Level::supported();
    if levels.is_empty() {
        return;
    }
    let k_quant_shapes = [(40, 256), (33, 1536), (19, 8960)];
    let block32_shapes = [(40, 576), (37, 640), (33, 1536), (19, 8960)];
    let cases = [
        (GgmlDType::Q4K, &k_quant_shapes[..]),
        (GgmlDType::Q6K, &k_quant_shapes[..]),
        (GgmlDType::Q4_0, &block32_shapes[..]),
        (GgmlDType::Q4_1, &block32_shapes[..]),
        (GgmlDType::Q5_0, &block32_shapes[..]),
        (GgmlDType::Q8_0, &block32_shapes[..]),
    ];
    for (dtype, shapes) in cases {
        let Some((_, block, _)) = layout(dtype) else {
            panic!("{dtype:?} has a layout")
        };
        for &(n, k) in shapes {
            let (q, dense) = weights(dtype, n, k, 7);
            for m in [1, 2, 3, 8, 17, 32] {
                let x = inputs(m, k);
                let data = q.data().unwrap();
                let bytes = data.len() / n;
                let expected: Vec<f32> = (0..m * n)
                    .map(|i| reference(dtype, &data[i % n * bytes..][..bytes], &x, m, i / n))
                    .collect();
                for level in &levels {
                    let y = &matmul(&[&q], &x, m, *level, Threads::Wick).unwrap()[0];
                    for (i, (y, e)) in y.iter().zip(&expected).enumerate() {
                        assert_eq!(
                            y.to_bits(),
                            e.to_bits(),
                            "{dtype:?} {level:?} {n}x{k}, {m} rows: row {} column {}",
                            i / n,
                            i % n
                        );
                    }
                }
                let y = &matmul(&[&q], &x, m, levels[0], Threads::Candle).unwrap()[0];
                for r in 0..m {
                    let row = &x[r * k..(r + 1) * k];
                    for c in 0..n {
                        let w = &dense[c * k..(c + 1) * k];
                        let exact: f64 = w.iter().zip(row).map(|(&w, &x)| f64::from(w * x)).sum();
                        // Each activation is off by at most half its block's step (amax / 127).
                        let bound: f64 = (0..k / block)
                            .map(|b| {
                                let values = &row[b * block..(b + 1) * block];
                                let step = values.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                                let weight: f32 =
                                    w[b * block..(b + 1) * block].iter().map(|v| v.abs()).sum();
                                f64::from(step / 2.0 * weight)
                            })
                            .sum();
                        let magnitude: f64 = w
                            .iter()
                            .zip(row)
                            .map(|(&w, &x)| f64::from((w * x).abs()))
                            .sum();
                        let error = (f64::from(y[r * n + c]) - exact).abs();
                        assert!(
                            error <= bound * 1.001 + magnitude * 1e-5,
                            "{dtype:?} {n}x{k}: row {r} column {c}: {error} > {bound}"
                        );
                    }
                }
            }
        }
    }
}

/// A row's bits do not depend on the other rows of the call, nor on the matrices beside it.
#[test]
fn a_row_gets_the_same_bits_alone_and_in_any_batch() {
    let Some(level) = Level::best() else {
        return;
    };
    for (a, b, k) in [
        (GgmlDType::Q4K, GgmlDType::Q6K, 1536),
        (GgmlDType::Q5_0, GgmlDType::Q8_0, 640),
        (GgmlDType::Q4_1, GgmlDType::Q4_0, 576),
    ] {
        let (qa, _) = weights(a, 72, k, 1);
        let (qb, _) = weights(b, 40, k, 2);
        let x = inputs(32, k);
        let together = matmul(&[&qa, &qb], &x, 32, level, Threads::Wick).unwrap();
        for r in [0, 5, 16, 31] {
            let row = &x[r * k..(r + 1) * k];
            let alone = matmul(&[&qb, &qa], row, 1, level, Threads::Candle).unwrap();
            assert_eq!(alone[1], together[0][r * 72..(r + 1) * 72], "{a:?} row {r}");
            assert_eq!(alone[0], together[1][r * 40..(r + 1) * 40], "{b:?} row {r}");
        }
    }
}

#[test]
fn other_types_shapes_and_mixed_families_are_refused() {
    let (q8, _) = weights(GgmlDType::Q8_0, 32, 512, 3);
    assert_eq!(family(&q8), Some(Family::Blocks32));
    let (q4, _) = weights(GgmlDType::Q4K, 32, 512, 3);
    assert_eq!(family(&q4), Some(Family::KQuants));
    let (q5k, _) = weights(GgmlDType::Q5K, 32, 512, 3);
    assert_eq!(family(&q5k), None);
    if let Some(level) = Level::best() {
        assert!(matmul(&[&q4], &inputs(1, 256), 1, level, Threads::Wick).is_err());
        assert!(matmul(&[&q4, &q8], &inputs(1, 512), 1, level, Threads::Wick).is_err());
        assert!(matmul(&[&q5k], &inputs(1, 512), 1, level, Threads::Wick).is_err());
    }
}
