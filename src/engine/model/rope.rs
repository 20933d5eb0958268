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
