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

/// wick's k-quant kernel on the real Q4_K and Q6_K matrices of the Gemma file (`ffn_down`, both
/// types): within the rounding of the activations to 8 bits of dequantize + f32, for decode and
/// batched decode row counts.
#[tokio::test]
async fn k_quant_kernel_on_the_real_matrices_stays_within_the_activation_rounding() {
    use candle_core::quantized::{GgmlDType, gguf_file};
    let path = common::manager(LoadOptions::default())
        .pull(&ModelSelector::Name("gemma-3-270m-q4_k_m".into()))
        .await
        .expect("the Gemma 3 file is fetched")
        .remove(0);
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let device = candle_core::Device::Cpu;
    let mut seen = Vec::new();
    for layer in 0..4 {
        let name = format!("blk.{layer}.ffn_down.weight");
        let weight = content.tensor(&mut file, &name, &device).unwrap();
        let dtype = weight.dtype();
        let (n, k) = weight.shape().dims2().unwrap();
        let dense: Vec<f32> = weight
            .dequantize(&device)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for rows in [1, 3, 17] {
            // Activations of an uneven size, as a hidden state has.
            let x: Vec<f32> = (0..rows * k)
                .map(|i| {
                    ((i * 7919 % 1013) as f32 - 506.0) / 200.0
                        * if i % 61 == 0 { 15.0 } else { 1.0 }
                })
                .collect();
            let Some(y) = wick::engine::k_quant_rows_kernel(&weight, &x, rows) else {
                return; // This CPU keeps candle's kernels.
            };
            let y = y.unwrap();
            for r in 0..rows {
                let row = &x[r * k..(r + 1) * k];
                for c in (0..n).step_by(7) {
                    let w = &dense[c * k..(c + 1) * k];
                    let exact: f64 = w.iter().zip(row).map(|(&w, &x)| f64::from(w * x)).sum();
                    let bound: f64 = row
                        .chunks(256)
                        .zip(w.chunks(256))
                        .map(|(x, w)| {
                            let step = x.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                            f64::from(step / 2.0 * w.iter().map(|v| v.abs()).sum::<f32>())
                        })
                        .sum();
                    let magnitude: f64 = w
                        .iter()
                        .zip(row)
                        .map(|(&w, &x)| f64::from((w * x).abs()))
                        .sum();
                    let error = (f64::from(y[r * n + c]) - exact).abs();
                    assert!(
                        error <= bound * 1.001 + magnitude * 1e-5,
                        "{name} ({dtype:?}), {rows} rows: row {r} column {c}: {error} > {bound}"
                    );
                }
            }
        }
        seen.push(dtype);
    }
    assert!(
        seen.contains(&GgmlDType::Q4K) && seen.contains(&GgmlDType::Q6K),
        "{seen:?}"
    );
}
