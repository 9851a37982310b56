//! Q4_K and Q6_K on AVX-512 VNNI or AVX2, with the weights repacked at load into
//! panels of 8 rows as the legacy types are (`legacy_panels.rs`), replacing
//! candle's kernels, which keep a second, repacked copy of every Q4_K weight
//! (and of every Q6_K weight once a prompt has run).
//!
//! A Q4_K super-block is 256 weights: `d`, `dmin` (f16), eight 32-weight
//! sub-blocks with 6-bit scales and mins packed in 12 bytes, and 4-bit
//! quants (bytes 32p..32p+32 hold sub-block 2p in their low nibbles and
//! 2p+1 in their high ones). A weight is `d·sc·q − dmin·m`. Activations are
//! quantized per 256 to llama.cpp's Q8_K (`quantize_row_q8_K_ref`), so a
//! row's product is, as in ggml's `vec_dot_q4_K_q8_K`,
//!   Σ_blocks dy·(d·Σ_s sc_s·Σ q·y − dmin·Σ_s m_s·Σ_{sub-block s} y)
//! with exact integer inner sums.
//!
//! A panel-block (8 rows × one super-block, 1184 bytes against the original
//! 1152) holds, for lane r = row r:
//!   d: 8 × f16 | dmin: 8 × f16 | sc[s][r]: 64 × u8 | m[k][r][2] (sub-blocks
//!   2k, 2k+1): 64 × u8 | qs[p][g][r]: 4 bytes each, row r's bytes
//!   32p+4g..32p+4g+3 (1024 bytes).
//! One `vpdpbusd` per (p, g) and nibble half adds 4 products into each of
//! the 8 rows' lanes; `vpmulld` applies the sub-block scales and one
//! `vpdpwssd` per pair of sub-blocks the mins.
//!
//! A Q6_K super-block is 256 weights `d·sc·(q − 32)`: 6-bit quants (low
//! nibbles in `ql`, high 2 bits in `qh`), sixteen 16-weight sub-blocks with
//! i8 scales, `d` (f16). In ggml's order, half h, quarter j, position l
//! (weight 128h + 32j + l) takes nibble j/2 of ql[64h + 32(j%2) + l], bits
//! 2j.. of qh[32h + l] and scale sc[8h + 2j + l/16]. A panel-block (1680
//! bytes, as the 8 original blocks) holds d: 8 × f16 | sc[k][r][2] (sub-blocks
//! 2k, 2k+1): 128 × i8 | w[h][g][v][r]: 4 bytes each (1536 bytes), for
//! positions l = 4g.. of row r, the quants q0..q3 of quarters j = 0..3 as
//! three bytes: v = 0, 1, 2 hold q0, q1, q2 in their low 6 bits and bits
//! 0–1, 2–3, 4–5 of q3 in their top 2. Three quarters' quants are then one
//! AND from the loaded bytes, and the fourth's a few shifts, where ggml's
//! nibble-and-bits split costs shifts, ANDs and an OR for each. With that
//! split the AVX2 tile was bound by its instructions, not by memory: a
//! one-token product on this project's 2-core Zen 4 VM read 25 GB/s of Q6_K
//! whether the matrix was in cache or not, against 34 for Q4_K from DRAM;
//! with this layout it reads about 32 GB/s, Q4_K's rate in the same runs.
//! The −32 is applied through Q8_K's per-16 sums, Σ_s sc_s·(−32·Σ_{sub-block
//! s} y): one `vpmaddwd` per pair of sub-blocks, where a `vpmaddwd` and a
//! broadcast per sub-block did it before.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use half::f16;
use rayon::prelude::*;

use super::block_matrix::BlockMatrix;
use super::out_ptr::OutPtr;
use super::panel_product::{self, tile_height, PanelSimd, PANEL};
use super::select;
use super::stored_rows::StoredRows;

pub(crate) const QK_K: usize = 256;
/// The K-quant types with panel kernels.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KKind {
    Q4K,
    Q6K,
}

impl KKind {
    fn block_bytes(self) -> usize {
        match self {
            KKind::Q4K => Q4K_BLOCK,
            KKind::Q6K => Q6K_BLOCK,
        }
    }

    fn panel_block_bytes(self) -> usize {
        match self {
            KKind::Q4K => Q4K_PANEL_BLOCK_BYTES,
            KKind::Q6K => Q6K_PANEL_BLOCK_BYTES,
        }
    }

    fn dtype(self) -> GgmlDType {
        match self {
            KKind::Q4K => GgmlDType::Q4K,
            KKind::Q6K => GgmlDType::Q6K,
        }
    }
}

// Q4_K panel-block layout.
const Q4K_BLOCK: usize = 144;
const Q4K_PANEL_BLOCK_BYTES: usize = 1184;
const SC_AT: usize = 32;
const MIN_AT: usize = 96;
const QS_AT: usize = 160;

// Q6_K panel-block layout.
const Q6K_BLOCK: usize = 210;
const Q6K_PANEL_BLOCK_BYTES: usize = 1680;
const Q6_SC_AT: usize = 16;
const Q6_W_AT: usize = 144;

/// One activation super-block as llama.cpp's Q8_K: `x ≈ d·qs`, and the
/// sums of its quants over each 32 (Q4_K's sub-blocks) and each 16 (Q6_K's,
/// and ggml's `bsums`).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q8KBlock {
    d: f32,
    ysum: [i16; 8],
    bsum: [i16; 16],
    qs: [i8; QK_K],
}

/// ggml's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min.
pub(crate) fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The inverse of `scale_min` over all eight sub-blocks (the 12 bytes hold
/// exactly these 96 bits, so the original bytes come back).
fn packed_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
    q
}

