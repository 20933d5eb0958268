//! Tokenizers: `tokenizer.json` when the model ships one, else rebuilt from the GGUF vocabulary.

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;

use super::gguf_metadata::Metadata;
use crate::error::{Error, Result, candle_message};

pub(crate) fn from_file(path: &std::path::Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| Error::Load {
        path: path.to_path_buf(),
        message: format!("not a valid tokenizer.json: {e}"),
    })
}

/// Builds the byte-level BPE tokenizer that a GGUF file describes in its `tokenizer.ggml.*` keys.
///
/// candle's converter does the vocabulary, merges, special tokens and BOS handling; it only
/// knows some of llama.cpp's pre-tokenizer names, so those are mapped (or fixed) here to match
/// the original `tokenizer.json` of each family.
pub(crate) fn from_gguf(ct: &mut Content) -> Result<Tokenizer> {
    let model = Metadata(ct)
        .string("tokenizer.ggml.model")
        .unwrap_or_default();
    if model != "gpt2" {
        return Err(Error::Tokenizer(format!(
            "the GGUF file's tokenizer is `{model}`, which wick can only use through a \
             tokenizer.json: put the model's tokenizer.json next to the .gguf file (or use a \
             repository that has one); byte-level BPE (`gpt2`) vocabularies are rebuilt from GGUF"
        )));
    }
    let pre = Metadata(ct)
        .string("tokenizer.ggml.pre")
        .unwrap_or_else(|| "default".to_string());
    let candle_name = match pre.as_str() {
        "llama-bpe" | "llama-v3" | "llama3" => Some("llama3"),
        "qwen2" | "deepseek-r1-qwen" => Some("qwen2"),
        "smaug-bpe" | "lfm2" => Some(pre.as_str()),
        _ => None,
    };
    if let Some(name) = candle_name {
        ct.metadata.insert(
            "tokenizer.ggml.pre".to_string(),
            Value::String(name.to_string()),
        );
    }
    let mut tokenizer = Tokenizer::from_gguf(ct).map_err(|e| {
        Error::Tokenizer(format!(
            "cannot rebuild the GGUF tokenizer: {}",
            candle_message(&e)
        ))
    })?;
    // GPT-2 style pre-tokenizers, as their tokenizer.json files configure them: no prefix space.
    let gpt2_regex = ByteLevel::new(false, true, true);
    match pre.as_str() {
        _ if candle_name.is_some() => {}
        "smollm" | "starcoder" | "refact" => {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                gpt2_regex.into(),
            ])));
        }
        "gpt-2" | "gpt2" | "phi-2" | "default" => {
            tokenizer.with_pre_tokenizer(Some(gpt2_regex));
        }
        other => {
            tracing::warn!(
                pre = other,
                "unknown GGUF pre-tokenizer; splitting words as GPT-2 does, which may differ \
                 from the model's own tokenizer (ship a tokenizer.json to be exact)"
            );
            tokenizer.with_pre_tokenizer(Some(gpt2_regex));
        }
    }
    Ok(tokenizer)
}

/// The text of token `id`, for templates that need `bos_token`/`eos_token`.
pub(crate) fn token_text(tokenizer: &Tokenizer, id: u32) -> Option<String> {
    tokenizer.id_to_token(id)
}

/// Encodes `text`; `add_special_tokens` lets the tokenizer add its BOS (plain prompts), which
/// a rendered chat template already contains.
pub(crate) fn encode(
    tokenizer: &Tokenizer,
    text: &str,
    add_special_tokens: bool,
) -> Result<Vec<u32>> {
    tokenizer
        .encode_fast(text, add_special_tokens)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| Error::Tokenizer(format!("cannot encode the prompt: {e}")))
}
