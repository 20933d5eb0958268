//! `wick generate`: one streamed generation, printed token by token.

use std::io::Write;

use anyhow::Context;
use clap::Args;
use futures::StreamExt;

use super::{ModelArgs, SamplingArgs};
use crate::engine::{ChatMessage, GenerateRequest, LoadOptions, TokenEvent};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The prompt (with --chat, the user's message).
    pub prompt: String,
    /// Treat the prompt as a chat message and apply the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Print which model and files would be used, then exit without downloading.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Prints the tokens on stdout, then the summary on stderr unless `quiet`.
pub async fn run(args: GenerateArgs, quiet: bool) -> anyhow::Result<()> {
    let manager = args.model.manager(LoadOptions::default())?;
    let selector = args.model.selector();
    if args.dry_run {
        println!("{}", manager.resolve(&selector)?);
        return Ok(());
    }
    let engine = manager.get(&selector).await?;
    let request = if args.chat {
        let mut messages: Vec<ChatMessage> =
            args.system.into_iter().map(ChatMessage::system).collect();
        messages.push(ChatMessage::user(args.prompt));
        GenerateRequest::chat(messages)
    } else {
        GenerateRequest::prompt(args.prompt)
    }
    .with_params(args.sampling.params());

    let mut tokens = engine.generate(request)?;
    let mut stdout = std::io::stdout().lock();
    while let Some(event) = tokens.next().await {
        match event {
            TokenEvent::Token(token) => {
                stdout.write_all(token.text.as_bytes())?;
                stdout.flush().context("writing to stdout")?;
            }
            TokenEvent::Done(summary) => {
                writeln!(stdout)?;
                if !quiet {
                    eprintln!("{summary}");
                }
                if let Some(error) = summary.error {
                    anyhow::bail!("generation failed: {error}");
                }
            }
        }
    }
    Ok(())
}
