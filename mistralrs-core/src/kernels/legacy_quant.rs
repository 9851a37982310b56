//! Matrix products with llama.cpp's "legacy" block types Q4_0, Q4_1, Q5_0,
//! Q5_1 and Q8_0 (32 weights a block). As llama.cpp does, activations are
//! quantized per block to Q8_0 (for Q4_0, Q5_0, Q8_0) or Q8_1 (for Q4_1,
//! Q5_1) and the dot products are integer; with AVX2 (detected at run time)
//! 32 products take a few instructions, otherwise a scalar loop gives the
//! same sums. Each weight row is walked once for a group of tokens, which
//! is what makes prompts fast (candle's Q4_0/Q8_0 paths walk it per token).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;

/// Products smaller than this (multiply-adds) are not split across threads.
const PARALLEL_MIN_MACS: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl Kind {
    fn block_bytes(self) -> usize {
        match self {
            Kind::Q4_0 => 18,
            Kind::Q4_1 => 20,
            Kind::Q5_0 => 22,
            Kind::Q5_1 => 24,
            Kind::Q8_0 => 34,
        }
    }

    /// Activations as Q8_1 (with the block sum) for the types with a minimum.
    fn with_sum(self) -> bool {
        matches!(self, Kind::Q4_1 | Kind::Q5_1)
    }

    /// What the unsigned quants are offset by (their zero point), if any.
    fn offset(self) -> i32 {
        match self {
            Kind::Q4_0 => 8,
            Kind::Q5_0 => 16,
            _ => 0,
        }
    }
}

/// One activation block quantized to 8 bits: `x ≈ d * qs`, `s = d * Σ qs`.
#[derive(Debug, Clone, Copy)]
struct Q8Block {
    d: f32,
    s: f32,
    qs: [i8; QK],
}

/// A (rows, cols) weight matrix of one of the legacy types, raw blocks row by row.
#[derive(Debug)]
pub struct LegacyQuantMatrix {
    kind: Kind,
    data: Vec<u8>,
    rows: usize,
    cols: usize,
    avx2: bool,
}

impl LegacyQuantMatrix {
    /// Some(matrix) for a 2-D Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 tensor on the CPU, None otherwise.
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
        let kind = match t.dtype() {
            GgmlDType::Q4_0 => Kind::Q4_0,
            GgmlDType::Q8_0 => Kind::Q8_0,
            GgmlDType::Q4_1 => Kind::Q4_1,
            GgmlDType::Q5_0 => Kind::Q5_0,
            GgmlDType::Q5_1 => Kind::Q5_1,
            _ => return Ok(None),
        };
        if !t.device().is_cpu() {
            return Ok(None);
        }
        let Ok((rows, cols)) = t.shape().dims2() else { return Ok(None) };
        Ok(Some(Self { kind, data: t.data()?.into_owned(), rows, cols, avx2: has_avx2() }))
    }

    /// The same blocks as a candle tensor (to dequantize, e.g. to merge an adapter).
    pub fn to_qtensor(&self) -> Result<QTensor> {
        let dtype = match self.kind {
            Kind::Q4_0 => GgmlDType::Q4_0,
            Kind::Q8_0 => GgmlDType::Q8_0,
            Kind::Q4_1 => GgmlDType::Q4_1,
            Kind::Q5_0 => GgmlDType::Q5_0,
            Kind::Q5_1 => GgmlDType::Q5_1,
        };
        candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &self.data, vec![self.rows, self.cols], &candle_core::Device::Cpu)
    }

    /// `x`: (tokens, cols) f32 -> (tokens, rows).
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            candle_core::bail!("matmul: input has {k} columns, the weight {}", self.cols);
        }
        let xs = x.to_dtype(candle_core::DType::F32)?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let blocks = k / QK;
        let with_sum = self.kind.with_sum();
        let acts: Vec<Q8Block> = xs.chunks_exact(QK).map(|c| quantize_q8(c, with_sum)).collect();
        let row_bytes = blocks * self.kind.block_bytes();
        // One weight row at a time against every token: the row stays in cache.
        let mut out_t = vec![0f32; self.rows * m];
        let one_row = |(r, out): (usize, &mut [f32])| {
            let w = &self.data[r * row_bytes..(r + 1) * row_bytes];
            self.dot_rows(w, &acts, blocks, out);
        };
        // Waking the thread pool costs more than a small product (decode
        // steps are hundreds of them), so those run on the calling thread.
        if self.rows * m * k < PARALLEL_MIN_MACS {
            out_t.chunks_mut(m).enumerate().for_each(one_row);
        } else {
            let per_task = (self.rows / (4 * rayon::current_num_threads())).max(1);
            out_t.par_chunks_mut(m).enumerate().with_min_len(per_task).for_each(one_row);
        }
        let out = Tensor::from_vec(out_t, (self.rows, m), x.device())?;
        if m == 1 {
            out.reshape((1, self.rows))
        } else {
            out.t()?.contiguous()
        }
    }

    /// `out[i]` = weight row `w` . token i's activations (`blocks` blocks each).
    fn dot_rows(&self, w: &[u8], acts: &[Q8Block], blocks: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // Tokens in groups, so each weight block is unpacked once per group.
            for (g, o) in out.chunks_mut(avx2::GROUP).enumerate() {
                let acts = &acts[g * avx2::GROUP * blocks..(g * avx2::GROUP + o.len()) * blocks];
                // SAFETY: AVX2, FMA and F16C were detected at run time.
                unsafe { avx2::dot_group(self.kind, w, acts, blocks, o) };
            }
            return;
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = scalar_dot(self.kind, w, &acts[i * blocks..(i + 1) * blocks]);
        }
    }
}

pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// llama.cpp's x86 `quantize_row_q8_0/q8_1`: scale 127/amax, round half to even.
fn quantize_q8(x: &[f32], with_sum: bool) -> Q8Block {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
        sum += *q as i32;
    }
    let s = if with_sum { f16::from_f32(d * sum as f32).to_f32() } else { 0.0 };
    Q8Block { d: f16::from_f32(d).to_f32(), s, qs }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 32 quants of a block as i32 (Q4_0 and Q5_0 with their offset taken
/// off, so all are signed where the type is) and its (d, m).
fn unpack(kind: Kind, b: &[u8]) -> ([i32; QK], f32, f32) {
    if kind == Kind::Q8_0 {
        let mut q = [0i32; QK];
        for (q, &v) in q.iter_mut().zip(&b[2..34]) {
            *q = v as i8 as i32;
        }
        return (q, f16_at(b, 0), 0.0);
    }
    let (d, m, qh, qs) = match kind {
        Kind::Q4_0 => (f16_at(b, 0), 0.0, 0u32, &b[2..18]),
        Kind::Q4_1 => (f16_at(b, 0), f16_at(b, 2), 0u32, &b[4..20]),
        Kind::Q5_0 => (f16_at(b, 0), 0.0, u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22]),
        Kind::Q5_1 => (f16_at(b, 0), f16_at(b, 2), u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &b[8..24]),
        Kind::Q8_0 => unreachable!("handled above"),
    };
    let mut q = [0i32; QK];
    for j in 0..QK / 2 {
        q[j] = ((qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4)) as i32 - kind.offset();
        q[j + QK / 2] = ((qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4)) as i32 - kind.offset();
    }
    (q, d, m)
}