/// Q4_K: original blocks, row by row -> panels.
fn repack_q4k(src: &StoredRows, rows: usize, blocks: usize) -> Vec<u8> {
    let mut out = vec![0u8; rows / PANEL * blocks * Q4K_PANEL_BLOCK_BYTES];
    src.repack_panels(&mut out, blocks * Q4K_PANEL_BLOCK_BYTES, |p, panel| {
            let row: [&[u8]; PANEL] = std::array::from_fn(|r| src.row(p * PANEL + r));
            for (b, o) in panel.chunks_exact_mut(Q4K_PANEL_BLOCK_BYTES).enumerate() {
                let o: &mut [u8; Q4K_PANEL_BLOCK_BYTES] = o.try_into().expect("panel-block");
                for r in 0..PANEL {
                    let blk: &[u8; Q4K_BLOCK] = row[r][b * Q4K_BLOCK..(b + 1) * Q4K_BLOCK].try_into().expect("block");
                    o[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
                    o[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&blk[2..4]);
                    for s in 0..8 {
                        let (sc, m) = scale_min(s, &blk[4..16]);
                        o[SC_AT + 8 * s + r] = sc;
                        o[MIN_AT + 16 * (s / 2) + 2 * r + s % 2] = m;
                    }
                    for pg in 0..32 {
                        let at = QS_AT + (pg * PANEL + r) * 4;
                        o[at..at + 4].copy_from_slice(&blk[16 + 4 * pg..16 + 4 * pg + 4]);
                    }
                }
            }
        });
    out
}

/// Q4_K: row `r`'s original blocks from the panels, into `out`.
fn row_blocks_q4k(panels: &[u8], r: usize, blocks: usize, out: &mut [u8]) {
    let (p, lane) = (r / PANEL, r % PANEL);
    for (b, blk) in out.chunks_exact_mut(Q4K_BLOCK).enumerate().take(blocks) {
        let o = &panels[(p * blocks + b) * Q4K_PANEL_BLOCK_BYTES..][..Q4K_PANEL_BLOCK_BYTES];
        blk[0..2].copy_from_slice(&o[2 * lane..2 * lane + 2]);
        blk[2..4].copy_from_slice(&o[16 + 2 * lane..16 + 2 * lane + 2]);
        let sc: [u8; 8] = std::array::from_fn(|s| o[SC_AT + 8 * s + lane]);
        let m: [u8; 8] = std::array::from_fn(|s| o[MIN_AT + 16 * (s / 2) + 2 * lane + s % 2]);
        blk[4..16].copy_from_slice(&packed_scales(&sc, &m));
        for pg in 0..32 {
            let at = QS_AT + (pg * PANEL + lane) * 4;
            blk[16 + 4 * pg..16 + 4 * pg + 4].copy_from_slice(&o[at..at + 4]);
        }
    }
}

/// ggml's `dequantize_row_q4_K` for one block.
fn dequantize_q4k(blk: &[u8], out: &mut [f32]) {
    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
    let min = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
    for p in 0..4 {
        let (sc1, m1) = scale_min(2 * p, &blk[4..16]);
        let (sc2, m2) = scale_min(2 * p + 1, &blk[4..16]);
        let (d1, m1, d2, m2) = (d * sc1 as f32, min * m1 as f32, d * sc2 as f32, min * m2 as f32);
        let q = &blk[16 + 32 * p..16 + 32 * p + 32];
        for l in 0..32 {
            out[64 * p + l] = d1 * (q[l] & 0xF) as f32 - m1;
            out[64 * p + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q6_K: original blocks (ql 128 | qh 64 | scales 16 | d 2), row by row -> panels.
fn repack_q6k(src: &StoredRows, rows: usize, blocks: usize) -> Vec<u8> {
    let mut out = vec![0u8; rows / PANEL * blocks * Q6K_PANEL_BLOCK_BYTES];
    src.repack_panels(&mut out, blocks * Q6K_PANEL_BLOCK_BYTES, |p, panel| {
            let row: [&[u8]; PANEL] = std::array::from_fn(|r| src.row(p * PANEL + r));
            for (b, o) in panel.chunks_exact_mut(Q6K_PANEL_BLOCK_BYTES).enumerate() {
                let o: &mut [u8; Q6K_PANEL_BLOCK_BYTES] = o.try_into().expect("panel-block");
                for r in 0..PANEL {
                    let blk: &[u8; Q6K_BLOCK] = row[r][b * Q6K_BLOCK..(b + 1) * Q6K_BLOCK].try_into().expect("block");
                    q6k_to_lane(blk, r, o);
                }
            }
        });
    out
}

// Masks of the low 2, 4 and 6 bits of each byte of a u32: the layout's
// conversions take 4 positions at once (one lane's 4 bytes), and no shift
// below carries a bit into a byte where the mask keeps it.
const LOW2: u32 = 0x0303_0303;
const LOW4: u32 = 0x0F0F_0F0F;
const LOW6: u32 = 0x3F3F_3F3F;

/// Row `r`'s block `blk` into lane `r` of panel-block `o` (the layout in
/// the module's comment).
fn q6k_to_lane(blk: &[u8; Q6K_BLOCK], r: usize, o: &mut [u8; Q6K_PANEL_BLOCK_BYTES]) {
    o[2 * r..2 * r + 2].copy_from_slice(&blk[208..210]);
    for s in 0..16 {
        o[q6k_sc_at(s, r)] = blk[192 + s];
    }
    let word = |at: usize| u32::from_le_bytes(blk[at..at + 4].try_into().expect("4 bytes"));
    for h in 0..2 {
        for g in 0..8 {
            let (lo, hi, qh) = (word(64 * h + 4 * g), word(64 * h + 32 + 4 * g), word(128 + 32 * h + 4 * g));
            let q0 = lo & LOW4 | (qh & LOW2) << 4;
            let q1 = hi & LOW4 | (qh >> 2 & LOW2) << 4;
            let q2 = lo >> 4 & LOW4 | (qh >> 4 & LOW2) << 4;
            let q3 = hi >> 4 & LOW4 | (qh >> 6 & LOW2) << 4;
            let at = q6k_w_at(h, g, r);
            for (v, q) in [q0, q1, q2].into_iter().enumerate() {
                let bytes = q | (q3 >> (2 * v) & LOW2) << 6;
                o[at + 32 * v..at + 32 * v + 4].copy_from_slice(&bytes.to_le_bytes());
            }
        }
    }
}

/// The inverse of `q6k_to_lane`: lane `r` of `o` back into the original block.
fn q6k_from_lane(o: &[u8], r: usize, blk: &mut [u8]) {
    blk[208..210].copy_from_slice(&o[2 * r..2 * r + 2]);
    for s in 0..16 {
        blk[192 + s] = o[q6k_sc_at(s, r)];
    }
    for h in 0..2 {
        for g in 0..8 {
            let at = q6k_w_at(h, g, r);
            let [a, b, c] = [0, 1, 2].map(|v| u32::from_le_bytes(o[at + 32 * v..at + 32 * v + 4].try_into().expect("4 bytes")));
            let (q0, q1, q2) = (a & LOW6, b & LOW6, c & LOW6);
            let q3 = a >> 6 & LOW2 | (b >> 6 & LOW2) << 2 | (c >> 6 & LOW2) << 4;
            let lo = q0 & LOW4 | (q2 & LOW4) << 4;
            let hi = q1 & LOW4 | (q3 & LOW4) << 4;
            let qh = q0 >> 4 & LOW2 | (q1 >> 4 & LOW2) << 2 | (q2 >> 4 & LOW2) << 4 | (q3 >> 4 & LOW2) << 6;
            for (at, word) in [(64 * h + 4 * g, lo), (64 * h + 32 + 4 * g, hi), (128 + 32 * h + 4 * g, qh)] {
                blk[at..at + 4].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
}

/// Offset in a panel-block of lane `r`'s scale of sub-block `s` (pairs of sub-blocks per row).
fn q6k_sc_at(s: usize, r: usize) -> usize {
    Q6_SC_AT + 16 * (s / 2) + 2 * r + s % 2
}

/// Offset in a panel-block of lane `r`'s 4 bytes v = 0 for positions 4g.. of half `h`.
fn q6k_w_at(h: usize, g: usize, r: usize) -> usize {
    Q6_W_AT + ((h * 8 + g) * 3 * PANEL + r) * 4
}

/// Q6_K: row `r`'s original blocks from the panels, into `out`.
fn row_blocks_q6k(panels: &[u8], r: usize, blocks: usize, out: &mut [u8]) {
    let bb = KKind::Q6K.block_bytes();
    let (p, lane) = (r / PANEL, r % PANEL);
    for (b, blk) in out.chunks_exact_mut(bb).enumerate().take(blocks) {
        q6k_from_lane(&panels[(p * blocks + b) * Q6K_PANEL_BLOCK_BYTES..][..Q6K_PANEL_BLOCK_BYTES], lane, blk);
    }
}

/// ggml's `dequantize_row_q6_K` for one block.
fn dequantize_q6k(blk: &[u8], out: &mut [f32]) {
    let d = f16::from_le_bytes([blk[208], blk[209]]).to_f32();
    for h in 0..2 {
        let (ql, qh, sc) = (
            &blk[64 * h..64 * h + 64],
            &blk[128 + 32 * h..128 + 32 * h + 32],
            &blk[192 + 8 * h..200 + 8 * h],
        );
        for l in 0..32 {
            let is = l / 16;
            let q = [
                ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32,
                ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32,
                ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32,
                ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32,
            ];
            for (j, q) in q.iter().enumerate() {
                out[128 * h + 32 * j + l] = d * (sc[is + 2 * j] as i8) as f32 * *q as f32;
            }
        }
    }
}

/// llama.cpp's `quantize_row_q8_K_ref` for 256 values: scale −127/max of
/// the value of largest magnitude (the first such), round half to even,
/// clamp at 127.
fn quantize_q8k(x: &[f32]) -> Q8KBlock {
    let x = &x[..QK_K];
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let mut b = Q8KBlock {
        d: 0.0,
        ysum: [0; 8],
        bsum: [0; 16],
        qs: [0; QK_K],
    };
    if amax == 0.0 {
        return b;
    }
    let max = *x.iter().find(|v| v.abs() == amax).expect("amax is one of the values");
    let iscale = -127.0 / max;
    #[cfg(target_arch = "x86_64")]
    if select::avx2() {
        // SAFETY: AVX2 detected; both slices hold 256 values.
        unsafe { avx2_round(x, iscale, &mut b.qs) };
    } else {
        round_scalar(x, iscale, &mut b.qs);
    }
    #[cfg(not(target_arch = "x86_64"))]
    round_scalar(x, iscale, &mut b.qs);
    for (s, sum) in b.bsum.iter_mut().enumerate() {
        *sum = b.qs[16 * s..16 * s + 16].iter().map(|&q| q as i16).sum();
    }
    for (s, sum) in b.ysum.iter_mut().enumerate() {
        *sum = b.bsum[2 * s] + b.bsum[2 * s + 1];
    }
    b.d = 1.0 / iscale;
    b
}

fn round_scalar(x: &[f32], iscale: f32, qs: &mut [i8; QK_K]) {
    for (q, v) in qs.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
}

/// `round_scalar` eight lanes at a time (the same products and rounding).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_round(x: &[f32], iscale: f32, qs: &mut [i8; QK_K]) {
    use std::arch::x86_64::*;
    let s = _mm256_set1_ps(iscale);
    let top = _mm256_set1_epi32(127);
    for (c, out) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)) {
        let q: [__m256i; 4] = std::array::from_fn(|k| {
            let v = _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr().add(8 * k)), s);
            _mm256_min_epi32(
                _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)),
                top,
            )
        });
        // i32 -> i16 -> i8 packs interleave 128-bit lanes; the permute restores order.
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, packed);
    }
}

