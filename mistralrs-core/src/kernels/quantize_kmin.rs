//! Q2_K, Q4_K and Q5_K quantization exactly as ggml's reference quantizers
//! write them (`quantize_row_q{2,4,5}_K_ref`, what llama.cpp's
//! `llama_model_quantize` uses without an importance matrix): the K-quants
//! whose sub-blocks carry a scale and a min. candle 0.11's
//! `QTensor::quantize` ports an older ggml (`make_qkx1_quants`), which wrote
//! none of these types' blocks as llama.cpp does; ggml now searches each
//! sub-block's (scale, min) by weighted least squares over a range of
//! candidate scales (`make_qkx2_quants`).

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use half::f16;

use super::kquant_panels::scale_min;
use super::quantize_q6k::nearest_int;

const QK_K: usize = 256;

/// ggml's `make_qkx2_quants`: levels `l` in 0..=nmax and (scale, −min) of
/// `x` with weights `w`, the min never above 0. The first guess spans
/// [min, max]; then `nstep` + 1 candidate scales (nmax + rmin + rdelta·is
/// levels over the range) each get the weighted least-squares scale and min
/// for their levels, and the one with the smallest weighted error (squared,
/// or absolute with `mad`) wins.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    x: &[f32],
    w: &[f32],
    nmax: i32,
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (w[0], w[0] * x[0]);
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..n {
        l[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        best += w[i] * err(scale * l[i] as f32 + min - x[i]);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let q = q as f32;
            sum_l += w[i] * q;
            sum_l2 += w[i] * q * q;
            sum_xl += w[i] * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur = 0f32;
            for i in 0..n {
                cur += w[i] * err(this_scale * laux[i] as f32 + this_min - x[i]);
            }
            if cur < best {
                l[..n].copy_from_slice(&laux[..n]);
                best = cur;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Each of a block's N sub-blocks of S values fitted on its own.
struct Fits<const N: usize> {
    scales: [f32; N],
    mins: [f32; N],
    max_scale: f32,
    max_min: f32,
}

/// `make_qkx2_quants` on each S-value sub-block of `x` (candidates
/// nmax + rmin + 0.1·is, is = 0..=nstep), with the weights `weights` gives
/// it: its levels into `l`, its (scale, −min), and their maxima, which set
/// the block's `d` and `dmin`.
fn fit_sub_blocks<const N: usize, const S: usize>(
    x: &[f32],
    l: &mut [u8; QK_K],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    mad: bool,
    weights: impl Fn(&[f32]) -> [f32; S],
) -> Fits<N> {
    let mut laux = [0u8; S];
    let mut f = Fits { scales: [0.0; N], mins: [0.0; N], max_scale: 0.0, max_min: 0.0 };
    for j in 0..N {
        let xs = &x[S * j..S * (j + 1)];
        let w = weights(xs);
        (f.scales[j], f.mins[j]) = make_qkx2_quants(xs, &w, nmax, &mut l[S * j..S * (j + 1)], &mut laux, rmin, 0.1, nstep, mad);
        f.max_scale = f.max_scale.max(f.scales[j]);
        f.max_min = f.max_min.max(f.mins[j]);
    }
    f
}

/// Q4_K and Q5_K: eight 32-value sub-blocks, 6-bit scales and mins (12
/// bytes, ggml's `get_scale_min_k4` packing) under f16 `d`, `dmin`; then the
/// levels each sub-block's rounded scale and min give. `bits` 4 or 5.
fn quantize_q45k_block(x: &[f32], bits: u32, out: &mut [u8]) {
    let nmax = (1 << bits) - 1;
    let (rmin, nstep) = if bits == 4 { (-1.0, 20) } else { (-0.5, 15) };
    let mut l = [0u8; QK_K];
    // Weights: the sub-block's RMS plus each value's magnitude.
    let Fits { scales, mins, max_scale, max_min } = fit_sub_blocks::<8, 32>(x, &mut l, nmax, rmin, nstep, false, |xs| {
        let av_x = (xs.iter().fold(0.0, |s, &v| s + v * v) / 32.0).sqrt();
        std::array::from_fn(|i| av_x + xs[i].abs())
    });
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut sc = [0u8; 12];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let (s, m) = scale_min(j, &sc);
        let dj = d.to_f32() * s as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    out[0..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_le_bytes());
    out[4..16].copy_from_slice(&sc);
    if bits == 4 {
        let qs = &mut out[16..16 + 128];
        for (p, j) in (0..QK_K).step_by(64).enumerate() {
            for i in 0..32 {
                qs[32 * p + i] = l[j + i] | (l[j + i + 32] << 4);
            }
        }
    } else {
        let (qh, qs) = out[16..16 + 32 + 128].split_at_mut(32);
        qh.fill(0);
        for (p, j) in (0..QK_K).step_by(64).enumerate() {
            let (m1, m2) = (1u8 << (2 * p), 2u8 << (2 * p));
            for i in 0..32 {
                let (mut l1, mut l2) = (l[j + i], l[j + i + 32]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[i] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[i] |= m2;
                }
                qs[32 * p + i] = l1 | (l2 << 4);
            }
        }
    }
}

/// Q2_K: sixteen 16-value sub-blocks with 2-bit levels, 4-bit scales and
/// mins (one byte each) under f16 `d`, `dmin`. Block: scales 16 | qs 64 |
/// d | dmin.
fn quantize_q2k_block(x: &[f32], out: &mut [u8]) {
    const Q4SCALE: f32 = 15.0;
    let mut l = [0u8; QK_K];
    // Weights: each value's magnitude; errors absolute.
    let Fits { scales, mins, max_scale, max_min } =
        fit_sub_blocks::<16, 16>(x, &mut l, 3, -0.5, 15, true, |xs| std::array::from_fn(|i| xs[i].abs()));
    let (sc, rest) = out.split_at_mut(16);
    let (qs, dd) = rest.split_at_mut(64);
    sc.fill(0);
    let mut d = f16::ZERO;
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        d = f16::from_f32(max_scale / Q4SCALE);
    }
    let mut dmin = f16::ZERO;
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..16 {
            sc[j] |= (nearest_int(iscale * mins[j]) as u8) << 4;
        }
        dmin = f16::from_f32(max_min / Q4SCALE);
    }
    for j in 0..16 {
        let dj = d.to_f32() * (sc[j] & 0xF) as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * (sc[j] >> 4) as f32;
        for i in 0..16 {
            l[16 * j + i] = nearest_int((x[16 * j + i] + dm) / dj).clamp(0, 3) as u8;
        }
    }
    for (h, j) in (0..QK_K).step_by(128).enumerate() {
        for i in 0..32 {
            qs[32 * h + i] = l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
    dd[0..2].copy_from_slice(&d.to_le_bytes());
    dd[2..4].copy_from_slice(&dmin.to_le_bytes());
}

/// `w` (rows, cols), cols a multiple of 256, as a Q2_K, Q4_K or Q5_K tensor.
pub fn quantize_kmin(w: &Tensor, dtype: GgmlDType) -> Result<QTensor> {
    let (rows, cols) = w.dims2()?;
    if cols % QK_K != 0 {
        candle_core::bail!("{dtype:?} needs rows of whole 256-blocks, got {cols} columns");
    }
    let block: fn(&[f32], &mut [u8]) = match dtype {
        GgmlDType::Q2K => quantize_q2k_block,
        GgmlDType::Q4K => |x, out| quantize_q45k_block(x, 4, out),
        GgmlDType::Q5K => |x, out| quantize_q45k_block(x, 5, out),
        other => candle_core::bail!("quantize_kmin: {other:?} is not Q2_K, Q4_K or Q5_K"),
    };
    let bb = dtype.type_size();
    let x = w.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut bytes = vec![0u8; rows * cols / QK_K * bb];
    for (xb, ob) in x.chunks_exact(QK_K).zip(bytes.chunks_exact_mut(bb)) {
        block(xb, ob);
    }
    qtensor_from_ggml(dtype, &bytes, vec![rows, cols], w.device())
}
