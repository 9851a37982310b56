//! Matrix products with llama.cpp's "legacy" block types Q4_0, Q4_1, Q5_0,
//! Q5_1 and Q8_0 (32 weights a block). As llama.cpp does, activations are
//! quantized per block to Q8_0 (for Q4_0, Q5_0, Q8_0) or Q8_1 (for Q4_1,
//! Q5_1) and the dot products are integer. Three paths, chosen at load for
//! the running CPU, compute the same integer sums:
//! - AVX-512 VNNI: weights repacked into 8-row panels (`legacy_panels.rs`);
//! - AVX2: the original row layout, one weight row against up to 8 tokens
//!   (each block unpacked once per group of tokens);
//! - scalar, anywhere else.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use half::f16;
use rayon::prelude::*;

use super::block_matrix::BlockMatrix;
use super::legacy_blocks::{Kind, Q8Block, QK};
use super::legacy_panels::{self, PanelSimd, PANEL};
use super::panel_product;
use super::stored_rows::StoredRows;

/// Products smaller than this (multiply-adds) are not split across threads:
/// waking the pool costs more than they do (decode steps are hundreds of them).
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// How the weights are laid out and which code multiplies them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Path {
    Scalar,
    /// AVX2 on the row layout (rows that do not fill panels).
    Avx2,
    Panels(PanelSimd),
}

/// A (rows, cols) weight matrix of one of the legacy types.
#[derive(Debug)]
pub struct LegacyQuantMatrix {
    kind: Kind,
    /// Blocks row by row, or 8-row panels for `Path::Panels`.
    data: Vec<u8>,
    rows: usize,
    cols: usize,
    path: Path,
}

fn kind_of(dtype: GgmlDType) -> Option<Kind> {
    Some(match dtype {
        GgmlDType::Q4_0 => Kind::Q4_0,
        GgmlDType::Q8_0 => Kind::Q8_0,
        GgmlDType::Q4_1 => Kind::Q4_1,
        GgmlDType::Q5_0 => Kind::Q5_0,
        GgmlDType::Q5_1 => Kind::Q5_1,
        _ => return None,
    })
}

impl LegacyQuantMatrix {
    /// Some(matrix) for a 2-D Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 tensor on the CPU, None otherwise.
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
        Self::with_path(t, best_path())
    }

    /// As `from_qtensor`, on a given path (falling back to the row layout
    /// where the rows do not fill panels).
    pub(crate) fn with_path(t: &QTensor, path: Path) -> Result<Option<Self>> {
        let (Some(kind), true, Ok((rows, cols))) = (kind_of(t.dtype()), t.device().is_cpu(), t.shape().dims2()) else {
            return Ok(None);
        };
        let data = t.data()?;
        let Some(src) = StoredRows::new(&data, cols / QK * kind.block_bytes(), None) else {
            return Ok(None);
        };
        Ok(Some(Self::build(kind, &src, rows, cols, path)))
    }

    /// Some(matrix) for (rows, cols) stored blocks of a legacy `dtype`, None
    /// for other types.
    pub fn from_stored(dtype: GgmlDType, src: &StoredRows, rows: usize, cols: usize) -> Option<Self> {
        let kind = kind_of(dtype)?;
        (cols % QK == 0 && src.rows() == rows).then(|| Self::build(kind, src, rows, cols, best_path()))
    }

    fn build(kind: Kind, src: &StoredRows, rows: usize, cols: usize, path: Path) -> Self {
        let (path, data) = match path {
            Path::Panels(_) if rows % PANEL == 0 => (path, legacy_panels::repack(kind, src, rows, cols / QK)),
            Path::Panels(_) => (if has_avx2() { Path::Avx2 } else { Path::Scalar }, src.in_order().into_owned()),
            _ => (path, src.in_order().into_owned()),
        };
        Self { kind, data, rows, cols, path }
    }
}

impl BlockMatrix for LegacyQuantMatrix {
    /// The same blocks as a candle tensor (to dequantize, e.g. to merge an adapter).
    fn to_qtensor(&self) -> Result<QTensor> {
        let dtype = match self.kind {
            Kind::Q4_0 => GgmlDType::Q4_0,
            Kind::Q8_0 => GgmlDType::Q8_0,
            Kind::Q4_1 => GgmlDType::Q4_1,
            Kind::Q5_0 => GgmlDType::Q5_0,
            Kind::Q5_1 => GgmlDType::Q5_1,
        };
        let rows = match self.path {
            Path::Panels(_) => std::borrow::Cow::Owned(legacy_panels::unpack(
                self.kind,
                &self.data,
                self.rows,
                self.cols / QK,
            )),
            _ => std::borrow::Cow::Borrowed(&self.data),
        };
        candle_core::quantized::ggml_file::qtensor_from_ggml(
            dtype,
            &rows,
            vec![self.rows, self.cols],
            &candle_core::Device::Cpu,
        )
    }

