//! One request in flight: its block table, what it feeds the next step, and what becomes of the
//! logits it gets back (sampling, detokenizing, stop texts, events, timings).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use llguidance::Matcher;
use llguidance::toktrie::SimpleVob;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Counters;
use super::constraint;
use super::kv::{Admission, BlockTable, KvManager};
use super::model::{Logits, Segment};
use super::sampling::{Logprobs, PromptLogprobs, Sampler, SamplingParams, StopCheck, StopMatcher};
use super::stream::{FinishReason, Summary, Token, TokenEvent};
use super::tokenizer::{self, Detokenizer};

/// One admitted request, as the engine thread receives it.
pub(crate) struct Job {
    pub prompt: Vec<u32>,
    /// The constraint's state, for a request with one (`SamplingParams::constraint`).
    pub matcher: Option<Matcher>,
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

    /// Whether its prompt may start from cached blocks: not when the prompt's own
    /// log-probabilities are wanted, which take every position's logits.
    pub fn shares_prefix(&self) -> bool {
        self.params.prompt_logprobs.is_none()
    }
}

/// Every sampled token produces one [`TokenEvent::Token`] (its text may be empty), then one
/// [`TokenEvent::Done`] ends the stream.
pub(crate) struct Sequence<'t> {
    pub job: Job,
    /// Its blocks; `None` while preempted and once finished (the scheduler frees them).
    table: Option<BlockTable>,
    /// Positions whose keys and values are in its blocks.
    fed: usize,
    /// Rows the step in flight feeds it.
    feeding: usize,
    /// Whether the step in flight samples its next token (from its last logits).
    sampling: bool,
    /// Prompt positions found in the prefix cache at its first admission.
    cached_tokens: usize,
    /// Tokens fed again per step after a preemption (`Transformer::replay_rows`).
    replay_rows: usize,
    sampler: Sampler,
    tokenizer: &'t Tokenizer,
    decoder: Detokenizer<'t>,
    /// The prompt's log-probabilities so far, when asked for: those of token `i + 1`.
    prompt_logprobs: Vec<Logprobs>,
    stops: StopMatcher,
    /// The constraint's mask for the next token, where it was computed beside the forward pass.
    mask: Option<Result<SimpleVob, String>>,
    /// Prompt and generated tokens, for the repeat penalty.
    history: Vec<u32>,
    generated: usize,
    admitted: Instant,
    prefilled: Option<Instant>,
    first_token: Option<Instant>,
    finished: bool,
    /// The summary, sent once the scheduler has freed its blocks.
    summary: Option<Summary>,
    counters: Arc<Counters>,
}