/// A (rows, cols) Q4_K or Q6_K matrix in 8-row panels.
#[derive(Debug)]
pub struct KQuantMatrix {
    kind: KKind,
    data: Vec<u8>,
    rows: usize,
    cols: usize,
}

fn kind_of(dtype: GgmlDType) -> Option<KKind> {
    match dtype {
        GgmlDType::Q4K => Some(KKind::Q4K),
        GgmlDType::Q6K => Some(KKind::Q6K),
        _ => None,
    }
}

impl KQuantMatrix {
    /// Some(matrix) for a 2-D Q4_K or Q6_K tensor on the CPU where the
    /// panel kernels run and the rows fill panels; None otherwise (candle's kernels).
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
        let (Some(kind), true, Ok((rows, cols))) = (kind_of(t.dtype()), t.device().is_cpu(), t.shape().dims2()) else {
            return Ok(None);
        };
        let data = t.data()?;
        Ok(StoredRows::new(&data, cols / QK_K * kind.block_bytes(), None)
            .and_then(|src| Self::from_stored(t.dtype(), &src, rows, cols)))
    }

    /// Some(matrix) for (rows, cols) stored blocks of `dtype` where the panel
    /// kernels run and the rows fill panels; None otherwise.
    pub fn from_stored(dtype: GgmlDType, src: &StoredRows, rows: usize, cols: usize) -> Option<Self> {
        let kind = kind_of(dtype)?;
        let runs = select::avx2() || select::choice() == select::KernelChoice::Scalar;
        if !runs || rows % PANEL != 0 || cols % QK_K != 0 || src.rows() != rows {
            return None;
        }
        let data = match kind {
            KKind::Q4K => repack_q4k(src, rows, cols / QK_K),
            KKind::Q6K => repack_q6k(src, rows, cols / QK_K),
        };
        Some(Self { kind, data, rows, cols })
    }

    /// Row `r`'s original blocks, into `out`.
    fn row_blocks(&self, r: usize, out: &mut [u8]) {
        match self.kind {
            KKind::Q4K => row_blocks_q4k(&self.data, r, self.cols / QK_K, out),
            KKind::Q6K => row_blocks_q6k(&self.data, r, self.cols / QK_K, out),
        }
    }
}

