//! `wick bench`: prompt-processing and text-generation speed, in llama-bench's terms, so the
//! figures compare with llama.cpp's `llama-bench` on the very same GGUF file:
//!
//! - `pp<N>`: a prompt of N tokens processed in one pass; tokens/s of the prompt.
//! - `tg<N>`: N tokens generated one at a time after a 1-token prompt, ignoring end-of-sequence.
//!
//! Prompts are pseudo-random token ids (as llama-bench's are); every test runs once to warm up,
//! then `--repetitions` times; the table shows the mean ± standard deviation of tokens/s.
//!
//! `--concurrency 1,8` runs that many generations at once instead (each a `-p`-token prompt,
//! then `-n` tokens), timed as a client sees them: aggregate tokens/s (every stream's tokens over
//! the wall time), tokens/s per stream, time to first token and inter-token latency (p50, p95).
//!
//! Every generation of a run gets a prompt of its own (one seed each), so that no test finds an
//! earlier one's prompt in the prefix cache: each row reports the prefix-cache hits it saw (0 when
//! the figures are what they say), preemptions, and the KV blocks at the busiest moment.

use std::future::Future;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use super::{EngineArgs, ModelArgs};
use crate::engine::{
    Engine, EngineStats, GenerateRequest, Input, LoadOptions, SamplingParams, Summary, TokenEvent,
};
use crate::server::metrics::kv_blocks_free;

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
    /// Concurrent generations to test, comma-separated (e.g. 1,2,4,8,16); each level runs
    /// that many at once with the first `-p` and `-n` values.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
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
    /// tg tests: the weight bytes one decode step reads (`ModelInfo::weight_bytes_per_token`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_bytes_per_token: Option<u64>,
    /// tg tests: those bytes times tokens/s, in GB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights_gb_per_s: Option<f64>,
    /// tg tests on the CPU: the machine's memory read bandwidth, measured in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_gb_per_s: Option<f64>,
    #[serde(flatten)]
    pub kv: KvUse,
}

/// The engine's KV cache over one test (warm-up included): its blocks at the moment the most were
/// in use (read every [`KV_SAMPLE_EVERY`]), and what its prefix cache and scheduler counted
/// meanwhile.
#[derive(Debug, Default, Serialize)]
pub struct KvUse {
    pub kv_blocks_used: usize,
    pub kv_blocks_cached: usize,
    pub kv_blocks_free: usize,
    /// Prompt tokens looked up in the prefix cache, and found there: with every prompt new, a hit
    /// means some prefill was skipped and the figure flatters.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Sequences preempted because the block pool ran out: their tokens were computed twice.
    pub preemptions: u64,
}

/// How often [`watched`] reads the engine's blocks: often enough to catch all but the shortest
/// prefills, seldom enough (a few microseconds each) not to slow the threads being measured.
const KV_SAMPLE_EVERY: Duration = Duration::from_millis(2);

/// Runs `work`, reading the engine's KV cache meanwhile; see [`KvUse`].
async fn watched<T>(engine: &Engine, work: impl Future<Output = T>) -> (T, KvUse) {
    let start = engine.stats();
    let mut busiest = start;
    let mut ticks = tokio::time::interval(KV_SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut work = std::pin::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = ticks.tick() => {
                let now = engine.stats();
                if now.kv_blocks_used > busiest.kv_blocks_used {
                    busiest = now;
                }
            }
        }
    };
    (out, kv_use(&start, &busiest, &engine.stats()))
}

fn kv_use(start: &EngineStats, busiest: &EngineStats, end: &EngineStats) -> KvUse {
    KvUse {
        kv_blocks_used: busiest.kv_blocks_used,
        kv_blocks_cached: busiest.kv_blocks_cached,
        kv_blocks_free: kv_blocks_free(busiest),
        prefix_cache_queries: end
            .prefix_cache_queries
            .saturating_sub(start.prefix_cache_queries),
        prefix_cache_hits: end
            .prefix_cache_hits
            .saturating_sub(start.prefix_cache_hits),
        preemptions: end.preemptions.saturating_sub(start.preemptions),
    }
}

