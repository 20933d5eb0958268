//! Every block's keys and values, per layer, on the model's device.

use candle_core::{DType, Device, Tensor};

use super::{BlockId, KvShape};
use crate::error::Result;

/// Per layer, keys and values `(kv_heads, blocks * block_size, head_dim)`: position `p` of a
/// sequence with block table `t` is row [`pool_row`]`(t, block_size, p)`, so each head's rows of a
/// block lie together and a position's row is contiguous.
pub(crate) struct KvStore {
    shape: KvShape,
    layers: Vec<(Tensor, Tensor)>,
}

/// The row of the pool that holds position `position` of the sequence whose blocks are `table`.
pub(crate) fn pool_row(table: &[BlockId], block_size: usize, position: usize) -> usize {
    table[position / block_size] as usize * block_size + position % block_size
}

impl KvStore {
    pub fn new(shape: KvShape, blocks: usize, device: &Device) -> Result<Self> {
        let dims = (shape.kv_heads, blocks * shape.block_size, shape.head_dim);
        let zeros = || -> Result<Tensor> {
            Ok(match (device, shape.dtype) {
                // candle writes f16 zeros one by one; allocated zeroed instead (as candle's f32
                // zeros are), the OS maps pages only as blocks are first written, so a pool sized
                // for the whole budget costs resident memory only as it fills.
                (Device::Cpu, DType::F16) => {
                    Tensor::from_vec(zeroed_f16(dims.0 * dims.1 * dims.2), dims, device)?
                }
                _ => Tensor::zeros(dims, shape.dtype, device)?,
            })
        };
        let layers = (0..shape.layers)
            .map(|_| Ok((zeros()?, zeros()?)))
            .collect::<Result<_>>()?;
        Ok(Self { shape, layers })
    }

    pub fn shape(&self) -> &KvShape {
        &self.shape
    }

    /// Keys and values of `layer`, the whole pool.
    pub fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[layer];
        (k, v)
    }

    /// Writes `k` and `v`, `(kv_heads, rows, head_dim)`, at positions `start..start + rows` of the
    /// sequence whose blocks are `table`, one copy per block they touch.
    pub fn write(
        &self,
        layer: usize,
        table: &[BlockId],
        start: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<()> {
        let bs = self.shape.block_size;
        let (keys, values) = &self.layers[layer];
        let (k, v) = (k.to_dtype(self.shape.dtype)?, v.to_dtype(self.shape.dtype)?);
        let rows = k.dim(1)?;
        let mut done = 0;
        while done < rows {
            let position = start + done;
            let run = (bs - position % bs).min(rows - done);
            let row = pool_row(table, bs, position);
            keys.slice_set(&k.narrow(1, done, run)?.contiguous()?, 1, row)?;
            values.slice_set(&v.narrow(1, done, run)?.contiguous()?, 1, row)?;
            done += run;
        }
        Ok(())
    }

    /// Keys and values of positions `first..end`, `(kv_heads, end - first, head_dim)` in
    /// `dtype`, copied out of the pool for attention through candle's matmuls (devices without a
    /// paged kernel).
    pub fn gather(
        &self,
        layer: usize,
        table: &[BlockId],
        first: usize,
        end: usize,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let (keys, values) = &self.layers[layer];
        let rows: Vec<u32> = (first..end)
            .map(|p| pool_row(table, self.shape.block_size, p) as u32)
            .collect();
        let rows = Tensor::new(rows.as_slice(), keys.device())?;
        Ok((
            keys.index_select(&rows, 1)?.to_dtype(dtype)?,
            values.index_select(&rows, 1)?.to_dtype(dtype)?,
        ))
    }
}

/// `len` zeros, allocated zeroed rather than written.
fn zeroed_f16(len: usize) -> Vec<half::f16> {
    let bits = vec![0u16; len];
    let mut bits = std::mem::ManuallyDrop::new(bits);
    let (ptr, len, capacity) = (bits.as_mut_ptr(), bits.len(), bits.capacity());
    // SAFETY: `half::f16` is `repr(transparent)` over `u16` (same size and alignment, every bit
    // pattern valid), and the allocation is handed over whole: `bits` is never dropped.
    unsafe { Vec::from_raw_parts(ptr.cast::<half::f16>(), len, capacity) }
}
