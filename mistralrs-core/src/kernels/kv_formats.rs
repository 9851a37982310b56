//! The two products attention takes with the cached keys and values, for
//! every way the cache stores them (`KvDtype`): query · key for a run of
//! keys, and Σ p_j · value_j for a run of values. Stored values are widened
//! to f32 in registers as they are read (F16C for f16, a shift for bf16, a
//! sign extension times the block's scale for Q8_0) and everything is
//! accumulated in f32, so a narrower cache costs no precision beyond its
//! own rounding and reads fewer bytes per cached token.
//!
//! A run is `n` vectors of `dim` values, vector j at unit `j * stride` (a
//! unit being one stored element: a float, or a byte of Q8_0 blocks).

use half::{bf16, f16};

use crate::kv_cache::{KvDtype, Q8_0_BYTES, Q8_0_VALUES};

/// A storage type of the cache, as the attention kernel reads it.
pub trait KvFormat {
    type Unit: Copy + Sync;
    /// Stored narrower than f32: worth widening once when many rows read the same run.
    const NARROW: bool;
    /// `out[j * dim..(j + 1) * dim]` = vector j as f32, for j < n.
    fn widen(src: &[Self::Unit], stride: usize, dim: usize, n: usize, out: &mut [f32], simd: bool);
    /// Whether the SIMD bodies can take vectors of `dim` values.
    fn simd_dim(dim: usize) -> bool;
    /// Stored units of a vector of `dim` values.
    fn units(dim: usize) -> usize;
    /// Values 8c..8c + 8 of the vector stored at `v`, widened to f32 lanes
    /// as `widen` widens them (the several-rows bodies of `kv_rows.rs` read
    /// through it, with the float products of `scores_row` and
    /// `weighted_values`, so each row's results are theirs bit for bit).
    ///
    /// # Safety
    /// AVX2, FMA and F16C are present, and the vector at `v` is stored whole
    /// with more than 8c values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn chunk8(v: *const Self::Unit, c: usize) -> std::arch::x86_64::__m256;
    /// `scores[j]` = scale · q · key j.
    fn scores_row(q: &[f32], keys: &[Self::Unit], stride: usize, dim: usize, scale: f32, scores: &mut [f32], simd: bool);
    /// `out` (+)= Σ_j p[j] · value j; `add` keeps what `out` holds, else it is overwritten.
    #[allow(clippy::too_many_arguments)]
    fn weighted_values(p: &[f32], values: &[Self::Unit], stride: usize, dim: usize, out: &mut [f32], add: bool, simd: bool);
}

pub struct F32s;
pub struct F16s;
pub struct Bf16s;
pub struct Q8s;

/// The float formats: one stored element per value.
pub(crate) trait Widen: Copy + Sync {
    fn widen(self) -> f32;
    #[cfg(target_arch = "x86_64")]
    /// Eight stored values from `p`, as f32 lanes.
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Widen for f32 {
    fn widen(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Widen for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

impl Widen for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // A bf16 is the high half of an f32.
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)), 16))
    }
}

pub(crate) fn check_run(n: usize, len: usize, stride: usize, width: usize) {
    assert!(stride >= width && (n == 0 || len >= (n - 1) * stride + width), "run outside its buffer");
}

fn float_widen<T: Widen>(src: &[T], stride: usize, dim: usize, n: usize, out: &mut [f32], simd: bool) {
    check_run(n, src.len(), stride, dim);
    assert!(out.len() >= n * dim);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: AVX2+FMA+F16C detected, dim a multiple of 8, both buffers long enough.
        unsafe { avx2::widen(src, stride, dim, n, out) };
        return;
    }
    let _ = simd;
    for j in 0..n {
        for (o, x) in out[j * dim..(j + 1) * dim].iter_mut().zip(&src[j * stride..j * stride + dim]) {
            *o = x.widen();
        }
    }
}

fn float_scores<T: Widen>(q: &[f32], keys: &[T], stride: usize, dim: usize, scale: f32, scores: &mut [f32], simd: bool) {
    if scores.is_empty() {
        return;
    }
    check_run(scores.len(), keys.len(), stride, dim);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: AVX2+FMA+F16C detected, dim a multiple of 8 (`simd_dim`), keys long enough.
        unsafe { avx2::scores_row(q, keys, stride, dim, scale, scores) };
        return;
    }
    let _ = simd;
    for (j, s) in scores.iter_mut().enumerate() {
        *s = scale * q.iter().zip(&keys[j * stride..j * stride + dim]).map(|(a, b)| a * b.widen()).sum::<f32>();
    }
}

