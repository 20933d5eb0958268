//! `wick pull` and `wick models`.

use clap::Args;

use candle_core::DType;

use super::ModelArgs;
use crate::engine::{DTypeChoice, DeviceChoice, LoadOptions, Quantize, Source};
use crate::registry::{Backend, ModelEntry};

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Print which model and files would be used, and which of them are cached already, then
    /// exit without downloading.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let manager = args.model.manager(LoadOptions::default())?;
    let selector = args.model.selector();
    let model = manager.resolve(&selector)?;
    println!("{model}");
    if args.dry_run {
        for (file, path) in model.cached(manager.fetcher()).await {
            match path {
                Some(path) => println!("cached: {}", path.display()),
                None => println!("to download: {file}"),
            }
        }
        return Ok(());
    }
    for path in manager.pull(&selector).await? {
        println!("{}", path.display());
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The device whose memory the weights are counted for: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = super::parse_device)]
    pub device: DeviceChoice,
    /// The precision safetensors weights would load in (as `serve --dtype`).
    #[arg(long, value_enum, default_value_t = DTypeChoice::Auto)]
    pub dtype: DTypeChoice,
    /// Count safetensors weights as quantized at load (as `serve --quantize`).
    #[arg(long, value_enum)]
    pub quantize: Option<Quantize>,
}

/// What a Hugging Face entry's weights take in memory: the precision they load in (`precision`,
/// from the flags and the device) and the bytes, from the registry's parameter count; `None` for
/// GGUF files (as stored) and entries without a count.
fn in_memory(entry: &ModelEntry, precision: &Precision) -> Option<(String, u64)> {
    let parameters = entry
        .parameters
        .filter(|_| entry.backend == Backend::Huggingface)?;
    Some(match precision {
        &Precision::Quantized(to) => (
            to.to_string(),
            (parameters as f64 * to.bits_per_weight() / 8.0) as u64,
        ),
        Precision::Dense(choice, device) => {
            // The Hub's checkpoints of these models are bf16; a CPU keeps them so by default.
            let dtype = match device.is_cpu() {
                true => choice.on_cpu(DType::BF16),
                false => choice.resolve(device),
            };
            (
                format!("{dtype:?}").to_lowercase(),
                parameters * dtype.size_in_bytes() as u64,
            )
        }
    })
}

enum Precision {
    Dense(DTypeChoice, candle_core::Device),
    Quantized(Quantize),
}

pub async fn list(args: ModelsArgs) -> anyhow::Result<()> {
    let manager = crate::ModelManager::from_env()?;
    let device = args.device.resolve()?;
    // Refused here as `serve` would refuse it.
    let precision = match args.quantize {
        Some(to) => args
            .dtype
            .resolve_quantized()
            .map(|_| Precision::Quantized(to))?,
        None => Precision::Dense(args.dtype, device.clone()),
    };
    let mut rows = Vec::new();
    for entry in manager.registry().models() {
        let selector = crate::ModelSelector::Name(entry.name.clone());
        let resolved = manager.resolve(&selector)?;
        // The file whose presence says the model was pulled: the weights or config.json.
        let cached = match &resolved.source {
            Source::Hub {
                repo, gguf_file, ..
            } => {
                let probe = match entry.backend {
                    Backend::Gguf => gguf_file.clone().unwrap_or_default(),
                    Backend::Huggingface => "config.json".to_string(),
                };
                manager.fetcher().cached(repo, &probe).await.is_some()
            }
            Source::Local(path) => path.exists(),
        };
        rows.push((entry, cached, in_memory(entry, &precision)));
    }
    if args.json {
        let json: Vec<_> = rows
            .iter()
            .map(|(entry, cached, memory)| {
                serde_json::json!({
                    "name": entry.name,
                    "tier": entry.tier,
                    "backend": entry.backend,
                    "architecture": entry.architecture,
                    "repo": entry.repo,
                    "revision": entry.revision,
                    "gguf_file": entry.gguf_file,
                    "cached": cached,
                    "in_memory": memory.as_ref().map(|(dtype, bytes)| {
                        serde_json::json!({ "dtype": dtype, "bytes": bytes })
                    }),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!("registry: {}", manager.registry().origin());
    println!(
        "{:<30} {:<7} {:<12} {:<6} {:<7} {:<17} REPOSITORY",
        "NAME", "TIER", "BACKEND", "ARCH", "CACHED", "IN MEMORY"
    );
    for (entry, cached, memory) in rows {
        let memory = match memory {
            Some((dtype, bytes)) => format!("{dtype} {}", bytesize::ByteSize(bytes)),
            None => "as stored".to_string(),
        };
        println!(
            "{:<30} {:<7} {:<12} {:<6} {:<7} {:<17} {}{}",
            entry.name,
            entry.tier.to_string(),
            entry.backend.to_string(),
            entry.architecture,
            if cached { "yes" } else { "no" },
            memory,
            entry.repo,
            entry
                .gguf_file
                .as_deref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}
