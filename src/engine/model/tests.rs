//! The transformer against candle-transformers' model types, which it replaces, on tiny
//! random-weight models of each family generated here:
//!
//! - safetensors (f32) through wick and through candle's `llama`, `qwen2`, `qwen3`, `phi3` and
//!   `gemma3`: the logits of a whole prompt and of every step of 32 greedy tokens agree;
//! - GGUF through wick and through candle's quantized llama/qwen2/qwen3: token by token with
//!   8-bit weights (the same quantized kernels), and a whole prompt with f32 weights;
//! - a prompt in chunks, or beside other sequences in one pass, gives what one pass alone gives;
//! - Llama 3 rope scaling agrees with candle's llama past the original context;
//! - Gemma's sliding window hides exactly the positions it should.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{
    gemma3, llama, phi3, quantized_llama, quantized_qwen2, quantized_qwen3, qwen2, qwen3,
};
use serde_json::json;

use super::*;
use crate::engine::DTypeChoice;
use crate::engine::gguf_metadata::Metadata;
use crate::engine::kv::{BlockId, KvStore};
use crate::engine::load::gguf::GgufSource;
use crate::engine::load::safetensors::{Matrices, SafetensorsSource};

const PROMPT: [u32; 20] = [
    7, 42, 3, 100, 17, 250, 8, 66, 128, 5, 31, 99, 12, 200, 77, 1, 54, 9, 180, 23,
];
const HF_FAMILIES: [&str; 5] = ["llama", "qwen2", "qwen3", "phi3", "gemma3_text"];
const GGUF_FAMILIES: [&str; 3] = ["llama", "qwen2", "qwen3"];
const VOCAB: usize = 256;
const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const FFN: usize = 128;
const LAYERS: usize = 2;

/// candle's model for the same weights: `(tokens, position) -> logits of the last token`.
type Reference = Box<dyn FnMut(&[u32], usize) -> candle_core::Result<Tensor>>;

