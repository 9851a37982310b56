//! The weight bytes the kernels repack from, as a file stores them.

use std::ops::Range;

use rayon::prelude::*;

use super::panel_product::PANEL;

/// Panels repacked between two page releases: a few MiB of a large table.
const PANELS_PER_SLICE: usize = 512;

/// The rows of a ggml block matrix as a file stores them, taken in a chosen
/// order, so the kernels can repack straight from the file's bytes (a
/// memory map) without an intermediate copy in row order.
#[derive(Clone, Copy)]
pub struct StoredRows<'a> {
    bytes: &'a [u8],
    row_bytes: usize,
    /// Row `r` of the matrix is stored row `order(r)`; None: stored order.
    order: Option<&'a (dyn Fn(usize) -> usize + Sync)>,
    /// Gives back the file pages of a byte range of `bytes` once read.
    release: Option<&'a (dyn Fn(Range<usize>) + Sync)>,
}

impl<'a> StoredRows<'a> {
    /// None unless `bytes` holds whole rows of `row_bytes` (> 0) each.
    /// `order` must map 0..rows onto 0..rows.
    pub fn new(bytes: &'a [u8], row_bytes: usize, order: Option<&'a (dyn Fn(usize) -> usize + Sync)>) -> Option<Self> {
        (row_bytes > 0 && bytes.len().is_multiple_of(row_bytes)).then_some(Self { bytes, row_bytes, order, release: None })
    }

    /// The same rows, whose file pages `release` gives back (a byte range
    /// of the stored bytes) as repacking finishes with them.
    pub fn with_release(self, release: &'a (dyn Fn(Range<usize>) + Sync)) -> Self {
        Self { release: Some(release), ..self }
    }

    pub fn rows(&self) -> usize {
        self.bytes.len() / self.row_bytes
    }

    /// Matrix row `r`'s bytes.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let s = self.order.map_or(r, |f| f(r));
        &self.bytes[s * self.row_bytes..(s + 1) * self.row_bytes]
    }

    /// The stored bytes, borrowed when in stored order, else rearranged.
    pub fn in_order(&self) -> std::borrow::Cow<'a, [u8]> {
        match self.order {
            None => std::borrow::Cow::Borrowed(self.bytes),
            Some(_) => std::borrow::Cow::Owned((0..self.rows()).flat_map(|r| self.row(r).iter().copied()).collect()),
        }
    }

    /// Fills `out`, `panel_bytes` per panel of `PANEL` rows, by
    /// `fill(panel, its bytes)`: in parallel, a slice of panels at a time,
    /// giving each slice's rows back to the file when done, so a large
    /// matrix (a 150k-row embedding) never has its file pages and its copy
    /// resident at once. (Rows taken out of order are given back with the
    /// whole tensor, by its owner.)
    pub fn repack_panels(&self, out: &mut [u8], panel_bytes: usize, fill: impl Fn(usize, &mut [u8]) + Sync + Send) {
        for (s, slice) in out.chunks_mut(PANELS_PER_SLICE * panel_bytes).enumerate() {
            let first = s * PANELS_PER_SLICE;
            slice.par_chunks_mut(panel_bytes).enumerate().for_each(|(i, panel)| fill(first + i, panel));
            if let (Some(release), None) = (self.release, self.order) {
                let panels = slice.len() / panel_bytes.max(1);
                release(first * PANEL * self.row_bytes..(first + panels) * PANEL * self.row_bytes);
            }
        }
    }
}
