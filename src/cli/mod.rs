//! The `wick` command line: `generate`, `serve`, `pull`, `models`, `bench`, `export`.

mod bench;
mod export;
mod generate;
mod models;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::engine::{
    DTypeChoice, DeviceChoice, KvDTypeChoice, LoadOptions, ManagerConfig, ModelManager, Quantize,
    SamplingParams,
};
use crate::registry::{Backend, ModelSelector, Registry, Tier};

#[derive(Debug, Parser)]
#[command(
    name = "wick",
    version,
    about = "Run Hugging Face language models with candle and stream every token over MCP"
)]
pub struct Cli {
    /// Only print errors: no log lines, and no summary line after `generate` (RUST_LOG
    /// overrides the log filter).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// CPU threads for the model's math (default: one per physical core, at most the CPUs this
    /// process may use: its CPU affinity and cgroup quota).
    #[arg(short = 't', long, global = true, value_parser = at_least_one_thread)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text from a prompt, printing tokens as they are produced.
    Generate(generate::GenerateArgs),
    /// Download a model's files into the cache.
    Pull(models::PullArgs),
    /// List the registry's models and whether their files are cached.
    Models(models::ModelsArgs),
    /// Serve models over MCP: Streamable HTTP at /mcp, legacy HTTP+SSE at /sse.
    Serve(serve::ServeArgs),
    /// Write a GGUF model out in the Hugging Face safetensors layout.
    Export(export::ExportArgs),
    /// Measure prompt processing and generation speed, as llama.cpp's llama-bench does.
    Bench(bench::BenchArgs),
}

/// Which model, and where to run it.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Size tier from the registry.
    #[arg(long, value_enum, default_value_t = Tier::Small)]
    pub model_size: Tier,
    /// Weights format: gguf (quantized) or huggingface (safetensors).
    #[arg(long, value_enum, default_value_t = Backend::Gguf)]
    pub backend: Backend,
    /// A registry model name, or a Hub repository as REPO[:FILE] (FILE picks a .gguf).
    #[arg(long, conflicts_with = "model_path")]
    pub model: Option<String>,
    /// A local .gguf file, or a directory in the Hugging Face layout.
    #[arg(long)]
    pub model_path: Option<PathBuf>,
    /// Hub revision (branch, tag or commit) for --model REPO.
    #[arg(long, requires = "model")]
    pub revision: Option<String>,
    /// auto, cpu, cuda (or gpu, the same) or cuda:N.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// Precision of safetensors weights (auto: f32 on CPU, bf16 on CUDA).
    #[arg(long, value_enum, default_value_t = DTypeChoice::Auto)]
    pub dtype: DTypeChoice,
    /// Quantize safetensors weights as they load, with the kernels GGUF files use: q8_0, q6_k,
    /// or q4_k (llama.cpp's Q4_K_M recipe).
    #[arg(long, value_enum)]
    pub quantize: Option<Quantize>,
}

/// How much work each model's engine takes on at once.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Sequences generated at once per model; every step advances all of them together.
    #[arg(long, default_value_t = LoadOptions::default().max_active)]
    pub max_active: usize,
    /// Requests that may wait per model before new ones are refused as busy.
    #[arg(long, default_value_t = LoadOptions::default().queue_limit)]
    pub queue_limit: usize,
    /// Prompt tokens one step takes besides the decode rows; longer prompts are prefilled in
    /// chunks of this size, between other sequences' tokens [default: 512 on the CPU, 2048 on
    /// a GPU].
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Memory of a model's KV block pool, e.g. 2GiB or 512MB: what running sequences hold and
    /// cached prompt prefixes keep; a request waits until its prompt's blocks are free
    /// [default: half the available RAM on the CPU, 80% of the GPU's free memory, once the
    /// weights are loaded].
    #[arg(long, value_parser = parse_bytes)]
    pub kv_cache_memory: Option<usize>,
    /// Positions per KV block: the unit in which sequences take memory and prompts share
    /// cached prefixes.
    #[arg(long, default_value_t = LoadOptions::default().kv_block_size, value_parser = parse_block_size)]
    pub kv_block_size: usize,
    /// What the KV blocks hold: auto is f16 on the CPU, the model's dtype on a GPU.
    #[arg(long, value_enum, default_value_t = KvDTypeChoice::Auto)]
    pub kv_cache_dtype: KvDTypeChoice,
    /// Compute every prompt in full instead of reusing the blocks of a prefix computed before.
    #[arg(long)]
    pub no_prefix_cache: bool,
}

impl EngineArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            max_active: self.max_active,
            queue_limit: self.queue_limit,
            max_batch_tokens: self.max_batch_tokens,
            kv_cache_memory: self.kv_cache_memory,
            kv_block_size: self.kv_block_size,
            kv_cache_dtype: self.kv_cache_dtype,
            prefix_cache: !self.no_prefix_cache,
            ..LoadOptions::default()
        }
    }
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s.parse()?;
    usize::try_from(size.as_u64()).map_err(|e| e.to_string())
}

fn parse_block_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=4096).contains(&n) => Ok(n),
        _ => Err(format!("{s} is not a block size from 1 to 4096 positions")),
    }
}

pub(super) fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse().map_err(|e: crate::Error| e.to_string())
}

