//! One decoder-only transformer for the GGUF model families wick runs (`llama`, `qwen2`,
//! `qwen3`), built from candle's public pieces: quantized matmuls, RMS norm, rotary embeddings
//! and softmax. It differs from candle's `quantized_*` model types in ways that matter to a
//! server:
//!
//! - The weights are immutable and shared; each sequence keeps its own [`Cache`], so any number
//!   of sequences run side by side (candle's qwen2 type holds one cache and cannot be copied).
//! - The context window is the model's own (candle's llama type stops at 4096 positions).
//! - Prompt chunks on the CPU multiply by the dequantized f32 weights with candle's GEMM, which
//!   reuses each weight across the chunk's rows; candle's quantized CPU kernel takes the rows one
//!   by one, so a prompt cost as much per token as generating did. Single-token steps keep the
//!   quantized kernels, which read four to eight times less memory.
//! - On the CPU, matrices in formats candle has no SIMD kernel for (Q4_1, Q5_0, Q5_1) are
//!   repacked to Q8_0 when loaded. Q8_0 is exact to within 1/254 of each block's largest weight,
//!   far finer than the 4- or 5-bit steps of the original, and decodes about 1.5 times faster.

use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::Embedding;
use candle_nn::kv_cache::ConcatKvCache;
use candle_transformers::quantized_nn::RmsNorm;

use super::gguf_metadata::Metadata;
use crate::error::{Error, Result};

/// From this many rows on, a CPU matmul dequantizes the weight and runs a GEMM. Dequantizing
/// costs about as much as 18 rows through the quantized kernel save (SmolLM2 on 2 cores), so
/// shorter chunks stay quantized.
const GEMM_ROWS: usize = 32;

/// The families this transformer covers, as `general.architecture` names them.
pub(crate) const ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3"];

