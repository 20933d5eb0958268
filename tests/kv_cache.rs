//! The block KV cache with real weights (SmolLM2 on the CPU): admission by the blocks a prompt
//! needs, preemption when the pool runs out, and prompts sharing a cached prefix — each giving
//! the same greedy text, token for token, as a request that ran alone without them.

mod common;

use common::{greedy, run, small_engine};
use futures::StreamExt;
use wick::{
    Engine, EngineStats, GenerateRequest, LoadOptions, SamplingParams, Summary, TokenEvent,
};

/// K and V of 30 layers, 3 KV heads of 64, f16; 16 positions per block.
const BLOCK_BYTES: usize = 2 * 30 * 3 * 64 * 2 * 16;

fn pool(blocks: usize) -> LoadOptions {
    LoadOptions {
        kv_cache_memory: Some(blocks * BLOCK_BYTES),
        ..LoadOptions::default()
    }
}

fn no_prefix_cache() -> LoadOptions {
    LoadOptions {
        prefix_cache: false,
        ..LoadOptions::default()
    }
}

/// Exactly `max_tokens` greedy tokens (no early end at EOS).
fn long(prompt: &str, max_tokens: usize) -> GenerateRequest {
    let mut params = SamplingParams::greedy(max_tokens);
    params.ignore_eos = true;
    GenerateRequest::prompt(prompt).with_params(params)
}

/// A request's token ids, checking that each streamed token came once, in order.
async fn tokens(engine: &Engine, request: GenerateRequest) -> (Vec<u32>, Summary) {
    let mut stream = engine.generate(request).expect("request accepted");
    let mut ids = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            TokenEvent::Token(t) => {
                assert_eq!(
                    t.index,
                    ids.len() + 1,
                    "every token streamed once, in order"
                );
                ids.push(t.id);
            }
            TokenEvent::Done(summary) => {
                assert_eq!(summary.completion_tokens, ids.len());
                return (ids, summary);
            }
        }
    }
    panic!("the stream ended without a summary");
}