impl KvUse {
    /// Says on stderr when a test's figure does not measure what its name says.
    fn warn(&self, test: &str) {
        if self.prefix_cache_hits > 0 {
            eprintln!(
                "warning: {test} found {} prompt tokens in the prefix cache; its prefill was \
                 partly skipped",
                self.prefix_cache_hits
            );
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Checked before the model loads: with nothing to measure there is no reason to wait.
    if args.concurrency.is_empty() {
        anyhow::ensure!(
            args.n_prompt.iter().chain(&args.n_gen).any(|&n| n > 0),
            "nothing to measure: every -p (prompt length) and -n (generation length) is 0; give \
             one above 0, e.g. -p 512 -n 128"
        );
    } else {
        anyhow::ensure!(
            args.concurrency.iter().any(|&c| c > 0),
            "nothing to measure: every --concurrency level is 0; give one above 0, e.g. \
             --concurrency 1,8"
        );
    }
    // Every concurrent generation must run at once, not wait for a slot.
    let most = args.concurrency.iter().copied().max().unwrap_or(1);
    let manager = args.model.manager(LoadOptions {
        max_active: most.max(1),
        queue_limit: most.max(args.engine.queue_limit),
        ..args.engine.load_options()
    })?;
    let engine = manager.get(&args.model.selector()).await?;
    if !args.concurrency.is_empty() {
        return concurrency(&engine, &args).await;
    }
    let tests = args
        .n_prompt
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| (n, 0))
        .chain(args.n_gen.iter().filter(|&&n| n > 0).map(|&n| (0, n)));
    // The bound a decode step works against, measured with the threads it computes with.
    let bandwidth = (engine.info().device == "cpu" && args.n_gen.iter().any(|&n| n > 0))
        .then(|| memory_bandwidth(candle_core::utils::get_num_threads()));
    let mut report = Report::new(args.json, print_header, print_row);
    let mut next_seed = 0;
    for (n_prompt, n_gen) in tests {
        let repetitions = args.repetitions.max(1);
        let measured = measure(&engine, n_prompt, n_gen, repetitions, &mut next_seed);
        let (row, kv) = watched(&engine, measured).await;
        let mut row = row?;
        kv.warn(&row.test);
        row.kv = kv;
        if n_gen > 0 {
            let bytes = engine.info().weight_bytes_per_token;
            row.weight_bytes_per_token = Some(bytes);
            row.weights_gb_per_s = Some(bytes as f64 * row.avg_ts / 1e9);
            row.memory_gb_per_s = bandwidth;
        }
        report.push(row);
    }
    report.finish()
}

/// Rows printed as a table while they are measured, or as JSON once all are.
struct Report<R> {
    json: bool,
    rows: Vec<R>,
    header: fn(),
    line: fn(&R),
}

impl<R: Serialize> Report<R> {
    fn new(json: bool, header: fn(), line: fn(&R)) -> Self {
        Self {
            json,
            rows: Vec::new(),
            header,
            line,
        }
    }

    fn push(&mut self, row: R) {
        if !self.json {
            if self.rows.is_empty() {
                (self.header)();
            }
            (self.line)(&row);
        }
        self.rows.push(row);
    }

    fn finish(self) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&self.rows)?);
        }
        Ok(())
    }
}

async fn measure(
    engine: &Engine,
    n_prompt: usize,
    n_gen: usize,
    repetitions: usize,
    next_seed: &mut u64,
) -> anyhow::Result<BenchRow> {
    let mut samples_ns = Vec::new();
    for run in 0..=repetitions {
        let summary = once(engine, n_prompt, n_gen, *next_seed).await?;
        *next_seed += 1;
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
        weight_bytes_per_token: None,
        weights_gb_per_s: None,
        memory_gb_per_s: None,
        kv: KvUse::default(),
    })
}

