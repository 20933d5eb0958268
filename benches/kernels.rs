//! The CPU matmul kernels wick chooses between for a projection over quantized weights, on the
//! shapes of the models it benchmarks — candle's quantized kernel on the weights as stored, the
//! same with the inner dimension zero-padded to a multiple of 256 (where candle's fast x86
//! kernels apply), wick's own Q8_0 kernel for prompt chunks (AVX-512 VNNI, where candle's fast
//! kernels do not apply), wick's own decode-row kernels (Q4_K, Q6_K, Q4_0, Q4_1, Q5_0, Q8_0; blocks
//! as stored), and dequantize + f32 GEMM:
//!
//! `kernels/<dtype>/<out>x<in>/<rows>/<kernel>`, in rows per second. Then bf16 weights (see
//! [`half`]) and attention at depth (see [`attention`]).
//!
//! `cargo bench --bench kernels`; `cargo test --benches` runs each once as a check.

use std::time::Duration;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// (out, in): SmolLM2-135M's MLP up and down, Qwen2.5-1.5B's MLP up.
const SHAPES: [(usize, usize); 3] = [(1536, 576), (576, 1536), (8960, 1536)];

fn bench(c: &mut Criterion) {
    let device = Device::Cpu;
    let mut group = c.benchmark_group("kernels");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let dtypes = [
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
    ];
    for dtype in dtypes {
        for (out, inner) in SHAPES {
            let k_quant = matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K);
            if k_quant && inner % 256 != 0 {
                continue;
            }
            // Zero-padding helps only where candle has fast kernels for the padded shape.
            let padded = match k_quant || dtype == GgmlDType::Q8_0 {
                true => inner.div_ceil(256) * 256,
                false => inner,
            };
            let w = Tensor::randn(0f32, 0.02, (out, inner), &device).expect("weights");
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let wide = w.pad_with_zeros(D::Minus1, 0, padded - inner).expect("pad");
            let q_wide = QTensor::quantize(&wide, dtype).expect("quantize");
            let plain = QMatMul::from_qtensor(q).expect("qmatmul");
            let wide_matmul = QMatMul::from_qtensor(q_wide).expect("qmatmul");
            for rows in [1, 8, 32, 128, 512] {
                let x = Tensor::randn(0f32, 1.0, (rows, inner), &device).expect("input");
                let name = format!("{dtype:?}/{out}x{inner}/{rows}");
                group.throughput(Throughput::Elements(rows as u64));
                group.bench_function(BenchmarkId::new(&name, "quantized"), |b| {
                    b.iter(|| plain.forward(&x).expect("forward"))
                });
                if padded != inner {
                    group.bench_function(BenchmarkId::new(&name, "padded"), |b| {
                        b.iter(|| {
                            let x = x.pad_with_zeros(D::Minus1, 0, padded - inner)?;
                            wide_matmul.forward(&x)
                        })
                    });
                }
                let values: Vec<f32> = x.flatten_all().expect("x").to_vec1().expect("x");
                if let QMatMul::QTensor(q) = &plain
                    && padded != inner
                    && let Some(Ok(_)) = wick::engine::q8_0_rows_kernel(q, &values, rows)
                {
                    group.bench_function(BenchmarkId::new(&name, "wick_q8_0"), |b| {
                        b.iter(|| wick::engine::q8_0_rows_kernel(q, &values, rows))
                    });
                }
                if let QMatMul::QTensor(q) = &plain
                    && let Some(Ok(_)) = wick::engine::decode_rows_kernel(q, &values, rows)
                {
                    group.bench_function(BenchmarkId::new(&name, "wick_decode"), |b| {
                        b.iter(|| wick::engine::decode_rows_kernel(q, &values, rows))
                    });
                }
                if let QMatMul::QTensor(q) = &plain {
                    group.bench_function(BenchmarkId::new(&name, "dequantize_gemm"), |b| {
                        b.iter(|| {
                            let w = q.dequantize(&device)?;
                            x.matmul(&w.t()?)
                        })
                    });
                }
            }
        }
    }
    group.finish();
}

