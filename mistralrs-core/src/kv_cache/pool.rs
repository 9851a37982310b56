//! The memory of the KV cache: per cache layer, one key and one value
//! tensor of (blocks × BLOCK_SIZE slots, kv_heads, units) in the cache's
//! storage type (`KvDtype`: floats, or the bytes of Q8_0 blocks), allocated
//! once at load for the whole budget. On the CPU the zeroed buffers are only
//! backed by memory as blocks are first written, lowest ids first.

use candle_core::{DType, Device, Result, Tensor, WithDType};

use super::blocks::{BlockTable, BLOCK_SIZE};
use super::dtype::{dequantize_q8_0, quantize_q8_0, KvDtype};

pub struct KvPool {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    dtype: KvDtype,
    kv_heads: usize,
    head_dim: usize,
}

/// `n` zeroed values whose pages the kernel backs only when first written,
/// or an error where `Tensor::zeros` would abort the process: the address
/// space can be smaller than the memory the budget was sized from (an
/// `RLIMIT_AS`, a container's limit).
fn zeroed<T: WithDType>(n: usize) -> Result<Vec<T>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    // SAFETY: the layout has a non-zero size; all-zero bytes are a valid
    // value of every storage type (0.0, or a zero byte); the Vec takes the
    // buffer with the layout the global allocator gave it (length =
    // capacity = n), as `Vec` itself would.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<T>();
        if p.is_null() {
            return Err(candle_core::Error::Msg(format!("cannot allocate {} MB", layout.size() >> 20)));
        }
        Ok(Vec::from_raw_parts(p, n, n))
    }
}

/// A zeroed tensor of `n` values of `dtype` in `shape`; on the CPU, starting
/// on a page when `on_page` (see `page_aligned`).
fn zeroed_tensor(dtype: DType, n: usize, shape: (usize, usize, usize), device: &Device, on_page: bool) -> Result<Tensor> {
    match (device, dtype) {
        (Device::Cpu, DType::F32) => cpu_zeroed::<f32>(n, shape, on_page),
        (Device::Cpu, DType::F16) => cpu_zeroed::<half::f16>(n, shape, on_page),
        (Device::Cpu, DType::BF16) => cpu_zeroed::<half::bf16>(n, shape, on_page),
        (Device::Cpu, DType::U8) => cpu_zeroed::<u8>(n, shape, on_page),
        _ => Tensor::zeros(shape, dtype, device),
    }
}

fn cpu_zeroed<T: WithDType>(n: usize, shape: (usize, usize, usize), on_page: bool) -> Result<Tensor> {
    if on_page {
        page_aligned(zeroed::<T>(n + page_size() / std::mem::size_of::<T>())?, n, shape)
    } else {
        Tensor::from_vec(zeroed::<T>(n)?, shape, &Device::Cpu)
    }
}

/// `n` of the values of `v` (a page longer) as a tensor of `shape` that
/// starts on a page: the allocator's header puts a large buffer a few
/// bytes past one, and then every block straddled a page at each end, which
/// `release_pages` must keep (a quarter to a half of a thinned block's
/// memory, for Gemma 3's blocks). Only pools whose blocks give pages back
/// start on one: at the allocator's offset, SmolLM2 decoding after 2,048
/// tokens measured 97 -> 108 tok/s (its slots are 384 bytes), where Gemma 3
/// lost 3%.
fn page_aligned<T: WithDType>(v: Vec<T>, n: usize, shape: (usize, usize, usize)) -> Result<Tensor> {
    let size = std::mem::size_of::<T>();
    let misaligned = v.as_ptr() as usize % page_size();
    let skip = if misaligned % size == 0 { (page_size() - misaligned) % page_size() / size } else { 0 };
    Tensor::from_vec(v, skip + n + (page_size() / size - skip), &Device::Cpu)?.narrow(0, skip, n)?.reshape(shape)
}

