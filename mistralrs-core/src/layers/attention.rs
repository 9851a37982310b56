//! Rotary self-attention over a batch of sequences, each against its own
//! history in the paged KV cache, with grouped query heads served without
//! copying the KV heads: on the CPU by our attention kernel reading the
//! cache's blocks in place (one call for the whole step), elsewhere as
//! tensor ops over each sequence's gathered history.

use candle_core::{DType, Result, Storage, Tensor};

use super::linear::Linear;
use super::mask::causal_mask;
use super::norm::RmsNorm;
use super::rotary::Rotary;
use super::step::{cpu_kernels, AttnView, StepContext};
use crate::kernels::attention::{attend, AttnShape, KvData, KvView, SeqAttn};
use crate::kv_cache::StepKv;

/// Q, K and V projections: three matrices, or one (phi3, some phi2 files)
/// whose output rows are Q, then K, then V.
pub enum QkvProj {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

pub struct SelfAttention {
    qkv: QkvProj,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Leading dims of each head that are rotated (phi2 rotates part of each head).
    rotary_dim: usize,
    scale: f64,
    /// Scores become `cap · tanh(score / cap)` (Gemma 2).
    softcap: Option<f64>,
    /// RMSNorm of each query and key head before rotation (Gemma 3).
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    /// Attends through the step's local view (Gemma's sliding-window layers).
    local: bool,
}

impl SelfAttention {
    pub fn new(qkv: QkvProj, o_proj: Linear, heads: usize, kv_heads: usize, head_dim: usize, rotary_dim: usize) -> Self {
        Self {
            qkv,
            o_proj,
            heads,
            kv_heads,
            head_dim,
            rotary_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
            softcap: None,
            qk_norm: None,
            local: false,
        }
    }

    /// Scores scaled by `scale` rather than 1/sqrt(head_dim).
    pub fn with_scale(self, scale: f64) -> Self {
        Self { scale, ..self }
    }

    pub fn with_softcap(self, softcap: Option<f64>) -> Self {
        Self { softcap, ..self }
    }

    /// Per-head norms of the queries and keys (weights of head_dim).
    pub fn with_qk_norm(self, q: RmsNorm, k: RmsNorm) -> Self {
        Self { qk_norm: Some((q, k)), ..self }
    }

    /// A layer of the local kind (the step's local view: its window and rotary rows).
    pub fn local(self, local: bool) -> Self {
        Self { local, ..self }
    }

    fn rotate(&self, x: &Tensor, view: &AttnView) -> Result<Tensor> {
        if self.rotary_dim == self.head_dim {
            return Rotary::apply(x, &view.cos, &view.sin);
        }
        let rot = Rotary::apply(&x.narrow(2, 0, self.rotary_dim)?, &view.cos, &view.sin)?;
        let pass = x.narrow(2, self.rotary_dim, self.head_dim - self.rotary_dim)?;
        Tensor::cat(&[rot, pass], 2)
    }

    /// `x`: (tokens, hidden) -> (tokens, hidden); `kv` holds the blocks
    /// of every sequence of the step, those for its new tokens included.
    pub fn forward(&self, x: &Tensor, ctx: &StepContext, kv: &StepKv, layer: usize) -> Result<Tensor> {
        let t = x.dims2()?.0;
        let (q_dim, kv_dim) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let (q, k, v) = match &self.qkv {
            QkvProj::Separate { q, k, v } => (q.forward_rows(x, ctx)?, k.forward_rows(x, ctx)?, v.forward_rows(x, ctx)?),
            QkvProj::Fused(qkv) => {
                let y = qkv.forward_rows(x, ctx)?;
                (y.narrow(1, 0, q_dim)?, y.narrow(1, q_dim, kv_dim)?, y.narrow(1, q_dim + kv_dim, kv_dim)?)
            }
        };
        let view = ctx.view(self.local);
        let (q, k) = (q.reshape((t, self.heads, self.head_dim))?, k.reshape((t, self.kv_heads, self.head_dim))?);
        let (q, k) = match &self.qk_norm {
            // The norm runs over the last dim: each head of each token.
            Some((qn, kn)) => (qn.forward(&q)?, kn.forward(&k)?),
            None => (q, k),
        };
        let q = self.rotate(&q, view)?;
        let k = self.rotate(&k, view)?;
        let v = v.reshape((t, self.kv_heads, self.head_dim))?;
        for (i, slot) in ctx.batch.slots.iter().enumerate() {
            kv.write(layer, i, slot.past, &k.narrow(0, slot.start, slot.len)?, &v.narrow(0, slot.start, slot.len)?)?;
        }

        let y = if cpu_kernels(q.device(), q.dtype()) {
            self.attend_cpu(&q, ctx, view, kv, layer)?
        } else {
            let mut outs = Vec::with_capacity(ctx.batch.slots.len());
            for (i, slot) in ctx.batch.slots.iter().enumerate() {
                let qs = q.narrow(0, slot.start, slot.len)?.transpose(0, 1)?; // (heads, len, dim)
                let (k_all, v_all) = kv.gather(layer, i, slot.past + slot.len)?;
                let mask = match view.masks.get(i) {
                    Some(m) => m.clone(),
                    None => causal_mask(slot.len, slot.past, view.window, q.device())?,
                };
                let (k_all, v_all) = (k_all.to_dtype(q.dtype())?, v_all.to_dtype(q.dtype())?);
                outs.push(grouped_attention(&qs, &k_all, &v_all, mask.as_ref(), self.scale, self.softcap)?);
            }
            if outs.len() == 1 { outs.pop().expect("one output") } else { Tensor::cat(&outs, 0)? }
        };
        self.o_proj.forward_rows(&y, ctx)
    }

