//! Continuous batching with real weights (the small SmolLM2 GGUF on the CPU): every running
//! sequence advances in one forward pass, and none of them can tell.

mod common;

use std::time::Duration;

use common::{greedy, run, small_engine};
use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use wick::{
    Engine, Error, FinishReason, GenerateRequest, Input, LoadOptions, SamplingParams, TokenEvent,
    TokenStream,
};

/// Sixteen prompts, the last three long enough to be multiplied apart from the rest.
fn prompts() -> Vec<String> {
    let mut prompts: Vec<String> = common::PROMPTS.map(String::from).to_vec();
    for prompt in &mut prompts[13..] {
        *prompt = format!("{prompt} ").repeat(8);
    }
    prompts
}

/// Alone, then all at once: every text is the same, and they ran in shared steps.
async fn together_as_alone(engine: &Engine, n: usize) {
    let prompts = &prompts()[..n];
    let mut alone = Vec::new();
    for p in prompts {
        let (pieces, _, summary) = run(engine, greedy(p, 16)).await;
        alone.push((pieces.concat(), summary.finish_reason));
    }
    let steps = engine.stats().steps;
    let together = join_all(prompts.iter().map(|p| run(engine, greedy(p, 16)))).await;
    for ((pieces, _, summary), expected) in together.into_iter().zip(&alone) {
        assert_eq!(
            (pieces.concat(), summary.finish_reason),
            *expected,
            "{n} at once"
        );
    }
    // Alone, each took a step per token; together they shared them.
    let shared = engine.stats().steps - steps;
    assert!(
        n == 1 || shared < (n * 16) as u64 / 2,
        "{n} generations of 16 tokens took {shared} steps"
    );
}

#[tokio::test]
async fn batched_greedy_texts_equal_the_texts_alone() {
    let engine = small_engine(LoadOptions::default()).await;
    for n in [1, 4, 16] {
        together_as_alone(&engine, n).await;
    }
}

/// Reads a stream to its end: the texts and the summary.
async fn finish(mut stream: TokenStream) -> (String, wick::Summary) {
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event {
            TokenEvent::Token(t) => text.push_str(&t.text),
            TokenEvent::Done(summary) => return (text, summary),
        }
    }
    panic!("the stream ended without a summary");
}

#[tokio::test]
async fn sequences_join_and_leave_without_changing_the_others() {
    let engine = small_engine(LoadOptions::default()).await;
    let prompts = prompts();
    let mut alone = Vec::new();
    for p in &prompts[..5] {
        alone.push(run(&engine, greedy(p, 24)).await.0.concat());
    }
    let cancel = CancellationToken::new();
    let mut streams: Vec<TokenStream> = prompts[..4]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let request = greedy(p, 24);
            let request = match i {
                1 => request.with_cancel(cancel.clone()),
                _ => request,
            };
            engine.generate(request).unwrap()
        })
        .collect();
    // The second one leaves after 3 tokens; a fifth joins.
    let mut leaving = streams.remove(1);
    let mut seen = 0;
    while seen < 3 {
        if let Some(TokenEvent::Token(_)) = leaving.next().await {
            seen += 1;
        }
    }
    let held = engine.stats().kv_cache_bytes;
    cancel.cancel();
    let (_, summary) = finish(leaving).await;
    assert_eq!(summary.finish_reason, FinishReason::Cancelled);
    assert!(
        engine.stats().kv_cache_bytes < held,
        "its cache is freed when it reports cancelled"
    );
    streams.insert(1, engine.generate(greedy(&prompts[4], 24)).unwrap());
    let results = join_all(streams.into_iter().map(finish)).await;
    for ((text, summary), expected) in results.iter().zip([0, 4, 2, 3].map(|i| &alone[i])) {
        assert_eq!(text, expected);
        assert_eq!(summary.finish_reason, FinishReason::Length);
    }
    let stats = engine.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!(
        (stats.kv_cache_bytes, stats.active, stats.queued),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn a_long_prompt_is_prefilled_in_chunks_while_the_others_get_tokens() {
    let chunk = 16;
    let engine = small_engine(LoadOptions {
        max_batch_tokens: Some(chunk),
        ..LoadOptions::default()
    })
    .await;
    let mut others: Vec<TokenStream> = prompts()[..3]
        .iter()
        .map(|p| engine.generate(endless(greedy(p, 0), 100)).unwrap())
        .collect();
    for stream in &mut others {
        assert!(matches!(stream.next().await, Some(TokenEvent::Token(_))));
    }
    let long = prompts()[15].repeat(2);
    let prompt_tokens = engine
        .encode_input(&Input::Prompt(long.clone()))
        .unwrap()
        .len();
    let chunks = prompt_tokens.div_ceil(chunk);
    assert!(chunks >= 8, "{prompt_tokens} tokens");
    // Whatever the others had already sent is not counted.
    for stream in &mut others {
        while let Some(Some(_)) = stream.next().now_or_never() {}
    }
    let mut long = engine.generate(greedy(&long, 4)).unwrap();
    // Events are read in the order the engine sent them: the others' first (biased), so every
    // token sent before the long request's first one is counted before it is seen.
    let mut during_prefill = [0; 3];
    let [a, b, c] = &mut others[..] else {
        unreachable!("three streams")
    };
    loop {
        tokio::select! {
            biased;
            Some(event) = a.next() => during_prefill[0] += is_token(&event),
            Some(event) = b.next() => during_prefill[1] += is_token(&event),
            Some(event) = c.next() => during_prefill[2] += is_token(&event),
            Some(event) = long.next() => {
                assert!(matches!(event, TokenEvent::Token(_)), "{event:?}");
                break;
            }
        }
    }
    // One token each per chunk step (the first may have gone before the count started).
    for count in during_prefill {
        assert!(
            count >= chunks - 1,
            "{count} tokens while {chunks} chunks were prefilled: {during_prefill:?}"
        );
    }
    let (_, summary) = finish(long).await;
    assert_eq!(summary.prompt_tokens, prompt_tokens);
    assert_eq!(summary.finish_reason, FinishReason::Length);
}

fn is_token(event: &TokenEvent) -> usize {
    matches!(event, TokenEvent::Token(_)) as usize
}

/// Exactly `max_tokens` tokens, end of sequence or not.
fn endless(request: GenerateRequest, max_tokens: usize) -> GenerateRequest {
    request.with_params(SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(max_tokens)
    })
}

