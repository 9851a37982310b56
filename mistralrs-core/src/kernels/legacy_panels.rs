//! The legacy block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) on AVX-512 VNNI
//! or AVX2, with the weights repacked at load into panels of 8 rows.
//!
//! Why repack: in the row layout each 32-weight block gives a vector of 8
//! partial sums that must be scaled, converted and summed on its own, so the
//! bookkeeping costs more than the multiply-adds. Here one 32-bit lane holds
//! one row: lane r of quant vector j is row r's quants 4j..4j+3, and
//! `vpdpbusd` against the token's 4 activation bytes 4j..4j+3 (broadcast)
//! adds row r's 4 products into lane r. Eight of them give the 8 rows' whole
//! block sums in one register, which one conversion and two FMAs scale by the
//! 8 rows' `d` (and `m`) at once; the result lanes are 8 adjacent outputs.
//! (llama.cpp's AVX2 GEMM for Q4_0 uses the same interleaving.)
//!
//! A panel-block holds exactly the bytes of the 8 original blocks:
//!   d:  8 × f16
//!   m:  8 × f16                                       (Q4_1, Q5_1)
//!   qh: 8 × u32, mask j's bit 4r+k = row r's bit 4j+k  (Q5_0, Q5_1)
//!   qs: 4 × 32 bytes, lane r of vector g = row r's packed bytes 4g..4g+3
//!       (low nibbles: quants 4g.., high nibbles: quants 16+4g..)
//!       or, for Q8_0, 8 × 32 bytes of quants 4j..4j+3, stored +128 as u8.
//! `vpdpbusd` multiplies unsigned weights by signed activations, so the
//! types whose quants are offset (Q4_0 by 8, Q5_0 by 16, Q8_0 by the +128)
//! start each block's sum at -offset·Σy, precomputed with the activations.
//! AVX2 has no `vpdpbusd`; its tiles are in `avx2` below.

use super::legacy_blocks::{Kind, Q8Block};
use super::stored_rows::StoredRows;

pub(crate) use super::panel_product::{PanelSimd, PANEL, TILE};
use super::panel_product;

/// Bytes of one panel-block (8 rows × one 32-weight block).
pub(crate) fn panel_block_bytes(kind: Kind) -> usize {
    PANEL * kind.block_bytes()
}

/// What the quants of `kind` are offset by in the panel layout.
pub(crate) fn panel_offset(kind: Kind) -> i32 {
    match kind {
        Kind::Q4_0 => 8,
        Kind::Q5_0 => 16,
        Kind::Q8_0 => 128,
        Kind::Q4_1 | Kind::Q5_1 => 0,
    }
}

/// `src`: (rows, blocks) original blocks, `rows` a multiple of
/// PANEL -> the panel layout (same size). Panels are independent, so they
/// are filled in parallel (this runs at load, over every weight).
pub(crate) fn repack(kind: Kind, src: &StoredRows, rows: usize, blocks: usize) -> Vec<u8> {
    match kind {
        Kind::Q4_0 => repack_as::<18, { 8 * 18 }>(kind, src, rows, blocks),
        Kind::Q4_1 => repack_as::<20, { 8 * 20 }>(kind, src, rows, blocks),
        Kind::Q5_0 => repack_as::<22, { 8 * 22 }>(kind, src, rows, blocks),
        Kind::Q5_1 => repack_as::<24, { 8 * 24 }>(kind, src, rows, blocks),
        Kind::Q8_0 => repack_as::<34, { 8 * 34 }>(kind, src, rows, blocks),
    }
}

