//! The errors a user can cause or meet, each saying what went wrong and what to do next.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown model size `{0}`; valid sizes: small, medium, large")]
    UnknownTier(String),

    #[error("unknown backend `{0}`; valid backends: gguf, huggingface")]
    UnknownBackend(String),

    #[error("unknown model `{name}`; the registry has: {known}")]
    UnknownModel { name: String, known: String },

    #[error("the registry has no {tier} model for the {backend} backend; it has: {known}")]
    NoTierEntry {
        tier: String,
        backend: String,
        known: String,
    },

    #[error("invalid model registry {origin}: {message}")]
    Registry { origin: String, message: String },

    /// Every source of a file failed; `attempts` says what each one answered.
    #[error("could not fetch `{file}` of {repo}:\n{attempts}")]
    Fetch {
        repo: String,
        file: String,
        attempts: String,
    },

    #[error(
        "{path} failed its sha256 check (expected {expected}, got {actual}); it came from {origin}. \
         Delete it and fetch again; if it persists the source serves a different file"
    )]
    Checksum {
        path: PathBuf,
        origin: String,
        expected: String,
        actual: String,
    },

    #[error("model file missing: {path}{hint}")]
    MissingFile { path: PathBuf, hint: String },

    #[error("cannot load {path}: {message}")]
    Load { path: PathBuf, message: String },

    #[error("unsupported architecture `{found}` in {path}; wick supports: {supported}")]
    UnsupportedArchitecture {
        found: String,
        path: PathBuf,
        supported: String,
    },

    #[error("{0}")]
    Device(String),

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    #[error(
        "the prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}: {} in all, past the \
         model's context window of {context_length} tokens; shorten the prompt or lower max_tokens",
        prompt_tokens + max_tokens
    )]
    ContextOverflow {
        prompt_tokens: usize,
        max_tokens: usize,
        context_length: usize,
    },

    #[error(
        "the prompt ({prompt_tokens} tokens) and max_tokens ({max_tokens}) need {} MiB of KV \
         cache, more than the {} MiB this model may use in all (--kv-cache-memory); lower \
         max_tokens or shorten the prompt",
        needed_bytes.div_ceil(1 << 20),
        budget_bytes / (1 << 20)
    )]
    KvCacheTooSmall {
        prompt_tokens: usize,
        max_tokens: usize,
        needed_bytes: usize,
        budget_bytes: usize,
    },

    #[error(
        "model {model} is busy: {limit} requests are already queued; retry shortly or raise --queue-limit"
    )]
    Busy { model: String, limit: usize },

    #[error("model {0} was unloaded while the request waited")]
    Unloaded(String),

    #[error("chat template: {0}")]
    Template(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The OS error is part of the message, not a `source`: error chains would print it twice.
    #[error("cannot listen on {addr}: {error}; is another server using the port? (--port)")]
    Listen {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },

    #[error("{}", candle_message(.0))]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// candle's message without the backtrace it attaches when `RUST_BACKTRACE` is set.
pub(crate) fn candle_message(error: &candle_core::Error) -> String {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => other.to_string(),
    }
}

impl Error {
    /// True when the request itself was at fault (as opposed to the server or the model).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::UnknownTier(_)
                | Error::UnknownBackend(_)
                | Error::UnknownModel { .. }
                | Error::NoTierEntry { .. }
                | Error::InvalidRequest(_)
                | Error::ContextOverflow { .. }
                | Error::KvCacheTooSmall { .. }
                | Error::Template(_)
        )
    }
}
