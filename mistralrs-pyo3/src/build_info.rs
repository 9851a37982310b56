//! `mistralrs.build_info()`: what this build was compiled with and runs on.

use pyo3::prelude::*;
use pyo3::types::PyDict;

#[pyfunction]
pub fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    let features: Vec<&str> = [
        ("cuda", cfg!(feature = "cuda")),
        ("cudnn", cfg!(feature = "cudnn")),
        ("metal", cfg!(feature = "metal")),
        ("mkl", cfg!(feature = "mkl")),
        ("accelerate", cfg!(feature = "accelerate")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    d.set_item("features", features)?;
    d.set_item("simd", simd())?;
    d.set_item("devices", mistralrs_core::device::compiled_devices())?;
    d.set_item("default_device", mistralrs_core::device::default_device_name())?;
    d.set_item("cuda_device_count", mistralrs_core::device::cuda_device_count())?;
    // The dtype a Runner computes in unless `dtype=` says otherwise; each
    // Runner's own choice is its `.device` / `.dtype` (and its repr).
    d.set_item("default_dtype", "f32 on cpu; the checkpoint's torch_dtype (plain models) or f32 (GGUF/GGML) on cuda and metal")?;
    let kernels_choice = match mistralrs_core::kernels::select::choice() {
        mistralrs_core::kernels::select::KernelChoice::Auto => "auto",
        mistralrs_core::kernels::select::KernelChoice::Scalar => "scalar",
        mistralrs_core::kernels::select::KernelChoice::Candle => "candle",
    };
    d.set_item("cpu_kernels", kernels_choice)?;
    d.set_item("cpu_threads", candle_core::utils::get_num_threads())?;
    // Per weight type, the kernel its products run on with this CPU.
    let kernels = PyDict::new(py);
    for (ty, kernel) in mistralrs_core::kernels::kernel_report() {
        kernels.set_item(ty, kernel)?;
    }
    d.set_item("kernels", kernels)?;
    Ok(d)
}

/// SIMD extensions the running CPU offers that the kernels use.
fn simd() -> Vec<&'static str> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("avx", std::is_x86_feature_detected!("avx")),
            ("avx2", std::is_x86_feature_detected!("avx2")),
            ("fma", std::is_x86_feature_detected!("fma")),
            ("f16c", std::is_x86_feature_detected!("f16c")),
            ("avx512f", std::is_x86_feature_detected!("avx512f")),
        ] {
            if on {
                v.push(name);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    v.push("neon");
    v
}