impl<'t> Sequence<'t> {
    pub fn new(
        job: Job,
        admission: Admission,
        replay_rows: usize,
        tokenizer: &'t Tokenizer,
        counters: Arc<Counters>,
    ) -> Self {
        let tail = job.prompt.len().saturating_sub(4);
        let decoder = Detokenizer::new(tokenizer, &job.prompt[tail..]);
        counters.active.fetch_add(1, Relaxed);
        Self {
            sampler: Sampler::new(&job.params, job.seed),
            stops: StopMatcher::new(job.params.stop.clone()),
            history: job.prompt.clone(),
            job,
            table: Some(admission.table),
            fed: admission.cached,
            feeding: 0,
            sampling: false,
            cached_tokens: admission.cached,
            replay_rows,
            tokenizer,
            decoder,
            prompt_logprobs: Vec::new(),
            mask: None,
            generated: 0,
            admitted: Instant::now(),
            prefilled: None,
            first_token: None,
            finished: false,
            summary: None,
            counters,
        }
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The constraint's matcher, lent out to compute the next token's mask beside the forward
    /// pass (its state changes only when a token is sampled); `None` where there is none, or
    /// the mask is already there.
    pub fn lend_matcher(&mut self) -> Option<Matcher> {
        if self.finished || self.mask.is_some() {
            return None;
        }
        self.job.matcher.take()
    }

    /// The lent matcher back, with the mask it computed.
    pub fn return_matcher(&mut self, matcher: Matcher, mask: Result<SimpleVob, String>) {
        self.job.matcher = Some(matcher);
        self.mask = Some(mask);
    }

    /// Prompt tokens not yet in the cache.
    pub fn prompt_left(&self) -> usize {
        self.job.prompt.len().saturating_sub(self.fed)
    }

    /// Positions in the cache.
    pub fn fed(&self) -> usize {
        self.fed
    }

    /// Its block table, unless preempted or finished.
    pub fn table(&self) -> Option<&BlockTable> {
        self.table.as_ref()
    }

    /// [`Sequence::table`], to grow it.
    pub fn table_mut(&mut self) -> Option<&mut BlockTable> {
        self.table.as_mut()
    }

    /// Takes its blocks away, for the scheduler to free.
    pub fn take_table(&mut self) -> Option<BlockTable> {
        self.table.take()
    }

    /// Rows the next step feeds this sequence: its next prompt chunk (chunks end at multiples of
    /// `chunk`), tokens it generated before a preemption (fed again as decode rows, as they
    /// were first computed), or the one token it sampled last.
    pub fn next_rows(&self, chunk: usize) -> usize {
        let fed = self.fed;
        let sampled = self.history.len() - 1;
        match self.prompt_left() {
            0 if fed < sampled => (sampled - fed).min(self.replay_rows),
            0 => 1,
            _ => ((fed / chunk + 1) * chunk).min(self.job.prompt.len()) - fed,
        }
    }

    /// What the next step feeds this sequence (see [`Sequence::next_rows`]); `None` without
    /// blocks.
    pub fn segment(&mut self, chunk: usize) -> Option<Segment<'_>> {
        let rows = self.next_rows(chunk);
        let table = self.table.as_ref()?;
        let (fed, prompt) = (self.fed, &self.job.prompt);
        let (tokens, samples, is_prompt) = match fed < prompt.len() {
            // The prompt's last chunk samples the first token, unless it was sampled before a
            // preemption or none is wanted.
            true => (
                &prompt[fed..fed + rows],
                fed + rows == prompt.len() && self.generated == 0 && self.job.params.max_tokens > 0,
                true,
            ),
            false => (
                &self.history[fed..fed + rows],
                fed + rows == self.history.len(),
                false,
            ),
        };
        self.feeding = rows;
        self.sampling = samples;
        let logits = match (
            is_prompt && self.job.params.prompt_logprobs.is_some(),
            samples,
        ) {
            (true, _) => Logits::All,
            (false, true) => Logits::Last,
            (false, false) => Logits::None,
        };
        Some(Segment {
            table: table.blocks(),
            start: fed,
            tokens,
            logits,
            prompt: is_prompt,
        })
    }

    /// Gives up its blocks to let older sequences grow; it continues, computing its keys and
    /// values again, once readmitted with [`Sequence::resume`].
    pub fn preempt(&mut self) -> Option<BlockTable> {
        self.fed = 0;
        self.table.take()
    }

    /// Makes the prompt blocks it has computed findable by later prompts.
    pub fn cache_prompt(&mut self, kv: &mut KvManager) {
        if let Some(table) = self.table.as_mut() {
            kv.cache_prompt(table, &self.job.prompt, self.fed);
        }
    }

