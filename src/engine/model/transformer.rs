//! One decoder-only transformer for every family and weight format wick runs.
//!
//! The weights are immutable and shared; keys and values live in the engine's block pool
//! ([`KvStore`]). A forward pass takes a batch of [`Segment`]s — a sequence's block table and the
//! tokens that continue it — and runs the embeddings, projections and MLP once over the rows of
//! all segments; attention reads each segment's keys and values through its block table. Logits
//! are computed only for the segments that ask.

use candle_core::{D, DType, Device, Tensor};

use super::attention::{self, Heads, QueryRows, paged_attention};
use super::config::{Activation, Config, RopeScaling};
use super::embedding::Embedding;
use super::kernels;
use super::linear::{Linear, Span};
use super::rope::Rope;
use super::weights::WeightSource;
use crate::engine::kv::{BlockId, KvShape, KvStore};
use crate::error::{Error, Result};

/// One sequence's share of a forward pass.
pub(crate) struct Segment<'a> {
    /// The blocks of the sequence's positions, with room for `tokens`.
    pub table: &'a [BlockId],
    /// Positions already in the cache; `tokens` continue from here.
    pub start: usize,
    pub tokens: &'a [u32],
    /// Which of its tokens' logits to return.
    pub logits: Logits,
    /// A prompt chunk rather than decode rows (see `linear::Span`).
    pub prompt: bool,
}

/// The logits a segment asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Logits {
    None,
    /// The last token's: the next token is sampled from them.
    Last,
    /// Every token's: the prompt's log-probabilities, each from the position before.
    All,
}

impl Segment<'_> {
    /// The rows, of its own, whose logits it asks for.
    pub fn logit_rows(&self) -> std::ops::Range<usize> {
        let rows = self.tokens.len();
        match self.logits {
            Logits::None => rows..rows,
            Logits::Last => rows.saturating_sub(1)..rows,
            Logits::All => 0..rows,
        }
    }
}

enum Qkv {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

struct Layer {
    attn_norm: Tensor,
    qkv: Qkv,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: Linear,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate_up: GateUp,
    down: Linear,
    post_ffn_norm: Option<Tensor>,
    sliding: bool,
}

pub(crate) struct Transformer {
    config: Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    rope: Rope,
    local_rope: Rope,
    dtype: DType,
    device: Device,
    /// The pool the CPU kernels run on, attention's included: one pool of spinning threads at a
    /// time (see `kernels::Threads`).
    threads: kernels::Threads,
}

impl Transformer {
    /// Builds the model `config` describes from `source`'s tensors.
    pub fn load(
        mut config: Config,
        source: &mut dyn WeightSource,
        device: &Device,
    ) -> Result<Self> {
        let dtype = source.dtype();
        if source.contains("rope_freqs.weight") {
            let divisors = source.dense("rope_freqs.weight")?.to_dtype(DType::F32)?;
            config.rope_scaling = RopeScaling::Divisors(divisors.flatten_all()?.to_vec1()?);
        }
        let offset = config.norm_weight_offset;
        let norm = |source: &mut dyn WeightSource, name: &str| -> Result<Tensor> {
            let w = source.dense(name)?;
            Ok(if offset != 0.0 { (w + offset)? } else { w })
        };
        let mut embed = source.embedding("token_embd.weight")?;
        // Tied embeddings: without its own output matrix the model reuses the embeddings, and
        // where the output keeps the table as stored, the lookups read that one copy.
        let output = match source.contains("output.weight") {
            true => source.linear("output.weight", None)?,
            false => {
                let output = source.linear("token_embd.weight", None)?;
                if let (Embedding::Quantized(table), Some(weight)) =
                    (&embed, output.quantized_weight())
                    && table.dtype() == weight.dtype()
                {
                    embed = Embedding::Quantized(weight.clone());
                }
                if let (Embedding::Half(table), Some(weight)) = (&embed, output.half_weight())
                    && table.format() == weight.format()
                {
                    embed = Embedding::Half(weight.clone());
                }
                output
            }
        };
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let name = |part: &str| format!("blk.{i}.{part}");
            let linear = |source: &mut dyn WeightSource, part: &str| -> Result<Linear> {
                let bias = format!("blk.{i}.{part}.bias");
                let bias = match source.contains(&bias) {
                    true => Some(source.dense(&bias)?),
                    false => None,
                };
                source.linear(&format!("blk.{i}.{part}.weight"), bias)
            };
            let qkv = match config.fused_projections {
                true => Qkv::Fused(linear(source, "attn_qkv")?),
                false => Qkv::Separate {
                    q: linear(source, "attn_q")?,
                    k: linear(source, "attn_k")?,
                    v: linear(source, "attn_v")?,
                },
            };
            let gate_up = match config.fused_projections {
                true => GateUp::Fused(linear(source, "ffn_up")?),
                false => GateUp::Separate {
                    gate: linear(source, "ffn_gate")?,
                    up: linear(source, "ffn_up")?,
                },
            };
            let (q_norm, k_norm) = match config.qk_norm {
                true => (
                    Some(norm(source, &name("attn_q_norm.weight"))?),
                    Some(norm(source, &name("attn_k_norm.weight"))?),
                ),
                false => (None, None),
            };
            let (post_attn_norm, post_ffn_norm) = match config.sandwich_norms {
                true => (
                    Some(norm(source, &name("post_attention_norm.weight"))?),
                    Some(norm(source, &name("post_ffw_norm.weight"))?),
                ),
                false => (None, None),
            };
            layers.push(Layer {
                attn_norm: norm(source, &name("attn_norm.weight"))?,
                qkv,
                q_norm,
                k_norm,
                o: linear(source, "attn_output")?,
                post_attn_norm,
                ffn_norm: norm(source, &name("ffn_norm.weight"))?,
                gate_up,
                down: linear(source, "ffn_down")?,
                post_ffn_norm,
                sliding: config.sliding_layers.get(i).copied().unwrap_or(false),
            });
        }
        let mut model = Self {
            norm: norm(source, "output_norm.weight")?,
            rope: Rope::new(&config, false, device)?,
            local_rope: Rope::new(&config, true, device)?,
            config,
            embed,
            layers,
            output,
            dtype,
            device: device.clone(),
            threads: kernels::Threads::Wick,
        };
        let mut all_ours = true;
        model.each_linear(|linear| all_ours &= linear.on_wicks_kernels());
        if !all_ours {
            model.each_linear_mut(Linear::share_candles_threads);
            model.threads = kernels::Threads::Candle;
        }
        Ok(model)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The bytes of weights one decode step reads (see `ModelInfo::weight_bytes_per_token`).
    pub fn weight_bytes(&self) -> usize {
        let mut bytes = 0;
        self.each_linear(|linear| bytes += linear.bytes());
        bytes
    }