/// A projection with quantized weights and an optional bias (qwen2's q/k/v).
struct Linear {
    weight: Arc<QTensor>,
    quantized: QMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(weight: QTensor, bias: Option<Tensor>) -> Result<Self> {
        let weight = Arc::new(weight);
        Ok(Self {
            quantized: QMatMul::from_arc(weight.clone())?,
            weight,
            bias,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(D::Minus1)?;
        let y = if rows >= GEMM_ROWS
            && x.device().is_cpu()
            && matches!(self.quantized, QMatMul::QTensor(_))
        {
            let w = self.weight.dequantize(x.device())?;
            x.broadcast_matmul(&w.t()?)?
        } else {
            self.quantized.forward(x)?
        };
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }
}

struct Layer {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// qwen3 normalizes each head's queries and keys before the rotation.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The shape of the network, from the GGUF metadata.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub architecture: String,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub hidden: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub norm_eps: f64,
    /// NEOX rotation (halves) for qwen; llama GGUFs use the interleaved pairs.
    pub rope_neox: bool,
}

/// The weights of a loaded model; immutable, shared by every sequence.
pub(crate) struct Transformer {
    config: Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// One sequence's keys and values, per layer.
#[derive(Clone)]
pub(crate) struct Cache {
    layers: Vec<ConcatKvCache>,
}

impl Cache {
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .map_or(0, ConcatKvCache::current_seq_len)
    }
}

impl Transformer {
    /// Reads the weights of a `llama`, `qwen2` or `qwen3` GGUF file of shape `config`.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        config: Config,
        ct: &Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let mut file = Weights {
            ct,
            reader,
            device,
            eps: config.norm_eps,
            repacked: 0,
        };
        let embed = Embedding::new(
            file.tensor("token_embd.weight")?.dequantize(device)?,
            config.hidden,
        );
        let norm = file.norm("output_norm.weight")?;
        // Tied embeddings: without its own output matrix the model reuses the embeddings.
        let output = if ct.tensor_infos.contains_key("output.weight") {
            file.linear("output.weight", None)?
        } else {
            file.linear("token_embd.weight", None)?
        };
        let biased = config.architecture == "qwen2";
        let head_norms = config.architecture == "qwen3";
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let name = |part: &str| format!("blk.{i}.{part}");
            let bias = |file: &mut Weights<R>, part: &str| -> Result<Option<Tensor>> {
                if !biased {
                    return Ok(None);
                }
                Ok(Some(file.tensor(&name(part))?.dequantize(device)?))
            };
            let (bq, bk, bv) = (
                bias(&mut file, "attn_q.bias")?,
                bias(&mut file, "attn_k.bias")?,
                bias(&mut file, "attn_v.bias")?,
            );
            let (q_norm, k_norm) = if head_norms {
                (
                    Some(file.norm(&name("attn_q_norm.weight"))?),
                    Some(file.norm(&name("attn_k_norm.weight"))?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                attn_norm: file.norm(&name("attn_norm.weight"))?,
                q: file.linear(&name("attn_q.weight"), bq)?,
                k: file.linear(&name("attn_k.weight"), bk)?,
                v: file.linear(&name("attn_v.weight"), bv)?,
                o: file.linear(&name("attn_output.weight"), None)?,
                q_norm,
                k_norm,
                ffn_norm: file.norm(&name("ffn_norm.weight"))?,
                gate: file.linear(&name("ffn_gate.weight"), None)?,
                up: file.linear(&name("ffn_up.weight"), None)?,
                down: file.linear(&name("ffn_down.weight"), None)?,
            });
        }
        if file.repacked > 0 {
            tracing::info!(
                matrices = file.repacked,
                "repacked Q4_1/Q5_0/Q5_1 weights to Q8_0, which candle has fast CPU kernels for"
            );
        }
        let (cos, sin) = rotary_tables(&config, device)?;
        Ok(Self {
            config,
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> Cache {
        Cache {
            layers: (0..self.config.layers)
                .map(|_| ConcatKvCache::new(2))
                .collect(),
        }
    }

    /// Runs `tokens`, the continuation of what `cache` holds, and returns the logits (f32,
    /// `(vocab,)`) of the last position.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Result<Tensor> {
        let pos = cache.len();
        let len = tokens.len();
        if pos + len > self.config.context_length {
            return Err(Error::InvalidRequest(format!(
                "position {} is past the context window of {} tokens",
                pos + len,
                self.config.context_length
            )));
        }
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let mask = match len {
            1 => None,
            _ => Some(causal_mask(len, pos, &self.device)?),
        };
        let cos = self.cos.narrow(0, pos, len)?;
        let sin = self.sin.narrow(0, pos, len)?;
        let mut x = self.embed.forward(&input)?;
        for (layer, kv) in self.layers.iter().zip(&mut cache.layers) {
            let h = self.attention(
                layer,
                &layer.attn_norm.forward(&x)?,
                kv,
                mask.as_ref(),
                &cos,
                &sin,
            )?;
            x = (x + h)?;
            let h = layer.ffn_norm.forward(&x)?;
            let h = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x + layer.down.forward(&h)?)?;
        }
        let last = self.norm.forward(&x.i((.., len - 1..len, ..))?)?;
        Ok(self
            .output
            .forward(&last)?
            .flatten_all()?
            .to_dtype(DType::F32)?)
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        kv: &mut ConcatKvCache,
        mask: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let Config {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.config;
        let (b, len, _) = x.dims3()?;
        let split = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((b, len, n, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let mut q = split(layer.q.forward(x)?, heads)?;
        let mut k = split(layer.k.forward(x)?, kv_heads)?;
        let v = split(layer.v.forward(x)?, kv_heads)?;
        if let (Some(q_norm), Some(k_norm)) = (&layer.q_norm, &layer.k_norm) {
            q = q_norm.forward(&q)?;
            k = k_norm.forward(&k)?;
        }
        let rotate = if self.config.rope_neox {
            candle_nn::rotary_emb::rope
        } else {
            candle_nn::rotary_emb::rope_i
        };
        let q = rotate(&q, cos, sin)?;
        let k = rotate(&k, cos, sin)?;
        let (k, v) = kv.append(&k, &v)?;
        let groups = heads / kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, groups)?;
        let v = candle_transformers::utils::repeat_kv(v, groups)?;
        let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = weights.matmul(&v.contiguous()?)?;
        let y = y.transpose(1, 2)?.reshape((b, len, heads * head_dim))?;
        layer.o.forward(&y)
    }
}

/// Reads named tensors out of a GGUF file.
struct Weights<'a, R> {
    ct: &'a Content,
    reader: &'a mut R,
    device: &'a Device,
    eps: f64,
    /// Matrices converted to Q8_0 so far.
    repacked: usize,
}

impl<R: std::io::Read + std::io::Seek> Weights<'_, R> {
    fn tensor(&mut self, name: &str) -> Result<QTensor> {
        Ok(self.ct.tensor(self.reader, name, self.device)?)
    }

    fn linear(&mut self, name: &str, bias: Option<Tensor>) -> Result<Linear> {
        let mut weight = self.tensor(name)?;
        let slow_on_cpu = matches!(
            weight.dtype(),
            GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
        );
        if slow_on_cpu && self.device.is_cpu() {
            weight = QTensor::quantize(&weight.dequantize(self.device)?, GgmlDType::Q8_0)?;
            self.repacked += 1;
        }
        Linear::new(weight, bias)
    }

    fn norm(&mut self, name: &str) -> Result<RmsNorm> {
        Ok(RmsNorm::from_qtensor(self.tensor(name)?, self.eps)?)
    }
}

impl Config {
    /// The shape a GGUF file declares; the error says which key is missing.
    pub fn from_gguf(meta: Metadata<'_>) -> std::result::Result<Self, String> {
        let architecture = meta.string("general.architecture").unwrap_or_default();
        let key = |name: &str| format!("{architecture}.{name}");
        let integer = |name: &str| meta.integer(&key(name)).map(|v| v as usize);
        let required = |name: &str| meta.required(&key(name)).map(|v| v as usize);
        let float = |name: &str| meta.float(&key(name));
        if integer("expert_count").unwrap_or(0) > 1 {
            return Err("mixture-of-experts GGUF models are not supported".into());
        }
        let heads = required("attention.head_count")?;
        let kv_heads = integer("attention.head_count_kv").unwrap_or(heads);
        // Queries share key/value heads in equal groups; zero of either cannot be run.
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(format!(
                "the GGUF file declares {heads} attention heads and {kv_heads} key/value heads; \
                 the file is corrupt"
            ));
        }
        let hidden = required("embedding_length")?;
        Ok(Self {
            heads,
            kv_heads,
            head_dim: integer("attention.key_length").unwrap_or(hidden / heads),
            layers: required("block_count")?,
            hidden,
            context_length: integer("context_length").unwrap_or(4096),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0) as f32,
            norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_neox: architecture != "llama",
            architecture,
        })
    }
}

