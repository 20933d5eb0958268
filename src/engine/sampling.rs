//! Turning logits into the next token, and deciding when the text must stop.

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How to pick tokens and when to stop. The defaults follow common practice for chat models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// 0 picks the most likely token every time (greedy).
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities add up to `top_p` (1 = all).
    pub top_p: f64,
    /// Divides the logits of recently seen tokens (1 = off).
    pub repeat_penalty: f32,
    /// How many of the latest tokens (prompt included) the repeat penalty looks at.
    pub repeat_last_n: usize,
    /// Random seed; the same seed and parameters give the same text.
    pub seed: Option<u64>,
    /// The generation ends before any of these texts, which are not part of the output.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks generate an exact token count).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: None,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: the reproducible choice for tests and benchmarks.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::InvalidRequest(m));
        if self.max_tokens == 0 {
            return invalid("max_tokens must be at least 1".into());
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return invalid(format!(
                "temperature must be a number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return invalid(format!(
                "repeat_penalty must be > 0, got {}",
                self.repeat_penalty
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return invalid("stop sequences must not be empty".into());
        }
        Ok(())
    }
}

/// Samples tokens for one sequence.
pub(crate) struct Sampler {
    processor: LogitsProcessor,
    repeat_penalty: f32,
    repeat_last_n: usize,
}

impl Sampler {
    pub fn new(params: &SamplingParams, seed: u64) -> Self {
        let temperature = params.temperature;
        let k = params.top_k;
        let p = params.top_p;
        let sampling = if temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            match (k > 0, p < 1.0) {
                (false, false) => Sampling::All { temperature },
                (true, false) => Sampling::TopK { k, temperature },
                (false, true) => Sampling::TopP { p, temperature },
                (true, true) => Sampling::TopKThenTopP { k, p, temperature },
            }
        };
        Self {
            processor: LogitsProcessor::from_sampling(seed, sampling),
            repeat_penalty: params.repeat_penalty,
            repeat_last_n: params.repeat_last_n,
        }
    }

    /// Picks the next token from the last position's logits; `history` is every token so far.
    pub fn sample(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32> {
        let logits = logits.to_dtype(candle_core::DType::F32)?;
        let logits = if self.repeat_penalty == 1.0 || self.repeat_last_n == 0 {
            logits
        } else {
            let start = history.len().saturating_sub(self.repeat_last_n);
            candle_transformers::utils::apply_repeat_penalty(
                &logits,
                self.repeat_penalty,
                &history[start..],
            )?
        };
        Ok(self.processor.sample(&logits)?)
    }
}

/// Holds back text that might be the start of a stop sequence, and finds where one begins.
#[derive(Debug, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    /// Text decoded but not yet released.
    pending: String,
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StopCheck {
    /// Release this text (possibly empty) and go on.
    Continue(String),
    /// A stop sequence began: release this text, then end the generation.
    Stop(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            pending: String::new(),
        }
    }

    pub fn push(&mut self, delta: &str) -> StopCheck {
        self.pending.push_str(delta);
        if self.stops.is_empty() {
            return StopCheck::Continue(std::mem::take(&mut self.pending));
        }
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s)).min() {
            self.pending.truncate(at);
            return StopCheck::Stop(std::mem::take(&mut self.pending));
        }
        // Keep the longest tail that some stop sequence starts with; release the rest.
        let held = self
            .stops
            .iter()
            .map(|stop| longest_suffix_prefix(&self.pending, stop))
            .max()
            .unwrap_or(0);
        let release = self.pending.len() - held;
        let rest = self.pending.split_off(release);
        StopCheck::Continue(std::mem::replace(&mut self.pending, rest))
    }

    /// The held text, released when the generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on a char boundary.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && stop.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            match m.push(d) {
                StopCheck::Continue(t) => out.push_str(&t),
                StopCheck::Stop(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_sequence_split_across_tokens_is_not_emitted() {
        assert_eq!(
            run(&["\n\n"], &["Hi", "\n", "\n", "there"]),
            ("Hi".into(), true)
        );
        assert_eq!(run(&["END"], &["aE", "N", "Dz"]), ("a".into(), true));
    }

    #[test]
    fn held_text_is_released_when_it_is_not_a_stop() {
        assert_eq!(run(&["END"], &["aE", "N", "x"]), ("aENx".into(), false));
        assert_eq!(run(&["END"], &["aEN"]), ("aEN".into(), false));
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_text_is_safe() {
        assert_eq!(run(&["b", "a"], &["xab"]), ("x".into(), true));
        assert_eq!(run(&["é!"], &["café", "?"]), ("café?".into(), false));
    }

    #[test]
    fn validation_messages() {
        let bad = SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("temperature")
        );
        let bad = SamplingParams {
            max_tokens: 0,
            ..SamplingParams::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("max_tokens")
        );
    }
}