/// The machine's memory read bandwidth in GB/s: `threads` threads each summing its share of a
/// buffer far larger than the caches, the best of five passes.
fn memory_bandwidth(threads: usize) -> f64 {
    const BYTES: usize = 512 << 20;
    // Ones, not zeros: every page is really there, not the shared zero page; in the pages
    // wick keeps weights in.
    let buffer = vec![1u64; BYTES / 8];
    // SAFETY: the bytes of initialized u64s, borrowed for this call only.
    let bytes = unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u8>(), BYTES) };
    crate::engine::model::kernels::prefer_huge_pages(bytes);
    let share = buffer.len().div_ceil(threads.max(1));
    let mut best = 0f64;
    for _ in 0..5 {
        let started = Instant::now();
        let total: u64 = std::thread::scope(|scope| {
            let parts: Vec<_> = buffer
                .chunks(share)
                .map(|part| scope.spawn(move || part.iter().fold(0u64, |a, &v| a.wrapping_add(v))))
                .collect();
            parts.into_iter().map(|p| p.join().unwrap_or(0)).sum()
        });
        std::hint::black_box(total);
        best = best.max(BYTES as f64 / started.elapsed().as_secs_f64() / 1e9);
    }
    best
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

/// One concurrency level, with llama-bench's identity fields and the client-side timings.
#[derive(Debug, Serialize)]
pub struct ConcurrencyRow {
    pub model: String,
    pub model_filename: String,
    pub backend: String,
    pub device: String,
    pub n_threads: usize,
    pub test: String,
    pub concurrency: usize,
    pub n_prompt: usize,
    pub n_gen: usize,
    /// Every stream's tokens over the wall time of the level, mean and deviation over runs.
    pub avg_ts: f64,
    pub stddev_ts: f64,
    pub samples_ts: Vec<f64>,
    /// Tokens per second of one stream after its first token, mean over streams and runs.
    pub per_stream_ts: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p95_ms: f64,
    pub itl_p50_ms: f64,
    pub itl_p95_ms: f64,
    #[serde(flatten)]
    pub kv: KvUse,
}

async fn concurrency(engine: &Engine, args: &BenchArgs) -> anyhow::Result<()> {
    let n_prompt = args.n_prompt.first().copied().unwrap_or(0).max(1);
    let n_gen = args.n_gen.first().copied().unwrap_or(0).max(1);
    let mut report = Report::new(args.json, print_concurrency_header, print_concurrency_row);
    let mut next_seed = 0;
    for &streams in args.concurrency.iter().filter(|&&c| c > 0) {
        let (mut samples_ts, mut per_stream) = (Vec::new(), Vec::new());
        let (mut ttft, mut itl) = (Vec::new(), Vec::new());
        let level = async {
            for run in 0..=args.repetitions.max(1) {
                let started = Instant::now();
                let first_seed = next_seed;
                next_seed += streams as u64;
                let timings = futures::future::try_join_all(
                    (0..streams)
                        .map(|i| timed(engine, n_prompt, n_gen, first_seed + i as u64, started)),
                )
                .await?;
                let wall = started.elapsed().as_secs_f64();
                if run == 0 {
                    continue; // warm-up
                }
                samples_ts.push((streams * n_gen) as f64 / wall);
                for arrivals in timings {
                    ttft.push(arrivals[0] * 1e3);
                    itl.extend(arrivals.windows(2).map(|w| (w[1] - w[0]) * 1e3));
                    if let [first, .., last] = arrivals[..] {
                        per_stream.push((arrivals.len() - 1) as f64 / (last - first));
                    }
                }
            }
            anyhow::Ok(())
        };
        let (done, kv) = watched(engine, level).await;
        done?;
        let test = format!("pp{n_prompt}+tg{n_gen}");
        kv.warn(&test);
        let info = engine.info();
        report.push(ConcurrencyRow {
            model: info.name.clone(),
            model_filename: info.source.clone(),
            backend: info.backend.to_string(),
            device: info.device.clone(),
            n_threads: candle_core::utils::get_num_threads(),
            test,
            concurrency: streams,
            n_prompt,
            n_gen,
            avg_ts: mean(&samples_ts),
            stddev_ts: stddev(&samples_ts),
            samples_ts,
            per_stream_ts: mean(&per_stream),
            ttft_p50_ms: percentile(&mut ttft, 50.0),
            ttft_p95_ms: percentile(&mut ttft, 95.0),
            itl_p50_ms: percentile(&mut itl, 50.0),
            itl_p95_ms: percentile(&mut itl, 95.0),
            kv,
        });
    }
    report.finish()
}