fn page_size() -> usize {
    #[cfg(target_os = "linux")]
    // SAFETY: sysconf has no preconditions.
    return (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize;
    #[cfg(not(target_os = "linux"))]
    4096
}

impl KvPool {
    /// Bytes one block takes over all `layers`, keys and values.
    pub fn block_bytes(layers: usize, kv_heads: usize, head_dim: usize, dtype: KvDtype) -> usize {
        2 * layers * BLOCK_SIZE * kv_heads * dtype.head_bytes(head_dim)
    }

    /// `on_page`: each layer's buffers start on a page, for pools whose
    /// blocks give their pages back (`release_pages`).
    pub fn new(layers: usize, blocks: usize, kv_heads: usize, head_dim: usize, device: &Device, dtype: KvDtype, on_page: bool) -> Result<Self> {
        dtype.check(head_dim).map_err(candle_core::Error::Msg)?;
        if dtype == KvDtype::Q8_0 && !device.is_cpu() {
            candle_core::bail!("kv_cache_dtype=\"q8_0\" is stored and read by the CPU kernels only; on this device use \"f16\", \"bf16\" or \"f32\"");
        }
        let units = dtype.units(head_dim);
        let shape = (blocks * BLOCK_SIZE, kv_heads, units);
        let elems = blocks
            .checked_mul(BLOCK_SIZE * kv_heads * units)
            .ok_or_else(|| candle_core::Error::Msg(format!("a KV cache of {blocks} blocks overflows")))?;
        let alloc = || (0..layers).map(|_| zeroed_tensor(dtype.storage(), elems, shape, device, on_page)).collect::<Result<Vec<_>>>();
        Ok(Self { k: alloc()?, v: alloc()?, dtype, kv_heads, head_dim })
    }

    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Layer `layer`'s keys and values, (slots, kv_heads, units).
    pub fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.k[layer], &self.v[layer])
    }

    /// `x` ((t, kv_heads, head_dim), any float dtype) in the storage type.
    fn stored(&self, x: &Tensor) -> Result<Tensor> {
        if self.dtype != KvDtype::Q8_0 {
            return x.to_dtype(self.dtype.storage())?.contiguous();
        }
        let t = x.dims3()?.0;
        let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut bytes = vec![0u8; t * self.kv_heads * self.dtype.units(self.head_dim)];
        quantize_q8_0(&values, &mut bytes);
        Tensor::from_vec(bytes, (t, self.kv_heads, self.dtype.units(self.head_dim)), x.device())
    }

    /// Stores `k`, `v` ((t, kv_heads, head_dim)) as the tokens at positions
    /// `past..past + t` of `table`, whose blocks must already be allocated.
    pub fn write(&self, layer: usize, table: &BlockTable, past: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let t = k.dims3()?.0;
        let (k, v) = (self.stored(k)?, self.stored(v)?);
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
    /// each, gathered into new tensors (for attention as tensor ops), in
    /// the stored float type, or f32 for Q8_0.
    pub fn gather(&self, layer: usize, table: &BlockTable, n: usize) -> Result<(Tensor, Tensor)> {
        let slots: Vec<u32> = (0..n).map(|i| table.slot(i) as u32).collect();
        let ids = Tensor::from_vec(slots, n, self.k[layer].device())?;
        let take = |t: &Tensor| {
            let rows = t.index_select(&ids, 0)?;
            let rows = if self.dtype == KvDtype::Q8_0 {
                let bytes = rows.flatten_all()?.to_vec1::<u8>()?;
                let mut values = vec![0f32; n * self.kv_heads * self.head_dim];
                dequantize_q8_0(&bytes, &mut values);
                Tensor::from_vec(values, (n, self.kv_heads, self.head_dim), t.device())?
            } else {
                rows
            };
            rows.transpose(0, 1)?.contiguous()
        };
        Ok((take(&self.k[layer])?, take(&self.v[layer])?))
    }

    /// Gives the memory of block `block` in layers `layers` back to the OS
    /// (the pages wholly inside it; they read as zeros until written again).
    /// For keys and values no step will read: a sliding-window layer's
    /// blocks that fell out of its window. A no-op off the CPU or off Linux.
    pub fn release_pages(&self, block: u32, layers: &[usize]) -> Result<()> {
        #[cfg(target_os = "linux")]
        for &l in layers {
            for t in [&self.k[l], &self.v[l]] {
                let (storage, layout) = t.storage_and_layout();
                let candle_core::Storage::Cpu(c) = &*storage else { return Ok(()) };
                use candle_core::CpuStorage as C;
                let (base, elem) = match c {
                    C::F32(d) => (d.as_ptr() as usize, 4),
                    C::F16(d) => (d.as_ptr() as usize, 2),
                    C::BF16(d) => (d.as_ptr() as usize, 2),
                    C::U8(d) => (d.as_ptr() as usize, 1),
                    _ => return Ok(()),
                };
                let block_bytes = BLOCK_SIZE * self.kv_heads * self.dtype.units(self.head_dim) * elem;
                let start = base + layout.start_offset() * elem + block as usize * block_bytes;
                let page = page_size();
                let (from, to) = (start.next_multiple_of(page), (start + block_bytes) / page * page);
                if to > from {
                    // SAFETY: [from, to) lies inside this layer's buffer (one block
                    // of it, rounded inward to whole pages), which stays allocated;
                    // MADV_DONTNEED on private anonymous memory only makes those
                    // pages read as zeros, and no step reads them (the caller's contract).
                    unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED) };
                }
            }
        }
        let _ = (block, layers);
        Ok(())
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
