//! Gemma 3 270M (Q4_K_M, real weights from the registry's pip mirror) against llama.cpp: the
//! same prompt tokens, and the same greedy tokens. The reference comes from
//! `tests/data/gemma3_reference.py` (llama-cpp-python on the same file); see that script to
//! regenerate it.

mod common;

use common::run;
use serde_json::Value;
use wick::{FinishReason, GenerateRequest, Input, LoadOptions, ModelSelector, SamplingParams};

/// Below this lead of the best logit over the second, llama.cpp's kernels and candle's (which
/// quantize activations differently) may rank the two the other way: such steps are skipped.
const NEAR_TIE: f64 = 0.5;

#[tokio::test]
async fn gemma3_matches_llama_cpp() {
    let reference: Value =
        serde_json::from_str(include_str!("data/gemma3-270m-llama-cpp.json")).unwrap();
    let engine = common::manager(LoadOptions::default())
        .get(&ModelSelector::Name("gemma-3-270m-q4_k_m".into()))
        .await
        .expect("the Gemma 3 model loads");
    assert_eq!(engine.info().architecture, "gemma3");
    let ids = |value: &Value| -> Vec<u32> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let mut compared = 0;
    for prompt in reference["prompts"].as_array().unwrap() {
        let text = prompt["text"].as_str().unwrap();
        let prompt_ids = ids(&prompt["prompt_ids"]);
        assert_eq!(
            engine.encode_input(&Input::Prompt(text.into())).unwrap(),
            prompt_ids,
            "tokens of {text:?}"
        );
        let expected = ids(&prompt["generated_ids"]);
        let margins: Vec<f64> = prompt["margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        // Teacher-forced: at each step wick sees llama.cpp's tokens so far, so one near-tie
        // cannot send the two down different paths.
        for (step, (&token, &margin)) in expected.iter().zip(&margins).enumerate() {
            let mut context = prompt_ids.clone();
            context.extend_from_slice(&expected[..step]);
            let mut params = SamplingParams::greedy(1);
            params.repeat_penalty = 1.0;
            params.ignore_eos = true;
            let request = GenerateRequest::new(Input::Tokens(context)).with_params(params);
            let (_, generated, summary) = run(&engine, request).await;
            assert_eq!(summary.finish_reason, FinishReason::Length);
            if margin >= NEAR_TIE {
                assert_eq!(
                    generated[0],
                    token,
                    "{text:?}, step {step}: wick {:?} vs llama.cpp {:?} (lead {margin})",
                    engine.decode(&generated).unwrap(),
                    engine.decode(&[token]).unwrap()
                );
                compared += 1;
            }
        }
    }
    assert!(
        compared >= 64,
        "only {compared} tokens were clear enough to compare"
    );
}

/// wick's decode-row kernels on real matrices of the Gemma file, of every type it holds: Q4_K and
/// Q6_K (`ffn_down`), Q5_0 (`attn_q`, `attn_k`) and Q8_0 (half the `attn_v`).
#[tokio::test]
async fn decode_kernels_on_the_real_matrices_stay_within_the_activation_rounding() {
    use candle_core::quantized::GgmlDType;
    let names: Vec<String> = (0..4)
        .flat_map(|layer| {
            ["ffn_down", "attn_q", "attn_k", "attn_v"].map(|m| format!("blk.{layer}.{m}.weight"))
        })
        .collect();
    let Some(seen) = common::decode_kernels_on_real_matrices("gemma-3-270m-q4_k_m", &names).await
    else {
        return; // This CPU keeps candle's kernels.
    };
    for dtype in [
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
    ] {
        assert!(seen.contains(&dtype), "{dtype:?} in {seen:?}");
    }
}