#[tokio::test]
async fn requests_wait_for_kv_blocks_and_one_that_never_fits_is_refused() {
    // 2 (K and V) x 30 layers x 3 KV heads x 64 x 2 bytes (f16) per position, 16 positions per
    // block; room for 20 blocks, 320 positions.
    let block = 2 * 30 * 3 * 64 * 2 * 16;
    let engine = small_engine(LoadOptions {
        kv_cache_memory: Some(20 * block),
        queue_limit: 2,
        ..LoadOptions::default()
    })
    .await;
    let stats = engine.stats();
    assert_eq!(
        (stats.kv_cache_budget, stats.kv_blocks_total),
        (20 * block, 20)
    );
    let tokens = |prompt: usize, max_tokens| {
        endless(
            GenerateRequest::new(Input::Tokens(vec![1; prompt])),
            max_tokens,
        )
    };
    // A 120-token prompt needs 8 blocks (its positions and one more).
    let (alone, _, _) = run(&engine, tokens(120, 10)).await;
    let mut first = engine.generate(tokens(5, 300)).unwrap();
    // 200 tokens in, the first holds 13 blocks, and only grows: 7 are left.
    for _ in 0..200 {
        assert!(matches!(first.next().await, Some(TokenEvent::Token(_))));
    }
    let waiting = engine.generate(tokens(120, 10)).unwrap();
    // The queue (limit 2) is full with one more.
    let queued = engine.generate(tokens(120, 10)).unwrap();
    let busy = engine
        .generate(tokens(5, 10))
        .err()
        .expect("the queue is full");
    assert!(matches!(busy, Error::Busy { limit: 2, .. }), "{busy}");
    while engine.stats().queued != 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(engine.stats().active, 1, "the others wait for blocks");

    // One that can never fit is refused before it is queued, with the numbers.
    let never = engine
        .generate(greedy("Hello", 400))
        .err()
        .expect("too large for the budget");
    let message = never.to_string();
    assert!(matches!(never, Error::KvCacheTooSmall { .. }), "{message}");
    assert!(
        message.contains("max_tokens (400)") && message.contains("MiB"),
        "{message}"
    );

    drop(first);
    let (text, summary) = finish(waiting).await;
    assert_eq!(text, alone.concat(), "it ran once the first left");
    assert_eq!(summary.finish_reason, FinishReason::Length);
    drop(queued);
}

#[tokio::test]
async fn a_failing_step_ends_only_the_sequence_that_fails() {
    let engine = small_engine(LoadOptions::default()).await;
    let prompts = &prompts()[..3];
    let mut alone = Vec::new();
    for p in prompts {
        alone.push(run(&engine, greedy(p, 16)).await.0.concat());
    }
    // A token id none of these prompts or texts contain, in a prompt of its own.
    let poison = engine.vocab_size() as u32 - 7;
    engine.inject_fault_on_token(poison);
    let poisoned = GenerateRequest::new(Input::Tokens(vec![1, 2, poison, 3]))
        .with_params(SamplingParams::greedy(16));
    let mut requests: Vec<_> = prompts.iter().map(|p| greedy(p, 16)).collect();
    requests.insert(1, poisoned);
    let results = join_all(requests.into_iter().map(|r| run(&engine, r))).await;
    let (_, _, failed) = &results[1];
    assert_eq!(failed.finish_reason, FinishReason::Error);
    let error = failed.error.as_deref().unwrap_or_default();
    assert!(error.contains("injected fault"), "{error}");
    for (i, expected) in [0, 2, 3].into_iter().zip(&alone) {
        assert_eq!(&results[i].0.concat(), expected);
        assert_eq!(results[i].2.finish_reason, FinishReason::Length);
    }
    // The engine keeps serving.
    let (pieces, _, summary) = run(&engine, greedy(&prompts[0], 16)).await;
    assert_eq!(&pieces.concat(), &alone[0]);
    assert_eq!(summary.finish_reason, FinishReason::Length);
    assert_eq!(engine.stats().kv_cache_bytes, 0);
}
