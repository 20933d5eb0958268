//! KV sizes, in one place: bytes per position and per block, blocks per budget.

use candle_core::DType;

/// The shape of a model's KV memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions per block (`--kv-block-size`).
    pub block_size: usize,
    /// What the blocks hold (`--kv-cache-dtype`).
    pub dtype: DType,
}

impl KvShape {
    /// Keys and values of one position, every layer.
    pub fn bytes_per_position(&self) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim * self.dtype.size_in_bytes()
    }

    pub fn bytes_per_block(&self) -> usize {
        self.block_size * self.bytes_per_position()
    }

    /// Blocks that hold `positions`.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }

    /// Blocks a budget of `bytes` holds.
    pub fn blocks_in(&self, bytes: usize) -> usize {
        bytes / self.bytes_per_block().max(1)
    }
}
