//! Which sequences run, and which of their rows go into the next step.
//!
//! Requests wait in the bounded queue (full: "busy") until their KV cache fits in the engine's
//! memory budget and a slot is free; then they join at the next step, first come first served.
//! Every step takes one decode row from each running sequence that has its prompt in the cache,
//! then prompt chunks, oldest first, up to the prompt-token budget: a long prompt is prefilled a
//! chunk per step while the others keep getting tokens.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use super::Counters;
use super::model::Transformer;
use super::sequence::{Job, Sequence};

/// How much work the engine takes on at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Sequences running at once.
    pub max_active: usize,
    /// Prompt tokens one step takes, besides the decode rows; also the chunk size.
    pub max_batch_tokens: usize,
    /// Bytes the running sequences' KV caches may hold together.
    pub kv_cache_bytes: usize,
}

pub(crate) struct Scheduler<'t> {
    limits: Limits,
    jobs: mpsc::Receiver<Job>,
    /// The oldest queued request, taken off the queue but still waiting for room.
    head: Option<Job>,
    running: Vec<Sequence<'t>>,
    model: Arc<Transformer>,
    tokenizer: &'t Tokenizer,
    counters: Arc<Counters>,
    name: String,
}

impl<'t> Scheduler<'t> {
    pub fn new(
        name: String,
        limits: Limits,
        jobs: mpsc::Receiver<Job>,
        model: Arc<Transformer>,
        tokenizer: &'t Tokenizer,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            limits,
            jobs,
            head: None,
            running: Vec::new(),
            model,
            tokenizer,
            counters,
            name,
        }
    }

    pub fn chunk(&self) -> usize {
        self.limits.max_batch_tokens.max(1)
    }

    /// Ends the sequences whose callers went away and drops finished ones (with their caches),
    /// then admits queued requests while they fit. Blocks while there is nothing to run;
    /// `false` once the engine is shut down and idle.
    pub fn admit(&mut self) -> bool {
        for seq in &mut self.running {
            seq.end_if_abandoned(&self.name);
        }
        self.running.retain(|seq| !seq.finished());
        loop {
            let job = match self.head.take() {
                Some(job) => job,
                None => {
                    let next = match self.running.is_empty() {
                        true => self.jobs.blocking_recv(),
                        false => self.jobs.try_recv().ok(),
                    };
                    match next {
                        Some(job) => job,
                        None => return !self.running.is_empty(),
                    }
                }
            };
            if job.abandoned() {
                tracing::info!(model = %self.name, "request cancelled while queued");
                self.counters.queued.fetch_sub(1, Relaxed);
                self.counters.cancelled.fetch_add(1, Relaxed);
                continue;
            }
            let needed = self.model.cache_bytes(job.positions());
            let held: usize = self.running.iter().map(Sequence::cache_bytes).sum();
            let room = self.running.len() < self.limits.max_active.max(1)
                && held + needed <= self.limits.kv_cache_bytes;
            // Requests larger than the whole budget are refused before they are queued; this
            // one waits for memory unless nothing runs to free any.
            if !room && !self.running.is_empty() {
                self.head = Some(job);
                return true;
            }
            self.counters.queued.fetch_sub(1, Relaxed);
            match self.model.new_cache(job.positions()) {
                Ok(cache) => {
                    let seq = Sequence::new(job, cache, self.tokenizer, self.counters.clone());
                    self.running.push(seq);
                }
                Err(e) => job.fail(format!("cannot allocate the KV cache: {e}")),
            }
        }
    }

    /// The sequences of the next step, in row order: every decoding sequence's one row first,
    /// then prompt chunks, oldest first, while they fit in the prompt-token budget.
    pub fn plan(&mut self) -> Vec<&mut Sequence<'t>> {
        let chunk = self.chunk();
        let (decoding, prefilling): (Vec<_>, Vec<_>) = self
            .running
            .iter_mut()
            .filter(|seq| !seq.finished())
            .partition(|seq| seq.prompt_left() == 0);
        let mut step = decoding;
        let mut budget = chunk;
        for seq in prefilling {
            let rows = seq.next_rows(chunk);
            if rows > budget {
                break;
            }
            budget -= rows;
            step.push(seq);
        }
        step
    }
}