fn cosine(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
    let dot = |x: &Tensor, y: &Tensor| {
        (x * y)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    dot(&a, &b) / (dot(&a, &a).sqrt() * dot(&b, &b).sqrt())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The best token and how far ahead of the second it is.
fn top(logits: &Tensor) -> (u32, f32) {
    let values = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    (order[0] as u32, values[order[0]] - values[order[1]])
}

/// Positions per block in these tests: small, so that short prompts cross block boundaries.
const BLOCK: usize = 4;

/// One sequence's keys and values in a pool of its own, its blocks in reverse order so that
/// attention reads through the table across scattered blocks.
struct TestCache {
    store: KvStore,
    table: Vec<BlockId>,
    len: usize,
}

impl TestCache {
    fn len(&self) -> usize {
        self.len
    }

    fn segment<'a>(&'a self, tokens: &'a [u32], logits: Logits) -> Segment<'a> {
        Segment {
            table: &self.table,
            start: self.len,
            tokens,
            logits,
            prompt: tokens.len() > 1,
        }
    }
}

trait NewCache {
    /// An f32 cache with room for `capacity` positions.
    fn new_cache(&self, capacity: usize) -> crate::error::Result<TestCache>;
}

impl NewCache for Transformer {
    fn new_cache(&self, capacity: usize) -> crate::error::Result<TestCache> {
        let shape = self.kv_shape(BLOCK, DType::F32);
        let blocks = shape.blocks_for(capacity);
        Ok(TestCache {
            store: KvStore::new(shape, blocks, &Device::Cpu)?,
            table: (0..blocks as BlockId).rev().collect(),
            len: 0,
        })
    }
}

/// One segment through `model`; the logits of its last token.
fn step(model: &Transformer, cache: &mut TestCache, tokens: &[u32]) -> Tensor {
    let logits = model
        .forward(&cache.store, &[cache.segment(tokens, Logits::Last)])
        .unwrap()
        .squeeze(0)
        .unwrap();
    cache.len += tokens.len();
    logits
}

fn random(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 0.3, shape, &Device::Cpu).unwrap()
}

/// Norm weights near 1 (Gemma's config.json stores them minus one: near 0).
fn norm_weight(n: usize, gemma: bool) -> Tensor {
    if gemma {
        random(&[n])
    } else {
        (random(&[n]) + 1.0).unwrap()
    }
}

/// `config.json` for a tiny model of `model_type`, with every field candle's config types need.
fn hf_config(model_type: &str) -> serde_json::Value {
    json!({
        "model_type": model_type,
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": model_type == "qwen2" || model_type == "gemma3_text",
        "hidden_act": "silu",
        "hidden_activation": "gelu_pytorch_tanh",
        "sliding_window": 128,
        "max_window_layers": LAYERS,
        "use_sliding_window": false,
        "attention_bias": false,
        "rope_local_base_freq": 1000.0,
        "query_pre_attn_scalar": HEAD_DIM,
        "sliding_window_pattern": 2,
        "final_logit_softcapping": null,
        "attn_logit_softcapping": null,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "rope_scaling": null,
    })
}

/// Writes random safetensors of the Hugging Face names for `config` into `dir`.
fn hf_weights(config: &serde_json::Value, dir: &Path) {
    let model_type = config["model_type"].as_str().unwrap();
    let gemma = model_type == "gemma3_text";
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("model.embed_tokens.weight".into(), random(&[VOCAB, HIDDEN]));
    t.insert("model.norm.weight".into(), norm_weight(HIDDEN, gemma));
    if !config["tie_word_embeddings"].as_bool().unwrap() {
        t.insert("lm_head.weight".into(), random(&[VOCAB, HIDDEN]));
    }
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    for i in 0..LAYERS {
        let mut add = |name: &str, tensor: Tensor| {
            t.insert(format!("model.layers.{i}.{name}"), tensor);
        };
        add("input_layernorm.weight", norm_weight(HIDDEN, gemma));
        add(
            "post_attention_layernorm.weight",
            norm_weight(HIDDEN, gemma),
        );
        add("self_attn.o_proj.weight", random(&[HIDDEN, q]));
        add("mlp.down_proj.weight", random(&[HIDDEN, FFN]));
        if model_type == "phi3" {
            add("self_attn.qkv_proj.weight", random(&[q + 2 * kv, HIDDEN]));
            add("mlp.gate_up_proj.weight", random(&[2 * FFN, HIDDEN]));
            continue;
        }
        add("self_attn.q_proj.weight", random(&[q, HIDDEN]));
        add("self_attn.k_proj.weight", random(&[kv, HIDDEN]));
        add("self_attn.v_proj.weight", random(&[kv, HIDDEN]));
        add("mlp.gate_proj.weight", random(&[FFN, HIDDEN]));
        add("mlp.up_proj.weight", random(&[FFN, HIDDEN]));
        if model_type == "qwen2" {
            add("self_attn.q_proj.bias", random(&[q]));
            add("self_attn.k_proj.bias", random(&[kv]));
            add("self_attn.v_proj.bias", random(&[kv]));
        }
        if model_type == "qwen3" || gemma {
            add("self_attn.q_norm.weight", norm_weight(HEAD_DIM, gemma));
            add("self_attn.k_norm.weight", norm_weight(HEAD_DIM, gemma));
        }
        if gemma {
            add(
                "pre_feedforward_layernorm.weight",
                norm_weight(HIDDEN, gemma),
            );
            add(
                "post_feedforward_layernorm.weight",
                norm_weight(HIDDEN, gemma),
            );
        }
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
}

fn ours_hf(config: &serde_json::Value, dir: &Path) -> Transformer {
    ours_hf_quantized(config, dir, None)
}

/// [`ours_hf`], its matrices quantized at load as `--quantize` does.
fn ours_hf_quantized(
    config: &serde_json::Value,
    dir: &Path,
    quantize: Option<crate::engine::Quantize>,
) -> Transformer {
    let family = Family::from_hf(config["model_type"].as_str().unwrap()).unwrap();
    let tensors = unsafe { MmapedSafetensors::multi(&[dir.join("model.safetensors")]) }.unwrap();
    let mut source = SafetensorsSource {
        tensors,
        family,
        dtype: DType::F32,
        device: Device::Cpu,
        matrices: match quantize {
            Some(to) => Matrices::Quantized(to),
            None => Matrices::Cpu(DTypeChoice::F32),
        },
        layers: LAYERS,
        kept: None,
    };
    Transformer::load(Config::from_hf(config).unwrap(), &mut source, &Device::Cpu).unwrap()
}

fn candle_hf(config: &serde_json::Value, dir: &Path) -> Reference {
    let device = Device::Cpu;
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &device)
    }
    .unwrap();
    let input = |tokens: &[u32]| Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0);
    let parse = |c: &serde_json::Value| c.clone();
    match config["model_type"].as_str().unwrap() {
        "llama" => {
            let cfg: llama::LlamaConfig = serde_json::from_value(parse(config)).unwrap();
            let cfg = cfg.into_config(false);
            let model = llama::Llama::load(vb, &cfg).unwrap();
            let mut cache = llama::Cache::new(true, DType::F32, &cfg, &device).unwrap();
            Box::new(move |tokens, pos| model.forward(&input(tokens)?, pos, &mut cache))
        }
        "qwen2" => {
            let cfg: qwen2::Config = serde_json::from_value(parse(config)).unwrap();
            let mut m = qwen2::ModelForCausalLM::new(&cfg, vb).unwrap();
            Box::new(move |tokens, pos| m.forward(&input(tokens)?, pos))
        }
        "qwen3" => {
            let cfg: qwen3::Config = serde_json::from_value(parse(config)).unwrap();
            let mut m = qwen3::ModelForCausalLM::new(&cfg, vb).unwrap();
            Box::new(move |tokens, pos| m.forward(&input(tokens)?, pos))
        }
        "phi3" => {
            let cfg: phi3::Config = serde_json::from_value(parse(config)).unwrap();
            let mut m = phi3::Model::new(&cfg, vb).unwrap();
            Box::new(move |tokens, pos| m.forward(&input(tokens)?, pos))
        }
        _ => {
            let cfg: gemma3::Config = serde_json::from_value(parse(config)).unwrap();
            let mut m = gemma3::Model::new(false, &cfg, vb).unwrap();
            // candle's gemma3 cannot take several tokens into its sliding-window cache (a
            // slice_set on a non-contiguous tensor): feed it one token at a time.
            Box::new(move |tokens, pos| {
                let mut logits = None;
                for (i, &token) in tokens.iter().enumerate() {
                    logits = Some(m.forward(&input(&[token])?, pos + i)?);
                }
                logits.ok_or_else(|| candle_core::Error::Msg("no tokens".into()))
            })
        }
    }
}

