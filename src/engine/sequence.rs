//! One request in flight: its KV cache, what it feeds the next step, and what becomes of the
//! logits it gets back (sampling, detokenizing, stop texts, events, timings).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Counters;
use super::model::{KvCache, Segment};
use super::sampling::{Sampler, SamplingParams, StopCheck, StopMatcher};
use super::stream::{FinishReason, Summary, Token, TokenEvent};
use super::tokenizer::Detokenizer;

/// One admitted request, as the engine thread receives it.
pub(crate) struct Job {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub seed: u64,
    pub events: mpsc::Sender<TokenEvent>,
    pub cancel: CancellationToken,
    pub enqueued: Instant,
}

impl Job {
    /// The caller cancelled or dropped its stream.
    pub fn abandoned(&self) -> bool {
        self.cancel.is_cancelled() || self.events.is_closed()
    }

    /// Every position the request may reach: its cache is sized for them up front.
    pub fn positions(&self) -> usize {
        self.prompt.len() + self.params.max_tokens
    }

    /// Ends a request that never ran.
    pub fn fail(self, error: String) {
        let summary = Summary {
            finish_reason: FinishReason::Error,
            prompt_tokens: self.prompt.len(),
            completion_tokens: 0,
            queue_time: self.enqueued.elapsed(),
            time_to_first_token: Duration::ZERO,
            total_time: Duration::ZERO,
            prefill_tokens_per_second: 0.0,
            decode_tokens_per_second: 0.0,
            error: Some(error),
        };
        let _ = self.events.try_send(TokenEvent::Done(summary));
    }
}

/// Every sampled token produces one [`TokenEvent::Token`] (its text may be empty), then one
/// [`TokenEvent::Done`] ends the stream.
pub(crate) struct Sequence<'t> {
    pub job: Job,
    /// Dropped, and its memory freed, when the sequence finishes.
    cache: Option<KvCache>,
    sampler: Sampler,
    decoder: Detokenizer<'t>,
    stops: StopMatcher,
    /// Prompt and generated tokens, for the repeat penalty.
    history: Vec<u32>,
    generated: usize,
    admitted: Instant,
    prefilled: Option<Instant>,
    first_token: Option<Instant>,
    finished: bool,
    counters: Arc<Counters>,
}

impl<'t> Sequence<'t> {
    pub fn new(
        job: Job,
        cache: KvCache,
        tokenizer: &'t Tokenizer,
        counters: Arc<Counters>,
    ) -> Self {
        let tail = job.prompt.len().saturating_sub(4);
        let decoder = Detokenizer::new(tokenizer, &job.prompt[tail..]);
        counters.active.fetch_add(1, Relaxed);
        counters.kv_bytes.fetch_add(cache.bytes(), Relaxed);
        Self {
            sampler: Sampler::new(&job.params, job.seed),
            stops: StopMatcher::new(job.params.stop.clone()),
            history: job.prompt.clone(),
            job,
            cache: Some(cache),
            decoder,
            generated: 0,
            admitted: Instant::now(),
            prefilled: None,
            first_token: None,
            finished: false,
            counters,
        }
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Bytes its cache holds (0 once finished).
    pub fn cache_bytes(&self) -> usize {
        self.cache.as_ref().map_or(0, KvCache::bytes)
    }

    /// Prompt tokens not yet in the cache.
    pub fn prompt_left(&self) -> usize {
        let fed = self.cache.as_ref().map_or(0, KvCache::len);
        self.job.prompt.len().saturating_sub(fed)
    }

    /// Rows the next step feeds this sequence: its next prompt chunk, or the one token it
    /// sampled last. Chunks end at multiples of `chunk`, so they are the same whatever else runs
    /// (a row's arithmetic may depend on its segment's length, never on its neighbours).
    pub fn next_rows(&self, chunk: usize) -> usize {
        let fed = self.job.prompt.len() - self.prompt_left();
        match self.prompt_left() {
            0 => 1,
            _ => ((fed / chunk + 1) * chunk).min(self.job.prompt.len()) - fed,
        }
    }

    /// What the next step feeds this sequence (see [`Sequence::next_rows`]).
    pub fn segment(&mut self, chunk: usize) -> Option<Segment<'_>> {
        let rows = self.next_rows(chunk);
        let cache = self.cache.as_mut()?;
        let fed = cache.len();
        let prompt = &self.job.prompt;
        let (tokens, logits) = match fed < prompt.len() {
            true => (&prompt[fed..fed + rows], fed + rows == prompt.len()),
            false => (&self.history[self.history.len() - 1..], true),
        };
        Some(Segment {
            cache,
            tokens,
            logits,
        })
    }

