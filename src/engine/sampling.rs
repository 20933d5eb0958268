//! Turning logits into the next token, and deciding when the text must stop.

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};

use super::constraint::Constraint;
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
    /// Report each sampled token's log-probability and those of this many most likely tokens
    /// (up to [`MAX_TOP_LOGPROBS`]); `None` reports none.
    pub logprobs: Option<usize>,
    /// Also score the prompt: each of its tokens' log-probability (but the first's) and those
    /// of this many most likely tokens, in the summary. The whole prompt is computed (no prefix
    /// from the cache), and `max_tokens` may be 0 to score it only.
    pub prompt_logprobs: Option<usize>,
    /// What the text must match (JSON schema, regex, grammar); sampling picks only among the
    /// tokens that keep it valid.
    pub constraint: Option<Constraint>,
}

/// The most alternatives a token's log-probabilities list, as OpenAI allows.
pub const MAX_TOP_LOGPROBS: usize = 20;

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
            logprobs: None,
            prompt_logprobs: None,
            constraint: None,
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
        if self.max_tokens == 0 && self.prompt_logprobs.is_none() {
            return invalid("max_tokens must be at least 1 (0 only to score the prompt)".into());
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
        if let Some(n) = self.logprobs.max(self.prompt_logprobs)
            && n > MAX_TOP_LOGPROBS
        {
            return invalid(format!(
                "at most {MAX_TOP_LOGPROBS} top log-probabilities per token, got {n}"
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return invalid("stop sequences must not be empty".into());
        }
        Ok(())
    }
}

/// A sampled token's log-probability and the most likely tokens', in the model's own
/// distribution: the logits before the repeat penalty, temperature and truncation, as OpenAI
/// and vLLM report them.
#[derive(Clone, Debug, PartialEq)]
pub struct Logprobs {
    pub token: Scored,
    /// Most likely first (ties: lower id first).
    pub top: Vec<Scored>,
}

/// A prompt's log-probabilities: its first token has none (nothing comes before it); each
/// other token's come from the logits of the position before it.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptLogprobs {
    /// The first token's text.
    pub first: String,
    pub rest: Vec<Logprobs>,
}

/// A token, its text where it stands (special tokens shown), and its log-probability.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
}

impl Logprobs {
    /// From the last position's `logits`, for the sampled `token` and the `top` most likely;
    /// `text` names a token.
    pub(crate) fn of(
        logits: &Tensor,
        token: u32,
        top: usize,
        text: impl Fn(u32) -> String,
    ) -> Result<Self> {
        let logits: Vec<f32> = logits
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        let log_total = f64::from(max) + sum.ln();
        let scored = |id: u32| Scored {
            id,
            text: text(id),
            logprob: logits
                .get(id as usize)
                .map_or(f32::NEG_INFINITY, |&l| (f64::from(l) - log_total) as f32),
        };
        let more_likely = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        let top = top.min(ids.len());
        if top > 0 && top < ids.len() {
            ids.select_nth_unstable_by(top - 1, more_likely);
        }
        ids.truncate(top);
        ids.sort_unstable_by(more_likely);
        Ok(Self {
            token: scored(token),
            top: ids.into_iter().map(scored).collect(),
        })
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

    #[test]
    fn logprobs_are_the_log_softmax_of_the_raw_logits_most_likely_first() {
        let logits = Tensor::new(&[1.0f32, 3.0, 2.0, 3.0, -1.0], &candle_core::Device::Cpu)
            .expect("a tensor");
        let total: f64 = [1.0f64, 3.0, 2.0, 3.0, -1.0].iter().map(|l| l.exp()).sum();
        let expected = |l: f64| (l - total.ln()) as f32;
        let text = |id: u32| format!("t{id}");
        let logprobs = Logprobs::of(&logits, 2, 3, text).expect("logprobs");
        assert!(
            (logprobs.token.logprob - expected(2.0)).abs() < 1e-6,
            "{logprobs:?}"
        );
        assert_eq!(logprobs.token.text, "t2");
        // Ties keep the lower id first.
        let ids: Vec<u32> = logprobs.top.iter().map(|t| t.id).collect();
        assert_eq!(ids, [1, 3, 2]);
        for t in &logprobs.top {
            let raw = [1.0, 3.0, 2.0, 3.0, -1.0][t.id as usize];
            assert!((t.logprob - expected(raw)).abs() < 1e-6, "{logprobs:?}");
            assert_eq!(t.text, text(t.id));
        }
        assert!(
            Logprobs::of(&logits, 4, 0, text)
                .expect("logprobs")
                .top
                .is_empty()
        );
        assert_eq!(
            Logprobs::of(&logits, 4, 20, text)
                .expect("logprobs")
                .top
                .len(),
            5
        );
    }

    #[test]
    fn more_top_logprobs_than_allowed_are_refused() {
        let params = SamplingParams {
            logprobs: Some(MAX_TOP_LOGPROBS + 1),
            ..SamplingParams::default()
        };
        let message = params.validate().expect_err("refused").to_string();
        assert!(message.contains("20"), "{message}");
    }

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