/// The prompt in one pass, then 32 greedy steps, each compared with the reference. Both are fed
/// the reference's token, so a near-tie that flips on some CPU cannot derail the comparison.
fn agree_with_reference(name: &str, model: &Transformer, reference: &mut Reference) {
    let mut cache = model.new_cache(PROMPT.len() + 32).unwrap();
    let ours = step(model, &mut cache, &PROMPT);
    let theirs = reference(&PROMPT, 0).unwrap_or_else(|e| panic!("{name}: candle: {e}"));
    let diff = max_diff(&ours, &theirs);
    assert!(diff < 1e-3, "{name}: prompt logits differ by {diff}");
    let mut next = top(&theirs).0;
    for i in 0..32 {
        let pos = PROMPT.len() + i;
        let ours = step(model, &mut cache, &[next]);
        let theirs = reference(&[next], pos).unwrap_or_else(|e| panic!("{name}: candle: {e}"));
        let diff = max_diff(&ours, &theirs);
        assert!(diff < 1e-3, "{name}, step {i}: logits differ by {diff}");
        let ((a, _), (b, margin)) = (top(&ours), top(&theirs));
        assert!(
            a == b || margin < 1e-4,
            "{name}, step {i}: greedy {a} vs {b}"
        );
        next = b;
    }
}

#[test]
fn safetensors_families_match_candle() {
    for model_type in HF_FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let config = hf_config(model_type);
        hf_weights(&config, dir.path());
        let model = ours_hf(&config, dir.path());
        agree_with_reference(model_type, &model, &mut candle_hf(&config, dir.path()));
    }
}

#[test]
fn llama3_rope_scaling_matches_candle_past_the_original_context() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = hf_config("llama");
    config["rope_scaling"] = json!({
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    });
    hf_weights(&config, dir.path());
    let model = ours_hf(&config, dir.path());
    assert!(matches!(
        model.config().rope_scaling,
        config::RopeScaling::Llama3 { .. }
    ));
    // The prompt (20) and the 32 steps run past the original 16 positions.
    agree_with_reference("llama3", &model, &mut candle_hf(&config, dir.path()));
    // Without the scaling the same weights give other logits: the test sees the scaling.
    let mut plain = config.clone();
    plain["rope_scaling"] = json!(null);
    let unscaled = ours_hf(&plain, dir.path());
    let a = step(&model, &mut model.new_cache(20).unwrap(), &PROMPT);
    let b = step(&unscaled, &mut unscaled.new_cache(20).unwrap(), &PROMPT);
    assert!(max_diff(&a, &b) > 1e-3);
}

#[test]
fn unsupported_configs_are_refused_by_name() {
    let cases = [
        (
            "rope_scaling",
            json!({"rope_type": "yarn", "factor": 4.0}),
            "yarn",
        ),
        (
            "final_logit_softcapping",
            json!(30.0),
            "final_logit_softcapping",
        ),
        ("partial_rotary_factor", json!(0.5), "partial_rotary_factor"),
        ("model_type", json!("mamba"), "mamba"),
    ];
    for (key, value, named) in cases {
        let mut config = hf_config("llama");
        config[key] = value;
        let error = Config::from_hf(&config).unwrap_err();
        assert!(error.contains(named), "{key}: {error}");
    }
}

