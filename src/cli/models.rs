//! `wick pull` and `wick models`.

use clap::Args;

use super::ModelArgs;
use crate::engine::{LoadOptions, Source};
use crate::registry::Backend;

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
}

pub async fn list(args: ModelsArgs) -> anyhow::Result<()> {
    let manager = crate::ModelManager::from_env()?;
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
        rows.push((entry, cached));
    }
    if args.json {
        let json: Vec<_> = rows
            .iter()
            .map(|(entry, cached)| {
                serde_json::json!({
                    "name": entry.name,
                    "tier": entry.tier,
                    "backend": entry.backend,
                    "architecture": entry.architecture,
                    "repo": entry.repo,
                    "revision": entry.revision,
                    "gguf_file": entry.gguf_file,
                    "cached": cached,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!("registry: {}", manager.registry().origin());
    println!(
        "{:<30} {:<7} {:<12} {:<6} {:<7} REPOSITORY",
        "NAME", "TIER", "BACKEND", "ARCH", "CACHED"
    );
    for (entry, cached) in rows {
        println!(
            "{:<30} {:<7} {:<12} {:<6} {:<7} {}{}",
            entry.name,
            entry.tier.to_string(),
            entry.backend.to_string(),
            entry.architecture,
            if cached { "yes" } else { "no" },
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