#[allow(clippy::too_many_arguments)]
fn float_weighted<T: Widen>(p: &[f32], values: &[T], stride: usize, dim: usize, out: &mut [f32], add: bool, simd: bool) {
    assert!(!p.is_empty() && out.len() == dim);
    check_run(p.len(), values.len(), stride, dim);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: AVX2+FMA+F16C detected, dim a multiple of 8, values long enough.
        unsafe { avx2::weighted_values(p, values, stride, dim, out, add) };
        return;
    }
    let _ = simd;
    if !add {
        out.fill(0.0);
    }
    for (j, &pj) in p.iter().enumerate() {
        for (o, x) in out.iter_mut().zip(&values[j * stride..j * stride + dim]) {
            *o += pj * x.widen();
        }
    }
}

macro_rules! float_format {
    ($name:ident, $t:ty, $narrow:expr) => {
        impl KvFormat for $name {
            type Unit = $t;
            const NARROW: bool = $narrow;
            fn widen(src: &[$t], stride: usize, dim: usize, n: usize, out: &mut [f32], simd: bool) {
                float_widen(src, stride, dim, n, out, simd)
            }
            fn simd_dim(dim: usize) -> bool {
                dim.is_multiple_of(8)
            }
            fn units(dim: usize) -> usize {
                dim
            }
            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            unsafe fn chunk8(v: *const $t, c: usize) -> std::arch::x86_64::__m256 {
                <$t as Widen>::load8(v.add(8 * c))
            }
            fn scores_row(q: &[f32], keys: &[$t], stride: usize, dim: usize, scale: f32, scores: &mut [f32], simd: bool) {
                float_scores(q, keys, stride, dim, scale, scores, simd)
            }
            fn weighted_values(p: &[f32], values: &[$t], stride: usize, dim: usize, out: &mut [f32], add: bool, simd: bool) {
                float_weighted(p, values, stride, dim, out, add, simd)
            }
        }
    };
}

float_format!(F32s, f32, false);
float_format!(F16s, f16, true);
float_format!(Bf16s, bf16, true);

/// The values of a Q8_0 vector widened to f32, each its block's scale times
/// its quant (as `dequantize_q8_0`).
fn q8_values(v: &[u8]) -> impl Iterator<Item = f32> + '_ {
    v.chunks_exact(Q8_0_BYTES).flat_map(|block| {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        block[2..].iter().map(move |&b| d * (b as i8) as f32)
    })
}

/// Q8_0: a vector of `dim` values is dim / 32 blocks of 34 bytes. Its
/// products are the float formats' over its values widened to f32 (scale
/// times quant, rounded once), the same arithmetic whether a run is read in
/// place or widened first (`widen`), so a token's attention is the same bit
/// for bit on every path (see `kv_rows.rs`).
impl KvFormat for Q8s {
    type Unit = u8;
    const NARROW: bool = true;

