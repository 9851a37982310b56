//! Unmerged low-rank adapters on a linear layer, applied per token row so
//! that sequences with different adapter sets (or X-LoRA's per-token
//! scalings) share one forward step.
//!
//! The adapters of one layer are stacked: every adapter's `A` (r_a, in) as
//! rows of one (Σr, in) matrix and every `B` (out, r_a), already multiplied
//! by its `lora_alpha / r` scale, as columns of one (out, Σr) matrix. A step
//! gives each token row a weight per adapter (0 or 1 for LoRA sets, X-LoRA's
//! scalings otherwise); spreading those weights over each adapter's rank
//! columns turns any mix of adapters across rows into two matrix products:
//!
//!   y += ((x · Aᵀ) ⊙ W_rows) · Bᵀ
//!
//! which is how multi-LoRA serving (Punica, vLLM) batches adapters too.

use candle_core::{Result, Tensor};

/// Per token row of a step, a weight for every loaded adapter.
#[derive(Debug, Clone)]
pub struct AdapterRows {
    /// (tokens, adapters), or (adapted layers, tokens, adapters) when each
    /// adapted layer has its own weights (layerwise X-LoRA), so that one
    /// layer's weights are a contiguous block.
    weights: Tensor,
    layerwise: bool,
    /// Whether any row gives adapter `a` a weight at all: layers whose
    /// adapters are all idle this step skip the two products.
    active: Vec<bool>,
}

impl AdapterRows {
    /// `weights`: (tokens, adapters); `active[a]`: some row weighs adapter a.
    pub fn shared(weights: Tensor, active: Vec<bool>) -> Self {
        Self { weights, layerwise: false, active }
    }

    /// `weights`: (tokens, adapted layers, adapters).
    pub fn layerwise(weights: &Tensor, active: Vec<bool>) -> Result<Self> {
        Ok(Self { weights: weights.transpose(0, 1)?.contiguous()?, layerwise: true, active })
    }

    fn for_layer(&self, layer: usize) -> Result<Tensor> {
        if self.layerwise {
            self.weights.get(layer)
        } else {
            Ok(self.weights.clone())
        }
    }
}

/// The adapters attached to one linear layer.
#[derive(Debug)]
pub struct LoraStack {
    /// (in, Σr): every adapter's Aᵀ side by side.
    a_t: Tensor,
    /// (Σr, out): every adapter's scaled Bᵀ stacked.
    b_t: Tensor,
    /// (Σr,) u32: the adapter each rank column belongs to.
    column_adapter: Tensor,
    /// Global indices of the adapters present here.
    adapters: Vec<usize>,
    /// This layer's index among the adapted layers (X-LoRA's layer number).
    layer: usize,
}

/// One adapter's matrices for one layer, as PEFT stores them.
pub struct LoraPair {
    /// Index of the adapter among all loaded adapters.
    pub adapter: usize,
    /// (r, in)
    pub a: Tensor,
    /// (out, r)
    pub b: Tensor,
    /// lora_alpha / r (or / sqrt(r) with rsLoRA).
    pub scale: f64,
}

impl LoraStack {
    pub fn new(pairs: &[LoraPair], layer: usize) -> Result<Self> {
        let a = Tensor::cat(&pairs.iter().map(|p| p.a.clone()).collect::<Vec<_>>(), 0)?;
        let b = Tensor::cat(&pairs.iter().map(|p| &p.b * p.scale).collect::<Result<Vec<_>>>()?, 1)?;
        let mut cols = Vec::with_capacity(a.dims2()?.0);
        for p in pairs {
            cols.extend(std::iter::repeat_n(p.adapter as u32, p.a.dims2()?.0));
        }
        let n = cols.len();
        Ok(Self {
            a_t: a.t()?.contiguous()?,
            b_t: b.t()?.contiguous()?,
            column_adapter: Tensor::from_vec(cols, n, a.device())?,
            adapters: pairs.iter().map(|p| p.adapter).collect(),
            layer,
        })
    }

    /// `y` (tokens, out) plus the adapters' share for the rows of `x` (tokens, in).
    pub fn add_to(&self, y: Tensor, x: &Tensor, rows: &AdapterRows) -> Result<Tensor> {
        if !self.adapters.iter().any(|&a| rows.active.get(a).copied().unwrap_or(false)) {
            return Ok(y);
        }
        let w = rows.for_layer(self.layer)?.index_select(&self.column_adapter, 1)?; // (tokens, Σr)
        let xa = x.matmul(&self.a_t)?; // (tokens, Σr)
        y + (xa * w)?.matmul(&self.b_t)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// Each row gets exactly the adapters its weights name, as if each row
    /// ran alone with `B·A` merged for those adapters.
    #[test]
    fn rows_with_different_adapter_sets_match_merged_weights() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 6), &dev).unwrap();
        let pairs = [
            LoraPair { adapter: 0, a: Tensor::randn(0f32, 1.0, (2, 6), &dev).unwrap(), b: Tensor::randn(0f32, 1.0, (5, 2), &dev).unwrap(), scale: 0.5 },
            LoraPair { adapter: 2, a: Tensor::randn(0f32, 1.0, (4, 6), &dev).unwrap(), b: Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap(), scale: 2.0 },
        ];
        let stack = LoraStack::new(&pairs, 0).unwrap();
        // Row 0: adapter 0; row 1: adapters 0 and 2; row 2: adapter 2 at 0.25 (an X-LoRA-style weight).
        let w = Tensor::new(&[[1f32, 0., 0.], [1., 0., 1.], [0., 0., 0.25]], &dev).unwrap();
        let rows = AdapterRows::shared(w, vec![true, false, true]);
        let got = stack.add_to(Tensor::zeros((3, 5), candle_core::DType::F32, &dev).unwrap(), &x, &rows).unwrap();
        let delta = |p: &LoraPair| (p.b.matmul(&p.a).unwrap() * p.scale).unwrap(); // (out, in)
        let (d0, d2) = (delta(&pairs[0]), delta(&pairs[1]));
        let row = |i: usize, d: &Tensor| x.narrow(0, i, 1).unwrap().matmul(&d.t().unwrap()).unwrap();
        let want = Tensor::cat(
            &[row(0, &d0), row(1, &(&d0 + &d2).unwrap()), (row(2, &d2) * 0.25).unwrap()],
            0,
        )
        .unwrap();
        assert!(max_diff(&got, &want) < 1e-4, "{}", max_diff(&got, &want));
    }

    #[test]
    fn idle_adapters_cost_nothing() {
        let dev = Device::Cpu;
        let pairs = [LoraPair { adapter: 1, a: Tensor::ones((2, 4), candle_core::DType::F32, &dev).unwrap(), b: Tensor::ones((3, 2), candle_core::DType::F32, &dev).unwrap(), scale: 1.0 }];
        let stack = LoraStack::new(&pairs, 0).unwrap();
        let rows = AdapterRows::shared(Tensor::ones((1, 2), candle_core::DType::F32, &dev).unwrap(), vec![true, false]);
        let y = Tensor::zeros((1, 3), candle_core::DType::F32, &dev).unwrap();
        let x = Tensor::ones((1, 4), candle_core::DType::F32, &dev).unwrap();
        assert_eq!(max_diff(&stack.add_to(y.clone(), &x, &rows).unwrap(), &y), 0.0);
    }
}
