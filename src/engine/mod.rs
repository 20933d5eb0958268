//! The engine: a loaded model behind a request queue, turning prompts into token streams.

pub(crate) mod chat;
mod device;
pub(crate) mod gguf_metadata;
mod kv;
mod load;
mod manager;
pub(crate) mod model;
mod plan;
mod resolve;
pub(crate) mod sampling;
mod scheduler;
mod sequence;
mod start;
pub(crate) mod stream;
pub(crate) mod tokenizer;
mod worker;

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use chat::ChatMessage;
pub use device::{DTypeChoice, DeviceChoice};
pub use manager::{ManagerConfig, ModelManager, ModelStatus};
pub use resolve::{ResolvedModel, Source};
pub use sampling::SamplingParams;
pub use start::{KvDTypeChoice, LoadOptions};
pub use stream::{Completion, FinishReason, Summary, Token, TokenEvent, TokenStream};

use crate::error::{Error, Result};
use crate::registry::Backend;
use chat::ChatTemplate;
use sequence::Job;
use worker::FaultInjection;

/// What to generate from.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Plain text, continued as is.
    Prompt(String),
    /// A conversation, rendered with the model's chat template; the reply ends at the end of
    /// the assistant's turn.
    Chat(Vec<ChatMessage>),
    /// Token ids, used as they are (benchmarks use prompts of an exact length).
    Tokens(Vec<u32>),
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub input: Input,
    pub params: SamplingParams,
    /// Cancelling it stops the generation at the next token (as dropping the stream does).
    pub cancel: CancellationToken,
}

impl GenerateRequest {
    pub fn prompt(text: impl Into<String>) -> Self {
        Self::new(Input::Prompt(text.into()))
    }

    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        Self::new(Input::Chat(messages))
    }

    pub fn new(input: Input) -> Self {
        Self {
            input,
            params: SamplingParams::default(),
            cancel: CancellationToken::new(),
        }
    }

    pub fn with_params(mut self, params: SamplingParams) -> Self {
        self.params = params;
        self
    }

    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }
}

/// What a loaded model is and where it runs.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub backend: Backend,
    pub architecture: String,
    pub source: String,
    pub device: String,
    pub dtype: String,
    pub context_length: usize,
    pub has_chat_template: bool,
    /// The bytes of weights one decode step reads: every projection once (a tied output once),
    /// not the embedding table, of which a step reads one row per token.
    pub weight_bytes_per_token: u64,
}

/// Live counters of one engine, shared with its decode loop.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    queued: AtomicUsize,
    active: AtomicUsize,
    requests: AtomicU64,
    tokens: AtomicU64,
    cancelled: AtomicU64,
    steps: AtomicU64,
    kv_blocks_used: AtomicUsize,
    kv_blocks_cached: AtomicUsize,
    prefix_cache_queries: AtomicU64,
    prefix_cache_hits: AtomicU64,
    preemptions: AtomicU64,
}

/// A snapshot of an engine's load and work so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Requests waiting for a free slot or for room in the KV-cache budget.
    pub queued: usize,
    /// Requests being generated.
    pub active: usize,
    /// Requests accepted since the model was loaded.
    pub requests: u64,
    /// Tokens sampled since the model was loaded.
    pub tokens: u64,
    /// Requests that ended because their caller went away or cancelled.
    pub cancelled: u64,
    /// Bytes of the KV blocks sequences hold (in use, not merely cached).
    pub kv_cache_bytes: usize,
    /// Bytes of the whole block pool (`--kv-cache-memory`).
    pub kv_cache_budget: usize,
    /// Blocks in the pool, of `kv_block_size` positions each.
    pub kv_blocks_total: usize,
    /// Blocks running sequences hold.
    pub kv_blocks_used: usize,
    /// Free blocks that still hold a cached prompt prefix (evicted least recently used first).
    pub kv_blocks_cached: usize,
    /// Positions per block (`--kv-block-size`).
    pub kv_block_size: usize,
    /// Prompt tokens looked up in the prefix cache, and those found there.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Sequences preempted (their blocks freed, recomputed later) because the pool ran out.
    pub preemptions: u64,
    /// Forward passes run; each advances every running sequence.
    pub steps: u64,
}

