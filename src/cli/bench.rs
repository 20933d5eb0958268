//! `wick bench`: prompt-processing and text-generation speed, in llama-bench's terms, so the
//! figures compare with llama.cpp's `llama-bench` on the very same GGUF file:
//!
//! - `pp<N>`: a prompt of N tokens processed in one pass; tokens/s of the prompt.
//! - `tg<N>`: N tokens generated one at a time after a 1-token prompt, ignoring end-of-sequence.
//!
//! Prompts are pseudo-random token ids (as llama-bench's are); every test runs once to warm up,
//! then `--repetitions` times; the table shows the mean ± standard deviation of tokens/s.

use clap::Args;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use super::ModelArgs;
use crate::engine::{Engine, GenerateRequest, Input, LoadOptions, SamplingParams, Summary};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Prompt lengths to test (pp<N>), comma-separated; 0 skips.
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to test (tg<N>), comma-separated; 0 skips.
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Measured runs per test, after one warm-up run.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: usize,
    /// Print llama-bench-style JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// One row, with llama-bench's JSON field names.
#[derive(Debug, Serialize)]
pub struct BenchRow {
    pub model: String,
    pub model_filename: String,
    pub backend: String,
    pub device: String,
    pub n_threads: usize,
    pub test: String,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub avg_ns: u64,
    pub stddev_ns: u64,
    pub avg_ts: f64,
    pub stddev_ts: f64,
    pub samples_ns: Vec<u64>,
    pub samples_ts: Vec<f64>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let manager = args.model.manager(LoadOptions {
        max_active: 1,
        ..LoadOptions::default()
    })?;
    let engine = manager.get(&args.model.selector()).await?;
    let tests = args
        .n_prompt
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| (n, 0))
        .chain(args.n_gen.iter().filter(|&&n| n > 0).map(|&n| (0, n)));
    let mut rows = Vec::new();
    for (n_prompt, n_gen) in tests {
        let row = measure(&engine, n_prompt, n_gen, args.repetitions.max(1)).await?;
        if !args.json {
            if rows.is_empty() {
                print_header();
            }
            print_row(&row);
        }
        rows.push(row);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

async fn measure(
    engine: &Engine,
    n_prompt: usize,
    n_gen: usize,
    repetitions: usize,
) -> anyhow::Result<BenchRow> {
    let mut samples_ns = Vec::new();
    for run in 0..=repetitions {
        let summary = once(engine, n_prompt, n_gen, run as u64).await?;
        // Prompt processing: the prefill pass alone. Generation: all the engine's time for
        // n_gen tokens after a 1-token prompt (its pass is the first generation step).
        let seconds = if n_prompt > 0 {
            n_prompt as f64 / summary.prefill_tokens_per_second
        } else {
            summary.total_time.as_secs_f64()
        };
        if run > 0 {
            samples_ns.push((seconds * 1e9) as u64);
        }
    }
    let tokens = (n_prompt + n_gen) as f64;
    let nanoseconds: Vec<f64> = samples_ns.iter().map(|&ns| ns as f64).collect();
    let samples_ts: Vec<f64> = nanoseconds.iter().map(|ns| tokens / (ns / 1e9)).collect();
    let info = engine.info();
    Ok(BenchRow {
        model: info.name.clone(),
        model_filename: info.source.clone(),
        backend: info.backend.to_string(),
        device: info.device.clone(),
        n_threads: candle_core::utils::get_num_threads(),
        test: if n_prompt > 0 {
            format!("pp{n_prompt}")
        } else {
            format!("tg{n_gen}")
        },
        n_prompt,
        n_gen,
        avg_ns: mean(&nanoseconds) as u64,
        stddev_ns: stddev(&nanoseconds) as u64,
        avg_ts: mean(&samples_ts),
        stddev_ts: stddev(&samples_ts),
        samples_ns,
        samples_ts,
    })
}

async fn once(
    engine: &Engine,
    n_prompt: usize,
    n_gen: usize,
    seed: u64,
) -> anyhow::Result<Summary> {
    let prompt = random_tokens(n_prompt.max(1), engine.vocab_size(), seed);
    let params = SamplingParams {
        max_tokens: n_gen.max(1),
        ignore_eos: true,
        ..SamplingParams::greedy(1)
    };
    let request = GenerateRequest::new(Input::Tokens(prompt)).with_params(params);
    let done = engine.generate(request)?.collect_text().await;
    match done.summary.error {
        Some(error) => anyhow::bail!("generation failed: {error}"),
        None => Ok(done.summary),
    }
}

/// Reproducible pseudo-random token ids, like llama-bench's random prompts.
fn random_tokens(count: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn stddev(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values);
    (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

fn print_header() {
    println!(
        "| {:<30} | {:<11} | {:<6} | {:>7} | {:>8} | {:>20} |",
        "model", "backend", "device", "threads", "test", "t/s"
    );
    println!(
        "| {:-<30} | {:-<11} | {:-<6} | {:->7}: | {:->7}: | {:->19}: |",
        "", "", "", "", "", ""
    );
}

fn print_row(row: &BenchRow) {
    println!(
        "| {:<30} | {:<11} | {:<6} | {:>7} | {:>8} | {:>20} |",
        row.model,
        row.backend,
        row.device,
        row.n_threads,
        row.test,
        format!("{:.2} ± {:.2}", row.avg_ts, row.stddev_ts)
    );
}
