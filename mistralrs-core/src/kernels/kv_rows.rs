//! Attention's two products for several query rows that read the same keys
//! and values: the query heads of one KV head at a decode step
//! (grouped-query attention). Each stored key and value is widened to f32
//! once and used by every row while it is in a register, where a row at a
//! time (`KvFormat::scores_row`) widens it once per row: at decode, with a
//! few rows per KV head, the widening and the per-row loop overhead, not the
//! multiply-adds, set the speed.
//!
//! Each row's results are bit for bit those of `scores_row` and
//! `weighted_values` over the same run (the same widened values, the same
//! products in the same order), so a token's attention does not
//! depend on whether it was computed as a decode step or in a prompt's tile:
//! a preempted sequence recomputed as a prompt continues exactly.
//!
//! A run is `len` stored vectors, vector j at unit `at + j * stride` (the
//! slots of one cache block). Scores and weights are (rows, ld) matrices.

use super::kv_formats::KvFormat;

/// `len` stored vectors, the first at unit `at`.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub at: usize,
    pub len: usize,
}

/// Rows taken together by the SIMD bodies (their accumulators fill the registers).
const MAX_ROWS: usize = 8;

fn check_run<F: KvFormat>(data_len: usize, run: Run, stride: usize, dim: usize) {
    assert!(run.len > 0 && run.at <= data_len);
    super::kv_formats::check_run(run.len, data_len - run.at, stride, F::units(dim));
}

/// Calls `$body` with the const `R` (rows of the SIMD body) for `$rows` (1..=8).
macro_rules! with_rows {
    ($rows:expr, $body:ident, $($arg:expr),*) => {
        match $rows {
            1 => avx2::$body::<F, 1>($($arg),*),
            2 => avx2::$body::<F, 2>($($arg),*),
            3 => avx2::$body::<F, 3>($($arg),*),
            4 => avx2::$body::<F, 4>($($arg),*),
            5 => avx2::$body::<F, 5>($($arg),*),
            6 => avx2::$body::<F, 6>($($arg),*),
            7 => avx2::$body::<F, 7>($($arg),*),
            _ => avx2::$body::<F, 8>($($arg),*),
        }
    };
}

/// `scores[r * ld + j]` = scale · (query row r) · key j of the run, for the
/// `rows` query rows of `q` (row r at `r * dim`).
#[allow(clippy::too_many_arguments)]
pub fn scores_rows<F: KvFormat>(q: &[f32], rows: usize, keys: &[F::Unit], run: Run, stride: usize, dim: usize, scale: f32, scores: &mut [f32], ld: usize, simd: bool) {
    check_run::<F>(keys.len(), run, stride, dim);
    assert!(q.len() >= rows * dim && run.len <= ld && (rows == 0 || scores.len() >= (rows - 1) * ld + run.len));
    #[cfg(target_arch = "x86_64")]
    if simd {
        let k = keys[run.at..].as_ptr();
        for r0 in (0..rows).step_by(MAX_ROWS) {
            let (q, s) = (q[r0 * dim..].as_ptr(), scores[r0 * ld..].as_mut_ptr());
            // SAFETY: AVX2+FMA+F16C detected, `F::simd_dim(dim)`; the run,
            // rows and scores checked above.
            unsafe { with_rows!((rows - r0).min(MAX_ROWS), scores, q, k, run.len, stride, dim, scale, s, ld) }
        }
        return;
    }
    let _ = simd;
    for r in 0..rows {
        let s = &mut scores[r * ld..r * ld + run.len];
        F::scores_row(&q[r * dim..(r + 1) * dim], &keys[run.at..], stride, dim, scale, s, false);
    }
}