/// cos and sin of every position's rotation angles, `(context, head_dim / 2)`.
fn rotary_tables(config: &Config, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = config.head_dim / 2;
    let inverse: Vec<f32> = (0..half)
        .map(|i| {
            1.0 / config
                .rope_theta
                .powf(2.0 * i as f32 / config.head_dim as f32)
        })
        .collect();
    let inverse = Tensor::from_vec(inverse, (1, half), device)?;
    let positions = Tensor::arange(0u32, config.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((config.context_length, 1))?;
    let angles = positions.broadcast_mul(&inverse)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// `(len, pos + len)`: 0 where a query may look, -inf at later positions.
fn causal_mask(len: usize, pos: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| {
            (0..pos + len).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (len, pos + len), device)?)
}

#[cfg(test)]
mod tests {
    //! The transformer against candle's own quantized model types, which it replaces, on tiny
    //! random-weight GGUF files of each family:
    //!
    //! - token by token with 8-bit weights, both use the same quantized kernels: the logits agree;
    //! - a whole prompt with f32 weights, both run the same f32 matmuls: the logits agree (this
    //!   covers the causal mask and the cache layout of multi-token passes);
    //! - a prompt in two chunks gives what one pass gives (the mask with an offset).
    use std::io::Cursor;

    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};

    use super::*;

    const PROMPT: [u32; 20] = [
        7, 42, 3, 100, 17, 250, 8, 66, 128, 5, 31, 99, 12, 200, 77, 1, 54, 9, 180, 23,
    ];
    const ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "qwen3"];

    /// candle's model for the same file: `(tokens, position) -> logits`.
    type Candle = Box<dyn FnMut(&[u32], usize) -> candle_core::Result<Tensor>>;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let b = b.flatten_all().unwrap();
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// A tiny random-weight GGUF file of `architecture` in memory, matrices stored as `dtype`.
    fn synthetic(architecture: &str, dtype: GgmlDType) -> Vec<u8> {
        let device = Device::Cpu;
        let (vocab, hidden, heads, kv_heads, head_dim, ffn, blocks) = (256, 64, 4, 2, 16, 128, 2);
        let random = |shape: &[usize]| Tensor::randn(0f32, 0.3, shape, &device).unwrap();
        let ones = |n: usize| (random(&[n]) + 1.0).unwrap();
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        let mut add = |name: String, t: Tensor, dtype| {
            tensors.push((name, QTensor::quantize(&t, dtype).unwrap()))
        };
        add("token_embd.weight".into(), random(&[vocab, hidden]), dtype);
        add("output_norm.weight".into(), ones(hidden), GgmlDType::F32);
        add("output.weight".into(), random(&[vocab, hidden]), dtype);
        for i in 0..blocks {
            let n = |part: &str| format!("blk.{i}.{part}");
            add(n("attn_norm.weight"), ones(hidden), GgmlDType::F32);
            add(n("ffn_norm.weight"), ones(hidden), GgmlDType::F32);
            add(
                n("attn_q.weight"),
                random(&[heads * head_dim, hidden]),
                dtype,
            );
            add(
                n("attn_k.weight"),
                random(&[kv_heads * head_dim, hidden]),
                dtype,
            );
            add(
                n("attn_v.weight"),
                random(&[kv_heads * head_dim, hidden]),
                dtype,
            );
            add(
                n("attn_output.weight"),
                random(&[hidden, heads * head_dim]),
                dtype,
            );
            add(n("ffn_gate.weight"), random(&[ffn, hidden]), dtype);
            add(n("ffn_up.weight"), random(&[ffn, hidden]), dtype);
            add(n("ffn_down.weight"), random(&[hidden, ffn]), dtype);
            if architecture == "qwen2" {
                add(
                    n("attn_q.bias"),
                    random(&[heads * head_dim]),
                    GgmlDType::F32,
                );
                add(
                    n("attn_k.bias"),
                    random(&[kv_heads * head_dim]),
                    GgmlDType::F32,
                );
                add(
                    n("attn_v.bias"),
                    random(&[kv_heads * head_dim]),
                    GgmlDType::F32,
                );
            }
            if architecture == "qwen3" {
                add(n("attn_q_norm.weight"), ones(head_dim), GgmlDType::F32);
                add(n("attn_k_norm.weight"), ones(head_dim), GgmlDType::F32);
            }
        }
        let key = |k: &str| format!("{architecture}.{k}");
        let metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String(architecture.into()),
            ),
            (key("attention.head_count"), Value::U32(heads as u32)),
            (key("attention.head_count_kv"), Value::U32(kv_heads as u32)),
            (key("attention.key_length"), Value::U32(head_dim as u32)),
            (key("embedding_length"), Value::U32(hidden as u32)),
            (key("block_count"), Value::U32(blocks as u32)),
            (key("context_length"), Value::U32(256)),
            (key("rope.dimension_count"), Value::U32(head_dim as u32)),
            (key("rope.freq_base"), Value::F32(10_000.0)),
            (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
            // candle's qwen3 builds its rotary tables in this dtype; 0 is f32.
            ("general.dtype".to_string(), Value::U32(0)),
        ];
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut bytes = Cursor::new(Vec::new());
        gguf_file::write(&mut bytes, &metadata, &tensors).unwrap();
        bytes.into_inner()
    }

    fn ours(bytes: &[u8]) -> Transformer {
        let mut reader = Cursor::new(bytes);
        let ct = gguf_file::Content::read(&mut reader).unwrap();
        let config = Config::from_gguf(Metadata(&ct)).unwrap();
        Transformer::from_gguf(config, &ct, &mut reader, &Device::Cpu).unwrap()
    }

    fn candle(architecture: &str, bytes: &[u8]) -> Candle {
        let mut reader = Cursor::new(bytes.to_vec());
        let ct = gguf_file::Content::read(&mut reader).unwrap();
        let device = Device::Cpu;
        let input = |tokens: &[u32]| Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0);
        match architecture {
            "llama" => {
                let mut m =
                    quantized_llama::ModelWeights::from_gguf(ct, &mut reader, &device).unwrap();
                Box::new(move |tokens, pos| m.forward(&input(tokens)?, pos))
            }
            "qwen2" => {
                let mut m =
                    quantized_qwen2::ModelWeights::from_gguf(ct, &mut reader, &device).unwrap();
                Box::new(move |tokens, pos| m.forward(&input(tokens)?, pos))
            }
            _ => {
                let mut m =
                    quantized_qwen3::ModelWeights::from_gguf(ct, &mut reader, &device).unwrap();
                Box::new(move |tokens, pos| m.forward(&input(tokens)?, pos))
            }
        }
    }

    #[test]
    fn impossible_head_counts_are_errors() {
        for (heads, kv_heads) in [(0, 0), (4, 0), (4, 3)] {
            let mut ct =
                gguf_file::Content::read(&mut Cursor::new(synthetic("llama", GgmlDType::Q8_0)))
                    .unwrap();
            ct.metadata
                .insert("llama.attention.head_count".into(), Value::U32(heads));
            ct.metadata
                .insert("llama.attention.head_count_kv".into(), Value::U32(kv_heads));
            let error = Config::from_gguf(Metadata(&ct)).unwrap_err();
            assert!(error.contains("corrupt"), "{error}");
        }
    }

    #[test]
    fn token_by_token_matches_candle() {
        for architecture in ARCHITECTURES {
            let bytes = synthetic(architecture, GgmlDType::Q8_0);
            let (model, mut reference) = (ours(&bytes), candle(architecture, &bytes));
            let mut cache = model.new_cache();
            for (pos, &token) in PROMPT.iter().enumerate() {
                let diff = max_diff(
                    &model.forward(&[token], &mut cache).unwrap(),
                    &reference(&[token], pos).unwrap(),
                );
                assert!(
                    diff < 1e-3,
                    "{architecture}, step {pos}: logits differ by {diff}"
                );
            }
        }
    }

    #[test]
    fn a_whole_prompt_matches_candle() {
        for architecture in ARCHITECTURES {
            let bytes = synthetic(architecture, GgmlDType::F32);
            let model = ours(&bytes);
            let logits = model.forward(&PROMPT, &mut model.new_cache()).unwrap();
            let diff = max_diff(&logits, &candle(architecture, &bytes)(&PROMPT, 0).unwrap());
            assert!(diff < 1e-3, "{architecture}: logits differ by {diff}");
        }
    }

    #[test]
    fn a_prompt_in_chunks_equals_one_pass() {
        for architecture in ARCHITECTURES {
            let model = ours(&synthetic(architecture, GgmlDType::F32));
            let whole = model.forward(&PROMPT, &mut model.new_cache()).unwrap();
            let mut cache = model.new_cache();
            model.forward(&PROMPT[..12], &mut cache).unwrap();
            let chunked = model.forward(&PROMPT[12..], &mut cache).unwrap();
            assert_eq!(cache.len(), PROMPT.len());
            let diff = max_diff(&chunked, &whole);
            assert!(diff < 1e-4, "{architecture}: logits differ by {diff}");
        }
    }

    #[test]
    fn gemm_prompts_stay_close_to_the_quantized_kernels() {
        // Same 8-bit weights; the prompt pass multiplies by them dequantized, token steps by the
        // quantized kernel (which also rounds the activations to 8 bits).
        let model = ours(&synthetic("llama", GgmlDType::Q8_0));
        let gemm = model.forward(&PROMPT, &mut model.new_cache()).unwrap();
        let mut cache = model.new_cache();
        let mut stepped = None;
        for &token in &PROMPT {
            stepped = Some(model.forward(&[token], &mut cache).unwrap());
        }
        let stepped = stepped.unwrap();
        let dot = |a: &Tensor, b: &Tensor| {
            (a * b)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let cosine =
            dot(&gemm, &stepped) / (dot(&gemm, &gemm).sqrt() * dot(&stepped, &stepped).sqrt());
        assert!(cosine > 0.99, "cosine {cosine}");
    }
}
