//! The smallest complete wick program: load the default model, stream one generation token by
//! token, then print the summary.
//!
//!     cargo run --release --example streaming_example -- "The capital of France is"

use std::io::Write;

use clap::Parser;
use futures::StreamExt;
use wick::{GenerateRequest, ModelManager, ModelSelector, SamplingParams, TokenEvent};

#[derive(Parser)]
#[command(about = "Stream one generation from the default model, token by token")]
struct Args {
    /// Text to continue.
    #[arg(default_value = "The capital of France is")]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
}

#[tokio::main]
async fn main() -> wick::Result<()> {
    let args = Args::parse();
    // Registry, caches and Hub settings from the environment; the model loads once, then stays.
    let manager = ModelManager::from_env()?;
    let engine = manager.get(&ModelSelector::default()).await?;

    let request =
        GenerateRequest::prompt(args.prompt).with_params(SamplingParams::greedy(args.max_tokens));
    let mut tokens = engine.generate(request)?;
    while let Some(event) = tokens.next().await {
        match event {
            TokenEvent::Token(token) => {
                print!("{}", token.text);
                std::io::stdout().flush()?;
            }
            TokenEvent::Done(summary) => println!("\n\n{summary}"),
        }
    }
    Ok(())
}