/// transformers 5 writes the rotary settings only as `rope_parameters` (one set, or one per
/// layer type for Gemma 3): such a file gives the same model as the older keys, theta included.
#[test]
fn transformers_5_rope_parameters_equal_the_older_keys() {
    let llama3 = json!({
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    });
    let mut older = hf_config("llama");
    older["rope_theta"] = json!(500000.0);
    older["rope_scaling"] = llama3.clone();
    let mut newer = hf_config("llama");
    for key in ["rope_theta", "rope_scaling"] {
        newer.as_object_mut().unwrap().remove(key);
    }
    let mut parameters = llama3;
    parameters["rope_theta"] = json!(500000.0);
    newer["rope_parameters"] = parameters;
    let config = Config::from_hf(&newer).unwrap();
    assert_eq!(config.rope_theta, 500000.0);
    assert_eq!(config, Config::from_hf(&older).unwrap());

    let mut older = hf_config("gemma3_text");
    older["rope_theta"] = json!(1e6);
    older["rope_scaling"] = json!({"rope_type": "linear", "factor": 8.0});
    let mut newer = hf_config("gemma3_text");
    for key in ["rope_theta", "rope_scaling", "rope_local_base_freq"] {
        newer.as_object_mut().unwrap().remove(key);
    }
    newer["rope_parameters"] = json!({
        "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
    });
    let config = Config::from_hf(&newer).unwrap();
    assert_eq!(
        (config.rope_theta, config.rope_local_theta),
        (1e6, Some(1000.0))
    );
    assert_eq!(config, Config::from_hf(&older).unwrap());

    newer["rope_parameters"]["sliding_attention"] = json!({"rope_type": "yarn", "factor": 2.0});
    let error = Config::from_hf(&newer).unwrap_err();
    assert!(error.contains("yarn"), "{error}");
}

#[test]
fn a_prompt_in_chunks_and_beside_other_sequences_equals_one_pass() {
    for model_type in HF_FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let config = hf_config(model_type);
        hf_weights(&config, dir.path());
        let model = ours_hf(&config, dir.path());
        let whole = step(&model, &mut model.new_cache(20).unwrap(), &PROMPT);
        let mut cache = model.new_cache(20).unwrap();
        step(&model, &mut cache, &PROMPT[..12]);
        let chunked = step(&model, &mut cache, &PROMPT[12..]);
        assert_eq!(cache.len(), PROMPT.len());
        let diff = max_diff(&chunked, &whole);
        assert!(diff < 1e-4, "{model_type}: chunks differ by {diff}");

        // Three sequences in one pass: a prompt, a prompt's continuation, and one decode row.
        // They share one pool: each its own blocks.
        let mut pool = model.new_cache(60).unwrap();
        pool.table.reverse();
        let tables: Vec<Vec<BlockId>> = pool.table.chunks(5).map(<[_]>::to_vec).collect();
        let (mut b, mut c) = (model.new_cache(20).unwrap(), model.new_cache(20).unwrap());
        step(&model, &mut b, &PROMPT[..12]);
        step(&model, &mut c, &PROMPT[..19]);
        let alone_c = step(&model, &mut model.new_cache(20).unwrap(), &PROMPT);
        // b's and c's cached positions, copied into the shared pool through the single path
        // there is: computing them again.
        fn segment<'a>(
            table: &'a [BlockId],
            start: usize,
            tokens: &'a [u32],
            logits: Logits,
        ) -> Segment<'a> {
            Segment {
                table,
                start,
                tokens,
                logits,
                prompt: tokens.len() > 1,
            }
        }
        model
            .forward(
                &pool.store,
                &[segment(&tables[1], 0, &PROMPT[..12], Logits::None)],
            )
            .unwrap();
        model
            .forward(
                &pool.store,
                &[segment(&tables[2], 0, &PROMPT[..19], Logits::None)],
            )
            .unwrap();
        let batch = model
            .forward(
                &pool.store,
                &[
                    segment(&tables[0], 0, &PROMPT, Logits::Last),
                    segment(&tables[1], 12, &PROMPT[12..], Logits::None),
                    segment(&tables[2], 19, &PROMPT[19..], Logits::Last),
                ],
            )
            .unwrap();
        assert_eq!(batch.dims(), &[2, VOCAB]);
        assert!(
            max_diff(&batch.get(0).unwrap(), &whole) < 1e-4,
            "{model_type}"
        );
        assert!(
            max_diff(&batch.get(1).unwrap(), &alone_c) < 1e-4,
            "{model_type}"
        );
        assert_eq!((b.len(), c.len()), (12, 19));
    }
}

