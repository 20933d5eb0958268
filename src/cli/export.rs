//! `wick export`: a GGUF model into the Hugging Face safetensors layout, or a Hugging Face model
//! into one GGUF file (dense or `--quantize`d).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::ModelArgs;
use crate::engine::LoadOptions;
use crate::engine::resolve::ModelFiles;
use crate::export::GgufWeights;
use crate::registry::Backend;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// From a GGUF model: config.json, model.safetensors, tokenizer.json, tokenizer_config.json.
    Safetensors,
    /// From a Hugging Face model: one .gguf file llama.cpp loads (with --quantize: quantized).
    Gguf,
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
    /// Where to write: a directory (safetensors, created if needed) or a file (gguf).
    #[arg(long)]
    pub out: PathBuf,
    /// Precision of the written matrices. f32 keeps the values exactly; --quantize (gguf)
    /// writes quantized blocks instead.
    #[arg(long, value_enum, default_value = "f32", conflicts_with = "quantize")]
    pub weights: WeightType,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let manager = args.model.manager(LoadOptions::default())?;
    let selector = args.model.selector();
    let model = manager.resolve(&selector)?;
    let dtype = match args.weights {
        WeightType::F32 => candle_core::DType::F32,
        WeightType::F16 => candle_core::DType::F16,
        WeightType::Bf16 => candle_core::DType::BF16,
    };
    let out = args.out.clone();
    match args.to {
        Format::Safetensors => {
            anyhow::ensure!(
                model.backend == Backend::Gguf,
                "export --to safetensors reads a GGUF model; {model} is already in the \
                 safetensors layout"
            );
            anyhow::ensure!(
                args.model.quantize.is_none(),
                "--quantize writes a GGUF file (--to gguf)"
            );
            let gguf = manager
                .pull(&selector)
                .await?
                .into_iter()
                .find(|p| p.extension().is_some_and(|e| e == "gguf"))
                .ok_or_else(|| anyhow::anyhow!("{model} has no .gguf file"))?;
            tokio::task::spawn_blocking(move || {
                crate::export::gguf_to_safetensors(&gguf, &out, dtype)
            })
            .await??;
        }
        Format::Gguf => {
            let ModelFiles::Hf(files) = manager.files(&selector).await? else {
                anyhow::bail!(
                    "export --to gguf reads a Hugging Face model (--backend huggingface, or a \
                     directory with config.json); {model} is a GGUF file already"
                );
            };
            let weights = match args.model.quantize {
                Some(to) => GgufWeights::Quantized(to),
                None => GgufWeights::Dense(dtype),
            };
            tokio::task::spawn_blocking(move || {
                crate::export::safetensors_to_gguf(&files, &out, weights)
            })
            .await??;
        }
    }
    println!("{}", args.out.display());
    Ok(())
}