impl BlockMatrix for KQuantMatrix {
    /// The original blocks as a candle tensor (to dequantize or re-quantize).
    fn to_qtensor(&self) -> Result<QTensor> {
        let row_bytes = self.cols / QK_K * self.kind.block_bytes();
        let mut raw = vec![0u8; self.rows * row_bytes];
        for (r, row) in raw.chunks_exact_mut(row_bytes).enumerate() {
            self.row_blocks(r, row);
        }
        candle_core::quantized::ggml_file::qtensor_from_ggml(
            self.kind.dtype(),
            &raw,
            vec![self.rows, self.cols],
            &candle_core::Device::Cpu,
        )
    }

    /// Rows `ids` dequantized, (ids, cols): an embedding lookup.
    fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = ids.to_vec1::<u32>()?;
        let bb = self.kind.block_bytes();
        let mut raw = vec![0u8; self.cols / QK_K * bb];
        let mut out = vec![0f32; ids.len() * self.cols];
        for (&id, o) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
            if id as usize >= self.rows {
                candle_core::bail!("token id {id} is outside the embedding table ({} rows)", self.rows);
            }
            self.row_blocks(id as usize, &mut raw);
            for (blk, o) in raw.chunks_exact(bb).zip(o.chunks_exact_mut(QK_K)) {
                match self.kind {
                    KKind::Q4K => dequantize_q4k(blk, o),
                    KKind::Q6K => dequantize_q6k(blk, o),
                }
            }
        }
        Tensor::from_vec(out, (ids.len(), self.cols), &candle_core::Device::Cpu)
    }

    /// `x`: (tokens, cols) -> (tokens, rows).
    fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let (acts, m) = panel_product::with_f32_rows(x, self.cols, |xs, m| {
            let acts: Vec<Q8KBlock> = if m >= 16 {
                xs.par_chunks_exact(QK_K).map(quantize_q8k).collect()
            } else {
                xs.chunks_exact(QK_K).map(quantize_q8k).collect()
            };
            (acts, m)
        })?;
        let mut out = vec![0f32; m * self.rows];
        self.product(&acts, m, &mut out);
        Tensor::from_vec(out, (m, self.rows), x.device())
    }
}

impl KQuantMatrix {
    /// The same products without SIMD (`MISTRALRS_CPU_KERNELS=scalar`, or a
    /// CPU without the panel kernels' features): each row's blocks expanded to
    /// f32 against the Q8_K activations expanded to f32. That is llama.cpp's
    /// q4_K/q6_K x q8_K arithmetic up to the order of float sums (its integer
    /// sums are exact in f32 at these sizes), so results match the SIMD tiles'.
    fn product_scalar(&self, acts: &[Q8KBlock], m: usize, out: &mut [f32]) {
        let (rows, cols, kind) = (self.rows, self.cols, self.kind);
        let bb = kind.block_bytes();
        let x: Vec<f32> = acts.iter().flat_map(|a| a.qs.iter().map(move |&q| a.d * f32::from(q))).collect();
        let cells = OutPtr(out.as_mut_ptr());
        (0..rows).into_par_iter().for_each_init(
            || (vec![0u8; cols / QK_K * bb], vec![0f32; cols]),
            |(raw, w), r| {
                self.row_blocks(r, raw);
                for (blk, o) in raw.chunks_exact(bb).zip(w.chunks_exact_mut(QK_K)) {
                    match kind {
                        KKind::Q4K => dequantize_q4k(blk, o),
                        KKind::Q6K => dequantize_q6k(blk, o),
                    }
                }
                for (t, xt) in x.chunks_exact(cols).take(m).enumerate() {
                    let dot: f32 = w.iter().zip(xt).map(|(a, b)| a * b).sum();
                    // SAFETY: cell (t, r) is inside the (m, rows) output and written by this row's task only.
                    unsafe { *cells.at(t * rows + r) = dot };
                }
            },
        );
    }

    /// The panels against every token, on the widest SIMD the CPU has.
    fn product(&self, acts: &[Q8KBlock], m: usize, out: &mut [f32]) {
        match PanelSimd::widest() {
            Some(simd) => self.product_on(simd, acts, m, out),
            None => self.product_scalar(acts, m, out),
        }
    }