#[test]
fn all_logits_are_each_prefix_s_last_logits() {
    let dir = tempfile::tempdir().unwrap();
    let config = hf_config("llama");
    hf_weights(&config, dir.path());
    let model = ours_hf(&config, dir.path());
    let cache = model.new_cache(20).unwrap();
    let all = model
        .forward(&cache.store, &[cache.segment(&PROMPT, Logits::All)])
        .unwrap();
    assert_eq!(all.dims(), &[PROMPT.len(), VOCAB]);
    for n in [1, 7, PROMPT.len()] {
        let last = step(&model, &mut model.new_cache(20).unwrap(), &PROMPT[..n]);
        assert!(max_diff(&all.get(n - 1).unwrap(), &last) < 1e-4, "row {n}");
    }
}

#[test]
fn the_sliding_window_hides_exactly_the_positions_behind_it() {
    // Both layers slide with a window of 4: the last of 20 positions sees 16..=19 in the second
    // layer, and through them 13..=19 of the input; position 12 cannot reach it.
    let dir = tempfile::tempdir().unwrap();
    let mut config = hf_config("gemma3_text");
    config["sliding_window"] = json!(4);
    config["sliding_window_pattern"] = json!(6);
    hf_weights(&config, dir.path());
    let model = ours_hf(&config, dir.path());
    let logits = |prompt: &[u32]| step(&model, &mut model.new_cache(20).unwrap(), prompt);
    let base = logits(&PROMPT);
    let mut changed = PROMPT;
    changed[12] += 1;
    assert_eq!(
        max_diff(&logits(&changed), &base),
        0.0,
        "position 12 leaked in"
    );
    let mut changed = PROMPT;
    changed[13] += 1;
    assert!(
        max_diff(&logits(&changed), &base) > 1e-4,
        "position 13 is in view"
    );
    // Token by token (no mask, a narrowed cache) gives the same as one pass.
    let mut cache = model.new_cache(20).unwrap();
    let mut last = None;
    for &token in &PROMPT {
        last = Some(step(&model, &mut cache, &[token]));
    }
    assert!(max_diff(&last.unwrap(), &base) < 1e-4);
}

