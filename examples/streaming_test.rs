//! Streams generations and reports what a user of the stream experiences, per run: time to
//! first token, inter-token latency (median and p95, measured where the tokens arrive), and
//! prefill and decode tokens/s. `--backend all` compares the backends of one tier in one table;
//! a backend that fails gets a row saying why, the others still run, and the exit status says
//! that one failed.
//!
//!     cargo run --release --example streaming_test -- --model-size medium --backend huggingface
//!     cargo run --release --example streaming_test -- --backend all --runs 3

use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use wick::{
    Backend, DTypeChoice, DeviceChoice, GenerateRequest, LoadOptions, ManagerConfig, ModelManager,
    ModelSelector, SamplingParams, Tier, TokenEvent,
};

#[derive(Parser)]
#[command(about = "Measure streaming latency and throughput, per run and per backend")]
struct Args {
    #[arg(long, value_enum, default_value_t = Tier::Small)]
    model_size: Tier,
    /// gguf, huggingface, or all (both, side by side).
    #[arg(long, default_value = "gguf")]
    backend: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value = "Write a short story about a lighthouse keeper.")]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

struct Run {
    backend: Backend,
    run: usize,
    tokens: usize,
    ttft: Duration,
    itl: Vec<Duration>,
    prefill: f64,
    decode: f64,
}

/// A table row: a measured run, or a backend that could not run.
enum Row {
    Run(Run),
    Failed { backend: Backend, error: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let backends = match args.backend.as_str() {
        "all" => Backend::ALL.to_vec(),
        one => vec![one.parse()?],
    };
    let mut config = ManagerConfig::from_env()?;
    config.load = LoadOptions {
        device: args.device.parse::<DeviceChoice>()?,
        dtype: DTypeChoice::Auto,
        ..LoadOptions::default()
    };
    let manager = ModelManager::new(config);
    let mut rows = Vec::new();
    for backend in backends {
        match measure(&manager, &args, backend).await {
            Ok(runs) => rows.extend(runs.into_iter().map(Row::Run)),
            Err(e) => {
                eprintln!("{backend}: {e:#}");
                rows.push(Row::Failed {
                    backend,
                    error: format!("{e:#}"),
                });
            }
        }
    }
    print_table(&rows);
    let failed = rows
        .iter()
        .filter(|r| matches!(r, Row::Failed { .. }))
        .count();
    anyhow::ensure!(failed == 0, "{failed} backend(s) failed; see the table");
    Ok(())
}

/// Every run of one backend.
async fn measure(
    manager: &ModelManager,
    args: &Args,
    backend: Backend,
) -> anyhow::Result<Vec<Run>> {
    let engine = manager
        .get(&ModelSelector::Tier {
            tier: args.model_size,
            backend,
        })
        .await?;
    eprintln!(
        "{} on {} ({})",
        engine.info().name,
        engine.info().device,
        engine.info().dtype
    );
    let mut results = Vec::new();
    for run in 1..=args.runs {
        let request = GenerateRequest::prompt(args.prompt.clone()).with_params(SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(args.max_tokens)
        });
        let start = Instant::now();
        let mut arrivals = Vec::new();
        let mut tokens = engine.generate(request)?;
        while let Some(event) = tokens.next().await {
            match event {
                TokenEvent::Token(_) => arrivals.push(Instant::now()),
                TokenEvent::Done(summary) => {
                    if let Some(error) = summary.error {
                        anyhow::bail!("run {run} failed: {error}");
                    }
                    results.push(Run {
                        backend,
                        run,
                        tokens: summary.completion_tokens,
                        ttft: arrivals.first().map_or(Duration::ZERO, |t| *t - start),
                        itl: arrivals.windows(2).map(|w| w[1] - w[0]).collect(),
                        prefill: summary.prefill_tokens_per_second,
                        decode: summary.decode_tokens_per_second,
                    })
                }
            }
        }
    }
    Ok(results)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn print_table(rows: &[Row]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{:<12} {:>4} {:>7} {:>10} {:>12} {:>12} {:>14} {:>13}",
        "backend",
        "run",
        "tokens",
        "ttft ms",
        "itl p50 ms",
        "itl p95 ms",
        "prefill tok/s",
        "decode tok/s"
    );
    for row in rows {
        let r = match row {
            Row::Run(r) => r,
            Row::Failed { backend, error } => {
                // The first line of the error keeps the table readable; stderr has all of it.
                let first = error.lines().next().unwrap_or_default();
                println!("{:<12} failed: {first}", backend.to_string());
                continue;
            }
        };
        let mut itl = r.itl.clone();
        itl.sort();
        println!(
            "{:<12} {:>4} {:>7} {:>10.1} {:>12.2} {:>12.2} {:>14.1} {:>13.1}",
            r.backend.to_string(),
            r.run,
            r.tokens,
            ms(r.ttft),
            ms(percentile(&itl, 0.5)),
            ms(percentile(&itl, 0.95)),
            r.prefill,
            r.decode
        );
    }
}