    /// The panels against every token with `simd`: tiles of its widest
    /// size, then the remainder (`tile_height`).
    fn product_on(&self, simd: PanelSimd, acts: &[Q8KBlock], m: usize, out: &mut [f32]) {
        let blocks = self.cols / QK_K;
        let panel_bytes = blocks * self.kind.panel_block_bytes();
        let (kind, rows) = (self.kind, self.rows);
        panel_product::for_each_tile(rows, self.cols, m, out, |p, first, tokens, cell| {
            let panel = &self.data[p * panel_bytes..(p + 1) * panel_bytes];
            let mut done = 0;
            while done < tokens {
                let n = tile_height(simd, tokens - done);
                let a = &acts[(first + done) * blocks..(first + done + n) * blocks];
                let o = cell.at(done * rows);
                // SAFETY: the caller checked that the CPU has the path's
                // features; the driver hands each call its own cells.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    if simd == PanelSimd::Avx2 {
                        match (kind, n) {
                            (KKind::Q4K, 4) => avx2::tile_q4k::<4>(panel, a, blocks, o, rows),
                            (KKind::Q4K, 3) => avx2::tile_q4k::<3>(panel, a, blocks, o, rows),
                            (KKind::Q4K, 2) => avx2::tile_q4k::<2>(panel, a, blocks, o, rows),
                            (KKind::Q4K, _) => avx2::tile_q4k::<1>(panel, a, blocks, o, rows),
                            (KKind::Q6K, 4) => avx2::tile_q6k::<4>(panel, a, blocks, o, rows),
                            (KKind::Q6K, 3) => avx2::tile_q6k::<3>(panel, a, blocks, o, rows),
                            (KKind::Q6K, 2) => avx2::tile_q6k::<2>(panel, a, blocks, o, rows),
                            (KKind::Q6K, _) => avx2::tile_q6k::<1>(panel, a, blocks, o, rows),
                        }
                        done += n;
                        continue;
                    }
                    match (kind, n) {
                        (KKind::Q4K, 8) => vnni::tile_q4k::<8>(panel, a, blocks, o, rows),
                        (KKind::Q4K, 4) => vnni::tile_q4k::<4>(panel, a, blocks, o, rows),
                        (KKind::Q4K, 2) => vnni::tile_q4k::<2>(panel, a, blocks, o, rows),
                        (KKind::Q4K, _) => vnni::tile_q4k::<1>(panel, a, blocks, o, rows),
                        (KKind::Q6K, 8) => vnni::tile_q6k::<8>(panel, a, blocks, o, rows),
                        (KKind::Q6K, 4) => vnni::tile_q6k::<4>(panel, a, blocks, o, rows),
                        (KKind::Q6K, 2) => vnni::tile_q6k::<2>(panel, a, blocks, o, rows),
                        (KKind::Q6K, _) => vnni::tile_q6k::<1>(panel, a, blocks, o, rows),
                    }
                }
                done += n;
            }
        });
    }
}

/// Lane r of a Q4_K panel-block's quant vector (p, g), `half` 0 or 1: row
/// r's weights 64p + 32·half + 4g.. (one nibble of each byte).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q4k_weights(pb: *const u8, p: usize, g: usize, half: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let w = _mm256_loadu_si256(pb.add(QS_AT + (p * 8 + g) * 32) as *const __m256i);
    let w = if half == 0 { w } else { _mm256_srli_epi16(w, 4) };
    _mm256_and_si256(w, _mm256_set1_epi8(0x0F))
}

/// The end of a Q4_K panel-block for each token t: its scaled quant sums
/// `isum[t]` times d·dy, less the mins' Σ m·ysum times dmin·dy, into
/// `acc[t]`. `dot2(s, m, y)` is s + the products of i16 pairs (`vpdpwssd`,
/// or `vpmaddwd` and an add).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q4k_block_end<const T: usize>(
    pb: *const u8,
    a: &[&Q8KBlock; T],
    isum: &[std::arch::x86_64::__m256i; T],
    acc: &mut [std::arch::x86_64::__m256; T],
    dot2: impl Fn(std::arch::x86_64::__m256i, std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i,
) {
    use std::arch::x86_64::*;
    let d = _mm256_cvtph_ps(_mm_loadu_si128(pb as *const __m128i));
    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(16) as *const __m128i));
    // Sub-blocks 2k, 2k+1's mins of each row, as i16 pairs.
    let mins: [__m256i; 4] =
        std::array::from_fn(|k| _mm256_cvtepu8_epi16(_mm_loadu_si128(pb.add(MIN_AT + 16 * k) as *const __m128i)));
    for t in 0..T {
        let ys = a[t].ysum.as_ptr() as *const i32;
        let mut msum = _mm256_setzero_si256();
        for (k, mk) in mins.iter().enumerate() {
            msum = dot2(msum, *mk, _mm256_set1_epi32(ys.add(k).read_unaligned()));
        }
        let dy = _mm256_set1_ps(a[t].d);
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, dy), acc[t]);
        acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dmin, dy), acc[t]);
    }
}

/// Lane r of a Q6_K panel-block's weights 128h + 32j + 4g.. of row r, as
/// unsigned 6-bit values. Called with literal h and j, so that the shifts
/// fold to constants once inlined.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q6k_weights(pb: *const u8, h: usize, j: usize, g: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let at = |v: usize| _mm256_loadu_si256(pb.add(Q6_W_AT + ((h * 8 + g) * 3 + v) * 32) as *const __m256i);
    if j < 3 {
        return _mm256_and_si256(at(j), _mm256_set1_epi8(0x3F));
    }
    // Bits 6-7 of bytes v = 0, 1, 2 to bits 0-1, 2-3, 4-5; the 16-bit
    // shifts carry bits of the next byte in, which the masks drop.
    let mask = |bits: __m256i, m: i8| _mm256_and_si256(bits, _mm256_set1_epi8(m));
    _mm256_or_si256(
        _mm256_or_si256(mask(_mm256_srli_epi16(at(0), 6), 0x03), mask(_mm256_srli_epi16(at(1), 4), 0x0C)),
        mask(_mm256_srli_epi16(at(2), 2), 0x30),
    )
}