/// The same weights as the safetensors fixture in `dir`, written as a GGUF file the way
/// llama.cpp's converter writes each family: GGUF names, llama's q/k rows permuted for its
/// interleaved rotation, Gemma's norms stored as `1 + w`, the shape in `<arch>.*` keys; the
/// matrices stored as `matrices`, the rest f32.
fn gguf_of_hf_as(config: &serde_json::Value, dir: &Path, matrices: GgmlDType) -> Vec<u8> {
    let family = Family::from_hf(config["model_type"].as_str().unwrap()).unwrap();
    let arch = family.name();
    let hf = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let permute = |w: &Tensor, heads| crate::export::permute(w, heads).unwrap();
    let stems = [
        "attn_norm",
        "ffn_norm",
        "post_attention_norm",
        "post_ffw_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_qkv",
        "attn_output",
        "attn_q_norm",
        "attn_k_norm",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    let mut names: Vec<String> = ["token_embd.weight", "output_norm.weight", "output.weight"]
        .map(String::from)
        .to_vec();
    for i in 0..LAYERS {
        for stem in stems {
            names.push(format!("blk.{i}.{stem}.weight"));
            names.push(format!("blk.{i}.{stem}.bias"));
        }
    }
    let mut tensors = Vec::new();
    for name in names {
        let Some(t) = hf_name(family, &name).and_then(|n| hf.get(&n).cloned()) else {
            continue;
        };
        let t = match () {
            _ if family == Family::Gemma3 && name.contains("norm") => (t + 1.0).unwrap(),
            _ if family == Family::Llama && name.ends_with("attn_q.weight") => permute(&t, HEADS),
            _ if family == Family::Llama && name.ends_with("attn_k.weight") => {
                permute(&t, KV_HEADS)
            }
            _ => t,
        };
        let dtype = match t.rank() {
            2 => matrices,
            _ => GgmlDType::F32,
        };
        tensors.push((name, QTensor::quantize(&t, dtype).unwrap()));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let mut extra = Vec::new();
    if family == Family::Gemma3 || family == Family::Phi3 {
        let window = config["sliding_window"].as_u64().unwrap() as u32;
        extra.push((key("attention.sliding_window"), Value::U32(window)));
    }
    if family == Family::Gemma3 {
        let local = config["rope_local_base_freq"].as_f64().unwrap() as f32;
        extra.push((key("rope.freq_base_swa"), Value::F32(local)));
    }
    write_gguf(arch, (HIDDEN, HEAD_DIM, FFN), extra, &tensors)
}

/// A GGUF file of `architecture` with `tensors`: the shape keys of the test models, with
/// `(hidden, head_dim, ffn)` as given, and `extra` keys.
fn write_gguf(
    architecture: &str,
    (hidden, head_dim, ffn): (usize, usize, usize),
    extra: Vec<(String, Value)>,
    tensors: &[(String, QTensor)],
) -> Vec<u8> {
    let key = |k: &str| format!("{architecture}.{k}");
    let mut metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String(architecture.into()),
        ),
        (key("attention.head_count"), Value::U32(HEADS as u32)),
        (key("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (key("attention.key_length"), Value::U32(head_dim as u32)),
        (key("embedding_length"), Value::U32(hidden as u32)),
        (key("feed_forward_length"), Value::U32(ffn as u32)),
        (key("block_count"), Value::U32(LAYERS as u32)),
        (key("context_length"), Value::U32(256)),
        (key("rope.dimension_count"), Value::U32(head_dim as u32)),
        (key("rope.freq_base"), Value::F32(10_000.0)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        // candle's qwen3 builds its rotary tables in this dtype; 0 is f32.
        ("general.dtype".to_string(), Value::U32(0)),
    ];
    metadata.extend(extra);
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut bytes = Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &metadata, &tensors).unwrap();
    bytes.into_inner()
}

/// The same random weights as safetensors, quantized at load as `quantize` says, and as a GGUF
/// file whose matrices are stored as `matrices`: the same logits, prompt and decode, every family.
fn safetensors_and_gguf_agree(quantize: Option<crate::engine::Quantize>, matrices: GgmlDType) {
    for model_type in HF_FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let mut config = hf_config(model_type);
        // llama.cpp fixes Gemma 3's pattern at one global layer in six: both layers slide here.
        config["sliding_window_pattern"] = json!(6);
        hf_weights(&config, dir.path());
        let hf = ours_hf_quantized(&config, dir.path(), quantize);
        let gguf = ours_gguf(&gguf_of_hf_as(&config, dir.path(), matrices));
        assert_eq!(gguf.config().family, hf.config().family);
        assert_eq!(hf.weight_bytes(), gguf.weight_bytes(), "{model_type}");
        let (mut a, mut b) = (hf.new_cache(24).unwrap(), gguf.new_cache(24).unwrap());
        let diff = max_diff(&step(&hf, &mut a, &PROMPT), &step(&gguf, &mut b, &PROMPT));
        assert!(diff < 1e-4, "{model_type}: prompt logits differ by {diff}");
        for token in [3, 14, 15, 92] {
            let diff = max_diff(&step(&hf, &mut a, &[token]), &step(&gguf, &mut b, &[token]));
            assert!(diff < 1e-4, "{model_type}: decode logits differ by {diff}");
        }
    }
}

#[test]
fn every_family_gives_the_same_logits_from_gguf_and_safetensors() {
    safetensors_and_gguf_agree(None, GgmlDType::F32);
}

/// `--quantize q8_0` gives what a Q8_0 GGUF file of the same weights gives: the same blocks
/// through the same kernels. And it is not the f32 model: the blocks round the weights.
#[test]
fn quantized_at_load_equals_the_gguf_of_the_same_blocks() {
    let q8_0 = Some(crate::engine::Quantize::Q8_0);
    safetensors_and_gguf_agree(q8_0, GgmlDType::Q8_0);
    let dir = tempfile::tempdir().unwrap();
    let config = hf_config("llama");
    hf_weights(&config, dir.path());
    let quantized = ours_hf_quantized(&config, dir.path(), q8_0);
    let dense = ours_hf(&config, dir.path());
    let (mut a, mut b) = (
        quantized.new_cache(24).unwrap(),
        dense.new_cache(24).unwrap(),
    );
    let diff = max_diff(
        &step(&quantized, &mut a, &PROMPT),
        &step(&dense, &mut b, &PROMPT),
    );
    assert!(diff > 1e-6, "quantized equals f32");
}

/// `wick export` of a llama or qwen2 GGUF gives back the safetensors the GGUF was made from (the
/// same logits): llama's q/k rows unpermuted, qwen2's kept, its biases carried over.
#[test]
fn export_gives_back_the_safetensors_a_gguf_was_made_from() {
    for model_type in ["llama", "qwen2"] {
        let dir = tempfile::tempdir().unwrap();
        let config = hf_config(model_type);
        hf_weights(&config, dir.path());
        let bytes = gguf_of_hf_as(&config, dir.path(), GgmlDType::F32);
        // The export rebuilds tokenizer.json from the file's vocabulary: give it one.
        let mut reader = Cursor::new(bytes);
        let ct = gguf_file::Content::read(&mut reader).unwrap();
        let tensors: Vec<(String, QTensor)> = ct
            .tensor_infos
            .keys()
            .map(|name| {
                let t = ct.tensor(&mut reader, name, &Device::Cpu).unwrap();
                (name.clone(), t)
            })
            .collect();
        let mut metadata = ct.metadata.clone();
        let tokens = (0..VOCAB).map(|i| Value::String(format!("t{i}"))).collect();
        metadata.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
        metadata.insert("tokenizer.ggml.tokens".into(), Value::Array(tokens));
        metadata.insert("tokenizer.ggml.merges".into(), Value::Array(Vec::new()));
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let gguf = dir.path().join("model.gguf");
        gguf_file::write(
            &mut std::fs::File::create(&gguf).unwrap(),
            &metadata,
            &tensors,
        )
        .unwrap();

        let out = dir.path().join("exported");
        crate::export::gguf_to_safetensors(&gguf, &out, DType::F32).unwrap();
        let exported: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(exported["model_type"], model_type);
        let (original, back) = (ours_hf(&config, dir.path()), ours_hf(&exported, &out));
        let (mut a, mut b) = (original.new_cache(24).unwrap(), back.new_cache(24).unwrap());
        let diff = max_diff(
            &step(&original, &mut a, &PROMPT),
            &step(&back, &mut b, &PROMPT),
        );
        assert!(diff < 1e-5, "{model_type}: logits differ by {diff}");
    }
}

/// A tiny random-weight GGUF file of `architecture` in memory, matrices stored as `dtype`. Its
/// widths are multiples of 256, so wick and candle's reference pick the same quantized kernels
/// (`linear`'s own tests cover the padding of other widths).
fn gguf(architecture: &str, dtype: GgmlDType) -> Vec<u8> {
    const HIDDEN: usize = 256;
    const HEAD_DIM: usize = 64;
    const FFN: usize = 512;
    let ones = |n: usize| (random(&[n]) + 1.0).unwrap();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String, t: Tensor, dtype| {
        tensors.push((name, QTensor::quantize(&t, dtype).unwrap()))
    };
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    add("token_embd.weight".into(), random(&[VOCAB, HIDDEN]), dtype);
    add("output_norm.weight".into(), ones(HIDDEN), GgmlDType::F32);
    add("output.weight".into(), random(&[VOCAB, HIDDEN]), dtype);
    for i in 0..LAYERS {
        let n = |part: &str| format!("blk.{i}.{part}");
        add(n("attn_norm.weight"), ones(HIDDEN), GgmlDType::F32);
        add(n("ffn_norm.weight"), ones(HIDDEN), GgmlDType::F32);
        add(n("attn_q.weight"), random(&[q, HIDDEN]), dtype);
        add(n("attn_k.weight"), random(&[kv, HIDDEN]), dtype);
        add(n("attn_v.weight"), random(&[kv, HIDDEN]), dtype);
        add(n("attn_output.weight"), random(&[HIDDEN, q]), dtype);
        add(n("ffn_gate.weight"), random(&[FFN, HIDDEN]), dtype);
        add(n("ffn_up.weight"), random(&[FFN, HIDDEN]), dtype);
        add(n("ffn_down.weight"), random(&[HIDDEN, FFN]), dtype);
        if architecture == "qwen2" {
            add(n("attn_q.bias"), random(&[q]), GgmlDType::F32);
            add(n("attn_k.bias"), random(&[kv]), GgmlDType::F32);
            add(n("attn_v.bias"), random(&[kv]), GgmlDType::F32);
        }
        if architecture == "qwen3" {
            add(n("attn_q_norm.weight"), ones(HEAD_DIM), GgmlDType::F32);
            add(n("attn_k_norm.weight"), ones(HEAD_DIM), GgmlDType::F32);
        }
    }
    write_gguf(architecture, (HIDDEN, HEAD_DIM, FFN), Vec::new(), &tensors)
}

fn ours_gguf(bytes: &[u8]) -> Transformer {
    let mut reader = Cursor::new(bytes);
    let ct = gguf_file::Content::read(&mut reader).unwrap();
    let config = Config::from_gguf(Metadata(&ct)).unwrap();
    let mut source = GgufSource {
        ct: &ct,
        reader: &mut reader,
        device: &Device::Cpu,
        repacked: 0,
    };
    Transformer::load(config, &mut source, &Device::Cpu).unwrap()
}

fn candle_gguf(architecture: &str, bytes: &[u8]) -> Reference {
    let mut reader = Cursor::new(bytes.to_vec());
    let ct = gguf_file::Content::read(&mut reader).unwrap();
    let device = Device::Cpu;
    let input = |tokens: &[u32]| Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0);
    match architecture {
        "llama" => {
            let mut m = quantized_llama::ModelWeights::from_gguf(ct, &mut reader, &device).unwrap();
            Box::new(move |tokens, pos| m.forward(&input(tokens)?, pos))
        }
        "qwen2" => {
            let mut m = quantized_qwen2::ModelWeights::from_gguf(ct, &mut reader, &device).unwrap();
            Box::new(move |tokens, pos| m.forward(&input(tokens)?, pos))
        }
        _ => {
            let mut m = quantized_qwen3::ModelWeights::from_gguf(ct, &mut reader, &device).unwrap();
            Box::new(move |tokens, pos| m.forward(&input(tokens)?, pos))
        }
    }
}

