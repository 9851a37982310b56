//! The memory of the KV cache: per cache layer, one key and one value
//! tensor of (blocks × BLOCK_SIZE slots, kv_heads, head_dim) in the compute
//! dtype, allocated once at load for the whole budget. On the CPU the zeroed buffers are only
//! backed by memory as blocks are first written, lowest ids first.

use candle_core::{DType, Device, Result, Tensor};

use super::blocks::{BlockTable, BLOCK_SIZE};

pub struct KvPool {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
}

/// `n` zeroed f32s whose pages the kernel backs only when first written,
/// or an error where `Tensor::zeros` would abort the process: the address
/// space can be smaller than the memory the budget was sized from (an
/// `RLIMIT_AS`, a container's limit).
fn zeroed(n: usize) -> Result<Vec<f32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(n).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    // SAFETY: the layout has a non-zero size; all-zero bytes are a valid
    // f32 (0.0); the Vec takes the buffer with the layout the global
    // allocator gave it (length = capacity = n), as `Vec` itself would.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<f32>();
        if p.is_null() {
            return Err(candle_core::Error::Msg(format!("cannot allocate {} MB", layout.size() >> 20)));
        }
        Ok(Vec::from_raw_parts(p, n, n))
    }
}

impl KvPool {
    /// Bytes one block takes over all `layers`, keys and values.
    pub fn block_bytes(layers: usize, kv_heads: usize, head_dim: usize, dtype: DType) -> usize {
        2 * layers * BLOCK_SIZE * kv_heads * head_dim * dtype.size_in_bytes()
    }

    pub fn new(layers: usize, blocks: usize, kv_heads: usize, head_dim: usize, device: &Device, dtype: DType) -> Result<Self> {
        let shape = (blocks * BLOCK_SIZE, kv_heads, head_dim);
        let elems = blocks
            .checked_mul(BLOCK_SIZE * kv_heads * head_dim)
            .ok_or_else(|| candle_core::Error::Msg(format!("a KV cache of {blocks} blocks overflows")))?;
        let alloc = || {
            (0..layers)
                .map(|_| match (device, dtype) {
                    (Device::Cpu, DType::F32) => Tensor::from_vec(zeroed(elems)?, shape, device),
                    _ => Tensor::zeros(shape, dtype, device),
                })
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self { k: alloc()?, v: alloc()? })
    }

    /// Layer `layer`'s keys and values, (slots, kv_heads, head_dim).
    pub fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.k[layer], &self.v[layer])
    }

    /// Stores `k`, `v` ((t, kv_heads, head_dim)) as the tokens at positions
    /// `past..past + t` of `table`, whose blocks must already be allocated.
    pub fn write(&self, layer: usize, table: &BlockTable, past: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let t = k.dims3()?.0;
        let dtype = self.k[layer].dtype();
        let (k, v) = (k.to_dtype(dtype)?.contiguous()?, v.to_dtype(dtype)?.contiguous()?);
        // One copy per run of the new tokens that falls in one block.
        let mut i = 0;
        while i < t {
            let pos = past + i;
            let run = (BLOCK_SIZE - pos % BLOCK_SIZE).min(t - i);
            let slot = table.slot(pos);
            self.k[layer].slice_set(&k.narrow(0, i, run)?, 0, slot)?;
            self.v[layer].slice_set(&v.narrow(0, i, run)?, 0, slot)?;
            i += run;
        }
        Ok(())
    }

    /// Layer `layer`'s first `n` tokens of `table`, (kv_heads, n, head_dim)
    /// each, gathered into new tensors (for attention as tensor ops).
    pub fn gather(&self, layer: usize, table: &BlockTable, n: usize) -> Result<(Tensor, Tensor)> {
        let slots: Vec<u32> = (0..n).map(|i| table.slot(i) as u32).collect();
        let ids = Tensor::from_vec(slots, n, self.k[layer].device())?;
        let take = |t: &Tensor| t.index_select(&ids, 0)?.transpose(0, 1)?.contiguous();
        Ok((take(&self.k[layer])?, take(&self.v[layer])?))
    }

    /// Copies the first `tokens` slots of block `from` into block `to`, in
    /// every layer (a shared block about to be written: copy-on-write).
    pub fn copy_block(&self, from: u32, to: u32, tokens: usize) -> Result<()> {
        let (from, to) = (from as usize * BLOCK_SIZE, to as usize * BLOCK_SIZE);
        for t in self.k.iter().chain(&self.v) {
            t.slice_set(&t.narrow(0, from, tokens)?.contiguous()?, 0, to)?;
        }
        Ok(())
    }
}