    /// Every projection, the output's included.
    fn each_linear(&self, mut visit: impl FnMut(&Linear)) {
        for layer in &self.layers {
            match &layer.qkv {
                Qkv::Separate { q, k, v } => [q, k, v].into_iter().for_each(&mut visit),
                Qkv::Fused(qkv) => visit(qkv),
            }
            match &layer.gate_up {
                GateUp::Separate { gate, up } => [gate, up].into_iter().for_each(&mut visit),
                GateUp::Fused(gate_up) => visit(gate_up),
            }
            visit(&layer.o);
            visit(&layer.down);
        }
        visit(&self.output);
    }

    /// [`Transformer::each_linear`], to change them.
    fn each_linear_mut(&mut self, mut visit: impl FnMut(&mut Linear)) {
        for layer in &mut self.layers {
            match &mut layer.qkv {
                Qkv::Separate { q, k, v } => [q, k, v].into_iter().for_each(&mut visit),
                Qkv::Fused(qkv) => visit(qkv),
            }
            match &mut layer.gate_up {
                GateUp::Separate { gate, up } => [gate, up].into_iter().for_each(&mut visit),
                GateUp::Fused(gate_up) => visit(gate_up),
            }
            visit(&mut layer.o);
            visit(&mut layer.down);
        }
        visit(&mut self.output);
    }

    /// The shape of this model's KV blocks.
    pub fn kv_shape(&self, block_size: usize, dtype: DType) -> KvShape {
        KvShape {
            layers: self.config.layers,
            kv_heads: self.config.kv_heads,
            head_dim: self.config.head_dim,
            block_size,
            dtype,
        }
    }

    /// Decode rows of one sequence a step may feed at once with the bits each gets alone: one
    /// where a projection is dense (the GEMM takes a lone row another way than several), else
    /// 16, well inside the calls of fewer than 32 rows that keep the decode kernels.
    pub fn replay_rows(&self) -> usize {
        let mut dense = false;
        self.each_linear(|linear| dense |= linear.is_dense());
        if dense { 1 } else { 16 }
    }