#[test]
fn impossible_head_counts_are_errors() {
    for (heads, kv_heads) in [(0, 0), (4, 0), (4, 3)] {
        let mut ct =
            gguf_file::Content::read(&mut Cursor::new(gguf("llama", GgmlDType::Q8_0))).unwrap();
        ct.metadata
            .insert("llama.attention.head_count".into(), Value::U32(heads));
        ct.metadata
            .insert("llama.attention.head_count_kv".into(), Value::U32(kv_heads));
        let error = Config::from_gguf(Metadata(&ct)).unwrap_err();
        assert!(error.contains("corrupt"), "{error}");
    }
}

#[test]
fn gguf_token_by_token_matches_candle() {
    // With f32 weights the arithmetic is continuous: the logits agree to 1e-3. With 8-bit weights
    // both round each layer's input to 8 bits, so a difference of 1e-7 upstream (wick's attention
    // sums in another order) now and then moves a value across a rounding step, and the logits
    // by a few percent of their range: there they must agree in direction.
    for (dtype, close) in [(GgmlDType::F32, true), (GgmlDType::Q8_0, false)] {
        for architecture in GGUF_FAMILIES {
            let bytes = gguf(architecture, dtype);
            let (model, mut reference) = (ours_gguf(&bytes), candle_gguf(architecture, &bytes));
            let mut cache = model.new_cache(PROMPT.len()).unwrap();
            for (pos, &token) in PROMPT.iter().enumerate() {
                let ours = step(&model, &mut cache, &[token]);
                let theirs = reference(&[token], pos).unwrap();
                let (diff, cosine) = (max_diff(&ours, &theirs), cosine(&ours, &theirs));
                assert!(
                    if close { diff < 1e-3 } else { cosine > 0.99 },
                    "{architecture} {dtype:?}, step {pos}: logits differ by {diff}, cosine {cosine}"
                );
            }
        }
    }
}