    /// Rows `ids` dequantized, (ids, cols): an embedding lookup in the table
    /// that a tied output head multiplies with.
    fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = ids.to_vec1::<u32>()?;
        let blocks = self.cols / QK;
        let bb = self.kind.block_bytes();
        let mut raw = vec![0u8; blocks * bb];
        let mut out = vec![0f32; ids.len() * self.cols];
        for (&id, o) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
            let r = id as usize;
            if r >= self.rows {
                candle_core::bail!("token id {r} is outside the embedding table ({} rows)", self.rows);
            }
            let row: &[u8] = match self.path {
                Path::Panels(_) => {
                    legacy_panels::row_blocks(self.kind, &self.data, r, blocks, &mut raw);
                    &raw
                }
                _ => &self.data[r * blocks * bb..(r + 1) * blocks * bb],
            };
            // ggml's dequantization: d·(q - offset), or d·q + m.
            for (b, o) in row.chunks_exact(bb).zip(o.chunks_exact_mut(QK)) {
                let (q, d, m) = unpack(self.kind, b);
                for (o, q) in o.iter_mut().zip(q) {
                    *o = if self.kind.with_sum() { q as f32 * d + m } else { q as f32 * d };
                }
            }
        }
        Tensor::from_vec(out, (ids.len(), self.cols), &candle_core::Device::Cpu)
    }

    /// `x`: (tokens, cols) f32 -> (tokens, rows).
    fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let (acts, m) = panel_product::with_f32_rows(x, self.cols, |xs, m| (self.quantize_acts(xs), m))?;
        let mut out = vec![0f32; m * self.rows];
        if let Path::Panels(simd) = self.path {
            self.panel_product(simd, &acts, m, &mut out);
        } else {
            self.row_product(&acts, m, &mut out);
        }
        Tensor::from_vec(out, (m, self.rows), x.device())
    }
}

impl LegacyQuantMatrix {
    /// Every 32 activations as one Q8 block, token after token.
    fn quantize_acts(&self, xs: &[f32]) -> Vec<Q8Block> {
        let (with_sum, offset) = (self.kind.with_sum(), legacy_panels::panel_offset(self.kind));
        let avx2 = self.path != Path::Scalar;
        let one = |c: &[f32]| quantize_q8(c, with_sum, offset, avx2);
        if xs.len() >= 16 * self.cols {
            xs.par_chunks_exact(QK).map(one).collect()
        } else {
            xs.chunks_exact(QK).map(one).collect()
        }
    }

    /// `out` (m, rows) from the panel layout: each task takes a range of
    /// panels and walks it once per chunk of tokens.
    fn panel_product(&self, simd: PanelSimd, acts: &[Q8Block], m: usize, out: &mut [f32]) {
        let blocks = self.cols / QK;
        let panel_bytes = blocks * legacy_panels::panel_block_bytes(self.kind);
        panel_product::for_each_tile(self.rows, self.cols, m, out, |p, first, tokens, cell| {
            let panel = &self.data[p * panel_bytes..(p + 1) * panel_bytes];
            // SAFETY: the path is only chosen where the CPU has the features;
            // the driver hands each call its own (tokens, 8-row) cells.
            unsafe { legacy_panels::panel_dot(simd, self.kind, panel, &acts[first * blocks..], blocks, tokens, cell.0, self.rows) };
        });
    }

    /// `out` (m, rows) from the row layout: one weight row at a time against
    /// every token, so the row stays in cache.
    fn row_product(&self, acts: &[Q8Block], m: usize, out: &mut [f32]) {
        let blocks = self.cols / QK;
        let row_bytes = blocks * self.kind.block_bytes();
        let mut out_t = vec![0f32; self.rows * m];
        let one_row = |(r, o): (usize, &mut [f32])| {
            let w = &self.data[r * row_bytes..(r + 1) * row_bytes];
            self.dot_rows(w, acts, blocks, o);
        };
        if self.rows * m * self.cols < PARALLEL_MIN_MACS {
            out_t.chunks_mut(m).enumerate().for_each(one_row);
        } else {
            let per_task = (self.rows / (4 * rayon::current_num_threads())).max(1);
            out_t
                .par_chunks_mut(m)
                .enumerate()
                .with_min_len(per_task)
                .for_each(one_row);
        }
        for (r, col) in out_t.chunks_exact(m).enumerate() {
            for (t, v) in col.iter().enumerate() {
                out[t * self.rows + r] = *v;
            }
        }
    }

