//! The engine: a loaded model behind a request queue, turning prompts into token streams.
//!
//! [`Engine`] (`handle`) is what callers hold; `start` loads a model and spawns its `worker`, the
//! loop of `scheduler` (which sequences run, as a `plan`) and the `model`'s forward pass over KV
//! blocks that `kv` owns; `manager` keeps the loaded models.

pub(crate) mod chat;
mod constraint;
mod device;
pub(crate) mod gguf_metadata;
mod handle;
mod kernel_hooks;
mod kv;
pub(crate) mod load;
mod manager;
pub(crate) mod model;
mod plan;
mod request;
pub(crate) mod resolve;
pub(crate) mod sampling;
mod scheduler;
mod sequence;
mod start;
mod stats;
pub(crate) mod stream;
pub(crate) mod tokenizer;
mod tools;
mod worker;

pub use chat::ChatMessage;
pub use constraint::Constraint;
pub use device::{DTypeChoice, DeviceChoice};
pub use handle::{Engine, ModelInfo};
#[doc(hidden)]
pub use kernel_hooks::{HalfKernel, decode_rows_kernel, paged_attention_kernel, q8_0_rows_kernel};
pub use load::Quantize;
pub use manager::{ManagerConfig, ModelManager, ModelStatus};
pub use request::{GenerateRequest, Input};
pub use resolve::{ResolvedModel, Source};
pub use sampling::{Logprobs, MAX_TOP_LOGPROBS, PromptLogprobs, SamplingParams, Scored};
pub use start::{KvDTypeChoice, LoadOptions};
pub use stats::EngineStats;
pub use stream::{Completion, FinishReason, Summary, Token, TokenEvent, TokenStream};
pub use tools::{Tool, ToolCall, ToolCallParser, ToolChoice, ToolEvent, ToolSyntax, ToolUse};

pub(crate) use stats::Counters;