    /// The dtype of the activations (and of the keys and values the layers compute).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Runs every segment's tokens, writing their keys and values into `kv`, and returns, in
    /// order, the f32 logits `(vocab,)` of the tokens each segment asked for (see [`Logits`]),
    /// as rows of one `(n, vocab)` tensor.
    pub fn forward(&self, kv: &KvStore, segments: &[Segment<'_>]) -> Result<Tensor> {
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut logit_rows = Vec::new();
        for segment in segments {
            let start = segment.start;
            let end = start + segment.tokens.len();
            if kv.shape().blocks_for(end) > segment.table.len() {
                return Err(Error::InvalidRequest(format!(
                    "position {end} is past the {} blocks the sequence holds",
                    segment.table.len()
                )));
            }
            if segment.tokens.is_empty() {
                return Err(Error::InvalidRequest("a segment has no tokens".into()));
            }
            if end > self.config.context_length {
                return Err(Error::InvalidRequest(format!(
                    "position {end} is past the context window of {} tokens",
                    self.config.context_length
                )));
            }
            let first = ids.len();
            ids.extend_from_slice(segment.tokens);
            positions.extend(start as u32..end as u32);
            logit_rows.extend(segment.logit_rows().map(|row| (first + row) as u32));
        }
        let spans: Vec<Span> = segments
            .iter()
            .map(|s| Span {
                rows: s.tokens.len(),
                prompt: s.prompt,
            })
            .collect();
        let positions = Tensor::new(positions.as_slice(), &self.device)?;
        let global = self.rope.tables(&positions)?;
        let local = match self.config.sliding_window {
            Some(_) => Some(self.local_rope.tables(&positions)?),
            None => None,
        };

        let mut x = self.embed.rows(&ids)?;
        if let Some(scale) = self.config.embed_scale {
            x = (x * scale)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let (rope, tables) = match (&local, layer.sliding) {
                (Some(local), true) => (&self.local_rope, local),
                _ => (&self.rope, &global),
            };
            let h = self.rms_norm(&x, &layer.attn_norm)?;
            let h = self.attention(kv, i, layer, &h, &spans, segments, rope, tables)?;
            let h = match &layer.post_attn_norm {
                Some(norm) => self.rms_norm(&h, norm)?,
                None => h,
            };
            x = (x + h)?;
            let h = self.mlp(layer, &self.rms_norm(&x, &layer.ffn_norm)?, &spans)?;
            let h = match &layer.post_ffn_norm {
                Some(norm) => self.rms_norm(&h, norm)?,
                None => h,
            };
            x = (x + h)?;
        }
        if logit_rows.is_empty() {
            return Ok(Tensor::zeros((0, 0), DType::F32, &self.device)?);
        }
        let last = Tensor::new(logit_rows.as_slice(), &self.device)?;
        let last = self.rms_norm(&x.index_select(&last, 0)?, &self.norm)?;
        // Each logit row is a segment of its own.
        let spans = vec![Span::decode(1); logit_rows.len()];
        Ok(self.output.forward(&last, &spans)?.to_dtype(DType::F32)?)
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            x,
            weight,
            self.config.norm_eps as f32,
        )?)
    }

    fn mlp(&self, layer: &Layer, x: &Tensor, spans: &[Span]) -> Result<Tensor> {
        let (gate, up) = match &layer.gate_up {
            GateUp::Separate { gate, up } => {
                let [gate, up] = Linear::forward_many([gate, up], x, spans)?;
                (gate, up)
            }
            GateUp::Fused(gate_up) => {
                let both = gate_up.forward(x, spans)?;
                let half = both.dim(D::Minus1)? / 2;
                (
                    both.narrow(D::Minus1, 0, half)?,
                    both.narrow(D::Minus1, half, half)?,
                )
            }
        };
        let gate = match self.config.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        layer.down.forward(&(gate * up)?, spans)
    }