    /// `out[i]` = weight row `w` . token i's activations (`blocks` blocks each).
    fn dot_rows(&self, w: &[u8], acts: &[Q8Block], blocks: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.path == Path::Avx2 {
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

fn best_path() -> Path {
    match PanelSimd::widest() {
        Some(simd) => Path::Panels(simd),
        None => Path::Scalar,
    }
}

/// The kernel the legacy types run on here, for `build_info()`.
pub(crate) fn path_name() -> &'static str {
    match best_path() {
        Path::Panels(PanelSimd::Vnni) => "mistralrs AVX-512 VNNI 8-row panels (llama.cpp's Q8 activations)",
        Path::Panels(PanelSimd::Avx2) => "mistralrs AVX2 8-row panels (llama.cpp's Q8 activations)",
        Path::Avx2 => "mistralrs AVX2 (llama.cpp's Q8 activations)",
        Path::Scalar => "mistralrs scalar (llama.cpp's Q8 activations)",
    }
}

fn has_avx2() -> bool {
    super::select::avx2()
}

/// llama.cpp's x86 `quantize_row_q8_0/q8_1`: scale 127/amax, round half to
/// even; `offset` is the panel layout's zero point, for `bias`.
fn quantize_q8(x: &[f32], with_sum: bool, offset: i32, simd: bool) -> Q8Block {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: only asked for where AVX2, FMA and F16C were detected.
        return unsafe { avx2::quantize_q8(x, with_sum, offset) };
    }
    let _ = simd;
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
    }
    q8_block(amax / 127.0, qs, with_sum, offset)
}

