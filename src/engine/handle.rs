//! The handle to a loaded model: what it is, its counters, and [`Engine::generate`].

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;

use super::chat::ChatTemplate;
use super::constraint::{Constraint, Grammars};
use super::kv::KvShape;
use super::request::{GenerateRequest, Input};
use super::sequence::Job;
use super::stats::{Counters, EngineStats};
use super::stream::TokenStream;
use super::tokenizer;
use super::tools::{Tool, ToolSyntax, ToolUse};
use super::worker::FaultInjection;
use crate::error::{Error, Result};
use crate::registry::Backend;

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

/// A loaded model, ready to generate. Cheap to share: clone the `Arc` the manager hands out.
pub struct Engine {
    pub(super) info: ModelInfo,
    pub(super) tokenizer: Arc<tokenizers::Tokenizer>,
    pub(super) chat: std::result::Result<ChatTemplate, String>,
    pub(super) jobs: mpsc::Sender<Job>,
    pub(super) queue_limit: usize,
    pub(super) counters: Arc<Counters>,
    /// The shape of the KV blocks, and how many the pool holds.
    pub(super) kv_shape: KvShape,
    pub(super) kv_blocks: usize,
    pub(super) faults: Arc<FaultInjection>,
    pub(super) grammars: Grammars,
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
        let mut params = request.params;
        params.validate()?;
        let offered = request.tools.as_ref().map_or(&[][..], ToolUse::offered);
        let prompt = self.encode(&request.input, offered)?;
        if let Some(tools) = &request.tools
            && let Some(grammar) = tools.grammar(self.tool_syntax()?)?
        {
            if params.constraint.is_some() {
                return Err(Error::InvalidRequest(
                    "a required tool call cannot also be held to a response format".into(),
                ));
            }
            params.constraint = Some(Constraint::ToolCalls(grammar));
        }
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
        // A constraint that does not compile is refused here, before any work.
        let matcher = match &params.constraint {
            Some(constraint) => Some(self.grammars.matcher(constraint)?),
            None => None,
        };
        // Room for every event of this request, so the engine never waits on a slow reader.
        let (events, receiver) = mpsc::channel(params.max_tokens + 2);
        let job = Job {
            prompt,
            matcher,
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

    /// How this model's chat template writes tool calls; an error for a model that cannot chat.
    pub fn tool_syntax(&self) -> Result<ToolSyntax> {
        Ok(self.chat()?.tool_syntax())
    }

    fn chat(&self) -> Result<&ChatTemplate> {
        self.chat.as_ref().map_err(|why| {
            Error::InvalidRequest(format!(
                "model {} cannot chat: {why}; send a plain prompt instead",
                self.info.name
            ))
        })
    }

    /// The token ids the model would see for `input`.
    pub fn encode_input(&self, input: &Input) -> Result<Vec<u32>> {
        self.encode(input, &[])
    }

    /// The token ids the model sees for `input`, a chat offering `tools`.
    fn encode(&self, input: &Input, tools: &[Tool]) -> Result<Vec<u32>> {
        if !tools.is_empty() && !matches!(input, Input::Chat(_)) {
            return Err(Error::InvalidRequest(
                "tools are offered in a chat only".into(),
            ));
        }
        match input {
            Input::Prompt(text) => tokenizer::encode(&self.tokenizer, text, true),
            Input::Chat(messages) => {
                let text = self.chat()?.render(messages, tools, true)?;
                // The rendered template carries its own BOS.
                tokenizer::encode(&self.tokenizer, &text, false)
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

/// Token ids that end a generation: the model's EOS ids and the chat template's end of turn.
pub(super) fn stop_ids(
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
