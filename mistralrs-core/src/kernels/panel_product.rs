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

/// Tokens a kernel call takes at most.
pub(crate) const TILE: usize = 8;

/// Tokens whose activations a task keeps hot (in L2) while it walks its panels.
const TOKEN_CHUNK: usize = 64;

/// Products smaller than this (multiply-adds) are not split across threads:
/// waking the pool costs more than they do (decode steps are hundreds of them).
const PARALLEL_MIN_MACS: usize = 1 << 18;

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