    /// Self-attention of layer `index` over `x`, `(rows, hidden)`: the rows of all segments.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        kv: &KvStore,
        index: usize,
        layer: &Layer,
        x: &Tensor,
        spans: &[Span],
        segments: &[Segment<'_>],
        rope: &Rope,
        (cos, sin): &(Tensor, Tensor),
    ) -> Result<Tensor> {
        let Config {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.config;
        let rows: usize = spans.iter().map(|s| s.rows).sum();
        let (q, k, v) = match &layer.qkv {
            Qkv::Separate { q, k, v } => {
                let [q, k, v] = Linear::forward_many([q, k, v], x, spans)?;
                (q, k, v)
            }
            Qkv::Fused(qkv) => {
                let all = qkv.forward(x, spans)?;
                let (nq, nk) = (heads * head_dim, kv_heads * head_dim);
                (
                    all.narrow(1, 0, nq)?,
                    all.narrow(1, nq, nk)?,
                    all.narrow(1, nq + nk, nk)?,
                )
            }
        };
        // (rows, n * head_dim) -> (1, n, rows, head_dim), normalized per head where asked.
        let heads_first = |t: Tensor, n: usize, norm: Option<&Tensor>| -> Result<Tensor> {
            let mut t = t.contiguous()?.reshape((rows, n, head_dim))?;
            if let Some(norm) = norm {
                t = self.rms_norm(&t, norm)?;
            }
            Ok(t.unsqueeze(0)?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads_first(q, heads, layer.q_norm.as_ref())?;
        let k = heads_first(k, kv_heads, layer.k_norm.as_ref())?;
        let v = heads_first(v, kv_heads, None)?;
        let q = (rope.apply(&q, cos, sin)? * self.config.attention_scale)?;
        let k = rope.apply(&k, cos, sin)?;
        let (q, k, v) = (q.squeeze(0)?, k.squeeze(0)?, v.squeeze(0)?);

        // Every row's own key is in the cache before any row reads it.
        let mut offset = 0;
        for segment in segments {
            let len = segment.tokens.len();
            let (k, v) = (k.narrow(1, offset, len)?, v.narrow(1, offset, len)?);
            kv.write(index, segment.table, segment.start, &k, &v)?;
            offset += len;
        }
        let window = self.config.sliding_window.filter(|_| layer.sliding);
        let (keys, values) = kv.layer(index);
        let paged = self.device.is_cpu() && q.dtype() == DType::F32;
        let y = match paged && attention::reads(keys.dtype()) {
            true => {
                let queries: Vec<QueryRows<'_>> = segments
                    .iter()
                    .map(|s| QueryRows {
                        table: s.table,
                        start: s.start,
                        rows: s.tokens.len(),
                    })
                    .collect();
                let shape = Heads {
                    heads,
                    kv_heads,
                    head_dim,
                    block_size: kv.shape().block_size,
                    window,
                };
                paged_attention(&q, keys, values, &queries, shape, self.threads)?
            }
            false => self.gathered_attention(kv, index, &q, segments, window)?,
        };
        layer.o.forward(&y, spans)
    }

    /// Attention through candle's matmuls over keys and values copied out of the pool, one
    /// segment at a time (the GPU's path). `q` is `(heads, rows, head_dim)`; the result
    /// `(rows, heads * head_dim)`.
    fn gathered_attention(
        &self,
        kv: &KvStore,
        index: usize,
        q: &Tensor,
        segments: &[Segment<'_>],
        window: Option<usize>,
    ) -> Result<Tensor> {
        let Config {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.config;
        let groups = heads / kv_heads;
        let mut outputs = Vec::with_capacity(segments.len());
        let mut offset = 0;
        for segment in segments {
            let (len, start) = (segment.tokens.len(), segment.start);
            // Keys no query of this segment may see (outside the window) are skipped.
            let first = window.map_or(0, |w| (start + 1).saturating_sub(w));
            let (keys, values) = kv.gather(index, segment.table, first, start + len, q.dtype())?;
            // Queries grouped under the key/value head they share: (kv_heads, groups * len, d).
            let q = q.narrow(1, offset, len)?.contiguous()?.reshape((
                kv_heads,
                groups * len,
                head_dim,
            ))?;
            let scores = q.matmul(&keys.t()?)?;
            let scores = match mask(len, start, first, window, &self.device)? {
                Some(mask) => scores
                    .reshape((kv_heads, groups, len, start + len - first))?
                    .broadcast_add(&mask.to_dtype(scores.dtype())?)?
                    .reshape((kv_heads, groups * len, start + len - first))?,
                None => scores,
            };
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            let y = weights.matmul(&values)?;
            // (kv_heads, groups * len, d) -> (len, heads * d)
            outputs.push(
                y.reshape((heads, len, head_dim))?
                    .transpose(0, 1)?
                    .reshape((len, heads * head_dim))?,
            );
            offset += len;
        }
        Ok(match outputs.len() {
            1 => outputs.remove(0),
            _ => Tensor::cat(&outputs, 0)?,
        })
    }
}

/// `(len, keys)` for queries at `start..start + len` over keys `first..start + len`: 0 where a
/// query may look (not ahead of itself, not `window` or more behind), -inf elsewhere; `None`
/// for a single query, which sees every key it is given.
fn mask(
    len: usize,
    start: usize,
    first: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let keys = start + len - first;
    let visible = |query: usize, key: usize| key <= query && window.is_none_or(|w| query - key < w);
    // One query sees every key from `first` (the window's start) to itself.
    if len == 1 {
        return Ok(None);
    }
    let values: Vec<f32> = (0..len)
        .flat_map(|i| {
            (first..start + len).map(move |j| {
                if visible(start + i, j) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(values, (len, keys), device)?))
}
