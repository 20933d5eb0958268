//! Tokenizers: `tokenizer.json` when the model ships one, else rebuilt from the GGUF vocabulary.

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

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
    match model.as_str() {
        "gpt2" => {}
        "llama" => return sentencepiece_from_gguf(Metadata(ct)),
        _ => {
            return Err(Error::Tokenizer(format!(
                "the GGUF file's tokenizer is `{model}`, which wick can only use through a \
                 tokenizer.json: put the model's tokenizer.json next to the .gguf file (or use a \
                 repository that has one); byte-level BPE (`gpt2`) and SentencePiece (`llama`) \
                 vocabularies are rebuilt from GGUF"
            )));
        }
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

/// llama.cpp's token types in `tokenizer.ggml.token_type`.
pub(crate) const NORMAL: i32 = 1;
pub(crate) const CONTROL: i32 = 3;
pub(crate) const USER_DEFINED: i32 = 4;

/// Builds the SentencePiece BPE tokenizer (Gemma's, Llama 2's) that a GGUF file describes.
///
/// llama.cpp tokenizes such a vocabulary by repeatedly joining the adjacent pair whose joined
/// text is the best-scored token; a BPE whose merges are every such pair, ranked by that score,
/// does the same. Spaces become `▁` (with a leading one where `add_space_prefix` asks), unknown
/// characters fall back to byte tokens, control tokens are special and user-defined ones (Gemma's
/// runs of newlines) match whole before the merges, as in llama.cpp.
fn sentencepiece_from_gguf(meta: Metadata<'_>) -> Result<Tokenizer> {
    let missing = |key: &str| Error::Tokenizer(format!("the GGUF file has no `{key}`"));
    let tokens = meta
        .strings("tokenizer.ggml.tokens")
        .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
    let scores = meta
        .floats("tokenizer.ggml.scores")
        .ok_or_else(|| missing("tokenizer.ggml.scores"))?;
    let types = meta
        .integers("tokenizer.ggml.token_type")
        .unwrap_or_else(|| vec![NORMAL; tokens.len()]);
    if scores.len() != tokens.len() || types.len() != tokens.len() {
        return Err(Error::Tokenizer(
            "the GGUF vocabulary's tokens, scores and types differ in length".into(),
        ));
    }
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    let mut merges: Vec<(f32, u32, String, String)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if types[id] != NORMAL {
            continue;
        }
        for (split, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(split);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                merges.push((scores[id], id as u32, left.to_string(), right.to_string()));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges = merges.into_iter().map(|(_, _, l, r)| (l, r)).collect();
    let unknown = meta
        .integer("tokenizer.ggml.unknown_token_id")
        .and_then(|id| tokens.get(id as usize).cloned());
    let mut bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unknown) = unknown {
        bpe = bpe.unk_token(unknown);
    }
    let bpe = bpe
        .build()
        .map_err(|e| Error::Tokenizer(format!("cannot rebuild the GGUF tokenizer: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let space = Replace::new(" ", "▁").map_err(|e| Error::Tokenizer(e.to_string()))?;
    let prefix = meta
        .boolean("tokenizer.ggml.add_space_prefix")
        .unwrap_or(true);
    let mut decoders = vec![
        Replace::new("▁", " ")
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if prefix {
        tokenizer
            .with_normalizer(Some(NormalizerSequence::new(vec![
                Prepend::new("▁".into()).into(),
                space.into(),
            ])))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        decoders.push(Strip::new(' ', 1, 0).into());
    } else {
        tokenizer
            .with_normalizer(Some(space))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    let added = tokens
        .iter()
        .zip(&types)
        .filter(|(_, kind)| matches!(**kind, CONTROL | USER_DEFINED))
        .map(|(token, kind)| AddedToken::from(token.clone(), *kind == CONTROL).normalized(false));
    tokenizer
        .add_tokens(added)
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let bos = meta
        .integer("tokenizer.ggml.bos_token_id")
        .and_then(|id| tokens.get(id as usize).map(|t| (t.clone(), id)));
    if let Some((bos, id)) =
        bos.filter(|_| meta.boolean("tokenizer.ggml.add_bos_token").unwrap_or(true))
    {
        let template = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .and_then(|t| t.try_pair(format!("{bos} $A {bos} $B")))
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .special_tokens(vec![(bos, id)])
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        tokenizer.with_post_processor(Some(template));
    }
    Ok(tokenizer)
}

/// Streaming detokenization: the tokenizers crate's decode-stream step (each piece is new, whole
/// UTF-8 characters), plus [`Detokenizer::flush`] for the end of a generation, which that crate's
/// `DecodeStream` lacks.
pub(crate) struct Detokenizer<'t> {
    tokenizer: &'t Tokenizer,
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl<'t> Detokenizer<'t> {
    /// Primed with `context` (the end of the prompt), so the first generated token gets the
    /// leading space some tokenizers only render after a previous token.
    pub fn new(tokenizer: &'t Tokenizer, context: &[u32]) -> Self {
        let mut detokenizer = Self {
            tokenizer,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        };
        for &id in context {
            let _ = detokenizer.step(id);
        }
        detokenizer
    }

    /// The text `id` completes, if any (`None` while a character is incomplete).
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        tokenizers::tokenizer::step_decode_stream(
            self.tokenizer,
            vec![id],
            true,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| Error::Tokenizer(format!("detokenizing failed: {e}")))
    }

    /// At the end of a generation: the whole characters still held back behind an incomplete
    /// one (a token holding a space and the first byte of an emoji, say). The incomplete bytes
    /// themselves are dropped.
    pub fn flush(&mut self) -> String {
        let Ok(text) = self.tokenizer.decode(&self.ids, true) else {
            return String::new();
        };
        let text = text.trim_end_matches('\u{FFFD}');
        match text.strip_prefix(self.prefix.as_str()) {
            Some(rest) if !rest.is_empty() => {
                let rest = rest.to_string();
                self.prefix = text.to_string();
                rest
            }
            _ => String::new(),
        }
    }
}

/// Names tokens by the text each adds after `before`, special tokens shown: how
/// log-probabilities name a token and its alternatives. Decoded after the token before it, so
/// that a SentencePiece word keeps the leading space that decoding it alone drops; a piece of a
/// multi-byte character shows as U+FFFD. `before` is decoded once for all of them.
pub(crate) fn pieces_after(tokenizer: &Tokenizer, before: Option<u32>) -> impl Fn(u32) -> String {
    let decode = move |ids: &[u32]| tokenizer.decode(ids, false).unwrap_or_default();
    let alone = before.map(|before| (before, decode(&[before])));
    move |id| {
        if let Some((before, alone)) = &alone
            && let Some(piece) = decode(&[*before, id]).strip_prefix(alone.as_str())
        {
            return piece.to_string();
        }
        decode(&[id])
    }
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
