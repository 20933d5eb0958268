//! The shape of a decoder-only transformer and the knobs that tell its families apart, read from
//! a GGUF file's metadata or a `config.json`. Everything that differs between families is a field
//! here, so the forward pass is written once.

use serde::Deserialize;
use serde_json::Value;

use crate::engine::gguf_metadata::Metadata;

/// The families wick runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Llama,
    Qwen2,
    Qwen3,
    Phi3,
    Gemma3,
}

impl Family {
    pub const ALL: [Family; 5] = [
        Family::Llama,
        Family::Qwen2,
        Family::Qwen3,
        Family::Phi3,
        Family::Gemma3,
    ];

    /// The name GGUF's `general.architecture` uses.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Phi3 => "phi3",
            Family::Gemma3 => "gemma3",
        }
    }

    pub fn from_gguf(architecture: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == architecture)
    }

    /// `config.json`'s `model_type`; Gemma 3's text-only checkpoints say `gemma3_text`.
    pub fn from_hf(model_type: &str) -> Option<Self> {
        match model_type {
            "gemma3_text" => Some(Family::Gemma3),
            other => Self::from_gguf(other),
        }
    }

    /// Every name either format uses, for error messages.
    pub fn supported() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
        format!("{} (config.json: gemma3_text for gemma3)", names.join(", "))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// How rotary frequencies are stretched for contexts longer than the model was trained on.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear(f32),
    /// Llama 3.x: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: f32,
    },
    /// One divisor per frequency, as GGUF files store Llama 3's scaling (`rope_freqs.weight`).
    Divisors(Vec<f32>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Config {
    pub family: Family,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub context_length: usize,
    pub norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    /// Rotate interleaved pairs rather than halves: llama.cpp permutes the q/k rows of llama
    /// GGUF files for that layout, so choosing the rotation here spares rewriting the weights.
    pub rope_interleaved: bool,
    /// Sliding-window attention: the window, and which layers use it (Gemma 3: five in six).
    pub sliding_window: Option<usize>,
    pub sliding_layers: Vec<bool>,
    /// The rotary base of the sliding layers, where it differs from `rope_theta`.
    pub rope_local_theta: Option<f32>,
    pub activation: Activation,
    /// Multiplies the embeddings (Gemma: `sqrt(hidden)`).
    pub embed_scale: Option<f64>,
    /// Multiplies the attention scores (usually `1 / sqrt(head_dim)`).
    pub attention_scale: f64,
    /// Gemma's extra norms after attention and after the MLP.
    pub sandwich_norms: bool,
    /// Qwen 3 and Gemma 3 normalize each head's queries and keys.
    pub qk_norm: bool,
    /// Phi-3 stores q/k/v as one matrix and gate/up as another.
    pub fused_projections: bool,
    /// Gemma's `config.json` norms hold `weight - 1` (GGUF files store the weight itself).
    pub norm_weight_offset: f64,
}

impl Config {
    /// The defaults every family shares; the readers below set what differs.
    fn new(family: Family, shape: Shape) -> Self {
        let gemma = family == Family::Gemma3;
        Self {
            family,
            hidden: shape.hidden,
            ffn: shape.ffn,
            heads: shape.heads,
            kv_heads: shape.kv_heads,
            head_dim: shape.head_dim,
            layers: shape.layers,
            context_length: shape.context_length,
            norm_eps: shape.norm_eps,
            rope_theta: shape.rope_theta,
            rope_scaling: RopeScaling::None,
            rope_interleaved: false,
            sliding_window: None,
            sliding_layers: vec![false; shape.layers],
            rope_local_theta: None,
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            embed_scale: gemma.then(|| (shape.hidden as f64).sqrt()),
            attention_scale: 1.0 / (shape.head_dim as f64).sqrt(),
            sandwich_norms: gemma,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            fused_projections: family == Family::Phi3,
            norm_weight_offset: 0.0,
        }
    }

    /// Sliding-window layers, every one or (Gemma 3) all but every `pattern`-th.
    fn slide(&mut self, window: usize, pattern: Option<usize>) {
        self.sliding_window = Some(window);
        self.sliding_layers = (0..self.layers)
            .map(|i| pattern.is_none_or(|p| p == 0 || (i + 1) % p != 0))
            .collect();
    }

    /// The shape a GGUF file declares; the error says which key is missing or what is wrong.
    pub fn from_gguf(meta: Metadata<'_>) -> Result<Self, String> {
        let architecture = meta.string("general.architecture").unwrap_or_default();
        let family = Family::from_gguf(&architecture)
            .ok_or_else(|| format!("the architecture `{architecture}` is not one wick runs"))?;
        let key = |name: &str| format!("{architecture}.{name}");
        let integer = |name: &str| meta.integer(&key(name)).map(|v| v as usize);
        let required = |name: &str| meta.required(&key(name)).map(|v| v as usize);
        let float = |name: &str| meta.float(&key(name));
        if integer("expert_count").unwrap_or(0) > 1 {
            return Err("mixture-of-experts GGUF models are not supported".into());
        }
        let heads = required("attention.head_count")?;
        let kv_heads = integer("attention.head_count_kv").unwrap_or(heads);
        check_heads(heads, kv_heads)?;
        let hidden = required("embedding_length")?;
        let shape = Shape {
            hidden,
            ffn: required("feed_forward_length")?,
            heads,
            kv_heads,
            head_dim: integer("attention.key_length").unwrap_or(hidden / heads),
            layers: required("block_count")?,
            context_length: integer("context_length").unwrap_or(4096),
            norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0) as f32,
        };
        let mut config = Self::new(family, shape);
        config.rope_interleaved = family == Family::Llama;
        match meta.string(&key("rope.scaling.type")).as_deref() {
            None | Some("none") => {}
            Some("linear") => {
                let factor = float("rope.scaling.factor").unwrap_or(1.0) as f32;
                config.rope_scaling = RopeScaling::Linear(factor);
            }
            Some(other) => {
                return Err(format!("rope scaling `{other}` is not supported"));
            }
        }
        let rotary = integer("rope.dimension_count").unwrap_or(config.head_dim);
        if rotary != config.head_dim {
            return Err(format!(
                "partial rotary embeddings ({rotary} of {} dimensions) are not supported",
                config.head_dim
            ));
        }
        match family {
            // llama.cpp's own constants for Gemma 3: every sixth layer is global, the local
            // layers rotate with base 10000, and only the 27B model scales queries by
            // hidden / heads rather than by the head size.
            Family::Gemma3 => {
                config.slide(required("attention.sliding_window")?, Some(6));
                let local = float("rope.freq_base_swa").unwrap_or(10_000.0);
                config.rope_local_theta = Some(local as f32);
                if config.layers == 62 {
                    config.attention_scale = 1.0 / ((hidden / heads) as f64).sqrt();
                }
            }
            Family::Phi3 => {
                if let Some(window) = integer("attention.sliding_window").filter(|&w| w > 0) {
                    config.slide(window, None);
                }
            }
            _ => {}
        }
        Ok(config)
    }

    /// The shape a `config.json` declares; unsupported options are refused by name.
    pub fn from_hf(json: &Value) -> Result<Self, String> {
        let model_type = json["model_type"].as_str().unwrap_or_default();
        let family = Family::from_hf(model_type)
            .ok_or_else(|| format!("the model type `{model_type}` is not one wick runs"))?;
        let hf: HfConfig = serde_json::from_value(json.clone())
            .map_err(|e| format!("config.json does not describe a {model_type} model: {e}"))?;
        let kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        check_heads(hf.num_attention_heads, kv_heads)?;
        let head_dim = hf
            .head_dim
            .unwrap_or(hf.hidden_size / hf.num_attention_heads);
        let rotary = Rotary::from_hf(&hf)?;
        let shape = Shape {
            hidden: hf.hidden_size,
            ffn: hf.intermediate_size,
            heads: hf.num_attention_heads,
            kv_heads,
            head_dim,
            layers: hf.num_hidden_layers,
            context_length: hf.max_position_embeddings,
            norm_eps: hf.rms_norm_eps,
            rope_theta: rotary.theta,
        };
        let mut config = Self::new(family, shape);
        config.rope_scaling = rotary.scaling;
        if rotary.partial_factor.is_some_and(|f| f != 1.0) {
            return Err(
                "partial rotary embeddings (`partial_rotary_factor`) are not supported".into(),
            );
        }
        // Gemma names its activation `hidden_activation`; the others `hidden_act`.
        let activation = match family {
            Family::Gemma3 => hf.hidden_activation.or(hf.hidden_act),
            _ => hf.hidden_act,
        }
        .unwrap_or_default();
        let expected = match config.activation {
            Activation::Silu => &["silu", "swish"][..],
            Activation::GeluTanh => &["gelu_pytorch_tanh", "gelu_new"][..],
        };
        if !activation.is_empty() && !expected.contains(&activation.as_str()) {
            return Err(format!(
                "the activation `{activation}` is not supported for {model_type}"
            ));
        }
        for (name, value) in [
            ("final_logit_softcapping", hf.final_logit_softcapping),
            ("attn_logit_softcapping", hf.attn_logit_softcapping),
        ] {
            if value.is_some() {
                return Err(format!("`{name}` is not supported"));
            }
        }
        match family {
            Family::Gemma3 => {
                let window = hf
                    .sliding_window
                    .ok_or("config.json has no `sliding_window`")?;
                match &hf.layer_types {
                    Some(types) if types.len() == config.layers => {
                        config.sliding_window = Some(window);
                        config.sliding_layers =
                            types.iter().map(|t| t == "sliding_attention").collect();
                    }
                    _ => config.slide(window, Some(hf.sliding_window_pattern.unwrap_or(6))),
                }
                config.rope_local_theta = Some(rotary.local_theta.unwrap_or(10_000.0));
                if let Some(scalar) = hf.query_pre_attn_scalar {
                    config.attention_scale = 1.0 / scalar.sqrt();
                }
                config.norm_weight_offset = 1.0;
            }
            Family::Phi3 => {
                if let Some(window) = hf.sliding_window.filter(|&w| w > 0) {
                    config.slide(window, None);
                }
            }
            Family::Qwen2 | Family::Qwen3 if hf.use_sliding_window == Some(true) => {
                return Err("`use_sliding_window: true` is not supported".into());
            }
            _ => {}
        }
        Ok(config)
    }
}

