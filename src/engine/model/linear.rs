//! A projection: `x @ W^T (+ b)` over quantized (GGUF) or dense (safetensors) weights, both
//! behind candle's `QMatMul`.
//!
//! On the CPU the kernel is chosen per matrix (see BENCHMARKS.md, `cargo bench --bench kernels`):
//!
//! - candle's fast x86 kernels (AVX-512 VNNI; Q4_K, Q6_K, Q8_0) need an inner dimension that is
//!   a multiple of 256. A Q8_0 matrix that misses it (SmolLM2's 576, Gemma 3 270M's 640) gets zero
//!   columns appended once at load, and every input the same zeros: no product changes, and
//!   requantizing Q8_0 values is exact.
//! - Where those kernels apply, they beat dequantizing for a GEMM at every prompt length. Where
//!   they do not, candle's kernel takes rows one by one, so chunks of [`GEMM_ROWS`] or more rows
//!   multiply by the dequantized f32 weights with candle's GEMM, which reuses each weight across
//!   the rows.

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
    /// Zero columns appended to the weights, and so to every input.
    pad: usize,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn quantized(mut weight: QTensor, bias: Option<Tensor>, device: &Device) -> Result<Self> {
        let (n, k) = weight.shape().dims2()?;
        let mut pad = 0;
        if device.is_cpu() && fast_kernels() && weight.dtype() == GgmlDType::Q8_0 {
            let padded = k.next_multiple_of(FAST_K);
            if padded != k && n.is_multiple_of(16) {
                let dense = weight
                    .dequantize(device)?
                    .pad_with_zeros(D::Minus1, 0, padded - k)?;
                weight = QTensor::quantize(&dense, GgmlDType::Q8_0)?;
                pad = padded - k;
            }
        }
        let fast = device.is_cpu() && fast_kernels() && has_fast_kernel(&weight);
        let weight = Arc::new(weight);
        let matmul = QMatMul::from_arc(weight.clone())?;
        let gemm =
            (device.is_cpu() && !fast && matches!(matmul, QMatMul::QTensor(_))).then_some(weight);
        Ok(Self {
            matmul,
            gemm,
            pad,
            bias,
        })
    }

    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            matmul: QMatMul::Tensor(weight),
            gemm: None,
            pad: 0,
            bias,
        }
    }

    /// `x` is `(rows, in)`; the result `(rows, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.padded(x)?;
        let rows = x.elem_count() / x.dim(D::Minus1)?;
        let y = match &self.gemm {
            Some(weight) if rows >= GEMM_ROWS => {
                let w = weight.dequantize(x.device())?;
                x.matmul(&w.t()?)?
            }
            _ => self.matmul.forward(&x)?,
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
                QMatMul::QTensor(w) if l.pad == linears[0].pad => Some(w.as_ref()),
                _ => None,
            })
            .collect();
        let (Some(weights), Some(first)) = (weights, linears.first()) else {
            return Ok(None);
        };
        if !x.device().is_cpu() {
            return Ok(None);
        }
        let input = first.padded(x)?.contiguous()?;
        let Some(outputs) = QTensor::gemv_fused_shared_lhs(&weights, &input)? else {
            return Ok(None);
        };
        let outputs = linears.iter().zip(outputs).map(|(l, y)| l.add_bias(y));
        Ok(Some(outputs.collect::<Result<_>>()?))
    }

    /// `x` with this matrix's zero columns appended.
    fn padded(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.pad {
            0 => x.clone(),
            pad => x.pad_with_zeros(D::Minus1, 0, pad)?,
        })
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
    fn padding_the_inner_dimension_keeps_the_products() {
        let device = Device::Cpu;
        let (n, k) = (48, 576);
        let w = Tensor::randn(0f32, 0.02, (n, k), &device).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, k), &device).unwrap();
        let exact = x
            .matmul(&q.dequantize(&device).unwrap().t().unwrap())
            .unwrap();
        let linear = Linear::quantized(q, None, &device).unwrap();
        assert_eq!(linear.pad, if fast_kernels() { 768 - k } else { 0 });
        let y = linear.forward(&x).unwrap();
        assert_eq!(y.dims(), &[3, n]);
        // The kernels round the activations to 8 bits: close to the f32 product, not equal.
        let largest = |t: Tensor| t.abs()?.max_all()?.to_scalar::<f32>();
        let error = largest((&y - &exact).unwrap()).unwrap();
        let scale = largest(exact).unwrap();
        assert!(error < 0.02 * scale, "error {error} at scale {scale}");
        // q/k/v-style projections of one input, fused or not, give the same.
        let [a, b] = Linear::forward_many([&linear, &linear], &x).unwrap();
        let diff = largest((&a - &y).unwrap()).unwrap();
        assert!(diff < 1e-5 * scale.max(1.0), "{diff}");
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    }
}