    /// Continues a preempted sequence in `admission`'s blocks.
    pub fn resume(&mut self, admission: Admission) {
        self.fed = admission.cached;
        self.table = Some(admission.table);
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

    /// Takes the result of the step that fed this sequence: the `(rows, vocab)` logits its
    /// segment asked for (see [`Sequence::segment`]), if any.
    pub fn accept(&mut self, logits: Option<&Tensor>, stop_ids: &HashSet<u32>) {
        let first = self.fed;
        self.fed += std::mem::take(&mut self.feeding);
        let samples = std::mem::take(&mut self.sampling);
        let Some(logits) = logits.filter(|_| !self.finished) else {
            return;
        };
        if let Some(top) = self.job.params.prompt_logprobs
            && first < self.job.prompt.len()
        {
            if let Err(e) = self.score_prompt(logits, first, top) {
                self.finish(FinishReason::Error, Some(format!("log-probabilities: {e}")));
                return;
            }
            if self.job.params.max_tokens == 0 && self.prompt_left() == 0 {
                self.prefilled = Some(Instant::now());
                self.finish(FinishReason::Length, None);
                return;
            }
        }
        if !samples {
            return;
        }
        if self.prefilled.is_none() {
            self.prefilled = Some(Instant::now());
        }
        let last = logits
            .dim(0)
            .and_then(|rows| logits.get(rows.saturating_sub(1)));
        let logits = match last {
            Ok(logits) => logits,
            Err(e) => {
                self.finish(FinishReason::Error, Some(format!("sampling failed: {e}")));
                return;
            }
        };
        let logits = &logits;
        // A constraint leaves only the tokens that keep the text valid.
        let allowed = match self.job.matcher.as_mut() {
            Some(matcher) => {
                let mask = self
                    .mask
                    .take()
                    .unwrap_or_else(|| constraint::next_mask(matcher));
                match mask.and_then(|mask| constraint::apply(&mask, logits)) {
                    Ok(masked) => Some(masked),
                    Err(e) => {
                        self.finish(FinishReason::Error, Some(e));
                        return;
                    }
                }
            }
            None => None,
        };
        let token = match self
            .sampler
            .sample(allowed.as_ref().unwrap_or(logits), &self.history)
        {
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
        // A constraint whose text is complete ends the generation as a stop token does.
        let complete = match self.job.matcher.as_mut() {
            Some(matcher) if !eos => match matcher.consume_token(token) {
                Ok(()) => matcher.is_stopped(),
                Err(e) => {
                    let error = format!("the constraint refused token {token}: {e}");
                    self.finish(FinishReason::Error, Some(error));
                    return;
                }
            },
            _ => false,
        };
        // Of the tokens whose text is output: not of an end-of-sequence token.
        let logprobs = match self.job.params.logprobs {
            Some(top) if !eos => {
                let before = self.history.last().copied();
                let pieces = tokenizer::pieces_after(self.tokenizer, before);
                match Logprobs::of(logits, token, top, pieces) {
                    Ok(logprobs) => Some(logprobs),
                    Err(e) => {
                        self.finish(FinishReason::Error, Some(format!("log-probabilities: {e}")));
                        return;
                    }
                }
            }
            _ => None,
        };
        let last = eos || complete || self.generated >= self.job.params.max_tokens;
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
                self.emit(token, text, logprobs);
                self.finish(FinishReason::Stop, None);
            }
            StopCheck::Continue(text) if last => {
                let text = text + &self.stops.flush();
                self.emit(token, text, logprobs);
                let reason = match eos || complete {
                    true => FinishReason::Stop,
                    false => FinishReason::Length,
                };
                self.finish(reason, None);
            }
            StopCheck::Continue(text) => self.emit(token, text, logprobs),
        }
    }

    /// Scores the prompt tokens that `logits`, the rows of positions `first..`, predict; a
    /// position computed again after a preemption is not scored twice.
    fn score_prompt(
        &mut self,
        logits: &Tensor,
        first: usize,
        top: usize,
    ) -> crate::error::Result<()> {
        let prompt = &self.job.prompt;
        for row in 0..logits.dim(0)? {
            let position = first + row;
            if position + 1 >= prompt.len() || position != self.prompt_logprobs.len() {
                continue;
            }
            let (before, id) = (prompt[position], prompt[position + 1]);
            let pieces = tokenizer::pieces_after(self.tokenizer, Some(before));
            let scored = Logprobs::of(&logits.get(row)?, id, top, pieces)?;
            self.prompt_logprobs.push(scored);
        }
        Ok(())
    }

    fn emit(&mut self, id: u32, text: String, logprobs: Option<Logprobs>) {
        let event = TokenEvent::Token(Token {
            id,
            text,
            index: self.generated,
            logprobs,
        });
        // The channel has room for every event of the request, so a send fails only when the
        // caller dropped the stream, which the next step treats as a cancellation.
        let _ = self.job.events.try_send(event);
    }

    /// Sends the summary; the scheduler frees its blocks.
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
            cached_tokens: self.cached_tokens,
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
            prompt_logprobs: self.job.params.prompt_logprobs.map(|_| PromptLogprobs {
                first: (self.job.prompt.first().copied())
                    .map_or_else(String::new, tokenizer::pieces_after(self.tokenizer, None)),
                rest: std::mem::take(&mut self.prompt_logprobs),
            }),
        };
        self.counters.active.fetch_sub(1, Relaxed);
        self.summary = Some(summary);
    }

    /// Ends the stream of a finished sequence whose blocks are freed: its memory is free from
    /// the moment the caller can see the summary.
    pub fn send_summary(mut self) {
        if let Some(summary) = self.summary.take() {
            let _ = self.job.events.try_send(TokenEvent::Done(summary));
        }
    }
}