/// `out[r * dim..(r + 1) * dim]` += Σ_j p[r * ld + j] · value j of the run, for `rows` rows.
#[allow(clippy::too_many_arguments)]
pub fn weighted_rows<F: KvFormat>(p: &[f32], ld: usize, rows: usize, values: &[F::Unit], run: Run, stride: usize, dim: usize, out: &mut [f32], simd: bool) {
    check_run::<F>(values.len(), run, stride, dim);
    assert!(out.len() >= rows * dim && run.len <= ld && (rows == 0 || p.len() >= (rows - 1) * ld + run.len));
    #[cfg(target_arch = "x86_64")]
    if simd {
        let v = values[run.at..].as_ptr();
        for r0 in (0..rows).step_by(MAX_ROWS) {
            let (p, o) = (p[r0 * ld..].as_ptr(), out[r0 * dim..].as_mut_ptr());
            // SAFETY: as in `scores_rows`.
            unsafe { with_rows!((rows - r0).min(MAX_ROWS), weighted, p, ld, v, run.len, stride, dim, o) }
        }
        return;
    }
    let _ = simd;
    for r in 0..rows {
        F::weighted_values(&p[r * ld..r * ld + run.len], &values[run.at..], stride, dim, &mut out[r * dim..(r + 1) * dim], true, false);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::kernels::kv_formats::avx2::{hsum, hsum8};
    use crate::kernels::kv_formats::KvFormat;

    /// R rows' scores over n keys: each key's chunks are widened once and
    /// multiplied into all R rows' sums. As in `scores_row`, keys go by eights, summed
    /// across lanes together (`hsum8`, from `lanes` where they wait), and the
    /// last n % 8 one by one.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn scores<F: KvFormat, const R: usize>(q: *const f32, keys: *const F::Unit, n: usize, stride: usize, dim: usize, scale: f32, scores: *mut f32, ld: usize) {
        let sc = _mm256_set1_ps(scale);
        let mut lanes = [[_mm256_setzero_ps(); 8]; R];
        let full = n - n % 8;
        for j in 0..n {
            let key = keys.add(j * stride);
            let mut acc = [_mm256_setzero_ps(); R];
            for c in 0..dim / 8 {
                let k = F::chunk8(key, c);
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(r * dim + 8 * c)), k, *a);
                }
            }
            if j < full {
                for (l, a) in lanes.iter_mut().zip(acc) {
                    l[j % 8] = a;
                }
                if j % 8 == 7 {
                    for (r, l) in lanes.iter().enumerate() {
                        _mm256_storeu_ps(scores.add(r * ld + j - 7), _mm256_mul_ps(hsum8(*l), sc));
                    }
                }
            } else {
                for (r, a) in acc.iter().enumerate() {
                    *scores.add(r * ld + j) = hsum(*a) * scale;
                }
            }
        }
    }

    /// R rows' weighted sums over n values, 16 output dims at a time (8
    /// with more than 6 rows, to stay in the 16 registers): each value's
    /// chunks are widened once and multiplied into all R rows' sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn weighted<F: KvFormat, const R: usize>(p: *const f32, ld: usize, values: *const F::Unit, n: usize, stride: usize, dim: usize, out: *mut f32) {
        let chunks = dim / 8;
        let mut c0 = 0;
        if R <= 6 {
            while c0 + 2 <= chunks {
                columns::<F, R, 2>(p, ld, values, n, stride, c0, dim, out);
                c0 += 2;
            }
        }
        while c0 < chunks {
            columns::<F, R, 1>(p, ld, values, n, stride, c0, dim, out);
            c0 += 1;
        }
    }

    /// Chunks c0..c0 + C of `weighted`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn columns<F: KvFormat, const R: usize, const C: usize>(p: *const f32, ld: usize, values: *const F::Unit, n: usize, stride: usize, c0: usize, dim: usize, out: *mut f32) {
        let mut acc: [[__m256; C]; R] = std::array::from_fn(|r| std::array::from_fn(|c| _mm256_loadu_ps(out.add(r * dim + 8 * (c0 + c)))));
        for t in 0..n {
            let value = values.add(t * stride);
            let v: [__m256; C] = std::array::from_fn(|c| F::chunk8(value, c0 + c));
            for (r, a) in acc.iter_mut().enumerate() {
                let w = _mm256_set1_ps(*p.add(r * ld + t));
                for (a, v) in a.iter_mut().zip(v) {
                    *a = _mm256_fmadd_ps(w, v, *a);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (c, a) in a.iter().enumerate() {
                _mm256_storeu_ps(out.add(r * dim + 8 * (c0 + c)), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::kernels::kv_formats::{F16s, F32s, Q8s};
    use crate::kv_cache::{dequantize_q8_0, quantize_q8_0, Q8_0_BYTES, Q8_0_VALUES};

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2000) as f32 / 500.0 - 2.0).collect()
    }

    /// Every row count of the SIMD bodies and past them (1..=11 rows), runs
    /// of every remainder of 8, against f64 sums over the stored vectors
    /// widened one by one, on the scalar and the SIMD path; and bit for bit
    /// the one-row products (`scores_row`, `weighted_values`) of each row.
    #[test]
    fn rows_match_the_widened_values_and_one_row_at_a_time() {
        fn check<F: KvFormat>(dim: usize, stored: &[F::Unit], stride: usize, widened: &[f32]) {
            for run in [Run { at: 5 * stride, len: 3 }, Run { at: 0, len: 16 }, Run { at: 2 * stride, len: 13 }, Run { at: 8 * stride, len: 8 }] {
                let n = run.len;
                let first = run.at / stride;
                let ld = n + 3;
                for rows in 1..=11 {
                    let q = data(rows * dim, 9);
                    let p = data(rows * ld, 4);
                    let start = data(rows * dim, 5);
                    for simd in [false, crate::kernels::select::avx2() && F::simd_dim(dim)] {
                        let mut s = vec![f32::NAN; rows * ld];
                        scores_rows::<F>(&q, rows, stored, run, stride, dim, 0.5, &mut s, ld, simd);
                        let mut o = start.clone();
                        weighted_rows::<F>(&p, ld, rows, stored, run, stride, dim, &mut o, simd);
                        for r in 0..rows {
                            let mut one = vec![0f32; n];
                            F::scores_row(&q[r * dim..(r + 1) * dim], &stored[run.at..], stride, dim, 0.5, &mut one, simd);
                            assert_eq!(one, s[r * ld..r * ld + n], "dim {dim}, rows {rows}, run {run:?}, simd {simd}: scores of row {r}");
                            let mut one = start[r * dim..(r + 1) * dim].to_vec();
                            F::weighted_values(&p[r * ld..r * ld + n], &stored[run.at..], stride, dim, &mut one, true, simd);
                            assert_eq!(one, o[r * dim..(r + 1) * dim], "dim {dim}, rows {rows}, run {run:?}, simd {simd}: output of row {r}");
                            for j in 0..n {
                                let want = 0.5 * (0..dim).map(|d| q[r * dim + d] as f64 * widened[(first + j) * dim + d] as f64).sum::<f64>();
                                assert!((s[r * ld + j] as f64 - want).abs() < 1e-3, "dim {dim}, rows {rows}, simd {simd}: score {r},{j}");
                            }
                            for d in 0..dim {
                                let want = start[r * dim + d] as f64 + (0..n).map(|j| p[r * ld + j] as f64 * widened[(first + j) * dim + d] as f64).sum::<f64>();
                                assert!((o[r * dim + d] as f64 - want).abs() < 1e-3, "dim {dim}, rows {rows}, simd {simd}: output {r},{d}");
                            }
                        }
                        // Columns past the run are left alone.
                        assert!(s.chunks(ld).all(|row| row[n..].iter().all(|x| x.is_nan())));
                    }
                }
            }
        }
        for dim in [8usize, 24, 64, 128] {
            let count = 19;
            let raw = data(count * dim, 7);
            let f32s: Vec<f32> = (0..count).flat_map(|j| raw[j * dim..(j + 1) * dim].iter().copied().chain([0.0; 8])).collect();
            check::<F32s>(dim, &f32s, dim + 8, &raw);
            let f16s: Vec<f16> = f32s.iter().map(|&x| f16::from_f32(x)).collect();
            let w16: Vec<f32> = raw.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
            check::<F16s>(dim, &f16s, dim + 8, &w16);
            if dim % Q8_0_VALUES != 0 {
                continue;
            }
            let width = dim / Q8_0_VALUES * Q8_0_BYTES;
            let stride = width + 6;
            let mut q8 = vec![0u8; count * stride];
            let mut wq8 = vec![0f32; count * dim];
            for j in 0..count {
                quantize_q8_0(&raw[j * dim..(j + 1) * dim], &mut q8[j * stride..j * stride + width]);
                dequantize_q8_0(&q8[j * stride..j * stride + width], &mut wq8[j * dim..(j + 1) * dim]);
            }
            check::<Q8s>(dim, &q8, stride, &wq8);
        }
    }
}