/// Lanes r of sub-blocks 2k, 2k+1's scales as i16 pairs: (sc[2k], sc[2k+1])
/// of row r in lane r.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q6k_scale_pairs(pb: *const u8, k: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(Q6_SC_AT + 16 * k) as *const __m128i))
}

/// Sub-block `s`'s scale of each row, widened to i32 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q6k_scales(pb: *const u8, s: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let pairs = q6k_scale_pairs(pb, s / 2);
    if s.is_multiple_of(2) {
        _mm256_srai_epi32(_mm256_slli_epi32(pairs, 16), 16)
    } else {
        _mm256_srai_epi32(pairs, 16)
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::*;
    use std::arch::x86_64::*;

    /// `out[t * out_stride + r]` = panel row r . token t, for the T tokens of `acts`.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn tile_q4k<const T: usize>(
        panel: &[u8],
        acts: &[Q8KBlock],
        blocks: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        debug_assert!(panel.len() >= blocks * Q4K_PANEL_BLOCK_BYTES && acts.len() >= T * blocks);
        let mut acc = [_mm256_setzero_ps(); T];
        let mut pb = panel.as_ptr();
        for b in 0..blocks {
            panel_product::prefetch_ahead(pb, Q4K_PANEL_BLOCK_BYTES);
            let a: [&Q8KBlock; T] = std::array::from_fn(|t| &*acts.as_ptr().add(t * blocks + b));
            let mut isum = [_mm256_setzero_si256(); T];
            // One sub-block (one nibble half of 32 bytes) at a time, so that a
            // tile of eight tokens keeps its sums in registers.
            for sub in 0..8 {
                let (p, half) = (sub / 2, sub % 2);
                let mut sums = [_mm256_setzero_si256(); T];
                for g in 0..8 {
                    let w = q4k_weights(pb, p, g, half);
                    for t in 0..T {
                        let y = a[t].qs.as_ptr().add(64 * p + 32 * half + 4 * g) as *const i32;
                        sums[t] = _mm256_dpbusd_epi32(sums[t], w, _mm256_set1_epi32(y.read_unaligned()));
                    }
                }
                let sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(pb.add(SC_AT + 8 * sub) as *const __m128i));
                for t in 0..T {
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_mullo_epi32(sums[t], sc));
                }
            }
            q4k_block_end(pb, &a, &isum, &mut acc, |s, m, y| _mm256_dpwssd_epi32(s, m, y));
            pb = pb.add(Q4K_PANEL_BLOCK_BYTES);
        }
        for (t, acc_t) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(t * out_stride), *acc_t);
        }
    }

    /// As `tile_q4k`, for Q6_K panels.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn tile_q6k<const T: usize>(
        panel: &[u8],
        acts: &[Q8KBlock],
        blocks: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        debug_assert!(panel.len() >= blocks * Q6K_PANEL_BLOCK_BYTES && acts.len() >= T * blocks);
        let mut acc = [_mm256_setzero_ps(); T];
        let mut pb = panel.as_ptr();
        for b in 0..blocks {
            panel_product::prefetch_ahead(pb, Q6K_PANEL_BLOCK_BYTES);
            let a: [&Q8KBlock; T] = std::array::from_fn(|t| &*acts.as_ptr().add(t * blocks + b));
            let mut isum = [_mm256_setzero_si256(); T];
            // One 16-weight sub-block at a time (half h, quarter j, positions
            // 16·part..), so that a tile of eight tokens keeps its sums in
            // registers. The quarter is a literal in each expansion: its nibble
            // and bit shifts fold to constants, where a loop over all sixteen
            // sub-blocks compiled to a jump table per load (a third of the speed).
            macro_rules! quarter {
                ($h:expr, $part:expr, $j:literal) => {{
                    let sub = 8 * $h + 2 * $j + $part;
                    let mut sums: [__m256i; T] = std::array::from_fn(|t| _mm256_set1_epi32(-32 * a[t].bsum[sub] as i32));
                    for g in 4 * $part..4 * $part + 4 {
                        let w = q6k_weights(pb, $h, $j, g);
                        for t in 0..T {
                            let y = a[t].qs.as_ptr().add(128 * $h + 32 * $j + 4 * g) as *const i32;
                            sums[t] = _mm256_dpbusd_epi32(sums[t], w, _mm256_set1_epi32(y.read_unaligned()));
                        }
                    }
                    let sc = q6k_scales(pb, sub);
                    for t in 0..T {
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_mullo_epi32(sums[t], sc));
                    }
                }};
            }
            for h in 0..2 {
                for part in 0..2 {
                    quarter!(h, part, 0);
                    quarter!(h, part, 1);
                    quarter!(h, part, 2);
                    quarter!(h, part, 3);
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(pb as *const __m128i));
            for t in 0..T {
                acc[t] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(isum[t]),
                    _mm256_mul_ps(d, _mm256_set1_ps(a[t].d)),
                    acc[t],
                );
            }
            pb = pb.add(Q6K_PANEL_BLOCK_BYTES);
        }
        for (t, acc_t) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(t * out_stride), *acc_t);
        }
    }
}

