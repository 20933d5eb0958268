//! wick loads Hugging Face language models with candle, on CPU or CUDA, and streams every
//! generated token to its clients: over the Model Context Protocol, or to a terminal.
//!
//! ```no_run
//! use futures::StreamExt;
//! use wick::{GenerateRequest, ModelManager, ModelSelector, SamplingParams, TokenEvent};
//!
//! # async fn run() -> wick::Result<()> {
//! let manager = ModelManager::from_env()?;
//! let engine = manager.get(&ModelSelector::default()).await?;
//! let request = GenerateRequest::prompt("The capital of France is")
//!     .with_params(SamplingParams::greedy(24));
//! let mut tokens = engine.generate(request)?;
//! while let Some(event) = tokens.next().await {
//!     match event {
//!         TokenEvent::Token(token) => print!("{}", token.text),
//!         TokenEvent::Done(summary) => eprintln!("\n{summary}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Every front end — the CLI, the MCP server, the legacy SSE transport — adapts the one
//! [`TokenStream`] that [`Engine::generate`] returns.

pub mod cli;
pub mod engine;
mod error;
pub mod export;
pub mod fetch;
pub mod registry;
pub mod server;

pub use engine::{
    ChatMessage, Completion, DTypeChoice, DeviceChoice, Engine, EngineStats, FinishReason,
    GenerateRequest, Input, KvDTypeChoice, LoadOptions, ManagerConfig, ModelInfo, ModelManager,
    ModelStatus, Quantize, ResolvedModel, SamplingParams, Source, Summary, Token, TokenEvent,
    TokenStream,
};
pub use error::{Error, Result};
pub use registry::{Backend, ModelSelector, Registry, Tier};