    fn widen(src: &[u8], stride: usize, dim: usize, n: usize, out: &mut [f32], simd: bool) {
        let width = KvDtype::Q8_0.units(dim);
        assert!(dim.is_multiple_of(Q8_0_VALUES) && out.len() >= n * dim);
        check_run(n, src.len(), stride, width);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2+FMA+F16C detected; dim a multiple of 32, both buffers long enough.
            unsafe { avx2::q8_widen(src, stride, dim, n, out) };
            return;
        }
        let _ = simd;
        for j in 0..n {
            crate::kv_cache::dequantize_q8_0(&src[j * stride..j * stride + width], &mut out[j * dim..(j + 1) * dim]);
        }
    }
    fn simd_dim(_dim: usize) -> bool {
        true
    }
    fn units(dim: usize) -> usize {
        KvDtype::Q8_0.units(dim)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn chunk8(v: *const u8, c: usize) -> std::arch::x86_64::__m256 {
        avx2::q8_chunk(v, c)
    }

    fn scores_row(q: &[f32], keys: &[u8], stride: usize, dim: usize, scale: f32, scores: &mut [f32], simd: bool) {
        if scores.is_empty() {
            return;
        }
        let width = KvDtype::Q8_0.units(dim);
        assert!(dim.is_multiple_of(Q8_0_VALUES));
        check_run(scores.len(), keys.len(), stride, width);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2+FMA+F16C detected; dim a multiple of 32, keys long enough.
            unsafe { avx2::q8_scores_row(q, keys, stride, dim, scale, scores) };
            return;
        }
        let _ = simd;
        for (j, s) in scores.iter_mut().enumerate() {
            let key = &keys[j * stride..j * stride + width];
            *s = scale * q.iter().zip(q8_values(key)).map(|(a, b)| a * b).sum::<f32>();
        }
    }

    fn weighted_values(p: &[f32], values: &[u8], stride: usize, dim: usize, out: &mut [f32], add: bool, simd: bool) {
        let width = KvDtype::Q8_0.units(dim);
        assert!(!p.is_empty() && out.len() == dim && dim.is_multiple_of(Q8_0_VALUES));
        check_run(p.len(), values.len(), stride, width);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2+FMA+F16C detected; dim a multiple of 32, values long enough.
            unsafe { avx2::q8_weighted_values(p, values, stride, dim, out, add) };
            return;
        }
        let _ = simd;
        if !add {
            out.fill(0.0);
        }
        for (j, &pj) in p.iter().enumerate() {
            for (o, x) in out.iter_mut().zip(q8_values(&values[j * stride..j * stride + width])) {
                *o += pj * x;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::Widen;
    use crate::kv_cache::{Q8_0_BYTES, Q8_0_VALUES};

    /// Sum of the 8 lanes of each of 8 vectors, as one vector.
    #[inline(always)]
    pub(crate) unsafe fn hsum8(a: [__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t2 = _mm256_hadd_ps(a[4], a[5]);
        let t3 = _mm256_hadd_ps(a[6], a[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31))
    }

    #[inline(always)]
    pub(crate) unsafe fn hsum(a: __m256) -> f32 {
        let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores_row<T: Widen>(q: &[f32], keys: &[T], stride: usize, dim: usize, scale: f32, scores: &mut [f32]) {
        let n = scores.len();
        let base = keys.as_ptr();
        let qp = q.as_ptr();
        let sc = _mm256_set1_ps(scale);
        let mut j = 0;
        // Eight keys at a time: eight dot products reduced into one vector.
        while j + 8 <= n {
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in (0..dim).step_by(8) {
                let qc = _mm256_loadu_ps(qp.add(c));
                for (kk, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qc, T::load8(base.add((j + kk) * stride + c)), *a);
                }
            }
            _mm256_storeu_ps(scores.as_mut_ptr().add(j), _mm256_mul_ps(hsum8(acc), sc));
            j += 8;
        }
        for (jj, s) in scores.iter_mut().enumerate().skip(j) {
            let mut a = _mm256_setzero_ps();
            for c in (0..dim).step_by(8) {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), T::load8(base.add(jj * stride + c)), a);
            }
            *s = hsum(a) * scale;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_values<T: Widen>(p: &[f32], values: &[T], stride: usize, dim: usize, out: &mut [f32], add: bool) {
        // 64 output dims in registers at a time, then the rest. The width is
        // a constant of each call so that the accumulators stay in registers:
        // with a run-time width they lived on the stack, a load and a store
        // per multiply-add, and their copy out was a memcpy per row and block.
        let mut c0 = 0;
        while c0 + 64 <= dim {
            weighted_columns::<T, 8>(p, values, stride, c0, out, add);
            c0 += 64;
        }
        match (dim - c0) / 8 {
            0 => {}
            1 => weighted_columns::<T, 1>(p, values, stride, c0, out, add),
            2 => weighted_columns::<T, 2>(p, values, stride, c0, out, add),
            3 => weighted_columns::<T, 3>(p, values, stride, c0, out, add),
            4 => weighted_columns::<T, 4>(p, values, stride, c0, out, add),
            5 => weighted_columns::<T, 5>(p, values, stride, c0, out, add),
            6 => weighted_columns::<T, 6>(p, values, stride, c0, out, add),
            _ => weighted_columns::<T, 7>(p, values, stride, c0, out, add),
        }
    }

    /// Output dims c0..c0 + 8W of `weighted_values`.
    #[inline(always)]
    unsafe fn weighted_columns<T: Widen, const W: usize>(p: &[f32], values: &[T], stride: usize, c0: usize, out: &mut [f32], add: bool) {
        let base = values.as_ptr();
        let o = out.as_mut_ptr().add(c0);
        let mut acc = [_mm256_setzero_ps(); W];
        if add {
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(o.add(8 * c));
            }
        }
        for (j, &pj) in p.iter().enumerate() {
            let w = _mm256_set1_ps(pj);
            let row = base.add(j * stride + c0);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w, T::load8(row.add(8 * c)), *a);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.add(8 * c), *a);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen<T: Widen>(src: &[T], stride: usize, dim: usize, n: usize, out: &mut [f32]) {
        for j in 0..n {
            let (s, o) = (src.as_ptr().add(j * stride), out.as_mut_ptr().add(j * dim));
            for c in (0..dim).step_by(8) {
                _mm256_storeu_ps(o.add(c), T::load8(s.add(c)));
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_widen(src: &[u8], stride: usize, dim: usize, n: usize, out: &mut [f32]) {
        for j in 0..n {
            let (v, o) = (src.as_ptr().add(j * stride), out.as_mut_ptr().add(j * dim));
            for c in 0..dim / 8 {
                _mm256_storeu_ps(o.add(8 * c), q8_chunk(v, c));
            }
        }
    }

    /// The f16 scale at the start of a Q8_0 block.
    #[inline(always)]
    unsafe fn scale_of(block: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*block, *block.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Eight quants from `p` as f32 lanes.
    #[inline(always)]
    unsafe fn quants8(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    /// Values 8c..8c + 8 of the Q8_0 vector at `v`, widened: quarter c % 4
    /// of block c / 4 times the block's scale (as `q8_widen`).
    #[inline(always)]
    pub unsafe fn q8_chunk(v: *const u8, c: usize) -> __m256 {
        let block = v.add(c / 4 * Q8_0_BYTES);
        _mm256_mul_ps(_mm256_set1_ps(scale_of(block)), quants8(block.add(2 + 8 * (c % 4))))
    }

    /// `scores_row` over Q8_0 keys widened chunk by chunk.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_scores_row(q: &[f32], keys: &[u8], stride: usize, dim: usize, scale: f32, scores: &mut [f32]) {
        let n = scores.len();
        let base = keys.as_ptr();
        let qp = q.as_ptr();
        let sc = _mm256_set1_ps(scale);
        let mut j = 0;
        while j + 8 <= n {
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in 0..dim / 8 {
                let qc = _mm256_loadu_ps(qp.add(8 * c));
                for (kk, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qc, q8_chunk(base.add((j + kk) * stride), c), *a);
                }
            }
            _mm256_storeu_ps(scores.as_mut_ptr().add(j), _mm256_mul_ps(hsum8(acc), sc));
            j += 8;
        }
        for (jj, s) in scores.iter_mut().enumerate().skip(j) {
            let mut a = _mm256_setzero_ps();
            for c in 0..dim / 8 {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(8 * c)), q8_chunk(base.add(jj * stride), c), a);
            }
            *s = hsum(a) * scale;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_weighted_values(p: &[f32], values: &[u8], stride: usize, dim: usize, out: &mut [f32], add: bool) {
        // Two blocks (64 output dims) in registers at a time; the count is a
        // constant of each call, so the accumulators stay in registers.
        let blocks = dim / Q8_0_VALUES;
        let mut b0 = 0;
        while b0 + 2 <= blocks {
            q8_columns::<2>(p, values, stride, b0, out, add);
            b0 += 2;
        }
        if b0 < blocks {
            q8_columns::<1>(p, values, stride, b0, out, add);
        }
    }

    /// Blocks b0..b0 + NB of `q8_weighted_values`.
    #[inline(always)]
    unsafe fn q8_columns<const NB: usize>(p: &[f32], values: &[u8], stride: usize, b0: usize, out: &mut [f32], add: bool) {
        let base = values.as_ptr();
        let o = out.as_mut_ptr().add(b0 * Q8_0_VALUES);
        let mut acc = [[_mm256_setzero_ps(); 4]; NB];
        if add {
            for (bb, a) in acc.iter_mut().enumerate() {
                for (c, a) in a.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(o.add(Q8_0_VALUES * bb + 8 * c));
                }
            }
        }
        for (j, &pj) in p.iter().enumerate() {
            let w = _mm256_set1_ps(pj);
            for (bb, a) in acc.iter_mut().enumerate() {
                for (c, a) in a.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(w, q8_chunk(base.add(j * stride), 4 * (b0 + bb) + c), *a);
                }
            }
        }
        for (bb, a) in acc.iter().enumerate() {
            for (c, a) in a.iter().enumerate() {
                _mm256_storeu_ps(o.add(Q8_0_VALUES * bb + 8 * c), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::quantize_q8_0;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2000) as f32 / 500.0 - 2.0).collect()
    }

    /// Both products of every format against f64 sums over the stored values
    /// widened one by one, on the scalar and the SIMD path, for runs of
    /// 1..=19 vectors (the 8-at-a-time body and its remainder) at a stride
    /// wider than a vector.
    #[test]
    fn products_match_the_widened_values() {
        fn check<F: KvFormat>(dim: usize, stored: &[F::Unit], stride: usize, widened: &[f32]) {
            let q = data(dim, 9);
            for n in [1usize, 7, 8, 19] {
                let want_s: Vec<f64> =
                    (0..n).map(|j| 0.5 * q.iter().zip(&widened[j * dim..]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()).collect();
                let p = data(n, 4);
                let start = data(dim, 5);
                let want_o: Vec<f64> = (0..dim)
                    .map(|d| start[d] as f64 + (0..n).map(|j| p[j] as f64 * widened[j * dim + d] as f64).sum::<f64>())
                    .collect();
                for simd in [false, crate::kernels::select::avx2() && F::simd_dim(dim)] {
                    let mut s = vec![0f32; n];
                    F::scores_row(&q, stored, stride, dim, 0.5, &mut s, simd);
                    let mut o = start.clone();
                    F::weighted_values(&p, stored, stride, dim, &mut o, true, simd);
                    for (a, b) in s.iter().zip(&want_s).chain(o.iter().zip(&want_o)) {
                        assert!((*a as f64 - b).abs() < 1e-3, "dim {dim}, n {n}, simd {simd}: {a} vs {b}");
                    }
                    let mut w = vec![0f32; n * dim];
                    F::widen(stored, stride, dim, n, &mut w, simd);
                    assert_eq!(w, widened[..n * dim], "dim {dim}, n {n}, simd {simd}: widened");
                }
            }
        }
        // Float heads of every width class of the SIMD loops (8 + 8k dims,
        // 64 at a time), Q8_0 ones of one and two blocks at a time.
        for dim in [8usize, 32, 48, 64, 96, 120, 256] {
            let n = 19;
            let raw = data(n * dim, 7);
            // Vectors at a stride of dim + 8 units (two heads' worth, say).
            let spread = |w: usize| move |j: usize| j * (w + 8);
            let f32s: Vec<f32> = (0..n).flat_map(|j| raw[j * dim..(j + 1) * dim].iter().copied().chain([0.0; 8])).collect();
            check::<F32s>(dim, &f32s, dim + 8, &raw);
            let f16s: Vec<f16> = f32s.iter().map(|&x| f16::from_f32(x)).collect();
            let w16: Vec<f32> = raw.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
            check::<F16s>(dim, &f16s, dim + 8, &w16);
            let bf16s: Vec<bf16> = f32s.iter().map(|&x| bf16::from_f32(x)).collect();
            let wbf: Vec<f32> = raw.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
            check::<Bf16s>(dim, &bf16s, dim + 8, &wbf);
            if dim % Q8_0_VALUES != 0 {
                continue;
            }
            let width = dim / Q8_0_VALUES * Q8_0_BYTES;
            let at = spread(width);
            let mut q8 = vec![0u8; at(n)];
            let mut wq8 = vec![0f32; n * dim];
            for j in 0..n {
                quantize_q8_0(&raw[j * dim..(j + 1) * dim], &mut q8[at(j)..at(j) + width]);
                crate::kv_cache::dequantize_q8_0(&q8[at(j)..at(j) + width], &mut wq8[j * dim..(j + 1) * dim]);
            }
            check::<Q8s>(dim, &q8, width + 8, &wq8);
        }
    }
}
