//! The weight bytes the kernels repack from, as a file stores them.

/// The rows of a ggml block matrix as a file stores them, taken in a chosen
/// order, so the kernels can repack straight from the file's bytes (a
/// memory map) without an intermediate copy in row order.
#[derive(Clone, Copy)]
pub struct StoredRows<'a> {
    bytes: &'a [u8],
    row_bytes: usize,
    /// Row `r` of the matrix is stored row `order(r)`; None: stored order.
    order: Option<&'a (dyn Fn(usize) -> usize + Sync)>,
}

impl<'a> StoredRows<'a> {
    /// None unless `bytes` holds whole rows of `row_bytes` (> 0) each.
    /// `order` must map 0..rows onto 0..rows.
    pub fn new(bytes: &'a [u8], row_bytes: usize, order: Option<&'a (dyn Fn(usize) -> usize + Sync)>) -> Option<Self> {
        (row_bytes > 0 && bytes.len().is_multiple_of(row_bytes)).then_some(Self { bytes, row_bytes, order })
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
}
