//! Which sequences run, and which of their rows go into the next step.
//!
//! Requests wait in the bounded queue (full: "busy") until a slot is free and the KV manager has
//! the blocks of their prompt (plus one position), sharing any cached prefix; then they join at
//! the next step, first come first served. Every step takes one decode row from each running
//! sequence that has its prompt in the cache, then prompt chunks, oldest first, up to the
//! prompt-token budget: a long prompt is prefilled a chunk per step while the others keep getting
//! tokens. Each sequence's table grows as it advances; when the pool runs out, the most recently
//! admitted sequence is preempted: its blocks are freed and it waits at the head of the queue,
//! to compute its keys and values again when readmitted. The oldest sequence always fits alone
//! (larger requests are refused up front), so it is never preempted by another and never starves.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use super::Counters;
use super::kv::KvManager;
use super::plan::{Candidate, plan_step};
use super::sequence::{Job, Sequence};

/// How much work the engine takes on at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Sequences running at once.
    pub max_active: usize,
    /// Prompt tokens one step takes, besides the decode rows; also the chunk size.
    pub max_batch_tokens: usize,
    /// Tokens a preempted sequence feeds again per step (`Transformer::replay_rows`).
    pub replay_rows: usize,
}

pub(crate) struct Scheduler<'t> {
    limits: Limits,
    jobs: mpsc::Receiver<Job>,
    /// The oldest queued request, taken off the queue but still waiting for room.
    head: Option<Job>,
    /// Preempted sequences, oldest first: readmitted before any queued request.
    preempted: VecDeque<Sequence<'t>>,
    /// In order of admission.
    running: Vec<Sequence<'t>>,
    kv: KvManager,
    tokenizer: &'t Tokenizer,
    counters: Arc<Counters>,
    name: String,
}

impl<'t> Scheduler<'t> {
    pub fn new(
        name: String,
        limits: Limits,
        jobs: mpsc::Receiver<Job>,
        kv: KvManager,
        tokenizer: &'t Tokenizer,
        counters: Arc<Counters>,
    ) -> Self {
        let scheduler = Self {
            limits,
            jobs,
            head: None,
            preempted: VecDeque::new(),
            running: Vec::new(),
            kv,
            tokenizer,
            counters,
            name,
        };
        scheduler.publish();
        scheduler
    }

    pub fn chunk(&self) -> usize {
        self.limits.max_batch_tokens.max(1)
    }

    /// Ends the sequences whose callers went away, frees the blocks of finished ones, then
    /// admits preempted sequences and queued requests while they fit. Blocks while there is
    /// nothing to run; `false` once the engine is shut down and idle.
    pub fn admit(&mut self) -> bool {
        for seq in self.running.iter_mut().chain(self.preempted.iter_mut()) {
            seq.end_if_abandoned(&self.name);
        }
        self.retire();
        while let Some(mut seq) = self.preempted.pop_front() {
            match self.room() && self.readmit(&mut seq) {
                true => self.running.push(seq),
                false => {
                    self.preempted.push_front(seq);
                    return true;
                }
            }
        }
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
            let admission = match self.room() {
                true => self
                    .kv
                    .admit(&job.prompt, self.reserve(), job.shares_prefix()),
                false => None,
            };
            let Some(admission) = admission else {
                // It waits for a slot, or for blocks the running sequences free.
                self.head = Some(job);
                self.publish();
                return true;
            };
            self.counters.queued.fetch_sub(1, Relaxed);
            let seq = Sequence::new(
                job,
                admission,
                self.limits.replay_rows,
                self.tokenizer,
                self.counters.clone(),
            );
            self.running.push(seq);
            self.publish();
        }
    }

    /// Whether a slot is free.
    fn room(&self) -> bool {
        self.running.len() < self.limits.max_active.max(1)
    }

    /// Blocks kept free at admission, one per running sequence, so that a new prompt does not
    /// take the blocks the running ones grow into at their next step.
    fn reserve(&self) -> usize {
        self.running.len()
    }

    fn readmit(&mut self, seq: &mut Sequence<'t>) -> bool {
        let reserve = self.reserve();
        match self
            .kv
            .admit(&seq.job.prompt, reserve, seq.job.shares_prefix())
        {
            Some(admission) => {
                seq.resume(admission);
                true
            }
            None => false,
        }
    }

    /// The sequences of the next step, in row order (see [`plan_step`]): the plan's preemptions
    /// are carried out, then each sequence's table grows to hold its rows.
    pub fn plan(&mut self) -> Vec<&mut Sequence<'t>> {
        let chunk = self.chunk();
        let candidates: Vec<Candidate> = self
            .running
            .iter()
            .map(|seq| {
                let rows = seq.next_rows(chunk);
                let (grow, releases) = match seq.table() {
                    Some(table) => (
                        self.kv.growth(table, seq.fed() + rows),
                        self.kv.releases(table),
                    ),
                    None => (0, 0),
                };
                Candidate {
                    rows,
                    prefill: seq.prompt_left() > 0,
                    grow,
                    releases,
                }
            })
            .collect();
        let plan = plan_step(&candidates, self.kv.free_blocks(), chunk);
        // The most recent first: removing them leaves the other indices as they are.
        for &i in &plan.preempt {
            self.preempt(i);
        }
        let mut step: Vec<Option<&mut Sequence<'t>>> = self.running.iter_mut().map(Some).collect();
        let mut planned = Vec::with_capacity(plan.step.len());
        for i in plan.step {
            let Some(seq) = step.get_mut(i).and_then(Option::take) else {
                continue;
            };
            let positions = seq.fed() + candidates[i].rows;
            // The plan counted these blocks free.
            if seq
                .table_mut()
                .is_some_and(|table| self.kv.grow(table, positions))
            {
                planned.push(seq);
            }
        }
        publish(&self.kv, &self.counters);
        planned
    }

    fn preempt(&mut self, i: usize) {
        let mut seq = self.running.remove(i);
        if let Some(table) = seq.preempt() {
            self.kv.free(table);
        }
        tracing::debug!(model = %self.name, "KV blocks ran out: a sequence is preempted");
        self.counters.preemptions.fetch_add(1, Relaxed);
        self.preempted.push_front(seq);
    }

    /// After a step: the prompt blocks it completed become findable by later prompts, and the
    /// sequences it finished are retired.
    pub fn update(&mut self) {
        for seq in &mut self.running {
            seq.cache_prompt(&mut self.kv);
        }
        self.retire();
    }

    /// Frees the blocks of finished sequences, then ends their streams.
    fn retire(&mut self) {
        let mut finished: Vec<Sequence<'t>> =
            self.running.extract_if(.., |seq| seq.finished()).collect();
        for seq in std::mem::take(&mut self.preempted) {
            match seq.finished() {
                true => finished.push(seq),
                false => self.preempted.push_back(seq),
            }
        }
        for seq in &mut finished {
            if let Some(table) = seq.take_table() {
                self.kv.free(table);
            }
        }
        self.publish();
        finished.into_iter().for_each(Sequence::send_summary);
    }

    fn publish(&self) {
        publish(&self.kv, &self.counters);
    }
}

/// Copies the pool's state into the engine's counters.
fn publish(kv: &KvManager, c: &Counters) {
    let usage = kv.usage();
    c.kv_blocks_used.store(usage.used, Relaxed);
    c.kv_blocks_cached.store(usage.cached, Relaxed);
    c.prefix_cache_queries.store(usage.queries, Relaxed);
    c.prefix_cache_hits.store(usage.hits, Relaxed);
}