/// `repack` for blocks of BB bytes (panel-blocks of PBB = 8 BB), with the
/// sizes known at compile time so the byte moves need no bounds checks
/// (load time is mostly this loop).
fn repack_as<const BB: usize, const PBB: usize>(kind: Kind, src: &StoredRows, rows: usize, blocks: usize) -> Vec<u8> {
    assert!(BB == kind.block_bytes() && PBB == panel_block_bytes(kind));
    let mut out = vec![0u8; rows * blocks * BB];
    let (qh_at, qs_at) = match kind {
        Kind::Q4_0 | Kind::Q8_0 => (None, 2),
        Kind::Q4_1 => (None, 4),
        Kind::Q5_0 => (Some(2), 6),
        Kind::Q5_1 => (Some(4), 8),
    };
    let (groups, flip) = if kind == Kind::Q8_0 { (8, 0x8080_8080u32) } else { (4, 0) };
    src.repack_panels(&mut out, blocks * PBB, |p, panel| {
        let row: [&[u8]; PANEL] = std::array::from_fn(|r| src.row(p * PANEL + r));
        for (b, o) in panel.chunks_exact_mut(PBB).enumerate() {
            let o: &mut [u8; PBB] = o.try_into().expect("panel-block");
            let block: [&[u8; BB]; PANEL] =
                std::array::from_fn(|r| row[r][b * BB..(b + 1) * BB].try_into().expect("block"));
            let mut at = 0;
            for blk in &block {
                o[at..at + 2].copy_from_slice(&blk[0..2]); // d
                at += 2;
            }
            if kind.with_sum() {
                for blk in &block {
                    o[at..at + 2].copy_from_slice(&blk[2..4]); // m
                    at += 2;
                }
            }
            if let Some(h) = qh_at {
                let qh: [u32; PANEL] = std::array::from_fn(|r| u32::from_le_bytes(block[r][h..h + 4].try_into().expect("4 bytes")));
                for j in 0..8 {
                    let mask = qh.iter().enumerate().fold(0u32, |m, (r, q)| m | (((q >> (4 * j)) & 0xF) << (4 * r)));
                    o[at..at + 4].copy_from_slice(&mask.to_le_bytes());
                    at += 4;
                }
            }
            // The quants move 4 bytes at a time (lane r of vector g).
            for g in 0..groups {
                for (r, blk) in block.iter().enumerate() {
                    let q = u32::from_le_bytes(blk[qs_at + 4 * g..qs_at + 4 * g + 4].try_into().expect("4 bytes")) ^ flip;
                    let to = at + 4 * (g * PANEL + r);
                    o[to..to + 4].copy_from_slice(&q.to_le_bytes());
                }
            }
        }
    });
    out
}

/// The original row layout back (for dequantizing, e.g. to merge an adapter).
pub(crate) fn unpack(kind: Kind, panels: &[u8], rows: usize, blocks: usize) -> Vec<u8> {
    let bb = kind.block_bytes();
    let mut out = vec![0u8; panels.len()];
    for (r, row) in out.chunks_exact_mut(blocks * bb).enumerate().take(rows) {
        row_blocks(kind, panels, r, blocks, row);
    }
    out
}

/// Row `r`'s original blocks, into `out` (`blocks` blocks of `kind`).
pub(crate) fn row_blocks(kind: Kind, panels: &[u8], r: usize, blocks: usize, out: &mut [u8]) {
    let bb = kind.block_bytes();
    let pbb = panel_block_bytes(kind);
    let (p, lane) = (r / PANEL, r % PANEL);
    for (b, o) in out.chunks_exact_mut(bb).enumerate().take(blocks) {
        let pb = &panels[(p * blocks + b) * pbb..][..pbb];
        o[0..2].copy_from_slice(&pb[2 * lane..2 * lane + 2]);
        let mut read = 16;
        let mut qs_at = 2;
        if kind.with_sum() {
            o[2..4].copy_from_slice(&pb[16 + 2 * lane..16 + 2 * lane + 2]);
            read = 32;
            qs_at = 4;
        }
        if matches!(kind, Kind::Q5_0 | Kind::Q5_1) {
            let mut qh = 0u32;
            for j in 0..8 {
                let mask = u32::from_le_bytes(pb[read + 4 * j..read + 4 * j + 4].try_into().expect("4 bytes"));
                qh |= ((mask >> (4 * lane)) & 0xF) << (4 * j);
            }
            o[qs_at..qs_at + 4].copy_from_slice(&qh.to_le_bytes());
            qs_at += 4;
            read += 32;
        }
        let (groups, flip) = if kind == Kind::Q8_0 { (8, 0x80) } else { (4, 0) };
        for g in 0..groups {
            for k in 0..4 {
                o[qs_at + 4 * g + k] = pb[read + 32 * g + 4 * lane + k] ^ flip;
            }
        }
    }
}


