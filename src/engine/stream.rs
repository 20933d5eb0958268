//! What a generation sends back: a stream of [`TokenEvent`]s that ends with a [`Summary`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::sampling::{Logprobs, PromptLogprobs};

// These doc comments are also the MCP tools' schema descriptions: no intra-doc links.
/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence or end-of-turn token, or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller dropped the stream or cancelled the request.
    Cancelled,
    /// The engine failed; the error message says how.
    Error,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sampled token. `text` is the new, UTF-8 complete text it adds; it is empty while the
/// decoder waits for the rest of a multi-byte character or while the text might still turn out
/// to be the start of a stop sequence (the held text arrives with a later token). A generation
/// that ends inside a multi-byte character drops its incomplete bytes: text is only ever whole
/// characters, and `id` still records every token.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub id: u32,
    pub text: String,
    /// 1-based count of tokens generated so far, this one included.
    pub index: usize,
    /// Present when the request asked for them (`SamplingParams::logprobs`).
    pub logprobs: Option<Logprobs>,
}

/// The last event of every generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache instead of being computed.
    #[serde(default)]
    pub cached_tokens: usize,
    /// Tokens sampled, including a final end-of-sequence token.
    pub completion_tokens: usize,
    /// From the request reaching the engine to its admission: time spent waiting for a slot.
    #[serde(with = "duration_secs")]
    pub queue_time: Duration,
    /// From the request reaching the engine to the first sampled token (queueing + prefill).
    #[serde(with = "duration_secs")]
    pub time_to_first_token: Duration,
    /// Wall time spent in the engine, queueing excluded.
    #[serde(with = "duration_secs")]
    pub total_time: Duration,
    /// Prompt tokens per second of prefill.
    pub prefill_tokens_per_second: f64,
    /// Tokens per second after the first token.
    pub decode_tokens_per_second: f64,
    /// Set when `finish_reason` is `error`.
    pub error: Option<String>,
    /// When the request asked for them (`SamplingParams::prompt_logprobs`).
    #[serde(skip)]
    pub prompt_logprobs: Option<PromptLogprobs>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "prompt {} tokens, completion {} tokens, first token {:.0} ms, decode {:.1} tokens/s, finish {}",
            self.prompt_tokens,
            self.completion_tokens,
            self.time_to_first_token.as_secs_f64() * 1e3,
            self.decode_tokens_per_second,
            self.finish_reason,
        )?;
        if let Some(error) = &self.error {
            write!(f, " ({error})")?;
        }
        Ok(())
    }
}

mod duration_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)?.max(0.0)))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum TokenEvent {
    Token(Token),
    Done(Summary),
}

/// The tokens of one generation as they are produced. Dropping it cancels the generation at the
/// next token and frees its place in the engine.
pub struct TokenStream {
    inner: Pin<Box<dyn Stream<Item = TokenEvent> + Send>>,
}

impl TokenStream {
    pub(crate) fn new(mut rx: mpsc::Receiver<TokenEvent>) -> Self {
        let inner = async_stream::stream! {
            let mut done = false;
            while let Some(event) = rx.recv().await {
                done = matches!(event, TokenEvent::Done(_));
                yield event;
                if done {
                    break;
                }
            }
            if !done {
                yield TokenEvent::Done(Summary::failed("the engine stopped before finishing this request"));
            }
        };
        Self {
            inner: Box::pin(inner),
        }
    }

    /// Waits for the whole generation.
    pub async fn collect_text(mut self) -> Completion {
        let mut text = String::new();
        let mut tokens = Vec::new();
        while let Some(event) = self.next().await {
            match event {
                TokenEvent::Token(token) => {
                    text.push_str(&token.text);
                    tokens.push(token.id);
                }
                TokenEvent::Done(summary) => {
                    return Completion {
                        text,
                        tokens,
                        summary,
                    };
                }
            }
        }
        // `new` always ends the stream with `Done`.
        Completion {
            text,
            tokens,
            summary: Summary::failed("stream ended without a summary"),
        }
    }
}

impl Stream for TokenStream {
    type Item = TokenEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TokenEvent>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A finished generation.
#[derive(Clone, Debug)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    pub summary: Summary,
}

impl Summary {
    pub(crate) fn failed(message: &str) -> Self {
        Summary {
            finish_reason: FinishReason::Error,
            prompt_tokens: 0,
            cached_tokens: 0,
            completion_tokens: 0,
            queue_time: Duration::ZERO,
            time_to_first_token: Duration::ZERO,
            total_time: Duration::ZERO,
            prefill_tokens_per_second: 0.0,
            decode_tokens_per_second: 0.0,
            error: Some(message.to_string()),
            prompt_logprobs: None,
        }
    }
}
