//! `wick export`: turn a GGUF model into the Hugging Face safetensors layout.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::ModelArgs;
use crate::engine::LoadOptions;
use crate::registry::Backend;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// config.json, model.safetensors, tokenizer.json, tokenizer_config.json.
    Safetensors,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WeightType {
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum)]
    pub to: Format,
    /// Directory to write (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Precision of the written weights. f32 keeps the dequantized values exactly.
    #[arg(long, value_enum, default_value = "f32")]
    pub weights: WeightType,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let manager = args.model.manager(LoadOptions::default())?;
    let selector = args.model.selector();
    let model = manager.resolve(&selector)?;
    anyhow::ensure!(
        model.backend == Backend::Gguf,
        "export reads a GGUF model; {model} is already in the safetensors layout"
    );
    let gguf = manager
        .pull(&selector)
        .await?
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "gguf"))
        .ok_or_else(|| anyhow::anyhow!("{model} has no .gguf file"))?;
    let dtype = match args.weights {
        WeightType::F32 => candle_core::DType::F32,
        WeightType::F16 => candle_core::DType::F16,
        WeightType::Bf16 => candle_core::DType::BF16,
    };
    let Format::Safetensors = args.to;
    let out = args.out.clone();
    tokio::task::spawn_blocking(move || crate::export::gguf_to_safetensors(&gguf, &out, dtype))
        .await??;
    println!("{}", args.out.display());
    Ok(())
}