/// What every family declares.
struct Shape {
    hidden: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    layers: usize,
    context_length: usize,
    norm_eps: f64,
    rope_theta: f32,
}

/// Queries share key/value heads in equal groups; zero of either cannot be run.
fn check_heads(heads: usize, kv_heads: usize) -> Result<(), String> {
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(format!(
            "the model declares {heads} attention heads and {kv_heads} key/value heads; \
             the file is corrupt"
        ));
    }
    Ok(())
}

/// The rotary embedding a `config.json` declares. transformers 5 writes only `rope_parameters`
/// (one set, or for Gemma 3 one per layer type); older files have `rope_theta`, `rope_scaling`
/// and `rope_local_base_freq`. Missing both, a model gets the old default silently wrong, so
/// both are read.
struct Rotary {
    theta: f32,
    scaling: RopeScaling,
    /// The base of the sliding-window layers, where the file gives one.
    local_theta: Option<f32>,
    partial_factor: Option<f64>,
}

impl Rotary {
    fn from_hf(hf: &HfConfig) -> Result<Self, String> {
        let Some(parameters) = hf.rope_parameters.as_ref().filter(|v| v.is_object()) else {
            return Ok(Self {
                theta: hf.rope_theta.unwrap_or(10_000.0) as f32,
                scaling: rope_scaling(hf.rope_scaling.as_ref())?,
                local_theta: hf.rope_local_base_freq.map(|f| f as f32),
                partial_factor: hf.partial_rotary_factor,
            });
        };
        let (global, local) = match parameters.get("full_attention") {
            Some(full) => (full, parameters.get("sliding_attention")),
            None => (parameters, None),
        };
        let theta = |set: &Value| {
            set["rope_theta"]
                .as_f64()
                .map(|t| t as f32)
                .ok_or_else(|| format!("`rope_parameters` has no `rope_theta`: {set}"))
        };
        if let Some(local) = local
            && rope_scaling(Some(local))? != RopeScaling::None
        {
            return Err(
                "scaled rotary embeddings on sliding-window layers are not supported".into(),
            );
        }
        Ok(Self {
            theta: theta(global)?,
            scaling: rope_scaling(Some(global))?,
            local_theta: local.map(theta).transpose()?,
            partial_factor: global["partial_rotary_factor"]
                .as_f64()
                .or(hf.partial_rotary_factor),
        })
    }
}

/// A rotary scaling (`rope_scaling`, or a set of `rope_parameters`), refused by name where wick
/// cannot honour it.
fn rope_scaling(value: Option<&Value>) -> Result<RopeScaling, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = value["rope_type"]
        .as_str()
        .or_else(|| value["type"].as_str())
        .unwrap_or_default();
    let number = |name: &str| -> Result<f32, String> {
        value[name]
            .as_f64()
            .map(|v| v as f32)
            .ok_or_else(|| format!("rotary scaling `{kind}` has no `{name}`"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear(number("factor")?)),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_context: number("original_max_position_embeddings")?,
        }),
        other => Err(format!(
            "rotary scaling `{other}` is not supported (wick supports linear and llama3)"
        )),
    }
}

/// The fields of `config.json` that any family may use.
#[derive(Deserialize)]
struct HfConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    #[serde(default = "default_context")]
    max_position_embeddings: usize,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    partial_rotary_factor: Option<f64>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    sliding_window: Option<usize>,
    sliding_window_pattern: Option<usize>,
    layer_types: Option<Vec<String>>,
    use_sliding_window: Option<bool>,
    rope_local_base_freq: Option<f64>,
    query_pre_attn_scalar: Option<f64>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_context() -> usize {
    4096
}
