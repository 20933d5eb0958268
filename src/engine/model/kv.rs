//! One sequence's keys and values: allocated once, for every position the sequence may reach,
//! and written in place (no copy of what is already cached on each step).

use candle_core::{DType, Device, Tensor};

use super::config::Config;
use crate::error::{Error, Result};

pub(crate) struct KvCache {
    /// Per layer, keys and values `(kv_heads, capacity, head_dim)`.
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
    bytes: usize,
}

impl KvCache {
    /// The bytes of a cache with room for `capacity` positions.
    pub fn bytes_for(config: &Config, capacity: usize, dtype: DType) -> usize {
        capacity * config.kv_bytes_per_position(dtype.size_in_bytes())
    }

    /// Room for `capacity` positions.
    pub fn new(config: &Config, capacity: usize, dtype: DType, device: &Device) -> Result<Self> {
        let shape = (config.kv_heads, capacity, config.head_dim);
        let layers = (0..config.layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, dtype, device)?,
                    Tensor::zeros(shape, dtype, device)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            len: 0,
            capacity,
            bytes: Self::bytes_for(config, capacity, dtype),
        })
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Memory the cache holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Writes `k` and `v`, `(kv_heads, rows, head_dim)`, of `layer` after the cached positions and
    /// returns every position's keys and values so far. [`KvCache::advance`] moves past them once
    /// every layer has been written.
    pub fn write(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let rows = k.dim(1)?;
        let end = self.len + rows;
        if end > self.capacity {
            return Err(Error::InvalidRequest(format!(
                "the sequence would reach {end} positions, past the {} its cache was sized for",
                self.capacity
            )));
        }
        let (keys, values) = &self.layers[layer];
        keys.slice_set(&k.contiguous()?, 1, self.len)?;
        values.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok((keys.narrow(1, 0, end)?, values.narrow(1, 0, end)?))
    }

    pub fn advance(&mut self, rows: usize) {
        self.len += rows;
    }
}
