//! A projection: `x @ W^T (+ b)` over quantized (GGUF) or dense (safetensors) weights, both
//! behind candle's `QMatMul`.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{D, Module, Tensor};

use crate::error::Result;

/// From this many rows on, a CPU matmul over quantized weights dequantizes them and runs a GEMM:
/// candle's quantized CPU kernel takes rows one by one, so a prompt would cost as much per token
/// as generating. Dequantizing costs about what 18 rows through the quantized kernel save
/// (SmolLM2 on 2 cores), so shorter chunks stay quantized.
const GEMM_ROWS: usize = 32;

pub(crate) struct Linear {
    matmul: QMatMul,
    /// The quantized weights, kept for the GEMM path of long CPU chunks.
    quantized: Option<Arc<QTensor>>,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn quantized(weight: QTensor, bias: Option<Tensor>) -> Result<Self> {
        let weight = Arc::new(weight);
        let matmul = QMatMul::from_arc(weight.clone())?;
        let quantized = matches!(matmul, QMatMul::QTensor(_)).then_some(weight);
        Ok(Self {
            matmul,
            quantized,
            bias,
        })
    }

    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            matmul: QMatMul::Tensor(weight),
            quantized: None,
            bias,
        }
    }

    /// `x` is `(rows, in)`; the result `(rows, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(D::Minus1)?;
        let y = match &self.quantized {
            Some(weight) if rows >= GEMM_ROWS && x.device().is_cpu() => {
                let w = weight.dequantize(x.device())?;
                x.matmul(&w.t()?)?
            }
            _ => self.matmul.forward(x)?,
        };
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }
}
