//! CPU kernels of our own, chosen at run time for the running CPU, for the
//! weight types candle's CPU backend only has scalar code for.

pub(crate) mod legacy_panels;
pub mod legacy_quant;
pub mod quantize_q6k;
pub mod report;
mod type_tests;

pub use legacy_quant::LegacyQuantMatrix;
pub use report::kernel_report;