/// A prompt of about `words` tokens: a numbered list, so it is the same text every run.
fn document(words: usize) -> String {
    (1..=words / 4)
        .map(|i| format!("item {i}: ok."))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn preempted_sequences_continue_with_the_text_they_give_alone() {
    let prompts = [
        "The history of the Roman Empire",
        "A recipe for bread: first,",
        "1, 2, 3, 4, 5,",
        "Dear diary, today I",
    ];
    let alone_engine = small_engine(no_prefix_cache()).await;
    let mut alone = Vec::new();
    for prompt in prompts {
        alone.push(tokens(&alone_engine, long(prompt, 120)).await.0);
    }
    // Each needs 9 blocks at its end (about 8 prompt tokens and 120 generated); 16 hold one
    // with room to spare but not four.
    let engine = small_engine(pool(16)).await;
    let runs = prompts.map(|prompt| tokens(&engine, long(prompt, 120)));
    let together = futures::future::join_all(runs).await;
    for (i, ((ids, summary), alone)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(summary.error, None);
        assert_eq!(ids, alone, "prompt {i}: the same tokens as alone");
    }
    let stats = engine.stats();
    assert!(stats.preemptions > 0, "{stats:?}");
    assert_eq!((stats.active, stats.kv_blocks_used), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn a_shared_prefix_is_computed_once_and_gives_the_same_text() {
    let prefix = document(300);
    let question = |q: &str| format!("{prefix}\nQuestion: {q}\nAnswer:");
    let cold = small_engine(no_prefix_cache()).await;
    let engine = small_engine(LoadOptions::default()).await;

    let (_, first) = tokens(&engine, greedy(&question("what is item 3?"), 16)).await;
    assert_eq!(first.cached_tokens, 0);
    let prefix_tokens = engine
        .encode_input(&wick::Input::Prompt(prefix.clone()))
        .unwrap()
        .len();
    assert!(prefix_tokens >= 300, "{prefix_tokens}");

    for q in ["how many items are there?", "what is item 40?"] {
        let (warm, summary) = tokens(&engine, greedy(&question(q), 24)).await;
        // Every full block of the shared prefix, less the one the tokenizer may merge across.
        assert!(
            summary.cached_tokens >= (prefix_tokens / 16 - 1) * 16,
            "{} of {prefix_tokens}",
            summary.cached_tokens
        );
        let (cold_ids, cold_summary) = tokens(&cold, greedy(&question(q), 24)).await;
        assert_eq!(cold_summary.cached_tokens, 0);
        assert_eq!(
            warm, cold_ids,
            "{q}: the same text with and without the cache"
        );
    }
    let stats = engine.stats();
    let full_blocks = (prefix_tokens / 16 - 1) as u64 * 16;
    assert!(stats.prefix_cache_hits >= 2 * full_blocks, "{stats:?}");
    assert!(
        stats.prefix_cache_queries >= 3 * prefix_tokens as u64,
        "{stats:?}"
    );
    assert!(
        stats.kv_blocks_cached > 0,
        "finished prompts stay cached: {stats:?}"
    );
    assert_eq!(cold.stats().prefix_cache_queries, 0);
}

#[tokio::test]
async fn concurrent_requests_share_the_blocks_of_a_cached_prefix() {
    let prefix = document(400);
    let engine = small_engine(LoadOptions::default()).await;
    run(&engine, greedy(&format!("{prefix} A"), 1)).await;
    let before = engine.stats();
    let mut streams: Vec<_> = ["B", "C"]
        .iter()
        .map(|q| {
            engine
                .generate(long(&format!("{prefix} {q}"), 200))
                .unwrap()
        })
        .collect();
    for stream in &mut streams {
        assert!(matches!(stream.next().await, Some(TokenEvent::Token(_))));
    }
    let during = engine.stats();
    // Alone each holds the prefix's blocks and a few of its own; sharing, the pair holds the
    // prefix once.
    let prefix_blocks = 400 / 16;
    assert!(
        during.kv_blocks_used < 2 * prefix_blocks,
        "{before:?} -> {during:?}"
    );
    assert!(during.kv_blocks_used > prefix_blocks, "{during:?}");
    drop(streams);
}

#[tokio::test]
async fn eviction_under_pressure_keeps_prompts_correct() {
    // 40 blocks: room for two of these prompts' blocks, cached or running.
    let engine = small_engine(pool(40)).await;
    let cold = small_engine(no_prefix_cache()).await;
    let prompts: Vec<String> = (0..5)
        .map(|i| format!("Report {i}. {}", document(280)))
        .collect();
    let mut last = EngineStats::default();
    for round in 0..2 {
        for prompt in &prompts {
            let (warm, summary) = tokens(&engine, greedy(prompt, 8)).await;
            assert_eq!(summary.error, None);
            if round == 1 {
                let (cold_ids, _) = tokens(&cold, greedy(prompt, 8)).await;
                assert_eq!(warm, cold_ids);
            }
            last = engine.stats();
            assert!(last.kv_blocks_cached <= last.kv_blocks_total, "{last:?}");
        }
    }
    // Five prompts of ~18 blocks do not fit in 40: the second round found at most the last two.
    assert!(
        last.prefix_cache_hits < last.prefix_cache_queries / 2,
        "{last:?}"
    );
}

#[tokio::test]
async fn a_request_that_could_never_fit_is_refused_with_the_numbers() {
    let engine = small_engine(pool(4)).await;
    let error = engine
        .generate(greedy("Hello", 100))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("--kv-cache-memory"), "{error}");
    // 64 positions fit: admitted by its prompt's blocks, it grows as it goes.
    let (pieces, _, summary) = run(&engine, long("Hello", 50)).await;
    assert_eq!(summary.completion_tokens, 50, "{pieces:?}");
}
