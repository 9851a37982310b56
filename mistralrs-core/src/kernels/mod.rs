//! CPU kernels of our own, chosen at run time for the running CPU, for the
//! weight types candle's CPU backend only has scalar code for.

pub mod attention;
pub(crate) mod legacy_panels;
mod panel_product;
pub mod legacy_quant;
pub mod kquant_panels;
pub mod quantize_q6k;
pub mod report;
mod type_tests;

pub use legacy_quant::LegacyQuantMatrix;
pub use kquant_panels::KQuantMatrix;
pub use report::kernel_report;

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