    /// `q`: (tokens, heads, head_dim) f32 on the CPU -> (tokens, heads *
    /// head_dim): every sequence's rows from one call of the attention
    /// kernel, which reads the pool's blocks in place.
    fn attend_cpu(&self, q: &Tensor, ctx: &StepContext, view: &AttnView, kv: &StepKv, layer: usize) -> Result<Tensor> {
        let width = self.heads * self.head_dim;
        let t = q.dims3()?.0;
        let shape = AttnShape {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: self.scale as f32,
            softcap: self.softcap.map(|c| c as f32),
            window: view.window,
        };
        let q = q.contiguous()?;
        let (q_store, q_layout) = q.storage_and_layout();
        let q_all = &cpu_f32(&q_store)?[q_layout.start_offset()..][..t * width];
        let (k_pool, v_pool) = kv.layer(layer);
        let (k_store, k_layout) = k_pool.storage_and_layout();
        let (v_store, v_layout) = v_pool.storage_and_layout();
        let k_data = kv_data(&k_store, k_layout.start_offset())?;
        let v_data = kv_data(&v_store, v_layout.start_offset())?;
        let seqs: Vec<SeqAttn> = ctx
            .batch
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| SeqAttn {
                start: s.start,
                len: s.len,
                past: s.past,
                k: KvView { data: k_data, blocks: kv.blocks(i) },
                v: KvView { data: v_data, blocks: kv.blocks(i) },
            })
            .collect();
        let mut out = vec![0f32; t * width];
        attend(&shape, q_all, &seqs, &mut out);
        drop((k_store, v_store, q_store));
        Tensor::from_vec(out, (t, width), q.device())
    }
}

fn cpu_f32(s: &Storage) -> Result<&[f32]> {
    match s {
        Storage::Cpu(c) => c.as_slice::<f32>(),
        _ => candle_core::bail!("attention kernel: tensor not on the CPU"),
    }
}

/// A pool layer's storage, from `offset`, as the kernel reads it (its
/// dtype says which of the cache's storage types it is).
fn kv_data(s: &Storage, offset: usize) -> Result<KvData<'_>> {
    let Storage::Cpu(c) = s else { candle_core::bail!("attention kernel: KV cache not on the CPU") };
    use candle_core::CpuStorage as C;
    Ok(match c {
        C::F32(d) => KvData::F32(&d[offset..]),
        C::F16(d) => KvData::F16(&d[offset..]),
        C::BF16(d) => KvData::Bf16(&d[offset..]),
        C::U8(d) => KvData::Q8_0(&d[offset..]),
        _ => candle_core::bail!("attention kernel: no kernel reads a KV cache of this storage type"),
    })
}

