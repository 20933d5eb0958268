//! Rotary position embeddings: the frequencies (with their scaling) and the rotation itself.

use candle_core::{DType, Device, Tensor};

use super::config::{Config, RopeScaling};
use crate::error::Result;

/// The inverse frequencies of one kind of layer, `(1, head_dim / 2)`.
#[derive(Clone)]
pub(crate) struct Rope {
    inverse: Tensor,
    interleaved: bool,
}

impl Rope {
    /// The rotation of the global layers (`local: false`) or of the sliding-window layers, which
    /// may have a base of their own and are never scaled.
    pub fn new(config: &Config, local: bool, device: &Device) -> Result<Self> {
        let half = config.head_dim / 2;
        let theta = match (local, config.rope_local_theta) {
            (true, Some(theta)) => theta,
            _ => config.rope_theta,
        };
        let mut inverse: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf(2.0 * i as f32 / config.head_dim as f32))
            .collect();
        let scaling = if local {
            &RopeScaling::None
        } else {
            &config.rope_scaling
        };
        scale(&mut inverse, scaling)?;
        Ok(Self {
            inverse: Tensor::from_vec(inverse, (1, half), device)?,
            interleaved: config.rope_interleaved,
        })
    }

    /// cos and sin of the angles at `positions` (one per row), each `(rows, head_dim / 2)`.
    pub fn tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let angles = positions
            .to_dtype(DType::F32)?
            .unsqueeze(1)?
            .broadcast_mul(&self.inverse)?;
        Ok((angles.cos()?, angles.sin()?))
    }

    /// Rotates `x`, `(1, heads, rows, head_dim)`, by the tables of its rows.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        Ok(if self.interleaved {
            candle_nn::rotary_emb::rope_i(x, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope(x, &cos, &sin)?
        })
    }
}

fn scale(inverse: &mut [f32], scaling: &RopeScaling) -> Result<()> {
    match scaling {
        RopeScaling::None => {}
        RopeScaling::Linear(factor) => inverse.iter_mut().for_each(|f| *f /= factor),
        // As transformers' `_compute_llama3_parameters` (and candle's llama) compute it.
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } => {
            let low_wavelen = original_context / low_freq_factor;
            let high_wavelen = original_context / high_freq_factor;
            for f in inverse.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                *f = if wavelen < high_wavelen {
                    *f
                } else if wavelen > low_wavelen {
                    *f / factor
                } else {
                    let smooth = (original_context / wavelen - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * *f / factor + smooth * *f
                };
            }
        }
        RopeScaling::Divisors(divisors) => {
            if divisors.len() != inverse.len() {
                return Err(crate::error::Error::InvalidRequest(format!(
                    "rope_freqs has {} values for {} frequencies",
                    divisors.len(),
                    inverse.len()
                )));
            }
            inverse.iter_mut().zip(divisors).for_each(|(f, d)| *f /= d);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::Family;

    fn config(scaling: RopeScaling) -> Config {
        let json = serde_json::json!({
            "model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
            "rope_theta": 500000.0,
        });
        let mut config = Config::from_hf(&json).unwrap();
        assert_eq!(config.family, Family::Llama);
        config.rope_scaling = scaling;
        config
    }

    /// llama.cpp's converter stores Llama 3's scaling as one divisor per frequency
    /// (`rope_freqs.weight`): both forms must rotate alike.
    #[test]
    fn gguf_divisors_rotate_as_the_llama3_formula() {
        let llama3 = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192.0,
        };
        let half = 32;
        let base: Vec<f32> = (0..half)
            .map(|i| 1.0 / 500000f32.powf(2.0 * i as f32 / 64.0))
            .collect();
        let mut scaled = base.clone();
        scale(&mut scaled, &llama3).unwrap();
        let divisors = base.iter().zip(&scaled).map(|(b, s)| b / s).collect();
        assert!(
            scaled.iter().zip(&base).any(|(s, b)| s < b),
            "some frequencies scale"
        );

        let positions = Tensor::new(&[0u32, 100, 9000, 30000], &Device::Cpu).unwrap();
        let tables = |scaling| {
            let rope = Rope::new(&config(scaling), false, &Device::Cpu).unwrap();
            let (cos, _) = rope.tables(&positions).unwrap();
            cos.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let (a, b) = (tables(llama3), tables(RopeScaling::Divisors(divisors)));
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-3, "{diff}");
        assert_ne!(a, tables(RopeScaling::None));
    }
}