/// A loaded model, ready to generate. Cheap to share: clone the `Arc` the manager hands out.
pub struct Engine {
    info: ModelInfo,
    tokenizer: Arc<tokenizers::Tokenizer>,
    chat: std::result::Result<ChatTemplate, String>,
    jobs: mpsc::Sender<Job>,
    queue_limit: usize,
    counters: Arc<Counters>,
    /// The shape of the KV blocks, and how many the pool holds.
    kv_shape: kv::KvShape,
    kv_blocks: usize,
    faults: Arc<FaultInjection>,
}

impl Engine {
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn stats(&self) -> EngineStats {
        let c = &self.counters;
        let block = self.kv_shape.bytes_per_block();
        let used = c.kv_blocks_used.load(Relaxed);
        EngineStats {
            queued: c.queued.load(Relaxed),
            active: c.active.load(Relaxed),
            requests: c.requests.load(Relaxed),
            tokens: c.tokens.load(Relaxed),
            cancelled: c.cancelled.load(Relaxed),
            kv_cache_bytes: used * block,
            kv_cache_budget: self.kv_blocks * block,
            steps: c.steps.load(Relaxed),
            kv_blocks_total: self.kv_blocks,
            kv_blocks_used: used,
            kv_blocks_cached: c.kv_blocks_cached.load(Relaxed),
            kv_block_size: self.kv_shape.block_size,
            prefix_cache_queries: c.prefix_cache_queries.load(Relaxed),
            prefix_cache_hits: c.prefix_cache_hits.load(Relaxed),
            preemptions: c.preemptions.load(Relaxed),
        }
    }

    /// A test hook: from now on, every forward pass that feeds `token` fails as a panicking
    /// kernel would, so tests can check that a failure ends only the sequences it hits.
    #[doc(hidden)]
    pub fn inject_fault_on_token(&self, token: u32) {
        self.faults.arm(token);
    }

