//! The token embedding table. A pass looks up only a few rows, so on the CPU a GGUF table stays
//! as stored and only the rows a pass needs are dequantized: Gemma 3 270M's 262,144 × 640 table
//! is 671 MB in f32, 170 MB as stored, and that one copy also serves the tied output projection.
//! A bf16/f16 safetensors table stays as stored the same way.

use std::sync::Arc;

use candle_core::quantized::{QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{Device, Tensor};

use super::kernels::half::HalfMatrix;
use crate::error::{Error, Result};

pub(crate) enum Embedding {
    /// Dense rows (safetensors, or a GPU).
    Dense(Tensor),
    /// GGUF blocks as stored, `(vocab, hidden)`, on the CPU.
    Quantized(Arc<QTensor>),
    /// bf16/f16 as stored, `(vocab, hidden)`, on the CPU.
    Half(Arc<HalfMatrix>),
}

impl Embedding {
    /// A table kept as stored, in pages the size its reads prefer.
    pub fn quantized(table: QTensor) -> Result<Self> {
        super::kernels::prefer_huge_pages(&table.data()?);
        Ok(Embedding::Quantized(Arc::new(table)))
    }

    /// A 16-bit table kept as stored, in pages the size its reads prefer.
    pub fn half(table: HalfMatrix) -> Self {
        super::kernels::prefer_huge_pages(table.as_bytes());
        Embedding::Half(Arc::new(table))
    }

    /// The rows of `ids`, `(ids.len(), hidden)`.
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        // A table holds exactly `vocab` rows: a row past its end is an id past the vocabulary.
        let outside = |vocab: usize| {
            let id = ids.iter().max().copied().unwrap_or_default();
            Error::InvalidRequest(format!(
                "token id {id} is outside the vocabulary of {vocab}"
            ))
        };
        let table = match self {
            Embedding::Dense(table) => {
                return Ok(table.index_select(&Tensor::new(ids, table.device())?, 0)?);
            }
            Embedding::Half(table) => {
                let (vocab, hidden) = table.dims();
                let rows = table.rows(ids).ok_or_else(|| outside(vocab))?;
                return Ok(Tensor::from_vec(rows, (ids.len(), hidden), &Device::Cpu)?);
            }
            Embedding::Quantized(table) => table,
        };
        let (vocab, hidden) = table.shape().dims2()?;
        let dtype = table.dtype();
        let row_bytes = hidden / dtype.block_size() * dtype.type_size();
        let data = table.data()?;
        let mut bytes = Vec::with_capacity(ids.len() * row_bytes);
        for &id in ids {
            let row = data
                .get(id as usize * row_bytes..(id as usize + 1) * row_bytes)
                .ok_or_else(|| outside(vocab))?;
            bytes.extend_from_slice(row);
        }
        let rows = qtensor_from_ggml(dtype, &bytes, vec![ids.len(), hidden], &Device::Cpu)?;
        Ok(rows.dequantize(&Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;

    use super::*;

    #[test]
    fn quantized_rows_equal_the_rows_of_the_dequantized_table() {
        let device = Device::Cpu;
        let values: Vec<f32> = (0..40 * 512)
            .map(|i| ((i * 31 % 113) as f32 - 56.0) / 90.0)
            .collect();
        let table = Tensor::from_vec(values, (40, 512), &device).unwrap();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::Q4_1,
        ] {
            let q = QTensor::quantize(&table, dtype).unwrap();
            let dense = Embedding::Dense(q.dequantize(&device).unwrap());
            let quantized = Embedding::Quantized(Arc::new(q));
            let ids = [3, 0, 39, 3, 17];
            assert_eq!(
                quantized.rows(&ids).unwrap().to_vec2::<f32>().unwrap(),
                dense.rows(&ids).unwrap().to_vec2::<f32>().unwrap(),
                "{dtype:?}"
            );
            assert!(matches!(
                quantized.rows(&[40]),
                Err(Error::InvalidRequest(_))
            ));
        }
    }

    #[test]
    fn half_rows_are_the_rows_widened() {
        use super::super::kernels::half::Half;
        let table = Tensor::randn(0f32, 1.0, (40, 64), &Device::Cpu).unwrap();
        let half = HalfMatrix::from_tensor(Half::Bf16, &table)
            .unwrap()
            .unwrap();
        let widened = table.to_dtype(candle_core::DType::BF16).unwrap();
        let dense = Embedding::Dense(widened.to_dtype(candle_core::DType::F32).unwrap());
        let half = Embedding::half(half);
        let ids = [3, 0, 39, 3];
        assert_eq!(
            half.rows(&ids).unwrap().to_vec2::<f32>().unwrap(),
            dense.rows(&ids).unwrap().to_vec2::<f32>().unwrap()
        );
        assert!(matches!(half.rows(&[0, 40]), Err(Error::InvalidRequest(_))));
    }
}