fn scalar_dot(kind: Kind, w: &[u8], acts: &[Q8Block]) -> f32 {
    let bb = kind.block_bytes();
    let mut sum = 0f32;
    for (b, a) in w.chunks_exact(bb).zip(acts) {
        let (q, d, m) = unpack(kind, b);
        let sumi: i32 = q.iter().zip(&a.qs).map(|(&qj, &yj)| qj * yj as i32).sum();
        sum += d * a.d * sumi as f32 + if kind.with_sum() { m * a.s } else { 0.0 };
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// 32 bits -> 32 bytes, 0xFF where the bit is set.
    #[target_feature(enable = "avx2")]
    unsafe fn bytes_from_bits(bits: u32) -> __m256i {
        let shuf = _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303);
        let x = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
        let mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfeu64 as i64);
        let x = _mm256_or_si256(x, mask);
        _mm256_cmpeq_epi8(x, _mm256_set1_epi64x(-1))
    }

    /// Tokens whose accumulators are kept while a weight row is walked.
    pub const GROUP: usize = 8;

    #[target_feature(enable = "avx2")]
    unsafe fn hsum(v: __m256) -> f32 {
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
    }

    /// `out[i]` = row `w` . tokens' activations (`out.len()` <= GROUP tokens,
    /// `blocks` blocks each, token after token in `acts`).
    /// An f16 at `b[at..at + 2]`, converted by the F16C instruction.
    #[inline(always)]
    unsafe fn f16c_at(b: &[u8], at: usize) -> f32 {
        let bits = u16::from_le_bytes([b[at], b[at + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_group(kind: Kind, w: &[u8], acts: &[Q8Block], blocks: usize, out: &mut [f32]) {
        let n = out.len();
        let bb = kind.block_bytes();
        let low = _mm256_set1_epi8(0x0F);
        let ones16 = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); GROUP];
        let mut acc_m = [0f32; GROUP];
        let offset = _mm256_set1_epi8(kind.offset() as i8);
        for (blk, b) in w.chunks_exact(bb).enumerate() {
            if kind == Kind::Q8_0 {
                // Signed weights: |w| times y with w's sign, so maddubs sees u8 x i8.
                let d = f16c_at(b, 0);
                let q = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
                let aq = _mm256_sign_epi8(q, q);
                for i in 0..n {
                    let a = &acts[i * blocks + blk];
                    let y = _mm256_sign_epi8(_mm256_loadu_si256(a.qs.as_ptr() as *const __m256i), q);
                    let sumi = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, y), ones16);
                    acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(sumi), acc[i]);
                }
                continue;
            }
            let (d, m, qh, qs_at) = match kind {
                Kind::Q4_0 => (f16c_at(b, 0), 0.0, 0u32, 2),
                Kind::Q8_0 => unreachable!("handled above"),
                Kind::Q4_1 => (f16c_at(b, 0), f16c_at(b, 2), 0u32, 4),
                Kind::Q5_0 => (f16c_at(b, 0), 0.0, u32::from_le_bytes([b[2], b[3], b[4], b[5]]), 6),
                Kind::Q5_1 => (f16c_at(b, 0), f16c_at(b, 2), u32::from_le_bytes([b[4], b[5], b[6], b[7]]), 8),
            };
            let raw = _mm_loadu_si128(b.as_ptr().add(qs_at) as *const __m128i);
            // Low nibbles are quants 0..15, high nibbles 16..31.
            let mut q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
            if matches!(kind, Kind::Q5_0 | Kind::Q5_1) {
                q = _mm256_or_si256(q, _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10)));
            }
            for i in 0..n {
                let a = &acts[i * blocks + blk];
                let y = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                // u8 x i8 -> i16 pairs -> i32.
                let mut sumi = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones16);
                if kind.offset() != 0 {
                    // Q4_0 / Q5_0 quants are offset by 8 / 16: subtract offset · Σy.
                    let off_y = _mm256_madd_epi16(_mm256_maddubs_epi16(offset, y), ones16);
                    sumi = _mm256_sub_epi32(sumi, off_y);
                }
                acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(sumi), acc[i]);
                acc_m[i] += m * a.s;
            }
        }
        for i in 0..n {
            out[i] = hsum(acc[i]) + acc_m[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Against candle's dequantization: the product with quantized
    /// activations stays within the activation rounding of the f32 product.
    #[test]
    fn legacy_products_match_dequantized_weights() {
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0] {
            let w = Tensor::randn(0f32, 1.0, (24, 128), &dev).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let x = Tensor::randn(0f32, 1.0, (3, 128), &dev).unwrap();
            let want = x.matmul(&q.dequantize(&dev).unwrap().t().unwrap()).unwrap();
            let mut mat = LegacyQuantMatrix::from_qtensor(&q).unwrap().unwrap();
            for avx2 in [false, mat.avx2] {
                mat.avx2 = avx2;
                let got = mat.matmul(&x).unwrap();
                let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(err < 0.02 * scale, "{dtype:?} avx2={avx2}: max error {err} (scale {scale})");
            }
            // candle's kernels quantize the activations alike, but round Q8_1's
            // `s` as f16(Σq)·f16(d) where llama.cpp (and this file) take f16(d·Σq):
            // the two agree to that rounding.
            let candle = candle_core::quantized::QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
            let theirs = candle_core::Module::forward(&candle, &x).unwrap();
            let ours = mat.matmul(&x).unwrap();
            let err = (&theirs - &ours).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 5e-3 * scale, "{dtype:?}: ours vs candle's quantized product differ by {err} (scale {scale})");
            // The SIMD and scalar paths compute the same integer sums.
            let a = quantize_q8(&(0..32).map(|i| (i as f32 - 15.5) / 7.0).collect::<Vec<_>>(), true);
            let row = &mat.data[..mat.cols / QK * mat.kind.block_bytes()];
            let acts = vec![a; mat.cols / QK];
            if mat.avx2 {
                #[cfg(target_arch = "x86_64")]
                {
                    let s = scalar_dot(mat.kind, row, &acts);
                    let mut v = [0f32];
                    unsafe { avx2::dot_group(mat.kind, row, &acts, acts.len(), &mut v) };
                    let v = v[0];
                    assert!((s - v).abs() <= 1e-4 * s.abs().max(1.0), "{dtype:?}: {s} vs {v}");
                }
            }
        }
    }
}
