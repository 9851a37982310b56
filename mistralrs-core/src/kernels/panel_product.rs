//! The loop shared by every panel kernel (`legacy_panels.rs`,
//! `kquant_panels.rs`): an (m, rows) product of 8-row weight panels and
//! quantized activations, split across the thread pool by ranges of panels.
//! Each task walks its panels once per chunk of tokens, so the chunk's
//! activations stay in cache while the panels stream past.

use candle_core::{DType, Result, Storage, Tensor};
use rayon::prelude::*;

use super::out_ptr::OutPtr;

/// Rows in a panel.
pub(crate) const PANEL: usize = 8;

/// The SIMD bodies of the panel kernels. Both read the same panels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PanelSimd {
    /// AVX-512 VNNI: `vpdpbusd` adds four byte products into each row's lane.
    Vnni,
    /// AVX2 alone: the same sums by `vpmaddubsw` (byte pairs into i16) and
    /// `vpmaddwd` (pairs of those into i32), in tiles of `AVX2_TILE` tokens
    /// (16 vector registers against AVX-512's 32).
    Avx2,
}

/// Tokens an AVX2 tile takes at most.
pub(crate) const AVX2_TILE: usize = 4;

impl PanelSimd {
    /// The widest this CPU runs, None without AVX2 (or where
    /// `MISTRALRS_CPU_KERNELS` turns SIMD off).
    pub(crate) fn widest() -> Option<Self> {
        if super::select::avx512_vnni() {
            Some(Self::Vnni)
        } else if super::select::avx2() {
            Some(Self::Avx2)
        } else {
            None
        }
    }

    /// Every one this CPU runs (for tests that check each).
    #[cfg(test)]
    pub(crate) fn all() -> Vec<Self> {
        [(super::select::avx512_vnni(), Self::Vnni), (super::select::avx2(), Self::Avx2)]
            .into_iter()
            .filter_map(|(has, simd)| has.then_some(simd))
            .collect()
    }
}

/// The height of the tile that takes the next of `left` tokens: the widest
/// `simd` has, then the rest as one tile where a body of that height exists.
/// A tile unpacks each panel-block once for all its tokens, so the 3 rows of
/// a step verifying two proposals run as one tile rather than 2 + 1 (a Qwen
/// 1.5B step of 3 rows took 75 ms as 2 + 1, against 60 ms for 4 rows). The
/// VNNI bodies have no heights between those of its halves: this VM cannot
/// run them, so no new ones are compiled for it.
pub(crate) fn tile_height(simd: PanelSimd, left: usize) -> usize {
    let heights: &[usize] = match simd {
        PanelSimd::Vnni => &[TILE, 4, 2, 1],
        PanelSimd::Avx2 => &[AVX2_TILE, 3, 2, 1],
    };
    heights.iter().copied().find(|&h| h <= left).unwrap_or(1)
}

/// Tokens a kernel call takes at most.
pub(crate) const TILE: usize = 8;

/// Tokens whose activations a task keeps hot (in L2) while it walks its panels.
const TOKEN_CHUNK: usize = 64;

/// Products smaller than this (multiply-adds) are not split across threads:
/// waking the pool costs more than they do (decode steps are hundreds of them).
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// Bytes ahead of the panel-block being read that the kernels ask for.
/// Decoding streams every weight once per token, and a panel-block is
/// read out of order and takes more instructions than the out-of-order
/// window holds, so neither the hardware prefetchers nor the window keep
/// enough lines in flight. On this project's 2-core Zen 4 VM, 8 KiB ahead
/// into L2 took a Q6_K matrix read from DRAM from 7 to about 20 GB/s on one
/// core and to about 30 GB/s on two, what plain streaming reads get; 2 KiB
/// ahead into L1, as before, filled the L1 miss buffers and gained nothing.
const PREFETCH_AHEAD: usize = 8192;

/// Prefetch (into L2) the `bytes` that lie PREFETCH_AHEAD after `block`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_ahead(block: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    for line in (0..bytes).step_by(64) {
        // SAFETY: a prefetch never faults, whatever the address; wrapping_add
        // keeps the pointer arithmetic defined past the end of the panels.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(block.wrapping_add(PREFETCH_AHEAD + line) as *const i8) };
    }
}

/// Eight values (one per row, widened to i32 lanes) as i16 pairs: each
/// row's value in both halves of its lane, for `vpmaddwd` to scale or add
/// a row's pair sums with. The odd halves come from the lanes shifted up
/// (an OR would keep a negative value's sign bits there).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn row_pairs(lanes: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_blend_epi16::<0b1010_1010>(lanes, _mm256_slli_epi32(lanes, 16))
}

/// For every panel `p` and tile of at most TILE tokens from `first` on,
/// `tile(p, first, tokens, cell)` with `cell` at out[first][8p]; `out`
/// is (m, rows) row-major and each call writes only its (tokens, 8) cells.
pub(crate) fn for_each_tile(
    rows: usize,
    cols: usize,
    m: usize,
    out: &mut [f32],
    tile: impl Fn(usize, usize, usize, OutPtr) + Sync,
) {
    assert!(rows.is_multiple_of(PANEL) && out.len() >= m * rows);
    let panels = rows / PANEL;
    let out_ptr = OutPtr(out.as_mut_ptr());
    let task = |first_panel: usize, last_panel: usize| {
        for t0 in (0..m).step_by(TOKEN_CHUNK) {
            let tn = TOKEN_CHUNK.min(m - t0);
            for p in first_panel..last_panel {
                for tt in (t0..t0 + tn).step_by(TILE) {
                    tile(p, tt, TILE.min(t0 + tn - tt), OutPtr(out_ptr.at(tt * rows + p * PANEL)));
                }
            }
        }
    };
    if rows * m * cols < PARALLEL_MIN_MACS {
        task(0, panels);
    } else {
        let tasks = (4 * rayon::current_num_threads()).min(panels);
        (0..tasks)
            .into_par_iter()
            .for_each(|i| task(i * panels / tasks, (i + 1) * panels / tasks));
    }
}

/// `x` (m, cols) as f32 rows on the CPU, handed to `f` as one slice with
/// m: the input side shared by the quantized matmuls.
pub(crate) fn with_f32_rows<T>(x: &Tensor, cols: usize, f: impl FnOnce(&[f32], usize) -> T) -> Result<T> {
    let (m, k) = x.dims2()?;
    if k != cols {
        candle_core::bail!("matmul: input has {k} columns, the weight {cols}");
    }
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("quantized matmul kernels run on the CPU") };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("matmul: input not contiguous") };
    Ok(f(&cpu.as_slice::<f32>()?[start..end], m))
}
