//! CPU kernels of our own, chosen at run time for the running CPU, for the
//! weight types candle's CPU backend only has scalar code for.
//!
//! Bottom to top: `select.rs` (which kernels may run) and the shared pieces
//! (`vec_math.rs`, `stored_rows.rs`, `out_ptr.rs`, `legacy_blocks.rs`, `row_dequant.rs`, `block_matrix.rs`:
//! the one trait `Linear` sees the matrix kernels through, `panel_product.rs`);
//! the kernels (`legacy_panels.rs`, `legacy_quant.rs`, `kquant_panels.rs`,
//! `kv_formats.rs`, `kv_rows.rs`, `attention.rs`, `activation.rs`); `dispatch.rs` (which kernel takes a weight type) and
//! `report.rs`. No file imports one above it (`scripts/module_graph.py`).

pub mod activation;
pub mod attention;
pub mod kv_formats;
pub mod kv_rows;
pub mod block_matrix;
pub mod dispatch;
mod legacy_blocks;
pub(crate) mod legacy_panels;
pub mod legacy_quant;
pub mod kquant_panels;
mod out_ptr;
mod panel_product;
pub mod quantize_kmin;
pub mod quantize_q6k;
pub mod report;
pub mod row_dequant;
pub mod select;
mod stored_rows;
mod vec_math;

pub use block_matrix::BlockMatrix;
pub use report::kernel_report;
pub use select::own_kernels;
pub use stored_rows::StoredRows;
