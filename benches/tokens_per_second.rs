//! Tokens per second of the engine itself, for the small model as GGUF (Q4_1) and as the same
//! weights through the `huggingface` backend (dequantized to f32 safetensors):
//!
//! - `prefill/<backend>/<N>`: a prompt of N tokens (16, 512) in one pass, in prompt tokens/s;
//! - `decode/<backend>`: 32 tokens generated one by one after a 1-token prompt, in tokens/s;
//! - `first_token/<backend>/<N>`: time from request to the first streamed token;
//! - `decode_at_depth/<backend>/<N>`: 32 tokens generated after a prompt of N tokens (1, 2048),
//!   in tokens/s: each sequence's KV cache is written in place, so a token deep into a long
//!   generation costs its attention over the longer past, and no copy of the cache;
//! - `concurrent/<backend>/<N>`: N generations of 32 tokens at once (1, 8, 16), each after its
//!   own 8-token prompt, in tokens/s of all of them over the wall time: every step advances
//!   every sequence in one forward pass (`wick bench --concurrency` has the per-stream latencies).
//!
//! `cargo bench --bench tokens_per_second`; `cargo test --benches` runs each once as a check.

#[path = "../tests/common/fixture.rs"]
mod fixture;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Bencher, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use wick::{
    DeviceChoice, Engine, GenerateRequest, Input, LoadOptions, ManagerConfig, ModelManager,
    ModelSelector, SamplingParams, Summary, TokenEvent,
};

const DECODE_TOKENS: usize = 32;

fn engines(runtime: &tokio::runtime::Runtime) -> Vec<(&'static str, Arc<Engine>)> {
    runtime.block_on(async {
        let mut config = ManagerConfig::from_env().expect("registry");
        config.load = LoadOptions {
            device: DeviceChoice::Cpu,
            max_active: 16,
            ..LoadOptions::default()
        };
        let manager = ModelManager::new(config);
        let gguf_path = manager
            .pull(&ModelSelector::default())
            .await
            .expect("the small model")[0]
            .clone();
        let gguf = manager
            .get(&ModelSelector::default())
            .await
            .expect("GGUF model");
        let hf_dir = fixture::hf_fixture(&gguf_path);
        let hf = manager
            .get(&ModelSelector::Path(hf_dir))
            .await
            .expect("safetensors model");
        vec![("gguf", gguf), ("huggingface", hf)]
    })
}

/// Token ids that are ordinary words, so no special token sneaks into a prompt.
fn prompt(engine: &Engine, len: usize) -> Vec<u32> {
    let text =
        "The quick brown fox jumps over the lazy dog while the sun sets slowly. ".repeat(len);
    let ids = engine.encode_input(&Input::Prompt(text)).expect("encode");
    ids[..len].to_vec()
}

fn request(tokens: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest::new(Input::Tokens(tokens)).with_params(SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(max_tokens)
    })
}

/// Times `iters` generations of `max_tokens` after `tokens` by what `time` reads off each
/// summary (the engine's own clock, so the async plumbing is not counted).
fn summed(
    b: &mut Bencher<'_>,
    runtime: &tokio::runtime::Runtime,
    engine: &Arc<Engine>,
    tokens: &[u32],
    max_tokens: usize,
    time: impl Fn(&Summary) -> Duration + Copy + 'static,
) {
    b.to_async(runtime).iter_custom(|iters| {
        let (engine, tokens) = (engine.clone(), tokens.to_vec());
        async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let done = engine
                    .generate(request(tokens.clone(), max_tokens))
                    .expect("accepted")
                    .collect_text()
                    .await;
                total += time(&done.summary);
            }
            total
        }
    });
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let engines = engines(&runtime);

    let mut prefill = c.benchmark_group("prefill");
    prefill
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    for (backend, engine) in &engines {
        for len in [16, 512] {
            let tokens = prompt(engine, len);
            prefill.throughput(Throughput::Elements(len as u64));
            prefill.bench_function(BenchmarkId::new(*backend, len), |b| {
                summed(b, &runtime, engine, &tokens, 1, move |s| {
                    Duration::from_secs_f64(len as f64 / s.prefill_tokens_per_second)
                })
            });
        }
    }
    prefill.finish();

    let mut decode = c.benchmark_group("decode");
    decode
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    decode.throughput(Throughput::Elements(DECODE_TOKENS as u64));
    for (backend, engine) in &engines {
        let tokens = prompt(engine, 1);
        decode.bench_function(*backend, |b| {
            summed(b, &runtime, engine, &tokens, DECODE_TOKENS, |s| {
                s.total_time
            })
        });
    }
    decode.finish();

    let mut first = c.benchmark_group("first_token");
    first
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    for (backend, engine) in &engines {
        for len in [16, 512] {
            let tokens = prompt(engine, len);
            first.bench_function(BenchmarkId::new(*backend, len), |b| {
                b.to_async(&runtime).iter_custom(|iters| {
                    let (engine, tokens) = (engine.clone(), tokens.clone());
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let start = Instant::now();
                            let mut stream = engine
                                .generate(request(tokens.clone(), 2))
                                .expect("accepted");
                            while let Some(event) = stream.next().await {
                                if matches!(event, TokenEvent::Token(_)) {
                                    total += start.elapsed();
                                    break;
                                }
                            }
                        }
                        total
                    }
                });
            });
        }
    }
    first.finish();
}

fn bench_depth(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let engines = engines(&runtime);
    let mut depth = c.benchmark_group("decode_at_depth");
    depth
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    depth.throughput(Throughput::Elements(DECODE_TOKENS as u64));
    for (backend, engine) in &engines {
        for len in [1, 2048] {
            let tokens = prompt(engine, len);
            // The decode rate counts the tokens after the first.
            depth.bench_function(BenchmarkId::new(*backend, len), |b| {
                summed(b, &runtime, engine, &tokens, DECODE_TOKENS + 1, |s| {
                    Duration::from_secs_f64(DECODE_TOKENS as f64 / s.decode_tokens_per_second)
                })
            });
        }
    }
    depth.finish();
}

fn bench_concurrent(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let engines = engines(&runtime);
    let mut concurrent = c.benchmark_group("concurrent");
    concurrent
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for (backend, engine) in &engines {
        for streams in [1, 8, 16] {
            // Distinct prompts: each stream its own slice of the text.
            let text = prompt(engine, 8 * streams);
            let prompts: Vec<Vec<u32>> = text.chunks(8).map(<[u32]>::to_vec).collect();
            concurrent.throughput(Throughput::Elements((streams * DECODE_TOKENS) as u64));
            concurrent.bench_function(BenchmarkId::new(*backend, streams), |b| {
                b.to_async(&runtime).iter(|| {
                    let runs = prompts.iter().map(|tokens| {
                        let stream = engine
                            .generate(request(tokens.clone(), DECODE_TOKENS))
                            .expect("accepted");
                        stream.collect_text()
                    });
                    futures::future::join_all(runs)
                });
            });
        }
    }
    concurrent.finish();
}

criterion_group!(benches, bench, bench_depth, bench_concurrent);
criterion_main!(benches);
