//! The engine thread: admit, plan a step, run it, hand each sequence its logits, update (cache the
//! prompt blocks it completed, free finished sequences). One OS thread
//! per loaded model, because candle's forward passes are blocking, CPU-heavy work that must stay
//! off tokio's async workers.
//!
//! Every step is one forward pass over the rows of all the sequences the scheduler picked, so the
//! weights are read once for all of them. A step that fails (or panics) is retried one sequence
//! at a time: only the sequences that fail alone end with `error`, and the engine keeps serving.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use candle_core::{Device, Tensor};
use llguidance::Matcher;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use super::Counters;
use super::constraint;
use super::kv::{KvManager, KvStore};
use super::model::{Segment, Transformer};
use super::scheduler::{Limits, Scheduler};
use super::sequence::{Job, Sequence};
use super::stream::FinishReason;

/// What the loop needs besides the queue.
pub(crate) struct WorkerSetup {
    pub name: String,
    /// The weights, shared by every sequence.
    pub model: Arc<Transformer>,
    /// Every sequence's keys and values, in the blocks the scheduler's `KvManager` hands out.
    pub store: KvStore,
    pub tokenizer: Arc<Tokenizer>,
    pub stop_ids: HashSet<u32>,
    pub limits: Limits,
    pub counters: Arc<Counters>,
    pub faults: Arc<FaultInjection>,
}

/// A test hook: once armed with a token id, every forward pass that feeds that token panics,
/// as a bug in a kernel would.
#[derive(Debug, Default)]
pub(crate) struct FaultInjection {
    /// The token id plus one; 0 when unarmed.
    token: AtomicU64,
}

impl FaultInjection {
    pub fn arm(&self, token: u32) {
        self.token.store(u64::from(token) + 1, Relaxed);
    }

    fn check(&self, segments: &[Segment<'_>]) {
        let armed = self.token.load(Relaxed);
        if armed != 0
            && segments
                .iter()
                .any(|s| s.tokens.contains(&((armed - 1) as u32)))
        {
            panic!("injected fault at token {}", armed - 1);
        }
    }
}

pub(crate) fn spawn(
    setup: WorkerSetup,
    kv: KvManager,
    jobs: mpsc::Receiver<Job>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("wick-engine-{}", setup.name))
        .spawn(move || run(setup, kv, jobs))
        .map(|_| ())
}

fn run(setup: WorkerSetup, kv: KvManager, jobs: mpsc::Receiver<Job>) {
    let mut scheduler = Scheduler::new(
        setup.name.clone(),
        setup.limits,
        jobs,
        kv,
        &setup.tokenizer,
        setup.counters.clone(),
    );
    let chunk = scheduler.chunk();
    while scheduler.admit() {
        let mut step = scheduler.plan();
        if step.is_empty() {
            continue;
        }
        match forward_beside_masks(&setup, &mut step, chunk) {
            Ok(logits) => hand_out(&setup, &mut step, logits),
            Err(error) if step.len() > 1 => {
                tracing::warn!(
                    model = %setup.name,
                    sequences = step.len(),
                    "a step failed ({error}); retrying its sequences one at a time"
                );
                for seq in step {
                    let mut alone = [seq];
                    match forward(&setup, &mut alone, chunk) {
                        Ok(logits) => hand_out(&setup, &mut alone, logits),
                        Err(error) => fail(&setup, alone[0], error),
                    }
                }
            }
            Err(error) => step
                .into_iter()
                .for_each(|seq| fail(&setup, seq, error.clone())),
        }
        scheduler.update();
    }
    tracing::debug!(model = %setup.name, "engine stopped");
}

/// [`forward`], while another thread computes the next-token masks of the step's constrained
/// sequences (a mask depends only on the tokens so far), so that a mask costs the step nothing
/// where a core is free (always beside a GPU).
fn forward_beside_masks(
    setup: &WorkerSetup,
    step: &mut [&mut Sequence<'_>],
    chunk: usize,
) -> Result<Vec<Option<Tensor>>, String> {
    let lent: Vec<(usize, Matcher)> = step
        .iter_mut()
        .enumerate()
        .filter_map(|(i, seq)| seq.lend_matcher().map(|matcher| (i, matcher)))
        .collect();
    if lent.is_empty() {
        return forward(setup, step, chunk);
    }
    let lenders: Vec<usize> = lent.iter().map(|(i, _)| *i).collect();
    std::thread::scope(|scope| {
        let masks = scope.spawn(move || {
            lent.into_iter()
                .map(|(i, mut matcher)| {
                    let mask = constraint::next_mask(&mut matcher);
                    (i, matcher, mask)
                })
                .collect::<Vec<_>>()
        });
        let logits = forward(setup, step, chunk);
        match masks.join() {
            Ok(masks) => {
                for (i, matcher, mask) in masks {
                    step[i].return_matcher(matcher, mask);
                }
            }
            // The matchers are gone with the thread: their sequences cannot go on.
            Err(_) => {
                for i in lenders {
                    fail(setup, step[i], "the constraint's mask failed".into());
                }
            }
        }
        logits
    })
}

/// One forward pass over the step's rows; the logits of the sequences that sample, on the CPU
/// (one copy for the whole step), in step order. A panic comes back as an error.
fn forward(
    setup: &WorkerSetup,
    step: &mut [&mut Sequence<'_>],
    chunk: usize,
) -> Result<Vec<Option<Tensor>>, String> {
    let scheduled = step.len();
    let pass = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let segments: Vec<Segment<'_>> = step
            .iter_mut()
            .filter_map(|seq| seq.segment(chunk))
            .collect();
        if segments.len() != scheduled {
            return Err("a finished sequence was scheduled".to_string());
        }
        setup.faults.check(&segments);
        let wants: Vec<usize> = segments.iter().map(|s| s.logit_rows().len()).collect();
        setup.counters.steps.fetch_add(1, Relaxed);
        let logits = setup
            .model
            .forward(&setup.store, &segments)
            .and_then(|l| Ok(l.to_device(&Device::Cpu)?))
            .map_err(|e| format!("forward pass failed: {e}"))?;
        let mut row = 0;
        wants
            .into_iter()
            .map(|rows| match rows {
                0 => Ok(None),
                _ => {
                    row += rows;
                    logits
                        .narrow(0, row - rows, rows)
                        .map(Some)
                        .map_err(|e| e.to_string())
                }
            })
            .collect()
    }));
    pass.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(format!("internal model error: {message}"))
    })
}

fn hand_out(setup: &WorkerSetup, step: &mut [&mut Sequence<'_>], logits: Vec<Option<Tensor>>) {
    for (seq, logits) in step.iter_mut().zip(logits) {
        seq.accept(logits.as_ref(), &setup.stop_ids);
    }
}

fn fail(setup: &WorkerSetup, seq: &mut Sequence<'_>, error: String) {
    tracing::error!(model = %setup.name, "{error}");
    seq.finish(FinishReason::Error, Some(error));
}
