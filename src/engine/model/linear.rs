//! A projection: `x @ W^T (+ b)` over quantized (GGUF) or dense (safetensors) weights, both
//! behind candle's `QMatMul`.
//!
//! On the CPU the kernel is chosen per matrix (see BENCHMARKS.md, `cargo bench --bench kernels`).
//! Where candle's fast x86 kernels apply (AVX-512 VNNI; Q4_K, Q6_K and Q8_0 with an inner
//! dimension that is a multiple of 256) they beat dequantizing for a GEMM at every prompt length.
//! Where they do not, candle's kernel takes rows one by one, so chunks of [`GEMM_ROWS`] or more
//! rows multiply by the dequantized f32 weights with candle's GEMM, which reuses each weight across
//! the rows.
//!
//! Zero-padding other Q8_0 matrices to a multiple of 256 would make them 2.7–4.6 times faster, but
//! those kernels round the activations in blocks of 256 rather than 32: SmolLM2's greedy text then
//! parted from the same weights in f32 within eight tokens, so wick keeps the finer kernel.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, Device, Module, Tensor};

use crate::error::Result;

/// From this many rows on, a CPU matmul without a fast kernel dequantizes and runs a GEMM:
/// dequantizing costs about what 18 rows through the slow kernel save (SmolLM2, 2 cores).
const GEMM_ROWS: usize = 32;

/// The inner-dimension multiple candle's fast x86 kernels need.
const FAST_K: usize = 256;

pub(crate) struct Linear {
    matmul: QMatMul,
    /// The quantized weights, for the GEMM path of long CPU chunks; `None` where the quantized
    /// kernel is used at every length (or the weights are dense).
    gemm: Option<Arc<QTensor>>,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn quantized(weight: QTensor, bias: Option<Tensor>, device: &Device) -> Result<Self> {
        let fast = device.is_cpu() && fast_kernels() && has_fast_kernel(&weight);
        let weight = Arc::new(weight);
        let matmul = QMatMul::from_arc(weight.clone())?;
        let gemm =
            (device.is_cpu() && !fast && matches!(matmul, QMatMul::QTensor(_))).then_some(weight);
        Ok(Self { matmul, gemm, bias })
    }

    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            matmul: QMatMul::Tensor(weight),
            gemm: None,
            bias,
        }
    }

    /// `x` is `(rows, in)`; the result `(rows, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(D::Minus1)?;
        let y = match &self.gemm {
            Some(weight) if rows >= GEMM_ROWS => {
                let w = weight.dequantize(x.device())?;
                x.matmul(&w.t()?)?
            }
            _ => self.matmul.forward(x)?,
        };
        self.add_bias(y)
    }

    /// Several projections of the same input (q/k/v, gate/up). Where candle's fast x86 kernels
    /// take them all, one fused call quantizes the input once and runs one parallel region,
    /// which is most of a small model's decode step; otherwise one call each.
    pub fn forward_many<const N: usize>(linears: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        let fused = match Self::fused(&linears, x)? {
            Some(outputs) => outputs,
            None => linears
                .iter()
                .map(|l| l.forward(x))
                .collect::<Result<_>>()?,
        };
        fused.try_into().map_err(|outputs: Vec<Tensor>| {
            candle_core::Error::Msg(format!("{N} projections gave {} outputs", outputs.len()))
                .into()
        })
    }

    fn fused(linears: &[&Linear], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        let weights: Option<Vec<&QTensor>> = linears
            .iter()
            .map(|l| match &l.matmul {
                QMatMul::QTensor(w) => Some(w.as_ref()),
                _ => None,
            })
            .collect();
        let Some(weights) = weights.filter(|_| x.device().is_cpu()) else {
            return Ok(None);
        };
        let input = x.contiguous()?;
        let Some(outputs) = QTensor::gemv_fused_shared_lhs(&weights, &input)? else {
            return Ok(None);
        };
        let outputs = linears.iter().zip(outputs).map(|(l, y)| l.add_bias(y));
        Ok(Some(outputs.collect::<Result<_>>()?))
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }
}

/// Whether candle picks its fast x86 kernels on this CPU (AVX-512 with VNNI).
fn fast_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// candle's own rule for its fast kernels (`repack_x86::select`), for prompt chunks.
fn has_fast_kernel(weight: &QTensor) -> bool {
    let Ok((n, k)) = weight.shape().dims2() else {
        return false;
    };
    k.is_multiple_of(FAST_K)
        && n.is_multiple_of(16)
        && matches!(
            weight.dtype(),
            GgmlDType::Q4K | GgmlDType::Q6K | GgmlDType::Q8_0
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_projections_equal_separate_ones_and_stay_close_to_f32() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 512), &device).unwrap();
        let largest = |t: Tensor| t.abs()?.max_all()?.to_scalar::<f32>();
        // Fast-kernel and generic shapes, quantized formats with and without a fast kernel.
        for (n, dtype) in [
            (48, GgmlDType::Q8_0),
            (64, GgmlDType::Q4K),
            (40, GgmlDType::Q4_0),
        ] {
            let w = Tensor::randn(0f32, 0.02, (n, 512), &device).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let exact = x
                .matmul(&q.dequantize(&device).unwrap().t().unwrap())
                .unwrap();
            let linear = Linear::quantized(q, None, &device).unwrap();
            let y = linear.forward(&x).unwrap();
            assert_eq!(y.dims(), &[3, n]);
            // The kernels round the activations to 8 bits: close to the f32 product.
            let error = largest((&y - &exact).unwrap()).unwrap();
            let scale = largest(exact).unwrap();
            assert!(
                error < 0.02 * scale,
                "{dtype:?}: error {error} at scale {scale}"
            );
            let [a, b] = Linear::forward_many([&linear, &linear], &x).unwrap();
            let diff = largest((&a - &y).unwrap()).unwrap();
            assert!(
                diff <= 1e-5 * scale,
                "{dtype:?}: fused and separate differ by {diff}"
            );
            assert_eq!(
                a.to_vec2::<f32>().unwrap(),
                b.to_vec2::<f32>().unwrap(),
                "{dtype:?}"
            );
        }
    }
}