/// bf16 weights as a safetensors file stores them: wick's half kernel (widening in registers)
/// against candle's f32 GEMM over the same weights widened once at load, what `--dtype f32`
/// runs: `half/bf16/<out>x<in>/<rows>/<kernel>`, in rows per second.
fn half(c: &mut Criterion) {
    let device = Device::Cpu;
    let mut group = c.benchmark_group("half");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    // And SmolLM2's output matrix (its tied embeddings), 56 MB in bf16: far more than the
    // caches hold, as a whole model is.
    for (out, inner) in SHAPES.into_iter().chain([(49152, 576)]) {
        let wide = Tensor::randn(0f32, 0.02, (out, inner), &device).expect("weights");
        let bf16 = wide.to_dtype(DType::BF16).expect("bf16");
        let wide = bf16.to_dtype(DType::F32).expect("f32");
        let kernel = wick::engine::HalfKernel::new(&bf16);
        for rows in [1, 8, 32, 128, 512] {
            let x = Tensor::randn(0f32, 1.0, (rows, inner), &device).expect("input");
            let values: Vec<f32> = x.flatten_all().expect("x").to_vec1().expect("x");
            let name = format!("bf16/{out}x{inner}/{rows}");
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_function(BenchmarkId::new(&name, "candle_f32_gemm"), |b| {
                b.iter(|| x.matmul(&wide.t()?))
            });
            if let Some(Ok(kernel)) = &kernel
                && let Some(Ok(_)) = kernel.matmul(&values, rows, 0)
            {
                group.bench_function(BenchmarkId::new(&name, "wick_half"), |b| {
                    b.iter(|| kernel.matmul(&values, rows, 0))
                });
            }
        }
    }
    group.finish();
}

/// Attention for one sequence at a depth: wick's paged kernel over an f16 and an f32 pool, and
/// candle's matmul + softmax + matmul over contiguous f32 keys (what a GEMM path costs):
/// `attention/<heads>x<kv heads>x<head dim>/<depth>/<rows>/<kernel>`, in rows per second.
fn attention(c: &mut Criterion) {
    let device = Device::Cpu;
    let mut group = c.benchmark_group("attention");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    // SmolLM2-135M's and Gemma 3 270M's layers.
    for (heads, kv_heads, dim) in [(9, 3, 64), (4, 1, 256)] {
        for depth in [128, 1024, 4096] {
            for rows in [1, 16] {
                let name = format!("{heads}x{kv_heads}x{dim}/{depth}/{rows}");
                let random = |shape: (usize, usize, usize)| {
                    Tensor::randn(0f32, 1.0, shape, &device).expect("random")
                };
                let (q, keys, values) = (
                    random((heads, rows, dim)),
                    random((kv_heads, depth, dim)),
                    random((kv_heads, depth, dim)),
                );
                group.throughput(Throughput::Elements(rows as u64));
                for dtype in [DType::F16, DType::F32] {
                    let (k, v) = (
                        keys.to_dtype(dtype).expect("keys"),
                        values.to_dtype(dtype).expect("values"),
                    );
                    let kernel = format!("wick_paged_{dtype:?}");
                    group.bench_function(BenchmarkId::new(&name, kernel), |b| {
                        b.iter(|| wick::engine::paged_attention_kernel(&q, &k, &v, depth, 16))
                    });
                }
                // Every row sees every key here: what the GEMM costs, not a causal mask.
                let grouped = q
                    .reshape((kv_heads, heads / kv_heads * rows, dim))
                    .expect("q");
                group.bench_function(BenchmarkId::new(&name, "candle_gemm_f32"), |b| {
                    b.iter(|| {
                        let scores = grouped.matmul(&keys.t()?)?;
                        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
                        weights.matmul(&values)
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench, half, attention);
criterion_main!(benches);
