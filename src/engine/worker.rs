//! The decode loop. It runs on its own OS thread per loaded model, because candle's forward
//! passes are blocking, CPU-heavy work that must stay off tokio's async workers.
//!
//! Requests wait in a bounded queue. Up to `max_active` of them are in flight at once, each with
//! its own KV cache, and the loop advances them in turn, one token each (a long generation does
//! not hold the others back). Before every step it checks whether the caller is still there: a
//! dropped stream or a fired cancellation token ends that sequence and frees its cache at once.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Counters;
use super::model::{KvCache, Segment, Transformer};
use super::sampling::{Sampler, SamplingParams, StopCheck, StopMatcher};
use super::stream::{FinishReason, Summary, Token, TokenEvent};
use super::tokenizer::Detokenizer;

/// One admitted request, as the worker receives it.
pub(crate) struct Job {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub seed: u64,
    pub events: mpsc::Sender<TokenEvent>,
    pub cancel: CancellationToken,
    pub enqueued: Instant,
}

impl Job {
    fn abandoned(&self) -> bool {
        self.cancel.is_cancelled() || self.events.is_closed()
    }
}

/// What the loop needs besides the queue.
pub(crate) struct WorkerSetup {
    pub name: String,
    /// The weights, shared by every sequence; each brings its own cache.
    pub model: Arc<Transformer>,
    pub tokenizer: Arc<Tokenizer>,
    pub stop_ids: HashSet<u32>,
    pub max_active: usize,
    pub counters: Arc<Counters>,
}

pub(crate) fn spawn(setup: WorkerSetup, jobs: mpsc::Receiver<Job>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("wick-engine-{}", setup.name))
        .spawn(move || run(setup, jobs))
        .map(|_| ())
}

/// The longest prompt slice one forward pass takes.
const PREFILL_CHUNK: usize = 512;

fn run(setup: WorkerSetup, mut jobs: mpsc::Receiver<Job>) {
    let tokenizer = setup.tokenizer.clone();
    let capacity = setup.max_active.max(1);
    let mut active: Vec<Sequence<'_>> = Vec::new();
    loop {
        while active.len() < capacity {
            let job = if active.is_empty() {
                match jobs.blocking_recv() {
                    Some(job) => job,
                    None => {
                        tracing::debug!(model = %setup.name, "engine stopped");
                        return;
                    }
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            setup.counters.queued.fetch_sub(1, Relaxed);
            if job.abandoned() {
                tracing::info!(model = %setup.name, "request cancelled while queued");
                setup.counters.cancelled.fetch_add(1, Relaxed);
                continue;
            }
            setup.counters.active.fetch_add(1, Relaxed);
            let mut seq = Sequence::new(job, &tokenizer, setup.counters.clone());
            // The cache holds every position the request may reach, allocated once.
            let capacity = seq.job.prompt.len() + seq.job.params.max_tokens;
            match setup.model.new_cache(capacity) {
                Ok(cache) => {
                    setup.counters.kv_bytes.fetch_add(cache.bytes(), Relaxed);
                    seq.cache = Some(cache);
                    active.push(seq);
                }
                Err(e) => seq.finish(
                    FinishReason::Error,
                    Some(format!("cannot allocate the KV cache: {e}")),
                ),
            }
        }

        for seq in &mut active {
            let step = std::panic::catch_unwind(AssertUnwindSafe(|| seq.step(&setup)));
            if let Err(panic) = step {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                tracing::error!(model = %setup.name, "the model panicked: {message}");
                seq.finish(
                    FinishReason::Error,
                    Some(format!("internal model error: {message}")),
                );
            }
        }

        // A finished sequence is dropped with its cache.
        active.retain(|seq| !seq.finished);
    }
}

/// One request in flight: its cache, sampler, detokenizer and bookkeeping. Every sampled token
/// produces one [`TokenEvent::Token`] (its text may be empty), then one [`TokenEvent::Done`].
struct Sequence<'t> {
    job: Job,
    /// Set once admitted; dropped (and its memory freed) when the sequence finishes.
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
    fn new(job: Job, tokenizer: &'t Tokenizer, counters: Arc<Counters>) -> Self {
        let tail = job.prompt.len().saturating_sub(4);
        let decoder = Detokenizer::new(tokenizer, &job.prompt[tail..]);
        Self {
            sampler: Sampler::new(&job.params, job.seed),
            stops: StopMatcher::new(job.params.stop.clone()),
            history: job.prompt.clone(),
            job,
            cache: None,
            decoder,
            generated: 0,
            admitted: Instant::now(),
            prefilled: None,
            first_token: None,
            finished: false,
            counters,
        }
    }

    /// Advances by one forward pass: a prompt chunk, or one new token.
    fn step(&mut self, setup: &WorkerSetup) {
        if self.job.abandoned() {
            tracing::info!(
                model = %setup.name,
                generated = self.generated,
                "request cancelled by the client; freeing its slot"
            );
            self.counters.cancelled.fetch_add(1, Relaxed);
            self.finish(FinishReason::Cancelled, None);
            return;
        }
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        // A prompt goes in chunks, so other sequences get tokens between them; then one token
        // at a time.
        let fed = cache.len();
        let prompt = &self.job.prompt;
        let tokens = match fed < prompt.len() {
            true => &prompt[fed..(fed + PREFILL_CHUNK).min(prompt.len())],
            false => &self.history[self.history.len() - 1..],
        };
        let prefilling = fed + tokens.len() < prompt.len();
        let result = setup
            .model
            .forward(&mut [Segment {
                cache,
                tokens,
                logits: !prefilling,
            }])
            .and_then(|logits| Ok(logits.squeeze(0)?));
        if prefilling && result.is_ok() {
            return;
        }
        if fed < prompt.len() {
            self.prefilled = Some(Instant::now());
        }
        match result {
            Ok(logits) => self.accept(&logits, setup),
            Err(e) => {
                tracing::error!(model = %setup.name, "forward pass failed: {e}");
                self.finish(
                    FinishReason::Error,
                    Some(format!("forward pass failed: {e}")),
                );
            }
        }
    }

    /// Samples the next token from `logits`, emits its text, and decides whether to stop.
    fn accept(&mut self, logits: &Tensor, setup: &WorkerSetup) {
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
        let eos = !self.job.params.ignore_eos && setup.stop_ids.contains(&token);
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

    fn finish(&mut self, reason: FinishReason, error: Option<String>) {
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
            time_to_first_token: self
                .first_token
                .map(|t| t - self.job.enqueued)
                .unwrap_or_default(),
            total_time: now - self.admitted,
            prefill_tokens_per_second: rate(self.job.prompt.len(), prefill_time),
            decode_tokens_per_second: rate(self.generated.saturating_sub(1), decode_time),
            error,
        };
        // The slot and its memory are free from the moment the caller can see the summary.
        if let Some(cache) = self.cache.take() {
            self.counters.kv_bytes.fetch_sub(cache.bytes(), Relaxed);
        }
        self.counters.active.fetch_sub(1, Relaxed);
        let _ = self.job.events.try_send(TokenEvent::Done(summary));
    }
}
