//! Constrained decoding with llguidance: a request's JSON schema, regex or Lark grammar becomes a
//! matcher that, at each step, allows only the tokens that keep the output valid.

use std::sync::{Arc, OnceLock};

use candle_core::Tensor;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::SimpleVob;
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;
use toktrie_hf_tokenizers::ByteTokenizer;

use crate::error::{Error, Result};

/// What a generation's text must match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Constraint {
    /// JSON valid against this JSON schema.
    JsonSchema(serde_json::Value),
    /// Any JSON object.
    JsonObject,
    /// A regular expression (the whole text).
    Regex(String),
    /// A Lark grammar, in llguidance's dialect.
    Lark(String),
    /// The calls `tool_choice` requires, as a Lark grammar over the tools' schemas.
    ToolCalls(String),
}

impl Constraint {
    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Constraint::JsonSchema(schema) => TopLevelGrammar::from_json_schema(layout(schema)),
            Constraint::JsonObject => {
                TopLevelGrammar::from_json_schema(layout(&serde_json::json!({ "type": "object" })))
            }
            Constraint::Regex(regex) => TopLevelGrammar::from_regex(regex),
            Constraint::Lark(lark) | Constraint::ToolCalls(lark) => {
                TopLevelGrammar::from_lark(lark.clone())
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "the JSON schema",
            Constraint::JsonObject => "the JSON object grammar",
            Constraint::Regex(_) => "the regex",
            Constraint::Lark(_) => "the grammar",
            Constraint::ToolCalls(_) => "a tool's parameters schema",
        }
    }
}

/// `schema` with JSON laid out on one line, `{"a": 1, "b": [2, 3]}`, unless it sets its own
/// llguidance options (`x-guidance`): free whitespace lets a small model pad the text with blank
/// lines until `max_tokens` runs out.
pub(crate) fn layout(schema: &serde_json::Value) -> serde_json::Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

/// A model's grammar compiler, built from its tokenizer on the first constrained request (it
/// indexes every token's bytes, which takes a moment on a large vocabulary).
pub(crate) struct Grammars {
    tokenizer: Arc<Tokenizer>,
    stop_ids: Vec<u32>,
    factory: OnceLock<std::result::Result<ParserFactory, String>>,
}

impl Grammars {
    pub fn new(tokenizer: Arc<Tokenizer>, stop_ids: Vec<u32>) -> Self {
        Self {
            tokenizer,
            stop_ids,
            factory: OnceLock::new(),
        }
    }

    /// A matcher for `constraint`; a constraint that does not compile is the caller's error,
    /// named, before any work.
    pub fn matcher(&self, constraint: &Constraint) -> Result<Matcher> {
        let factory = self
            .factory
            .get_or_init(|| self.factory().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| {
                Error::InvalidRequest(format!(
                    "constrained decoding is unavailable for this model's tokenizer: {e}"
                ))
            })?;
        let refused =
            |e: String| Error::InvalidRequest(format!("{} cannot be used: {e}", constraint.name()));
        let parser = factory
            .create_parser(constraint.grammar())
            .map_err(|e| refused(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(refused(e)),
            None => Ok(matcher),
        }
    }

    fn factory(&self) -> anyhow::Result<ParserFactory> {
        let json = self
            .tokenizer
            .to_string(false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut tokenizer = ByteTokenizer::from_json_bytes(json.as_bytes())?;
        tokenizer.set_eos_tokens(&self.stop_ids);
        let mut factory = ParserFactory::new_simple(&tokenizer.into_tok_env(None)?)?;
        factory.quiet();
        Ok(factory)
    }
}

/// The tokens `matcher` allows next.
pub(crate) fn next_mask(matcher: &mut Matcher) -> std::result::Result<SimpleVob, String> {
    matcher
        .compute_mask()
        .map_err(|e| format!("the constraint failed: {e}"))
}

/// `logits` `(vocab,)` with every token not in `allowed` set to −∞.
pub(crate) fn apply(allowed: &SimpleVob, logits: &Tensor) -> std::result::Result<Tensor, String> {
    let masked = || -> Result<Tensor> {
        let mut values: Vec<f32> = logits
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        for (id, value) in values.iter_mut().enumerate() {
            if id >= allowed.len() || !allowed.is_allowed(id as u32) {
                *value = f32::NEG_INFINITY;
            }
        }
        Ok(Tensor::from_vec(
            values,
            logits.elem_count(),
            logits.device(),
        )?)
    };
    masked().map_err(|e| format!("the constraint's mask failed: {e}"))
}

/// Whether `grammar` (Lark) admits all of `text`: for tests, on a tokenizer of single bytes.
#[cfg(test)]
pub(crate) fn lark_accepts(grammar: &str, text: &str) -> bool {
    use llguidance::toktrie::ApproximateTokEnv;
    let env = ApproximateTokEnv::single_byte_env();
    let Ok(factory) = ParserFactory::new_simple(&env) else {
        return false;
    };
    let parser = factory.create_parser(TopLevelGrammar::from_lark(grammar.to_string()));
    let mut matcher = Matcher::new(parser);
    let tokens = env.tokenize_bytes(text.as_bytes());
    matcher.consume_tokens(&tokens).is_ok() && matcher.is_accepting().unwrap_or(false)
}