/// `q`: (heads, q_len, head_dim); `k`, `v`: (kv_heads, kv_len, head_dim);
/// `mask`: additive (q_len, kv_len) or None when every key is visible;
/// `softcap`: scores become `cap · tanh(score / cap)` before the mask.
/// Returns (q_len, heads * head_dim).
pub fn grouped_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64, softcap: Option<f64>) -> Result<Tensor> {
    let (heads, q_len, head_dim) = q.dims3()?;
    let (kv_heads, kv_len, _) = k.dims3()?;
    let group = heads / kv_heads;
    // Query head h uses KV head h / group (transformers' repeat_kv order), so
    // (heads, q_len) regroups as (kv_heads, group * q_len) rows against one KV head.
    let q = q.contiguous()?.reshape((kv_heads, group * q_len, head_dim))?;
    // K and V are views into the cache's buffers (a row stride of the buffer's
    // capacity); the matmul reads them in place instead of copying the history.
    // Scores, mask and softmax in f32 whatever the compute dtype (as
    // transformers' eager attention takes its softmax in f32).
    let dtype = q.dtype();
    let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?;
    let scores = match softcap {
        Some(c) => ((scores / c)?.tanh()? * c)?,
        None => scores,
    };
    let scores = match mask {
        Some(m) => scores
            .reshape((kv_heads, group, q_len, kv_len))?
            .broadcast_add(m)?
            .reshape((kv_heads, group * q_len, kv_len))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    let out = probs.matmul(v)?; // (kv_heads, group * q_len, head_dim)
    out.reshape((heads, q_len, head_dim))?.transpose(0, 1)?.reshape((q_len, heads * head_dim))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn grouped_heads_match_repeated_kv() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (4, 3, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
        let mask = causal_mask(3, 0, None, &dev).unwrap();
        let got = grouped_attention(&q, &k, &v, mask.as_ref(), 0.5, None).unwrap();
        // Reference: each query head h against KV head h / 2, one at a time.
        let mut heads = Vec::new();
        for h in 0..4 {
            let qh = q.narrow(0, h, 1).unwrap();
            let kh = k.narrow(0, h / 2, 1).unwrap();
            let vh = v.narrow(0, h / 2, 1).unwrap();
            heads.push(grouped_attention(&qh, &kh, &vh, mask.as_ref(), 0.5, None).unwrap());
        }
        let want = Tensor::cat(&heads, 1).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
    }

    /// The CPU kernel and the tensor-op path (which other devices run) agree,
    /// both reading keys and values written through the pool into scattered blocks.
    #[test]
    fn kernel_matches_tensor_ops() {
        use crate::kv_cache::{BlockTable, KvDtype, KvPool, BLOCK_SIZE};
        let dev = Device::Cpu;
        for (heads, kv_heads, dim, t, past, window, softcap) in [
            (9, 3, 64, 30, 0, None, None),
            (14, 2, 64, 40, 3, None, Some(2.0)),
            (4, 2, 64, 1, 50, Some(16), None),
            (8, 8, 64, 64, 0, Some(8), Some(5.0)),
        ] {
            let q = (Tensor::randn(0f32, 1.0, (heads, t, dim), &dev).unwrap() * 4.0).unwrap();
            let k = (Tensor::randn(0f32, 1.0, (kv_heads, past + t, dim), &dev).unwrap() * 4.0).unwrap();
            let v = Tensor::randn(0f32, 1.0, (kv_heads, past + t, dim), &dev).unwrap();
            let scale = 1.0 / (dim as f64).sqrt();
            let mask = causal_mask(t, past, window, &dev).unwrap();
            let want = grouped_attention(&q, &k, &v, mask.as_ref(), scale, softcap).unwrap();

            let n = (past + t).div_ceil(BLOCK_SIZE);
            let shape = AttnShape { heads, kv_heads, head_dim: dim, scale: scale as f32, softcap: softcap.map(|c| c as f32), window };
            let qv = q.transpose(0, 1).unwrap().contiguous().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Every storage type: the kernel reading the pool in place and the
            // tensor ops over what `gather` widens agree on the stored values;
            // against the f32 history, a narrower type costs its own rounding only.
            for (dtype, bound) in [(KvDtype::F32, 1e-4f32), (KvDtype::F16, 0.05), (KvDtype::BF16, 0.5), (KvDtype::Q8_0, 0.5)] {
                let pool = KvPool::new(1, 2 * n + 1, kv_heads, dim, &dev, dtype, true).unwrap();
                let table = BlockTable { blocks: (0..n as u32).map(|b| 2 * n as u32 - 2 * b).collect() };
                let (kt, vt) = (k.transpose(0, 1).unwrap(), v.transpose(0, 1).unwrap());
                // The history in two writes, as a cached past and a step's new tokens.
                for (from, len) in [(0, past), (past, t)] {
                    if len > 0 {
                        pool.write(0, &table, from, &kt.narrow(0, from, len).unwrap(), &vt.narrow(0, from, len).unwrap()).unwrap();
                    }
                }
                let (kg, vg) = pool.gather(0, &table, past + t).unwrap();
                let (kg, vg) = (kg.to_dtype(DType::F32).unwrap(), vg.to_dtype(DType::F32).unwrap());
                let gathered = grouped_attention(&q, &kg, &vg, mask.as_ref(), scale, softcap).unwrap();

                let (kp, vp) = pool.layer(0);
                let (ks, kl) = kp.storage_and_layout();
                let (vs, vl) = vp.storage_and_layout();
                let mut out = vec![0f32; t * heads * dim];
                let view = |d| KvView { data: d, blocks: &table.blocks };
                let seq = SeqAttn { start: 0, len: t, past, k: view(kv_data(&ks, kl.start_offset()).unwrap()), v: view(kv_data(&vs, vl.start_offset()).unwrap()) };
                attend(&shape, &qv, &[seq], &mut out);
                drop((ks, vs));
                let got = Tensor::from_vec(out, (t, heads * dim), &dev).unwrap();
                let max_diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let same = max_diff(&got, &gathered);
                assert!(same < 1e-4, "{dtype:?}: kernel vs gathered, {heads}/{kv_heads} t {t} past {past}: {same}");
                let off = max_diff(&got, &want);
                assert!(off < bound, "{dtype:?}: vs the f32 history, {heads}/{kv_heads} t {t} past {past}: {off}");
            }
        }
    }
}