#[test]
fn a_gguf_prompt_matches_candle_in_one_pass_and_in_chunks() {
    for architecture in GGUF_FAMILIES {
        let bytes = gguf(architecture, GgmlDType::F32);
        let model = ours_gguf(&bytes);
        let whole = step(&model, &mut model.new_cache(20).unwrap(), &PROMPT);
        let diff = max_diff(
            &whole,
            &candle_gguf(architecture, &bytes)(&PROMPT, 0).unwrap(),
        );
        assert!(diff < 1e-3, "{architecture}: logits differ by {diff}");
        let mut cache = model.new_cache(20).unwrap();
        step(&model, &mut cache, &PROMPT[..12]);
        let diff = max_diff(&step(&model, &mut cache, &PROMPT[12..]), &whole);
        assert!(diff < 1e-4, "{architecture}: chunks differ by {diff}");
    }
}

#[test]
fn gemm_prompts_stay_close_to_the_quantized_kernels() {
    // Same 8-bit weights; the prompt pass multiplies by them dequantized, token steps by the
    // quantized kernel (which also rounds the activations to 8 bits).
    let model = ours_gguf(&gguf("llama", GgmlDType::Q8_0));
    let long: Vec<u32> = PROMPT.iter().chain(&PROMPT).copied().collect();
    let gemm = step(&model, &mut model.new_cache(40).unwrap(), &long);
    let mut cache = model.new_cache(40).unwrap();
    let mut stepped = None;
    for &token in &long {
        stepped = Some(step(&model, &mut cache, &[token]));
    }
    let cosine = cosine(&gemm, &stepped.unwrap());
    assert!(cosine > 0.99, "cosine {cosine}");
}

#[test]
fn a_sequence_cannot_write_past_its_blocks() {
    let model = ours_gguf(&gguf("llama", GgmlDType::Q8_0));
    let mut cache = model.new_cache(4).unwrap();
    let shape = cache.store.shape();
    assert_eq!(
        shape.bytes_per_block(),
        BLOCK * 2 * LAYERS * KV_HEADS * 64 * 4
    );
    step(&model, &mut cache, &PROMPT[..4]);
    let error = model
        .forward(&cache.store, &[cache.segment(&[1], Logits::Last)])
        .unwrap_err();
    assert!(error.to_string().contains("past the 1 blocks"), "{error}");
}