    /// Ends the sequence at a cancelled caller's request; true if it did.
    pub fn end_if_abandoned(&mut self, model: &str) -> bool {
        if self.finished || !self.job.abandoned() {
            return false;
        }
        tracing::info!(
            model,
            generated = self.generated,
            "request cancelled (its caller went away, or a shutdown cut it off); freeing its slot"
        );
        self.counters.cancelled.fetch_add(1, Relaxed);
        self.finish(FinishReason::Cancelled, None);
        true
    }

    /// Takes the result of a step that fed this sequence a prompt chunk (`logits` is `None`
    /// until the last one) or its last token.
    pub fn accept(&mut self, logits: Option<&Tensor>, stop_ids: &HashSet<u32>) {
        let Some(logits) = logits else {
            return;
        };
        if self.prefilled.is_none() {
            self.prefilled = Some(Instant::now());
        }
        let token = match self.sampler.sample(logits, &self.history) {
            Ok(token) => token,
            Err(e) => {
                self.finish(FinishReason::Error, Some(format!("sampling failed: {e}")));
                return;
            }
        };
        self.generated += 1;
        self.counters.tokens.fetch_add(1, Relaxed);
        self.first_token.get_or_insert_with(Instant::now);
        let eos = !self.job.params.ignore_eos && stop_ids.contains(&token);
        let last = eos || self.generated >= self.job.params.max_tokens;
        let mut text = String::new();
        if !eos {
            self.history.push(token);
            match self.decoder.step(token) {
                Ok(piece) => text = piece.unwrap_or_default(),
                Err(e) => {
                    self.finish(FinishReason::Error, Some(e.to_string()));
                    return;
                }
            }
        }
        // At the end, whatever whole characters the detokenizer still holds come out too.
        if last {
            text.push_str(&self.decoder.flush());
        }
        match self.stops.push(&text) {
            StopCheck::Stop(text) => {
                self.emit(token, text);
                self.finish(FinishReason::Stop, None);
            }
            StopCheck::Continue(text) if last => {
                let text = text + &self.stops.flush();
                self.emit(token, text);
                let reason = match eos {
                    true => FinishReason::Stop,
                    false => FinishReason::Length,
                };
                self.finish(reason, None);
            }
            StopCheck::Continue(text) => self.emit(token, text),
        }
    }

    fn emit(&mut self, id: u32, text: String) {
        let event = TokenEvent::Token(Token {
            id,
            text,
            index: self.generated,
        });
        // The channel has room for every event of the request, so a send fails only when the
        // caller dropped the stream, which the next step treats as a cancellation.
        let _ = self.job.events.try_send(event);
    }

    /// Sends the summary and frees the cache.
    pub fn finish(&mut self, reason: FinishReason, error: Option<String>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let now = Instant::now();
        let prefill_time = self.prefilled.map(|t| t - self.admitted);
        let decode_time = self.first_token.map(|t| now - t);
        let rate = |tokens: usize, time: Option<Duration>| match time {
            Some(t) if tokens > 0 && !t.is_zero() => tokens as f64 / t.as_secs_f64(),
            _ => 0.0,
        };
        let summary = Summary {
            finish_reason: reason,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.generated,
            queue_time: self.admitted - self.job.enqueued,
            time_to_first_token: self
                .first_token
                .map(|t| t - self.job.enqueued)
                .unwrap_or_default(),
            total_time: now - self.admitted,
            prefill_tokens_per_second: rate(self.job.prompt.len(), prefill_time),
            decode_tokens_per_second: rate(self.generated.saturating_sub(1), decode_time),
            error,
        };
        // The memory is free from the moment the caller can see the summary.
        if let Some(cache) = self.cache.take() {
            self.counters.kv_bytes.fetch_sub(cache.bytes(), Relaxed);
        }
        self.counters.active.fetch_sub(1, Relaxed);
        let _ = self.job.events.try_send(TokenEvent::Done(summary));
    }
}
