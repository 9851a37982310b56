//! The gated feed-forward's elementwise step, `act(gate) · up`, in one pass
//! over f32 rows, with a vector e^x. candle computes the activation and the
//! product as two passes with scalar libm calls: for Gemma's GELU (tanhf,
//! through expm1f) that was a sixth of a 2,048-token prompt.
//!
//! Both activations are `x · σ(k(x))`, so one e^x each:
//! - SiLU: `x / (1 + e^-x)`;
//! - GELU, tanh approximation (`gelu_pytorch_tanh`): `0.5·x·(1 + tanh u)`
//!   with `u = √(2/π)·(x + 0.044715·x³)`, which equals `x / (1 + e^(-2u))`
//!   since `1 + tanh u = 2 / (1 + e^(-2u))`.

use candle_core::{DType, Result, Storage, Tensor};
use rayon::prelude::*;

use super::select;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GateAct {
    Silu,
    GeluTanh,
}

/// √(2/π)
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// Elements one task takes: below this a product runs on the calling thread
/// (a decoding step's row is a few thousand).
const CHUNK: usize = 16 * 1024;

impl GateAct {
    /// The exponent `k` of `x / (1 + e^k)`.
    fn exponent(self, x: f32) -> f32 {
        match self {
            GateAct::Silu => -x,
            GateAct::GeluTanh => -2.0 * SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x),
        }
    }
}

fn scalar(act: GateAct, gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + act.exponent(g).exp()) * u;
    }
}

/// `act(gate) · up` for contiguous f32 tensors of one shape on the CPU;
/// None where candle's ops must do it (other dtypes or devices, strided
/// views such as the halves of a fused gate-up, or `MISTRALRS_CPU_KERNELS=candle`).
pub fn gated_product(act: GateAct, gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if !select::own_kernels()
        || gate.dtype() != DType::F32
        || up.dtype() != DType::F32
        || !gate.device().is_cpu()
        || gate.shape() != up.shape()
    {
        return Ok(None);
    }
    let (gs, gl) = gate.storage_and_layout();
    let (us, ul) = up.storage_and_layout();
    let (Storage::Cpu(gc), Storage::Cpu(uc)) = (&*gs, &*us) else { return Ok(None) };
    let (Some((g0, g1)), Some((u0, u1))) = (gl.contiguous_offsets(), ul.contiguous_offsets()) else {
        return Ok(None);
    };
    let (g, u) = (&gc.as_slice::<f32>()?[g0..g1], &uc.as_slice::<f32>()?[u0..u1]);
    let mut out = vec![0f32; g.len()];
    let run = |g: &[f32], u: &[f32], o: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        if select::avx2() {
            // SAFETY: AVX2 and FMA detected; the three slices have one length.
            return unsafe { avx2::gated(act, g, u, o) };
        }
        scalar(act, g, u, o)
    };
    if out.len() <= CHUNK {
        run(g, u, &mut out);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| run(g, u, o));
    }
    drop((gs, us));
    Tensor::from_vec(out, gate.shape(), gate.device()).map(Some)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::vec_math::exp8;
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gated(act: GateAct, gate: &[f32], up: &[f32], out: &mut [f32]) {
        let one = _mm256_set1_ps(1.0);
        let n = out.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            let x = _mm256_loadu_ps(gate.as_ptr().add(i));
            let k = match act {
                GateAct::Silu => _mm256_sub_ps(_mm256_setzero_ps(), x),
                GateAct::GeluTanh => {
                    let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
                    let inner = _mm256_fmadd_ps(_mm256_set1_ps(GELU_CUBIC), x3, x);
                    _mm256_mul_ps(_mm256_set1_ps(-2.0 * SQRT_2_OVER_PI), inner)
                }
            };
            let a = _mm256_div_ps(x, _mm256_add_ps(one, exp8(k)));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(a, _mm256_loadu_ps(up.as_ptr().add(i))));
        }
        scalar(act, &gate[n..], &up[n..], &mut out[n..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Against PyTorch's definitions in f64 (`torch.nn.functional.silu`,
    /// `gelu(approximate="tanh")`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`),
    /// over the range activations take and far into both tails. The relative
    /// bound covers e^x's 2 ulp and, for GELU, the rounding of its exponent
    /// (up to 88 in magnitude before e^x saturates).
    #[test]
    fn gated_product_matches_the_definitions() {
        let dev = Device::Cpu;
        let n = 3 * CHUNK + 13;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32 - 0.5) * 40.0 + ((i * 7) % 11) as f32 * 0.01).collect();
        let mut g = g;
        g[..6].copy_from_slice(&[-200.0, -90.0, 0.0, -0.0, 90.0, 200.0]);
        let u: Vec<f32> = (0..n).map(|i| 1.0 + ((i * 13) % 17) as f32 * 0.1).collect();
        let (gt, ut) = (Tensor::from_vec(g.clone(), (n,), &dev).unwrap(), Tensor::from_vec(u.clone(), (n,), &dev).unwrap());
        for act in [GateAct::Silu, GateAct::GeluTanh] {
            let got = gated_product(act, &gt, &ut).unwrap().unwrap().to_vec1::<f32>().unwrap();
            for (i, (&x, &y)) in g.iter().zip(&u).enumerate() {
                let x64 = x as f64;
                let a = match act {
                    GateAct::Silu => x64 / (1.0 + (-x64).exp()),
                    GateAct::GeluTanh => {
                        0.5 * x64 * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3))).tanh())
                    }
                };
                let want = a * y as f64;
                let err = (got[i] as f64 - want).abs();
                // The f64 definition cancels in the far negative tail (1 + tanh u
                // rounds to 0 there): the second term allows for that.
                let tol = 3e-5 * want.abs() + 1e-14 * (x64 * y as f64).abs() + 1e-30;
                assert!(err <= tol, "{act:?} at {x}: {} against {want}", got[i]);
            }
        }
    }
}