impl ModelArgs {
    pub fn selector(&self) -> ModelSelector {
        if let Some(path) = &self.model_path {
            return ModelSelector::Path(path.clone());
        }
        match &self.model {
            Some(model) if model.contains('/') => {
                ModelSelector::repo(model, self.revision.clone(), self.backend)
            }
            Some(name) => ModelSelector::Name(name.clone()),
            None => ModelSelector::Tier {
                tier: self.model_size,
                backend: self.backend,
            },
        }
    }

    /// A manager configured from the environment and these flags, once the flags are known to
    /// make sense together.
    pub fn manager(&self, load: LoadOptions) -> crate::Result<ModelManager> {
        let mut config = ManagerConfig::from_env()?;
        self.check_revision(&config.registry)?;
        config.load = LoadOptions {
            device: self.device,
            dtype: self.dtype,
            quantize: self.quantize,
            ..load
        };
        Ok(ModelManager::new(config))
    }
}

impl ModelArgs {
    /// `--revision` with a registry name is refused rather than ignored: a registry model is
    /// pinned to the revision its sha256 records and mirrors describe, so another revision is
    /// asked for by naming the repository.
    fn check_revision(&self, registry: &Registry) -> crate::Result<()> {
        let (Some(revision), Some(name)) = (&self.revision, &self.model) else {
            return Ok(());
        };
        if name.contains('/') {
            return Ok(());
        }
        let entry = registry.by_name(name)?;
        let instead = match (&entry.gguf_file, entry.backend) {
            (Some(file), _) => format!("--model {}:{file}", entry.repo),
            (None, backend) => format!("--model {} --backend {backend}", entry.repo),
        };
        Err(crate::Error::InvalidRequest(format!(
            "--revision applies to a Hub repository, and `{name}` is a registry model pinned to \
             revision {} of {}; for revision {revision}, name the repository: {instead} \
             --revision {revision}",
            entry.revision, entry.repo
        )))
    }
}

/// How tokens are sampled.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = SamplingParams::default().max_tokens)]
    pub max_tokens: usize,
    /// 0 is greedy (always the most likely token).
    #[arg(long, default_value_t = SamplingParams::default().temperature)]
    pub temperature: f64,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = SamplingParams::default().top_k)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = SamplingParams::default().top_p)]
    pub top_p: f64,
    /// Penalty for repeating recent tokens (1 = off).
    #[arg(long, default_value_t = SamplingParams::default().repeat_penalty)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty considers.
    #[arg(long, default_value_t = SamplingParams::default().repeat_last_n)]
    pub repeat_last_n: usize,
    /// Random seed, for reproducible sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this text (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Generate all --max-tokens, past end-of-sequence tokens (for measuring).
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            logprobs: None,
            prompt_logprobs: None,
            constraint: None,
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(cli.quiet);
    match cli.command {
        Command::Generate(args) => generate::run(args, cli.quiet).await,
        Command::Pull(args) => models::pull(args).await,
        Command::Models(args) => models::list(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Export(args) => export::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}

fn init_logging(quiet: bool) {
    // hf-hub logs its own copy of errors that wick reports with advice attached.
    let default = if quiet {
        "error"
    } else {
        "warn,wick=info,hf_hub=off"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(OrdinaryDisconnects)
        .with(format)
        .try_init();
}

/// rmcp logs an ERROR ("failed to send pending response during drain") whenever a client
/// cancels a call or goes away while its response is pending: an ordinary event, not a fault of
/// the server, and one that would page an operator. This layer drops that line only.
struct OrdinaryDisconnects;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for OrdinaryDisconnects {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}") == RMCP_DISCONNECT;
                }
            }
        }
        let metadata = event.metadata();
        if *metadata.level() != tracing::Level::ERROR || !metadata.target().starts_with("rmcp") {
            return true;
        }
        let mut message = Message(false);
        event.record(&mut message);
        !message.0
    }
}

const RMCP_DISCONNECT: &str = "failed to send pending response during drain";

fn at_least_one_thread(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("0 threads cannot compute; give 1 or more".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}: give a number of threads, e.g. -t 2")),
    }
}

/// The threads the model's math runs on: `requested` (`-t`), or one per physical core but never
/// more than the CPUs this process may use (affinity and cgroup quota: a pod limited to 2 CPUs on
/// a 64-core node gets 2). With a warning to print where `-t` asks for more than that: spinning
/// threads that outnumber their CPUs wait for each other at every operation.
pub fn threads(requested: Option<usize>) -> (usize, Option<String>) {
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    match requested {
        Some(threads) if threads > usable => (
            threads,
            Some(format!(
                "-t {threads} is more threads than the {usable} CPUs this process may use \
                 (CPU affinity, cgroup quota): decoding will be far slower than with -t {usable}"
            )),
        ),
        Some(threads) => (threads, None),
        None => (candle_core::utils::get_num_threads().min(usable), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer a test subscriber writes into.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut buffer = self.0.lock().unwrap_or_else(|e| e.into_inner());
            buffer.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_ordinary_disconnect_is_not_logged_as_an_error_and_other_errors_are() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry()
            .with(OrdinaryDisconnects)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "rmcp::service", error = "closed", "{RMCP_DISCONNECT}");
            tracing::error!(target: "rmcp::service", "response send task failed during drain");
            tracing::error!(target: "wick", "{RMCP_DISCONNECT}");
        });
        let logged = String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned();
        assert_eq!(logged.matches(RMCP_DISCONNECT).count(), 1, "{logged}");
        assert!(logged.contains("response send task failed"), "{logged}");
    }
}