    /// Number of token ids the tokenizer knows, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The text of `tokens`, without special tokens.
    pub fn decode(&self, tokens: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(tokens, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Starts a generation. Errors that the request itself causes (bad parameters, a prompt
    /// past the context window, a full queue) come back here, before any work is done.
    pub fn generate(&self, request: GenerateRequest) -> Result<TokenStream> {
        let params = request.params;
        params.validate()?;
        let prompt = self.encode_input(&request.input)?;
        if prompt.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        if prompt.len() + params.max_tokens > self.info.context_length {
            return Err(Error::ContextOverflow {
                prompt_tokens: prompt.len(),
                max_tokens: params.max_tokens,
                context_length: self.info.context_length,
            });
        }
        // Blocks are taken as a sequence grows, but it must fit alone once it runs alone.
        let needed = self.kv_shape.blocks_for(prompt.len() + params.max_tokens);
        if needed > self.kv_blocks {
            let block = self.kv_shape.bytes_per_block();
            return Err(Error::KvCacheTooSmall {
                prompt_tokens: prompt.len(),
                max_tokens: params.max_tokens,
                needed_bytes: needed * block,
                budget_bytes: self.kv_blocks * block,
            });
        }
        // Room for every event of this request, so the engine never waits on a slow reader.
        let (events, receiver) = mpsc::channel(params.max_tokens + 2);
        let job = Job {
            prompt,
            seed: params
                .seed
                .unwrap_or_else(|| RandomState::new().hash_one(Instant::now())),
            params,
            events,
            cancel: request.cancel,
            enqueued: Instant::now(),
        };
        // Counted before sending, so the engine thread never sees the count go below zero.
        // The count, not the channel, bounds the queue: the engine holds the oldest waiting
        // request outside the channel while it waits for memory.
        let busy = || Error::Busy {
            model: self.info.name.clone(),
            limit: self.queue_limit,
        };
        if self.counters.queued.fetch_add(1, Relaxed) >= self.queue_limit {
            self.counters.queued.fetch_sub(1, Relaxed);
            return Err(busy());
        }
        self.jobs.try_send(job).map_err(|e| {
            self.counters.queued.fetch_sub(1, Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => busy(),
                mpsc::error::TrySendError::Closed(_) => Error::Unloaded(self.info.name.clone()),
            }
        })?;
        self.counters.requests.fetch_add(1, Relaxed);
        Ok(TokenStream::new(receiver))
    }

    /// The token ids the model would see for `input`.
    pub fn encode_input(&self, input: &Input) -> Result<Vec<u32>> {
        match input {
            Input::Prompt(text) => tokenizer::encode(&self.tokenizer, text, true),
            Input::Chat(messages) => {
                let chat = self.chat.as_ref().map_err(|why| {
                    Error::InvalidRequest(format!(
                        "model {} cannot chat: {why}; send a plain prompt instead",
                        self.info.name
                    ))
                })?;
                // The rendered template carries its own BOS.
                tokenizer::encode(&self.tokenizer, &chat.render(messages, true)?, false)
            }
            Input::Tokens(tokens) => {
                let vocab = self.vocab_size();
                match tokens.iter().find(|&&t| t as usize >= vocab) {
                    Some(bad) => Err(Error::InvalidRequest(format!(
                        "token id {bad} is outside the vocabulary ({vocab} tokens)"
                    ))),
                    None => Ok(tokens.clone()),
                }
            }
        }
    }
}

/// wick's Q8_0 kernel for several rows, for `cargo bench --bench kernels` to measure against
/// candle's: `x` `(rows, k)` row-major times `weight` `(n, k)` transposed, or `None` where this
/// CPU or weight does not take it.
#[doc(hidden)]
pub fn q8_0_rows_kernel(
    weight: &candle_core::quantized::QTensor,
    x: &[f32],
    rows: usize,
) -> Option<Result<Vec<f32>>> {
    if !model::kernels::q8_0::available() || !model::kernels::q8_0::applies(weight) {
        return None;
    }
    let threads = model::kernels::Threads::Wick;
    let outputs = model::kernels::q8_0::matmul(&[weight], x, rows, threads);
    Some(outputs.map(|mut outputs| outputs.remove(0)))
}

/// wick's decode-row kernel for `weight`'s type (Q4_K, Q6_K, Q4_0, Q4_1, Q5_0, Q8_0) at this CPU's
/// widest SIMD level, for `cargo bench --bench kernels`: `x` `(rows, k)` row-major times `weight`
/// `(n, k)` transposed, or `None` where this CPU or weight does not take it.
#[doc(hidden)]
pub fn decode_rows_kernel(
    weight: &candle_core::quantized::QTensor,
    x: &[f32],
    rows: usize,
) -> Option<Result<Vec<f32>>> {
    let level = model::kernels::Level::best()?;
    model::kernels::family(weight)?;
    let threads = model::kernels::Threads::Wick;
    let outputs = model::kernels::matmul(&[weight], x, rows, level, threads);
    Some(outputs.map(|mut outputs| outputs.remove(0)))
}

/// Token ids that end a generation: the model's EOS ids and the chat template's end of turn.
fn stop_ids(
    tokenizer: &tokenizers::Tokenizer,
    eos_ids: &[u32],
    chat: Option<&ChatTemplate>,
) -> HashSet<u32> {
    let mut ids: HashSet<u32> = eos_ids.iter().copied().collect();
    if let Some(chat) = chat
        && let Ok(text) = chat.end_of_turn_text()
        && let Ok(encoded) = tokenizer::encode(tokenizer, &text, false)
        && let Some(&first) = encoded.first()
        && tokenizer
            .get_added_tokens_decoder()
            .get(&first)
            .is_some_and(|t| t.special)
    {
        ids.insert(first);
    }
    ids
}