/// `out[t * out_stride + r]` (r < PANEL) = panel row r . token t's
/// activations, for the `tokens` (<= TILE) tokens of `acts` (`blocks`
/// blocks each, token after token).
///
/// # Safety
/// The CPU has `simd`'s features; `panel` holds `blocks` panel-blocks of
/// `kind`; `out` is valid for the writes described.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn panel_dot(
    simd: PanelSimd,
    kind: Kind,
    panel: &[u8],
    acts: &[Q8Block],
    blocks: usize,
    tokens: usize,
    out: *mut f32,
    out_stride: usize,
) {
    debug_assert!(
        tokens <= TILE
            && acts.len() >= tokens * blocks
            && panel.len() >= blocks * panel_block_bytes(kind)
    );
    #[cfg(target_arch = "x86_64")]
    {
        // Monomorphic per type and tile height so the loops unroll and the
        // accumulators stay in registers; heights as `tile_height` picks them.
        let mut t0 = 0;
        while t0 < tokens {
            let height = panel_product::tile_height(simd, tokens - t0);
            let a = &acts[t0 * blocks..];
            let o = out.add(t0 * out_stride);
            macro_rules! go {
                ($k:expr) => {
                    match (simd, height) {
                        (PanelSimd::Avx2, 4) => avx2::tile::<$k, 4>(panel, a, blocks, o, out_stride),
                        (PanelSimd::Avx2, 3) => avx2::tile::<$k, 3>(panel, a, blocks, o, out_stride),
                        (PanelSimd::Avx2, 2) => avx2::tile::<$k, 2>(panel, a, blocks, o, out_stride),
                        (PanelSimd::Avx2, _) => avx2::tile::<$k, 1>(panel, a, blocks, o, out_stride),
                        (PanelSimd::Vnni, 8) => vnni::tile::<$k, 8>(panel, a, blocks, o, out_stride),
                        (PanelSimd::Vnni, 4) => vnni::tile::<$k, 4>(panel, a, blocks, o, out_stride),
                        (PanelSimd::Vnni, 2) => vnni::tile::<$k, 2>(panel, a, blocks, o, out_stride),
                        (PanelSimd::Vnni, _) => vnni::tile::<$k, 1>(panel, a, blocks, o, out_stride),
                    }
                };
            }
            match kind {
                Kind::Q4_0 => go!(0),
                Kind::Q4_1 => go!(1),
                Kind::Q5_0 => go!(2),
                Kind::Q5_1 => go!(3),
                Kind::Q8_0 => go!(4),
            }
            t0 += height;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (simd, kind, panel, acts, blocks, tokens, out, out_stride);
        unreachable!("panel kernels need AVX2");
    }
}

/// The kind a tile's `K` parameter stands for.
const fn kind_of(k: u8) -> Kind {
    match k {
        0 => Kind::Q4_0,
        1 => Kind::Q4_1,
        2 => Kind::Q5_0,
        3 => Kind::Q5_1,
        _ => Kind::Q8_0,
    }
}

/// A panel-block's `d` and `m` (zero for types without a minimum) for the
/// 8 rows, and its eight quant vectors, lane r of vector j = row r's quants
/// 4j..4j+3 as stored: unsigned, Q8_0's + 128. `fifth(w, bits)` sets bit 4
/// of the bytes of `w` whose bits are set in `bits` (Q5's fifth bits).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_weights(
    kind: Kind,
    pb: *const u8,
    fifth: impl Fn(std::arch::x86_64::__m256i, u32) -> std::arch::x86_64::__m256i,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256, [std::arch::x86_64::__m256i; 8]) {
    use std::arch::x86_64::*;
    let d = _mm256_cvtph_ps(_mm_loadu_si128(pb as *const __m128i));
    let mut at = 16;
    let m = if kind.with_sum() {
        at += 16;
        _mm256_cvtph_ps(_mm_loadu_si128(pb.add(16) as *const __m128i))
    } else {
        _mm256_setzero_ps()
    };
    let qh = pb.add(at) as *const u32;
    let q5 = matches!(kind, Kind::Q5_0 | Kind::Q5_1);
    if q5 {
        at += 32;
    }
    let mut w = [_mm256_setzero_si256(); 8];
    if kind == Kind::Q8_0 {
        for (j, wj) in w.iter_mut().enumerate() {
            *wj = _mm256_loadu_si256(pb.add(at + 32 * j) as *const __m256i);
        }
        return (d, m, w);
    }
    let low = _mm256_set1_epi8(0x0F);
    for g in 0..4 {
        let p = _mm256_loadu_si256(pb.add(at + 32 * g) as *const __m256i);
        w[g] = _mm256_and_si256(p, low);
        w[g + 4] = _mm256_and_si256(_mm256_srli_epi16(p, 4), low);
    }
    if q5 {
        for (j, wj) in w.iter_mut().enumerate() {
            *wj = fifth(*wj, qh.add(j).read_unaligned());
        }
    }
    (d, m, w)
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn tile<const K: u8, const T: usize>(
        panel: &[u8],
        acts: &[Q8Block],
        blocks: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let kind = kind_of(K);
        let with_min = kind.with_sum();
        let pbb = panel_block_bytes(kind);
        let bit4 = _mm256_set1_epi8(0x10);
        let mut acc = [_mm256_setzero_ps(); T];
        let mut pb = panel.as_ptr();
        for b in 0..blocks {
            panel_product::prefetch_ahead(pb, pbb);
            // The nibbles leave bit 4 clear, so adding 0x10 sets it.
            let (d, m, w) = block_weights(kind, pb, |w, bits| _mm256_mask_add_epi8(w, bits, w, bit4));
            for (t, acc_t) in acc.iter_mut().enumerate() {
                let a = &*acts.as_ptr().add(t * blocks + b);
                let y = a.qs.as_ptr() as *const i32;
                // Two chains so consecutive vpdpbusd need not wait on each other.
                let mut s0 = _mm256_set1_epi32(a.bias);
                let mut s1 = _mm256_setzero_si256();
                for j in (0..8).step_by(2) {
                    s0 =
                        _mm256_dpbusd_epi32(s0, w[j], _mm256_set1_epi32(y.add(j).read_unaligned()));
                    s1 = _mm256_dpbusd_epi32(
                        s1,
                        w[j + 1],
                        _mm256_set1_epi32(y.add(j + 1).read_unaligned()),
                    );
                }
                let sum = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
                *acc_t = _mm256_fmadd_ps(sum, _mm256_mul_ps(d, _mm256_set1_ps(a.d)), *acc_t);
                if with_min {
                    *acc_t = _mm256_fmadd_ps(m, _mm256_set1_ps(a.s), *acc_t);
                }
            }
            pb = pb.add(pbb);
        }
        for (t, acc_t) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(t * out_stride), *acc_t);
        }
    }
}