/// The VNNI tiles' sums with AVX2 alone. `vpmaddubsw` multiplies weight
/// bytes (unsigned) by activation bytes (signed) and adds adjacent pairs
/// into i16 lanes; `vpmaddwd` then adds pairs of those into i32, taking the
/// sub-block scales as its second factor, so one instruction applies the
/// scale and finishes the sum (VNNI's `vpdpbusd` plus `vpmulld`). The i16
/// stage holds as many pairs as cannot overflow: a pair is at most
/// 2·15·127 = 3,810 for Q4_K (eight fit a 32-weight sub-block) and
/// 2·63·127 = 16,002 for Q6_K (two, so a 16-weight sub-block takes two
/// `vpmaddwd`).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use crate::kernels::panel_product::row_pairs;
    use std::arch::x86_64::*;

    /// `out[t * out_stride + r]` = panel row r . token t, for the T tokens of `acts`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_q4k<const T: usize>(
        panel: &[u8],
        acts: &[Q8KBlock],
        blocks: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        debug_assert!(panel.len() >= blocks * Q4K_PANEL_BLOCK_BYTES && acts.len() >= T * blocks);
        let mut acc = [_mm256_setzero_ps(); T];
        let mut pb = panel.as_ptr();
        for b in 0..blocks {
            panel_product::prefetch_ahead(pb, Q4K_PANEL_BLOCK_BYTES);
            let a: [&Q8KBlock; T] = std::array::from_fn(|t| &*acts.as_ptr().add(t * blocks + b));
            let mut isum = [_mm256_setzero_si256(); T];
            for sub in 0..8 {
                let (p, half) = (sub / 2, sub % 2);
                let mut sums = [_mm256_setzero_si256(); T];
                for g in 0..8 {
                    let w = q4k_weights(pb, p, g, half);
                    for t in 0..T {
                        let y = a[t].qs.as_ptr().add(64 * p + 32 * half + 4 * g) as *const i32;
                        sums[t] = _mm256_add_epi16(sums[t], _mm256_maddubs_epi16(w, _mm256_set1_epi32(y.read_unaligned())));
                    }
                }
                let sc = row_pairs(_mm256_cvtepu8_epi32(_mm_loadl_epi64(pb.add(SC_AT + 8 * sub) as *const __m128i)));
                for t in 0..T {
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(sums[t], sc));
                }
            }
            q4k_block_end(pb, &a, &isum, &mut acc, |s, m, y| _mm256_add_epi32(s, _mm256_madd_epi16(m, y)));
            pb = pb.add(Q4K_PANEL_BLOCK_BYTES);
        }
        for (t, acc_t) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(t * out_stride), *acc_t);
        }
    }

    /// As `tile_q4k`, for Q6_K panels. The −32 of each weight is the
    /// sub-block's −32·Σy: one `vpmaddwd` per pair of sub-blocks sums
    /// sc·Σy for both into each row's lane (`osum`), taken 32 times at the
    /// block's end. All sums are exact integers, so the order is free.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_q6k<const T: usize>(
        panel: &[u8],
        acts: &[Q8KBlock],
        blocks: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        debug_assert!(panel.len() >= blocks * Q6K_PANEL_BLOCK_BYTES && acts.len() >= T * blocks);
        let mut acc = [_mm256_setzero_ps(); T];
        let mut pb = panel.as_ptr();
        for b in 0..blocks {
            panel_product::prefetch_ahead(pb, Q6K_PANEL_BLOCK_BYTES);
            let a: [&Q8KBlock; T] = std::array::from_fn(|t| &*acts.as_ptr().add(t * blocks + b));
            let mut isum = [_mm256_setzero_si256(); T];
            let mut osum = [_mm256_setzero_si256(); T];
            // As in the VNNI tile, the quarter is a literal in each expansion.
            // `sc`: the sub-block's scale of each row in both halves of its lane.
            macro_rules! quarter {
                ($h:expr, $part:expr, $j:literal, $sc:expr) => {{
                    let w: [__m256i; 4] = std::array::from_fn(|i| q6k_weights(pb, $h, $j, 4 * $part + i));
                    let sc = $sc;
                    for t in 0..T {
                        let y = a[t].qs.as_ptr().add(128 * $h + 32 * $j + 16 * $part) as *const i32;
                        let prod = |i: usize| _mm256_maddubs_epi16(w[i], _mm256_set1_epi32(y.add(i).read_unaligned()));
                        let pair0 = _mm256_add_epi16(prod(0), prod(1));
                        let pair1 = _mm256_add_epi16(prod(2), prod(3));
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(_mm256_madd_epi16(pair0, sc), _mm256_madd_epi16(pair1, sc)));
                    }
                }};
            }
            // Quarter j of half h: sub-blocks 8h + 2j (part 0) and 8h + 2j + 1, one pair of scales.
            macro_rules! quarters {
                ($h:expr, $j:literal) => {{
                    let k = 4 * $h + $j;
                    let pairs = q6k_scale_pairs(pb, k);
                    quarter!($h, 0, $j, row_pairs(pairs));
                    quarter!($h, 1, $j, _mm256_blend_epi16::<0b1010_1010>(_mm256_srli_epi32(pairs, 16), pairs));
                    for t in 0..T {
                        let ys = _mm256_set1_epi32((a[t].bsum.as_ptr().add(2 * k) as *const i32).read_unaligned());
                        osum[t] = _mm256_add_epi32(osum[t], _mm256_madd_epi16(pairs, ys));
                    }
                }};
            }
            for h in 0..2 {
                quarters!(h, 0);
                quarters!(h, 1);
                quarters!(h, 2);
                quarters!(h, 3);
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(pb as *const __m128i));
            for t in 0..T {
                let isum = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(osum[t], 5));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, _mm256_set1_ps(a[t].d)), acc[t]);
            }
            pb = pb.add(Q6K_PANEL_BLOCK_BYTES);
        }
        for (t, acc_t) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(t * out_stride), *acc_t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// Against candle's Q4_K and Q6_K kernels (its Q8_K activations are llama.cpp's
    /// reference quantizer, as ours): the same integer sums, so the products
    /// agree to float rounding; against the f32 product within ggml's
    /// activation-rounding bound; the blocks survive the panel round trip
    /// and embedding rows equal candle's dequantization bit for bit.
    /// The SIMD rounding gives the scalar one's quants, exact halves included.
    #[test]
    fn q8k_simd_rounding_matches_scalar() {
        if !select::avx2() {
            return;
        }
        let mut x: Vec<f32> = (0..QK_K).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0).collect();
        x[0] = -127.0; // iscale 1: every k + 0.5 below is an exact tie
        for (i, v) in x.iter_mut().enumerate().skip(1).take(40) {
            *v = i as f32 - 20.5;
        }
        let iscale = -127.0 / x[0];
        let (mut a, mut b) = ([0i8; QK_K], [0i8; QK_K]);
        round_scalar(&x, iscale, &mut a);
        unsafe { avx2_round(&x, iscale, &mut b) };
        assert_eq!(a, b);
    }

    /// Seeded standard-normal data: an unseeded draw now and then puts an
    /// activation on a rounding tie that candle's Q8_K quantizer and
    /// llama.cpp's (ours) break differently, a one-step difference this
    /// tolerance is not meant to absorb.
    fn normal(shape: (usize, usize), seed: u64, dev: &Device) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
                (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect();
        Tensor::from_vec(v, shape, dev).unwrap()
    }

    /// `mat · xᵀ` on one SIMD path.
    fn product_with(mat: &KQuantMatrix, x: &Tensor, path: PanelSimd) -> Tensor {
        let (m, cols) = x.dims2().unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let acts: Vec<Q8KBlock> = xs.chunks_exact(QK_K).map(quantize_q8k).collect();
        let mut out = vec![0f32; m * mat.rows];
        assert_eq!(cols, mat.cols);
        mat.product_on(path, &acts, m, &mut out);
        Tensor::from_vec(out, (m, mat.rows), &Device::Cpu).unwrap()
    }

    /// The unsigned 6-bit quants of quarters 0..3 at position `l` of half `h`
    /// of a Q6_K block, one at a time as ggml's `dequantize_row_q6_K` takes them.
    fn q6k_quants(blk: &[u8], h: usize, l: usize) -> [u8; 4] {
        let (lo, hi, qh) = (blk[64 * h + l], blk[64 * h + 32 + l], blk[128 + 32 * h + l]);
        let nibbles = [lo & 15, hi & 15, lo >> 4, hi >> 4];
        std::array::from_fn(|j| nibbles[j] | ((qh >> (2 * j)) & 3) << 4)
    }

    /// The SIMD readers of the Q6_K panel layout, which the VNNI tile uses
    /// too, against ggml's unpacking of the original blocks (`q6k_quants`).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn q6k_panel_readers_match_the_original_blocks() {
        use std::arch::x86_64::*;
        if !crate::kernels::select::avx2() {
            return;
        }
        let blocks: Vec<[u8; Q6K_BLOCK]> =
            (0..PANEL).map(|r| std::array::from_fn(|i| ((i * 131 + r * 71 + 7) ^ ((i >> 3) * 29)) as u8)).collect();
        let mut o = [0u8; Q6K_PANEL_BLOCK_BYTES];
        for (r, blk) in blocks.iter().enumerate() {
            q6k_to_lane(blk, r, &mut o);
            let mut back = [0u8; Q6K_BLOCK];
            q6k_from_lane(&o, r, &mut back);
            assert_eq!(back, *blk, "lane {r} round trip");
        }
        #[target_feature(enable = "avx2")]
        unsafe fn lanes<T: Copy + Default, const N: usize>(v: __m256i) -> [T; N] {
            let mut out = [T::default(); N];
            _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, v);
            out
        }
        // SAFETY: AVX2 detected; `o` is one whole panel-block.
        unsafe {
            for (h, g) in (0..2).flat_map(|h| (0..8).map(move |g| (h, g))) {
                let w = [
                    q6k_weights(o.as_ptr(), h, 0, g),
                    q6k_weights(o.as_ptr(), h, 1, g),
                    q6k_weights(o.as_ptr(), h, 2, g),
                    q6k_weights(o.as_ptr(), h, 3, g),
                ];
                for (j, w) in w.into_iter().enumerate() {
                    let got: [u8; 32] = lanes(w);
                    for (r, blk) in blocks.iter().enumerate() {
                        for i in 0..4 {
                            assert_eq!(got[4 * r + i], q6k_quants(blk, h, 4 * g + i)[j], "h {h} j {j} g {g} row {r}");
                        }
                    }
                }
            }
            for s in 0..16 {
                let got: [i32; 8] = lanes(q6k_scales(o.as_ptr(), s));
                let want: [i32; 8] = std::array::from_fn(|r| blocks[r][192 + s] as i8 as i32);
                assert_eq!(got, want, "sub-block {s}'s scales");
            }
        }
    }

    /// Every SIMD path this CPU has, each checked whatever `product` picks.
    #[test]
    fn kquant_panels_match_candle_and_f32() {
        let paths = PanelSimd::all();
        if paths.is_empty() {
            return;
        }
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            for (rows, m) in [(16, 1), (24, 3), (8, 4), (8, 7), (64, 70)] {
                let w = normal((rows, 512), 1 + rows as u64, &dev);
                let q = QTensor::quantize(&w, dtype).unwrap();
                let mat = KQuantMatrix::from_qtensor(&q).unwrap().unwrap();
                assert_eq!(mat.to_qtensor().unwrap().data().unwrap(), q.data().unwrap());
                let ids = Tensor::new(&[5u32, 0, (rows - 1) as u32], &dev).unwrap();
                let want_rows = q.dequantize(&dev).unwrap().index_select(&ids, 0).unwrap();
                assert_eq!(
                    mat.rows(&ids).unwrap().to_vec2::<f32>().unwrap(),
                    want_rows.to_vec2::<f32>().unwrap()
                );

                let x = normal((m, 512), 100 + m as u64, &dev);
                let candle =
                    candle_core::quantized::QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
                let theirs = candle_core::Module::forward(&candle, &x).unwrap();
                let exact = x.matmul(&q.dequantize(&dev).unwrap().t().unwrap()).unwrap();
                let scale = max_abs(&theirs);
                let mut results = vec![("matmul".to_string(), mat.matmul(&x).unwrap())];
                results.extend(paths.iter().map(|&p| (format!("{p:?}"), product_with(&mat, &x, p))));
                for (how, got) in results {
                    let err = max_abs(&(&got - &theirs).unwrap());
                    assert!(
                        err < 1e-4 * scale,
                        "{dtype:?} {rows}x{m} {how}: {err} from candle's product (scale {scale})"
                    );
                    let err = max_abs(&(&got - &exact).unwrap());
                    assert!(
                        err < 0.02 * scale,
                        "{dtype:?} {rows}x{m} {how}: {err} from the f32 product (scale {scale})"
                    );
                }
            }
        }
    }
}