fn q8_block(d: f32, qs: [i8; QK], with_sum: bool, offset: i32) -> Q8Block {
    let sum: i32 = qs.iter().map(|&q| q as i32).sum();
    let s = if with_sum {
        f16::from_f32(d * sum as f32).to_f32()
    } else {
        0.0
    };
    Q8Block {
        d: f16::from_f32(d).to_f32(),
        s,
        bias: -offset * sum,
        qs,
    }
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
        Kind::Q5_0 => (
            f16_at(b, 0),
            0.0,
            u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
            &b[6..22],
        ),
        Kind::Q5_1 => (
            f16_at(b, 0),
            f16_at(b, 2),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            &b[8..24],
        ),
        Kind::Q8_0 => unreachable!("handled above"),
    };
    let mut q = [0i32; QK];
    for j in 0..QK / 2 {
        q[j] = ((qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4)) as i32 - kind.offset();
        q[j + QK / 2] =
            ((qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4)) as i32 - kind.offset();
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

    use crate::kernels::legacy_blocks::bytes_from_bits;

    /// `super::quantize_q8` with 8 lanes: the same scale, rounding and sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_q8(x: &[f32], with_sum: bool, offset: i32) -> Q8Block {
        assert!(x.len() >= QK);
        let p = x.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let abs = |v: __m256| _mm256_andnot_ps(sign, v);
        let m = _mm256_max_ps(
            _mm256_max_ps(abs(v[0]), abs(v[1])),
            _mm256_max_ps(abs(v[2]), abs(v[3])),
        );
        let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        let amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q = v.map(|vi| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(vi, id),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        });
        // i32 -> i16 -> i8 packs interleave 128-bit lanes; the permute restores order.
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let mut qs = [0i8; QK];
        _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, packed);
        q8_block(amax / 127.0, qs, with_sum, offset)
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
    pub unsafe fn dot_group(
        kind: Kind,
        w: &[u8],
        acts: &[Q8Block],
        blocks: usize,
        out: &mut [f32],
    ) {
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
                    let y =
                        _mm256_sign_epi8(_mm256_loadu_si256(a.qs.as_ptr() as *const __m256i), q);
                    let sumi = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, y), ones16);
                    acc[i] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(sumi), acc[i]);
                }
                continue;
            }
            let (d, m, qh, qs_at) = match kind {
                Kind::Q4_0 => (f16c_at(b, 0), 0.0, 0u32, 2),
                Kind::Q8_0 => unreachable!("handled above"),
                Kind::Q4_1 => (f16c_at(b, 0), f16c_at(b, 2), 0u32, 4),
                Kind::Q5_0 => (
                    f16c_at(b, 0),
                    0.0,
                    u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
                    6,
                ),
                Kind::Q5_1 => (
                    f16c_at(b, 0),
                    f16c_at(b, 2),
                    u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                    8,
                ),
            };
            let raw = _mm_loadu_si128(b.as_ptr().add(qs_at) as *const __m128i);
            // Low nibbles are quants 0..15, high nibbles 16..31.
            let mut q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
            if matches!(kind, Kind::Q5_0 | Kind::Q5_1) {
                q = _mm256_or_si256(
                    q,
                    _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10)),
                );
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

    const TYPES: [GgmlDType; 5] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
    ];

    fn paths() -> Vec<Path> {
        let mut v = vec![Path::Scalar];
        if has_avx2() {
            v.push(Path::Avx2);
        }
        v.extend(PanelSimd::all().into_iter().map(Path::Panels));
        v
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Against candle's dequantization: the product with quantized
    /// activations stays within the activation rounding of the f32 product;
    /// against candle's own quantized product (which quantizes activations
    /// as llama.cpp does) it agrees to the f16 rounding of Q8_1's `s`; and
    /// every path computes the same integer sums as the scalar one. Shapes
    /// cover full and partial panels (24 and 20 rows), every tile height
    /// (1..8 tokens and a remainder of 7 after 64), and the threaded split.
    #[test]
    fn legacy_products_match_dequantized_weights() {
        let dev = Device::Cpu;
        for dtype in TYPES {
            for (rows, m) in [(24, 1), (24, 3), (20, 13), (64, 71), (8, 8)] {
                let w = Tensor::randn(0f32, 1.0, (rows, 128), &dev).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let x = Tensor::randn(0f32, 1.0, (m, 128), &dev).unwrap();
                let want = x.matmul(&q.dequantize(&dev).unwrap().t().unwrap()).unwrap();
                let scale = max_abs(&want);
                let scalar = LegacyQuantMatrix::with_path(&q, Path::Scalar)
                    .unwrap()
                    .unwrap()
                    .matmul(&x)
                    .unwrap();
                for path in paths() {
                    let mat = LegacyQuantMatrix::with_path(&q, path).unwrap().unwrap();
                    let got = mat.matmul(&x).unwrap();
                    assert_eq!(got.dims2().unwrap(), (m, rows));
                    let err = max_abs(&(&got - &want).unwrap());
                    assert!(
                        err < 0.02 * scale,
                        "{dtype:?} {path:?} {rows}x{m}: max error {err} (scale {scale})"
                    );
                    let err = max_abs(&(&got - &scalar).unwrap());
                    assert!(
                        err < 1e-5 * scale.max(1.0),
                        "{dtype:?} {path:?} {rows}x{m}: {err} from the scalar sums"
                    );
                    // Round trip through the stored layout.
                    let back = mat.to_qtensor().unwrap();
                    assert_eq!(
                        back.data().unwrap(),
                        q.data().unwrap(),
                        "{dtype:?} {path:?}: blocks changed"
                    );
                }
                let candle = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
                let theirs = candle_core::Module::forward(&candle, &x).unwrap();
                let err = max_abs(&(&theirs - &scalar).unwrap());
                assert!(
                    err < 5e-3 * scale,
                    "{dtype:?}: ours vs candle's quantized product differ by {err} (scale {scale})"
                );
            }
        }
    }

    /// The SIMD activation quantizer gives the scalar one's blocks bit for
    /// bit, ties (exact halves) included.
    #[test]
    fn simd_activation_quantizer_matches_scalar() {
        if !has_avx2() {
            return;
        }
        let mut xs: Vec<f32> = (0..32 * 64)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0)
            .collect();
        // A block whose values land exactly on .5 steps: amax 127 -> id 1.
        for (i, v) in xs[..32].iter_mut().enumerate() {
            *v = if i == 0 { 127.0 } else { i as f32 - 15.5 };
        }
        xs[32..64].fill(0.0);
        for c in xs.chunks_exact(QK) {
            for (with_sum, offset) in [(false, 8), (true, 0)] {
                let a = quantize_q8(c, with_sum, offset, false);
                let b = quantize_q8(c, with_sum, offset, true);
                assert_eq!((a.d, a.s, a.bias, a.qs), (b.d, b.s, b.bias, b.qs));
            }
        }
    }
}
