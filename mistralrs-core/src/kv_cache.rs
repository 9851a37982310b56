//! Per-sequence key/value storage. Architectures only see the `KvStore`
//! trait: they hand over a step's new keys and values and get back the whole
//! history, so a paged implementation can replace this one without touching
//! any model.

use candle_core::{Result, Tensor};

pub trait KvStore {
    /// Appends `k`, `v` ((kv_heads, new_tokens, head_dim)) to layer `layer`
    /// and returns the full (kv_heads, all_tokens, head_dim) history.
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)>;
    /// Tokens already stored.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// What a model keeps per sequence between steps besides keys and values.
    fn side_state(&mut self) -> &mut SideState;
}

/// Per-sequence model state beyond the KV cache: X-LoRA counts the scaling
/// passes a sequence has had and, once its scalings freeze, keeps them.
#[derive(Debug, Clone, Default)]
pub struct SideState {
    pub scaling_passes: usize,
    /// (adapted layers, adapters) scalings applied to every later token.
    pub frozen_scalings: Option<Tensor>,
}

/// Layers `offset..` of another store, seen as a store of their own: X-LoRA
/// keeps its scaling pass's cache in the same sequence cache as its real
/// pass's, after it.
pub struct LayerOffset<'a> {
    inner: &'a mut dyn KvStore,
    offset: usize,
}

impl<'a> LayerOffset<'a> {
    pub fn new(inner: &'a mut dyn KvStore, offset: usize) -> Self {
        Self { inner, offset }
    }
}

impl KvStore for LayerOffset<'_> {
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        self.inner.append(layer + self.offset, k, v)
    }

    /// The underlying store's length (its first layer's).
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn side_state(&mut self) -> &mut SideState {
        self.inner.side_state()
    }
}

/// Contiguous per-layer buffers that grow by doubling, so appending one
/// token is a copy of that token only.
#[derive(Debug, Clone, Default)]
pub struct SeqKvCache {
    layers: Vec<LayerBuf>,
    side: SideState,
}

#[derive(Debug, Clone, Default)]
struct LayerBuf {
    /// (kv_heads, capacity, head_dim), or None before the first append.
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl SeqKvCache {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![LayerBuf::default(); num_layers], side: SideState::default() }
    }

    /// An independent copy (for several choices sharing one prompt).
    pub fn deep_clone(&self) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(LayerBuf {
                    k: l.k.as_ref().map(|t| t.copy()).transpose()?,
                    v: l.v.as_ref().map(|t| t.copy()).transpose()?,
                    len: l.len,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, side: self.side.clone() })
    }
}

fn grown(old: Option<&Tensor>, used: usize, cap: usize, like: &Tensor) -> Result<Tensor> {
    let (heads, _, dim) = like.dims3()?;
    let buf = Tensor::zeros((heads, cap, dim), like.dtype(), &like.device().clone())?;
    if let Some(old) = old {
        if used > 0 {
            buf.slice_set(&old.narrow(1, 0, used)?.contiguous()?, 1, 0)?;
        }
    }
    Ok(buf)
}

impl KvStore for SeqKvCache {
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let l = &mut self.layers[layer];
        let new = k.dims3()?.1;
        let need = l.len + new;
        let cap = l.k.as_ref().map_or(0, |t| t.dims()[1]);
        if need > cap {
            let cap = need.max(2 * cap).max(32).next_multiple_of(32);
            l.k = Some(grown(l.k.as_ref(), l.len, cap, k)?);
            l.v = Some(grown(l.v.as_ref(), l.len, cap, v)?);
        }
        let (kb, vb) = (l.k.as_ref().expect("allocated above"), l.v.as_ref().expect("allocated above"));
        kb.slice_set(&k.contiguous()?, 1, l.len)?;
        vb.slice_set(&v.contiguous()?, 1, l.len)?;
        l.len = need;
        Ok((kb.narrow(1, 0, need)?, vb.narrow(1, 0, need)?))
    }

    fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    fn side_state(&mut self) -> &mut SideState {
        &mut self.side
    }
}