/// The VNNI tile with AVX2 alone: `vpmaddubsw` adds pairs of byte products
/// into i16 lanes, as many pairs as cannot overflow (a pair of Q4 weights
/// against activations is at most 2·15·127 = 3,810, so all eight of a
/// block; Q5's 2·31·127 = 7,874, four), then `vpmaddwd` by ones adds each
/// row's i16 lanes into its i32 lane. Q8_0's stored bytes (quant + 128) do
/// not fit that product: it takes the signed quant's magnitude and moves its
/// sign onto the activation (`vpsignb`), which needs no −128·Σy start.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use crate::kernels::legacy_blocks::bytes_from_bits;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile<const K: u8, const T: usize>(
        panel: &[u8],
        acts: &[Q8Block],
        blocks: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let kind = kind_of(K);
        let q5 = matches!(kind, Kind::Q5_0 | Kind::Q5_1);
        let with_min = kind.with_sum();
        let pbb = panel_block_bytes(kind);
        let bit4 = _mm256_set1_epi8(0x10);
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); T];
        let mut pb = panel.as_ptr();
        for b in 0..blocks {
            panel_product::prefetch_ahead(pb, pbb);
            let (d, m, mut w) =
                block_weights(kind, pb, |w, bits| _mm256_or_si256(w, _mm256_and_si256(bytes_from_bits(bits), bit4)));
            if kind == Kind::Q8_0 {
                // The signed quants back (stored + 128).
                w.iter_mut().for_each(|wj| *wj = _mm256_xor_si256(*wj, flip));
            }
            for (t, acc_t) in acc.iter_mut().enumerate() {
                let a = &*acts.as_ptr().add(t * blocks + b);
                let y = |j: usize| _mm256_set1_epi32((a.qs.as_ptr() as *const i32).add(j).read_unaligned());
                let sum = if kind == Kind::Q8_0 {
                    let mut s = _mm256_setzero_si256();
                    for (j, wj) in w.iter().enumerate() {
                        let p = _mm256_maddubs_epi16(_mm256_abs_epi8(*wj), _mm256_sign_epi8(y(j), *wj));
                        s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
                    }
                    s
                } else {
                    // Two chains of four, so consecutive products need not wait on each other.
                    let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                    for j in (0..8).step_by(2) {
                        s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(w[j], y(j)));
                        s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(w[j + 1], y(j + 1)));
                    }
                    let s = if q5 {
                        _mm256_add_epi32(_mm256_madd_epi16(s0, ones), _mm256_madd_epi16(s1, ones))
                    } else {
                        _mm256_madd_epi16(_mm256_add_epi16(s0, s1), ones)
                    };
                    _mm256_add_epi32(s, _mm256_set1_epi32(a.bias))
                };
                let sum = _mm256_cvtepi32_ps(sum);
                *acc_t = _mm256_fmadd_ps(sum, _mm256_mul_ps(d, _mm256_set1_ps(a.d)), *acc_t);
                if with_min {
                    *acc_t = _mm256_fmadd_ps(m, _mm256_set1_ps(a.s), *acc_t);
                }
            }
            pb = pb.add(pbb);
        }
        for (t, acc_t) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(t * out_stride), *acc_t);
        }
    }
}
