//! Loading a quantized model from one `.gguf` file.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::LoadedModel;
use crate::engine::chat::TokenizerConfig;
use crate::engine::gguf_metadata::Metadata;
use crate::engine::model::{Config, Embedding, Family, Linear, WeightSource};
use crate::engine::tokenizer;
use crate::error::{Error, Result, candle_message};

/// Extra files that may come with a GGUF: a `tokenizer.json` and a `tokenizer_config.json`.
#[derive(Default)]
pub(crate) struct Companions<'a> {
    pub tokenizer_json: Option<&'a Path>,
    pub tokenizer_config: Option<&'a Path>,
}

pub(crate) fn load(
    path: &Path,
    companions: Companions<'_>,
    device: &Device,
) -> Result<LoadedModel> {
    let load_error = |message: String| Error::Load {
        path: path.to_path_buf(),
        message,
    };
    let mut file = File::open(path).map_err(|e| load_error(format!("cannot open it: {e}")))?;
    let mut ct = Content::read(&mut file)
        .map_err(|e| load_error(format!("not a valid GGUF file ({})", candle_message(&e))))?;
    check_complete(&ct, file.metadata()?.len()).map_err(load_error)?;

    let architecture = Metadata(&ct)
        .string("general.architecture")
        .unwrap_or_default();
    if Family::from_gguf(&architecture).is_none() {
        return Err(Error::UnsupportedArchitecture {
            found: architecture,
            path: path.to_path_buf(),
            supported: Family::supported(),
        });
    }
    let config = Config::from_gguf(Metadata(&ct)).map_err(load_error)?;
    let tokenizer = match companions.tokenizer_json {
        Some(json) => tokenizer::from_file(json)?,
        None => tokenizer::from_gguf(&mut ct)?,
    };
    let tokenizer_config = match companions.tokenizer_config {
        Some(p) => TokenizerConfig::from_file(p)?,
        None => TokenizerConfig::default(),
    };
    let meta = Metadata(&ct);
    let chat_template = tokenizer_config
        .chat_template
        .or_else(|| meta.string("tokenizer.chat_template"));
    let token = |key: &str| {
        meta.integer(key)
            .and_then(|id| tokenizer::token_text(&tokenizer, id))
    };
    let bos_token = tokenizer_config
        .bos_token
        .or_else(|| token("tokenizer.ggml.bos_token_id"));
    let eos_token = tokenizer_config
        .eos_token
        .or_else(|| token("tokenizer.ggml.eos_token_id"));
    let eos_ids = [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ]
    .iter()
    .filter_map(|key| meta.integer(key))
    .collect();

    let mut source = GgufSource {
        ct: &ct,
        reader: &mut file,
        device,
        repacked: 0,
    };
    let model = super::build(config, &mut source, device)
        .map_err(|e| load_error(format!("cannot read the weights: {e}")))?;
    if source.repacked > 0 {
        tracing::info!(
            matrices = source.repacked,
            "repacked Q4_1/Q5_0/Q5_1 weights to Q8_0, which candle has fast CPU kernels for"
        );
    }
    Ok(LoadedModel {
        model: Arc::new(model),
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        eos_ids,
        architecture,
        dtype: "quantized".to_string(),
    })
}

/// The tensors of a GGUF file. Matrices stay quantized; on the CPU, formats candle has no SIMD
/// kernel for (Q4_1, Q5_0, Q5_1) are repacked to Q8_0, which is exact to within 1/254 of each
/// block's largest weight — far finer than the 4- or 5-bit steps of the original — and decodes
/// about 1.5 times faster.
pub(crate) struct GgufSource<'a, R> {
    pub ct: &'a Content,
    pub reader: &'a mut R,
    pub device: &'a Device,
    /// Matrices converted to Q8_0 so far.
    pub repacked: usize,
}

impl<R: Read + Seek> GgufSource<'_, R> {
    fn tensor(&mut self, name: &str) -> Result<QTensor> {
        if !self.contains(name) {
            let message = format!("the GGUF file has no tensor `{name}`");
            return Err(candle_core::Error::Msg(message).into());
        }
        Ok(self.ct.tensor(self.reader, name, self.device)?)
    }
}

impl<R: Read + Seek> WeightSource for GgufSource<'_, R> {
    fn dtype(&self) -> DType {
        DType::F32
    }

    fn contains(&self, name: &str) -> bool {
        self.ct.tensor_infos.contains_key(name)
    }

    fn linear(&mut self, name: &str, bias: Option<Tensor>) -> Result<Linear> {
        let mut weight = self.tensor(name)?;
        let slow_on_cpu = matches!(
            weight.dtype(),
            GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
        );
        if slow_on_cpu && self.device.is_cpu() {
            weight = QTensor::quantize(&weight.dequantize(self.device)?, GgmlDType::Q8_0)?;
            self.repacked += 1;
        }
        Linear::quantized(weight, bias, self.device)
    }

    fn embedding(&mut self, name: &str) -> Result<Embedding> {
        let table = self.tensor(name)?;
        Ok(match self.device.is_cpu() {
            true => Embedding::quantized(table)?,
            false => Embedding::Dense(table.dequantize(self.device)?),
        })
    }

    fn dense(&mut self, name: &str) -> Result<Tensor> {
        Ok(self.tensor(name)?.dequantize(self.device)?)
    }
}

/// candle reads tensor data lazily, so a cut-off download would load and fail (or talk
/// nonsense) later. Check that every tensor lies inside the file first.
fn check_complete(ct: &Content, file_len: u64) -> std::result::Result<(), String> {
    for (name, info) in &ct.tensor_infos {
        let elements = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        let bytes = (elements / block * info.ggml_dtype.type_size()) as u64;
        let end = ct
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|start| start.checked_add(bytes));
        if elements % block != 0 || end.is_none_or(|end| end > file_len) {
            return Err(format!(
                "the file is truncated or corrupt: tensor `{name}` extends past its end ({file_len} \
                 bytes); the download was probably interrupted, so delete the file and fetch it again"
            ));
        }
    }
    Ok(())
}
