//! Q6_K quantization exactly as ggml's reference quantizer writes it
//! (`quantize_row_q6_K_ref`, what llama.cpp's `llama_model_quantize` uses
//! without an importance matrix). candle 0.11's `QTensor::quantize` ports an
//! older ggml whose scale search tried 3 refinements instead of the 18 scaled
//! candidates ggml tries now, which on the quant-types test model moves the
//! output 0.22 from f32 where ggml's blocks move it 0.135.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{Result, Tensor};

const QK_K: usize = 256;
/// Bytes of one block: ql[128], qh[64], scales[16] (i8), d (f16).
const BLOCK_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even through the float mantissa.
pub(crate) fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// ggml's `make_qx_quants` with `rmse_type` 1 (weights x²) and no importance:
/// levels `ls` in 0..2·nmax and the group's scale.
fn make_qx_quants(x: &[f32], nmax: i32, ls: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        ls.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut lx, mut l2) = (0f32, 0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            lx += w * v * l;
            l2 += w * l * l;
        }
        (lx, l2)
    };
    let iscale = -(nmax as f32) / max;
    for (l, &v) in ls.iter_mut().zip(x) {
        *l = (level(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in ls.iter_mut().zip(x) {
                *l = (level(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// One 256-value block.
fn quantize_block(x: &[f32], out: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    for ib in 0..QK_K / 16 {
        let s = make_qx_quants(&x[16 * ib..16 * (ib + 1)], 32, &mut l[16 * ib..16 * (ib + 1)]);
        scales[ib] = s;
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = s;
        }
    }
    out.fill(0);
    if max_abs < GROUP_MAX_EPS {
        return; // all zero, d = 0
    }
    let iscale = -128.0 / max_scale;
    let d = half::f16::from_f32(1.0 / iscale);
    let (ql, rest) = out.split_at_mut(QK_K / 2);
    let (qh, rest) = rest.split_at_mut(QK_K / 4);
    let (sc, db) = rest.split_at_mut(QK_K / 16);
    for (s, &v) in sc.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    db.copy_from_slice(&d.to_le_bytes());
    for j in 0..QK_K / 16 {
        let dj = d.to_f32() * (sc[j] as i8) as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / dj).clamp(-32, 31) + 32) as i8;
        }
    }
    for (half_block, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (&mut ql[64 * half_block..], &mut qh[32 * half_block..]);
        for i in 0..32 {
            let q = |o: usize| l[j + i + o] as u8;
            ql[i] = (q(0) & 0xF) | ((q(64) & 0xF) << 4);
            ql[i + 32] = (q(32) & 0xF) | ((q(96) & 0xF) << 4);
            qh[i] = (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
        }
    }
}

/// `w` (rows, cols), cols a multiple of 256, as a Q6_K tensor.
pub fn quantize_q6k(w: &Tensor) -> Result<QTensor> {
    let (rows, cols) = w.dims2()?;
    if cols % QK_K != 0 {
        candle_core::bail!("Q6_K needs rows of whole 256-blocks, got {cols} columns");
    }
    let x = w.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut bytes = vec![0u8; rows * cols / QK_K * BLOCK_BYTES];
    for (xb, ob) in x.chunks_exact(QK_K).zip(bytes.chunks_exact_mut(BLOCK_BYTES)) {
        quantize_block(xb, ob);
    }
    qtensor_from_ggml(GgmlDType::Q6K, &bytes, vec![rows, cols], w.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!([nearest_int(0.5), nearest_int(1.5), nearest_int(-2.5), nearest_int(2.6)], [0, 2, -2, 3]);
    }

    /// Dequantized blocks stay within Q6_K's error (ggml's test bound for Q6_K is 0.002 of RMS-1 data per
    /// element on average) and are never worse than candle's older quantizer on the same data.
    #[test]
    fn q6k_round_trip_error() {
        let w = Tensor::randn(0f32, 1.0, (8, 512), &Device::Cpu).unwrap();
        let err = |q: &QTensor| {
            let d = (q.dequantize(&Device::Cpu).unwrap() - &w).unwrap();
            d.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt()
        };
        let ours = err(&quantize_q6k(&w).unwrap());
        let candle = err(&QTensor::quantize(&w, GgmlDType::Q6K).unwrap());
        assert!(ours < 0.02, "rms error {ours}");
        assert!(ours <= candle * 1.0001, "ours {ours} vs candle {candle}");
    }
}
