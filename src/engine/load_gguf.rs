//! Loading a quantized model from one `.gguf` file.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::gguf_file::Content;

use super::chat::TokenizerConfig;
use super::gguf_metadata::Metadata;
use super::load::LoadedModel;
use super::model::Weights;
use super::tokenizer;
use super::transformer::{ARCHITECTURES, Config, Transformer};
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
    if !ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(Error::UnsupportedArchitecture {
            found: architecture,
            path: path.to_path_buf(),
            supported: ARCHITECTURES.join(", "),
        });
    }
    let shape = Config::from_gguf(Metadata(&ct)).map_err(load_error)?;
    let tokenizer = match companions.tokenizer_json {
        Some(json) => tokenizer::from_file(json)?,
        None => tokenizer::from_gguf(&mut ct)?,
    };
    let config = match companions.tokenizer_config {
        Some(p) => TokenizerConfig::from_file(p)?,
        None => TokenizerConfig::default(),
    };
    let meta = Metadata(&ct);
    let chat_template = config
        .chat_template
        .or_else(|| meta.string("tokenizer.chat_template"));
    let token = |key: &str| {
        meta.integer(key)
            .and_then(|id| tokenizer::token_text(&tokenizer, id))
    };
    let bos_token = config
        .bos_token
        .or_else(|| token("tokenizer.ggml.bos_token_id"));
    let eos_token = config
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

    let model = Arc::new(
        Transformer::from_gguf(shape, &ct, &mut file, device)
            .map_err(|e| load_error(format!("cannot read the weights: {e}")))?,
    );
    let context_length = model.config().context_length;
    let weights = Weights::Gguf {
        cache: model.new_cache(),
        model,
    };
    Ok(LoadedModel {
        weights,
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        eos_ids,
        context_length,
        architecture,
        dtype: "quantized".to_string(),
    })
}

/// candle reads tensor data lazily and silently ties the output layer to the embeddings when
/// `output.weight` cannot be read — so a cut-off download would load and talk nonsense. Check
/// that every tensor lies inside the file first.
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
