//! CPU kernels of our own, chosen at run time for the running CPU, for the
//! weight types candle's CPU backend only has scalar code for.

pub mod attention;
pub(crate) mod legacy_panels;
mod panel_product;
pub mod legacy_quant;
pub mod kquant_panels;
pub mod quantize_q6k;
pub mod report;
pub mod select;
mod type_tests;

pub use legacy_quant::LegacyQuantMatrix;
pub use kquant_panels::KQuantMatrix;
pub use report::kernel_report;
pub use select::own_kernels;

/// A pointer into an output buffer that parallel tasks share, each writing
/// cells no other task writes.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub *mut f32);
// SAFETY: users split the buffer into disjoint cells per task.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer.
        unsafe { self.0.add(i) }
    }
}

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