/// One generation of exactly `n_gen` tokens: the seconds from `started` at which each arrived.
async fn timed(
    engine: &Engine,
    n_prompt: usize,
    n_gen: usize,
    seed: u64,
    started: Instant,
) -> anyhow::Result<Vec<f64>> {
    let params = SamplingParams {
        max_tokens: n_gen,
        ignore_eos: true,
        ..SamplingParams::greedy(1)
    };
    let prompt = random_tokens(n_prompt, engine.vocab_size(), seed);
    let request = GenerateRequest::new(Input::Tokens(prompt)).with_params(params);
    let mut stream = engine.generate(request)?;
    let mut arrivals = Vec::with_capacity(n_gen);
    while let Some(event) = stream.next().await {
        match event {
            TokenEvent::Token(_) => arrivals.push(started.elapsed().as_secs_f64()),
            TokenEvent::Done(summary) => match summary.error {
                Some(error) => anyhow::bail!("generation failed: {error}"),
                None => break,
            },
        }
    }
    anyhow::ensure!(!arrivals.is_empty(), "a generation produced no token");
    Ok(arrivals)
}

/// The `p`th percentile (nearest rank) of `values`; 0 when there are none.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn print_concurrency_header() {
    println!(
        "| {:<14} | {:>3} | {:>18} | {:>10} | {:>15} | {:>15} | {:>21} | {:>9} |",
        "test",
        "c",
        "aggregate t/s",
        "stream t/s",
        "TTFT p50/p95 ms",
        "ITL p50/p95 ms",
        "KV used/cached/free",
        "preempted"
    );
    println!(
        "| {:-<14} | {:->2}: | {:->17}: | {:->9}: | {:->14}: | {:->14}: | {:->20}: | {:->8}: |",
        "", "", "", "", "", "", "", ""
    );
}

fn print_concurrency_row(row: &ConcurrencyRow) {
    let kv = &row.kv;
    println!(
        "| {:<14} | {:>3} | {:>18} | {:>10.2} | {:>15} | {:>15} | {:>21} | {:>9} |",
        row.test,
        row.concurrency,
        format!("{:.2} ± {:.2}", row.avg_ts, row.stddev_ts),
        row.per_stream_ts,
        format!("{:.0} / {:.0}", row.ttft_p50_ms, row.ttft_p95_ms),
        format!("{:.1} / {:.1}", row.itl_p50_ms, row.itl_p95_ms),
        format!(
            "{} / {} / {}",
            kv.kv_blocks_used, kv.kv_blocks_cached, kv.kv_blocks_free
        ),
        kv.preemptions,
    );
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
        "| {:<30} | {:<11} | {:<6} | {:>7} | {:>8} | {:>20} | {:>9} | {:>7} | {:>12} |",
        "model", "backend", "device", "threads", "test", "t/s", "MB/token", "GB/s", "of memory"
    );
    println!(
        "| {:-<30} | {:-<11} | {:-<6} | {:->7}: | {:->7}: | {:->19}: | {:->8}: | {:->6}: | {:->11}: |",
        "", "", "", "", "", "", "", "", ""
    );
}

fn print_row(row: &BenchRow) {
    let or_blank = |v: Option<String>| v.unwrap_or_default();
    let of_memory = row
        .weights_gb_per_s
        .zip(row.memory_gb_per_s)
        .map(|(used, memory)| format!("{:.0}% of {memory:.1}", 100.0 * used / memory));
    println!(
        "| {:<30} | {:<11} | {:<6} | {:>7} | {:>8} | {:>20} | {:>9} | {:>7} | {:>12} |",
        row.model,
        row.backend,
        row.device,
        row.n_threads,
        row.test,
        format!("{:.2} ± {:.2}", row.avg_ts, row.stddev_ts),
        or_blank(
            row.weight_bytes_per_token
                .map(|b| format!("{:.1}", b as f64 / 1e6))
        ),
        or_blank(row.weights_gb_per_s.map(|g| format!("{g:.1}"))),
        or_blank(of_memory),
    );
}
