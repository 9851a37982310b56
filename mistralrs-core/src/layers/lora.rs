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

use candle_core::{DType, Result, Tensor};

/// Up to this many token rows take the host-memory path (see `add_to_few_rows`).
const FEW_ROWS: usize = 8;

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
    /// The same matrices in host memory, for the few-row path.
    a_t_host: Vec<f32>,
    b_t_host: Vec<f32>,
    /// Per adapter present: (global index, first rank column, rank).
    ranges: Vec<(usize, usize, usize)>,
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
        let (a_t, b_t) = (a.t()?.contiguous()?.to_dtype(DType::F32)?, b.t()?.contiguous()?.to_dtype(DType::F32)?);
        Ok(Self {
            a_t_host: a_t.flatten_all()?.to_vec1()?,
            b_t_host: b_t.flatten_all()?.to_vec1()?,
            ranges: {
                let mut at = 0;
                let mut v = Vec::with_capacity(pairs.len());
                for p in pairs {
                    let r = p.a.dims2()?.0;
                    v.push((p.adapter, at, r));
                    at += r;
                }
                v
            },
            a_t,
            b_t,
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
        let w = rows.for_layer(self.layer)?;
        if x.device().is_cpu() && x.dims2()?.0 <= FEW_ROWS {
            return self.add_to_few_rows(&y, x, &w);
        }
        // The adapters' factors are f32; so is their share, whatever the compute dtype.
        let w = w.to_dtype(DType::F32)?.index_select(&self.column_adapter, 1)?; // (tokens, Σr)
        let xa = x.to_dtype(DType::F32)?.matmul(&self.a_t)?; // (tokens, Σr)
        let share = (xa * w)?.matmul(&self.b_t)?.to_dtype(y.dtype())?;
        y + share
    }

    /// The same sum in one pass over host memory. Decoding runs a handful of
    /// rows through every adapted layer each token; five tensor ops per
    /// layer there cost more in dispatch and allocation than their
    /// arithmetic (in·Σr + Σr·out multiply-adds per row).
    fn add_to_few_rows(&self, y: &Tensor, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (tokens, inp) = x.dims2()?;
        let out = y.dims2()?.1;
        let n_adapters = w.dims2()?.1;
        let r = self.column_adapter.dims1()?;
        let x = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let w = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut ys = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut xa = vec![0f32; r];
        let args = FewRows { x: &x, w: &w, inp, out, n_adapters };
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::select::avx2() {
            // SAFETY: AVX2 and FMA were detected at run time.
            unsafe { self.few_rows_avx2(&args, &mut xa, &mut ys) };
            return Tensor::from_vec(ys, (tokens, out), y.device())?.to_dtype(y.dtype());
        }
        self.few_rows(&args, &mut xa, &mut ys);
        Tensor::from_vec(ys, (tokens, out), y.device())?.to_dtype(y.dtype())
    }

    /// The same loops compiled for AVX2+FMA (the crate's baseline is SSE2).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn few_rows_avx2(&self, a: &FewRows, xa: &mut [f32], ys: &mut [f32]) {
        self.few_rows(a, xa, ys)
    }

    /// Row by row: x·Aᵀ for the adapters the row weighs (the others are
    /// skipped entirely), then each weighted rank column's row of Bᵀ into y.
    #[inline(always)]
    fn few_rows(&self, a: &FewRows, xa: &mut [f32], ys: &mut [f32]) {
        let r = xa.len();
        for (row, y_row) in ys.chunks_exact_mut(a.out).enumerate() {
            let x = &a.x[row * a.inp..(row + 1) * a.inp];
            let weights = &a.w[row * a.n_adapters..(row + 1) * a.n_adapters];
            for &(adapter, c0, rank) in &self.ranges {
                let wt = weights[adapter];
                if wt == 0.0 {
                    continue;
                }
                let acc = &mut xa[c0..c0 + rank];
                acc.fill(0.0);
                for (i, &xi) in x.iter().enumerate() {
                    for (s, av) in acc.iter_mut().zip(&self.a_t_host[i * r + c0..i * r + c0 + rank]) {
                        *s += xi * av;
                    }
                }
                for (j, &v) in acc.iter().enumerate() {
                    let c = v * wt;
                    for (yo, b) in y_row.iter_mut().zip(&self.b_t_host[(c0 + j) * a.out..(c0 + j + 1) * a.out]) {
                        *yo += c * b;
                    }
                }
            }
        }
    }
}

/// The host-memory operands of `add_to_few_rows`.
struct FewRows<'a> {
    /// (tokens, inp)
    x: &'a [f32],
    /// (tokens, n_adapters)
    w: &'a [f32],
    inp: usize,
    out: usize,
    n_adapters: usize,
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

    /// The few-row path and the matrix path give the same sums.
    #[test]
    fn few_row_path_equals_matrix_path() {
        let dev = Device::Cpu;
        let pairs = [
            LoraPair { adapter: 0, a: Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap(), b: Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap(), scale: 0.7 },
            LoraPair { adapter: 1, a: Tensor::randn(0f32, 1.0, (2, 7), &dev).unwrap(), b: Tensor::randn(0f32, 1.0, (5, 2), &dev).unwrap(), scale: 1.5 },
        ];
        let stack = LoraStack::new(&pairs, 0).unwrap();
        let rows = FEW_ROWS + 3;
        let x = Tensor::randn(0f32, 1.0, (rows, 7), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (rows, 2), &dev).unwrap();
        let y = Tensor::randn(0f32, 1.0, (rows, 5), &dev).unwrap();
        let big = stack.add_to(y.clone(), &x, &AdapterRows::shared(w.clone(), vec![true, true])).unwrap();
        let few = stack.add_to_few_rows(&y, &x, &w).unwrap();
        assert!(max_diff(&big, &few) < 1e-4, "{}", max_diff(&big, &few));
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
